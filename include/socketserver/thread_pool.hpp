// SPDX-License-Identifier: MIT
// ThreadPoolMixIn: a fixed set of worker threads that take turns accepting, and a bounded
// queue of accepted requests for when they are all busy.
#pragma once

#include <poll.h>        // pollfd, POLLIN
#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <algorithm>           // std::max
#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdint>             // std::uint64_t
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
#include "detail/blocking.hpp"
#include "detail/exceptions.hpp"
#include "detail/fd.hpp"
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
/// wake each other. The leaders call get_request(), verify_request(), service_actions() and
/// handle_get_request_error() one at a time when Derived redefines any of them, as one loop
/// would; the library's own are safe to call at once, and are.
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
  using request_type = typename Base::request_type;

  std::size_t pool_size = default_pool_size();
  std::size_t queue_size = 64;
  bool drain_on_close = true;
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
    detail::nonblocking_scope nonblocking_socket(detail::is_stream<request_type> ? fd : -1);
    const bool nonblocking = !detail::is_stream<request_type> || nonblocking_socket.nonblocking();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (slot_count_ == 0) start_workers();
      poll_interval_ = poll_interval;
      idle_timeout_ = std::max(idle_timeout, std::chrono::duration<double>::zero());
      handoff_after_ = std::max(handoff_after, std::chrono::duration<double>::zero());
      lane_count_ = std::min(max_lanes_, std::max<std::size_t>(1, pool_size) + 1);
      for (std::size_t i = 0; i < lane_count_; ++i)  // one lane open; the counts go on
        lanes_[i].store((lanes_[i].load() & ~phase) | (i == 0 ? loop_free : parked));
      open_lanes_.store(1);
      listen_fd_.store(fd, std::memory_order_relaxed);
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
                     {busy_.fileno(), POLLIN, 0}};
    std::vector<std::uint64_t> seen(lane_count_);
    for (std::size_t i = 0; i < lane_count_; ++i) seen[i] = lanes_[i].load();
    std::uint64_t accepted = this->counters_.accepted.load(), waits = waits_.load();
    bool idle = false;
    while (!this->shutdown_requested()) {
      for (pollfd& p : fds) p.revents = 0;
      const bool watching = !idle && handoff_after_.count() > 0;
      const int ready =
          detail::poll_for(fds, 4, watching ? timeout_type(handoff_after_) : std::nullopt);
      if (fds[1].revents != 0 || fds[2].revents != 0) break;
      if (fds[3].revents != 0) busy_.drain();
      if (ready > 0) {  // busy again: watch from now
        idle = false;
        for (std::size_t i = 0; i < lane_count_; ++i) seen[i] = lanes_[i].load();
      } else {
        // Requests taken and never a wait for one: the open lanes cannot keep up.
        const std::uint64_t now_accepted = this->counters_.accepted.load();
        const std::uint64_t now_waits = waits_.load();
        if (now_accepted != accepted && now_waits == waits) open_lane();
        accepted = now_accepted;
        waits = now_waits;
        idle = watch_lanes(seen);
      }
    }
    std::unique_lock<std::mutex> lock(mutex_);
    accepting_ = false;
    lock.unlock();
    work_.notify_all();
    room_.notify_all();
    turn_.notify_all();
    // Wait for the leader to leave the loop; a worker serving a request with it in hand is
    // not in the loop, and loses it now. A worker that wants the loop after this finds the
    // server not accepting and leaves it alone, so no thread touches the socket any more.
    lock.lock();
    turn_.wait(lock, [this] {
      bool left = true;
      for (std::size_t i = 0; i < lane_count_; ++i) {
        std::uint64_t token = lanes_[i].load();
        if ((token & phase) == serving_inline)
          lanes_[i].compare_exchange_strong(token, (token & ~phase) | loop_free);
        if ((lanes_[i].load() & phase) == looping) left = false;
      }
      return left;
    });
    std::exception_ptr failure = failure_;
    failure_ = nullptr;
    listen_fd_.store(-1, std::memory_order_relaxed);
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
    if (!leading_) {  // handle_request() on a caller's thread: hand it to a worker
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
    if (!leading_) leading_ = take_loop();
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
    busy_.reset();
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
    this->counters_.pool_threads.store(threads_, std::memory_order_relaxed);
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
      this->count(this->counters_.pool_grown);
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
    this->counters_.pool_threads.store(threads_, std::memory_order_relaxed);
    retiring_ = true;
    return true;
  }

  // When an idle worker gives up waiting (time_point::max() while the pool is not grown).
  detail::clock::time_point idle_deadline() const {
    if (threads_ <= base_capacity_ + 1) return detail::clock::time_point::max();
    return detail::clock::now() +
           std::chrono::duration_cast<detail::clock::duration>(idle_timeout_);
  }

  // Waits for `cv` until `until`; false once it has passed.
  static bool wait_idle(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                        detail::clock::time_point until) {
    if (until == detail::clock::time_point::max()) {
      cv.wait(lock);
      return true;
    }
    return cv.wait_until(lock, until) == std::cv_status::no_timeout;
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
          pool->counters_.pool_threads.store(pool->threads_, std::memory_order_relaxed);
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
      if (!wait_idle(work_, lock, idle_deadline()) && queue_.empty() && !accepting_ && retire())
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

  // Waits for a lane of the loop, then runs the loop while the server accepts.
  // process_request() hands the lane on, and takes one back, from inside the loop; the loop
  // ends when the server stops accepting (mutex_ not held).
  void lead() {
    if (!take_loop()) return;
    leading_ = true;
    struct leave_loop {  // also when a handler ends this worker's thread (forced unwind)
      ThreadPoolMixIn* pool;
      ~leave_loop() {
        if (!leading_) return;
        leading_ = false;
        pool->free_lane();
      }
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

  // --- The loop's lanes --------------------------------------------------------------------
  // Up to one worker per core (lane_count_) runs the serve loop at once, each holding one
  // lane's token (lanes_[i]): the holder's phase in the low two bits, free (for a worker to
  // take), looping (in serve_loop(): polling, accepting), serving_inline (serving a request
  // it accepted, with the lane in hand, which another thread may take from it) or parked
  // (closed while there are more leaders than requests); above them, a count of the requests
  // served inline, which tells the watcher one long request from many short ones. The
  // leaders take turns for the hooks that Derived redefines (lane_policy), as one loop would
  // call them.

  static constexpr std::uint64_t loop_free = 0, looping = 1, serving_inline = 2, parked = 3,
                                 phase = 3, next_request = 4;

  struct lane_policy {  // how a leader runs serve_loop() (see BaseServer::one_loop)
    ThreadPoolMixIn* pool;
    bool keep_going() const noexcept {
      return leading_ && pool->accepting_.load(std::memory_order_acquire) &&
             !pool->shutdown_requested();
    }
    bool socket_nonblocking() const noexcept { return pool->nonblocking_; }
    bool shared() const noexcept {
      return pool->lane_count_ > 1 || pool->derived().socket_shared();
    }
    void take_hooks_turn() {
      pool->in_loop_hooks_ = pool;  // shutdown() from a hook would wait for this loop
      using derived_type = std::remove_reference_t<decltype(pool->derived())>;
      if (!detail::redefines_loop_hooks<derived_type, Base> || pool->lane_count_ <= 1) return;
      pool->hooks_.lock();
      in_hooks_ = true;
    }
    void end_hooks_turn() noexcept {
      pool->in_loop_hooks_ = nullptr;
      if (!in_hooks_) return;
      in_hooks_ = false;
      pool->hooks_.unlock();
    }
    bool keep_looping_when_idle() { return pool->step_down(); }
  };

  // A leader found no request waiting. One of several open lanes closes (parks) then, and
  // its leader waits to lead again: more leaders than requests only wake each other. One
  // lane always stays open. Returns whether this thread still leads.
  bool step_down() {
    waits_.fetch_add(1, std::memory_order_relaxed);
    std::size_t open = open_lanes_.load();
    do {
      if (open <= 1) return true;
    } while (!open_lanes_.compare_exchange_weak(open, open - 1));
    my_lane().store((my_lane().load() & ~phase) | parked);
    leading_ = false;
    leading_ = take_loop();
    return leading_;
  }

  // Opens a parked lane, for a worker to lead there too.
  void open_lane() noexcept {
    for (std::size_t i = 0; i < lane_count_; ++i) {
      std::uint64_t token = lanes_[i].load();
      if ((token & phase) == parked &&
          lanes_[i].compare_exchange_strong(token, (token & ~phase) | loop_free)) {
        open_lanes_.fetch_add(1);
        wake_next_leader();
        return;
      }
    }
  }

  // Waits for a free lane and takes it; false, without one, once the server stops accepting.
  bool take_loop() {
    std::unique_lock<std::mutex> lock(mutex_);  // accepting_ changes only under it
    const auto idle_until = idle_deadline();
    for (;;) {
      if (!accepting_) {
        turn_.notify_all();  // serve_forever() may wait for a lane this thread just parked
        return false;
      }
      for (std::size_t i = 0; i < lane_count_; ++i) {
        std::uint64_t token = lanes_[i].load();
        if ((token & phase) == loop_free &&
            lanes_[i].compare_exchange_strong(token, (token & ~phase) | looping)) {
          lane_ = i;
          return true;
        }
      }
      if (!wait_idle(turn_, lock, idle_until) && retire()) return false;
    }
  }

  std::atomic<std::uint64_t>& my_lane() noexcept { return lanes_[lane_]; }

  // Frees this thread's lane, in the loop (nobody else changes a lane while it loops).
  void free_lane() noexcept {
    my_lane().store((my_lane().load() & ~phase) | loop_free);
    wake_next_leader();
  }

  // A lane is free: wake a worker to take it (all of them when the server stops accepting,
  // and serve_forever() waits for every lane to be left).
  void wake_next_leader() noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    const bool stopping = !accepting_;
    lock.unlock();
    if (stopping)
      turn_.notify_all();
    else
      turn_.notify_one();
  }

  // Serves a request. A leader serves it with its lane in hand: the lane is handed on by
  // wait_or_hand_on() when the request has to wait in the library's I/O, or taken over by
  // the watcher after handoff_after; otherwise the leader keeps it and goes on accepting.
  void serve_here(job& next) {
    if (!leading_) {
      serve(next);
      return;
    }
    if (handoff_after_.count() <= 0) {  // hand the lane on first, always
      leading_ = false;
      free_lane();
      serve(next);
      return;
    }
    std::atomic<std::uint64_t>& lane = my_lane();
    const std::uint64_t token =
        ((lane.load(std::memory_order_relaxed) & ~phase) + next_request) | serving_inline;
    inline_token_ = token;
    inline_until_ =
        detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(handoff_after_);
    lane.store(token);
    if (!accepting_.load()) {  // serve_forever() may be waiting for this lane to leave the loop
      { std::lock_guard<std::mutex> lock(mutex_); }
      turn_.notify_all();
    }
    detail::arm_block_hook(&wait_or_hand_on, this);
    // A handler that ends this thread (a forced unwind) leaves the lane free, for another
    // worker to lead.
    struct unwound {
      ThreadPoolMixIn* pool;
      std::uint64_t token;
      bool armed = true;
      ~unwound() {
        if (!armed) return;
        detail::disarm_block_hook();
        if (!leading_) return;
        leading_ = false;
        std::uint64_t expected = token;
        if (pool->my_lane().compare_exchange_strong(expected, (token & ~phase) | loop_free))
          pool->wake_next_leader();
      }
    } unwinding{this, token};
    if (watcher_idle_.load() && watcher_idle_.exchange(false)) busy_.notify();
    serve(next);
    unwinding.armed = false;
    detail::disarm_block_hook();
    if (!leading_) return;  // handed on: the request had to wait
    std::uint64_t expected = token;
    if (!lane.compare_exchange_strong(expected, (token & ~phase) | looping))
      leading_ = false;  // taken over by the watcher
  }

  // The block hook of a leader serving inline, whose request is about to wait for `events`
  // on `fd`: it waits for them here, keeping the lane, until handoff_after has passed or (if
  // no other leader is accepting) a new request arrives, and then hands the lane on; when
  // the events come first it keeps the lane and the hook. A wait on several descriptors
  // hands the lane on at once.
  static void wait_or_hand_on(void* self, int fd, short events,
                              detail::clock::time_point deadline) noexcept {
    auto& pool = *static_cast<ThreadPoolMixIn*>(self);
    if (fd >= 0 && pool.my_lane().load() == inline_token_) {  // (not taken from it already)
      const auto until = std::min(deadline, inline_until_);
      // A request's bytes usually follow its connection within microseconds: wait for them
      // a moment before a new request can take the lane away.
      pollfd own{fd, events, 0};
      const auto grace = detail::clock::now() + handoff_grace;
      int ready = detail::poll_once(&own, 1, std::min(until, grace));
      if (ready < 0 || own.revents != 0) return;  // EINTR: the caller tries again
      pollfd fds[2] = {{fd, events, 0},
                       {pool.another_leader_accepting() ? -1 : pool.listen_fd_.load(), POLLIN, 0}};
      ready = detail::poll_once(fds, 2, until);
      if (ready < 0) return;
      if (fds[1].revents == 0 && (fds[0].revents != 0 || until < inline_until_)) return;
    }
    detail::disarm_block_hook();
    leading_ = false;
    std::uint64_t expected = inline_token_;
    if (pool.my_lane().compare_exchange_strong(expected, (expected & ~phase) | loop_free))
      pool.wake_next_leader();
  }

  static constexpr std::chrono::microseconds handoff_grace{100};

  bool another_leader_accepting() const noexcept {
    for (std::size_t i = 0; i < lane_count_; ++i)
      if (i != lane_ && (lanes_[i].load() & phase) == looping) return true;
    return false;
  }

  // The watcher's turn, every handoff_after while requests are served (`seen`: what it found
  // in each lane last time). Takes a lane from a request served inline since the last turn,
  // and returns true when no lane has changed since then: the watcher may sleep until a
  // request is served inline again (busy_).
  bool watch_lanes(std::vector<std::uint64_t>& seen) {
    bool quiet = true;
    for (std::size_t i = 0; i < lane_count_; ++i) {
      std::uint64_t token = lanes_[i].load();
      if (token != seen[i]) {
        quiet = false;
      } else if ((token & phase) == serving_inline) {
        quiet = false;
        if (lanes_[i].compare_exchange_strong(token, (token & ~phase) | loop_free))
          wake_next_leader();
      }
      seen[i] = lanes_[i].load();
    }
    if (!quiet) return false;
    watcher_idle_.store(true);  // then look again: a request served inline from now on sees it
    for (std::size_t i = 0; i < lane_count_; ++i) {
      if (lanes_[i].load() != seen[i]) {
        watcher_idle_.store(false);
        return false;
      }
    }
    return true;
  }

  // Queues a request, waiting while the queue is full (unless the server stopped
  // accepting: the request in hand is queued anyway, to be served or closed).
  void enqueue(std::unique_lock<std::mutex>& lock, request_type& request,
               const address& client_address) {
    room_.wait(lock, [&] {
      return queue_.size() < std::max<std::size_t>(1, queue_size) || !accepting_ || stopping_;
    });
    queue_.push_back(job{std::move(request), client_address, detail::clock::now()});
    this->count(this->counters_.queued);
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
    turn_.notify_all();
    close_unserved(unserved);
    for (std::thread& t : workers) t.join();
    std::lock_guard<std::mutex> lock(mutex_);
    slot_count_ = 0;  // (slots_ stays until the next start: nothing uses it any more)
    threads_ = 0;
    this->counters_.pool_threads.store(0, std::memory_order_relaxed);
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
  std::condition_variable work_;     // a request was queued, the loop is free, or stopping
  std::condition_variable room_;     // the queue has room, or the server stopped accepting
  std::condition_variable changed_;  // the loop was left, or the last request ended
  std::deque<job> queue_;
  std::unique_ptr<worker_slot[]> slots_;  // max_pool_size + 1 places for workers
  std::size_t slot_count_ = 0;            // of slots_; 0: no workers started
  std::size_t threads_ = 0;               // workers running (capacity_ + 1 but for failures)
  std::size_t capacity_ = 1;              // requests served at once: pool_size, grown
  std::size_t base_capacity_ = 1;         // pool_size, for this run of the workers
  std::chrono::duration<double> idle_timeout_{30.0};
  std::size_t serving_ = 0;             // requests being served
  std::atomic<bool> accepting_{false};  // serve_forever() is running
  std::condition_variable turn_;        // the loop was freed, or the server stopped accepting
  std::mutex hooks_;                    // held by the leader calling the hooks (lane_policy)
  const std::size_t max_lanes_ = std::max(1u, std::thread::hardware_concurrency());
  std::unique_ptr<std::atomic<std::uint64_t>[]> lanes_ {
    new std::atomic<std::uint64_t>[max_lanes_] {}
  };
  std::size_t lane_count_ = 1;              // lanes in use: one per core, at most the workers
  std::atomic<std::size_t> open_lanes_{1};  // lanes not parked
  std::atomic<int> listen_fd_{-1};          // the socket, while serve_forever() runs
  std::atomic<std::uint64_t> waits_{0};     // times a leader found no request waiting
  std::atomic<bool> watcher_idle_{false};   // the watcher sleeps until busy_
  detail::wakeup busy_;                     // a request is served inline again
  std::chrono::duration<double> handoff_after_{0.002};
  bool stopping_ = false;
  bool nonblocking_ = false;  // the stream socket is non-blocking for this serve_forever()
  std::chrono::duration<double> poll_interval_{0.5};
  std::exception_ptr failure_;  // a leader's fatal error, for serve_forever() to raise
  detail::wakeup failed_;       // readable once failure_ is set
  inline static thread_local bool leading_ = false;   // this thread holds a lane of the loop
  inline static thread_local std::size_t lane_ = 0;   // which one
  inline static thread_local bool in_hooks_ = false;  // it holds hooks_
  inline static thread_local bool retiring_ = false;  // this worker is leaving (retire())
  inline static thread_local std::uint64_t inline_token_ = 0;  // the lane while serving inline
  inline static thread_local detail::clock::time_point inline_until_{};  // and till
  inline static thread_local std::atomic<int>* serving_fd_ = nullptr;    // this worker's slot
};

}  // namespace socketserver
