#include "platform/x86_cpu.hpp"

#include <gtest/gtest.h>

using namespace enlighten;

namespace {
kvm_cpuid_entry2 leaf(uint32_t fn, uint32_t index = 0) {
    kvm_cpuid_entry2 e{};
    e.function = fn;
    e.index = index;
    return e;
}
const kvm_cpuid_entry2* find(const std::vector<kvm_cpuid_entry2>& t, uint32_t fn, uint32_t index = 0) {
    for (const auto& e : t)
        if (e.function == fn && e.index == index) return &e;
    return nullptr;
}
}  // namespace

TEST(Cpuid, ApicIdTopologyAndHypervisorBit) {
    std::vector<kvm_cpuid_entry2> supported = {leaf(0x1), leaf(0xb, 0), leaf(0xb, 1), leaf(0x40000000),
                                               leaf(0x40000001), leaf(0x80000008)};
    supported[0].ebx = 0x00000800;  // CLFLUSH size
    const auto t = build_cpuid(supported, 3, CpuTopology{4}, {});
    const auto* l1 = find(t, 0x1);
    ASSERT_NE(l1, nullptr);
    EXPECT_EQ(l1->ebx >> 24, 3u);
    EXPECT_EQ((l1->ebx >> 16) & 0xff, 4u);
    EXPECT_EQ(l1->ebx & 0xffff, 0x0800u);
    EXPECT_TRUE(l1->ecx & (1U << 31));
    EXPECT_TRUE(l1->edx & (1U << 28));
    EXPECT_EQ(find(t, 0xb, 0)->edx, 3u);
    EXPECT_EQ(find(t, 0xb, 1)->ebx, 4u);
    EXPECT_EQ(find(t, 0xb, 1)->eax, 2u);
    EXPECT_EQ(find(t, 0x80000008)->ecx & 0xff, 3u);
}

TEST(Cpuid, HypervisorRangeIsReplaced) {
    std::vector<kvm_cpuid_entry2> supported = {leaf(0x1), leaf(0x40000000), leaf(0x40000001)};
    supported[1].ebx = 0x4b4d564b;  // "KVMK"
    auto hv = leaf(0x40000000);
    hv.ebx = 0x7263694d;  // "Micr"
    const std::vector<kvm_cpuid_entry2> mine = {hv};
    const auto t = build_cpuid(supported, 0, CpuTopology{1}, mine);
    EXPECT_EQ(find(t, 0x40000000)->ebx, 0x7263694du);
    EXPECT_EQ(find(t, 0x40000001), nullptr);
    int count = 0;
    for (const auto& e : t) count += e.function == 0x40000000;
    EXPECT_EQ(count, 1);
}

TEST(GsiRouting, PitOnIoapicPin2AsTheMadtSays) {
    const auto routes = pc_gsi_routing();
    int ioapic = 0, pic = 0;
    for (const auto& r : routes) {
        ASSERT_EQ(r.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_IRQCHIP));
        if (r.u.irqchip.irqchip == KVM_IRQCHIP_IOAPIC) {
            ++ioapic;
            EXPECT_NE(r.gsi, 2u);  // pin 2 belongs to GSI 0
            EXPECT_EQ(r.u.irqchip.pin, r.gsi == 0 ? 2u : r.gsi);
        } else {
            ++pic;
            EXPECT_NE(r.gsi, 2u);  // the cascade
            EXPECT_EQ(r.u.irqchip.irqchip, r.gsi < 8 ? static_cast<uint32_t>(KVM_IRQCHIP_PIC_MASTER)
                                                     : static_cast<uint32_t>(KVM_IRQCHIP_PIC_SLAVE));
            EXPECT_EQ(r.u.irqchip.pin, r.gsi % 8);
        }
    }
    EXPECT_EQ(ioapic, 23);
    EXPECT_EQ(pic, 15);
}
