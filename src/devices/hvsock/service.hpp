// The VM's hv_sock service: `--vsock socket=PATH`. Host programs and guest AF_VSOCK sockets
// meet through Unix sockets, as Firecracker's and Cloud Hypervisor's hybrid vsock users know
// it (docs/vsock.md; contract-services §4 and §8.1):
//
//   host -> guest  a client connects to PATH and writes "CONNECT <port>\n"; the service
//                  offers an hv_sock channel (if_type = the port's service id, a random
//                  if_instance, "from host"); when the guest listener's hv_sock opens it, the
//                  client reads "OK <n>\n" (n: the port the guest sees as its peer, bytes 0-3
//                  of the instance), then the stream. Nobody listening: the guest never
//                  opens, and after the open timeout the client's socket is closed.
//   guest -> host  a guest connect() to CID 2 port P posts TL_CONNECT_REQUEST; the service
//                  connects to PATH_P and, if that works, offers the channel the guest waits
//                  for (if_type = S(P), if_instance = the guest socket's id). Otherwise it
//                  offers nothing and the guest's connect() times out (Linux 6.1 has no
//                  refusal message).
//
// Every connection is its own channel and its own Connection (devices/hvsock/connection.hpp);
// the channel is rescinded when the connection ends. Bounds: kMaxConnections live
// connections, kMaxPendingClients host clients that have not sent their line yet (each with
// a deadline), the server's bound on waiting guest requests, and the relid space.
//
// Threads: everything runs on the VM's loop: create, attach, detach, the destructor, the
// accept and client callbacks and the guest requests (the VMBus server posts them there).
// stats() from the loop too. No locks of its own; it calls the server (its lock comes after).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/result.hpp"
#include "devices/hvsock/connection.hpp"
#include "vmbus/server.hpp"

namespace enlighten::hvsock {

inline constexpr size_t kMaxConnections = 256;
inline constexpr size_t kMaxPendingClients = 64;

struct ServiceOptions {
    std::string socket_path;  // PATH: the service listens here; guest connects reach PATH_<port>
    // How long the guest has to open an offered channel (a host CONNECT to a port nobody
    // listens on waits this long; OpenVMM gives 2 s to host, 5 s to guest connections).
    std::chrono::milliseconds open_timeout{5000};
    // How long a host client has to send its CONNECT line.
    std::chrono::milliseconds line_timeout{10000};
};

struct ServiceStats {
    uint64_t host_connects = 0;     // CONNECT lines that led to an offer
    uint64_t guest_connects = 0;    // guest requests that led to an offer
    uint64_t refused = 0;           // requests of either side turned down
    uint64_t live = 0;              // connections now
    uint64_t bytes_to_guest = 0;    // of connections that ended
    uint64_t bytes_from_guest = 0;
};

class Service {
public:
    // Binds and listens on options.socket_path (a stale socket file there is replaced).
    static Result<std::unique_ptr<Service>> create(ServiceOptions options, EventLoop& loop);
    ~Service();  // closes everything and removes the socket file
    Service(const Service&) = delete;
    Service& operator=(const Service&) = delete;

    // Each boot, after the machine's devices were added and before its vCPUs start: serve
    // this VMBus (installs the server's TL_CONNECT handler).
    void attach(vmbus::Server& server);
    // The machine stops (before its VMBus shuts down): every connection ends, its host
    // socket closed, without rescinds (the bus goes away). Idempotent.
    void detach();

    // A guest TL_CONNECT_REQUEST (what the server's handler calls).
    void on_guest_connect(const vmbus::Guid& endpoint, const vmbus::Guid& service);

    [[nodiscard]] ServiceStats stats() const;
    [[nodiscard]] const std::string& socket_path() const { return options_.socket_path; }

private:
    struct Client {  // a host client that has not sent its CONNECT line yet
        UniqueFd fd;
        EventLoop::WatchId watch = 0;
        EventLoop::TimerId timer = 0;
        std::string line;
    };
    Service(ServiceOptions options, EventLoop& loop, UniqueFd listener);
    void on_accept();
    void on_client(uint64_t id);
    void drop_client(uint64_t id);
    void host_connect(UniqueFd fd, uint32_t port);
    Result<> add_connection(Origin origin, const vmbus::Guid& service, const vmbus::Guid& instance, UniqueFd fd);
    void on_end(uint64_t id, const std::string& why, bool rescind);
    [[nodiscard]] bool instance_taken(const vmbus::Guid& instance) const;

    const ServiceOptions options_;
    EventLoop& loop_;
    UniqueFd listener_;
    EventLoop::WatchId listen_watch_ = 0;
    vmbus::Server* server_ = nullptr;  // between attach and detach
    uint64_t next_id_ = 1;
    std::map<uint64_t, Client> clients_;
    struct Live {
        std::shared_ptr<Connection> conn;
        uint32_t relid = 0;
    };
    std::map<uint64_t, Live> conns_;
    ServiceStats stats_;
};

}  // namespace enlighten::hvsock
