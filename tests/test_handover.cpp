// SPDX-License-Identifier: MIT
// Restarts without systemd (handover.hpp): listening sockets passed over a Unix socket
// (SCM_RIGHTS), a failed successor that leaves the server serving, and 20 upgrades in place
// of examples/upgrade_in_place under constant connect-per-request load from another process.
#include <poll.h>
#include <signal.h>
#if defined(__linux__)
#  include <sys/prctl.h>  // prctl, PR_SET_CHILD_SUBREAPER
#endif
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;
using clock_type = std::chrono::steady_clock;

struct Echo : ss::StreamRequestHandler<> {
  void handle() { wfile.write("echo " + rfile.readline()); }
};

std::string ask(const ss::address& to, const std::string& line) {
  ss::socket c = test::connect_to(to);
  c.sendall(line);
  c.shutdown(SHUT_WR);
  return test::recv_all(c);
}

}  // namespace

TEST_CASE("listening sockets pass over a Unix socket and serve in the receiver", "[handover]") {
  ss::TCPServer<Echo> original({"127.0.0.1", 0});
  int pair[2];
  REQUIRE(ss::detail::open_socketpair(AF_UNIX, SOCK_STREAM, pair) == 0);
  ss::socket a(pair[0]), b(pair[1]);
  ss::send_descriptors(a.fileno(), {original.fileno()});
  const std::vector<int> got = ss::receive_descriptors(b.fileno(), 4, std::chrono::seconds(5));
  REQUIRE(got.size() == 1);
  CHECK(got[0] != original.fileno());
  CHECK((::fcntl(got[0], F_GETFD) & FD_CLOEXEC) != 0);
  ss::TCPServer<Echo> adopted(ss::address(), false);
  adopted.adopt_socket(got[0]);
  CHECK(adopted.server_address == original.server_address);  // the same socket
  original.server_close();  // the socket lives on in the receiver's descriptor
  test::Serving<decltype(adopted)> serving(adopted);
  CHECK(ask(adopted.server_address, "hello\n") == "echo hello\n");
}

TEST_CASE("receive_descriptors: a timeout, a closed peer and too many are errors", "[handover]") {
  int pair[2];
  REQUIRE(ss::detail::open_socketpair(AF_UNIX, SOCK_STREAM, pair) == 0);
  ss::socket a(pair[0]), b(pair[1]);
  try {
    ss::receive_descriptors(b.fileno(), 1, std::chrono::milliseconds(1));
    FAIL("no timeout");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::timed_out);
  }
  ss::socket one(AF_INET, SOCK_STREAM), two(AF_INET, SOCK_STREAM);
  ss::send_descriptors(a.fileno(), {one.fileno(), two.fileno()});
  const int before = test::open_fd_count();
  try {
    ss::receive_descriptors(b.fileno(), 1, std::chrono::seconds(5));
    FAIL("more than asked for was accepted");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::message_size);
  }
  CHECK(test::open_fd_count() == before);  // what did arrive was closed
  a.close();
  try {
    ss::receive_descriptors(b.fileno(), 1, std::chrono::seconds(5));
    FAIL("a closed peer was not reported");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::connection_reset);
  }
}

TEST_CASE("a successor that never gets ready is killed, and the server serves on", "[handover]") {
  ss::TCPServer<Echo> server({"127.0.0.1", 0});
  for (const char* program : {"/bin/true", "/nonexistent/program"}) {
    try {
      ss::hand_over_listeners({server.fileno()}, {program}, std::chrono::seconds(10));
      FAIL("hand_over_listeners() succeeded with " << program);
    } catch (const std::system_error& e) {
      CHECK(std::string(e.what()).find(program) != std::string::npos);
    }
  }
  CHECK_FALSE(test::has_children());  // the failed successors were reaped
  test::Serving<decltype(server)> serving(server);
  CHECK(ask(server.server_address, "still\n") == "echo still\n");
  CHECK(std::getenv(ss::handover_variable) == nullptr);  // this process's own is untouched
}

TEST_CASE("after socket_handed_over(), drain() and server_close() leave the socket to its holder",
          "[handover]") {
  test::TempDir dir;
  const std::string path = dir.file("handed.sock");
  ss::UnixStreamServer<Echo> old_server(path);
  // The successor's descriptor for the same socket (as hand_over_listeners() passes it).
  const int successor_fd = ::fcntl(old_server.fileno(), F_DUPFD_CLOEXEC, 0);
  REQUIRE(successor_fd >= 0);
  {
    test::Serving<decltype(old_server)> serving(old_server);
    CHECK(ask(old_server.server_address, "before\n") == "echo before\n");
    old_server.socket_handed_over();
  }  // serving ends: the successor serves on, so the socket stays non-blocking
  CHECK((::fcntl(successor_fd, F_GETFL) & O_NONBLOCK) != 0);
  // A connection queued now is the successor's: drain() neither serves it nor refuses it.
  ss::socket client = test::connect_to(old_server.server_address);
  client.sendall("queued\n");
  client.shutdown(SHUT_WR);
  CHECK(old_server.drain(std::chrono::seconds(5)) == 0);
  CHECK(old_server.stats().accepted == 1);  // "before" only
  CHECK(old_server.fileno() < 0);
  CHECK(test::file_exists(path));  // its file stays too
  ss::UnixStreamServer<Echo> successor(ss::address(), false);
  successor.adopt_socket(successor_fd);
  successor.handle_request();
  CHECK(test::recv_all(client) == "echo queued\n");
}

#if defined(UPGRADE_IN_PLACE)
namespace {

// Reads a line from `fd` (a pipe) within the deadline; false at end of file or timeout.
bool read_line(int fd, std::string& buffer, std::string& line, clock_type::time_point deadline) {
  for (;;) {
    const auto newline = buffer.find('\n');
    if (newline != std::string::npos) {
      line = buffer.substr(0, newline);
      buffer.erase(0, newline + 1);
      return true;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[512];
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n == 0) return false;
    if (n > 0) buffer.append(chunk, static_cast<std::size_t>(n));
  }
}

// What the load process saw.
struct tally {
  long answered = 0, refused = 0, reset = 0, unanswered = 0, wrong = 0;
};

// The load process: one connection per request, one after the other, until `stop` becomes
// readable (or 60 s); each new server pid it sees is written to `pids`, the tally to
// `result` at the end.
[[noreturn]] void load(int port, int stop, int pids, int result) {
  tally t;
  long last_pid = 0;
  const auto limit = clock_type::now() + std::chrono::seconds(30);
  for (long i = 0; clock_type::now() < limit; ++i) {
    pollfd p{stop, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) break;
    const int fd = ss::detail::open_socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<unsigned short>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const std::string request = "req " + std::to_string(i) + "\n";
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0) {
      ++(errno == ECONNREFUSED ? t.refused : t.reset);
      ::close(fd);
      continue;
    }
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size())) {
      ++t.reset;
      ::close(fd);
      continue;
    }
    std::string reply;
    char buf[128];
    bool reset = false;
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) reset = errno == ECONNRESET;
      if (n <= 0) break;
      reply.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    const auto space = reply.find(' ');
    if (reset) {
      ++t.reset;
    } else if (reply.empty()) {
      ++t.unanswered;
    } else if (space == std::string::npos || reply.substr(space + 1) != request) {
      ++t.wrong;
    } else {
      ++t.answered;
      const long pid = std::atol(reply.c_str());
      if (pid != last_pid) {
        last_pid = pid;
        if (::write(pids, &pid, sizeof pid) < 0) ::_exit(2);
      }
    }
  }
  if (::write(result, &t, sizeof t) < 0) ::_exit(2);
  ::_exit(0);
}

// Waits until the load process reports that `pid` answered it.
bool answered_by(int pids, long pid, clock_type::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left.count() <= 0) return false;
    pollfd p{pids, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    long seen = 0;
    if (::read(pids, &seen, sizeof seen) != sizeof seen) return false;
    if (seen == pid) return true;
  }
}

long serving_pid(const std::string& line, int& port) {
  // "serving on 127.0.0.1:PORT (pid P)"
  const auto colon = line.rfind(':');
  const auto pid_at = line.find("(pid ");
  if (line.rfind("serving on ", 0) != 0 || colon == std::string::npos ||
      pid_at == std::string::npos)
    return 0;
  port = std::atoi(line.c_str() + colon + 1);
  return std::atol(line.c_str() + pid_at + 5);
}

// Whatever the test's outcome, no process of it outlives it: the server's process group
// (every generation and worker) and the load process are killed if still running, and every
// child reaped (orphans included).
struct reap_all {
  pid_t group;
  pid_t& client;
  bool ended = false;  // every member of the group has ended (its number may be reused)
  ~reap_all() {
    if (client > 0) ::kill(client, SIGKILL);
    if (!ended) ::kill(-group, SIGKILL);
    int status = 0;
    while (::waitpid(-1, &status, 0) > 0) {
    }
#  if defined(__linux__)
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
#  endif
  }
};

void upgrade_twenty_times(const char* workers) {
  // Orphaned generations (each is its predecessor's child) are reparented here and reaped.
#  if defined(__linux__)
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
#  else
  (void)workers;
  SOCKETSERVER_SKIP("orphaned generations need a child subreaper (Linux's prctl)");
#  endif
  int out[2], stop[2], pids[2], result[2];
  REQUIRE(ss::detail::open_pipe(out, false) == 0);
  REQUIRE(ss::detail::open_pipe(stop, false) == 0);
  REQUIRE(ss::detail::open_pipe(pids, false) == 0);
  REQUIRE(ss::detail::open_pipe(result, false) == 0);
  const pid_t first = ::fork();
  REQUIRE(first >= 0);
  if (first == 0) {
    ::setpgid(0, 0);  // a group of its own, for reap_all
    ::dup2(out[1], 1);
    ::execl(UPGRADE_IN_PLACE, UPGRADE_IN_PLACE, "127.0.0.1", "0", workers, nullptr);
    ::_exit(127);
  }
  ::close(out[1]);
  std::set<long> generations{first};
  pid_t client = -1;
  reap_all reaping{first, client};
  std::string buffer, line;
  const auto deadline = clock_type::now() + std::chrono::seconds(25);
  int port = 0;
  long pid = 0;
  while (pid == 0 && read_line(out[0], buffer, line, deadline)) pid = serving_pid(line, port);
  REQUIRE(pid == first);

  client = ::fork();
  REQUIRE(client >= 0);
  if (client == 0) {
    for (int fd : {stop[1], pids[0], result[0], out[0]}) ::close(fd);  // or no end of file
    load(port, stop[0], pids[1], result[1]);
  }
  ::close(stop[0]);
  ::close(pids[1]);
  ::close(result[1]);
  REQUIRE(answered_by(pids[0], pid, deadline));

  int stopped = 0;  // generations that said they had finished
  for (int restart = 0; restart < 20; ++restart) {
    REQUIRE(::kill(static_cast<pid_t>(pid), SIGHUP) == 0);
    long next = 0;
    while (next == 0 && read_line(out[0], buffer, line, deadline)) {
      if (line.find(" stopped") != std::string::npos) ++stopped;
      int next_port = 0;
      next = serving_pid(line, next_port);
      if (next != 0) CHECK(next_port == port);
    }
    REQUIRE(next != 0);
    REQUIRE(generations.insert(next).second);
    // Under load all along: the new generation answers before the next restart.
    REQUIRE(answered_by(pids[0], next, deadline));
    pid = next;
  }
  ::close(stop[1]);  // the load stops
  tally t;
  REQUIRE(::read(result[0], &t, sizeof t) == sizeof t);
  int status = 0;
  REQUIRE(::waitpid(client, &status, 0) == client);
  client = -1;
  CHECK(::kill(static_cast<pid_t>(pid), SIGTERM) == 0);
  const auto end = clock_type::now() + std::chrono::seconds(20);
  while (read_line(out[0], buffer, line, end))  // to end of file: every generation ended
    if (line.find(" stopped") != std::string::npos) ++stopped;
  CHECK(stopped == 21);
  reaping.ended = clock_type::now() < end;  // end of file, not the deadline
  ::close(out[0]);
  ::close(pids[0]);
  ::close(result[0]);
  INFO("answered " << t.answered);
  CHECK(t.answered > 21);
  CHECK(t.refused == 0);
  CHECK(t.reset == 0);
  CHECK(t.unanswered == 0);
  CHECK(t.wrong == 0);
}

}  // namespace

TEST_CASE("20 upgrades in place under load lose no connection: threads", "[handover][restart]") {
  upgrade_twenty_times("0");
}

TEST_CASE("20 upgrades in place under load lose no connection: prefork", "[handover][restart]") {
#  if defined(__SANITIZE_THREAD__)
  WARN("skipped under ThreadSanitizer");  // threads in forked workers of a threaded process
  return;
#  elif defined(__has_feature)
#    if __has_feature(thread_sanitizer)
  WARN("skipped under ThreadSanitizer");
  return;
#    endif
#  endif
  upgrade_twenty_times("2");
}
#endif
