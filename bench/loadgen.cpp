// SPDX-License-Identifier: MIT
// loadgen: the load generator of bench/run. Loopback only, every run bounded in time.
//
//   loadgen --workload connrate|pingpong|udp|bulk|idle (--port N | --unix PATH)
//           [--host 127.0.0.1] [--clients C] [--seconds S] [--warmup W] [--size BYTES]
//           [--bytes TOTAL] [--line-bytes N] [--timeout-ms MS] [--settle S]
//           [--active A] [--open-seconds S] [--server-pid PID] [--proxy v1|v2]
//
// Workloads (each client is a thread; one request = one line of --size bytes, '\n' last):
//   connrate  connect, send one line, read the reply up to its newline (or until the server
//             closes), close; repeat.                      unit: req
//   pingpong  one persistent connection per client: send a line, wait for its echo.  msg
//   udp       one socket per client: send a datagram, wait up to --timeout-ms for its echo;
//             no echo in time counts as lost.              pkt
//   bulk      one connection streams --bytes (256 MiB) in lines of --line-bytes through the
//             echo server, sending and receiving at once.  MiB
//   idle      --clients (I, default 10,000) idle connections plus --active (A, default 16)
//             pingpong clients, in this process. First the A clients run alone (warm-up and
//             window: the baseline); then the I connections open, each sends one line and
//             waits for its echo (so the server has accepted it and its handler is running),
//             at most 64 at a time, within --open-seconds, and stop when none completes for
//             --timeout-ms (a server that stopped serving); after --settle seconds, A fresh
//             clients run again with the idle ones open. The server's VmRSS and Threads (from
//             /proc/PID/status) are sampled at the start of each window (A connected), so
//             RSS per idle connection = (RSS with - RSS without) / idle connections open.
//             Idle errors: could not connect, no echo, not tried (open stopped), or found
//             closed by the server at the end; an active client that completed nothing in
//             a window counts as an error too (active_silent). I is lowered to what the descriptor
//             limits (loadgen's and the server's, raised to the hard limit) fit, and says so. With
//             --active 0, only the memory and threads.       unit: msg
//
// --proxy v1|v2 (connrate only): each connection's line is preceded, in the same send(), by a
// PROXY protocol header naming the client 192.0.2.1 (port: the client's number), as a load
// balancer sends it, for a server started with --proxy.
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
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
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
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
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
  int active = 16;           // idle: the pingpong clients measured alongside
  double open_seconds = 60;  // idle: the most time opening the idle connections may take
  pid_t server_pid = 0;
  std::string proxy_header;  // --proxy: sent before each connection's line (connrate)
  int proxy_version = 0;
};

/// The PROXY protocol header (version 1 or 2) a balancer sends for client 192.0.2.1:port.
std::string proxy_header(int version, int port) {
  if (version == 1) return "PROXY TCP4 192.0.2.1 127.0.0.1 " + std::to_string(port) + " 443\r\n";
  std::string h("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c", 16);
  const unsigned char block[12] = {192,
                                   0,
                                   2,
                                   1,
                                   127,
                                   0,
                                   0,
                                   1,
                                   static_cast<unsigned char>(port >> 8),
                                   static_cast<unsigned char>(port & 0xFF),
                                   1,
                                   187};
  h.append(reinterpret_cast<const char*>(block), sizeof block);
  return h;
}

Options parse(int argc, char** argv) {
  const bench::Args args(
      argc, argv,
      {"workload", "host", "port", "unix", "clients", "seconds", "warmup", "size", "bytes",
       "line-bytes", "timeout-ms", "settle", "active", "open-seconds", "server-pid", "proxy"},
      "usage: loadgen --workload connrate|pingpong|udp|bulk|idle (--port N | --unix PATH)\n"
      "       [--host 127.0.0.1] [--clients C] [--seconds S] [--warmup W] [--size BYTES]\n"
      "       [--bytes TOTAL] [--line-bytes N] [--timeout-ms MS] [--settle S] [--active A]\n"
      "       [--open-seconds S] [--server-pid PID] [--proxy v1|v2]");
  Options o;
  o.workload = args.choice("workload", {"connrate", "pingpong", "udp", "bulk", "idle"}, "");
  o.clients = static_cast<int>(args.integer("clients", o.workload == "idle" ? 10000 : 1));
  o.seconds = args.real("seconds", o.seconds);
  o.warmup = args.real("warmup", o.warmup);
  o.size = static_cast<std::size_t>(args.integer("size", 64));
  o.total_bytes = static_cast<std::size_t>(args.integer("bytes", 256ll << 20));
  o.line_bytes = static_cast<std::size_t>(args.integer("line-bytes", 16384));
  o.timeout_ms = static_cast<int>(args.integer("timeout-ms", 2000));
  o.settle = args.real("settle", 1);
  o.active = static_cast<int>(args.integer("active", 16));
  o.open_seconds = args.real("open-seconds", 60);
  o.server_pid = static_cast<pid_t>(args.integer("server-pid", 0));
  const std::string proxy = args.choice("proxy", {"none", "v1", "v2"}, "none");
  o.proxy_version = proxy == "v1" ? 1 : proxy == "v2" ? 2 : 0;
  if (o.proxy_version != 0 && o.workload != "connrate")
    die("loadgen: --proxy is for the connrate workload");
  if (o.clients < 1 || o.clients > 100000 || o.seconds <= 0 || o.seconds > 3600 || o.warmup < 0 ||
      o.warmup > 600 || o.size < 16 || o.size > 8192 || o.line_bytes < 2 ||
      o.line_bytes > (1u << 20) || o.timeout_ms < 1 || o.settle < 0 || o.settle > 600 ||
      o.active < 0 || o.active > 10000 || o.open_seconds <= 0 || o.open_seconds > 600)
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
  const std::string sent =
      (o.proxy_version != 0 ? proxy_header(o.proxy_version, 1024 + id) : std::string()) + line;
  std::vector<char> buf;
  while (Clock::now() < w.end) {
    const auto began = Clock::now();
    Fd fd = connect_stream(o);
    const bool ok =
        fd && send_all(fd.get(), sent.data(), sent.size()) && read_reply(fd.get(), line, buf);
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
  std::uint64_t silent = 0;  // clients that completed nothing and saw no error in the window
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
/// the window's ends; `at_start` runs once the window has started (every client connected).
template <class Client>
Summary run_clients(const Options& o, Client client, const std::function<void()>& at_start = {}) {
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
  if (at_start) at_start();
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
    // Stuck in a read or connect (up to --timeout-ms) past the window's end: its error
    // came too late to count, but a client that completed nothing has failed.
    if (c.ops == 0 && c.errors == 0 && c.lost == 0) ++s.silent;
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

/// The idle connections once opened. `open` were echoed: the server accepted each and its
/// handler (thread, coroutine or callback) is waiting for the next line. `unserved`
/// connected but got no echo in time (e.g. queued behind a pool whose workers are all
/// taken): they stay open, as such clients would, and count as errors.
struct IdleSet {
  std::vector<Fd> open;
  std::vector<Fd> unserved;
  std::uint64_t connect_failed = 0;  // socket() or connect() failed, or still connecting
  std::uint64_t skipped = 0;         // not tried: the open deadline passed, or progress stopped
  std::uint64_t bad_echo = 0;        // closed before its echo, or a wrong echo
  int first_errno = 0;               // the first socket()/connect() error, for the message
  double seconds = 0;                // time taken to open them
};

/// One connection being opened: connecting, or (ping sent) waiting for its echo.
struct Opening {
  Fd fd;
  bool connected = false;
  std::string line;
  std::size_t have = 0;
  char buf[256];
};

/// Opens `count` idle connections without a thread each: non-blocking connect, one line,
/// its echo, at most `in_flight` at a time (under the listen backlog of 128, so that the
/// kernel never drops a SYN and a client waits for TCP's 1 s retransmission). Stops at
/// --open-seconds, or once no echo arrived for --timeout-ms: a server that stopped serving
/// must not hold the run for longer.
IdleSet open_idle(const Options& o, int count) {
  constexpr int in_flight = 64;
  IdleSet set;
  set.open.reserve(static_cast<std::size_t>(count));
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) die(std::string("loadgen: epoll_create1: ") + std::strerror(errno));
  std::vector<Opening> slots(in_flight);
  std::vector<int> free_slots;
  for (int i = in_flight - 1; i >= 0; --i) free_slots.push_back(i);

  const auto began = Clock::now();
  const auto deadline = began + to_duration(o.open_seconds);
  const auto stall = std::chrono::milliseconds(o.timeout_ms);
  auto last_echo = began;
  auto failed = [&](int errno_value) {
    ++set.connect_failed;
    if (set.first_errno == 0) set.first_errno = errno_value;
  };
  auto watch = [&](int slot, int op, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = static_cast<std::uint64_t>(slot);
    return ::epoll_ctl(epoll.get(), op, slots[static_cast<std::size_t>(slot)].fd.get(), &ev) == 0;
  };
  auto release = [&](int slot) {
    Opening& c = slots[static_cast<std::size_t>(slot)];
    if (c.fd) ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
    c.fd.reset();
    free_slots.push_back(slot);
  };
  auto send_ping = [&](int slot) {  // connected: send the line, then wait for its echo
    Opening& c = slots[static_cast<std::size_t>(slot)];
    c.connected = true;
    const ssize_t sent = ::send(c.fd.get(), c.line.data(), c.line.size(), MSG_NOSIGNAL);
    if (sent != static_cast<ssize_t>(c.line.size()) || !watch(slot, EPOLL_CTL_MOD, EPOLLIN)) {
      ++set.bad_echo;  // a fresh socket's buffer always takes one short line
      release(slot);
    }
  };

  int next = 0;
  while ((next < count || free_slots.size() < slots.size()) && Clock::now() < deadline &&
         Clock::now() - last_echo < stall) {
    while (next < count && !free_slots.empty()) {
      const int slot = free_slots.back();
      free_slots.pop_back();
      Opening& c = slots[static_cast<std::size_t>(slot)];
      c = Opening{};
      c.line = make_line(o.size, next++);
      c.fd = Fd(::socket(o.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!c.fd) {
        failed(errno);
        free_slots.push_back(slot);
        continue;
      }
      if (o.family != AF_UNIX) {
        const int on = 1;
        ::setsockopt(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      }
      const int rc = ::connect(c.fd.get(), reinterpret_cast<const sockaddr*>(&o.addr), o.addr_len);
      if (rc < 0 && errno != EINPROGRESS) {
        failed(errno);
        c.fd.reset();
        free_slots.push_back(slot);
        continue;
      }
      if (!watch(slot, EPOLL_CTL_ADD, EPOLLOUT)) {
        failed(errno);
        c.fd.reset();
        free_slots.push_back(slot);
        continue;
      }
      if (rc == 0) send_ping(slot);
    }
    epoll_event events[in_flight];
    const int n = ::epoll_wait(epoll.get(), events, in_flight, 50);
    if (n < 0 && errno != EINTR) die(std::string("loadgen: epoll_wait: ") + std::strerror(errno));
    for (int e = 0; e < n; ++e) {
      const int slot = static_cast<int>(events[e].data.u64);
      Opening& c = slots[static_cast<std::size_t>(slot)];
      if (!c.fd) continue;
      if (!c.connected) {
        int error = 0;
        socklen_t len = sizeof error;
        ::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &error, &len);
        if (error != 0) {
          failed(error);
          release(slot);
        } else {
          send_ping(slot);
        }
        continue;
      }
      const ssize_t got = ::recv(c.fd.get(), c.buf + c.have, sizeof c.buf - c.have, 0);
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (got > 0) c.have += static_cast<std::size_t>(got);
      const bool complete = c.have > 0 && (c.buf[c.have - 1] == '\n' || c.have == sizeof c.buf);
      if (got > 0 && !complete) continue;
      if (got > 0 && c.have == c.line.size() && std::memcmp(c.buf, c.line.data(), c.have) == 0) {
        ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
        set.open.push_back(std::move(c.fd));
        last_echo = Clock::now();
        free_slots.push_back(slot);
      } else {
        ++set.bad_echo;
        release(slot);
      }
    }
  }
  // What is left: connected ones wait for an echo that did not come (kept open), the others
  // are still connecting (closed).
  for (std::size_t i = 0; i < slots.size(); ++i) {
    Opening& c = slots[i];
    if (!c.fd) continue;
    ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
    if (c.connected) {
      set.unserved.push_back(std::move(c.fd));
    } else {
      failed(ETIMEDOUT);
      c.fd.reset();
    }
  }
  set.skipped = static_cast<std::uint64_t>(count - next);
  set.seconds = seconds_between(began, Clock::now());
  return set;
}

/// How many of `fds` the server has closed (or sent something unasked on): an idle
/// connection must stay open and quiet for the whole run.
std::uint64_t count_closed(const std::vector<Fd>& fds) {
  std::vector<pollfd> polls;
  polls.reserve(fds.size());
  for (const Fd& fd : fds) polls.push_back(pollfd{fd.get(), POLLIN | POLLRDHUP, 0});
  if (polls.empty() || ::poll(polls.data(), polls.size(), 0) < 0) return 0;
  std::uint64_t closed = 0;
  for (const pollfd& p : polls) closed += p.revents != 0 ? 1 : 0;
  return closed;
}

/// The soft limit on open descriptors of process `pid` ("Max open files" in
/// /proc/PID/limits), or 0 when unknown.
unsigned long long fd_limit_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max open files")));
    std::string soft;
    fields >> soft;
    if (soft == "unlimited") return ~0ull;
    return std::strtoull(soft.c_str(), nullptr, 10);
  }
  return 0;
}

/// The CPUs process `pid` may run on (0 for this one), as a list: "0-1", "0", "1".
std::string cpus_of(pid_t pid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(pid, sizeof set, &set) != 0) return "?";
  std::string text;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    int last = cpu;
    while (last + 1 < CPU_SETSIZE && CPU_ISSET(last + 1, &set)) ++last;
    if (!text.empty()) text += ",";
    text += last == cpu ? std::to_string(cpu) : std::to_string(cpu) + "-" + std::to_string(last);
    cpu = last;
  }
  return text;
}

/// idle: see the header. Prints one line; 1 when the active clients completed nothing
/// even without idle connections (the server does not work at all).
int run_idle(const Options& o) {
  if (o.server_pid == 0) die("loadgen: idle needs --server-pid");
  // Descriptors: each side holds I + A sockets plus a few of its own (stdio, listener,
  // epoll, /proc files). The hard limits decide how many idle connections fit.
  constexpr unsigned long long spare = 64;
  const unsigned long long own_limit = bench::raise_fd_limit();
  const unsigned long long server_limit = fd_limit_of(o.server_pid);
  auto fits = [&](unsigned long long limit) {
    const unsigned long long reserved = spare + static_cast<unsigned long long>(o.active);
    return limit == 0 ? ~0ull : (limit > reserved ? limit - reserved : 0);
  };
  const unsigned long long fit = std::min(fits(own_limit), fits(server_limit));
  const int tried = static_cast<int>(std::min<unsigned long long>(fit, o.clients));
  if (tried < o.clients)
    std::fprintf(stderr,
                 "loadgen: descriptor limits (loadgen %llu, server %llu, after raising the soft "
                 "limit to the hard one) fit %d idle connections, not %d: measuring %d\n",
                 own_limit, server_limit, tried, o.clients, tried);

  Options active = o;
  active.clients = o.active;
  Memory without, with;
  Summary base, loaded;
  if (o.active > 0) {
    base = run_clients(active, pingpong_client, [&] { without = read_memory(o.server_pid); });
  } else {
    without = read_memory(o.server_pid);
  }
  IdleSet idle = open_idle(o, tried);
  std::this_thread::sleep_for(std::chrono::duration<double>(o.settle));
  if (o.active > 0) {
    loaded = run_clients(active, pingpong_client, [&] { with = read_memory(o.server_pid); });
  } else {
    with = read_memory(o.server_pid);
  }
  const std::uint64_t closed = count_closed(idle.open);
  const std::size_t open = idle.open.size();
  const std::uint64_t idle_errors = idle.connect_failed + idle.skipped + idle.bad_echo +
                                    idle.unserved.size() + closed +
                                    static_cast<std::uint64_t>(o.clients - tried);
  if (idle.first_errno != 0)
    std::fprintf(stderr, "loadgen: idle connect to the server failed: %s (%llu times)\n",
                 std::strerror(idle.first_errno),
                 static_cast<unsigned long long>(idle.connect_failed));
  const double per_conn =
      open > 0 ? static_cast<double>(with.rss_kib - without.rss_kib) / static_cast<double>(open)
               : NAN;
  // A client that completed nothing in a window counts as an error, as a failed one does.
  const std::uint64_t base_errors = base.errors + base.silent;
  const std::uint64_t loaded_errors = loaded.errors + loaded.silent;
  auto per_op = [](const Summary& s) { return s.ops > 0 ? s.server_cpu_us / s.ops : NAN; };
  auto rate = [](const Summary& s) { return s.seconds > 0 ? s.ops / s.seconds : 0.0; };
  std::printf(
      "workload=idle idle=%d idle_tried=%d idle_open=%zu idle_errors=%llu "
      "idle_connect_failed=%llu idle_unserved=%zu idle_bad_echo=%llu idle_skipped=%llu "
      "idle_closed=%llu open_seconds=%.2f active=%d ops=%.1f seconds=%.3f rate=%.1f unit=msg "
      "p50_us=%.1f p99_us=%.1f active_errors=%llu active_silent=%llu errors=%llu "
      "server_cpu_us=%.0f "
      "cpu_us_per_op=%.3f client_cpu_us_per_op=%.3f base_ops=%.1f base_rate=%.1f "
      "base_p50_us=%.1f base_p99_us=%.1f base_errors=%llu base_cpu_us_per_op=%.3f "
      "rss_before_kib=%ld rss_kib=%ld rss_per_conn_kib=%.2f threads_before=%ld threads=%ld "
      "fd_limit=%llu server_fd_limit=%llu cpus=%ld server_cpus=%s loadgen_cpus=%s\n",
      o.clients, tried, open, static_cast<unsigned long long>(idle_errors),
      static_cast<unsigned long long>(idle.connect_failed), idle.unserved.size(),
      static_cast<unsigned long long>(idle.bad_echo), static_cast<unsigned long long>(idle.skipped),
      static_cast<unsigned long long>(closed), idle.seconds, o.active, loaded.ops, loaded.seconds,
      rate(loaded), loaded.p50_us, loaded.p99_us, static_cast<unsigned long long>(loaded_errors),
      static_cast<unsigned long long>(loaded.silent),
      static_cast<unsigned long long>(base_errors + loaded_errors + idle_errors),
      loaded.server_cpu_us, per_op(loaded),
      loaded.ops > 0 ? loaded.client_cpu_us / loaded.ops : NAN, base.ops, rate(base), base.p50_us,
      base.p99_us, static_cast<unsigned long long>(base_errors), per_op(base), without.rss_kib,
      with.rss_kib, per_conn, without.threads, with.threads, own_limit, server_limit,
      ::sysconf(_SC_NPROCESSORS_ONLN), cpus_of(o.server_pid).c_str(), cpus_of(0).c_str());
  return o.active > 0 && base.ops == 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  bench::raise_fd_limit();
  if (o.workload == "idle") return run_idle(o);
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
