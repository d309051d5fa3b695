// SPDX-License-Identifier: MIT
// Describing the exception being handled, for handle_error() and the last-resort reports of
// threads and processes that have nobody else to tell; and the forced unwind, which no
// catch (...) may keep; and how a request that ended by an exception ended (a failure, or
// its peer's doing: a disconnect or a timeout).
#pragma once

#include <cerrno>        // EPIPE, ESHUTDOWN, ECONNABORTED, ECONNREFUSED, ECONNRESET
#include <cstdlib>       // std::free
#include <exception>     // std::exception, std::current_exception
#include <string>        // std::string
#include <system_error>  // std::system_error, std::error_code, std::error_condition, std::errc
#include <typeinfo>      // typeid, std::type_info
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

/// How a request ended. A peer that goes away and an idle client that is timed out are
/// what every busy server sees: they are counted apart from failures, and handle_error()'s
/// default does not print them. The refused ones never reached their handler: verify_request()
/// said no, or (before it) the PROXY protocol header failed or the client was over its
/// connection limit; they are counted as rejected, not completed.
enum class request_outcome {
  completed,
  failed,
  disconnected,
  timed_out,
  refused,
  refused_by_proxy_header,
  refused_over_limit
};

/// True for the errors Python raises as ConnectionError: the peer went away
/// (BrokenPipeError: EPIPE, ESHUTDOWN; ConnectionAbortedError: ECONNABORTED;
/// ConnectionRefusedError: ECONNREFUSED, e.g. a datagram reply to a closed Unix socket;
/// ConnectionResetError: ECONNRESET).
inline bool is_connection_error(const std::error_code& ec) noexcept {
  const std::error_condition condition = ec.default_error_condition();
  if (condition.category() != std::generic_category()) return false;
  switch (condition.value()) {
    case EPIPE:
    case ESHUTDOWN:
    case ECONNABORTED:
    case ECONNREFUSED:
    case ECONNRESET:
      return true;
    default:
      return false;
  }
}

/// True for the error Python raises as TimeoutError (ETIMEDOUT): a socket timeout, or the
/// handler's timeout on a whole rfile read or wfile write.
inline bool is_timeout_error(const std::error_code& ec) noexcept {
  return ec.default_error_condition() == std::errc::timed_out;
}

/// How a request that ended with the exception being handled ended (call inside a catch
/// block): a std::system_error for a connection error or a timeout is the peer's doing,
/// anything else a failure. A forced unwind passes through.
inline request_outcome outcome_of_current_exception() {
  if (!std::current_exception()) return request_outcome::failed;
  try {
    throw;
  } catch (const std::system_error& e) {
    if (is_connection_error(e.code())) return request_outcome::disconnected;
    if (is_timeout_error(e.code())) return request_outcome::timed_out;
  } catch (forced_unwind&) {
    throw;
  } catch (...) {
  }
  return request_outcome::failed;
}

}  // namespace detail
}  // namespace socketserver
