// SPDX-License-Identifier: MIT
// Socket activation: serve on a listening socket inherited from a parent process or from
// systemd (LISTEN_FDS / LISTEN_PID), instead of binding one.
#pragma once

#include <fcntl.h>   // fcntl, FD_CLOEXEC
#include <unistd.h>  // getpid

#include <cerrno>   // errno
#include <cstdlib>  // std::getenv, std::strtol, unsetenv
#include <string>   // std::string
#include <vector>   // std::vector

namespace socketserver {

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
constexpr int listen_fds_start = 3;

/// The listening descriptors passed by systemd's socket activation protocol: LISTEN_FDS
/// descriptors from 3 on, if LISTEN_PID names this process (else none, as the variables
/// were meant for another process). The descriptors are made close-on-exec. With
/// unset_environment, LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed so that child
/// processes do not take them for theirs. Hand each descriptor to a server with
/// adopt_socket().
inline std::vector<int> listen_fds(bool unset_environment = true) {
  std::vector<int> fds;
  const char* pid_text = std::getenv("LISTEN_PID");
  const char* count_text = std::getenv("LISTEN_FDS");
  if (pid_text != nullptr && count_text != nullptr &&
      std::strtol(pid_text, nullptr, 10) == static_cast<long>(::getpid())) {
    const long count = std::strtol(count_text, nullptr, 10);
    for (long i = 0; i < count && i < 4096; ++i) {
      const int fd = listen_fds_start + static_cast<int>(i);
      const int flags = ::fcntl(fd, F_GETFD);
      if (flags < 0) continue;  // not open: the environment lied
      ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
      fds.push_back(fd);
    }
  }
  if (unset_environment) {
    ::unsetenv("LISTEN_PID");
    ::unsetenv("LISTEN_FDS");
    ::unsetenv("LISTEN_FDNAMES");
  }
  return fds;
}

}  // namespace socketserver
