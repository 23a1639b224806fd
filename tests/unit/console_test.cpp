// The VM console's devices: the synthetic video (wire layouts from Linux 6.1 hyperv_fb.c, the
// parser against hostile messages, the device through a real VMBus server with a simulated
// guest that speaks like hyperv_fb, screenshots as PNG), the synthetic keyboard (hyperv-keyboard.c
// and the set-1 key map) and the synthetic mouse (hid-hyperv.c), each against a hostile guest
// too (contract-input-video §2.4, §3.5, §4.9).
#include <gtest/gtest.h>
#include <png.h>

#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <tuple>

#include "backends/vnc/vnc.hpp"
#include "devices/input/keyboard.hpp"
#include "devices/input/keymap.hpp"
#include "devices/input/mouse.hpp"
#include "devices/input/protocol.hpp"
#include "devices/video/message.hpp"
#include "devices/video/png.hpp"
#include "devices/video/video.hpp"
#include "kvm/ram_control.hpp"
#include "support/sim_guest.hpp"

using namespace enlighten;
using enlighten::test::SimChannel;
using enlighten::test::SimGuest;

namespace {

constexpr uint64_t kMiB = 1ULL << 20;

// One of the console's devices on a simulated guest: offered, the channel open with
// `pages` data pages each way, what the host sent taken as it comes.
template <typename Device>
class DeviceGuest {
public:
    DeviceGuest(std::shared_ptr<Device> device, uint32_t pages, uint64_t ram_pages = 4096, RamControl* ram = nullptr)
        : g(1, ram_pages), dev(std::move(device)) {
        if (ram) g.server().set_ram_control(ram);
        relid = g.server().add_device(dev).value();
        g.connect();
        for (const auto& o : SimGuest::offers(g.sink().take()))
            if (o.child_relid == relid) offer_mmio = o.mmio_megabytes;
        ch = g.open_channel(relid, pages, pages);
        g.sink().take();
    }
    void send(std::span<const uint8_t> m, uint16_t type = vmbus::kPacketDataInband) {
        EXPECT_TRUE(g.send(ch, type, ++trans, m, {}, true));
        g.pump();
    }
    void send(const std::vector<uint8_t>& m) { send(std::span<const uint8_t>(m)); }
    std::vector<std::vector<uint8_t>> received() {
        std::vector<std::vector<uint8_t>> out;
        while (auto p = ch.to_guest.read()) out.push_back(p->payload);
        return out;
    }
    SimGuest g;
    std::shared_ptr<Device> dev;
    uint32_t relid = 0;
    uint16_t offer_mmio = 0;
    SimChannel ch;
    uint64_t trans = 0;
};

// ---- synthvid as hyperv_fb sends it (synthvid_send: pipe size = vid size = 8 + body) ----

std::vector<uint8_t> vid(video::MsgType type, std::span<const uint8_t> body) {
    ByteWriter w;
    const auto size = static_cast<uint32_t>(8 + body.size());
    w.put(video::PipeHeader{1, size}).put(video::MsgHeader{static_cast<uint32_t>(type), size}).bytes(body);
    return w.take();
}
std::vector<uint8_t> vid(video::MsgType type, const std::vector<uint8_t>& body) {
    return vid(type, std::span<const uint8_t>(body));
}
template <typename T>
std::vector<uint8_t> vid(video::MsgType type, const T& body) {
    return vid(type, as_bytes(body));
}
std::vector<uint8_t> situation(uint32_t w, uint32_t h, uint32_t pitch, uint8_t depth = 32, uint32_t offset = 0,
                               uint8_t active = 1) {
    ByteWriter b;
    b.put(video::SituationUpdateBody{0, 1}).put(video::OutputSituation{active, offset, depth, w, h, pitch});
    return vid(video::MsgType::SituationUpdate, b.view());
}
std::vector<uint8_t> dirt(std::initializer_list<video::WireRect> rects, uint8_t count_override = 0) {
    ByteWriter b;
    b.put(video::DirtBody{0, count_override ? count_override : static_cast<uint8_t>(rects.size())});
    for (const auto& r : rects) b.put(r);
    return vid(video::MsgType::Dirt, b.view());
}

template <typename T>
T body_of(const std::vector<uint8_t>& payload) {
    return read_prefix<T>(std::span(payload).subspan(video::kHeadersSize)).value();
}
uint32_t vid_type(const std::vector<uint8_t>& payload) {
    return read_prefix<video::MsgHeader>(std::span(payload).subspan(8)).value().type;
}

}  // namespace

// ---- synthvid wire and parser ----------------------------------------------------------

TEST(Synthvid, WireLayoutsMatchHypervFb) {
    // Offsets within the message (contract-input-video §4.2): vram_gpa at 25, the first
    // output's pitch at 39, the resolution list at 147.
    EXPECT_EQ(video::kHeadersSize + offsetof(video::VramLocationBody, vram_gpa), 25U);
    EXPECT_EQ(video::kHeadersSize + sizeof(video::SituationUpdateBody) + offsetof(video::OutputSituation, pitch), 39U);
    EXPECT_EQ(video::kHeadersSize + sizeof(video::ResolutionResponseBody), 147U);
    const auto resp = video::make_version_response(video::kVersionWin10, true);
    ASSERT_EQ(resp.size(), 22U);
    EXPECT_EQ(resp, (std::vector<uint8_t>{1, 0, 0, 0, 14, 0, 0, 0, 2, 0, 0, 0, 14, 0, 0, 0, 3, 0, 5, 0, 1, 1}));
    EXPECT_EQ(video::make_vram_location_ack(0x1234).size(), 24U);
    EXPECT_EQ(uint64_t{body_of<video::VramLocationAckBody>(video::make_vram_location_ack(0x1234)).user_ctx}, 0x1234U);
    const auto fc = video::make_feature_change(true, false, false, false);
    ASSERT_EQ(fc.size(), 20U);
    EXPECT_EQ(vid_type(fc), 9U);
    EXPECT_EQ(fc[16], 1);
}

TEST(Synthvid, ResolutionResponseIsBoundedByTheGuestsMaximumAnd64) {
    std::vector<video::ScreenSize> sizes(70, {800, 600});
    sizes[0] = {1024, 768};
    auto r = video::make_resolution_response(sizes, 64);
    ASSERT_EQ(r.size(), 16U + 131 + 64 * 4);
    const auto body = body_of<video::ResolutionResponseBody>(r);
    EXPECT_EQ(body.resolution_count, 64);
    EXPECT_EQ(body.default_resolution_index, 0);
    EXPECT_EQ(read_prefix<video::ScreenSize>(std::span(r).subspan(147))->width, 1024);
    EXPECT_EQ(body_of<video::ResolutionResponseBody>(video::make_resolution_response(sizes, 2)).resolution_count, 2);
    EXPECT_EQ(body_of<video::ResolutionResponseBody>(video::make_resolution_response(sizes, 0)).resolution_count, 0);
    EXPECT_LE(r.size() + 16, 4096U);  // within the guest's max_pkt_size with the descriptor
}

TEST(Synthvid, ParsesWhatHypervFbSends) {
    auto v = video::parse_guest_message(vid(video::MsgType::VersionRequest, video::VersionRequestBody{0x00050003}));
    ASSERT_TRUE(v);
    EXPECT_EQ(std::get<video::VersionRequest>(*v).version, 0x00050003U);
    auto loc = video::parse_guest_message(
        vid(video::MsgType::VramLocation, video::VramLocationBody{0x2000000, 1, 0x2000000}));
    ASSERT_TRUE(loc);
    EXPECT_EQ(std::get<video::VramLocation>(*loc).gpa, 0x2000000U);
    EXPECT_TRUE(std::get<video::VramLocation>(*loc).specified);
    auto s = video::parse_guest_message(situation(1024, 768, 4096));
    ASSERT_TRUE(s);
    EXPECT_EQ(std::get<video::SituationUpdate>(*s).output0, (video::OutputMode{true, 0, 32, 1024, 768, 4096}));
    auto d = video::parse_guest_message(dirt({{0, 16, 1024, 32}}));
    ASSERT_TRUE(d);
    EXPECT_EQ(std::get<video::Dirt>(*d).rects, (std::vector<video::Rect>{{0, 16, 1024, 32}}));
    // synthvid_send_ptr: position, then a 1x1 ARGB shape with 4 bytes of data.
    ByteWriter shape;
    shape.put(video::PointerShapeBody{0xff, 1, 1, 1, 0, 0}).put(uint32_t{0x01010100});
    auto p = video::parse_guest_message(vid(video::MsgType::PointerShape, shape.view()));
    ASSERT_TRUE(p) << p.error().message();
    auto r = video::parse_guest_message(vid(video::MsgType::ResolutionRequest, video::ResolutionRequestBody{64}));
    ASSERT_TRUE(r);
    EXPECT_EQ(std::get<video::ResolutionRequest>(*r).max_count, 64);
    // Padding after the message (the ring's 8-byte alignment) is ignored.
    auto padded = vid(video::MsgType::VersionRequest, video::VersionRequestBody{0x00020003});
    padded.resize(24, 0xee);
    EXPECT_TRUE(video::parse_guest_message(padded));
}

TEST(Synthvid, RefusesHostileFraming) {
    auto err = [](std::vector<uint8_t> m) {
        auto r = video::parse_guest_message(m);
        return r ? Errc::Failed : r.error().code();
    };
    EXPECT_EQ(err({}), Errc::Invalid);
    EXPECT_EQ(err(std::vector<uint8_t>(15, 0)), Errc::Invalid);
    auto m = vid(video::MsgType::VersionRequest, video::VersionRequestBody{0x00050003});
    auto bad = m;
    bad[0] = 2;  // not a data pipe message
    EXPECT_EQ(err(bad), Errc::Invalid);
    bad = m;
    bad[4] = 200;  // pipe size past the payload
    EXPECT_EQ(err(bad), Errc::Invalid);
    bad = m;
    bad[12] = 7;  // synthvid size below its header
    EXPECT_EQ(err(bad), Errc::Invalid);
    bad = m;
    bad[12] = 13;  // synthvid size above the pipe size
    EXPECT_EQ(err(bad), Errc::Invalid);
    bad = m;
    bad[4] = bad[12] = 11;  // a body shorter than a version request
    EXPECT_EQ(err(bad), Errc::Invalid);
    EXPECT_EQ(err(vid(video::MsgType::VramLocation, std::vector<uint8_t>(16))), Errc::Invalid);
    // More outputs or rectangles than the bytes hold.
    auto s = situation(1024, 768, 4096);
    s[24] = 2;
    EXPECT_EQ(err(s), Errc::Invalid);
    EXPECT_EQ(err(dirt({{0, 0, 1, 1}}, 255)), Errc::Invalid);
    // A cursor larger than 96x96, or a complete one with too little data.
    ByteWriter big;
    big.put(video::PointerShapeBody{0xff, 1, 97, 1, 0, 0}).zeros(97 * 4);
    EXPECT_EQ(err(vid(video::MsgType::PointerShape, big.view())), Errc::Invalid);
    ByteWriter shortshape;
    shortshape.put(video::PointerShapeBody{0xff, 1, 2, 2, 0, 0}).zeros(15);
    EXPECT_EQ(err(vid(video::MsgType::PointerShape, shortshape.view())), Errc::Invalid);
    // The host's own messages and unknown types.
    EXPECT_EQ(err(vid(video::MsgType::VersionResponse, std::vector<uint8_t>(6))), Errc::Unsupported);
    EXPECT_EQ(err(vid(static_cast<video::MsgType>(99), std::vector<uint8_t>(4))), Errc::Unsupported);
}

// ---- the video device through VMBus ----------------------------------------------------

namespace {

// A RAM control whose MMIO pool is [pool, pool + size): map_vram there succeeds (and records
// the call); the memory is then not in the simulated guest's RAM, so reads of it fail.
class FakeVramRam final : public RamControl {
public:
    std::vector<GpaWindow> ram_ranges() const override { return {}; }
    GpaWindow hot_add_window() const override { return {}; }
    Result<> hot_add(uint64_t, uint64_t) override { return fail("no"); }
    Result<> discard(uint64_t, uint64_t) override { return fail("no"); }
    Result<> map_vram(uint64_t gpa, uint64_t size) override {
        if (!pool.contains(gpa, size) || gpa % 4096) return fail(Errc::Invalid, "outside the pool");
        mapped.push_back({gpa, size});
        return {};
    }
    GpaWindow pool{0xf0000000, 128 * kMiB};
    std::vector<GpaWindow> mapped;
};

// hyperv_fb on the simulated guest: 64 MiB of RAM, the VRAM at 32 MiB.
class VideoGuest : public DeviceGuest<video::VideoDevice> {
public:
    static constexpr uint64_t kVram = 32 * kMiB;

    explicit VideoGuest(video::VideoConfig cfg = {"", 1024, 768}, RamControl* ram = nullptr)
        : DeviceGuest(make(std::move(cfg)), 8, 16384, ram) {}
    // hvfb_probe's sequence with the RAM framebuffer at kVram.
    void probe(uint32_t w = 1024, uint32_t h = 768) {
        send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{video::kVersionWin10}));
        send(vid(video::MsgType::ResolutionRequest, video::ResolutionRequestBody{64}));
        send(vid(video::MsgType::VramLocation, video::VramLocationBody{kVram, 1, kVram}));
        send(situation(w, h, w * 4));
    }
    uint8_t* vram() { return g.ram().data() + kVram; }

private:
    static std::shared_ptr<video::VideoDevice> make(video::VideoConfig cfg) {
        cfg.instance_id = "5620e0c7-8062-4dce-aeb7-520c7ef76171";
        return std::make_shared<video::VideoDevice>(std::move(cfg));
    }
};

}  // namespace

TEST(VideoDevice, OffersFourMegabytesOfVramForTheDefaultMode) {
    EXPECT_EQ(video::VideoDevice::vram_megabytes(1024, 768), 4U);
    EXPECT_EQ(video::VideoDevice::vram_megabytes(1280, 800), 4U);  // 4,096,000 bytes
    EXPECT_EQ(video::VideoDevice::vram_megabytes(1920, 1080), 8U);
    VideoGuest v;
    EXPECT_EQ(v.offer_mmio, 4);
}

TEST(VideoDevice, NegotiatesLikeHypervFbAndCapturesThePixelsExactly) {
    VideoGuest v;
    v.probe();
    auto msgs = v.received();
    ASSERT_EQ(msgs.size(), 4U);  // one reply per request, in order
    EXPECT_EQ(vid_type(msgs[0]), 2U);
    EXPECT_EQ(body_of<video::VersionResponseBody>(msgs[0]).is_accepted, 1);
    EXPECT_EQ(vid_type(msgs[1]), 14U);
    const auto res = body_of<video::ResolutionResponseBody>(msgs[1]);
    ASSERT_GE(res.resolution_count, 1);
    ASSERT_LT(res.default_resolution_index, res.resolution_count);
    const auto def = read_prefix<video::ScreenSize>(std::span(msgs[1]).subspan(147 + 4 * size_t{res.default_resolution_index}));
    EXPECT_EQ(uint32_t{def->width}, 1024U);
    EXPECT_EQ(uint32_t{def->height}, 768U);
    // Every entry fits the 4 MiB the offer gave (the guest does not check, §4.4).
    for (uint8_t i = 0; i < res.resolution_count; ++i) {
        const auto s = read_prefix<video::ScreenSize>(std::span(msgs[1]).subspan(147 + 4 * size_t{i})).value();
        EXPECT_LE(uint64_t{s.width} * s.height * 4, 4 * kMiB);
    }
    EXPECT_EQ(vid_type(msgs[2]), 4U);
    EXPECT_EQ(uint64_t{body_of<video::VramLocationAckBody>(msgs[2]).user_ctx}, VideoGuest::kVram);
    EXPECT_EQ(vid_type(msgs[3]), 6U);  // SITUATION_UPDATE_ACK, which Linux ignores

    const auto st = v.dev->status();
    EXPECT_EQ(st.state, "ready");
    EXPECT_EQ(st.version, video::kVersionWin10);
    ASSERT_TRUE(st.mode);
    EXPECT_EQ(*st.mode, (video::Mode{1024, 768, 4096, 0}));

    // The guest draws (B, G, R, X in memory); the host reads exactly that.
    for (uint32_t y = 0; y < 768; ++y)
        for (uint32_t x = 0; x < 1024; ++x) {
            uint8_t* px = v.vram() + y * 4096 + x * 4;
            px[0] = static_cast<uint8_t>(x), px[1] = static_cast<uint8_t>(y), px[2] = static_cast<uint8_t>(x ^ y);
            px[3] = 0x5a;
        }
    auto f = v.dev->capture();
    ASSERT_TRUE(f) << f.error().message();
    ASSERT_EQ(f->width, 1024U);
    ASSERT_EQ(f->height, 768U);
    for (uint32_t y = 0; y < 768; y += 7)
        for (uint32_t x = 0; x < 1024; x += 3) {
            const uint8_t* px = f->rgb.data() + (y * 1024 + x) * 3;
            ASSERT_EQ(px[0], static_cast<uint8_t>(x ^ y)) << x << "," << y;
            ASSERT_EQ(px[1], static_cast<uint8_t>(y));
            ASSERT_EQ(px[2], static_cast<uint8_t>(x));
        }
}

TEST(VideoDevice, ASmallerModeWithTheFullPitchAfterFbset) {
    VideoGuest v;
    v.probe();
    v.received();
    // fbset 800x600: line_length stays 4096 (§4.6).
    v.send(situation(800, 600, 4096));
    ASSERT_TRUE(v.dev->status().mode);
    EXPECT_EQ(*v.dev->status().mode, (video::Mode{800, 600, 4096, 0}));
    v.vram()[4096 * 599 + 799 * 4 + 2] = 0xab;
    auto f = v.dev->capture();
    ASSERT_TRUE(f);
    EXPECT_EQ(f->rgb[(599 * 800 + 799) * 3], 0xab);
}

TEST(VideoDevice, RefusesOtherVersions) {
    VideoGuest v;
    v.send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{0x00000003}));  // 3.0
    v.send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{0x00050004}));
    auto msgs = v.received();
    ASSERT_EQ(msgs.size(), 2U);
    EXPECT_EQ(body_of<video::VersionResponseBody>(msgs[0]).is_accepted, 0);
    EXPECT_EQ(body_of<video::VersionResponseBody>(msgs[1]).is_accepted, 0);
    EXPECT_EQ(v.dev->status().counters.bad_version, 2U);
    EXPECT_EQ(v.dev->status().state, "negotiating");
    // 3.2, which Linux tries after 3.5 on VMBus 4.0 and 5.0, is fine.
    v.send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{video::kVersionWin8}));
    EXPECT_EQ(body_of<video::VersionResponseBody>(v.received().at(0)).is_accepted, 1);
}

TEST(VideoDevice, RefusesVramOutsideGuestMemory) {
    for (const uint64_t gpa : {uint64_t{62 * kMiB},          // runs past the end of RAM
                               uint64_t{0xf0000000},         // the MMIO pool, with nothing to back it
                               ~uint64_t{0} - kMiB}) {       // wraps
        VideoGuest v;
        v.send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{video::kVersionWin10}));
        v.send(vid(video::MsgType::VramLocation, video::VramLocationBody{gpa, 1, gpa}));
        v.send(situation(1024, 768, 4096));
        auto msgs = v.received();
        ASSERT_EQ(msgs.size(), 3U);
        // Not the user_ctx back: Linux's probe fails ("Unable to set VRAM location").
        EXPECT_NE(uint64_t{body_of<video::VramLocationAckBody>(msgs[1]).user_ctx}, gpa);
        EXPECT_EQ(v.dev->status().counters.vram_refused, 1U);
        EXPECT_FALSE(v.dev->status().vram_gpa);
        EXPECT_FALSE(v.dev->status().mode);
        auto f = v.dev->capture();
        ASSERT_FALSE(f);
        EXPECT_TRUE(f.error().is(Errc::Closed));
    }
}

TEST(VideoDevice, VramInTheMmioPoolIsBackedOnDemandAndBounded) {
    FakeVramRam ram;
    VideoGuest v({"", 1920, 1080}, &ram);
    EXPECT_EQ(v.offer_mmio, 8);  // 1920x1080 needs 8 MiB: above 4 the guest uses the MMIO pool
    v.send(vid(video::MsgType::VersionRequest, video::VersionRequestBody{video::kVersionWin10}));
    v.send(vid(video::MsgType::VramLocation, video::VramLocationBody{0xf0000000, 1, 0xf0000000}));
    auto msgs = v.received();
    EXPECT_EQ(uint64_t{body_of<video::VramLocationAckBody>(msgs.at(1)).user_ctx}, 0xf0000000U);
    ASSERT_EQ(ram.mapped.size(), 1U);
    EXPECT_EQ(ram.mapped[0], (GpaWindow{0xf0000000, 8 * kMiB}));
    EXPECT_TRUE(v.dev->status().vram_in_mmio);
    // The same place again maps nothing new; a guest that moves it for ever is refused.
    v.send(vid(video::MsgType::VramLocation, video::VramLocationBody{0xf0000000, 1, 0xf0000000}));
    EXPECT_EQ(ram.mapped.size(), 1U);
    for (uint64_t i = 1; i <= 20; ++i) {
        const uint64_t gpa = 0xf0000000 + i * 8 * kMiB % (120 * kMiB);
        v.send(vid(video::MsgType::VramLocation, video::VramLocationBody{gpa, 1, gpa}));
    }
    EXPECT_EQ(ram.mapped.size(), size_t{video::VideoDevice::kMaxVramMaps});
    EXPECT_GT(v.dev->status().counters.vram_refused, 0U);
}

TEST(VideoDevice, RefusesModesThatDoNotFitTheVram) {
    VideoGuest v;
    v.probe();
    ASSERT_TRUE(v.dev->status().mode);
    struct Bad {
        uint32_t w, h, pitch;
        uint8_t depth;
        uint32_t offset;
        uint8_t active;
    };
    for (const Bad b : {Bad{1024, 768, 4095, 32, 0, 1},           // pitch below width * 4
                        Bad{1024, 1025, 4096, 32, 0, 1},          // past 4 MiB
                        Bad{1024, 768, 4096, 32, 1U << 21, 1},    // offset pushes it past
                        Bad{1024, 768, 4096, 16, 0, 1},           // not 32 bpp
                        Bad{0, 768, 4096, 32, 0, 1}, Bad{1024, 0, 4096, 32, 0, 1},
                        Bad{1024, 768, 4096, 32, 0, 0},           // inactive
                        Bad{0xffffffff, 0xffffffff, 0xffffffff, 32, 0xffffffff, 1}}) {
        v.send(situation(b.w, b.h, b.pitch, b.depth, b.offset, b.active));
        EXPECT_FALSE(v.dev->status().mode) << b.w << "x" << b.h << " pitch " << b.pitch;
        EXPECT_FALSE(v.dev->capture());
        v.send(situation(1024, 768, 4096));
        ASSERT_TRUE(v.dev->status().mode);
    }
    EXPECT_EQ(v.dev->status().counters.situation_refused, 8U);
    // No outputs at all: nothing to show.
    ByteWriter none;
    none.put(video::SituationUpdateBody{0, 0});
    v.send(vid(video::MsgType::SituationUpdate, none.view()));
    EXPECT_FALSE(v.dev->status().mode);
}

TEST(VideoDevice, DirtyRectanglesAreClampedToTheScreen) {
    VideoGuest v;
    v.probe();
    v.dev->take_dirty();  // the mode change marks the whole screen
    v.send(dirt({{0, 16, 1024, 32}}));
    EXPECT_EQ(v.dev->take_dirty(), (std::vector<video::DirtyRect>{{0, 16, 1024, 16}}));
    v.send(dirt({{-100, -5, 5000, 10}, {900, 700, INT32_MAX, INT32_MAX}, {INT32_MIN, INT32_MIN, INT32_MIN, 0},
                 {50, 50, 10, 10} /* inverted */, {2000, 2000, 3000, 3000} /* outside */}));
    EXPECT_EQ(v.dev->take_dirty(), (std::vector<video::DirtyRect>{{0, 0, 1024, 10}, {900, 700, 124, 68}}));
    EXPECT_EQ(v.dev->status().counters.dirt_rects_clamped, 4U);
    // Floods collapse into one bounding box.
    for (int i = 0; i < 100; ++i) v.send(dirt({{i, i, i + 1, i + 1}}));
    const auto d = v.dev->take_dirty();
    ASSERT_LE(d.size(), video::VideoDevice::kMaxDirtyRects);
    EXPECT_TRUE(v.dev->take_dirty().empty());
}

TEST(VideoDevice, FeatureChangeWhenADisplayWatches) {
    VideoGuest v;
    v.probe();
    v.received();
    v.dev->set_dirt_needed(true);
    v.g.pump();
    auto msgs = v.received();
    ASSERT_EQ(msgs.size(), 1U);
    EXPECT_EQ(vid_type(msgs[0]), 9U);
    EXPECT_EQ(msgs[0][16], 1);
    v.dev->set_dirt_needed(true);  // no change, nothing sent
    EXPECT_TRUE(v.received().empty());
    v.dev->set_dirt_needed(false);
    msgs = v.received();
    ASSERT_EQ(msgs.size(), 1U);
    EXPECT_EQ(msgs[0][16], 0);
}

TEST(VideoDevice, StopsReadingTheFramebufferWhenTheChannelCloses) {
    VideoGuest v;
    v.probe();
    ASSERT_TRUE(v.dev->capture());
    v.g.simple(vmbus::MsgType::CloseChannel, v.relid);
    v.g.pump();
    EXPECT_EQ(v.dev->status().state, "closed");
    auto f = v.dev->capture();
    ASSERT_FALSE(f);
    EXPECT_TRUE(f.error().is(Errc::Closed));
}

TEST(VideoDevice, HostileMessagesAreCountedNotFatal) {
    VideoGuest v;
    v.send({1, 0, 0, 0});                                            // truncated
    v.send(vid(video::MsgType::VersionResponse, std::vector<uint8_t>(6)));  // the host's own
    EXPECT_TRUE(v.g.send(v.ch, vmbus::kPacketCompletion, 0, std::vector<uint8_t>(24), {}, true));
    v.g.pump();
    const auto c = v.dev->status().counters;
    EXPECT_EQ(c.malformed, 2U);
    EXPECT_EQ(c.unsupported, 1U);
    v.probe();
    EXPECT_EQ(v.dev->status().state, "ready");
}

TEST(VideoPng, EncodesAFrameThatLibpngReadsBackExactly) {
    video::Frame f{37, 5, {}};
    for (uint32_t i = 0; i < 37 * 5 * 3; ++i) f.rgb.push_back(static_cast<uint8_t>(i * 7));
    auto png = video::encode_png(f);
    ASSERT_TRUE(png) << png.error().message();
    ASSERT_GT(png->size(), 8U);
    EXPECT_EQ(png->substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    ASSERT_TRUE(png_image_begin_read_from_memory(&image, png->data(), png->size()));
    EXPECT_EQ(image.width, 37U);
    EXPECT_EQ(image.height, 5U);
    image.format = PNG_FORMAT_RGB;
    std::vector<uint8_t> back(PNG_IMAGE_SIZE(image));
    ASSERT_TRUE(png_image_finish_read(&image, nullptr, back.data(), 0, nullptr));
    EXPECT_EQ(back, f.rgb);
    EXPECT_FALSE(video::encode_png(video::Frame{2, 2, std::vector<uint8_t>(11)}));
    EXPECT_FALSE(video::encode_png(video::Frame{}));
}

// ---- the key map ----------------------------------------------------------------------

namespace {
using input::KeyEvent;
constexpr KeyEvent make(uint8_t c, bool e0 = false) { return {c, e0, false, false}; }
constexpr KeyEvent brk(uint8_t c, bool e0 = false) { return {c, e0, false, true}; }
}  // namespace

TEST(Keymap, TypesTextOnAUsLayout) {
    auto e = input::text_events("ro\n");
    ASSERT_TRUE(e);
    EXPECT_EQ(*e, (std::vector<KeyEvent>{make(0x13), brk(0x13), make(0x18), brk(0x18), make(0x1c), brk(0x1c)}));
    e = input::text_events("A!");
    ASSERT_TRUE(e);
    EXPECT_EQ(*e, (std::vector<KeyEvent>{make(0x2a), make(0x1e), brk(0x1e), brk(0x2a), make(0x2a), make(0x02),
                                         brk(0x02), brk(0x2a)}));
    // Every printable character has a key; each make comes with its break.
    for (int c = 0x20; c <= 0x7e; ++c) {
        auto k = input::text_events(std::string(1, static_cast<char>(c)));
        ASSERT_TRUE(k) << c;
        int held = 0;
        for (const auto& ev : *k) {
            EXPECT_GE(ev.code, 0x01);
            EXPECT_LE(ev.code, 0x7f);
            held += ev.release ? -1 : 1;
        }
        EXPECT_EQ(held, 0) << c;
    }
    EXPECT_FALSE(input::text_events("caf\xc3\xa9"));
    EXPECT_FALSE(input::text_events(std::string("a\0b", 3)));
}

TEST(Keymap, CombinationsPressInOrderAndReleaseInReverse) {
    auto e = input::combination_events("ctrl+alt+delete");
    ASSERT_TRUE(e);
    EXPECT_EQ(*e, (std::vector<KeyEvent>{make(0x1d), make(0x38), make(0x53, true), brk(0x53, true), brk(0x38),
                                         brk(0x1d)}));
    EXPECT_EQ(*input::combination_events("Return"), (std::vector<KeyEvent>{make(0x1c), brk(0x1c)}));
    EXPECT_EQ(*input::combination_events("KP_Enter"), (std::vector<KeyEvent>{make(0x1c, true), brk(0x1c, true)}));
    EXPECT_EQ(*input::combination_events("ctrl_r+up"),
              (std::vector<KeyEvent>{make(0x1d, true), make(0x48, true), brk(0x48, true), brk(0x1d, true)}));
    EXPECT_EQ(*input::combination_events("ctrl++"), (std::vector<KeyEvent>{make(0x1d), make(0x0d), brk(0x0d), brk(0x1d)}));
    EXPECT_EQ(*input::combination_events("F12"), (std::vector<KeyEvent>{make(0x58), brk(0x58)}));
    // Pause: E1 1D 45 / E1 9D C5.
    EXPECT_EQ(*input::combination_events("pause"),
              (std::vector<KeyEvent>{{0x1d, false, true, false}, make(0x45), {0x1d, false, true, true}, brk(0x45)}));
    for (const char* bad : {"", "ctrl+", "hyper", "ctrl+nokey", "a+b+c+d+e+f+g+h+i"}) {
        auto r = input::combination_events(bad);
        EXPECT_FALSE(r) << bad;
    }
}

TEST(Keymap, VncKeysymsAreTheKeysOfAUsKeyboard) {
    auto key = [](uint32_t sym) {
        auto k = input::key_by_keysym(sym);
        EXPECT_TRUE(k) << std::hex << sym;
        return k ? std::pair{k->code, k->e0} : std::pair<uint8_t, bool>{0, false};
    };
    EXPECT_EQ(key('a'), (std::pair<uint8_t, bool>{0x1e, false}));
    EXPECT_EQ(key('A'), (std::pair<uint8_t, bool>{0x1e, false}));  // the client sends Shift itself
    EXPECT_EQ(key('!'), (std::pair<uint8_t, bool>{0x02, false}));
    EXPECT_EQ(key(0xff0d), (std::pair<uint8_t, bool>{0x1c, false}));  // Return
    EXPECT_EQ(key(0xff8d), (std::pair<uint8_t, bool>{0x1c, true}));   // KP_Enter
    EXPECT_EQ(key(0xff52), (std::pair<uint8_t, bool>{0x48, true}));   // Up
    EXPECT_EQ(key(0xffe4), (std::pair<uint8_t, bool>{0x1d, true}));   // Control_R
    EXPECT_EQ(key(0xffc9), (std::pair<uint8_t, bool>{0x58, false}));  // F12
    EXPECT_EQ(key(0xffb7), (std::pair<uint8_t, bool>{0x47, false}));  // KP_7
    EXPECT_TRUE(input::key_by_keysym(0xff13)->pause);
    EXPECT_EQ(input::key_events(*input::key_by_keysym(0xff13), false).size(), 2U);
    EXPECT_EQ(input::key_events(*input::key_by_keysym('q'), true), (std::vector<KeyEvent>{brk(0x10)}));
    for (const uint32_t bad : {0U, 0x1fU, 0x7fU, 0xe9U /* é */, 0xff00U, 0x1000000U, 0xffffffffU})
        EXPECT_FALSE(input::key_by_keysym(bad)) << std::hex << bad;
}

// ---- the keyboard device ---------------------------------------------------------------

namespace {

class KeyboardGuest : public DeviceGuest<input::KeyboardDevice> {
public:
    // 36 KiB rings in Linux: 32 KiB of data here.
    KeyboardGuest() : DeviceGuest(std::make_shared<input::KeyboardDevice>(input::kKeyboardInstance), 8) {}
    void request(uint32_t version) {
        const input::KbdProtocolRequest r{1, version};
        send(as_bytes(r));
    }
};

}  // namespace

TEST(KeyboardDevice, AcceptsProtocol1AndSendsSetOneEvents) {
    KeyboardGuest k;
    EXPECT_EQ(k.dev->status().state, "negotiating");
    const KeyEvent a[] = {make(0x1e)};
    EXPECT_TRUE(k.dev->type(a).error().is(Errc::Closed));
    k.request(input::kKeyboardVersion);
    auto msgs = k.received();
    ASSERT_EQ(msgs.size(), 1U);
    ASSERT_GE(msgs[0].size(), 8U);
    EXPECT_EQ(read_prefix<input::KbdProtocolResponse>(msgs[0])->type, 2U);
    EXPECT_EQ(read_prefix<input::KbdProtocolResponse>(msgs[0])->status, 1U);
    EXPECT_EQ(k.dev->status().state, "ready");

    auto events = input::combination_events("ctrl_r+a");
    ASSERT_TRUE(events);
    ASSERT_TRUE(k.dev->type(*events));
    k.g.pump();
    msgs = k.received();
    ASSERT_EQ(msgs.size(), 4U);
    const uint32_t want_info[] = {input::kKbdInfoE0, 0, input::kKbdInfoBreak,
                                  input::kKbdInfoBreak | input::kKbdInfoE0};
    const uint16_t want_code[] = {0x1d, 0x1e, 0x1e, 0x1d};
    for (size_t i = 0; i < 4; ++i) {
        ASSERT_GE(msgs[i].size(), 12U);  // the guest drops an event under 12 bytes
        const auto ev = *read_prefix<input::KbdEvent>(msgs[i]);
        EXPECT_EQ(ev.type, 3U);
        EXPECT_EQ(ev.make_code, want_code[i]);
        EXPECT_EQ(ev.info, want_info[i]);
        EXPECT_EQ(ev.info & input::kKbdInfoUnicode, 0U);
    }
    EXPECT_EQ(k.dev->status().events_sent, 4U);
}

TEST(KeyboardDevice, RefusesOtherVersionsAndHostileMessages) {
    KeyboardGuest k;
    k.request(0x00020000);
    auto msgs = k.received();
    ASSERT_EQ(msgs.size(), 1U);
    EXPECT_EQ(read_prefix<input::KbdProtocolResponse>(msgs[0])->status, 0U);
    EXPECT_EQ(k.dev->status().state, "negotiating");
    const input::KbdEvent ev{3, 0x1e, 0, 0};  // the host's own message type
    k.send(as_bytes(ev));
    const uint32_t unknown[2] = {77, 0};
    k.send(as_bytes(unknown));
    k.send(as_bytes(ev), vmbus::kPacketCompletion);
    EXPECT_EQ(k.dev->status().malformed, 4U);  // the version, and three messages
    EXPECT_TRUE(k.received().empty());
    // Windows guests send their LED state.
    const input::KbdLedIndicators led{4, 0x5, 0};
    k.send(as_bytes(led));
    EXPECT_EQ(k.dev->status().leds, 0x5);
    // And it still negotiates (after a resume the guest asks again).
    k.request(input::kKeyboardVersion);
    k.request(input::kKeyboardVersion);
    EXPECT_EQ(k.received().size(), 2U);
    EXPECT_EQ(k.dev->status().state, "ready");
}

TEST(KeyboardDevice, AGuestThatDoesNotReadGetsWholeBatchesOrNothing) {
    KeyboardGuest k;
    k.request(input::kKeyboardVersion);
    k.received();
    // The guest stops reading: the ring (32 KiB, 40 bytes an event) fills, then the outbox.
    const auto events = input::text_events(std::string(1000, 'a')).value();  // 2000 events
    size_t accepted = 0;
    for (int i = 0; i < 10; ++i) {
        auto r = k.dev->type(events);
        if (!r) {
            EXPECT_TRUE(r.error().is(Errc::Busy));
            break;
        }
        ++accepted;
    }
    EXPECT_EQ(accepted, (input::KeyboardDevice::kMaxWaiting + 800) / 2000);
    EXPECT_LE(k.dev->waiting(), input::KeyboardDevice::kMaxWaiting);
    // It reads again: everything queued arrives, in order, each make with its break.
    size_t got = 0;
    int held = 0;
    for (int round = 0; round < 100 && got < accepted * 2000; ++round) {
        for (const auto& m : k.received()) {
            const auto ev = *read_prefix<input::KbdEvent>(m);
            held += (ev.info & input::kKbdInfoBreak) ? -1 : 1;
            ++got;
        }
        k.g.doorbell(k.ch);  // the guest's read past pending_send_sz signals the host
        k.g.pump();
    }
    EXPECT_EQ(got, accepted * 2000);
    EXPECT_EQ(held, 0);
}

// ---- the mouse device ------------------------------------------------------------------

namespace {

std::vector<uint8_t> hid(input::HidMsgType type, std::span<const uint8_t> body) {
    // hid-hyperv's sends: a 12-byte pipe_prt_msg minus one byte, so up to 3 slack bytes.
    ByteWriter w;
    w.put(input::HidPipeHeader{1, static_cast<uint32_t>(8 + body.size())})
        .put(input::HidHeader{static_cast<uint32_t>(type), static_cast<uint32_t>(body.size())})
        .bytes(body)
        .zeros(3);
    return w.take();
}

class MouseGuest : public DeviceGuest<input::MouseDevice> {
public:
    MouseGuest() : DeviceGuest(std::make_shared<input::MouseDevice>(input::kMouseInstance), 8) {}
    void handshake() {
        const uint32_t version = input::kMouseVersion;
        send(hid(input::HidMsgType::ProtocolRequest, as_bytes(version)));
        received();
        const uint8_t reserved = 0;
        send(hid(input::HidMsgType::InitialDeviceInfoAck, std::span(&reserved, 1)));
    }
};

}  // namespace

TEST(MouseDevice, AnswersThenSendsTheDeviceInfoHidHypervAccepts) {
    MouseGuest m;
    const uint32_t version = input::kMouseVersion;
    m.send(hid(input::HidMsgType::ProtocolRequest, as_bytes(version)));
    auto msgs = m.received();
    ASSERT_EQ(msgs.size(), 2U);
    // PROTOCOL_RESPONSE: pipe {1, 13}, hid {1, 5}, the version echoed, approved.
    const auto& resp = msgs[0];
    ASSERT_GE(resp.size(), 21U);
    EXPECT_EQ(read_prefix<input::HidPipeHeader>(resp)->size, 13U);  // pipe.size + 11 <= 24
    EXPECT_EQ(read_prefix<input::HidHeader>(std::span(resp).subspan(8))->type, 1U);
    EXPECT_EQ(read_prefix<input::HidProtocolResponseBody>(std::span(resp).subspan(16))->version_requested, version);
    EXPECT_EQ(resp[20], 1);
    // INITIAL_DEVICE_INFO, checked as mousevsc_on_receive_device_info does.
    const auto& info = msgs[1];
    const auto pipe = *read_prefix<input::HidPipeHeader>(info);
    EXPECT_EQ(read_prefix<input::HidHeader>(std::span(info).subspan(8))->type, 2U);
    ASSERT_GE(pipe.size, 49U);
    ASSERT_LE(pipe.size + 8, info.size());
    const auto dev_info = *read_prefix<input::HidDevInfo>(std::span(info).subspan(16));
    EXPECT_EQ(dev_info.vendor, 0x045e);
    EXPECT_EQ(dev_info.product, 0x0621);
    const auto desc = *read_prefix<input::HidDescriptor>(std::span(info).subspan(48));
    const size_t desc_size = pipe.size - 40;
    // Copies: gtest takes references, and the packed fields are not aligned.
    const size_t length = desc.length, report_length = desc.report_length;
    EXPECT_GE(length, 9U);
    EXPECT_LE(length, desc_size);
    EXPECT_EQ(desc.descriptor_type, 0x21);
    ASSERT_GT(report_length, 0U);
    EXPECT_LE(report_length, desc_size - length);
    const auto report_desc = std::span(info).subspan(48 + length, report_length);
    EXPECT_TRUE(std::equal(report_desc.begin(), report_desc.end(), input::kMouseReportDescriptor.begin()));
    EXPECT_EQ(report_desc[14], 0x29);  // SA-167: not a Logical Maximum tag
    // Reports only after the guest's ACK.
    EXPECT_TRUE(m.dev->move({100, 200, 0, 0}).error().is(Errc::Closed));
    const uint8_t reserved = 0;
    m.send(hid(input::HidMsgType::InitialDeviceInfoAck, std::span(&reserved, 1)));
    EXPECT_EQ(m.dev->status().state, "ready");
}

TEST(MouseDevice, SendsSevenByteAbsoluteReports) {
    MouseGuest m;
    m.handshake();
    ASSERT_TRUE(m.dev->move({0x1234, 0x7fff, 0x1, -1}));
    m.g.pump();
    auto msgs = m.received();
    ASSERT_EQ(msgs.size(), 1U);
    const auto& r = msgs[0];
    EXPECT_EQ(read_prefix<input::HidPipeHeader>(r)->size, 15U);
    EXPECT_EQ(read_prefix<input::HidHeader>(std::span(r).subspan(8))->type, 4U);
    EXPECT_EQ(read_prefix<input::HidHeader>(std::span(r).subspan(8))->size, 7U);  // exactly the report
    ASSERT_GE(r.size(), 23U);
    EXPECT_EQ(std::vector<uint8_t>(r.begin() + 16, r.begin() + 23),
              (std::vector<uint8_t>{0x01, 0x34, 0x12, 0xff, 0x7f, 0xff, 0xff}));
    EXPECT_EQ(input::MouseDevice::scale(0, 1024), 0);
    EXPECT_EQ(input::MouseDevice::scale(1023, 1024), 32767);
    EXPECT_EQ(input::MouseDevice::scale(5000, 1024), 32767);
    EXPECT_EQ(input::MouseDevice::scale(512, 1025), 16383);
    EXPECT_EQ(input::MouseDevice::scale(3, 1), 0);
}

TEST(MouseDevice, RefusesOtherVersionsAndHostileMessages) {
    MouseGuest m;
    const uint32_t old = 0x00010000;
    m.send(hid(input::HidMsgType::ProtocolRequest, as_bytes(old)));
    auto msgs = m.received();
    ASSERT_EQ(msgs.size(), 1U);  // refused: no device info
    EXPECT_EQ(msgs[0][20], 0);
    const uint8_t reserved = 0;
    m.send(hid(input::HidMsgType::InitialDeviceInfoAck, std::span(&reserved, 1)));  // out of turn
    EXPECT_EQ(m.dev->status().state, "negotiating");
    auto bad_pipe = hid(input::HidMsgType::ProtocolRequest, as_bytes(old));
    bad_pipe[0] = 2;
    m.send(bad_pipe);
    auto long_pipe = hid(input::HidMsgType::ProtocolRequest, as_bytes(old));
    long_pipe[4] = 200;
    m.send(long_pipe);
    m.send({1, 0, 0, 0, 8, 0, 0, 0});
    m.send(hid(input::HidMsgType::InputReport, std::vector<uint8_t>(7)));
    EXPECT_EQ(m.dev->status().malformed, 6U);
    EXPECT_TRUE(m.received().empty());
    m.handshake();
    EXPECT_EQ(m.dev->status().state, "ready");
}

TEST(MouseDevice, MotionIsCoalescedWhileTheGuestDoesNotRead) {
    MouseGuest m;
    m.handshake();
    // The guest stops reading: clicks fill the ring (48 bytes a report in 32 KiB), then the
    // outbox, then are refused.
    size_t sent = 0;
    bool refused = false;
    for (uint16_t i = 0; i < 5000 && !refused; ++i) {
        auto r = m.dev->move({i, i, static_cast<uint8_t>(i & 1), 0});
        if (r) ++sent;
        else refused = r.error().is(Errc::Busy);
    }
    ASSERT_TRUE(refused);
    EXPECT_GT(sent, 600U);
    // Motion while it is full replaces motion.
    const auto held = static_cast<uint8_t>((sent - 1) & 1);
    for (uint16_t i = 0; i < 1000; ++i) ASSERT_TRUE(m.dev->move({i, i, held, 0}));
    const size_t waiting = m.dev->waiting();
    EXPECT_LE(waiting, input::MouseDevice::kMaxWaiting);
    // The guest reads again: every click, then the last position.
    std::vector<std::vector<uint8_t>> all;
    for (int round = 0; round < 50; ++round) {
        for (auto& r : m.received()) all.push_back(std::move(r));
        m.g.doorbell(m.ch);
        m.g.pump();
    }
    ASSERT_EQ(all.size(), sent + 1);
    const auto& last = all.back();
    EXPECT_EQ(last[17] | last[18] << 8, 999);
}

// ---- the VNC server (backends/vnc, on Debian's libvncserver) under hostile clients -------

namespace {

struct RecordingSource final : vnc::Source {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::tuple<uint32_t, uint32_t, uint8_t>> pointers;
    std::vector<std::pair<uint32_t, bool>> keys;
    void key(uint32_t keysym, bool down) override {
        std::lock_guard lock(mu);
        keys.emplace_back(keysym, down);
        cv.notify_all();
    }
    void pointer(uint32_t x, uint32_t y, uint8_t buttons) override {
        std::lock_guard lock(mu);
        pointers.emplace_back(x, y, buttons);
        cv.notify_all();
    }
    void viewers(uint32_t) override {}
};

bool send_bytes(int fd, const std::string& b) {
    size_t off = 0;
    while (off < b.size()) {
        const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
        if (n <= 0) return false;
        off += static_cast<size_t>(n);
    }
    return true;
}

// Reads exactly n bytes (or fewer at EOF or after 5 s).
std::string recv_bytes(int fd, size_t n) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        char buf[4096];
        const ssize_t r = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
        if (r <= 0) break;
        out.append(buf, static_cast<size_t>(r));
    }
    return out;
}

// Until EOF (true) or 5 s (false).
bool closed_by_server(int fd) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        char buf[4096];
        const ssize_t r = ::recv(fd, buf, sizeof(buf), 0);
        if (r <= 0) return true;
    }
    return false;
}

// RFB 3.8 up to ServerInit, with no security; returns the server's width and height.
std::pair<uint16_t, uint16_t> handshake(int fd) {
    if (recv_bytes(fd, 12) != "RFB 003.008\n") return {0, 0};
    send_bytes(fd, "RFB 003.008\n");
    const std::string types = recv_bytes(fd, 2);  // one type: None
    if (types != std::string("\x01\x01", 2)) return {0, 0};
    send_bytes(fd, std::string("\x01", 1));
    if (recv_bytes(fd, 4) != std::string(4, '\0')) return {0, 0};
    send_bytes(fd, std::string("\x01", 1));  // shared
    const std::string init = recv_bytes(fd, 24);
    if (init.size() != 24) return {0, 0};
    const uint32_t name_len = (uint32_t{static_cast<uint8_t>(init[20])} << 24) |
                              (uint32_t{static_cast<uint8_t>(init[21])} << 16) |
                              (uint32_t{static_cast<uint8_t>(init[22])} << 8) | static_cast<uint8_t>(init[23]);
    recv_bytes(fd, name_len);
    return {static_cast<uint16_t>((static_cast<uint8_t>(init[0]) << 8) | static_cast<uint8_t>(init[1])),
            static_cast<uint16_t>((static_cast<uint8_t>(init[2]) << 8) | static_cast<uint8_t>(init[3]))};
}

}  // namespace

TEST(VncServer, HostileClientsAreDroppedAndTheNextOneIsServed) {
    RecordingSource source;
    vnc::Endpoint where;
    where.internal = true;
    auto server = vnc::Server::start(where, source, 64, 48);
    ASSERT_TRUE(server) << server.error().message() << " (scripts/setup installs libvncserver1)";

    // Not RFB at all.
    {
        auto c = (*server)->connect();
        ASSERT_TRUE(c);
        ASSERT_EQ(recv_bytes(c->get(), 12), "RFB 003.008\n");
        send_bytes(c->get(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(4096, 'A'));
        EXPECT_TRUE(closed_by_server(c->get()));
    }
    // A clipboard of almost 4 GiB announced.
    {
        auto c = (*server)->connect();
        ASSERT_TRUE(c);
        ASSERT_EQ(handshake(c->get()), (std::pair<uint16_t, uint16_t>{64, 48}));
        send_bytes(c->get(), std::string("\x06\0\0\0\xff\xff\xff\xf0", 8) + "short");
        EXPECT_TRUE(closed_by_server(c->get()));
    }
    // An unknown message type.
    {
        auto c = (*server)->connect();
        ASSERT_TRUE(c);
        ASSERT_EQ(handshake(c->get()), (std::pair<uint16_t, uint16_t>{64, 48}));
        send_bytes(c->get(), std::string("\xc8\x01\x02\x03", 4));
        EXPECT_TRUE(closed_by_server(c->get()));
    }
    // 65535 encodings announced, a few sent, then gone.
    {
        auto c = (*server)->connect();
        ASSERT_TRUE(c);
        ASSERT_EQ(handshake(c->get()), (std::pair<uint16_t, uint16_t>{64, 48}));
        send_bytes(c->get(), std::string("\x02\0\xff\xff\0\0\0\0", 8));
    }
    // A well-behaved client after all that: its pointer far outside the screen is clamped to
    // it, its key arrives, and an update request outside the screen is no harm.
    auto c = (*server)->connect();
    ASSERT_TRUE(c);
    ASSERT_EQ(handshake(c->get()), (std::pair<uint16_t, uint16_t>{64, 48}));
    send_bytes(c->get(), std::string("\x03\x01\xff\xf0\xff\xf0\x00\x10\x00\x10", 10));  // update request at (65520, 65520)
    send_bytes(c->get(), std::string("\x05\x01\xff\xff\xff\xff", 6));                  // pointer (65535, 65535), left
    send_bytes(c->get(), std::string("\x04\x01\0\0\0\0\0\x61", 8));                    // 'a' down
    std::unique_lock lock(source.mu);
    ASSERT_TRUE(source.cv.wait_for(lock, std::chrono::seconds(5),
                                   [&] { return !source.pointers.empty() && !source.keys.empty(); }));
    EXPECT_EQ(source.pointers[0], (std::tuple<uint32_t, uint32_t, uint8_t>{63, 47, 1}));
    EXPECT_EQ(source.keys[0], (std::pair<uint32_t, bool>{0x61, true}));
}
