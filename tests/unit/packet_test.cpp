// Parsing of the packet forms a device sees (vmbus/packet.hpp), against the layouts Linux
// builds: storvsc's GPA-direct (vmbus_sendpacket_mpb_desc), netvsc's page buffers
// (vmbus_sendpacket_pagebuffer), transfer-page packets; and hostile headers.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/wire.hpp"
#include "support/sim_guest.hpp"
#include "vmbus/packet.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

namespace {

// A packet as the ring hands it over: descriptor, header extension, payload, in 8-byte words.
std::vector<uint64_t> packet(uint16_t type, std::span<const uint8_t> ext, size_t payload_bytes) {
    const size_t header = 16 + ext.size();
    const size_t len = (header + payload_bytes + 7) / 8 * 8;
    PacketDescriptor d{type, static_cast<uint16_t>(header / 8), static_cast<uint16_t>(len / 8), 1, 0x77};
    ByteWriter b;
    b.put(d).bytes(ext);
    for (size_t i = 0; i < payload_bytes; ++i) b.put(static_cast<uint8_t>(i));
    b.zeros(len - b.size());
    std::vector<uint64_t> words;
    for (size_t i = 0; i < len; i += 8) words.push_back(read_prefix<uint64_t>(b.view().subspan(i)).value());
    return words;
}

}  // namespace

TEST(Packets, StorvscGpaDirectWithOneRangeOfManyPages) {
    // 1 MiB starting 0x800 into its first page: 257 page numbers.
    ByteWriter ext;
    ext.put(uint32_t{0}).put(uint32_t{1}).put(uint32_t{1 << 20}).put(uint32_t{0x800});
    for (uint64_t i = 0; i < 257; ++i) ext.put(uint64_t{1000 + i});
    const auto words = packet(kPacketDataUsingGpaDirect, ext.view(), 64);
    PacketScratch scratch;
    auto v = parse_packet(words, scratch);
    ASSERT_TRUE(v) << v.error().message();
    EXPECT_EQ(v->trans_id, 0x77u);
    EXPECT_TRUE(v->completion_requested());
    ASSERT_EQ(v->gpa_ranges.size(), 1u);
    EXPECT_EQ(v->gpa_ranges[0].pfns.size(), 257u);
    EXPECT_EQ(v->gpa_ranges[0].pfns.back(), 1256u);
    EXPECT_EQ(v->gpa_ranges[0].gpa_of((1 << 20) - 1), 1256u * 4096 + 0x7ff);
    EXPECT_EQ(v->gpa_bytes(), 1u << 20);
    ASSERT_EQ(v->payload.size(), 64u);
    EXPECT_EQ(v->payload[63], 63);
}

TEST(Packets, NetvscPageBuffersAreOneRangePerPage) {
    ByteWriter ext;
    ext.put(uint32_t{0}).put(uint32_t{3});
    const uint32_t lens[] = {200, 4096, 100};
    const uint32_t offs[] = {0xf00, 0, 0};
    for (int i = 0; i < 3; ++i) ext.put(lens[i]).put(offs[i]).put(uint64_t{50u + static_cast<uint64_t>(i)});
    const auto words = packet(kPacketDataUsingGpaDirect, ext.view(), 40);
    PacketScratch scratch;
    auto v = parse_packet(words, scratch);
    ASSERT_TRUE(v);
    ASSERT_EQ(v->gpa_ranges.size(), 3u);
    EXPECT_EQ(v->gpa_ranges[0].gpa_of(0), 50u * 4096 + 0xf00);
    EXPECT_EQ(v->gpa_ranges[2].pfns[0], 52u);
    EXPECT_EQ(v->gpa_bytes(), 4396u);
}

TEST(Packets, HostileGpaDirectHeadersAreErrors) {
    PacketScratch scratch;
    auto parse = [&](std::initializer_list<uint32_t> head, std::initializer_list<uint64_t> pfns) {
        ByteWriter ext;
        for (uint32_t v : head) ext.put(v);
        for (uint64_t p : pfns) ext.put(p);
        const auto words = packet(kPacketDataUsingGpaDirect, ext.view(), 8);
        return parse_packet(words, scratch);
    };
    EXPECT_TRUE(parse({0, 1, 4096, 0}, {1}));
    EXPECT_FALSE(parse({0, 0}, {}));                       // no ranges
    EXPECT_FALSE(parse({0, 2, 4096, 0}, {1}));             // the second range is missing
    EXPECT_FALSE(parse({0, 1, 0, 0}, {1}));                // empty
    EXPECT_FALSE(parse({0, 1, 100, 4096}, {1}));           // starts past its first page
    EXPECT_FALSE(parse({0, 1, 4097, 0}, {1}));             // needs two pages, names one
    EXPECT_FALSE(parse({0, 1, 0xffffffffu, 4095}, {1}));   // needs a million
    EXPECT_FALSE(parse({0, 1, 16, 0}, {uint64_t{1} << 52}));  // beyond 2^52
    EXPECT_FALSE(parse({0}, {}));                          // no room for the range count
    auto v = parse({0, 0xffffffffu, 4096, 0}, {1});        // a count the loop must not believe
    EXPECT_FALSE(v);
    EXPECT_TRUE(v.error().is(Errc::Invalid));
}

TEST(Packets, TransferPageRangesAndOutgoingSizes) {
    ByteWriter ext;
    ext.put(uint16_t{0xcafe}).put(uint8_t{0}).put(uint8_t{0}).put(uint32_t{2});
    ext.put(XferRange{1514, 0}).put(XferRange{60, 4096});
    const auto words = packet(kPacketDataUsingXferPages, ext.view(), 16);
    PacketScratch scratch;
    auto v = parse_packet(words, scratch);
    ASSERT_TRUE(v);
    EXPECT_EQ(v->xfer_set_id, 0xcafe);
    ASSERT_EQ(v->xfer_ranges.size(), 2u);
    EXPECT_EQ(v->xfer_ranges[1].byte_offset, 4096u);
    // A range count beyond the header.
    ByteWriter lie;
    lie.put(uint16_t{1}).put(uint8_t{0}).put(uint8_t{0}).put(uint32_t{100}).put(XferRange{1, 0});
    EXPECT_FALSE(parse_packet(packet(kPacketDataUsingXferPages, lie.view(), 8), scratch));
    // What the host sends: sizes as netvsc checks them (offset8 * 8 = 24 + 8 n).
    const XferRange ranges[3] = {};
    const uint8_t payload[16] = {};
    const iovec iov = iov_of(payload);
    const auto out = OutPacket::xfer_pages(1, 0xcafe, ranges, std::span(&iov, 1));
    EXPECT_EQ(out.header_bytes(), 48u);
    EXPECT_EQ(out.packet_bytes(), 64u);
    EXPECT_EQ(out.ring_bytes(), 72u);
    const uint8_t odd[13] = {};
    const iovec iov2 = iov_of(odd);
    EXPECT_EQ(OutPacket::completion(1, std::span(&iov2, 1)).packet_bytes(), 32u);  // 16 + 13, padded
    // An inband packet of a descriptor only, and a malformed descriptor.
    EXPECT_TRUE(parse_packet(packet(kPacketDataInband, {}, 0), scratch));
    auto bad = packet(kPacketDataInband, {}, 8);
    reinterpret_cast<PacketDescriptor*>(bad.data())->offset8 = 9;
    EXPECT_FALSE(parse_packet(bad, scratch));
}

// Found by fuzz_ring (bench/results/fuzz-2026-12-07.md): a transfer-page packet with no
// ranges copied zero bytes into an empty vector's null data(), undefined behaviour that the
// UBSan build turns into an abort. It parses, with no ranges.
TEST(Packets, TransferPagePacketWithNoRanges) {
    ByteWriter ext;
    ext.put(uint16_t{7}).put(uint8_t{0}).put(uint8_t{0}).put(uint32_t{0});
    PacketScratch scratch;
    auto v = parse_packet(packet(kPacketDataUsingXferPages, ext.view(), 8), scratch);
    ASSERT_TRUE(v);
    EXPECT_EQ(v->xfer_set_id, 7);
    EXPECT_TRUE(v->xfer_ranges.empty());
}

// A range's page count follows from its offset and byte count, whatever its writer put after
// it: a range that says more pages than the PFNs behind it takes the next range's header and
// PFNs as its own (the packet fuzz_storvsp found, whose reply went to "page 0", the 8 zero
// bytes of the empty range after it). The simulated guest's stray-write check reads the
// extension the same way (SimGuest::gpa_direct_pfns); both must agree.
TEST(Packets, ARangeThatSaysMorePagesThanItListsTakesWhatFollows) {
    std::vector<test::SimGuest::Range> ranges = {{139906, 130, {}}, {0, 0, {}}, {253952, 0, {}}};
    for (uint64_t p = 0xc8; p < 0xf8; ++p) ranges[2].pfns.push_back(p);
    const auto ext = test::SimGuest::gpa_direct_ext(ranges);
    const auto words = packet(kPacketDataUsingGpaDirect, ext, 64);
    PacketScratch scratch;
    auto v = parse_packet(words, scratch);
    ASSERT_TRUE(v) << v.error().message();
    ASSERT_EQ(v->gpa_ranges.size(), 3u);
    ASSERT_EQ(v->gpa_ranges[0].pfns.size(), 35u);  // ceil((130 + 139906) / 4096)
    EXPECT_EQ(v->gpa_ranges[0].pfns[0], 0u);        // the empty range's header
    EXPECT_EQ(v->gpa_ranges[0].pfns[1], 253952u);   // the third range's header: count, offset 0
    EXPECT_EQ(v->gpa_ranges[0].pfns[2], 0xc8u);
    EXPECT_EQ(v->gpa_ranges[0].gpa_of(0), 130u);    // byte 130 of page 0

    std::vector<uint64_t> parsed;
    for (const auto& r : v->gpa_ranges) parsed.insert(parsed.end(), r.pfns.begin(), r.pfns.end());
    EXPECT_EQ(test::SimGuest::gpa_direct_pfns(ext), parsed);
}
