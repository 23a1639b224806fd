// The SCSI disk and DVD targets (devices/scsi) against golden bytes from SPC-4, SBC-3, MMC-3
// and what Linux 6.1 sends and parses (contract-storage.md §5, §10, §11, §14), and hostile CDBs.
#include <gtest/gtest.h>

#include <cstring>
#include <string_view>
#include <vector>

#include "devices/scsi/scsi.hpp"

using namespace enlighten;
using namespace enlighten::scsi;
using Kind = Command::Kind;
using Bytes = std::vector<uint8_t>;

namespace {

// Golden bytes: numbers, and strings spelled out as ASCII.
struct Golden {
    Bytes b;
    Golden& operator()(std::initializer_list<int> v) {
        for (int x : v) b.push_back(static_cast<uint8_t>(x));
        return *this;
    }
    Golden& operator()(std::string_view s) {
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Golden& zeros(size_t n) {
        b.insert(b.end(), n, 0);
        return *this;
    }
};

struct Reply {
    Command cmd;
    Bytes data;  // the data_in bytes of `out`
};

Reply run(const DiskParams& p, const Bytes& cdb, uint32_t buffer = 4096, size_t out_size = 4096) {
    Bytes out(out_size, 0xEE);
    const Command c = decode(p, cdb, buffer, out);
    EXPECT_LE(c.data_in, out.size());
    EXPECT_LE(c.data_in, buffer);
    if (c.kind == Kind::Done) {
        EXPECT_EQ(c.bytes, c.data_in);
    }
    out.resize(std::min<size_t>(c.data_in, out.size()));
    return {c, out};
}

void expect_check(const Command& c, Sense s) {
    EXPECT_EQ(c.kind, Kind::Done);
    EXPECT_EQ(c.status, kCheckCondition);
    EXPECT_EQ(c.sense, s);
}
void expect_good(const Command& c) {
    EXPECT_EQ(c.kind, Kind::Done);
    EXPECT_EQ(c.status, kGood);
    EXPECT_EQ(c.sense, Sense{});
}

DiskParams disk(uint64_t blocks = 20971520) {
    DiskParams p;
    p.blocks = blocks;
    return p;
}

Bytes inquiry(uint8_t evpd, uint8_t page, uint16_t alloc) {
    return {op::kInquiry, evpd, page, static_cast<uint8_t>(alloc >> 8), static_cast<uint8_t>(alloc), 0};
}
Bytes mode_sense6(uint8_t page, uint8_t alloc) { return {op::kModeSense6, 0, page, 0, alloc, 0}; }
Bytes be(uint64_t v, size_t n) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(v >> (8 * (n - 1 - i)));
    return b;
}
Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes r;
    for (const auto& p : parts) r.insert(r.end(), p.begin(), p.end());
    return r;
}
Bytes rw10(uint8_t opcode, uint32_t lba, uint16_t blocks, uint8_t flags = 0) {
    return cat({{opcode, flags}, be(lba, 4), {0}, be(blocks, 2), {0}});
}
Bytes rw12(uint8_t opcode, uint32_t lba, uint32_t blocks, uint8_t flags = 0) {
    return cat({{opcode, flags}, be(lba, 4), be(blocks, 4), {0, 0}});
}
Bytes rw16(uint8_t opcode, uint64_t lba, uint32_t blocks, uint8_t flags = 0) {
    return cat({{opcode, flags}, be(lba, 8), be(blocks, 4), {0, 0}});
}
Bytes rw6(uint8_t opcode, uint32_t lba, uint8_t blocks) {
    return {opcode, static_cast<uint8_t>(lba >> 16), static_cast<uint8_t>(lba >> 8), static_cast<uint8_t>(lba), blocks, 0};
}
Bytes rc16(uint32_t alloc) { return cat({{op::kServiceActionIn16, kSaReadCapacity16}, be(0, 8), be(alloc, 4), {0, 0}}); }
Bytes unmap_cdb(uint16_t length, uint8_t flags = 0) { return cat({{op::kUnmap, flags, 0, 0, 0, 0, 0}, be(length, 2), {0}}); }
Bytes report_luns_cdb(uint32_t alloc, uint8_t select = 0) {
    return cat({{op::kReportLuns, 0, select, 0, 0, 0}, be(alloc, 4), {0, 0}});
}
// An UNMAP parameter list as Linux builds it (sd_setup_unmap_cmnd), with any number of ranges.
Bytes unmap_list(std::initializer_list<UnmapRange> ranges) {
    Bytes b = cat({be(6 + 16 * ranges.size(), 2), be(16 * ranges.size(), 2), be(0, 4)});
    for (const auto& r : ranges) b = cat({b, be(r.lba, 8), be(r.blocks, 4), be(0, 4)});
    return b;
}

}  // namespace

// ---- INQUIRY ----

TEST(ScsiInquiry, StandardDataOfMsftVirtualDisk) {
    // §11, §15: "Direct-Access Msft Virtual Disk 1.0 PQ: 0 ANSI: 5"; CmdQue makes the LUN tagged.
    const Bytes golden = Golden()({0x00, 0x00, 0x05, 0x02, 0x1F, 0x00, 0x00, 0x02})("Msft    ")("Virtual Disk    ")("1.0 ").b;
    auto r = run(disk(), inquiry(0, 0, 36));
    expect_good(r.cmd);
    EXPECT_EQ(r.data, golden);
    // A longer allocation gets the same 36 bytes (Linux asks again only if byte 4 + 5 > 36).
    r = run(disk(), inquiry(0, 0, 255));
    EXPECT_EQ(r.data, golden);
    // Shorter: truncated to the allocation length, then to the buffer.
    r = run(disk(), inquiry(0, 0, 5));
    EXPECT_EQ(r.data, Bytes(golden.begin(), golden.begin() + 5));
    r = run(disk(), inquiry(0, 0, 36), 10);
    EXPECT_EQ(r.data.size(), 10u);
    // Allocation length 0: nothing, and no error (SPC-4 6.6.1).
    r = run(disk(), inquiry(0, 0, 0));
    expect_good(r.cmd);
    EXPECT_TRUE(r.data.empty());
}

TEST(ScsiInquiry, StringsArePaddedTruncatedAndPrintable) {
    DiskParams p = disk();
    p.vendor = "ABCDEFGHIJ";
    p.product = "x\x01y";
    p.revision = "";
    auto r = run(p, inquiry(0, 0, 36));
    EXPECT_EQ(Bytes(r.data.begin() + 8, r.data.end()),
              Golden()("ABCDEFGH")("x y             ")("    ").b);
}

TEST(ScsiInquiry, SupportedVpdPagesListExactlyThoseImplemented) {
    auto r = run(disk(), inquiry(1, 0x00, 255));
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x00, 0x00, 0x00, 0x04, 0x00, 0x83, 0xB0, 0xB1}).b);
    // §10.1 step 3: length 4 first (the header), then the full length.
    r = run(disk(), inquiry(1, 0x00, 4));
    EXPECT_EQ(r.data, Golden()({0x00, 0x00, 0x00, 0x04}).b);

    DiskParams p = disk();
    p.serial = "SN1";
    p.discard = true;
    r = run(p, inquiry(1, 0x00, 255));
    EXPECT_EQ(r.data, Golden()({0x00, 0x00, 0x00, 0x06, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2}).b);
    // Every listed page answers with its own code, a nonzero length, and GOOD (§10.1 step 3).
    for (size_t i = 4; i < r.data.size(); ++i) {
        auto page = run(p, inquiry(1, r.data[i], 255));
        expect_good(page.cmd);
        ASSERT_GE(page.data.size(), 4u);
        EXPECT_EQ(page.data[1], r.data[i]);
        EXPECT_EQ(page.data.size(), 4u + load_be16(page.data.data() + 2));
        EXPECT_TRUE(page.data[0] == 0 && (r.data[i] == 0 || page.data[3] != 0));
    }
}

TEST(ScsiInquiry, UnsupportedVpdPageIsInvalidFieldWithAnEmptyHeader) {
    // 80 without a serial, B2 without discard, 89 never: 24/00, and (INQUIRY being forced to
    // success by storvsc, §5) a header of length 0 that Linux's scsi_vpd_inquiry rejects.
    for (uint8_t page : Bytes{0x80, 0xB2, 0x89, 0xC0}) {
        auto r = run(disk(), inquiry(1, page, 255));
        expect_check(r.cmd, kSenseInvalidField);
        EXPECT_EQ(r.data, Golden()({0x00, page, 0x00, 0x00}).b);
        EXPECT_EQ(r.cmd.bytes, 4u);
    }
}

TEST(ScsiInquiry, SerialNumberPage) {
    DiskParams p = disk();
    p.serial = "6002248-SERIAL";
    auto r = run(p, inquiry(1, 0x80, 255));
    EXPECT_EQ(r.data, Golden()({0x00, 0x80, 0x00, 14})("6002248-SERIAL").b);
}

TEST(ScsiInquiry, DeviceIdentificationDesignators) {
    DiskParams p = disk();
    p.serial = "SN1";
    p.naa_id = 0x0123456789ABCDEF;
    auto r = run(p, inquiry(1, 0x83, 255));
    expect_good(r.cmd);
    // T10 vendor id (ASCII, association 0): vendor, product, serial; then NAA 6 with Microsoft's
    // OUI 00-22-48 (60 02 24 80, as OpenVMM), 36 zero bits and the id.
    const Bytes golden = Golden()({0x00, 0x83, 0x00, 51})({0x02, 0x01, 0x00, 27})("Msft    ")("Virtual Disk    ")("SN1")(
                             {0x01, 0x03, 0x00, 16, 0x60, 0x02, 0x24, 0x80, 0, 0, 0, 0})(
                             {0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF})
                             .b;
    EXPECT_EQ(r.data, golden);
    // Without an id or a serial: the T10 designator alone, vendor and product.
    r = run(disk(), inquiry(1, 0x83, 255));
    EXPECT_EQ(r.data, Golden()({0x00, 0x83, 0x00, 28})({0x02, 0x01, 0x00, 24})("Msft    ")("Virtual Disk    ").b);
}

TEST(ScsiInquiry, BlockLimitsWithoutDiscard) {
    DiskParams p = disk();
    p.max_transfer_blocks = 0x800;
    auto r = run(p, inquiry(1, 0xB0, 255));
    expect_good(r.cmd);
    // Page length 3Ch; WSNZ; granularity 8 (4096/512); maximum transfer 800h; no unmap fields.
    const Bytes golden = Golden()({0x00, 0xB0, 0x00, 0x3C, 0x01, 0x00, 0x00, 0x08, 0x00, 0x00, 0x08, 0x00}).zeros(52).b;
    EXPECT_EQ(r.data, golden);
}

TEST(ScsiInquiry, BlockLimitsWithDiscardSelectUnmapMode) {
    // §11: with LBPME, B0 of length >= 64 with a nonzero max unmap LBA count and descriptor
    // count, and B2 LBPU: provisioning_mode "unmap".
    DiskParams p = disk();
    p.discard = true;
    auto r = run(p, inquiry(1, 0xB0, 255));
    const Bytes golden = Golden()({0x00, 0xB0, 0x00, 0x3C, 0x01, 0x00, 0x00, 0x08})
                             .zeros(12)({0xFF, 0xFF, 0xFF, 0xFF})  // @20 max unmap LBA count: no limit
                             ({0x00, 0x00, 0x01, 0x00})            // @24 256 descriptors
                             ({0x00, 0x00, 0x00, 0x08})            // @28 granularity: the physical block
                             ({0x80, 0x00, 0x00, 0x00})            // @32 UGAVALID, alignment 0
                             .zeros(8)                             // @36 max WRITE SAME length: none
                             .zeros(20)
                             .b;
    EXPECT_EQ(r.data, golden);
    ASSERT_EQ(r.data.size(), 64u);

    p.max_unmap_blocks = 0x10000;
    p.max_unmap_descriptors = 1;
    p.unmap_granularity_blocks = 2048;
    r = run(p, inquiry(1, 0xB0, 255));
    EXPECT_EQ(Bytes(r.data.begin() + 20, r.data.begin() + 44),
              Golden()({0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 8, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}).b);
}

TEST(ScsiInquiry, BlockCharacteristicsNonRotational) {
    auto r = run(disk(), inquiry(1, 0xB1, 255));
    EXPECT_EQ(r.data, Golden()({0x00, 0xB1, 0x00, 0x3C, 0x00, 0x01}).zeros(58).b);
    DiskParams p = disk();
    p.non_rotational = false;
    r = run(p, inquiry(1, 0xB1, 255));
    EXPECT_EQ(r.data[5], 0);
}

TEST(ScsiInquiry, LogicalBlockProvisioning) {
    DiskParams p = disk();
    p.discard = true;
    auto r = run(p, inquiry(1, 0xB2, 255));
    EXPECT_EQ(r.data, Golden()({0x00, 0xB2, 0x00, 0x04, 0x00, 0xC0, 0x02, 0x00}).b);  // LBPU, LBPWS, thin
    p.discard_zeroes = true;
    r = run(p, inquiry(1, 0xB2, 255));
    EXPECT_EQ(r.data[5], 0xC4);  // and LBPRZ
}

TEST(ScsiInquiry, HostileFields) {
    // A page code without EVPD, and the obsolete CmdDt bit: 24/00, no data.
    auto r = run(disk(), inquiry(0, 0x80, 255));
    expect_check(r.cmd, kSenseInvalidField);
    EXPECT_TRUE(r.data.empty());
    r = run(disk(), inquiry(2, 0, 255));
    expect_check(r.cmd, kSenseInvalidField);
    // Bits 7:5 of byte 1 (the SCSI-2 LUN field Linux may still fill) are ignored.
    r = run(disk(), inquiry(0x20, 0, 36));
    expect_good(r.cmd);
    EXPECT_EQ(r.data.size(), 36u);
    // A smaller `out` than the answer: clipped to it.
    r = run(disk(), inquiry(0, 0, 36), 4096, 7);
    EXPECT_EQ(r.data.size(), 7u);
    EXPECT_EQ(r.data[2], 5);
}

// ---- READ CAPACITY ----

TEST(ScsiCapacity, ReadCapacity10) {
    auto r = run(disk(20971520), {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x01, 0x3F, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00}).b);
    // More than 2^32 blocks (and exactly 2^32): FFFFFFFFh, and Linux goes to RC16 (§11).
    for (uint64_t blocks : {(1ull << 32) + 5, 1ull << 32}) {
        r = run(disk(blocks), {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0});
        EXPECT_EQ(r.data, Golden()({0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00}).b);
    }
    r = run(disk(0xFFFFFFFF), {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    EXPECT_EQ(r.data, Golden()({0xFF, 0xFF, 0xFF, 0xFE, 0x00, 0x00, 0x02, 0x00}).b);
    // An LBA without PMI: 24/00 (SBC-3 5.15.1). A 4-byte buffer: 4 bytes.
    expect_check(run(disk(), {op::kReadCapacity10, 0, 0, 0, 0, 1, 0, 0, 0, 0}).cmd, kSenseInvalidField);
    r = run(disk(), {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 4);
    EXPECT_EQ(r.data.size(), 4u);
}

TEST(ScsiCapacity, ReadCapacity16) {
    DiskParams p = disk((1ull << 32) + 5);
    auto r = run(p, rc16(32));
    expect_good(r.cmd);
    // Last LBA, 512, PROT_EN 0, exponent 3 (4096/512), no LBPME.
    EXPECT_EQ(r.data, Golden()({0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 2, 0, 0x00, 0x03, 0x00, 0x00}).zeros(16).b);
    p.discard = true;
    r = run(p, rc16(32));
    EXPECT_EQ(r.data[14], 0x80);  // LBPME
    p.discard_zeroes = true;
    r = run(p, rc16(32));
    EXPECT_EQ(r.data[14], 0xC0);  // LBPME, LBPRZ
    p.discard = false;
    r = run(p, rc16(32));
    EXPECT_EQ(r.data[14], 0x00);  // LBPRZ only with LBPME
    // 4096-byte logical blocks: exponent 0.
    p.block_size = 4096;
    r = run(p, rc16(32));
    EXPECT_EQ(r.data[13], 0);
    EXPECT_EQ(r.data[10], 0x10);
    // Allocation length clips; other service actions (GET LBA STATUS 12h) are 24/00.
    EXPECT_EQ(run(p, rc16(12)).data.size(), 12u);
    Bytes c = rc16(32);
    c[1] = 0x12;
    expect_check(run(p, c).cmd, kSenseInvalidField);
}

// ---- MODE SENSE, MODE SELECT ----

TEST(ScsiModeSense, AllPagesAndCachingPageAsSdAsksForThem) {
    DiskParams p = disk();
    // §10.2 step 4: page 3Fh, allocation 4: the header, "Mode Sense: 17 00 00 00".
    auto r = run(p, mode_sense6(0x3F, 4));
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x17, 0x00, 0x00, 0x00}).b);
    // Step 5: page 08h with allocation 4, then header byte 0 + 1.
    r = run(p, mode_sense6(0x08, 4));
    EXPECT_EQ(r.data, Golden()({0x17, 0x00, 0x00, 0x00}).b);
    const Bytes full = Golden()({0x17, 0x00, 0x00, 0x00, 0x08, 0x12, 0x04}).zeros(17).b;  // WCE
    r = run(p, mode_sense6(0x08, static_cast<uint8_t>(r.data[0] + 1)));
    EXPECT_EQ(r.data, full);
    r = run(p, mode_sense6(0x3F, 255));
    EXPECT_EQ(r.data, full);
    // Subpage FFh of page 3Fh: the same (no subpages).
    r = run(p, {op::kModeSense6, 0, 0x3F, 0xFF, 255, 0});
    EXPECT_EQ(r.data, full);
}

TEST(ScsiModeSense, WriteProtectDpoFuaAndWriteCacheBits) {
    DiskParams p = disk();
    p.fua = true;
    auto r = run(p, mode_sense6(0x3F, 4));
    EXPECT_EQ(r.data, Golden()({0x17, 0x00, 0x10, 0x00}).b);  // §15 "Mode Sense: 17 00 10 00"
    p.read_only = true;
    r = run(p, mode_sense6(0x3F, 4));
    EXPECT_EQ(r.data[2], 0x90);  // WP | DPOFUA
    p.write_cache = false;
    r = run(p, mode_sense6(0x08, 255));
    EXPECT_EQ(r.data[6], 0x00);  // no WCE: Linux sends no flushes (§10.3)
}

TEST(ScsiModeSense, ModeSense10AndPageControl) {
    DiskParams p = disk();
    auto r = run(p, {op::kModeSense10, 0, 0x3F, 0, 0, 0, 0, 0, 255, 0});
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x00, 0x1A, 0, 0, 0, 0, 0, 0, 0x08, 0x12, 0x04}).zeros(17).b);
    // Changeable values: nothing is.
    r = run(p, mode_sense6(0x48, 255));
    EXPECT_EQ(r.data, Golden()({0x17, 0x00, 0x00, 0x00, 0x08, 0x12}).zeros(18).b);
    // Default values: the current ones.
    EXPECT_EQ(run(p, mode_sense6(0x88, 255)).data, run(p, mode_sense6(0x08, 255)).data);
}

TEST(ScsiModeSense, ErrorsStillCarryAWellFormedHeader) {
    // Forced to success by storvsc (§5): the header (WP, DPOFUA) with no pages goes out with
    // the CHECK CONDITION. sd's fallbacks (page 0, then 3Fh) see WP; a missing caching page
    // is "Assuming drive cache: write through".
    DiskParams p = disk();
    p.read_only = true;
    for (uint8_t page : Bytes{0x0A, 0x00, 0x2A}) {
        auto r = run(p, mode_sense6(page, 255));
        expect_check(r.cmd, kSenseInvalidField);
        EXPECT_EQ(r.data, Golden()({0x03, 0x00, 0x80, 0x00}).b);
        EXPECT_EQ(r.cmd.bytes, 4u);
    }
    auto r = run(p, mode_sense6(0xC8, 255));  // saved values
    expect_check(r.cmd, kSenseSavingNotSupported);
    EXPECT_EQ(r.data, Golden()({0x03, 0x00, 0x80, 0x00}).b);
    r = run(p, {op::kModeSense6, 0, 0x08, 0x01, 255, 0});  // a subpage
    expect_check(r.cmd, kSenseInvalidField);
    r = run(p, {op::kModeSense10, 0, 0x0A, 0, 0, 0, 0, 0, 255, 0});
    EXPECT_EQ(r.data, Golden()({0x00, 0x06, 0x00, 0x80, 0, 0, 0, 0}).b);
}

TEST(ScsiModeSelect, OnlyTheCurrentValuesAreAccepted) {
    DiskParams p = disk();
    std::vector<UnmapRange> ranges;
    // sd's cache_type_store: MODE SELECT(6) PF with the header and the page it read.
    const Bytes cdb = {op::kModeSelect6, 0x10, 0, 0, 24, 0};
    auto r = run(p, cdb, 24);
    EXPECT_EQ(r.cmd.kind, Kind::DataOut);
    EXPECT_EQ(r.cmd.data_out, 24u);
    Bytes list = Golden()({0x00, 0x00, 0x00, 0x00, 0x08, 0x12, 0x04}).zeros(17).b;
    auto c = finish_data_out(p, cdb, list, ranges);
    expect_good(c);
    EXPECT_EQ(c.bytes, 24u);
    list[4] |= 0x80;  // PS is ignored
    expect_good(finish_data_out(p, cdb, list, ranges));
    list[6] = 0x00;  // "write through": WCE is not changeable
    expect_check(finish_data_out(p, cdb, list, ranges), kSenseInvalidParameter);
    list[6] = 0x04;
    list[10] = 1;  // any other field
    expect_check(finish_data_out(p, cdb, list, ranges), kSenseInvalidParameter);
    // Cut short, another page, a block descriptor of another block length.
    expect_check(finish_data_out(p, cdb, Bytes(list.begin(), list.begin() + 10), ranges), kSenseParameterListLength);
    expect_check(finish_data_out(p, cdb, Golden()({0, 0, 0, 0, 0x0A, 0x0A}).zeros(10).b, ranges), kSenseInvalidParameter);
    expect_check(finish_data_out(p, cdb, Golden()({0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0}).b, ranges), kSenseInvalidParameter);
    expect_good(finish_data_out(p, cdb, Golden()({0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0}).b, ranges));
    // The CDB: SP (nothing is saveable), no PF, a list over the buffer or shorter than the header.
    expect_check(run(p, {op::kModeSelect6, 0x11, 0, 0, 24, 0}, 24).cmd, kSenseInvalidField);
    expect_check(run(p, {op::kModeSelect6, 0x00, 0, 0, 24, 0}, 24).cmd, kSenseInvalidField);
    expect_check(run(p, cdb, 23).cmd, kSenseInvalidField);
    expect_check(run(p, {op::kModeSelect6, 0x10, 0, 0, 3, 0}, 24).cmd, kSenseParameterListLength);
    expect_good(run(p, {op::kModeSelect6, 0x10, 0, 0, 0, 0}, 0).cmd);
    // MODE SELECT(10).
    const Bytes cdb10 = {op::kModeSelect10, 0x10, 0, 0, 0, 0, 0, 0, 28, 0};
    EXPECT_EQ(run(p, cdb10, 28).cmd.kind, Kind::DataOut);
    expect_good(finish_data_out(p, cdb10, Golden().zeros(8)({0x08, 0x12, 0x04}).zeros(17).b, ranges));
}

// ---- REPORT LUNS, absent LUNs ----

TEST(ScsiReportLuns, ListsPeripheralAddressedLuns) {
    const uint16_t luns[] = {0, 1, 5, 300};
    Bytes out(4096);
    auto c = report_luns(report_luns_cdb(4096), luns, 4096, out);
    expect_good(c);
    // §10.1 step 2: length 8 x count, 4 reserved bytes, byte 1 = the LUN. 300 is left out.
    const Bytes golden =
        Golden()({0, 0, 0, 24, 0, 0, 0, 0})({0, 0}).zeros(6)({0, 1}).zeros(6)({0, 5}).zeros(6).b;
    EXPECT_EQ(Bytes(out.begin(), out.begin() + c.data_in), golden);
    // Truncated to the allocation length, with the whole list's length.
    c = report_luns(report_luns_cdb(16), luns, 4096, out);
    EXPECT_EQ(c.data_in, 16u);
    EXPECT_EQ(out[3], 24);
    // An empty target: GOOD with an empty list (every target answers, §10.1).
    c = report_luns(report_luns_cdb(4096), std::span<const uint16_t>(), 4096, out);
    EXPECT_EQ(Bytes(out.begin(), out.begin() + c.data_in), Bytes(8, 0));
    // Well-known LUNs only: none. Other select reports, allocation under 16: 24/00.
    c = report_luns(report_luns_cdb(4096, 1), luns, 4096, out);
    EXPECT_EQ(c.data_in, 8u);
    expect_check(report_luns(report_luns_cdb(4096, 0x10), luns, 4096, out), kSenseInvalidField);
    expect_check(report_luns(report_luns_cdb(15), luns, 4096, out), kSenseInvalidField);
    expect_check(report_luns(Bytes{op::kReportLuns, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0}, luns, 4096, out),
                 kSenseInvalidField);  // 11 bytes of 12
    // decode() leaves it to the target (05/20/00: Linux falls back to a sequential scan).
    expect_check(run(disk(), report_luns_cdb(4096)).cmd, kSenseInvalidOpcode);
}

TEST(ScsiAbsentLun, InquiryReportsQualifier3WithARealLength) {
    Bytes out(4096, 0xEE);
    auto c = absent_lun(inquiry(0, 0, 36), 4096, out);
    expect_good(c);
    ASSERT_EQ(c.data_in, 36u);
    EXPECT_EQ(Bytes(out.begin(), out.begin() + 36), Golden()({0x7F, 0x00, 0x05, 0x02, 0x1F}).zeros(31).b);
    // Linux's first INQUIRY may carry LUN bits in byte 1 (§ scsi_scan lun_in_cdb): still answered.
    EXPECT_EQ(absent_lun(inquiry(0x20, 0, 36), 4096, out).data_in, 36u);
    // EVPD: CHECK CONDITION, with a header Linux rejects.
    c = absent_lun(inquiry(1, 0x00, 255), 4096, out);
    expect_check(c, kSenseLunNotSupported);
    EXPECT_EQ(Bytes(out.begin(), out.begin() + c.data_in), Golden()({0x7F, 0x00, 0x00, 0x00}).b);
    // REQUEST SENSE: GOOD with LOGICAL UNIT NOT SUPPORTED; anything else: 05/25/00.
    c = absent_lun(Bytes{op::kRequestSense, 0, 0, 0, 18, 0}, 4096, out);
    expect_good(c);
    EXPECT_EQ(Bytes(out.begin(), out.begin() + c.data_in), Golden()({0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x25}).zeros(5).b);
    expect_check(absent_lun(Bytes{op::kTestUnitReady, 0, 0, 0, 0, 0}, 4096, out), kSenseLunNotSupported);
    expect_check(absent_lun(rw10(op::kRead10, 0, 1), 4096, out), kSenseLunNotSupported);
    expect_check(absent_lun(Bytes{}, 4096, out), kSenseLunNotSupported);
    expect_check(absent_lun(Bytes{op::kInquiry, 0, 0, 0}, 4096, out), kSenseInvalidField);
}

// ---- READ, WRITE ----

TEST(ScsiReadWrite, EverySizeAtTheBoundaries) {
    const DiskParams p = disk(1000);
    struct Form {
        uint8_t read, write;
        Bytes (*cdb)(uint8_t, uint64_t, uint32_t);
    };
    const Form forms[] = {
        {op::kRead10, op::kWrite10, [](uint8_t o, uint64_t l, uint32_t b) { return rw10(o, static_cast<uint32_t>(l), static_cast<uint16_t>(b)); }},
        {op::kRead12, op::kWrite12, [](uint8_t o, uint64_t l, uint32_t b) { return rw12(o, static_cast<uint32_t>(l), b); }},
        {op::kRead16, op::kWrite16, [](uint8_t o, uint64_t l, uint32_t b) { return rw16(o, l, b); }},
        {op::kRead6, op::kWrite6, [](uint8_t o, uint64_t l, uint32_t b) { return rw6(o, static_cast<uint32_t>(l), static_cast<uint8_t>(b)); }},
    };
    for (const auto& f : forms) {
        for (uint8_t opcode : {f.read, f.write}) {
            SCOPED_TRACE(opcode);
            const Kind kind = opcode == f.read ? Kind::Read : Kind::Write;
            auto c = run(p, f.cdb(opcode, 999, 1), 512).cmd;
            EXPECT_EQ(c.kind, kind);
            EXPECT_EQ(c.lba, 999u);
            EXPECT_EQ(c.blocks, 1u);
            EXPECT_EQ(c.bytes, 512u);
            c = run(p, f.cdb(opcode, 990, 10), 5120).cmd;
            EXPECT_EQ(c.kind, kind);
            EXPECT_EQ(c.bytes, 5120u);
            expect_check(run(p, f.cdb(opcode, 999, 2), 1024).cmd, kSenseLbaOutOfRange);
            expect_check(run(p, f.cdb(opcode, 1000, 1), 512).cmd, kSenseLbaOutOfRange);
            // More than the buffer: refused whole (24/00). More buffer than needed: the exact count.
            expect_check(run(p, f.cdb(opcode, 0, 2), 1023).cmd, kSenseInvalidField);
            c = run(p, f.cdb(opcode, 0, 2), 4096).cmd;
            EXPECT_EQ(c.bytes, 1024u);
        }
    }
}

TEST(ScsiReadWrite, ZeroLengthsAndSixByteForms) {
    const DiskParams p = disk(1000);
    // READ(10)/(12)/(16) of 0 blocks: GOOD, nothing moves (an LBA at the end is fine, past it not).
    for (const Bytes& cdb : {rw10(op::kRead10, 5, 0), rw12(op::kWrite12, 1000, 0), rw16(op::kRead16, 1000, 0)}) {
        auto r = run(p, cdb, 0);
        expect_good(r.cmd);
        EXPECT_EQ(r.cmd.bytes, 0u);
    }
    expect_check(run(p, rw10(op::kRead10, 1001, 0)).cmd, kSenseLbaOutOfRange);
    // READ(6) of 0 means 256 blocks.
    auto c = run(p, rw6(op::kRead6, 10, 0), 256 * 512).cmd;
    EXPECT_EQ(c.kind, Kind::Read);
    EXPECT_EQ(c.blocks, 256u);
    expect_check(run(p, rw6(op::kRead6, 10, 0), 512).cmd, kSenseInvalidField);
    expect_check(run(p, rw6(op::kRead6, 745, 0), 256 * 512).cmd, kSenseLbaOutOfRange);
    // The 21-bit LBA; bits 7:5 of byte 1 are not part of it.
    c = run(disk(0x300000), {op::kRead6, 0xFF, 0xFF, 0xFF, 1, 0}, 512).cmd;
    EXPECT_EQ(c.lba, 0x1FFFFFu);
}

TEST(ScsiReadWrite, OverflowingRangesNeverWrap) {
    const DiskParams p = disk(1000);
    // lba + blocks past 2^64 would wrap to a small number.
    expect_check(run(p, rw16(op::kRead16, ~0ull, 2), 1024).cmd, kSenseLbaOutOfRange);
    expect_check(run(p, rw16(op::kWrite16, ~0ull - 0xFFFFFFFEull, 0xFFFFFFFF), ~0u).cmd, kSenseLbaOutOfRange);
    expect_check(run(p, rw16(op::kRead16, 0, 0xFFFFFFFF), ~0u).cmd, kSenseLbaOutOfRange);
    // A huge disk: the byte count of a huge transfer is checked against the buffer, not wrapped.
    const DiskParams big = disk(1ull << 40);
    expect_check(run(big, rw16(op::kRead16, 0, 0xFFFFFFFF), ~0u).cmd, kSenseInvalidField);
    DiskParams big_blocks = big;
    big_blocks.block_size = 4096;
    expect_check(run(big_blocks, rw16(op::kRead16, 0, 0x100000), ~0u).cmd, kSenseInvalidField);
    auto c = run(big_blocks, rw16(op::kRead16, (1ull << 40) - 0xFFFFF, 0xFFFFF), 0xFFFFF000u).cmd;
    EXPECT_EQ(c.kind, Kind::Read);
    EXPECT_EQ(c.bytes, 0xFFFFF000u);
}

TEST(ScsiReadWrite, FlagsAndLimits) {
    DiskParams p = disk(1000);
    auto c = run(p, rw10(op::kWrite10, 0, 1, 0x08), 512).cmd;  // FUA
    EXPECT_TRUE(c.fua);
    c = run(p, rw16(op::kWrite16, 0, 1, 0x18), 512).cmd;  // DPO, FUA
    EXPECT_TRUE(c.fua);
    EXPECT_FALSE(run(p, rw10(op::kWrite10, 0, 1, 0x10), 512).cmd.fua);
    // Protection fields (no PI) and the obsolete relative address: 24/00.
    expect_check(run(p, rw10(op::kRead10, 0, 1, 0x20), 512).cmd, kSenseInvalidField);
    expect_check(run(p, rw16(op::kWrite16, 0, 1, 0xE0), 512).cmd, kSenseInvalidField);
    expect_check(run(p, rw12(op::kRead12, 0, 1, 0x01), 512).cmd, kSenseInvalidField);
    // B0's maximum transfer length.
    p.max_transfer_blocks = 8;
    EXPECT_EQ(run(p, rw10(op::kRead10, 0, 8), 4096).cmd.kind, Kind::Read);
    expect_check(run(p, rw10(op::kRead10, 0, 9), 8192).cmd, kSenseInvalidField);
}

TEST(ScsiReadWrite, ReadOnlyDiskRefusesEveryWrite) {
    DiskParams p = disk(1000);
    p.read_only = true;
    p.discard = true;
    for (const Bytes& cdb : {rw6(op::kWrite6, 0, 1), rw10(op::kWrite10, 0, 1), rw12(op::kWrite12, 0, 1),
                             rw16(op::kWrite16, 0, 1), unmap_cdb(24), rw16(op::kWriteSame16, 0, 1, 0x08),
                             rw10(op::kWrite10, 5000, 1)}) {
        expect_check(run(p, cdb, 512).cmd, kSenseWriteProtected);
    }
    std::vector<UnmapRange> ranges;
    expect_check(finish_unmap(p, unmap_list({{0, 1}}), ranges), kSenseWriteProtected);
    EXPECT_EQ(run(p, rw10(op::kRead10, 0, 1), 512).cmd.kind, Kind::Read);
    // Nothing to flush, and GOOD; a writable disk flushes.
    expect_good(run(p, {op::kSynchronizeCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}).cmd);
    p.read_only = false;
    auto c = run(p, {op::kSynchronizeCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}).cmd;
    EXPECT_EQ(c.kind, Kind::Flush);
    EXPECT_EQ(c.bytes, 0u);
    c = run(p, cat({{op::kSynchronizeCache16, 0x02}, be(10, 8), be(20, 4), {0, 0}})).cmd;
    EXPECT_EQ(c.kind, Kind::Flush);
    EXPECT_EQ(c.lba, 10u);
    EXPECT_EQ(c.blocks, 20u);
    expect_check(run(p, cat({{op::kSynchronizeCache16, 0}, be(990, 8), be(20, 4), {0, 0}})).cmd, kSenseLbaOutOfRange);
}

// ---- UNMAP, WRITE SAME ----

TEST(ScsiUnmap, LinuxsParameterList) {
    DiskParams p = disk(1000);
    p.discard = true;
    auto r = run(p, unmap_cdb(24), 24);
    EXPECT_EQ(r.cmd.kind, Kind::DataOut);
    EXPECT_EQ(r.cmd.data_out, 24u);
    std::vector<UnmapRange> ranges{{1, 1}};
    const Bytes list = unmap_list({{10, 20}});
    EXPECT_EQ(list, Golden()({0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 0}).b);
    auto c = finish_data_out(p, unmap_cdb(24), list, ranges);
    EXPECT_EQ(c.kind, Kind::Unmap);
    EXPECT_EQ(c.bytes, 24u);
    EXPECT_EQ(ranges, (std::vector<UnmapRange>{{10, 20}}));
    // Several ranges, up to the last block; empty descriptors are dropped.
    c = finish_unmap(p, unmap_list({{0, 1}, {5, 0}, {999, 1}}), ranges);
    EXPECT_EQ(c.kind, Kind::Unmap);
    EXPECT_EQ(ranges, (std::vector<UnmapRange>{{0, 1}, {999, 1}}));
    c = finish_unmap(p, unmap_list({{5, 0}}), ranges);
    expect_good(c);
    EXPECT_TRUE(ranges.empty());
    expect_good(finish_unmap(p, unmap_list({}), ranges));
}

TEST(ScsiUnmap, BadListsAndCdbs) {
    DiskParams p = disk(1000);
    p.discard = true;
    std::vector<UnmapRange> ranges;
    // The CDB: no list is fine; 1..7 bytes is a length error; over the buffer, ANCHOR: 24/00.
    expect_good(run(p, unmap_cdb(0), 0).cmd);
    expect_check(run(p, unmap_cdb(7), 24).cmd, kSenseParameterListLength);
    expect_check(run(p, unmap_cdb(24), 16).cmd, kSenseInvalidField);
    expect_check(run(p, unmap_cdb(24, 0x01), 24).cmd, kSenseInvalidField);
    // Shorter than the header; lengths claiming more than the list holds.
    expect_check(finish_unmap(p, Bytes(5, 0), ranges), kSenseParameterListLength);
    Bytes list = unmap_list({{10, 20}});
    list[3] = 32;  // 32 descriptor bytes in a 24-byte list
    expect_check(finish_unmap(p, list, ranges), kSenseParameterListLength);
    list = unmap_list({{10, 20}});
    list[1] = 40;
    expect_check(finish_unmap(p, list, ranges), kSenseParameterListLength);
    list[1] = 6;  // the descriptors outside the data length
    expect_check(finish_unmap(p, list, ranges), kSenseInvalidParameter);
    // A partial last descriptor is ignored (SBC-3 5.28.2).
    list = cat({unmap_list({{10, 20}}), Bytes(4, 0xFF)});
    list[1] = 26;
    list[3] = 20;
    EXPECT_EQ(finish_unmap(p, list, ranges).kind, Kind::Unmap);
    EXPECT_EQ(ranges, (std::vector<UnmapRange>{{10, 20}}));
    // Out of range, including lba + blocks wrapping around 2^64; nothing is kept then.
    expect_check(finish_unmap(p, unmap_list({{0, 1}, {995, 10}}), ranges), kSenseLbaOutOfRange);
    EXPECT_TRUE(ranges.empty());
    expect_check(finish_unmap(p, unmap_list({{~0ull, 2}}), ranges), kSenseLbaOutOfRange);
    // More descriptors or blocks than B0 allows.
    p.max_unmap_descriptors = 2;
    expect_check(finish_unmap(p, unmap_list({{0, 1}, {1, 1}, {2, 1}}), ranges), kSenseInvalidParameter);
    EXPECT_EQ(finish_unmap(p, unmap_list({{0, 1}, {1, 1}}), ranges).kind, Kind::Unmap);
    p.max_unmap_blocks = 16;
    expect_check(finish_unmap(p, unmap_list({{0, 10}, {100, 7}}), ranges), kSenseInvalidParameter);
    EXPECT_EQ(finish_unmap(p, unmap_list({{0, 10}, {100, 6}}), ranges).kind, Kind::Unmap);
    // Without discard: not implemented.
    p.discard = false;
    expect_check(run(p, unmap_cdb(24), 24).cmd, kSenseInvalidOpcode);
    expect_check(finish_unmap(p, unmap_list({{0, 1}}), ranges), kSenseInvalidOpcode);
}

TEST(ScsiUnmap, WriteSame16WithUnmap) {
    DiskParams p = disk(1000);
    p.discard = true;
    // Linux's writesame_16 discard: UNMAP bit, one zero block of data-out.
    auto c = run(p, rw16(op::kWriteSame16, 100, 50, 0x08), 512).cmd;
    EXPECT_EQ(c.kind, Kind::Unmap);
    EXPECT_EQ(c.lba, 100u);
    EXPECT_EQ(c.blocks, 50u);
    EXPECT_EQ(c.bytes, 512u);
    EXPECT_EQ(run(p, rw16(op::kWriteSame16, 100, 50, 0x09), 0).cmd.bytes, 0u);  // NDOB
    expect_check(run(p, rw16(op::kWriteSame16, 100, 50, 0x08), 511).cmd, kSenseInvalidField);
    expect_check(run(p, rw16(op::kWriteSame16, 100, 50, 0x00), 512).cmd, kSenseInvalidField);  // a pattern write
    expect_check(run(p, rw16(op::kWriteSame16, 100, 0, 0x08), 512).cmd, kSenseInvalidField);   // WSNZ
    expect_check(run(p, rw16(op::kWriteSame16, 100, 50, 0x18), 512).cmd, kSenseInvalidField);  // ANCHOR
    expect_check(run(p, rw16(op::kWriteSame16, 990, 50, 0x08), 512).cmd, kSenseLbaOutOfRange);
    expect_check(run(p, rw16(op::kWriteSame16, ~0ull, 2, 0x08), 512).cmd, kSenseLbaOutOfRange);
    p.max_unmap_blocks = 10;
    expect_check(run(p, rw16(op::kWriteSame16, 100, 11, 0x08), 512).cmd, kSenseInvalidField);
    p.discard = false;
    expect_check(run(p, rw16(op::kWriteSame16, 100, 5, 0x08), 512).cmd, kSenseInvalidField);
    // WRITE SAME(10) is not implemented (LBPWS10 = 0).
    expect_check(run(p, rw10(op::kWriteSame10, 0, 1, 0x08), 512).cmd, kSenseInvalidOpcode);
}

// ---- The rest of what Linux sends to a disk ----

TEST(ScsiDisk, SmallCommands) {
    const DiskParams p = disk(1000);
    expect_good(run(p, {op::kTestUnitReady, 0, 0, 0, 0, 0}).cmd);
    expect_good(run(p, {op::kStartStopUnit, 0, 0, 0, 0x01, 0}).cmd);
    expect_good(run(p, {op::kPreventAllowMediumRemoval, 0, 0, 0, 0x01, 0}).cmd);
    // VERIFY: the range only; BYTCHK (a compare with data-out) is 24/00.
    expect_good(run(p, rw10(op::kVerify10, 990, 10)).cmd);
    expect_good(run(p, rw16(op::kVerify16, 0, 1000)).cmd);
    expect_good(run(p, rw12(op::kVerify12, 0, 1)).cmd);
    expect_check(run(p, rw10(op::kVerify10, 991, 10)).cmd, kSenseLbaOutOfRange);
    expect_check(run(p, rw10(op::kVerify10, 0, 1, 0x02)).cmd, kSenseInvalidField);
    // REQUEST SENSE: nothing pending (the sense went out as autosense).
    auto r = run(p, {op::kRequestSense, 0, 0, 0, 252, 0});
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x70, 0, 0, 0, 0, 0, 0, 10}).zeros(10).b);
    expect_check(run(p, {op::kRequestSense, 1, 0, 0, 252, 0}).cmd, kSenseInvalidField);  // DESC
    // Unknown opcodes, and MMC ones on a disk: 20/00.
    for (uint8_t opcode : Bytes{0x04, 0x4D, 0x85, 0xA1, 0xA3, 0x7F, 0xC0, 0xFF, op::kReadToc, op::kGetConfiguration}) {
        SCOPED_TRACE(opcode);
        expect_check(run(p, cat({{opcode}, Bytes(15, 0)})).cmd, kSenseInvalidOpcode);
    }
}

TEST(ScsiDisk, TruncatedAndHostileCdbs) {
    DiskParams p = disk(1000);
    p.discard = true;
    expect_check(run(p, {}).cmd, kSenseInvalidOpcode);
    // Shorter than the opcode's size: never read as zeros.
    for (const Bytes& full : {rw10(op::kRead10, 0, 1), rw12(op::kRead12, 0, 1), rw16(op::kWrite16, 0, 1), rc16(32),
                              inquiry(0, 0, 36), Bytes{op::kTestUnitReady, 0, 0, 0, 0, 0}, unmap_cdb(24)}) {
        for (size_t n = 1; n < full.size(); ++n) {
            SCOPED_TRACE(n);
            auto r = run(p, Bytes(full.begin(), full.begin() + static_cast<ptrdiff_t>(n)), 512);
            expect_check(r.cmd, kSenseInvalidField);
            EXPECT_EQ(r.cmd.bytes, 0u);
        }
        // Longer (a 16-byte SRB CDB): the extra bytes are ignored.
        EXPECT_TRUE(run(p, cat({full, Bytes(16 - std::min<size_t>(full.size(), 16), 0xFF)}), 512).cmd.good());
    }
    // NACA or LINK in the control byte.
    Bytes c = rw10(op::kRead10, 0, 1);
    c[9] = 0x04;
    expect_check(run(p, c, 512).cmd, kSenseInvalidField);
    c[9] = 0x01;
    expect_check(run(p, c, 512).cmd, kSenseInvalidField);
    c[9] = 0xC0;  // vendor bits
    EXPECT_EQ(run(p, c, 512).cmd.kind, Kind::Read);
    // A zero-byte buffer: answers of nothing.
    EXPECT_EQ(run(p, inquiry(0, 0, 36), 0).cmd.data_in, 0u);
    EXPECT_EQ(run(p, mode_sense6(0x3F, 255), 0).cmd.data_in, 0u);
}

TEST(ScsiSense, FixedFormat) {
    EXPECT_EQ(fixed_sense(kSenseLbaOutOfRange),
              (std::array<uint8_t, 18>{0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0}));
    EXPECT_EQ(fixed_sense(kSenseCapacityChanged)[2], 0x06);
    EXPECT_EQ(fixed_sense(kSenseCapacityChanged)[12], 0x2A);
    EXPECT_EQ(fixed_sense(kSenseCapacityChanged)[13], 0x09);
}

// ---- The DVD ----

TEST(ScsiDvd, InquiryCapacityAndReads) {
    const DiskParams p = dvd_params(1000);
    ASSERT_TRUE(validate(p).has_value());
    auto r = run(p, inquiry(0, 0, 36));
    // §14, §15: "CD-ROM Msft Virtual DVD-ROM 1.0 PQ: 0 ANSI: 0", removable.
    EXPECT_EQ(r.data, Golden()({0x05, 0x80, 0x00, 0x02, 0x1F, 0x00, 0x00, 0x00})("Msft    ")("Virtual DVD-ROM ")("1.0 ").b);
    r = run(p, inquiry(1, 0, 255));
    EXPECT_EQ(r.data, Golden()({0x05, 0x00, 0x00, 0x02, 0x00, 0x83}).b);
    expect_check(run(p, inquiry(1, 0xB0, 255)).cmd, kSenseInvalidField);
    r = run(p, {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    EXPECT_EQ(r.data, Golden()({0x00, 0x00, 0x03, 0xE7, 0x00, 0x00, 0x08, 0x00}).b);
    auto c = run(p, rw10(op::kRead10, 999, 1), 2048).cmd;
    EXPECT_EQ(c.kind, Kind::Read);
    EXPECT_EQ(c.bytes, 2048u);
    expect_check(run(p, rw10(op::kRead10, 999, 1), 2047).cmd, kSenseInvalidField);
    expect_check(run(p, rw10(op::kWrite10, 0, 1), 2048).cmd, kSenseWriteProtected);
    expect_good(run(p, {op::kTestUnitReady, 0, 0, 0, 0, 0}).cmd);
    expect_good(run(p, {op::kPreventAllowMediumRemoval, 0, 0, 0, 1, 0}).cmd);
    expect_good(run(p, {op::kSynchronizeCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}).cmd);
    expect_check(run(p, {op::kStartStopUnit, 0, 0, 0, 0x02, 0}).cmd, kSenseInvalidField);  // eject
    // SBC-only commands are not there; READ DISC/TRACK INFORMATION may fail (§14).
    for (const Bytes& cdb : {rc16(32), unmap_cdb(24), rw16(op::kWriteSame16, 0, 1, 8),
                             Bytes{op::kReadDiscInformation, 0, 0, 0, 0, 0, 0, 0, 32, 0},
                             Bytes{op::kReadTrackInformation, 1, 0, 0, 0, 1, 0, 0, 32, 0}})
        expect_check(run(p, cdb, 512).cmd, kSenseInvalidOpcode);
}

TEST(ScsiDvd, CapabilitiesPage) {
    const DiskParams p = dvd_params(1000);
    // sr get_capabilities(): MODE SENSE(6) page 2Ah, allocation 128.
    auto r = run(p, mode_sense6(0x2A, 128));
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0x19, 0x00, 0x00, 0x00, 0x2A, 0x14, 0x09, 0x00, 0x40, 0x00, 0x21, 0x00, 0x0B, 0x00, 0, 0,
                                0, 0, 0x0B, 0x00, 0, 0, 0, 0, 0, 0})
                          .b);
    expect_check(run(p, mode_sense6(0x08, 128)).cmd, kSenseInvalidField);
}

TEST(ScsiDvd, TocConfigurationAndEvents) {
    const DiskParams p = dvd_params(1000);
    // READ TOC format 0 from track 0: track 1 at 0, lead-out at the capacity.
    auto r = run(p, {op::kReadToc, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0});
    expect_good(r.cmd);
    EXPECT_EQ(r.data, Golden()({0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xAA, 0, 0, 0, 0x03, 0xE8}).b);
    // MSF: 1000 + 150 frames = 00:15:25.
    r = run(p, {op::kReadToc, 0x02, 0, 0, 0, 0, 0xAA, 0, 0xFF, 0});
    EXPECT_EQ(r.data, Golden()({0, 10, 1, 1, 0, 0x14, 0xAA, 0, 0, 0, 15, 25}).b);
    // Linux's sr_cd_check: the session format in the old control-byte field (0x40).
    r = run(p, {op::kReadToc, 0, 0, 0, 0, 0, 0, 0, 12, 0x40});
    EXPECT_EQ(r.data, Golden()({0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0}).b);
    expect_check(run(p, {op::kReadToc, 0, 0, 0, 0, 0, 2, 0, 0xFF, 0}).cmd, kSenseInvalidField);
    expect_check(run(p, {op::kReadToc, 0, 5, 0, 0, 0, 0, 0, 0xFF, 0}).cmd, kSenseInvalidField);
    // GET CONFIGURATION: the header, current profile DVD-ROM.
    r = run(p, {op::kGetConfiguration, 0, 0, 0, 0, 0, 0, 0, 8, 0});
    EXPECT_EQ(r.data, Golden()({0, 0, 0, 4, 0, 0, 0x00, 0x10}).b);
    // GET EVENT STATUS NOTIFICATION, polled, media class: no change, medium present.
    r = run(p, {op::kGetEventStatusNotification, 1, 0, 0, 0x10, 0, 0, 0, 8, 0});
    EXPECT_EQ(r.data, Golden()({0, 6, 4, 0x10, 0, 2, 0, 0}).b);
    r = run(p, {op::kGetEventStatusNotification, 1, 0, 0, 0x02, 0, 0, 0, 8, 0});
    EXPECT_EQ(r.data, Golden()({0, 2, 0x80, 0x10}).b);
    expect_check(run(p, {op::kGetEventStatusNotification, 0, 0, 0, 0x10, 0, 0, 0, 8, 0}).cmd, kSenseInvalidField);
}

TEST(ScsiDvd, EmptyDrive) {
    const DiskParams p = dvd_params(0);
    ASSERT_TRUE(validate(p).has_value());
    expect_check(run(p, {op::kTestUnitReady, 0, 0, 0, 0, 0}).cmd, kSenseMediumNotPresent);
    expect_check(run(p, {op::kReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}).cmd, kSenseMediumNotPresent);
    expect_check(run(p, rw10(op::kRead10, 0, 1), 2048).cmd, kSenseMediumNotPresent);
    expect_check(run(p, {op::kReadToc, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0}).cmd, kSenseMediumNotPresent);
    EXPECT_EQ(run(p, inquiry(0, 0, 36)).data[0], 0x05);
    EXPECT_EQ(run(p, {op::kRequestSense, 0, 0, 0, 18, 0}).data[12], 0x3A);
    EXPECT_EQ(run(p, {op::kGetConfiguration, 0, 0, 0, 0, 0, 0, 0, 8, 0}).data[7], 0x00);
    EXPECT_EQ(run(p, {op::kGetEventStatusNotification, 1, 0, 0, 0x10, 0, 0, 0, 8, 0}).data[5], 0x00);
}

// ---- Parameters ----

TEST(ScsiParams, Validate) {
    EXPECT_TRUE(validate(disk()).has_value());
    EXPECT_FALSE(validate(DiskParams{}).has_value());  // 0 blocks
    DiskParams p = disk();
    p.block_size = 520;
    EXPECT_TRUE(validate(p).error().is(Errc::Invalid));
    p = disk();
    p.physical_block_size = 6144;
    EXPECT_FALSE(validate(p).has_value());
    p.physical_block_size = 256;
    EXPECT_FALSE(validate(p).has_value());
    p.physical_block_size = 512u << 16;
    EXPECT_FALSE(validate(p).has_value());
    p = disk();
    p.vendor = "TooLongVendor";
    EXPECT_FALSE(validate(p).has_value());
    p = disk();
    p.serial = "bad\n";
    EXPECT_FALSE(validate(p).has_value());
    p = disk();
    p.discard = true;
    p.max_unmap_descriptors = 0;
    EXPECT_FALSE(validate(p).has_value());
    p = dvd_params(10);
    p.read_only = false;
    EXPECT_FALSE(validate(p).has_value());
}
