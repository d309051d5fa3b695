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
using QuietFiber = Quiet<socketserver::fiber_tcp_server_t>;

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
                   QuietTCP, QuietThreading, QuietForking, QuietPool, QuietFiber) {
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
                   QuietThreading, QuietForking, QuietPool, QuietFiber) {
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
                   QuietThreading, QuietForking, QuietPool, QuietFiber) {
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
  server.max_pool_size = 1;  // no growth: the second request waits in the queue
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

// --- drain() serves what the kernel queued; keep-alive connections end between requests ---

namespace {

// Answers lines until end of stream; "draining?\n" is answered with server.draining().
struct KeepAlive : socketserver::StreamRequestHandler<> {
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(line == "draining?\n" ? (server.draining() ? "yes\n" : "no\n") : line);
  }
};

template <template <class, class> class Server>
struct QuietKeepAlive : Server<KeepAlive, QuietKeepAlive<Server>> {
  using base = Server<KeepAlive, QuietKeepAlive<Server>>;
  using base::base;
  void handle_error(socketserver::socket&, const socketserver::address&) {}
};

using QuietUnixThreading = Quiet<socketserver::threading_unix_stream_server_t>;
using QuietUnixPool = Quiet<socketserver::thread_pool_unix_stream_server_t>;
using QuietUnixFiber = Quiet<socketserver::fiber_unix_stream_server_t>;

// Reads one reply line (up to '\n'); "" if the connection ended first.
std::string read_line(const socketserver::socket& c) {
  std::string line;
  char ch = 0;
  try {
    while (line.size() < 4096 && c.recv(&ch, 1) == 1) {
      line += ch;
      if (ch == '\n') break;
    }
  } catch (const std::system_error&) {
    return "";
  }
  return line;
}

template <class Server>
socketserver::address listen_address(test::TempDir& dir) {
  if (Server::address_family == AF_UNIX) return socketserver::address(dir.path() + "/s");
  return {"127.0.0.1", 0};
}

}  // namespace

TEMPLATE_TEST_CASE("drain serves every connection already queued in the listen backlog", "[drain]",
                   QuietTCP, QuietThreading, QuietForking, QuietPool, QuietFiber,
                   QuietUnixThreading, QuietUnixPool, QuietUnixFiber) {
  test::TempDir dir;
  TestType server(listen_address<TestType>(dir));
  { test::Serving<TestType> serving(server); }  // served and stopped: nobody accepts now
  // The kernel completes these connections and queues them (the backlog holds 5), and
  // each client sends its whole request: by the client's account, the request is sent.
  std::vector<socketserver::socket> clients;
  for (int i = 0; i < 4; ++i) {
    clients.push_back(test::connect_to(server.server_address));
    clients.back().sendall("request " + std::to_string(i) + "\n");
  }
  CHECK(server.drain(30s) == 0);
  for (int i = 0; i < 4; ++i) CHECK(read_line(clients[i]) == "request " + std::to_string(i) + "\n");
  CHECK(server.fileno() == -1);
  CHECK(server.stats().completed == 4);
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("after the drain, new connections are refused", "[drain]", QuietThreading,
                   QuietUnixThreading, QuietFiber, QuietUnixFiber) {
  test::TempDir dir;
  TestType server(listen_address<TestType>(dir));
  const socketserver::address where = server.server_address;
  server.drain(30s);
  CHECK_THROWS_AS(test::connect_to(where), std::system_error);
}

TEMPLATE_TEST_CASE("handlers see server.draining() once drain() has started", "[drain]",
                   QuietKeepAlive<socketserver::threading_tcp_server_t>,
                   QuietKeepAlive<socketserver::forking_tcp_server_t>,
                   QuietKeepAlive<socketserver::thread_pool_tcp_server_t>,
                   QuietKeepAlive<socketserver::fiber_tcp_server_t>) {
  TestType server({"127.0.0.1", 0});
  CHECK_FALSE(server.draining());
  socketserver::socket client;
  {
    test::Serving<TestType> serving(server);
    client = test::connect_to(server.server_address);
    client.sendall("one\n");
    REQUIRE(read_line(client) == "one\n");
    client.sendall("draining?\n");
    REQUIRE(read_line(client) == "no\n");
  }
  std::size_t cut = 99;
  std::thread draining([&] { cut = server.drain(30s); });
  REQUIRE(test::eventually([&] { return server.draining(); }));
  client.sendall("dra");  // in the middle of a request: the handler's read is not cut
  client.sendall("ining?\n");
  CHECK(read_line(client) == "yes\n");
  CHECK(read_line(client).empty());  // and then the connection ends, between requests
  draining.join();
  CHECK(cut == 0);
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("an idle keep-alive client does not hold the drain for the grace period",
                   "[drain]", QuietKeepAlive<socketserver::threading_tcp_server_t>,
                   QuietKeepAlive<socketserver::forking_tcp_server_t>,
                   QuietKeepAlive<socketserver::thread_pool_tcp_server_t>,
                   QuietKeepAlive<socketserver::threading_unix_stream_server_t>,
                   QuietKeepAlive<socketserver::fiber_tcp_server_t>,
                   QuietKeepAlive<socketserver::fiber_unix_stream_server_t>) {
  test::TempDir dir;
  TestType server(listen_address<TestType>(dir));
  socketserver::socket client;
  {
    test::Serving<TestType> serving(server);
    client = test::connect_to(server.server_address);
    client.sendall("hello\n");
    REQUIRE(read_line(client) == "hello\n");
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK(server.drain(30s) == 0);  // the handler's wait for its next request ended
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(read_line(client).empty());
  CHECK(server.stats().active() == 0);
  CHECK_FALSE(test::has_children());
}
