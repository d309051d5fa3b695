// SPDX-License-Identifier: MIT
// ThreadPoolMixIn: a fixed set of worker threads and a bounded queue of accepted requests.
#pragma once

#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <algorithm>           // std::max
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdio>              // std::fprintf
#include <deque>               // std::deque
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <set>                 // std::multiset
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
        for (int fd : serving_fds_)
          if (::shutdown(fd, SHUT_RDWR) == 0) ++cut;
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
    workers_.reserve(n);
    try {
      for (std::size_t i = 0; i < n; ++i) workers_.emplace_back([this] { work(); });
    } catch (...) {
      if (workers_.empty()) throw;  // serve with the workers that did start
    }
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to drain
      job next = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
      int fd = connection_fd(next.request);
      if (fd >= 0) serving_fds_.insert(fd);
      serving_fd_ = &fd;
      lock.unlock();
      room_.notify_one();
      try {
        this->derived().process_request_thread(next.request, next.client_address);
      } catch (...) {
        std::fprintf(stderr, "socketserver: request from %s ended with %s\n",
                     next.client_address.to_string().c_str(),
                     detail::describe_current_exception().c_str());
      }
      forget_serving_fd();
      serving_fd_ = nullptr;
      lock.lock();
      --busy_;
      idle_.notify_all();
    }
  }

  // The connection of the request a worker is serving, which drain() may shut down. The
  // worker forgets it before the request is closed, so drain() never shuts down a
  // descriptor number that has been reused.
  static int connection_fd(const request_type& request) noexcept {
    if constexpr (std::is_same_v<request_type, socketserver::socket>)
      return request.fileno();
    else
      return -1;
  }

  void forget_serving_fd() {
    if (serving_fd_ == nullptr || *serving_fd_ < 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    serving_fds_.erase(serving_fds_.find(*serving_fd_));
    *serving_fd_ = -1;
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
  std::condition_variable work_;  // a job was queued, or stopping
  std::condition_variable room_;  // the queue has room
  std::condition_variable idle_;  // a worker finished a request
  std::multiset<int> serving_fds_;
  inline static thread_local int* serving_fd_ = nullptr;  // this worker's entry, if any
  std::deque<job> queue_;
  std::vector<std::thread> workers_;
  std::size_t busy_ = 0;
  bool stopping_ = false;
};

}  // namespace socketserver
