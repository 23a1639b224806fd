// The Dynamic Memory VSP: wire layouts (Linux 6.1 hv_balloon.c), the parser, the page set,
// the policy (pure), the engine against a hostile guest (contract-memory §9), and the device
// through a real VMBus server with a simulated guest that answers like hv_balloon.
#include <gtest/gtest.h>

#include <cstring>
#include <atomic>
#include <map>
#include <thread>

#include "devices/balloon/balloon.hpp"
#include "devices/balloon/factory.hpp"
#include "devices/balloon/message.hpp"
#include "support/sim_guest.hpp"

using namespace enlighten;
using namespace enlighten::balloon;
using enlighten::test::SimChannel;
using enlighten::test::SimGuest;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kMiB = 1ULL << 20;
constexpr uint64_t kGiB = 1ULL << 30;

// Guest RAM as the VMM's MemoryManager would describe it, recording every change. With a
// GuestMemory it also discards there (borrowed memory: zero-filled), so tests can see it.
class FakeRam final : public RamControl {
public:
    explicit FakeRam(std::vector<GpaWindow> ram, GpaWindow window = {}, GuestMemory* mem = nullptr)
        : ram_(std::move(ram)), window_(window), mem_(mem) {}
    std::vector<GpaWindow> ram_ranges() const override {
        auto v = ram_;
        v.insert(v.end(), added.begin(), added.end());
        return v;
    }
    GpaWindow hot_add_window() const override { return window_; }
    Result<> hot_add(uint64_t gpa, uint64_t size) override {
        if (fail_hot_add) return fail("no slot");
        if (!window_.contains(gpa, size) || gpa % (128 * kMiB) || size % (128 * kMiB)) return fail(Errc::Invalid, "bad");
        for (const auto& a : added)
            if (gpa < a.end() && a.gpa < gpa + size) return fail(Errc::Invalid, "overlap");
        added.push_back({gpa, size});
        return {};
    }
    Result<> discard(uint64_t gpa, uint64_t size) override {
        discarded.push_back({gpa, size});
        discarded_bytes += size;
        if (mem_) return mem_->discard(gpa, size);
        return {};
    }
    std::vector<GpaWindow> added;
    std::vector<GpaWindow> discarded;
    uint64_t discarded_bytes = 0;
    bool fail_hot_add = false;

private:
    std::vector<GpaWindow> ram_;
    GpaWindow window_;
    GuestMemory* mem_;
};

// Guest messages, built as hv_balloon.c builds them.
template <typename T>
std::vector<uint8_t> bytes_of(const T& v) {
    auto b = as_bytes(v);
    return {b.begin(), b.end()};
}
std::vector<uint8_t> version_request(uint32_t version, bool last = false, uint32_t trans = 1) {
    return bytes_of(DmVersionRequest{{1, 16, trans}, version, last ? 1U : 0U});
}
std::vector<uint8_t> caps_report(uint64_t caps = 0x1f, uint32_t trans = 2) {
    return bytes_of(DmCapabilities{{3, 32, trans}, caps, 0, ~0ULL});
}
std::vector<uint8_t> status_report(uint64_t avail, uint64_t committed, uint32_t trans = 3) {
    return bytes_of(DmStatus{{5, 48, trans}, avail, committed, 0, 0, 0, 0});
}
std::vector<uint8_t> balloon_response(const std::vector<PageRange>& ranges, bool more, uint32_t trans = 4) {
    ByteWriter w;
    const auto size = static_cast<uint16_t>(16 + 8 * ranges.size());
    w.put(DmBalloonResponse{{7, size, trans}, 0, static_cast<uint32_t>(ranges.size() << 1) | (more ? 1U : 0U)});
    for (const auto& r : ranges) w.put(encode_range(r));
    return w.take();
}
std::vector<uint8_t> unballoon_response(uint32_t trans = 5) { return bytes_of(DmHeader{9, 8, trans}); }
std::vector<uint8_t> hot_add_response(uint32_t pages, uint32_t result, uint32_t trans = 6) {
    return bytes_of(DmHotAddResponse{{11, 16, trans}, pages, result});
}

DmHeader header_of(const std::vector<uint8_t>& m) { return *read_prefix<DmHeader>(m); }

PolicySettings settings(bool dynamic, uint64_t min, uint64_t max, uint32_t buffer = 20) {
    PolicySettings s;
    s.dynamic = dynamic;
    s.min_bytes = min;
    s.max_bytes = max;
    s.buffer_percent = buffer;
    return s;
}
PolicyInput input(uint64_t startup, uint64_t room) {
    PolicyInput in;
    in.startup_bytes = startup;
    in.hot_add_room_bytes = room;
    in.can_balloon = true;
    in.can_hot_add = true;
    return in;
}

// RAM: 1 GiB at 0 (as a 1 GiB guest's first range), hot-add window 4 GiB + 2 GiB.
struct EngineFixture : ::testing::Test {
    FakeRam ram{{{0, kGiB}}, {4 * kGiB, 2 * kGiB}};
    DmEngine e;
    DmEngine::Clock::time_point t{};
    void SetUp() override {
        e.attach(&ram, (3 * kGiB) / kPageSize);
        e.open();
        e.on_message(version_request(kVersionWin10), t);
        e.on_message(caps_report(), t);
        ASSERT_EQ(e.state(), DmState::Ready);
        e.take_outbox();
    }
    void balloon(uint64_t pages) {
        ASSERT_TRUE(e.balloon(pages, t));
        auto out = e.take_outbox();
        ASSERT_EQ(out.size(), 1U);
        ASSERT_EQ(header_of(out[0]).type, 6);
    }
};

}  // namespace

// ---------------------------------------------------------------------------- wire

TEST(BalloonWire, LayoutsAndRangeEncodingMatchLinux) {
    // contract-memory §2.1: GPA 5 GiB, 128 MiB -> 0x0080000000140000.
    EXPECT_EQ(encode_range({0x140000, 0x8000}), 0x0080000000140000ULL);
    EXPECT_EQ(decode_range(0x0080000000140000ULL), (PageRange{0x140000, 0x8000}));
    auto v = make_version_response(7, true);
    ASSERT_EQ(v.size(), 16U);
    EXPECT_EQ(header_of(v).type, 2);
    EXPECT_EQ(header_of(v).size, 16);
    EXPECT_EQ(v[8], 1);
    auto info = make_info_max_pages(1, 0x12345);
    ASSERT_EQ(info.size(), 32U);
    uint32_t data_size;
    std::memcpy(&data_size, info.data() + 20, 4);
    EXPECT_EQ(data_size, 8U);
    auto ha = make_hot_add_request(1, {0x100000, 0x8000});
    ASSERT_EQ(ha.size(), 24U);
    EXPECT_EQ(header_of(ha).size, 24);  // the region form: Linux reads region when size != 16
    uint64_t range, region;
    std::memcpy(&range, ha.data() + 8, 8);
    std::memcpy(&region, ha.data() + 16, 8);
    EXPECT_EQ(range, region);
    std::vector<PageRange> ranges(600, PageRange{1, 1});
    auto ub = make_unballoon_request(1, ranges, true);
    EXPECT_EQ(ub.size(), 16U + 8 * kMaxRangesPerMessage);  // capped: fits the guest's 4 KiB buffer
    EXPECT_LE(ub.size(), kMaxHostMessage);
    uint32_t more, count;
    std::memcpy(&more, ub.data() + 8, 4);
    std::memcpy(&count, ub.data() + 12, 4);
    EXPECT_EQ(more, 1U);
    EXPECT_EQ(count, kMaxRangesPerMessage);
}

TEST(BalloonParser, ChecksSizesAndCounts) {
    EXPECT_FALSE(parse_guest_message(std::vector<uint8_t>(4)));
    // hdr.size beyond the payload, below the header, below the type's fixed part.
    auto v = version_request(kVersionWin10);
    v[2] = 40;
    EXPECT_FALSE(parse_guest_message(v));
    v[2] = 4;
    EXPECT_FALSE(parse_guest_message(v));
    auto st = status_report(1, 2);
    st[2] = 40;
    EXPECT_FALSE(parse_guest_message(st));
    // A balloon response claiming more ranges than its bytes hold, or than 510.
    auto br = balloon_response({{0x100, 1}}, false);
    uint32_t more = (2U << 1);
    std::memcpy(br.data() + 12, &more, 4);
    EXPECT_EQ(parse_guest_message(br).error().code(), Errc::Invalid);
    more = 0xffffffffU;
    std::memcpy(br.data() + 12, &more, 4);
    EXPECT_FALSE(parse_guest_message(br));
    // The host's own messages and unknown types.
    EXPECT_EQ(parse_guest_message(make_balloon_request(1, 5)).error().code(), Errc::Unsupported);
    auto unknown = bytes_of(DmHeader{99, 8, 0});
    EXPECT_EQ(parse_guest_message(unknown).error().code(), Errc::Unsupported);
    // Good ones; padding after hdr.size is ignored.
    auto ok = balloon_response({{0x200, 512}, {0x400, 1}}, true);
    ok.resize(ok.size() + 8);
    auto m = parse_guest_message(ok);
    ASSERT_TRUE(m);
    auto& r = std::get<BalloonResponse>(*m);
    EXPECT_TRUE(r.more_pages);
    ASSERT_EQ(r.ranges.size(), 2U);
    EXPECT_EQ(r.ranges[0], (PageRange{0x200, 512}));
    auto caps = parse_guest_message(caps_report(0x1f));
    ASSERT_TRUE(caps);
    EXPECT_TRUE(std::get<CapabilitiesReport>(*caps).hot_add);
    EXPECT_EQ(std::get<CapabilitiesReport>(*caps).hot_add_alignment_log2_mib, 7U);
}

TEST(BalloonPageSet, InsertReportsOnlyNewPagesAndTakeReturnsThem) {
    PageSet s;
    EXPECT_EQ(s.insert({100, 10}), (std::vector<PageRange>{{100, 10}}));
    EXPECT_EQ(s.insert({105, 10}), (std::vector<PageRange>{{110, 5}}));
    EXPECT_EQ(s.insert({90, 40}), (std::vector<PageRange>{{90, 10}, {115, 15}}));
    EXPECT_TRUE(s.insert({95, 5}).empty());
    EXPECT_EQ(s.pages(), 40U);
    EXPECT_EQ(s.ranges(), 1U);  // merged
    EXPECT_TRUE(s.contains(90));
    EXPECT_FALSE(s.contains(130));
    auto t = s.take(15, 10);
    EXPECT_EQ(t, (std::vector<PageRange>{{115, 15}}));
    EXPECT_EQ(s.pages(), 25U);
    EXPECT_FALSE(s.contains(115));
    EXPECT_EQ(s.insert({200, 1}).size(), 1U);
    auto rest = s.take(1000, 10);
    uint64_t n = 0;
    for (auto& r : rest) n += r.count;
    EXPECT_EQ(n, 26U);
    EXPECT_EQ(s.pages(), 0U);
}

// ---------------------------------------------------------------------------- policy

TEST(BalloonPolicy, ExplicitTargetBalloonsUnballoonsAndHotAdds) {
    PolicySettings s = settings(false, 128 * kMiB, 2 * kGiB, 20);
    PolicyInput in = input(kGiB, kGiB);
    // No target, dynamic off: nothing.
    EXPECT_EQ(decide(s, in).action, PolicyAction::None);
    s.target_bytes = 512 * kMiB;
    auto d = decide(s, in);
    EXPECT_EQ(d.action, PolicyAction::Balloon);
    EXPECT_EQ(d.pages, 512 * kMiB / kPageSize);
    // Back up: unballoon what was ballooned before hot-adding.
    in.ballooned_bytes = 512 * kMiB;
    s.target_bytes = 1536 * kMiB;
    d = decide(s, in);
    EXPECT_EQ(d.action, PolicyAction::Unballoon);
    EXPECT_EQ(d.pages, 512 * kMiB / kPageSize);
    in.ballooned_bytes = 0;
    d = decide(s, in);
    EXPECT_EQ(d.action, PolicyAction::HotAdd);
    EXPECT_EQ(d.pages, 512 * kMiB / kPageSize);
    // 100 MiB short: a whole 128 MiB chunk.
    s.target_bytes = kGiB + 100 * kMiB;
    EXPECT_EQ(decide(s, in).pages, 128 * kMiB / kPageSize);
    // Within 2 MiB: done.
    s.target_bytes = kGiB + kMiB;
    EXPECT_EQ(decide(s, in).action, PolicyAction::None);
    // The target is clamped to [min, max].
    s.target_bytes = 16 * kGiB;
    EXPECT_EQ(*decide(s, in).target_bytes, 2 * kGiB);
    // Cannot hot-add: nothing, with the reason.
    in.can_hot_add = false;
    d = decide(s, in);
    EXPECT_EQ(d.action, PolicyAction::None);
    EXPECT_NE(d.why.find("cannot hot-add"), std::string::npos);
}

TEST(BalloonPolicy, DynamicFollowsCommittedWithBufferInsideMinMax) {
    PolicySettings s = settings(true, 256 * kMiB, 2 * kGiB, 20);
    PolicyInput in = input(kGiB, kGiB);
    EXPECT_EQ(decide(s, in).action, PolicyAction::None);  // no report yet
    // The guest uses 300 MiB: target 360 MiB; balloon 664 MiB.
    in.committed_pages = 300 * kMiB / kPageSize;
    auto d = decide(s, in);
    EXPECT_EQ(*d.target_bytes, 360 * kMiB);
    EXPECT_EQ(d.action, PolicyAction::Balloon);
    EXPECT_EQ(d.pages, 664 * kMiB / kPageSize);
    // Committed includes the ballooned pages: after ballooning 664 MiB it reads 964 MiB, and
    // the policy is satisfied (no flapping).
    in.ballooned_bytes = 664 * kMiB;
    in.committed_pages = 964 * kMiB / kPageSize;
    EXPECT_EQ(decide(s, in).action, PolicyAction::None);
    // Never below min: a guest that needs 10 MiB gets 256 MiB.
    in.ballooned_bytes = 0;
    in.committed_pages = 10 * kMiB / kPageSize;
    EXPECT_EQ(*decide(s, in).target_bytes, 256 * kMiB);
    // A growing guest: 1.5 GiB needed -> 1.8 GiB target, hot-add (nothing ballooned).
    in.committed_pages = 1536 * kMiB / kPageSize;
    d = decide(s, in);
    EXPECT_EQ(d.action, PolicyAction::HotAdd);
    EXPECT_EQ(d.pages * kPageSize, 896 * kMiB);  // 1843 - 1024 rounded up to 128 MiB
    // Up to max only.
    in.committed_pages = 64 * kGiB / kPageSize;
    EXPECT_EQ(*decide(s, in).target_bytes, 2 * kGiB);
    // Small changes are left alone (the band is 64 MiB at 1 GiB).
    in.committed_pages = (kGiB * 100 / 120 + 30 * kMiB) / kPageSize;
    EXPECT_EQ(decide(s, in).action, PolicyAction::None);
    // Absurd committed values saturate instead of wrapping.
    in.committed_pages = ~0ULL;
    EXPECT_EQ(*decide(s, in).target_bytes, 2 * kGiB);
}

// ---------------------------------------------------------------------------- engine

TEST(BalloonEngine, NegotiatesLikeLinuxAndSendsMaxPages) {
    FakeRam ram{{{0, kGiB}}};
    DmEngine e;
    e.attach(&ram, 1000);
    e.open();
    // An unknown version is refused; the guest's fallback (1.0) is accepted.
    e.on_message(version_request(0x00050000), {});
    auto out = e.take_outbox();
    ASSERT_EQ(out.size(), 1U);
    EXPECT_EQ(out[0][8], 0);
    EXPECT_EQ(e.state(), DmState::Version);
    e.on_message(version_request(kVersionWin8), {});
    out = e.take_outbox();
    ASSERT_EQ(out.size(), 1U);
    EXPECT_EQ(out[0][8], 1);
    EXPECT_EQ(e.version(), kVersionWin8);
    // A repeated version request is ignored.
    e.on_message(version_request(kVersionWin10), {});
    EXPECT_TRUE(e.take_outbox().empty());
    EXPECT_EQ(e.counters().unexpected, 1U);
    // A status report before the capabilities: ignored.
    e.on_message(status_report(1, 1), {});
    EXPECT_EQ(e.status_reports(), 0U);
    e.on_message(caps_report(), {});
    out = e.take_outbox();
    ASSERT_EQ(out.size(), 2U);
    EXPECT_EQ(header_of(out[0]).type, 4);
    EXPECT_EQ(out[0][8], 1);
    EXPECT_EQ(header_of(out[1]).type, 12);
    uint64_t max_pages;
    std::memcpy(&max_pages, out[1].data() + 24, 8);
    EXPECT_EQ(max_pages, 1000U);
    EXPECT_EQ(e.state(), DmState::Ready);
    EXPECT_TRUE(e.can_balloon());
    EXPECT_FALSE(e.can_hot_add());  // no window
}

TEST_F(EngineFixture, BalloonDiscardsExactlyWhatTheGuestReturned) {
    balloon(1024);
    e.on_message(balloon_response({{0x1000, 512}}, true), t);
    EXPECT_EQ(e.state(), DmState::Ballooning);
    e.on_message(balloon_response({{0x2000, 512}}, false), t);
    EXPECT_EQ(e.state(), DmState::Ready);
    EXPECT_EQ(e.ballooned_pages(), 1024U);
    ASSERT_EQ(ram.discarded.size(), 2U);
    EXPECT_EQ(ram.discarded[0], (GpaWindow{0x1000ULL << 12, 512 * kPageSize}));
    EXPECT_EQ(ram.discarded_bytes, 1024 * kPageSize);
    // Unballoon gives back only ballooned pages, and ends with more_pages = 0.
    ASSERT_TRUE(e.unballoon(600, t));
    auto out = e.take_outbox();
    ASSERT_EQ(out.size(), 1U);
    auto m = read_prefix<DmUnballoonRequest>(out[0]).value();
    EXPECT_EQ(m.hdr.type, 8);
    EXPECT_EQ(m.more_pages, 0U);
    uint64_t given = 0;
    for (uint32_t i = 0; i < m.range_count; ++i) {
        uint64_t v;
        std::memcpy(&v, out[0].data() + 16 + 8 * i, 8);
        const auto r = decode_range(v);
        given += r.count;
        for (uint64_t p = r.start; p < r.end(); ++p)
            EXPECT_TRUE((p >= 0x1000 && p < 0x1200) || (p >= 0x2000 && p < 0x2200)) << p;
    }
    EXPECT_EQ(given, 600U);
    EXPECT_EQ(e.ballooned_pages(), 424U);
    EXPECT_FALSE(e.unballoon(1, t));  // one transaction at a time
    e.on_message(unballoon_response(), t);
    EXPECT_EQ(e.state(), DmState::Ready);
}

TEST_F(EngineFixture, HostileBalloonResponsesAreCheckedAgainstTheRequestAndRam) {
    balloon(100);
    e.on_message(balloon_response({
                                      {0x100, 0},           // empty
                                      {0x300000, 10},       // 12 GiB: outside RAM
                                      {(kGiB >> 12) - 5, 10},  // straddles the end of RAM
                                      {0x100, 40},          // fine
                                      {0x100, 40},          // repeated
                                      {0x120, 30},          // beyond the 100 pages asked for
                                  },
                                  true),
                 t);
    EXPECT_EQ(e.counters().bad_ranges, 1U);
    EXPECT_EQ(e.counters().outside_ram_pages, 20U);
    EXPECT_EQ(e.counters().duplicate_pages, 40U);
    EXPECT_EQ(e.ballooned_pages(), 40U);
    // The budget is the 100 pages asked for, claimed in any way: 10 + 10 + 40 + 40 used it
    // up, so the last range (30) and everything after counts as excess.
    EXPECT_EQ(e.counters().excess_pages, 30U);
    e.on_message(balloon_response({{0x5000, 500}}, false), t);
    EXPECT_EQ(e.counters().excess_pages, 530U);
    EXPECT_EQ(e.ballooned_pages(), 40U);
    EXPECT_EQ(e.state(), DmState::Ready);
    // Only pages in RAM, returned once, within the request were discarded.
    uint64_t discarded = 0;
    for (const auto& d : ram.discarded) {
        EXPECT_TRUE((GpaWindow{0, kGiB}.contains(d.gpa, d.size)));
        discarded += d.size;
    }
    EXPECT_EQ(discarded, e.ballooned_pages() * kPageSize);
    // Unsolicited responses change nothing.
    const uint64_t before = ram.discarded_bytes;
    e.on_message(balloon_response({{0x9000, 512}}, false), t);
    e.on_message(unballoon_response(), t);
    e.on_message(hot_add_response(32768, 1), t);
    EXPECT_EQ(ram.discarded_bytes, before);
    EXPECT_EQ(e.hot_added_pages(), 0U);
    EXPECT_EQ(e.counters().unexpected, 3U);
    // Malformed messages are counted and ignored.
    e.on_message(std::vector<uint8_t>{1, 2, 3}, t);
    EXPECT_EQ(e.counters().malformed, 1U);
}

TEST_F(EngineFixture, BalloonBudgetCutsARangeThatGoesBeyondTheRequest) {
    balloon(100);
    e.on_message(balloon_response({{0x100, 512}}, false), t);
    EXPECT_EQ(e.ballooned_pages(), 100U);
    EXPECT_EQ(e.counters().excess_pages, 412U);
    EXPECT_EQ(ram.discarded_bytes, 100 * kPageSize);
}

TEST_F(EngineFixture, HotAddMapsTheRangeOffersItAndChecksTheAnswer) {
    ASSERT_TRUE(e.can_hot_add());
    ASSERT_TRUE(e.hot_add(512 * kMiB / kPageSize, t));
    ASSERT_EQ(ram.added.size(), 1U);
    EXPECT_EQ(ram.added[0], (GpaWindow{4 * kGiB, 512 * kMiB}));
    auto out = e.take_outbox();
    ASSERT_EQ(out.size(), 1U);
    auto req = read_prefix<DmHotAdd>(out[0]).value();
    EXPECT_EQ(decode_range(req.range), (PageRange{(4 * kGiB) >> 12, 131072}));
    EXPECT_EQ(req.region, req.range);
    // The guest claims more than offered: clamped.
    e.on_message(hot_add_response(200000, 1), t);
    EXPECT_EQ(e.hot_added_pages(), 131072U);
    EXPECT_EQ(e.counters().excess_pages, 200000U - 131072U);
    // The next range follows the first.
    ASSERT_TRUE(e.hot_add(128 * kMiB / kPageSize, t));
    EXPECT_EQ(ram.added.back(), (GpaWindow{4 * kGiB + 512 * kMiB, 128 * kMiB}));
    e.take_outbox();
    // A hot-add response after the transaction: ignored.
    e.on_message(hot_add_response(32768, 1), t);
    e.on_message(hot_add_response(32768, 1), t);
    EXPECT_EQ(e.hot_added_pages(), 131072U + 32768U);
    EXPECT_EQ(e.counters().unexpected, 1U);
    // Ballooning hot-added RAM is fine (it is RAM now).
    balloon(512);
    e.on_message(balloon_response({{(4 * kGiB) >> 12, 512}}, false), t);
    EXPECT_EQ(e.ballooned_pages(), 512U);
}

TEST_F(EngineFixture, HotAddFailuresTransientRetriedThenGivenUpPermanentAtOnce) {
    ASSERT_TRUE(e.hot_add(32768, t));
    e.take_outbox();
    e.on_message(hot_add_response(0, 0), t);  // transient
    EXPECT_TRUE(e.can_hot_add());
    ASSERT_TRUE(e.hot_add(32768, t));
    EXPECT_EQ(ram.added.size(), 1U);  // the same range again, not mapped twice
    auto out = e.take_outbox();
    EXPECT_EQ(decode_range(read_prefix<DmHotAdd>(out[0])->range).start, (4 * kGiB) >> 12);
    e.on_message(hot_add_response(5, 0), t);  // "failure" with pages: still a failure
    ASSERT_TRUE(e.hot_add(32768, t));
    e.take_outbox();
    e.on_message(hot_add_response(0, 0), t);
    EXPECT_FALSE(e.can_hot_add());
    EXPECT_NE(e.hot_add_disabled().find("block size"), std::string::npos);
    EXPECT_EQ(e.hot_added_pages(), 0U);
    EXPECT_EQ(e.hot_add(32768, t).error().code(), Errc::Unsupported);

    FakeRam ram2{{{0, kGiB}}, {4 * kGiB, kGiB}};
    DmEngine e2;
    e2.attach(&ram2, 0);
    e2.open();
    e2.on_message(version_request(kVersionWin10), t);
    e2.on_message(caps_report(), t);
    ASSERT_TRUE(e2.hot_add(32768, t));
    e2.on_message(hot_add_response(0, 1), t);  // permanent (hibernation, hot_add=0)
    EXPECT_FALSE(e2.can_hot_add());
    EXPECT_NE(e2.hot_add_disabled().find("for good"), std::string::npos);
}

TEST_F(EngineFixture, AbsurdStatusReportsAreKeptButNotTrusted) {
    e.on_message(status_report(1000, 2000), t);
    ASSERT_TRUE(e.last_status());
    EXPECT_TRUE(e.last_status()->plausible);
    e.on_message(status_report(~0ULL, ~0ULL), t);
    EXPECT_FALSE(e.last_status()->plausible);
    EXPECT_EQ(e.counters().implausible_reports, 1U);
    EXPECT_EQ(e.status_reports(), 2U);
    EXPECT_TRUE(e.take_outbox().empty());  // never answered
}

TEST_F(EngineFixture, AGuestThatNeverAnswersWedgesTheDeviceAndSaysSo) {
    balloon(10);
    e.tick(t + 30s);
    EXPECT_EQ(e.state(), DmState::Ballooning);
    e.tick(t + DmEngine::kBalloonTimeout + 1s);
    EXPECT_EQ(e.state(), DmState::Wedged);
    EXPECT_NE(e.problem().find("_S4"), std::string::npos);
    EXPECT_EQ(e.counters().timeouts, 1U);
    EXPECT_EQ(e.balloon(10, t).error().code(), Errc::Busy);
    // Reopening the channel starts afresh.
    e.open();
    EXPECT_EQ(e.state(), DmState::Version);
    EXPECT_TRUE(e.problem().empty());
}

TEST(BalloonEngine, WithoutRamControlNothingIsBallooned) {
    DmEngine e;
    e.attach(nullptr, 0);
    e.open();
    e.on_message(version_request(kVersionWin10), {});
    e.on_message(caps_report(), {});
    EXPECT_EQ(e.balloon(10, {}).error().code(), Errc::Unsupported);
    EXPECT_EQ(e.hot_add(10, {}).error().code(), Errc::Unsupported);
}

// ---------------------------------------------------------------------------- device

namespace {

// hv_balloon on a simulated guest: it answers requests as Linux 6.1 does (balloon in
// 2 MiB units from a pool of free guest pages, unballoon, hot-add success).
class GuestDm {
public:
    GuestDm(SimGuest& g, std::shared_ptr<BalloonDevice> dev) : g_(g) {
        relid_ = g.server().add_device(std::move(dev)).value();
        if (!g.server().connected()) g.connect();
        g.sink().take();
        // 20 KiB rings as hv_balloon's dm_ring_size: 4 data pages each way.
        ch_ = g.open_channel(relid_, 4, 4);
        g.sink().take();
    }
    void send(const std::vector<uint8_t>& m) { EXPECT_TRUE(g_.send(ch_, vmbus::kPacketDataInband, 0, m, {}, true)); }
    // Reads what the host sent and answers like hv_balloon (for requests).
    int serve() {
        int n = 0;
        while (auto p = ch_.to_guest.read()) {
            ++n;
            const auto hdr = read_prefix<DmHeader>(p->payload).value();
            received.push_back(hdr.type);
            if (hdr.type == 6) {
                const auto req = read_prefix<DmBalloon>(p->payload).value();
                // Ballooning in 2 MiB units from `next_free` upwards.
                std::vector<PageRange> ranges;
                for (uint32_t done = 0; done < req.num_pages; done += 512) {
                    ranges.push_back({next_free, std::min<uint64_t>(512, req.num_pages - done)});
                    next_free += 512;
                }
                for (size_t at = 0; at < ranges.size() || at == 0; at += kMaxRangesPerMessage) {
                    const size_t k = std::min<size_t>(kMaxRangesPerMessage, ranges.size() - at);
                    send(balloon_response({ranges.begin() + static_cast<long>(at), ranges.begin() + static_cast<long>(at + k)},
                                          at + k < ranges.size()));
                    if (ranges.empty()) break;
                }
                ballooned += req.num_pages;
            } else if (hdr.type == 8) {
                const auto req = read_prefix<DmUnballoonRequest>(p->payload).value();
                for (uint32_t i = 0; i < req.range_count; ++i) {
                    uint64_t v;
                    std::memcpy(&v, p->payload.data() + 16 + 8 * i, 8);
                    ballooned -= decode_range(v).count;
                    returned.push_back(decode_range(v));
                }
                if ((req.more_pages & 1) == 0) send(unballoon_response());
            } else if (hdr.type == 10) {
                const auto req = read_prefix<DmHotAdd>(p->payload).value();
                send(hot_add_response(static_cast<uint32_t>(decode_range(req.range).count), 1));
            }
        }
        return n;
    }
    void step() {
        for (int i = 0; i < 100; ++i) {
            g_.pump();
            if (serve() == 0) break;
        }
        g_.pump();
    }
    SimChannel& channel() { return ch_; }

    std::vector<uint16_t> received;
    std::vector<PageRange> returned;
    uint64_t next_free = 0x100;  // pages from 1 MiB
    uint64_t ballooned = 0;

private:
    SimGuest& g_;
    uint32_t relid_ = 0;
    SimChannel ch_;
};

}  // namespace

TEST(BalloonDevice, ThroughVmbusNegotiatesBalloonsToTargetAndGivesBackZeroedPages) {
    // 64 MiB of simulated guest RAM; the device believes the guest has 64 MiB.
    // The RAM control outlives the server, whose shutdown closes the device (as the
    // Machine's MemoryManager outlives its VMBus server).
    std::unique_ptr<FakeRam> ram_holder;
    SimGuest g(1, 16384);
    ram_holder = std::make_unique<FakeRam>(std::vector<GpaWindow>{{0, 64 * kMiB}}, GpaWindow{}, &g.memory());
    FakeRam& ram = *ram_holder;
    g.server().set_ram_control(&ram);
    PolicySettings s = settings(false, 32 * kMiB, 64 * kMiB);
    auto dev = std::make_shared<BalloonDevice>(kDefaultInstance, 64 * kMiB, 64 * kMiB, s);
    EXPECT_EQ(dev->offer().class_id, vmbus::Guid::parse(kClassId));
    GuestDm guest(g, dev);
    guest.send(version_request(kVersionWin10));
    guest.step();
    guest.send(caps_report());
    guest.step();
    EXPECT_EQ(dev->status().state, "ready");
    EXPECT_EQ(guest.received, (std::vector<uint16_t>{2, 4, 12}));
    guest.send(status_report(8000, 5000));
    guest.step();
    auto st = dev->status();
    EXPECT_EQ(st.status_reports, 1U);
    EXPECT_EQ(*st.committed, 5000 * kPageSize);
    EXPECT_FALSE(st.target);  // dynamic off, no explicit target: nothing moves
    EXPECT_EQ(guest.ballooned, 0U);

    // Pages the guest will balloon hold data now; afterwards they read as zeros.
    std::memset(g.ram().data() + 0x100 * kPageSize, 0xab, 8 * kMiB);
    EXPECT_FALSE(dev->set_target(16 * kMiB));  // below min
    EXPECT_FALSE(dev->set_target(128 * kMiB)); // above max
    ASSERT_TRUE(dev->set_target(48 * kMiB));
    guest.step();
    st = dev->status();
    EXPECT_EQ(st.ballooned, 16 * kMiB);
    EXPECT_EQ(st.current, 48 * kMiB);
    EXPECT_EQ(guest.ballooned, 16 * kMiB / kPageSize);
    EXPECT_EQ(ram.discarded_bytes, 16 * kMiB);
    EXPECT_EQ(g.ram()[0x100 * kPageSize], 0);
    EXPECT_EQ(g.ram()[0x100 * kPageSize + 8 * kMiB - 1], 0);
    EXPECT_EQ(st.state, "ready");

    // Back to 64 MiB: the same pages come back.
    ASSERT_TRUE(dev->set_target(64 * kMiB));
    guest.step();
    EXPECT_EQ(dev->status().ballooned, 0U);
    EXPECT_EQ(guest.ballooned, 0U);
    uint64_t back = 0;
    for (const auto& r : guest.returned) {
        EXPECT_GE(r.start, 0x100U);
        EXPECT_LE(r.end(), 0x100U + 16 * kMiB / kPageSize);
        back += r.count;
    }
    EXPECT_EQ(back, 16 * kMiB / kPageSize);
    EXPECT_EQ(guest.received.back(), 8);
}

TEST(BalloonDevice, DynamicPolicyGrowsByHotAddUpToMax) {
    FakeRam ram{{{0, 512 * kMiB}}, {4 * kGiB, 1536 * kMiB}};  // outlives the server
    SimGuest g(1, 4096);
    g.server().set_ram_control(&ram);
    PolicySettings s = settings(true, 256 * kMiB, 2 * kGiB, 20);
    auto dev = std::make_shared<BalloonDevice>(kDefaultInstance, 512 * kMiB, 2 * kGiB, s);
    GuestDm guest(g, dev);
    guest.send(version_request(kVersionWin10));
    guest.send(caps_report());
    guest.step();
    // The guest commits 1.5 GiB: target 1.8 GiB, hot-add 1.3 GiB (rounded to 128 MiB).
    guest.send(status_report(1000, 1536 * kMiB / kPageSize));
    guest.step();
    auto st = dev->status();
    EXPECT_EQ(st.hot_added, 1408 * kMiB);
    EXPECT_EQ(ram.added.size(), 1U);
    EXPECT_EQ(*st.target, 1536 * kMiB + 1536 * kMiB / 100 * 20);
    // It commits far more: only up to max (the window holds 1.5 GiB: 128 MiB more).
    guest.send(status_report(1000, 8 * kGiB / kPageSize));
    guest.step();
    st = dev->status();
    EXPECT_EQ(st.current, 2 * kGiB);
    EXPECT_EQ(*st.target, 2 * kGiB);
    EXPECT_FALSE(dev->set_policy(std::nullopt, 4 * kGiB, std::nullopt));  // max planned at start
    EXPECT_FALSE(dev->set_policy(3 * kGiB, std::nullopt, std::nullopt));  // min > max
    ASSERT_TRUE(dev->set_policy(512 * kMiB, std::nullopt, 50));
    EXPECT_EQ(dev->status().buffer_percent, 50U);
}

TEST(BalloonFactory, ParamsAreChecked) {
    EXPECT_FALSE(make_balloon({"balloon", "balloon", {}, {}}));
    EXPECT_TRUE(make_balloon({"balloon", "balloon", {{"startup", "1073741824"}}, {}}));
    EXPECT_FALSE(make_balloon({"balloon", "balloon", {{"startup", "1073741824"}, {"max", "1024"}}, {}}));
    EXPECT_FALSE(make_balloon({"balloon", "balloon", {{"startup", "1073741824"}, {"dynamic", "maybe"}}, {}}));
    EXPECT_FALSE(make_balloon({"balloon", "balloon", {{"startup", "1073741824"}, {"buffer", "5000"}}, {}}));
    EXPECT_FALSE(make_balloon({"balloon", "balloon", {{"startup", "1073741824"}, {"colour", "red"}}, {}}));
    auto d = make_balloon({"balloon", "balloon",
                           {{"startup", "1073741824"}, {"max", "2147483648"}, {"dynamic", "on"}, {"buffer", "20"}},
                           {}});
    ASSERT_TRUE(d);
    auto st = std::dynamic_pointer_cast<BalloonDevice>(*d)->status();
    EXPECT_TRUE(st.dynamic);
    EXPECT_EQ(st.min, 128 * kMiB);
    EXPECT_EQ(st.max, 2 * kGiB);
}

TEST_F(EngineFixture, ANewBootStartsAtTheStartupSize) {
    balloon(512);
    e.on_message(balloon_response({{0x100, 512}}, false), t);
    ASSERT_TRUE(e.hot_add(32768, t));
    e.on_message(hot_add_response(32768, 1), t);
    EXPECT_EQ(e.ballooned_pages(), 512U);
    EXPECT_EQ(e.hot_added_pages(), 32768U);
    // The next boot's RAM (a new MemoryManager): nothing ballooned, nothing hot-added.
    FakeRam next{{{0, kGiB}}, {4 * kGiB, 2 * kGiB}};
    e.attach(&next, 0);
    EXPECT_EQ(e.state(), DmState::Closed);
    EXPECT_EQ(e.ballooned_pages(), 0U);
    EXPECT_EQ(e.hot_added_pages(), 0U);
    EXPECT_EQ(e.hot_add_room_bytes(), 2 * kGiB);
    EXPECT_FALSE(e.last_status());
    // A reopened channel in the same boot keeps the hot-added RAM but not the balloon.
    e.open();
    e.on_message(version_request(kVersionWin10), t);
    e.on_message(caps_report(), t);
    ASSERT_TRUE(e.hot_add(32768, t));
    e.on_message(hot_add_response(32768, 1), t);
    ASSERT_TRUE(e.balloon(10, t));
    e.on_message(balloon_response({{0x100, 10}}, false), t);
    e.open();
    EXPECT_EQ(e.ballooned_pages(), 0U);
    EXPECT_EQ(e.hot_added_pages(), 32768U);
}

TEST(BalloonDevice, ApiThreadsReadAndSetWhileTheLoopWorks) {
    // API workers call status() and set_target() while the loop runs the protocol (for
    // TSan, and for the clang lock analysis of the device's mutex).
    FakeRam ram{{{0, 64 * kMiB}}};  // outlives the server
    SimGuest g(1, 16384);
    g.server().set_ram_control(&ram);
    auto dev = std::make_shared<BalloonDevice>(kDefaultInstance, 64 * kMiB, 64 * kMiB,
                                               settings(false, 32 * kMiB, 64 * kMiB));
    GuestDm guest(g, dev);
    guest.send(version_request(kVersionWin10));
    guest.send(caps_report());
    guest.step();
    std::atomic<bool> stop{false};
    std::atomic<int> sets{0};
    std::thread api([&] {
        for (int i = 0; !stop; ++i) {
            auto st = dev->status();
            EXPECT_LE(st.ballooned, 32 * kMiB);
            if (dev->set_target((i % 2 ? 48 : 64) * kMiB)) ++sets;
            std::this_thread::sleep_for(1ms);
        }
    });
    for (int i = 0; i < 200; ++i) {
        guest.send(status_report(8000, 5000));
        guest.step();
        std::this_thread::sleep_for(1ms);
    }
    stop = true;
    api.join();
    EXPECT_GT(sets.load(), 0);
    ASSERT_TRUE(dev->set_target(64 * kMiB));
    guest.step();
    EXPECT_EQ(dev->status().ballooned, 0U);
    EXPECT_EQ(dev->status().counters.malformed, 0U);
}
