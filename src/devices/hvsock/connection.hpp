// One hv_sock connection: a VMBus channel of its own (an OFFERCHANNEL with the TLNPI flag,
// contract-services §4.3) relayed to one host Unix stream socket. The service
// (devices/hvsock/service.hpp) makes it for a host client's CONNECT or a guest connect().
//
// What crosses (contract-services §4.7, §4.8, §8.1):
//   guest data packet (<= 16 KiB)  -> written to the Unix socket
//   guest FIN (data_size 0)        -> shutdown(SHUT_WR) on the Unix socket
//   Unix socket data               -> data packets of at most 16 KiB
//   Unix socket EOF                -> one FIN packet
//   both FINs crossed, any error,  -> end(): the Unix socket is closed and the service
//   the guest closing the channel     rescinds the channel (the guest needs the rescind to
//                                      finish its close; it can still read what is in its ring)
//
// Back-pressure both ways, with nothing buffered beyond one packet: a guest packet is taken
// from the ring only once the previous one is written to the Unix socket (EPOLLOUT
// otherwise), and the Unix socket is read only into room reserved in the guest's ring (the
// queue asks the guest for a doorbell when it frees room). A packet that breaks the pipe
// format ends the connection.
//
// Threads: everything runs on the VM's loop (the VMBus control loop): the Device calls, the
// Unix socket's and the doorbell's callbacks, the open timer and the service's calls. No
// locks of its own; the queue's and the server's are taken below it (device -> server ->
// queue). Nothing blocks: the Unix socket is non-blocking.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "vmbus/device.hpp"
#include "vmbus/queue.hpp"

namespace enlighten::hvsock {

enum class Origin { Host, Guest };  // who connected: a host client (CONNECT) or a guest connect()

struct ConnectionStats {
    uint64_t bytes_to_guest = 0;
    uint64_t bytes_from_guest = 0;
};

class Connection final : public vmbus::Device, public std::enable_shared_from_this<Connection> {
public:
    struct Params {
        uint64_t id = 0;            // the service's name for it
        Origin origin = Origin::Host;
        vmbus::Guid service;        // if_type: the guest-side port's service id
        vmbus::Guid instance;       // if_instance (unique among live channels)
        UniqueFd fd;                // the host side: a connected, non-blocking Unix stream socket
        EventLoop* loop = nullptr;  // the VM's loop
        // Runs once (on the loop) when the connection ends for any reason but detach(); the
        // service forgets it then, and rescinds its channel if `rescind` (not when the bus
        // already withdrew it: a reset, whose relid may belong to a new channel by then).
        // `why` is for logs.
        std::function<void(uint64_t id, const std::string& why, bool rescind)> on_end;
    };
    explicit Connection(Params p);
    ~Connection() override;

    // --- vmbus::Device (on the loop) ---
    [[nodiscard]] const vmbus::OfferParams& offer() const override { return offer_; }
    void attach(const vmbus::DeviceResources&) override {}
    void open(const vmbus::OpenRequest& request, std::shared_ptr<vmbus::ChannelQueue> queue,
              vmbus::OpenDone done) override;
    void opened(uint16_t index) override;
    void close(uint16_t index, vmbus::CloseDone done) override;
    void reset() override;

    // --- the service (on the loop) ---
    // After the offer went to the bus: watches the Unix socket (a client that hangs up
    // before the guest opens ends it) and ends the connection if the guest has not opened
    // the channel within `open_timeout`.
    void start(std::chrono::milliseconds open_timeout);
    // Ends it now (the service's abort); on_end follows.
    void abort(const std::string& why) { end(why); }
    // The machine goes away: close the Unix socket, no on_end, no more calls to the queue.
    void detach() override;

    [[nodiscard]] uint64_t id() const { return id_; }
    [[nodiscard]] Origin origin() const { return origin_; }
    [[nodiscard]] bool is_open() const { return queue_ != nullptr; }
    [[nodiscard]] bool ended() const { return ended_; }
    [[nodiscard]] const ConnectionStats& stats() const { return stats_; }

private:
    void on_doorbell();
    void on_socket(uint32_t events);
    void pump_from_guest();
    void pump_to_guest();
    bool flush_to_host();  // false: data still waits (EPOLLOUT) or the connection ended
    bool send_fin();
    void maybe_finish();
    void update_watch();
    void end(const std::string& why, bool rescind = true);
    void release_io();

    const uint64_t id_;
    const Origin origin_;
    vmbus::OfferParams offer_;
    UniqueFd fd_;
    EventLoop* const loop_;
    std::function<void(uint64_t, const std::string&, bool)> on_end_;

    std::shared_ptr<vmbus::ChannelQueue> queue_;
    EventLoop::WatchId queue_watch_ = 0;
    EventLoop::WatchId fd_watch_ = 0;
    uint32_t fd_events_ = 0;
    EventLoop::TimerId open_timer_ = 0;

    std::vector<uint8_t> to_host_;  // one guest packet's data not yet written to the socket
    size_t to_host_off_ = 0;
    std::vector<uint8_t> read_buf_;
    bool guest_fin_ = false;     // the guest's FIN arrived
    bool host_shut_ = false;     // ... and was passed on (shutdown(SHUT_WR))
    bool host_eof_ = false;      // the Unix socket read EOF
    bool host_hup_ = false;      // the Unix peer closed both ways (the socket is no longer watched)
    bool fin_pending_ = false;   // a FIN waits for room in the guest's ring
    bool fin_sent_ = false;
    bool ring_full_ = false;     // the guest's ring had no room: wait for its doorbell
    bool ended_ = false;
    ConnectionStats stats_;
};

}  // namespace enlighten::hvsock
