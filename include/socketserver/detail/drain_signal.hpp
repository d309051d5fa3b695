// SPDX-License-Identifier: MIT
// The "a drain has started" signal a server gives its handlers' rfile and wfile: a flag for
// the threads of this process, and a pipe (readable from then on) that wakes a read waiting
// for the next request in the children a forking server has started. In this process a
// read waiting for the next request blocks in recv() as usual (no extra system call per
// request): the drain ends that wait by shutting the connection down for reading
// (release_waiters(), through the connection's boundary_watch).
#pragma once

#include <poll.h>        // poll, pollfd, POLLIN
#include <sys/socket.h>  // shutdown, SHUT_RD
#include <sys/stat.h>    // fstat, struct stat
#include <unistd.h>      // write, close

#include <atomic>  // std::atomic
#include <mutex>   // std::mutex, std::lock_guard
#include <thread>  // std::this_thread::yield

#include "errno.hpp"
#include "fd.hpp"  // open_pipe
#include "time.hpp"

namespace socketserver {
namespace detail {

class drain_signal;

/// One connection's reads at a request boundary, as the drain sees them: while its reader
/// waits for the next request (in recv(), nothing buffered), the drain may end the wait by
/// shutting the connection down for reading: recv() then returns end of stream, or the
/// request that was already there. StreamRequestHandler keeps one per connection.
class boundary_watch {
 public:
  boundary_watch() = default;
  boundary_watch(const boundary_watch&) = delete;
  boundary_watch& operator=(const boundary_watch&) = delete;
  ~boundary_watch() { unwatch(); }

  /// Makes the connection visible to `signal`'s release_waiters() (once per connection).
  inline void watch(const drain_signal& signal);
  /// The connection ends: the drain no longer sees it.
  inline void unwatch() noexcept;

  /// The reader is about to wait in recv() on `fd` for the next request. False when the
  /// drain has started already (or the watch is not in use here): then it must not block
  /// there, but wait on the signal's descriptor too.
  inline bool begin_wait(int fd) noexcept;
  /// The wait is over; returns whether the drain ended it (shut the connection down).
  bool end_wait() noexcept {
    int state = waiting_.load();
    for (;;) {
      if (state == being_released) {  // release_waiters() is in shutdown(): a system call
        std::this_thread::yield();
        state = waiting_.load();
      } else if (waiting_.compare_exchange_weak(state, not_waiting)) {
        return state == released;
      }
    }
  }

 private:
  friend class drain_signal;
  static constexpr int not_waiting = -1, being_released = -2, released = -3;
  // Shuts the waiting connection down for reading (drain_signal's lock held).
  void release() noexcept {
    int fd = waiting_.load();
    if (fd < 0 || !waiting_.compare_exchange_strong(fd, being_released)) return;
    ::shutdown(fd, SHUT_RD);
    waiting_.store(released);  // the reader closes the descriptor only after this
  }

  std::atomic<int> waiting_{not_waiting};  // the descriptor while the reader waits
  const drain_signal* signal_ = nullptr;   // watched by this signal (in its list)
  boundary_watch* prev_ = this;
  boundary_watch* next_ = this;
};

class drain_signal {
 public:
  drain_signal() {
    int fds[2];
    if (open_pipe(fds, true) < 0) throw_errno("pipe");
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
    started_at_ = clock::now();
    started_.store(true);  // sequentially consistent: see boundary_watch::begin_wait()
    const char one = 1;    // never read: the pipe stays readable, for every waiter
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
  bool is_inherited() const noexcept { return inherited_; }

  /// When start() was called (in this process).
  clock::time_point started_at() const noexcept { return started_at_; }

  /// Ends the waits for a next request of this process's connections (boundary_watch): each
  /// is shut down for reading. drain() calls it once the connections have had their chance
  /// to send a request that was on its way.
  void release_waiters() const noexcept {
    std::lock_guard<std::mutex> lock(watches_mutex_);
    for (boundary_watch* w = watches_.next_; w != &watches_; w = w->next_) w->release();
  }

 private:
  friend class boundary_watch;
  std::atomic<bool> started_{false};
  mutable std::mutex watches_mutex_;  // the list of watched connections
  mutable boundary_watch watches_;    // its sentinel
  bool inherited_ = false;
  clock::time_point started_at_{};
  int read_fd_ = -1;
  int write_fd_ = -1;
  ino_t inode_ = 0;
};

inline void boundary_watch::watch(const drain_signal& signal) {
  unwatch();
  std::lock_guard<std::mutex> lock(signal.watches_mutex_);
  boundary_watch& head = signal.watches_;
  prev_ = head.prev_;
  next_ = &head;
  head.prev_->next_ = this;
  head.prev_ = this;
  signal_ = &signal;
}

inline void boundary_watch::unwatch() noexcept {
  if (signal_ == nullptr) return;
  std::lock_guard<std::mutex> lock(signal_->watches_mutex_);
  prev_->next_ = next_;
  next_->prev_ = prev_;
  prev_ = next_ = this;
  signal_ = nullptr;
}

inline bool boundary_watch::begin_wait(int fd) noexcept {
  // A forked child's copy of the list is not the one its parent's drain walks.
  if (signal_ == nullptr || signal_->is_inherited()) return false;
  waiting_.store(fd);  // then look at the signal: either this sees the drain started, or
  if (!signal_->started_.load()) return true;  // release_waiters() sees this wait
  waiting_.store(not_waiting);
  return false;
}

}  // namespace detail
}  // namespace socketserver
