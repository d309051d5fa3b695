// SPDX-License-Identifier: MIT
// ThreadingMixIn (CPython reference 1.8): a thread per request, for the four threading
// servers. Concurrency, server_close() and block_on_close / daemon_threads, threads and
// descriptors that must not accumulate, errors reported in the request's thread, the UDP
// close ordering and thread_stack_size.
//
// Nothing here sleeps to synchronise: handlers and the test meet at Gates (a mutex, a
// condition variable and a counter) whose waits are bounded, so a broken server makes a
// test fail instead of hang.
#include <dirent.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
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

// The longest any handler or test waits for the other side.
constexpr std::chrono::seconds kWait{10};

// A counter that threads can wait on, with a bounded wait.
class Gate {
 public:
  void arrive() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++count_;
    }
    cv_.notify_all();
  }
  void open() { arrive(); }
  /// Waits until arrive() has been called n times; false if kWait passed first.
  bool wait_for(int n) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, kWait, [&] { return count_ >= n; });
  }
  bool wait_open() { return wait_for(1); }
  int count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  int count_ = 0;
};

using namespace test::hooked;  // Hooks, Server, Handler and the client helpers

// What the exception being handled says (call from handle_error()).
std::string current_what() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "?";
  }
}

using test::eventually;

// The ids of this process's threads (what test::thread_count() counts).
std::set<int> thread_ids() {
  std::set<int> ids;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ids.insert(std::atoi(e->d_name));
    ::closedir(d);
  }
  return ids;
}

// The threads running now that were not in `before`.
std::set<int> new_since(const std::set<int>& before) {
  std::set<int> added;
  for (int id : thread_ids())
    if (before.count(id) == 0) added.insert(id);
  return added;
}

}  // namespace

#define THREADING_KINDS \
  test::ThreadingTCP, test::ThreadingUDP, test::ThreadingUnixStream, test::ThreadingUnixDatagram

TEMPLATE_TEST_CASE("threading servers: defaults", "[threading]", THREADING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Server<K> server(K::bind_address(dir));
  CHECK_FALSE(server.daemon_threads);
  CHECK(server.block_on_close);
  CHECK(server.thread_stack_size == 0);
  CHECK_FALSE(server.timeout.has_value());  // only ForkingMixIn sets one
  CHECK(server.active_threads() == 0);
}

TEMPLATE_TEST_CASE("threading servers handle requests concurrently", "[threading]",
                   THREADING_KINDS) {
  using K = TestType;
  constexpr int N = 4;
  test::TempDir dir;
  Gate entered;
  std::atomic<std::size_t> most_active{0};
  Hooks<K> hooks;
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  // Every handler waits until all N have entered: a server handling one request at a time
  // would leave the first waiting alone, and it would answer "alone".
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    // Read before arriving: until the last one arrives, the others are all still waiting.
    const std::size_t active = server.active_threads();
    std::size_t seen = most_active.load();
    while (active > seen && !most_active.compare_exchange_weak(seen, active)) {
    }
    entered.arrive();
    reply_to<K>(request, client, entered.wait_for(N) ? "together" : "alone");
  };
  test::Serving<Server<K>> serving(server, std::chrono::milliseconds(50));
  std::vector<ss::socket> clients;
  for (int i = 0; i < N; ++i)
    clients.push_back(send_request<K>(server.server_address, "hi " + std::to_string(i), dir));
  for (const ss::socket& c : clients) CHECK(read_reply<K>(c) == "together");
  CHECK(entered.count() == N);
  CHECK(most_active.load() == N);  // the last to enter saw all N threads running
}

TEMPLATE_TEST_CASE("block_on_close: server_close waits for a running handler",
                   "[threading][block_on_close]", THREADING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Gate started, released;
  std::atomic<bool> finished{false};
  std::atomic<int> errors{0};
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    started.open();
    released.wait_open();
    reply_to<K>(request, client, "late reply");  // a datagram server's socket must be open
    finished = true;
  };
  // The handler is released from inside server_close(), right before the server closes and
  // waits: the handler is then still running, on its own thread, while server_close() works.
  hooks.closing = [&] { released.open(); };
  hooks.error = [&](typename K::request_type&, const ss::address&) { ++errors; };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  REQUIRE(server.block_on_close);
  ss::socket client = send_request<K>(server.server_address, "hello", dir);
  server.handle_request();  // starts the request's thread and returns
  REQUIRE(started.wait_open());
  CHECK(server.active_threads() == 1);
  server.server_close();
  const bool finished_when_closed = finished;
  CHECK(finished_when_closed);
  CHECK(server.active_threads() == 0);
  CHECK(server.fileno() == -1);
  CHECK(errors == 0);
  CHECK(read_reply<K>(client) == "late reply");
}

TEMPLATE_TEST_CASE(
    "ThreadingUDPServer: server_close joins the handlers before closing the shared socket",
    "[threading][udp]", test::ThreadingUDP, test::ThreadingUnixDatagram) {
  // CPython closes first, so a handler still running when server_close() is called fails
  // its reply with EBADF (reference 1.8). Here the reply must arrive.
  using K = TestType;
  test::TempDir dir;
  Gate started, released;
  std::atomic<int> sent{0};
  std::string error;  // written by the request's thread, read after server_close() joined it
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    started.open();
    released.wait_open();
    request.socket.sendto("reply after close", client);
    ++sent;
  };
  hooks.closing = [&] { released.open(); };
  hooks.error = [&](typename K::request_type&, const ss::address&) { error = current_what(); };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  ss::socket client = send_request<K>(server.server_address, "ping", dir);
  server.handle_request();
  REQUIRE(started.wait_open());
  server.server_close();
  CHECK(sent == 1);
  CHECK(error.empty());
  CHECK(client.recv(65536) == "reply after close");
}

TEMPLATE_TEST_CASE("daemon_threads or block_on_close=false: server_close does not wait",
                   "[threading][block_on_close]", THREADING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Gate started, released;
  std::atomic<bool> finished{false};
  Hooks<K> hooks;
  // No reply: a datagram server's socket is closed by then, and its descriptor number may
  // already belong to something else.
  hooks.request = [&](typename K::request_type& request, const ss::address&) {
    read_request<K>(request);
    started.open();
    released.wait_open();
    finished = true;
  };
  {
    Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    SECTION("daemon_threads = true") { server.daemon_threads = true; }
    SECTION("block_on_close = false") { server.block_on_close = false; }
    ss::socket client = send_request<K>(server.server_address, "hello", dir);
    server.handle_request();
    REQUIRE(started.wait_open());
    // Had server_close() waited, it would have returned only once the handler had given up
    // waiting (kWait) and finished.
    server.server_close();
    CHECK_FALSE(finished);
    CHECK(server.active_threads() == 1);
    CHECK(server.fileno() == -1);
    released.open();
  }  // the destructor waits for the thread, which uses the server
  CHECK(finished);
}

TEMPLATE_TEST_CASE("daemon_threads: the destructor shuts down a blocked handler's connection",
                   "[threading][daemon]", test::ThreadingTCP, test::ThreadingUnixStream) {
  using K = TestType;
  enum { running, end_of_stream, failed, data };
  test::TempDir dir;
  Gate started;
  std::atomic<int> outcome{running};
  Hooks<K> hooks;
  // Waits for a byte the client never sends (bounded by a socket timeout in case the
  // destructor does not wake it).
  hooks.request = [&](ss::socket& connection, const ss::address&) {
    connection.settimeout(kWait);
    started.open();
    char byte;
    std::error_code ec;
    const std::size_t n = connection.recv(&byte, 1, 0, ec);
    outcome = ec ? failed : n == 0 ? end_of_stream : data;
  };
  ss::socket client;  // stays open and silent until after the server is gone
  std::chrono::steady_clock::time_point destroying;
  {
    Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    server.daemon_threads = true;
    client = test::connect_to(server.server_address, K::socket_type, &dir);
    server.handle_request();
    REQUIRE(started.wait_open());
    server.server_close();  // does not wait for a daemon thread
    CHECK(outcome == running);
    CHECK(server.active_threads() == 1);
    destroying = std::chrono::steady_clock::now();
  }
  const auto took = std::chrono::steady_clock::now() - destroying;
  CHECK(outcome == end_of_stream);  // not `failed`: woken by shutdown, not by its timeout
  CHECK(took < kWait / 2);
}

TEMPLATE_TEST_CASE("threading servers: finished threads do not accumulate", "[threading][leak]",
                   THREADING_KINDS) {
  SOCKETSERVER_REQUIRE_THREAD_COUNT();
  using K = TestType;
  constexpr int requests = 200;
  test::TempDir dir;
  Hooks<K> hooks;
  hooks.request = [](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    reply_to<K>(request, client, "ok");
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  // Threads are compared by id, not just counted: a detached request thread of an earlier
  // test may still be leaving the kernel's task list while this one starts, and would make
  // a plain count's baseline one too high.
  const std::set<int> before = thread_ids();
  {
    test::Serving<Server<K>> serving(server, std::chrono::milliseconds(50));
    const std::set<int> serving_thread = new_since(before);
    CHECK(serving_thread.size() == 1);  // the thread running serve_forever()
    int answered = 0;
    for (int i = 0; i < requests; ++i) {
      ss::socket c = send_request<K>(server.server_address, "x", dir);
      if (read_reply<K>(c) != "ok") break;
      ++answered;
    }
    CHECK(answered == requests);
    // Each request's thread finishes on its own just after answering; nothing signals the
    // moment it leaves the kernel's task list, hence the (bounded) poll.
    CHECK(eventually(
        [&] { return server.active_threads() == 0 && new_since(before) == serving_thread; }));
    CHECK(server.active_threads() == 0);
    CHECK(new_since(before) == serving_thread);
  }
  server.server_close();
  CHECK(server.active_threads() == 0);
  CHECK(eventually([&] { return new_since(before).empty(); }));
  // And the plain count: no more threads than before the server served 200 requests.
  CHECK(test::thread_count() <= static_cast<int>(before.size()));
}

TEMPLATE_TEST_CASE("threading servers: handle_error runs in the request's thread",
                   "[threading][errors]", THREADING_KINDS) {
  using K = TestType;
  test::TempDir dir;
  std::atomic<int> calls{0};
  std::mutex mutex;
  std::thread::id handler_thread, error_thread;
  std::string what;
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    if (calls++ == 0) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        handler_thread = std::this_thread::get_id();
      }
      throw std::runtime_error("boom");
    }
    reply_to<K>(request, client, "served");
  };
  // Answers too, so the client learns that handle_error() had the request before it was shut
  // down.
  hooks.error = [&](typename K::request_type& request, const ss::address& client) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      error_thread = std::this_thread::get_id();
      what = current_what();
    }
    reply_to<K>(request, client, "error: " + what);
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  {
    test::Serving<Server<K>> serving(server, std::chrono::milliseconds(50));
    CHECK(test::round_trip<K>(server.server_address, "first", dir) == "error: boom");
    CHECK(test::round_trip<K>(server.server_address, "second", dir) == "served");
    CHECK(test::round_trip<K>(server.server_address, "third", dir) == "served");
  }
  server.server_close();
  CHECK(calls == 3);
  std::lock_guard<std::mutex> lock(mutex);
  CHECK(what == "boom");
  CHECK(error_thread == handler_thread);
  CHECK(error_thread != std::this_thread::get_id());
  CHECK(error_thread != std::thread::id());
}

TEMPLATE_TEST_CASE("threading servers: thread_stack_size sets the request threads' stack",
                   "[threading][stack]", THREADING_KINDS) {
  using K = TestType;
  constexpr std::size_t small = 256 * 1024;
  test::TempDir dir;
  std::atomic<std::size_t> stack_size{0};
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    pthread_attr_t attr;
    std::size_t size = 0;
#if defined(__APPLE__)
    (void)attr;
    size = pthread_get_stacksize_np(pthread_self());
#else
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstacksize(&attr, &size);
      pthread_attr_destroy(&attr);
    }
#endif
    stack_size = size;
    reply_to<K>(request, client, "small stack");
  };
  Server<K> server(K::bind_address(dir));
  server.hooks = &hooks;
  server.thread_stack_size = small;
  {
    test::Serving<Server<K>> serving(server, std::chrono::milliseconds(50));
    CHECK(test::round_trip<K>(server.server_address, "x", dir) == "small stack");
  }
  server.server_close();
  CHECK(stack_size >= small);
  CHECK(stack_size < 2 * small);  // the default is megabytes
}

TEMPLATE_TEST_CASE("threading servers: descriptors are back to the baseline after closing",
                   "[threading][leak]", THREADING_KINDS) {
  using K = TestType;
  constexpr int N = 4;
  test::TempDir dir;
  Gate entered;
  Hooks<K> hooks;
  hooks.request = [&](typename K::request_type& request, const ss::address& client) {
    read_request<K>(request);
    entered.arrive();
    entered.wait_for(N);  // the first N requests overlap; the later ones pass at once
    reply_to<K>(request, client, "ok");
  };
  const int fds_before = test::open_fd_count();
  {
    Server<K> server(K::bind_address(dir));
    server.hooks = &hooks;
    const int fds_server = test::open_fd_count();
    CHECK(fds_server > fds_before);
    {
      test::Serving<Server<K>> serving(server, std::chrono::milliseconds(50));
      std::vector<ss::socket> clients;
      for (int i = 0; i < N; ++i)
        clients.push_back(send_request<K>(server.server_address, "c", dir));
      for (const ss::socket& c : clients) CHECK(read_reply<K>(c) == "ok");
      for (int i = 0; i < 10; ++i)
        CHECK(test::round_trip<K>(server.server_address, "s", dir) == "ok");
    }
    server.server_close();
    // Every request's descriptor is closed by its thread before server_close() stops
    // waiting for it; only the listening socket went since construction.
    CHECK(test::open_fd_count() == fds_server - 1);
  }
  CHECK(test::open_fd_count() == fds_before);
}
