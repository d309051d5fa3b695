// SPDX-License-Identifier: MIT
// ThreadPoolMixIn (a bounded pool and queue) and ThreadingMixIn::max_threads.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/latches.hpp"

namespace {

using namespace std::chrono_literals;

using test::Counter;
using test::Gate;

template <template <class, class> class Server>
struct Gated {
  struct Handler;
  struct server_type : Server<Handler, server_type> {
    using base = Server<Handler, server_type>;
    using base::base;
    Gate gate;
    Counter process_calls;
    void process_request(socketserver::socket& request, const socketserver::address& client) {
      process_calls.add();
      base::process_request(request, client);
    }
    // Set to open the gate when the first request is shut down: with drain_on_close false,
    // that is server_close() closing the queued requests, after it took them off the queue.
    bool release_on_shutdown_request = false;
    void shutdown_request(socketserver::socket& request) {
      if (release_on_shutdown_request) gate.release();
      base::shutdown_request(request);
    }
  };
  struct Handler : socketserver::StreamRequestHandler<server_type> {
    void handle() {
      const std::string line = this->rfile.readline();
      this->server.gate.pass();
      this->wfile.write(line);
    }
  };
};

using GatedPool = Gated<socketserver::thread_pool_tcp_server_t>;
using GatedThreading = Gated<socketserver::threading_tcp_server_t>;

struct StreamEcho : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : socketserver::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};

using test::PoolTCP;
using test::PoolUDP;
using test::PoolUnixDatagram;
using test::PoolUnixStream;

socketserver::socket send_line(const socketserver::address& to, const std::string& line) {
  socketserver::socket c = test::connect_to(to);
  c.sendall(line);
  return c;
}

}  // namespace

TEMPLATE_TEST_CASE("a thread pool server echoes", "[thread_pool]", PoolTCP, PoolUDP, PoolUnixStream,
                   PoolUnixDatagram) {
  SOCKETSERVER_REQUIRE_THREAD_COUNT();
  using K = TestType;
  using Echo = std::conditional_t<K::stream, StreamEcho, DatagramEcho>;
  test::TempDir dir;
  typename K::template server<Echo> server(K::bind_address(dir));
  server.pool_size = 3;
  const int threads_before = test::thread_count();
  {
    test::Serving<decltype(server)> serving(server);
    for (int i = 0; i < 100; ++i) {
      const std::string message = "pooled " + std::to_string(i) + "\n";
      REQUIRE(test::round_trip<K>(server.server_address, message, dir) == message);
    }
    // A pool does not grow with the number of requests: pool_size workers, the spare that
    // accepts while they are all busy, and the thread in serve_forever().
    CHECK(test::thread_count() == threads_before + 3 + 1 + 1);
  }
  server.server_close();
  CHECK(test::thread_count() == threads_before);
}

TEST_CASE("a full thread pool queue stops accepting until a worker is free", "[thread_pool]") {
  GatedPool::server_type server({"127.0.0.1", 0});
  server.pool_size = 2;
  server.queue_size = 1;
  server.max_pool_size = server.pool_size;  // a fixed pool: the rest wait in the queue
  test::Serving<GatedPool::server_type> serving(server);
  std::vector<socketserver::socket> clients;
  for (int i = 0; i < 5; ++i)
    clients.push_back(send_line(server.server_address, "client " + std::to_string(i) + "\n"));
  REQUIRE(server.gate.wait_entered(2));       // both workers busy
  REQUIRE(server.process_calls.wait_for(4));  // the 4th waits for room in the queue
  CHECK(server.busy() == 2);
  CHECK(server.queued() == 1);
  CHECK(server.process_calls.value() == 4);  // the 5th is still in the listen backlog
  server.gate.release();
  for (int i = 0; i < 5; ++i) {
    clients[static_cast<std::size_t>(i)].shutdown(SHUT_WR);
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) ==
          "client " + std::to_string(i) + "\n");
  }
}

TEST_CASE("server_close drains queued requests by default", "[thread_pool]") {
  GatedPool::server_type server({"127.0.0.1", 0});
  server.pool_size = 1;
  server.queue_size = 4;
  server.max_pool_size = server.pool_size;  // a fixed pool: the rest wait in the queue
  std::vector<socketserver::socket> clients;
  {
    test::Serving<GatedPool::server_type> serving(server);
    for (int i = 0; i < 3; ++i)
      clients.push_back(send_line(server.server_address, "queued " + std::to_string(i) + "\n"));
    REQUIRE(server.gate.wait_entered(1));
    REQUIRE(server.process_calls.wait_for(3));
    // The third call has begun; its request is queued a moment later (nothing signals it).
    CHECK(test::eventually([&] { return server.queued() == 2; }));
  }
  std::thread opener([&] { server.gate.release(); });
  server.server_close();  // returns once all three were served
  opener.join();
  for (int i = 0; i < 3; ++i)
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) ==
          "queued " + std::to_string(i) + "\n");
}

TEST_CASE("drain_on_close = false closes queued requests unserved", "[thread_pool]") {
  GatedPool::server_type server({"127.0.0.1", 0});
  server.pool_size = 1;
  server.queue_size = 4;
  server.max_pool_size = server.pool_size;  // a fixed pool: the rest wait in the queue
  server.drain_on_close = false;
  server.release_on_shutdown_request = true;
  std::vector<socketserver::socket> clients;
  {
    test::Serving<GatedPool::server_type> serving(server);
    for (int i = 0; i < 3; ++i)
      clients.push_back(send_line(server.server_address, "queued " + std::to_string(i) + "\n"));
    REQUIRE(server.gate.wait_entered(1));
    REQUIRE(server.process_calls.wait_for(3));
  }
  server.server_close();
  CHECK(test::recv_all(clients[0]) == "queued 0\n");  // was being served: finished
  CHECK(test::recv_all(clients[1]).empty());          // queued: closed without a reply
  CHECK(test::recv_all(clients[2]).empty());
}

namespace {

// Records how many threads are inside the server's accept-side hooks at once: the pool's
// workers take turns running the serve loop, and those hooks must still see one at a time.
struct HookCounting : socketserver::ThreadPoolTCPServer<StreamEcho, HookCounting> {
  using base = socketserver::ThreadPoolTCPServer<StreamEcho, HookCounting>;
  using base::base;
  std::atomic<int> inside{0}, most_inside{0}, verified{0}, actions{0};

  void enter() {
    const int now = ++inside;
    int most = most_inside.load();
    while (now > most && !most_inside.compare_exchange_weak(most, now)) {
    }
    for (int i = 0; i < 50; ++i) std::this_thread::yield();  // widen the window for overlap
  }
  bool verify_request(socketserver::socket& request, const socketserver::address& client) {
    enter();
    ++verified;
    const bool ok = base::verify_request(request, client);
    --inside;
    return ok;
  }
  void service_actions() {
    enter();
    ++actions;
    --inside;
  }
};

}  // namespace

TEST_CASE("a pool's workers run verify_request and service_actions one at a time",
          "[thread_pool]") {
  HookCounting server({"127.0.0.1", 0});
  server.pool_size = 4;
  constexpr int clients = 8, rounds = 25;
  {
    test::Serving<HookCounting> serving(server);
    std::vector<std::thread> threads;
    std::atomic<int> answered{0};
    for (int c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        for (int r = 0; r < rounds; ++r) {
          const std::string message = "c" + std::to_string(c) + " r" + std::to_string(r);
          socketserver::socket client = test::connect_to(server.server_address);
          client.sendall(message);
          client.shutdown(SHUT_WR);
          if (test::recv_all(client) == message) ++answered;
        }
      });
    for (std::thread& t : threads) t.join();
    CHECK(answered == clients * rounds);
  }
  CHECK(server.verified == clients * rounds);
  CHECK(server.actions >= 1);
  CHECK(server.most_inside == 1);
}

TEST_CASE("a pool's shutdown() returns while its workers are still serving", "[thread_pool]") {
  GatedPool::server_type server({"127.0.0.1", 0});
  server.pool_size = 2;
  std::vector<socketserver::socket> clients;
  {
    test::Serving<GatedPool::server_type> serving(server);
    for (int i = 0; i < 2; ++i)
      clients.push_back(send_line(server.server_address, "held " + std::to_string(i) + "\n"));
    REQUIRE(server.gate.wait_entered(2));  // both workers are inside a handler
    serving.stop();                        // shutdown(): must not wait for the handlers
    CHECK_FALSE(server.is_serving());
    CHECK(server.busy() == 2);
  }
  server.gate.release();
  server.server_close();  // waits for the two requests, which finish normally
  for (int i = 0; i < 2; ++i) {
    clients[static_cast<std::size_t>(i)].shutdown(SHUT_WR);
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) ==
          "held " + std::to_string(i) + "\n");
  }
}

namespace {

// Echoes everything, noting which thread served each request and how many were taken.
struct NotingHandler;
struct ThreadNoting : socketserver::ThreadPoolTCPServer<NotingHandler, ThreadNoting> {
  using base = socketserver::ThreadPoolTCPServer<NotingHandler, ThreadNoting>;
  using base::base;
  std::mutex mutex;
  std::vector<std::thread::id> threads;
  Counter taken;
  void process_request(socketserver::socket& request, const socketserver::address& client) {
    taken.add();
    base::process_request(request, client);
  }
};
struct NotingHandler : socketserver::StreamRequestHandler<ThreadNoting> {
  void handle() {
    {
      std::lock_guard<std::mutex> lock(server.mutex);
      server.threads.push_back(std::this_thread::get_id());
    }
    wfile.write(rfile.read());
  }
};

}  // namespace

TEST_CASE("a pool serves requests that need not wait on the worker that accepted them",
          "[thread_pool]") {
  ThreadNoting server({"127.0.0.1", 0});
  server.pool_size = 4;
  server.handoff_after = std::chrono::hours(1);  // no takeover: only waiting hands the loop on
  // Every request is complete in the listen backlog (request_queue_size 5) before serving
  // starts, so none waits.
  constexpr int requests = 5;
  std::vector<socketserver::socket> clients;
  for (int i = 0; i < requests; ++i) {
    clients.push_back(send_line(server.server_address, "whole " + std::to_string(i) + "\n"));
    clients.back().shutdown(SHUT_WR);
  }
  test::Serving<ThreadNoting> serving(server);
  for (int i = 0; i < requests; ++i)
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) ==
          "whole " + std::to_string(i) + "\n");
  std::lock_guard<std::mutex> lock(server.mutex);
  REQUIRE(server.threads.size() == requests);
  for (const std::thread::id& id : server.threads) CHECK(id == server.threads.front());
}

TEST_CASE("a pool worker whose request waits for its bytes hands the loop on", "[thread_pool]") {
  ThreadNoting server({"127.0.0.1", 0});
  server.pool_size = 2;
  server.handoff_after = std::chrono::hours(1);  // no takeover: only waiting hands the loop on
  test::Serving<ThreadNoting> serving(server);
  socketserver::socket silent = test::connect_to(server.server_address);
  REQUIRE(server.taken.wait_for(1));  // its worker now waits in rfile.read() for the bytes
  socketserver::socket prompt = send_line(server.server_address, "prompt\n");
  prompt.shutdown(SHUT_WR);
  CHECK(test::recv_all(prompt) == "prompt\n");  // served while the first still waits
  silent.sendall("late\n");
  silent.shutdown(SHUT_WR);
  CHECK(test::recv_all(silent) == "late\n");
}

TEST_CASE("a pool takes the loop from a handler that waits outside the library's I/O",
          "[thread_pool]") {
  GatedPool::server_type server({"127.0.0.1", 0});
  server.pool_size = 2;
  std::chrono::duration<double> handoff_after{};
  SECTION("after handoff_after") { handoff_after = 5ms; }
  SECTION("at once with handoff_after = 0") { handoff_after = 0s; }
  server.handoff_after = handoff_after;
  std::vector<socketserver::socket> clients;
  {
    test::Serving<GatedPool::server_type> serving(server);
    for (int i = 0; i < 2; ++i) {
      clients.push_back(send_line(server.server_address, "gated " + std::to_string(i) + "\n"));
      // The first handler waits at the gate (not in the library's I/O) with the loop in
      // hand; the second request is accepted only once the loop is taken from it.
      REQUIRE(server.gate.wait_entered(i + 1));
    }
    CHECK(server.busy() == 2);
    server.gate.release();
  }
  for (int i = 0; i < 2; ++i) {
    clients[static_cast<std::size_t>(i)].shutdown(SHUT_WR);
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) ==
          "gated " + std::to_string(i) + "\n");
  }
}

TEST_CASE("a datagram pool answers concurrent clients each with its own packets", "[thread_pool]") {
  // Clients send bursts, so packets always wait and several leaders receive at once (a lane
  // per core): each reply must carry a packet its client sent, never another leader's.
  PoolUDP::server<DatagramEcho> server({"127.0.0.1", 0});
  constexpr int clients = 4, bursts = 100, burst = 16;
  std::atomic<int> mismatched{0}, answered{0};
  {
    test::Serving<decltype(server)> serving(server);
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c)
      threads.emplace_back([&, c] {
        socketserver::socket s = test::connect_to(server.server_address, SOCK_DGRAM);
        for (int b = 0; b < bursts; ++b) {
          std::multiset<std::string> sent, received;
          for (int i = 0; i < burst; ++i) {
            const std::string packet = "client " + std::to_string(c) + " burst " +
                                       std::to_string(b) + " packet " + std::to_string(i);
            s.send(packet);
            sent.insert(packet);
          }
          for (int i = 0; i < burst; ++i) received.insert(s.recv(65536));
          if (received == sent)
            answered += burst;
          else
            ++mismatched;
        }
      });
    for (std::thread& t : threads) t.join();
  }
  CHECK(mismatched == 0);
  CHECK(answered == clients * bursts * burst);
}

TEST_CASE("ThreadingMixIn::max_threads bounds the running request threads", "[threading]") {
  GatedThreading::server_type server({"127.0.0.1", 0});
  server.max_threads = 2;
  test::Serving<GatedThreading::server_type> serving(server);
  std::vector<socketserver::socket> clients;
  for (int i = 0; i < 4; ++i)
    clients.push_back(send_line(server.server_address, "t" + std::to_string(i) + "\n"));
  REQUIRE(server.gate.wait_entered(2));
  REQUIRE(server.process_calls.wait_for(3));  // the third waits for a thread to finish
  CHECK(server.active_threads() == 2);
  {
    std::lock_guard<std::mutex> lock(server.gate.mutex);
    CHECK(server.gate.entered == 2);
  }
  server.gate.release();
  for (int i = 0; i < 4; ++i)
    CHECK(test::recv_all(clients[static_cast<std::size_t>(i)]) == "t" + std::to_string(i) + "\n");
}

namespace {

// Echoes lines until the client closes: a keep-alive connection, idle while it sends nothing.
struct KeepAliveEcho : socketserver::StreamRequestHandler<> {
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(line);
  }
};

}  // namespace

TEST_CASE("a pool grows past idle connections and shrinks back when idle", "[thread_pool]") {
  SOCKETSERVER_REQUIRE_THREAD_COUNT();
  socketserver::ThreadPoolTCPServer<KeepAliveEcho> server({"127.0.0.1", 0});
  server.pool_size = 2;
  server.max_pool_size = 4;
  server.idle_timeout = 50ms;
  const int threads_before = test::thread_count();
  test::Serving<decltype(server)> serving(server);
  // Two clients connect and send nothing (no handler timeout): both workers wait on them.
  std::vector<socketserver::socket> idle;
  for (int i = 0; i < 2; ++i) idle.push_back(test::connect_to(server.server_address));
  REQUIRE(test::eventually([&] { return server.busy() == 2; }));
  // A third is served all the same (before: queued behind the idle two, forever).
  socketserver::socket third = test::connect_to(server.server_address);
  third.settimeout(5s);
  third.sendall("third\n");
  CHECK(third.recv(64) == "third\n");
  CHECK(server.stats().pool_grown >= 1);
  CHECK(server.stats().queued == 0);
  CHECK(server.stats().pool_threads >= 4);
  third.close();
  for (socketserver::socket& s : idle) s.close();
  // Idle again: the workers beyond pool_size leave (idle_timeout), the spare stays.
  CHECK(test::eventually([&] { return server.stats().pool_threads == 3; }));
  CHECK(test::eventually([&] { return test::thread_count() == threads_before + 1 + 3; }));
  // And it still grows when it must.
  for (int i = 0; i < 2; ++i)
    idle[static_cast<std::size_t>(i)] = test::connect_to(server.server_address);
  REQUIRE(test::eventually([&] { return server.busy() == 2; }));
  socketserver::socket fourth = send_line(server.server_address, "fourth\n");
  fourth.shutdown(SHUT_WR);
  CHECK(test::recv_all(fourth) == "fourth\n");
}

namespace {

// Reads one line within a 200 ms timeout, and reports how the read ended.
struct TimedServer;
struct TimedHandler : socketserver::StreamRequestHandler<TimedServer> {
  static constexpr auto timeout = std::chrono::milliseconds(200);
  void handle();
};
struct TimedServer : socketserver::ThreadPoolTCPServer<TimedHandler, TimedServer> {
  using base = socketserver::ThreadPoolTCPServer<TimedHandler, TimedServer>;
  using base::base;
  Gate gate;
};
void TimedHandler::handle() {
  std::string reply;
  try {
    reply = rfile.readline();
    if (reply == "hold\n") server.gate.pass();
  } catch (const std::system_error& e) {
    if (e.code() != std::errc::timed_out) throw;
    reply = "timed out\n";
  }
  wfile.write(reply);
}

}  // namespace

TEST_CASE("a request's wait in a pool's queue counts toward its handler's timeout",
          "[thread_pool]") {
  TimedServer server({"127.0.0.1", 0});
  server.pool_size = 1;
  server.max_pool_size = 1;  // a fixed pool: the second request must wait in the queue
  test::Serving<TimedServer> serving(server);
  socketserver::socket holder = send_line(server.server_address, "hold\n");
  REQUIRE(server.gate.wait_entered(1));  // the one worker is busy (not in I/O)
  // The second client's line is there at once; only the queue makes it wait.
  socketserver::socket queued = send_line(server.server_address, "queued\n");
  REQUIRE(test::eventually([&] { return server.queued() == 1; }));
  const auto queued_since = std::chrono::steady_clock::now();
  // Longer than the handler's timeout in the queue (the time is what is tested).
  REQUIRE(test::eventually([&] { return std::chrono::steady_clock::now() - queued_since > 400ms; },
                           5s));
  server.gate.release();
  CHECK(test::recv_all(holder) == "hold\n");
  // Its handler's first read times out although its line was there all along.
  CHECK(test::recv_all(queued) == "timed out\n");
  CHECK(server.stats().queued == 1);
  CHECK(server.stats().pool_grown == 0);
  // A request that did not wait reads as usual.
  socketserver::socket prompt = send_line(server.server_address, "prompt\n");
  prompt.shutdown(SHUT_WR);
  CHECK(test::recv_all(prompt) == "prompt\n");
}
