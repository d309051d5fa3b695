// SPDX-License-Identifier: MIT
// Resource hygiene (issue 3): long runs of requests, servers made and destroyed over and
// over, and constructors that fail leave nothing behind, in all twenty server kinds:
// descriptors (/proc/self/fd), threads (/proc/self/task), child processes (zombies
// included) and Unix socket files are back to what they were before the server existed.
//
// How many requests: 10,000 per kind (a fork each for the forking ones). Under
// AddressSanitizer or ThreadSanitizer, which make a fork many times dearer, 1,000 for the
// forking kinds, and under valgrind 1,000 and 100 (see request_count()); the point, that
// counts return to the baseline however many requests went by, does not depend on the
// number. Each run also has a time budget, so a server that slows down as it leaks fails
// instead of hanging.
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/leaks.hpp"

#if defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#    define HYGIENE_SANITIZED 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define HYGIENE_SANITIZED 1
#endif
#if !defined(HYGIENE_SANITIZED)
#  define HYGIENE_SANITIZED 0
#endif

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;
using test::Concurrency;

// The most one long run may take (the ctest timeout is 120 s).
constexpr std::chrono::seconds kRunBudget{80};

bool under_valgrind() {
  const char* preload = std::getenv("LD_PRELOAD");
  return preload != nullptr && std::strstr(preload, "vgpreload") != nullptr;
}

template <class K>
int request_count() {
  const bool forking = K::concurrency == Concurrency::forking;
  if (under_valgrind()) return forking ? 100 : 1000;
  if (HYGIENE_SANITIZED) return forking ? 1000 : 10000;
  return 10000;
}

using test::eventually;

using test::Baseline;

using test::check_nothing_left;

// Answers one line (stream) or one datagram with itself. A line that never comes ends the
// request after 20 s (as the client's own wait does), so a forking server's child cannot
// outlive the test: a child forked while a client that then failed still had its socket open
// holds that socket too, and would wait for the line forever (server_close() with it).
struct LineEcho : ss::StreamRequestHandler<> {
  static constexpr ss::timeout_type timeout{std::chrono::seconds(20)};
  void handle() { wfile.write(rfile.readline()); }
};
struct DatagramEcho : ss::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
template <class K>
using Echo = std::conditional_t<K::stream, LineEcho, DatagramEcho>;

// One request as a client of kind K would make it: a new connection per stream request (the
// server closes it after its reply, so the client's port is not left in TIME_WAIT), one
// datagram on `datagram_client` otherwise.
template <class K>
std::string ask(const ss::address& server, const std::string& message, const test::TempDir& dir,
                const ss::socket& datagram_client) {
  if constexpr (K::stream) {
    ss::socket c = test::connect_to(server, SOCK_STREAM, &dir);
    c.sendall(message);
    return test::recv_all(c);
  } else {
    (void)server;
    (void)dir;
    // Received into the stack: nothing is allocated in this thread while the server may
    // be forking (AddressSanitizer's allocator is not fork-safe; a child forked while
    // another thread holds its lock deadlocks).
    char reply[65536];
    datagram_client.send(message);
    return std::string(reply, datagram_client.recv(reply, sizeof reply));
  }
}

// A round trip on a new client of kind K (the harness's round_trip, minus its allocation
// before a datagram reply).
template <class K>
std::string fresh_round_trip(const ss::address& server, const std::string& message,
                             const test::TempDir& dir) {
  const ss::socket datagram_client =
      K::stream ? ss::socket() : test::connect_to(server, SOCK_DGRAM, &dir);
  return ask<K>(server, message, dir, datagram_client);
}

// Accepts and closes the connections waiting in a stream server's accept queue.
template <class Server>
void drain_accept_queue(Server& server) {
  for (int i = 0; i < 64; ++i) {
    pollfd p{server.fileno(), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return;
    (void)server.get_request();  // the connection closes as the result is destroyed
  }
}

}  // namespace

TEMPLATE_TEST_CASE("thousands of requests leave no descriptor, thread or child behind",
                   "[hygiene][long]", SOCKETSERVER_ALL_KINDS) {
  SOCKETSERVER_REQUIRE_THREAD_COUNT();
  using K = TestType;
  const int requests = request_count<K>();
  test::TempDir dir;
  const Baseline before;
  ss::address bound;
  {
    typename K::template server<Echo<K>> server(K::bind_address(dir));
    bound = server.server_address;
    const int fds_with_server = test::open_fd_count();
    int answered = 0;
    std::string failure;
    const int threads_idle = test::thread_count();
    {
      test::Serving<decltype(server)> serving(server);
      const int threads_serving = test::thread_count();
      ss::socket datagram_client;
      if constexpr (!K::stream) datagram_client = test::connect_to(bound, SOCK_DGRAM, &dir);
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < requests; ++i) {
        if (std::chrono::steady_clock::now() - start > kRunBudget) {
          failure = "out of time after " + std::to_string(i) + " requests";
          break;
        }
        const std::string message = "request " + std::to_string(i) + "\n";
        try {
          const std::string reply = ask<K>(bound, message, dir, datagram_client);
          if (reply != message) {
            failure = "request " + std::to_string(i) + " got \"" + reply + "\"";
            break;
          }
        } catch (const std::exception& e) {
          failure = "request " + std::to_string(i) + ": " + e.what();
          break;
        }
        ++answered;
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      CAPTURE(requests, seconds);
      CHECK(failure == "");  // (shows the failure)
      CHECK(answered == requests);
      datagram_client.close();
      // Still serving, nothing has piled up: the request threads are gone and the
      // descriptors are the server's own.
      if constexpr (K::concurrency == Concurrency::threading) {
        eventually([&] {
          return server.active_threads() == 0 && test::thread_count() == threads_serving;
        });
        CHECK(server.active_threads() == 0);
      }
      // A pool keeps its workers (pool_size + 1: one request at a time never grows it),
      // started by serve_forever() after threads_serving was counted, and each worker that
      // has led keeps the serve loop's wait descriptor (exclusive_wait) while it waits to lead
      // again: its own, bounded by the workers, closed with them (check_nothing_left below).
      std::size_t workers = 0;
      if constexpr (K::concurrency == Concurrency::pool) {
        workers = server.pool_size + 1;
        CHECK(server.stats().pool_threads == workers);
        CHECK(server.stats().pool_grown == 0);
      }
      // Fiber servers keep their loop threads and the stall watchdog until server_close(),
      // each loop with its epoll set and wake-up descriptor.
      if constexpr (K::concurrency == Concurrency::fiber) workers = 2 * server.loop_thread_count();
      if constexpr (K::concurrency == Concurrency::pool)
        CHECK(test::thread_count() == threads_idle + 1 + static_cast<int>(workers));
      else if constexpr (K::concurrency == Concurrency::fiber)
        CHECK(test::thread_count() ==
              threads_idle + 1 + static_cast<int>(server.loop_thread_count()) + 1);
      else
        CHECK(test::thread_count() == threads_serving);
      // (The client sees the end of its reply at shutdown_request()'s shutdown(SHUT_WR),
      // a moment before the server's close(): hence eventually.)
      eventually(
          [&] { return test::open_fd_count() <= fds_with_server + static_cast<int>(workers); });
      CHECK(test::open_fd_count() >= fds_with_server);
      CHECK(test::open_fd_count() <= fds_with_server + static_cast<int>(workers));
      // And it still answers.
      const ss::socket fresh = K::stream ? ss::socket() : test::connect_to(bound, SOCK_DGRAM, &dir);
      CHECK(ask<K>(bound, "last\n", dir, fresh) == "last\n");
    }
    CHECK(server.is_serving() == false);
    server.server_close();
    CHECK(server.fileno() == -1);
    if constexpr (K::concurrency == Concurrency::forking) CHECK(server.active_children.empty());
    if constexpr (K::family == AF_UNIX) CHECK_FALSE(test::file_exists(bound.path()));
    // Only the socket is closed: the shutdown handshake's descriptor goes with the object.
    CHECK(test::open_fd_count() == fds_with_server - 1);
    CHECK_FALSE(test::has_children());
  }
  // The destructor after server_close() closes nothing twice and leaves nothing open.
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("servers made, used and destroyed over and over leave nothing behind",
                   "[hygiene][raii]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  const int rounds = under_valgrind() ? 5 : HYGIENE_SANITIZED ? 30 : 100;
  test::TempDir dir;
  const Baseline before;
  int served = 0;
  for (int round = 0; round < rounds; ++round) {
    typename K::template server<Echo<K>> server(K::bind_address(dir));
    test::Serving<decltype(server)> serving(server);
    served += fresh_round_trip<K>(server.server_address, "hi\n", dir) == "hi\n";
    if constexpr (K::family == AF_UNIX) REQUIRE(test::file_exists(dir.file("server.sock")));
    // No server_close(): the Serving's shutdown, then the destructors, clean up.
  }
  CHECK(served == rounds);
  if constexpr (K::family == AF_UNIX) CHECK_FALSE(test::file_exists(dir.file("server.sock")));
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a constructor that fails to bind leaves nothing behind", "[hygiene][raii]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  const Baseline before;
  {
    using Server = typename K::template server<Echo<K>>;
    Server live(K::bind_address(dir));
    const int fds_with_live = test::open_fd_count();
    int refused = 0;
    for (int i = 0; i < 100; ++i) {
      try {
        Server second(live.server_address);
      } catch (const std::system_error& e) {
        refused += e.code() == std::errc::address_in_use;
      }
      // A Unix stream path is probed by connecting to it, and each probe waits in the live
      // server's accept queue; a full queue would block the next probe (the
      // case below). Take them off with the server's own get_request().
      if constexpr (K::family == AF_UNIX && K::stream) {
        if (i % 5 == 4) drain_accept_queue(live);
      }
    }
    CHECK(refused == 100);
    CHECK(test::open_fd_count() == fds_with_live);
    // The live server kept its address (and its socket file) and still serves.
    if constexpr (K::family == AF_UNIX) CHECK(test::file_exists(live.server_address.path()));
    test::Serving<Server> serving(live);
    CHECK(fresh_round_trip<K>(live.server_address, "alive\n", dir) == "alive\n");
  }
  CHECK_FALSE(test::file_exists(dir.file("server.sock")));
  check_nothing_left(before);
}

// Library bug (tcp_server.hpp, detail::remove_stale_unix_socket): the probe that tells a
// stale socket file from a live server is a blocking connect(). Each probe waits in the live
// server's accept queue; once request_queue_size + 1 of them are there, the next connect()
// blocks until the live server accepts, so a second server's constructor hangs instead of
// failing with "Address already in use". Bounded here: after 2 s the test serves the live
// server, which accepts the probes and lets the stuck constructor finish. (One kind: the
// code is basic_tcp_server::server_bind(), shared by every Unix stream server.)
TEST_CASE("binding a live Unix stream server's path fails at once, even with its backlog full",
          "[hygiene][raii][unix]") {
  using K = test::UnixStream;
  using Server = typename K::template server<Echo<K>>;
  constexpr int kAttempts = 20;
  test::TempDir dir;
  const Baseline before;
  {
    Server live(K::bind_address(dir));  // bound and listening, not accepting (yet)
    std::mutex mutex;
    std::condition_variable cv;
    int attempts = 0;
    int refused = 0;
    std::thread second_servers([&] {
      for (int i = 0; i < kAttempts; ++i) {
        bool in_use = false;
        try {
          Server second(live.server_address);
        } catch (const std::system_error& e) {
          in_use = e.code() == std::errc::address_in_use;
        }
        std::lock_guard<std::mutex> lock(mutex);
        ++attempts;
        refused += in_use;
        cv.notify_all();
      }
    });
    bool all_failed_at_once;
    {
      std::unique_lock<std::mutex> lock(mutex);
      all_failed_at_once = cv.wait_for(lock, 2s, [&] { return attempts == kAttempts; });
      INFO("constructors returned before the wait ended: " << attempts << " of " << kAttempts);
      CHECK(all_failed_at_once);
    }
    {
      test::Serving<Server> serving(live);  // accepts the queued probes: nothing stays stuck
      second_servers.join();
      CHECK(fresh_round_trip<K>(live.server_address, "alive\n", dir) == "alive\n");
    }
    CHECK(refused == kAttempts);
    CHECK(test::file_exists(live.server_address.path()));
  }
  CHECK_FALSE(test::file_exists(dir.file("server.sock")));
  check_nothing_left(before);
}
