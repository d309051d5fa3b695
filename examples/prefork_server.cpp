// SPDX-License-Identifier: MIT
// The stream echo of the docs on every core: one worker process per CPU sharing the
// listening socket, replaced if it dies, stopped cleanly by SIGTERM/SIGINT.
// Usage: prefork_server [HOST] [PORT] [WORKERS]     (default: localhost 9999, one per core)
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

#include <socketserver.hpp>

#include "example_util.hpp"

struct Upper : socketserver::StreamRequestHandler<> {
  void handle() {
    const std::string data = example::strip(rfile.readline());
    std::printf("worker %ld: %s wrote %s\n", static_cast<long>(::getpid()),
                client_address.host().c_str(), example::bytes_repr(data).c_str());
    std::fflush(stdout);
    wfile.write(example::upper(data));
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    const unsigned workers =
        argc > 3 ? static_cast<unsigned>(std::atoi(argv[3])) : std::thread::hardware_concurrency();
    socketserver::TCPServer<Upper> server({args.host, args.port});
    std::printf("serving on %s with %u workers\n", server.server_address.to_string().c_str(),
                workers);
    std::fflush(stdout);
    socketserver::shutdown_on_signals stop(server);  // SIGTERM or Ctrl-C
    server.serve_forever_workers(workers == 0 ? 1 : workers);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork_server: %s\n", e.what());
    return 1;
  }
}
