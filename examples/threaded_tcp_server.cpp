// SPDX-License-Identifier: MIT
// The ThreadingMixIn example from Python's socketserver documentation: a server that
// handles each request in a new thread, three clients, then shutdown.
// Usage: threaded_tcp_server     (binds localhost, port 0: any free port)
#include <sys/socket.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <thread>

#include <socketserver.hpp>

namespace {

std::string thread_name() {
  char name[32];
  // A number for this thread (pthread_t is an integer on Linux, a pointer on macOS).
  std::snprintf(name, sizeof name, "Thread-%zx",
                std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return name;
}

struct ThreadedTCPRequestHandler : socketserver::BaseRequestHandler<> {
  void handle() {
    const std::string data = request.recv(1024);
    request.sendall(thread_name() + ": " + data);
  }
};

using ThreadedTCPServer = socketserver::ThreadingTCPServer<ThreadedTCPRequestHandler>;

void client(const socketserver::address& server, const std::string& message) {
  socketserver::socket sock(server.family(), SOCK_STREAM);
  if (::connect(sock.fileno(), server.data(), server.size()) != 0)
    throw std::system_error(errno, std::system_category(), "connect " + server.to_string());
  sock.sendall(message);
  std::printf("Received: %s\n", sock.recv(1024).c_str());
}

}  // namespace

int main() {
  try {
    // Port 0 means to select an arbitrary unused port
    ThreadedTCPServer server({"localhost", 0});
    // Start a thread with the server -- that thread will then start one more thread for each
    // request
    std::thread server_thread([&] {
      std::printf("Server loop running in thread: %s\n", thread_name().c_str());
      std::fflush(stdout);
      server.serve_forever();
    });
    client(server.server_address, "Hello World 1");
    client(server.server_address, "Hello World 2");
    client(server.server_address, "Hello World 3");
    server.shutdown();
    server_thread.join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "threaded_tcp_server: %s\n", e.what());
    return 1;
  }
}
