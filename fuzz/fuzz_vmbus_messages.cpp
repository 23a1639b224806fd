// Fuzzes the VMBus server with sequences of guest-to-host channel-management messages,
// with a device offered so that GPADL, open, close, rescind and doorbell paths are reached.
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_input.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;

#include "common/log.hpp"

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
}  // namespace

namespace {
struct EchoDevice final : vmbus::Device {
    vmbus::OfferParams params;
    vmbus::ChannelEndpoint* ep = nullptr;
    EchoDevice() {
        params.name = "echo";
        params.class_id = vmbus::Guid::parse("57164f39-9115-4e78-ab55-382f3bd5422d");
        params.instance_id = vmbus::Guid::parse("11111111-2222-3333-4444-555555555555");
    }
    const vmbus::OfferParams& offer() const override { return params; }
    void on_open(vmbus::ChannelEndpoint& e) override { ep = &e; }
    void on_close() override { ep = nullptr; }
    void on_packet(const vmbus::IncomingPacket& p) override {
        if (ep) (void)ep->send(vmbus::kPacketCompletion, 0, p.trans_id, p.payload.first(std::min<size_t>(p.payload.size(), 64)));
    }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    CountingSink sink;
    // 64 pages of guest RAM whose contents the input also controls (rings live here).
    std::vector<uint8_t> ram(64 * 4096);
    const auto init = in.take_bytes(in.take<uint16_t>() % 8192U);
    std::memcpy(ram.data(), init.data(), init.size());
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    vmbus::Server server(sink, mem, 4);
    const auto relid = server.add_device(std::make_shared<EchoDevice>());
    if (!relid) __builtin_trap();
    while (!in.empty()) {
        const uint32_t vp = in.take<uint8_t>() % 4U;
        const uint32_t conn = in.take<uint8_t>() % 6U;
        const size_t len = in.take<uint8_t>() % 241U;
        // Bias the message type towards the real ones.
        const auto bytes = in.take_bytes(len);
        std::vector<uint8_t> msg(bytes.begin(), bytes.end());
        if (msg.size() >= 4) msg[0] = static_cast<uint8_t>(msg[0] % 26U);
        if (conn == 5) {
            (void)server.handle_event(vp, vmbus::kChannelConnectionBase + *relid, 0);  // doorbell
        } else if (conn == 0 && (msg.size() & 1)) {
            (void)server.rescind(*relid);
        } else {
            (void)server.handle_message(vp, conn, msg);
        }
    }
    return 0;
}
