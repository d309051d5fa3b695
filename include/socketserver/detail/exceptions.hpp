// SPDX-License-Identifier: MIT
// Describing the exception being handled, for handle_error() and the last-resort reports of
// threads and processes that have nobody else to tell; and the forced unwind, which no
// catch (...) may keep.
#pragma once

#include <cstdlib>    // std::free
#include <exception>  // std::exception
#include <string>     // std::string
#include <typeinfo>   // typeid, std::type_info
#if defined(__GNUG__)
#  include <cxxabi.h>  // abi::__cxa_demangle, abi::__cxa_current_exception_type, abi::__forced_unwind
#endif

namespace socketserver {
namespace detail {

/// glibc ends a thread (pthread_exit(), cancellation) by unwinding its stack with an
/// exception that `catch (...)` catches too, and aborts the process ("FATAL: exception not
/// rethrown") if a handler keeps it. So on every path a request handler runs on, a
/// `catch (...)` is preceded by
///
///   catch (detail::forced_unwind&) { throw; }
///
/// and the cleanup of the request (shutdown_request(), the counters, the thread's slot) is
/// done by destructors, which run as the unwind passes. A forked child ends the unwind at
/// _exit() instead. Where the C++ library has no such exception, a type never thrown.
#if defined(__GLIBCXX__)
using forced_unwind = abi::__forced_unwind;
#else
struct forced_unwind {};
#endif

/// The readable name of a type from its typeid name (itself where it cannot be demangled).
inline std::string demangle(const char* name) {
#if defined(__GNUG__)
  int status = 0;
  char* readable = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status == 0 && readable != nullptr) {
    std::string result = readable;
    std::free(readable);
    return result;
  }
#endif
  return name;
}

/// "std::runtime_error: boom" for the exception being handled (call inside a catch block).
inline std::string describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return demangle(typeid(e).name()) + ": " + e.what();
  } catch (forced_unwind&) {
    throw;
  } catch (...) {
#if defined(__GNUG__)
    if (const std::type_info* type = abi::__cxa_current_exception_type())
      return "exception of type " + demangle(type->name());
#endif
    return "unknown exception";
  }
}

}  // namespace detail
}  // namespace socketserver
