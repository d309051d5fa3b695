// SPDX-License-Identifier: MIT
// ours_server: this library's servers speaking the benchmark's line-echo protocol.
//
//   ours_server --type TYPE [--mode connrate|pingpong] [--port N | --unix PATH] [--workers N]
//               [--loops N] [--proxy v1|v2] [--max-per-ip N] [--max-age SECONDS]
//
// TYPE is a Python class name: TCPServer, ThreadingTCPServer, ForkingTCPServer, UDPServer,
// ThreadingUDPServer, ThreadPoolUDPServer, UnixStreamServer, ThreadingUnixStreamServer,
// ForkingUnixStreamServer, ThreadPoolTCPServer. The soft limit on open descriptors is raised
// to the hard limit (bench/run's idle workload holds 10,000 connections).
// Stream servers in connrate mode read one line, write it back and close (the docs'
// pattern); in pingpong mode they echo lines until the client closes. Datagram servers echo
// each datagram. The server binds 127.0.0.1 (port 0 by default) or the Unix path, prints the
// bound port or path on stdout when ready, and serves until SIGTERM or SIGINT. With
// --workers N (N > 0) it serves with serve_forever_workers(N): N forked worker processes
// share the listening socket, supervised by this process (prefork). With --proxy, each
// connection begins with a PROXY protocol header of that version (loadgen --proxy), from
// loopback or a Unix peer (the trusted sources). --max-per-ip and --max-age set the
// per-client limits (max_connections_per_ip, max_connection_age; off by default).
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <string>
#include <type_traits>
#include <utility>

#include <socketserver.hpp>

#include "bench_util.hpp"

namespace {

namespace ss = socketserver;

/// connrate: one line in, the same line out, then the server closes the connection.
struct OneLine : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};

/// pingpong (and bulk): every line echoed until the client closes.
struct Echo : ss::StreamRequestHandler<> {
  void handle() {
    for (const std::string& line : rfile) wfile.write(line);
  }
};

/// udp: every datagram echoed to its sender (the docs' UDP handler, without upper()).
struct DatagramEcho : ss::BaseRequestHandler<ss::datagram> {
  void handle() { request.socket.sendto(request.data, client_address); }
};

/// The library's server `Server` as a user subclasses it: the same listen backlog as every
/// other server in the benchmark (the default of 5, as CPython's, drops SYNs once 16 clients
/// connect at once, and the benchmark would measure TCP retransmission timers).
template <template <class, class> class Server, class Handler>
class BenchServer final : public Server<Handler, BenchServer<Server, Handler>> {
  using base = Server<Handler, BenchServer<Server, Handler>>;

 public:
  using base::base;
  static constexpr int request_queue_size = 128;
};

template <class Server, class = void>
struct has_daemon_threads : std::false_type {};
template <class Server>
struct has_daemon_threads<Server, std::void_t<decltype(std::declval<Server&>().daemon_threads)>>
    : std::true_type {};

template <class Server, class = void>
struct has_loop_threads : std::false_type {};
template <class Server>
struct has_loop_threads<Server, std::void_t<decltype(std::declval<Server&>().loop_threads)>>
    : std::true_type {};

std::size_t loop_threads = 0;  // --loops: a fiber server's loop threads (0: one per core)
ss::proxy_protocol_mode proxy_mode = ss::proxy_protocol_mode::off;  // --proxy
std::size_t max_per_ip = 0;                                         // --max-per-ip
ss::timeout_type max_age;                                           // --max-age

template <class Server>
int serve(const ss::address& where, std::size_t workers) {
  Server server(where);
  if constexpr (has_loop_threads<Server>::value) server.loop_threads = loop_threads;
  if constexpr (ss::detail::is_stream<typename Server::request_type>) {
    server.proxy_protocol = proxy_mode;
    server.proxy_trusted_sources = {"127.0.0.1", "::1", "unix"};
    server.max_connections_per_ip = max_per_ip;
    server.max_connection_age = max_age;
  }
  // Request threads must not keep the process alive after SIGTERM (CPython's usual setting
  // for servers that are stopped from outside; the destructor ends them cleanly).
  if constexpr (has_daemon_threads<Server>::value) server.daemon_threads = true;
  const ss::address& bound = server.server_address;
  bench::announce(bound.family() == AF_UNIX ? bound.path() : std::to_string(bound.port()));
  bench::StopSignalWaiter stop([&] { server.shutdown(); });
  if (workers == 0) {
    server.serve_forever();
  } else {
    // The workers inherit the blocked SIGTERM and have no waiter thread: bench/run's SIGTERM
    // to the group reaches only this supervisor, whose shutdown() closes the workers' pipe;
    // each finishes its request and exits, and the supervisor reaps them before returning.
    // They stay in the server's process group, where loadgen counts their CPU time.
    server.serve_forever_workers(workers);
  }
  return 0;
}

template <template <class, class> class Server>
int serve_stream(const std::string& mode, const ss::address& where, std::size_t workers) {
  if (mode == "connrate") return serve<BenchServer<Server, OneLine>>(where, workers);
  return serve<BenchServer<Server, Echo>>(where, workers);
}

int run(const bench::Args& args) {
  // The --type table: a new server type is one name here and one line below.
  const std::string type = args.choice(
      "type",
      {"TCPServer", "ThreadingTCPServer", "ForkingTCPServer", "ThreadPoolTCPServer", "UDPServer",
       "ThreadingUDPServer", "ThreadPoolUDPServer", "UnixStreamServer", "ThreadingUnixStreamServer",
       "ForkingUnixStreamServer", "FiberTCPServer", "FiberUDPServer", "FiberUnixStreamServer"},
      "ThreadingTCPServer");
  const std::string mode = args.choice("mode", {"connrate", "pingpong"}, "connrate");
  const bool is_unix = type.find("Unix") != std::string::npos;
  if (is_unix != args.has("unix")) bench::die("Unix servers take --unix PATH, the others --port");
  const ss::address where =
      is_unix ? ss::address(args.str("unix", ""))
              : ss::address("127.0.0.1", static_cast<int>(args.integer("port", 0)));
  const long long worker_count = args.integer("workers", 0);
  if (worker_count < 0 || worker_count > 1024) bench::die("--workers is 0 (no prefork) to 1024");
  const auto workers = static_cast<std::size_t>(worker_count);

  if (type == "TCPServer") return serve_stream<ss::tcp_server_t>(mode, where, workers);
  if (type == "ThreadingTCPServer")
    return serve_stream<ss::threading_tcp_server_t>(mode, where, workers);
  if (type == "ForkingTCPServer")
    return serve_stream<ss::forking_tcp_server_t>(mode, where, workers);
  if (type == "ThreadPoolTCPServer")
    return serve_stream<ss::thread_pool_tcp_server_t>(mode, where, workers);
  if (type == "FiberTCPServer") return serve_stream<ss::fiber_tcp_server_t>(mode, where, workers);
  if (type == "FiberUnixStreamServer")
    return serve_stream<ss::fiber_unix_stream_server_t>(mode, where, workers);
  if (type == "FiberUDPServer")
    return serve<BenchServer<ss::fiber_udp_server_t, DatagramEcho>>(where, workers);
  if (type == "UnixStreamServer")
    return serve_stream<ss::unix_stream_server_t>(mode, where, workers);
  if (type == "ThreadingUnixStreamServer")
    return serve_stream<ss::threading_unix_stream_server_t>(mode, where, workers);
  if (type == "ForkingUnixStreamServer")
    return serve_stream<ss::forking_unix_stream_server_t>(mode, where, workers);
  if (type == "UDPServer")
    return serve<BenchServer<ss::udp_server_t, DatagramEcho>>(where, workers);
  if (type == "ThreadPoolUDPServer")
    return serve<BenchServer<ss::thread_pool_udp_server_t, DatagramEcho>>(where, workers);
  return serve<BenchServer<ss::threading_udp_server_t, DatagramEcho>>(where, workers);
}

}  // namespace

int main(int argc, char** argv) {
  bench::block_stop_signals();  // before any thread exists: only the waiter sees SIGTERM
  bench::raise_fd_limit();      // the idle workload holds 10,000 connections and more
  const bench::Args args(
      argc, argv,
      {"type", "mode", "port", "unix", "workers", "loops", "proxy", "max-per-ip", "max-age"},
      "usage: ours_server --type TYPE [--mode connrate|pingpong] "
      "[--port N | --unix PATH] [--workers N] [--loops N] [--proxy v1|v2] "
      "[--max-per-ip N] [--max-age SECONDS]");
  try {
    const long long loops = args.integer("loops", 0);
    if (loops < 0 || loops > 1024) bench::die("--loops is 0 (one per core) to 1024");
    loop_threads = static_cast<std::size_t>(loops);
    const std::string proxy = args.choice("proxy", {"none", "v1", "v2"}, "none");
    proxy_mode = proxy == "v1"   ? ss::proxy_protocol_mode::v1
                 : proxy == "v2" ? ss::proxy_protocol_mode::v2
                                 : ss::proxy_protocol_mode::off;
    const long long per_ip = args.integer("max-per-ip", 0);
    if (per_ip < 0) bench::die("--max-per-ip is 0 (no limit) or more");
    max_per_ip = static_cast<std::size_t>(per_ip);
    if (args.has("max-age")) max_age = std::chrono::duration<double>(args.real("max-age", 0));
    return run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ours_server: %s\n", e.what());
    return 1;
  }
}
