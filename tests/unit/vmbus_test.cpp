#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/executor.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

namespace {

struct Sent {
    uint32_t vp, sint;
    std::vector<uint8_t> bytes;
    [[nodiscard]] MsgType type() const {
        MessageHeader h;
        std::memcpy(&h, bytes.data(), sizeof(h));
        return static_cast<MsgType>(h.msgtype);
    }
    template <typename T>
    T as() const {
        T v{};
        std::memcpy(&v, bytes.data(), std::min(sizeof(T), bytes.size()));
        return v;
    }
};

struct RecordingSink final : MessageSink {
    std::vector<Sent> sent;
    std::vector<std::tuple<uint32_t, uint32_t, uint32_t>> signals;
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        sent.push_back({vp, sint, std::vector<uint8_t>(m.begin(), m.end())});
        return true;
    }
    bool signal(uint32_t vp, uint32_t sint, uint32_t flag) override {
        signals.emplace_back(vp, sint, flag);
        return true;
    }
};

// 1 MiB of guest RAM for servers that do not touch it.
// Where the server posts device work; these tests have no devices.
ManualExecutor& executor() {
    static ManualExecutor e;
    return e;
}

GuestMemory& no_memory() {
    static std::vector<uint8_t> ram(1 << 20);
    static GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    return mem;
}

template <typename T>
std::span<const uint8_t> bytes_of(const T& v) {
    return std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T));
}

InitiateContact contact(uint32_t version, uint32_t target_vp = 0) {
    InitiateContact m{};
    m.header.msgtype = static_cast<uint32_t>(MsgType::InitiateContact);
    m.vmbus_version_requested = version;
    m.target_vcpu = target_vp;
    m.interrupt_page_or_sint = version >= kVersionWin10V5 ? 2 : 0x1234000;
    m.monitor_page1 = 0x5000;
    m.monitor_page2 = 0x6000;
    return m;
}

// The order Linux 6.1 tries (connection.c vmbus_versions[]).
constexpr uint32_t kLinuxVersions[] = {0x50003, 0x50002, 0x50001, 0x50000, 0x40001, 0x40000, 0x30000, 0x20004};

}  // namespace

TEST(VmbusProtocol, GuidWireLayout) {
    // hv_utils heartbeat class id 57164f39-9115-4e78-ab55-382f3bd5422d.
    const Guid g = Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
    const uint8_t expect[16] = {0x39, 0x4f, 0x16, 0x57, 0x15, 0x91, 0x78, 0x4e,
                                0xab, 0x55, 0x38, 0x2f, 0x3b, 0xd5, 0x42, 0x2d};
    EXPECT_EQ(std::memcmp(g.bytes.data(), expect, 16), 0);
    EXPECT_EQ(g.to_string(), "57164f39-9115-4e78-ab55-382f3bd5422d");
    EXPECT_EQ(Guid::parse("not a guid"), Guid{});
    EXPECT_EQ(Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422dX"), Guid{});
}

TEST(VmbusServer, AcceptsEveryVersionLinuxOffers) {
    for (uint32_t v : kLinuxVersions) {
        RecordingSink sink;
        Server server(sink, no_memory(), 2, executor());
        const auto msg = contact(v, 1);
        EXPECT_EQ(server.handle_message(0, v >= kVersionWin10V5 ? 4 : 1, bytes_of(msg)), hv::Status::Success);
        ASSERT_EQ(sink.sent.size(), 1u) << version_string(v);
        EXPECT_EQ(sink.sent[0].type(), MsgType::VersionResponse);
        EXPECT_EQ(sink.sent[0].vp, 1u);  // the target VP the guest named
        EXPECT_EQ(sink.sent[0].sint, 2u);
        EXPECT_EQ(sink.sent[0].bytes.size(), sizeof(VersionResponse));  // full struct, even for old versions
        const auto resp = sink.sent[0].as<VersionResponse>();
        EXPECT_EQ(resp.version_supported, 1);
        if (v >= kVersionWin10V5) {
            EXPECT_NE(resp.msg_conn_id, 0u);
        }
        EXPECT_TRUE(server.connected());
        EXPECT_EQ(server.version(), v);
    }
}

TEST(VmbusServer, NegotiatesTheHighestCommonVersionAsLinuxDoes) {
    RecordingSink sink;
    Server server(sink, no_memory(), 1, executor());
    // Linux walks its list until one is accepted; the first (5.3) is ours too.
    for (uint32_t v : kLinuxVersions) {
        server.handle_message(0, v >= kVersionWin10V5 ? 4 : 1, bytes_of(contact(v)));
        if (sink.sent.back().as<VersionResponse>().version_supported) break;
    }
    EXPECT_EQ(server.version(), kVersionWin10V5_3);
    EXPECT_EQ(sink.sent.size(), 1u);
}

TEST(VmbusServer, RefusesUnknownVersionsSoTheGuestTriesTheNext) {
    for (uint32_t v : {0x00000000u, 0x0000000du, 0x00010001u, 0x50004u, 0x60000u, 0xffffffffu}) {
        RecordingSink sink;
        Server server(sink, no_memory(), 1, executor());
        server.handle_message(0, 1, bytes_of(contact(v)));
        ASSERT_EQ(sink.sent.size(), 1u);
        EXPECT_EQ(sink.sent[0].type(), MsgType::VersionResponse);
        EXPECT_EQ(sink.sent[0].as<VersionResponse>().version_supported, 0) << std::hex << v;
        EXPECT_FALSE(server.connected());
    }
}

TEST(VmbusServer, RefusesABadTargetVpOrSint) {
    RecordingSink sink;
    Server server(sink, no_memory(), 2, executor());
    server.handle_message(1, 4, bytes_of(contact(kVersionWin10V5_2, 7)));
    ASSERT_EQ(sink.sent.size(), 1u);
    EXPECT_EQ(sink.sent[0].as<VersionResponse>().version_supported, 0);
    EXPECT_EQ(sink.sent[0].vp, 1u);  // answered on the VP that asked
    auto m = contact(kVersionWin10V5_2);
    m.interrupt_page_or_sint = 16;
    server.handle_message(0, 4, bytes_of(m));
    EXPECT_EQ(sink.sent.back().as<VersionResponse>().version_supported, 0);
    EXPECT_FALSE(server.connected());
}

TEST(VmbusServer, RequestOffersThenAllOffersDelivered) {
    RecordingSink sink;
    Server server(sink, no_memory(), 1, executor());
    MessageHeader req{static_cast<uint32_t>(MsgType::RequestOffers), 0};
    server.handle_message(0, 1, bytes_of(req));  // before contact: ignored
    EXPECT_TRUE(sink.sent.empty());
    server.handle_message(0, 4, bytes_of(contact(kVersionWin10V5_3)));
    server.handle_message(0, 4, bytes_of(req));
    ASSERT_EQ(sink.sent.size(), 2u);
    EXPECT_EQ(sink.sent[1].type(), MsgType::AllOffersDelivered);
}

TEST(VmbusServer, UnloadResetsTheConnectionAndAnswers) {
    RecordingSink sink;
    Server server(sink, no_memory(), 2, executor());
    server.handle_message(0, 4, bytes_of(contact(kVersionWin10V5_3, 1)));
    MessageHeader unload{static_cast<uint32_t>(MsgType::Unload), 0};
    server.handle_message(0, 4, bytes_of(unload));
    ASSERT_EQ(sink.sent.size(), 2u);
    EXPECT_EQ(sink.sent[1].type(), MsgType::UnloadResponse);
    EXPECT_EQ(sink.sent[1].vp, 1u);
    EXPECT_FALSE(server.connected());
    // After kexec the guest connects again.
    server.handle_message(0, 4, bytes_of(contact(kVersionWin10V5_2)));
    EXPECT_TRUE(server.connected());
    EXPECT_EQ(server.version(), kVersionWin10V5_2);
    // An UNLOAD while not connected still gets its answer (crash path polls every CPU).
    server.handle_message(0, 4, bytes_of(unload));
    server.handle_message(1, 4, bytes_of(unload));
    EXPECT_EQ(sink.sent.back().type(), MsgType::UnloadResponse);
    EXPECT_EQ(sink.sent.back().vp, 1u);
}

TEST(VmbusServer, BadMessagesAreIgnoredNotFatal) {
    RecordingSink sink;
    Server server(sink, no_memory(), 1, executor());
    const uint8_t tiny[4] = {14, 0, 0, 0};
    EXPECT_EQ(server.handle_message(0, 1, tiny), hv::Status::Success);
    auto m = contact(kVersionWin10V5_3);
    EXPECT_EQ(server.handle_message(0, 1, bytes_of(m).first(20)), hv::Status::Success);  // truncated
    MessageHeader unknown{999, 0};
    EXPECT_EQ(server.handle_message(0, 1, bytes_of(unknown)), hv::Status::Success);
    MessageHeader h2g{static_cast<uint32_t>(MsgType::VersionResponse), 0};  // host-to-guest type
    EXPECT_EQ(server.handle_message(0, 1, bytes_of(h2g)), hv::Status::Success);
    EXPECT_TRUE(sink.sent.empty());
    EXPECT_EQ(server.stats().bad_messages, 4u);
    EXPECT_EQ(server.handle_message(0, 2, bytes_of(m)), hv::Status::InvalidConnectionId);
    EXPECT_EQ(server.handle_message(0, 0x123456, bytes_of(m)), hv::Status::InvalidConnectionId);
}
