// SPDX-License-Identifier: MIT
// basic_udp_server: Python's UDPServer (datagram sockets).
#pragma once

#include <sys/socket.h>  // recvmsg, msghdr, MSG_TRUNC, MSG_DONTWAIT, SOCK_DGRAM
#include <sys/uio.h>     // iovec

#include <cstddef>       // std::size_t
#include <string>        // std::string
#include <system_error>  // std::error_code
#include <utility>       // std::pair
#include <vector>        // std::vector

#include "address.hpp"
#include "datagram.hpp"
#include "detail/errno.hpp"
#include "tcp_server.hpp"

namespace socketserver {

/// Python's UDPServer: each datagram is a request. Derives from basic_tcp_server, as in
/// Python, with socket_type SOCK_DGRAM, no listen(), and a request that is the packet plus the
/// server's socket. Class-level policy max_packet_size (8192) bounds the packet; a longer
/// one is cut there and the request is marked `truncated` (CPython truncates silently). It
/// is read at each receive, so a subclass may redefine it as a run-time `static inline`
/// variable.
template <class Handler, class Derived>
class basic_udp_server : public basic_tcp_server<Handler, Derived, datagram> {
  using base = basic_tcp_server<Handler, Derived, datagram>;

 public:
  /// Python's UDPServer.socket_type: SOCK_DGRAM.
  static constexpr int socket_type = SOCK_DGRAM;
  /// Python's UDPServer.allow_reuse_address: false (SO_REUSEADDR when true).
  static constexpr bool allow_reuse_address = false;
  /// Python's UDPServer.allow_reuse_port: false (SO_REUSEPORT when true).
  static constexpr bool allow_reuse_port = false;
  /// Python's UDPServer.max_packet_size: the largest datagram received whole (8192); a
  /// longer one is cut and flagged `truncated`.
  static constexpr std::size_t max_packet_size = 8192;

  using base::base;

  /// Python's UDPServer.server_activate(): nothing, as datagram sockets do not listen.
  void server_activate() {}

  /// Python's UDPServer.get_request(): receives one datagram, without blocking; the request
  /// is the packet and the server's socket (Python's `(data, socket)` pair). May be
  /// overridden.
  /// @throws std::system_error if recvfrom() fails (EAGAIN when none is waiting)
  std::pair<datagram, address> get_request() {
    std::pair<datagram, address> got;
    std::error_code ec;
    if (!get_request(got.first, got.second, ec)) detail::throw_error(ec, "recvfrom");
    return got;
  }
  /// The same without exceptions: false, with ec set, if it failed (see basic_tcp_server).
  bool get_request(datagram& request, address& client_address, std::error_code& ec) {
    // Received into a buffer kept for the purpose, then copied at its real size: the packet
    // costs one small allocation, not a zero-filled max_packet_size one. One buffer per
    // thread: a thread pool's leaders receive at the same time. Sized at each call, as
    // max_packet_size may be a run-time `static inline` value that has grown.
    const std::size_t max_size = Derived::max_packet_size;
    thread_local std::vector<char> scratch;
    if (scratch.size() < max_size) scratch.resize(max_size);
    iovec iov{scratch.data(), max_size};
    msghdr msg{};
    msg.msg_name = client_address.data();
    msg.msg_namelen = address::capacity();
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n =
        detail::retry_on_eintr([&] { return ::recvmsg(this->fileno(), &msg, MSG_DONTWAIT); });
    if (n < 0) {
      ec = detail::last_error();
      return false;
    }
    client_address.resize(msg.msg_namelen);
    request.data.assign(scratch.data(), static_cast<std::size_t>(n));
    request.socket = this->socket;
    request.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    ec.clear();
    return true;
  }

  /// Python's UDPServer.shutdown_request(): nothing to shut down per request, so it calls
  /// close_request().
  void shutdown_request(datagram& request) { this->derived().close_request(request); }
  /// Nothing to close per request: the socket is the server's.
  void close_request(datagram& /*request*/) {}
};

}  // namespace socketserver
