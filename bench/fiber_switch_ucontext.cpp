// SPDX-License-Identifier: MIT
// fiber_switch's second translation unit: the same loop on fiber_context's ucontext fallback
// (SOCKETSERVER_FIBER_UCONTEXT, set for this file only by bench/CMakeLists.txt; the two
// backends are distinct types, so both link into one program).
#include <socketserver/detail/fiber_context.hpp>

#include "fiber_switch.hpp"

double ns_per_pair_ucontext_backend(long pairs) {
  return fiber_switch_bench::ns_per_pair<socketserver::detail::fiber_context>(pairs);
}
