// SPDX-License-Identifier: MIT
// shutdown(): it wakes serve_forever() at once, never races with a loop that is just
// starting, lets a server serve again, refuses to deadlock from the serving thread, and
// leaves requests in flight on a threading server to finish (CPython's test_shutdown,
// bpo-2302, bpo-39797; the reference's section 1.4).
#if defined(__linux__)
#  include <sys/syscall.h>  // SYS_gettid, SYS_poll, SYS_ppoll
#endif
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

/// A poll interval the tests never wait out: if shutdown() did not wake the loop, the test
/// would hang (and ctest's TIMEOUT would fail it).
constexpr auto forever = std::chrono::hours(1);

template <class K, class Server>
using handler_base_t = std::conditional_t<K::stream, ss::StreamRequestHandler<Server>,
                                          ss::DatagramRequestHandler<Server>>;

template <class K, class Server = void>
struct Echo : handler_base_t<K, Server> {
  void handle() { this->wfile.write(this->rfile.read()); }
};

#if defined(__linux__)
long current_tid() { return static_cast<long>(::syscall(SYS_gettid)); }

/// True if thread `tid` of this process is blocked in poll()/ppoll() (Linux /proc).
bool blocked_in_poll(long tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long number = -1;
  if (!(in >> number)) return false;  // "running", or no such file
#  if defined(SYS_poll)
  if (number == SYS_poll) return true;
#  endif
  return number == SYS_ppoll;
}
#else
long current_tid() { return 0; }
bool blocked_in_poll(long) { return false; }  // no /proc: the wake-up is checked less strictly
#endif

/// Waits (at most 10 s) until thread `tid` is blocked in poll; false if never seen.
bool wait_until_blocked_in_poll(long tid) {
  const auto deadline = clock_type::now() + 10s;
  while (clock_type::now() < deadline) {
    if (blocked_in_poll(tid)) return true;
    std::this_thread::yield();
  }
  return false;
}

/// serve_forever() in a thread that reports its thread id.
template <class Server>
class ServingThread {
 public:
  ServingThread(Server& server, std::chrono::duration<double> poll_interval)
      : server_(server), thread_([this, poll_interval] {
          {
            std::lock_guard<std::mutex> lock(m_);
            tid_ = current_tid();
          }
          cv_.notify_all();
          try {
            server_.serve_forever(poll_interval);
          } catch (...) {
            error_ = std::current_exception();
          }
        }) {}
  ServingThread(const ServingThread&) = delete;
  ServingThread& operator=(const ServingThread&) = delete;
  ~ServingThread() {
    if (thread_.joinable()) {
      server_.shutdown();
      thread_.join();
    }
  }
  long tid() {
    std::unique_lock<std::mutex> lock(m_);
    cv_.wait_for(lock, 10s, [&] { return tid_ != 0; });
    return tid_;
  }
  void join() { thread_.join(); }
  std::exception_ptr error() const { return error_; }

 private:
  Server& server_;
  std::mutex m_;
  std::condition_variable cv_;
  long tid_ = 0;
  std::exception_ptr error_;
  std::thread thread_;
};

// Calls shutdown() from the serving thread: in a handler ("catch": catches the logic_error
// itself; "propagate": lets handle_error see it) or in service_actions().
template <class K>
struct SelfStopServer;
template <class K>
struct SelfStopHandler : handler_base_t<K, SelfStopServer<K>> {
  void handle() {
    const std::string message = this->rfile.read();
    if (message == "catch") {
      try {
        this->server.shutdown();
        this->wfile.write("returned");
      } catch (const std::logic_error&) {
        this->wfile.write("logic_error");
      }
    } else if (message == "propagate") {
      this->server.shutdown();
      this->wfile.write("returned");
    } else {
      this->wfile.write(message);
    }
  }
};
template <class K>
struct SelfStopServer : K::template server<SelfStopHandler<K>, SelfStopServer<K>> {
  using base = typename K::template server<SelfStopHandler<K>, SelfStopServer<K>>;
  using base::base;
  std::atomic<int> logic_errors{0}, other_errors{0};
  void handle_error(typename base::request_type& /*request*/, const ss::address& /*client*/) {
    try {
      throw;
    } catch (const std::logic_error&) {
      ++logic_errors;
    } catch (...) {
      ++other_errors;
    }
  }
};

// Calls shutdown() from service_actions() once, when asked to.
template <class K>
struct ActionStopServer : K::template server<Echo<K>, ActionStopServer<K>> {
  using base = typename K::template server<Echo<K>, ActionStopServer<K>>;
  using base::base;
  std::mutex m;
  std::condition_variable cv;
  bool attempt = true;
  std::string outcome;
  void service_actions() {
    base::service_actions();
    std::string result;
    {
      std::lock_guard<std::mutex> lock(m);
      if (!attempt) return;
      attempt = false;
    }
    try {
      this->shutdown();
      result = "returned";
    } catch (const std::logic_error&) {
      result = "logic_error";
    }
    {
      std::lock_guard<std::mutex> lock(m);
      outcome = result;
    }
    cv.notify_all();
  }
};

// A handler that holds its request until released.
template <class K>
struct GateServer;
template <class K>
struct GateHandler : handler_base_t<K, GateServer<K>> {
  void handle() {
    const std::string message = this->rfile.read();
    auto& s = this->server;
    {
      std::unique_lock<std::mutex> lock(s.m);
      s.started = true;
      s.cv.notify_all();
      s.cv.wait_for(lock, 10s, [&] { return s.released; });
    }
    this->wfile.write("done " + message);
    std::lock_guard<std::mutex> lock(s.m);
    s.finished = true;
  }
};
template <class K>
struct GateServer : K::template server<GateHandler<K>, GateServer<K>> {
  using base = typename K::template server<GateHandler<K>, GateServer<K>>;
  using base::base;
  ~GateServer() { this->server_close(); }  // the handler uses our members
  std::mutex m;
  std::condition_variable cv;
  bool started = false, released = false, finished = false;
  bool is_finished() {
    std::lock_guard<std::mutex> lock(m);
    return finished;
  }
};

// A threading server's handler may stop the loop: it runs in another thread.
struct StopFromRequestThread : ss::StreamRequestHandler<> {
  void handle() {
    server.shutdown();
    wfile.write("stopped");
  }
};

}  // namespace

TEMPLATE_TEST_CASE("shutdown wakes serve_forever at once", "[shutdown][wakeup]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  ServingThread<decltype(server)> serving(server, forever);
  // Make sure the loop is asleep in poll(), where only the wake-up can reach it.
  const bool asleep = wait_until_blocked_in_poll(serving.tid());
  if (asleep)
    CHECK(server.is_serving());
  else
    WARN("could not see the serving thread in poll(); the wake-up is checked less strictly");
  const auto start = clock_type::now();
  server.shutdown();  // with a poll interval of an hour, only the wake-up returns this soon
  const auto elapsed = std::chrono::duration<double, std::milli>(clock_type::now() - start);
  CHECK_FALSE(server.is_serving());  // shutdown() returns once the loop has stopped
  serving.join();
  CHECK_FALSE(serving.error());
  CHECK_FALSE(server.is_serving());
  INFO("shutdown() took " << elapsed.count() << " ms");
  if (elapsed > 100ms) WARN("shutdown() took " << elapsed.count() << " ms");
}

TEMPLATE_TEST_CASE("shutdown right after starting the serving thread never races",
                   "[shutdown][race]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  // CPython's test_shutdown (bpo-2302), on a fresh server each time.
  for (int i = 0; i < 100; ++i) {
    typename K::template server<Echo<K>> server(K::bind_address(dir));
    std::exception_ptr error;
    std::thread serving([&] {
      try {
        server.serve_forever(forever);
      } catch (...) {
        error = std::current_exception();
      }
    });
    server.shutdown();                   // may come before serve_forever() has even started
    REQUIRE_FALSE(server.is_serving());  // returns once a loop has run and stopped
    serving.join();
    REQUIRE_FALSE(error);
    REQUIRE_FALSE(server.is_serving());
  }
}

TEMPLATE_TEST_CASE("a server serves again after shutdown", "[shutdown][restart]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  for (int cycle = 0; cycle < 3; ++cycle) {
    INFO("cycle " << cycle);
    test::Serving<decltype(server)> serving(server, forever);
    CHECK(test::round_trip<K>(server.server_address, "cycle " + std::to_string(cycle), dir) ==
          "cycle " + std::to_string(cycle));
    CHECK(server.is_serving());
    serving.stop();
    CHECK_FALSE(serving.error());
    CHECK_FALSE(server.is_serving());
    CHECK(server.fileno() >= 0);  // shutdown() does not close the socket
  }
}

TEMPLATE_TEST_CASE("a stray shutdown makes the next serve_forever return at once",
                   "[shutdown][restart]", test::TCP, test::UDP, test::ThreadingTCP) {
  // As in CPython (and the README): shutdown() with no loop running, after one has run,
  // returns at once and the next serve_forever() returns as soon as it starts. The one
  // after that serves normally.
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  {
    test::Serving<decltype(server)> serving(server, forever);
    CHECK(test::round_trip<K>(server.server_address, "first", dir) == "first");
  }
  server.shutdown();              // no loop: returns at once (else this test hangs)
  server.serve_forever(forever);  // returns at once (else this test hangs)
  CHECK_FALSE(server.is_serving());
  test::Serving<decltype(server)> serving(server, forever);
  CHECK(test::round_trip<K>(server.server_address, "again", dir) == "again");
}

TEMPLATE_TEST_CASE("shutdown from a synchronous server's handler throws logic_error",
                   "[shutdown][deadlock]", test::TCP, test::UDP, test::UnixStream,
                   test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  SelfStopServer<K> server(K::bind_address(dir));
  {
    test::Serving<SelfStopServer<K>> serving(server, forever);
    // Caught in the handler...
    CHECK(test::round_trip<K>(server.server_address, "catch", dir) == "logic_error");
    // ...or passed to handle_error() (the request gets no reply).
    CHECK(test::round_trip<K>(server.server_address, "propagate", dir).empty());
    // Neither deadlocked nor stopped the loop.
    CHECK(test::round_trip<K>(server.server_address, "still serving", dir) == "still serving");
    CHECK(server.is_serving());
    serving.stop();
    CHECK_FALSE(serving.error());
  }
  CHECK(server.logic_errors == 1);
  CHECK(server.other_errors == 0);
}

TEMPLATE_TEST_CASE("shutdown from service_actions throws logic_error", "[shutdown][deadlock]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  ActionStopServer<K> server(K::bind_address(dir));
  test::Serving<ActionStopServer<K>> serving(server, 5ms);
  {
    std::unique_lock<std::mutex> lock(server.m);
    REQUIRE(server.cv.wait_for(lock, 10s, [&] { return !server.outcome.empty(); }));
    CHECK(server.outcome == "logic_error");
  }
  CHECK(server.is_serving());
  CHECK(test::round_trip<K>(server.server_address, "alive", dir) == "alive");
  serving.stop();
  CHECK_FALSE(serving.error());
  CHECK_FALSE(server.is_serving());
}

TEST_CASE("a threading server's handler may call shutdown", "[shutdown]") {
  test::TempDir dir;
  ss::ThreadingTCPServer<StopFromRequestThread> server({"127.0.0.1", 0});
  std::string reply;
  std::thread client([&] { reply = test::round_trip<test::TCP>(server.server_address, "", dir); });
  server.serve_forever(forever);  // returns once the handler's shutdown() has stopped it
  CHECK_FALSE(server.is_serving());
  server.server_close();  // waits for the handler
  client.join();
  CHECK(reply == "stopped");
}

TEMPLATE_TEST_CASE("a second concurrent serve_forever throws logic_error", "[shutdown][is_serving]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  CHECK_FALSE(server.is_serving());
  {
    test::Serving<decltype(server)> serving(server, forever);
    // A request answered proves the loop runs.
    CHECK(test::round_trip<K>(server.server_address, "one", dir) == "one");
    CHECK(server.is_serving());
    CHECK_THROWS_AS(server.serve_forever(forever), std::logic_error);
    // The first loop is unaffected.
    CHECK(server.is_serving());
    CHECK(test::round_trip<K>(server.server_address, "two", dir) == "two");
    serving.stop();
    CHECK_FALSE(serving.error());
  }
  CHECK_FALSE(server.is_serving());
}

TEMPLATE_TEST_CASE("shutdown with a request in flight on a threading server",
                   "[shutdown][threading]", test::ThreadingTCP, test::ThreadingUDP,
                   test::ThreadingUnixStream, test::ThreadingUnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  GateServer<K> server(K::bind_address(dir));
  std::exception_ptr error;
  std::thread serving([&] {
    try {
      server.serve_forever(forever);
    } catch (...) {
      error = std::current_exception();
    }
  });
  std::string reply;
  std::thread client([&] { reply = test::round_trip<K>(server.server_address, "slow", dir); });
  {
    std::unique_lock<std::mutex> lock(server.m);
    REQUIRE(server.cv.wait_for(lock, 10s, [&] { return server.started; }));
  }
  // serve_forever() returns without waiting for the handler.
  server.shutdown();
  serving.join();
  CHECK_FALSE(error);
  CHECK_FALSE(server.is_serving());
  CHECK_FALSE(server.is_finished());
  CHECK(server.active_threads() == 1);
  {
    std::lock_guard<std::mutex> lock(server.m);
    server.released = true;
  }
  server.cv.notify_all();
  server.server_close();  // joins the request's thread: it has finished
  CHECK(server.is_finished());
  CHECK(server.active_threads() == 0);
  client.join();
  CHECK(reply == "done slow");
}

TEST_CASE("shutdown from two threads at once: both return", "[shutdown]") {
  test::TempDir dir;
  ss::TCPServer<Echo<test::TCP>> server({"127.0.0.1", 0});
  std::thread serving([&] { server.serve_forever(forever); });
  CHECK(test::round_trip<test::TCP>(server.server_address, "x", dir) == "x");
  std::thread first([&] { server.shutdown(); });
  std::thread second([&] { server.shutdown(); });
  first.join();
  second.join();
  serving.join();
  CHECK_FALSE(server.is_serving());
}

TEST_CASE("a shutdown waiting for a first loop is released by a loop that fails",
          "[shutdown][race]") {
  // shutdown() before any loop waits for one; a serve_forever() that throws at once (the
  // server is closed) still counts as a loop that ran, so the waiter is not stuck.
  test::TempDir dir;
  ss::TCPServer<Echo<test::TCP>> server({"127.0.0.1", 0});
  server.server_close();
  std::thread waiter([&] { server.shutdown(); });
  try {
    server.serve_forever(forever);  // returns (shutdown came first) or throws EBADF
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::bad_file_descriptor);
  }
  waiter.join();
  CHECK_FALSE(server.is_serving());
}
