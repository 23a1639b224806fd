// Fuzzes the software transmit offloads (backends/net/offload.hpp) with what a guest controls:
// the frame and its offload metadata (needs_csum, csum_start/offset, GSO type and size).
// Input: 1 byte of mode (bit 0 needs_csum, bits 1-2 GSO none/tcp4/tcp6, bit 3 "make the IP
// length match the frame" so that more inputs get past the length checks), gso_size,
// csum_start, csum_offset (u16 each, little-endian), then the frame.
// Traps if a completed checksum differs from a reference computation, or if the segments of a
// GSO frame do not carry exactly the original payload, in order, with valid IPv4 header and TCP
// checksums, advancing sequence numbers and sizes of at most gso_size.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "backends/net/offload.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::net;

namespace {

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

uint16_t be16(std::span<const uint8_t> b, size_t off) { return static_cast<uint16_t>((b[off] << 8) | b[off + 1]); }
uint32_t be32(std::span<const uint8_t> b, size_t off) {
    return (uint32_t{be16(b, off)} << 16) | be16(b, off + 2);
}

// A naive one's-complement sum, independent of csum_add.
uint32_t ref_sum(std::span<const uint8_t> b, uint32_t s = 0) {
    uint64_t acc = s;
    for (size_t i = 0; i < b.size(); i += 2) acc += (uint32_t{b[i]} << 8) | (i + 1 < b.size() ? b[i + 1] : 0u);
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return static_cast<uint32_t>(acc);
}
uint16_t ref_fold(uint32_t s) { return static_cast<uint16_t>(~ref_sum({}, s) & 0xffff); }

size_t l3_of(std::span<const uint8_t> f) { return be16(f, 12) == 0x8100 ? 18 : 14; }

void check_segments(std::span<const uint8_t> f, const Offload& o, const std::vector<std::vector<uint8_t>>& segs) {
    const size_t l3 = l3_of(f);
    const bool v6 = o.gso == Offload::Gso::Tcp6;
    const size_t l4 = v6 ? l3 + 40 : l3 + size_t{f[l3] & 0x0fu} * 4;
    const size_t hdr_end = l4 + (size_t{f[l4 + 12]} >> 4) * 4;
    size_t ip_end = 0;
    if (v6) ip_end = be16(f, l3 + 4) == 0 ? f.size() : l4 + be16(f, l3 + 4);
    else ip_end = be16(f, l3 + 2) == 0 ? f.size() : l3 + be16(f, l3 + 2);
    CHECK(hdr_end <= ip_end && ip_end <= f.size());
    CHECK(!segs.empty() && segs.size() <= kMaxGsoSegments);
    std::vector<uint8_t> joined;
    for (size_t i = 0; i < segs.size(); ++i) {
        const auto& s = segs[i];
        CHECK(s.size() >= hdr_end && s.size() - hdr_end <= o.gso_size);
        CHECK(std::equal(f.begin(), f.begin() + static_cast<ptrdiff_t>(l3), s.begin()));  // Ethernet untouched
        const size_t tcp_len = s.size() - l4;
        uint32_t pseudo = 0;
        if (v6) {
            CHECK(be16(s, l3 + 4) == tcp_len);
            pseudo = ref_sum(std::span(s).subspan(l3 + 8, 32)) + static_cast<uint32_t>(tcp_len) + 6;
        } else {
            CHECK(be16(s, l3 + 2) == s.size() - l3);
            CHECK(ref_fold(ref_sum(std::span(s).subspan(l3, l4 - l3))) == 0);  // header checksum
            pseudo = ref_sum(std::span(s).subspan(l3 + 12, 8)) + static_cast<uint32_t>(tcp_len) + 6;
        }
        CHECK(ref_fold(ref_sum(std::span(s).subspan(l4), pseudo)) == 0);  // TCP checksum
        CHECK(be32(s, l4 + 4) == static_cast<uint32_t>(be32(f, l4 + 4) + i * o.gso_size));
        if (i + 1 < segs.size()) CHECK((s[l4 + 13] & 0x09) == 0);  // FIN, PSH only on the last
        if (i > 0) CHECK((s[l4 + 13] & 0x80) == 0);               // CWR only on the first
        joined.insert(joined.end(), s.begin() + static_cast<ptrdiff_t>(hdr_end), s.end());
    }
    CHECK(joined.size() == ip_end - hdr_end);
    CHECK(std::equal(joined.begin(), joined.end(), f.begin() + static_cast<ptrdiff_t>(hdr_end)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    const auto mode = in.take<uint8_t>();
    Offload o;
    o.needs_csum = mode & 1;
    const unsigned gso = (mode >> 1) & 3;
    o.gso = gso == 1 ? Offload::Gso::Tcp4 : gso == 2 ? Offload::Gso::Tcp6 : Offload::Gso::None;
    o.gso_size = in.take<uint16_t>();
    o.csum_start = in.take<uint16_t>();
    o.csum_offset = in.take<uint16_t>();
    const auto bytes = in.take_bytes(kMaxOffloadFrame + 1);
    std::vector<uint8_t> frame(bytes.begin(), bytes.end());
    if ((mode & 8) && frame.size() >= 18) {
        const size_t l3 = l3_of(frame);
        const size_t n = frame.size();
        if (n >= l3 + 40 && (frame[l3] >> 4) == 6 && n - l3 - 40 <= 0xffff) {
            frame[l3 + 4] = static_cast<uint8_t>((n - l3 - 40) >> 8);
            frame[l3 + 5] = static_cast<uint8_t>(n - l3 - 40);
        } else if (n >= l3 + 20 && (frame[l3] >> 4) == 4 && n - l3 <= 0xffff) {
            frame[l3 + 2] = static_cast<uint8_t>((n - l3) >> 8);
            frame[l3 + 3] = static_cast<uint8_t>(n - l3);
        }
    }
    const std::vector<uint8_t> orig = frame;

    if (o.gso != Offload::Gso::None) {
        std::vector<std::vector<uint8_t>> segs;
        auto r = segment_tcp(frame, o, [&](std::span<const uint8_t> s) { segs.emplace_back(s.begin(), s.end()); });
        CHECK(frame == orig);  // the input is not modified
        if (r) {
            CHECK(*r == segs.size());
            check_segments(frame, o, segs);
        } else {
            CHECK(segs.empty());
        }
        return 0;
    }
    if (o.needs_csum) {
        auto r = complete_checksum(frame, o);
        if (r) {
            // Reference: the sum from csum_start to the packet's end, field as it was (the seed).
            const size_t field = size_t{o.csum_start} + o.csum_offset;
            CHECK(field + 2 <= frame.size());
            // It sums to the end of the IP packet when the frame is IPv4/IPv6 with a length
            // that fits, else to the frame's end: one of these must reproduce the stored value.
            std::vector<size_t> ends{frame.size()};
            if (frame.size() >= 18) {
                const size_t l3 = l3_of(orig);
                if (orig.size() >= l3 + 20 && (orig[l3] >> 4) == 4 && be16(orig, l3 + 2) != 0)
                    ends.push_back(l3 + be16(orig, l3 + 2));
                if (orig.size() >= l3 + 40 && (orig[l3] >> 4) == 6 && be16(orig, l3 + 4) != 0)
                    ends.push_back(l3 + 40 + be16(orig, l3 + 4));
            }
            const uint16_t got = be16(frame, field);
            bool matched = false;
            for (size_t e : ends) {
                if (e > orig.size() || e < field + 2) continue;
                uint16_t want = ref_fold(ref_sum(std::span(orig).subspan(o.csum_start, e - o.csum_start)));
                if (want == 0) want = 0xffff;
                matched = matched || want == got;
            }
            CHECK(matched);
            // Only the field changed.
            for (size_t i = 0; i < frame.size(); ++i)
                if (i != field && i != field + 1) CHECK(frame[i] == orig[i]);
        } else {
            CHECK(frame == orig);
        }
    }
    return 0;
}
