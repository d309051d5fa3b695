// SPDX-License-Identifier: MIT
// PreforkMixIn: serve_forever() on several worker processes that share the server's socket,
// under a supervisor that replaces the workers that die.
#pragma once

#include <poll.h>       // pollfd, POLLIN
#include <sys/mman.h>   // mmap, munmap, MAP_SHARED, MAP_ANONYMOUS
#include <sys/types.h>  // pid_t
#include <sys/wait.h>   // waitpid, WNOHANG
#include <unistd.h>     // getpid, _exit

#include <algorithm>     // std::min
#include <chrono>        // std::chrono
#include <cstddef>       // std::size_t
#include <cstdio>        // std::fprintf, std::fflush, stderr
#include <map>           // std::map
#include <memory>        // std::unique_ptr
#include <new>           // placement new
#include <optional>      // std::optional
#include <stdexcept>     // std::invalid_argument
#include <system_error>  // std::system_error
#include <vector>        // std::vector

#include "base_server.hpp"  // detail::is_stream
#include "detail/accept_turn.hpp"
#include "detail/errno.hpp"
#include "detail/exceptions.hpp"
#include "detail/fd.hpp"
#include "detail/poll.hpp"
#include "detail/process.hpp"
#include "detail/time.hpp"
#include "socket.hpp"
#include "stats.hpp"

namespace socketserver {

/// Prefork (beyond Python): serve_forever_workers(n) serves on `n` child processes, each
/// running serve_forever() on this server's socket, until shutdown() is called (from another
/// thread of this process). Compose it over any server, as the other mix-ins:
/// `PreforkMixIn<ThreadingMixIn<basic_tcp_server<H, D>>>`; every predefined server type in
/// servers.hpp has it.
///
/// The parent only supervises: a worker that exits or dies is replaced (at most once a second
/// for a worker that did not live a second, so a crash loop cannot fork-bomb). shutdown()
/// tells every worker to stop; each finishes the request it is handling, closes (waiting for
/// its own threads or children) and exits; serve_forever_workers() returns when all have.
///
/// The workers share the one listening socket (a stream socket is made non-blocking while
/// they serve). Each waits with EPOLLEXCLUSIVE on Linux (socket_shared()), so a request wakes
/// one waiting worker, not all of them; a worker that took work waits behind the others next
/// (detail::exclusive_wait::rotate()), so the idle workers take turns. Elsewhere (and in the
/// portable mode) the workers take turns waiting on the socket, passing the turn on through a
/// pipe per worker at each wake-up (detail/accept_turn.hpp): a request wakes one worker, two
/// when the next one looks before the first has accepted. That takes one serve loop per
/// worker: ThreadPoolMixIn's and FiberMixIn's workers, with several threads waiting on the
/// socket, all wake there. One socket works for every family, Unix included, and
/// never hands a connection to a worker that has exited; SO_REUSEPORT sockets would spread
/// connections without a shared wake-up, but a connection queued on an exiting worker's socket is
/// lost. A worker that loses its parent stops as well.
///
/// Counters: each worker counts in memory it shares with the supervisor (mapped before the
/// workers fork; the same relaxed atomic increments as a lone server's, no lock). stats() on
/// the supervisor is the sum over its workers, live; worker_stats() gives each worker's; in a
/// worker (a handler's server.stats()), stats() is that worker's own. A worker that dies with
/// requests in flight has them counted as completed with errors.
template <class Base>
class PreforkMixIn : public Base {
 public:
  using Base::Base;
  ~PreforkMixIn() {
    const auto* b = this->worker_blocks_.exchange(nullptr);
    while (b != nullptr) {
      const auto* next = b->next;
      ::munmap(const_cast<void*>(static_cast<const void*>(b)), block_bytes(b->count));
      b = next;
    }
  }

  /// Each worker's counters, live, in the places of the last serve_forever_workers() call
  /// (empty before one); stats() is their sum.
  std::vector<worker_counters> worker_stats() const {
    std::vector<worker_counters> out;
    const auto* b = this->worker_blocks_.load(std::memory_order_acquire);
    if (b == nullptr) return out;
    for (std::size_t i = 0; i < b->count; ++i) {
      worker_counters w;
      w.index = i;
      w.pid = b->slots()[i].pid.load(std::memory_order_relaxed);
      w.stats = this->snapshot(b->slots()[i].counts);
      out.push_back(w);
    }
    return out;
  }

  /// Forks `workers` workers and supervises them until shutdown(); see the class comment.
  /// @throws std::invalid_argument for zero workers; std::system_error if the socket is
  ///         closed or fork() fails for the first workers; std::logic_error if serving.
  void serve_forever_workers(std::size_t workers, std::chrono::duration<double> poll_interval =
                                                      std::chrono::duration<double>(0.5)) {
    if (workers == 0) throw std::invalid_argument("serve_forever_workers: no workers");
    if (this->fileno() < 0)
      throw std::system_error(EBADF, std::system_category(), "serve_forever_workers");
    auto serving = this->begin_serving();
    // Non-blocking while the workers share it: a worker must not block in accept() after
    // another one took the connection it woke for.
    detail::nonblocking_scope nonblocking(
        detail::is_stream<typename Base::request_type> ? this->fileno() : -1, &this->handed_over_);
    // The workers stop when this pipe's write end closes: on shutdown(), or when this process
    // dies.
    int stop_pipe[2];
    if (detail::open_pipe(stop_pipe, false) < 0) detail::throw_errno("pipe");
    socketserver::socket stop_read(stop_pipe[0]), stop_write(stop_pipe[1]);

    using detail::clock;
    typename Base::counter_slot* slots = counter_slots(workers);
    // Without an exclusive wake-up, the workers take turns waiting on the socket.
    std::unique_ptr<detail::accept_turn_table> turns;
    if (detail::accept_turn_table::needed(workers))
      turns = std::make_unique<detail::accept_turn_table>(workers);
    struct worker {
      clock::time_point started;
      socketserver::socket pidfd;  // readable once the worker has exited (-1 if unsupported)
      std::size_t slot;            // where it counts
    };
    std::map<pid_t, worker> running;
    std::vector<respawn> respawn_at;  // replacements waiting out a crash loop
    auto spawn = [&](std::size_t slot) {
      const pid_t pid = detail::fork_with_stdio([this] { return this->fork_server_process(); });
      if (pid < 0) detail::throw_errno("fork");
      if (pid == 0) {
        stop_write.close();
        this->counters_ = &slots[slot].counts;  // a worker's stats() are its own
        this->worker_blocks_.store(nullptr, std::memory_order_relaxed);
        if (turns) {
          turns->enter_worker(slot);
          turn_.emplace(turns->state(), slot, turns->doorbells(), workers,
                        turns->doorbell_of(slot));
        }
        this->derived().after_fork_in_child();
        run_worker(stop_read.fileno(), poll_interval);
      }
      slots[slot].pid.store(pid, std::memory_order_relaxed);
      running[pid] = worker{clock::now(), socketserver::socket(detail::open_pidfd(pid)), slot};
    };
    auto stop_workers = [&] {
      stop_write.close();  // every worker sees end of file and stops
      for (auto& [pid, w] : running) {
        int status = 0;
        detail::retry_on_eintr([&, p = pid] { return ::waitpid(p, &status, 0); });
        retire(slots[w.slot]);
      }
      running.clear();
    };
    try {
      for (std::size_t i = 0; i < workers; ++i) spawn(i);
      std::vector<pollfd> fds;
      while (!this->shutdown_requested()) {
        fds.assign(1, pollfd{this->wakeup_.fileno(), POLLIN, 0});
        for (auto& [pid, w] : running)
          if (w.pidfd.is_open()) fds.push_back(pollfd{w.pidfd.fileno(), POLLIN, 0});
        timeout_type wait = poll_interval;
        for (const respawn& r : respawn_at)
          wait = std::min<std::chrono::duration<double>>(*wait, r.due - clock::now());
        if (*wait < std::chrono::duration<double>::zero()) wait = std::chrono::duration<double>(0);
        detail::poll_for(fds.data(), fds.size(), wait);
        if (this->shutdown_requested()) break;
        reap(running, respawn_at, slots, turns.get());
        for (auto it = respawn_at.begin(); it != respawn_at.end();) {
          if (it->due > clock::now()) {
            ++it;
            continue;
          }
          try {
            spawn(it->slot);
            it = respawn_at.erase(it);
          } catch (const std::system_error& e) {  // e.g. EAGAIN: try again next time
            std::fprintf(stderr, "socketserver: cannot replace a worker: %s\n", e.what());
            it->due = clock::now() + std::chrono::seconds(1);
            ++it;
          }
        }
        this->derived().service_actions();
      }
    } catch (...) {
      stop_workers();
      throw;
    }
    stop_workers();
  }

  /// True in a worker: other workers wait on the same socket.
  bool socket_shared() const noexcept { return stop_fd_ >= 0 || Base::socket_shared(); }
  /// In a worker, the supervisor's stop pipe: it stops serving when the pipe closes.
  int stop_fileno() const noexcept { return stop_fd_ >= 0 ? stop_fd_ : Base::stop_fileno(); }
  /// @cond INTERNAL
  /// In a worker where the system has no exclusive wake-up: its share of the accept turn.
  detail::accept_turn* shared_accept_turn() noexcept {
    return turn_ ? &*turn_ : Base::shared_accept_turn();
  }
  /// @endcond

 private:
  struct respawn {
    detail::clock::time_point due;
    std::size_t slot;  // the place of the worker it replaces
  };

  static constexpr std::size_t block_bytes(std::size_t slots) noexcept {
    return sizeof(typename Base::counter_block) + slots * sizeof(typename Base::counter_slot);
  }

  // `workers` counter slots in shared memory, summed by stats(): the last call's if it had as
  // many, else a new block (the earlier ones stay, and stay counted).
  typename Base::counter_slot* counter_slots(std::size_t workers) {
    using block = typename Base::counter_block;
    using slot = typename Base::counter_slot;
    const block* head = this->worker_blocks_.load(std::memory_order_acquire);
    if (head != nullptr && head->count >= workers) return const_cast<block*>(head)->slots();
    void* memory = ::mmap(nullptr, block_bytes(workers), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) detail::throw_errno("mmap (prefork worker counters)");
    auto* b = new (memory) block;
    b->next = const_cast<block*>(head);
    b->count = workers;
    for (std::size_t i = 0; i < workers; ++i) new (b->slots() + i) slot;
    this->worker_blocks_.store(b, std::memory_order_release);
    return b->slots();
  }

  // A worker has exited: what it had in flight ended with it (counted as errors), and it
  // runs no pool threads any more.
  static void retire(typename Base::counter_slot& slot) noexcept {
    auto& c = slot.counts;
    const auto accepted = c.accepted.load(std::memory_order_relaxed);
    const auto done =
        c.rejected.load(std::memory_order_relaxed) + c.completed.load(std::memory_order_relaxed);
    if (accepted > done) {
      c.errors.fetch_add(accepted - done, std::memory_order_relaxed);
      c.completed.fetch_add(accepted - done, std::memory_order_release);
    }
    c.pool_threads.store(0, std::memory_order_relaxed);
    slot.pid.store(0, std::memory_order_relaxed);
  }

  // Reaps the workers that have exited, and schedules their replacements.
  template <class Running>
  static void reap(Running& running, std::vector<respawn>& respawn_at,
                   typename Base::counter_slot* slots, detail::accept_turn_table* turns) {
    using detail::clock;
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      if (::waitpid(it->first, &status, WNOHANG) != it->first) {
        ++it;
        continue;
      }
      retire(slots[it->second.slot]);
      if (turns != nullptr) turns->worker_gone(it->first, it->second.slot);
      const bool short_lived = clock::now() - it->second.started < std::chrono::seconds(1);
      respawn_at.push_back(
          respawn{short_lived ? it->second.started + std::chrono::seconds(1) : clock::now(),
                  it->second.slot});
      it = running.erase(it);
    }
  }

  // A worker's life, in the child: serve until the supervisor's pipe closes (stop_fileno()),
  // close (waiting for the worker's own threads or children), leave.
  [[noreturn]] void run_worker(int stop_fd, std::chrono::duration<double> poll_interval) {
    stop_fd_ = stop_fd;
    int status = 0;
    try {
      this->derived().serve_forever(poll_interval);
    } catch (detail::forced_unwind&) {  // a handler ended the serving thread: the worker ends
      leave_worker(1);                  // here (its supervisor replaces it)
    } catch (...) {
      std::fprintf(stderr, "socketserver: worker %ld stopped: %s\n", static_cast<long>(::getpid()),
                   detail::describe_current_exception().c_str());
      status = 1;
    }
    leave_worker(status);
  }
  [[noreturn]] void leave_worker(int status) noexcept {
    try {
      this->derived().server_close();
    } catch (detail::forced_unwind&) {
      std::fflush(nullptr);
      ::_exit(1);
    } catch (...) {
      status = 1;
    }
    std::fflush(nullptr);
    ::_exit(status);
  }

  int stop_fd_ = -1;  // in a worker: the read end of the supervisor's stop pipe
  std::optional<detail::accept_turn> turn_;  // in a worker, without an exclusive wake-up
};

}  // namespace socketserver
