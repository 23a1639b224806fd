#include "api/http_frontend.hpp"

#include <http_parser.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
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
enum class Header {
    Other, TransferEncoding, ContentEncoding, ContentType, Expect,
    // for the web listener (RequestHeaders)
    Host, Origin, Cookie, Authorization, Upgrade, Connection, WsKey, WsVersion, WsProtocol,
};
constexpr size_t kMaxFieldName = 32;   // longer names are none of the above
constexpr size_t kMaxKeptValue = 256;  // enough for every check on a kept value
constexpr size_t kMaxKeptCookie = 4096;  // other sites' cookies on the same host come too

Header classify(std::string_view name) {
    static constexpr std::pair<std::string_view, Header> kNames[] = {
        {"Transfer-Encoding", Header::TransferEncoding},
        {"Content-Encoding", Header::ContentEncoding},
        {"Content-Type", Header::ContentType},
        {"Expect", Header::Expect},
        {"Host", Header::Host},
        {"Origin", Header::Origin},
        {"Cookie", Header::Cookie},
        {"Authorization", Header::Authorization},
        {"Upgrade", Header::Upgrade},
        {"Connection", Header::Connection},
        {"Sec-WebSocket-Key", Header::WsKey},
        {"Sec-WebSocket-Version", Header::WsVersion},
        {"Sec-WebSocket-Protocol", Header::WsProtocol},
    };
    for (const auto& [n, h] : kNames)
        if (iequals(name, n)) return h;
    return Header::Other;
}

// Appends a repeated header's value to what an earlier one left, within `cap` bytes.
void keep(std::string& kept, std::string_view value, std::string_view joiner, size_t cap) {
    if (!kept.empty()) kept.append(joiner);
    kept.append(value.substr(0, cap - std::min(cap, kept.size())));
    if (kept.size() > cap) kept.resize(cap);
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
    RequestHeaders headers;
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
        const size_t cap = s.header_ == Header::Cookie ? kMaxKeptCookie : kMaxKeptValue;
        if (s.header_ != Header::Other && s.value_.size() < cap) s.value_.append(at, std::min(len, cap - s.value_.size()));
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
            case Header::Host: keep(req_.headers.host, v, ", ", kMaxKeptValue); break;
            case Header::Origin: keep(req_.headers.origin, v, ", ", kMaxKeptValue); break;
            case Header::Cookie: keep(req_.headers.cookie, v, "; ", kMaxKeptCookie); break;
            case Header::Authorization: keep(req_.headers.authorization, v, ", ", kMaxKeptValue); break;
            case Header::Upgrade: keep(req_.headers.upgrade, v, ", ", kMaxKeptValue); break;
            case Header::Connection: keep(req_.headers.connection, v, ", ", kMaxKeptValue); break;
            case Header::WsKey: keep(req_.headers.ws_key, v, ", ", kMaxKeptValue); break;
            case Header::WsVersion: keep(req_.headers.ws_version, v, ", ", kMaxKeptValue); break;
            case Header::WsProtocol: keep(req_.headers.ws_protocol, v, ", ", kMaxKeptValue); break;
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

// ---- HttpSession -----------------------------------------------------------------------

class HttpSession::Parser final : public RequestParser {};

HttpSession::HttpSession(const ApiLimits& limits) : limits_(limits), parser_(std::make_unique<Parser>()) {
    limits_.keep_alive_max_requests = std::max<size_t>(limits_.keep_alive_max_requests, 1);
    requests_left_ = limits_.keep_alive_max_requests;
    header_left_ = limits_.max_header_bytes;
    parser_->begin();
}

HttpSession::~HttpSession() = default;

void HttpSession::receive(std::string_view bytes) {
    if (pos_ == in_.size()) {
        in_.clear();
        pos_ = 0;
    } else if (pos_ > 0) {
        in_.erase(0, pos_);
        pos_ = 0;
    }
    in_.append(bytes);
}

void HttpSession::receive_eof() { eof_ = true; }

std::string HttpSession::take_unparsed() {
    std::string rest = in_.substr(pos_);
    in_.clear();
    pos_ = 0;
    state_ = State::Closed;
    return rest;
}

void HttpSession::consume(size_t n) { pos_ += std::min(n, buffered()); }

bool HttpSession::request_started() const {
    return state_ == State::ScanMethod || state_ == State::Body || (state_ == State::Head && parser_->started());
}

HttpSession::Step HttpSession::next() {
    try {
        return advance();
    } catch (const std::exception& e) {
        // Out of memory, most likely; the connection's state is unknown.
        return write_and_close(format(error_reply(500, fmt::format("internal error: {}", e.what())), false, true),
                               true);
    }
}

HttpSession::Step HttpSession::write_and_close(std::string bytes, bool unread) {
    state_ = State::Closed;
    Step s;
    s.kind = Kind::Write;
    s.bytes = std::move(bytes);
    s.close = true;
    s.unread = unread && !eof_;
    return s;
}

namespace {

std::string format_reply(const HttpReply& reply, bool head, bool close, const ApiLimits& limits) {
    std::string out = fmt::format("HTTP/1.1 {} {}\r\n", reply.status,
                                  ::http_status_str(static_cast<enum ::http_status>(reply.status)));
    if (!reply.allow.empty()) out += fmt::format("Allow: {}\r\n", reply.allow);
    if (reply.retry_after_s != 0) out += fmt::format("Retry-After: {}\r\n", reply.retry_after_s);
    for (const auto& [name, value] : reply.headers) out += fmt::format("{}: {}\r\n", name, value);
    if (close) out += "Connection: close\r\n";
    // RFC 9110: no Content-Length in a 204 (nor a body).
    const bool has_body = reply.status != 204 && !reply.body.empty();
    if (reply.status != 204) out += fmt::format("Content-Length: {}\r\n", has_body ? reply.body.size() : 0);
    if (has_body) out += fmt::format("Content-Type: {}\r\n", reply.content_type);
    if (!close) {
        const auto ka_s =
            std::max<long long>(std::chrono::ceil<std::chrono::seconds>(limits.keep_alive_timeout).count(), 1);
        out += fmt::format("Keep-Alive: timeout={}, max={}\r\n", ka_s, limits.keep_alive_max_requests);
    }
    out += "\r\n";
    if (has_body && !head) out += reply.body;
    return out;
}

}  // namespace

std::string HttpSession::format(const HttpReply& reply, bool head, bool close) const {
    return format_reply(reply, head, close, limits_);
}

std::string HttpSession::closing_answer(const HttpReply& reply) { return format_reply(reply, false, true, {}); }

// Refuses the request and closes the connection: the rest of it stays unread.
HttpSession::Step HttpSession::refuse(int status, std::string_view message) {
    const Request& r = parser_->request();
    log::debug("api: {} {} -> {} ({})", printable(r.method), printable(r.target), status, message);
    return write_and_close(format(error_reply(status, message), false, true), true);
}

HttpSession::Step HttpSession::timed_out() {
    return refuse(408, fmt::format("the request was not completed within {} ms", limits_.io_timeout.count()));
}

HttpSession::Step HttpSession::answer(const HttpReply& reply) {
    const Request& r = parser_->request();
    log::debug("api: {} {} -> {}", printable(r.method), printable(r.target), reply.status);
    std::string bytes = format(reply, head_, close_);
    if (close_) {
        // Pipelined requests after this one stay unanswered; let the client read this answer.
        return write_and_close(std::move(bytes), buffered() > 0);
    }
    state_ = State::Head;
    header_left_ = limits_.max_header_bytes;
    parser_->begin();
    Step s;
    s.kind = Kind::Write;
    s.bytes = std::move(bytes);
    return s;
}

HttpSession::Step HttpSession::advance() {
    Parser& parser = *parser_;
    auto malformed = [&] { return refuse(400, "malformed HTTP request"); };
    auto need_more = [] { return Step{}; };

    switch (state_) {
        case State::Closed: {
            Step s;
            s.kind = Kind::Close;
            return s;
        }
        case State::Calling: return need_more();  // the server answers first
        case State::ScanMethod: {
            // After HPE_INVALID_METHOD: finish reading the first word (at most
            // kMaxMethodToken bytes) to name it.
            if (buffered() > 0) {
                parser.scan_method(in_.data() + pos_, buffered());
                consume(buffered());
            }
            if (!parser.method_token_done() && !eof_) return need_more();
            if (const auto m = parser.unknown_method()) return refuse(501, fmt::format("method {} is not supported", *m));
            return malformed();
        }
        case State::Head: break;
        case State::Body: break;
    }

    if (state_ == State::Head) {
        // The request line and headers, within the header budget.
        while (parser.state() == RequestParser::State::Head) {
            if (header_left_ == 0)
                return refuse(431, fmt::format("the request line and headers exceed {} bytes", limits_.max_header_bytes));
            if (buffered() == 0) {
                if (!eof_) return need_more();
                if (!parser.started()) {  // a clean end between requests
                    state_ = State::Closed;
                    return advance();
                }
                return write_and_close(format(error_reply(400, "malformed HTTP request"), false, true), false);
            }
            const size_t offered = std::min(buffered(), header_left_);
            const size_t used = parser.execute(in_.data() + pos_, offered);
            if (parser.state() == RequestParser::State::Error) {
                switch (parser.error()) {
                    case HPE_HEADER_OVERFLOW:
                        return refuse(431, fmt::format("the request line and headers exceed {} bytes",
                                                       limits_.max_header_bytes));
                    case HPE_INVALID_METHOD:
                        parser.scan_method(in_.data() + pos_ + offered, buffered() - offered);
                        consume(buffered());
                        state_ = State::ScanMethod;
                        return advance();
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
            consume(used);
            header_left_ -= used;
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
        parser.read_body();
        state_ = State::Body;
        if (req.expect_continue && req.content_length > 0) {
            Step s;
            s.kind = Kind::Write;
            s.bytes = "HTTP/1.1 100 Continue\r\n\r\n";
            return s;
        }
    }

    // The body (Content-Length bytes, at most max_body_bytes), up to the end of the request.
    while (parser.state() != RequestParser::State::Done) {
        if (buffered() == 0) {
            if (!eof_) return need_more();
            return write_and_close(format(error_reply(400, "malformed HTTP request"), false, true), false);
        }
        const size_t used = parser.execute(in_.data() + pos_, buffered());
        if (parser.state() == RequestParser::State::Error) return malformed();
        consume(used);
    }

    const Request& req = parser.request();
    state_ = State::Calling;
    head_ = req.method == "HEAD";
    // No protocol switch here: after an upgrade request (its body, if any, was not read as
    // such) the connection ends with the answer.
    --requests_left_;
    close_ = requests_left_ == 0 || !req.keep_alive || req.upgrade;
    Step s;
    s.kind = Kind::Call;
    s.call = ApiCall{req.method, req.target, req.body, req.headers};
    return s;
}

}  // namespace enlighten::api
