// SPDX-License-Identifier: MIT
// Stackful execution contexts: the thread's own, and fibers running on a fiber_stack. A
// switch saves the running context's callee-saved state and resumes another's, in assembly
// for x86-64 (System V) and AArch64 (AAPCS64), with ucontext elsewhere (or everywhere with
// SOCKETSERVER_FIBER_UCONTEXT defined, in every translation unit of the program). Each
// context also keeps its own C++ exception state, and the switches are announced to ASan,
// TSan and valgrind so they keep working across stacks.
#pragma once

#include <cerrno>        // errno
#include <cstddef>       // std::size_t
#include <cstdint>       // std::uintptr_t
#include <cstdlib>       // std::abort
#include <system_error>  // std::system_error, std::system_category
// The C++ runtimes under libstdc++ (libsupc++) and libc++ (libc++abi, libcxxrt, or libsupc++)
// all keep a thread's exception state in a __cxa_eh_globals that begins as exception_state
// below, returned by the C function __cxa_get_globals(). Not every <cxxabi.h> declares it
// (libc++abi's does not), and those that do disagree on its type: it is declared here under
// a name of our own, bound to the runtime's symbol.
#if defined(__GLIBCXX__) || defined(_LIBCPP_VERSION)
#  define SOCKETSERVER_DETAIL_FIBER_EH_GLOBALS 1
#  define SOCKETSERVER_DETAIL_STRING(x) #  x
#  define SOCKETSERVER_DETAIL_SYMBOL(prefix, name) SOCKETSERVER_DETAIL_STRING(prefix) name
extern "C" void* socketserver_detail_cxa_get_globals() noexcept
    __asm__(SOCKETSERVER_DETAIL_SYMBOL(__USER_LABEL_PREFIX__, "__cxa_get_globals"));
#endif

#include "fiber_overflow.hpp"
#include "fiber_stack.hpp"

#if !defined(SOCKETSERVER_FIBER_UCONTEXT)
#  if !((defined(__x86_64__) && !defined(__ILP32__)) || defined(__aarch64__)) || \
      !(defined(__ELF__) || defined(__APPLE__))
#    define SOCKETSERVER_FIBER_UCONTEXT 1
#  endif
#endif
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
#  include <ucontext.h>  // getcontext, makecontext, swapcontext
#endif

#if defined(__SANITIZE_THREAD__)
#  define SOCKETSERVER_DETAIL_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define SOCKETSERVER_DETAIL_TSAN 1
#  endif
#endif
#if defined(SOCKETSERVER_DETAIL_ASAN)
#  include <sanitizer/asan_interface.h>  // ASAN_UNPOISON_MEMORY_REGION, __sanitizer_*_switch_fiber
#endif
#if defined(SOCKETSERVER_DETAIL_TSAN)
#  include <sanitizer/tsan_interface.h>  // __tsan_*_fiber
#endif
#if defined(__has_include) && !defined(NVALGRIND)
#  if __has_include(<valgrind/valgrind.h>)
#    include <valgrind/valgrind.h>  // VALGRIND_STACK_REGISTER, VALGRIND_STACK_DEREGISTER
#    define SOCKETSERVER_DETAIL_VALGRIND 1
#  endif
#endif

#if !defined(SOCKETSERVER_FIBER_UCONTEXT)
// The switch, in a global asm function that every translation unit including this header
// emits: as a weak, hidden symbol in a COMDAT group on ELF (the linker keeps one copy; no
// duplicate symbols, nothing exported from a shared library), as a weak private definition
// on Mach-O. "_v1" names this frame layout: a newer header with another layout must rename.
//
// socketserver_fiber_switch_v1(void** save_sp, void* resume_sp): pushes the callee-saved
// registers and the FP control words, stores the stack pointer in *save_sp, loads resume_sp
// and pops the other context's. socketserver_fiber_start_v1 is where a new fiber's first
// switch "returns" to: it calls fiber_context::run(context), both from its initial frame.
// clang-format off
#  if defined(__APPLE__)
#    define SOCKETSERVER_DETAIL_FIBER_FUNCTION(name)                                      \
       ".section __TEXT,__text,regular,pure_instructions\n"                               \
       ".globl _" #name "\n.weak_definition _" #name "\n.private_extern _" #name "\n"      \
       ".p2align 4\n_" #name ":\n"
#    define SOCKETSERVER_DETAIL_FIBER_END(name) ""
#  else
#    define SOCKETSERVER_DETAIL_FIBER_FUNCTION(name)                                      \
       ".pushsection .text." #name ",\"axG\",%progbits," #name ",comdat\n"                \
       ".weak " #name "\n.hidden " #name "\n.type " #name ",%function\n"                  \
       ".p2align 4\n" #name ":\n"
#    define SOCKETSERVER_DETAIL_FIBER_END(name) ".size " #name ",.-" #name "\n.popsection\n"
#  endif

#  if defined(__x86_64__)
// System V: rbx, rbp, r12-r15 and rsp are callee-saved, and so are MXCSR's control bits
// and the x87 control word (saved whole here: 8 bytes below the six registers).
__asm__(SOCKETSERVER_DETAIL_FIBER_FUNCTION(socketserver_fiber_switch_v1)
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  popq %r8\n"  // not ret: a return to another call site than the call's throws off
        "  jmpq *%r8\n"  // the return-stack predictor, 3x slower (bench/fiber_switch)
        SOCKETSERVER_DETAIL_FIBER_END(socketserver_fiber_switch_v1));
__asm__(SOCKETSERVER_DETAIL_FIBER_FUNCTION(socketserver_fiber_start_v1)
        "  .cfi_startproc\n"
        "  .cfi_undefined rip\n"  // the outermost frame: unwinders and debuggers stop here
        "  movq %r12, %rdi\n"
        "  callq *%rbx\n"
        "  ud2\n"
        "  .cfi_endproc\n"
        SOCKETSERVER_DETAIL_FIBER_END(socketserver_fiber_start_v1));
#  elif defined(__aarch64__)
// AAPCS64: x19-x29, x30 (lr), sp and the low halves of v8-v15 (d8-d15) are callee-saved,
// and so is FPCR (rounding, flush-to-zero). 176 bytes keep sp 16-byte aligned.
__asm__(SOCKETSERVER_DETAIL_FIBER_FUNCTION(socketserver_fiber_switch_v1)
        "  sub sp, sp, #176\n"
        "  stp x19, x20, [sp, #0]\n"
        "  stp x21, x22, [sp, #16]\n"
        "  stp x23, x24, [sp, #32]\n"
        "  stp x25, x26, [sp, #48]\n"
        "  stp x27, x28, [sp, #64]\n"
        "  stp x29, x30, [sp, #80]\n"
        "  stp d8, d9, [sp, #96]\n"
        "  stp d10, d11, [sp, #112]\n"
        "  stp d12, d13, [sp, #128]\n"
        "  stp d14, d15, [sp, #144]\n"
        "  mrs x9, fpcr\n"
        "  str x9, [sp, #160]\n"
        "  mov x9, sp\n"
        "  str x9, [x0]\n"
        "  mov sp, x1\n"
        "  ldp x19, x20, [sp, #0]\n"
        "  ldp x21, x22, [sp, #16]\n"
        "  ldp x23, x24, [sp, #32]\n"
        "  ldp x25, x26, [sp, #48]\n"
        "  ldp x27, x28, [sp, #64]\n"
        "  ldp x29, x30, [sp, #80]\n"
        "  ldp d8, d9, [sp, #96]\n"
        "  ldp d10, d11, [sp, #112]\n"
        "  ldp d12, d13, [sp, #128]\n"
        "  ldp d14, d15, [sp, #144]\n"
        "  ldr x9, [sp, #160]\n"
        "  msr fpcr, x9\n"
        "  add sp, sp, #176\n"
        "  ret\n"
        SOCKETSERVER_DETAIL_FIBER_END(socketserver_fiber_switch_v1));
__asm__(SOCKETSERVER_DETAIL_FIBER_FUNCTION(socketserver_fiber_start_v1)
        "  .cfi_startproc\n"
        "  .cfi_undefined x30\n"  // the outermost frame: unwinders and debuggers stop here
        "  mov x0, x19\n"
        "  blr x20\n"
        "  brk #0\n"
        "  .cfi_endproc\n"
        SOCKETSERVER_DETAIL_FIBER_END(socketserver_fiber_start_v1));
#  endif
// clang-format on
extern "C" {
__attribute__((visibility("hidden"))) void socketserver_fiber_switch_v1(void** save_sp,
                                                                        void* resume_sp) noexcept;
__attribute__((visibility("hidden"))) void socketserver_fiber_start_v1() noexcept;
}
#endif

namespace socketserver {
namespace detail {
// The two backends are different types (an inline namespace), so a program whose
// translation units disagree on SOCKETSERVER_FIBER_UCONTEXT fails to link, not at run time.
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
inline namespace fiber_ucontext {
#else
inline namespace fiber_asm {
#endif

/// A saved execution context. Not copyable or movable: a new fiber's first frame points at
/// its context. switch_to() and exit_to() are called on the thread the contexts belong to.
class fiber_context {
 public:
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
  static constexpr const char* backend = "ucontext";
#elif defined(__x86_64__)
  static constexpr const char* backend = "x86-64 assembly";
#else
  static constexpr const char* backend = "AArch64 assembly";
#endif

  /// The calling thread's own context (its original stack): what fibers switch back to.
  fiber_context() noexcept = default;

  /// A fiber on `stack`: the first switch_to() it runs `entry(arg)`, which must never return
  /// (a fiber ends with exit_to()). `stack` must outlive the context.
  fiber_context(fiber_stack& stack, void (*entry)(void*), void* arg)
      : entry_(entry), arg_(arg), stack_bottom_(stack.bottom()), stack_size_(stack.size()) {
#if defined(SOCKETSERVER_DETAIL_ASAN)
    // A pooled stack may still carry the poisoned frames of a fiber that never returned.
    ASAN_UNPOISON_MEMORY_REGION(stack.bottom(), stack.size());
#endif
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
    if (::getcontext(&context_) != 0)
      throw std::system_error(errno, std::system_category(), "getcontext for a fiber");
    context_.uc_stack.ss_sp = stack.bottom();
    context_.uc_stack.ss_size = stack.size();
    context_.uc_link = nullptr;
    // makecontext passes int arguments: the pointer goes in two halves.
    const auto self = reinterpret_cast<std::uintptr_t>(this);
    ::makecontext(&context_, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
                  static_cast<unsigned>(self >> 32), static_cast<unsigned>(self));
#else
    // The frame socketserver_fiber_switch_v1 pops: a new fiber starts with the creating
    // thread's FP control words (as a new thread does) and zeroed callee-saved registers,
    // except the two socketserver_fiber_start_v1 reads.
    auto* top = reinterpret_cast<std::uintptr_t*>(reinterpret_cast<std::uintptr_t>(stack.top()) &
                                                  ~std::uintptr_t{15});
    const auto run_address = reinterpret_cast<std::uintptr_t>(&fiber_context::run);
    const auto start_address = reinterpret_cast<std::uintptr_t>(&socketserver_fiber_start_v1);
#  if defined(__x86_64__)
    std::uint32_t mxcsr = 0;
    std::uint16_t x87_control = 0;
    __asm__ volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(x87_control));
    std::uintptr_t* frame = top - 10;  // start runs at top - 16: aligned for its call
    frame[0] = mxcsr | std::uintptr_t{x87_control} << 32;
    frame[1] = frame[2] = frame[3] = 0;                 // r15, r14, r13
    frame[4] = reinterpret_cast<std::uintptr_t>(this);  // r12: run()'s argument
    frame[5] = run_address;                             // rbx
    frame[6] = 0;                                       // rbp: the end of the frame chain
    frame[7] = start_address;                           // where the switch jumps
    frame[8] = frame[9] = 0;
#  else
    std::uintptr_t fpcr = 0;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    std::uintptr_t* frame = top - 22;  // 176 bytes: sp is back at top when start runs
    for (int i = 0; i < 22; ++i) frame[i] = 0;
    frame[0] = reinterpret_cast<std::uintptr_t>(this);  // x19: run()'s argument
    frame[1] = run_address;                             // x20
    frame[11] = start_address;                          // x30 (x29, the frame chain, is 0)
    frame[20] = fpcr;
#  endif
    stack_pointer_ = frame;
#endif
#if defined(SOCKETSERVER_DETAIL_TSAN)
    tsan_fiber_ = __tsan_create_fiber(0);
    owns_tsan_fiber_ = true;
#endif
#if defined(SOCKETSERVER_DETAIL_VALGRIND)
    valgrind_stack_id_ = VALGRIND_STACK_REGISTER(stack.bottom(), stack.top());
#endif
  }

  fiber_context(const fiber_context&) = delete;
  fiber_context& operator=(const fiber_context&) = delete;

  /// Releases the sanitizer and valgrind records of a fiber (never call it for the
  /// context that is running).
  ~fiber_context() {
#if defined(SOCKETSERVER_DETAIL_TSAN)
    if (owns_tsan_fiber_) __tsan_destroy_fiber(tsan_fiber_);
#endif
#if defined(SOCKETSERVER_DETAIL_VALGRIND)
    if (entry_ != nullptr) VALGRIND_STACK_DEREGISTER(valgrind_stack_id_);
#endif
  }

  /// Saves the running state into `from` (the context running now) and resumes `to`;
  /// returns when something switches back to `from`.
  static void switch_to(fiber_context& from, fiber_context& to) noexcept {
#if defined(SOCKETSERVER_DETAIL_ASAN)
    leave(from, to, &from.fake_stack_);
#else
    leave(from, to, nullptr);
#endif
    jump(from, to);
    from.arrive();
  }

  /// The last switch of a fiber that has ended (`from`, running now): it is never resumed,
  /// and may be destroyed once `to` runs.
  [[noreturn]] static void exit_to(fiber_context& from, fiber_context& to) noexcept {
    leave(from, to, nullptr);  // ASan: a nullptr save frees the fiber's fake stack
    jump(from, to);
    std::abort();  // an ended fiber was resumed
  }

 private:
  // The thread's C++ exception state (libstdc++'s and libc++abi's __cxa_eh_globals): the
  // exceptions being handled, innermost first, and std::uncaught_exceptions(). A fiber that
  // suspends in a catch block or in a destructor run by unwinding keeps its own.
  struct exception_state {
    void* caught_exceptions = nullptr;
    unsigned int uncaught_exceptions = 0;
#if defined(__ARM_EABI_UNWINDER__)
    void* propagating_exceptions = nullptr;
#endif
  };

  // leave() and jump() are inlined into the switch: under TSan an instrumented function
  // that returned between __tsan_switch_to_fiber() and the jump would pop its frame off the
  // shadow stack of the context switched to (below the bottom of a new fiber's).
  __attribute__((always_inline)) static void leave(fiber_context& from, fiber_context& to,
                                                   void** fake_stack_save) noexcept {
#if defined(SOCKETSERVER_DETAIL_FIBER_EH_GLOBALS)
    auto* now = static_cast<exception_state*>(socketserver_detail_cxa_get_globals());
    from.exceptions_ = *now;
    *now = to.exceptions_;
#endif
    static_cast<void>(from);
    static_cast<void>(to);
#if defined(SOCKETSERVER_DETAIL_ASAN)
    to.resumed_from_ = &from;
    __sanitizer_start_switch_fiber(fake_stack_save, to.stack_bottom_, to.stack_size_);
#else
    static_cast<void>(fake_stack_save);
#endif
#if defined(SOCKETSERVER_DETAIL_TSAN)
    // A thread's own context is learnt as it leaves: it may have been constructed on another
    // thread (a loop's, by the thread that starts the loop), whose TSan state is not this one.
    if (!from.owns_tsan_fiber_) from.tsan_fiber_ = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(to.tsan_fiber_, 0);
#endif
  }

  // Completes the switch in the context that now runs.
  void arrive() noexcept {
#if defined(SOCKETSERVER_DETAIL_ASAN)
    const void* bottom = nullptr;
    std::size_t size = 0;
    __sanitizer_finish_switch_fiber(fake_stack_, &bottom, &size);
    // The thread's own stack is learnt the first time the thread switches away.
    if (resumed_from_ != nullptr && resumed_from_->entry_ == nullptr) {
      resumed_from_->stack_bottom_ = bottom;
      resumed_from_->stack_size_ = size;
    }
#endif
  }

  __attribute__((always_inline)) static void jump(fiber_context& from, fiber_context& to) noexcept {
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
    if (::swapcontext(&from.context_, &to.context_) != 0) std::abort();
#else
    socketserver_fiber_switch_v1(&from.stack_pointer_, to.stack_pointer_);
#endif
  }

  static void run(fiber_context* self) noexcept {
    self->arrive();
    self->entry_(self->arg_);
    std::abort();  // entry returned instead of ending with exit_to()
  }
#if defined(SOCKETSERVER_FIBER_UCONTEXT)
  static void ucontext_entry(unsigned high, unsigned low) noexcept {
    run(reinterpret_cast<fiber_context*>(std::uintptr_t{high} << 32 | low));
  }
  ucontext_t context_{};
#else
  void* stack_pointer_ = nullptr;
#endif
  exception_state exceptions_{};
  void (*entry_)(void*) = nullptr;  // nullptr: the thread's own context
  void* arg_ = nullptr;
  const void* stack_bottom_ = nullptr;
  std::size_t stack_size_ = 0;  // the thread's own: learnt under ASan
#if defined(SOCKETSERVER_DETAIL_ASAN)
  void* fake_stack_ = nullptr;
  fiber_context* resumed_from_ = nullptr;
#endif
#if defined(SOCKETSERVER_DETAIL_TSAN)
  void* tsan_fiber_ = nullptr;
  bool owns_tsan_fiber_ = false;
#endif
#if defined(SOCKETSERVER_DETAIL_VALGRIND)
  unsigned valgrind_stack_id_ = 0;
#endif
};

}  // namespace fiber_ucontext / fiber_asm
}  // namespace detail
}  // namespace socketserver
