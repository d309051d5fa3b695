// SPDX-License-Identifier: MIT
// Per-thread hooks on the library's own waits.
// - "About to block": ThreadPoolMixIn arms it while a worker serves a request with the serve
//   loop still in hand: the worker hands the loop on only when the request really has to
//   wait, and a request that need not wait costs no thread wake-up at all.
// - The fiber waiter: on a thread that runs fibers (FiberMixIn's loops), a wait suspends the
//   running fiber, and the thread runs another, instead of blocking the thread.
#pragma once

#include <poll.h>        // poll, pollfd, POLLIN, POLLOUT
#include <sys/socket.h>  // MSG_DONTWAIT
#include <sys/types.h>   // ssize_t

#include <algorithm>  // std::min
#include <cerrno>     // errno, EAGAIN, EWOULDBLOCK
#include <chrono>     // std::chrono::milliseconds

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

/// How the fibers of this thread wait (FiberMixIn's loop installs one on its thread).
class fiber_waiter {
 public:
  /// Suspends the running fiber until `fd` is ready for `events` (POLLIN or POLLOUT), has
  /// failed or hung up, or `deadline` has passed; false at the deadline.
  virtual bool wait(int fd, short events, clock::time_point deadline) = 0;
  /// poll() on a fiber: sets revents; returns how many are ready, 0 at the deadline.
  virtual int poll(pollfd* fds, nfds_t count, clock::time_point deadline) = 0;
  /// When a blocking call on `fd` must give up (its socket timeout), or time_point::min()
  /// when the descriptor is non-blocking (the call fails at once, as off a fiber).
  virtual clock::time_point call_deadline(int fd, short events) = 0;
  /// settimeout() changed `fd`'s timeout or blocking mode, on this thread.
  virtual void timeout_changed(int fd) noexcept = 0;
  /// `fd` is about to be closed on this thread: forget what is known of it.
  virtual void closing(int fd) noexcept = 0;
  /// The server whose loop hooks (get_request(), verify_request(), service_actions()) the
  /// running fiber runs now, or nullptr: its shutdown() would wait for itself.
  virtual const void* hooks_owner() const noexcept = 0;

 protected:
  ~fiber_waiter() = default;
};

/// This thread's fiber waiter while it runs a fiber; nullptr elsewhere.
inline thread_local fiber_waiter* fiber_waiting = nullptr;

/// blocking_io() on a fiber: try without waiting; when the call would block, suspend the
/// fiber until the socket is ready, within the socket's own timeout (then EAGAIN, as the
/// kernel reports SO_RCVTIMEO). MSG_WAITALL waits for the first bytes as a fiber, then
/// blocks the thread for the rest (the call cannot be resumed part-way through).
template <class Call>
ssize_t fiber_io(int fd, short events, int flags, Call call) noexcept {
  bool deadline_known = false;
  clock::time_point deadline = clock::time_point::max();
  for (;;) {
    if ((flags & MSG_WAITALL) == 0) {
      const ssize_t result = retry_on_eintr([&] { return call(flags | MSG_DONTWAIT); });
      if (result >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return result;
    } else {
      pollfd ready{fd, events, 0};
      if (::poll(&ready, 1, 0) > 0) return retry_on_eintr([&] { return call(flags); });
    }
    fiber_waiter* waiter = fiber_waiting;
    if (waiter == nullptr) return retry_on_eintr([&] { return call(flags); });
    if (!deadline_known) {
      deadline = waiter->call_deadline(fd, events);
      deadline_known = true;
    }
    bool ready = false;
    try {
      ready = deadline > clock::now() && waiter->wait(fd, events, deadline);
    } catch (...) {  // the loop could not wait for this descriptor: look again shortly
      pollfd none{-1, 0, 0};
      try {
        (void)waiter->poll(&none, 1,
                           std::min(deadline, clock::now() + std::chrono::milliseconds(1)));
      } catch (...) {
      }
      ready = deadline > clock::now();
    }
    if (!ready) {
      errno = EAGAIN;
      return -1;
    }
  }
}

/// Runs call(flags), a call on socket `fd` that may wait for `events`, retrying on EINTR.
/// While the hook is armed it tries without waiting (MSG_DONTWAIT) first, and calls the hook
/// only when that would block: one system call, as before, when the call need not wait.
/// (MSG_WAITALL is not tried that way, as it would return part of what the caller waits for:
/// the hook runs if nothing at all is there yet.)
template <class Call>
ssize_t blocking_io(int fd, short events, int flags, Call call) noexcept {
  if ((flags & MSG_DONTWAIT) == 0 && fiber_waiting != nullptr)
    return fiber_io(fd, events, flags, call);
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
