// The VHDX backend (backends/disk/vhdx) and the image tool (backends/disk/image_tool): round
// trips through the Queue interface, interop with qemu-img both ways, 4K sectors, block sizes,
// differencing chains and merge, discard, log replay, crash consistency under SIGKILL, and
// every hostile-image case of docs/vhdx.md (each built by patching a good image byte-wise).
// Tests that need qemu-img fail when it is missing (scripts/setup installs qemu-utils).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "backends/disk/disk.hpp"
#include "backends/disk/image_tool.hpp"
#include "backends/disk/vhdx/format.hpp"
#include "backends/disk/vhdx/image.hpp"
#include "backends/disk/vhdx/vhdx.hpp"

using namespace enlighten;
using namespace enlighten::disk;
namespace vx = enlighten::disk::vhdx;

namespace {

constexpr uint64_t MiB = 1024 * 1024;

struct TempDir {
    std::string path;
    TempDir() {
        std::string base = "/var/tmp";
        if (const char* t = std::getenv("TMPDIR"); t && *t) base = t;
        std::string tmpl = base + "/vhdx_test.XXXXXX";
        if (!::mkdtemp(tmpl.data())) tmpl = "/tmp/vhdx_test." + std::to_string(::getpid());
        std::filesystem::create_directories(tmpl);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    [[nodiscard]] std::string file(const std::string& name) const { return path + "/" + name; }
};

// Runs a shell command; its exit status and output.
std::pair<int, std::string> sh(const std::string& cmd) {
    std::string out;
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return {-1, ""};
    char buf[4096];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = ::pclose(p);
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// qemu-img must be there (scripts/setup installs qemu-utils): a missing one fails the test.
bool have_qemu_img() {
    static const bool ok = sh("qemu-img --version").first == 0;
    return ok;
}
#define REQUIRE_QEMU_IMG() ASSERT_TRUE(have_qemu_img()) << "qemu-img is missing: run scripts/setup (Debian package qemu-utils)"

std::vector<uint8_t> pattern(size_t len, uint32_t seed) {
    std::vector<uint8_t> v(len);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
}

// Synchronous I/O through a Queue.
struct Sync {
    std::unique_ptr<Queue> q;
    explicit Sync(Disk& d) {
        auto r = d.open_queue(32);
        EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
        if (r) q = std::move(*r);
    }
    int64_t run(const Request& r) {
        auto s = q->submit(r);
        EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message());
        if (!s) return -1;
        q->kick();
        int64_t result = INT64_MIN;
        while (result == INT64_MIN) {
            q->reap([&](const Completion& c) { result = c.result; });
            if (result == INT64_MIN) std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
        return result;
    }
    int64_t write(uint64_t off, std::vector<uint8_t>& data, bool fua = false) {
        iovec v{data.data(), data.size()};
        return run({.op = Op::Write, .offset = off, .iov = {&v, 1}, .fua = fua});
    }
    std::vector<uint8_t> read(uint64_t off, size_t len) {
        std::vector<uint8_t> d(len, 0xEE);
        iovec v{d.data(), d.size()};
        EXPECT_EQ(run({.op = Op::Read, .offset = off, .iov = {&v, 1}}), static_cast<int64_t>(len));
        return d;
    }
    int64_t flush() { return run({.op = Op::Flush}); }
    int64_t discard(uint64_t off, uint64_t len) { return run({.op = Op::Discard, .offset = off, .length = len}); }
};

std::shared_ptr<Disk> open(const std::string& path, bool ro = false) {
    auto d = open_disk({.path = path, .format = "vhdx", .read_only = ro});
    EXPECT_TRUE(d.has_value()) << (d ? "" : d.error().message());
    return d ? *d : nullptr;
}

void create(const std::string& path, uint64_t size, uint32_t block = 1 * MiB, uint32_t sector = 512,
            const std::string& parent = {}, bool fixed = false) {
    auto r = image_create(path, {.size = size, .format = "vhdx", .fixed = fixed, .parent = parent, .block_size = block,
                                 .sector_size = sector});
    ASSERT_TRUE(r.has_value()) << r.error().message();
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::vector<uint8_t> v(std::filesystem::file_size(path));
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f) {
        EXPECT_EQ(std::fread(v.data(), 1, v.size(), f), v.size());
        std::fclose(f);
    }
    return v;
}

// A model of the disk: the writes, in order.
struct Model {
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
    std::vector<uint8_t>& operator[](uint64_t off) { return writes.emplace_back(off, std::vector<uint8_t>()).second; }
};

std::vector<uint8_t> expected(const Model& m, uint64_t size) {
    std::vector<uint8_t> v(size);
    for (const auto& [off, d] : m.writes) std::memcpy(v.data() + off, d.data(), d.size());
    return v;
}

void expect_qemu_sees(const std::string& image, const std::vector<uint8_t>& want, TempDir& dir) {
    auto [rc, out] = sh("qemu-img check " + image);
    EXPECT_EQ(rc, 0) << out;
    const std::string raw = dir.file("qemu-out.raw");
    std::filesystem::remove(raw);
    auto [rc2, out2] = sh("qemu-img convert -O raw " + image + " " + raw);
    ASSERT_EQ(rc2, 0) << out2;
    EXPECT_TRUE(read_file(raw) == want) << "qemu-img convert read different data";
}

// ---- Round trips ----

TEST(Vhdx, QueueRoundTripAndQemuReadsIt) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("a.vhdx");
    const uint64_t size = 16 * MiB;
    create(img, size);
    Model m;
    {
        auto d = open(img);
        ASSERT_TRUE(d);
        EXPECT_EQ(d->info().format, "vhdx");
        EXPECT_EQ(d->info().size_bytes, size);
        EXPECT_TRUE(d->info().discard_zeroes);
        Sync s(*d);
        for (auto [off, len, seed] : {std::tuple{0ul, 4096ul, 1u}, {MiB - 512, 1024ul, 2u}, {5 * MiB + 4096, 3 * MiB, 3u},
                                      {size - 512, 512ul, 4u}}) {
            auto data = pattern(len, seed);
            EXPECT_EQ(s.write(off, data), static_cast<int64_t>(len));
            m[off] = data;
        }
        EXPECT_EQ(s.flush(), 0);
        // Rewrite of an allocated block, read before reopening.
        auto data = pattern(8192, 9);
        EXPECT_EQ(s.write(5 * MiB + 4096, data), 8192);
        m[5 * MiB + 4096] = data;
        EXPECT_EQ(s.read(5 * MiB + 4096, 8192), data);
    }
    const auto want = expected(m, size);
    {
        auto d = open(img, true);
        ASSERT_TRUE(d);
        Sync s(*d);
        const auto got = s.read(0, size);
        EXPECT_TRUE(got == want) << "first difference at " << (std::mismatch(got.begin(), got.end(), want.begin()).first - got.begin());
    }
    expect_qemu_sees(img, want, dir);
    auto chk = image_check(img, false);
    ASSERT_TRUE(chk.has_value());
    EXPECT_TRUE(chk->problems.empty());
}

TEST(Vhdx, QemuMadeImagesOpen) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    for (const char* sub : {"dynamic", "fixed"}) {
        const std::string img = dir.file(std::string("q-") + sub + ".vhdx");
        auto [rc, out] = sh(fmt::format("qemu-img create -q -f vhdx -o subformat={},block_size=1M {} 8M", sub, img));
        ASSERT_EQ(rc, 0) << out;
        auto [rc2, out2] = sh("qemu-io -c 'write -P 0xab 1M 64k' -c 'write -P 0xcd 3584 512' " + img);
        ASSERT_EQ(rc2, 0) << out2;
        Model m;
        m[MiB] = std::vector<uint8_t>(64 * 1024, 0xab);
        m[3584] = std::vector<uint8_t>(512, 0xcd);
        {
            auto d = open(img);
            ASSERT_TRUE(d);
            Sync s(*d);
            EXPECT_TRUE(s.read(0, 8 * MiB) == expected(m, 8 * MiB)) << sub;
            auto data = pattern(MiB, 5);  // into a ZERO block: the rest must stay zero
            EXPECT_EQ(s.write(6 * MiB, data), static_cast<int64_t>(MiB));
            m[6 * MiB] = data;
            auto small = pattern(4096, 6);
            EXPECT_EQ(s.write(4 * MiB + 8192, small), 4096);
            m[4 * MiB + 8192] = small;
            EXPECT_EQ(s.flush(), 0);
        }
        expect_qemu_sees(img, expected(m, 8 * MiB), dir);
    }
}

TEST(Vhdx, SectorSize4KAndBlockSizes) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    for (auto [block, sector] : {std::pair<uint32_t, uint32_t>{1u << 20, 4096u}, {256u << 20, 512u}, {256u << 20, 4096u}, {1u << 20, 512u}}) {
        const std::string img = dir.file(fmt::format("b{}-{}.vhdx", block >> 20, sector));
        const uint64_t size = 4 * MiB;
        create(img, size, block, sector);
        Model m;
        {
            auto d = open(img);
            ASSERT_TRUE(d);
            EXPECT_EQ(d->info().logical_block, sector);
            EXPECT_EQ(d->info().discard_granularity, 4096u);  // a base disk punches partial ranges too
            Sync s(*d);
            auto data = pattern(3 * sector, block + sector);
            EXPECT_EQ(s.write(MiB - sector, data), static_cast<int64_t>(data.size()));
            m[MiB - sector] = data;
            std::vector<uint8_t> bad(512);
            if (sector == 4096) {
                iovec v{bad.data(), bad.size()};
                EXPECT_FALSE(s.q->submit({.op = Op::Write, .offset = 512, .iov = {&v, 1}}).has_value());
            }
            EXPECT_EQ(s.flush(), 0);
        }
        auto d = open(img, true);
        ASSERT_TRUE(d);
        Sync s(*d);
        EXPECT_TRUE(s.read(0, size) == expected(m, size));
        if (sector == 512) expect_qemu_sees(img, expected(m, size), dir);  // QEMU refuses 4K sectors
        auto [rc, out] = sh("qemu-img check " + img);
        if (sector == 512) {
            EXPECT_EQ(rc, 0) << out;
        }
    }
}

TEST(Vhdx, FixedDisk) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("f.vhdx");
    create(img, 4 * MiB, MiB, 512, {}, true);
    Model m;
    {
        auto d = open(img);
        ASSERT_TRUE(d);
        EXPECT_FALSE(d->info().discard);
        Sync s(*d);
        auto data = pattern(65536, 3);
        EXPECT_EQ(s.write(2 * MiB, data, true), 65536);
        m[2 * MiB] = data;
    }
    expect_qemu_sees(img, expected(m, 4 * MiB), dir);
    auto info = image_info(img);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->chain[0].type, "fixed");
}

// ---- Differencing chains ----

TEST(Vhdx, ChainOfThreeAndMerge) {
    TempDir dir;
    const uint64_t size = 8 * MiB;
    const std::string base = dir.file("base.vhdx"), mid = dir.file("sub/mid.vhdx"), top = dir.file("top.vhdx");
    std::filesystem::create_directories(dir.file("sub"));
    create(base, size);
    Model m;
    {
        auto d = open(base);
        Sync s(*d);
        auto a = pattern(2 * MiB, 1);
        EXPECT_EQ(s.write(MiB, a), static_cast<int64_t>(a.size()));
        m[MiB] = a;
    }
    const auto base_bytes = read_file(base);
    create(mid, 0, 0, 512, base);
    {
        auto d = open(mid);
        Sync s(*d);
        auto b = pattern(4096, 2);  // inside base's data: a partial block over the parent
        EXPECT_EQ(s.write(MiB + 8192, b), 4096);
        m[MiB + 8192] = b;
    }
    create(top, 0, 0, 512, mid);
    {
        auto d = open(top);
        ASSERT_TRUE(d);
        EXPECT_FALSE(d->info().discard_zeroes);
        Sync s(*d);
        auto c = pattern(1536, 3);
        EXPECT_EQ(s.write(MiB + 8192 + 512, c), 1536);
        m[MiB + 8192 + 512] = c;
        auto e = pattern(MiB, 4);
        EXPECT_EQ(s.write(6 * MiB, e), static_cast<int64_t>(MiB));
        m[6 * MiB] = e;
        EXPECT_EQ(s.flush(), 0);
        EXPECT_TRUE(s.read(0, size) == expected(m, size));
    }
    EXPECT_EQ(read_file(base), base_bytes) << "the base changed";
    {
        auto d = open(top, true);
        ASSERT_TRUE(d);
        Sync s(*d);
        EXPECT_TRUE(s.read(0, size) == expected(m, size));
    }
    auto info = image_info(top);
    ASSERT_TRUE(info.has_value());
    ASSERT_EQ(info->chain.size(), 3u);
    EXPECT_EQ(info->chain[2].path, dir.file("sub/../base.vhdx"));

    // Merge top into mid: mid then reads as top did; top no longer matches.
    auto merged = image_merge(top);
    ASSERT_TRUE(merged.has_value()) << merged.error().message();
    {
        auto d = open(mid, true);
        ASSERT_TRUE(d);
        Sync s(*d);
        EXPECT_TRUE(s.read(0, size) == expected(m, size));
    }
    auto stale = open_disk({.path = top, .format = "vhdx", .read_only = true});
    ASSERT_FALSE(stale.has_value());
    EXPECT_NE(stale.error().message().find("DataWriteGuid"), std::string::npos) << stale.error().message();
    EXPECT_EQ(read_file(base), base_bytes);
    // What a checkpoint merge that stopped halfway leaves (the parent changed only by the
    // child's own sectors): the child opens when asked to accept that, reads the same, and
    // merging it again completes the merge.
    auto accepted = open_disk({.path = top, .format = "vhdx", .read_only = true, .accept_changed_parent = true});
    ASSERT_TRUE(accepted.has_value()) << accepted.error().message();
    {
        Sync s(**accepted);
        EXPECT_TRUE(s.read(0, size) == expected(m, size));
    }
    accepted->reset();
    auto again = image_merge(top);
    ASSERT_TRUE(again.has_value()) << again.error().message();
    auto d = open(mid, true);
    ASSERT_TRUE(d);
    Sync s(*d);
    EXPECT_TRUE(s.read(0, size) == expected(m, size));
}

TEST(Vhdx, ChainLoopRefused) {
    TempDir dir;
    const std::string a = dir.file("a.vhdx"), b = dir.file("b.vhdx");
    create(a, 4 * MiB);
    create(b, 0, 0, 512, a);
    // Point b's parent at b itself: rewrite the relative_path value "a.vhdx" as "b.vhdx".
    auto bytes = read_file(b);
    const std::vector<uint8_t> from = {'a', 0, '.', 0, 'v', 0};
    auto it = std::search(bytes.begin(), bytes.end(), from.begin(), from.end());
    ASSERT_NE(it, bytes.end());
    *it = 'b';
    FILE* f = std::fopen(b.c_str(), "r+b");
    ASSERT_TRUE(f);
    std::fseek(f, it - bytes.begin(), SEEK_SET);
    std::fputc('b', f);
    std::fclose(f);
    auto r = vx::Image::open(b, {});
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Errc::Invalid);
    EXPECT_NE(r.error().message().find("loops"), std::string::npos) << r.error().message();
}

// ---- Discard ----

TEST(Vhdx, DiscardFreesWholeBlocksAndZeroesPartialOnes) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("d.vhdx");
    create(img, 8 * MiB);
    Model m;
    {
        auto d = open(img);
        ASSERT_TRUE(d->info().discard);
        Sync s(*d);
        auto a = pattern(4 * MiB, 1);
        EXPECT_EQ(s.write(MiB, a), static_cast<int64_t>(a.size()));
        m[MiB] = a;
        EXPECT_EQ(s.discard(2 * MiB, MiB), 0);          // a whole block
        EXPECT_EQ(s.discard(3 * MiB + 4096, 8192), 0);  // a part of one
        m[2 * MiB] = std::vector<uint8_t>(MiB);
        m[3 * MiB + 4096] = std::vector<uint8_t>(8192);
        EXPECT_EQ(s.flush(), 0);
        EXPECT_TRUE(s.read(0, 8 * MiB) == expected(m, 8 * MiB));
    }
    auto img2 = vx::Image::open(img, {});
    ASSERT_TRUE(img2.has_value());
    EXPECT_FALSE((*img2)->block_has_data(2));
    EXPECT_TRUE((*img2)->block_has_data(3));
    img2->reset();
    expect_qemu_sees(img, expected(m, 8 * MiB), dir);
}

// ---- Log replay ----

// An image whose last commit wrote its log entry and stopped (as if killed there).
void make_dirty(const std::string& img, Model& m) {
    create(img, 4 * MiB);
    auto i = vx::Image::open(img, {.writable = true});
    ASSERT_TRUE(i.has_value());
    auto a = pattern(MiB, 7);
    ASSERT_TRUE((*i)->write(2 * MiB, a).has_value());
    m[2 * MiB] = a;
    (*i)->test_stop_after_log_write();
    ASSERT_TRUE((*i)->flush().has_value());
}

TEST(Vhdx, LogReplay) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("l.vhdx");
    Model m;
    make_dirty(img, m);
    // fuzz/corpus/fuzz_vhdx/ has this file as a seed: VHDX_TEST_SEED_DIR=DIR keeps a copy.
    if (const char* seeds = std::getenv("VHDX_TEST_SEED_DIR"))
        std::filesystem::copy_file(img, std::string(seeds) + "/ours-dirty-log.vhdx",
                                   std::filesystem::copy_options::overwrite_existing);
    auto [rc, out] = sh("qemu-img check " + img);
    EXPECT_NE(rc, 0) << "qemu-img should refuse a file with a log to replay: " << out;
    // Read-only: replayed in memory (or refused when asked to).
    auto strict = vx::Image::open(img, {.writable = false, .replay_in_memory = false});
    ASSERT_FALSE(strict.has_value());
    EXPECT_NE(strict.error().message().find("replay"), std::string::npos);
    const auto before = read_file(img);
    {
        auto d = open(img, true);
        ASSERT_TRUE(d);
        Sync s(*d);
        EXPECT_TRUE(s.read(0, 4 * MiB) == expected(m, 4 * MiB));
    }
    EXPECT_EQ(read_file(img), before) << "a read-only open wrote";
    auto chk = image_check(img, false);
    ASSERT_TRUE(chk.has_value());
    EXPECT_TRUE(chk->problems.empty());
    EXPECT_FALSE(chk->notes.empty());
    auto rep = image_check(img, true);
    ASSERT_TRUE(rep.has_value());
    EXPECT_TRUE(rep->problems.empty());
    expect_qemu_sees(img, expected(m, 4 * MiB), dir);
}

TEST(Vhdx, QemuReplaysOurLog) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("l.vhdx");
    Model m;
    make_dirty(img, m);
    auto [rc, out] = sh("qemu-img check -r all " + img);
    EXPECT_EQ(rc, 0) << out;
    expect_qemu_sees(img, expected(m, 4 * MiB), dir);
}

// ---- Crash consistency ----

// A child writes and flushes in a loop, reporting each flushed write through a pipe; it is
// SIGKILLed at random moments. Every flushed write must be there afterwards (or a later write
// of the same block), and the file must check clean, here and in qemu-img after our replay.
TEST(Vhdx, CrashConsistencyUnderSigkill) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("c.vhdx");
    const uint64_t size = 32 * MiB, unit = 64 * 1024;
    create(img, size);
    std::map<uint64_t, uint32_t> flushed;  // unit index -> generation
    std::mt19937 rng(1234);
    uint32_t gen = 1;
    for (int round = 0; round < 20; ++round) {
        int fds[2];
        ASSERT_EQ(::pipe(fds), 0);
        const uint32_t first_gen = gen;
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::close(fds[0]);
            auto d = open_disk({.path = img, .format = "vhdx"});
            if (!d) ::_exit(3);
            auto q = (*d)->open_queue(8);
            if (!q) ::_exit(4);
            std::mt19937 crng(static_cast<uint32_t>(round) * 7919u);
            std::vector<uint8_t> buf(unit);
            for (uint32_t g = first_gen;; ++g) {
                const uint64_t u = crng() % (size / unit);
                for (size_t k = 0; k < unit; k += 512) {
                    std::memcpy(buf.data() + k, &u, 8);
                    std::memcpy(buf.data() + k + 8, &g, 4);
                }
                iovec v{buf.data(), buf.size()};
                int64_t res = INT64_MIN;
                auto wait = [&] {
                    (*q)->kick();
                    res = INT64_MIN;
                    while (res == INT64_MIN) (*q)->reap([&](const Completion& c) { res = c.result; });
                };
                if (!(*q)->submit({.op = Op::Write, .offset = u * unit, .iov = {&v, 1}})) ::_exit(5);
                wait();
                if (res < 0) ::_exit(6);
                if (!(*q)->submit({.op = Op::Flush})) ::_exit(7);
                wait();
                if (res < 0) ::_exit(8);
                const uint64_t rec[2] = {u, g};
                if (::write(fds[1], rec, sizeof rec) != sizeof rec) ::_exit(9);
            }
        }
        ::close(fds[1]);
        // The kill comes at a random moment once the child has flushed something: on a loaded
        // machine (the sanitizer builds run beside the e2e tests) it may take a while to start.
        uint64_t first[2];
        pollfd started{fds[0], POLLIN, 0};
        if (::poll(&started, 1, 30000) > 0 && ::read(fds[0], first, sizeof first) == sizeof first) {
            flushed[first[0]] = static_cast<uint32_t>(first[1]);
            gen = std::max<uint32_t>(gen, static_cast<uint32_t>(first[1]) + 1);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 120));
        ::kill(pid, SIGKILL);
        int st = 0;
        ::waitpid(pid, &st, 0);
        ASSERT_TRUE(WIFSIGNALED(st)) << "child exited with " << WEXITSTATUS(st);
        uint64_t rec[2];
        while (::read(fds[0], rec, sizeof rec) == sizeof rec) {
            flushed[rec[0]] = static_cast<uint32_t>(rec[1]);
            gen = std::max<uint32_t>(gen, static_cast<uint32_t>(rec[1]) + 1);
        }
        gen += 100000;  // the next round's generations are all newer than anything unreported
        ::close(fds[0]);

        auto chk = image_check(img, false);
        ASSERT_TRUE(chk.has_value()) << chk.error().message();
        ASSERT_TRUE(chk->problems.empty()) << chk->problems[0];
        auto d = open(img);  // writable: replays
        ASSERT_TRUE(d);
        Sync s(*d);
        for (const auto& [u, g] : flushed) {
            const auto data = s.read(u * unit, unit);
            for (size_t k = 0; k < unit; k += 512) {
                uint64_t ru = 0;
                uint32_t rg = 0;
                std::memcpy(&ru, data.data() + k, 8);
                std::memcpy(&rg, data.data() + k + 8, 4);
                ASSERT_EQ(ru, u) << "round " << round << ": unit " << u << " lost (sector " << k / 512 << ")";
                ASSERT_GE(rg, g) << "round " << round << ": unit " << u << " went back in time";
            }
        }
    }
    ASSERT_GT(flushed.size(), 5u) << "the child did not get far";
    auto [rc, out] = sh("qemu-img check " + img);
    EXPECT_EQ(rc, 0) << out;
}

// ---- The format tool ----

TEST(Vhdx, ConvertBothWays) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string raw = dir.file("in.raw"), v = dir.file("out.vhdx"), back = dir.file("back.raw");
    auto data = pattern(3 * MiB, 11);
    {
        FILE* f = std::fopen(raw.c_str(), "wb");
        ASSERT_TRUE(f);
        std::fseek(f, static_cast<long>(MiB), SEEK_SET);
        std::fwrite(data.data(), 1, data.size(), f);
        std::fclose(f);
        std::filesystem::resize_file(raw, 16 * MiB);
    }
    ASSERT_TRUE(image_convert(raw, v, {.format = "vhdx", .parent = {}, .block_size = 2u << 20}).has_value());
    auto [rc, out] = sh("qemu-img compare " + raw + " " + v);
    EXPECT_EQ(rc, 0) << out;
    ASSERT_TRUE(image_convert(v, back, {.format = "raw", .fixed = false, .parent = {}}).has_value());
    EXPECT_EQ(read_file(raw), read_file(back));
    auto j = image_info_json(*image_info(v));
    EXPECT_NE(j.find("\"block_size\": 2097152"), std::string::npos) << j;
}

// Reproducible builds: a seeded create or convert makes the same bytes every time, and other
// seeds (or none) other GUIDs; the seeded file is as valid as any (our check, qemu-img's).
TEST(Vhdx, ASeededConvertMakesTheSameFileEveryTime) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string raw = dir.file("in.raw");
    {
        auto data = pattern(3 * MiB, 12);
        FILE* f = std::fopen(raw.c_str(), "wb");
        ASSERT_TRUE(f);
        std::fseek(f, static_cast<long>(2 * MiB), SEEK_SET);
        std::fwrite(data.data(), 1, data.size(), f);
        std::fclose(f);
        std::filesystem::resize_file(raw, 16 * MiB);
    }
    auto convert = [&](const std::string& name, const std::string& seed) {
        const std::string out = dir.file(name);
        EXPECT_TRUE(image_convert(raw, out, {.format = "vhdx", .parent = {}, .block_size = 1u << 20, .guid_seed = seed}));
        return read_file(out);
    };
    const auto a = convert("a.vhdx", "debian-disk 1234"), b = convert("b.vhdx", "debian-disk 1234");
    const auto other = convert("c.vhdx", "debian-disk 1235"), random1 = convert("d.vhdx", ""),
               random2 = convert("e.vhdx", "");
    EXPECT_EQ(a, b);
    EXPECT_NE(a, other);
    EXPECT_NE(random1, random2);
    EXPECT_EQ(a.size(), other.size());  // only the GUIDs (and what they seal) differ
    auto r = image_check(dir.file("a.vhdx"), false);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->problems.empty());
    auto [rc, out] = sh("qemu-img check " + dir.file("a.vhdx") + " && qemu-img compare " + raw + " " + dir.file("a.vhdx"));
    EXPECT_EQ(rc, 0) << out;

    // A seeded source gives distinct GUIDs in a row, the same row for the same seed.
    vhdx::GuidSource s1("x"), s2("x"), s3("y");
    const auto g1 = s1.next(), g2 = s1.next();
    EXPECT_NE(g1, g2);
    EXPECT_EQ(g1, s2.next());
    EXPECT_NE(g1, s3.next());
}

// Blocks allocated before a crash whose BAT entries never reached the log leak: `check`
// says how much, `check --repair` frees it (here: the file's end), and the image stays valid
// with every flushed byte.
TEST(Vhdx, CheckFindsBlocksLeakedByACrashAndRepairFreesThem) {
    REQUIRE_QEMU_IMG();
    TempDir dir;
    const std::string img = dir.file("leak.vhdx");
    ASSERT_TRUE(image_create(img, {.size = 64 * MiB, .format = "vhdx", .fixed = false, .parent = {}, .block_size = 1u << 20}));
    const auto kept = pattern(2 * MiB, 21);
    {
        auto i = vx::Image::open(img, {.writable = true});
        ASSERT_TRUE(i);
        ASSERT_TRUE((*i)->write(4 * MiB, kept));
        ASSERT_TRUE((*i)->close());
    }
    const auto size_before = std::filesystem::file_size(img);
    // A process that writes 5 MiB into new blocks and dies before any flush.
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto i = vx::Image::open(img, {.writable = true});
        const auto lost = pattern(5 * MiB, 22);
        if (!i || !(*i)->write(32 * MiB, lost)) ::_exit(1);
        ::_exit(0);  // no close(), no flush: the new BAT entries are only in its memory
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT_GE(std::filesystem::file_size(img), size_before + 5 * MiB);

    auto r = image_check(img, false);
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_TRUE(r->problems.empty());
    std::string notes;
    for (const auto& n : r->notes) notes += n + "\n";
    EXPECT_NE(notes.find("5.0 MiB of the file is allocated but holds nothing the disk uses"), std::string::npos) << notes;

    r = image_check(img, true);
    ASSERT_TRUE(r) << r.error().message();
    notes.clear();
    for (const auto& n : r->notes) notes += n + "\n";
    EXPECT_NE(notes.find("freed 5.0 MiB"), std::string::npos) << notes;
    EXPECT_EQ(std::filesystem::file_size(img), size_before);

    r = image_check(img, false);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->problems.empty());
    for (const auto& n : r->notes) EXPECT_EQ(n.find("allocated but"), std::string::npos) << n;
    std::vector<uint8_t> back(kept.size());
    auto i = vx::Image::open(img, {});
    ASSERT_TRUE(i);
    ASSERT_TRUE((*i)->read(4 * MiB, back));
    EXPECT_EQ(back, kept);
    std::vector<uint8_t> zeros(5 * MiB), lost(5 * MiB, 1);
    ASSERT_TRUE((*i)->read(32 * MiB, lost));
    EXPECT_EQ(lost, zeros);
    auto [rc, out] = sh("qemu-img check " + img);
    EXPECT_EQ(rc, 0) << out;
}

// ---- Hostile images ----

struct Patcher {
    std::string path;
    std::vector<uint8_t> b;
    explicit Patcher(std::string p) : path(std::move(p)), b(read_file(path)) {}
    template <typename T>
    void set(uint64_t off, T v) {
        std::memcpy(b.data() + off, &v, sizeof v);
    }
    template <typename T>
    [[nodiscard]] T at(uint64_t off) const {
        T v{};
        std::memcpy(&v, b.data() + off, sizeof v);
        return v;
    }
    std::span<uint8_t> span(uint64_t off, uint64_t len) { return {b.data() + off, len}; }
    void headers(const std::function<void(std::span<uint8_t>)>& fn) {
        for (uint64_t h : {vx::kHeader1, vx::kHeader2}) {
            fn(span(h, vx::kHeaderSize));
            vx::seal(span(h, vx::kHeaderSize), 4);
        }
    }
    void region(int copy, const std::function<void(std::span<uint8_t>)>& fn) {
        const uint64_t r = copy == 0 ? vx::kRegion1 : vx::kRegion2;
        fn(span(r, vx::kRegionSize));
        vx::seal(span(r, vx::kRegionSize), 4);
    }
    void regions(const std::function<void(std::span<uint8_t>)>& fn) {
        region(0, fn);
        region(1, fn);
    }
    void save() const {
        FILE* f = std::fopen(path.c_str(), "wb");
        ASSERT_TRUE(f);
        std::fwrite(b.data(), 1, b.size(), f);
        std::fclose(f);
    }
};

// Our layout (vhdx::create): log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB; metadata items
// from +64 KiB in 4 KiB slots: File Parameters, Size, Page 83, Logical, Physical, Locator.
constexpr uint64_t kLog = MiB, kMeta = 2 * MiB, kBat = 3 * MiB;
uint64_t meta_entry(int i) { return kMeta + 32 + 32 * static_cast<uint64_t>(i); }
uint64_t item(int i) { return kMeta + 64 * 1024 + 4096 * static_cast<uint64_t>(i); }

struct Case {
    const char* name;
    const char* image;  // "base", "diff", "dirty"
    std::function<void(Patcher&)> patch;
    const char* expect;  // substring of the error; nullptr: opens
    Errc code = Errc::Invalid;
};

TEST(Vhdx, HostileImages) {
    TempDir dir;
    const std::string base = dir.file("base.vhdx"), parent = dir.file("parent.vhdx"), diff = dir.file("diff.vhdx"),
                      dirty = dir.file("dirty.vhdx");
    create(base, 8 * MiB);
    {  // one block with data at 4 MiB of the file (block 0), so BAT cases have an entry to spoil
        auto i = vx::Image::open(base, {.writable = true});
        ASSERT_TRUE(i.has_value());
        auto a = pattern(MiB, 1);
        ASSERT_TRUE((*i)->write(0, a).has_value());
        auto b = pattern(MiB, 2);
        ASSERT_TRUE((*i)->write(MiB, b).has_value());
    }
    create(parent, 8 * MiB);
    create(diff, 0, 0, 512, parent);
    Model m;
    make_dirty(dirty, m);
    const uint64_t blk0 = Patcher(base).at<uint64_t>(kBat) & ~uint64_t{0xFFFFF};
    ASSERT_GE(blk0, 4 * MiB);
    auto locator_value = [](Patcher& p, int entry) { return item(5) + p.at<uint32_t>(item(5) + 20 + 12 * static_cast<uint64_t>(entry) + 4); };
    auto log_reseal = [](Patcher& p) {
        const uint32_t len = p.at<uint32_t>(kLog + 8);
        vx::seal(p.span(kLog, len), 4);
    };

    const std::vector<Case> cases = {
        {"short file", "base", [](Patcher& p) { p.b.resize(512 * 1024); }, "shorter than the 1 MiB"},
        {"no file identifier", "base", [](Patcher& p) { p.b[0] = 'X'; }, "file type identifier"},
        {"both headers bad signature", "base",
         [](Patcher& p) {
             p.b[vx::kHeader1] = 'x';
             p.b[vx::kHeader2] = 'x';
         },
         "no valid header"},
        {"both headers bad checksum", "base",
         [](Patcher& p) {
             p.b[vx::kHeader1 + 100] ^= 1;
             p.b[vx::kHeader2 + 100] ^= 1;
         },
         "bad checksum"},
        {"equal sequence, different headers", "base",
         [](Patcher& p) {
             p.set<uint64_t>(vx::kHeader1 + 8, 7);
             p.set<uint64_t>(vx::kHeader2 + 8, 7);
             p.b[vx::kHeader1 + 20] ^= 1;
             vx::seal(p.span(vx::kHeader1, 4096), 4);
             vx::seal(p.span(vx::kHeader2, 4096), 4);
         },
         "differ"},
        {"header version 2", "base", [](Patcher& p) { p.headers([](auto h) { h[66] = 2; }); }, "version 2"},
        {"log version 1", "base", [](Patcher& p) { p.headers([](auto h) { h[64] = 1; }); }, "log version"},
        {"log offset not MiB aligned", "base", [](Patcher& p) { p.headers([](auto h) { h[73] = 0x10; }); }, "whole MiB"},
        {"log inside the header section", "base", [](Patcher& p) { p.headers([](auto h) { std::memset(h.data() + 72, 0, 8); }); },
         "header section"},
        {"log past EOF", "base", [](Patcher& p) { p.headers([](auto h) { h[75] = 0x40; }); }, "past the end"},
        {"log larger than 1 GiB", "base", [](Patcher& p) { p.headers([](auto h) { h[71] = 0x80; }); }, "at most 1 GiB"},
        {"both region tables bad", "base",
         [](Patcher& p) {
             p.b[vx::kRegion1 + 40] ^= 1;
             p.b[vx::kRegion2 + 40] ^= 1;
         },
         "no valid region table"},
        {"region table 1 bad, 2 good", "base", [](Patcher& p) { p.b[vx::kRegion1 + 40] ^= 1; }, nullptr},
        {"region entry count 2048", "base", [](Patcher& p) { p.regions([](auto r) { vx::put<uint32_t>(r, 8, 2048); }); }, "2048 entries"},
        {"region reserved field", "base", [](Patcher& p) { p.regions([](auto r) { r[12] = 1; }); }, "reserved"},
        {"region flag reserved bits", "base", [](Patcher& p) { p.regions([](auto r) { r[16 + 28] = 3; }); }, "reserved flag"},
        {"region offset not MiB aligned", "base", [](Patcher& p) { p.regions([](auto r) { r[16 + 17] = 0x10; }); }, "whole MiB"},
        {"region length 0", "base", [](Patcher& p) { p.regions([](auto r) { std::memset(r.data() + 16 + 24, 0, 4); }); },
         "whole MiB"},
        {"region offset below 1 MiB", "base", [](Patcher& p) { p.regions([](auto r) { std::memset(r.data() + 16 + 16, 0, 8); }); },
         "whole MiB"},
        {"region past EOF", "base", [](Patcher& p) { p.regions([](auto r) { r[16 + 19] = 0x40; }); }, "past the end"},
        {"regions overlap", "base", [](Patcher& p) { p.regions([](auto r) { r[16 + 18] = 0x20; }); }, "overlaps"},
        {"region overlaps the log", "base", [](Patcher& p) { p.regions([](auto r) { r[16 + 18] = 0x10; }); }, "overlaps the log"},
        {"duplicate BAT region", "base",
         [](Patcher& p) {
             p.regions([](auto r) {
                 r[8] = 3;
                 std::memcpy(r.data() + 16 + 64, r.data() + 16, 32);
                 r[16 + 64 + 18] = 0x40;  // elsewhere, so only the duplicate is wrong
             });
         },
         "appears twice"},
        {"no metadata region", "base", [](Patcher& p) { p.regions([](auto r) { r[8] = 1; }); }, "no metadata region"},
        {"unknown required region", "base",
         [](Patcher& p) {
             p.regions([](auto r) {
                 r[8] = 3;
                 std::memcpy(r.data() + 16 + 64, r.data() + 16, 32);
                 r[16 + 64] ^= 0xFF;
                 r[16 + 64 + 18] = 0x40;
             });
         },
         "unknown required region", Errc::Unsupported},
        {"metadata bad signature", "base", [](Patcher& p) { p.b[kMeta] = 'X'; }, "metadata table: bad signature"},
        {"metadata entry count 2048", "base", [](Patcher& p) { p.set<uint16_t>(kMeta + 10, 2048); }, "2048 entries"},
        {"duplicate metadata item", "base",
         [](Patcher& p) {
             std::memcpy(p.b.data() + meta_entry(1), p.b.data() + meta_entry(0), 16);
         },
         "appears twice"},
        {"unknown required item", "base", [](Patcher& p) { p.b[meta_entry(1)] ^= 0xFF; }, "required but unknown", Errc::Unsupported},
        {"item offset below 64 KiB", "base", [](Patcher& p) { p.set<uint32_t>(meta_entry(0) + 16, 4096); }, "outside"},
        {"item past the region", "base", [](Patcher& p) { p.set<uint32_t>(meta_entry(0) + 16, MiB - 4); }, "outside"},
        {"items overlap", "base", [](Patcher& p) { p.set<uint32_t>(meta_entry(1) + 16, 64 * 1024 + 4); }, "overlaps"},
        {"item longer than 1 MiB", "base", [](Patcher& p) { p.set<uint32_t>(meta_entry(0) + 20, MiB + 1); }, "at most 1 MiB"},
        {"known item with the wrong length", "base", [](Patcher& p) { p.set<uint32_t>(meta_entry(0) + 20, 4); }, "length 4"},
        {"missing item", "base", [](Patcher& p) { p.set<uint16_t>(kMeta + 10, 4); }, "no Physical Sector Size"},
        {"block size 3 MiB", "base", [](Patcher& p) { p.set<uint32_t>(item(0), 3 * MiB); }, "block size"},
        {"block size 512 KiB", "base", [](Patcher& p) { p.set<uint32_t>(item(0), 512 * 1024); }, "block size"},
        {"block size 512 MiB", "base", [](Patcher& p) { p.set<uint32_t>(item(0), 512 * MiB); }, "block size"},
        {"file parameter reserved bits", "base", [](Patcher& p) { p.set<uint32_t>(item(0) + 4, 8); }, "reserved flag"},
        {"logical sector 1024", "base", [](Patcher& p) { p.set<uint32_t>(item(3), 1024); }, "logical sector size"},
        {"physical sector 8192", "base", [](Patcher& p) { p.set<uint32_t>(item(4), 8192); }, "physical sector size"},
        {"virtual size 0", "base", [](Patcher& p) { p.set<uint64_t>(item(1), 0); }, "virtual size"},
        {"virtual size above 64 TiB", "base", [](Patcher& p) { p.set<uint64_t>(item(1), (uint64_t{64} << 40) + 512); },
         "virtual size"},
        {"virtual size not in sectors", "base", [](Patcher& p) { p.set<uint64_t>(item(1), 8 * MiB + 1); }, "virtual size"},
        {"BAT too small", "base", [](Patcher& p) { p.set<uint64_t>(item(1), uint64_t{64} << 40); }, "smaller than"},
        {"block past EOF", "base", [](Patcher& p) { p.set<uint64_t>(kBat, (uint64_t{1} << 30) | 6); }, "past the end"},
        {"block offset overflow", "base", [](Patcher& p) { p.set<uint64_t>(kBat, ~uint64_t{0xFFFFF} | 6); }, "past the end"},
        {"block overlapping the BAT", "base", [](Patcher& p) { p.set<uint64_t>(kBat, kBat | 6); }, "overlaps the BAT"},
        {"block overlapping the log", "base", [](Patcher& p) { p.set<uint64_t>(kBat, kLog | 6); }, "overlaps the log"},
        {"block in the header section", "base", [](Patcher& p) { p.set<uint64_t>(kBat, 6); }, "header section"},
        {"two blocks share an offset", "base", [&](Patcher& p) { p.set<uint64_t>(kBat + 8, blk0 | 6); }, "share"},
        {"state 4", "base", [&](Patcher& p) { p.set<uint64_t>(kBat, blk0 | 4); }, "reserved state 4"},
        {"state 5", "base", [](Patcher& p) { p.set<uint64_t>(kBat + 16, 5); }, "reserved state 5"},
        {"reserved BAT bits", "base", [&](Patcher& p) { p.set<uint64_t>(kBat, blk0 | 6 | 0x100); }, "reserved bits"},
        {"state 7 in a base disk reads as 6", "base", [&](Patcher& p) { p.set<uint64_t>(kBat, blk0 | 7); }, nullptr},
        {"partially present without a bitmap", "diff",
         [](Patcher& p) {
             p.b.resize(8 * MiB);
             p.set<uint64_t>(kBat, (4 * MiB) | 7);
         },
         "no sector bitmap"},
        {"sector bitmap entry state 3", "diff", [](Patcher& p) { p.set<uint64_t>(kBat + 8 * 2048, 3); }, "invalid state 3"},
        {"sector bitmap in a base disk", "base",
         [](Patcher& p) {
             p.set<uint64_t>(item(1), uint64_t{4096} * MiB + MiB);  // two chunks, so there is an SB entry
             p.set<uint64_t>(kBat + 8 * 4096, (5 * MiB) | 6);
         },
         "without a parent"},
        {"HasParent without a locator", "base", [](Patcher& p) { p.set<uint32_t>(item(0) + 4, 2); }, "without a parent locator"},
        {"locator count 0", "diff", [](Patcher& p) { p.set<uint16_t>(item(5) + 18, 0); }, "0 entries"},
        {"locator count 300", "diff", [](Patcher& p) { p.set<uint16_t>(item(5) + 18, 300); }, "300 entries"},
        {"locator key outside the item", "diff", [](Patcher& p) { p.set<uint32_t>(item(5) + 20, 60000); }, "outside the item"},
        {"locator odd length", "diff", [](Patcher& p) { p.set<uint16_t>(item(5) + 20 + 10, 3); }, "UTF-16"},
        {"locator embedded NUL", "diff", [&](Patcher& p) { p.set<uint16_t>(locator_value(p, 1), 0); }, "UTF-16"},
        {"locator lone surrogate", "diff", [&](Patcher& p) { p.set<uint16_t>(locator_value(p, 1), 0xDC00); }, "UTF-16"},
        {"locator wrong type", "diff", [](Patcher& p) { p.b[item(5)] ^= 1; }, "not the VHDX parent locator"},
        {"locator without parent_linkage", "diff", [](Patcher& p) { p.b[item(5) + p.at<uint32_t>(item(5) + 20)] = 'q'; },
         "no parent_linkage"},
        {"parent_linkage mismatch", "diff", [&](Patcher& p) {
             // another hex digit (the GUID is random: flipping a bit could make it no GUID at all)
             auto& c = p.b[locator_value(p, 0) + 2];
             c = c == '0' ? '1' : '0';
         },
         "DataWriteGuid"},
        {"dirty log, read-only open without replay", "dirty", [](Patcher&) {}, "needs replaying"},
        {"log entry bad checksum (ignored)", "dirty", [](Patcher& p) { p.b[kLog + 4096 + 100] ^= 1; }, nullptr},
        {"log entry wrong LogGuid (ignored)", "dirty",
         [&](Patcher& p) {
             p.b[kLog + 32] ^= 1;
             log_reseal(p);
         },
         nullptr},
        {"log entry sequence 0 (ignored)", "dirty",
         [&](Patcher& p) {
             p.set<uint64_t>(kLog + 16, 0);
             log_reseal(p);
         },
         nullptr},
        {"log descriptor below 192 KiB (ignored)", "dirty",
         [&](Patcher& p) {
             p.set<uint64_t>(kLog + 64 + 16, 64 * 1024);
             log_reseal(p);
         },
         nullptr},
        {"log descriptor into the log (ignored)", "dirty",
         [&](Patcher& p) {
             p.set<uint64_t>(kLog + 64 + 16, kLog);
             log_reseal(p);
         },
         nullptr},
        {"log data sector with the wrong sequence (ignored)", "dirty",
         [&](Patcher& p) {
             p.b[kLog + 4096 + 4092] ^= 1;
             log_reseal(p);
         },
         nullptr},
        {"LogGuid set, no valid entry (ignored)", "dirty", [](Patcher& p) { std::memset(p.b.data() + kLog, 0, MiB); }, nullptr},
        {"log flushed offset past EOF", "dirty",
         [&](Patcher& p) {
             p.set<uint64_t>(kLog + 48, uint64_t{1} << 40);
             log_reseal(p);
         },
         "shorter than the log says"},
        {"log tail not an entry", "dirty",
         [&](Patcher& p) {
             p.set<uint32_t>(kLog + 12, 8192);
             log_reseal(p);
         },
         "broken"},
    };
    ASSERT_GE(cases.size(), 37u);
    for (const auto& c : cases) {
        const std::string src = std::string(c.image) == "base" ? base : std::string(c.image) == "diff" ? diff : dirty;
        const std::string bad = dir.file("bad.vhdx");
        std::filesystem::remove(bad);
        Patcher p(src);
        p.path = bad;
        c.patch(p);
        p.save();
        const bool strict = std::string(c.image) == "dirty" && c.expect;  // the read-only refusal case
        auto r = vx::Image::open(bad, {.writable = false, .replay_in_memory = !strict});
        if (!c.expect) {
            EXPECT_TRUE(r.has_value()) << c.name << ": " << (r ? "" : r.error().message());
            continue;
        }
        if (r.has_value()) {
            ADD_FAILURE() << c.name << ": opened";
            continue;
        }
        EXPECT_EQ(r.error().code(), c.code) << c.name << ": " << r.error().message();
        EXPECT_NE(r.error().message().find(c.expect), std::string::npos) << c.name << ": " << r.error().message();
        if (strict) continue;  // the backend replays in memory
        // The backend says the same.
        auto d = open_disk({.path = bad, .format = "vhdx", .read_only = true});
        EXPECT_FALSE(d.has_value()) << c.name;
    }
}

}  // namespace

// A writable open gives the log its file space (an image made by ftruncate has a hole there),
// so that no flush needs new space: on a full host file system, flushes of writes into
// blocks that have their space keep working (test_storage.FullHostDiskTests). Seen in the
// file's allocated blocks (SEEK_HOLE would not do: ext4 reports reserved, unwritten space as
// a hole).
// A region table copy that is bad (QEMU then refuses the file) or, the second, not the same
// as the first: check says so, check --repair rewrites it from the good one, and the file is
// then clean for both tools.
TEST(Vhdx, CheckRepairRewritesABadRegionTable) {
    REQUIRE_QEMU_IMG();
    for (const int bad : {0, 1}) {
        TempDir dir;
        const std::string img = dir.file("r.vhdx");
        ASSERT_TRUE(image_create(img, {.size = 32 * MiB, .format = "vhdx", .fixed = false, .parent = {}}));
        const auto data = pattern(MiB, 31);
        {
            auto i = vx::Image::open(img, {.writable = true});
            ASSERT_TRUE(i);
            ASSERT_TRUE((*i)->write(3 * MiB, data));
            ASSERT_TRUE((*i)->close());
        }
        {
            Patcher p(img);
            p.b[(bad == 0 ? vx::kRegion1 : vx::kRegion2) + 40] ^= 1;  // its checksum no longer holds
            p.save();
        }
        auto r = image_check(img, false);
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_TRUE(r->problems.empty());
        std::string notes;
        for (const auto& n : r->notes) notes += n + "\n";
        EXPECT_NE(notes.find(bad == 0 ? "region table 1 is not valid" : "region table 2 differs"), std::string::npos)
            << notes;
        if (bad == 0) {
            EXPECT_NE(sh("qemu-img check " + img).first, 0) << "QEMU takes a bad first region table";
        }

        r = image_check(img, true);
        ASSERT_TRUE(r) << r.error().message();
        notes.clear();
        for (const auto& n : r->notes) notes += n + "\n";
        EXPECT_NE(notes.find("rewrote the bad region table"), std::string::npos) << notes;

        r = image_check(img, false);
        ASSERT_TRUE(r);
        EXPECT_TRUE(r->notes.empty()) << r->notes.front();
        const auto b = read_file(img);
        EXPECT_TRUE(std::equal(b.begin() + vx::kRegion1, b.begin() + vx::kRegion1 + vx::kRegionSize, b.begin() + vx::kRegion2));
        auto [rc, out] = sh("qemu-img check " + img);
        EXPECT_EQ(rc, 0) << out;
        auto i = vx::Image::open(img, {});
        ASSERT_TRUE(i);
        std::vector<uint8_t> back(data.size());
        ASSERT_TRUE((*i)->read(3 * MiB, back));
        EXPECT_EQ(back, data);
    }
}

TEST(Vhdx, AWritableOpenReservesTheLog) {
    TempDir dir;
    const auto img = dir.file("reserve.vhdx");
    create(img, 64 * MiB);
    uint32_t log_length = 0;
    {
        const int fd = ::open(img.c_str(), O_RDONLY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(::pread(fd, &log_length, 4, static_cast<off_t>(vx::kHeader1 + vx::hdr::kLogLength)), 4);
        ::close(fd);
    }
    ASSERT_GT(log_length, 0u);
    auto allocated = [&] {
        struct stat st {};
        EXPECT_EQ(::stat(img.c_str(), &st), 0);
        return static_cast<uint64_t>(st.st_blocks) * 512;
    };
    // Our images are made sparse: a fresh one has most of its log unallocated.
    const uint64_t before = allocated();
    {
        auto r = vx::Image::open(img, {.writable = true});
        ASSERT_TRUE(r) << r.error().message();
        ASSERT_TRUE((*r)->close());
    }
    EXPECT_GE(allocated(), before + log_length / 2) << "allocated before the open: " << before;
}
