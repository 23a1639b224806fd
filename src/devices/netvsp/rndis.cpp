#include "devices/netvsp/rndis.hpp"

#include <algorithm>
#include <cctype>
#include <string>
#include <cstring>

namespace enlighten::netvsp {

namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
void put_be16(uint8_t* p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v >> 8);
    p[1] = static_cast<uint8_t>(v);
}

// The ones' complement sum of big-endian 16-bit words (an odd last byte padded with zero).
uint64_t sum16(std::span<const uint8_t> b, uint64_t sum = 0) {
    size_t i = 0;
    for (; i + 1 < b.size(); i += 2) sum += be16(b.data() + i);
    if (i < b.size()) sum += uint64_t{b[i]} << 8;
    return sum;
}
uint16_t fold(uint64_t sum) {
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return static_cast<uint16_t>(sum);
}

// Where the L3 header starts and its ethertype (one 802.1Q tag skipped); nullopt if short.
struct L3 {
    size_t off;
    uint16_t ethertype;
};
std::optional<L3> l3_of(std::span<const uint8_t> f) {
    if (f.size() < 14) return std::nullopt;
    uint16_t et = be16(f.data() + 12);
    size_t off = 14;
    if (et == 0x8100) {
        if (f.size() < 18) return std::nullopt;
        et = be16(f.data() + 16);
        off = 18;
    }
    return L3{off, et};
}

template <typename T>
void append(std::vector<uint8_t>& out, const T& v) {
    // resize + memcpy rather than insert(): GCC 12 at -O3 reports a false stringop-overflow
    // in the inlined insert of a small fixed-size span.
    const size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
}

}  // namespace

// ---------------------------------------------------------------------------- SgSource

SgSource::SgSource(std::span<const iovec> segments) : segs_(segments) {
    for (const auto& s : segs_) size_ += s.iov_len;
}

bool SgSource::read(size_t off, std::span<uint8_t> out) const {
    if (off > size_ || out.size() > size_ - off) return false;
    size_t done = 0;
    for (const auto& s : segs_) {
        if (done == out.size()) break;
        if (off >= s.iov_len) {
            off -= s.iov_len;
            continue;
        }
        const size_t n = std::min(s.iov_len - off, out.size() - done);
        std::memcpy(out.data() + done, static_cast<const uint8_t*>(s.iov_base) + off, n);
        done += n;
        off = 0;
    }
    return done == out.size();
}

bool SgSource::slice(size_t off, size_t len, std::vector<iovec>& out) const {
    if (off > size_ || len > size_ - off) return false;
    for (const auto& s : segs_) {
        if (len == 0) break;
        if (off >= s.iov_len) {
            off -= s.iov_len;
            continue;
        }
        const size_t n = std::min(s.iov_len - off, len);
        out.push_back({static_cast<uint8_t*>(s.iov_base) + off, n});
        len -= n;
        off = 0;
    }
    return len == 0;
}

Result<uint32_t> walk_rndis(const SgSource& src, uint32_t max_messages,
                            const std::function<void(uint32_t, size_t, uint32_t)>& fn) {
    size_t off = 0;
    uint32_t n = 0;
    while (off < src.size()) {
        if (n == max_messages) return fail(Errc::Invalid, "more than {} RNDIS messages in one packet", max_messages);
        const auto h = src.read_obj<RndisHeader>(off);
        if (!h) return fail(Errc::Invalid, "{} trailing bytes are no RNDIS message", src.size() - off);
        // msg_len >= 8 makes every step advance: the walk ends after at most size/8 steps.
        if (h->msg_len < sizeof(RndisHeader) || h->msg_len > src.size() - off)
            return fail(Errc::Invalid, "RNDIS msg_len {} at {} with {} bytes left", h->msg_len, off, src.size() - off);
        fn(h->msg_type, off, h->msg_len);
        off += h->msg_len;
        ++n;
    }
    return n;
}

// ---------------------------------------------------------------------------- PPIs

Result<TxPpis> parse_ppis(std::span<const uint8_t> area) {
    TxPpis out;
    size_t pos = 0;
    for (uint32_t count = 0; pos < area.size(); ++count) {
        if (count == 32) return fail(Errc::Invalid, "more than 32 PPIs");
        const size_t left = area.size() - pos;
        const auto p = read_prefix<Ppi>(area.subspan(pos));
        if (!p) return fail(Errc::Invalid, "{} bytes left are no PPI", left);
        if (p->size < sizeof(Ppi) || p->size > left)
            return fail(Errc::Invalid, "PPI size {} with {} bytes left", p->size, left);
        if (p->ppi_offset < sizeof(Ppi) || p->ppi_offset > p->size)
            return fail(Errc::Invalid, "PPI offset {} in a {}-byte PPI", p->ppi_offset, p->size);
        std::optional<uint32_t>* slot = nullptr;
        switch (p->type) {
            case ppi::kChecksum: slot = &out.csum; break;
            case ppi::kLso: slot = &out.lso; break;
            case ppi::kVlan: slot = &out.vlan; break;
            case ppi::kHash: slot = &out.hash; break;
            default: break;  // unknown and internal PPIs: skipped
        }
        if (slot) {
            if (p->size - p->ppi_offset < 4)
                return fail(Errc::Invalid, "PPI type {} too small for its payload", p->type);
            uint32_t v;
            std::memcpy(&v, area.data() + pos + p->ppi_offset, 4);
            *slot = v;
        }
        pos += p->size;
    }
    return out;
}

Result<TxPacket> parse_tx_packet(const SgSource& src, size_t off, uint32_t msg_len) {
    if (msg_len < sizeof(RndisPacket)) return fail(Errc::Invalid, "RNDIS PACKET of {} bytes", msg_len);
    const auto h = src.read_obj<RndisPacket>(off);
    if (!h) return fail(Errc::Invalid, "RNDIS PACKET outside the stream");
    if (h->oob_data_offset || h->oob_data_len || h->num_oob_data_elements || h->vc_handle)
        return fail(Errc::Invalid, "RNDIS PACKET with OOB data or a VC handle");
    const uint64_t body = msg_len - 8u;  // offsets count from byte 8
    if (h->data_offset < kRndisPacketBody || uint64_t{h->data_offset} + h->data_len > body)
        return fail(Errc::Invalid, "RNDIS data {}+{} outside a {}-byte message", h->data_offset, h->data_len, msg_len);
    TxPacket out;
    out.frame_off = off + 8 + h->data_offset;
    out.frame_len = h->data_len;
    if (h->ppi_len) {
        if (h->ppi_offset < kRndisPacketBody || uint64_t{h->ppi_offset} + h->ppi_len > h->data_offset)
            return fail(Errc::Invalid, "PPIs {}+{} not between the header and the data at {}", h->ppi_offset,
                        h->ppi_len, h->data_offset);
        if (h->ppi_len > 1024) return fail(Errc::Invalid, "{} bytes of PPIs", h->ppi_len);
        uint8_t area[1024];
        if (!src.read(off + 8 + h->ppi_offset, std::span(area, h->ppi_len)))
            return fail(Errc::Invalid, "PPIs outside the stream");
        ENL_TRY(out.ppis, parse_ppis(std::span<const uint8_t>(area, h->ppi_len)));
    }
    return out;
}

// ---------------------------------------------------------------------------- offloads

TxPlan plan_tx(const TxPpis& p, const net::Capabilities& caps) {
    TxPlan plan;
    if (p.vlan || p.lso) plan.copy = true;
    if (p.csum && (*p.csum & (ppi::kTxTcp | ppi::kTxUdp)) && !caps.tx_csum) plan.copy = true;
    return plan;
}

Result<> complete_checksum(std::span<uint8_t> frame, uint16_t csum_start, uint16_t csum_offset) {
    if (size_t{csum_start} + csum_offset + 2 > frame.size())
        return fail(Errc::Invalid, "checksum at {}+{} outside a {}-byte frame", csum_start, csum_offset, frame.size());
    uint16_t c = static_cast<uint16_t>(~fold(sum16(frame.subspan(csum_start))));
    if (c == 0 && csum_offset == 6) c = 0xFFFF;  // UDP: 0 means "no checksum"
    put_be16(frame.data() + csum_start + csum_offset, c);
    return {};
}

namespace {

// netvsc's LSO form -> virtio's: consistent IP lengths, IPv4 header checksum, TCP seed over
// the full length (net.hpp; contract §11.2).
Result<net::Offload> lso_fixup(uint32_t v, std::span<uint8_t> f) {
    const uint32_t mss = v & 0xFFFFF;
    const size_t th = (v >> 20) & 0x3FF;
    const bool ipv6 = v >> 31;
    if (mss == 0 || mss > 0xFFFF) return fail(Errc::Invalid, "LSO mss {}", mss);
    const auto l3 = l3_of(f);
    if (!l3) return fail(Errc::Invalid, "LSO frame of {} bytes", f.size());
    if (th + 20 > f.size() || th <= l3->off) return fail(Errc::Invalid, "LSO TCP header at {} of {}", th, f.size());
    const size_t thl = static_cast<size_t>(f[th + 12] >> 4) * 4;
    if (thl < 20 || th + thl > f.size()) return fail(Errc::Invalid, "LSO TCP header length {}", thl);
    const size_t tcp_len = f.size() - th;
    uint64_t pseudo = 0;
    uint8_t* ip = f.data() + l3->off;
    if (!ipv6) {
        if (l3->ethertype != 0x0800 || l3->off + 20 > th) return fail(Errc::Invalid, "LSO IPv4 frame is not IPv4");
        const size_t ihl = static_cast<size_t>(ip[0] & 0xF) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20 || l3->off + ihl != th || ip[9] != 6)
            return fail(Errc::Invalid, "LSO IPv4 header (ihl {}, proto {})", ihl, ip[9]);
        const size_t tot = f.size() - l3->off;
        if (tot > 0xFFFF) return fail(Errc::Invalid, "LSO IPv4 frame of {} bytes", f.size());
        put_be16(ip + 2, static_cast<uint16_t>(tot));
        put_be16(ip + 10, 0);
        put_be16(ip + 10, static_cast<uint16_t>(~fold(sum16(std::span(ip, ihl)))));
        pseudo = sum16(std::span(ip + 12, 8)) + 6 + tcp_len;
    } else {
        if (l3->ethertype != 0x86DD || l3->off + 40 > th || (ip[0] >> 4) != 6)
            return fail(Errc::Invalid, "LSO IPv6 frame is not IPv6");
        const size_t payload = f.size() - l3->off - 40;
        if (payload > 0xFFFF) return fail(Errc::Invalid, "LSO IPv6 frame of {} bytes", f.size());
        put_be16(ip + 4, static_cast<uint16_t>(payload));
        pseudo = sum16(std::span(ip + 8, 32)) + 6 + (tcp_len >> 16) + (tcp_len & 0xFFFF);
    }
    put_be16(f.data() + th + 16, fold(pseudo));
    net::Offload o;
    o.needs_csum = true;
    o.csum_start = static_cast<uint16_t>(th);
    o.csum_offset = 16;
    o.gso = ipv6 ? net::Offload::Gso::Tcp6 : net::Offload::Gso::Tcp4;
    o.gso_size = static_cast<uint16_t>(mss);
    o.hdr_len = static_cast<uint16_t>(th + thl);
    return o;
}

}  // namespace

Result<net::Offload> tx_offload(const TxPpis& p, uint32_t frame_len, std::vector<uint8_t>* frame,
                                const net::Capabilities& caps) {
    net::Offload o;
    if (p.lso) {
        if (!caps.tx_tso) return fail(Errc::Unsupported, "LSO, which the backend cannot carry");
        if (!frame) return fail(Errc::Invalid, "LSO without a copy");
        ENL_TRY(o, lso_fixup(*p.lso, *frame));
    } else if (p.csum && (*p.csum & (ppi::kTxTcp | ppi::kTxUdp))) {
        const uint32_t v = *p.csum;
        const uint16_t th = (v >> 16) & 0x3FF;
        const uint16_t off = (v & ppi::kTxTcp) ? 16 : 6;
        if (th < 14 || uint32_t{th} + off + 2 > frame_len)
            return fail(Errc::Invalid, "checksum PPI: L4 at {} in a {}-byte frame", th, frame_len);
        if (caps.tx_csum) {
            o.needs_csum = true;
            o.csum_start = th;
            o.csum_offset = off;
        } else {
            if (!frame) return fail(Errc::Invalid, "software checksum without a copy");
            ENL_TRY_VOID(complete_checksum(*frame, th, off));
        }
    }
    if (p.vlan) {
        if (!frame || frame->size() < 14) return fail(Errc::Invalid, "VLAN PPI on a short frame");
        const uint32_t v = *p.vlan;
        const uint16_t tci = static_cast<uint16_t>((v & 7) << 13 | ((v >> 3) & 1) << 12 | ((v >> 4) & 0xFFF));
        const uint8_t tag[4] = {0x81, 0x00, static_cast<uint8_t>(tci >> 8), static_cast<uint8_t>(tci)};
        frame->insert(frame->begin() + 12, tag, tag + 4);
        if (o.needs_csum) o.csum_start = static_cast<uint16_t>(o.csum_start + 4);
        if (o.gso != net::Offload::Gso::None) o.hdr_len = static_cast<uint16_t>(o.hdr_len + 4);
    }
    return o;
}

// ---------------------------------------------------------------------------- RX

size_t build_rx_header(std::span<uint8_t, kMaxRxHeader> out, uint32_t frame_len, const RxMeta& meta) {
    uint32_t ppi_len = 0;
    auto put_ppi = [&](uint32_t type, uint32_t value) {
        const Ppi32 p{{sizeof(Ppi32), type, sizeof(Ppi)}, value};
        std::memcpy(out.data() + sizeof(RndisPacket) + ppi_len, &p, sizeof(p));
        ppi_len += sizeof(Ppi32);
    };
    if (meta.csum) put_ppi(ppi::kChecksum, *meta.csum);
    if (meta.hash) put_ppi(ppi::kHash, *meta.hash);
    RndisPacket h{};
    h.hdr.msg_type = rndis::kMsgPacket;
    h.hdr.msg_len = static_cast<uint32_t>(sizeof(RndisPacket)) + ppi_len + frame_len;
    h.data_offset = kRndisPacketBody + ppi_len;
    h.data_len = frame_len;
    // Without PPIs the offset is 0: the guest's rndis_get_ppi() skips a packet whose offset is
    // 0, but logs "Invalid per_pkt_info_len: 0" for one with an offset and no PPIs (seen with
    // the 6.1 guest; contract-network §3.6 had it the other way).
    h.ppi_offset = ppi_len ? kRndisPacketBody : 0;
    h.ppi_len = ppi_len;
    std::memcpy(out.data(), &h, sizeof(h));
    return sizeof(RndisPacket) + ppi_len;
}

uint32_t rx_csum_ok_bits(std::span<const uint8_t> f) {
    const auto l3 = l3_of(f);
    if (!l3) return 0;
    if (l3->ethertype == 0x0800 && l3->off + 20 <= f.size()) {
        const uint8_t proto = f[l3->off + 9];
        return ppi::kRxIpOk | (proto == 6 ? ppi::kRxTcpOk : proto == 17 ? ppi::kRxUdpOk : 0);
    }
    if (l3->ethertype == 0x86DD && l3->off + 40 <= f.size()) {
        const uint8_t next = f[l3->off + 6];
        return next == 6 ? ppi::kRxTcpOk : next == 17 ? ppi::kRxUdpOk : 0;
    }
    return 0;
}

// ---------------------------------------------------------------------------- RSS

const std::array<uint8_t, kRssKeySize> kDefaultRssKey = {
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
    0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
    0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

uint32_t toeplitz(std::span<const uint8_t> key, std::span<const uint8_t> input) {
    auto key_bit = [&](size_t i) -> uint32_t {
        return i / 8 < key.size() ? static_cast<uint32_t>(key[i / 8] >> (7 - i % 8)) & 1u : 0u;
    };
    uint32_t window = 0;
    for (size_t i = 0; i < 32; ++i) window = window << 1 | key_bit(i);
    uint32_t result = 0;
    for (size_t i = 0; i < input.size() * 8; ++i) {
        if ((input[i / 8] >> (7 - i % 8)) & 1) result ^= window;
        window = window << 1 | key_bit(i + 32);
    }
    return result;
}

std::optional<uint32_t> rss_hash(std::span<const uint8_t> f, std::span<const uint8_t> key, uint32_t hashinfo) {
    const auto l3 = l3_of(f);
    if (!l3) return std::nullopt;
    uint8_t in[36];
    size_t n = 0;
    if (l3->ethertype == 0x0800 && (hashinfo & (kRssHashIpv4 | kRssHashTcpIpv4)) && l3->off + 20 <= f.size()) {
        const uint8_t* ip = f.data() + l3->off;
        const size_t ihl = static_cast<size_t>(ip[0] & 0xF) * 4;
        std::memcpy(in, ip + 12, 8);
        n = 8;
        const bool fragment = (be16(ip + 6) & 0x3FFF) != 0;
        if (ip[9] == 6 && !fragment && (hashinfo & kRssHashTcpIpv4) && ihl >= 20 && l3->off + ihl + 4 <= f.size()) {
            std::memcpy(in + 8, ip + ihl, 4);
            n = 12;
        } else if (!(hashinfo & kRssHashIpv4)) {
            return std::nullopt;
        }
    } else if (l3->ethertype == 0x86DD && (hashinfo & (kRssHashIpv6 | kRssHashTcpIpv6)) && l3->off + 40 <= f.size()) {
        const uint8_t* ip = f.data() + l3->off;
        std::memcpy(in, ip + 8, 32);
        n = 32;
        if (ip[6] == 6 && (hashinfo & kRssHashTcpIpv6) && l3->off + 44 <= f.size()) {
            std::memcpy(in + 32, ip + 40, 4);
            n = 36;
        } else if (!(hashinfo & kRssHashIpv6)) {
            return std::nullopt;
        }
    } else {
        return std::nullopt;
    }
    return toeplitz(key, std::span<const uint8_t>(in, n));
}

// ---------------------------------------------------------------------------- control

std::vector<uint8_t> offload_caps(uint32_t nvsp_version, const net::Capabilities& caps) {
    NdisOffload o{};
    o.header.type = kNdisOffloadType;
    uint16_t size = kNdisOffloadSizeRev1;
    o.header.revision = 1;
    if (nvsp_version >= nvsp::kVersion5) size = kNdisOffloadSizeRev3, o.header.revision = 3;
    else if (nvsp_version >= nvsp::kVersion4) size = kNdisOffloadSizeRev2, o.header.revision = 2;
    o.header.size = size;
    if (caps.tx_csum) {
        o.ip4_txcsum = o.ip4_rxcsum = kCsumAll;
        o.ip6_txcsum = o.ip6_rxcsum = kCsumAll;
        if (caps.tx_tso) {
            o.lsov2_ip4_encap = o.lsov2_ip6_encap = kLsoEncap8023;
            o.lsov2_ip4_maxsz = o.lsov2_ip6_maxsz = kLsoMaxSize;
            o.lsov2_ip4_minsg = o.lsov2_ip6_minsg = 2;
            o.lsov2_ip6_opts = 0x5;
        }
    }
    const auto b = as_bytes(o);
    return {b.begin(), b.begin() + size};
}

std::vector<uint8_t> make_indicate(uint32_t status) {
    RndisIndicate m{{rndis::kMsgIndicate, sizeof(RndisIndicate)}, status, 0, 0};
    std::vector<uint8_t> out;
    append(out, m);
    return out;
}

namespace {

std::vector<uint8_t> query_reply(uint32_t req_id, std::span<const uint8_t> data) {
    RndisQueryComplete c{{rndis::kMsgQueryC, static_cast<uint32_t>(sizeof(RndisQueryComplete) + data.size())}, req_id,
                         rndis::kStatusSuccess, static_cast<uint32_t>(data.size()), 16};
    // One allocation, filled with memcpy (a vector insert after the header makes GCC 12 at -O3
    // report a false array-bounds overflow).
    std::vector<uint8_t> out(sizeof(c) + data.size());
    std::memcpy(out.data(), &c, sizeof(c));
    if (!data.empty()) std::memcpy(out.data() + sizeof(c), data.data(), data.size());
    return out;
}
// The failure form the guest honours: NOT_SUPPORTED, no data, offset 0 (§3.2).
std::vector<uint8_t> query_failure(uint32_t req_id) {
    RndisQueryComplete c{{rndis::kMsgQueryC, sizeof(RndisQueryComplete)}, req_id, rndis::kStatusNotSupported, 0, 0};
    std::vector<uint8_t> out;
    append(out, c);
    return out;
}
std::vector<uint8_t> set_reply(uint32_t req_id, uint32_t status) {
    RndisSetComplete c{{rndis::kMsgSetC, sizeof(RndisSetComplete)}, req_id, status};
    std::vector<uint8_t> out;
    append(out, c);
    return out;
}

std::vector<uint8_t> answer_query(const RndisState&, const NicConfig& cfg, uint32_t req_id, uint32_t oid) {
    auto u32 = [&](uint32_t v) { return query_reply(req_id, as_bytes(v)); };
    switch (oid) {
        case rndis::kOidMaxFrameSize:
            return u32(std::min<uint32_t>(cfg.mtu - 14, cfg.caps.max_mtu));
        case rndis::kOidPermanentAddress:
        case rndis::kOidCurrentAddress: return query_reply(req_id, cfg.mac);
        case rndis::kOidMediaConnectStatus: return u32(cfg.link_up ? 0 : 1);
        case rndis::kOidLinkSpeed: return u32(100'000'000);  // 10 Gb/s in 100 bps units
        case rndis::kOidOffloadHwCaps: return query_reply(req_id, offload_caps(cfg.nvsp_version, cfg.caps));
        case rndis::kOidRssCapabilities: {
            if (cfg.nvsp_version < nvsp::kVersion5 || cfg.max_queues < 2) return query_failure(req_id);
            NdisRssCaps c{};
            c.header = {kNdisRssCapsType, 2, sizeof(NdisRssCaps)};
            c.cap_flag = 0x301;
            c.num_int_msg = cfg.max_queues;
            c.num_recv_que = cfg.max_queues;
            c.num_indirect_tabent = kRssTableEntries;
            return query_reply(req_id, as_bytes(c));
        }
        default: return query_failure(req_id);  // FRIENDLY_NAME and the rest
    }
}

// OID_GEN_RSS_PARAMETERS (§5, §8). Returns the RNDIS status.
uint32_t set_rss(RndisState& st, const NicConfig& cfg, std::span<const uint8_t> info, ControlResult& r) {
    const auto p = read_prefix<NdisRssParams>(info);
    if (!p || p->header.type != kNdisRssParamsType) return rndis::kStatusInvalidData;
    if (p->flag & kRssFlagDisable) {
        st.rss_enabled = false;
        r.rss_changed = true;
        return rndis::kStatusSuccess;
    }
    const uint32_t entries = p->indirect_tabsize / 4u;
    if (p->indirect_tabsize % 4 || entries == 0 || entries > kRssMaxEntries ||
        uint64_t{p->indirect_taboffset} + p->indirect_tabsize > info.size() || p->hashkey_size != kRssKeySize ||
        uint64_t{p->hashkey_offset} + kRssKeySize > info.size())
        return rndis::kStatusInvalidData;
    std::vector<uint32_t> table(entries);
    std::memcpy(table.data(), info.data() + p->indirect_taboffset, entries * 4u);
    for (uint32_t q : table)
        if (q >= std::max<uint32_t>(cfg.max_queues, 1)) return rndis::kStatusInvalidData;
    st.rss_table = std::move(table);
    std::memcpy(st.rss_key.data(), info.data() + p->hashkey_offset, kRssKeySize);
    st.hashinfo = p->hashinfo;
    st.rss_enabled = true;
    r.rss_changed = true;
    return rndis::kStatusSuccess;
}

// OID_GEN_RNDIS_CONFIG_PARAMETER (§3.5): "NetworkAddress" = 12 hex digits in UTF-16LE.
uint32_t set_config_parameter(std::span<const uint8_t> info, ControlResult& r) {
    struct Hdr {
        uint32_t name_offset, name_length, type, value_offset, value_length;
    };
    const auto h = read_prefix<Hdr>(info);
    if (!h || uint64_t{h->name_offset} + h->name_length > info.size() ||
        uint64_t{h->value_offset} + h->value_length > info.size())
        return rndis::kStatusInvalidData;
    auto utf16 = [&](uint32_t off, uint32_t len) {
        std::string s;
        for (uint32_t i = 0; i + 1 < len; i += 2) {
            const uint16_t c = static_cast<uint16_t>(info[off + i] | info[off + i + 1] << 8);
            if (c == 0) break;
            s.push_back(c < 0x80 ? static_cast<char>(c) : '?');
        }
        return s;
    };
    std::string name = utf16(h->name_offset, h->name_length);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (name != "networkaddress") return rndis::kStatusSuccess;  // other parameters: accepted, ignored
    const std::string v = utf16(h->value_offset, h->value_length);
    if (v.size() != 12) return rndis::kStatusInvalidData;
    std::array<uint8_t, 6> mac{};
    for (size_t i = 0; i < 12; ++i) {
        const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(v[i])));
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return rndis::kStatusInvalidData;
        mac[i / 2] = static_cast<uint8_t>(mac[i / 2] << 4 | d);
    }
    if ((mac[0] & 1) || mac == std::array<uint8_t, 6>{}) return rndis::kStatusInvalidData;
    r.new_mac = mac;
    return rndis::kStatusSuccess;
}

uint32_t apply_set(RndisState& st, const NicConfig& cfg, uint32_t oid, std::span<const uint8_t> info,
                   ControlResult& r) {
    switch (oid) {
        case rndis::kOidPacketFilter: {
            if (info.size() != 4) return rndis::kStatusInvalidLength;
            uint32_t f;
            std::memcpy(&f, info.data(), 4);
            if (f != st.filter) r.filter_changed = true;
            st.filter = f;
            return rndis::kStatusSuccess;
        }
        case rndis::kOidOffloadParameters: {
            if (info.size() < sizeof(NdisObjectHeader)) return rndis::kStatusInvalidLength;
            const auto p = read_padded<NdisOffloadParams>(info);
            // 0 = no change; checksum 2/4 = TX enabled; LSO 2 = enabled (§3.4). Masked by the caps.
            auto csum = [&](uint8_t v, bool& field) {
                if (v) field = cfg.caps.tx_csum && (v == 2 || v == 4);
            };
            bool c4 = st.tx_csum, c6 = st.tx_csum;
            csum(p.tcp_ip_v4_csum, c4);
            csum(p.tcp_ip_v6_csum, c6);
            st.tx_csum = c4 || c6;
            if (p.lso_v2_ipv4 || p.lso_v2_ipv6)
                st.tx_lso = cfg.caps.tx_tso && cfg.caps.tx_csum && (p.lso_v2_ipv4 == 2 || p.lso_v2_ipv6 == 2);
            return rndis::kStatusSuccess;
        }
        case rndis::kOidRssParameters: return set_rss(st, cfg, info, r);
        case rndis::kOidConfigParameter: return set_config_parameter(info, r);
        default: return rndis::kStatusSuccess;  // every other SET (§9)
    }
}

}  // namespace

ControlResult handle_control(RndisState& st, const NicConfig& cfg, std::span<const uint8_t> msg) {
    ControlResult r;
    const auto h = read_prefix<RndisHeader>(msg);
    if (!h || h->msg_len != msg.size()) {
        r.ok = false;
        return r;
    }
    switch (h->msg_type) {
        case rndis::kMsgInit: {
            const auto m = read_prefix<RndisInit>(msg);
            if (!m) break;
            RndisInitComplete c{};
            c.hdr = {rndis::kMsgInitC, sizeof(RndisInitComplete)};
            c.req_id = m->req_id;
            c.status = rndis::kStatusSuccess;
            c.major = 1;
            c.minor = 0;
            c.dev_flags = 1;  // connectionless
            c.medium = 0;     // 802.3
            c.max_pkt_per_msg = 8;
            c.max_xfer_size = 0xEFFFFFFF;
            c.pkt_align_factor = 3;
            append(r.response, c);
            st = RndisState{};
            st.initialized = true;
            r.filter_changed = true;
            return r;
        }
        case rndis::kMsgHalt:
            if (msg.size() < 12) break;
            st.initialized = false;
            st.halted = true;
            st.filter = 0;
            st.rss_enabled = false;
            r.halted = true;
            r.filter_changed = true;
            return r;
        case rndis::kMsgQuery:
        case rndis::kMsgSet: {
            const auto q = read_prefix<RndisQuery>(msg);
            if (!q) break;
            const uint64_t body = msg.size() - 8;
            const bool inside =
                q->info_buflen == 0 || (q->info_buf_offset >= 20 && uint64_t{q->info_buf_offset} + q->info_buflen <= body);
            if (h->msg_type == rndis::kMsgQuery) {
                r.response = inside ? answer_query(st, cfg, q->req_id, q->oid) : query_failure(q->req_id);
                return r;
            }
            const auto info = inside && q->info_buflen ? msg.subspan(8 + q->info_buf_offset, q->info_buflen)
                                                        : std::span<const uint8_t>{};
            const uint32_t status = inside ? apply_set(st, cfg, q->oid, info, r) : rndis::kStatusInvalidData;
            r.response = set_reply(q->req_id, status);
            return r;
        }
        case rndis::kMsgReset: {
            RndisResetComplete c{{rndis::kMsgResetC, sizeof(RndisResetComplete)}, rndis::kStatusSuccess, 0};
            append(r.response, c);
            return r;
        }
        case rndis::kMsgKeepalive: {
            if (msg.size() < 12) break;
            uint32_t req_id;
            std::memcpy(&req_id, msg.data() + 8, 4);
            RndisSetComplete c{{rndis::kMsgKeepaliveC, sizeof(RndisSetComplete)}, req_id, rndis::kStatusSuccess};
            append(r.response, c);
            return r;
        }
        default: break;
    }
    r.ok = false;
    return r;
}

}  // namespace enlighten::netvsp
