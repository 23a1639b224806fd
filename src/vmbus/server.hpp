// The VMBus server: the host end of the channel-management protocol that the guest's
// hv_vmbus speaks over SynIC messages (linux-hv-guest-contract §6).
//
// Protocol state lives here and is driven only by messages; it is unit-tested without a VM.
// Replies go out through a MessageSink (in the VMM: the SynIC message queues).
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>

#include "hv/tlfs.hpp"
#include "vmbus/protocol.hpp"

namespace enlighten::vmbus {

class MessageSink {
public:
    virtual ~MessageSink() = default;
    // Posts one VMBus message (header included) to a VP's SINT. False if it could not be queued.
    virtual bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> message) = 0;
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

struct ServerStats {
    uint64_t messages = 0;
    uint64_t bad_messages = 0;
    uint64_t connects = 0;
    uint64_t unloads = 0;
};

class Server {
public:
    Server(MessageSink& sink, uint32_t num_vps) : sink_(sink), num_vps_(num_vps) {}

    // A message the guest posted with HvPostMessage. Returns the hypercall status: Success
    // for anything delivered to the right connection (protocol errors are handled here, not
    // reported through the hypercall), InvalidConnectionId otherwise.
    hv::Status handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload);

    // HvSignalEvent from the guest (channel doorbells).
    hv::Status handle_event(uint32_t vp, uint32_t connection_id, uint16_t flag);

    [[nodiscard]] bool connected() const;
    [[nodiscard]] uint32_t version() const;  // 0 until connected
    [[nodiscard]] ServerStats stats() const;

    // Tells whoever waits (tests, the API) that the connection state changed.
    std::function<void()> on_state_change;

private:
    void on_initiate_contact(uint32_t vp, const InitiateContact& msg);
    void on_request_offers();
    void on_unload(uint32_t vp);
    void reset_connection();
    template <typename T>
    void send(const T& msg);
    void send_to(uint32_t vp, std::span<const uint8_t> bytes);

    MessageSink& sink_;
    const uint32_t num_vps_;
    mutable std::mutex mu_;
    uint32_t version_ = 0;
    uint32_t target_vp_ = 0;
    uint32_t msg_sint_ = kMessageSint;
    ServerStats stats_;
};

}  // namespace enlighten::vmbus
