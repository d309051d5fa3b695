// SPDX-License-Identifier: MIT
// A backend for the load-balancer test: `named_echo NAME [PORT]` serves on 127.0.0.1,
// prints its port once it is listening (the readiness signal), and answers each line with
// "NAME: line". SIGTERM stops it (drained, so no request in flight is cut short).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <socketserver.hpp>

static std::string name;

struct Named : socketserver::StreamRequestHandler<> {
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(name + ": " + line);
  }
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: named_echo NAME [PORT]\n");
    return 2;
  }
  name = argv[1];
  socketserver::ThreadingTCPServer<Named> server({"127.0.0.1", argc > 2 ? std::atoi(argv[2]) : 0});
  std::printf("%u\n", server.server_address.port());
  std::fflush(stdout);
  socketserver::shutdown_on_signals stop(server);
  server.serve_forever();
  server.drain(std::chrono::seconds(5));
  return 0;
}
