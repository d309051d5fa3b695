// Subclassing TCPServer<H> without naming the subclass (CRTP) would silently ignore its
// hooks, so it does not compile: write `struct MyServer : TCPServer<H, MyServer>`.
#include <socketserver.hpp>

struct Handler : socketserver::StreamRequestHandler<> {
  void handle() {}
};

struct MyServer : socketserver::TCPServer<Handler> {
  bool verify_request(socketserver::socket&, const socketserver::address&) { return false; }
};

int main() {}
