// SPDX-License-Identifier: MIT
// The PROXY protocol header parser (detail/proxy_protocol.hpp): v1 and v2 as HAProxy's
// specification writes them, what it rejects and why, and the incremental contract (every
// prefix of a valid header asks for more; nothing past the header is read).
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <socketserver/address.hpp>
#include <socketserver/detail/proxy_protocol.hpp>

#include "catch.hpp"

namespace {

namespace ss = socketserver;
using ss::detail::parse_proxy_header;
using ss::detail::proxy_header;
using ss::detail::proxy_verdict;

ss::detail::proxy_parse parse(const std::string& bytes, proxy_header& out) {
  // An exact-size copy: a read past the end is caught under ASan.
  std::vector<unsigned char> copy(bytes.begin(), bytes.end());
  return parse_proxy_header(copy.data(), copy.size(), out);
}

std::string text(const sockaddr_storage& a, socklen_t length) {
  return ss::address::from_native(reinterpret_cast<const sockaddr*>(&a), length).to_string();
}

// Every proper prefix asks for more (never invalid, never complete), and the whole is
// complete with the same length whatever follows it.
void check_prefixes(const std::string& header) {
  for (std::size_t n = 0; n < header.size(); ++n) {
    proxy_header h;
    const auto p = parse(header.substr(0, n), h);
    CAPTURE(header, n);
    REQUIRE(p.verdict == proxy_verdict::incomplete);
    CHECK(p.needed > n);
    CHECK(p.needed <= header.size());
  }
  proxy_header h;
  REQUIRE(parse(header + "GET / HTTP/1.1\r\n", h).verdict == proxy_verdict::complete);
  CHECK(h.length == header.size());
}

std::string v2(unsigned char command, unsigned char family, const std::string& block) {
  std::string h("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);
  h += static_cast<char>(0x20 | command);
  h += static_cast<char>(family);
  h += static_cast<char>(block.size() >> 8);
  h += static_cast<char>(block.size() & 0xFF);
  return h + block;
}

std::string bytes(std::initializer_list<int> values) {
  std::string s;
  for (int v : values) s += static_cast<char>(v);
  return s;
}

}  // namespace

TEST_CASE("PROXY v1: TCP4 and TCP6 name the client and the address it reached",
          "[proxy_protocol]") {
  proxy_header h;
  const std::string tcp4 = "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
  REQUIRE(parse(tcp4, h).verdict == proxy_verdict::complete);
  CHECK(h.version == 1);
  CHECK_FALSE(h.local);
  CHECK(h.socket_type == SOCK_STREAM);
  CHECK(text(h.source, h.source_length) == "192.0.2.1:56324");
  CHECK(text(h.destination, h.destination_length) == "198.51.100.7:443");
  CHECK(h.length == tcp4.size());
  check_prefixes(tcp4);

  const std::string tcp6 = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
  REQUIRE(parse(tcp6, h).verdict == proxy_verdict::complete);
  CHECK(text(h.source, h.source_length) == "[2001:db8::1]:65535");
  CHECK(text(h.destination, h.destination_length) == "[::1]:0");
  check_prefixes(tcp6);

  // The longest header the specification allows is 107 bytes.
  const std::string longest =
      "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
      "65535 65535\r\n";
  REQUIRE(longest.size() == 104);
  REQUIRE(parse(longest, h).verdict == proxy_verdict::complete);
  check_prefixes(longest);
}

TEST_CASE("PROXY v1: UNKNOWN keeps the connection's own addresses", "[proxy_protocol]") {
  for (const std::string header : {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff:f::1 ::1 1 2\r\n"}) {
    proxy_header h;
    REQUIRE(parse(header, h).verdict == proxy_verdict::complete);
    CHECK(h.local);
    CHECK(h.length == header.size());
    check_prefixes(header);
  }
}

TEST_CASE("PROXY v1: malformed headers are rejected with the reason", "[proxy_protocol]") {
  const std::pair<std::string, std::string> cases[] = {
      {"proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "not a PROXY protocol header"},
      {"GET / HTTP/1.1\r\n", "not a PROXY protocol header"},
      {"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n", "empty field"},
      {"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n", "empty field"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n", "empty field"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n", "fewer than 5 fields"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n", "more than 5 fields"},
      {"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n", "not TCP4, TCP6 or UNKNOWN"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 01 2\r\n", "port"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 65536 2\r\n", "port"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 -1 2\r\n", "port"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 1 +2\r\n", "port"},
      {"PROXY TCP4 ::1 198.51.100.7 1 2\r\n", "address"},
      {"PROXY TCP6 192.0.2.1 ::1 1 2\r\n", "address"},
      {"PROXY TCP4 192.0.2.256 198.51.100.7 1 2\r\n", "address"},
      {"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n", "address"},
      {"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX", "CR is not followed by LF"},
      {"PROXY TCP4 192.0.2.1\n198.51.100.7 1 2\r\n", "not printable"},
      {std::string("PROXY TCP4 \0", 12), "not printable"},
      {"PROXY UNKNOWN" + std::string(200, ' '), "longer than 107 bytes"},
  };
  for (const auto& [header, why] : cases) {
    proxy_header h;
    const auto p = parse(header, h);
    CAPTURE(header);
    REQUIRE(p.verdict == proxy_verdict::invalid);
    CHECK(std::string(p.why).find(why) != std::string::npos);
  }
  // 106 bytes with no CR: no valid header can end later.
  proxy_header h;
  CHECK(parse("PROXY UNKNOWN" + std::string(93, 'x'), h).verdict == proxy_verdict::invalid);
  CHECK(parse("PROXY UNKNOWN" + std::string(92, 'x'), h).verdict == proxy_verdict::incomplete);
}

TEST_CASE("PROXY v2: IPv4, IPv6 and Unix addresses, in network order", "[proxy_protocol]") {
  proxy_header h;
  const std::string ipv4 =
      v2(1, 0x11, bytes({192, 0, 2, 1, 198, 51, 100, 7, 0xDC, 0x04, 0x01, 0xBB}));
  REQUIRE(parse(ipv4, h).verdict == proxy_verdict::complete);
  CHECK(h.version == 2);
  CHECK_FALSE(h.local);
  CHECK(h.socket_type == SOCK_STREAM);
  CHECK(text(h.source, h.source_length) == "192.0.2.1:56324");
  CHECK(text(h.destination, h.destination_length) == "198.51.100.7:443");
  CHECK(h.length == 28);
  check_prefixes(ipv4);

  std::string block6(36, '\0');
  block6[0] = 0x20, block6[1] = 0x01, block6[2] = 0x0d, block6[3] = static_cast<char>(0xb8);
  block6[15] = 1;
  block6[31] = 1;
  block6[32] = static_cast<char>(0xFF), block6[33] = static_cast<char>(0xFF);
  block6[35] = 80;
  const std::string ipv6 = v2(1, 0x22, block6);
  REQUIRE(parse(ipv6, h).verdict == proxy_verdict::complete);
  CHECK(h.socket_type == SOCK_DGRAM);
  CHECK(text(h.source, h.source_length) == "[2001:db8::1]:65535");
  CHECK(text(h.destination, h.destination_length) == "[::1]:80");
  check_prefixes(ipv6);

  std::string unix_block(216, '\0');
  unix_block.replace(0, 11, "/run/client");
  unix_block.replace(108, 11, "/run/server");
  REQUIRE(parse(v2(1, 0x31, unix_block), h).verdict == proxy_verdict::complete);
  CHECK(text(h.source, h.source_length) == "/run/client");
  CHECK(text(h.destination, h.destination_length) == "/run/server");
}

TEST_CASE("PROXY v2: LOCAL, unspecified families and TLVs are taken whole and skipped",
          "[proxy_protocol]") {
  proxy_header h;
  // A health check of the proxy's own: LOCAL, no addresses.
  REQUIRE(parse(v2(0, 0x00, ""), h).verdict == proxy_verdict::complete);
  CHECK(h.local);
  CHECK(h.length == 16);
  // LOCAL with an address block anyway: skipped, not used.
  const std::string local = v2(0, 0x11, bytes({10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2}));
  REQUIRE(parse(local, h).verdict == proxy_verdict::complete);
  CHECK(h.local);
  CHECK(h.length == 28);
  // PROXY with the family unspecified: the connection's own addresses stand.
  REQUIRE(parse(v2(1, 0x01, bytes({1, 2, 3})), h).verdict == proxy_verdict::complete);
  CHECK(h.local);
  // TLVs after the addresses (a PP2_TYPE_AUTHORITY "example.com") are part of the header.
  const std::string with_tlv = v2(
      1, 0x11, bytes({127, 0, 0, 1, 127, 0, 0, 1, 0x30, 0x39, 0, 80, 0x02, 0, 11}) + "example.com");
  REQUIRE(parse(with_tlv, h).verdict == proxy_verdict::complete);
  CHECK(h.length == with_tlv.size());
  CHECK(text(h.source, h.source_length) == "127.0.0.1:12345");
  check_prefixes(with_tlv);
}

TEST_CASE("PROXY v2: malformed headers are rejected as soon as a byte says so",
          "[proxy_protocol]") {
  proxy_header h;
  const std::string signature("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);
  std::string wrong = signature;
  wrong[7] = 'q';
  CHECK(parse(wrong, h).verdict == proxy_verdict::invalid);
  // Version 1 in the binary form, and command 2: known from byte 13 on, before the rest.
  CHECK(std::string(parse(signature + "\x11", h).why).find("version") != std::string::npos);
  CHECK(std::string(parse(signature + "\x22", h).why).find("command") != std::string::npos);
  CHECK(std::string(parse(signature + "\x21\x41", h).why).find("family") != std::string::npos);
  CHECK(std::string(parse(signature + "\x21\x13", h).why).find("transport") != std::string::npos);
  // An address block too short for its family.
  CHECK(std::string(parse(v2(1, 0x11, std::string(11, '\0')), h).why).find("short") !=
        std::string::npos);
  CHECK(std::string(parse(v2(1, 0x21, std::string(35, '\0')), h).why).find("short") !=
        std::string::npos);
  CHECK(std::string(parse(v2(1, 0x31, std::string(215, '\0')), h).why).find("short") !=
        std::string::npos);
  // The length field is believed: a long header waits for all of it.
  const std::string partial =
      v2(1, 0x11, std::string(12, '\0')).substr(0, 14) + std::string("\x10\x00", 2);
  const auto p = parse(partial, h);
  REQUIRE(p.verdict == proxy_verdict::incomplete);
  CHECK(p.needed == 16 + 0x1000);
}
