// SPDX-License-Identifier: MIT
// shutdown_latency: how long serve_forever() takes to return after shutdown() is called, on
// a ThreadingTCPServer that is idle and one under load (in-process connrate clients).
// shutdown_latency.py measures CPython's socketserver the same way.
//
//   shutdown_latency [--tries N] [--load-clients C] [--seed S]
//
// Each try: a new server on 127.0.0.1:0, serve_forever() in a thread, (the clients started,)
// a random pause of 1-20 ms once the loop runs, then shutdown(); the latency is from the call
// to serve_forever() returning. Prints one key=value line per case:
//   workload=shutdown-idle impl=ours tries=100 p50_us=12.3 p99_us=40.1 max_us=52.0
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <socketserver.hpp>

#include "bench_util.hpp"

namespace {

namespace ss = socketserver;
using Clock = std::chrono::steady_clock;

struct OneLine : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};
using Server = ss::ThreadingTCPServer<OneLine>;

/// A connrate client: connect, send a line, read the reply, close; until `stop`. Every call
/// has a 1 s timeout, so it ends soon after the server goes away.
void client(const ss::address& server, const std::atomic<bool>& stop) {
  const std::string line = "shutdown-latency load\n";
  while (!stop.load()) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    const timeval tv{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char reply[64];
    const bool ok =
        ::connect(fd, server.data(), server.size()) == 0 &&
        ::send(fd, line.data(), line.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(line.size()) &&
        ::recv(fd, reply, sizeof reply, 0) > 0;
    ::close(fd);
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // e.g. refused
  }
}

/// One try: microseconds from shutdown() to serve_forever() returning.
double one_try(int load_clients, std::mt19937& rng) {
  Server server({"127.0.0.1", 0});
  Clock::time_point returned;
  std::thread serving([&] {
    server.serve_forever();
    returned = Clock::now();
  });
  for (int i = 0; i < 10000 && !server.is_serving(); ++i)  // at most 1 s
    std::this_thread::sleep_for(std::chrono::microseconds(100));

  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < load_clients; ++i)
    clients.emplace_back(client, server.server_address, std::cref(stop));
  std::uniform_int_distribution<int> pause_us(1000, 20000);
  std::this_thread::sleep_for(std::chrono::microseconds(pause_us(rng)));

  const auto called = Clock::now();
  server.shutdown();
  serving.join();
  stop = true;
  server.server_close();  // refuses the clients' next connections: they stop at once
  for (std::thread& t : clients) t.join();
  return std::chrono::duration<double, std::micro>(returned - called).count();
}

void report(const char* workload, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double p) {  // nearest-rank percentile
    const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(us.size())));
    return us[std::min(us.size(), std::max<std::size_t>(rank, 1)) - 1];
  };
  std::printf("workload=%s impl=ours tries=%zu p50_us=%.1f p99_us=%.1f max_us=%.1f\n", workload,
              us.size(), at(0.50), at(0.99), us.back());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args(argc, argv, {"tries", "load-clients", "seed"},
                         "usage: shutdown_latency [--tries N] [--load-clients C] [--seed S]");
  const long long tries = args.integer("tries", 100);
  const long long load_clients = args.integer("load-clients", 4);
  if (tries < 1 || tries > 100000 || load_clients < 1 || load_clients > 256)
    bench::die("shutdown_latency: --tries 1..100000, --load-clients 1..256");
  std::mt19937 rng(static_cast<unsigned>(args.integer("seed", 1)));
  try {
    for (const int clients : {0, static_cast<int>(load_clients)}) {
      std::vector<double> us;
      for (long long i = 0; i < tries; ++i) us.push_back(one_try(clients, rng));
      report(clients == 0 ? "shutdown-idle" : "shutdown-load", us);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shutdown_latency: %s\n", e.what());
    return 1;
  }
}
