// SPDX-License-Identifier: MIT
// reader and writer (the handlers' rfile and wfile) driven directly over a socketpair, and
// the basics of socket_view/socket they stand on: timeouts, moves, close and detach.
//
// The reader's results must not depend on how the peer's bytes were split across recv()
// calls. A Feeder thread writes a payload chunk by chunk and only writes the next chunk once
// the reader has taken every byte of the previous one from the socket, so a recv() returns
// bytes of one chunk only (barring the rare case where the next chunk lands while a recv is
// still finishing the previous one, which only makes a run less precise, never flaky): the
// recv boundaries are the chunk boundaries, or finer when the reader asks for less. Results
// are compared with a plain model of the same calls on the whole payload.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;

// A connected AF_UNIX stream pair: the test writes to `out`, a reader reads `in`.
struct Pair {
  ss::socket out;
  ss::socket in;
};

Pair socket_pair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0 || !ss::detail::set_fd_flags(fds[0], false) ||
      !ss::detail::set_fd_flags(fds[1], false))
    throw std::system_error(errno, std::system_category(), "socketpair");
  Pair p{ss::socket(fds[0]), ss::socket(fds[1])};
  p.in.settimeout(std::chrono::seconds(20));  // a test that would hang fails instead
  p.out.settimeout(std::chrono::seconds(20));
  return p;
}

// Bytes waiting in fd's receive queue.
int queued(int fd) {
  int n = -1;
  if (::ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

// Everything the socket has received so far, without waiting (raw recv, not the library).
std::string pending(int fd) {
  std::string out;
  char buf[4096];
  for (int i = 0; i < 100000; ++i) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

// The error code of the std::system_error that f() throws; none if it throws nothing.
template <class F>
std::error_code error_of(F f) {
  try {
    f();
  } catch (const std::system_error& e) {
    return e.code();
  }
  return {};
}

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

// Writes chunks to `out` one at a time from a thread; each next chunk only once `in` has an
// empty receive queue; shuts down the sending side after the last one (if asked).
class Feeder {
 public:
  Feeder(const ss::socket& out, const ss::socket& in, std::vector<std::string> chunks,
         bool shut_down_after = true)
      : chunks_(std::move(chunks)),
        thread_([this, &out, &in, shut_down_after] { run(out, in, shut_down_after); }) {}
  Feeder(const Feeder&) = delete;
  Feeder& operator=(const Feeder&) = delete;
  ~Feeder() { join(); }
  void join() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // "" if every chunk was written and the reader took each before the next was written.
  const std::string& error() {
    join();
    return error_;
  }

 private:
  void run(const ss::socket& out, const ss::socket& in, bool shut_down_after) {
    using clock = std::chrono::steady_clock;
    try {
      for (std::size_t i = 0; i < chunks_.size(); ++i) {
        if (i > 0) {
          const auto deadline = clock::now() + std::chrono::seconds(10);
          while (queued(in.fileno()) != 0) {
            if (stop_ || clock::now() > deadline) {
              error_ = "the reader did not take chunk " + std::to_string(i - 1);
              return;
            }
            std::this_thread::yield();
          }
        }
        out.sendall(chunks_[i]);
      }
      if (shut_down_after) out.shutdown(SHUT_WR);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }

  std::vector<std::string> chunks_;
  std::atomic<bool> stop_{false};
  std::string error_;
  std::thread thread_;
};

// --- A plain model of the reader's calls over the whole payload --------------------------

struct Model {
  std::string data;
  std::size_t max_line_length = 0;
  std::size_t pos = 0;

  std::string read(std::ptrdiff_t n) {
    const std::size_t k = n < 0 ? std::string::npos : static_cast<std::size_t>(n);
    std::string out = data.substr(pos, k);
    pos += out.size();
    return out;
  }
  std::string readline(std::ptrdiff_t limit) {
    std::size_t cap = limit >= 0 ? static_cast<std::size_t>(limit)
                                 : (max_line_length ? max_line_length : std::string::npos);
    std::size_t n = std::min(cap, data.size() - pos);
    const std::size_t nl = data.find('\n', pos);
    if (nl != std::string::npos && nl - pos < n) n = nl - pos + 1;
    return read(static_cast<std::ptrdiff_t>(n));
  }
};

enum class Op { read_n, read_all, readline, readlines, iterate };
struct Step {
  Op op;
  std::ptrdiff_t arg;  // read_n: n; readline: limit (-1 for none)
};
using Script = std::vector<Step>;

std::string show(const std::string& s) {  // make '\0' and '\n' visible in failure messages
  std::string out;
  for (char c : s) {
    if (c == '\0')
      out += "\\0";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::vector<std::string> run_model(Model& m, const Script& script) {
  std::vector<std::string> out;
  for (const Step& s : script) {
    switch (s.op) {
      case Op::read_n:
        out.push_back("read(" + std::to_string(s.arg) + ")=" + show(m.read(s.arg)));
        break;
      case Op::read_all:
        out.push_back("read()=" + show(m.read(-1)));
        break;
      case Op::readline:
        out.push_back("readline(" + std::to_string(s.arg) + ")=" + show(m.readline(s.arg)));
        break;
      case Op::readlines:
      case Op::iterate: {
        const char* name = s.op == Op::readlines ? "readlines:" : "iter:";
        for (int i = 0; i < 100000; ++i) {
          std::string line = m.readline(-1);
          if (line.empty()) break;
          out.push_back(name + show(line));
        }
        out.push_back(std::string(name) + "end");
        break;
      }
    }
  }
  return out;
}

// Runs the script on r; `problems` collects broken invariants of buffered().
std::vector<std::string> run_reader(ss::reader& r, const Script& script, bool unbuffered,
                                    std::string& problems) {
  std::vector<std::string> out;
  for (const Step& s : script) {
    switch (s.op) {
      case Op::read_n:
        out.push_back("read(" + std::to_string(s.arg) + ")=" + show(r.read(s.arg)));
        break;
      case Op::read_all:
        out.push_back("read()=" + show(r.read()));
        if (r.buffered() != 0) problems += "buffered() != 0 after read(); ";
        break;
      case Op::readline:
        out.push_back("readline(" + std::to_string(s.arg) + ")=" + show(r.readline(s.arg)));
        break;
      case Op::readlines:
        for (const std::string& line : r.readlines()) out.push_back("readlines:" + show(line));
        out.push_back("readlines:end");
        break;
      case Op::iterate: {
        int n = 0;
        for (const std::string& line : r) {
          out.push_back("iter:" + show(line));
          if (++n > 100000) break;
        }
        out.push_back("iter:end");
        break;
      }
    }
    if (unbuffered && r.buffered() != 0) problems += "an unbuffered reader buffered bytes; ";
  }
  return out;
}

std::vector<std::string> split_at(const std::string& s, std::vector<std::size_t> cuts) {
  std::vector<std::string> chunks;
  std::size_t from = 0;
  for (std::size_t cut : cuts) {
    chunks.push_back(s.substr(from, cut - from));
    from = cut;
  }
  chunks.push_back(s.substr(from));
  return chunks;
}

std::vector<std::string> random_chunks(const std::string& s, std::mt19937& rng,
                                       std::size_t max_chunk) {
  std::uniform_int_distribution<std::size_t> size(1, max_chunk);
  std::vector<std::string> chunks;
  for (std::size_t from = 0; from < s.size();) {
    const std::size_t n = size(rng);
    chunks.push_back(s.substr(from, n));
    from += n;
  }
  if (chunks.empty()) chunks.push_back("");
  return chunks;
}

Script random_script(std::mt19937& rng) {
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_int_distribution<std::ptrdiff_t> n(0, 12);
  Script script;
  const int steps = std::uniform_int_distribution<int>(1, 10)(rng);
  for (int i = 0; i < steps; ++i) {
    switch (kind(rng)) {
      case 0:
      case 1:
      case 2:
        script.push_back({Op::read_n, n(rng)});
        break;
      case 3:
      case 4:
      case 5:
        script.push_back({Op::readline, -1});
        break;
      case 6:
      case 7:
        script.push_back({Op::readline, n(rng)});
        break;
      case 8:
        script.push_back({Op::readlines, 0});
        break;
      default:
        script.push_back({Op::iterate, 0});
        break;
    }
  }
  script.push_back({Op::read_all, 0});  // always drain, so the feeder never waits in vain
  return script;
}

const std::string& main_payload() {
  static const std::string payload = std::string("alpha\n\nbeta gamma delta epsilon zeta eta\n") +
                                     std::string("\0bin\0ary\n", 9) +
                                     "\n\nx\nthe last line has no newline";
  return payload;
}

// readline(limit) for each limit, then read() to the end.
Script readlines_with(std::initializer_list<std::ptrdiff_t> limits) {
  Script script;
  for (std::ptrdiff_t limit : limits) script.push_back({Op::readline, limit});
  script.push_back({Op::read_all, 0});
  return script;
}

// read(n) for each n, then read() to the end.
Script reads_of(std::initializer_list<std::ptrdiff_t> sizes) {
  Script script;
  for (std::ptrdiff_t n : sizes) script.push_back({Op::read_n, n});
  script.push_back({Op::read_all, 0});
  return script;
}

std::vector<Script> fixed_scripts() {
  return {
      {{Op::readlines, 0}, {Op::read_all, 0}},
      {{Op::iterate, 0}, {Op::read_all, 0}},
      {{Op::read_all, 0}, {Op::read_all, 0}, {Op::readline, -1}},
      readlines_with({-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1}),
      reads_of({1, 2, 3, 5, 8, 13, 21, 34, 55, 0}),
      readlines_with({0, 1, 3, 7, 100, 0, 5, 20, 2}),
      {{Op::read_n, 3}, {Op::readline, -1}, {Op::readlines, 0}, {Op::read_all, 0}},
      {{Op::readline, -1}, {Op::read_n, 30}, {Op::iterate, 0}, {Op::read_n, 4}, {Op::read_all, 0}},
  };
}

struct Config {
  std::ptrdiff_t bufsize;
  std::size_t max_line_length;
};

// Runs `script` on a socket reader fed `chunks`; compares with the model; returns a failure
// description or "".
std::string check_fed(const std::string& payload, const std::vector<std::string>& chunks,
                      const Config& config, const Script& script) {
  Model model{payload, config.max_line_length};
  const std::vector<std::string> expected = run_model(model, script);
  Pair p = socket_pair();
  ss::reader r(p.in, config.bufsize, config.max_line_length);
  std::vector<std::string> got;
  std::string problems;
  {
    Feeder feeder(p.out, p.in, chunks);
    try {
      got = run_reader(r, script, config.bufsize == 0, problems);
    } catch (const std::exception& e) {
      problems += std::string("exception: ") + e.what() + "; ";
    }
    problems += feeder.error();
  }
  if (r.buffered() != 0) problems += "buffered() != 0 at the end; ";
  if (got != expected) {
    problems += "results differ:";
    for (std::size_t i = 0; i < std::max(got.size(), expected.size()); ++i) {
      problems += "\n  got      " + (i < got.size() ? got[i] : std::string("(none)"));
      problems += "\n  expected " + (i < expected.size() ? expected[i] : std::string("(none)"));
    }
  }
  if (problems.empty()) return problems;
  std::string where = "bufsize " + std::to_string(config.bufsize) + ", max_line_length " +
                      std::to_string(config.max_line_length) + ", chunks [";
  for (const std::string& c : chunks) where += show(c) + "|";
  return where + "]: " + problems;
}

}  // namespace

// --- reader: independence from recv boundaries --------------------------------------------

TEST_CASE("reader results equal reading the whole payload at once when split at every position",
          "[io][reader]") {
  const std::string& payload = main_payload();
  const std::vector<Config> configs = {{7, 0}, {-1, 0}, {0, 0}, {4, 0}, {4, 5}, {0, 5}};
  const std::vector<Script> scripts = fixed_scripts();
  std::vector<int> runs(configs.size() * scripts.size(), 0);
  for (std::size_t c = 0; c < configs.size(); ++c) {
    // One chunk, then two chunks cut at every position. Every script at every cut for the
    // first config (a small buffer: recv and buffer boundaries interleave); two scripts in
    // rotation for the others, so each pair still sees a spread of cuts, and the file stays fast.
    for (std::size_t cut = 0; cut <= payload.size(); ++cut) {
      const auto chunks = cut == 0 ? std::vector<std::string>{payload} : split_at(payload, {cut});
      for (std::size_t s = 0; s < scripts.size(); ++s) {
        if (c > 0 && s != cut % scripts.size() && s != (cut + 3) % scripts.size()) continue;
        INFO("script " << s);
        REQUIRE(check_fed(payload, chunks, configs[c], scripts[s]) == "");
        ++runs[c * scripts.size() + s];
      }
    }
  }
  for (std::size_t s = 0; s < scripts.size(); ++s)
    CHECK(runs[s] == static_cast<int>(payload.size() + 1));
  for (int n : runs) CHECK(n >= 9);
}

TEST_CASE("reader results equal reading the whole payload at once when sent in random chunks",
          "[io][reader]") {
  std::mt19937 rng(20240613);
  const std::vector<Config> configs = {{-1, 0}, {0, 0}, {1, 0}, {4, 0}, {7, 0},
                                       {4, 5},  {0, 5}, {7, 3}, {-1, 9}};
  const std::vector<std::string> payloads = {
      main_payload(),
      "",
      "\n",
      "\n\n\n",
      "no newline at all",
      std::string("\0\0\n\0", 4),
      "a line that is much longer than any of the small buffers used here\nshort\n",
  };
  std::vector<Script> scripts = fixed_scripts();
  for (int i = 0; i < 12; ++i) scripts.push_back(random_script(rng));
  for (const std::string& payload : payloads) {
    for (const Config& config : configs) {
      for (std::size_t s = 0; s < scripts.size(); ++s) {
        const std::vector<std::string> chunks =
            random_chunks(payload, rng, std::uniform_int_distribution<std::size_t>(1, 9)(rng));
        const std::string failure = check_fed(payload, chunks, config, scripts[s]);
        INFO("payload " << show(payload) << ", script " << s);
        REQUIRE(failure == "");
      }
    }
  }
  // Byte by byte: the finest possible split.
  const std::string& payload = main_payload();
  const std::vector<std::string> bytes = random_chunks(payload, rng, 1);
  REQUIRE(bytes.size() == payload.size());
  for (const Config& config : configs) {
    for (const Script& script : fixed_scripts())
      REQUIRE(check_fed(payload, bytes, config, script) == "");
  }
}

TEST_CASE("reader over bytes in memory gives the same results as over a socket", "[io][reader]") {
  std::mt19937 rng(7);
  std::vector<Script> scripts = fixed_scripts();
  for (int i = 0; i < 30; ++i) scripts.push_back(random_script(rng));
  for (const std::string& payload :
       {main_payload(), std::string(), std::string("x\ny"), std::string("\0\n\0", 3)}) {
    for (const Script& script : scripts) {
      Model model{payload, 0};
      ss::reader r{std::string(payload)};
      std::string problems;
      CHECK(run_reader(r, script, false, problems) == run_model(model, script));
      CHECK(problems == "");
    }
  }
}

// --- reader: specific behaviour ------------------------------------------------------------

TEST_CASE("reader reads lines longer than its buffer and empty lines and a last unterminated line",
          "[io][reader]") {
  for (std::ptrdiff_t bufsize : {4, 7}) {
    Pair p = socket_pair();
    const std::string line = "a line much longer than the buffer of the reader\n";
    p.out.sendall(line + "\n\n" + "short\n" + "tail");
    p.out.shutdown(SHUT_WR);
    ss::reader r(p.in, bufsize);
    CHECK(r.readline() == line);
    CHECK(r.readline() == "\n");
    CHECK(r.readline() == "\n");
    CHECK(r.readlines() == std::vector<std::string>{"short\n", "tail"});
    CHECK(r.readline() == "");
    CHECK(r.readline() == "");  // end of stream stays the end
    CHECK(r.read() == "");
    CHECK(r.read(5) == "");
  }
}

TEST_CASE("reader read(n) returns n bytes and fewer only at end of stream", "[io][reader]") {
  Pair p = socket_pair();
  {
    Feeder feeder(p.out, p.in, {"01", "2345", std::string("6789\0a", 6), "bcdef"}, true);
    ss::reader r(p.in, 3);
    CHECK(r.read(0) == "");
    CHECK(r.read(5) == "01234");  // spans three chunks, more than the buffer
    CHECK(r.read(1) == "5");
    CHECK(r.read(7) == std::string("6789\0ab", 7));
    CHECK(r.read(100) == "cdef");  // end of stream: what there was
    CHECK(r.read(1) == "");
    CHECK(feeder.error() == "");
  }
}

TEST_CASE("readline(0) returns nothing and consumes nothing", "[io][reader]") {
  Pair p = socket_pair();
  p.out.sendall("ab\ncd");
  p.out.shutdown(SHUT_WR);
  ss::reader r(p.in, -1, 1);  // even with a max_line_length, an explicit 0 is 0
  CHECK(r.readline(0) == "");
  CHECK(r.readline(0) == "");
  CHECK(r.readline(2) == "ab");
  CHECK(r.readline(0) == "");
  CHECK(r.readline(5) == "\n");
  CHECK(r.readline(5) == "cd");
  CHECK(r.readline(0) == "");
  CHECK(r.readline(5) == "");
}

TEST_CASE("buffered() counts the bytes taken from the socket and not yet returned",
          "[io][reader]") {
  const std::string data = "ab\ncdefgh\n";  // 10 bytes, all queued before reading
  SECTION("bufsize 7") {
    Pair p = socket_pair();
    p.out.sendall(data);
    p.out.shutdown(SHUT_WR);
    ss::reader r(p.in, 7);
    CHECK(r.buffered() == 0);
    CHECK(r.readline() == "ab\n");
    CHECK(r.buffered() == 4);  // "cdef": one recv of 7
    CHECK(queued(p.in.fileno()) == 3);
    CHECK(r.read(2) == "cd");
    CHECK(r.buffered() == 2);
    CHECK(r.readline() == "efgh\n");
    CHECK(r.buffered() == 0);
    CHECK(queued(p.in.fileno()) == 0);
    CHECK(r.read() == "");
  }
  SECTION("default buffer") {
    Pair p = socket_pair();
    p.out.sendall(data);
    p.out.shutdown(SHUT_WR);
    ss::reader r(p.in, -1);
    CHECK(r.readline() == "ab\n");
    CHECK(r.buffered() == 7);
    CHECK(queued(p.in.fileno()) == 0);
    CHECK(r.read(3) == "cde");
    CHECK(r.buffered() == 4);
    CHECK(r.read() == "fgh\n");
    CHECK(r.buffered() == 0);
  }
  SECTION("unbuffered") {
    Pair p = socket_pair();
    p.out.sendall(data);
    p.out.shutdown(SHUT_WR);
    ss::reader r(p.in, 0);
    CHECK(r.readline() == "ab\n");
    CHECK(r.buffered() == 0);
    CHECK(queued(p.in.fileno()) == 7);
  }
}

TEST_CASE("an unbuffered reader never takes more from the socket than it returns", "[io][reader]") {
  const std::string data = "line one\nline two\nrest";
  Pair p = socket_pair();
  p.out.sendall(data);
  p.out.shutdown(SHUT_WR);
  SECTION("readline") {
    ss::reader r(p.in, 0);
    CHECK(r.readline() == "line one\n");
    CHECK(test::recv_all(p.in) == "line two\nrest");  // still in the socket
  }
  SECTION("readline with a limit") {
    ss::reader r(p.in, 0);
    CHECK(r.readline(4) == "line");
    CHECK(test::recv_all(p.in) == " one\nline two\nrest");
  }
  SECTION("read(n)") {
    ss::reader r(p.in, 0);
    CHECK(r.read(3) == "lin");
    CHECK(r.read(7) == "e one\nl");
    CHECK(test::recv_all(p.in) == "ine two\nrest");
  }
  SECTION("a buffered reader, for contrast, takes what is there") {
    ss::reader r(p.in, -1);
    CHECK(r.readline() == "line one\n");
    CHECK(test::recv_all(p.in) == "");
    CHECK(r.read() == "line two\nrest");
  }
}

TEST_CASE("max_line_length bounds readline() without a limit", "[io][reader]") {
  SECTION("an endless line comes back in pieces of max_line_length") {
    for (std::ptrdiff_t bufsize : {-1, 0, 7}) {
      INFO("bufsize " << bufsize);
      Pair p = socket_pair();
      p.in.settimeout(std::chrono::seconds(5));  // a reader waiting for '\n' would time out
      p.out.sendall(std::string(1000, 'x'));     // no newline, and the writer stays open
      ss::reader r(p.in, bufsize, 100);
      CHECK(r.readline() == std::string(100, 'x'));
      CHECK(r.readline() == std::string(100, 'x'));
      CHECK(r.readline(150) == std::string(150, 'x'));  // an explicit limit is the limit
      CHECK(r.readline(0) == "");
      p.out.shutdown(SHUT_WR);
      std::vector<std::string> expected(6, std::string(100, 'x'));
      expected.push_back(std::string(50, 'x'));
      CHECK(r.readlines() == expected);
    }
  }
  SECTION("0 means unbounded (and is the reader's default)") {
    const std::string longline = std::string(100000, 'x') + "\n";
    for (std::ptrdiff_t bufsize : {-1, 0, 7}) {
      for (bool explicit_zero : {true, false}) {
        INFO("bufsize " << bufsize << (explicit_zero ? ", max_line_length 0" : ", default"));
        Pair p = socket_pair();
        Feeder feeder(p.out, p.in, {longline + "next\n"});
        ss::reader r = explicit_zero ? ss::reader(p.in, bufsize, 0) : ss::reader(p.in, bufsize);
        CHECK(r.readline() == longline);
        CHECK(r.readline() == "next\n");
        CHECK(r.readline() == "");
        CHECK(feeder.error() == "");
      }
    }
  }
}

TEST_CASE("reader over a string reads it as Python's BytesIO", "[io][reader]") {
  const std::string data("first\n\0second\nthird", 19);
  ss::reader r{std::string(data)};
  CHECK_FALSE(r.closed());
  CHECK(r.buffered() == 19);
  CHECK(r.readline() == "first\n");
  CHECK(r.buffered() == 13);
  CHECK(r.read(3) == std::string("\0se", 3));
  CHECK(r.readline(2) == "co");
  CHECK(r.readline() == "nd\n");
  CHECK(r.readline() == "third");
  CHECK(r.readline() == "");
  CHECK(r.read() == "");
  CHECK(r.read(4) == "");
  CHECK(r.buffered() == 0);

  ss::reader lines{std::string("a\n\nb")};
  std::vector<std::string> seen;
  for (const std::string& line : lines) seen.push_back(line);
  CHECK(seen == std::vector<std::string>{"a\n", "\n", "b"});

  ss::reader whole{std::string(data)};
  CHECK(whole.read() == data);

  ss::reader empty{std::string()};
  CHECK(empty.begin() == empty.end());
  CHECK(empty.readlines().empty());
  CHECK(empty.read(1) == "");
}

TEST_CASE("a closed reader or writer throws std::logic_error", "[io]") {
  Pair p = socket_pair();
  SECTION("reader over a socket") {
    ss::reader r(p.in, -1);
    CHECK_FALSE(r.closed());
    r.close();
    CHECK(r.closed());
    CHECK_THROWS_AS(r.read(), std::logic_error);
    CHECK_THROWS_AS(r.read(1), std::logic_error);
    CHECK_THROWS_AS(r.readline(), std::logic_error);
    CHECK_THROWS_AS(r.readline(3), std::logic_error);
    CHECK_THROWS_AS(r.readlines(), std::logic_error);
    CHECK_THROWS_AS(r.begin(), std::logic_error);
    // Closing the file does not close the socket (as in Python).
    CHECK(fd_is_open(p.in.fileno()));
    p.out.sendall("z");
    CHECK(p.in.recv(1) == "z");
  }
  SECTION("reader over a string") {
    ss::reader r{std::string("abc\n")};
    r.close();
    CHECK_THROWS_AS(r.read(), std::logic_error);
    CHECK_THROWS_AS(r.readline(), std::logic_error);
  }
  SECTION("writer over a socket") {
    ss::writer w(p.out, 0);
    CHECK_FALSE(w.closed());
    w.close();
    CHECK(w.closed());
    CHECK_THROWS_AS(w.write("x"), std::logic_error);
    CHECK(pending(p.in.fileno()) == "");
    CHECK(fd_is_open(p.out.fileno()));
  }
  SECTION("collecting writer") {
    ss::writer w;
    w.write("kept");
    w.close();
    CHECK_THROWS_AS(w.write("x"), std::logic_error);
    CHECK(w.getvalue() == "kept");
  }
}

// io.hpp documents `reader() = default;` as "A closed reader.", but closed_ defaults to
// false: closed() is false and read() tries recv() on descriptor -1 (std::system_error EBADF).
TEST_CASE("a default-constructed reader is closed as documented", "[io][reader]") {
  ss::reader r;
  CHECK(r.closed());
  CHECK_THROWS_AS(r.read(), std::logic_error);
  CHECK_THROWS_AS(r.readline(), std::logic_error);
}

// --- reader: a timeout bounds each whole call ----------------------------------------------

namespace {

// Sends `unit` whenever the reader has taken everything sent before, so bytes keep coming
// and no single recv() ever waits long; stops when told, when a send fails, or after 5 s
// (then shuts down its side, which ends any read still waiting).
class Dribbler {
 public:
  Dribbler(const ss::socket& out, const ss::socket& in, std::string unit)
      : unit_(std::move(unit)), thread_([this, &out, &in] { run(out, in); }) {}
  Dribbler(const Dribbler&) = delete;
  Dribbler& operator=(const Dribbler&) = delete;
  ~Dribbler() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int sent() const { return sent_; }
  // Waits (at most 5 s) for the first send, so a reader's deadline starts with bytes flowing.
  bool wait_until_sending() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (sent_ == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    return sent_ > 0;
  }

 private:
  void run(const ss::socket& out, const ss::socket& in) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    std::error_code ec;
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      if (queued(in.fileno()) != 0) {
        std::this_thread::yield();
        continue;
      }
      out.sendall(unit_, 0, ec);
      if (ec) break;
      ++sent_;
    }
    out.shutdown(SHUT_WR, ec);
  }

  std::string unit_;
  std::atomic<bool> stop_{false};
  std::atomic<int> sent_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("a reader timeout bounds a whole readline against a peer that dribbles bytes",
          "[io][reader][timeout]") {
  for (std::ptrdiff_t bufsize : {-1, 0, 7}) {
    INFO("bufsize " << bufsize);
    Pair p = socket_pair();
    ss::reader r(p.in, bufsize, 0, std::chrono::milliseconds(200));
    {
      Dribbler dribbler(p.out, p.in, "x");  // never a newline
      REQUIRE(dribbler.wait_until_sending());
      CHECK(error_of([&] { r.readline(); }) == std::errc::timed_out);
      CHECK(dribbler.sent() > 1);  // bytes kept coming while readline waited
      dribbler.stop();
    }
    // The next call has a deadline of its own; what is there now is read.
    const std::string rest = r.read();
    CHECK(rest.find_first_not_of('x') == std::string::npos);
  }
}

TEST_CASE("a reader timeout bounds readlines as a whole and read(n) against silence",
          "[io][reader][timeout]") {
  SECTION("readlines against endless lines") {
    Pair p = socket_pair();
    ss::reader r(p.in, -1, 0, std::chrono::milliseconds(200));
    Dribbler dribbler(p.out, p.in, "line\n");
    CHECK(error_of([&] { r.readlines(); }) == std::errc::timed_out);
  }
  SECTION("read(n) and readline from a silent peer") {
    Pair p = socket_pair();
    ss::reader r(p.in, -1, 0, std::chrono::milliseconds(100));
    CHECK(error_of([&] { r.read(1); }) == std::errc::timed_out);
    CHECK(error_of([&] { r.read(100000); }) == std::errc::timed_out);  // the direct path
    CHECK(error_of([&] { r.readline(); }) == std::errc::timed_out);
    p.out.sendall("late\n");
    CHECK(r.readline() == "late\n");  // a timeout does not end the reader
    p.out.shutdown(SHUT_WR);
    CHECK(r.read() == "");
  }
  SECTION("without a timeout, a dribbled line is read whole") {
    Pair p = socket_pair();
    ss::reader r(p.in, 0);
    {
      Feeder feeder(p.out, p.in, {"a", "b", "c", "d", "\n"}, false);
      CHECK(r.readline() == "abcd\n");
      CHECK(feeder.error() == "");
    }
  }
}

TEST_CASE("a read(n) that times out loses none of the bytes it had read", "[io][reader][timeout]") {
  // For each buffer size, and for a read small enough to go through the buffer and one
  // large enough to bypass it.
  for (std::ptrdiff_t bufsize : {-1, 0, 7}) {
    for (std::size_t size : {std::size_t{20}, std::size_t{100000}}) {
      INFO("bufsize " << bufsize << ", read(" << size << ")");
      Pair p = socket_pair();
      ss::reader r(p.in, bufsize, 0, std::chrono::milliseconds(100));
      const std::string first(size / 2, 'a');
      const std::string second(size - first.size(), 'b');
      p.out.sendall(first);
      CHECK(error_of([&] { r.read(static_cast<std::ptrdiff_t>(size)); }) == std::errc::timed_out);
      p.out.sendall(second);
      CHECK(r.read(static_cast<std::ptrdiff_t>(size)) == first + second);
      p.out.sendall("tail\n");
      CHECK(r.readline() == "tail\n");
    }
  }
}

// --- writer ------------------------------------------------------------------------------

TEST_CASE("an unbuffered writer sends every write at once", "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, 0);
  CHECK(w.write("abc") == 3);
  CHECK(pending(p.in.fileno()) == "abc");
  CHECK(w.write(std::string("\0\n", 2)) == 2);
  CHECK(pending(p.in.fileno()) == std::string("\0\n", 2));
  CHECK(w.write("") == 0);
  w.flush();
  CHECK(pending(p.in.fileno()) == "");
}

TEST_CASE("a writer timeout bounds a whole write against a peer that reads a little at a time",
          "[io][writer][timeout]") {
  for (std::ptrdiff_t bufsize : {0, 1024}) {
    INFO("bufsize " << bufsize);
    Pair p = socket_pair();
    ss::writer w(p.out, bufsize, std::chrono::milliseconds(200));
    std::atomic<bool> write_ended{false}, peer_gave_up{false};
    std::thread slow_peer([&] {
      // Takes 4 KiB every 20 ms, for 5 s at most: each send() makes progress well within
      // the timeout, so only a deadline for the whole write can end it.
      char buf[4096];
      const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (!write_ended) {
        if (std::chrono::steady_clock::now() > limit) {
          peer_gave_up = true;
          break;
        }
        std::error_code ec;
        (void)p.in.recv(buf, sizeof buf, MSG_DONTWAIT, ec);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the slow peer's pace
      }
    });
    const std::string large(8 << 20, 'x');
    CHECK(error_of([&] { w.write(large); }) == std::errc::timed_out);
    write_ended = true;
    slow_peer.join();
    CHECK_FALSE(peer_gave_up);  // the write ended while the peer was still reading
  }
}

TEST_CASE("a buffered writer holds data until flush() or until the buffer would overflow",
          "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, 8);
  CHECK(w.write("abc") == 3);
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.write("defgh") == 5);  // exactly full: still held
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.write("i") == 1);  // would overflow: the buffer goes first
  CHECK(pending(p.in.fileno()) == "abcdefgh");
  w.flush();
  CHECK(pending(p.in.fileno()) == "i");
  w.flush();
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.getvalue() == "");  // not a collecting writer: nothing left over
}

TEST_CASE("a buffered writer sends a write larger than bufsize directly and in order",
          "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, 8);
  CHECK(w.write("123456789") == 9);
  CHECK(pending(p.in.fileno()) == "123456789");
  CHECK(w.write("ab") == 2);
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.write("0123456789") == 10);  // what was held goes first
  CHECK(pending(p.in.fileno()) == "ab0123456789");
  CHECK(w.write("xy") == 2);
  CHECK(pending(p.in.fileno()) == "");
  w.flush();
  CHECK(pending(p.in.fileno()) == "xy");
}

// CPython's BufferedWriter (Python's wfile when wbufsize > 0) buffers a write that fits in
// the free space, and after flushing for a write that does not fit, writes directly only
// while more than buffer_size bytes remain and buffers the rest. So a write of exactly
// bufsize bytes is held, into an empty buffer as after a flush (checked against CPython
// 3.11: makefile('wb', 8).write(b"12345678") sends nothing). writer::write() in io.hpp sends
// any write with `data.size() >= bufsize_` at once.
TEST_CASE("a buffered writer holds a write of exactly bufsize bytes as CPython does",
          "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, 8);
  CHECK(w.write("12345678") == 8);
  CHECK(pending(p.in.fileno()) == "");
  w.flush();
  CHECK(pending(p.in.fileno()) == "12345678");
  CHECK(w.write("ab") == 2);
  CHECK(w.write("abcdefgh") == 8);  // does not fit: "ab" goes, the 8 bytes are held
  CHECK(pending(p.in.fileno()) == "ab");
  w.flush();
  CHECK(pending(p.in.fileno()) == "abcdefgh");
}

TEST_CASE("a buffered writer keeps every byte in order over random writes", "[io][writer]") {
  std::mt19937 rng(99);
  for (std::ptrdiff_t bufsize : {1, 7, 64}) {
    Pair p = socket_pair();
    ss::writer w(p.out, bufsize);
    const auto cap = static_cast<std::size_t>(bufsize);
    std::string held, sent_expected, sent;
    for (int i = 0; i < 300; ++i) {
      std::size_t n = std::uniform_int_distribution<std::size_t>(0, 20)(rng);
      if (n == cap) ++n;  // exactly bufsize: see the  test above
      std::string data;
      for (std::size_t k = 0; k < n; ++k)
        data += static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
      REQUIRE(w.write(data) == n);
      // The rules: overflow flushes first; a write of more than bufsize goes out directly.
      if (held.size() + n > cap) {
        sent_expected += held;
        held.clear();
      }
      if (n > cap)
        sent_expected += data;
      else
        held += data;
      sent += pending(p.in.fileno());
      REQUIRE(sent == sent_expected);
    }
    w.flush();
    sent += pending(p.in.fileno());
    CHECK(sent == sent_expected + held);
  }
}

TEST_CASE("a writer with bufsize < 0 buffers with the default size", "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, -1);
  CHECK(w.write(std::string(8000, 'a')) == 8000);
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.write(std::string(192, 'b')) == 192);  // 8192: exactly full
  CHECK(pending(p.in.fileno()) == "");
  CHECK(w.write("c") == 1);
  CHECK(pending(p.in.fileno()) == std::string(8000, 'a') + std::string(192, 'b'));
  w.flush();
  CHECK(pending(p.in.fileno()) == "c");
}

// Python's wfile for wbufsize > 0 is a BufferedWriter, whose close() flushes first (then
// closes the raw file, which leaves the socket open). writer::close() in io.hpp only sets
// closed_ = true: the bytes it held are silently dropped.
TEST_CASE("closing a buffered writer sends what it holds", "[io][writer]") {
  Pair p = socket_pair();
  ss::writer w(p.out, 64);
  w.write("held");
  w.close();
  CHECK(pending(p.in.fileno()) == "held");
}

// Python: flush() on a closed file raises ValueError (IOBase.flush checks closed, also for
// the unbuffered _SocketWriter). writer::flush() in io.hpp does not check closed_.
TEST_CASE("flush() on a closed writer throws std::logic_error", "[io][writer]") {
  Pair p = socket_pair();
  ss::writer unbuffered(p.out, 0);
  unbuffered.close();
  CHECK_THROWS_AS(unbuffered.flush(), std::logic_error);
  ss::writer buffered(p.out, 64);
  buffered.close();
  CHECK_THROWS_AS(buffered.flush(), std::logic_error);
}

TEST_CASE("a collecting writer gathers what is written for getvalue()", "[io][writer]") {
  ss::writer w;
  CHECK(w.getvalue() == "");
  CHECK(w.write("ab") == 2);
  CHECK(w.write(std::string("\0c", 2)) == 2);
  CHECK(w.write("") == 0);
  w.flush();  // nothing to send
  CHECK(w.getvalue() == std::string("ab\0c", 4));
}

TEST_CASE("a writer sends large writes completely", "[io][writer]") {
  std::string big(4 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + i / 4096);
  for (std::ptrdiff_t bufsize : {0, 1000}) {
    Pair p = socket_pair();
    std::string received;
    std::thread drain([&] { received = test::recv_all(p.in, big.size() + 10); });
    ss::writer w(p.out, bufsize);
    CHECK(w.write("head") == 4);
    CHECK(w.write(big) == big.size());
    CHECK(w.write("tail") == 4);
    w.flush();
    p.out.shutdown(SHUT_WR);
    drain.join();
    CHECK(received.size() == big.size() + 8);
    CHECK(received == "head" + big + "tail");
  }
}

// SIGPIPE is left at its default (which kills the process): the library must use MSG_NOSIGNAL.
TEST_CASE("writing to a peer that has gone raises std::system_error and never SIGPIPE",
          "[io][writer]") {
  SECTION("unbuffered, Unix stream") {
    Pair p = socket_pair();
    p.in.close();
    ss::writer w(p.out, 0);
    CHECK(error_of([&] { w.write("x"); }) == std::errc::broken_pipe);
  }
  SECTION("buffered, Unix stream: the error comes from flush()") {
    Pair p = socket_pair();
    p.in.close();
    ss::writer w(p.out, 16);
    CHECK(error_of([&] { w.write("held"); }) == std::error_code());
    CHECK(error_of([&] { w.flush(); }) == std::errc::broken_pipe);
  }
  SECTION("TCP connection reset by the peer") {
    ss::socket listener(AF_INET, SOCK_STREAM);
    const ss::address any("127.0.0.1", 0);
    REQUIRE(::bind(listener.fileno(), any.data(), any.size()) == 0);
    REQUIRE(::listen(listener.fileno(), 1) == 0);
    ss::socket client = test::connect_to(listener.getsockname());
    ss::socket peer(ss::detail::accept_socket(listener.fileno(), nullptr, nullptr));
    REQUIRE(peer.is_open());
    peer.setsockopt(SOL_SOCKET, SO_LINGER, linger{1, 0});
    peer.close();  // sends RST
    ss::writer w(client, 0);
    std::error_code ec;
    for (int i = 0; i < 100 && !ec; ++i) ec = error_of([&] { w.write(std::string(65536, 'x')); });
    CHECK((ec == std::errc::broken_pipe || ec == std::errc::connection_reset));
  }
}

// --- socket_view / socket ------------------------------------------------------------------

namespace {
bool nonblocking(const ss::socket_view& s) {
  return (::fcntl(s.fileno(), F_GETFL) & O_NONBLOCK) != 0;
}
}  // namespace

TEST_CASE("settimeout and gettimeout round trip as in Python", "[io][socket]") {
  ss::socket s(AF_INET, SOCK_STREAM);
  CHECK_FALSE(s.gettimeout().has_value());
  CHECK_FALSE(nonblocking(s));

  s.settimeout(std::chrono::duration<double>(1.5));
  REQUIRE(s.gettimeout().has_value());
  CHECK(std::fabs(s.gettimeout()->count() - 1.5) < 0.01);
  CHECK_FALSE(nonblocking(s));

  s.settimeout(std::chrono::duration<double>(0));
  REQUIRE(s.gettimeout().has_value());
  CHECK(s.gettimeout()->count() == 0.0);
  CHECK(nonblocking(s));

  s.settimeout(std::chrono::milliseconds(250));  // back from non-blocking to a timeout
  REQUIRE(s.gettimeout().has_value());
  CHECK(std::fabs(s.gettimeout()->count() - 0.25) < 0.01);
  CHECK_FALSE(nonblocking(s));

  s.settimeout(std::nullopt);
  CHECK_FALSE(s.gettimeout().has_value());
  CHECK_FALSE(nonblocking(s));

  s.setblocking(false);
  REQUIRE(s.gettimeout().has_value());
  CHECK(s.gettimeout()->count() == 0.0);
  s.setblocking(true);
  CHECK_FALSE(s.gettimeout().has_value());
  CHECK_FALSE(nonblocking(s));
}

TEST_CASE("a receive that hits the timeout raises std::errc::timed_out", "[io][socket]") {
  Pair p = socket_pair();
  p.in.settimeout(std::chrono::milliseconds(50));
  char c = 0;
  CHECK(error_of([&] { p.in.recv(&c, 1); }) == std::errc::timed_out);
  CHECK(error_of([&] { p.in.recv(16); }) == std::errc::timed_out);
  std::error_code ec;
  CHECK(p.in.recv(&c, 1, 0, ec) == 0);
  CHECK(ec == std::errc::timed_out);
  // The reader reports the same.
  ss::reader r(p.in, -1);
  CHECK(error_of([&] { r.readline(); }) == std::errc::timed_out);
  // Data that arrives is still read normally afterwards.
  p.out.sendall("ok\n");
  CHECK(r.readline() == "ok\n");

  // A non-blocking socket says "would block", not "timed out".
  p.in.settimeout(std::chrono::duration<double>(0));
  CHECK(error_of([&] { p.in.recv(&c, 1); }) == std::errc::resource_unavailable_try_again);
}

// A receive that asks not to block (MSG_DONTWAIT) and finds nothing says "would block", as
// Python's BlockingIOError does, even on a blocking socket, with or without a timeout.
TEST_CASE("recv(MSG_DONTWAIT) with no data reports EAGAIN and not timed_out", "[io][socket]") {
  Pair p = socket_pair();
  char c = 0;
  for (bool with_timeout : {false, true}) {
    INFO("with_timeout " << with_timeout);
    p.in.settimeout(with_timeout ? ss::timeout_type(std::chrono::seconds(5)) : std::nullopt);
    std::error_code ec;
    CHECK(p.in.recv(&c, 1, MSG_DONTWAIT, ec) == 0);
    CHECK(ec == std::errc::resource_unavailable_try_again);
    CHECK(error_of([&] { p.in.recv(&c, 1, MSG_DONTWAIT); }) ==
          std::errc::resource_unavailable_try_again);
  }
}

// Python: settimeout(-1) raises ValueError("Timeout value out of range") and leaves the
// socket as it was. socket_view::settimeout (socket.hpp) treats any duration <= 0 as 0 and
// silently makes the socket non-blocking.
TEST_CASE("settimeout rejects a negative timeout as Python does", "[io][socket]") {
  ss::socket s(AF_INET, SOCK_STREAM);
  CHECK_THROWS(s.settimeout(std::chrono::duration<double>(-1)));
  CHECK_FALSE(s.gettimeout().has_value());
  CHECK_FALSE(nonblocking(s));
}

TEST_CASE("socket is move-only and owns its descriptor", "[io][socket]") {
  ss::socket a(AF_UNIX, SOCK_STREAM);
  const int fd = a.fileno();
  REQUIRE(fd >= 0);
  CHECK(a.is_open());
  ss::socket b(std::move(a));
  CHECK(a.fileno() == -1);  // NOLINT(bugprone-use-after-move): moved-from state is specified
  CHECK_FALSE(a.is_open());
  CHECK(b.fileno() == fd);

  ss::socket c(AF_UNIX, SOCK_STREAM);
  const int old = c.fileno();
  c = std::move(b);  // closes c's own descriptor
  CHECK(c.fileno() == fd);
  CHECK(b.fileno() == -1);  // NOLINT(bugprone-use-after-move)
  CHECK_FALSE(fd_is_open(old));
  CHECK(fd_is_open(fd));

  ss::socket& alias = c;
  c = std::move(alias);  // self-move keeps the descriptor
  CHECK(c.fileno() == fd);
  CHECK(fd_is_open(fd));

  c.close();
  CHECK(c.fileno() == -1);
  CHECK_FALSE(fd_is_open(fd));
  c.close();  // harmless
  CHECK(c.fileno() == -1);
  CHECK_FALSE(c.is_open());
}

TEST_CASE("socket::detach gives up ownership and socket_view never owns", "[io][socket]") {
  int fd = -1;
  {
    ss::socket s(AF_UNIX, SOCK_STREAM);
    fd = s.fileno();
    CHECK(s.detach() == fd);
    CHECK(s.fileno() == -1);
  }
  CHECK(fd_is_open(fd));  // the destructor left it alone
  {
    ss::socket_view v(fd);
    CHECK(v.fileno() == fd);
    CHECK(v.is_open());
  }
  CHECK(fd_is_open(fd));
  ss::socket again(fd);  // owned once more, closed at the end
  CHECK(again.fileno() == fd);
  CHECK(ss::socket_view().fileno() == -1);
}
