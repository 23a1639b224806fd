// hv_sock (devices/hvsock): the wire facts and parsers, then the service and its connections
// against the simulated guest, which plays Linux 6.1's hv_sock (hyperv_transport.c: data
// packets with a vmpipe_proto_header, FIN = data_size 0, TL_CONNECT_REQUEST for connect())
// and real Unix sockets on the host side.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "devices/hvsock/protocol.hpp"
#include "devices/hvsock/service.hpp"
#include "support/sim_guest.hpp"

using namespace enlighten;
using namespace enlighten::hvsock;
using namespace enlighten::vmbus;
using enlighten::test::SimChannel;
using enlighten::test::SimGuest;
using namespace std::chrono_literals;

namespace {

// --- wire facts ---

TEST(HvsockProtocol, ServiceIdIsThePortInTheTemplate) {
    // contract-services §4.2: port 5000 on the wire.
    const uint8_t want[16] = {0x88, 0x13, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11, 0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3};
    const Guid g = service_id(5000);
    EXPECT_EQ(0, std::memcmp(g.bytes.data(), want, 16));
    EXPECT_EQ(g.to_string(), "00001388-facb-11e6-bd58-64006a7986d3");
    EXPECT_TRUE(is_service_id(g));
    EXPECT_EQ(port_of(g), 5000u);
    EXPECT_EQ(port_of(service_id(0xfffffffe)), 0xfffffffeu);
    Guid other = g;
    other.bytes[15] ^= 1;
    EXPECT_FALSE(is_service_id(other));
}

TEST(HvsockProtocol, PipePayloads) {
    std::vector<uint8_t> p(8 + 5);
    const PipeHeader h{1, 5};
    std::memcpy(p.data(), &h, 8);
    std::memcpy(p.data() + 8, "hello", 5);
    auto d = parse_pipe_payload(p);
    ASSERT_TRUE(d);
    EXPECT_EQ(std::string(d->begin(), d->end()), "hello");
    // Padding after the data is fine; the data is what data_size says.
    p.resize(24);
    ASSERT_TRUE(parse_pipe_payload(p));
    EXPECT_EQ(parse_pipe_payload(p)->size(), 5u);
    // FIN.
    const PipeHeader fin{1, 0};
    std::memcpy(p.data(), &fin, 8);
    ASSERT_TRUE(parse_pipe_payload(p));
    EXPECT_TRUE(parse_pipe_payload(p)->empty());
    // Bad: too short, a length past the payload or the MTU, another type.
    EXPECT_FALSE(parse_pipe_payload(std::span(p.data(), 7)));
    const PipeHeader big{1, 17};
    std::memcpy(p.data(), &big, 8);
    EXPECT_FALSE(parse_pipe_payload(p));
    std::vector<uint8_t> huge(8 + kMaxData + 8);
    const PipeHeader over{1, kMaxData + 1};
    std::memcpy(huge.data(), &over, 8);
    EXPECT_FALSE(parse_pipe_payload(huge));
    const PipeHeader t2{2, 1};
    std::memcpy(p.data(), &t2, 8);
    EXPECT_FALSE(parse_pipe_payload(p));
}

TEST(HvsockProtocol, ConnectLines) {
    EXPECT_EQ(parse_connect_line("CONNECT 5000\n").value(), 5000u);
    EXPECT_EQ(parse_connect_line("connect 1\r\n").value(), 1u);
    EXPECT_EQ(parse_connect_line("CONNECT 4294967295\n").value(), 4294967295u);
    EXPECT_FALSE(parse_connect_line("CONNECT 4294967296\n"));
    EXPECT_FALSE(parse_connect_line("CONNECT 5000"));
    EXPECT_FALSE(parse_connect_line("CONNECT\n"));
    EXPECT_FALSE(parse_connect_line("CONNECT \n"));
    EXPECT_FALSE(parse_connect_line("CONNECT -1\n"));
    EXPECT_FALSE(parse_connect_line("CONNECT 12x\n"));
    EXPECT_FALSE(parse_connect_line("LISTEN 5000\n"));
    EXPECT_FALSE(parse_connect_line("CONNECT  5000\n"));
    EXPECT_FALSE(parse_connect_line(std::string("CONNECT ") + std::string(40, '1') + "\n"));
}

// --- the service against the simulated guest ---

int unix_connect(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

int unix_listen(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    ::unlink(path.c_str());
    EXPECT_EQ(0, ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)));
    EXPECT_EQ(0, ::listen(fd, 512));
    return fd;
}

// What the host side can read now (non-blocking); *eof when the peer shut down or closed
// (a Unix socket closed with bytes unread by it reads ECONNRESET).
std::string read_now(int fd, bool* eof = nullptr) {
    std::string out;
    char buf[65536];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            out.append(buf, static_cast<size_t>(n));
            continue;
        }
        if (eof) *eof = (n == 0 || (n < 0 && errno == ECONNRESET));
        return out;
    }
}

class HvsockTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() / ("hvsock-test-" + std::to_string(::getpid()) + "-" +
                                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        path_ = (dir_ / "v.sock").string();
        ServiceOptions o;
        o.socket_path = path_;
        o.open_timeout = open_timeout();
        o.line_timeout = 200ms;
        svc_ = Service::create(o, g_.loop()).value();
        svc_->attach(g_.server());
        g_.connect();
        g_.sink().take();
    }
    virtual std::chrono::milliseconds open_timeout() const { return 200ms; }
    void TearDown() override {
        svc_->detach();
        svc_.reset();
        std::filesystem::remove_all(dir_);
    }

    // The host client's CONNECT: the offer the guest gets.
    std::optional<OfferChannel> host_connect(int& client, uint32_t port) {
        client = unix_connect(path_);
        EXPECT_GE(client, 0);
        const std::string line = "CONNECT " + std::to_string(port) + "\n";
        EXPECT_EQ(::write(client, line.data(), line.size()), static_cast<ssize_t>(line.size()));
        g_.pump();
        auto offers = SimGuest::offers(g_.sink().take());
        if (offers.size() != 1) return std::nullopt;
        return offers[0];
    }

    // hv_sock's hvs_send_data: one data packet (FIN when empty), signalled.
    void guest_send(SimChannel& ch, std::string_view data) {
        std::vector<uint8_t> p(8 + data.size());
        const PipeHeader h{1, static_cast<uint32_t>(data.size())};
        std::memcpy(p.data(), &h, 8);
        std::memcpy(p.data() + 8, data.data(), data.size());
        ASSERT_TRUE(g_.send(ch, kPacketDataInband, 0, p, {}, false));
        g_.pump();
    }
    // Everything in the guest's ring: the data, and whether a FIN came (then stop).
    std::string guest_read(SimChannel& ch, bool* fin = nullptr) {
        std::string out;
        while (auto p = ch.to_guest.read()) {
            EXPECT_EQ(p->desc.type, kPacketDataInband);
            EXPECT_EQ(p->desc.offset8, 2);
            PipeHeader h;
            std::memcpy(&h, p->payload.data(), 8);
            EXPECT_EQ(h.pkt_type, 1u);
            EXPECT_LE(h.data_size, kMaxData);
            EXPECT_LE(p->desc.len8 * 8u, kMaxPacketToGuest);
            if (h.data_size == 0) {
                if (fin) *fin = true;
            }
            out.append(reinterpret_cast<const char*>(p->payload.data()) + 8, h.data_size);
        }
        g_.doorbell(ch);  // room made: Linux signals when it crosses pending_send_sz; always is fine
        g_.pump();
        return out;
    }
    bool rescinded(uint32_t relid) {
        for (const auto& m : g_.sink().take())
            if (m.type() == MsgType::RescindChannelOffer && m.as<RescindOffer>().child_relid == relid) return true;
        return false;
    }
    size_t hvsock_channels() {
        size_t n = 0;
        for (const auto& c : g_.server().channels())
            if (c.name.starts_with("hvsock")) ++n;
        return n;
    }

    SimGuest g_{2, 8192};
    std::filesystem::path dir_;
    std::string path_;
    std::unique_ptr<Service> svc_;
};

TEST_F(HvsockTest, HostConnectReachesAGuestListenerAndClosesBothWays) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    // contract-services §4.3: the listener's service id, a fresh instance, from the host.
    EXPECT_EQ(offer->if_type, service_id(5000));
    EXPECT_FALSE(is_service_id(offer->if_instance));
    EXPECT_EQ(offer->chn_flags & kChannelFlagTlnpiProvider, kChannelFlagTlnpiProvider);
    EXPECT_EQ(offer->user_def[kUserDefConnFromHost], 1);
    EXPECT_EQ(offer->sub_channel_index, 0);
    // Nothing for the client before the guest accepts.
    EXPECT_EQ(read_now(client), "");

    SimChannel ch = g_.open_channel(offer->child_relid, 6, 6);
    EXPECT_EQ(SimGuest::open_result(g_.sink().take(), offer->child_relid), 0u);
    EXPECT_EQ(read_now(client), "OK " + std::to_string(port_of(offer->if_instance)) + "\n");

    ASSERT_EQ(::write(client, "hello", 5), 5);
    g_.pump();
    EXPECT_EQ(guest_read(ch), "hello");
    guest_send(ch, "world");
    EXPECT_EQ(read_now(client), "world");

    // Host EOF -> one FIN to the guest; the guest still sends, then its FIN -> client EOF,
    // and the channel is rescinded.
    ::shutdown(client, SHUT_WR);
    g_.pump();
    bool fin = false;
    EXPECT_EQ(guest_read(ch, &fin), "");
    EXPECT_TRUE(fin);
    EXPECT_FALSE(rescinded(ch.relid));
    guest_send(ch, "late");
    EXPECT_EQ(read_now(client), "late");
    guest_send(ch, "");
    bool eof = false;
    EXPECT_EQ(read_now(client, &eof), "");
    EXPECT_TRUE(eof);
    EXPECT_TRUE(rescinded(ch.relid));
    EXPECT_EQ(svc_->stats().live, 0u);

    // The guest closes and releases without tearing the GPADL down (as Linux does after a
    // rescind): the channel, its relid and its GPADL go.
    EXPECT_EQ(hvsock_channels(), 1u);
    g_.simple(MsgType::CloseChannel, ch.relid);
    g_.simple(MsgType::RelidReleased, ch.relid);
    g_.pump();
    EXPECT_EQ(hvsock_channels(), 0u);
    EXPECT_EQ(g_.server().gpadl_count(), 0u);
    ::close(client);
}

TEST_F(HvsockTest, GuestCloseFirstGivesTheClientEof) {
    int client = -1;
    auto offer = host_connect(client, 22);
    ASSERT_TRUE(offer);
    SimChannel ch = g_.open_channel(offer->child_relid, 6, 6);
    read_now(client);
    guest_send(ch, "bye");
    guest_send(ch, "");
    bool eof = false;
    EXPECT_EQ(read_now(client, &eof), "bye");
    EXPECT_TRUE(eof);
    // The connection stays until the host side finishes too.
    EXPECT_FALSE(rescinded(ch.relid));
    ASSERT_EQ(::write(client, "x", 1), 1);
    ::close(client);
    g_.pump();
    bool fin = false;
    EXPECT_EQ(guest_read(ch, &fin), "x");
    EXPECT_TRUE(fin);
    EXPECT_TRUE(rescinded(ch.relid));
}

TEST_F(HvsockTest, GuestConnectReachesTheHostListenerOnPathPort) {
    const int listener = unix_listen(path_ + "_6000");
    TlConnectRequest req{};
    req.header.msgtype = static_cast<uint32_t>(MsgType::TlConnectRequest);
    req.guest_endpoint_id = service_id(0x12345678);
    req.host_service_id = service_id(6000);
    g_.post(req);
    g_.pump();
    auto offers = SimGuest::offers(g_.sink().take());
    ASSERT_EQ(offers.size(), 1u);
    // The corrected §6.9: if_type = the host service, if_instance = the guest endpoint.
    EXPECT_EQ(offers[0].if_type, service_id(6000));
    EXPECT_EQ(offers[0].if_instance, service_id(0x12345678));
    EXPECT_EQ(offers[0].user_def[kUserDefConnFromHost], 0);
    const int peer = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(peer, 0);

    SimChannel ch = g_.open_channel(offers[0].child_relid, 6, 6);
    EXPECT_EQ(SimGuest::open_result(g_.sink().take(), ch.relid), 0u);
    guest_send(ch, "ping");
    EXPECT_EQ(read_now(peer), "ping");  // no OK line on this side
    ASSERT_EQ(::write(peer, "pong", 4), 4);
    g_.pump();
    EXPECT_EQ(guest_read(ch), "pong");

    // A second request from the same endpoint while its channel lives is refused.
    g_.post(req);
    g_.pump();
    EXPECT_TRUE(SimGuest::offers(g_.sink().take()).empty());

    // The host closes: FIN, then with the guest's FIN, the rescind.
    ::close(peer);
    g_.pump();
    bool fin = false;
    guest_read(ch, &fin);
    EXPECT_TRUE(fin);
    guest_send(ch, "");
    EXPECT_TRUE(rescinded(ch.relid));
    ::close(listener);
}

TEST_F(HvsockTest, GuestConnectWithoutListenerOrWithBadIdsIsNotOffered) {
    TlConnectRequest req{};
    req.header.msgtype = static_cast<uint32_t>(MsgType::TlConnectRequest);
    req.guest_endpoint_id = service_id(4000);
    req.host_service_id = service_id(6001);  // nobody listens on PATH_6001
    g_.post(req);
    const int listener = unix_listen(path_ + "_6002");
    req.host_service_id = service_id(6002);
    req.guest_endpoint_id = Guid::from_name("not a vsock port");  // not a template id
    g_.post(req);
    g_.pump();
    EXPECT_TRUE(SimGuest::offers(g_.sink().take()).empty());
    EXPECT_EQ(svc_->stats().refused, 2u);
    EXPECT_EQ(svc_->stats().live, 0u);
    ::close(listener);
}

TEST_F(HvsockTest, AnOfferTheGuestNeverOpensIsRescindedAfterTheTimeout) {
    int client = -1;
    auto offer = host_connect(client, 7777);
    ASSERT_TRUE(offer);
    g_.loop().run_until([&] { return svc_->stats().live == 0; }, 2s);
    g_.pump();
    EXPECT_TRUE(rescinded(offer->child_relid));
    bool eof = false;
    EXPECT_EQ(read_now(client, &eof), "");
    EXPECT_TRUE(eof);
    // The guest releases the relid; nothing is left.
    g_.simple(MsgType::RelidReleased, offer->child_relid);
    g_.pump();
    EXPECT_EQ(hvsock_channels(), 0u);
    ::close(client);
}

TEST_F(HvsockTest, BadClientLinesAreRefused) {
    const int a = unix_connect(path_);
    ASSERT_EQ(::write(a, "HELLO 5\n", 8), 8);
    const int b = unix_connect(path_);  // says nothing: the line timeout
    const int c = unix_connect(path_);
    const std::string longline(100, 'C');
    ASSERT_EQ(::write(c, longline.data(), longline.size()), 100);
    g_.pump();
    g_.loop().run_until([&] { return svc_->stats().refused >= 2; }, 2s);
    bool eof = false;
    read_now(a, &eof);
    EXPECT_TRUE(eof);
    eof = false;
    read_now(c, &eof);
    EXPECT_TRUE(eof);
    g_.loop().run_until(
        [&] {
            bool e = false;
            read_now(b, &e);
            return e;
        },
        2s);
    eof = false;
    read_now(b, &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(SimGuest::offers(g_.sink().take()).empty());
    ::close(a), ::close(b), ::close(c);
}

TEST_F(HvsockTest, BadGuestPacketsEndTheConnection) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    SimChannel ch = g_.open_channel(offer->child_relid, 6, 6);
    read_now(client);
    // data_size beyond the packet.
    std::vector<uint8_t> p(16);
    const PipeHeader h{1, 1000};
    std::memcpy(p.data(), &h, 8);
    ASSERT_TRUE(g_.send(ch, kPacketDataInband, 0, p, {}, true));
    g_.pump();
    EXPECT_TRUE(rescinded(ch.relid));
    bool eof = false;
    read_now(client, &eof);
    EXPECT_TRUE(eof);
    // More packets after the end change nothing.
    ASSERT_TRUE(g_.send(ch, kPacketDataInband, 0, p, {}, true));
    g_.pump();
    EXPECT_EQ(svc_->stats().live, 0u);
    ::close(client);
}

TEST_F(HvsockTest, TheGuestClosingTheChannelEndsTheConnection) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    SimChannel ch = g_.open_channel(offer->child_relid, 6, 6);
    read_now(client);
    g_.sink().take();
    g_.simple(MsgType::CloseChannel, ch.relid);
    g_.pump();
    bool eof = false;
    read_now(client, &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(rescinded(ch.relid));
    EXPECT_EQ(svc_->stats().live, 0u);
    g_.simple(MsgType::RelidReleased, ch.relid);
    g_.pump();
    EXPECT_EQ(hvsock_channels(), 0u);
    ::close(client);
}

TEST_F(HvsockTest, AClientThatHangsUpBeforeTheOpenWithdrawsTheOffer) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    ::close(client);
    g_.pump();
    // At once, not after the open timeout.
    EXPECT_TRUE(rescinded(offer->child_relid));
    EXPECT_EQ(svc_->stats().live, 0u);
    // A guest that opens it anyway (it had not seen the rescind yet) is refused.
    g_.open_channel(offer->child_relid, 6, 6);
    EXPECT_NE(SimGuest::open_result(g_.sink().take(), offer->child_relid), std::optional<uint32_t>(0u));
}

TEST_F(HvsockTest, ABusResetWithdrawsConnections) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    SimChannel ch = g_.open_channel(offer->child_relid, 6, 6);
    EXPECT_EQ(read_now(client), "OK " + std::to_string(port_of(offer->if_instance)) + "\n");
    EXPECT_EQ(SimGuest::open_result(g_.sink().take(), ch.relid), 0u);
    MessageHeader unload{static_cast<uint32_t>(MsgType::Unload), 0};
    g_.post(unload);
    g_.pump();
    bool eof = false;
    read_now(client, &eof);
    EXPECT_TRUE(eof);
    g_.sink().take();
    g_.connect();
    for (const auto& o : SimGuest::offers(g_.sink().take())) EXPECT_NE(o.if_type, service_id(5000));
    EXPECT_EQ(hvsock_channels(), 0u);
    EXPECT_EQ(svc_->stats().live, 0u);
    ::close(client);
}

// Megabytes both ways through 20 KiB rings (Linux's VMBus 4.x ring size): back-pressure on
// both sides, nothing lost, nothing reordered.
TEST_F(HvsockTest, BulkBothWaysIntact) {
    int client = -1;
    auto offer = host_connect(client, 5000);
    ASSERT_TRUE(offer);
    SimChannel ch = g_.open_channel(offer->child_relid, 5, 5);
    read_now(client);
    std::string up, down;
    for (size_t i = 0; i < (3u << 20); ++i) up.push_back(static_cast<char>((i * 7 + i / 4096) & 0xff));
    for (size_t i = 0; i < (3u << 20); ++i) down.push_back(static_cast<char>((i * 13 + 5) & 0xff));
    ::fcntl(client, F_SETFL, O_NONBLOCK);
    size_t up_sent = 0, down_sent = 0;
    std::string got_guest, got_host;
    bool fin = false;
    for (int round = 0; round < 100000 && (got_guest.size() < up.size() || got_host.size() < down.size()); ++round) {
        if (up_sent < up.size()) {
            const ssize_t n = ::send(client, up.data() + up_sent, std::min<size_t>(up.size() - up_sent, 65536), MSG_NOSIGNAL);
            if (n > 0) up_sent += static_cast<size_t>(n);
            if (up_sent == up.size()) ::shutdown(client, SHUT_WR);
        }
        // The guest writes 4088-byte packets while its ring has room.
        while (down_sent < down.size()) {
            const size_t n = std::min<size_t>(down.size() - down_sent, 4088);
            std::vector<uint8_t> p(8 + n);
            const PipeHeader h{1, static_cast<uint32_t>(n)};
            std::memcpy(p.data(), &h, 8);
            std::memcpy(p.data() + 8, down.data() + down_sent, n);
            if (!g_.send(ch, kPacketDataInband, 0, p, {}, false)) break;
            down_sent += n;
        }
        g_.pump();
        got_guest += guest_read(ch, &fin);
        got_host += read_now(client);
    }
    EXPECT_EQ(got_guest.size(), up.size());
    EXPECT_TRUE(got_guest == up);
    EXPECT_TRUE(fin);
    EXPECT_EQ(got_host.size(), down.size());
    EXPECT_TRUE(got_host == down);
    guest_send(ch, "");
    EXPECT_TRUE(rescinded(ch.relid));
    ::close(client);
}

// A guest that floods connect requests: the server bounds what waits, the service bounds
// live connections; the VMM keeps serving.
class HvsockFloodTest : public HvsockTest {
protected:
    std::chrono::milliseconds open_timeout() const override { return 60s; }
};

TEST_F(HvsockFloodTest, ConnectFloodsAreBounded) {
    const int listener = unix_listen(path_ + "_6000");
    TlConnectRequest req{};
    req.header.msgtype = static_cast<uint32_t>(MsgType::TlConnectRequest);
    req.host_service_id = service_id(6000);
    for (uint32_t i = 0; i < 100; ++i) {
        req.guest_endpoint_id = service_id(10000 + i);
        g_.post(req);
    }
    EXPECT_EQ(g_.server().stats().tl_connects, kMaxPendingTlConnects);
    EXPECT_EQ(g_.server().stats().tl_connects_dropped, 100 - kMaxPendingTlConnects);
    g_.pump();
    // Many more, pumped: at most kMaxConnections live.
    std::vector<int> peers;
    for (uint32_t i = 0; i < 400; ++i) {
        req.guest_endpoint_id = service_id(20000 + i);
        g_.post(req);
        g_.pump();
        for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC)) >= 0;) peers.push_back(fd);
    }
    EXPECT_EQ(svc_->stats().live, kMaxConnections);
    EXPECT_GT(svc_->stats().refused, 0u);
    EXPECT_LE(hvsock_channels(), kMaxConnections);
    for (int fd : peers) ::close(fd);
    ::close(listener);
}

}  // namespace
