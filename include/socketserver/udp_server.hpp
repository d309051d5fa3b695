// SPDX-License-Identifier: MIT
// basic_udp_server: Python's UDPServer (datagram sockets).
#pragma once

#include <sys/socket.h>  // recvmsg, msghdr, MSG_TRUNC, MSG_DONTWAIT, SOCK_DGRAM
#include <sys/uio.h>     // iovec

#include <cstddef>  // std::size_t
#include <string>   // std::string
#include <utility>  // std::pair

#include "address.hpp"
#include "datagram.hpp"
#include "error.hpp"
#include "tcp_server.hpp"

namespace socketserver {

/// Python's UDPServer: each datagram is a request. Derives from basic_tcp_server, as in
/// Python, with socket_type SOCK_DGRAM, no listen(), and a request that is the packet plus the
/// server's socket. Class-level policy max_packet_size (8192) bounds the packet; a longer
/// one is cut there and the request is marked `truncated` (CPython truncates silently).
template <class Handler, class Derived>
class basic_udp_server : public basic_tcp_server<Handler, Derived, datagram> {
  using base = basic_tcp_server<Handler, Derived, datagram>;

 public:
  static constexpr int socket_type = SOCK_DGRAM;
  static constexpr bool allow_reuse_address = false;
  static constexpr bool allow_reuse_port = false;
  static constexpr std::size_t max_packet_size = 8192;

  using base::base;

  /// Datagram sockets do not listen.
  void server_activate() {}

  /// Receives one datagram (without blocking: serve_forever has seen it is ready).
  std::pair<datagram, address> get_request() {
    std::pair<datagram, address> got{
        datagram{std::string(Derived::max_packet_size, '\0'), this->socket, false}, address()};
    iovec iov{got.first.data.data(), got.first.data.size()};
    msghdr msg{};
    msg.msg_name = got.second.data();
    msg.msg_namelen = address::capacity();
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n =
        detail::retry_on_eintr([&] { return ::recvmsg(this->fileno(), &msg, MSG_DONTWAIT); });
    if (n < 0) detail::throw_errno("recvfrom");
    got.second.resize(msg.msg_namelen);
    got.first.data.resize(static_cast<std::size_t>(n));
    got.first.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    return got;
  }

  /// Nothing to shut down per request: calls close_request().
  void shutdown_request(datagram& request) { this->derived().close_request(request); }
  /// Nothing to close per request: the socket is the server's.
  void close_request(datagram& /*request*/) {}
};

}  // namespace socketserver
