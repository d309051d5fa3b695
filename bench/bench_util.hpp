// SPDX-License-Identifier: MIT
// Small helpers shared by the benchmark programs: command-line options, loopback checks and
// a SIGTERM/SIGINT waiter thread (no process-wide signal handler doing unsafe work).
#pragma once

#include <arpa/inet.h>     // inet_pton
#include <netinet/in.h>    // in_addr, in6_addr
#include <pthread.h>       // pthread_sigmask, pthread_kill
#include <signal.h>        // sigset_t, sigwait, SIGTERM, SIGINT
#include <sys/resource.h>  // getrlimit, setrlimit, RLIMIT_NOFILE

#include <cstdio>      // std::fprintf, std::printf, std::fflush
#include <cstdlib>     // std::exit, std::strtod, std::strtoll
#include <functional>  // std::function
#include <map>         // std::map
#include <mutex>       // std::mutex, std::lock_guard
#include <set>         // std::set
#include <string>      // std::string
#include <thread>      // std::thread
#include <utility>     // std::move

namespace bench {

[[noreturn]] inline void die(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::exit(2);
}

/// "--key value" options. Every option takes a value; unknown keys are an error, so a typo
/// never silently benchmarks the wrong thing.
class Args {
 public:
  Args(int argc, char** argv, std::set<std::string> known, std::string usage)
      : usage_(std::move(usage)) {
    for (int i = 1; i < argc; ++i) {
      const std::string key = argv[i];
      if (key == "-h" || key == "--help") {
        std::printf("%s\n", usage_.c_str());
        std::exit(0);
      }
      if (key.rfind("--", 0) != 0 || known.count(key.substr(2)) == 0)
        die("unknown option " + key + "\n" + usage_);
      if (i + 1 >= argc) die("option " + key + " needs a value\n" + usage_);
      values_[key.substr(2)] = argv[++i];
    }
  }

  bool has(const std::string& key) const { return values_.count(key) != 0; }

  std::string str(const std::string& key, const std::string& fallback) const {
    auto it = values_.find(key);
    return it == values_.end() ? fallback : it->second;
  }

  long long integer(const std::string& key, long long fallback) const {
    auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    char* end = nullptr;
    const long long value = std::strtoll(it->second.c_str(), &end, 10);
    if (end == it->second.c_str() || *end != '\0') die("--" + key + " needs an integer\n" + usage_);
    return value;
  }

  double real(const std::string& key, double fallback) const {
    auto it = values_.find(key);
    if (it == values_.end()) return fallback;
    char* end = nullptr;
    const double value = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end != '\0') die("--" + key + " needs a number\n" + usage_);
    return value;
  }

  /// One of `choices`, or fallback when absent.
  std::string choice(const std::string& key, const std::set<std::string>& choices,
                     const std::string& fallback) const {
    const std::string value = str(key, fallback);
    if (choices.count(value) == 0) die("bad --" + key + " " + value + "\n" + usage_);
    return value;
  }

  const std::string& usage() const noexcept { return usage_; }

 private:
  std::string usage_;
  std::map<std::string, std::string> values_;
};

/// True for 127.0.0.0/8 and ::1: the benchmarks never send to any other address.
inline bool is_loopback(const std::string& host) {
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return ::inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

/// The signals that stop a benchmark server.
inline sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread (and child process)
/// created after it: call first thing in main(), so only sigwait() ever receives them.
inline void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

/// A thread that waits for SIGTERM or SIGINT with sigwait() and then runs a callback (e.g.
/// server.shutdown()). The destructor cancels it if no signal came. Needs
/// block_stop_signals() first.
class StopSignalWaiter {
 public:
  explicit StopSignalWaiter(std::function<void()> on_signal)
      : on_signal_(std::move(on_signal)), thread_([this] { wait(); }) {}
  StopSignalWaiter(const StopSignalWaiter&) = delete;
  StopSignalWaiter& operator=(const StopSignalWaiter&) = delete;
  ~StopSignalWaiter() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancelled_ = true;
      // Still in (or before) sigwait(): a signal aimed at the thread, blocked there, wakes it.
      if (!woken_) pthread_kill(thread_.native_handle(), SIGTERM);
    }
    thread_.join();
  }

 private:
  void wait() {
    const sigset_t set = stop_signals();
    int signal_number = 0;
    sigwait(&set, &signal_number);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      woken_ = true;
      if (cancelled_) return;
    }
    on_signal_();
  }

  std::function<void()> on_signal_;
  std::mutex mutex_;
  bool woken_ = false;
  bool cancelled_ = false;
  std::thread thread_;  // last: it starts running wait() once the members above exist
};

/// Raises the soft limit on open descriptors to the hard limit (the idle workloads hold
/// thousands of connections; the default soft limit is often 1,024). Returns the soft limit
/// now in force (0 if unknown); bench/run and loadgen read it from /proc/PID/limits.
inline unsigned long long raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  return static_cast<unsigned long long>(lim.rlim_cur);
}

/// Prints the readiness line bench/run waits for (a port number or a socket path).
inline void announce(const std::string& where) {
  std::printf("%s\n", where.c_str());
  std::fflush(stdout);
}

}  // namespace bench
