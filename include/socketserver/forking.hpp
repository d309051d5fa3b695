// SPDX-License-Identifier: MIT
// ForkingMixIn: a child process per request.
#pragma once

#include <poll.h>       // poll, pollfd
#include <signal.h>     // kill, pthread_sigmask, SIGTERM
#include <sys/types.h>  // pid_t
#include <sys/wait.h>   // waitpid, WNOHANG
#include <unistd.h>     // fork, _exit, close, syscall

#include <algorithm>     // std::min
#include <chrono>        // std::chrono::seconds
#include <cstddef>       // std::size_t
#include <cstdio>        // std::fflush
#include <map>           // std::map
#include <set>           // std::set
#include <system_error>  // std::system_error
#include <type_traits>   // std::enable_if_t, std::is_constructible_v, std::is_convertible_v
#include <utility>       // std::move, std::forward
#include <vector>        // std::vector

#include "address.hpp"
#include "base_server.hpp"  // detail::is_stream
#include "detail/errno.hpp"
#include "detail/exceptions.hpp"
#include "detail/poll.hpp"
#include "detail/process.hpp"
#include "detail/time.hpp"
#include "socket.hpp"
#include "strict_bool.hpp"

namespace socketserver {

/// Python's ForkingMixIn: handles each request in a child process. Compose it over a
/// server (servers.hpp does for the predefined types): `ForkingMixIn<basic_tcp_server<H, D>>`.
///
/// - timeout: 300 s (handle_request() reaps children at least that often).
/// - max_children (40): at that many children the server waits for one to exit before it
///   forks again (checked before forking, so the cap holds exactly). Unlike CPython, whose
///   loop cannot be stopped there, shutdown() ends that wait at once: a request the server
///   already holds is forked all the same (one child beyond max_children), rather than lost;
///   one not yet accepted waits in the listen backlog for the next serve_forever().
/// - block_on_close (true): server_close() waits for every child.
/// - active_children: the pids of the running children.
///
/// The child runs finish_request(), reports an exception through handle_error(), calls
/// shutdown_request() and leaves with _exit(0), or _exit(1) after an exception (2 when the
/// peer went away, 3 after a timeout, so the parent counts stats().disconnects and
/// stats().timeouts as the other servers do), so none of the parent's destructors, atexit handlers
/// or test-framework code run in it; a handler that ends the child's thread (pthread_exit(),
/// cancellation) ends the child with _exit(1). A stream server's child closes its copy of the
/// listening socket first, and restores SIGTERM's default action (drain() ends late children with
/// it).
///
/// Children are reaped by pid (waitpid(pid, WNOHANG)) in service_actions() and
/// handle_timeout(); unlike CPython, never with waitpid(-1), which would also reap child
/// processes the program started for other reasons.
template <class Base>
class ForkingMixIn : public Base {
 public:
  /// The request type of the server below: `socket` or `datagram`.
  using request_type = typename Base::request_type;

  /// Python's ForkingMixIn.max_children: at most this many children at once (40); unlike
  /// CPython's, enforced before each fork.
  std::size_t max_children = 40;
  /// Python's ForkingMixIn.block_on_close: server_close() waits for the children (true).
  bool block_on_close = true;
  /// Python's ForkingMixIn.active_children: the pids of the running children.
  std::set<pid_t> active_children;

  /// The server's constructor (see basic_tcp_server), with `timeout` set to 300 s as
  /// Python's ForkingMixIn.timeout, so handle_request() reaps children when idle.
  /// @throws std::system_error as the server's constructor.
  explicit ForkingMixIn(address addr, strict_bool bind_and_activate = true)
      : Base(std::move(addr), bind_and_activate) {
    this->timeout = std::chrono::seconds(300);
  }
  /// The same for a server below that takes more after the address (TLSMixIn's context).
  /// @throws std::system_error as the server's constructor.
  template <class First, class... More,
            std::enable_if_t<std::is_constructible_v<Base, address, First, More...> &&
                                 !std::is_convertible_v<First, strict_bool>,
                             int> = 0>
  ForkingMixIn(address addr, First&& first, More&&... more)
      : Base(std::move(addr), std::forward<First>(first), std::forward<More>(more)...) {
    this->timeout = std::chrono::seconds(300);
  }
  ForkingMixIn(const ForkingMixIn&) = delete;
  ForkingMixIn& operator=(const ForkingMixIn&) = delete;
  ~ForkingMixIn() { ForkingMixIn::server_close(); }

  /// Reaps children that have exited; first, while max_children are running, waits for one
  /// to exit (or for shutdown()). With blocking = true, waits for all of them.
  void collect_children(bool blocking = false) {
    reap(blocking);
    // Only a running loop is stopped: a shutdown() left pending by a loop that has ended must
    // not lift the limit for handle_request().
    const bool serving = this->is_serving();
    while (!active_children.empty() && active_children.size() >= max_children &&
           !(serving && this->shutdown_requested())) {
      const bool stop = wait_for_any_child(std::nullopt, serving);
      reap(false);
      if (stop) break;
    }
  }

  /// Reaps children whenever handle_request() times out.
  void handle_timeout() {
    Base::handle_timeout();
    collect_children();
  }

  /// Reaps children on every serve_forever() iteration.
  void service_actions() {
    Base::service_actions();
    collect_children();
  }

  /// Forks a child to process the request. The parent closes its copy of the request.
  /// @throws std::system_error if fork() fails.
  void process_request(request_type& request, const address& client_address) {
    if (active_children.size() >= max_children) collect_children();
    const pid_t pid = detail::fork_with_stdio([] { return ::fork(); });
    if (pid < 0) detail::throw_errno("fork");
    if (pid > 0) {
      active_children.insert(pid);
      // The client's connection slot (max_connections_per_ip) is held until the child is
      // reaped: the connection lives there.
      if (this->max_connections_per_ip != 0 && !this->proxied()) slots_[pid] = client_address;
      this->derived().close_request(request);
      return;
    }
    // drain() ends children with SIGTERM: whatever the parent does with it (a handler, or
    // blocked for shutdown_on_signals), a child ends.
    ::signal(SIGTERM, SIG_DFL);
    this->drain_signal_.inherited();  // the parent's drain() shows on the shared descriptor
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &term, nullptr);
    int status = exit_status(detail::request_outcome::failed);
    try {
      if constexpr (detail::is_stream<request_type>)
        this->socket.close();  // the child serves one connection, it accepts none
      // (With proxy_protocol on, the header is read here, in the child.)
      status = exit_status(this->finish_or_handle_error(request, client_address));
    } catch (detail::forced_unwind&) {
      // The handler ended the child's thread (pthread_exit(), cancellation): the child would
      // exit with status 0, or abort if the unwind were kept. It fails here instead.
      end_child(request, 1);
    } catch (...) {
      status = exit_status(detail::outcome_of_current_exception());
      try {
        this->derived().handle_error(request, client_address);
      } catch (detail::forced_unwind&) {
        end_child(request, 1);
      } catch (...) {
      }
    }
    end_child(request, status);
  }

  /// Graceful stop: serves the connections already queued (drain_backlog()) and closes the
  /// socket (stream servers), waits up to `grace` in all for the children, sends SIGTERM to those
  /// still running, reaps them all, and closes the server. Returns how many children were cut.
  std::size_t drain(std::chrono::duration<double> grace) {
    using detail::clock;
    const auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(grace);
    this->drain_backlog(deadline);  // a child for each connection already queued
    if constexpr (detail::is_stream<request_type>) Base::server_close();
    collect_children();
    while (!active_children.empty() && clock::now() < deadline) {
      wait_for_any_child(std::chrono::duration<double>(deadline - clock::now()));
      collect_children();
    }
    const std::size_t cut = active_children.size();
    for (pid_t pid : active_children) ::kill(pid, SIGTERM);
    collect_children(true);
    this->derived().server_close();
    return cut;
  }

  /// Closes the server, then reaps the children, waiting for them if block_on_close.
  void server_close() {
    Base::server_close();
    collect_children(block_on_close);
  }

 private:
  // A child's exit status tells the parent how its request ended.
  static int exit_status(detail::request_outcome outcome) noexcept {
    switch (outcome) {
      case detail::request_outcome::completed:
        return 0;
      case detail::request_outcome::disconnected:
        return 2;
      case detail::request_outcome::timed_out:
        return 3;
      case detail::request_outcome::refused:
        return 4;
      case detail::request_outcome::refused_by_proxy_header:
        return 5;
      case detail::request_outcome::refused_over_limit:
        return 6;
      case detail::request_outcome::failed:
        break;
    }
    return 1;
  }
  static detail::request_outcome outcome_of_exit(int status) noexcept {
    if (!WIFEXITED(status)) return detail::request_outcome::failed;  // killed by a signal
    switch (WEXITSTATUS(status)) {
      case 0:
        return detail::request_outcome::completed;
      case 2:
        return detail::request_outcome::disconnected;
      case 3:
        return detail::request_outcome::timed_out;
      case 4:
        return detail::request_outcome::refused;
      case 5:
        return detail::request_outcome::refused_by_proxy_header;
      case 6:
        return detail::request_outcome::refused_over_limit;
      default:
        return detail::request_outcome::failed;
    }
  }

  // Reaps our children that have exited (all of them, waiting, when blocking).
  void reap(bool blocking) {
    for (auto it = active_children.begin(); it != active_children.end();) {
      int status = 0;
      const pid_t pid =
          detail::retry_on_eintr([&] { return ::waitpid(*it, &status, blocking ? 0 : WNOHANG); });
      if (pid == *it) {
        this->count_completed(outcome_of_exit(status));
        give_back_child_slot(*it);
        it = active_children.erase(it);
      } else if (pid < 0 && errno == ECHILD) {  // reaped by someone else: outcome unknown
        this->count_completed(false);
        give_back_child_slot(*it);
        it = active_children.erase(it);
      } else {
        ++it;
      }
    }
  }

  void give_back_child_slot(pid_t pid) noexcept {
    if (slots_.empty()) return;
    const auto it = slots_.find(pid);
    if (it == slots_.end()) return;
    this->give_back_slot(it->second);
    slots_.erase(it);
  }

  // The child's way out: shutdown_request(), then _exit(status), whatever happens.
  [[noreturn]] void end_child(request_type& request, int status) noexcept {
    try {
      this->derived().shutdown_request(request);
    } catch (detail::forced_unwind&) {
      std::fflush(nullptr);
      ::_exit(1);
    } catch (...) {
    }
    std::fflush(nullptr);
    ::_exit(status);
  }

  // Blocks until at least one of our children has exited (or `limit` has passed),
  // without reaping it (that is collect_children's job) and without touching other children
  // of the process. With `interruptible`, the serve loop's stop (shutdown(), or a prefork
  // worker's supervisor) ends the wait too; returns whether it did.
  bool wait_for_any_child(timeout_type limit = std::nullopt, bool interruptible = false) {
    std::vector<pollfd> fds;
    for (pid_t pid : active_children) {
      const int fd = detail::open_pidfd(pid);
      if (fd >= 0) fds.push_back({fd, POLLIN, 0});
    }
    const std::size_t pidfds = fds.size();
    struct close_pidfds {
      std::vector<pollfd>& fds;
      std::size_t count;
      ~close_pidfds() {
        for (std::size_t i = 0; i < count; ++i) ::close(fds[i].fd);
      }
    } closing{fds, pidfds};
    if (interruptible) {
      fds.push_back({this->wakeup_.fileno(), POLLIN, 0});
      fds.push_back({this->derived().stop_fileno(), POLLIN, 0});
    }
    const auto stopped = [&] {
      return interruptible && (fds[pidfds].revents != 0 || fds[pidfds + 1].revents != 0);
    };
    if (pidfds == active_children.size()) {
      try {
        detail::poll_for(fds.data(), fds.size(), limit);
      } catch (detail::forced_unwind&) {
        throw;
      } catch (...) {
      }
      return stopped();
    }
    // No pidfds (old kernel, or a child already reaped elsewhere): wait for the oldest. A
    // bounded (or interruptible) wait cannot block in waitpid(): pause briefly and let the
    // caller look again.
    if (limit || interruptible) {
      const double ms = limit ? std::min(10.0, limit->count() * 1000) : 10.0;
      ::poll(fds.data() + pidfds, fds.size() - pidfds, static_cast<int>(ms));
      return stopped();
    }
    int status = 0;
    const pid_t pid = *active_children.begin();
    if (detail::retry_on_eintr([&] { return ::waitpid(pid, &status, 0); }) == pid) {
      this->count_completed(outcome_of_exit(status));
      give_back_child_slot(pid);
      active_children.erase(pid);
    } else if (errno == ECHILD) {
      this->count_completed(false);
      give_back_child_slot(pid);
      active_children.erase(pid);
    }
    return false;
  }

  std::map<pid_t, address> slots_;  // a child holding a client's connection slot: its client
};

}  // namespace socketserver
