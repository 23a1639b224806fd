// The guest-physical address plan of a VM and the KVM memory slots that back it.
//
// plan_memory() decides where everything goes: startup RAM (below the 32-bit MMIO hole and
// from 4 GiB, as the e820 map says), the memory hot-add window (contract-memory §7.1), and the
// two VMBus MMIO windows that the DSDT's VMBus _CRS describes (linux-hv-guest-contract §5).
// MemoryManager makes guest RAM appear: it maps memory in GuestMemory and gives it to KVM in
// slots it numbers, at start (startup RAM) and while the guest runs (hot-add, the video VRAM
// the guest places in a VMBus MMIO window, contract-input-video §4.5).
//
// Threads: every MemoryManager method may be called from any thread, including a device
// worker while vCPUs run (KVM allows slot changes at run time; a vCPU touching a range being
// changed waits in KVM). The methods are serialized by the manager's Mutex, which keeps the
// KVM slots and GuestMemory's map in step; lock order: MemoryManager -> GuestMemory's writer
// lock (a leaf). Readers of guest memory never take either (kvm/guest_memory.hpp).
// plan() and the window accessors are immutable after construction.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "common/result.hpp"
#include "common/thread_annotations.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/memory_slots.hpp"
#include "kvm/ram_control.hpp"  // GpaWindow

namespace enlighten {

struct MemoryPlan {
    uint64_t startup_bytes = 0;
    uint64_t max_bytes = 0;  // startup_bytes + what can be hot-added (before rounding)
    // Startup RAM: [0, min(startup, kMmioHoleStart)), then the rest from 4 GiB.
    std::vector<GpaWindow> startup_ram;
    // 128 MiB aligned, at or above 4 GiB and above all startup RAM, max - startup rounded up
    // to 128 MiB. Empty (at its would-be start) when max <= startup, or when startup RAM
    // ends at or above 64 GiB (Linux 6.1's 128 MiB hot-add chunks would fail there).
    GpaWindow hot_add;
    // VMBus MMIO pools: 128 MiB inside the 32-bit hole; 1 GiB, 1 GiB aligned, above the
    // hot-add window.
    GpaWindow vmbus_mmio_low;
    GpaWindow vmbus_mmio_high;

    // End of startup RAM (the highest address + 1).
    [[nodiscard]] uint64_t startup_ram_end() const;
};

// The plan for a guest with `startup_bytes` of RAM at boot that may grow to `max_bytes`
// (ignored when not above startup_bytes; clamped to 2^46, Linux's direct-map limit with
// 4-level paging). Pure: no KVM, no memory.
MemoryPlan plan_memory(uint64_t startup_bytes, uint64_t max_bytes);

class MemoryManager {
public:
    // KVM's default slot count when KVM_CAP_NR_MEMSLOTS is not reported.
    static constexpr uint32_t kDefaultSlots = 32;

    // `max_slots` is KVM_CAP_NR_MEMSLOTS: slot numbers are 0..max_slots-1. `memory` and
    // `slots` must outlive the manager.
    MemoryManager(GuestMemory& memory, MemorySlots& slots, MemoryPlan plan, uint32_t max_slots);
    MemoryManager(const MemoryManager&) = delete;
    MemoryManager& operator=(const MemoryManager&) = delete;

    // Maps the plan's startup RAM, one slot per range. Once.
    Result<> map_startup_ram() ENL_EXCLUDES(mu_);

    // New RAM at [gpa, gpa+size) in a slot of its own: inside the hot-add window, start and
    // size 128 MiB aligned, size > 0, overlapping nothing already added. Errc::Invalid
    // otherwise. On success the range is in GuestMemory and the guest can use it.
    Result<MemoryRegion> hot_add(uint64_t gpa, uint64_t size) ENL_EXCLUDES(mu_);

    // Backs [gpa, gpa+size) (page aligned, inside one VMBus MMIO window) with memory in a
    // slot of its own, for the video framebuffer. A later call moves it: with the same size
    // the same host memory moves (same slot number, deleted and re-created); with another
    // size the old memory leaves GuestMemory's map and new memory is mapped. The contents
    // need not survive a move. Errc::Invalid for a range outside the windows.
    Result<MemoryRegion> map_vram(uint64_t gpa, uint64_t size) ENL_EXCLUDES(mu_);

    // Gives guest RAM pages back to the host (balloon): page aligned, inside one startup
    // RAM range or the hot-add window, and every byte RAM. The guest then reads zeros.
    Result<> discard(uint64_t gpa, uint64_t size) ENL_EXCLUDES(mu_);

    [[nodiscard]] const MemoryPlan& plan() const { return plan_; }
    [[nodiscard]] const GpaWindow& hot_add_window() const { return plan_.hot_add; }
    [[nodiscard]] const GpaWindow& vmbus_mmio_low() const { return plan_.vmbus_mmio_low; }
    [[nodiscard]] const GpaWindow& vmbus_mmio_high() const { return plan_.vmbus_mmio_high; }
    // Where the VRAM is now, if map_vram() succeeded.
    [[nodiscard]] std::optional<MemoryRegion> vram() const ENL_EXCLUDES(mu_);
    // Bytes added by hot_add() so far.
    [[nodiscard]] uint64_t hot_added_bytes() const ENL_EXCLUDES(mu_);
    // The ranges hot_add() added, in the order they were added.
    [[nodiscard]] std::vector<GpaWindow> hot_added_ranges() const ENL_EXCLUDES(mu_);
    [[nodiscard]] uint32_t slots_in_use() const ENL_EXCLUDES(mu_);

private:
    struct Mapped {
        uint32_t slot = 0;
        MemoryRegion region;
    };

    // The lowest slot number not in use; fails when all max_slots_ are.
    Result<uint32_t> take_slot() ENL_REQUIRES(mu_);
    void release_slot(uint32_t slot) ENL_REQUIRES(mu_);
    // add_ram + a new slot; on a slot failure the region leaves the map again.
    Result<Mapped> map_new(uint64_t gpa, uint64_t size) ENL_REQUIRES(mu_);

    GuestMemory& memory_;
    MemorySlots& slots_;
    const MemoryPlan plan_;
    const uint32_t max_slots_;

    mutable Mutex mu_;
    std::vector<bool> used_ ENL_GUARDED_BY(mu_);  // by slot number
    bool startup_mapped_ ENL_GUARDED_BY(mu_) = false;
    std::vector<Mapped> hot_added_ ENL_GUARDED_BY(mu_);
    std::optional<Mapped> vram_ ENL_GUARDED_BY(mu_);
};

}  // namespace enlighten
