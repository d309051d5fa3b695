// SPDX-License-Identifier: MIT
// Behaviour every server type shares, checked for all twenty: the four synchronous servers
// and the twelve threading/forking/pool ones (CPython's test_socketserver, case by case).
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

struct StreamEcho : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : socketserver::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
template <class K>
using Echo = std::conditional_t<K::stream, StreamEcho, DatagramEcho>;

}  // namespace

TEMPLATE_TEST_CASE("echo round trips while serving forever", "[servers][echo]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  {
    test::Serving<decltype(server)> serving(server);
    for (int i = 0; i < 5; ++i) {
      const std::string message = "hello " + std::to_string(i) + "\n";
      CHECK(test::round_trip<K>(server.server_address, message, dir) == message);
    }
  }
  server.server_close();
  CHECK(server.fileno() == -1);
  if constexpr (K::concurrency == test::Concurrency::forking) CHECK(server.active_children.empty());
  CHECK_FALSE(test::has_children());
}

TEMPLATE_TEST_CASE("server_address is the bound address", "[servers]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  CHECK(server.server_address == server.socket.getsockname());
  CHECK(server.server_address.family() == K::family);
  if constexpr (K::family == AF_INET) {
    CHECK(server.server_address.host() == "127.0.0.1");
    CHECK(server.server_address.port() != 0);
  } else {
    CHECK(server.server_address.path() == dir.file("server.sock"));
    CHECK(test::file_exists(dir.file("server.sock")));
  }
}

TEMPLATE_TEST_CASE("handle_request serves exactly one request", "[servers][handle_request]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  std::string reply;
  std::thread client([&] { reply = test::round_trip<K>(server.server_address, "one\n", dir); });
  server.handle_request();
  client.join();
  CHECK(reply == "one\n");
}

TEMPLATE_TEST_CASE("the destructor closes the server like server_close", "[servers][raii]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  const int fds_before = test::open_fd_count();
  socketserver::address bound;
  {
    typename K::template server<Echo<K>> server(K::bind_address(dir));
    bound = server.server_address;
    CHECK(test::open_fd_count() > fds_before);
  }
  CHECK(test::open_fd_count() == fds_before);
  if constexpr (K::family == AF_UNIX) CHECK_FALSE(test::file_exists(bound.path()));
}

TEMPLATE_TEST_CASE("server_close is idempotent and fileno becomes -1", "[servers][raii]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  CHECK(server.fileno() >= 0);
  server.server_close();
  CHECK(server.fileno() == -1);
  server.server_close();
  CHECK(server.fileno() == -1);
  CHECK_THROWS_AS(server.serve_forever(), std::system_error);
  CHECK_THROWS_AS(server.handle_request(), std::system_error);
}

TEMPLATE_TEST_CASE("bind_and_activate=false defers binding to the caller", "[servers]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir), false);
  CHECK(server.fileno() >= 0);
  server.socket.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1);  // what the deferral is for
  CHECK(server.socket.template getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) != 0);
  server.server_bind();
  server.server_activate();
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<K>(server.server_address, "late\n", dir) == "late\n");
}

TEMPLATE_TEST_CASE("class-level policies have Python's defaults", "[servers][policies]",
                   SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  using Server = typename K::template server<Echo<K>>;
  STATIC_REQUIRE(std::is_same_v<typename Server::RequestHandlerClass, Echo<K>>);
  STATIC_REQUIRE(std::is_same_v<typename Server::request_type, typename K::request_type>);
  STATIC_REQUIRE(Server::address_family == K::family);
  STATIC_REQUIRE(Server::socket_type == K::socket_type);
  STATIC_REQUIRE(Server::request_queue_size == 5);
  STATIC_REQUIRE_FALSE(Server::allow_reuse_address);
  STATIC_REQUIRE_FALSE(Server::allow_reuse_port);
  if constexpr (!K::stream) STATIC_REQUIRE(Server::max_packet_size == 8192);
  test::TempDir dir;
  Server server(K::bind_address(dir));
  if constexpr (K::concurrency == test::Concurrency::forking)
    CHECK(server.timeout == std::chrono::duration<double>(300));
  else
    CHECK_FALSE(server.timeout.has_value());
}
