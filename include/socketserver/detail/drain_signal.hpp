// SPDX-License-Identifier: MIT
// The "a drain has started" signal a server gives its handlers' rfile and wfile: a flag for
// the threads of this process, and a descriptor (readable from then on) that wakes a read
// waiting for the next request, also in the children a forking server has started.
#pragma once

#include <poll.h>  // poll, pollfd, POLLIN

#include <atomic>  // std::atomic

#include "wakeup.hpp"

namespace socketserver {
namespace detail {

class drain_signal {
 public:
  /// Raises the signal: started() from now on, fileno() readable. Safe from any thread.
  void start() noexcept {
    started_.store(true, std::memory_order_release);
    wake_.notify();  // never drained: stays readable, for every waiter
  }

  /// Whether start() has been called, in this process or (after inherited()) in the parent.
  bool started() const noexcept {
    if (started_.load(std::memory_order_acquire)) return true;
    if (!inherited_) return false;
    pollfd p{wake_.fileno(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  /// The descriptor to poll for POLLIN: readable once the drain has started.
  int fileno() const noexcept { return wake_.fileno(); }

  /// Marks a forked request child, which shares the descriptor with its parent (the
  /// parent's start() shows only there).
  void inherited() noexcept { inherited_ = true; }

 private:
  std::atomic<bool> started_{false};
  bool inherited_ = false;
  wakeup wake_;
};

}  // namespace detail
}  // namespace socketserver
