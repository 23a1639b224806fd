// The VMBus channel state machine: offers, GPADLs, open/close, rescind, unload, and packet
// flow through the rings, driven by a simulated guest that sends what Linux 6.1 sends.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "vmbus/server.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

namespace {

template <typename T>
std::span<const uint8_t> bytes_of(const T& v) {
    return std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T));
}

struct Msg {
    uint32_t vp, sint;
    std::vector<uint8_t> bytes;
    MsgType type() const {
        uint32_t t;
        std::memcpy(&t, bytes.data(), 4);
        return static_cast<MsgType>(t);
    }
    template <typename T>
    T as() const {
        T v{};
        std::memcpy(&v, bytes.data(), std::min(sizeof(T), bytes.size()));
        return v;
    }
};

struct Sink final : MessageSink {
    std::vector<Msg> msgs;
    std::vector<uint32_t> signals;  // relids
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        msgs.push_back({vp, sint, {m.begin(), m.end()}});
        return true;
    }
    bool signal(uint32_t, uint32_t, uint32_t flag) override {
        signals.push_back(flag);
        return true;
    }
    std::vector<Msg> take() { return std::exchange(msgs, {}); }
};

struct FakeDevice final : Device {
    OfferParams params;
    ChannelEndpoint* ep = nullptr;
    int opens = 0, closes = 0;
    std::vector<std::vector<uint8_t>> packets;
    std::vector<uint64_t> trans_ids;
    bool echo = false;
    explicit FakeDevice(const char* instance) {
        params.name = "fake";
        params.class_id = Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
        params.instance_id = Guid::parse(instance);
        params.max_packet_from_guest = 4096;
    }
    const OfferParams& offer() const override { return params; }
    void on_open(ChannelEndpoint& e) override {
        ep = &e;
        ++opens;
    }
    void on_close() override {
        ep = nullptr;
        ++closes;
    }
    void on_packet(const IncomingPacket& p) override {
        packets.emplace_back(p.payload.begin(), p.payload.end());
        trans_ids.push_back(p.trans_id);
        if (echo) ep->send(kPacketCompletion, 0, p.trans_id, p.payload);
    }
};

// The guest side: RAM, and the messages hv_vmbus posts.
class Guest {
public:
    static constexpr uint64_t kRamPages = 512;
    Guest() : ram_(kRamPages * kPageSize), mem_(GuestMemory::borrow({{0, ram_.size(), ram_.data()}})), server_(sink_, mem_, 2) {}

    Sink& sink() { return sink_; }
    Server& server() { return server_; }
    std::vector<uint8_t>& ram() { return ram_; }

    void post_bytes(std::span<const uint8_t> m) { ASSERT_EQ(server_.handle_message(0, 4, m), hv::Status::Success); }
    template <typename T>
    void post(const T& m) {
        static_assert(std::is_trivially_copyable_v<T>);
        post_bytes(bytes_of(m));
    }

    void connect() {
        InitiateContact c{};
        c.header.msgtype = static_cast<uint32_t>(MsgType::InitiateContact);
        c.vmbus_version_requested = kVersionWin10V5_3;
        c.interrupt_page_or_sint = 2;
        post(c);
        MessageHeader req{static_cast<uint32_t>(MsgType::RequestOffers), 0};
        post(req);
    }

    // hv_vmbus's create_gpadl_header(): 26 PFNs in the header, 28 per body.
    void create_gpadl(uint32_t relid, uint32_t handle, const std::vector<uint64_t>& pfns) {
        const size_t in_header = std::min<size_t>(pfns.size(), 26);
        std::vector<uint8_t> m(sizeof(GpadlHeader) + 8 * in_header);
        GpadlHeader h{};
        h.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
        h.child_relid = relid;
        h.gpadl = handle;
        h.range_buflen = static_cast<uint16_t>(8 + 8 * pfns.size());
        h.rangecount = 1;
        h.byte_count = static_cast<uint32_t>(pfns.size() * kPageSize);
        std::memcpy(m.data(), &h, sizeof(h));
        std::memcpy(m.data() + sizeof(h), pfns.data(), 8 * in_header);
        post_bytes(m);
        for (size_t at = in_header; at < pfns.size(); at += 28) {
            const size_t n = std::min<size_t>(pfns.size() - at, 28);
            std::vector<uint8_t> b(sizeof(GpadlBody) + 8 * n);
            GpadlBody body{{static_cast<uint32_t>(MsgType::GpadlBody), 0}, 0, handle};
            std::memcpy(b.data(), &body, sizeof(body));
            std::memcpy(b.data() + sizeof(body), pfns.data() + at, 8 * n);
            post_bytes(b);
        }
    }

    void open(uint32_t relid, uint32_t gpadl, uint32_t send_pages, uint32_t vp = 0) {
        OpenChannel o{};
        o.header.msgtype = static_cast<uint32_t>(MsgType::OpenChannel);
        o.child_relid = relid;
        o.openid = relid;
        o.ringbuffer_gpadl = gpadl;
        o.target_vp = vp;
        o.downstream_ringbuffer_pageoffset = send_pages;
        post(o);
    }

    void simple(MsgType t, uint32_t relid) {
        CloseChannel c{{static_cast<uint32_t>(t), 0}, relid};
        post(c);
    }

    void teardown(uint32_t relid, uint32_t gpadl) {
        GpadlTeardown t{{static_cast<uint32_t>(MsgType::GpadlTeardown), 0}, relid, gpadl};
        post(t);
    }

    // Ring pages [first, first + count): header page and data pages, like the guest's
    // single allocation for both rings; the guest initialises the headers.
    std::vector<uint64_t> ring_pages(uint64_t first, uint64_t count) {
        std::vector<uint64_t> v;
        for (uint64_t i = 0; i < count; ++i) v.push_back(first + i);
        return v;
    }

    // Guest writes a packet into the guest-to-host ring whose header is at page `hdr`.
    void guest_send(uint64_t hdr, uint32_t data_pages, uint64_t trans_id, const std::vector<uint8_t>& payload) {
        uint8_t* h = ram_.data() + hdr * kPageSize;
        uint32_t w;
        std::memcpy(&w, h, 4);
        const uint32_t size = data_pages * kPageSize;
        const uint32_t len = static_cast<uint32_t>((16 + payload.size() + 7) / 8 * 8);
        PacketDescriptor d{kPacketDataInband, 2, static_cast<uint16_t>(len / 8), 1, trans_id};
        auto put = [&](uint32_t pos, const void* src, size_t n) {
            for (size_t i = 0; i < n; ++i)
                ram_[(hdr + 1) * kPageSize + (pos + i) % size] = static_cast<const uint8_t*>(src)[i];
        };
        put(w, &d, 16);
        put(w + 16, payload.data(), payload.size());
        const uint32_t nw = (w + len + 8) % size;
        std::memcpy(h, &nw, 4);
    }

    // Reads one packet from the host-to-guest ring at page `hdr`.
    std::optional<std::pair<PacketDescriptor, std::vector<uint8_t>>> guest_receive(uint64_t hdr, uint32_t data_pages) {
        uint8_t* h = ram_.data() + hdr * kPageSize;
        uint32_t w, r;
        std::memcpy(&w, h, 4);
        std::memcpy(&r, h + 4, 4);
        if (w == r) return std::nullopt;
        const uint32_t size = data_pages * kPageSize;
        auto get = [&](uint32_t pos, void* dst, size_t n) {
            for (size_t i = 0; i < n; ++i)
                static_cast<uint8_t*>(dst)[i] = ram_[(hdr + 1) * kPageSize + (pos + i) % size];
        };
        PacketDescriptor d;
        get(r, &d, 16);
        std::vector<uint8_t> payload(d.len8 * 8u - d.offset8 * 8u);
        get(r + d.offset8 * 8u, payload.data(), payload.size());
        const uint32_t nr = (r + d.len8 * 8u + 8) % size;
        std::memcpy(h + 4, &nr, 4);
        return std::pair{d, payload};
    }

private:
    std::vector<uint8_t> ram_;
    Sink sink_;
    GuestMemory mem_;
    Server server_;
};

const char* kInst1 = "11111111-2222-3333-4444-555555555555";
const char* kInst2 = "11111111-2222-3333-4444-666666666666";

// Adds a fake device, connects, and returns its relid with the offer checked.
uint32_t offered(Guest& g, std::shared_ptr<FakeDevice>& dev) {
    dev = std::make_shared<FakeDevice>(kInst1);
    const uint32_t relid = g.server().add_device(dev).value();
    g.connect();
    auto msgs = g.sink().take();
    EXPECT_EQ(msgs.size(), 3u);  // VERSION_RESPONSE, OFFERCHANNEL, ALLOFFERS_DELIVERED
    return relid;
}

}  // namespace

TEST(VmbusChannels, OffersCarryTheDeviceIdentityAndAUniqueConnectionId) {
    Guest g;
    auto a = std::make_shared<FakeDevice>(kInst1);
    auto b = std::make_shared<FakeDevice>(kInst2);
    const uint32_t ra = g.server().add_device(a).value();
    const uint32_t rb = g.server().add_device(b).value();
    EXPECT_NE(ra, rb);
    g.connect();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 4u);
    EXPECT_EQ(msgs[1].type(), MsgType::OfferChannel);
    EXPECT_EQ(msgs[1].bytes.size(), 196u);
    const auto oa = msgs[1].as<OfferChannel>();
    const auto ob = msgs[2].as<OfferChannel>();
    EXPECT_EQ(oa.if_type.to_string(), "57164f39-9115-4e78-ab55-382f3bd5422d");
    EXPECT_EQ(oa.if_instance.to_string(), kInst1);
    EXPECT_EQ(oa.child_relid, ra);
    EXPECT_EQ(ob.child_relid, rb);
    EXPECT_NE(oa.connection_id, ob.connection_id);
    EXPECT_LT(oa.connection_id, 1u << 24);
    EXPECT_EQ(oa.monitor_allocated, 0);
    EXPECT_GE(oa.child_relid, 1u);
    EXPECT_LE(oa.child_relid, 2047u);
    EXPECT_EQ(msgs[3].type(), MsgType::AllOffersDelivered);
    // A device added later is offered at once.
    auto c = std::make_shared<FakeDevice>("11111111-2222-3333-4444-777777777777");
    g.server().add_device(c).value();
    msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::OfferChannel);
}

TEST(VmbusChannels, GpadlIsReassembledFromHeaderAndBodies) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    // 100 pages: a header with 26 and three bodies.
    g.create_gpadl(relid, 0xe1e10, g.ring_pages(100, 100));
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::GpadlCreated);
    const auto created = msgs[0].as<GpadlCreated>();
    EXPECT_EQ(created.child_relid, relid);
    EXPECT_EQ(created.gpadl, 0xe1e10u);
    EXPECT_EQ(created.creation_status, 0u);
    EXPECT_EQ(g.server().gpadl_count(), 1u);
    EXPECT_EQ(g.server().gpadl_pages(relid, 0xe1e10)->size(), 100u);
    g.teardown(relid, 0xe1e10);
    msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::GpadlTorndown);
    EXPECT_EQ(msgs[0].as<GpadlTorndown>().gpadl, 0xe1e10u);
    EXPECT_EQ(g.server().gpadl_count(), 0u);
}

TEST(VmbusChannels, BadGpadlsAreRefusedWithAStatus) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto status_of = [&](std::vector<uint64_t> pfns, uint32_t handle, uint32_t for_relid) {
        g.create_gpadl(for_relid, handle, pfns);
        auto msgs = g.sink().take();
        EXPECT_EQ(msgs.size(), 1u);
        return msgs.empty() ? 0u : msgs.back().as<GpadlCreated>().creation_status;
    };
    EXPECT_NE(status_of({1, 2, 100000}, 1, relid), 0u);       // a page outside RAM
    EXPECT_NE(status_of({1, 2, ~0ULL}, 2, relid), 0u);         // a PFN that overflows
    EXPECT_NE(status_of({1, 2, 3}, 3, 999), 0u);               // no such channel
    EXPECT_EQ(status_of({1, 2, 3}, 4, relid), 0u);
    EXPECT_NE(status_of({5, 6}, 4, relid), 0u);                // handle already in use
    EXPECT_EQ(g.server().gpadl_count(), 1u);
    // A header claiming more pages than allowed.
    GpadlHeader h{};
    h.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
    h.child_relid = relid;
    h.gpadl = 9;
    h.range_buflen = 8;  // zero pages
    h.rangecount = 1;
    h.byte_count = 4096;
    g.post(h);
    EXPECT_NE(g.sink().take().back().as<GpadlCreated>().creation_status, 0u);
    h.range_buflen = 16;
    h.rangecount = 2;  // multi-range
    g.post(h);
    EXPECT_NE(g.sink().take().back().as<GpadlCreated>().creation_status, 0u);
    // A body for an unknown GPADL is ignored.
    GpadlBody b{{static_cast<uint32_t>(MsgType::GpadlBody), 0}, 0, 77};
    g.post(b);
    EXPECT_TRUE(g.sink().take().empty());
}

TEST(VmbusChannels, OpenPacketsBothWaysCloseAndReopen) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    dev->echo = true;
    // Ring GPADL: 4 pages to the host (header + 3), 4 pages to the guest.
    g.create_gpadl(relid, 0x100, g.ring_pages(10, 8));
    g.sink().take();
    g.open(relid, 0x100, 4, 1);
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::OpenChannelResult);
    EXPECT_EQ(msgs[0].as<OpenResult>().status, 0u);
    EXPECT_EQ(msgs[0].as<OpenResult>().child_relid, relid);
    EXPECT_EQ(dev->opens, 1);
    const uint32_t conn = kChannelConnectionBase + relid;

    // Guest -> host, then the device's echo comes back, with a signal to VP 1's SINT.
    g.guest_send(10, 3, 42, {1, 2, 3, 4, 5});
    EXPECT_EQ(g.server().handle_event(0, conn, 0), hv::Status::Success);
    ASSERT_EQ(dev->packets.size(), 1u);
    EXPECT_EQ(dev->trans_ids[0], 42u);
    EXPECT_EQ(dev->packets[0][4], 5);
    auto back = g.guest_receive(14, 3);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->first.type, kPacketCompletion);
    EXPECT_EQ(back->first.trans_id, 42u);
    EXPECT_EQ(back->second[2], 3);
    EXPECT_EQ(g.sink().signals, std::vector<uint32_t>{relid});
    EXPECT_EQ(g.server().handle_event(0, conn + 1000, 0), hv::Status::InvalidConnectionId);

    // Close: no reply, the device is told, then the guest tears the ring GPADL down.
    g.simple(MsgType::CloseChannel, relid);
    EXPECT_TRUE(g.sink().take().empty());
    EXPECT_EQ(dev->closes, 1);
    g.guest_send(10, 3, 43, {9});
    g.server().handle_event(0, conn, 0);
    EXPECT_EQ(dev->packets.size(), 1u);  // closed: nothing delivered
    g.teardown(relid, 0x100);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
    EXPECT_EQ(g.server().gpadl_count(), 0u);

    // Rebind: a new GPADL and open work again.
    std::memset(g.ram().data() + 20 * kPageSize, 0, 8 * kPageSize);
    g.create_gpadl(relid, 0x101, g.ring_pages(20, 8));
    g.open(relid, 0x101, 4);
    msgs = g.sink().take();
    EXPECT_EQ(msgs.back().as<OpenResult>().status, 0u);
    EXPECT_EQ(dev->opens, 2);
}

TEST(VmbusChannels, OpenIsRefusedInTheWrongState) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto open_status = [&](uint32_t r, uint32_t gpadl, uint32_t send_pages, uint32_t vp = 0) {
        g.open(r, gpadl, send_pages, vp);
        return g.sink().take().back().as<OpenResult>().status;
    };
    EXPECT_NE(open_status(relid, 0x100, 4), 0u);  // no such GPADL
    g.create_gpadl(relid, 0x100, g.ring_pages(10, 8));
    g.sink().take();
    EXPECT_NE(open_status(relid, 0x100, 1), 0u);      // send ring without data pages
    EXPECT_NE(open_status(relid, 0x100, 7), 0u);      // receive ring without data pages
    EXPECT_NE(open_status(relid, 0x100, 4, 9), 0u);   // no such VP
    EXPECT_NE(open_status(relid + 5, 0x100, 4), 0u);  // no such channel
    EXPECT_EQ(dev->opens, 0);
    EXPECT_EQ(open_status(relid, 0x100, 4), 0u);
    EXPECT_NE(open_status(relid, 0x100, 4), 0u);  // already open
    EXPECT_EQ(dev->opens, 1);
    // Tearing down the ring GPADL of an open channel closes the channel first.
    g.teardown(relid, 0x100);
    EXPECT_EQ(dev->closes, 1);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
}

TEST(VmbusChannels, RescindThenRelidReleasedFreesTheRelid) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.create_gpadl(relid, 0x100, g.ring_pages(10, 8));
    g.open(relid, 0x100, 4);
    g.sink().take();
    ASSERT_TRUE(g.server().rescind(relid));
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::RescindChannelOffer);
    EXPECT_EQ(msgs[0].as<RescindOffer>().child_relid, relid);
    EXPECT_EQ(dev->closes, 1);
    // The relid is not reused before RELID_RELEASED.
    auto other = std::make_shared<FakeDevice>(kInst2);
    EXPECT_NE(g.server().add_device(other).value(), relid);
    g.simple(MsgType::CloseChannel, relid);  // tolerated for a rescinded channel
    g.simple(MsgType::RelidReleased, relid);
    auto third = std::make_shared<FakeDevice>("11111111-2222-3333-4444-888888888888");
    EXPECT_EQ(g.server().add_device(third).value(), relid);
}

TEST(VmbusChannels, UnloadClosesEverythingAndAReconnectOffersAgain) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.create_gpadl(relid, 0x100, g.ring_pages(10, 8));
    g.open(relid, 0x100, 4);
    g.create_gpadl(relid, 0x200, g.ring_pages(30, 2));
    g.sink().take();
    MessageHeader unload{static_cast<uint32_t>(MsgType::Unload), 0};
    g.post(unload);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::UnloadResponse);
    EXPECT_EQ(dev->closes, 1);
    EXPECT_EQ(g.server().gpadl_count(), 0u);
    EXPECT_FALSE(g.server().connected());
    // Messages other than the handshake are ignored until the guest connects again.
    g.open(relid, 0x100, 4);
    EXPECT_TRUE(g.sink().take().empty());
    g.connect();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 3u);
    EXPECT_EQ(msgs[1].as<OfferChannel>().child_relid, relid);
}

TEST(VmbusChannels, ModifyChannelRetargetsEventsAndAnswersFrom5_3) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    ModifyChannel m{{static_cast<uint32_t>(MsgType::ModifyChannel), 0}, relid, 1};
    g.post(m);
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::ModifyChannelResponse);
    EXPECT_EQ(msgs[0].as<ModifyChannelResponse>().status, 0u);
    EXPECT_EQ(g.server().channels()[0].target_vp, 1u);
    m.target_vp = 7;
    g.post(m);
    EXPECT_NE(g.sink().take().back().as<ModifyChannelResponse>().status, 0u);
}

TEST(VmbusChannels, ACorruptRingClosesTheChannelOnly) {
    Guest g;
    std::shared_ptr<FakeDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.create_gpadl(relid, 0x100, g.ring_pages(10, 8));
    g.open(relid, 0x100, 4);
    g.sink().take();
    const uint32_t bogus = 0xffff0;
    std::memcpy(g.ram().data() + 10 * kPageSize, &bogus, 4);  // write index beyond the ring
    g.server().handle_event(0, kChannelConnectionBase + relid, 0);
    EXPECT_EQ(dev->closes, 1);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Failed);
    // The server keeps working.
    g.simple(MsgType::CloseChannel, relid);
    g.teardown(relid, 0x100);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
}

TEST(VmbusChannels, SubChannelOffersShareTheGuidsWithANonZeroIndex) {
    Guest g;
    auto primary = std::make_shared<FakeDevice>(kInst1);
    auto sub = std::make_shared<FakeDevice>(kInst1);
    sub->params.sub_channel_index = 1;
    const uint32_t r1 = g.server().add_device(primary).value();
    g.connect();
    g.sink().take();
    // Offered later, as storvsc/netvsc get theirs after asking for them.
    const uint32_t r2 = g.server().add_device(sub).value();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    const auto offer = msgs[0].as<OfferChannel>();
    EXPECT_EQ(offer.child_relid, r2);
    EXPECT_NE(r1, r2);
    EXPECT_EQ(offer.if_type.to_string(), "57164f39-9115-4e78-ab55-382f3bd5422d");
    EXPECT_EQ(offer.if_instance.to_string(), kInst1);
    EXPECT_EQ(offer.sub_channel_index, 1);
    EXPECT_NE(offer.connection_id, kChannelConnectionBase + r1);
}
