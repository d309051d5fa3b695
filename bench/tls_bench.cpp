// SPDX-License-Identifier: MIT
// tls_bench: the servers bench/tls measures. One protocol for all: a connection may end
// right after its handshake (openssl s_time's full handshakes); otherwise the client sends a
// line with a byte count, then that many bytes, and the server answers "ok\n" (bulk).
//
//   tls_bench --impl ours|raw|plain [--type threading|pool|forking|fiber]
//             [--cert PEM --key PEM] [--port N]
//
// ours:  this library's TLS servers (ThreadingTLSTCPServer unless --type says otherwise: TLS
//        in the handler's rfile/wfile);
// raw:   a minimal hand-written OpenSSL server with the same model (accept(), a thread per
//        connection, SSL_accept(), SSL_read()/SSL_write() on a blocking socket): the peer;
// plain: this library's ThreadingTCPServer, no TLS (bulk's baseline).
// Both TLS servers load the same certificate and key and keep OpenSSL's defaults, so a
// client negotiates the same protocol and cipher with each. The server binds 127.0.0.1,
// prints its port on stdout when ready and serves until SIGTERM.
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

#include <socketserver/tls.hpp>

#include "bench_util.hpp"

namespace {

namespace ss = socketserver;

// "N\n" then N bytes, answered with "ok\n"; a connection that ends first is a handshake only.
struct Sink : ss::StreamRequestHandler<> {
  void handle() {
    const std::string line = rfile.readline();
    if (line.empty()) return;
    std::size_t left = std::stoull(line);
    while (left > 0) {
      const std::string got = rfile.read(std::min<std::size_t>(left, 1 << 16));
      if (got.empty()) return;
      left -= got.size();
    }
    wfile.write("ok\n");
  }
};

// Until SIGTERM, whose default action ends the process: nothing to clean up in a benchmark.
template <class Server>
void serve(Server& server) {
  std::printf("%u\n", static_cast<unsigned>(server.server_address.port()));
  std::fflush(stdout);
  server.serve_forever();
}

// --- The peer: a hand-written OpenSSL server -------------------------------------------------

void raw_connection(SSL_CTX* ctx, int fd) {
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  if (SSL_accept(ssl) == 1) {
    char buf[1 << 16];
    std::string line;
    std::size_t left = 0;
    bool counting = false;
    for (;;) {
      const int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) break;
      std::size_t used = 0;
      if (!counting) {
        const char* end = std::find(buf, buf + n, '\n');
        line.append(buf, static_cast<std::size_t>(end - buf));
        if (end == buf + n) continue;
        left = std::stoull(line);
        counting = true;
        used = static_cast<std::size_t>(end - buf) + 1;
      }
      const std::size_t got = static_cast<std::size_t>(n) - used;
      left -= std::min(left, got);
      if (left == 0) {
        SSL_write(ssl, "ok\n", 3);
        SSL_shutdown(ssl);
        break;
      }
    }
  }
  SSL_free(ssl);
  ::close(fd);
  ERR_clear_error();
}

[[noreturn]] void raw_server(const std::string& cert, const std::string& key, int port) {
  std::signal(SIGPIPE, SIG_IGN);  // OpenSSL's socket BIO writes with write()
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr || SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1)
    bench::die("tls_bench: cannot load the certificate and key");
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  const int on = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  in.sin_port = htons(static_cast<std::uint16_t>(port));
  socklen_t len = sizeof in;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&in), sizeof in) < 0 ||
      ::listen(listener, 128) < 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&in), &len) < 0)
    bench::die("tls_bench: cannot listen on 127.0.0.1");
  std::printf("%u\n", static_cast<unsigned>(ntohs(in.sin_port)));
  std::fflush(stdout);
  for (;;) {  // until SIGTERM
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) continue;
    std::thread(raw_connection, ctx, fd).detach();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Args args(argc, argv, {"impl", "type", "cert", "key", "port"},
                         "usage: tls_bench --impl ours|raw|plain [--type threading|pool|forking|"
                         "fiber] [--cert PEM --key PEM] [--port N]");
  const std::string type =
      args.choice("type", {"threading", "pool", "forking", "fiber"}, "threading");
  const std::string impl = args.choice("impl", {"ours", "raw", "plain"}, "ours");
  const int port = static_cast<int>(args.integer("port", 0));
  try {
    if (impl == "plain") {
      ss::ThreadingTCPServer<Sink> server({"127.0.0.1", port});
      server.daemon_threads = true;
      serve(server);
      return 0;
    }
    const std::string cert = args.str("cert", "cert.pem"), key = args.str("key", "key.pem");
    if (impl == "raw") raw_server(cert, key, port);
    ss::tls_context context;
    context.load_cert_chain(cert, key);
    const ss::address where("127.0.0.1", port);
    if (type == "pool") {
      ss::ThreadPoolTLSTCPServer<Sink> server(where, context);
      serve(server);
    } else if (type == "forking") {
      ss::ForkingTLSTCPServer<Sink> server(where, context);
      server.max_children = 200;  // more than bench/tls's idle clients
      serve(server);
    } else if (type == "fiber") {
      ss::FiberTLSTCPServer<Sink> server(where, context);
      serve(server);
    } else {
      ss::ThreadingTLSTCPServer<Sink> server(where, context);
      server.daemon_threads = true;
      serve(server);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tls_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
