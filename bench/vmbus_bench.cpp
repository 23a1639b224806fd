// Host-side cost of the VMBus data path and the two hypercalls, measured in-process
// (Google Benchmark). The guest side is simulated as cheaply as possible: it only moves the
// ring indices / frees the message slot, so what is timed is Enlighten's own work.
//
//   build/bench/vmbus_bench                       all
//   build/bench/vmbus_bench --benchmark_filter=Ring
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "common/log.hpp"

#include "hv/partition.hpp"
#include "vmbus/ring.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

namespace {

constexpr uint32_t kDataPages = 32;  // 128 KiB ring, like storvsc's

struct RingFixture {
    std::vector<uint8_t> ram = std::vector<uint8_t>((kDataPages + 1) * kPageSize);
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    std::vector<uint64_t> pfns;
    RingFixture() {
        for (uint64_t i = 0; i <= kDataPages; ++i) pfns.push_back(i);
    }
    uint32_t hdr(uint32_t off) const {
        uint32_t v;
        std::memcpy(&v, ram.data() + off, 4);
        return v;
    }
    void set(uint32_t off, uint32_t v) { std::memcpy(ram.data() + off, &v, 4); }
};

// Host -> guest: OutRing::write; the "guest" consumes everything after each write.
void BM_RingWrite(benchmark::State& state) {
    RingFixture f;
    OutRing out(RingMemory::map(f.mem, f.pfns).value());
    std::vector<uint8_t> payload(static_cast<size_t>(state.range(0)), 0x5a);
    uint64_t id = 0;
    for (auto _ : state) {
        auto r = out.write(kPacketCompletion, 0, ++id, {}, payload, false);
        benchmark::DoNotOptimize(r);
        f.set(kRingReadIndex, f.hdr(kRingWriteIndex));
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_RingWrite)->Arg(64)->Arg(4096);

// Guest -> host: InRing::next + commit over a ring the "guest" keeps full of packets.
void BM_RingRead(benchmark::State& state) {
    RingFixture f;
    const auto size = static_cast<uint32_t>(state.range(0));
    const uint32_t len = (16 + size + 7) / 8 * 8;
    const uint32_t ring = kDataPages * kPageSize;
    // Pre-fill the data area with packets back to back, as many as fit (indices wrap).
    const uint32_t count = (ring - 8) / (len + 8);
    for (uint32_t i = 0; i < count; ++i) {
        PacketDescriptor d{kPacketDataInband, 2, static_cast<uint16_t>(len / 8), 0, i};
        std::memcpy(f.ram.data() + kPageSize + i * (len + 8), &d, sizeof(d));
    }
    InRing in(RingMemory::map(f.mem, f.pfns).value());
    std::vector<uint8_t> buf;
    f.set(kRingWriteIndex, count * (len + 8));
    for (auto _ : state) {
        auto pkt = in.next(buf, 65536);
        if (!pkt || !pkt->has_value()) {
            // Ring drained: the "guest" rewinds (a fresh ring) and refills.
            state.PauseTiming();
            in = InRing(RingMemory::map(f.mem, f.pfns).value());
            f.set(kRingReadIndex, 0);
            f.set(kRingWriteIndex, count * (len + 8));
            state.ResumeTiming();
            continue;
        }
        benchmark::DoNotOptimize(pkt);
        in.commit();
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_RingRead)->Arg(64)->Arg(4096);

struct NullIrq final : hv::InterruptSink {
    uint64_t raised = 0;
    void raise(uint32_t, uint8_t) override { ++raised; }
};

struct SynicSink final : MessageSink {
    hv::Synic* synic;
    explicit SynicSink(hv::Synic& s) : synic(&s) {}
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        return synic->post_message(vp, sint, hv::kMessageTypeVmbus, m);
    }
    bool signal(uint32_t vp, uint32_t sint, uint32_t flag) override { return synic->signal_event(vp, sint, flag); }
};

// A partition with the VMBus server behind it, a connected guest, SynIC enabled on VP 0.
struct HvFixture {
    static constexpr uint64_t kSimp = 0x10000, kSiefp = 0x11000, kInput = 0x12000;
    std::vector<uint8_t> ram = std::vector<uint8_t>(1 << 20);
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    NullIrq irq;
    hv::Partition partition{mem, irq, hv::PartitionConfig{.num_vps = 1}};
    SynicSink sink{partition.synic()};
    Server server{sink, mem, 1};
    HvFixture() {
        enlighten::log::set_level(enlighten::log::Level::Off);
        partition.set_handlers(
            [this](uint32_t vp, uint32_t conn, uint32_t, std::span<const uint8_t> p) { return server.handle_message(vp, conn, p); },
            [this](uint32_t vp, uint32_t conn, uint16_t flag) { return server.handle_event(vp, conn, flag); });
        (void)partition.write_msr(0, hv::kMsrSimp, kSimp | 1);
        (void)partition.write_msr(0, hv::kMsrSiefp, kSiefp | 1);
        (void)partition.write_msr(0, hv::kMsrSint0 + 2, 0xf3);
        (void)partition.write_msr(0, hv::kMsrScontrol, 1);
        InitiateContact c{};
        c.header.msgtype = static_cast<uint32_t>(MsgType::InitiateContact);
        c.vmbus_version_requested = kVersionWin10V5_3;
        c.interrupt_page_or_sint = 2;
        post(std::span(reinterpret_cast<const uint8_t*>(&c), sizeof(c)));
        free_slot();
    }
    void post(std::span<const uint8_t> payload) {
        hv::HvInputPostMessage in{};
        in.connection_id = 4;
        in.message_type = 1;
        in.payload_size = static_cast<uint32_t>(payload.size());
        std::memcpy(in.payload, payload.data(), payload.size());
        std::memcpy(ram.data() + kInput, &in, sizeof(in));
        (void)partition.hypercall(0, hv::kHvcallPostMessage, kInput, 0);
    }
    // What the guest does after handling a message: free the slot (and EOM if pending).
    void free_slot() {
        auto* slot = ram.data() + kSimp + 2 * 256;
        const bool pending = slot[5] & 1;
        std::memset(slot, 0, 4);
        if (pending) (void)partition.write_msr(0, hv::kMsrEom, 0);
    }
};

// HvPostMessage from the hypercall exit to the reply in the guest's SynIC slot: decode,
// copy the input page, VMBus dispatch (REQUESTOFFERS with no devices: the reply is
// ALLOFFERS_DELIVERED), SynIC delivery and interrupt.
void BM_HvPostMessage(benchmark::State& state) {
    HvFixture f;
    MessageHeader req{static_cast<uint32_t>(MsgType::RequestOffers), 0};
    const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(&req), sizeof(req));
    hv::HvInputPostMessage in{};
    in.connection_id = 4;
    in.message_type = 1;
    in.payload_size = sizeof(req);
    std::memcpy(in.payload, bytes.data(), bytes.size());
    std::memcpy(f.ram.data() + HvFixture::kInput, &in, sizeof(in));
    for (auto _ : state) {
        benchmark::DoNotOptimize(f.partition.hypercall(0, hv::kHvcallPostMessage, HvFixture::kInput, 0));
        f.free_slot();  // the guest's part: a few stores (timed too; PauseTiming costs more)
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HvPostMessage);

struct SinkDevice final : Device {
    OfferParams params;
    uint64_t packets = 0;
    SinkDevice() {
        params.name = "sink";
        params.class_id = Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
        params.instance_id = Guid::parse("11111111-2222-3333-4444-555555555555");
    }
    const OfferParams& offer() const override { return params; }
    void on_open(ChannelEndpoint&) override {}
    void on_close() override {}
    void on_packet(const IncomingPacket&) override { ++packets; }
};

// HvSignalEvent from the hypercall exit to the device's on_packet for one 64-byte packet:
// decode, channel lookup, ring drain (mask, read, commit, unmask, re-check), dispatch.
void BM_HvSignalEvent(benchmark::State& state) {
    HvFixture f;
    auto dev = std::make_shared<SinkDevice>();
    const uint32_t relid = f.server.add_device(dev).value();
    MessageHeader req{static_cast<uint32_t>(MsgType::RequestOffers), 0};
    f.post(std::span(reinterpret_cast<const uint8_t*>(&req), sizeof(req)));
    while (f.partition.synic().queued(0, 2) || f.ram[HvFixture::kSimp + 512] != 0) f.free_slot();
    // A ring GPADL: 4 pages guest->host, 4 pages host->guest, at pages 0x40..0x47.
    std::vector<uint8_t> m(sizeof(GpadlHeader) + 8 * 8);
    GpadlHeader h{};
    h.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
    h.child_relid = relid;
    h.gpadl = 0x100;
    h.range_buflen = 8 + 8 * 8;
    h.rangecount = 1;
    h.byte_count = 8 * kPageSize;
    std::memcpy(m.data(), &h, sizeof(h));
    uint64_t pfns[8];
    for (uint64_t i = 0; i < 8; ++i) pfns[i] = 0x40 + i;
    std::memcpy(m.data() + sizeof(h), pfns, sizeof(pfns));
    f.post(m);
    f.free_slot();
    OpenChannel o{};
    o.header.msgtype = static_cast<uint32_t>(MsgType::OpenChannel);
    o.child_relid = relid;
    o.ringbuffer_gpadl = 0x100;
    o.downstream_ringbuffer_pageoffset = 4;
    f.post(std::span(reinterpret_cast<const uint8_t*>(&o), sizeof(o)));
    f.free_slot();
    const uint64_t param = kChannelConnectionBase + relid;
    uint8_t* hdr = f.ram.data() + 0x40 * kPageSize;
    uint8_t* data = hdr + kPageSize;
    const uint32_t len = 16 + 64;
    constexpr uint32_t kRingBytes = 3 * kPageSize;
    uint32_t w = 0;
    for (auto _ : state) {
        // The guest writes one packet (with wrap-around) and publishes its write index
        // (timed too: a 16-byte copy, much less than PauseTiming would cost).
        PacketDescriptor d{kPacketDataInband, 2, len / 8, 0, 1};
        const auto* db = reinterpret_cast<const uint8_t*>(&d);
        for (uint32_t i = 0; i < sizeof(d); ++i) data[(w + i) % kRingBytes] = db[i];
        w = (w + len + 8) % kRingBytes;
        std::memcpy(hdr, &w, 4);
        benchmark::DoNotOptimize(f.partition.hypercall(0, hv::kHvcallSignalEvent | (1ULL << 16), param, 0));
    }
    if (dev->packets != static_cast<uint64_t>(state.iterations())) state.SkipWithError("packets were lost");
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HvSignalEvent);

}  // namespace

BENCHMARK_MAIN();
