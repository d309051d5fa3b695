// SPDX-License-Identifier: MIT
// The descriptors the library makes, whichever way this build makes them (one call on Linux,
// fcntl() after it in the portable mode and elsewhere), and what SOCKETSERVER_PORTABLE
// switches: built and run in both modes by .ci/run.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <system_error>

#include <socketserver/address.hpp>
#include <socketserver/detail/fd.hpp>
#include <socketserver/detail/fiber_poller.hpp>
#include <socketserver/detail/wakeup.hpp>
#include <socketserver/socket.hpp>

#include "catch.hpp"

namespace ss = socketserver;

namespace {

bool cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool nonblocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }

}  // namespace

TEST_CASE("open_socket: close-on-exec, non-blocking only when asked", "[platform]") {
  for (const bool asked : {false, true}) {
    ss::socket s(ss::detail::open_socket(AF_INET, SOCK_STREAM, 0, asked));
    REQUIRE(s.is_open());
    CHECK(cloexec(s.fileno()));
    CHECK(nonblocking(s.fileno()) == asked);
  }
  ss::socket made(AF_INET, SOCK_DGRAM);  // the constructor goes through it
  CHECK(cloexec(made.fileno()));
  CHECK_FALSE(nonblocking(made.fileno()));
}

TEST_CASE("open_socket fails with errno for an unknown family, leaking nothing", "[platform]") {
  errno = 0;
  CHECK(ss::detail::open_socket(-1, SOCK_STREAM, 0) == -1);
  CHECK(errno != 0);
}

TEST_CASE("accept_socket: the connection is close-on-exec and blocking, from any listener",
          "[platform]") {
  // A non-blocking listener: BSD's accept() would pass O_NONBLOCK on to the connection.
  ss::socket listener(ss::detail::open_socket(AF_INET, SOCK_STREAM, 0, true));
  REQUIRE(listener.is_open());
  const ss::address loopback("127.0.0.1", 0);
  REQUIRE(::bind(listener.fileno(), loopback.data(), loopback.size()) == 0);
  REQUIRE(::listen(listener.fileno(), 1) == 0);
  const ss::address bound = listener.getsockname();
  ss::socket client(AF_INET, SOCK_STREAM);
  REQUIRE(::connect(client.fileno(), bound.data(), bound.size()) == 0);
  ss::address peer;
  socklen_t len = ss::address::capacity();
  ss::socket accepted(ss::detail::accept_socket(listener.fileno(), peer.data(), &len));
  REQUIRE(accepted.is_open());
  peer.resize(len);
  CHECK(cloexec(accepted.fileno()));
  CHECK_FALSE(nonblocking(accepted.fileno()));
  CHECK(peer == client.getsockname());
  // Nothing else waiting: EAGAIN from the non-blocking listener, not a wait.
  CHECK(ss::detail::accept_socket(listener.fileno(), nullptr, nullptr) == -1);
  CHECK((errno == EAGAIN || errno == EWOULDBLOCK));
}

TEST_CASE("open_pipe: both ends close-on-exec, non-blocking only when asked", "[platform]") {
  for (const bool asked : {false, true}) {
    int fds[2];
    REQUIRE(ss::detail::open_pipe(fds, asked) == 0);
    ss::socket read_end(fds[0]), write_end(fds[1]);
    for (int fd : fds) {
      CHECK(cloexec(fd));
      CHECK(nonblocking(fd) == asked);
    }
  }
}

TEST_CASE("SOCKETSERVER_PORTABLE takes the POSIX paths: a pipe wakes, the fiber loops poll()",
          "[platform]") {
  ss::detail::wakeup w;
  struct stat st {};
  REQUIRE(::fstat(w.fileno(), &st) == 0);
  CHECK(cloexec(w.fileno()));
  CHECK(nonblocking(w.fileno()));
  const std::string backend = ss::detail::fiber_poller::backend;
#if defined(SOCKETSERVER_PORTABLE)
  CHECK(S_ISFIFO(st.st_mode));  // a pipe, as on every system without eventfd
  CHECK(backend == "poll");
#elif defined(__linux__)
  CHECK_FALSE(S_ISFIFO(st.st_mode));  // an eventfd
  CHECK(backend == "epoll");
#else
  CHECK(S_ISFIFO(st.st_mode));
  CHECK(backend == "kqueue");
#endif
  // Either kind wakes and drains.
  w.notify();
  pollfd p{w.fileno(), POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 1);
  w.drain();
  p.revents = 0;
  CHECK(::poll(&p, 1, 0) == 0);
}

TEST_CASE("an abstract Unix name works on Linux and is a clear error elsewhere", "[platform]") {
  const std::string abstract("\0socketserver-test", 18);
#if defined(__linux__)
  CHECK_NOTHROW(ss::address(abstract));
#else
  try {
    ss::address a(abstract);
    FAIL("an abstract name was accepted off Linux");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::address_family_not_supported);
    CHECK(std::string(e.what()).find("@socketserver-test") != std::string::npos);
  }
#endif
}
