// SPDX-License-Identifier: MIT
// fiber_poller: what a fiber loop waits in. epoll on Linux, kqueue on the BSDs and macOS,
// poll() elsewhere (or anywhere with SOCKETSERVER_FIBER_POLL, for the tests; every
// translation unit of a program must then agree on it). The loop registers three kinds of
// interest, each with a tag it gets back with the event:
//   owned   a connection its fibers use: reading and writing, edge-triggered where the
//           system can, for as long as it is open (one registration, not one per wait)
//   shared  the server's socket, which every loop waits on: reading, one loop woken per
//           event where the system can (EPOLLEXCLUSIVE)
//   once    any other descriptor a fiber waits for: one shot, removed after the wait
// poll() has no registrations: it asks the loop which descriptors someone waits on now.
#pragma once

#include <fcntl.h>   // fcntl, FD_CLOEXEC
#include <poll.h>    // poll, pollfd, POLLIN, POLLOUT, POLLERR, POLLHUP
#include <unistd.h>  // close

#include <cerrno>        // errno, EEXIST, EINTR, EPERM
#include <cstdint>       // std::uint64_t, std::uintptr_t
#include <string>        // std::to_string
#include <system_error>  // std::system_error
#include <vector>        // std::vector

#include "errno.hpp"     // throw_errno
#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS

#if defined(SOCKETSERVER_PORTABLE) && !defined(SOCKETSERVER_FIBER_POLL)
#  define SOCKETSERVER_FIBER_POLL 1  // the portable build tests the poll() backend
#endif
#if !defined(SOCKETSERVER_FIBER_POLL)
#  if defined(SOCKETSERVER_LINUX_CALLS)
#    include <sys/epoll.h>  // epoll_create1, epoll_ctl, epoll_wait
#    define SOCKETSERVER_FIBER_EPOLL 1
#  elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || \
      defined(__NetBSD__) || defined(__DragonFly__)
#    include <sys/event.h>  // kqueue, kevent, EV_SET
#    include <sys/time.h>   // timespec
#    define SOCKETSERVER_FIBER_KQUEUE 1
#  else
#    define SOCKETSERVER_FIBER_POLL 1
#  endif
#endif

namespace socketserver {
namespace detail {

class fiber_poller {
 public:
  /// How add_once() went: registered; the descriptor is in the set already (the caller
  /// waits on a duplicate instead); or it cannot be waited for (a regular file: as poll()
  /// says, always ready).
  enum class added { yes, exists, unwatchable };

  /// Which system call this build waits in.
  static constexpr const char* backend =
#if defined(SOCKETSERVER_FIBER_EPOLL)
      "epoll";
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
      "kqueue";
#else
      "poll";
#endif

  /// Whether add_once() must always be given a descriptor of its own (a duplicate): kqueue
  /// keys an interest by descriptor and filter, so a second one would replace the first.
  static constexpr bool once_needs_own_descriptor =
#if defined(SOCKETSERVER_FIBER_KQUEUE)
      true;
#else
      false;
#endif

  fiber_poller() {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd_ < 0) throw_errno("epoll_create1");
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    fd_ = ::kqueue();
    if (fd_ < 0) throw_errno("kqueue");
    (void)::fcntl(fd_, F_SETFD, FD_CLOEXEC);
#endif
  }
  fiber_poller(const fiber_poller&) = delete;
  fiber_poller& operator=(const fiber_poller&) = delete;
  ~fiber_poller() {
    if (fd_ >= 0) ::close(fd_);
  }

  /// The loop's own wake-up descriptor: reading, level-triggered, for the poller's life.
  void add_wakeup(int fd, std::uint64_t tag) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) < 0) throw_errno("epoll_ctl add (loop wake-up)");
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    struct kevent change;
    EV_SET(&change, fd, EVFILT_READ, EV_ADD, 0, 0, as_udata(tag));
    if (::kevent(fd_, &change, 1, nullptr, 0, nullptr) < 0)
      throw_errno("kevent add (loop wake-up)");
#else
    wakeup_ = {fd, tag};
#endif
  }

  /// @throws std::system_error naming the descriptor.
  void add_owned(int fd, std::uint64_t tag) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = tag;
    if (::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) < 0 && errno != EEXIST)
      throw_errno("epoll_ctl add (connection " + std::to_string(fd) + ")");
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    struct kevent changes[2];
    EV_SET(&changes[0], fd, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, as_udata(tag));
    EV_SET(&changes[1], fd, EVFILT_WRITE, EV_ADD | EV_CLEAR, 0, 0, as_udata(tag));
    if (::kevent(fd_, changes, 2, nullptr, 0, nullptr) < 0)
      throw_errno("kevent add (connection " + std::to_string(fd) + ")");
#else
    track(fd, tag);
#endif
  }

  /// @throws std::system_error naming the descriptor.
  void add_shared(int fd, std::uint64_t tag) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.u64 = tag;
    if (::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) < 0)
      throw_errno("epoll_ctl add (server socket " + std::to_string(fd) + ")");
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    struct kevent change;  // every loop is woken: the ones that find nothing wait again
    EV_SET(&change, fd, EVFILT_READ, EV_ADD, 0, 0, as_udata(tag));
    if (::kevent(fd_, &change, 1, nullptr, 0, nullptr) < 0)
      throw_errno("kevent add (server socket " + std::to_string(fd) + ")");
#else
    track(fd, tag);
#endif
  }

  /// Interest in `events` (POLLIN, POLLOUT) on fd, once.
  /// @throws std::system_error for anything but the cases of `added`.
  added add_once(int fd, short events, std::uint64_t tag) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    epoll_event ev{};
    ev.events = EPOLLONESHOT;
    if ((events & POLLIN) != 0) ev.events |= EPOLLIN | EPOLLRDHUP;
    if ((events & POLLOUT) != 0) ev.events |= EPOLLOUT;
    ev.data.u64 = tag;
    if (::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) == 0) return added::yes;
    if (errno == EEXIST) return added::exists;
    if (errno == EPERM) return added::unwatchable;
    throw_errno("epoll_ctl add (wait on descriptor " + std::to_string(fd) + ")");
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    struct kevent changes[2];
    int n = 0;
    if ((events & POLLIN) != 0)
      EV_SET(&changes[n++], fd, EVFILT_READ, EV_ADD | EV_ONESHOT, 0, 0, as_udata(tag));
    if ((events & POLLOUT) != 0)
      EV_SET(&changes[n++], fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT, 0, 0, as_udata(tag));
    if (::kevent(fd_, changes, n, nullptr, 0, nullptr) == 0) return added::yes;
    if (errno == EINVAL || errno == ENODEV) return added::unwatchable;
    throw_errno("kevent add (wait on descriptor " + std::to_string(fd) + ")");
#else
    once_.push_back({fd, events, tag});
    return added::yes;
#endif
  }

  /// Ends an add_once() interest (whether or not it fired).
  void remove_once(int fd, short events, std::uint64_t tag) noexcept {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    (void)events;
    (void)tag;
    (void)::epoll_ctl(fd_, EPOLL_CTL_DEL, fd, nullptr);
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    (void)tag;
    remove_filters(fd, events);
#else
    (void)events;
    for (std::size_t i = 0; i < once_.size(); ++i)
      if (once_[i].tag == tag && once_[i].fd == fd) {
        once_[i] = once_.back();
        once_.pop_back();
        return;
      }
#endif
  }

  /// Ends an add_owned() or add_shared() interest.
  void remove(int fd) noexcept {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    (void)::epoll_ctl(fd_, EPOLL_CTL_DEL, fd, nullptr);
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    remove_filters(fd, POLLIN | POLLOUT);
#else
    if (fd < 0 || static_cast<std::size_t>(fd) >= slot_of_.size()) return;
    const int slot = slot_of_[static_cast<std::size_t>(fd)];
    if (slot < 0) return;
    slot_of_[static_cast<std::size_t>(fd)] = -1;
    tracked_[static_cast<std::size_t>(slot)] = tracked_.back();
    tracked_.pop_back();
    if (static_cast<std::size_t>(slot) < tracked_.size())
      slot_of_[static_cast<std::size_t>(tracked_[static_cast<std::size_t>(slot)].fd)] = slot;
#endif
  }

  /// Waits up to timeout_ms (-1: no limit) and calls on_event(tag, readable, writable) for
  /// each event (a hang-up or an error is both). `waiting_for(tag)` says which of POLLIN and
  /// POLLOUT someone waits for now on an owned or shared descriptor (poll() only; the
  /// others keep their registrations).
  template <class WaitingFor, class OnEvent>
  void wait(int timeout_ms, WaitingFor waiting_for, OnEvent on_event) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    (void)waiting_for;
    epoll_event events[256];
    const int n = ::epoll_wait(fd_, events, 256, timeout_ms);
    if (n < 0 && errno != EINTR) throw_errno("epoll_wait");
    for (int i = 0; i < n; ++i) {
      const std::uint32_t e = events[i].events;
      on_event(events[i].data.u64, (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0,
               (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0);
    }
#elif defined(SOCKETSERVER_FIBER_KQUEUE)
    (void)waiting_for;
    struct kevent events[256];
    timespec ts{timeout_ms / 1000, static_cast<long>(timeout_ms % 1000) * 1000000L};
    const int n = ::kevent(fd_, nullptr, 0, events, 256, timeout_ms < 0 ? nullptr : &ts);
    if (n < 0 && errno != EINTR) throw_errno("kevent");
    for (int i = 0; i < n; ++i) {
      const bool failed = (events[i].flags & EV_ERROR) != 0;
      const std::uint64_t tag = reinterpret_cast<std::uintptr_t>(events[i].udata);
      on_event(tag, failed || events[i].filter == EVFILT_READ,
               failed || events[i].filter == EVFILT_WRITE);
    }
#else
    fds_.clear();
    tags_.clear();
    fds_.push_back({wakeup_.fd, POLLIN, 0});
    tags_.push_back(wakeup_.tag);
    for (const interest& i : tracked_) {
      const short events = waiting_for(i.tag);
      if (events == 0) continue;
      fds_.push_back({i.fd, events, 0});
      tags_.push_back(i.tag);
    }
    for (const once& o : once_) {
      fds_.push_back({o.fd, o.events, 0});
      tags_.push_back(o.tag);
    }
    const int n = ::poll(fds_.data(), static_cast<nfds_t>(fds_.size()), timeout_ms);
    if (n < 0 && errno != EINTR) throw_errno("poll");
    for (std::size_t i = 0; n > 0 && i < fds_.size(); ++i) {
      const short r = fds_[i].revents;
      if (r == 0) continue;
      const bool failed = (r & (POLLHUP | POLLERR | POLLNVAL)) != 0;
      on_event(tags_[i], failed || (r & POLLIN) != 0, failed || (r & POLLOUT) != 0);
    }
#endif
  }

 private:
#if defined(SOCKETSERVER_FIBER_KQUEUE)
  static void* as_udata(std::uint64_t tag) noexcept {
    return reinterpret_cast<void*>(static_cast<std::uintptr_t>(tag));
  }
  void remove_filters(int fd, short events) noexcept {
    struct kevent change;
    if ((events & POLLIN) != 0) {
      EV_SET(&change, fd, EVFILT_READ, EV_DELETE, 0, 0, nullptr);
      (void)::kevent(fd_, &change, 1, nullptr, 0, nullptr);  // ENOENT: fired or closed
    }
    if ((events & POLLOUT) != 0) {
      EV_SET(&change, fd, EVFILT_WRITE, EV_DELETE, 0, 0, nullptr);
      (void)::kevent(fd_, &change, 1, nullptr, 0, nullptr);
    }
  }
#endif
#if defined(SOCKETSERVER_FIBER_POLL)
  struct interest {
    int fd;
    std::uint64_t tag;
  };
  struct once {
    int fd;
    short events;
    std::uint64_t tag;
  };
  void track(int fd, std::uint64_t tag) {
    const auto i = static_cast<std::size_t>(fd);
    if (i >= slot_of_.size())
      slot_of_.resize(i + 1 > 2 * slot_of_.size() ? i + 1 : 2 * slot_of_.size(), -1);
    if (slot_of_[i] >= 0) {
      tracked_[static_cast<std::size_t>(slot_of_[i])].tag = tag;
      return;
    }
    slot_of_[i] = static_cast<int>(tracked_.size());
    tracked_.push_back({fd, tag});
  }
  interest wakeup_{-1, 0};
  std::vector<interest> tracked_;  // owned and shared descriptors
  std::vector<int> slot_of_;       // index in tracked_ by descriptor, -1 for none
  std::vector<once> once_;
  std::vector<pollfd> fds_;
  std::vector<std::uint64_t> tags_;
#endif
  int fd_ = -1;
};

}  // namespace detail
}  // namespace socketserver
