// SPDX-License-Identifier: MIT
// Unix socket specifics: socket files left behind by a crashed server, live servers, and
// restricting access with the file's permissions.
#include <sys/stat.h>

#include <string>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

struct StreamEcho : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : socketserver::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};

// What a crashed server leaves: a socket file that nobody listens on.
void leave_stale_socket(const std::string& path, int type) {
  socketserver::socket s(AF_UNIX, type);
  socketserver::address a(path);
  REQUIRE(::bind(s.fileno(), a.data(), a.size()) == 0);
  if (type == SOCK_STREAM) REQUIRE(::listen(s.fileno(), 1) == 0);
}  // closed without unlink

// Only the owner may connect: chmod the socket file once it exists.
struct PrivateHandler;
struct PrivateServer : socketserver::UnixStreamServer<PrivateHandler, PrivateServer> {
  using base = socketserver::UnixStreamServer<PrivateHandler, PrivateServer>;
  using base::base;
  void server_bind() {
    base::server_bind();
    if (::chmod(server_address.path().c_str(), 0600) != 0)
      throw std::system_error(errno, std::system_category(), "chmod");
  }
};
struct PrivateHandler : socketserver::StreamRequestHandler<PrivateServer> {
  void handle() { wfile.write("private\n"); }
};

}  // namespace

TEST_CASE("a stale Unix stream socket file is replaced", "[unix]") {
  test::TempDir dir;
  const std::string path = dir.file("stale.sock");
  leave_stale_socket(path, SOCK_STREAM);
  REQUIRE(test::file_exists(path));
  socketserver::UnixStreamServer<StreamEcho> server(path);
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "again\n", dir) == "again\n");
}

TEST_CASE("a stale Unix datagram socket file is replaced", "[unix]") {
  test::TempDir dir;
  const std::string path = dir.file("stale.sock");
  leave_stale_socket(path, SOCK_DGRAM);
  socketserver::UnixDatagramServer<DatagramEcho> server(path);
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::UnixDatagram>(server.server_address, "again", dir) == "again");
}

TEST_CASE("a live Unix server's path is Address already in use", "[unix]") {
  test::TempDir dir;
  const std::string path = dir.file("live.sock");
  socketserver::UnixStreamServer<StreamEcho> live(path);
  try {
    socketserver::UnixStreamServer<StreamEcho> second(path);
    FAIL("a second server bound a live server's path");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::address_in_use);
    CHECK(std::string(e.what()) ==
          "bind " + path + ": " + std::error_code(EADDRINUSE, std::system_category()).message());
  }
  // The live server is untouched and still serves.
  test::Serving<decltype(live)> serving(live);
  CHECK(test::round_trip<test::UnixStream>(live.server_address, "still\n", dir) == "still\n");
}

TEST_CASE("a path holding something other than a socket is never removed", "[unix]") {
  test::TempDir dir;
  const std::string path = dir.file("data.txt");
  {
    socketserver::socket f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    REQUIRE(f.fileno() >= 0);
  }
  CHECK_THROWS_AS(socketserver::UnixStreamServer<StreamEcho>(path), std::system_error);
  CHECK(test::file_exists(path));
}

TEST_CASE("a Unix server can restrict its socket file to its owner", "[unix]") {
  test::TempDir dir;
  PrivateServer server(dir.file("private.sock"));
  struct stat st;
  REQUIRE(::stat(dir.file("private.sock").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  test::Serving<PrivateServer> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "", dir) == "private\n");
}

TEST_CASE("abstract-namespace Unix addresses leave no file", "[unix]") {
  const std::string name = std::string("\0socketserver-test-", 19) + std::to_string(::getpid());
  socketserver::UnixStreamServer<StreamEcho> server(name);
  CHECK(server.server_address.path() == name);
  CHECK(server.server_address.to_string()[0] == '@');
  test::TempDir dir;
  test::Serving<decltype(server)> serving(server);
  CHECK(test::round_trip<test::UnixStream>(server.server_address, "abstract\n", dir) ==
        "abstract\n");
}
