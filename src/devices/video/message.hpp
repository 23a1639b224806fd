// Synthetic video messages as values: a pure parser of what the guest sends (sizes and
// counts checked against the bytes that came; contract-input-video §4.9) and builders of
// what the host sends (each within the guest's 4096-byte channel limit, §1).
// fuzz/fuzz_synthvid.cpp drives the parser.
//
// Threads: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <variant>
#include <vector>

#include "common/result.hpp"
#include "devices/video/protocol.hpp"

namespace enlighten::video {

struct VersionRequest {
    uint32_t version = 0;
};
struct VramLocation {
    uint64_t user_ctx = 0;
    bool specified = false;
    uint64_t gpa = 0;
};
// One video output as the guest describes it (not yet checked against the VRAM).
struct OutputMode {
    bool active = false;
    uint32_t vram_offset = 0;
    uint8_t depth = 0;
    uint32_t width = 0;
    uint32_t height = 0;
    uint32_t pitch = 0;
    bool operator==(const OutputMode&) const = default;
};
struct SituationUpdate {
    uint64_t user_ctx = 0;
    uint8_t output_count = 0;
    std::optional<OutputMode> output0;  // the first output, when output_count > 0
};
struct PointerPosition {
    bool visible = false;
    uint8_t output = 0;
    int32_t x = 0;
    int32_t y = 0;
};
struct PointerShape {
    uint8_t part = 0;
    bool argb = false;
    uint32_t width = 0, height = 0, hot_x = 0, hot_y = 0;
};
// A rectangle as the guest sent it: x2, y2 exclusive; any values (clamp before use).
struct Rect {
    int32_t x1 = 0, y1 = 0, x2 = 0, y2 = 0;
    bool operator==(const Rect&) const = default;
};
struct Dirt {
    uint8_t output = 0;
    std::vector<Rect> rects;  // dirt_count of them (at most 255)
};
struct ResolutionRequest {
    uint8_t max_count = 0;
};

using GuestMessage = std::variant<VersionRequest, VramLocation, SituationUpdate, PointerPosition, PointerShape,
                                  Dirt, ResolutionRequest>;

// One guest message from a packet's payload. Errc::Invalid: shorter than the two headers, a
// pipe type other than data, a pipe size past the payload, a synthvid size below its header
// or above the pipe size, a body shorter than its type's fixed part, more outputs or
// rectangles than the bytes hold, a pointer shape larger than 96x96 or with less data than it
// needs. Errc::Unsupported: a type the guest does not send (the host's own, or unknown).
Result<GuestMessage> parse_guest_message(std::span<const uint8_t> payload);

// Host -> guest, each a whole packet payload (pipe header, synthvid header, body).
std::vector<uint8_t> make_version_response(uint32_t version, bool accepted);
std::vector<uint8_t> make_vram_location_ack(uint64_t user_ctx);
std::vector<uint8_t> make_situation_update_ack(uint64_t user_ctx);
std::vector<uint8_t> make_feature_change(bool dirt, bool pointer_position, bool pointer_shape, bool situation);
// At most min(max_count, 64) of `sizes`, the first of them the default. An empty list, or
// max_count 0, gives a response with no resolutions (Linux then keeps its default).
std::vector<uint8_t> make_resolution_response(std::span<const ScreenSize> sizes, uint8_t max_count);

}  // namespace enlighten::video
