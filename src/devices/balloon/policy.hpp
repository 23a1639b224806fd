// Hyper-V's Dynamic Memory policy, as a pure function: from the knobs (startup, min, max,
// buffer, an explicit target) and what the guest reported, the one operation to do next.
// docs/memory.md describes it for users; contract-memory §11 has the peers' policies.
//
//   need    = committed - ballooned       (the guest's num_committed counts the pages the
//                                          host ballooned; the rest is what it uses, plus
//                                          its balloon floor)
//   target  = clamp(need * (1 + buffer/100), min, max)     with dynamic=on
//           = the explicit target (clamped to [min, max])  when one is set (either mode)
//   current = startup + hot-added - ballooned
//
// A difference smaller than the hysteresis band does nothing. Below target: unballoon first
// (memory the guest gave back is the cheapest to return), then hot-add in 128 MiB chunks up
// to max. Above target: balloon the difference. One operation at a time, each bounded.
//
// Threads: pure functions of their arguments.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

namespace enlighten::balloon {

struct PolicySettings {
    bool dynamic = false;         // the automatic policy; off: only an explicit target moves memory
    uint64_t min_bytes = 0;       // never balloon below
    uint64_t max_bytes = 0;       // never grow above
    uint32_t buffer_percent = 20; // free memory to keep, as a percentage of the need
    uint32_t weight = 5000;       // Hyper-V's memory weight (0..10000); reported, no effect with one VM
    std::optional<uint64_t> target_bytes;  // an explicit target (vm.memory PUT)
};

struct PolicyInput {
    uint64_t startup_bytes = 0;
    uint64_t ballooned_bytes = 0;
    uint64_t hot_added_bytes = 0;
    uint64_t hot_add_room_bytes = 0;  // what the hot-add window still has
    bool can_balloon = false;         // the guest offered ballooning and the device is idle-capable
    bool can_hot_add = false;         // the guest offered hot-add and has not refused it
    std::optional<uint64_t> committed_pages;  // the last plausible status report
    [[nodiscard]] uint64_t current_bytes() const {
        return startup_bytes + hot_added_bytes - std::min(ballooned_bytes, startup_bytes + hot_added_bytes);
    }
};

enum class PolicyAction { None, Balloon, Unballoon, HotAdd };
const char* to_string(PolicyAction a);

struct PolicyDecision {
    PolicyAction action = PolicyAction::None;
    uint64_t pages = 0;                    // 4 KiB pages to balloon, unballoon or hot-add
    std::optional<uint64_t> target_bytes;  // what the policy aims at (none: nothing to aim at)
    std::string why;                       // for the log and the API
};

// Per-operation bounds.
inline constexpr uint64_t kMaxBalloonPagesPerRequest = 262144;      // 1 GiB
inline constexpr uint64_t kMaxUnballoonPagesPerRequest = 262144;    // 1 GiB
inline constexpr uint64_t kHotAddChunkBytes = 128ULL << 20;        // Linux 6.1's HA_CHUNK
inline constexpr uint64_t kMaxHotAddBytesPerRequest = 2ULL << 30;  // as QEMU

// The target alone (none when there is nothing to aim at).
std::optional<uint64_t> policy_target(const PolicySettings& s, const PolicyInput& in);
PolicyDecision decide(const PolicySettings& s, const PolicyInput& in);

}  // namespace enlighten::balloon
