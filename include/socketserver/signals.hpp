// SPDX-License-Identifier: MIT
// shutdown_on_signals: stop a server on SIGTERM/SIGINT without a signal handler.
#pragma once

#include <signal.h>  // sigset_t, sigwait, pthread_sigmask, pthread_kill, SIGTERM, SIGINT

#include <atomic>            // std::atomic
#include <initializer_list>  // std::initializer_list
#include <system_error>      // std::system_error
#include <thread>            // std::thread

#include "any_server.hpp"

namespace socketserver {

/// Calls server.shutdown() when one of `signals` arrives (SIGTERM and SIGINT by default),
/// the way a service should stop: the signals are blocked in the calling thread, and one
/// thread waits for them with sigwait(). No signal handler is installed and no other
/// signal changes. Construct it in main() before starting other threads, so that they
/// inherit the mask and the signal can only reach the waiting thread.
///
///   socketserver::ThreadingTCPServer<H> server({"", 8080});
///   socketserver::shutdown_on_signals stop(server);
///   server.serve_forever();          // returns on SIGTERM or Ctrl-C
///   server.drain(std::chrono::seconds(10));
///
/// The destructor ends the waiting thread if no signal came and restores the mask.
class shutdown_on_signals {
 public:
  /// @throws std::system_error if the mask cannot be set or the thread started.
  explicit shutdown_on_signals(any_server& server,
                               std::initializer_list<int> signals = {SIGTERM, SIGINT}) {
    sigemptyset(&set_);
    for (int s : signals) sigaddset(&set_, s);
    wake_signal_ = signals.size() > 0 ? *signals.begin() : SIGTERM;
    if (const int rc = pthread_sigmask(SIG_BLOCK, &set_, &previous_))
      throw std::system_error(rc, std::system_category(), "pthread_sigmask");
    try {
      waiter_ = std::thread([this, &server] {
        int sig = 0;
        if (sigwait(&set_, &sig) != 0 || stopping_) return;
        received_ = sig;
        server.shutdown();
      });
    } catch (...) {
      pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
      throw;
    }
  }
  shutdown_on_signals(const shutdown_on_signals&) = delete;
  shutdown_on_signals& operator=(const shutdown_on_signals&) = delete;
  ~shutdown_on_signals() {
    if (received_ == 0) {
      stopping_ = true;
      pthread_kill(waiter_.native_handle(), wake_signal_);  // blocked there: sigwait takes it
    }
    waiter_.join();
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }

  /// The signal that arrived, 0 if none has.
  int signal() const noexcept { return received_; }

 private:
  sigset_t set_;
  sigset_t previous_;
  int wake_signal_ = SIGTERM;
  std::atomic<bool> stopping_{false};
  std::atomic<int> received_{0};
  std::thread waiter_;
};

}  // namespace socketserver
