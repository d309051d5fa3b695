// SPDX-License-Identifier: MIT
// A server of any kind whose handler body, server_close() and handle_error() a test sets
// (test_threading, test_forking), and the client side of its one-message exchanges.
#pragma once

#include <functional>
#include <string>

#include "harness.hpp"

namespace test {
namespace hooked {

namespace ss = socketserver;

// What a test's server does, set per test. The server holds a pointer to it (not the
// std::functions themselves), so a handler still running while the server is destroyed
// (daemon threads) never runs a destroyed std::function; a forked child has its own copy.
template <class K>
struct Hooks {
  using request_type = typename K::request_type;
  std::function<void(request_type&, const ss::address&)> request;  // the handler's body
  std::function<void()> closing;                                 // first thing server_close() does
  std::function<void(request_type&, const ss::address&)> error;  // handle_error()
};

template <class K>
struct Server;

template <class K>
struct Handler : ss::BaseRequestHandler<typename K::request_type, Server<K>> {
  void handle() { this->server.hooks->request(this->request, this->client_address); }
};

// The kind's server with the test's hooks (CRTP, as a user subclasses a server).
template <class K>
struct Server : K::template server<Handler<K>, Server<K>> {
  using base = typename K::template server<Handler<K>, Server<K>>;
  using request_type = typename K::request_type;
  using base::base;

  Hooks<K>* hooks = nullptr;

  void server_close() {
    if (hooks != nullptr && hooks->closing) hooks->closing();
    base::server_close();
  }
  void handle_error(request_type& request, const ss::address& client_address) {
    if (hooks != nullptr && hooks->error)
      hooks->error(request, client_address);
    else
      base::handle_error(request, client_address);
  }
};

// The request's message (what send_request() or round_trip() sent). A stream handler must
// read it: closing a connection with unread data resets it instead of ending it cleanly.
template <class K>
std::string read_request(typename K::request_type& request) {
  if constexpr (K::stream)
    return request.recv(4096);
  else
    return request.data;
}

// Sends `reply` to the client the way the kind's requests are answered.
template <class K>
void reply_to(typename K::request_type& request, const ss::address& client,
              const std::string& reply) {
  if constexpr (K::stream)
    request.sendall(reply);
  else
    request.socket.sendto(reply, client);
}

// A client that has sent `message` (the server has a request to accept or receive).
template <class K>
ss::socket send_request(const ss::address& server, const std::string& message, const TempDir& dir) {
  ss::socket c = connect_to(server, K::socket_type, &dir);
  if constexpr (K::stream)
    c.sendall(message);
  else
    c.send(message);
  return c;
}

// The server's reply: to end of stream, or one datagram.
template <class K>
std::string read_reply(const ss::socket& c) {
  if constexpr (K::stream)
    return recv_all(c);
  else
    return c.recv(65536);
}

}  // namespace hooked
}  // namespace test
