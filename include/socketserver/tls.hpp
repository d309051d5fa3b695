// SPDX-License-Identifier: MIT
// The TLS add-on (CMake target socketserver::tls, which links OpenSSL 3): tls_context (the
// server's certificates and settings, Python's ssl.SSLContext), tls_session (one
// connection's TLS, what a handler may ask about its peer), TLSMixIn (the handshake on the
// request's own thread, child or fiber, then the handler over TLS) and the TLS forms of the
// stream servers. No other header of the library includes OpenSSL.
#pragma once

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <poll.h>        // POLLIN, POLLOUT
#include <sys/socket.h>  // MSG_DONTWAIT, MSG_PEEK, MSG_WAITALL, SOL_SOCKET, SO_RCVTIMEO
#include <sys/time.h>    // timeval

#include <algorithm>     // std::min
#include <cerrno>        // EAGAIN, ETIMEDOUT, ECONNRESET, EPROTO
#include <chrono>        // std::chrono::seconds, std::chrono::duration_cast
#include <climits>       // INT_MAX
#include <cstddef>       // std::size_t
#include <map>           // std::map
#include <memory>        // std::shared_ptr, std::unique_ptr, std::atomic_load, std::atomic_store
#include <stdexcept>     // std::logic_error
#include <string>        // std::string
#include <string_view>   // std::string_view
#include <system_error>  // std::system_error, std::error_code, std::errc
#include <utility>       // std::move
#include <vector>        // std::vector

#include "address.hpp"
#include "detail/time.hpp"
#include "detail/transport.hpp"
#include "servers.hpp"
#include "socket.hpp"
#include "strict_bool.hpp"

namespace socketserver {

namespace detail {

/// The text of OpenSSL's first queued error on this thread (ERR_error_string_n), or
/// `otherwise` when there is none; empties the queue, so no error is left for the next call
/// (on a fiber server, the connections of a thread share its queue).
inline std::string take_openssl_errors(const char* otherwise = "no OpenSSL error queued") {
  const unsigned long first = ERR_get_error();
  while (ERR_get_error() != 0) {
  }
  if (first == 0) return otherwise;
  char text[256];
  ERR_error_string_n(first, text, sizeof text);
  return text;
}

/// Throws std::system_error(errc::invalid_argument) for a failed context setting:
/// "<what>: <OpenSSL's reason>".
[[noreturn]] inline void throw_openssl(const std::string& what) {
  throw std::system_error(std::make_error_code(std::errc::invalid_argument),
                          what + ": " + take_openssl_errors());
}

struct ssl_ctx_free {
  void operator()(SSL_CTX* ctx) const noexcept { SSL_CTX_free(ctx); }
};
struct bio_free {
  void operator()(BIO* bio) const noexcept { BIO_free(bio); }
};
struct x509_free {
  void operator()(X509* x) const noexcept { X509_free(x); }
};
struct evp_pkey_free {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
using ssl_ctx_ptr = std::unique_ptr<SSL_CTX, ssl_ctx_free>;

/// A memory BIO over `pem` (read-only; the bytes must outlive it).
inline std::unique_ptr<BIO, bio_free> pem_bio(std::string_view pem, const char* what) {
  if (pem.size() > static_cast<std::size_t>(INT_MAX))
    throw_openssl(std::string(what) + ": too large");
  std::unique_ptr<BIO, bio_free> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) throw_openssl(what);
  return bio;
}

}  // namespace detail

/// Python's ssl.CERT_NONE, CERT_OPTIONAL and CERT_REQUIRED, for client certificates: none
/// asked for; asked for and verified if sent; required and verified (mutual TLS).
enum class cert_verify { none, optional, required };

/// A server's TLS settings: its certificate and key, the TLS versions, a certificate per
/// server name (SNI), ALPN, and client certificates (Python's ssl.SSLContext with
/// PROTOCOL_TLS_SERVER). TLS 1.2 and 1.3 by default; renegotiation is refused; a peer that
/// closes without close_notify ends the stream as a close does (Python's
/// suppress_ragged_eofs). Copies share the settings: configure a context, then give it to a
/// server (TLSMixIn); to change certificates while serving, give the server a new one.
/// @code
/// socketserver::tls_context context;
/// context.load_cert_chain("server.pem", "server.key");
/// @endcode
class tls_context {
 public:
  /// A context with no certificate yet.
  /// @throws std::system_error if OpenSSL cannot make one.
  tls_context() : state_(std::make_shared<state>()) { state_->contexts.push_back(new_ssl_ctx()); }

  /// Python's load_cert_chain(): the server's certificate (chain) and private key, from PEM
  /// files (the key may be in the certificate's file: keyfile empty).
  /// @throws std::system_error naming the file and OpenSSL's reason.
  void load_cert_chain(const std::string& certfile, const std::string& keyfile = "") {
    load_files(default_ctx(), certfile, keyfile);
  }
  /// The same from PEM text in memory: the certificate, then any intermediate ones.
  /// @throws std::system_error with OpenSSL's reason.
  void load_cert_chain_pem(std::string_view cert_pem, std::string_view key_pem) {
    load_pem(default_ctx(), cert_pem, key_pem);
  }

  /// SNI: clients that ask for server name `name` (e.g. "example.org", or "*.example.org"
  /// for one label in front of it) get this certificate; other names and clients that name
  /// none get the default one (load_cert_chain()).
  /// @throws std::system_error naming the file and OpenSSL's reason.
  void add_server_name(const std::string& name, const std::string& certfile,
                       const std::string& keyfile = "") {
    load_files(server_name_ctx(name), certfile, keyfile);
  }
  /// The same from PEM text in memory.
  /// @throws std::system_error with OpenSSL's reason.
  void add_server_name_pem(const std::string& name, std::string_view cert_pem,
                           std::string_view key_pem) {
    load_pem(server_name_ctx(name), cert_pem, key_pem);
  }

  /// Python's load_verify_locations(cafile): the certificate authorities that client
  /// certificates are verified against (and named to clients as acceptable).
  /// @throws std::system_error naming the file and OpenSSL's reason.
  void load_verify_locations(const std::string& cafile) {
    if (SSL_CTX_load_verify_locations(default_ctx(), cafile.c_str(), nullptr) != 1)
      detail::throw_openssl("load_verify_locations " + cafile);
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(cafile.c_str());
    if (names == nullptr) detail::throw_openssl("load_verify_locations " + cafile);
    SSL_CTX_set_client_CA_list(default_ctx(), names);
    share_verify_store();
  }
  /// The same from PEM text in memory (one or more certificates).
  /// @throws std::system_error with OpenSSL's reason.
  void load_verify_locations_pem(std::string_view ca_pem) {
    auto bio = detail::pem_bio(ca_pem, "load_verify_locations_pem");
    X509_STORE* store = SSL_CTX_get_cert_store(default_ctx());
    int added = 0;
    while (X509* raw = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      std::unique_ptr<X509, detail::x509_free> cert(raw);
      if (X509_STORE_add_cert(store, cert.get()) != 1 ||
          SSL_CTX_add_client_CA(default_ctx(), cert.get()) != 1)
        detail::throw_openssl("load_verify_locations_pem");
      ++added;
    }
    ERR_clear_error();  // the end of the PEM text reads as an error
    if (added == 0) detail::throw_openssl("load_verify_locations_pem: no certificate");
    share_verify_store();
  }

  /// Python's verify_mode: whether clients must present a certificate (mutual TLS), may, or
  /// are not asked. The default is cert_verify::none.
  void set_verify_mode(cert_verify mode) {
    state_->verify = mode;
    for (auto& ctx : state_->contexts) apply_verify(ctx.get());
  }

  /// Python's set_alpn_protocols(): the application protocols the server speaks, most
  /// preferred first (e.g. {"h2", "http/1.1"}); the first of them the client also offers is
  /// chosen. A client that offers none of them gets no ALPN answer (the handshake goes on).
  /// @throws std::invalid_argument for an empty name or one over 255 bytes.
  void set_alpn_protocols(const std::vector<std::string>& protocols) {
    std::string wire;
    for (const std::string& p : protocols) {
      if (p.empty() || p.size() > 255)
        throw std::invalid_argument("set_alpn_protocols: a protocol name has 1 to 255 bytes");
      wire += static_cast<char>(p.size());
      wire += p;
    }
    state_->alpn = std::move(wire);
  }

  /// Python's minimum_version: TLS1_2_VERSION (the default) or TLS1_3_VERSION.
  /// @throws std::system_error if OpenSSL refuses the version.
  void set_minimum_version(int version) {
    state_->min_version = version;
    for (auto& ctx : state_->contexts)
      if (SSL_CTX_set_min_proto_version(ctx.get(), version) != 1)
        detail::throw_openssl("set_minimum_version");
  }
  /// Python's maximum_version: TLS1_3_VERSION (the default) or TLS1_2_VERSION.
  /// @throws std::system_error if OpenSSL refuses the version.
  void set_maximum_version(int version) {
    state_->max_version = version;
    for (auto& ctx : state_->contexts)
      if (SSL_CTX_set_max_proto_version(ctx.get(), version) != 1)
        detail::throw_openssl("set_maximum_version");
  }

  /// Opt-in kernel TLS (SSL_OP_ENABLE_KTLS): where the kernel has the `tls` ULP (Linux's tls
  /// module) and the cipher allows it, the kernel encrypts and decrypts the records. OpenSSL
  /// offloads only through its own socket BIO, so such connections do their waits inside
  /// OpenSSL: the request's thread blocks (fine for threading and forking servers; a pool
  /// worker keeps its lane and a fiber its loop thread while it waits). Off by default.
  void enable_ktls(bool on = true) {
    state_->ktls = on;
    for (auto& ctx : state_->contexts) {
      if (on)
        SSL_CTX_set_options(ctx.get(), SSL_OP_ENABLE_KTLS);
      else
        SSL_CTX_clear_options(ctx.get(), SSL_OP_ENABLE_KTLS);
    }
  }
  /// True once enable_ktls() turned kernel TLS on.
  bool ktls_enabled() const noexcept { return state_->ktls; }

  /// The OpenSSL context of the default certificate, for settings this class does not
  /// cover (e.g. SSL_CTX_set_ciphersuites()). Server-name contexts are separate.
  SSL_CTX* native_handle() const noexcept { return state_->contexts.front().get(); }

 private:
  friend class tls_session;

  struct state {
    std::vector<detail::ssl_ctx_ptr> contexts;  // [0]: the default certificate
    std::map<std::string, SSL_CTX*> names;      // SNI: lower-case name -> one of contexts
    std::string alpn;                           // ALPN's wire format, empty for none
    cert_verify verify = cert_verify::none;
    int min_version = TLS1_2_VERSION;
    int max_version = TLS1_3_VERSION;
    bool ktls = false;
  };

  SSL_CTX* default_ctx() const noexcept { return state_->contexts.front().get(); }

  detail::ssl_ctx_ptr new_ssl_ctx() {
    detail::ssl_ctx_ptr ctx(SSL_CTX_new(TLS_server_method()));
    if (!ctx) detail::throw_openssl("SSL_CTX_new");
    SSL_CTX* c = ctx.get();
    const state& s = *state_;
    if (SSL_CTX_set_min_proto_version(c, s.min_version) != 1 ||
        SSL_CTX_set_max_proto_version(c, s.max_version) != 1)
      detail::throw_openssl("SSL_CTX_set_min_proto_version");
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | (s.ktls ? SSL_OP_ENABLE_KTLS : 0));
    // Partial writes: send() may return having sent part of the data, as on a plain socket;
    // a retry after EAGAIN may pass the rest from another address (the writer's buffer).
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    // Sessions resumed with a client certificate need an id context (else OpenSSL refuses).
    static const unsigned char id[] = "socketserver";
    SSL_CTX_set_session_id_context(c, id, sizeof id - 1);
    SSL_CTX_set_read_ahead(c, 1);  // a record in one recv(), not its header and then its body
    // (SSL_CTX_set_tlsext_servername_callback() without the macro's C-style cast.)
    SSL_CTX_callback_ctrl(c, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
                          reinterpret_cast<void (*)(void)>(&tls_context::on_server_name));
    SSL_CTX_set_tlsext_servername_arg(c, state_.get());
    SSL_CTX_set_alpn_select_cb(c, &tls_context::on_alpn, state_.get());
    apply_verify(c);
    if (!state_->contexts.empty())  // a server-name context verifies clients the same way
      SSL_CTX_set1_cert_store(c, SSL_CTX_get_cert_store(default_ctx()));
    return ctx;
  }

  void apply_verify(SSL_CTX* c) const {
    int mode = SSL_VERIFY_NONE;
    if (state_->verify == cert_verify::optional) mode = SSL_VERIFY_PEER;
    if (state_->verify == cert_verify::required)
      mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(c, mode, nullptr);
  }

  void share_verify_store() {
    X509_STORE* store = SSL_CTX_get_cert_store(default_ctx());
    STACK_OF(X509_NAME)* names = SSL_CTX_get_client_CA_list(default_ctx());
    for (std::size_t i = 1; i < state_->contexts.size(); ++i) {
      SSL_CTX* c = state_->contexts[i].get();
      SSL_CTX_set1_cert_store(c, store);
      if (names != nullptr) SSL_CTX_set_client_CA_list(c, SSL_dup_CA_list(names));
    }
  }

  static std::string lower(std::string s) {
    for (char& ch : s)
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
    return s;
  }

  SSL_CTX* server_name_ctx(const std::string& name) {
    const std::string key = lower(name);
    auto found = state_->names.find(key);
    if (found != state_->names.end()) return found->second;
    state_->contexts.push_back(new_ssl_ctx());
    SSL_CTX* c = state_->contexts.back().get();
    STACK_OF(X509_NAME)* names = SSL_CTX_get_client_CA_list(default_ctx());
    if (names != nullptr) SSL_CTX_set_client_CA_list(c, SSL_dup_CA_list(names));
    state_->names.emplace(key, c);
    return c;
  }

  static void load_files(SSL_CTX* c, const std::string& certfile, const std::string& keyfile) {
    const std::string& key = keyfile.empty() ? certfile : keyfile;
    if (SSL_CTX_use_certificate_chain_file(c, certfile.c_str()) != 1)
      detail::throw_openssl("load_cert_chain " + certfile);
    if (SSL_CTX_use_PrivateKey_file(c, key.c_str(), SSL_FILETYPE_PEM) != 1)
      detail::throw_openssl("load_cert_chain " + key);
    if (SSL_CTX_check_private_key(c) != 1)
      detail::throw_openssl("load_cert_chain " + certfile + " with " + key);
  }

  static void load_pem(SSL_CTX* c, std::string_view cert_pem, std::string_view key_pem) {
    auto certs = detail::pem_bio(cert_pem, "load_cert_chain_pem");
    std::unique_ptr<X509, detail::x509_free> leaf(
        PEM_read_bio_X509(certs.get(), nullptr, nullptr, nullptr));
    if (!leaf || SSL_CTX_use_certificate(c, leaf.get()) != 1)
      detail::throw_openssl("load_cert_chain_pem: certificate");
    SSL_CTX_clear_chain_certs(c);
    while (X509* raw = PEM_read_bio_X509(certs.get(), nullptr, nullptr, nullptr)) {
      if (SSL_CTX_add0_chain_cert(c, raw) != 1) {  // takes it on success only
        X509_free(raw);
        detail::throw_openssl("load_cert_chain_pem: chain");
      }
    }
    ERR_clear_error();  // the end of the PEM text reads as an error
    auto key_bio = detail::pem_bio(key_pem, "load_cert_chain_pem");
    std::unique_ptr<EVP_PKEY, detail::evp_pkey_free> key(
        PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
    if (!key || SSL_CTX_use_PrivateKey(c, key.get()) != 1)
      detail::throw_openssl("load_cert_chain_pem: private key");
    if (SSL_CTX_check_private_key(c) != 1)
      detail::throw_openssl("load_cert_chain_pem: the key does not match the certificate");
  }

  // SNI: switch the connection to the context of the name the client asked for.
  static int on_server_name(SSL* ssl, int* /*alert*/, void* arg) {
    const auto* s = static_cast<const state*>(arg);
    const char* asked = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (asked == nullptr || s->names.empty()) return SSL_TLSEXT_ERR_OK;
    const std::string name = lower(asked);
    auto found = s->names.find(name);
    if (found == s->names.end()) {
      const std::size_t dot = name.find('.');
      if (dot != std::string::npos) found = s->names.find("*" + name.substr(dot));
    }
    if (found != s->names.end() && SSL_set_SSL_CTX(ssl, found->second) == nullptr)
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
  }

  static int on_alpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* outlen,
                     const unsigned char* in, unsigned int inlen, void* arg) {
    const auto* s = static_cast<const state*>(arg);
    if (s->alpn.empty()) return SSL_TLSEXT_ERR_NOACK;
    unsigned char* chosen = nullptr;
    const auto* ours = reinterpret_cast<const unsigned char*>(s->alpn.data());
    if (SSL_select_next_proto(&chosen, outlen, ours, static_cast<unsigned int>(s->alpn.size()), in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
      return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
  }

  std::shared_ptr<state> state_;
};

/// One connection's TLS: the transport that TLSMixIn sets on the request for the length of
/// the handler (so request.recv()/send()/sendall(), rfile and wfile go through it), and what
/// a handler may ask about the connection. Get it with tls_session_of(request).
///
/// Its I/O goes through the plain socket's recv()/send() (detail::blocking_io) with the
/// flags of the call it serves: a fiber suspends, a pool worker hands its lane on, the
/// socket's timeout (settimeout()) applies, and a MSG_DONTWAIT call fails with EAGAIN when
/// TLS would wait. After EAGAIN from send(), call send() again with the same bytes first
/// (as OpenSSL requires; the library's writer does).
class tls_session final : public detail::stream_transport {
 public:
  /// A session for the connected socket `fd` with the settings of `context`.
  /// @throws std::system_error if OpenSSL cannot make one.
  tls_session(std::shared_ptr<const tls_context> context, int fd)
      : context_(std::move(context)), fd_(fd) {
    ssl_ = SSL_new(context_->native_handle());
    if (ssl_ == nullptr) detail::throw_openssl("SSL_new");
    if (context_->ktls_enabled()) {
      if (SSL_set_fd(ssl_, fd) != 1) {
        SSL_free(ssl_);
        detail::throw_openssl("SSL_set_fd");
      }
      return;
    }
    BIO* bio = BIO_new(bio_method());
    if (bio == nullptr) {
      SSL_free(ssl_);
      detail::throw_openssl("BIO_new");
    }
    BIO_set_data(bio, this);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl_, bio, bio);  // the SSL owns it
  }
  tls_session(const tls_session&) = delete;
  tls_session& operator=(const tls_session&) = delete;
  /// Frees the connection's TLS state (the socket stays open).
  virtual ~tls_session() { SSL_free(ssl_); }

  /// The server side of the handshake, within `limit` (nullopt: the socket's own timeouts
  /// only). `client` names the peer in errors.
  /// @throws std::system_error "TLS handshake with <client>: <reason>": std::errc::timed_out
  ///         at the limit, a connection error (ECONNRESET) when the client went away, EPROTO
  ///         with OpenSSL's reason (and the certificate verification result) otherwise.
  void handshake(timeout_type limit, const address& client) {
    struct deadline_scope {
      tls_session& s;
      timeval rcv{}, snd{};
      bool active = false;
      ~deadline_scope() {
        s.deadline_ = detail::clock::time_point::max();
        if (!active) return;
        try {  // the socket's own timeouts again
          socket_view(s.fd_).setsockopt(SOL_SOCKET, SO_RCVTIMEO, rcv);
          socket_view(s.fd_).setsockopt(SOL_SOCKET, SO_SNDTIMEO, snd);
        } catch (...) {
        }
      }
    } scope{*this};
    if (limit) {
      socket_view sock(fd_);
      scope.rcv = sock.getsockopt<timeval>(SOL_SOCKET, SO_RCVTIMEO);
      scope.snd = sock.getsockopt<timeval>(SOL_SOCKET, SO_SNDTIMEO);
      scope.active = true;
      deadline_ = detail::deadline_after(limit);
    }
    prepare(0);
    gather_ = true;  // the handshake's messages leave in as few segments as possible
    const int result = SSL_accept(ssl_);
    gather_ = false;  // (what is left is sent with the first write, see bio_write)
    if (result == 1) {
      ERR_clear_error();
      return;
    }
    broken_ = true;
    const int error = SSL_get_error(ssl_, result);
    std::string reason = detail::take_openssl_errors("");
    std::error_code code = io_error_;
    if (code) {
      reason = reason.empty() ? code.message() : reason;
    } else if (saw_eof_ || error == SSL_ERROR_SYSCALL || error == SSL_ERROR_ZERO_RETURN) {
      code = std::make_error_code(std::errc::connection_reset);
      reason = "the client closed the connection" + (reason.empty() ? "" : " (" + reason + ")");
    } else {
      code = std::make_error_code(std::errc::protocol_error);
      if (reason.empty())
        reason = "SSL_accept failed (SSL_get_error " + std::to_string(error) + ")";
    }
    const long verified = SSL_get_verify_result(ssl_);
    if (verified != X509_V_OK)
      reason +=
          std::string(" (client certificate: ") + X509_verify_cert_error_string(verified) + ")";
    throw std::system_error(code, "TLS handshake with " + client.to_string() + ": " + reason);
  }

  /// Sends close_notify, without waiting for the client's (nor for room in the socket's
  /// buffer: a client that does not read is not waited for). Does nothing after an error.
  void close_notify() noexcept {
    if (broken_ || (SSL_get_shutdown(ssl_) & SSL_SENT_SHUTDOWN) != 0) return;
    prepare(MSG_DONTWAIT);
    (void)SSL_shutdown(ssl_);
    ERR_clear_error();
  }

  /// Receives up to n bytes of plaintext (stream_transport): 0 at the end of the stream (the
  /// client's close_notify, or its close without one).
  std::size_t recv(void* buf, std::size_t n, int flags, std::error_code& ec) noexcept override {
    std::size_t total = 0;
    for (;;) {
      prepare(flags);
      std::size_t got = 0;
      char* at = static_cast<char*>(buf) + total;
      const int ok = (flags & MSG_PEEK) != 0 ? SSL_peek_ex(ssl_, at, n - total, &got)
                                             : SSL_read_ex(ssl_, at, n - total, &got);
      if (ok != 1) {
        const int error = SSL_get_error(ssl_, ok);
        if (error == SSL_ERROR_ZERO_RETURN) {
          ERR_clear_error();
          ec.clear();
          return total;
        }
        fail(error, ec);
        if (total > 0) ec.clear();  // MSG_WAITALL: what came before the failure
        return total;
      }
      total += got;
      if ((flags & MSG_WAITALL) == 0 || total == n || n == 0) break;
    }
    ec.clear();
    return total;
  }

  /// Sends some of data as TLS records (stream_transport); returns how many bytes of data
  /// went (all of them unless the socket's buffer filled).
  std::size_t send(std::string_view data, int flags, std::error_code& ec) noexcept override {
    ec.clear();
    if (data.empty()) return 0;
    prepare(flags);
    std::size_t sent = 0;
    const int ok = SSL_write_ex(ssl_, data.data(), data.size(), &sent);
    if (ok == 1) return sent;
    fail(SSL_get_error(ssl_, ok), ec);
    return 0;
  }

  /// Plaintext bytes received and not yet returned by recv() (stream_transport).
  std::size_t pending() const noexcept override {
    const int n = SSL_pending(ssl_);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }

  /// The client's certificate (borrowed, valid while the session lives), or nullptr when it
  /// sent none. With cert_verify::optional or required it has been verified.
  X509* peer_certificate() const noexcept { return SSL_get0_peer_certificate(ssl_); }
  /// The client certificate's subject in OpenSSL's one-line form (e.g. "CN = alice"), or ""
  /// when the client sent none.
  std::string peer_subject() const {
    X509* cert = peer_certificate();
    if (cert == nullptr) return "";
    std::unique_ptr<BIO, detail::bio_free> out(BIO_new(BIO_s_mem()));
    if (!out || X509_NAME_print_ex(out.get(), X509_get_subject_name(cert), 0, XN_FLAG_ONELINE) < 0)
      return "";
    char* text = nullptr;
    const long size = BIO_get_mem_data(out.get(), &text);
    return std::string(text, static_cast<std::size_t>(size));
  }
  /// The server name the client asked for (SNI), or "".
  std::string server_name() const {
    const char* name = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
    return name != nullptr ? name : "";
  }
  /// The application protocol chosen by ALPN, or "".
  std::string alpn_protocol() const {
    const unsigned char* p = nullptr;
    unsigned int size = 0;
    SSL_get0_alpn_selected(ssl_, &p, &size);
    return p != nullptr ? std::string(reinterpret_cast<const char*>(p), size) : "";
  }
  /// The protocol version, e.g. "TLSv1.3" (Python's SSLSocket.version()).
  std::string version() const { return SSL_get_version(ssl_); }
  /// The cipher suite's name, e.g. "TLS_AES_256_GCM_SHA384".
  std::string cipher() const { return SSL_CIPHER_get_name(SSL_get_current_cipher(ssl_)); }
  /// True when the kernel encrypts what is sent (kTLS: tls_context::enable_ktls()).
  bool ktls_send() const noexcept { return BIO_get_ktls_send(SSL_get_wbio(ssl_)) != 0; }
  /// True when the kernel decrypts what is received (kTLS).
  bool ktls_recv() const noexcept { return BIO_get_ktls_recv(SSL_get_rbio(ssl_)) != 0; }
  /// The OpenSSL connection, for what this class does not cover.
  SSL* native_handle() const noexcept { return ssl_; }

 private:
  // Before each OpenSSL call: the flags its socket calls use, and nothing left over from
  // another call (or, on a fiber server, another connection of this thread).
  void prepare(int flags) noexcept {
    flags_ = flags & MSG_DONTWAIT;
    io_error_.clear();
    ERR_clear_error();
  }

  void fail(int error, std::error_code& ec) noexcept {
    if ((error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) && !io_error_) {
      ERR_clear_error();
      ec = std::make_error_code(std::errc::resource_unavailable_try_again);
      return;
    }
    if (io_error_) {
      ec = io_error_;
    } else if (error == SSL_ERROR_SYSCALL) {
      ec = std::make_error_code(std::errc::connection_reset);
    } else {
      ec = std::make_error_code(std::errc::protocol_error);
    }
    if (ec != std::errc::resource_unavailable_try_again && ec != std::errc::operation_would_block &&
        ec != std::errc::timed_out)
      broken_ = true;  // no close_notify after a fatal error
    ERR_clear_error();
  }

  // During the handshake: the time left, as the socket's timeout for the next call (so
  // the handshake as a whole ends at its deadline, however the client dribbles its bytes).
  bool within_deadline(int option) noexcept {
    if (deadline_ == detail::clock::time_point::max()) return true;
    const auto left = deadline_ - detail::clock::now();
    if (left <= detail::clock::duration::zero()) {
      io_error_ = std::make_error_code(std::errc::timed_out);
      return false;
    }
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(left).count();
    if (us < 1) us = 1;
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(us / 1000000);
    tv.tv_usec = static_cast<suseconds_t>(us % 1000000);
    try {
      socket_view(fd_).setsockopt(SOL_SOCKET, option, tv);
    } catch (const std::system_error& e) {
      io_error_ = e.code();
      return false;
    }
    return true;
  }

  static int bio_read(BIO* bio, char* buf, int size) {
    auto* self = static_cast<tls_session*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    if (!self->out_.empty()) {  // what was gathered goes before a read that waits
      if (!self->gather_) {
        std::error_code ec;
        const std::size_t got =
            socket_view(self->fd_).recv(buf, static_cast<std::size_t>(size), MSG_DONTWAIT, ec);
        if (!ec) {
          if (got == 0) self->saw_eof_ = true;
          return static_cast<int>(got);
        }
        if (!would_block(ec, MSG_DONTWAIT)) {
          self->io_error_ = ec;
          return -1;
        }
      }
      if (!self->flush_gathered() && self->io_error_) return -1;
    }
    if (!self->within_deadline(SO_RCVTIMEO)) return -1;
    std::error_code ec;
    const std::size_t got =
        socket_view(self->fd_).recv(buf, static_cast<std::size_t>(size), self->flags_, ec);
    if (!ec) {
      if (got == 0) self->saw_eof_ = true;
      return static_cast<int>(got);
    }
    if (would_block(ec, self->flags_)) {
      BIO_set_retry_read(bio);
      return -1;
    }
    self->io_error_ = ec;
    return -1;
  }

  // Sends what the handshake gathered; false (io_error_ set) if that fails. With
  // MSG_DONTWAIT in flags_, false also when the socket is full (out_ keeps the rest).
  bool flush_gathered() noexcept {
    std::string_view rest(out_);
    while (!rest.empty()) {
      if (!within_deadline(SO_SNDTIMEO)) break;
      std::error_code ec;
      const std::size_t sent = socket_view(fd_).send(rest, flags_, ec);
      if (ec) {
        if (!would_block(ec, flags_)) io_error_ = ec;
        break;
      }
      rest.remove_prefix(sent);
    }
    if (rest.empty() || io_error_) {
      const bool done = rest.empty();
      std::string().swap(out_);
      return done;
    }
    out_.erase(0, out_.size() - rest.size());
    return false;
  }

  // The handshake's last messages (TLS 1.3's session tickets) wait in out_ for the first
  // write, to leave with it in one segment, or for the first read that has to wait. Sent
  // on their own right after the handshake, the reply that follows would be held by Nagle's
  // algorithm until the client's delayed ACK: 40 ms per connection on Linux.
  static int bio_write(BIO* bio, const char* data, int size) {
    auto* self = static_cast<tls_session*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    if (self->gather_) {
      self->out_.append(data, static_cast<std::size_t>(size));
      return size;
    }
    if (!self->out_.empty()) {
      if ((self->flags_ & MSG_DONTWAIT) == 0) {
        self->out_.append(data, static_cast<std::size_t>(size));
        return self->flush_gathered() ? size : -1;
      }
      if (!self->flush_gathered()) {
        if (!self->io_error_) BIO_set_retry_write(bio);
        return -1;
      }
    }
    if (!self->within_deadline(SO_SNDTIMEO)) return -1;
    std::error_code ec;
    const std::size_t sent = socket_view(self->fd_).send(
        std::string_view(data, static_cast<std::size_t>(size)), self->flags_, ec);
    if (!ec) return static_cast<int>(sent);
    if (would_block(ec, self->flags_)) {
      BIO_set_retry_write(bio);
      return -1;
    }
    self->io_error_ = ec;
    return -1;
  }

  static bool would_block(const std::error_code& ec, int flags) noexcept {
    return (flags & MSG_DONTWAIT) != 0 && (ec == std::errc::resource_unavailable_try_again ||
                                           ec == std::errc::operation_would_block);
  }

  static long bio_ctrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {
    if (cmd == BIO_CTRL_FLUSH) return 1;  // gathered writes go before the next read
    // The client's close without close_notify: with SSL_OP_IGNORE_UNEXPECTED_EOF, OpenSSL
    // ends the stream as close_notify would when the BIO says it is at its end.
    if (cmd == BIO_CTRL_EOF) return static_cast<tls_session*>(BIO_get_data(bio))->saw_eof_;
    return 0;
  }

  // The BIO that OpenSSL reads and writes the socket through: made once, for the process.
  static BIO_METHOD* bio_method() {
    static BIO_METHOD* const method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "socketserver");
      if (m == nullptr || BIO_meth_set_read(m, &tls_session::bio_read) != 1 ||
          BIO_meth_set_write(m, &tls_session::bio_write) != 1 ||
          BIO_meth_set_ctrl(m, &tls_session::bio_ctrl) != 1)
        detail::throw_openssl("BIO_meth_new");
      return m;
    }();
    return method;
  }

  std::shared_ptr<const tls_context> context_;  // its SSL_CTX outlives ssl_
  int fd_;
  SSL* ssl_ = nullptr;
  int flags_ = 0;             // MSG_DONTWAIT, or 0, for the BIO's socket calls
  std::error_code io_error_;  // the socket's error in the current call, if it failed
  detail::clock::time_point deadline_ = detail::clock::time_point::max();  // the handshake's
  bool saw_eof_ = false;  // the client closed its side
  bool gather_ = false;   // in the handshake: writes gather in out_ until a read
  std::string out_;
  bool broken_ = false;  // a fatal error: no close_notify
};

/// The TLS session of a request being served by a TLS server (TLSMixIn), or nullptr (a
/// plain connection, or outside the handler):
/// @code
/// if (auto* tls = socketserver::tls_session_of(request)) client = tls->peer_subject();
/// @endcode
inline tls_session* tls_session_of(const socket_view& request) noexcept {
  return dynamic_cast<tls_session*>(request.transport());
}

/// A stream server mix-in that serves its requests over TLS: finish_request() does the
/// handshake on the request's own thread, child or fiber (never on the serve loop: a client
/// that never sends its hello holds only its own request, for handshake_timeout at most),
/// then runs the handler with the request's recv()/send()/sendall(), rfile and wfile going
/// through TLS, then sends close_notify. A handshake that fails or times out ends the
/// request through handle_error() and stats() as any failed or timed-out request does.
/// Compose it right above the base server, under the other mix-ins:
/// `PreforkMixIn<ThreadingMixIn<TLSMixIn<basic_tcp_server<Handler, Derived>>>>` (the aliases
/// below are these forms).
template <class Base>
class TLSMixIn : public Base {
 public:
  using typename Base::request_type;
  static_assert(detail::is_stream<request_type>, "TLSMixIn serves stream servers only");

  /// How long a handshake may take as a whole (nullopt: no limit but the socket's timeouts).
  timeout_type handshake_timeout = std::chrono::seconds(10);

  using Base::Base;  // a server made without a context: set_tls_context() before serving
  /// The server of Base, serving with `context`.
  /// @throws std::system_error as Base's constructor.
  TLSMixIn(address addr, tls_context context, strict_bool bind_and_activate = true)
      : Base(std::move(addr), bind_and_activate),
        context_(std::make_shared<const tls_context>(std::move(context))) {}

  /// Replaces the TLS settings while serving (e.g. a renewed certificate): connections
  /// accepted from now on use `context`; open ones keep the one they began with.
  void set_tls_context(tls_context context) {
    std::atomic_store(&context_, std::make_shared<const tls_context>(std::move(context)));
  }
  /// The settings new connections get.
  std::shared_ptr<const tls_context> get_tls_context() const { return std::atomic_load(&context_); }

  /// Handshake, then Base::finish_request() over TLS, then close_notify.
  /// @throws std::logic_error if the server has no context; std::system_error as
  ///         tls_session::handshake(), or from the handler.
  void finish_request(request_type& request, const address& client_address) {
    std::shared_ptr<const tls_context> context = get_tls_context();
    if (!context) throw std::logic_error("TLS server without a tls_context (set_tls_context)");
    tls_session session(std::move(context), request.fileno());
    session.handshake(handshake_timeout, client_address);
    struct transport_scope {
      request_type& request;
      ~transport_scope() { request.set_transport(nullptr); }
    } scope{request};
    request.set_transport(&session);
    Base::finish_request(request, client_address);
    session.close_notify();
  }

 private:
  std::shared_ptr<const tls_context> context_;
};

// Two-parameter forms of the TLS servers, to compose with final_server and server_type_t.
template <class H, class D>
using tls_tcp_server_t = PreforkMixIn<TLSMixIn<basic_tcp_server<H, D>>>;
template <class H, class D>
using threading_tls_tcp_server_t = PreforkMixIn<ThreadingMixIn<TLSMixIn<basic_tcp_server<H, D>>>>;
template <class H, class D>
using forking_tls_tcp_server_t = PreforkMixIn<ForkingMixIn<TLSMixIn<basic_tcp_server<H, D>>>>;
template <class H, class D>
using thread_pool_tls_tcp_server_t =
    PreforkMixIn<ThreadPoolMixIn<TLSMixIn<basic_tcp_server<H, D>>>>;
template <class H, class D>
using fiber_tls_tcp_server_t = PreforkMixIn<FiberMixIn<TLSMixIn<basic_tcp_server<H, D>>>>;
template <class H, class D>
using tls_unix_stream_server_t = PreforkMixIn<TLSMixIn<basic_unix_stream_server<H, D>>>;
template <class H, class D>
using threading_tls_unix_stream_server_t =
    PreforkMixIn<ThreadingMixIn<TLSMixIn<basic_unix_stream_server<H, D>>>>;
template <class H, class D>
using forking_tls_unix_stream_server_t =
    PreforkMixIn<ForkingMixIn<TLSMixIn<basic_unix_stream_server<H, D>>>>;
template <class H, class D>
using thread_pool_tls_unix_stream_server_t =
    PreforkMixIn<ThreadPoolMixIn<TLSMixIn<basic_unix_stream_server<H, D>>>>;
template <class H, class D>
using fiber_tls_unix_stream_server_t =
    PreforkMixIn<FiberMixIn<TLSMixIn<basic_unix_stream_server<H, D>>>>;

// The TLS forms of the stream servers: constructed with (address, tls_context).
/// TCPServer over TLS.
template <class Handler, class Derived = void>
using TLSTCPServer = server_type_t<tls_tcp_server_t, Handler, Derived>;
/// ThreadingTCPServer over TLS.
template <class Handler, class Derived = void>
using ThreadingTLSTCPServer = server_type_t<threading_tls_tcp_server_t, Handler, Derived>;
/// ForkingTCPServer over TLS. The handshake runs in the forked child. OpenSSL's locks are
/// not reset in a child: no other thread of the server's process may be inside OpenSSL when
/// it forks (serve from a process whose other threads do no TLS work), or a child can wait
/// for good on a lock that thread held. The threading, pool, fiber and prefork TLS servers
/// do not fork per request.
template <class Handler, class Derived = void>
using ForkingTLSTCPServer = server_type_t<forking_tls_tcp_server_t, Handler, Derived>;
/// ThreadPoolTCPServer over TLS.
template <class Handler, class Derived = void>
using ThreadPoolTLSTCPServer = server_type_t<thread_pool_tls_tcp_server_t, Handler, Derived>;
/// FiberTCPServer over TLS.
template <class Handler, class Derived = void>
using FiberTLSTCPServer = server_type_t<fiber_tls_tcp_server_t, Handler, Derived>;
/// UnixStreamServer over TLS.
template <class Handler, class Derived = void>
using TLSUnixStreamServer = server_type_t<tls_unix_stream_server_t, Handler, Derived>;
/// ThreadingUnixStreamServer over TLS.
template <class Handler, class Derived = void>
using ThreadingTLSUnixStreamServer =
    server_type_t<threading_tls_unix_stream_server_t, Handler, Derived>;
/// ForkingUnixStreamServer over TLS (see ForkingTLSTCPServer on threads and fork()).
template <class Handler, class Derived = void>
using ForkingTLSUnixStreamServer =
    server_type_t<forking_tls_unix_stream_server_t, Handler, Derived>;
/// ThreadPoolUnixStreamServer over TLS.
template <class Handler, class Derived = void>
using ThreadPoolTLSUnixStreamServer =
    server_type_t<thread_pool_tls_unix_stream_server_t, Handler, Derived>;
/// FiberUnixStreamServer over TLS.
template <class Handler, class Derived = void>
using FiberTLSUnixStreamServer = server_type_t<fiber_tls_unix_stream_server_t, Handler, Derived>;

}  // namespace socketserver
