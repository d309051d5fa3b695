// SPDX-License-Identifier: MIT
// The accept turn: where the system has no exclusive wake-up on a shared socket (Linux's
// EPOLLEXCLUSIVE: exclusive_wait.hpp), prefork workers take turns waiting on it, so that a
// new connection wakes one worker rather than all of them.
//
// One worker at a time (the holder) polls the shared socket; the others poll a doorbell, a
// pipe of their own, with their wake-up and stop descriptors, so that shutdown and
// service_actions() still reach them. The holder hands the turn on as soon as its wait ends
// (a connection, a timeout, a stop), before it accepts: the turn is reserved for one waiting
// worker, whose doorbell it rings. So a connection wakes the holder, and the next holder,
// which finds the connection taken (or, when it looks first, takes it itself). Handing on
// at every wake-up is also the rotation: the idle workers take turns.
//
// Nothing waits on a lock, so a worker that dies holding the turn, or with the turn reserved
// for it, cannot wedge the others: the supervisor frees the turn when it reaps the worker
// (release_if_held_by()), and a waiter whose wait times out frees a turn whose holder no
// longer exists.
#pragma once

#include <poll.h>       // pollfd, POLLIN
#include <signal.h>     // kill
#include <sys/mman.h>   // mmap, munmap
#include <sys/types.h>  // pid_t
#include <unistd.h>     // getpid, read, write, close

#include "platform.hpp"  // SOCKETSERVER_LINUX_CALLS
#if defined(SOCKETSERVER_LINUX_CALLS)
#  include <sys/epoll.h>  // EPOLLEXCLUSIVE
#endif

#include <atomic>   // std::atomic
#include <cerrno>   // errno, ESRCH, EINTR
#include <cstddef>  // std::size_t
#include <cstdint>  // std::uint64_t
#include <new>      // placement new
#include <utility>  // std::exchange
#include <vector>   // std::vector

#include "errno.hpp"  // throw_errno
#include "fd.hpp"     // open_pipe
#include "poll.hpp"   // deadline_after, ms_until
#include "time.hpp"   // optional_seconds, clock

namespace socketserver {
namespace detail {

/// What the workers share, in memory mapped before they fork.
struct accept_turn_state {
  /// At most this many workers take part (the bits of `waiting`).
  static constexpr std::size_t max_workers = 64;
  /// Who has the turn: 0 nobody; a pid: that worker, polling the socket; -(i + 1): reserved
  /// for worker i, whose doorbell has been rung.
  std::atomic<long> holder{0};
  std::atomic<std::uint64_t> waiting{0};  ///< bit i: worker i waits for its doorbell
  std::atomic<unsigned> next_rung{0};     ///< where the search for a waiter starts
  std::atomic<std::uint64_t> wakeups{0};  ///< waits that the socket ended (tests, benches)

  static constexpr long reserved_for(std::size_t worker) noexcept {
    return -static_cast<long>(worker) - 1;
  }
};

/// Passes the turn from `current` (the holder's value now: a pid, a reservation or 0) to one
/// waiting worker, ringing its doorbell (doorbells[i] is worker i's write end), or frees it
/// when nobody waits.
inline void hand_turn_on(accept_turn_state& state, long current, const int* doorbells,
                         std::size_t workers) noexcept {
  for (;;) {
    std::uint64_t waiting = state.waiting.load();
    if (waiting == 0) {
      if (current == 0) return;
      if (!state.holder.compare_exchange_strong(current, 0)) return;  // not ours any more
      current = 0;
      if (state.waiting.load() == 0) return;
      continue;  // a worker began waiting after the first look, and may not have seen the
                 // turn free: offer it
    }
    // Round robin from next_rung, so no waiter is passed over twice in a row.
    const std::size_t start = state.next_rung.load(std::memory_order_relaxed) % workers;
    std::size_t chosen = workers;
    for (std::size_t k = 0; k < workers && chosen == workers; ++k)
      if ((waiting >> ((start + k) % workers)) & 1u) chosen = (start + k) % workers;
    if (chosen == workers) return;
    if (!state.waiting.compare_exchange_weak(waiting, waiting & ~(std::uint64_t{1} << chosen)))
      continue;
    state.next_rung.store(static_cast<unsigned>(chosen + 1), std::memory_order_relaxed);
    // Should a worker have taken a free turn meanwhile, the one chosen is rung all the same:
    // it sees the turn taken and waits again.
    (void)state.holder.compare_exchange_strong(current, accept_turn_state::reserved_for(chosen));
    const char ring = 1;
    (void)!::write(doorbells[chosen], &ring, 1);  // a full pipe has a ring unread already
    return;
  }
}

/// The supervisor reaped worker `worker` (process `pid`): a turn it held, or that was
/// reserved for it, passes on.
inline void release_if_held_by(accept_turn_state& state, long pid, std::size_t worker,
                               const int* doorbells, std::size_t workers) noexcept {
  for (long held_by : {pid, accept_turn_state::reserved_for(worker)}) {
    if (state.holder.compare_exchange_strong(held_by, 0)) {
      hand_turn_on(state, 0, doorbells, workers);
      return;
    }
  }
}

/// One worker's side of the turn.
class accept_turn {
 public:
  /// `doorbells` has the write ends of every worker's doorbell; `doorbell` is the read end
  /// of worker `worker`'s own. They stay owned by the caller.
  accept_turn(accept_turn_state& state, std::size_t worker, const int* doorbells,
              std::size_t workers, int doorbell) noexcept
      : state_(state),
        bit_(std::uint64_t{1} << worker),
        mine_(accept_turn_state::reserved_for(worker)),
        doorbells_(doorbells),
        workers_(workers),
        doorbell_(doorbell) {}
  accept_turn(const accept_turn&) = delete;
  accept_turn& operator=(const accept_turn&) = delete;

  /// Like poll_for() on fds[0] (the shared socket) and fds[1..count) (this worker's own
  /// descriptors, count <= 4): sets their revents and returns how many are ready, 0 on
  /// timeout. Only while this worker holds the turn is fds[0] polled.
  int wait(pollfd* fds, int count, optional_seconds timeout) {
    const auto deadline = deadline_after(timeout);
    if (count > 4) count = 4;
    for (;;) {
      for (int i = 0; i < count; ++i) fds[i].revents = 0;
      if (take()) {
        struct hand_on {  // however the wait ends, even by an exception
          accept_turn& turn;
          ~hand_on() { hand_turn_on(turn.state_, ::getpid(), turn.doorbells_, turn.workers_); }
        } holding{*this};
        const int ready = poll_until(fds, count, deadline);
        if (fds[0].revents != 0) state_.wakeups.fetch_add(1, std::memory_order_relaxed);
        return ready;
      }
      // Registered before the turn is looked at again: a holder handing it on meanwhile
      // either sees the bit and rings, or has freed the turn, which is then seen free.
      state_.waiting.fetch_or(bit_);
      const long now = state_.holder.load();
      if (now == 0 || now == mine_) {
        state_.waiting.fetch_and(~bit_);
        continue;
      }
      pollfd own[4] = {{doorbell_, POLLIN, 0}, {-1, 0, 0}, {-1, 0, 0}, {-1, 0, 0}};
      for (int i = 1; i < count; ++i) own[i] = pollfd{fds[i].fd, fds[i].events, 0};
      int ready = poll_until(own, count, deadline);
      state_.waiting.fetch_and(~bit_);  // (whoever rang has cleared it already)
      const bool rung = own[0].revents != 0;
      if (rung) {
        char rings[16];
        while (::read(doorbell_, rings, sizeof rings) > 0) {
        }
        --ready;
      }
      for (int i = 1; i < count; ++i) fds[i].revents = own[i].revents;
      if (ready > 0 || !rung) {
        // A wake-up, a stop or the deadline: the caller's business. A turn reserved for
        // this worker meanwhile passes on; at the deadline, so does the turn of a holder
        // that no longer exists.
        long held_by = mine_;
        if (state_.holder.compare_exchange_strong(held_by, 0))
          hand_turn_on(state_, 0, doorbells_, workers_);
        else if (ready == 0)
          free_if_holder_gone();
        return ready;
      }
      // Rung: the turn is reserved for this worker (or was taken meanwhile: wait again,
      // within the same deadline).
    }
  }

 private:
  bool take() noexcept {
    const long me = static_cast<long>(::getpid());
    long expected = 0;
    if (state_.holder.compare_exchange_strong(expected, me)) return true;
    expected = mine_;
    return state_.holder.compare_exchange_strong(expected, me);
  }
  void free_if_holder_gone() noexcept {
    long holder = state_.holder.load();
    if (holder > 0 && ::kill(static_cast<pid_t>(holder), 0) < 0 && errno == ESRCH &&
        state_.holder.compare_exchange_strong(holder, 0))
      hand_turn_on(state_, 0, doorbells_, workers_);
  }
  static int poll_until(pollfd* fds, int count, clock::time_point deadline) {
    for (;;) {
      const int ready = ::poll(fds, static_cast<nfds_t>(count), ms_until(deadline));
      if (ready >= 0) return ready;
      if (errno != EINTR) throw_errno("poll");
    }
  }

  accept_turn_state& state_;
  std::uint64_t bit_;
  long mine_;
  const int* doorbells_;
  std::size_t workers_;
  int doorbell_;
};

/// The supervisor's side: the shared state and every worker's doorbell, made before the
/// workers fork (a replacement worker takes its predecessor's doorbell).
class accept_turn_table {
 public:
  /// @throws std::system_error if the memory or a pipe cannot be made.
  explicit accept_turn_table(std::size_t workers) : workers_(workers) {
    void* memory = ::mmap(nullptr, sizeof(accept_turn_state), PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) throw_errno("mmap (prefork accept turn)");
    state_ = new (memory) accept_turn_state;
    try {
      for (std::size_t i = 0; i < workers; ++i) {
        int ends[2];
        if (open_pipe(ends, true) < 0) throw_errno("pipe (prefork accept turn)");
        reads_.push_back(ends[0]);
        writes_.push_back(ends[1]);
      }
    } catch (...) {
      release();
      throw;
    }
  }
  accept_turn_table(const accept_turn_table&) = delete;
  accept_turn_table& operator=(const accept_turn_table&) = delete;
  ~accept_turn_table() { release(); }

  /// Whether the workers need one: where waiting on the socket wakes every waiter.
  static constexpr bool needed(std::size_t workers) noexcept {
#if defined(SOCKETSERVER_LINUX_CALLS) && defined(EPOLLEXCLUSIVE)
    (void)workers;
    return false;
#else
    return workers > 1 && workers <= accept_turn_state::max_workers;
#endif
  }

  /// In worker `worker`'s process, just forked: its turn (the other doorbells' read ends
  /// are closed there).
  void enter_worker(std::size_t worker) noexcept {
    for (std::size_t i = 0; i < reads_.size(); ++i)
      if (i != worker && reads_[i] >= 0) ::close(std::exchange(reads_[i], -1));
  }
  accept_turn_state& state() noexcept { return *state_; }
  const int* doorbells() const noexcept { return writes_.data(); }
  int doorbell_of(std::size_t worker) const noexcept { return reads_[worker]; }
  std::size_t workers() const noexcept { return workers_; }

  /// The supervisor reaped worker `worker`, process `pid`.
  void worker_gone(long pid, std::size_t worker) noexcept {
    release_if_held_by(*state_, pid, worker, writes_.data(), workers_);
  }

 private:
  void release() noexcept {
    for (int fd : reads_)
      if (fd >= 0) ::close(fd);
    for (int fd : writes_) ::close(fd);
    reads_.clear();
    writes_.clear();
    if (state_ != nullptr) ::munmap(state_, sizeof(accept_turn_state));
    state_ = nullptr;
  }

  std::size_t workers_;
  accept_turn_state* state_ = nullptr;
  std::vector<int> reads_, writes_;
};

}  // namespace detail
}  // namespace socketserver
