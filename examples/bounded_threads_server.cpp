// SPDX-License-Identifier: MIT
// ThreadingTCPServer with a cap on its request threads (max_threads, beyond Python): every
// connection still gets a thread of its own, echoing lines upper-cased, but at most 4 run at
// once; a client arriving while 4 are busy waits in the listen backlog and is served as soon
// as one finishes. SIGTERM or Ctrl-C stops it, with a count of what it served.
// Usage: bounded_threads_server [HOST] [PORT]     (default: localhost 9999)
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include <socketserver.hpp>

#include "example_util.hpp"

namespace {

constexpr std::size_t thread_limit = 4;

struct UpperHandler;
struct BoundedServer : socketserver::ThreadingTCPServer<UpperHandler, BoundedServer> {
  using base = socketserver::ThreadingTCPServer<UpperHandler, BoundedServer>;
  using base::base;
  std::atomic<int> busy{0};       // handlers running now
  std::atomic<int> most_busy{0};  // the most that ever ran at once: never above max_threads
};

struct UpperHandler : socketserver::StreamRequestHandler<BoundedServer> {
  // With only 4 threads, a client that connects and says nothing must not keep one forever.
  static constexpr auto timeout = std::chrono::seconds(30);

  void handle() {
    const int now = ++server.busy;
    int most = server.most_busy.load();
    while (now > most && !server.most_busy.compare_exchange_weak(most, now)) {
    }
    struct leave {
      std::atomic<int>& busy;
      ~leave() { --busy; }
    } guard{server.busy};

    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline()) {
      std::printf("%s wrote %s (%d of at most %zu threads busy)\n", client_address.host().c_str(),
                  example::bytes_repr(example::strip(line)).c_str(), server.busy.load(),
                  server.max_threads);
      std::fflush(stdout);
      // Slow work, so that clients arriving meanwhile overlap and the cap is reached.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      wfile.write(example::upper(line));
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    BoundedServer server({args.host, args.port});
    server.max_threads = thread_limit;
    server.daemon_threads = true;  // stopping does not wait for clients still connected
    std::printf("serving on %s with at most %zu request threads\n",
                server.server_address.to_string().c_str(), server.max_threads);
    std::fflush(stdout);

    socketserver::shutdown_on_signals stop(server);  // SIGTERM or Ctrl-C
    server.serve_forever();
    std::printf("stopped: %llu connections served, at most %d threads at once\n",
                static_cast<unsigned long long>(server.stats().completed), server.most_busy.load());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bounded_threads_server: %s\n", e.what());
    return 1;
  }
}
