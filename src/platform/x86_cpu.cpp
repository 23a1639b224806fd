#include "platform/x86_cpu.hpp"

#include <bit>
#include <cstring>

#include "platform/layout.hpp"

namespace enlighten {

namespace {

constexpr uint32_t kHypervisorBase = 0x40000000;
constexpr uint32_t kHypervisorEnd = 0x4000ffff;

constexpr uint32_t bits_for(uint32_t n) { return n <= 1 ? 0 : static_cast<uint32_t>(std::bit_width(n - 1)); }

}  // namespace

std::vector<kvm_cpuid_entry2> build_cpuid(std::span<const kvm_cpuid_entry2> supported, uint32_t index,
                                          const CpuTopology& topo,
                                          std::span<const kvm_cpuid_entry2> hypervisor_leaves) {
    std::vector<kvm_cpuid_entry2> out;
    out.reserve(supported.size() + hypervisor_leaves.size());
    const uint32_t apic_id = index;
    const uint32_t n = topo.num_cpus;
    for (kvm_cpuid_entry2 e : supported) {
        if (e.function >= kHypervisorBase && e.function <= kHypervisorEnd) continue;
        switch (e.function) {
            case 0x1:
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000ffffU) | (apic_id << 24) | ((n > 255 ? 255 : n) << 16);
                e.ecx |= 1U << 31;  // hypervisor present
                if (n > 1) e.edx |= 1U << 28;  // HTT: more than one logical processor
                break;
            case 0x4:
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
                if (e.eax & 0x1f) {
                    const uint32_t level = (e.eax >> 5) & 0x7;
                    const uint32_t sharing = level >= 3 ? n - 1 : 0;
                    e.eax = (e.eax & 0x3fffU) | (sharing << 14) | ((n - 1) << 26);
                }
                break;
            case 0xb:
            case 0x1f:
                // Extended topology: level 0 = SMT (1 thread), level 1 = core (n cores).
                if (e.index == 0) {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1U << 8) | 0;
                } else if (e.index == 1) {
                    e.eax = bits_for(n);
                    e.ebx = n;
                    e.ecx = (2U << 8) | 1;
                } else {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
                e.edx = apic_id;
                break;
            case 0x80000008:
                // AMD: ECX[7:0] = cores per package - 1, ECX[15:12] = APIC ID size.
                e.ecx = (e.ecx & ~0xf0ffU) | ((n - 1) & 0xff) | (bits_for(n) << 12);
                break;
            default:
                break;
        }
        out.push_back(e);
    }
    out.insert(out.end(), hypervisor_leaves.begin(), hypervisor_leaves.end());
    return out;
}

Result<> setup_boot_vcpu(const Vcpu& vcpu, const boot::BootEntry& entry) {
    ENL_TRY(kvm_sregs sregs, vcpu.get_sregs());
    kvm_segment code{};
    code.base = 0;
    code.limit = 0xffffffff;
    code.selector = boot::kBootCs;
    code.type = 0xb;  // execute/read, accessed
    code.present = 1;
    code.s = 1;
    code.l = 1;
    code.g = 1;
    kvm_segment data = code;
    data.selector = boot::kBootDs;
    data.type = 0x3;  // read/write, accessed
    data.l = 0;
    data.db = 1;
    kvm_segment tss{};
    tss.limit = 0x67;
    tss.selector = boot::kBootTss;
    tss.type = 0xb;  // 64-bit busy TSS
    tss.present = 1;
    sregs.cs = code;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = layout::kGdt;
    sregs.gdt.limit = static_cast<uint16_t>(sizeof(boot::kGdtEntries) - 1);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x80000033;  // PG | NE | ET | MP | PE
    sregs.cr3 = layout::kPml4;
    sregs.cr4 = 0x20;        // PAE
    sregs.efer = 0x500;      // LME | LMA
    ENL_TRY_VOID(vcpu.set_sregs(sregs));

    kvm_regs regs{};
    regs.rip = entry.rip;
    regs.rsi = entry.boot_params;
    regs.rsp = layout::kBootStack;
    regs.rbp = layout::kBootStack;
    regs.rflags = 0x2;
    ENL_TRY_VOID(vcpu.set_regs(regs));

    kvm_fpu fpu{};
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    return vcpu.set_fpu(fpu);
}

std::vector<kvm_irq_routing_entry> pc_gsi_routing() {
    std::vector<kvm_irq_routing_entry> routes;
    auto add = [&](uint32_t gsi, uint32_t chip, uint32_t pin) {
        kvm_irq_routing_entry e{};
        e.gsi = gsi;
        e.type = KVM_IRQ_ROUTING_IRQCHIP;
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        routes.push_back(e);
    };
    for (uint32_t irq = 0; irq < 16; ++irq) {
        if (irq == 2) continue;  // the cascade
        add(irq, irq < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, irq % 8);
    }
    for (uint32_t gsi = 0; gsi < 24; ++gsi) {
        if (gsi == 2) continue;
        add(gsi, KVM_IRQCHIP_IOAPIC, gsi == 0 ? 2 : gsi);
    }
    return routes;
}

Result<> setup_lapic(const Vcpu& vcpu) {
    ENL_TRY(kvm_lapic_state lapic, vcpu.get_lapic());
    auto set_lvt = [&](size_t reg, uint32_t delivery_mode) {
        uint32_t v;
        std::memcpy(&v, lapic.regs + reg, 4);
        v = (v & ~0x700U) | (delivery_mode << 8);
        std::memcpy(lapic.regs + reg, &v, 4);
    };
    set_lvt(0x350, 0x7);  // LVT LINT0: ExtINT
    set_lvt(0x360, 0x4);  // LVT LINT1: NMI
    return vcpu.set_lapic(lapic);
}

}  // namespace enlighten
