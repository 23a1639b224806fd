// The framework all integration services share: the channel offer, version negotiation
// (ICMSGTYPE_NEGOTIATE, as the guest's vmbus_prep_negotiate_resp() answers it), and
// host-initiated request/response transactions.
//
// Each service has its own queue of transactions, one in flight at a time (hv_utils reads
// one packet per interrupt and its daemons answer one request at a time), each with its own
// deadline; a service whose guest side queues safely (file copy: contract-services.md §1.3)
// may keep more in flight. Transactions complete from callbacks on the control loop; nothing
// waits on a shared thread, so a slow KVP daemon cannot make the heartbeat look lost.
//
// Threads: the hooks (on_ready, on_packet, ...) and transaction callbacks run on the control
// loop. transact() may be called from any thread; transact_wait() and wait_ready() from any
// thread but the loop's (they block until the loop answers). state()/version() anywhere.
// The service's mutex is a leaf below the queue: it is never held while sending or calling
// a callback.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/thread_annotations.hpp"
#include "devices/ic/protocol.hpp"
#include "vmbus/simple_device.hpp"

namespace enlighten::ic {

// The versions we offer the guest, newest first.
inline constexpr uint32_t kFrameworkVersions[] = {0x30000, 0x10000};
// Requests waiting per service beyond the one in flight; more are refused with Errc::Busy.
inline constexpr size_t kMaxQueuedTransactions = 64;

enum class IcState { Closed, Negotiating, Ready, Failed };
const char* to_string(IcState s);

// What Hyper-V's integration-service status says of a service in this boot: no contact
// until the guest's service first negotiates, OK while it is connected, lost communication
// once it was connected and its channel closed (its driver went away) or, for the
// heartbeat, once the beats stopped coming back.
enum class IcContact { NoContact, Ok, Lost };
const char* to_string(IcContact c);  // "No Contact", "OK", "Lost Communication"

// The guest's answer to a request: its status, the message type it answered with and the
// message body (after the IC header).
struct IcResponse {
    uint32_t status = 0;
    uint16_t msg_type = 0;
    std::vector<uint8_t> body;
};

class IcDevice : public vmbus::SimpleDevice, public std::enable_shared_from_this<IcDevice> {
public:
    using Callback = std::move_only_function<void(Result<IcResponse>)>;

    // `max_in_flight`: requests sent to the guest and not yet answered, at most (1 for
    // every service but file copy).
    IcDevice(vmbus::OfferParams offer, uint16_t msg_type, std::vector<uint32_t> versions, size_t max_in_flight = 1);

    [[nodiscard]] IcState state() const;
    // Negotiated message version, e.g. 0x30002 (0 before negotiation).
    [[nodiscard]] uint32_t version() const;
    // Hyper-V's status of the service (IcContact); the heartbeat adds its beats.
    [[nodiscard]] virtual IcContact contact() const;
    // A new boot's bus: no contact yet.
    void attach(const vmbus::DeviceResources& resources) override;
    // Waits until negotiation finished (or failed, or the channel closed). Not on the loop.
    bool wait_ready(std::chrono::milliseconds timeout) const;

    // Queues one request (body after the IC header). `done` runs on the loop with the guest's
    // answer, or Errc::Timeout (no answer within `timeout` of this call), Errc::Closed (not
    // connected, or the channel closed), Errc::Busy (too many queued).
    void transact(std::vector<uint8_t> body, std::chrono::milliseconds timeout, Callback done);
    // The same, waiting for the answer. Not on the loop thread (Errc::Invalid there).
    Result<IcResponse> transact_wait(std::vector<uint8_t> body, std::chrono::milliseconds timeout);

    // Encodes a negotiate request offering `framework` and `versions` (exposed for tests).
    static std::vector<uint8_t> negotiate_request(std::span<const uint32_t> framework, std::span<const uint32_t> versions);
    // Decodes the guest's negotiate response: the chosen framework and message versions.
    static Result<std::pair<uint32_t, uint32_t>> parse_negotiate_response(std::span<const uint8_t> packet);

protected:
    // A weak reference to this service as its own type, for callbacks and timers.
    template <typename T>
    std::weak_ptr<T> weak_self() {
        return std::static_pointer_cast<T>(shared_from_this());
    }
    // Hooks for the services, on the loop.
    virtual void on_ready() {}
    virtual void on_disconnected() {}
    // A packet that is not a response to our transaction (the guest does not send those
    // for the services we implement); the default logs it.
    virtual void on_unsolicited(const IcMsgHeader& hdr, std::span<const uint8_t> body);

private:
    struct Pending {
        uint64_t id = 0;  // packet trans_id
        std::vector<uint8_t> body;
        Callback done;
        uint64_t timer = 0;
        bool sent = false;  // in the guest's ring (false: it found the ring full; sent again on space)
    };
    void on_opened() final;
    void on_closed() final;
    void on_packet(const vmbus::PacketView& packet) final;
    void on_ring_space() final;
    void enqueue(std::shared_ptr<Pending> p, std::chrono::milliseconds timeout);
    void start_next();
    bool send_pending(std::shared_ptr<Pending> p);
    void finish(uint64_t id, Result<IcResponse> result);
    void fail_all(const Error& e);
    [[nodiscard]] std::vector<uint8_t> build_request(uint16_t type, std::span<const uint8_t> body, uint8_t txn) const;
    void set_state(IcState s, uint32_t framework = 0, uint32_t version = 0);

    const uint16_t msg_type_;
    const std::vector<uint32_t> versions_;
    const size_t max_in_flight_;

    // Loop thread only.
    std::deque<std::shared_ptr<Pending>> queue_;      // not sent yet
    std::deque<std::shared_ptr<Pending>> in_flight_;  // sent in this order (only the last may wait for ring space)
    uint64_t next_trans_id_ = 1;
    uint64_t negotiate_trans_id_ = 0;
    bool negotiate_pending_ = false;  // the negotiate request found the ring full

    // Read from any thread.
    mutable Mutex mu_;
    mutable std::condition_variable_any cv_;
    IcState state_ ENL_GUARDED_BY(mu_) = IcState::Closed;
    uint32_t framework_version_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t version_ ENL_GUARDED_BY(mu_) = 0;
    bool had_contact_ ENL_GUARDED_BY(mu_) = false;  // Ready at least once on this bus
};

}  // namespace enlighten::ic
