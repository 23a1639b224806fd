#include "vmm/memory.hpp"

#include <algorithm>

#include "platform/boot/linux_loader.hpp"
#include "platform/layout.hpp"

namespace enlighten {

namespace {

// Linux's direct map ends at 2^46 with 4-level paging (contract-memory §7.1).
constexpr uint64_t kMaxGuestPhysical = 1ULL << 46;

constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
constexpr uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }

}  // namespace

uint64_t MemoryPlan::startup_ram_end() const {
    uint64_t end = 0;
    for (const auto& r : startup_ram) end = std::max(end, r.end());
    return end;
}

MemoryPlan plan_memory(uint64_t startup_bytes, uint64_t max_bytes) {
    MemoryPlan plan;
    plan.startup_bytes = startup_bytes;
    plan.max_bytes = max_bytes;
    // The same split the boot code's e820 map describes.
    for (const auto& r : boot::ram_layout(startup_bytes))
        if (r.size != 0) plan.startup_ram.push_back({r.gpa, r.size});

    const uint64_t ram_end = plan.startup_ram_end();
    const uint64_t hot_start = align_up(std::max(ram_end, layout::kFourGiB), layout::kHotAddAlignment);
    const uint64_t max = std::min(max_bytes, kMaxGuestPhysical);
    uint64_t hot_size = 0;
    if (max > startup_bytes && ram_end < layout::kBootRamEndLimit && hot_start < kMaxGuestPhysical) {
        hot_size = align_up(max - startup_bytes, layout::kHotAddAlignment);
        hot_size = std::min(hot_size, align_down(kMaxGuestPhysical - hot_start, layout::kHotAddAlignment));
    }
    plan.hot_add = {hot_start, hot_size};
    plan.vmbus_mmio_low = {layout::kVmbusLowMmioStart, layout::kVmbusLowMmioSize};
    plan.vmbus_mmio_high = {align_up(plan.hot_add.end(), layout::kVmbusHighMmioAlignment), layout::kVmbusHighMmioSize};
    return plan;
}

MemoryManager::MemoryManager(GuestMemory& memory, MemorySlots& slots, MemoryPlan plan, uint32_t max_slots)
    : memory_(memory), slots_(slots), plan_(std::move(plan)), max_slots_(max_slots) {}

Result<uint32_t> MemoryManager::take_slot() {
    for (uint32_t slot = 0; slot < max_slots_; ++slot) {
        if (slot >= used_.size()) used_.resize(slot + 1, false);
        if (!used_[slot]) {
            used_[slot] = true;
            return slot;
        }
    }
    return fail("all {} KVM memory slots are in use", max_slots_);
}

void MemoryManager::release_slot(uint32_t slot) {
    if (slot < used_.size()) used_[slot] = false;
}

Result<MemoryManager::Mapped> MemoryManager::map_new(uint64_t gpa, uint64_t size) {
    ENL_TRY(const uint32_t slot, take_slot());
    auto region = memory_.add_ram(gpa, size);
    if (!region) {
        release_slot(slot);
        return std::unexpected(region.error());
    }
    if (auto ok = slots_.set_slot(slot, gpa, size, region->host); !ok) {
        // The guest never saw it: take it out of the map again (the mapping stays until
        // GuestMemory goes, its pages returned).
        (void)memory_.remove_region(gpa);
        release_slot(slot);
        return std::unexpected(ok.error());
    }
    return Mapped{slot, *region};
}

Result<> MemoryManager::map_startup_ram() {
    LockGuard lock(mu_);
    if (startup_mapped_) return fail(Errc::Invalid, "startup RAM is already mapped");
    startup_mapped_ = true;
    for (const auto& r : plan_.startup_ram) ENL_TRY_VOID(map_new(r.gpa, r.size));
    return {};
}

Result<MemoryRegion> MemoryManager::hot_add(uint64_t gpa, uint64_t size) {
    constexpr uint64_t kAlign = layout::kHotAddAlignment;
    if (size == 0 || gpa % kAlign != 0 || size % kAlign != 0)
        return fail(Errc::Invalid, "hot-add {:#x}+{:#x}: start and size must be non-zero multiples of {} MiB", gpa,
                    size, kAlign >> 20);
    if (!plan_.hot_add.contains(gpa, size))
        return fail(Errc::Invalid, "hot-add {:#x}+{:#x}: outside the hot-add window {:#x}+{:#x}", gpa, size,
                    plan_.hot_add.gpa, plan_.hot_add.size);
    LockGuard lock(mu_);
    ENL_TRY(const Mapped m, map_new(gpa, size));
    hot_added_.push_back(m);
    return m.region;
}

Result<MemoryRegion> MemoryManager::map_vram(uint64_t gpa, uint64_t size) {
    if (size == 0 || gpa % GuestMemory::kPageSize != 0 || size % GuestMemory::kPageSize != 0)
        return fail(Errc::Invalid, "VRAM {:#x}+{:#x}: not a page-aligned range", gpa, size);
    if (!plan_.vmbus_mmio_low.contains(gpa, size) && !plan_.vmbus_mmio_high.contains(gpa, size))
        return fail(Errc::Invalid, "VRAM {:#x}+{:#x}: not inside one VMBus MMIO window", gpa, size);
    LockGuard lock(mu_);
    if (vram_ && vram_->region.gpa == gpa && vram_->region.size == size) return vram_->region;

    if (vram_ && vram_->region.size == size) {
        // Same size: move the same host memory. KVM cannot move a slot onto a range that
        // overlaps it, so delete the slot and create it again at the new address.
        const Mapped old = *vram_;
        ENL_TRY_VOID(slots_.set_slot(old.slot, 0, 0, nullptr));
        auto restore = [&] { return slots_.set_slot(old.slot, old.region.gpa, old.region.size, old.region.host); };
        auto moved = memory_.move_region(old.region.gpa, gpa);
        if (!moved) {
            if (!restore()) {
                // Nothing maps the old range for the guest now; forget it.
                (void)memory_.remove_region(old.region.gpa);
                release_slot(old.slot);
                vram_.reset();
            }
            return std::unexpected(moved.error());
        }
        if (auto ok = slots_.set_slot(old.slot, gpa, size, moved->host); !ok) {
            if (!memory_.move_region(gpa, old.region.gpa) || !restore()) {
                (void)memory_.remove_region(gpa);
                (void)memory_.remove_region(old.region.gpa);
                release_slot(old.slot);
                vram_.reset();
            }
            return std::unexpected(ok.error());
        }
        vram_->region = *moved;
        return vram_->region;
    }

    if (vram_) {
        // Another size: drop the old VRAM (its host mapping is kept by GuestMemory).
        ENL_TRY_VOID(slots_.set_slot(vram_->slot, 0, 0, nullptr));
        (void)memory_.remove_region(vram_->region.gpa);
        release_slot(vram_->slot);
        vram_.reset();
    }
    ENL_TRY(const Mapped m, map_new(gpa, size));
    vram_ = m;
    return m.region;
}

Result<> MemoryManager::discard(uint64_t gpa, uint64_t size) {
    const bool in_startup = std::any_of(plan_.startup_ram.begin(), plan_.startup_ram.end(),
                                        [&](const GpaWindow& w) { return w.contains(gpa, size); });
    if (!in_startup && !plan_.hot_add.contains(gpa, size))
        return fail(Errc::Invalid, "discard {:#x}+{:#x}: not inside guest RAM", gpa, size);
    LockGuard lock(mu_);
    return memory_.discard(gpa, size);
}

std::optional<MemoryRegion> MemoryManager::vram() const {
    LockGuard lock(mu_);
    if (!vram_) return std::nullopt;
    return vram_->region;
}

uint64_t MemoryManager::hot_added_bytes() const {
    LockGuard lock(mu_);
    uint64_t total = 0;
    for (const auto& m : hot_added_) total += m.region.size;
    return total;
}

std::vector<GpaWindow> MemoryManager::hot_added_ranges() const {
    LockGuard lock(mu_);
    std::vector<GpaWindow> out;
    for (const auto& m : hot_added_) out.push_back({m.region.gpa, m.region.size});
    return out;
}

uint32_t MemoryManager::slots_in_use() const {
    LockGuard lock(mu_);
    return static_cast<uint32_t>(std::count(used_.begin(), used_.end(), true));
}

}  // namespace enlighten
