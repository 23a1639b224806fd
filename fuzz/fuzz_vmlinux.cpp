// Fuzzes host-side kernel decompression (a kernel file is user input): the payload
// decoders of every format we accept, the ELF header checks, and the writer that places
// segments in guest memory (streamed, and for LZ4 also block-parallel). The first byte
// picks the format.
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "platform/boot/vmlinux.hpp"

namespace {
constexpr uint64_t kBase = 0x1000000;
constexpr uint64_t kArea = 1 << 20;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace enlighten::boot;
    if (size < 1) return 0;
    const auto input = std::span(data + 1, size - 1);
    static std::vector<uint8_t> area(kArea);
    auto map = [](uint64_t gpa, uint64_t len) -> uint8_t* {
        if (gpa < kBase || gpa - kBase > kArea || kArea - (gpa - kBase) < len) return nullptr;
        return area.data() + (gpa - kBase);
    };
    if (data[0] >= 4) {  // the headers alone, as if decompressed
        auto layout = parse_vmlinux_headers(input, input.size(), kBase, kBase + kArea);
        if (layout)
            for (const auto& s : layout->segments)
                if (s.paddr < kBase || s.paddr + s.mem_size > kBase + kArea || s.file_size > s.mem_size) __builtin_trap();
        VmlinuxWriter w(input.size(), kBase, kBase + kArea, map);
        if (w.write(input)) (void)w.finish();
        return 0;
    }
    const auto c = static_cast<Compression>(data[0]);
    auto stated = payload_decompressed_size(input);
    // Keep each run small: the area holds 1 MiB, so larger outputs only fail later.
    constexpr uint64_t kMax = 2u << 20;
    if (!stated || *stated > kMax) return 0;
    VmlinuxWriter w(*stated, kBase, kBase + kArea, map);
    uint64_t seen = 0;
    auto ok = decompress_payload(input, c, kMax, [&](std::span<const uint8_t> piece) {
        seen += piece.size();
        return w.write(piece);
    });
    if (ok && seen != *stated) __builtin_trap();  // success means exactly the stated size
    if (ok) (void)w.finish();
    if (c == Compression::Lz4) {  // the block-parallel path, with small blocks and 3 threads
        VmlinuxWriter pw(*stated, kBase, kBase + kArea, map);
        if (decompress_lz4_parallel(input, kMax, pw, 3, 0x1000)) {
            if (!pw.finish()) __builtin_trap();  // success means every byte arrived
        }
    }
    return 0;
}
