// VHDX on-disk format: constants, little-endian field access, CRC-32C and GUIDs.
// Source: [MS-VHDX] (Microsoft Open Specifications) v1.0; the facts and their sources are in
// docs/vhdx.md. Structures are read and written as byte arrays through get/put at the
// documented offsets (no packed structs): every field offset below is the spec's.
// Threads: pure functions and constants, any thread; nothing blocks, no locks.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

namespace enlighten::disk::vhdx {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * 1024;
inline constexpr uint64_t kGiB = kMiB * 1024;
inline constexpr uint64_t kTiB = kGiB * 1024;

// File layout [S 2.2]: the first MiB.
inline constexpr uint64_t kHeader1 = 64 * kKiB;
inline constexpr uint64_t kHeader2 = 128 * kKiB;
inline constexpr uint64_t kRegion1 = 192 * kKiB;
inline constexpr uint64_t kRegion2 = 256 * kKiB;
inline constexpr uint64_t kHeaderSize = 4 * kKiB;      // checksummed bytes of a header
inline constexpr uint64_t kRegionSize = 64 * kKiB;     // checksummed bytes of a region table
inline constexpr uint64_t kMetaTableSize = 64 * kKiB;  // the metadata table at the region's start
inline constexpr uint64_t kPage = 4096;                // log sector, logged page
inline constexpr uint32_t kMaxEntries = 2047;          // region and metadata table entries
inline constexpr uint64_t kMaxLogLength = kGiB;        // ours (OpenVMM's bound)
inline constexpr uint64_t kMaxVirtualSize = 64 * kTiB;
inline constexpr uint64_t kMinBlock = kMiB, kMaxBlock = 256 * kMiB;
inline constexpr uint64_t kSectorBitmapBlock = kMiB;   // one sector bitmap block
inline constexpr uint64_t kBitmapSectors = uint64_t{1} << 23;  // sectors per chunk (bits in 1 MiB)

// Header fields [S 2.2.2].
namespace hdr {
inline constexpr size_t kSignature = 0, kChecksum = 4, kSequence = 8, kFileWriteGuid = 16, kDataWriteGuid = 32,
                        kLogGuid = 48, kLogVersion = 64, kVersion = 66, kLogLength = 68, kLogOffset = 72;
}
// Log entry header [S 2.3.1.1] and descriptors [S 2.3.1.2], [S 2.3.1.3].
namespace loge {
inline constexpr size_t kSignature = 0, kChecksum = 4, kEntryLength = 8, kTail = 12, kSequence = 16, kDescCount = 24,
                        kReserved = 28, kLogGuid = 32, kFlushedFileOffset = 48, kLastFileOffset = 56, kHeaderSize = 64,
                        kDescSize = 32;
inline constexpr size_t kDescFirstSector = (kPage - kHeaderSize) / kDescSize;  // 126
}

// BAT entry [S 2.5.1].
enum PayloadState : uint8_t {
    kNotPresent = 0,
    kUndefined = 1,
    kZero = 2,
    kUnmapped = 3,
    kFullyPresent = 6,
    kPartiallyPresent = 7,
};
enum BitmapState : uint8_t { kSbNotPresent = 0, kSbPresent = 6 };
inline constexpr uint64_t kBatStateMask = 7;
inline constexpr uint64_t kBatReservedMask = 0xFFFF8;  // bits 3..19
inline constexpr uint64_t kBatOffsetMask = ~uint64_t{0xFFFFF};
[[nodiscard]] constexpr uint8_t bat_state(uint64_t e) { return static_cast<uint8_t>(e & kBatStateMask); }
[[nodiscard]] constexpr uint64_t bat_offset(uint64_t e) { return e & kBatOffsetMask; }
[[nodiscard]] constexpr uint64_t bat_entry(uint8_t state, uint64_t offset) { return (offset & kBatOffsetMask) | state; }

// Little-endian fields in a byte buffer.
template <typename T>
[[nodiscard]] T get(std::span<const uint8_t> b, size_t off) {
    T v{};
    std::memcpy(&v, b.data() + off, sizeof(T));
    return v;  // x86: little-endian already
}
template <typename T>
void put(std::span<uint8_t> b, size_t off, T v) {
    std::memcpy(b.data() + off, &v, sizeof(T));
}
[[nodiscard]] inline bool sig_is(std::span<const uint8_t> b, size_t off, std::string_view sig) {
    return b.size() >= off + sig.size() && std::memcmp(b.data() + off, sig.data(), sig.size()) == 0;
}
inline void put_sig(std::span<uint8_t> b, size_t off, std::string_view sig) { std::memcpy(b.data() + off, sig.data(), sig.size()); }

// CRC-32C (Castagnoli), the ordinary init/final XOR 0xFFFFFFFF.
[[nodiscard]] uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0);
// The checksum of a structure whose 4-byte checksum field at `field` counts as zero.
[[nodiscard]] uint32_t checksum(std::span<const uint8_t> b, size_t field);
// Computes and stores it.
void seal(std::span<uint8_t> b, size_t field);

// A GUID in its on-disk (mixed-endian) bytes.
struct Guid {
    std::array<uint8_t, 16> b{};
    [[nodiscard]] bool zero() const { return b == std::array<uint8_t, 16>{}; }
    bool operator==(const Guid&) const = default;
    [[nodiscard]] static Guid read(std::span<const uint8_t> buf, size_t off) {
        Guid g;
        std::memcpy(g.b.data(), buf.data() + off, 16);
        return g;
    }
    void write(std::span<uint8_t> buf, size_t off) const { std::memcpy(buf.data() + off, b.data(), 16); }
    // "83ed0ec3-24c8-49a6-a959-5e4bf1288bfb" (lowercase, no braces).
    [[nodiscard]] std::string str() const;
    // Accepts the form above, with or without braces, any case. False if malformed.
    static bool parse(std::string_view s, Guid& out);
    [[nodiscard]] static Guid random();
};
[[nodiscard]] Guid guid(std::string_view canonical);  // for constants; aborts if malformed

// Where an image's new GUIDs (FileWriteGuid, DataWriteGuid, LogGuid, the disk's Page83 id)
// come from: random numbers (the default), or a seed, for reproducible builds: the same seed
// and the same steps give the same GUIDs, so the same file. Two different disks must never
// share a seed (their ids would be equal). Not thread-safe: one per Image.
class GuidSource {
public:
    GuidSource() = default;  // random
    explicit GuidSource(std::string_view seed);
    [[nodiscard]] Guid next();
    [[nodiscard]] bool seeded() const { return seeded_; }

private:
    bool seeded_ = false;
    uint64_t key_[2] = {0, 0};
    uint64_t count_ = 0;
};

// Region and metadata item GUIDs [S 2.2.3.2], [S 2.6.2].
extern const Guid kBatRegion, kMetadataRegion;
extern const Guid kFileParameters, kVirtualDiskSize, kPage83, kLogicalSectorSize, kPhysicalSectorSize,
    kParentLocatorItem, kVhdxParentLocatorType;

}  // namespace enlighten::disk::vhdx
