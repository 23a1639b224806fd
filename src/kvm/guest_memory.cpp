#include "kvm/guest_memory.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>

#include "common/thread_annotations.hpp"

namespace enlighten {

namespace {

constexpr uint64_t kHugePage = 2ULL << 20;

bool page_aligned(uint64_t v) { return v % GuestMemory::kPageSize == 0; }

// [gpa, gpa+size) with size > 0, page aligned, not wrapping.
Result<> check_range(const char* what, uint64_t gpa, uint64_t size) {
    if (size == 0) return fail(Errc::Invalid, "{}: empty range at {:#x}", what, gpa);
    if (!page_aligned(gpa) || !page_aligned(size))
        return fail(Errc::Invalid, "{}: {:#x}+{:#x} is not page aligned", what, gpa, size);
    if (size > std::numeric_limits<uint64_t>::max() - gpa)
        return fail(Errc::Invalid, "{}: {:#x}+{:#x} wraps around", what, gpa, size);
    return {};
}

bool overlaps(const MemoryRegion& r, uint64_t gpa, uint64_t size) { return gpa < r.end() && r.gpa < gpa + size; }

void sort_by_gpa(std::vector<MemoryRegion>& regions) {
    std::sort(regions.begin(), regions.end(),
              [](const MemoryRegion& a, const MemoryRegion& b) { return a.gpa < b.gpa; });
}

}  // namespace

// ---- MemoryMap ----

MemoryMap::MemoryMap(std::vector<MemoryRegion> regions) : regions_(std::move(regions)) {
    for (const auto& r : regions_) total_ += r.size;
}

const MemoryRegion* MemoryMap::find(uint64_t gpa) const {
    auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                               [](uint64_t a, const MemoryRegion& r) { return a < r.gpa; });
    if (it == regions_.begin()) return nullptr;
    --it;
    return gpa - it->gpa < it->size ? &*it : nullptr;
}

uint8_t* MemoryMap::host_ptr(uint64_t gpa, uint64_t len) const {
    // The last region starting at or below gpa is the only one that can hold the range.
    auto it = std::upper_bound(regions_.begin(), regions_.end(), gpa,
                               [](uint64_t a, const MemoryRegion& r) { return a < r.gpa; });
    if (it == regions_.begin()) return nullptr;
    --it;
    // Written so that no addition can overflow: gpa >= it->gpa, then compare offsets.
    const uint64_t off = gpa - it->gpa;
    if (off > it->size || len > it->size - off) return nullptr;
    return it->host + off;
}

// ---- GuestMemory ----

struct GuestMemory::State {
    // The published map: written under mu (release), read by anyone (acquire).
    std::atomic<const MemoryMap*> current{nullptr};
    Mutex mu;
    // Every map ever published, the current one last. Never shrinks (readers may hold any).
    std::vector<std::unique_ptr<const MemoryMap>> maps ENL_GUARDED_BY(mu);
    // Host mappings made by add_ram; unmapped only when the State goes.
    struct Mapping {
        uint8_t* host;
        uint64_t size;
    };
    std::vector<Mapping> owned ENL_GUARDED_BY(mu);

    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
        for (const auto& m : owned) ::munmap(m.host, m.size);
    }

    [[nodiscard]] const MemoryMap& map() const ENL_REQUIRES(mu) { return *current.load(std::memory_order_relaxed); }

    // Refuses a change that would exceed the bounds on regions or retained maps.
    Result<> check_room(size_t regions) const ENL_REQUIRES(mu) {
        if (regions > kMaxRegions) return fail("guest memory: more than {} regions", kMaxRegions);
        if (maps.size() >= kMaxMaps) return fail("guest memory: more than {} changes to the memory map", kMaxMaps);
        return {};
    }

    // `regions` sorted and disjoint; check_room() passed.
    void publish(std::vector<MemoryRegion> regions) ENL_REQUIRES(mu) {
        auto map = std::make_unique<const MemoryMap>(std::move(regions));
        const MemoryMap* p = map.get();
        maps.push_back(std::move(map));
        current.store(p, std::memory_order_release);
    }

    [[nodiscard]] bool is_owned(const uint8_t* host) const ENL_REQUIRES(mu) {
        return std::any_of(owned.begin(), owned.end(),
                           [host](const Mapping& m) { return host >= m.host && host < m.host + m.size; });
    }

    // Gives [host, host+len) back to the host, or zero-fills it if we do not own it.
    Result<> drop_pages(uint8_t* host, uint64_t len) const ENL_REQUIRES(mu) {
        if (!is_owned(host)) {
            std::memset(host, 0, len);
            return {};
        }
        if (::madvise(host, len, MADV_DONTNEED) != 0) return fail_errno("madvise(MADV_DONTNEED) on guest memory");
        return {};
    }
};

namespace {
const MemoryMap& empty_map() {
    static const MemoryMap empty;
    return empty;
}
}  // namespace

GuestMemory::GuestMemory() : state_(std::make_unique<State>()) {
    LockGuard lock(state_->mu);
    state_->publish({});
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept = default;
GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept = default;
GuestMemory::~GuestMemory() = default;

Result<GuestMemory> GuestMemory::allocate(std::vector<MemoryRegion> layout) {
    GuestMemory mem;
    for (const auto& r : layout) {
        if (r.size == 0) continue;
        ENL_TRY_VOID(mem.add_ram(r.gpa, r.size));
    }
    return mem;
}

GuestMemory GuestMemory::borrow(std::vector<MemoryRegion> regions) {
    std::erase_if(regions, [](const MemoryRegion& r) { return r.size == 0; });
    sort_by_gpa(regions);
    GuestMemory mem;
    {
        LockGuard lock(mem.state_->mu);
        mem.state_->publish(std::move(regions));
    }
    return mem;
}

const MemoryMap& GuestMemory::snapshot() const {
    if (!state_) return empty_map();
    return *state_->current.load(std::memory_order_acquire);
}

Result<> GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const {
    uint8_t* p = host_ptr(gpa, out.size());
    if (!p) return fail("guest address range {:#x}+{:#x} is not RAM", gpa, out.size());
    std::memcpy(out.data(), p, out.size());
    return {};
}

Result<> GuestMemory::write(uint64_t gpa, std::span<const uint8_t> in) const {
    uint8_t* p = host_ptr(gpa, in.size());
    if (!p) return fail("guest address range {:#x}+{:#x} is not RAM", gpa, in.size());
    std::memcpy(p, in.data(), in.size());
    return {};
}

Result<> GuestMemory::fill(uint64_t gpa, uint8_t byte, uint64_t len) const {
    uint8_t* p = host_ptr(gpa, len);
    if (!p) return fail("guest address range {:#x}+{:#x} is not RAM", gpa, len);
    std::memset(p, byte, len);
    return {};
}

Result<> GuestMemory::iovecs(std::span<const GuestRange> ranges, IovecList& out) const {
    out.clear();
    const MemoryMap& map = snapshot();  // one map for the whole list
    for (const GuestRange& range : ranges) {
        uint64_t gpa = range.gpa;
        uint64_t left = range.len;
        while (left > 0) {
            const MemoryRegion* r = map.find(gpa);
            if (!r) {
                out.clear();
                return fail(Errc::Invalid, "guest address range {:#x}+{:#x}: {:#x} is not RAM", range.gpa, range.len,
                            gpa);
            }
            const uint64_t off = gpa - r->gpa;
            const uint64_t piece = std::min(left, r->size - off);
            uint8_t* host = r->host + off;
            if (!out.empty() && static_cast<uint8_t*>(out.back().iov_base) + out.back().iov_len == host) {
                out.back().iov_len += piece;
            } else {
                if (out.size() == kMaxIovecs) {
                    out.clear();
                    return fail(Errc::Invalid, "guest address list needs more than {} host pieces", kMaxIovecs);
                }
                out.push_back(iovec{host, piece});
            }
            gpa += piece;
            left -= piece;
        }
    }
    return {};
}

Result<MemoryRegion> GuestMemory::add_ram(uint64_t gpa, uint64_t size) {
    ENL_TRY_VOID(check_range("adding guest RAM", gpa, size));
    if (!state_) return fail("adding guest RAM: guest memory was moved from");
    State& s = *state_;
    LockGuard lock(s.mu);
    const MemoryMap& map = s.map();
    for (const auto& r : map.regions())
        if (overlaps(r, gpa, size))
            return fail(Errc::Invalid, "adding guest RAM {:#x}+{:#x}: overlaps {:#x}+{:#x}", gpa, size, r.gpa, r.size);
    ENL_TRY_VOID(s.check_room(map.regions().size() + 1));

    // Over-allocate by one huge page and trim, so that the host address is 2 MiB aligned
    // like the guest address: then the host can back guest RAM with transparent huge
    // pages and KVM can map them as huge pages (one fault per 2 MiB instead of 512).
    if (size > std::numeric_limits<size_t>::max() - kHugePage)
        return fail(Errc::Invalid, "adding guest RAM: {:#x} bytes is too large", size);
    const uint64_t reserve = size + kHugePage;
    void* p = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return fail_errno(fmt::format("cannot reserve {} MiB of guest memory", (size + (1 << 20) - 1) >> 20));
    auto* base = static_cast<uint8_t*>(p);
    auto* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1));
    if (aligned > base) ::munmap(base, static_cast<size_t>(aligned - base));
    if (const uint64_t tail = reserve - static_cast<uint64_t>(aligned - base) - size; tail > 0)
        ::munmap(aligned + size, tail);
    ::madvise(aligned, size, MADV_HUGEPAGE);
    // Guest RAM is not part of a core dump of the VMM and need not be inherited.
    ::madvise(aligned, size, MADV_DONTDUMP);
    ::madvise(aligned, size, MADV_DONTFORK);
    s.owned.push_back({aligned, size});

    const MemoryRegion region{gpa, size, aligned};
    std::vector<MemoryRegion> regions = map.regions();
    regions.push_back(region);
    sort_by_gpa(regions);
    s.publish(std::move(regions));
    return region;
}

Result<> GuestMemory::remove_region(uint64_t gpa) {
    if (!state_) return fail("removing guest memory: guest memory was moved from");
    State& s = *state_;
    LockGuard lock(s.mu);
    std::vector<MemoryRegion> regions = s.map().regions();
    const auto it = std::find_if(regions.begin(), regions.end(), [gpa](const MemoryRegion& r) { return r.gpa == gpa; });
    if (it == regions.end()) return fail(Errc::NotFound, "removing guest memory: no region starts at {:#x}", gpa);
    ENL_TRY_VOID(s.check_room(regions.size() - 1));
    const MemoryRegion gone = *it;
    regions.erase(it);
    s.publish(std::move(regions));
    return s.drop_pages(gone.host, gone.size);
}

Result<MemoryRegion> GuestMemory::move_region(uint64_t from, uint64_t to) {
    if (!state_) return fail("moving guest memory: guest memory was moved from");
    State& s = *state_;
    LockGuard lock(s.mu);
    std::vector<MemoryRegion> regions = s.map().regions();
    const auto it =
        std::find_if(regions.begin(), regions.end(), [from](const MemoryRegion& r) { return r.gpa == from; });
    if (it == regions.end()) return fail(Errc::NotFound, "moving guest memory: no region starts at {:#x}", from);
    ENL_TRY_VOID(check_range("moving guest memory", to, it->size));
    if (from == to) return *it;
    for (auto r = regions.begin(); r != regions.end(); ++r)
        if (r != it && overlaps(*r, to, it->size))
            return fail(Errc::Invalid, "moving guest memory to {:#x}+{:#x}: overlaps {:#x}+{:#x}", to, it->size,
                        r->gpa, r->size);
    ENL_TRY_VOID(s.check_room(regions.size()));
    it->gpa = to;
    const MemoryRegion moved = *it;
    sort_by_gpa(regions);
    s.publish(std::move(regions));
    return moved;
}

Result<> GuestMemory::discard(uint64_t gpa, uint64_t len) {
    ENL_TRY_VOID(check_range("discarding guest memory", gpa, len));
    if (!state_) return fail("discarding guest memory: guest memory was moved from");
    State& s = *state_;
    LockGuard lock(s.mu);
    IovecList pieces;
    // Every byte must be RAM before anything is dropped. The pieces of one range are at
    // most as many as the regions, so the iovec bound does not apply here.
    const MemoryMap& map = s.map();
    for (uint64_t at = gpa, left = len; left > 0;) {
        const MemoryRegion* r = map.find(at);
        if (!r) return fail(Errc::Invalid, "discarding guest memory {:#x}+{:#x}: {:#x} is not RAM", gpa, len, at);
        const uint64_t piece = std::min(left, r->size - (at - r->gpa));
        pieces.push_back(iovec{r->host + (at - r->gpa), piece});
        at += piece;
        left -= piece;
    }
    for (const iovec& p : pieces) ENL_TRY_VOID(s.drop_pages(static_cast<uint8_t*>(p.iov_base), p.iov_len));
    return {};
}

}  // namespace enlighten
