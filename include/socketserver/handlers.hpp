// SPDX-License-Identifier: MIT
// Request handlers: BaseRequestHandler, StreamRequestHandler, DatagramRequestHandler.
#pragma once

#include <netinet/in.h>   // IPPROTO_TCP
#include <netinet/tcp.h>  // TCP_NODELAY

#include <chrono>        // std::chrono::duration_cast
#include <cstddef>       // std::size_t, std::ptrdiff_t
#include <stdexcept>     // std::logic_error
#include <string>        // std::string
#include <system_error>  // std::system_error
#include <type_traits>   // std::conditional_t, std::is_void_v, std::void_t, ...
#include <utility>       // std::declval

#include "address.hpp"
#include "any_server.hpp"
#include "datagram.hpp"
#include "detail/exceptions.hpp"
#include "detail/time.hpp"
#include "io.hpp"
#include "socket.hpp"

namespace socketserver {
namespace detail {

// What StreamRequestHandler's class-level settings are for the concrete handler.
struct stream_options {
  std::ptrdiff_t rbufsize;
  std::ptrdiff_t wbufsize;
  timeout_type timeout;
  bool disable_nagle_algorithm;
  std::size_t max_line_length;
};

// The server hands the request to the handler's base class through this, so a handler
// needs no constructor of its own: `struct H : StreamRequestHandler<> { void handle(); };`.
struct handler_context {
  void* request;
  const address* client_address;
  void* server;
  const stream_options* stream;
  clock::time_point queued_at;   // when the request began to wait for a thread ({}: it did not)
  clock::time_point expires_at;  // max_connection_age: rfile ends the connection after this
};

// Set by a server that queued the request now being handled (ThreadPoolMixIn), around
// process_request_thread(): the handler's timeout counts from then.
inline clock::time_point& request_queued_at() noexcept {
  static thread_local clock::time_point at{};
  return at;
}

inline const handler_context*& current_handler_context() noexcept {
  static thread_local const handler_context* context = nullptr;
  return context;
}

inline const handler_context& require_handler_context() {
  const handler_context* context = current_handler_context();
  if (context == nullptr)
    throw std::logic_error("a request handler is created by its server, for one request");
  return *context;
}

struct stream_handler_tag {};

template <class Handler, class = void>
struct has_handle : std::false_type {};
template <class Handler>
struct has_handle<Handler, std::void_t<decltype(std::declval<Handler&>().handle())>>
    : std::true_type {};

// Read at each request, not once: a setting may be a run-time `static inline` variable.
template <class Handler>
stream_options stream_options_of() {
  return {Handler::rbufsize, Handler::wbufsize, timeout_type(Handler::timeout),
          Handler::disable_nagle_algorithm, Handler::max_line_length};
}

/// Runs one request through a new Handler: setup(), handle(), then finish() even if handle()
/// threw (but not if setup() did), as in Python's BaseRequestHandler.__init__.
/// `expires_at`: the connection's age limit, when it has one (StreamRequestHandler's rfile
/// returns end of stream at its next request boundary after it).
template <class Handler, class Request, class Server>
void run_handler(Request& request, const address& client_address, Server& server,
                 clock::time_point expires_at = clock::time_point::max()) {
  static_assert(has_handle<Handler>::value,
                "a request handler must define `void handle()`: the work of one request");
  static_assert(std::is_default_constructible_v<Handler>,
                "a request handler must be default-constructible: its base class receives "
                "request, client_address and server from the server");
  static_assert(std::is_same_v<typename Handler::request_type, Request>,
                "the handler's request type does not match the server: stream servers (TCP, "
                "Unix stream) take StreamRequestHandler or BaseRequestHandler<socket>; datagram "
                "servers (UDP, Unix datagram) take DatagramRequestHandler or "
                "BaseRequestHandler<datagram>");
  using server_type = typename Handler::server_type;
  static_assert(std::is_base_of_v<server_type, Server>,
                "the handler names a server type that this server is not: check the Server "
                "argument of its base class");
  server_type* typed_server = &server;
  const stream_options* stream = nullptr;
  stream_options options{};
  if constexpr (std::is_base_of_v<stream_handler_tag, Handler>) {
    options = stream_options_of<Handler>();
    stream = &options;
  }
  const handler_context context{&request, &client_address,     typed_server,
                                stream,   request_queued_at(), expires_at};
  const handler_context*& current = current_handler_context();
  const handler_context* saved = current;
  current = &context;
  struct restore {
    const handler_context*& current;
    const handler_context* saved;
    ~restore() { current = saved; }
  } restore_on_exit{current, saved};

  Handler handler;
  current = saved;
  handler.setup();
  try {
    handler.handle();
  } catch (forced_unwind&) {  // the thread is ending: finish(), but nothing may replace that
    try {
      handler.finish();
    } catch (forced_unwind&) {
      throw;
    } catch (...) {
    }
    throw;
  } catch (...) {
    handler.finish();
    throw;
  }
  handler.finish();
}

}  // namespace detail

/// Base class for request handlers: one object per request, built by the server, which then
/// calls setup(), handle() and finish(). Define `void handle()` (required); redefine setup()
/// and finish() as needed, calling the base class's versions as Python code calls super().
///
/// `Request` is `socket` (the connection) for stream servers and `datagram` for datagram
/// servers. `Server` is the server class whose members handle() may use through `server`;
/// void (the default) types `server` as any_server, which every server is.
///
/// Python's BaseRequestHandler: `handle()` is not declared here, so a handler without one
/// fails to compile with a readable message instead of serving nothing. An exception that
/// leaves handle() goes to the server's handle_error(), and serving continues.
///
/// The Python docs' TCP handler:
/// @code
/// struct MyTCPHandler : socketserver::BaseRequestHandler<> {
///   void handle() {
///     std::string data = request.recv(1024);  // self.request.recv(1024).strip()
///     std::printf("Received from %s:\n%s\n", client_address.host().c_str(), data.c_str());
///     for (char& c : data) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
///     request.sendall(data);
///   }
/// };
/// @endcode
template <class Request = socket, class Server = void>
class BaseRequestHandler {
 public:
  /// The request type: `socket` (stream servers) or `datagram`.
  using request_type = Request;
  /// The type of `server`: `Server`, or any_server when `Server` is void.
  using server_type = std::conditional_t<std::is_void_v<Server>, any_server, Server>;

  /// Python's BaseRequestHandler.request: the connected socket, or the datagram and the
  /// server's socket (Python's `(data, socket)` pair).
  Request& request;
  /// Python's BaseRequestHandler.client_address: the client's address (for Unix stream
  /// clients usually unnamed).
  const address& client_address;
  /// Python's BaseRequestHandler.server: the server that received the request.
  server_type& server;

  BaseRequestHandler(const BaseRequestHandler&) = delete;
  BaseRequestHandler& operator=(const BaseRequestHandler&) = delete;

  /// Python's BaseRequestHandler.setup(): called before handle(). The default does nothing.
  void setup() {}
  /// Python's BaseRequestHandler.finish(): called after handle(), even if it threw (not if
  /// setup() threw). The default does nothing.
  void finish() {}

 protected:
  BaseRequestHandler()
      : request(*static_cast<Request*>(detail::require_handler_context().request)),
        client_address(*detail::require_handler_context().client_address),
        server(*static_cast<server_type*>(detail::require_handler_context().server)) {}
  ~BaseRequestHandler() = default;
};

/// A handler for stream servers with file-like rfile and wfile (Python's
/// StreamRequestHandler). Class-level settings, which a subclass may redefine as
/// `static constexpr` members, or as `static inline` variables to set at run time (e.g.
/// `static inline socketserver::timeout_type timeout;`, then `MyHandler::timeout =
/// std::chrono::seconds(flag);` before serving, as Python assigns `MyHandler.timeout`; they
/// are read as each request starts):
///   rbufsize (-1: buffered, 8192 bytes; 0: unbuffered), wbufsize (0: unbuffered, every write
///   is sent at once; >0: buffered, sent by flush() and at finish()), timeout (nullopt: none;
///   else the connection's socket timeout, and the limit on each whole rfile read or
///   readline, so a client that sends a byte at a time cannot hold it open),
///   disable_nagle_algorithm (TCP_NODELAY),
///   max_line_length (65536: the longest line rfile.readline() returns without an explicit
///   limit, so an endless line cannot exhaust memory; 0: no bound).
///
/// The Python docs' second TCP handler:
/// @code
/// struct MyTCPHandler : socketserver::StreamRequestHandler<> {
///   void handle() {
///     std::string data = rfile.readline();  // self.rfile.readline().strip()
///     for (char& c : data) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
///     wfile.write(data);
///   }
/// };
/// @endcode
template <class Server = void>
class StreamRequestHandler : public BaseRequestHandler<socket, Server>,
                             private detail::stream_handler_tag {
 public:
  /// Python's StreamRequestHandler.rbufsize: -1 buffers rfile (8192 bytes), 0 does not.
  static constexpr std::ptrdiff_t rbufsize = -1;
  /// Python's StreamRequestHandler.wbufsize: 0 sends each write at once; more buffers them
  /// until flush() or finish().
  static constexpr std::ptrdiff_t wbufsize = 0;
  /// Python's StreamRequestHandler.timeout: the connection's socket timeout, and the limit
  /// on each whole rfile read; none by default.
  static constexpr timeout_type timeout{};
  /// Python's StreamRequestHandler.disable_nagle_algorithm: set TCP_NODELAY (false).
  static constexpr bool disable_nagle_algorithm = false;
  /// The longest line rfile.readline() returns without an explicit limit (65536; 0: no
  /// bound; beyond Python, where a line may grow without end).
  static constexpr std::size_t max_line_length = 65536;

  /// Python's StreamRequestHandler.connection: the connected socket (the same as request).
  socketserver::socket& connection;
  /// Python's StreamRequestHandler.rfile: reads from the connection.
  reader rfile;
  /// Python's StreamRequestHandler.wfile: writes to the connection.
  writer wfile;

  /// Python's StreamRequestHandler.setup(): applies timeout and disable_nagle_algorithm,
  /// and creates rfile and wfile.
  void setup() {
    if (options_.timeout) connection.settimeout(options_.timeout);
    if (options_.disable_nagle_algorithm) {
      // Not every stream socket is TCP (Unix stream sockets have no Nagle): ignore that.
      const int on = 1;
      (void)::setsockopt(connection.fileno(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    const detail::drain_signal* drain = &static_cast<const any_server&>(this->server).drain_state();
    boundary_.watch(*drain);
    rfile = reader(connection, options_.rbufsize, options_.max_line_length, options_.timeout, drain,
                   &boundary_);
    // Time spent queued for a worker counts toward the first read's timeout.
    if (options_.timeout && queued_at_ != detail::clock::time_point{})
      rfile.limit_next_deadline(
          queued_at_ + std::chrono::duration_cast<detail::clock::duration>(*options_.timeout));
    rfile.end_at_boundary_after(expires_at_);
    wfile = writer(connection, options_.wbufsize, options_.timeout, drain);
  }

  /// Python's StreamRequestHandler.finish(): flushes wfile (a peer that has gone away is not
  /// an error here) and closes both files.
  void finish() {
    try {
      wfile.close();  // sends what is buffered
    } catch (const std::system_error&) {
      // The client went away before reading its reply (bpo-14574): nothing to do.
    }
    rfile.close();
  }

 protected:
  StreamRequestHandler()
      : connection(this->request),
        options_(*detail::require_handler_context().stream),
        queued_at_(detail::require_handler_context().queued_at),
        expires_at_(detail::require_handler_context().expires_at) {}

 private:
  detail::stream_options options_;
  detail::boundary_watch boundary_;  // the drain ends rfile's wait for a next request
  detail::clock::time_point queued_at_;
  detail::clock::time_point expires_at_;  // the server's max_connection_age
};

/// A handler for datagram servers (Python's DatagramRequestHandler): rfile reads the
/// packet, what handle() writes to wfile is sent back to the client as one datagram by
/// finish() (always, as in Python: writing nothing sends an empty datagram).
template <class Server = void>
class DatagramRequestHandler : public BaseRequestHandler<datagram, Server> {
 public:
  /// Python's DatagramRequestHandler.packet: the received packet.
  const std::string& packet;
  /// Python's DatagramRequestHandler.socket: the server's socket.
  socket_view socket;
  /// Python's DatagramRequestHandler.rfile: reads the packet.
  reader rfile;
  /// Python's DatagramRequestHandler.wfile: collects the reply.
  writer wfile;

  /// Python's DatagramRequestHandler.setup(): makes rfile over the packet and an empty wfile.
  void setup() {
    rfile = reader(packet);
    wfile = writer();
  }

  /// Python's DatagramRequestHandler.finish(): sends what handle() wrote to wfile back to
  /// the client as one datagram.
  /// @throws std::system_error if sendto() fails.
  void finish() { socket.sendto(wfile.getvalue(), this->client_address); }

 protected:
  DatagramRequestHandler() : packet(this->request.data), socket(this->request.socket) {}
};

}  // namespace socketserver
