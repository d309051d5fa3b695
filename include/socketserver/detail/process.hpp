// SPDX-License-Identifier: MIT
// Child processes: waiting for one to exit without reaping it, and without touching the
// process's other children (ForkingMixIn's requests, PreforkMixIn's workers).
#pragma once

#include <fcntl.h>      // fcntl, F_SETFD, FD_CLOEXEC
#include <sys/types.h>  // pid_t
#include <unistd.h>     // syscall

#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS
#if defined(SOCKETSERVER_LINUX_CALLS)
#  include <sys/syscall.h>  // SYS_pidfd_open
#endif

namespace socketserver {
namespace detail {

/// A descriptor that becomes readable when process `pid` (a child) exits; -1 where the
/// kernel has no pidfd_open().
inline int open_pidfd(pid_t pid) noexcept {
#if defined(SOCKETSERVER_LINUX_CALLS) && defined(SYS_pidfd_open)
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    return static_cast<int>(fd);
  }
#else
  (void)pid;
#endif
  return -1;
}

}  // namespace detail
}  // namespace socketserver
