// SPDX-License-Identifier: MIT
// The library's one clock and its timeout type.
#pragma once

#include <chrono>    // std::chrono::steady_clock, std::chrono::duration
#include <optional>  // std::optional

namespace socketserver {
namespace detail {

/// Every deadline and interval in the library is measured on this clock.
using clock = std::chrono::steady_clock;

/// A timeout as Python spells it: std::nullopt blocks forever, zero never blocks
/// (socketserver::timeout_type).
using optional_seconds = std::optional<std::chrono::duration<double>>;

}  // namespace detail
}  // namespace socketserver
