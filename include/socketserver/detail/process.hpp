// SPDX-License-Identifier: MIT
// Child processes: forking one that may use stdio, and waiting for one to exit without
// reaping it, and without touching the process's other children (ForkingMixIn's requests,
// PreforkMixIn's workers).
#pragma once

#include <fcntl.h>      // fcntl, F_SETFD, FD_CLOEXEC
#include <stdio.h>      // flockfile, funlockfile
#include <sys/types.h>  // pid_t
#include <unistd.h>     // syscall

#include <cerrno>  // errno
#include <cstdio>  // std::fflush, stdout, stderr

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

/// Calls fork(), a call that forks (fork() or a wrapper), for a child that may write to stdout
/// or stderr (a handler's output, handle_error(), the flush before _exit()). Flushes every
/// stream first, or the child would print the parent's buffered output again. Then, unless the
/// C library sees to it itself, holds stdout's and stderr's locks across the fork and releases
/// them in both processes: a stream that another thread was writing to at that moment would
/// otherwise stay locked in the child for good (musl's fork() leaves stdio locks as they are),
/// and the child's first write or fflush() would wait forever. glibc's fork() resets every
/// stream's lock in the child (unlocking it again there would unbalance it): nothing to do.
template <class Fork>
pid_t fork_with_stdio(Fork&& fork) {
  std::fflush(nullptr);
#if defined(__GLIBC__)
  return fork();
#else
  struct locked {
    locked() noexcept {
      ::flockfile(stdout);
      ::flockfile(stderr);
    }
    ~locked() {
      const int saved = errno;  // fork()'s, for the caller
      ::funlockfile(stderr);
      ::funlockfile(stdout);
      errno = saved;
    }
    locked(const locked&) = delete;
    locked& operator=(const locked&) = delete;
  } streams;
  return fork();
#endif
}

}  // namespace detail
}  // namespace socketserver
