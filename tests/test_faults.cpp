// SPDX-License-Identifier: MIT
// Reliability under faults (issue 3): peers that vanish, reset or stop reading; handlers that
// throw; slow and hostile clients; access control by client address. Every case checks that
// the server goes on serving correct replies afterwards and that nothing leaked: descriptors
// (/proc/self/fd), threads (/proc/self/task) and child processes (zombies included) are back
// to what they were before the server existed.
//
// Events are reported through a pipe (Reports): one write() per line, so handlers in request
// threads and in forked children report the same way. Waits are bounded (kWait); the only
// poll is for detached request threads to leave the kernel's task list, which nothing
// signals.
//
// A forked child inherits every descriptor of the test process, including the test's own
// client sockets, so a client's close() would not end the connection while a child holds a
// copy. The servers here therefore close inherited descriptors in the child (what a careful
// forking server does) before running the handler.
//
// And while a forking server may be forking, the test's client thread allocates nothing:
// from connect() (or a datagram sent) until the first byte comes back from the child. A
// child forked while another thread holds an allocator lock inherits it held; glibc's malloc
// guards against that, but AddressSanitizer's allocator (LLVM 14) does not, and the child
// then deadlocks. So client names are made before connecting, payloads built beforehand,
// and datagrams received into a buffer on the stack.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#if defined(__linux__)
#  include <sys/syscall.h>  // SYS_pidfd_open
#endif
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
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

// The longest the test waits for any one event.
constexpr std::chrono::seconds kWait{20};

// --- Resource accounting ---------------------------------------------------------------------

using test::eventually;

using test::Baseline;

using test::check_nothing_left;

// --- Reports: a pipe any thread or forked child can post a line to -----------------------------

class Reports {
 public:
  Reports() {
    int fds[2];
    if (ss::detail::open_pipe(fds, false) != 0)
      throw std::system_error(errno, std::system_category(), "pipe");
    read_fd_ = fds[0];
    write_fd_ = fds[1];
  }
  Reports(const Reports&) = delete;
  Reports& operator=(const Reports&) = delete;
  ~Reports() {
    ::close(read_fd_);
    ::close(write_fd_);
  }
  int write_fd() const noexcept { return write_fd_; }

  /// Posts one line; a single write() of at most PIPE_BUF bytes, so lines never interleave.
  void post(std::string line) const noexcept {
    if (line.size() > PIPE_BUF - 1) line.resize(PIPE_BUF - 1);
    line.push_back('\n');
    ssize_t n;
    do {
      n = ::write(write_fd_, line.data(), line.size());
    } while (n < 0 && errno == EINTR);
  }

  /// The next line, waiting at most `within`; nullopt if none came.
  std::optional<std::string> next(std::chrono::milliseconds within = kWait) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    for (;;) {
      const auto nl = pending_.find('\n');
      if (nl != std::string::npos) {
        std::string line = pending_.substr(0, nl);
        pending_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{read_fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return std::nullopt;
      char buf[4096];
      const ssize_t got = ::read(read_fd_, buf, sizeof buf);
      if (got > 0) pending_.append(buf, static_cast<std::size_t>(got));
    }
  }

  /// Lines already posted, without waiting.
  std::vector<std::string> posted_so_far() {
    std::vector<std::string> lines;
    while (auto line = next(0ms)) lines.push_back(*line);
    return lines;
  }

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
  std::string pending_;
};

// --- What an exception was -------------------------------------------------------------------

std::string errno_name(const std::error_code& ec) {
  const std::error_condition c = ec.default_error_condition();
  if (c.category() != std::generic_category())
    return std::string(c.category().name()) + ":" + std::to_string(c.value());
  switch (c.value()) {
    case ECONNRESET:
      return "ECONNRESET";
    case EPIPE:
      return "EPIPE";
    case ETIMEDOUT:
      return "ETIMEDOUT";
    case ECONNABORTED:
      return "ECONNABORTED";
    default:
      return "errno " + std::to_string(c.value()) + " (" + c.message() + ")";
  }
}

// "system_error ECONNRESET", "exception boom", "int 42" for the exception being handled.
std::string current_exception_text() {
  try {
    throw;
  } catch (const std::system_error& e) {
    return "system_error " + errno_name(e.code());
  } catch (const std::exception& e) {
    return std::string("exception ") + e.what();
  } catch (int value) {
    return "int " + std::to_string(value);
  } catch (...) {
    return "unknown exception";
  }
}

// In a forked child: closes every descriptor but stdio and `keep`.
void close_inherited_descriptors(std::initializer_list<int> keep) {
  std::vector<int> open;
  if (DIR* d = test::open_fd_directory()) {
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const int fd = std::atoi(e->d_name);
      if (fd > 2 && fd != own) open.push_back(fd);
    }
    ::closedir(d);
  }
  for (int fd : open)
    if (std::find(keep.begin(), keep.end(), fd) == keep.end()) ::close(fd);
}

bool sigpipe_would_kill() {
  struct sigaction action {};
  ::sigaction(SIGPIPE, nullptr, &action);
  sigset_t blocked;
  ::pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
  // sigismember is a macro on macOS: not ::sigismember.
  return action.sa_handler == SIG_DFL && !sigismember(&blocked, SIGPIPE);
}

// --- The server: any kind, with reporting hooks -------------------------------------------------

template <class K, template <class> class H>
struct FaultServer : K::template server<H<FaultServer<K, H>>, FaultServer<K, H>> {
  using base = typename K::template server<H<FaultServer<K, H>>, FaultServer<K, H>>;
  using request_type = typename K::request_type;
  using base::base;

  const Reports* reports = nullptr;
  bool greet = false;  // stream handlers send "hello\n" before reading
  bool trace = false;  // handlers post "handle" when they start
  std::string denied;  // the client address verify_request() refuses
  std::atomic<int> rejected{0};

  bool verify_request(request_type& /*request*/, const ss::address& client) {
    if (!denied.empty() && client.to_string() == denied) {
      ++rejected;
      return false;
    }
    return true;
  }

  void finish_request(request_type& request, const ss::address& client) {
    if constexpr (K::concurrency == Concurrency::forking) {
      int keep;
      if constexpr (K::stream)
        keep = request.fileno();
      else
        keep = request.socket.fileno();
      close_inherited_descriptors({keep, reports->write_fd()});
    }
    base::finish_request(request, client);
  }

  void handle_error(request_type& /*request*/, const ss::address& client) {
    reports->post("error " + current_exception_text() + " from " + client.to_string());
  }
};

// A line protocol: "echo X" answers "X\n"; "big N" answers N bytes; end of stream posts "eof".
template <class Handler>
void serve_line(Handler& h) {
  const auto& server = h.server;
  if (server.trace) server.reports->post("handle");
  if (server.greet) h.wfile.write("hello\n");
  std::string line = h.rfile.readline();
  if (line.empty()) {
    server.reports->post("eof");
    return;
  }
  if (line.back() == '\n') line.pop_back();
  if (line.rfind("echo ", 0) == 0) {
    h.wfile.write(line.substr(5) + "\n");
  } else if (line.rfind("big ", 0) == 0) {
    std::size_t left = std::stoul(line.substr(4));
    const std::string block(64 * 1024, 'x');
    while (left > 0) {
      const std::size_t n = std::min(left, block.size());
      h.wfile.write(std::string_view(block).substr(0, n));
      left -= n;
    }
    server.reports->post("sent");
  } else {
    h.wfile.write("unknown\n");
  }
}

template <class S>
struct LineHandler : ss::StreamRequestHandler<S> {
  void handle() { serve_line(*this); }
};

// The same protocol with a 300 ms handler timeout: each whole read, and each send.
template <class S>
struct TimedLineHandler : ss::StreamRequestHandler<S> {
  static constexpr auto timeout = std::chrono::milliseconds(300);
  void handle() { serve_line(*this); }
};

// Throws as the request asks: "std", "int", or "setup" (from setup(), before handle()).
template <class S>
struct StreamFaulty : ss::StreamRequestHandler<S> {
  void setup() {
    ss::StreamRequestHandler<S>::setup();
    char peek[16] = {};
    const std::size_t n = this->connection.recv(peek, sizeof peek, MSG_PEEK);
    if (std::string_view(peek, n).substr(0, 5) == "setup") {
      (void)this->rfile.readline();  // closing with unread data would reset the connection
      throw std::logic_error("setup failed");
    }
  }
  void handle() {
    std::string line = this->rfile.readline();
    if (!line.empty() && line.back() == '\n') line.pop_back();
    if (line == "std") throw std::runtime_error("boom");
    if (line == "int") throw 42;
    this->wfile.write(line + "\n");
  }
};

template <class S>
struct DatagramFaulty : ss::DatagramRequestHandler<S> {
  void setup() {
    ss::DatagramRequestHandler<S>::setup();
    if (this->packet == "setup") throw std::logic_error("setup failed");
  }
  void handle() {
    if (this->packet == "std") throw std::runtime_error("boom");
    if (this->packet == "int") throw 42;
    this->wfile.write(this->packet);
  }
};

template <bool Stream>
struct FaultyFor {
  template <class S>
  using type = std::conditional_t<Stream, StreamFaulty<S>, DatagramFaulty<S>>;
};

// Reads a line longer than max_line_length: readline() stops at 65536 bytes, readline(100)
// at 100, and neither waits for a '\n' that never comes.
template <class S>
struct EndlessLineHandler : ss::StreamRequestHandler<S> {
  void handle() {
    const std::string first = this->rfile.readline();
    const std::string second = this->rfile.readline(100);
    const bool newline =
        first.find('\n') != std::string::npos || second.find('\n') != std::string::npos;
    this->wfile.write(std::to_string(first.size()) + " " + std::to_string(second.size()) +
                      (newline ? " newline\n" : " no-newline\n"));
    this->wfile.write("rest " + std::to_string(this->rfile.read().size()) + "\n");
  }
};

template <class S>
struct TruncationHandler : ss::DatagramRequestHandler<S> {
  void handle() {
    this->wfile.write(std::string(this->request.truncated ? "truncated " : "whole ") +
                      std::to_string(this->packet.size()));
  }
};

// --- Clients ---------------------------------------------------------------------------------

// A stream client, connected, whose address (as the server will report it) was made before
// it connected: a TCP client binds 127.0.0.1 port 0 first; a Unix one stays unnamed. With
// `small_window`, its receive buffer is small, so large replies stay stuck in flight.
struct Client {
  ss::socket sock;
  std::string name;
};

Client connect_client(const ss::address& to, bool small_window = false) {
  Client c{ss::socket(to.family(), SOCK_STREAM), std::string()};
  c.sock.settimeout(std::chrono::seconds(20));
  if (small_window) c.sock.setsockopt(SOL_SOCKET, SO_RCVBUF, 4096);
  if (to.family() != AF_UNIX) {
    const ss::address any_port("127.0.0.1", 0);
    if (::bind(c.sock.fileno(), any_port.data(), any_port.size()) < 0)
      throw std::system_error(errno, std::system_category(), "bind client");
  }
  c.name = c.sock.getsockname().to_string();
  c.name.reserve(64);
  c.sock.connect(to);  // (resumed after a signal: a forking server's SIGCHLD under musl)
  return c;
}

// One datagram, received into the stack (no allocation before it has come).
std::string recv_datagram(const ss::socket& c) {
  char buf[65536];
  const std::size_t n = c.recv(buf, sizeof buf);
  return std::string(buf, n);
}

// Closes abortively: TCP sends a RST (SO_LINGER {1, 0}); a Unix stream socket closed with
// unread data makes the peer's next call fail with ECONNRESET (callers leave data unread).
void abort_connection(ss::socket& c) {
  if (c.getsockname().family() != AF_UNIX) c.setsockopt(SOL_SOCKET, SO_LINGER, ::linger{1, 0});
  c.close();
}

// Reads until `n` bytes have come (or end of stream).
std::string recv_exactly(const ss::socket& c, std::size_t n) {
  std::string out;
  char buf[8192];
  while (out.size() < n) {
    const std::size_t got = c.recv(buf, std::min(sizeof buf, n - out.size()));
    if (got == 0) break;
    out.append(buf, got);
  }
  return out;
}

std::string recv_line(const ss::socket& c) {
  std::string out;
  char ch;
  while (out.size() < 4096 && c.recv(&ch, 1) == 1) {
    out.push_back(ch);
    if (ch == '\n') break;
  }
  return out;
}

// "echo fine" on a new connection; the reply without the server's greeting, if any.
std::string echo_round_trip(const ss::address& server, const test::TempDir& dir,
                            const std::string& greeting = "") {
  ss::socket c = test::connect_to(server, SOCK_STREAM, &dir);
  c.sendall("echo fine\n");
  const std::string reply = test::recv_all(c);
  return reply.substr(std::min(reply.size(), greeting.size()));
}

// Waits for a forked child to exit, at most `within`, without reaping it.
bool wait_exited(pid_t pid, std::chrono::milliseconds within) {
#if defined(SYS_pidfd_open)
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) {
    pollfd p{static_cast<int>(fd), POLLIN, 0};
    int ready;
    do {
      ready = ::poll(&p, 1, static_cast<int>(within.count()));
    } while (ready < 0 && errno == EINTR);
    ::close(static_cast<int>(fd));
    return ready > 0;
  }
#endif
  (void)within;  // no pidfds: wait without a bound
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0;
}

}  // namespace

#define STREAM_KINDS                                                                            \
  test::TCP, test::UnixStream, test::ThreadingTCP, test::ThreadingUnixStream, test::ForkingTCP, \
      test::ForkingUnixStream, test::FiberTCP, test::FiberUnixStream
#define DATAGRAM_KINDS                                                            \
  test::UDP, test::UnixDatagram, test::ThreadingUDP, test::ThreadingUnixDatagram, \
      test::ForkingUDP, test::ForkingUnixDatagram, test::FiberUDP, test::FiberUnixDatagram

// --- Peer faults -------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("clients that connect and close at once are served and forgotten",
                   "[faults][peer]", STREAM_KINDS) {
  using K = TestType;
  constexpr int kClients = 20;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, LineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      // One at a time: the next client connects once the handler has seen this one leave
      // (no allocation in this thread while the server may fork).
      int eofs = 0;
      for (int i = 0; i < kClients; ++i) {
        test::connect_to(server.server_address, SOCK_STREAM, &dir);  // and closed at once
        const auto line = reports.next();
        if (!line) break;
        CHECK(*line == "eof");
        eofs += *line == "eof";
      }
      CHECK(eofs == kClients);
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a client reset in the middle of its request is reported, and serving goes on",
                   "[faults][peer]", STREAM_KINDS) {
  using K = TestType;
  REQUIRE(sigpipe_would_kill());  // the test must not hide a SIGPIPE
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, LineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    server.greet = true;
    {
      test::Serving<decltype(server)> serving(server);
      for (int i = 0; i < 5; ++i) {
        auto [c, me] = connect_client(server.server_address);
        char peek[6];
        REQUIRE(c.recv(peek, sizeof peek, MSG_PEEK) > 0);  // the handler is running
        c.sendall("echo never finish");                    // no newline
        abort_connection(c);                               // greeting left unread
        const auto report = reports.next();
        REQUIRE(report);
        CHECK(*report == "error system_error ECONNRESET from " + me);
      }
      CHECK(echo_round_trip(server.server_address, dir, "hello\n") == "fine\n");
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  CHECK(sigpipe_would_kill());
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a client that vanishes while the server writes 8 MiB: no SIGPIPE, an error",
                   "[faults][peer][sigpipe]", STREAM_KINDS) {
  using K = TestType;
  REQUIRE(sigpipe_would_kill());  // a SIGPIPE would kill the test (or the forked child)
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, LineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      SECTION("reset after reading part of the reply") {
        for (int i = 0; i < 3; ++i) {
          auto [c, me] = connect_client(server.server_address, true);
          c.sendall("big 8388608\n");
          CHECK(recv_exactly(c, 64 * 1024).size() == 64 * 1024);
          abort_connection(c);  // the rest of the reply is still coming: unread
          const auto report = reports.next();
          REQUIRE(report);
          CAPTURE(*report);
          CHECK((*report == "error system_error ECONNRESET from " + me ||
                 *report == "error system_error EPIPE from " + me));
        }
      }
      SECTION("stop reading, then close") {
        for (int i = 0; i < 3; ++i) {
          auto [c, me] = connect_client(server.server_address, true);
          c.sendall("big 8388608\n");
          char peek;
          REQUIRE(c.recv(&peek, 1, MSG_PEEK) == 1);  // the reply has started
          c.close();                                 // with all of it unread
          const auto report = reports.next();
          REQUIRE(report);
          CAPTURE(*report);
          CHECK((*report == "error system_error ECONNRESET from " + me ||
                 *report == "error system_error EPIPE from " + me));
        }
      }
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  CHECK(sigpipe_would_kill());
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("a client that stops reading and stays is cut off by the handler's timeout",
                   "[faults][peer][timeout]", STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, TimedLineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      auto [c, me] = connect_client(server.server_address, true);
      c.sendall("big 8388608\n");  // and never reads
      const auto report = reports.next();
      REQUIRE(report);
      CHECK(*report == "error system_error ETIMEDOUT from " + me);
      c.close();
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

// --- Handler faults ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("handler exceptions of any type, from handle() or setup(), leave nothing behind",
                   "[faults][handler]", SOCKETSERVER_ALL_KINDS) {
  using K = TestType;
  constexpr int kRounds = 5;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, FaultyFor<K::stream>::template type> server(K::bind_address(dir));
    server.reports = &reports;
    for (int round = 0; round < kRounds; ++round) {
      for (const std::string fault : {"std", "int", "setup"}) {
        CAPTURE(round, fault);
        ss::socket c = test::connect_to(server.server_address, K::socket_type, &dir);
        const std::string me = c.getsockname().to_string();
        if constexpr (K::stream) {
          c.sendall(fault + "\n");
          c.shutdown(SHUT_WR);
        } else {
          c.send(fault);
        }
        server.handle_request();  // here, in a request thread, or in a child
        if constexpr (K::stream) CHECK(test::recv_all(c).empty());  // closed without a reply
        const auto report = reports.next();
        REQUIRE(report);
        const std::string expected = fault == "std"   ? "exception boom"
                                     : fault == "int" ? "int 42"
                                                      : "exception setup failed";
        CHECK(*report == "error " + expected + " from " + me);
        if constexpr (K::concurrency == Concurrency::forking) {
          // The child reported the exception and left with status 1; collect_children()
          // reaps it.
          REQUIRE(server.active_children.size() == 1);
          const pid_t child = *server.active_children.begin();
          REQUIRE(wait_exited(child, kWait));
          siginfo_t info{};
          REQUIRE(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOHANG | WNOWAIT) ==
                  0);
          CHECK(info.si_pid == child);
          CHECK(info.si_code == CLD_EXITED);
          CHECK(info.si_status == 1);
          server.collect_children();
          CHECK(server.active_children.empty());
          CHECK_FALSE(test::has_children());
        }
      }
    }
    {
      test::Serving<decltype(server)> serving(server);
      if constexpr (K::stream) {
        CHECK(test::round_trip<K>(server.server_address, "fine\n", dir) == "fine\n");
      } else {
        ss::socket c = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
        c.send("fine");
        CHECK(recv_datagram(c) == "fine");
      }
    }
    server.server_close();
    if constexpr (K::family == AF_UNIX) CHECK_FALSE(test::file_exists(dir.file("server.sock")));
    if constexpr (K::concurrency == Concurrency::forking) CHECK(server.active_children.empty());
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

// --- Slow and hostile clients -----------------------------------------------------------------

TEMPLATE_TEST_CASE(
    "a slowloris client sending a byte every 100 ms is cut off by the 300 ms timeout",
    "[faults][hostile][timeout]", STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, TimedLineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      // Timed from before connecting: the handler's clock starts after the connection exists.
      const auto start = std::chrono::steady_clock::now();
      auto [c, me] = connect_client(server.server_address);
      int sent = 0;
      std::string cut_off;
      cut_off.reserve(64);
      // One byte, then wait up to 100 ms for the server to hang up; at most 5 s in all. The
      // pacing is the hostile behaviour under test, the wait on the socket ends it early.
      for (int i = 0; i < 50 && cut_off.empty(); ++i) {
        const char byte = 'x';
        if (::send(c.fileno(), &byte, 1, MSG_NOSIGNAL) != 1) {
          cut_off = std::string("send: ") + std::strerror(errno);
          break;
        }
        ++sent;
        pollfd p{c.fileno(), POLLIN, 0};
        if (::poll(&p, 1, 100) > 0) {
          char b;
          const ssize_t got = ::recv(c.fileno(), &b, 1, MSG_DONTWAIT);
          cut_off = got == 0 ? "end of stream" : got < 0 ? std::strerror(errno) : "data";
        }
      }
      const auto elapsed = std::chrono::steady_clock::now() - start;
      CAPTURE(cut_off, sent, std::chrono::duration<double>(elapsed).count());
      CHECK(!cut_off.empty());
      CHECK(cut_off != "data");
      CHECK(sent >= 2);         // it kept sending, faster than the timeout
      CHECK(elapsed >= 300ms);  // and was cut off only when its readline had taken 300 ms
      CHECK(elapsed < 5s);
      const auto report = reports.next();
      REQUIRE(report);
      CHECK(*report == "error system_error ETIMEDOUT from " + me);
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE("an endless line is stopped by max_line_length and by readline(limit)",
                   "[faults][hostile][readline]", STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, EndlessLineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      const std::string endless(70000, 'x');  // no newline, and the connection stays open
      for (int i = 0; i < 3; ++i) {
        ss::socket c = test::connect_to(server.server_address, SOCK_STREAM, &dir);
        c.sendall(endless);
        // The handler answers before the client has ended its stream: neither readline()
        // waited for a newline or for the end.
        CHECK(recv_line(c) == "65536 100 no-newline\n");
        c.shutdown(SHUT_WR);
        CHECK(test::recv_all(c) == "rest 4364\n");
      }
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

TEMPLATE_TEST_CASE(
    "a datagram longer than max_packet_size is flagged truncated, in every datagram kind",
    "[faults][hostile][datagram]", DATAGRAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, TruncationHandler> server(K::bind_address(dir));
    server.reports = &reports;
    {
      test::Serving<decltype(server)> serving(server);
      ss::socket c = test::connect_to(server.server_address, SOCK_DGRAM, &dir);
      const std::pair<std::size_t, std::string> cases[] = {
          {8193, "truncated 8192"},  {2, "whole 2"},
          {8192, "whole 8192"},      {65000, "truncated 8192"},
          {10000, "truncated 8192"}, {0, "whole 0"}};
      for (const auto& [size, expected] : cases) {
        CAPTURE(size);
        const std::string datagram(size, 'd');
        c.send(datagram);
        CHECK(recv_datagram(c) == expected);  // one at a time, so replies come in order
      }
    }
    server.server_close();
  }
  CHECK(reports.posted_so_far().empty());
  check_nothing_left(before);
}

// --- Access control -------------------------------------------------------------------------

TEMPLATE_TEST_CASE("verify_request refusing a client address closes without reading",
                   "[faults][verify_request]", STREAM_KINDS) {
  using K = TestType;
  test::TempDir dir;
  Reports reports;
  const Baseline before;
  {
    FaultServer<K, LineHandler> server(K::bind_address(dir));
    server.reports = &reports;
    server.trace = true;
    // The refused client binds its own address first: a port on 127.0.0.1, or a socket path.
    ss::socket intruder(K::family, SOCK_STREAM);
    intruder.settimeout(std::chrono::seconds(20));
    const ss::address own =
        K::family == AF_UNIX ? ss::address(dir.file("intruder.sock")) : ss::address("127.0.0.1", 0);
    REQUIRE(::bind(intruder.fileno(), own.data(), own.size()) == 0);
    server.denied = intruder.getsockname().to_string();
    {
      test::Serving<decltype(server)> serving(server);
      const ss::address& to = server.server_address;
      REQUIRE(::connect(intruder.fileno(), to.data(), to.size()) == 0);
      // It sends nothing: had the server waited to read, this would time out, not end.
      char byte;
      CHECK(intruder.recv(&byte, 1) == 0);
      intruder.close();
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
      CHECK(echo_round_trip(server.server_address, dir) == "fine\n");
    }
    server.server_close();
    CHECK(server.rejected == 1);
    if constexpr (K::concurrency == Concurrency::forking) CHECK(server.active_children.empty());
  }
  // The handler ran for the two accepted clients only.
  CHECK(reports.posted_so_far() == std::vector<std::string>{"handle", "handle"});
  check_nothing_left(before);
}
