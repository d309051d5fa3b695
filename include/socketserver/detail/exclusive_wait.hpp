// SPDX-License-Identifier: MIT
// Waiting for a listening socket that other processes wait for too (prefork workers), so
// that a new connection wakes one waiting worker instead of all of them (Linux's
// EPOLLEXCLUSIVE). Elsewhere, or if epoll refuses, callers fall back to poll().
#pragma once

#include <poll.h>    // pollfd, POLLIN, POLLHUP, POLLERR
#include <unistd.h>  // close
#if defined(__linux__)
#  include <sys/epoll.h>  // epoll_create1, epoll_ctl, epoll_wait, EPOLLEXCLUSIVE
#endif

#include <cerrno>  // errno, EINTR

#include "errno.hpp"  // throw_errno
#include "poll.hpp"   // deadline_after, ms_until
#include "time.hpp"   // optional_seconds

namespace socketserver {
namespace detail {

class exclusive_wait {
 public:
  /// Watches fds[0] (a shared socket: exclusive wake-ups) and fds[1..count) (wake-up and
  /// stop descriptors: every waiter sees them). Inactive unless `enable` and fds[0].fd >= 0.
  exclusive_wait(const pollfd* fds, int count, bool enable) {
#if defined(__linux__) && defined(EPOLLEXCLUSIVE)
    if (!enable || fds[0].fd < 0) return;
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return;
    for (int i = 0; i < count; ++i) {
      if (fds[i].fd < 0) continue;
      epoll_event ev{};
      ev.events = EPOLLIN | (i == 0 ? EPOLLEXCLUSIVE : 0u);
      ev.data.u32 = static_cast<unsigned>(i);
      if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fds[i].fd, &ev) < 0) {
        close();
        return;
      }
    }
#else
    (void)fds;
    (void)count;
    (void)enable;
#endif
  }
  exclusive_wait(const exclusive_wait&) = delete;
  exclusive_wait& operator=(const exclusive_wait&) = delete;
  ~exclusive_wait() { close(); }

  bool active() const noexcept { return epoll_fd_ >= 0; }

  /// Like poll_for() on the descriptors given to the constructor: sets their revents and
  /// returns how many are ready (0 on timeout). Signals are retried with the time left.
  int wait(pollfd* fds, int count, optional_seconds timeout) {
#if defined(__linux__) && defined(EPOLLEXCLUSIVE)
    const auto deadline = deadline_after(timeout);
    for (int i = 0; i < count; ++i) fds[i].revents = 0;
    epoll_event events[4];
    for (;;) {
      const int ms = ms_until(deadline);
      const int ready = ::epoll_wait(epoll_fd_, events, 4, ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) throw_errno("epoll_wait");
      for (int e = 0; e < ready; ++e) {
        const unsigned i = events[e].data.u32;
        if (static_cast<int>(i) >= count) continue;
        short revents = 0;
        if (events[e].events & EPOLLIN) revents |= POLLIN;
        if (events[e].events & EPOLLHUP) revents |= POLLHUP;
        if (events[e].events & EPOLLERR) revents |= POLLERR;
        fds[i].revents = revents;
      }
      return ready;
    }
#else
    (void)fds;
    (void)count;
    (void)timeout;
    return 0;
#endif
  }

 private:
  void close() noexcept {
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    epoll_fd_ = -1;
  }

  int epoll_fd_ = -1;
};

}  // namespace detail
}  // namespace socketserver
