// The guest physical address map of an Enlighten VM. One place, so that the e820 map, the
// ACPI tables and the devices cannot disagree.
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

// Legacy I/O ports.
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint8_t kCom1Irq = 4;
inline constexpr uint16_t kCmosPort = 0x70;
inline constexpr uint16_t kI8042CommandPort = 0x64;
// The Hyper-V hypercall page's stub leaves the guest with `in eax, imm8` on this port
// (KVM does not forward VMCALL/VMMCALL to user space). Not a port any PC device uses.
inline constexpr uint16_t kHypercallPort = 0x5c;
// ACPI fixed hardware (see platform/devices/acpi_pm.hpp).
inline constexpr uint16_t kPm1aEventPort = 0x600;   // PM1a_STS, PM1a_EN (4 bytes)
inline constexpr uint16_t kPm1aControlPort = 0x604; // PM1a_CNT (2 bytes)
inline constexpr uint16_t kResetPort = 0x608;       // FADT RESET_REG (1 byte)
inline constexpr uint8_t kResetValue = 0x1;
inline constexpr uint8_t kSciIrq = 9;
// The S5 (soft off) SLP_TYP value published in the DSDT's \_S5 package.
inline constexpr uint8_t kSlpTypS5 = 5;

}  // namespace enlighten::layout
