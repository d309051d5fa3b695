// SPDX-License-Identifier: MIT
// A client for unix_stream_server: the TCP client's protocol over a Unix socket.
// Usage: unix_client [--path PATH] WORDS...     (default: /tmp/socketserver-example.sock)
#include <sys/socket.h>

#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

int main(int argc, char** argv) {
  try {
    auto args = example::parse_client_args(argc, argv);
    if (args.path.empty()) args.path = "/tmp/socketserver-example.sock";
    const socketserver::address server(args.path);
    socketserver::socket sock(AF_UNIX, SOCK_STREAM);
    if (::connect(sock.fileno(), server.data(), server.size()) != 0)
      throw std::system_error(errno, std::system_category(), "connect " + server.to_string());
    sock.sendall(args.data + "\n");
    const std::string received = sock.recv(1024);
    std::printf("Sent:     %s\n", args.data.c_str());
    std::printf("Received: %s\n", received.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unix_client: %s\n", e.what());
    return 1;
  }
}
