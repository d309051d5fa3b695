// Half of a program whose two translation units both include the whole library.
#include <socketserver.hpp>
#include <socketserver/detail/fiber_context.hpp>

namespace {
struct Handler : socketserver::StreamRequestHandler<> {
  void handle() {}
};

// The context switch is a global asm function each including translation unit emits: a
// COMDAT, weak, hidden symbol, so the two copies link as one.
struct fiber_run {
  socketserver::detail::fiber_context thread;
  socketserver::detail::fiber_context* self = nullptr;
  int value = 0;
};
int switch_once(int value) {
  socketserver::detail::fiber_stack stack = socketserver::detail::fiber_stack::allocate(16384);
  fiber_run run;
  socketserver::detail::fiber_context fiber(
      stack,
      [](void* arg) {
        auto* r = static_cast<fiber_run*>(arg);
        r->value += 1;
        socketserver::detail::fiber_context::exit_to(*r->self, r->thread);
      },
      &run);
  run.self = &fiber;
  run.value = value;
  socketserver::detail::fiber_context::switch_to(run.thread, fiber);
  return run.value;
}
}  // namespace

int odr_a() {
  socketserver::address a("127.0.0.1", 0);
  const bool switched = switch_once(1) == 2;
  return a.port() == 0 && sizeof(socketserver::ThreadingTCPServer<Handler>) > 0 && switched ? 1 : 0;
}
