// SPDX-License-Identifier: MIT
// Request handlers run by real servers (Python's BaseRequestHandler, StreamRequestHandler and
// DatagramRequestHandler, section 1.9 of the behaviour notes): setup/handle/finish order and
// the error path, the request/client_address/server members, the class-level settings of
// StreamRequestHandler, datagram replies, and handlers made outside a server.
//
// Most tests are single-threaded: the client connects (the connection waits in the listen
// backlog) or sends its datagram first, then the test calls server.handle_request(), then
// reads the reply. Nothing sleeps; only the timeout tests wait, for the handler's timeout.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;

// Bytes waiting in fd's receive queue.
int queued(int fd) {
  int n = -1;
  if (::ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

// What handle_error() sees: the exception being handled, described.
struct ErrorRecord {
  std::string what;
  std::error_code code;  // for std::system_error
  ss::address client;
};

ErrorRecord current_error(const ss::address& client) {
  ErrorRecord r{"", {}, client};
  try {
    throw;
  } catch (const std::system_error& e) {
    r.what = e.what();
    r.code = e.code();
  } catch (const std::exception& e) {
    r.what = e.what();
  } catch (...) {
    r.what = "unknown exception";
  }
  return r;
}

// --- setup / handle / finish --------------------------------------------------------------

enum class Fail { none, in_setup, in_handle };

template <std::ptrdiff_t W>
struct OrderHandler;

template <std::ptrdiff_t W>
struct OrderServer : ss::TCPServer<OrderHandler<W>, OrderServer<W>> {
  using base = ss::TCPServer<OrderHandler<W>, OrderServer<W>>;
  using base::base;
  Fail fail = Fail::none;
  std::vector<std::string> events;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

template <std::ptrdiff_t W>
struct OrderHandler : ss::StreamRequestHandler<OrderServer<W>> {
  using base = ss::StreamRequestHandler<OrderServer<W>>;
  static constexpr std::ptrdiff_t wbufsize = W;
  void setup() {
    this->server.events.push_back("setup");
    base::setup();
    if (this->server.fail == Fail::in_setup) throw std::runtime_error("setup failed");
  }
  void handle() {
    this->server.events.push_back("handle:" + this->rfile.readline());
    this->wfile.write("reply\n");
    if (this->server.fail == Fail::in_handle) throw std::runtime_error("handle failed");
  }
  void finish() {
    this->server.events.push_back("finish");
    base::finish();
  }
};

struct OrderOutcome {
  std::vector<std::string> events;
  std::vector<ErrorRecord> errors;
  std::string reply;
  ss::address client;
};

template <std::ptrdiff_t W>
OrderOutcome run_order(Fail fail) {
  OrderServer<W> server({"127.0.0.1", 0});
  server.fail = fail;
  ss::socket client = test::connect_to(server.server_address);
  client.sendall("hello\n");
  client.shutdown(SHUT_WR);
  server.handle_request();
  OrderOutcome o{server.events, server.errors, test::recv_all(client), client.getsockname()};
  // The server goes on serving after an error.
  server.fail = Fail::none;
  server.events.clear();
  ss::socket second = test::connect_to(server.server_address);
  second.sendall("again\n");
  second.shutdown(SHUT_WR);
  server.handle_request();
  CHECK(test::recv_all(second) == "reply\n");
  CHECK(server.events == std::vector<std::string>{"setup", "handle:again\n", "finish"});
  CHECK(server.errors.size() == o.errors.size());
  return o;
}

}  // namespace

TEST_CASE("setup then handle then finish run in that order", "[handlers][order]") {
  const OrderOutcome o = run_order<0>(Fail::none);
  CHECK(o.events == std::vector<std::string>{"setup", "handle:hello\n", "finish"});
  CHECK(o.errors.empty());
  CHECK(o.reply == "reply\n");
}

TEST_CASE("finish runs when handle throws and the exception reaches handle_error",
          "[handlers][order]") {
  const OrderOutcome o = run_order<0>(Fail::in_handle);
  CHECK(o.events == std::vector<std::string>{"setup", "handle:hello\n", "finish"});
  REQUIRE(o.errors.size() == 1);
  CHECK(o.errors[0].what == "handle failed");
  CHECK(o.errors[0].client == o.client);
  CHECK(o.reply == "reply\n");  // what handle wrote, then end of stream
}

TEST_CASE("finish flushes a buffered wfile even when handle throws", "[handlers][order]") {
  const OrderOutcome o = run_order<64>(Fail::in_handle);
  CHECK(o.events == std::vector<std::string>{"setup", "handle:hello\n", "finish"});
  REQUIRE(o.errors.size() == 1);
  CHECK(o.errors[0].what == "handle failed");
  CHECK(o.reply == "reply\n");
}

TEST_CASE("finish does not run when setup throws but the exception reaches handle_error",
          "[handlers][order]") {
  const OrderOutcome o = run_order<0>(Fail::in_setup);
  CHECK(o.events == std::vector<std::string>{"setup"});
  REQUIRE(o.errors.size() == 1);
  CHECK(o.errors[0].what == "setup failed");
  CHECK(o.errors[0].client == o.client);
  CHECK(o.reply == "");  // the connection was closed unanswered
}

namespace {

struct ThreadedOrderHandler;
struct ThreadedOrderServer : ss::ThreadingTCPServer<ThreadedOrderHandler, ThreadedOrderServer> {
  using base = ss::ThreadingTCPServer<ThreadedOrderHandler, ThreadedOrderServer>;
  using base::base;
  std::mutex mutex;
  std::vector<std::string> events;
  std::vector<ErrorRecord> errors;
  std::vector<std::thread::id> error_threads;
  void record(const std::string& event) {
    std::lock_guard<std::mutex> lock(mutex);
    events.push_back(event);
  }
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    ErrorRecord r = current_error(client);
    std::lock_guard<std::mutex> lock(mutex);
    errors.push_back(r);
    error_threads.push_back(std::this_thread::get_id());
  }
};

struct ThreadedOrderHandler : ss::StreamRequestHandler<ThreadedOrderServer> {
  void setup() {
    server.record("setup");
    StreamRequestHandler::setup();
  }
  void handle() {
    const std::string line = rfile.readline();
    server.record("handle:" + line);
    wfile.write("reply\n");
    if (line == "fail\n") throw std::runtime_error("handle failed in a thread");
  }
  void finish() {
    server.record("finish");
    StreamRequestHandler::finish();
  }
};

}  // namespace

TEST_CASE("a threading server runs finish and handle_error in the request's thread",
          "[handlers][order][threading]") {
  ThreadedOrderServer server({"127.0.0.1", 0});
  {
    test::Serving<ThreadedOrderServer> serving(server);
    CHECK(test::round_trip<test::TCP>(server.server_address, "fail\n", test::TempDir()) ==
          "reply\n");
  }
  server.server_close();  // waits for the request's thread
  std::lock_guard<std::mutex> lock(server.mutex);
  CHECK(server.events == std::vector<std::string>{"setup", "handle:fail\n", "finish"});
  REQUIRE(server.errors.size() == 1);
  CHECK(server.errors[0].what == "handle failed in a thread");
  CHECK(server.errors[0].client.host() == "127.0.0.1");
  REQUIRE(server.error_threads.size() == 1);
  CHECK(server.error_threads[0] != std::this_thread::get_id());
}

namespace {

struct StreamSteps : ss::StreamRequestHandler<> {
  std::string steps;
  void setup() {
    StreamRequestHandler::setup();
    steps = "setup";
  }
  void handle() { steps += ">handle:" + rfile.read(); }
  void finish() {
    wfile.write(steps + ">finish");
    StreamRequestHandler::finish();
  }
};
struct DatagramSteps : ss::DatagramRequestHandler<> {
  std::string steps;
  void setup() {
    DatagramRequestHandler::setup();
    steps = "setup";
  }
  void handle() { steps += ">handle:" + rfile.read(); }
  void finish() {
    wfile.write(steps + ">finish");
    DatagramRequestHandler::finish();
  }
};
template <class K>
using Steps = std::conditional_t<K::stream, StreamSteps, DatagramSteps>;

}  // namespace

TEMPLATE_TEST_CASE("every server kind runs setup then handle then finish on one handler object",
                   "[handlers][order]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Steps<K>> server(K::bind_address(dir));
  test::Serving<decltype(server)> serving(server);
  for (int i = 0; i < 2; ++i) {
    const std::string message = "m" + std::to_string(i);
    CHECK(test::round_trip<K>(server.server_address, message, dir) ==
          "setup>handle:" + message + ">finish");
  }
}

// --- request, client_address, server ------------------------------------------------------

namespace {

template <class K>
struct MembersHandler;

template <class K>
struct MembersServer : K::template server<MembersHandler<K>, MembersServer<K>> {
  using base = typename K::template server<MembersHandler<K>, MembersServer<K>>;
  using base::base;
  bool handled = false;
  ss::address client;
  ss::address peer;
  const void* server_seen = nullptr;
  int request_fd = -1;
  bool connection_is_request = false;
  bool has_timeout = true;
  int nodelay = -1;
  std::string line;
};

template <class K>
struct MembersHandler : ss::StreamRequestHandler<MembersServer<K>> {
  void handle() {
    MembersServer<K>& s = this->server;
    s.handled = true;
    s.client = this->client_address;
    s.peer = this->request.getpeername();
    s.server_seen = &this->server;
    s.request_fd = this->request.fileno();
    s.connection_is_request = &this->connection == &this->request;
    s.has_timeout = this->connection.gettimeout().has_value();
    if (K::family != AF_UNIX)
      s.nodelay = this->connection.template getsockopt<int>(IPPROTO_TCP, TCP_NODELAY);
    s.line = this->rfile.readline();
    this->wfile.write("ok\n");
  }
};

}  // namespace

TEST_CASE("a TCP handler sees request and client_address and server", "[handlers][members]") {
  MembersServer<test::TCP> server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address);
  client.sendall("hi\n");
  client.shutdown(SHUT_WR);
  server.handle_request();
  CHECK(test::recv_all(client) == "ok\n");
  REQUIRE(server.handled);
  const ss::address me = client.getsockname();
  CHECK(server.client.family() == AF_INET);
  CHECK(server.client.host() == "127.0.0.1");
  CHECK(server.client.port() == me.port());
  CHECK(server.client == me);
  CHECK(server.peer == me);  // request is the connection to this client
  CHECK(server.server_seen == static_cast<const void*>(&server));
  CHECK(server.request_fd >= 0);
  CHECK(server.request_fd != server.fileno());
  CHECK(server.connection_is_request);
  CHECK_FALSE(server.has_timeout);  // default: no timeout
  CHECK(server.nodelay == 0);       // default: Nagle stays on
  CHECK(server.line == "hi\n");
}

TEST_CASE("a Unix stream handler sees an unnamed client address", "[handlers][members]") {
  test::TempDir dir;
  MembersServer<test::UnixStream> server(dir.file("s.sock"));
  SECTION("unnamed client") {
    ss::socket client = test::connect_to(server.server_address);
    client.sendall("hi\n");
    client.shutdown(SHUT_WR);
    server.handle_request();
    CHECK(test::recv_all(client) == "ok\n");
    REQUIRE(server.handled);
    CHECK(server.client.family() == AF_UNIX);
    CHECK(server.client.path() == "");
  }
  SECTION("a client bound to a path") {
    ss::socket client(AF_UNIX, SOCK_STREAM);
    const ss::address mine(dir.file("client.sock"));
    REQUIRE(::bind(client.fileno(), mine.data(), mine.size()) == 0);
    REQUIRE(::connect(client.fileno(), server.server_address.data(),
                      server.server_address.size()) == 0);
    client.sendall("hi\n");
    client.shutdown(SHUT_WR);
    server.handle_request();
    CHECK(test::recv_all(client) == "ok\n");
    REQUIRE(server.handled);
    CHECK(server.client.path() == dir.file("client.sock"));
  }
  CHECK(server.server_seen == static_cast<const void*>(&server));
  CHECK(server.connection_is_request);
  CHECK(server.line == "hi\n");
}

namespace {

struct PlainHandler : ss::BaseRequestHandler<> {
  static inline const ss::any_server* seen = nullptr;
  static inline int seen_fileno = -2;
  void handle() {
    seen = &server;
    seen_fileno = server.fileno();
    request.sendall("plain " + client_address.host() + "\n");
  }
};

}  // namespace

TEST_CASE("BaseRequestHandler<> sees its server as any_server", "[handlers][members]") {
  ss::TCPServer<PlainHandler> server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address);
  server.handle_request();
  CHECK(test::recv_all(client) == "plain 127.0.0.1\n");
  CHECK(PlainHandler::seen == static_cast<const ss::any_server*>(&server));
  CHECK(PlainHandler::seen_fileno == server.fileno());
}

// --- StreamRequestHandler -----------------------------------------------------------------

namespace {

struct NumberLines : ss::StreamRequestHandler<> {
  void handle() {
    int n = 0;
    for (const std::string& line : rfile) wfile.write(std::to_string(++n) + ":" + line);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("StreamRequestHandler echoes multi-line input through rfile and wfile",
                   "[handlers][stream]", test::TCP, test::UnixStream, test::ThreadingTCP,
                   test::ThreadingUnixStream, test::ForkingTCP, test::ForkingUnixStream) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<NumberLines> server(K::bind_address(dir));
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<K>(server.server_address, "a\nbb\n\nccc", dir) == "1:a\n2:bb\n3:\n4:ccc");
  CHECK(test::round_trip<K>(server.server_address, std::string("\0\n\0", 3), dir) ==
        std::string("1:\0\n2:\0", 7));
  CHECK(test::round_trip<K>(server.server_address, "", dir) == "");
}

namespace {

template <std::ptrdiff_t W>
struct WbufHandler;

template <std::ptrdiff_t W>
struct WbufServer : ss::UnixStreamServer<WbufHandler<W>, WbufServer<W>> {
  using base = ss::UnixStreamServer<WbufHandler<W>, WbufServer<W>>;
  using base::base;
  int client_fd = -1;
  std::vector<int> queued_after_write;
  std::string read;
  bool finished = false;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

template <std::ptrdiff_t W>
struct WbufHandler : ss::StreamRequestHandler<WbufServer<W>> {
  using base = ss::StreamRequestHandler<WbufServer<W>>;
  static constexpr std::ptrdiff_t wbufsize = W;
  void handle() {
    WbufServer<W>& s = this->server;
    s.read = this->rfile.read();
    for (const char* part : {"one\n", "two\n"}) {
      this->wfile.write(part);
      s.queued_after_write.push_back(queued(s.client_fd));  // what the client has so far
    }
  }
  void finish() {
    this->server.finished = true;
    base::finish();
  }
};

template <std::ptrdiff_t W>
std::vector<int> queued_while_handling() {
  test::TempDir dir;
  WbufServer<W> server(dir.file("s.sock"));
  ss::socket client = test::connect_to(server.server_address);
  client.shutdown(SHUT_WR);
  server.client_fd = client.fileno();
  server.handle_request();
  CHECK(test::recv_all(client) == "one\ntwo\n");
  CHECK(server.errors.empty());
  return server.queued_after_write;
}

}  // namespace

TEST_CASE("wbufsize 0 sends each write and wbufsize > 0 buffers until the buffer fills or finish()",
          "[handlers][stream]") {
  CHECK(queued_while_handling<0>() == std::vector<int>{4, 8});
  CHECK(queued_while_handling<1024>() == std::vector<int>{0, 0});  // all sent by finish()
  CHECK(queued_while_handling<6>() == std::vector<int>{0, 4});     // "two\n" overflowed it
}

TEST_CASE("finish() ignores a failed flush to a client that has gone", "[handlers][stream]") {
  SECTION("buffered: the failure happens in finish() and is swallowed") {
    test::TempDir dir;
    WbufServer<1024> server(dir.file("s.sock"));
    {
      // The client leaves without reading its reply.
      ss::socket client = test::connect_to(server.server_address);
      client.sendall("bye");
    }
    server.handle_request();  // the process survives: no SIGPIPE
    CHECK(server.read == "bye");
    CHECK(server.finished);
    CHECK(server.errors.empty());
  }
  SECTION("unbuffered: the write in handle() fails, which handle_error reports") {
    test::TempDir dir;
    WbufServer<0> server(dir.file("s.sock"));
    {
      ss::socket client = test::connect_to(server.server_address);
      client.sendall("bye");
    }
    server.handle_request();
    CHECK(server.read == "bye");
    CHECK(server.finished);
    REQUIRE(server.errors.size() == 1);
    CHECK(server.errors[0].code == std::errc::broken_pipe);
  }
}

namespace {

template <std::ptrdiff_t R>
struct RbufHandler;

template <std::ptrdiff_t R>
struct RbufServer : ss::UnixStreamServer<RbufHandler<R>, RbufServer<R>> {
  using base = ss::UnixStreamServer<RbufHandler<R>, RbufServer<R>>;
  using base::base;
  std::string line, raw, rest;
};

template <std::ptrdiff_t R>
struct RbufHandler : ss::StreamRequestHandler<RbufServer<R>> {
  static constexpr std::ptrdiff_t rbufsize = R;
  void handle() {
    RbufServer<R>& s = this->server;
    s.line = this->rfile.readline();
    s.raw = test::recv_all(this->request);  // straight from the socket
    s.rest = this->rfile.read();
  }
};

template <std::ptrdiff_t R>
void check_rbufsize(const std::string& raw, const std::string& rest) {
  test::TempDir dir;
  RbufServer<R> server(dir.file("s.sock"));
  ss::socket client = test::connect_to(server.server_address);
  client.sendall("first\nsecond\n");  // queued before the handler reads
  client.shutdown(SHUT_WR);
  server.handle_request();
  CHECK(server.line == "first\n");
  CHECK(server.raw == raw);
  CHECK(server.rest == rest);
}

}  // namespace

TEST_CASE("rbufsize 0 leaves what readline() did not return in the socket", "[handlers][stream]") {
  check_rbufsize<0>("second\n", "");
  check_rbufsize<-1>("", "second\n");  // the default buffer took it all
}

namespace {

struct TimeoutHandler;
struct TimeoutServer : ss::TCPServer<TimeoutHandler, TimeoutServer> {
  using base = ss::TCPServer<TimeoutHandler, TimeoutServer>;
  using base::base;
  std::optional<double> seen_timeout;
  bool finished = false;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

struct TimeoutHandler : ss::StreamRequestHandler<TimeoutServer> {
  static constexpr auto timeout = std::chrono::milliseconds(200);
  void handle() {
    if (auto t = connection.gettimeout())
      server.seen_timeout = t->count();
    else  // the setting was ignored: fail the checks below instead of waiting forever
      connection.settimeout(std::chrono::seconds(2));
    (void)rfile.readline();  // the client sends nothing
  }
  void finish() {
    server.finished = true;
    StreamRequestHandler::finish();
  }
};

}  // namespace

TEST_CASE("timeout: a handler reading from a silent client gets errc::timed_out",
          "[handlers][stream]") {
  TimeoutServer server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address);  // stays open, silent
  server.handle_request();
  REQUIRE(server.seen_timeout.has_value());
  CHECK(std::fabs(*server.seen_timeout - 0.2) < 0.01);
  REQUIRE(server.errors.size() == 1);
  CHECK(server.errors[0].code == std::errc::timed_out);
  CHECK(server.finished);
  CHECK(test::recv_all(client) == "");  // the server closed the connection
}

namespace {

struct DribbleHandler;
struct DribbleServer : ss::UnixStreamServer<DribbleHandler, DribbleServer> {
  using base = ss::UnixStreamServer<DribbleHandler, DribbleServer>;
  using base::base;
  std::atomic<int> connection_fd{-1};
  std::atomic<bool> done{false};
  std::string got = "unset";
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

struct DribbleHandler : ss::StreamRequestHandler<DribbleServer> {
  static constexpr auto timeout = std::chrono::milliseconds(200);
  // No line cap: a fast machine dribbles 64 KiB within the 200 ms, and readline() would
  // return at the cap before the deadline (the case this test is not about).
  static constexpr std::size_t max_line_length = 0;
  void handle() {
    server.connection_fd = connection.fileno();
    // Start reading once the first byte is there (at most 5 s), so bytes keep flowing while
    // readline() waits for a newline that never comes.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (queued(connection.fileno()) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    server.got = rfile.readline();
  }
  void finish() {
    server.done = true;
    StreamRequestHandler::finish();
  }
};

}  // namespace

TEST_CASE("timeout bounds a whole rfile.readline against a client that sends a byte at a time",
          "[handlers][stream]") {
  test::TempDir dir;
  DribbleServer server(dir.file("s.sock"));
  std::atomic<int> sent{0};
  std::thread client_thread([&] {
    // Sends an 'x' (never a newline) whenever the handler has read the previous one, so no
    // single recv waits long; gives up after 5 s and ends the line with end of stream.
    std::error_code ec;
    ss::socket client = test::connect_to(server.server_address);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!server.done && std::chrono::steady_clock::now() < deadline) {
      const int fd = server.connection_fd;
      if (fd < 0 || queued(fd) != 0) {
        std::this_thread::yield();
        continue;
      }
      client.sendall("x", 0, ec);
      if (ec) break;
      ++sent;
    }
    client.shutdown(SHUT_WR, ec);
    char buf[64];
    while (client.recv(buf, sizeof buf, 0, ec) > 0) {
    }
  });
  server.handle_request();
  client_thread.join();
  CHECK(server.got == "unset");  // readline did not return ...
  REQUIRE(server.errors.size() == 1);
  CHECK(server.errors[0].code == std::errc::timed_out);  // ... it timed out
  CHECK(sent > 1);                                       // bytes kept coming while readline waited
}

namespace {

template <class K>
struct NagleHandler;

template <class K>
struct NagleServer : K::template server<NagleHandler<K>, NagleServer<K>> {
  using base = typename K::template server<NagleHandler<K>, NagleServer<K>>;
  using base::base;
  int nodelay = -1;
  bool handled = false;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

template <class K>
struct NagleHandler : ss::StreamRequestHandler<NagleServer<K>> {
  static constexpr bool disable_nagle_algorithm = true;
  void handle() {
    if (K::family != AF_UNIX)
      this->server.nodelay = this->connection.template getsockopt<int>(IPPROTO_TCP, TCP_NODELAY);
    this->server.handled = true;
    this->wfile.write("fast\n");
  }
};

}  // namespace

TEST_CASE("disable_nagle_algorithm sets TCP_NODELAY on the connection", "[handlers][stream]") {
  SECTION("TCP") {
    NagleServer<test::TCP> server({"127.0.0.1", 0});
    ss::socket client = test::connect_to(server.server_address);
    server.handle_request();
    CHECK(test::recv_all(client) == "fast\n");
    CHECK(server.handled);
    CHECK(server.nodelay != 0);
    CHECK(server.errors.empty());
  }
  SECTION("a Unix stream socket has no Nagle algorithm: the setting is ignored") {
    test::TempDir dir;
    NagleServer<test::UnixStream> server(dir.file("s.sock"));
    ss::socket client = test::connect_to(server.server_address);
    server.handle_request();
    CHECK(test::recv_all(client) == "fast\n");
    CHECK(server.handled);
    CHECK(server.errors.empty());
  }
}

namespace {

template <std::size_t M>
struct LineLengthHandler;

template <std::size_t M>
struct LineLengthServer : ss::TCPServer<LineLengthHandler<M>, LineLengthServer<M>> {
  using base = ss::TCPServer<LineLengthHandler<M>, LineLengthServer<M>>;
  using base::base;
  std::vector<std::size_t> lengths;
};

template <std::size_t M>
struct LineLengthHandler : ss::StreamRequestHandler<LineLengthServer<M>> {
  static constexpr std::size_t max_line_length = M;
  void handle() {
    for (int i = 0; i < 10; ++i) {
      const std::string line = this->rfile.readline();
      if (line.empty()) break;
      this->server.lengths.push_back(line.size());
    }
    (void)this->rfile.read();  // closing with unread bytes would reset the connection
  }
};

struct DefaultLineLength : ss::StreamRequestHandler<> {
  void handle() {}
};

template <std::size_t M>
std::vector<std::size_t> line_lengths() {
  LineLengthServer<M> server({"127.0.0.1", 0});
  std::string reply = "unset";
  std::thread client_thread([&] {
    try {
      ss::socket client = test::connect_to(server.server_address);
      client.sendall(std::string(70000, 'x') + "\nend\n");
      client.shutdown(SHUT_WR);
      reply = test::recv_all(client);
    } catch (const std::exception& e) {
      reply = std::string("client error: ") + e.what();
    }
  });
  server.handle_request();
  client_thread.join();
  CHECK(reply == "");
  return server.lengths;
}

}  // namespace

TEST_CASE("max_line_length bounds rfile.readline() at 65536 by default and 0 is unbounded",
          "[handlers][stream]") {
  STATIC_REQUIRE(DefaultLineLength::max_line_length == 65536);
  CHECK(line_lengths<65536>() == std::vector<std::size_t>{65536, 70000 - 65536 + 1, 4});
  CHECK(line_lengths<0>() == std::vector<std::size_t>{70001, 4});
  CHECK(line_lengths<1000>() ==
        std::vector<std::size_t>{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000});
}

// --- DatagramRequestHandler and BaseRequestHandler<datagram> --------------------------------

namespace {

struct DatagramReply : ss::DatagramRequestHandler<> {
  static inline std::string seen_packet;
  static inline int seen_socket = -2;
  void handle() {
    seen_packet = packet;
    seen_socket = socket.fileno();
    const std::string first = rfile.readline();
    const std::string rest = rfile.read();
    wfile.write("[" + first + "]");
    wfile.write("[" + rest + "]");
  }
};

struct DatagramSilent : ss::DatagramRequestHandler<> {
  void handle() { (void)rfile.read(); }
};

bool nothing_more(const ss::socket& s) {
  char c;
  return ::recv(s.fileno(), &c, 1, MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

}  // namespace

TEMPLATE_TEST_CASE("DatagramRequestHandler replies with what handle wrote as one datagram",
                   "[handlers][datagram]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<DatagramReply> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  client.settimeout(std::chrono::seconds(5));
  client.send(std::string("l1\nl2\0\nl3", 9));
  server.handle_request();
  CHECK(DatagramReply::seen_packet == std::string("l1\nl2\0\nl3", 9));
  CHECK(DatagramReply::seen_socket == server.fileno());
  CHECK(client.recv(65536) == std::string("[l1\n][l2\0\nl3]", 13));
  CHECK(nothing_more(client));
}

TEMPLATE_TEST_CASE("a DatagramRequestHandler that writes nothing sends an empty datagram",
                   "[handlers][datagram]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<DatagramSilent> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  client.settimeout(std::chrono::seconds(5));
  client.send("anything");
  server.handle_request();
  std::string reply = "unset";
  CHECK_NOTHROW(reply = client.recv(65536));  // a datagram arrives (no timeout) ...
  CHECK(reply == "");                         // ... and it is empty
  CHECK(nothing_more(client));
}

namespace {

struct RawDatagram : ss::BaseRequestHandler<ss::datagram> {
  static inline bool seen_truncated = true;
  static inline int seen_socket = -2;
  void handle() {
    auto& [data, sock, truncated] = request;
    seen_truncated = truncated;
    seen_socket = sock.fileno();
    sock.sendto("got:" + data, client_address);
    request.socket.sendto("again", client_address);
    data += "!";  // a reference into the request
    request.socket.sendto(request.data, client_address);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("BaseRequestHandler<datagram> gets data and socket and truncated",
                   "[handlers][datagram]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<RawDatagram> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  client.settimeout(std::chrono::seconds(5));
  client.send("hello");
  server.handle_request();
  CHECK(client.recv(65536) == "got:hello");
  CHECK(client.recv(65536) == "again");
  CHECK(client.recv(65536) == "hello!");
  CHECK_FALSE(RawDatagram::seen_truncated);
  CHECK(RawDatagram::seen_socket == server.fileno());
}

namespace {

template <class K>
struct TruncatingHandler;

template <class K>
struct SmallPacketServer : K::template server<TruncatingHandler<K>, SmallPacketServer<K>> {
  using base = typename K::template server<TruncatingHandler<K>, SmallPacketServer<K>>;
  using base::base;
  static constexpr std::size_t max_packet_size = 16;
  std::vector<std::string> data;
  std::vector<bool> truncated;
};

template <class K>
struct TruncatingHandler : ss::BaseRequestHandler<ss::datagram, SmallPacketServer<K>> {
  void handle() {
    this->server.data.push_back(this->request.data);
    this->server.truncated.push_back(this->request.truncated);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("a datagram longer than max_packet_size arrives cut and marked truncated",
                   "[handlers][datagram]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  SmallPacketServer<K> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  const std::string forty = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
  client.send(forty);
  server.handle_request();
  client.send(forty.substr(0, 16));
  server.handle_request();
  client.send("");
  server.handle_request();
  REQUIRE(server.data.size() == 3);
  CHECK(server.data[0].size() == 16);
  CHECK(server.data[0] == forty.substr(0, 16));
  CHECK(server.truncated[0]);
  CHECK(server.data[1] == forty.substr(0, 16));
  CHECK_FALSE(server.truncated[1]);
  CHECK(server.data[2] == "");
  CHECK_FALSE(server.truncated[2]);
}

namespace {

template <class K>
struct FailingDatagramHandler;

template <class K>
struct FailingDatagramServer
    : K::template server<FailingDatagramHandler<K>, FailingDatagramServer<K>> {
  using base = typename K::template server<FailingDatagramHandler<K>, FailingDatagramServer<K>>;
  using base::base;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::datagram& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};

template <class K>
struct FailingDatagramHandler : ss::DatagramRequestHandler<FailingDatagramServer<K>> {
  void handle() {
    this->wfile.write("partial:" + this->rfile.read());
    throw std::runtime_error("datagram handler failed");
  }
};

}  // namespace

TEMPLATE_TEST_CASE("a DatagramRequestHandler whose handle throws still sends its reply",
                   "[handlers][datagram][order]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  FailingDatagramServer<K> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  client.settimeout(std::chrono::seconds(5));
  client.send("ping");
  server.handle_request();
  CHECK(client.recv(65536) == "partial:ping");  // finish() ran, as Python's finally does
  REQUIRE(server.errors.size() == 1);
  CHECK(server.errors[0].what == "datagram handler failed");
  CHECK(server.errors[0].client == client.getsockname());
}

namespace {

struct ClosingWfileHandler : ss::StreamRequestHandler<> {
  static constexpr std::ptrdiff_t wbufsize = 1024;
  void handle() {
    wfile.write("reply\n");
    wfile.close();
  }
};

}  // namespace

// Python's wfile for wbufsize > 0 is a BufferedWriter: wfile.close() in handle() flushes, so
// the client gets the reply. Here writer::close() (io.hpp) drops what was buffered, and
// StreamRequestHandler::finish() then skips the flush because wfile is closed.
TEST_CASE("wfile.close() in handle() still delivers a buffered reply", "[handlers][stream]") {
  test::TempDir dir;
  ss::UnixStreamServer<ClosingWfileHandler> server(dir.file("s.sock"));
  ss::socket client = test::connect_to(server.server_address);
  client.shutdown(SHUT_WR);
  server.handle_request();
  CHECK(test::recv_all(client) == "reply\n");
}

// --- Handlers made outside a server ---------------------------------------------------------

namespace {

struct OutsideStream : ss::StreamRequestHandler<> {
  OutsideStream() = default;
  void handle() {}
};
struct OutsideBase : ss::BaseRequestHandler<> {
  OutsideBase() = default;
  void handle() {}
};
struct OutsideDatagram : ss::DatagramRequestHandler<> {
  OutsideDatagram() = default;
  void handle() {}
};

struct NestingHandler : ss::StreamRequestHandler<> {
  static inline std::string outcome;
  void handle() {
    try {
      OutsideStream nested;  // a handler is not made from inside another one either
      outcome = "constructed";
    } catch (const std::logic_error&) {
      outcome = "logic_error";
    }
    wfile.write("done\n");
  }
};

}  // namespace

TEST_CASE("a handler constructed outside a server throws std::logic_error", "[handlers][outside]") {
  CHECK_THROWS_AS([] { OutsideStream h; }(), std::logic_error);
  CHECK_THROWS_AS([] { OutsideBase h; }(), std::logic_error);
  CHECK_THROWS_AS([] { OutsideDatagram h; }(), std::logic_error);

  // Nor inside a running handler, nor after a server has run one.
  ss::TCPServer<NestingHandler> server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address);
  server.handle_request();
  CHECK(test::recv_all(client) == "done\n");
  CHECK(NestingHandler::outcome == "logic_error");
  CHECK_THROWS_AS([] { OutsideStream h; }(), std::logic_error);
}

// --- Run-time class-level settings, fileno() -----------------------------------------------

namespace {

struct RuntimeTimeoutServer;
// `timeout` as a run-time value (set from a command-line flag, say), as Python assigns
// `MyHandler.timeout`: a `static inline` variable instead of `static constexpr`.
struct RuntimeTimeoutHandler : ss::StreamRequestHandler<RuntimeTimeoutServer> {
  static inline ss::timeout_type timeout;
  void handle();
};
struct RuntimeTimeoutServer : ss::TCPServer<RuntimeTimeoutHandler, RuntimeTimeoutServer> {
  using base = ss::TCPServer<RuntimeTimeoutHandler, RuntimeTimeoutServer>;
  using base::base;
  std::optional<double> seen_timeout;
  std::vector<ErrorRecord> errors;
  void handle_error(ss::socket& /*request*/, const ss::address& client) {
    errors.push_back(current_error(client));
  }
};
void RuntimeTimeoutHandler::handle() {
  if (auto t = connection.gettimeout())
    server.seen_timeout = t->count();
  else  // the setting was ignored: fail the checks below instead of waiting forever
    connection.settimeout(std::chrono::seconds(2));
  (void)rfile.readline();  // the client sends nothing
}

}  // namespace

TEST_CASE("timeout may be a run-time static inline value, read at each request",
          "[handlers][stream][runtime]") {
  STATIC_REQUIRE(TimeoutHandler::timeout == std::chrono::milliseconds(200));  // the constexpr form
  RuntimeTimeoutServer server({"127.0.0.1", 0});
  for (const double seconds : {0.15, 0.25}) {
    RuntimeTimeoutHandler::timeout = std::chrono::duration<double>(seconds);
    server.seen_timeout.reset();
    server.errors.clear();
    ss::socket client = test::connect_to(server.server_address);  // stays open, silent
    server.handle_request();
    REQUIRE(server.seen_timeout.has_value());
    CHECK(std::fabs(*server.seen_timeout - seconds) < 0.01);
    REQUIRE(server.errors.size() == 1);
    CHECK(server.errors[0].code == std::errc::timed_out);
    CHECK(test::recv_all(client) == "");
  }
  CHECK(server.stats().timeouts == 2);
  RuntimeTimeoutHandler::timeout.reset();
}

namespace {

template <class K>
struct RuntimePacketHandler;

template <class K>
struct RuntimePacketServer : K::template server<RuntimePacketHandler<K>, RuntimePacketServer<K>> {
  using base = typename K::template server<RuntimePacketHandler<K>, RuntimePacketServer<K>>;
  using base::base;
  static inline std::size_t max_packet_size = 16;  // a run-time value
  std::vector<std::string> data;
  std::vector<bool> truncated;
};

template <class K>
struct RuntimePacketHandler : ss::BaseRequestHandler<ss::datagram, RuntimePacketServer<K>> {
  void handle() {
    this->server.data.push_back(this->request.data);
    this->server.truncated.push_back(this->request.truncated);
  }
};

}  // namespace

TEMPLATE_TEST_CASE("max_packet_size may be a run-time static inline value, and may grow",
                   "[handlers][datagram][runtime]", test::UDP, test::UnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  RuntimePacketServer<K>::max_packet_size = 16;
  RuntimePacketServer<K> server(K::bind_address(dir));
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
  const std::string big(5000, 'p');
  client.send(big);
  server.handle_request();  // cut at 16
  RuntimePacketServer<K>::max_packet_size = 6000;
  client.send(big);
  server.handle_request();  // whole: the receive buffer grew with the setting
  RuntimePacketServer<K>::max_packet_size = 16;
  REQUIRE(server.data.size() == 2);
  CHECK(server.data[0] == big.substr(0, 16));
  CHECK(server.truncated[0]);
  CHECK(server.data[1] == big);
  CHECK_FALSE(server.truncated[1]);
}

namespace {

struct FilenoServer;
struct FilenoHandler : ss::StreamRequestHandler<FilenoServer> {
  void handle();
};
struct FilenoServer : ss::TCPServer<FilenoHandler, FilenoServer> {
  using base = ss::TCPServer<FilenoHandler, FilenoServer>;
  using base::base;
  int connection_fd = -2, rfile_fd = -3, wfile_fd = -4;
};
void FilenoHandler::handle() {
  server.connection_fd = connection.fileno();
  server.rfile_fd = rfile.fileno();
  server.wfile_fd = wfile.fileno();
  wfile.write(rfile.readline());
}

struct DatagramFilenoHandler : ss::DatagramRequestHandler<> {
  static inline std::string rfile_error, wfile_error;
  void handle() {
    try {
      (void)rfile.fileno();
    } catch (const std::logic_error& e) {
      rfile_error = e.what();
    }
    try {
      (void)wfile.fileno();
    } catch (const std::logic_error& e) {
      wfile_error = e.what();
    }
    wfile.write("done");
  }
};

}  // namespace

TEST_CASE("rfile.fileno() and wfile.fileno() are the connection's descriptor",
          "[handlers][stream][fileno]") {
  FilenoServer server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address);
  client.sendall("line\n");
  client.shutdown(SHUT_WR);
  server.handle_request();
  CHECK(test::recv_all(client) == "line\n");
  CHECK(server.connection_fd >= 0);
  CHECK(server.rfile_fd == server.connection_fd);
  CHECK(server.wfile_fd == server.connection_fd);
  // Closed files, and files over memory, have none (Python: ValueError,
  // io.UnsupportedOperation).
  CHECK_THROWS_AS(ss::reader().fileno(), std::logic_error);
  CHECK_THROWS_AS(ss::reader("bytes").fileno(), std::logic_error);
  CHECK_THROWS_AS(ss::writer().fileno(), std::logic_error);
  ss::writer closed(client, 0);
  closed.close();
  CHECK_THROWS_AS(closed.fileno(), std::logic_error);
}

TEST_CASE("a datagram handler's in-memory rfile and wfile have no fileno()",
          "[handlers][datagram][fileno]") {
  ss::UDPServer<DatagramFilenoHandler> server({"127.0.0.1", 0});
  ss::socket client = test::connect_to(server.server_address, SOCK_DGRAM);
  client.send("x");
  server.handle_request();
  CHECK(client.recv(100) == "done");
  CHECK(DatagramFilenoHandler::rfile_error.find("in memory") != std::string::npos);
  CHECK(DatagramFilenoHandler::wfile_error.find("in memory") != std::string::npos);
}
