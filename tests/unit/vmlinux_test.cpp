// Host-side kernel decompression: every format the kernel build uses for bzImage payloads,
// round-tripped through the real libraries, and the ELF checks on hostile headers.
#include <elf.h>
#include <gtest/gtest.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <map>

#include "platform/boot/vmlinux.hpp"
#include "support/fake_vmlinux.hpp"

namespace enlighten::boot {
namespace {

constexpr uint64_t kBase = 0x1000000;
constexpr uint64_t kArea = 4 << 20;

// A small vmlinux: ELF header, two PT_LOAD segments (the second with .bss), like the kernel's.
struct FakeElf {
    std::vector<uint8_t> bytes;
    std::vector<uint8_t> text, data;
    uint64_t bss = 0x3000;
};

FakeElf make_elf(uint64_t entry = kBase) {
    FakeElf f;
    f.text.resize(0x5000);
    f.data.resize(0x2345);
    for (size_t i = 0; i < f.text.size(); ++i) f.text[i] = static_cast<uint8_t>(i * 7 + 1);
    for (size_t i = 0; i < f.data.size(); ++i) f.data[i] = static_cast<uint8_t>(i * 13 + 5);
    const uint64_t text_off = 0x1000, data_off = 0x6000;
    f.bytes.resize(data_off + f.data.size());
    const Elf64_Phdr ph[3] = {
        {PT_LOAD, PF_R | PF_X, text_off, 0xffffffff81000000, kBase, f.text.size(), f.text.size(), 0x200000},
        {PT_NOTE, PF_R, text_off, 0, 0, 16, 16, 4},
        {PT_LOAD, PF_R | PF_W, data_off, 0xffffffff81200000, kBase + 0x200000, f.data.size(), f.data.size() + f.bss,
         0x200000},
    };
    test::write_elf_headers(f.bytes, entry, ph);
    std::memcpy(f.bytes.data() + text_off, f.text.data(), f.text.size());
    std::memcpy(f.bytes.data() + data_off, f.data.data(), f.data.size());
    return f;
}

void append_size(std::vector<uint8_t>& v, uint32_t size) { test::append_le32(v, size); }

// Compressed as the kernel build does (scripts/Makefile.lib), with the size trailer.
std::vector<uint8_t> compress(const std::vector<uint8_t>& in, Compression c, size_t lz4_block = 8 << 20) {
    std::vector<uint8_t> out;
    switch (c) {
        case Compression::Lz4:
            out = test::lz4_legacy(in, lz4_block);
            break;
        case Compression::Gzip: {
            z_stream z{};
            EXPECT_EQ(deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
            out.resize(deflateBound(&z, in.size()));
            z.next_in = const_cast<Bytef*>(in.data());
            z.avail_in = static_cast<uInt>(in.size());
            z.next_out = out.data();
            z.avail_out = static_cast<uInt>(out.size());
            EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
            out.resize(z.total_out);
            deflateEnd(&z);
            break;
        }
        case Compression::Zstd:
            out.resize(ZSTD_compressBound(in.size()));
            out.resize(ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 19));
            break;
        case Compression::Xz: {
            out.resize(in.size() + 4096);
            size_t pos = 0;
            EXPECT_EQ(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, nullptr, in.data(), in.size(), out.data(), &pos,
                                              out.size()),
                      LZMA_OK);
            out.resize(pos);
            break;
        }
    }
    append_size(out, static_cast<uint32_t>(in.size()));
    return out;
}

// Guest memory for the kernel's area.
struct Area {
    std::vector<uint8_t> bytes = std::vector<uint8_t>(kArea, 0xcc);
    uint8_t* map(uint64_t gpa, uint64_t size) {
        if (gpa < kBase || gpa - kBase > bytes.size() || bytes.size() - (gpa - kBase) < size) return nullptr;
        return bytes.data() + (gpa - kBase);
    }
};

Result<uint64_t> load(const std::vector<uint8_t>& payload, Compression c, Area& area, uint64_t max = kArea) {
    ENL_TRY(const uint64_t size, payload_decompressed_size(payload));
    VmlinuxWriter w(size, kBase, kBase + kArea, [&area](uint64_t g, uint64_t s) { return area.map(g, s); });
    ENL_TRY_VOID(decompress_payload(payload, c, max, [&w](std::span<const uint8_t> p) { return w.write(p); }));
    return w.finish();
}

class EveryFormat : public ::testing::TestWithParam<Compression> {};

TEST_P(EveryFormat, DetectsDecompressesAndPlacesSegments) {
    const FakeElf elf = make_elf(kBase + 0x10);
    const auto payload = compress(elf.bytes, GetParam());
    ASSERT_EQ(detect_compression(payload), GetParam());
    Area area;
    auto entry = load(payload, GetParam(), area);
    ASSERT_TRUE(entry) << entry.error().message();
    EXPECT_EQ(*entry, kBase + 0x10);
    EXPECT_EQ(0, std::memcmp(area.bytes.data(), elf.text.data(), elf.text.size()));
    EXPECT_EQ(0, std::memcmp(area.bytes.data() + 0x200000, elf.data.data(), elf.data.size()));
    for (uint64_t i = 0; i < elf.bss; ++i) ASSERT_EQ(area.bytes[0x200000 + elf.data.size() + i], 0) << i;
    // Nothing else was written.
    EXPECT_EQ(area.bytes[elf.text.size()], 0xcc);
    EXPECT_EQ(area.bytes[0x200000 + elf.data.size() + elf.bss], 0xcc);
}

TEST_P(EveryFormat, CorruptDataIsAnErrorNeverACrash) {
    const FakeElf elf = make_elf();
    const auto good = compress(elf.bytes, GetParam());
    // gzip and xz carry a CRC: corruption is always caught. LZ4 legacy (and zstd without
    // its optional checksum) may decode corrupt input into other bytes, as the guest's own
    // decompressor would; those must still land only inside the segments.
    const bool checked = GetParam() == Compression::Gzip || GetParam() == Compression::Xz;
    int refused = 0;
    // Flip bytes all over the compressed stream (not the magic, not the trailer).
    for (size_t at = 6; at + 4 < good.size(); at += std::max<size_t>(1, good.size() / 40)) {
        auto bad = good;
        bad[at] ^= 0x5a;
        Area area;
        auto r = load(bad, GetParam(), area);
        refused += r ? 0 : 1;
        if (r && checked) {
            EXPECT_EQ(0, std::memcmp(area.bytes.data(), elf.text.data(), elf.text.size())) << "flip at " << at;
        }
        EXPECT_EQ(area.bytes[elf.text.size()], 0xcc) << "flip at " << at;
        EXPECT_EQ(area.bytes[0x100000], 0xcc) << "flip at " << at;
        EXPECT_EQ(area.bytes[0x200000 + elf.data.size() + elf.bss], 0xcc) << "flip at " << at;
    }
    EXPECT_GT(refused, 0);
}

TEST_P(EveryFormat, TruncatedOrMislabelledStreamsAreRefused) {
    const FakeElf elf = make_elf();
    auto payload = compress(elf.bytes, GetParam());
    Area area;
    // Cut in the middle, keeping a trailer.
    auto cut = std::vector<uint8_t>(payload.begin(), payload.begin() + static_cast<ptrdiff_t>(payload.size() / 2));
    append_size(cut, static_cast<uint32_t>(elf.bytes.size()));
    EXPECT_FALSE(load(cut, GetParam(), area));
    // The trailer claims less, or more, than the stream holds.
    auto smaller = payload;
    smaller[smaller.size() - 4] ^= 0x01;
    EXPECT_FALSE(load(smaller, GetParam(), area));
    // More than fits.
    EXPECT_FALSE(load(payload, GetParam(), area, elf.bytes.size() - 1));
}

INSTANTIATE_TEST_SUITE_P(Vmlinux, EveryFormat,
                         ::testing::Values(Compression::Lz4, Compression::Gzip, Compression::Zstd, Compression::Xz),
                         [](const auto& p) { return std::string(compression_name(p.param)); });

TEST(Vmlinux, Lz4ConcatenatedStreamsAndSmallBlocks) {
    const FakeElf elf = make_elf();
    auto payload = compress(elf.bytes, Compression::Lz4, 0x1000);
    // A second legacy magic in the middle starts a new stream; the data continues.
    payload.insert(payload.begin() + 4, {0x02, 0x21, 0x4c, 0x18});
    Area area;
    auto entry = load(payload, Compression::Lz4, area);
    ASSERT_TRUE(entry) << entry.error().message();
    EXPECT_EQ(0, std::memcmp(area.bytes.data() + 0x200000, elf.data.data(), elf.data.size()));
}

// The block-parallel LZ4 path: blocks of 0x1000 bytes (as `lz4 -l` writes 8 MiB ones), so
// that the text segment holds whole blocks (decompressed in place) and others straddle.
Result<uint64_t> load_parallel(const std::vector<uint8_t>& payload, Area& area, unsigned threads,
                               uint64_t max = kArea, size_t block = 0x1000) {
    ENL_TRY(const uint64_t size, payload_decompressed_size(payload));
    VmlinuxWriter w(size, kBase, kBase + kArea, [&area](uint64_t g, uint64_t s) { return area.map(g, s); });
    ENL_TRY_VOID(decompress_lz4_parallel(payload, max, w, threads, block));
    return w.finish();
}

TEST(Vmlinux, Lz4BlocksDecompressInParallelToTheSameBytes) {
    const FakeElf elf = make_elf(kBase + 0x10);
    const auto payload = compress(elf.bytes, Compression::Lz4, 0x1000);
    Area serial;
    ASSERT_TRUE(load(payload, Compression::Lz4, serial));
    for (const unsigned threads : {1U, 2U, 3U, 8U, 64U}) {
        Area area;
        auto entry = load_parallel(payload, area, threads);
        ASSERT_TRUE(entry) << threads << ": " << entry.error().message();
        EXPECT_EQ(*entry, kBase + 0x10);
        EXPECT_EQ(area.bytes, serial.bytes) << threads << " threads";
    }
    // The only block is also the first.
    const auto one = compress(elf.bytes, Compression::Lz4, 0x10000);
    Area area;
    ASSERT_TRUE(load_parallel(one, area, 4, kArea, 0x10000));
    EXPECT_EQ(0, std::memcmp(area.bytes.data() + 0x200000, elf.data.data(), elf.data.size()));
}

TEST(Vmlinux, Lz4StreamsNotInWholeBlocksAreLeftToTheStreamingPath) {
    const FakeElf elf = make_elf();
    Area area;
    // Blocks of another size than the one expected, or a stream cut short: refused here (the
    // loader then streams it, which accepts any block size).
    EXPECT_FALSE(load_parallel(compress(elf.bytes, Compression::Lz4, 0x800), area, 2));
    EXPECT_FALSE(load_parallel(compress(elf.bytes, Compression::Lz4, 0x2000), area, 2));
    auto payload = compress(elf.bytes, Compression::Lz4, 0x1000);
    EXPECT_FALSE(load_parallel(payload, area, 2, elf.bytes.size() - 1));
    auto cut = std::vector<uint8_t>(payload.begin(), payload.begin() + static_cast<ptrdiff_t>(payload.size() / 2));
    append_size(cut, static_cast<uint32_t>(elf.bytes.size()));
    EXPECT_FALSE(load_parallel(cut, area, 2));
    auto gzip = compress(elf.bytes, Compression::Gzip);
    EXPECT_FALSE(load_parallel(gzip, area, 2));
}

TEST(Vmlinux, CorruptLz4BlocksInParallelAreAnErrorOrStayInsideTheSegments) {
    const FakeElf elf = make_elf();
    const auto good = compress(elf.bytes, Compression::Lz4, 0x1000);
    int refused = 0;
    for (size_t at = 6; at + 4 < good.size(); at += std::max<size_t>(1, good.size() / 60)) {
        auto bad = good;
        bad[at] ^= 0x5a;
        Area area;
        auto r = load_parallel(bad, area, 3);
        refused += r ? 0 : 1;
        EXPECT_EQ(area.bytes[elf.text.size()], 0xcc) << "flip at " << at;
        EXPECT_EQ(area.bytes[0x100000], 0xcc) << "flip at " << at;
        EXPECT_EQ(area.bytes[0x200000 + elf.data.size() + elf.bss], 0xcc) << "flip at " << at;
    }
    EXPECT_GT(refused, 0);
}

// Reliability review B6: liblzma was allowed 256 MiB while the code meant a kernel's 32 MiB
// dictionary. An xz payload whose block asks for a 128 MiB dictionary is now refused before
// any decoding, with the reason. (The stream is a small one with its LZMA2 dictionary byte
// rewritten, and the block header's CRC32 made again.)
TEST(Vmlinux, AnXzPayloadAskingForMoreMemoryThanAKernelsIsRefused) {
    std::vector<uint8_t> data(64 * 1024, 0x5a);
    auto payload = compress(data, Compression::Xz);
    // Stream header (12 bytes), then the block header: size byte, flags (one filter; the
    // sizes present or not), the sizes (varints), filter 0x21 (LZMA2), 1 property byte: the
    // dictionary size code.
    ASSERT_GT(payload.size(), 32u);
    const size_t block = 12, header_len = (size_t{payload[block]} + 1) * 4;
    const uint8_t flags = payload[block + 1];
    ASSERT_EQ(flags & 0x03, 0) << "one filter";
    size_t at = block + 2;
    for (const uint8_t present : {uint8_t{0x40}, uint8_t{0x80}})
        if (flags & present)
            while (payload[at++] & 0x80) {
            }
    ASSERT_EQ(payload[at], 0x21) << "LZMA2";
    ASSERT_EQ(payload[at + 1], 0x01);
    const size_t dict = at + 2;
    payload[dict] = 30;  // (2 | 0) << (30 / 2 + 11): 128 MiB
    const uint32_t crc = lzma_crc32(payload.data() + block, header_len - 4, 0);
    std::memcpy(payload.data() + block + header_len - 4, &crc, 4);
    auto r = decompress_payload(payload, Compression::Xz, data.size(), [](std::span<const uint8_t>) -> Result<> { return {}; });
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("MiB to decompress"), std::string::npos) << r.error().message();
    // The same stream with a kernel's 32 MiB dictionary decodes.
    payload[dict] = 26;
    const uint32_t crc2 = lzma_crc32(payload.data() + block, header_len - 4, 0);
    std::memcpy(payload.data() + block + header_len - 4, &crc2, 4);
    EXPECT_TRUE(decompress_payload(payload, Compression::Xz, data.size(), [](std::span<const uint8_t>) -> Result<> { return {}; }));
}

TEST(Vmlinux, UnknownFormatsAreLeftToTheGuest) {
    const std::vector<uint8_t> bzip2 = {'B', 'Z', 'h', '9', 0, 0};
    const std::vector<uint8_t> lzma = {0x5d, 0x00, 0x00, 0x80, 0x00, 0xff};
    EXPECT_FALSE(detect_compression(bzip2));
    EXPECT_FALSE(detect_compression(lzma));
    EXPECT_FALSE(detect_compression({}));
}

std::string header_error(const std::vector<uint8_t>& elf, uint64_t file_size = 0) {
    auto r = parse_vmlinux_headers(elf, file_size ? file_size : elf.size(), kBase, kBase + kArea);
    return r ? "" : r.error().message();
}

TEST(Vmlinux, HeaderChecks) {
    EXPECT_EQ(header_error(make_elf().bytes), "");
    EXPECT_NE(header_error(make_elf(kBase - 1).bytes).find("entry point"), std::string::npos);
    EXPECT_NE(header_error(make_elf(kBase + 0x200000 + 0x2345 + 1).bytes).find("entry point"), std::string::npos);

    auto notelf = make_elf().bytes;
    notelf[1] = 'X';
    EXPECT_NE(header_error(notelf).find("not an ELF"), std::string::npos);

    auto i386 = make_elf().bytes;
    reinterpret_cast<Elf64_Ehdr*>(i386.data())->e_machine = EM_386;
    EXPECT_NE(header_error(i386).find("x86-64"), std::string::npos);

    auto phnum = make_elf().bytes;
    reinterpret_cast<Elf64_Ehdr*>(phnum.data())->e_phnum = 0xffff;
    EXPECT_NE(header_error(phnum).find("program header"), std::string::npos);

    auto phoff = make_elf().bytes;
    reinterpret_cast<Elf64_Ehdr*>(phoff.data())->e_phoff = ~0ULL - 8;
    EXPECT_NE(header_error(phoff).find("program header"), std::string::npos);

    auto ph = [](std::vector<uint8_t>& v, int i) { return reinterpret_cast<Elf64_Phdr*>(v.data() + sizeof(Elf64_Ehdr)) + i; };
    auto outside = make_elf().bytes;
    ph(outside, 2)->p_paddr = kBase + kArea - 0x1000;  // .bss runs past the area
    EXPECT_NE(header_error(outside).find("outside the kernel's area"), std::string::npos);
    auto wrap = make_elf().bytes;
    ph(wrap, 2)->p_memsz = ~0ULL;
    EXPECT_NE(header_error(wrap).find("outside"), std::string::npos);
    auto below = make_elf().bytes;
    ph(below, 0)->p_paddr = 0x100000;
    EXPECT_NE(header_error(below).find("outside the kernel's area"), std::string::npos);
    auto overlap = make_elf().bytes;
    ph(overlap, 2)->p_paddr = kBase + 0x4000;
    EXPECT_NE(header_error(overlap).find("overlap"), std::string::npos);
    auto pastfile = make_elf().bytes;
    ph(pastfile, 2)->p_filesz = ph(pastfile, 2)->p_memsz;
    EXPECT_NE(header_error(pastfile).find("outside the file"), std::string::npos);
    auto filesz = make_elf().bytes;
    ph(filesz, 0)->p_filesz = ph(filesz, 0)->p_memsz + 1;
    EXPECT_NE(header_error(filesz).find("outside the file"), std::string::npos);
}

TEST(Vmlinux, WriterRefusesExtraAndMissingBytes) {
    const FakeElf elf = make_elf();
    Area area;
    auto map = [&area](uint64_t g, uint64_t s) { return area.map(g, s); };
    {
        VmlinuxWriter w(elf.bytes.size(), kBase, kBase + kArea, map);
        ASSERT_TRUE(w.write(elf.bytes));
        EXPECT_FALSE(w.write(std::span(elf.bytes).first(1)));
    }
    {
        VmlinuxWriter w(elf.bytes.size(), kBase, kBase + kArea, map);
        ASSERT_TRUE(w.write(std::span(elf.bytes).first(elf.bytes.size() - 1)));
        EXPECT_FALSE(w.finish());
    }
    {  // byte by byte is the same as all at once
        Area a2;
        VmlinuxWriter w(elf.bytes.size(), kBase, kBase + kArea, [&a2](uint64_t g, uint64_t s) { return a2.map(g, s); });
        for (uint8_t b : elf.bytes) ASSERT_TRUE(w.write(std::span(&b, 1)));
        ASSERT_TRUE(w.finish());
        EXPECT_EQ(0, std::memcmp(a2.bytes.data(), elf.text.data(), elf.text.size()));
        EXPECT_EQ(0, std::memcmp(a2.bytes.data() + 0x200000, elf.data.data(), elf.data.size()));
    }
    {  // memory that does not map is an error
        VmlinuxWriter w(elf.bytes.size(), kBase, kBase + kArea, [](uint64_t, uint64_t) -> uint8_t* { return nullptr; });
        EXPECT_FALSE(w.write(elf.bytes));
    }
}

}  // namespace
}  // namespace enlighten::boot
