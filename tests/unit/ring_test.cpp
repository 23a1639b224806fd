// The VMBus ring buffers, driven from a simulated guest that follows Linux's ring_buffer.c.
#include "vmbus/ring.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

using namespace enlighten;
using namespace enlighten::vmbus;

namespace {

// Guest RAM with one ring at page 0: header + `data_pages` pages, and helpers that behave
// like the guest's side of the ring.
struct GuestRing {
    explicit GuestRing(uint32_t data_pages, bool scatter = false) : ram((2 * data_pages + 4) * kPageSize) {
        // scatter: data pages every other page, so the host sees a non-contiguous GPADL.
        pfns.push_back(0);
        for (uint32_t i = 0; i < data_pages; ++i) pfns.push_back(scatter ? 2 + 2 * i : 1 + i);
        mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
        hdr_store(kRingFeatureBits, 1);  // the guest sets feat_pending_send_sz
    }
    uint32_t size() const { return static_cast<uint32_t>((pfns.size() - 1) * kPageSize); }
    uint32_t hdr(uint32_t off) const {
        uint32_t v;
        std::memcpy(&v, ram.data() + off, 4);
        return v;
    }
    void hdr_store(uint32_t off, uint32_t v) { std::memcpy(ram.data() + off, &v, 4); }
    uint8_t* data_at(uint32_t pos) { return ram.data() + pfns[1 + pos / kPageSize] * kPageSize + pos % kPageSize; }
    void copy_in(uint32_t pos, const uint8_t* src, uint32_t n) {
        for (uint32_t i = 0; i < n; ++i) *data_at((pos + i) % size()) = src[i];
    }
    void copy_out(uint32_t pos, uint8_t* dst, uint32_t n) {
        for (uint32_t i = 0; i < n; ++i) dst[i] = *data_at((pos + i) % size());
    }
    // Guest write (hv_ringbuffer_write): descriptor + payload + padding + trailer.
    bool guest_write(uint16_t type, uint64_t trans_id, const std::vector<uint8_t>& payload) {
        const uint32_t len = static_cast<uint32_t>((16 + payload.size() + 7) / 8 * 8);
        const uint32_t w = hdr(kRingWriteIndex), r = hdr(kRingReadIndex);
        const uint32_t used = w >= r ? w - r : size() - r + w;
        if (len + 8 >= size() - used) return false;
        PacketDescriptor d{type, 2, static_cast<uint16_t>(len / 8), 0, trans_id};
        const uint8_t zeros[8] = {};
        const uint64_t trailer = uint64_t{w} << 32;
        copy_in(w, reinterpret_cast<const uint8_t*>(&d), 16);
        copy_in(w + 16, payload.data(), static_cast<uint32_t>(payload.size()));
        copy_in(static_cast<uint32_t>(w + 16 + payload.size()), zeros, static_cast<uint32_t>(len - 16 - payload.size()));
        copy_in(w + len, reinterpret_cast<const uint8_t*>(&trailer), 8);
        hdr_store(kRingWriteIndex, (w + len + 8) % size());
        return true;
    }
    // Guest read (hv_pkt_iter_first/next): returns the payload of the next packet.
    std::optional<std::pair<PacketDescriptor, std::vector<uint8_t>>> guest_read() {
        const uint32_t w = hdr(kRingWriteIndex), r = hdr(kRingReadIndex);
        if (w == r) return std::nullopt;
        PacketDescriptor d;
        copy_out(r, reinterpret_cast<uint8_t*>(&d), 16);
        std::vector<uint8_t> payload(d.len8 * 8u - d.offset8 * 8u);
        copy_out(r + d.offset8 * 8u, payload.data(), static_cast<uint32_t>(payload.size()));
        hdr_store(kRingReadIndex, (r + d.len8 * 8u + 8) % size());
        return std::pair{d, payload};
    }
    std::vector<uint8_t> ram;
    std::vector<uint64_t> pfns;
    GuestMemory mem;
};

// What the old InRing::next() did: peek a packet, then move past it (commit is separate).
struct Read {
    PacketDescriptor desc;
    std::vector<uint8_t> payload;
};
// A packet whose framing holds but which is wrong in itself is an error here too (the
// queue drops it: HostilePacketsWithSoundFramingAreDroppedAndTheNextOneIsRead).
Result<std::optional<Read>> next(InRing& in, std::vector<uint64_t>& buf, uint32_t max_len) {
    ENL_TRY(auto got, in.peek(buf, max_len));
    if (!got) return std::optional<Read>{};
    if (!got->bad.empty()) return fail(Errc::Invalid, "{}", got->bad);
    Read r;
    std::memcpy(&r.desc, buf.data(), sizeof(r.desc));
    const auto* b = reinterpret_cast<const uint8_t*>(buf.data());
    r.payload.assign(b + r.desc.offset8 * 8u, b + got->len);
    in.skip(got->len);
    return std::optional<Read>(std::move(r));
}

Result<OutRing::WriteResult> write(OutRing& out, uint16_t type, uint64_t id, const std::vector<uint8_t>& payload,
                                   bool signal_always) {
    const iovec iov = iov_of(payload);
    OutPacket p{type, 0, id, 0, {}, std::span(&iov, 1)};
    return out.write(p, signal_always);
}

std::vector<uint8_t> bytes(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    std::iota(v.begin(), v.end(), seed);
    return v;
}

}  // namespace

TEST(Ring, MapsOnlyGuestRam) {
    GuestRing g(2);
    EXPECT_TRUE(RingMemory::map(g.mem, g.pfns));
    std::vector<uint64_t> bad = g.pfns;
    bad[2] = 1 << 20;  // far outside RAM
    EXPECT_FALSE(RingMemory::map(g.mem, bad));
    bad[2] = ~0ULL;  // would overflow when shifted
    EXPECT_FALSE(RingMemory::map(g.mem, bad));
    EXPECT_FALSE(RingMemory::map(g.mem, std::span(g.pfns).first(1)));  // header only
}

TEST(Ring, HostReadsWhatTheGuestWroteAcrossTheWrap) {
    for (bool scatter : {false, true}) {
        GuestRing g(1, scatter);
        InRing in(RingMemory::map(g.mem, g.pfns).value());
        std::vector<uint64_t> buf;
        // Fill and drain repeatedly with odd sizes so packets straddle the end of the ring.
        for (int round = 0; round < 200; ++round) {
            const auto payload = bytes(static_cast<size_t>(37 + (round * 53) % 900), static_cast<uint8_t>(round));
            ASSERT_TRUE(g.guest_write(kPacketDataInband, static_cast<uint64_t>(round), payload));
            auto pkt = next(in, buf, 4096);
            ASSERT_TRUE(pkt) << pkt.error().message();
            ASSERT_TRUE(pkt->has_value());
            EXPECT_EQ((*pkt)->desc.trans_id, static_cast<uint64_t>(round));
            const auto& got = (*pkt)->payload;
            ASSERT_GE(got.size(), payload.size());
            EXPECT_TRUE(std::equal(payload.begin(), payload.end(), got.begin())) << "round " << round;
            in.commit();
            EXPECT_FALSE(next(in, buf, 4096)->has_value());
        }
    }
}

TEST(Ring, GuestReadsWhatTheHostWroteAcrossTheWrap) {
    for (bool scatter : {false, true}) {
        GuestRing g(1, scatter);
        OutRing out(RingMemory::map(g.mem, g.pfns).value());
        EXPECT_EQ(g.hdr(kRingFeatureBits) & 1, 1u);
        for (int round = 0; round < 200; ++round) {
            const auto payload = bytes(static_cast<size_t>(11 + (round * 71) % 1000), static_cast<uint8_t>(round * 3));
            auto w = write(out, kPacketCompletion, 1000 + static_cast<uint64_t>(round), payload, false);
            ASSERT_TRUE(w && w->written);
            EXPECT_TRUE(w->signal);  // the guest had read everything: empty -> non-empty
            auto got = g.guest_read();
            ASSERT_TRUE(got);
            EXPECT_EQ(got->first.type, kPacketCompletion);
            EXPECT_EQ(got->first.trans_id, 1000u + static_cast<uint64_t>(round));
            EXPECT_TRUE(std::equal(payload.begin(), payload.end(), got->second.begin()));
            // Padding is zeroed.
            for (size_t i = payload.size(); i < got->second.size(); ++i) EXPECT_EQ(got->second[i], 0);
        }
    }
}

TEST(Ring, SignalOnlyOnEmptyToNonEmptyUnlessAskedAndNeverWhenMasked) {
    GuestRing g(4);
    OutRing out(RingMemory::map(g.mem, g.pfns).value());
    const auto p = bytes(100, 1);
    EXPECT_TRUE(write(out, kPacketDataInband, 1, p, false)->signal);
    EXPECT_FALSE(write(out, kPacketDataInband, 2, p, false)->signal);  // not empty before
    EXPECT_TRUE(write(out, kPacketDataInband, 3, p, true)->signal);    // signal_always
    g.hdr_store(kRingInterruptMask, 1);
    while (g.guest_read()) {}
    EXPECT_FALSE(write(out, kPacketDataInband, 4, p, true)->signal);  // masked
}

TEST(Ring, FullRingSetsPendingSendSizeAndNeverFillsCompletely) {
    GuestRing g(1);  // 4096 data bytes
    OutRing out(RingMemory::map(g.mem, g.pfns).value());
    const auto p = bytes(1000, 0);  // 16 + 1000 = 1016 bytes, 1024 with the trailer
    int written = 0;
    for (;;) {
        auto w = write(out, kPacketDataInband, static_cast<uint64_t>(written), p, false);
        ASSERT_TRUE(w);
        if (!w->written) break;
        ++written;
    }
    EXPECT_EQ(written, 3);  // a 4th would leave the ring completely full
    EXPECT_EQ(g.hdr(kRingPendingSendSize), 1024u);
    EXPECT_NE(g.hdr(kRingWriteIndex), g.hdr(kRingReadIndex));
    // The guest reads one; now there is room, and pending_send_sz is cleared on success.
    ASSERT_TRUE(g.guest_read());
    auto w = write(out, kPacketDataInband, 99, p, false);
    ASSERT_TRUE(w && w->written);
    EXPECT_EQ(g.hdr(kRingPendingSendSize), 0u);
    // A packet that can never fit is an error, not a wait.
    EXPECT_FALSE(write(out, kPacketDataInband, 1, bytes(5000, 0), false));
}

TEST(Ring, ReaderSignalsTheGuestWhenFreeSpaceCrossesItsPendingSendSize) {
    GuestRing g(1);
    InRing in(RingMemory::map(g.mem, g.pfns).value());
    std::vector<uint64_t> buf;
    const auto p = bytes(1000, 0);
    int packets = 0;
    while (g.guest_write(kPacketDataInband, 1, p)) ++packets;
    ASSERT_EQ(packets, 3);  // 3 x 1024 bytes; a 4th would fill the ring
    // The guest wants 2500 bytes and waits.
    g.hdr_store(kRingPendingSendSize, 2500);
    ASSERT_TRUE(next(in, buf, 4096)->has_value());
    EXPECT_FALSE(in.commit());  // free space 1024 -> 2048: not yet above 2500
    ASSERT_TRUE(next(in, buf, 4096)->has_value());
    EXPECT_TRUE(in.commit());   // 2048 -> 3072: crossed, signal
    ASSERT_TRUE(next(in, buf, 4096)->has_value());
    EXPECT_FALSE(in.commit());  // already above before: no second signal
}

TEST(Ring, InterruptMaskAndRecheck) {
    GuestRing g(1);
    InRing in(RingMemory::map(g.mem, g.pfns).value());
    in.set_interrupt_mask(true);
    EXPECT_EQ(g.hdr(kRingInterruptMask), 1u);
    in.set_interrupt_mask(false);
    EXPECT_EQ(g.hdr(kRingInterruptMask), 0u);
    EXPECT_FALSE(in.has_data());
    g.guest_write(kPacketDataInband, 1, bytes(8, 0));
    EXPECT_TRUE(in.has_data());
}

TEST(Ring, HostileIndicesAndDescriptorsAreErrorsNotCrashes) {
    GuestRing g(1);
    std::vector<uint64_t> buf;
    {
        InRing in(RingMemory::map(g.mem, g.pfns).value());
        g.hdr_store(kRingWriteIndex, 5000);  // beyond the ring
        EXPECT_FALSE(next(in, buf, 4096));
        g.hdr_store(kRingWriteIndex, 12);  // misaligned
        EXPECT_FALSE(next(in, buf, 4096));
        g.hdr_store(kRingWriteIndex, 16);  // less than descriptor + trailer
        EXPECT_FALSE(next(in, buf, 4096));
    }
    auto bad_desc = [&](PacketDescriptor d, uint32_t avail, uint32_t max_len) {
        GuestRing r(1);
        std::memcpy(r.data_at(0), &d, sizeof(d));
        r.hdr_store(kRingWriteIndex, avail);
        InRing in(RingMemory::map(r.mem, r.pfns).value());
        return !next(in, buf, max_len);
    };
    EXPECT_TRUE(bad_desc({6, 2, 1, 0, 0}, 64, 4096));    // length below the descriptor
    EXPECT_TRUE(bad_desc({6, 1, 4, 0, 0}, 64, 4096));    // payload inside the descriptor
    EXPECT_TRUE(bad_desc({6, 5, 4, 0, 0}, 64, 4096));    // offset beyond the length
    EXPECT_TRUE(bad_desc({6, 2, 100, 0, 0}, 64, 4096));  // longer than what is in the ring
    EXPECT_TRUE(bad_desc({6, 2, 100, 0, 0}, 1024, 512)); // longer than the channel allows
    EXPECT_FALSE(bad_desc({6, 2, 4, 0, 0}, 40, 4096));   // a good one
    // A corrupt read index on a ring we write.
    GuestRing g2(1);
    OutRing out(RingMemory::map(g2.mem, g2.pfns).value());
    g2.hdr_store(kRingReadIndex, 4097);
    EXPECT_FALSE(write(out, kPacketDataInband, 1, bytes(8, 0), false));
}

TEST(Ring, HostilePacketsWithSoundFramingAreDroppedAndTheNextOneIsRead) {
    // The guest's ring holds a packet whose payload offset lies, one longer than the channel
    // allows, then a good one: the first two are reported (only their descriptors copied), and
    // skipping them lands on the third. Only broken framing is fatal.
    GuestRing g(1);
    ASSERT_TRUE(g.guest_write(kPacketDataInband, 1, bytes(24, 1)));
    ASSERT_TRUE(g.guest_write(kPacketDataInband, 2, bytes(600, 2)));
    ASSERT_TRUE(g.guest_write(kPacketDataInband, 3, bytes(8, 3)));
    PacketDescriptor d;
    std::memcpy(&d, g.data_at(0), sizeof(d));
    d.offset8 = 0x7fff;  // far past its 40 bytes
    std::memcpy(g.data_at(0), &d, sizeof(d));
    InRing in(RingMemory::map(g.mem, g.pfns).value());
    std::vector<uint64_t> buf;
    for (const uint64_t id : {uint64_t{1}, uint64_t{2}}) {
        auto got = in.peek(buf, 512);
        ASSERT_TRUE(got && *got) << "packet " << id;
        EXPECT_FALSE((*got)->bad.empty()) << "packet " << id;
        PacketDescriptor seen;
        std::memcpy(&seen, buf.data(), sizeof(seen));
        EXPECT_EQ(seen.trans_id, id);
        in.skip((*got)->len);
    }
    auto good = next(in, buf, 512);
    ASSERT_TRUE(good && *good);
    EXPECT_EQ((*good)->desc.trans_id, 3U);
    EXPECT_EQ((*good)->payload, bytes(8, 3));
}

TEST(Ring, GatheredPayloadAndTransferPageHeaderArriveAsOnePacket) {
    GuestRing g(2);
    OutRing out(RingMemory::map(g.mem, g.pfns).value());
    const auto a = bytes(13, 1), b = bytes(200, 50), c = bytes(3, 9);
    const iovec iov[] = {iov_of(a), iov_of(b), iov_of(c)};
    const XferRange ranges[] = {{1500, 0}, {60, 4096}};
    auto w = out.write(OutPacket::xfer_pages(77, 0xcafe, ranges, iov), false);
    ASSERT_TRUE(w && w->written);
    auto got = g.guest_read();
    ASSERT_TRUE(got);
    EXPECT_EQ(got->first.type, kPacketDataUsingXferPages);
    EXPECT_EQ(got->first.offset8 * 8u, 16u + 8u + 16u);  // descriptor, set header, two ranges
    EXPECT_EQ(got->first.flags, kPacketFlagCompletionRequested);
    std::vector<uint8_t> expect(a);
    expect.insert(expect.end(), b.begin(), b.end());
    expect.insert(expect.end(), c.begin(), c.end());
    ASSERT_GE(got->second.size(), expect.size());
    EXPECT_TRUE(std::equal(expect.begin(), expect.end(), got->second.begin()));
    // The header extension as netvsc reads it (hyperv_net.h vmtransfer_page_packet_header).
    uint8_t ext[24];
    g.copy_out(16, ext, sizeof(ext));
    uint16_t set;
    uint32_t count, first_len, second_off;
    std::memcpy(&set, ext, 2);
    std::memcpy(&count, ext + 4, 4);
    std::memcpy(&first_len, ext + 8, 4);
    std::memcpy(&second_off, ext + 20, 4);
    EXPECT_EQ(set, 0xcafe);
    EXPECT_EQ(count, 2u);
    EXPECT_EQ(first_len, 1500u);
    EXPECT_EQ(second_off, 4096u);
}
