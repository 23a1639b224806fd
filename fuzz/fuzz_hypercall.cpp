// Fuzzes what a hostile guest controls on the Hyper-V interface: synthetic MSR writes
// (SynIC pages, SINTs, EOM, hypercall page, crash MSRs), hypercalls with arbitrary
// control words and inputs (HvPostMessage input pages, HvSignalEvent parameters), and the
// guest's own writes to its SynIC message page, with a VMBus server behind the ports.
#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "hv/partition.hpp"
#include "common/event_loop.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;

#include "common/log.hpp"

// Guest-triggered warnings are expected here by the thousand; keep the output readable.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

namespace {

constexpr uint64_t kRam = 64 * 1024;

struct NullIrq final : hv::InterruptSink {
    void raise(uint32_t, uint8_t) override {}
};

struct SynicSink final : vmbus::MessageSink {
    hv::Synic* synic = nullptr;
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        return synic->post_message(vp, sint, hv::kMessageTypeVmbus, m);
    }
    bool signal(uint32_t vp, uint32_t sint, uint32_t flag) override { return synic->signal_event(vp, sint, flag); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    std::vector<uint8_t> ram(kRam);
    GuestMemory mem = GuestMemory::borrow({{0, kRam, ram.data()}});
    NullIrq irq;
    hv::Partition partition(mem, irq, hv::PartitionConfig{.num_vps = 2, .tsc_hz = 1000000, .hypercall_port = 0x5c});
    SynicSink sink;
    sink.synic = &partition.synic();
    // The control loop the server hands work to; run between operations, as the VMM's is.
    auto loop = EventLoop::create().value();
    vmbus::Server server(sink, mem, 2, *loop, loop.get());
    partition.set_handlers(
        [&](uint32_t vp, uint32_t conn, uint32_t, std::span<const uint8_t> payload) {
            return server.handle_message(vp, conn, payload);
        },
        [&](uint32_t vp, uint32_t conn, uint16_t flag) { return server.handle_event(vp, conn, flag); });
    partition.on_crash = [](const hv::CrashReport&) {};

    while (!in.empty()) {
        const auto op = in.take<uint8_t>();
        const uint32_t vp = op & 1;
        switch ((op >> 1) % 5) {
            case 0: {  // MSR write in or near the synthetic range
                const uint32_t msr = hv::kMsrRangeFirst + (in.take<uint16_t>() % 0x200);
                (void)partition.write_msr(vp, msr, in.take<uint64_t>());
                break;
            }
            case 1: {
                const uint32_t msr = hv::kMsrRangeFirst + (in.take<uint16_t>() % 0x200);
                (void)partition.read_msr(vp, msr);
                break;
            }
            case 2: {  // the guest writes bytes into its RAM (input pages, message slots)
                const uint64_t gpa = in.take<uint16_t>();
                const auto bytes = in.take_bytes(300);
                (void)mem.write(gpa, bytes);
                break;
            }
            case 3: {  // a hypercall
                const auto control = in.take<uint64_t>();
                const auto input = in.take<uint64_t>();
                (void)partition.hypercall(vp, control, input, in.take<uint64_t>());
                break;
            }
            default: {  // a well-formed HvPostMessage with a fuzzed payload
                hv::HvInputPostMessage msg{};
                msg.connection_id = in.take<uint8_t>() & 0x7;
                msg.message_type = 1;
                const auto payload = in.take_bytes(hv::kMessagePayloadMax);
                msg.payload_size = static_cast<uint32_t>(payload.size());
                std::copy(payload.begin(), payload.end(), msg.payload);
                const uint64_t gpa = 0x8000;
                (void)mem.write_obj(gpa, msg);
                (void)partition.hypercall(vp, hv::kHvcallPostMessage, gpa, 0);
                break;
            }
        }
        while (loop->run_once(std::chrono::milliseconds(0))) {}
    }
    return 0;
}
