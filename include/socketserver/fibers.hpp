// SPDX-License-Identifier: MIT
// FiberMixIn: each request on a fiber (a stackful coroutine) of a few event-loop threads.
#pragma once

#include <poll.h>        // pollfd, POLLIN
#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdio>              // std::fprintf
#include <exception>           // std::exception_ptr, std::current_exception, std::rethrow_exception
#include <memory>              // std::unique_ptr
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <system_error>        // std::system_error
#include <thread>              // std::thread
#include <utility>             // std::move
#include <vector>              // std::vector

#include "address.hpp"
#include "base_server.hpp"  // detail::is_stream
#include "detail/exceptions.hpp"
#include "detail/fd.hpp"
#include "detail/fiber_loop.hpp"
#include "detail/poll.hpp"
#include "detail/time.hpp"
#include "socket.hpp"

namespace socketserver {

/// Handles each request on a fiber (beyond Python): the handler's blocking reads and writes
/// through the library (rfile, wfile, request.recv()/send()/sendall(), their timeouts) and
/// socketserver::sleep_for() suspend only its fiber, and the loop thread runs another. So a
/// few threads hold many long-lived connections, with the handler code of a
/// ThreadingMixIn server. Compose it over a server: `FiberMixIn<basic_tcp_server<H, D>>`.
///
/// The rule: a handler that blocks outside the library (a long computation, a raw recv(2),
/// a blocking client library, std::this_thread::sleep_for) stalls every fiber of its loop.
/// Such a stretch longer than stall_threshold is reported through handle_stall(), while it
/// lasts (a watchdog thread looks every stall_threshold / 2) or when it ends.
///
/// - loop_threads (0 = one per core): event-loop threads, each with its own epoll set. Every
///   loop accepts from the server's socket (a connection wakes one loop: EPOLLEXCLUSIVE) and
///   serves what it accepted; a fiber never moves to another thread.
/// - fiber_stack_size (256 KiB): each fiber's stack, mmap'd with a guard page below it; only
///   the pages a handler touches are resident, so the size is a ceiling, not a cost. A
///   handler that overflows it hits the guard page and the process reports a fiber stack
///   overflow.
/// - stall_threshold (100 ms; 0: off): see handle_stall().
/// - block_on_close (true): server_close() waits for the fibers still running.
///
/// The hooks around accepting (get_request(), verify_request(), service_actions()) run one
/// at a time, as on the other servers, on the loop that accepts: a hook that waits (through
/// the library or not) keeps the other loops from accepting meanwhile, so keep them short.
///
/// shutdown() stops accepting at once; the requests in flight go on until server_close()
/// (which waits for them when block_on_close) or drain(). The destructor never lets a fiber
/// outlive the server: it shuts down their connections and waits.
template <class Base>
class FiberMixIn : public Base {
 public:
  /// The request type of the server below: `socket` or `datagram`.
  using request_type = typename Base::request_type;

  /// Event-loop threads; 0 is one per core.
  std::size_t loop_threads = 0;
  /// Each fiber's stack in bytes (256 KiB), with a guard page below it.
  std::size_t fiber_stack_size = 256 * 1024;
  /// A fiber that runs this long without waiting is reported (handle_stall()); 0 is off.
  std::chrono::duration<double> stall_threshold = std::chrono::milliseconds(100);
  /// As ThreadingMixIn's: server_close() waits for the fibers still running (true).
  bool block_on_close = true;

  using Base::Base;
  FiberMixIn(const FiberMixIn&) = delete;
  FiberMixIn& operator=(const FiberMixIn&) = delete;
  ~FiberMixIn() {
    FiberMixIn::server_close();
    cut_all();
    {
      std::unique_lock<std::mutex> lock(mutex_);
      idle_.wait(lock, [&] { return active_ == 0; });
    }
    stop_loops();
  }

  /// Serves until shutdown(): every loop accepts and runs the requests as fibers; this
  /// thread waits for shutdown() and calls service_actions() every poll_interval (and the
  /// loop that took a request, after it).
  void serve_forever(
      std::chrono::duration<double> poll_interval = std::chrono::duration<double>(0.5)) {
    auto serving = this->begin_serving();
    start_loops();
    const int fd = this->fileno();
    if (fd < 0) throw std::system_error(EBADF, std::system_category(), "serve_forever");
    detail::nonblocking_scope nonblocking(detail::is_stream<request_type> ? fd : -1,
                                          &this->handed_over_);
    // Accepted connections inherit the listening socket's timeouts (Linux): then each
    // connection's waits ask its socket (detail::fiber_loop::adopt()).
    listener_has_timeouts_ = this->socket.gettimeout().has_value();
    accept_error_ = nullptr;
    start_acceptors(fd);
    {
      struct stop_at_exit {
        FiberMixIn& server;
        ~stop_at_exit() { server.stop_acceptors(); }
      } stopping{*this};
      pollfd fds[2] = {{this->wakeup_.fileno(), POLLIN, 0},
                       {this->derived().stop_fileno(), POLLIN, 0}};
      while (!this->shutdown_requested() && !accept_failed_) {
        detail::poll_for(fds, 2, poll_interval);
        if (this->shutdown_requested() || accept_failed_ || fds[1].revents != 0) break;
        std::lock_guard<std::mutex> hooks(hooks_mutex_);
        auto proxied_hooks = this->proxied_hooks_lock();
        this->derived().service_actions();
      }
    }
    // What a loop's accepting fiber could not handle ends serve_forever(), as it would on
    // the other servers (a verify_request() that throws, say).
    std::lock_guard<std::mutex> lock(mutex_);
    if (accept_error_) std::rethrow_exception(std::exchange(accept_error_, nullptr));
  }

  /// Starts a fiber that runs process_request_fiber(); returns at once (on a loop: the fiber
  /// runs when this one next waits).
  /// @throws std::system_error if no fiber can be started (no memory for its stack): the
  ///         request is left as it was, for handle_error() and shutdown_request().
  void process_request(request_type& request, const address& client_address) {
    auto t = std::make_unique<task>(std::move(request), client_address);
    track(t.get());
    struct untrack_on_failure {  // the request goes back to the caller, as it came
      FiberMixIn& server;
      std::unique_ptr<task>& t;
      request_type& request;
      ~untrack_on_failure() {
        if (t == nullptr) return;
        server.untrack(t.get());
        request = std::move(t->request);
        server.finished_one();
      }
    } on_failure{*this, t, request};
    detail::fiber_loop* here = detail::fiber_loop::current();
    if (here != nullptr && here->running() != nullptr && serves_on(here)) {
      here->spawn(fiber_body(t.get()));
      t.release();
      return;
    }
    detail::fiber_loop* loop = next_loop();
    task* raw = t.get();
    loop->post([this, loop, raw] {
      try {
        loop->spawn(fiber_body(raw));
      } catch (...) {  // no fiber: the request ends here, reported as a failure
        std::unique_ptr<task> owned(raw);
        try {
          this->derived().handle_error(owned->request, owned->client_address);
        } catch (...) {
        }
        untrack(raw);
        if (this->max_connections_per_ip != 0 && !this->proxied())
          this->give_back_slot(owned->client_address);  // taken at accept
        try {
          this->derived().shutdown_request(owned->request);
        } catch (...) {
        }
        this->count_completed(true);
        finished_one();
      }
    });
    t.release();  // the posted task owns it now
  }

  /// Same as BaseServer::process_request() but on the request's fiber, with errors handled
  /// there: finish_request(), handle_error() if it threw, then shutdown_request().
  void process_request_fiber(request_type& request, const address& client_address) {
    this->finish_and_shut_down(request, client_address, [this] { untrack(current_task()); });
  }

  /// Called when a request's fiber has run for `ran` without suspending, longer than
  /// stall_threshold: every other fiber of its loop waited meanwhile. Once per stretch: by
  /// the stall watchdog's thread while the stretch lasts, or by the loop's thread when it
  /// ends within a watchdog period. Calls are serialized. The default prints one line to
  /// stderr naming the client. May be overridden.
  void handle_stall(const address& client_address, std::chrono::nanoseconds ran) {
    std::fprintf(stderr,
                 "socketserver: the handler for %s has held its loop thread for %.1f ms "
                 "without waiting through the library: the other connections of that thread "
                 "wait (blocking calls outside the library stall a fiber's loop)\n",
                 client_address.to_string().c_str(), static_cast<double>(ran.count()) / 1e6);
  }

  /// Closes the server and, when block_on_close, waits for the fibers still running. A
  /// datagram server waits first, so no fiber replies on a closed socket; a stream server
  /// closes first, so new clients are refused while it waits.
  void server_close() {
    if constexpr (detail::is_stream<request_type>) {
      Base::server_close();
      join();
    } else {
      join();
      Base::server_close();
    }
    if (active_fibers() == 0) stop_loops();  // else the destructor does, once they end
  }

  /// Graceful stop: serves the connections already queued (drain_backlog()) and closes the
  /// socket (stream servers), waits up to `grace` in all for the fibers, then shuts down the
  /// connections of those still running so they end, waits for them, and closes the server.
  /// Returns how many connections were cut.
  std::size_t drain(std::chrono::duration<double> grace) {
    const auto deadline = detail::deadline_after(grace);
    start_loops();
    this->drain_backlog(deadline);
    if constexpr (detail::is_stream<request_type>) Base::server_close();
    std::size_t cut = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!this->wait_for_drained(lock, idle_, deadline, [&] { return active_ == 0; })) {
        for (task* t = running_.next; t != &running_; t = t->next)
          if (t->connection_fd >= 0 && ::shutdown(t->connection_fd, SHUT_RDWR) == 0) ++cut;
      }
      idle_.wait(lock, [&] { return active_ == 0; });
    }
    this->derived().server_close();
    return cut;
  }

  /// A prefork worker starts its own loops: the supervisor's threads do not exist here.
  void after_fork_in_child() {
    Base::after_fork_in_child();
    // Left as they are (leaked): their threads do not exist in this process, and a
    // std::thread that is not joined may not be destroyed.
    for (auto& l : loops_) (void)new loop_thread(std::move(l));
    loops_.clear();
    (void)watchdog_.release();
    // Nor do the supervisor's fibers: this process has none running.
    running_.prev = running_.next = &running_;
    active_ = 0;
    acceptors_ = 0;
  }

  /// How many loop threads run now (loop_threads of them from the first request or
  /// serve_forever() until server_close()).
  std::size_t loop_thread_count() const {
    std::lock_guard<std::mutex> lock(loops_mutex_);
    return loops_.size();
  }

  /// How many requests are running on fibers now.
  std::size_t active_fibers() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return active_;
  }

 private:
  struct task {
    task() = default;
    task(request_type&& r, const address& a) : request(std::move(r)), client_address(a) {}
    request_type request;
    address client_address;
    int connection_fd = -1;  // while it runs, for drain() and the destructor to shut down
    task* prev = this;
    task* next = this;
  };

  struct loop_thread {
    std::unique_ptr<detail::fiber_loop> loop;
    std::thread thread;
    detail::fiber* acceptor = nullptr;  // its accepting fiber, while parked in its own wait
                                        // (touched on the loop's thread only)
  };

  // The task of the running fiber (fibers switch: read it from the fiber, not a thread-local).
  static task* current_task() noexcept {
    detail::fiber_loop* loop = detail::fiber_loop::current();
    return loop != nullptr && loop->running() != nullptr
               ? static_cast<task*>(loop->running()->tag.load(std::memory_order_relaxed))
               : nullptr;
  }

  std::function<void()> fiber_body(task* raw) {
    return [this, raw] {
      detail::fiber_loop* loop = detail::fiber_loop::current();
      struct end {  // last: the request is closed by then
        FiberMixIn* server;
        ~end() { server->finished_one(); }
      } ending{this};
      std::unique_ptr<task> t(raw);
      loop->set_tag(raw, raw->client_address.data(), raw->client_address.size());
      struct untag {  // first: a stall at the end is reported while the task is there
        detail::fiber_loop* loop;
        ~untag() {
          loop->check_stall();
          loop->set_tag(nullptr);
        }
      } untagging{loop};
      try {
        if constexpr (detail::is_stream<request_type>)
          loop->adopt(t->request.fileno(), listener_has_timeouts_);
        this->derived().process_request_fiber(t->request, t->client_address);
      } catch (detail::forced_unwind&) {
        throw;
      } catch (...) {  // handle_error() or shutdown_request() threw
        std::fprintf(stderr, "socketserver: request fiber for %s ended with %s\n",
                     t->client_address.to_string().c_str(),
                     detail::describe_current_exception().c_str());
      }
      untrack(raw);
    };
  }

  bool serves_on(const detail::fiber_loop* loop) const noexcept {
    for (const auto& l : loops_)
      if (l.loop.get() == loop) return true;
    return false;
  }

  detail::fiber_loop* next_loop() {
    start_loops();
    const std::size_t i = next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size();
    return loops_[i].loop.get();
  }

  void start_loops() {
    std::lock_guard<std::mutex> lock(loops_mutex_);
    if (!loops_.empty()) return;
    std::size_t n = loop_threads;
    if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
    const auto threshold = std::chrono::duration_cast<std::chrono::nanoseconds>(stall_threshold);
    loops_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      loop_thread l;
      l.loop = std::make_unique<detail::fiber_loop>(fiber_stack_size);
      l.loop->set_stall_report(threshold, [this](std::chrono::nanoseconds ran, void* tag) {
        if (tag != nullptr) report_stall(static_cast<task*>(tag)->client_address, ran);
      });
      detail::fiber_loop* loop = l.loop.get();
      l.thread = std::thread([loop] { loop->run(); });
      loops_.push_back(std::move(l));
    }
    if (threshold.count() > 0) {
      std::vector<detail::fiber_loop*> watched;
      for (auto& l : loops_) watched.push_back(l.loop.get());
      watchdog_ = std::make_unique<detail::fiber_stall_watchdog<address>>(
          std::move(watched), threshold,
          [](const void* tag) {  // (under the loop's tag lock: the task is alive)
            return static_cast<const task*>(tag)->client_address;
          },
          [this](const address& client, std::chrono::nanoseconds ran) {
            report_stall(client, ran);
          });
    }
  }

  void report_stall(const address& client, std::chrono::nanoseconds ran) noexcept {
    try {
      std::lock_guard<std::mutex> one_at_a_time(stall_mutex_);
      this->derived().handle_stall(client, ran);
    } catch (...) {  // a report that fails must not end a loop or the watchdog
    }
  }

  void stop_loops() noexcept {
    std::lock_guard<std::mutex> lock(loops_mutex_);
    watchdog_.reset();  // first: it looks at the loops
    for (auto& l : loops_) l.loop->stop();
    for (auto& l : loops_)
      if (l.thread.joinable()) l.thread.join();
    loops_.clear();
  }

  // Each loop accepts in a fiber of its own until stop_acceptors().
  void start_acceptors(int fd) {
    std::unique_lock<std::mutex> lock(mutex_);
    accepting_ = true;
    accept_failed_ = false;
    acceptors_ = loops_.size();
    lock.unlock();
    for (auto& l : loops_) {
      detail::fiber_loop* loop = l.loop.get();
      loop_thread* slot = &l;
      loop->post([this, loop, slot, fd] {
        try {
          loop->spawn([this, loop, slot, fd] { accept_loop(*loop, *slot, fd); });
        } catch (...) {  // no fiber for it: serve_forever() reports why
          accept_failed(std::current_exception());
          std::lock_guard<std::mutex> guard(mutex_);
          --acceptors_;
          acceptors_done_.notify_all();
        }
      });
    }
  }

  // Records the first failure of an accepting fiber and wakes serve_forever(), which ends.
  void accept_failed(std::exception_ptr error) noexcept {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!accept_error_) accept_error_ = std::move(error);
      accept_failed_ = true;
    }
    this->wakeup_.notify();
  }

  void accept_loop(detail::fiber_loop& loop, loop_thread& slot, int fd) {
    struct end {
      FiberMixIn& server;
      detail::fiber_loop& loop;
      int fd;
      ~end() {
        loop.unwatch(fd);
        std::lock_guard<std::mutex> lock(server.mutex_);
        --server.acceptors_;
        server.acceptors_done_.notify_all();
      }
    } ending{*this, loop, fd};
    struct parked {  // stop_acceptors() interrupts the fiber only in its own waits
      loop_thread& slot;
      explicit parked(loop_thread& s, detail::fiber* f) : slot(s) { slot.acceptor = f; }
      ~parked() { slot.acceptor = nullptr; }
    };
    struct in_hooks {  // shutdown() from a hook would wait for this fiber: it throws instead
      detail::fiber_loop& loop;
      std::unique_lock<std::mutex> turn;
      in_hooks(detail::fiber_loop& l, std::mutex& m, const void* server) : loop(l), turn(m) {
        loop.set_hooks_owner(server);
      }
      ~in_hooks() { loop.set_hooks_owner(nullptr); }
    };
    try {
      bool watching = false;
      bool took_work = false;  // since the last wait: the other loops and workers go first next
      int streak = 0;          // requests taken in a row: then the new fibers get their turn
      while (accepting_.load(std::memory_order_acquire)) {
        const auto paused_until = this->accept_paused_until();
        if (paused_until > detail::clock::now()) {  // out of descriptors: wait, then retry
          loop.unwatch(fd);
          watching = false;
          parked waiting(slot, loop.running());
          loop.park_until(paused_until);
          continue;
        }
        if (!watching) {
          loop.watch_shared(fd);
          watching = true;
        }
        bool served = false;
        {
          in_hooks hooks(loop, hooks_mutex_, static_cast<const any_server*>(this));
          served = this->handle_request_noblock();
          if (served) this->derived().service_actions();  // after each request, as Python's
        }
        took_work = took_work || served;
        if (served && ++streak < 64) continue;
        streak = 0;
        if (served) {
          loop.yield();
        } else {
          if (took_work && detail::exclusive_wait::rotation.load(std::memory_order_relaxed))
            loop.rotate_shared(fd);
          took_work = false;
          parked waiting(slot, loop.running());
          loop.wait(fd, POLLIN, detail::clock::time_point::max());
        }
      }
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {  // the socket cannot accept, or a hook threw: serve_forever() ends with it
      accept_failed(std::current_exception());
    }
  }

  // Ends every loop's accepting fiber and waits until they have ended.
  void stop_acceptors() {
    std::unique_lock<std::mutex> lock(mutex_);
    accepting_ = false;
    for (auto& l : loops_) {
      detail::fiber_loop* loop = l.loop.get();
      loop_thread* slot = &l;
      loop->post([loop, slot] {
        if (slot->acceptor != nullptr) loop->interrupt(slot->acceptor);
      });
    }
    acceptors_done_.wait(lock, [&] { return acceptors_ == 0; });
  }

  void track(task* t) {
    if constexpr (detail::is_stream<request_type>) t->connection_fd = t->request.fileno();
    std::lock_guard<std::mutex> lock(mutex_);
    t->prev = running_.prev;
    t->next = &running_;
    running_.prev->next = t;
    running_.prev = t;
    ++active_;
  }

  // Off the list drain() and the destructor shut connections down from, before the
  // connection closes (so a reused descriptor number is never shut down).
  void untrack(task* t) noexcept {
    if (t == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (t->prev == t) return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = t;
  }

  void finished_one() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    --active_;
    idle_.notify_all();
  }

  void cut_all() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    for (task* t = running_.next; t != &running_; t = t->next)
      if (t->connection_fd >= 0) ::shutdown(t->connection_fd, SHUT_RDWR);
  }

  void join() {
    if (!block_on_close) return;
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return active_ == 0; });
  }

  mutable std::mutex mutex_;  // the task list, counts and acceptors
  std::condition_variable idle_;
  std::condition_variable acceptors_done_;
  task running_;  // sentinel of the list of running tasks
  std::size_t active_ = 0;
  std::size_t acceptors_ = 0;
  std::atomic<bool> accepting_{false};
  std::atomic<bool> accept_failed_{false};  // accept_error_ is set: serve_forever() ends
  std::exception_ptr accept_error_;         // (under mutex_)
  bool listener_has_timeouts_ = false;
  std::mutex hooks_mutex_;  // get_request(), verify_request() and service_actions(): one at a time
  mutable std::mutex loops_mutex_;
  std::vector<loop_thread> loops_;
  std::unique_ptr<detail::fiber_stall_watchdog<address>> watchdog_;
  std::mutex stall_mutex_;  // handle_stall(): one at a time
  std::atomic<std::size_t> next_loop_{0};
};

}  // namespace socketserver
