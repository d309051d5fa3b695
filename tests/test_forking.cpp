// SPDX-License-Identifier: MIT
// ForkingMixIn (CPython reference 1.7): a child process per request, for the four forking
// servers. Separate processes, reaping (and not reaping other children), max_children,
// exit statuses and handle_error() in the child, block_on_close, the child's copy of the
// listening socket, and the 300 s timeout.
//
// The handlers below run in child processes: they never use Catch2 (an assertion there
// would report in, or unwind into, a copy of the test runner). They answer the client, or
// leave a file, and the test checks that in the parent. The library leaves the child with
// _exit(), so none of the parent's destructors run there.
//
// Nothing here sleeps to synchronise: the servers are driven with handle_request() (which
// forks and returns), children are held with a pipe or by their client and released by the
// test, and every wait is bounded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/hooked_server.hpp"

namespace {

namespace ss = socketserver;

// The longest a child waits to be released, in milliseconds (the test's own waits on
// clients are bounded by the client sockets' 20 s timeout).
constexpr int kChildWaitMs = 10000;

using namespace test::hooked;  // Hooks, Server, Handler and the client helpers

// Reads one line (up to '\n', which is dropped) from a stream socket; what it got if the
// socket fails or times out first. Never throws (see the max_children test).
std::string read_line(const ss::socket& c) {
  std::string line;
  char ch;
  std::error_code ec;
  while (line.size() < 4096 && c.recv(&ch, 1, 0, ec) == 1 && ch != '\n') line += ch;
  return line;
}

// Reads to end of stream; what it got if the socket fails or times out first. Never throws.
std::string read_all_quietly(const ss::socket& c) {
  std::string out;
  char buf[4096];
  std::error_code ec;
  while (out.size() < (1 << 20)) {
    const std::size_t n = c.recv(buf, sizeof buf, 0, ec);
    if (ec || n == 0) break;
    out.append(buf, n);
  }
  return out;
}

// A pipe that children wait on until the test writes to it.
class Release {
 public:
  Release() {
    if (ss::detail::open_pipe(fds_, false) != 0)
      throw std::system_error(errno, std::system_category(), "pipe");
  }
  Release(const Release&) = delete;
  Release& operator=(const Release&) = delete;
  ~Release() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  /// Lets one waiting child go.
  void release() const {
    const char byte = 'r';
    (void)::write(fds_[1], &byte, 1);
  }
  /// In the child: waits (bounded) for release(); true if released.
  bool wait() const {
    pollfd p{fds_[0], POLLIN, 0};
    char byte;
    return ::poll(&p, 1, kChildWaitMs) == 1 && ::read(fds_[0], &byte, 1) == 1;
  }

 private:
  int fds_[2];
};

// Waits for the child `pid` to exit and returns its wait status, without reaping it
// (WNOWAIT): the server still finds it and reaps it. -1 if it cannot be waited for.
int exit_status_of(pid_t pid) {
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) != 0) return -1;
  return info.si_code == CLD_EXITED ? info.si_status : 1000 + info.si_status;
}

// The pids in `after` that are not in `before` (the children one request added).
std::vector<pid_t> added(const std::set<pid_t>& before, const std::set<pid_t>& after) {
  std::vector<pid_t> out;
  for (pid_t pid : after)
    if (before.count(pid) == 0) out.push_back(pid);
  return out;
}

// How long a server call may take before the test calls it stuck (it takes milliseconds).
constexpr std::chrono::seconds kStuck{2};

// True if the stream socket has something to read (or end of stream) within `limit`.
bool readable_within(const ss::socket& c, std::chrono::milliseconds limit) {
  pollfd p{c.fileno(), POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(limit.count())) == 1;
}

// The pid written after `prefix` in a child's "started" line.
pid_t pid_after(const std::string& line, const std::string& prefix) {
  if (line.rfind(prefix, 0) != 0) return 0;
  return static_cast<pid_t>(std::stol("0" + line.substr(prefix.size())));
}

// Runs call() (a server method) in a thread and waits up to `patience` for it; true if it
// returned in time. If not, the server is assumed stuck in ForkingMixIn::collect_children()
// at max_children, as it was before commit 9414ea0 (it looped on wait_for_any_child()
// without reaping; the pidfd of an exited child polls readable at once, so it spun): the
// test then reaps `children` (the server's, by pid) itself, after which pidfd_open() fails
// for them and the server's fallback path forgets them, so the call returns and the test
// can report the failure.
template <class F>
bool finishes_in_time(F call, const std::vector<pid_t>& children,
                      std::chrono::milliseconds patience = kStuck) {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  std::thread t([&] {
    try {
      call();
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = true;
    }
    cv.notify_all();
  });
  bool in_time;
  {
    std::unique_lock<std::mutex> lock(mutex);
    in_time = cv.wait_for(lock, patience, [&] { return done; });
  }
  if (!in_time)
    for (pid_t pid : children)
      if (pid > 0) {
        int status;
        ::waitpid(pid, &status, 0);
      }
  t.join();
  if (error) std::rethrow_exception(error);
  return in_time;
}

// Forks a child that exits at once with `code`, waits until it has (without reaping it:
// WNOWAIT) and returns its pid; -1 on failure.
pid_t exited_child_of_our_own(int code) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(code);
  if (pid < 0) return -1;
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) != 0) return -1;
  return pid;
}

}  // namespace

#define FORKING_KINDS \
  test::ForkingTCP, test::ForkingUDP, test::ForkingUnixStream, test::ForkingUnixDatagram

TEMPLATE_TEST_CASE("forking servers: defaults, with a 300 s timeout", "[forking]", FORKING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Server<K> server(K::bind_address(dir));
  REQUIRE(server.timeout.has_value());
  CHECK(server.timeout->count() == 300.0);
  CHECK(server.max_children == 40);
  CHECK(server.block_on_close);
  CHECK(server.active_children.empty());
}

TEMPLATE_TEST_CASE("forking servers handle each request in its own child, which replies",
                   "[forking]", FORKING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    reply_to<K>(request, client, std::to_string(::getpid()));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  std::vector<pid_t> pids;
  for (int i = 0; i < 2; ++i) {
    ss::socket c = send_request<K>(server.server_address, "pid?", dir);
    server.handle_request();  // forks and returns
    pids.push_back(static_cast<pid_t>(std::stol("0" + read_reply<K>(c))));
  }
  CHECK(pids[0] != pids[1]);
  CHECK(pids[0] != ::getpid());
  CHECK(pids[1] != ::getpid());
  CHECK(pids[0] > 0);
  CHECK(pids[1] > 0);
  // Nothing has reaped them yet (no timeout, no serve_forever), so they are the server's.
  CHECK(server.active_children == std::set<pid_t>(pids.begin(), pids.end()));
  server.server_close();
  CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

// Library bug (issue 12, musl): a child forked while another thread of the server's process held
// stdout's lock (a printf under way) inherited it locked for good: musl's fork() leaves stdio
// locks as they are (glibc's resets them in the child). The child's fflush() before _exit()
// then waited forever, so it never exited and server_close() waited for it (the prefork
// upgrade test lost a generation that way, one run in eight). The fork holds the standard
// streams' locks across fork() now (detail::fork_with_stdio). Here a thread takes and
// releases stdout's lock over and over while the server forks 200 children; every one exits.
TEST_CASE("forking servers: a child forked while another thread writes to stdout exits",
          "[forking][reap]") {
  using K = test::ForkingTCP;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    reply_to<K>(request, client, read_request<K>(request));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  server.max_children = 1000;  // none is reaped while the loop runs: all 200 stay listed
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int i = 0; i < 10000000 && !stop; ++i) {
      ::flockfile(stdout);  // as a printf() does, without printing
      ::funlockfile(stdout);
      std::this_thread::yield();
    }
  });
  int answered = 0;
  for (int i = 0; i < 200; ++i) {
    const std::string message = "request " + std::to_string(i);
    ss::socket c = send_request<K>(server.server_address, message, dir);
    server.handle_request();  // forks and returns
    answered += read_reply<K>(c) == message;
  }
  stop = true;
  writer.join();
  CHECK(answered == 200);
  // The replies came before the children's exits: wait for those (bounded).
  const bool all_exited = test::eventually([&] {
    server.collect_children();
    return server.active_children.empty();
  });
  INFO("children still running: " << server.active_children.size());
  CHECK(all_exited);
  for (pid_t pid : server.active_children) ::kill(pid, SIGKILL);  // or server_close() hangs
  server.server_close();
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking servers reap their children (serve_forever, server_close)",
                   "[forking][reap]", FORKING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    reply_to<K>(request, client, read_request<K>(request));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  {
    test::Serving<Server<K>> serving(server, std::chrono::milliseconds(20));
    for (int i = 0; i < 5; ++i) {
      const std::string message = "echo " + std::to_string(i);
      CHECK(test::round_trip<K>(server.server_address, message, dir) == message);
    }
  }
  server.server_close();
  CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("max_children: the server waits for a child to exit before forking another",
                   "[forking][max_children]", test::ForkingTCP, test::ForkingUnixStream) {
  // Each child says "started <n> <pid>", where n is the size of active_children when it was
  // forked (its copy of the parent's set), then waits for one byte from its client. With
  // max_children = 2 and two children held, the third request must wait until one exits:
  // its child then sees 1 (the exited child was reaped before forking), never 2. Nothing
  // else reaps here (handle_request(), no timeout), so a server that forked without waiting
  // would hand the third child a set of 2.
  //
  // collect_children() once spun forever at the cap after a child had exited (see
  // finishes_in_time()); should that come back, the test sees it within kStuck and gets the
  // server out by reaping its children itself, so it fails instead of hanging.
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  server.max_children = 2;
  hooks.request = [&server](ss::socket& connection, const ss::address&) {
    connection.settimeout(std::chrono::milliseconds(kChildWaitMs));
    connection.sendall("started " + std::to_string(server.active_children.size()) + " " +
                       std::to_string(::getpid()) + "\n");
    char byte;
    std::error_code ec;
    connection.recv(&byte, 1, 0, ec);
    connection.sendall(ec ? "timed out" : "done");
  };
  ss::socket c1 = test::connect_to(server.server_address, K::socket_type, &dir);
  ss::socket c2 = test::connect_to(server.server_address, K::socket_type, &dir);
  ss::socket c3 = test::connect_to(server.server_address, K::socket_type, &dir);
  server.handle_request();
  server.handle_request();
  const std::string started1 = read_line(c1);
  const std::string started2 = read_line(c2);
  CHECK(started1.rfind("started 0 ", 0) == 0);
  CHECK(started2.rfind("started 1 ", 0) == 0);
  REQUIRE(server.active_children.size() == 2);
  const pid_t child1 = pid_after(started1, "started 0 ");
  const pid_t child2 = pid_after(started2, "started 1 ");

  // Nothing between here and join() may throw: the thread would still be running.
  std::thread third([&] { server.handle_request(); });  // waits until a child exits
  std::error_code ec;
  c1.sendall("x", 0, ec);  // child 1 finishes
  CHECK_FALSE(ec);
  CHECK(read_all_quietly(c1) == "done");
  // A correct server forks the third child as soon as the first has exited.
  const bool third_started = readable_within(c3, kStuck);
  CHECK(third_started);
  if (!third_started) {  // stuck in collect_children(): reaping child 1 lets it out
    int status;
    ::waitpid(child1, &status, 0);
  }
  const std::string started3 = read_line(c3);
  third.join();
  CHECK(started3.rfind("started 1 ", 0) == 0);
  const pid_t child3 = pid_after(started3, "started 1 ");
  CHECK(server.active_children == std::set<pid_t>{child2, child3});

  c2.sendall("x");
  c3.sendall("x");
  CHECK(test::recv_all(c2) == "done");
  CHECK(test::recv_all(c3) == "done");
  // Still at the cap: server_close() must not spin either.
  // (Once the server has been seen stuck, it is not given time again.)
  CHECK(finishes_in_time([&] { server.server_close(); }, {child2, child3},
                         third_started ? kStuck : std::chrono::milliseconds(0)));
  CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking servers: handle_error runs in the child, which exits with 1",
                   "[forking][errors]", FORKING_KINDS) {
  // The exit status is read with waitid(WNOWAIT), which waits for the child without reaping
  // it, so the server still reaps its own child later. handle_error() answers the client
  // with its pid to show where it ran.
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    if (read_request<K>(request) == "throw") throw std::runtime_error("boom in the child");
    reply_to<K>(request, client, "fine");
  };
  hooks.error = [](typename K::request_type& request, const ss::address& client) {
    std::string what;
    try {
      throw;
    } catch (const std::exception& e) {
      what = e.what();
    }
    reply_to<K>(request, client, "handle_error in " + std::to_string(::getpid()) + ": " + what);
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;

  ss::socket c1 = send_request<K>(server.server_address, "throw", dir);
  server.handle_request();
  REQUIRE(server.active_children.size() == 1);
  const pid_t failing = *server.active_children.begin();
  CHECK(read_reply<K>(c1) == "handle_error in " + std::to_string(failing) + ": boom in the child");
  CHECK(exit_status_of(failing) == 1);

  const std::set<pid_t> before = server.active_children;
  ss::socket c2 = send_request<K>(server.server_address, "fine?", dir);
  server.handle_request();
  const std::vector<pid_t> new_children = added(before, server.active_children);
  REQUIRE(new_children.size() == 1);
  CHECK(read_reply<K>(c2) == "fine");
  CHECK(exit_status_of(new_children[0]) == 0);

  server.server_close();
  CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking servers: block_on_close makes server_close wait for the children",
                   "[forking][block_on_close]", FORKING_KINDS) {
  // The child waits on a pipe, then creates a file and exits. The test releases it from
  // inside server_close() (a server_close() override, just before the base version), so
  // the child is still running when the server closes and collects.
  using K = TestType;
  test::TempDir dir;
  const std::string done = dir.file("child-done");
  Release release;
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address&) {
    read_request<K>(request);
    if (release.wait()) ::close(::open(done.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  };
  hooks.closing = [&] { release.release(); };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  REQUIRE(server.block_on_close);
  ss::socket client = send_request<K>(server.server_address, "hold", dir);
  server.handle_request();
  REQUIRE(server.active_children.size() == 1);
  CHECK_FALSE(test::file_exists(done));
  server.server_close();
  CHECK(test::file_exists(done));
  CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking servers: block_on_close=false, server_close does not wait",
                   "[forking][block_on_close]", FORKING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  const std::string done = dir.file("child-done");
  Release release;
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address&) {
    read_request<K>(request);
    if (release.wait()) ::close(::open(done.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  server.block_on_close = false;
  ss::socket client = send_request<K>(server.server_address, "hold", dir);
  server.handle_request();
  REQUIRE(server.active_children.size() == 1);
  const pid_t child = *server.active_children.begin();
  // Had it waited, it would return only when the child gave up waiting (10 s), without the
  // file; the child would then be reaped.
  server.server_close();
  CHECK_FALSE(test::file_exists(done));
  CHECK(server.active_children.count(child) == 1);  // still running, not reaped
  release.release();
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);  // nobody else reaps it
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(test::file_exists(done));
  server.collect_children();  // the server notices its child is gone (ECHILD)
  CHECK(server.active_children.empty());
}

TEMPLATE_TEST_CASE("forking servers never reap child processes they did not start",
                   "[forking][reap]", FORKING_KINDS) {
  // The test forks a child of its own, lets it become a zombie, then has the server serve
  // and collect in every way it can; the zombie must still be the test's to wait for.
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    reply_to<K>(request, client, read_request<K>(request));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  const pid_t mine = exited_child_of_our_own(42);
  REQUIRE(mine > 0);

  for (int i = 0; i < 3; ++i) {
    ss::socket c = send_request<K>(server.server_address, "direct " + std::to_string(i), dir);
    server.handle_request();
    CHECK(read_reply<K>(c) == "direct " + std::to_string(i));
  }
  {  // serve_forever(): service_actions() on every iteration
    test::Serving<Server<K>> serving(server, std::chrono::milliseconds(10));
    for (int i = 0; i < 3; ++i) {
      const std::string message = "serving " + std::to_string(i);
      CHECK(test::round_trip<K>(server.server_address, message, dir) == message);
    }
  }
  server.collect_children();
  server.service_actions();
  server.handle_timeout();
  server.collect_children(true);
  server.server_close();
  CHECK(server.active_children.empty());

  int status = 0;
  REQUIRE(::waitpid(mine, &status, WNOHANG) == mine);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 42);
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking servers at max_children never reap child processes they did not start",
                   "[forking][reap][max_children]", test::ForkingTCP, test::ForkingUDP) {
  // CPython's collect_children() calls waitpid(-1) once max_children is reached, which
  // reaps any child of the process. Here the server runs at its cap (max_children = 1), so
  // every request and server_close() collect at the cap, with the test's zombie present.
  // Every server call runs under finishes_in_time(), so a server stuck at the cap fails the
  // test instead of hanging it.
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    reply_to<K>(request, client, std::to_string(::getpid()));
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  server.max_children = 1;
  const pid_t mine = exited_child_of_our_own(42);
  REQUIRE(mine > 0);

  pid_t last_child = 0;
  bool in_time = true;
  for (int i = 0; i < 3 && in_time; ++i) {
    ss::socket c = send_request<K>(server.server_address, "pid?", dir);
    in_time = finishes_in_time([&] { server.handle_request(); }, {last_child});
    CHECK(in_time);
    last_child = static_cast<pid_t>(std::stol("0" + read_reply<K>(c)));
    CHECK(last_child > 0);
  }
  // (Once the server has been seen stuck, it is not given time again.)
  CHECK(finishes_in_time([&] { server.server_close(); }, {last_child},
                         in_time ? kStuck : std::chrono::milliseconds(0)));
  CHECK(server.active_children.empty());

  int status = 0;
  REQUIRE(::waitpid(mine, &status, WNOHANG) == mine);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 42);
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("forking stream servers: the child closes its copy of the listening socket",
                   "[forking]", test::ForkingTCP, test::ForkingUnixStream) {
  using K = TestType;
  test::TempDir dir;
  Hooks<K> hooks;
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  const int listening = server.fileno();
  REQUIRE(listening >= 0);
  // Reports, from the child, the server's fileno() and whether the parent's listening
  // descriptor number is still open in the child.
  hooks.request = [&server, listening](ss::socket& connection, const ss::address&) {
    read_request<K>(connection);
    const bool open = ::fcntl(listening, F_GETFD) != -1;
    connection.sendall("fileno " + std::to_string(server.fileno()) + ", listening " +
                       (open ? "open" : (errno == EBADF ? "closed" : "?")));
  };
  for (int i = 0; i < 2; ++i) {
    ss::socket c = send_request<K>(server.server_address, "check", dir);
    server.handle_request();
    CHECK(read_reply<K>(c) == "fileno -1, listening closed");
    CHECK(server.fileno() == listening);  // the parent's is untouched
    CHECK(::fcntl(listening, F_GETFD) != -1);
  }
  server.server_close();
  CHECK_FALSE(test::has_children());
}
