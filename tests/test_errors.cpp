// SPDX-License-Identifier: MIT
// Errors: what a server that cannot bind throws (and that it leaks nothing), servers used
// after server_close(), clients that vanish mid-reply, get_request() failures and a
// handle_error() that throws (CPython's test_socketserver: test_tcpserver_bind_leak,
// ErrorHandlerTest; the reference's error-flow summary, section 1.10).
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/stderr_capture.hpp"

namespace {

// The C library's text for EADDRINUSE ("Address already in use" on glibc, "Address in use" on
// musl), as std::system_error shows it.
const std::string in_use = std::error_code(EADDRINUSE, std::system_category()).message();

namespace ss = socketserver;
using namespace std::chrono_literals;

using test::contains;
using test::StderrCapture;

struct StreamEcho : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : ss::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
template <class K>
using Echo = std::conditional_t<K::stream, StreamEcho, DatagramEcho>;

struct V6Server : ss::TCPServer<StreamEcho, V6Server> {
  using base = ss::TCPServer<StreamEcho, V6Server>;
  using base::base;
  static constexpr int address_family = AF_INET6;
};

/// Runs `make` (which should throw std::system_error) and returns the error.
template <class Make>
std::system_error construction_error(Make make) {
  try {
    make();
  } catch (const std::system_error& e) {
    return e;
  }
  FAIL("no std::system_error was thrown");
  throw std::logic_error("unreachable");
}

// --- A client that resets its connection while the handler is still writing ----------

struct ResetServer;
struct ResetHandler : ss::StreamRequestHandler<ResetServer> {
  void handle();
};
struct ResetServer : ss::TCPServer<ResetHandler, ResetServer> {
  using base = ss::TCPServer<ResetHandler, ResetServer>;
  using base::base;
  std::mutex m;
  std::condition_variable cv;
  bool handler_read = false;  // the handler has read the client's line
  bool client_gone = false;   // the client has reset the connection
  int errors = 0;
  std::error_code error;
  std::size_t bytes_written = 0;

  void handle_error(ss::socket& /*request*/, const ss::address& /*client*/) {
    ++errors;
    try {
      throw;
    } catch (const std::system_error& e) {
      error = e.code();
    } catch (...) {
    }
  }
};
void ResetHandler::handle() {
  const std::string line = rfile.readline();
  if (line != "reset\n") {
    wfile.write("fine\n");
    return;
  }
  {
    std::unique_lock<std::mutex> lock(server.m);
    server.handler_read = true;
    server.cv.notify_all();
    server.cv.wait_for(lock, 10s, [&] { return server.client_gone; });
  }
  // The peer is gone: a write fails (ECONNRESET, then EPIPE) rather than raising SIGPIPE.
  // Bounded: 16 MiB at most, far more than the socket buffers hold.
  const std::string chunk(16384, 'x');
  for (int i = 0; i < 1024; ++i) {
    wfile.write(chunk);
    server.bytes_written += chunk.size();
  }
}

// --- get_request() failures -----------------------------------------------------------------

struct FlakyServer : ss::TCPServer<StreamEcho, FlakyServer> {
  using base = ss::TCPServer<StreamEcho, FlakyServer>;
  using base::base;
  int fail_with = 0;  // the errno the next get_request() fails with
  int get_requests = 0;
  std::pair<ss::socket, ss::address> get_request() {
    ++get_requests;
    if (const int err = std::exchange(fail_with, 0))
      throw std::system_error(err, std::system_category(), "accept");
    return base::get_request();
  }
};
struct ReportingFlakyServer : ss::TCPServer<StreamEcho, ReportingFlakyServer> {
  using base = ss::TCPServer<StreamEcho, ReportingFlakyServer>;
  using base::base;
  int fail_with = 0;
  int reported = 0;
  std::error_code last;
  std::pair<ss::socket, ss::address> get_request() {
    if (const int err = std::exchange(fail_with, 0))
      throw std::system_error(err, std::system_category(), "accept");
    return base::get_request();
  }
  void handle_get_request_error(const std::system_error& e) {
    ++reported;
    last = e.code();
  }
};

TEST_CASE("a get_request failure no retry can mend is raised, not spun on",
          "[errors][get_request]") {
  test::TempDir dir;
  ReportingFlakyServer server({"127.0.0.1", 0});
  std::string reply;
  std::thread client(
      [&] { reply = test::round_trip<test::TCP>(server.server_address, "late", dir); });
  server.fail_with = EINVAL;  // what accept() says on a socket that is not listening
  try {
    server.handle_request();
    FAIL("handle_request() returned after EINVAL from get_request()");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
    CHECK(contains(e.what(), server.server_address.to_string()));
  }
  CHECK(server.reported == 1);  // reported first, then raised
  server.handle_request();      // the server itself is fine: the next one is served
  client.join();
  CHECK(reply == "late");
}

// --- handle_error() that throws -------------------------------------------------------------

struct StrictServer;
struct StrictHandler : ss::StreamRequestHandler<StrictServer> {
  void handle() {
    const std::string message = rfile.read();
    if (message == "fail") throw std::runtime_error("handler failed");
    wfile.write(message);
  }
};
struct StrictServer : ss::TCPServer<StrictHandler, StrictServer> {
  using base = ss::TCPServer<StrictHandler, StrictServer>;
  using base::base;
  void handle_error(ss::socket& /*request*/, const ss::address& /*client*/) {
    throw std::logic_error("handle_error refuses");
  }
};

// server_activate() fails after server_bind() succeeded.
template <class K>
struct FailingActivateServer : K::template server<Echo<K>, FailingActivateServer<K>> {
  using base = typename K::template server<Echo<K>, FailingActivateServer<K>>;
  using base::base;
  void server_activate() { throw std::runtime_error("activate failed"); }
};

}  // namespace

// --- Binding -----------------------------------------------------------------------------------

TEST_CASE("binding a port in use throws address_in_use and leaks nothing", "[errors][bind]") {
  ss::TCPServer<StreamEcho> first({"127.0.0.1", 0});
  const int port = first.server_address.port();
  const int baseline = test::open_fd_count();
  const std::system_error e = construction_error([&] {
    ss::TCPServer<StreamEcho> second({"127.0.0.1", port});
  });
  CHECK(e.code() == std::errc::address_in_use);
  CHECK(std::string(e.what()) == "bind 127.0.0.1:" + std::to_string(port) + ": " + in_use);
  CHECK(test::open_fd_count() == baseline);
  // bpo-22435: the failed server closes its socket, however often it happens.
  for (int i = 0; i < 200; ++i) {
    try {
      ss::TCPServer<StreamEcho> again({"127.0.0.1", port});
    } catch (const std::system_error&) {
    }
  }
  CHECK(test::open_fd_count() == baseline);
  // The first server is untouched.
  test::TempDir dir;
  test::Serving<decltype(first)> serving(first);
  CHECK(test::round_trip<test::TCP>(first.server_address, "first", dir) == "first");
}

TEST_CASE("binding a UDP port in use throws address_in_use", "[errors][bind]") {
  ss::UDPServer<DatagramEcho> first({"127.0.0.1", 0});
  const int port = first.server_address.port();
  const int baseline = test::open_fd_count();
  const std::system_error e = construction_error([&] {
    ss::UDPServer<DatagramEcho> second({"127.0.0.1", port});
  });
  CHECK(e.code() == std::errc::address_in_use);
  CHECK(std::string(e.what()) == "bind 127.0.0.1:" + std::to_string(port) + ": " + in_use);
  CHECK(test::open_fd_count() == baseline);
}

TEST_CASE("an unknown host name throws a getaddrinfo error naming it", "[errors][resolve]") {
  const int baseline = test::open_fd_count();
  const std::system_error e = construction_error([&] {
    ss::TCPServer<StreamEcho> server({"no-such-host.invalid", 0});
  });
  INFO("what(): " << e.what());
  CHECK(e.code().category() == ss::gai_category());
  CHECK(std::string(e.code().category().name()) == "getaddrinfo");
  CHECK(contains(e.what(), "no-such-host.invalid"));
  CHECK(contains(e.what(), e.code().message()));
  CHECK(test::open_fd_count() == baseline);
}

TEST_CASE("a port out of range throws std::out_of_range", "[errors][address]") {
  CHECK_THROWS_AS(ss::address("127.0.0.1", -1), std::out_of_range);
  CHECK_THROWS_AS(ss::address("127.0.0.1", 65536), std::out_of_range);
  CHECK_THROWS_AS(ss::address("localhost", 70000), std::out_of_range);
  CHECK_NOTHROW(ss::address("127.0.0.1", 65535));
  CHECK(ss::address("127.0.0.1", 65535).port() == 65535);
  const int baseline = test::open_fd_count();
  // CPython's test_tcpserver_bind_leak: 1024 failed constructions leak nothing.
  int thrown = 0;
  for (int i = 0; i < 1024; ++i) {
    try {
      ss::TCPServer<StreamEcho> server({"127.0.0.1", -1});
    } catch (const std::out_of_range&) {
      ++thrown;
    }
  }
  CHECK(thrown == 1024);
  CHECK_THROWS_AS((ss::UDPServer<DatagramEcho>(ss::address("127.0.0.1", 65536))),
                  std::out_of_range);
  CHECK(test::open_fd_count() == baseline);
}

TEST_CASE("a Unix path too long for sockaddr_un is an error, not truncated", "[errors][unix]") {
  const std::size_t limit = sizeof(sockaddr_un{}.sun_path) - 1;  // 107 on Linux
  const std::string too_long = "/tmp/" + std::string(195, 'x');  // 200 characters
  const int baseline = test::open_fd_count();
  for (const std::string& path : {too_long, std::string("/tmp/") + std::string(limit - 4, 'y')}) {
    INFO("path of " << path.size() << " characters");
    const std::system_error e =
        construction_error([&] { ss::UnixStreamServer<StreamEcho> server(path); });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::filename_too_long);
    CHECK(contains(e.what(), std::to_string(limit)));
    CHECK(contains(e.what(), std::to_string(path.size())));
    CHECK_THROWS_AS(ss::UnixDatagramServer<DatagramEcho>(path), std::system_error);
    CHECK_FALSE(test::file_exists(path));
  }
  CHECK(test::open_fd_count() == baseline);

  // The longest path that fits works.
  test::TempDir dir;
  const std::string longest = dir.file(std::string(limit - dir.path().size() - 1, 'z'));
  REQUIRE(longest.size() == limit);
  ss::UnixStreamServer<StreamEcho> server(longest);
  CHECK(server.server_address.path() == longest);
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "fits", dir) == "fits");
}

// A too-long abstract name's message stops at its leading NUL when read as what() (a C
// string), so it does not show the name; the address's own spelling ("@name") would.
TEST_CASE("the error for a too-long abstract name shows the name", "[errors][unix][abstract]") {
  const std::string name = std::string(1, '\0') + std::string(200, 'n');
  const std::system_error e =
      construction_error([&] { ss::UnixStreamServer<StreamEcho> server(name); });
  CHECK(e.code() == std::errc::filename_too_long);
  const std::string what = e.what();  // what a catch block prints
  INFO("what(): " << what);
  CHECK(contains(what, "@nnnn"));
}

TEST_CASE("an address of another family throws address_family_not_supported", "[errors][family]") {
  const int baseline = test::open_fd_count();
  SECTION("IPv6 address, AF_INET server") {
    const std::system_error e = construction_error([&] {
      ss::TCPServer<StreamEcho> server({"::1", 0});
    });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::address_family_not_supported);
    CHECK(contains(e.what(), "[::1]:0"));
    CHECK(contains(e.what(), "AF_INET"));
    CHECK_FALSE(contains(e.what(), "AF_INET6"));
  }
  SECTION("IPv4 address, AF_INET6 server") {
    const std::system_error e = construction_error([&] { V6Server server({"127.0.0.1", 0}); });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::address_family_not_supported);
    CHECK(contains(e.what(), "127.0.0.1:0"));
    CHECK(contains(e.what(), "AF_INET6"));
  }
  SECTION("IPv4 address, Unix server") {
    const std::system_error e = construction_error(
        [&] { ss::UnixStreamServer<StreamEcho> server(ss::address("127.0.0.1", 0)); });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::address_family_not_supported);
    CHECK(contains(e.what(), "AF_UNIX"));
  }
  SECTION("Unix path, AF_INET datagram server") {
    test::TempDir dir;
    const std::string path = dir.file("inet.sock");
    const std::system_error e =
        construction_error([&] { ss::UDPServer<DatagramEcho> server(path); });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::address_family_not_supported);
    CHECK(contains(e.what(), path));
    CHECK(contains(e.what(), "AF_INET"));
    CHECK_FALSE(test::file_exists(path));
  }
  CHECK(test::open_fd_count() == baseline);
}

TEMPLATE_TEST_CASE("a failing server_activate closes the socket and removes the file",
                   "[errors][activate]", SOCKETSERVER_ALL_KINDS) {
  // CPython: the constructor's bare except closes the server and re-raises whatever it got.
  using K = TestType;
  test::TempDir dir;
  const ss::address where = K::bind_address(dir);
  const int baseline = test::open_fd_count();
  try {
    FailingActivateServer<K> server(where);
    FAIL("the constructor did not throw");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()) == "activate failed");
  }
  CHECK(test::open_fd_count() == baseline);
  if constexpr (K::family == AF_UNIX) CHECK_FALSE(test::file_exists(where.path()));
  // The address is free again.
  typename K::template server<Echo<K>> server(where);
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<K>(server.server_address, "free", dir) == "free");
}

TEST_CASE("a Unix path in a missing directory names the path", "[errors][unix]") {
  test::TempDir dir;
  const std::string path = dir.file("missing/server.sock");
  const int baseline = test::open_fd_count();
  for (int datagram = 0; datagram < 2; ++datagram) {
    const std::system_error e = construction_error([&] {
      if (datagram)
        ss::UnixDatagramServer<DatagramEcho> server(path);
      else
        ss::UnixStreamServer<StreamEcho> server(path);
    });
    INFO("what(): " << e.what());
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK(contains(e.what(), path));
    CHECK(contains(e.what(), "No such file or directory"));
    CHECK(std::string(e.what()) == "bind " + path + ": No such file or directory");
  }
  CHECK(test::open_fd_count() == baseline);
}

// --- After server_close() ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("serve_forever and handle_request after server_close throw EBADF",
                   "[errors][closed]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  test::TempDir dir;
  typename K::template server<Echo<K>> server(K::bind_address(dir));
  server.server_close();
  for (int call = 0; call < 2; ++call) {
    try {
      if (call == 0)
        server.serve_forever();
      else
        server.handle_request();
      FAIL("no exception after server_close()");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::bad_file_descriptor);
    }
    CHECK_FALSE(server.is_serving());
  }
  // A failed serve_forever() leaves no loop marked as running: another call fails the same
  // way, not with "already running" (std::logic_error).
  CHECK_THROWS_AS(server.serve_forever(), std::system_error);
}

// --- A client that vanishes -------------------------------------------------------------------

TEST_CASE("writing to a client that reset the connection is an error, not SIGPIPE",
          "[errors][sigpipe]") {
  // The test proves something only if SIGPIPE would kill the process.
  struct sigaction current {};
  REQUIRE(::sigaction(SIGPIPE, nullptr, &current) == 0);
  REQUIRE(current.sa_handler == SIG_DFL);

  test::TempDir dir;
  ResetServer server({"127.0.0.1", 0});
  {
    std::thread serving([&] { server.handle_request(); });
    ss::socket c = test::connect_to(server.server_address);
    c.sendall("reset\n");
    {
      std::unique_lock<std::mutex> lock(server.m);
      REQUIRE(server.cv.wait_for(lock, 10s, [&] { return server.handler_read; }));
    }
    const linger abort_on_close{1, 0};  // close() sends RST
    c.setsockopt(SOL_SOCKET, SO_LINGER, abort_on_close);
    c.close();
    {
      std::lock_guard<std::mutex> lock(server.m);
      server.client_gone = true;
    }
    server.cv.notify_all();
    serving.join();
  }
  INFO("bytes written before the error: " << server.bytes_written);
  CHECK(server.errors == 1);
  const bool reset_or_pipe =
      server.error == std::errc::connection_reset || server.error == std::errc::broken_pipe;
  INFO("error: " << server.error.message());
  CHECK(reset_or_pipe);
  // Still alive, and still serving.
  std::string reply;
  std::thread serving([&] { server.handle_request(); });
  reply = test::round_trip<test::TCP>(server.server_address, "next\n", dir);
  serving.join();
  CHECK(reply == "fine\n");
  CHECK(server.errors == 1);
}

// --- get_request() failures ---------------------------------------------------------------------

TEST_CASE("get_request failures: transient ones are dropped, others reported",
          "[errors][get_request]") {
  test::TempDir dir;
  SECTION("an overridden handle_get_request_error") {
    ReportingFlakyServer server({"127.0.0.1", 0});
    std::string reply;
    std::thread client(
        [&] { reply = test::round_trip<test::TCP>(server.server_address, "late", dir); });
    // The client's connection waits in the backlog while get_request() fails.
    server.fail_with = ECONNABORTED;  // the client left before accept: CPython ignores it
    server.handle_request();
    CHECK(server.reported == 0);
    server.fail_with = EMFILE;  // out of descriptors: reported
    server.handle_request();
    CHECK(server.reported == 1);
    CHECK(server.last == std::errc::too_many_files_open);
    server.handle_request();  // and now the connection is served
    client.join();
    CHECK(reply == "late");
    CHECK(server.reported == 1);
  }
  SECTION("the default handle_get_request_error prints to stderr") {
    FlakyServer server({"127.0.0.1", 0});
    std::string reply;
    std::thread client(
        [&] { reply = test::round_trip<test::TCP>(server.server_address, "late", dir); });
    server.fail_with = EIO;
    StderrCapture capture;
    server.handle_request();
    const std::string err = capture.finish();
    INFO("stderr: " << err);
    CHECK(contains(err, server.server_address.to_string()));
    CHECK(contains(err, std::error_code(EIO, std::system_category()).message()));
    server.handle_request();
    client.join();
    CHECK(reply == "late");
    CHECK(server.get_requests == 2);
  }
}

// --- handle_error() that throws -----------------------------------------------------------------

TEST_CASE("an exception from handle_error propagates out of handle_request",
          "[errors][handle_error]") {
  // CPython: "handle_error itself raises: propagates (in sync mode out of serve_forever)".
  test::TempDir dir;
  StrictServer server({"127.0.0.1", 0});
  std::string failed_reply;
  std::thread client(
      [&] { failed_reply = test::round_trip<test::TCP>(server.server_address, "fail", dir); });
  CHECK_THROWS_AS(server.handle_request(), std::logic_error);
  client.join();  // the request was closed all the same: the client read end of stream
  CHECK(failed_reply.empty());
  // The server is still usable.
  std::string reply;
  std::thread second(
      [&] { reply = test::round_trip<test::TCP>(server.server_address, "works", dir); });
  server.handle_request();
  second.join();
  CHECK(reply == "works");
}

TEST_CASE("an exception from handle_error ends serve_forever, which can be restarted",
          "[errors][handle_error]") {
  test::TempDir dir;
  StrictServer server({"127.0.0.1", 0});
  std::exception_ptr error;
  std::thread loop([&] {
    try {
      server.serve_forever(std::chrono::hours(1));
    } catch (...) {
      error = std::current_exception();
    }
  });
  CHECK(test::round_trip<test::TCP>(server.server_address, "fail", dir).empty());
  loop.join();  // no shutdown(): the exception ended the loop
  REQUIRE(error);
  CHECK_THROWS_AS(std::rethrow_exception(error), std::logic_error);
  CHECK_FALSE(server.is_serving());
  // (A shutdown() now would return at once but make the next serve_forever() return at
  // once too, as in CPython; so none is called.)
  test::Serving<StrictServer> serving(server, std::chrono::hours(1));
  CHECK(test::round_trip<test::TCP>(server.server_address, "again", dir) == "again");
}

TEST_CASE("serve_forever reports an EMFILE from get_request and serves on",
          "[errors][get_request]") {
  test::TempDir dir;
  ReportingFlakyServer server({"127.0.0.1", 0});
  server.fail_with = EMFILE;  // the first accept fails; the connection stays queued
  {
    test::Serving<ReportingFlakyServer> serving(server, std::chrono::hours(1));
    CHECK(test::round_trip<test::TCP>(server.server_address, "patient", dir) == "patient");
    serving.stop();
    CHECK_FALSE(serving.error());
  }
  CHECK(server.reported == 1);
  CHECK(server.last == std::errc::too_many_files_open);
}

// --- Peer disconnects and timeouts are not handler failures ----------------------------------

namespace {

using PoolTCP =
    test::Kind<ss::thread_pool_tcp_server_t, true, AF_INET, test::Concurrency::threading>;
using PoolUnixDatagram = test::Kind<ss::thread_pool_unix_datagram_server_t, false, AF_UNIX,
                                    test::Concurrency::threading>;

// Closes, in a forked child, what it inherited from the test process but `keep` and stdio:
// the test's client sockets among them (while a child holds a copy, a client's reset never
// reaches the handler).
void close_inherited_descriptors(int keep) {
  std::vector<int> open;
  if (DIR* d = test::open_fd_directory()) {
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
      const int fd = std::atoi(e->d_name);
      if (e->d_name[0] != '.' && fd > 2 && fd != own && fd != keep) open.push_back(fd);
    }
    ::closedir(d);
  }
  for (int fd : open) ::close(fd);
}

// "reset\n": answers "ack\n" and reads on, which the client's reset ends with ECONNRESET.
// "fail\n": throws. Anything else: echoes the line.
struct PeerHandler : ss::StreamRequestHandler<> {
  void handle() {
    const std::string line = rfile.readline();
    if (line == "fail\n") throw std::runtime_error("handler failed on purpose");
    if (line != "reset\n") {
      wfile.write(line);
      return;
    }
    wfile.write("ack\n");
    wfile.write(rfile.readline());
  }
};

// Echoes a line, with a handler timeout that an idle client runs into.
struct IdleHandler : ss::StreamRequestHandler<> {
  static constexpr auto timeout = std::chrono::milliseconds(200);
  void handle() { wfile.write(rfile.readline()); }
};

// A server whose handle_error() either records what it is called with (`record`) or leaves
// it to the library's default.
template <class K, class Handler>
struct PeerServer : K::template server<Handler, PeerServer<K, Handler>> {
  using base = typename K::template server<Handler, PeerServer<K, Handler>>;
  using request_type = typename K::request_type;
  using base::base;

  bool record = false;
  std::mutex m;
  std::vector<std::error_code> seen;  // what handle_error() saw; {} for a non-system error

  void finish_request(request_type& request, const ss::address& client) {
    if constexpr (K::concurrency == test::Concurrency::forking) {
      if constexpr (K::stream)
        close_inherited_descriptors(request.fileno());
      else
        close_inherited_descriptors(request.socket.fileno());
    }
    base::finish_request(request, client);
  }
  void handle_error(request_type& request, const ss::address& client) {
    if (!record) return base::handle_error(request, client);
    std::error_code code;
    try {
      throw;
    } catch (const std::system_error& e) {
      code = e.code();
    } catch (...) {
    }
    std::lock_guard<std::mutex> lock(m);
    seen.push_back(code);
  }
};

// Sends a line and reads the reply to end of stream.
std::string ask(const ss::address& to, const std::string& line) {
  ss::socket c = test::connect_to(to);
  c.sendall(line);
  c.shutdown(SHUT_WR);
  return test::recv_all(c);
}

// Starts a request, waits for the handler's "ack", then resets the connection: a TCP
// client with SO_LINGER {1, 0}; for both families, closing with the ack unread resets.
void reset_mid_request(const ss::address& to) {
  ss::socket c = test::connect_to(to);
  c.sendall("reset\n");
  pollfd ack{c.fileno(), POLLIN, 0};
  REQUIRE(::poll(&ack, 1, 20000) == 1);
  if (to.family() != AF_UNIX) c.setsockopt(SOL_SOCKET, SO_LINGER, linger{1, 0});
  c.close();
}

std::size_t count_of(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1))
    ++n;
  return n;
}

}  // namespace

#define PEER_STREAM_KINDS                                                                       \
  test::TCP, test::UnixStream, test::ThreadingTCP, test::ThreadingUnixStream, test::ForkingTCP, \
      test::ForkingUnixStream, PoolTCP, test::FiberTCP, test::FiberUnixStream

TEMPLATE_TEST_CASE(
    "a client reset mid-request counts as a disconnect, not an error, and is not printed",
    "[errors][disconnect]", PEER_STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  PeerServer<K, PeerHandler> server(K::bind_address(dir));
  StderrCapture capture;
  {
    test::Serving<PeerServer<K, PeerHandler>> serving(server);
    reset_mid_request(server.server_address);
    CHECK(ask(server.server_address, "fail\n").empty());  // a real failure, for comparison
    CHECK(ask(server.server_address, "hello\n") == "hello\n");
  }
  server.server_close();  // waits for threads and children: everything is counted now
  const std::string err = capture.finish();
  INFO("stderr: " << err);
  const ss::server_stats s = server.stats();
  CHECK(s.completed == 3);
  CHECK(s.disconnects == 1);
  CHECK(s.errors == 1);
  CHECK(s.timeouts == 0);
  // The default handle_error() prints the failure, and only the failure.
  CHECK(count_of(err, "Exception occurred during processing") == 1);
  CHECK(contains(err, "handler failed on purpose"));
  CHECK_FALSE(contains(err, std::make_error_code(std::errc::connection_reset).message()));
}

TEMPLATE_TEST_CASE("an idle client cut off by the handler timeout counts as a timeout, quietly",
                   "[errors][timeout]", PEER_STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  PeerServer<K, IdleHandler> server(K::bind_address(dir));
  StderrCapture capture;
  {
    test::Serving<PeerServer<K, IdleHandler>> serving(server);
    ss::socket idle = test::connect_to(server.server_address);
    CHECK(test::recv_all(idle).empty());  // sends nothing: the server hangs up after 200 ms
    CHECK(ask(server.server_address, "hello\n") == "hello\n");
  }
  server.server_close();
  const std::string err = capture.finish();
  INFO("stderr: " << err);
  const ss::server_stats s = server.stats();
  CHECK(s.completed == 2);
  CHECK(s.timeouts == 1);
  CHECK(s.errors == 0);
  CHECK(s.disconnects == 0);
  CHECK(err.empty());
}

TEMPLATE_TEST_CASE("an overridden handle_error still sees disconnects and timeouts",
                   "[errors][disconnect][timeout]", test::TCP, test::ThreadingTCP,
                   test::ThreadingUnixStream, PoolTCP, test::FiberTCP) {
  using K = TestType;
  test::TempDir dir;
  StderrCapture capture;
  PeerServer<K, PeerHandler> peer(K::bind_address(dir));
  peer.record = true;
  {
    test::Serving<PeerServer<K, PeerHandler>> serving(peer);
    reset_mid_request(peer.server_address);
    CHECK(ask(peer.server_address, "fail\n").empty());
  }
  peer.server_close();
  test::TempDir dir2;
  PeerServer<K, IdleHandler> idle(K::bind_address(dir2));
  idle.record = true;
  {
    test::Serving<PeerServer<K, IdleHandler>> serving(idle);
    ss::socket c = test::connect_to(idle.server_address);
    CHECK(test::recv_all(c).empty());
  }
  idle.server_close();
  CHECK(capture.finish().empty());
  REQUIRE(peer.seen.size() == 2);  // in either order: a threading server runs them at once
  const bool reset_first = peer.seen[0] == std::errc::connection_reset;
  CHECK(peer.seen[reset_first ? 0 : 1] == std::errc::connection_reset);
  CHECK(peer.seen[reset_first ? 1 : 0] == std::error_code());  // the std::runtime_error
  REQUIRE(idle.seen.size() == 1);
  CHECK(idle.seen[0] == std::errc::timed_out);
  CHECK(peer.stats().disconnects == 1);
  CHECK(peer.stats().errors == 1);
  CHECK(idle.stats().timeouts == 1);
  CHECK(idle.stats().errors == 0);
}

TEMPLATE_TEST_CASE("a datagram reply to a client that has gone counts as a disconnect, quietly",
                   "[errors][disconnect]", test::UnixDatagram, test::ThreadingUnixDatagram,
                   test::ForkingUnixDatagram, PoolUnixDatagram) {
  using K = TestType;
  test::TempDir dir;
  PeerServer<K, DatagramEcho> server(K::bind_address(dir));
  StderrCapture capture;
  {
    // The client's socket file stays, with nobody bound to it: the reply is refused.
    ss::socket c = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
    c.send("hello");
  }
  server.handle_request();
  server.server_close();
  const std::string err = capture.finish();
  INFO("stderr: " << err);
  const ss::server_stats s = server.stats();
  CHECK(s.completed == 1);
  CHECK(s.disconnects == 1);
  CHECK(s.errors == 0);
  CHECK(err.empty());
}
