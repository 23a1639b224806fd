// Fuzzes the VM console's guest-facing side (contract-input-video §2.4, §3.5, §4.9): the
// synthvid message parser on raw bytes, and the synthetic video, keyboard and mouse devices
// through the whole path a guest drives (packets of any type and length written into their
// rings, closes and reopens), with messages built as hyperv_fb builds them and then mutated
// so that the fuzzer reaches the VRAM and mode checks, and host-side screenshots, key events
// and pointer reports in between. It checks what the host promises:
//   - a parsed message never claims more rectangles or outputs than its bytes held;
//   - a screenshot is exactly the mode's size, and there is a mode only with a VRAM whose
//     every byte the mode covers is guest memory;
//   - every host packet fits the guest's 4096-byte max_pkt_size.
#include <cstdint>
#include <cstring>
#include <vector>

#define ENL_SIM_CHECK(cond)            \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)
#include "../tests/unit/support/sim_guest.hpp"

#include "common/log.hpp"
#include "devices/input/keyboard.hpp"
#include "devices/input/mouse.hpp"
#include "devices/video/message.hpp"
#include "devices/video/video.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

namespace {

constexpr uint64_t kRamPages = 2048;  // 8 MiB of guest RAM

// A message as hyperv_fb's synthvid_send builds it, with a fuzzer-chosen type and body.
std::vector<uint8_t> synthvid(uint32_t type, std::span<const uint8_t> body) {
    ByteWriter w;
    const auto size = static_cast<uint32_t>(8 + body.size());
    w.put(video::PipeHeader{1, size}).put(video::MsgHeader{type, size}).bytes(body);
    return w.take();
}

void check_parse(std::span<const uint8_t> bytes) {
    auto m = video::parse_guest_message(bytes);
    if (!m) return;
    if (auto* d = std::get_if<video::Dirt>(&*m)) CHECK(16 + 2 + d->rects.size() * 16 <= bytes.size());
    if (auto* s = std::get_if<video::SituationUpdate>(&*m))
        CHECK(!s->output0 || 16 + 9 + size_t{s->output_count} * 18 <= bytes.size());
}

void drain_host_packets(test::SimChannel& ch) {
    while (auto p = ch.to_guest.read()) CHECK(p->desc.len8 * 8U <= 4096U);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    check_parse(in.take_bytes(in.take<uint16_t>() % 512U));

    test::SimGuest g(1, kRamPages);
    // A small mode keeps the VRAM (4 MiB, the minimum) inside the 8 MiB of RAM.
    auto vdev = std::make_shared<video::VideoDevice>(video::VideoConfig{"11111111-0000-0000-0000-0000000000a1", 640, 480});
    auto kdev = std::make_shared<input::KeyboardDevice>("11111111-0000-0000-0000-0000000000a2");
    auto mdev = std::make_shared<input::MouseDevice>("11111111-0000-0000-0000-0000000000a3");
    const uint32_t relids[3] = {g.server().add_device(vdev).value(), g.server().add_device(kdev).value(),
                                g.server().add_device(mdev).value()};
    g.connect();
    test::SimChannel channels[3];
    for (int i = 0; i < 3; ++i) channels[i] = g.open_channel(relids[i], 4, 4);
    g.pump();

    int captures = 0;
    while (!in.empty()) {
        const uint8_t op = in.take<uint8_t>();
        const int which = op % 3;
        auto& ch = channels[which];
        switch ((op >> 2) % 8) {
            case 0:  // close and reopen, as a driver rebind or resume does (the teardown answered)
                CHECK(g.reopen_channel(ch));
                break;
            case 1: {  // raw bytes as a packet of any type
                const uint16_t type = in.take<uint8_t>() % 2 ? vmbus::kPacketDataInband : in.take<uint16_t>();
                const auto bytes = in.take_bytes(in.take<uint16_t>() % 600U);
                (void)g.send(ch, type, 1, bytes, {}, true);
                break;
            }
            case 2:
            case 3: {  // a synthvid message with a chosen type and body (VRAM location, situation, DIRT...)
                const uint32_t type = in.take<uint8_t>() % 16U;
                std::vector<uint8_t> body(in.take<uint8_t>());
                const auto src = in.take_bytes(body.size());
                if (!src.empty()) std::memcpy(body.data(), src.data(), src.size());
                // Often a GPA inside RAM and a plausible mode, so the checks behind are reached.
                if (type == 3 && body.size() >= 17 && (op & 0x80)) {
                    const uint64_t gpa = (in.take<uint16_t>() % kRamPages) * 4096ULL;
                    std::memcpy(body.data(), &gpa, 8);
                    body[8] = 1;
                    std::memcpy(body.data() + 9, &gpa, 8);
                }
                (void)g.send(channels[0], vmbus::kPacketDataInband, 1, synthvid(type, body), {}, true);
                break;
            }
            case 4: {  // the host takes a screenshot (the first few times: a capture converts every pixel)
                const auto f = captures++ < 3 ? vdev->capture() : fail("not taken");
                const auto st = vdev->status();
                if (f) {
                    CHECK(st.mode && st.vram_gpa);
                    CHECK(f->rgb.size() == size_t{f->width} * f->height * 3);
                    CHECK(uint64_t{st.mode->vram_offset} + uint64_t{st.mode->pitch} * (st.mode->height - 1) +
                              uint64_t{st.mode->width} * 4 <= st.vram_bytes);
                    CHECK(g.memory().contains(*st.vram_gpa, st.vram_bytes));
                }
                (void)vdev->take_dirty();
                break;
            }
            case 5: {  // the host types
                const input::KeyEvent ev{static_cast<uint8_t>(in.take<uint8_t>() & 0x7f), (op & 0x20) != 0, false,
                                         (op & 0x40) != 0};
                (void)kdev->type(std::span(&ev, 1));
                break;
            }
            case 6: {  // the host moves the pointer
                (void)mdev->move({in.take<uint16_t>(), in.take<uint16_t>(), in.take<uint8_t>(), in.take<int16_t>()});
                vdev->set_dirt_needed((op & 0x20) != 0);
                break;
            }
            case 7: {  // the guest reads what the host sent, and rings
                drain_host_packets(ch);
                g.doorbell(ch);
                break;
            }
        }
        g.pump();
    }
    for (auto& ch : channels) drain_host_packets(ch);
    return 0;
}
