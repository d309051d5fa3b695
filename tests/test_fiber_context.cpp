// SPDX-License-Identifier: MIT
// Issue 11, the lowest layer of fibers: stacks with guard pages and their pool, and the
// context switch (assembly; also built with SOCKETSERVER_FIBER_UCONTEXT as
// test_fiber_context_ucontext): values, callee-saved registers, FP control words and C++
// exception state stay with their context; a fiber stack overflow is reported as one.
// Compiled with -O2 (tests/CMakeLists.txt) so values live in registers across switches.
#include <fenv.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <socketserver/address.hpp>
#include <socketserver/detail/fiber_context.hpp>
#include <socketserver/detail/fiber_overflow.hpp>
#include <socketserver/detail/fiber_stack.hpp>

#include "catch.hpp"

namespace {

namespace ss = socketserver;
using ss::detail::fiber_context;
using ss::detail::fiber_stack;
using ss::detail::fiber_stack_pool;

// Set by the fiber headers: no overflow reporter is installed under AddressSanitizer.
#if defined(SOCKETSERVER_DETAIL_ASAN)
constexpr bool asan = true;
#else
constexpr bool asan = false;
#endif

// A fiber for the tests: runs `body`, which may suspend() back to the thread; an exception
// escaping `body` (a failed REQUIRE) is rethrown by the resume() that it ended.
class test_fiber {
 public:
  test_fiber(fiber_context& thread, std::function<void(test_fiber&)> body,
             std::size_t stack_size = 256 * 1024)
      : stack_(fiber_stack::allocate(stack_size)),
        context_(stack_, &entry, this),
        thread_(thread),
        body_(std::move(body)) {}

  void resume() {
    REQUIRE_FALSE(done_);
    fiber_context::switch_to(thread_, context_);
    if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
  }
  void suspend() { fiber_context::switch_to(context_, thread_); }
  bool done() const { return done_; }
  const fiber_stack& stack() const { return stack_; }
  fiber_context& context() { return context_; }

 private:
  static void entry(void* arg) {
    auto* self = static_cast<test_fiber*>(arg);
    try {
      self->body_(*self);
    } catch (...) {
      self->failure_ = std::current_exception();
    }
    self->done_ = true;
    fiber_context::exit_to(self->context_, self->thread_);
  }

  fiber_stack stack_;
  fiber_context context_;
  fiber_context& thread_;
  std::function<void(test_fiber&)> body_;
  std::exception_ptr failure_;
  bool done_ = false;
};

std::string current_message() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  }
}

TEST_CASE("the backend is the one selected", "[fiber]") {
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
  CHECK(std::string(fiber_context::backend) == "ucontext");
#elif defined(__x86_64__)
  CHECK(std::string(fiber_context::backend) == "x86-64 assembly");
#elif defined(__aarch64__)
  CHECK(std::string(fiber_context::backend) == "AArch64 assembly");
#endif
}

TEST_CASE("ten thousand switches back and forth keep every value on both sides", "[fiber]") {
  fiber_context thread;
  std::uint64_t shared = 0;
  test_fiber fiber(thread, [&](test_fiber& self) {
    std::uint64_t local = 7;  // lives on the fiber's stack across every switch
    for (std::uint64_t i = 0; i < 10000; ++i) {
      REQUIRE(shared == 2 * i);
      local = local * 31 + i;
      shared = 2 * i + 1;
      self.suspend();
    }
    shared = local;
  });
  std::uint64_t expected = 7;
  for (std::uint64_t i = 0; i < 10000; ++i) {
    shared = 2 * i;
    fiber.resume();
    REQUIRE(shared == 2 * i + 1);
    expected = expected * 31 + i;
  }
  fiber.resume();
  CHECK(fiber.done());
  CHECK(shared == expected);
}

TEST_CASE("fibers switch to each other directly, not only through the thread", "[fiber]") {
  fiber_context thread;
  std::vector<int> order;
  test_fiber* second_fiber = nullptr;
  test_fiber first(thread, [&](test_fiber& self) {
    order.push_back(1);
    fiber_context::switch_to(self.context(), second_fiber->context());
    order.push_back(3);
  });
  test_fiber second(thread, [&](test_fiber& self) {
    order.push_back(2);
    fiber_context::switch_to(self.context(), first.context());
    order.push_back(4);
  });
  second_fiber = &second;
  first.resume();  // 1, 2, 3, and first ends back on the thread
  CHECK(first.done());
  second.resume();  // 4
  CHECK(second.done());
  CHECK(order == std::vector<int>{1, 2, 3, 4});
}

// Twelve values live across the hop: at -O2 the compiler keeps as many as it can in the
// callee-saved registers (and d8-d15 on AArch64), which the other context fills with its own.
using hop_function = void (*)(void*);
volatile hop_function no_hop = [](void*) {};

__attribute__((noinline)) std::uint64_t live_across(std::uint64_t seed, hop_function hop,
                                                    void* arg) {
  // Each value read separately through volatile: the compiler cannot recompute one from
  // another after the hop, it has to keep all twelve.
  volatile std::uint64_t source[10];
  volatile double real_source[4];
  for (std::uint64_t k = 0; k < 10; ++k) source[k] = seed * (2 * k + 3) + k;
  for (int k = 0; k < 4; ++k) real_source[k] = static_cast<double>(seed) * (k + 1) + 0.5;
  const std::uint64_t a = source[0], b = source[1], c = source[2], d = source[3], e = source[4];
  const std::uint64_t f = source[5], g = source[6], h = source[7], i = source[8], j = source[9];
  const double w = real_source[0], x = real_source[1], y = real_source[2], z = real_source[3];
  hop(arg);
  return a ^ (b << 1) ^ (c << 2) ^ (d << 3) ^ (e << 4) ^ (f << 5) ^ (g << 6) ^ (h << 7) ^ (i << 8) ^
         (j << 9) ^ static_cast<std::uint64_t>(w * x + y * z);
}

TEST_CASE("callee-saved registers are kept per context across a switch", "[fiber]") {
  fiber_context thread;
  const std::uint64_t thread_seed = 0x1234567, fiber_seed = 0x7654321;
  std::uint64_t fiber_result = 0;
  test_fiber fiber(thread, [&](test_fiber& self) {
    fiber_result = live_across(
        fiber_seed, [](void* f) { static_cast<test_fiber*>(f)->suspend(); }, &self);
  });
  const std::uint64_t thread_result = live_across(
      thread_seed, [](void* f) { static_cast<test_fiber*>(f)->resume(); }, &fiber);
  CHECK(thread_result == live_across(thread_seed, no_hop, nullptr));
  fiber.resume();
  CHECK(fiber.done());
  CHECK(fiber_result == live_across(fiber_seed, no_hop, nullptr));
}

// 1/3 differs in its last bit between rounding modes: the SSE (MXCSR) or FPCR rounding.
// valgrind computes SSE arithmetic in round-to-nearest whatever the mode: not checked there.
double third() {
  volatile double one = 1.0, three = 3.0;
  return one / three;
}
bool arithmetic_follows_rounding_mode() {
#if defined(SOCKETSERVER_DETAIL_VALGRIND)
  return !RUNNING_ON_VALGRIND;
#else
  return true;
#endif
}

// fegetround() reads the x87 control word on x86-64; MXCSR has its own rounding bits.
int rounding() {
#if defined(__x86_64__)
  std::uint32_t mxcsr = 0;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  const int sse = static_cast<int>((mxcsr & 0x6000) >> 3);  // RC bits 13-14, as FE_* values
  return sse == fegetround() ? sse : -1;
#else
  return fegetround();
#endif
}

struct rounding_restorer {
  ~rounding_restorer() { fesetround(FE_TONEAREST); }
};

TEST_CASE("each context keeps its own floating-point rounding mode", "[fiber]") {
  rounding_restorer restore;
  REQUIRE(rounding() == FE_TONEAREST);
  const double nearest = third();
  fesetround(FE_UPWARD);
  const double upward = third();
  fesetround(FE_DOWNWARD);
  const double downward = third();
  const bool exact = arithmetic_follows_rounding_mode();
  if (exact) REQUIRE(upward != downward);

  // A new fiber starts with its creator's control words, as a new thread does.
  fesetround(FE_UPWARD);
  fiber_context thread;
  test_fiber inherits(thread, [&](test_fiber&) {
    CHECK(rounding() == FE_UPWARD);
    if (exact) CHECK(third() == upward);
  });
  fesetround(FE_TONEAREST);
  inherits.resume();
  CHECK(rounding() == FE_TONEAREST);

  test_fiber fiber(thread, [&](test_fiber& self) {
    CHECK(rounding() == FE_TONEAREST);
    fesetround(FE_UPWARD);
    self.suspend();
    CHECK(rounding() == FE_UPWARD);
    if (exact) CHECK(third() == upward);
    fesetround(FE_TONEAREST);
    self.suspend();
    CHECK(rounding() == FE_TONEAREST);
    if (exact) CHECK(third() == nearest);
  });
  fiber.resume();
  CHECK(rounding() == FE_TONEAREST);  // the fiber's FE_UPWARD stayed with the fiber
  if (exact) CHECK(third() == nearest);
  fesetround(FE_DOWNWARD);
  fiber.resume();
  CHECK(rounding() == FE_DOWNWARD);  // and the thread's FE_DOWNWARD with the thread
  if (exact) CHECK(third() == downward);
  fiber.resume();
  CHECK(fiber.done());
  CHECK(rounding() == FE_DOWNWARD);
}

TEST_CASE("exceptions are thrown and caught inside fibers", "[fiber][exceptions]") {
  fiber_context thread;
  int caught = 0;
  test_fiber fiber(thread, [&](test_fiber& self) {
    for (int i = 0; i < 100; ++i) {
      try {
        throw std::runtime_error("round " + std::to_string(i));
      } catch (const std::runtime_error& e) {
        CHECK(std::string(e.what()) == "round " + std::to_string(i));
        ++caught;
      }
      self.suspend();
    }
    throw std::logic_error("escapes the fiber");  // test_fiber hands it to resume()
  });
  for (int i = 0; i < 100; ++i) fiber.resume();
  CHECK(caught == 100);
  CHECK_THROWS_WITH(fiber.resume(), "escapes the fiber");
  CHECK(fiber.done());
}

TEST_CASE("a fiber suspended inside a catch block keeps its exception while another throws",
          "[fiber][exceptions]") {
  fiber_context thread;
  std::vector<std::string> rethrown;
  test_fiber a(thread, [&](test_fiber& self) {
    try {
      throw std::runtime_error("a");
    } catch (const std::runtime_error& e) {
      self.suspend();  // b throws and catches, and suspends in its catch block
      CHECK(std::string(e.what()) == "a");
      CHECK(current_message() == "a");  // not b's, innermost on a shared stack
      self.suspend();
      try {
        throw;
      } catch (const std::runtime_error& again) {
        rethrown.push_back(again.what());
      }
    }
    CHECK_FALSE(std::current_exception());
  });
  test_fiber b(thread, [&](test_fiber& self) {
    try {
      throw std::logic_error("b");
    } catch (const std::logic_error&) {
      self.suspend();
      CHECK(current_message() == "b");
      try {
        throw;
      } catch (const std::logic_error& again) {
        rethrown.push_back(again.what());
      }
    }
    CHECK_FALSE(std::current_exception());
  });
  a.resume();
  CHECK_FALSE(std::current_exception());  // the thread handles none
  b.resume();
  CHECK_FALSE(std::current_exception());
  a.resume();
  b.resume();  // b ends its catch block while a is still in its own
  CHECK(b.done());
  a.resume();
  CHECK(a.done());
  CHECK(rethrown == std::vector<std::string>{"b", "a"});
  CHECK_FALSE(std::current_exception());
}

TEST_CASE("eight fibers interleave throwing, catching and suspending in catch blocks",
          "[fiber][exceptions]") {
  fiber_context thread;
  std::vector<test_fiber*> fibers;
  std::vector<std::unique_ptr<test_fiber>> owned;
  int checked = 0;
  for (int n = 0; n < 8; ++n) {
    owned.push_back(std::make_unique<test_fiber>(thread, [&, n](test_fiber& self) {
      for (int round = 0; round < 50; ++round) {
        const std::string name = std::to_string(n) + "/" + std::to_string(round);
        try {
          throw std::runtime_error(name);
        } catch (const std::exception&) {
          for (int k = 0; k <= n % 3; ++k) self.suspend();
          if (current_message() == name) ++checked;
        }
      }
    }));
  }
  for (int step = 0; step < 1000; ++step) {
    bool all_done = true;
    for (auto& fiber : owned)
      if (!fiber->done()) {
        fiber->resume();
        all_done = false;
      }
    if (all_done) break;
  }
  for (auto& fiber : owned) CHECK(fiber->done());
  CHECK(checked == 8 * 50);
}

struct suspends_in_destructor {
  test_fiber& self;
  int& during_unwind;
  ~suspends_in_destructor() {
    self.suspend();  // in the middle of the fiber's stack unwinding
    during_unwind = std::uncaught_exceptions();
  }
};

TEST_CASE("std::uncaught_exceptions() is per context", "[fiber][exceptions]") {
  fiber_context thread;
  int during_unwind = -1;
  test_fiber fiber(thread, [&](test_fiber& self) {
    try {
      suspends_in_destructor guard{self, during_unwind};
      throw std::runtime_error("unwinding");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()) == "unwinding");
    }
    CHECK(std::uncaught_exceptions() == 0);
  });
  fiber.resume();  // suspended with an exception in flight
  CHECK(std::uncaught_exceptions() == 0);
  fiber.resume();
  CHECK(fiber.done());
  CHECK(during_unwind == 1);
}

// Recurses until the stack pointer is within `margin` bytes of the stack's bottom, then
// suspends there.
__attribute__((noinline)) int recurse_to(const char* bottom, std::size_t margin, test_fiber& self,
                                         int depth, std::uintptr_t& lowest) {
  volatile char frame[256];
  frame[0] = static_cast<char>(depth);
  const auto here = reinterpret_cast<std::uintptr_t>(&frame[0]);
  if (here - reinterpret_cast<std::uintptr_t>(bottom) > margin) {
    const int deepest = recurse_to(bottom, margin, self, depth + 1, lowest);
    frame[1] = 0;  // the frame is used after the call: no tail call
    return deepest;
  }
  lowest = here;
  self.suspend();
  return depth;
}

TEST_CASE("a fiber recurses to within a few KiB of its stack's bottom", "[fiber]") {
  fiber_context thread;
  int depth = 0;
  std::uintptr_t lowest = 0;
  constexpr std::size_t margin = 8 * 1024;
  test_fiber fiber(thread, [&](test_fiber& self) {
    depth = recurse_to(static_cast<const char*>(self.stack().bottom()), margin, self, 0, lowest);
  });
  fiber.resume();  // suspended at the deepest point
  const auto bottom = reinterpret_cast<std::uintptr_t>(fiber.stack().bottom());
  CHECK(lowest - bottom <= margin);
  CHECK(lowest > bottom);
  fiber.resume();
  CHECK(fiber.done());
  CHECK(depth > 100);
}

TEST_CASE("fiber_stack: pages, a guard below, moves", "[fiber][stack]") {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  fiber_stack stack = fiber_stack::allocate(page + 1);
  REQUIRE(stack);
  CHECK(stack.size() == 2 * page);
  const auto bottom = static_cast<char*>(stack.bottom());
  CHECK(static_cast<char*>(stack.top()) - bottom == static_cast<std::ptrdiff_t>(2 * page));
  bottom[0] = 1;  // usable from bottom() to top()
  bottom[2 * page - 1] = 1;
  CHECK(stack.guards(bottom - 1));
  CHECK(stack.guards(bottom - page));
  CHECK_FALSE(stack.guards(bottom));
  CHECK_FALSE(stack.guards(bottom - page - 1));

  fiber_stack moved = std::move(stack);
  CHECK_FALSE(stack);  // NOLINT(bugprone-use-after-move): moved-from is empty
  CHECK(moved.bottom() == bottom);
  CHECK_FALSE(fiber_stack().guards(nullptr));
}

TEST_CASE("fiber_stack: a failed mmap names the operation, the size and the errno text",
          "[fiber][stack]") {
  try {
    fiber_stack::allocate(std::size_t{1} << 62);  // beyond any address space
    FAIL("allocate succeeded");
  } catch (const std::system_error& e) {
    // ENOMEM; valgrind says EINVAL
    CHECK((e.code().value() == ENOMEM || e.code().value() == EINVAL));
    CHECK(std::string(e.what()) ==
          "mmap fiber stack of 4611686018427387904 bytes: " + e.code().message());
  }
}

TEST_CASE("fiber_stack_pool: give_back then take returns the same memory, up to the cap",
          "[fiber][stack]") {
  fiber_stack_pool pool(100 * 1024, 2);
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  CHECK(pool.stack_size() % page == 0);
  CHECK(pool.stack_size() >= 100 * 1024);

  fiber_stack first = pool.take();
  CHECK(first.size() == pool.stack_size());
  void* const memory = first.bottom();
  pool.give_back(std::move(first));
  CHECK(pool.cached() == 1);
  fiber_stack again = pool.take();
  CHECK(again.bottom() == memory);
  CHECK(pool.cached() == 0);

  fiber_stack b = pool.take(), c = pool.take();
  pool.give_back(std::move(again));
  pool.give_back(std::move(b));
  pool.give_back(std::move(c));  // over the cap: freed
  CHECK(pool.cached() == 2);
  pool.give_back(fiber_stack::allocate(pool.stack_size() * 2));  // another size: freed
  pool.give_back(fiber_stack());
  CHECK(pool.cached() == 2);
}

TEST_CASE("a thousand fibers run to their end one after another on one pooled stack",
          "[fiber][stack]") {
  fiber_context thread;
  fiber_stack_pool pool(64 * 1024);
  struct job {
    fiber_context* thread;
    fiber_context* self;
    int value;
  };
  void* memory = nullptr;
  int total = 0;
  for (int i = 0; i < 1000; ++i) {
    fiber_stack stack = pool.take();
    if (i == 0) memory = stack.bottom();
    CHECK(stack.bottom() == memory);
    job work{&thread, nullptr, i};
    {
      fiber_context context(
          stack,
          [](void* arg) {
            auto* w = static_cast<job*>(arg);
            w->value *= 2;
            fiber_context::exit_to(*w->self, *w->thread);
          },
          &work);
      work.self = &context;
      fiber_context::switch_to(thread, context);
    }
    total += work.value;
    pool.give_back(std::move(stack));
  }
  CHECK(total == 999 * 1000);
}

// What the overflow report writes for a client, without allocating: as address::to_string().
std::string signal_safe_text(const ss::address& a) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const int saved = dup(STDERR_FILENO);
  dup2(pipe_fds[1], STDERR_FILENO);
  ss::detail::signal_safe_line line;
  line.put_address(a.data(), a.size());
  line.write_to_stderr();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(pipe_fds[1]);
  char buffer[512];
  const ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
  close(pipe_fds[0]);
  REQUIRE(n > 0);
  return std::string(buffer, static_cast<std::size_t>(n) - 1);  // less the newline
}

TEST_CASE("the overflow report names the client as address::to_string() does",
          "[fiber][overflow]") {
  for (const ss::address& a :
       {ss::address("127.0.0.1", 5555), ss::address("10.200.3.4", 65535), ss::address("::1", 80),
        ss::address("::", 1), ss::address("2001:db8::ff00:42:8329", 443),
        ss::address("2001:db8:0:1:0:0:0:1", 9), ss::address("fe80:1:2:3:4:5:6:7", 7),
        ss::address("0:0:1::", 2), ss::address("::ffff:192.0.2.1", 3), ss::address("/tmp/s.sock"),
        ss::address(std::string_view("\0abstract", 9)), ss::address("")})
    CHECK(signal_safe_text(a) == a.to_string());
}

TEST_CASE("set_running_fiber records the stack and the client", "[fiber][overflow]") {
  fiber_stack stack = fiber_stack::allocate(4096);
  const ss::address client("127.0.0.1", 5555);
  ss::detail::set_running_fiber(&stack, client.data(), client.size());
  CHECK(ss::detail::running_fiber.stack == &stack);
  CHECK(ss::detail::running_fiber.peer == client.data());
  ss::detail::set_running_fiber(nullptr, client.data(), client.size());
  CHECK(ss::detail::running_fiber.stack == nullptr);
  CHECK(ss::detail::running_fiber.peer == nullptr);  // the loop runs: no client
}

volatile std::size_t recursion_limit = ~std::size_t{0};

__attribute__((noinline)) std::size_t overflow(std::size_t depth) {
  volatile char frame[512];
  frame[0] = static_cast<char>(depth);
  if (depth >= recursion_limit) return depth;
  return overflow(depth + 1) + static_cast<std::size_t>(frame[0] & 1);
}

TEST_CASE("a fiber stack overflow is reported as one, and the process dies of SIGSEGV",
          "[fiber][overflow]") {
  if (asan) {
    SUCCEED("skipped: AddressSanitizer reports stack overflows itself");
    return;
  }
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    dup2(pipe_fds[1], STDERR_FILENO);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    alarm(30);  // bounded: SIGALRM instead of SIGSEGV fails the test
    ss::detail::install_fiber_overflow_reporter();
    ss::detail::install_fiber_overflow_reporter();  // idempotent
    ss::detail::alternate_signal_stack signal_stack;
    fiber_stack stack = fiber_stack::allocate(64 * 1024);
    fiber_context thread;
    fiber_context fiber(
        stack, [](void*) { _exit(static_cast<int>(overflow(0) & 1) + 3); }, nullptr);
    const ss::address client("127.0.0.1", 40000);
    ss::detail::set_running_fiber(&stack, client.data(), client.size());
    fiber_context::switch_to(thread, fiber);
    _exit(2);
  }
  close(pipe_fds[1]);
  std::string output;
  char buffer[512];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    output.append(buffer, static_cast<std::size_t>(n));
  }
  close(pipe_fds[0]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  // (Under qemu-user, qemu's own line about the signal follows.)
  CHECK(output.rfind("socketserver: fiber stack overflow (fiber_stack_size is 65536 bytes; "
                     "raise it) in the handler for 127.0.0.1:40000\n",
                     0) == 0);
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("a SIGSEGV that is no fiber's overflow reaches the handler installed before",
          "[fiber][overflow]") {
  if (asan) {
    SUCCEED("skipped: no reporter is installed under AddressSanitizer");
    return;
  }
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(30);
    struct sigaction previous {};
    previous.sa_handler = [](int) { _exit(42); };
    sigemptyset(&previous.sa_mask);
    sigaction(SIGSEGV, &previous, nullptr);
    ss::detail::install_fiber_overflow_reporter();
    ss::detail::alternate_signal_stack signal_stack;
    fiber_stack stack = fiber_stack::allocate(64 * 1024);
    ss::detail::set_running_fiber(&stack, nullptr, 0);  // a fiber runs, but faults elsewhere
    fiber_stack other = fiber_stack::allocate(4096);
    *(static_cast<volatile char*>(other.bottom()) - 1) = 1;  // another stack's guard
    _exit(2);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 42);
}

}  // namespace
