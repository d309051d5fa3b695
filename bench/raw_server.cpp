// SPDX-License-Identifier: MIT
// raw_server: hand-written baselines on plain POSIX sockets, speaking the benchmark's
// line-echo protocol. What a careful programmer writes without a library:
//
//   raw_server --type sync|threads|epoll|udp [--mode connrate|pingpong]
//              [--port N | --unix PATH] [--threads N]
//
//   sync     one blocking accept loop, one connection at a time (vs TCPServer)
//   threads  accept + a detached std::thread per connection (vs ThreadingTCPServer)
//   epoll    one non-blocking epoll loop per core (--threads, default: every core) sharing
//            the listening socket with EPOLLEXCLUSIVE
//   udp      a blocking recvfrom/sendto loop (vs UDPServer)
//   udp-threads  recvfrom, then a detached thread per datagram that replies (vs
//            ThreadingUDPServer: the floor of the thread-per-request model)
//   pool     an acceptor thread feeding a bounded queue (64) of connections to --threads
//            workers (default 8) (vs ThreadPoolTCPServer: the floor of that design)
//   pool-accept  --threads workers (default 8) that take turns accepting under a mutex
//            and serve what they accepted: a pool without the hand-off
//
// connrate: read one line, write it back, close. pingpong: echo lines until EOF. Prints
// the bound port or path when ready; exits on SIGTERM or SIGINT.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "bench_util.hpp"

namespace {

constexpr int backlog = 128;                // the same for every server in the benchmark
constexpr std::size_t buffer_size = 16384;  // per connection
constexpr std::size_t max_datagram = 8192;  // UDPServer's max_packet_size

[[noreturn]] void fail(const char* what) {
  throw std::system_error(errno, std::system_category(), what);
}

struct Listener {
  int fd = -1;
  std::string announced;  // the port or path
  std::string unix_path;  // to unlink on exit
};

Listener make_socket(const bench::Args& args, int type) {
  Listener l;
  if (args.has("unix")) {
    l.unix_path = args.str("unix", "");
    sockaddr_un un{};
    if (l.unix_path.size() >= sizeof un.sun_path) bench::die("--unix path too long");
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, l.unix_path.data(), l.unix_path.size());
    l.fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (l.fd < 0) fail("socket");
    if (::bind(l.fd, reinterpret_cast<sockaddr*>(&un), sizeof un) < 0) fail("bind");
    l.announced = l.unix_path;
  } else {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    in.sin_port = htons(static_cast<std::uint16_t>(args.integer("port", 0)));
    l.fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
    if (l.fd < 0) fail("socket");
    if (::bind(l.fd, reinterpret_cast<sockaddr*>(&in), sizeof in) < 0) fail("bind");
    socklen_t len = sizeof in;
    if (::getsockname(l.fd, reinterpret_cast<sockaddr*>(&in), &len) < 0) fail("getsockname");
    l.announced = std::to_string(ntohs(in.sin_port));
  }
  if (type == SOCK_STREAM && ::listen(l.fd, backlog) < 0) fail("listen");
  return l;
}

bool send_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t sent = ::send(fd, data, size, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += sent;
    size -= static_cast<std::size_t>(sent);
  }
  return true;
}

/// How many leading bytes of buf[0, have) to echo now: through the first newline (connrate)
/// or the last one (pingpong); everything when the buffer is full of one long line.
std::size_t echo_length(const char* buf, std::size_t have, bool one_line) {
  const void* nl = one_line ? std::memchr(buf, '\n', have) : ::memrchr(buf, '\n', have);
  if (nl != nullptr) return static_cast<std::size_t>(static_cast<const char*>(nl) - buf) + 1;
  return have == buffer_size ? have : 0;
}

/// Serves one connection on a blocking socket, then closes it.
void serve_blocking(int fd, bool one_line) {
  char buf[buffer_size];
  std::size_t have = 0;
  for (;;) {
    const ssize_t got = ::recv(fd, buf + have, buffer_size - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    have += static_cast<std::size_t>(got);
    const std::size_t n = echo_length(buf, have, one_line);
    if (n == 0) continue;
    if (!send_all(fd, buf, n) || one_line) break;
    std::memmove(buf, buf + n, have - n);
    have -= n;
  }
  ::shutdown(fd, SHUT_WR);
  ::close(fd);
}

int accept_retrying(int listen_fd, int flags) {
  for (;;) {
    const int fd = ::accept4(listen_fd, nullptr, nullptr, flags | SOCK_CLOEXEC);
    if (fd >= 0 || (errno != EINTR && errno != ECONNABORTED)) return fd;
  }
}

void run_sync(int listen_fd, bool one_line) {
  for (;;) {
    const int fd = accept_retrying(listen_fd, 0);
    if (fd < 0) fail("accept");
    serve_blocking(fd, one_line);
  }
}

void run_threads(int listen_fd, bool one_line) {
  for (;;) {
    const int fd = accept_retrying(listen_fd, 0);
    if (fd < 0) fail("accept");
    std::thread(serve_blocking, fd, one_line).detach();
  }
}

void run_udp(int fd) {
  char buf[max_datagram];
  for (;;) {
    sockaddr_storage from{};
    socklen_t len = sizeof from;
    const ssize_t got =
        ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (got < 0) {
      if (errno == EINTR || errno == ECONNREFUSED) continue;
      fail("recvfrom");
    }
    (void)::sendto(fd, buf, static_cast<std::size_t>(got), MSG_NOSIGNAL,
                   reinterpret_cast<sockaddr*>(&from), len);
  }
}

/// A datagram's reply, sent from a thread of its own.
struct DatagramJob {
  int fd;
  sockaddr_storage from;
  socklen_t from_len;
  std::string data;
};

void* reply_in_thread(void* arg) {
  auto* job = static_cast<DatagramJob*>(arg);
  (void)::sendto(job->fd, job->data.data(), job->data.size(), MSG_NOSIGNAL,
                 reinterpret_cast<sockaddr*>(&job->from), job->from_len);
  delete job;
  return nullptr;
}

void run_udp_threads(int fd) {
  char buf[max_datagram];
  pthread_attr_t detached;
  pthread_attr_init(&detached);
  pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
  for (;;) {
    auto* job = new DatagramJob{fd, {}, sizeof(sockaddr_storage), {}};
    const ssize_t got =
        ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&job->from), &job->from_len);
    if (got < 0) {
      delete job;
      if (errno == EINTR || errno == ECONNREFUSED) continue;
      fail("recvfrom");
    }
    job->data.assign(buf, static_cast<std::size_t>(got));
    pthread_t id;
    if (pthread_create(&id, &detached, reply_in_thread, job) != 0) delete job;
  }
}

/// pool: the acceptor blocks in accept() and queues each connection (waiting while 64 are
/// queued); the workers take them from the queue.
class QueuePool {
 public:
  QueuePool(int listen_fd, bool one_line, long workers)
      : listen_fd_(listen_fd), one_line_(one_line) {
    for (long i = 0; i < workers; ++i) std::thread([this] { work(); }).detach();
  }

  [[noreturn]] void accept_forever() {
    for (;;) {
      const int fd = accept_retrying(listen_fd_, 0);
      if (fd < 0) fail("accept");
      std::unique_lock<std::mutex> lock(mutex_);
      room_.wait(lock, [&] { return queue_.size() < capacity; });
      queue_.push_back(fd);
      lock.unlock();
      work_.notify_one();
    }
  }

 private:
  static constexpr std::size_t capacity = 64;

  [[noreturn]] void work() {
    for (;;) {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [&] { return !queue_.empty(); });
      const int fd = queue_.front();
      queue_.pop_front();
      lock.unlock();
      room_.notify_one();
      serve_blocking(fd, one_line_);
    }
  }

  int listen_fd_;
  bool one_line_;
  std::mutex mutex_;
  std::condition_variable work_, room_;
  std::deque<int> queue_;
};

/// pool-accept: each worker, when free, takes the accept mutex, accepts one connection
/// (trying first, then waiting in poll() on the non-blocking socket: only the mutex holder
/// waits there, so a connection wakes one thread), releases the mutex and serves it.
[[noreturn]] void run_pool_accept_worker(int listen_fd, bool one_line, std::mutex& accept_mutex) {
  for (;;) {
    int fd = -1;
    {
      std::lock_guard<std::mutex> lock(accept_mutex);
      while ((fd = accept_retrying(listen_fd, 0)) < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) fail("accept");
        pollfd p{listen_fd, POLLIN, 0};
        ::poll(&p, 1, -1);
      }
    }
    serve_blocking(fd, one_line);
  }
}

/// One connection of the epoll server: input in buf[0, have). While buf[out_begin, out_end)
/// is waiting to be sent, the connection watches EPOLLOUT instead of EPOLLIN (`writing`).
struct Connection {
  explicit Connection(int f) : fd(f) {}
  int fd;
  bool writing = false;
  std::size_t have = 0;
  std::size_t out_begin = 0;
  std::size_t out_end = 0;
  char buf[buffer_size];
};

/// One thread's event loop. Every loop watches the shared listening socket (EPOLLEXCLUSIVE
/// wakes one of them per connection) and serves the connections it accepted.
class EpollLoop {
 public:
  EpollLoop(int listen_fd, bool one_line) : listen_fd_(listen_fd), one_line_(one_line) {
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) fail("epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.ptr = nullptr;  // marks the listener
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) < 0) fail("epoll_ctl");
  }

  [[noreturn]] void run() {
    epoll_event events[128];
    for (;;) {
      const int n = ::epoll_wait(epoll_fd_, events, 128, -1);
      if (n < 0 && errno != EINTR) fail("epoll_wait");
      for (int i = 0; i < n; ++i) {
        auto* c = static_cast<Connection*>(events[i].data.ptr);
        if (c == nullptr)
          accept_some();
        else if (c->writing)
          flush(c);
        else
          read(c);
      }
    }
  }

 private:
  void accept_some() {
    for (int i = 0; i < 64; ++i) {  // then the other connections get a turn
      const int fd = accept_retrying(listen_fd_, SOCK_NONBLOCK);
      if (fd < 0) return;  // EAGAIN: none left, or another loop took it
      auto* c = new Connection(fd);
      if (!watch(c, EPOLL_CTL_ADD, EPOLLIN)) close(c);
    }
  }

  void read(Connection* c) {
    const ssize_t got = ::recv(c->fd, c->buf + c->have, buffer_size - c->have, 0);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (got <= 0) return close(c);
    c->have += static_cast<std::size_t>(got);
    const std::size_t n = echo_length(c->buf, c->have, one_line_);
    if (n == 0) return;
    c->out_begin = 0;
    c->out_end = n;
    flush(c);
  }

  void flush(Connection* c) {
    while (c->out_begin < c->out_end) {
      const ssize_t sent =
          ::send(c->fd, c->buf + c->out_begin, c->out_end - c->out_begin, MSG_NOSIGNAL);
      if (sent < 0 && errno == EINTR) continue;
      if (sent < 0 && errno == EAGAIN) {  // the socket buffer is full: wait for room
        if (!c->writing && !watch(c, EPOLL_CTL_MOD, EPOLLOUT)) return close(c);
        c->writing = true;
        return;
      }
      if (sent < 0) return close(c);
      c->out_begin += static_cast<std::size_t>(sent);
    }
    if (one_line_) return close(c);
    std::memmove(c->buf, c->buf + c->out_end, c->have - c->out_end);
    c->have -= c->out_end;
    c->out_begin = c->out_end = 0;
    if (c->writing) {
      c->writing = false;
      if (!watch(c, EPOLL_CTL_MOD, EPOLLIN)) close(c);
    }
  }

  bool watch(Connection* c, int op, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    return ::epoll_ctl(epoll_fd_, op, c->fd, &ev) == 0;
  }

  static void close(Connection* c) {
    ::shutdown(c->fd, SHUT_WR);
    ::close(c->fd);  // also takes it out of the epoll set
    delete c;
  }

  int listen_fd_;
  bool one_line_;
  int epoll_fd_ = -1;
};

/// Runs a server loop; an error ends the whole process (a baseline has no recovery).
template <class Loop>
std::thread start(Loop loop) {
  return std::thread([loop] {
    try {
      loop();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "raw_server: %s\n", e.what());
      std::_Exit(1);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  bench::block_stop_signals();  // before any thread exists: only sigwait() below sees them
  bench::raise_fd_limit();      // the idle workload holds 10,000 connections
  const bench::Args args(
      argc, argv, {"type", "mode", "port", "unix", "threads"},
      "usage: raw_server --type sync|threads|epoll|udp|udp-threads|pool|pool-accept "
      "[--mode connrate|pingpong] [--port N | --unix PATH] [--threads N]");
  const std::string type = args.choice(
      "type", {"sync", "threads", "epoll", "udp", "udp-threads", "pool", "pool-accept"}, "threads");
  const bool one_line = args.choice("mode", {"connrate", "pingpong"}, "connrate") == "connrate";
  const long cores = static_cast<long>(std::thread::hardware_concurrency());
  const long loops = args.integer("threads", cores > 0 ? cores : 1);
  const bool datagram = type == "udp" || type == "udp-threads";
  if (datagram && args.has("unix")) bench::die("raw_server: udp takes --port");

  Listener listener;
  std::vector<std::thread> workers;
  try {
    listener = make_socket(args, datagram ? SOCK_DGRAM : SOCK_STREAM);
    const int fd = listener.fd;
    if (type == "sync") {
      workers.push_back(start([=] { run_sync(fd, one_line); }));
    } else if (type == "threads") {
      workers.push_back(start([=] { run_threads(fd, one_line); }));
    } else if (type == "udp") {
      workers.push_back(start([=] { run_udp(fd); }));
    } else if (type == "udp-threads") {
      workers.push_back(start([=] { run_udp_threads(fd); }));
    } else if (type == "pool") {
      const long n = args.has("threads") ? loops : 8;
      workers.push_back(start([=] { QueuePool(fd, one_line, n).accept_forever(); }));
    } else if (type == "pool-accept") {
      if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) fail("fcntl");
      static std::mutex accept_mutex;
      const long n = args.has("threads") ? loops : 8;
      for (long i = 0; i < n; ++i)
        workers.push_back(start([=] { run_pool_accept_worker(fd, one_line, accept_mutex); }));
    } else {
      if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) fail("fcntl");
      for (long i = 0; i < loops; ++i)
        workers.push_back(start([=] { EpollLoop(fd, one_line).run(); }));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "raw_server: %s\n", e.what());
    return 1;
  }
  bench::announce(listener.announced);

  const sigset_t stop = bench::stop_signals();
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  if (!listener.unix_path.empty()) ::unlink(listener.unix_path.c_str());
  // The workers block in accept(), recv() or epoll_wait() forever: end the process without
  // joining them, as a baseline that is killed would.
  std::fflush(nullptr);
  std::_Exit(0);
}
