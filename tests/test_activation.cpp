// SPDX-License-Identifier: MIT
// Socket activation: serving on a listening socket made by someone else (an inherited
// descriptor, or systemd's LISTEN_FDS protocol).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "catch.hpp"
#include "support/harness.hpp"

#ifndef ACTIVATED_ECHO
#  error "ACTIVATED_ECHO must name the helper program (see tests/CMakeLists.txt)"
#endif

namespace {

struct Echo : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};

socketserver::socket listening_socket(bool listen) {
  socketserver::socket s(AF_INET, SOCK_STREAM);
  const socketserver::address any("127.0.0.1", 0);
  REQUIRE(::bind(s.fileno(), any.data(), any.size()) == 0);
  if (listen) REQUIRE(::listen(s.fileno(), 8) == 0);
  return s;
}

std::string ask(const socketserver::address& to, const std::string& line) {
  socketserver::socket c = test::connect_to(to);
  c.sendall(line);
  c.shutdown(SHUT_WR);
  return test::recv_all(c);
}

}  // namespace

TEST_CASE("a server adopts an inherited listening socket", "[activation]") {
  socketserver::socket inherited = listening_socket(true);
  const socketserver::address where = inherited.getsockname();
  socketserver::TCPServer<Echo> server(socketserver::address(), false);
  server.adopt_socket(inherited.detach());
  CHECK(server.server_address == where);
  test::Serving<decltype(server)> serving(server);
  CHECK(ask(where, "inherited\n") == "inherited\n");
}

TEST_CASE("adopting a bound socket that is not listening activates it", "[activation]") {
  socketserver::socket bound = listening_socket(false);
  const socketserver::address where = bound.getsockname();
  socketserver::TCPServer<Echo> server(socketserver::address(), false);
  server.adopt_socket(bound.detach());
  CHECK(server.socket.getsockopt<int>(SOL_SOCKET, SO_ACCEPTCONN) == 1);
  test::Serving<decltype(server)> serving(server);
  CHECK(ask(where, "now listening\n") == "now listening\n");
}

TEST_CASE("adopting a socket of the wrong type fails and leaves it open", "[activation]") {
  socketserver::socket udp(AF_INET, SOCK_DGRAM);
  const socketserver::address any("127.0.0.1", 0);
  REQUIRE(::bind(udp.fileno(), any.data(), any.size()) == 0);
  socketserver::TCPServer<Echo> server(socketserver::address(), false);
  const int own = server.fileno();
  CHECK_THROWS_AS(server.adopt_socket(udp.fileno()), std::system_error);
  CHECK(::fcntl(udp.fileno(), F_GETFD) >= 0);  // still ours
  CHECK(server.fileno() == own);
}

TEST_CASE("listen_fds ignores variables meant for another process", "[activation]") {
  ::setenv("LISTEN_PID", "1", 1);
  ::setenv("LISTEN_FDS", "1", 1);
  CHECK(socketserver::listen_fds().empty());
  CHECK(std::getenv("LISTEN_FDS") == nullptr);
  CHECK(std::getenv("LISTEN_PID") == nullptr);
}

TEST_CASE("a socket-activated child process serves on the descriptor it was given",
          "[activation]") {
  socketserver::socket listener = listening_socket(true);
  const socketserver::address where = listener.getsockname();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the service manager's part: descriptor 3 and the environment, then exec
    if (::dup2(listener.fileno(), 3) < 0) ::_exit(10);
    ::fcntl(3, F_SETFD, 0);  // dup2 onto itself keeps close-on-exec
    char pid_var[32] = "LISTEN_PID=";
    char digits[16];
    int n = 0;
    for (long p = ::getpid(); p > 0; p /= 10) digits[n++] = static_cast<char>('0' + p % 10);
    int at = 11;
    while (n > 0) pid_var[at++] = digits[--n];
    pid_var[at] = '\0';
    char fds_var[] = "LISTEN_FDS=1";
    char* envp[] = {pid_var, fds_var, nullptr};
    char* argv[] = {const_cast<char*>(ACTIVATED_ECHO), nullptr};
    ::execve(ACTIVATED_ECHO, argv, envp);
    ::_exit(11);
  }
  listener.close();  // only the child serves now
  CHECK(ask(where, "hello\n") == "activated: hello\n");
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
