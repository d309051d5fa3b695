// SPDX-License-Identifier: MIT
// errno helpers: a failed system call becomes a std::system_error carrying errno and a
// message shaped "<op> <address>: <strerror>"; EINTR is retried.
#pragma once

#include <cerrno>        // errno, EINTR
#include <string>        // std::string
#include <system_error>  // std::system_error, std::error_code, std::system_category

namespace socketserver {
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
