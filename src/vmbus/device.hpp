// The interface every VSP implements, and what it uses to talk to its guest driver.
// A VSP sees parsed packets and sends packets; it never touches rings, GPADLs or SynIC.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "common/result.hpp"
#include "vmbus/protocol.hpp"
#include "vmbus/ring.hpp"

namespace enlighten {
class GuestMemory;
}

namespace enlighten::vmbus {

// What goes into the OFFERCHANNEL message, plus the limits of the guest driver.
struct OfferParams {
    std::string name;  // for logs and the API, e.g. "heartbeat"
    Guid class_id;     // if_type
    Guid instance_id;  // if_instance: unique
    uint16_t flags = 0;
    uint16_t mmio_megabytes = 0;
    std::array<uint8_t, 120> user_def{};
    uint16_t sub_channel_index = 0;
    // The guest driver's max_pkt_size: no packet we write may be longer (a longer one
    // desynchronises the guest's ring; linux-hv-guest-contract §7.3).
    uint32_t max_packet_to_guest = 4096;
    // The longest packet we accept from the guest.
    uint32_t max_packet_from_guest = 4096;
    // The guest reads one packet per interrupt (hv_utils direct mode): signal every write.
    bool signal_every_packet = false;
};

// A packet from the guest.
struct IncomingPacket {
    uint16_t type = 0;
    uint16_t flags = 0;
    uint64_t trans_id = 0;
    std::span<const uint8_t> extra;    // between the descriptor and the payload
    std::span<const uint8_t> payload;
    [[nodiscard]] bool completion_requested() const { return flags & kPacketFlagCompletionRequested; }
};

// The host end of an open channel, as a device sees it. Valid from Device::on_open until
// Device::on_close returns; sends from other threads are allowed.
class ChannelEndpoint {
public:
    virtual ~ChannelEndpoint() = default;
    enum class SendStatus { Sent, RingFull, Closed };
    // A packet of `type` (inband or completion) with the payload; RingFull means the guest
    // has not made room yet: the device is told by on_ring_space() when it has.
    virtual Result<SendStatus> send(uint16_t type, uint16_t flags, uint64_t trans_id, std::span<const uint8_t> payload) = 0;
    virtual const GuestMemory& memory() const = 0;
};

class Device {
public:
    virtual ~Device() = default;
    [[nodiscard]] virtual const OfferParams& offer() const = 0;
    // The guest opened the channel; `endpoint` is usable until on_close. Called after the
    // OPENCHANNEL_RESULT went out, so the device may send at once.
    virtual void on_open(ChannelEndpoint& endpoint) = 0;
    // The channel is closed (guest close, rescind, unload, or a broken ring). No further
    // packets arrive and sends fail with Closed.
    virtual void on_close() = 0;
    // One packet from the guest, on the thread that handled the guest's signal.
    virtual void on_packet(const IncomingPacket& packet) = 0;
    // The guest made room in a ring that was full.
    virtual void on_ring_space() {}
};

}  // namespace enlighten::vmbus
