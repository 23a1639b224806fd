// Fuzzes the VMBus server with sequences of guest-to-host channel-management messages.
#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "vmbus/server.hpp"

using namespace enlighten;

#include <spdlog/spdlog.h>

// Guest-triggered warnings are expected here by the thousand; keep the output readable.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    spdlog::set_level(spdlog::level::off);
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

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    CountingSink sink;
    vmbus::Server server(sink, 4);
    while (!in.empty()) {
        const uint32_t vp = in.take<uint8_t>() % 4U;
        const uint32_t conn = in.take<uint8_t>() % 6U;
        const size_t len = in.take<uint8_t>() % 241U;
        // Bias the message type towards the real ones.
        const auto bytes = in.take_bytes(len);
        std::vector<uint8_t> msg(bytes.begin(), bytes.end());
        if (msg.size() >= 4) msg[0] = static_cast<uint8_t>(msg[0] % 26U);
        (void)server.handle_message(vp, conn, msg);
    }
    return 0;
}
