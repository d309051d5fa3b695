// SPDX-License-Identifier: MIT
// Fuzzes socketserver::reader (rfile): read(n), read(), readline(limit), readlines() and
// iteration, over a socket fed in random chunks and over bytes in memory, with random buffer
// sizes and line limits. Every result must equal what a simple reference model returns
// from the whole byte string at once, however the bytes were split across recv() calls.
//
// Single-threaded: one end of a socketpair is the reader's, the other the test's. Before an
// operation, the test writes just enough chunks for it (the model says how many bytes it
// needs, or whether it needs the end of the stream); the reader never asks the socket for a
// byte it does not need, so it never waits (SO_RCVTIMEO turns a wait into a failure). In
// the interleaved mode the reader has a zero timeout: readline() then fails with
// errc::timed_out as soon as the socket is empty, and the test writes one more chunk and
// calls it again, so each recv() sees a real chunk boundary (and readline() is shown to be
// resumable after a timeout, losing nothing).
//
// Invariant checked after every operation: the bytes not yet returned are in the reader's
// buffer or still in the socket (buffered() + FIONREAD == written - consumed); with
// bufsize 0 the buffer stays empty (it never takes a byte the caller did not ask for).
//
// Built two ways (fuzz/CMakeLists.txt): with -fsanitize=fuzzer as a libFuzzer target
// (SOCKETSERVER_LIBFUZZER defined), and as an ordinary program whose main() replays fixed
// inputs, a deterministic pseudo-random corpus, and any files named on its command line.
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include <socketserver/detail/fd.hpp>
#include <socketserver/io.hpp>

namespace {

namespace ss = socketserver;

std::string g_context;  // what the current input is doing, for the failure message

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_reader: FAILED: %s\n  while: %s\n", what.c_str(), g_context.c_str());
  std::fflush(stderr);
  std::abort();
}

std::string show(const std::string& s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < 80; ++i)
    out += s[i] == '\n' ? std::string("\\n") : std::string(1, s[i]);
  if (s.size() > 80) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out + "\"";
}

void expect_equal(const std::string& got, const std::string& want, const std::string& op) {
  if (got != want) fail(op + ": got " + show(got) + ", want " + show(want));
}
void expect_equal(const std::vector<std::string>& got, const std::vector<std::string>& want,
                  const std::string& op) {
  if (got.size() != want.size())
    fail(op + ": got " + std::to_string(got.size()) + " lines, want " +
         std::to_string(want.size()));
  for (std::size_t i = 0; i < got.size(); ++i)
    expect_equal(got[i], want[i], op + " line " + std::to_string(i));
}

// Control values from the end of the input, data from the front (as FuzzedDataProvider).
class Source {
 public:
  Source(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() {
    if (size_ == 0) return 0;
    return data_[--size_];
  }
  /// 0..max
  std::size_t upto(std::size_t max) {
    std::size_t v = byte();
    v = (v << 8) | byte();
    return max == 0 ? 0 : v % (max + 1);
  }
  std::string front(std::size_t n) {
    n = n < size_ ? n : size_;
    std::string s(reinterpret_cast<const char*>(data_), n);
    data_ += n;
    size_ -= n;
    return s;
  }
  std::size_t left() const { return size_; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
};

// The reference: the whole stream at once.
struct Model {
  std::string s;
  std::size_t p = 0;
  std::size_t max_line = 0;

  std::string read(std::ptrdiff_t n) {
    const std::size_t len =
        n < 0 ? s.size() - p : std::min(static_cast<std::size_t>(n), s.size() - p);
    std::string r = s.substr(p, len);
    p += len;
    return r;
  }
  std::size_t cap(std::ptrdiff_t limit) const {
    if (limit >= 0) return static_cast<std::size_t>(limit);
    return max_line != 0 ? max_line : std::numeric_limits<std::size_t>::max();
  }
  std::string readline(std::ptrdiff_t limit) {
    const std::size_t window = std::min(cap(limit), s.size() - p);
    const std::size_t nl = s.find('\n', p);
    const std::size_t len = nl != std::string::npos && nl < p + window ? nl - p + 1 : window;
    std::string r = s.substr(p, len);
    p += len;
    return r;
  }
  std::vector<std::string> readlines() {
    std::vector<std::string> lines;
    for (std::string line = readline(-1); !line.empty(); line = readline(-1)) lines.push_back(line);
    return lines;
  }
};

enum class Op { read_all, read_n, readline, readline_limit, readlines, iterate };

struct Step {
  Op op;
  std::ptrdiff_t arg = -1;
};

Step next_step(Source& in) {
  Step step;
  switch (in.byte() % 6) {
    case 0:
      step.op = Op::read_all;
      break;
    case 1:
      step.op = Op::read_n;
      step.arg = static_cast<std::ptrdiff_t>(in.byte() % 4 == 0 ? in.upto(20000) : in.upto(100));
      break;
    case 2:
      step.op = Op::readline;
      break;
    case 3:
      step.op = Op::readline_limit;
      step.arg = static_cast<std::ptrdiff_t>(in.upto(100));
      break;
    case 4:
      step.op = Op::readlines;
      break;
    default:
      step.op = Op::iterate;
      break;
  }
  return step;
}

std::string describe(const Step& step) {
  switch (step.op) {
    case Op::read_all:
      return "read()";
    case Op::read_n:
      return "read(" + std::to_string(step.arg) + ")";
    case Op::readline:
      return "readline()";
    case Op::readline_limit:
      return "readline(" + std::to_string(step.arg) + ")";
    case Op::readlines:
      return "readlines()";
    default:
      return "for (line : reader)";
  }
}

// What the model says the step returns (as lines, one element for single results), how far
// into the stream the reader must have received for it, and whether it needs the end.
struct Expected {
  std::vector<std::string> lines;
  std::size_t need = 0;
  bool needs_end = false;
};

Expected expect(Model& model, const Step& step) {
  Expected e;
  switch (step.op) {
    case Op::read_all:
      e.lines.push_back(model.read(-1));
      e.needs_end = true;
      break;
    case Op::read_n:
      e.lines.push_back(model.read(step.arg));
      e.needs_end = e.lines[0].size() < static_cast<std::size_t>(step.arg);
      break;
    case Op::readline:
    case Op::readline_limit: {
      const std::size_t cap = model.cap(step.arg);
      e.lines.push_back(model.readline(step.arg));
      const std::string& line = e.lines[0];
      e.needs_end = !(line.size() == cap || (!line.empty() && line.back() == '\n'));
      break;
    }
    default:
      e.lines = model.readlines();
      e.needs_end = true;
      break;
  }
  e.need = e.needs_end ? model.s.size() : model.p;
  return e;
}

std::vector<std::string> perform(ss::reader& r, const Step& step) {
  switch (step.op) {
    case Op::read_all:
      return {r.read()};
    case Op::read_n:
      return {r.read(step.arg)};
    case Op::readline:
      return {r.readline()};
    case Op::readline_limit:
      return {r.readline(step.arg)};
    case Op::readlines:
      return r.readlines();
    default: {
      std::vector<std::string> lines;
      for (const std::string& line : r) lines.push_back(line);
      return lines;
    }
  }
}

bool is_readline(const Step& step) {
  return step.op == Op::readline || step.op == Op::readline_limit;
}

// The test's end of the socketpair: writes the stream in chunks.
class Feeder {
 public:
  Feeder(int fd, const std::string& stream, Source& in, std::size_t chunk_max)
      : fd_(fd), stream_(stream), in_(in), chunk_max_(chunk_max) {}

  std::size_t written() const { return written_; }
  bool ended() const { return ended_; }

  /// Writes one chunk; false if everything was written (then ends the stream).
  bool one_chunk() {
    if (written_ == stream_.size()) {
      end();
      return false;
    }
    send(1 + in_.upto(chunk_max_ - 1));
    return true;
  }
  /// Writes chunks until `need` bytes are written, and ends the stream if asked. At most 64
  /// separate chunks, then the rest at once (each chunk costs socket buffer overhead).
  void provide(std::size_t need, bool end_too) {
    for (int i = 0; written_ < need && i < 64; ++i) send(1 + in_.upto(chunk_max_ - 1));
    if (written_ < need) send(need - written_);
    if (end_too) {
      if (written_ < stream_.size()) send(stream_.size() - written_);
      end();
    }
  }

 private:
  void send(std::size_t n) {
    n = std::min(n, stream_.size() - written_);
    if (n == 0) return;
    const ssize_t sent = ::send(fd_, stream_.data() + written_, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent != static_cast<ssize_t>(n))
      fail("harness: socket buffer full (" + std::to_string(sent) + " of " + std::to_string(n) +
           ")");
    written_ += n;
  }
  void end() {
    if (!ended_) ::shutdown(fd_, SHUT_WR);
    ended_ = true;
  }

  int fd_;
  const std::string& stream_;
  Source& in_;
  std::size_t chunk_max_;
  std::size_t written_ = 0;
  bool ended_ = false;
};

void check_accounting(const ss::reader& r, int fd, const Feeder& feeder, const Model& model,
                      bool unbuffered) {
  int queued = 0;
  if (::ioctl(fd, FIONREAD, &queued) != 0) fail("harness: FIONREAD");
  const std::size_t pending = feeder.written() - model.p;
  if (r.buffered() + static_cast<std::size_t>(queued) != pending)
    fail("accounting: buffered " + std::to_string(r.buffered()) + " + in socket " +
         std::to_string(queued) + " != not yet returned " + std::to_string(pending));
  if (unbuffered && r.buffered() != 0)
    fail("an unbuffered reader holds " + std::to_string(r.buffered()) + " bytes");
}

bool is_timeout(const std::system_error& e) { return e.code() == std::errc::timed_out; }

void run_socket(const std::string& stream, Source& in, std::ptrdiff_t bufsize, std::size_t max_line,
                bool interleaved, std::size_t chunk_max) {
  int fds[2];
  // (close-on-exec where the system has no SOCK_CLOEXEC too: detail/fd.hpp)
  if (socketserver::detail::open_socketpair(AF_UNIX, SOCK_STREAM, fds) != 0)
    fail("harness: socketpair");
  struct Closer {
    int* fds;
    ~Closer() {
      ::close(fds[0]);
      ::close(fds[1]);
    }
  } closer{fds};
  // A reader that waited for bytes it did not need would block: make that a failure.
  const timeval five_seconds{5, 0};
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVTIMEO, &five_seconds, sizeof five_seconds);

  const ss::timeout_type timeout =
      interleaved ? ss::timeout_type(std::chrono::duration<double>(0)) : ss::timeout_type();
  ss::reader r(ss::socket_view{fds[0]}, bufsize, max_line, timeout);
  Model model{stream, 0, max_line};
  Feeder feeder(fds[1], stream, in, chunk_max);
  const std::string mode = interleaved ? "interleaved" : "prefilled";

  for (int i = 0; i < 48; ++i) {
    const Step step = next_step(in);
    g_context = mode + " bufsize=" + std::to_string(bufsize) +
                " max_line=" + std::to_string(max_line) + " chunks<=" + std::to_string(chunk_max) +
                " stream=" + show(stream) + " step " + std::to_string(i) + ": " + describe(step) +
                " at " + std::to_string(model.p);
    const Expected want = expect(model, step);
    std::vector<std::string> got;
    try {
      if (interleaved && is_readline(step)) {
        // One chunk at a time, calling again after each timeout.
        for (std::size_t attempt = 0;; ++attempt) {
          if (attempt > stream.size() + 2) fail("readline never completed");
          try {
            got = perform(r, step);
            break;
          } catch (const std::system_error& e) {
            if (!is_timeout(e)) throw;
            if (feeder.ended()) fail("readline() timed out after the end of the stream");
            feeder.one_chunk();  // or, once all is written, the end of the stream
          }
        }
      } else {
        feeder.provide(want.need, want.needs_end);
        got = perform(r, step);
      }
    } catch (const std::system_error& e) {
      fail(std::string("unexpected exception: ") + e.what());
    }
    expect_equal(got, want.lines, describe(step));
    check_accounting(r, fds[0], feeder, model, bufsize == 0);
    if (in.left() == 0) break;
  }
}

void run_memory(const std::string& stream, Source& in) {
  ss::reader r(stream);
  Model model{stream, 0, 0};  // a reader over memory has no line bound
  for (int i = 0; i < 48; ++i) {
    const Step step = next_step(in);
    g_context =
        "memory stream=" + show(stream) + " step " + std::to_string(i) + ": " + describe(step);
    const Expected want = expect(model, step);
    expect_equal(perform(r, step), want.lines, describe(step));
    if (r.buffered() != stream.size() - model.p) fail("memory reader: buffered() is off");
    if (in.left() == 0) break;
  }
}

enum class Mode { prefilled, interleaved, memory };

struct Params {
  std::ptrdiff_t bufsize = -1;
  std::size_t max_line = 0;
  std::size_t chunk_max = 1;
  Mode mode = Mode::prefilled;
};

// Runs one case: `control` chooses the steps and the chunk sizes.
void run_case(const std::string& stream, const Params& p, Source& control) {
  if (p.mode == Mode::memory)
    run_memory(stream, control);
  else
    run_socket(stream, control, p.bufsize, p.max_line, p.mode == Mode::interleaved, p.chunk_max);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 64 * 1024) return 0;  // keeps every stream within one socket buffer
  Source in(data, size);
  Params p;
  switch (in.byte() % 4) {
    case 0:
      p.bufsize = 0;  // unbuffered
      break;
    case 1:
      p.bufsize = 1;
      break;
    case 2:
      p.bufsize = static_cast<std::ptrdiff_t>(2 + in.upto(62));  // small
      break;
    default:
      p.bufsize = -1;  // the default, 8192
      break;
  }
  switch (in.byte() % 4) {
    case 0:
      p.max_line = 0;  // unbounded
      break;
    case 1:
      p.max_line = 1;
      break;
    case 2:
      p.max_line = 2 + in.upto(62);
      break;
    default:
      p.max_line = 65536;  // StreamRequestHandler's default
      break;
  }
  static const std::size_t kChunks[] = {1, 7, 64, 4096};
  p.chunk_max = kChunks[in.byte() % 4];
  p.mode = static_cast<Mode>(in.byte() % 3);
  const std::string stream = in.front(in.upto(std::min<std::size_t>(in.left(), 16 * 1024)));
  run_case(stream, p, in);
  return 0;
}

#if !defined(SOCKETSERVER_LIBFUZZER)
// The regression run: fixed inputs, a deterministic pseudo-random corpus (bounded in count
// and time), and any files given as arguments (e.g. crashes libFuzzer saved).
namespace {

std::uint64_t g_state = 0x9e3779b97f4a7c15ull;
std::uint64_t next_random() {  // xorshift64*
  g_state ^= g_state >> 12;
  g_state ^= g_state << 25;
  g_state ^= g_state >> 27;
  return g_state * 0x2545f4914f6cdd1dull;
}

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

bool sanitized() {
#  if defined(__has_feature)
#    if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#    endif
#  endif
#  if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#  else
  return false;
#  endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    for (int i = 1; i < argc; ++i) {
      std::ifstream file(argv[i], std::ios::binary);
      run(std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()));
      std::printf("replayed %s\n", argv[i]);
    }
    return 0;
  }
  // Fixed inputs: streams with lines, empty lines, a last line without '\n', and lines
  // longer than every buffer and limit, under every mode, buffer size, line bound and chunk
  // size, each with a few pseudo-random sequences of steps.
  const std::string streams[] = {"",
                                 "\n",
                                 "\n\n\n",
                                 "a",
                                 "one\ntwo\n\nthree",
                                 std::string(100, 'x') + "\n" + std::string(70, 'y'),
                                 std::string(9000, 'z') + "\n\n" + std::string(3000, 'w')};
  const std::ptrdiff_t bufsizes[] = {0, 1, 7, -1};
  const std::size_t max_lines[] = {0, 1, 5, 65536};
  const std::size_t chunk_maxes[] = {1, 7, 64, 4096};
  const Mode modes[] = {Mode::prefilled, Mode::interleaved, Mode::memory};
  int fixed = 0;
  for (const std::string& stream : streams)
    for (std::ptrdiff_t bufsize : bufsizes)
      for (std::size_t max_line : max_lines)
        for (std::size_t chunk_max : chunk_maxes)
          for (Mode mode : modes)
            for (int sequence = 0; sequence < 2; ++sequence) {
              if (mode == Mode::memory && (bufsize != -1 || max_line != 0 || chunk_max != 1))
                continue;
              std::vector<std::uint8_t> control(160);
              for (std::uint8_t& b : control) b = static_cast<std::uint8_t>(next_random() >> 32);
              Source in(control.data(), control.size());
              run_case(stream, Params{bufsize, max_line, chunk_max, mode}, in);
              ++fixed;
            }
  // The pseudo-random corpus: bytes biased towards '\n' and one letter, so lines are short
  // enough to be interesting.
  const int corpus = sanitized() ? 2000 : 10000;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int random_runs = 0;
  for (; random_runs < corpus && std::chrono::steady_clock::now() < deadline; ++random_runs) {
    const std::size_t size = next_random() % (random_runs % 10 == 0 ? 40000 : 600);
    std::string input(size, '\0');
    for (char& c : input) {
      const std::uint64_t r = next_random();
      c = r % 3 == 0 ? '\n' : r % 3 == 1 ? 'a' : static_cast<char>(r >> 24);
    }
    run(input);
  }
  std::printf("fuzz_reader: %d fixed and %d pseudo-random inputs passed\n", fixed, random_runs);
  return random_runs == corpus ? 0 : 1;
}
#endif
