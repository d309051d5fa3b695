// SPDX-License-Identifier: MIT
// Parsing the PROXY protocol header (HAProxy's, versions 1 and 2) that a load balancer sends
// first on each connection it relays, naming the client it relays for. Bytes in, a verdict
// out; no I/O. The parse is incremental: a caller reads some bytes, asks, and is told either
// that the header is complete (and how long it was), that more bytes are needed (how many at
// least), or that the bytes cannot begin a header (and why). It never reads past `size`, and
// a prefix of a valid header is never called invalid.
#pragma once

#include <arpa/inet.h>   // inet_pton
#include <netinet/in.h>  // sockaddr_in, sockaddr_in6, AF_INET, AF_INET6
#include <sys/socket.h>  // sockaddr_storage, socklen_t, SOCK_STREAM, SOCK_DGRAM
#include <sys/un.h>      // sockaddr_un

#include <cstddef>  // std::size_t, offsetof
#include <cstdint>  // std::uint16_t
#include <cstring>  // std::memcmp, std::memcpy, std::memchr

namespace socketserver {
namespace detail {

/// What a complete PROXY header said.
struct proxy_header {
  int version = 0;  // 1 or 2
  // True when the header names no client to use: v2's LOCAL command (the proxy's own health
  // check), v1's UNKNOWN, or a v2 address family or transport left unspecified. The
  // connection's own addresses then stand.
  bool local = true;
  int socket_type = 0;  // SOCK_STREAM, SOCK_DGRAM, or 0 (not said)
  sockaddr_storage source{};
  socklen_t source_length = 0;
  sockaddr_storage destination{};
  socklen_t destination_length = 0;
  std::size_t length = 0;  // bytes the header took, from the first
};

enum class proxy_verdict { complete, incomplete, invalid };

struct proxy_parse {
  proxy_verdict verdict = proxy_verdict::invalid;
  std::size_t needed = 0;     // incomplete: the header has at least this many bytes in all
  const char* why = nullptr;  // invalid: what is wrong, for the error message
};

/// A v1 header is one line of at most this many bytes, CRLF included.
constexpr std::size_t proxy_v1_max_length = 107;
/// A v2 header is this many bytes and then as many as its length field says.
constexpr std::size_t proxy_v2_fixed_length = 16;

namespace proxy_detail {

constexpr unsigned char v2_signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                            0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr char v1_prefix[] = "PROXY ";  // 6 bytes

inline proxy_parse complete() noexcept { return {proxy_verdict::complete, 0, nullptr}; }
inline proxy_parse incomplete(std::size_t needed) noexcept {
  return {proxy_verdict::incomplete, needed, nullptr};
}
inline proxy_parse invalid(const char* why) noexcept { return {proxy_verdict::invalid, 0, why}; }

// A decimal port as v1 writes it: 0 to 65535, no sign, no leading zero.
inline bool parse_port(const char* text, std::size_t length, std::uint16_t& port) noexcept {
  if (length == 0 || length > 5 || (text[0] == '0' && length > 1)) return false;
  unsigned value = 0;
  for (std::size_t i = 0; i < length; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    value = value * 10 + static_cast<unsigned>(text[i] - '0');
  }
  if (value > 65535) return false;
  port = static_cast<std::uint16_t>(value);
  return true;
}

// A numeric address of `family` (inet_pton's strict forms: no leading zeros in IPv4).
inline bool parse_address(int family, const char* text, std::size_t length, std::uint16_t port,
                          sockaddr_storage& out, socklen_t& out_length) noexcept {
  char copy[64];
  if (length == 0 || length >= sizeof copy) return false;
  std::memcpy(copy, text, length);
  copy[length] = '\0';
  out = sockaddr_storage{};
  if (family == AF_INET) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    if (::inet_pton(AF_INET, copy, &in.sin_addr) != 1) return false;
    std::memcpy(&out, &in, sizeof in);
    out_length = sizeof in;
  } else {
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    if (::inet_pton(AF_INET6, copy, &in6.sin6_addr) != 1) return false;
    std::memcpy(&out, &in6, sizeof in6);
    out_length = sizeof in6;
  }
  return true;
}

// "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN...".
inline proxy_parse parse_v1(const unsigned char* data, std::size_t size, proxy_header& out) {
  const std::size_t prefix = sizeof v1_prefix - 1;
  if (std::memcmp(data, v1_prefix, size < prefix ? size : prefix) != 0)
    return invalid("not a PROXY protocol header");
  // The line ends at the first CR, which LF must follow; before it, printable ASCII only.
  std::size_t end = 0;
  for (;; ++end) {
    if (end == proxy_v1_max_length - 1) return invalid("v1 header longer than 107 bytes");
    if (end == size) return incomplete(size + 1);
    const unsigned char c = data[end];
    if (c == '\r') break;
    if (c < 0x20 || c > 0x7e) return invalid("v1 header has a byte that is not printable");
  }
  if (end + 1 == size) return incomplete(size + 1);
  if (data[end + 1] != '\n') return invalid("v1 header's CR is not followed by LF");
  // The fields, separated by single spaces.
  const char* line = reinterpret_cast<const char*>(data) + prefix;
  const std::size_t line_length = end - prefix;
  if (line_length >= 7 && std::memcmp(line, "UNKNOWN", 7) == 0 &&
      (line_length == 7 || line[7] == ' ')) {
    out = proxy_header{};
    out.version = 1;
    out.socket_type = SOCK_STREAM;
    out.length = end + 2;
    return complete();
  }
  const char* field[5];
  std::size_t field_length[5];
  std::size_t count = 0;
  for (std::size_t i = 0, start = 0; i <= line_length; ++i) {
    if (i < line_length && line[i] != ' ') continue;
    if (i == start) return invalid("v1 header has an empty field");
    if (count == 5) return invalid("v1 header has more than 5 fields");
    field[count] = line + start;
    field_length[count++] = i - start;
    start = i + 1;
  }
  if (count != 5) return invalid("v1 header has fewer than 5 fields");
  int family = 0;
  if (field_length[0] == 4 && std::memcmp(field[0], "TCP4", 4) == 0)
    family = AF_INET;
  else if (field_length[0] == 4 && std::memcmp(field[0], "TCP6", 4) == 0)
    family = AF_INET6;
  else
    return invalid("v1 header's protocol is not TCP4, TCP6 or UNKNOWN");
  std::uint16_t source_port = 0, destination_port = 0;
  if (!parse_port(field[3], field_length[3], source_port) ||
      !parse_port(field[4], field_length[4], destination_port))
    return invalid("v1 header has a port that is not 0-65535 in decimal");
  proxy_header h;
  if (!parse_address(family, field[1], field_length[1], source_port, h.source, h.source_length) ||
      !parse_address(family, field[2], field_length[2], destination_port, h.destination,
                     h.destination_length))
    return invalid("v1 header has an address that is not of its protocol");
  h.version = 1;
  h.local = false;
  h.socket_type = SOCK_STREAM;
  h.length = end + 2;
  out = h;
  return complete();
}

inline proxy_parse parse_v2(const unsigned char* data, std::size_t size, proxy_header& out) {
  if (std::memcmp(data, v2_signature, size < 12 ? size : 12) != 0)
    return invalid("not a PROXY protocol header");
  if (size > 12 && (data[12] >> 4) != 2) return invalid("v2 header's version is not 2");
  if (size > 12 && (data[12] & 0x0F) > 1)
    return invalid("v2 header's command is not LOCAL or PROXY");
  if (size > 13 && ((data[13] >> 4) > 3 || (data[13] & 0x0F) > 2))
    return invalid("v2 header's address family or transport is unknown");
  if (size < proxy_v2_fixed_length) return incomplete(proxy_v2_fixed_length);
  const std::size_t length =
      proxy_v2_fixed_length + (static_cast<std::size_t>(data[14]) << 8 | data[15]);
  if (size < length) return incomplete(length);
  const bool proxy_command = (data[12] & 0x0F) == 1;
  const int family = data[13] >> 4;
  const int transport = data[13] & 0x0F;
  const unsigned char* block = data + proxy_v2_fixed_length;
  const std::size_t block_length = length - proxy_v2_fixed_length;
  proxy_header h;
  h.version = 2;
  h.length = length;
  h.socket_type = transport == 1 ? SOCK_STREAM : transport == 2 ? SOCK_DGRAM : 0;
  // LOCAL, or an unspecified family or transport: the addresses are not to be used (the
  // block, if any, is skipped with the TLVs after it).
  if (!proxy_command || family == 0 || transport == 0) {
    out = h;
    return complete();
  }
  if (family == 1) {  // AF_INET: 4 + 4 address bytes, 2 + 2 port bytes
    if (block_length < 12) return invalid("v2 header's IPv4 address block is short");
    sockaddr_in source{}, destination{};
    source.sin_family = destination.sin_family = AF_INET;
    std::memcpy(&source.sin_addr, block, 4);
    std::memcpy(&destination.sin_addr, block + 4, 4);
    std::memcpy(&source.sin_port, block + 8, 2);  // network order, as sin_port is
    std::memcpy(&destination.sin_port, block + 10, 2);
    std::memcpy(&h.source, &source, sizeof source);
    std::memcpy(&h.destination, &destination, sizeof destination);
    h.source_length = h.destination_length = sizeof source;
  } else if (family == 2) {  // AF_INET6: 16 + 16, 2 + 2
    if (block_length < 36) return invalid("v2 header's IPv6 address block is short");
    sockaddr_in6 source{}, destination{};
    source.sin6_family = destination.sin6_family = AF_INET6;
    std::memcpy(&source.sin6_addr, block, 16);
    std::memcpy(&destination.sin6_addr, block + 16, 16);
    std::memcpy(&source.sin6_port, block + 32, 2);
    std::memcpy(&destination.sin6_port, block + 34, 2);
    std::memcpy(&h.source, &source, sizeof source);
    std::memcpy(&h.destination, &destination, sizeof destination);
    h.source_length = h.destination_length = sizeof source;
  } else {  // AF_UNIX: two 108-byte paths
    if (block_length < 216) return invalid("v2 header's Unix address block is short");
    for (int i = 0; i < 2; ++i) {
      const unsigned char* path = block + 108 * i;
      sockaddr_un un{};
      un.sun_family = AF_UNIX;
      const std::size_t room = sizeof un.sun_path < 108 ? sizeof un.sun_path : 108;
      std::memcpy(un.sun_path, path, room);
      // A path ends at its NUL; an abstract name (leading NUL) takes the whole field.
      std::size_t used = room;
      if (path[0] != 0) {
        const void* nul = std::memchr(path, 0, room);
        if (nul != nullptr)
          used = static_cast<std::size_t>(static_cast<const unsigned char*>(nul) - path) + 1;
      }
      sockaddr_storage& to = i == 0 ? h.source : h.destination;
      std::memcpy(&to, &un, sizeof un);
      (i == 0 ? h.source_length : h.destination_length) =
          static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + used);
    }
  }
  h.local = false;
  out = h;
  return complete();
}

}  // namespace proxy_detail

/// Parses the PROXY header at the start of [data, data + size) (see the header comment).
/// On `complete`, `out` holds what it said and its length; the bytes after it are the
/// connection's own.
inline proxy_parse parse_proxy_header(const unsigned char* data, std::size_t size,
                                      proxy_header& out) {
  if (size == 0) return proxy_detail::incomplete(1);
  if (data[0] == 'P') return proxy_detail::parse_v1(data, size, out);
  if (data[0] == proxy_detail::v2_signature[0]) return proxy_detail::parse_v2(data, size, out);
  return proxy_detail::invalid("not a PROXY protocol header");
}

}  // namespace detail
}  // namespace socketserver
