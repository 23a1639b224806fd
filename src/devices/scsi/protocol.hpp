// SCSI wire formats for the disk and DVD targets (scsi.hpp): SAM-5 status codes, SPC-4 sense
// keys and ASC/ASCQ, the opcodes Linux 6.1 sends (contract-storage.md §10, §14), and the
// answer layouts Linux parses (§11). Every multi-byte field on the SCSI wire is big-endian:
// wire structs hold it as BigEndian<T> (bytes, alignment 1), read and written with get/set.
//
// Threads: constants and plain values only.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.hpp"

namespace enlighten::scsi {

// A big-endian integer kept as bytes, so that a wire struct has no padding and no alignment.
template <typename T>
struct BigEndian {
    uint8_t b[sizeof(T)];
    constexpr void set(T v) {
        for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<uint8_t>(v >> (8 * (sizeof(T) - 1 - i)));
    }
    [[nodiscard]] constexpr T get() const {
        T v = 0;
        for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | b[i]);
        return v;
    }
};
using Be16 = BigEndian<uint16_t>;
using Be32 = BigEndian<uint32_t>;
using Be64 = BigEndian<uint64_t>;
ENL_WIRE(Be16, 2);
ENL_WIRE(Be32, 4);
ENL_WIRE(Be64, 8);

// Big-endian loads from CDB bytes whose presence the caller has checked.
[[nodiscard]] constexpr uint16_t load_be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
[[nodiscard]] constexpr uint32_t load_be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
[[nodiscard]] constexpr uint64_t load_be64(const uint8_t* p) {
    return (uint64_t{load_be32(p)} << 32) | load_be32(p + 4);
}

// SAM-5 5.3 status codes (the SRB's scsi_status, contract §3).
inline constexpr uint8_t kGood = 0x00;
inline constexpr uint8_t kCheckCondition = 0x02;
inline constexpr uint8_t kBusy = 0x08;
inline constexpr uint8_t kReservationConflict = 0x18;
inline constexpr uint8_t kTaskSetFull = 0x28;

// SPC-4 4.5.6 sense keys.
inline constexpr uint8_t kNoSense = 0x0;
inline constexpr uint8_t kRecoveredError = 0x1;
inline constexpr uint8_t kNotReady = 0x2;
inline constexpr uint8_t kMediumError = 0x3;
inline constexpr uint8_t kHardwareError = 0x4;
inline constexpr uint8_t kIllegalRequest = 0x5;
inline constexpr uint8_t kUnitAttention = 0x6;
inline constexpr uint8_t kDataProtect = 0x7;
inline constexpr uint8_t kAbortedCommand = 0xB;

// SPC-4 Annex D additional sense codes (ASC; the qualifier is 0 unless named).
inline constexpr uint8_t kAscNone = 0x00;
inline constexpr uint8_t kAscWriteError = 0x0C;
inline constexpr uint8_t kAscUnrecoveredReadError = 0x11;
inline constexpr uint8_t kAscParameterListLength = 0x1A;   // PARAMETER LIST LENGTH ERROR
inline constexpr uint8_t kAscInvalidOpcode = 0x20;         // INVALID COMMAND OPERATION CODE
inline constexpr uint8_t kAscLbaOutOfRange = 0x21;         // LOGICAL BLOCK ADDRESS OUT OF RANGE
inline constexpr uint8_t kAscInvalidFieldInCdb = 0x24;
inline constexpr uint8_t kAscLunNotSupported = 0x25;       // LOGICAL UNIT NOT SUPPORTED
inline constexpr uint8_t kAscInvalidFieldInParameterList = 0x26;
inline constexpr uint8_t kAscWriteProtected = 0x27;
inline constexpr uint8_t kAscParametersChanged = 0x2A;     // with 09: CAPACITY DATA HAS CHANGED (contract §8)
inline constexpr uint8_t kAscqCapacityDataChanged = 0x09;
inline constexpr uint8_t kAscSavingNotSupported = 0x39;    // SAVING PARAMETERS NOT SUPPORTED
inline constexpr uint8_t kAscMediumNotPresent = 0x3A;
inline constexpr uint8_t kAscReportedLunsChanged = 0x3F;   // with 0E (contract §8)
inline constexpr uint8_t kAscqReportedLunsChanged = 0x0E;

// Operation codes (SPC-4, SBC-3, MMC-6) of every command the targets implement, and of a few
// that Linux sends and that get INVALID COMMAND OPERATION CODE.
namespace op {
inline constexpr uint8_t kTestUnitReady = 0x00;
inline constexpr uint8_t kRequestSense = 0x03;
inline constexpr uint8_t kRead6 = 0x08;
inline constexpr uint8_t kWrite6 = 0x0A;
inline constexpr uint8_t kInquiry = 0x12;
inline constexpr uint8_t kModeSelect6 = 0x15;
inline constexpr uint8_t kModeSense6 = 0x1A;
inline constexpr uint8_t kStartStopUnit = 0x1B;
inline constexpr uint8_t kPreventAllowMediumRemoval = 0x1E;
inline constexpr uint8_t kReadCapacity10 = 0x25;
inline constexpr uint8_t kRead10 = 0x28;
inline constexpr uint8_t kWrite10 = 0x2A;
inline constexpr uint8_t kVerify10 = 0x2F;
inline constexpr uint8_t kSynchronizeCache10 = 0x35;
inline constexpr uint8_t kWriteSame10 = 0x41;  // not implemented (LBPWS10 = 0); storvsc never sends it (§10.4)
inline constexpr uint8_t kUnmap = 0x42;
inline constexpr uint8_t kReadToc = 0x43;
inline constexpr uint8_t kGetConfiguration = 0x46;
inline constexpr uint8_t kGetEventStatusNotification = 0x4A;
inline constexpr uint8_t kReadDiscInformation = 0x51;   // not implemented (contract §14 allows 20/00)
inline constexpr uint8_t kReadTrackInformation = 0x52;  // not implemented (same)
inline constexpr uint8_t kModeSelect10 = 0x55;
inline constexpr uint8_t kModeSense10 = 0x5A;
inline constexpr uint8_t kRead16 = 0x88;
inline constexpr uint8_t kWrite16 = 0x8A;
inline constexpr uint8_t kVerify16 = 0x8F;
inline constexpr uint8_t kSynchronizeCache16 = 0x91;
inline constexpr uint8_t kWriteSame16 = 0x93;
inline constexpr uint8_t kServiceActionIn16 = 0x9E;
inline constexpr uint8_t kReportLuns = 0xA0;
inline constexpr uint8_t kRead12 = 0xA8;
inline constexpr uint8_t kWrite12 = 0xAA;
inline constexpr uint8_t kVerify12 = 0xAF;
}  // namespace op
inline constexpr uint8_t kSaReadCapacity16 = 0x10;  // SERVICE ACTION IN(16) service action (SBC-3 5.16)

// Peripheral device types (SPC-4 6.6.2 table 146) and the absent-LUN byte (contract §5).
inline constexpr uint8_t kPdtDisk = 0x00;
inline constexpr uint8_t kPdtCdrom = 0x05;
inline constexpr uint8_t kPdtAbsent = 0x7F;  // peripheral qualifier 3, type 1Fh

// VPD page codes (SPC-4 7.8, SBC-3 6.5).
inline constexpr uint8_t kVpdSupportedPages = 0x00;
inline constexpr uint8_t kVpdSerialNumber = 0x80;
inline constexpr uint8_t kVpdDeviceIdentification = 0x83;
inline constexpr uint8_t kVpdBlockLimits = 0xB0;
inline constexpr uint8_t kVpdBlockCharacteristics = 0xB1;
inline constexpr uint8_t kVpdLogicalBlockProvisioning = 0xB2;

// Mode page codes (SBC-3 6.4, MMC-3 table 266).
inline constexpr uint8_t kModePageCaching = 0x08;
inline constexpr uint8_t kModePageCdCapabilities = 0x2A;
inline constexpr uint8_t kModePageAll = 0x3F;

// Microsoft's IEEE company id, 00-22-48, as OpenVMM puts it in its NAA designator (§16).
inline constexpr uint32_t kMicrosoftOui = 0x002248;

// Standard INQUIRY data, the 36 bytes SPC-4 6.6.2 requires (contract §11).
struct StandardInquiry {
    uint8_t peripheral;       // 0: qualifier (7:5) | device type (4:0)
    uint8_t rmb;              // 1: bit 7 RMB (removable medium)
    uint8_t version;          // 2: 5 = SPC-3 (Linux's scsi_level 6); 0 = no standard (the DVD)
    uint8_t format;           // 3: response data format 2 (bits 3:0)
    uint8_t additional_length;// 4: length - 5 = 31
    uint8_t flags5;           // 5: SCCS, ACC, TPGS, 3PC, PROTECT: 0
    uint8_t flags6;           // 6: ENCSERV, MULTIP: 0
    uint8_t flags7;           // 7: bit 1 CmdQue (tagged queuing: Linux queue_type "simple")
    char vendor[8];           // 8: T10 vendor id, space-padded ASCII
    char product[16];         // 16
    char revision[4];         // 32
};
ENL_WIRE(StandardInquiry, 36);
ENL_WIRE_OFFSET(StandardInquiry, vendor, 8);
ENL_WIRE_OFFSET(StandardInquiry, revision, 32);
inline constexpr uint8_t kInquiryCmdQue = 0x02;

// The 4-byte header of every VPD page (SPC-4 7.8.1).
struct VpdHeader {
    uint8_t peripheral;  // 0: as in the standard data
    uint8_t page;        // 1: page code (Linux rejects the page if this differs, §10.1)
    Be16 length;         // 2: page length, bytes after this header (Linux rejects 0)
};
ENL_WIRE(VpdHeader, 4);

// A designation descriptor's header (SPC-4 7.8.6.1), in the Device Identification page.
struct DesignatorHeader {
    uint8_t code_set;  // 0: protocol identifier (7:4) = 0, code set (3:0): 1 binary, 2 ASCII
    uint8_t type;      // 1: PIV (7) = 0, association (5:4) = 0 (the LU; Linux wants 0), type (3:0)
    uint8_t reserved;  // 2
    uint8_t length;    // 3: designator length
};
ENL_WIRE(DesignatorHeader, 4);
inline constexpr uint8_t kCodeSetBinary = 1;
inline constexpr uint8_t kCodeSetAscii = 2;
inline constexpr uint8_t kDesignatorT10 = 1;  // T10 vendor id based
inline constexpr uint8_t kDesignatorNaa = 3;

// Block Limits VPD page B0h (SBC-3 6.5.3), page length 3Ch: the length Linux needs to read the
// unmap fields (contract §11: "B0 missing or shorter than 64" leaves writesame_16).
struct BlockLimitsPage {
    VpdHeader header;                  // 0: page B0h, length 0x3C
    uint8_t wsnz;                      // 4: bit 0 WSNZ: WRITE SAME with 0 blocks is refused
    uint8_t max_compare_and_write;     // 5: 0
    Be16 optimal_granularity;          // 6: optimal transfer length granularity (-> minimum_io_size)
    Be32 max_transfer;                 // 8: maximum transfer length in blocks, 0 = none
    Be32 optimal_transfer;             // 12: 0 = not reported
    Be32 max_prefetch;                 // 16: 0
    Be32 max_unmap_lba_count;          // 20: 0xFFFFFFFF = no limit
    Be32 max_unmap_descriptors;        // 24: both nonzero with LBPU: Linux's "unmap" mode
    Be32 optimal_unmap_granularity;    // 28
    Be32 unmap_alignment;              // 32: bit 31 UGAVALID, bits 30:0 alignment
    Be64 max_write_same;               // 36: maximum WRITE SAME length, 0 = not reported
    uint8_t reserved[20];              // 44
};
ENL_WIRE(BlockLimitsPage, 64);
ENL_WIRE_OFFSET(BlockLimitsPage, max_transfer, 8);
ENL_WIRE_OFFSET(BlockLimitsPage, max_unmap_lba_count, 20);
ENL_WIRE_OFFSET(BlockLimitsPage, max_write_same, 36);

// Block Device Characteristics VPD page B1h (SBC-3 6.5.2), page length 3Ch.
struct BlockCharacteristicsPage {
    VpdHeader header;   // 0: page B1h, length 0x3C
    Be16 rotation_rate; // 4: 1 = non-rotating (Linux: rotational = 0), 0 = not reported
    uint8_t product_type;  // 6: 0
    uint8_t form_factor;   // 7: WABEREQ, WACEREQ, nominal form factor: 0
    uint8_t zoned;         // 8: bits 5:4 ZONED = 0 (Linux reads it, §11)
    uint8_t reserved[55];  // 9
};
ENL_WIRE(BlockCharacteristicsPage, 64);
ENL_WIRE_OFFSET(BlockCharacteristicsPage, zoned, 8);

// Logical Block Provisioning VPD page B2h (SBC-3 6.5.4), page length 4 (no provisioning group
// descriptor).
struct ProvisioningPage {
    VpdHeader header;           // 0: page B2h, length 4
    uint8_t threshold_exponent; // 4: 0
    uint8_t flags;              // 5: bit 7 LBPU, 6 LBPWS, 5 LBPWS10, 2 LBPRZ, 1 ANC_SUP, 0 DP
    uint8_t provisioning_type;  // 6: bits 2:0: 0 full, 1 resource, 2 thin
    uint8_t reserved;           // 7
};
ENL_WIRE(ProvisioningPage, 8);
inline constexpr uint8_t kLbpu = 0x80;
inline constexpr uint8_t kLbpws = 0x40;
inline constexpr uint8_t kLbprzB2 = 0x04;

// READ CAPACITY(10) data (SBC-3 5.15.2).
struct ReadCapacity10Data {
    Be32 last_lba;    // 0: 0xFFFFFFFF when the last LBA does not fit (Linux then sends RC16)
    Be32 block_size;  // 4: bytes per logical block
};
ENL_WIRE(ReadCapacity10Data, 8);

// READ CAPACITY(16) parameter data (SBC-3 5.16.2).
struct ReadCapacity16Data {
    Be64 last_lba;        // 0
    Be32 block_size;      // 8
    uint8_t protection;   // 12: RC BASIS (5:4), P_TYPE (3:1), PROT_EN (0): all 0 (contract §10.2)
    uint8_t exponents;    // 13: P_I_EXPONENT (7:4) = 0, logical blocks per physical block exponent (3:0)
    Be16 lbp_aligned;     // 14: bit 15 LBPME, bit 14 LBPRZ, bits 13:0 lowest aligned LBA = 0
    uint8_t reserved[16]; // 16
};
ENL_WIRE(ReadCapacity16Data, 32);
ENL_WIRE_OFFSET(ReadCapacity16Data, exponents, 13);
ENL_WIRE_OFFSET(ReadCapacity16Data, lbp_aligned, 14);
inline constexpr uint16_t kLbpme = 0x8000;
inline constexpr uint16_t kLbprz = 0x4000;

// Mode parameter headers (SPC-4 7.5.5). No block descriptors are ever returned.
struct ModeHeader6 {
    uint8_t length;       // 0: mode data length = total - 1; never 0x86 with 0x0B next (§11)
    uint8_t medium_type;  // 1: 0
    uint8_t device_specific;  // 2: direct access: bit 7 WP, bit 4 DPOFUA (SBC-3 6.4.1); DVD: 0
    uint8_t bd_length;    // 3: block descriptor length
};
ENL_WIRE(ModeHeader6, 4);
struct ModeHeader10 {
    Be16 length;          // 0: mode data length = total - 2
    uint8_t medium_type;  // 2
    uint8_t device_specific;  // 3
    uint8_t longlba;      // 4: bit 0 LONGLBA
    uint8_t reserved;     // 5
    Be16 bd_length;       // 6
};
ENL_WIRE(ModeHeader10, 8);
ENL_WIRE_OFFSET(ModeHeader10, bd_length, 6);
inline constexpr uint8_t kModeWp = 0x80;
inline constexpr uint8_t kModeDpoFua = 0x10;

// Caching mode page 08h (SBC-3 6.4.5): Linux reads WCE and RCD (contract §10.2 step 5).
struct CachingPage {
    uint8_t code;         // 0: PS (7) = 0, SPF (6) = 0, page code 08h
    uint8_t length;       // 1: 0x12
    uint8_t flags;        // 2: bit 2 WCE, bit 0 RCD (0: the read cache is on)
    uint8_t rest[17];     // 3: retention priorities, prefetch, segments: all 0
};
ENL_WIRE(CachingPage, 20);
inline constexpr uint8_t kCachingWce = 0x04;

// CD/DVD capabilities and mechanical status page 2Ah (MMC-2 table 109, length 14h), what
// Linux's sr get_capabilities() reads (contract §14).
struct CdCapabilitiesPage {
    uint8_t code;          // 0: page code 2Ah
    uint8_t length;        // 1: 0x14
    uint8_t read;          // 2: bit 3 DVD-ROM read, bit 0 CD-R read
    uint8_t write;         // 3: 0: no writing of any medium
    uint8_t flags4;        // 4: bit 6 multi-session
    uint8_t flags5;        // 5: 0: no CD-DA
    uint8_t mechanism;     // 6: loading mechanism (7:5) 1 = tray, bit 3 eject = 0, bit 0 lock
    uint8_t flags7;        // 7: 0
    Be16 max_read_speed;   // 8: kB/s (obsolete; sr prints it / 176)
    Be16 volume_levels;    // 10: 0
    Be16 buffer_size;      // 12: 0
    Be16 current_read_speed;  // 14
    uint8_t reserved16;    // 16
    uint8_t digital_output;   // 17
    Be16 max_write_speed;  // 18: 0
    Be16 current_write_speed; // 20: 0
};
ENL_WIRE(CdCapabilitiesPage, 22);
ENL_WIRE_OFFSET(CdCapabilitiesPage, max_read_speed, 8);

// Fixed-format sense data (SPC-4 4.5.3), 18 bytes (contract §5).
struct FixedSense {
    uint8_t response_code;  // 0: VALID (7) = 0, 70h current error
    uint8_t obsolete;       // 1
    uint8_t key;            // 2: FILEMARK, EOM, ILI = 0; sense key (3:0)
    uint8_t information[4]; // 3
    uint8_t additional_length;  // 7: 10
    uint8_t command_specific[4]; // 8
    uint8_t asc;            // 12
    uint8_t ascq;           // 13
    uint8_t fru;            // 14
    uint8_t sense_key_specific[3];  // 15
};
ENL_WIRE(FixedSense, 18);
ENL_WIRE_OFFSET(FixedSense, asc, 12);

// UNMAP parameter list (SBC-3 5.28.2): a header, then 16-byte block descriptors. Linux sends
// one descriptor: lengths 22 and 16, 24 bytes in all (contract §10.3).
struct UnmapListHeader {
    Be16 data_length;        // 0: bytes that follow this field
    Be16 descriptor_length;  // 2: bytes of block descriptors (a partial last one is ignored)
    uint8_t reserved[4];     // 4
};
ENL_WIRE(UnmapListHeader, 8);
struct UnmapDescriptor {
    Be64 lba;             // 0
    Be32 blocks;          // 8
    uint8_t reserved[4];  // 12
};
ENL_WIRE(UnmapDescriptor, 16);

// REPORT LUNS parameter data (SPC-4 6.33): a header, then 8-byte LUNs (contract §10.1 step 2).
struct ReportLunsHeader {
    Be32 list_length;     // 0: 8 x the number of LUNs (the whole list, even when truncated)
    uint8_t reserved[4];  // 4
};
ENL_WIRE(ReportLunsHeader, 8);

// READ TOC/PMA/ATIP (MMC-3 6.26): a header and 8-byte track descriptors (formats 0 and 1).
struct TocHeader {
    Be16 length;       // 0: data length, bytes after this field
    uint8_t first;     // 2: first track (format 0) or session (format 1)
    uint8_t last;      // 3: last track or session
};
ENL_WIRE(TocHeader, 4);
struct TocDescriptor {
    uint8_t reserved0;  // 0
    uint8_t adr_control;// 1: ADR (7:4) = 1, CONTROL (3:0) = 4: a data track
    uint8_t track;      // 2: track number; AAh = the lead-out
    uint8_t reserved3;  // 3
    uint8_t address[4]; // 4: LBA (big-endian) or 0, M, S, F
};
ENL_WIRE(TocDescriptor, 8);

// GET EVENT STATUS NOTIFICATION (MMC-3 6.5): a header and the media event (class 4).
struct EventHeader {
    Be16 length;       // 0: event data length, bytes after this field
    uint8_t klass;     // 2: NEA (7), notification class (2:0): 4 = media
    uint8_t supported; // 3: supported event classes: bit 4 media
};
ENL_WIRE(EventHeader, 4);
struct MediaEvent {
    uint8_t code;      // 0: event code (3:0): 0 = no change
    uint8_t status;    // 1: bit 1 media present, bit 0 door open
    uint8_t start_slot;// 2
    uint8_t end_slot;  // 3
};
ENL_WIRE(MediaEvent, 4);

// GET CONFIGURATION feature header (MMC-3 5.2); no feature descriptors follow.
struct FeatureHeader {
    Be32 length;          // 0: data length, bytes after this field (4)
    uint8_t reserved[2];  // 4
    Be16 current_profile; // 6: 0010h DVD-ROM, 0 without a medium
};
ENL_WIRE(FeatureHeader, 8);
inline constexpr uint16_t kProfileDvdRom = 0x0010;

}  // namespace enlighten::scsi
