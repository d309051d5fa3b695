// SPDX-License-Identifier: MIT
// fiber_switch: the cost of a fiber suspend/resume pair (issue 11), in the same run for
//   - fiber_context: this library's switch (x86-64 / AArch64 assembly), with the exception
//     state swap and whatever sanitizer annotations the build has;
//   - fiber_context on its ucontext fallback (fiber_switch_ucontext.cpp);
//   - bare swapcontext(), as a ucontext-based library would call it.
//
//   fiber_switch [--runs R] [--pairs N]     (defaults: 7 runs of 2,000,000 pairs)
//
// The three are interleaved in every run (so they share the machine's noise) and printed as
// a markdown table: median ns per pair, and the spread (min - max) over the runs.
#include "fiber_switch.hpp"

#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <socketserver/detail/fiber_context.hpp>
#include <socketserver/detail/fiber_stack.hpp>

double ns_per_pair_ucontext_backend(long pairs);  // fiber_switch_ucontext.cpp

namespace {

ucontext_t bare_thread, bare_fiber;

void bare_loop() {
  for (;;) swapcontext(&bare_fiber, &bare_thread);
}

double ns_per_pair_bare_swapcontext(long pairs) {
  socketserver::detail::fiber_stack stack = socketserver::detail::fiber_stack::allocate(65536);
  getcontext(&bare_fiber);
  bare_fiber.uc_stack.ss_sp = stack.bottom();
  bare_fiber.uc_stack.ss_size = stack.size();
  bare_fiber.uc_link = nullptr;
  makecontext(&bare_fiber, &bare_loop, 0);
  swapcontext(&bare_thread, &bare_fiber);
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < pairs; ++i) swapcontext(&bare_thread, &bare_fiber);
  const std::chrono::duration<double, std::nano> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / static_cast<double>(pairs);
}

struct variant {
  std::string name;
  double (*measure)(long);
  std::vector<double> ns;
};

double ns_per_pair_ours(long pairs) {
  return fiber_switch_bench::ns_per_pair<socketserver::detail::fiber_context>(pairs);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 7;
  long pairs = 2000000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--runs") == 0) runs = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--pairs") == 0) pairs = std::max(1L, std::atol(argv[i + 1]));
  }
  std::vector<variant> variants = {
      {std::string("fiber_context (") + socketserver::detail::fiber_context::backend + ")",
       &ns_per_pair_ours,
       {}},
      {"fiber_context (ucontext fallback)", &ns_per_pair_ucontext_backend, {}},
      {"bare swapcontext()", &ns_per_pair_bare_swapcontext, {}},
  };
  for (auto& v : variants) v.measure(pairs / 10 + 1);  // warm-up
  for (int run = 0; run < runs; ++run)
    for (auto& v : variants) v.ns.push_back(v.measure(pairs));

  std::printf("%d runs of %ld suspend/resume pairs\n\n", runs, pairs);
  std::printf("| switch | ns per pair (median) | spread (min - max) | vs. swapcontext |\n");
  std::printf("|---|---:|---:|---:|\n");
  std::vector<double> medians;
  for (auto& v : variants) {
    std::sort(v.ns.begin(), v.ns.end());
    medians.push_back(v.ns[v.ns.size() / 2]);
  }
  for (std::size_t i = 0; i < variants.size(); ++i)
    std::printf("| %s | %.1f | %.1f - %.1f | %.2fx |\n", variants[i].name.c_str(), medians[i],
                variants[i].ns.front(), variants[i].ns.back(), medians[i] / medians.back());
  return 0;
}
