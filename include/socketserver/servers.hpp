// SPDX-License-Identifier: MIT
// The ready-made servers: the four synchronous ones, the eight mixed-in types of Python and
// the four thread-pool and four fiber ones; every one of them can also prefork (PreforkMixIn).
#pragma once

#include <type_traits>  // std::conditional_t, std::is_void_v

#include "fibers.hpp"
#include "forking.hpp"
#include "prefork.hpp"
#include "tcp_server.hpp"
#include "thread_pool.hpp"
#include "threading.hpp"
#include "udp_server.hpp"
#include "unix_server.hpp"

namespace socketserver {

/// A server type closed for extension: `Server<Handler, final_server>` with nothing added.
/// `TCPServer<H>` and the other aliases are this when no Derived is given, so deriving from
/// one by mistake (which would silently ignore the subclass's hooks) does not compile: write
/// `struct MyServer : TCPServer<H, MyServer>` instead.
template <template <class, class> class Server, class Handler>
class final_server final : public Server<Handler, final_server<Server, Handler>> {
  using base = Server<Handler, final_server<Server, Handler>>;

 public:
  using base::base;
};

/// final_server<Server, Handler> when Derived is void, else Server<Handler, Derived>.
template <template <class, class> class Server, class Handler, class Derived>
using server_type_t = std::conditional_t<std::is_void_v<Derived>, final_server<Server, Handler>,
                                         Server<Handler, Derived>>;

// Two-parameter forms of the servers, to compose with final_server and server_type_t.
template <class H, class D>
using tcp_server_t = PreforkMixIn<basic_tcp_server<H, D>>;
template <class H, class D>
using udp_server_t = PreforkMixIn<basic_udp_server<H, D>>;
template <class H, class D>
using unix_stream_server_t = PreforkMixIn<basic_unix_stream_server<H, D>>;
template <class H, class D>
using unix_datagram_server_t = PreforkMixIn<basic_unix_datagram_server<H, D>>;
template <class H, class D>
using forking_tcp_server_t = PreforkMixIn<ForkingMixIn<basic_tcp_server<H, D>>>;
template <class H, class D>
using forking_udp_server_t = PreforkMixIn<ForkingMixIn<basic_udp_server<H, D>>>;
template <class H, class D>
using threading_tcp_server_t = PreforkMixIn<ThreadingMixIn<basic_tcp_server<H, D>>>;
template <class H, class D>
using threading_udp_server_t = PreforkMixIn<ThreadingMixIn<basic_udp_server<H, D>>>;
template <class H, class D>
using forking_unix_stream_server_t = PreforkMixIn<ForkingMixIn<basic_unix_stream_server<H, D>>>;
template <class H, class D>
using forking_unix_datagram_server_t = PreforkMixIn<ForkingMixIn<basic_unix_datagram_server<H, D>>>;
template <class H, class D>
using threading_unix_stream_server_t = PreforkMixIn<ThreadingMixIn<basic_unix_stream_server<H, D>>>;
template <class H, class D>
using threading_unix_datagram_server_t =
    PreforkMixIn<ThreadingMixIn<basic_unix_datagram_server<H, D>>>;
template <class H, class D>
using thread_pool_tcp_server_t = PreforkMixIn<ThreadPoolMixIn<basic_tcp_server<H, D>>>;
template <class H, class D>
using thread_pool_udp_server_t = PreforkMixIn<ThreadPoolMixIn<basic_udp_server<H, D>>>;
template <class H, class D>
using thread_pool_unix_stream_server_t =
    PreforkMixIn<ThreadPoolMixIn<basic_unix_stream_server<H, D>>>;
template <class H, class D>
using thread_pool_unix_datagram_server_t =
    PreforkMixIn<ThreadPoolMixIn<basic_unix_datagram_server<H, D>>>;
template <class H, class D>
using fiber_tcp_server_t = PreforkMixIn<FiberMixIn<basic_tcp_server<H, D>>>;
template <class H, class D>
using fiber_udp_server_t = PreforkMixIn<FiberMixIn<basic_udp_server<H, D>>>;
template <class H, class D>
using fiber_unix_stream_server_t = PreforkMixIn<FiberMixIn<basic_unix_stream_server<H, D>>>;
template <class H, class D>
using fiber_unix_datagram_server_t = PreforkMixIn<FiberMixIn<basic_unix_datagram_server<H, D>>>;

// Python's classes. `Handler` is the RequestHandlerClass. `Derived` is your own server class
// when you subclass one (CRTP): `struct MyServer : ThreadingTCPServer<MyHandler, MyServer>`.
template <class Handler, class Derived = void>
using TCPServer = server_type_t<tcp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using UDPServer = server_type_t<udp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using UnixStreamServer = server_type_t<unix_stream_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using UnixDatagramServer = server_type_t<unix_datagram_server_t, Handler, Derived>;

template <class Handler, class Derived = void>
using ForkingTCPServer = server_type_t<forking_tcp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ForkingUDPServer = server_type_t<forking_udp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadingTCPServer = server_type_t<threading_tcp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadingUDPServer = server_type_t<threading_udp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ForkingUnixStreamServer = server_type_t<forking_unix_stream_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ForkingUnixDatagramServer = server_type_t<forking_unix_datagram_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadingUnixStreamServer = server_type_t<threading_unix_stream_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadingUnixDatagramServer =
    server_type_t<threading_unix_datagram_server_t, Handler, Derived>;

// Beyond Python: a bounded pool of worker threads (thread_pool.hpp).
template <class Handler, class Derived = void>
using ThreadPoolTCPServer = server_type_t<thread_pool_tcp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadPoolUDPServer = server_type_t<thread_pool_udp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadPoolUnixStreamServer =
    server_type_t<thread_pool_unix_stream_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using ThreadPoolUnixDatagramServer =
    server_type_t<thread_pool_unix_datagram_server_t, Handler, Derived>;

// Beyond Python: each request on a fiber of a few event-loop threads (fibers.hpp).
template <class Handler, class Derived = void>
using FiberTCPServer = server_type_t<fiber_tcp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using FiberUDPServer = server_type_t<fiber_udp_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using FiberUnixStreamServer = server_type_t<fiber_unix_stream_server_t, Handler, Derived>;
template <class Handler, class Derived = void>
using FiberUnixDatagramServer = server_type_t<fiber_unix_datagram_server_t, Handler, Derived>;

}  // namespace socketserver
