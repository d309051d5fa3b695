// SPDX-License-Identifier: MIT
// A descriptor that another thread can make readable, so shutdown() wakes poll() at once
// instead of waiting for the poll interval (CPython's 0.5 s).
#pragma once

#include <unistd.h>  // read, write, close

#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS
#if defined(SOCKETSERVER_LINUX_CALLS)
#  include <sys/eventfd.h>  // eventfd
#endif

#include <cstdint>  // std::uint64_t

#include "errno.hpp"  // throw_errno, retry_on_eintr
#include "fd.hpp"     // open_pipe

namespace socketserver {
namespace detail {

class wakeup {
 public:
  wakeup() { open(); }
  wakeup(const wakeup&) = delete;
  wakeup& operator=(const wakeup&) = delete;
  ~wakeup() { close(); }

  /// A fresh descriptor, not shared with the parent: for a forked child, whose copy of the
  /// old one would wake the parent's loop and every other child's.
  void reset() {
    close();
    open();
  }

  /// The descriptor to poll for POLLIN.
  int fileno() const noexcept { return read_fd_; }

  /// Makes fileno() readable. Safe from any thread; never blocks.
  void notify() noexcept {
    const std::uint64_t one = 1;
    // A full pipe or a saturated counter already means "readable": nothing to retry.
    (void)retry_on_eintr([&] { return ::write(write_fd_, &one, sizeof one); });
  }

  /// Makes fileno() unreadable again.
  void drain() noexcept {
    std::uint64_t buf[8];
    while (retry_on_eintr([&] { return ::read(read_fd_, buf, sizeof buf); }) > 0) {
    }
  }

 private:
  void open() {
#if defined(SOCKETSERVER_LINUX_CALLS)
    read_fd_ = write_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (read_fd_ < 0) throw_errno("eventfd");
#else
    int fds[2];
    if (open_pipe(fds, true) < 0) throw_errno("pipe");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
#endif
  }
  void close() noexcept {
    if (write_fd_ != read_fd_ && write_fd_ >= 0) ::close(write_fd_);
    if (read_fd_ >= 0) ::close(read_fd_);
    read_fd_ = write_fd_ = -1;
  }

  int read_fd_ = -1;
  int write_fd_ = -1;
};

}  // namespace detail
}  // namespace socketserver
