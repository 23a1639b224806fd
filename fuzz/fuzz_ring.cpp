// Fuzzes the ring buffers: the guest controls every byte of both rings (indices, interrupt
// mask, pending_send_sz, packet descriptors and data).
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/log.hpp"

#include "fuzz_input.hpp"
#include "vmbus/ring.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    constexpr size_t kPages = 4;  // header + 3 data pages per ring
    constexpr uint32_t kData = (kPages - 1) * kPageSize;
    std::vector<uint8_t> ram(2 * kPages * kPageSize);
    // The guest's view, built from a compact input: a raw image of the 32 KiB of rings would
    // be past libFuzzer's default -max_len (4 KiB) and the reader would never see a packet.
    // A ring header's fields (indices near the data or anywhere at all), then runs of bytes
    // at chosen places of a ring's data.
    auto index = [&] {
        const uint8_t how = in.take<uint8_t>();
        return how & 1 ? in.take<uint32_t>() : (uint32_t{in.take<uint16_t>()} % kData) & ~(how & 2 ? 0U : 7U);
    };
    auto header = [&](size_t base) {
        const uint32_t fields[4] = {index(), index(), in.take<uint8_t>() & 1U, in.take<uint16_t>()};
        std::memcpy(ram.data() + base + kRingWriteIndex, &fields[0], 4);
        std::memcpy(ram.data() + base + kRingReadIndex, &fields[1], 4);
        std::memcpy(ram.data() + base + kRingInterruptMask, &fields[2], 4);
        std::memcpy(ram.data() + base + kRingPendingSendSize, &fields[3], 4);
        const uint32_t features = in.take<uint8_t>() & kRingFeaturePendingSendSize;
        std::memcpy(ram.data() + base + kRingFeatureBits, &features, 4);
    };
    auto data_runs = [&](size_t base) {
        for (int runs = in.take<uint8_t>() % 4; runs >= 0 && !in.empty(); --runs) {
            size_t at = in.take<uint16_t>() % kData;
            for (uint8_t b : in.take_bytes(in.take<uint16_t>() % 4096U)) {
                ram[base + kPageSize + at] = b;
                at = (at + 1) % kData;
            }
        }
    };
    header(0);
    header(kPages * kPageSize);
    data_runs(0);
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    std::vector<uint64_t> in_pfns, out_pfns;
    for (uint64_t i = 0; i < kPages; ++i) {
        in_pfns.push_back(i);
        out_pfns.push_back(kPages + (kPages - 1 - i) % kPages);  // scattered pages
    }
    out_pfns[0] = kPages;  // header first
    auto in_mem = RingMemory::map(mem, in_pfns);
    auto out_mem = RingMemory::map(mem, out_pfns);
    if (!in_mem || !out_mem) __builtin_trap();
    InRing reader(std::move(*in_mem));
    OutRing writer(std::move(*out_mem));
    std::vector<uint64_t> buf;
    PacketScratch scratch;
    // Bounded: at most one packet per 24 bytes of ring, plus a few rounds of new guest data.
    for (int round = 0; round < 4 && !in.empty(); ++round) {
        for (int i = 0; i < 1024; ++i) {
            const uint32_t max_len = in.take<uint16_t>() % 16384U + 1U;
            auto got = reader.peek(buf, max_len);
            if (!got || !*got) break;
            const uint32_t len = (*got)->len;
            // What was accepted is self-consistent, and parses (or is refused) without harm.
            PacketDescriptor d;
            std::memcpy(&d, buf.data(), sizeof(d));
            if (len != d.len8 * 8u || len % 8 != 0 || len < sizeof(d)) __builtin_trap();
            if (!(*got)->bad.empty()) {
                // dropped whole: only its descriptor was copied, and it is wrong in itself
                if (d.offset8 * 8u >= sizeof(d) && d.offset8 * 8u <= len && len <= max_len) __builtin_trap();
                reader.skip(len);
                reader.commit();
                continue;
            }
            if (d.offset8 * 8u > len || len > max_len) __builtin_trap();
            if (auto v = parse_packet(std::span<const uint64_t>(buf.data(), len / 8), scratch)) {
                if (v->payload.size() + d.offset8 * 8u != len) __builtin_trap();
                for (const auto& r : v->gpa_ranges)
                    if (r.byte_offset >= kPageSize || r.pfns.size() * kPageSize < uint64_t{r.byte_offset} + r.byte_count)
                        __builtin_trap();
            }
            reader.skip(len);
            reader.commit();
        }
        reader.set_interrupt_mask(in.take<uint8_t>() & 1);
        (void)reader.has_data();
        const auto payload = in.take_bytes(in.take<uint16_t>() % 13000U);
        const iovec iov = iov_of(payload);
        const XferRange ranges[2] = {{1, 2}, {3, 4}};
        const auto pkt = in.take<uint8_t>() & 2 ? OutPacket::xfer_pages(1, 7, ranges, std::span(&iov, 1))
                                                  : OutPacket::inband(1, std::span(&iov, 1));
        (void)writer.write(pkt, in.take<uint8_t>() & 1);
        // The guest moves the indices, sets its flags and writes more packets.
        header(round % 2 ? kPages * kPageSize : 0);
        data_runs(0);
    }
    return 0;
}
