// SPDX-License-Identifier: MIT
// fiber_loop: one thread's event loop and the fibers it runs (FiberMixIn has one per loop
// thread). A fiber runs until the library's I/O would block; then it registers what it waits
// for (a descriptor, a deadline) and switches back to the loop, which runs the next ready
// fiber, or waits (fiber_poller: epoll, kqueue or poll) until one is. Fibers never move to
// another thread, so their thread-locals stay valid.
#pragma once

#include <fcntl.h>       // fcntl, F_GETFL, O_NONBLOCK
#include <poll.h>        // poll, pollfd, POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL
#include <sys/socket.h>  // getsockopt, SO_RCVTIMEO, SO_SNDTIMEO
#include <sys/time.h>    // timeval
#include <unistd.h>      // dup, close

#include <algorithm>           // std::max, std::min
#include <atomic>              // std::atomic
#include <chrono>              // std::chrono::duration_cast
#include <condition_variable>  // std::condition_variable (the stall watchdog)
#include <cstddef>             // std::size_t
#include <cstdint>             // std::uintptr_t, std::uint64_t
#include <cstdio>              // std::fprintf
#include <cstdlib>             // std::abort
#include <functional>          // std::function
#include <mutex>               // std::mutex, std::lock_guard
#include <optional>            // std::optional
#include <string>              // std::to_string
#include <system_error>        // std::system_error
#include <thread>              // std::thread (the stall watchdog)
#include <utility>             // std::move, std::swap
#include <vector>              // std::vector

#include "blocking.hpp"  // fiber_waiter, fiber_waiting
#include "errno.hpp"     // throw_errno, retry_on_eintr
#include "exceptions.hpp"
#include "fiber_context.hpp"
#include "fiber_poller.hpp"
#include "fiber_stack.hpp"
#include "poll.hpp"  // ms_until
#include "time.hpp"
#include "wakeup.hpp"

namespace socketserver {
namespace detail {

class fiber_loop;

/// A function running on its own stack, on one loop.
struct fiber {
  enum class woke { none, ready, deadline };
  fiber_loop* loop = nullptr;
  std::optional<fiber_context> context;
  fiber_stack stack;
  std::function<void()> body;
  woke reason = woke::none;
  bool queued = false;    // on the ready list
  bool finished = false;  // body() returned: the loop recycles it
  static constexpr std::size_t no_timer = static_cast<std::size_t>(-1);
  std::size_t timer_slot = no_timer;  // index in the loop's timer heap
  clock::time_point deadline{};
  // The spawner's (passed to the stall report), and the client it serves (named in a stack
  // overflow report). Atomic: a stall watchdog reads the running fiber's from its thread.
  std::atomic<void*> tag{nullptr};
  const sockaddr* peer = nullptr;
  socklen_t peer_length = 0;
  const void* hooks_of = nullptr;  // the server whose loop hooks this fiber runs now
  fiber* next = nullptr;           // ready list, free list
};

/// One thread's event loop (see the header comment). Every member is for the loop's own
/// thread, except post(), stop() and the constructor/destructor.
class fiber_loop final : public fiber_waiter {
 public:
  /// Called (on the loop's thread) when a fiber ran without suspending for longer than the
  /// stall threshold, with its tag (see fiber::tag).
  using stall_report = std::function<void(std::chrono::nanoseconds ran, void* tag)>;

  explicit fiber_loop(std::size_t stack_size) : stacks_(stack_size) {
    poller_.add_wakeup(posted_wakeup_.fileno(), posted_tag);
  }
  fiber_loop(const fiber_loop&) = delete;
  fiber_loop& operator=(const fiber_loop&) = delete;
  ~fiber_loop() {
    for (fiber* f = free_; f != nullptr;) delete std::exchange(f, f->next);
  }

  /// The loop running on this thread, or nullptr.
  static fiber_loop* current() noexcept { return current_; }
  /// The fiber running on this loop, or nullptr when the loop itself runs.
  fiber* running() const noexcept { return running_; }
  /// How many fibers are alive on this loop.
  std::size_t fibers() const noexcept { return live_; }

  /// Reports fibers that run longer than `threshold` without suspending (0: never).
  void set_stall_report(std::chrono::nanoseconds threshold, stall_report report) {
    stall_threshold_ = threshold;
    stall_report_ = std::move(report);
  }

  /// Runs fibers until stop() has been called and none is left. On the loop's thread.
  void run() {
    install_fiber_overflow_reporter();
    alternate_signal_stack signal_stack;
    current_ = this;
    struct leave {
      ~leave() { current_ = nullptr; }
    } leaving;
    for (;;) {
      run_posted();
      run_ready();
      if (stopping_.load(std::memory_order_acquire) && live_ == 0 && ready_head_ == nullptr &&
          !has_posted())
        return;
      wait_for_events();
    }
  }

  /// From any thread: run() returns once no fiber is left.
  void stop() {
    stopping_.store(true, std::memory_order_release);
    posted_wakeup_.notify();
  }

  /// From any thread: runs fn on the loop's thread, outside any fiber (it must not wait;
  /// it may spawn()).
  void post(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    const bool was_empty = posted_.empty();
    posted_.push_back(std::move(fn));
    // Under the lock: once it is released the loop may take the task, end and be destroyed.
    if (was_empty) posted_wakeup_.notify();
  }

  /// Starts a fiber running body. On the loop's thread.
  void spawn(std::function<void()> body) {
    fiber* f = free_ != nullptr ? std::exchange(free_, free_->next) : new fiber;
    try {
      f->stack = stacks_.take();
      f->context.emplace(f->stack, &fiber_main, f);
    } catch (...) {
      f->next = free_;
      free_ = f;
      throw;
    }
    f->loop = this;
    f->body = std::move(body);
    f->finished = false;
    f->tag.store(nullptr, std::memory_order_relaxed);
    f->peer = nullptr;
    f->hooks_of = nullptr;
    f->next = nullptr;
    ++live_;
    make_ready(f, fiber::woke::ready);
  }

  /// Suspends the running fiber until wake(), or `deadline`: false at the deadline.
  bool park_until(clock::time_point deadline) {
    fiber* f = running_;
    f->reason = fiber::woke::none;
    if (deadline != clock::time_point::max()) timer_add(f, deadline);
    suspend(f);
    if (f->timer_slot != fiber::no_timer) timer_remove(f);
    return f->reason != fiber::woke::deadline;
  }

  /// Lets the other ready fibers run first.
  void yield() {
    fiber* f = running_;
    make_ready(f, fiber::woke::ready);
    suspend(f);
  }

  /// Reports the running fiber if it has run past the stall threshold since it was resumed.
  /// The loop checks each fiber that switches back to it (on the loop's own stack, so a report
  /// that waits does not disturb the fiber's wait); a fiber checks itself before its tag's
  /// object goes away. A stretch is reported once, here or by observe_stall().
  void check_stall() noexcept { check_stall(running_); }
  void check_stall(fiber* f) noexcept {
    if (f == nullptr || stall_threshold_.count() <= 0 || !stall_report_) return;
    const auto ran = clock::now() - resumed_at_;
    if (ran <= stall_threshold_ || !claim_stall_report(stretch_.load(std::memory_order_relaxed)))
      return;
    try {
      stall_report_(std::chrono::duration_cast<std::chrono::nanoseconds>(ran),
                    f->tag.load(std::memory_order_relaxed));
    } catch (...) {
    }
  }

  /// From any thread (a watchdog): when the fiber running now has run past the stall
  /// threshold and its stretch is not reported yet, claims the report, calls
  /// `take(tag)` while the tag cannot change (its object stays alive meanwhile: see
  /// set_tag()), sets `ran`, and returns true. So a fiber that never switches back (an
  /// endless loop, a raw ::recv() with no data coming) is reported while it runs.
  template <class Take>
  bool observe_stall(clock::time_point now, std::chrono::nanoseconds& ran, Take&& take) {
    if (stall_threshold_.count() <= 0) return false;
    const auto since = running_since_.load(std::memory_order_acquire);
    if (since == 0 || now.time_since_epoch().count() - since <= stall_threshold_.count())
      return false;
    std::lock_guard<std::mutex> lock(tag_mutex_);
    const std::uint64_t stretch = stretch_.load(std::memory_order_acquire);
    fiber* f = watched_.load(std::memory_order_acquire);
    // Still the stretch that began at `since` (else it ended meanwhile: nothing to say).
    if (f == nullptr || running_since_.load(std::memory_order_acquire) != since ||
        stretch_.load(std::memory_order_acquire) != stretch)
      return false;
    void* tag = f->tag.load(std::memory_order_acquire);
    if (tag == nullptr || !claim_stall_report(stretch)) return false;
    take(tag);
    ran = std::chrono::nanoseconds(now.time_since_epoch().count() - since);
    return true;
  }

  /// Sets the running fiber's tag, and the client it serves (nullptr: none). Clearing it
  /// waits for an observe_stall() that holds it, so the tag's object may go away after.
  void set_tag(void* tag, const sockaddr* peer = nullptr, socklen_t peer_length = 0) noexcept {
    fiber* f = running_;
    if (f == nullptr) return;
    f->peer = peer;
    f->peer_length = peer_length;
    set_running_fiber(&f->stack, peer, peer_length);
    std::lock_guard<std::mutex> lock(tag_mutex_);
    f->tag.store(tag, std::memory_order_release);
  }

  /// Marks the running fiber as running `server`'s loop hooks (nullptr: no longer): a
  /// shutdown() from there would wait for the fiber itself (see hooks_owner()).
  void set_hooks_owner(const void* server) noexcept {
    if (running_ != nullptr) running_->hooks_of = server;
  }

  /// Makes a parked fiber of this loop ready (its park_until() returns true).
  void wake(fiber* f) { make_ready(f, fiber::woke::ready); }
  /// Makes a parked fiber of this loop ready as if its deadline had come (false).
  void interrupt(fiber* f) { make_ready(f, fiber::woke::deadline); }

  /// Registers a socket that every loop waits on (the server's): one loop is woken per
  /// event (EPOLLEXCLUSIVE). Level-triggered, so a wait after a failed accept (a connection
  /// reset while queued) still sees the others queued; unwatch() while not accepting for a
  /// while (it would wake the loop again and again) and before the socket closes.
  void watch_shared(int fd) {
    fd_state& s = state(fd);
    poller_.add_shared(fd, static_cast<std::uint64_t>(fd) << 1);
    s = fd_state{};
    s.registered = s.shared = true;
  }
  void unwatch(int fd) noexcept { forget(fd); }
  /// Moves this loop behind every other waiter in the shared socket's wait queue (epoll wakes
  /// the first one waiting: see exclusive_wait::rotate()), after it took work. Elsewhere
  /// every loop is woken anyway: nothing to do.
  void rotate_shared(int fd) {
#if defined(SOCKETSERVER_FIBER_EPOLL)
    unwatch(fd);
    watch_shared(fd);
#else
    (void)fd;
#endif
  }

  /// Marks `fd` as a connection this loop's fibers own until closing(fd): waits on it
  /// register it once, edge-triggered, instead of once per wait.
  /// `timeouts_possible`: the connection may carry a socket timeout or be non-blocking
  /// already (inherited from the listening socket), so waits ask the socket.
  void adopt(int fd, bool timeouts_possible = false) {
    fd_state& s = state(fd);
    if (s.registered) forget(fd);  // a number reused without closing() (a raw ::close())
    // A settimeout() made before the handler started (get_request(), verify_request(), on
    // this thread) is kept: at worst the waits ask the socket.
    const bool timeout_set = s.timeout_set || timeouts_possible;
    s = fd_state{};
    s.owned = true;
    s.timeout_set = timeout_set;
  }

  // --- fiber_waiter: the library's waits, on a fiber of this loop -------------------------

  bool wait(int fd, short events, clock::time_point deadline) override {
    bool woken = false;
    if (wait_registered(fd, events, deadline, woken)) return woken;
    pollfd p{fd, events, 0};
    return poll_any(&p, 1, deadline) > 0;
  }

  int poll(pollfd* fds, nfds_t count, clock::time_point deadline) override {
    return poll_any(fds, count, deadline);
  }

  clock::time_point call_deadline(int fd, short events) override {
    // A connection of this loop says whether settimeout() was called on it here (the common
    // case costs no system call); of any other descriptor, the socket is asked.
    if (fd >= 0 && static_cast<std::size_t>(fd) < fds_.size()) {
      const fd_state& s = fds_[static_cast<std::size_t>(fd)];
      if (s.owned && !s.timeout_set) return clock::time_point::max();
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK) != 0) return clock::time_point::min();
    timeval tv{};
    socklen_t len = sizeof tv;
    if (::getsockopt(fd, SOL_SOCKET, events == POLLIN ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) < 0 ||
        (tv.tv_sec == 0 && tv.tv_usec == 0))
      return clock::time_point::max();
    return clock::now() + std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
  }

  void timeout_changed(int fd) noexcept override {
    if (fd < 0) return;
    try {
      state(fd).timeout_set = true;
    } catch (...) {  // out of memory: the timeout is then not honoured on this fiber
    }
  }

  void closing(int fd) noexcept override { forget(fd); }

  const void* hooks_owner() const noexcept override {
    return running_ != nullptr ? running_->hooks_of : nullptr;
  }

 private:
  // What the loop knows of a descriptor (indexed by its number).
  struct fd_state {
    fiber* reader = nullptr;  // the fiber waiting to read, or nullptr
    fiber* writer = nullptr;
    bool owned = false;       // adopt(): a connection of this loop's fibers
    bool shared = false;      // watch_shared(): the server's socket
    bool registered = false;  // the poller has an interest in it (owned or shared)
    bool readable = false;    // an edge came while nobody waited
    bool writable = false;
    bool timeout_set = false;  // settimeout() was called: call_deadline() asks the socket
  };

  // One descriptor of a poll() on a fiber: registered for one shot, with a duplicate when
  // the descriptor is in the set already (the server's socket, another fiber's wait).
  struct one_wait {
    fiber_loop* loop = nullptr;
    fiber* waiter = nullptr;
    int fd = -1;  // the descriptor waited on: the caller's or a dup
    short events = 0;
    bool duplicate = false;
    bool unwatchable = false;  // the poller refuses it (a regular file): poll() says ready
  };

  static constexpr std::uint64_t posted_tag = 1;  // odd: not a descriptor, not a one_wait*

  fd_state& state(int fd) {
    const auto i = static_cast<std::size_t>(fd);
    if (i >= fds_.size()) fds_.resize(std::max<std::size_t>(i + 1, fds_.size() * 2));
    return fds_[i];
  }

  void register_owned(int fd, fd_state& s) {
    poller_.add_owned(fd, static_cast<std::uint64_t>(fd) << 1);
    s.registered = true;
  }

  void forget(int fd) noexcept {
    if (fd < 0 || static_cast<std::size_t>(fd) >= fds_.size()) return;
    fd_state& s = fds_[static_cast<std::size_t>(fd)];
    if (s.registered) poller_.remove(fd);
    // A fiber still parked on it is woken, as a closed descriptor's poll() would say.
    if (s.reader != nullptr) wake(s.reader);
    if (s.writer != nullptr && s.writer != s.reader) wake(s.writer);
    s = fd_state{};
  }

  void register_one(one_wait& w, const pollfd& p) {
    w.loop = this;
    w.waiter = running_;
    if (p.fd < 0) return;
    w.events = static_cast<short>(p.events & (POLLIN | POLLOUT));
    const auto tag = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&w)) | 1u;
    // A descriptor the loop holds an interest in already (or, with kqueue, any: a second
    // interest would replace the first) is waited on through a duplicate.
    const bool known = static_cast<std::size_t>(p.fd) < fds_.size() &&
                       (fds_[static_cast<std::size_t>(p.fd)].registered ||
                        fds_[static_cast<std::size_t>(p.fd)].owned);
    bool duplicate = fiber_poller::once_needs_own_descriptor || known;
    for (int attempt = 0; attempt < 2; ++attempt, duplicate = true) {
      w.fd = p.fd;
      if (duplicate) {
        w.fd = ::fcntl(p.fd, F_DUPFD_CLOEXEC, 0);
        if (w.fd < 0) throw_errno("dup (to wait on a fiber)");
        w.duplicate = true;
      }
      const fiber_poller::added result = poller_.add_once(w.fd, w.events, tag);
      if (result == fiber_poller::added::yes) return;
      unregister_one(w, false);
      if (result == fiber_poller::added::unwatchable) {  // always ready, as poll() says
        w.unwatchable = true;
        return;
      }
    }
  }

  void unregister_one(one_wait& w, bool registered = true) noexcept {
    if (w.fd < 0) return;
    if (registered)
      poller_.remove_once(w.fd, w.events,
                          static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(&w)) | 1u);
    if (w.duplicate) ::close(w.fd);
    w.fd = -1;
    w.duplicate = false;
  }

  // A wait through the edge-triggered registration of a connection of this loop (or the
  // shared socket, for reading), when nobody else waits for the same on it: no system call
  // but the wait itself. False when that does not apply (then `woken` is untouched).
  bool wait_registered(int fd, short events, clock::time_point deadline, bool& woken) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= fds_.size() ||
        (events != POLLIN && events != POLLOUT))
      return false;
    fd_state& s = fds_[static_cast<std::size_t>(fd)];
    if (!s.owned && !(s.shared && events == POLLIN)) return false;
    fiber*& waiter = events == POLLIN ? s.reader : s.writer;
    if (waiter != nullptr) return false;
    bool& ready = events == POLLIN ? s.readable : s.writable;
    if (ready) {  // an edge came while nobody waited: try again
      ready = false;
      woken = true;
      return true;
    }
    if (!s.registered) register_owned(fd, s);
    waiter = running_;
    woken = park_until(deadline);
    // fds_ may have grown while the fiber was parked: look the slot up again.
    fd_state& after = fds_[static_cast<std::size_t>(fd)];
    fiber*& slot = events == POLLIN ? after.reader : after.writer;
    if (slot == running_) slot = nullptr;
    return true;
  }

  // poll() on a fiber: until a descriptor is ready or the deadline has passed (a wake-up
  // that finds nothing ready waits again; 0 means the deadline, as poll() says).
  int poll_any(pollfd* fds, nfds_t count, clock::time_point deadline) {
    for (nfds_t i = 0; i < count; ++i) fds[i].revents = 0;
    pollfd* only = nullptr;  // the one descriptor waited for, if only one (the others -1)
    nfds_t watched = 0;
    for (nfds_t i = 0; i < count; ++i)
      if (fds[i].fd >= 0) {
        only = &fds[i];
        ++watched;
      }
    for (;;) {
      const int ready = ::poll(fds, count, 0);
      if (ready != 0 || deadline <= clock::now()) return ready;
      bool woken = false;
      if (watched == 1 && wait_registered(only->fd, only->events, deadline, woken)) continue;
      std::vector<one_wait> waits(count);
      struct unregister {
        fiber_loop& loop;
        std::vector<one_wait>& waits;
        ~unregister() {
          for (one_wait& w : waits) loop.unregister_one(w);
        }
      } unregistering{*this, waits};
      bool registered = true;
      try {
        for (nfds_t i = 0; i < count; ++i) register_one(waits[i], fds[i]);
      } catch (const std::system_error&) {  // out of descriptors for a duplicate, say
        registered = false;
      }
      for (const one_wait& w : waits) registered = registered && !w.unwatchable;
      if (registered)
        park_until(deadline);
      else  // look again in a millisecond rather than block the loop's thread
        park_until(std::min(deadline, clock::now() + std::chrono::milliseconds(1)));
    }
  }

  // True for the first of the loop and a watchdog to claim a stretch's report.
  bool claim_stall_report(std::uint64_t stretch) noexcept {
    return reported_stretch_.exchange(stretch, std::memory_order_acq_rel) != stretch;
  }

  static void fiber_main(void* arg) {
    fiber* f = static_cast<fiber*>(arg);
    try {
      f->body();
    } catch (forced_unwind&) {
      std::fprintf(stderr,
                   "socketserver: a fiber's thread was ended (pthread_exit() or cancellation in "
                   "a handler): not supported on fibers\n");
      std::abort();
    } catch (...) {
      std::fprintf(stderr, "socketserver: fiber ended with %s\n",
                   describe_current_exception().c_str());
    }
    f->body = nullptr;
    f->finished = true;
    fiber_context::exit_to(*f->context, f->loop->loop_context_);
  }

  void suspend(fiber* f) noexcept { fiber_context::switch_to(*f->context, loop_context_); }

  void make_ready(fiber* f, fiber::woke reason) {
    if (f->queued) return;
    f->queued = true;
    f->reason = reason;
    f->next = nullptr;
    if (ready_tail_ != nullptr)
      ready_tail_->next = f;
    else
      ready_head_ = f;
    ready_tail_ = f;
  }

  // Runs the fibers ready now (not those they make ready: events are looked at in between).
  void run_ready() {
    fiber* f = std::exchange(ready_head_, nullptr);
    ready_tail_ = nullptr;
    while (f != nullptr) {
      fiber* next = f->next;
      f->queued = false;
      resume(f);
      f = next;
    }
  }

  void resume(fiber* f) {
    running_ = f;
    fiber_waiting = this;
    set_running_fiber(&f->stack, f->peer, f->peer_length);
    const bool watching = stall_threshold_.count() > 0;
    if (watching) {  // (the loop's thread is the only writer)
      resumed_at_ = clock::now();
      stretch_.store(stretch_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      watched_.store(f, std::memory_order_relaxed);
      running_since_.store(resumed_at_.time_since_epoch().count(), std::memory_order_release);
    }
    fiber_context::switch_to(loop_context_, *f->context);
    if (watching) running_since_.store(0, std::memory_order_release);
    fiber_waiting = nullptr;
    running_ = nullptr;
    set_running_fiber(nullptr, nullptr, 0);
    if (f->finished)
      recycle(f);
    else
      check_stall(f);
  }

  void recycle(fiber* f) noexcept {
    --live_;
    f->context.reset();
    stacks_.give_back(std::move(f->stack));
    f->next = free_;
    free_ = f;
  }

  bool has_posted() {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    return !posted_.empty();
  }

  void run_posted() {
    if (!posted_signalled_) return;  // (no system call per turn of the loop)
    posted_signalled_ = false;
    // The wake-up is drained before the queue is taken, not after: a post() in between would
    // otherwise lose its wake-up and wait in the queue while the loop sleeps.
    posted_wakeup_.drain();
    {
      std::lock_guard<std::mutex> lock(posted_mutex_);
      if (posted_.empty()) return;
      running_posted_.swap(posted_);
    }
    for (auto& fn : running_posted_) {
      try {
        fn();
      } catch (...) {
        std::fprintf(stderr, "socketserver: fiber loop task failed: %s\n",
                     describe_current_exception().c_str());
      }
    }
    running_posted_.clear();
  }

  // Waits for descriptors and the next deadline; makes the fibers they concern ready.
  void wait_for_events() {
    const clock::time_point next_deadline = ready_head_ != nullptr ? clock::time_point::min()
                                            : timers_.empty()      ? clock::time_point::max()
                                                                   : timers_.front()->deadline;
    const int timeout_ms = next_deadline == clock::time_point::min() ? 0 : ms_until(next_deadline);
    poller_.wait(
        timeout_ms,
        [this](std::uint64_t tag) -> short {  // (poll() only) who waits on a descriptor now
          const auto fd = static_cast<std::size_t>(tag >> 1);
          if (fd >= fds_.size()) return 0;
          return static_cast<short>((fds_[fd].reader != nullptr ? POLLIN : 0) |
                                    (fds_[fd].writer != nullptr ? POLLOUT : 0));
        },
        [this](std::uint64_t tag, bool readable, bool writable) {
          dispatch(tag, readable, writable);
        });
    const auto now = clock::now();
    while (!timers_.empty() && timers_.front()->deadline <= now) {
      fiber* f = timers_.front();
      timer_remove(f);
      make_ready(f, fiber::woke::deadline);
    }
  }

  void dispatch(std::uint64_t tag, bool readable, bool writable) {
    if (tag == posted_tag) {  // run_posted() takes them
      posted_signalled_ = true;
      return;
    }
    if ((tag & 1u) != 0) {  // a one-shot wait of poll()
      auto* w = reinterpret_cast<one_wait*>(static_cast<std::uintptr_t>(tag & ~std::uint64_t{1}));
      if (w->waiter != nullptr) make_ready(w->waiter, fiber::woke::ready);
      return;
    }
    const auto fd = static_cast<std::size_t>(tag >> 1);
    if (fd >= fds_.size()) return;
    fd_state& s = fds_[fd];
    if (readable) {
      if (s.reader != nullptr)
        make_ready(s.reader, fiber::woke::ready);
      else
        s.readable = true;
    }
    if (writable) {
      if (s.writer != nullptr)
        make_ready(s.writer, fiber::woke::ready);
      else
        s.writable = true;
    }
  }

  // --- the timer heap: a min-heap on deadline; each fiber knows its slot ------------------

  void timer_add(fiber* f, clock::time_point deadline) {
    f->deadline = deadline;
    f->timer_slot = timers_.size();
    timers_.push_back(f);
    sift_up(f->timer_slot);
  }
  void timer_remove(fiber* f) noexcept {
    const std::size_t slot = f->timer_slot;
    f->timer_slot = fiber::no_timer;
    fiber* last = timers_.back();
    timers_.pop_back();
    if (last == f) return;
    timers_[slot] = last;
    last->timer_slot = slot;
    sift_down(slot);
    sift_up(last->timer_slot);
  }
  void sift_up(std::size_t i) noexcept {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!(timers_[i]->deadline < timers_[parent]->deadline)) break;
      swap_slots(i, parent);
      i = parent;
    }
  }
  void sift_down(std::size_t i) noexcept {
    for (;;) {
      std::size_t least = i;
      for (std::size_t child = 2 * i + 1; child <= 2 * i + 2 && child < timers_.size(); ++child)
        if (timers_[child]->deadline < timers_[least]->deadline) least = child;
      if (least == i) return;
      swap_slots(i, least);
      i = least;
    }
  }
  void swap_slots(std::size_t a, std::size_t b) noexcept {
    std::swap(timers_[a], timers_[b]);
    timers_[a]->timer_slot = a;
    timers_[b]->timer_slot = b;
  }

  inline static thread_local fiber_loop* current_ = nullptr;

  fiber_stack_pool stacks_;
  fiber_context loop_context_;
  fiber* running_ = nullptr;
  fiber* ready_head_ = nullptr;
  fiber* ready_tail_ = nullptr;
  fiber* free_ = nullptr;
  std::size_t live_ = 0;
  std::vector<fiber*> timers_;
  std::vector<fd_state> fds_;
  std::chrono::nanoseconds stall_threshold_{0};
  stall_report stall_report_;
  // Stall watching (when a threshold is set): the running fiber's stretch, for
  // observe_stall() on other threads. running_since_ is 0 while the loop itself runs.
  clock::time_point resumed_at_{};
  std::atomic<std::uint64_t> stretch_{0};
  std::atomic<std::uint64_t> reported_stretch_{0};
  std::atomic<fiber*> watched_{nullptr};
  std::atomic<clock::rep> running_since_{0};
  std::mutex tag_mutex_;
  std::atomic<bool> stopping_{false};
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> running_posted_;
  wakeup posted_wakeup_;
  bool posted_signalled_ = false;  // the poller saw posted_wakeup_ readable
  fiber_poller poller_;
};

/// A thread that looks at some loops every threshold / 2 for a fiber that has been running
/// past the stall threshold (fiber_loop::observe_stall()), and reports it while it lasts:
/// such a fiber may never switch back for its loop to see it (an endless loop, a raw
/// ::recv() that nothing answers). `take` copies a Label from the fiber's tag (under the
/// loop's tag lock); `report` gets it outside the lock.
template <class Label>
class fiber_stall_watchdog {
 public:
  using take_label = std::function<Label(const void* tag)>;
  using stall_report = std::function<void(const Label&, std::chrono::nanoseconds ran)>;

  fiber_stall_watchdog(std::vector<fiber_loop*> loops, std::chrono::nanoseconds threshold,
                       take_label take, stall_report report)
      : loops_(std::move(loops)),
        period_(std::max<std::chrono::nanoseconds>(threshold / 2, std::chrono::milliseconds(1))),
        take_(std::move(take)),
        report_(std::move(report)),
        thread_([this] { run(); }) {}
  fiber_stall_watchdog(const fiber_stall_watchdog&) = delete;
  fiber_stall_watchdog& operator=(const fiber_stall_watchdog&) = delete;
  ~fiber_stall_watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    stopped_.notify_all();
    thread_.join();
  }

 private:
  void run() noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopped_.wait_for(lock, period_, [&] { return stopping_; })) {
      lock.unlock();
      for (fiber_loop* loop : loops_) look_at(*loop);
      lock.lock();
    }
  }

  void look_at(fiber_loop& loop) noexcept {
    try {
      std::optional<Label> label;
      std::chrono::nanoseconds ran{};
      if (loop.observe_stall(clock::now(), ran, [&](const void* tag) { label = take_(tag); }))
        report_(*label, ran);
    } catch (...) {  // no memory for the label: this look says nothing
    }
  }

  std::vector<fiber_loop*> loops_;
  std::chrono::nanoseconds period_;
  take_label take_;
  stall_report report_;
  std::mutex mutex_;
  std::condition_variable stopped_;
  bool stopping_ = false;
  std::thread thread_;  // last: it starts once the rest is built
};

}  // namespace detail
}  // namespace socketserver
