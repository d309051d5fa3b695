// SPDX-License-Identifier: MIT
// ThreadPoolMixIn: a fixed set of worker threads that take turns accepting, and a bounded
// queue of accepted requests for when they are all busy.
#pragma once

#include <fcntl.h>       // fcntl, O_NONBLOCK
#include <poll.h>        // pollfd, POLLIN
#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <algorithm>           // std::max
#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdio>              // std::fprintf
#include <deque>               // std::deque
#include <exception>           // std::exception_ptr, std::current_exception
#include <memory>              // std::unique_ptr
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <system_error>        // std::system_error
#include <thread>              // std::thread
#include <type_traits>         // std::is_same_v
#include <utility>             // std::move
#include <vector>              // std::vector

#include "address.hpp"
#include "base_server.hpp"  // detail::describe_current_exception
#include "detail/poll.hpp"
#include "detail/wakeup.hpp"
#include "socket.hpp"

namespace socketserver {

/// Handles requests on a fixed pool of worker threads: what ThreadingMixIn does without
/// starting a thread per request, and with a limit.
///
/// - pool_size (default: 4 threads per core, at least 8): at most this many requests are
///   served at once; keep it above the number of long-lived connections you expect.
/// - queue_size (default 64): requests accepted while pool_size are being served wait here.
///   When the queue is full the server stops accepting, so new clients wait in the kernel's
///   listen backlog (backpressure), never in an unbounded queue.
/// - drain_on_close (true): server_close() serves every queued request before it returns;
///   false closes the queued requests unserved (shutdown_request()), and waits only for the
///   requests already being served.
///
/// How (leader/followers): serve_forever() runs on pool_size + 1 worker threads, one at a
/// time. The worker running it (the leader) waits for and accepts the next request, with
/// get_request(), verify_request() and service_actions() called by one thread at a time as
/// in any server; then it hands the loop to an idle worker and serves the request itself.
/// A request therefore never passes from one thread to another, which is what a pool fed by
/// an acceptor thread pays for each request (a wake-up and a context switch). Only when
/// pool_size requests are being served does the leader (the one spare thread) queue what it
/// accepts, for the next worker that is free. The thread that called serve_forever() waits
/// for shutdown() and returns promptly, whatever the workers are serving.
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

  /// Serves on the workers until shutdown(); see the class comment. Returns once no worker
  /// is accepting; requests being served or queued finish on the workers (server_close()
  /// waits for them).
  /// @throws std::system_error if the socket cannot accept (as BaseServer::serve_forever())
  ///         or the workers cannot be started; std::logic_error if already serving.
  void serve_forever(
      std::chrono::duration<double> poll_interval = std::chrono::duration<double>(0.5)) {
    this->begin_serving();
    struct end_guard {
      ThreadPoolMixIn* server;
      ~end_guard() { server->end_serving(); }
    } guard{this};
    const int fd = this->fileno();
    if (fd < 0) throw std::system_error(EBADF, std::system_category(), "serve_forever");
    // Non-blocking for the whole run (not per leader), so that no leader can block in
    // accept() after another has put the flags back.
    struct restore_flags {
      int fd = -1, flags = 0;
      ~restore_flags() {
        if (fd >= 0) ::fcntl(fd, F_SETFL, flags);
      }
    } restore;
    bool nonblocking = true;  // a datagram server's get_request() never blocks
    if constexpr (std::is_same_v<request_type, socketserver::socket>) {
      const int flags = ::fcntl(fd, F_GETFL);
      if (flags >= 0 && (flags & O_NONBLOCK) == 0 &&
          ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0) {
        restore.fd = fd;  // (assigning a temporary would restore at once)
        restore.flags = flags;
      }
      nonblocking = (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (workers_.empty()) start_workers();
      poll_interval_ = poll_interval;
      nonblocking_ = nonblocking;
      failure_ = nullptr;
      accepting_ = true;
    }
    work_.notify_all();

    // Wait for shutdown(), a prefork supervisor's stop, or a leader's fatal error.
    pollfd fds[3] = {{this->wakeup_.fileno(), POLLIN, 0},
                     {this->stop_fd_, POLLIN, 0},
                     {failed_.fileno(), POLLIN, 0}};
    while (!this->shutdown_requested()) {
      for (pollfd& p : fds) p.revents = 0;
      detail::poll_for(fds, 3, std::nullopt);
      if (fds[1].revents != 0 || fds[2].revents != 0) break;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      accepting_ = false;
    }
    work_.notify_all();
    room_.notify_all();
    // Once the loop is ours, the leader has left it, and a worker that takes it after us
    // finds the server not accepting and leaves at once, without touching the socket.
    { std::lock_guard<std::mutex> loop(loop_); }
    std::exception_ptr failure;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      failure = failure_;
      failure_ = nullptr;
    }
    failed_.drain();
    if (failure) std::rethrow_exception(failure);
  }

  /// Serves the request here and hands the serve loop to another worker, when called by
  /// the leader and a serving slot is free; otherwise queues it (waiting while the queue is
  /// full). Called from handle_request(), it queues the request for a worker.
  void process_request(request_type& request, const address& client_address) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!leading_) {  // handle_request() on a caller's thread: hand it to a worker
      if (workers_.empty()) start_workers();
      enqueue(lock, request, client_address);
      return;
    }
    job next;
    if (serving_ >= std::max<std::size_t>(1, pool_size) || !queue_.empty()) {
      enqueue(lock, request, client_address);  // the leader keeps accepting
      if (serving_ >= std::max<std::size_t>(1, pool_size) || !accepting_) return;
      next = take_queued();  // in order: the oldest first, and lead again for the new one
    } else {
      next = job{std::move(request), client_address};
    }
    // Hand the loop on: an idle worker leads while this one serves.
    ++serving_;
    lock.unlock();
    leading_ = false;
    loop_.unlock();
    serve(next);
    lock.lock();
    finished_one();
    serve_queued(lock);
    lock.unlock();
    // Wait to lead again, still inside the loop this worker led: taking it back costs no
    // more than the wake-up. If the server stopped accepting, the loop ends here.
    loop_.lock();
    if (accepting_.load(std::memory_order_acquire))
      leading_ = true;
    else
      loop_.unlock();
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
      if (!changed_.wait_for(lock, grace, [&] { return queue_.empty() && serving_ == 0; })) {
        unserved.swap(queue_);
        cut += unserved.size();
        for (std::size_t i = 0; i < workers_.size(); ++i) cut += shut_down_served(serving_fds_[i]);
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
    return serving_;
  }

 private:
  struct job {
    request_type request;
    address client_address;
  };

  // --- The workers (all with mutex_ held unless said otherwise) ---------------------------

  void start_workers() {
    stopping_ = false;
    const std::size_t n = std::max<std::size_t>(1, pool_size) + 1;  // one spare to accept
    serving_fds_.reset(new std::atomic<int>[n]);
    for (std::size_t i = 0; i < n; ++i) serving_fds_[i].store(no_fd);
    workers_.reserve(n);
    try {
      for (std::size_t i = 0; i < n; ++i)
        workers_.emplace_back([this, i] { work(serving_fds_[i]); });
    } catch (...) {
      if (workers_.empty()) throw;  // serve with the workers that did start
    }
  }

  void work(std::atomic<int>& slot) {
    serving_fd_ = &slot;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      serve_queued(lock);
      if (stopping_ && queue_.empty()) return;
      if (accepting_ && !stopping_) {
        lock.unlock();
        lead();
        lock.lock();
        continue;
      }
      work_.wait(lock);
    }
  }

  // Serves queued requests while a serving slot is free.
  void serve_queued(std::unique_lock<std::mutex>& lock) {
    while (!queue_.empty() && serving_ < std::max<std::size_t>(1, pool_size)) {
      job next = take_queued();
      ++serving_;
      lock.unlock();
      serve(next);
      lock.lock();
      finished_one();
    }
  }

  void finished_one() {
    --serving_;
    if (!queue_.empty()) return;
    if (serving_ == 0) changed_.notify_all();  // for drain()
    if (stopping_) work_.notify_all();         // the last queued request is done: exit
  }

  // Waits for the loop (loop_: one worker runs it at a time), then runs it while the server
  // accepts. process_request() hands it on, and takes it back, from inside the loop; the
  // loop ends when the server stops accepting (mutex_ not held).
  void lead() {
    loop_.lock();
    if (!accepting_.load(std::memory_order_acquire)) {
      loop_.unlock();
      return;
    }
    leading_ = true;
    try {
      this->serve_loop(
          poll_interval_,
          [this] {
            return leading_ && accepting_.load(std::memory_order_acquire) &&
                   !this->shutdown_requested();
          },
          nonblocking_);
    } catch (...) {  // the socket cannot accept: serve_forever() raises it
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_) failure_ = std::current_exception();
      failed_.notify();
    }
    if (leading_) {
      leading_ = false;
      loop_.unlock();
    }
  }

  // Queues a request, waiting while the queue is full (unless the server stopped
  // accepting: the request in hand is queued anyway, to be served or closed).
  void enqueue(std::unique_lock<std::mutex>& lock, request_type& request,
               const address& client_address) {
    room_.wait(lock, [&] {
      return queue_.size() < std::max<std::size_t>(1, queue_size) || !accepting_ || stopping_;
    });
    queue_.push_back(job{std::move(request), client_address});
    work_.notify_one();
  }

  job take_queued() {
    job next = std::move(queue_.front());
    queue_.pop_front();
    room_.notify_one();
    return next;
  }

  // Serves one request (mutex_ not held).
  void serve(job& next) noexcept {
    serving_fd_->store(connection_fd(next.request), std::memory_order_release);
    try {
      this->derived().process_request_thread(next.request, next.client_address);
    } catch (...) {
      std::fprintf(stderr, "socketserver: request from %s ended with %s\n",
                   next.client_address.to_string().c_str(),
                   detail::describe_current_exception().c_str());
    }
    forget_serving_fd();
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
      accepting_ = false;
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
  std::condition_variable work_;     // a request was queued, the loop is free, or stopping
  std::condition_variable room_;     // the queue has room, or the server stopped accepting
  std::condition_variable changed_;  // the loop was left, or the last request ended
  std::deque<job> queue_;
  std::vector<std::thread> workers_;
  std::unique_ptr<std::atomic<int>[]> serving_fds_;  // a slot per worker
  std::size_t serving_ = 0;                          // requests being served
  std::atomic<bool> accepting_{false};               // serve_forever() is running
  std::mutex loop_;  // held by the worker that runs the serve loop (the leader)
  bool stopping_ = false;
  bool nonblocking_ = false;  // the stream socket is non-blocking for this serve_forever()
  std::chrono::duration<double> poll_interval_{0.5};
  std::exception_ptr failure_;  // a leader's fatal error, for serve_forever() to raise
  detail::wakeup failed_;       // readable once failure_ is set
  inline static thread_local bool leading_ = false;                    // this thread runs the loop
  inline static thread_local std::atomic<int>* serving_fd_ = nullptr;  // this worker's slot
};

}  // namespace socketserver
