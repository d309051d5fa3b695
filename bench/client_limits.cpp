// SPDX-License-Identifier: MIT
// client_limits: what the per-client limits (issue 13) cost per connection with 10,000
// clients connected, in the same run:
//   - max_connections_per_ip: a slot taken and given back (one lookup under one of 16 locks)
//     in the table of a server that holds --clients distinct client addresses (IPv4), one
//     connection each, from one thread and from --threads threads at once;
//   - max_connection_age: the clock read a request boundary adds (rfile's check).
//
//   client_limits [--clients 10000] [--ops 2000000] [--threads 2] [--runs 5]
//
// Prints a markdown table: median ns per operation, and the spread (min - max) over the runs.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <socketserver/detail/connection_counts.hpp>

#include "bench_util.hpp"

namespace {

namespace detail = socketserver::detail;
using Clock = std::chrono::steady_clock;

detail::client_key key_of(std::uint32_t n) {
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(0x0A000000u + n);  // 10.0.0.0/8: n distinct clients
  detail::client_key key;
  detail::client_key_of(reinterpret_cast<const sockaddr*>(&in), key);
  return key;
}

// ns per take + give back, over `ops` operations on `threads` threads, each on clients of
// its own that already hold one connection (the table holds `clients` in all).
double take_and_give_back(long clients, long ops, int threads) {
  detail::connection_counts table;
  std::vector<detail::client_key> keys;
  for (long i = 0; i < clients; ++i) keys.push_back(key_of(static_cast<std::uint32_t>(i)));
  for (const auto& k : keys) table.try_take(k, 1000);  // every client connected once
  std::atomic<bool> go{false};
  std::vector<std::thread> workers;
  const long per_thread = ops / threads;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      while (!go.load()) {
      }
      std::uint64_t state = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(t + 1);
      for (long i = 0; i < per_thread; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;  // a client at random
        const auto& k =
            keys[static_cast<std::size_t>((state >> 33) % static_cast<std::uint64_t>(clients))];
        if (table.try_take(k, 1000)) table.give_back(k);
      }
    });
  const auto started = Clock::now();
  go = true;
  for (auto& w : workers) w.join();
  const std::chrono::duration<double, std::nano> elapsed = Clock::now() - started;
  // Wall time per operation: with threads > 1, operations overlap (the figure is throughput).
  return elapsed.count() / static_cast<double>(per_thread * threads);
}

double clock_read(long ops) {
  const auto start = Clock::now();
  Clock::time_point last{};
  for (long i = 0; i < ops; ++i) last = std::max(last, Clock::now());
  const std::chrono::duration<double, std::nano> elapsed = last - start;
  return elapsed.count() / static_cast<double>(ops);
}

struct row {
  std::string name;
  std::vector<double> ns;
};

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args(argc, argv, {"clients", "ops", "threads", "runs"},
                         "usage: client_limits [--clients N] [--ops N] [--threads T] [--runs R]");
  const long clients = args.integer("clients", 10000);
  const long ops = args.integer("ops", 2000000);
  const int threads = static_cast<int>(args.integer("threads", 2));
  const int runs = static_cast<int>(args.integer("runs", 5));
  if (clients < 1 || clients > 1000000 || ops < 1000 || threads < 1 || threads > 64 || runs < 1)
    bench::die("client_limits: an option is out of range\n" + args.usage());
  std::vector<row> rows = {
      {"max_connections_per_ip: take + give back, 1 thread", {}},
      {"max_connections_per_ip: take + give back, " + std::to_string(threads) + " threads", {}},
      {"max_connection_age: the clock read at a request boundary", {}}};
  for (int r = 0; r < runs; ++r) {
    rows[0].ns.push_back(take_and_give_back(clients, ops, 1));
    rows[1].ns.push_back(take_and_give_back(clients, ops, threads));
    rows[2].ns.push_back(clock_read(ops));
  }
  std::printf(
      "| with %ld clients connected | ns per connection (median) | spread |\n|---|---|---|\n",
      clients);
  for (row& x : rows) {
    std::sort(x.ns.begin(), x.ns.end());
    std::printf("| %s | %.1f | %.1f - %.1f |\n", x.name.c_str(), x.ns[x.ns.size() / 2],
                x.ns.front(), x.ns.back());
  }
  return 0;
}
