#include "api/http_client.hpp"

#include <http_parser.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

namespace enlighten::api {

namespace {

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                              [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Bytes that would end a request line or header early (request splitting).
bool has_line_break(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

int poll_timeout(std::chrono::milliseconds t) {
    return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(t.count(), 0, 1'000'000'000));
}

HttpClientError make_error(HttpClientError::Kind kind, int err, std::string message) {
    return HttpClientError{kind, err, std::move(message)};
}

// Waits for `events` on fd; 1 ready, 0 timeout, -1 error (errno).
int wait_fd(int fd, short events, std::chrono::milliseconds timeout) {
    pollfd p{fd, events, 0};
    for (;;) {
        const int r = ::poll(&p, 1, poll_timeout(timeout));
        if (r < 0 && errno == EINTR) continue;
        return r < 0 ? -1 : (r == 0 ? 0 : 1);
    }
}

}  // namespace

// ---- HttpResponse ----------------------------------------------------------------------

std::optional<std::string_view> HttpResponse::find_header(std::string_view name) const {
    for (const auto& h : headers) {
        if (iequals(h.name, name)) return std::string_view(h.value);
    }
    return std::nullopt;
}

std::string HttpResponse::header(std::string_view name) const {
    const auto v = find_header(name);
    return v ? std::string(*v) : std::string();
}

// ---- ResponseParser --------------------------------------------------------------------

struct ResponseParser::Impl {
    Impl(bool head, size_t max_bytes) : head_(head), max_bytes_(max_bytes) {
        ::http_parser_init(&parser_, HTTP_RESPONSE);
        parser_.data = this;
    }

    static Impl& self(http_parser* p) { return *static_cast<Impl*>(p->data); }

    static int on_message_begin(http_parser* p) {
        Impl& s = self(p);
        // A new message: the first, or the final one after an interim 1xx answer.
        s.started_ = true;
        s.response_ = HttpResponse{};
        s.header_bytes_ = 0;
        s.in_value_ = false;
        return 0;
    }

    bool count_header_bytes(size_t len) {
        header_bytes_ += len;
        if (header_bytes_ <= max_bytes_) return true;
        fail(fmt::format("the response headers exceed {} bytes", max_bytes_));
        return false;
    }

    static int on_header_field(http_parser* p, const char* at, size_t len) {
        Impl& s = self(p);
        if (!s.count_header_bytes(len)) return 1;
        if (s.in_value_ || s.response_.headers.empty()) s.response_.headers.emplace_back();
        s.in_value_ = false;
        s.response_.headers.back().name.append(at, len);
        return 0;
    }

    static int on_header_value(http_parser* p, const char* at, size_t len) {
        Impl& s = self(p);
        if (!s.count_header_bytes(len)) return 1;
        if (s.response_.headers.empty()) s.response_.headers.emplace_back();  // never: a field comes first
        s.in_value_ = true;
        s.response_.headers.back().value.append(at, len);
        return 0;
    }

    static int on_headers_complete(http_parser* p) {
        Impl& s = self(p);
        if (p->status_code < 100) {
            s.fail(fmt::format("malformed HTTP response (status {})", static_cast<unsigned>(p->status_code)));
            return -1;
        }
        s.response_.status = static_cast<int>(p->status_code);
        for (auto& h : s.response_.headers) {
            const std::string_view v = trim(h.value);
            if (v.size() != h.value.size()) h.value = std::string(v);
        }
        const bool head = s.head_ && p->status_code >= 200;
        if (!head && (p->flags & F_CONTENTLENGTH) != 0 && p->content_length > s.max_bytes_) {
            s.fail(fmt::format("the response body is {} bytes; at most {} are accepted", p->content_length,
                               s.max_bytes_));
            return -1;
        }
        // 1: no body follows (the answer to HEAD carries the length of the body it omits).
        return head ? 1 : 0;
    }

    static int on_body(http_parser* p, const char* at, size_t len) {
        Impl& s = self(p);
        if (len > s.max_bytes_ - s.response_.body.size()) {
            s.fail(fmt::format("the response body exceeds {} bytes", s.max_bytes_));
            return 1;
        }
        s.response_.body.append(at, len);
        return 0;
    }

    static int on_message_complete(http_parser* p) {
        Impl& s = self(p);
        // An interim answer (100 Continue, 102, 103): the final one follows.
        if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101) return 0;
        s.state_ = State::Done;
        s.keep_alive_ = p->status_code != 101 && ::http_should_keep_alive(p) != 0;
        // Stop here: bytes after the response are not ours.
        ::http_parser_pause(p, 1);
        return 0;
    }

    static constexpr http_parser_settings kSettings = {
        .on_message_begin = on_message_begin,
        .on_url = nullptr,
        .on_status = nullptr,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
        .on_chunk_header = nullptr,
        .on_chunk_complete = nullptr,
    };

    void fail(std::string message) {
        if (state_ != State::NeedMore) return;
        state_ = State::Error;
        error_ = std::move(message);
    }

    size_t feed(const char* data, size_t size) {
        if (state_ != State::NeedMore || size == 0) return 0;
        const size_t n = ::http_parser_execute(&parser_, &kSettings, data, size);
        const auto err = HTTP_PARSER_ERRNO(&parser_);
        if (state_ == State::NeedMore && err != HPE_OK && err != HPE_PAUSED)
            fail(fmt::format("malformed HTTP response ({})", ::http_errno_description(err)));
        return n;
    }

    void finish() {
        if (state_ != State::NeedMore) return;
        // Zero bytes tell the parser about EOF: it completes a response delimited by the end
        // of the connection, and reports one cut short.
        (void)::http_parser_execute(&parser_, &kSettings, nullptr, 0);
        if (state_ != State::NeedMore) return;
        fail(started_ ? "the connection closed in the middle of the response"
                      : "the connection closed before a response");
    }

    http_parser parser_{};
    bool head_;
    size_t max_bytes_;
    size_t header_bytes_ = 0;
    bool in_value_ = false;
    State state_ = State::NeedMore;
    bool started_ = false;
    bool keep_alive_ = false;
    std::string error_;
    HttpResponse response_;
};

ResponseParser::ResponseParser(bool head, size_t max_bytes) : impl_(std::make_unique<Impl>(head, max_bytes)) {}
ResponseParser::~ResponseParser() = default;

size_t ResponseParser::feed(const char* data, size_t size) { return impl_->feed(data, size); }
void ResponseParser::finish() { impl_->finish(); }
ResponseParser::State ResponseParser::state() const { return impl_->state_; }
bool ResponseParser::started() const { return impl_->started_; }
const std::string& ResponseParser::error() const { return impl_->error_; }
HttpResponse& ResponseParser::response() { return impl_->response_; }
bool ResponseParser::keep_alive() const { return impl_->keep_alive_; }

// ---- HttpClient ------------------------------------------------------------------------

HttpClient::HttpClient(std::string socket_path, HttpClientOptions options)
    : path_(std::move(socket_path)), options_(options) {}

std::expected<void, HttpClientError> HttpClient::connect() {
    using Kind = HttpClientError::Kind;
    fd_.reset();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof(addr.sun_path))
        return std::unexpected(make_error(Kind::Connect, ENAMETOOLONG, "the path is too long for a Unix socket"));
    if (path_.empty() || path_.find('\0') != std::string::npos)
        return std::unexpected(make_error(Kind::Connect, EINVAL, "invalid socket path"));
    std::memcpy(addr.sun_path, path_.data(), path_.size());

    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return std::unexpected(make_error(Kind::Connect, errno, std::strerror(errno)));
    // A blocking connect waits while the server's listen backlog is full, for at most the
    // send timeout (Linux: unix_stream_connect); it then fails with EAGAIN.
    const auto ms = std::max<std::chrono::milliseconds::rep>(options_.connect_timeout.count(), 1);
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(ms / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int r = 0;
    do {
        r = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    } while (r != 0 && errno == EINTR);
    if (r != 0) {
        const int err = errno;
        if (err == EAGAIN || err == EINPROGRESS)
            return std::unexpected(make_error(
                Kind::Connect, ETIMEDOUT,
                fmt::format("timed out after {} ms (the server is not accepting connections)", ms)));
        return std::unexpected(make_error(Kind::Connect, err, std::strerror(err)));
    }
    // From here on every wait goes through poll() with the I/O timeout.
    const int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) != 0)
        return std::unexpected(make_error(Kind::Io, errno, std::strerror(errno)));
    fd_ = std::move(fd);
    ++connections_;
    return {};
}

std::expected<void, HttpClientError> HttpClient::send_all(std::string_view bytes) {
    using Kind = HttpClientError::Kind;
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n > 0) {
            bytes.remove_prefix(static_cast<size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            const int w = wait_fd(fd_.get(), POLLOUT, options_.io_timeout);
            if (w == 0)
                return std::unexpected(make_error(
                    Kind::Timeout, ETIMEDOUT,
                    fmt::format("timed out after {} ms sending the request", options_.io_timeout.count())));
            if (w < 0) return std::unexpected(make_error(Kind::Io, errno, std::strerror(errno)));
            continue;
        }
        const int err = n < 0 ? errno : EPIPE;
        if (err == EPIPE || err == ECONNRESET)
            return std::unexpected(make_error(Kind::Closed, err, "the server closed the connection"));
        return std::unexpected(make_error(Kind::Io, err, std::strerror(err)));
    }
    return {};
}

std::expected<HttpResponse, HttpClientError> HttpClient::receive(bool head) {
    using Kind = HttpClientError::Kind;
    ResponseParser parser(head, options_.max_response_bytes);
    char buf[16384];
    for (;;) {
        const ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
        if (n < 0) {
            const int err = errno;
            if (err == EINTR) continue;
            if (err == EAGAIN || err == EWOULDBLOCK) {
                const int w = wait_fd(fd_.get(), POLLIN, options_.io_timeout);
                if (w == 0)
                    return std::unexpected(make_error(
                        Kind::Timeout, ETIMEDOUT,
                        fmt::format("timed out after {} ms waiting for the answer", options_.io_timeout.count())));
                if (w < 0) return std::unexpected(make_error(Kind::Io, errno, std::strerror(errno)));
                continue;
            }
            if (err == ECONNRESET && !parser.started())
                return std::unexpected(make_error(Kind::Closed, err, "the server closed the connection without an answer"));
            return std::unexpected(make_error(Kind::Io, err, std::strerror(err)));
        }
        if (n == 0) {
            parser.finish();
            if (parser.state() == ResponseParser::State::Done) break;
            if (!parser.started())
                return std::unexpected(make_error(Kind::Closed, 0, "the server closed the connection without an answer"));
            return std::unexpected(make_error(Kind::Malformed, 0, parser.error()));
        }
        const size_t used = parser.feed(buf, static_cast<size_t>(n));
        if (parser.state() == ResponseParser::State::Error)
            return std::unexpected(make_error(Kind::Malformed, 0, parser.error()));
        if (parser.state() == ResponseParser::State::Done) {
            // Bytes after the answer (we never pipeline): the connection is not reusable.
            if (used < static_cast<size_t>(n)) fd_.reset();
            break;
        }
    }
    if (!options_.keep_alive || !parser.keep_alive()) fd_.reset();
    return std::move(parser.response());
}

std::expected<HttpResponse, HttpClientError> HttpClient::request(std::string_view method, std::string_view target,
                                                                 std::string_view body,
                                                                 std::span<const HttpHeader> headers) {
    using Kind = HttpClientError::Kind;
    if (method.empty() || method.find_first_of(" \r\n") != std::string_view::npos || target.empty() ||
        target.find_first_of(" \r\n") != std::string_view::npos)
        return std::unexpected(make_error(Kind::Malformed, 0, "invalid request method or target"));

    std::string out = fmt::format("{} {} HTTP/1.1\r\n", method, target);
    bool has_host = false;
    for (const auto& h : headers) {
        if (h.name.empty() || has_line_break(h.name) || has_line_break(h.value) ||
            h.name.find(':') != std::string::npos)
            return std::unexpected(make_error(Kind::Malformed, 0, "invalid request header"));
        if (iequals(h.name, "Host")) has_host = true;
        out += fmt::format("{}: {}\r\n", h.name, h.value);
    }
    if (!has_host) out += "Host: localhost\r\n";
    if (!options_.keep_alive) out += "Connection: close\r\n";
    if (!body.empty() || method == "PUT" || method == "POST" || method == "PATCH") {
        out += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
    }
    out += "\r\n";
    out += body;
    const bool head = method == "HEAD";

    // A kept-alive connection the server has closed in the meantime (its idle timeout)
    // fails before any answer: then once more on a new connection.
    for (int attempt = 0;; ++attempt) {
        const bool reused = fd_.valid();
        if (!reused) {
            if (auto c = connect(); !c) return std::unexpected(std::move(c.error()));
        }
        auto sent = send_all(out);
        if (!sent && sent.error().kind != Kind::Closed) {
            fd_.reset();
            return std::unexpected(std::move(sent.error()));
        }
        // Even when sending failed, the server may have answered (e.g. refused an oversized
        // body and closed): read what it said.
        auto response = receive(head);
        if (!response) fd_.reset();
        if (!response && reused && attempt == 0 && response.error().kind == Kind::Closed) continue;
        if (!response && !sent) return std::unexpected(std::move(sent.error()));
        return response;
    }
}

}  // namespace enlighten::api
