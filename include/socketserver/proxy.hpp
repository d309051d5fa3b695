// SPDX-License-Identifier: MIT
// What a stream server behind a load balancer is told to expect (beyond Python): which
// PROXY protocol header (HAProxy's v1 text or v2 binary) its connections begin with, and
// which sources may send one (source_networks); and the error that ends a connection whose
// header is missing, malformed or late (proxy_header_error).
#pragma once

#include <arpa/inet.h>   // inet_pton
#include <netinet/in.h>  // sockaddr_in, sockaddr_in6, AF_INET, AF_INET6, IN6_IS_ADDR_V4MAPPED
#include <sys/socket.h>  // AF_UNIX

#include <cstdint>           // std::uint8_t
#include <cstring>           // std::memcpy, std::memcmp
#include <initializer_list>  // std::initializer_list
#include <stdexcept>         // std::invalid_argument
#include <string>            // std::string
#include <string_view>       // std::string_view
#include <system_error>      // std::system_error, std::error_code
#include <vector>            // std::vector

#include "address.hpp"

namespace socketserver {

/// Which PROXY protocol header a stream server reads first on each connection (its
/// `proxy_protocol` attribute, beyond Python).
enum class proxy_protocol_mode {
  off,    ///< none: the connection's first byte is the client's (the default)
  v1,     ///< HAProxy's text header ("PROXY TCP4 ...\r\n", `send-proxy`)
  v2,     ///< HAProxy's binary header (`send-proxy-v2`)
  either  ///< whichever of the two the connection begins with
};

/// An allow-list of connection sources: IPv4 and IPv6 networks (CIDR) and, as one entry, every
/// Unix-socket peer. A server that reads PROXY headers takes them only from a source in its
/// `proxy_trusted_sources` (anyone else could claim any address); an empty list trusts no one.
/// An IPv4 network also matches the IPv4-mapped IPv6 form of its addresses,
/// as a dual-stack IPv6 server sees IPv4 peers.
/// @code
/// server.proxy_trusted_sources = {"127.0.0.1", "10.0.0.0/8", "fd00::/8", "unix"};
/// @endcode
class source_networks {
 public:
  /// An empty list: matches nothing.
  source_networks() = default;
  /// The list of `entries`, each as add() takes it.
  /// @throws std::invalid_argument for an entry add() refuses.
  source_networks(std::initializer_list<std::string_view> entries) {
    for (std::string_view entry : entries) add(entry);
  }

  /// Adds a network: "192.0.2.0/24", "2001:db8::/32", a single address ("127.0.0.1", "::1":
  /// the whole prefix length), or "unix" for every Unix-socket peer.
  /// @throws std::invalid_argument naming the entry when it is none of these (a host name, a
  ///         prefix longer than the address, bits set past the prefix).
  void add(std::string_view entry) {
    if (entry == "unix") {
      unix_peers_ = true;
      return;
    }
    const std::size_t slash = entry.find('/');
    const std::string host(entry.substr(0, slash));
    network n;
    unsigned max_bits = 32;
    if (::inet_pton(AF_INET, host.c_str(), n.bytes) == 1) {
      n.family = AF_INET;
    } else if (::inet_pton(AF_INET6, host.c_str(), n.bytes) == 1) {
      n.family = AF_INET6;
      max_bits = 128;
    } else {
      throw std::invalid_argument("source_networks: \"" + std::string(entry) +
                                  "\" is not an IPv4 or IPv6 network (nor \"unix\")");
    }
    n.bits = max_bits;
    if (slash != std::string_view::npos) {
      const std::string_view digits = entry.substr(slash + 1);
      unsigned bits = 0;
      bool ok = !digits.empty() && digits.size() <= 3;
      for (char c : digits) {
        ok = ok && c >= '0' && c <= '9';
        bits = bits * 10 + static_cast<unsigned>(c - '0');
      }
      if (!ok || bits > max_bits)
        throw std::invalid_argument("source_networks: \"" + std::string(entry) +
                                    "\" has a prefix length that is not 0-" +
                                    std::to_string(max_bits));
      n.bits = bits;
    }
    for (unsigned bit = n.bits; bit < max_bits; ++bit)
      if ((n.bytes[bit / 8] >> (7 - bit % 8)) & 1)
        throw std::invalid_argument("source_networks: \"" + std::string(entry) +
                                    "\" has address bits set past its prefix length");
    networks_.push_back(n);
  }

  /// True when `peer` (a connection's source, as accepted) is in one of the networks, or is a
  /// Unix-socket peer and "unix" was added.
  bool contains(const address& peer) const noexcept {
    if (peer.family() == AF_UNIX) return unix_peers_;
    unsigned char bytes[16];
    int family = peer.family();
    if (family == AF_INET) {
      sockaddr_in in;
      std::memcpy(&in, peer.data(), sizeof in);
      std::memcpy(bytes, &in.sin_addr, 4);
    } else if (family == AF_INET6) {
      sockaddr_in6 in6;
      std::memcpy(&in6, peer.data(), sizeof in6);
      if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {  // an IPv4 peer of a dual-stack socket
        family = AF_INET;
        std::memcpy(bytes, in6.sin6_addr.s6_addr + 12, 4);
      } else {
        std::memcpy(bytes, in6.sin6_addr.s6_addr, 16);
      }
    } else {
      return false;
    }
    for (const network& n : networks_)
      if (n.family == family && matches(n, bytes)) return true;
    return false;
  }

  /// True when nothing was added: contains() is false for every peer.
  bool empty() const noexcept { return networks_.empty() && !unix_peers_; }

 private:
  struct network {
    int family = 0;
    unsigned bits = 0;
    unsigned char bytes[16] = {};
  };
  static bool matches(const network& n, const unsigned char* bytes) noexcept {
    const unsigned whole = n.bits / 8;
    if (std::memcmp(n.bytes, bytes, whole) != 0) return false;
    const unsigned rest = n.bits % 8;
    if (rest == 0) return true;
    const auto mask = static_cast<unsigned char>(0xFF << (8 - rest));
    return (n.bytes[whole] & mask) == (bytes[whole] & mask);
  }

  std::vector<network> networks_;
  bool unix_peers_ = false;
};

/// Why a connection of a server that reads PROXY headers was cut before its handler ran: the
/// header was missing, malformed, of a version the server does not accept, or not complete
/// within proxy_header_timeout. what() names the client (the connection's source) and the
/// reason, e.g. `PROXY header from 127.0.0.1:40312: v1 header has fewer than 5 fields`.
/// handle_error() receives it (the default stays quiet, as for a client that went away);
/// stats() counts it in proxy_header_failures.
class proxy_header_error : public std::system_error {
 public:
  /// The error `code` (EPROTO for a bad header, ETIMEDOUT for a late one, the socket's
  /// errno otherwise) with its message `what`.
  proxy_header_error(std::error_code code, const std::string& what)
      : std::system_error(code, what) {}
};

}  // namespace socketserver
