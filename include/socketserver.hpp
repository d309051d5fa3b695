// SPDX-License-Identifier: MIT
// socketserver: Python's socketserver module for C++17. Include this, or the narrow headers.
#pragma once

#include "socketserver/activation.hpp"
#include "socketserver/address.hpp"
#include "socketserver/base_server.hpp"
#include "socketserver/datagram.hpp"
#include "socketserver/error.hpp"
#include "socketserver/forking.hpp"
#include "socketserver/handlers.hpp"
#include "socketserver/io.hpp"
#include "socketserver/server_base.hpp"
#include "socketserver/servers.hpp"
#include "socketserver/signals.hpp"
#include "socketserver/socket.hpp"
#include "socketserver/tcp_server.hpp"
#include "socketserver/thread_pool.hpp"
#include "socketserver/threading.hpp"
#include "socketserver/udp_server.hpp"
#include "socketserver/unix_server.hpp"
#include "socketserver/version.hpp"
