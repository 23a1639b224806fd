// The management API server: HTTP/1.1 + JSON on a Unix socket (Cloud Hypervisor /
// Firecracker style), calling a VmControl. See docs/api.md ("Limits") and docs/openapi.yaml.
// With WebOptions it also listens on TCP for the web console (api/web.hpp: the page, noVNC's
// files, the same API behind a token, and WebSockets to the VM's VNC server).
//
//   ApiServer api(vm_control, {.socket_path = cfg.api_socket});
//   if (auto ok = api.start(); !ok) ...;   // listening when this returns
//   ...
//   api.stop();                            // before the VmControl goes away
//
// Threads:
//   "enl-api-io"     one event loop (common/event_loop.hpp): accepts, reads and parses every
//                    connection without blocking (an HttpSession each), enforces the caps and
//                    deadlines, writes the answers. It never calls the VmControl. It also
//                    carries the web console's WebSockets: frames between a browser and a
//                    socketpair to the VNC server (WebOptions::console, called here; it must
//                    not block), both sides nonblocking and bounded.
//   "enl-api-N"      `threads` quick workers: requests of Lane::Quick (router.hpp: vm.info,
//                    vm.power-off, vm.reset, the GETs..., and the web's static files), queued FIFO; the queue holds at
//                    most one request per connection, so it is bounded by max_connections.
//   "enl-api-gN"     max_guest_calls guest workers: requests of Lane::Guest (KVP, shutdown,
//                    copy-file, checkpoints...), which may wait for the guest for seconds or
//                    minutes. One is started only when a guest worker is free; otherwise the
//                    request is answered 503 at once. So no number of slow guest calls can
//                    hold up a quick one.
// A connection waits while its request runs (no further request is read from it), so each
// connection has at most one request anywhere in the server.
// Lock order: the server's queue mutex is a leaf (no VmControl call, no loop call under it);
// workers call the VmControl with no server lock held, then post the answer to the loop
// (whose mutex is a leaf too). start() and stop() are for the owner's thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "api/vm_control.hpp"
#include "common/fd.hpp"
#include "common/result.hpp"

namespace enlighten::api {

// Bounds on what clients can make the server hold or wait for.
struct ApiLimits {
    size_t max_header_bytes = 16 * 1024;  // request line + headers (431 beyond)
    size_t max_body_bytes = 64 * 1024;    // Content-Length (413 beyond)
    // A request must arrive whole within this from its first byte (408 then, whatever the
    // pace: a byte a second is no way to hold a connection), and a client must take an
    // answer within this from when it is ready (or the connection is closed).
    std::chrono::milliseconds io_timeout{5000};
    // A connection without a request in progress (before the first one, or between
    // requests) is closed after this.
    std::chrono::milliseconds keep_alive_timeout{5000};
    size_t keep_alive_max_requests = 100;
    // Open connections. Beyond it a new connection gets a 503 with a JSON error, and is
    // closed at once.
    size_t max_connections = 256;
    // Lane::Guest calls that may run at once; one more is answered 503 (Retry-After: 1).
    unsigned max_guest_calls = 4;
};

// The web console's listener (--web; api/web.hpp says what it serves).
struct WebOptions {
    std::string host = "127.0.0.1";  // an IPv4 address
    uint16_t port = 8080;
    std::string token;                           // 32 hex digits (make_web_token())
    std::string novnc_dir = "/usr/share/novnc";  // Debian's package novnc
    // Opens a connection to the VM's VNC server for one browser (a socketpair end, nonblocking
    // or not); called on the I/O thread, so it must not block. Unset: no console, /websockify
    // answers 503.
    std::function<Result<UniqueFd>()> console;
};
// --web HOST:PORT or :PORT (then 127.0.0.1); the token is left empty.
Result<WebOptions> parse_web_endpoint(std::string_view spec);
// 128 bits from getrandom(), as 32 lowercase hex digits.
Result<std::string> make_web_token();
// The address to open, with its token.
std::string web_url(const WebOptions& web);

struct ApiServerOptions {
    std::string socket_path;  // may be empty when `web` is set (then only the web listens)
    unsigned threads = 2;  // quick workers
    ApiLimits limits{};
    std::optional<WebOptions> web{};  // --web: the web console's listener too
};

class ApiServer {
public:
    ApiServer(VmControl& vm, ApiServerOptions options);
    ~ApiServer();  // stop()
    ApiServer(const ApiServer&) = delete;
    ApiServer& operator=(const ApiServer&) = delete;

    // Creates the socket (mode 0600) and starts the threads. Refuses a path that exists and
    // is not a socket, or that another process is listening on; replaces a stale socket.
    Result<> start();
    // Stops the threads, closes every connection (requests still queued are dropped
    // unanswered; a VmControl call in progress finishes first), joins, and removes the
    // socket file (if it is still ours). Idempotent; no VmControl call is made after it
    // returns.
    void stop();

    [[nodiscard]] const std::string& socket_path() const;
    // The web listener's port (the one chosen by the kernel when options.web->port is 0);
    // 0 without one. After start().
    [[nodiscard]] uint16_t web_port() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace enlighten::api
