// SPDX-License-Identifier: MIT
// datagram: the request a datagram server hands to its handler (Python's (data, socket) pair).
#pragma once

#include <string>  // std::string

#include "socket.hpp"

namespace socketserver {

/// One received datagram. As in Python, `data` is the packet and `socket` the server's
/// socket to reply with: `request.socket.sendto(reply, client_address)`.
/// `auto& [data, sock, truncated] = request;` unpacks it.
struct datagram {
  /// The packet, at most the server's max_packet_size bytes.
  std::string data;
  /// The server's socket (not owned: every request shares it).
  socket_view socket;
  /// True when the packet was longer than max_packet_size and `data` holds only its start.
  /// (CPython truncates silently.)
  bool truncated = false;
};

}  // namespace socketserver
