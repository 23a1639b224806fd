// What a device may change of guest RAM while the guest runs: the dynamic-memory VSP
// (devices/balloon) gives ballooned pages back to the host and hot-adds RAM in the planned
// hot-add window; the synthetic video (devices/video) backs a framebuffer the guest placed in
// the VMBus MMIO pool. The VMM's MemoryManager (vmm/memory.hpp) stands behind it for one boot;
// the bus hands it to devices in DeviceResources::ram (null when the VM has none, e.g. in
// tests of other devices). Tests of the balloon use a fake.
//
// Threads: every call may be made from any thread (the implementation serializes them);
// hot_add may take a while (mmap + a KVM slot), discard is an madvise. No call takes a lock
// of the caller's, so callers may hold their own locks (lock order: device -> RamControl).
#pragma once

#include <cstdint>
#include <vector>

#include "common/result.hpp"

namespace enlighten {

// A range of guest-physical addresses; empty when size is 0.
struct GpaWindow {
    uint64_t gpa = 0;
    uint64_t size = 0;

    [[nodiscard]] uint64_t end() const { return gpa + size; }
    [[nodiscard]] bool empty() const { return size == 0; }
    // [gpa, gpa+len) lies inside the window (len > 0).
    [[nodiscard]] bool contains(uint64_t at, uint64_t len) const {
        return len > 0 && at >= gpa && at - gpa < size && len <= size - (at - gpa);
    }
    bool operator==(const GpaWindow&) const = default;
};

class RamControl {
public:
    virtual ~RamControl() = default;
    // Guest RAM now: the startup RAM ranges, then every hot-added range, in GPA order.
    [[nodiscard]] virtual std::vector<GpaWindow> ram_ranges() const = 0;
    // Where hot-add may place RAM (128 MiB aligned); empty when the VM cannot grow.
    [[nodiscard]] virtual GpaWindow hot_add_window() const = 0;
    // New RAM at [gpa, gpa+size): inside the window, 128 MiB aligned, not added before.
    virtual Result<> hot_add(uint64_t gpa, uint64_t size) = 0;
    // Gives the host the backing of [gpa, gpa+size) (page aligned, RAM): the RSS falls and
    // the guest reads zeros there afterwards.
    virtual Result<> discard(uint64_t gpa, uint64_t size) = 0;
    // Backs [gpa, gpa+size) with memory for the video framebuffer a guest placed in the VMBus
    // MMIO pool (page aligned, inside one VMBus MMIO window; a later call moves it). Errc::Invalid
    // outside the windows; Errc::Unsupported where there is no such memory (tests).
    virtual Result<> map_vram(uint64_t gpa, uint64_t size) {
        (void)gpa;
        (void)size;
        return fail(Errc::Unsupported, "this VM cannot back a framebuffer in its MMIO pool");
    }
};

}  // namespace enlighten
