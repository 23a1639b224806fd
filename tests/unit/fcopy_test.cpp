// File copy: the wire layout (include/uapi/linux/hyperv.h), the guest paths as
// hv_fcopy_daemon joins them, the protocol engine on its own, and the service against a
// simulated guest whose hv_fcopy.c + hv_fcopy_daemon write into an in-memory file system,
// hostile guests included.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "devices/ic/fcopy.hpp"
#include "devices/ic/services.hpp"
#include "support/ic_guest.hpp"
#include "support/sim_guest.hpp"
#include "support/temp_dir.hpp"

using namespace enlighten;
using namespace enlighten::ic;
using enlighten::test::GuestIc;
using enlighten::test::SimGuest;
using namespace std::chrono_literals;

namespace {

constexpr const char* kInstance = "11111111-0000-0000-0000-000000000006";

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

// A directory of host files for one test.
struct HostFiles {
    enlighten::test::TempDir tmp{"enl-fcopy"};
    const std::string& dir = tmp.path;
    std::string add(const std::string& name, const std::vector<uint8_t>& data) const {
        const std::string path = dir + "/" + name;
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(data.data()),
                                                    static_cast<std::streamsize>(data.size()));
        return path;
    }
};

// hv_fcopy.c and hv_fcopy_daemon.c over an in-memory file system.
struct FakeDaemon {
    std::set<std::string> dirs{"/root", "/srv"};
    std::map<std::string, std::vector<uint8_t>> files;
    std::string target;          // the daemon's target_fname: the file it has open
    bool running = true;         // false: no daemon, the kernel answers HV_E_FAIL
    uint64_t disk_left = UINT64_MAX;
    std::vector<uint32_t> ops;   // every operation, in order
    std::vector<std::pair<uint64_t, uint32_t>> writes;  // offset, size
    std::string path_name, file_name;
    uint32_t flags = 0;
    uint64_t file_size = 0;

    static std::string collapse(std::string p) {
        for (size_t i; (i = p.find("//")) != std::string::npos;) p.erase(i, 1);
        return p;
    }

    void handle(IcMsgHeader& hdr, std::vector<uint8_t>& buf) {
        ASSERT_EQ(hdr.icmsgtype, kIcFcopy);
        ASSERT_GE(buf.size(), kIcHeaderSize + sizeof(FcopyHeader)) << "hv_fcopy.c drops shorter packets";
        EXPECT_LE(buf.size() + 16, kFcopyMaxPacket);
        FcopyHeader h;
        std::memcpy(&h, buf.data() + kIcHeaderSize, sizeof(h));
        ops.push_back(h.operation);
        hdr.status = running ? operate(h.operation, buf) : kHvEFail;
    }

    uint32_t operate(uint32_t op, const std::vector<uint8_t>& buf) {
        const auto body = std::span(buf).subspan(kIcHeaderSize);
        switch (op) {
            case kFcopyStart: {
                EXPECT_GE(body.size(), sizeof(FcopyStart));  // and the ring's padding to 8
                EXPECT_LT(body.size(), sizeof(FcopyStart) + 8);
                FcopyStart s{};
                std::memcpy(&s, body.data(), std::min(body.size(), sizeof(s)));
                file_name = KvpService::decode_utf16(body.subspan(offsetof(FcopyStart, file_name), 520)).value_or("?");
                path_name = KvpService::decode_utf16(body.subspan(offsetof(FcopyStart, path_name), 520)).value_or("?");
                flags = s.copy_flags;
                file_size = s.file_size;
                // hv_start_fcopy: every component followed by '/' must exist, or is made.
                for (size_t q = path_name.find('/', 1); q != std::string::npos; q = path_name.find('/', q + 1)) {
                    const std::string dir = collapse(path_name.substr(0, q));
                    if (dirs.count(dir)) continue;
                    if (!(flags & kFcopyCreatePath)) return kHvEFail;
                    dirs.insert(dir);
                }
                const std::string t = collapse(path_name + "/" + file_name);
                if (files.count(t) && !(flags & kFcopyOverwrite)) return kHvErrorAlreadyExists;
                files[t].clear();
                target = t;
                return kHvSOk;
            }
            case kFcopyWrite: {
                FcopyWrite w{};
                std::memcpy(&w, body.data(), std::min(body.size(), sizeof(w)));
                writes.emplace_back(uint64_t{w.offset}, uint32_t{w.size});
                EXPECT_LE(w.size, kFcopyDataFragment);
                EXPECT_GE(body.size(), offsetof(FcopyWrite, data) + w.size) << "the daemon would write stale bytes";
                if (target.empty()) return kHvEFail;
                if (w.size > disk_left) return kHvErrorDiskFull;
                disk_left -= w.size;
                auto& f = files[target];
                if (f.size() < w.offset + w.size) f.resize(w.offset + w.size);
                std::memcpy(f.data() + w.offset, w.data, w.size);
                return kHvSOk;
            }
            case kFcopyComplete:
                EXPECT_EQ(body.size(), sizeof(FcopyHeader));
                target.clear();
                return kHvSOk;
            case kFcopyCancel:
                EXPECT_EQ(body.size(), sizeof(FcopyHeader));
                if (!target.empty()) files.erase(target);
                target.clear();
                return kHvSOk;
            default: return kHvEFail;
        }
    }
};

// A VM with the file copy service and the guest above, negotiated.
struct FcopyVm {
    SimGuest g;
    std::shared_ptr<FcopyService> svc;
    FakeDaemon daemon;
    std::unique_ptr<GuestIc> guest;
    // A hostile guest's changes to the daemon's answer (after it acted on the request).
    std::function<void(IcMsgHeader&, std::vector<uint8_t>&, uint32_t op)> tamper;
    explicit FcopyVm(FcopyService::Options o = {}) : svc(std::make_shared<FcopyService>(kInstance, o)) {
        guest = std::make_unique<GuestIc>(g, svc, std::vector<uint32_t>{0x10001},
                                          [this](IcMsgHeader& h, std::vector<uint8_t>& b) {
                                              daemon.handle(h, b);
                                              if (tamper) tamper(h, b, daemon.ops.empty() ? 99 : daemon.ops.back());
                                          });
        guest->step();
    }
    Result<FcopyService::Summary> copy(const std::string& src, const std::string& dst, bool overwrite = false,
                                       bool create_path = false) {
        return guest->while_serving([&] { return svc->copy({src, dst, overwrite, create_path}); });
    }
};

// An engine's answer: the request echoed with `status`, as the guest sends it back.
IcResponse echo(const FcopyEngine& e, const FcopyEngine::Request& r, uint32_t status = kHvSOk) {
    const std::vector<uint8_t> data(r.length, 0xab);
    return IcResponse{status, kIcFcopy, e.body(r, data)};
}

}  // namespace

// ---------------------------------------------------------------------------- wire

TEST(FcopyWire, StartCarriesUtf16NamesFlagsAndSize) {
    auto e = FcopyEngine::create("/srv/in\xc3\xa9/data.bin", 123456789012ULL, true, true).value();
    auto r = e.next().value();
    EXPECT_EQ(r.op, kFcopyStart);
    const auto body = e.body(r, {});
    ASSERT_EQ(body.size(), 1088u);
    uint32_t u32;
    std::memcpy(&u32, body.data(), 4);
    EXPECT_EQ(u32, kFcopyStart);
    // file_name at 36, path_name at 556: UTF-16LE with a NUL.
    const uint8_t file[] = {'d', 0, 'a', 0, 't', 0, 'a', 0, '.', 0, 'b', 0, 'i', 0, 'n', 0, 0, 0};
    EXPECT_EQ(std::memcmp(body.data() + 36, file, sizeof(file)), 0);
    const uint8_t path[] = {'/', 0, 's', 0, 'r', 0, 'v', 0, '/', 0, 'i', 0, 'n', 0, 0xe9, 0, '/', 0, 0, 0};
    EXPECT_EQ(std::memcmp(body.data() + 556, path, sizeof(path)), 0);
    std::memcpy(&u32, body.data() + 1076, 4);
    EXPECT_EQ(u32, kFcopyOverwrite | kFcopyCreatePath);
    uint64_t size;
    std::memcpy(&size, body.data() + 1080, 8);
    EXPECT_EQ(size, 123456789012ULL);
}

TEST(FcopyWire, WritesCarryOnlyTheirDataAndTwoAnswersFitTheGuestsRing) {
    auto e = FcopyEngine::create("/root/x", 10000, false, false).value();
    auto start = e.next().value();
    ASSERT_TRUE(e.on_answer(start.tag, echo(e, start)));
    auto w = e.next().value();
    ASSERT_EQ(w.op, kFcopyWrite);
    EXPECT_EQ(w.length, kFcopyChunk);
    const auto data = random_bytes(w.length, 1);
    const auto body = e.body(w, data);
    ASSERT_EQ(body.size(), 52 + kFcopyChunk);
    uint64_t offset;
    uint32_t size;
    std::memcpy(&offset, body.data() + 40, 8);
    std::memcpy(&size, body.data() + 48, 4);
    EXPECT_EQ(offset, 0u);
    EXPECT_EQ(size, kFcopyChunk);
    EXPECT_EQ(std::memcmp(body.data() + 52, data.data(), data.size()), 0);
    // The packet as it lies in the ring: 16 + 28 + 52 + 6016 = 6112, and the trailer.
    EXPECT_EQ(fcopy_write_ring_bytes(kFcopyChunk), 6120u);
    EXPECT_LT(2 * fcopy_write_ring_bytes(kFcopyChunk), kFcopyGuestRingData);
    EXPECT_GE(2 * fcopy_write_ring_bytes(kFcopyDataFragment), kFcopyGuestRingData);  // why not 6144
    auto tail = e.next().value();
    EXPECT_EQ(tail.offset, kFcopyChunk);
    EXPECT_EQ(tail.length, 10000 - kFcopyChunk);
    EXPECT_EQ(e.body(tail, random_bytes(tail.length, 2)).size(), 52 + tail.length);
}

TEST(FcopyWire, GuestPathsSplitAsTheDaemonJoinsThem) {
    auto t = split_guest_path("/root/data.bin").value();
    EXPECT_EQ(t.directory, "/root/");
    EXPECT_EQ(t.file, "data.bin");
    t = split_guest_path("/x").value();
    EXPECT_EQ(t.directory, "/");
    EXPECT_EQ(t.file, "x");
    t = split_guest_path("/a//b/c d").value();
    EXPECT_EQ(t.directory, "/a//b/");
    EXPECT_EQ(t.file, "c d");
    for (const char* bad : {"", "root/x", "./x", "/root/", "/", "/a/..", "/a/.", "/a/\xff", "/a\xc3/b"})
        EXPECT_FALSE(split_guest_path(bad)) << bad;
    EXPECT_TRUE(split_guest_path(std::string("/a/b\0c", 6)).error().is(Errc::Invalid));
    // hv_fcopy.c converts each name into 259 bytes of UTF-8 and cuts what is longer.
    EXPECT_TRUE(split_guest_path("/r/" + std::string(259, 'f')));
    EXPECT_FALSE(split_guest_path("/r/" + std::string(260, 'f')));
    EXPECT_TRUE(split_guest_path("/" + std::string(257, 'd') + "/f"));
    EXPECT_FALSE(split_guest_path("/" + std::string(258, 'd') + "/f"));
    std::string euro;  // 87 x 3 bytes = 261 bytes, 87 UTF-16 units
    for (int i = 0; i < 87; ++i) euro += "\xe2\x82\xac";
    auto why = split_guest_path("/r/" + euro);
    ASSERT_FALSE(why);
    EXPECT_NE(why.error().message().find("261 bytes"), std::string::npos) << why.error().message();
}

TEST(FcopyWire, AnswersAreCheckedAndStatusesNamed) {
    FcopyHeader h{};
    h.operation = kFcopyWrite;
    const auto b = as_bytes(h);
    const std::vector<uint8_t> hdr(b.begin(), b.end());
    EXPECT_EQ(fcopy_answer_status(kFcopyWrite, {kHvErrorDiskFull, kIcFcopy, hdr}).value(), kHvErrorDiskFull);
    EXPECT_FALSE(fcopy_answer_status(kFcopyStart, {0, kIcFcopy, hdr}));               // another operation
    EXPECT_FALSE(fcopy_answer_status(kFcopyWrite, {0, kIcKvpExchange, hdr}));          // another message type
    EXPECT_FALSE(fcopy_answer_status(kFcopyWrite, {0, kIcFcopy, {hdr.begin(), hdr.end() - 1}}));  // short
    EXPECT_FALSE(fcopy_answer_status(kFcopyWrite, {0, kIcFcopy, {}}));
    EXPECT_EQ(fcopy_status_text(kHvErrorAlreadyExists), "HV_ERROR_ALREADY_EXISTS (0x80070050)");
    EXPECT_EQ(fcopy_status_text(kHvErrorDiskFull), "HV_ERROR_DISK_FULL (0x80070070)");
    EXPECT_EQ(fcopy_status_text(kHvEFail), "HV_E_FAIL (0x80004005)");
    EXPECT_EQ(fcopy_status_text(0xdeadbeef), "status 0xdeadbeef");
}

// ---------------------------------------------------------------------------- engine

namespace {

// Drives an engine to the end, answering every request with `status_of(request)` in the
// order sent (or newest first); returns the requests.
std::vector<FcopyEngine::Request> drive(FcopyEngine& e, const std::function<uint32_t(const FcopyEngine::Request&)>& status_of,
                                        bool newest_first = false) {
    std::vector<FcopyEngine::Request> seen;
    std::vector<FcopyEngine::Request> open;
    for (int guard = 0; guard < 100000 && !e.finished(); ++guard) {
        while (auto r = e.next()) {
            seen.push_back(*r);
            open.push_back(*r);
            EXPECT_LE(open.size(), kFcopyDepth);
        }
        if (open.empty()) break;
        auto it = newest_first ? open.end() - 1 : open.begin();
        const auto r = *it;
        open.erase(it);
        EXPECT_TRUE(e.on_answer(r.tag, echo(e, r, status_of(r))));
    }
    EXPECT_TRUE(e.finished());
    return seen;
}

std::vector<uint32_t> ops_of(const std::vector<FcopyEngine::Request>& rs) {
    std::vector<uint32_t> v;
    for (const auto& r : rs) v.push_back(r.op);
    return v;
}

auto ok_all = [](const FcopyEngine::Request&) { return kHvSOk; };

}  // namespace

TEST(FcopyEngine, AnEmptyFileIsStartThenComplete) {
    auto e = FcopyEngine::create("/root/empty", 0, false, false).value();
    EXPECT_EQ(ops_of(drive(e, ok_all)), (std::vector<uint32_t>{kFcopyStart, kFcopyComplete}));
    EXPECT_TRUE(e.outcome());
    EXPECT_EQ(e.bytes_written(), 0u);
}

TEST(FcopyEngine, ChunksAreContiguousTwoInFlightAndCompleteComesLast) {
    for (const uint64_t size : {uint64_t{1}, uint64_t{kFcopyChunk}, uint64_t{kFcopyChunk + 1}, uint64_t{5 * kFcopyChunk + 77}}) {
        for (const bool newest_first : {false, true}) {
            auto e = FcopyEngine::create("/root/f", size, false, false).value();
            const auto seen = drive(e, ok_all, newest_first);
            ASSERT_TRUE(e.outcome()) << e.outcome().error().message();
            ASSERT_GE(seen.size(), 3u);
            EXPECT_EQ(seen.front().op, kFcopyStart);
            EXPECT_EQ(seen.back().op, kFcopyComplete);
            uint64_t at = 0;
            for (size_t i = 1; i + 1 < seen.size(); ++i) {
                EXPECT_EQ(seen[i].op, kFcopyWrite);
                EXPECT_EQ(seen[i].offset, at);
                EXPECT_GT(seen[i].length, 0u);
                EXPECT_LE(seen[i].length, kFcopyChunk);
                at += seen[i].length;
            }
            EXPECT_EQ(at, size);
            EXPECT_EQ(e.bytes_written(), size);
            EXPECT_EQ(seen.size(), 2 + (size + kFcopyChunk - 1) / kFcopyChunk);
        }
    }
}

TEST(FcopyEngine, NothingFollowsAStartUntilItIsAnswered) {
    auto e = FcopyEngine::create("/root/f", 100000, false, false).value();
    auto s = e.next().value();
    EXPECT_FALSE(e.next());
    EXPECT_FALSE(e.next());
    ASSERT_TRUE(e.on_answer(s.tag, echo(e, s)));
    auto w1 = e.next().value();
    auto w2 = e.next().value();
    EXPECT_FALSE(e.next());  // two in flight
    EXPECT_EQ(w1.op, kFcopyWrite);
    EXPECT_EQ(w2.offset, w1.length);
    EXPECT_FALSE(e.on_answer(12345, echo(e, w1)));  // not a request in flight: ignored
    EXPECT_FALSE(e.on_answer(s.tag, echo(e, s)));   // answered already
    EXPECT_EQ(e.in_flight().size(), 2u);
}

TEST(FcopyEngine, ARefusedStartEndsTheCopyWithoutCancel) {
    auto e = FcopyEngine::create("/root/f", 100, false, false).value();
    const auto seen = drive(e, [](const auto&) { return kHvErrorAlreadyExists; });
    EXPECT_EQ(ops_of(seen), (std::vector<uint32_t>{kFcopyStart}));
    const auto why = e.outcome();
    ASSERT_FALSE(why);
    EXPECT_TRUE(why.error().is(Errc::Failed));
    EXPECT_EQ(why.error().message(),
              "/root/f exists in the guest and overwrite is off (the guest answered HV_ERROR_ALREADY_EXISTS (0x80070050))");

    auto nodir = FcopyEngine::create("/srv/new/f", 100, false, false).value();
    drive(nodir, [](const auto&) { return kHvEFail; });
    EXPECT_NE(nodir.outcome().error().message().find("either its directory /srv/new/ does not exist (create_path is off)"),
              std::string::npos)
        << nodir.outcome().error().message();
    EXPECT_NE(nodir.outcome().error().message().find("hv_fcopy_daemon is not running"), std::string::npos);
}

TEST(FcopyEngine, AFailedWriteWaitsForTheOtherThenCancels) {
    auto e = FcopyEngine::create("/root/f", 10 * kFcopyChunk, false, false).value();
    const auto seen = drive(e, [](const FcopyEngine::Request& r) {
        return r.op == kFcopyWrite && r.offset == 3 * kFcopyChunk ? kHvErrorDiskFull : kHvSOk;
    });
    // START, writes 0..3 (3 failing, 4 already in flight), then CANCEL; no COMPLETE.
    ASSERT_EQ(seen.size(), 7u);
    EXPECT_EQ(seen[5].offset, 4 * kFcopyChunk);
    EXPECT_EQ(seen[6].op, kFcopyCancel);
    const auto why = e.outcome();
    ASSERT_FALSE(why);
    EXPECT_EQ(why.error().message(),
              fmt::format("the guest's disk is full: writing /root/f at offset {} failed (HV_ERROR_DISK_FULL "
                          "(0x80070070)); CANCEL_FCOPY was sent and the guest removed the partial file",
                          3 * kFcopyChunk));
    EXPECT_EQ(e.bytes_written(), 4 * kFcopyChunk);  // 0..2 and 4
}

namespace {

// An engine whose START was answered, with its first two WRITEs in flight.
struct Writing {
    FcopyEngine e = FcopyEngine::create("/root/f", 3 * kFcopyChunk, false, false).value();
    FcopyEngine::Request start, w1, w2;
    Writing() {
        start = e.next().value();
        e.on_answer(start.tag, echo(e, start));
        w1 = e.next().value();
        w2 = e.next().value();
    }
};

}  // namespace

TEST(FcopyEngine, TimeoutsCancelAndAClosedChannelCannot) {
    Writing t;
    auto& [e, s, w1, w2] = t;
    e.on_answer(w1.tag, std::unexpected(Error("fcopy: no response from the guest", Errc::Timeout)));
    EXPECT_FALSE(e.next());  // w2 still in flight: nothing, not even CANCEL
    e.on_answer(w2.tag, echo(e, w2));
    auto c = e.next().value();
    EXPECT_EQ(c.op, kFcopyCancel);
    e.on_answer(c.tag, std::unexpected(Error("fcopy: no response from the guest", Errc::Timeout)));
    ASSERT_TRUE(e.finished());
    EXPECT_TRUE(e.outcome().error().is(Errc::Timeout));
    EXPECT_NE(e.outcome().error().message().find("did not answer WRITE_TO_FILE at offset 0"), std::string::npos);
    EXPECT_NE(e.outcome().error().message().find("not answered: the partial file may remain"), std::string::npos);

    Writing c2;
    auto& closed = c2.e;
    closed.on_answer(c2.w2.tag, std::unexpected(Error("the channel closed", Errc::Closed)));
    closed.on_answer(c2.w1.tag, std::unexpected(Error("the channel closed", Errc::Closed)));
    EXPECT_FALSE(closed.next());
    ASSERT_TRUE(closed.finished());
    EXPECT_TRUE(closed.outcome().error().is(Errc::Closed));
    EXPECT_NE(closed.outcome().error().message().find("the partial file may remain in the guest"), std::string::npos);
}

TEST(FcopyEngine, MalformedAnswersAndHostReadErrorsFailTheCopy) {
    Writing t;
    auto& [e, s, w1, w2] = t;
    // The "answer" to w1 echoes a START, with status OK.
    e.on_answer(w1.tag, echo(e, s));
    e.not_sent(w2.tag, Error("reading the host file: Input/output error", Errc::Io));
    auto c = e.next().value();
    EXPECT_EQ(c.op, kFcopyCancel);
    e.on_answer(c.tag, echo(e, c));
    EXPECT_NE(e.outcome().error().message().find("the guest's answer to WRITE_TO_FILE at offset 0 for /root/f is "
                                                 "malformed: it answers operation 0, not 1"),
              std::string::npos)
        << e.outcome().error().message();
    EXPECT_EQ(e.bytes_written(), 0u);
}

TEST(FcopyEngine, NoCancelFollowsAComplete) {
    for (const bool timeout : {false, true}) {
        auto e = FcopyEngine::create("/root/f", 5, false, false).value();
        const auto seen = drive(e, [](const FcopyEngine::Request& r) { return r.op == kFcopyComplete ? kHvEFail : kHvSOk; });
        EXPECT_EQ(ops_of(seen), (std::vector<uint32_t>{kFcopyStart, kFcopyWrite, kFcopyComplete}));
        if (timeout) {  // the same with no answer to COMPLETE
            e = FcopyEngine::create("/root/f", 5, false, false).value();
            for (int i = 0; i < 2; ++i) {
                auto r = e.next().value();
                e.on_answer(r.tag, echo(e, r));
            }
            auto c = e.next().value();
            ASSERT_EQ(c.op, kFcopyComplete);
            e.on_answer(c.tag, std::unexpected(Error("fcopy: no response from the guest", Errc::Timeout)));
            EXPECT_FALSE(e.next());
            ASSERT_TRUE(e.finished());
        }
        EXPECT_NE(e.outcome().error().message().find("every byte was written, but the guest did not confirm closing"),
                  std::string::npos)
            << e.outcome().error().message();
    }
}

TEST(FcopyEngine, RequestsThatCouldNotBeSentEndItWithoutLeavingItStuck) {
    auto e = FcopyEngine::create("/root/f", 10, false, false).value();
    auto s = e.next().value();
    e.not_sent(s.tag, Error("the VM is not running", Errc::Closed));
    EXPECT_FALSE(e.next());  // no CANCEL: the guest never saw a START
    ASSERT_TRUE(e.finished());
    EXPECT_TRUE(e.outcome().error().is(Errc::Closed));

    Writing t;
    t.e.on_answer(t.w1.tag, echo(t.e, t.w1, kHvEFail));
    t.e.on_answer(t.w2.tag, echo(t.e, t.w2));
    auto c = t.e.next().value();
    ASSERT_EQ(c.op, kFcopyCancel);
    t.e.not_sent(c.tag, Error("the ring is gone", Errc::Closed));
    ASSERT_TRUE(t.e.finished());
    EXPECT_NE(t.e.outcome().error().message().find("HV_E_FAIL"), std::string::npos) << t.e.outcome().error().message();
    EXPECT_NE(t.e.outcome().error().message().find("; the partial file may remain in the guest"), std::string::npos);
}

// ---------------------------------------------------------------------------- service

TEST(FcopyService, NegotiatesFileCopy11) {
    FcopyVm vm;
    EXPECT_EQ(vm.svc->state(), IcState::Ready);
    EXPECT_EQ(vm.guest->negotiated, 0x10001u);
    EXPECT_EQ(vm.svc->offer().class_id, vmbus::Guid::parse(kFcopyClass));
    EXPECT_EQ(vm.svc->offer().max_packet_to_guest, 8192u);
}

TEST(FcopyService, CopiesFilesOfAnySizeWithTwoRequestsInFlight) {
    FcopyVm vm;
    vm.guest->answers_per_serve = 1;  // the daemon takes one request at a time
    HostFiles host;
    for (const size_t size : {size_t{0}, size_t{1}, size_t{kFcopyChunk}, size_t{300 * 1024 + 3}}) {
        const auto data = random_bytes(size, static_cast<uint32_t>(size));
        const std::string dst = fmt::format("/srv/f{}.bin", size);
        auto r = vm.copy(host.add(fmt::format("f{}", size), data), dst);
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_EQ(r->bytes, size);
        ASSERT_TRUE(vm.daemon.files.count(dst));
        EXPECT_EQ(vm.daemon.files[dst], data) << size;
        EXPECT_EQ(vm.daemon.path_name, "/srv/");
        EXPECT_EQ(vm.daemon.file_name, fmt::format("f{}.bin", size));
        EXPECT_EQ(vm.daemon.file_size, size);
        EXPECT_EQ(vm.daemon.ops.back(), kFcopyComplete);
        EXPECT_TRUE(vm.daemon.target.empty());  // closed
        const auto p = vm.svc->progress();
        EXPECT_EQ(p.state, FcopyService::State::Done);
        EXPECT_EQ(p.bytes_total, size);
        EXPECT_EQ(p.bytes_written, size);
        EXPECT_EQ(p.error, "");
    }
    EXPECT_EQ(vm.guest->max_unanswered, kFcopyDepth);
    for (const auto& [offset, size] : vm.daemon.writes) EXPECT_LE(size, kFcopyChunk);
}

TEST(FcopyService, ExistingFilesAndMissingDirectoriesAreRefusedUnlessAllowed) {
    FcopyVm vm;
    HostFiles host;
    const auto src = host.add("a", random_bytes(10000, 7));
    vm.daemon.files["/root/a"] = {1, 2, 3};
    auto r = vm.copy(src, "/root/a");
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Failed));
    EXPECT_NE(r.error().message().find("HV_ERROR_ALREADY_EXISTS"), std::string::npos) << r.error().message();
    EXPECT_EQ(vm.daemon.files["/root/a"], (std::vector<uint8_t>{1, 2, 3}));
    EXPECT_EQ(vm.svc->progress().state, FcopyService::State::Failed);
    EXPECT_EQ(vm.svc->progress().error, r.error().message());
    ASSERT_TRUE(vm.copy(src, "/root/a", true));
    EXPECT_EQ(vm.daemon.files["/root/a"].size(), 10000u);

    r = vm.copy(src, "/srv/new/deeper/a");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("HV_E_FAIL (0x80004005)"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("/srv/new/deeper/ does not exist (create_path is off)"), std::string::npos);
    EXPECT_FALSE(vm.daemon.dirs.count("/srv/new"));
    ASSERT_TRUE(vm.copy(src, "/srv/new/deeper/a", false, true));
    EXPECT_TRUE(vm.daemon.dirs.count("/srv/new/deeper"));
    EXPECT_EQ(vm.daemon.files["/srv/new/deeper/a"].size(), 10000u);
    EXPECT_EQ(vm.daemon.flags, kFcopyCreatePath);
}

TEST(FcopyService, ADiskFullMidwayCancelsAndTheGuestRemovesThePartialFile) {
    FcopyVm vm;
    HostFiles host;
    vm.daemon.disk_left = 3 * kFcopyChunk + 100;
    auto r = vm.copy(host.add("big", random_bytes(20 * kFcopyChunk, 3)), "/root/big");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("the guest's disk is full"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("HV_ERROR_DISK_FULL"), std::string::npos);
    EXPECT_NE(r.error().message().find("removed the partial file"), std::string::npos);
    EXPECT_EQ(vm.daemon.ops.back(), kFcopyCancel);
    EXPECT_FALSE(vm.daemon.files.count("/root/big"));
    EXPECT_LT(vm.svc->progress().bytes_written, vm.svc->progress().bytes_total);
}

TEST(FcopyService, WithoutTheDaemonEveryRequestFails) {
    FcopyVm vm;
    vm.daemon.running = false;
    HostFiles host;
    auto r = vm.copy(host.add("a", {1}), "/root/a");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("hv_fcopy_daemon is not running in the guest"), std::string::npos);
    EXPECT_EQ(vm.daemon.ops, (std::vector<uint32_t>{kFcopyStart}));
}

TEST(FcopyService, HostFileErrorsAndBadDestinationsSendNothing) {
    FcopyVm vm;
    HostFiles host;
    const int before = vm.guest->requests;
    auto r = vm.copy(host.dir + "/missing", "/root/a");
    EXPECT_TRUE(r.error().is(Errc::NotFound)) << r.error().message();
    EXPECT_EQ(r.error().message(), "no host file " + host.dir + "/missing");
    r = vm.copy(host.dir, "/root/a");
    EXPECT_TRUE(r.error().is(Errc::Invalid));
    EXPECT_NE(r.error().message().find("is not a regular file"), std::string::npos);
    const std::string fifo = host.dir + "/fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    r = vm.copy(fifo, "/root/a");  // does not block on the open
    EXPECT_NE(r.error().message().find("is not a regular file"), std::string::npos);
    r = vm.copy(host.add("a", {1}), "root/a");
    EXPECT_TRUE(r.error().is(Errc::Invalid));
    EXPECT_NE(r.error().message().find("not an absolute path"), std::string::npos);
    r = vm.copy(host.add("a", {1}), "/root/");
    EXPECT_TRUE(r.error().is(Errc::Invalid));
    vm.guest->step();
    EXPECT_EQ(vm.guest->requests, before);
    EXPECT_TRUE(vm.daemon.ops.empty());
}

TEST(FcopyService, NotConnectedIsRefused) {
    SimGuest g;
    auto svc = std::make_shared<FcopyService>(kInstance);
    g.server().add_device(svc).value();
    g.connect();  // offered, never opened
    HostFiles host;
    auto r = svc->copy({host.add("a", {1}), "/root/a", false, false});
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Closed));
    EXPECT_NE(r.error().message().find("not connected"), std::string::npos);
}

TEST(FcopyService, OneCopyAtATime) {
    FcopyVm vm;
    HostFiles host;
    const auto src = host.add("a", random_bytes(5 * kFcopyChunk, 9));
    vm.guest->hold = true;  // the daemon is slow: the first copy waits on its START
    std::atomic<bool> done{false};
    Result<FcopyService::Summary> first = fail("not run");
    std::thread t([&] {
        first = vm.svc->copy({src, "/root/first", false, false});
        done = true;
    });
    while (vm.svc->progress().state != FcopyService::State::Running || vm.guest->requests < 2) {
        vm.guest->step();
        std::this_thread::sleep_for(1ms);
    }
    auto second = vm.svc->copy({src, "/root/second", false, false});
    ASSERT_FALSE(second);
    EXPECT_TRUE(second.error().is(Errc::Busy));
    EXPECT_NE(second.error().message().find("a file copy is running already: " + src + " to /root/first"),
              std::string::npos)
        << second.error().message();
    vm.guest->hold = false;
    while (!done) {
        vm.guest->step();
        std::this_thread::sleep_for(1ms);
    }
    t.join();
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_FALSE(vm.daemon.files.count("/root/second"));
    EXPECT_TRUE(vm.copy(src, "/root/second"));
}

// ---------------------------------------------------------------------------- hostile guests

TEST(FcopyServiceHostile, AGuestThatNeverAnswersTimesOutAndTheServiceStaysUsable) {
    FcopyVm vm(FcopyService::Options{300ms, 200ms});
    HostFiles host;
    const auto src = host.add("a", random_bytes(4 * kFcopyChunk, 5));
    vm.guest->silent = true;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = vm.copy(src, "/root/a");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Timeout)) << r.error().message();
    EXPECT_NE(r.error().message().find("the guest did not answer START_FILE_COPY for /root/a in time"), std::string::npos)
        << r.error().message();
    EXPECT_NE(r.error().message().find("CANCEL_FCOPY was sent but not answered"), std::string::npos);
    EXPECT_EQ(vm.svc->progress().state, FcopyService::State::Failed);
    // It comes back: the next copy works.
    vm.guest->silent = false;
    ASSERT_TRUE(vm.copy(src, "/root/a")) << "after the timeout";
    EXPECT_EQ(vm.daemon.files["/root/a"].size(), 4 * kFcopyChunk);
}

TEST(FcopyServiceHostile, AGuestThatStopsAnsweringMidwayTimesOutAndIsSentCancel) {
    FcopyVm vm(FcopyService::Options{300ms, 200ms});
    HostFiles host;
    int writes = 0;
    vm.tamper = [&](IcMsgHeader&, std::vector<uint8_t>&, uint32_t op) {
        if (op == kFcopyWrite && ++writes == 2) vm.guest->silent = true;  // hangs after this answer
    };
    auto r = vm.copy(host.add("a", random_bytes(8 * kFcopyChunk, 5)), "/root/a");
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Timeout)) << r.error().message();
    EXPECT_NE(r.error().message().find(fmt::format("did not answer WRITE_TO_FILE at offset {}", 2 * kFcopyChunk)),
              std::string::npos)
        << r.error().message();
    EXPECT_NE(r.error().message().find("CANCEL_FCOPY was sent but not answered"), std::string::npos);
    EXPECT_EQ(vm.guest->requests, 2 + 4 + 1);  // negotiation, START, 4 WRITEs (2 unanswered), CANCEL
    EXPECT_EQ(vm.svc->progress().bytes_written, 2 * kFcopyChunk);
}

TEST(FcopyServiceHostile, BadStatusesShortAndMismatchedAnswersFailTheCopyWithCancel) {
    struct Case {
        const char* name;
        std::function<void(IcMsgHeader&, std::vector<uint8_t>&)> change;  // to the 2nd WRITE's answer
        const char* error_part;
    };
    const Case cases[] = {
        {"an unknown status", [](IcMsgHeader& h, std::vector<uint8_t>&) { h.status = 0xdeadbeef; },
         "(status 0xdeadbeef)"},
        {"no body", [](IcMsgHeader&, std::vector<uint8_t>& b) { b.resize(kIcHeaderSize); },
         "is malformed: its body has 4 bytes"},  // the ring's padding to 8
        {"a cut header", [](IcMsgHeader&, std::vector<uint8_t>& b) { b.resize(kIcHeaderSize + 20); },
         "is malformed: its body has 20 bytes"},
        {"another operation", [](IcMsgHeader&, std::vector<uint8_t>& b) { b[kIcHeaderSize] = kFcopyComplete; },
         "is malformed: it answers operation 2, not 1"},
        {"another message type", [](IcMsgHeader& h, std::vector<uint8_t>&) { h.icmsgtype = kIcKvpExchange; },
         "is malformed: it is a message of type 2"},
    };
    for (const auto& c : cases) {
        FcopyVm vm;
        HostFiles host;
        int writes = 0;
        vm.tamper = [&](IcMsgHeader& h, std::vector<uint8_t>& b, uint32_t op) {
            if (op == kFcopyWrite && ++writes == 2) c.change(h, b);
        };
        auto r = vm.copy(host.add("a", random_bytes(6 * kFcopyChunk, 5)), "/root/a");
        ASSERT_FALSE(r) << c.name;
        EXPECT_TRUE(r.error().is(Errc::Failed)) << c.name;
        EXPECT_NE(r.error().message().find(c.error_part), std::string::npos) << c.name << ": " << r.error().message();
        EXPECT_NE(r.error().message().find("removed the partial file"), std::string::npos) << c.name;
        EXPECT_EQ(vm.daemon.ops.back(), kFcopyCancel) << c.name;
        EXPECT_EQ(std::count(vm.daemon.ops.begin(), vm.daemon.ops.end(), kFcopyComplete), 0) << c.name;
        EXPECT_FALSE(vm.daemon.files.count("/root/a")) << c.name;
        // The service is fine for the next copy.
        vm.tamper = nullptr;
        EXPECT_TRUE(vm.copy(host.add("b", {1, 2, 3}), "/root/b")) << c.name;
    }
}

TEST(FcopyServiceHostile, UnknownIdsDuplicatesAndRepliesWithoutRequestsAreIgnored) {
    FcopyVm vm(FcopyService::Options{2s, 1s});
    HostFiles host;
    auto& ch = vm.guest->channel();
    auto reply = [&](uint64_t trans, std::vector<uint8_t> payload) {
        if (payload.size() >= kIcHeaderSize) payload[sizeof(PipeHeader) + 17] = kIcFlagTransaction | kIcFlagResponse;
        vm.g.pump();  // the host drains its ring meanwhile
        EXPECT_TRUE(vm.g.send(ch, vmbus::kPacketDataInband, trans, payload, {}, true));
    };
    // Before any copy: answers to nothing, one of them shorter than an IC header.
    std::vector<uint8_t> bare(kIcHeaderSize + sizeof(FcopyHeader), 0);
    bare[sizeof(PipeHeader) + 4] = kIcFcopy;
    reply(9999, bare);
    reply(0, std::vector<uint8_t>(8, 0xff));
    reply(1, std::vector<uint8_t>(2000, 0x5a));
    vm.g.pump();
    ASSERT_EQ(vm.svc->state(), IcState::Ready);
    // During the copy: a forged OK with an id no request has comes with each WRITE's answer.
    uint64_t fake_id = 1u << 20;
    vm.tamper = [&](IcMsgHeader& h, std::vector<uint8_t>& b, uint32_t op) {
        if (op != kFcopyWrite) return;
        auto forged = b;
        IcMsgHeader fh = h;
        fh.status = kHvSOk;
        std::memcpy(forged.data() + sizeof(PipeHeader), &fh, sizeof(fh));
        reply(fake_id++, forged);
    };
    const auto data = random_bytes(9 * kFcopyChunk + 1, 13);
    ASSERT_TRUE(vm.copy(host.add("a", data), "/root/a"));
    EXPECT_EQ(vm.daemon.files["/root/a"], data);
}

TEST(FcopyServiceHostile, AnAnswerLongerThanTheChannelAllowsIsDroppedAndTheCopyFailsNotTheChannel) {
    FcopyVm vm(FcopyService::Options{500ms, 200ms});
    HostFiles host;
    int writes = 0;
    vm.tamper = [&](IcMsgHeader&, std::vector<uint8_t>& b, uint32_t op) {
        if (op == kFcopyWrite && ++writes == 1) {
            b.resize(kFcopyMaxPacket);  // 8192 + 16: over the limit
            vm.guest->silent = true;    // and nothing more until the test says so
        }
    };
    auto r = vm.copy(host.add("a", random_bytes(4 * kFcopyChunk, 5)), "/root/a");
    ASSERT_FALSE(r);
    // The ring's framing holds, so the oversized answer is dropped as malformed (only broken
    // framing fails a channel): the copy fails for want of an answer, the channel stays open.
    EXPECT_NE(r.error().message().find("did not answer WRITE_TO_FILE"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("the partial file may remain in the guest"), std::string::npos);
    EXPECT_NE(vm.svc->state(), IcState::Closed);
    // A guest that answers again gets the next copy through the same channel.
    vm.guest->silent = false;
    const auto data = random_bytes(3 * kFcopyChunk + 7, 6);
    auto again = vm.copy(host.add("b", data), "/root/b");
    ASSERT_TRUE(again) << again.error().message();
}
