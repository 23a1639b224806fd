#include "platform/boot/vmlinux.hpp"

#include <elf.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

namespace enlighten::boot {

namespace {

constexpr size_t kChunk = 8 << 20;       // decompressed piece size (the LZ4 legacy block size)
constexpr size_t kHeadBytes = 64 << 10;  // the ELF and program headers must lie in this much

uint32_t load_le32(const uint8_t* p) {
    uint32_t v = 0;
    std::memcpy(&v, p, sizeof v);
    return v;
}

bool starts_with(std::span<const uint8_t> data, std::span<const uint8_t> magic) {
    return data.size() >= magic.size() && std::equal(magic.begin(), magic.end(), data.begin());
}

constexpr std::array<uint8_t, 4> kLz4LegacyMagic = {0x02, 0x21, 0x4c, 0x18};  // 0x184c2102 LE
constexpr std::array<uint8_t, 2> kGzipMagic = {0x1f, 0x8b};
constexpr std::array<uint8_t, 4> kZstdMagic = {0x28, 0xb5, 0x2f, 0xfd};
constexpr std::array<uint8_t, 6> kXzMagic = {0xfd, '7', 'z', 'X', 'Z', 0x00};

// The LZ4 legacy format (lz4 -l, what the kernel build uses): the magic, then independent
// blocks of [u32 compressed size][data], each decompressing to at most 8 MiB. A repeated
// magic starts another stream (concatenated archives), as the kernel's decompressor accepts.
struct Lz4Block {
    uint64_t at = 0;  // its data, in the payload (the size word is the 4 bytes before)
    uint32_t size = 0;
};

// The blocks of an LZ4 legacy stream of `end` bytes (without the size trailer), from its
// size words alone: each is checked, against what is left and against the largest block.
Result<std::vector<Lz4Block>> lz4_blocks(const PayloadReader& read, uint64_t end) {
    std::array<uint8_t, 4> word{};
    std::vector<Lz4Block> blocks;
    for (uint64_t pos = kLz4LegacyMagic.size(); pos < end;) {
        if (end - pos < 4) return fail("LZ4 data is truncated inside a block header");
        ENL_TRY_VOID(read(pos, word));
        const uint32_t chunk = load_le32(word.data());
        pos += 4;
        if (chunk == load_le32(kLz4LegacyMagic.data())) continue;
        if (chunk == 0 || chunk > end - pos || chunk > static_cast<uint32_t>(LZ4_compressBound(kChunk)))
            return fail("LZ4 block of {} bytes at offset {} is invalid", chunk, pos - 4);
        blocks.push_back({pos, chunk});
        pos += chunk;
    }
    return blocks;
}

PayloadReader memory_reader(std::span<const uint8_t> payload) {
    return [payload](uint64_t offset, std::span<uint8_t> out) -> Result<> {
        if (offset > payload.size() || out.size() > payload.size() - offset)
            return fail("reading beyond the payload's {} bytes", payload.size());
        std::memcpy(out.data(), payload.data() + offset, out.size());
        return {};
    };
}

// Decompresses one block's `data` into `out`; returns the bytes written, or an error when corrupt.
Result<size_t> unlz4_block(std::span<const uint8_t> data, uint64_t at, std::span<uint8_t> out) {
    const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(data.data()), reinterpret_cast<char*>(out.data()),
                                      static_cast<int>(data.size()), static_cast<int>(out.size()));
    if (n < 0) return fail("LZ4 data is corrupt (block at offset {})", at - 4);
    return static_cast<size_t>(n);
}

Result<> unlz4_legacy(std::span<const uint8_t> in, std::span<uint8_t> buf, const ByteSink& sink) {
    ENL_TRY(const auto blocks, lz4_blocks(memory_reader(in), in.size()));
    for (const Lz4Block& b : blocks) {
        ENL_TRY(const size_t n, unlz4_block(in.subspan(b.at, b.size), b.at, buf));
        ENL_TRY_VOID(sink(buf.first(n)));
    }
    return {};
}

// The decompressed size a payload of `payload_size` bytes states, checked against what fits.
Result<uint64_t> checked_size(uint64_t payload_size, uint64_t stated, uint64_t max_size) {
    if (payload_size > (1ULL << 31)) return fail("compressed kernel of {} bytes is implausible", payload_size);
    if (stated > max_size)
        return fail("compressed kernel states a decompressed size of {} bytes; at most {} fit", stated, max_size);
    return stated;
}

Result<> gunzip(std::span<const uint8_t> in, std::span<uint8_t> buf, const ByteSink& sink) {
    z_stream z{};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return fail("zlib: cannot initialise");
    const std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&z, inflateEnd);
    z.next_in = const_cast<Bytef*>(in.data());  // zlib's API is not const-correct
    z.avail_in = static_cast<uInt>(in.size());
    for (;;) {
        z.next_out = buf.data();
        z.avail_out = static_cast<uInt>(buf.size());
        const int rc = inflate(&z, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END)
            return fail("gzip data is corrupt or truncated ({})", z.msg ? z.msg : "zlib error " + std::to_string(rc));
        ENL_TRY_VOID(sink(buf.first(buf.size() - z.avail_out)));
        if (rc == Z_STREAM_END) return {};
    }
}

Result<> unzstd(std::span<const uint8_t> in, std::span<uint8_t> buf, const ByteSink& sink) {
    const std::unique_ptr<ZSTD_DStream, size_t (*)(ZSTD_DStream*)> ds(ZSTD_createDStream(), ZSTD_freeDStream);
    if (!ds) return fail("zstd: cannot initialise");
    ZSTD_inBuffer input{in.data(), in.size(), 0};
    size_t last = 0;
    while (input.pos < input.size || last != 0) {
        ZSTD_outBuffer output{buf.data(), buf.size(), 0};
        last = ZSTD_decompressStream(ds.get(), &output, &input);
        if (ZSTD_isError(last)) return fail("zstd data is corrupt: {}", ZSTD_getErrorName(last));
        if (output.pos == 0 && input.pos == input.size && last != 0) return fail("zstd data is truncated");
        ENL_TRY_VOID(sink(buf.first(output.pos)));
    }
    return {};
}

Result<> unxz(std::span<const uint8_t> in, std::span<uint8_t> buf, const ByteSink& sink) {
    lzma_stream s = LZMA_STREAM_INIT;
    // The kernel's xz streams use a 32 MiB dictionary at most (scripts/xz_wrap.sh), which
    // liblzma decodes in about 33 MiB: 64 MiB is room enough, and a kernel file asking for more
    // is refused rather than given up to 4 GiB (reliability review B6).
    if (lzma_stream_decoder(&s, kXzMemoryLimit, 0) != LZMA_OK) return fail("liblzma: cannot initialise");
    const std::unique_ptr<lzma_stream, void (*)(lzma_stream*)> guard(&s, lzma_end);
    s.next_in = in.data();
    s.avail_in = in.size();
    for (;;) {
        s.next_out = buf.data();
        s.avail_out = buf.size();
        const lzma_ret rc = lzma_code(&s, LZMA_FINISH);
        if (rc == LZMA_MEMLIMIT_ERROR)
            return fail("xz data needs {} MiB to decompress, more than the {} MiB a kernel's needs",
                        lzma_memusage(&s) >> 20, kXzMemoryLimit >> 20);
        if (rc != LZMA_OK && rc != LZMA_STREAM_END)
            return fail("xz data is corrupt or truncated (liblzma error {})", static_cast<int>(rc));
        ENL_TRY_VOID(sink(buf.first(buf.size() - s.avail_out)));
        if (rc == LZMA_STREAM_END) return {};
    }
}

}  // namespace

std::string_view compression_name(Compression c) {
    switch (c) {
        case Compression::Lz4: return "LZ4";
        case Compression::Gzip: return "gzip";
        case Compression::Zstd: return "zstd";
        case Compression::Xz: return "xz";
    }
    return "?";
}

std::optional<Compression> detect_compression(std::span<const uint8_t> head) {
    if (starts_with(head, kLz4LegacyMagic)) return Compression::Lz4;
    if (starts_with(head, kGzipMagic)) return Compression::Gzip;
    if (starts_with(head, kZstdMagic)) return Compression::Zstd;
    if (starts_with(head, kXzMagic)) return Compression::Xz;
    return std::nullopt;
}

Result<uint64_t> payload_decompressed_size(std::span<const uint8_t> payload) {
    if (payload.size() < 16) return fail("compressed kernel of {} bytes is too small", payload.size());
    return load_le32(payload.data() + payload.size() - 4);
}

Result<> decompress_payload(std::span<const uint8_t> payload, Compression c, uint64_t max_size, const ByteSink& sink) {
    ENL_TRY(const uint64_t stated, payload_decompressed_size(payload));
    ENL_TRY(const uint64_t size, checked_size(payload.size(), stated, max_size));
    const auto in = payload.first(payload.size() - 4);
    uint64_t total = 0;
    const ByteSink counted = [&](std::span<const uint8_t> piece) -> Result<> {
        if (piece.empty()) return {};
        if (piece.size() > size - total) return fail("{} kernel decompresses to more than the {} bytes its trailer says", compression_name(c), size);
        total += piece.size();
        return sink(piece);
    };
    // Not zeroed: every byte handed on is written first. No larger than the output (a kernel's
    // is larger than kChunk, a fuzzer's inputs are not).
    const size_t scratch_size = std::clamp<uint64_t>(size, 4096, kChunk);
    std::unique_ptr<uint8_t[]> buf(new uint8_t[scratch_size]);
    const std::span<uint8_t> scratch(buf.get(), scratch_size);
    Result<> done = [&]() -> Result<> {
        switch (c) {
            case Compression::Lz4: return unlz4_legacy(in, scratch, counted);
            case Compression::Gzip: return gunzip(in, scratch, counted);
            case Compression::Zstd: return unzstd(in, scratch, counted);
            case Compression::Xz: return unxz(in, scratch, counted);
        }
        return fail("unknown compression");
    }();
    if (!done) return done;
    if (total != size)
        return fail("{} kernel decompressed to {} bytes; its trailer says {}", compression_name(c), total, size);
    return {};
}

Result<> decompress_lz4_parallel(const PayloadReader& read, uint64_t payload_size, uint64_t max_size,
                                 VmlinuxWriter& writer, unsigned threads, size_t block) {
    if (payload_size < 16) return fail("compressed kernel of {} bytes is too small", payload_size);
    if (block == 0 || block > kChunk) return fail("LZ4 block size {} is out of range", block);
    std::array<uint8_t, 4> word{};
    ENL_TRY_VOID(read(payload_size - 4, word));
    ENL_TRY(const uint64_t size, checked_size(payload_size, load_le32(word.data()), max_size));
    ENL_TRY_VOID(read(0, word));
    if (word != kLz4LegacyMagic) return fail("not an LZ4 legacy stream");
    ENL_TRY(const auto blocks, lz4_blocks(read, payload_size - 4));
    const uint64_t n = blocks.size();
    if (n == 0 || (n - 1) * block >= size || n * block < size)
        return fail("{} LZ4 blocks do not hold {} bytes in blocks of {}", n, size, block);

    // Per thread: the compressed block read, and a scratch buffer for blocks not placed in one.
    struct Buffers {
        std::vector<uint8_t> in;
        std::unique_ptr<uint8_t[]> scratch;
    };
    // Block `k` covers [k * block, +its_size) of the file.
    const auto its_size = [&](uint64_t k) { return std::min<uint64_t>(block, size - k * block); };
    const auto decode = [&](uint64_t k, Buffers& buf) -> Result<> {
        const uint64_t at = k * block, want = its_size(k);
        buf.in.resize(blocks[k].size);
        ENL_TRY_VOID(read(blocks[k].at, buf.in));
        if (writer.has_headers()) {
            if (uint8_t* dst = writer.direct(at, want)) {
                ENL_TRY(const size_t got, unlz4_block(buf.in, blocks[k].at, std::span(dst, want)));
                if (got != want) return fail("LZ4 block {} holds {} bytes, not {}", k, got, want);
                writer.wrote_directly(want);
                return {};
            }
        }
        if (!buf.scratch) buf.scratch.reset(new uint8_t[block]);  // not zeroed: only what LZ4 wrote is handed on
        ENL_TRY(const size_t got, unlz4_block(buf.in, blocks[k].at, std::span(buf.scratch.get(), block)));
        if (got != want) return fail("LZ4 block {} holds {} bytes, not {}", k, got, want);
        const std::span<const uint8_t> bytes(buf.scratch.get(), got);
        return writer.has_headers() ? writer.write_at(at, bytes) : writer.write(bytes);
    };

    // In order until the headers are in (the first block, with a kernel's 8 MiB blocks): they
    // say where everything else goes.
    Buffers mine;
    uint64_t first = 0;
    while (first < n && !writer.has_headers()) ENL_TRY_VOID(decode(first++, mine));
    std::atomic<uint64_t> next = first;
    std::mutex error_lock;
    std::optional<Error> first_error;
    const auto work = [&](Buffers& buf) {
        for (uint64_t k = next++; k < n; k = next++) {
            if (auto r = decode(k, buf); !r) {
                const std::scoped_lock lock(error_lock);
                if (!first_error) first_error = r.error();
                next = n;  // the others stop at their next block
            }
        }
    };
    {
        std::vector<std::jthread> helpers;
        const uint64_t left = n - first;
        const uint64_t extra = left == 0 ? 0 : std::min<uint64_t>(std::max(threads, 1U), left) - 1;
        for (uint64_t i = 0; i < extra; ++i)
            helpers.emplace_back([&work] {
                Buffers theirs;
                work(theirs);
            });
        work(mine);
    }  // joined
    if (first_error) return std::unexpected(*first_error);
    return {};
}

Result<> decompress_lz4_parallel(std::span<const uint8_t> payload, uint64_t max_size, VmlinuxWriter& writer,
                                 unsigned threads, size_t block) {
    return decompress_lz4_parallel(memory_reader(payload), payload.size(), max_size, writer, threads, block);
}

Result<VmlinuxLayout> parse_vmlinux_headers(std::span<const uint8_t> head, uint64_t file_size, uint64_t load_min,
                                            uint64_t load_end) {
    Elf64_Ehdr eh{};
    if (head.size() < sizeof eh || file_size < head.size()) return fail("vmlinux: too small for an ELF header");
    std::memcpy(&eh, head.data(), sizeof eh);
    if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return fail("vmlinux: not an ELF file");
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_X86_64 ||
        eh.e_type != ET_EXEC)
        return fail("vmlinux: not an x86-64 ELF executable");
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64)
        return fail("vmlinux: bad program header table ({} entries of {} bytes)", eh.e_phnum, eh.e_phentsize);
    if (eh.e_phoff > head.size() || head.size() - eh.e_phoff < uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr))
        return fail("vmlinux: the program header table is not within the first {} bytes", head.size());

    VmlinuxLayout img;
    img.entry = eh.e_entry;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        Elf64_Phdr ph{};
        std::memcpy(&ph, head.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
        if (ph.p_filesz > ph.p_memsz || ph.p_offset > file_size || file_size - ph.p_offset < ph.p_filesz)
            return fail("vmlinux: segment {} lies outside the file", i);
        if (ph.p_paddr < load_min || ph.p_paddr > load_end || load_end - ph.p_paddr < ph.p_memsz)
            return fail("vmlinux: segment {} at {:#x}+{:#x} is outside the kernel's area {:#x}-{:#x}", i, ph.p_paddr,
                        ph.p_memsz, load_min, load_end);
        img.segments.push_back({ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz});
    }
    if (img.segments.empty()) return fail("vmlinux: no loadable segment");
    std::sort(img.segments.begin(), img.segments.end(), [](const auto& a, const auto& b) { return a.paddr < b.paddr; });
    for (size_t i = 1; i < img.segments.size(); ++i)
        if (img.segments[i - 1].paddr + img.segments[i - 1].mem_size > img.segments[i].paddr)
            return fail("vmlinux: segments overlap at {:#x}", img.segments[i].paddr);
    const bool entry_ok = std::any_of(img.segments.begin(), img.segments.end(), [&](const ElfSegment& s) {
        return img.entry >= s.paddr && img.entry - s.paddr < s.file_size;
    });
    if (!entry_ok) return fail("vmlinux: entry point {:#x} is not in a loaded segment", img.entry);
    return img;
}

VmlinuxWriter::VmlinuxWriter(uint64_t file_size, uint64_t load_min, uint64_t load_end, MemoryMap memory)
    : file_size_(file_size), load_min_(load_min), load_end_(load_end), memory_(std::move(memory)) {}

Result<> VmlinuxWriter::place(uint64_t file_offset, std::span<const uint8_t> bytes) {
    const uint64_t end = file_offset + bytes.size();
    for (const ElfSegment& s : layout_->segments) {
        const uint64_t from = std::max(file_offset, s.offset);
        const uint64_t to = std::min(end, s.offset + s.file_size);
        if (from >= to) continue;
        uint8_t* dst = memory_(s.paddr + (from - s.offset), to - from);
        if (!dst) return fail("vmlinux: segment at {:#x} is outside guest memory", s.paddr);
        std::memcpy(dst, bytes.data() + (from - file_offset), to - from);
    }
    return {};
}

Result<> VmlinuxWriter::write_at(uint64_t file_offset, std::span<const uint8_t> bytes) {
    if (!layout_) return fail("vmlinux: data before its headers");
    if (file_offset > file_size_ || bytes.size() > file_size_ - file_offset)
        return fail("vmlinux: data at {:#x}+{:#x} is beyond its stated size", file_offset, bytes.size());
    ENL_TRY_VOID(place(file_offset, bytes));
    received_ += bytes.size();
    return {};
}

uint8_t* VmlinuxWriter::direct(uint64_t file_offset, uint64_t size) const {
    if (!layout_ || size == 0) return nullptr;
    for (const ElfSegment& s : layout_->segments)
        if (file_offset >= s.offset && file_offset - s.offset <= s.file_size && s.file_size - (file_offset - s.offset) >= size)
            return memory_(s.paddr + (file_offset - s.offset), size);
    return nullptr;
}

Result<> VmlinuxWriter::write(std::span<const uint8_t> bytes) {
    if (bytes.size() > file_size_ - received_) return fail("vmlinux: more data than its stated size");
    const uint64_t offset = received_;
    received_ += bytes.size();
    if (layout_) return place(offset, bytes);
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kHeadBytes, file_size_));
    const size_t take = std::min(bytes.size(), want - head_.size());
    head_.insert(head_.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(take));
    if (head_.size() < want) return {};
    ENL_TRY(layout_, parse_vmlinux_headers(head_, file_size_, load_min_, load_end_));
    ENL_TRY_VOID(place(0, head_));
    head_ = {};
    return place(offset + take, bytes.subspan(take));
}

Result<uint64_t> VmlinuxWriter::finish() {
    if (!layout_ || received_ != file_size_) return fail("vmlinux: truncated ({} of {} bytes)", received_, file_size_);
    for (const ElfSegment& s : layout_->segments) {
        if (s.mem_size == s.file_size) continue;
        uint8_t* dst = memory_(s.paddr + s.file_size, s.mem_size - s.file_size);
        if (!dst) return fail("vmlinux: segment at {:#x} is outside guest memory", s.paddr);
        std::memset(dst, 0, s.mem_size - s.file_size);
    }
    return layout_->entry;
}

}  // namespace enlighten::boot
