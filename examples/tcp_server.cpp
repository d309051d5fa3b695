// SPDX-License-Identifier: MIT
// The socketserver.TCPServer example from Python's documentation (the recv() variant).
// Usage: tcp_server [HOST] [PORT]     (default: localhost 9999; stop with Ctrl-C)
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

// The request handler class for our server: instantiated once per connection to the
// server, it overrides handle() to talk to the client.
struct MyTCPHandler : socketserver::BaseRequestHandler<> {
  void handle() {
    // request is the TCP socket connected to the client
    const std::string data = example::strip(request.recv(1024));
    std::printf("Received from %s:\n%s\n", client_address.host().c_str(),
                example::bytes_repr(data).c_str());
    std::fflush(stdout);
    // just send back the same data, but upper-cased
    request.sendall(example::upper(data));
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    // Create the server, binding to localhost on port 9999
    socketserver::TCPServer<MyTCPHandler> server({args.host, args.port});
    // Activate the server; this will keep running until you interrupt the program with Ctrl-C
    server.serve_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_server: %s\n", e.what());
    return 1;
  }
}
