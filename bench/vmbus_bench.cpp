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
#include "common/executor.hpp"
#include "vmbus/queue.hpp"
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
    const iovec iov = iov_of(payload);
    uint64_t id = 0;
    for (auto _ : state) {
        auto r = out.write(OutPacket::completion(++id, std::span(&iov, 1)), false);
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
    std::vector<uint64_t> buf;
    PacketScratch scratch;
    f.set(kRingWriteIndex, count * (len + 8));
    for (auto _ : state) {
        auto pkt = in.peek(buf, 65536);
        if (!pkt || !*pkt) {
            // Ring drained: the "guest" rewinds (a fresh ring) and refills.
            state.PauseTiming();
            in = InRing(RingMemory::map(f.mem, f.pfns).value());
            f.set(kRingReadIndex, 0);
            f.set(kRingWriteIndex, count * (len + 8));
            state.ResumeTiming();
            continue;
        }
        auto view = parse_packet(std::span<const uint64_t>(buf.data(), (*pkt)->len / 8), scratch);
        benchmark::DoNotOptimize(view);
        in.skip((*pkt)->len);
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
    ManualExecutor exec;
    Server server{sink, mem, 1, exec};
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

struct NullDevice final : Device {
    OfferParams params;
    NullDevice() {
        params.name = "null";
        params.class_id = Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
        params.instance_id = Guid::parse("11111111-2222-3333-4444-555555555555");
    }
    const OfferParams& offer() const override { return params; }
    void attach(const DeviceResources&) override {}
    void open(const OpenRequest&, std::shared_ptr<ChannelQueue>, OpenDone done) override { done({}); }
    void close(uint16_t, CloseDone done) override { done(); }
};

// HvSignalEvent on the hypercall exit path, as the vCPU pays it: decode, the channel's
// doorbell lookup, and the eventfd write that wakes the channel's worker. (The hypercall
// page's fast path skips even this: KVM signals the eventfd itself; bench/doorbell_bench.cpp
// measures both with a real guest, up to the worker waking.)
void BM_HvSignalEvent(benchmark::State& state) {
    HvFixture f;
    const uint32_t relid = f.server.add_device(std::make_shared<NullDevice>()).value();
    const uint64_t param = kChannelConnectionBase + relid;
    for (auto _ : state)
        benchmark::DoNotOptimize(f.partition.hypercall(0, hv::kHvcallSignalEvent | (1ULL << 16), param, 0));
    if (f.server.stats().doorbells != static_cast<uint64_t>(state.iterations())) state.SkipWithError("doorbells were lost");
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HvSignalEvent);

}  // namespace

BENCHMARK_MAIN();
