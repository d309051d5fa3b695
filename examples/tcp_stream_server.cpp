// SPDX-License-Identifier: MIT
// The socketserver.TCPServer example from Python's documentation, with the stream handler:
// rfile.readline() calls recv() as often as it takes to read a whole line.
// Usage: tcp_stream_server [HOST] [PORT]     (default: localhost 9999; stop with Ctrl-C)
#include <cstdio>
#include <exception>
#include <string>

#include <socketserver.hpp>

#include "example_util.hpp"

struct MyTCPHandler : socketserver::StreamRequestHandler<> {
  void handle() {
    // rfile is a file-like object created by the handler; we can now use readline()
    // instead of raw recv() calls
    const std::string data = example::strip(rfile.readline());
    std::printf("%s wrote:\n%s\n", client_address.host().c_str(),
                example::bytes_repr(data).c_str());
    std::fflush(stdout);
    // Likewise, wfile is a file-like object used to write back to the client
    wfile.write(example::upper(data));
  }
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    socketserver::TCPServer<MyTCPHandler> server({args.host, args.port});
    server.serve_forever();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tcp_stream_server: %s\n", e.what());
    return 1;
  }
}
