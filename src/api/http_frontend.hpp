// HTTP/1.1 for the management API: requests are parsed by Debian's libhttp-parser (2.9, the
// C parser from Node.js; no dependencies), and everything around it is ours, so that every
// byte a client sends is bounded:
//
//   HttpSession   one connection's framing, without any I/O: the server hands it the bytes
//                 that arrived, and it says what to do next: wait for more, write bytes (an
//                 answer, a refusal, a 100 Continue), make a call (a complete request, for
//                 api::handle_request on a worker), or close. It checks the request line and
//                 headers within a byte budget and before any body byte is read
//                 (431/411/413/415/501, 100-continue), takes Content-Length bodies, and does
//                 keep-alive and pipelining (one request at a time, answered in order).
//
// The server (server.cpp) does the socket I/O and the deadlines around it; the fuzzer feeds
// a session from memory. Internal to src/api (and fuzz/); users include api/server.hpp.
//
//   HttpSession s(limits);
//   s.receive(bytes);                     // or s.receive_eof()
//   for (;;) { auto step = s.next(); ... }  // NeedMore: read; Write: send; Call: answer()
//
// Threads: a session belongs to one thread at a time (the server's I/O thread); it takes no
// lock and never blocks.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "api/router.hpp"
#include "api/server.hpp"

namespace enlighten::api {

// The request headers the web listener looks at (api/web.hpp); the API itself uses none.
// Each value is kept up to a bound (Cookie 4 KiB, the others 256 bytes); repeated headers
// are joined with ", " (Cookie with "; ").
struct RequestHeaders {
    std::string host;
    std::string origin;
    std::string cookie;
    std::string authorization;
    std::string upgrade;
    std::string connection;
    std::string ws_key;       // Sec-WebSocket-Key
    std::string ws_version;   // Sec-WebSocket-Version
    std::string ws_protocol;  // Sec-WebSocket-Protocol
};

// A complete request, for api::handle_request.
struct ApiCall {
    std::string method;
    std::string target;
    std::string body;
    RequestHeaders headers;
};

class HttpSession {
public:
    explicit HttpSession(const ApiLimits& limits);
    ~HttpSession();
    HttpSession(const HttpSession&) = delete;
    HttpSession& operator=(const HttpSession&) = delete;

    // Bytes from the client. Call it only after next() said NeedMore (so that at most one
    // read's worth is ever buffered beyond the request being parsed).
    void receive(std::string_view bytes);
    // The client will send nothing more.
    void receive_eof();

    enum class Kind {
        NeedMore,  // read more (or wait: see request_started() for which deadline applies)
        Write,     // send `bytes`; then close if `close`, else call next() again
        Call,      // run `call` and give its reply to answer(); do not call next() before
        Close,     // close the connection without a word
    };
    struct Step {
        Kind kind = Kind::NeedMore;
        std::string bytes;
        bool close = false;
        // With close: the client may still be sending (a body left unread, a refused or
        // pipelined request), so drain a little before closing, or it may not see the answer.
        bool unread = false;
        ApiCall call;
    };
    // Parses what is buffered as far as it goes. Never throws (out of memory: a 500, close).
    Step next();

    // The answer to the request of the last Call: a Write step (closing after the last
    // request the connection may make, after "Connection: close", after an upgrade request).
    Step answer(const HttpReply& reply);
    // The request in progress did not complete in time: a 408, then close.
    Step timed_out();

    // Some byte of a request has arrived (and it is not complete yet): the read deadline
    // applies rather than the keep-alive one.
    [[nodiscard]] bool request_started() const;

    // After a Call whose request switches protocols (a WebSocket): the bytes the client sent
    // after the request, which belong to the new protocol. The session is over.
    std::string take_unparsed();

    // An answer that ends the connection, outside any session (e.g. a 503 to a connection
    // over the server's cap).
    static std::string closing_answer(const HttpReply& reply);

private:
    class Parser;
    Step advance();
    Step refuse(int status, std::string_view message);
    Step write_and_close(std::string bytes, bool unread);
    std::string format(const HttpReply& reply, bool head, bool close) const;
    [[nodiscard]] size_t buffered() const { return in_.size() - pos_; }
    void consume(size_t n);

    enum class State { Head, ScanMethod, Body, Calling, Closed };

    ApiLimits limits_;
    std::unique_ptr<Parser> parser_;
    State state_ = State::Head;
    std::string in_;   // received bytes; [pos_, end) not parsed yet
    size_t pos_ = 0;
    bool eof_ = false;
    size_t header_left_ = 0;
    size_t requests_left_ = 0;
    // The request of the last Call.
    bool head_ = false;
    bool close_ = false;
};

}  // namespace enlighten::api
