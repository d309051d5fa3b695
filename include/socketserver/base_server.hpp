// SPDX-License-Identifier: MIT
// BaseServer: the serve_forever loop, shutdown, handle_request and the request hooks.
#pragma once

#if defined(__linux__)
#  include <linux/filter.h>  // sock_filter, sock_fprog, BPF_*
#endif
#include <poll.h>        // pollfd, POLLIN, POLLNVAL
#include <sys/socket.h>  // setsockopt, shutdown, SO_ATTACH_FILTER, SHUT_RD

#include <algorithm>     // std::min
#include <chrono>        // std::chrono::duration
#include <cstdio>        // std::fprintf, stderr
#include <mutex>         // std::unique_lock, std::mutex
#include <string>        // std::string, std::to_string
#include <system_error>  // std::system_error, std::error_code
#include <type_traits>   // std::false_type, std::void_t, std::is_same_v
#include <utility>       // std::declval, std::move, std::pair

#include "address.hpp"
#include "any_server.hpp"
#include "detail/accept_errors.hpp"
#include "detail/errno.hpp"
#include "detail/exceptions.hpp"
#include "detail/exclusive_wait.hpp"
#include "detail/fd.hpp"
#include "detail/poll.hpp"
#include "detail/time.hpp"
#include "detail/wakeup.hpp"
#include "handlers.hpp"
#include "io.hpp"  // reader::drain_wait_for_request
#include "socket.hpp"

namespace socketserver {

namespace detail {

/// True for the request type of stream servers (a connected socket), false for datagram
/// servers: the one test for "is this a stream server".
template <class Request>
constexpr bool is_stream = std::is_same_v<Request, socket>;

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
class BaseServer : public any_server {
 public:
  /// Python's BaseServer.RequestHandlerClass: the handler class, built for each request.
  using RequestHandlerClass = Handler;
  /// The request type: `socket` (stream servers) or `datagram`.
  using request_type = Request;

  /// Python's BaseServer.server_address: the address the server is bound to: after server_bind(),
  /// the real one (port 0 becomes the port the kernel picked).
  address server_address;

  /// Python's `BaseServer(server_address, RequestHandlerClass)`: stores the address; makes
  /// no socket (basic_tcp_server does).
  explicit BaseServer(address addr) : server_address(std::move(addr)) {}

  /// Python's BaseServer.serve_forever(poll_interval=0.5): handles one request at a time
  /// until shutdown(). Polls for requests (and for shutdown's wake-up, which ends the wait at
  /// once) and calls service_actions() at least every poll_interval. Ignores `timeout`.
  /// @code
  /// socketserver::TCPServer<MyTCPHandler> server({"localhost", 9999});
  /// server.serve_forever();  // until shutdown() from another thread, or a signal
  /// @endcode
  /// @throws std::system_error if the server socket is closed (EBADF);
  ///         std::logic_error if another thread is already serving.
  void serve_forever(
      std::chrono::duration<double> poll_interval = std::chrono::duration<double>(0.5)) {
    auto serving = begin_serving();
    serve_loop(poll_interval, one_loop{*this});
  }

  /// True when other processes wait on this server's socket too (PreforkMixIn's workers):
  /// the serve loop then waits so that a request wakes one of them, not all (where the
  /// system can). May be overridden.
  bool socket_shared() const noexcept { return false; }

  /// A descriptor whose readability (or hang-up) ends serve_forever() as shutdown() does, -1
  /// for none: a prefork worker's end of the pipe its supervisor closes. May be overridden.
  int stop_fileno() const noexcept { return -1; }

  /// @cond INTERNAL
  /// Where the system has no exclusive wake-up, the turn taken by the serve loops sharing
  /// this socket (a prefork worker's, see detail/accept_turn.hpp); nullptr for none.
  detail::accept_turn* shared_accept_turn() noexcept { return nullptr; }
  /// @endcond

 protected:
  /// How serve_loop() runs. serve_forever() runs one loop on one thread (one_loop);
  /// ThreadPoolMixIn runs it on several threads at once with a policy of its own. A policy has:
  ///   keep_going()               checked before each wait and after each request
  ///   socket_nonblocking()       the caller made the socket non-blocking already
  ///   shared()                   other threads or processes wait on the socket too
  ///   take_hooks_turn(),         bracket the hooks that must run one thread at a time
  ///   end_hooks_turn()           (get_request() with verify_request(), service_actions())
  ///   keep_looping_when_idle()   a request was looked for and none found: false ends this
  ///                              thread's loop (a pool leader stepping down)
  /// @cond INTERNAL
  struct one_loop {
    BaseServer& server;
    bool keep_going() const noexcept { return !server.shutdown_requested(); }
    bool socket_nonblocking() const noexcept { return false; }
    bool shared() const noexcept { return server.derived().socket_shared(); }
    void take_hooks_turn() noexcept {}
    void end_hooks_turn() noexcept {}
    bool keep_looping_when_idle() noexcept { return true; }
  };
  /// @endcond

  /// serve_forever()'s loop, run while policy.keep_going() (see one_loop). A thread taking
  /// over the loop of a socket that is non-blocking already looks for a request before it
  /// polls, as the one before it has just taken one.
  template <class LoopPolicy>
  void serve_loop(std::chrono::duration<double> poll_interval, LoopPolicy&& policy) {
    const int listen_fd = fileno();
    // While requests keep coming, take the next one without polling first (an accept or
    // receive that finds nothing costs what the poll would have). That needs a get_request
    // that does not block and does not throw when nothing is waiting: the library's own,
    // with a stream socket made non-blocking while serving.
    // (A datagram server's get_request receives with MSG_DONTWAIT, and its socket stays
    // blocking for the handlers' replies.)
    constexpr bool nothrow_get_request = detail::has_nothrow_get_request<Derived, Request>::value;
    const bool nonblocking_already = policy.socket_nonblocking();
    detail::nonblocking_scope nonblocking(
        nothrow_get_request && detail::is_stream<Request> && !nonblocking_already ? listen_fd : -1,
        &handed_over_);
    const bool eager = nothrow_get_request && (!detail::is_stream<Request> || nonblocking_already ||
                                               nonblocking.nonblocking());
    struct hooks_turn {  // end_hooks_turn() may come early (process_request()): it ends once
      explicit hooks_turn(LoopPolicy& p) : policy(p) { policy.take_hooks_turn(); }
      ~hooks_turn() { policy.end_hooks_turn(); }
      LoopPolicy& policy;
    };
    pollfd fds[3] = {{listen_fd, POLLIN, 0},
                     {wakeup_.fileno(), POLLIN, 0},
                     {derived().stop_fileno(), POLLIN, 0}};
    // Where other loops wait on the same socket, a request wakes one of them, not all (where
    // the system can; poll() otherwise).
    // (The accept turn is taken by one loop per process: a thread pool's leaders wait on the
    // socket together.)
    constexpr bool one_loop_per_process = std::is_same_v<std::decay_t<LoopPolicy>, one_loop>;
    detail::exclusive_wait exclusive(
        fds, 3, policy.shared(), one_loop_per_process ? derived().shared_accept_turn() : nullptr);
    int eager_streak = eager && nonblocking_already ? 1 : 0;  // requests taken without a poll:
                                                              // bounded, so wake-ups are seen
    bool took_work = false;  // since the last wait: then the other waiters go first next time
    while (policy.keep_going()) {
      if (listen_fd < 0) throw std::system_error(EBADF, std::system_category(), "serve_forever");
      if (eager_streak == 0) {
        timeout_type wait = poll_interval;
        fds[0].fd = listen_fd;
        const auto paused_until = accept_backoff_.paused_until();
        if (paused_until > detail::clock::now()) {  // out of descriptors: wait, then retry
          fds[0].fd = -1;                           // poll() skips it
          wait = std::min<std::chrono::duration<double>>(poll_interval,
                                                         paused_until - detail::clock::now());
        }
        for (pollfd& p : fds) p.revents = 0;
        if (took_work) exclusive.rotate();
        took_work = false;
        const bool exclusively = fds[0].fd >= 0 && exclusive.active();
        const int ready =
            exclusively ? exclusive.wait(fds, 3, wait) : detail::poll_for(fds, 3, wait);
        if (!policy.keep_going() || fds[2].revents != 0) {  // bpo-35017: none after
          // An exclusive wake-up came to this waiter alone: a connection it left queued would
          // wake no other (the other workers, or a successor the socket was handed to, see
          // it with the next one only). A prefork worker told to stop takes it first.
          if (exclusively && eager && fds[2].revents != 0 && (fds[0].revents & POLLIN) != 0 &&
              one_loop_per_process) {
            hooks_turn turn(policy);
            handle_request_noblock();
          }
          break;
        }
        // Should one be left all the same (a waiter that ended between its wake-up and its
        // accept), look once per poll interval: one accept() that finds nothing.
        if (exclusively && eager && ready == 0) fds[0].revents = POLLIN;
        if (fds[0].revents & POLLNVAL)
          throw std::system_error(EBADF, std::system_category(), "serve_forever");
      }
      const bool eagerly = eager_streak > 0;
      bool served = false;
      if (eagerly || fds[0].revents != 0) {
        hooks_turn turn(policy);
        served = handle_request_noblock();
      }
      took_work = took_work || served;
      eager_streak = eager && served && eager_streak < 64 ? eager_streak + 1 : 0;
      if (eagerly && !served) {  // nothing was waiting: poll, as if we had not looked
        if (!policy.keep_looping_when_idle()) break;
        continue;
      }
      if (!policy.keep_going()) break;
      hooks_turn turn(policy);
      derived().service_actions();
    }
  }

 public:
  /// Python's BaseServer.handle_request(): handles one request, waiting at most `timeout` (or the
  /// socket's own timeout, whichever is shorter); calls handle_timeout() if none came.
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
    if (detail::is_stream<Request> &&
        this->socket.template getsockopt<int>(SOL_SOCKET, SO_ACCEPTCONN) == 0)
      derived().server_activate();
  }

  /// Graceful stop (beyond Python): stop accepting, let the requests in flight finish for
  /// up to `grace`, then cut the rest (their connections are shut down; forked children get
  /// SIGTERM; queued requests of a pool are closed unserved), and close the server. Returns
  /// how many requests were cut. Call it after shutdown(), from any thread but the one that
  /// ran serve_forever() if it is still inside a handler. A synchronous server has nothing
  /// in flight once serve_forever() has returned: it just closes.
  ///
  /// Every server first serves the connections the kernel has already queued (see
  /// drain_backlog()); a synchronous server serves them itself, then closes.
  std::size_t drain(std::chrono::duration<double> grace) {
    drain_backlog(detail::deadline_after(grace));
    derived().server_close();
    return 0;
  }

  // --- Hooks: each may be overridden in Derived. -------------------------------------------

  /// Python's BaseServer.server_activate(): called by the constructor to activate the
  /// server. May be overridden.
  void server_activate() {}

  /// Called in a new prefork worker (PreforkMixIn) before it serves, to replace what must
  /// not be shared with the supervisor and the other workers: a mix-in's wake-up descriptors
  /// (shutdown's own is replaced already). A mix-in that owns such state redefines it and
  /// calls its base's.
  void after_fork_in_child() {}

  /// Python's BaseServer.service_actions(): called by serve_forever() on every loop
  /// iteration. May be overridden.
  void service_actions() {}

  /// Python's BaseServer.handle_timeout(): called when handle_request() times out. May be
  /// overridden.
  void handle_timeout() {}

  /// Python's BaseServer.verify_request(): returns true to process the request, false to
  /// close it unanswered (access control). May be overridden.
  bool verify_request(Request& /*request*/, const address& /*client_address*/) { return true; }

  /// Python's BaseServer.process_request(): calls finish_request() then shutdown_request().
  /// Overridden by the mix-ins, which start a thread, a child or a fiber here.
  void process_request(Request& request, const address& client_address) {
    try {
      derived().finish_request(request, client_address);
    } catch (detail::forced_unwind&) {  // the handler ended this thread: see end_unwound()
      end_unwound(request);
      throw;
    }  // (an exception goes to handle_request_noblock(), which reports it first)
    derived().shutdown_request(request);
    count_completed(false);
  }

  /// Python's BaseServer.finish_request(): finishes one request by running the
  /// RequestHandlerClass on it (setup(), handle(), finish()).
  void finish_request(Request& request, const address& client_address) {
    detail::run_handler<Handler>(request, client_address, derived());
  }

  /// Python's BaseServer.shutdown_request(): called to shut down and close an individual
  /// request. May be overridden.
  void shutdown_request(Request& request) { derived().close_request(request); }

  /// Python's BaseServer.close_request(): called to clean up an individual request. May be
  /// overridden.
  void close_request(Request& /*request*/) {}

  /// Python's BaseServer.server_close(): called to clean up the server (the destructor calls
  /// it, as Python's `with` block does). May be overridden.
  void server_close() {}

  /// Python's BaseServer.handle_error(): handles an exception thrown while processing a
  /// request (called from inside the catch block, so `throw;` rethrows it). The default prints the
  /// exception and the client's address to stderr; serving continues. Unlike CPython's, it stays
  /// quiet when the peer went away (an error Python raises as ConnectionError: ECONNRESET, EPIPE,
  /// ...) or the request timed out (ETIMEDOUT): those are counted in stats().disconnects and
  /// stats().timeouts, not in errors. An override is called for every one. May be overridden.
  void handle_error(Request& /*request*/, const address& client_address) {
    if (detail::outcome_of_current_exception() != detail::request_outcome::failed) return;
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
  /// This server as its most derived class, through which every hook is called (CRTP).
  Derived& derived() noexcept { return static_cast<Derived&>(*this); }

  /// finish_request(), with an exception routed to handle_error() (called inside the catch
  /// block); returns how the request ended, for count_completed(). What a mix-in's worker
  /// thread does with a request.
  detail::request_outcome finish_or_handle_error(Request& request, const address& client_address) {
    try {
      derived().finish_request(request, client_address);
      return detail::request_outcome::completed;
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {
      const detail::request_outcome outcome = detail::outcome_of_current_exception();
      derived().handle_error(request, client_address);
      return outcome;
    }
  }

  /// The whole of a request on a mix-in's thread (its process_request_thread()):
  /// finish_or_handle_error(), then forget() (the mix-in stops tracking the connection),
  /// shutdown_request() and the count. If the thread is ended while it runs the handler
  /// (pthread_exit(), cancellation: a forced unwind), or handle_error() throws, forget() and
  /// end_unwound() run as the stack unwinds, and the unwind goes on.
  template <class Forget>
  void finish_and_shut_down(Request& request, const address& client_address, Forget forget) {
    struct cut_short {
      BaseServer* server;
      Request& request;
      Forget& forget;
      bool armed = true;
      ~cut_short() {
        if (!armed) return;
        forget();
        server->end_unwound(request);
      }
    } unwinding{this, request, forget};
    const detail::request_outcome outcome = finish_or_handle_error(request, client_address);
    unwinding.armed = false;
    forget();
    derived().shutdown_request(request);
    count_completed(outcome);
  }

  /// Ends a request whose thread is being unwound: shutdown_request(), counted as failed.
  /// (Nothing may leave it: it runs during an unwind, in which no second one can start.)
  void end_unwound(Request& request) noexcept {
    try {
      derived().shutdown_request(request);
    } catch (...) {  // an exception would end the process here: the request's destructor
    }                // closes it
    count_completed(true);
  }

  /// drain()'s first step (beyond Python): raises draining() (which ends keep-alive
  /// connections at their next request boundary, see reader), then, for a stream server,
  /// stops new connections from reaching the listen backlog and processes every connection
  /// already there (through process_request(), as serve_forever() would), so that no client
  /// whose connection the kernel accepted is reset when the socket closes. New connections:
  /// a Unix socket refuses them (shutdown(SHUT_RD) on the listener, which keeps its queue);
  /// on Linux a TCP socket drops their SYNs with a socket filter, so they are refused once
  /// it closes (or reach the next server on the port, when the client's SYN is retried).
  /// Handshakes already under way complete within a round trip: the backlog is emptied until
  /// it has stayed empty for drain_settle (TCP only), or until `deadline`.
  /// Datagram servers: datagrams still in the socket's buffer are not served (the drain
  /// finishes the requests already received); UDP clients must retry anyway.
  void drain_backlog(detail::clock::time_point deadline) {
    drain_signal_.start();
    const int fd = fileno();
    if (Derived::socket_type != SOCK_STREAM || fd < 0 || handed_over()) return;
    const bool unix_socket = server_address.family() == AF_UNIX;
    if (unix_socket) {
      ::shutdown(fd, SHUT_RD);
    } else {
#if defined(__linux__)  // also in the portable mode: no other system has a replacement
      // Accept everything but a SYN (flags & (SYN|ACK)) == SYN: the final ACK of a handshake
      // under way still completes its connection. The filter sees the TCP header at 0.
      sock_filter code[] = {BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),
                            BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),
                            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),
                            BPF_STMT(BPF_RET | BPF_K, 0), BPF_STMT(BPF_RET | BPF_K, 0xffffffffu)};
      sock_fprog program{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
      (void)::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof program);
#endif
    }
    detail::nonblocking_scope nonblocking(fd);
    const auto settle = unix_socket ? detail::clock::duration::zero() : drain_settle;
    while (detail::clock::now() < deadline) {
      if (handle_request_noblock()) continue;
      const auto until = std::min(deadline, detail::clock::now() + settle);
      pollfd p{fd, POLLIN, 0};
      if (until <= detail::clock::now() || detail::poll_until(&p, 1, until) == 0) break;
    }
  }

  /// drain()'s wait for the requests in flight, until done() (checked under `lock`, signalled
  /// through `changed`) or `deadline`. Connections still waiting for their next request
  /// reader::drain_wait_for_request after the drain started are ended then: their reads
  /// return end of stream (drain_signal::release_waiters()); when the grace ends first they
  /// are left for drain() to cut, and counted as cut. Returns done().
  template <class Condition, class Done>
  bool wait_for_drained(std::unique_lock<std::mutex>& lock, Condition& changed,
                        detail::clock::time_point deadline, Done done) {
    const auto release_at = std::min(
        deadline, drain_signal_.started_at() + std::chrono::duration_cast<detail::clock::duration>(
                                                   reader::drain_wait_for_request));
    if (changed.wait_until(lock, release_at, done)) return true;
    if (release_at >= deadline) return false;  // the grace is over first: cut, not release
    lock.unlock();
    drain_signal_.release_waiters();
    lock.lock();
    return changed.wait_until(lock, deadline, done);
  }

  /// Until when the serve loop stops accepting after running out of descriptors (see
  /// handle_get_request_error()): a loop of a mix-in's own honours it too.
  detail::clock::time_point accept_paused_until() const noexcept {
    return accept_backoff_.paused_until();
  }

  /// How long drain_backlog() waits for TCP handshakes under way (beyond Python).
  static constexpr std::chrono::milliseconds drain_settle{50};

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
    accept_backoff_.succeeded();
    count(counters_->accepted);
    if (derived().verify_request(request, client_address)) {
      try {
        derived().process_request(request, client_address);
      } catch (detail::forced_unwind&) {  // process_request() has ended the request
        throw;
      } catch (...) {
        const detail::request_outcome outcome = detail::outcome_of_current_exception();
        derived().handle_error(request, client_address);
        derived().shutdown_request(request);
        count_completed(outcome);
      }
    } else {
      count(counters_->rejected);
      derived().shutdown_request(request);
    }
    return true;
  }

 private:
  void on_get_request_error(const std::error_code& ec, const std::system_error* thrown = nullptr) {
    if (detail::is_transient(ec)) return;
    count(counters_->get_request_errors);
    const char* call = detail::is_stream<Request> ? "accept" : "recvfrom";
    if (thrown != nullptr)
      derived().handle_get_request_error(*thrown);
    else
      derived().handle_get_request_error(std::system_error(ec, call));
    if (detail::is_fatal_get_request_error(ec))
      throw std::system_error(ec, std::string(call) + " on " + server_address.to_string() +
                                      " (is the server activated?)");
    accept_backoff_.failed(ec);
  }

  detail::accept_backoff accept_backoff_;
};

}  // namespace socketserver
