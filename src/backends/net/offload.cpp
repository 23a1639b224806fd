#include "backends/net/offload.hpp"

#include <algorithm>
#include <vector>

namespace enlighten::net {
namespace {

constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeIpv6 = 0x86dd;
constexpr uint16_t kEtherTypeVlan = 0x8100;
constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpPsh = 0x08;
constexpr uint8_t kTcpCwr = 0x80;

uint16_t get16(std::span<const uint8_t> b, size_t off) {
    return static_cast<uint16_t>((b[off] << 8) | b[off + 1]);
}
uint32_t get32(std::span<const uint8_t> b, size_t off) {
    return (uint32_t{b[off]} << 24) | (uint32_t{b[off + 1]} << 16) | (uint32_t{b[off + 2]} << 8) | b[off + 3];
}
void put16(std::span<uint8_t> b, size_t off, uint16_t v) {
    b[off] = static_cast<uint8_t>(v >> 8);
    b[off + 1] = static_cast<uint8_t>(v);
}
void put32(std::span<uint8_t> b, size_t off, uint32_t v) {
    b[off] = static_cast<uint8_t>(v >> 24);
    b[off + 1] = static_cast<uint8_t>(v >> 16);
    b[off + 2] = static_cast<uint8_t>(v >> 8);
    b[off + 3] = static_cast<uint8_t>(v);
}

// Where the IP packet and its L4 header lie in a frame; every offset is inside the frame.
struct IpLayout {
    size_t l3 = 0;      // IP header
    size_t l4 = 0;      // L4 header (IPv6: right after the fixed header)
    size_t ip_end = 0;  // end of the IP packet (before any Ethernet padding)
    bool v6 = false;
    uint8_t proto = 0;  // IPv4 protocol, IPv6 next header
    bool fragment = false;
};

Result<IpLayout> parse_ip(std::span<const uint8_t> f) {
    if (f.size() < 14) return fail(Errc::Invalid, "frame of {} bytes is shorter than an Ethernet header", f.size());
    IpLayout l;
    l.l3 = 14;
    uint16_t type = get16(f, 12);
    if (type == kEtherTypeVlan) {
        if (f.size() < 18) return fail(Errc::Invalid, "VLAN frame of {} bytes is truncated", f.size());
        type = get16(f, 16);
        l.l3 = 18;
    }
    if (type == kEtherTypeIpv4) {
        if (f.size() < l.l3 + 20) return fail(Errc::Invalid, "IPv4 header truncated ({} bytes)", f.size());
        if ((f[l.l3] >> 4) != 4) return fail(Errc::Invalid, "IPv4 ethertype with IP version {}", f[l.l3] >> 4);
        const size_t ihl = size_t{f[l.l3] & 0x0fu} * 4;
        if (ihl < 20) return fail(Errc::Invalid, "IPv4 header length {} < 20", ihl);
        l.l4 = l.l3 + ihl;
        if (l.l4 > f.size()) return fail(Errc::Invalid, "IPv4 header ({} bytes) beyond the frame", ihl);
        const size_t tot_len = get16(f, l.l3 + 2);
        if (tot_len == 0) {
            l.ip_end = f.size();  // netvsc's LSO form; the length is the frame's
        } else {
            if (tot_len < ihl || l.l3 + tot_len > f.size())
                return fail(Errc::Invalid, "IPv4 tot_len {} does not fit the frame ({} bytes)", tot_len, f.size());
            l.ip_end = l.l3 + tot_len;
        }
        l.proto = f[l.l3 + 9];
        l.fragment = (get16(f, l.l3 + 6) & 0x3fff) != 0;  // MF or a fragment offset
        return l;
    }
    if (type == kEtherTypeIpv6) {
        if (f.size() < l.l3 + 40) return fail(Errc::Invalid, "IPv6 header truncated ({} bytes)", f.size());
        if ((f[l.l3] >> 4) != 6) return fail(Errc::Invalid, "IPv6 ethertype with IP version {}", f[l.l3] >> 4);
        l.v6 = true;
        l.l4 = l.l3 + 40;
        const size_t payload_len = get16(f, l.l3 + 4);
        if (payload_len == 0) {
            l.ip_end = f.size();
        } else {
            if (l.l4 + payload_len > f.size())
                return fail(Errc::Invalid, "IPv6 payload_len {} does not fit the frame ({} bytes)", payload_len,
                            f.size());
            l.ip_end = l.l4 + payload_len;
        }
        l.proto = f[l.l3 + 6];
        return l;
    }
    return fail(Errc::Invalid, "ethertype {:#06x} is neither IPv4 nor IPv6", type);
}

}  // namespace

uint32_t csum_add(uint32_t sum, std::span<const uint8_t> data) {
    uint64_t s = sum;
    const size_t n = data.size();
    size_t i = 0;
    for (; i + 1 < n; i += 2) s += (uint32_t{data[i]} << 8) | data[i + 1];
    if (n & 1) s += uint32_t{data[n - 1]} << 8;
    while (s >> 32) s = (s & 0xffffffffu) + (s >> 32);
    return static_cast<uint32_t>(s);
}

uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffffu) + (sum >> 16);
    return static_cast<uint16_t>(~sum & 0xffffu);
}

Result<> complete_checksum(std::span<uint8_t> frame, const Offload& offload) {
    if (frame.size() > kMaxOffloadFrame)
        return fail(Errc::Invalid, "frame of {} bytes is longer than {}", frame.size(), kMaxOffloadFrame);
    size_t end = frame.size();
    if (auto ip = parse_ip(frame)) end = ip->ip_end;  // padding is not summed
    const size_t start = offload.csum_start;
    const size_t field = start + offload.csum_offset;
    if (start >= end || field + 2 > end)
        return fail(Errc::Invalid, "checksum at {}+{} lies outside the {}-byte packet", start, offload.csum_offset,
                    end);
    uint16_t v = csum_fold(csum_add(0, frame.subspan(start, end - start)));
    if (v == 0) v = 0xffff;
    put16(frame, field, v);
    return {};
}

Result<size_t> segment_tcp(std::span<const uint8_t> frame, const Offload& offload,
                           const std::function<void(std::span<const uint8_t>)>& emit) {
    if (offload.gso != Offload::Gso::Tcp4 && offload.gso != Offload::Gso::Tcp6)
        return fail(Errc::Invalid, "not a TCP GSO frame");
    if (frame.size() > kMaxOffloadFrame)
        return fail(Errc::Invalid, "GSO frame of {} bytes is longer than {}", frame.size(), kMaxOffloadFrame);
    ENL_TRY(const IpLayout ip, parse_ip(frame));
    const bool want_v6 = offload.gso == Offload::Gso::Tcp6;
    if (ip.v6 != want_v6) return fail(Errc::Invalid, "GSO {} on an {} frame", want_v6 ? "TCPv6" : "TCPv4",
                                      ip.v6 ? "IPv6" : "IPv4");
    if (ip.proto != kProtoTcp) return fail(Errc::Invalid, "GSO frame carries IP protocol {}, not TCP", ip.proto);
    if (ip.fragment) return fail(Errc::Invalid, "GSO frame is an IPv4 fragment");
    if (offload.needs_csum && (offload.csum_start != ip.l4 || offload.csum_offset != 16))
        return fail(Errc::Invalid, "GSO frame's checksum at {}+{} is not the TCP checksum at {}+16",
                    offload.csum_start, offload.csum_offset, ip.l4);
    if (ip.l4 + 20 > ip.ip_end) return fail(Errc::Invalid, "TCP header truncated");
    const size_t tcp_hdr = (size_t{frame[ip.l4 + 12]} >> 4) * 4;
    if (tcp_hdr < 20) return fail(Errc::Invalid, "TCP header length {} < 20", tcp_hdr);
    const size_t hdr_end = ip.l4 + tcp_hdr;
    if (hdr_end > ip.ip_end) return fail(Errc::Invalid, "TCP header ({} bytes) beyond the IP packet", tcp_hdr);
    // Every segment's IP length must fit 16 bits (a tot_len of 0 takes the frame's length).
    const size_t ip_len = ip.v6 ? ip.ip_end - ip.l4 : ip.ip_end - ip.l3;
    if (ip_len > 0xffff) return fail(Errc::Invalid, "IP packet of {} bytes", ip_len);
    const size_t mss = offload.gso_size;
    if (mss == 0) return fail(Errc::Invalid, "GSO frame with gso_size 0");
    const size_t payload = ip.ip_end - hdr_end;
    const size_t nseg = payload == 0 ? 1 : (payload + mss - 1) / mss;
    if (nseg > kMaxGsoSegments)
        return fail(Errc::Invalid, "GSO frame of {} payload bytes at MSS {} is {} segments (at most {})", payload, mss,
                    nseg, kMaxGsoSegments);

    const uint16_t id0 = ip.v6 ? 0 : get16(frame, ip.l3 + 4);
    const uint32_t seq0 = get32(frame, ip.l4 + 4);
    const uint8_t flags0 = frame[ip.l4 + 13];
    std::vector<uint8_t> seg(hdr_end + std::min(mss, payload));
    std::copy_n(frame.begin(), hdr_end, seg.begin());
    const std::span<uint8_t> s(seg);
    for (size_t i = 0; i < nseg; ++i) {
        const size_t off = i * mss;
        const size_t len = std::min(mss, payload - off);
        std::copy_n(frame.begin() + static_cast<ptrdiff_t>(hdr_end + off), len,
                    seg.begin() + static_cast<ptrdiff_t>(hdr_end));
        const size_t tcp_len = tcp_hdr + len;
        uint32_t pseudo = 0;
        if (ip.v6) {
            put16(s, ip.l3 + 4, static_cast<uint16_t>(tcp_len));
            pseudo = csum_add(0, s.subspan(ip.l3 + 8, 32));  // source and destination
            pseudo += static_cast<uint32_t>(tcp_len) + kProtoTcp;
        } else {
            const size_t ihl = ip.l4 - ip.l3;
            put16(s, ip.l3 + 2, static_cast<uint16_t>(ihl + tcp_len));
            put16(s, ip.l3 + 4, static_cast<uint16_t>(id0 + i));
            put16(s, ip.l3 + 10, 0);
            put16(s, ip.l3 + 10, csum_fold(csum_add(0, s.subspan(ip.l3, ihl))));
            pseudo = csum_add(0, s.subspan(ip.l3 + 12, 8));
            pseudo += static_cast<uint32_t>(tcp_len) + kProtoTcp;
        }
        put32(s, ip.l4 + 4, seq0 + static_cast<uint32_t>(off));
        uint8_t flags = flags0;
        if (i + 1 < nseg) flags &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
        if (i > 0) flags &= static_cast<uint8_t>(~kTcpCwr);
        s[ip.l4 + 13] = flags;
        put16(s, ip.l4 + 16, 0);
        put16(s, ip.l4 + 16, csum_fold(csum_add(pseudo, s.subspan(ip.l4, tcp_len))));
        emit(s.first(hdr_end + len));
    }
    return nseg;
}

Result<size_t> finish_frame(std::span<uint8_t> frame, const Offload& offload,
                            const std::function<void(std::span<const uint8_t>)>& emit) {
    if (offload.gso != Offload::Gso::None) return segment_tcp(frame, offload, emit);
    if (offload.needs_csum) ENL_TRY_VOID(complete_checksum(frame, offload));
    emit(frame);
    return 1;
}

}  // namespace enlighten::net
