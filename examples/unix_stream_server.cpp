// SPDX-License-Identifier: MIT
// The stream example on a Unix socket: UnixStreamServer with the readline() handler.
// Usage: unix_stream_server [PATH]     (default: /tmp/socketserver-example.sock; Ctrl-C stops)
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

struct MyStreamHandler;
using Server = socketserver::UnixStreamServer<MyStreamHandler>;

// Naming the server type lets handle() use its members (server_address here).
struct MyStreamHandler : socketserver::StreamRequestHandler<Server> {
  void handle() {
    const std::string data = example::strip(rfile.readline());
    std::printf("A client of %s wrote:\n%s\n", server.server_address.to_string().c_str(),
                example::bytes_repr(data).c_str());
    std::fflush(stdout);
    wfile.write(example::upper(data));
  }
};

int main(int argc, char** argv) {
  try {
    const std::string path = argc > 1 ? argv[1] : "/tmp/socketserver-example.sock";
    Server server(path);
    server.serve_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unix_stream_server: %s\n", e.what());
    return 1;
  }
}
