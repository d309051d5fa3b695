// SPDX-License-Identifier: MIT
// The loop fiber_switch times: a fiber that switches back to the thread at once, resumed
// `pairs` times; ns per suspend/resume pair. A template over the context type, so each
// translation unit instantiates it for its own backend.
#pragma once

#include <chrono>

#include <socketserver/detail/fiber_stack.hpp>

namespace fiber_switch_bench {

template <class Context>
double ns_per_pair(long pairs) {
  struct state {
    Context thread;
    Context* fiber = nullptr;
  } s;
  socketserver::detail::fiber_stack stack = socketserver::detail::fiber_stack::allocate(65536);
  Context fiber(
      stack,
      [](void* arg) {
        auto* st = static_cast<state*>(arg);
        for (;;) Context::switch_to(*st->fiber, st->thread);
      },
      &s);
  s.fiber = &fiber;
  Context::switch_to(s.thread, fiber);  // started: now parked in its loop
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < pairs; ++i) Context::switch_to(s.thread, fiber);
  const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / static_cast<double>(pairs);
}  // the fiber stays parked; its context and stack go away with it (it owns nothing)

}  // namespace fiber_switch_bench
