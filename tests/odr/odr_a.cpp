// Half of a program whose two translation units both include the whole library.
#include <socketserver.hpp>

namespace {
struct Handler : socketserver::StreamRequestHandler<> {
  void handle() {}
};
}  // namespace

int odr_a() {
  socketserver::address a("127.0.0.1", 0);
  return a.port() == 0 && sizeof(socketserver::ThreadingTCPServer<Handler>) > 0 ? 1 : 0;
}
