// SPDX-License-Identifier: MIT
// BaseServer: the serve_forever loop, shutdown, handle_request and the request hooks.
#pragma once

#include <fcntl.h>        // fcntl, O_NONBLOCK, pipe2
#include <poll.h>         // pollfd, POLLIN, POLLNVAL
#include <sys/syscall.h>  // SYS_pidfd_open
#include <sys/wait.h>     // waitpid, WNOHANG
#include <unistd.h>       // syscall, getpid, _exit

#include <algorithm>     // std::min
#include <atomic>        // std::atomic
#include <chrono>        // std::chrono
#include <cstddef>       // std::size_t
#include <cstdio>        // std::fprintf, stderr
#include <cstdlib>       // std::free
#include <exception>     // std::exception, std::current_exception, std::rethrow_exception
#include <map>           // std::map
#include <optional>      // std::optional
#include <stdexcept>     // std::invalid_argument
#include <string>        // std::string, std::to_string
#include <system_error>  // std::system_error
#include <type_traits>   // std::false_type, std::void_t
#include <typeinfo>      // typeid
#include <utility>       // std::pair, std::move
#include <vector>        // std::vector
#if defined(__GNUG__)
#  include <cxxabi.h>  // abi::__cxa_demangle, abi::__cxa_current_exception_type
#endif

#include "address.hpp"
#include "detail/exclusive_wait.hpp"
#include "detail/poll.hpp"
#include "handlers.hpp"
#include "server_base.hpp"
#include "socket.hpp"

namespace socketserver {

namespace detail {

inline std::string demangle(const char* name) {
#if defined(__GNUG__)
  int status = 0;
  char* readable = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status == 0 && readable != nullptr) {
    std::string result = readable;
    std::free(readable);
    return result;
  }
#endif
  return name;
}

/// "std::runtime_error: boom" for the exception being handled (call inside a catch block).
inline std::string describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return demangle(typeid(e).name()) + ": " + e.what();
  } catch (...) {
#if defined(__GNUG__)
    if (const std::type_info* type = abi::__cxa_current_exception_type())
      return "exception of type " + demangle(type->name());
#endif
    return "unknown exception";
  }
}

/// True for get_request() failures that mean "out of a resource": retrying at once would
/// fail again, so the serve loop pauses accepting for a while.
inline bool is_resource_exhaustion(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case ENOMEM:
      return true;
    default:
      return false;
  }
}

/// True for get_request() failures that no retry can mend: the socket cannot accept at
/// all (not listening: server_activate() was skipped; not a socket; closed). serve_forever()
/// raises them instead of spinning.
inline bool is_fatal_get_request_error(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EINVAL:
    case EBADF:
    case ENOTSOCK:
    case EOPNOTSUPP:
    case EFAULT:
      return true;
    default:
      return false;
  }
}

/// True for get_request() failures that concern only the one request (the peer left before
/// accept, another process took the connection, a signal): CPython drops them silently.
inline bool is_transient(const std::error_code& ec) noexcept {
  if (ec.category() != std::system_category()) return false;
  switch (ec.value()) {
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case EINTR:
    case ECONNABORTED:
    case ECONNRESET:
    case ECONNREFUSED:  // a UDP socket hearing ICMP "port unreachable" for an earlier reply
    case EPROTO:
    case EPERM:  // a firewall rule refused the connection
    case ETIMEDOUT:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

/// A descriptor that becomes readable when process `pid` (a child) exits; -1 where the
/// kernel has no pidfd_open().
inline int open_pidfd(pid_t pid) noexcept {
#if defined(SYS_pidfd_open)
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

/// True when Server has the non-throwing get_request(request, client_address, ec) of the
/// library's servers, i.e. Derived did not redefine get_request() (which hides it).
template <class Server, class Request, class = void>
struct has_nothrow_get_request : std::false_type {};
template <class Server, class Request>
struct has_nothrow_get_request<
    Server, Request,
    std::void_t<decltype(std::declval<Server&>().get_request(
        std::declval<Request&>(), std::declval<address&>(), std::declval<std::error_code&>()))>>
    : std::true_type {};

/// The part of serve_loop() that runs one thread at a time when several threads run the loop
/// at once (ThreadPoolMixIn): get_request() with verify_request(), and service_actions().
/// This one is for the usual single loop, which needs no lock.
struct single_loop {
  bool shared() const noexcept { return false; }  // other threads wait on the same socket
  void enter() noexcept {}
  void leave() noexcept {}
  // The loop looked for a request and found none; false ends the loop.
  bool nothing_waiting() noexcept { return true; }
};

}  // namespace detail

/// Base class for server classes (Python's BaseServer), with the hooks as CRTP customisation
/// points: `Derived` (the most derived server) may redefine any of them; BaseServer calls
/// them through Derived, so no call is virtual.
///
/// Methods for the caller:
///   serve_forever(poll_interval), shutdown(), handle_request(), server_close(), fileno()
///
/// Methods that may be overridden:
///   server_bind(), server_activate(), get_request() -> {request, client_address},
///   verify_request(request, client_address), process_request(request, client_address),
///   finish_request(request, client_address), shutdown_request(request),
///   close_request(request), handle_error(request, client_address), handle_timeout(),
///   service_actions(), server_close(), handle_get_request_error(error)
///
/// Instance variables: server_address, socket, timeout (and RequestHandlerClass as a type).
template <class Derived, class Handler, class Request>
class BaseServer : public server_base {
 public:
  using RequestHandlerClass = Handler;
  using request_type = Request;

  /// The address the server is bound to: after server_bind(), the real one (port 0 becomes
  /// the port the kernel picked).
  address server_address;

  explicit BaseServer(address addr) : server_address(std::move(addr)) {}

  /// Handles one request at a time until shutdown(). Polls for requests (and for shutdown's
  /// wake-up) and calls service_actions() at least every poll_interval.
  /// @throws std::system_error if the server socket is closed (EBADF);
  ///         std::logic_error if another thread is already serving.
  void serve_forever(
      std::chrono::duration<double> poll_interval = std::chrono::duration<double>(0.5)) {
    begin_serving();
    struct end_guard {
      BaseServer* server;
      ~end_guard() { server->end_serving(); }
    } guard{this};
    serve_loop(poll_interval, [this] { return !shutdown_requested(); });
  }

 protected:
  /// serve_forever()'s loop, for as long as keep_going() (checked before each wait and after
  /// each request). ThreadPoolMixIn runs it on several workers at once, with `section`
  /// making them take turns for the hooks (see detail::single_loop); its socket is already
  /// non-blocking (`nonblocking`), and a worker taking over the loop looks for a request
  /// before it polls, as the one before it has just taken one.
  template <class KeepGoing, class Section = detail::single_loop>
  void serve_loop(std::chrono::duration<double> poll_interval, KeepGoing keep_going,
                  bool nonblocking = false, Section&& section = Section()) {
    using clock = std::chrono::steady_clock;
    const int listen_fd = fileno();
    // While requests keep coming, take the next one without polling first (an accept or
    // receive that finds nothing costs what the poll would have). That needs a get_request
    // that does not block and does not throw when nothing is waiting: the library's own,
    // with a stream socket made non-blocking while serving.
    // (A datagram server's get_request receives with MSG_DONTWAIT, and its socket stays
    // blocking for the handlers' replies.)
    struct in_section {  // leave() may be called twice: it leaves once
      explicit in_section(Section& s) : section(s) { section.enter(); }
      ~in_section() { section.leave(); }
      Section& section;
    };
    bool eager = detail::has_nothrow_get_request<Derived, Request>::value;
    struct restore_flags {
      int fd = -1, flags = 0;
      ~restore_flags() {
        if (fd >= 0) ::fcntl(fd, F_SETFL, flags);
      }
    } restore;
    if (eager && Derived::socket_type == SOCK_STREAM && listen_fd >= 0 && !nonblocking) {
      const int flags = ::fcntl(listen_fd, F_GETFL);
      if (flags >= 0 && (flags & O_NONBLOCK) == 0 &&
          ::fcntl(listen_fd, F_SETFL, flags | O_NONBLOCK) == 0) {
        restore.fd = listen_fd;  // (assigning a temporary would restore at once)
        restore.flags = flags;
      }
      eager = flags >= 0 && (::fcntl(listen_fd, F_GETFL) & O_NONBLOCK) != 0;  // never block
    }
    pollfd fds[3] = {{listen_fd, POLLIN, 0}, {wakeup_.fileno(), POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    // A prefork worker (stop_fd_) shares its socket with the other workers, a pool's leader
    // with the other leaders: a request wakes one waiting loop, not all of them (where the
    // system can; poll() otherwise).
    detail::exclusive_wait exclusive(fds, 3, stop_fd_ >= 0 || section.shared());
    int eager_streak = eager && nonblocking ? 1 : 0;  // requests taken without a poll: bounded,
                                                      // so wake-ups are seen
    while (keep_going()) {
      if (listen_fd < 0) throw std::system_error(EBADF, std::system_category(), "serve_forever");
      if (eager_streak == 0) {
        timeout_type wait = poll_interval;
        fds[0].fd = listen_fd;
        const auto paused_until = accept_paused_until();
        if (paused_until > clock::now()) {  // out of descriptors: wait, then retry
          fds[0].fd = -1;                   // poll() skips it
          wait =
              std::min<std::chrono::duration<double>>(poll_interval, paused_until - clock::now());
        }
        for (pollfd& p : fds) p.revents = 0;
        if (fds[0].fd >= 0 && exclusive.active())
          exclusive.wait(fds, 3, wait);
        else
          detail::poll_for(fds, 3, wait);
        if (!keep_going() || fds[2].revents != 0) break;  // bpo-35017: none after
        if (fds[0].revents & POLLNVAL)
          throw std::system_error(EBADF, std::system_category(), "serve_forever");
      }
      const bool eagerly = eager_streak > 0;
      bool served = false;
      if (eagerly || fds[0].revents != 0) {
        in_section turn(section);
        served = handle_request_noblock();  // (process_request() may leave the section)
      }
      eager_streak = eager && served && eager_streak < 64 ? eager_streak + 1 : 0;
      if (eagerly && !served) {  // nothing was waiting: poll, as if we had not looked
        if (!section.nothing_waiting()) break;
        continue;
      }
      if (!keep_going()) break;
      in_section turn(section);
      derived().service_actions();
    }
  }

 public:
  /// Prefork (beyond Python): serves on `workers` child processes, each running
  /// serve_forever() on this server's socket, until shutdown() is called (from another
  /// thread of this process). The parent only supervises: a worker that exits or dies is
  /// replaced (at most once a second for a worker that did not live a second, so a crash
  /// loop cannot fork-bomb). shutdown() tells every worker to stop; each finishes the
  /// request it is handling, closes (waiting for its own threads or children) and exits;
  /// this returns when all have.
  ///
  /// The workers share the one listening socket (a stream socket is made non-blocking while
  /// they serve). Each waits with EPOLLEXCLUSIVE on Linux, so a request wakes one waiting
  /// worker, not all of them (elsewhere all wake, and those that find nothing wait again).
  /// (One socket works for every family, Unix included, and never hands a connection to a
  /// worker that has exited; SO_REUSEPORT sockets would spread connections without a shared
  /// wake-up, but a connection queued on an exiting worker's socket is lost.) A worker that
  /// loses its parent stops as well. Each worker counts its own stats().
  /// @throws std::invalid_argument for zero workers; std::system_error if fork() fails
  ///         for the first workers.
  void serve_forever_workers(std::size_t workers, std::chrono::duration<double> poll_interval =
                                                      std::chrono::duration<double>(0.5)) {
    if (workers == 0) throw std::invalid_argument("serve_forever_workers: no workers");
    if (fileno() < 0)
      throw std::system_error(EBADF, std::system_category(), "serve_forever_workers");
    begin_serving();
    struct end_guard {
      BaseServer* server;
      ~end_guard() { server->end_serving(); }
    } guard{this};
    const int flags = ::fcntl(fileno(), F_GETFL);
    if (Derived::socket_type == SOCK_STREAM) ::fcntl(fileno(), F_SETFL, flags | O_NONBLOCK);
    struct restore_flags {
      int fd, flags;
      ~restore_flags() { ::fcntl(fd, F_SETFL, flags); }
    } restore{fileno(), flags};

    int stop_pipe[2];
    if (::pipe2(stop_pipe, O_CLOEXEC) < 0) detail::throw_errno("pipe");
    socketserver::socket stop_read(stop_pipe[0]), stop_write(stop_pipe[1]);

    using clock = std::chrono::steady_clock;
    struct worker {
      clock::time_point started;
      socketserver::socket pidfd;  // readable once the worker has exited (-1 if unsupported)
    };
    std::map<pid_t, worker> running;
    std::vector<clock::time_point> respawn_at;  // replacements waiting out a crash loop
    auto spawn = [&] {
      std::fflush(nullptr);
      const pid_t pid = fork_server_process();
      if (pid < 0) detail::throw_errno("fork");
      if (pid == 0) {
        stop_write.close();
        run_worker(stop_read.fileno(), poll_interval);
      }
      running[pid] = worker{clock::now(), socketserver::socket(detail::open_pidfd(pid))};
    };
    auto stop_workers = [&] {
      stop_write.close();  // every worker sees end of file and stops
      for (auto& [pid, w] : running) {
        int status = 0;
        detail::retry_on_eintr([&, p = pid] { return ::waitpid(p, &status, 0); });
      }
      running.clear();
    };
    try {
      for (std::size_t i = 0; i < workers; ++i) spawn();
      std::vector<pollfd> fds;
      while (!shutdown_requested()) {
        fds.assign(1, pollfd{wakeup_.fileno(), POLLIN, 0});
        for (auto& [pid, w] : running)
          if (w.pidfd.is_open()) fds.push_back(pollfd{w.pidfd.fileno(), POLLIN, 0});
        timeout_type wait = poll_interval;
        for (auto due : respawn_at)
          wait = std::min<std::chrono::duration<double>>(*wait, due - clock::now());
        if (*wait < std::chrono::duration<double>::zero()) wait = std::chrono::duration<double>(0);
        detail::poll_for(fds.data(), fds.size(), wait);
        if (shutdown_requested()) break;
        for (auto it = running.begin(); it != running.end();) {
          int status = 0;
          if (::waitpid(it->first, &status, WNOHANG) != it->first) {
            ++it;
            continue;
          }
          const bool short_lived = clock::now() - it->second.started < std::chrono::seconds(1);
          respawn_at.push_back(short_lived ? it->second.started + std::chrono::seconds(1)
                                           : clock::now());
          it = running.erase(it);
        }
        for (auto it = respawn_at.begin(); it != respawn_at.end();) {
          if (*it > clock::now()) {
            ++it;
            continue;
          }
          try {
            spawn();
            it = respawn_at.erase(it);
          } catch (const std::system_error& e) {  // e.g. EAGAIN: try again next time
            std::fprintf(stderr, "socketserver: cannot replace a worker: %s\n", e.what());
            *it = clock::now() + std::chrono::seconds(1);
            ++it;
          }
        }
        derived().service_actions();
      }
    } catch (...) {
      stop_workers();
      throw;
    }
    stop_workers();
  }

  /// Handles one request, waiting at most `timeout` (or the socket's own timeout, whichever
  /// is shorter); calls handle_timeout() if none came.
  void handle_request() {
    timeout_type wait = this->socket.gettimeout();
    if (!wait)
      wait = this->timeout;
    else if (this->timeout)
      wait = std::min(*wait, *this->timeout);
    if (fileno() < 0) throw std::system_error(EBADF, std::system_category(), "handle_request");
    if (detail::wait_readable(fileno(), wait))
      handle_request_noblock();
    else
      derived().handle_timeout();
  }

  /// Serves on an already bound (and, for stream servers, listening) socket instead of the
  /// one the constructor made: an inherited descriptor, or one from listen_fds() (socket
  /// activation). Construct the server with bind_and_activate = false, then call this. The
  /// socket's family and type must match the server's; server_address becomes its address.
  /// A stream socket that is not listening yet is activated (server_activate()).
  /// @throws std::system_error if the descriptor is not such a socket (it is then left open).
  void adopt_socket(int fd) {
    socketserver::socket_view candidate(fd);
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
      detail::throw_errno("adopt_socket " + std::to_string(fd));
    address bound = candidate.getsockname();
    if (type != Derived::socket_type || bound.family() != Derived::address_family)
      detail::throw_error(std::make_error_code(std::errc::wrong_protocol_type),
                          "adopt_socket " + std::to_string(fd) + " (" + bound.to_string() +
                              "): not a socket of this server's family and type");
    this->socket = socketserver::socket(fd);
    server_address = std::move(bound);
    if (Derived::socket_type == SOCK_STREAM &&
        this->socket.template getsockopt<int>(SOL_SOCKET, SO_ACCEPTCONN) == 0)
      derived().server_activate();
  }

  /// Graceful stop (beyond Python): stop accepting, let the requests in flight finish for
  /// up to `grace`, then cut the rest (their connections are shut down; forked children get
  /// SIGTERM; queued requests of a pool are closed unserved), and close the server. Returns
  /// how many requests were cut. Call it after shutdown(), from any thread but the one that
  /// ran serve_forever() if it is still inside a handler. A synchronous server has nothing
  /// in flight once serve_forever() has returned: it just closes.
  std::size_t drain(std::chrono::duration<double> grace) {
    (void)grace;
    derived().server_close();
    return 0;
  }

  // --- Hooks: each may be overridden in Derived. -------------------------------------------

  /// Called by the constructor to activate the server. May be overridden.
  void server_activate() {}

  /// Called by serve_forever() on every loop iteration. May be overridden.
  void service_actions() {}

  /// Called when handle_request() times out. May be overridden.
  void handle_timeout() {}

  /// Returns true to process the request, false to close it unanswered. May be overridden.
  bool verify_request(Request& /*request*/, const address& /*client_address*/) { return true; }

  /// Calls finish_request() then shutdown_request(). Overridden by the mix-ins.
  void process_request(Request& request, const address& client_address) {
    derived().finish_request(request, client_address);
    derived().shutdown_request(request);
    count_completed(false);
  }

  /// Finishes one request by running the RequestHandlerClass on it.
  void finish_request(Request& request, const address& client_address) {
    detail::run_handler<Handler>(request, client_address, derived());
  }

  /// Called to shut down and close an individual request. May be overridden.
  void shutdown_request(Request& request) { derived().close_request(request); }

  /// Called to clean up an individual request. May be overridden.
  void close_request(Request& /*request*/) {}

  /// Called to clean up the server. May be overridden.
  void server_close() {}

  /// Handles an exception thrown while processing a request (called from inside the catch
  /// block, so `throw;` rethrows it). The default prints the exception and the client's
  /// address to stderr; serving continues. May be overridden.
  void handle_error(Request& /*request*/, const address& client_address) {
    const std::string dashes(40, '-');
    std::fprintf(stderr, "%s\nException occurred during processing of request from %s\n%s\n%s\n",
                 dashes.c_str(), client_address.to_string().c_str(),
                 detail::describe_current_exception().c_str(), dashes.c_str());
  }

  /// Called when get_request() fails with anything but a transient error (CPython drops these
  /// silently; a server out of descriptors then spins at 100% CPU). The default prints it to
  /// stderr. After EMFILE, ENFILE, ENOBUFS or ENOMEM, the serve loop also stops accepting for a
  /// pause that doubles from 10 ms to 1 s while the failure lasts. A socket that cannot
  /// accept at all (EINVAL: not listening; EBADF, ENOTSOCK) makes serve_forever() and
  /// handle_request() throw std::system_error after this. May be overridden.
  void handle_get_request_error(const std::system_error& error) {
    std::fprintf(stderr, "socketserver: cannot get request on %s: %s%s\n",
                 server_address.to_string().c_str(), error.what(),
                 detail::is_resource_exhaustion(error.code()) ? " (pausing accepts)" : "");
  }

 protected:
  Derived& derived() noexcept { return static_cast<Derived&>(*this); }

  /// finish_request(), with an exception routed to handle_error() (called inside the catch
  /// block); returns whether it failed. What a mix-in's worker thread does with a request.
  bool finish_or_handle_error(Request& request, const address& client_address) {
    try {
      derived().finish_request(request, client_address);
      return false;
    } catch (...) {
      derived().handle_error(request, client_address);
      return true;
    }
  }

  /// Handles one request without blocking: get_request(), verify_request(),
  /// process_request(), with errors routed to handle_error() (Python's
  /// _handle_request_noblock).
  /// Returns whether there was a request (false when get_request() failed).
  bool handle_request_noblock() {
    Request request;
    address client_address;
    if constexpr (detail::has_nothrow_get_request<Derived, Request>::value) {
      std::error_code ec;
      if (!derived().get_request(request, client_address, ec)) {
        on_get_request_error(ec);
        return false;
      }
    } else {
      try {
        std::pair<Request, address> got = derived().get_request();
        request = std::move(got.first);
        client_address = std::move(got.second);
      } catch (const std::system_error& error) {
        on_get_request_error(error.code(), &error);
        return false;
      }
    }
    if (accept_pause_ms_.load(std::memory_order_relaxed) != 0)
      accept_pause_ms_.store(0, std::memory_order_relaxed);
    count(counters_.accepted);
    if (derived().verify_request(request, client_address)) {
      try {
        derived().process_request(request, client_address);
      } catch (...) {
        derived().handle_error(request, client_address);
        derived().shutdown_request(request);
        count_completed(true);
      }
    } else {
      count(counters_.rejected);
      derived().shutdown_request(request);
    }
    return true;
  }

 private:
  // A prefork worker's life, in the child: serve until the supervisor's pipe closes, close
  // (waiting for the worker's own threads or children), leave.
  [[noreturn]] void run_worker(int stop_fd, std::chrono::duration<double> poll_interval) {
    stop_fd_ = stop_fd;
    int status = 0;
    try {
      derived().serve_forever(poll_interval);
    } catch (...) {
      std::fprintf(stderr, "socketserver: worker %ld stopped: %s\n", static_cast<long>(::getpid()),
                   detail::describe_current_exception().c_str());
      status = 1;
    }
    try {
      derived().server_close();
    } catch (...) {
      status = 1;
    }
    std::fflush(nullptr);
    ::_exit(status);
  }

  void on_get_request_error(const std::error_code& ec, const std::system_error* thrown = nullptr) {
    if (detail::is_transient(ec)) return;
    count(counters_.get_request_errors);
    if (thrown != nullptr)
      derived().handle_get_request_error(*thrown);
    else
      derived().handle_get_request_error(
          std::system_error(ec, Derived::socket_type == SOCK_STREAM ? "accept" : "recvfrom"));
    if (detail::is_fatal_get_request_error(ec))
      throw std::system_error(
          ec, (Derived::socket_type == SOCK_STREAM ? "accept on " : "recvfrom on ") +
                  server_address.to_string() + " (is the server activated?)");
    if (detail::is_resource_exhaustion(ec)) {
      using namespace std::chrono;
      const int previous = accept_pause_ms_.load(std::memory_order_relaxed);
      const int pause = previous == 0 ? 10 : std::min(previous * 2, 1000);
      accept_pause_ms_.store(pause, std::memory_order_relaxed);
      accept_paused_until_.store(
          (steady_clock::now() + milliseconds(pause)).time_since_epoch().count(),
          std::memory_order_relaxed);
    }
  }

  // The accept pause, which every thread running the loop reads (ThreadPoolMixIn's leaders).
  std::atomic<int> accept_pause_ms_{0};
  std::atomic<std::chrono::steady_clock::rep> accept_paused_until_{0};
  std::chrono::steady_clock::time_point accept_paused_until() const noexcept {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(accept_paused_until_.load(std::memory_order_relaxed)));
  }
};

}  // namespace socketserver
