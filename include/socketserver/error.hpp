// SPDX-License-Identifier: MIT
// Error helpers: every failed system call becomes a std::system_error carrying errno and a
// message shaped "<op> <address>: <strerror>", e.g. "bind 127.0.0.1:9999: Address already in use".
#pragma once

#include <netdb.h>  // gai_strerror

#include <cerrno>        // errno, EINTR
#include <string>        // std::string
#include <system_error>  // std::system_error, std::error_code, std::error_category

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

namespace detail {

/// errno as a std::error_code.
inline std::error_code last_error() noexcept { return {errno, std::system_category()}; }

[[noreturn]] inline void throw_error(std::error_code ec, const std::string& what) {
  throw std::system_error(ec, what);
}

[[noreturn]] inline void throw_errno(const std::string& what) { throw_error(last_error(), what); }

/// Repeats a system call while it fails with EINTR (a signal arrived; nothing went wrong).
template <class Call>
auto retry_on_eintr(Call call) noexcept(noexcept(call())) -> decltype(call()) {
  decltype(call()) result;
  do {
    result = call();
  } while (result == -1 && errno == EINTR);
  return result;
}

}  // namespace detail
}  // namespace socketserver
