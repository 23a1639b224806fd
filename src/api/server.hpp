// The management API server: HTTP/1.1 + JSON on a Unix socket (Cloud Hypervisor /
// Firecracker style), calling a VmControl. See docs/api.md and docs/openapi.yaml.
//
//   ApiServer api(vm_control, {.socket_path = cfg.api_socket});
//   if (auto ok = api.start(); !ok) ...;   // listening when this returns
//   ...
//   api.stop();                            // before the VmControl goes away
//
// Threads: `threads` workers (default 2), each accepting and serving one connection at a
// time; nothing else. stop() wakes them (an eventfd in every poll), closes the connections
// and joins; a VmControl call in progress finishes first.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "api/vm_control.hpp"
#include "common/result.hpp"

namespace enlighten::api {

// Bounds on what one client can make the server hold or wait for.
struct ApiLimits {
    size_t max_header_bytes = 16 * 1024;  // request line + headers (431 beyond)
    size_t max_body_bytes = 64 * 1024;    // Content-Length (413 beyond)
    std::chrono::milliseconds io_timeout{5000};          // a stalled read or write
    std::chrono::milliseconds keep_alive_timeout{5000};  // idle between requests
    size_t keep_alive_max_requests = 100;
};

struct ApiServerOptions {
    std::string socket_path;
    unsigned threads = 2;
    ApiLimits limits{};
};

class ApiServer {
public:
    ApiServer(VmControl& vm, ApiServerOptions options);
    ~ApiServer();  // stop()
    ApiServer(const ApiServer&) = delete;
    ApiServer& operator=(const ApiServer&) = delete;

    // Creates the socket (mode 0600) and starts the workers. Refuses a path that exists and
    // is not a socket, or that another process is listening on; replaces a stale socket.
    Result<> start();
    // Stops the workers, closes every connection, joins, and removes the socket file (if it
    // is still ours). Idempotent; no VmControl call is made after it returns.
    void stop();

    [[nodiscard]] const std::string& socket_path() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace enlighten::api
