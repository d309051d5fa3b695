// SPDX-License-Identifier: MIT
// Python's UnixStreamServer and UnixDatagramServer: the TCP and UDP servers on AF_UNIX.
#pragma once

#include <sys/socket.h>  // AF_UNIX

#include "tcp_server.hpp"
#include "udp_server.hpp"

namespace socketserver {

/// Python's UnixStreamServer: basic_tcp_server with address_family AF_UNIX. The address is
/// a path (or "\0name" in Linux's abstract namespace). server_close() removes the socket
/// file the server created. To restrict who may connect, chmod() the path after binding
/// (e.g. in a server_bind() override, or with bind_and_activate = false).
template <class Handler, class Derived>
class basic_unix_stream_server : public basic_tcp_server<Handler, Derived> {
 public:
  /// Python's UnixStreamServer.address_family: AF_UNIX.
  static constexpr int address_family = AF_UNIX;
  using basic_tcp_server<Handler, Derived>::basic_tcp_server;
};

/// Python's UnixDatagramServer: basic_udp_server with address_family AF_UNIX. A client must
/// bind its own path to receive replies.
template <class Handler, class Derived>
class basic_unix_datagram_server : public basic_udp_server<Handler, Derived> {
 public:
  /// Python's UnixDatagramServer.address_family: AF_UNIX.
  static constexpr int address_family = AF_UNIX;
  using basic_udp_server<Handler, Derived>::basic_udp_server;
};

}  // namespace socketserver
