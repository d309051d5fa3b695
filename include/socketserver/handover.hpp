// SPDX-License-Identifier: MIT
// Restarts that lose no connection, without systemd: a running server starts a new process
// of its program and hands it its listening sockets over a Unix socket (SCM_RIGHTS, as
// HAProxy's `expose-fd listeners` and `-x`); once the new process serves, the old one stops
// and lets its requests in flight finish. The listening socket never closes, so every
// connection queued on it is served by one process or the other.
#pragma once

#include <fcntl.h>       // fcntl, F_GETFD, F_SETFD, FD_CLOEXEC
#include <poll.h>        // pollfd, POLLIN
#include <signal.h>      // kill, SIGKILL, sigset_t, sigemptyset, sigprocmask
#include <sys/socket.h>  // socketpair, sendmsg, recvmsg, SCM_RIGHTS, CMSG_*
#include <sys/types.h>   // pid_t
#include <sys/uio.h>     // iovec
#include <sys/wait.h>    // waitpid
#include <unistd.h>      // fork, execve, close, _exit

#include <cerrno>        // errno, ETIMEDOUT, ECONNRESET
#include <chrono>        // std::chrono
#include <cstddef>       // std::size_t
#include <cstdlib>       // std::getenv, std::strtol, unsetenv
#include <cstring>       // std::memcpy, std::strncmp, std::strlen
#include <string>        // std::string, std::to_string
#include <system_error>  // std::system_error
#include <vector>        // std::vector

#include "detail/errno.hpp"  // throw_errno, throw_error, retry_on_eintr
#include "detail/fd.hpp"     // open_socketpair, msg_cmsg_cloexec
#include "detail/poll.hpp"   // poll_for

extern char** environ;  // NOLINT: POSIX declares it only with _GNU_SOURCE on some systems

namespace socketserver {

/// The environment variable naming the descriptor of the Unix socket over which a process
/// started by hand_over_listeners() gets its predecessor's listening sockets.
constexpr const char* handover_variable = "SOCKETSERVER_HANDOVER_FD";

/// Sends `fds` over the connected Unix stream socket `channel` in one message (SCM_RIGHTS,
/// with one byte of data). The receiver gets new descriptors for the same open sockets.
/// @throws std::system_error naming the operation.
inline void send_descriptors(int channel, const std::vector<int>& fds) {
  char byte = 'F';
  iovec iov{&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<cmsghdr> control;  // cmsghdr elements: aligned as the header needs
  if (!fds.empty()) {
    const std::size_t bytes = CMSG_SPACE(sizeof(int) * fds.size());
    control.resize((bytes + sizeof(cmsghdr) - 1) / sizeof(cmsghdr));
    msg.msg_control = control.data();
    msg.msg_controllen = bytes;
    cmsghdr* header = CMSG_FIRSTHDR(&msg);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(header), fds.data(), sizeof(int) * fds.size());
  }
  if (detail::retry_on_eintr([&] { return ::sendmsg(channel, &msg, MSG_NOSIGNAL); }) < 0)
    detail::throw_errno("sendmsg (hand over " + std::to_string(fds.size()) + " descriptors on " +
                        std::to_string(channel) + ")");
}

/// Receives the descriptors send_descriptors() sent on `channel` (at most `max`; they are
/// close-on-exec), waiting at most `timeout`.
/// @throws std::system_error on a timeout (ETIMEDOUT), if the peer closed first
///         (ECONNRESET), or if more than `max` came (EMSGSIZE: none is kept).
inline std::vector<int> receive_descriptors(int channel, std::size_t max,
                                            std::chrono::duration<double> timeout) {
  const std::string what = "receive handed-over descriptors on " + std::to_string(channel);
  pollfd p{channel, POLLIN, 0};
  if (detail::poll_for(&p, 1, timeout) == 0)
    detail::throw_error(std::make_error_code(std::errc::timed_out), what);
  char byte = 0;
  iovec iov{&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  const std::size_t bytes = CMSG_SPACE(sizeof(int) * (max == 0 ? 1 : max));
  std::vector<cmsghdr> control((bytes + sizeof(cmsghdr) - 1) / sizeof(cmsghdr));
  msg.msg_control = control.data();
  msg.msg_controllen = bytes;
  const ssize_t n =
      detail::retry_on_eintr([&] { return ::recvmsg(channel, &msg, detail::msg_cmsg_cloexec); });
  if (n < 0) detail::throw_errno(what);
  std::vector<int> fds;
  // musl's CMSG_NXTHDR compares a size_t with a ptrdiff_t: its -Wsign-compare is not ours.
#if defined(__GNUC__)
#  pragma GCC diagnostic push
#  pragma GCC diagnostic ignored "-Wsign-compare"
#endif
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (detail::msg_cmsg_cloexec == 0) (void)::fcntl(fd, F_SETFD, FD_CLOEXEC);
      fds.push_back(fd);
    }
  }
#if defined(__GNUC__)
#  pragma GCC diagnostic pop
#endif
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() > max) {  // (padding may fit one more)
    for (int fd : fds) ::close(fd);
    detail::throw_error(std::make_error_code(std::errc::message_size),
                        what + ": more than " + std::to_string(max));
  }
  if (n == 0 && fds.empty())
    detail::throw_error(std::make_error_code(std::errc::connection_reset),
                        what + ": the predecessor closed the channel");
  return fds;
}

/// In a running server: starts `argv` (argv[0] is the program executed: the path where the
/// new version is installed, or "/proc/self/exe" for this binary again) as its successor, with this
/// process's environment and handover_variable naming a Unix socket over which it receives
/// `listeners` (handed_over_listeners()). Returns the successor's pid once it has called
/// handover_ready(); then stop serving and let the requests in flight finish, leaving the
/// sockets to it: server.socket_handed_over(), shutdown(), drain(grace).
/// The successor starts with no signal blocked and every descriptor but the channel closed
/// (the library's descriptors are close-on-exec). It is this process's child: it outlives
/// it.
/// @throws std::system_error if it cannot be started, exits, or is not ready within
///         `timeout` (it is then killed): this process goes on serving.
inline pid_t hand_over_listeners(const std::vector<int>& listeners,
                                 const std::vector<std::string>& argv,
                                 std::chrono::duration<double> timeout = std::chrono::seconds(10)) {
  if (argv.empty())
    detail::throw_error(std::make_error_code(std::errc::invalid_argument),
                        "hand_over_listeners: no program");
  int pair[2];
  if (detail::open_socketpair(AF_UNIX, SOCK_STREAM, pair) < 0)
    detail::throw_errno("socketpair (hand over listeners)");
  // Everything the child needs is built before fork(): between fork() and execve() a
  // child of a threaded process may only make async-signal-safe calls.
  const std::string name = handover_variable;
  std::vector<std::string> environment;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e)
    if (std::strncmp(*e, (name + "=").c_str(), name.size() + 1) != 0) environment.push_back(*e);
  environment.push_back(name + "=" + std::to_string(pair[1]));
  std::vector<char*> envp, args;
  for (auto& e : environment) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(pair[0]);
    ::close(pair[1]);
    detail::throw_error(std::error_code(err, std::system_category()), "fork (hand over listeners)");
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::fcntl(pair[1], F_SETFD, 0);  // the channel, alone, survives execve()
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::close(pair[1]);
  auto give_up = [&](const std::string& why, std::error_code code) {
    ::kill(pid, SIGKILL);
    int status = 0;
    detail::retry_on_eintr([&] { return ::waitpid(pid, &status, 0); });
    ::close(pair[0]);
    detail::throw_error(
        code, "hand over listeners to " + argv[0] + " (pid " + std::to_string(pid) + "): " + why);
  };
  try {
    send_descriptors(pair[0], listeners);
  } catch (const std::system_error& e) {
    give_up(e.what(), e.code());
  }
  pollfd p{pair[0], POLLIN, 0};
  if (detail::poll_for(&p, 1, timeout) == 0)
    give_up("not ready in time", std::make_error_code(std::errc::timed_out));
  char ready = 0;
  const ssize_t n = detail::retry_on_eintr([&] { return ::recv(pair[0], &ready, 1, 0); });
  if (n != 1 || ready != 'R')
    give_up("it ended before it was ready", std::make_error_code(std::errc::connection_reset));
  ::close(pair[0]);
  return pid;
}

/// In a process started by hand_over_listeners(): the listening sockets its predecessor
/// handed over (in the order given, close-on-exec; adopt each with adopt_socket()); none in
/// a process started otherwise. Then serve, and call handover_ready().
/// @throws std::system_error if the predecessor sends nothing within `timeout`.
inline std::vector<int> handed_over_listeners(
    std::chrono::duration<double> timeout = std::chrono::seconds(10)) {
  const char* text = std::getenv(handover_variable);
  if (text == nullptr) return {};
  const int channel = static_cast<int>(std::strtol(text, nullptr, 10));
  if (::fcntl(channel, F_SETFD, FD_CLOEXEC) < 0) {  // not open: the variable was not for us
    ::unsetenv(handover_variable);
    return {};
  }
  return receive_descriptors(channel, 64, timeout);
}

/// In a process started by hand_over_listeners(), once it serves on the sockets handed over
/// (or is about to: connections wait in their backlog meanwhile): tells the predecessor,
/// which then stops. Does nothing in a process started otherwise.
inline void handover_ready() noexcept {
  const char* text = std::getenv(handover_variable);
  if (text == nullptr) return;
  const int channel = static_cast<int>(std::strtol(text, nullptr, 10));
  ::unsetenv(handover_variable);
  const char ready = 'R';
  (void)detail::retry_on_eintr([&] { return ::send(channel, &ready, 1, MSG_NOSIGNAL); });
  ::close(channel);
}

}  // namespace socketserver
