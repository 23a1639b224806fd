// Fuzzes netvsp's pure RNDIS code (devices/netvsp/rndis.hpp) with what a hostile guest
// controls: a TX byte stream cut into segments at fuzzer-chosen places (the send section
// part and GPA ranges of contract-network §4.1), every RNDIS PACKET in it parsed, its PPIs
// walked and turned into net::Offload with the frame fixed up; a run of control messages
// against one RNDIS state; and RSS hashing / RX checksum bits over arbitrary frames.
//
// Traps if a parsed frame lies outside the stream, if a control response is not a complete
// RNDIS message the guest accepts (msg_len == size, <= 4148), if a QUERY failure is not the
// failure form, if an RX header's PPIs do not walk exactly, or if an offload points outside
// its frame.
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/log.hpp"
#include "devices/netvsp/protocol.hpp"
#include "devices/netvsp/rndis.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::netvsp;

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

namespace {

void tx_stream(fuzz::Input& in, const net::Capabilities& caps) {
    const auto bytes = in.take_bytes(70000);
    std::vector<uint8_t> stream(bytes.begin(), bytes.end());
    std::vector<iovec> segs;
    size_t at = 0;
    while (at < stream.size()) {
        const size_t n = std::min<size_t>(stream.size() - at, 1 + (stream[at] * 37u) % 4096);
        segs.push_back({stream.data() + at, n});
        at += n;
    }
    const SgSource src(segs);
    CHECK(src.size() == stream.size());
    (void)walk_rndis(src, 512, [&](uint32_t type, size_t off, uint32_t len) {
        CHECK(len >= 8 && off + len <= src.size());
        if (type != rndis::kMsgPacket) return;
        auto p = parse_tx_packet(src, off, len);
        if (!p) return;
        CHECK(p->frame_off + p->frame_len <= off + len);
        std::vector<uint8_t> frame(p->frame_len);
        CHECK(src.read(p->frame_off, frame));
        std::vector<iovec> sl;
        CHECK(src.slice(p->frame_off, p->frame_len, sl));
        CHECK(iov_total(sl) == p->frame_len);
        const TxPlan plan = plan_tx(p->ppis, caps);
        auto o = tx_offload(p->ppis, p->frame_len, plan.copy ? &frame : nullptr, caps);
        if (!o) return;
        const size_t flen = plan.copy ? frame.size() : p->frame_len;
        if (o->needs_csum) CHECK(size_t{o->csum_start} + o->csum_offset + 2 <= flen);
        if (o->gso != net::Offload::Gso::None) CHECK(o->hdr_len <= flen && o->gso_size > 0);
    });
}

void control_run(fuzz::Input& in) {
    RndisState st;
    NicConfig cfg;
    cfg.nvsp_version = in.take<uint8_t>() & 1 ? nvsp::kVersion61 : nvsp::kVersion4;
    cfg.max_queues = static_cast<uint16_t>(1 + in.take<uint8_t>() % 64);
    cfg.mtu = 1514 + in.take<uint16_t>() % 8000;
    cfg.caps = {true, true, 9000};
    for (int i = 0; i < 16 && !in.empty(); ++i) {
        const uint16_t len = in.take<uint16_t>() % 2048;
        auto raw = in.take_bytes(len);
        std::vector<uint8_t> msg(raw.begin(), raw.end());
        if (msg.size() >= 8) {
            // Usually a consistent msg_len, a real type and a real OID.
            const uint32_t l = static_cast<uint32_t>(msg.size());
            if (msg[0] & 1) std::memcpy(msg.data() + 4, &l, 4);
            if (msg[1] & 1) {
                const uint32_t types[] = {2, 3, 4, 5, 6, 8};
                std::memcpy(msg.data(), &types[msg[2] % 6], 4);
            }
            if (msg.size() >= 16 && (msg[1] & 2)) {
                const uint32_t oids[] = {rndis::kOidMaxFrameSize, rndis::kOidLinkSpeed, rndis::kOidPacketFilter,
                                         rndis::kOidMediaConnectStatus, rndis::kOidRssCapabilities,
                                         rndis::kOidRssParameters, rndis::kOidConfigParameter,
                                         rndis::kOidFriendlyName, rndis::kOidPermanentAddress,
                                         rndis::kOidOffloadParameters, rndis::kOidOffloadHwCaps};
                std::memcpy(msg.data() + 12, &oids[msg[3] % 11], 4);
            }
        }
        auto r = handle_control(st, cfg, msg);
        if (!r.response.empty()) {
            const auto h = read_prefix<RndisHeader>(r.response);
            CHECK(h && h->msg_len == r.response.size() && h->msg_len <= rndis::kMaxResponse);
            if (h->msg_type == rndis::kMsgQueryC) {
                const auto q = read_prefix<RndisQueryComplete>(r.response);
                CHECK(q);
                if (q->status != rndis::kStatusSuccess) CHECK(q->info_buf_offset == 0 && q->info_buflen == 0);
                else CHECK(q->info_buf_offset == 16 && 24 + q->info_buflen == q->hdr.msg_len);
            }
        }
        if (st.rss_enabled) {
            CHECK(!st.rss_table.empty() && st.rss_table.size() <= kRssMaxEntries);
            for (uint32_t q : st.rss_table) CHECK(q < cfg.max_queues);
        }
    }
}

void rx_frame(fuzz::Input& in) {
    const uint32_t hashinfo = in.take<uint32_t>();
    auto f = in.take_bytes(200);
    (void)rss_hash(f, kDefaultRssKey, hashinfo);
    const uint32_t bits = rx_csum_ok_bits(f);
    std::array<uint8_t, kMaxRxHeader> hdr{};
    RxMeta meta;
    if (bits) meta.csum = bits;
    if (hashinfo & 1) meta.hash = hashinfo;
    const size_t n = build_rx_header(hdr, static_cast<uint32_t>(f.size()), meta);
    const auto h = read_prefix<RndisPacket>(std::span<const uint8_t>(hdr.data(), n));
    CHECK(h && h->ppi_offset == (h->ppi_len ? 36u : 0u) && 44 + h->ppi_len == n);  // no PPIs: no offset
    auto p = parse_ppis(std::span<const uint8_t>(hdr.data() + 44, h->ppi_len));
    CHECK(p.has_value());
    std::vector<uint8_t> copy(f.begin(), f.end());
    if (copy.size() > 4) (void)complete_checksum(copy, copy[0], copy[1]);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::set_level(log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    const uint8_t mode = in.take<uint8_t>();
    const net::Capabilities caps{(mode & 0x10) != 0, (mode & 0x20) != 0, 9000};
    switch (mode % 3) {
        case 0: tx_stream(in, caps); break;
        case 1: control_run(in); break;
        default: rx_frame(in); break;
    }
    return 0;
}
