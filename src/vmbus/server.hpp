// The VMBus server: the host end of the channel-management protocol that the guest's
// hv_vmbus speaks over SynIC messages (linux-hv-guest-contract §6): version negotiation,
// offers, GPADLs, open/close, rescind, unload, and the doorbells of open channels.
//
// All protocol state lives here and is driven only by guest messages and host calls; it is
// unit-tested without a VM. Replies go out through a MessageSink (in the VMM: the SynIC).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "hv/tlfs.hpp"
#include "kvm/guest_memory.hpp"
#include "vmbus/channel.hpp"
#include "vmbus/device.hpp"
#include "vmbus/protocol.hpp"

namespace enlighten::vmbus {

class MessageSink {
public:
    virtual ~MessageSink() = default;
    // Posts one VMBus message (header included) to a VP's SINT. False if it could not be queued.
    virtual bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> message) = 0;
    // Sets event flag `flag` (a channel's relid) in the VP's SINT event flags and interrupts it.
    virtual bool signal(uint32_t vp, uint32_t sint, uint32_t flag) = 0;
};

// Versions we accept, newest first (all that Linux 6.1 offers).
inline constexpr uint32_t kSupportedVersions[] = {kVersionWin10V5_3, kVersionWin10V5_2, kVersionWin10V5_1,
                                                  kVersionWin10V5,   kVersionWin10V4_1, kVersionWin10,
                                                  kVersionWin8_1,    kVersionWin8};

[[nodiscard]] constexpr bool version_supported(uint32_t v) {
    for (uint32_t s : kSupportedVersions)
        if (s == v) return true;
    return false;
}

[[nodiscard]] std::string version_string(uint32_t v);

// Limits on what a guest can make us hold.
inline constexpr uint32_t kMaxRelid = 2047;             // MAX_CHANNEL_RELIDS - 1
inline constexpr uint64_t kMaxGpadlPages = 1ULL << 16;  // 256 MiB in one GPADL
inline constexpr size_t kMaxGpadls = 8192;
inline constexpr uint32_t kChannelConnectionBase = 0x10000;  // connection id = base + relid

struct ServerStats {
    uint64_t messages = 0;
    uint64_t bad_messages = 0;
    uint64_t connects = 0;
    uint64_t unloads = 0;
    uint64_t gpadls_created = 0;
    uint64_t gpadls_torn_down = 0;
    uint64_t opens = 0;
    uint64_t closes = 0;
};

struct ChannelSnapshot {
    uint32_t relid = 0;
    std::string name;
    Guid class_id;
    Guid instance_id;
    ChannelState state = ChannelState::Offered;
    uint32_t target_vp = 0;
};

class Server {
public:
    Server(MessageSink& sink, const GuestMemory& memory, uint32_t num_vps);
    ~Server();

    // Adds a device. It is offered at once if the guest already asked for offers, else
    // when it does. Returns the relid.
    Result<uint32_t> add_device(std::shared_ptr<Device> device);
    // Withdraws a device (RESCIND_CHANNELOFFER); the relid is reused after RELID_RELEASED.
    Result<> rescind(uint32_t relid);

    // A message the guest posted with HvPostMessage. Returns the hypercall status: Success
    // for anything delivered to the right connection (protocol errors are handled here, not
    // reported through the hypercall), InvalidConnectionId otherwise.
    hv::Status handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload);
    // HvSignalEvent from the guest: a channel's doorbell.
    hv::Status handle_event(uint32_t vp, uint32_t connection_id, uint16_t flag);

    [[nodiscard]] bool connected() const;
    [[nodiscard]] uint32_t version() const;  // 0 until connected
    [[nodiscard]] ServerStats stats() const;
    [[nodiscard]] std::vector<ChannelSnapshot> channels() const;
    [[nodiscard]] size_t gpadl_count() const;
    // The pages of a GPADL the guest created for `relid` (for VSPs with shared buffers).
    [[nodiscard]] std::optional<std::vector<uint64_t>> gpadl_pages(uint32_t relid, uint32_t handle) const;

    // Told (outside the lock) when the connection state changes.
    std::function<void()> on_state_change;

private:
    struct Gpadl {
        uint32_t relid = 0;
        uint32_t byte_count = 0;
        uint32_t byte_offset = 0;
        uint64_t expected_pages = 0;
        std::vector<uint64_t> pfns;
        bool in_use = false;  // backs an open channel's rings
        [[nodiscard]] bool complete() const { return pfns.size() == expected_pages; }
    };
    struct Entry {
        std::shared_ptr<Channel> channel;
        ChannelState state = ChannelState::Offered;
        bool offered = false;  // OFFERCHANNEL sent in this connection
        uint32_t ring_gpadl = 0;
    };

    void on_initiate_contact(uint32_t vp, const InitiateContact& msg);
    void on_request_offers();
    void on_unload(uint32_t vp);
    void on_gpadl_header(std::span<const uint8_t> payload);
    void on_gpadl_body(std::span<const uint8_t> payload);
    void on_gpadl_teardown(const GpadlTeardown& msg);
    void on_open_channel(const OpenChannel& msg);
    void on_close_channel(uint32_t relid);
    void on_relid_released(uint32_t relid);
    void on_modify_channel(const ModifyChannel& msg);
    void finish_gpadl(uint32_t handle, Gpadl& g);
    void send_offer(Entry& e);
    void close_channel(Entry& e);
    void reset_connection();
    Entry* find(uint32_t relid);
    template <typename T>
    void send(const T& msg);
    void send_to(uint32_t vp, std::span<const uint8_t> bytes);

    MessageSink& sink_;
    const GuestMemory& memory_;
    const uint32_t num_vps_;
    const uint64_t max_gpadl_pages_total_;
    mutable std::mutex mu_;
    uint32_t version_ = 0;
    uint32_t target_vp_ = 0;
    uint32_t msg_sint_ = kMessageSint;
    bool offers_requested_ = false;
    std::map<uint32_t, Entry> channels_;                       // by relid
    std::map<uint32_t, std::shared_ptr<Channel>> by_connection_;  // by connection id
    std::map<uint32_t, Gpadl> gpadls_;                          // by handle
    uint64_t gpadl_pages_total_ = 0;
    ServerStats stats_;
};

}  // namespace enlighten::vmbus
