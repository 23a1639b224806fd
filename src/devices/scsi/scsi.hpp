// A SCSI direct-access disk (SBC-3) and a minimal read-only CD/DVD (MMC subset) as pure logic:
// CDBs in, the answer out, with no I/O, no VMBus and no files. The storage VSP (storvsp)
// decodes each SRB's CDB here once, moves the data, and completes the SRB from the Command.
// What Linux 6.1 sends and parses is in /work/shared/contract-storage.md (§ below).
//
// Rules every answer follows:
// * Every CDB field is guest-controlled: a CDB shorter than its opcode's size is INVALID
//   FIELD IN CDB (missing bytes are never read as zeros); LBA ranges are checked without
//   overflow; answers are clipped to the allocation length, the guest's buffer and `out`.
// * `Command::bytes` is the count to report as the SRB's data_transfer_length, whatever the
//   kind and status (contract §5 step 4: exact, or sd requeues).
// * CHECK CONDITION carries sense (send it as autosense, §5: never without). Its `bytes` is 0,
//   except for INQUIRY and MODE SENSE: storvsc forces those to success and reads the buffer
//   (§5 quirk 1), so their error answers still hold a well-formed empty answer (a VPD header
//   with page length 0, which Linux rejects; a mode parameter header with no pages).
// * Stateless: no pending sense, no UNIT ATTENTION (the caller keeps the per-LUN capacity-
//   change state and answers 2A/09 itself, §8; kAscParametersChanged in protocol.hpp).
//
// Threads: pure functions of their arguments; call from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "devices/scsi/protocol.hpp"

namespace enlighten::scsi {

// Sense key and additional sense code/qualifier (SPC-4 4.5).
struct Sense {
    uint8_t key = 0, asc = 0, ascq = 0;
    friend bool operator==(const Sense&, const Sense&) = default;
};
inline constexpr Sense kSenseInvalidOpcode{kIllegalRequest, kAscInvalidOpcode, 0};        // 05/20/00
inline constexpr Sense kSenseInvalidField{kIllegalRequest, kAscInvalidFieldInCdb, 0};     // 05/24/00
inline constexpr Sense kSenseLbaOutOfRange{kIllegalRequest, kAscLbaOutOfRange, 0};        // 05/21/00
inline constexpr Sense kSenseLunNotSupported{kIllegalRequest, kAscLunNotSupported, 0};    // 05/25/00
inline constexpr Sense kSenseParameterListLength{kIllegalRequest, kAscParameterListLength, 0};  // 05/1A/00
inline constexpr Sense kSenseInvalidParameter{kIllegalRequest, kAscInvalidFieldInParameterList, 0};  // 05/26/00
inline constexpr Sense kSenseSavingNotSupported{kIllegalRequest, kAscSavingNotSupported, 0};  // 05/39/00
inline constexpr Sense kSenseWriteProtected{kDataProtect, kAscWriteProtected, 0};         // 07/27/00
inline constexpr Sense kSenseMediumNotPresent{kNotReady, kAscMediumNotPresent, 0};        // 02/3A/00
inline constexpr Sense kSenseCapacityChanged{kUnitAttention, kAscParametersChanged, kAscqCapacityDataChanged};  // 06/2A/09

// Fixed-format sense (0x70, 18 bytes, additional length 10; contract §5 "SCSI error").
[[nodiscard]] std::array<uint8_t, 18> fixed_sense(Sense s);

// One logical unit. Disks: blocks ≥ 1. The DVD (cdrom): see dvd_params().
struct DiskParams {
    uint64_t blocks = 0;                 // capacity in logical blocks (RC10/RC16; §11)
    uint32_t block_size = 512;           // 512, 1024, 2048 or 4096 (§11: anything else is capacity 0)
    uint32_t physical_block_size = 4096; // power-of-two multiple of block_size, at most 2^15 of them
                                         // (RC16 byte 13 exponent; B0 optimal granularity)
    bool read_only = false;              // WP in the mode header; writes, UNMAP, WRITE SAME: 07/27/00
    bool write_cache = true;             // WCE in the caching page: the guest sends SYNCHRONIZE
                                         // CACHE, and nothing else makes its writes durable (§10.3)
    bool fua = false;                    // DPOFUA in the mode header: FUA writes (§10.3; sd uses them
                                         // only with WCE too)
    bool discard = false;                // LBPME in RC16, VPD B2 (LBPU, LBPWS), unmap fields of B0:
                                         // Linux's "unmap" provisioning mode (§11 table)
    bool discard_zeroes = false;         // LBPRZ (RC16, B2): unmapped blocks read back as zeros
    uint32_t max_transfer_blocks = 0;    // B0 maximum transfer length (0: none); longer: 05/24/00
    uint32_t max_unmap_blocks = 0;       // B0 maximum unmap LBA count and WRITE SAME length per
                                         // command; 0: no limit (reported as FFFFFFFFh)
    uint32_t max_unmap_descriptors = 256;// B0 maximum unmap block descriptor count (≥ 1)
    uint32_t unmap_granularity_blocks = 0;  // B0 optimal unmap granularity; 0: the physical block
    bool non_rotational = true;          // B1 rotation rate 1 (Linux: rotational = 0)
    std::string serial;                  // VPD 80 (absent when empty); printable ASCII, ≤ 128 bytes
    uint64_t naa_id = 0;                 // VPD 83 NAA 6 designator 6002248 + 36 zero bits + this
                                         // (Microsoft's OUI 00-22-48, as OpenVMM); 0: no NAA
    std::string vendor = "Msft", product = "Virtual Disk", revision = "1.0";  // ≤ 8/16/4, printable
    bool cdrom = false;                  // PDT 5, RMB, INQUIRY version 0, 2048-byte blocks, read-only,
                                         // the MMC subset (§14); blocks = 0: no medium (02/3A/00)
};

// A DVD drive holding `blocks` 2048-byte blocks (0: empty), "Msft Virtual DVD-ROM 1.0".
[[nodiscard]] DiskParams dvd_params(uint64_t blocks);

// Whether `p` describes a device Linux can use (the limits in the field comments). decode()
// stays memory-safe on any params; this is for configuration errors. Errc::Invalid.
[[nodiscard]] Result<void> validate(const DiskParams& p);

// What a command asks for, decoded once from the CDB.
struct Command {
    enum class Kind : uint8_t {
        Done,     // complete now with status/sense; `out` holds `data_in` bytes for the guest
        Read,     // read blocks [lba, lba + blocks) into the guest's buffer; blocks ≥ 1
        Write,    // write them from the guest's buffer; blocks ≥ 1
        Flush,    // make every completed write durable (SYNCHRONIZE CACHE; lba/blocks as sent,
                  // blocks 0 = to the end), then GOOD
        Unmap,    // discard: from decode() (WRITE SAME(16) with UNMAP) the range lba/blocks;
                  // from finish_unmap() the ranges it filled. Then GOOD
        DataOut,  // fetch `data_out` bytes of data-out, then call finish_data_out()
    };
    Kind kind = Kind::Done;
    uint8_t status = kGood;  // Done: GOOD or CHECK CONDITION (then with sense)
    Sense sense;
    uint32_t data_in = 0;    // Done: bytes of `out` to copy into the guest's buffer (≤ out.size(),
                             // ≤ the buffer)
    uint32_t bytes = 0;      // the data_transfer_length to report on completion: data_in for Done,
                             // blocks × block_size for Read/Write, the data-out consumed for Unmap
                             // and finish_data_out(); for Read/Write/Flush/Unmap, if the backend
                             // fails the caller reports its own CHECK CONDITION with 0
    uint64_t lba = 0;
    uint32_t blocks = 0;
    bool fua = false;        // Read/Write: the CDB's FUA bit (make this write durable before GOOD)
    uint32_t data_out = 0;   // DataOut: bytes to fetch (≤ the buffer)

    [[nodiscard]] bool good() const { return kind != Kind::Done || status == kGood; }
};

// Decodes `cdb` (as many bytes as the SRB's cdb_length says) for a present LUN. `buffer` is
// the guest's data buffer size in bytes (data_transfer_length); immediate data-in goes into
// `out` (at most out.size(); the caller gives at least 4096 bytes). No allocation, and READ/
// WRITE touch neither `out` nor the strings of `p`. REPORT LUNS is the target's, not the
// LUN's: answer it with report_luns() before looking the LUN up (decode() answers 05/20/00,
// after which Linux falls back to a sequential INQUIRY scan, §10.1).
[[nodiscard]] Command decode(const DiskParams& p, std::span<const uint8_t> cdb, uint32_t buffer,
                             std::span<uint8_t> out);

// One range to discard.
struct UnmapRange {
    uint64_t lba;
    uint32_t blocks;
    friend bool operator==(const UnmapRange&, const UnmapRange&) = default;
};

// Completes a DataOut command with its data-out (`data`, as fetched: at most data_out bytes).
// UNMAP: finish_unmap(); MODE SELECT(6)/(10): accepts pages equal to what MODE SENSE reports
// (nothing is changeable: SPC-4 7.5.2; a change, such as clearing WCE, is 05/26/00).
[[nodiscard]] Command finish_data_out(const DiskParams& p, std::span<const uint8_t> cdb,
                                      std::span<const uint8_t> data, std::vector<UnmapRange>& ranges);

// UNMAP's parameter list (SBC-3 5.28.2) into `ranges` (cleared first; empty descriptors
// dropped): Kind::Unmap, or Done GOOD when there is nothing to discard, or Done with
// CHECK CONDITION: 1A/00 if the list is shorter than its header or its lengths claim more
// than it holds, 26/00 for more descriptors or blocks than B0 allows, 21/00 for a range
// outside the capacity (nothing is discarded then).
[[nodiscard]] Command finish_unmap(const DiskParams& p, std::span<const uint8_t> param_list,
                                   std::vector<UnmapRange>& ranges);

// The answers for a LUN that does not exist (contract §5, §12): standard INQUIRY: 36 bytes
// with byte 0 = 0x7F (the guest adds no device); INQUIRY EVPD: CHECK CONDITION 05/25/00 with
// a VPD header of length 0 (byte 0 0x7F); REQUEST SENSE: GOOD with 05/25/00 sense data;
// everything else: CHECK CONDITION 05/25/00, which the caller should send as srb_status
// INVALID_LUN (0x20) instead, so that Linux removes a LUN that went away (§8).
[[nodiscard]] Command absent_lun(std::span<const uint8_t> cdb, uint32_t buffer, std::span<uint8_t> out);

// REPORT LUNS for a target whose LUNs are `luns` (SPC-4 6.33; contract §10.1 step 2): select
// report 0 and 2 list them, 1 (well-known LUNs) lists none, others are 05/24/00; an allocation
// length under 16 is 05/24/00. Peripheral addressing: LUNs above 255 are left out (storvsc
// scans 0..254).
[[nodiscard]] Command report_luns(std::span<const uint8_t> cdb, std::span<const uint16_t> luns, uint32_t buffer,
                                  std::span<uint8_t> out);

}  // namespace enlighten::scsi
