// HTTP/1.1 for the management API: requests are parsed by Debian's libhttp-parser (2.9, the
// C parser from Node.js; no dependencies), and everything around it is ours, so that every
// byte a client sends is bounded and stop() can wake every worker at once:
//
//   ConnectionStream   one connection's bytes: a read buffer over raw I/O that subclasses
//                      supply (a socket in server.cpp, memory in the fuzzer)
//   HttpFrontend       the framing: request line and headers within a byte budget, checks
//                      before any body is read (411/413/415/501, 100-continue), Content-Length
//                      bodies, keep-alive and pipelining, responses; routed to
//                      api::handle_request
//
// Internal to src/api (and fuzz/); users include api/server.hpp.
//
// Threads: one HttpFrontend is shared by the API workers (it keeps no per-connection
// state); a ConnectionStream belongs to the worker serving that connection.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string_view>

#include "api/server.hpp"
#include "api/vm_control.hpp"

namespace enlighten::api {

class ConnectionStream {
public:
    ConnectionStream() = default;
    ConnectionStream(const ConnectionStream&) = delete;
    ConnectionStream& operator=(const ConnectionStream&) = delete;
    virtual ~ConnectionStream() = default;

    // Waits for the first byte of the next request; false on timeout, EOF, error or stop.
    virtual bool wait_for_request(std::chrono::milliseconds timeout) = 0;

    enum class Fill { Ok, Eof, Failed };
    // Reads at least one more byte into the buffer (keeping what is buffered). Failed is an
    // error, a timeout (timed_out()) or a stop (stopped()); the connection is then done.
    Fill fill();
    [[nodiscard]] const char* data() const { return buf_.data() + pos_; }
    [[nodiscard]] size_t buffered() const { return end_ - pos_; }
    [[nodiscard]] bool has_buffered() const { return pos_ < end_; }
    void consume(size_t n);

    // Writes all of `bytes`; false on error, timeout or stop. Nothing is written once a
    // stop has been seen (the request being read is dropped without an answer).
    bool write_all(std::string_view bytes);

    [[nodiscard]] bool timed_out() const { return timed_out_; }
    [[nodiscard]] bool stopped() const { return stopped_; }

protected:
    // Raw I/O: up to `size` bytes; 0 is EOF (reads), < 0 an error, timeout or stop (which
    // the implementation reports with note_timeout() / note_stopped() first).
    virtual ssize_t raw_read(char* ptr, size_t size) = 0;
    virtual ssize_t raw_write(const char* ptr, size_t size) = 0;
    void note_timeout() { timed_out_ = true; }
    void note_stopped() { stopped_ = true; }

private:
    std::array<char, 4096> buf_{};
    size_t pos_ = 0;
    size_t end_ = 0;
    bool read_failed_ = false;
    bool write_failed_ = false;
    bool timed_out_ = false;
    bool stopped_ = false;
};

class HttpFrontend {
public:
    HttpFrontend(VmControl& vm, const ApiLimits& limits);

    // Serves the requests of one connection until it closes, fails, idles past the
    // keep-alive timeout, asks to close, reaches the request limit, or `stopping` is set.
    // Returns true if the client may still be sending (a body was left unread, or the
    // request was refused): the caller should drain a little before closing, so that the
    // client reads the response.
    bool serve(ConnectionStream& stream, const std::atomic<bool>& stopping);

private:
    enum class Next { Continue, Close, CloseUnread };
    class Connection;
    Next serve_one(Connection& conn, bool last, const std::atomic<bool>& stopping);

    VmControl& vm_;
    ApiLimits limits_;
};

}  // namespace enlighten::api
