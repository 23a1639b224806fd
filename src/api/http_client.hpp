// A small HTTP/1.1 client for the management API's Unix socket: `enlighten remote` and the
// tests use it. Answers are parsed by libhttp-parser (ResponseParser, which the fuzzer also
// drives without a socket). Every wait is bounded; writes use MSG_NOSIGNAL, so a server that
// closes early is an error, not a SIGPIPE, without touching the process's signal handling.
//
//   api::HttpClient client("/run/enlighten/vm1.sock");
//   auto r = client.request("PUT", "/api/v1/vm.kvp/external/Owner", R"({"value": "ops"})");
//   if (!r) ... r.error().message ...;   else r->status, r->body, r->header("Content-Type")
//
// Threads: a client is one connection, used by one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <expected>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.hpp"

namespace enlighten::api {

struct HttpHeader {
    std::string name;
    std::string value;
};

struct HttpResponse {
    int status = 0;
    std::vector<HttpHeader> headers;
    std::string body;

    // The first header of that name (case-insensitive), or nullopt.
    [[nodiscard]] std::optional<std::string_view> find_header(std::string_view name) const;
    // Its value, or "" when absent.
    [[nodiscard]] std::string header(std::string_view name) const;
    [[nodiscard]] bool has_header(std::string_view name) const { return find_header(name).has_value(); }
};

// Parses one response from bytes as they come (interim 1xx answers are skipped). The
// libhttp-parser state stays out of this header (its C names, e.g. `http_status`, would
// clash with ours).
class ResponseParser {
public:
    enum class State { NeedMore, Done, Error };

    // `head`: the answer to a HEAD request (a Content-Length without a body). `max_bytes`
    // bounds the headers and, separately, the body.
    explicit ResponseParser(bool head = false, size_t max_bytes = 16U << 20);
    ~ResponseParser();
    ResponseParser(const ResponseParser&) = delete;
    ResponseParser& operator=(const ResponseParser&) = delete;

    // Consumes bytes up to the end of the response; returns how many were used.
    size_t feed(const char* data, size_t size);
    // The connection reached EOF (ends a response delimited by the connection's end).
    void finish();

    [[nodiscard]] State state() const;
    [[nodiscard]] bool started() const;
    [[nodiscard]] const std::string& error() const;
    [[nodiscard]] HttpResponse& response();
    // Whether the connection may carry another request (once Done).
    [[nodiscard]] bool keep_alive() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct HttpClientOptions {
    std::chrono::milliseconds connect_timeout{5000};  // a full listen backlog
    std::chrono::milliseconds io_timeout{60000};      // each wait for the server
    bool keep_alive = false;  // keep the connection between requests (else "Connection: close")
    size_t max_response_bytes = 16U << 20;
};

struct HttpClientError {
    enum class Kind { Connect, Timeout, Closed, Io, Malformed };
    Kind kind;
    int err = 0;  // errno, for Connect and Io
    std::string message;
};

class HttpClient {
public:
    explicit HttpClient(std::string socket_path, HttpClientOptions options = {});

    // One request; `body` is sent with Content-Type: application/json (and a Content-Length
    // for PUT, POST and PATCH even when empty). `headers` are added as given.
    std::expected<HttpResponse, HttpClientError> request(std::string_view method, std::string_view target,
                                                         std::string_view body = {},
                                                         std::span<const HttpHeader> headers = {});

    std::expected<HttpResponse, HttpClientError> get(std::string_view target) { return request("GET", target); }
    std::expected<HttpResponse, HttpClientError> put(std::string_view target, std::string_view body = {}) {
        return request("PUT", target, body);
    }
    std::expected<HttpResponse, HttpClientError> del(std::string_view target) { return request("DELETE", target); }

    void close() { fd_.reset(); }
    // Connections opened so far (keep-alive reuses one).
    [[nodiscard]] unsigned connections() const { return connections_; }

private:
    std::expected<void, HttpClientError> connect();
    std::expected<void, HttpClientError> send_all(std::string_view bytes);
    std::expected<HttpResponse, HttpClientError> receive(bool head);

    std::string path_;
    HttpClientOptions options_;
    UniqueFd fd_;
    unsigned connections_ = 0;
};

}  // namespace enlighten::api
