// SPDX-License-Identifier: MIT
// Latches for tests that hold handlers in place: a gate handlers wait at until the test opens
// it, and a count the test can wait for. Every wait is bounded.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace test {

// Handlers call pass() and wait there until the test calls release(); the test can wait
// until n of them have arrived.
struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  int entered = 0;
  bool open = false;

  void pass() {
    std::unique_lock<std::mutex> lock(mutex);
    ++entered;
    changed.notify_all();
    changed.wait_for(lock, std::chrono::seconds(60), [&] { return open; });
  }
  bool wait_entered(int n) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(20), [&] { return entered >= n; });
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex);
    open = true;
    changed.notify_all();
  }
};

// A count that a test can wait for (process_request() calls, say).
class Counter {
 public:
  void add() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++count_;
    changed_.notify_all();
  }
  bool wait_for(int n) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(20), [&] { return count_ >= n; });
  }
  int value() {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  int count_ = 0;
};

}  // namespace test
