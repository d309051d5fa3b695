// SPDX-License-Identifier: MIT
// The TCP client from Python's socketserver documentation.
// Usage: tcp_client [--host H] [--port P] WORDS...     (default: localhost 9999)
#include <netdb.h>
#include <sys/socket.h>

#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_client_args(argc, argv);
    // Create a socket (SOCK_STREAM means a TCP socket) and connect to the server
    const socketserver::address server =
        socketserver::resolve_passive({args.host, args.port}, AF_UNSPEC, SOCK_STREAM);
    socketserver::socket sock(server.family(), SOCK_STREAM);
    if (::connect(sock.fileno(), server.data(), server.size()) != 0)
      throw std::system_error(errno, std::system_category(), "connect " + server.to_string());
    sock.sendall(args.data + "\n");
    // Receive data from the server and shut down
    const std::string received = sock.recv(1024);
    std::printf("Sent:     %s\n", args.data.c_str());
    std::printf("Received: %s\n", received.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_client: %s\n", e.what());
    return 1;
  }
}
