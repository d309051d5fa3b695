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

#include <netinet/in.h>  // sockaddr_in, sockaddr_in6
#include <signal.h>      // sigaction, sigaltstack, stack_t, siginfo_t, SIGSEGV, SA_*, SIGSTKSZ
#include <sys/socket.h>  // sockaddr, socklen_t, AF_INET, AF_INET6, AF_UNIX
#include <sys/un.h>      // sockaddr_un
#include <unistd.h>      // write, STDERR_FILENO

#include <cerrno>        // errno
#include <cstddef>       // std::size_t, offsetof
#include <cstdint>       // std::uint8_t
#include <cstring>       // std::memcpy
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
  const sockaddr* peer;      // the client it serves, or nullptr (formatted only on a fault)
  socklen_t peer_length;
};
inline thread_local running_fiber_record running_fiber{};

/// Records the fiber about to run on this thread (`stack` nullptr: the loop runs) and the
/// client it serves (`peer` may be nullptr; it must live while the fiber runs).
inline void set_running_fiber(const fiber_stack* stack, const sockaddr* peer,
                              socklen_t peer_length) noexcept {
  running_fiber_record& record = running_fiber;
  record.stack = stack;
  record.peer = stack != nullptr ? peer : nullptr;
  record.peer_length = peer_length;
}

/// Appends to a fixed buffer without allocating (async-signal-safe).
class signal_safe_line {
 public:
  void put(const char* text) noexcept {
    while (*text != '\0' && n_ < sizeof line_ - 2) line_[n_++] = *text++;
  }
  void put(char c) noexcept {
    if (n_ < sizeof line_ - 2) line_[n_++] = c;
  }
  void put_number(unsigned long long value, unsigned base = 10) noexcept {
    char digits[24];
    std::size_t d = sizeof digits;
    do digits[--d] = "0123456789abcdef"[value % base];
    while ((value /= base) != 0 && d > 0);
    while (d < sizeof digits) put(digits[d++]);
  }
  // As address::to_string() writes it: 127.0.0.1:8000, [::1]:8000, or the socket's path.
  void put_address(const sockaddr* peer, socklen_t length) noexcept {
    if (peer == nullptr || length < static_cast<socklen_t>(sizeof(sa_family_t))) return;
    if (peer->sa_family == AF_INET && length >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
      sockaddr_in in{};
      std::memcpy(&in, peer, sizeof in);
      std::uint8_t bytes[4];
      std::memcpy(bytes, &in.sin_addr, sizeof bytes);
      put_ipv4(bytes);
      put(':');
      put_number(ntohs(in.sin_port));
    } else if (peer->sa_family == AF_INET6 &&
               length >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
      sockaddr_in6 in6{};
      std::memcpy(&in6, peer, sizeof in6);
      std::uint8_t bytes[16];
      std::memcpy(bytes, &in6.sin6_addr, sizeof bytes);
      unsigned groups[8];
      for (int i = 0; i < 8; ++i) groups[i] = (bytes[2 * i] << 8u) | bytes[2 * i + 1];
      put('[');
      if (groups[0] == 0 && groups[1] == 0 && groups[2] == 0 && groups[3] == 0 && groups[4] == 0 &&
          groups[5] == 0xffff) {  // an IPv4 client of a dual-stack socket
        put("::ffff:");
        put_ipv4(bytes + 12);
      } else {
        put_ipv6_groups(groups);
      }
      if (in6.sin6_scope_id != 0) {
        put('%');
        put_number(in6.sin6_scope_id);
      }
      put("]:");
      put_number(ntohs(in6.sin6_port));
    } else if (peer->sa_family == AF_UNIX) {
      const std::size_t start = offsetof(sockaddr_un, sun_path);
      const std::size_t end = static_cast<std::size_t>(length);
      const char* path = reinterpret_cast<const char*>(peer) + start;
      if (end <= start) {
        put("unnamed Unix socket");
      } else if (path[0] == '\0') {  // Linux's abstract namespace, counted by length
        put('@');
        for (std::size_t i = 1; start + i < end; ++i) put(path[i]);
      } else {
        for (std::size_t i = 0; start + i < end && path[i] != '\0'; ++i) put(path[i]);
      }
    }
  }
  void put_ipv4(const std::uint8_t* bytes) noexcept {
    for (int i = 0; i < 4; ++i) {
      if (i > 0) put('.');
      put_number(bytes[i]);
    }
  }
  // As inet_ntop() does (RFC 5952): the longest run of two or more zero groups is "::".
  void put_ipv6_groups(const unsigned* groups) noexcept {
    int run = -1, run_length = 1;
    for (int i = 0; i < 8;) {
      int j = i;
      while (j < 8 && groups[j] == 0) ++j;
      if (j - i > run_length) run = i, run_length = j - i;
      i = j == i ? i + 1 : j;
    }
    for (int i = 0; i < 8; ++i) {
      if (i == run) {
        put("::");
        i += run_length - 1;
        continue;
      }
      if (i > 0 && i != run + run_length) put(':');
      put_number(groups[i], 16);
    }
  }
  void write_to_stderr() noexcept {
    line_[n_++] = '\n';
    const int saved_errno = errno;
    [[maybe_unused]] const auto written = ::write(STDERR_FILENO, line_, n_);  // dying anyway
    errno = saved_errno;
  }

 private:
  char line_[256];
  std::size_t n_ = 0;
};

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
    signal_safe_line line;
    line.put("socketserver: fiber stack overflow (fiber_stack_size is ");
    line.put_number(record.stack->size());
    line.put(" bytes; raise it)");
    if (record.peer != nullptr) {
      line.put(" in the handler for ");
      line.put_address(record.peer, record.peer_length);
    }
    line.write_to_stderr();
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
