// Integration services against a simulated guest that answers like Linux 6.1's hv_utils
// (vmbus_prep_negotiate_resp, heartbeat/shutdown/timesync callbacks, hv_kvp + daemon).
#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <map>
#include <thread>

#include "devices/ic/services.hpp"

using namespace enlighten;
using namespace enlighten::ic;
using namespace std::chrono_literals;

namespace {

// Port of drivers/hv/channel_mgmt.c vmbus_prep_negotiate_resp(): picks the first of the
// guest's versions that the host offered; rewrites the buffer in place.
bool prep_negotiate_resp(std::vector<uint8_t>& buf, const std::vector<uint32_t>& fw, const std::vector<uint32_t>& srv,
                         uint32_t* chosen) {
    IcMsgHeader hdr;
    std::memcpy(&hdr, buf.data() + sizeof(PipeHeader), sizeof(hdr));
    IcNegotiate neg;
    std::memcpy(&neg, buf.data() + kIcHeaderSize, sizeof(neg));
    hdr.icmsgsize = 0x10;
    auto ver = [&](size_t j) {
        IcVersion v;
        std::memcpy(&v, buf.data() + kIcHeaderSize + sizeof(neg) + 4 * j, 4);
        return v;
    };
    if (buf.size() < kIcHeaderSize + sizeof(neg) + 4u * (neg.icframe_vercnt + neg.icmsg_vercnt)) return false;
    bool found = false;
    IcVersion f{}, m{};
    for (uint32_t want : fw) {
        for (size_t j = 0; j < neg.icframe_vercnt && !found; ++j)
            if (ic_version_value(ver(j)) == want) { f = ver(j); found = true; }
        if (found) break;
    }
    if (found) {
        found = false;
        for (uint32_t want : srv) {
            for (size_t j = neg.icframe_vercnt; j < size_t{neg.icframe_vercnt} + neg.icmsg_vercnt && !found; ++j)
                if (ic_version_value(ver(j)) == want) { m = ver(j); found = true; }
            if (found) break;
        }
    }
    neg.icframe_vercnt = found ? 1 : 0;
    neg.icmsg_vercnt = found ? 1 : 0;
    std::memcpy(buf.data() + kIcHeaderSize, &neg, sizeof(neg));
    std::memcpy(buf.data() + kIcHeaderSize + sizeof(neg), &f, 4);
    std::memcpy(buf.data() + kIcHeaderSize + sizeof(neg) + 4, &m, 4);
    std::memcpy(buf.data() + sizeof(PipeHeader), &hdr, sizeof(hdr));
    if (chosen) *chosen = ic_version_value(m);
    return found;
}

// A channel endpoint whose far end is a simulated hv_utils service; answers arrive on a
// separate thread, as they would from a vCPU.
class FakeGuest final : public vmbus::ChannelEndpoint {
public:
    using Handler = std::function<void(IcMsgHeader& hdr, std::vector<uint8_t>& buf)>;
    FakeGuest(IcDevice& dev, std::vector<uint32_t> guest_versions, Handler handler)
        : dev_(dev), versions_(std::move(guest_versions)), handler_(std::move(handler)) {}
    ~FakeGuest() override {
        for (auto& t : threads_) t.join();
    }
    Result<SendStatus> send(uint16_t type, uint16_t, uint64_t trans_id, std::span<const uint8_t> payload) override {
        if (type != vmbus::kPacketDataInband) return fail("IC host sent packet type {}", type);
        std::vector<uint8_t> buf(payload.begin(), payload.end());
        ++sent;
        if (silent) return SendStatus::Sent;
        threads_.emplace_back([this, buf = std::move(buf), trans_id]() mutable {
            IcMsgHeader hdr;
            std::memcpy(&hdr, buf.data() + sizeof(PipeHeader), sizeof(hdr));
            if (hdr.icmsgtype == kIcNegotiate) {
                uint32_t chosen = 0;
                const bool ok = prep_negotiate_resp(buf, {0x30000, 0x10000}, versions_, &chosen);
                negotiated = ok ? chosen : 0;
                std::memcpy(&hdr, buf.data() + sizeof(PipeHeader), sizeof(hdr));
            } else {
                handler_(hdr, buf);
            }
            hdr.icflags = kIcFlagTransaction | kIcFlagResponse;
            std::memcpy(buf.data() + sizeof(PipeHeader), &hdr, sizeof(hdr));
            vmbus::IncomingPacket pkt{vmbus::kPacketDataInband, 0, trans_id, {}, buf};
            dev_.on_packet(pkt);
        });
        return SendStatus::Sent;
    }
    const GuestMemory& memory() const override { std::abort(); }

    std::atomic<int> sent{0};
    std::atomic<uint32_t> negotiated{0};
    std::atomic<bool> silent{false};

private:
    IcDevice& dev_;
    std::vector<uint32_t> versions_;
    Handler handler_;
    std::vector<std::thread> threads_;
};

}  // namespace

TEST(IcNegotiation, RequestLayoutAndLinuxPicksItsPreferredCommonVersion) {
    const uint32_t fw[] = {0x30000, 0x10000};
    const uint32_t sd[] = {0x30002, 0x30001, 0x30000, 0x10000};
    auto req = IcDevice::negotiate_request(fw, sd);
    ASSERT_EQ(req.size(), kIcHeaderSize + 8 + 6 * 4u);
    IcMsgHeader hdr;
    std::memcpy(&hdr, req.data() + 8, sizeof(hdr));
    EXPECT_EQ(hdr.icmsgtype, kIcNegotiate);
    EXPECT_EQ(hdr.icflags, kIcFlagTransaction | kIcFlagRequest);
    uint32_t chosen = 0;
    // Linux 6.1 shutdown: 3.2, 3.1, 3.0, 1.0 -> 3.2.
    ASSERT_TRUE(prep_negotiate_resp(req, {0x30000, 0x10000}, {0x30002, 0x30001, 0x30000, 0x10000}, &chosen));
    EXPECT_EQ(chosen, 0x30002u);
    auto parsed = IcDevice::parse_negotiate_response(req);
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->first, 0x30000u);
    EXPECT_EQ(parsed->second, 0x30002u);
    // A guest that knows none of our versions answers with zero counts.
    auto req2 = IcDevice::negotiate_request(fw, sd);
    EXPECT_FALSE(prep_negotiate_resp(req2, {0x30000}, {0x90000}, nullptr));
    EXPECT_FALSE(IcDevice::parse_negotiate_response(req2));
    // Truncated answers are errors.
    EXPECT_FALSE(IcDevice::parse_negotiate_response(std::span(req).first(30)));
}

TEST(Heartbeat, NegotiatesThenBeatsAndReportsHealth) {
    TaskLoop loop;
    auto hb = std::make_shared<HeartbeatService>("11111111-0000-0000-0000-000000000001", loop, 100ms);
    EXPECT_EQ(hb->status().health, HeartbeatService::Health::Unknown);
    // hv_util.c heartbeat: seq_num += 1.
    FakeGuest guest(*hb, {0x30000, 0x10000}, [](IcMsgHeader& hdr, std::vector<uint8_t>& buf) {
        ASSERT_EQ(hdr.icmsgtype, kIcHeartbeat);
        HeartbeatMsg m;
        std::memcpy(&m, buf.data() + kIcHeaderSize, sizeof(m));
        m.seq_num += 1;
        std::memcpy(buf.data() + kIcHeaderSize, &m, sizeof(m));
    });
    hb->on_open(guest);
    ASSERT_TRUE(hb->wait_ready(2s));
    EXPECT_EQ(hb->version(), 0x30000u);
    for (int i = 0; i < 100 && hb->status().sequence < 3; ++i) std::this_thread::sleep_for(20ms);
    auto st = hb->status();
    EXPECT_EQ(st.health, HeartbeatService::Health::Healthy);
    EXPECT_GE(st.sequence, 3u);
    // The guest stops answering: lost after three missed beats.
    guest.silent = true;
    std::this_thread::sleep_for(900ms);
    EXPECT_EQ(hb->status().health, HeartbeatService::Health::Lost);
    hb->on_close();
    loop.stop();
}

TEST(Shutdown, AcceptedOrRefusedByTheGuest) {
    auto sd = std::make_shared<ShutdownService>("11111111-0000-0000-0000-000000000002");
    uint32_t last_flags = 99;
    FakeGuest guest(*sd, {0x30002, 0x30001, 0x30000, 0x10000}, [&](IcMsgHeader& hdr, std::vector<uint8_t>& buf) {
        ShutdownMsg m;
        ASSERT_GE(buf.size(), kIcHeaderSize + sizeof(m));
        std::memcpy(&m, buf.data() + kIcHeaderSize, sizeof(m));
        last_flags = m.flags;
        hdr.status = m.flags <= 3 ? kHvSOk : kHvEFail;  // as hv_util.c: no hibernation
    });
    EXPECT_FALSE(sd->request(false, 100ms));  // not open yet
    sd->on_open(guest);
    ASSERT_TRUE(sd->wait_ready(2s));
    EXPECT_EQ(sd->version(), 0x30002u);
    EXPECT_TRUE(sd->request(false, 2s));
    EXPECT_EQ(last_flags, 0u);
    EXPECT_TRUE(sd->request(true, 2s));
    EXPECT_EQ(last_flags, 2u);
    // No answer: a timeout error, and the next request still works.
    guest.silent = true;
    EXPECT_FALSE(sd->request(false, 200ms));
    guest.silent = false;
    EXPECT_TRUE(sd->request(false, 2s));
    sd->on_close();
    EXPECT_FALSE(sd->request(false, 100ms));
}

TEST(TimeSync, Version4CarriesHostTimeAndTheReferenceCounter) {
    TaskLoop loop;
    std::atomic<uint64_t> parent{0}, reference{0};
    std::atomic<int> syncs{0};
    auto ts = std::make_shared<TimeSyncService>("11111111-0000-0000-0000-000000000003", loop, [] { return uint64_t{777}; });
    FakeGuest guest(*ts, {0x40000, 0x30000, 0x10000}, [&](IcMsgHeader& hdr, std::vector<uint8_t>& buf) {
        ASSERT_EQ(hdr.icmsgtype, kIcTimeSync);
        TimeSyncRefData d;
        ASSERT_GE(buf.size(), kIcHeaderSize + sizeof(d));
        std::memcpy(&d, buf.data() + kIcHeaderSize, sizeof(d));
        parent = d.parenttime;
        reference = d.vmreferencetime;
        if (d.flags & kTimeSyncSync) ++syncs;
    });
    ts->on_open(guest);
    ASSERT_TRUE(ts->wait_ready(2s));
    // on_ready sends one SYNC by itself.
    for (int i = 0; i < 100 && syncs == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(syncs.load(), 1);
    EXPECT_EQ(reference.load(), 777u);
    const uint64_t now = TimeSyncService::host_time_100ns();
    EXPECT_LE(parent.load(), now);
    EXPECT_GT(parent.load(), now - 10'000'000ULL * 60);  // within a minute
    // 1970 in the Windows epoch, give or take: sanity of the epoch conversion.
    EXPECT_GT(now, kWindowsEpochDelta + 10'000'000ULL * 1'700'000'000ULL);
    EXPECT_TRUE(ts->sync(2s));
    EXPECT_EQ(syncs.load(), 2);
    ts->on_close();
    loop.stop();
}

TEST(Kvp, Utf16EncodingAndLimits) {
    auto e = KvpService::encode_utf16("Aé€😀", 512).value();
    // A, é, €, surrogate pair, NUL.
    const std::vector<uint8_t> expect = {0x41, 0, 0xe9, 0, 0xac, 0x20, 0x3d, 0xd8, 0x00, 0xde, 0, 0};
    EXPECT_EQ(e, expect);
    EXPECT_EQ(KvpService::decode_utf16(e).value(), "Aé€😀");
    EXPECT_FALSE(KvpService::encode_utf16(std::string("\xff\xfe"), 512));      // not UTF-8
    EXPECT_FALSE(KvpService::encode_utf16(std::string("\xc0\x80"), 512));      // overlong
    EXPECT_FALSE(KvpService::encode_utf16(std::string("\xed\xa0\x80"), 512));  // a surrogate
    EXPECT_FALSE(KvpService::encode_utf16(std::string("a\0b", 3), 512));       // NUL inside
    EXPECT_TRUE(KvpService::encode_utf16(std::string(255, 'k'), 512));         // 255 + NUL = 512 bytes
    EXPECT_FALSE(KvpService::encode_utf16(std::string(256, 'k'), 512));
    const uint8_t lone_high[] = {0x3d, 0xd8, 0x41, 0x00};
    EXPECT_FALSE(KvpService::decode_utf16(lone_high));
    const uint8_t odd[] = {0x41, 0x00, 0x42};
    EXPECT_EQ(KvpService::decode_utf16(odd).value(), "A");
}

TEST(Kvp, SetGetDeleteAndEnumerateAgainstASimulatedDaemon) {
    TaskLoop loop;
    auto kvp = std::make_shared<KvpService>("11111111-0000-0000-0000-000000000004", loop);
    // hv_kvp.c + hv_kvp_daemon: pools of UTF-8 strings; the kernel converts from/to UTF-16.
    std::map<std::pair<int, std::string>, std::string> pools;
    std::mutex pools_mu;
    FakeGuest guest(*kvp, {0x40000, 0x30000, 0x10000}, [&](IcMsgHeader& hdr, std::vector<uint8_t>& buf) {
        ASSERT_EQ(hdr.icmsgtype, kIcKvpExchange);
        KvpMessage m{};
        std::memcpy(&m, buf.data() + kIcHeaderSize, std::min(sizeof(m), buf.size() - kIcHeaderSize));
        std::lock_guard lock(pools_mu);
        const int pool = m.header.pool;
        hdr.status = kHvSOk;
        auto key_of = [](const uint8_t* k, uint32_t size) { return KvpService::decode_utf16(std::span(k, size)).value(); };
        auto put_value = [&](KvpValue& d, const std::string& key, const std::string& value) {
            auto k = KvpService::encode_utf16(key, kKvpMaxKeySize).value();
            auto v = KvpService::encode_utf16(value, kKvpMaxValueSize).value();
            std::memcpy(d.key, k.data(), k.size());
            d.key_size = static_cast<uint32_t>(k.size());
            std::memcpy(d.value, v.data(), v.size());
            d.value_size = static_cast<uint32_t>(v.size());
            d.value_type = kKvpRegSz;
        };
        switch (m.header.operation) {
            case kKvpSet:
                pools[{pool, key_of(m.body.data.key, m.body.data.key_size)}] =
                    KvpService::decode_utf16(std::span(m.body.data.value, m.body.data.value_size)).value();
                break;
            case kKvpGet: {
                auto it = pools.find({pool, key_of(m.body.data.key, m.body.data.key_size)});
                if (it == pools.end()) hdr.status = kHvSCont;
                else put_value(m.body.data, it->first.second, it->second);
                break;
            }
            case kKvpDelete:
                if (!pools.erase({pool, key_of(m.body.del.key, m.body.del.key_size)})) hdr.status = kHvSCont;
                break;
            case kKvpEnumerate: {
                uint32_t i = 0;
                hdr.status = kHvSCont;
                for (const auto& [k, v] : pools)
                    if (k.first == pool && i++ == m.body.enumerate.index) {
                        put_value(m.body.enumerate.data, k.second, v);
                        hdr.status = kHvSOk;
                        break;
                    }
                break;
            }
        }
        std::memcpy(buf.data() + kIcHeaderSize, &m, std::min(sizeof(m), buf.size() - kIcHeaderSize));
    });
    kvp->on_open(guest);
    ASSERT_TRUE(kvp->wait_ready(2s));
    EXPECT_EQ(kvp->version(), 0x40000u);
    ASSERT_TRUE(kvp->set(0, "VirtualMachineName", "enlighten-test", 2s));
    ASSERT_TRUE(kvp->set(0, "Ünïcode", "välue €", 2s));
    EXPECT_EQ(kvp->get(0, "VirtualMachineName", 2s).value().value(), "enlighten-test");
    EXPECT_FALSE(kvp->get(0, "missing", 2s).value().has_value());
    auto all = kvp->list(0, 5s).value();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_TRUE(kvp->remove(0, "Ünïcode", 2s));
    EXPECT_FALSE(kvp->remove(0, "Ünïcode", 2s));
    EXPECT_EQ(kvp->list(0, 5s).value().size(), 1u);
    // The guest's own pools are read-only for the host.
    EXPECT_FALSE(kvp->set(2, "k", "v", 2s));
    EXPECT_FALSE(kvp->set(0, std::string(300, 'k'), "v", 2s));  // key too long for the wire
    // After a reconnect the host pushes what it holds again.
    kvp->on_close();
    {
        std::lock_guard lock(pools_mu);
        pools.clear();
    }
    kvp->on_open(guest);
    ASSERT_TRUE(kvp->wait_ready(2s));
    for (int i = 0; i < 100; ++i) {
        {
            std::lock_guard lock(pools_mu);
            if (pools.count({0, "VirtualMachineName"})) break;
        }
        std::this_thread::sleep_for(10ms);
    }
    std::lock_guard lock(pools_mu);
    EXPECT_EQ((pools[{0, "VirtualMachineName"}]), "enlighten-test");
    EXPECT_EQ(pools.count({0, "Ünïcode"}), 0u);
}
