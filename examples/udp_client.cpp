// SPDX-License-Identifier: MIT
// The UDP client from Python's socketserver documentation.
// Usage: udp_client [--host H] [--port P] WORDS...     (default: localhost 9999)
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_client_args(argc, argv);
    const socketserver::address server =
        socketserver::resolve_passive({args.host, args.port}, AF_UNSPEC, SOCK_DGRAM);
    // SOCK_DGRAM is the socket type to use for UDP sockets
    socketserver::socket sock(server.family(), SOCK_DGRAM);
    sock.settimeout(std::chrono::seconds(5));  // a lost datagram must not hang the client
    // As you can see, there is no connect() call; UDP has no connections.
    // Instead, data is directly sent to the recipient via sendto().
    sock.sendto(args.data + "\n", server);
    const std::string received = sock.recv(1024);
    std::printf("Sent:     %s\n", args.data.c_str());
    std::printf("Received: %s\n", received.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "udp_client: %s\n", e.what());
    return 1;
  }
}
