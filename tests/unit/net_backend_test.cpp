// The network backends: the software offloads (checksums against a naive reference, TCP
// segmentation of IPv4 and IPv6 frames, hostile frames), libslirp end to end without a VM
// (ARP, DHCP, TCP to the host's loopback through 10.0.2.2, a host forward), and tap (needs
// root: creates a tap, puts an address on it, UDP both ways).
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "backends/net/net.hpp"
#include "backends/net/offload.hpp"
#include "common/fd.hpp"

using namespace enlighten;
using namespace enlighten::net;
using namespace std::chrono_literals;

namespace {

using Bytes = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;

constexpr Mac kGuestMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr Mac kBroadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

// --- a naive reference checksum, independent of offload.cpp ---
uint16_t ref_csum(const Bytes& b) {
    uint64_t s = 0;
    for (size_t i = 0; i < b.size(); i += 2) {
        uint16_t w = static_cast<uint16_t>(b[i] << 8);
        if (i + 1 < b.size()) w = static_cast<uint16_t>(w | b[i + 1]);
        s += w;
    }
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return static_cast<uint16_t>(~s & 0xffff);
}

void put16(Bytes& b, size_t off, uint16_t v) {
    b[off] = static_cast<uint8_t>(v >> 8);
    b[off + 1] = static_cast<uint8_t>(v);
}
void put32(Bytes& b, size_t off, uint32_t v) {
    for (int i = 0; i < 4; ++i) b[off + static_cast<size_t>(i)] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
uint16_t get16(const Bytes& b, size_t off) { return static_cast<uint16_t>((b[off] << 8) | b[off + 1]); }
uint32_t get32(const Bytes& b, size_t off) {
    return (uint32_t{b[off]} << 24) | (uint32_t{b[off + 1]} << 16) | (uint32_t{b[off + 2]} << 8) | b[off + 3];
}
uint32_t ip4(const char* s) {
    in_addr a{};
    inet_pton(AF_INET, s, &a);
    return ntohl(a.s_addr);
}

Bytes eth(const Mac& dst, const Mac& src, uint16_t type) {
    Bytes f(14);
    std::copy(dst.begin(), dst.end(), f.begin());
    std::copy(src.begin(), src.end(), f.begin() + 6);
    put16(f, 12, type);
    return f;
}

// The pseudo-header of an L4 segment: the bytes the reference sums before the L4 bytes.
Bytes pseudo4(uint32_t src, uint32_t dst, uint8_t proto, size_t l4_len) {
    Bytes p(12);
    put32(p, 0, src);
    put32(p, 4, dst);
    p[9] = proto;
    put16(p, 10, static_cast<uint16_t>(l4_len));
    return p;
}
Bytes pseudo6(const Bytes& f, size_t l3, uint8_t proto, size_t l4_len) {
    Bytes p(f.begin() + static_cast<ptrdiff_t>(l3 + 8), f.begin() + static_cast<ptrdiff_t>(l3 + 40));
    Bytes tail(8);
    put32(tail, 0, static_cast<uint32_t>(l4_len));
    tail[7] = proto;
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
}

// The reference L4 checksum of an IP packet's L4 part (the field zeroed first).
uint16_t ref_l4(Bytes f, size_t l3, size_t l4, size_t end, size_t field, bool v6) {
    put16(f, field, 0);
    Bytes p = v6 ? pseudo6(f, l3, f[l3 + 6], end - l4) : pseudo4(get32(f, l3 + 12), get32(f, l3 + 16), f[l3 + 9], end - l4);
    p.insert(p.end(), f.begin() + static_cast<ptrdiff_t>(l4), f.begin() + static_cast<ptrdiff_t>(end));
    return ref_csum(p);
}

struct TcpSpec {
    uint16_t sport = 40000, dport = 80;
    uint32_t seq = 1000, ack = 0;
    uint8_t flags = 0x02;  // SYN
    uint16_t window = 65535;
    size_t options = 0;  // bytes of TCP options (NOPs), a multiple of 4
};
constexpr uint8_t kFin = 0x01, kSyn = 0x02, kPsh = 0x08, kAck = 0x10, kCwr = 0x80;

// An IPv4 TCP frame with complete checksums.
Bytes tcp4(const Mac& dst, uint32_t saddr, uint32_t daddr, const TcpSpec& t, const Bytes& payload, uint16_t id = 7) {
    Bytes f = eth(dst, kGuestMac, 0x0800);
    const size_t l3 = f.size(), th = 20 + t.options, l4 = l3 + 20;
    f.resize(l4 + th + payload.size());
    f[l3] = 0x45;
    put16(f, l3 + 2, static_cast<uint16_t>(20 + th + payload.size()));
    put16(f, l3 + 4, id);
    put16(f, l3 + 6, 0x4000);  // DF
    f[l3 + 8] = 64;
    f[l3 + 9] = 6;
    put32(f, l3 + 12, saddr);
    put32(f, l3 + 16, daddr);
    put16(f, l3 + 10, ref_csum(Bytes(f.begin() + static_cast<ptrdiff_t>(l3), f.begin() + static_cast<ptrdiff_t>(l4))));
    put16(f, l4, t.sport);
    put16(f, l4 + 2, t.dport);
    put32(f, l4 + 4, t.seq);
    put32(f, l4 + 8, t.ack);
    f[l4 + 12] = static_cast<uint8_t>((th / 4) << 4);
    f[l4 + 13] = t.flags;
    put16(f, l4 + 14, t.window);
    for (size_t i = 0; i < t.options; ++i) f[l4 + 20 + i] = 1;  // NOP
    std::copy(payload.begin(), payload.end(), f.begin() + static_cast<ptrdiff_t>(l4 + th));
    put16(f, l4 + 16, ref_l4(f, l3, l4, f.size(), l4 + 16, false));
    return f;
}

// An IPv6 TCP frame with a complete checksum.
Bytes tcp6(const TcpSpec& t, const Bytes& payload) {
    Bytes f = eth(kBroadcast, kGuestMac, 0x86dd);
    const size_t l3 = f.size(), th = 20 + t.options, l4 = l3 + 40;
    f.resize(l4 + th + payload.size());
    f[l3] = 0x60;
    put16(f, l3 + 4, static_cast<uint16_t>(th + payload.size()));
    f[l3 + 6] = 6;
    f[l3 + 7] = 64;
    for (size_t i = 0; i < 16; ++i) f[l3 + 8 + i] = static_cast<uint8_t>(0x20 + i);
    for (size_t i = 0; i < 16; ++i) f[l3 + 24 + i] = static_cast<uint8_t>(0x80 + i);
    put16(f, l4, t.sport);
    put16(f, l4 + 2, t.dport);
    put32(f, l4 + 4, t.seq);
    put32(f, l4 + 8, t.ack);
    f[l4 + 12] = static_cast<uint8_t>((th / 4) << 4);
    f[l4 + 13] = t.flags;
    put16(f, l4 + 14, t.window);
    for (size_t i = 0; i < t.options; ++i) f[l4 + 20 + i] = 1;
    std::copy(payload.begin(), payload.end(), f.begin() + static_cast<ptrdiff_t>(l4 + th));
    put16(f, l4 + 16, ref_l4(f, l3, l4, f.size(), l4 + 16, true));
    return f;
}

// An IPv4 UDP frame with complete checksums.
Bytes udp4(const Mac& dst, const Mac& src, uint32_t saddr, uint32_t daddr, uint16_t sport, uint16_t dport,
           const Bytes& payload) {
    Bytes f = eth(dst, src, 0x0800);
    const size_t l3 = f.size(), l4 = l3 + 20;
    f.resize(l4 + 8 + payload.size());
    f[l3] = 0x45;
    put16(f, l3 + 2, static_cast<uint16_t>(28 + payload.size()));
    f[l3 + 8] = 64;
    f[l3 + 9] = 17;
    put32(f, l3 + 12, saddr);
    put32(f, l3 + 16, daddr);
    put16(f, l3 + 10, ref_csum(Bytes(f.begin() + static_cast<ptrdiff_t>(l3), f.begin() + static_cast<ptrdiff_t>(l4))));
    put16(f, l4, sport);
    put16(f, l4 + 2, dport);
    put16(f, l4 + 4, static_cast<uint16_t>(8 + payload.size()));
    std::copy(payload.begin(), payload.end(), f.begin() + static_cast<ptrdiff_t>(l4 + 8));
    uint16_t c = ref_l4(f, l3, l4, f.size(), l4 + 6, false);
    put16(f, l4 + 6, c == 0 ? 0xffff : c);
    return f;
}

// Turns a complete frame into the CHECKSUM_PARTIAL form: the L4 checksum field holds the
// pseudo-header sum (not complemented), as Linux's tcp_v4_send_check leaves it.
Offload make_partial(Bytes& f, size_t l3, size_t l4, size_t field_off, bool v6) {
    const size_t end = f.size();
    Bytes p = v6 ? pseudo6(f, l3, f[l3 + 6], end - l4) : pseudo4(get32(f, l3 + 12), get32(f, l3 + 16), f[l3 + 9], end - l4);
    put16(f, l4 + field_off, static_cast<uint16_t>(~ref_csum(p)));
    Offload o;
    o.needs_csum = true;
    o.csum_start = static_cast<uint16_t>(l4);
    o.csum_offset = static_cast<uint16_t>(field_off);
    return o;
}

Bytes pattern(size_t n, uint8_t seed = 1) {
    Bytes b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
    return b;
}

Bytes str_bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

// ---------------------------------------------------------------------------------------
// Offloads

TEST(NetOffload, ChecksumMatchesReference) {
    std::mt19937 rng(42);
    for (size_t n : {0u, 1u, 2u, 3u, 19u, 20u, 1499u, 1500u, 65535u}) {
        Bytes b(n);
        for (auto& x : b) x = static_cast<uint8_t>(rng());
        EXPECT_EQ(csum_fold(csum_add(0, b)), ref_csum(b)) << n;
        // In two pieces split at an even offset.
        const size_t half = (n / 2) & ~size_t{1};
        const uint32_t s = csum_add(csum_add(0, std::span(b).first(half)), std::span(b).subspan(half));
        EXPECT_EQ(csum_fold(s), ref_csum(b)) << n;
    }
}

TEST(NetOffload, CompletesTcp4Udp4Tcp6Checksums) {
    {
        Bytes good = tcp4(kBroadcast, ip4("10.0.2.15"), ip4("10.0.2.2"), {.flags = kAck | kPsh}, pattern(333));
        Bytes f = good;
        Offload o = make_partial(f, 14, 34, 16, false);
        ASSERT_NE(f, good);
        ASSERT_TRUE(complete_checksum(f, o));
        EXPECT_EQ(f, good);
    }
    {
        Bytes good = udp4(kBroadcast, kGuestMac, ip4("10.0.2.15"), ip4("10.0.2.3"), 5000, 53, pattern(101));
        Bytes f = good;
        Offload o = make_partial(f, 14, 34, 6, false);
        ASSERT_TRUE(complete_checksum(f, o));
        EXPECT_EQ(f, good);
    }
    {
        Bytes good = tcp6({.flags = kAck, .options = 12}, pattern(777));
        Bytes f = good;
        Offload o = make_partial(f, 14, 54, 16, true);
        ASSERT_TRUE(complete_checksum(f, o));
        EXPECT_EQ(f, good);
    }
}

TEST(NetOffload, ChecksumIgnoresEthernetPadding) {
    Bytes good = udp4(kBroadcast, kGuestMac, ip4("10.0.2.15"), ip4("10.0.2.2"), 1, 2, str_bytes("hi"));
    Bytes f = good;
    Offload o = make_partial(f, 14, 34, 6, false);
    f.resize(60, 0xa5);  // padding that is not zero
    ASSERT_TRUE(complete_checksum(f, o));
    EXPECT_TRUE(std::equal(good.begin(), good.end(), f.begin()));
}

TEST(NetOffload, ChecksumRejectsOffsetsOutsideThePacket) {
    Bytes f = udp4(kBroadcast, kGuestMac, 1, 2, 1, 2, pattern(10));
    Offload o;
    o.needs_csum = true;
    o.csum_start = static_cast<uint16_t>(f.size());
    o.csum_offset = 0;
    EXPECT_EQ(complete_checksum(f, o).error().code(), Errc::Invalid);
    o.csum_start = 34;
    o.csum_offset = static_cast<uint16_t>(f.size() - 34 - 1);  // the field's second byte outside
    EXPECT_EQ(complete_checksum(f, o).error().code(), Errc::Invalid);
    o.csum_start = 0xffff;
    o.csum_offset = 0xffff;
    EXPECT_EQ(complete_checksum(f, o).error().code(), Errc::Invalid);
    Bytes tiny(5);
    o.csum_start = 0;
    o.csum_offset = 2;
    EXPECT_TRUE(complete_checksum(tiny, o));  // not IP: summed to the frame's end, inside it
    o.csum_offset = 4;
    EXPECT_EQ(complete_checksum(tiny, o).error().code(), Errc::Invalid);
}

// Segments of a GSO frame: complete frames whose payloads re-assemble to the original.
struct Seg {
    Bytes frame;
};
std::vector<Bytes> segment(const Bytes& f, const Offload& o) {
    std::vector<Bytes> out;
    auto r = segment_tcp(f, o, [&](std::span<const uint8_t> s) { out.emplace_back(s.begin(), s.end()); });
    EXPECT_TRUE(r) << (r ? "" : r.error().message());
    if (r) { EXPECT_EQ(*r, out.size()); }
    return out;
}

void check_segments(const std::vector<Bytes>& segs, const Bytes& orig, bool v6, size_t l3, size_t th, size_t mss,
                    const Bytes& payload, uint8_t flags0) {
    const size_t l4 = l3 + (v6 ? 40 : 20);
    const size_t expect_n = std::max<size_t>(1, (payload.size() + mss - 1) / mss);
    ASSERT_EQ(segs.size(), expect_n);
    Bytes joined;
    for (size_t i = 0; i < segs.size(); ++i) {
        const Bytes& s = segs[i];
        const size_t len = std::min(mss, payload.size() - i * mss);
        ASSERT_EQ(s.size(), l4 + th + len) << i;
        // Everything before the IP header is the original's.
        EXPECT_TRUE(std::equal(orig.begin(), orig.begin() + static_cast<ptrdiff_t>(l3), s.begin()));
        if (v6) {
            EXPECT_EQ(get16(s, l3 + 4), th + len);
        } else {
            EXPECT_EQ(get16(s, l3 + 2), 20 + th + len);
            EXPECT_EQ(get16(s, l3 + 4), static_cast<uint16_t>(get16(orig, l3 + 4) + i));
            EXPECT_EQ(ref_csum(Bytes(s.begin() + static_cast<ptrdiff_t>(l3), s.begin() + static_cast<ptrdiff_t>(l4))), 0);
        }
        EXPECT_EQ(get32(s, l4 + 4), static_cast<uint32_t>(get32(orig, l4 + 4) + i * mss));
        uint8_t want = flags0;
        if (i + 1 < segs.size()) want &= static_cast<uint8_t>(~(kFin | kPsh));
        if (i > 0) want &= static_cast<uint8_t>(~kCwr);
        EXPECT_EQ(s[l4 + 13], want) << i;
        EXPECT_EQ(get16(s, l4 + 16), ref_l4(s, l3, l4, s.size(), l4 + 16, v6)) << "segment " << i;
        joined.insert(joined.end(), s.begin() + static_cast<ptrdiff_t>(l4 + th), s.end());
    }
    EXPECT_EQ(joined, payload);
}

TEST(NetOffload, SegmentsTcp4) {
    for (size_t n : {0u, 1u, 999u, 1000u, 1001u, 2500u, 3000u, 64000u}) {
        const Bytes payload = pattern(n, static_cast<uint8_t>(n));
        const uint8_t flags = kAck | kPsh | kFin | kCwr;
        Bytes f = tcp4(kBroadcast, ip4("10.0.2.15"), ip4("10.0.2.2"), {.seq = 0xfffff000, .flags = flags, .options = 12},
                       payload, 0xfffe);
        Offload o = make_partial(f, 14, 34, 16, false);
        o.gso = Offload::Gso::Tcp4;
        o.gso_size = 1000;
        o.hdr_len = 34 + 32;
        SCOPED_TRACE(n);
        check_segments(segment(f, o), f, false, 14, 32, 1000, payload, flags);
    }
}

TEST(NetOffload, SegmentsTcp4WithZeroTotLen) {
    // netvsc's LSO form (tot_len 0): the frame's length counts.
    const Bytes payload = pattern(2500);
    Bytes f = tcp4(kBroadcast, 1, 2, {.flags = kAck}, payload);
    put16(f, 14 + 2, 0);
    Offload o;
    o.gso = Offload::Gso::Tcp4;
    o.gso_size = 1448;
    check_segments(segment(f, o), f, false, 14, 20, 1448, payload, kAck);
}

TEST(NetOffload, SegmentsTcp6) {
    const Bytes payload = pattern(5000);
    const uint8_t flags = kAck | kPsh;
    Bytes f = tcp6({.seq = 77, .flags = flags, .options = 8}, payload);
    Offload o = make_partial(f, 14, 54, 16, true);
    o.gso = Offload::Gso::Tcp6;
    o.gso_size = 1400;
    check_segments(segment(f, o), f, true, 14, 28, 1400, payload, flags);
}

TEST(NetOffload, SegmentsVlanTaggedFrame) {
    const Bytes payload = pattern(3000);
    Bytes f = tcp4(kBroadcast, 1, 2, {.flags = kAck}, payload);
    const Bytes tag{0x81, 0x00, 0x00, 0x05};
    f.insert(f.begin() + 12, tag.begin(), tag.end());
    Offload o;
    o.gso = Offload::Gso::Tcp4;
    o.gso_size = 1460;
    check_segments(segment(f, o), f, false, 18, 20, 1460, payload, kAck);
}

TEST(NetOffload, FinishFramePassesPlainFramesThrough) {
    Bytes f = udp4(kBroadcast, kGuestMac, 1, 2, 3, 4, pattern(20));
    const Bytes orig = f;
    size_t n = 0;
    auto r = finish_frame(f, Offload{}, [&](std::span<const uint8_t> s) {
        ++n;
        EXPECT_TRUE(std::equal(s.begin(), s.end(), orig.begin(), orig.end()));
    });
    ASSERT_TRUE(r);
    EXPECT_EQ(n, 1u);
}

TEST(NetOffload, RejectsHostileGsoFrames) {
    const Bytes payload = pattern(3000);
    const Bytes good = tcp4(kBroadcast, 1, 2, {.flags = kAck}, payload);
    Offload o;
    o.gso = Offload::Gso::Tcp4;
    o.gso_size = 1000;
    auto expect_invalid = [&](const Bytes& f, const Offload& off, const char* what) {
        size_t emitted = 0;
        auto r = segment_tcp(f, off, [&](std::span<const uint8_t>) { ++emitted; });
        EXPECT_FALSE(r) << what;
        if (!r) { EXPECT_EQ(r.error().code(), Errc::Invalid) << what; }
        EXPECT_EQ(emitted, 0u) << what;
    };
    ASSERT_TRUE(segment_tcp(good, o, [](auto) {}));
    {
        Offload z = o;
        z.gso_size = 0;
        expect_invalid(good, z, "gso_size 0");
        z.gso_size = 1;  // 3000 segments
        expect_invalid(good, z, "too many segments");
        z = o;
        z.gso = Offload::Gso::Tcp6;
        expect_invalid(good, z, "TCPv6 on IPv4");
        z.gso = Offload::Gso::None;
        expect_invalid(good, z, "no GSO");
        z = o;
        z.needs_csum = true;
        z.csum_start = 40;
        z.csum_offset = 16;
        expect_invalid(good, z, "csum_start not at TCP");
    }
    for (size_t cut : {0u, 13u, 14u, 20u, 33u, 34u, 40u, 53u}) {
        Bytes f(good.begin(), good.begin() + static_cast<ptrdiff_t>(cut));
        expect_invalid(f, o, "truncated");
    }
    auto mutate = [&](auto fn, const char* what) {
        Bytes f = good;
        fn(f);
        expect_invalid(f, o, what);
    };
    mutate([](Bytes& f) { f[14] = 0x44; }, "ihl 4");
    mutate(
        [](Bytes& f) {
            f[14] = 0x4f;  // a 60-byte IP header, then no room for TCP
            f.resize(14 + 60 + 10);
            put16(f, 16, 70);
        },
        "ihl 15, TCP header truncated");
    mutate([](Bytes& f) { f[14] = 0x65; }, "version 6 in IPv4");
    mutate([](Bytes& f) { f[23] = 17; }, "UDP");
    mutate([](Bytes& f) { put16(f, 16, 0xffff); }, "tot_len beyond the frame");
    mutate([](Bytes& f) { put16(f, 16, 30); }, "tot_len inside the TCP header");
    mutate([](Bytes& f) { put16(f, 20, 0x2000); }, "more fragments");
    mutate([](Bytes& f) { f[34 + 12] = 0x40; }, "doff 4");
    mutate([](Bytes& f) { f[34 + 12] = 0xf0; put16(f, 16, 20 + 40); }, "doff beyond tot_len");
    mutate([](Bytes& f) { put16(f, 12, 0x0806); }, "ARP");
    Bytes big(kMaxOffloadFrame + 1);
    expect_invalid(big, o, "too long");
}

// Random mutations of valid frames and offloads: errors, never a crash (the ASan build
// checks the memory accesses); any success still re-assembles the payload.
TEST(NetOffload, SurvivesRandomMutations) {
    std::mt19937 rng(7);
    const Bytes base4 = tcp4(kBroadcast, 1, 2, {.flags = kAck, .options = 4}, pattern(4000));
    const Bytes base6 = tcp6({.flags = kAck}, pattern(4000));
    for (int iter = 0; iter < 20000; ++iter) {
        Bytes f = (iter & 1) ? base6 : base4;
        const int edits = static_cast<int>(rng() % 4);
        for (int e = 0; e < edits; ++e) f[rng() % std::min<size_t>(f.size(), 80)] = static_cast<uint8_t>(rng());
        if (rng() % 4 == 0) f.resize(rng() % f.size());
        Offload o;
        o.gso = static_cast<Offload::Gso>(rng() % 3);
        o.gso_size = static_cast<uint16_t>(rng() % 3 == 0 ? rng() : rng() % 2000);
        o.needs_csum = rng() % 2;
        o.csum_start = static_cast<uint16_t>(rng() % 3 == 0 ? rng() : rng() % 80);
        o.csum_offset = static_cast<uint16_t>(rng() % 3 == 0 ? rng() : rng() % 20);
        size_t total = 0;
        auto r = finish_frame(f, o, [&](std::span<const uint8_t> s) { total += s.size(); });
        if (!r) { EXPECT_EQ(r.error().code(), Errc::Invalid); }
    }
}

// ---------------------------------------------------------------------------------------
// A Receiver for the tests: keeps every frame, optionally refuses them.

class FakeReceiver final : public Receiver {
public:
    FakeReceiver() : room_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
    bool receive(std::span<const iovec> frame, const Offload& offload) override {
        std::lock_guard lock(mu_);
        if (refuse_) {
            ++refused_;
            return false;
        }
        Bytes b;
        for (const iovec& v : frame) {
            const auto* p = static_cast<const uint8_t*>(v.iov_base);
            b.insert(b.end(), p, p + v.iov_len);
        }
        frames_.push_back(std::move(b));
        offloads_.push_back(offload);
        cv_.notify_all();
        return true;
    }
    void flush() override {
        std::lock_guard lock(mu_);
        ++flushes_;
    }
    [[nodiscard]] int room_fd() const override { return room_.get(); }

    void set_refuse(bool r) {
        std::lock_guard lock(mu_);
        refuse_ = r;
    }
    void signal_room() {
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(room_.get(), &one, sizeof one);
    }
    size_t refused() {
        std::lock_guard lock(mu_);
        return refused_;
    }
    size_t flushes() {
        std::lock_guard lock(mu_);
        return flushes_;
    }
    // Waits for a frame (any since the start) that `pred` accepts; returns a copy.
    std::optional<Bytes> wait_for(const std::function<bool(const Bytes&)>& pred,
                                  std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lock(mu_);
        std::optional<Bytes> found;
        cv_.wait_for(lock, timeout, [&] {
            for (const auto& f : frames_)
                if (pred(f)) {
                    found = f;
                    return true;
                }
            return false;
        });
        return found;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<Bytes> frames_;
    std::vector<Offload> offloads_;
    bool refuse_ = false;
    size_t refused_ = 0;
    size_t flushes_ = 0;
    UniqueFd room_;
};

Result<> send_bytes(Backend& b, const Bytes& f, const Offload& o = {}) {
    iovec iov{.iov_base = const_cast<uint8_t*>(f.data()), .iov_len = f.size()};
    return b.send(std::span<const iovec>(&iov, 1), o);
}

// A received IPv4 TCP frame, decoded.
struct TcpView {
    uint32_t saddr, daddr;
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint8_t flags;
    Bytes payload;
};
std::optional<TcpView> parse_tcp4(const Bytes& f) {
    if (f.size() < 54 || get16(f, 12) != 0x0800 || f[23] != 6) return std::nullopt;
    const size_t ihl = size_t{f[14] & 0x0fu} * 4, l4 = 14 + ihl;
    const size_t end = 14 + get16(f, 16);
    if (end > f.size() || l4 + 20 > end) return std::nullopt;
    const size_t th = (size_t{f[l4 + 12]} >> 4) * 4;
    TcpView v{get32(f, 26), get32(f, 30), get16(f, l4), get16(f, l4 + 2), get32(f, l4 + 4), get32(f, l4 + 8),
              f[l4 + 13], Bytes(f.begin() + static_cast<ptrdiff_t>(l4 + th), f.begin() + static_cast<ptrdiff_t>(end))};
    return v;
}

Bytes arp_request(const Mac& sha, uint32_t spa, uint32_t tpa) {
    Bytes f = eth(kBroadcast, sha, 0x0806);
    f.resize(42);
    put16(f, 14, 1);
    put16(f, 16, 0x0800);
    f[18] = 6;
    f[19] = 4;
    put16(f, 20, 1);
    std::copy(sha.begin(), sha.end(), f.begin() + 22);
    put32(f, 28, spa);
    put32(f, 38, tpa);
    return f;
}

UniqueFd tcp_listener(uint16_t* port) {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(s.get(), 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
    *port = ntohs(a.sin_port);
    return s;
}

bool readable(int fd, int timeout_ms) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    return ::poll(&p, 1, timeout_ms) == 1;
}

// Reads exactly n bytes (or what arrives within the timeout).
Bytes read_n(int fd, size_t n, int timeout_ms = 5000) {
    Bytes out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
        if (!readable(fd, 100)) continue;
        uint8_t buf[65536];
        const ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
        if (r <= 0) break;
        out.insert(out.end(), buf, buf + r);
    }
    return out;
}

const uint32_t kGuestIp = ip4("10.0.2.15"), kGatewayIp = ip4("10.0.2.2");

struct SlirpFixture : ::testing::Test {
    std::unique_ptr<Backend> backend;
    FakeReceiver rx;
    Mac gw_mac{};

    void start(BackendConfig config = {}) {
        auto b = make_backend(config);
        ASSERT_TRUE(b) << b.error().message();
        backend = std::move(*b);
        backend->set_receiver(&rx);
    }
    void TearDown() override {
        if (backend) backend->set_receiver(nullptr);
        backend.reset();
    }
    // ARP for the gateway from 10.0.2.15: slirp answers and learns the guest's MAC.
    void arp_gateway() {
        ASSERT_TRUE(send_bytes(*backend, arp_request(kGuestMac, kGuestIp, kGatewayIp)));
        auto reply = rx.wait_for([](const Bytes& f) {
            return f.size() >= 42 && get16(f, 12) == 0x0806 && get16(f, 20) == 2 && get32(f, 28) == ip4("10.0.2.2");
        });
        ASSERT_TRUE(reply) << "no ARP reply for 10.0.2.2";
        EXPECT_EQ(get32(*reply, 38), kGuestIp);
        EXPECT_TRUE(std::equal(kGuestMac.begin(), kGuestMac.end(), reply->begin()));
        std::copy(reply->begin() + 22, reply->begin() + 28, gw_mac.begin());
    }
};

TEST_F(SlirpFixture, AnswersArpForTheGateway) {
    start();
    arp_gateway();
    EXPECT_EQ(backend->capabilities().tx_csum, true);
    EXPECT_EQ(backend->capabilities().tx_tso, true);
    // The counters and the flush come after receive() returned: wait for them.
    for (int i = 0; i < 250 && (backend->status().rx_packets == 0 || rx.flushes() == 0); ++i)
        std::this_thread::sleep_for(20ms);
    const BackendStatus s = backend->status();
    EXPECT_EQ(s.kind, "slirp");
    EXPECT_GE(s.tx_packets, 1u);
    EXPECT_GE(s.rx_packets, 1u);
    EXPECT_GE(rx.flushes(), 1u);
}

TEST_F(SlirpFixture, DhcpDiscoverGetsAnOfferFor10_0_2_15) {
    start();
    Bytes bootp(240);
    bootp[0] = 1;  // BOOTREQUEST
    bootp[1] = 1;
    bootp[2] = 6;
    put32(bootp, 4, 0x12345678);  // xid
    std::copy(kGuestMac.begin(), kGuestMac.end(), bootp.begin() + 28);
    put32(bootp, 236, 0x63825363);  // magic cookie
    for (int b : {53, 1, 1, 255}) bootp.push_back(static_cast<uint8_t>(b));  // DHCPDISCOVER
    Bytes f = udp4(kBroadcast, kGuestMac, 0, 0xffffffff, 68, 67, bootp);
    // Through the needs_csum path: the UDP checksum is completed before slirp sees it.
    Offload o = make_partial(f, 14, 34, 6, false);
    ASSERT_TRUE(send_bytes(*backend, f, o));
    auto offer = rx.wait_for([](const Bytes& r) {
        return r.size() >= 42 + 240 && get16(r, 12) == 0x0800 && r[23] == 17 && get16(r, 34) == 67 &&
               get16(r, 36) == 68;
    });
    ASSERT_TRUE(offer) << "no DHCP answer";
    const size_t bp = 42;
    EXPECT_EQ((*offer)[bp], 2);  // BOOTREPLY
    EXPECT_EQ(get32(*offer, bp + 4), 0x12345678u);
    EXPECT_EQ(get32(*offer, bp + 16), kGuestIp);  // yiaddr
    // Option 53 (message type) is 2, DHCPOFFER.
    bool offer_type = false;
    for (size_t i = bp + 240; i + 2 < offer->size() && (*offer)[i] != 255;) {
        if ((*offer)[i] == 0) {
            ++i;
            continue;
        }
        if ((*offer)[i] == 53) offer_type = (*offer)[i + 2] == 2;
        i += 2 + size_t{(*offer)[i + 1]};
    }
    EXPECT_TRUE(offer_type);
}

TEST_F(SlirpFixture, TcpToTheHostLoopbackThroughTheGateway) {
    start();
    arp_gateway();
    uint16_t port = 0;
    UniqueFd listener = tcp_listener(&port);
    const uint16_t gport = 40001;
    const uint32_t isn = 5000;
    ASSERT_TRUE(send_bytes(*backend, tcp4(gw_mac, kGuestIp, kGatewayIp,
                                          {.sport = gport, .dport = port, .seq = isn, .flags = kSyn}, {})));
    ASSERT_TRUE(readable(listener.get(), 5000)) << "slirp did not connect to 127.0.0.1";
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn.valid());
    auto synack = rx.wait_for([&](const Bytes& f) {
        auto t = parse_tcp4(f);
        return t && t->sport == port && t->dport == gport && (t->flags & (kSyn | kAck)) == (kSyn | kAck);
    });
    ASSERT_TRUE(synack) << "no SYN-ACK";
    const TcpView sa = *parse_tcp4(*synack);
    EXPECT_EQ(sa.ack, isn + 1);
    EXPECT_EQ(sa.saddr, kGatewayIp);
    EXPECT_EQ(sa.daddr, kGuestIp);

    // ACK with data.
    uint32_t seq = isn + 1;
    const Bytes hello = str_bytes("hello");
    ASSERT_TRUE(send_bytes(*backend, tcp4(gw_mac, kGuestIp, kGatewayIp,
                                          {.sport = gport, .dport = port, .seq = seq, .ack = sa.seq + 1,
                                           .flags = kAck | kPsh},
                                          hello)));
    seq += static_cast<uint32_t>(hello.size());
    EXPECT_EQ(read_n(conn.get(), hello.size()), hello);

    // A GSO frame (CHECKSUM_PARTIAL seed, 3 segments), cut by the backend.
    const Bytes big = pattern(3000, 9);
    Bytes g = tcp4(gw_mac, kGuestIp, kGatewayIp,
                   {.sport = gport, .dport = port, .seq = seq, .ack = sa.seq + 1, .flags = kAck | kPsh}, big);
    Offload o = make_partial(g, 14, 34, 16, false);
    o.gso = Offload::Gso::Tcp4;
    o.gso_size = 1000;
    o.hdr_len = 54;
    ASSERT_TRUE(send_bytes(*backend, g, o));
    EXPECT_EQ(read_n(conn.get(), big.size()), big);

    // The host answers; the guest sees the data from 10.0.2.2.
    ASSERT_EQ(::send(conn.get(), "world", 5, 0), 5);
    auto data = rx.wait_for([&](const Bytes& f) {
        auto t = parse_tcp4(f);
        return t && t->sport == port && t->dport == gport && t->payload == str_bytes("world");
    });
    EXPECT_TRUE(data) << "the host's data did not reach the guest";
}

// UDP to 10.0.2.2 reaches the host's 127.0.0.1 and the host's answers come back: send()
// hands a datagram to libslirp on the caller's thread, and the socket libslirp makes for the
// flow must join the slirp thread's poll set at once (the first answer: without a wake it
// would wait for the slirp thread's next round, up to a second), and stay in it (every later
// one, with no new socket to wake the slirp thread for).
TEST_F(SlirpFixture, UdpToTheHostLoopbackAndItsAnswersBack) {
    start();
    arp_gateway();
    UniqueFd host(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(host.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t alen = sizeof a;
    ::getsockname(host.get(), reinterpret_cast<sockaddr*>(&a), &alen);
    const uint16_t port = ntohs(a.sin_port), gport = 40002;
    for (int i = 0; i < 50; ++i) {
        const Bytes ask = str_bytes("ask-" + std::to_string(i));
        ASSERT_TRUE(send_bytes(*backend, udp4(gw_mac, kGuestMac, kGuestIp, kGatewayIp, gport, port, ask)));
        ASSERT_TRUE(readable(host.get(), 5000)) << "datagram " << i << " did not reach 127.0.0.1";
        uint8_t buf[256];
        sockaddr_in from{};
        socklen_t flen = sizeof from;
        const ssize_t n = ::recvfrom(host.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
        ASSERT_EQ(Bytes(buf, buf + std::max<ssize_t>(n, 0)), ask);
        const std::string answer = "answer-" + std::to_string(i);
        ASSERT_EQ(::sendto(host.get(), answer.data(), answer.size(), 0, reinterpret_cast<sockaddr*>(&from), flen),
                  static_cast<ssize_t>(answer.size()));
        auto back = rx.wait_for(
            [&](const Bytes& f) {
                return f.size() >= 42 && get16(f, 12) == 0x0800 && f[23] == 17 && get16(f, 34) == port &&
                       get16(f, 36) == gport && Bytes(f.begin() + 42, f.end()) == str_bytes(answer);
            },
            i == 0 ? 500ms : 5s);
        ASSERT_TRUE(back) << "answer " << i << " did not reach the guest" << (i == 0 ? " within 500 ms" : "");
        EXPECT_EQ(get32(*back, 26), kGatewayIp);
        EXPECT_EQ(get32(*back, 30), kGuestIp);
    }
}

TEST_F(SlirpFixture, HostForwardDeliversTheSynToTheGuest) {
    uint16_t port = 0;
    {
        UniqueFd probe = tcp_listener(&port);  // a port free a moment ago
    }
    BackendConfig config;
    config.forwards.push_back({.udp = false, .host_addr = "127.0.0.1", .host_port = port, .guest_addr = "",
                               .guest_port = 22});
    start(config);
    arp_gateway();
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    ::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    auto syn = rx.wait_for([](const Bytes& f) {
        auto t = parse_tcp4(f);
        return t && t->dport == 22 && (t->flags & (kSyn | kAck)) == kSyn;
    });
    ASSERT_TRUE(syn) << "no SYN for the guest";
    EXPECT_EQ(parse_tcp4(*syn)->daddr, kGuestIp);
}

TEST(Slirp, HostForwardOnATakenPortIsAnError) {
    uint16_t port = 0;
    UniqueFd taken = tcp_listener(&port);
    BackendConfig config;
    config.forwards.push_back({.udp = false, .host_addr = "127.0.0.1", .host_port = port, .guest_addr = "", .guest_port = 22});
    auto b = make_backend(config);
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().code(), Errc::Io) << b.error().message();
}

TEST_F(SlirpFixture, DropsWithoutReceiverOrRoomAndRejectsBadFrames) {
    start();
    rx.set_refuse(true);
    ASSERT_TRUE(send_bytes(*backend, arp_request(kGuestMac, kGuestIp, kGatewayIp)));
    for (int i = 0; i < 250 && backend->status().rx_dropped == 0; ++i) std::this_thread::sleep_for(20ms);
    EXPECT_GE(rx.refused(), 1u);
    EXPECT_GE(backend->status().rx_dropped, 1u);

    Bytes runt(10);
    EXPECT_EQ(send_bytes(*backend, runt).error().code(), Errc::Invalid);
    Bytes f = tcp4(kBroadcast, kGuestIp, kGatewayIp, {}, pattern(100));
    Offload o;
    o.gso = Offload::Gso::Tcp4;  // gso_size 0
    EXPECT_EQ(send_bytes(*backend, f, o).error().code(), Errc::Invalid);
    EXPECT_GE(backend->status().tx_dropped, 2u);
}

TEST(NetFactory, RejectsBadConfigurations) {
    BackendConfig c;
    c.kind = "vde";
    EXPECT_EQ(make_backend(c).error().code(), Errc::Invalid);
    c.kind = "tap";
    c.forwards.push_back({.udp = false, .host_addr = "", .host_port = 1, .guest_addr = "", .guest_port = 1});
    EXPECT_EQ(make_backend(c).error().code(), Errc::Invalid);
    c = {};
    c.kind = "slirp";
    c.forwards.push_back({.udp = false, .host_addr = "not-an-address", .host_port = 1, .guest_addr = "", .guest_port = 1});
    EXPECT_EQ(make_backend(c).error().code(), Errc::Invalid);
}

TEST(NetHostfwd, ParsesQemuSyntax) {
    auto f = parse_hostfwd("tcp:127.0.0.1:2222-10.0.2.15:22");
    ASSERT_TRUE(f) << f.error().message();
    EXPECT_FALSE(f->udp);
    EXPECT_EQ(f->host_addr, "127.0.0.1");
    EXPECT_EQ(f->host_port, 2222);
    EXPECT_EQ(f->guest_addr, "10.0.2.15");
    EXPECT_EQ(f->guest_port, 22);
    f = parse_hostfwd("udp::5353-:53");
    ASSERT_TRUE(f);
    EXPECT_TRUE(f->udp);
    EXPECT_EQ(f->host_addr, "");
    EXPECT_EQ(f->guest_addr, "");
    EXPECT_EQ(f->host_port, 5353);
    EXPECT_EQ(f->guest_port, 53);
    f = parse_hostfwd(":0.0.0.0:65535-:1");  // empty protocol: tcp, as QEMU
    ASSERT_TRUE(f);
    EXPECT_FALSE(f->udp);
    EXPECT_EQ(f->host_port, 65535);
    for (const char* bad : {"", "tcp", "tcp:", "tcp:2222-:22", "tcp::2222", "tcp::2222-:22-:23", "sctp::1-:2",
                            "tcp::0-:22", "tcp::65536-:22", "tcp::-1-:22", "tcp::+22-:22", "tcp:: 22-:22",
                            "tcp::22-:", "tcp::22-:22x", "tcp::123456-:22", "tcp:1.2.3:22-:22", "tcp:[::1]:22-:22",
                            "tcp:host:22-:22", "tcp::22-10.0.2.15:0", "tcp:1.2.3.4:5:6-:22"}) {
        auto r = parse_hostfwd(bad);
        EXPECT_FALSE(r) << bad;
        if (!r) { EXPECT_EQ(r.error().code(), Errc::Invalid) << bad; }
    }
}

// ---------------------------------------------------------------------------------------
// tap (root)

struct TapHost {
    std::string name;
    uint32_t host_ip = 0, guest_ip = 0;
    Mac mac{};
};

Result<> ifreq_ioctl(const std::string& name, unsigned long req, ifreq& ifr) {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
    if (::ioctl(s.get(), req, &ifr) < 0) return fail_errno(name);
    return {};
}

sockaddr_in sin4(uint32_t addr, uint16_t port = 0) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(addr);
    a.sin_port = htons(port);
    return a;
}

TEST(Tap, CreatesATapAndCarriesUdpBothWays) {
    if (::geteuid() != 0) GTEST_SKIP() << "creating a tap needs root (CAP_NET_ADMIN)";
    if (::access("/dev/net/tun", R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/net/tun";
    BackendConfig c;
    c.kind = "tap";
    auto made = make_backend(c);
    ASSERT_TRUE(made) << made.error().message();
    std::unique_ptr<Backend> tap = std::move(*made);
    FakeReceiver rx;
    tap->set_receiver(&rx);
    const BackendStatus st = tap->status();
    EXPECT_EQ(st.kind, "tap");
    // "tap NAME (created)"
    const std::string name = st.description.substr(4, st.description.find(' ', 4) - 4);
    ASSERT_FALSE(name.empty());

    // A /24 of our own for this process (other tests on the machine may use taps too).
    const uint32_t net = ip4("10.250.0.0") | ((static_cast<uint32_t>(::getpid()) % 200 + 20) << 8);
    const uint32_t host_ip = net | 1, guest_ip = net | 2;
    ifreq ifr{};
    sockaddr_in a = sin4(host_ip);
    std::memcpy(&ifr.ifr_addr, &a, sizeof a);
    ASSERT_TRUE(ifreq_ioctl(name, SIOCSIFADDR, ifr));
    ifr = {};
    a = sin4(0xffffff00);
    std::memcpy(&ifr.ifr_netmask, &a, sizeof a);
    ASSERT_TRUE(ifreq_ioctl(name, SIOCSIFNETMASK, ifr));
    ifr = {};
    ASSERT_TRUE(ifreq_ioctl(name, SIOCGIFHWADDR, ifr));
    Mac tap_mac;
    std::memcpy(tap_mac.data(), ifr.ifr_hwaddr.sa_data, 6);

    // Guest -> host: UDP to a host socket, checksum left to the kernel (NEEDS_CSUM).
    UniqueFd hs(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    a = sin4(host_ip);
    ASSERT_EQ(::bind(hs.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    ::getsockname(hs.get(), reinterpret_cast<sockaddr*>(&a), &len);
    const uint16_t host_port = ntohs(a.sin_port);
    Bytes f = udp4(tap_mac, kGuestMac, guest_ip, host_ip, 6666, host_port, str_bytes("ping-tap"));
    Offload o = make_partial(f, 14, 34, 6, false);
    ASSERT_TRUE(send_bytes(*tap, f, o));
    ASSERT_TRUE(readable(hs.get(), 5000)) << "the guest's UDP did not reach the host";
    char buf[64] = {};
    sockaddr_in from{};
    len = sizeof from;
    const ssize_t n = ::recvfrom(hs.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    EXPECT_EQ(std::string(buf, static_cast<size_t>(std::max<ssize_t>(n, 0))), "ping-tap");
    EXPECT_EQ(ntohl(from.sin_addr.s_addr), guest_ip);

    // Host -> guest: a static ARP entry, then UDP from the host socket to the guest.
    arpreq ar{};
    a = sin4(guest_ip);
    std::memcpy(&ar.arp_pa, &a, sizeof a);
    ar.arp_ha.sa_family = ARPHRD_ETHER;
    std::memcpy(ar.arp_ha.sa_data, kGuestMac.data(), 6);
    ar.arp_flags = ATF_COM;
    std::strncpy(ar.arp_dev, name.c_str(), sizeof ar.arp_dev - 1);
    {
        UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        ASSERT_EQ(::ioctl(s.get(), SIOCSARP, &ar), 0) << std::strerror(errno);
    }
    a = sin4(guest_ip, 7777);
    ASSERT_EQ(::sendto(hs.get(), "pong-tap", 8, 0, reinterpret_cast<sockaddr*>(&a), sizeof a), 8);
    auto got = rx.wait_for([&](const Bytes& r) {
        return r.size() >= 42 + 8 && get16(r, 12) == 0x0800 && r[23] == 17 && get16(r, 36) == 7777 &&
               Bytes(r.begin() + 42, r.begin() + 50) == str_bytes("pong-tap");
    });
    ASSERT_TRUE(got) << "the host's UDP did not reach the receiver";
    EXPECT_TRUE(std::equal(kGuestMac.begin(), kGuestMac.end(), got->begin()));

    // The receiver refuses: the frame is kept, and delivered once there is room.
    rx.set_refuse(true);
    ASSERT_EQ(::sendto(hs.get(), "kept-tap", 8, 0, reinterpret_cast<sockaddr*>(&a), sizeof a), 8);
    for (int i = 0; i < 100 && rx.refused() == 0; ++i) std::this_thread::sleep_for(20ms);
    EXPECT_GE(rx.refused(), 1u);
    rx.set_refuse(false);
    rx.signal_room();
    EXPECT_TRUE(rx.wait_for([](const Bytes& r) {
        return r.size() >= 50 && Bytes(r.begin() + 42, r.begin() + 50) == str_bytes("kept-tap");
    })) << "the kept frame was not delivered after room_fd";

    // set_mtu reaches the interface.
    tap->set_mtu(1400);
    ifr = {};
    ASSERT_TRUE(ifreq_ioctl(name, SIOCGIFMTU, ifr));
    EXPECT_EQ(ifr.ifr_mtu, 1400);
    tap->set_receiver(nullptr);
    tap.reset();
    EXPECT_EQ(::if_nametoindex(name.c_str()), 0u) << "the created tap outlived its backend";
}

// A created tap with 10.250.N.1/24 on the host side (N from the pid: other tests on the
// machine may use taps too) and a static ARP entry for the guest's .2 at kGuestMac.
struct TapSetup {
    std::unique_ptr<Backend> tap;
    std::string name;
    uint32_t host_ip = 0, guest_ip = 0;
    Mac tap_mac{};
};

void make_tap(TapSetup& t, uint32_t subnet_offset) {
    BackendConfig c;
    c.kind = "tap";
    auto made = make_backend(c);
    ASSERT_TRUE(made) << made.error().message();
    t.tap = std::move(*made);
    const std::string d = t.tap->status().description;
    t.name = d.substr(4, d.find(' ', 4) - 4);
    const uint32_t net = ip4("10.250.0.0") | (((static_cast<uint32_t>(::getpid()) + subnet_offset) % 200 + 20) << 8);
    t.host_ip = net | 1;
    t.guest_ip = net | 2;
    ifreq ifr{};
    sockaddr_in a = sin4(t.host_ip);
    std::memcpy(&ifr.ifr_addr, &a, sizeof a);
    ASSERT_TRUE(ifreq_ioctl(t.name, SIOCSIFADDR, ifr));
    ifr = {};
    a = sin4(0xffffff00);
    std::memcpy(&ifr.ifr_netmask, &a, sizeof a);
    ASSERT_TRUE(ifreq_ioctl(t.name, SIOCSIFNETMASK, ifr));
    ifr = {};
    ASSERT_TRUE(ifreq_ioctl(t.name, SIOCGIFHWADDR, ifr));
    std::memcpy(t.tap_mac.data(), ifr.ifr_hwaddr.sa_data, 6);
    arpreq ar{};
    a = sin4(t.guest_ip);
    std::memcpy(&ar.arp_pa, &a, sizeof a);
    ar.arp_ha.sa_family = ARPHRD_ETHER;
    std::memcpy(ar.arp_ha.sa_data, kGuestMac.data(), 6);
    ar.arp_flags = ATF_COM;
    std::strncpy(ar.arp_dev, t.name.c_str(), sizeof ar.arp_dev - 1);
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ASSERT_EQ(::ioctl(s.get(), SIOCSARP, &ar), 0) << std::strerror(errno);
}

// A GSO frame (CHECKSUM_PARTIAL seed, gso_size 1000) written to the tap arrives at a host
// socket as a TCP stream: the vnet header carries GSO and checksum offsets the kernel accepts.
TEST(Tap, GsoFrameArrivesAsATcpStream) {
    if (::geteuid() != 0) GTEST_SKIP() << "creating a tap needs root (CAP_NET_ADMIN)";
    TapSetup t;
    ASSERT_NO_FATAL_FAILURE(make_tap(t, 100));
    FakeReceiver rx;
    t.tap->set_receiver(&rx);
    UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a = sin4(t.host_ip);
    ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(listener.get(), 1), 0);
    socklen_t len = sizeof a;
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len);
    const uint16_t port = ntohs(a.sin_port), gport = 40002;
    const uint32_t isn = 1'000'000;
    ASSERT_TRUE(send_bytes(*t.tap, tcp4(t.tap_mac, t.guest_ip, t.host_ip,
                                        {.sport = gport, .dport = port, .seq = isn, .flags = kSyn}, {})));
    auto synack = rx.wait_for([&](const Bytes& f) {
        auto v = parse_tcp4(f);
        return v && v->sport == port && v->dport == gport && (v->flags & (kSyn | kAck)) == (kSyn | kAck);
    });
    ASSERT_TRUE(synack) << "no SYN-ACK from the host";
    const uint32_t hseq = parse_tcp4(*synack)->seq + 1;
    ASSERT_TRUE(send_bytes(*t.tap, tcp4(t.tap_mac, t.guest_ip, t.host_ip,
                                        {.sport = gport, .dport = port, .seq = isn + 1, .ack = hseq, .flags = kAck},
                                        {})));
    ASSERT_TRUE(readable(listener.get(), 5000));
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn.valid());
    const Bytes big = pattern(3000, 3);
    Bytes g = tcp4(t.tap_mac, t.guest_ip, t.host_ip,
                   {.sport = gport, .dport = port, .seq = isn + 1, .ack = hseq, .flags = kAck | kPsh}, big);
    Offload o = make_partial(g, 14, 34, 16, false);
    o.gso = Offload::Gso::Tcp4;
    o.gso_size = 1000;
    o.hdr_len = 54;
    ASSERT_TRUE(send_bytes(*t.tap, g, o));
    EXPECT_EQ(read_n(conn.get(), big.size()), big);
    t.tap->set_receiver(nullptr);
}

TEST(Tap, RejectsBadNamesAndOffsets) {
    BackendConfig c;
    c.kind = "tap";
    c.tap = std::string(IFNAMSIZ, 'x');
    EXPECT_EQ(make_backend(c).error().code(), Errc::Invalid);
    if (::geteuid() != 0) GTEST_SKIP() << "creating a tap needs root (CAP_NET_ADMIN)";
    c.tap = "";
    auto made = make_backend(c);
    ASSERT_TRUE(made) << made.error().message();
    Bytes f = udp4(kBroadcast, kGuestMac, 1, 2, 3, 4, pattern(10));
    Offload o;
    o.needs_csum = true;
    o.csum_start = static_cast<uint16_t>(f.size());
    o.csum_offset = 6;
    EXPECT_EQ(send_bytes(**made, f, o).error().code(), Errc::Invalid);
    o = {};
    o.gso = Offload::Gso::Tcp4;
    EXPECT_EQ(send_bytes(**made, f, o).error().code(), Errc::Invalid);
    EXPECT_EQ(send_bytes(**made, Bytes(5)).error().code(), Errc::Invalid);
    EXPECT_EQ((*made)->status().tx_dropped, 3u);
}

}  // namespace
