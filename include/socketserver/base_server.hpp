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
#include <stdexcept>     // std::logic_error
#include <string>        // std::string, std::to_string
#include <system_error>  // std::system_error, std::error_code
#include <type_traits>   // std::false_type, std::void_t, std::is_same_v
#include <utility>       // std::declval, std::move, std::pair

#include "address.hpp"
#include "any_server.hpp"
#include "detail/accept_errors.hpp"
#include "detail/connection_counts.hpp"
#include "detail/errno.hpp"
#include "detail/exceptions.hpp"
#include "detail/exclusive_wait.hpp"
#include "detail/fd.hpp"
#include "detail/poll.hpp"
#include "detail/proxy_io.hpp"
#include "detail/time.hpp"
#include "detail/wakeup.hpp"
#include "handlers.hpp"
#include "io.hpp"  // reader::drain_wait_for_request
#include "proxy.hpp"
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

/// True when Server redefines verify_request() (or overloads it): the default needs no
/// serialising with the other hooks.
template <class Server, class Base, class = void>
struct redefines_verify_request : std::true_type {};
template <class Server, class Base>
struct redefines_verify_request<Server, Base, std::void_t<decltype(&Server::verify_request)>>
    : std::bool_constant<
          !std::is_same_v<decltype(&Server::verify_request), decltype(&Base::verify_request)>> {};

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

  // --- Behind a load balancer, and per-client limits (beyond Python; stream servers). -------

  /// Which PROXY protocol header (HAProxy's v1 or v2) each connection begins with; off (the
  /// default) reads none. When on, the serve loop closes, unread, a connection from a source
  /// outside proxy_trusted_sources (counted in stats().untrusted_sources); the others have
  /// their header read in the request's own context (its thread, child, fiber or pool
  /// worker; on a synchronous server, the serve loop) before finish_request(), within
  /// proxy_header_timeout. client_address then becomes the client the header names (a LOCAL
  /// or UNKNOWN header, a proxy's health check, keeps the connection's own). verify_request()
  /// runs there too, after the header, with that address, instead of on the serve loop; a
  /// redefined one is then called one at a time with get_request() and service_actions()
  /// (it must not wait). A header that is missing, malformed, of another version or late
  /// cuts the connection: handle_error() receives a proxy_header_error naming the client and
  /// the reason (the default prints nothing, as for a client that went away), and
  /// stats().proxy_header_failures counts it. Datagram servers: unsupported (serving throws
  /// std::logic_error): a datagram load balancer relays each packet with its own header,
  /// which is not a connection's. Set before serving.
  proxy_protocol_mode proxy_protocol = proxy_protocol_mode::off;
  /// How long a connection has to deliver its whole PROXY header (5 s).
  std::chrono::duration<double> proxy_header_timeout{5.0};
  /// The sources allowed to send a PROXY header (the load balancers): see source_networks.
  /// Empty (the default) trusts none, so a server with proxy_protocol on and no list serves
  /// no one.
  source_networks proxy_trusted_sources;
  /// At most this many connections at once from one client IP address (0, the default: no
  /// limit). Counted when the connection is accepted, or, with proxy_protocol on, for the
  /// client the header names, once it is read. A connection beyond it is closed before its
  /// handler runs and counted in stats().over_connection_limit. One hash lookup under one
  /// of 16 locks per connection. Unix-socket peers are not limited; a prefork worker counts
  /// its own connections; a ForkingMixIn server counts in the parent (the children's
  /// headers are read in the children, so with proxy_protocol on it is not enforced there).
  /// verify_request() remains for rules of your own. Set before serving.
  std::size_t max_connections_per_ip = 0;
  /// A connection older than this is ended at its next read at a request boundary:
  /// StreamRequestHandler's rfile returns end of stream there, as during a drain (a read in
  /// the middle of a request is never cut). Counted from when its handler starts (after the
  /// PROXY header). std::nullopt (the default): no limit. No timer, no scan: the read
  /// compares the time.
  timeout_type max_connection_age;

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
      auto hooks = proxied_hooks_lock();
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
  /// With proxy_protocol on, the header is read first (see finish_or_handle_error()).
  void process_request(Request& request, const address& client_address) {
    detail::request_outcome outcome = detail::request_outcome::failed;
    try {
      outcome = finish_or_handle_error(request, client_address);
    } catch (detail::forced_unwind&) {  // the handler ended this thread: see end_unwound()
      end_unwound(request);
      throw;
    }  // (an exception handle_error() throws goes to handle_request_noblock())
    derived().shutdown_request(request);
    count_completed(outcome);
  }

  /// Python's BaseServer.finish_request(): finishes one request by running the
  /// RequestHandlerClass on it (setup(), handle(), finish()).
  /// (With max_connection_age set, the handler's rfile ends the connection at its first
  /// request boundary past it.)
  void finish_request(Request& request, const address& client_address) {
    detail::run_handler<Handler>(request, client_address, derived(),
                                 max_connection_age ? detail::deadline_after(max_connection_age)
                                                    : detail::clock::time_point::max());
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
    try {
      throw;
    } catch (const proxy_header_error&) {  // counted in stats(); quiet as disconnects are
      return;
    } catch (...) {
    }
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
  /// block); returns how the request ended, for count_completed(). What every server does
  /// with a request in the request's own context (the base's process_request(), a mix-in's
  /// thread, child, fiber or pool worker). First, with proxy_protocol on, it reads the PROXY
  /// header, takes the client's connection slot (max_connections_per_ip) and asks
  /// verify_request() (see admit_proxied()); a request refused there is not finished. The
  /// client's connection slot is given back when it returns.
  detail::request_outcome finish_or_handle_error(Request& request, const address& client_address) {
    const address* client = &client_address;
    address original;                 // with proxy_protocol on: the client the header names
    slot_holder slot{this, nullptr};  // gives back the client's slot when the request ends
    if (max_connections_per_ip != 0 && !proxied())
      slot.client = &client_address;  // taken at accept
    try {
      if (proxied()) {
        original = client_address;
        const detail::request_outcome admitted = admit_proxied(request, original);
        if (admitted != detail::request_outcome::completed) return admitted;
        if (max_connections_per_ip != 0) slot.client = &original;
        client = &original;
      }
      derived().finish_request(request, *client);
      return detail::request_outcome::completed;
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {
      const detail::request_outcome outcome = detail::outcome_of_current_exception();
      derived().handle_error(request, *client);
      return outcome;
    }
  }

  /// True for a stream server with proxy_protocol on.
  bool proxied() const noexcept {
    return detail::is_stream<Request> && proxy_protocol != proxy_protocol_mode::off;
  }

  /// The hooks lock of a proxied server whose verify_request() is its own (it then runs in
  /// the requests' contexts): held around get_request() and service_actions() by the serve
  /// loops, and around verify_request() by admit_proxied(). Owns nothing otherwise.
  std::unique_lock<std::mutex> proxied_hooks_lock() {
    if constexpr (detail::redefines_verify_request<Derived, BaseServer>::value) {
      if (proxied()) return std::unique_lock<std::mutex>(proxied_hooks_mutex_);
    }
    return std::unique_lock<std::mutex>();
  }

  /// Takes a connection slot for `client` (max_connections_per_ip); true when it may connect.
  /// A client with no IP address (a Unix-socket peer) always may.
  bool take_slot(const address& client) {
    detail::client_key key;
    return !detail::client_key_of(client.data(), key) ||
           connection_counts_.try_take(key, max_connections_per_ip);
  }
  /// Gives back the slot take_slot(client) took.
  void give_back_slot(const address& client) noexcept {
    detail::client_key key;
    if (detail::client_key_of(client.data(), key)) connection_counts_.give_back(key);
  }

  /// The PROXY protocol step of finish_or_handle_error(), in the request's own context:
  /// reads the header (`client_address`, the connection's source, becomes the client it
  /// names), takes the client's connection slot, then asks verify_request(). Returns
  /// `completed` when the request may go on, else how it was refused: a header failure
  /// (reported to handle_error() as a proxy_header_error), a client over its limit, or
  /// verify_request()'s no.
  detail::request_outcome admit_proxied(Request& request, address& client_address) {
    if constexpr (detail::is_stream<Request>) {
      const int version = proxy_protocol == proxy_protocol_mode::v1   ? 1
                          : proxy_protocol == proxy_protocol_mode::v2 ? 2
                                                                      : 0;
      detail::proxy_header header;
      const char* why = "";
      const auto status = detail::read_proxy_header(
          request.fileno(), version, detail::deadline_after(proxy_header_timeout), header, why);
      if (status != detail::proxy_read_status::complete) {
        const int err = errno;
        std::error_code code;
        std::string reason;
        switch (status) {
          case detail::proxy_read_status::malformed:
            code = std::make_error_code(std::errc::protocol_error);
            reason = why;
            break;
          case detail::proxy_read_status::closed:
            code = std::make_error_code(std::errc::connection_reset);
            reason = "the connection ended before its PROXY header did";
            break;
          case detail::proxy_read_status::timed_out:
            code = std::make_error_code(std::errc::timed_out);
            reason = "no complete PROXY header within proxy_header_timeout (" +
                     std::to_string(proxy_header_timeout.count()) + " s)";
            break;
          default:
            code = std::error_code(err, std::system_category());
            reason = "recv";
            break;
        }
        try {
          throw proxy_header_error(
              code, "PROXY header from " + client_address.to_string() + ": " + reason);
        } catch (const proxy_header_error&) {
          derived().handle_error(request, client_address);
        }
        return detail::request_outcome::refused_by_proxy_header;
      }
      if (!header.local)
        client_address = address::from_native(reinterpret_cast<const sockaddr*>(&header.source),
                                              header.source_length);
      if (max_connections_per_ip != 0 && !take_slot(client_address))
        return detail::request_outcome::refused_over_limit;
      bool verified = false;
      {
        auto hooks = proxied_hooks_lock();
        verified = derived().verify_request(request, client_address);
      }
      if (!verified) {
        if (max_connections_per_ip != 0) give_back_slot(client_address);
        return detail::request_outcome::refused;
      }
    }
    return detail::request_outcome::completed;
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
      auto hooks = proxied_hooks_lock();
      if (!derived().get_request(request, client_address, ec)) {
        on_get_request_error(ec);
        return false;
      }
    } else {
      try {
        auto hooks = proxied_hooks_lock();
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
    if constexpr (!detail::is_stream<Request>) {
      if (proxy_protocol != proxy_protocol_mode::off || max_connections_per_ip != 0)
        throw std::logic_error(
            "proxy_protocol and max_connections_per_ip are for stream servers; this server "
            "receives datagrams");
    }
    const bool proxied_server = proxied();
    if (proxied_server && !proxy_trusted_sources.contains(client_address)) {
      count(counters_->untrusted_sources);  // cheap and quiet: no I/O, no report
      count(counters_->rejected);
      derived().shutdown_request(request);
      return true;
    }
    if (!proxied_server && max_connections_per_ip != 0 && !take_slot(client_address)) {
      count_completed(detail::request_outcome::refused_over_limit);
      derived().shutdown_request(request);
      return true;
    }
    // A proxied request is verified in its own context, once its header has been read.
    if (proxied_server || derived().verify_request(request, client_address)) {
      try {
        derived().process_request(request, client_address);
      } catch (detail::forced_unwind&) {  // process_request() has ended the request
        throw;
      } catch (...) {  // it never reached its context: its slot is given back here
        if (!proxied_server && max_connections_per_ip != 0) give_back_slot(client_address);
        const detail::request_outcome outcome = detail::outcome_of_current_exception();
        derived().handle_error(request, client_address);
        derived().shutdown_request(request);
        count_completed(outcome);
      }
    } else {
      if (max_connections_per_ip != 0) give_back_slot(client_address);
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

  // Gives back a client's connection slot when the request ends (client: nullptr for none).
  struct slot_holder {
    BaseServer* server;
    const address* client;
    ~slot_holder() {
      if (client != nullptr) server->give_back_slot(*client);
    }
  };

  detail::accept_backoff accept_backoff_;
  detail::connection_counts connection_counts_;  // max_connections_per_ip
  std::mutex proxied_hooks_mutex_;               // proxied_hooks_lock()
};

}  // namespace socketserver
