// GuestMemory: regions added at run time, lock-free snapshots, discard, iovecs.
#include "kvm/guest_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/size.hpp"

namespace enlighten {
namespace {

constexpr uint64_t kPage = GuestMemory::kPageSize;

bool resident(const uint8_t* p) {
    unsigned char v = 0;
    EXPECT_EQ(::mincore(const_cast<uint8_t*>(p), kPage, &v), 0);
    return (v & 1U) != 0;
}

TEST(GuestMemory, AddRamThenReadAndWrite) {
    GuestMemory mem;
    EXPECT_TRUE(mem.regions().empty());
    ASSERT_TRUE(mem.add_ram(0, 2 * MiB).has_value());
    auto high = mem.add_ram(4 * GiB, 128 * MiB);
    ASSERT_TRUE(high.has_value()) << high.error().message();
    EXPECT_EQ(high->gpa, 4 * GiB);
    EXPECT_EQ(high->size, 128 * MiB);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(high->host) % (2 * MiB), 0U);  // THP-friendly

    const uint64_t at = 4 * GiB + 100 * MiB + 12;
    ASSERT_TRUE(mem.write_obj<uint64_t>(at, 0x1122334455667788ULL).has_value());
    auto back = mem.read_obj<uint64_t>(at);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, 0x1122334455667788ULL);
    EXPECT_EQ(mem.host_ptr(at, 8), high->host + (at - 4 * GiB));
    EXPECT_TRUE(mem.fill(4 * GiB, 0x5a, 4096).has_value());
    EXPECT_EQ(high->host[4095], 0x5a);

    EXPECT_EQ(mem.total_size(), 2 * MiB + 128 * MiB);
    ASSERT_EQ(mem.regions().size(), 2U);
    EXPECT_EQ(mem.regions()[0].gpa, 0U);
    EXPECT_EQ(mem.regions()[1].gpa, 4 * GiB);
    // Not RAM: the gap, past the end, and a range running off a region.
    EXPECT_FALSE(mem.contains(2 * MiB, 1));
    EXPECT_FALSE(mem.contains(4 * GiB + 128 * MiB, 1));
    EXPECT_FALSE(mem.contains(4 * GiB + 128 * MiB - 4, 8));
    EXPECT_FALSE(mem.read_obj<uint32_t>(3 * GiB).has_value());
}

TEST(GuestMemory, AllocateKeepsTheOldInterface) {
    auto mem = GuestMemory::allocate({{4 * GiB, 4 * MiB, nullptr}, {0, 2 * MiB, nullptr}, {8 * GiB, 0, nullptr}});
    ASSERT_TRUE(mem.has_value()) << mem.error().message();
    ASSERT_EQ(mem->regions().size(), 2U);  // the empty one is skipped
    EXPECT_EQ(mem->regions()[0].gpa, 0U);  // sorted
    EXPECT_NE(mem->regions()[0].host, nullptr);
    EXPECT_EQ(mem->total_size(), 6 * MiB);
    // A move keeps the same state (and every snapshot) alive.
    const MemoryMap* before = &mem->snapshot();
    GuestMemory moved = std::move(*mem);
    EXPECT_EQ(&moved.snapshot(), before);
    EXPECT_TRUE(moved.contains(4 * GiB, 4 * MiB));
}

TEST(GuestMemory, AddRamRefusesOverlapAndBadRanges) {
    GuestMemory mem;
    ASSERT_TRUE(mem.add_ram(1 * GiB, 64 * MiB).has_value());
    struct Case {
        uint64_t gpa, size;
    };
    for (const Case c : {Case{1 * GiB, 64 * MiB},             // the same
                         Case{1 * GiB - 4 * MiB, 8 * MiB},    // over the start
                         Case{1 * GiB + 60 * MiB, 8 * MiB},   // over the end
                         Case{1 * GiB + 4 * MiB, 4 * MiB},    // inside
                         Case{1 * GiB - 4 * MiB, 128 * MiB},  // around
                         Case{2 * GiB, 0},                    // empty
                         Case{2 * GiB + 512, 4096},           // unaligned start
                         Case{2 * GiB, 4097},                 // unaligned size
                         Case{~uint64_t{0} - 4095, 8192}}) {  // wraps
        auto r = mem.add_ram(c.gpa, c.size);
        ASSERT_FALSE(r.has_value()) << std::hex << c.gpa << "+" << c.size;
        EXPECT_EQ(r.error().code(), Errc::Invalid) << r.error().message();
    }
    EXPECT_EQ(mem.regions().size(), 1U);
    // Touching ranges are not overlaps.
    EXPECT_TRUE(mem.add_ram(1 * GiB - 4 * MiB, 4 * MiB).has_value());
    EXPECT_TRUE(mem.add_ram(1 * GiB + 64 * MiB, 4 * MiB).has_value());
    EXPECT_EQ(mem.regions().size(), 3U);
}

TEST(GuestMemory, OldSnapshotsStayValid) {
    GuestMemory mem;
    ASSERT_TRUE(mem.add_ram(0, 1 * MiB).has_value());
    const MemoryMap& old = mem.snapshot();
    ASSERT_TRUE(mem.write_obj<uint32_t>(64, 0xabcdef01).has_value());
    ASSERT_TRUE(mem.add_ram(16 * MiB, 1 * MiB).has_value());
    ASSERT_TRUE(mem.move_region(16 * MiB, 32 * MiB).has_value());
    ASSERT_TRUE(mem.remove_region(0).has_value());

    // The old map is unchanged and its memory still mapped.
    ASSERT_EQ(old.regions().size(), 1U);
    uint8_t* p = old.host_ptr(64, 4);
    ASSERT_NE(p, nullptr);
    uint32_t v = 1;
    std::memcpy(&v, p, 4);
    EXPECT_EQ(v, 0U);  // remove_region gave the pages back: zeros, but still our mapping
    // The current map has only the moved region.
    ASSERT_EQ(mem.regions().size(), 1U);
    EXPECT_EQ(mem.regions()[0].gpa, 32 * MiB);
    EXPECT_FALSE(mem.contains(0, 1));
    EXPECT_FALSE(mem.contains(16 * MiB, 1));
}

TEST(GuestMemory, LookupByBinarySearch) {
    // 64 one-page regions at every other page, all in one host buffer.
    std::vector<uint8_t> ram(128 * kPage);
    std::vector<MemoryRegion> regions;
    for (uint64_t i = 63;; --i) {  // given out of order: borrow sorts
        regions.push_back({2 * i * kPage, kPage, ram.data() + 2 * i * kPage});
        if (i == 0) break;
    }
    GuestMemory mem = GuestMemory::borrow(regions);
    const MemoryMap& map = mem.snapshot();
    ASSERT_EQ(map.regions().size(), 64U);
    for (uint64_t i = 0; i < 64; ++i) {
        const uint64_t gpa = 2 * i * kPage;
        EXPECT_EQ(map.host_ptr(gpa, kPage), ram.data() + gpa);
        EXPECT_EQ(map.host_ptr(gpa + kPage - 1, 1), ram.data() + gpa + kPage - 1);
        EXPECT_EQ(map.host_ptr(gpa + kPage, 1), nullptr);  // the hole after it
        EXPECT_EQ(map.host_ptr(gpa + 1, kPage), nullptr);  // runs off the region
        ASSERT_NE(map.find(gpa + 7), nullptr);
        EXPECT_EQ(map.find(gpa + 7)->gpa, gpa);
        EXPECT_EQ(map.find(gpa + kPage), nullptr);
    }
    EXPECT_EQ(map.host_ptr(~uint64_t{0}, 1), nullptr);
    EXPECT_EQ(map.host_ptr(0, ~uint64_t{0}), nullptr);
}

TEST(GuestMemory, DiscardGivesZerosAndPagesBack) {
    GuestMemory mem;
    auto r = mem.add_ram(0, 4 * MiB);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(mem.fill(0, 0xab, 4 * MiB).has_value());
    const uint64_t at = 1 * MiB;
    ASSERT_TRUE(resident(r->host + at));

    ASSERT_TRUE(mem.discard(at, 2 * kPage).has_value());
    EXPECT_FALSE(resident(r->host + at));
    for (uint64_t off : {at, at + kPage, at + 2 * kPage - 1}) EXPECT_EQ(r->host[off], 0) << off;
    EXPECT_EQ(r->host[at - 1], 0xab);
    EXPECT_EQ(r->host[at + 2 * kPage], 0xab);
    // The guest can use the page again.
    ASSERT_TRUE(mem.write_obj<uint8_t>(at, 7).has_value());
    EXPECT_EQ(*mem.read_obj<uint8_t>(at), 7);
}

TEST(GuestMemory, DiscardRefusesNonRamAndUnalignedRanges) {
    GuestMemory mem;
    auto r = mem.add_ram(0, 1 * MiB);
    ASSERT_TRUE(r.has_value());
    ASSERT_TRUE(mem.fill(0, 0xcd, 1 * MiB).has_value());
    struct Case {
        uint64_t gpa, len;
    };
    for (const Case c : {Case{1 * MiB, kPage},               // past the end
                         Case{1 * MiB - kPage, 2 * kPage},   // runs off the end
                         Case{3 * GiB, kPage},               // nowhere
                         Case{100, kPage},                   // unaligned start
                         Case{0, 100},                       // unaligned length
                         Case{0, 0}}) {                      // empty
        auto d = mem.discard(c.gpa, c.len);
        ASSERT_FALSE(d.has_value()) << std::hex << c.gpa << "+" << c.len;
        EXPECT_EQ(d.error().code(), Errc::Invalid);
    }
    // Nothing was dropped, not even the part that was RAM.
    EXPECT_EQ(r->host[1 * MiB - kPage], 0xcd);
    EXPECT_EQ(r->host[0], 0xcd);
}

TEST(GuestMemory, DiscardSpansAdjacentRegionsAndZeroFillsBorrowedMemory) {
    std::vector<uint8_t> a(4 * kPage, 0x11), b(4 * kPage, 0x22);
    GuestMemory mem = GuestMemory::borrow({{0, a.size(), a.data()}, {a.size(), b.size(), b.data()}});
    ASSERT_TRUE(mem.discard(3 * kPage, 2 * kPage).has_value());
    EXPECT_EQ(a[3 * kPage - 1], 0x11);
    EXPECT_EQ(a[3 * kPage], 0);
    EXPECT_EQ(b[kPage - 1], 0);
    EXPECT_EQ(b[kPage], 0x22);
}

TEST(GuestMemory, IovecsMergeAdjacentHostPiecesAndSplitAtRegionEdges) {
    std::vector<uint8_t> buf1(32 * kPage), buf2(16 * kPage);
    // A and B are adjacent in both gpa and host memory; C follows B in gpa, not in host.
    GuestMemory mem = GuestMemory::borrow({{0, 16 * kPage, buf1.data()},
                                           {16 * kPage, 16 * kPage, buf1.data() + 16 * kPage},
                                           {32 * kPage, 16 * kPage, buf2.data()}});
    IovecList iov;
    // One range across A and B: one iovec.
    const GuestRange across_ab[] = {{8 * kPage, 16 * kPage}};
    ASSERT_TRUE(mem.iovecs(across_ab, iov).has_value());
    ASSERT_EQ(iov.size(), 1U);
    EXPECT_EQ(iov[0].iov_base, buf1.data() + 8 * kPage);
    EXPECT_EQ(iov[0].iov_len, 16 * kPage);

    // Across B and C: split at the region edge.
    const GuestRange across_bc[] = {{30 * kPage + 100, 4 * kPage}};
    ASSERT_TRUE(mem.iovecs(across_bc, iov).has_value());
    ASSERT_EQ(iov.size(), 2U);
    EXPECT_EQ(iov[0].iov_base, buf1.data() + 30 * kPage + 100);
    EXPECT_EQ(iov[0].iov_len, 2 * kPage - 100);
    EXPECT_EQ(iov[1].iov_base, buf2.data());
    EXPECT_EQ(iov[1].iov_len, 2 * kPage + 100);

    // Separate ranges that meet in host memory merge; an empty range adds nothing; a
    // range that does not continue the last one starts a new entry.
    const GuestRange list[] = {{0, 100}, {100, 200}, {5 * kPage, 0}, {300, kPage}, {40 * kPage, 8}, {0, 8}};
    ASSERT_TRUE(mem.iovecs(list, iov).has_value());
    ASSERT_EQ(iov.size(), 3U);
    EXPECT_EQ(iov[0].iov_base, buf1.data());
    EXPECT_EQ(iov[0].iov_len, 300 + kPage);
    EXPECT_EQ(iov[1].iov_base, buf2.data() + 8 * kPage);
    EXPECT_EQ(iov[1].iov_len, 8U);
    EXPECT_EQ(iov[2].iov_base, buf1.data());
    EXPECT_EQ(iov[2].iov_len, 8U);
}

TEST(GuestMemory, IovecsRefuseHolesAndTheCap) {
    std::vector<uint8_t> ram(2 * GuestMemory::kMaxIovecs * 32 + 64);
    // Two regions with a hole between them.
    GuestMemory mem = GuestMemory::borrow({{0, ram.size() / 2, ram.data()},
                                           {ram.size() / 2 + kPage, ram.size() / 2, ram.data() + ram.size() / 2}});

    IovecList iov;
    const GuestRange hole[] = {{0, 16}, {ram.size() / 2 - 8, 16}};  // the second runs into the hole
    auto r = mem.iovecs(hole, iov);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Errc::Invalid);
    EXPECT_TRUE(iov.empty());
    const GuestRange outside[] = {{1ULL << 40, 1}};
    r = mem.iovecs(outside, iov);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Errc::Invalid);

    // Ranges of 16 bytes 32 bytes apart: one iovec each, up to the cap.
    std::vector<GuestRange> ranges;
    for (uint64_t i = 0; i < GuestMemory::kMaxIovecs; ++i) ranges.push_back({i * 32, 16});
    ASSERT_TRUE(mem.iovecs(ranges, iov).has_value());
    EXPECT_EQ(iov.size(), GuestMemory::kMaxIovecs);
    EXPECT_EQ(iov.back().iov_base, ram.data() + (GuestMemory::kMaxIovecs - 1) * 32);
    ranges.push_back({GuestMemory::kMaxIovecs * 32, 16});
    r = mem.iovecs(ranges, iov);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Errc::Invalid);
    EXPECT_TRUE(iov.empty());
    // The same bytes as one range need one entry.
    const GuestRange whole[] = {{0, GuestMemory::kMaxIovecs * 32 + 16}};
    ASSERT_TRUE(mem.iovecs(whole, iov).has_value());
    EXPECT_EQ(iov.size(), 1U);
}

TEST(GuestMemory, MoveAndRemoveRegion) {
    GuestMemory mem;
    auto vram = mem.add_ram(1 * GiB, 8 * MiB);
    ASSERT_TRUE(vram.has_value());
    ASSERT_TRUE(mem.add_ram(2 * GiB, 8 * MiB).has_value());
    ASSERT_TRUE(mem.write_obj<uint32_t>(1 * GiB + 16, 0xfeedf00d).has_value());

    // Onto a range overlapping itself: allowed; onto another region: refused.
    auto moved = mem.move_region(1 * GiB, 1 * GiB + 4 * MiB);
    ASSERT_TRUE(moved.has_value()) << moved.error().message();
    EXPECT_EQ(moved->host, vram->host);
    EXPECT_EQ(*mem.read_obj<uint32_t>(1 * GiB + 4 * MiB + 16), 0xfeedf00dU);
    EXPECT_FALSE(mem.contains(1 * GiB, 1));
    auto clash = mem.move_region(1 * GiB + 4 * MiB, 2 * GiB - 4 * MiB);
    ASSERT_FALSE(clash.has_value());
    EXPECT_EQ(clash.error().code(), Errc::Invalid);
    EXPECT_EQ(mem.move_region(3 * GiB, 4 * GiB).error().code(), Errc::NotFound);
    EXPECT_EQ(mem.move_region(1 * GiB + 4 * MiB, 5 * GiB + 1).error().code(), Errc::Invalid);

    ASSERT_TRUE(mem.remove_region(1 * GiB + 4 * MiB).has_value());
    EXPECT_FALSE(mem.contains(1 * GiB + 4 * MiB, 1));
    EXPECT_EQ(mem.remove_region(1 * GiB + 4 * MiB).error().code(), Errc::NotFound);
    // The range is free again.
    EXPECT_TRUE(mem.add_ram(1 * GiB, 16 * MiB).has_value());
}

TEST(GuestMemory, BoundsRegionsAndRetainedMaps) {
    GuestMemory mem;
    for (uint64_t i = 0; i < GuestMemory::kMaxRegions; ++i)
        ASSERT_TRUE(mem.add_ram(i * 2 * kPage, kPage).has_value()) << i;
    EXPECT_FALSE(mem.add_ram(1 * GiB, kPage).has_value());
    EXPECT_EQ(mem.regions().size(), GuestMemory::kMaxRegions);

    std::vector<uint8_t> ram(kPage);
    GuestMemory small = GuestMemory::borrow({{0, kPage, ram.data()}});
    // Two maps so far (the empty one and borrow's); every move publishes one more.
    uint64_t at = 0;
    for (size_t i = 2; i < GuestMemory::kMaxMaps; ++i) {
        ASSERT_TRUE(small.move_region(at, at ^ kPage).has_value()) << i;
        at ^= kPage;
    }
    EXPECT_FALSE(small.move_region(at, at ^ kPage).has_value());
    EXPECT_TRUE(small.contains(at, kPage));  // the last map still stands
}

// Readers never lock: one thread reads startup RAM (and looks at the newest regions) while
// another adds 100 regions. Must be clean under ThreadSanitizer.
TEST(GuestMemory, ReadersRunWhileRegionsAreAdded) {
    GuestMemory mem;
    ASSERT_TRUE(mem.add_ram(0, 2 * MiB).has_value());
    for (uint64_t off = 0; off < 2 * MiB; off += kPage)
        ASSERT_TRUE(mem.write_obj<uint64_t>(off, off ^ 0x5555).has_value());

    constexpr int kAdds = 100;
    std::atomic<bool> done{false};
    std::atomic<uint64_t> reads{0};
    size_t most_seen = 0;
    bool reader_ok = true;
    std::thread reader([&] {
        size_t last = 0;
        uint64_t off = 0;
        for (;;) {
            // Seen with acquire: the iteration after it sees every region added.
            const bool finished = done.load(std::memory_order_acquire);
            off = (off + kPage) % (2 * MiB);
            const uint8_t* p = mem.host_ptr(off, 8);
            auto v = mem.read_obj<uint64_t>(off);
            if (p == nullptr || !v || *v != (off ^ 0x5555)) reader_ok = false;
            const MemoryMap& map = mem.snapshot();
            if (map.regions().size() < last) reader_ok = false;  // maps only grow here
            last = map.regions().size();
            // The newest added region reads as zeros (nobody writes it), through this map
            // and through whatever map is current now.
            if (const MemoryRegion& newest = map.regions().back(); newest.gpa != 0) {
                uint8_t byte = 1;
                if (!mem.read(newest.gpa, std::span(&byte, 1)) || byte != 0) reader_ok = false;
                const uint8_t* q = map.host_ptr(newest.gpa + newest.size - 1, 1);
                if (q == nullptr || *q != 0) reader_ok = false;
            }
            reads.fetch_add(1, std::memory_order_relaxed);
            if (finished && reads.load(std::memory_order_relaxed) >= 1000) break;
        }
        most_seen = last;
    });
    for (int i = 0; i < kAdds; ++i) {
        auto r = mem.add_ram(4 * GiB + static_cast<uint64_t>(i) * 4 * MiB, 2 * MiB);
        EXPECT_TRUE(r.has_value()) << r.error().message();
        if (!r) break;  // no ASSERT here: the reader must be joined
    }
    done.store(true, std::memory_order_release);
    reader.join();
    EXPECT_TRUE(reader_ok);
    EXPECT_GE(reads.load(), 1000U);
    EXPECT_EQ(most_seen, static_cast<size_t>(kAdds) + 1);
    EXPECT_EQ(mem.regions().size(), static_cast<size_t>(kAdds) + 1);
    EXPECT_EQ(mem.total_size(), 2 * MiB * (kAdds + 1));
}

}  // namespace
}  // namespace enlighten
