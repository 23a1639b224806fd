// The Hyper-V Dynamic Memory protocol (hv_balloon) on the wire: Linux 6.1
// drivers/hv/hv_balloon.c, "protocol definitions" (all __packed); ../shared/contract-memory.md
// §2 has the same tables with offsets. Every message travels as the payload of an in-band
// VMBus packet, in both directions.
//
// Threads: plain values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.hpp"

namespace enlighten::balloon {

// HV_DM_GUID (include/linux/hyperv.h).
inline constexpr const char* kClassId = "525074dc-8985-46e2-8057-a307dc18a502";

inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kPageShift = 12;

// enum dm_message_type.
enum class MsgType : uint16_t {
    Error = 0,
    VersionRequest = 1,
    VersionResponse = 2,
    CapabilitiesReport = 3,
    CapabilitiesResponse = 4,
    StatusReport = 5,
    BalloonRequest = 6,
    BalloonResponse = 7,
    UnballoonRequest = 8,
    UnballoonResponse = 9,
    HotAddRequest = 10,
    HotAddResponse = 11,
    InfoMessage = 12,
};
const char* to_string(MsgType t);

// DYNMEM_PROTOCOL_VERSION_{WIN7,WIN8,WIN10}: major in the high 16 bits.
inline constexpr uint32_t kVersionWin7 = 0x00000003;
inline constexpr uint32_t kVersionWin8 = 0x00010000;
inline constexpr uint32_t kVersionWin10 = 0x00020000;

// Host payloads must fit the guest's 4096-byte recv_buffer (contract-memory §1.2).
inline constexpr size_t kMaxHostMessage = 4096;
// Ranges in one message: (4096 - 16) / 8 (hv_balloon.c alloc_balloon_pages).
inline constexpr uint32_t kMaxRangesPerMessage = 510;
// The page_cnt field is 24 bits.
inline constexpr uint64_t kMaxRangePages = (1ULL << 24) - 1;
inline constexpr uint64_t kMaxStartPage = (1ULL << 40) - 1;

// struct dm_header.
struct DmHeader {
    uint16_t type;      // 0
    uint16_t size;      // 2: the whole message, header included
    uint32_t trans_id;  // 4
};
ENL_WIRE(DmHeader, 8);

// union dm_mem_page_range: start_page in bits 0-39, page_cnt in bits 40-63.
struct PageRange {
    uint64_t start = 0;
    uint64_t count = 0;
    [[nodiscard]] uint64_t end() const { return start + count; }
    bool operator==(const PageRange&) const = default;
};
[[nodiscard]] constexpr PageRange decode_range(uint64_t v) { return {v & kMaxStartPage, v >> 40}; }
// start < 2^40, count < 2^24 (callers split longer ranges).
[[nodiscard]] constexpr uint64_t encode_range(PageRange r) { return (r.start & kMaxStartPage) | (r.count << 40); }

// struct dm_version_request.
struct DmVersionRequest {
    DmHeader hdr;          // 0
    uint32_t version;      // 8
    uint32_t last_attempt; // 12: bit 0 is_last_attempt
};
ENL_WIRE(DmVersionRequest, 16);

// struct dm_version_response and struct dm_capabilities_resp_msg: bit 0 is_accepted.
struct DmAccept {
    DmHeader hdr;      // 0
    uint64_t accepted; // 8
};
ENL_WIRE(DmAccept, 16);

// struct dm_capabilities.
struct DmCapabilities {
    DmHeader hdr;             // 0
    uint64_t caps;            // 8: bit 0 balloon, bit 1 hot_add, bits 2-5 hot_add_alignment (2^n MiB)
    uint64_t min_page_cnt;    // 16
    uint64_t max_page_number; // 24
};
ENL_WIRE(DmCapabilities, 32);
inline constexpr uint64_t kCapBalloon = 1;
inline constexpr uint64_t kCapHotAdd = 2;

// struct dm_status.
struct DmStatus {
    DmHeader hdr;              // 0
    uint64_t num_avail;        // 8: MemAvailable, pages
    uint64_t num_committed;    // 16: Committed_AS + ballooned + not-onlined + floor, pages
    uint64_t page_file_size;   // 24
    uint64_t zero_free;        // 32
    uint32_t page_file_writes; // 40
    uint32_t io_diff;          // 44
};
ENL_WIRE(DmStatus, 48);

// struct dm_balloon.
struct DmBalloon {
    DmHeader hdr;       // 0
    uint32_t num_pages; // 8
    uint32_t reserved;  // 12
};
ENL_WIRE(DmBalloon, 16);

// struct dm_balloon_response: 16 bytes, then range_count ranges.
struct DmBalloonResponse {
    DmHeader hdr;     // 0
    uint32_t reserved;// 8
    uint32_t more;    // 12: bit 0 more_pages, bits 1-31 range_count
};
ENL_WIRE(DmBalloonResponse, 16);

// struct dm_unballoon_request: 16 bytes, then range_count ranges. Note where the fields are:
// not where the balloon response has them.
struct DmUnballoonRequest {
    DmHeader hdr;         // 0
    uint32_t more_pages;  // 8: bit 0
    uint32_t range_count; // 12
};
ENL_WIRE(DmUnballoonRequest, 16);

// struct dm_hot_add with its region (QEMU's dm_hot_add_with_region): Linux reads `region`
// only when hdr.size != 16.
struct DmHotAdd {
    DmHeader hdr;    // 0
    uint64_t range;  // 8
    uint64_t region; // 16
};
ENL_WIRE(DmHotAdd, 24);

// struct dm_hot_add_response.
struct DmHotAddResponse {
    DmHeader hdr;        // 0
    uint32_t page_count; // 8
    uint32_t result;     // 12: 1 success
};
ENL_WIRE(DmHotAddResponse, 16);

// struct dm_info_msg with one struct dm_info_header + u64 (INFO_TYPE_MAX_PAGE_CNT).
struct DmInfoMaxPages {
    DmHeader hdr;       // 0
    uint32_t reserved;  // 8
    uint32_t info_size; // 12
    uint32_t type;      // 16: 0 INFO_TYPE_MAX_PAGE_CNT
    uint32_t data_size; // 20: must be 8
    uint64_t max_pages; // 24
};
ENL_WIRE(DmInfoMaxPages, 32);
ENL_WIRE_OFFSET(DmInfoMaxPages, max_pages, 24);

}  // namespace enlighten::balloon
