// SPDX-License-Identifier: MIT
// prefork_balance: how evenly serve_forever_workers(n) spreads connections over its workers
// (issue 15), with and without the rotation of the exclusive wake-ups, in the same run.
//
//   prefork_balance [--kinds sync,threading,pool,fiber] [--workers 2,4] [--seconds S]
//                   [--clients C] [--rotation both|on|off] [--md]
//
// For each kind of worker (TCPServer, ThreadingTCPServer, ThreadPoolTCPServer,
// FiberTCPServer), each worker count and each rotation setting, a forked server process runs
// serve_forever_workers(n) on 127.0.0.1; its handler reads a line and answers with the pid
// of the worker that accepted the connection. This process then runs connect-per-request
// clients: first C closed-loop clients for S seconds (the saturated rate), then open-loop
// clients paced at 50% and at 90% of that rate for S seconds each. A line per run:
//   kind=threading workers=2 rotation=off load=50% rate=4012 errors=0 per_worker=3050,962
//   max_min=3.17
// per_worker is sorted, largest first; a worker that got nothing counts as 0 (max_min=inf).
// With --md, a Markdown table follows (bench/run puts it in RESULTS.md): a row per kind,
// worker count and load, rotation off and on side by side.
// With rotation=off the library's exclusive waits keep their place in the listening socket's
// wait queue (detail::exclusive_wait::rotation = false, set in the server process only):
// the behaviour before issue 15.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <socketserver.hpp>

#include "bench_util.hpp"

namespace {

namespace ss = socketserver;
using Clock = std::chrono::steady_clock;
using bench::die;

struct Pid : ss::StreamRequestHandler<> {
  void handle() {
    rfile.readline();
    wfile.write(std::to_string(::getpid()) + "\n");
  }
};

template <template <class, class> class Server>
class BalanceServer final : public Server<Pid, BalanceServer<Server>> {
  using base = Server<Pid, BalanceServer<Server>>;

 public:
  using base::base;
  static constexpr int request_queue_size = 128;  // as bench/ours_server
};

// The server process: serves until its control pipe closes. Writes the port to `ready`.
template <class Server>
[[noreturn]] void serve(std::size_t workers, bool rotation, int ready, int control) {
  ss::detail::exclusive_wait::rotation = rotation;
  try {
    Server server(ss::address("127.0.0.1", 0));
    const std::string port = std::to_string(server.server_address.port()) + "\n";
    if (::write(ready, port.data(), port.size()) < 0) ::_exit(2);
    ::close(ready);
    std::thread stopper([&] {
      char c;
      while (::read(control, &c, 1) < 0 && errno == EINTR) {
      }
      server.shutdown();
    });
    server.serve_forever_workers(workers, std::chrono::milliseconds(100));
    stopper.join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork_balance: server: %s\n", e.what());
    ::_exit(1);
  }
  ::_exit(0);
}

struct server_process {
  pid_t pid = -1;
  int control = -1;
  int port = 0;
};

server_process start(const std::string& kind, std::size_t workers, bool rotation) {
  int ready[2], control[2];
  if (::pipe(ready) < 0 || ::pipe(control) < 0) die("pipe");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    ::close(ready[0]);
    ::close(control[1]);
    if (kind == "sync")
      serve<BalanceServer<ss::TCPServer>>(workers, rotation, ready[1], control[0]);
    if (kind == "threading")
      serve<BalanceServer<ss::ThreadingTCPServer>>(workers, rotation, ready[1], control[0]);
    if (kind == "pool")
      serve<BalanceServer<ss::ThreadPoolTCPServer>>(workers, rotation, ready[1], control[0]);
    if (kind == "fiber")
      serve<BalanceServer<ss::FiberTCPServer>>(workers, rotation, ready[1], control[0]);
    ::_exit(2);
  }
  ::close(ready[1]);
  ::close(control[0]);
  char buf[32] = {};
  ssize_t n = 0;
  while ((n = ::read(ready[0], buf, sizeof buf - 1)) < 0 && errno == EINTR) {
  }
  ::close(ready[0]);
  if (n <= 0) die("server for " + kind + " did not start");
  return server_process{pid, control[1], std::atoi(buf)};
}

void stop(server_process& s) {
  ::close(s.control);
  int status = 0;
  while (::waitpid(s.pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// One connect-per-request exchange: the pid that answered, 0 on an error.
long exchange(int port) {
  // Close-on-exec without SOCK_CLOEXEC where the system lacks it (detail/fd.hpp).
  const int fd = socketserver::detail::open_socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<unsigned short>(port));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  long pid = 0;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 &&
      ::send(fd, "who\n", 4, socketserver::detail::msg_nosignal) == 4) {
    char buf[32];
    std::size_t got = 0;
    for (;;) {
      const ssize_t n = ::recv(fd, buf + got, sizeof buf - 1 - got, 0);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
      if (got >= sizeof buf - 1 || buf[got - 1] == '\n') break;
    }
    buf[got] = '\0';
    if (got > 0 && buf[got - 1] == '\n') pid = std::atol(buf);
  }
  ::close(fd);
  return pid;
}

struct outcome {
  double rate = 0;
  long errors = 0;
  std::vector<long> per_worker;  // sorted, largest first
};

// `clients` threads for `seconds`. rate 0: closed loop (each client as fast as it can);
// otherwise open loop, the requests of all clients spaced 1/rate apart.
outcome run(int port, int clients, double seconds, double rate, std::size_t workers) {
  std::mutex m;
  std::map<long, long> counts;
  long errors = 0, done = 0;
  const auto begin = Clock::now() + std::chrono::milliseconds(20);
  const auto end =
      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&, t] {
      std::map<long, long> mine;
      long my_errors = 0, my_done = 0;
      for (long k = 0;; ++k) {
        auto at = begin;
        if (rate > 0)
          at += std::chrono::duration_cast<Clock::duration>(
              std::chrono::duration<double>(static_cast<double>(k * clients + t) / rate));
        if (at >= end) break;
        std::this_thread::sleep_until(at);  // a bench's pacing, not a synchronisation
        if (Clock::now() >= end) break;
        const long pid = exchange(port);
        if (pid > 0)
          ++mine[pid];
        else
          ++my_errors;
        ++my_done;
      }
      std::lock_guard<std::mutex> lock(m);
      for (auto& [pid, n] : mine) counts[pid] += n;
      errors += my_errors;
      done += my_done;
    });
  for (auto& th : threads) th.join();
  outcome o;
  o.errors = errors;
  o.rate = static_cast<double>(done - errors) / seconds;
  for (auto& [pid, n] : counts) o.per_worker.push_back(n);
  while (o.per_worker.size() < workers) o.per_worker.push_back(0);
  std::sort(o.per_worker.rbegin(), o.per_worker.rend());
  return o;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

struct row {
  std::string kind, load;
  std::size_t workers;
  bool rotation;
  outcome o;
};
std::vector<row> rows;

std::string per_worker(const outcome& o, const char* separator) {
  std::string per;
  for (long n : o.per_worker) per += (per.empty() ? "" : separator) + std::to_string(n);
  return per;
}

std::string max_min(const outcome& o) {
  const long max = o.per_worker.front(), min = o.per_worker.back();
  char ratio[32];
  if (min > 0)
    std::snprintf(ratio, sizeof ratio, "%.2f", static_cast<double>(max) / static_cast<double>(min));
  else
    std::snprintf(ratio, sizeof ratio, "inf");
  return ratio;
}

void report(const std::string& kind, std::size_t workers, bool rotation, const std::string& load,
            const outcome& o) {
  rows.push_back(row{kind, load, workers, rotation, o});
  std::printf(
      "kind=%s workers=%zu rotation=%s load=%s rate=%.0f errors=%ld per_worker=%s "
      "max_min=%s\n",
      kind.c_str(), workers, rotation ? "on" : "off", load.c_str(), o.rate, o.errors,
      per_worker(o, ",").c_str(), max_min(o).c_str());
  std::fflush(stdout);
}

// Rotation off and on side by side, for RESULTS.md.
void markdown() {
  std::printf(
      "\n| kind | workers | load | without: req/s | per worker | max/min | with: req/s "
      "| per worker | max/min |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const row& off : rows) {
    if (off.rotation) continue;
    for (const row& on : rows)
      if (on.rotation && on.kind == off.kind && on.workers == off.workers && on.load == off.load)
        std::printf("| %s | %zu | %s | %.0f | %s | %s | %.0f | %s | **%s** |\n", off.kind.c_str(),
                    off.workers, off.load.c_str(), off.o.rate, per_worker(off.o, " ").c_str(),
                    max_min(off.o).c_str(), on.o.rate, per_worker(on.o, " ").c_str(),
                    max_min(on.o).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> kinds = {"sync", "threading", "pool", "fiber"};
  std::vector<std::size_t> worker_counts = {2, 4};
  std::vector<bool> rotations = {false, true};
  double seconds = 2;
  int clients = 32;
  bool md = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--md") {
      md = true;
      continue;
    }
    if (i + 1 >= argc) die("missing value after " + arg);
    const std::string value = argv[++i];
    if (arg == "--kinds") {
      kinds = split(value);
    } else if (arg == "--workers") {
      worker_counts.clear();
      for (auto& w : split(value)) worker_counts.push_back(std::stoul(w));
    } else if (arg == "--seconds") {
      seconds = std::stod(value);
    } else if (arg == "--clients") {
      clients = std::stoi(value);
    } else if (arg == "--rotation") {
      if (value == "both")
        rotations = {false, true};
      else
        rotations = {value == "on"};
    } else {
      die("unknown option " + arg);
    }
  }
  ::signal(SIGPIPE, SIG_IGN);
  for (const auto& kind : kinds)
    for (std::size_t workers : worker_counts)
      for (bool rotation : rotations) {
        server_process server = start(kind, workers, rotation);
        (void)run(server.port, clients, 0.3, 0, workers);  // warm-up: every worker started
        const outcome saturated = run(server.port, clients, seconds, 0, workers);
        report(kind, workers, rotation, "max", saturated);
        for (double share : {0.5, 0.9}) {
          const outcome o = run(server.port, clients, seconds, share * saturated.rate, workers);
          report(kind, workers, rotation, std::to_string(static_cast<int>(share * 100)) + "%", o);
        }
        stop(server);
      }
  if (md) markdown();
  return 0;
}
