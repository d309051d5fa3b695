// SPDX-License-Identifier: MIT
// Upgrades in place without losing a connection, without systemd: on SIGHUP (or SIGUSR2)
// the server starts the program installed at its path again, hands it the listening socket
// over a Unix socket (SCM_RIGHTS), and once the new process serves, stops and lets its
// requests in flight finish. SIGTERM or Ctrl-C stops it (draining).
// Usage: upgrade_in_place [HOST] [PORT] [WORKERS]   (default localhost 9999; WORKERS 0, the
//        default, serves on threads in one process, WORKERS > 0 preforks that many)
// Each reply is "<pid of the serving generation> <the line sent>". Each generation prints
// "serving on HOST:PORT (pid P)" once it serves, and "pid P stopped" when it has finished.
#include <limits.h>  // PATH_MAX
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include <socketserver.hpp>

#include "example_util.hpp"

namespace {

long generation = ::getpid();  // the process that serves (its prefork workers inherit it)

struct Hello : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(std::to_string(generation) + " " + rfile.readline()); }
};

// This program's path, read once at the start: on SIGHUP the binary installed there now runs
// (an upgrade), while /proc/self/exe would be the one this process runs.
std::string program_path(const char* argv0) {
  char path[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return argv0;
  path[n] = '\0';
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    generation = ::getpid();
    const auto args = example::parse_server_args(argc, argv);
    const int workers = argc > 3 ? std::atoi(argv[3]) : 0;
    std::vector<std::string> restart_argv(argv, argv + argc);
    restart_argv[0] = program_path(argv[0]);

    // The signals are taken with sigwait() below: blocked before any thread starts.
    sigset_t signals;
    sigemptyset(&signals);
    for (int s : {SIGHUP, SIGUSR2, SIGTERM, SIGINT}) sigaddset(&signals, s);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    // Started by a predecessor: serve on its socket; otherwise bind one.
    const std::vector<int> inherited = socketserver::handed_over_listeners();
    socketserver::ThreadingTCPServer<Hello> server({args.host, args.port}, inherited.empty());
    if (!inherited.empty()) server.adopt_socket(inherited[0]);
    std::exception_ptr failure;
    std::thread serving([&] {
      try {
        if (workers > 0)
          server.serve_forever_workers(static_cast<std::size_t>(workers));
        else
          server.serve_forever();
      } catch (...) {
        failure = std::current_exception();
      }
    });
    // Connections wait in the socket's backlog until the loop takes them: the predecessor
    // may stop now.
    socketserver::handover_ready();
    std::printf("serving on %s (pid %ld)\n", server.server_address.to_string().c_str(), generation);
    std::fflush(stdout);

    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (sig != SIGHUP && sig != SIGUSR2) break;
      try {
        const pid_t next = socketserver::hand_over_listeners({server.fileno()}, restart_argv);
        std::printf("pid %ld handed over to pid %ld\n", generation, static_cast<long>(next));
        std::fflush(stdout);
        server.socket_handed_over();
        break;
      } catch (const std::exception& e) {  // the new version did not start: serve on
        std::fprintf(stderr, "upgrade_in_place: upgrade failed, still serving: %s\n", e.what());
      }
    }
    server.shutdown();
    serving.join();
    server.drain(std::chrono::seconds(10));
    std::printf("pid %ld stopped\n", generation);
    std::fflush(stdout);
    if (failure) std::rethrow_exception(failure);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "upgrade_in_place: %s\n", e.what());
    return 1;
  }
}
