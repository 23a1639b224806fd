// Fuzzes the integration services' parsing of guest packets: negotiation responses,
// heartbeat/shutdown/KVP responses (with hostile sizes), and the UTF-16 decoder.
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/log.hpp"

#include "devices/ic/services.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;

namespace {
struct NullEndpoint final : vmbus::ChannelEndpoint {
    const GuestMemory* mem = nullptr;
    Result<SendStatus> send(uint16_t, uint16_t, uint64_t, std::span<const uint8_t>) override { return SendStatus::Sent; }
    const GuestMemory& memory() const override { return *mem; }
};
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    (void)ic::KvpService::decode_utf16(in.take_bytes(in.take<uint16_t>() % 4096U));
    (void)ic::IcDevice::parse_negotiate_response(in.take_bytes(in.take<uint8_t>()));
    TaskLoop loop;
    auto hb = std::make_shared<ic::HeartbeatService>("11111111-0000-0000-0000-000000000001", loop,
                                                      std::chrono::milliseconds(1000));
    auto kvp = std::make_shared<ic::KvpService>("11111111-0000-0000-0000-000000000004", loop);
    NullEndpoint ep;
    hb->on_open(ep);
    kvp->on_open(ep);
    // Packets "from the guest": the first trans ids are the negotiations (1 for each).
    while (!in.empty()) {
        const auto which = in.take<uint8_t>();
        const auto type = in.take<uint8_t>() % 13U;
        const auto trans = in.take<uint8_t>() % 4U;
        const auto payload = in.take_bytes(in.take<uint16_t>() % 5000U);
        vmbus::IncomingPacket p{static_cast<uint16_t>(type), 0, trans, {}, payload};
        if (which & 1) hb->on_packet(p);
        else kvp->on_packet(p);
    }
    hb->on_close();
    kvp->on_close();
    loop.stop();
    return 0;
}
