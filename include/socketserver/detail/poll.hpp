// SPDX-License-Identifier: MIT
// poll(2) with a deadline: signals (EINTR) are retried with the time that is left. Every
// timed wait in the library (reads, writes, the serve loops) counts down to one deadline
// with these.
#pragma once

#include <poll.h>  // poll, ppoll, pollfd

#include <chrono>  // std::chrono::duration_cast
#include <ctime>   // timespec

#include "blocking.hpp"  // before_blocking
#include "errno.hpp"     // throw_errno
#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS
#include "time.hpp"      // clock, optional_seconds

namespace socketserver {
namespace detail {

/// When a wait of `timeout` that starts now must end; time_point::max() for no limit.
inline clock::time_point deadline_after(optional_seconds timeout) {
  return timeout ? clock::now() + std::chrono::duration_cast<clock::duration>(*timeout)
                 : clock::time_point::max();
}

/// What is left until `deadline`: never negative.
inline clock::duration time_left(clock::time_point deadline) {
  const auto left = deadline - clock::now();
  return left > clock::duration::zero() ? left : clock::duration::zero();
}

/// Milliseconds left until `deadline`, rounded up so that a wait never ends early and
/// spins; -1 (no limit) for time_point::max().
inline int ms_until(clock::time_point deadline) {
  if (deadline == clock::time_point::max()) return -1;
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(time_left(deadline));
  return static_cast<int>((us.count() + 999) / 1000);
}

/// One poll() until `deadline`, as the system call returns it (-1 with errno on EINTR):
/// no retry, and no block hook (for the hook itself to wait with). On a fiber it suspends
/// the fiber (blocking.hpp).
inline int poll_once(pollfd* fds, nfds_t count, clock::time_point deadline) noexcept {
  if (fiber_waiting != nullptr) {  // suspends the fiber, not the thread
    try {
      return fiber_waiting->poll(fds, count, deadline);
    } catch (...) {  // the loop could not wait for these: block the thread instead
    }
  }
  if (deadline == clock::time_point::max()) return ::poll(fds, count, -1);
#if defined(SOCKETSERVER_LINUX_CALLS)
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(time_left(deadline));
  const timespec ts{static_cast<time_t>(ns.count() / 1000000000),
                    static_cast<long>(ns.count() % 1000000000)};
  return ::ppoll(fds, count, &ts, nullptr);
#else
  return ::poll(fds, count, ms_until(deadline));
#endif
}

/// Waits until one of fds is ready or `deadline` has passed. Returns the number of ready
/// descriptors, 0 at the deadline. A call that may wait fires this thread's block hook
/// first (blocking.hpp).
/// @throws std::system_error if poll fails for a reason other than EINTR.
inline int poll_until(pollfd* fds, nfds_t count, clock::time_point deadline) {
  if (deadline > clock::now())
    before_blocking(count == 1 ? fds[0].fd : -1, count == 1 ? fds[0].events : 0, deadline);
  for (;;) {
    const int ready = poll_once(fds, count, deadline);
    if (ready >= 0) return ready;
    if (errno != EINTR) throw_errno("poll");
  }
}

/// Waits until one of fds is ready or `timeout` has passed (nullopt: no limit); see
/// poll_until().
inline int poll_for(pollfd* fds, nfds_t count, optional_seconds timeout) {
  return poll_until(fds, count, deadline_after(timeout));
}

/// Waits until fd is readable; false on timeout.
inline bool wait_readable(int fd, optional_seconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return poll_for(&p, 1, timeout) > 0;
}

/// Waits for `events` on fd (or its failure: the next call says how) until `deadline`;
/// false if the deadline came first.
inline bool wait_until(int fd, short events, clock::time_point deadline) {
  pollfd p{fd, events, 0};
  return poll_until(&p, 1, deadline) > 0;
}

}  // namespace detail
}  // namespace socketserver
