// SPDX-License-Identifier: MIT
// Descriptor flags: set at creation (socket, accept, pipe: one call on Linux, fcntl()
// after it elsewhere), or changed for a while and put back.
#pragma once

#include <fcntl.h>       // fcntl, F_GETFL, F_SETFL, F_SETFD, FD_CLOEXEC, O_NONBLOCK, O_CLOEXEC
#include <sys/socket.h>  // socket, accept, accept4, setsockopt, SO_NOSIGPIPE
#include <unistd.h>      // pipe, pipe2, close

#include <atomic>  // std::atomic
#include <cerrno>  // errno

#include "platform.hpp"  // SOCKETSERVER_ATOMIC_CLOEXEC

namespace socketserver {
namespace detail {

/// Makes fd close-on-exec, and non-blocking if asked; false (errno set) if fcntl failed.
inline bool set_fd_flags(int fd, bool nonblocking) noexcept {
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) return false;
  if (!nonblocking) return true;
  const int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

/// Closes fd, keeping the errno of the failure that made us give it up.
inline void close_keeping_errno(int fd) noexcept {
  const int err = errno;
  ::close(fd);
  errno = err;
}

/// Where the system has SO_NOSIGPIPE (macOS, the BSDs), a send on fd to a peer that has gone
/// fails with EPIPE instead of raising SIGPIPE, as MSG_NOSIGNAL does per call on Linux (some
/// of those systems have no MSG_NOSIGNAL, and sendfile-like calls take no flags).
inline void set_nosigpipe(int fd) noexcept {
#if defined(SO_NOSIGPIPE)
  const int on = 1;
  (void)::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof on);
#else
  (void)fd;
#endif
}

/// The send() flag that keeps a send to a peer that has gone from raising SIGPIPE: Linux's
/// and the BSDs' MSG_NOSIGNAL; 0 where there is none (older macOS), as SO_NOSIGPIPE does it.
constexpr int msg_nosignal =
#if defined(MSG_NOSIGNAL)
    MSG_NOSIGNAL;
#else
    0;
#endif

/// socket(): close-on-exec, non-blocking if asked, no SIGPIPE. -1 with errno on failure.
inline int open_socket(int family, int type, int protocol, bool nonblocking = false) noexcept {
#if defined(SOCKETSERVER_ATOMIC_CLOEXEC)
  const int fd =
      ::socket(family, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), protocol);
#else
  const int fd = ::socket(family, type, protocol);
  if (fd >= 0 && !set_fd_flags(fd, nonblocking)) {
    close_keeping_errno(fd);
    return -1;
  }
#endif
  if (fd >= 0) set_nosigpipe(fd);
  return fd;
}

/// accept(): the connection is close-on-exec and raises no SIGPIPE (it is blocking, whatever
/// the listening socket is: accept4's rule, which BSD's accept() does not follow alone).
/// -1 with errno on failure; EINTR is not retried here.
inline int accept_socket(int fd, sockaddr* address, socklen_t* len) noexcept {
#if defined(SOCKETSERVER_ATOMIC_CLOEXEC)
  const int client = ::accept4(fd, address, len, SOCK_CLOEXEC);
#else
  const int client = ::accept(fd, address, len);
  if (client >= 0) {
    // BSD's accept() copies O_NONBLOCK from the listening socket; Linux's never does.
    const int flags = ::fcntl(client, F_GETFL);
    if (::fcntl(client, F_SETFD, FD_CLOEXEC) < 0 || flags < 0 ||
        ((flags & O_NONBLOCK) != 0 && ::fcntl(client, F_SETFL, flags & ~O_NONBLOCK) < 0)) {
      close_keeping_errno(client);
      return -1;
    }
  }
#endif
  if (client >= 0) set_nosigpipe(client);
  return client;
}

/// socketpair(): both ends close-on-exec. -1 with errno on failure.
inline int open_socketpair(int family, int type, int fds[2]) noexcept {
#if defined(SOCKETSERVER_ATOMIC_CLOEXEC)
  return ::socketpair(family, type | SOCK_CLOEXEC, 0, fds);
#else
  if (::socketpair(family, type, 0, fds) < 0) return -1;
  if (!set_fd_flags(fds[0], false) || !set_fd_flags(fds[1], false)) {
    close_keeping_errno(fds[0]);
    close_keeping_errno(fds[1]);
    return -1;
  }
  set_nosigpipe(fds[0]);
  set_nosigpipe(fds[1]);
  return 0;
#endif
}

/// The recvmsg() flag that makes descriptors received with SCM_RIGHTS close-on-exec from
/// the start (Linux, the BSDs); 0 where there is none (macOS, the portable mode): then the
/// receiver sets FD_CLOEXEC on each.
constexpr int msg_cmsg_cloexec =
#if defined(MSG_CMSG_CLOEXEC) && defined(SOCKETSERVER_ATOMIC_CLOEXEC)
    MSG_CMSG_CLOEXEC;
#else
    0;
#endif

/// pipe(): both ends close-on-exec, and non-blocking if asked. -1 with errno on failure.
inline int open_pipe(int fds[2], bool nonblocking) noexcept {
#if defined(SOCKETSERVER_ATOMIC_CLOEXEC)
  return ::pipe2(fds, O_CLOEXEC | (nonblocking ? O_NONBLOCK : 0));
#else
  if (::pipe(fds) < 0) return -1;
  if (!set_fd_flags(fds[0], nonblocking) || !set_fd_flags(fds[1], nonblocking)) {
    close_keeping_errno(fds[0]);
    close_keeping_errno(fds[1]);
    return -1;
  }
  return 0;
#endif
}

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
