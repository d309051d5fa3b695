// SPDX-License-Identifier: MIT
// A per-thread "about to block" hook on the library's own I/O. ThreadPoolMixIn arms it while
// a worker serves a request with the serve loop still in hand: the worker hands the loop on
// only when the request really has to wait, and a request that need not wait costs no
// thread wake-up at all.
#pragma once

#include <poll.h>        // poll, pollfd, POLLIN, POLLOUT
#include <sys/socket.h>  // MSG_DONTWAIT
#include <sys/types.h>   // ssize_t

#include <cerrno>  // errno, EAGAIN, EWOULDBLOCK

#include "errno.hpp"  // retry_on_eintr
#include "time.hpp"   // clock

namespace socketserver {
namespace detail {

/// fire(context, fd, events, deadline) is called when this thread is about to wait for
/// `events` on `fd` (-1: on several descriptors), until `deadline` at the latest. It may
/// wait there itself for a while; it disarms the hook when it no longer wants to be called.
struct block_hook {
  void (*fire)(void* context, int fd, short events, clock::time_point deadline) noexcept = nullptr;
  void* context = nullptr;
};

inline thread_local block_hook about_to_block;

inline void arm_block_hook(decltype(block_hook::fire) fire, void* context) noexcept {
  about_to_block = block_hook{fire, context};
}
inline void disarm_block_hook() noexcept { about_to_block = block_hook{}; }
inline bool block_hook_armed() noexcept { return about_to_block.fire != nullptr; }

/// Calls this thread's hook, if armed: the caller is about to wait for `events` on `fd`.
inline void before_blocking(int fd, short events,
                            clock::time_point deadline = clock::time_point::max()) noexcept {
  const block_hook hook = about_to_block;
  if (hook.fire != nullptr) hook.fire(hook.context, fd, events, deadline);
}

/// Runs call(flags), a call on socket `fd` that may wait for `events`, retrying on EINTR.
/// While the hook is armed it tries without waiting (MSG_DONTWAIT) first, and calls the hook
/// only when that would block: one system call, as before, when the call need not wait.
/// (MSG_WAITALL is not tried that way, as it would return part of what the caller waits for:
/// the hook runs if nothing at all is there yet.)
template <class Call>
ssize_t blocking_io(int fd, short events, int flags, Call call) noexcept {
  if ((flags & MSG_DONTWAIT) == 0) {
    while (block_hook_armed()) {
      if ((flags & MSG_WAITALL) != 0) {
        pollfd ready{fd, events, 0};
        if (::poll(&ready, 1, 0) > 0) break;
        before_blocking(fd, events);
        continue;
      }
      const ssize_t result = retry_on_eintr([&] { return call(flags | MSG_DONTWAIT); });
      if (result >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return result;
      before_blocking(fd, events);
    }
  }
  return retry_on_eintr([&] { return call(flags); });
}

}  // namespace detail
}  // namespace socketserver
