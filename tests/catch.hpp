// SPDX-License-Identifier: MIT
// Catch2 v3 where installed, else v2 (Debian 12 ships 2.13).
#pragma once
#if __has_include(<catch2/catch_test_macros.hpp>)
#  include <catch2/catch_template_test_macros.hpp>
#  include <catch2/catch_test_macros.hpp>
#  include <catch2/matchers/catch_matchers_string.hpp>
#else
#  include <catch2/catch.hpp>
#endif

// Skips the rest of a test case, saying why: Catch2's SKIP where it has one (3.3 and later),
// else a warning and a return (the case then counts as passed).
#if defined(SKIP)
#  define SOCKETSERVER_SKIP(message) SKIP(message)
#else
#  define SOCKETSERVER_SKIP(message) \
    do {                             \
      WARN(message);                 \
      return;                        \
    } while (false)
#endif
