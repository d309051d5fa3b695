// SPDX-License-Identifier: MIT
// Reading a connection's PROXY protocol header off its socket: exactly the header's bytes,
// never one of the client's own (what follows stays in the socket for the handler), within a
// deadline, through the library's waits (a fiber suspends, a pool worker hands the loop on).
#pragma once

#include <poll.h>        // POLLIN
#include <sys/socket.h>  // recv, MSG_PEEK, MSG_DONTWAIT
#include <sys/types.h>   // ssize_t

#include <cerrno>   // errno, EAGAIN, EWOULDBLOCK
#include <cstddef>  // std::size_t
#include <vector>   // std::vector

#include "errno.hpp"           // retry_on_eintr
#include "poll.hpp"            // wait_until
#include "proxy_protocol.hpp"  // parse_proxy_header
#include "time.hpp"            // clock

namespace socketserver {
namespace detail {

/// How read_proxy_header() ended.
enum class proxy_read_status {
  complete,   // `header` holds it; the socket's next byte is the client's first
  malformed,  // `why` says what is wrong
  closed,     // end of stream before the header ended
  timed_out,  // the deadline came first
  failed      // recv() or poll() failed: errno says why
};

/// Which header versions read_proxy_header() accepts: 1, 2, or 0 for either.
/// Reads the header at the start of socket `fd` (blocking or not) by `deadline`. It looks at
/// the bytes there with MSG_PEEK and takes (recv) only bytes the parser has found to be
/// header: one peek and one recv when the header arrived whole, with or without the client's
/// first bytes after it. Never throws: a poll() failure is `failed`.
inline proxy_read_status read_proxy_header(int fd, int version, clock::time_point deadline,
                                           proxy_header& header, const char*& why) noexcept {
  // Enough for v1 (107) and for v2 with an IPv4/IPv6 block and a few TLVs; a longer v2
  // header (its length field says so) grows the buffer.
  unsigned char small[256];
  std::vector<unsigned char> large;
  unsigned char* buffer = small;
  std::size_t capacity = sizeof small;
  std::size_t taken = 0;  // header bytes already received (taken off the socket)
  for (;;) {
    const ssize_t peeked = retry_on_eintr(
        [&] { return ::recv(fd, buffer + taken, capacity - taken, MSG_PEEK | MSG_DONTWAIT); });
    if (peeked == 0) return proxy_read_status::closed;
    if (peeked < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) return proxy_read_status::failed;
      try {
        if (clock::now() >= deadline || !wait_until(fd, POLLIN, deadline))
          return proxy_read_status::timed_out;
      } catch (...) {  // poll() failed; errno still says why
        return proxy_read_status::failed;
      }
      continue;
    }
    const std::size_t size = taken + static_cast<std::size_t>(peeked);
    if (taken == 0 && version != 0) {  // the first byte tells the version
      const bool v2 = buffer[0] == proxy_detail::v2_signature[0];
      if (v2 != (version == 2)) {
        why = version == 1 ? "not a PROXY protocol v1 header (the server accepts v1 only)"
                           : "not a PROXY protocol v2 header (the server accepts v2 only)";
        return proxy_read_status::malformed;
      }
    }
    const proxy_parse verdict = parse_proxy_header(buffer, size, header);
    if (verdict.verdict == proxy_verdict::invalid) {
      why = verdict.why;
      return proxy_read_status::malformed;
    }
    // Complete: take the rest of the header. Incomplete: every byte there is header; take
    // them all, and make room for what the header still needs.
    const std::size_t take =
        (verdict.verdict == proxy_verdict::complete ? header.length : size) - taken;
    const ssize_t got = retry_on_eintr([&] { return ::recv(fd, buffer + taken, take, 0); });
    if (got < 0) return proxy_read_status::failed;
    if (static_cast<std::size_t>(got) != take) return proxy_read_status::closed;  // not there
    taken += take;
    if (verdict.verdict == proxy_verdict::complete) return proxy_read_status::complete;
    if (verdict.needed > capacity) {
      large.assign(buffer, buffer + taken);
      large.resize(verdict.needed);
      buffer = large.data();
      capacity = large.size();
    }
  }
}

}  // namespace detail
}  // namespace socketserver
