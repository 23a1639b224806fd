// The synthetic keyboard VSP that Linux's hyperv_keyboard drives (contract-input-video §2):
// it accepts protocol 1.0 and then sends key events (set-1 make codes with E0/E1/BREAK) that
// the host's users type through the API or a display. LED messages (Windows guests) are
// recorded. Events go out in order; while the guest does not read its ring they wait, up to
// kMaxWaiting, and a batch that does not fit is refused whole, so no key is left pressed.
//
// Threads: the SimpleDevice hooks run on the control loop; type() and status() may be
// called from any thread (API workers, a display server). The device's mutex is a leaf; the
// outbox (SimpleDevice::post_inband) is used without it.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/thread_annotations.hpp"
#include "devices/input/keymap.hpp"
#include "vmbus/simple_device.hpp"

namespace enlighten::input {

struct KeyboardStatus {
    std::string state;  // "closed", "negotiating", "ready"
    uint16_t leds = 0;  // the last LED_INDICATORS (Windows guests)
    uint64_t events_sent = 0;
    uint64_t malformed = 0;  // guest messages refused
};

class KeyboardDevice final : public vmbus::SimpleDevice {
public:
    // Events waiting for ring space (the ring itself holds about 800).
    static constexpr size_t kMaxWaiting = 8192;

    explicit KeyboardDevice(const std::string& instance_id);

    // Sends the events in order. Errc::Closed before the guest's driver accepted the protocol;
    // Errc::Busy if they do not all fit (then none is sent).
    Result<> type(std::span<const KeyEvent> events) ENL_EXCLUDES(mu_);
    [[nodiscard]] KeyboardStatus status() const ENL_EXCLUDES(mu_);

private:
    void on_opened() override;
    void on_closed() override;
    void on_packet(const vmbus::PacketView& packet) override;

    mutable Mutex mu_;
    bool open_ ENL_GUARDED_BY(mu_) = false;
    bool ready_ ENL_GUARDED_BY(mu_) = false;
    uint16_t leds_ ENL_GUARDED_BY(mu_) = 0;
    uint64_t events_sent_ ENL_GUARDED_BY(mu_) = 0;
    uint64_t malformed_ ENL_GUARDED_BY(mu_) = 0;
    // Serializes type() calls, so that one batch is not interleaved with another.
    Mutex type_mu_ ENL_ACQUIRED_BEFORE(mu_);
};

}  // namespace enlighten::input
