#include "devices/balloon/policy.hpp"

#include <algorithm>

#include "common/log.hpp"
#include "devices/balloon/protocol.hpp"

namespace enlighten::balloon {

namespace {

constexpr uint64_t kMiB = 1ULL << 20;
// An explicit target is met to within one balloon unit (2 MiB, contract-memory §5).
constexpr uint64_t kExplicitBand = 2 * kMiB;
// The automatic policy leaves small changes alone, so that it does not chase the noise of
// each report: 64 MiB, or 1/16 of the guest's size if that is more.
uint64_t dynamic_band(uint64_t current) { return std::max<uint64_t>(64 * kMiB, current / 16); }

uint64_t clamp_to(uint64_t v, uint64_t lo, uint64_t hi) { return std::min(std::max(v, lo), std::max(lo, hi)); }

}  // namespace

const char* to_string(PolicyAction a) {
    switch (a) {
        case PolicyAction::None: return "none";
        case PolicyAction::Balloon: return "balloon";
        case PolicyAction::Unballoon: return "unballoon";
        case PolicyAction::HotAdd: return "hot-add";
    }
    return "?";
}

std::optional<uint64_t> policy_target(const PolicySettings& s, const PolicyInput& in) {
    if (s.target_bytes) return clamp_to(*s.target_bytes, s.min_bytes, s.max_bytes);
    if (!s.dynamic || !in.committed_pages) return std::nullopt;
    // need = committed - ballooned, in bytes; saturating (the report is a hint).
    const uint64_t committed = std::min(*in.committed_pages, kMaxStartPage) * kPageSize;
    const uint64_t need = committed - std::min(committed, in.ballooned_bytes);
    const uint64_t with_buffer = need + need / 100 * s.buffer_percent;
    return clamp_to(with_buffer, s.min_bytes, s.max_bytes);
}

PolicyDecision decide(const PolicySettings& s, const PolicyInput& in) {
    PolicyDecision d;
    d.target_bytes = policy_target(s, in);
    if (!d.target_bytes) {
        d.why = s.dynamic ? "no status report from the guest yet" : "no target (dynamic memory is off)";
        return d;
    }
    const uint64_t target = *d.target_bytes;
    const uint64_t current = in.current_bytes();
    const uint64_t band = s.target_bytes ? kExplicitBand : dynamic_band(current);
    if (target + band > current && current + band > target) {
        d.why = fmt::format("at target ({} MiB, now {} MiB)", target / kMiB, current / kMiB);
        return d;
    }
    if (target < current) {
        if (!in.can_balloon) {
            d.why = "above target, but the guest cannot balloon now";
            return d;
        }
        d.action = PolicyAction::Balloon;
        d.pages = std::min((current - target) / kPageSize, kMaxBalloonPagesPerRequest);
        d.why = fmt::format("{} MiB above the target of {} MiB", (current - target) / kMiB, target / kMiB);
        return d;
    }
    const uint64_t short_by = target - current;
    if (in.ballooned_bytes > 0) {
        if (!in.can_balloon) {
            d.why = "below target, but the guest cannot unballoon now";
            return d;
        }
        d.action = PolicyAction::Unballoon;
        d.pages = std::min(short_by, in.ballooned_bytes) / kPageSize;
        d.pages = std::min(d.pages, kMaxUnballoonPagesPerRequest);
        d.why = fmt::format("{} MiB below the target of {} MiB: returning ballooned memory", short_by / kMiB, target / kMiB);
        return d;
    }
    const uint64_t chunk = (short_by + kHotAddChunkBytes - 1) / kHotAddChunkBytes * kHotAddChunkBytes;
    const uint64_t room = in.hot_add_room_bytes / kHotAddChunkBytes * kHotAddChunkBytes;
    const uint64_t bytes = std::min({chunk, room, kMaxHotAddBytesPerRequest});
    if (!in.can_hot_add || bytes == 0) {
        d.why = fmt::format("{} MiB below the target of {} MiB, and {}", short_by / kMiB, target / kMiB,
                            in.can_hot_add ? "the hot-add window is used up" : "the guest cannot hot-add");
        return d;
    }
    d.action = PolicyAction::HotAdd;
    d.pages = bytes / kPageSize;
    d.why = fmt::format("{} MiB below the target of {} MiB: hot-adding {} MiB", short_by / kMiB, target / kMiB, bytes / kMiB);
    return d;
}

}  // namespace enlighten::balloon
