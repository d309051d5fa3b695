// SPDX-License-Identifier: MIT
// Descriptor flags changed for a while and put back.
#pragma once

#include <fcntl.h>  // fcntl, F_GETFL, F_SETFL, O_NONBLOCK

#include <atomic>  // std::atomic

namespace socketserver {
namespace detail {

/// Makes a descriptor non-blocking while it lives, then puts its flags back as they were.
/// A descriptor that was non-blocking already is left alone.
class nonblocking_scope {
 public:
  /// `keep`, if given, says at the end whether to leave the descriptor non-blocking: a
  /// socket handed over to another process that serves on it (the flag is the open
  /// socket's, shared with that process).
  explicit nonblocking_scope(int fd, const std::atomic<bool>* keep = nullptr) noexcept
      : keep_(keep) {
    const int flags = fd >= 0 ? ::fcntl(fd, F_GETFL) : -1;
    if (flags < 0) return;  // not a descriptor: nothing to change or restore
    if ((flags & O_NONBLOCK) != 0) {
      nonblocking_ = true;
    } else if (::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0) {
      fd_ = fd;
      flags_ = flags;
      nonblocking_ = true;
    }
  }
  nonblocking_scope(const nonblocking_scope&) = delete;
  nonblocking_scope& operator=(const nonblocking_scope&) = delete;
  ~nonblocking_scope() {
    if (fd_ >= 0 && (keep_ == nullptr || !keep_->load(std::memory_order_acquire)))
      ::fcntl(fd_, F_SETFL, flags_);
  }

  /// Whether the descriptor is non-blocking now.
  bool nonblocking() const noexcept { return nonblocking_; }

 private:
  const std::atomic<bool>* keep_ = nullptr;
  int fd_ = -1;  // the descriptor whose flags to restore
  int flags_ = 0;
  bool nonblocking_ = false;
};

}  // namespace detail
}  // namespace socketserver
