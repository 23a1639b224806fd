// The VMBus channel state machine and the device platform: offers, GPADLs and held GPADL
// views, asynchronous open/close, sub-channel groups, rescind, unload, the channel queue
// (back-pressure, every packet form, reservations) and doorbells, driven by the simulated
// guest in support/sim_guest.hpp that sends what Linux 6.1 sends.
#include <gtest/gtest.h>

#include <poll.h>

#include <atomic>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "support/sim_guest.hpp"
#include "vmbus/queue.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;
using namespace enlighten::test;
using namespace std::chrono_literals;

namespace {

const char* kClass = "57164f39-9115-4e78-ab55-382f3bd5422d";
const char* kInst1 = "11111111-2222-3333-4444-555555555555";
const char* kInst2 = "11111111-2222-3333-4444-666666666666";

// A device the test drives by hand: open and close complete at once, or wait for the test.
struct TestDevice final : Device {
    OfferParams params;
    uint16_t max_sub = 0;
    ChannelControl* control = nullptr;
    std::map<uint16_t, std::shared_ptr<ChannelQueue>> queues;
    int attaches = 0, opens = 0, opened_calls = 0, closes = 0, resets = 0, detaches = 0;
    std::vector<std::pair<uint16_t, uint32_t>> retargets;
    bool defer_open = false, defer_close = false, refuse_open = false;
    std::vector<OpenDone> pending_opens;
    std::vector<CloseDone> pending_closes;

    explicit TestDevice(const char* instance, uint16_t subchannels = 0) : max_sub(subchannels) {
        params.name = "test";
        params.class_id = Guid::parse(kClass);
        params.instance_id = Guid::parse(instance);
        params.max_packet_from_guest = 4096;
        params.max_packet_to_guest = 4096;
    }
    const OfferParams& offer() const override { return params; }
    uint16_t max_subchannels() const override { return max_sub; }
    void attach(const DeviceResources& r) override {
        control = r.control;
        ++attaches;
    }
    void open(const OpenRequest& req, std::shared_ptr<ChannelQueue> q, OpenDone done) override {
        ++opens;
        queues[req.index] = std::move(q);
        if (refuse_open) return done(fail("refused by the test"));
        if (defer_open) return pending_opens.push_back(std::move(done));
        done({});
    }
    void opened(uint16_t) override { ++opened_calls; }
    void close(uint16_t index, CloseDone done) override {
        ++closes;
        queues.erase(index);
        if (defer_close) return pending_closes.push_back(std::move(done));
        done();
    }
    void retarget(uint16_t index, uint32_t vp) override { retargets.emplace_back(index, vp); }
    void reset() override { ++resets; }
    void detach() override {
        ++detaches;
        control = nullptr;
    }

    // Takes every packet waiting on channel `index` (copies), as a worker would.
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> drain(uint16_t index = 0) {
        std::vector<std::pair<uint64_t, std::vector<uint8_t>>> out;
        auto& q = queues.at(index);
        q->drain_notify();
        for (;;) {
            auto p = q->peek();
            if (!p || !*p) {
                if (!p || q->arm()) break;
                continue;
            }
            out.emplace_back((*p)->trans_id, std::vector<uint8_t>((*p)->payload.begin(), (*p)->payload.end()));
            q->consume();
        }
        return out;
    }
};

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
}

// Adds a device, connects, and returns its relid with the offer checked.
uint32_t offered(SimGuest& g, std::shared_ptr<TestDevice>& dev, uint16_t subchannels = 0) {
    dev = std::make_shared<TestDevice>(kInst1, subchannels);
    const uint32_t relid = g.server().add_device(dev).value();
    g.connect();
    auto msgs = g.sink().take();
    EXPECT_EQ(msgs.size(), 3u);  // VERSION_RESPONSE, OFFERCHANNEL, ALLOFFERS_DELIVERED
    EXPECT_EQ(dev->attaches, 1);
    return relid;
}

std::vector<uint8_t> bytes(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i);
    return v;
}

}  // namespace

TEST(VmbusChannels, OffersCarryTheDeviceIdentityAndAUniqueConnectionId) {
    SimGuest g;
    auto a = std::make_shared<TestDevice>(kInst1);
    auto b = std::make_shared<TestDevice>(kInst2);
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
    EXPECT_EQ(oa.if_type.to_string(), kClass);
    EXPECT_EQ(oa.if_instance.to_string(), kInst1);
    EXPECT_EQ(oa.child_relid, ra);
    EXPECT_EQ(ob.child_relid, rb);
    EXPECT_EQ(oa.sub_channel_index, 0);
    EXPECT_NE(oa.connection_id, ob.connection_id);
    EXPECT_LT(oa.connection_id, 1u << 24);
    EXPECT_EQ(oa.monitor_allocated, 0);
    EXPECT_GE(oa.child_relid, 1u);
    EXPECT_LE(oa.child_relid, 2047u);
    EXPECT_EQ(msgs[3].type(), MsgType::AllOffersDelivered);
    EXPECT_EQ(a->attaches, 1);
    // A device added later is offered at once.
    auto c = std::make_shared<TestDevice>("11111111-2222-3333-4444-777777777777");
    g.server().add_device(c).value();
    msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::OfferChannel);
}

TEST(VmbusChannels, GpadlIsReassembledFromHeaderAndBodies) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    // 100 pages: a header with 26 and three bodies.
    g.create_gpadl(relid, 0xe1e10, SimGuest::pages(100, 100));
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::GpadlCreated);
    const auto created = msgs[0].as<GpadlCreated>();
    EXPECT_EQ(created.child_relid, relid);
    EXPECT_EQ(created.gpadl, 0xe1e10u);
    EXPECT_EQ(created.creation_status, 0u);
    EXPECT_EQ(g.server().gpadl_count(), 1u);
    EXPECT_EQ(g.server().gpadls().find(0xe1e10)->pfns.size(), 100u);
    EXPECT_EQ(g.server().gpadls().find(0xe1e10)->pfns[99], 199u);
    g.teardown(relid, 0xe1e10);
    msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::GpadlTorndown);
    EXPECT_EQ(msgs[0].as<GpadlTorndown>().gpadl, 0xe1e10u);
    EXPECT_EQ(g.server().gpadl_count(), 0u);
}

TEST(VmbusChannels, BadGpadlsAreRefusedWithAStatus) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto status_of = [&](std::vector<uint64_t> pfns, uint32_t handle, uint32_t for_relid) {
        g.create_gpadl(for_relid, handle, pfns);
        auto msgs = g.sink().take();
        EXPECT_EQ(msgs.size(), 1u);
        return msgs.empty() ? 0u : msgs.back().as<GpadlCreated>().creation_status;
    };
    EXPECT_NE(status_of({1, 2, 100000}, 1, relid), 0u);  // a page outside RAM
    EXPECT_NE(status_of({1, 2, ~0ULL}, 2, relid), 0u);    // a PFN that overflows
    EXPECT_NE(status_of({1, 2, 3}, 3, 999), 0u);          // no such channel
    EXPECT_EQ(status_of({1, 2, 3}, 4, relid), 0u);
    EXPECT_NE(status_of({5, 6}, 4, relid), 0u);  // handle already in use
    EXPECT_EQ(g.server().gpadl_count(), 1u);
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
    // Teardown of a GPADL still being assembled is answered.
    g.create_gpadl(relid, 0x55, SimGuest::pages(200, 60));  // header and two bodies...
    GpadlHeader partial{};
    partial.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
    partial.child_relid = relid;
    partial.gpadl = 0x56;
    partial.range_buflen = 8 + 8 * 40;
    partial.rangecount = 1;
    partial.byte_count = 40 * 4096;
    g.post(partial);  // ... and one that waits for bodies that never come
    g.sink().take();
    EXPECT_EQ(g.server().gpadl_count(), 3u);
    g.teardown(relid, 0x56);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
    EXPECT_EQ(g.server().gpadl_count(), 2u);
}

// Reliability review A5: Linux writes range_buflen (8 + 8 x pages) into 16 bits, so past 8190
// pages it wraps; the page count comes from the byte count. GPADLs of 8191 and 25600 pages
// (a 100 MiB buffer) are made; a range_buflen that does not match, even modulo 2^16, is not.
TEST(VmbusChannels, GpadlsOfMoreThan8190PagesAreMade) {
    SimGuest g(2, 25600 + 256);  // 100 MiB of guest RAM
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    const uint64_t first = g.alloc_pages(25600);
    for (const auto& [handle, pages] : {std::pair{0x300u, uint64_t{8191}}, std::pair{0x301u, uint64_t{25600}}}) {
        g.create_gpadl(relid, handle, SimGuest::pages(first, pages));
        auto msgs = g.sink().take();
        ASSERT_FALSE(msgs.empty());
        EXPECT_EQ(msgs.back().as<GpadlCreated>().creation_status, 0u) << pages;
        auto view = g.server().gpadls().find(handle);
        ASSERT_TRUE(view) << pages;
        EXPECT_EQ(view->pfns.size(), pages);
    }
    GpadlHeader h{};
    h.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
    h.child_relid = relid;
    h.gpadl = 0x302;
    h.rangecount = 1;
    h.byte_count = 8191 * 4096;
    h.range_buflen = 16;  // one page: not 8 + 8 x 8191 modulo 2^16
    g.post(h);
    EXPECT_NE(g.sink().take().back().as<GpadlCreated>().creation_status, 0u);
}

// vm.info's view of a channel's rings: both headers as they are, while the host uses them.
TEST(VmbusChannels, TheSnapshotShowsBothRingsWhileTheChannelIsOpen) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto snap = [&] {
        for (const auto& c : g.server().channels())
            if (c.relid == relid) return c;
        ADD_FAILURE() << "no channel " << relid;
        return ChannelSnapshot{};
    };
    EXPECT_FALSE(snap().rings);  // offered: no rings yet
    auto ch = g.open_channel(relid, 3, 2);
    ASSERT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
    ASSERT_TRUE(g.send(ch, kPacketDataInband, 7, bytes(24, 1)));  // 16 + 24 bytes, and the trailer
    auto s = snap();
    ASSERT_TRUE(s.rings && s.rings->to_host && s.rings->to_guest);
    EXPECT_EQ(s.rings->to_host->data_size, 3u * 4096);
    EXPECT_EQ(s.rings->to_guest->data_size, 2u * 4096);
    EXPECT_EQ(s.rings->to_host->write_index, 48u);
    EXPECT_EQ(s.rings->to_host->read_index, 0u);  // the device has not taken it
    EXPECT_EQ(dev->drain().size(), 1u);
    EXPECT_EQ(snap().rings->to_host->read_index, 48u);
    EXPECT_FALSE(snap().waiting_for_room);
    g.simple(MsgType::CloseChannel, relid);
    g.pump();
    EXPECT_FALSE(snap().rings);  // closed: the host let the rings go
}

TEST(VmbusChannels, OpenPacketsBothWaysCloseAndReopen) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid, 3, 3, 1);
    auto msgs = g.sink().take();
    ASSERT_EQ(SimGuest::open_result(msgs, relid), 0u);
    EXPECT_EQ(dev->opens, 1);
    EXPECT_EQ(dev->opened_calls, 1);
    ASSERT_TRUE(dev->queues.count(0));
    auto q = dev->queues[0];
    EXPECT_EQ(q->target_vp(), 1u);

    // Guest -> host: the doorbell makes the queue's fd readable; the device takes the packet.
    EXPECT_FALSE(readable(q->notify_fd()));
    ASSERT_TRUE(g.send(ch, kPacketDataInband, 42, bytes(5, 1)));
    EXPECT_TRUE(readable(q->notify_fd()));
    auto got = dev->drain();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].first, 42u);
    EXPECT_EQ(got[0].second[4], 5);
    EXPECT_FALSE(readable(q->notify_fd()));
    // Host -> guest: a completion, with a signal to VP 1 (the guest was empty).
    const auto reply = bytes(7, 20);
    const iovec iov = iov_of(reply);
    ASSERT_TRUE(q->send(OutPacket::completion(42, std::span(&iov, 1))));
    auto back = ch.to_guest.read();
    ASSERT_TRUE(back);
    EXPECT_EQ(back->desc.type, kPacketCompletion);
    EXPECT_EQ(back->desc.trans_id, 42u);
    EXPECT_EQ(back->payload[2], 22);
    EXPECT_EQ(g.sink().take_signals(), std::vector<uint32_t>{relid});
    EXPECT_EQ(g.server().handle_event(0, ch.connection_id + 1000, 0), hv::Status::InvalidConnectionId);

    // Close: no reply, the device is told (on the loop), the queue stops, the guest tears
    // the ring GPADL down and gets its answer.
    g.simple(MsgType::CloseChannel, relid);
    EXPECT_TRUE(g.sink().take().empty());
    g.pump();
    EXPECT_EQ(dev->closes, 1);
    EXPECT_TRUE(q->closed());
    EXPECT_FALSE(q->send(OutPacket::completion(1, std::span(&iov, 1))));
    g.teardown(relid, ch.gpadl);
    g.pump();
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
    EXPECT_EQ(g.server().gpadl_count(), 0u);

    // Rebind: a new GPADL and open work again.
    g.open_channel(relid);
    EXPECT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
    EXPECT_EQ(dev->opens, 2);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Open);
}

TEST(VmbusChannels, OpenResultWaitsForTheDeviceAndARefusalIsAFailureStatus) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    dev->defer_open = true;
    g.open_channel(relid);
    EXPECT_EQ(dev->opens, 1);
    EXPECT_FALSE(SimGuest::open_result(g.sink().take(), relid));  // not before the device is ready
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Opening);
    ASSERT_EQ(dev->pending_opens.size(), 1u);
    // The device finishes on another thread.
    std::thread([&] { std::exchange(dev->pending_opens, {})[0]({}); }).join();
    g.pump();
    EXPECT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
    EXPECT_EQ(dev->opened_calls, 1);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Open);

    // A device that refuses: a failure status, the channel stays closed, the GPADL free.
    g.simple(MsgType::CloseChannel, relid);
    g.pump();
    dev->defer_open = false;
    dev->refuse_open = true;
    auto ch = g.open_channel(relid);
    EXPECT_NE(SimGuest::open_result(g.sink().take(), relid).value_or(0), 0u);
    EXPECT_EQ(dev->opened_calls, 1);
    EXPECT_NE(g.server().channels()[0].state, ChannelState::Open);
    g.teardown(relid, ch.gpadl);
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
}

TEST(VmbusChannels, OpenIsRefusedInTheWrongState) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto open_status = [&](uint32_t r, uint32_t gpadl, uint32_t send_pages, uint32_t vp = 0) {
        g.send_open(r, gpadl, send_pages, vp);
        g.pump();
        return SimGuest::open_result(g.sink().take(), r).value_or(0xdead);
    };
    EXPECT_NE(open_status(relid, 0x100, 4), 0u);  // no such GPADL
    const uint64_t first = g.alloc_pages(8);
    g.create_gpadl(relid, 0x100, SimGuest::pages(first, 8));
    g.sink().take();
    EXPECT_NE(open_status(relid, 0x100, 1), 0u);      // send ring without data pages
    EXPECT_NE(open_status(relid, 0x100, 7), 0u);      // receive ring without data pages
    // Reliability review A4: offsets near 2^32 wrapped a 32-bit "offset + 2" and then asked
    // span::first for 4 G pages (an abort with _GLIBCXX_ASSERTIONS, as build-asan has it).
    for (const uint32_t offset : {0xffffffffu, 0xfffffffeu, 0x80000000u, 0u, 8u})
        EXPECT_NE(open_status(relid, 0x100, offset), 0u) << offset;
    EXPECT_NE(open_status(relid, 0x100, 4, 9), 0u);   // no such VP
    EXPECT_NE(open_status(relid + 5, 0x100, 4), 0u);  // no such channel
    EXPECT_EQ(dev->opens, 0);
    EXPECT_EQ(open_status(relid, 0x100, 4), 0u);
    EXPECT_NE(open_status(relid, 0x100, 4), 0u);  // already open
    EXPECT_EQ(dev->opens, 1);
    // Tearing down the ring GPADL of an open channel closes the channel first; the answer
    // comes once the device let go of the rings.
    dev->defer_close = true;
    g.teardown(relid, 0x100);
    g.pump();
    EXPECT_EQ(dev->closes, 1);
    EXPECT_TRUE(g.sink().take().empty());
    std::exchange(dev->pending_closes, {})[0]();
    g.pump();
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Failed);
}

// Reliability review A2: a ring GPADL that names a page twice ({p, p+1, p, p+1} split at 2:
// both rings on the same pages; or a page twice within one ring) is refused, so the host
// never reads its own packets back as the guest's. Distinct pages open.
TEST(VmbusChannels, ARingGpadlNamingAPageTwiceIsRefused) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto open_status = [&](uint32_t gpadl, uint32_t send_pages) {
        g.send_open(relid, gpadl, send_pages, 0);
        g.pump();
        return SimGuest::open_result(g.sink().take(), relid).value_or(0xdead);
    };
    const uint64_t p = g.alloc_pages(8);
    g.create_gpadl(relid, 0x200, {p, p + 1, p, p + 1});
    g.create_gpadl(relid, 0x201, {p, p + 1, p + 2, p + 3, p + 2});
    g.create_gpadl(relid, 0x202, {p + 4, p + 5, p + 6, p + 7});
    g.sink().take();
    EXPECT_NE(open_status(0x200, 2), 0u);
    EXPECT_NE(open_status(0x201, 2), 0u);
    EXPECT_EQ(dev->opens, 0);
    EXPECT_EQ(open_status(0x202, 2), 0u);
    EXPECT_EQ(dev->opens, 1);
}

TEST(VmbusChannels, CloseWaitsForTheDeviceAndAReopenIsAnsweredAfterIt) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid);
    g.sink().take();
    dev->defer_close = true;
    g.simple(MsgType::CloseChannel, relid);
    g.pump();
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Closing);
    // The guest tears the ring down and opens again at once (a rebind): both wait.
    g.teardown(relid, ch.gpadl);
    g.open_channel(relid);
    EXPECT_TRUE(g.sink().take().size() == 1);  // only the new GPADL's GPADL_CREATED
    EXPECT_EQ(dev->opens, 1);
    dev->defer_close = false;
    std::exchange(dev->pending_closes, {})[0]();
    g.pump();
    auto msgs = g.sink().take();
    bool torn = false;
    for (const auto& m : msgs) torn |= m.type() == MsgType::GpadlTorndown;
    EXPECT_TRUE(torn);
    EXPECT_EQ(SimGuest::open_result(msgs, relid), 0u);
    EXPECT_EQ(dev->opens, 2);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Open);
}

TEST(VmbusChannels, RescindThenRelidReleasedFreesTheRelid) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.open_channel(relid);
    g.sink().take();
    ASSERT_TRUE(g.server().rescind(relid));
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::RescindChannelOffer);
    EXPECT_EQ(msgs[0].as<RescindOffer>().child_relid, relid);
    g.pump();
    EXPECT_EQ(dev->closes, 1);
    EXPECT_EQ(dev->resets, 1);
    EXPECT_EQ(dev->detaches, 1);
    // The relid is not reused before RELID_RELEASED.
    auto other = std::make_shared<TestDevice>(kInst2);
    EXPECT_NE(g.server().add_device(other).value(), relid);
    g.simple(MsgType::CloseChannel, relid);  // tolerated for a rescinded channel
    g.simple(MsgType::RelidReleased, relid);
    auto third = std::make_shared<TestDevice>("11111111-2222-3333-4444-888888888888");
    EXPECT_EQ(g.server().add_device(third).value(), relid);
}

TEST(VmbusChannels, UnloadWaitsForEveryCloseThenAnswersAndAReconnectOffersAgain) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.open_channel(relid);
    g.create_gpadl(relid, 0x200, SimGuest::pages(g.alloc_pages(2), 2));
    g.sink().take();
    dev->defer_close = true;
    MessageHeader unload{static_cast<uint32_t>(MsgType::Unload), 0};
    g.post(unload);
    g.pump();
    EXPECT_EQ(dev->closes, 1);
    EXPECT_TRUE(g.sink().take().empty());  // the device still has the rings
    // Nothing else is taken meanwhile.
    g.send_open(relid, 0x200, 1);
    g.pump();
    EXPECT_TRUE(g.sink().take().empty());
    std::exchange(dev->pending_closes, {})[0]();
    g.pump();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::UnloadResponse);
    EXPECT_EQ(dev->resets, 1);
    EXPECT_EQ(g.server().gpadl_count(), 0u);
    EXPECT_FALSE(g.server().connected());
    g.connect();
    msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 3u);
    EXPECT_EQ(msgs[1].as<OfferChannel>().child_relid, relid);
    EXPECT_EQ(dev->attaches, 1);  // the same bus: attached once
}

TEST(VmbusChannels, ModifyChannelRetargetsEventsTellsTheDeviceAndAnswersFrom5_3) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.open_channel(relid);
    g.sink().take();
    ModifyChannel m{{static_cast<uint32_t>(MsgType::ModifyChannel), 0}, relid, 1};
    g.post(m);
    g.pump();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::ModifyChannelResponse);
    EXPECT_EQ(msgs[0].as<ModifyChannelResponse>().status, 0u);
    EXPECT_EQ(g.server().channels()[0].target_vp, 1u);
    ASSERT_EQ(dev->retargets.size(), 1u);
    EXPECT_EQ(dev->retargets[0], (std::pair<uint16_t, uint32_t>{0, 1}));
    // Events now go to VP 1.
    const auto p = bytes(8, 0);
    const iovec iov = iov_of(p);
    ASSERT_TRUE(dev->queues[0]->send(OutPacket::inband(1, std::span(&iov, 1))));
    {
        LockGuard lock(g.sink().mu);
        ASSERT_EQ(g.sink().signal_vps.size(), 1u);
        EXPECT_EQ(g.sink().signal_vps[0], 1u);
    }
    m.target_vp = 7;
    g.post(m);
    EXPECT_NE(g.sink().take().back().as<ModifyChannelResponse>().status, 0u);
}

TEST(VmbusChannels, ACorruptRingClosesTheChannelOnly) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid);
    g.sink().take();
    ch.to_host.store(kRingWriteIndex, 0xffff0);  // write index beyond the ring
    g.doorbell(ch);
    auto q = dev->queues[0];
    auto p = q->peek();
    ASSERT_FALSE(p);
    EXPECT_TRUE(p.error().is(Errc::Invalid));
    g.pump();
    EXPECT_EQ(dev->closes, 1);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Failed);
    // The server keeps working: the guest closes, tears down, and the next open works.
    g.simple(MsgType::CloseChannel, relid);
    g.teardown(relid, ch.gpadl);
    g.pump();
    EXPECT_EQ(g.sink().take().back().type(), MsgType::GpadlTorndown);
    g.open_channel(relid);
    EXPECT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
}

// Reliability review B1: a failure found late on a channel's old rings (a device still
// holding the queue of the open before) must not close the channel the guest has opened
// again since. The old queue answers Closed and reports nothing; the reopened channel stays.
TEST(VmbusChannels, ALateFailureOnTheRingsOfAnEarlierOpenLeavesTheReopenedChannel) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto first = g.open_channel(relid);
    auto old_queue = dev->queues[0];
    g.simple(MsgType::CloseChannel, relid);
    g.teardown(relid, first.gpadl);
    g.pump();
    auto second = g.open_channel(relid);
    ASSERT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
    ASSERT_NE(dev->queues[0], old_queue);
    const int closes = dev->closes;
    // The old rings turn to garbage and the device, late, reads them.
    first.to_host.store(kRingWriteIndex, 0xffff0);
    auto p = old_queue->peek();
    ASSERT_FALSE(p);
    EXPECT_TRUE(p.error().is(Errc::Closed)) << p.error().message();
    g.pump();
    EXPECT_EQ(dev->closes, closes);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Open);
    // and the new rings work
    ASSERT_TRUE(g.send(second, kPacketDataInband, 5, bytes(40, 1), {}, true));
    auto q = dev->queues[0]->peek();
    ASSERT_TRUE(q && *q);
}

// Reliability review A3: a device looking up a GPADL from its packet path (as netvsp does
// for its buffers) deadlocked against the server's lock when the guest closed the channel
// and tore the GPADL down meanwhile. Here a device thread peeks, takes and drops a GPADL
// view in a loop while the guest closes and tears down: everything finishes, and the
// teardown is answered once the device's last view is gone (run under TSan in build-tsan).
TEST(VmbusChannels, AGpadlLookupOnThePacketPathRacesACloseAndATeardown) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid);
    const uint64_t buf = g.alloc_pages(4);
    g.create_gpadl(relid, 0x900, SimGuest::pages(buf, 4));
    g.sink().take();
    auto q = dev->queues[0];
    ChannelControl* control = dev->control;
    std::atomic<bool> stop{false};
    std::atomic<int> lookups{0};
    std::thread worker([&] {
        while (!stop) {
            if (auto p = q->peek(); p && *p) q->consume();
            if (auto v = control->gpadl(0x900)) lookups.fetch_add(1);
        }
    });
    for (int i = 0; i < 20; ++i) (void)g.send(ch, kPacketDataInband, static_cast<uint64_t>(i), bytes(64, 2), {}, true);
    const auto t0 = std::chrono::steady_clock::now();
    while (lookups < 100 && std::chrono::steady_clock::now() - t0 < 3s) std::this_thread::sleep_for(1ms);
    g.simple(MsgType::CloseChannel, relid);
    g.teardown(relid, 0x900);
    g.teardown(relid, ch.gpadl);
    bool torn_down = false;
    while (!torn_down && std::chrono::steady_clock::now() - t0 < 3s) {
        g.pump();
        for (const auto& m : g.sink().take())
            if (m.type() == MsgType::GpadlTorndown && m.as<GpadlTorndown>().gpadl == 0x900) torn_down = true;
        if (!torn_down && lookups > 0 && std::chrono::steady_clock::now() - t0 > 1s) stop = true;  // let go
    }
    stop = true;
    worker.join();
    EXPECT_TRUE(torn_down) << "GPADL 0x900 was never torn down";
    EXPECT_GE(lookups.load(), 100);
    EXPECT_EQ(g.server().channels()[0].state, ChannelState::Closed);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3.0);
}

TEST(VmbusChannels, TheGuestsRingFillsWhenTheDeviceStopsTakingPackets) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid, 1, 1);  // 4 KiB each way
    auto q = dev->queues[0];
    // The device takes nothing: the guest fills its ring and then cannot write; nothing is
    // queued anywhere else.
    int sent = 0;
    while (g.send(ch, kPacketDataInband, static_cast<uint64_t>(sent), bytes(500, 0), {}, true)) ++sent;
    EXPECT_EQ(sent, 7);  // 7 x 528 bytes; an 8th would leave the 4 KiB ring full
    EXPECT_GT(ch.to_host.used(), 4096u - 528u - 8u);
    // Doorbells coalesce in the eventfd: one wake-up, however many.
    for (int i = 0; i < 1000; ++i) g.doorbell(ch);
    // The device looks at one packet and leaves it: still there, still the same.
    auto p1 = q->peek();
    ASSERT_TRUE(p1 && *p1);
    EXPECT_EQ((*p1)->trans_id, 0u);
    auto again = q->peek();
    EXPECT_EQ((*again)->trans_id, 0u);
    EXPECT_FALSE(g.send(ch, kPacketDataInband, 99, bytes(500, 0)));
    // Now it drains: everything arrives once, in order, and the guest has room again.
    auto got = dev->drain();
    ASSERT_EQ(got.size(), 7u);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].first, i);
    EXPECT_EQ(ch.to_host.used(), 0u);
    EXPECT_TRUE(g.send(ch, kPacketDataInband, 100, bytes(500, 0)));
}

TEST(VmbusChannels, AFullGuestRingIsBusyForSendsAndReservationsUntilTheGuestReads) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid, 1, 1);
    auto q = dev->queues[0];
    const auto p = bytes(1000, 3);  // 1016 bytes, 1024 in the ring
    const iovec iov = iov_of(p);
    const auto pkt = OutPacket::inband(1, std::span(&iov, 1));
    ASSERT_EQ(pkt.ring_bytes(), 1024u);
    // One reservation and two sends fit; the third send would fill the ring.
    auto r = q->reserve(pkt.ring_bytes());
    ASSERT_TRUE(r);
    ASSERT_TRUE(q->send(pkt));
    ASSERT_TRUE(q->send(pkt));
    auto busy = q->send(pkt);
    ASSERT_FALSE(busy);
    EXPECT_TRUE(busy.error().is(Errc::Busy));
    EXPECT_TRUE(q->waiting_for_room());
    // The guest was asked to signal once it has room (pending_send_sz).
    EXPECT_GT(ch.to_guest.load(kRingPendingSendSize), 0u);
    EXPECT_FALSE(q->reserve(pkt.ring_bytes()));
    // The reservation is still good.
    ASSERT_TRUE(q->commit(std::move(*r), pkt));
    ASSERT_TRUE(ch.to_guest.read());
    ASSERT_TRUE(ch.to_guest.read());
    ASSERT_TRUE(q->send(pkt));
    EXPECT_FALSE(q->waiting_for_room());
    EXPECT_EQ(ch.to_guest.load(kRingPendingSendSize), 0u);
    // A dropped reservation gives its room back.
    { auto r2 = q->reserve(pkt.ring_bytes()); ASSERT_TRUE(r2); }
    ASSERT_TRUE(q->send(pkt));
    // Too long for the guest driver: refused, not sent.
    const auto big = bytes(5000, 0);
    const iovec big_iov = iov_of(big);
    auto too_long = q->send(OutPacket::inband(2, std::span(&big_iov, 1)));
    ASSERT_FALSE(too_long);
    EXPECT_TRUE(too_long.error().is(Errc::Invalid));
}

// Deferred commits (netvsp's TX completions): a guest that reads every packet at once would
// get one interrupt each; deferred, they share one, raised by flush_signal() or by the next
// write that signals anyway; a flush with nothing owed raises none.
TEST(VmbusChannels, DeferredCommitsShareOneInterrupt) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid, 3, 3);
    g.sink().take();
    auto q = dev->queues[0];
    const auto p = bytes(40, 9);
    const iovec iov = iov_of(p);
    for (uint64_t id = 1; id <= 10; ++id) {
        auto r = q->reserve(OutPacket::completion(id, std::span(&iov, 1)).ring_bytes());
        ASSERT_TRUE(r);
        ASSERT_TRUE(q->commit(std::move(*r), OutPacket::completion(id, std::span(&iov, 1)), /*defer_signal=*/true));
        auto got = ch.to_guest.read();  // the guest keeps its ring empty: each write would signal
        ASSERT_TRUE(got);
        EXPECT_EQ(got->desc.trans_id, id);
    }
    EXPECT_TRUE(g.sink().take_signals().empty());
    q->flush_signal();
    EXPECT_EQ(g.sink().take_signals(), std::vector<uint32_t>{relid});
    q->flush_signal();  // nothing owed
    EXPECT_TRUE(g.sink().take_signals().empty());
    // A deferred write, then one that signals: that interrupt covers both; nothing is left owed.
    auto r = q->reserve(OutPacket::completion(11, std::span(&iov, 1)).ring_bytes());
    ASSERT_TRUE(r);
    ASSERT_TRUE(q->commit(std::move(*r), OutPacket::completion(11, std::span(&iov, 1)), true));
    ASSERT_TRUE(ch.to_guest.read());
    ASSERT_TRUE(q->send(OutPacket::completion(12, std::span(&iov, 1))));
    EXPECT_EQ(g.sink().take_signals(), std::vector<uint32_t>{relid});
    q->flush_signal();
    EXPECT_TRUE(g.sink().take_signals().empty());
}

TEST(VmbusChannels, GpaDirectAndTransferPagePacketsRoundTrip) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    dev->params.max_packet_to_guest = 8192;
    auto ch = g.open_channel(relid, 2, 2);
    auto q = dev->queues[0];
    // storvsc's shape: one range of 3 pages starting 0x200 into the first.
    const auto ext = SimGuest::gpa_direct_ext({{8192, 0x200, {300, 301, 302}}, {100, 0, {77}}});
    const auto vstor = bytes(64, 9);
    ASSERT_TRUE(g.send(ch, kPacketDataUsingGpaDirect, 0x1234, vstor, ext));
    auto p = q->peek();
    ASSERT_TRUE(p && *p);
    const PacketView& v = **p;
    EXPECT_EQ(v.type, kPacketDataUsingGpaDirect);
    EXPECT_FALSE(v.malformed);
    EXPECT_TRUE(v.completion_requested());
    ASSERT_EQ(v.gpa_ranges.size(), 2u);
    EXPECT_EQ(v.gpa_ranges[0].byte_count, 8192u);
    EXPECT_EQ(v.gpa_ranges[0].byte_offset, 0x200u);
    ASSERT_EQ(v.gpa_ranges[0].pfns.size(), 3u);
    EXPECT_EQ(v.gpa_ranges[0].pfns[2], 302u);
    EXPECT_EQ(v.gpa_ranges[0].gpa_of(0), 300u * 4096 + 0x200);
    EXPECT_EQ(v.gpa_ranges[0].gpa_of(4096 - 0x200), 301u * 4096);
    EXPECT_EQ(v.gpa_ranges[1].pfns[0], 77u);
    EXPECT_EQ(v.gpa_bytes(), 8292u);
    ASSERT_EQ(v.payload.size(), 64u);
    EXPECT_TRUE(std::equal(vstor.begin(), vstor.end(), v.payload.begin()));
    q->consume();
    // netvsc's receive: a transfer-page packet naming two sections of the receive buffer.
    const XferRange ranges[] = {{1514, 0}, {60, 1728}};
    const auto nvsp = bytes(16, 1);
    const iovec iov = iov_of(nvsp);
    ASSERT_TRUE(q->send(OutPacket::xfer_pages(7, 0xcafe, ranges, std::span(&iov, 1))));
    auto back = ch.to_guest.read();
    ASSERT_TRUE(back);
    EXPECT_EQ(back->desc.type, kPacketDataUsingXferPages);
    ASSERT_EQ(back->ext.size(), 8u + 16u);
    uint16_t set;
    uint32_t count, second_off;
    std::memcpy(&set, back->ext.data(), 2);
    std::memcpy(&count, back->ext.data() + 4, 4);
    std::memcpy(&second_off, back->ext.data() + 20, 4);
    EXPECT_EQ(set, 0xcafe);
    EXPECT_EQ(count, 2u);
    EXPECT_EQ(second_off, 1728u);
    EXPECT_TRUE(std::equal(nvsp.begin(), nvsp.end(), back->payload.begin()));
    // The same form from the guest parses into ranges too.
    ByteWriter x;
    x.put(uint16_t{0xbeef}).put(uint8_t{0}).put(uint8_t{0}).put(uint32_t{2}).put(ranges[0]).put(ranges[1]);
    ASSERT_TRUE(g.send(ch, kPacketDataUsingXferPages, 8, nvsp, x.view()));
    auto xp = q->peek();
    ASSERT_TRUE(xp && *xp);
    EXPECT_EQ((*xp)->xfer_set_id, 0xbeef);
    ASSERT_EQ((*xp)->xfer_ranges.size(), 2u);
    EXPECT_EQ((*xp)->xfer_ranges[1].byte_offset, 1728u);
}

TEST(VmbusChannels, PacketsWithLyingRangesAreHandedOverMarkedAndTheRingGoesOn) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    auto ch = g.open_channel(relid, 2, 2);
    auto q = dev->queues[0];
    const auto payload = bytes(64, 0);
    auto bad_ext = [](uint32_t rangecount, uint32_t count, uint32_t offset, size_t pfns) {
        ByteWriter w;
        w.put(uint32_t{0}).put(rangecount).put(count).put(offset);
        for (size_t i = 0; i < pfns; ++i) w.put(uint64_t{1});
        return w.take();
    };
    const std::vector<std::vector<uint8_t>> lies = {
        bad_ext(0, 4096, 0, 1),      // no ranges
        bad_ext(1000, 4096, 0, 1),   // more ranges than the header holds
        bad_ext(1, 0, 0, 1),         // an empty range
        bad_ext(1, 100, 4096, 1),    // offset past the first page
        bad_ext(1, 8192, 100, 2),    // needs 3 page numbers, has 2
        bad_ext(1, 0xffffffff, 0xfff, 1),  // a huge range
    };
    uint64_t id = 0;
    for (const auto& ext : lies) {
        ASSERT_TRUE(g.send(ch, kPacketDataUsingGpaDirect, ++id, payload, ext));
        auto p = q->peek();
        ASSERT_TRUE(p && *p) << "packet " << id;
        EXPECT_TRUE((*p)->malformed) << "packet " << id;
        EXPECT_TRUE((*p)->gpa_ranges.empty());
        EXPECT_EQ((*p)->trans_id, id);
        EXPECT_FALSE(q->malformed_reason().empty());
        q->consume();
    }
    // A PFN above 2^52.
    ByteWriter w;
    w.put(uint32_t{0}).put(uint32_t{1}).put(uint32_t{16}).put(uint32_t{0}).put(uint64_t{1} << 60);
    ASSERT_TRUE(g.send(ch, kPacketDataUsingGpaDirect, 50, payload, w.view()));
    EXPECT_TRUE((*q->peek())->malformed);
    q->consume();
    // A good one after them all.
    ASSERT_TRUE(g.send(ch, kPacketDataUsingGpaDirect, 51, payload, bad_ext(1, 4096, 0, 1)));
    auto good = q->peek();
    ASSERT_TRUE(good && *good);
    EXPECT_FALSE((*good)->malformed);
    EXPECT_EQ((*good)->gpa_ranges.size(), 1u);
    EXPECT_FALSE(q->failed());
}

TEST(VmbusChannels, AGpadlTeardownWaitsForAViewTheDeviceHolds) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.open_channel(relid);
    // netvsc's receive buffer: a GPADL on the primary channel that the device holds.
    const uint64_t first = g.alloc_pages(16);
    g.create_gpadl(relid, 0xbeef, SimGuest::pages(first, 16));
    g.sink().take();
    auto view = dev->control->gpadl(0xbeef);
    ASSERT_TRUE(view);
    EXPECT_EQ(view->pfns().size(), 16u);
    const auto data = bytes(100, 5);
    ASSERT_TRUE(view->write(g.memory(), 4090, data));  // across a page boundary
    EXPECT_EQ(g.ram()[first * 4096 + 4090 + 99], data[99]);
    std::vector<uint8_t> back(100);
    ASSERT_TRUE(view->read(g.memory(), 4090, back));
    EXPECT_EQ(back, data);
    EXPECT_FALSE(view->read(g.memory(), 16 * 4096 - 10, back));  // past its end
    EXPECT_FALSE(dev->control->gpadl(0x999));                     // not on its channels
    // A copy shares the hold.
    GpadlView copy = *view;
    g.teardown(relid, 0xbeef);
    g.pump();
    EXPECT_TRUE(g.sink().take().empty());  // held: no answer yet
    EXPECT_FALSE(dev->control->gpadl(0xbeef));  // and no new views
    view->reset();
    g.pump();
    EXPECT_TRUE(g.sink().take().empty());
    copy.reset();
    g.pump();
    auto msgs = g.sink().take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), MsgType::GpadlTorndown);
    EXPECT_EQ(msgs[0].as<GpadlTorndown>().gpadl, 0xbeefu);
}

TEST(VmbusChannels, SubChannelsOpenRetargetAndCloseAsAGroup) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev, 3);
    // Not before the primary is open.
    EXPECT_FALSE(dev->control->enable_subchannels(2));
    auto primary = g.open_channel(relid);
    g.sink().take();
    // The device asks from its protocol handler (storvsc CREATE_SUB_CHANNELS).
    EXPECT_FALSE(dev->control->enable_subchannels(4));  // beyond its maximum
    ASSERT_EQ(dev->control->enable_subchannels(2).value(), 2);
    auto offers = SimGuest::offers(g.sink().take());
    ASSERT_EQ(offers.size(), 2u);
    for (uint16_t i = 0; i < 2; ++i) {
        EXPECT_EQ(offers[i].sub_channel_index, i + 1);
        EXPECT_EQ(offers[i].if_instance.to_string(), kInst1);
        EXPECT_NE(offers[i].child_relid, relid);
    }
    EXPECT_EQ(dev->control->enable_subchannels(1).value(), 2);  // already there: nothing new
    EXPECT_TRUE(g.sink().take().empty());
    std::vector<SimChannel> subs;
    for (const auto& o : offers) subs.push_back(g.open_channel(o.child_relid, 2, 2, 1));
    EXPECT_EQ(dev->opens, 3);
    ASSERT_TRUE(dev->queues.count(1) && dev->queues.count(2));
    EXPECT_EQ(dev->queues[2]->index(), 2);
    EXPECT_EQ(dev->queues[2]->target_vp(), 1u);
    // Each sub-channel has its own doorbell.
    ASSERT_TRUE(g.send(subs[1], kPacketDataInband, 5, bytes(8, 0)));
    EXPECT_TRUE(readable(dev->queues[2]->notify_fd()));
    EXPECT_FALSE(readable(dev->queues[1]->notify_fd()));
    EXPECT_EQ(dev->drain(2).size(), 1u);
    // Retarget reaches the device with the channel's index.
    ModifyChannel m{{static_cast<uint32_t>(MsgType::ModifyChannel), 0}, offers[0].child_relid, 0};
    g.post(m);
    g.pump();
    ASSERT_EQ(dev->retargets.size(), 1u);
    EXPECT_EQ(dev->retargets[0].first, 1);
    g.sink().take();
    // Linux closes the sub-channels, then the primary; the sub-channels are then rescinded.
    for (const auto& o : offers) g.simple(MsgType::CloseChannel, o.child_relid);
    g.simple(MsgType::CloseChannel, relid);
    g.pump();
    EXPECT_EQ(dev->closes, 3);
    auto msgs = g.sink().take();
    int rescinds = 0;
    for (const auto& msg : msgs) rescinds += msg.type() == MsgType::RescindChannelOffer;
    EXPECT_EQ(rescinds, 2);
    for (const auto& o : offers) g.simple(MsgType::RelidReleased, o.child_relid);
    EXPECT_EQ(g.server().channels().size(), 1u);
    // A new open of the primary can enable them again.
    g.teardown(relid, primary.gpadl);
    g.open_channel(relid);
    g.sink().take();
    ASSERT_EQ(dev->control->enable_subchannels(1).value(), 1);
    EXPECT_EQ(SimGuest::offers(g.sink().take()).size(), 1u);
}

TEST(VmbusChannels, AnUnloadRemovesSubChannelsAndTheDeviceEnablesThemAgain) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev, 2);
    g.open_channel(relid);
    ASSERT_TRUE(dev->control->enable_subchannels(2));
    for (const auto& o : SimGuest::offers(g.sink().take())) g.open_channel(o.child_relid);
    g.sink().take();
    EXPECT_EQ(g.server().channels().size(), 3u);
    MessageHeader unload{static_cast<uint32_t>(MsgType::Unload), 0};
    g.post(unload);
    g.pump();
    EXPECT_EQ(g.sink().take().back().type(), MsgType::UnloadResponse);
    EXPECT_EQ(dev->closes, 3);
    EXPECT_EQ(g.server().channels().size(), 1u);  // the primary only, offered again on connect
    g.connect();
    EXPECT_EQ(SimGuest::offers(g.sink().take()).size(), 1u);
}

TEST(VmbusChannels, ShutdownClosesEverythingThenDetachesTheDevices) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    g.open_channel(relid);
    g.sink().take();
    dev->defer_close = true;
    bool done = false;
    g.server().shutdown([&] { done = true; });
    g.pump();
    EXPECT_FALSE(done);  // the device still has its channel
    std::exchange(dev->pending_closes, {})[0]();
    g.pump();
    EXPECT_TRUE(done);
    EXPECT_EQ(dev->detaches, 1);
    EXPECT_TRUE(g.sink().take().empty());  // nothing to the guest: the machine is going away
}

// Sends from several threads, doorbells from another, against a close: nothing is lost
// that was accepted before the close, nothing is written after it, no deadlock (TSan).
TEST(VmbusChannels, SendsDoorbellsAndCloseFromSeveralThreads) {
    for (int round = 0; round < 5; ++round) {
        SimGuest g;
        std::shared_ptr<TestDevice> dev;
        const uint32_t relid = offered(g, dev);
        dev->params.max_packet_to_guest = 4096;
        auto ch = g.open_channel(relid, 8, 8);
        auto q = dev->queues[0];
        dev->defer_close = true;
        std::atomic<bool> stop{false};
        std::atomic<int> sent{0};
        std::vector<std::thread> senders;
        for (int t = 0; t < 3; ++t)
            senders.emplace_back([&, t] {
                const auto p = bytes(40, static_cast<uint8_t>(t));
                const iovec iov = iov_of(p);
                while (!stop) {
                    auto r = q->send(OutPacket::inband(static_cast<uint64_t>(t), std::span(&iov, 1)));
                    if (r) ++sent;
                    else if (r.error().is(Errc::Closed)) break;
                }
            });
        std::thread guest_reader([&] {
            while (!stop) ch.to_guest.read();
        });
        std::thread doorbells([&] {
            while (!stop) (void)g.server().handle_event(0, ch.connection_id, 0);
        });
        std::thread worker([&] {
            // The device's worker: drains while the channel is open.
            while (!stop) {
                auto p = q->peek();
                if (!p) break;
                if (*p) q->consume();
                else q->arm();
            }
        });
        // The close comes while packets flow: after the first one went (on a loaded machine the
        // threads may take a while to get going), and a little more.
        for (int i = 0; i < 5000 && sent.load() == 0; ++i) std::this_thread::sleep_for(1ms);
        std::this_thread::sleep_for(20ms);
        g.simple(MsgType::CloseChannel, relid);
        g.pump();
        ASSERT_EQ(dev->pending_closes.size(), 1u);
        // The device waits for its in-flight work: here, its threads.
        stop = true;
        for (auto& t : senders) t.join();
        guest_reader.join();
        doorbells.join();
        worker.join();
        std::exchange(dev->pending_closes, {})[0]();
        g.pump();
        EXPECT_TRUE(q->closed());
        EXPECT_GT(sent.load(), 0);
        const auto pkt_bytes = bytes(8, 0);
        const iovec iov = iov_of(pkt_bytes);
        EXPECT_FALSE(q->send(OutPacket::inband(1, std::span(&iov, 1))));
        EXPECT_EQ(g.server().channels()[0].state, ChannelState::Closed);
    }
}

// Memory the guest got at run time (hot-add) carries rings like any other: the server checks
// GPADL pages and maps rings through the current snapshot of the memory map.
TEST(VmbusChannels, RingsInMemoryAddedAtRunTimeWork) {
    SimGuest g;
    std::shared_ptr<TestDevice> dev;
    const uint32_t relid = offered(g, dev);
    constexpr uint64_t kHotAdd = 8ULL << 30;  // 8 GiB, far above the simulated RAM
    const uint64_t first = kHotAdd / kPageSize;
    // Before the memory exists, a GPADL naming it is refused.
    g.create_gpadl(relid, 0x700, SimGuest::pages(first, 4));
    EXPECT_NE(g.sink().take().back().as<GpadlCreated>().creation_status, 0u);
    // Another thread adds it while this one keeps reading the map (as vCPUs would).
    std::atomic<bool> added{false};
    std::thread hot_add([&] {
        ASSERT_TRUE(g.memory().add_ram(kHotAdd, 2 << 20));
        added = true;
    });
    size_t misses = 0;
    while (!added) misses += g.memory().contains(kHotAdd, 4096) ? size_t{0} : size_t{1};
    hot_add.join();
    EXPECT_TRUE(g.memory().contains(kHotAdd, 4096)) << "after " << misses << " reads that missed it";
    uint8_t* host = g.memory().host_ptr(kHotAdd, 8 * kPageSize);
    ASSERT_NE(host, nullptr);
    // The guest puts a channel's rings there: header + 3 data pages each way.
    SimChannel ch;
    ch.relid = relid;
    ch.connection_id = kChannelConnectionBase + relid;
    ch.gpadl = 0x701;
    ch.to_host = SimRing(host, 0, 3);
    ch.to_guest = SimRing(host + 4 * kPageSize, 0, 3);
    ch.to_host.store(kRingFeatureBits, 1);
    ch.to_guest.store(kRingFeatureBits, 1);
    g.create_gpadl(relid, ch.gpadl, SimGuest::pages(first, 8));
    EXPECT_EQ(g.sink().take().back().as<GpadlCreated>().creation_status, 0u);
    g.send_open(relid, ch.gpadl, 4);
    g.pump();
    ASSERT_EQ(SimGuest::open_result(g.sink().take(), relid), 0u);
    ASSERT_TRUE(g.send(ch, kPacketDataInband, 9, bytes(32, 1)));
    auto got = dev->drain();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].first, 9u);
    const auto reply = bytes(8, 2);
    const iovec iov = iov_of(reply);
    ASSERT_TRUE(dev->queues[0]->send(OutPacket::completion(9, std::span(&iov, 1))));
    auto back = ch.to_guest.read();
    ASSERT_TRUE(back);
    EXPECT_EQ(back->desc.trans_id, 9u);
}
