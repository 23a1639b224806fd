// Host-side decompression of a bzImage's kernel, so the guest starts in the kernel proper
// instead of running the bzImage's decompressor (the approach Firecracker and Cloud
// Hypervisor take with an uncompressed vmlinux, applied to the bzImage that distributions
// ship). The bzImage payload (setup header fields payload_offset/payload_length) is a
// compressed ELF vmlinux followed by its decompressed size as 4 little-endian bytes
// (scripts/Makefile.lib, size_append). We stream it through the library made for its format
// (liblz4, zlib, libzstd, liblzma) in bounded pieces, check the ELF headers, and copy the
// PT_LOAD segments straight to their physical addresses in guest memory; the vCPU then
// enters at the ELF entry point (startup_64) with boot_params in RSI, as the decompressor
// would leave it.
//
// What the guest loses: the decompressor's KASLR (the kernel runs at its link address).
// Formats we do not decompress (bzip2, lzma, lzo) fall back to the guest's decompressor.
// Integrity: gzip and xz streams carry a CRC that is checked; LZ4 legacy has none (and
// zstd's is optional), so a corrupt kernel of those formats may boot garbage, exactly as
// with the guest's own decompressor. Either way nothing is written outside the segments.
//
// Pure data in, data out: the kernel file is untrusted input and fuzz/fuzz_vmlinux.cpp
// drives these functions directly.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace enlighten::boot {

enum class Compression { Lz4, Gzip, Zstd, Xz };

std::string_view compression_name(Compression c);

// The compression of a payload from its first bytes; nullopt for formats we leave to the guest.
std::optional<Compression> detect_compression(std::span<const uint8_t> payload_head);

// The decompressed size a payload states in its 4-byte trailer.
Result<uint64_t> payload_decompressed_size(std::span<const uint8_t> payload);

// Receives the decompressed bytes in order, in pieces of at most a few MiB.
using ByteSink = std::function<Result<>(std::span<const uint8_t>)>;

// The most memory liblzma may use for an xz payload (a kernel's 32 MiB dictionary fits).
inline constexpr uint64_t kXzMemoryLimit = 64ULL << 20;

// Decompresses a whole bzImage payload (including its trailer) into `sink`. The data must
// decompress to exactly the stated size, which must be at most `max_size`; nothing beyond
// the stated size reaches the sink.
Result<> decompress_payload(std::span<const uint8_t> payload, Compression c, uint64_t max_size, const ByteSink& sink);

class VmlinuxWriter;

// The output size of every block of an LZ4 legacy stream but the last (`lz4 -l`, what the
// kernel build writes).
inline constexpr size_t kLz4LegacyBlock = 8 << 20;

// Reads `out.size()` bytes at `offset` of a payload (the file, or memory); called from
// several threads at once.
using PayloadReader = std::function<Result<>(uint64_t offset, std::span<uint8_t> out)>;

// An LZ4 legacy payload's blocks are independent, so they can be decompressed at once: block 0
// (it holds the ELF headers) first, then the others on up to `threads` threads (the calling
// one included), each reading its own compressed block through `read` (so the payload is
// never in memory as a whole, and reading overlaps decompression). A block whose bytes all
// lie in one segment's file data is decompressed straight into guest memory, with no copy;
// the others go through a scratch buffer. Every block but the last must decompress to
// exactly `block` bytes, as `lz4 -l` writes them; a stream laid out otherwise (still valid
// for the streaming decompress_payload) is an error here, and the caller streams it instead.
// `payload_size` includes the 4-byte size trailer; the same size rules as decompress_payload.
// The writer must be fresh, and is complete (finish()) on success.
Result<> decompress_lz4_parallel(const PayloadReader& read, uint64_t payload_size, uint64_t max_size,
                                 VmlinuxWriter& writer, unsigned threads, size_t block = kLz4LegacyBlock);
// The same for a payload in memory.
Result<> decompress_lz4_parallel(std::span<const uint8_t> payload, uint64_t max_size, VmlinuxWriter& writer,
                                 unsigned threads, size_t block = kLz4LegacyBlock);

struct ElfSegment {
    uint64_t paddr = 0;
    uint64_t offset = 0;  // in the ELF file
    uint64_t file_size = 0;
    uint64_t mem_size = 0;
};

struct VmlinuxLayout {
    uint64_t entry = 0;  // physical
    std::vector<ElfSegment> segments;  // PT_LOAD, sorted by paddr
};

// Checks the headers of an x86-64 ELF executable of `file_size` bytes, of which `head` holds
// the first ones (the program header table must lie inside `head`): every PT_LOAD segment
// lies inside the file and, by physical address, in [load_min, load_end), segments do not
// overlap, and the entry point is inside one of them.
Result<VmlinuxLayout> parse_vmlinux_headers(std::span<const uint8_t> head, uint64_t file_size, uint64_t load_min,
                                            uint64_t load_end);

// Places a vmlinux that arrives in pieces (a ByteSink) into memory: the headers are parsed
// once the first bytes are in, then every piece is copied to where its segments go.
// `memory(paddr, size)` returns the host address of that physical range, or nullptr.
class VmlinuxWriter {
public:
    using MemoryMap = std::function<uint8_t*(uint64_t paddr, uint64_t size)>;
    VmlinuxWriter(uint64_t file_size, uint64_t load_min, uint64_t load_end, MemoryMap memory);

    Result<> write(std::span<const uint8_t> bytes);

    // For writers that fill the file out of order (decompress_lz4_parallel), once write() has
    // taken the headers; each file byte must arrive exactly once. Thread-safe with each other.
    // Copies bytes at `file_offset` of the file to where the segments want them.
    Result<> write_at(uint64_t file_offset, std::span<const uint8_t> bytes);
    // Where [file_offset, +size) of the file goes when it lies inside one segment's file
    // data, or nullptr; whoever fills it there then calls wrote_directly(size).
    uint8_t* direct(uint64_t file_offset, uint64_t size) const;
    void wrote_directly(uint64_t size) { received_ += size; }
    // The headers are in (write() has taken enough bytes).
    [[nodiscard]] bool has_headers() const { return layout_.has_value(); }

    // All bytes arrived: zeroes what the segments have beyond their file data (.bss) and
    // returns the entry point.
    Result<uint64_t> finish();

private:
    Result<> place(uint64_t file_offset, std::span<const uint8_t> bytes);

    uint64_t file_size_;
    uint64_t load_min_;
    uint64_t load_end_;
    MemoryMap memory_;
    std::atomic<uint64_t> received_ = 0;
    std::vector<uint8_t> head_;  // the first bytes, until the headers are parsed
    std::optional<VmlinuxLayout> layout_;
};

}  // namespace enlighten::boot
