// The packet forms on a VMBus ring (Linux include/linux/hyperv.h: struct vmpacket_descriptor,
// vmbus_packet_mpb_array / vmbus_channel_packet_page_buffer, vmtransfer_page_packet_header;
// linux-hv-guest-contract §7.2, contract-storage §2, contract-network §2.1 and §4.3).
//
// Every packet a device sees was copied out of the ring once and parsed here, once: a VSP
// gets a PacketView (payload, and the GPA ranges or transfer-page ranges checked against the
// packet's own length) and never parses descriptor extras by hand. Packets to the guest are
// described by an OutPacket (payload as iovecs) that the channel queue encodes.
//
// Threads: plain values and pure functions.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <vector>

#include "common/result.hpp"
#include "common/wire.hpp"

namespace enlighten::vmbus {

inline constexpr uint32_t kPageSize = 4096;
inline constexpr uint64_t kMaxPfn = (1ULL << 52) - 1;

// struct vmpacket_descriptor
struct PacketDescriptor {
    uint16_t type;      // 0
    uint16_t offset8;   // 2: payload offset from the descriptor, in 8-byte units
    uint16_t len8;      // 4: packet length without the trailer, in 8-byte units
    uint16_t flags;     // 6
    uint64_t trans_id;  // 8
};
ENL_WIRE(PacketDescriptor, 16);

enum PacketType : uint16_t {
    kPacketDataInband = 6,
    kPacketDataUsingXferPages = 7,
    kPacketDataUsingGpaDirect = 9,
    kPacketCompletion = 11,
};
inline constexpr uint16_t kPacketFlagCompletionRequested = 1;
inline constexpr uint32_t kPacketTrailerSize = 8;

// One range of a GPA-direct packet: byte_count bytes starting byte_offset into the first of
// `pfns` (ceil((byte_offset + byte_count) / 4096) guest page frames, in order).
struct GpaRange {
    uint32_t byte_count = 0;
    uint32_t byte_offset = 0;
    std::span<const uint64_t> pfns;
    // The guest-physical address of byte `i` of the range (i < byte_count).
    [[nodiscard]] uint64_t gpa_of(uint64_t i) const {
        const uint64_t at = byte_offset + i;
        return pfns[at / kPageSize] * kPageSize + at % kPageSize;
    }
};

// One range of a transfer-page packet: offsets into the transfer page set (for netvsc, the
// receive buffer the guest gave the host).
struct XferRange {
    uint32_t byte_count;
    uint32_t byte_offset;
};
ENL_WIRE(XferRange, 8);

// A packet from the guest, valid until the queue's next consume().
struct PacketView {
    uint16_t type = 0;
    uint16_t flags = 0;
    uint64_t trans_id = 0;
    std::span<const uint8_t> payload;         // from offset8 * 8 to len8 * 8
    std::span<const GpaRange> gpa_ranges;     // kPacketDataUsingGpaDirect
    uint16_t xfer_set_id = 0;                 // kPacketDataUsingXferPages
    std::span<const XferRange> xfer_ranges;   // kPacketDataUsingXferPages
    // The framing was sound but the ranges were not (ChannelQueue::malformed_reason() says
    // why); gpa_ranges and xfer_ranges are empty. Answer it with an error status.
    bool malformed = false;

    [[nodiscard]] bool completion_requested() const { return flags & kPacketFlagCompletionRequested; }
    // The sum of the GPA ranges' byte counts.
    [[nodiscard]] uint64_t gpa_bytes() const;
};

// Where PacketView's ranges live between parses (one per queue; reused).
struct PacketScratch {
    std::vector<GpaRange> gpa;
    std::vector<XferRange> xfer;
};

// Parses one packet as it was copied from the ring (descriptor included, `len8 * 8` bytes;
// the descriptor already checked by the ring: offset and length within the packet). The
// packet is held in 8-byte words so that PFNs are read in place. The view points into
// `packet` and `scratch`.
// Errors (Errc::Invalid): a GPA-direct or transfer-page header that does not fit its
// descriptor extension, a range with a zero count or an offset past the first page, PFNs
// past the end of the extension or above 2^52.
Result<PacketView> parse_packet(std::span<const uint64_t> packet, PacketScratch& scratch);

// A packet to the guest. Payload bytes are gathered from iovecs.
struct OutPacket {
    uint16_t type = kPacketDataInband;
    uint16_t flags = 0;
    uint64_t trans_id = 0;
    uint16_t xfer_set_id = 0;                 // kPacketDataUsingXferPages only
    std::span<const XferRange> xfer_ranges;   // kPacketDataUsingXferPages only
    std::span<const iovec> payload;

    static OutPacket inband(uint64_t trans_id, std::span<const iovec> payload, bool completion_requested = false) {
        return {kPacketDataInband, completion_requested ? kPacketFlagCompletionRequested : uint16_t{0}, trans_id, 0, {},
                payload};
    }
    static OutPacket completion(uint64_t trans_id, std::span<const iovec> payload) {
        return {kPacketCompletion, 0, trans_id, 0, {}, payload};
    }
    static OutPacket xfer_pages(uint64_t trans_id, uint16_t set_id, std::span<const XferRange> ranges,
                                std::span<const iovec> payload, bool completion_requested = true) {
        return {kPacketDataUsingXferPages, completion_requested ? kPacketFlagCompletionRequested : uint16_t{0},
                trans_id, set_id, ranges, payload};
    }

    // Descriptor plus header extension (what offset8 counts).
    [[nodiscard]] size_t header_bytes() const;
    // The packet without its trailer, padded to 8 bytes (what len8 counts).
    [[nodiscard]] size_t packet_bytes() const;
    // What the packet occupies in the ring: packet_bytes() plus the trailer.
    [[nodiscard]] size_t ring_bytes() const { return packet_bytes() + kPacketTrailerSize; }
    // Encodes the descriptor and header extension (header_bytes() bytes) into `out`.
    void encode_header(std::span<uint8_t> out) const;
};

}  // namespace enlighten::vmbus
