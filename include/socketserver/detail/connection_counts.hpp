// SPDX-License-Identifier: MIT
// How many connections each client address holds, for max_connections_per_ip: a hash map
// in shards, each under its own mutex, so that taking and giving back a slot costs one
// uncontended lock and one hash lookup, whatever the number of clients (no scan).
#pragma once

#include <netinet/in.h>  // sockaddr_in, sockaddr_in6, AF_INET, AF_INET6, IN6_IS_ADDR_V4MAPPED
#include <sys/socket.h>  // sockaddr, sockaddr_storage

#include <array>          // std::array
#include <cstddef>        // std::size_t
#include <cstdint>        // std::uint64_t
#include <cstring>        // std::memcpy
#include <mutex>          // std::mutex, std::lock_guard
#include <unordered_map>  // std::unordered_map

namespace socketserver {
namespace detail {

/// A client's IP address as a key: IPv4 (or IPv4-mapped IPv6, the same client) or IPv6.
struct client_key {
  std::uint64_t high = 0, low = 0;
  bool operator==(const client_key& other) const noexcept {
    return high == other.high && low == other.low;
  }
};

struct client_key_hash {
  std::size_t operator()(const client_key& key) const noexcept {
    // The two halves mixed (a multiplicative hash): neighbouring addresses spread out.
    const std::uint64_t mixed = (key.high * 0x9E3779B97F4A7C15ull) ^ (key.low + (key.low >> 29));
    return static_cast<std::size_t>(mixed * 0xBF58476D1CE4E5B9ull >> 17);
  }
};

/// The key of the IP address in `sa`; false for a family that has none (a Unix-socket peer).
inline bool client_key_of(const sockaddr* sa, client_key& key) noexcept {
  unsigned char bytes[16] = {};
  if (sa->sa_family == AF_INET) {
    sockaddr_in in;
    std::memcpy(&in, sa, sizeof in);
    bytes[10] = bytes[11] = 0xFF;  // as ::ffff:a.b.c.d
    std::memcpy(bytes + 12, &in.sin_addr, 4);
  } else if (sa->sa_family == AF_INET6) {
    sockaddr_in6 in6;
    std::memcpy(&in6, sa, sizeof in6);
    std::memcpy(bytes, in6.sin6_addr.s6_addr, 16);
  } else {
    return false;
  }
  std::memcpy(&key.high, bytes, 8);
  std::memcpy(&key.low, bytes + 8, 8);
  return true;
}

/// Connections held per client address (see the header comment).
class connection_counts {
 public:
  /// Takes a slot for `key` unless it holds `limit` already; true when taken.
  bool try_take(const client_key& key, std::size_t limit) {
    shard& s = shard_of(key);
    std::lock_guard<std::mutex> lock(s.mutex);
    std::size_t& held = s.held[key];
    if (held >= limit) {
      if (held == 0) s.held.erase(key);
      return false;
    }
    ++held;
    return true;
  }
  /// Gives back a slot of `key` (none held: nothing happens).
  void give_back(const client_key& key) noexcept {
    shard& s = shard_of(key);
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.held.find(key);
    if (it == s.held.end()) return;
    if (--it->second == 0) s.held.erase(it);  // an idle client costs nothing
  }
  /// The slots `key` holds now.
  std::size_t held(const client_key& key) {
    shard& s = shard_of(key);
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto it = s.held.find(key);
    return it == s.held.end() ? 0 : it->second;
  }

 private:
  struct shard {
    std::mutex mutex;
    std::unordered_map<client_key, std::size_t, client_key_hash> held;
  };
  shard& shard_of(const client_key& key) noexcept {
    return shards_[client_key_hash{}(key) % shards_.size()];
  }
  std::array<shard, 16> shards_;
};

}  // namespace detail
}  // namespace socketserver
