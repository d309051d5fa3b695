// SPDX-License-Identifier: MIT
// any_server: what every server has, whatever its handler and request types (the socket,
// timeout, the serve/shutdown handshake and the counters).
#pragma once

#include <unistd.h>  // fork, pid_t

#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::milliseconds
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdint>             // std::uint64_t
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <stdexcept>           // std::logic_error
#include <string>              // std::string
#include <thread>              // std::this_thread, std::thread::id

#include "detail/drain_signal.hpp"
#include "detail/exceptions.hpp"  // request_outcome
#include "detail/poll.hpp"        // poll_once: a wait that suspends only a fiber
#include "detail/wakeup.hpp"
#include "socket.hpp"  // socket, timeout_type
#include "stats.hpp"

namespace socketserver {

/// What every server has, whatever its types: the socket, `timeout`, the serve/shutdown
/// handshake and stats(). A handler written for any server (`BaseRequestHandler<>`) sees its
/// server as this class.
class any_server {
 public:
  any_server(const any_server&) = delete;
  any_server& operator=(const any_server&) = delete;

  /// Python's BaseServer.socket: the server's socket (listening for stream servers,
  /// receiving for datagram servers).
  socketserver::socket socket;

  /// Python's BaseServer.timeout: how long handle_request() waits for a request before
  /// calling handle_timeout();
  /// std::nullopt (the default) waits forever. serve_forever() ignores it.
  timeout_type timeout;

  /// Python's BaseServer.fileno(): the server socket's descriptor, -1 once closed.
  int fileno() const noexcept { return socket.fileno(); }

  /// Python's BaseServer.shutdown(): tells the serve_forever() loop to stop and waits until
  /// it has. The loop wakes at once,
  /// not after its poll interval. If no loop is running, the next serve_forever() call returns
  /// as soon as it starts; before the first loop this waits for it (so
  /// `std::thread t([&]{ s.serve_forever(); }); s.shutdown();` never races), after one it
  /// returns at once (as CPython). Does not close the socket: server_close() does.
  /// @throws std::logic_error when called from the thread running serve_forever() (including
  /// from a handler of a synchronous server), which would otherwise wait for itself forever.
  void shutdown() {
    std::unique_lock<std::mutex> lock(mutex_);
    if ((serving_ && serving_thread_ == std::this_thread::get_id()) || in_loop_hooks_ == this ||
        (detail::fiber_waiting != nullptr && detail::fiber_waiting->hooks_owner() == this))
      throw std::logic_error(
          "shutdown() called from the thread running serve_forever() (or from the loop hooks of "
          "a pool worker or a fiber loop): it would wait for itself forever; call it from "
          "another thread");
    shutdown_request_ = true;
    wakeup_.notify();
    // Nothing serving, and a loop has already ended: return at once, as CPython does. The
    // request stays pending, so the next serve_forever() returns as soon as it starts; that
    // keeps "start a serving thread, then shutdown()" free of races on a reused server.
    if (!serving_ && completed_loops_ > 0) return;
    const auto generation = completed_loops_;
    if (detail::fiber_waiting != nullptr) {
      // A handler on a fiber: blocking its loop thread would keep the loop from ending
      // (FiberMixIn waits for every loop's accepting fiber). Suspend only this fiber.
      while (completed_loops_ == generation) {
        lock.unlock();
        (void)detail::poll_once(nullptr, 0, detail::clock::now() + std::chrono::milliseconds(1));
        lock.lock();
      }
      return;
    }
    cv_.wait(lock, [&] { return completed_loops_ != generation; });
  }

  /// A snapshot of the request counters. On a prefork supervisor (PreforkMixIn), the sum over
  /// its workers, live (each counts in memory shared with it), with its own; in a worker,
  /// the worker's own.
  server_stats stats() const noexcept {
    server_stats s = snapshot(*counters_);
    for (const counter_block* b = worker_blocks_.load(std::memory_order_acquire); b != nullptr;
         b = b->next)
      for (std::size_t i = 0; i < b->count; ++i) add(s, snapshot(b->slots()[i].counts));
    return s;
  }

  /// True once drain() has started (beyond Python): a handler that serves several requests
  /// on one connection should end it at the next request boundary. StreamRequestHandler's
  /// rfile does that for you (a read that waits for the next request returns end of stream).
  /// Also true in the children of a forking server whose parent is draining.
  bool draining() const noexcept { return drain_signal_.started(); }

  /// A descriptor that becomes readable (POLLIN) when drain() starts, for a handler that
  /// waits for its client some other way than through rfile. Do not read it or close it.
  int draining_fileno() const noexcept { return drain_signal_.fileno(); }

  /// The drain signal itself, which rfile and wfile watch.
  const detail::drain_signal& drain_state() const noexcept { return drain_signal_; }

  /// Call after another process took over this server's listening socket
  /// (hand_over_listeners()), before shutdown(): the socket is then left to it. drain() lets
  /// the requests in flight finish but leaves the socket's backlog alone (the successor
  /// serves it; a drain would stop it or take it), server_close() closes this process's
  /// descriptor but leaves a Unix socket's file, and serving leaves the socket non-blocking
  /// (the mode is the socket's, shared with the successor). Not while server_close() runs.
  void socket_handed_over() noexcept {
    handed_over_.store(true, std::memory_order_release);
    owned_path_.clear();
  }
  /// True after socket_handed_over().
  bool handed_over() const noexcept { return handed_over_.load(std::memory_order_acquire); }

  /// True while a thread is inside serve_forever().
  bool is_serving() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return serving_;
  }

 protected:
  any_server() = default;
  ~any_server() = default;

  /// @cond INTERNAL
  // serve_forever() runs its loop inside this scope: `auto serving = begin_serving();`.
  class serving_scope {
   public:
    explicit serving_scope(any_server& server) noexcept : server_(server) {}
    serving_scope(const serving_scope&) = delete;
    serving_scope& operator=(const serving_scope&) = delete;
    ~serving_scope() { server_.end_serving(); }

   private:
    any_server& server_;
  };
  /// @endcond
  /// Marks the server as serving until the returned scope ends (what serve_forever() does
  /// first; a mix-in with a serve loop of its own does it too).
  /// @throws std::logic_error if another thread is serving already.
  [[nodiscard]] serving_scope begin_serving() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (serving_) throw std::logic_error("serve_forever() is already running in another thread");
    serving_ = true;
    serving_thread_ = std::this_thread::get_id();
    return serving_scope(*this);
  }
  /// True once shutdown() has been called and the loop has not ended yet: a serve loop of a
  /// mix-in's own checks it between requests.
  bool shutdown_requested() const noexcept {
    return shutdown_request_.load(std::memory_order_acquire);
  }

  /// @cond INTERNAL
  // The counters behind stats(); the server layers count what they see, in *counters_.
  // (Address-free lock-free atomics: they work in memory shared between processes too.)
  struct counters {
    std::atomic<std::uint64_t> accepted{0}, rejected{0}, completed{0}, errors{0}, disconnects{0},
        timeouts{0}, get_request_errors{0}, queued{0}, pool_grown{0}, pool_threads{0},
        untrusted_sources{0}, proxy_header_failures{0}, over_connection_limit{0};
  };
  // A prefork worker's counters, in memory its supervisor shares with it (see PreforkMixIn):
  // a cache line of its own, so that workers do not slow each other down.
  struct alignas(64) counter_slot {
    counters counts;
    std::atomic<long> pid{0};  // the worker counting here; 0 for none
  };
  // One serve_forever_workers() call's slots (its header, then `count` slots), linked to the
  // blocks of earlier calls that needed fewer slots: stats() sums every block.
  struct alignas(64) counter_block {
    counter_block* next = nullptr;
    std::size_t count = 0;
    counter_slot* slots() noexcept { return reinterpret_cast<counter_slot*>(this + 1); }
    const counter_slot* slots() const noexcept {
      return reinterpret_cast<const counter_slot*>(this + 1);
    }
  };
  static server_stats snapshot(const counters& c) noexcept {
    server_stats s;
    s.accepted = c.accepted.load(std::memory_order_relaxed);
    s.rejected = c.rejected.load(std::memory_order_relaxed);
    s.errors = c.errors.load(std::memory_order_relaxed);
    s.disconnects = c.disconnects.load(std::memory_order_relaxed);
    s.timeouts = c.timeouts.load(std::memory_order_relaxed);
    s.get_request_errors = c.get_request_errors.load(std::memory_order_relaxed);
    s.queued = c.queued.load(std::memory_order_relaxed);
    s.pool_grown = c.pool_grown.load(std::memory_order_relaxed);
    s.pool_threads = c.pool_threads.load(std::memory_order_relaxed);
    s.untrusted_sources = c.untrusted_sources.load(std::memory_order_relaxed);
    s.proxy_header_failures = c.proxy_header_failures.load(std::memory_order_relaxed);
    s.over_connection_limit = c.over_connection_limit.load(std::memory_order_relaxed);
    // Read last: a request counted completed is then also counted accepted.
    s.completed = c.completed.load(std::memory_order_acquire);
    if (s.completed + s.rejected > s.accepted) s.accepted = s.completed + s.rejected;
    return s;
  }
  static void add(server_stats& to, const server_stats& s) noexcept {
    to.accepted += s.accepted;
    to.rejected += s.rejected;
    to.completed += s.completed;
    to.errors += s.errors;
    to.disconnects += s.disconnects;
    to.timeouts += s.timeouts;
    to.get_request_errors += s.get_request_errors;
    to.queued += s.queued;
    to.pool_grown += s.pool_grown;
    to.pool_threads += s.pool_threads;
    to.untrusted_sources += s.untrusted_sources;
    to.proxy_header_failures += s.proxy_header_failures;
    to.over_connection_limit += s.over_connection_limit;
  }
  void count(std::atomic<std::uint64_t>& counter) noexcept {
    counter.fetch_add(1, std::memory_order_relaxed);
  }
  void count_completed(bool failed) noexcept {
    count_completed(failed ? detail::request_outcome::failed : detail::request_outcome::completed);
  }
  void count_completed(detail::request_outcome outcome) noexcept {
    switch (outcome) {
      case detail::request_outcome::failed:
        count(counters_->errors);
        break;
      case detail::request_outcome::disconnected:
        count(counters_->disconnects);
        break;
      case detail::request_outcome::timed_out:
        count(counters_->timeouts);
        break;
      case detail::request_outcome::completed:
        break;
      case detail::request_outcome::refused_by_proxy_header:
        count(counters_->proxy_header_failures);
        count(counters_->rejected);
        return;
      case detail::request_outcome::refused_over_limit:
        count(counters_->over_connection_limit);
        count(counters_->rejected);
        return;
      case detail::request_outcome::refused:
        count(counters_->rejected);
        return;
    }
    counters_->completed.fetch_add(1, std::memory_order_release);
  }
  counters own_counters_;
  counters* counters_ = &own_counters_;  // where this process counts: a worker's slot in one
  // A prefork supervisor's workers' slots (PreforkMixIn maps and unmaps them), summed by
  // stats(); nullptr elsewhere.
  std::atomic<const counter_block*> worker_blocks_{nullptr};

  detail::wakeup wakeup_;
  // Raised by drain(); shared with forked request children (not with prefork workers).
  detail::drain_signal drain_signal_;
  // Set on a thread while it runs this server's loop hooks other than in serve_forever()'s
  // thread (a ThreadPoolMixIn leader): shutdown() from there would wait for itself too.
  inline static thread_local const any_server* in_loop_hooks_ = nullptr;
  // The Unix socket file this server created and removes when it closes.
  std::string owned_path_;
  std::atomic<bool> handed_over_{false};  // socket_handed_over()

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
  /// @endcond

 private:
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

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool serving_ = false;
  std::thread::id serving_thread_;
  unsigned long completed_loops_ = 0;
  std::atomic<bool> shutdown_request_{false};
};

/// The former name of any_server.
using server_base = any_server;

}  // namespace socketserver
