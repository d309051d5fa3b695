// SPDX-License-Identifier: MIT
// ThreadPoolMixIn: a fixed set of worker threads and a bounded queue of accepted requests.
#pragma once

#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <algorithm>           // std::max
#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdio>              // std::fprintf
#include <deque>               // std::deque
#include <memory>              // std::unique_ptr
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <thread>              // std::thread
#include <type_traits>         // std::is_same_v
#include <utility>             // std::move
#include <vector>              // std::vector

#include "address.hpp"
#include "base_server.hpp"  // detail::describe_current_exception
#include "socket.hpp"

namespace socketserver {

/// Handles requests on a fixed pool of worker threads fed by a bounded queue: what
/// ThreadingMixIn does without starting a thread per request, and with a limit.
///
/// - pool_size (default: 4 threads per core, at least 8): the worker threads, started by
///   the first request. A worker serves one request at a time, so pool_size bounds how many
///   connections are served at once; keep it above the number of long-lived connections
///   you expect.
/// - queue_size (default 64): requests accepted and waiting for a worker. When the queue is
///   full, process_request() waits for room, so the server stops accepting and new clients
///   wait in the kernel's listen backlog (backpressure), never in an unbounded queue.
/// - drain_on_close (true): server_close() lets the workers serve every queued request
///   before it returns; false closes the queued requests unserved (shutdown_request()), and
///   waits only for the requests already being served.
///
/// A stream server stops accepting (closes its socket) before it drains; a datagram server
/// drains first, so no reply goes out on a closed socket.
template <class Base>
class ThreadPoolMixIn : public Base {
 public:
  using request_type = typename Base::request_type;

  std::size_t pool_size = default_pool_size();
  std::size_t queue_size = 64;
  bool drain_on_close = true;

  using Base::Base;
  ThreadPoolMixIn(const ThreadPoolMixIn&) = delete;
  ThreadPoolMixIn& operator=(const ThreadPoolMixIn&) = delete;
  ~ThreadPoolMixIn() { ThreadPoolMixIn::server_close(); }

  static std::size_t default_pool_size() noexcept {
    return std::max<std::size_t>(8, 4 * std::max(1u, std::thread::hardware_concurrency()));
  }

  /// Queues the request for a worker, waiting while the queue is full.
  /// @throws std::system_error if the worker threads cannot be started.
  void process_request(request_type& request, const address& client_address) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (workers_.empty()) start_workers();
    room_.wait(lock, [&] { return queue_.size() < std::max<std::size_t>(1, queue_size); });
    queue_.push_back(job{std::move(request), client_address});
    lock.unlock();
    work_.notify_one();
  }

  /// Runs one request on a worker: finish_request(), handle_error() if it threw, then
  /// shutdown_request() (the same steps as ThreadingMixIn's request thread).
  void process_request_thread(request_type& request, const address& client_address) {
    const bool failed = this->finish_or_handle_error(request, client_address);
    forget_serving_fd();
    this->derived().shutdown_request(request);
    this->count_completed(failed);
  }

  /// Closes the server and stops the workers (see drain_on_close).
  void server_close() {
    if constexpr (std::is_same_v<request_type, socketserver::socket>) {
      Base::server_close();
      stop_workers();
    } else {
      stop_workers();
      Base::server_close();
    }
  }

  /// Graceful stop: closes the socket (stream servers), lets the workers serve what is
  /// queued and running for up to `grace`, then closes the queued requests unserved and shuts
  /// down the connections being served, and closes the server. Returns how many requests
  /// were cut.
  std::size_t drain(std::chrono::duration<double> grace) {
    if constexpr (std::is_same_v<request_type, socketserver::socket>) Base::server_close();
    std::size_t cut = 0;
    std::deque<job> unserved;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!idle_.wait_for(lock, grace, [&] { return queue_.empty() && busy_ == 0; })) {
        unserved.swap(queue_);
        cut += unserved.size();
        for (std::size_t i = 0; i < workers_.size(); ++i) cut += shut_down_served(serving_[i]);
      }
    }
    room_.notify_all();
    close_unserved(unserved);
    this->derived().server_close();
    return cut;
  }

  /// Requests waiting for a worker now.
  std::size_t queued() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return queue_.size();
  }
  /// Workers serving a request now.
  std::size_t busy() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return busy_;
  }

 private:
  struct job {
    request_type request;
    address client_address;
  };

  void start_workers() {  // with mutex_ held
    stopping_ = false;
    const std::size_t n = std::max<std::size_t>(1, pool_size);
    serving_.reset(new std::atomic<int>[n]);
    for (std::size_t i = 0; i < n; ++i) serving_[i].store(no_fd);
    workers_.reserve(n);
    try {
      for (std::size_t i = 0; i < n; ++i) workers_.emplace_back([this, i] { work(serving_[i]); });
    } catch (...) {
      if (workers_.empty()) throw;  // serve with the workers that did start
    }
  }

  // One request at a time: one lock to take a job (and account for the last one), none
  // while serving. The condition variables are notified only when someone may wait.
  void work(std::atomic<int>& slot) {
    serving_fd_ = &slot;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to drain
      job next = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
      const bool was_full = queue_.size() + 1 >= std::max<std::size_t>(1, queue_size);
      slot.store(connection_fd(next.request), std::memory_order_release);
      lock.unlock();
      if (was_full) room_.notify_one();
      try {
        this->derived().process_request_thread(next.request, next.client_address);
      } catch (...) {
        std::fprintf(stderr, "socketserver: request from %s ended with %s\n",
                     next.client_address.to_string().c_str(),
                     detail::describe_current_exception().c_str());
      }
      forget_serving_fd();
      lock.lock();
      if (--busy_ == 0 && queue_.empty()) idle_.notify_all();
    }
  }

  // The connection of the request a worker is serving, which drain() may shut down.
  static int connection_fd(const request_type& request) noexcept {
    if constexpr (std::is_same_v<request_type, socketserver::socket>)
      return request.fileno();
    else
      return no_fd;
  }

  // Each worker's slot holds the descriptor it serves. The worker empties it before the
  // connection is closed, and drain() marks it while shutting that descriptor down, so
  // drain() never shuts down a descriptor number that has been closed and reused.
  static constexpr int no_fd = -1;
  static constexpr int being_shut_down = -2;

  void forget_serving_fd() noexcept {
    if (serving_fd_ == nullptr) return;
    int fd = serving_fd_->load(std::memory_order_acquire);
    while (fd != no_fd) {
      if (fd == being_shut_down) {  // drain() is in shutdown(): a system call's wait at most
        std::this_thread::yield();
        fd = serving_fd_->load(std::memory_order_acquire);
      } else if (serving_fd_->compare_exchange_weak(fd, no_fd, std::memory_order_acq_rel)) {
        return;
      }
    }
  }

  static std::size_t shut_down_served(std::atomic<int>& slot) noexcept {
    int fd = slot.load(std::memory_order_acquire);
    if (fd < 0 || !slot.compare_exchange_strong(fd, being_shut_down, std::memory_order_acq_rel))
      return 0;
    const bool cut = ::shutdown(fd, SHUT_RDWR) == 0;
    slot.store(no_fd, std::memory_order_release);  // the worker closes it as usual
    return cut ? 1 : 0;
  }

  void stop_workers() {
    std::deque<job> unserved;
    std::vector<std::thread> workers;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      if (!drain_on_close) unserved.swap(queue_);
      workers.swap(workers_);
    }
    work_.notify_all();
    room_.notify_all();
    close_unserved(unserved);
    for (std::thread& t : workers) t.join();
  }

  // Closes requests that no worker will serve; they count as failed.
  void close_unserved(std::deque<job>& unserved) noexcept {
    for (job& j : unserved) {
      try {
        this->derived().shutdown_request(j.request);
      } catch (...) {
      }
      this->count_completed(true);
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable work_;                 // a job was queued, or stopping
  std::condition_variable room_;                 // the queue has room
  std::condition_variable idle_;                 // a worker finished a request
  std::unique_ptr<std::atomic<int>[]> serving_;  // a slot per worker
  inline static thread_local std::atomic<int>* serving_fd_ = nullptr;  // this worker's slot
  std::deque<job> queue_;
  std::vector<std::thread> workers_;
  std::size_t busy_ = 0;
  bool stopping_ = false;
};

}  // namespace socketserver
