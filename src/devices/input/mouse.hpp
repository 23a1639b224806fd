// The synthetic mouse VSP that Linux's hid_hyperv drives (contract-input-video §3): it
// approves synthhid 2.0, sends the device info at once after its answer (the order the guest
// needs), with an absolute pointer's report descriptor (045E:0621, X and Y in 0..32767,
// five buttons, a wheel), and after the guest's ACK sends 7-byte input reports. A position
// on the screen maps 1:1 onto the guest's. Motion is coalesced while the guest does not read
// its ring (only the latest position matters); button and wheel reports are kept in order,
// up to kMaxWaiting.
//
// Threads: the SimpleDevice hooks run on the control loop; move() and status() may be called
// from any thread (API workers, a display server). The device's mutex is a leaf, not held
// while the outbox (SimpleDevice::post_inband) sends.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/thread_annotations.hpp"
#include "vmbus/simple_device.hpp"

namespace enlighten::input {

// The pointer as a report carries it: absolute position 0..32767 on each axis.
struct PointerState {
    uint16_t x = 0;
    uint16_t y = 0;
    uint8_t buttons = 0;  // bit 0 left, 1 right, 2 middle, 3 side, 4 extra
    int16_t wheel = 0;    // detents, + away from the user
    bool operator==(const PointerState&) const = default;
};

struct MouseStatus {
    std::string state;  // "closed", "negotiating", "ready" (the guest acknowledged the device info)
    PointerState last;  // the last report sent
    uint64_t reports_sent = 0;
    uint64_t malformed = 0;
};

class MouseDevice final : public vmbus::SimpleDevice {
public:
    static constexpr size_t kMaxWaiting = 256;

    explicit MouseDevice(const std::string& instance_id);

    // One report. Errc::Closed before the guest's driver acknowledged the device info;
    // Errc::Busy when button or wheel reports already fill the outbox.
    Result<> move(PointerState state) ENL_EXCLUDES(mu_);
    [[nodiscard]] MouseStatus status() const ENL_EXCLUDES(mu_);

    // The scaling a display uses: pixel p of a line of `size` pixels -> 0..32767 (as OpenVMM:
    // p * 32767 / (size - 1), clamped).
    static uint16_t scale(uint32_t p, uint32_t size);

private:
    void on_opened() override;
    void on_closed() override;
    void on_packet(const vmbus::PacketView& packet) override;
    void on_ring_space() override;
    Result<> send_report(const PointerState& s);

    enum class State { Closed, Negotiating, Approved, Ready };
    mutable Mutex mu_;
    State state_ ENL_GUARDED_BY(mu_) = State::Closed;
    PointerState last_ ENL_GUARDED_BY(mu_);
    std::optional<PointerState> deferred_motion_ ENL_GUARDED_BY(mu_);  // motion kept while the ring is full
    uint64_t reports_sent_ ENL_GUARDED_BY(mu_) = 0;
    uint64_t malformed_ ENL_GUARDED_BY(mu_) = 0;
    Mutex move_mu_ ENL_ACQUIRED_BEFORE(mu_);  // one move() at a time, so reports keep their order
};

}  // namespace enlighten::input
