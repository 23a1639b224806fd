// The framework all integration services share: the channel offer, version negotiation
// (ICMSGTYPE_NEGOTIATE, as the guest's vmbus_prep_negotiate_resp() answers it), and
// host-initiated request/response transactions, one at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "devices/ic/protocol.hpp"
#include "vmbus/device.hpp"

namespace enlighten::ic {

// The versions we offer the guest, newest first.
inline constexpr uint32_t kFrameworkVersions[] = {0x30000, 0x10000};

enum class IcState { Closed, Negotiating, Ready, Failed };
const char* to_string(IcState s);

// The guest's answer to a request: its status and the message body (after the IC header).
struct IcResponse {
    uint32_t status = 0;
    std::vector<uint8_t> body;
};

class IcDevice : public vmbus::Device, public std::enable_shared_from_this<IcDevice> {
public:
    IcDevice(vmbus::OfferParams offer, uint16_t msg_type, std::vector<uint32_t> versions);

    const vmbus::OfferParams& offer() const override { return offer_; }
    void on_open(vmbus::ChannelEndpoint& endpoint) override;
    void on_close() override;
    void on_packet(const vmbus::IncomingPacket& packet) override;

    [[nodiscard]] IcState state() const;
    // Negotiated message version, e.g. 0x30002 (0 before negotiation).
    [[nodiscard]] uint32_t version() const;
    // Waits until negotiation finished (or failed, or the channel closed).
    bool wait_ready(std::chrono::milliseconds timeout) const;

    // Sends one request (body after the IC header) and waits for the guest's response.
    // One transaction at a time; others wait their turn within `timeout`.
    Result<IcResponse> transact(std::span<const uint8_t> body, std::chrono::milliseconds timeout);

    // Encodes a negotiate request offering `framework` and `versions` (exposed for tests).
    static std::vector<uint8_t> negotiate_request(std::span<const uint32_t> framework, std::span<const uint32_t> versions);
    // Decodes the guest's negotiate response: the chosen framework and message versions.
    static Result<std::pair<uint32_t, uint32_t>> parse_negotiate_response(std::span<const uint8_t> packet);

protected:
    // A weak reference to this service as its own type, for background tasks.
    template <typename T>
    std::weak_ptr<T> weak_self() {
        return std::static_pointer_cast<T>(shared_from_this());
    }
    // Hooks for the services.
    virtual void on_ready() {}
    virtual void on_closed() {}
    // A packet that is not a response to our transaction (the guest does not send those
    // for the services we implement); the default logs it.
    virtual void on_unsolicited(const IcMsgHeader& hdr, std::span<const uint8_t> body);

private:
    std::vector<uint8_t> build_request(uint16_t type, std::span<const uint8_t> body, uint8_t txn) const;

    vmbus::OfferParams offer_;
    const uint16_t msg_type_;
    const std::vector<uint32_t> versions_;

    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    vmbus::ChannelEndpoint* endpoint_ = nullptr;
    IcState state_ = IcState::Closed;
    uint32_t framework_version_ = 0;
    uint32_t version_ = 0;
    uint64_t next_trans_id_ = 1;
    uint64_t negotiate_trans_id_ = 0;
    std::optional<uint64_t> waiting_for_;  // trans id of the transaction in flight
    std::optional<IcResponse> response_;
    bool busy_ = false;
    uint64_t generation_ = 0;  // bumped on every open/close
};

}  // namespace enlighten::ic
