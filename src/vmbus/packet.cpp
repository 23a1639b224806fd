#include "vmbus/packet.hpp"

#include <cstring>

namespace enlighten::vmbus {

namespace {

// struct vmbus_packet_mpb_array / vmbus_channel_packet_page_buffer after the descriptor.
struct GpaDirectHeader {
    uint32_t reserved;    // 16
    uint32_t rangecount;  // 20
};
ENL_WIRE(GpaDirectHeader, 8);

// struct vmtransfer_page_packet_header after the descriptor.
struct XferPagesHeader {
    uint16_t xfer_pageset_id;  // 16
    uint8_t sender_owns_set;   // 18
    uint8_t reserved;          // 19
    uint32_t range_cnt;        // 20
};
ENL_WIRE(XferPagesHeader, 8);

constexpr size_t align8(size_t v) { return (v + 7) & ~size_t{7}; }

}  // namespace

uint64_t PacketView::gpa_bytes() const {
    uint64_t n = 0;
    for (const auto& r : gpa_ranges) n += r.byte_count;
    return n;
}

Result<PacketView> parse_packet(std::span<const uint64_t> packet, PacketScratch& scratch) {
    const auto bytes = std::as_bytes(packet);
    const auto* base = reinterpret_cast<const uint8_t*>(bytes.data());
    const size_t len = bytes.size();
    if (len < sizeof(PacketDescriptor)) return fail(Errc::Invalid, "packet of {} bytes has no descriptor", len);
    PacketDescriptor desc;
    std::memcpy(&desc, base, sizeof(desc));
    const size_t off = desc.offset8 * size_t{8};
    if (desc.len8 * size_t{8} != len || off < sizeof(PacketDescriptor) || off > len)
        return fail(Errc::Invalid, "packet descriptor (offset {}, length {}) does not match its {} bytes", off,
                    desc.len8 * 8u, len);
    PacketView v;
    v.type = desc.type;
    v.flags = desc.flags;
    v.trans_id = desc.trans_id;
    v.payload = std::span(base + off, len - off);
    scratch.gpa.clear();
    scratch.xfer.clear();

    if (desc.type == kPacketDataUsingGpaDirect) {
        if (off < sizeof(PacketDescriptor) + sizeof(GpaDirectHeader))
            return fail(Errc::Invalid, "GPA-direct packet without a range header");
        GpaDirectHeader h;
        std::memcpy(&h, base + sizeof(PacketDescriptor), sizeof(h));
        if (h.rangecount == 0) return fail(Errc::Invalid, "GPA-direct packet with no ranges");
        size_t pos = sizeof(PacketDescriptor) + sizeof(GpaDirectHeader);
        // Every range takes at least 16 bytes of the extension, so this loop is bounded by it.
        for (uint32_t i = 0; i < h.rangecount; ++i) {
            if (off - pos < 8) return fail(Errc::Invalid, "GPA range {} of {} lies past the packet header", i, h.rangecount);
            uint32_t count, offset;
            std::memcpy(&count, base + pos, 4);
            std::memcpy(&offset, base + pos + 4, 4);
            if (count == 0) return fail(Errc::Invalid, "GPA range {} is empty", i);
            if (offset >= kPageSize) return fail(Errc::Invalid, "GPA range {} starts {} bytes into its page", i, offset);
            const uint64_t pages = (uint64_t{offset} + count + kPageSize - 1) / kPageSize;
            pos += 8;
            if ((off - pos) / 8 < pages)
                return fail(Errc::Invalid, "GPA range {} needs {} page numbers; the packet header has room for {}", i,
                            pages, (off - pos) / 8);
            const auto pfns = packet.subspan(pos / 8, static_cast<size_t>(pages));
            for (uint64_t pfn : pfns)
                if (pfn > kMaxPfn) return fail(Errc::Invalid, "GPA range {} names page {:#x}", i, pfn);
            scratch.gpa.push_back({count, offset, pfns});
            pos += static_cast<size_t>(pages) * 8;
        }
        v.gpa_ranges = scratch.gpa;
    } else if (desc.type == kPacketDataUsingXferPages) {
        if (off < sizeof(PacketDescriptor) + sizeof(XferPagesHeader))
            return fail(Errc::Invalid, "transfer-page packet without a range header");
        XferPagesHeader h;
        std::memcpy(&h, base + sizeof(PacketDescriptor), sizeof(h));
        const size_t room = (off - sizeof(PacketDescriptor) - sizeof(XferPagesHeader)) / sizeof(XferRange);
        if (h.range_cnt > room)
            return fail(Errc::Invalid, "transfer-page packet with {} ranges; its header has room for {}", h.range_cnt, room);
        scratch.xfer.resize(h.range_cnt);
        if (h.range_cnt != 0)  // an empty vector's data() may be null: no memcpy from or to it
            std::memcpy(scratch.xfer.data(), base + sizeof(PacketDescriptor) + sizeof(XferPagesHeader),
                        h.range_cnt * sizeof(XferRange));
        v.xfer_set_id = h.xfer_pageset_id;
        v.xfer_ranges = scratch.xfer;
    }
    return v;
}

size_t OutPacket::header_bytes() const {
    if (type == kPacketDataUsingXferPages)
        return sizeof(PacketDescriptor) + sizeof(XferPagesHeader) + xfer_ranges.size() * sizeof(XferRange);
    return sizeof(PacketDescriptor);
}

size_t OutPacket::packet_bytes() const { return align8(header_bytes() + iov_total(payload)); }

void OutPacket::encode_header(std::span<uint8_t> out) const {
    PacketDescriptor d{type, static_cast<uint16_t>(header_bytes() / 8), static_cast<uint16_t>(packet_bytes() / 8),
                       flags, trans_id};
    std::memcpy(out.data(), &d, sizeof(d));
    if (type == kPacketDataUsingXferPages) {
        XferPagesHeader h{xfer_set_id, 0, 0, static_cast<uint32_t>(xfer_ranges.size())};
        std::memcpy(out.data() + sizeof(d), &h, sizeof(h));
        if (!xfer_ranges.empty())
            std::memcpy(out.data() + sizeof(d) + sizeof(h), xfer_ranges.data(), xfer_ranges.size_bytes());
    }
}

}  // namespace enlighten::vmbus
