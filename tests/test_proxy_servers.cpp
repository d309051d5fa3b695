// SPDX-License-Identifier: MIT
// The PROXY protocol on every stream server kind (issue 13): the header's client reaches the
// handler and verify_request(), sources outside the allow-list are closed unread, a bad or
// late header is cut and counted without holding up other clients, and the client's first
// bytes, sent with the header, reach the handler intact. Then the per-client limits:
// max_connections_per_ip (by the connection's address, or by the header's) and
// max_connection_age. Loopback and temporary Unix paths only; every wait is bounded.
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;
using test::Concurrency;

#define STREAM_KINDS                                                                            \
  test::TCP, test::UnixStream, test::ThreadingTCP, test::ThreadingUnixStream, test::ForkingTCP, \
      test::ForkingUnixStream, test::PoolTCP, test::PoolUnixStream, test::FiberTCP,             \
      test::FiberUnixStream

#define TCP_STREAM_KINDS \
  test::TCP, test::ThreadingTCP, test::ForkingTCP, test::PoolTCP, test::FiberTCP

// "PROXY TCP4 <source> 198.51.100.1 <port> 443\r\n"
std::string v1(const std::string& source, int port) {
  return "PROXY TCP4 " + source + " 198.51.100.1 " + std::to_string(port) + " 443\r\n";
}

// A v2 header: PROXY (or LOCAL) over TCP, IPv4 or IPv6 addresses.
std::string v2(const std::string& source, std::uint16_t port, bool local = false) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h += static_cast<char>(local ? 0x20 : 0x21);
  const bool six = source.find(':') != std::string::npos;
  unsigned char address[16] = {};
  REQUIRE(::inet_pton(six ? AF_INET6 : AF_INET, source.c_str(), address) == 1);
  const std::size_t size = six ? 16 : 4;
  h += static_cast<char>(six ? 0x21 : 0x11);
  const std::size_t block = 2 * size + 4;
  h += static_cast<char>(block >> 8);
  h += static_cast<char>(block & 0xFF);
  h.append(reinterpret_cast<const char*>(address), size);  // source
  h.append(reinterpret_cast<const char*>(address), size);  // destination: any
  h += static_cast<char>(port >> 8);
  h += static_cast<char>(port & 0xFF);
  h += '\x01';
  h += '\xBB';
  return h;
}

template <class K>
struct WhoHandler;

// Answers each line with "<client_address>|<line>"; refuses the client 192.0.2.66.
template <class K>
struct ProxyServer : K::template server<WhoHandler<K>, ProxyServer<K>> {
  using base = typename K::template server<WhoHandler<K>, ProxyServer<K>>;
  explicit ProxyServer(const test::TempDir& dir, bool proxied = true) : base(K::bind_address(dir)) {
    if (proxied) {
      this->proxy_protocol = ss::proxy_protocol_mode::either;
      this->proxy_trusted_sources = {"127.0.0.1/32", "::1", "unix"};
    }
  }
  bool verify_request(typename K::request_type&, const ss::address& client) {
    return client.family() == AF_UNIX || client.host() != "192.0.2.66";
  }
};

template <class K>
struct WhoHandler : ss::StreamRequestHandler<ProxyServer<K>> {
  void handle() {
    for (int i = 0; i < 100; ++i) {
      const std::string line = this->rfile.readline();
      if (line.empty()) return;
      this->wfile.write(this->client_address.to_string() + "|" + line);
    }
  }
};

// Sends `bytes` in one send() (header and payload in one segment), ends the sending side,
// returns everything the server sent until it closed. A server that closes a connection
// with bytes unread resets it: that is an empty reply too.
std::string talk(const ss::address& to, const std::string& bytes) {
  ss::socket c = test::connect_to(to);
  try {
    c.sendall(bytes);
    c.shutdown(SHUT_WR);
    return test::recv_all(c);
  } catch (const std::system_error& e) {
    if (e.code() != std::errc::connection_reset && e.code() != std::errc::not_connected &&
        e.code() != std::errc::broken_pipe)
      throw;
    return "";
  }
}

template <class Server>
void wait_for(Server& server, std::uint64_t ss::server_stats::*counter, std::uint64_t value) {
  // Forking servers count a child's outcome when they reap it, in their loop.
  test::eventually([&] { return server.stats().*counter >= value; });
  CHECK(server.stats().*counter == value);
}

}  // namespace

TEMPLATE_TEST_CASE("PROXY v1 and v2 headers give the handler the client's address and port",
                   "[proxy]", STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  // The first line travels in the same segment as the header.
  CHECK(talk(server.server_address, v1("192.0.2.7", 40001) + "hello\n") ==
        "192.0.2.7:40001|hello\n");
  CHECK(talk(server.server_address, v2("192.0.2.8", 40002) + "two\nlines\n") ==
        "192.0.2.8:40002|two\n192.0.2.8:40002|lines\n");
  CHECK(talk(server.server_address, v2("2001:db8::5", 40003) + "six\n") ==
        "[2001:db8::5]:40003|six\n");
  // A LOCAL header (the balancer's health check) keeps the connection's own address.
  const std::string local = talk(server.server_address, v2("192.0.2.9", 1, true) + "hc\n");
  CHECK(local.find("192.0.2.9") == std::string::npos);
  CHECK(local.substr(local.size() - 4) == "|hc\n");
  wait_for(server, &ss::server_stats::completed, 4);
  CHECK(server.stats().rejected == 0);
}

TEMPLATE_TEST_CASE("a long PROXY v2 header, sent in pieces, is read exactly", "[proxy]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  // 400 bytes of TLVs (a NOOP, type 0x04) after the address block: longer than the reader's
  // first buffer. The header's length field covers them.
  std::string header = v2("192.0.2.9", 4242);
  const std::size_t tlv = 400;
  header += '\x04';
  header += static_cast<char>((tlv - 3) >> 8);
  header += static_cast<char>((tlv - 3) & 0xFF);
  header.append(tlv - 3, '\0');
  const std::size_t length = header.size() - 16;
  header[14] = static_cast<char>(length >> 8);
  header[15] = static_cast<char>(length & 0xFF);
  const std::string bytes = header + "after the header\n";
  ss::socket c = test::connect_to(server.server_address);
  for (std::size_t at = 0; at < bytes.size(); at += 97) c.sendall(bytes.substr(at, 97));
  c.shutdown(SHUT_WR);
  CHECK(test::recv_all(c) == "192.0.2.9:4242|after the header\n");
}

TEMPLATE_TEST_CASE("a PROXY header whose version the server does not accept is cut", "[proxy]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  server.proxy_protocol = ss::proxy_protocol_mode::v2;
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  CHECK(talk(server.server_address, v1("192.0.2.7", 40001) + "hello\n").empty());
  CHECK(talk(server.server_address, v2("192.0.2.8", 40002) + "ok\n") == "192.0.2.8:40002|ok\n");
  wait_for(server, &ss::server_stats::proxy_header_failures, 1);
}

TEMPLATE_TEST_CASE("verify_request sees the address the PROXY header names", "[proxy]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  // Refused by the header's address; the connection's own (loopback, or Unix) it accepts.
  CHECK(talk(server.server_address, v1("192.0.2.66", 5000) + "let me in\n").empty());
  CHECK(talk(server.server_address, v1("192.0.2.67", 5001) + "me too\n") ==
        "192.0.2.67:5001|me too\n");
  wait_for(server, &ss::server_stats::rejected, 1);
  CHECK(server.stats().proxy_header_failures == 0);
}

TEMPLATE_TEST_CASE("a PROXY source outside the allow-list is closed unread", "[proxy]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  server.proxy_trusted_sources = {"10.0.0.0/8", "fd00::/8"};  // neither loopback nor Unix
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  CHECK(talk(server.server_address, v1("192.0.2.7", 40001) + "spoofed\n").empty());
  wait_for(server, &ss::server_stats::untrusted_sources, 1);
  CHECK(server.stats().rejected == 1);
  CHECK(server.stats().proxy_header_failures == 0);
}

TEMPLATE_TEST_CASE("a missing or malformed PROXY header is cut and counted", "[proxy]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  CHECK(talk(server.server_address, "GET / HTTP/1.0\r\n\r\n").empty());
  CHECK(talk(server.server_address, "PROXY TCP4 192.0.2.1 nonsense\r\nx\n").empty());
  CHECK(talk(server.server_address, "PROXY TCP4 192.0.2.1").empty());  // ends early
  CHECK(talk(server.server_address, v1("192.0.2.7", 7) + "fine\n") == "192.0.2.7:7|fine\n");
  wait_for(server, &ss::server_stats::proxy_header_failures, 3);
  CHECK(server.stats().rejected == 3);
  CHECK(server.stats().errors == 0);  // quiet: not a failure of the server
}

TEMPLATE_TEST_CASE("a slow PROXY header is cut at proxy_header_timeout", "[proxy]", STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  server.proxy_header_timeout = 100ms;
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  ss::socket slow = test::connect_to(server.server_address);
  slow.sendall("PROXY TCP4 192.0.2.1 ");  // and nothing more: the server ends it
  CHECK(test::recv_all(slow).empty());
  wait_for(server, &ss::server_stats::proxy_header_failures, 1);
  CHECK(server.stats().timeouts == 0);
}

TEMPLATE_TEST_CASE("a client stalled in its PROXY header does not delay the others", "[proxy]",
                   test::ThreadingTCP, test::ThreadingUnixStream, test::ForkingTCP,
                   test::ForkingUnixStream, test::PoolTCP, test::PoolUnixStream, test::FiberTCP,
                   test::FiberUnixStream) {
  // (A synchronous server reads each header on its loop: there a stalled client holds the
  // others for up to proxy_header_timeout, as docs/DEPLOY.md says.)
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  server.proxy_header_timeout = 60s;  // longer than the clients' 20 s: a delayed one fails
  test::Serving<ProxyServer<TestType>> serving(server, 50ms);
  std::vector<ss::socket> stalled;
  for (int i = 0; i < 8; ++i) {
    stalled.push_back(test::connect_to(server.server_address));
    stalled.back().sendall(i % 2 == 0 ? std::string("PROXY TCP4 ")
                                      : v2("192.0.2.1", 1).substr(0, 9));
  }
  for (int i = 0; i < 4; ++i)
    CHECK(talk(server.server_address, v1("192.0.2.7", 100 + i) + "on time\n") ==
          "192.0.2.7:" + std::to_string(100 + i) + "|on time\n");
  // Their connections end: cut, counted. (shutdown(), as a forking server's children hold
  // copies of the test's earlier client sockets.)
  for (ss::socket& s : stalled) s.shutdown(SHUT_RDWR);
  stalled.clear();
  wait_for(server, &ss::server_stats::proxy_header_failures, 8);
}

TEMPLATE_TEST_CASE("prefork workers read PROXY headers", "[proxy][prefork]",
                   SOCKETSERVER_PREFORK_STREAM_KINDS) {
#if defined(SOCKETSERVER_TEST_TSAN)
  if constexpr (TestType::concurrency != Concurrency::sync &&
                TestType::concurrency != Concurrency::forking) {
    WARN("skipped under ThreadSanitizer");  // it cannot start threads in a forked child
    return;
  }
#endif
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  std::exception_ptr error;
  std::thread workers([&] {
    try {
      server.serve_forever_workers(2, std::chrono::milliseconds(50));
    } catch (...) {
      error = std::current_exception();
    }
  });
  for (int i = 0; i < 6; ++i)
    CHECK(talk(server.server_address, v1("192.0.2.7", 2000 + i) + "w\n") ==
          "192.0.2.7:" + std::to_string(2000 + i) + "|w\n");
  CHECK(talk(server.server_address, "no header\n").empty());
  test::eventually([&] { return server.stats().proxy_header_failures == 1; });
  CHECK(server.stats().proxy_header_failures == 1);
  server.shutdown();
  workers.join();
  CHECK_FALSE(error);
}

TEST_CASE("a datagram server refuses proxy_protocol", "[proxy]") {
  test::TempDir dir;
  struct Echo : ss::DatagramRequestHandler<> {
    void handle() {}
  };
  ss::UDPServer<Echo> server({"127.0.0.1", 0});
  server.proxy_protocol = ss::proxy_protocol_mode::v2;
  ss::socket c = test::connect_to(server.server_address, SOCK_DGRAM);
  c.send("x");
  CHECK_THROWS_AS(server.handle_request(), std::logic_error);
}

TEST_CASE("source_networks matches networks, single addresses, mapped IPv4 and Unix peers",
          "[proxy]") {
  ss::source_networks n{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"};
  CHECK(n.contains(ss::address("10.1.2.3", 1)));
  CHECK_FALSE(n.contains(ss::address("11.0.0.1", 1)));
  CHECK(n.contains(ss::address("192.0.2.1", 1)));
  CHECK_FALSE(n.contains(ss::address("192.0.2.2", 1)));
  CHECK(n.contains(ss::address("2001:db8:1::1", 1)));
  CHECK_FALSE(n.contains(ss::address("2001:db9::1", 1)));
  CHECK(n.contains(ss::address("::ffff:10.9.9.9", 1)));  // a dual-stack socket's IPv4 peer
  CHECK_FALSE(n.contains(ss::address("/tmp/x.sock")));
  n.add("unix");
  CHECK(n.contains(ss::address("/tmp/x.sock")));
  ss::source_networks partial{"192.0.2.0/25"};
  CHECK(partial.contains(ss::address("192.0.2.127", 1)));
  CHECK_FALSE(partial.contains(ss::address("192.0.2.128", 1)));
  CHECK(ss::source_networks().empty());
  CHECK_FALSE(ss::source_networks().contains(ss::address("127.0.0.1", 1)));
  CHECK_THROWS_AS(ss::source_networks{"localhost"}, std::invalid_argument);
  CHECK_THROWS_AS(ss::source_networks{"10.0.0.0/33"}, std::invalid_argument);
  CHECK_THROWS_AS(ss::source_networks{"10.0.0.1/8"}, std::invalid_argument);  // host bits set
  CHECK_THROWS_AS(ss::source_networks{"10.0.0.0/"}, std::invalid_argument);
}

// --- Per-client limits ------------------------------------------------------------------------

namespace {

// Holds a client's connection open: serves lines until the client ends its sending side.
template <class Server, class Kind>
void hold_and_check_limit(Server& server, const std::string& header_a, const std::string& header_b,
                          const std::string& header_c) {
  test::Serving<Server> serving(server, 50ms);
  ss::socket a = test::connect_to(server.server_address);
  a.sendall(header_a + "a\n");
  CHECK(a.recv(4096).find("|a\n") != std::string::npos);  // A's handler runs: it holds a slot
  if constexpr (Kind::concurrency != Concurrency::sync) {
    // A second connection from the same client is over the limit: closed unanswered.
    CHECK(talk(server.server_address, header_b + "b\n").empty());
    wait_for(server, &ss::server_stats::over_connection_limit, 1);
    CHECK(server.stats().rejected == 1);
  }
  a.shutdown(SHUT_WR);
  CHECK(test::recv_all(a).empty());
  a.close();
  // A's slot is given back when its request ends (a forking server: when the child is reaped).
  const std::uint64_t rejected = server.stats().rejected;
  test::eventually([&] { return server.stats().completed >= 1; });
  std::string reply;
  for (int i = 0; i < 200 && reply.empty(); ++i) {  // bounded: the reaping may lag a loop
    reply = talk(server.server_address, header_c + "c\n");
    if (reply.empty()) std::this_thread::sleep_for(10ms);
  }
  CHECK(reply.find("|c\n") != std::string::npos);
  CHECK(server.stats().rejected >= rejected);
}

}  // namespace

TEMPLATE_TEST_CASE("max_connections_per_ip closes a client's connection beyond the limit",
                   "[limits]", TCP_STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir, false);
  server.max_connections_per_ip = 1;
  hold_and_check_limit<ProxyServer<TestType>, TestType>(server, "", "", "");
}

TEMPLATE_TEST_CASE("max_connections_per_ip counts the client a PROXY header names", "[limits]",
                   test::TCP, test::UnixStream, test::ThreadingTCP, test::ThreadingUnixStream,
                   test::PoolTCP, test::PoolUnixStream, test::FiberTCP, test::FiberUnixStream) {
  // (Not on a forking server: its children read the headers, the parent counts.)
  test::TempDir dir;
  ProxyServer<TestType> server(dir);
  server.max_connections_per_ip = 1;
  SECTION("the same client, through the same balancer") {
    hold_and_check_limit<ProxyServer<TestType>, TestType>(server, v1("192.0.2.7", 1),
                                                          v1("192.0.2.7", 2), v1("192.0.2.7", 3));
  }
  SECTION("other clients, through the same balancer, are not limited by it") {
    test::Serving<ProxyServer<TestType>> serving(server, 50ms);
    if constexpr (TestType::concurrency != Concurrency::sync) {
      ss::socket a = test::connect_to(server.server_address);
      a.sendall(v1("192.0.2.7", 1) + "a\n");
      CHECK(a.recv(4096) == "192.0.2.7:1|a\n");
      CHECK(talk(server.server_address, v2("192.0.2.8", 2) + "b\n") == "192.0.2.8:2|b\n");
      CHECK(server.stats().over_connection_limit == 0);
    }
  }
}

TEMPLATE_TEST_CASE("max_connection_age ends a connection at its next request boundary", "[limits]",
                   STREAM_KINDS) {
  test::TempDir dir;
  ProxyServer<TestType> server(dir, false);
  SECTION("a young connection is served") {
    server.max_connection_age = 3600s;
    test::Serving<ProxyServer<TestType>> serving(server, 50ms);
    const std::string reply = talk(server.server_address, "a\nb\nc\n");
    CHECK(reply.find("|a\n") != std::string::npos);
    CHECK(reply.find("|c\n") != std::string::npos);
  }
  SECTION("an old one is ended at its next read, its request unread") {
    server.max_connection_age = 0s;
    test::Serving<ProxyServer<TestType>> serving(server, 50ms);
    CHECK(talk(server.server_address, "a\nb\n").empty());
    wait_for(server, &ss::server_stats::completed, 1);
    CHECK(server.stats().errors == 0);
  }
}
