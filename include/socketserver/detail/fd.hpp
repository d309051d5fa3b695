// SPDX-License-Identifier: MIT
// Descriptor flags changed for a while and put back.
#pragma once

#include <fcntl.h>  // fcntl, F_GETFL, F_SETFL, O_NONBLOCK

namespace socketserver {
namespace detail {

/// Makes a descriptor non-blocking while it lives, then puts its flags back as they were.
/// A descriptor that was non-blocking already is left alone.
class nonblocking_scope {
 public:
  explicit nonblocking_scope(int fd) noexcept {
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
    if (fd_ >= 0) ::fcntl(fd_, F_SETFL, flags_);
  }

  /// Whether the descriptor is non-blocking now.
  bool nonblocking() const noexcept { return nonblocking_; }

 private:
  int fd_ = -1;  // the descriptor whose flags to restore
  int flags_ = 0;
  bool nonblocking_ = false;
};

}  // namespace detail
}  // namespace socketserver
