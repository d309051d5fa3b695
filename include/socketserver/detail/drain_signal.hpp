// SPDX-License-Identifier: MIT
// The "a drain has started" signal a server gives its handlers' rfile and wfile: a flag for
// the threads of this process, and a pipe (readable from then on) that wakes a read waiting
// for the next request, also in the children a forking server has started.
#pragma once

#include <fcntl.h>     // O_CLOEXEC, O_NONBLOCK
#include <poll.h>      // poll, pollfd, POLLIN
#include <sys/stat.h>  // fstat, struct stat
#include <unistd.h>    // pipe2, write, close

#include <atomic>  // std::atomic

#include "errno.hpp"

namespace socketserver {
namespace detail {

class drain_signal {
 public:
  drain_signal() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) throw_errno("pipe");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    struct stat st;
    if (::fstat(read_fd_, &st) == 0) inode_ = st.st_ino;
  }
  drain_signal(const drain_signal&) = delete;
  drain_signal& operator=(const drain_signal&) = delete;
  ~drain_signal() {
    ::close(read_fd_);
    ::close(write_fd_);
  }

  /// Raises the signal: started() from now on, fileno() readable. Safe from any thread.
  void start() noexcept {
    started_.store(true, std::memory_order_release);
    const char one = 1;  // never read: the pipe stays readable, for every waiter
    (void)retry_on_eintr([&] { return ::write(write_fd_, &one, 1); });
  }

  /// Whether start() has been called, in this process or (after inherited()) in the parent.
  bool started() const noexcept {
    if (started_.load(std::memory_order_acquire)) return true;
    const int fd = fileno();
    if (!inherited_ || fd < 0) return false;
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
  }

  /// The descriptor to poll for POLLIN, readable once the drain has started; -1 in a forked
  /// child that has closed it (a handler closing its inherited descriptors: the number may
  /// even name another file by now).
  int fileno() const noexcept {
    if (!inherited_) return read_fd_;
    struct stat st;
    return ::fstat(read_fd_, &st) == 0 && st.st_ino == inode_ && S_ISFIFO(st.st_mode) ? read_fd_
                                                                                      : -1;
  }

  /// Marks a forked request child, which shares the pipe with its parent (the parent's
  /// start() shows only there).
  void inherited() noexcept { inherited_ = true; }

 private:
  std::atomic<bool> started_{false};
  bool inherited_ = false;
  int read_fd_ = -1;
  int write_fd_ = -1;
  ino_t inode_ = 0;
};

}  // namespace detail
}  // namespace socketserver
