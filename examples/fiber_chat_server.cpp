// SPDX-License-Identifier: MIT
// A chat server: every line a client sends goes to every other connected client. Thousands of
// clients, each waiting in readline() on its own fiber, on two loop threads.
// Usage: fiber_chat_server [HOST] [PORT] [LOOP_THREADS]   (default: localhost 9999, 2)
#include <sys/resource.h>  // getrlimit, setrlimit

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include <socketserver.hpp>

#include "example_util.hpp"

namespace ss = socketserver;

// A connected client as the others see it: its socket, and a lock that makes the lines
// written to it whole (fibers of both loops write to it, and a write may wait).
struct Member {
  ss::socket_view connection;
  ss::fiber_mutex writing;
};

class Room {
 public:
  // Adds a member; returns where, and how many are in the room now.
  std::pair<std::list<std::shared_ptr<Member>>::iterator, std::size_t> join(
      std::shared_ptr<Member> member) {
    std::lock_guard<std::mutex> lock(mutex_);  // held briefly, never across a wait
    const auto at = members_.insert(members_.end(), std::move(member));
    return {at, members_.size()};
  }
  void leave(std::list<std::shared_ptr<Member>>::iterator at) {
    std::lock_guard<std::mutex> lock(mutex_);
    members_.erase(at);
  }
  // Sends `line` to everyone but `from`. A client that cannot take it within its send timeout
  // (it stopped reading) is disconnected, so it holds nobody up twice.
  void broadcast(const Member* from, const std::string& line) {
    std::vector<std::shared_ptr<Member>> others;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& m : members_)
        if (m.get() != from) others.push_back(m);
    }
    for (const auto& m : others) {
      std::lock_guard<ss::fiber_mutex> turn(m->writing);
      try {
        m->connection.sendall(line);
      } catch (const std::system_error&) {
        m->connection.shutdown(SHUT_RDWR);  // its own fiber sees the end and leaves
      }
    }
  }

 private:
  std::mutex mutex_;
  std::list<std::shared_ptr<Member>> members_;
};

Room room;

struct Chatter : ss::StreamRequestHandler<> {
  void handle() {
    auto me = std::make_shared<Member>();
    me->connection = connection;
    // Writes to this client give up after 5 s (it stopped reading); reads wait for ever.
    connection.setsockopt(SOL_SOCKET, SO_SNDTIMEO, timeval{5, 0});
    const auto [at, present] = room.join(me);
    struct leaving {
      std::list<std::shared_ptr<Member>>::iterator at;
      ~leaving() { room.leave(at); }
    } leave{at};
    {
      std::lock_guard<ss::fiber_mutex> turn(me->writing);
      wfile.write("welcome: " + std::to_string(present) + " here\n");
    }
    for (const std::string& line : rfile) room.broadcast(me.get(), line);
  }
};

// A listen backlog for crowds connecting at once (Python's default is 5).
struct ChatServer : ss::FiberTCPServer<Chatter, ChatServer> {
  using base = ss::FiberTCPServer<Chatter, ChatServer>;
  using base::base;
  static constexpr int request_queue_size = 1024;
};

int main(int argc, char** argv) {
  try {
    const auto args = example::parse_server_args(argc, argv);
    // A descriptor per client: allow as many as the hard limit does.
    rlimit files{};
    if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
      files.rlim_cur = files.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &files);
    }
    ChatServer server({args.host, args.port});
    server.loop_threads = argc > 3 ? static_cast<std::size_t>(std::atoi(argv[3])) : 2;
    ss::shutdown_on_signals stop(server);  // SIGTERM or Ctrl-C
    std::printf("chat on %s with %zu loop threads\n", server.server_address.to_string().c_str(),
                server.loop_threads);
    std::fflush(stdout);
    server.serve_forever();
    std::printf("stopped: %llu clients served\n",
                static_cast<unsigned long long>(server.stats().completed));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fiber_chat_server: %s\n", e.what());
    return 1;
  }
}
