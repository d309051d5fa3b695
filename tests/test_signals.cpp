// SPDX-License-Identifier: MIT
// shutdown_on_signals: a signal stops serve_forever() through a sigwait() thread.
#include <signal.h>

#include <thread>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

struct Echo : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};

bool blocked(int sig) {
  sigset_t current;
  pthread_sigmask(SIG_BLOCK, nullptr, &current);
  return sigismember(&current, sig) == 1;
}

}  // namespace

TEST_CASE("a signal stops serve_forever", "[signals]") {
  socketserver::TCPServer<Echo> server({"127.0.0.1", 0});
  REQUIRE_FALSE(blocked(SIGUSR1));
  {
    socketserver::shutdown_on_signals stop(server, {SIGUSR1});
    CHECK(blocked(SIGUSR1));
    std::thread signaller([] { ::kill(::getpid(), SIGUSR1); });  // inherits the mask
    server.serve_forever();                                      // returns because of the signal
    signaller.join();
    CHECK(stop.signal() == SIGUSR1);
  }
  CHECK_FALSE(blocked(SIGUSR1));  // the mask is restored
}

TEST_CASE("shutdown_on_signals without a signal ends quietly", "[signals]") {
  socketserver::TCPServer<Echo> server({"127.0.0.1", 0});
  {
    socketserver::shutdown_on_signals stop(server, {SIGUSR2});
    CHECK(stop.signal() == 0);
  }
  CHECK_FALSE(blocked(SIGUSR2));
  test::Serving<decltype(server)> serving(server);  // the server was left alone
  socketserver::socket c = test::connect_to(server.server_address);
  c.sendall("still here\n");
  c.shutdown(SHUT_WR);
  CHECK(test::recv_all(c) == "still here\n");
}
