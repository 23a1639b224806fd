// x86 vCPU state at power-on: CPUID table, boot-CPU registers for the 64-bit Linux entry,
// and the local APIC's LINT pins.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

#include "common/result.hpp"
#include "kvm/kvm.hpp"
#include "platform/boot/linux_loader.hpp"

namespace enlighten {

struct CpuTopology {
    uint32_t num_cpus = 1;  // one package, num_cpus cores, one thread per core
};

// The CPUID table of vCPU `index` (whose APIC ID is `index`), from what KVM supports.
// Leaves in [0x40000000, 0x4000ffff] are left for the hypervisor interface to fill in:
// `hypervisor_leaves` replaces them entirely (empty: none at all).
std::vector<kvm_cpuid_entry2> build_cpuid(std::span<const kvm_cpuid_entry2> supported, uint32_t index,
                                          const CpuTopology& topo,
                                          std::span<const kvm_cpuid_entry2> hypervisor_leaves);

// Registers, segments, paging and FPU state for the boot vCPU at the 64-bit kernel entry.
Result<> setup_boot_vcpu(const Vcpu& vcpu, const boot::BootEntry& entry);

// GSI routing for the in-kernel PIC and IOAPIC that matches our MADT: ISA IRQ n is GSI n
// on IOAPIC pin n and PIC pin n, except that the PIT (IRQ 0) is wired to IOAPIC pin 2, as
// the MADT's interrupt source override says. KVM's default table wires GSI 0 to pin 0,
// which leaves a guest that relies on the PIT (LAPIC timer calibration) without a timer.
std::vector<kvm_irq_routing_entry> pc_gsi_routing();

// LINT0 = ExtINT, LINT1 = NMI, as firmware leaves them.
Result<> setup_lapic(const Vcpu& vcpu);

}  // namespace enlighten
