// SPDX-License-Identifier: MIT
// Fuzzes the PROXY protocol header parser (detail/proxy_protocol.hpp). For any bytes:
// - it reads only the bytes given (each parse gets an exact-size heap copy: ASan sees a
//   read past it);
// - it is consistent under any split, as a connection delivers bytes: if the whole input
//   holds a complete header of length L, every shorter prefix asks for more (needed > its
//   size, never invalid) and every prefix of L bytes or more gives the same header; if the
//   input is invalid, no prefix is complete; if it asks for more, it says how many it needs
//   beyond what it has;
// - a complete v1 header is at most 107 bytes, a v2 one at least 16, and the addresses it
//   returns are of the family it says.
//
// Built two ways (fuzz/CMakeLists.txt): a libFuzzer target (SOCKETSERVER_LIBFUZZER), and an
// ordinary program whose main() replays fixed inputs, a deterministic pseudo-random corpus
// of mutated valid headers, and any files named on its command line.
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <socketserver/detail/proxy_protocol.hpp>

namespace {

namespace ss = socketserver;
using ss::detail::proxy_header;
using ss::detail::proxy_verdict;

[[noreturn]] void fail(const char* what, std::size_t prefix) {
  std::fprintf(stderr, "fuzz_proxy_header: FAILED: %s (prefix of %zu bytes)\n", what, prefix);
  std::abort();
}

ss::detail::proxy_parse parse(const std::uint8_t* data, std::size_t size, proxy_header& out) {
  std::vector<unsigned char> copy(data, data + size);  // exact size: no slack to read
  return ss::detail::parse_proxy_header(copy.empty() ? nullptr : copy.data(), size, out);
}

bool same(const proxy_header& a, const proxy_header& b) {
  return a.version == b.version && a.local == b.local && a.socket_type == b.socket_type &&
         a.length == b.length && a.source_length == b.source_length &&
         a.destination_length == b.destination_length &&
         std::memcmp(&a.source, &b.source, a.source_length) == 0 &&
         std::memcmp(&a.destination, &b.destination, a.destination_length) == 0;
}

void check_addresses(const proxy_header& h) {
  if (h.local) return;
  const int family = h.source.ss_family;
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) fail("source family", 0);
  if (h.destination.ss_family != family) fail("destination family differs", 0);
  if (h.source_length == 0 || h.source_length > sizeof h.source) fail("source length", 0);
}

void run(const std::uint8_t* data, std::size_t size) {
  proxy_header whole;
  const auto p = parse(data, size, whole);
  if (p.verdict == proxy_verdict::complete) {
    if (whole.length == 0 || whole.length > size) fail("complete length out of range", size);
    if (whole.version == 1 && whole.length > ss::detail::proxy_v1_max_length)
      fail("v1 header longer than 107 bytes", size);
    if (whole.version == 2 && whole.length < ss::detail::proxy_v2_fixed_length)
      fail("v2 header shorter than 16 bytes", size);
    check_addresses(whole);
  } else if (p.verdict == proxy_verdict::incomplete) {
    if (p.needed <= size) fail("asks for bytes it has", size);
  } else if (p.why == nullptr) {
    fail("invalid without a reason", size);
  }
  // Every prefix (up to the header's end and a few bytes past it).
  const std::size_t limit =
      p.verdict == proxy_verdict::complete ? std::min(size, whole.length + 4) : size;
  for (std::size_t n = 0; n < limit; ++n) {
    proxy_header h;
    const auto q = parse(data, n, h);
    if (p.verdict == proxy_verdict::complete) {
      if (n < whole.length && q.verdict != proxy_verdict::incomplete)
        fail("a prefix of a complete header is not incomplete", n);
      if (n < whole.length && q.needed > whole.length)
        fail("a prefix asks for more than the header has", n);
      if (n >= whole.length && (q.verdict != proxy_verdict::complete || !same(h, whole)))
        fail("a longer prefix parses differently", n);
    } else if (q.verdict == proxy_verdict::complete) {
      fail("a prefix of a header that never completes is complete", n);
    }
    if (q.verdict == proxy_verdict::incomplete && q.needed <= n) fail("asks for bytes it has", n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;  // a v2 header's length is believed up to 64 KiB: enough here
  run(data, size);
  return 0;
}

#if !defined(SOCKETSERVER_LIBFUZZER)
namespace {

std::uint64_t state = 0x9E3779B97F4A7C15u;
std::uint64_t next_random() {  // xorshift64*: the same corpus on every run
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return state * 0x2545F4914F6CDD1Du;
}

void run(const std::string& input) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

std::string v2(int command, int family, const std::string& block) {
  std::string h("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);
  h += static_cast<char>(0x20 | command);
  h += static_cast<char>(family);
  h += static_cast<char>(block.size() >> 8);
  h += static_cast<char>(block.size() & 0xFF);
  return h + block;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) {
    for (int i = 1; i < argc; ++i) {
      std::ifstream file(argv[i], std::ios::binary);
      run(std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()));
      std::printf("replayed %s\n", argv[i]);
    }
    return 0;
  }
  const std::string seeds[] = {
      "PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.0\r\n",
      "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n",
      "PROXY UNKNOWN\r\n",
      "PROXY UNKNOWN 1 2 3\r\n",
      v2(1, 0x11, std::string("\xC0\x00\x02\x01\xC6\x33\x64\x07\xDC\x04\x01\xBB", 12)) + "data",
      v2(1, 0x21, std::string(36, '\x01')),
      v2(1, 0x31, "/run/a" + std::string(102, '\0') + "/run/b" + std::string(102, '\0')),
      v2(0, 0x00, ""),
      v2(1, 0x11,
         std::string(12, '\x7f') + std::string("\x02\x00\x03"
                                               "abc",
                                               6)),
  };
  int fixed = 0;
  for (const std::string& seed : seeds) {
    run(seed);
    ++fixed;
  }
  // Mutations of the seeds: bytes changed, cut, or inserted, a few at a time.
  const int corpus = 20000;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int random_runs = 0;
  for (; random_runs < corpus && std::chrono::steady_clock::now() < deadline; ++random_runs) {
    std::string input = seeds[next_random() % (sizeof seeds / sizeof seeds[0])];
    const int edits = 1 + static_cast<int>(next_random() % 4);
    for (int e = 0; e < edits && !input.empty(); ++e) {
      const std::size_t at = next_random() % input.size();
      const std::uint64_t r = next_random();
      const char byte = r % 4 == 0 ? ' ' : r % 4 == 1 ? '\r' : static_cast<char>(r >> 40);
      switch (r % 3) {
        case 0:
          input[at] = byte;
          break;
        case 1:
          input.erase(at, 1 + (r >> 8) % 3);
          break;
        default:
          input.insert(at, 1, byte);
      }
    }
    run(input);
  }
  std::printf("fuzz_proxy_header: %d fixed and %d mutated inputs passed\n", fixed, random_runs);
  return random_runs == corpus ? 0 : 1;
}
#endif
