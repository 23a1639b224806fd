// netvsp: the network VSP that Linux's hv_netvsc drives (contract-network.md). One Nic is
// one VMBus network adapter: NVSP on its primary channel, RNDIS over NVSP, vRSS
// sub-channels, in front of one net::Backend.
//
// (The public interface below is what the VMM and the API use.)
//
//   guest TX: channel ring ─► Worker (one thread per open channel, primary and sub-channels)
//               NVSP message ─► SEND_RNDIS_PKT: send section copy + GPA ranges as one byte
//               stream ─► RNDIS walk (rndis.hpp) ─► PACKET: Backend::send(frame, Offload)
//                                                  └► control: handle_control ─► response
//             ◄─ one completion per request, into ring room reserved before the packet is taken
//   guest RX: Backend thread ─► Receiver::receive: RSS steering (Toeplitz over the table),
//             a free receive section of that channel, RNDIS PACKET + PPIs + frame written
//             into it; flush(): one type-7 packet per channel; the guest's completion frees
//             the sections (on the channel's worker).
//   control:  RNDIS responses and link indications are type-7 packets on the primary
//             (channel_type 1) in sections of their own (a reserve of 16 that data never takes).
//
// Threads: the vmbus::Device calls (attach, open, close, retarget, reset, detach) come on
// the control loop; open starts a worker thread for the channel, close stops and joins it
// (close blocks the control loop only for that: a worker never waits for anything). Each
// worker drains its own ring (after a burst it looks again 200 µs later with the guest's
// doorbell still masked, and the burst's TX completions share one interrupt:
// kTxPollWindowNs, kMaxDeferredCompletions); the backend calls the Receiver (receive,
// flush) from its own thread(s), or from inside Backend::send on a worker (slirp's
// immediate answers); set_link and status from API threads. Backend::set_receiver and
// set_mtu are called on the control loop only (posted there by the workers), never under a
// Nic lock.
// Nothing here blocks but close's join; the backend's send never blocks.
// Locks: one Nic mutex (protocol state, buffers, section allocator, per-channel RX state
// and counters), a leaf except that ChannelQueue::send/commit, GpadlView and
// ChannelControl calls are made under it (Nic -> server -> queue -> SynIC). Backend calls
// are made without it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/net/net.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::netvsp {

struct NicOptions {
    std::string name = "net0";  // the device id
    vmbus::Guid instance;
    std::array<uint8_t, 6> mac{};
    uint16_t max_queues = 64;  // vRSS queues offered (the guest uses min(this, vCPUs, 64))
    bool link_up = true;
};

struct QueueCounters {
    uint16_t index = 0;  // channel index
    uint32_t target_vp = 0;
    uint64_t rx_packets = 0, rx_bytes = 0, rx_dropped = 0;
    uint64_t tx_packets = 0, tx_bytes = 0, tx_dropped = 0;
};

struct NicStatus {
    std::string id;
    std::array<uint8_t, 6> mac{};
    bool link_up = true;       // as the host drives it
    bool guest_ready = false;  // RNDIS initialised and the packet filter set
    uint32_t mtu = 0;          // from the guest's NDIS_CONFIG (0 before)
    uint32_t nvsp_version = 0;
    uint16_t queues = 0;       // channels open now
    uint16_t max_queues = 0;
    net::BackendStatus backend;
    std::vector<QueueCounters> per_queue;
};

class Nic final : public vmbus::Device, public std::enable_shared_from_this<Nic> {
public:
    // Makes the NIC around a running backend (its receiver is set when the guest is ready).
    static Result<std::shared_ptr<Nic>> create(NicOptions options, std::unique_ptr<net::Backend> backend);
    ~Nic() override;

    // Down: the guest gets MEDIA_DISCONNECT (NO-CARRIER) and no frames; up: MEDIA_CONNECT.
    // Any thread.
    void set_link(bool up);
    [[nodiscard]] NicStatus status() const;
    [[nodiscard]] const std::string& id() const;

    // vmbus::Device
    [[nodiscard]] const vmbus::OfferParams& offer() const override;
    [[nodiscard]] uint16_t max_subchannels() const override;
    void attach(const vmbus::DeviceResources& resources) override;
    void open(const vmbus::OpenRequest& request, std::shared_ptr<vmbus::ChannelQueue> queue,
              vmbus::OpenDone done) override;
    void close(uint16_t index, vmbus::CloseDone done) override;
    void retarget(uint16_t index, uint32_t vp) override;
    void reset() override;
    void detach() override;

private:
    struct Impl;  // netvsp.cpp
    explicit Nic(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

}  // namespace enlighten::netvsp
