// SPDX-License-Identifier: MIT
// FiberMixIn: handlers written for threads, unchanged, on fibers; what makes fibers fibers (one
// loop thread serving many connections at once, waits that suspend only their fiber), and
// the waits a handler may use besides I/O: sleep_for(), offload(), fiber_mutex. The shared
// matrix (test_servers, test_faults, test_hygiene, test_limits, ...) covers the rest.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/latches.hpp"

namespace ss = socketserver;
using namespace std::chrono_literals;

namespace {

// --- Handlers written for ThreadingTCPServer, used unchanged below -----------------------------

// The Python docs' stream handler: one line, upper-cased.
struct Upper : ss::StreamRequestHandler<> {
  void handle() {
    std::string line = rfile.readline();
    for (char& c : line) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    wfile.write(line);
  }
};

// The Python docs' BaseRequestHandler: one recv(), then sendall().
struct RawUpper : ss::BaseRequestHandler<> {
  void handle() {
    std::string data = request.recv(1024);
    for (char& c : data) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    request.sendall(data);
  }
};

// Keep-alive: echoes lines until the client closes, with a handler timeout.
struct LineEcho : ss::StreamRequestHandler<> {
  static constexpr ss::timeout_type timeout = std::chrono::seconds(20);
  void handle() {
    for (const auto& line : rfile) wfile.write(line);
  }
};

// The Python docs' datagram handler.
struct DatagramUpper : ss::DatagramRequestHandler<> {
  void handle() {
    std::string data = rfile.read();
    for (char& c : data) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    wfile.write(data);
  }
};

std::string ask(const ss::address& to, const std::string& message) {
  ss::socket c = test::connect_to(to);
  c.sendall(message);
  c.shutdown(SHUT_WR);
  return test::recv_all(c);
}

template <class Server>
std::vector<std::string> conversation(Server& server) {
  test::Serving<Server> serving(server);
  std::vector<std::string> replies;
  replies.push_back(ask(server.server_address, "hello fibers\n"));
  ss::socket c = test::connect_to(server.server_address);
  for (const char* line : {"one\n", "two\n", "three\n"}) {
    c.sendall(line);
    std::string got;
    while (got.size() < std::string(line).size()) got += c.recv(64);
    replies.push_back(got);
  }
  return replies;
}

}  // namespace

TEST_CASE("handlers written for threads run unchanged on fibers, with the same replies",
          "[fibers]") {
  {
    ss::ThreadingTCPServer<Upper> threads({"127.0.0.1", 0});
    ss::FiberTCPServer<Upper> fibers({"127.0.0.1", 0});
    test::Serving<decltype(threads)> a(threads);
    test::Serving<decltype(fibers)> b(fibers);
    const std::string expected = ask(threads.server_address, "a line\nand more\n");
    CHECK(expected == "A LINE\n");
    CHECK(ask(fibers.server_address, "a line\nand more\n") == expected);
  }
  {
    ss::ThreadingTCPServer<RawUpper> threads({"127.0.0.1", 0});
    ss::FiberTCPServer<RawUpper> fibers({"127.0.0.1", 0});
    test::Serving<decltype(threads)> a(threads);
    test::Serving<decltype(fibers)> b(fibers);
    const std::string expected = ask(threads.server_address, "raw bytes");
    CHECK(expected == "RAW BYTES");
    CHECK(ask(fibers.server_address, "raw bytes") == expected);
  }
  {
    ss::ThreadingTCPServer<LineEcho> threads({"127.0.0.1", 0});
    ss::FiberTCPServer<LineEcho> fibers({"127.0.0.1", 0});
    const auto expected = conversation(threads);
    CHECK(expected == std::vector<std::string>{"hello fibers\n", "one\n", "two\n", "three\n"});
    CHECK(conversation(fibers) == expected);
  }
  {
    test::TempDir dir;
    ss::FiberUDPServer<DatagramUpper> fibers({"127.0.0.1", 0});
    test::Serving<decltype(fibers)> serving(fibers);
    CHECK(test::round_trip<test::FiberUDP>(fibers.server_address, "datagram", dir) == "DATAGRAM");
  }
}

namespace {

// Waits in readline() until the client sends its line: many of these at once on one thread
// is what a fiber server does and a thread-per-request server cannot without a thread each.
struct Waiter : ss::StreamRequestHandler<> {
  static inline test::Counter* arrived = nullptr;
  void handle() {
    arrived->add();
    wfile.write(rfile.readline());
  }
};

}  // namespace

TEST_CASE("one loop thread holds hundreds of connections waiting in their handlers at once",
          "[fibers]") {
  SOCKETSERVER_REQUIRE_THREAD_COUNT();
  constexpr int kClients = 300;
  test::Counter arrived;
  Waiter::arrived = &arrived;
  ss::FiberTCPServer<Waiter> server({"127.0.0.1", 0});
  server.loop_threads = 1;
  const int threads_before = test::thread_count();
  test::Serving<decltype(server)> serving(server);
  std::vector<ss::socket> clients;
  for (int i = 0; i < kClients; ++i) clients.push_back(test::connect_to(server.server_address));
  // Every handler is inside readline() at the same time, on one loop thread.
  REQUIRE(arrived.wait_for(kClients));
  CHECK(server.active_fibers() == static_cast<std::size_t>(kClients));
  CHECK(server.loop_thread_count() == 1);
  // serve_forever()'s, the loop and the stall watchdog
  CHECK(test::thread_count() == threads_before + 3);
  // Answered in the reverse order of arrival: each one only waited for its own client.
  for (int i = kClients - 1; i >= 0; --i) {
    const std::string line = "client " + std::to_string(i) + "\n";
    clients[static_cast<std::size_t>(i)].sendall(line);
    clients[static_cast<std::size_t>(i)].shutdown(SHUT_WR);
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) == line);
  }
  CHECK(test::eventually([&] { return server.active_fibers() == 0; }));
}

namespace {

// "sleep" sleeps until the test releases it, with sleep_for() only; anything else is echoed.
struct Sleeper : ss::StreamRequestHandler<> {
  static inline std::atomic<bool> released{false};
  static inline std::atomic<int> sleeping{0};
  void handle() {
    const std::string line = rfile.readline();
    if (line == "sleep\n") {
      ++sleeping;
      for (int i = 0; i < 20000 && !released; ++i) ss::sleep_for(1ms);
      wfile.write(released ? "woke\n" : "never released\n");
    } else {
      wfile.write(line);
    }
  }
};

}  // namespace

TEST_CASE("sleep_for suspends only its fiber: the loop serves others meanwhile", "[fibers]") {
  ss::FiberTCPServer<Sleeper> server({"127.0.0.1", 0});
  server.loop_threads = 1;
  test::Serving<decltype(server)> serving(server);
  ss::socket sleeper = test::connect_to(server.server_address);
  sleeper.sendall("sleep\n");
  REQUIRE(test::eventually([] { return Sleeper::sleeping == 1; }));
  // On the same (only) loop thread, while the first handler sleeps.
  CHECK(ask(server.server_address, "meanwhile\n") == "meanwhile\n");
  Sleeper::released = true;
  sleeper.shutdown(SHUT_WR);
  CHECK(test::recv_all(sleeper) == "woke\n");
}

namespace {

// offload(): a call that blocks its thread (a gate), on a helper thread; "throw" rethrows.
struct Offloading : ss::StreamRequestHandler<> {
  static inline test::Gate* gate = nullptr;
  void handle() {
    const std::string line = rfile.readline();
    if (line == "block\n") {
      const int answer = ss::offload([] {
        gate->pass();  // blocks this helper thread, not the loop
        return 42;
      });
      wfile.write(std::to_string(answer) + "\n");
    } else if (line == "throw\n") {
      try {
        ss::offload([]() -> int { throw std::runtime_error("from the helper thread"); });
        wfile.write("nothing thrown\n");
      } catch (const std::runtime_error& e) {
        wfile.write(std::string(e.what()) + "\n");
      }
    } else {
      wfile.write(line);
    }
  }
};

}  // namespace

TEST_CASE("offload runs a blocking call on a helper thread while the loop serves others",
          "[fibers]") {
  test::Gate gate;
  Offloading::gate = &gate;
  ss::FiberTCPServer<Offloading> server({"127.0.0.1", 0});
  server.loop_threads = 1;
  test::Serving<decltype(server)> serving(server);
  ss::socket blocked = test::connect_to(server.server_address);
  blocked.sendall("block\n");
  REQUIRE(gate.wait_entered(1));
  CHECK(ask(server.server_address, "meanwhile\n") == "meanwhile\n");
  CHECK(ask(server.server_address, "throw\n") == "from the helper thread\n");
  gate.release();
  blocked.shutdown(SHUT_WR);
  CHECK(test::recv_all(blocked) == "42\n");
}

TEST_CASE("offload and sleep_for off a fiber just call and sleep", "[fibers]") {
  CHECK(ss::offload([] { return std::string("direct"); }) == "direct");
  CHECK_THROWS_AS(ss::offload([]() -> int { throw std::logic_error("x"); }), std::logic_error);
  ss::sleep_for(0ms);
}

namespace {

// Each handler holds one fiber_mutex across its whole reply, with a wait in the middle: the
// replies of two clients must not interleave, whichever loop thread each one is on.
struct Turns : ss::StreamRequestHandler<> {
  static inline ss::fiber_mutex* turn = nullptr;
  static inline std::atomic<int> inside{0};
  static inline std::atomic<int> most_inside{0};
  void handle() {
    const std::string name = rfile.readline();
    std::lock_guard<ss::fiber_mutex> lock(*turn);
    const int now = ++inside;
    if (now > most_inside) most_inside = now;
    for (int i = 0; i < 5; ++i) {
      wfile.write(name);
      ss::sleep_for(1ms);  // suspends while holding it: the others wait, suspended too
    }
    --inside;
  }
};

}  // namespace

TEST_CASE("fiber_mutex: fibers take turns across waits, on one loop and across loops", "[fibers]") {
  for (std::size_t loops : {1u, 2u}) {
    ss::fiber_mutex turn;
    Turns::turn = &turn;
    Turns::most_inside = 0;
    ss::FiberTCPServer<Turns> server({"127.0.0.1", 0});
    server.loop_threads = loops;
    test::Serving<decltype(server)> serving(server);
    std::vector<std::thread> clients;
    std::vector<std::string> replies(8);
    for (std::size_t i = 0; i < replies.size(); ++i)
      clients.emplace_back(
          [&, i] { replies[i] = ask(server.server_address, "c" + std::to_string(i) + "\n"); });
    for (auto& t : clients) t.join();
    CAPTURE(loops);
    CHECK(Turns::most_inside == 1);
    for (std::size_t i = 0; i < replies.size(); ++i) {
      std::string expected;
      for (int k = 0; k < 5; ++k) expected += "c" + std::to_string(i) + "\n";
      CHECK(replies[i] == expected);
    }
  }
  // Off a fiber it is an ordinary mutex.
  ss::fiber_mutex plain;
  CHECK(plain.try_lock());
  CHECK_FALSE(plain.try_lock());
  std::thread other([&] {
    std::lock_guard<ss::fiber_mutex> lock(plain);  // waits for the unlock below
  });
  plain.unlock();
  other.join();
  CHECK(plain.try_lock());
  plain.unlock();
}

namespace {

// Blocks its loop thread outside the library: what handle_stall() is there to report.
struct Hog : ss::StreamRequestHandler<> {
  void handle() {
    rfile.readline();
    std::this_thread::sleep_for(60ms);  // the misbehaviour under test, not synchronisation
    wfile.write("done\n");
  }
};

struct StallWatch : ss::FiberTCPServer<Hog, StallWatch> {
  using base = ss::FiberTCPServer<Hog, StallWatch>;
  using base::base;
  std::mutex mutex;
  std::vector<std::string> reported;
  void handle_stall(const ss::address& client, std::chrono::nanoseconds ran) {
    std::lock_guard<std::mutex> lock(mutex);
    reported.push_back(client.to_string() + (ran >= 20ms ? " long" : " short"));
  }
};

}  // namespace

TEST_CASE("a handler that blocks its loop thread is reported through handle_stall", "[fibers]") {
  StallWatch server({"127.0.0.1", 0});
  server.stall_threshold = 20ms;
  test::Serving<StallWatch> serving(server);
  ss::socket c = test::connect_to(server.server_address);
  const std::string me = c.getsockname().to_string();
  c.sendall("hog\n");
  c.shutdown(SHUT_WR);
  CHECK(test::recv_all(c) == "done\n");
  CHECK(test::eventually([&] {
    std::lock_guard<std::mutex> lock(server.mutex);
    return !server.reported.empty();
  }));
  std::lock_guard<std::mutex> lock(server.mutex);
  REQUIRE(server.reported.size() == 1);
  CHECK(server.reported[0] == me + " long");
}

namespace {

// Holds its loop thread in a raw ::poll() that only the stall report ends (bounded at 15 s):
// a stall that would not end on its own, as a raw ::recv() that nothing answers. (Blocked in
// a system call, not spinning: under valgrind a spinning thread can starve the others.)
int release_pipe[2] = {-1, -1};
std::atomic<bool> stuck{false};

struct Stuck : ss::StreamRequestHandler<> {
  void handle() {
    rfile.readline();
    stuck = true;
    pollfd released{release_pipe[0], POLLIN, 0};
    for (int i = 0; i < 3 && ::poll(&released, 1, 15000) < 0 && errno == EINTR; ++i) {
    }
    stuck = false;
    wfile.write("free\n");
  }
};

struct OngoingWatch : ss::FiberTCPServer<Stuck, OngoingWatch> {
  using base = ss::FiberTCPServer<Stuck, OngoingWatch>;
  using base::base;
  std::mutex mutex;
  std::vector<std::string> reported;  // client, and whether the handler still ran then
  void handle_stall(const ss::address& client, std::chrono::nanoseconds ran) {
    std::lock_guard<std::mutex> lock(mutex);
    reported.push_back(client.to_string() + (stuck ? " while stuck" : " after") +
                       (ran >= 20ms ? "" : " (too soon)"));
    const char release = 1;
    CHECK(::write(release_pipe[1], &release, 1) == 1);
  }
};

}  // namespace

TEST_CASE("a handler stuck on its loop thread is reported while it is stuck", "[fibers]") {
  REQUIRE(::pipe(release_pipe) == 0);
  OngoingWatch server({"127.0.0.1", 0});
  server.stall_threshold = 20ms;
  server.loop_threads = 1;
  test::Serving<OngoingWatch> serving(server);
  ss::socket c = test::connect_to(server.server_address);
  const std::string me = c.getsockname().to_string();
  c.sendall("hold\n");
  c.shutdown(SHUT_WR);
  // The report lets the handler go: without a report made while it is stuck, it waits out
  // its 15 s bound and the report (at the end) says "after".
  CHECK(test::recv_all(c) == "free\n");
  {
    std::lock_guard<std::mutex> lock(server.mutex);
    REQUIRE(server.reported.size() == 1);  // once per stretch: not again when it ends
    CHECK(server.reported[0] == me + " while stuck");
  }
  ::close(release_pipe[0]);
  ::close(release_pipe[1]);
}

namespace {

struct Deep : ss::StreamRequestHandler<> {
  static int recurse(int n) {
    volatile char frame[1024];
    frame[0] = static_cast<char>(n);
    return n == 0 ? frame[0] : recurse(n - 1) + frame[0];
  }
  void handle() {
    rfile.readline();
    wfile.write(std::to_string(recurse(1 << 20)) + "\n");
  }
};

}  // namespace

#if defined(__SANITIZE_ADDRESS__)
#  define SOCKETSERVER_TEST_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define SOCKETSERVER_TEST_ASAN 1
#  endif
#endif

// (AddressSanitizer reports stack overflows itself.)
#if !defined(SOCKETSERVER_TEST_ASAN)
TEST_CASE("a handler that overflows its fiber's stack is reported as such", "[fibers][overflow]") {
  int err[2];
  REQUIRE(::pipe(err) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(err[1], 2);
    // Catch2 puts its own SIGSEGV handler in place for every test case, over the library's
    // (installed once per process, possibly by an earlier case): put the library's back.
    struct sigaction reporter {};
    reporter.sa_sigaction = &ss::detail::fiber_overflow_handler;
    reporter.sa_flags = SA_SIGINFO | SA_ONSTACK;
    ::sigaction(SIGSEGV, &reporter, nullptr);
    ss::FiberTCPServer<Deep> server({"127.0.0.1", 0});
    server.fiber_stack_size = 64 * 1024;
    server.loop_threads = 1;
    std::thread serving([&] { server.serve_forever(); });
    try {
      ask(server.server_address, "dive\n");
    } catch (...) {
    }
    ::_exit(0);  // not reached: the overflow ends the process
  }
  ::close(err[1]);
  std::string said;
  char buf[512];
  for (ssize_t n; (n = ::read(err[0], buf, sizeof buf)) > 0;)
    said.append(buf, static_cast<std::size_t>(n));
  ::close(err[0]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGSEGV);
  CHECK(said.find("fiber stack overflow") != std::string::npos);
}
#endif

TEST_CASE("fiber servers adopt an inherited listening socket", "[fibers][activation]") {
  ss::socket inherited(AF_INET, SOCK_STREAM);
  const ss::address any("127.0.0.1", 0);
  REQUIRE(::bind(inherited.fileno(), any.data(), any.size()) == 0);
  REQUIRE(::listen(inherited.fileno(), 16) == 0);
  const ss::address where = inherited.getsockname();
  ss::FiberTCPServer<Upper> server(ss::address(), false);
  server.adopt_socket(inherited.detach());
  test::Serving<decltype(server)> serving(server);
  CHECK(ask(where, "inherited\n") == "INHERITED\n");
}

namespace {

// Python's way of stopping a server from a request: shutdown() from the handler.
struct Stopper : ss::StreamRequestHandler<> {
  void handle() {
    if (rfile.readline() == "stop\n") {
      server.shutdown();  // waits for serve_forever() to return, suspending only this fiber
      wfile.write("stopped\n");
    } else {
      wfile.write("running\n");
    }
  }
};

}  // namespace

TEST_CASE("a handler on a fiber can call shutdown(): the server stops, the handler goes on",
          "[fibers][shutdown]") {
  for (std::size_t loops : {1u, 2u}) {
    CAPTURE(loops);
    ss::FiberTCPServer<Stopper> server({"127.0.0.1", 0});
    server.loop_threads = loops;
    std::thread serving([&] { server.serve_forever(); });
    CHECK(ask(server.server_address, "hello\n") == "running\n");
    CHECK(ask(server.server_address, "stop\n") == "stopped\n");
    serving.join();  // serve_forever() returned
    CHECK_FALSE(server.is_serving());
  }
}

namespace {

// Many offloads that finish at once: the fiber must only ever be woken by its own completion
// (a wake-up left over from one that finished before the fiber parked resumed ended fibers).
struct QuickOffloads : ss::StreamRequestHandler<> {
  void handle() {
    rfile.readline();
    int sum = 0;
    for (int i = 0; i < 300; ++i) sum += ss::offload([] { return 1; });
    wfile.write(std::to_string(sum) + "\n");
  }
};

// Every handler offloads a call that waits until all of them are in: a burst of offloads
// runs at once, not one after the other behind one helper thread.
struct Rendezvous : ss::StreamRequestHandler<> {
  static inline test::Gate* all_in = nullptr;
  static inline std::atomic<int> arrived{0};
  void handle() {
    rfile.readline();
    const bool met = ss::offload([] {
      if (++arrived == 8) all_in->release();
      std::unique_lock<std::mutex> lock(all_in->mutex);
      return all_in->changed.wait_for(lock, 10s, [] { return all_in->open; });
    });
    wfile.write(met ? "met\n" : "alone\n");
  }
};

}  // namespace

TEST_CASE("offload: results that are ready at once, and a burst of blocking calls together",
          "[fibers][offload]") {
  {
    ss::FiberTCPServer<QuickOffloads> server({"127.0.0.1", 0});
    server.loop_threads = 1;
    test::Serving<decltype(server)> serving(server);
    std::vector<std::thread> clients;
    std::vector<std::string> replies(8);
    for (std::size_t i = 0; i < replies.size(); ++i)
      clients.emplace_back([&, i] { replies[i] = ask(server.server_address, "go\n"); });
    for (auto& t : clients) t.join();
    for (const auto& r : replies) CHECK(r == "300\n");
  }
  {
    test::Gate all_in;
    Rendezvous::all_in = &all_in;
    ss::FiberTCPServer<Rendezvous> server({"127.0.0.1", 0});
    server.loop_threads = 1;
    test::Serving<decltype(server)> serving(server);
    std::vector<std::thread> clients;
    std::vector<std::string> replies(8);
    for (std::size_t i = 0; i < replies.size(); ++i)
      clients.emplace_back([&, i] { replies[i] = ask(server.server_address, "go\n"); });
    for (auto& t : clients) t.join();
    for (const auto& r : replies) CHECK(r == "met\n");
  }
}

namespace {

// A large reply under a handler timeout, to a client that has shut down its sending side:
// the wait for room must not end early (a hang-up of the other direction is not "writable").
struct BigReply : ss::StreamRequestHandler<> {
  static constexpr ss::timeout_type timeout = std::chrono::seconds(20);
  void handle() {
    rfile.readline();
    wfile.write(std::string(8 << 20, 'x'));
  }
};

struct ThrowingVerify : ss::FiberTCPServer<Upper, ThrowingVerify> {
  using base = ss::FiberTCPServer<Upper, ThrowingVerify>;
  using base::base;
  bool verify_request(ss::socket&, const ss::address&) { throw std::runtime_error("refused"); }
};

struct StopInHooks : ss::FiberTCPServer<Upper, StopInHooks> {
  using base = ss::FiberTCPServer<Upper, StopInHooks>;
  using base::base;
  std::atomic<int> refused{0};
  void service_actions() {
    try {
      shutdown();
    } catch (const std::logic_error&) {
      ++refused;
    }
  }
};

}  // namespace

TEST_CASE("a timed write to a client that shut down its sending side waits for room",
          "[fibers][timeout]") {
  ss::FiberTCPServer<BigReply> server({"127.0.0.1", 0});
  test::Serving<decltype(server)> serving(server);
  ss::socket c = test::connect_to(server.server_address);
  c.sendall("big\n");
  c.shutdown(SHUT_WR);
  CHECK(test::recv_all(c, 16u << 20).size() == (8u << 20));
}

TEST_CASE("an exception from a hook on a loop ends serve_forever, as on the other servers",
          "[fibers][hooks]") {
  ThrowingVerify server({"127.0.0.1", 0});
  std::exception_ptr ended;
  std::thread serving([&] {
    try {
      server.serve_forever();
    } catch (...) {
      ended = std::current_exception();
    }
  });
  ss::socket c = test::connect_to(server.server_address);
  serving.join();  // ends by itself
  REQUIRE(ended);
  CHECK_THROWS_WITH(std::rethrow_exception(ended), "refused");
}

TEST_CASE("shutdown() from a hook on a loop throws instead of waiting for itself",
          "[fibers][hooks]") {
  StopInHooks server({"127.0.0.1", 0});
  test::Serving<StopInHooks> serving(server, 1h);
  CHECK(ask(server.server_address, "one\n") == "ONE\n");
  CHECK(test::eventually([&] { return server.refused >= 1; }));
}
