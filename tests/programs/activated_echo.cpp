// SPDX-License-Identifier: MIT
// Started by test_activation with a listening socket on descriptor 3 and LISTEN_PID /
// LISTEN_FDS set, as systemd starts a socket-activated service: serves one echo request.
// Exit status: 0 served, 2 no descriptor passed, 3 the environment was not cleared.
#include <cstdlib>

#include <socketserver.hpp>

struct Echo : socketserver::StreamRequestHandler<> {
  void handle() { wfile.write("activated: " + rfile.readline()); }
};

int main() {
  const std::vector<int> fds = socketserver::listen_fds();
  if (fds.size() != 1) return 2;
  if (std::getenv("LISTEN_FDS") != nullptr || std::getenv("LISTEN_PID") != nullptr) return 3;
  socketserver::TCPServer<Echo> server(socketserver::address(), false);
  server.adopt_socket(fds[0]);
  server.handle_request();
  return 0;
}
