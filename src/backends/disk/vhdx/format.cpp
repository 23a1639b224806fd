#include "backends/disk/vhdx/format.hpp"

#include <fcntl.h>
#include <sys/random.h>

#include <cstdlib>
#include <random>

#include <fmt/format.h>

namespace enlighten::disk::vhdx {

namespace {

constexpr std::array<uint32_t, 256> make_crc_table() {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        t[i] = c;
    }
    return t;
}
constexpr auto kCrcTable = make_crc_table();

int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc) {
    crc = ~crc;
    for (uint8_t b : data) crc = kCrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint32_t checksum(std::span<const uint8_t> b, size_t field) {
    static constexpr std::array<uint8_t, 4> kZero{};
    uint32_t crc = crc32c(b.subspan(0, field));
    crc = crc32c(kZero, crc);
    return crc32c(b.subspan(field + 4), crc);
}

void seal(std::span<uint8_t> b, size_t field) { put<uint32_t>(b, field, checksum(b, field)); }

std::string Guid::str() const {
    // Data1..Data3 little-endian, Data4 as stored.
    return fmt::format("{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", get<uint32_t>(b, 0),
                       get<uint16_t>(b, 4), get<uint16_t>(b, 6), b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

bool Guid::parse(std::string_view s, Guid& out) {
    if (s.size() == 38 && s.front() == '{' && s.back() == '}') s = s.substr(1, 36);
    if (s.size() != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') return false;
    std::array<uint8_t, 16> be{};  // canonical order
    size_t n = 0;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i == 8 || i == 13 || i == 18 || i == 23) continue;
        const int h = hex(s[i]), l = i + 1 < s.size() ? hex(s[i + 1]) : -1;
        if (h < 0 || l < 0) return false;
        be[n++] = static_cast<uint8_t>(h * 16 + l);
        ++i;
    }
    if (n != 16) return false;
    Guid g;
    const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    for (size_t i = 0; i < 16; ++i) g.b[i] = be[static_cast<size_t>(order[i])];
    out = g;
    return true;
}

Guid Guid::random() {
    Guid g;
    if (::getrandom(g.b.data(), g.b.size(), 0) != static_cast<ssize_t>(g.b.size())) {
        std::random_device rd;
        for (auto& x : g.b) x = static_cast<uint8_t>(rd());
    }
    g.b[7] = static_cast<uint8_t>((g.b[7] & 0x0F) | 0x40);  // version 4 (Data3's high nibble)
    g.b[8] = static_cast<uint8_t>((g.b[8] & 0x3F) | 0x80);  // variant
    return g;
}

namespace {
// FNV-1a (64 bit) from a given basis, and SplitMix64's finaliser: a seed's bits spread over
// two keys, and each GUID from a key and a counter. Not cryptographic: a seed is no secret.
uint64_t fnv1a(std::string_view s, uint64_t h) {
    for (const char c : s) {
        h ^= static_cast<uint8_t>(c);
        h *= 0x100000001b3ULL;
    }
    return h;
}
uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
}  // namespace

GuidSource::GuidSource(std::string_view seed)
    : seeded_(true), key_{fnv1a(seed, 0xcbf29ce484222325ULL), mix(fnv1a(seed, 0x84222325cbf29ce4ULL))} {}

Guid GuidSource::next() {
    if (!seeded_) return Guid::random();
    ++count_;
    const uint64_t lo = mix(key_[0] + count_ * 0x9e3779b97f4a7c15ULL);
    const uint64_t hi = mix(key_[1] ^ mix(count_));
    Guid g;
    std::memcpy(g.b.data(), &lo, 8);
    std::memcpy(g.b.data() + 8, &hi, 8);
    g.b[7] = static_cast<uint8_t>((g.b[7] & 0x0F) | 0x40);  // the layout of a version 4 GUID
    g.b[8] = static_cast<uint8_t>((g.b[8] & 0x3F) | 0x80);
    return g;
}

Guid guid(std::string_view canonical) {
    Guid g;
    if (!Guid::parse(canonical, g)) std::abort();
    return g;
}

const Guid kBatRegion = guid("2DC27766-F623-4200-9D64-115E9BFD4A08");
const Guid kMetadataRegion = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");
const Guid kFileParameters = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B");
const Guid kVirtualDiskSize = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8");
const Guid kPage83 = guid("BECA12AB-B2E6-4523-93EF-C309E000C746");
const Guid kLogicalSectorSize = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F");
const Guid kPhysicalSectorSize = guid("CDA348C7-445D-4471-9CC9-E9885251C556");
const Guid kParentLocatorItem = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C");
const Guid kVhdxParentLocatorType = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913");

}  // namespace enlighten::disk::vhdx
