// SPDX-License-Identifier: MIT
// A backend for the load-balancer test: `named_echo NAME [PORT [proxy-v2]]` serves on
// 127.0.0.1, prints its port once it is listening (the readiness signal), and answers each
// line with "NAME: line". With proxy-v2 its connections begin with a PROXY protocol v2
// header from 127.0.0.1 (HAProxy's send-proxy-v2), and it answers "NAME from CLIENT: line",
// CLIENT being the address the header names. SIGTERM stops it (drained, so no request in
// flight is cut short).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <socketserver.hpp>

static std::string name;
static bool proxied = false;

struct Named : socketserver::StreamRequestHandler<> {
  void handle() {
    for (std::string line = rfile.readline(); !line.empty(); line = rfile.readline())
      wfile.write(proxied ? name + " from " + client_address.to_string() + ": " + line
                          : name + ": " + line);
  }
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: named_echo NAME [PORT [proxy-v2]]\n");
    return 2;
  }
  name = argv[1];
  socketserver::ThreadingTCPServer<Named> server({"127.0.0.1", argc > 2 ? std::atoi(argv[2]) : 0});
  if (argc > 3 && std::string(argv[3]) == "proxy-v2") {
    proxied = true;
    server.proxy_protocol = socketserver::proxy_protocol_mode::v2;
    server.proxy_trusted_sources = {"127.0.0.1"};  // HAProxy, on loopback
  }
  std::printf("%u\n", server.server_address.port());
  std::fflush(stdout);
  socketserver::shutdown_on_signals stop(server);
  server.serve_forever();
  server.drain(std::chrono::seconds(5));
  return 0;
}
