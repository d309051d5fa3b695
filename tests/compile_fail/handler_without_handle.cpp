// A handler that forgot handle() (or misspelled it) is a readable compile error.
#include <socketserver.hpp>

struct Handler : socketserver::StreamRequestHandler<> {
  void handel() {}
};

int main() {
  socketserver::TCPServer<Handler> server({"127.0.0.1", 0});
  server.handle_request();
}
