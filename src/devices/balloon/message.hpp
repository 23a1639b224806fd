// The Dynamic Memory messages as values: a pure parser of what the guest sends (every size
// and count checked against the bytes that came) and builders of what the host sends (each
// within the guest's 4096-byte receive buffer). fuzz/fuzz_balloon.cpp drives the parser.
//
// Threads: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "common/result.hpp"
#include "devices/balloon/protocol.hpp"

namespace enlighten::balloon {

struct VersionRequest {
    uint32_t trans_id = 0;
    uint32_t version = 0;
    bool last_attempt = false;
};
struct CapabilitiesReport {
    uint32_t trans_id = 0;
    bool balloon = false;
    bool hot_add = false;
    uint32_t hot_add_alignment_log2_mib = 0;  // bits 2-5: hot-add in 2^n MiB units
};
struct StatusReport {
    uint32_t trans_id = 0;
    uint64_t avail_pages = 0;
    uint64_t committed_pages = 0;
};
struct BalloonResponse {
    uint32_t trans_id = 0;
    bool more_pages = false;
    std::vector<PageRange> ranges;  // as the guest sent them (not yet checked against RAM)
};
struct UnballoonResponse {
    uint32_t trans_id = 0;
};
struct HotAddResponse {
    uint32_t trans_id = 0;
    uint32_t page_count = 0;
    uint32_t result = 0;
};

using GuestMessage =
    std::variant<VersionRequest, CapabilitiesReport, StatusReport, BalloonResponse, UnballoonResponse, HotAddResponse>;

// One guest message from a packet's payload. Errc::Invalid: shorter than its header or than
// hdr.size, hdr.size shorter than the type's fixed part, more ranges than the bytes hold.
// Errc::Unsupported: a type the guest does not send (the host's own, or unknown).
Result<GuestMessage> parse_guest_message(std::span<const uint8_t> payload);

// Host -> guest. trans_id: any value (the guest ignores it; contract-memory §1.3).
std::vector<uint8_t> make_version_response(uint32_t trans_id, bool accepted);
std::vector<uint8_t> make_capabilities_response(uint32_t trans_id, bool accepted);
std::vector<uint8_t> make_balloon_request(uint32_t trans_id, uint32_t pages);
// At most kMaxRangesPerMessage ranges, each with count in [1, kMaxRangePages].
std::vector<uint8_t> make_unballoon_request(uint32_t trans_id, std::span<const PageRange> ranges, bool more_pages);
// The 24-byte form with region = range (contract-memory §7.3).
std::vector<uint8_t> make_hot_add_request(uint32_t trans_id, PageRange range);
std::vector<uint8_t> make_info_max_pages(uint32_t trans_id, uint64_t max_pages);

}  // namespace enlighten::balloon
