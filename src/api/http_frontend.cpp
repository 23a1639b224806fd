#include "api/http_frontend.hpp"

#include <http_parser.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <optional>
#include <string>

#include <fmt/format.h>
#include "common/log.hpp"

#include "api/router.hpp"

namespace enlighten::api {

namespace {

// For log lines: a string from the client as printable ASCII, bounded.
std::string printable(std::string_view s) {
    std::string out;
    for (const char c : s.substr(0, 200)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7F) {
            out.push_back(c);
        } else {
            out += fmt::format("\\x{:02x}", u);
        }
    }
    if (s.size() > 200) out += "...";
    return out;
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                              [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// The methods the API server knows: any other is a 501. The router
// answers 405 (with Allow) to those of these an endpoint does not take.
bool is_known_method(std::string_view m) {
    static constexpr std::string_view kKnown[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                                  "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI"};
    return std::find(std::begin(kKnown), std::end(kKnown), m) != std::end(kKnown);
}

// A request line that starts with something shaped like a method (1 to 20 capital letters,
// then a space) that we do not know: a 501 rather than a 400.
constexpr size_t kMaxMethodToken = 20;

// The request headers the checks need; every other header is parsed and dropped.
enum class Header { Other, TransferEncoding, ContentEncoding, ContentType, Expect };
constexpr size_t kMaxFieldName = 32;   // longer names are none of the above
constexpr size_t kMaxKeptValue = 256;  // enough for every check on a kept value

Header classify(std::string_view name) {
    if (iequals(name, "Transfer-Encoding")) return Header::TransferEncoding;
    if (iequals(name, "Content-Encoding")) return Header::ContentEncoding;
    if (iequals(name, "Content-Type")) return Header::ContentType;
    if (iequals(name, "Expect")) return Header::Expect;
    return Header::Other;
}

// One request as far as the checks and the router need it.
struct Request {
    std::string method;
    std::string target;
    std::string body;
    unsigned http_major = 0;
    unsigned http_minor = 0;
    uint64_t content_length = 0;  // 0 without a Content-Length
    bool keep_alive = false;      // http_should_keep_alive(): HTTP/1.1 unless "close", 1.0 only with "keep-alive"
    bool transfer_encoding = false;
    bool content_encoding = false;  // other than "identity"
    bool multipart = false;
    bool expect_continue = false;
    bool upgrade = false;  // CONNECT, or an Upgrade header: libhttp-parser reads no body then
};

// libhttp-parser over one connection, one request at a time: it pauses when the headers
// are complete (so the checks run before any body byte is read) and when the request is
// complete (so the bytes of a pipelined next request stay in the buffer).
class RequestParser {
public:
    enum class State { Head, HeadDone, Body, Done, Error };

    RequestParser() {
        ::http_parser_init(&parser_, HTTP_REQUEST);
        parser_.data = this;
        // Let a request with both "Transfer-Encoding: chunked" and a Content-Length reach
        // the checks, which refuse it with a 411 like every Transfer-Encoding.
        parser_.allow_chunked_length = 1;
    }
    RequestParser(const RequestParser&) = delete;
    RequestParser& operator=(const RequestParser&) = delete;

    // Starts the next request (after the previous one is Done).
    void begin() {
        req_ = Request{};
        state_ = State::Head;
        started_ = false;
        field_.clear();
        value_.clear();
        in_value_ = false;
        token_.clear();
        token_done_ = false;
        token_shaped_ = true;
        ::http_parser_pause(&parser_, 0);
    }

    // After HeadDone: go on reading the body (if any) up to the end of the request.
    void read_body() {
        state_ = State::Body;
        ::http_parser_pause(&parser_, 0);
    }

    // Feeds bytes; returns how many were consumed. Stops early at HeadDone, Done or Error.
    size_t execute(const char* data, size_t size) {
        if (size == 0) return 0;
        started_ = true;
        if (state_ == State::Head) scan_method(data, size);
        const size_t n = ::http_parser_execute(&parser_, &kSettings, data, size);
        const auto err = HTTP_PARSER_ERRNO(&parser_);
        if (err != HPE_OK && err != HPE_PAUSED) state_ = State::Error;
        return n;
    }

    [[nodiscard]] State state() const { return state_; }
    [[nodiscard]] bool started() const { return started_; }
    [[nodiscard]] http_errno error() const { return HTTP_PARSER_ERRNO(&parser_); }
    [[nodiscard]] const Request& request() const { return req_; }
    // Also while the header is the last one, not yet ended (the parser can fail on the
    // header block's end before on_headers_complete).
    [[nodiscard]] bool saw_transfer_encoding() const {
        return req_.transfer_encoding || (in_value_ && header_ == Header::TransferEncoding);
    }

    // The request line's first word, for telling an unknown method (501) from garbage
    // (400): fed alongside the parser, and on from bytes the parser has not seen.
    void scan_method(const char* data, size_t size) {
        for (size_t i = 0; i < size && !token_done_; ++i) {
            const char c = data[i];
            if (token_.empty() && (c == '\r' || c == '\n')) continue;  // empty lines before a request
            if (c == ' ' && !token_.empty()) {
                token_done_ = true;
            } else if (c >= 'A' && c <= 'Z' && token_.size() < kMaxMethodToken) {
                token_.push_back(c);
            } else {
                token_shaped_ = false;
                token_done_ = true;
            }
        }
    }
    [[nodiscard]] bool method_token_done() const { return token_done_; }
    // The unknown method, if the request line starts with one.
    [[nodiscard]] std::optional<std::string> unknown_method() const {
        if (!token_done_ || !token_shaped_ || token_.empty() || is_known_method(token_)) return std::nullopt;
        return token_;
    }

private:
    static RequestParser& self(http_parser* p) { return *static_cast<RequestParser*>(p->data); }

    static int on_url(http_parser* p, const char* at, size_t len) {
        self(p).req_.target.append(at, len);
        return 0;
    }
    static int on_header_field(http_parser* p, const char* at, size_t len) {
        RequestParser& s = self(p);
        if (s.in_value_) s.end_header();
        if (s.field_.size() <= kMaxFieldName) s.field_.append(at, std::min(len, kMaxFieldName + 1 - s.field_.size()));
        return 0;
    }
    static int on_header_value(http_parser* p, const char* at, size_t len) {
        RequestParser& s = self(p);
        if (!s.in_value_) {
            s.in_value_ = true;
            s.header_ = s.field_.size() <= kMaxFieldName ? classify(s.field_) : Header::Other;
        }
        if (s.header_ != Header::Other && s.value_.size() < kMaxKeptValue)
            s.value_.append(at, std::min(len, kMaxKeptValue - s.value_.size()));
        return 0;
    }
    static int on_headers_complete(http_parser* p) {
        RequestParser& s = self(p);
        if (s.in_value_) s.end_header();
        Request& r = s.req_;
        r.method = ::http_method_str(static_cast<http_method>(p->method));
        r.http_major = p->http_major;
        r.http_minor = p->http_minor;
        r.content_length = (p->flags & F_CONTENTLENGTH) != 0 ? p->content_length : 0;
        r.keep_alive = ::http_should_keep_alive(p) != 0;
        r.upgrade = p->upgrade != 0;
        s.state_ = State::HeadDone;
        ::http_parser_pause(p, 1);
        return 0;
    }
    static int on_body(http_parser* p, const char* at, size_t len) {
        self(p).req_.body.append(at, len);
        return 0;
    }
    static int on_message_complete(http_parser* p) {
        self(p).state_ = State::Done;
        ::http_parser_pause(p, 1);
        return 0;
    }

    // A header line is complete: keep what the checks need.
    void end_header() {
        const std::string_view v = trim(value_);
        switch (header_) {
            case Header::TransferEncoding: req_.transfer_encoding = true; break;
            case Header::ContentEncoding:
                if (!iequals(v, "identity")) req_.content_encoding = true;
                break;
            case Header::ContentType:
                if (istarts_with(v, "multipart/")) req_.multipart = true;
                break;
            case Header::Expect:
                if (iequals(v, "100-continue")) req_.expect_continue = true;
                break;
            case Header::Other: break;
        }
        field_.clear();
        value_.clear();
        in_value_ = false;
        header_ = Header::Other;
    }

    static constexpr http_parser_settings kSettings = {
        .on_message_begin = nullptr,
        .on_url = on_url,
        .on_status = nullptr,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
        .on_chunk_header = nullptr,
        .on_chunk_complete = nullptr,
    };

    http_parser parser_{};
    Request req_;
    State state_ = State::Head;
    bool started_ = false;
    std::string field_;
    std::string value_;
    bool in_value_ = false;
    Header header_ = Header::Other;
    std::string token_;
    bool token_done_ = false;
    bool token_shaped_ = true;
};

}  // namespace

// ---- ConnectionStream ------------------------------------------------------------------

ConnectionStream::Fill ConnectionStream::fill() {
    if (read_failed_) return Fill::Failed;
    if (pos_ == end_) {
        pos_ = 0;
        end_ = 0;
    } else if (end_ == buf_.size()) {
        if (pos_ == 0) return Fill::Failed;  // never: callers consume before asking for more
        std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
        end_ -= pos_;
        pos_ = 0;
    }
    const ssize_t n = raw_read(buf_.data() + end_, buf_.size() - end_);
    if (n == 0) return Fill::Eof;
    if (n < 0) {
        read_failed_ = true;
        return Fill::Failed;
    }
    end_ += std::min(static_cast<size_t>(n), buf_.size() - end_);
    return Fill::Ok;
}

void ConnectionStream::consume(size_t n) { pos_ += std::min(n, end_ - pos_); }

bool ConnectionStream::write_all(std::string_view bytes) {
    if (write_failed_ || stopped_) return false;
    while (!bytes.empty()) {
        const ssize_t n = raw_write(bytes.data(), bytes.size());
        if (n <= 0) {
            write_failed_ = true;
            return false;
        }
        bytes.remove_prefix(std::min(static_cast<size_t>(n), bytes.size()));
    }
    return true;
}

// ---- HttpFrontend ----------------------------------------------------------------------

class HttpFrontend::Connection {
public:
    explicit Connection(ConnectionStream& s) : stream(s) {}
    ConnectionStream& stream;
    RequestParser parser;
};

HttpFrontend::HttpFrontend(VmControl& vm, const ApiLimits& limits) : vm_(vm), limits_(limits) {
    limits_.keep_alive_max_requests = std::max<size_t>(limits_.keep_alive_max_requests, 1);
}

bool HttpFrontend::serve(ConnectionStream& stream, const std::atomic<bool>& stopping) {
    Connection conn(stream);
    for (size_t left = limits_.keep_alive_max_requests; left > 0; --left) {
        if (stopping.load(std::memory_order_acquire)) return false;
        if (!stream.has_buffered() && !stream.wait_for_request(limits_.keep_alive_timeout)) return false;
        Next next = Next::Close;
        try {
            next = serve_one(conn, left == 1, stopping);
        } catch (const std::exception& e) {
            // Out of memory, most likely; the connection's state is unknown.
            const std::string body = error_body(fmt::format("internal error: {}", e.what()));
            (void)stream.write_all(fmt::format("HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                                               "Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{}",
                                               body.size(), body));
            return true;
        }
        if (next == Next::CloseUnread) return true;
        if (next == Next::Close) return false;
    }
    return false;
}

HttpFrontend::Next HttpFrontend::serve_one(Connection& conn, bool last, const std::atomic<bool>& stopping) {
    ConnectionStream& stream = conn.stream;
    RequestParser& parser = conn.parser;
    parser.begin();

    const auto ka_s = std::max<long long>(
        std::chrono::ceil<std::chrono::seconds>(limits_.keep_alive_timeout).count(), 1);
    auto respond = [&](const HttpReply& reply, bool head, bool close) {
        std::string out = fmt::format("HTTP/1.1 {} {}\r\n", reply.status,
                                      ::http_status_str(static_cast<enum ::http_status>(reply.status)));
        if (!reply.allow.empty()) out += fmt::format("Allow: {}\r\n", reply.allow);
        if (close) out += "Connection: close\r\n";
        // RFC 9110: no Content-Length in a 204 (nor a body).
        const bool has_body = reply.status != 204 && !reply.body.empty();
        if (reply.status != 204) out += fmt::format("Content-Length: {}\r\n", has_body ? reply.body.size() : 0);
        if (has_body) out += fmt::format("Content-Type: {}\r\n", reply.content_type);
        if (!close) out += fmt::format("Keep-Alive: timeout={}, max={}\r\n", ka_s, limits_.keep_alive_max_requests);
        out += "\r\n";
        if (has_body && !head) out += reply.body;
        return stream.write_all(out);
    };
    // Refuses the request and closes the connection: the rest of it stays unread.
    auto refuse = [&](int status, std::string_view message) {
        const Request& r = parser.request();
        log::debug("api: {} {} -> {} ({})", printable(r.method), printable(r.target), status, message);
        (void)respond(error_reply(status, message), false, true);
        return Next::CloseUnread;
    };
    auto malformed = [&] { return refuse(400, "malformed HTTP request"); };
    auto timed_out = [&] {
        return refuse(408, fmt::format("the request was not completed within {} ms", limits_.io_timeout.count()));
    };

    // The request line and headers, within the header budget.
    size_t header_left = limits_.max_header_bytes;
    while (parser.state() == RequestParser::State::Head) {
        if (header_left == 0)
            return refuse(431, fmt::format("the request line and headers exceed {} bytes", limits_.max_header_bytes));
        if (!stream.has_buffered()) {
            switch (stream.fill()) {
                case ConnectionStream::Fill::Ok: break;
                case ConnectionStream::Fill::Eof:
                    if (!parser.started()) return Next::Close;
                    (void)malformed();
                    return Next::Close;
                case ConnectionStream::Fill::Failed:
                    if (stream.timed_out()) return timed_out();
                    return Next::Close;  // stopped, reset, error: no answer
            }
        }
        const size_t offered = std::min(stream.buffered(), header_left);
        const size_t used = parser.execute(stream.data(), offered);
        if (parser.state() == RequestParser::State::Error) {
            switch (parser.error()) {
                case HPE_HEADER_OVERFLOW:
                    return refuse(431,
                                  fmt::format("the request line and headers exceed {} bytes", limits_.max_header_bytes));
                case HPE_INVALID_METHOD: {
                    // Finish reading the first word (at most kMaxMethodToken bytes) to name it.
                    size_t scanned = offered;
                    while (!parser.method_token_done()) {
                        if (scanned < stream.buffered()) {
                            parser.scan_method(stream.data() + scanned, stream.buffered() - scanned);
                            scanned = stream.buffered();
                            continue;
                        }
                        stream.consume(stream.buffered());
                        scanned = 0;
                        if (stream.fill() != ConnectionStream::Fill::Ok) break;
                    }
                    if (const auto m = parser.unknown_method())
                        return refuse(501, fmt::format("method {} is not supported", *m));
                    return malformed();
                }
                case HPE_UNEXPECTED_CONTENT_LENGTH:
                case HPE_INVALID_CONTENT_LENGTH:
                    // Transfer-Encoding with a Content-Length: refused as any Transfer-Encoding.
                    if (parser.saw_transfer_encoding())
                        return refuse(411, "Transfer-Encoding is not supported; send the body with a Content-Length");
                    if (parser.error() == HPE_UNEXPECTED_CONTENT_LENGTH) return refuse(400, "more than one Content-Length");
                    return refuse(400, "invalid Content-Length");
                default: return malformed();
            }
        }
        stream.consume(used);
        header_left -= used;
    }

    // Checks, before any byte of the body is read.
    const Request& req = parser.request();
    if (req.http_major != 1) return malformed();
    if (!is_known_method(req.method)) return refuse(501, fmt::format("method {} is not supported", req.method));
    if (req.transfer_encoding)
        return refuse(411, "Transfer-Encoding is not supported; send the body with a Content-Length");
    if (req.content_length > limits_.max_body_bytes)
        return refuse(413, fmt::format("the request body is {} bytes; at most {} are accepted", req.content_length,
                                       limits_.max_body_bytes));
    if (req.content_encoding) return refuse(415, "Content-Encoding is not supported; send plain JSON");
    if (req.content_length > 0 && req.multipart) return refuse(415, "multipart bodies are not supported; send JSON");
    if (req.expect_continue && req.content_length > 0 && !stream.write_all("HTTP/1.1 100 Continue\r\n\r\n"))
        return Next::Close;

    // The body (Content-Length bytes, at most max_body_bytes), up to the end of the request.
    parser.read_body();
    while (parser.state() != RequestParser::State::Done) {
        if (!stream.has_buffered()) {
            switch (stream.fill()) {
                case ConnectionStream::Fill::Ok: break;
                case ConnectionStream::Fill::Eof: (void)malformed(); return Next::Close;
                case ConnectionStream::Fill::Failed:
                    if (stream.timed_out()) return timed_out();
                    return Next::Close;
            }
        }
        const size_t used = parser.execute(stream.data(), stream.buffered());
        if (parser.state() == RequestParser::State::Error) return malformed();
        stream.consume(used);
    }

    // Stopping: the VMM is going away; no more calls into it.
    if (stopping.load(std::memory_order_acquire)) return Next::Close;
    const bool head = req.method == "HEAD";
    const HttpReply reply = handle_request(vm_, req.method, req.target, req.body);
    // No protocol switch here: after an upgrade request (its body, if any, was not read as
    // such) the connection ends with the answer.
    const bool close = last || !req.keep_alive || req.upgrade;
    log::debug("api: {} {} -> {}", printable(req.method), printable(req.target), reply.status);
    if (!respond(reply, head, close)) return Next::Close;
    if (!close) return Next::Continue;
    // Pipelined requests after this one stay unanswered; let the client read this answer.
    return stream.has_buffered() ? Next::CloseUnread : Next::Close;
}

}  // namespace enlighten::api
