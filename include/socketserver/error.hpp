// SPDX-License-Identifier: MIT
// Errors: every failed system call becomes a std::system_error carrying errno and a message
// shaped "<op> <address>: <strerror>", e.g. "bind 127.0.0.1:9999: Address already in use"
// (detail/errno.hpp); name resolution failures keep getaddrinfo's own text (gai_category).
#pragma once

#include <netdb.h>  // gai_strerror

#include <string>        // std::string
#include <system_error>  // std::error_category

namespace socketserver {
namespace detail {

class gai_error_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "getaddrinfo"; }
  std::string message(int code) const override { return ::gai_strerror(code); }
};

}  // namespace detail

/// The category of getaddrinfo() failures (EAI_* codes), so name resolution errors keep
/// their own text ("Name or service not known") instead of a misleading errno message.
inline const std::error_category& gai_category() noexcept {
  static const detail::gai_error_category category;
  return category;
}

}  // namespace socketserver
