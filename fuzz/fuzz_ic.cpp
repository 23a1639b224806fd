// Fuzzes the integration services (file copy too, with its two requests in flight) through
// the whole path a guest drives: packets written into the channels' rings (any type, length and transaction id, answers to nothing or to
// the host's requests), doorbells, closes and reopens, with the services on the real
// control loop. Also the UTF-16 decoder and the negotiation parser directly.
#include <cstdint>
#include <cstring>
#include <vector>

#define ENL_SIM_CHECK(cond) \
    do {                    \
        if (!(cond)) __builtin_trap(); \
    } while (0)
#include "../tests/unit/support/sim_guest.hpp"

#include "common/log.hpp"
#include "devices/ic/fcopy.hpp"
#include "devices/ic/services.hpp"
#include "devices/ic/vss.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    (void)ic::KvpService::decode_utf16(in.take_bytes(in.take<uint16_t>() % 4096U));
    (void)ic::IcDevice::parse_negotiate_response(in.take_bytes(in.take<uint8_t>()));

    test::SimGuest g(1, 512);
    std::vector<std::shared_ptr<vmbus::Device>> devices = {
        std::make_shared<ic::HeartbeatService>("11111111-0000-0000-0000-000000000001", std::chrono::milliseconds(1000)),
        std::make_shared<ic::KvpService>("11111111-0000-0000-0000-000000000004"),
        std::make_shared<ic::ShutdownService>("11111111-0000-0000-0000-000000000002"),
        std::make_shared<ic::TimeSyncService>("11111111-0000-0000-0000-000000000003"),
        std::make_shared<ic::FcopyService>("11111111-0000-0000-0000-000000000006"),
        std::make_shared<ic::VssService>("11111111-0000-0000-0000-000000000007"),
    };
    std::vector<uint32_t> relids;
    for (auto& d : devices) relids.push_back(g.server().add_device(d).value());
    g.connect();
    std::vector<test::SimChannel> channels;
    for (uint32_t r : relids) channels.push_back(g.open_channel(r, 4, 4));
    g.pump();
    // The KVP service keeps a request in flight for the guest to answer (or not).
    auto kvp = std::static_pointer_cast<ic::KvpService>(devices[1]);
    kvp->transact(std::vector<uint8_t>(sizeof(ic::KvpMessage)), std::chrono::milliseconds(100000), [](auto) {});
    // File copy keeps two in flight (a WRITE-sized one and a START-sized one) and one waiting.
    auto fcopy = std::static_pointer_cast<ic::FcopyService>(devices[4]);
    for (const size_t body : {ic::fcopy_write_ring_bytes(ic::kFcopyChunk) - 52, sizeof(ic::FcopyStart), size_t{36}})
        fcopy->transact(std::vector<uint8_t>(body), std::chrono::milliseconds(100000), [](auto) {});
    // VSS keeps a FREEZE in flight; its answer goes through the parser a checkpoint uses.
    auto vss = std::static_pointer_cast<ic::VssService>(devices[5]);
    vss->transact(std::vector<uint8_t>{ic::kVssFreeze, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, std::chrono::milliseconds(100000),
                  [](Result<ic::IcResponse> r) {
                      if (r) (void)ic::vss_answer_status(*r);
                  });
    while (!in.empty()) {
        const uint8_t which = static_cast<uint8_t>(in.take<uint8_t>() % devices.size());
        const uint8_t op = in.take<uint8_t>();
        auto& ch = channels[which];
        if (op == 0xff) {
            // Close and reopen, as a driver rebind does (every ring teardown must be answered).
            ENL_SIM_CHECK(g.reopen_channel(ch));
            continue;
        }
        // Something for the host to answer: the last request it sent, or none.
        uint64_t trans = in.take<uint8_t>() % 4U;
        std::vector<uint8_t> payload;
        if (auto host = ch.to_guest.read(); host && (op & 1)) {
            trans = host->desc.trans_id;
            payload = host->payload;
        }
        const auto bytes = in.take_bytes(in.take<uint16_t>() % 5000U);
        // Overwrite the start of a genuine request (or send bytes of its own).
        if (payload.size() < bytes.size()) payload.resize(bytes.size());
        if (!bytes.empty()) std::memcpy(payload.data(), bytes.data(), bytes.size());  // no memcpy from null
        if (op & 2 && payload.size() >= ic::kIcHeaderSize) payload[sizeof(ic::PipeHeader) + 17] = ic::kIcFlagResponse;
        const uint16_t type = static_cast<uint16_t>((op >> 2) % 13U);
        (void)g.send(ch, type, trans, payload, {}, true);
        g.pump();
    }
    return 0;
}
