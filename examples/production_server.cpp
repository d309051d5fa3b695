// SPDX-License-Identifier: MIT
// What a deployed server adds to the ten-line one (see docs/DEPLOY.md): socket activation
// when started by systemd, a bounded thread pool, a clean stop on SIGTERM/SIGINT that
// drains the requests in flight, and the request counters at exit.
// Usage: production_server [HOST] [PORT]     (default: localhost 9999; Ctrl-C stops)
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

struct Upper : socketserver::StreamRequestHandler<> {
  static constexpr auto timeout = std::chrono::seconds(30);  // idle or slow clients
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(example::upper(line));
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    socketserver::ThreadPoolTCPServer<Upper> server({args.host, args.port}, false);
    const std::vector<int> inherited = socketserver::listen_fds();
    if (!inherited.empty()) {
      server.adopt_socket(inherited.front());  // started by systemd's production.socket
    } else {
      server.server_bind();
      server.server_activate();
    }
    server.pool_size = 32;
    std::printf("serving on %s\n", server.server_address.to_string().c_str());
    std::fflush(stdout);

    socketserver::shutdown_on_signals stop(server);  // SIGTERM or Ctrl-C
    server.serve_forever();
    const std::size_t cut = server.drain(std::chrono::seconds(10));
    const socketserver::server_stats s = server.stats();
    std::printf("stopped: %llu requests, %llu errors, %zu cut short\n",
                static_cast<unsigned long long>(s.completed),
                static_cast<unsigned long long>(s.errors), cut);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "production_server: %s\n", e.what());
    return 1;
  }
}
