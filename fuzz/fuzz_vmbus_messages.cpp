// Fuzzes the VMBus server with sequences of guest-to-host channel-management messages, with
// a device offered whose open and close complete now or later (as the input says), so that
// GPADL, open/close in every state, reopen while closing, sub-channels, rescind, unload,
// held GPADL views and doorbell paths are reached.
#include <cstdint>
#include <cstring>
#include <map>
#include <vector>

#include "common/executor.hpp"
#include "common/log.hpp"
#include "fuzz_input.hpp"
#include "vmbus/queue.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;

// Guest-triggered warnings are expected here by the thousand; keep the output readable.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

namespace {

struct CountingSink final : vmbus::MessageSink {
    size_t sent = 0;
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        // What the SynIC would refuse must never be produced.
        if (vp >= 4 || sint >= 16 || m.size() > 240 || m.size() < 8) __builtin_trap();
        ++sent;
        return true;
    }
    bool signal(uint32_t vp, uint32_t sint, uint32_t) override { return vp < 4 && sint < 16; }
};

// Echoes packets; completes opens and closes at once or when told; holds GPADL views.
struct EchoDevice final : vmbus::Device {
    vmbus::OfferParams params;
    vmbus::ChannelControl* control = nullptr;
    std::map<uint16_t, std::shared_ptr<vmbus::ChannelQueue>> queues;
    std::vector<vmbus::OpenDone> opens;
    std::vector<vmbus::CloseDone> closes;
    std::vector<vmbus::GpadlView> views;
    bool defer = false;
    EchoDevice() {
        params.name = "echo";
        params.class_id = vmbus::Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
        params.instance_id = vmbus::Guid::parse("11111111-2222-3333-4444-555555555555");
    }
    const vmbus::OfferParams& offer() const override { return params; }
    uint16_t max_subchannels() const override { return 3; }
    void attach(const vmbus::DeviceResources& r) override { control = r.control; }
    void detach() override { control = nullptr; }
    void open(const vmbus::OpenRequest& req, std::shared_ptr<vmbus::ChannelQueue> q, vmbus::OpenDone done) override {
        queues[req.index] = std::move(q);
        if (defer) opens.push_back(std::move(done));
        else done({});
    }
    void close(uint16_t index, vmbus::CloseDone done) override {
        queues.erase(index);
        if (defer) closes.push_back(std::move(done));
        else done();
    }
    void drain() {
        for (auto& [index, q] : queues) {
            for (int i = 0; i < 64; ++i) {
                auto p = q->peek();
                if (!p || !*p) break;
                const auto payload = (*p)->payload.first(std::min<size_t>((*p)->payload.size(), 64));
                const iovec iov = iov_of(payload);
                (void)q->send(vmbus::OutPacket::completion((*p)->trans_id, std::span(&iov, 1)));
                q->consume();
            }
            q->arm();
        }
    }
    void finish() {
        for (auto& d : std::exchange(opens, {})) d({});
        for (auto& d : std::exchange(closes, {})) d();
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    CountingSink sink;
    ManualExecutor exec;
    // 64 pages of guest RAM whose contents the input also controls (rings live here).
    std::vector<uint8_t> ram(64 * 4096);
    const auto init = in.take_bytes(in.take<uint16_t>() % 8192U);
    std::memcpy(ram.data(), init.data(), init.size());
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    auto dev = std::make_shared<EchoDevice>();
    {
        vmbus::Server server(sink, mem, 4, exec);
        const auto relid = server.add_device(dev);
        if (!relid) __builtin_trap();
        exec.run_all();
        while (!in.empty()) {
            const uint32_t vp = in.take<uint8_t>() % 4U;
            const uint8_t op = in.take<uint8_t>();
            const size_t len = in.take<uint8_t>() % 241U;
            const auto bytes = in.take_bytes(len);
            std::vector<uint8_t> msg(bytes.begin(), bytes.end());
            // Bias the message type towards the real ones.
            if (msg.size() >= 4) msg[0] = static_cast<uint8_t>(msg[0] % 26U);
            switch (op % 10) {
                case 0: (void)server.handle_event(vp, vmbus::kChannelConnectionBase + (op >> 4), 0); break;
                case 1: (void)server.rescind(*relid); break;
                case 2: dev->defer = !dev->defer; break;
                case 3: dev->finish(); break;
                case 4:
                    if (dev->control) (void)dev->control->enable_subchannels(op >> 6);
                    break;
                case 5:
                    if (dev->control && msg.size() >= 4) {
                        uint32_t h;
                        std::memcpy(&h, msg.data(), 4);
                        if (auto v = dev->control->gpadl(h)) dev->views.push_back(*v);
                    }
                    break;
                case 6: dev->views.clear(); break;
                default: (void)server.handle_message(vp, 1 + (op >> 7) * 3, msg); break;
            }
            dev->drain();
            exec.run_all(1000);
        }
        // An orderly stop: every channel closes, then the devices are detached.
        bool done = false;
        server.shutdown([&] { done = true; });
        exec.run_all(1000);
        dev->finish();
        dev->views.clear();
        exec.run_all(1000);
        if (!done) __builtin_trap();
    }
    return 0;
}
