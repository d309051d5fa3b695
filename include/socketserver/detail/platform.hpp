// SPDX-License-Identifier: MIT
// Which system facilities the library uses. Linux keeps its one-call forms; other POSIX
// systems get the portable sequence that does the same. SOCKETSERVER_PORTABLE (the CMake
// option of that name) takes the portable paths on Linux too, so that the whole test suite
// runs them on a machine where it can run.
#pragma once

#include <sys/socket.h>  // SOCK_CLOEXEC, SOCK_NONBLOCK (where they exist)

// accept4(), pipe2() and socket(type | SOCK_CLOEXEC | SOCK_NONBLOCK) (Linux, the BSDs; not
// macOS): a descriptor is close-on-exec from its first instant. Elsewhere fcntl() follows,
// and a fork()+exec() on another thread in between can leak the descriptor into the child.
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK) && !defined(SOCKETSERVER_PORTABLE)
#  define SOCKETSERVER_ATOMIC_CLOEXEC 1
#endif

// Linux's own calls: eventfd (wake-ups), epoll (EPOLLEXCLUSIVE waits, the fiber loops),
// ppoll (nanosecond timeouts), pidfd_open (waiting for one child). Elsewhere: a pipe,
// poll() (kqueue for the fiber loops on the BSDs and macOS), milliseconds, waiting for the
// oldest child. (drain()'s SYN filter is Linux's in every mode: other systems have nothing
// that replaces it, so the portable mode keeps it rather than test a gap.)
#if defined(__linux__) && !defined(SOCKETSERVER_PORTABLE)
#  define SOCKETSERVER_LINUX_CALLS 1
#endif
