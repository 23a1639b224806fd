// One VMBus channel on the host side: the device behind an offer, and, while the guest
// has it open, its two rings and the doorbells in both directions.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "vmbus/device.hpp"
#include "vmbus/ring.hpp"

namespace enlighten::vmbus {

class MessageSink;

enum class ChannelState { Offered, Open, Closed, Failed, Rescinded, Released };
const char* to_string(ChannelState s);

class Channel final : public ChannelEndpoint {
public:
    Channel(uint32_t relid, uint32_t connection_id, std::shared_ptr<Device> device, MessageSink& sink,
            const GuestMemory& memory);
    ~Channel() override;

    [[nodiscard]] uint32_t relid() const { return relid_; }
    [[nodiscard]] uint32_t connection_id() const { return connection_id_; }
    [[nodiscard]] Device& device() const { return *device_; }
    [[nodiscard]] uint32_t target_vp() const { return target_vp_.load(); }
    void set_target_vp(uint32_t vp) { target_vp_ = vp; }

    // Maps the rings from the ring GPADL's pages: the first `downstream_offset` pages are
    // the guest-to-host ring, the rest the host-to-guest ring.
    Result<> open(std::span<const uint64_t> ring_pfns, uint32_t downstream_offset, uint32_t target_vp, uint32_t sint);
    // Lets the device talk (after OPENCHANNEL_RESULT went out).
    void start();
    // Stops using the rings and tells the device. Safe to call more than once.
    void close();
    [[nodiscard]] bool is_open() const { return open_.load(std::memory_order_acquire); }
    // The ring turned out corrupt: the channel was closed on the host side.
    [[nodiscard]] bool failed() const { return failed_.load(); }

    // The guest signalled this channel (HvSignalEvent): new packets and/or room in our ring.
    void on_guest_signal();

    // ChannelEndpoint
    Result<SendStatus> send(uint16_t type, uint16_t flags, uint64_t trans_id, std::span<const uint8_t> payload) override;
    const GuestMemory& memory() const override { return memory_; }

private:
    void drain_inbound();
    void signal_guest();
    void close_rings();

    const uint32_t relid_;
    const uint32_t connection_id_;
    std::shared_ptr<Device> device_;
    MessageSink& sink_;
    const GuestMemory& memory_;
    std::atomic<uint32_t> target_vp_{0};
    uint32_t sint_ = 2;

    // Lock order: in_mu_ before out_mu_ (a device sends while handling a packet).
    std::mutex in_mu_;
    std::optional<InRing> in_;
    std::vector<uint8_t> packet_buf_;
    std::mutex out_mu_;
    std::optional<OutRing> out_;
    bool waiting_for_room_ = false;

    std::atomic<bool> open_{false};
    std::atomic<bool> started_{false};
    std::atomic<bool> failed_{false};
};

}  // namespace enlighten::vmbus
