// SPDX-License-Identifier: MIT
// server_base: what every server has whatever its types (socket, timeout, serve/shutdown).
#pragma once

#include <sys/types.h>  // pid_t
#include <unistd.h>     // fork

#include <atomic>              // std::atomic
#include <condition_variable>  // std::condition_variable
#include <cstdint>             // std::uint64_t
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <stdexcept>           // std::logic_error
#include <string>              // std::string
#include <thread>              // std::this_thread, std::thread::id
#include <type_traits>         // std::enable_if_t, std::is_same_v

#include "detail/wakeup.hpp"
#include "socket.hpp"

namespace socketserver {

/// A bool parameter that accepts only a bool. Servers take `bind_and_activate` as this, so
/// `TCPServer<H> s({"127.0.0.1", 0})` cannot also be read as (path "127.0.0.1", flag 0).
class strict_bool {
 public:
  template <class B, std::enable_if_t<std::is_same_v<B, bool>, int> = 0>
  constexpr strict_bool(B value) noexcept : value_(value) {}  // NOLINT: implicit by design
  constexpr operator bool() const noexcept { return value_; }

 private:
  bool value_;
};

/// What every server has, whatever its types: the socket, `timeout` and the serve/shutdown
/// handshake. A handler written for any server (`BaseRequestHandler<>`) sees its server as
/// this class.
/// Request counters, read while serving with server.stats(). Cheap enough to leave on:
/// a relaxed atomic increment per event.
struct server_stats {
  std::uint64_t accepted = 0;   ///< requests get_request() returned
  std::uint64_t rejected = 0;   ///< of those, refused by verify_request()
  std::uint64_t completed = 0;  ///< processed to the end, with or without an error
  std::uint64_t errors = 0;     ///< of those, ended by an exception (handle_error()), or by a
                                ///< forked child's non-zero exit
  std::uint64_t get_request_errors = 0;  ///< get_request() failures reported (not transient)
  /// Accepted, not rejected, not yet completed: being processed or queued.
  std::uint64_t active() const noexcept { return accepted - rejected - completed; }
};

class server_base {
 public:
  server_base(const server_base&) = delete;
  server_base& operator=(const server_base&) = delete;

  /// The server's socket (listening for stream servers, receiving for datagram servers).
  socketserver::socket socket;

  /// How long handle_request() waits for a request before calling handle_timeout();
  /// std::nullopt (the default) waits forever. serve_forever() ignores it.
  timeout_type timeout;

  /// The server socket's descriptor, -1 once closed.
  int fileno() const noexcept { return socket.fileno(); }

  /// Tells the serve_forever() loop to stop and waits until it has. The loop wakes at once,
  /// not after its poll interval. If no loop is running, the next serve_forever() call returns
  /// as soon as it starts; before the first loop this waits for it (so
  /// `std::thread t([&]{ s.serve_forever(); }); s.shutdown();` never races), after one it
  /// returns at once (as CPython). Does not close the socket: server_close() does.
  /// @throws std::logic_error when called from the thread running serve_forever() (including
  /// from a handler of a synchronous server), which would otherwise wait for itself forever.
  void shutdown() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (serving_ && serving_thread_ == std::this_thread::get_id())
      throw std::logic_error(
          "shutdown() called from the thread running serve_forever(): it would wait for itself "
          "forever; call it from another thread");
    shutdown_request_ = true;
    wakeup_.notify();
    // Nothing serving, and a loop has already ended: return at once, as CPython does. The
    // request stays pending, so the next serve_forever() returns as soon as it starts; that
    // keeps "start a serving thread, then shutdown()" free of races on a reused server.
    if (!serving_ && completed_loops_ > 0) return;
    const auto generation = completed_loops_;
    cv_.wait(lock, [&] { return completed_loops_ != generation; });
  }

  /// A snapshot of the request counters.
  server_stats stats() const noexcept {
    server_stats s;
    s.accepted = counters_.accepted.load(std::memory_order_relaxed);
    s.rejected = counters_.rejected.load(std::memory_order_relaxed);
    s.errors = counters_.errors.load(std::memory_order_relaxed);
    s.get_request_errors = counters_.get_request_errors.load(std::memory_order_relaxed);
    // Read last: a request counted completed is then also counted accepted.
    s.completed = counters_.completed.load(std::memory_order_acquire);
    if (s.completed + s.rejected > s.accepted) s.accepted = s.completed + s.rejected;
    return s;
  }

  /// True while a thread is inside serve_forever().
  bool is_serving() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return serving_;
  }

 protected:
  server_base() = default;
  ~server_base() = default;

  // serve_forever() brackets its loop with these.
  void begin_serving() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (serving_) throw std::logic_error("serve_forever() is already running in another thread");
    serving_ = true;
    serving_thread_ = std::this_thread::get_id();
  }
  void end_serving() noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      serving_ = false;
      shutdown_request_ = false;
      ++completed_loops_;
      wakeup_.drain();
    }
    cv_.notify_all();
  }
  bool shutdown_requested() const noexcept {
    return shutdown_request_.load(std::memory_order_acquire);
  }

  // The counters behind stats(); the server layers count what they see.
  struct counters {
    std::atomic<std::uint64_t> accepted{0}, rejected{0}, completed{0}, errors{0},
        get_request_errors{0};
  };
  void count(std::atomic<std::uint64_t>& counter) noexcept {
    counter.fetch_add(1, std::memory_order_relaxed);
  }
  void count_completed(bool failed) noexcept {
    if (failed) count(counters_.errors);
    counters_.completed.fetch_add(1, std::memory_order_release);
  }
  counters counters_;

  detail::wakeup wakeup_;
  // A descriptor whose readability (or hang-up) also stops serve_forever(): a prefork
  // worker's end of the pipe its supervisor closes. -1: none.
  int stop_fd_ = -1;
  // The Unix socket file this server created and removes when it closes.
  std::string owned_path_;

  // fork() for a child that will serve: the serve/shutdown state is locked while the
  // process is copied, then the child gets its own wake-up descriptor and state (it serves
  // nothing yet, and does not own the socket file).
  pid_t fork_server_process() {
    std::unique_lock<std::mutex> lock(mutex_);
    const pid_t pid = ::fork();
    lock.unlock();
    if (pid == 0) {
      wakeup_.reset();
      serving_ = false;
      shutdown_request_ = false;
      completed_loops_ = 0;
      owned_path_.clear();
    }
    return pid;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool serving_ = false;
  std::thread::id serving_thread_;
  unsigned long completed_loops_ = 0;
  std::atomic<bool> shutdown_request_{false};
};

}  // namespace socketserver
