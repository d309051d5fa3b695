// SPDX-License-Identifier: MIT
// Issue 10: a handler's thread ended by pthread_exit() or cancellation (a forced unwind) is
// cleaned up and serving goes on, on every kind of server; and shutdown() returns at once
// while the serve loop waits for a free slot (max_threads, a full pool queue, max_children).
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/hooked_server.hpp"
#include "support/latches.hpp"
#include "support/leaks.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;

using PoolTCP =
    test::Kind<ss::thread_pool_tcp_server_t, true, AF_INET, test::Concurrency::threading>;

// Where pthread_exit() and cancellation end a thread without unwinding its C++ frames
// (musl: the handler's destructors and the server's bookkeeping never run), there is nothing
// to test.
#if defined(__linux__) && !defined(__GLIBC__)
#  define SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND() \
    SOCKETSERVER_SKIP("this C library ends a thread without unwinding it (musl)")
#else
#  define SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND() \
    do {                                            \
    } while (false)
#endif

// Ends the calling thread the two ways that unwind it by force: "exit" (pthread_exit()) and
// "cancel" (cancellation, acted on at once); anything else is echoed.
template <class K>
void exit_cancel_or_echo(typename K::request_type& request, const ss::address& client) {
  const std::string message = test::hooked::read_request<K>(request);
  if (message == "exit\n") pthread_exit(nullptr);
  if (message == "cancel\n") {
    pthread_cancel(pthread_self());
    pthread_testcancel();
  }
  test::hooked::reply_to<K>(request, client, message);
}

// Records handle_error() calls: a forced unwind is not an error to report.
struct ErrorLog {
  std::mutex mutex;
  int calls = 0;
  void add() {
    std::lock_guard<std::mutex> lock(mutex);
    ++calls;
  }
  int value() {
    std::lock_guard<std::mutex> lock(mutex);
    return calls;
  }
};

using test::Counter;
using test::Gate;

// A stream server of the given kind whose handler reads a line, says "entered" and then
// waits: at the gate (threads), or for the client's second line (a forked child, which
// shares no memory with the test).
template <template <class, class> class Server>
struct Held {
  struct Handler;
  struct server_type : Server<Handler, server_type> {
    using base = Server<Handler, server_type>;
    using base::base;
    Gate gate;
    Counter process_calls;
    Counter service_calls_after_request;  // a forking server at max_children waits there
    std::atomic<bool> requested{false};
    bool forked_latch = false;
    void process_request(ss::socket& request, const ss::address& client) {
      process_calls.add();
      requested = true;
      base::process_request(request, client);
    }
    void service_actions() {
      if (requested) service_calls_after_request.add();
      base::service_actions();
    }
  };
  struct Handler : ss::StreamRequestHandler<server_type> {
    void handle() {
      const std::string line = this->rfile.readline();
      this->wfile.write("entered\n");
      this->wfile.flush();
      if (this->server.forked_latch)
        this->rfile.readline();  // "go"
      else
        this->server.gate.pass();
      this->wfile.write(line);
    }
  };
};

// Reads up to and including the first '\n'.
std::string read_line(const ss::socket& c) {
  std::string line;
  char ch = 0;
  while (line.empty() || line.back() != '\n') {
    if (c.recv(&ch, 1) == 0) break;
    line += ch;
  }
  return line;
}

ss::socket send_line(const ss::address& to, const std::string& line) {
  ss::socket c = test::connect_to(to);
  c.sendall(line);
  return c;
}

// Calls server.shutdown() on another thread; returned() says whether it came back within
// `limit` (the thread is joined by join(), after the test has let the handlers go).
class ShutdownCall {
 public:
  explicit ShutdownCall(ss::server_base& server)
      : thread_([this, &server] {
          server.shutdown();
          done_.set_value();
        }) {}
  ShutdownCall(const ShutdownCall&) = delete;
  ShutdownCall& operator=(const ShutdownCall&) = delete;
  ~ShutdownCall() { join(); }
  bool returned(std::chrono::milliseconds limit) {
    return returned_.wait_for(limit) == std::future_status::ready;
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::promise<void> done_;
  std::future<void> returned_ = done_.get_future();
  std::thread thread_;
};

}  // namespace

// --- Bug 1: forced unwinding ---------------------------------------------------------------

TEST_CASE("a synchronous server's handler that ends its thread: serving can start again",
          "[unwind][forced_unwind]") {
  SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND();
  using K = test::TCP;
  test::TempDir dir;
  const test::Baseline before;
  {
    test::hooked::Hooks<K> hooks;
    ErrorLog errors;
    hooks.request = exit_cancel_or_echo<K>;
    hooks.error = [&](ss::socket&, const ss::address&) { errors.add(); };
    test::hooked::Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    for (const std::string fault : {"exit\n", "cancel\n"}) {
      CAPTURE(fault);
      // The handler ends the thread running serve_forever(): the loop is left, its state
      // released, and the connection closed, as the unwind passes.
      std::thread serving([&] { server.serve_forever(); });
      CHECK(test::round_trip<K>(server.server_address, fault, dir).empty());
      serving.join();
      CHECK_FALSE(server.is_serving());
    }
    CHECK(errors.value() == 0);  // not reported as an exception
    const ss::server_stats stats = server.stats();
    CHECK(stats.completed == 2);
    CHECK(stats.errors == 2);
    {
      test::Serving<decltype(server)> serving(server);  // serves again, and shutdown() returns
      CHECK(test::round_trip<K>(server.server_address, "hello\n", dir) == "hello\n");
    }
    server.server_close();
    CHECK(server.stats().completed == 3);
  }
  test::check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a handler that ends its thread: cleaned up, and serving goes on",
                   "[unwind][forced_unwind]", test::ThreadingTCP, PoolTCP, test::ThreadingUDP) {
  SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND();
  using K = TestType;
  test::TempDir dir;
  const test::Baseline before;
  {
    test::hooked::Hooks<K> hooks;
    ErrorLog errors;
    hooks.request = exit_cancel_or_echo<K>;
    hooks.error = [&](typename K::request_type&, const ss::address&) { errors.add(); };
    test::hooked::Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    {
      test::Serving<decltype(server)> serving(server);
      for (const std::string fault : {"exit\n", "cancel\n"}) {
        CAPTURE(fault);
        if constexpr (K::stream) {
          CHECK(test::round_trip<K>(server.server_address, fault, dir).empty());
        } else {
          test::hooked::send_request<K>(server.server_address, fault, dir);
        }
      }
      CHECK(test::eventually([&] { return server.stats().completed == 2; }));
      CHECK(test::round_trip<K>(server.server_address, "hello\n", dir) == "hello\n");
    }
    server.server_close();  // returns: no request thread is counted as running
    const ss::server_stats stats = server.stats();
    CHECK(stats.completed == 3);
    CHECK(stats.errors == 2);
    CHECK(stats.active() == 0);
    CHECK(errors.value() == 0);
  }
  test::check_nothing_left(before);
}

TEST_CASE("a forked child's handler that ends its thread: the child exits with status 1",
          "[unwind][forced_unwind][forking]") {
  SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND();
  using K = test::ForkingTCP;
  test::TempDir dir;
  const test::Baseline before;
  {
    test::hooked::Hooks<K> hooks;
    hooks.request = exit_cancel_or_echo<K>;
    test::hooked::Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    for (const std::string fault : {"exit\n", "cancel\n"}) {
      CAPTURE(fault);
      ss::socket c = test::hooked::send_request<K>(server.server_address, fault, dir);
      c.shutdown(SHUT_WR);
      server.handle_request();  // forks the child
      CHECK(test::recv_all(c).empty());
      REQUIRE(server.active_children.size() == 1);
      const pid_t child = *server.active_children.begin();
      // The unwind ends at the child's _exit(1): not at abort(), nor at the end of its
      // only thread (which would exit with status 0).
      siginfo_t info{};
      REQUIRE(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT) == 0);
      CHECK(info.si_code == CLD_EXITED);
      CHECK(info.si_status == 1);
      server.collect_children();
      CHECK(server.active_children.empty());
    }
    {
      test::Serving<decltype(server)> serving(server);
      CHECK(test::round_trip<K>(server.server_address, "hello\n", dir) == "hello\n");
    }
    server.server_close();
    const ss::server_stats stats = server.stats();
    CHECK(stats.completed == 3);
    CHECK(stats.errors == 2);
  }
  test::check_nothing_left(before);
}

// --- Bug 2: shutdown() while the loop waits for a slot ------------------------------------

TEST_CASE("shutdown returns at once while ThreadingMixIn waits at max_threads",
          "[unwind][shutdown][threading]") {
  using Server = Held<ss::threading_tcp_server_t>::server_type;
  Server server({"127.0.0.1", 0});
  server.max_threads = 1;
  test::Serving<Server> serving(server);
  ss::socket first = send_line(server.server_address, "one\n");
  CHECK(read_line(first) == "entered\n");
  ss::socket second = send_line(server.server_address, "two\n");
  REQUIRE(server.process_calls.wait_for(2));  // the loop holds it, waiting for a thread
  {
    ShutdownCall call(server);
    CHECK(call.returned(1000ms));  // the handler is held until released below
    server.gate.release();
  }
  // The request the loop held was not lost: it was started when shutdown() came.
  CHECK(test::recv_all(first) == "one\n");
  CHECK(test::recv_all(second) == "entered\ntwo\n");
  serving.stop();
  server.server_close();
  CHECK(server.stats().completed == 2);
}

TEST_CASE("shutdown returns at once while a pool's queue is full", "[unwind][shutdown][pool]") {
  using Server = Held<ss::thread_pool_tcp_server_t>::server_type;
  Server server({"127.0.0.1", 0});
  server.pool_size = 1;
  server.queue_size = 1;
  test::Serving<Server> serving(server);
  ss::socket first = send_line(server.server_address, "one\n");
  CHECK(read_line(first) == "entered\n");
  ss::socket second = send_line(server.server_address, "two\n");  // queued
  ss::socket third = send_line(server.server_address, "three\n");
  REQUIRE(server.process_calls.wait_for(3));  // held by a leader waiting for room
  {
    ShutdownCall call(server);
    CHECK(call.returned(1000ms));
    server.gate.release();
  }
  CHECK(test::recv_all(first) == "one\n");
  CHECK(test::recv_all(second) == "entered\ntwo\n");
  CHECK(test::recv_all(third) == "entered\nthree\n");
  serving.stop();
  server.server_close();
  CHECK(server.stats().completed == 3);
}

TEST_CASE("shutdown returns at once while ForkingMixIn waits at max_children",
          "[unwind][shutdown][forking]") {
  using Server = Held<ss::forking_tcp_server_t>::server_type;
  const test::Baseline before;
  {
    Server server({"127.0.0.1", 0});
    server.max_children = 1;
    server.forked_latch = true;
    test::Serving<Server> serving(server);
    ss::socket first = send_line(server.server_address, "one\n");
    CHECK(read_line(first) == "entered\n");
    // After each request the loop reaps children in service_actions(), and at max_children
    // waits there for one to exit: the next client waits in the listen backlog.
    REQUIRE(server.service_calls_after_request.wait_for(1));
    ss::socket second = send_line(server.server_address, "two\n");
    {
      ShutdownCall call(server);
      CHECK(call.returned(1000ms));  // the first child waits for its client's "go"
      first.sendall("go\n");
    }
    CHECK(test::recv_all(first) == "one\n");
    serving.stop();
    {
      test::Serving<Server> again(server);  // the client in the backlog was not lost
      CHECK(read_line(second) == "entered\n");
      second.sendall("go\n");
      CHECK(test::recv_all(second) == "two\n");
    }
    server.server_close();
    CHECK(server.stats().completed == 2);
    CHECK(server.stats().errors == 0);
  }
  test::check_nothing_left(before);
}

TEST_CASE("SIGTERM through shutdown_on_signals stops a loop waiting at max_threads",
          "[unwind][shutdown][signals]") {
  using Server = Held<ss::threading_tcp_server_t>::server_type;
  Server server({"127.0.0.1", 0});
  server.max_threads = 1;
  // Before any thread starts, so that every thread inherits the mask and SIGTERM can only
  // reach the waiting thread.
  ss::shutdown_on_signals stop(server, {SIGTERM});
  std::promise<void> returned;
  std::future<void> serve_forever_returned = returned.get_future();
  std::thread serving([&] {
    server.serve_forever();
    returned.set_value();
  });
  ss::socket first = send_line(server.server_address, "one\n");
  CHECK(read_line(first) == "entered\n");
  ss::socket second = send_line(server.server_address, "two\n");
  REQUIRE(server.process_calls.wait_for(2));
  ::kill(::getpid(), SIGTERM);
  CHECK(serve_forever_returned.wait_for(1000ms) == std::future_status::ready);
  server.gate.release();
  serving.join();
  CHECK(stop.signal() == SIGTERM);
  CHECK(test::recv_all(first) == "one\n");
  CHECK(test::recv_all(second) == "entered\ntwo\n");
  server.server_close();
}

namespace {

// handle() ends its thread on "exit"; finish() then throws, as a datagram reply to a client
// that has gone can: nothing may replace the forced unwind (it would abort the process).
struct ExitThenFinishThrows : ss::StreamRequestHandler<> {
  bool exiting = false;
  void handle() {
    const std::string line = rfile.readline();
    if (line == "exit\n") {
      exiting = true;
      pthread_exit(nullptr);
    }
    wfile.write(line);
  }
  void finish() {
    StreamRequestHandler::finish();
    if (exiting) throw std::runtime_error("finish() failed while the thread was ending");
  }
};

}  // namespace

TEST_CASE("a finish() that throws while the handler's thread is ending does not abort",
          "[unwind][threading]") {
  SOCKETSERVER_SKIP_WITHOUT_FORCED_UNWIND();
  ss::ThreadingTCPServer<ExitThenFinishThrows> server({"127.0.0.1", 0});
  std::thread serving([&] { server.serve_forever(); });
  {
    ss::socket c = test::connect_to(server.server_address);
    c.sendall("exit\n");
    CHECK(test::recv_all(c).empty());  // closed unanswered
  }
  {
    ss::socket c = test::connect_to(server.server_address);
    c.sendall("still here\n");
    CHECK(test::recv_all(c) == "still here\n");
  }
  REQUIRE(test::eventually([&] { return server.stats().completed == 2; }));
  CHECK(server.stats().errors == 1);
  server.shutdown();
  serving.join();
  server.server_close();
}
