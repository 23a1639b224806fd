// Fuzzes the Dynamic Memory VSP's guest-facing side: the message parser on raw bytes, and
// the protocol engine driven by any mix of guest messages (raw, or built around the host's
// requests so that they reach deep states) and host operations, against a fake guest RAM
// that checks the engine's promises (contract-memory §9):
//   - it discards only pages inside guest RAM, and never a page twice without giving it
//     back in between (so never memory it did not balloon);
//   - it unballoons only pages it discarded;
//   - its ballooned count is exactly the discarded pages;
//   - every host message fits the guest's 4096-byte receive buffer.
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "common/log.hpp"
#include "devices/balloon/engine.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::balloon;

namespace {

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

constexpr uint64_t kMiB = 1ULL << 20;
constexpr uint64_t kRamPages = 64 * kMiB / kPageSize;   // [0, 64 MiB)
constexpr uint64_t kWindowGpa = 4ULL << 30;             // hot-add window: 4 GiB + 512 MiB
constexpr uint64_t kWindowSize = 512 * kMiB;

class CheckedRam final : public RamControl {
public:
    std::vector<GpaWindow> ram_ranges() const override {
        std::vector<GpaWindow> v{{0, kRamPages * kPageSize}};
        v.insert(v.end(), added.begin(), added.end());
        return v;
    }
    GpaWindow hot_add_window() const override { return {kWindowGpa, kWindowSize}; }
    Result<> hot_add(uint64_t gpa, uint64_t size) override {
        CHECK(gpa % (128 * kMiB) == 0 && size % (128 * kMiB) == 0 && size > 0);
        CHECK((GpaWindow{kWindowGpa, kWindowSize}.contains(gpa, size)));
        for (const auto& a : added) CHECK(gpa >= a.end() || gpa + size <= a.gpa);
        added.push_back({gpa, size});
        return {};
    }
    Result<> discard(uint64_t gpa, uint64_t size) override {
        CHECK(gpa % kPageSize == 0 && size % kPageSize == 0 && size > 0);
        bool inside = false;
        for (const auto& r : ram_ranges()) inside |= r.contains(gpa, size);
        CHECK(inside);
        for (uint64_t p = gpa / kPageSize; p < (gpa + size) / kPageSize; ++p) CHECK(discarded.insert(p).second);
        return {};
    }
    std::vector<GpaWindow> added;
    std::set<uint64_t> discarded;
};

// Checks the host's messages and takes unballooned pages out of the discarded set.
void drain(DmEngine& e, CheckedRam& ram) {
    for (const auto& m : e.take_outbox()) {
        CHECK(m.size() >= sizeof(DmHeader) && m.size() <= kMaxHostMessage);
        const auto hdr = read_prefix<DmHeader>(m).value();
        CHECK(hdr.size == m.size());
        if (hdr.type != static_cast<uint16_t>(MsgType::UnballoonRequest)) continue;
        const auto req = read_prefix<DmUnballoonRequest>(m).value();
        CHECK(req.range_count <= kMaxRangesPerMessage && 16 + 8 * size_t{req.range_count} == m.size());
        for (uint32_t i = 0; i < req.range_count; ++i) {
            uint64_t v;
            std::memcpy(&v, m.data() + 16 + 8 * i, 8);
            const PageRange r = decode_range(v);
            CHECK(r.count > 0);
            for (uint64_t p = r.start; p < r.end(); ++p) CHECK(ram.discarded.erase(p) == 1);
        }
    }
    CHECK(e.ballooned_pages() == ram.discarded.size());
}

std::vector<uint8_t> header_msg(uint16_t type, std::span<const uint8_t> body, uint16_t size_delta) {
    std::vector<uint8_t> m(8 + body.size());
    const DmHeader h{type, static_cast<uint16_t>(m.size() + size_delta), 0};
    std::memcpy(m.data(), &h, 8);
    if (!body.empty()) std::memcpy(m.data() + 8, body.data(), body.size());
    return m;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::set_level(log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    // The parser alone, on raw bytes.
    (void)parse_guest_message(in.take_bytes(in.take<uint16_t>() % 4200U));

    CheckedRam ram;
    DmEngine e;
    e.attach(&ram, in.take<uint32_t>());
    e.open();
    DmEngine::Clock::time_point now{};
    for (int steps = 0; !in.empty() && steps < 256; ++steps) {
        const uint8_t op = in.take<uint8_t>() % 10U;
        switch (op) {
            case 0: {  // raw guest bytes
                (void)e.on_message(in.take_bytes(in.take<uint16_t>() % 4200U), now);
                break;
            }
            case 1: {  // a well-framed message of any type with a fuzzed body
                const uint16_t type = in.take<uint8_t>() % 16U;
                const auto body = in.take_bytes(in.take<uint16_t>() % 4100U);
                e.on_message(header_msg(type, body, in.take<uint8_t>() % 2U), now);
                break;
            }
            case 2: e.on_message(header_msg(1, std::vector<uint8_t>{0, 0, 2, 0, 0, 0, 0, 0}, 0), now); break;
            case 3: {
                std::vector<uint8_t> caps(24);
                caps[0] = in.take<uint8_t>();
                e.on_message(header_msg(3, caps, 0), now);
                break;
            }
            case 4: (void)e.balloon(in.take<uint16_t>() % 8192U, now); break;
            case 5: (void)e.unballoon(in.take<uint16_t>(), now); break;
            case 6: (void)e.hot_add(in.take<uint32_t>() % 200000U, now); break;
            case 7: {  // a balloon response with ranges near RAM (some inside, some not)
                const uint32_t n = in.take<uint8_t>() % 12U;
                std::vector<uint8_t> body(8 + 8 * n);
                const uint32_t more = (n << 1) | (in.take<uint8_t>() & 1U);
                std::memcpy(body.data() + 4, &more, 4);
                for (uint32_t i = 0; i < n; ++i) {
                    const uint64_t base = in.take<uint8_t>() & 1 ? (kWindowGpa >> 12) : 0;
                    const PageRange r{base + in.take<uint16_t>() % (kRamPages + 64), in.take<uint16_t>() % 1100U};
                    const uint64_t v = encode_range(r);
                    std::memcpy(body.data() + 8 + 8 * i, &v, 8);
                }
                e.on_message(header_msg(7, body, 0), now);
                break;
            }
            case 8: {  // a hot-add response
                std::vector<uint8_t> body(8);
                const uint32_t pages = in.take<uint32_t>() % 300000U, result = in.take<uint8_t>() % 3U;
                std::memcpy(body.data(), &pages, 4);
                std::memcpy(body.data() + 4, &result, 4);
                e.on_message(header_msg(11, body, 0), now);
                break;
            }
            case 9: {
                now += std::chrono::seconds(in.take<uint16_t>());
                e.tick(now);
                if (in.take<uint8_t>() == 0xff) {
                    e.close();
                    e.open();
                    ram.discarded.clear();  // a reopened driver's old balloon is gone for good
                }
                break;
            }
        }
        drain(e, ram);
        CHECK(e.hot_added_pages() <= kWindowSize / kPageSize);
    }
    return 0;
}
