// The Hyper-V synthetic video protocol (synthvid) on the wire: Linux 6.1
// drivers/video/fbdev/hyperv_fb.c (all __packed); ../shared/contract-input-video.md §4.2 has the
// same table with offsets. Every message is the payload of an in-band VMBus packet: a pipe
// header, a synthvid header, then the body. Fields are unaligned (vram_gpa sits at offset 25).
//
// Threads: plain values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.hpp"

namespace enlighten::video {

// HV_SYNTHVID_GUID (include/linux/hyperv.h).
inline constexpr const char* kClassId = "da0a7802-e377-4aac-8e77-0558eb1073f8";

// SYNTHVID_VERSION(major, minor) = minor << 16 | major: 3.2 (WIN8) and 3.5 (WIN10).
inline constexpr uint32_t kVersionWin8 = 0x00020003;
inline constexpr uint32_t kVersionWin10 = 0x00050003;

inline constexpr uint32_t kPipeMessageData = 1;  // PIPE_MSG_DATA
inline constexpr uint8_t kDepth = 32;            // SYNTHVID_DEPTH_WIN8: the only depth Linux uses
inline constexpr size_t kEdidSize = 128;
inline constexpr uint8_t kMaxResolutions = 64;   // SYNTHVID_MAX_RESOLUTION_COUNT
// The guest receives into a 16 KiB buffer (MAX_VMBUS_PKT_SIZE); what we accept from it.
inline constexpr size_t kMaxGuestMessage = 0x4000;
// hvfb_check_var's minimum mode and the pointer shape's limits (CURSOR_MAX_X/Y).
inline constexpr uint32_t kMinWidth = 640, kMinHeight = 480;
inline constexpr uint32_t kMaxCursor = 96;

enum class MsgType : uint32_t {
    Error = 0,
    VersionRequest = 1,
    VersionResponse = 2,
    VramLocation = 3,
    VramLocationAck = 4,
    SituationUpdate = 5,
    SituationUpdateAck = 6,
    PointerPosition = 7,
    PointerShape = 8,
    FeatureChange = 9,
    Dirt = 10,
    BiosInfoRequest = 11,
    BiosInfoResponse = 12,
    ResolutionRequest = 13,
    ResolutionResponse = 14,
};
const char* to_string(MsgType t);

#pragma pack(push, 1)

// struct pipe_msg_hdr: size counts the bytes after it.
struct PipeHeader {
    uint32_t type;  // 0: kPipeMessageData
    uint32_t size;  // 4
};
ENL_WIRE(PipeHeader, 8);

// struct synthvid_msg_hdr: size counts this header and the body (Linux ignores it in host
// messages; we send 8 + body like Linux does).
struct MsgHeader {
    uint32_t type;  // 0: MsgType
    uint32_t size;  // 4
};
ENL_WIRE(MsgHeader, 8);

// Pipe header + synthvid header: where every body starts.
inline constexpr size_t kHeadersSize = sizeof(PipeHeader) + sizeof(MsgHeader);

struct VersionRequestBody {
    uint32_t version;  // 16
};
ENL_WIRE(VersionRequestBody, 4);

struct VersionResponseBody {
    uint32_t version;           // 16: echoed (Linux does not read it)
    uint8_t is_accepted;        // 20
    uint8_t max_video_outputs;  // 21
};
ENL_WIRE(VersionResponseBody, 6);

struct VramLocationBody {
    uint64_t user_ctx;              // 16: Linux sets it to the GPA and requires it back in the ack
    uint8_t is_vram_gpa_specified;  // 24
    uint64_t vram_gpa;              // 25
};
ENL_WIRE(VramLocationBody, 17);
ENL_WIRE_OFFSET(VramLocationBody, vram_gpa, 9);

struct VramLocationAckBody {
    uint64_t user_ctx;  // 16
};
ENL_WIRE(VramLocationAckBody, 8);

// struct video_output_situation.
struct OutputSituation {
    uint8_t active;         // 0
    uint32_t vram_offset;   // 1
    uint8_t depth_bits;     // 5
    uint32_t width;         // 6
    uint32_t height;        // 10
    uint32_t pitch;         // 14
};
ENL_WIRE(OutputSituation, 18);

// struct synthvid_situation_update: then video_output_count OutputSituations (Linux: 1).
struct SituationUpdateBody {
    uint64_t user_ctx;           // 16
    uint8_t video_output_count;  // 24
};
ENL_WIRE(SituationUpdateBody, 9);

struct SituationUpdateAckBody {
    uint64_t user_ctx;  // 16
};
ENL_WIRE(SituationUpdateAckBody, 8);

struct PointerPositionBody {
    uint8_t is_visible;    // 16
    uint8_t video_output;  // 17
    int32_t x;             // 18
    int32_t y;             // 22
};
ENL_WIRE(PointerPositionBody, 10);

// struct synthvid_pointer_shape without its data: part_idx 0xFF (CURSOR_COMPLETE) is the
// whole shape; ARGB data is width * height * 4 bytes.
struct PointerShapeBody {
    uint8_t part_idx;  // 16
    uint8_t is_argb;   // 17
    uint32_t width;    // 18
    uint32_t height;   // 22
    uint32_t hot_x;    // 26
    uint32_t hot_y;    // 30
};
ENL_WIRE(PointerShapeBody, 18);

struct FeatureChangeBody {
    uint8_t is_dirt_needed;       // 16
    uint8_t is_ptr_pos_needed;    // 17
    uint8_t is_ptr_shape_needed;  // 18
    uint8_t is_situ_needed;       // 19
};
ENL_WIRE(FeatureChangeBody, 4);

// struct rect: x2 and y2 exclusive.
struct WireRect {
    int32_t x1, y1, x2, y2;
};
ENL_WIRE(WireRect, 16);

// struct synthvid_dirt: then dirt_count WireRects (Linux: 1).
struct DirtBody {
    uint8_t video_output;  // 16
    uint8_t dirt_count;    // 17
};
ENL_WIRE(DirtBody, 2);

struct ResolutionRequestBody {
    uint8_t maximum_resolution_count;  // 16: Linux asks for 64
};
ENL_WIRE(ResolutionRequestBody, 1);

struct ScreenSize {
    uint16_t width;
    uint16_t height;
};
ENL_WIRE(ScreenSize, 4);

// struct synthvid_supported_resolution_resp: then resolution_count ScreenSizes.
struct ResolutionResponseBody {
    uint8_t edid[kEdidSize];           // 16
    uint8_t resolution_count;          // 144
    uint8_t default_resolution_index;  // 145: Linux takes this entry and nothing else
    uint8_t is_standard;               // 146
};
ENL_WIRE(ResolutionResponseBody, 131);

#pragma pack(pop)

}  // namespace enlighten::video
