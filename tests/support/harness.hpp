// SPDX-License-Identifier: MIT
// Test support: temporary directories, clients, a serving thread, and the twenty server kinds.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <utility>

#include <socketserver.hpp>
#include <socketserver/detail/fd.hpp>  // open_pipe, set_fd_flags, accept_socket

// Defined under ThreadSanitizer, which cannot start threads in a forked child: the prefork
// cases whose workers start threads skip there.
#if defined(__SANITIZE_THREAD__)
#  define SOCKETSERVER_TEST_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define SOCKETSERVER_TEST_TSAN 1
#  endif
#endif

namespace test {

namespace ss = socketserver;

/// A private temporary directory, removed (with its files) when destroyed.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/socketserver-test-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr)
      throw std::system_error(errno, std::system_category(), "mkdtemp");
    path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (DIR* d = ::opendir(path_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") ::unlink((path_ + "/" + name).c_str());
      }
      ::closedir(d);
    }
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline bool file_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

/// A client socket connected (stream) or bound-and-connected (datagram) to `to`. A Unix
/// datagram client binds its own path in `dir` so the server can reply.
inline ss::socket connect_to(const ss::address& to, int type = SOCK_STREAM,
                             const TempDir* dir = nullptr) {
  ss::socket s(to.family(), type);
  s.settimeout(std::chrono::seconds(20));  // a test that hangs fails instead
  if (to.family() == AF_UNIX && type == SOCK_DGRAM) {
    static std::atomic<int> counter{0};
    std::string path = (dir ? dir->path() : std::string("/tmp")) + "/client-" +
                       std::to_string(::getpid()) + "-" + std::to_string(++counter);
    ss::address me(path);
    ::unlink(path.c_str());
    if (::bind(s.fileno(), me.data(), me.size()) < 0)
      throw std::system_error(errno, std::system_category(), "bind client " + path);
  }
  s.connect(to);  // (a signal does not fail it: a forking server's SIGCHLD under musl)
  return s;
}

/// Reads from a stream socket until the peer closes (or `limit` bytes).
inline std::string recv_all(const ss::socket_view& s, std::size_t limit = 1 << 20) {
  std::string out;
  char buf[4096];
  while (out.size() < limit) {
    std::size_t n = s.recv(buf, sizeof buf);
    if (n == 0) break;
    out.append(buf, n);
  }
  return out;
}

/// Runs server.serve_forever() in a thread; the destructor calls shutdown() and joins.
template <class Server>
class Serving {
 public:
  explicit Serving(Server& server,
                   std::chrono::duration<double> poll_interval = std::chrono::duration<double>(0.5))
      : server_(server), thread_([this, poll_interval] {
          try {
            server_.serve_forever(poll_interval);
          } catch (...) {
            error_ = std::current_exception();
          }
          ended_ = true;
        }) {}
  Serving(const Serving&) = delete;
  Serving& operator=(const Serving&) = delete;
  ~Serving() { stop(); }
  void stop() {
    if (thread_.joinable()) {
      // A loop that already ended (by an exception) needs no shutdown(), which would stay
      // pending and stop the server's next serve_forever() at once.
      if (!ended_) server_.shutdown();
      thread_.join();
    }
  }
  std::exception_ptr error() const { return error_; }

 private:
  Server& server_;
  std::exception_ptr error_;
  std::atomic<bool> ended_{false};
  std::thread thread_;
};

/// The directory that lists this process's descriptors: Linux's /proc/self/fd, else /dev/fd
/// (macOS, and the BSDs with fdescfs mounted). nullptr if neither opens.
inline DIR* open_fd_directory() {
  if (DIR* d = ::opendir("/proc/self/fd")) return d;
  return ::opendir("/dev/fd");
}

/// How many descriptors this process has open.
inline int open_fd_count() {
  int n = 0;
  if (DIR* d = open_fd_directory()) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n - 1;  // the directory stream itself
}

// ThreadSanitizer starts a helper thread with the program's first thread: start (and end)
// one before any test runs, so thread counts taken in tests are stable.
inline const bool sanitizer_threads_started = [] {
  std::thread([] {}).join();
  return true;
}();

/// Waits, polling every millisecond, until done() or `limit` has passed; returns done().
/// Only for a state that nothing signals: a detached thread leaving the kernel's task list
/// after it has told the server it is done.
template <class F>
bool eventually(F done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

/// Whether thread_count() can count: it reads Linux's /proc/self/task.
inline bool can_count_threads() {
  DIR* d = ::opendir("/proc/self/task");
  if (d != nullptr) ::closedir(d);
  return d != nullptr;
}

// Skips a test case that counts threads where the system does not let it (no /proc).
#define SOCKETSERVER_REQUIRE_THREAD_COUNT()                                               \
  do {                                                                                    \
    if (!test::can_count_threads())                                                       \
      SOCKETSERVER_SKIP("this system has no /proc/self/task: threads cannot be counted"); \
  } while (false)

/// How many threads this process has (see can_count_threads()).
inline int thread_count() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n;
}

/// True if this process has a child (zombie or alive) left. Reaps nothing.
inline bool has_children() {
  siginfo_t info{};
  return ::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid != 0;
}

// --- The twenty server kinds, for TEMPLATE_TEST_CASE -----------------------------------

enum class Concurrency { sync, threading, forking, pool, fiber };

template <template <class, class> class Server, bool Stream, int Family, Concurrency C>
struct Kind {
  template <class Handler, class Derived = void>
  using server = ss::server_type_t<Server, Handler, Derived>;
  static constexpr bool stream = Stream;
  static constexpr int family = Family;
  static constexpr int socket_type = Stream ? SOCK_STREAM : SOCK_DGRAM;
  static constexpr Concurrency concurrency = C;
  using request_type = std::conditional_t<Stream, ss::socket, ss::datagram>;

  /// An address to bind to: 127.0.0.1 port 0, or a socket path in dir.
  static ss::address bind_address(const TempDir& dir) {
    if (Family == AF_UNIX) return ss::address(dir.file("server.sock"));
    return ss::address("127.0.0.1", 0);
  }
};

using TCP = Kind<ss::tcp_server_t, true, AF_INET, Concurrency::sync>;
using UDP = Kind<ss::basic_udp_server, false, AF_INET, Concurrency::sync>;
using UnixStream = Kind<ss::basic_unix_stream_server, true, AF_UNIX, Concurrency::sync>;
using UnixDatagram = Kind<ss::basic_unix_datagram_server, false, AF_UNIX, Concurrency::sync>;
using ThreadingTCP = Kind<ss::threading_tcp_server_t, true, AF_INET, Concurrency::threading>;
using ThreadingUDP = Kind<ss::threading_udp_server_t, false, AF_INET, Concurrency::threading>;
using ThreadingUnixStream =
    Kind<ss::threading_unix_stream_server_t, true, AF_UNIX, Concurrency::threading>;
using ThreadingUnixDatagram =
    Kind<ss::threading_unix_datagram_server_t, false, AF_UNIX, Concurrency::threading>;
using ForkingTCP = Kind<ss::forking_tcp_server_t, true, AF_INET, Concurrency::forking>;
using ForkingUDP = Kind<ss::forking_udp_server_t, false, AF_INET, Concurrency::forking>;
using ForkingUnixStream =
    Kind<ss::forking_unix_stream_server_t, true, AF_UNIX, Concurrency::forking>;
using ForkingUnixDatagram =
    Kind<ss::forking_unix_datagram_server_t, false, AF_UNIX, Concurrency::forking>;
using PoolTCP = Kind<ss::thread_pool_tcp_server_t, true, AF_INET, Concurrency::pool>;
using PoolUDP = Kind<ss::thread_pool_udp_server_t, false, AF_INET, Concurrency::pool>;
using PoolUnixStream = Kind<ss::thread_pool_unix_stream_server_t, true, AF_UNIX, Concurrency::pool>;
using PoolUnixDatagram =
    Kind<ss::thread_pool_unix_datagram_server_t, false, AF_UNIX, Concurrency::pool>;
using FiberTCP = Kind<ss::fiber_tcp_server_t, true, AF_INET, Concurrency::fiber>;
using FiberUDP = Kind<ss::fiber_udp_server_t, false, AF_INET, Concurrency::fiber>;
using FiberUnixStream = Kind<ss::fiber_unix_stream_server_t, true, AF_UNIX, Concurrency::fiber>;
using FiberUnixDatagram =
    Kind<ss::fiber_unix_datagram_server_t, false, AF_UNIX, Concurrency::fiber>;

/// UnixStream with PreforkMixIn (the other stream kinds have it already).
using PreforkUnixStream = Kind<ss::unix_stream_server_t, true, AF_UNIX, Concurrency::sync>;

/// Sends `message` to the server the way its kind needs and returns the reply: a stream
/// client writes, shuts down its sending side and reads to end of stream; a datagram client
/// sends one datagram and receives one.
template <class K>
std::string round_trip(const ss::address& server, const std::string& message, const TempDir& dir) {
  ss::socket c = connect_to(server, K::socket_type, &dir);
  if constexpr (K::stream) {
    c.sendall(message);
    c.shutdown(SHUT_WR);
    return recv_all(c);
  } else {
    c.send(message);
    return c.recv(65536);
  }
}

// Runs serve_forever_workers() in a thread; shutdown() and join when destroyed.
template <class Server>
class Workers {
 public:
  Workers(Server& server, std::size_t n)
      : server_(server), thread_([this, n] {
          try {
            server_.serve_forever_workers(n, std::chrono::milliseconds(50));
          } catch (...) {
            error_ = std::current_exception();
          }
        }) {}
  ~Workers() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    server_.shutdown();
    thread_.join();
  }
  std::exception_ptr error() const { return error_; }

 private:
  Server& server_;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace test

#define SOCKETSERVER_ALL_KINDS                                                                    \
  test::TCP, test::UDP, test::UnixStream, test::UnixDatagram, test::ThreadingTCP,                 \
      test::ThreadingUDP, test::ThreadingUnixStream, test::ThreadingUnixDatagram,                 \
      test::ForkingTCP, test::ForkingUDP, test::ForkingUnixStream, test::ForkingUnixDatagram,     \
      test::PoolTCP, test::PoolUDP, test::PoolUnixStream, test::PoolUnixDatagram, test::FiberTCP, \
      test::FiberUDP, test::FiberUnixStream, test::FiberUnixDatagram

/// The stream kinds of every worker type, for the prefork tests (serve_forever_workers()).
#define SOCKETSERVER_PREFORK_STREAM_KINDS                                             \
  test::TCP, test::PreforkUnixStream, test::ThreadingTCP, test::ThreadingUnixStream,  \
      test::ForkingTCP, test::ForkingUnixStream, test::PoolTCP, test::PoolUnixStream, \
      test::FiberTCP, test::FiberUnixStream
