// HTTP/1.1 for the management API, with cpp-httplib (Debian's libcpp-httplib 0.11) doing
// the protocol: request line, headers, Content-Length bodies, 100-continue, responses.
// We keep the connection handling (which httplib's listen loop would otherwise own) so that
// stop() can wake every worker at once and every byte a client sends is bounded:
//
//   ConnectionStream   one connection's bytes: a read buffer and a per-request byte budget
//                      (headers, then the body); subclasses supply the raw I/O (a socket in
//                      server.cpp, memory in the fuzzer)
//   HttpFrontend       httplib::Server's request processing, routed to api::handle_request
//
// Internal to src/api (and fuzz/); users include api/server.hpp.
#pragma once

#include <httplib.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <string>

#include "api/server.hpp"
#include "api/vm_control.hpp"

namespace enlighten::api {

class ConnectionStream : public httplib::Stream {
public:
    // httplib::Stream
    [[nodiscard]] bool is_readable() const override { return pos_ < end_; }
    [[nodiscard]] bool is_writable() const override { return !write_failed_; }
    ssize_t read(char* ptr, size_t size) override;
    ssize_t write(const char* ptr, size_t size) override;
    void get_remote_ip_and_port(std::string& ip, int& port) const override;
    void get_local_ip_and_port(std::string& ip, int& port) const override;
    // httplib never gets the descriptor: all I/O goes through read() and write().
    [[nodiscard]] socket_t socket() const override { return INVALID_SOCKET; }
    using httplib::Stream::write;

    // The budget: how many more bytes read() may hand out for the current request.
    void set_budget(size_t bytes);
    void add_budget(size_t bytes) { budget_ += bytes; }
    [[nodiscard]] bool over_budget() const { return over_budget_; }
    // A read or write failed (over budget, timeout, reset, stop): the connection is done.
    [[nodiscard]] bool failed() const { return read_failed_ || write_failed_; }
    // Why a read failed, if it was not the budget.
    [[nodiscard]] bool timed_out() const { return timed_out_; }
    [[nodiscard]] bool stopped() const { return stopped_; }
    [[nodiscard]] bool has_buffered() const { return pos_ < end_; }

    // Waits for the first byte of the next request; false on timeout, EOF, error or stop.
    virtual bool wait_for_request(std::chrono::milliseconds timeout) = 0;

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
    size_t budget_ = 0;
    bool over_budget_ = false;
    bool read_failed_ = false;
    bool write_failed_ = false;
    bool timed_out_ = false;
    bool stopped_ = false;
};

// Saves the SIGPIPE disposition before httplib::Server's constructor sets it to SIG_IGN,
// so that creating a server does not change the process (we send with MSG_NOSIGNAL).
struct SigpipeGuard {
    SigpipeGuard();
    void restore() const;

private:
    struct sigaction saved_ {};
    bool valid_ = false;
};

class HttpFrontend : private SigpipeGuard, private httplib::Server {
public:
    HttpFrontend(VmControl& vm, const ApiLimits& limits);

    // Serves the requests of one connection until it closes, fails, idles past the
    // keep-alive timeout, asks to close, reaches the request limit, or `stopping` is set.
    // Returns true if the client may still be sending (a body was left unread): the caller
    // should drain a little before closing, so that the client reads the response.
    bool serve(ConnectionStream& stream, const std::atomic<bool>& stopping);

private:
    HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res);
    void respond(const httplib::Request& req, httplib::Response& res, const std::string& body);
    void on_error(const httplib::Request& req, httplib::Response& res) const;

    VmControl& vm_;
    ApiLimits limits_;
};

}  // namespace enlighten::api
