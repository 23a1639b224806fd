// The disk backend interface and the raw backend on io_uring, on real files: a temporary
// directory on ext4/xfs/btrfs when the machine has one (for O_DIRECT and hole punching), and
// /dev/shm (tmpfs) for the buffered fallback.
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "backends/disk/disk.hpp"
#include "backends/disk/raw.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

using namespace enlighten;
using namespace enlighten::disk;

namespace {

#ifndef XFS_SUPER_MAGIC
#define XFS_SUPER_MAGIC 0x58465342
#endif

std::string fs_name(const std::string& path) {
    struct statfs sf {};
    if (::statfs(path.c_str(), &sf) != 0) return "unknown";
    switch (static_cast<unsigned long>(sf.f_type)) {
        case EXT4_SUPER_MAGIC: return "ext4";  // also ext2/ext3: the same magic
        case XFS_SUPER_MAGIC: return "xfs";
        case BTRFS_SUPER_MAGIC: return "btrfs";
        case TMPFS_MAGIC: return "tmpfs";
        default: return fmt::format("fs {:#x}", static_cast<unsigned long>(sf.f_type));
    }
}

bool punches_holes(const std::string& fs) { return fs == "ext4" || fs == "xfs" || fs == "btrfs" || fs == "tmpfs"; }

// A temporary directory; by default on a disk file system (O_DIRECT, hole punching) if any of
// $TMPDIR, /var/tmp, /tmp is one.
struct TempDir {
    std::string path;
    explicit TempDir(std::string base = {}) {
        if (base.empty()) {
            std::vector<std::string> candidates;
            if (const char* t = std::getenv("TMPDIR"); t && *t) candidates.emplace_back(t);
            candidates.emplace_back("/var/tmp");
            candidates.emplace_back("/tmp");
            base = "/tmp";
            for (const auto& c : candidates) {
                const auto fs = fs_name(c);
                if (fs == "ext4" || fs == "xfs" || fs == "btrfs") {
                    base = c;
                    break;
                }
            }
        }
        std::string tmpl = base + "/enlighten-disk-XXXXXX";
        const char* p = ::mkdtemp(tmpl.data());
        if (p) path = p;
    }
    ~TempDir() {
        std::error_code ec;
        if (!path.empty()) std::filesystem::remove_all(path, ec);
    }
    [[nodiscard]] std::string file(const std::string& name) const { return path + "/" + name; }
};

// A sparse file of `size` bytes.
void make_file(const std::string& path, uint64_t size) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
}

std::vector<uint8_t> pread_file(const std::string& path, uint64_t off, size_t len) {
    std::vector<uint8_t> out(len);
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(::pread(fd.get(), out.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    return out;
}

// Page-aligned memory, like guest RAM.
struct Buffer {
    std::unique_ptr<uint8_t, decltype(&std::free)> mem{nullptr, &std::free};
    size_t size = 0;
    explicit Buffer(size_t n, uint8_t fill = 0) : size(n) {
        mem.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096 + 4096)));
        std::memset(mem.get(), fill, n + 4096);
    }
    [[nodiscard]] uint8_t* data() const { return mem.get(); }
    void pattern(uint32_t seed) const {
        for (size_t i = 0; i < size + 4096; ++i) mem.get()[i] = static_cast<uint8_t>((i * 131 + seed * 7 + (i >> 9)) & 0xff);
    }
};

iovec iov(const uint8_t* p, size_t n) { return iovec{const_cast<uint8_t*>(p), n}; }

std::shared_ptr<Disk> open_ok(const OpenOptions& o) {
    auto d = open_disk(o);
    EXPECT_TRUE(d.has_value()) << (d ? "" : d.error().message());
    return d ? *d : nullptr;
}

// Waits for completion_fd, then reaps until `tag` completes; returns its result.
int64_t wait_for(Queue& q, uint64_t tag, std::map<uint64_t, int64_t>* others = nullptr) {
    for (int rounds = 0; rounds < 1000; ++rounds) {
        pollfd pfd{q.completion_fd(), POLLIN, 0};
        if (::poll(&pfd, 1, 5000) <= 0) break;
        std::optional<int64_t> mine;
        q.reap([&](const Completion& c) {
            if (c.tag == tag) mine = c.result;
            else if (others) (*others)[c.tag] = c.result;
        });
        if (mine) return *mine;
    }
    ADD_FAILURE() << "no completion for tag " << tag;
    return INT64_MIN;
}

// Submits one request, kicks, waits for it.
int64_t run(Queue& q, const Request& r) {
    auto s = q.submit(r);
    EXPECT_TRUE(s.has_value()) << (s ? "" : s.error().message());
    if (!s) return INT64_MIN;
    q.kick();
    return wait_for(q, r.tag);
}

Errc submit_error(Queue& q, const Request& r) {
    auto s = q.submit(r);
    EXPECT_FALSE(s.has_value());
    return s ? Errc::Failed : s.error().code();
}

RawQueue& raw(Queue& q) { return dynamic_cast<RawQueue&>(q); }

// The access mode (O_RDONLY/O_WRONLY/O_RDWR) of every fd this process has open on `path`.
std::vector<int> access_modes_of(const std::string& path) {
    std::vector<int> modes;
    const auto target = std::filesystem::canonical(path);
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        const auto link = std::filesystem::read_symlink(e.path(), ec);
        if (ec || link != target) continue;
        std::ifstream info("/proc/self/fdinfo/" + e.path().filename().string());
        std::string key;
        while (info >> key) {
            if (key == "flags:") {
                std::string octal;
                info >> octal;
                modes.push_back(static_cast<int>(std::stoul(octal, nullptr, 8)) & O_ACCMODE);
                break;
            }
        }
    }
    return modes;
}

// The log on stderr (where the tests capture it), set up once for the binary.
void log_to_stderr() {
    static const bool once = [] {
        log::init_stderr();
        return true;
    }();
    (void)once;
}

class DiskTest : public ::testing::Test {
protected:
    TempDir dir;
    std::string fs = fs_name(dir.path);
    void SetUp() override {
        log_to_stderr();
        ASSERT_FALSE(dir.path.empty()) << "mkdtemp failed";
    }
};

// ---- Round trips ----

TEST_F(DiskTest, WriteThroughHasNoVolatileCacheAndItsWritesLand) {
    const auto path = dir.file("wt.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path, .writethrough = true});
    ASSERT_TRUE(disk);
    EXPECT_FALSE(disk->info().volatile_cache);
    auto q = disk->open_queue(4);
    ASSERT_TRUE(q.has_value()) << q.error().message();
    Buffer out(4096);
    out.pattern(3);
    const iovec w[] = {iov(out.data(), 4096)};
    EXPECT_EQ(run(**q, {.op = Op::Write, .offset = 8192, .iov = w, .tag = 1}), 4096);
    std::vector<uint8_t> back(4096);
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, back.data(), back.size(), 8192), 4096);
    ::close(fd);
    EXPECT_EQ(std::memcmp(back.data(), out.data(), 4096), 0);
}

TEST_F(DiskTest, WriteReadRoundTripThroughIovecs) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    const DiskInfo& info = disk->info();
    EXPECT_EQ(info.format, "raw");
    EXPECT_EQ(info.path, path);
    EXPECT_EQ(info.size_bytes, 1u << 20);
    EXPECT_EQ(info.logical_block, 512u);
    EXPECT_FALSE(info.read_only);
    EXPECT_TRUE(info.volatile_cache);
    EXPECT_TRUE(info.fua);
    if (fs == "ext4" || fs == "xfs") {
        EXPECT_TRUE(info.direct) << "O_DIRECT on " << fs;
    }

    auto q = disk->open_queue(8);
    ASSERT_TRUE(q.has_value()) << q.error().message();
    EXPECT_EQ((*q)->depth(), 8u);
    EXPECT_EQ((*q)->in_flight(), 0u);

    Buffer out(64 << 10);
    out.pattern(1);
    const iovec w[] = {iov(out.data(), 64 << 10)};
    EXPECT_EQ(run(**q, {.op = Op::Write, .offset = 128 << 10, .iov = w, .tag = 7}), 64 << 10);
    EXPECT_EQ((*q)->in_flight(), 0u);

    Buffer in(64 << 10, 0xee);
    const iovec r[] = {iov(in.data(), 64 << 10)};
    EXPECT_EQ(run(**q, {.op = Op::Read, .offset = 128 << 10, .iov = r, .tag = 8}), 64 << 10);
    EXPECT_EQ(std::memcmp(in.data(), out.data(), 64 << 10), 0);
    // The bytes are in the file where they belong, and a hole still reads as zeros.
    EXPECT_EQ(pread_file(path, 128 << 10, 64 << 10), std::vector<uint8_t>(out.data(), out.data() + (64 << 10)));
    Buffer hole(4096, 0xee);
    const iovec h[] = {iov(hole.data(), 4096)};
    EXPECT_EQ(run(**q, {.op = Op::Read, .offset = 0, .iov = h, .tag = 9}), 4096);
    EXPECT_EQ(hole.data()[0], 0);
    EXPECT_EQ(hole.data()[4095], 0);
    if (info.direct) {
        EXPECT_EQ(raw(**q).stats().direct, 3u);
    }
}

TEST_F(DiskTest, ScatteredIovecs) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(4).value();

    // Three pieces from different places (page-aligned, as guest pages are), one request.
    Buffer a(4096), b(8192), c(512);
    a.pattern(2);
    b.pattern(3);
    c.pattern(4);
    const iovec w[] = {iov(a.data(), 4096), iov(b.data(), 8192), iov(c.data(), 512)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 3 * 512, .iov = w, .tag = 1}), 4096 + 8192 + 512);
    std::vector<uint8_t> expect(a.data(), a.data() + 4096);
    expect.insert(expect.end(), b.data(), b.data() + 8192);
    expect.insert(expect.end(), c.data(), c.data() + 512);
    EXPECT_EQ(pread_file(path, 3 * 512, expect.size()), expect);

    // Read back into a different layout.
    Buffer x(1024), y(11776);
    const iovec r[] = {iov(x.data(), 1024), iov(y.data(), 11776)};
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 3 * 512, .iov = r, .tag = 2}), 12800);
    std::vector<uint8_t> got(x.data(), x.data() + 1024);
    got.insert(got.end(), y.data(), y.data() + 11776);
    EXPECT_EQ(got, expect);
}

// ---- Bounds ----

TEST_F(DiskTest, OffsetsAtTheEndAndOutOfRange) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(4).value();
    const uint64_t size = disk->info().size_bytes;

    Buffer buf(4096);
    buf.pattern(5);
    const iovec one[] = {iov(buf.data(), 512)};
    const iovec four_k[] = {iov(buf.data(), 4096)};
    // The last sector and the last 4 KiB work.
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = size - 512, .iov = one, .tag = 1}), 512);
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = size - 4096, .iov = four_k, .tag = 2}), 4096);
    EXPECT_EQ(pread_file(path, size - 512, 512), std::vector<uint8_t>(buf.data() + 3584, buf.data() + 4096));

    // Past the end, across the end, wrapping around: Invalid, and nothing is in flight.
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = size, .iov = one}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = size - 512, .iov = four_k}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Write, .offset = UINT64_MAX - 511, .iov = one}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Discard, .offset = size - 512, .length = 1024}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = size + 512, .iov = {}}), Errc::Invalid);
    // Not in whole sectors.
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = 100, .iov = one}), Errc::Invalid);
    const iovec odd[] = {iov(buf.data(), 100)};
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = 0, .iov = odd}), Errc::Invalid);
    // Too many iovecs.
    std::vector<iovec> many(kMaxIovecs + 1, iovec{buf.data(), 512});
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = 0, .iov = many}), Errc::Invalid);
    EXPECT_EQ(q->in_flight(), 0u);

    // Zero length, even right at the end: completes with 0.
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = size, .iov = {}, .tag = 3}), 0);
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 0, .iov = {}, .tag = 4}), 0);
    EXPECT_EQ(run(*q, {.op = Op::Discard, .offset = 512, .length = 0, .tag = 5}), 0);
}

TEST_F(DiskTest, FileSizeIsRoundedDownToWholeSectors) {
    const auto path = dir.file("odd.img");
    make_file(path, 1000);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    EXPECT_EQ(disk->info().size_bytes, 512u);
    make_file(path, 100);
    auto small = open_disk({.path = path});
    ASSERT_FALSE(small.has_value());
    EXPECT_EQ(small.error().code(), Errc::Invalid);
}

TEST_F(DiskTest, OpenErrors) {
    auto missing = open_disk({.path = dir.file("missing.img")});
    ASSERT_FALSE(missing.has_value());
    EXPECT_EQ(missing.error().code(), Errc::NotFound);
    auto directory = open_disk({.path = dir.path, .format = "raw"});
    ASSERT_FALSE(directory.has_value());
    EXPECT_EQ(directory.error().code(), Errc::Invalid);
    auto chr = open_disk({.path = "/dev/null", .format = "raw", .read_only = true});
    ASSERT_FALSE(chr.has_value());
    EXPECT_EQ(chr.error().code(), Errc::Invalid);

    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto bad_format = open_disk({.path = path, .format = "vmdk"});
    ASSERT_FALSE(bad_format.has_value());
    EXPECT_EQ(bad_format.error().code(), Errc::Invalid);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    EXPECT_EQ(disk->open_queue(0).error().code(), Errc::Invalid);
    EXPECT_EQ(disk->open_queue(kMaxQueueDepth + 1).error().code(), Errc::Invalid);
}

// ---- Read-only ----

TEST_F(DiskTest, ReadOnlyRefusesWritesAndDiscards) {
    const auto path = dir.file("ro.img");
    make_file(path, 1 << 20);
    {
        Buffer b(4096);
        b.pattern(6);
        UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
        ASSERT_EQ(::pwrite(fd.get(), b.data(), 4096, 8192), 4096);
    }
    auto disk = open_ok({.path = path, .read_only = true});
    ASSERT_TRUE(disk);
    EXPECT_TRUE(disk->info().read_only);
    EXPECT_FALSE(disk->info().discard);
    // Every descriptor the disk holds on the image is O_RDONLY.
    const auto modes = access_modes_of(path);
    ASSERT_FALSE(modes.empty());
    for (int m : modes) EXPECT_EQ(m, O_RDONLY);

    auto q = disk->open_queue(4).value();
    Buffer buf(4096);
    const iovec v[] = {iov(buf.data(), 4096)};
    EXPECT_EQ(submit_error(*q, {.op = Op::Write, .offset = 0, .iov = v}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Write, .offset = 0, .iov = {}}), Errc::Invalid);
    EXPECT_EQ(submit_error(*q, {.op = Op::Discard, .offset = 0, .length = 4096}), Errc::Invalid);
    EXPECT_EQ(q->in_flight(), 0u);
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 8192, .iov = v, .tag = 1}), 4096);
    EXPECT_EQ(pread_file(path, 8192, 4096), std::vector<uint8_t>(buf.data(), buf.data() + 4096));
    EXPECT_EQ(run(*q, {.op = Op::Flush, .tag = 2}), 0);
}

// ---- Durability ----

TEST_F(DiskTest, FuaWritesAndFlushComplete) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    ASSERT_TRUE(disk->info().fua);
    auto q = disk->open_queue(4).value();
    Buffer b(8192);
    b.pattern(7);
    const iovec v[] = {iov(b.data(), 8192)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 65536, .iov = v, .fua = true, .tag = 1}), 8192);
    EXPECT_EQ(pread_file(path, 65536, 8192), std::vector<uint8_t>(b.data(), b.data() + 8192));
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 0, .iov = v, .tag = 2}), 8192);
    EXPECT_EQ(run(*q, {.op = Op::Flush, .tag = 3}), 0);
    EXPECT_EQ(q->in_flight(), 0u);
}

// ---- Discard ----

TEST_F(DiskTest, DiscardPunchesHoles) {
    const auto path = dir.file("disk.img");
    constexpr uint64_t kMiB = 1 << 20;
    make_file(path, 8 * kMiB);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(4).value();
    if (!disk->info().discard) {
        EXPECT_FALSE(punches_holes(fs)) << "discard is off on " << fs;
        EXPECT_EQ(submit_error(*q, {.op = Op::Discard, .offset = 0, .length = kMiB}), Errc::Unsupported);
        std::printf("[ SKIPPED ] %s (%s) cannot punch holes: only the refusal was checked\n", fs.c_str(), dir.path.c_str());
        return;
    }
    EXPECT_TRUE(disk->info().discard_zeroes);
    EXPECT_GE(disk->info().discard_granularity, 512u);

    Buffer data(4 * kMiB);
    data.pattern(8);
    const iovec w[] = {iov(data.data(), 4 * kMiB)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 0, .iov = w, .tag = 1}), static_cast<int64_t>(4 * kMiB));
    EXPECT_EQ(run(*q, {.op = Op::Flush, .tag = 2}), 0);
    struct stat before {};
    ASSERT_EQ(::stat(path.c_str(), &before), 0);

    EXPECT_EQ(run(*q, {.op = Op::Discard, .offset = kMiB, .length = 2 * kMiB, .tag = 3}), 0);
    struct stat after {};
    ASSERT_EQ(::stat(path.c_str(), &after), 0);
    EXPECT_EQ(after.st_size, before.st_size);  // KEEP_SIZE
    // 2 MiB fewer blocks allocated (st_blocks counts 512-byte units).
    if (punches_holes(fs)) {
        EXPECT_LE(after.st_blocks, before.st_blocks - static_cast<blkcnt_t>(2 * kMiB / 512))
            << fs << ": st_blocks " << before.st_blocks << " -> " << after.st_blocks;
    } else {
        std::printf("[ SKIPPED ] st_blocks check: %s (%s) is not known to free punched blocks\n", fs.c_str(),
                    dir.path.c_str());
    }

    // The hole reads as zeros; its neighbours are untouched.
    Buffer back(4 * kMiB, 0xee);
    const iovec r[] = {iov(back.data(), 4 * kMiB)};
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 0, .iov = r, .tag = 4}), static_cast<int64_t>(4 * kMiB));
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kMiB), 0);
    EXPECT_EQ(std::memcmp(back.data() + 3 * kMiB, data.data() + 3 * kMiB, kMiB), 0);
    const std::vector<uint8_t> zeros(2 * kMiB, 0);
    EXPECT_EQ(std::memcmp(back.data() + kMiB, zeros.data(), zeros.size()), 0);
}

// ---- O_DIRECT, alignment, fallback ----

// What a test sees of the log: the lines of stderr that mention O_DIRECT.
int count_o_direct_lines(const std::string& err) {
    int n = 0;
    size_t pos = 0;
    while ((pos = err.find("O_DIRECT", pos)) != std::string::npos) {
        ++n;
        pos = err.find('\n', pos);
        if (pos == std::string::npos) break;
    }
    return n;
}

void exercise(Disk& disk, const std::string& path) {
    auto q = disk.open_queue(4).value();
    Buffer b(8192);
    b.pattern(9);
    const iovec w[] = {iov(b.data(), 4096), iov(b.data() + 4096, 512)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 1024, .iov = w, .fua = true, .tag = 1}), 4608);
    EXPECT_EQ(run(*q, {.op = Op::Flush, .tag = 2}), 0);  // buffered or not, flushes are honoured
    Buffer r(8192, 0xee);
    const iovec rv[] = {iov(r.data(), 4608)};
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 1024, .iov = rv, .tag = 3}), 4608);
    EXPECT_EQ(std::memcmp(r.data(), b.data(), 4608), 0);
    EXPECT_EQ(pread_file(path, 1024, 4608), std::vector<uint8_t>(b.data(), b.data() + 4608));
}

TEST(DiskDirect, FallbackWhenTheFileSystemRefusesODirect) {
    log_to_stderr();
    // A file system that refuses O_DIRECT at open (tmpfs before Linux 6.6 does; this one may
    // not), simulated: the disk goes buffered and says so once.
    TempDir dir("/dev/shm");
    ASSERT_FALSE(dir.path.empty());
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    int direct_attempts = 0;
    const OpenFn refuse = [&](const char* p, int flags) {
        if (flags & O_DIRECT) {
            ++direct_attempts;
            errno = EINVAL;
            return -1;
        }
        return ::open(p, flags);
    };
    testing::internal::CaptureStderr();
    auto disk = open_raw({.path = path}, refuse);
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(disk.has_value()) << disk.error().message();
    EXPECT_EQ(direct_attempts, 1);
    EXPECT_FALSE((*disk)->info().direct);
    EXPECT_EQ(count_o_direct_lines(err), 1) << err;
    EXPECT_NE(err.find("warn"), std::string::npos) << err;
    testing::internal::CaptureStderr();
    exercise(**disk, path);
    EXPECT_EQ(count_o_direct_lines(testing::internal::GetCapturedStderr()), 0);  // once, not per request

    // Direct::On fails instead; Direct::Off does not try.
    auto on = open_raw({.path = path, .direct = OpenOptions::Direct::On}, refuse);
    ASSERT_FALSE(on.has_value());
    EXPECT_EQ(on.error().code(), Errc::Io);
    direct_attempts = 0;
    testing::internal::CaptureStderr();
    auto off = open_raw({.path = path, .direct = OpenOptions::Direct::Off}, refuse);
    EXPECT_EQ(count_o_direct_lines(testing::internal::GetCapturedStderr()), 0);
    ASSERT_TRUE(off.has_value());
    EXPECT_EQ(direct_attempts, 0);
    EXPECT_FALSE((*off)->info().direct);
}

TEST(DiskDirect, TmpfsAsTheKernelHasIt) {
    log_to_stderr();
    TempDir dir("/dev/shm");
    ASSERT_FALSE(dir.path.empty());
    ASSERT_EQ(fs_name(dir.path), "tmpfs");
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    const bool kernel_takes_o_direct = [&] {
        UniqueFd fd(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
        return fd.valid();
    }();
    testing::internal::CaptureStderr();
    auto disk = open_raw({.path = path});
    const std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(disk.has_value()) << disk.error().message();
    std::printf("tmpfs on this kernel %s O_DIRECT\n", kernel_takes_o_direct ? "takes" : "refuses");
    EXPECT_EQ((*disk)->info().direct, kernel_takes_o_direct);
    EXPECT_EQ(count_o_direct_lines(err), kernel_takes_o_direct ? 0 : 1) << err;
    exercise(**disk, path);
    if (kernel_takes_o_direct) {
        // tmpfs reports no O_DIRECT alignment: 4096 is assumed, so a 512-byte write at a
        // 512-byte offset goes through the page cache, and a direct read sees it.
        EXPECT_EQ((*disk)->dio_offset_align(), 4096u);
        auto q = (*disk)->open_queue(4).value();
        Buffer b(4096), r(4096, 0xee);
        b.pattern(10);
        const iovec w[] = {iov(b.data(), 512)};
        EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 512, .iov = w, .tag = 1}), 512);
        EXPECT_EQ(raw(*q).stats().buffered, 1u);
        const iovec rv[] = {iov(r.data(), 4096)};
        EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 0, .iov = rv, .tag = 2}), 4096);
        EXPECT_EQ(raw(*q).stats().direct, 1u);
        EXPECT_EQ(std::memcmp(r.data() + 512, b.data(), 512), 0);
    }
}

TEST_F(DiskTest, MisalignedBuffersAreBounced) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto d = open_raw({.path = path});
    ASSERT_TRUE(d.has_value()) << d.error().message();
    auto& disk = **d;
    if (!disk.info().direct) GTEST_SKIP() << "no O_DIRECT on " << fs;
    auto q = disk.open_queue(4).value();

    // Memory one byte off any alignment, and iovec lengths that are not whole sectors.
    Buffer b(16384), r(16384, 0xee);
    b.pattern(11);
    const iovec w[] = {iov(b.data() + 1, 4096), iov(b.data() + 5000, 100), iov(b.data() + 6000, 412)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 8192, .iov = w, .tag = 1}), 4608);
    const iovec rv[] = {iov(r.data() + 3, 4608)};
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 8192, .iov = rv, .tag = 2}), 4608);
    std::vector<uint8_t> expect(b.data() + 1, b.data() + 4097);
    expect.insert(expect.end(), b.data() + 5000, b.data() + 5100);
    expect.insert(expect.end(), b.data() + 6000, b.data() + 6412);
    EXPECT_EQ(std::vector<uint8_t>(r.data() + 3, r.data() + 3 + 4608), expect);
    EXPECT_EQ(pread_file(path, 8192, 4608), expect);
    const auto& st = raw(*q).stats();
    EXPECT_EQ(st.bounced, 2u) << "mem align " << disk.dio_mem_align() << ", offset align " << disk.dio_offset_align();
    EXPECT_EQ(st.einval_retried, 0u);
}

// ---- Depth, back-pressure, completions ----

TEST_F(DiskTest, ManyInFlightUntilBusy) {
    const auto path = dir.file("disk.img");
    constexpr uint32_t kDepth = 64, kRequests = 1000, kBlock = 4096;
    make_file(path, uint64_t{kRequests} * kBlock);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(kDepth).value();
    Buffer data(size_t{kRequests} * kBlock);
    data.pattern(12);
    std::vector<iovec> iovs(kRequests);
    for (uint32_t i = 0; i < kRequests; ++i) iovs[i] = iov(data.data() + size_t{i} * kBlock, kBlock);

    std::map<uint64_t, int64_t> done;
    uint32_t next = 0;
    bool saw_busy = false;
    while (done.size() < kRequests) {
        while (next < kRequests) {
            auto s = q->submit({.op = Op::Write, .offset = uint64_t{next} * kBlock,
                                .iov = std::span<const iovec>(&iovs[next], 1), .tag = next});
            if (!s) {
                ASSERT_EQ(s.error().code(), Errc::Busy) << s.error().message();
                if (!saw_busy) {
                    EXPECT_EQ(next, kDepth);  // the first Busy comes exactly at the depth
                }
                EXPECT_EQ(q->in_flight(), kDepth);
                saw_busy = true;
                break;
            }
            ++next;
        }
        q->kick();
        pollfd pfd{q->completion_fd(), POLLIN, 0};
        ASSERT_GT(::poll(&pfd, 1, 5000), 0);
        q->reap([&](const Completion& c) {
            EXPECT_FALSE(done.contains(c.tag));
            done[c.tag] = c.result;
        });
    }
    EXPECT_TRUE(saw_busy);
    EXPECT_EQ(q->in_flight(), 0u);
    for (const auto& [tag, result] : done) EXPECT_EQ(result, kBlock) << "tag " << tag;
    EXPECT_EQ(pread_file(path, 0, size_t{kRequests} * kBlock),
              std::vector<uint8_t>(data.data(), data.data() + size_t{kRequests} * kBlock));
}

TEST_F(DiskTest, CompletionFdIsReadableAfterACompletion) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(4).value();
    pollfd pfd{q->completion_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, 0), 0);  // nothing yet

    Buffer b(4096);
    const iovec v[] = {iov(b.data(), 4096)};
    ASSERT_TRUE(q->submit({.op = Op::Read, .offset = 0, .iov = v, .tag = 42}).has_value());
    EXPECT_EQ(q->in_flight(), 1u);
    q->kick();
    ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
    EXPECT_TRUE(pfd.revents & POLLIN);
    std::vector<Completion> got;
    EXPECT_EQ(q->reap([&](const Completion& c) { got.push_back(c); }), 1u);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].tag, 42u);
    EXPECT_EQ(got[0].result, 4096);
    EXPECT_EQ(::poll(&pfd, 1, 0), 0);  // reap cleared it
    EXPECT_EQ(q->reap([](const Completion&) {}), 0u);
}

TEST_F(DiskTest, CallbackMaySubmitIntoTheFreedSlot) {
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(1).value();
    Buffer b(4096);
    const iovec v[] = {iov(b.data(), 4096)};
    ASSERT_TRUE(q->submit({.op = Op::Read, .offset = 0, .iov = v, .tag = 1}).has_value());
    EXPECT_EQ(submit_error(*q, {.op = Op::Read, .offset = 0, .iov = v, .tag = 2}), Errc::Busy);
    q->kick();
    bool resubmitted = false;
    std::map<uint64_t, int64_t> others;
    pollfd pfd{q->completion_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
    q->reap([&](const Completion& c) {
        if (c.tag == 1) {
            EXPECT_EQ(q->in_flight(), 0u);
            resubmitted = q->submit({.op = Op::Read, .offset = 4096, .iov = v, .tag = 2}).has_value();
            q->kick();
        } else {
            others[c.tag] = c.result;  // the second one may complete within the same reap
        }
    });
    EXPECT_TRUE(resubmitted);
    if (!others.contains(2)) others[2] = wait_for(*q, 2);
    EXPECT_EQ(others[2], 4096);
}

TEST_F(DiskTest, ShortTransfersAreContinuedOrFail) {
    // The image shrinks under the disk: a read across the new end gets a short count, the
    // rest is asked for again and makes no progress: -EIO, never a partial success.
    const auto path = dir.file("disk.img");
    make_file(path, 1 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    auto q = disk->open_queue(4).value();
    ASSERT_EQ(::truncate(path.c_str(), 512 << 10), 0);
    Buffer b(8192);
    const iovec v[] = {iov(b.data(), 8192)};
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = (512 << 10) - 4096, .iov = v, .tag = 1}), -EIO);
    EXPECT_EQ(raw(*q).stats().resubmitted, 1u);
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 768 << 10, .iov = v, .tag = 2}), -EIO);
}

TEST_F(DiskTest, DestroyingAQueueWaitsForItsRequests) {
    const auto path = dir.file("disk.img");
    make_file(path, 4 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    Buffer data(4 << 20);
    data.pattern(13);
    std::vector<iovec> iovs(16);
    {
        auto q = disk->open_queue(16).value();
        for (uint32_t i = 0; i < 16; ++i) {
            iovs[i] = iov(data.data() + (size_t{i} << 18), 1 << 18);
            ASSERT_TRUE(q->submit({.op = Op::Write, .offset = uint64_t{i} << 18,
                                   .iov = std::span<const iovec>(&iovs[i], 1), .tag = i})
                            .has_value());
        }
        q->kick();
        EXPECT_EQ(q->in_flight(), 16u);
    }  // no reap: the destructor waits
    EXPECT_EQ(pread_file(path, 0, 4 << 20), std::vector<uint8_t>(data.data(), data.data() + (4 << 20)));
}

TEST_F(DiskTest, QueuesOnSeveralThreadsShareADisk) {
    const auto path = dir.file("disk.img");
    make_file(path, 4 << 20);
    auto disk = open_ok({.path = path});
    ASSERT_TRUE(disk);
    Buffer data(4 << 20);
    data.pattern(14);
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            auto q = disk->open_queue(8).value();
            for (uint32_t i = 0; i < 16; ++i) {
                const uint64_t off = (uint64_t{t} << 20) + (uint64_t{i} << 16);
                const iovec v[] = {iov(data.data() + off, 1 << 16)};
                EXPECT_EQ(run(*q, {.op = Op::Write, .offset = off, .iov = v, .tag = i}), 1 << 16);
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(pread_file(path, 0, 4 << 20), std::vector<uint8_t>(data.data(), data.data() + (4 << 20)));
}

// ---- Formats ----

TEST_F(DiskTest, DetectFormat) {
    const uint8_t vhdx[] = {'v', 'h', 'd', 'x', 'f', 'i', 'l', 'e', 0, 0};
    const uint8_t qcow[] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    const uint8_t zeros[16] = {};
    EXPECT_EQ(detect_format(std::span<const uint8_t>(vhdx)), "vhdx");
    EXPECT_EQ(detect_format(std::span<const uint8_t>(qcow)), "qcow2");
    EXPECT_EQ(detect_format(std::span<const uint8_t>(zeros)), "raw");
    EXPECT_EQ(detect_format(std::span<const uint8_t>(vhdx, 7)), "raw");  // too short to be one
    EXPECT_EQ(detect_format(std::span<const uint8_t>()), "raw");

    const auto raw_path = dir.file("raw.img");
    make_file(raw_path, 1 << 20);
    EXPECT_EQ(detect_format(raw_path).value(), "raw");

    // A file with a VHDX signature (nothing else of a VHDX): detected, and refused clearly
    // as a malformed VHDX (vhdx_test.cpp has the real ones).
    const auto vhdx_path = dir.file("fake.vhdx");
    make_file(vhdx_path, 1 << 20);
    {
        UniqueFd fd(::open(vhdx_path.c_str(), O_WRONLY | O_CLOEXEC));
        ASSERT_EQ(::pwrite(fd.get(), "vhdxfile", 8, 0), 8);
    }
    EXPECT_EQ(detect_format(vhdx_path).value(), "vhdx");
    auto d = open_disk({.path = vhdx_path});
    ASSERT_FALSE(d.has_value());
    EXPECT_EQ(d.error().code(), Errc::Invalid);
    EXPECT_NE(d.error().message().find("no valid header"), std::string::npos) << d.error().message();
    auto v = open_disk({.path = vhdx_path, .format = "vhdx"});
    ASSERT_FALSE(v.has_value());
    EXPECT_EQ(v.error().code(), Errc::Invalid);
    // Named raw, it is raw: the bytes are the guest's.
    auto as_raw = open_disk({.path = vhdx_path, .format = "raw"});
    ASSERT_TRUE(as_raw.has_value()) << as_raw.error().message();
    EXPECT_EQ((*as_raw)->info().format, "raw");

    EXPECT_EQ(detect_format(dir.file("missing")).error().code(), Errc::NotFound);
}

// ---- A block device (only with ENLIGHTEN_TEST_BLOCK_DEVICE=/dev/... whose contents may go) ----

TEST(DiskBlockDevice, ReadWriteDiscard) {
    const char* dev = std::getenv("ENLIGHTEN_TEST_BLOCK_DEVICE");
    if (!dev || !*dev) GTEST_SKIP() << "set ENLIGHTEN_TEST_BLOCK_DEVICE to a scratch block device (it is overwritten)";
    auto d = open_raw({.path = dev});
    ASSERT_TRUE(d.has_value()) << d.error().message();
    auto& disk = **d;
    EXPECT_TRUE(disk.block_device());
    const DiskInfo& info = disk.info();
    EXPECT_GT(info.size_bytes, 0u);
    EXPECT_GE(info.logical_block, 512u);
    EXPECT_GE(info.physical_block, info.logical_block);
    std::printf("%s: %llu bytes, logical %u, physical %u, direct %d (mem %u, offset %u), discard %d (granularity %u)\n",
                dev, static_cast<unsigned long long>(info.size_bytes), info.logical_block, info.physical_block,
                info.direct, disk.dio_mem_align(), disk.dio_offset_align(), info.discard, info.discard_granularity);
    auto q = disk.open_queue(8).value();
    Buffer b(1 << 20), r(1 << 20, 0xee);
    b.pattern(15);
    const iovec w[] = {iov(b.data(), 1 << 20)};
    const iovec rv[] = {iov(r.data(), 1 << 20)};
    EXPECT_EQ(run(*q, {.op = Op::Write, .offset = 0, .iov = w, .fua = true, .tag = 1}), 1 << 20);
    EXPECT_EQ(run(*q, {.op = Op::Flush, .tag = 2}), 0);
    EXPECT_EQ(run(*q, {.op = Op::Read, .offset = 0, .iov = rv, .tag = 3}), 1 << 20);
    EXPECT_EQ(std::memcmp(r.data(), b.data(), 1 << 20), 0);
    if (info.discard) {
        EXPECT_EQ(run(*q, {.op = Op::Discard, .offset = 0, .length = 1 << 20, .tag = 4}), 0);
        EXPECT_EQ(raw(*q).stats().helper, 1u);
    }
}

}  // namespace
