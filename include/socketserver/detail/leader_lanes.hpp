// SPDX-License-Identifier: MIT
// ThreadPoolMixIn's leader/followers machinery: the lanes of the serve loop. A worker takes a
// free lane to lead (run the loop: accept, and serve what it accepted inline, with the lane
// in hand); it hands the lane on when its request has to wait in the library's I/O, parks it
// when there are more leaders than requests, and the watcher (the thread in serve_forever())
// takes it from a request that keeps it longer than handoff_after. The bounded pool (workers,
// queue, growth, drain) is thread_pool.hpp's.
#pragma once

#include <poll.h>  // pollfd, POLLIN

#include <algorithm>           // std::min
#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration
#include <condition_variable>  // std::condition_variable
#include <cstddef>             // std::size_t
#include <cstdint>             // std::uint64_t
#include <memory>              // std::unique_ptr
#include <mutex>               // std::mutex, std::unique_lock, std::lock_guard
#include <thread>              // std::thread::hardware_concurrency
#include <vector>              // std::vector

#include "blocking.hpp"  // arm_block_hook, disarm_block_hook
#include "poll.hpp"      // poll_once
#include "time.hpp"      // clock
#include "wakeup.hpp"    // wakeup

namespace socketserver {
namespace detail {

/// What a lane's holder is doing.
enum class lane_phase : std::uint64_t {
  free = 0,            // nobody: for a worker to take
  looping = 1,         // its leader is in serve_loop(): polling, accepting
  serving_inline = 2,  // its leader serves a request it accepted, with the lane in hand,
                       // which another thread may take from it
  parked = 3,          // closed while there are more leaders than requests
};

/// A lane's state: its phase, and how many requests were served inline in it, which tells
/// the watcher one long request from many short ones. Packed in one word, so that a lane
/// changes hands with one compare-and-swap.
class lane_token {
 public:
  lane_token() = default;
  lane_token(lane_phase phase, std::uint64_t served_inline) noexcept
      : bits_(served_inline << phase_bits | static_cast<std::uint64_t>(phase)) {}

  lane_phase phase() const noexcept { return static_cast<lane_phase>(bits_ & phase_mask); }
  std::uint64_t served_inline() const noexcept { return bits_ >> phase_bits; }
  /// The same lane in another phase (the count goes on).
  lane_token in(lane_phase phase) const noexcept { return lane_token(phase, served_inline()); }
  /// The lane serving one more request inline.
  lane_token next_request() const noexcept {
    return lane_token(lane_phase::serving_inline, served_inline() + 1);
  }

  friend bool operator==(lane_token a, lane_token b) noexcept { return a.bits_ == b.bits_; }
  friend bool operator!=(lane_token a, lane_token b) noexcept { return a.bits_ != b.bits_; }

 private:
  friend class lane;
  static constexpr unsigned phase_bits = 2;
  static constexpr std::uint64_t phase_mask = 3;
  std::uint64_t bits_ = 0;
};

/// One lane of the loop: its token, changed atomically.
class lane {
 public:
  lane_token load(std::memory_order order = std::memory_order_seq_cst) const noexcept {
    lane_token token;
    token.bits_ = bits_.load(order);
    return token;
  }
  void store(lane_token token) noexcept { bits_.store(token.bits_); }
  /// Replaces `expected` (only) with `desired`; false when the lane held something else.
  bool replace(lane_token expected, lane_token desired) noexcept {
    return bits_.compare_exchange_strong(expected.bits_, desired.bits_);
  }

 private:
  std::atomic<std::uint64_t> bits_{0};
};

/// Waits for `cv` until `until` (time_point::max(): without end); false once it has passed.
inline bool wait_idle(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                      clock::time_point until) {
  if (until == clock::time_point::max()) {
    cv.wait(lock);
    return true;
  }
  return cv.wait_until(lock, until) == std::cv_status::no_timeout;
}

/// The lanes of one pool's serve loop. Up to one worker per core (count()) runs the loop at
/// once, each holding one lane. `Owner` (the pool's type) only keeps each pool type's
/// per-thread leader state apart, as it was when this lived in the pool.
///
/// The lanes share the pool's mutex, under which the pool's `accepting` flag changes: a
/// worker waiting for a lane may give up and retire from the pool in the same wait, and a
/// lane freed while the server stops accepting must not be missed by serve_forever()'s wait
/// for the leaders to leave.
template <class Owner>
class leader_lanes {
 public:
  leader_lanes(std::mutex& mutex, const std::atomic<bool>& accepting) noexcept
      : mutex_(mutex), accepting_(accepting) {}
  leader_lanes(const leader_lanes&) = delete;
  leader_lanes& operator=(const leader_lanes&) = delete;

  /// This thread holds a lane of the loop.
  static bool leading() noexcept { return leading_; }

  /// Lanes in use: one per core, at most one per worker.
  std::size_t count() const noexcept { return count_; }
  std::chrono::duration<double> handoff_after() const noexcept { return handoff_after_; }

  /// Sets the lanes up for a run of serve_forever() (mutex held): at most one per worker,
  /// one of them open, the rest parked until the watcher opens them.
  void open(std::size_t workers, int listen_fd, std::chrono::duration<double> handoff_after) {
    handoff_after_ = handoff_after;
    count_ = std::min(max_lanes_, workers);
    for (std::size_t i = 0; i < count_; ++i)  // the counts go on
      lanes_[i].store(lanes_[i].load().in(i == 0 ? lane_phase::free : lane_phase::parked));
    open_lanes_.store(1);
    listen_fd_.store(listen_fd, std::memory_order_relaxed);
  }

  /// Waits (under `lock`, on the pool's mutex) for a free lane and takes it: this thread
  /// leads. False, without one, once the server stops accepting, or when give_up() says so
  /// after a wait that reached idle_until() (a worker beyond pool_size retiring). The
  /// deadline is asked for again after each wait: one that give_up() declined has passed,
  /// and waiting for it again would spin on the mutex (on musl the spin kept every other
  /// thread off it).
  template <class IdleUntil, class GiveUp>
  bool take(std::unique_lock<std::mutex>& lock, IdleUntil&& idle_until, GiveUp&& give_up) {
    for (;;) {
      if (!accepting_) {
        freed_.notify_all();  // serve_forever() may wait for a lane this thread just parked
        return false;
      }
      for (std::size_t i = 0; i < count_; ++i) {
        lane_token token = lanes_[i].load();
        if (token.phase() == lane_phase::free &&
            lanes_[i].replace(token, token.in(lane_phase::looping))) {
          lane_ = i;
          leading_ = true;
          return true;
        }
      }
      if (!wait_idle(freed_, lock, idle_until()) && give_up()) return false;
    }
  }

  /// Hands this thread's lane on, in the loop (nobody else changes a lane while it loops):
  /// frees it and wakes a worker to lead there.
  void hand_on() noexcept {
    leading_ = false;
    my_lane().store(my_lane().load().in(lane_phase::free));
    wake_next_leader();
  }

  /// Leaves the loop: hands the lane on if this thread still holds one.
  void leave() noexcept {
    if (leading_) hand_on();
  }

  /// A leader found no request waiting. One of several open lanes closes (parks) then, and
  /// its leader waits to lead again (take()): more leaders than requests only wake each
  /// other. One lane always stays open. Returns true when this thread's lane was parked.
  bool step_down() noexcept {
    waits_.fetch_add(1, std::memory_order_relaxed);
    std::size_t open = open_lanes_.load();
    do {
      if (open <= 1) return false;
    } while (!open_lanes_.compare_exchange_weak(open, open - 1));
    my_lane().store(my_lane().load().in(lane_phase::parked));
    leading_ = false;
    return true;
  }

  /// Serves a request by calling serve(). A leader serves it inline, with its lane in hand:
  /// the lane is handed on by wait_or_hand_on() when the request has to wait in the
  /// library's I/O, or taken over by the watcher after handoff_after; otherwise the leader
  /// keeps it and goes on accepting. handoff_after 0 hands the lane on first, always.
  template <class Serve>
  void serve_inline(Serve&& serve) {
    if (!leading_) {
      serve();
      return;
    }
    if (handoff_after_.count() <= 0) {
      hand_on();
      serve();
      return;
    }
    lane& mine = my_lane();
    const lane_token token = mine.load(std::memory_order_relaxed).next_request();
    inline_token_ = token;
    inline_until_ = clock::now() + std::chrono::duration_cast<clock::duration>(handoff_after_);
    mine.store(token);
    if (!accepting_.load()) {  // serve_forever() may be waiting for this lane to leave the loop
      { std::lock_guard<std::mutex> lock(mutex_); }
      freed_.notify_all();
    }
    arm_block_hook(&wait_or_hand_on, this);
    // A handler that ends this thread (a forced unwind) leaves the lane free, for another
    // worker to lead.
    struct unwound {
      leader_lanes* lanes;
      lane_token token;
      bool armed = true;
      ~unwound() {
        if (!armed) return;
        disarm_block_hook();
        if (!leading_) return;
        leading_ = false;
        if (lanes->my_lane().replace(token, token.in(lane_phase::free))) lanes->wake_next_leader();
      }
    } unwinding{this, token};
    if (watcher_idle_.load() && watcher_idle_.exchange(false)) watcher_wakeup_.notify();
    serve();
    unwinding.armed = false;
    disarm_block_hook();
    if (!leading_) return;  // handed on: the request had to wait
    if (!mine.replace(token, token.in(lane_phase::looping)))
      leading_ = false;  // taken over by the watcher
  }

  /// The watcher: the thread in serve_forever(), which takes a lane from a request that
  /// holds it too long, and opens parked lanes while the open ones cannot keep up.
  class watcher {
   public:
    watcher(leader_lanes& lanes, std::uint64_t accepted)
        : lanes_(lanes), seen_(lanes.count_), accepted_(accepted), waits_(lanes.waits_.load()) {
      look_again();
    }

    /// Requests are served again: watch from now.
    void look_again() {
      for (std::size_t i = 0; i < lanes_.count_; ++i) seen_[i] = lanes_.lanes_[i].load();
    }

    /// The watcher's turn, every handoff_after while requests are served (`accepted`: the
    /// server's count of accepted requests). Returns true when no lane has changed since the
    /// last turn: the watcher may sleep until a request is served inline again (wakeup()).
    bool turn(std::uint64_t accepted) {
      // Requests taken and never a wait for one: the open lanes cannot keep up.
      const std::uint64_t waits = lanes_.waits_.load();
      if (accepted != accepted_ && waits == waits_) lanes_.open_one();
      accepted_ = accepted;
      waits_ = waits;
      return lanes_.watch(seen_);
    }

   private:
    leader_lanes& lanes_;
    std::vector<lane_token> seen_;  // what the last turn found in each lane
    std::uint64_t accepted_;
    std::uint64_t waits_;
  };

  /// Readable once a request is served inline while the watcher sleeps.
  wakeup& watcher_wakeup() noexcept { return watcher_wakeup_; }

  /// Wakes every worker waiting for a lane (the server stopped accepting).
  void wake_all() noexcept { freed_.notify_all(); }

  /// Once the server stopped accepting (under `lock`, on the pool's mutex): waits until no
  /// leader is in the loop, and forgets the socket. A leader serving a request with its lane
  /// in hand is not in the loop, and loses the lane now. A worker that wants a lane after
  /// this finds the server not accepting and leaves it alone, so no thread touches the
  /// socket any more.
  void wait_until_left(std::unique_lock<std::mutex>& lock) {
    freed_.wait(lock, [this] {
      bool left = true;
      for (std::size_t i = 0; i < count_; ++i) {
        const lane_token token = lanes_[i].load();
        if (token.phase() == lane_phase::serving_inline)
          lanes_[i].replace(token, token.in(lane_phase::free));
        if (lanes_[i].load().phase() == lane_phase::looping) left = false;
      }
      return left;
    });
    listen_fd_.store(-1, std::memory_order_relaxed);
  }

  /// The leaders take turns for the loop's hooks when the server redefines any of them
  /// (`redefined`), as one loop would call them; the library's own are safe to call at once.
  void take_hooks_turn(bool redefined) {
    if (!redefined || count_ <= 1) return;
    hooks_.lock();
    in_hooks_ = true;
  }
  void end_hooks_turn() noexcept {
    if (!in_hooks_) return;
    in_hooks_ = false;
    hooks_.unlock();
  }

 private:
  lane& my_lane() noexcept { return lanes_[lane_]; }

  // A lane is free: wake a worker to take it (all of them when the server stops accepting,
  // and serve_forever() waits for every lane to be left).
  void wake_next_leader() noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    const bool stopping = !accepting_;
    lock.unlock();
    if (stopping)
      freed_.notify_all();
    else
      freed_.notify_one();
  }

  // Opens a parked lane, for a worker to lead there too.
  void open_one() noexcept {
    for (std::size_t i = 0; i < count_; ++i) {
      const lane_token token = lanes_[i].load();
      if (token.phase() == lane_phase::parked &&
          lanes_[i].replace(token, token.in(lane_phase::free))) {
        open_lanes_.fetch_add(1);
        wake_next_leader();
        return;
      }
    }
  }

  bool another_leader_accepting() const noexcept {
    for (std::size_t i = 0; i < count_; ++i)
      if (i != lane_ && lanes_[i].load().phase() == lane_phase::looping) return true;
    return false;
  }

  // Takes a lane from a request served inline since the watcher's last turn (`seen`), and
  // returns true when no lane has changed since then.
  bool watch(std::vector<lane_token>& seen) {
    bool quiet = true;
    for (std::size_t i = 0; i < count_; ++i) {
      const lane_token token = lanes_[i].load();
      if (token != seen[i]) {
        quiet = false;
      } else if (token.phase() == lane_phase::serving_inline) {
        quiet = false;
        if (lanes_[i].replace(token, token.in(lane_phase::free))) wake_next_leader();
      }
      seen[i] = lanes_[i].load();
    }
    if (!quiet) return false;
    watcher_idle_.store(true);  // then look again: a request served inline from now on sees it
    for (std::size_t i = 0; i < count_; ++i) {
      if (lanes_[i].load() != seen[i]) {
        watcher_idle_.store(false);
        return false;
      }
    }
    return true;
  }

  // The block hook of a leader serving inline, whose request is about to wait for `events`
  // on `fd`: it waits for them here, keeping the lane, until handoff_after has passed or (if
  // no other leader is accepting) a new request arrives, and then hands the lane on; when
  // the events come first it keeps the lane and the hook. A wait on several descriptors
  // hands the lane on at once.
  static void wait_or_hand_on(void* self, int fd, short events,
                              clock::time_point deadline) noexcept {
    auto& lanes = *static_cast<leader_lanes*>(self);
    if (fd >= 0 && lanes.my_lane().load() == inline_token_) {  // (not taken from it already)
      const auto until = std::min(deadline, inline_until_);
      // A request's bytes usually follow its connection within microseconds: wait for them
      // a moment before a new request can take the lane away.
      pollfd own{fd, events, 0};
      const auto grace = clock::now() + handoff_grace;
      int ready = poll_once(&own, 1, std::min(until, grace));
      if (ready < 0 || own.revents != 0) return;  // EINTR: the caller tries again
      pollfd fds[2] = {
          {fd, events, 0},
          {lanes.another_leader_accepting() ? -1 : lanes.listen_fd_.load(), POLLIN, 0}};
      ready = poll_once(fds, 2, until);
      if (ready < 0) return;
      if (fds[1].revents == 0 && (fds[0].revents != 0 || until < inline_until_)) return;
    }
    disarm_block_hook();
    leading_ = false;
    if (lanes.my_lane().replace(inline_token_, inline_token_.in(lane_phase::free)))
      lanes.wake_next_leader();
  }

  static constexpr std::chrono::microseconds handoff_grace{100};

  std::mutex& mutex_;                   // the pool's
  const std::atomic<bool>& accepting_;  // the pool's: serve_forever() is running
  std::condition_variable freed_;       // a lane was freed, or the server stopped accepting
  std::mutex hooks_;                    // held by the leader calling the hooks
  const std::size_t max_lanes_ = std::max(1u, std::thread::hardware_concurrency());
  std::unique_ptr<lane[]> lanes_{new lane[max_lanes_]{}};
  std::size_t count_ = 1;                   // lanes in use
  std::atomic<std::size_t> open_lanes_{1};  // lanes not parked
  std::atomic<int> listen_fd_{-1};          // the socket, while serve_forever() runs
  std::atomic<std::uint64_t> waits_{0};     // times a leader found no request waiting
  std::atomic<bool> watcher_idle_{false};   // the watcher sleeps until watcher_wakeup_
  wakeup watcher_wakeup_;                   // a request is served inline again
  std::chrono::duration<double> handoff_after_{0.002};
  inline static thread_local bool leading_ = false;              // this thread holds a lane
  inline static thread_local std::size_t lane_ = 0;              // which one
  inline static thread_local bool in_hooks_ = false;             // it holds hooks_
  inline static thread_local lane_token inline_token_{};         // its lane, serving inline
  inline static thread_local clock::time_point inline_until_{};  // and till when
};

}  // namespace detail
}  // namespace socketserver
