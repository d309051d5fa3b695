// The other half: the same inline functions, instantiated again, must link.
#include <socketserver.hpp>

namespace {
struct Handler : socketserver::DatagramRequestHandler<> {
  void handle() {}
};
}  // namespace

int odr_b() {
  socketserver::address a("/tmp/odr.sock");
  return a.family() == AF_UNIX && sizeof(socketserver::ForkingUDPServer<Handler>) > 0 ? 1 : 0;
}
