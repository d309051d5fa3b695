// SPDX-License-Identifier: MIT
// Beyond Python: graceful drain (drain(grace)) and the request counters (stats()).
#include <chrono>
#include <string>
#include <thread>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

using namespace std::chrono_literals;

// Replies to one line; a client that sends nothing keeps it waiting.
struct LineEcho : socketserver::StreamRequestHandler<> {
  void handle() {
    const std::string line = rfile.readline();
    if (line == "fail\n") throw std::runtime_error("asked to fail");
    wfile.write(line);
  }
};

// A server that waits in handle_error() for nothing and prints nothing (tests stay quiet).
template <template <class, class> class Server>
struct Quiet : Server<LineEcho, Quiet<Server>> {
  using base = Server<LineEcho, Quiet<Server>>;
  using base::base;
  bool reject_all = false;
  bool verify_request(socketserver::socket&, const socketserver::address&) { return !reject_all; }
  void handle_error(socketserver::socket&, const socketserver::address&) {}
};

using QuietTCP = Quiet<socketserver::tcp_server_t>;
using QuietThreading = Quiet<socketserver::threading_tcp_server_t>;
using QuietForking = Quiet<socketserver::forking_tcp_server_t>;
using QuietPool = Quiet<socketserver::thread_pool_tcp_server_t>;

// Sends a line and returns the reply; "" if the server closed the connection without one
// (a server that closes with the line unread resets the connection: not an error here).
std::string ask(const socketserver::address& to, const std::string& line) {
  socketserver::socket c = test::connect_to(to);
  try {
    c.sendall(line);
    c.shutdown(SHUT_WR);
    return test::recv_all(c);
  } catch (const std::system_error& e) {
    if (e.code() == std::errc::connection_reset || e.code() == std::errc::not_connected ||
        e.code() == std::errc::broken_pipe)
      return "";
    throw;
  }
}

// Connects and sends nothing: the handler waits in readline().
socketserver::socket idle_client(const socketserver::address& to) { return test::connect_to(to); }

// Waits (at most 20 s) until the server counts `n` accepted requests.
template <class Server>
bool wait_accepted(Server& server, std::uint64_t n) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (server.stats().accepted < n && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  return server.stats().accepted >= n;
}

}  // namespace

TEMPLATE_TEST_CASE("stats count accepted, completed, failed and rejected requests", "[stats]",
                   QuietTCP, QuietThreading, QuietForking, QuietPool) {
  TestType server({"127.0.0.1", 0});
  {
    test::Serving<TestType> serving(server);
    CHECK(ask(server.server_address, "one\n") == "one\n");
    CHECK(ask(server.server_address, "two\n") == "two\n");
    CHECK(ask(server.server_address, "fail\n").empty());
  }
  server.reject_all = true;
  {
    test::Serving<TestType> serving(server);
    CHECK(ask(server.server_address, "three\n").empty());
  }
  server.server_close();  // waits for threads and children: everything is counted now
  const socketserver::server_stats s = server.stats();
  CHECK(s.accepted == 4);
  CHECK(s.rejected == 1);
  CHECK(s.completed == 3);
  CHECK(s.errors == 1);
  CHECK(s.active() == 0);
  CHECK(s.get_request_errors == 0);
}

TEST_CASE("a synchronous server's drain just closes", "[drain]") {
  QuietTCP server({"127.0.0.1", 0});
  CHECK(server.drain(1s) == 0);
  CHECK(server.fileno() == -1);
}

TEMPLATE_TEST_CASE("drain lets a request in flight finish within the grace period", "[drain]",
                   QuietThreading, QuietForking, QuietPool) {
  TestType server({"127.0.0.1", 0});
  socketserver::socket client;
  {
    test::Serving<TestType> serving(server);
    client = idle_client(server.server_address);
    REQUIRE(wait_accepted(server, 1));
  }
  std::size_t cut = 99;
  std::thread draining([&] { cut = server.drain(60s); });
  client.sendall("finish me\n");  // the handler can now complete, before the deadline
  client.shutdown(SHUT_WR);
  CHECK(test::recv_all(client) == "finish me\n");
  draining.join();
  CHECK(cut == 0);
  CHECK(server.fileno() == -1);
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("drain cuts what is still running after the grace period", "[drain]",
                   QuietThreading, QuietForking, QuietPool) {
  TestType server({"127.0.0.1", 0});
  socketserver::socket client;
  {
    test::Serving<TestType> serving(server);
    client = idle_client(server.server_address);
    REQUIRE(wait_accepted(server, 1));
  }
  CHECK(server.drain(50ms) == 1);
  CHECK(test::recv_all(client).empty());  // closed without a reply
  CHECK(server.fileno() == -1);
  CHECK(server.stats().active() == 0);
  CHECK_FALSE(test::has_children());
}

TEST_CASE("a pool's drain also cuts requests still queued", "[drain][thread_pool]") {
  QuietPool server({"127.0.0.1", 0});
  server.pool_size = 1;
  socketserver::socket busy, queued;
  {
    test::Serving<QuietPool> serving(server);
    busy = idle_client(server.server_address);
    queued = idle_client(server.server_address);
    REQUIRE(wait_accepted(server, 2));
  }
  CHECK(server.drain(50ms) == 2);
  CHECK(test::recv_all(busy).empty());
  CHECK(test::recv_all(queued).empty());
  CHECK(server.stats().active() == 0);
}
