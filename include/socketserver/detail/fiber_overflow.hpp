// SPDX-License-Identifier: MIT
// Telling a fiber stack overflow from a bare SIGSEGV. A fiber that overflows its stack writes
// into the guard page below it; a SIGSEGV handler, running on an alternate signal stack (the
// fiber's own is used up), compares the faulting address with the guard of the fiber the
// thread is running, prints one line naming the stack size and the client, and lets the
// fault kill the process as before. Any other SIGSEGV goes to the handler installed before.
//
// Under AddressSanitizer nothing is installed: ASan has its own SIGSEGV handler and
// alternate stacks, and reports a stack overflow (with the fiber's stack trace) itself.
#pragma once

#include <signal.h>  // sigaction, sigaltstack, stack_t, siginfo_t, SIGSEGV, SA_*, SIGSTKSZ
#include <unistd.h>  // write, STDERR_FILENO

#include <cerrno>        // errno
#include <cstddef>       // std::size_t
#include <system_error>  // std::system_error, std::system_category

#include "fiber_stack.hpp"

#if defined(__SANITIZE_ADDRESS__)
#  define SOCKETSERVER_DETAIL_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define SOCKETSERVER_DETAIL_ASAN 1
#  endif
#endif

namespace socketserver {
namespace detail {

/// What the thread runs now, as the SIGSEGV handler reads it: a plain thread-local record
/// (constant-initialised, so reading it in the handler neither allocates nor locks).
struct running_fiber_record {
  const fiber_stack* stack;  // nullptr while the loop itself runs
  char label[112];           // e.g. the client's address, cut to fit
};
inline thread_local running_fiber_record running_fiber{};

/// Records the fiber about to run on this thread (`stack` nullptr: the loop runs). `label`
/// (may be nullptr) is copied, so it may be a temporary.
inline void set_running_fiber(const fiber_stack* stack, const char* label) noexcept {
  running_fiber_record& record = running_fiber;
  record.stack = stack;
  std::size_t n = 0;
  if (stack != nullptr && label != nullptr)
    for (; n + 1 < sizeof record.label && label[n] != '\0'; ++n) record.label[n] = label[n];
  record.label[n] = '\0';
}

/// The SIGSEGV handler found before ours: faults that are no fiber's overflow go there.
inline struct sigaction previous_segv_action {};

inline void restore_default_segv() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGSEGV, &dfl, nullptr);
}

/// Async-signal-safe: only write(2) and sigaction(2). Returning re-executes the faulting
/// instruction, which then faults under SIG_DFL: the process still dies of SIGSEGV.
inline void fiber_overflow_handler(int signal_number, siginfo_t* info, void* context) {
  const running_fiber_record& record = running_fiber;
  if (record.stack != nullptr && record.stack->guards(info->si_addr)) {
    char line[256];
    std::size_t n = 0;
    auto put = [&](const char* text) {
      while (*text != '\0' && n < sizeof line - 1) line[n++] = *text++;
    };
    char digits[24];
    std::size_t d = sizeof digits;
    digits[--d] = '\0';
    std::size_t size = record.stack->size();
    do digits[--d] = static_cast<char>('0' + size % 10);
    while ((size /= 10) != 0 && d > 0);
    put("socketserver: fiber stack overflow (fiber_stack_size is ");
    put(digits + d);
    put(" bytes; raise it)");
    if (record.label[0] != '\0') {
      put(" serving ");
      put(record.label);
    }
    line[n++] = '\n';
    const int saved_errno = errno;
    [[maybe_unused]] const auto written = ::write(STDERR_FILENO, line, n);  // dying anyway
    errno = saved_errno;
    restore_default_segv();
    return;
  }
  const struct sigaction& previous = previous_segv_action;
  if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction != nullptr) {
    previous.sa_sigaction(signal_number, info, context);
  } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(signal_number);
  } else {
    restore_default_segv();  // a fault cannot be ignored: re-executed, it kills as before
  }
}

/// Installs the SIGSEGV handler once per process (idempotent, thread-safe); a no-op under
/// AddressSanitizer. Each loop thread also needs an alternate_signal_stack.
/// @throws std::system_error "sigaction SIGSEGV: <strerror>"
inline void install_fiber_overflow_reporter() {
#if !defined(SOCKETSERVER_DETAIL_ASAN)
  static const bool installed = [] {
    struct sigaction action {};
    action.sa_sigaction = &fiber_overflow_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (::sigaction(SIGSEGV, &action, &previous_segv_action) != 0)
      throw std::system_error(errno, std::system_category(), "sigaction SIGSEGV");
    return true;
  }();
  static_cast<void>(installed);
#endif
}

/// This thread's signal handlers run on their own mapped stack while the object lives (a
/// fiber that overflowed has no stack left for them); the previous one is restored after.
/// A no-op under AddressSanitizer, which gives every thread its own.
class alternate_signal_stack {
 public:
  /// @throws std::system_error "mmap fiber stack of N bytes: ..." or "sigaltstack: ..."
  alternate_signal_stack() {
#if !defined(SOCKETSERVER_DETAIL_ASAN)
    const std::size_t wanted = static_cast<std::size_t>(SIGSTKSZ);
    memory_ = fiber_stack::allocate(wanted > 65536 ? wanted : 65536);
    stack_t stack{};
    stack.ss_sp = memory_.bottom();
    stack.ss_size = memory_.size();
    if (::sigaltstack(&stack, &previous_) != 0)
      throw std::system_error(errno, std::system_category(), "sigaltstack");
#endif
  }
  alternate_signal_stack(const alternate_signal_stack&) = delete;
  alternate_signal_stack& operator=(const alternate_signal_stack&) = delete;
  ~alternate_signal_stack() {
    if (memory_) ::sigaltstack(&previous_, nullptr);
  }

 private:
  fiber_stack memory_;
  stack_t previous_{};
};

}  // namespace detail
}  // namespace socketserver
