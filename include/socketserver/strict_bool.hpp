// SPDX-License-Identifier: MIT
// strict_bool: a bool parameter that takes only a bool.
#pragma once

#include <type_traits>  // std::enable_if_t, std::is_same_v

namespace socketserver {

/// A bool parameter that accepts only a bool. Servers take `bind_and_activate` as this, so
/// `TCPServer<H> s({"127.0.0.1", 0})` cannot also be read as (path "127.0.0.1", flag 0).
class strict_bool {
 public:
  /// Takes a bool, and nothing that merely converts to one (an int, a pointer).
  template <class B, std::enable_if_t<std::is_same_v<B, bool>, int> = 0>
  constexpr strict_bool(B value) noexcept : value_(value) {}  // NOLINT: implicit by design
  /// The value given.
  constexpr operator bool() const noexcept { return value_; }

 private:
  bool value_;
};

}  // namespace socketserver
