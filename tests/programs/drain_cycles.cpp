// SPDX-License-Identifier: MIT
// The drain measurement (docs/RELIABILITY.md): a server process restarted CYCLES times, each
// stopped by SIGTERM + drain(), under load from connect-per-request and persistent clients.
// Counts requests that were sent and neither answered nor refused before sending (the
// connection refused, or ended by the server before the client sent): must be 0.
//   drain_cycles [CYCLES=20] [CONNECT_CLIENTS=20] [PERSISTENT_CLIENTS=4]
//   [KIND=pool|threading|fiber] (drain_cycles --serve PORT KIND: the server, started by the above)
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <socketserver.hpp>

namespace {

struct Echo : socketserver::StreamRequestHandler<> {
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(line);
  }
};
template <class Base>
struct Reusable : Base {
  static constexpr bool allow_reuse_address = true;
  static constexpr int request_queue_size = 128;
  using Base::Base;
};
struct PoolServer : Reusable<socketserver::ThreadPoolTCPServer<Echo, PoolServer>> {
  using Reusable::Reusable;
};
struct ThreadingServer : Reusable<socketserver::ThreadingTCPServer<Echo, ThreadingServer>> {
  using Reusable::Reusable;
};
struct FiberServer : Reusable<socketserver::FiberTCPServer<Echo, FiberServer>> {
  using Reusable::Reusable;
};

template <class Server>
int serve(int port) {
  Server server({"127.0.0.1", port});
  socketserver::shutdown_on_signals stop(server);
  std::printf("ready\n");
  std::fflush(stdout);
  server.serve_forever(std::chrono::milliseconds(50));
  server.drain(std::chrono::seconds(10));
  return 0;
}

std::atomic<bool> running{true};
std::atomic<long> answered{0}, refused{0}, lost{0};

int connect_to(int port) {  // -1: refused (or not there yet)
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<unsigned short>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  ::close(fd);
  return -1;
}

// Sends one request and reads its reply: true if answered.
bool ask(int fd, const std::string& line) {
  if (::send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
    return false;
  std::string reply;
  char buf[256];
  while (reply.size() < line.size()) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  return reply == line;
}

// The server ended the connection (FIN or reset already here): refused before sending.
bool ended(int fd) {
#if defined(POLLRDHUP)
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
#else
  pollfd p{fd, POLLIN, 0};
#endif
  if (::poll(&p, 1, 0) <= 0) return false;
  char c;
  return ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

void connect_per_request(int port, int id) {
  for (long i = 0; running; ++i) {
    const int fd = connect_to(port);
    if (fd < 0) {
      ++refused;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    (ask(fd, "c" + std::to_string(id) + " " + std::to_string(i) + "\n") ? answered : lost)++;
    ::close(fd);
  }
}

void persistent(int port, int id) {
  int fd = -1;
  for (long i = 0; running; ++i) {
    if (fd >= 0 && ended(fd)) {
      ::close(fd);
      fd = -1;
      ++refused;
    }
    if (fd < 0 && (fd = connect_to(port)) < 0) {
      ++refused;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    if (ask(fd, "p" + std::to_string(id) + " " + std::to_string(i) + "\n")) {
      ++answered;
    } else {
      ++lost;
      ::close(fd);
      fd = -1;
    }
  }
  if (fd >= 0) ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::string(argv[1]) == "--serve") {
    const int port = std::atoi(argv[2]);
    const std::string kind = argv[3];
    return kind == "threading" ? serve<ThreadingServer>(port)
           : kind == "fiber"   ? serve<FiberServer>(port)
                               : serve<PoolServer>(port);
  }
  const int cycles = argc > 1 ? std::atoi(argv[1]) : 20;
  const int connecting = argc > 2 ? std::atoi(argv[2]) : 20;
  const int persistent_clients = argc > 3 ? std::atoi(argv[3]) : 4;
  const std::string kind = argc > 4 ? argv[4] : "pool";
  int port = 0;
  {  // a free port for every cycle (the servers set SO_REUSEADDR)
    socketserver::TCPServer<Echo> probe({"127.0.0.1", 0});
    port = probe.server_address.port();
  }
  std::vector<std::thread> clients;
  auto start_server = [&] {
    int out[2];
    if (::pipe(out) < 0) return static_cast<pid_t>(-1);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(out[1], 1);
      const std::string p = std::to_string(port);
      ::execl(argv[0], argv[0], "--serve", p.c_str(), kind.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(out[1]);
    char buf[16];
    const bool ready = ::read(out[0], buf, sizeof buf) > 0;  // "ready\n"
    ::close(out[0]);
    return ready ? pid : static_cast<pid_t>(-1);
  };
  int failures = 0;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const pid_t pid = start_server();
    if (pid < 0) {
      std::fprintf(stderr, "drain_cycles: cannot start the server\n");
      return 2;
    }
    if (cycle == 0) {
      for (int i = 0; i < connecting; ++i) clients.emplace_back(connect_per_request, port, i);
      for (int i = 0; i < persistent_clients; ++i) clients.emplace_back(persistent, port, i);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // load, not synchronisation
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
  }
  running = false;
  for (std::thread& t : clients) t.join();
  std::printf(
      "cycles=%d kind=%s connect_clients=%d persistent_clients=%d answered=%ld "
      "refused=%ld lost=%ld server_failures=%d\n",
      cycles, kind.c_str(), connecting, persistent_clients, answered.load(), refused.load(),
      lost.load(), failures);
  return lost == 0 && failures == 0 ? 0 : 1;
}
