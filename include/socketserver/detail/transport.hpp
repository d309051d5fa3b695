// SPDX-License-Identifier: MIT
// The hook through which a stream socket's recv/send can be taken over by a layer above the
// kernel's byte stream (the TLS add-on, socketserver/tls.hpp), without the core knowing it.
#pragma once

#include <cstddef>       // std::size_t
#include <string_view>   // std::string_view
#include <system_error>  // std::error_code

namespace socketserver {
namespace detail {

/// A layer between a connected stream socket and its user: socket_view's recv(), send() and
/// sendall() (and so a handler's rfile and wfile) call it instead of the system when one is
/// set on the socket. Both calls keep socket_view's meaning: `flags` as recv(2)/send(2)
/// take them (MSG_DONTWAIT fails with EAGAIN rather than wait, MSG_PEEK leaves the bytes),
/// 0 from recv() is the end of the stream, the socket's timeout applies (ETIMEDOUT), and
/// a wait goes through detail::blocking_io (a fiber suspends, a pool worker hands its loop on).
class stream_transport {
 public:
  /// Receives up to n bytes of the stream into buf; on failure sets `ec` and returns 0.
  virtual std::size_t recv(void* buf, std::size_t n, int flags, std::error_code& ec) noexcept = 0;
  /// Sends some of data (at least one byte unless data is empty); on failure sets `ec` and
  /// returns 0.
  virtual std::size_t send(std::string_view data, int flags, std::error_code& ec) noexcept = 0;
  /// Bytes received and decoded but not yet returned by recv(): poll() on the descriptor
  /// does not see them. (Every wait of the library follows a recv() that found nothing, so
  /// it never waits while some are there.)
  virtual std::size_t pending() const noexcept = 0;

 protected:
  ~stream_transport() = default;
};

}  // namespace detail
}  // namespace socketserver
