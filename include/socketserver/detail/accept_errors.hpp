// SPDX-License-Identifier: MIT
// What a get_request() failure means for the serve loop: drop it (transient), pause
// accepting (out of a resource), or give up (the socket cannot accept at all).
#pragma once

#include <algorithm>     // std::min
#include <atomic>        // std::atomic
#include <cerrno>        // E*
#include <chrono>        // std::chrono::milliseconds
#include <system_error>  // std::error_code, std::system_category

#include "time.hpp"  // clock

namespace socketserver {
namespace detail {

/// True for get_request() failures that mean "out of a resource": retrying at once would
/// fail again, so the serve loop pauses accepting for a while.
inline bool is_resource_exhaustion(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      return true;
    default:
      return false;
  }
}

/// True for get_request() failures that no retry can mend: the socket cannot accept at
/// all (not listening: server_activate() was skipped; not a socket; closed). serve_forever()
/// raises them instead of spinning.
inline bool is_fatal_get_request_error(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EINVAL:
    case EBADF:
    case ENOTSOCK:
    case EOPNOTSUPP:
    case EFAULT:
      return true;
    default:
      return false;
  }
}

/// True for get_request() failures that concern only the one request (the peer left before
/// accept, another process took the connection, a signal): CPython drops them silently.
inline bool is_transient(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case EINTR:
    case ECONNABORTED:
    case ECONNRESET:
    case ECONNREFUSED:  // a UDP socket hearing ICMP "port unreachable" for an earlier reply
    case EPROTO:
    case EPERM:  // a firewall rule refused the connection
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

/// The pause in accepting after a resource ran out (EMFILE and the like): 10 ms, doubling
/// to 1 s while the failures go on, over as soon as a request is taken. Every thread running
/// the loop reads it (ThreadPoolMixIn's leaders), so it is atomic.
class accept_backoff {
 public:
  /// A get_request() failure: starts or lengthens the pause if it means "out of a resource".
  void failed(const std::error_code& ec) noexcept {
    if (!is_resource_exhaustion(ec)) return;
    const int previous = pause_ms_.load(std::memory_order_relaxed);
    const int pause = previous == 0 ? 10 : std::min(previous * 2, 1000);
    pause_ms_.store(pause, std::memory_order_relaxed);
    until_.store((clock::now() + std::chrono::milliseconds(pause)).time_since_epoch().count(),
                 std::memory_order_relaxed);
  }
  /// A request was taken: the next failure starts from the shortest pause again.
  void succeeded() noexcept {
    if (pause_ms_.load(std::memory_order_relaxed) != 0)
      pause_ms_.store(0, std::memory_order_relaxed);
  }
  /// When accepting may resume (in the past when it need not wait).
  clock::time_point paused_until() const noexcept {
    return clock::time_point(clock::duration(until_.load(std::memory_order_relaxed)));
  }

 private:
  std::atomic<int> pause_ms_{0};
  std::atomic<clock::rep> until_{0};
};

}  // namespace detail
}  // namespace socketserver
