// SPDX-License-Identifier: MIT
// server_stats: the request counters every server keeps (server.stats()).
#pragma once

#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint64_t

namespace socketserver {

/// Request counters, read while serving with server.stats(). Cheap enough to leave on:
/// a relaxed atomic increment per event.
struct server_stats {
  std::uint64_t accepted = 0;  ///< requests get_request() returned
  /// Of those, refused before their handler ran: by verify_request(), by the PROXY protocol
  /// (see the three counters below, which say why) or by max_connections_per_ip.
  std::uint64_t rejected = 0;
  std::uint64_t completed = 0;  ///< processed to the end, with or without an error
  std::uint64_t errors = 0;     ///< of those, failed: ended by an exception (handle_error())
                                ///< other than the two below, or a forked child's failure
  /// Of those, ended because the peer went away: an error Python raises as ConnectionError
  /// (ECONNRESET, EPIPE, ESHUTDOWN, ECONNABORTED, ECONNREFUSED). Not counted in errors.
  std::uint64_t disconnects = 0;
  /// Of those, ended by a timeout (ETIMEDOUT: the handler's timeout, or a socket's). Not
  /// counted in errors.
  std::uint64_t timeouts = 0;
  std::uint64_t get_request_errors = 0;  ///< get_request() failures reported (not transient)
  /// ThreadPoolMixIn: requests that waited in the queue for a worker (every one of
  /// max_pool_size busy: the pool is starved).
  std::uint64_t queued = 0;
  /// ThreadPoolMixIn: workers started beyond pool_size because every worker was serving.
  std::uint64_t pool_grown = 0;
  /// ThreadPoolMixIn: worker threads now (pool_size + 1 when not grown); 0 for other servers.
  std::uint64_t pool_threads = 0;
  /// Of rejected: connections from a source outside proxy_trusted_sources, closed by the
  /// serve loop unread (a server that reads PROXY headers).
  std::uint64_t untrusted_sources = 0;
  /// Of rejected: connections whose PROXY header was missing, malformed, of a version not
  /// accepted, or not complete within proxy_header_timeout.
  std::uint64_t proxy_header_failures = 0;
  /// Of rejected: connections beyond max_connections_per_ip from one client address.
  std::uint64_t over_connection_limit = 0;
  /// Accepted, not rejected, not yet completed: being processed or queued.
  std::uint64_t active() const noexcept { return accepted - rejected - completed; }
};

/// One prefork worker's counters (PreforkMixIn::worker_stats()).
struct worker_counters {
  std::size_t index = 0;  ///< the worker's place, 0 to workers - 1: a replacement takes the
                          ///< place of the worker it replaces, and adds to its counts
  long pid = 0;           ///< the worker serving in that place now; 0 once it has exited
  server_stats stats;     ///< what the workers in that place have counted
};

}  // namespace socketserver
