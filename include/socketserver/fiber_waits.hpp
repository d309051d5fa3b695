// SPDX-License-Identifier: MIT
// What a handler on a fiber (FiberMixIn) may wait for besides the library's I/O, suspending
// only its fiber: sleep_for(), offload() (a blocking call on a helper thread) and
// fiber_mutex. Each also works off a fiber, where it blocks the thread as usual.
#pragma once

#include <pthread.h>  // pthread_atfork, pthread_create, pthread_detach

#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstring>             // std::memcpy
#include <deque>               // std::deque
#include <exception>           // std::exception_ptr, std::current_exception, std::rethrow_exception
#include <functional>          // std::function
#include <mutex>               // std::mutex, std::unique_lock
#include <new>                 // placement new
#include <optional>            // std::optional
#include <system_error>        // std::system_error
#include <thread>              // std::this_thread::sleep_until
#include <type_traits>         // std::invoke_result_t, std::is_void_v
#include <utility>             // std::forward, std::move

#include "detail/fiber_loop.hpp"
#include "detail/time.hpp"

namespace socketserver {
namespace detail {

// The fiber running on this thread and its loop, or {nullptr, nullptr}.
inline std::pair<fiber_loop*, fiber*> running_on_fiber() noexcept {
  fiber_loop* loop = fiber_loop::current();
  return {loop, loop != nullptr ? loop->running() : nullptr};
}

/// The helper threads of offload(): started as jobs need them, up to `max_threads`; a thread
/// idle for a while ends. Process-wide, never destroyed (threads may still finish a job while
/// the process exits).
class offload_pool {
 public:
  static constexpr std::size_t max_threads = 64;
  static constexpr std::chrono::seconds idle_exit{10};

  static offload_pool& instance() {
    static offload_pool* pool = [] {
      auto* p = new offload_pool;  // never destroyed: see the class comment
      // A forked child has none of the threads: it starts afresh.
      (void)::pthread_atfork(nullptr, nullptr, [] { instance().reset_in_child(); });
      return p;
    }();
    return *pool;
  }

  void submit(std::function<void()> job) {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
    // A thread for each job that no idle thread will take (a burst of jobs must not queue
    // behind one idle thread).
    if (jobs_.size() <= idle_ || threads_ >= max_threads) {
      work_.notify_one();
      return;
    }
    // A bare pthread, not a std::thread: nothing on the heap belongs to the thread alone (a
    // process forked while helpers run, e.g. a prefork worker, would leak what they owned).
    pthread_t thread;
    const int err = ::pthread_create(&thread, nullptr, &offload_pool::start, this);
    if (err == 0) {  // it waits for the lock held here
      ::pthread_detach(thread);
      ++threads_;
      return;
    }
    if (threads_ == 0) {  // no thread: the threads there take the job when they can
      jobs_.pop_back();   // ours: the lock is held
      throw std::system_error(err, std::system_category(), "pthread_create (offload helper)");
    }
  }

 private:
  static void* start(void* pool) {
    static_cast<offload_pool*>(pool)->work();
    return nullptr;
  }

  void reset_in_child() noexcept {
    new (&mutex_) std::mutex;  // whatever a thread of the parent held
    new (&work_) std::condition_variable;
    // The parent's jobs are its own: never run or freed here, but the old queue's bytes are
    // kept, so what it points to stays reachable (a leak checker in the child reports none).
    std::memcpy(left_by_parent_, static_cast<const void*>(&jobs_), sizeof jobs_);
    new (&jobs_) std::deque<std::function<void()>>;
    threads_ = 0;
    idle_ = 0;
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      const bool got = work_.wait_for(lock, idle_exit, [&] { return !jobs_.empty(); });
      --idle_;
      if (!got) {
        --threads_;
        return;
      }
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();  // never throws: offload() wraps it
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_;
  std::deque<std::function<void()>> jobs_;
  alignas(std::deque<std::function<void()>>) unsigned char left_by_parent_[sizeof jobs_] = {};
  std::size_t threads_ = 0;
  std::size_t idle_ = 0;
};

}  // namespace detail

/// Waits for `duration`: on a fiber, only that fiber waits (its loop runs the others);
/// elsewhere, the thread sleeps.
inline void sleep_for(std::chrono::duration<double> duration) {
  const auto until =
      detail::clock::now() + std::chrono::duration_cast<detail::clock::duration>(duration);
  const auto [loop, self] = detail::running_on_fiber();
  if (self == nullptr) {
    std::this_thread::sleep_until(until);
    return;
  }
  while (detail::clock::now() < until) loop->park_until(until);
}

/// Runs fn() on a helper thread while only the calling fiber waits, and returns what it
/// returned or rethrows what it threw: for a call that blocks outside the library (a
/// database client, a file read, getaddrinfo(), a long computation), which would otherwise
/// stall every fiber of the loop. Off a fiber it just calls fn(). The helper threads are
/// shared by the process (up to 64; more jobs queue).
template <class F>
auto offload(F&& fn) -> std::invoke_result_t<F&> {
  using result_type = std::invoke_result_t<F&>;
  const auto [loop, self] = detail::running_on_fiber();
  if (self == nullptr) return fn();
  struct outcome {
    std::conditional_t<std::is_void_v<result_type>, bool, std::optional<result_type>> value{};
    std::exception_ptr error;
    bool done = false;  // set on the fiber's loop thread, by the task that wakes it
  } out;
  detail::fiber_loop* home = loop;
  detail::fiber* waiter = self;
  detail::offload_pool::instance().submit([&out, &fn, home, waiter] {
    try {
      if constexpr (std::is_void_v<result_type>)
        fn();
      else
        out.value.emplace(fn());
    } catch (...) {
      out.error = std::current_exception();
    }
    // Only this task ends the wait: a flag the fiber could see before parking would let it
    // return, and the wake-up would then reach a fiber that has ended.
    home->post([&out, home, waiter] {
      out.done = true;
      home->wake(waiter);
    });
  });
  while (!out.done) loop->park_until(detail::clock::time_point::max());
  if (out.error) std::rethrow_exception(out.error);
  if constexpr (!std::is_void_v<result_type>) return std::move(*out.value);
}

/// A mutex for fibers (of any loop) and threads: a fiber that must wait for it suspends
/// instead of blocking its loop, and is handed the lock in the order it asked. Use it where
/// fibers take turns across a wait (e.g. several writers to one connection: a lock held
/// across sendall()); a std::mutex held across a wait would block the loop, or deadlock two
/// fibers of one loop. Meets Lockable (std::lock_guard, std::unique_lock).
class fiber_mutex {
 public:
  fiber_mutex() = default;
  fiber_mutex(const fiber_mutex&) = delete;
  fiber_mutex& operator=(const fiber_mutex&) = delete;

  /// Takes the lock, waiting for it in turn: a fiber suspends, a thread blocks.
  void lock() {
    std::unique_lock<std::mutex> guard(mutex_);
    if (!locked_) {
      locked_ = true;
      return;
    }
    const auto [loop, self] = detail::running_on_fiber();
    waiter w{loop, self};
    waiters_.push_back(&w);
    if (self == nullptr) {
      granted_.wait(guard, [&] { return w.granted.load(); });
      return;
    }
    guard.unlock();
    while (!w.granted.load(std::memory_order_acquire))
      loop->park_until(detail::clock::time_point::max());
  }

  /// Takes the lock if it is free; returns whether it did. Never waits.
  bool try_lock() {
    std::lock_guard<std::mutex> guard(mutex_);
    if (locked_) return false;
    locked_ = true;
    return true;
  }

  /// Hands the lock to the longest waiter, if any.
  void unlock() {
    std::unique_lock<std::mutex> guard(mutex_);
    if (waiters_.empty()) {
      locked_ = false;
      return;
    }
    waiter* next = waiters_.front();
    waiters_.pop_front();
    if (next->fiber == nullptr) {
      next->granted.store(true, std::memory_order_release);
      granted_.notify_all();
      return;
    }
    detail::fiber_loop* loop = next->loop;
    guard.unlock();
    if (detail::fiber_loop::current() == loop) {  // the waiter is parked (this thread runs)
      next->granted.store(true, std::memory_order_release);
      loop->wake(next->fiber);
    } else {  // granted on its own thread, where it parks before the task can run
      loop->post([loop, next] {
        next->granted.store(true, std::memory_order_release);
        loop->wake(next->fiber);
      });
    }
  }

 private:
  struct waiter {
    detail::fiber_loop* loop;
    detail::fiber* fiber;
    std::atomic<bool> granted{false};
  };
  std::mutex mutex_;
  std::condition_variable granted_;
  bool locked_ = false;
  std::deque<waiter*> waiters_;
};

}  // namespace socketserver
