// The Dynamic Memory VSP (Linux hv_balloon's host): one VMBus channel, the protocol engine
// (engine.hpp), the policy (policy.hpp) run once a second and after every guest message, and
// the figures the management API shows (vm.memory). docs/memory.md is the user's view.
//
// With dynamic=off the device is still offered (Hyper-V's guests find it and load
// hv_balloon): it negotiates and reads the guest's reports but changes nothing by itself;
// an explicit target (vm.memory PUT) still moves the guest. With dynamic=on the policy sizes
// the guest between min and max.
//
// Threads: the SimpleDevice hooks, the engine and the policy run on the control loop.
// status(), set_target() and set_policy() may be called from any thread (API workers); they
// take the device's mutex briefly and post the work to the loop. Lock order: the device's
// mutex is a leaf except that the loop's post is called under it (the loop's mutex is a
// leaf below everything).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/thread_annotations.hpp"
#include "devices/balloon/engine.hpp"
#include "devices/balloon/policy.hpp"
#include "vmbus/simple_device.hpp"

namespace enlighten::balloon {

// The memory figures of the VM, for the API (bytes unless named otherwise).
struct MemoryStatus {
    std::string state;  // DmState as text
    uint32_t protocol_version = 0;
    bool dynamic = false;
    uint64_t startup = 0, min = 0, max = 0;
    uint32_t buffer_percent = 0, weight = 0;
    uint64_t current = 0;  // startup + hot-added - ballooned
    std::optional<uint64_t> target;   // what the host aims at now (explicit or the policy's)
    bool explicit_target = false;
    uint64_t ballooned = 0, hot_added = 0;
    bool can_balloon = false, can_hot_add = false;
    std::string hot_add_disabled;  // why hot-add is off ("" when it is not)
    std::string problem;           // what defeats the feature now ("" when nothing)
    std::string last_action;       // the policy's last decision, with its reason
    uint64_t status_reports = 0;
    std::optional<uint64_t> avail;      // the last report's MemAvailable, bytes
    std::optional<uint64_t> committed;  // the last report's committed, bytes
    std::optional<uint64_t> report_age_ms;
    bool report_plausible = true;
    DmCounters counters;
};

class BalloonDevice final : public vmbus::SimpleDevice, public std::enable_shared_from_this<BalloonDevice> {
public:
    static constexpr auto kTick = std::chrono::seconds(1);

    // `max_limit` is the largest max the VM can ever have (its hot-add window was planned
    // for it at start).
    BalloonDevice(const char* instance_id, uint64_t startup_bytes, uint64_t max_limit, PolicySettings settings);

    void attach(const vmbus::DeviceResources& resources) override;
    void detach() override;

    [[nodiscard]] MemoryStatus status() const ENL_EXCLUDES(mu_);
    // An explicit target in [min, max] (Errc::Invalid otherwise); nullopt returns the guest
    // to the policy (dynamic=on) or leaves it where it is (dynamic=off).
    Result<> set_target(std::optional<uint64_t> bytes) ENL_EXCLUDES(mu_);
    // Changes the knobs at run time (Set-VMMemory); unset ones stay. min <= max <= the
    // limit planned at start, buffer 0..2000.
    Result<> set_policy(std::optional<uint64_t> min, std::optional<uint64_t> max, std::optional<uint32_t> buffer,
                        std::optional<bool> dynamic = std::nullopt) ENL_EXCLUDES(mu_);

private:
    void on_opened() override;
    void on_closed() override;
    void on_packet(const vmbus::PacketView& packet) override;
    void on_ring_space() override;
    // Loop thread: the engine's deadlines, the policy, the outbox, the published figures.
    void step();
    void flush();
    void publish();
    void arm_timer();

    const uint64_t startup_;
    const uint64_t max_limit_;

    // Loop thread only.
    DmEngine engine_;
    std::deque<std::vector<uint8_t>> pending_;
    uint64_t timer_ = 0;
    std::string last_action_;

    mutable Mutex mu_;
    EventLoop* loop_ ENL_GUARDED_BY(mu_) = nullptr;
    PolicySettings settings_ ENL_GUARDED_BY(mu_);
    MemoryStatus published_ ENL_GUARDED_BY(mu_);
    std::chrono::steady_clock::time_point report_at_ ENL_GUARDED_BY(mu_){};
};

}  // namespace enlighten::balloon
