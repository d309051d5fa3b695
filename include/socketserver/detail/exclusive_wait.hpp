// SPDX-License-Identifier: MIT
// Waiting for a listening socket that other processes wait for too (prefork workers), so
// that a new connection wakes one waiting worker instead of all of them (Linux's
// EPOLLEXCLUSIVE). Elsewhere, or if epoll refuses, callers fall back to poll().
//
// Which waiter wakes: the kernel walks the socket's wait queue from its head and wakes the
// first registered waiter that is waiting, and a registration keeps its place for as long as
// it lasts. So the worker registered first takes every connection it is idle for: a
// threading worker, back in its wait at once, took 71% of them (issue 15). rotate() moves a
// waiter that has just taken work to the back of the queue (its registration is removed and
// added again), so the idle workers take turns: the one idle longest goes first.
//
// Without EPOLLEXCLUSIVE (other systems, the portable mode) a prefork worker waits through
// the accept turn its supervisor set up (accept_turn.hpp), which wakes one worker as well.
#pragma once

#include <poll.h>    // pollfd, POLLIN, POLLHUP, POLLERR
#include <unistd.h>  // close

#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS
#if defined(SOCKETSERVER_LINUX_CALLS)
#  include <sys/epoll.h>  // epoll_create1, epoll_ctl, epoll_wait, EPOLLEXCLUSIVE
#endif

#include <atomic>  // std::atomic
#include <cerrno>  // errno, EINTR

#include "accept_turn.hpp"  // accept_turn
#include "errno.hpp"        // throw_errno
#include "poll.hpp"         // deadline_after, ms_until
#include "time.hpp"         // optional_seconds

namespace socketserver {
namespace detail {

class exclusive_wait {
 public:
  /// Watches fds[0] (a shared socket: exclusive wake-ups) and fds[1..count) (wake-up and
  /// stop descriptors: every waiter sees them). Inactive unless `enable` and fds[0].fd >= 0.
  /// `turn`, if given, is used where EPOLLEXCLUSIVE is not.
  exclusive_wait(const pollfd* fds, int count, bool enable, accept_turn* turn = nullptr) {
#if defined(SOCKETSERVER_LINUX_CALLS) && defined(EPOLLEXCLUSIVE)
    (void)turn;
    if (!enable || fds[0].fd < 0) return;
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return;
    for (int i = 0; i < count; ++i) {
      if (fds[i].fd < 0) continue;
      if (!add(fds[i].fd, i)) {
        close();
        return;
      }
    }
    shared_fd_ = fds[0].fd;
#else
    (void)count;
    if (enable && fds[0].fd >= 0) turn_ = turn;
#endif
  }
  exclusive_wait(const exclusive_wait&) = delete;
  exclusive_wait& operator=(const exclusive_wait&) = delete;
  ~exclusive_wait() { close(); }

  bool active() const noexcept { return epoll_fd_ >= 0 || turn_ != nullptr; }

  /// Moves this waiter to the back of the shared socket's wait queue, behind every other
  /// waiter: call it after a wake-up that found work, before waiting again (see the file
  /// comment). Nothing is missed meanwhile: a connection that comes between the removal and
  /// the new registration wakes another waiter, or is seen by the new registration (which
  /// polls the socket). Two system calls per wake-up that found work. If epoll refuses the
  /// new registration (out of memory), the wait falls back to poll() (active() is false).
  void rotate() noexcept {
#if defined(SOCKETSERVER_LINUX_CALLS) && defined(EPOLLEXCLUSIVE)
    if (epoll_fd_ < 0 || !rotation.load(std::memory_order_relaxed)) return;
    (void)::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, shared_fd_, nullptr);
    if (!add(shared_fd_, 0)) close();
#endif
  }

  /// Whether rotate() rotates (true by default). bench/prefork_balance turns it off to
  /// measure the wake-up order without it, in the same run; nothing else should.
  inline static std::atomic<bool> rotation{true};

  /// Like poll_for() on the descriptors given to the constructor: sets their revents and
  /// returns how many are ready (0 on timeout). Signals are retried with the time left.
  int wait(pollfd* fds, int count, optional_seconds timeout) {
#if defined(SOCKETSERVER_LINUX_CALLS) && defined(EPOLLEXCLUSIVE)
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
    return turn_->wait(fds, count, timeout);
#endif
  }

 private:
  bool add(int fd, int index) noexcept {
#if defined(__linux__) && defined(EPOLLEXCLUSIVE)
    epoll_event ev{};
    ev.events = EPOLLIN | (index == 0 ? EPOLLEXCLUSIVE : 0u);
    ev.data.u32 = static_cast<unsigned>(index);
    return ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
#else
    (void)fd;
    (void)index;
    return false;
#endif
  }
  void close() noexcept {
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    epoll_fd_ = -1;
  }

  int epoll_fd_ = -1;
  [[maybe_unused]] int shared_fd_ = -1;  // fds[0]: the shared socket (epoll only)
  accept_turn* turn_ = nullptr;          // elsewhere
};

}  // namespace detail
}  // namespace socketserver
