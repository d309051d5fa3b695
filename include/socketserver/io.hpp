// SPDX-License-Identifier: MIT
// reader and writer: the rfile and wfile of the request handlers.
#pragma once

#include <netinet/in.h>   // IPPROTO_TCP
#include <netinet/tcp.h>  // TCP_CORK, TCP_NOPUSH
#include <poll.h>         // POLLIN, POLLOUT

#include <algorithm>     // std::max, std::min
#include <cerrno>        // errno, EINTR
#include <chrono>        // std::chrono::duration
#include <cstddef>       // std::size_t, std::ptrdiff_t
#include <cstring>       // std::memchr
#include <iterator>      // std::input_iterator_tag
#include <optional>      // std::nullopt
#include <stdexcept>     // std::logic_error
#include <string>        // std::string
#include <string_view>   // std::string_view
#include <system_error>  // std::make_error_code, std::errc
#include <utility>       // std::move
#include <vector>        // std::vector

#include "detail/drain_signal.hpp"
#include "detail/errno.hpp"
#include "detail/poll.hpp"
#include "detail/time.hpp"
#include "socket.hpp"

namespace socketserver {
namespace detail {

/// The option that holds back partial segments until uncorked: Linux's TCP_CORK, or the
/// BSDs' and macOS's TCP_NOPUSH (which sends them on close as well); -1 where neither exists.
constexpr int tcp_cork_option =
#if defined(TCP_CORK)
    TCP_CORK;
#elif defined(TCP_NOPUSH)
    TCP_NOPUSH;
#else
    -1;
#endif

}  // namespace detail

/// A buffered reader over a connected socket, or over bytes already in memory (a datagram):
/// Python's rfile. Results do not depend on how the peer's bytes were split across recv()
/// calls. Reads raise std::system_error on socket errors (and std::errc::timed_out when the
/// socket has a timeout); end of stream is not an error: reads return what there was.
class reader {
 public:
  /// The buffer size of a buffered reader (Python's io.DEFAULT_BUFFER_SIZE).
  static constexpr std::size_t default_buffer_size = 8192;

  /// A closed reader.
  reader() noexcept : closed_(true) {}
  /// Reads the bytes of `data`, then end of stream (Python's BytesIO).
  explicit reader(std::string data) : buffer_(std::move(data)), end_(buffer_.size()), eof_(true) {}
  /// Reads from `sock`. bufsize < 0 picks the default (8192); 0 reads unbuffered, never
  /// taking a byte from the socket that the caller did not ask for. max_line_length bounds
  /// readline() without a limit (0: no bound). `timeout` bounds each read(), readline() and
  /// readlines() call as a whole, however the peer dribbles its bytes (a client sending a
  /// byte a second cannot hold a readline() open past it): past it they throw
  /// std::system_error with std::errc::timed_out.
  /// With `drain` (the server's drain signal: StreamRequestHandler passes it), a read that
  /// waits for the next request (nothing buffered, nothing read yet in this call) returns
  /// end of stream once the server drains, so a keep-alive connection ends between requests;
  /// a read in the middle of a request is never cut. See drain_wait_for_request. With
  /// `watch` (the connection's: StreamRequestHandler passes it), such a read waits in recv()
  /// as any other until the drain ends it through the watch; without, it also polls the
  /// drain signal's descriptor.
  reader(socket_view sock, std::ptrdiff_t bufsize, std::size_t max_line_length = 0,
         timeout_type timeout = std::nullopt, const detail::drain_signal* drain = nullptr,
         detail::boundary_watch* watch = nullptr)
      : sock_(sock),
        bufsize_(bufsize < 0 ? default_buffer_size : static_cast<std::size_t>(bufsize)),
        max_line_length_(max_line_length),
        timeout_(timeout),
        drain_(drain),
        watch_(watch) {}

  /// During a drain, how long a read at a request boundary still waits for a request, once
  /// per connection, unless the last reply is held back to leave with the end of stream (TCP,
  /// see writer): a client that connected just before the drain, or sent its next request
  /// as the drain began, is still served; an idle one holds the drain no longer than this.
  static constexpr std::chrono::milliseconds drain_wait_for_request{1000};

  /// With a timeout: the next read(), readline() or readlines() ends by `deadline` at the
  /// latest (a request's timeout that began before the reader, as a pool's queue wait).
  void limit_next_deadline(detail::clock::time_point deadline) noexcept {
    first_deadline_ = deadline;
  }

  /// A read that waits for the next request (as a drain would end it) at or after `when`
  /// returns end of stream instead: the connection's age limit (max_connection_age).
  void end_at_boundary_after(detail::clock::time_point when) noexcept { expires_at_ = when; }

  /// Reads up to `size` bytes, fewer only at end of stream; size < 0 reads to end of stream.
  std::string read(std::ptrdiff_t size = -1) {
    check_open();
    start_operation();
    std::string out;
    if (size < 0) {
      while (fill()) {
      }
      out.assign(buffer_, begin_, end_ - begin_);
      begin_ = end_;
      return out;
    }
    const auto wanted = static_cast<std::size_t>(size);
    out = take(wanted);
    std::size_t have = out.size();  // bytes of `out` that hold data
    try {
      while (have < wanted && !eof_) {
        const std::size_t missing = wanted - have;
        if (missing >= bufsize_) {  // a large read bypasses the buffer
          out.resize(wanted);
          const std::size_t got = receive(&out[have], missing);
          have += got;
          out.resize(have);
          if (got == 0) eof_ = true;
        } else if (fill(missing)) {
          out += take(missing);
          have = out.size();
        }
      }
    } catch (...) {
      // A timeout or an error loses nothing: what was read goes back in front of the
      // buffer, for the next read.
      out.resize(have);
      unread(out);
      throw;
    }
    return out;
  }

  /// Reads one line including its '\n', at most `limit` bytes (limit < 0: up to the
  /// reader's max_line_length, or unbounded when that is 0). At end of stream returns what
  /// is left, "" once nothing is.
  std::string readline(std::ptrdiff_t limit = -1) {
    check_open();
    start_operation();
    return readline_within_deadline(limit);
  }

  /// Reads every remaining line.
  std::vector<std::string> readlines() {
    std::vector<std::string> lines;
    check_open();
    start_operation();
    for (std::string line = readline_within_deadline(-1); !line.empty();
         line = readline_within_deadline(-1))
      lines.push_back(std::move(line));
    return lines;
  }

  /// Iterates over lines until end of stream: `for (const auto& line : rfile)`.
  class iterator {
   public:
    ///@{
    /// Iterator traits: an input iterator over lines (std::string).
    using iterator_category = std::input_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using pointer = const std::string*;
    using reference = const std::string&;
    ///@}

    /// The end of the lines.
    iterator() = default;
    /// The first line of `r` (read now).
    /// @throws std::system_error as reader::readline().
    explicit iterator(reader* r) : reader_(r) { ++*this; }
    /// The current line, with its newline (the last line of the stream may have none).
    reference operator*() const { return line_; }
    /// The current line.
    pointer operator->() const { return &line_; }
    /// Reads the next line; at end of stream the iterator becomes end().
    /// @throws std::system_error as reader::readline().
    iterator& operator++() {
      line_ = reader_->readline();
      if (line_.empty()) reader_ = nullptr;
      return *this;
    }
    /// Reads the next line (as the prefix form; the old line is not kept).
    void operator++(int) { ++*this; }
    /// Equal when both are at the end, or both read the same reader.
    friend bool operator==(const iterator& a, const iterator& b) { return a.reader_ == b.reader_; }
    /// Not equal.
    friend bool operator!=(const iterator& a, const iterator& b) { return !(a == b); }

   private:
    reader* reader_ = nullptr;
    std::string line_;
  };
  /// The first line (Python iterates over rfile line by line the same way).
  /// @throws std::system_error as readline().
  iterator begin() { return iterator(this); }
  /// The end of the lines.
  iterator end() { return iterator(); }

  /// The connection's descriptor (Python's rfile.fileno()), e.g. for poll() or
  /// getsockopt(). Bytes already buffered are not visible through it.
  /// @throws std::logic_error for a reader over bytes in memory (a datagram handler's rfile:
  ///         Python's BytesIO raises io.UnsupportedOperation), or a closed reader.
  int fileno() const {
    check_open();
    if (!sock_.is_open())
      throw std::logic_error("fileno: a reader over bytes in memory has no file descriptor");
    return sock_.fileno();
  }

  /// Bytes buffered and not yet returned.
  std::size_t buffered() const noexcept { return end_ - begin_; }
  /// Python's close(): further reads throw std::logic_error (the socket stays open).
  void close() noexcept { closed_ = true; }
  /// Python's `closed` attribute.
  bool closed() const noexcept { return closed_; }

 private:
  void check_open() const {
    if (closed_) throw std::logic_error("I/O operation on closed reader");
  }

  std::string readline_within_deadline(std::ptrdiff_t limit) {
    std::size_t cap = limit >= 0 ? static_cast<std::size_t>(limit) : max_line_length_;
    if (cap == 0 && limit < 0) cap = static_cast<std::size_t>(-1);
    std::size_t scanned = 0;  // bytes after begin_ already known not to hold '\n'
    for (;;) {
      const std::size_t avail = end_ - begin_;
      const std::size_t window = avail < cap ? avail : cap;
      if (window > scanned) {
        const void* nl = std::memchr(&buffer_[begin_ + scanned], '\n', window - scanned);
        if (nl != nullptr)
          return take(static_cast<std::size_t>(static_cast<const char*>(nl) - &buffer_[begin_]) +
                      1);
        scanned = window;
      }
      if (avail >= cap) return take(cap);
      if (!fill(1)) return take(avail);
    }
  }

  std::string take(std::size_t n) {
    if (n > end_ - begin_) n = end_ - begin_;
    std::string out(buffer_, begin_, n);
    begin_ += n;
    return out;
  }

  // Puts `bytes` back in front of the unread ones.
  void unread(const std::string& bytes) {
    if (bytes.size() <= begin_) {
      begin_ -= bytes.size();
      buffer_.replace(begin_, bytes.size(), bytes);
    } else {
      buffer_.insert(begin_, bytes);
      end_ += bytes.size();
    }
  }

  // Receives more bytes into the buffer (at most `hint` when unbuffered); false at end.
  bool fill(std::size_t hint = static_cast<std::size_t>(-1)) {
    if (eof_) return false;
    if (at_boundary_ && begin_ == end_ && bufsize_ != 0 && detail::fiber_waiting != nullptr)
      return fill_at_boundary_on_fiber();
    std::size_t want = 0;
    if (bufsize_ == 0)
      want = hint == static_cast<std::size_t>(-1) ? 4096 : hint;
    else  // a line longer than the buffer: grow it geometrically, not by bufsize each time
      want = std::max(std::min(fill_size_, bufsize_), end_ - begin_);
    if (begin_ == end_) {
      begin_ = end_ = 0;
    } else if (begin_ > 0 && buffer_.size() - end_ < want) {
      buffer_.erase(0, begin_);  // keep the unread tail at the front
      end_ -= begin_;
      begin_ = 0;
    }
    if (buffer_.size() < end_ + want)
      buffer_.resize(end_ + want);
    else if (bufsize_ != 0)
      want = buffer_.size() - end_;  // a buffer grown for a long line: fill all of it
    const std::size_t got = receive(&buffer_[end_], want);
    if (got == 0) {
      eof_ = true;
      return false;
    }
    if (got == want && fill_size_ < bufsize_) fill_size_ *= 4;  // the peer sends more
    end_ += got;
    return true;
  }

  // On a fiber, the wait for the next request receives into the fiber's stack, with the
  // buffer given back first: an idle connection (thousands of them, on fibers) then holds no
  // buffer while it waits.
  bool fill_at_boundary_on_fiber() {
    char first[512];
    std::string().swap(buffer_);
    begin_ = end_ = 0;
    const std::size_t got = receive(first, sizeof first);
    if (got == 0) {
      eof_ = true;
      return false;
    }
    buffer_.assign(first, got);
    end_ = got;
    if (got == sizeof first && fill_size_ < bufsize_) fill_size_ *= 4;  // the peer sends more
    return true;
  }

  // A read call starts: its deadline, and whether it waits for a new request.
  void start_operation() {
    at_boundary_ = begin_ == end_;
    if (!timeout_) return;
    deadline_ = detail::deadline_after(timeout_);
    if (first_deadline_ < deadline_) deadline_ = first_deadline_;
    first_deadline_ = clock::time_point::max();
  }

  // recv() within the current operation's deadline: try without blocking, then wait for
  // readability with the time that is left. With a positive timeout the deadline is checked
  // before every recv(), not only when one would block: a peer that always has the next
  // byte there in time must not keep a readline() going past it either. (A zero timeout is
  // non-blocking mode: take what is there, fail only when the socket is empty.)
  std::size_t receive(char* buf, std::size_t n) {
    if (at_boundary_) {
      at_boundary_ = false;
      if (expires_at_ != clock::time_point::max() && clock::now() >= expires_at_) return 0;
      if (drain_ != nullptr) {
        // Until a drain starts, wait as any read does: the drain ends the wait through the
        // connection's watch (boundary_watch), so the common case costs no system call more.
        if (watch_ == nullptr || !watch_->begin_wait(sock_.fileno()))
          return receive_request(buf, n);
        struct end_of_wait {
          detail::boundary_watch* watch;
          ~end_of_wait() { watch->end_wait(); }
        } ending{watch_};
        return receive_within_deadline(buf, n);
      }
    }
    return receive_within_deadline(buf, n);
  }

  // One recv() that does not wait: true, with `got` set (0: end of stream), when it returned;
  // false when it would have waited. Any other failure throws.
  bool try_receive(char* buf, std::size_t n, std::size_t& got) {
    std::error_code ec;
    got = sock_.recv(buf, n, MSG_DONTWAIT, ec);
    if (!ec) return true;
    if (ec != std::errc::resource_unavailable_try_again && ec != std::errc::operation_would_block)
      detail::throw_error(ec, "recv");
    return false;
  }

  std::size_t receive_within_deadline(char* buf, std::size_t n) {
    if (!timeout_) return sock_.recv(buf, n);
    if (timeout_->count() > 0 && clock::now() >= deadline_)
      detail::throw_error(std::make_error_code(std::errc::timed_out), "recv");
    for (;;) {
      std::size_t got = 0;
      if (try_receive(buf, n, got)) return got;
      if (deadline_ <= clock::now() || !detail::wait_until(sock_.fileno(), POLLIN, deadline_))
        detail::throw_error(std::make_error_code(std::errc::timed_out), "recv");
    }
  }

  // receive() at a request boundary, watching the drain signal as well: once the server
  // drains, end of stream when the client has nothing there. Before that it waits once, for
  // drain_wait_for_request, for a request on its way, unless a reply written during the drain
  // is corked (writer), i.e. leaves with the FIN: then the client sees the end of stream
  // with that reply, before it can send another request.
  std::size_t receive_request(char* buf, std::size_t n) {
    const bool timed = timeout_ && timeout_->count() > 0;
    if (timed && clock::now() >= deadline_)
      detail::throw_error(std::make_error_code(std::errc::timed_out), "recv");
    const clock::time_point deadline = timed ? deadline_ : clock::time_point::max();
    clock::time_point wait_until = clock::time_point::max();  // set while waiting in a drain
    int drain_fd = drain_->fileno();  // -1 if a forked child closed its copy
    for (;;) {
      std::size_t got = 0;
      if (try_receive(buf, n, got)) return got;
      if (timeout_ && !timed)  // non-blocking mode
        detail::throw_error(std::make_error_code(std::errc::timed_out), "recv");
      if (wait_until == clock::time_point::max() && drain_->started()) {
        if (drain_waited_ || corked()) return 0;
        drain_waited_ = true;
        wait_until = clock::now() + drain_wait_for_request;
      }
      const clock::time_point until = std::min(deadline, wait_until);
      pollfd fds[2] = {{sock_.fileno(), POLLIN, 0},
                       {wait_until == clock::time_point::max() ? drain_fd : -1, POLLIN, 0}};
      detail::before_blocking(sock_.fileno(), POLLIN, until);
      const int ready = detail::poll_once(fds, 2, until);
      if (ready < 0 && errno != EINTR) detail::throw_errno("poll");
      if ((fds[1].revents & POLLNVAL) != 0) drain_fd = -1;
      if (ready == 0 && clock::now() >= until) {
        if (until == wait_until) return 0;  // nothing came during the drain
        detail::throw_error(std::make_error_code(std::errc::timed_out), "recv");
      }
    }
  }

  bool corked() const noexcept {
    int on = 0;
    socklen_t len = sizeof on;
    return detail::tcp_cork_option >= 0 &&
           ::getsockopt(sock_.fileno(), IPPROTO_TCP, detail::tcp_cork_option, &on, &len) == 0 &&
           on != 0;
  }

  using clock = detail::clock;
  socket_view sock_;
  std::size_t bufsize_ = default_buffer_size;
  // How much a fill asks for: it starts small and grows to bufsize_ once a fill comes back
  // full, so a connection that sends short requests and waits (thousands of them, idle on
  // fibers) holds a small buffer, and a bulk reader soon reads bufsize_ at a time.
  std::size_t fill_size_ = 512;
  std::size_t max_line_length_ = 0;
  timeout_type timeout_;
  clock::time_point deadline_{};
  clock::time_point first_deadline_ = clock::time_point::max();
  std::string buffer_;
  std::size_t begin_ = 0;  // unread bytes are buffer_[begin_, end_)
  std::size_t end_ = 0;
  bool eof_ = false;
  bool closed_ = false;
  const detail::drain_signal* drain_ = nullptr;
  detail::boundary_watch* watch_ = nullptr;  // the connection's, watched by the drain
  bool at_boundary_ = false;                 // this read call waits for a new request
  bool drain_waited_ = false;                // the one wait for a request during a drain is used
  clock::time_point expires_at_ = clock::time_point::max();  // end_at_boundary_after()
};

/// Python's wfile: writes to a connected socket, all or nothing (partial sends are resumed),
/// unbuffered when bufsize is 0, else buffered up to bufsize and sent by flush(); or, when
/// made without a socket, collects what is written (Python's BytesIO) for getvalue().
class writer {
 public:
  /// Collects writes in memory.
  writer() = default;
  /// Writes to `sock`. bufsize < 0 picks the default (8192); 0 sends every write at once.
  /// A positive `timeout` bounds each write() and flush() as a whole, as Python's sendall()
  /// does: a peer that reads a little at a time cannot hold a large write open past it
  /// (std::system_error with std::errc::timed_out). A zero timeout is non-blocking mode.
  /// With `drain` (the server's drain signal), a TCP connection is corked (TCP_CORK) once the
  /// server drains: a reply written then leaves with the connection's FIN (or after the
  /// kernel's 200 ms ceiling), so the client sees the end of stream together with it.
  writer(socket_view sock, std::ptrdiff_t bufsize, timeout_type timeout = std::nullopt,
         const detail::drain_signal* drain = nullptr)
      : sock_(sock),
        bufsize_(bufsize < 0 ? reader::default_buffer_size : static_cast<std::size_t>(bufsize)),
        timeout_(timeout),
        drain_(drain) {}

  /// Writes all of data; returns data.size().
  std::size_t write(std::string_view data) {
    if (closed_) throw std::logic_error("I/O operation on closed writer");
    if (!sock_.is_open()) {
      buffer_.append(data);
    } else if (bufsize_ == 0) {
      send_all(data);
    } else {
      // As Python's BufferedWriter: what fits is buffered; otherwise the buffer is sent, then
      // a write larger than the buffer goes out directly and a smaller one is buffered.
      if (buffer_.size() + data.size() > bufsize_) flush();
      if (data.size() > bufsize_)
        send_all(data);
      else
        buffer_.append(data);
    }
    return data.size();
  }

  /// Sends what is buffered (nothing to do when unbuffered or collecting).
  /// @throws std::logic_error on a closed writer; std::system_error if sending fails.
  void flush() {
    if (closed_) throw std::logic_error("flush of closed writer");
    send_buffered();
  }

  /// What a collecting writer has gathered.
  const std::string& getvalue() const noexcept { return buffer_; }

  /// The connection's descriptor (Python's wfile.fileno()), e.g. for sendfile() or
  /// setsockopt(); flush() first if the writer buffers.
  /// @throws std::logic_error for a writer that collects in memory (a datagram handler's
  ///         wfile: Python's BytesIO raises io.UnsupportedOperation), or a closed writer.
  int fileno() const {
    if (closed_) throw std::logic_error("I/O operation on closed writer");
    if (!sock_.is_open())
      throw std::logic_error("fileno: a writer collecting in memory has no file descriptor");
    return sock_.fileno();
  }

  /// Sends what is buffered (as Python's close() flushes) and closes. A collecting writer
  /// keeps what it gathered for getvalue(). Closing twice does nothing.
  /// @throws std::system_error if the final flush fails (the writer is closed anyway).
  void close() {
    if (closed_) return;
    closed_ = true;
    send_buffered();
  }
  /// Python's `closed` attribute.
  bool closed() const noexcept { return closed_; }

 private:
  void send_buffered() {
    if (!sock_.is_open() || buffer_.empty()) return;
    std::string pending;
    pending.swap(buffer_);  // on failure the bytes are dropped, as the peer is gone
    send_all(pending);
  }

  // sendall() within one deadline for the whole call: send without blocking while the
  // socket takes bytes, and wait for room with the time that is left.
  void send_all(std::string_view data) {
    if (drain_ != nullptr && !corked_ && drain_->started()) {
      corked_ = true;  // once; a Unix socket has no cork (then nothing to do)
      const int on = 1;
      if (detail::tcp_cork_option >= 0)
        (void)::setsockopt(sock_.fileno(), IPPROTO_TCP, detail::tcp_cork_option, &on, sizeof on);
    }
    if (!timeout_ || timeout_->count() <= 0) {
      sock_.sendall(data);
      return;
    }
    const auto deadline = detail::deadline_after(timeout_);
    while (!data.empty()) {
      std::error_code ec;
      const std::size_t sent = sock_.send(data, MSG_DONTWAIT, ec);
      if (!ec) {
        data.remove_prefix(sent);
        continue;
      }
      if (ec != std::errc::resource_unavailable_try_again && ec != std::errc::operation_would_block)
        detail::throw_error(ec, "sendall");
      if (deadline <= detail::clock::now() ||
          !detail::wait_until(sock_.fileno(), POLLOUT, deadline))
        detail::throw_error(std::make_error_code(std::errc::timed_out), "sendall");
    }
  }

  socket_view sock_;
  std::size_t bufsize_ = 0;
  timeout_type timeout_;
  std::string buffer_;
  bool closed_ = false;
  const detail::drain_signal* drain_ = nullptr;
  bool corked_ = false;
};

}  // namespace socketserver
