// The network VSP against the simulated guest and a fake backend: the NVSP/RNDIS bring-up as
// Linux 6.1's hv_netvsc runs it, TX in the three shapes of contract-network §4.1, RX
// through receive sections, link indications, vRSS sub-channels and steering, the MTU-change
// re-init (§6), and what a hostile guest can send (§8). The pure parsers (rndis.hpp) are
// tested directly too, with golden layouts.
#include <gtest/gtest.h>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "devices/netvsp/netvsp.hpp"
#include "devices/netvsp/protocol.hpp"
#include "devices/netvsp/rndis.hpp"
#include "support/sim_guest.hpp"

using namespace enlighten;
using namespace enlighten::netvsp;
using namespace enlighten::test;
using namespace std::chrono_literals;

namespace {

// ---------------------------------------------------------------------------- fake backend

class FakeBackend final : public net::Backend {
public:
    struct Sent {
        std::vector<uint8_t> frame;
        net::Offload offload;
    };
    explicit FakeBackend(net::Capabilities c) : caps_(c) {}
    [[nodiscard]] net::Capabilities capabilities() const override { return caps_; }
    Result<> send(std::span<const iovec> frame, const net::Offload& offload) override {
        LockGuard lock(mu_);
        Sent s;
        for (const auto& v : frame)
            s.frame.insert(s.frame.end(), static_cast<const uint8_t*>(v.iov_base),
                           static_cast<const uint8_t*>(v.iov_base) + v.iov_len);
        s.offload = offload;
        sent_.push_back(std::move(s));
        return {};
    }
    void set_receiver(net::Receiver* r) override {
        LockGuard lock(mu_);
        rx_ = r;
    }
    void set_mtu(uint32_t mtu) override {
        LockGuard lock(mu_);
        mtu_ = mtu;
    }
    [[nodiscard]] net::BackendStatus status() const override { return {"fake", "", 0, 0, 0, 0, 0, 0}; }

    std::vector<Sent> take() {
        LockGuard lock(mu_);
        return std::exchange(sent_, {});
    }
    net::Receiver* receiver() {
        LockGuard lock(mu_);
        return rx_;
    }
    uint32_t mtu() {
        LockGuard lock(mu_);
        return mtu_;
    }

private:
    const net::Capabilities caps_;
    mutable Mutex mu_;
    std::vector<Sent> sent_ ENL_GUARDED_BY(mu_);
    net::Receiver* rx_ ENL_GUARDED_BY(mu_) = nullptr;
    uint32_t mtu_ ENL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------- frames

uint16_t fold16(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return static_cast<uint16_t>(s);
}
uint64_t sum_be(const uint8_t* p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2) s += static_cast<uint64_t>(p[i] << 8 | p[i + 1]);
    if (n % 2) s += static_cast<uint64_t>(p[n - 1]) << 8;
    return s;
}
uint16_t get16(const std::vector<uint8_t>& f, size_t at) { return static_cast<uint16_t>(f[at] << 8 | f[at + 1]); }
void put16(std::vector<uint8_t>& f, size_t at, uint16_t v) {
    f[at] = static_cast<uint8_t>(v >> 8);
    f[at + 1] = static_cast<uint8_t>(v);
}

// Ethernet + IPv4 + TCP (+ payload), consistent unless `lso_form` (netvsc's LSO form:
// tot_len 0, header checksum 0, TCP seed over length 0).
std::vector<uint8_t> tcp4_frame(size_t payload, bool lso_form = false, uint32_t src = 0x0a000002,
                                uint32_t dst = 0x0a00020f, uint16_t sport = 1234, uint16_t dport = 80) {
    std::vector<uint8_t> f(14 + 20 + 20 + payload);
    for (size_t i = 0; i < 6; ++i) f[i] = 0x02, f[6 + i] = 0x04;
    put16(f, 12, 0x0800);
    f[14] = 0x45;
    put16(f, 16, lso_form ? 0 : static_cast<uint16_t>(40 + payload));
    f[22] = 64;
    f[23] = 6;
    for (size_t i = 0; i < 4; ++i) f[26 + i] = static_cast<uint8_t>(src >> (24 - 8 * i)), f[30 + i] = static_cast<uint8_t>(dst >> (24 - 8 * i));
    if (!lso_form) put16(f, 24, static_cast<uint16_t>(~fold16(sum_be(f.data() + 14, 20))));
    put16(f, 34, sport);
    put16(f, 36, dport);
    f[46] = 0x50;  // doff 5
    for (size_t i = 0; i < payload; ++i) f[54 + i] = static_cast<uint8_t>(i);
    const uint64_t pseudo = sum_be(f.data() + 26, 8) + 6 + (lso_form ? 0 : 20 + payload);
    put16(f, 50, fold16(pseudo));
    return f;
}

// One RNDIS PACKET message around a frame, PPIs given as {type, value}; padded to `align`.
std::vector<uint8_t> rndis_packet(const std::vector<uint8_t>& frame, std::vector<std::pair<uint32_t, uint32_t>> ppis = {},
                                  uint32_t align = 1) {
    const uint32_t ppi_len = static_cast<uint32_t>(16 * ppis.size());
    uint32_t len = 44 + ppi_len + static_cast<uint32_t>(frame.size());
    len = (len + align - 1) / align * align;
    std::vector<uint8_t> m(len);
    RndisPacket h{};
    h.hdr = {rndis::kMsgPacket, len};
    h.data_offset = 36 + ppi_len;
    h.data_len = static_cast<uint32_t>(frame.size());
    h.ppi_offset = 36;
    h.ppi_len = ppi_len;
    std::memcpy(m.data(), &h, sizeof(h));
    for (size_t i = 0; i < ppis.size(); ++i) {
        const Ppi32 p{{16, ppis[i].first, 12}, ppis[i].second};
        std::memcpy(m.data() + 44 + 16 * i, &p, 16);
    }
    std::memcpy(m.data() + 44 + ppi_len, frame.data(), frame.size());
    return m;
}

std::vector<uint8_t> rndis_query(uint32_t req_id, uint32_t oid, std::vector<uint8_t> info = {}, uint32_t type = rndis::kMsgQuery) {
    RndisQuery q{{type, static_cast<uint32_t>(28 + info.size())}, req_id, oid, static_cast<uint32_t>(info.size()), 20, 0};
    std::vector<uint8_t> m(sizeof(q) + info.size());  // (not insert(): GCC 12 -O3 false array-bounds)
    std::memcpy(m.data(), &q, sizeof(q));
    if (!info.empty()) std::memcpy(m.data() + sizeof(q), info.data(), info.size());
    return m;
}
std::vector<uint8_t> rndis_set(uint32_t req_id, uint32_t oid, std::vector<uint8_t> info) {
    return rndis_query(req_id, oid, std::move(info), rndis::kMsgSet);
}
template <typename T>
std::vector<uint8_t> bytes_of(const T& v) {
    const auto b = as_bytes(v);
    return {b.begin(), b.end()};
}
template <typename T>
T at(const std::vector<uint8_t>& b, size_t off) {
    T v{};
    std::memcpy(&v, b.data() + off, std::min(sizeof(T), b.size() > off ? b.size() - off : 0));
    return v;
}

std::vector<uint8_t> rss_params(uint16_t entries, uint16_t queues, uint16_t flag = 0) {
    NdisRssParams p{};
    p.header = {kNdisRssParamsType, 2, sizeof(NdisRssParams)};
    p.flag = flag;
    p.hashinfo = 0x1701;
    p.indirect_tabsize = static_cast<uint16_t>(4 * entries);
    p.indirect_taboffset = 40;
    p.hashkey_size = 40;
    p.hashkey_offset = 40 + 4u * entries;
    auto v = bytes_of(p);
    for (uint32_t i = 0; i < entries; ++i) {
        const uint32_t q = i % queues;
        const auto b = as_bytes(q);
        v.insert(v.end(), b.begin(), b.end());
    }
    v.insert(v.end(), kDefaultRssKey.begin(), kDefaultRssKey.end());
    return v;
}

// ---------------------------------------------------------------------------- the guest

constexpr uint64_t kInitTid = 0xFFFFFFFFFFFFFFFEULL;
constexpr std::array<uint8_t, 6> kMac = {0x00, 0x15, 0x5d, 0x12, 0x34, 0x56};

NicOptions nic_options(uint16_t queues = 4) {
    NicOptions o;
    o.name = "net0";
    o.instance = vmbus::Guid::parse("aaaaaaaa-2222-3333-4444-555555555555");
    o.mac = kMac;
    o.max_queues = queues;
    return o;
}

class NetGuest {
public:
    static constexpr uint32_t kRecvPages = 64;
    static constexpr uint32_t kSendPages = 16;

    explicit NetGuest(net::Capabilities c = {true, true, 65521 - 14}, uint16_t queues = 4, uint32_t vps = 4)
        : g(vps) {
        auto be = std::make_unique<FakeBackend>(c);
        backend = be.get();
        nic = Nic::create(nic_options(queues), std::move(be)).value();
        relid = g.server().add_device(nic).value();
        g.connect();
        g.sink().take();
        open_primary();
        ctl_page = g.alloc_pages(2);
        frame_page = g.alloc_pages(20);
    }

    void open_primary() {
        ch = g.open_channel(relid, 31, 31);
        EXPECT_EQ(wait_open(relid).value_or(1), 0u);
    }

    std::optional<uint32_t> wait_open(uint32_t r) {
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            for (auto& m : g.sink().take()) {
                if (m.type() == vmbus::MsgType::OpenChannelResult && m.as<vmbus::OpenResult>().child_relid == r)
                    return m.as<vmbus::OpenResult>().status;
                kept.push_back(std::move(m));
            }
            std::this_thread::sleep_for(1ms);
        }
        return std::nullopt;
    }

    // Writes a packet the way netvsc does and rings the doorbell.
    void send(SimChannel& c, uint16_t type, uint64_t tid, std::span<const uint8_t> payload,
              std::span<const uint8_t> ext = {}, bool completion = true) {
        ASSERT_TRUE(c.to_host.write(type, completion ? vmbus::kPacketFlagCompletionRequested : 0, tid, ext, payload));
        g.doorbell(c);
    }
    template <typename T>
    void nvsp(SimChannel& c, const T& msg, uint64_t tid, bool completion = true) {
        NvspMessage m{};
        std::memcpy(&m, &msg, sizeof(T));
        send(c, vmbus::kPacketDataInband, tid, as_bytes(m), {}, completion);
    }

    std::optional<SimRing::Packet> next(SimChannel& c, std::chrono::milliseconds timeout = 3s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            if (auto p = c.to_guest.read()) return p;
            std::this_thread::sleep_for(1ms);
        }
        return std::nullopt;
    }
    // The completion of `tid` (type-7 packets before it are kept in `xfers`).
    std::optional<SimRing::Packet> completion(SimChannel& c, uint64_t tid) {
        for (int i = 0; i < 100; ++i) {
            auto p = next(c);
            if (!p) return std::nullopt;
            if (p->desc.type == vmbus::kPacketCompletion) {
                EXPECT_EQ(p->desc.trans_id, tid);
                return p;
            }
            // Kept for the test on the primary; a sub-channel's RX is completed at once.
            if (&c == &ch) xfers.push_back(std::move(*p));
            else complete_rx(c, p->desc.trans_id);
        }
        return std::nullopt;
    }
    std::optional<SimRing::Packet> xfer(SimChannel& c, std::chrono::milliseconds timeout = 3s) {
        if (!xfers.empty()) {
            auto p = std::move(xfers.front());
            xfers.erase(xfers.begin());
            return p;
        }
        auto p = next(c, timeout);
        if (p) {
            EXPECT_EQ(p->desc.type, vmbus::kPacketDataUsingXferPages);
        }
        return p;
    }

    // The next control type-7 packet on the primary (data ones stay in `xfers`).
    std::optional<SimRing::Packet> control_xfer() {
        for (size_t i = 0; i < xfers.size(); ++i)
            if (at<NvspRndisPacket>(xfers[i].payload, 0).channel_type == nvsp::kChannelControl) {
                auto p = std::move(xfers[i]);
                xfers.erase(xfers.begin() + static_cast<ptrdiff_t>(i));
                return p;
            }
        for (int i = 0; i < 1000; ++i) {
            auto p = next(ch);
            if (!p) return std::nullopt;
            if (p->desc.type == vmbus::kPacketDataUsingXferPages &&
                at<NvspRndisPacket>(p->payload, 0).channel_type == nvsp::kChannelControl)
                return p;
            xfers.push_back(std::move(*p));
        }
        return std::nullopt;
    }

    struct Xfer {
        uint64_t tid = 0;
        uint16_t set_id = 0;
        uint32_t channel_type = 0;
        std::vector<std::vector<uint8_t>> messages;  // one per range, read from the receive buffer
        std::vector<vmbus::XferRange> ranges;
    };
    Xfer parse_xfer(const SimRing::Packet& p) {
        Xfer x;
        x.tid = p.desc.trans_id;
        x.set_id = at<uint16_t>(p.ext, 0);
        const uint32_t n = at<uint32_t>(p.ext, 4);
        EXPECT_EQ(p.ext.size(), 8 + 8u * n);
        const auto m = at<NvspRndisPacket>(p.payload, 0);
        EXPECT_EQ(m.msg_type, nvsp::kSendRndisPkt);
        EXPECT_EQ(m.section_index, nvsp::kNoSection);
        x.channel_type = m.channel_type;
        for (uint32_t i = 0; i < n; ++i) {
            const auto r = at<vmbus::XferRange>(p.ext, 8 + 8 * i);
            x.ranges.push_back(r);
            EXPECT_LE(r.byte_count, section_size);
            EXPECT_LE(uint64_t{r.byte_offset} + r.byte_count, uint64_t{kRecvPages} * 4096);
            const uint8_t* b = g.ram().data() + recv_page * 4096 + r.byte_offset;
            x.messages.emplace_back(b, b + r.byte_count);
        }
        return x;
    }
    void complete_rx(SimChannel& c, uint64_t tid, uint32_t status = 1) {
        const NvspRndisComplete m{nvsp::kSendRndisPktComplete, status};
        send(c, vmbus::kPacketCompletion, tid, as_bytes(m), {}, false);
    }

    // rndis_filter_send_request: the message in a page, one GPA range, channel_type 1.
    std::vector<uint8_t> rndis_call(const std::vector<uint8_t>& msg, bool expect_response = true, uint32_t* status = nullptr) {
        std::memcpy(g.ram().data() + ctl_page * 4096, msg.data(), msg.size());
        const auto ext = SimGuest::gpa_direct_ext({{static_cast<uint32_t>(msg.size()), 0, {ctl_page, ctl_page + 1}}});
        const NvspRndisPacket n{nvsp::kSendRndisPkt, nvsp::kChannelControl, nvsp::kNoSection, 0};
        const uint64_t tid = ++tid_;
        NvspMessage m{};
        std::memcpy(&m, &n, sizeof(n));
        send(ch, vmbus::kPacketDataUsingGpaDirect, tid, as_bytes(m), ext);
        auto c = completion(ch, tid);
        EXPECT_TRUE(c);
        if (c) {
            EXPECT_EQ(at<uint32_t>(c->payload, 0), nvsp::kSendRndisPktComplete);
            if (status) *status = at<uint32_t>(c->payload, 4);
            else EXPECT_EQ(at<uint32_t>(c->payload, 4), nvsp::kStatSuccess);
        }
        if (!expect_response) return {};
        auto p = control_xfer();
        EXPECT_TRUE(p);
        if (!p) return {};
        auto x = parse_xfer(*p);
        EXPECT_EQ(x.channel_type, nvsp::kChannelControl);
        EXPECT_EQ(x.set_id, nvsp::kRecvBufId);
        complete_rx(ch, x.tid);
        EXPECT_EQ(x.messages.size(), 1u);
        return x.messages.empty() ? std::vector<uint8_t>{} : x.messages[0];
    }
    // A QUERY's info buffer (the reply checked as the guest checks it).
    std::vector<uint8_t> query(uint32_t oid, std::vector<uint8_t> info = {}, uint32_t* status = nullptr) {
        const uint32_t id = ++req_id;
        auto r = rndis_call(rndis_query(id, oid, std::move(info)));
        const auto c = at<RndisQueryComplete>(r, 0);
        EXPECT_EQ(c.hdr.msg_type, rndis::kMsgQueryC);
        EXPECT_EQ(c.req_id, id);
        EXPECT_EQ(c.hdr.msg_len, r.size());
        if (status) *status = c.status;
        if (c.info_buf_offset == 0) return {};
        EXPECT_EQ(c.info_buf_offset, 16u);
        return {r.begin() + 24, r.begin() + 24 + c.info_buflen};
    }
    uint32_t set(uint32_t oid, std::vector<uint8_t> info) {
        const uint32_t id = ++req_id;
        auto r = rndis_call(rndis_set(id, oid, std::move(info)));
        const auto c = at<RndisSetComplete>(r, 0);
        EXPECT_EQ(c.hdr.msg_type, rndis::kMsgSetC);
        EXPECT_EQ(c.req_id, id);
        return c.status;
    }

    // netvsc_device_add + rndis_filter_device_add as the 6.1 guest runs them.
    void init(uint32_t mtu = 1514) {
        nvsp(ch, NvspInit{nvsp::kInit, nvsp::kVersion61, nvsp::kVersion61, 0}, kInitTid);
        auto c = completion(ch, kInitTid);
        ASSERT_TRUE(c);
        ASSERT_GE(c->payload.size(), 28u);
        EXPECT_EQ(at<NvspInit>(c->payload, 0).msg_type, nvsp::kInitComplete);
        EXPECT_EQ(at<NvspInit>(c->payload, 0).status, nvsp::kStatSuccess);
        nvsp(ch, NvspNdisConfig{nvsp::kSendNdisConfig, mtu, 0, 0xAC}, nvsp::kNoResponseId, false);
        nvsp(ch, NvspNdisVersion{nvsp::kSendNdisVersion, 6, 30}, nvsp::kNoResponseId, false);
        recv_page = g.alloc_pages(kRecvPages);
        recv_gpadl = next_gpadl++;
        g.create_gpadl(relid, recv_gpadl, SimGuest::pages(recv_page, kRecvPages));
        g.pump();
        nvsp(ch, NvspSendBuffer{nvsp::kSendRecvBuf, recv_gpadl, nvsp::kRecvBufId, 0}, kInitTid);
        c = completion(ch, kInitTid);
        ASSERT_TRUE(c);
        const auto rb = at<NvspRecvBufComplete>(c->payload, 0);
        ASSERT_EQ(rb.msg_type, nvsp::kSendRecvBufComplete);
        ASSERT_EQ(rb.status, nvsp::kStatSuccess);
        EXPECT_EQ(rb.num_sections, 1u);
        EXPECT_EQ(rb.section.offset, 0u);
        section_size = rb.section.sub_alloc_size;
        sections = rb.section.num_sub_allocs;
        EXPECT_EQ(section_size, 256 + mtu + 36);
        EXPECT_EQ(sections, kRecvPages * 4096 / section_size);
        send_page = g.alloc_pages(kSendPages);
        send_gpadl = next_gpadl++;
        g.create_gpadl(relid, send_gpadl, SimGuest::pages(send_page, kSendPages));
        g.pump();
        nvsp(ch, NvspSendBuffer{nvsp::kSendSendBuf, send_gpadl, 0, 0}, kInitTid);
        c = completion(ch, kInitTid);
        ASSERT_TRUE(c);
        EXPECT_EQ(at<NvspSendBufComplete>(c->payload, 0).status, nvsp::kStatSuccess);
        EXPECT_EQ(at<NvspSendBufComplete>(c->payload, 0).section_size, 6144u);

        // RNDIS (§3.3, in the guest's order).
        const uint32_t id = ++req_id;
        auto r = rndis_call(bytes_of(RndisInit{{rndis::kMsgInit, 24}, id, 1, 0, 0x4000}));
        const auto ic = at<RndisInitComplete>(r, 0);
        EXPECT_EQ(ic.hdr.msg_type, rndis::kMsgInitC);
        EXPECT_EQ(ic.hdr.msg_len, 52u);
        EXPECT_EQ(ic.req_id, id);
        EXPECT_EQ(ic.status, 0u);
        EXPECT_EQ(ic.max_pkt_per_msg, 8u);
        EXPECT_EQ(ic.pkt_align_factor, 3u);
        EXPECT_EQ(at<uint32_t>(query(rndis::kOidMaxFrameSize), 0), mtu - 14);
        auto mac = query(rndis::kOidPermanentAddress);
        EXPECT_EQ(mac, std::vector<uint8_t>(kMac.begin(), kMac.end()));
        uint32_t st = 0;
        EXPECT_TRUE(query(rndis::kOidFriendlyName, {}, &st).empty());  // failure form: offset 0
        EXPECT_EQ(st, rndis::kStatusNotSupported);
        caps = query(rndis::kOidOffloadHwCaps, std::vector<uint8_t>(156));
        EXPECT_EQ(caps.size(), 156u);
        NdisOffloadParams op{};
        op.header = {kNdisOffloadParamsType, 3, 28};
        op.ip_v4_csum = 1;
        op.tcp_ip_v4_csum = op.udp_ip_v4_csum = op.tcp_ip_v6_csum = op.udp_ip_v6_csum = 4;
        op.lso_v2_ipv4 = op.lso_v2_ipv6 = 2;
        EXPECT_EQ(set(rndis::kOidOffloadParameters, bytes_of(op)), 0u);
        EXPECT_EQ(at<uint32_t>(query(rndis::kOidMediaConnectStatus), 0), 0u);
        EXPECT_EQ(at<uint32_t>(query(rndis::kOidLinkSpeed), 0), 100'000'000u);
        rss_caps = query(rndis::kOidRssCapabilities);
    }
    void up() {
        EXPECT_EQ(set(rndis::kOidPacketFilter, bytes_of(uint32_t{0x0D})), 0u);
        for (int i = 0; i < 1000 && !backend->receiver(); ++i) {
            g.pump();
            std::this_thread::sleep_for(1ms);
        }
        ASSERT_NE(backend->receiver(), nullptr);
    }

    // TX shape C: RNDIS header + PPIs in range 0, the frame in range 1 (starting 100 bytes
    // before a page boundary, so that it straddles).
    uint32_t send_frame_c(SimChannel& c, const std::vector<uint8_t>& msg, uint32_t hdr_len) {
        uint8_t* base = g.ram().data() + frame_page * 4096;
        std::memcpy(base, msg.data(), hdr_len);
        const uint32_t frame_off = 4096 - 100;
        std::memcpy(base + 4096 + frame_off, msg.data() + hdr_len, msg.size() - hdr_len);
        const uint32_t flen = static_cast<uint32_t>(msg.size() - hdr_len);
        std::vector<uint64_t> pfns;
        for (uint64_t i = 0; i < (frame_off + flen + 4095) / 4096; ++i) pfns.push_back(frame_page + 1 + i);
        const auto ext = SimGuest::gpa_direct_ext({{hdr_len, 0, {frame_page}}, {flen, frame_off, pfns}});
        const NvspRndisPacket n{nvsp::kSendRndisPkt, nvsp::kChannelData, nvsp::kNoSection, 0};
        return tx(c, vmbus::kPacketDataUsingGpaDirect, n, ext);
    }
    // Shape A: the messages in send section `k`.
    uint32_t send_frame_a(SimChannel& c, const std::vector<uint8_t>& msgs, uint32_t k = 1) {
        std::memcpy(g.ram().data() + send_page * 4096 + k * 6144, msgs.data(), msgs.size());
        const NvspRndisPacket n{nvsp::kSendRndisPkt, nvsp::kChannelData, k, static_cast<uint32_t>(msgs.size())};
        return tx(c, vmbus::kPacketDataInband, n, {});
    }
    uint32_t tx(SimChannel& c, uint16_t type, const NvspRndisPacket& n, std::span<const uint8_t> ext) {
        const uint64_t tid = ++tid_;
        NvspMessage m{};
        std::memcpy(&m, &n, sizeof(n));
        send(c, type, tid, as_bytes(m), ext);
        auto p = completion(c, tid);
        EXPECT_TRUE(p);
        if (!p) return 0;
        EXPECT_EQ(at<uint32_t>(p->payload, 0), nvsp::kSendRndisPktComplete);
        return at<uint32_t>(p->payload, 4);
    }

    // Sub-channels: SUBCHANNEL, then the offers, then the guest opens them.
    std::vector<SimChannel> subchannels(uint32_t n) {
        nvsp(ch, NvspSubchannel{nvsp::kSubchannel, nvsp::kSubchannelAllocate, n}, kInitTid);
        auto c = completion(ch, kInitTid);
        EXPECT_TRUE(c);
        if (!c) return {};
        EXPECT_EQ(at<NvspSubchannel>(c->payload, 0).op_or_status, nvsp::kStatSuccess);
        EXPECT_EQ(at<NvspSubchannel>(c->payload, 0).num_subchannels, n);
        std::vector<SimSink::Msg> msgs = std::exchange(kept, {});
        for (int i = 0; i < 2000 && SimGuest::offers(msgs).size() < n; ++i) {
            g.pump();
            for (auto& m : g.sink().take()) msgs.push_back(std::move(m));
            std::this_thread::sleep_for(1ms);
        }
        auto offers = SimGuest::offers(msgs);
        EXPECT_EQ(offers.size(), n);
        std::vector<SimChannel> out;
        for (const auto& o : offers) {
            EXPECT_EQ(o.if_type.to_string(), kNicClass);
            out.push_back(g.open_channel(o.child_relid, 31, 31, o.sub_channel_index));
            EXPECT_EQ(wait_open(o.child_relid).value_or(1), 0u);
        }
        return out;
    }

    SimGuest g;
    FakeBackend* backend = nullptr;
    std::shared_ptr<Nic> nic;
    uint32_t relid = 0;
    SimChannel ch;
    uint64_t ctl_page = 0, frame_page = 0, recv_page = 0, send_page = 0;
    uint32_t recv_gpadl = 0, send_gpadl = 0, next_gpadl = 0xbeef0;
    uint32_t section_size = 0, sections = 0;
    uint32_t req_id = 0;
    uint64_t tid_ = 100;
    std::vector<uint8_t> caps, rss_caps;
    std::vector<SimSink::Msg> kept;
    std::vector<SimRing::Packet> xfers;
};

// An RX frame as the backend hands it over.
bool deliver(NetGuest& n, const std::vector<uint8_t>& f, net::Offload o = {}) {
    const iovec iov{const_cast<uint8_t*>(f.data()), f.size()};
    return n.backend->receiver()->receive(std::span(&iov, 1), o);
}

}  // namespace

// ---------------------------------------------------------------------------- pure parts

TEST(NetvspWire, GoldenLayouts) {
    EXPECT_EQ(sizeof(NvspMessage), 40u);
    EXPECT_EQ(sizeof(NvspRecvBufComplete), 28u);
    EXPECT_EQ(sizeof(NvspNdisConfig), 20u);
    EXPECT_EQ(offsetof(NvspNdisConfig, capability), 12u);
    EXPECT_EQ(sizeof(RndisInitComplete), 52u);
    EXPECT_EQ(offsetof(RndisInitComplete, pkt_align_factor), 40u);
    EXPECT_EQ(sizeof(RndisPacket), 44u);
    EXPECT_EQ(offsetof(RndisPacket, ppi_offset), 28u);
    EXPECT_EQ(sizeof(NdisOffload), 156u);
    EXPECT_EQ(offsetof(NdisOffload, ip6_txcsum), 24u);
    EXPECT_EQ(offsetof(NdisOffload, lsov2_ip4_maxsz), 84u);
    EXPECT_EQ(sizeof(NdisOffloadParams), 28u);
    EXPECT_EQ(offsetof(NdisOffloadParams, flags), 16u);
    EXPECT_EQ(sizeof(NdisRssCaps), 18u);
    EXPECT_EQ(offsetof(NdisRssCaps, num_recv_que), 12u);
    EXPECT_EQ(sizeof(NdisRssParams), 40u);
    EXPECT_EQ(offsetof(NdisRssParams, indirect_taboffset), 16u);
    EXPECT_EQ(offsetof(NdisRssParams, hashkey_size), 20u);
    // The RX header: checksum PPI then hash PPI, frame right after (§3.6, §4.3).
    std::array<uint8_t, kMaxRxHeader> h{};
    const size_t n = build_rx_header(h, 60, {0x28u, 0x1234u});
    ASSERT_EQ(n, 76u);
    std::vector<uint8_t> v(h.begin(), h.end());
    EXPECT_EQ(at<uint32_t>(v, 0), 1u);
    EXPECT_EQ(at<uint32_t>(v, 4), 136u);
    EXPECT_EQ(at<uint32_t>(v, 8), 36u + 32);
    EXPECT_EQ(at<uint32_t>(v, 12), 60u);
    EXPECT_EQ(at<uint32_t>(v, 28), 36u);
    EXPECT_EQ(at<uint32_t>(v, 32), 32u);
    EXPECT_EQ(at<uint32_t>(v, 44), 16u);  // size
    EXPECT_EQ(at<uint32_t>(v, 48), 0u);   // checksum
    EXPECT_EQ(at<uint32_t>(v, 52), 12u);
    EXPECT_EQ(at<uint32_t>(v, 56), 0x28u);
    EXPECT_EQ(at<uint32_t>(v, 64), 8u);  // hash
    EXPECT_EQ(at<uint32_t>(v, 72), 0x1234u);
    // The PPIs walk exactly (what the guest's rndis_get_ppi needs).
    auto p = parse_ppis(std::span<const uint8_t>(h.data() + 44, 32));
    ASSERT_TRUE(p);
    EXPECT_EQ(p->csum.value_or(0), 0x28u);
    EXPECT_EQ(p->hash.value_or(0), 0x1234u);
}

TEST(NetvspRss, ToeplitzVerificationVectors) {
    // The Microsoft RSS verification suite (IPv4): 66.9.149.187:2794 -> 161.142.100.80:1766.
    const uint8_t v4[] = {66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6};
    EXPECT_EQ(toeplitz(kDefaultRssKey, std::span(v4, 8)), 0x323e8fc2u);
    EXPECT_EQ(toeplitz(kDefaultRssKey, std::span(v4, 12)), 0x51ccc178u);
    // The same through a frame.
    auto f = tcp4_frame(10, false, 0x420995bb, 0xa18e6450, 2794, 1766);
    EXPECT_EQ(rss_hash(f, kDefaultRssKey, 0x1701).value_or(0), 0x51ccc178u);
    EXPECT_EQ(rss_hash(f, kDefaultRssKey, 0x101).value_or(0), 0x323e8fc2u);
    EXPECT_FALSE(rss_hash(std::vector<uint8_t>(60, 0), kDefaultRssKey, 0x1701));
}

TEST(NetvspRndis, WalkAcrossSegmentsAndHostileStreams) {
    auto f = tcp4_frame(100);
    auto m1 = rndis_packet(f, {{ppi::kChecksum, ppi::kTxIpv4 | ppi::kTxTcp | (34u << 16)}}, 8);
    auto m2 = rndis_packet(tcp4_frame(7));
    std::vector<uint8_t> all = m1;
    all.insert(all.end(), m2.begin(), m2.end());
    // Cut the stream into 5 pieces at awkward places.
    std::vector<iovec> segs;
    const size_t cuts[] = {0, 3, 47, 150, 151, all.size()};
    for (size_t i = 0; i + 1 < std::size(cuts); ++i) segs.push_back({all.data() + cuts[i], cuts[i + 1] - cuts[i]});
    SgSource src(segs);
    std::vector<std::pair<size_t, uint32_t>> seen;
    auto n = walk_rndis(src, 16, [&](uint32_t t, size_t off, uint32_t len) {
        EXPECT_EQ(t, rndis::kMsgPacket);
        seen.emplace_back(off, len);
    });
    ASSERT_TRUE(n);
    ASSERT_EQ(*n, 2u);
    auto p = parse_tx_packet(src, seen[0].first, seen[0].second);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->frame_len, f.size());
    std::vector<uint8_t> back(p->frame_len);
    ASSERT_TRUE(src.read(p->frame_off, back));
    EXPECT_EQ(back, f);
    std::vector<iovec> sl;
    ASSERT_TRUE(src.slice(p->frame_off, p->frame_len, sl));
    EXPECT_GE(sl.size(), 2u);

    // msg_len 0 must not loop; msg_len past the end fails.
    std::vector<uint8_t> bad(16, 0);
    bad[0] = 1;
    const iovec b{bad.data(), bad.size()};
    EXPECT_FALSE(walk_rndis(SgSource(std::span(&b, 1)), 16, [](uint32_t, size_t, uint32_t) {}));
    bad[4] = 17;
    EXPECT_FALSE(walk_rndis(SgSource(std::span(&b, 1)), 16, [](uint32_t, size_t, uint32_t) {}));
    // Data outside the message.
    auto m = rndis_packet(f);
    RndisPacket h = at<RndisPacket>(m, 0);
    h.data_len += 1;
    std::memcpy(m.data(), &h, sizeof(h));
    const iovec mi{m.data(), m.size()};
    EXPECT_FALSE(parse_tx_packet(SgSource(std::span(&mi, 1)), 0, static_cast<uint32_t>(m.size())));
    // PPIs overlapping the data.
    m = rndis_packet(f, {{ppi::kChecksum, 0}});
    h = at<RndisPacket>(m, 0);
    h.ppi_len = 40;
    std::memcpy(m.data(), &h, sizeof(h));
    const iovec mi2{m.data(), m.size()};
    EXPECT_FALSE(parse_tx_packet(SgSource(std::span(&mi2, 1)), 0, static_cast<uint32_t>(m.size())));
}

TEST(NetvspRndis, PpiWalkChecks) {
    auto ppi = [](uint32_t size, uint32_t type, uint32_t off) {
        std::vector<uint8_t> v(std::max<uint32_t>(size, 16));
        const Ppi32 p{{size, type, off}, 7};
        std::memcpy(v.data(), &p, 16);
        v.resize(size ? size : 16);
        return v;
    };
    EXPECT_TRUE(parse_ppis(ppi(16, ppi::kChecksum, 12)));
    EXPECT_FALSE(parse_ppis(ppi(0, ppi::kChecksum, 12)));    // size 0: the guest's endless loop
    EXPECT_FALSE(parse_ppis(ppi(16, ppi::kChecksum, 16)));   // payload outside
    EXPECT_FALSE(parse_ppis(ppi(16, ppi::kChecksum, 4)));    // offset inside the header
    auto over = ppi(16, ppi::kLso, 12);
    Ppi32 p{{32, ppi::kLso, 12}, 0};
    std::memcpy(over.data(), &p, 16);
    EXPECT_FALSE(parse_ppis(over));  // size beyond the area
    std::vector<uint8_t> many;
    for (int i = 0; i < 40; ++i) {
        auto one = ppi(12, 99, 12);
        many.insert(many.end(), one.begin(), one.end());
    }
    EXPECT_FALSE(parse_ppis(many));  // more than 32
    EXPECT_TRUE(parse_ppis(std::vector<uint8_t>{}));
}

TEST(NetvspRndis, LsoBecomesVirtioForm) {
    auto f = tcp4_frame(3000, true);
    const uint32_t lso = 1448u | (34u << 20) | (1u << 30);
    TxPpis p;
    p.lso = lso;
    auto o = tx_offload(p, static_cast<uint32_t>(f.size()), &f, {true, true, 9000});
    ASSERT_TRUE(o);
    EXPECT_TRUE(o->needs_csum);
    EXPECT_EQ(o->gso, net::Offload::Gso::Tcp4);
    EXPECT_EQ(o->gso_size, 1448);
    EXPECT_EQ(o->csum_start, 34);
    EXPECT_EQ(o->csum_offset, 16);
    EXPECT_EQ(o->hdr_len, 54);
    EXPECT_EQ(get16(f, 16), 3040);                                   // tot_len
    EXPECT_EQ(fold16(sum_be(f.data() + 14, 20)), 0xFFFF);            // header checksum right
    EXPECT_EQ(get16(f, 50), tcp4_frame(3000, false)[50] << 8 | tcp4_frame(3000, false)[51]);  // full-length seed
    EXPECT_EQ(tx_offload(p, static_cast<uint32_t>(f.size()), &f, {true, false, 9000}).error().code(), Errc::Unsupported);
    // A TCP header offset past the frame.
    TxPpis bad;
    bad.lso = 1448u | (2000u << 20);
    auto g = tcp4_frame(10, true);
    EXPECT_FALSE(tx_offload(bad, static_cast<uint32_t>(g.size()), &g, {true, true, 9000}));
    // Checksum PPI: offset and field inside the frame.
    TxPpis cs;
    cs.csum = ppi::kTxIpv4 | ppi::kTxTcp | (34u << 16);
    auto c = tx_offload(cs, 60, nullptr, {true, true, 9000});
    ASSERT_TRUE(c);
    EXPECT_TRUE(c->needs_csum);
    EXPECT_EQ(c->csum_start, 34);
    EXPECT_FALSE(tx_offload(cs, 40, nullptr, {true, true, 9000}));
    // Without backend checksum offload the checksum is completed in software.
    auto s = tcp4_frame(33);
    auto sc = tx_offload(cs, static_cast<uint32_t>(s.size()), &s, {false, false, 9000});
    ASSERT_TRUE(sc);
    EXPECT_FALSE(sc->needs_csum);
    const uint64_t pseudo = sum_be(s.data() + 26, 8) + 6 + 53;
    EXPECT_EQ(fold16(pseudo + sum_be(s.data() + 34, 53)), 0xFFFF);
}

TEST(NetvspRndis, ControlAnswers) {
    RndisState st;
    NicConfig cfg;
    cfg.nvsp_version = nvsp::kVersion61;
    cfg.max_queues = 4;
    cfg.mac = kMac;
    auto r = handle_control(st, cfg, rndis_query(1, rndis::kOidRssCapabilities));
    ASSERT_EQ(r.response.size(), 24u + 18);
    EXPECT_EQ(at<NdisRssCaps>(r.response, 24).num_recv_que, 4u);
    EXPECT_EQ(at<NdisRssCaps>(r.response, 24).num_indirect_tabent, 128);
    cfg.max_queues = 1;
    r = handle_control(st, cfg, rndis_query(2, rndis::kOidRssCapabilities));
    EXPECT_EQ(at<RndisQueryComplete>(r.response, 0).info_buf_offset, 0u);  // failure form
    EXPECT_EQ(at<RndisQueryComplete>(r.response, 0).status, rndis::kStatusNotSupported);
    // Offload caps by version and backend.
    auto caps = offload_caps(nvsp::kVersion61, {true, true, 9000});
    ASSERT_EQ(caps.size(), 156u);
    const auto o = at<NdisOffload>(caps, 0);
    EXPECT_EQ(o.header.type, 0xA7);
    EXPECT_EQ(o.ip4_txcsum, 0x55u);
    EXPECT_EQ(o.lsov2_ip4_maxsz, 0xF53Cu);
    EXPECT_EQ(o.lsov2_ip6_opts, 5u);
    const auto none = at<NdisOffload>(offload_caps(nvsp::kVersion61, {false, false, 9000}), 0);
    EXPECT_EQ(none.ip4_txcsum, 0u);
    EXPECT_EQ(none.lsov2_ip4_encap, 0u);
    EXPECT_EQ(offload_caps(nvsp::kVersion4, {}).size(), 144u);
    EXPECT_EQ(offload_caps(nvsp::kVersion2, {}).size(), 112u);
    // Info buffer outside the message: a failure form, not a crash.
    auto q = rndis_query(3, rndis::kOidLinkSpeed, {1, 2, 3, 4});
    RndisQuery qh = at<RndisQuery>(q, 0);
    qh.info_buf_offset = 1000;
    std::memcpy(q.data(), &qh, sizeof(qh));
    r = handle_control(st, cfg, q);
    EXPECT_EQ(at<RndisQueryComplete>(r.response, 0).info_buf_offset, 0u);
    // PACKET_FILTER must be 4 bytes; RSS checked (§8).
    r = handle_control(st, cfg, rndis_set(4, rndis::kOidPacketFilter, {1, 0}));
    EXPECT_EQ(at<RndisSetComplete>(r.response, 0).status, rndis::kStatusInvalidLength);
    cfg.max_queues = 4;
    r = handle_control(st, cfg, rndis_set(5, rndis::kOidRssParameters, rss_params(128, 4)));
    EXPECT_EQ(at<RndisSetComplete>(r.response, 0).status, 0u);
    EXPECT_TRUE(st.rss_enabled);
    EXPECT_EQ(st.rss_table.size(), 128u);
    auto bad = rss_params(128, 8);  // queues past the maximum
    r = handle_control(st, cfg, rndis_set(6, rndis::kOidRssParameters, bad));
    EXPECT_NE(at<RndisSetComplete>(r.response, 0).status, 0u);
    bad = rss_params(128, 4);
    bad[20] = 39;  // key size
    r = handle_control(st, cfg, rndis_set(7, rndis::kOidRssParameters, bad));
    EXPECT_NE(at<RndisSetComplete>(r.response, 0).status, 0u);
    bad = rss_params(128, 4);
    bad.resize(300);  // table and key outside the buffer
    r = handle_control(st, cfg, rndis_set(8, rndis::kOidRssParameters, bad));
    EXPECT_NE(at<RndisSetComplete>(r.response, 0).status, 0u);
    // MAC change (§3.5).
    std::vector<uint8_t> cp(72, 0);
    const uint32_t hdr[5] = {20, 28, 2, 48, 24};
    std::memcpy(cp.data(), hdr, 20);
    const char* name = "NetworkAddress";
    for (size_t i = 0; i < 14; ++i) cp[20 + 2 * i] = static_cast<uint8_t>(name[i]);
    const char* val = "02aabbccddee";
    for (size_t i = 0; i < 12; ++i) cp[48 + 2 * i] = static_cast<uint8_t>(val[i]);
    r = handle_control(st, cfg, rndis_set(9, rndis::kOidConfigParameter, cp));
    EXPECT_EQ(at<RndisSetComplete>(r.response, 0).status, 0u);
    ASSERT_TRUE(r.new_mac);
    EXPECT_EQ((*r.new_mac)[1], 0xaa);
    // Unknown message types fail without an answer; HALT has none.
    std::vector<uint8_t> unk(12, 0);
    unk[0] = 0x55;
    unk[4] = 12;
    r = handle_control(st, cfg, unk);
    EXPECT_FALSE(r.ok);
    r = handle_control(st, cfg, std::vector<uint8_t>{3, 0, 0, 0, 12, 0, 0, 0, 9, 0, 0, 0});
    EXPECT_TRUE(r.ok);
    EXPECT_TRUE(r.halted);
    EXPECT_TRUE(r.response.empty());
}

// ---------------------------------------------------------------------------- the device

TEST(Netvsp, InitSequenceAsTheGuestRunsIt) {
    NetGuest n;
    n.init();
    const auto o = at<NdisOffload>(n.caps, 0);
    EXPECT_EQ(o.header.revision, 3);
    EXPECT_EQ(o.ip4_txcsum, 0x55u);
    EXPECT_EQ(o.lsov2_ip4_encap, 2u);
    ASSERT_EQ(n.rss_caps.size(), 18u);
    EXPECT_EQ(at<NdisRssCaps>(n.rss_caps, 0).num_recv_que, 4u);
    EXPECT_EQ(n.backend->receiver(), nullptr);  // no filter yet
    n.up();
    for (int i = 0; i < 100 && n.backend->mtu() == 0; ++i) n.g.pump();
    EXPECT_EQ(n.backend->mtu(), 1500u);
    const auto s = n.nic->status();
    EXPECT_TRUE(s.guest_ready);
    EXPECT_EQ(s.mtu, 1514u);
    EXPECT_EQ(s.nvsp_version, nvsp::kVersion61);
    EXPECT_EQ(s.queues, 1);
    EXPECT_EQ(s.max_queues, 4);
}

TEST(Netvsp, OlderVersionsAndNoOffloadBackend) {
    NetGuest n({false, false, 1500}, 1);
    // A refused version: the guest tries the next.
    n.nvsp(n.ch, NvspInit{nvsp::kInit, 0x70000, 0x70000, 0}, kInitTid);
    auto c = n.completion(n.ch, kInitTid);
    ASSERT_TRUE(c);
    EXPECT_NE(at<NvspInit>(c->payload, 0).status, nvsp::kStatSuccess);
    n.init();
    const auto o = at<NdisOffload>(n.caps, 0);
    EXPECT_EQ(o.ip4_txcsum, 0u);
    EXPECT_EQ(o.lsov2_ip4_encap, 0u);
    EXPECT_TRUE(n.rss_caps.empty());  // one queue: the failure form
}

TEST(Netvsp, TxInAllThreeShapes) {
    NetGuest n;
    n.init();
    n.up();
    // A: two messages in one send section, the first padded to 8.
    auto f1 = tcp4_frame(100);
    auto f2 = tcp4_frame(33);
    auto a = rndis_packet(f1, {{ppi::kChecksum, ppi::kTxIpv4 | ppi::kTxTcp | (34u << 16)}}, 8);
    auto a2 = rndis_packet(f2);
    a.insert(a.end(), a2.begin(), a2.end());
    EXPECT_EQ(n.send_frame_a(n.ch, a), nvsp::kStatSuccess);
    auto sent = n.backend->take();
    ASSERT_EQ(sent.size(), 2u);
    EXPECT_EQ(sent[0].frame, f1);
    EXPECT_TRUE(sent[0].offload.needs_csum);
    EXPECT_EQ(sent[0].offload.csum_start, 34);
    EXPECT_EQ(sent[0].offload.csum_offset, 16);
    EXPECT_EQ(sent[1].frame, f2);
    EXPECT_FALSE(sent[1].offload.needs_csum);

    // B: an earlier message and this one's header in the section, the frame in a GPA range.
    auto f3 = tcp4_frame(500);
    auto b0 = rndis_packet(tcp4_frame(20), {}, 8);
    auto b1 = rndis_packet(f3, {{ppi::kHash, 0x1234}, {ppi::kChecksum, ppi::kTxIpv4 | ppi::kTxTcp | (34u << 16)}});
    const uint32_t hdr = 44 + 32;
    std::vector<uint8_t> section = b0;
    section.insert(section.end(), b1.begin(), b1.begin() + hdr);
    std::memcpy(n.g.ram().data() + n.send_page * 4096 + 2 * 6144, section.data(), section.size());
    std::memcpy(n.g.ram().data() + n.frame_page * 4096 + 4000, f3.data(), f3.size());
    const auto ext = SimGuest::gpa_direct_ext(
        {{static_cast<uint32_t>(f3.size()), 4000, {n.frame_page, n.frame_page + 1}}});
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataUsingGpaDirect,
                   {nvsp::kSendRndisPkt, 0, 2, static_cast<uint32_t>(section.size())}, ext),
              nvsp::kStatSuccess);
    sent = n.backend->take();
    ASSERT_EQ(sent.size(), 2u);
    EXPECT_EQ(sent[1].frame, f3);
    EXPECT_TRUE(sent[1].offload.needs_csum);

    // C: header in range 0, a 62 KiB LSO frame straddling pages in range 1.
    auto big = tcp4_frame(60000, true);
    auto c = rndis_packet(big, {{ppi::kLso, 1448u | (34u << 20) | (1u << 30)}});
    EXPECT_EQ(n.send_frame_c(n.ch, c, 44 + 16), nvsp::kStatSuccess);
    sent = n.backend->take();
    ASSERT_EQ(sent.size(), 1u);
    EXPECT_EQ(sent[0].offload.gso, net::Offload::Gso::Tcp4);
    EXPECT_EQ(sent[0].offload.gso_size, 1448);
    EXPECT_EQ(sent[0].offload.hdr_len, 54);
    EXPECT_EQ(get16(sent[0].frame, 16), 60040);
    EXPECT_EQ(fold16(sum_be(sent[0].frame.data() + 14, 20)), 0xFFFF);
    const auto want = tcp4_frame(60000, false);
    EXPECT_EQ(get16(sent[0].frame, 50), get16(want, 50));

    // VLAN PPI: the tag goes into the frame.
    auto v = rndis_packet(f2, {{ppi::kVlan, 5u << 4 | 3u}});
    EXPECT_EQ(n.send_frame_a(n.ch, v), nvsp::kStatSuccess);
    sent = n.backend->take();
    ASSERT_EQ(sent.size(), 1u);
    ASSERT_EQ(sent[0].frame.size(), f2.size() + 4);
    EXPECT_EQ(get16(sent[0].frame, 12), 0x8100);
    EXPECT_EQ(get16(sent[0].frame, 14), 3 << 13 | 5);
    const auto s = n.nic->status();
    EXPECT_EQ(s.per_queue.at(0).tx_packets, 6u);
}

TEST(Netvsp, RxThroughSectionsWithCompletions) {
    NetGuest n;
    n.init();
    n.up();
    auto f = tcp4_frame(200);
    net::Offload ok;
    ok.csum_valid = true;
    ASSERT_TRUE(deliver(n, f, ok));
    ASSERT_TRUE(deliver(n, tcp4_frame(10)));
    n.backend->receiver()->flush();
    auto p = n.xfer(n.ch);
    ASSERT_TRUE(p);
    auto x = n.parse_xfer(*p);
    EXPECT_EQ(x.set_id, nvsp::kRecvBufId);
    EXPECT_EQ(x.channel_type, nvsp::kChannelData);
    EXPECT_NE(x.tid, 0u);
    ASSERT_EQ(x.messages.size(), 2u);  // one packet for the burst
    const auto& m = x.messages[0];
    const auto h = at<RndisPacket>(m, 0);
    EXPECT_EQ(h.hdr.msg_type, rndis::kMsgPacket);
    EXPECT_EQ(h.hdr.msg_len, m.size());
    EXPECT_EQ(h.data_len, f.size());
    ASSERT_EQ(h.ppi_len, 16u);
    auto ppis = parse_ppis(std::span(m).subspan(8 + h.ppi_offset, h.ppi_len));
    ASSERT_TRUE(ppis);
    EXPECT_EQ(ppis->csum.value_or(0), ppi::kRxTcpOk | ppi::kRxIpOk);
    EXPECT_EQ(std::vector<uint8_t>(m.begin() + 8 + h.data_offset, m.end()), f);
    // Not known good: no checksum PPI, and then no PPI offset either (the 6.1 guest logs
    // "Invalid per_pkt_info_len: 0" for an offset without PPIs).
    EXPECT_EQ(at<RndisPacket>(x.messages[1], 0).ppi_len, 0u);
    EXPECT_EQ(at<RndisPacket>(x.messages[1], 0).ppi_offset, 0u);
    EXPECT_NE(x.ranges[0].byte_offset, x.ranges[1].byte_offset);
    n.complete_rx(n.ch, x.tid);
    n.g.pump();
    const auto s = n.nic->status();
    EXPECT_EQ(s.per_queue.at(0).rx_packets, 2u);
    EXPECT_EQ(s.per_queue.at(0).rx_bytes, f.size() + 64);
    // A frame larger than a section is dropped, not truncated.
    EXPECT_TRUE(deliver(n, tcp4_frame(1800)));
    EXPECT_EQ(n.nic->status().per_queue.at(0).rx_dropped, 1u);
}

// A revoke names the buffer it revokes (netvsc sends the ids it set up): one of another id,
// from a hostile or confused guest, leaves the buffers in use alone (found by the hostile
// guest: its random NVSP messages revoked the receive buffer and the NIC went deaf).
TEST(NetvspHostile, ARevokeOfAnotherIdLeavesTheBuffers) {
    NetGuest n;
    n.init();
    n.up();
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeRecvBuf, static_cast<uint16_t>(nvsp::kRecvBufId + 1), 0},
           nvsp::kNoResponseId, false);
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeSendBuf, 7, 0}, nvsp::kNoResponseId, false);
    n.g.pump();
    ASSERT_TRUE(deliver(n, tcp4_frame(100)));
    n.backend->receiver()->flush();
    auto p = n.xfer(n.ch);
    ASSERT_TRUE(p) << "the receive buffer was revoked by a revoke of another id";
    EXPECT_EQ(n.parse_xfer(*p).set_id, nvsp::kRecvBufId);
}

TEST(Netvsp, LinkDownAndUp) {
    NetGuest n;
    n.init();
    n.up();
    n.nic->set_link(false);
    auto p = n.xfer(n.ch);
    ASSERT_TRUE(p);
    auto x = n.parse_xfer(*p);
    EXPECT_EQ(x.channel_type, nvsp::kChannelControl);
    ASSERT_EQ(x.messages.size(), 1u);
    EXPECT_EQ(at<RndisIndicate>(x.messages[0], 0).hdr.msg_type, rndis::kMsgIndicate);
    EXPECT_EQ(at<RndisIndicate>(x.messages[0], 0).hdr.msg_len, 20u);
    EXPECT_EQ(at<RndisIndicate>(x.messages[0], 0).status, rndis::kStatusMediaDisconnect);
    n.complete_rx(n.ch, x.tid);
    EXPECT_EQ(at<uint32_t>(n.query(rndis::kOidMediaConnectStatus), 0), 1u);
    EXPECT_FALSE(deliver(n, tcp4_frame(10)));
    EXPECT_EQ(n.send_frame_a(n.ch, rndis_packet(tcp4_frame(10))), nvsp::kStatSuccess);
    EXPECT_TRUE(n.backend->take().empty());  // the cable is out: dropped, completed
    n.nic->set_link(true);
    p = n.xfer(n.ch);
    ASSERT_TRUE(p);
    x = n.parse_xfer(*p);
    EXPECT_EQ(at<RndisIndicate>(x.messages[0], 0).status, rndis::kStatusMediaConnect);
    n.complete_rx(n.ch, x.tid);
    // room_fd says "try again".
    pollfd pfd{n.backend->receiver()->room_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 0), 1);
    EXPECT_TRUE(deliver(n, tcp4_frame(10)));
    const auto s = n.nic->status();
    EXPECT_EQ(s.per_queue.at(0).rx_dropped, 1u);
    EXPECT_EQ(s.per_queue.at(0).tx_dropped, 1u);
}

TEST(Netvsp, SubchannelsAndRssSteering) {
    NetGuest n;
    n.init();
    auto subs = n.subchannels(3);
    ASSERT_EQ(subs.size(), 3u);
    EXPECT_EQ(n.set(rndis::kOidRssParameters, rss_params(128, 4, kRssFlagDisable)), 0u);
    EXPECT_EQ(n.set(rndis::kOidRssParameters, rss_params(128, 4)), 0u);
    n.up();
    EXPECT_EQ(n.nic->status().queues, 4);
    // Flows land where Toeplitz + the table say, with the hash PPI.
    std::array<int, 4> per{};
    for (uint16_t port = 1000; port < 1040; ++port) {
        auto f = tcp4_frame(10, false, 0x0a000002, 0x0a00020f, port, 80);
        const uint32_t hash = rss_hash(f, kDefaultRssKey, 0x1701).value();
        const uint32_t q = (hash % 128) % 4;
        ASSERT_TRUE(deliver(n, f));
        n.backend->receiver()->flush();
        SimChannel& c = q == 0 ? n.ch : subs[q - 1];
        auto p = n.xfer(c);
        ASSERT_TRUE(p) << "queue " << q;
        auto x = n.parse_xfer(*p);
        ASSERT_EQ(x.messages.size(), 1u);
        const auto h = at<RndisPacket>(x.messages[0], 0);
        auto ppis = parse_ppis(std::span(x.messages[0]).subspan(8 + h.ppi_offset, h.ppi_len));
        ASSERT_TRUE(ppis);
        EXPECT_EQ(ppis->hash.value_or(0), hash);
        n.complete_rx(c, x.tid);
        ++per[q];
    }
    for (size_t q = 0; q < 4; ++q) EXPECT_GT(per[q], 0) << q;
    // TX on a sub-channel works; control on a sub-channel does not.
    EXPECT_EQ(n.send_frame_a(subs[1], rndis_packet(tcp4_frame(10))), nvsp::kStatSuccess);
    EXPECT_EQ(n.backend->take().size(), 1u);
    EXPECT_EQ(n.nic->status().per_queue.at(2).tx_packets, 1u);
}

TEST(Netvsp, MtuChangeReinit) {
    NetGuest n;
    n.init();
    auto subs = n.subchannels(2);
    n.up();
    ASSERT_TRUE(deliver(n, tcp4_frame(10)));
    n.backend->receiver()->flush();
    {
        // RSS put it on one of the three channels; the guest takes it from there.
        bool got = n.xfer(n.ch, 200ms).has_value();
        for (auto& sc : subs) got = got || n.xfer(sc, 200ms).has_value();
        ASSERT_TRUE(got);
    }
    auto rx_total = [&] {
        uint64_t sum = 0;
        for (const auto& q : n.nic->status().per_queue) sum += q.rx_packets;
        return sum;
    };
    EXPECT_EQ(rx_total(), 1u);
    // netvsc_detach: filter 0, HALT, revokes, closes, teardowns.
    EXPECT_EQ(n.set(rndis::kOidPacketFilter, bytes_of(uint32_t{0})), 0u);
    {
        std::vector<uint8_t> halt(12, 0);
        const uint32_t hw[3] = {rndis::kMsgHalt, 12, ++n.req_id};
        std::memcpy(halt.data(), hw, 12);
        n.rndis_call(halt, false);
    }
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeRecvBuf, nvsp::kRecvBufId, 0}, nvsp::kNoResponseId, false);
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeSendBuf, 0, 0}, nvsp::kNoResponseId, false);
    for (auto& s : subs) {
        n.g.simple(vmbus::MsgType::CloseChannel, s.relid);
        n.g.teardown(s.relid, s.gpadl);
    }
    n.g.simple(vmbus::MsgType::CloseChannel, n.ch.relid);
    n.g.teardown(n.ch.relid, n.ch.gpadl);
    n.g.teardown(n.relid, n.recv_gpadl);
    n.g.teardown(n.relid, n.send_gpadl);
    std::set<uint32_t> torn, rescinded;
    for (int i = 0; i < 2000 && torn.size() < 5; ++i) {
        n.g.pump();
        for (auto& m : n.g.sink().take()) {
            if (m.type() == vmbus::MsgType::GpadlTorndown) torn.insert(m.as<vmbus::GpadlTorndown>().gpadl);
            if (m.type() == vmbus::MsgType::RescindChannelOffer) rescinded.insert(m.as<vmbus::RescindOffer>().child_relid);
        }
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_TRUE(torn.count(n.recv_gpadl));
    EXPECT_TRUE(torn.count(n.send_gpadl));
    EXPECT_EQ(torn.size(), 5u);
    // The stale sub-channels are withdrawn (the server rescinds them on primary close).
    EXPECT_TRUE(rescinded.count(subs[0].relid));
    EXPECT_TRUE(rescinded.count(subs[1].relid));
    for (int i = 0; i < 1000 && n.backend->receiver(); ++i) {
        n.g.pump();
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(n.backend->receiver(), nullptr);
    // netvsc_attach: everything again on the same relid, MTU 9000.
    n.open_primary();
    n.init(9014);
    for (int i = 0; i < 100 && n.backend->mtu() != 9000; ++i) n.g.pump();
    EXPECT_EQ(n.backend->mtu(), 9000u);
    auto subs2 = n.subchannels(2);
    ASSERT_EQ(subs2.size(), 2u);
    EXPECT_NE(subs2[0].relid, subs[0].relid);
    n.up();
    auto jumbo = tcp4_frame(8900);
    ASSERT_TRUE(deliver(n, jumbo));
    n.backend->receiver()->flush();
    auto p = n.xfer(n.ch);
    ASSERT_TRUE(p);
    auto x = n.parse_xfer(*p);
    ASSERT_EQ(x.messages.size(), 1u);
    EXPECT_EQ(at<RndisPacket>(x.messages[0], 0).data_len, jumbo.size());
    // The API's counters run across the re-init: the frame before it still counts.
    EXPECT_EQ(rx_total(), 2u);
}

// ---------------------------------------------------------------------------- hostile guest

TEST(NetvspHostile, RndisOffsetsAndLengthsOutsideTheMessage) {
    NetGuest n;
    n.init();
    n.up();
    auto m = rndis_packet(tcp4_frame(50));
    auto h = at<RndisPacket>(m, 0);
    h.data_offset = 4000;
    std::memcpy(m.data(), &h, sizeof(h));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    h = at<RndisPacket>(rndis_packet(tcp4_frame(50)), 0);
    h.hdr.msg_len = 5000;  // past the section part
    std::memcpy(m.data(), &h, sizeof(h));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    h.hdr.msg_len = 0;  // would never advance
    std::memcpy(m.data(), &h, sizeof(h));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    EXPECT_TRUE(n.backend->take().empty());
    // A QUERY whose info buffer lies outside: answered (failure form), never a crash.
    auto q = rndis_query(++n.req_id, rndis::kOidLinkSpeed, {0, 0, 0, 0});
    auto qh = at<RndisQuery>(q, 0);
    qh.info_buflen = 0xFFFFFFF0;
    std::memcpy(q.data(), &qh, sizeof(qh));
    auto r = n.rndis_call(q);
    EXPECT_EQ(at<RndisQueryComplete>(r, 0).info_buf_offset, 0u);
    // The device still works.
    EXPECT_EQ(n.send_frame_a(n.ch, rndis_packet(tcp4_frame(50))), nvsp::kStatSuccess);
    EXPECT_EQ(n.backend->take().size(), 1u);
}

TEST(NetvspHostile, SendSectionIndexOutOfRange) {
    NetGuest n;
    n.init();
    n.up();
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataInband, {nvsp::kSendRndisPkt, 0, 1000, 100}, {}), nvsp::kStatFail);
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataInband, {nvsp::kSendRndisPkt, 0, 1, 7000}, {}), nvsp::kStatFail);
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataInband, {nvsp::kSendRndisPkt, 0, nvsp::kNoSection, 0}, {}), nvsp::kStatFail);
    EXPECT_TRUE(n.backend->take().empty());
}

TEST(NetvspHostile, PageBuffersOutsideGuestRam) {
    NetGuest n;
    n.init();
    n.up();
    auto m = rndis_packet(tcp4_frame(50));
    const auto ext = SimGuest::gpa_direct_ext({{static_cast<uint32_t>(m.size()), 0, {1u << 30}}});
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataUsingGpaDirect, {nvsp::kSendRndisPkt, 0, nvsp::kNoSection, 0}, ext),
              nvsp::kStatFail);
    // Ranges that lie about their page count: the packet is malformed.
    auto lie = SimGuest::gpa_direct_ext({{9000, 0, {n.frame_page}}});
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataUsingGpaDirect, {nvsp::kSendRndisPkt, 0, nvsp::kNoSection, 0}, lie),
              nvsp::kStatFail);
    EXPECT_TRUE(n.backend->take().empty());
}

TEST(NetvspHostile, PpiWalkThatLoopsOrOverruns) {
    NetGuest n;
    n.init();
    n.up();
    auto m = rndis_packet(tcp4_frame(50), {{ppi::kChecksum, 0}});
    Ppi p{0, ppi::kChecksum, 12};  // size 0
    std::memcpy(m.data() + 44, &p, sizeof(p));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    p = {64, ppi::kChecksum, 12};  // past the PPI area
    std::memcpy(m.data() + 44, &p, sizeof(p));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    p = {16, ppi::kChecksum, 16};  // payload outside the PPI
    std::memcpy(m.data() + 44, &p, sizeof(p));
    EXPECT_EQ(n.send_frame_a(n.ch, m), nvsp::kStatFail);
    EXPECT_TRUE(n.backend->take().empty());
}

TEST(NetvspHostile, RxFloodWithoutCompletions) {
    NetGuest n;
    n.init();
    auto subs = n.subchannels(1);
    EXPECT_EQ(n.set(rndis::kOidRssParameters, rss_params(128, 2)), 0u);
    n.up();
    // Find a flow for each queue.
    std::array<std::vector<uint8_t>, 2> flow;
    for (uint16_t port = 1000; port < 1100 && (flow[0].empty() || flow[1].empty()); ++port) {
        auto f = tcp4_frame(10, false, 0x0a000002, 0x0a00020f, port, 80);
        flow[(rss_hash(f, kDefaultRssKey, 0x1701).value() % 128) % 2] = f;
    }
    ASSERT_FALSE(flow[0].empty());
    ASSERT_FALSE(flow[1].empty());
    // Queue 0's guest never completes: its share runs out, frames are refused and counted.
    uint32_t accepted = 0, refused = 0;
    for (int i = 0; i < 1000; ++i) {
        if (deliver(n, flow[0])) ++accepted;
        else ++refused;
        if (i % 32 == 0) n.backend->receiver()->flush();
    }
    n.backend->receiver()->flush();
    EXPECT_GT(refused, 0u);
    EXPECT_LE(accepted, n.sections / 2);
    EXPECT_EQ(n.nic->status().per_queue.at(0).rx_dropped, refused);
    // Queue 1 keeps working.
    ASSERT_TRUE(deliver(n, flow[1]));
    n.backend->receiver()->flush();
    auto p = n.xfer(subs[0]);
    ASSERT_TRUE(p);
    auto x = n.parse_xfer(*p);
    n.complete_rx(subs[0], x.tid);
    // Control still flows on the primary (the reserve).
    EXPECT_EQ(at<uint32_t>(n.query(rndis::kOidLinkSpeed), 0), 100'000'000u);
    // Once queue 0's guest completes, its frames flow again and room_fd fired.
    for (auto& q : std::exchange(n.xfers, {})) n.complete_rx(n.ch, q.desc.trans_id);
    while (auto q = n.next(n.ch, 200ms)) {
        if (q->desc.type == vmbus::kPacketDataUsingXferPages) n.complete_rx(n.ch, q->desc.trans_id);
    }
    n.g.pump();
    for (int i = 0; i < 100; ++i) n.g.pump();
    pollfd pfd{n.backend->receiver()->room_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 1000), 1);
    EXPECT_TRUE(deliver(n, flow[0]));
    // Duplicate or unknown completions are ignored.
    n.complete_rx(n.ch, 0xdeadbeef);
    n.g.pump();
    EXPECT_EQ(n.send_frame_a(n.ch, rndis_packet(tcp4_frame(10))), nvsp::kStatSuccess);
}

TEST(NetvspHostile, NvspOutOfSequence) {
    NetGuest n;
    // RNDIS and SUBCHANNEL before anything: refused, answered once.
    EXPECT_EQ(n.tx(n.ch, vmbus::kPacketDataInband, {nvsp::kSendRndisPkt, 0, nvsp::kNoSection, 0}, {}), nvsp::kStatFail);
    n.nvsp(n.ch, NvspSubchannel{nvsp::kSubchannel, 1, 3}, kInitTid);
    auto c = n.completion(n.ch, kInitTid);
    ASSERT_TRUE(c);
    EXPECT_EQ(at<NvspSubchannel>(c->payload, 0).op_or_status, nvsp::kStatFail);
    // A receive buffer with an unknown GPADL.
    n.nvsp(n.ch, NvspInit{nvsp::kInit, nvsp::kVersion61, nvsp::kVersion61, 0}, kInitTid);
    ASSERT_TRUE(n.completion(n.ch, kInitTid));
    n.nvsp(n.ch, NvspSendBuffer{nvsp::kSendRecvBuf, 0x12345, nvsp::kRecvBufId, 0}, kInitTid);
    c = n.completion(n.ch, kInitTid);
    ASSERT_TRUE(c);
    EXPECT_EQ(at<NvspRecvBufComplete>(c->payload, 0).status, nvsp::kStatFail);
    // Too many sub-channels.
    n.init();
    n.nvsp(n.ch, NvspSubchannel{nvsp::kSubchannel, 1, 64}, kInitTid);
    c = n.completion(n.ch, kInitTid);
    ASSERT_TRUE(c);
    EXPECT_EQ(at<NvspSubchannel>(c->payload, 0).op_or_status, nvsp::kStatFail);
    // Garbage of every size: an answer when asked for one, nothing else.
    for (uint32_t len = 0; len < 48; len += 4) {
        std::vector<uint8_t> junk(len, 0xEE);
        n.send(n.ch, vmbus::kPacketDataInband, 7000 + len, junk);
        auto p = n.completion(n.ch, 7000 + len);
        EXPECT_TRUE(p) << len;
    }
    // A SEND_RNDIS_PKT cut short: a failed completion, not zeros taken for fields.
    const uint32_t short_rndis[2] = {nvsp::kSendRndisPkt, 0};
    n.send(n.ch, vmbus::kPacketDataInband, 7100, as_bytes(short_rndis));
    auto sc = n.completion(n.ch, 7100);
    ASSERT_TRUE(sc);
    EXPECT_EQ(at<NvspRndisComplete>(sc->payload, 0).status, nvsp::kStatFail);
    EXPECT_EQ(n.send_frame_a(n.ch, rndis_packet(tcp4_frame(10))), nvsp::kStatSuccess);
}

// A backend thread delivering frames while the guest completes them, sends TX on two
// channels, and then detaches (§6) under that traffic: nothing is lost track of, the
// teardowns finish, and (in the TSan build) nothing races.
TEST(Netvsp, RxThreadDuringTrafficAndDetach) {
    NetGuest n;
    n.init();
    auto subs = n.subchannels(1);
    ASSERT_EQ(subs.size(), 1u);
    EXPECT_EQ(n.set(rndis::kOidRssParameters, rss_params(128, 2)), 0u);
    n.up();
    net::Receiver* rx = n.backend->receiver();
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> taken{0};
    std::thread backend_thread([&] {
        uint16_t port = 1;
        while (!stop.load()) {
            auto f = tcp4_frame(100, false, 0x0a000002, 0x0a00020f, port++, 80);
            const iovec iov{f.data(), f.size()};
            if (rx->receive(std::span(&iov, 1), {})) taken.fetch_add(1);
            if (port % 8 == 0) rx->flush();
            if (port % 64 == 0) std::this_thread::sleep_for(100us);
        }
        rx->flush();
    });
    auto complete_all = [&](SimChannel& c) {
        for (auto& p : std::exchange(n.xfers, {}))
            if (&c == &n.ch) n.complete_rx(c, p.desc.trans_id);
        while (auto p = c.to_guest.read())
            if (p->desc.type == vmbus::kPacketDataUsingXferPages) n.complete_rx(c, p->desc.trans_id);
    };
    for (int i = 0; i < 200; ++i) {
        n.g.pump();
        complete_all(n.ch);
        complete_all(subs[0]);
        if (i % 20 == 0) {
            EXPECT_EQ(n.send_frame_a(n.ch, rndis_packet(tcp4_frame(10))), nvsp::kStatSuccess);
            EXPECT_EQ(n.send_frame_a(subs[0], rndis_packet(tcp4_frame(10)), 3), nvsp::kStatSuccess);
        }
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_GT(taken.load(), 0u);
    // Detach while frames keep coming.
    EXPECT_EQ(n.set(rndis::kOidPacketFilter, bytes_of(uint32_t{0})), 0u);
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeRecvBuf, nvsp::kRecvBufId, 0}, nvsp::kNoResponseId, false);
    n.nvsp(n.ch, NvspRevoke{nvsp::kRevokeSendBuf, 0, 0}, nvsp::kNoResponseId, false);
    n.g.simple(vmbus::MsgType::CloseChannel, subs[0].relid);
    n.g.teardown(subs[0].relid, subs[0].gpadl);
    n.g.simple(vmbus::MsgType::CloseChannel, n.ch.relid);
    n.g.teardown(n.ch.relid, n.ch.gpadl);
    n.g.teardown(n.relid, n.recv_gpadl);
    n.g.teardown(n.relid, n.send_gpadl);
    const auto torn = n.g.await_torndown({subs[0].gpadl, n.ch.gpadl, n.recv_gpadl, n.send_gpadl}, 3s);
    stop = true;
    backend_thread.join();
    EXPECT_EQ(torn.size(), 4u);
    const iovec iov{nullptr, 0};
    EXPECT_FALSE(rx->receive(std::span(&iov, 1), {}));  // nothing to receive into any more
    const auto s = n.nic->status();
    EXPECT_EQ(s.queues, 0);
    EXPECT_FALSE(s.guest_ready);
}

TEST(Netvsp, SwitchDataPathGetsAnEmptyCompletion) {
    NetGuest n;
    n.init();
    n.nvsp(n.ch, NvspSwitchDataPath{nvsp::kSwitchDataPath, 0}, 77);
    auto c = n.completion(n.ch, 77);
    ASSERT_TRUE(c);
    EXPECT_TRUE(c->payload.empty());
}
