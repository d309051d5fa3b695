// SPDX-License-Identifier: MIT
// The Python docs' stream handler, kept alive: each client's lines come back upper-cased until
// it closes. On FiberTCPServer, so a waiting client costs a fiber (a few KiB), not a thread:
// the same handler source would run on ThreadingTCPServer.
// Usage: fiber_echo_server [HOST] [PORT]     (default: localhost 9999; stop with Ctrl-C)
#include <cctype>
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

struct UpperEcho : socketserver::StreamRequestHandler<> {
  void handle() {
    // Each readline() that has to wait suspends this fiber; its loop thread serves others.
    for (const std::string& line : rfile) {
      std::printf("%s wrote:\n%s\n", client_address.host().c_str(),
                  example::bytes_repr(example::strip(line)).c_str());
      std::fflush(stdout);
      wfile.write(example::upper(line));
    }
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    socketserver::FiberTCPServer<UpperEcho> server({args.host, args.port});
    socketserver::shutdown_on_signals stop(server);  // SIGTERM or Ctrl-C
    server.serve_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fiber_echo_server: %s\n", e.what());
    return 1;
  }
}
