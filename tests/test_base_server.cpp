// SPDX-License-Identifier: MIT
// BaseServer's hooks and request flow, with server classes of our own (CRTP): handle_error,
// verify_request, handle_request/handle_timeout, service_actions, the order of the request
// hooks, the README's examples, IPv6, the class-level policies, addresses and Unix socket
// files (CPython's test_socketserver: ErrorHandlerTest, MiscTestCase, SocketServerTest).
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/stderr_capture.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;

// --- Helpers -------------------------------------------------------------------------------

/// A log of events that survives fork(): each event is one O_APPEND write() to a file, so a
/// forking server's children write to it too.
class Journal {
 public:
  explicit Journal(std::string path)
      : path_(std::move(path)),
        fd_(::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) {
    if (fd_ < 0) throw std::system_error(errno, std::system_category(), "open " + path_);
  }
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;
  ~Journal() { ::close(fd_); }

  void add(const std::string& event) const {
    const std::string line = event + "\n";
    const ssize_t written = ::write(fd_, line.data(), line.size());
    (void)written;
  }
  std::vector<std::string> lines() const {
    std::vector<std::string> out;
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }
  std::vector<std::string> sorted_lines() const {
    std::vector<std::string> out = lines();
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
  int fd_;
};

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

using test::contains;
using test::StderrCapture;

/// Like test::round_trip, but also returns the client's own address as the server sees it.
template <class K>
std::pair<std::string, std::string> exchange(const ss::address& server_address,
                                             const std::string& message, const test::TempDir& dir) {
  ss::socket c = test::connect_to(server_address, K::socket_type, &dir);
  const std::string me = c.getsockname().to_string();
  if constexpr (K::stream) {
    c.sendall(message);
    c.shutdown(SHUT_WR);
    return {me, test::recv_all(c)};
  } else {
    c.send(message);
    return {me, c.recv(65536)};
  }
}

/// The handler base for a kind: StreamRequestHandler or DatagramRequestHandler, naming Server.
template <class K, class Server>
using handler_base_t = std::conditional_t<K::stream, ss::StreamRequestHandler<Server>,
                                          ss::DatagramRequestHandler<Server>>;

/// Echoes the request (all of a stream, or the datagram).
template <class K, class Server = void>
struct Echo : handler_base_t<K, Server> {
  void handle() { this->wfile.write(this->rfile.read()); }
};

struct StreamEcho : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : ss::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};

template <class Pred>
bool wait_for(std::mutex& m, std::condition_variable& cv, Pred pred) {
  std::unique_lock<std::mutex> lock(m);
  return cv.wait_for(lock, 10s, pred);
}

// --- Servers of our own --------------------------------------------------------------------

// handle_error receives handler exceptions (std and non-std) with the client's address.
template <class K>
struct ErrorServer;
template <class K>
struct ErrorHandler : handler_base_t<K, ErrorServer<K>> {
  void handle() {
    const std::string message = this->rfile.read();
    this->server.journal.add("handle " + message);
    if (message == "std") throw std::runtime_error("boom");
    if (message == "int") throw 42;
    this->wfile.write(message);
  }
};
template <class K>
struct ErrorServer : K::template server<ErrorHandler<K>, ErrorServer<K>> {
  using base = typename K::template server<ErrorHandler<K>, ErrorServer<K>>;
  ErrorServer(const ss::address& addr, const std::string& journal_path)
      : base(addr), journal(journal_path) {}
  ~ErrorServer() { this->server_close(); }  // the handlers use journal
  Journal journal;

  void handle_error(typename base::request_type& /*request*/, const ss::address& client) {
    std::string what;
    try {
      throw;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (int i) {
      what = "int " + std::to_string(i);
    } catch (...) {
      what = "unknown";
    }
    journal.add("error " + client.to_string() + " " + what);
  }
};

// verify_request rejects the first request and accepts the others.
template <class K>
struct VerifyServer;
template <class K>
struct VerifyHandler : handler_base_t<K, VerifyServer<K>> {
  void handle() {
    const std::string message = this->rfile.read();
    this->server.journal.add("handle " + message);
    this->wfile.write(message);
  }
};
template <class K>
struct VerifyServer : K::template server<VerifyHandler<K>, VerifyServer<K>> {
  using base = typename K::template server<VerifyHandler<K>, VerifyServer<K>>;
  using request_type = typename base::request_type;
  VerifyServer(const ss::address& addr, const std::string& journal_path)
      : base(addr), journal(journal_path) {}
  ~VerifyServer() { this->server_close(); }
  Journal journal;
  int verified = 0;  // only the serving thread (parent process) touches it

  bool verify_request(request_type& /*request*/, const ss::address& /*client*/) {
    journal.add("verify_request");
    return ++verified != 1;
  }
  void shutdown_request(request_type& request) {
    journal.add("shutdown_request");
    base::shutdown_request(request);
  }
};

// Every request hook, recorded in order ("child " marks a forked child's records).
template <class K>
struct HookServer;
template <class K>
struct HookHandler : handler_base_t<K, HookServer<K>> {
  void handle() {
    this->server.record("handle");
    const std::string message = this->rfile.read();
    if (message == "fail") throw std::runtime_error("fail");
    this->wfile.write(message);
  }
};
template <class K>
struct HookServer : K::template server<HookHandler<K>, HookServer<K>> {
  using base = typename K::template server<HookHandler<K>, HookServer<K>>;
  using request_type = typename base::request_type;
  HookServer(const ss::address& addr, const std::string& journal_path)
      : base(addr), journal(journal_path) {}
  ~HookServer() { this->server_close(); }
  Journal journal;
  const pid_t parent = ::getpid();

  void record(const std::string& event) {
    journal.add(::getpid() == parent ? event : "child " + event);
  }
  std::pair<request_type, ss::address> get_request() {
    record("get_request");
    return base::get_request();
  }
  bool verify_request(request_type& request, const ss::address& client) {
    record("verify_request");
    return base::verify_request(request, client);
  }
  void process_request(request_type& request, const ss::address& client) {
    record("process_request");
    base::process_request(request, client);
  }
  void finish_request(request_type& request, const ss::address& client) {
    record("finish_request");
    base::finish_request(request, client);
  }
  void shutdown_request(request_type& request) {
    record("shutdown_request");
    base::shutdown_request(request);
  }
  void close_request(request_type& request) {
    record("close_request");
    base::close_request(request);
  }
  void handle_error(request_type& /*request*/, const ss::address& /*client*/) {
    record("handle_error");
  }
};

// Counts handle_timeout() calls.
template <class K>
struct TimeoutServer : K::template server<Echo<K>, TimeoutServer<K>> {
  using base = typename K::template server<Echo<K>, TimeoutServer<K>>;
  using base::base;
  int timeouts = 0;
  void handle_timeout() {
    ++timeouts;
    base::handle_timeout();  // the forking servers reap children here
  }
};

// Counts service_actions() calls.
template <class K>
struct ActionServer : K::template server<Echo<K>, ActionServer<K>> {
  using base = typename K::template server<Echo<K>, ActionServer<K>>;
  using base::base;
  std::mutex m;
  std::condition_variable cv;
  int actions = 0;
  void service_actions() {
    base::service_actions();  // the forking servers reap children here
    {
      std::lock_guard<std::mutex> lock(m);
      ++actions;
    }
    cv.notify_all();
  }
  int action_count() {
    std::lock_guard<std::mutex> lock(m);
    return actions;
  }
};

// --- The README's examples, as written there ------------------------------------------------

struct CountingHandler;
struct CountingServer : socketserver::ThreadingTCPServer<CountingHandler, CountingServer> {
  using base = socketserver::ThreadingTCPServer<CountingHandler, CountingServer>;
  using base::base;
  static constexpr bool allow_reuse_address = true;  // class-level policy, as in Python
  std::atomic<int> served{0};
  bool verify_request(socketserver::socket&, const socketserver::address& client) {
    return client.host() == "127.0.0.1";
  }
};
struct CountingHandler : socketserver::StreamRequestHandler<CountingServer> {
  void handle() { wfile.write(std::to_string(++server.served) + "\n"); }
};

struct MyHandler : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write("logged " + rfile.read()); }
};

template <class Base>
struct LoggingMixIn : Base {
  using Base::Base;
  void process_request(typename Base::request_type& request, const socketserver::address& client) {
    std::fprintf(stderr, "request from %s\n", client.to_string().c_str());
    Base::process_request(request, client);
  }
};
struct MyServer : LoggingMixIn<socketserver::ThreadingTCPServer<MyHandler, MyServer>> {
  using LoggingMixIn::LoggingMixIn;
};

// --- Policies --------------------------------------------------------------------------------

struct V6Server : ss::TCPServer<StreamEcho, V6Server> {
  using base = ss::TCPServer<StreamEcho, V6Server>;
  using base::base;
  static constexpr int address_family = AF_INET6;
};
struct V6UDPServer : ss::UDPServer<DatagramEcho, V6UDPServer> {
  using base = ss::UDPServer<DatagramEcho, V6UDPServer>;
  using base::base;
  static constexpr int address_family = AF_INET6;
};

struct ReuseAddressServer : ss::TCPServer<StreamEcho, ReuseAddressServer> {
  using base = ss::TCPServer<StreamEcho, ReuseAddressServer>;
  using base::base;
  static constexpr bool allow_reuse_address = true;
};
struct ReuseAddressUDPServer : ss::UDPServer<DatagramEcho, ReuseAddressUDPServer> {
  using base = ss::UDPServer<DatagramEcho, ReuseAddressUDPServer>;
  using base::base;
  static constexpr bool allow_reuse_address = true;
};
struct ReusePortServer : ss::TCPServer<StreamEcho, ReusePortServer> {
  using base = ss::TCPServer<StreamEcho, ReusePortServer>;
  using base::base;
  static constexpr bool allow_reuse_port = true;
};
struct ReusePortUDPServer : ss::UDPServer<DatagramEcho, ReusePortUDPServer> {
  using base = ss::UDPServer<DatagramEcho, ReusePortUDPServer>;
  using base::base;
  static constexpr bool allow_reuse_port = true;
};
struct ReusePortUnixServer : ss::UnixStreamServer<StreamEcho, ReusePortUnixServer> {
  using base = ss::UnixStreamServer<StreamEcho, ReusePortUnixServer>;
  using base::base;
  static constexpr bool allow_reuse_port = true;
};
struct SmallQueueServer : ss::TCPServer<StreamEcho, SmallQueueServer> {
  using base = ss::TCPServer<StreamEcho, SmallQueueServer>;
  using base::base;
  static constexpr int request_queue_size = 1;
};

// The constructor calls the overridden server_bind() and server_activate(), in that order.
struct ConstructorHooksServer : ss::TCPServer<StreamEcho, ConstructorHooksServer> {
  using base = ss::TCPServer<StreamEcho, ConstructorHooksServer>;
  using base::base;
  inline static std::string calls;  // static: the hooks run before our members exist
  void server_bind() {
    calls += "bind ";
    base::server_bind();
  }
  void server_activate() {
    calls += "activate ";
    base::server_activate();
  }
};

bool ipv6_loopback_available() {
  try {
    ss::socket s(AF_INET6, SOCK_STREAM);
    const ss::address loopback("::1", 0);
    return ::bind(s.fileno(), loopback.data(), loopback.size()) == 0;
  } catch (const std::system_error&) {
    return false;
  }
}

}  // namespace

// --- handle_error ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("handler exceptions go to handle_error with the client's address",
                   "[base_server][handle_error]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  ErrorServer<K> server(K::bind_address(dir), dir.file("journal"));
  std::pair<std::string, std::string> thrown_std, thrown_int, fine;
  {
    test::Serving<ErrorServer<K>> serving(server);
    thrown_std = exchange<K>(server.server_address, "std", dir);
    thrown_int = exchange<K>(server.server_address, "int", dir);
    // The server goes on serving after a handler threw.
    fine = exchange<K>(server.server_address, "fine", dir);
    serving.stop();
    CHECK_FALSE(serving.error());
  }
  server.server_close();  // waits for the threads / children that wrote the journal
  // A failed stream request is closed without reply; a datagram handler's finish() still
  // sends what wfile holds (nothing), as Python's finally: self.finish() does.
  CHECK(thrown_std.second.empty());
  CHECK(thrown_int.second.empty());
  CHECK(fine.second == "fine");
  if constexpr (!(K::stream && K::family == AF_UNIX))  // Unix stream clients are unnamed
    CHECK(thrown_std.first != thrown_int.first);       // a fresh client each time
  CHECK(server.journal.sorted_lines() == sorted({
                                             "handle std",
                                             "error " + thrown_std.first + " boom",
                                             "handle int",
                                             "error " + thrown_int.first + " int 42",
                                             "handle fine",
                                         }));
}

TEST_CASE("the default handle_error prints the client's address and the exception to stderr",
          "[base_server][handle_error]") {
  struct Thrower : ss::StreamRequestHandler<> {
    void handle() {
      const std::string message = rfile.read();
      if (message == "int") throw 42;
      if (message == "std") throw std::runtime_error("boom from the handler");
      wfile.write(message);
    }
  };
  test::TempDir dir;
  ss::TCPServer<Thrower> server({"127.0.0.1", 0});
  auto serve_one = [&](const std::string& message) {
    std::pair<std::string, std::string> result;
    std::thread client([&] { result = exchange<test::TCP>(server.server_address, message, dir); });
    StderrCapture capture;
    server.handle_request();
    std::string err = capture.finish();
    client.join();
    return std::make_pair(result, err);
  };
  const std::string dashes(40, '-');

  auto [std_client, std_err] = serve_one("std");
  INFO("stderr: " << std_err);
  CHECK(std_client.second.empty());
  CHECK(std_err.rfind(dashes + "\n", 0) == 0);
  CHECK(contains(std_err, "\nException occurred during processing of request from " +
                              std_client.first + "\n"));
  CHECK(contains(std_err, "std::runtime_error"));
  CHECK(contains(std_err, "boom from the handler"));
  CHECK(std_err.size() > dashes.size() + 1);
  CHECK(std_err.substr(std_err.size() - dashes.size() - 1) == dashes + "\n");

  auto [int_client, int_err] = serve_one("int");
  INFO("stderr: " << int_err);
  CHECK(contains(
      int_err, "Exception occurred during processing of request from " + int_client.first + "\n"));
  CHECK(contains(int_err, "int\n"));  // the exception's type, for a non-std exception

  // And the server keeps serving.
  auto [fine_client, fine_err] = serve_one("fine");
  CHECK(fine_client.second == "fine");
  CHECK(fine_err.empty());
}

// --- verify_request ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("verify_request false closes the request without calling the handler",
                   "[base_server][verify_request]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  VerifyServer<K> server(K::bind_address(dir), dir.file("journal"));
  std::string rejected, accepted;
  {
    test::Serving<VerifyServer<K>> serving(server);
    if constexpr (K::stream) {
      // Rejected: the server closes the connection; the client reads end of stream.
      ss::socket c = test::connect_to(server.server_address, K::socket_type, &dir);
      rejected = test::recv_all(c);
      accepted = test::round_trip<K>(server.server_address, "two", dir);
    } else {
      // Rejected: no reply. The accepted second datagram's reply is the first to arrive.
      ss::socket c = test::connect_to(server.server_address, K::socket_type, &dir);
      c.send("one");
      c.send("two");
      accepted = c.recv(65536);
    }
    serving.stop();
    CHECK_FALSE(serving.error());
  }
  server.server_close();
  CHECK(rejected.empty());
  CHECK(accepted == "two");
  CHECK(server.verified == 2);
  // bpo-26309: shutdown_request() runs for the rejected request too.
  CHECK(server.journal.sorted_lines() ==
        sorted({"verify_request", "shutdown_request", "verify_request", "handle two",
                "shutdown_request"}));
}

// --- The order of the request hooks ----------------------------------------------------------

TEMPLATE_TEST_CASE("the request hooks are called in order and can be overridden",
                   "[base_server][hooks]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  HookServer<K> server(K::bind_address(dir), dir.file("journal"));
  std::string reply;
  std::thread client([&] { reply = test::round_trip<K>(server.server_address, "hooks", dir); });
  server.handle_request();
  client.join();
  server.server_close();
  CHECK(reply == "hooks");
  const std::vector<std::string> lines = server.journal.lines();
  if constexpr (K::concurrency == test::Concurrency::forking) {
    // The parent hands the request to a child and closes its copy; the child runs it.
    std::vector<std::string> parent, child;
    for (const std::string& line : lines)
      (line.rfind("child ", 0) == 0 ? child : parent).push_back(line);
    CHECK(parent == std::vector<std::string>{"get_request", "verify_request", "process_request",
                                             "close_request"});
    CHECK(child == std::vector<std::string>{"child finish_request", "child handle",
                                            "child shutdown_request", "child close_request"});
  } else {
    CHECK(lines == std::vector<std::string>{"get_request", "verify_request", "process_request",
                                            "finish_request", "handle", "shutdown_request",
                                            "close_request"});
  }
}

TEMPLATE_TEST_CASE("after a handler exception: handle_error, then shutdown_request",
                   "[base_server][hooks][handle_error]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  HookServer<K> server(K::bind_address(dir), dir.file("journal"));
  std::string reply = "unset";
  std::thread client([&] { reply = test::round_trip<K>(server.server_address, "fail", dir); });
  server.handle_request();
  client.join();
  server.server_close();
  CHECK(reply.empty());
  const std::vector<std::string> lines = server.journal.lines();
  if constexpr (K::concurrency == test::Concurrency::forking) {
    std::vector<std::string> parent, child;
    for (const std::string& line : lines)
      (line.rfind("child ", 0) == 0 ? child : parent).push_back(line);
    CHECK(parent == std::vector<std::string>{"get_request", "verify_request", "process_request",
                                             "close_request"});
    CHECK(child == std::vector<std::string>{"child finish_request", "child handle",
                                            "child handle_error", "child shutdown_request",
                                            "child close_request"});
  } else {
    CHECK(lines == std::vector<std::string>{"get_request", "verify_request", "process_request",
                                            "finish_request", "handle", "handle_error",
                                            "shutdown_request", "close_request"});
  }
}

// --- handle_request and handle_timeout ---------------------------------------------------------

TEMPLATE_TEST_CASE("handle_request honours timeout and the socket's timeout",
                   "[base_server][handle_request][timeout]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  using clock = std::chrono::steady_clock;
  test::TempDir dir;
  TimeoutServer<K> server(K::bind_address(dir));

  SECTION("no request within timeout: handle_timeout() once, then return") {
    server.timeout = 50ms;
    const auto start = clock::now();
    server.handle_request();
    const auto elapsed = clock::now() - start;
    CHECK(server.timeouts == 1);
    CHECK(elapsed >= 45ms);
    server.handle_request();
    CHECK(server.timeouts == 2);
  }
  SECTION("a request within timeout is served, handle_timeout() is not called") {
    server.timeout = 20s;
    std::string reply;
    std::thread client([&] { reply = test::round_trip<K>(server.server_address, "in time", dir); });
    server.handle_request();
    client.join();
    CHECK(reply == "in time");
    CHECK(server.timeouts == 0);
  }
  SECTION("the socket's own timeout counts when timeout is none") {
    server.timeout = std::nullopt;
    server.socket.settimeout(50ms);
    server.handle_request();
    CHECK(server.timeouts == 1);
  }
  SECTION("the shorter of timeout and the socket's timeout wins") {
    // Were the longer one used, the test would hang for an hour (ctest's TIMEOUT fails it).
    server.timeout = 1h;
    server.socket.settimeout(50ms);
    server.handle_request();
    CHECK(server.timeouts == 1);
    server.timeout = 50ms;
    server.socket.settimeout(1h);
    server.handle_request();
    CHECK(server.timeouts == 2);
  }
}

// --- service_actions -------------------------------------------------------------------------

TEMPLATE_TEST_CASE("serve_forever calls service_actions every poll_interval",
                   "[base_server][service_actions]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  ActionServer<K> server(K::bind_address(dir));
  test::Serving<ActionServer<K>> serving(server, 10ms);
  // Idle: no request, only poll timeouts. Stop after a few calls.
  CHECK(wait_for(server.m, server.cv, [&] { return server.actions >= 3; }));
  serving.stop();
  CHECK_FALSE(serving.error());
  CHECK(server.action_count() >= 3);
}

TEMPLATE_TEST_CASE("serve_forever calls service_actions after each request",
                   "[base_server][service_actions]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  ActionServer<K> server(K::bind_address(dir));
  {
    test::Serving<ActionServer<K>> serving(server, 1h);  // no poll timeout during the test
    CHECK(server.action_count() == 0);
    CHECK(test::round_trip<K>(server.server_address, "act", dir) == "act");
    CHECK(wait_for(server.m, server.cv, [&] { return server.actions >= 1; }));
  }
  // One request, one call: shutdown() breaks the loop before service_actions().
  CHECK(server.action_count() == 1);
}

// --- The README's examples -------------------------------------------------------------------

TEST_CASE("README: CountingServer and CountingHandler", "[base_server][readme]") {
  test::TempDir dir;
  CountingServer server({"127.0.0.1", 0});
  CHECK(server.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) != 0);
  {
    test::Serving<CountingServer> serving(server);
    for (int i = 1; i <= 3; ++i)
      CHECK(test::round_trip<test::TCP>(server.server_address, "", dir) ==
            std::to_string(i) + "\n");
    // verify_request refuses another host: a client bound to 127.0.0.2 (still loopback).
    ss::socket other(AF_INET, SOCK_STREAM);
    other.settimeout(20s);
    const ss::address other_host("127.0.0.2", 0);
    if (::bind(other.fileno(), other_host.data(), other_host.size()) == 0 &&
        ::connect(other.fileno(), server.server_address.data(), server.server_address.size()) ==
            0) {
      CHECK(test::recv_all(other).empty());
    } else {
      WARN("cannot connect from 127.0.0.2 here; verify_request's refusal is not checked");
    }
  }
  server.server_close();
  CHECK(server.served == 3);
}

TEST_CASE("README: a LoggingMixIn composes like ThreadingMixIn", "[base_server][readme]") {
  test::TempDir dir;
  MyServer server({"127.0.0.1", 0});
  std::pair<std::string, std::string> result;
  std::thread client([&] { result = exchange<test::TCP>(server.server_address, "hi", dir); });
  StderrCapture capture;
  server.handle_request();
  const std::string err = capture.finish();
  client.join();
  server.server_close();
  CHECK(result.second == "logged hi");
  CHECK(err == "request from " + result.first + "\n");
}

// --- IPv6 and the class-level policies ---------------------------------------------------------

TEST_CASE("address_family = AF_INET6 serves on ::1", "[base_server][ipv6]") {
  if (!ipv6_loopback_available()) {
    WARN("::1 cannot be bound on this machine; skipping the IPv6 test");
    return;
  }
  test::TempDir dir;
  SECTION("stream") {
    V6Server server({"::1", 0});
    CHECK(server.server_address.family() == AF_INET6);
    auto [host, port] = server.server_address;
    CHECK(host == "::1");
    CHECK(port != 0);
    CHECK(server.server_address.to_string() == "[::1]:" + std::to_string(port));
    test::Serving<V6Server> serving(server);
    CHECK(test::round_trip<test::TCP>(server.server_address, "six", dir) == "six");
  }
  SECTION("every interface") {
    V6Server server({"", 0});
    CHECK(server.server_address.host() == "::");
    test::Serving<V6Server> serving(server);
    CHECK(test::round_trip<test::TCP>({"::1", server.server_address.port()}, "any", dir) == "any");
  }
  SECTION("datagram") {
    V6UDPServer server({"::1", 0});
    CHECK(server.server_address.host() == "::1");
    test::Serving<V6UDPServer> serving(server);
    CHECK(test::round_trip<test::UDP>(server.server_address, "six", dir) == "six");
  }
}

TEST_CASE("the constructor calls the overridden server_bind and server_activate",
          "[base_server][hooks]") {
  ConstructorHooksServer::calls.clear();
  {
    ConstructorHooksServer server({"127.0.0.1", 0});
    CHECK(ConstructorHooksServer::calls == "bind activate ");
    CHECK(server.server_address.port() != 0);
  }
  ConstructorHooksServer::calls.clear();
  ConstructorHooksServer deferred({"127.0.0.1", 0}, false);
  CHECK(ConstructorHooksServer::calls.empty());
  CHECK(deferred.server_address.port() == 0);  // not bound yet
  deferred.server_bind();
  deferred.server_activate();
  CHECK(ConstructorHooksServer::calls == "bind activate ");
  test::TempDir dir;
  test::Serving<ConstructorHooksServer> serving(deferred);
  CHECK(test::round_trip<test::TCP>(deferred.server_address, "deferred", dir) == "deferred");
}

TEST_CASE("allow_reuse_address sets SO_REUSEADDR, off by default", "[base_server][policy]") {
  ss::TCPServer<StreamEcho> plain({"127.0.0.1", 0});
  CHECK(plain.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) == 0);
  ss::UDPServer<DatagramEcho> plain_udp({"127.0.0.1", 0});
  CHECK(plain_udp.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) == 0);
  ReuseAddressServer reuse({"127.0.0.1", 0});
  CHECK(reuse.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) != 0);
  ReuseAddressUDPServer reuse_udp({"127.0.0.1", 0});
  CHECK(reuse_udp.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEADDR) != 0);
  test::TempDir dir;
  test::Serving<ReuseAddressServer> serving(reuse);
  CHECK(test::round_trip<test::TCP>(reuse.server_address, "reuse", dir) == "reuse");
}

TEST_CASE("allow_reuse_port sets SO_REUSEPORT, off by default", "[base_server][policy]") {
  ss::TCPServer<StreamEcho> plain({"127.0.0.1", 0});
  CHECK(plain.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEPORT) == 0);
  ReusePortServer first({"127.0.0.1", 0});
  CHECK(first.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEPORT) != 0);
  // Two servers with SO_REUSEPORT share the port.
  const int port = first.server_address.port();
  ReusePortServer second({"127.0.0.1", port});
  CHECK(second.server_address.port() == port);

  ReusePortUDPServer udp({"127.0.0.1", 0});
  CHECK(udp.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEPORT) != 0);
}

TEST_CASE("allow_reuse_port is not applied to Unix sockets", "[base_server][policy][unix]") {
  // CPython 3.13.2+: SO_REUSEPORT only for AF_INET/AF_INET6 (Linux refuses it on AF_UNIX).
  test::TempDir dir;
  ReusePortUnixServer server(dir.file("reuse.sock"));
  CHECK(server.socket.getsockopt<int>(SOL_SOCKET, SO_REUSEPORT) == 0);
  test::Serving<ReusePortUnixServer> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "unix", dir) == "unix");
}

namespace {

// request_queue_size as a run-time value (a command-line flag, say): `static inline`.
struct RuntimeQueueServer : ss::UnixStreamServer<StreamEcho, RuntimeQueueServer> {
  using base = ss::UnixStreamServer<StreamEcho, RuntimeQueueServer>;
  using base::base;
  static inline int request_queue_size = 5;
};

// How many connections a listening Unix stream socket that nobody accepts from queues: its
// backlog + 1 (Linux), then a non-blocking connect() fails with EAGAIN.
int connections_queued(const ss::address& to) {
  std::vector<ss::socket> clients;
  for (int i = 0; i < 100; ++i) {
    ss::socket c(AF_UNIX, SOCK_STREAM);
    c.setblocking(false);
    if (::connect(c.fileno(), to.data(), to.size()) < 0) break;
    clients.push_back(std::move(c));
  }
  return static_cast<int>(clients.size());
}

// The README's server_bind() override: the listening socket is the member `socket`.
struct TunedServer : ss::TCPServer<StreamEcho, TunedServer> {
  using base = ss::TCPServer<StreamEcho, TunedServer>;
  using base::base;
  void server_bind() {
    socket.setsockopt(SOL_SOCKET, SO_KEEPALIVE, 1);  // before the base binds
    base::server_bind();
  }
};

}  // namespace

TEST_CASE("request_queue_size may be a run-time static inline value",
          "[base_server][policy][runtime]") {
  test::TempDir dir;
  RuntimeQueueServer::request_queue_size = 2;
  {
    RuntimeQueueServer server(dir.file("two.sock"));
    CHECK(connections_queued(server.server_address) == 3);
  }
  RuntimeQueueServer::request_queue_size = 7;
  {
    RuntimeQueueServer server(dir.file("seven.sock"));
    CHECK(connections_queued(server.server_address) == 8);
  }
  RuntimeQueueServer::request_queue_size = 5;
}

TEST_CASE("a server_bind override reaches the listening socket as `socket`",
          "[base_server][hooks]") {
  test::TempDir dir;
  TunedServer server({"127.0.0.1", 0});
  CHECK(server.socket.getsockopt<int>(SOL_SOCKET, SO_KEEPALIVE) != 0);
  test::Serving<TunedServer> serving(server);
  CHECK(test::round_trip<test::TCP>(server.server_address, "tuned", dir) == "tuned");
}

TEST_CASE("request_queue_size can be redefined", "[base_server][policy]") {
  static_assert(SmallQueueServer::request_queue_size == 1);
  static_assert(ss::TCPServer<StreamEcho>::request_queue_size == 5);
  test::TempDir dir;
  SmallQueueServer server({"127.0.0.1", 0});
  test::Serving<SmallQueueServer> serving(server);
  for (int i = 0; i < 3; ++i)
    CHECK(test::round_trip<test::TCP>(server.server_address, "q" + std::to_string(i), dir) ==
          "q" + std::to_string(i));
}

// --- Addresses -------------------------------------------------------------------------------

TEST_CASE("server_address unpacks like Python's (host, port) tuple", "[base_server][address]") {
  ss::TCPServer<StreamEcho> server({"127.0.0.1", 0});
  auto [host, port] = server.server_address;
  static_assert(std::is_same_v<decltype(host), std::string>);
  static_assert(std::is_same_v<decltype(port), std::uint16_t>);
  CHECK(host == "127.0.0.1");
  CHECK(port != 0);
  CHECK(port == server.socket.getsockname().port());
  CHECK(server.server_address.to_string() == "127.0.0.1:" + std::to_string(port));
}

TEST_CASE("address::to_string spells every kind of address", "[base_server][address]") {
  CHECK(ss::address("127.0.0.1", 5).to_string() == "127.0.0.1:5");
  CHECK(ss::address("::1", 5).to_string() == "[::1]:5");
  CHECK(ss::address("/tmp/some.sock").to_string() == "/tmp/some.sock");
  CHECK(ss::address(std::string("\0abstract", 9)).to_string() == "@abstract");
  CHECK(ss::address(std::string("\0abstract", 9)).path() == std::string("\0abstract", 9));
  const ss::address name("localhost", 5);
  CHECK(name.is_unresolved());
  CHECK(name.to_string() == "localhost:5");
  CHECK(name.host() == "localhost");
  CHECK(name.port() == 5);
  CHECK(ss::address("127.0.0.1", 5).family() == AF_INET);
  CHECK(ss::address("::1", 5).family() == AF_INET6);
  CHECK_FALSE(ss::address("127.0.0.1", 5).is_unresolved());
}

TEST_CASE("a host name is resolved when the server binds", "[base_server][address]") {
  test::TempDir dir;
  ss::TCPServer<StreamEcho> server({"localhost", 0});
  CHECK_FALSE(server.server_address.is_unresolved());
  CHECK(server.server_address.family() == AF_INET);
  CHECK(server.server_address.host() == "127.0.0.1");
  CHECK(server.server_address.port() != 0);
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::TCP>(server.server_address, "named", dir) == "named");
}

TEST_CASE("an empty host binds every interface", "[base_server][address]") {
  test::TempDir dir;
  SECTION("stream") {
    ss::TCPServer<StreamEcho> server({"", 0});
    CHECK(server.server_address.family() == AF_INET);
    CHECK(server.server_address.host() == "0.0.0.0");
    test::Serving<decltype(server)> serving(server);
    // Reached through loopback only.
    CHECK(test::round_trip<test::TCP>({"127.0.0.1", server.server_address.port()}, "any", dir) ==
          "any");
  }
  SECTION("datagram") {
    ss::UDPServer<DatagramEcho> server({"", 0});
    CHECK(server.server_address.host() == "0.0.0.0");
    test::Serving<decltype(server)> serving(server);
    CHECK(test::round_trip<test::UDP>({"127.0.0.1", server.server_address.port()}, "any", dir) ==
          "any");
  }
}

// --- Unix socket files ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("server_close removes the Unix socket file", "[base_server][unix]",
                   test::UnixStream, test::UnixDatagram, test::ThreadingUnixStream,
                   test::ThreadingUnixDatagram, test::ForkingUnixStream, test::ForkingUnixDatagram,
                   test::FiberUnixStream, test::FiberUnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  const std::string path = dir.file("server.sock");
  {
    typename K::template server<Echo<K>> server(path);
    CHECK(test::file_exists(path));
    server.server_close();
    CHECK_FALSE(test::file_exists(path));
    // The same path can be bound again at once.
    typename K::template server<Echo<K>> again(path);
    CHECK(test::file_exists(path));
    test::Serving<decltype(again)> serving(again);
    CHECK(test::round_trip<K>(again.server_address, "again", dir) == "again");
  }
  // ...and the destructor removed the second server's file.
  CHECK_FALSE(test::file_exists(path));
}

TEMPLATE_TEST_CASE("abstract-namespace addresses work and create no file",
                   "[base_server][unix][abstract]", test::UnixStream, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  // The name after the '\0' looks like a path in dir: nothing may appear there.
  const std::string shadow = dir.file("abstract.sock");
  const std::string name = std::string(1, '\0') + shadow;
  {
    typename K::template server<Echo<K>> server(name);
    CHECK(server.server_address.family() == AF_UNIX);
    CHECK(server.server_address.path() == name);
    CHECK(server.server_address.to_string() == "@" + shadow);
    CHECK_FALSE(test::file_exists(shadow));
    // The name is taken while the server lives.
    CHECK_THROWS_AS(typename K::template server<Echo<K>>(name), std::system_error);
    test::Serving<decltype(server)> serving(server);
    CHECK(test::round_trip<K>(server.server_address, "abstract", dir) == "abstract");
  }
  CHECK_FALSE(test::file_exists(shadow));
  // Closing released the name.
  typename K::template server<Echo<K>> again(name);
  CHECK(again.server_address.path() == name);
}

// CPython (socketmodule.c, getsockaddrarg) lets an abstract name use all of sun_path: it
// needs no terminating NUL. The header says a path is refused only if it "does not fit in
// sockaddr_un".
TEST_CASE("an abstract name may fill all of sun_path, as in CPython",
          "[base_server][unix][abstract]") {
  const std::size_t size = sizeof(sockaddr_un{}.sun_path);  // 108 on Linux
  std::string name = std::string(1, '\0') + "socketserver-test-" + std::to_string(::getpid()) + "-";
  name.resize(size, 'x');
  REQUIRE(name.size() == size);
  ss::UnixStreamServer<StreamEcho> server(name);
  CHECK(server.server_address.path() == name);
  test::TempDir dir;
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "full", dir) == "full");
}

// CPython: UnixStreamServer("") binds with an empty sun_path, which Linux answers with a
// unique autobound abstract name (b'\x00c2274'); server_address reports it.
TEST_CASE("an empty Unix path autobinds a unique abstract name, as in CPython",
          "[base_server][unix][abstract]") {
  const std::string empty;
  ss::UnixStreamServer<StreamEcho> first(empty);
  const std::string name = first.server_address.path();
  CHECK(name.size() > 1);
  CHECK(name.substr(0, 1) == std::string(1, '\0'));
  ss::UnixStreamServer<StreamEcho> second(empty);  // another unique name, no conflict
  CHECK(second.server_address.path() != name);
}
