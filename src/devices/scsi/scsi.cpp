// The SCSI disk and DVD targets (scsi.hpp). Section numbers: SBC-3 r35, SPC-4 r37, MMC-3 r10g,
// and contract-storage.md (§).
#include "devices/scsi/scsi.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>

namespace enlighten::scsi {
namespace {

// VPD 80 and the T10 designator carry at most this much of the serial (validate() enforces it;
// decode() clips, so that every page length fits its field whatever the params).
constexpr size_t kMaxSerial = 128;
// Logical blocks per physical block: a 4-bit exponent (RC16 byte 13).
constexpr uint8_t kMaxPhysicalExponent = 15;

Command good_with(uint32_t n) {
    Command c;
    c.data_in = n;
    c.bytes = n;
    return c;
}

// CHECK CONDITION; `data_in` is nonzero only for the answers storvsc forces to success (§5).
Command check(Sense s, uint32_t data_in = 0) {
    Command c;
    c.status = kCheckCondition;
    c.sense = s;
    c.data_in = data_in;
    c.bytes = data_in;
    return c;
}

// An answer written into `out` as it is built; bytes past out's end are counted, not written,
// so the full length is known (for length fields and the final clip).
class Answer {
public:
    explicit Answer(std::span<uint8_t> out) : out_(out) {}
    void u8(uint8_t v) {
        if (len_ < out_.size()) out_[len_] = v;
        ++len_;
    }
    void bytes(std::span<const uint8_t> b) {
        for (uint8_t v : b) u8(v);
    }
    template <typename T>
    void put(const T& v) {
        bytes(as_bytes(v));
    }
    // Overwrites bytes already counted (a length field filled in at the end).
    void patch(size_t off, std::span<const uint8_t> b) {
        for (size_t i = 0; i < b.size(); ++i)
            if (off + i < out_.size()) out_[off + i] = b[i];
    }
    void patch_be16(size_t off, size_t v) {
        Be16 b;
        b.set(static_cast<uint16_t>(v));
        patch(off, as_bytes(b));
    }
    [[nodiscard]] size_t size() const { return len_; }
    // What to hand over: the answer clipped to the allocation length, the guest's buffer and out.
    [[nodiscard]] uint32_t clip(uint64_t alloc, uint32_t buffer) const {
        return static_cast<uint32_t>(std::min<uint64_t>({len_, alloc, buffer, out_.size()}));
    }

private:
    std::span<uint8_t> out_;
    size_t len_ = 0;
};

bool printable(char ch) { return ch >= 0x20 && ch <= 0x7E; }

// An ASCII field: space-padded, truncated, non-printable bytes as spaces (SPC-4 4.4.1).
void fill_ascii(char* dst, std::string_view s, size_t width) {
    for (size_t i = 0; i < width; ++i) dst[i] = i < s.size() && printable(s[i]) ? s[i] : ' ';
}
void put_ascii(Answer& a, std::string_view s, size_t width) {
    for (size_t i = 0; i < width; ++i) a.u8(static_cast<uint8_t>(i < s.size() && printable(s[i]) ? s[i] : ' '));
}
std::string_view serial_of(const DiskParams& p) { return std::string_view(p.serial).substr(0, kMaxSerial); }

uint8_t pdt(const DiskParams& p) { return p.cdrom ? kPdtCdrom : kPdtDisk; }
bool has_medium(const DiskParams& p) { return !p.cdrom || p.blocks != 0; }
bool writable(const DiskParams& p) { return !p.read_only && !p.cdrom; }
uint64_t last_lba(const DiskParams& p) { return p.blocks != 0 ? p.blocks - 1 : 0; }
// [lba, lba + n) lies within the capacity, without computing lba + n (SBC-3 4.5: 21/00 if not).
bool in_range(const DiskParams& p, uint64_t lba, uint64_t n) { return lba <= p.blocks && n <= p.blocks - lba; }
// log2(logical blocks per physical block), whatever the params.
uint8_t physical_exponent(const DiskParams& p) {
    uint8_t e = 0;
    while (e < kMaxPhysicalExponent && (uint64_t{p.block_size} << e) < p.physical_block_size) ++e;
    return e;
}

// SPC-4 4.2.5.1: the group code (opcode bits 7:5) gives the CDB size: 0 -> 6 bytes, 1 and 2
// -> 10, 4 -> 16, 5 -> 12; 3 (variable length), 6 and 7 (vendor) hold nothing we implement.
constexpr size_t cdb_size(uint8_t opcode) {
    switch (opcode >> 5) {
        case 0: return 6;
        case 1:
        case 2: return 10;
        case 4: return 16;
        case 5: return 12;
        default: return 0;
    }
}

// All of the opcode's bytes are there (missing ones are never read as zeros), and the CONTROL
// byte (SAM-5 5.2, the last one) asks for nothing we lack: NACA (bit 2) needs NormACA, LINK
// (bit 0) is obsolete. Its other bits are vendor-specific (READ TOC's old format, below).
bool well_formed(std::span<const uint8_t> cdb) {
    const size_t n = cdb_size(cdb[0]);
    return n != 0 && cdb.size() >= n && (cdb[n - 1] & 0x05) == 0;
}

bool implemented(const DiskParams& p, uint8_t opcode) {
    switch (opcode) {
        case op::kTestUnitReady:
        case op::kRequestSense:
        case op::kInquiry:
        case op::kModeSense6:
        case op::kModeSense10:
        case op::kModeSelect6:
        case op::kModeSelect10:
        case op::kStartStopUnit:
        case op::kPreventAllowMediumRemoval:
        case op::kReadCapacity10:
        case op::kRead6:
        case op::kRead10:
        case op::kRead12:
        case op::kRead16:
        case op::kWrite6:
        case op::kWrite10:
        case op::kWrite12:
        case op::kWrite16:
        case op::kVerify10:
        case op::kVerify12:
        case op::kVerify16:
        case op::kSynchronizeCache10: return true;
        // SBC-only.
        case op::kServiceActionIn16:
        case op::kSynchronizeCache16:
        case op::kUnmap:
        case op::kWriteSame16: return !p.cdrom;
        // MMC-only (contract §14).
        case op::kReadToc:
        case op::kGetConfiguration:
        case op::kGetEventStatusNotification: return p.cdrom;
        default: return false;
    }
}

// ---- READ, WRITE, VERIFY, SYNCHRONIZE CACHE: the I/O path (no answer, no allocation) ----

Command read_write(const DiskParams& p, const uint8_t* c, uint32_t buffer) {
    uint64_t lba = 0;
    uint64_t blocks = 0;
    uint8_t flags = 0;
    bool write = false;
    switch (c[0]) {
        case op::kWrite6: write = true; [[fallthrough]];
        case op::kRead6:
            // SBC-3 5.10/5.33: @1 bits 4:0 LBA 20:16 (7:5 reserved: the SCSI-2 LUN), @2-3 LBA 15:0,
            // @4 transfer length, 0 meaning 256 blocks.
            lba = (uint64_t{c[1] & 0x1Fu} << 16) | load_be16(c + 2);
            blocks = c[4] == 0 ? 256 : c[4];
            break;
        case op::kWrite10: write = true; [[fallthrough]];
        case op::kRead10:
            // SBC-3 5.11/5.34: @1 flags, @2-5 LBA, @6 group number, @7-8 transfer length.
            flags = c[1];
            lba = load_be32(c + 2);
            blocks = load_be16(c + 7);
            break;
        case op::kWrite12: write = true; [[fallthrough]];
        case op::kRead12:
            // SBC-3 5.12/5.35: @1 flags, @2-5 LBA, @6-9 transfer length, @10 group number.
            flags = c[1];
            lba = load_be32(c + 2);
            blocks = load_be32(c + 6);
            break;
        default:
            // READ(16)/WRITE(16), SBC-3 5.13/5.36: @1 flags, @2-9 LBA, @10-13 transfer length, @14 group.
            write = c[0] == op::kWrite16;
            flags = c[1];
            lba = load_be64(c + 2);
            blocks = load_be32(c + 10);
            break;
    }
    // Flags of the 10/12/16-byte forms: RDPROTECT/WRPROTECT (7:5), DPO (4), FUA (3), FUA_NV (1),
    // obsolete RELADR (0). RC16 says PROT_EN = 0, so a PROTECT field is 24/00 (SBC-3 4.18.6);
    // relative addressing is gone (OpenVMM refuses it too). DPO and FUA_NV are hints.
    if ((flags & 0xE1) != 0) return check(kSenseInvalidField);
    if (write && !writable(p)) return check(kSenseWriteProtected);
    if (!has_medium(p)) return check(kSenseMediumNotPresent);
    if (!in_range(p, lba, blocks)) return check(kSenseLbaOutOfRange);
    // SBC-3: a transfer length of 0 transfers nothing and is not an error.
    if (blocks == 0) return good_with(0);
    // SBC-3 6.5.3: longer than B0's maximum transfer length: INVALID FIELD IN CDB.
    if (p.max_transfer_blocks != 0 && blocks > p.max_transfer_blocks) return check(kSenseInvalidField);
    // More than the guest's buffer holds: refused whole, never a partial transfer. A short
    // write would leave part of the range unwritten behind a GOOD; LIO refuses that as well
    // (target_cmd_size_check: TCM_INVALID_CDB_FIELD). A short GOOD read would make sd requeue
    // the rest into the same too-small buffer. Linux always sends buffer = blocks x size.
    const uint64_t bytes = blocks * uint64_t{p.block_size};  // < 2^64: both factors < 2^32 + 1
    if (bytes > buffer) return check(kSenseInvalidField);
    Command cmd;
    cmd.kind = write ? Command::Kind::Write : Command::Kind::Read;
    cmd.lba = lba;
    cmd.blocks = static_cast<uint32_t>(blocks);
    cmd.bytes = static_cast<uint32_t>(bytes);
    // FUA is passed on as sent: with DPOFUA = 0 Linux never sets it, and honouring it anyway
    // costs only durability work.
    cmd.fua = (flags & 0x08) != 0;
    return cmd;
}

Command verify(const DiskParams& p, const uint8_t* c) {
    // SBC-3 5.30-5.32: @1 VRPROTECT (7:5), DPO (4), BYTCHK (2:1), obsolete RELADR (0);
    // VERIFY(10): @2-5 LBA, @7-8 length; (12): @2-5 LBA, @6-9 length; (16): @2-9 LBA, @10-13 length.
    // Without protection information or a compare against data-out (BYTCHK), there is nothing
    // to check but the range: the medium has no errors to find.
    if ((c[1] & 0xE7) != 0) return check(kSenseInvalidField);
    uint64_t lba = 0;
    uint64_t blocks = 0;
    if (c[0] == op::kVerify10) {
        lba = load_be32(c + 2);
        blocks = load_be16(c + 7);
    } else if (c[0] == op::kVerify12) {
        lba = load_be32(c + 2);
        blocks = load_be32(c + 6);
    } else {
        lba = load_be64(c + 2);
        blocks = load_be32(c + 10);
    }
    if (!has_medium(p)) return check(kSenseMediumNotPresent);
    if (!in_range(p, lba, blocks)) return check(kSenseLbaOutOfRange);
    return good_with(0);
}

Command synchronize_cache(const DiskParams& p, const uint8_t* c) {
    // SBC-3 5.22/5.23: @1 IMMED (1) (we answer after the flush either way), SYNC_NV (2) obsolete,
    // RELADR (0) obsolete; (10): @2-5 LBA, @6 group, @7-8 blocks; (16): @2-9 LBA, @10-13 blocks,
    // @14 group. 0 blocks: to the end of the medium. Linux sends SYNCHRONIZE CACHE(10) all zero.
    if ((c[1] & 0x01) != 0) return check(kSenseInvalidField);
    const bool ten = c[0] == op::kSynchronizeCache10;
    const uint64_t lba = ten ? load_be32(c + 2) : load_be64(c + 2);
    const uint64_t blocks = ten ? load_be16(c + 7) : load_be32(c + 10);
    if (!has_medium(p)) return check(kSenseMediumNotPresent);
    if (!in_range(p, lba, blocks)) return check(kSenseLbaOutOfRange);
    if (!writable(p)) return good_with(0);  // nothing was ever written
    Command cmd;
    cmd.kind = Command::Kind::Flush;
    cmd.lba = lba;
    cmd.blocks = static_cast<uint32_t>(blocks);
    return cmd;
}

// ---- INQUIRY and the VPD pages ----

StandardInquiry standard_inquiry(const DiskParams& p) {
    StandardInquiry s{};
    s.peripheral = pdt(p);
    s.rmb = p.cdrom ? 0x80 : 0;
    // Version 5 (SPC-3) gives the disk Linux's scsi_level 6: RC16 first, VPD pages (§10.1-2).
    // The DVD claims none, as OpenVMM's does (§14); storvsc's BLIST flags still fetch its VPD.
    s.version = p.cdrom ? 0 : 5;
    s.format = 2;
    s.additional_length = sizeof(StandardInquiry) - 5;
    s.flags7 = p.cdrom ? 0 : kInquiryCmdQue;
    fill_ascii(s.vendor, p.vendor, sizeof(s.vendor));
    fill_ascii(s.product, p.product, sizeof(s.product));
    fill_ascii(s.revision, p.revision, sizeof(s.revision));
    return s;
}

VpdHeader vpd_header(uint8_t peripheral, uint8_t page, uint16_t length) {
    VpdHeader h{};
    h.peripheral = peripheral;
    h.page = page;
    h.length.set(length);
    return h;
}

// The pages we implement, ascending (SPC-4 7.8.13): 00, 80 with a serial, 83; the disk adds
// B0, B1, and B2 with discard (Linux reads B2 only with LBPME, §10.2 step 3).
size_t supported_pages(const DiskParams& p, std::array<uint8_t, 6>& pages) {
    size_t n = 0;
    pages[n++] = kVpdSupportedPages;
    if (!serial_of(p).empty()) pages[n++] = kVpdSerialNumber;
    pages[n++] = kVpdDeviceIdentification;
    if (!p.cdrom) {
        pages[n++] = kVpdBlockLimits;
        pages[n++] = kVpdBlockCharacteristics;
        if (p.discard) pages[n++] = kVpdLogicalBlockProvisioning;
    }
    return n;
}

void device_identification(const DiskParams& p, Answer& a) {
    a.put(vpd_header(pdt(p), kVpdDeviceIdentification, 0));
    // T10 vendor id based (SPC-4 7.8.6.4), ASCII: vendor (8), then vendor-specific: the product
    // (16) and the serial. Linux's wwid falls back to it ("t10.") without an NAA designator.
    const std::string_view serial = serial_of(p);
    a.put(DesignatorHeader{kCodeSetAscii, kDesignatorT10, 0, static_cast<uint8_t>(8 + 16 + serial.size())});
    put_ascii(a, p.vendor, 8);
    put_ascii(a, p.product, 16);
    put_ascii(a, serial, serial.size());
    // NAA IEEE Registered Extended (SPC-4 7.8.6.6.5): NAA 6 (4 bits), company id 00-22-48
    // (24 bits), vendor-specific id (36 bits) = 0, extension (64 bits) = naa_id. The first
    // four bytes are 60 02 24 80, as OpenVMM's; Linux's wwid is then "naa.6002248000000000<id>".
    if (p.naa_id != 0) {
        a.put(DesignatorHeader{kCodeSetBinary, kDesignatorNaa, 0, 16});
        a.u8(static_cast<uint8_t>(0x60 | (kMicrosoftOui >> 20)));
        a.u8(static_cast<uint8_t>(kMicrosoftOui >> 12));
        a.u8(static_cast<uint8_t>(kMicrosoftOui >> 4));
        a.u8(static_cast<uint8_t>((kMicrosoftOui & 0xF) << 4));
        for (int i = 0; i < 4; ++i) a.u8(0);
        Be64 id;
        id.set(p.naa_id);
        a.put(id);
    }
    a.patch_be16(2, a.size() - sizeof(VpdHeader));
}

BlockLimitsPage block_limits(const DiskParams& p) {
    BlockLimitsPage b{};
    b.header = vpd_header(kPdtDisk, kVpdBlockLimits, sizeof(BlockLimitsPage) - sizeof(VpdHeader));
    b.wsnz = 1;
    const uint32_t per_physical = 1u << physical_exponent(p);
    b.optimal_granularity.set(static_cast<uint16_t>(per_physical));
    b.max_transfer.set(p.max_transfer_blocks);
    if (p.discard) {
        b.max_unmap_lba_count.set(p.max_unmap_blocks != 0 ? p.max_unmap_blocks : 0xFFFFFFFF);
        b.max_unmap_descriptors.set(p.max_unmap_descriptors);
        b.optimal_unmap_granularity.set(p.unmap_granularity_blocks != 0 ? p.unmap_granularity_blocks : per_physical);
        b.unmap_alignment.set(0x80000000);  // UGAVALID, aligned at LBA 0
        b.max_write_same.set(p.max_unmap_blocks);
    }
    return b;
}

// Writes VPD page `page` into `a`; false if we do not implement it.
bool vpd_page(const DiskParams& p, uint8_t page, Answer& a) {
    std::array<uint8_t, 6> pages{};
    const size_t n = supported_pages(p, pages);
    if (std::find(pages.begin(), pages.begin() + static_cast<ptrdiff_t>(n), page) == pages.begin() + static_cast<ptrdiff_t>(n))
        return false;
    switch (page) {
        case kVpdSupportedPages:
            a.put(vpd_header(pdt(p), page, static_cast<uint16_t>(n)));
            a.bytes(std::span(pages.data(), n));
            return true;
        case kVpdSerialNumber: {
            // SPC-4 7.8.15: the product serial number, ASCII.
            const std::string_view serial = serial_of(p);
            a.put(vpd_header(pdt(p), page, static_cast<uint16_t>(serial.size())));
            put_ascii(a, serial, serial.size());
            return true;
        }
        case kVpdDeviceIdentification: device_identification(p, a); return true;
        case kVpdBlockLimits: a.put(block_limits(p)); return true;
        case kVpdBlockCharacteristics: {
            BlockCharacteristicsPage b{};
            b.header = vpd_header(kPdtDisk, page, sizeof(b) - sizeof(VpdHeader));
            b.rotation_rate.set(p.non_rotational ? 1 : 0);
            a.put(b);
            return true;
        }
        case kVpdLogicalBlockProvisioning: {
            // LBPU (UNMAP) and LBPWS (WRITE SAME(16) with UNMAP); not LBPWS10. Thin provisioned.
            ProvisioningPage b{};
            b.header = vpd_header(kPdtDisk, page, sizeof(b) - sizeof(VpdHeader));
            b.flags = static_cast<uint8_t>(kLbpu | kLbpws | (p.discard_zeroes ? kLbprzB2 : 0));
            b.provisioning_type = 2;
            a.put(b);
            return true;
        }
        default: return false;
    }
}

Command inquiry(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // SPC-4 6.6.1: @1 EVPD (0), CmdDt (1, obsolete: 24/00), bits 7:5 ignored (the SCSI-2 LUN
    // field, which Linux fills for a LUN whose target last answered version 1 or 2); @2 page
    // code; @3-4 allocation length (0: nothing, and no error).
    if ((c[1] & 0x1E) != 0) return check(kSenseInvalidField);
    const uint16_t alloc = load_be16(c + 3);
    Answer a(out);
    if ((c[1] & 0x01) == 0) {
        if (c[2] != 0) return check(kSenseInvalidField);  // a page code without EVPD
        a.put(standard_inquiry(p));
        return good_with(a.clip(alloc, buffer));
    }
    if (vpd_page(p, c[2], a)) return good_with(a.clip(alloc, buffer));
    // An unsupported page: 24/00, and since storvsc reads the buffer anyway (§5), a header
    // naming the page with length 0, which Linux's scsi_vpd_inquiry rejects.
    Answer e(out);
    e.put(vpd_header(pdt(p), c[2], 0));
    return check(kSenseInvalidField, e.clip(alloc, buffer));
}

// ---- MODE SENSE, MODE SELECT ----

uint8_t our_mode_page(const DiskParams& p) { return p.cdrom ? kModePageCdCapabilities : kModePageCaching; }

// Our one mode page: current (= default) values, or the changeable mask (nothing is).
void put_mode_page(const DiskParams& p, bool changeable, Answer& a) {
    if (p.cdrom) {
        CdCapabilitiesPage g{};
        g.code = kModePageCdCapabilities;
        g.length = sizeof(g) - 2;
        if (!changeable) {
            g.read = 0x09;       // DVD-ROM and CD-R media (sr: a DVD drive)
            g.flags4 = 0x40;     // multi-session
            g.mechanism = 0x21;  // tray, lockable (PREVENT is answered), no eject
            g.max_read_speed.set(16 * 176);
            g.current_read_speed.set(16 * 176);
        }
        a.put(g);
    } else {
        CachingPage g{};
        g.code = kModePageCaching;
        g.length = sizeof(g) - 2;
        if (!changeable && p.write_cache) g.flags = kCachingWce;
        a.put(g);
    }
}

uint8_t device_specific(const DiskParams& p) {
    if (p.cdrom) return 0;
    return static_cast<uint8_t>((p.read_only ? kModeWp : 0) | (p.fua ? kModeDpoFua : 0));
}

Command mode_sense(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // SPC-4 6.11/6.12: @1 DBD (3), LLBAA (4, ten only): we return no block descriptors either
    // way; @2 PC (7:6), page code (5:0); @3 subpage code; allocation length @4, or @7-8 (ten).
    const bool ten = c[0] == op::kModeSense10;
    const uint8_t pc = c[2] >> 6;
    const uint8_t page = c[2] & 0x3F;
    const uint8_t subpage = c[3];
    const uint32_t alloc = ten ? load_be16(c + 7) : c[4];
    Answer a(out);
    if (ten) {
        ModeHeader10 h{};
        h.device_specific = device_specific(p);
        a.put(h);
    } else {
        ModeHeader6 h{};
        h.device_specific = device_specific(p);
        a.put(h);
    }
    Sense error{};
    if (pc == 3) {
        error = kSenseSavingNotSupported;  // saved values (SPC-4 6.11.1)
    } else if ((page == kModePageAll && (subpage == 0x00 || subpage == 0xFF)) ||
               (page == our_mode_page(p) && subpage == 0)) {
        put_mode_page(p, pc == 1, a);
    } else {
        error = kSenseInvalidField;
    }
    // The mode data length counts the bytes after itself. Ours starts 0x17 (disk) and never
    // 0x86 0x0B (§11).
    if (ten) {
        a.patch_be16(0, a.size() - 2);
    } else {
        const uint8_t length = static_cast<uint8_t>(a.size() - 1);
        a.patch(0, std::span(&length, 1));
    }
    // storvsc forces MODE SENSE to success (§5), so an error still hands over the header:
    // Linux then sees WP/DPOFUA and no pages ("Assuming drive cache" for a missing page 08).
    if (error != Sense{}) return check(error, a.clip(alloc, buffer));
    return good_with(a.clip(alloc, buffer));
}

Command mode_select(const uint8_t* c, uint32_t buffer) {
    // SPC-4 6.9/6.10: @1 PF (4), SP (0); parameter list length @4, or @7-8 (ten).
    const bool ten = c[0] == op::kModeSelect10;
    const uint32_t length = ten ? load_be16(c + 7) : c[4];
    if ((c[1] & 0x01) != 0) return check(kSenseInvalidField);  // nothing can be saved
    if (length == 0) return good_with(0);
    if ((c[1] & 0x10) == 0) return check(kSenseInvalidField);  // vendor-specific page format
    if (length > buffer) return check(kSenseInvalidField);
    if (length < (ten ? sizeof(ModeHeader10) : sizeof(ModeHeader6))) return check(kSenseParameterListLength);
    Command cmd;
    cmd.kind = Command::Kind::DataOut;
    cmd.data_out = length;
    return cmd;
}

Command finish_mode_select(const DiskParams& p, bool ten, std::span<const uint8_t> d) {
    // The header (SPC-4 7.5.5): mode data length and device-specific are reserved here; then
    // block descriptors (8 bytes, 16 with LONGLBA), whose block length must stay ours; then
    // pages, each of which must equal what MODE SENSE reports (SPC-4 7.5.2: a field reported
    // not changeable set to another value is 26/00). Nothing is changeable: Linux's
    // cache_type_store then fails with EINVAL, rather than believing WCE changed.
    const size_t n = d.size();
    const size_t header = ten ? sizeof(ModeHeader10) : sizeof(ModeHeader6);
    if (n < header) return check(kSenseParameterListLength);
    const size_t bd_length = ten ? load_be16(d.data() + 6) : d[3];
    const size_t bd_size = ten && (d[4] & 0x01) != 0 ? 16 : 8;
    if (bd_length % bd_size != 0) return check(kSenseInvalidParameter);
    if (bd_length > n - header) return check(kSenseParameterListLength);
    for (size_t off = header; off < header + bd_length; off += bd_size) {
        // Short descriptor: @5-7 block length; long: @12-15.
        const uint32_t block_length =
            bd_size == 8 ? (load_be32(d.data() + off + 4) & 0xFFFFFF) : load_be32(d.data() + off + 12);
        if (block_length != p.block_size) return check(kSenseInvalidParameter);
    }
    std::array<uint8_t, 32> ours{};
    Answer mine(ours);
    put_mode_page(p, false, mine);
    const size_t our_size = mine.size();
    for (size_t off = header + bd_length; off < n;) {
        if (n - off < 2) return check(kSenseParameterListLength);
        const uint8_t code = d[off];
        const size_t length = d[off + 1];
        if (n - off - 2 < length) return check(kSenseParameterListLength);
        // PS (bit 7) is reserved in MODE SELECT; SPF (bit 6): we have no subpages.
        if ((code & 0x3F) != ours[0] || (code & 0x40) != 0 || 2 + length != our_size ||
            !std::equal(d.begin() + static_cast<ptrdiff_t>(off + 1), d.begin() + static_cast<ptrdiff_t>(off + our_size),
                        ours.begin() + 1))
            return check(kSenseInvalidParameter);
        off += 2 + length;
    }
    Command cmd;
    cmd.bytes = static_cast<uint32_t>(n);
    return cmd;
}

// ---- Capacity, sense, start/stop ----

Command read_capacity10(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // SBC-3 5.15: @1 obsolete RELADR (0), @2-5 LBA (obsolete), @8 PMI (0): without PMI the LBA
    // must be 0 (24/00). No allocation length: the 8 bytes, clipped to the buffer.
    if ((c[1] & 0x01) != 0 || ((c[8] & 0x01) == 0 && load_be32(c + 2) != 0)) return check(kSenseInvalidField);
    if (!has_medium(p)) return check(kSenseMediumNotPresent);
    ReadCapacity10Data d{};
    d.last_lba.set(static_cast<uint32_t>(std::min<uint64_t>(last_lba(p), 0xFFFFFFFF)));  // FFFFFFFFh: use RC16
    d.block_size.set(p.block_size);
    Answer a(out);
    a.put(d);
    return good_with(a.clip(sizeof(d), buffer));
}

Command read_capacity16(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // SBC-3 5.16: @1 bits 4:0 service action (10h; others, e.g. GET LBA STATUS: 24/00), @2-9 LBA,
    // @10-13 allocation length, @14 PMI (0).
    if ((c[1] & 0x1F) != kSaReadCapacity16) return check(kSenseInvalidField);
    if ((c[14] & 0x01) == 0 && load_be64(c + 2) != 0) return check(kSenseInvalidField);
    ReadCapacity16Data d{};
    d.last_lba.set(last_lba(p));
    d.block_size.set(p.block_size);
    d.exponents = physical_exponent(p);
    // LBPME enables discard in Linux (§11); LBPRZ only with it (SBC-3 5.16.2).
    d.lbp_aligned.set(static_cast<uint16_t>(p.discard ? kLbpme | (p.discard_zeroes ? kLbprz : 0) : 0));
    Answer a(out);
    a.put(d);
    return good_with(a.clip(load_be32(c + 10), buffer));
}

Command request_sense(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // SPC-4 6.39: @1 DESC (0): descriptor format is not supported (24/00); @4 allocation length.
    // No sense is kept between commands (autosense carries it, §5), so this reports NO SENSE,
    // or the standing condition: an empty DVD drive is NOT READY 3A/00.
    if ((c[1] & 0x01) != 0) return check(kSenseInvalidField);
    Answer a(out);
    a.bytes(fixed_sense(has_medium(p) ? Sense{} : kSenseMediumNotPresent));
    return good_with(a.clip(c[4], buffer));
}

Command start_stop(const DiskParams& p, const uint8_t* c) {
    // SBC-3 5.25 / MMC-3 6.35: @1 IMMED (0); @4 power condition (7:4), LOEJ (1), START (0).
    // Power conditions and start/stop need nothing of a virtual disk. The DVD's tray is not
    // modeled here (its page 2Ah reports no eject): LOEJ is 24/00.
    if (p.cdrom && (c[4] & 0x02) != 0) return check(kSenseInvalidField);
    return good_with(0);
}

// ---- UNMAP, WRITE SAME(16) ----

Command unmap(const DiskParams& p, const uint8_t* c, uint32_t buffer) {
    // SBC-3 5.28: @1 ANCHOR (0), @6 group number, @7-8 parameter list length.
    if (!writable(p)) return check(kSenseWriteProtected);
    if (!p.discard) return check(kSenseInvalidOpcode);  // fully provisioned (LBPME = 0)
    if ((c[1] & 0x01) != 0) return check(kSenseInvalidField);  // ANC_SUP = 0
    const uint16_t length = load_be16(c + 7);
    if (length == 0) return good_with(0);  // no parameter list: not an error
    if (length < sizeof(UnmapListHeader)) return check(kSenseParameterListLength);
    if (length > buffer) return check(kSenseInvalidField);
    Command cmd;
    cmd.kind = Command::Kind::DataOut;
    cmd.data_out = length;
    return cmd;
}

Command write_same16(const DiskParams& p, const uint8_t* c, uint32_t buffer) {
    // SBC-3 5.42 (and SBC-4 NDOB): @1 WRPROTECT (7:5), ANCHOR (4), UNMAP (3), obsolete
    // PBDATA/LBDATA (2:1), NDOB (0: no data-out); @2-9 LBA, @10-13 number of blocks, @14 group.
    // Only the unmapping form exists here (B2 LBPWS; Linux's writesame_16 discard mode): the
    // data block is not read (Linux sends zeros), and writing a pattern is 24/00 (sd never asks:
    // no_write_same, §10.4).
    if (!writable(p)) return check(kSenseWriteProtected);
    if (!p.discard || (c[1] & 0x08) == 0 || (c[1] & 0xF6) != 0) return check(kSenseInvalidField);
    const uint64_t lba = load_be64(c + 2);
    const uint32_t blocks = load_be32(c + 10);
    if (blocks == 0) return check(kSenseInvalidField);  // WSNZ = 1 in B0
    if (!in_range(p, lba, blocks)) return check(kSenseLbaOutOfRange);
    if (p.max_unmap_blocks != 0 && blocks > p.max_unmap_blocks) return check(kSenseInvalidField);  // B0 max WRITE SAME length
    const uint32_t consumed = (c[1] & 0x01) != 0 ? 0 : p.block_size;  // the one block of data-out
    if (consumed > buffer) return check(kSenseInvalidField);
    Command cmd;
    cmd.kind = Command::Kind::Unmap;
    cmd.lba = lba;
    cmd.blocks = blocks;
    cmd.bytes = consumed;
    return cmd;
}

// ---- The DVD's MMC subset (contract §14) ----

void put_toc_descriptor(Answer& a, uint8_t track, uint64_t lba, bool msf) {
    TocDescriptor t{};
    t.adr_control = 0x14;
    t.track = track;
    if (msf) {
        // MMC-3 6.26.3.2: M:S:F of LBA + 150 (75 frames a second); past 255 minutes, the largest.
        const uint64_t f = lba + 150;
        const bool fits = f / (60 * 75) <= 255;
        t.address[1] = static_cast<uint8_t>(fits ? f / (60 * 75) : 255);
        t.address[2] = static_cast<uint8_t>(fits ? f / 75 % 60 : 59);
        t.address[3] = static_cast<uint8_t>(fits ? f % 75 : 74);
    } else {
        Be32 b;
        b.set(static_cast<uint32_t>(std::min<uint64_t>(lba, 0xFFFFFFFF)));
        std::memcpy(t.address, b.b, 4);
    }
    a.put(t);
}

Command read_toc(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // MMC-3 6.26: @1 MSF (1), @2 format (3:0), @6 track/session number, @7-8 allocation length,
    // @9 CONTROL, whose bits 7:6 are the SFF-8020 format field Linux's sr_cd_check still uses
    // (0x40: format 1, the multi-session offset) when @2 is 0.
    if (!has_medium(p)) return check(kSenseMediumNotPresent);
    const uint8_t format = (c[2] & 0x0F) != 0 ? c[2] & 0x0F : static_cast<uint8_t>(c[9] >> 6);
    const bool msf = (c[1] & 0x02) != 0;
    const uint8_t track = c[6];
    Answer a(out);
    a.put(TocHeader{{}, 1, 1});  // one session, one data track
    if (format == 0) {
        // The TOC: track 1 at LBA 0 (unless asked from a later track), then the lead-out (AAh).
        if (track > 1 && track != 0xAA) return check(kSenseInvalidField);
        if (track <= 1) put_toc_descriptor(a, 1, 0, msf);
        put_toc_descriptor(a, 0xAA, p.blocks, msf);
    } else if (format == 1) {
        // Session information: the first track of the last session starts at 0 (Linux: no
        // multi-session offset).
        put_toc_descriptor(a, 1, 0, msf);
    } else {
        return check(kSenseInvalidField);
    }
    a.patch_be16(0, a.size() - 2);
    return good_with(a.clip(load_be16(c + 7), buffer));
}

Command get_configuration(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // MMC-3 6.6: @1 RT (1:0, 3 reserved), @2-3 starting feature, @7-8 allocation length.
    // The feature header alone: the current profile, no features (so no writing features for
    // cdrom_probe_write_features to find).
    if ((c[1] & 0x03) == 3) return check(kSenseInvalidField);
    FeatureHeader h{};
    h.length.set(sizeof(h) - 4);
    h.current_profile.set(has_medium(p) ? kProfileDvdRom : 0);
    Answer a(out);
    a.put(h);
    return good_with(a.clip(load_be16(c + 7), buffer));
}

Command get_event_status(const DiskParams& p, const uint8_t* c, uint32_t buffer, std::span<uint8_t> out) {
    // MMC-3 6.5: @1 POLLED (0): asynchronous notification is not supported (24/00); @4
    // notification class request (bit 4: media); @7-8 allocation length. Stateless: the media
    // class always reports "no change" with the medium's presence; other classes: NEA.
    if ((c[1] & 0x01) == 0) return check(kSenseInvalidField);
    Answer a(out);
    EventHeader h{};
    h.supported = 0x10;
    if ((c[4] & 0x10) != 0) {
        h.length.set(sizeof(h) - 2 + sizeof(MediaEvent));
        h.klass = 4;
        a.put(h);
        a.put(MediaEvent{0, static_cast<uint8_t>(has_medium(p) ? 0x02 : 0), 0, 0});
    } else {
        h.length.set(sizeof(h) - 2);
        h.klass = 0x80;
        a.put(h);
    }
    return good_with(a.clip(load_be16(c + 7), buffer));
}

}  // namespace

std::array<uint8_t, 18> fixed_sense(Sense s) {
    FixedSense f{};
    f.response_code = 0x70;
    f.key = s.key & 0x0F;
    f.additional_length = sizeof(FixedSense) - 8;
    f.asc = s.asc;
    f.ascq = s.ascq;
    std::array<uint8_t, 18> r{};
    std::memcpy(r.data(), &f, sizeof(f));
    return r;
}

DiskParams dvd_params(uint64_t blocks) {
    DiskParams p;
    p.blocks = blocks;
    p.block_size = 2048;
    p.physical_block_size = 2048;
    p.read_only = true;
    p.write_cache = false;
    p.non_rotational = false;
    p.product = "Virtual DVD-ROM";
    p.cdrom = true;
    return p;
}

Result<void> validate(const DiskParams& p) {
    const uint32_t bs = p.block_size;
    if (bs != 512 && bs != 1024 && bs != 2048 && bs != 4096)
        return fail(Errc::Invalid, "block size {} is not 512, 1024, 2048 or 4096", bs);
    const uint32_t phys = p.physical_block_size;
    if (phys < bs || (phys & (phys - 1)) != 0 || uint64_t{phys} > (uint64_t{bs} << kMaxPhysicalExponent))
        return fail(Errc::Invalid, "physical block size {} is not a power-of-two multiple (at most 2^15) of {}", phys, bs);
    if (p.cdrom && (bs != 2048 || !p.read_only)) return fail(Errc::Invalid, "a DVD has read-only 2048-byte blocks");
    if (!p.cdrom && p.blocks == 0) return fail(Errc::Invalid, "a disk of 0 blocks");
    if (p.discard && p.max_unmap_descriptors == 0)
        return fail(Errc::Invalid, "discard needs at least one unmap descriptor per command");
    auto ascii = [](std::string_view s, size_t max) { return s.size() <= max && std::ranges::all_of(s, printable); };
    if (!ascii(p.vendor, 8) || !ascii(p.product, 16) || !ascii(p.revision, 4))
        return fail(Errc::Invalid, "vendor, product and revision are printable ASCII of at most 8, 16 and 4 bytes");
    if (!ascii(p.serial, kMaxSerial)) return fail(Errc::Invalid, "the serial is printable ASCII of at most {} bytes", kMaxSerial);
    return {};
}

Command decode(const DiskParams& p, std::span<const uint8_t> cdb, uint32_t buffer, std::span<uint8_t> out) {
    if (cdb.empty() || !implemented(p, cdb[0])) return check(kSenseInvalidOpcode);
    if (!well_formed(cdb)) return check(kSenseInvalidField);
    const uint8_t* c = cdb.data();
    switch (c[0]) {
        case op::kRead10:
        case op::kWrite10:
        case op::kRead16:
        case op::kWrite16:
        case op::kRead6:
        case op::kWrite6:
        case op::kRead12:
        case op::kWrite12: return read_write(p, c, buffer);
        case op::kTestUnitReady: return has_medium(p) ? good_with(0) : check(kSenseMediumNotPresent);
        case op::kRequestSense: return request_sense(p, c, buffer, out);
        case op::kInquiry: return inquiry(p, c, buffer, out);
        case op::kModeSense6:
        case op::kModeSense10: return mode_sense(p, c, buffer, out);
        case op::kModeSelect6:
        case op::kModeSelect10: return mode_select(c, buffer);
        case op::kStartStopUnit: return start_stop(p, c);
        // SPC-4 6.13 / MMC-3: PREVENT (1:0) in @4; the lock is not modeled.
        case op::kPreventAllowMediumRemoval: return good_with(0);
        case op::kReadCapacity10: return read_capacity10(p, c, buffer, out);
        case op::kServiceActionIn16: return read_capacity16(p, c, buffer, out);
        case op::kVerify10:
        case op::kVerify12:
        case op::kVerify16: return verify(p, c);
        case op::kSynchronizeCache10:
        case op::kSynchronizeCache16: return synchronize_cache(p, c);
        case op::kUnmap: return unmap(p, c, buffer);
        case op::kWriteSame16: return write_same16(p, c, buffer);
        case op::kReadToc: return read_toc(p, c, buffer, out);
        case op::kGetConfiguration: return get_configuration(p, c, buffer, out);
        case op::kGetEventStatusNotification: return get_event_status(p, c, buffer, out);
        default: return check(kSenseInvalidOpcode);
    }
}

Command finish_unmap(const DiskParams& p, std::span<const uint8_t> list, std::vector<UnmapRange>& ranges) {
    ranges.clear();
    if (!writable(p)) return check(kSenseWriteProtected);
    if (!p.discard) return check(kSenseInvalidOpcode);
    const size_t n = list.size();
    const auto header = read_prefix<UnmapListHeader>(list);
    if (!header) return check(kSenseParameterListLength);  // SBC-3 5.28.1: 1 to 7 bytes
    // SBC-3 5.28.2: both lengths say what is "available to be transferred"; a list claiming
    // more than it holds was cut short (1A/00). The descriptor bytes must lie within the data
    // length (26/00 otherwise). A partial last descriptor is ignored.
    const size_t data_length = header->data_length.get();
    const size_t descriptor_length = header->descriptor_length.get();
    if (data_length + 2 > n || descriptor_length + sizeof(UnmapListHeader) > n) return check(kSenseParameterListLength);
    if (descriptor_length + sizeof(UnmapListHeader) - 2 > data_length) return check(kSenseInvalidParameter);
    const size_t count = descriptor_length / sizeof(UnmapDescriptor);
    // SBC-3 5.28.2: more descriptors or blocks than B0 reports: INVALID FIELD IN PARAMETER LIST.
    if (count > p.max_unmap_descriptors) return check(kSenseInvalidParameter);
    uint64_t total = 0;  // at most 4095 descriptors x (2^32 - 1) blocks
    for (size_t i = 0; i < count; ++i) {
        const auto d = read_prefix<UnmapDescriptor>(list.subspan(sizeof(UnmapListHeader) + i * sizeof(UnmapDescriptor)));
        const uint64_t lba = d->lba.get();
        const uint32_t blocks = d->blocks.get();
        if (!in_range(p, lba, blocks)) return check(kSenseLbaOutOfRange);
        total += blocks;
    }
    if (p.max_unmap_blocks != 0 && total > p.max_unmap_blocks) return check(kSenseInvalidParameter);
    Command cmd;
    cmd.bytes = static_cast<uint32_t>(std::min<size_t>(n, 0xFFFFFFFF));
    if (total == 0) return cmd;
    ranges.reserve(count);
    for (size_t i = 0; i < count; ++i) {
        const auto d = read_prefix<UnmapDescriptor>(list.subspan(sizeof(UnmapListHeader) + i * sizeof(UnmapDescriptor)));
        if (d->blocks.get() != 0) ranges.push_back({d->lba.get(), d->blocks.get()});
    }
    cmd.kind = Command::Kind::Unmap;
    return cmd;
}

Command finish_data_out(const DiskParams& p, std::span<const uint8_t> cdb, std::span<const uint8_t> data,
                        std::vector<UnmapRange>& ranges) {
    ranges.clear();
    if (cdb.empty() || !implemented(p, cdb[0])) return check(kSenseInvalidOpcode);
    if (!well_formed(cdb)) return check(kSenseInvalidField);
    switch (cdb[0]) {
        case op::kUnmap: return finish_unmap(p, data, ranges);
        case op::kModeSelect6: return finish_mode_select(p, false, data);
        case op::kModeSelect10: return finish_mode_select(p, true, data);
        default: return check(kSenseInvalidOpcode);  // no data-out expected
    }
}

Command absent_lun(std::span<const uint8_t> cdb, uint32_t buffer, std::span<uint8_t> out) {
    if (cdb.empty()) return check(kSenseLunNotSupported);
    Answer a(out);
    if (cdb[0] == op::kInquiry) {
        if (!well_formed(cdb) || (cdb[1] & 0x1E) != 0) return check(kSenseInvalidField);
        const uint16_t alloc = load_be16(cdb.data() + 3);
        if ((cdb[1] & 0x01) != 0) {
            // No VPD for a LUN that is not there: CHECK CONDITION (§12), with a header that
            // Linux, which is forced to read it (§5), rejects.
            a.put(vpd_header(kPdtAbsent, cdb[2], 0));
            return check(kSenseLunNotSupported, a.clip(alloc, buffer));
        }
        if (cdb[2] != 0) return check(kSenseInvalidField);
        // §5: PQ 3, type 1Fh, and a real length (36 bytes, blank strings). Version 5: Linux
        // sets the target's scsi_level from this answer, and a level of SCSI-2 or lower would
        // make it put LUN bits into byte 1 of the next LUN's first INQUIRY.
        StandardInquiry s{};
        s.peripheral = kPdtAbsent;
        s.version = 5;
        s.format = 2;
        s.additional_length = sizeof(StandardInquiry) - 5;
        a.put(s);
        return good_with(a.clip(alloc, buffer));
    }
    if (cdb[0] == op::kRequestSense) {
        // SPC-4 6.39: to an incorrect LUN, GOOD with LOGICAL UNIT NOT SUPPORTED sense data.
        if (!well_formed(cdb)) return check(kSenseInvalidField);
        a.bytes(fixed_sense(kSenseLunNotSupported));
        return good_with(a.clip(cdb[4], buffer));
    }
    return check(kSenseLunNotSupported);
}

Command report_luns(std::span<const uint8_t> cdb, std::span<const uint16_t> luns, uint32_t buffer,
                    std::span<uint8_t> out) {
    if (cdb.empty() || cdb[0] != op::kReportLuns) return check(kSenseInvalidOpcode);
    if (!well_formed(cdb)) return check(kSenseInvalidField);
    // SPC-4 6.33: @2 select report, @6-9 allocation length (under 16: 24/00).
    const uint8_t select = cdb[2];
    const uint32_t alloc = load_be32(cdb.data() + 6);
    if ((select != 0x00 && select != 0x01 && select != 0x02) || alloc < 16) return check(kSenseInvalidField);
    Answer a(out);
    a.put(ReportLunsHeader{});
    if (select != 0x01) {  // 01h: well-known LUNs only, and we have none
        for (uint16_t lun : luns) {
            if (lun > 0xFF) continue;
            // SAM-5 4.7.7.2 peripheral device addressing: byte 0 = 0 (bus 0), byte 1 = the LUN.
            const uint8_t entry[8] = {0, static_cast<uint8_t>(lun), 0, 0, 0, 0, 0, 0};
            a.bytes(entry);
        }
    }
    Be32 list_length;
    list_length.set(static_cast<uint32_t>(a.size() - sizeof(ReportLunsHeader)));
    a.patch(0, as_bytes(list_length));
    return good_with(a.clip(alloc, buffer));
}

}  // namespace enlighten::scsi
