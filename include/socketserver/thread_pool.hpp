// SPDX-License-Identifier: MIT
// ThreadPoolMixIn: the bounded pool of worker threads (the queue and its backpressure,
// growth to max_pool_size and shrinking after idle_timeout, drain, stats). How its workers
// take turns leading the serve loop (the lanes, the hand-on, the watcher) is
// detail/leader_lanes.hpp's.
#pragma once

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
#include "base_server.hpp"  // detail::is_stream, detail::has_nothrow_get_request
#include "detail/exceptions.hpp"
#include "detail/fd.hpp"
#include "detail/leader_lanes.hpp"
#include "detail/poll.hpp"
#include "detail/time.hpp"
#include "detail/wakeup.hpp"
#include "handlers.hpp"  // detail::request_queued_at
#include "socket.hpp"

namespace socketserver {
namespace detail {

// The type of &T::verify_request (and so on); void where it cannot be named (overloaded).
template <class T, class = void>
struct verify_request_type {
  using type = void;
};
template <class T>
struct verify_request_type<T, std::void_t<decltype(&T::verify_request)>> {
  using type = decltype(&T::verify_request);
};
template <class T, class = void>
struct service_actions_type {
  using type = void;
};
template <class T>
struct service_actions_type<T, std::void_t<decltype(&T::service_actions)>> {
  using type = decltype(&T::service_actions);
};
template <class T, class = void>
struct get_request_error_type {
  using type = void;
};
template <class T>
struct get_request_error_type<T, std::void_t<decltype(&T::handle_get_request_error)>> {
  using type = decltype(&T::handle_get_request_error);
};

/// True when Derived redefines a hook that the serve loop calls besides process_request():
/// get_request(), verify_request(), service_actions() or handle_get_request_error(). The
/// library's own are safe to call from several threads at once; a user's may not be.
template <class Derived, class Base>
constexpr bool redefines_loop_hooks =
    !has_nothrow_get_request<Derived, typename Base::request_type>::value ||
    !std::is_same_v<typename verify_request_type<Derived>::type,
                    typename verify_request_type<Base>::type> ||
    !std::is_same_v<typename service_actions_type<Derived>::type,
                    typename service_actions_type<Base>::type> ||
    !std::is_same_v<typename get_request_error_type<Derived>::type,
                    typename get_request_error_type<Base>::type>;

}  // namespace detail

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
/// - handoff_after (default 2 ms): how long a worker may serve a request with the serve loop
///   still in hand (see below) before another worker takes the loop over; 0 hands the loop
///   on before every request.
///
/// How (leader/followers): serve_forever() runs on pool_size + 1 worker threads, up to one
/// per core at a time. A worker running it (a leader) accepts the next request and serves
/// it itself: a request never passes from one thread to another, which is what a pool fed by
/// an acceptor thread pays for each request (a wake-up and a context switch). The leader
/// keeps the loop while it serves, and hands it to an idle worker only when the request has
/// to wait in the library's I/O (rfile, wfile or the request's socket: a recv() with nothing
/// there yet, a full send buffer): it first waits 100 µs for bytes on their way, then
/// until a new request arrives. A request whose bytes are there is served as TCPServer
/// serves it, and costs no wake-up at all. A handler that waits some other way (a lock, a
/// sleep, a database client) or keeps computing has the loop taken from it after
/// handoff_after by the thread that called serve_forever(), which watches for that while
/// requests are served, so the server keeps accepting.
///
/// One leader runs the loop at first. The watcher lets another join (a lane per core) when
/// in a whole handoff_after no leader found the backlog empty, and a leader that finds
/// nothing to accept while another is accepting steps down: more leaders than requests only
/// wake each other (the lanes: detail/leader_lanes.hpp). The leaders call get_request(),
/// verify_request(), service_actions() and handle_get_request_error() one at a time when Derived
/// redefines any of them, as one loop would; the library's own are safe to call at once, and are.
///
/// When every worker is serving (say, waiting on peers that send nothing), the leader (the one
/// spare thread) starts one more worker and serves what it accepted, so a pool never stops
/// serving behind idle connections; up to max_pool_size workers serve at once, and those
/// beyond pool_size exit after idle_timeout without work. Only at max_pool_size does a
/// leader queue what it accepts, for the next worker that is free; the time a request waits
/// there counts toward its handler's timeout (StreamRequestHandler::timeout: rfile's first
/// read ends that much sooner). stats() shows both: pool_grown, pool_threads and queued. The thread
/// that called serve_forever() returns promptly after shutdown(), whatever the workers are serving.
///
/// A stream server stops accepting (closes its socket) before it drains; a datagram server
/// drains first, so no reply goes out on a closed socket.
template <class Base>
class ThreadPoolMixIn : public Base {
 public:
  /// The request type of the server below: `socket` or `datagram`.
  using request_type = typename Base::request_type;

  /// Workers kept running (default_pool_size()); more are started up to max_pool_size.
  std::size_t pool_size = default_pool_size();
  /// Requests queued at max_pool_size before the server stops accepting (64).
  std::size_t queue_size = 64;
  /// server_close() serves the queued requests first (true) or closes them unserved.
  bool drain_on_close = true;
  /// How long a handler may hold the serve loop without waiting in the library's I/O before
  /// another worker takes the loop over (2 ms; 0 hands it on before every request).
  std::chrono::duration<double> handoff_after{0.002};
  /// Most requests served at once: beyond pool_size, a worker is started whenever every
  /// worker is serving (one thread per connection, as ThreadingMixIn, for long-lived ones).
  /// 1024 lets a few hundred keep-alive clients in (redis-benchmark -c 50, ab -k -c 100) and
  /// costs, per thread, its stack's address space (8 MiB reserved, only what it touches
  /// resident) and a few KiB. Set it to pool_size for a fixed pool (CPU-bound handlers).
  std::size_t max_pool_size = 1024;
  /// How long a worker beyond pool_size may wait for work before it exits.
  std::chrono::duration<double> idle_timeout{30.0};

  using Base::Base;
  ThreadPoolMixIn(const ThreadPoolMixIn&) = delete;
  ThreadPoolMixIn& operator=(const ThreadPoolMixIn&) = delete;
  ~ThreadPoolMixIn() { ThreadPoolMixIn::server_close(); }

  /// The default pool_size: 4 per core, at least 8.
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
    auto serving = this->begin_serving();
    const int fd = this->fileno();
    if (fd < 0) throw std::system_error(EBADF, std::system_category(), "serve_forever");
    // Non-blocking for the whole run (not per leader), so that no leader can block in
    // accept() after another has put the flags back. (A datagram server's get_request()
    // never blocks.)
    detail::nonblocking_scope nonblocking_socket(detail::is_stream<request_type> ? fd : -1,
                                                 &this->handed_over_);
    const bool nonblocking = !detail::is_stream<request_type> || nonblocking_socket.nonblocking();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (slot_count_ == 0) start_workers();
      poll_interval_ = poll_interval;
      idle_timeout_ = std::max(idle_timeout, std::chrono::duration<double>::zero());
      lanes_.open(std::max<std::size_t>(1, pool_size) + 1, fd,
                  std::max(handoff_after, std::chrono::duration<double>::zero()));
      nonblocking_ = nonblocking;
      failure_ = nullptr;
      accepting_ = true;
    }
    work_.notify_all();

    // Wait for shutdown(), a prefork supervisor's stop, or a leader's fatal error; meanwhile
    // take the loop from a request that holds it too long.
    pollfd fds[4] = {{this->wakeup_.fileno(), POLLIN, 0},
                     {this->derived().stop_fileno(), POLLIN, 0},
                     {failed_.fileno(), POLLIN, 0},
                     {lanes_.watcher_wakeup().fileno(), POLLIN, 0}};
    const auto watch_every = lanes_.handoff_after();
    typename lanes::watcher watcher(lanes_, this->counters_->accepted.load());
    bool idle = false;
    while (!this->shutdown_requested()) {
      for (pollfd& p : fds) p.revents = 0;
      const bool watching = !idle && watch_every.count() > 0;
      const int ready =
          detail::poll_for(fds, 4, watching ? timeout_type(watch_every) : std::nullopt);
      if (fds[1].revents != 0 || fds[2].revents != 0) break;
      if (fds[3].revents != 0) lanes_.watcher_wakeup().drain();
      if (ready > 0) {  // busy again: watch from now
        idle = false;
        watcher.look_again();
      } else {
        idle = watcher.turn(this->counters_->accepted.load());
      }
    }
    std::unique_lock<std::mutex> lock(mutex_);
    accepting_ = false;
    lock.unlock();
    work_.notify_all();
    room_.notify_all();
    lanes_.wake_all();
    // Wait for the leaders to leave the loop (a leader serving a request inline loses its
    // lane now), so that no thread touches the socket any more.
    lock.lock();
    lanes_.wait_until_left(lock);
    std::exception_ptr failure = failure_;
    failure_ = nullptr;
    lock.unlock();
    failed_.drain();
    if (failure) std::rethrow_exception(failure);
  }

  /// Serves the request here when called by the leader and a serving slot is free (handing
  /// the serve loop on if the request has to wait: see the class comment); otherwise queues
  /// it (waiting while the queue is full). Called from handle_request(), it queues the
  /// request for a worker.
  void process_request(request_type& request, const address& client_address) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!lanes::leading()) {  // handle_request() on a caller's thread: hand it to a worker
      if (slot_count_ == 0) start_workers();
      if (serving_ + queue_.size() >= capacity_) grow();
      enqueue(lock, request, client_address);
      return;
    }
    job next;
    // Every worker serving (waiting on idle peers, perhaps): one more, rather than a queue
    // that nothing may ever empty. (Off the fast path: a free slot skips this.)
    if (serving_ >= capacity_ && queue_.empty()) grow();
    if (serving_ >= capacity_ || !queue_.empty()) {
      enqueue(lock, request, client_address);  // the leader keeps accepting
      if (serving_ >= capacity_ || !accepting_) return;
      next = take_queued();  // in order: the oldest first, and lead again for the new one
    } else {
      next = job{std::move(request), client_address};
    }
    ++serving_;
    lock.unlock();
    lane_policy{this}.end_hooks_turn();  // other leaders may take requests while this one is served
    {
      served_one done{this, lock};
      serve_here(next);  // with the loop in hand, as long as the request need not wait
    }
    serve_queued(lock);
    lock.unlock();
    // Lead again, still inside the loop this worker led: when the loop was handed on, taking
    // it back costs no more than the wake-up. If the server stopped accepting, the loop ends.
    if (!lanes::leading()) take_lane();
  }

  /// Runs one request on a worker: finish_request(), handle_error() if it threw, then
  /// shutdown_request() (the same steps as ThreadingMixIn's request thread).
  /// A handler that ends its thread (pthread_exit(), cancellation) has its request shut down
  /// and counted as failed as the thread unwinds; the pool serves on with its other workers.
  void process_request_thread(request_type& request, const address& client_address) {
    this->finish_and_shut_down(request, client_address, [this] { forget_serving_fd(); });
  }

  /// Closes the server and stops the workers (see drain_on_close).
  void server_close() {
    if constexpr (detail::is_stream<request_type>) {
      Base::server_close();
      stop_workers();
    } else {
      stop_workers();
      Base::server_close();
    }
  }

  /// Graceful stop: queues the connections already in the backlog (drain_backlog()) and
  /// closes the socket (stream servers), lets the workers serve what is queued and running
  /// for up to `grace` in all, then closes the queued requests unserved and shuts
  /// down the connections being served, and closes the server. Returns how many requests
  /// were cut.
  std::size_t drain(std::chrono::duration<double> grace) {
    const auto deadline = detail::deadline_after(grace);
    this->drain_backlog(deadline);  // queues the connections already in the backlog
    if constexpr (detail::is_stream<request_type>) Base::server_close();
    std::size_t cut = 0;
    std::deque<job> unserved;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!this->wait_for_drained(lock, changed_, deadline,
                                  [&] { return queue_.empty() && serving_ == 0; })) {
        unserved.swap(queue_);
        cut += unserved.size();
        for (std::size_t i = 0; i < slot_count_; ++i) cut += shut_down_served(slots_[i].serving_fd);
      }
    }
    room_.notify_all();
    close_unserved(unserved);
    this->derived().server_close();
    return cut;
  }

  /// A prefork worker's own descriptors, not the supervisor's copies.
  void after_fork_in_child() {
    Base::after_fork_in_child();
    lanes_.watcher_wakeup().reset();
    failed_.reset();
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
    detail::clock::time_point queued_at{};  // when it was queued ({}: never)
  };

  // A worker thread's place: its thread, and the descriptor it serves (for drain()).
  struct worker_slot {
    std::atomic<int> serving_fd{no_fd};
    std::thread thread;    // joinable until stop_workers() or grow() reusing the slot joins it
    bool running = false;  // in work(); a slot neither running nor joinable is free
  };

  // --- The workers (all with mutex_ held unless said otherwise) ---------------------------

  // Starts pool_size workers and the spare: capacity_ requests served at once, by as many
  // workers plus one that accepts.
  void start_workers() {
    stopping_ = false;
    base_capacity_ = std::max<std::size_t>(1, pool_size);
    slot_count_ = std::max(base_capacity_, max_pool_size) + 1;
    slots_.reset(new worker_slot[slot_count_]);
    capacity_ = 0;
    threads_ = 0;
    idle_timeout_ = std::max(idle_timeout, std::chrono::duration<double>::zero());
    try {
      for (std::size_t i = 0; i <= base_capacity_; ++i) start_worker(i);
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {
      if (threads_ == 0) {
        slot_count_ = 0;
        throw;
      }
    }
    capacity_ = std::max<std::size_t>(1, threads_ - 1);  // serve with the workers that started
  }

  void start_worker(std::size_t i) {
    slots_[i].thread = std::thread([this, i] { work(i); });
    slots_[i].running = true;
    ++threads_;
    this->counters_->pool_threads.store(threads_, std::memory_order_relaxed);
  }

  // Every worker is serving: start one more, up to max_pool_size (false when it cannot).
  bool grow() {
    if (stopping_ || capacity_ + 1 >= slot_count_) return false;
    for (std::size_t i = 0; i < slot_count_; ++i) {
      worker_slot& slot = slots_[i];
      if (slot.running) continue;
      // A worker that left: it only unlocks mutex_ and returns after marking its slot.
      if (slot.thread.joinable()) slot.thread.join();
      try {
        start_worker(i);
      } catch (detail::forced_unwind&) {
        throw;
      } catch (...) {
        return false;  // no thread to be had: the request waits in the queue
      }
      ++capacity_;
      this->count(this->counters_->pool_grown);
      return true;
    }
    return false;
  }

  // A worker beyond pool_size found no work for idle_timeout: it leaves if a spare remains.
  bool retire() {
    if (stopping_ || threads_ <= base_capacity_ + 1 || serving_ >= capacity_ || !queue_.empty())
      return false;
    --capacity_;
    --threads_;
    this->counters_->pool_threads.store(threads_, std::memory_order_relaxed);
    retiring_ = true;
    return true;
  }

  // When an idle worker gives up waiting (time_point::max() while the pool is not grown).
  detail::clock::time_point idle_deadline() const {
    if (threads_ <= base_capacity_ + 1) return detail::clock::time_point::max();
    return detail::clock::now() +
           std::chrono::duration_cast<detail::clock::duration>(idle_timeout_);
  }

  void work(std::size_t slot) {
    serving_fd_ = &slots_[slot].serving_fd;
    std::unique_lock<std::mutex> lock(mutex_);
    struct leave {  // however the worker ends (a handler may end its thread): free the slot
      ThreadPoolMixIn* pool;
      std::size_t slot;
      std::unique_lock<std::mutex>& lock;
      ~leave() {
        if (!lock.owns_lock()) lock.lock();
        pool->slots_[slot].running = false;
        if (retiring_) {
          retiring_ = false;
        } else if (!pool->stopping_) {  // ended by its handler: one worker less
          --pool->threads_;
          if (pool->capacity_ > 1) --pool->capacity_;
          pool->counters_->pool_threads.store(pool->threads_, std::memory_order_relaxed);
        }
      }
    } leaving{this, slot, lock};
    for (;;) {
      serve_queued(lock);
      if (stopping_ && queue_.empty()) return;
      if (accepting_ && !stopping_) {
        lock.unlock();
        lead();
        lock.lock();
        if (retiring_) return;
        continue;
      }
      if (!detail::wait_idle(work_, lock, idle_deadline()) && queue_.empty() && !accepting_ &&
          retire())
        return;
    }
  }

  // Serves queued requests while a serving slot is free.
  void serve_queued(std::unique_lock<std::mutex>& lock) {
    while (!queue_.empty() && serving_ < capacity_) {
      job next = take_queued();
      ++serving_;
      lock.unlock();
      served_one done{this, lock};
      serve_here(next);
    }
  }

  // Ends a request's turn in serving_ (with mutex_ held again), however serve_here() ends:
  // also when the handler ends the worker's thread (a forced unwind).
  struct served_one {
    ThreadPoolMixIn* pool;
    std::unique_lock<std::mutex>& lock;
    ~served_one() {
      if (!lock.owns_lock()) lock.lock();
      pool->finished_one();
    }
  };

  void finished_one() {
    --serving_;
    if (!queue_.empty()) return;
    if (serving_ == 0) changed_.notify_all();  // for drain()
    if (stopping_) work_.notify_all();         // the last queued request is done: exit
  }

  // --- The leaders (detail/leader_lanes.hpp) ------------------------------------------------

  using lanes = detail::leader_lanes<ThreadPoolMixIn>;

  // Waits for a lane of the loop, then runs the loop while the server accepts.
  // process_request() hands the lane on, and takes one back, from inside the loop; the loop
  // ends when the server stops accepting (mutex_ not held).
  void lead() {
    if (!take_lane()) return;
    struct leave_loop {  // also when a handler ends this worker's thread (forced unwind)
      ThreadPoolMixIn* pool;
      ~leave_loop() { pool->lanes_.leave(); }
    } leaving{this};
    try {
      this->serve_loop(poll_interval_, lane_policy{this});
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {  // the socket cannot accept: serve_forever() raises it
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_) failure_ = std::current_exception();
      failed_.notify();
    }
  }

  // Waits for a free lane and takes it (this thread leads); false, without one, once the
  // server stops accepting, or when a worker beyond pool_size retires waiting for one.
  bool take_lane() {
    std::unique_lock<std::mutex> lock(mutex_);  // accepting_ changes only under it
    return lanes_.take(
        lock, [this] { return idle_deadline(); }, [this] { return retire(); });
  }

  struct lane_policy {  // how a leader runs serve_loop() (see BaseServer::one_loop)
    ThreadPoolMixIn* pool;
    bool keep_going() const noexcept {
      return lanes::leading() && pool->accepting_.load(std::memory_order_acquire) &&
             !pool->shutdown_requested();
    }
    bool socket_nonblocking() const noexcept { return pool->nonblocking_; }
    bool shared() const noexcept {
      return pool->lanes_.count() > 1 || pool->derived().socket_shared();
    }
    void take_hooks_turn() {
      pool->in_loop_hooks_ = pool;  // shutdown() from a hook would wait for this loop
      using derived_type = std::remove_reference_t<decltype(pool->derived())>;
      pool->lanes_.take_hooks_turn(detail::redefines_loop_hooks<derived_type, Base>);
    }
    void end_hooks_turn() noexcept {
      pool->in_loop_hooks_ = nullptr;
      pool->lanes_.end_hooks_turn();
    }
    // No request waiting: a leader whose lane was parked waits to lead again.
    bool keep_looping_when_idle() { return !pool->lanes_.step_down() || pool->take_lane(); }
  };

  // Serves a request: inline, with the lane in hand, when this thread leads.
  void serve_here(job& next) {
    lanes_.serve_inline([&] { serve(next); });
  }

  // Queues a request, waiting while the queue is full (unless the server stopped
  // accepting: the request in hand is queued anyway, to be served or closed).
  void enqueue(std::unique_lock<std::mutex>& lock, request_type& request,
               const address& client_address) {
    room_.wait(lock, [&] {
      return queue_.size() < std::max<std::size_t>(1, queue_size) || !accepting_ || stopping_;
    });
    queue_.push_back(job{std::move(request), client_address, detail::clock::now()});
    this->count(this->counters_->queued);
    work_.notify_one();
  }

  job take_queued() {
    job next = std::move(queue_.front());
    queue_.pop_front();
    room_.notify_one();
    return next;
  }

  // Serves one request (mutex_ not held). Only a forced unwind (the handler ended the
  // thread) leaves it.
  void serve(job& next) {
    serving_fd_->store(connection_fd(next.request), std::memory_order_release);
    struct forget_fd {
      ThreadPoolMixIn* pool;
      ~forget_fd() {
        detail::request_queued_at() = {};
        pool->forget_serving_fd();
      }
    } forgetting{this};
    // A request that waited in the queue: its handler's timeout counts from then.
    detail::request_queued_at() = next.queued_at;
    try {
      this->derived().process_request_thread(next.request, next.client_address);
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {
      std::fprintf(stderr, "socketserver: request from %s ended with %s\n",
                   next.client_address.to_string().c_str(),
                   detail::describe_current_exception().c_str());
    }
  }

  // The connection of the request a worker is serving, which drain() may shut down.
  static int connection_fd(const request_type& request) noexcept {
    if constexpr (detail::is_stream<request_type>)
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
      for (std::size_t i = 0; i < slot_count_; ++i)
        if (slots_[i].thread.joinable()) workers.push_back(std::move(slots_[i].thread));
    }
    work_.notify_all();
    room_.notify_all();
    lanes_.wake_all();
    close_unserved(unserved);
    for (std::thread& t : workers) t.join();
    std::lock_guard<std::mutex> lock(mutex_);
    slot_count_ = 0;  // (slots_ stays until the next start: nothing uses it any more)
    threads_ = 0;
    this->counters_->pool_threads.store(0, std::memory_order_relaxed);
  }

  // Closes requests that no worker will serve; they count as failed (all of them, also if
  // shutdown_request() ends the thread: the rest are closed by their destructors).
  void close_unserved(std::deque<job>& unserved) {
    struct count_rest {
      ThreadPoolMixIn* pool;
      std::size_t left;
      ~count_rest() {
        for (; left > 0; --left) pool->count_completed(true);
      }
    } rest{this, unserved.size()};
    for (job& j : unserved) {
      try {
        this->derived().shutdown_request(j.request);
      } catch (detail::forced_unwind&) {
        throw;
      } catch (...) {
      }
      --rest.left;
      this->count_completed(true);
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable work_;  // a request was queued, serve_forever() began or ended, or
                                  // the workers stop (and the last queued request is done)
  std::condition_variable room_;  // the queue has room, or the server stopped accepting
  // The pool is drained: the last request being served ended with the queue empty
  // (finished_one()). Only drain() waits on it, for queue_.empty() && serving_ == 0.
  std::condition_variable changed_;
  std::deque<job> queue_;
  std::unique_ptr<worker_slot[]> slots_;  // max_pool_size + 1 places for workers
  std::size_t slot_count_ = 0;            // of slots_; 0: no workers started
  std::size_t threads_ = 0;               // workers running (capacity_ + 1 but for failures)
  std::size_t capacity_ = 1;              // requests served at once: pool_size, grown
  std::size_t base_capacity_ = 1;         // pool_size, for this run of the workers
  std::chrono::duration<double> idle_timeout_{30.0};
  std::size_t serving_ = 0;             // requests being served
  std::atomic<bool> accepting_{false};  // serve_forever() is running (changes under mutex_)
  lanes lanes_{mutex_, accepting_};     // of the serve loop, for the leaders
  bool stopping_ = false;
  bool nonblocking_ = false;  // the stream socket is non-blocking for this serve_forever()
  std::chrono::duration<double> poll_interval_{0.5};
  std::exception_ptr failure_;  // a leader's fatal error, for serve_forever() to raise
  detail::wakeup failed_;       // readable once failure_ is set
  inline static thread_local bool retiring_ = false;  // this worker is leaving (retire())
  inline static thread_local std::atomic<int>* serving_fd_ = nullptr;  // this worker's slot
};

}  // namespace socketserver
