#include "api/http_frontend.hpp"

#include <signal.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "api/router.hpp"

namespace enlighten::api {

namespace {

// What the handlers need to know about the request being served. Each worker serves one
// connection at a time, so the current request is per thread.
struct RequestContext {
    ConnectionStream* stream = nullptr;
    bool routed = false;       // the reply came from the router (not an httplib-level error)
    bool close_after = false;  // bytes of this request were left unread: do not reuse the connection
};
thread_local RequestContext* t_request = nullptr;

// For log lines: the request target as printable ASCII, bounded.
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

// Methods for which httplib reads a body before routing (detail::expect_content).
bool httplib_reads_body(const std::string& method) {
    return method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE" || method == "PRI";
}

// httplib answers 400 to a request line whose method it does not know.
bool is_unknown_method(const std::string& m) {
    static constexpr std::string_view kKnown[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
                                                  "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI"};
    if (m.empty() || m.size() > 20) return false;
    for (const char c : m) {
        if (c < 'A' || c > 'Z') return false;
    }
    for (auto k : kKnown) {
        if (m == k) return false;
    }
    return true;
}

void set_json(httplib::Response& res, int status, const std::string& body) {
    res.status = status;
    res.set_content(body, "application/json");
}

}  // namespace

// ---- ConnectionStream ------------------------------------------------------------------

void ConnectionStream::set_budget(size_t bytes) {
    budget_ = bytes;
    over_budget_ = false;
}

ssize_t ConnectionStream::read(char* ptr, size_t size) {
    if (read_failed_) return -1;
    if (budget_ == 0) {
        over_budget_ = true;
        read_failed_ = true;
        return -1;
    }
    if (pos_ == end_) {
        const ssize_t n = raw_read(buf_.data(), buf_.size());
        if (n < 0) {
            read_failed_ = true;
            return -1;
        }
        if (n == 0) return 0;  // EOF
        pos_ = 0;
        end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min({size, end_ - pos_, budget_});
    std::memcpy(ptr, buf_.data() + pos_, n);
    pos_ += n;
    budget_ -= n;
    return static_cast<ssize_t>(n);
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
    // Stopped while reading a request: close without answering it.
    if (write_failed_ || stopped_) return -1;
    size_t done = 0;
    while (done < size) {
        const ssize_t n = raw_write(ptr + done, size - done);
        if (n <= 0) {
            write_failed_ = true;
            return -1;
        }
        done += static_cast<size_t>(n);
    }
    return static_cast<ssize_t>(done);
}

void ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
    ip = "unix";
    port = 0;
}

void ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
    ip = "unix";
    port = 0;
}

// ---- SigpipeGuard ----------------------------------------------------------------------

SigpipeGuard::SigpipeGuard() { valid_ = ::sigaction(SIGPIPE, nullptr, &saved_) == 0; }

void SigpipeGuard::restore() const {
    if (valid_) ::sigaction(SIGPIPE, &saved_, nullptr);
}

// ---- HttpFrontend ----------------------------------------------------------------------

HttpFrontend::HttpFrontend(VmControl& vm, const ApiLimits& limits) : vm_(vm), limits_(limits) {
    SigpipeGuard::restore();  // httplib::Server() set SIGPIPE to SIG_IGN

    set_payload_max_length(limits_.max_body_bytes);
    set_keep_alive_max_count(std::max<size_t>(limits_.keep_alive_max_requests, 1));
    const auto ka_s = std::chrono::ceil<std::chrono::seconds>(limits_.keep_alive_timeout).count();
    set_keep_alive_timeout(static_cast<time_t>(std::max<decltype(ka_s)>(ka_s, 1)));

    set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) { return pre_route(req, res); });
    // Only requests whose body httplib has read get this far (see pre_route).
    auto with_body = [this](const httplib::Request& req, httplib::Response& res) { respond(req, res, req.body); };
    Put(".*", with_body);
    Post(".*", with_body);
    Patch(".*", with_body);
    Delete(".*", with_body);

    set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
        // pre_route has not run yet; refuse an oversized body before the client sends it.
        const auto len = req.get_header_value<uint64_t>("Content-Length");
        if (len > limits_.max_body_bytes) {
            if (t_request != nullptr) t_request->close_after = true;
            res.status = 413;
            return 413;
        }
        return 100;
    });
    set_error_handler([this](const httplib::Request& req, httplib::Response& res) { on_error(req, res); });
    set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
            if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        res.headers.clear();
        set_json(res, 500, error_body("internal error: " + what));
    });
    set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
        // RFC 9110: no Content-Length in a 204.
        if (res.status == 204) res.headers.erase("Content-Length");
        if (t_request != nullptr && t_request->close_after) {
            res.headers.erase("Keep-Alive");
            res.headers.erase("Connection");
            res.set_header("Connection", "close");
        }
    });
    set_logger([](const httplib::Request& req, const httplib::Response& res) {
        spdlog::debug("api: {} {} -> {}", printable(req.method), printable(req.target), res.status);
    });
}

httplib::Server::HandlerResponse HttpFrontend::pre_route(const httplib::Request& req, httplib::Response& res) {
    RequestContext* ctx = t_request;
    auto refuse = [&](int status, std::string message) {
        if (ctx != nullptr) {
            ctx->routed = true;
            ctx->close_after = true;  // the body (if any) stays unread
        }
        set_json(res, status, error_body(message));
        return HandlerResponse::Handled;
    };

    if (req.has_header("Transfer-Encoding"))
        return refuse(411, "Transfer-Encoding is not supported; send the body with a Content-Length");
    uint64_t length = 0;
    if (req.has_header("Content-Length")) {
        if (req.get_header_value_count("Content-Length") != 1) return refuse(400, "more than one Content-Length");
        const std::string text = req.get_header_value("Content-Length");
        const char* end = text.data() + text.size();
        auto [p, ec] = std::from_chars(text.data(), end, length);
        if (text.empty() || ec != std::errc() || p != end) return refuse(400, "invalid Content-Length");
    }
    if (length > limits_.max_body_bytes)
        return refuse(413, fmt::format("the request body is {} bytes; at most {} are accepted", length,
                                       limits_.max_body_bytes));
    // httplib would inflate gzip/br bodies without bound.
    if (req.has_header("Content-Encoding") && req.get_header_value("Content-Encoding") != "identity")
        return refuse(415, "Content-Encoding is not supported; send plain JSON");
    if (length > 0 && req.get_header_value("Content-Type").starts_with("multipart/"))
        return refuse(415, "multipart bodies are not supported; send JSON");

    // A body httplib is about to read: let it, then route (the handlers registered above).
    if (length > 0 && httplib_reads_body(req.method)) return HandlerResponse::Unhandled;
    // No body, or one httplib would not read (e.g. GET with a body): route now. This also
    // keeps httplib from reading a body-less PUT/DELETE to the end of the stream.
    if (length > 0 && ctx != nullptr) ctx->close_after = true;
    respond(req, res, std::string());
    return HandlerResponse::Handled;
}

void HttpFrontend::respond(const httplib::Request& req, httplib::Response& res, const std::string& body) {
    if (t_request != nullptr) t_request->routed = true;
    HttpReply reply = handle_request(vm_, req.method, req.target, body);
    res.status = reply.status;
    if (!reply.body.empty()) res.set_content(reply.body, "application/json");
    if (!reply.allow.empty()) res.set_header("Allow", reply.allow);
}

void HttpFrontend::on_error(const httplib::Request& req, httplib::Response& res) const {
    RequestContext* ctx = t_request;
    if (ctx != nullptr && ctx->routed && !res.body.empty()) return;  // the router's own error
    // An error httplib found (malformed request, oversized line, ...): the rest of the
    // connection cannot be trusted.
    if (ctx != nullptr) ctx->close_after = true;
    std::string message;
    const ConnectionStream* stream = ctx != nullptr ? ctx->stream : nullptr;
    if (stream != nullptr && stream->over_budget()) {
        res.status = 431;
        message = fmt::format("the request line and headers exceed {} bytes", limits_.max_header_bytes);
    } else if (stream != nullptr && stream->timed_out()) {
        res.status = 408;
        message = fmt::format("the request was not completed within {} ms", limits_.io_timeout.count());
    } else if (res.status == 400 && is_unknown_method(req.method)) {
        res.status = 501;
        message = fmt::format("method {} is not supported", req.method);
    } else {
        switch (res.status) {
            case 400: message = "malformed HTTP request"; break;
            case 404: message = "no such endpoint"; break;
            case 413: message = fmt::format("the request body exceeds {} bytes", limits_.max_body_bytes); break;
            case 414: message = "the request target is too long"; break;
            case 416: message = "invalid Range header"; break;
            case 417: message = "expectation failed"; break;
            default: message = fmt::format("HTTP error {}", res.status); break;
        }
    }
    res.body.clear();
    res.headers.erase("Content-Type");
    res.set_content(error_body(message), "application/json");
}

bool HttpFrontend::serve(ConnectionStream& stream, const std::atomic<bool>& stopping) {
    for (size_t left = std::max<size_t>(limits_.keep_alive_max_requests, 1); left > 0; --left) {
        if (stopping.load(std::memory_order_acquire)) return false;
        if (!stream.has_buffered() && !stream.wait_for_request(limits_.keep_alive_timeout)) return false;

        RequestContext ctx;
        ctx.stream = &stream;
        t_request = &ctx;
        stream.set_budget(limits_.max_header_bytes);
        bool connection_closed = false;
        const bool ok = process_request(stream, left == 1, connection_closed, [&](httplib::Request& req) {
            req.ranges.clear();                    // byte ranges make no sense here
            req.headers.erase("Accept-Encoding");  // small JSON: no compression (nor its memory)
            stream.add_budget(limits_.max_body_bytes);
        });
        t_request = nullptr;

        if (ctx.close_after || stream.over_budget()) return true;
        if (!ok || connection_closed || stream.failed()) return false;
    }
    return false;
}

}  // namespace enlighten::api
