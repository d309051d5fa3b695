// A stream handler given to a datagram server is a readable compile error.
#include <socketserver.hpp>

struct Handler : socketserver::StreamRequestHandler<> {
  void handle() {}
};

int main() {
  socketserver::UDPServer<Handler> server({"127.0.0.1", 0});
  server.handle_request();
}
