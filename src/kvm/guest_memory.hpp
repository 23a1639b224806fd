// Guest physical memory: the host mappings of guest RAM and checked access to them.
//
// Every access from device code goes through read()/write(), which check that the whole
// [gpa, gpa+len) range lies inside one RAM region. Guest memory may change under us at any
// time (another vCPU), so callers copy a structure out once, validate the copy, and use the
// copy (no double fetches).
//
// The set of regions can grow while the guest runs (memory hot-add, the video device's VRAM).
// GuestMemory owns every host mapping of guest RAM and publishes the current set as an
// immutable, sorted MemoryMap through an atomic pointer; a change builds a new map and
// publishes it. Old maps and every host mapping are kept until the GuestMemory is destroyed,
// so a `const MemoryMap&` or a host pointer obtained from any map stays valid (points at
// memory the VMM owns) for the GuestMemory's whole lifetime. Host mappings are only ever
// added while it lives: a region that leaves the map (remove_region, move_region) keeps its
// mapping, its pages given back to the host. Because nothing is reclaimed, the number of
// maps is bounded: at most kMaxRegions regions in a map and kMaxMaps published maps; writers
// past either limit fail.
//
// Threads: readers (snapshot(), host_ptr, contains, read, write, fill, read_obj, write_obj,
// total_size, regions, iovecs) take no lock and may run on any thread (vCPUs, device
// workers) at the same time as a writer: each call looks at one snapshot (an acquire load of
// the map pointer). Writers (add_ram, remove_region, move_region, discard) may be called from
// any thread and are serialized by a Mutex inside GuestMemory; it is a leaf lock (nothing is
// called under it but mmap/madvise). A caller that must keep the map in step with something
// else (KVM memory slots) serializes its own sequence of writes (vmm/memory.hpp).
// Construction, moves and destruction must happen before the object is shared or after every
// user is gone.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "common/result.hpp"

namespace enlighten {

struct MemoryRegion {
    uint64_t gpa = 0;
    uint64_t size = 0;
    uint8_t* host = nullptr;

    [[nodiscard]] uint64_t end() const { return gpa + size; }
};

// One range of guest-physical addresses, e.g. one entry of a storage request's page list.
struct GuestRange {
    uint64_t gpa = 0;
    uint64_t len = 0;
};

// What iovecs() fills in. Bounded by GuestMemory::kMaxIovecs entries.
using IovecList = std::vector<iovec>;

// An immutable set of disjoint regions sorted by gpa, looked up by binary search.
class MemoryMap {
public:
    MemoryMap() = default;
    // `regions` must be sorted by gpa, disjoint and non-empty each (GuestMemory checks).
    explicit MemoryMap(std::vector<MemoryRegion> regions);

    [[nodiscard]] const std::vector<MemoryRegion>& regions() const { return regions_; }
    [[nodiscard]] uint64_t total_size() const { return total_; }
    // The region that holds byte `gpa`, or nullptr.
    [[nodiscard]] const MemoryRegion* find(uint64_t gpa) const;
    // Host pointer to [gpa, gpa+len) if the range lies inside one region, else nullptr.
    [[nodiscard]] uint8_t* host_ptr(uint64_t gpa, uint64_t len) const;

private:
    std::vector<MemoryRegion> regions_;
    uint64_t total_ = 0;
};

class GuestMemory {
public:
    static constexpr uint64_t kPageSize = 4096;
    static constexpr size_t kMaxRegions = 256;  // regions in one map
    static constexpr size_t kMaxMaps = 512;     // maps published over the object's life
    static constexpr size_t kMaxIovecs = 1024;  // entries iovecs() may produce

    // add_ram() for each non-empty region of `layout` (gpa and size; host is filled in).
    static Result<GuestMemory> allocate(std::vector<MemoryRegion> layout);
    // Wraps memory owned by someone else (unit tests, fuzzers): disjoint regions, any order.
    // discard() zero-fills such memory instead of giving it back. Not bounded by kMaxRegions.
    static GuestMemory borrow(std::vector<MemoryRegion> regions);

    // No RAM yet; add_ram() adds it.
    GuestMemory();
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;
    GuestMemory(GuestMemory&& o) noexcept;
    GuestMemory& operator=(GuestMemory&& o) noexcept;
    ~GuestMemory();

    // ---- Readers: lock-free, any thread ----

    // The current map; valid until this GuestMemory is destroyed (see the header comment).
    [[nodiscard]] const MemoryMap& snapshot() const;
    [[nodiscard]] const std::vector<MemoryRegion>& regions() const { return snapshot().regions(); }
    [[nodiscard]] uint64_t total_size() const { return snapshot().total_size(); }

    // Host pointer to [gpa, gpa+len) if the range lies inside one region, else nullptr.
    [[nodiscard]] uint8_t* host_ptr(uint64_t gpa, uint64_t len) const { return snapshot().host_ptr(gpa, len); }
    [[nodiscard]] bool contains(uint64_t gpa, uint64_t len) const { return host_ptr(gpa, len) != nullptr; }

    Result<> read(uint64_t gpa, std::span<uint8_t> out) const;
    Result<> write(uint64_t gpa, std::span<const uint8_t> in) const;
    Result<> fill(uint64_t gpa, uint8_t byte, uint64_t len) const;

    template <typename T>
    Result<T> read_obj(uint64_t gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        ENL_TRY_VOID(read(gpa, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T))));
        return value;
    }
    template <typename T>
    Result<> write_obj(uint64_t gpa, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(gpa, std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
    }

    // The host memory behind `ranges`, in order, as iovecs for readv/writev/io_uring: pieces
    // adjacent in host memory are merged into one entry. Replaces `out`. Errc::Invalid (and
    // `out` empty) if any byte is not RAM or more than kMaxIovecs entries would be needed.
    // Zero-length ranges contribute nothing.
    Result<> iovecs(std::span<const GuestRange> ranges, IovecList& out) const;

    // ---- Writers: serialized, any thread ----

    // Maps anonymous memory for [gpa, gpa+size) and publishes it: MAP_NORESERVE (pages are
    // allocated when touched), 2 MiB-aligned host address (transparent huge pages), not in
    // core dumps, not inherited by fork. Errc::Invalid for a zero or unaligned (4 KiB) gpa
    // or size, a range that wraps, or one that overlaps a region.
    Result<MemoryRegion> add_ram(uint64_t gpa, uint64_t size);
    // Takes the region that starts at `gpa` out of the map. Its host mapping stays until
    // destruction (readers of older maps may still use it); its pages go back to the host.
    Result<> remove_region(uint64_t gpa);
    // Moves the region that starts at `from` to `to` with the same host memory and contents
    // (the video VRAM when the guest moves it). The new range may overlap the old one, no
    // other. Readers of older maps still see it at `from`.
    Result<MemoryRegion> move_region(uint64_t from, uint64_t to);
    // Gives the pages of [gpa, gpa+len) back to the host (MADV_DONTNEED): the guest then
    // reads zeros, and the host allocates again on the next touch. gpa and len page aligned,
    // len > 0, every byte RAM; Errc::Invalid otherwise (and nothing is discarded).
    Result<> discard(uint64_t gpa, uint64_t len);

private:
    // The published map, the writers' Mutex and everything it guards (guest_memory.cpp).
    // On the heap, so that moving a GuestMemory keeps every snapshot valid; null only in a
    // moved-from object, which reads as empty and refuses writes.
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace enlighten
