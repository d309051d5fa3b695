// SPDX-License-Identifier: MIT
// socketserver::address: what Python spells ("host", port) or "/path/to/socket".
#pragma once

#include <arpa/inet.h>   // inet_ntop
#include <netdb.h>       // getaddrinfo, freeaddrinfo
#include <netinet/in.h>  // sockaddr_in, sockaddr_in6
#include <sys/socket.h>  // sockaddr_storage, socklen_t, AF_*
#include <sys/un.h>      // sockaddr_un

#include <cerrno>        // ENAMETOOLONG
#include <cstddef>       // std::size_t, offsetof
#include <cstdint>       // std::uint16_t
#include <cstring>       // std::memcpy, std::memcmp, std::memset
#include <stdexcept>     // std::out_of_range
#include <string>        // std::string, std::to_string
#include <string_view>   // std::string_view
#include <system_error>  // std::system_error
#include <tuple>         // std::tuple_size, std::tuple_element
#include <utility>       // std::move

#include "detail/errno.hpp"
#include "error.hpp"  // gai_category

namespace socketserver {

/// A socket address: an IPv4/IPv6 host and port, a Unix socket path, or a host name that the
/// server resolves when it binds.
///
/// Python's tuple `("localhost", 9999)` is `address("localhost", 9999)` (or just
/// `{"localhost", 9999}` where an address is expected) and a Unix path is `address("/tmp/s")`.
/// Structured bindings work as in Python: `auto [host, port] = server.server_address;`.
class address {
 public:
  /// An empty address (family AF_UNSPEC).
  address() noexcept { std::memset(&storage_, 0, sizeof storage_); }

  /// A host and port. A numeric host ("127.0.0.1", "::1") is parsed now; a name ("localhost")
  /// or "" (every interface) is resolved by the server that binds it.
  /// @throws std::out_of_range if port is not in 0..65535.
  address(std::string host, int port) : address() {
    if (port < 0 || port > 65535)
      throw std::out_of_range("port must be 0-65535, got " + std::to_string(port));
    if (!host.empty() && parse_numeric(host, static_cast<std::uint16_t>(port))) return;
    name_ = std::move(host);
    name_port_ = static_cast<std::uint16_t>(port);
  }

  /// A Unix socket path. A leading '\0' names Linux's abstract namespace (elsewhere it is an
  /// error: std::errc::address_family_not_supported).
  /// @throws std::system_error (ENAMETOOLONG) if the path does not fit in sockaddr_un.
  address(std::string_view path) : address() {  // NOLINT: implicit, like Python's str
    sockaddr_un un{};
    // A filesystem path needs its terminating '\0' inside sun_path; an abstract name
    // (leading '\0') is counted by length and may fill it. "" asks the kernel to pick a
    // unique abstract name when bound (Linux's autobind), as in Python.
    const bool abstract = !path.empty() && path[0] == '\0';
#if !defined(__linux__)
    if (abstract) {
      std::string shown(path);
      shown[0] = '@';
      throw std::system_error(
          std::make_error_code(std::errc::address_family_not_supported),
          "AF_UNIX abstract name " + shown +
              ": the abstract namespace (a leading '\\0') exists on Linux only");
    }
#endif
    if (path.size() > sizeof un.sun_path - (abstract ? 0 : 1)) {
      std::string shown(path);
      if (abstract) shown[0] = '@';
      throw std::system_error(
          std::make_error_code(std::errc::filename_too_long),
          "AF_UNIX path too long (" + std::to_string(path.size()) + " bytes, the limit is " +
              std::to_string(sizeof un.sun_path - (abstract ? 0 : 1)) + "): " + shown);
    }
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    size_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                   (abstract || path.empty() ? 0 : 1));
    std::memcpy(&storage_, &un, sizeof un);
  }
  ///@{
  /// A Unix socket path, as address(std::string_view).
  /// @throws std::system_error (ENAMETOOLONG) if the path does not fit in sockaddr_un.
  address(const char* path) : address(std::string_view(path)) {}         // NOLINT: implicit
  address(const std::string& path) : address(std::string_view(path)) {}  // NOLINT: implicit
  ///@}

  /// Copies a native address, as filled in by accept(), recvfrom() or getsockname().
  static address from_native(const sockaddr* sa, socklen_t size) noexcept {
    address a;
    if (size > sizeof a.storage_) size = sizeof a.storage_;
    std::memcpy(&a.storage_, sa, size);
    a.size_ = size;
    return a;
  }

  /// AF_INET, AF_INET6 or AF_UNIX; AF_UNSPEC for an empty address or a name not yet resolved.
  int family() const noexcept { return storage_.ss_family; }
  /// True for a host name that has not been resolved yet.
  bool is_unresolved() const noexcept { return family() == AF_UNSPEC && !name_.empty(); }
  /// True for the empty address (Python's `None` where an address is optional).
  bool empty() const noexcept { return family() == AF_UNSPEC && name_.empty() && name_port_ == 0; }

  /// The numeric host ("127.0.0.1", "::1"), or the name given if not resolved; "" for Unix.
  std::string host() const {
    char text[INET6_ADDRSTRLEN] = {};
    switch (family()) {
      case AF_INET:
        ::inet_ntop(AF_INET, &as<sockaddr_in>().sin_addr, text, sizeof text);
        return text;
      case AF_INET6: {
        ::inet_ntop(AF_INET6, &as<sockaddr_in6>().sin6_addr, text, sizeof text);
        std::string h = text;
        if (auto scope = as<sockaddr_in6>().sin6_scope_id) h += "%" + std::to_string(scope);
        return h;
      }
      default:
        return name_;
    }
  }

  /// The port (0 for Unix addresses).
  std::uint16_t port() const noexcept {
    switch (family()) {
      case AF_INET:
        return ntohs(as<sockaddr_in>().sin_port);
      case AF_INET6:
        return ntohs(as<sockaddr_in6>().sin6_port);
      default:
        return name_port_;
    }
  }

  /// The Unix socket path ("" for an unnamed socket, as Python reports a client's address).
  std::string path() const {
    if (family() != AF_UNIX) return {};
    const auto* un = &as<sockaddr_un>();
    std::size_t n =
        size_ > offsetof(sockaddr_un, sun_path) ? size_ - offsetof(sockaddr_un, sun_path) : 0;
    if (n > 0 && un->sun_path[0] != '\0') n = ::strnlen(un->sun_path, n);
    return std::string(un->sun_path, n);
  }

  /// "127.0.0.1:9999", "[::1]:9999", "localhost:9999", "/tmp/socket", "@abstract-name".
  std::string to_string() const {
    switch (family()) {
      case AF_INET:
        return host() + ":" + std::to_string(port());
      case AF_INET6:
        return "[" + host() + "]:" + std::to_string(port());
      case AF_UNIX: {
        std::string p = path();
        if (p.empty()) return "unnamed Unix socket";
        if (p[0] == '\0') p[0] = '@';
        return p;
      }
      default:
        if (name_.find(':') != std::string::npos)
          return "[" + name_ + "]:" + std::to_string(name_port_);
        return (name_.empty() ? std::string("*") : name_) + ":" + std::to_string(name_port_);
    }
  }

  ///@{
  /// The native form, valid for a resolved address (for bind(), connect(), sendto()).
  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  sockaddr* data() noexcept { return reinterpret_cast<sockaddr*>(&storage_); }
  ///@}
  /// The length of the native form in bytes.
  socklen_t size() const noexcept { return size_; }
  /// Room for accept()/recvfrom() to write a native address; then call resize().
  static constexpr socklen_t capacity() noexcept { return sizeof(sockaddr_storage); }
  /// Sets the length of the native form, after accept()/recvfrom() wrote it at data().
  void resize(socklen_t size) noexcept { size_ = size < capacity() ? size : capacity(); }

  /// Tuple-like access: get<0>() is host(), get<1>() is port().
  template <std::size_t I>
  auto get() const {
    static_assert(I < 2, "an address has two parts: host and port");
    if constexpr (I == 0)
      return host();
    else
      return port();
  }

  /// Equal when the same native address, or the same unresolved name and port.
  friend bool operator==(const address& a, const address& b) noexcept {
    return a.size_ == b.size_ && a.name_ == b.name_ && a.name_port_ == b.name_port_ &&
           std::memcmp(&a.storage_, &b.storage_, a.size_) == 0;
  }
  /// Not equal.
  friend bool operator!=(const address& a, const address& b) noexcept { return !(a == b); }

 private:
  template <class T>
  const T& as() const noexcept {
    return *reinterpret_cast<const T*>(&storage_);
  }

  bool parse_numeric(const std::string& host, std::uint16_t port) noexcept {
    addrinfo hints{};
    hints.ai_flags = AI_NUMERICHOST;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) return false;
    *this = from_native(found->ai_addr, found->ai_addrlen);
    ::freeaddrinfo(found);
    set_port(port);
    return true;
  }

  void set_port(std::uint16_t port) noexcept {
    if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(port);
    if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(port);
  }

  friend address resolve_passive(const address&, int, int);

  sockaddr_storage storage_;
  socklen_t size_ = 0;
  std::string name_;  // an unresolved host name ("" = any interface)
  std::uint16_t name_port_ = 0;
};

/// Resolves an address for bind(): a name through getaddrinfo() restricted to `family`, ""
/// to the wildcard address. A resolved address is returned as it is.
/// @throws std::system_error (category gai_category()) if the name cannot be resolved.
inline address resolve_passive(const address& a, int family, int socket_type) {
  if (!a.is_unresolved() && !(a.family() == AF_UNSPEC && a.name_.empty())) return a;
  addrinfo hints{};
  hints.ai_family = family;
  hints.ai_socktype = socket_type;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(a.name_port_);
  const int rc =
      ::getaddrinfo(a.name_.empty() ? nullptr : a.name_.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    std::error_code ec =
        rc == EAI_SYSTEM ? detail::last_error() : std::error_code(rc, gai_category());
    detail::throw_error(ec, "resolve " + a.to_string());
  }
  address resolved = address::from_native(found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);
  return resolved;
}

}  // namespace socketserver

namespace std {
template <>
struct tuple_size<socketserver::address> : integral_constant<size_t, 2> {};
template <>
struct tuple_element<0, socketserver::address> {
  using type = string;
};
template <>
struct tuple_element<1, socketserver::address> {
  using type = uint16_t;
};
}  // namespace std
