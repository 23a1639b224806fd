// The guest physical address map of an Enlighten VM. One place, so that the e820 map, the
// ACPI tables and the devices cannot disagree.
// Threads: constants and pure functions, any thread; no locks.
#pragma once

#include <cstdint>

namespace enlighten::layout {

// Low memory used by the direct Linux boot (all below the EBDA).
inline constexpr uint64_t kGdt = 0x500;
inline constexpr uint64_t kBootParams = 0x7000;       // the "zero page"
inline constexpr uint64_t kBootStack = 0x8ff0;
inline constexpr uint64_t kPml4 = 0x9000;
inline constexpr uint64_t kPdpt = 0xa000;
inline constexpr uint64_t kPd = 0xb000;               // 4 pages: identity map of 0..4 GiB
inline constexpr uint64_t kCmdline = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;
inline constexpr uint64_t kEbdaStart = 0x9fc00;       // reserved up to 1 MiB
inline constexpr uint64_t kAcpiTables = 0xe0000;      // RSDP is searched for in E0000-FFFFF
inline constexpr uint64_t kAcpiTablesSize = 0x20000;
inline constexpr uint64_t kHighMemory = 0x100000;     // 1 MiB: the kernel is loaded here
inline constexpr uint64_t kKernelLoad = 0x100000;

// Memory-mapped I/O hole below 4 GiB.
inline constexpr uint64_t kMmioHoleStart = 0xc0000000;
inline constexpr uint64_t kFourGiB = 0x100000000;
inline constexpr uint64_t kIoapicBase = 0xfec00000;
inline constexpr uint64_t kLapicBase = 0xfee00000;
inline constexpr uint64_t kKvmIdentityMap = 0xfeffc000;  // one page, Intel real-mode support
inline constexpr uint64_t kKvmTss = 0xfeffd000;          // three pages
// Linux truncates a VMBus _CRS range that crosses this address (Hyper-V's vTPM).
inline constexpr uint64_t kVtpmMmio = 0xfed40000;

// Windows that hold no startup RAM (vmm/memory.hpp plans them; the e820 map covers none of
// them, the DSDT's VMBus _CRS describes the two VMBus MMIO windows).
//
// Low VMBus MMIO window: the pool hyperv_fb and pci-hyperv allocate from
// (linux-hv-guest-contract §5, contract-input-video §4.5). 128 MiB at the top of the hole's
// free part: 0xC0000000-0xEFFFFFFF below it is the PCI root bridge's window, and it ends well
// below the IOAPIC, HPET, vTPM, LAPIC and KVM's identity-map/TSS pages.
inline constexpr uint64_t kVmbusLowMmioStart = 0xf0000000;
inline constexpr uint64_t kVmbusLowMmioSize = 128ULL << 20;
// Memory hot-add (contract-memory §7.1): Linux's memory block and hv_balloon's chunk size;
// the window starts above all startup RAM and at or above 4 GiB.
inline constexpr uint64_t kHotAddAlignment = 128ULL << 20;
// Boot RAM must end below this, or Linux picks a memory block larger than 128 MiB and
// hv_balloon's 128 MiB hot-add chunks fail (contract-memory §7.1).
inline constexpr uint64_t kBootRamEndLimit = 64ULL << 30;
// High (64-bit) VMBus MMIO window, above the hot-add window.
inline constexpr uint64_t kVmbusHighMmioAlignment = 1ULL << 30;
inline constexpr uint64_t kVmbusHighMmioSize = 1ULL << 30;

// The PCI root bridge's memory window for BARs (the DSDT's PCI0 _CRS): the hole below the
// low VMBus window. Nothing is mapped in it: the BARs there only describe (contract-input-video
// §5.4: hyperv_fb reads BAR 0 of 1414:5353 for its aperture call, and maps nothing).
inline constexpr uint64_t kPciMmioStart = kMmioHoleStart;
inline constexpr uint64_t kPciMmioSize = kVmbusLowMmioStart - kMmioHoleStart;
// PCI bus 0 (platform/devices/pci.hpp): the host bridge at 00:00.0 and the Hyper-V
// synthetic video's PCI identity at 00:08.0 (the slot Hyper-V's Gen1 VMs use), whose BAR 0
// is 64 MiB as on Hyper-V, at the start of the window.
inline constexpr uint8_t kPciHostBridgeSlot = 0;
inline constexpr uint8_t kPciVideoSlot = 8;
inline constexpr uint64_t kPciVideoBarSize = 64ULL << 20;

static_assert(kVmbusLowMmioStart >= kMmioHoleStart && kVmbusLowMmioStart % kVmbusLowMmioSize == 0);
static_assert(kPciMmioSize >= kPciVideoBarSize && kPciMmioStart % kPciVideoBarSize == 0);
static_assert(kVmbusLowMmioStart + kVmbusLowMmioSize <= kIoapicBase);
static_assert(kVmbusLowMmioStart + kVmbusLowMmioSize <= kVtpmMmio);

// Legacy I/O ports.
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint8_t kCom1Irq = 4;
inline constexpr uint16_t kCmosPort = 0x70;
inline constexpr uint16_t kI8042CommandPort = 0x64;
// PCI configuration mechanism #1: the address latch 0xCF8, the data window 0xCFC-0xCFF.
inline constexpr uint16_t kPciConfigPort = 0xcf8;
// The Hyper-V hypercall page's stub leaves the guest with `in eax, imm8` on this port
// (KVM does not forward VMCALL/VMMCALL to user space). Not a port any PC device uses.
inline constexpr uint16_t kHypercallPort = 0x5c;
// A fast HvSignalEvent writes its connection id here (hv/partition.hpp doorbell_port); a
// KVM ioeventfd per open channel turns the write into a wake-up without a VM exit.
inline constexpr uint16_t kDoorbellPort = 0x5d;
// ACPI fixed hardware (see platform/devices/acpi_pm.hpp).
inline constexpr uint16_t kPm1aEventPort = 0x600;   // PM1a_STS, PM1a_EN (4 bytes)
inline constexpr uint16_t kPm1aControlPort = 0x604; // PM1a_CNT (2 bytes)
inline constexpr uint16_t kResetPort = 0x608;       // FADT RESET_REG (1 byte)
inline constexpr uint8_t kResetValue = 0x1;
inline constexpr uint8_t kSciIrq = 9;
// The S5 (soft off) SLP_TYP value published in the DSDT's \_S5 package.
inline constexpr uint8_t kSlpTypS5 = 5;

}  // namespace enlighten::layout
