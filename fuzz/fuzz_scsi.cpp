// Fuzzes the SCSI disk and DVD targets (devices/scsi) with what a guest controls, the CDB
// (any length up to the SRB's 16 bytes), the buffer size and the data-out (UNMAP parameter
// lists, MODE SELECT pages), against any DiskParams, valid or not. Traps if an answer is
// longer than `out` or the guest's buffer, if a Read/Write/Flush/Unmap range leaves the
// capacity (or wraps), or if a write reaches a read-only device.
#include <cstdint>
#include <string>
#include <vector>

#include "devices/scsi/scsi.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::scsi;

namespace {

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

bool in_capacity(const DiskParams& p, uint64_t lba, uint64_t blocks) { return lba <= p.blocks && blocks <= p.blocks - lba; }

// `buffer`: the guest's buffer, or for finish_*() the data-out handed over.
void check_answer(const Command& c, uint32_t buffer, size_t out_size, bool immediate = true) {
    CHECK(c.data_in <= out_size);
    CHECK(c.data_in <= buffer);
    CHECK(c.bytes <= buffer);
    if (c.kind == Command::Kind::Done) {
        CHECK(!immediate || c.bytes == c.data_in);
        CHECK(c.status == kGood || c.status == kCheckCondition);
        CHECK((c.status == kGood) == (c.sense == Sense{}));
    } else {
        CHECK(c.data_in == 0);
    }
}

// The parameter list's ranges, as finish_data_out()/finish_unmap() hand them over.
void check_ranges(const DiskParams& p, const Command& c, const std::vector<UnmapRange>& ranges) {
    if (c.kind != Command::Kind::Unmap) {
        CHECK(c.kind == Command::Kind::Done);
        CHECK(ranges.empty());
        return;
    }
    CHECK(!ranges.empty() && ranges.size() <= p.max_unmap_descriptors);
    CHECK(p.discard && !p.read_only && !p.cdrom);
    uint64_t total = 0;
    for (const auto& r : ranges) {
        CHECK(r.blocks != 0 && in_capacity(p, r.lba, r.blocks));
        total += r.blocks;
    }
    CHECK(p.max_unmap_blocks == 0 || total <= p.max_unmap_blocks);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    DiskParams p;
    const auto flags = in.take<uint8_t>();
    const auto shape = in.take<uint8_t>();
    p.read_only = flags & 0x01;
    p.write_cache = flags & 0x02;
    p.fua = flags & 0x04;
    p.discard = flags & 0x08;
    p.discard_zeroes = flags & 0x10;
    p.non_rotational = flags & 0x20;
    p.cdrom = flags & 0x40;
    const auto blocks = in.take<uint64_t>();
    p.blocks = shape & 0x08 ? blocks % 4096 : blocks;  // small disks reach the end with small LBAs
    const auto raw_block = in.take<uint32_t>();
    constexpr uint32_t kSizes[] = {512, 1024, 2048, 4096};
    p.block_size = shape & 0x04 ? raw_block : kSizes[shape & 0x03];
    const auto raw_physical = in.take<uint32_t>();
    p.physical_block_size = shape & 0x10 ? raw_physical : p.block_size << (raw_physical % 4);
    p.max_transfer_blocks = in.take<uint32_t>();
    p.max_unmap_blocks = in.take<uint32_t>();
    p.max_unmap_descriptors = in.take<uint16_t>();
    p.unmap_granularity_blocks = in.take<uint32_t>();
    p.naa_id = in.take<uint64_t>();
    const auto serial = in.take_bytes(in.take<uint8_t>());
    p.serial.assign(serial.begin(), serial.end());
    if (flags & 0x80) p.vendor.assign(300, 'v');  // strings too long for their fields
    const auto raw_buffer = in.take<uint32_t>();
    const uint32_t buffer = shape & 0x20 ? raw_buffer % 70000 : raw_buffer;
    std::vector<uint8_t> out(in.take<uint16_t>() % 8192U);
    const auto cdb = in.take_bytes(in.take<uint8_t>() % 17U);

    const Command c = decode(p, cdb, buffer, out);
    check_answer(c, buffer, out.size());
    switch (c.kind) {
        case Command::Kind::Done: break;
        case Command::Kind::Read:
        case Command::Kind::Write:
            CHECK(c.blocks != 0 && in_capacity(p, c.lba, c.blocks));
            CHECK(uint64_t{c.blocks} * p.block_size == c.bytes);
            CHECK(p.max_transfer_blocks == 0 || c.blocks <= p.max_transfer_blocks);
            if (c.kind == Command::Kind::Write) CHECK(!p.read_only && !p.cdrom);
            break;
        case Command::Kind::Flush:
            CHECK(in_capacity(p, c.lba, c.blocks) && !p.read_only && !p.cdrom);
            break;
        case Command::Kind::Unmap:
            CHECK(c.blocks != 0 && in_capacity(p, c.lba, c.blocks));
            CHECK(p.discard && !p.read_only && !p.cdrom);
            break;
        case Command::Kind::DataOut: {
            CHECK(c.data_out != 0 && c.data_out <= buffer);
            std::vector<UnmapRange> ranges;
            const auto data_out = in.take_bytes(c.data_out);
            const Command f = finish_data_out(p, cdb, data_out, ranges);
            check_answer(f, static_cast<uint32_t>(data_out.size()), 0, false);
            check_ranges(p, f, ranges);
            break;
        }
    }

    // UNMAP parameter lists straight in, and the target-level answers with the same CDB.
    std::vector<UnmapRange> ranges;
    const auto list = in.take_bytes(in.take<uint16_t>());
    const Command u = finish_unmap(p, list, ranges);
    check_answer(u, static_cast<uint32_t>(list.size()), 0, false);
    check_ranges(p, u, ranges);
    check_answer(absent_lun(cdb, buffer, out), buffer, out.size());
    std::vector<uint16_t> luns(in.take<uint8_t>());
    for (auto& l : luns) l = in.take<uint16_t>();
    check_answer(report_luns(cdb, luns, buffer, out), buffer, out.size());
    (void)fixed_sense(c.sense);
    return 0;
}
