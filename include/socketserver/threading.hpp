// SPDX-License-Identifier: MIT
// ThreadingMixIn: a thread per request.
#pragma once

#include <poll.h>        // pollfd, POLLIN
#include <pthread.h>     // pthread_create, pthread_attr_*
#include <sys/socket.h>  // shutdown, SHUT_RDWR

#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdio>              // std::fprintf
#include <memory>              // std::unique_ptr
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <system_error>        // std::system_error
#include <utility>             // std::move

#include "address.hpp"
#include "base_server.hpp"  // detail::is_stream
#include "detail/exceptions.hpp"
#include "detail/poll.hpp"
#include "detail/wakeup.hpp"
#include "socket.hpp"

namespace socketserver {

/// Python's ThreadingMixIn: handles each request in a new thread. Compose it over a server
/// (servers.hpp does for the predefined types): `ThreadingMixIn<basic_tcp_server<H, D>>`.
///
/// - daemon_threads (false): false means server_close() waits for the request's thread
///   (when block_on_close); true means it does not.
/// - block_on_close (true): server_close() waits for the non-daemon threads.
/// - thread_stack_size (0 = the system's default): stack size of request threads.
/// - max_threads (0 = no limit; beyond Python): at that many running request threads, the
///   server waits for one to finish before it starts another (as ForkingMixIn's
///   max_children), so clients wait in the listen backlog. shutdown() ends that wait at
///   once: the request the server holds has been accepted, so it is started all the same,
///   one thread beyond max_threads, rather than lost (the limit holds again from the next
///   request).
///
/// Finished threads leave nothing behind (no list that grows over a long run). The
/// destructor never lets a thread outlive the server it uses: it shuts down the
/// connections of the threads still running (daemon threads, or all with block_on_close
/// false) so that they stop waiting for their clients, and waits for them. If your subclass
/// has members that handlers use, call server_close() in its destructor.
///
/// The Python docs' ThreadedTCPServer (`class ThreadedTCPServer(ThreadingMixIn, TCPServer)`):
/// @code
/// struct ThreadedTCPServer
///     : socketserver::ThreadingMixIn<socketserver::basic_tcp_server<Handler, ThreadedTCPServer>> {
///   using ThreadingMixIn::ThreadingMixIn;
/// };
/// @endcode
/// or simply `socketserver::ThreadingTCPServer<Handler>` (servers.hpp).
template <class Base>
class ThreadingMixIn : public Base {
 public:
  /// The request type of the server below: `socket` or `datagram`.
  using request_type = typename Base::request_type;

  /// Python's ThreadingMixIn.daemon_threads: when true, server_close() does not wait for
  /// the request threads (the destructor still stops them: none outlives the server).
  bool daemon_threads = false;
  /// Python's ThreadingMixIn.block_on_close: server_close() waits for the non-daemon
  /// request threads (true).
  bool block_on_close = true;
  /// Stack size of each request thread in bytes; 0 is the system's default (Python:
  /// threading.stack_size()).
  std::size_t thread_stack_size = 0;
  /// At most this many request threads at once, 0 for no limit (beyond Python).
  std::size_t max_threads = 0;

  using Base::Base;
  ThreadingMixIn(const ThreadingMixIn&) = delete;
  ThreadingMixIn& operator=(const ThreadingMixIn&) = delete;
  ~ThreadingMixIn() {
    ThreadingMixIn::server_close();
    std::unique_lock<std::mutex> lock(mutex_);
    for (task* t = running_.next; t != &running_; t = t->next)
      if (t->connection_fd >= 0) ::shutdown(t->connection_fd, SHUT_RDWR);  // wake its recv()
    idle_.wait(lock, [&] { return active_ == 0; });
  }

  /// Starts a thread that runs process_request_thread(); returns at once.
  /// @throws std::system_error if the thread cannot be started (the request is left as it
  ///         was, for handle_error() and shutdown_request()).
  void process_request(request_type& request, const address& client_address) {
    if (max_threads != 0) wait_for_a_thread();
    auto t = std::make_unique<task>(this, std::move(request), client_address,
                                    block_on_close && !daemon_threads);
    track(t.get());
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (thread_stack_size != 0) pthread_attr_setstacksize(&attr, thread_stack_size);
    pthread_t id;
    const int rc = pthread_create(&id, &attr, &thread_main, t.get());
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      untrack(t.get());
      request = std::move(t->request);
      throw std::system_error(rc, std::system_category(), "start request thread");
    }
    t.release();  // the thread owns it now
  }

  /// Same as BaseServer::process_request() but in the request's thread, with errors
  /// handled there: finish_request(), handle_error() if it threw, then shutdown_request().
  /// A handler that ends its thread (pthread_exit(), cancellation) has its request shut down
  /// and counted as failed as the thread unwinds.
  void process_request_thread(request_type& request, const address& client_address) {
    this->finish_and_shut_down(request, client_address,
                               [this] { forget_connection(current_task_); });
  }

  /// Closes the server and waits for the non-daemon request threads (if block_on_close).
  /// A datagram server waits first, so no thread replies on a closed socket; a stream server
  /// closes first, so new clients are refused while it waits (as CPython).
  void server_close() {
    if constexpr (detail::is_stream<request_type>) {
      Base::server_close();
      join();
    } else {
      join();
      Base::server_close();
    }
  }

  /// Graceful stop: serves the connections already queued (drain_backlog()) and closes the
  /// socket (stream servers), waits up to `grace` in all for the request
  /// threads, then shuts down the connections of those still running so they end, waits
  /// for them, and closes the server. Returns how many connections were cut. (A datagram
  /// handler has no connection to cut: its thread is waited for.)
  std::size_t drain(std::chrono::duration<double> grace) {
    const auto deadline = detail::deadline_after(grace);
    this->drain_backlog(deadline);  // a thread for each connection already queued
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

  /// A prefork worker's own "a thread ended" descriptor, not the supervisor's copy.
  void after_fork_in_child() {
    Base::after_fork_in_child();
    thread_ended_.reset();
  }

  /// How many request threads are running now.
  std::size_t active_threads() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return active_;
  }

 private:
  struct task {
    task() = default;
    task(ThreadingMixIn* s, request_type&& r, const address& a, bool t)
        : server(s), request(std::move(r)), client_address(a), tracked(t) {}
    ThreadingMixIn* server = nullptr;
    request_type request;
    address client_address;
    bool tracked = false;
    int connection_fd = -1;  // while the handler runs, for the destructor to shut down
    task* prev = this;
    task* next = this;
  };

  static void* thread_main(void* arg) {
    // The thread's end, however it ends: also when a forced unwind (the handler called
    // pthread_exit(), or the thread was cancelled) passes through.
    struct thread_end {
      std::unique_ptr<task> t;
      ~thread_end() {
        ThreadingMixIn* self = t->server;
        current_task_ = nullptr;
        self->forget_connection(t.get());
        const bool tracked = t->tracked;
        t.reset();  // closes the request if nothing did
        // The last touch of *self: once active_ drops, the destructor may free it.
        std::lock_guard<std::mutex> lock(self->mutex_);
        --self->active_;
        if (tracked) --self->tracked_;
        if (self->waiting_for_thread_) self->thread_ended_.notify();
        self->idle_.notify_all();
      }
    } end{std::unique_ptr<task>(static_cast<task*>(arg))};
    task& t = *end.t;
    current_task_ = &t;
    try {
      t.server->derived().process_request_thread(t.request, t.client_address);
    } catch (detail::forced_unwind&) {
      throw;
    } catch (...) {
      // handle_error() or shutdown_request() threw: nobody is left to tell but stderr.
      std::fprintf(stderr, "socketserver: request thread for %s ended with %s\n",
                   t.client_address.to_string().c_str(),
                   detail::describe_current_exception().c_str());
    }
    return nullptr;
  }

  // Waits until fewer than max_threads request threads run, or until the loop is told to
  // stop (shutdown(), or a prefork worker's supervisor): then the request in hand is started
  // beyond the limit rather than lost. (A poll, not idle_, so that shutdown()'s wake-up
  // descriptor ends it.)
  void wait_for_a_thread() {
    // Only a running loop is stopped: a shutdown() left pending by a loop that has ended must
    // not lift the limit for handle_request().
    const bool serving = this->is_serving();
    std::unique_lock<std::mutex> lock(mutex_);
    while (active_ >= max_threads && !(serving && this->shutdown_requested())) {
      waiting_for_thread_ = true;
      lock.unlock();
      pollfd fds[3] = {{thread_ended_.fileno(), POLLIN, 0},
                       {serving ? this->wakeup_.fileno() : -1, POLLIN, 0},
                       {this->derived().stop_fileno(), POLLIN, 0}};
      detail::poll_for(fds, 3, std::nullopt);
      thread_ended_.drain();
      lock.lock();
      waiting_for_thread_ = false;
      if (fds[1].revents != 0 || fds[2].revents != 0) return;
    }
  }

  void track(task* t) {  // onto the list of running tasks, counted
    if constexpr (detail::is_stream<request_type>) t->connection_fd = t->request.fileno();
    std::lock_guard<std::mutex> lock(mutex_);
    t->prev = running_.prev;
    t->next = &running_;
    running_.prev->next = t;
    running_.prev = t;
    ++active_;
    if (t->tracked) ++tracked_;
  }

  // Takes the task off the list the destructor shuts connections down from. The request's
  // thread does this before it closes the connection, so the destructor never shuts down a
  // descriptor number that has meanwhile been reused.
  void forget_connection(task* t) noexcept {
    if (t == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    if (t->prev == t) return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = t;
  }

  // Undoes track() for a thread that could not be started.
  void untrack(task* t) noexcept {
    forget_connection(t);
    std::lock_guard<std::mutex> lock(mutex_);
    --active_;
    if (t->tracked) --tracked_;
  }

  void join() {
    if (!block_on_close) return;
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return tracked_ == 0; });
  }

  inline static thread_local task* current_task_ = nullptr;
  mutable std::mutex mutex_;
  std::condition_variable idle_;
  task running_;  // sentinel of the list of running tasks
  std::size_t active_ = 0;
  std::size_t tracked_ = 0;
  bool waiting_for_thread_ = false;  // wait_for_a_thread() wants thread_ended_
  detail::wakeup thread_ended_;      // a request thread ended while it waited
};

}  // namespace socketserver
