// SPDX-License-Identifier: MIT
// asio_server: Boost.Asio echo servers speaking the benchmark's line-echo protocol, written
// as Asio's own examples write them (blocking_tcp_echo_server, async_tcp_echo_server,
// blocking_udp_echo_server), reading lines with read_until.
//
//   asio_server --type blocking|async|udp [--mode connrate|pingpong] [--port N | --unix PATH]
//               [--threads N]
//
//   blocking  accept loop + a thread per connection
//   async     one io_context run by --threads threads (default: every core)
//   udp       a blocking receive_from/send_to loop
//
// Prints the bound port or path when ready; exits on SIGTERM or SIGINT.
#include <signal.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "bench_util.hpp"

namespace {

namespace asio = boost::asio;
using boost::system::error_code;

constexpr int backlog = 128;  // the same for every server in the benchmark

/// Serves one connection with blocking calls: echo lines (just one in connrate mode).
template <class Socket>
void blocking_session(Socket sock, bool one_line) {
  error_code ec;
  std::string data;
  for (;;) {
    const std::size_t n = asio::read_until(sock, asio::dynamic_buffer(data), '\n', ec);
    if (ec) break;
    asio::write(sock, asio::buffer(data.data(), n), ec);
    if (ec || one_line) break;
    data.erase(0, n);
  }
  sock.shutdown(Socket::shutdown_send, ec);
}

template <class Protocol>
[[noreturn]] void blocking_server(typename Protocol::acceptor& acceptor, bool one_line) {
  for (;;) {
    typename Protocol::socket sock(acceptor.get_executor());
    error_code ec;
    acceptor.accept(sock, ec);
    if (!ec)
      std::thread(blocking_session<typename Protocol::socket>, std::move(sock), one_line).detach();
  }
}

/// One connection of the async server: read_until '\n', write the line back, repeat.
template <class Protocol>
class Session : public std::enable_shared_from_this<Session<Protocol>> {
 public:
  Session(typename Protocol::socket sock, bool one_line)
      : socket_(std::move(sock)), one_line_(one_line) {}

  void read() {
    asio::async_read_until(socket_, asio::dynamic_buffer(data_), '\n',
                           [self = this->shared_from_this()](error_code ec, std::size_t n) {
                             if (!ec) self->write(n);
                           });
  }

 private:
  void write(std::size_t n) {
    asio::async_write(socket_, asio::buffer(data_.data(), n),
                      [self = this->shared_from_this(), n](error_code ec, std::size_t) {
                        if (ec) return;
                        if (self->one_line_) {
                          self->socket_.shutdown(Protocol::socket::shutdown_send, ec);
                          return;
                        }
                        self->data_.erase(0, n);
                        self->read();
                      });
  }

  typename Protocol::socket socket_;
  bool one_line_;
  std::string data_;
};

template <class Protocol>
void async_accept(typename Protocol::acceptor& acceptor, bool one_line) {
  acceptor.async_accept([&acceptor, one_line](error_code ec, typename Protocol::socket sock) {
    if (!ec) std::make_shared<Session<Protocol>>(std::move(sock), one_line)->read();
    async_accept<Protocol>(acceptor, one_line);
  });
}

template <class Protocol>
typename Protocol::acceptor make_acceptor(asio::io_context& io,
                                          const typename Protocol::endpoint& where) {
  typename Protocol::acceptor acceptor(io);
  acceptor.open(where.protocol());
  acceptor.bind(where);
  acceptor.listen(backlog);
  return acceptor;
}

[[noreturn]] void udp_server(asio::ip::udp::socket& sock) {
  char data[8192];  // UDPServer's max_packet_size
  for (;;) {
    asio::ip::udp::endpoint sender;
    error_code ec;
    const std::size_t n = sock.receive_from(asio::buffer(data), sender, 0, ec);
    if (!ec) sock.send_to(asio::buffer(data, n), sender, 0, ec);
  }
}

/// Runs a server; an error ends the process.
template <class Body>
std::thread start(Body body) {
  return std::thread([body] {
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "asio_server: %s\n", e.what());
      std::_Exit(1);
    }
  });
}

void wait_for_stop_signal() {
  const sigset_t stop = bench::stop_signals();
  int signal_number = 0;
  sigwait(&stop, &signal_number);
}

/// Serves a stream protocol until SIGTERM.
template <class Protocol>
int serve_stream(const std::string& type, const typename Protocol::endpoint& where,
                 const std::string& unix_path, bool one_line, long threads) {
  asio::io_context io(static_cast<int>(threads));
  auto acceptor = make_acceptor<Protocol>(io, where);
  std::vector<std::thread> workers;
  if (type == "blocking") {
    workers.push_back(start([&] { blocking_server<Protocol>(acceptor, one_line); }));
  } else {
    async_accept<Protocol>(acceptor, one_line);
    for (long i = 0; i < threads; ++i) workers.push_back(start([&] { io.run(); }));
  }
  if constexpr (std::is_same_v<Protocol, asio::ip::tcp>)
    bench::announce(std::to_string(acceptor.local_endpoint().port()));
  else
    bench::announce(unix_path);
  wait_for_stop_signal();
  if constexpr (!std::is_same_v<Protocol, asio::ip::tcp>) ::unlink(unix_path.c_str());
  if (type == "blocking") {
    // The accept loop and the session threads block in system calls that nothing can
    // interrupt safely: end the process without joining them, as a killed server would.
    std::fflush(nullptr);
    std::_Exit(0);
  }
  io.stop();
  for (std::thread& t : workers) t.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::block_stop_signals();  // before any thread exists: only sigwait() sees them
  bench::raise_fd_limit();      // the idle workload holds 10,000 connections
  const bench::Args args(argc, argv, {"type", "mode", "port", "unix", "threads"},
                         "usage: asio_server --type blocking|async|udp [--mode connrate|pingpong] "
                         "[--port N | --unix PATH] [--threads N]");
  const std::string type = args.choice("type", {"blocking", "async", "udp"}, "async");
  const bool one_line = args.choice("mode", {"connrate", "pingpong"}, "connrate") == "connrate";
  const long cores = static_cast<long>(std::thread::hardware_concurrency());
  const long threads = args.integer("threads", cores > 0 ? cores : 1);
  const auto port = static_cast<unsigned short>(args.integer("port", 0));
  const auto loopback = asio::ip::address_v4::loopback();
  try {
    if (type == "udp") {
      if (args.has("unix")) bench::die("asio_server: udp takes --port");
      asio::io_context io;
      asio::ip::udp::socket sock(io, asio::ip::udp::endpoint(loopback, port));
      bench::announce(std::to_string(sock.local_endpoint().port()));
      std::thread worker = start([&] { udp_server(sock); });
      wait_for_stop_signal();
      std::fflush(nullptr);
      std::_Exit(0);  // the loop blocks in receive_from(): see serve_stream
    }
    if (args.has("unix")) {
      const std::string path = args.str("unix", "");
      return serve_stream<asio::local::stream_protocol>(
          type, asio::local::stream_protocol::endpoint(path), path, one_line, threads);
    }
    return serve_stream<asio::ip::tcp>(type, asio::ip::tcp::endpoint(loopback, port), "", one_line,
                                       threads);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "asio_server: %s\n", e.what());
    return 1;
  }
}
