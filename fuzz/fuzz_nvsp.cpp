// Fuzzes the network VSP through the whole path a guest drives (contract-network.md §2–§8):
// NVSP messages of any type and length on the primary, before or after a well-formed
// bring-up; SEND_RNDIS_PKT with send-section indexes and sizes from the fuzzer and GPA
// ranges that may lie or point outside RAM, carrying RNDIS streams (packets, PPIs, control
// messages) from the fuzzer; RX frames from the backend side; receive completions with
// real and made-up transaction ids; link flips; SUBCHANNEL requests. Then the channel is
// closed and its GPADLs torn down.
//
// Traps if the VSP writes a packet longer than netvsc accepts (NETVSC_MAX_PKT_SIZE), a
// completion of a transaction the guest never asked to have completed, a packet type the
// guest does not take, a type-7 packet with another transfer-page set id, or ranges outside
// the receive buffer or longer than a section; or if a GPADL teardown is never answered; or
// if any page of guest RAM changes outside the rings, the guest's own message and data pages
// and the receive and send buffers (a VMM that writes where the guest did not point corrupts
// the guest).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#define ENL_SIM_CHECK(cond)            \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)
#include "../tests/unit/support/sim_guest.hpp"

#include "common/log.hpp"
#include "devices/netvsp/netvsp.hpp"
#include "devices/netvsp/protocol.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::netvsp;

#define CHECK(cond) ENL_SIM_CHECK(cond)

namespace {

constexpr uint64_t kRamPages = 1024;
constexpr uint32_t kRecvPages = 32;
constexpr uint32_t kSendPages = 8;
constexpr uint32_t kRecvGpadl = 0xcafe0, kSendGpadl = 0xcafe1;

class FakeBackend final : public net::Backend {
public:
    [[nodiscard]] net::Capabilities capabilities() const override { return {true, true, 9000}; }
    Result<> send(std::span<const iovec> frame, const net::Offload& o) override {
        size_t n = iov_total(frame);
        if (o.needs_csum) CHECK(size_t{o.csum_start} + o.csum_offset + 2 <= n);
        // Touch every byte (ASan sees a bad iovec).
        volatile uint8_t sink = 0;
        for (const auto& v : frame)
            for (size_t i = 0; i < v.iov_len; ++i) sink = sink ^ static_cast<const uint8_t*>(v.iov_base)[i];
        return {};
    }
    void set_receiver(net::Receiver* r) override {
        LockGuard lock(mu_);
        rx_ = r;
    }
    [[nodiscard]] net::BackendStatus status() const override { return {}; }
    net::Receiver* receiver() {
        LockGuard lock(mu_);
        return rx_;
    }

private:
    Mutex mu_;
    net::Receiver* rx_ ENL_GUARDED_BY(mu_) = nullptr;
};

class Guest {
public:
    Guest() : g(2, kRamPages) {}

    bool start(std::shared_ptr<Nic> n) {
        nic = std::move(n);
        relid = g.server().add_device(nic).value();
        g.connect();
        g.sink().take();
        ch = g.open_channel(relid, 8, 8);
        // The guest asks to be told when the VMM has taken all it wrote (as Linux does when its
        // ring is full), so that settle() sleeps until then instead of polling.
        ch.to_host.store(vmbus::kRingPendingSendSize, ch.to_host.size() - 1);
        ctl_page = g.alloc_pages(2);
        data_page = g.alloc_pages(20);
        recv_page = g.alloc_pages(kRecvPages);
        send_page = g.alloc_pages(kSendPages);
        g.create_gpadl(relid, kRecvGpadl, test::SimGuest::pages(recv_page, kRecvPages));
        g.create_gpadl(relid, kSendGpadl, test::SimGuest::pages(send_page, kSendPages));
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        std::vector<test::SimSink::Msg> seen;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            for (auto& m : g.sink().take()) seen.push_back(std::move(m));
            if (auto r = test::SimGuest::open_result(seen, relid)) return *r == 0;
            g.wait();
        }
        return false;
    }

    void send(uint16_t type, uint64_t tid, std::span<const uint8_t> payload, std::span<const uint8_t> ext, bool want) {
        if (ch.to_host.write(type, want ? vmbus::kPacketFlagCompletionRequested : uint16_t{0}, tid, ext, payload)) {
            if (want && type != vmbus::kPacketCompletion) ++asked[tid];
            g.doorbell(ch);
        }
        settle();
    }
    template <typename T>
    void nvsp(const T& m, uint64_t tid, bool want) {
        NvspMessage n{};
        std::memcpy(&n, &m, sizeof(T));
        send(vmbus::kPacketDataInband, tid, as_bytes(n), {}, want);
    }

    // Until the device took everything; reads what it wrote, completing type-7 packets.
    void settle(std::chrono::milliseconds wait = std::chrono::milliseconds(200)) {
        g.wait_until(
            [&] {
                read_all();
                return ch.to_host.used() == 0;
            },
            wait);
        read_all();
    }

    void read_all() {
        while (auto p = ch.to_guest.read()) {
            CHECK(p->desc.len8 * 8u <= kMaxPacketToGuest);
            if (p->desc.type == vmbus::kPacketCompletion) {
                auto it = asked.find(p->desc.trans_id);
                CHECK(it != asked.end() && it->second > 0);
                if (--it->second == 0) asked.erase(it);
                continue;
            }
            CHECK(p->desc.type == vmbus::kPacketDataUsingXferPages);
            uint16_t set_id;
            uint32_t n;
            CHECK(p->ext.size() >= 8);
            std::memcpy(&set_id, p->ext.data(), 2);
            std::memcpy(&n, p->ext.data() + 4, 4);
            CHECK(set_id == recv_id);
            CHECK(p->ext.size() == 8 + 8ull * n && n >= 1);
            for (uint32_t i = 0; i < n; ++i) {
                vmbus::XferRange r;
                std::memcpy(&r, p->ext.data() + 8 + 8 * i, 8);
                CHECK(uint64_t{r.byte_offset} + r.byte_count <= uint64_t{kRecvPages} * 4096);
                CHECK(r.byte_count >= 8);
            }
            if (complete_rx) {
                const NvspRndisComplete c{nvsp::kSendRndisPktComplete, 1};
                ch.to_host.write(vmbus::kPacketCompletion, 0, p->desc.trans_id, {}, as_bytes(c));
                g.doorbell(ch);
            } else {
                held.push_back(p->desc.trans_id);
            }
        }
    }

    void rndis(std::span<const uint8_t> msg, uint64_t tid) {
        const size_t n = std::min<size_t>(msg.size(), 8192);
        std::memcpy(g.ram().data() + ctl_page * 4096, msg.data(), n);
        const auto ext = test::SimGuest::gpa_direct_ext(
            {{static_cast<uint32_t>(std::max<size_t>(n, 1)), 0, {ctl_page, ctl_page + 1}}});
        const NvspRndisPacket r{nvsp::kSendRndisPkt, nvsp::kChannelControl, nvsp::kNoSection, 0};
        NvspMessage m{};
        std::memcpy(&m, &r, sizeof(r));
        send(vmbus::kPacketDataUsingGpaDirect, tid, as_bytes(m), ext, true);
    }

    void bring_up(uint64_t& tid) {
        nvsp(NvspInit{nvsp::kInit, nvsp::kVersion61, nvsp::kVersion61, 0}, tid++, true);
        nvsp(NvspNdisConfig{nvsp::kSendNdisConfig, 1514, 0, 0xAC}, nvsp::kNoResponseId, false);
        nvsp(NvspNdisVersion{nvsp::kSendNdisVersion, 6, 30}, nvsp::kNoResponseId, false);
        nvsp(NvspSendBuffer{nvsp::kSendRecvBuf, kRecvGpadl, nvsp::kRecvBufId, 0}, tid++, true);
        nvsp(NvspSendBuffer{nvsp::kSendSendBuf, kSendGpadl, 0, 0}, tid++, true);
        const RndisInit init{{rndis::kMsgInit, 24}, 1, 1, 0, 0x4000};
        rndis(as_bytes(init), tid++);
        struct {
            RndisQuery q;
            uint32_t filter;
        } set{{{rndis::kMsgSet, 32}, 2, rndis::kOidPacketFilter, 4, 20, 0}, 0x0D};
        rndis(as_bytes(set), tid++);
        settle(std::chrono::milliseconds(500));
    }

    void finish() {
        g.simple(vmbus::MsgType::CloseChannel, relid);
        g.teardown(relid, ch.gpadl);
        g.teardown(relid, kRecvGpadl);
        g.teardown(relid, kSendGpadl);
        CHECK(g.await_torndown({ch.gpadl, kRecvGpadl, kSendGpadl}).size() == 3);
    }

    test::SimGuest g;
    std::shared_ptr<Nic> nic;
    uint32_t relid = 0;
    test::SimChannel ch;
    uint64_t ctl_page = 0, data_page = 0, recv_page = 0, send_page = 0;
    uint16_t recv_id = nvsp::kRecvBufId;
    bool complete_rx = true;
    std::map<uint64_t, int> asked;
    std::vector<uint64_t> held;
};

constexpr uint32_t kTypes[] = {nvsp::kInit, nvsp::kSendNdisVersion, nvsp::kSendRecvBuf, nvsp::kRevokeRecvBuf,
                               nvsp::kSendSendBuf, nvsp::kRevokeSendBuf, nvsp::kSendRndisPkt,
                               nvsp::kSendRndisPktComplete, nvsp::kSendNdisConfig, nvsp::kSwitchDataPath,
                               nvsp::kSubchannel, 0x12345};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::set_level(log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    const uint8_t setup = in.take<uint8_t>();
    auto be = std::make_unique<FakeBackend>();
    FakeBackend* backend = be.get();
    NicOptions o;
    o.name = "fuzz";
    o.instance = vmbus::Guid::parse("aaaaaaaa-2222-3333-4444-555555555555");
    o.max_queues = 4;
    auto nic = Nic::create(o, std::move(be));
    CHECK(nic.has_value());
    {
        Guest guest;
        CHECK(guest.start(*nic));
        // The rings and the guest's pages are one run of pages; every other page holds a
        // pattern that nothing may change.
        const uint64_t mine_from = guest.ch.first_page, mine_to = guest.send_page + kSendPages;
        const auto unwritable = [&](uint64_t page) { return page < mine_from || page >= mine_to; };
        guest.g.fill_guarded(unwritable);
        uint64_t tid = 1;
        guest.complete_rx = !(setup & 2);
        if (!(setup & 1)) guest.bring_up(tid);
        for (int ops = 0; ops < 64 && !in.empty(); ++ops) {
            const uint8_t what = in.take<uint8_t>();
            const bool want = !(what & 0x80);
            switch (what % 8) {
                case 0: {  // any NVSP message
                    NvspMessage m{};
                    const auto raw = in.take_bytes(sizeof(m));
                    if (!raw.empty()) std::memcpy(&m, raw.data(), raw.size());
                    if (what & 0x40) m.msg_type = kTypes[m.msg_type % std::size(kTypes)];
                    const size_t len = (what & 0x20) ? in.take<uint8_t>() % 48 : sizeof(m);
                    std::vector<uint8_t> payload(len, 0);
                    if (len) std::memcpy(payload.data(), &m, std::min(len, sizeof(m)));
                    guest.send(vmbus::kPacketDataInband, tid++, payload, {}, want);
                    break;
                }
                case 1: {  // RNDIS in a send section (shape A, maybe B)
                    const uint32_t k = in.take<uint8_t>() % 12;
                    const uint32_t len = in.take<uint16_t>() % 6400;
                    const auto b = in.take_bytes(len);
                    if (k < kSendPages * 4096 / 6144 && !b.empty())
                        std::memcpy(guest.g.ram().data() + guest.send_page * 4096 + k * 6144, b.data(),
                                    std::min<size_t>(b.size(), 6144));
                    NvspRndisPacket r{nvsp::kSendRndisPkt, what & 0x40 ? 1u : 0u, k, len};
                    NvspMessage m{};
                    std::memcpy(&m, &r, sizeof(r));
                    std::vector<uint8_t> ext;
                    if (what & 0x20) {
                        const uint32_t n = 1 + in.take<uint16_t>() % 20000;
                        std::vector<uint64_t> pfns;
                        for (uint32_t i = 0; i < (n + 4095) / 4096; ++i) pfns.push_back(guest.data_page + i);
                        ext = test::SimGuest::gpa_direct_ext({{n, 0, pfns}});
                    }
                    guest.send(ext.empty() ? vmbus::kPacketDataInband : vmbus::kPacketDataUsingGpaDirect, tid++,
                               as_bytes(m), ext, want);
                    break;
                }
                case 2: {  // RNDIS in GPA ranges (shape C), ranges that may lie
                    const auto b = in.take_bytes(in.take<uint16_t>() % (16 * 4096));
                    if (!b.empty()) std::memcpy(guest.g.ram().data() + guest.data_page * 4096, b.data(), b.size());
                    std::vector<test::SimGuest::Range> ranges;
                    const uint8_t nr = 1 + in.take<uint8_t>() % 4;
                    for (uint8_t i = 0; i < nr; ++i) {
                        test::SimGuest::Range r{};
                        r.count = in.take<uint16_t>() % 20000;
                        r.offset = in.take<uint16_t>() % 4200;
                        const uint8_t np = in.take<uint8_t>() % 8;
                        const bool wild = in.take<uint8_t>() == 0xff;
                        for (uint8_t j = 0; j < np; ++j)
                            r.pfns.push_back(wild ? in.take<uint64_t>() : guest.data_page + (j + i) % 16);
                        ranges.push_back(std::move(r));
                    }
                    const NvspRndisPacket r{nvsp::kSendRndisPkt, 0, nvsp::kNoSection, 0};
                    NvspMessage m{};
                    std::memcpy(&m, &r, sizeof(r));
                    guest.send(vmbus::kPacketDataUsingGpaDirect, tid++, as_bytes(m),
                               test::SimGuest::gpa_direct_ext(ranges), want);
                    break;
                }
                case 3: {  // a control message
                    std::vector<uint8_t> msg;
                    const auto b = in.take_bytes(in.take<uint16_t>() % 1024);
                    msg.assign(b.begin(), b.end());
                    if (msg.size() >= 8 && (what & 0x40)) {
                        const uint32_t l = static_cast<uint32_t>(msg.size());
                        std::memcpy(msg.data() + 4, &l, 4);
                    }
                    if (!msg.empty()) guest.rndis(msg, tid++);
                    break;
                }
                case 4: {  // RX frames from the backend
                    guest.g.pump();
                    net::Receiver* rx = backend->receiver();
                    const uint8_t count = 1 + in.take<uint8_t>() % 64;
                    const auto f = in.take_bytes(in.take<uint16_t>() % 9100);
                    net::Offload off;
                    off.csum_valid = what & 0x10;
                    if (what & 0x20) {
                        off.needs_csum = true;
                        off.csum_start = in.take<uint16_t>();
                        off.csum_offset = in.take<uint8_t>();
                    }
                    if (rx) {
                        const iovec iov{const_cast<uint8_t*>(f.data()), f.size()};
                        for (uint8_t i = 0; i < count; ++i) (void)rx->receive(std::span(&iov, 1), off);
                        rx->flush();
                    }
                    guest.settle(std::chrono::milliseconds(20));
                    break;
                }
                case 5:
                    (*nic)->set_link(what & 0x10);
                    guest.settle(std::chrono::milliseconds(20));
                    break;
                case 6: {  // completions, real or not
                    uint64_t t = in.take<uint64_t>();
                    if ((what & 0x40) && !guest.held.empty()) {
                        t = guest.held.back();
                        guest.held.pop_back();
                    }
                    NvspRndisComplete c{nvsp::kSendRndisPktComplete, 1};
                    if (what & 0x20) c.msg_type = in.take<uint32_t>();
                    guest.send(vmbus::kPacketCompletion, t, as_bytes(c), {}, false);
                    break;
                }
                default:
                    guest.nvsp(NvspSubchannel{nvsp::kSubchannel, in.take<uint8_t>() % 3u, in.take<uint8_t>() % 70u},
                               tid++, want);
                    break;
            }
        }
        (void)(*nic)->status();
        guest.finish();
        guest.g.stop();
        CHECK(guest.g.guarded_intact(unwritable));
    }
    return 0;
}
