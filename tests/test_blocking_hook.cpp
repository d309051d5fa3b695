// SPDX-License-Identifier: MIT
// The per-thread "about to block" hook (detail/blocking.hpp) that ThreadPoolMixIn arms while a
// worker serves a request with the serve loop in hand: it must be called before a library
// call that would wait, with the descriptor and events it would wait for, and never before
// one that would not.
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <string>
#include <system_error>
#include <vector>

#include "catch.hpp"
#include "support/harness.hpp"

namespace {

namespace ss = socketserver;
using namespace std::chrono_literals;

struct Pair {
  ss::socket a, b;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0 ||
        !ss::detail::set_fd_flags(fds[0], false) || !ss::detail::set_fd_flags(fds[1], false))
      throw std::system_error(errno, std::system_category(), "socketpair");
    a = ss::socket(fds[0]);
    b = ss::socket(fds[1]);
    a.settimeout(std::chrono::seconds(20));  // a test that hangs fails instead
  }
};

// What the hook saw; by default it makes the awaited descriptor ready (writes a byte to the
// peer) and disarms itself, as the pool's hook does once it hands the loop on.
struct Seen {
  int calls = 0;
  int fd = -2;
  short events = 0;
  ss::detail::clock::time_point deadline{};
  const ss::socket* peer = nullptr;
  bool stay_armed = false;
};

void note(void* context, int fd, short events, ss::detail::clock::time_point deadline) noexcept {
  auto& seen = *static_cast<Seen*>(context);
  ++seen.calls;
  seen.fd = fd;
  seen.events = events;
  seen.deadline = deadline;
  if (seen.peer != nullptr) (void)::send(seen.peer->fileno(), "!", 1, MSG_NOSIGNAL);
  if (!seen.stay_armed) ss::detail::disarm_block_hook();
}

struct Armed {
  explicit Armed(Seen& seen, decltype(ss::detail::block_hook::fire) hook = &note) {
    ss::detail::arm_block_hook(hook, &seen);
  }
  ~Armed() { ss::detail::disarm_block_hook(); }
};

// A hook that makes room to send: reads everything the peer has received, then disarms.
void drain_peer(void* context, int fd, short events, ss::detail::clock::time_point) noexcept {
  auto& seen = *static_cast<Seen*>(context);
  ++seen.calls;
  seen.fd = fd;
  seen.events = events;
  char buf[65536];
  while (::recv(seen.peer->fileno(), buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
  ss::detail::disarm_block_hook();
}

}  // namespace

TEST_CASE("the block hook is not called when a receive need not wait", "[blocking_hook]") {
  Pair p;
  p.b.sendall("ready");
  Seen seen;
  Armed armed(seen);
  char buf[16];
  CHECK(p.a.recv(buf, sizeof buf) == 5);
  CHECK(seen.calls == 0);
  CHECK(ss::detail::block_hook_armed());  // and stays armed for the next call
}

TEST_CASE("the block hook is called before a receive waits, with what it waits for",
          "[blocking_hook]") {
  Pair p;
  Seen seen;
  seen.peer = &p.b;
  Armed armed(seen);
  char buf[16];
  CHECK(p.a.recv(buf, sizeof buf) == 1);  // the byte the hook sent
  CHECK(buf[0] == '!');
  CHECK(seen.calls == 1);
  CHECK(seen.fd == p.a.fileno());
  CHECK(seen.events == POLLIN);
  CHECK_FALSE(ss::detail::block_hook_armed());
}

TEST_CASE("a hook that stays armed is asked again until the call need not wait",
          "[blocking_hook]") {
  Pair p;
  Seen seen;
  seen.peer = &p.b;
  seen.stay_armed = true;
  Armed armed(seen);
  char buf[16];
  CHECK(p.a.recv(buf, sizeof buf) == 1);
  CHECK(seen.calls == 1);  // ready after one call: the receive went ahead without waiting
  CHECK(ss::detail::block_hook_armed());
}

TEST_CASE("the block hook is called before a timed read waits, with its deadline",
          "[blocking_hook]") {
  Pair p;
  Seen seen;
  seen.peer = &p.b;
  Armed armed(seen);
  ss::reader rfile(p.a, -1, 0, std::chrono::seconds(10));
  const auto before = std::chrono::steady_clock::now();
  CHECK(rfile.read(1) == "!");
  CHECK(seen.calls == 1);
  CHECK(seen.fd == p.a.fileno());
  CHECK(seen.events == POLLIN);
  CHECK(seen.deadline > before);  // the read's own deadline, not "never"
  CHECK(seen.deadline < before + 11s);
}

TEST_CASE("the block hook is not called for a call that never waits", "[blocking_hook]") {
  Pair p;
  Seen seen;
  Armed armed(seen);
  char buf[16];
  std::error_code ec;
  p.a.recv(buf, sizeof buf, MSG_DONTWAIT, ec);
  CHECK(ec == std::errc::resource_unavailable_try_again);
  pollfd fd{p.a.fileno(), POLLIN, 0};
  CHECK(ss::detail::poll_for(&fd, 1, std::chrono::duration<double>(0)) == 0);
  CHECK(seen.calls == 0);
}

TEST_CASE("the block hook is called before a send waits for room", "[blocking_hook]") {
  Pair p;
  // Fill the send buffer, then arm: the next send has to wait for room.
  const std::string chunk(65536, 'x');
  std::error_code ec;
  while (!ec) p.a.send(chunk, MSG_DONTWAIT, ec);
  Seen seen;
  seen.peer = &p.b;
  Armed armed(seen, &drain_peer);
  CHECK(p.a.send("y") == 1);
  CHECK(seen.calls == 1);
  CHECK(seen.fd == p.a.fileno());
  CHECK(seen.events == POLLOUT);
}

TEST_CASE("a waiting-for-all receive is never tried without waiting", "[blocking_hook]") {
  // MSG_WAITALL with MSG_DONTWAIT would return part of what the caller waits for.
  Pair p;
  p.b.sendall("ab");
  Seen seen;
  Armed armed(seen);
  std::vector<int> flags_seen;
  char buf[2];
  const ssize_t got = ss::detail::blocking_io(p.a.fileno(), POLLIN, MSG_WAITALL, [&](int f) {
    flags_seen.push_back(f);
    return ::recv(p.a.fileno(), buf, sizeof buf, f);
  });
  CHECK(got == 2);
  REQUIRE(flags_seen.size() == 1);
  CHECK(flags_seen[0] == MSG_WAITALL);
  CHECK(seen.calls == 0);  // bytes were there: no reason to hand anything on
}
