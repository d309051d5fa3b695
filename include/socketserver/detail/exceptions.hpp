// SPDX-License-Identifier: MIT
// Describing the exception being handled, for handle_error() and the last-resort reports of
// threads and processes that have nobody else to tell.
#pragma once

#include <cstdlib>    // std::free
#include <exception>  // std::exception
#include <string>     // std::string
#include <typeinfo>   // typeid, std::type_info
#if defined(__GNUG__)
#  include <cxxabi.h>  // abi::__cxa_demangle, abi::__cxa_current_exception_type
#endif

namespace socketserver {
namespace detail {

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
