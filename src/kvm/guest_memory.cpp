#include "kvm/guest_memory.hpp"

#include <sys/mman.h>

#include <utility>

namespace enlighten {

Result<GuestMemory> GuestMemory::allocate(std::vector<MemoryRegion> layout) {
    GuestMemory mem;
    mem.owned_ = true;
    constexpr uint64_t kHugePage = 2ULL << 20;
    for (auto& r : layout) {
        if (r.size == 0) continue;
        // Over-allocate by one huge page and trim, so that the host address is 2 MiB aligned
        // like the guest address: then the host can back guest RAM with transparent huge
        // pages and KVM can map them as huge pages (one fault per 2 MiB instead of 512).
        const uint64_t reserve = r.size + kHugePage;
        void* p = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return fail("cannot reserve {} MiB of guest memory: {}", r.size >> 20, std::strerror(errno));
        auto* base = static_cast<uint8_t*>(p);
        auto* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1));
        if (aligned > base) ::munmap(base, static_cast<size_t>(aligned - base));
        if (const uint64_t tail = reserve - static_cast<uint64_t>(aligned - base) - r.size; tail > 0)
            ::munmap(aligned + r.size, tail);
        ::madvise(aligned, r.size, MADV_HUGEPAGE);
        // Guest RAM is not part of a core dump of the VMM and need not be inherited.
        ::madvise(aligned, r.size, MADV_DONTDUMP);
        ::madvise(aligned, r.size, MADV_DONTFORK);
        r.host = aligned;
        mem.regions_.push_back(r);
    }
    return mem;
}

GuestMemory GuestMemory::borrow(std::vector<MemoryRegion> regions) {
    GuestMemory mem;
    mem.regions_ = std::move(regions);
    mem.owned_ = false;
    return mem;
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : regions_(std::move(o.regions_)), owned_(std::exchange(o.owned_, false)) {
    o.regions_.clear();
}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
    if (this != &o) {
        release();
        regions_ = std::move(o.regions_);
        o.regions_.clear();
        owned_ = std::exchange(o.owned_, false);
    }
    return *this;
}

GuestMemory::~GuestMemory() { release(); }

void GuestMemory::release() {
    if (owned_)
        for (auto& r : regions_) ::munmap(r.host, r.size);
    regions_.clear();
    owned_ = false;
}

uint64_t GuestMemory::total_size() const {
    uint64_t total = 0;
    for (const auto& r : regions_) total += r.size;
    return total;
}

uint8_t* GuestMemory::host_ptr(uint64_t gpa, uint64_t len) const {
    for (const auto& r : regions_) {
        // Written so that no addition can overflow: gpa >= r.gpa, then compare offsets.
        if (gpa < r.gpa) continue;
        const uint64_t off = gpa - r.gpa;
        if (off > r.size || len > r.size - off) continue;
        return r.host + off;
    }
    return nullptr;
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

}  // namespace enlighten
