// SPDX-License-Identifier: MIT
// poll(2) with a deadline: signals (EINTR) are retried with the time that is left.
#pragma once

#include <poll.h>  // poll, ppoll, pollfd

#include <chrono>  // std::chrono
#include <ctime>   // timespec

#include "../error.hpp"
#include "../socket.hpp"  // timeout_type
#include "blocking.hpp"

namespace socketserver {
namespace detail {

/// Waits until one of fds is ready or `timeout` has passed (nullopt: no limit).
/// Returns the number of ready descriptors, 0 on timeout. A call that may wait fires this
/// thread's block hook first (blocking.hpp).
/// @throws std::system_error if poll fails for a reason other than EINTR.
inline int poll_for(pollfd* fds, nfds_t count, timeout_type timeout) {
  using clock = std::chrono::steady_clock;
  const auto deadline = timeout
                            ? clock::now() + std::chrono::duration_cast<clock::duration>(*timeout)
                            : clock::time_point::max();
  if (!timeout || timeout->count() > 0)
    before_blocking(count == 1 ? fds[0].fd : -1, count == 1 ? fds[0].events : 0, deadline);
  for (;;) {
    int ready;
    if (!timeout) {
      ready = ::poll(fds, count, -1);
    } else {
      auto left = deadline - clock::now();
      if (left < clock::duration::zero()) left = clock::duration::zero();
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
#if defined(__linux__)
      timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      ready = ::ppoll(fds, count, &ts, nullptr);
#else
      ready = ::poll(fds, count, static_cast<int>((ns + 999999) / 1000000));
#endif
    }
    if (ready >= 0) return ready;
    if (errno != EINTR) throw_errno("poll");
  }
}

/// Waits until fd is readable; false on timeout.
inline bool wait_readable(int fd, timeout_type timeout) {
  pollfd p{fd, POLLIN, 0};
  return poll_for(&p, 1, timeout) > 0;
}

/// Waits until fd is writable (or has failed: the next send says how); false on timeout.
inline bool wait_writable(int fd, timeout_type timeout) {
  pollfd p{fd, POLLOUT, 0};
  return poll_for(&p, 1, timeout) > 0;
}

}  // namespace detail
}  // namespace socketserver
