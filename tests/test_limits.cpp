// SPDX-License-Identifier: MIT
// Reliability at the system's limits (issue 3): a thousand concurrent connections, running
// out of descriptors (EMFILE), a storm of signals, and a stream server that was never
// activated. Every case checks that the server goes on serving correct replies afterwards
// and that nothing leaked: descriptors, threads and child processes are back to what they
// were before the server existed.
//
// Running out of descriptors is done in a forked child that lowers its own RLIMIT_NOFILE,
// so the test process is unaffected; the child reports through a pipe and leaves with
// _exit() (no Catch2 assertion runs in it). Waits are bounded; the one measurement over wall
// time (how often accept() failed within 300 ms) is the behaviour under test.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/leaks.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;
using test::Concurrency;

constexpr std::chrono::seconds kWait{20};

using test::eventually;

using test::Baseline;

using test::check_nothing_left;

struct LineEcho : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};

#define STREAM_KINDS                                                                            \
  test::TCP, test::UnixStream, test::ThreadingTCP, test::ThreadingUnixStream, test::ForkingTCP, \
      test::ForkingUnixStream, test::FiberTCP, test::FiberUnixStream

// --- A thousand concurrent connections ---------------------------------------------------------

// Raises RLIMIT_NOFILE's soft limit to the hard limit until destroyed.
class RaisedFileLimit {
 public:
  RaisedFileLimit() {
    ::getrlimit(RLIMIT_NOFILE, &saved_);
    rlimit raised = saved_;
    raised.rlim_cur = saved_.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &raised);
  }
  RaisedFileLimit(const RaisedFileLimit&) = delete;
  RaisedFileLimit& operator=(const RaisedFileLimit&) = delete;
  ~RaisedFileLimit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }
  rlim_t soft() const {
    rlimit now;
    ::getrlimit(RLIMIT_NOFILE, &now);
    return now.rlim_cur;
  }

 private:
  rlimit saved_{};
};

template <class K>
struct CrowdHandler;

template <class K>
struct CrowdServer : K::template server<CrowdHandler<K>, CrowdServer<K>> {
  using base = typename K::template server<CrowdHandler<K>, CrowdServer<K>>;
  using base::base;
  static constexpr int request_queue_size = 1024;  // a server expecting crowds says so
  std::mutex mutex;
  std::condition_variable cv;
  int started = 0;
  std::atomic<int> errors{0};
  void handle_error(typename K::request_type&, const ss::address&) { ++errors; }
};

template <class K>
struct CrowdHandler : ss::StreamRequestHandler<CrowdServer<K>> {
  void handle() {
    {
      std::lock_guard<std::mutex> lock(this->server.mutex);
      ++this->server.started;
    }
    this->server.cv.notify_all();
    this->wfile.write("re: " + this->rfile.readline());
  }
};

// --- Out of descriptors --------------------------------------------------------------------

template <class K>
struct EmfileServer : K::template server<LineEcho, EmfileServer<K>> {
  using base = typename K::template server<LineEcho, EmfileServer<K>>;
  using base::base;
  std::mutex mutex;
  std::condition_variable cv;
  bool looping = false;
  int failures = 0;
  int last_errno = 0;
  void service_actions() {
    base::service_actions();
    {
      std::lock_guard<std::mutex> lock(mutex);
      looping = true;
    }
    cv.notify_all();
  }
  void handle_get_request_error(const std::system_error& error) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      ++failures;
      last_errno = error.code().value();
    }
    cv.notify_all();
  }
};

// UBSan's -fsanitize=vptr checks a call on a polymorphic object the first time it meets
// the pair (dynamic type, static type), with the help of a pipe; once the descriptors are
// out it cannot make one and reports a false "invalid vptr". The accept error path makes
// these calls: meet them here first, while descriptors are plentiful.
void prime_ubsan_type_cache() {
  try {
    throw std::system_error(std::error_code(EMFILE, std::system_category()), "accept");
  } catch (const std::system_error& e) {
    const std::error_code ec = e.code();  // a member call through a reference
    (void)ec.message();                   // error_category's virtual message()
    (void)(ec.category() == std::system_category());
    (void)ec.default_error_condition();
    (void)e.what();
  }
}

std::string strip(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Runs in the forked child: exhausts the descriptors while a client waits to be accepted,
// counts how often get_request() failed over 300 ms, frees them, and checks the waiting
// client and a new one are served. Returns "key=value" pairs.
template <class K>
std::string emfile_scenario(const test::TempDir& dir) {
  std::ostringstream report;
  const int fds_before = test::open_fd_count();
  {
    EmfileServer<K> server(K::bind_address(dir));
    std::string serve_error;
    std::thread serving([&] {
      try {
        server.serve_forever(std::chrono::milliseconds(10));
      } catch (const std::exception& e) {
        serve_error = e.what();
      }
    });
    prime_ubsan_type_cache();
    {
      std::unique_lock<std::mutex> lock(server.mutex);  // the loop runs (its thread started)
      server.cv.wait_for(lock, kWait, [&] { return server.looping; });
    }
    // Use up every descriptor under a lowered soft limit.
    rlimit saved;
    ::getrlimit(RLIMIT_NOFILE, &saved);
    rlimit low = saved;
    low.rlim_cur = std::min<rlim_t>(saved.rlim_cur, 256);
    ::setrlimit(RLIMIT_NOFILE, &low);
    std::vector<int> fillers;
    for (int i = 0; i < 4096; ++i) {
      const int fd = ::fcntl(server.fileno(), F_DUPFD_CLOEXEC, 0);
      if (fd < 0) break;
      fillers.push_back(fd);
    }
    const bool exhausted = errno == EMFILE;
    // One slot for the client, which then waits in the accept queue: every accept() fails.
    ::close(fillers.back());
    fillers.pop_back();
    ss::socket client = test::connect_to(server.server_address, SOCK_STREAM, &dir);
    client.sendall("ping\n");
    const auto start = std::chrono::steady_clock::now();
    int window_failures;
    {
      std::unique_lock<std::mutex> lock(server.mutex);
      // 300 ms, or less if it spins: a loop without back-off fails thousands of times.
      server.cv.wait_for(lock, 300ms, [&] { return server.failures >= 50; });
      window_failures = server.failures;
    }
    const auto window = std::chrono::steady_clock::now() - start;
    for (int fd : fillers) ::close(fd);
    ::setrlimit(RLIMIT_NOFILE, &saved);
    // The waiting client is accepted once the pause is over.
    std::string first, second;
    try {
      first = test::recv_all(client);
      second = test::round_trip<K>(server.server_address, "pong\n", dir);
    } catch (const std::exception& e) {
      first = std::string("exception: ") + e.what();
    }
    int last_errno;
    {
      std::lock_guard<std::mutex> lock(server.mutex);
      last_errno = server.last_errno;
    }
    server.shutdown();
    serving.join();
    client.close();
    server.server_close();
    report << "exhausted=" << exhausted << " window_failures=" << window_failures
           << " window_ms=" << std::chrono::duration_cast<std::chrono::milliseconds>(window).count()
           << " errno=" << last_errno << " first=" << strip(first) << " second=" << strip(second)
           << " serve_error=" << (serve_error.empty() ? "none" : "\"" + serve_error + "\"");
  }
  report << " leaked_fds=" << (test::open_fd_count() - fds_before)
         << " children=" << test::has_children();
  return report.str();
}

std::map<std::string, std::string> parse_report(const std::string& text) {
  std::map<std::string, std::string> fields;
  std::istringstream in(text);
  for (std::string item; in >> item;) {
    const auto eq = item.find('=');
    if (eq != std::string::npos) fields[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return fields;
}

// Forks, runs body() in the child and returns what it reported; the child never returns
// into the test framework. Bounded: a child that does not report within kWait is killed.
template <class F>
std::string run_in_child(F body) {
  int fds[2];
  REQUIRE(ss::detail::open_pipe(fds, false) == 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    try {
      out = body();
    } catch (const std::exception& e) {
      out = std::string("exception=\"") + e.what() + "\"";
    } catch (...) {
      out = "exception=unknown";
    }
    for (std::size_t done = 0; done < out.size();) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + 3 * kWait;
  bool ended = false;
  while (!ended && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[1024];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n > 0)
      got.append(buf, static_cast<std::size_t>(n));
    else
      ended = true;
  }
  ::close(fds[0]);
  if (!ended) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  CHECK(ended);
  CHECK(WIFEXITED(status));
  return got;
}

// --- A storm of signals ----------------------------------------------------------------------

std::atomic<int> g_signal_pipe{-1};
std::atomic<int> g_signals{0};

extern "C" void on_alarm(int) {
  const int saved = errno;
  g_signals.fetch_add(1, std::memory_order_relaxed);
  const char byte = 1;
  (void)!::write(g_signal_pipe.load(std::memory_order_relaxed), &byte, 1);
  errno = saved;
}

// SIGALRM every millisecond (ITIMER_REAL) to a no-op handler installed without SA_RESTART,
// so every blocking call it lands in fails with EINTR. The destructor restores the previous
// handler and timer.
class SignalStorm {
 public:
  SignalStorm() {
    int fds[2];
    if (ss::detail::open_pipe(fds, true) != 0)
      throw std::system_error(errno, std::system_category(), "pipe");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    g_signal_pipe = write_fd_;
    struct sigaction action {};
    action.sa_handler = &on_alarm;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART
    ::sigaction(SIGALRM, &action, &saved_action_);
    ::getitimer(ITIMER_REAL, &saved_timer_);
  }
  SignalStorm(const SignalStorm&) = delete;
  SignalStorm& operator=(const SignalStorm&) = delete;
  ~SignalStorm() {
    stop();
    ::setitimer(ITIMER_REAL, &saved_timer_, nullptr);
    ::sigaction(SIGALRM, &saved_action_, nullptr);
    g_signal_pipe = -1;
    ::close(read_fd_);
    ::close(write_fd_);
  }
  void start() {
    const itimerval every_ms{{0, 1000}, {0, 1000}};
    ::setitimer(ITIMER_REAL, &every_ms, nullptr);
  }
  void stop() {
    const itimerval off{};
    ::setitimer(ITIMER_REAL, &off, nullptr);
  }
  /// Waits until `n` more signals have been handled (at most kWait).
  bool wait_for(int n) {
    drain();
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    int seen = 0;
    while (seen < n && std::chrono::steady_clock::now() < deadline) {
      pollfd p{read_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) > 0) seen += drain();
    }
    return seen >= n;
  }
  /// Waits until `count` signals have been handled in all (g_signals; at most kWait).
  bool wait_for_total(int count) {
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (g_signals.load() < count && std::chrono::steady_clock::now() < deadline) {
      pollfd p{read_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) > 0) drain();
    }
    return g_signals.load() >= count;
  }
  const struct sigaction& saved_action() const { return saved_action_; }
  const itimerval& saved_timer() const { return saved_timer_; }

 private:
  int drain() {
    int n = 0;
    char buf[256];
    for (ssize_t got; (got = ::read(read_fd_, buf, sizeof buf)) > 0;) n += static_cast<int>(got);
    return n;
  }
  int read_fd_ = -1;
  int write_fd_ = -1;
  struct sigaction saved_action_ {};
  itimerval saved_timer_{};
};

// Blocks a signal in the calling thread until destroyed (threads started meanwhile by
// others keep their own masks).
class BlockedHere {
 public:
  explicit BlockedHere(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    ::pthread_sigmask(SIG_BLOCK, &set, &saved_);
  }
  BlockedHere(const BlockedHere&) = delete;
  BlockedHere& operator=(const BlockedHere&) = delete;
  ~BlockedHere() { ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }

 private:
  sigset_t saved_;
};

struct StreamEcho : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};
struct DatagramEcho : ss::DatagramRequestHandler<> {
  void handle() { wfile.write(rfile.read()); }
};

template <class K>
struct SignalledServer : K::template server<std::conditional_t<K::stream, StreamEcho, DatagramEcho>,
                                            SignalledServer<K>> {
  using base = typename K::template server<std::conditional_t<K::stream, StreamEcho, DatagramEcho>,
                                           SignalledServer<K>>;
  using base::base;
  std::atomic<int> get_request_errors{0};
  void handle_get_request_error(const std::system_error&) { ++get_request_errors; }
};

// --- A stream server that was never activated --------------------------------------------------

template <class K>
struct InactiveServer : K::template server<LineEcho, InactiveServer<K>> {
  using base = typename K::template server<LineEcho, InactiveServer<K>>;
  using base::base;
  std::mutex mutex;
  std::condition_variable cv;
  int failures = 0;
  std::string first;
  void handle_get_request_error(const std::system_error& error) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (failures++ == 0) first = error.what();
    }
    cv.notify_all();
  }
};

}  // namespace

TEMPLATE_TEST_CASE("1,000 concurrent connections to a threading stream server all get answers",
                   "[limits][concurrency]", test::ThreadingTCP, test::ThreadingUnixStream) {
  using K = TestType;
  constexpr int kClients = 1000;
  RaisedFileLimit limit;
  if (limit.soft() < 2 * kClients + 100) {
    WARN("RLIMIT_NOFILE hard limit " << limit.soft() << " is too low for " << kClients
                                     << " connections; skipped");
    return;
  }
  test::TempDir dir;
  const Baseline before;
  {
    CrowdServer<K> server(K::bind_address(dir));
    {
      test::Serving<CrowdServer<K>> serving(server);
      std::vector<ss::socket> clients;
      clients.reserve(kClients);
      for (int i = 0; i < kClients; ++i)
        clients.push_back(test::connect_to(server.server_address, SOCK_STREAM, &dir));
      // Every handler is running at once, each waiting for its client's line.
      bool all_started;
      {
        std::unique_lock<std::mutex> lock(server.mutex);
        all_started =
            server.cv.wait_for(lock, 3 * kWait, [&] { return server.started == kClients; });
        INFO("handlers running: " << server.started);
        CHECK(all_started);
      }
      CHECK(server.active_threads() == static_cast<std::size_t>(kClients));
      for (int i = 0; i < kClients; ++i) clients[i].sendall("client " + std::to_string(i) + "\n");
      int answered = 0;
      for (int i = 0; i < kClients; ++i)
        answered += test::recv_all(clients[i]) == "re: client " + std::to_string(i) + "\n";
      CHECK(answered == kClients);
      clients.clear();
      CHECK(test::round_trip<K>(server.server_address, "after\n", dir) == "re: after\n");
    }
    server.server_close();
    CHECK(server.active_threads() == 0);
    CHECK(server.errors == 0);
  }
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("out of descriptors, accept fails with EMFILE: reported, backed off, recovered",
                   "[limits][emfile]", STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  const Baseline before;
  const std::string text = run_in_child([&] { return emfile_scenario<K>(dir); });
  INFO("child reported: " << text);
  auto fields = parse_report(text);
  CHECK(fields["exhausted"] == "1");
  CHECK(fields["errno"] == std::to_string(EMFILE));  // through handle_get_request_error
  const int failures = std::atoi(fields["window_failures"].c_str());
  CHECK(failures >= 1);
  CHECK(failures < 50);  // a loop without back-off fails thousands of times in 300 ms
  CHECK(std::atoi(fields["window_ms"].c_str()) >= 290);
  CHECK(fields["first"] == "ping");   // the client that waited through it
  CHECK(fields["second"] == "pong");  // and a new one
  CHECK(fields["serve_error"] == "none");
  CHECK(fields["leaked_fds"] == "0");
  CHECK(fields["children"] == "0");
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a 1 ms SIGALRM storm without SA_RESTART: every request still succeeds",
                   "[limits][signals][eintr]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  constexpr int kRequests = 100;
  test::TempDir dir;
  SignalStorm storm;
  const Baseline before;
  int answered = 0;
  std::string failure;
  const int signals_before = g_signals.load();
  {
    SignalledServer<K> server(K::bind_address(dir));
    {
      test::Serving<SignalledServer<K>> serving(server);  // its thread takes the signals
      BlockedHere blocked(SIGALRM);                       // the client side here is not under test
      storm.start();
      ss::socket datagram_client;
      if constexpr (!K::stream)
        datagram_client = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
      for (int i = 0; i < kRequests && failure.empty(); ++i) {
        const std::string first = "request " + std::to_string(i) + " begins, ";
        const std::string second = "and ends\n";
        try {
          if constexpr (K::stream) {
            // The handler waits in recv() for the second half while signals arrive.
            ss::socket c = test::connect_to(server.server_address, SOCK_STREAM, &dir);
            c.sendall(first);
            if (!storm.wait_for(2)) failure = "no signals";
            c.sendall(second);
            c.shutdown(SHUT_WR);
            if (test::recv_all(c) == first + second) ++answered;
          } else {
            // The serve loop waits in poll() while signals arrive.
            if (!storm.wait_for(1)) failure = "no signals";
            const std::string message = first + second;
            char reply[65536];  // no allocation while the server may fork
            datagram_client.send(message);
            const std::size_t n = datagram_client.recv(reply, sizeof reply);
            if (std::string(reply, n) == message) ++answered;
          }
        } catch (const std::exception& e) {
          failure = "request " + std::to_string(i) + ": " + e.what();
        }
      }
      storm.stop();
      CHECK(failure.empty());
      CHECK(answered == kRequests);
      CHECK(g_signals.load() - signals_before >= kRequests);
    }  // a signal still pending is handled as the mask is restored, by the no-op handler
    CHECK(server.get_request_errors == 0);  // EINTR is not an error worth reporting
    {
      test::Serving<SignalledServer<K>> serving(server);
      if constexpr (K::stream) {
        CHECK(test::round_trip<K>(server.server_address, "calm\n", dir) == "calm\n");
      } else {
        ss::socket c = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
        char reply[64];
        c.send("calm");
        CHECK(std::string(reply, c.recv(reply, sizeof reply)) == "calm");
      }
    }
    server.server_close();
  }
  check_nothing_left(before);
}

TEST_CASE("the signal storm restores the previous SIGALRM handler and timer", "[limits][signals]") {
  struct sigaction before {};
  ::sigaction(SIGALRM, nullptr, &before);
  {
    SignalStorm storm;
    storm.start();
    CHECK(storm.wait_for(3));
    storm.stop();
  }
  struct sigaction after {};
  ::sigaction(SIGALRM, nullptr, &after);
  CHECK(after.sa_handler == before.sa_handler);
  // (The C library may add its own SA_RESTORER bit when a disposition is set: compare the
  // flags a program chooses.)
  constexpr int kChosen = SA_RESTART | SA_SIGINFO | SA_NODEFER | SA_RESETHAND | SA_ONSTACK |
                          SA_NOCLDSTOP | SA_NOCLDWAIT;
  CHECK((after.sa_flags & kChosen) == (before.sa_flags & kChosen));
  itimerval timer{};
  ::getitimer(ITIMER_REAL, &timer);
  CHECK(timer.it_value.tv_sec == 0);
  CHECK(timer.it_value.tv_usec == 0);
  CHECK(timer.it_interval.tv_sec == 0);
  CHECK(timer.it_interval.tv_usec == 0);
}

// Library bug (issue 12): the tests' clients connected with a bare connect(2), and a signal
// failed it with EINTR when the socket had a timeout (SO_SNDTIMEO). Under musl that signal
// comes unasked: fork() blocks signals for a moment, and a SIGCHLD from an earlier child that
// arrives then is handed to another thread, interrupting its call (the hygiene test's
// ForkingTCP run lost a request that way, one run in two). socket::connect() resumes instead.
// Here the connect() waits for a second (a full accept queue drops its SYN until the
// retransmission) while signals interrupt it, one at a time, each handled before the next.
TEST_CASE("connect() interrupted by signals still connects", "[limits][signals]") {
  SignalStorm storm;  // the no-op handler without SA_RESTART; no timer: sent one by one below
  ss::socket listener(AF_INET, SOCK_STREAM);
  const ss::address loopback("127.0.0.1", 0);
  REQUIRE(::bind(listener.fileno(), loopback.data(), loopback.size()) == 0);
  REQUIRE(::listen(listener.fileno(), 0) == 0);  // room for one waiting connection
  const ss::address bound = listener.getsockname();
  const ss::socket first = test::connect_to(bound);  // fills the accept queue
  ss::socket second(AF_INET, SOCK_STREAM);
  second.settimeout(std::chrono::seconds(20));  // a timeout: the kernel does not restart
  std::atomic<bool> done{false};
  std::string error;
  std::thread connecting([&] {
    try {
      second.connect(bound);
    } catch (const std::exception& e) {
      error = e.what();
    }
    done = true;
  });
  const int signals_before = g_signals.load();
  int sent = 0;
  ss::socket accepted;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    ::pthread_kill(connecting.native_handle(), SIGALRM);
    ++sent;
    if (!storm.wait_for_total(signals_before + sent)) break;
    if (sent == 20) accepted = ss::socket(::accept(listener.fileno(), nullptr, nullptr));
  }
  connecting.join();
  INFO("signals sent while connecting: " << sent);
  CHECK(error == "");
  CHECK(sent > 20);
  CHECK(accepted.is_open());
  // The second connection is established: the listener hands it out.
  ss::socket second_accepted(::accept(listener.fileno(), nullptr, nullptr));
  CHECK(second_accepted.is_open());
  CHECK(second.getsockname() == second_accepted.getpeername());
}

// Library bug: accept() on a socket that is not listening fails with EINVAL, which is
// neither transient nor resource exhaustion (base_server.hpp, on_get_request_error), so
// serve_forever() retries at once, forever: 100% CPU and, with the default
// handle_get_request_error, a line on stderr per failure (~10^5 a second). Expected: an
// exception out of serve_forever() (as for a closed socket, EBADF) or a back-off.
TEMPLATE_TEST_CASE(
    "serve_forever on a stream server that was bound but never activated does not spin",
    "[limits][misuse]", test::TCP, test::UnixStream) {
  using K = TestType;
  test::TempDir dir;
  const Baseline before;
  {
    InactiveServer<K> server(K::bind_address(dir), false);
    server.server_bind();  // and no server_activate(): not listening
    std::exception_ptr error;
    int failures;
    std::string first;
    {
      test::Serving<InactiveServer<K>> serving(server, std::chrono::milliseconds(10));
      {
        std::unique_lock<std::mutex> lock(server.mutex);
        server.cv.wait_for(lock, 300ms, [&] { return server.failures >= 50; });
        failures = server.failures;
        first = server.first;
      }
      serving.stop();
      error = serving.error();
    }
    INFO("get_request failures within 300 ms: " << failures << " (the first: " << first << ")");
    CHECK((error != nullptr || failures < 50));
    // Activated, it serves (handle_request(): a serve_forever() that had thrown would leave
    // the Serving's shutdown() pending, and the next serve_forever() would return at once).
    server.server_activate();
    std::string reply;
    std::thread client([&] { reply = test::round_trip<K>(server.server_address, "late\n", dir); });
    server.handle_request();
    client.join();
    CHECK(reply == "late\n");
  }
  check_nothing_left(before);
}
