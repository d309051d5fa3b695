// SPDX-License-Identifier: MIT
// Test support: counting what a server leaves behind (descriptors, threads, children).
#pragma once

#include "../catch.hpp"
#include "harness.hpp"

namespace test {

/// The process's descriptors and threads when the test began.
struct Baseline {
  int fds = test::open_fd_count();
  int threads = test::thread_count();
};

/// Everything the server had is gone: descriptors, threads, children.
inline void check_nothing_left(const Baseline& before) {
  CHECK(test::open_fd_count() == before.fds);
  eventually([&] { return test::thread_count() == before.threads; });
  CHECK(test::thread_count() == before.threads);
  CHECK_FALSE(test::has_children());
}

}  // namespace test
