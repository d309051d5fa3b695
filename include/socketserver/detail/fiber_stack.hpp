// SPDX-License-Identifier: MIT
// The stacks fibers run on: mmap'd, with a PROT_NONE guard page below them (stacks grow
// down, so an overflow faults there instead of writing over whatever lies below), and a
// per-loop-thread pool that reuses them.
#pragma once

#include <sys/mman.h>  // mmap, mprotect, munmap, MAP_*, PROT_*
#include <unistd.h>    // sysconf, _SC_PAGESIZE

#include <cerrno>        // errno, ENOMEM
#include <cstddef>       // std::size_t
#include <cstdint>       // std::uintptr_t
#include <string>        // std::to_string
#include <system_error>  // std::system_error, std::system_category
#include <utility>       // std::exchange
#include <vector>        // std::vector

namespace socketserver {
namespace detail {

inline std::size_t page_size() noexcept {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

/// A fiber's stack: [bottom(), top()) is usable, the page(s) just below bottom() are the
/// guard. Move-only; the destructor unmaps guard and stack together.
class fiber_stack {
 public:
  fiber_stack() noexcept = default;

  /// A stack of at least `usable_size` bytes (rounded up to whole pages). MAP_NORESERVE: the
  /// pages a fiber never touches cost neither memory nor swap reservation.
  /// @throws std::system_error "mmap fiber stack of N bytes: <strerror>"
  static fiber_stack allocate(std::size_t usable_size) {
    const std::size_t page = page_size();
    if (usable_size == 0) usable_size = page;
    if (usable_size > SIZE_MAX / 2) fail(ENOMEM, "mmap", usable_size);
    const std::size_t usable = (usable_size + page - 1) / page * page;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#if defined(MAP_STACK)
    flags |= MAP_STACK;
#endif
#if defined(MAP_NORESERVE)
    flags |= MAP_NORESERVE;
#endif
    void* base = ::mmap(nullptr, usable + page, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (base == MAP_FAILED) fail(errno, "mmap", usable);
    if (::mprotect(base, page, PROT_NONE) != 0) {
      const int error = errno;
      ::munmap(base, usable + page);
      fail(error, "mprotect guard page of", usable);
    }
    fiber_stack stack;
    stack.base_ = static_cast<char*>(base);
    stack.guard_ = page;
    stack.size_ = usable;
    return stack;
  }

  fiber_stack(fiber_stack&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)),
        guard_(std::exchange(other.guard_, 0)),
        size_(std::exchange(other.size_, 0)) {}
  fiber_stack& operator=(fiber_stack&& other) noexcept {
    if (this != &other) {
      release();
      base_ = std::exchange(other.base_, nullptr);
      guard_ = std::exchange(other.guard_, 0);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  fiber_stack(const fiber_stack&) = delete;
  fiber_stack& operator=(const fiber_stack&) = delete;
  ~fiber_stack() { release(); }

  void* bottom() const noexcept { return base_ ? base_ + guard_ : nullptr; }
  void* top() const noexcept { return base_ ? base_ + guard_ + size_ : nullptr; }
  std::size_t size() const noexcept { return size_; }
  /// True when `address` is in the guard below the stack: an overflow faulted there.
  bool guards(const void* address) const noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(address);
    const auto low = reinterpret_cast<std::uintptr_t>(base_);
    return base_ != nullptr && a >= low && a < low + guard_;
  }
  explicit operator bool() const noexcept { return base_ != nullptr; }

 private:
  [[noreturn]] static void fail(int error, const char* operation, std::size_t usable) {
    throw std::system_error(
        error, std::system_category(),
        std::string(operation) + " fiber stack of " + std::to_string(usable) + " bytes");
  }
  void release() noexcept {
    if (base_ != nullptr) ::munmap(base_, guard_ + size_);
    base_ = nullptr;
  }

  char* base_ = nullptr;  // the lowest guard page
  std::size_t guard_ = 0;
  std::size_t size_ = 0;
};

/// The stacks of one loop thread (not thread-safe): a fiber that ends gives its stack back,
/// the next takes it without an mmap/munmap pair (and its pages are already faulted in).
class fiber_stack_pool {
 public:
  explicit fiber_stack_pool(std::size_t stack_size, std::size_t max_cached = 256)
      : stack_size_((stack_size == 0 ? page_size() : stack_size + page_size() - 1) / page_size() *
                    page_size()),
        max_cached_(max_cached) {
    cache_.reserve(max_cached_);  // so give_back() never allocates
  }

  /// Every stack take() returns has this many usable bytes (the size asked for, in pages).
  std::size_t stack_size() const noexcept { return stack_size_; }
  std::size_t cached() const noexcept { return cache_.size(); }

  /// A cached stack, or a new one.
  /// @throws std::system_error when a new one cannot be mapped
  fiber_stack take() {
    if (cache_.empty()) return fiber_stack::allocate(stack_size_);
    fiber_stack stack = std::move(cache_.back());
    cache_.pop_back();
    return stack;
  }

  /// Caches `stack` for the next take(), or frees it when the cache is full (or it is not
  /// one of this pool's size).
  void give_back(fiber_stack&& stack) noexcept {
    if (stack && stack.size() == stack_size_ && cache_.size() < max_cached_)
      cache_.push_back(std::move(stack));
    fiber_stack discard = std::move(stack);  // unmapped here if not cached
  }

 private:
  std::size_t stack_size_;
  std::size_t max_cached_;
  std::vector<fiber_stack> cache_;
};

}  // namespace detail
}  // namespace socketserver
