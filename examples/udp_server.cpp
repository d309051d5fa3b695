// SPDX-License-Identifier: MIT
// The socketserver.UDPServer example from Python's documentation.
// Usage: udp_server [HOST] [PORT]     (default: localhost 9999; stop with Ctrl-C)
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

// Works like the TCP handler, except that request holds the data and the server's socket,
// and as there is no connection the client's address must be given to sendto().
struct MyUDPHandler : socketserver::BaseRequestHandler<socketserver::datagram> {
  void handle() {
    const std::string data = example::strip(request.data);
    std::printf("%s wrote:\n%s\n", client_address.host().c_str(),
                example::bytes_repr(data).c_str());
    std::fflush(stdout);
    request.socket.sendto(example::upper(data), client_address);
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    socketserver::UDPServer<MyUDPHandler> server({args.host, args.port});
    server.serve_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "udp_server: %s\n", e.what());
    return 1;
  }
}
