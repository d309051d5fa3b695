// SPDX-License-Identifier: MIT
// socket_view (a non-owning handle with Python's socket methods) and socket (the owning one).
#pragma once

#include <fcntl.h>       // fcntl, O_NONBLOCK
#include <poll.h>        // pollfd, POLLOUT
#include <sys/socket.h>  // connect, recv, send, sendto, recvfrom, setsockopt, shutdown
#include <sys/time.h>    // timeval
#include <unistd.h>      // close

#include <chrono>        // std::chrono::duration
#include <cstddef>       // std::size_t
#include <optional>      // std::optional
#include <stdexcept>     // std::invalid_argument
#include <string>        // std::string
#include <string_view>   // std::string_view
#include <system_error>  // std::error_code
#include <utility>       // std::pair, std::exchange

#include "address.hpp"
#include "detail/blocking.hpp"
#include "detail/errno.hpp"
#include "detail/fd.hpp"         // open_socket
#include "detail/poll.hpp"       // poll_once
#include "detail/time.hpp"       // optional_seconds
#include "detail/transport.hpp"  // stream_transport

namespace socketserver {

/// A timeout as Python spells it: std::nullopt blocks forever, zero never blocks.
using timeout_type = detail::optional_seconds;

/// A socket file descriptor it does not own, with the methods of Python's socket object.
/// Sends never raise SIGPIPE (MSG_NOSIGNAL, and SO_NOSIGPIPE where the system has it); calls
/// interrupted by a signal are retried. Throwing methods raise std::system_error; a receive
/// that hits the timeout set by settimeout() raises one with std::errc::timed_out.
class socket_view {
 public:
  /// A view of no socket (fileno() is -1).
  socket_view() noexcept = default;
  /// A view of `fd`, which stays owned by someone else.
  explicit socket_view(int fd) noexcept : fd_(fd) {}

  /// The file descriptor, or -1.
  int fileno() const noexcept { return fd_; }
  /// True if it refers to a descriptor (fileno() >= 0).
  bool is_open() const noexcept { return fd_ >= 0; }

  /// The layer the stream calls (recv(), send(), sendall()) go through, e.g. the TLS
  /// session that TLSMixIn sets for the length of a request; nullptr (the default): the
  /// system's calls. Copies of the view carry it. The transport must outlive its use.
  detail::stream_transport* transport() const noexcept { return transport_; }
  /// Sets (or, with nullptr, clears) the layer the stream calls go through.
  void set_transport(detail::stream_transport* transport) noexcept { transport_ = transport; }
  /// Bytes the transport has received and decoded that recv() has not returned yet (0
  /// without a transport): poll() on fileno() does not see them (Python's SSLSocket.pending()).
  std::size_t pending() const noexcept { return transport_ != nullptr ? transport_->pending() : 0; }

  /// Python's connect(): connects the socket to `to`, within the timeout set by settimeout()
  /// (then std::errc::timed_out); a non-blocking socket fails with EINPROGRESS as connect(2)
  /// does. A signal does not fail it (Python's PEP 475): the connection the kernel goes on
  /// making is waited for. Such signals come unasked: under musl, fork() blocks signals for a
  /// moment, and a SIGCHLD arriving then interrupts a call of another thread (a connect() with
  /// a timeout fails with EINTR), so a forking server's process sees them.
  /// @throws std::system_error naming the address if connect() fails.
  void connect(const address& to) const {
    std::error_code ec;
    connect(to, ec);
    if (ec) detail::throw_error(ec, "connect " + to.to_string());
  }
  /// The same without exceptions: on failure `ec` is set.
  void connect(const address& to, std::error_code& ec) const noexcept {
    const auto started = detail::clock::now();
    int err = ::connect(fd_, to.data(), to.size()) == 0 ? 0 : errno;
    if (err == EINTR) err = resume_connect(to, started);
    if ((err == EINPROGRESS || err == EAGAIN || err == EWOULDBLOCK) && !is_nonblocking())
      err = ETIMEDOUT;  // the send timeout passed (Linux says EINPROGRESS, or EAGAIN for Unix)
    if (err == 0)
      ec.clear();
    else
      ec.assign(err, std::system_category());
  }

  /// Receives up to n bytes into buf; returns 0 at end of stream (Python's recv_into()).
  /// @throws std::system_error if recv() fails (std::errc::timed_out after settimeout()).
  std::size_t recv(void* buf, std::size_t n, int flags = 0) const {
    std::error_code ec;
    std::size_t got = recv(buf, n, flags, ec);
    if (ec) detail::throw_error(ec, "recv");
    return got;
  }
  /// The same without exceptions: on failure `ec` is set and 0 returned.
  std::size_t recv(void* buf, std::size_t n, int flags, std::error_code& ec) const noexcept {
    if (__builtin_expect(transport_ != nullptr, 0)) return transport_->recv(buf, n, flags, ec);
    ssize_t got =
        detail::blocking_io(fd_, POLLIN, flags, [&](int f) { return ::recv(fd_, buf, n, f); });
    return finish_io(got, flags, ec);
  }
  /// Receives up to bufsize bytes, as Python's recv(): an empty string means end of stream.
  /// @throws std::system_error if recv() fails (std::errc::timed_out after settimeout()).
  std::string recv(std::size_t bufsize, int flags = 0) const {
    std::string data(bufsize, '\0');
    data.resize(recv(data.data(), bufsize, flags));
    return data;
  }

  /// Python's send(): sends what the kernel takes now; returns how much that was.
  /// @throws std::system_error if send() fails (e.g. EPIPE when the peer has gone).
  std::size_t send(std::string_view data, int flags = 0) const {
    std::error_code ec;
    std::size_t sent = send(data, flags, ec);
    if (ec) detail::throw_error(ec, "send");
    return sent;
  }
  /// The same without exceptions: on failure `ec` is set and 0 returned.
  std::size_t send(std::string_view data, int flags, std::error_code& ec) const noexcept {
    if (__builtin_expect(transport_ != nullptr, 0)) return transport_->send(data, flags, ec);
    ssize_t sent = detail::blocking_io(fd_, POLLOUT, flags, [&](int f) {
      return ::send(fd_, data.data(), data.size(), f | detail::msg_nosignal);
    });
    return finish_io(sent, flags, ec);
  }

  /// Python's sendall(): sends all of data, however many send() calls it takes.
  /// @throws std::system_error if a send() fails.
  void sendall(std::string_view data, int flags = 0) const {
    std::error_code ec;
    sendall(data, flags, ec);
    if (ec) detail::throw_error(ec, "sendall");
  }
  /// The same without exceptions: on failure `ec` is set (some of data may have been sent).
  void sendall(std::string_view data, int flags, std::error_code& ec) const noexcept {
    ec.clear();
    while (!data.empty()) {
      std::size_t sent = send(data, flags, ec);
      if (ec) return;
      data.remove_prefix(sent);
    }
  }

  /// Python's sendto(): sends one datagram to `to`; returns the bytes sent.
  /// @throws std::system_error naming the address if sendto() fails.
  std::size_t sendto(std::string_view data, const address& to, int flags = 0) const {
    ssize_t sent = detail::blocking_io(fd_, POLLOUT, flags, [&](int f) {
      return ::sendto(fd_, data.data(), data.size(), f | detail::msg_nosignal, to.data(),
                      to.size());
    });
    std::error_code ec;
    std::size_t n = finish_io(sent, flags, ec);
    if (ec) detail::throw_error(ec, "sendto " + to.to_string());
    return n;
  }

  /// Python's recvfrom(): receives one datagram of at most bufsize bytes and its sender's
  /// address.
  /// @throws std::system_error if recvfrom() fails.
  std::pair<std::string, address> recvfrom(std::size_t bufsize, int flags = 0) const {
    std::pair<std::string, address> result{std::string(bufsize, '\0'), address()};
    socklen_t len = address::capacity();
    ssize_t got = detail::blocking_io(fd_, POLLIN, flags, [&](int f) {
      len = address::capacity();
      return ::recvfrom(fd_, result.first.data(), bufsize, f, result.second.data(), &len);
    });
    std::error_code ec;
    result.first.resize(finish_io(got, flags, ec));
    if (ec) detail::throw_error(ec, "recvfrom");
    result.second.resize(len);
    return result;
  }

  /// Python's settimeout(): nullopt blocks, zero makes the socket non-blocking, a positive
  /// duration bounds each receive and send (SO_RCVTIMEO/SO_SNDTIMEO).
  /// @throws std::invalid_argument for a negative timeout (the socket is left as it was).
  void settimeout(timeout_type timeout) const {
    if (timeout && timeout->count() < 0)
      throw std::invalid_argument("settimeout: timeout value out of range (negative)");
    const bool nonblocking = timeout && timeout->count() <= 0;
    set_nonblocking(nonblocking);
    timeval tv{};
    if (timeout && !nonblocking) {
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(*timeout).count();
      if (us < 1) us = 1;  // 0 would mean "no timeout"
      tv.tv_sec = static_cast<time_t>(us / 1000000);
      tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
    }
    setsockopt(SOL_SOCKET, SO_RCVTIMEO, tv);
    setsockopt(SOL_SOCKET, SO_SNDTIMEO, tv);
    // (A non-blocking socket on a fiber: setsockopt() told the fiber's loop already.)
  }
  /// Python's gettimeout(): nullopt when blocking without a timeout.
  /// @throws std::system_error if the socket's options cannot be read.
  timeout_type gettimeout() const {
    if (is_nonblocking()) return std::chrono::duration<double>(0);
    timeval tv = getsockopt<timeval>(SOL_SOCKET, SO_RCVTIMEO);
    if (tv.tv_sec == 0 && tv.tv_usec == 0) return std::nullopt;
    return std::chrono::duration<double>(static_cast<double>(tv.tv_sec) +
                                         static_cast<double>(tv.tv_usec) / 1e6);
  }
  /// Python's setblocking(): false is settimeout(0), true is settimeout(nullopt).
  /// @throws std::system_error if the socket's options cannot be set.
  void setblocking(bool blocking) const {
    settimeout(blocking ? timeout_type() : timeout_type(std::chrono::duration<double>(0)));
  }

  /// Python's setsockopt(): sets an option to `value` (an int, a timeval, ...).
  /// @throws std::system_error if setsockopt() fails.
  template <class T>
  void setsockopt(int level, int name, const T& value) const {
    if (::setsockopt(fd_, level, name, &value, sizeof value) < 0) detail::throw_errno("setsockopt");
    if (level == SOL_SOCKET && (name == SO_RCVTIMEO || name == SO_SNDTIMEO) &&
        detail::fiber_waiting != nullptr)
      detail::fiber_waiting->timeout_changed(fd_);  // a fiber's waits honour it too
  }
  /// Python's getsockopt(): reads an option as a T (int by default).
  /// @throws std::system_error if getsockopt() fails.
  template <class T = int>
  T getsockopt(int level, int name) const {
    T value{};
    socklen_t len = sizeof value;
    if (::getsockopt(fd_, level, name, &value, &len) < 0) detail::throw_errno("getsockopt");
    return value;
  }

  /// Python's getsockname(): the address the socket is bound to.
  /// @throws std::system_error if getsockname() fails.
  address getsockname() const {
    address a;
    socklen_t len = address::capacity();
    if (::getsockname(fd_, a.data(), &len) < 0) detail::throw_errno("getsockname");
    a.resize(len);
    return a;
  }
  /// Python's getpeername(): the address of the connected peer.
  /// @throws std::system_error if getpeername() fails (ENOTCONN when not connected).
  address getpeername() const {
    address a;
    socklen_t len = address::capacity();
    if (::getpeername(fd_, a.data(), &len) < 0) detail::throw_errno("getpeername");
    a.resize(len);
    return a;
  }

  /// Python's shutdown(): shutdown(2) with SHUT_RD, SHUT_WR or SHUT_RDWR.
  /// @throws std::system_error if shutdown() fails (e.g. ENOTCONN).
  void shutdown(int how) const {
    std::error_code ec;
    shutdown(how, ec);
    if (ec) detail::throw_error(ec, "shutdown");
  }
  /// The same without exceptions: on failure `ec` is set.
  void shutdown(int how, std::error_code& ec) const noexcept {
    ec = ::shutdown(fd_, how) < 0 ? detail::last_error() : std::error_code();
  }

 protected:
  /// The descriptor, -1 for none.
  int fd_ = -1;
  /// The layer stream calls go through, nullptr for none (see transport()).
  detail::stream_transport* transport_ = nullptr;

 private:
  // A call that times out on a blocking socket with SO_RCVTIMEO/SO_SNDTIMEO reports EAGAIN;
  // say "timed out" as Python does, and keep EAGAIN where not blocking was asked for.
  std::size_t finish_io(ssize_t result, int flags, std::error_code& ec) const noexcept {
    if (result >= 0) {
      ec.clear();
      return static_cast<std::size_t>(result);
    }
    int err = errno;
    if ((err == EAGAIN || err == EWOULDBLOCK) && (flags & MSG_DONTWAIT) == 0 && !is_nonblocking())
      err = ETIMEDOUT;
    ec.assign(err, std::system_category());
    return 0;
  }
  // connect() was interrupted by a signal. Where the kernel goes on connecting (TCP), calling
  // connect() again reports EALREADY, or waits for the outcome (Linux, on a blocking socket),
  // or EISCONN once connected; a Unix socket is left unconnected and simply tries again. Ends
  // by the send timeout counted from `started`; returns an errno value, 0 once connected.
  int resume_connect(const address& to, detail::clock::time_point started) const noexcept {
    timeval tv{};
    socklen_t len = sizeof tv;
    if (::getsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) < 0) return errno;
    const auto limit = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
    const auto deadline =
        limit.count() == 0 ? detail::clock::time_point::max()
                           : started + std::chrono::duration_cast<detail::clock::duration>(limit);
    for (;;) {
      if (::connect(fd_, to.data(), to.size()) == 0) return 0;
      const int err = errno;
      if (err == EISCONN) return 0;
      if (err == EINTR) {
        if (detail::clock::now() >= deadline) return ETIMEDOUT;
        continue;
      }
      if (err != EALREADY && err != EINPROGRESS) return err;
      // Connecting: wait until the socket is writable, then ask how it went.
      pollfd p{fd_, POLLOUT, 0};
      for (;;) {
        const int ready = detail::poll_once(&p, 1, deadline);
        if (ready > 0) break;
        if (ready == 0) return ETIMEDOUT;
        if (errno != EINTR) return errno;
      }
      int outcome = 0;
      len = sizeof outcome;
      if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &outcome, &len) < 0) return errno;
      return outcome;
    }
  }
  bool is_nonblocking() const noexcept {
    int flags = ::fcntl(fd_, F_GETFL);
    return flags >= 0 && (flags & O_NONBLOCK) != 0;
  }
  void set_nonblocking(bool on) const {
    int flags = ::fcntl(fd_, F_GETFL);
    if (flags < 0) detail::throw_errno("fcntl");
    int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    if (wanted != flags && ::fcntl(fd_, F_SETFL, wanted) < 0) detail::throw_errno("fcntl");
  }
};

/// An owning socket: closes its descriptor when destroyed. Move-only. Python's
/// socket.socket, as a handler's `request` and a server's `socket`.
class socket : public socket_view {
 public:
  /// No socket (fileno() is -1).
  socket() noexcept = default;
  /// Takes ownership of fd.
  explicit socket(int fd) noexcept : socket_view(fd) {}
  /// Python's `socket.socket(family, type, proto)`: creates a socket (close-on-exec;
  /// SO_NOSIGPIPE where the system has it).
  /// @throws std::system_error if socket() fails.
  socket(int family, int type, int protocol = 0) {
    fd_ = detail::open_socket(family, type, protocol);
    if (fd_ < 0) detail::throw_errno("socket");
  }
  /// Takes over other's descriptor; other is left closed.
  socket(socket&& other) noexcept : socket_view(std::exchange(other.fd_, -1)) {
    transport_ = std::exchange(other.transport_, nullptr);
  }
  /// Closes this socket, then takes over other's descriptor (and transport); other is left
  /// closed.
  socket& operator=(socket&& other) noexcept {
    if (this != &other) {
      close();
      fd_ = std::exchange(other.fd_, -1);
      transport_ = std::exchange(other.transport_, nullptr);
    }
    return *this;
  }
  socket(const socket&) = delete;
  socket& operator=(const socket&) = delete;
  ~socket() { close(); }

  /// Python's close(): closes the descriptor; fileno() is -1 afterwards. Closing twice is harmless.
  void close() noexcept {
    // No EINTR retry: on Linux the descriptor is released even when close() is interrupted.
    transport_ = nullptr;
    if (fd_ < 0) return;
    if (detail::fiber_waiting != nullptr) detail::fiber_waiting->closing(fd_);
    ::close(std::exchange(fd_, -1));
  }
  /// Python's detach(): gives up ownership and returns the descriptor.
  int detach() noexcept {
    transport_ = nullptr;
    return std::exchange(fd_, -1);
  }
};

}  // namespace socketserver
