// SPDX-License-Identifier: MIT
// loadgen: the load generator of bench/run. Loopback only, every run bounded in time.
//
//   loadgen --workload connrate|pingpong|udp|bulk|idle (--port N | --unix PATH)
//           [--host 127.0.0.1] [--clients C] [--seconds S] [--warmup W] [--size BYTES]
//           [--bytes TOTAL] [--line-bytes N] [--timeout-ms MS] [--settle S]
//           [--server-pid PID]
//
// Workloads (each client is a thread; one request = one line of --size bytes, '\n' last):
//   connrate  connect, send one line, read the reply up to its newline (or until the server
//             closes), close; repeat.                      unit: req
//   pingpong  one persistent connection per client: send a line, wait for its echo.  msg
//   udp       one socket per client: send a datagram, wait up to --timeout-ms for its echo;
//             no echo in time counts as lost.              pkt
//   bulk      one connection streams --bytes (256 MiB) in lines of --line-bytes through the
//             echo server, sending and receiving at once.  MiB
//   idle      --clients connections each make one round trip, then stay open and idle for
//             --settle seconds; reports the server's VmRSS and Threads (from
//             /proc/PID/status) before and with them open.
//
// The time-based workloads run for --warmup + --seconds; only what completes inside the
// measurement window (the last --seconds) counts. With --server-pid, the server's CPU time is
// sampled at both ends of that window: user+system time, including reaped children, of every
// process in the server's process group (bench/run starts each server with setsid), or of the
// server and its children when it leads no group. Output: one line of key=value pairs, e.g.
//   workload=pingpong clients=16 ops=81234 seconds=2.000 rate=40617 unit=msg p50_us=350.1
//   p99_us=1210.4 errors=0 server_cpu_us=1523000 cpu_us_per_op=18.75 client_cpu_us_per_op=21.3
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using bench::die;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// --- Options and the server's address ---------------------------------------------------

struct Options {
  std::string workload;
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int family = AF_INET;
  int clients = 1;
  double seconds = 2;
  double warmup = 0.5;
  std::size_t size = 64;
  std::size_t total_bytes = 256u << 20;
  std::size_t line_bytes = 16384;
  int timeout_ms = 2000;
  double settle = 1;
  pid_t server_pid = 0;
};

Options parse(int argc, char** argv) {
  const bench::Args args(
      argc, argv,
      {"workload", "host", "port", "unix", "clients", "seconds", "warmup", "size", "bytes",
       "line-bytes", "timeout-ms", "settle", "server-pid"},
      "usage: loadgen --workload connrate|pingpong|udp|bulk|idle (--port N | --unix PATH)\n"
      "       [--host 127.0.0.1] [--clients C] [--seconds S] [--warmup W] [--size BYTES]\n"
      "       [--bytes TOTAL] [--line-bytes N] [--timeout-ms MS] [--settle S] [--server-pid PID]");
  Options o;
  o.workload = args.choice("workload", {"connrate", "pingpong", "udp", "bulk", "idle"}, "");
  o.clients = static_cast<int>(args.integer("clients", o.workload == "idle" ? 1000 : 1));
  o.seconds = args.real("seconds", o.seconds);
  o.warmup = args.real("warmup", o.warmup);
  o.size = static_cast<std::size_t>(args.integer("size", 64));
  o.total_bytes = static_cast<std::size_t>(args.integer("bytes", 256ll << 20));
  o.line_bytes = static_cast<std::size_t>(args.integer("line-bytes", 16384));
  o.timeout_ms = static_cast<int>(args.integer("timeout-ms", 2000));
  o.settle = args.real("settle", 1);
  o.server_pid = static_cast<pid_t>(args.integer("server-pid", 0));
  if (o.clients < 1 || o.clients > 100000 || o.seconds <= 0 || o.seconds > 3600 || o.warmup < 0 ||
      o.warmup > 600 || o.size < 16 || o.size > 8192 || o.line_bytes < 2 ||
      o.line_bytes > (1u << 20) || o.timeout_ms < 1 || o.settle < 0 || o.settle > 600)
    die("loadgen: an option is out of range\n" + args.usage());

  if (args.has("unix") == args.has("port")) die("loadgen: give --port or --unix\n" + args.usage());
  if (args.has("unix")) {
    if (o.workload == "udp") die("loadgen: udp runs over 127.0.0.1 (--port)");
    const std::string path = args.str("unix", "");
    sockaddr_un un{};
    if (path.empty() || path.size() >= sizeof un.sun_path) die("loadgen: bad --unix path");
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path.data(), path.size());
    std::memcpy(&o.addr, &un, sizeof un);
    o.addr_len = sizeof un;
    o.family = AF_UNIX;
    return o;
  }
  const std::string host = args.str("host", "127.0.0.1");
  if (!bench::is_loopback(host)) die("loadgen: only loopback hosts (127.0.0.0/8, ::1)");
  const long long port = args.integer("port", 0);
  if (port < 1 || port > 65535) die("loadgen: bad --port");
  sockaddr_in in{};
  sockaddr_in6 in6{};
  if (::inet_pton(AF_INET, host.c_str(), &in.sin_addr) == 1) {
    in.sin_family = AF_INET;
    in.sin_port = htons(static_cast<std::uint16_t>(port));
    std::memcpy(&o.addr, &in, sizeof in);
    o.addr_len = sizeof in;
    o.family = AF_INET;
  } else {
    ::inet_pton(AF_INET6, host.c_str(), &in6.sin6_addr);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(static_cast<std::uint16_t>(port));
    std::memcpy(&o.addr, &in6, sizeof in6);
    o.addr_len = sizeof in6;
    o.family = AF_INET6;
  }
  return o;
}

// --- Sockets ------------------------------------------------------------------------------

/// Owns a descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

void set_timeouts(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // bounds connect() too
}

/// A connected stream socket (TCP_NODELAY, send/receive timeouts), or an empty Fd.
Fd connect_stream(const Options& o) {
  Fd fd(::socket(o.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fd;
  set_timeouts(fd.get(), o.timeout_ms);
  if (o.family != AF_UNIX) {
    const int on = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  }
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&o.addr), o.addr_len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) fd.reset();
  return fd;
}

bool send_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t sent = ::send(fd, data, size, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    data += sent;
    size -= static_cast<std::size_t>(sent);
  }
  return true;
}

/// Reads until `expected` (which ends with '\n') has arrived in full, or the peer closes.
/// True when exactly `expected` was received.
bool read_reply(int fd, const std::string& expected, std::vector<char>& buf) {
  std::size_t have = 0;
  buf.resize(expected.size() + 1);
  for (;;) {
    const ssize_t got = ::recv(fd, buf.data() + have, buf.size() - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // closed, timed out or failed
    have += static_cast<std::size_t>(got);
    if (buf[have - 1] == '\n' || have == buf.size()) break;
  }
  return have == expected.size() && std::memcmp(buf.data(), expected.data(), have) == 0;
}

/// A line of `size` bytes: "<client>:<text>...\n".
std::string make_line(std::size_t size, int client) {
  std::string line = std::to_string(client) + ":";
  while (line.size() < size - 1) line += static_cast<char>('a' + line.size() % 26);
  line.resize(size - 1);
  return line + "\n";
}

// --- The server's CPU time and memory -----------------------------------------------------

struct ProcStat {
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t pgrp = 0;
  unsigned long long own_ticks = 0;     // utime + stime: all of its threads, live and exited
  unsigned long long reaped_ticks = 0;  // cutime + cstime: the children it has reaped
};

/// Parses /proc/PID/stat.
std::optional<ProcStat> read_stat(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string text;
  if (!std::getline(in, text)) return std::nullopt;
  const auto paren = text.rfind(')');  // the command name may hold spaces and parentheses
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(text.substr(paren + 2));
  // Fields from 3 on: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
  // cmajflt utime stime cutime cstime.
  std::string state;
  long long ppid = 0, pgrp = 0, skip = 0;
  unsigned long long utime = 0, stime = 0, cutime = 0, cstime = 0;
  fields >> state >> ppid >> pgrp;
  for (int i = 0; i < 8; ++i) fields >> skip;
  fields >> utime >> stime >> cutime >> cstime;
  if (!fields) return std::nullopt;
  ProcStat s;
  s.pid = static_cast<pid_t>(std::stoll(pid));
  s.ppid = static_cast<pid_t>(ppid);
  s.pgrp = static_cast<pid_t>(pgrp);
  s.own_ticks = utime + stime;
  s.reaped_ticks = cutime + cstime;
  return s;
}

/// CPU microseconds used so far by the server, its threads and its child processes: every
/// process of its process group when it leads one (a reaped child's time is in its parent's
/// cutime/cstime, a live one is counted itself), else the server and its direct children.
std::optional<double> server_cpu_us(pid_t server) {
  const std::string server_pid = std::to_string(server);
  unsigned long long ticks = 0;
  // A child reaped while the others are scanned would be missed: not yet in the server's
  // cutime when that was read, gone when the scan gets to it. (A forking server's child that
  // served a whole run exits just as the window ends.) So scan again while the server's
  // reaped time changed during the scan; a server reaping all the time gets a few tries.
  for (int attempt = 0; attempt < 5; ++attempt) {
    const auto leader = read_stat(server_pid);
    if (!leader) return std::nullopt;
    const bool own_group = leader->pgrp == server;
    ticks = leader->own_ticks + leader->reaped_ticks;
    if (DIR* proc = ::opendir("/proc")) {
      while (const dirent* entry = ::readdir(proc)) {
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') continue;
        const auto s = read_stat(entry->d_name);
        if (!s || s->pid == server) continue;
        if (own_group ? s->pgrp == server : s->ppid == server)
          ticks += s->own_ticks + s->reaped_ticks;
      }
      ::closedir(proc);
    }
    const auto again = read_stat(server_pid);
    if (again && again->reaped_ticks == leader->reaped_ticks) break;
  }
  return static_cast<double>(ticks) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

/// This process's CPU microseconds (the load generator's own cost, for comparison).
double own_cpu_us() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

/// VmRSS (KiB) and Threads from /proc/PID/status.
struct Memory {
  long rss_kib = -1;
  long threads = -1;
};

Memory read_memory(pid_t pid) {
  Memory m;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  long value = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value)) continue;
    if (key == "VmRSS:") m.rss_kib = value;
    if (key == "Threads:") m.threads = value;
  }
  return m;
}

// --- Timed workloads ----------------------------------------------------------------------

/// What one client thread measured inside the window.
struct ClientStats {
  std::vector<float> latencies_us;
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
  std::uint64_t lost = 0;
};

struct Window {
  Clock::time_point start;  // measurement starts (after the warm-up)
  Clock::time_point end;    // measurement and the whole run end
  bool contains(Clock::time_point t) const { return t >= start && t < end; }
};

class ClientRecorder {
 public:
  ClientRecorder(ClientStats& stats, const Window& window) : stats_(stats), window_(window) {}
  void done(Clock::time_point began, Clock::time_point finished) {
    if (!window_.contains(finished)) return;
    ++stats_.ops;
    stats_.latencies_us.push_back(
        static_cast<float>(std::chrono::duration<double, std::micro>(finished - began).count()));
  }
  void error(Clock::time_point when) {
    if (window_.contains(when)) ++stats_.errors;
  }
  void lost(Clock::time_point when) {
    if (window_.contains(when)) ++stats_.lost;
  }

 private:
  ClientStats& stats_;
  const Window& window_;
};

void pause_after_error(const Window& w) {
  if (Clock::now() < w.end) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void connrate_client(const Options& o, const Window& w, int id, ClientStats& stats) {
  ClientRecorder rec(stats, w);
  const std::string line = make_line(o.size, id);
  std::vector<char> buf;
  while (Clock::now() < w.end) {
    const auto began = Clock::now();
    Fd fd = connect_stream(o);
    const bool ok =
        fd && send_all(fd.get(), line.data(), line.size()) && read_reply(fd.get(), line, buf);
    fd.reset();
    const auto finished = Clock::now();
    if (ok) {
      rec.done(began, finished);
    } else {
      rec.error(finished);
      pause_after_error(w);
    }
  }
}

void pingpong_client(const Options& o, const Window& w, int id, ClientStats& stats) {
  ClientRecorder rec(stats, w);
  const std::string line = make_line(o.size, id);
  std::vector<char> buf;
  Fd fd;
  while (Clock::now() < w.end) {
    if (!fd) {
      fd = connect_stream(o);
      if (!fd) {
        rec.error(Clock::now());
        pause_after_error(w);
        continue;
      }
    }
    const auto began = Clock::now();
    const bool ok = send_all(fd.get(), line.data(), line.size()) && read_reply(fd.get(), line, buf);
    const auto finished = Clock::now();
    if (ok) {
      rec.done(began, finished);
    } else {
      rec.error(finished);
      fd.reset();  // reconnect
    }
  }
}

void udp_client(const Options& o, const Window& w, int id, ClientStats& stats) {
  ClientRecorder rec(stats, w);
  Fd fd(::socket(o.family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&o.addr), o.addr_len) < 0) {
    ++stats.errors;
    return;
  }
  set_timeouts(fd.get(), o.timeout_ms);
  std::string packet = make_line(o.size, id);
  std::vector<char> buf(o.size + 1);
  for (std::uint64_t seq = 0; Clock::now() < w.end; ++seq) {
    std::memcpy(&packet[packet.size() - 1 - sizeof seq], &seq, sizeof seq);  // tags the echo
    const auto began = Clock::now();
    if (::send(fd.get(), packet.data(), packet.size(), 0) < 0) {
      rec.error(Clock::now());
      pause_after_error(w);  // e.g. ECONNREFUSED from an earlier packet's ICMP
      continue;
    }
    bool echoed = false;
    for (;;) {  // skip late echoes of earlier packets; ends on the timeout
      const ssize_t got = ::recv(fd.get(), buf.data(), buf.size(), 0);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) break;
      if (static_cast<std::size_t>(got) == packet.size() &&
          std::memcmp(buf.data(), packet.data(), packet.size()) == 0) {
        echoed = true;
        break;
      }
    }
    const auto finished = Clock::now();
    if (echoed) {
      rec.done(began, finished);
    } else {
      rec.lost(finished);
    }
  }
}

struct Summary {
  double ops = 0;  // requests, messages or packets; MiB for bulk
  std::uint64_t errors = 0;
  std::uint64_t lost = 0;
  double seconds = 0;
  double p50_us = NAN;
  double p99_us = NAN;
  double server_cpu_us = NAN;
  double client_cpu_us = NAN;
};

/// Samples the server's and this process's CPU time.
struct CpuSample {
  std::optional<double> server_us;
  double own_us;
  static CpuSample take(const Options& o) {
    return {o.server_pid != 0 ? server_cpu_us(o.server_pid) : std::nullopt, own_cpu_us()};
  }
};

void charge(Summary& s, const CpuSample& before, const CpuSample& after) {
  if (before.server_us && after.server_us) s.server_cpu_us = *after.server_us - *before.server_us;
  s.client_cpu_us = after.own_us - before.own_us;
}

/// The nearest-rank percentile p (0 < p <= 1) of sorted samples.
float percentile(const std::vector<float>& sorted, double p) {
  if (sorted.empty()) return NAN;
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size(), std::max<std::size_t>(rank, 1)) - 1];
}

Clock::duration to_duration(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

/// Runs o.clients threads of `client` for the warm-up and the window, sampling CPU time at
/// the window's ends.
template <class Client>
Summary run_clients(const Options& o, Client client) {
  Window w;
  w.start = Clock::now() + to_duration(o.warmup);
  w.end = w.start + to_duration(o.seconds);
  std::vector<ClientStats> stats(static_cast<std::size_t>(o.clients));
  std::vector<std::thread> threads;
  threads.reserve(stats.size());
  for (std::size_t i = 0; i < stats.size(); ++i)
    threads.emplace_back(client, std::cref(o), std::cref(w), static_cast<int>(i),
                         std::ref(stats[i]));

  std::this_thread::sleep_until(w.start);
  const CpuSample before = CpuSample::take(o);
  const auto t0 = Clock::now();
  std::this_thread::sleep_until(w.end);
  const CpuSample after = CpuSample::take(o);
  Summary s;
  s.seconds = seconds_between(t0, Clock::now());
  charge(s, before, after);
  for (std::thread& t : threads) t.join();  // each ends within --timeout-ms of w.end

  std::vector<float> all;
  for (const ClientStats& c : stats) {
    s.ops += static_cast<double>(c.ops);
    s.errors += c.errors;
    s.lost += c.lost;
    all.insert(all.end(), c.latencies_us.begin(), c.latencies_us.end());
  }
  std::sort(all.begin(), all.end());
  s.p50_us = percentile(all, 0.50);
  s.p99_us = percentile(all, 0.99);
  return s;
}

// --- Bulk ---------------------------------------------------------------------------------

/// Streams o.total_bytes in lines of o.line_bytes through the echo server over one
/// connection, sending in one thread and receiving in this one; stops sending at --seconds.
Summary run_bulk(const Options& o) {
  Summary s;
  Fd fd = connect_stream(o);
  if (!fd) {
    s.errors = 1;
    return s;
  }
  const std::size_t lines = std::max<std::size_t>(1, o.total_bytes / o.line_bytes);
  const std::size_t lines_per_chunk = std::max<std::size_t>(1, (64u << 10) / o.line_bytes);
  std::string chunk;
  for (std::size_t i = 0; i < lines_per_chunk; ++i) chunk += make_line(o.line_bytes, 0);
  const auto deadline = Clock::now() + to_duration(o.seconds);

  const CpuSample before = CpuSample::take(o);
  const auto t0 = Clock::now();
  std::atomic<std::size_t> sent{0};
  std::atomic<bool> send_failed{false};
  std::thread sender([&] {
    for (std::size_t left = lines; left > 0 && Clock::now() < deadline;) {
      const std::size_t n = std::min(left, lines_per_chunk);
      if (!send_all(fd.get(), chunk.data(), n * o.line_bytes)) {
        send_failed = true;
        break;
      }
      left -= n;
      sent += n * o.line_bytes;
    }
    ::shutdown(fd.get(), SHUT_WR);  // the server's echo loop sees EOF and closes
  });
  std::vector<char> buf(256u << 10);
  std::size_t received = 0;
  bool clean_eof = false;
  for (;;) {  // ends at EOF, or after --timeout-ms without data
    const ssize_t got = ::recv(fd.get(), buf.data(), buf.size(), 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      clean_eof = got == 0;
      break;
    }
    received += static_cast<std::size_t>(got);
  }
  const auto t1 = Clock::now();
  const CpuSample after = CpuSample::take(o);
  sender.join();

  s.seconds = seconds_between(t0, t1);
  s.ops = static_cast<double>(received) / (1 << 20);
  s.errors = (send_failed || !clean_eof || received != sent) ? 1 : 0;
  charge(s, before, after);
  return s;
}

// --- Idle connections ---------------------------------------------------------------------

/// Opens o.clients connections (one round trip each, so the server has accepted and served
/// them), holds them idle for --settle seconds and reports the server's memory and threads.
void run_idle(const Options& o) {
  if (o.server_pid == 0) die("loadgen: idle needs --server-pid");
  const Memory before = read_memory(o.server_pid);
  std::vector<Fd> open;
  open.reserve(static_cast<std::size_t>(o.clients));
  std::uint64_t errors = 0;
  std::vector<char> buf;
  const auto deadline = Clock::now() + to_duration(o.seconds);
  for (int i = 0; i < o.clients && Clock::now() < deadline; ++i) {
    const std::string line = make_line(o.size, i);
    Fd fd = connect_stream(o);
    if (fd && send_all(fd.get(), line.data(), line.size()) && read_reply(fd.get(), line, buf))
      open.push_back(std::move(fd));
    else
      ++errors;
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(o.settle));
  const Memory during = read_memory(o.server_pid);
  const std::size_t conns = open.size();
  open.clear();
  const double per_conn =
      conns > 0 ? static_cast<double>(during.rss_kib - before.rss_kib) / static_cast<double>(conns)
                : NAN;
  std::printf(
      "workload=idle clients=%d conns=%zu errors=%llu rss_before_kib=%ld rss_kib=%ld "
      "rss_per_conn_kib=%.2f threads_before=%ld threads=%ld\n",
      o.clients, conns, static_cast<unsigned long long>(errors), before.rss_kib, during.rss_kib,
      per_conn, before.threads, during.threads);
}

/// Raises the soft descriptor limit to the hard one (1,000 idle connections need it).
void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  raise_fd_limit();
  if (o.workload == "idle") {
    run_idle(o);
    return 0;
  }
  Summary s;
  const char* unit = "req";
  if (o.workload == "connrate") {
    s = run_clients(o, connrate_client);
  } else if (o.workload == "pingpong") {
    s = run_clients(o, pingpong_client);
    unit = "msg";
  } else if (o.workload == "udp") {
    s = run_clients(o, udp_client);
    unit = "pkt";
  } else {
    s = run_bulk(o);
    unit = "MiB";
  }
  const double per_op = s.ops > 0 ? 1.0 / s.ops : NAN;
  std::printf(
      "workload=%s clients=%d ops=%.1f seconds=%.3f rate=%.1f unit=%s p50_us=%.1f "
      "p99_us=%.1f errors=%llu lost=%llu server_cpu_us=%.0f cpu_us_per_op=%.3f "
      "client_cpu_us_per_op=%.3f\n",
      o.workload.c_str(), o.workload == "bulk" ? 1 : o.clients, s.ops, s.seconds,
      s.seconds > 0 ? s.ops / s.seconds : 0.0, unit, s.p50_us, s.p99_us,
      static_cast<unsigned long long>(s.errors), static_cast<unsigned long long>(s.lost),
      s.server_cpu_us, s.server_cpu_us * per_op, s.client_cpu_us * per_op);
  return s.ops > 0 ? 0 : 1;
}
