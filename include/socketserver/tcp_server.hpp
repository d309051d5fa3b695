// SPDX-License-Identifier: MIT
// basic_tcp_server: Python's TCPServer (stream sockets; the base of the other servers).
#pragma once

#include <sys/socket.h>  // bind, listen, AF_*, SOCK_*, SO_REUSEADDR, SO_REUSEPORT
#include <sys/stat.h>    // lstat, S_ISSOCK
#include <unistd.h>      // unlink, close

#include <string>        // std::string
#include <system_error>  // std::system_error
#include <utility>       // std::move, std::pair

#include "address.hpp"
#include "base_server.hpp"
#include "detail/errno.hpp"
#include "detail/fd.hpp"  // open_socket, accept_socket
#include "socket.hpp"
#include "strict_bool.hpp"

namespace socketserver {
namespace detail {

inline const char* family_name(int family) noexcept {
  switch (family) {
    case AF_INET:
      return "AF_INET";
    case AF_INET6:
      return "AF_INET6";
    case AF_UNIX:
      return "AF_UNIX";
    default:
      return "AF_UNSPEC";
  }
}

/// Removes the Unix socket file at `where` if it is a socket that nobody is listening on
/// (connecting to it is refused); returns whether it did.
inline bool remove_stale_unix_socket(const address& where, int socket_type) noexcept {
  const std::string path = where.path();
  struct stat st;
  if (where.family() != AF_UNIX || path.empty() || path[0] == '\0' ||
      ::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode))
    return false;
  // Non-blocking: a live server whose backlog is full answers EAGAIN instead of making the
  // probe wait. Only a refusal means nobody is there.
  const int probe = detail::open_socket(AF_UNIX, socket_type, 0, true);
  if (probe < 0) return false;
  const bool refused = ::connect(probe, where.data(), where.size()) < 0 && errno == ECONNREFUSED;
  ::close(probe);
  return refused && ::unlink(path.c_str()) == 0;
}

}  // namespace detail

/// Python's TCPServer: a stream socket server, and (with other policies) the base of
/// UDPServer and the Unix servers. Use it through the aliases in servers.hpp: `TCPServer<H>`,
/// or `TCPServer<H, MyServer>` as the base of your own server class.
///
/// Class-level policies, which a subclass may redefine as `static constexpr` members:
/// address_family (AF_INET; AF_INET6 for IPv6), socket_type (SOCK_STREAM),
/// request_queue_size (5, the listen backlog), allow_reuse_address (false: SO_REUSEADDR),
/// allow_reuse_port (false: SO_REUSEPORT, IPv4/IPv6 only). request_queue_size and the two
/// allow_ flags may instead be `static inline` variables, set at run time before the server
/// is constructed (or before server_bind()/server_activate() with bind_and_activate = false).
///
/// The constructor creates the socket and, unless bind_and_activate is false, calls
/// server_bind() and server_activate(); on failure it closes the socket and rethrows.
/// Hooks it calls run before your subclass's members are constructed: a server_bind()
/// override that needs them should be used with bind_and_activate = false.
///
/// The destructor closes the socket (and removes a Unix socket file this server created),
/// as Python's `with` block calls server_close(). A Unix socket file left behind by a server
/// that died (nobody listens on it) is replaced; one with a live server is an
/// `Address already in use` error.
template <class Handler, class Derived, class Request = socket>
class basic_tcp_server : public BaseServer<Derived, Handler, Request> {
  using base = BaseServer<Derived, Handler, Request>;

 public:
  /// Python's BaseServer.address_family: AF_INET (redefine as AF_INET6 for IPv6; AF_UNIX in
  /// the Unix servers).
  static constexpr int address_family = AF_INET;
  /// Python's BaseServer.socket_type: SOCK_STREAM (SOCK_DGRAM in the datagram servers).
  static constexpr int socket_type = SOCK_STREAM;
  /// Python's BaseServer.request_queue_size: the listen() backlog (5). It does not bound
  /// how many requests are served at once.
  static constexpr int request_queue_size = 5;
  /// Python's BaseServer.allow_reuse_address: set SO_REUSEADDR before binding (false).
  static constexpr bool allow_reuse_address = false;
  /// Python's TCPServer.allow_reuse_port: set SO_REUSEPORT before binding (false; IP only).
  static constexpr bool allow_reuse_port = false;

  /// Python's `TCPServer(server_address, RequestHandlerClass, bind_and_activate=True)`
  /// (the handler class is the template argument): creates the socket and, if
  /// `bind_and_activate`, calls server_bind() and server_activate().
  /// @code
  /// socketserver::TCPServer<MyTCPHandler> server({"localhost", 9999});
  /// server.serve_forever();
  /// @endcode
  /// @throws std::system_error naming the address if the socket cannot be created, bound
  ///         or activated; std::out_of_range for a bad port (from address).
  explicit basic_tcp_server(address addr, strict_bool bind_and_activate = true)
      : base(std::move(addr)) {
    this->socket = socketserver::socket(Derived::address_family, Derived::socket_type);
    if (bind_and_activate) {
      try {
        this->derived().server_bind();
        this->derived().server_activate();
      } catch (...) {
        basic_tcp_server::server_close();
        throw;
      }
    }
  }
  ~basic_tcp_server() { basic_tcp_server::server_close(); }

  /// Python's TCPServer.server_bind(): called by the constructor to bind the socket. May be
  /// overridden. Sets SO_REUSEADDR / SO_REUSEPORT as the policies ask, resolves a host name,
  /// binds, and sets server_address to the bound address.
  /// @throws std::system_error naming the address if it cannot be resolved or bound (e.g.
  ///         `bind 127.0.0.1:9999: Address already in use`).
  void server_bind() {
    if (Derived::allow_reuse_address) this->socket.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1);
    if (Derived::allow_reuse_port &&
        (Derived::address_family == AF_INET || Derived::address_family == AF_INET6))
#if defined(SO_REUSEPORT_LB)
      // FreeBSD: its SO_REUSEPORT lets the sockets share the port without spreading the
      // connections over them; SO_REUSEPORT_LB spreads them, as Linux's SO_REUSEPORT does.
      this->socket.setsockopt(SOL_SOCKET, SO_REUSEPORT_LB, 1);
#else
      this->socket.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1);
#endif
    const address target =
        resolve_passive(this->server_address, Derived::address_family, Derived::socket_type);
    if (target.family() != Derived::address_family)
      detail::throw_error(std::make_error_code(std::errc::address_family_not_supported),
                          "bind " + target.to_string() + " (the server's address_family is " +
                              detail::family_name(Derived::address_family) + ")");
    const std::string path = target.path();
    if (::bind(this->fileno(), target.data(), target.size()) < 0) {
      const int err = errno;
      // A socket file left behind by a server that died: nobody listens on it, so take its
      // place. A live server's socket (or any other kind of file) stays an error.
      if (!(err == EADDRINUSE && detail::remove_stale_unix_socket(target, Derived::socket_type) &&
            ::bind(this->fileno(), target.data(), target.size()) == 0))
        detail::throw_error({err, std::system_category()}, "bind " + target.to_string());
    }
    if (!path.empty() && path[0] != '\0') this->owned_path_ = path;
    this->server_address = this->socket.getsockname();
  }

  /// Python's TCPServer.server_activate(): called by the constructor to activate the
  /// server: listen(request_queue_size). May be overridden.
  /// @throws std::system_error naming the address if listen() fails.
  void server_activate() {
    if (::listen(this->fileno(), Derived::request_queue_size) < 0)
      detail::throw_errno("listen " + this->server_address.to_string());
  }

  /// Python's TCPServer.get_request(): accepts a connection, returns the connected socket
  /// and the client's address. May be overridden.
  /// @throws std::system_error if accept() fails.
  std::pair<Request, address> get_request() {
    std::pair<Request, address> got;
    std::error_code ec;
    if (!get_request(got.first, got.second, ec)) detail::throw_error(ec, "accept");
    return got;
  }
  /// The same without exceptions: false, with ec set, if it failed. serve_forever() uses
  /// this one (unless Derived redefines get_request()), so that finding no connection
  /// waiting costs no exception.
  bool get_request(Request& request, address& client_address, std::error_code& ec) {
    socklen_t len = address::capacity();
    const int fd = detail::retry_on_eintr(
        [&] { return detail::accept_socket(this->fileno(), client_address.data(), &len); });
    if (fd < 0) {
      ec = detail::last_error();
      return false;
    }
    client_address.resize(len);
    request = Request(fd);
    ec.clear();
    return true;
  }

  /// Python's TCPServer.shutdown_request(): shuts the connection down for writing, then
  /// closes it (close_request()). May be overridden.
  void shutdown_request(Request& request) {
    std::error_code ignored;  // e.g. ENOTCONN when the peer has already gone
    request.shutdown(SHUT_WR, ignored);
    this->derived().close_request(request);
  }

  /// Python's TCPServer.close_request(): closes the connection. May be overridden.
  void close_request(Request& request) { request.close(); }

  /// Python's TCPServer.server_close(): closes the server socket and removes the Unix socket
  /// file it created (CPython leaves
  /// it behind). Calling it again does nothing. May be overridden.
  void server_close() noexcept {
    this->socket.close();
    if (!this->owned_path_.empty()) {
      ::unlink(this->owned_path_.c_str());
      this->owned_path_.clear();
    }
  }
};

}  // namespace socketserver
