// SPDX-License-Identifier: MIT
// detail::fiber_loop on its own: tasks posted from other threads, fibers that wait for
// descriptors and deadlines (a timer heap), and poll() of several descriptors on a fiber.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace ss = socketserver;
namespace detail = socketserver::detail;
using namespace std::chrono_literals;

namespace {

// A loop on its own thread, stopped and joined at the end.
struct LoopThread {
  detail::fiber_loop loop{64 * 1024};
  std::thread thread{[this] { loop.run(); }};
  ~LoopThread() {
    loop.stop();
    thread.join();
  }
  // Runs fn on a fiber of the loop and waits (bounded) until it has returned.
  template <class F>
  bool on_fiber(F fn) {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    loop.post([&] {
      loop.spawn([&] {
        fn();
        std::lock_guard<std::mutex> lock(m);
        done = true;
        cv.notify_all();
      });
    });
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, 20s, [&] { return done; });
  }
};

struct Pipe {
  int read_end = -1, write_end = -1;
  Pipe() {
    int fds[2];
    REQUIRE(ss::detail::open_pipe(fds, false) == 0);
    read_end = fds[0];
    write_end = fds[1];
  }
  ~Pipe() {
    ::close(read_end);
    ::close(write_end);
  }
};

}  // namespace

TEST_CASE("a task posted from another thread always runs, however the post races the loop",
          "[fiber_loop]") {
  // Each poster waits for its task before posting the next, so a post whose wake-up the loop
  // lost (a loop that drained its wake-up after taking the queue, while the other poster's
  // post came in between) would wait for ever: no later post wakes the loop for it.
  struct Poster {  // declared before the loop, so it outlives any task still queued
    std::mutex m;
    std::condition_variable cv;
    int ran = 0;
    int completed = 0;
  } posters[2];
  LoopThread t;
  constexpr int kPosts = 20000;
  auto poster = [&](Poster& p) {
    for (p.completed = 0; p.completed < kPosts; ++p.completed) {
      t.loop.post([&p] {
        std::lock_guard<std::mutex> lock(p.m);
        ++p.ran;
        p.cv.notify_all();
      });
      std::unique_lock<std::mutex> lock(p.m);
      if (!p.cv.wait_for(lock, 5s, [&] { return p.ran == p.completed + 1; })) return;
    }
  };
  std::thread other([&] { poster(posters[1]); });
  poster(posters[0]);
  other.join();
  CHECK(posters[0].completed == kPosts);
  CHECK(posters[1].completed == kPosts);
}

TEST_CASE("fibers parked until deadlines wake in deadline order", "[fiber_loop]") {
  LoopThread t;
  std::vector<int> order;
  std::atomic<int> finished{0};
  const auto base = detail::clock::now() + 50ms;
  t.loop.post([&] {
    for (int k : {5, 1, 4, 2, 3}) {
      t.loop.spawn([&, k] {
        CHECK_FALSE(t.loop.park_until(base + k * 10ms));  // false: the deadline came
        order.push_back(k);                               // (all on the loop's thread)
        ++finished;
      });
    }
  });
  CHECK(test::eventually([&] { return finished == 5; }));
  CHECK(order == std::vector<int>{1, 2, 3, 4, 5});
}

TEST_CASE("a fiber waits for a descriptor without blocking the loop; a deadline ends the wait",
          "[fiber_loop]") {
  LoopThread t;
  Pipe p;
  std::atomic<bool> reader_waiting{false};
  std::atomic<int> result{-1};
  std::atomic<bool> other_ran{false};
  t.loop.post([&] {
    t.loop.spawn([&] {
      reader_waiting = true;
      pollfd fd{p.read_end, POLLIN, 0};
      result = t.loop.poll(&fd, 1, detail::clock::time_point::max());
    });
  });
  REQUIRE(test::eventually([&] { return reader_waiting.load(); }));
  // The loop still runs other fibers while that one waits.
  CHECK(t.on_fiber([&] { other_ran = true; }));
  CHECK(other_ran);
  CHECK(result == -1);
  REQUIRE(::write(p.write_end, "x", 1) == 1);
  CHECK(test::eventually([&] { return result == 1; }));
  // A wait with a deadline and nothing to read ends at the deadline.
  int timed = -1;
  CHECK(t.on_fiber([&] {
    Pipe empty;
    pollfd fd{empty.read_end, POLLIN, 0};
    timed = t.loop.poll(&fd, 1, detail::clock::now() + 20ms);
  }));
  CHECK(timed == 0);
}

TEST_CASE("poll on a fiber: several descriptors, one the loop already watches", "[fiber_loop]") {
  LoopThread t;
  Pipe a, b;
  int ready = -1;
  short revents_a = 0, revents_b = 0;
  std::atomic<bool> waiting{false};
  std::thread writer([&] {
    if (test::eventually([&] { return waiting.load(); })) (void)::write(b.write_end, "y", 1);
  });
  CHECK(t.on_fiber([&] {
    // Two fibers wait on a.read_end at once (a one-shot registration and a duplicate).
    t.loop.spawn([&] {
      pollfd fd{a.read_end, POLLIN, 0};
      t.loop.poll(&fd, 1, detail::clock::now() + 5s);
    });
    pollfd fds[2] = {{a.read_end, POLLIN, 0}, {b.read_end, POLLIN, 0}};
    waiting = true;
    ready = t.loop.poll(fds, 2, detail::clock::now() + 20s);
    revents_a = fds[0].revents;
    revents_b = fds[1].revents;
    (void)::write(a.write_end, "z", 1);  // ends the other fiber's wait
  }));
  writer.join();
  CHECK(ready == 1);
  CHECK(revents_a == 0);
  CHECK((revents_b & POLLIN) != 0);
}
