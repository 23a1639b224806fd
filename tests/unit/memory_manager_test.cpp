// plan_memory (the guest-physical windows) and MemoryManager (KVM slots, hot-add, VRAM)
// against a fake MemorySlots that checks what KVM would.
#include "vmm/memory.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <type_traits>

#include <gtest/gtest.h>

#include "common/size.hpp"
#include "kvm/kvm.hpp"
#include "platform/boot/linux_loader.hpp"
#include "platform/layout.hpp"

namespace enlighten {
namespace {

static_assert(std::is_base_of_v<MemorySlots, Vm>, "kvm::Vm is the real MemorySlots");

bool disjoint(const GpaWindow& a, const GpaWindow& b) {
    return a.empty() || b.empty() || a.end() <= b.gpa || b.end() <= a.gpa;
}

// What a plan must satisfy for any sizes (contract-memory §7.1, linux-hv-guest-contract §5).
void check_plan(const MemoryPlan& p, uint64_t startup, uint64_t max) {
    SCOPED_TRACE(testing::Message() << "startup " << startup / MiB << " MiB, max " << max / MiB << " MiB");
    // Startup RAM is what the boot code's e820 map says.
    const auto layout = boot::ram_layout(startup);
    uint64_t total = 0;
    ASSERT_EQ(p.startup_ram.size(), startup > layout::kMmioHoleStart ? 2U : 1U);
    for (size_t i = 0; i < p.startup_ram.size(); ++i) {
        EXPECT_EQ(p.startup_ram[i].gpa, layout[i].gpa);
        EXPECT_EQ(p.startup_ram[i].size, layout[i].size);
        total += p.startup_ram[i].size;
    }
    EXPECT_EQ(total, startup);
    EXPECT_EQ(p.startup_ram[0].gpa, 0U);
    EXPECT_LE(p.startup_ram[0].end(), layout::kMmioHoleStart);
    if (p.startup_ram.size() == 2) {
        EXPECT_EQ(p.startup_ram[1].gpa, layout::kFourGiB);
    }
    EXPECT_LT(p.startup_ram_end(), layout::kBootRamEndLimit);

    // Hot-add: 128 MiB aligned, at or above 4 GiB, above all RAM, the right size.
    EXPECT_EQ(p.hot_add.gpa % (128 * MiB), 0U);
    EXPECT_EQ(p.hot_add.size % (128 * MiB), 0U);
    EXPECT_GE(p.hot_add.gpa, layout::kFourGiB);
    EXPECT_GE(p.hot_add.gpa, p.startup_ram_end());
    EXPECT_LT(p.hot_add.gpa, std::max(p.startup_ram_end(), layout::kFourGiB) + 128 * MiB);  // right above
    const uint64_t want = max > startup ? (max - startup + 128 * MiB - 1) / (128 * MiB) * (128 * MiB) : 0;
    EXPECT_EQ(p.hot_add.size, want);

    // Low VMBus window: inside the hole, clear of the fixed pages, not crossing the vTPM.
    EXPECT_FALSE(p.vmbus_mmio_low.empty());
    EXPECT_GE(p.vmbus_mmio_low.gpa, layout::kMmioHoleStart);
    EXPECT_LE(p.vmbus_mmio_low.end(), layout::kIoapicBase);
    EXPECT_LE(p.vmbus_mmio_low.end(), layout::kVtpmMmio);
    EXPECT_GT(p.vmbus_mmio_low.gpa, layout::kMmioHoleStart);  // room below for a PCI window
    // High VMBus window: 1 GiB aligned, at least 1 GiB, above the hot-add window.
    EXPECT_EQ(p.vmbus_mmio_high.gpa % GiB, 0U);
    EXPECT_GE(p.vmbus_mmio_high.size, GiB);
    EXPECT_GE(p.vmbus_mmio_high.gpa, p.hot_add.end());
    EXPECT_GE(p.vmbus_mmio_high.gpa, layout::kFourGiB);

    // Nothing overlaps, and the e820 map covers none of the windows.
    for (const auto& ram : p.startup_ram)
        for (const GpaWindow* w : {&p.hot_add, &p.vmbus_mmio_low, &p.vmbus_mmio_high}) EXPECT_TRUE(disjoint(ram, *w));
    EXPECT_TRUE(disjoint(p.hot_add, p.vmbus_mmio_low));
    EXPECT_TRUE(disjoint(p.hot_add, p.vmbus_mmio_high));
    EXPECT_TRUE(disjoint(p.vmbus_mmio_low, p.vmbus_mmio_high));
    for (const auto& e : boot::build_e820(startup))
        for (const GpaWindow* w : {&p.hot_add, &p.vmbus_mmio_low, &p.vmbus_mmio_high})
            EXPECT_TRUE(disjoint({e.addr, e.size}, *w)) << std::hex << e.addr << "+" << e.size;
}

TEST(MemoryPlan, WindowsForCommonSizes) {
    for (const uint64_t startup : {512 * MiB, 3 * GiB, 4 * GiB, 6 * GiB, 3 * GiB + 1 * MiB, 100 * MiB}) {
        for (const uint64_t max : {startup, startup + 1 * MiB, startup + 1 * GiB, 2 * startup, 48 * GiB}) {
            if (max < startup) continue;
            check_plan(plan_memory(startup, max), startup, max);
        }
    }
}

TEST(MemoryPlan, ExactNumbers) {
    // 512 MiB, no hot-add: the hot-add window is empty at 4 GiB, VMBus high at 4 GiB.
    MemoryPlan p = plan_memory(512 * MiB, 512 * MiB);
    EXPECT_EQ(p.startup_ram, (std::vector<GpaWindow>{{0, 512 * MiB}}));
    EXPECT_EQ(p.hot_add, (GpaWindow{4 * GiB, 0}));
    EXPECT_EQ(p.vmbus_mmio_low, (GpaWindow{0xf0000000, 128 * MiB}));
    EXPECT_EQ(p.vmbus_mmio_high, (GpaWindow{4 * GiB, 1 * GiB}));

    // 512 MiB growing to 2 GiB: 1.5 GiB of hot-add window from 4 GiB.
    p = plan_memory(512 * MiB, 2 * GiB);
    EXPECT_EQ(p.hot_add, (GpaWindow{4 * GiB, 1536 * MiB}));
    EXPECT_EQ(p.vmbus_mmio_high, (GpaWindow{6 * GiB, 1 * GiB}));

    // 4 GiB: 3 GiB low, 1 GiB from 4 GiB; growing by 100 MiB rounds up to one block.
    p = plan_memory(4 * GiB, 4 * GiB + 100 * MiB);
    EXPECT_EQ(p.startup_ram, (std::vector<GpaWindow>{{0, 3 * GiB}, {4 * GiB, 1 * GiB}}));
    EXPECT_EQ(p.hot_add, (GpaWindow{5 * GiB, 128 * MiB}));
    EXPECT_EQ(p.vmbus_mmio_high, (GpaWindow{6 * GiB, 1 * GiB}));

    // 6 GiB growing to 12 GiB: RAM to 7 GiB, hot-add 7-13 GiB, VMBus high 13-14 GiB.
    p = plan_memory(6 * GiB, 12 * GiB);
    EXPECT_EQ(p.startup_ram_end(), 7 * GiB);
    EXPECT_EQ(p.hot_add, (GpaWindow{7 * GiB, 6 * GiB}));
    EXPECT_EQ(p.vmbus_mmio_high, (GpaWindow{13 * GiB, 1 * GiB}));

    // Startup RAM ending off a 128 MiB boundary: the window starts at the next one.
    p = plan_memory(3 * GiB + 1 * MiB, 4 * GiB);
    EXPECT_EQ(p.startup_ram_end(), 4 * GiB + 1 * MiB);
    EXPECT_EQ(p.hot_add.gpa, 4 * GiB + 128 * MiB);
    EXPECT_EQ(p.hot_add.size, 1024 * MiB);
}

TEST(MemoryPlan, NoHotAddWhenItCannotWork) {
    // max below startup: nothing to add.
    EXPECT_TRUE(plan_memory(2 * GiB, 1 * GiB).hot_add.empty());
    // Boot RAM ending at or above 64 GiB: Linux 6.1's 128 MiB chunks would fail.
    const MemoryPlan big = plan_memory(64 * GiB, 80 * GiB);
    EXPECT_GE(big.startup_ram_end(), layout::kBootRamEndLimit);
    EXPECT_TRUE(big.hot_add.empty());
    EXPECT_GE(big.vmbus_mmio_high.gpa, big.startup_ram_end());
    // An absurd maximum is clamped to the 46-bit direct map.
    const MemoryPlan huge = plan_memory(1 * GiB, ~uint64_t{0} / 2);
    EXPECT_LE(huge.hot_add.end(), 1ULL << 46);
    EXPECT_EQ(huge.hot_add.size % (128 * MiB), 0U);
}

// Checks what KVM_SET_USER_MEMORY_REGION would: no two slots overlap in guest-physical
// space, deleting needs an existing slot, an existing slot is not silently resized.
class FakeSlots final : public MemorySlots {
public:
    struct Slot {
        uint64_t gpa, size;
        uint8_t* host;
    };
    Result<> set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) override {
        if (++calls == fail_at) return fail_errno("KVM_SET_USER_MEMORY_REGION", EFAULT);
        if (size == 0) {
            if (slots.erase(slot) == 0) return fail_errno("delete", EINVAL);
            return {};
        }
        if (slots.contains(slot)) return fail_errno("slot in use", EINVAL);
        for (const auto& [n, s] : slots)
            if (gpa < s.gpa + s.size && s.gpa < gpa + size) return fail_errno("overlap", EEXIST);
        slots[slot] = {gpa, size, host};
        return {};
    }
    std::map<uint32_t, Slot> slots;
    int calls = 0;
    int fail_at = 0;  // the call (counting from 1) that fails
};

struct Vmm {
    explicit Vmm(uint64_t startup, uint64_t max, uint32_t max_slots = 509)
        : manager(memory, slots, plan_memory(startup, max), max_slots) {}
    GuestMemory memory;
    FakeSlots slots;
    MemoryManager manager;
};

// The machine maps startup RAM before KVM has made the VM (the kernel is written meanwhile):
// DeferredSlots records the slots and replays them on attach, in order, then forwards.
TEST(MemoryManager, SlotsSetBeforeTheVmExistsReachItWhenAttached) {
    GuestMemory memory;
    DeferredSlots deferred;
    MemoryManager manager(memory, deferred, plan_memory(4 * GiB, 4 * GiB), 509);
    ASSERT_TRUE(manager.map_startup_ram().has_value());
    EXPECT_NE(memory.host_ptr(0, 4096), nullptr) << "guest memory is usable before the VM exists";
    FakeSlots vm;
    ASSERT_TRUE(deferred.attach(vm).has_value());
    ASSERT_EQ(vm.slots.size(), 2U);
    EXPECT_EQ(vm.slots[0].gpa, 0U);
    EXPECT_EQ(vm.slots[1].gpa, 4 * GiB);
    EXPECT_EQ(vm.slots[1].host, memory.host_ptr(4 * GiB, 1 * GiB));
    EXPECT_FALSE(deferred.attach(vm).has_value()) << "once";
    // Later changes go straight through.
    ASSERT_TRUE(deferred.set_slot(7, 8 * GiB, 4096, vm.slots[0].host).has_value());
    EXPECT_TRUE(vm.slots.contains(7));
    // A replay that fails reports it.
    DeferredSlots again;
    ASSERT_TRUE(again.set_slot(1, 0, 4096, vm.slots[0].host).has_value());
    FakeSlots broken;
    broken.fail_at = 1;
    EXPECT_FALSE(again.attach(broken).has_value());
}

TEST(MemoryManager, StartupRamGetsOneSlotPerRange) {
    Vmm vm(4 * GiB, 4 * GiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    ASSERT_EQ(vm.slots.slots.size(), 2U);
    EXPECT_EQ(vm.slots.slots[0].gpa, 0U);
    EXPECT_EQ(vm.slots.slots[0].size, 3 * GiB);
    EXPECT_EQ(vm.slots.slots[1].gpa, 4 * GiB);
    EXPECT_EQ(vm.slots.slots[1].size, 1 * GiB);
    for (const auto& [n, s] : vm.slots.slots) EXPECT_EQ(s.host, vm.memory.host_ptr(s.gpa, s.size));
    EXPECT_EQ(vm.memory.total_size(), 4 * GiB);
    EXPECT_EQ(vm.manager.slots_in_use(), 2U);
    // Once only.
    auto again = vm.manager.map_startup_ram();
    ASSERT_FALSE(again.has_value());
    EXPECT_EQ(again.error().code(), Errc::Invalid);
    EXPECT_EQ(vm.slots.slots.size(), 2U);
}

TEST(MemoryManager, HotAddInsideTheWindowOnly) {
    Vmm vm(512 * MiB, 512 * MiB + 1 * GiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    const GpaWindow w = vm.manager.hot_add_window();
    ASSERT_EQ(w, (GpaWindow{4 * GiB, 1 * GiB}));

    auto r = vm.manager.hot_add(w.gpa + 128 * MiB, 256 * MiB);
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(vm.slots.slots.size(), 2U);
    EXPECT_EQ(vm.slots.slots[1].gpa, w.gpa + 128 * MiB);
    EXPECT_EQ(vm.slots.slots[1].host, r->host);
    ASSERT_TRUE(vm.memory.write_obj<uint64_t>(w.gpa + 300 * MiB, 42).has_value());
    EXPECT_EQ(*vm.memory.read_obj<uint64_t>(w.gpa + 300 * MiB), 42U);
    EXPECT_EQ(vm.manager.hot_added_bytes(), 256 * MiB);

    struct Case {
        uint64_t gpa, size;
        const char* why;
    };
    for (const Case c : {Case{w.gpa - 128 * MiB, 128 * MiB, "below the window"},
                         Case{w.end(), 128 * MiB, "above the window"},
                         Case{w.end() - 128 * MiB, 256 * MiB, "runs off the window"},
                         Case{512 * MiB, 128 * MiB, "startup RAM end"},
                         Case{w.gpa + 2 * MiB, 128 * MiB, "misaligned start"},
                         Case{w.gpa, 64 * MiB, "misaligned size"},
                         Case{w.gpa, 0, "empty"},
                         Case{w.gpa + 256 * MiB, 128 * MiB, "overlaps the first hot-add"}}) {
        auto bad = vm.manager.hot_add(c.gpa, c.size);
        ASSERT_FALSE(bad.has_value()) << c.why;
        EXPECT_EQ(bad.error().code(), Errc::Invalid) << c.why << ": " << bad.error().message();
    }
    EXPECT_EQ(vm.manager.slots_in_use(), 2U);  // refused requests hold no slot
    EXPECT_EQ(vm.slots.slots.size(), 2U);
    // The rest of the window still works, in the slot the failures did not keep.
    ASSERT_TRUE(vm.manager.hot_add(w.gpa, 128 * MiB).has_value());
    ASSERT_TRUE(vm.manager.hot_add(w.gpa + 384 * MiB, 640 * MiB).has_value());
    EXPECT_EQ(vm.manager.hot_added_bytes(), 1 * GiB);
    EXPECT_EQ(vm.slots.slots.size(), 4U);
}

TEST(MemoryManager, HotAddRefusedWithoutAWindow) {
    Vmm vm(512 * MiB, 512 * MiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    auto r = vm.manager.hot_add(4 * GiB, 128 * MiB);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Errc::Invalid);
}

TEST(MemoryManager, SlotLimitAndRollback) {
    Vmm vm(512 * MiB, 4 * GiB, /*max_slots=*/3);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    const uint64_t base = vm.manager.hot_add_window().gpa;

    // KVM refuses the slot: the range leaves GuestMemory again and the slot is free.
    vm.slots.fail_at = vm.slots.calls + 1;
    ASSERT_FALSE(vm.manager.hot_add(base, 128 * MiB).has_value());
    EXPECT_FALSE(vm.memory.contains(base, 1));
    EXPECT_EQ(vm.manager.slots_in_use(), 1U);

    ASSERT_TRUE(vm.manager.hot_add(base, 128 * MiB).has_value());
    ASSERT_TRUE(vm.manager.hot_add(base + 128 * MiB, 128 * MiB).has_value());
    EXPECT_EQ(vm.manager.slots_in_use(), 3U);
    auto full = vm.manager.hot_add(base + 256 * MiB, 128 * MiB);
    ASSERT_FALSE(full.has_value());
    EXPECT_NE(full.error().message().find("slots"), std::string::npos) << full.error().message();
    EXPECT_FALSE(vm.memory.contains(base + 256 * MiB, 1));
    EXPECT_EQ(vm.slots.slots.size(), 3U);
}

TEST(MemoryManager, MapVramThenMoveIt) {
    Vmm vm(512 * MiB, 512 * MiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    const GpaWindow low = vm.manager.vmbus_mmio_low();
    const GpaWindow high = vm.manager.vmbus_mmio_high();
    EXPECT_FALSE(vm.manager.vram().has_value());

    auto v = vm.manager.map_vram(low.gpa, 8 * MiB);
    ASSERT_TRUE(v.has_value()) << v.error().message();
    ASSERT_EQ(vm.slots.slots.size(), 2U);
    EXPECT_EQ(vm.slots.slots[1].gpa, low.gpa);
    EXPECT_EQ(vm.slots.slots[1].host, v->host);
    ASSERT_TRUE(vm.memory.write_obj<uint32_t>(low.gpa + 4, 0xc0ffee).has_value());
    // The same range again changes nothing.
    const int calls = vm.slots.calls;
    ASSERT_TRUE(vm.manager.map_vram(low.gpa, 8 * MiB).has_value());
    EXPECT_EQ(vm.slots.calls, calls);

    // Same size: the same memory and slot at the new address (even overlapping the old).
    for (const uint64_t to : {low.gpa + 4 * MiB, low.gpa + 64 * MiB, high.gpa + 1 * MiB}) {
        auto m = vm.manager.map_vram(to, 8 * MiB);
        ASSERT_TRUE(m.has_value()) << m.error().message();
        EXPECT_EQ(m->host, v->host);
        ASSERT_EQ(vm.slots.slots.size(), 2U);
        EXPECT_EQ(vm.slots.slots[1].gpa, to);
        EXPECT_EQ(vm.slots.slots[1].host, v->host);
        EXPECT_TRUE(vm.memory.contains(to, 8 * MiB));
        EXPECT_EQ(vm.manager.vram()->gpa, to);
    }
    EXPECT_FALSE(vm.memory.contains(low.gpa, 1));
    EXPECT_FALSE(vm.memory.contains(low.gpa + 64 * MiB, 1));
    EXPECT_EQ(*vm.memory.read_obj<uint32_t>(high.gpa + 1 * MiB + 4), 0xc0ffeeU);

    // Another size: new memory, a fresh slot, the old one deleted and out of the map.
    auto bigger = vm.manager.map_vram(low.gpa, 16 * MiB);
    ASSERT_TRUE(bigger.has_value()) << bigger.error().message();
    EXPECT_NE(bigger->host, v->host);
    ASSERT_EQ(vm.slots.slots.size(), 2U);
    EXPECT_EQ(vm.slots.slots.begin()->second.gpa, 0U);
    EXPECT_EQ(std::next(vm.slots.slots.begin())->second.gpa, low.gpa);
    EXPECT_EQ(std::next(vm.slots.slots.begin())->second.size, 16 * MiB);
    EXPECT_FALSE(vm.memory.contains(high.gpa + 1 * MiB, 1));
    EXPECT_TRUE(vm.memory.contains(low.gpa, 16 * MiB));
    EXPECT_EQ(vm.manager.slots_in_use(), 2U);

    // KVM refuses the deletion, then the new slot of a move: the VRAM stays where it was.
    for (const int nth : {1, 2}) {
        vm.slots.fail_at = vm.slots.calls + nth;
        ASSERT_FALSE(vm.manager.map_vram(low.gpa + 32 * MiB, 16 * MiB).has_value()) << nth;
        EXPECT_TRUE(vm.memory.contains(low.gpa, 16 * MiB));
        EXPECT_FALSE(vm.memory.contains(low.gpa + 32 * MiB, 1));
        EXPECT_EQ(vm.manager.vram()->gpa, low.gpa);
        ASSERT_EQ(vm.slots.slots.size(), 2U);
        EXPECT_EQ(std::next(vm.slots.slots.begin())->second.gpa, low.gpa);
    }
    // And then it moves.
    ASSERT_TRUE(vm.manager.map_vram(low.gpa + 32 * MiB, 16 * MiB).has_value());
    EXPECT_TRUE(vm.memory.contains(low.gpa + 32 * MiB, 16 * MiB));
    EXPECT_FALSE(vm.memory.contains(low.gpa, 1));
    EXPECT_EQ(std::next(vm.slots.slots.begin())->second.gpa, low.gpa + 32 * MiB);
}

TEST(MemoryManager, MapVramOnlyInsideAVmbusWindow) {
    Vmm vm(6 * GiB, 8 * GiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    const GpaWindow low = vm.manager.vmbus_mmio_low();
    const GpaWindow high = vm.manager.vmbus_mmio_high();
    struct Case {
        uint64_t gpa, size;
        const char* why;
    };
    for (const Case c : {Case{1 * GiB, 8 * MiB, "startup RAM"},
                         Case{vm.manager.hot_add_window().gpa, 8 * MiB, "the hot-add window"},
                         Case{low.gpa - 4 * MiB, 8 * MiB, "straddles the low window's start"},
                         Case{low.end() - 4 * MiB, 8 * MiB, "straddles the low window's end"},
                         Case{high.end(), 8 * MiB, "above the high window"},
                         Case{low.gpa + 100, 8 * MiB, "unaligned start"},
                         Case{low.gpa, 8 * MiB + 1, "unaligned size"},
                         Case{low.gpa, 0, "empty"}}) {
        auto r = vm.manager.map_vram(c.gpa, c.size);
        ASSERT_FALSE(r.has_value()) << c.why;
        EXPECT_EQ(r.error().code(), Errc::Invalid) << c.why;
    }
    EXPECT_EQ(vm.manager.slots_in_use(), 2U);
    EXPECT_TRUE(vm.manager.map_vram(low.end() - 8 * MiB, 8 * MiB).has_value());
}

TEST(MemoryManager, DiscardOnlyGuestRam) {
    Vmm vm(512 * MiB, 1 * GiB);
    ASSERT_TRUE(vm.manager.map_startup_ram().has_value());
    const uint64_t hot = vm.manager.hot_add_window().gpa;
    ASSERT_TRUE(vm.manager.hot_add(hot, 128 * MiB).has_value());
    ASSERT_TRUE(vm.manager.map_vram(vm.manager.vmbus_mmio_low().gpa, 1 * MiB).has_value());

    ASSERT_TRUE(vm.memory.write_obj<uint32_t>(16 * MiB, 0x12345678).has_value());
    ASSERT_TRUE(vm.manager.discard(16 * MiB, 2 * MiB).has_value());
    EXPECT_EQ(*vm.memory.read_obj<uint32_t>(16 * MiB), 0U);
    ASSERT_TRUE(vm.memory.write_obj<uint32_t>(hot + 4096, 1).has_value());
    ASSERT_TRUE(vm.manager.discard(hot, 8192).has_value());
    EXPECT_EQ(*vm.memory.read_obj<uint32_t>(hot + 4096), 0U);

    for (const uint64_t gpa : {vm.manager.vmbus_mmio_low().gpa, hot + 128 * MiB, 512 * MiB - 4096}) {
        auto r = vm.manager.discard(gpa, 8192);
        ASSERT_FALSE(r.has_value()) << std::hex << gpa;
        EXPECT_EQ(r.error().code(), Errc::Invalid);
    }
}

}  // namespace
}  // namespace enlighten
