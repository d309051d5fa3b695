// SPDX-License-Identifier: MIT
// Shared by the examples: command-line parsing and Python-style printing of bytes.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace example {

/// The port the examples use unless told otherwise: 9999, as in Python's docs, or the
/// environment's SOCKETSERVER_EXAMPLE_PORT (for a machine where something else holds 9999).
inline int default_port() {
  const char* port = std::getenv("SOCKETSERVER_EXAMPLE_PORT");
  return port != nullptr && *port != '\0' ? std::atoi(port) : 9999;
}

/// Servers: `prog [HOST] [PORT]`, default localhost 9999.
struct server_args {
  std::string host = "localhost";
  int port = default_port();
};
inline server_args parse_server_args(int argc, char** argv) {
  server_args args;
  if (argc > 1) args.host = argv[1];
  if (argc > 2) args.port = std::atoi(argv[2]);
  return args;
}

/// Clients: `prog [--host H] [--port P] [--path PATH] WORDS...`, default localhost 9999.
struct client_args {
  std::string host = "localhost";
  int port = default_port();
  std::string path;
  std::string data;  // the words, joined by spaces
};
inline client_args parse_client_args(int argc, char** argv) {
  client_args args;
  std::vector<std::string> words;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--host" && i + 1 < argc)
      args.host = argv[++i];
    else if (arg == "--port" && i + 1 < argc)
      args.port = std::atoi(argv[++i]);
    else if (arg == "--path" && i + 1 < argc)
      args.path = argv[++i];
    else
      words.emplace_back(arg);
  }
  for (const auto& w : words) args.data += (args.data.empty() ? "" : " ") + w;
  return args;
}

/// Python's repr() of bytes: b'hello\n'.
inline std::string bytes_repr(std::string_view data) {
  std::string out = "b'";
  for (unsigned char c : data) {
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

/// Python's bytes.strip(): without surrounding whitespace.
inline std::string strip(std::string_view s) {
  const char* space = " \t\n\r\f\v";
  const auto first = s.find_first_not_of(space);
  if (first == std::string_view::npos) return {};
  return std::string(s.substr(first, s.find_last_not_of(space) - first + 1));
}

/// Python's bytes.upper().
inline std::string upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

}  // namespace example
