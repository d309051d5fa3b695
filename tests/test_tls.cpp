// SPDX-License-Identifier: MIT
// The TLS add-on (socketserver/tls.hpp): a handler written for plain TCP serves TLS
// unchanged on every stream server kind; interop with Python's ssl and openssl s_client;
// wrong and expired certificates, plain text and truncated handshakes; SNI, ALPN, client
// certificates, reload while serving; idle clients do not hold up others; nothing leaks.
// Certificates are made at test time with the OpenSSL API, in memory and in a temp dir.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <socketserver/tls.hpp>

#include "catch.hpp"
#include "support/harness.hpp"
#include "support/leaks.hpp"

namespace {

namespace ss = socketserver;
using test::eventually;

// The test's own client writes through OpenSSL's socket BIO, with write(): a server that
// has closed would end the test with SIGPIPE. (The server's writes use MSG_NOSIGNAL.)
const bool sigpipe_ignored = [] {
  std::signal(SIGPIPE, SIG_IGN);
  return true;
}();

// --- Certificates --------------------------------------------------------------------------

struct pkey_free {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct x509_free {
  void operator()(X509* x) const noexcept { X509_free(x); }
};

struct credential {
  std::shared_ptr<EVP_PKEY> key;
  std::shared_ptr<X509> cert;
  std::string cert_pem, key_pem;
};

std::string to_pem(X509* cert) {
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(out, cert);
  char* text = nullptr;
  const long n = BIO_get_mem_data(out, &text);
  std::string pem(text, static_cast<std::size_t>(n));
  BIO_free(out);
  return pem;
}

std::string to_pem(EVP_PKEY* key) {
  BIO* out = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(out, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* text = nullptr;
  const long n = BIO_get_mem_data(out, &text);
  std::string pem(text, static_cast<std::size_t>(n));
  BIO_free(out);
  return pem;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  REQUIRE(ext != nullptr);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A P-256 certificate for `cn`, signed by `issuer` (self-signed when null), valid from
// now + not_before to now + not_after seconds.
credential make_cert(const std::string& cn, const credential* issuer, bool ca,
                     const char* san = nullptr, long not_before = -3600, long not_after = 86400) {
  static std::atomic<long> serial{1};
  credential c;
  c.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), pkey_free());
  REQUIRE(c.key);
  c.cert.reset(X509_new(), x509_free());
  X509* x = c.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x), not_before);
  X509_gmtime_adj(X509_getm_notAfter(x), not_after);
  X509_set_pubkey(x, c.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509* issuer_cert = issuer != nullptr ? issuer->cert.get() : x;
  X509_set_issuer_name(x, X509_get_subject_name(issuer_cert));
  add_extension(x, issuer_cert, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
  if (ca) add_extension(x, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  if (san != nullptr) add_extension(x, issuer_cert, NID_subject_alt_name, san);
  REQUIRE(X509_sign(x, issuer != nullptr ? issuer->key.get() : c.key.get(), EVP_sha256()) > 0);
  c.cert_pem = to_pem(x);
  c.key_pem = to_pem(c.key.get());
  return c;
}

// One test run's certificates: a CA, the server's ("localhost"), a second name for SNI, a
// client's, and a stranger CA with a client of its own.
struct pki {
  credential ca = make_cert("Test CA", nullptr, true);
  credential server = make_cert("localhost", &ca, false, "DNS:localhost,IP:127.0.0.1");
  credential other = make_cert("other.test", &ca, false, "DNS:other.test");
  credential client = make_cert("alice", &ca, false);
  credential stranger_ca = make_cert("Stranger CA", nullptr, true);
  credential stranger = make_cert("mallory", &stranger_ca, false);
};

const pki& certs() {
  static const pki p;
  return p;
}

ss::tls_context server_context(const credential& c = certs().server) {
  ss::tls_context context;
  context.load_cert_chain_pem(c.cert_pem, c.key_pem);
  return context;
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// --- A TLS client (OpenSSL, blocking, on the test's side) ---------------------------------

struct client_options {
  std::string ca_pem = certs().ca.cert_pem;
  std::string server_name = "localhost";
  std::vector<std::string> alpn;
  const credential* certificate = nullptr;
};

client_options trusting(const std::string& ca_pem, const std::string& server_name) {
  client_options o;
  o.ca_pem = ca_pem;
  o.server_name = server_name;
  return o;
}

class tls_client {
 public:
  // `connected`, if given, runs once the connection is made, before any OpenSSL call (a
  // forking server's test waits there for the fork: see CountedForking).
  tls_client(const ss::address& to, const client_options& o = {},
             const std::function<void()>& connected = {})
      : sock_(test::connect_to(to)) {
    if (connected) connected();
    ctx_ = SSL_CTX_new(TLS_client_method());
    BIO* bio = BIO_new_mem_buf(o.ca_pem.data(), static_cast<int>(o.ca_pem.size()));
    X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx_), ca);
    X509_free(ca);
    BIO_free(bio);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    if (o.certificate != nullptr) {
      SSL_CTX_use_certificate(ctx_, o.certificate->cert.get());
      SSL_CTX_use_PrivateKey(ctx_, o.certificate->key.get());
    }
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, sock_.fileno());
    if (!o.server_name.empty()) {
      SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(o.server_name.c_str()));  // SSL_set_tlsext_host_name()
      SSL_set1_host(ssl_, o.server_name.c_str());
    }
    if (!o.alpn.empty()) {
      std::string wire;
      for (const auto& p : o.alpn) wire += static_cast<char>(p.size()) + p;
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(wire.data()),
                          static_cast<unsigned int>(wire.size()));
    }
  }
  tls_client(const tls_client&) = delete;
  tls_client& operator=(const tls_client&) = delete;
  ~tls_client() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
  }

  // The handshake; false (with error() saying why) if it failed.
  bool handshake() {
    if (SSL_connect(ssl_) == 1) return true;
    error_ = ss::detail::take_openssl_errors();
    return false;
  }
  const std::string& error() const { return error_; }

  // Writes all of data; false (with error() saying why) if the connection failed.
  bool write(const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
      std::size_t n = 0;
      if (SSL_write_ex(ssl_, data.data() + done, data.size() - done, &n) != 1) {
        error_ = ss::detail::take_openssl_errors("");
        return false;
      }
      done += n;
    }
    return true;
  }
  // Reads until `count` bytes, the end of the stream or an error.
  std::string read(std::size_t count) {
    std::string out;
    char buf[16384];
    while (out.size() < count) {
      std::size_t n = 0;
      if (SSL_read_ex(ssl_, buf, std::min(sizeof buf, count - out.size()), &n) != 1) {
        error_ = ss::detail::take_openssl_errors("");
        break;
      }
      out.append(buf, n);
    }
    return out;
  }
  std::string read_line() {
    std::string out;
    while (out.empty() || out.back() != '\n') {
      std::string c = read(1);
      if (c.empty()) break;
      out += c;
    }
    return out;
  }
  // True when the server ended the stream with close_notify.
  bool got_close_notify() {
    char c;
    std::size_t n = 0;
    const int ok = SSL_read_ex(ssl_, &c, 1, &n);
    return ok != 1 && SSL_get_error(ssl_, ok) == SSL_ERROR_ZERO_RETURN;
  }
  std::string peer_cn() const {
    X509* cert = SSL_get0_peer_certificate(ssl_);
    if (cert == nullptr) return "";
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    return cn;
  }
  std::string alpn() const {
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(ssl_, &p, &n);
    return p != nullptr ? std::string(reinterpret_cast<const char*>(p), n) : "";
  }
  ss::socket& socket() { return sock_; }

 private:
  ss::socket sock_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string error_;
};

// --- Handlers and servers -------------------------------------------------------------------

// A handler written for plain TCP: echoes lines until the client closes.
struct LineEcho : ss::StreamRequestHandler<> {
  void handle() {
    for (const std::string& line : rfile) wfile.write(line);
  }
};

// OpenSSL's locks are not reset in a forked child: a forking server's child forked while the
// test's client (another thread) held one, and needing it, waits for good (seen: a lock of
// OpenSSL's method store, which a fetch takes to fill its cache). One whole handshake in this
// process before any forking server fills those caches, so that the client and the children
// then only read them. (A server of yours that forks must likewise have no other thread in
// OpenSSL when it forks: see ForkingMixIn in tls.hpp.)
void warm_up_openssl() {
  static const bool warm = [] {
    ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, server_context());
    test::Serving<decltype(server)> serving(server);
    tls_client client(server.server_address);
    REQUIRE(client.handshake());
    client.write("warm\n");
    REQUIRE(client.read_line() == "warm\n");
    return true;
  }();
  (void)warm;
}

// Echoes one line, then ends the connection (close_notify).
struct OneLine : ss::StreamRequestHandler<> {
  void handle() { wfile.write(rfile.readline()); }
};

// The raw socket calls: recv(), then sendall() of a large reply (partial writes).
struct BulkReply : ss::BaseRequestHandler<> {
  void handle() {
    std::string want = request.recv(64);
    const std::size_t size = std::stoul(want);
    request.sendall(std::string(size, 'x'));
  }
};

// Reports what the handler can see of the TLS session, as one line.
struct SessionReport : ss::StreamRequestHandler<> {
  void handle() {
    ss::tls_session* tls = ss::tls_session_of(request);
    std::string line = tls == nullptr ? std::string("none")
                                      : tls->version() + "|" + tls->server_name() + "|" +
                                            tls->alpn_protocol() + "|" + tls->peer_subject();
    (void)rfile.readline();
    wfile.write(line + "\n");
  }
};

// A threading TLS server that keeps what handle_error() was told.
template <class Handler>
struct RecordingServer : ss::ThreadingTLSTCPServer<Handler, RecordingServer<Handler>> {
  using ss::ThreadingTLSTCPServer<Handler, RecordingServer<Handler>>::ThreadingTLSTCPServer;
  std::mutex mutex;
  std::vector<std::string> errors;
  void handle_error(ss::socket&, const ss::address&) {
    std::lock_guard<std::mutex> lock(mutex);
    errors.push_back(ss::detail::describe_current_exception());
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mutex);
    return errors;
  }
};

// A forking TLS server that counts its forks, so that the test's client enters OpenSSL only
// once the server has forked for its connection: OpenSSL's locks are not reset in a forked
// child, and one the client's thread held at the fork would never be released there (a child
// waited for good on one, now and then, in CI). The warm-up above made that rarer, not rare
// enough: the client must not be in OpenSSL while the server forks.
template <class Handler>
struct CountedForking : ss::ForkingTLSTCPServer<Handler, CountedForking<Handler>> {
  using base = ss::ForkingTLSTCPServer<Handler, CountedForking<Handler>>;
  using base::base;
  std::atomic<int> forks{0};
  void process_request(ss::socket& request, const ss::address& client) {
    base::process_request(request, client);  // (the child never returns from it)
    forks.fetch_add(1);
  }
};

template <class T>
struct is_counted_forking : std::false_type {};
template <class H>
struct is_counted_forking<CountedForking<H>> : std::true_type {};

// Before a client's handshake: a forking server has forked for `connections` connections.
template <class Server>
void await_forks(Server& server, int connections) {
  if constexpr (is_counted_forking<Server>::value)
    REQUIRE(eventually([&] { return server.forks.load() >= connections; }));
  (void)server;
  (void)connections;
}

}  // namespace

TEMPLATE_TEST_CASE("a StreamRequestHandler written for plain TCP serves TLS unchanged", "[tls]",
                   ss::TLSTCPServer<LineEcho>, ss::ThreadingTLSTCPServer<LineEcho>,
                   CountedForking<LineEcho>, ss::ThreadPoolTLSTCPServer<LineEcho>,
                   ss::FiberTLSTCPServer<LineEcho>) {
  warm_up_openssl();  // before a forking server forks (see warm_up_openssl())
  TestType server({"127.0.0.1", 0}, server_context());
  test::Serving<TestType> serving(server);
  for (int round = 0; round < 3; ++round) {
    tls_client client(server.server_address, {}, [&] { await_forks(server, round + 1); });
    REQUIRE(client.handshake());
    CHECK(client.peer_cn() == "localhost");
    client.write("hello\n");
    CHECK(client.read_line() == "hello\n");
    const std::string long_line = std::string(100000, 'a') + "\n";  // several records
    client.write(long_line);
    CHECK(client.read(long_line.size()) == long_line);
    ::shutdown(client.socket().fileno(), SHUT_WR);  // the end of the client's lines
    CHECK(client.got_close_notify());
  }
  CHECK(eventually([&] { return server.stats().completed == 3; }));
  CHECK(server.stats().errors == 0);
}

TEMPLATE_TEST_CASE("request.recv() and sendall() of a BaseRequestHandler go through TLS", "[tls]",
                   ss::ThreadingTLSTCPServer<BulkReply>, ss::ThreadPoolTLSTCPServer<BulkReply>,
                   ss::FiberTLSTCPServer<BulkReply>) {
  TestType server({"127.0.0.1", 0}, server_context());
  test::Serving<TestType> serving(server);
  tls_client client(server.server_address);
  REQUIRE(client.handshake());
  const std::size_t size = 4 << 20;  // far beyond the socket's buffer: partial writes
  client.write(std::to_string(size));
  const std::string reply = client.read(size);
  CHECK(reply.size() == size);
  CHECK(reply.find_first_not_of('x') == std::string::npos);
}

TEST_CASE("a Unix stream server serves TLS too", "[tls][unix]") {
  test::TempDir dir;
  ss::ThreadingTLSUnixStreamServer<LineEcho> server(ss::address(dir.file("tls.sock")),
                                                    server_context());
  test::Serving<decltype(server)> serving(server);
  tls_client client(server.server_address, trusting(certs().ca.cert_pem, "localhost"));
  REQUIRE(client.handshake());
  client.write("over unix\n");
  CHECK(client.read_line() == "over unix\n");
}

TEST_CASE("interop: Python's ssl client", "[tls][interop]") {
  if (std::system("python3 -c 'import ssl' >/dev/null 2>&1") != 0) {
    WARN("skipped: no python3 with ssl here");
    return;
  }
  test::TempDir dir;
  write_file(dir.file("ca.pem"), certs().ca.cert_pem);
  write_file(dir.file("client.py"), R"(
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"hello from python\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        print(s.version(), data.decode().strip())
)");
  ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  test::Serving<decltype(server)> serving(server);
  const std::string command = "timeout --foreground 60 python3 " + dir.file("client.py") +
                              " 127.0.0.1 " + std::to_string(server.server_address.port()) + " " +
                              dir.file("ca.pem") + " 2>&1";
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  CHECK(::pclose(p) == 0);
  CHECK(out == "TLSv1.3 hello from python\n");
}

TEST_CASE("interop: openssl s_client over TLS 1.2 and TLS 1.3", "[tls][interop]") {
  test::TempDir dir;
  write_file(dir.file("ca.pem"), certs().ca.cert_pem);
  ss::ThreadingTLSTCPServer<OneLine> server({"127.0.0.1", 0}, server_context());
  test::Serving<decltype(server)> serving(server);
  for (const char* version : {"-tls1_2", "-tls1_3"}) {
    // -quiet implies -ign_eof: s_client waits for the server's close after stdin ends.
    const std::string command =
        "printf 'hello s_client\\n' | timeout --foreground 60 openssl s_client " +
        std::string(version) + " -quiet -verify_return_error -CAfile " + dir.file("ca.pem") +
        " -servername localhost -connect 127.0.0.1:" +
        std::to_string(server.server_address.port()) + " 2>/dev/null";
    std::string out;
    FILE* p = ::popen(command.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[512];
    while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    ::pclose(p);
    INFO(version);
    CHECK(out == "hello s_client\n");
  }
}

TEST_CASE("a client that trusts another CA fails its handshake; the server says why",
          "[tls][negative]") {
  RecordingServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  test::Serving<decltype(server)> serving(server);
  tls_client client(server.server_address, trusting(certs().stranger_ca.cert_pem, "localhost"));
  CHECK_FALSE(client.handshake());
  CHECK(client.error().find("certificate verify failed") != std::string::npos);
  client.socket().close();
  REQUIRE(eventually([&] { return server.stats().completed == 1; }));
  const auto errors = server.seen();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].find("TLS handshake with 127.0.0.1:") != std::string::npos);
  CHECK(errors[0].find("alert") != std::string::npos);  // OpenSSL's reason: the client's alert
}

TEST_CASE("an expired server certificate is refused by the client", "[tls][negative]") {
  const credential expired =
      make_cert("localhost", &certs().ca, false, "DNS:localhost", -7200, -3600);
  ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, server_context(expired));
  test::Serving<decltype(server)> serving(server);
  tls_client client(server.server_address);
  CHECK_FALSE(client.handshake());
  CHECK(client.error().find("certificate verify failed") != std::string::npos);
  CHECK(eventually([&] { return server.stats().completed == 1; }));
}

TEST_CASE("a plain-text client on the TLS port fails, named with OpenSSL's reason",
          "[tls][negative]") {
  RecordingServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  test::Serving<decltype(server)> serving(server);
  ss::socket plain = test::connect_to(server.server_address);
  plain.sendall("hello in the clear\r\n");
  CHECK(test::recv_all(plain).find("HTTP") == std::string::npos);  // closed, no reply in clear
  REQUIRE(eventually([&] { return server.stats().completed == 1; }));
  CHECK(server.stats().errors == 1);
  const auto errors = server.seen();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].find("TLS handshake with 127.0.0.1:") != std::string::npos);
  CHECK(errors[0].find("wrong version number") != std::string::npos);
}

TEST_CASE("a truncated handshake ends as a disconnect; a stalled one at handshake_timeout",
          "[tls][negative]") {
  RecordingServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  server.handshake_timeout = std::chrono::milliseconds(300);
  test::Serving<decltype(server)> serving(server);
  // The first bytes of a TLS 1.2+ ClientHello record, then nothing more.
  const std::string partial("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  {
    ss::socket gone = test::connect_to(server.server_address);
    gone.sendall(partial);
  }  // closed
  REQUIRE(eventually([&] { return server.stats().completed == 1; }));
  CHECK(server.stats().disconnects == 1);
  ss::socket stalled = test::connect_to(server.server_address);
  stalled.sendall(partial);
  CHECK(test::recv_all(stalled).empty());  // the server gives up and closes
  REQUIRE(eventually([&] { return server.stats().completed == 2; }));
  CHECK(server.stats().timeouts == 1);
  CHECK(server.stats().errors == 0);
}

TEST_CASE("SNI: a certificate per server name; the handler sees the name", "[tls][sni]") {
  ss::tls_context context = server_context();
  context.add_server_name_pem("other.test", certs().other.cert_pem, certs().other.key_pem);
  ss::ThreadingTLSTCPServer<SessionReport> server({"127.0.0.1", 0}, context);
  test::Serving<decltype(server)> serving(server);
  {
    tls_client client(server.server_address, trusting(certs().ca.cert_pem, "other.test"));
    REQUIRE(client.handshake());
    CHECK(client.peer_cn() == "other.test");
    client.write("?\n");
    CHECK(client.read_line() == "TLSv1.3|other.test||\n");
  }
  {
    tls_client client(server.server_address);  // "localhost": the default certificate
    REQUIRE(client.handshake());
    CHECK(client.peer_cn() == "localhost");
  }
}

TEST_CASE("ALPN: the server's first protocol the client offers is chosen", "[tls][alpn]") {
  ss::tls_context context = server_context();
  context.set_alpn_protocols({"h2", "http/1.1"});
  ss::ThreadingTLSTCPServer<SessionReport> server({"127.0.0.1", 0}, context);
  test::Serving<decltype(server)> serving(server);
  client_options o;
  o.alpn = {"http/1.1", "h2"};
  tls_client client(server.server_address, o);
  REQUIRE(client.handshake());
  CHECK(client.alpn() == "h2");
  client.write("?\n");
  CHECK(client.read_line() == "TLSv1.3|localhost|h2|\n");
  o.alpn = {"spdy/1"};  // nothing in common: no ALPN answer, the handshake goes on
  tls_client other(server.server_address, o);
  REQUIRE(other.handshake());
  CHECK(other.alpn().empty());
}

TEST_CASE("mTLS: the client's certificate is visible to the handler; none is refused",
          "[tls][mtls]") {
  ss::tls_context context = server_context();
  context.load_verify_locations_pem(certs().ca.cert_pem);
  context.set_verify_mode(ss::cert_verify::required);
  RecordingServer<SessionReport> server({"127.0.0.1", 0}, context);
  test::Serving<decltype(server)> serving(server);
  {
    client_options o;
    o.certificate = &certs().client;
    tls_client client(server.server_address, o);
    REQUIRE(client.handshake());
    client.write("?\n");
    CHECK(client.read_line() == "TLSv1.3|localhost||CN = alice\n");
  }
  for (const credential* who : {static_cast<const credential*>(nullptr), &certs().stranger}) {
    client_options o;
    o.certificate = who;
    tls_client client(server.server_address, o);
    // TLS 1.3: the client's handshake ends before the server has checked; the refusal
    // comes as an alert on the first read.
    if (client.handshake() && client.write("?\n")) CHECK(client.read_line().empty());
  }
  REQUIRE(eventually([&] { return server.stats().completed == 3; }));
  const auto errors = server.seen();
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].find("peer did not return a certificate") != std::string::npos);
  CHECK(errors[1].find("certificate verify failed") != std::string::npos);
}

TEST_CASE("reload: new connections get the new certificate, open ones keep theirs",
          "[tls][reload]") {
  ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  test::Serving<decltype(server)> serving(server);
  tls_client before(server.server_address);
  REQUIRE(before.handshake());
  CHECK(before.peer_cn() == "localhost");
  const credential renewed = make_cert("localhost-renewed", &certs().ca, false, "DNS:localhost");
  server.set_tls_context(server_context(renewed));
  tls_client after(server.server_address);
  REQUIRE(after.handshake());
  CHECK(after.peer_cn() == "localhost-renewed");
  before.write("still here\n");  // the open connection goes on
  CHECK(before.read_line() == "still here\n");
  after.write("new\n");
  CHECK(after.read_line() == "new\n");
}

TEST_CASE("certificates from PEM files; a bad file is named with OpenSSL's reason",
          "[tls][context]") {
  test::TempDir dir;
  write_file(dir.file("cert.pem"), certs().server.cert_pem);
  write_file(dir.file("key.pem"), certs().server.key_pem);
  ss::tls_context context;
  context.load_cert_chain(dir.file("cert.pem"), dir.file("key.pem"));
  ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, context);
  test::Serving<decltype(server)> serving(server);
  tls_client client(server.server_address);
  REQUIRE(client.handshake());
  ss::tls_context bad;
  try {
    bad.load_cert_chain(dir.file("missing.pem"), dir.file("key.pem"));
    FAIL("no exception");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find("load_cert_chain " + dir.file("missing.pem")) !=
          std::string::npos);
  }
  CHECK_THROWS_AS(bad.load_cert_chain_pem(certs().server.cert_pem, certs().other.key_pem),
                  std::system_error);  // the key does not match
}

TEMPLATE_TEST_CASE("64 clients that connect and send nothing do not stop a real client",
                   "[tls][idle]", ss::ThreadingTLSTCPServer<LineEcho>, CountedForking<LineEcho>,
                   ss::ThreadPoolTLSTCPServer<LineEcho>, ss::FiberTLSTCPServer<LineEcho>) {
  warm_up_openssl();  // before a forking server forks (see warm_up_openssl())
  TestType server({"127.0.0.1", 0}, server_context());
  if constexpr (is_counted_forking<TestType>::value)
    server.max_children = 100;  // 40 by default: the 41st idle client would wait for one
  test::Serving<TestType> serving(server);
  std::vector<ss::socket> idle;
  // One at a time, each accepted before the next connects: the listen backlog is 5
  // (Python's request_queue_size), and a connection the kernel could not queue would wait
  // for its SYN-ACK to be sent again (1 s, 3 s, ...). Each then waits in its handshake, in
  // its own thread, child or fiber (or worker).
  for (std::uint64_t i = 1; i <= 64; ++i) {
    idle.push_back(test::connect_to(server.server_address));
    REQUIRE(eventually([&] { return server.stats().accepted >= i; }));
  }
  tls_client client(server.server_address, {}, [&] { await_forks(server, 65); });
  REQUIRE(client.handshake());  // within the client's 20 s socket timeout, not the 10 s
  client.write("served\n");     // handshake_timeout of the idle ones' handshakes
  CHECK(client.read_line() == "served\n");
  CHECK(server.stats().completed == 0);  // no idle one was cut to make room
  // Forked children hold copies of the test's client sockets: closing ours would not end
  // their connections. shutdown() does.
  ::shutdown(client.socket().fileno(), SHUT_RDWR);
  for (ss::socket& s : idle) ::shutdown(s.fileno(), SHUT_RDWR);
}

namespace {

// Resident memory of this process, in KiB (Linux's /proc; 0 elsewhere).
long resident_kib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

bool under_valgrind() {
  const char* preload = std::getenv("LD_PRELOAD");
  return preload != nullptr && std::strstr(preload, "vgpreload") != nullptr;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "descriptors, threads, children and memory back to baseline after 10,000 "
    "TLS requests",
    "[tls][hygiene]", ss::ThreadingTLSTCPServer<LineEcho>, ss::ThreadPoolTLSTCPServer<LineEcho>,
    ss::FiberTLSTCPServer<LineEcho>, CountedForking<LineEcho>) {
  warm_up_openssl();  // before a forking server forks (see warm_up_openssl())
  // Fewer where each request costs far more (a fork each; valgrind; the sanitizers): the
  // point, that nothing grows with the count, does not depend on it.
  constexpr bool forking = is_counted_forking<TestType>::value;
  int requests = forking ? 1000 : 10000;
  if (under_valgrind()) requests = 100;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  requests = forking ? 200 : 1000;
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  requests = forking ? 200 : 1000;
#  endif
#endif
  const test::Baseline before;
  long warm_kib = 0;
  {
    TestType server({"127.0.0.1", 0}, server_context());
    test::Serving<TestType> serving(server);
    for (int i = 0; i < requests; ++i) {
      tls_client client(server.server_address, {}, [&] { await_forks(server, i + 1); });
      REQUIRE(client.handshake());
      client.write("x\n");
      REQUIRE(client.read_line() == "x\n");
      // (A forked child holds a copy of this client's socket, made when it forked:
      // closing ours alone would not end its connection.)
      ::shutdown(client.socket().fileno(), SHUT_RDWR);
      // Memory once OpenSSL, the allocator and the server have warmed up (a tenth in).
      if (i == requests / 10) warm_kib = resident_kib();
    }
    CHECK(eventually(
        [&] { return server.stats().completed == static_cast<std::uint64_t>(requests); }));
    CHECK(server.stats().errors == 0);
    // A connection's TLS state is some 10-60 KiB (SSL object, buffers): were any kept, nine
    // tenths of the requests would grow the process by far more than this.
    const long grown_kib = resident_kib() - warm_kib;
    INFO("resident memory grew by " << grown_kib << " KiB over " << requests - requests / 10
                                    << " requests");
#if defined(__SANITIZE_ADDRESS__)
#  define TLS_TEST_ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define TLS_TEST_ASAN 1
#  endif
#endif
#if !defined(TLS_TEST_ASAN)  // ASan keeps freed memory in quarantine (its leak check runs)
    CHECK(grown_kib < 4096);
#endif
  }
  test::check_nothing_left(before);
}

namespace {

// Answers one line with the client's address as the server sees it.
struct WhoIsIt : ss::StreamRequestHandler<> {
  void handle() {
    (void)rfile.readline();
    wfile.write(client_address.to_string() + "\n");
  }
};

}  // namespace

TEMPLATE_TEST_CASE(
    "behind a load balancer: the PROXY header comes before the handshake, and "
    "the handler sees the client it names",
    "[tls][proxy]", ss::ThreadingTLSTCPServer<WhoIsIt>, ss::FiberTLSTCPServer<WhoIsIt>,
    CountedForking<WhoIsIt>) {
  warm_up_openssl();  // before a forking server forks (see warm_up_openssl())
  TestType server({"127.0.0.1", 0}, server_context());
  server.proxy_protocol = ss::proxy_protocol_mode::v1;
  server.proxy_trusted_sources = {"127.0.0.1/32"};
  test::Serving<TestType> serving(server);
  tls_client client(server.server_address, {}, [&] { await_forks(server, 1); });
  // What HAProxy's send-proxy does in front of a TLS server: the header in clear, then the
  // client's own bytes (here, its ClientHello).
  const std::string header = "PROXY TCP4 192.0.2.7 127.0.0.1 40312 443\r\n";
  REQUIRE(::send(client.socket().fileno(), header.data(), header.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(header.size()));
  REQUIRE(client.handshake());
  client.write("who\n");
  CHECK(client.read_line() == "192.0.2.7:40312\n");
  ::shutdown(client.socket().fileno(), SHUT_RDWR);  // (a forked child holds a copy)
}

TEST_CASE("prefork workers serve TLS on the shared socket", "[tls][prefork]") {
  // Synchronous workers: no thread in a forked child (ThreadSanitizer cannot start one).
  ss::TLSTCPServer<LineEcho> server({"127.0.0.1", 0}, server_context());
  {
    test::Workers<decltype(server)> workers(server, 2);
    // Both forked before a client socket exists: a worker forked later would hold a copy of
    // one, and the connection would not end when the client closes it.
    REQUIRE(eventually([&] {
      const auto each = server.worker_stats();
      return each.size() == 2 && each[0].pid != 0 && each[1].pid != 0;
    }));
    for (int i = 0; i < 20; ++i) {
      tls_client client(server.server_address);
      REQUIRE(client.handshake());
      client.write("in a worker\n");
      CHECK(client.read_line() == "in a worker\n");
    }
    workers.stop();
    CHECK_FALSE(workers.error());
  }
  CHECK(server.stats().completed == 20);  // the workers' counts, summed by the supervisor
  CHECK(server.stats().errors == 0);
}

TEST_CASE("the core serves with no transport: socket_view carries a transport when set",
          "[tls][transport]") {
  ss::socket_view plain(0);
  CHECK(plain.transport() == nullptr);
  CHECK(plain.pending() == 0);
  CHECK(ss::tls_session_of(plain) == nullptr);
}

TEST_CASE("kTLS (opt-in) where the kernel has the tls ULP", "[tls][ktls]") {
  std::ifstream ulps("/proc/sys/net/ipv4/tcp_available_ulp");
  std::string available;
  std::getline(ulps, available);
  if (available.find("tls") == std::string::npos) {
    WARN("skipped: this kernel offers no `tls` ULP (tcp_available_ulp: '" + available +
         "'; modprobe tls)");
    return;
  }
  ss::tls_context context = server_context();
  context.enable_ktls();
  ss::ThreadingTLSTCPServer<LineEcho> server({"127.0.0.1", 0}, context);
  test::Serving<decltype(server)> serving(server);
  tls_client client(server.server_address);
  REQUIRE(client.handshake());
  client.write("kernel\n");
  CHECK(client.read_line() == "kernel\n");
}
