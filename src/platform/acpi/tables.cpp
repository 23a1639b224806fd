// The ACPI tables of an Enlighten VM: RSDP -> XSDT -> {FADT -> {FACS, DSDT}, MADT}.
//
// The platform is a PC with ACPI fixed hardware (not hardware-reduced): PM1a event/control
// blocks, SCI on IRQ 9, a reset register, a CMOS RTC, a 16550 on COM1, local APICs and one
// I/O APIC, and optionally a PCI root bridge for bus 0 (configuration mechanism #1; no MCFG,
// no _PRT: nothing on it uses interrupts). No PM timer, no GPE blocks, no i8042, no legacy VGA.
//
// Wire formats are packed structs copied into the image; x86 is little-endian like ACPI.
#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstring>
#include <span>
#include <type_traits>

#include "platform/acpi/acpi.hpp"
#include "platform/acpi/aml.hpp"

namespace enlighten::acpi {

namespace {

static_assert(std::endian::native == std::endian::little, "ACPI tables are little-endian");
// FIRMWARE_CTRL, DSDT and the RSDP's RSDT field are 32-bit: keep the tables below 4 GiB.
static_assert(layout::kAcpiTables + layout::kAcpiTablesSize <= layout::kFourGiB);

using Bytes = std::vector<uint8_t>;

template <size_t N>
constexpr std::array<char, N - 1> text(const char (&s)[N]) {
    std::array<char, N - 1> out{};
    std::copy_n(s, N - 1, out.begin());
    return out;
}

constexpr auto kOemId = text("ENLGTN");
constexpr auto kOemTableId = text("ENLIGHTN");
constexpr auto kCreatorId = text("ENLG");
constexpr uint32_t kOemRevision = 1;
constexpr uint32_t kCreatorRevision = 1;

// Processor UID 0xFF means "all processors" in the Local APIC NMI entry, and APIC ID 0xFF is
// the xAPIC broadcast: CPUs use IDs 0..254.
constexpr uint32_t kMaxCpus = 255;

#pragma pack(push, 1)

// ACPI 6.4 §5.2.5.3 Root System Description Pointer (RSDP), revision 2.
struct Rsdp {
    std::array<char, 8> signature;    // 0: "RSD PTR "
    uint8_t checksum;                 // 8: bytes 0-19 sum to 0
    std::array<char, 6> oem_id;       // 9
    uint8_t revision;                 // 15: 2 (ACPI 2.0+)
    uint32_t rsdt_address;            // 16: 0, there is no RSDT
    uint32_t length;                  // 20: 36
    uint64_t xsdt_address;            // 24
    uint8_t extended_checksum;        // 32: bytes 0-35 sum to 0
    std::array<uint8_t, 3> reserved;  // 33
};
static_assert(std::is_standard_layout_v<Rsdp> && sizeof(Rsdp) == 36);

// ACPI 6.4 §5.2.6 System Description Table Header.
struct SdtHeader {
    std::array<char, 4> signature;     // 0
    uint32_t length;                   // 4: the whole table, header included
    uint8_t revision;                  // 8
    uint8_t checksum;                  // 9: the whole table sums to 0
    std::array<char, 6> oem_id;        // 10
    std::array<char, 8> oem_table_id;  // 16
    uint32_t oem_revision;             // 24
    std::array<char, 4> creator_id;    // 28
    uint32_t creator_revision;         // 32
};
static_assert(std::is_standard_layout_v<SdtHeader> && sizeof(SdtHeader) == 36);

// ACPI 6.4 §5.2.3.2 Generic Address Structure (GAS).
struct Gas {
    uint8_t address_space_id;  // 0: 0 SystemMemory, 1 SystemIO
    uint8_t bit_width;         // 1
    uint8_t bit_offset;        // 2
    uint8_t access_size;       // 3: 0 undefined, 1 byte, 2 word, 3 dword, 4 qword
    uint64_t address;          // 4
};
static_assert(std::is_standard_layout_v<Gas> && sizeof(Gas) == 12);

// ACPI 6.4 §5.2.9 Fixed ACPI Description Table (FADT), revision 6 (the ACPI 6.0 layout).
struct Fadt {
    SdtHeader header;                  // 0: "FACP"
    uint32_t firmware_ctrl;            // 36: FACS address
    uint32_t dsdt;                     // 40
    uint8_t reserved0;                 // 44 (INT_MODEL in ACPI 1.0)
    uint8_t preferred_pm_profile;      // 45
    uint16_t sci_int;                  // 46
    uint32_t smi_cmd;                  // 48
    uint8_t acpi_enable;               // 52
    uint8_t acpi_disable;              // 53
    uint8_t s4bios_req;                // 54
    uint8_t pstate_cnt;                // 55
    uint32_t pm1a_evt_blk;             // 56
    uint32_t pm1b_evt_blk;             // 60
    uint32_t pm1a_cnt_blk;             // 64
    uint32_t pm1b_cnt_blk;             // 68
    uint32_t pm2_cnt_blk;              // 72
    uint32_t pm_tmr_blk;               // 76
    uint32_t gpe0_blk;                 // 80
    uint32_t gpe1_blk;                 // 84
    uint8_t pm1_evt_len;               // 88
    uint8_t pm1_cnt_len;               // 89
    uint8_t pm2_cnt_len;               // 90
    uint8_t pm_tmr_len;                // 91
    uint8_t gpe0_blk_len;              // 92
    uint8_t gpe1_blk_len;              // 93
    uint8_t gpe1_base;                 // 94
    uint8_t cst_cnt;                   // 95
    uint16_t p_lvl2_lat;               // 96
    uint16_t p_lvl3_lat;               // 98
    uint16_t flush_size;               // 100
    uint16_t flush_stride;             // 102
    uint8_t duty_offset;               // 104
    uint8_t duty_width;                // 105
    uint8_t day_alrm;                  // 106
    uint8_t mon_alrm;                  // 107
    uint8_t century;                   // 108
    uint16_t iapc_boot_arch;           // 109
    uint8_t reserved1;                 // 111
    uint32_t flags;                    // 112
    Gas reset_reg;                     // 116
    uint8_t reset_value;               // 128
    uint16_t arm_boot_arch;            // 129
    uint8_t fadt_minor_version;        // 131
    uint64_t x_firmware_ctrl;          // 132
    uint64_t x_dsdt;                   // 140
    Gas x_pm1a_evt_blk;                // 148
    Gas x_pm1b_evt_blk;                // 160
    Gas x_pm1a_cnt_blk;                // 172
    Gas x_pm1b_cnt_blk;                // 184
    Gas x_pm2_cnt_blk;                 // 196
    Gas x_pm_tmr_blk;                  // 208
    Gas x_gpe0_blk;                    // 220
    Gas x_gpe1_blk;                    // 232
    Gas sleep_control_reg;             // 244
    Gas sleep_status_reg;              // 256
    uint64_t hypervisor_vendor_id;     // 268
};
static_assert(std::is_standard_layout_v<Fadt> && sizeof(Fadt) == 276);
static_assert(offsetof(Fadt, sci_int) == 46 && offsetof(Fadt, pm1a_evt_blk) == 56 &&
              offsetof(Fadt, century) == 108 && offsetof(Fadt, flags) == 112 && offsetof(Fadt, reset_reg) == 116 &&
              offsetof(Fadt, x_dsdt) == 140 && offsetof(Fadt, x_pm1a_cnt_blk) == 172 &&
              offsetof(Fadt, hypervisor_vendor_id) == 268);

// ACPI 6.4 §5.2.10 Firmware ACPI Control Structure (FACS); required unless hardware-reduced.
struct Facs {
    std::array<char, 4> signature;       // 0: "FACS"
    uint32_t length;                     // 4: 64
    uint32_t hardware_signature;         // 8
    uint32_t firmware_waking_vector;     // 12
    uint32_t global_lock;                // 16
    uint32_t flags;                      // 20
    uint64_t x_firmware_waking_vector;   // 24
    uint8_t version;                     // 32: 2
    std::array<uint8_t, 3> reserved0;    // 33
    uint32_t ospm_flags;                 // 36
    std::array<uint8_t, 24> reserved1;   // 40
};
static_assert(std::is_standard_layout_v<Facs> && sizeof(Facs) == 64);

// ACPI 6.4 §5.2.12 Multiple APIC Description Table (MADT), fixed part; entries follow.
struct Madt {
    SdtHeader header;                 // 0: "APIC"
    uint32_t local_apic_address;      // 36
    uint32_t flags;                   // 40: bit 0 PCAT_COMPAT
};
static_assert(std::is_standard_layout_v<Madt> && sizeof(Madt) == 44);

// ACPI 6.4 §5.2.12.2 Processor Local APIC Structure (type 0).
struct MadtLocalApic {
    uint8_t type;              // 0: 0
    uint8_t length;            // 1: 8
    uint8_t processor_uid;     // 2
    uint8_t apic_id;           // 3
    uint32_t flags;            // 4: bit 0 Enabled, bit 1 Online Capable
};
static_assert(std::is_standard_layout_v<MadtLocalApic> && sizeof(MadtLocalApic) == 8);

// ACPI 6.4 §5.2.12.3 I/O APIC Structure (type 1).
struct MadtIoApic {
    uint8_t type;              // 0: 1
    uint8_t length;            // 1: 12
    uint8_t io_apic_id;        // 2
    uint8_t reserved;          // 3
    uint32_t address;          // 4
    uint32_t gsi_base;         // 8
};
static_assert(std::is_standard_layout_v<MadtIoApic> && sizeof(MadtIoApic) == 12);

// ACPI 6.4 §5.2.12.5 Interrupt Source Override Structure (type 2).
struct MadtInterruptOverride {
    uint8_t type;              // 0: 2
    uint8_t length;            // 1: 10
    uint8_t bus;               // 2: 0 = ISA
    uint8_t source;            // 3: ISA IRQ
    uint32_t gsi;              // 4
    uint16_t flags;            // 8: MPS INTI flags, bits 1:0 polarity, bits 3:2 trigger mode
};
static_assert(std::is_standard_layout_v<MadtInterruptOverride> && sizeof(MadtInterruptOverride) == 10);

// ACPI 6.4 §5.2.12.7 Local APIC NMI Structure (type 4).
struct MadtLocalApicNmi {
    uint8_t type;              // 0: 4
    uint8_t length;            // 1: 6
    uint8_t processor_uid;     // 2: 0xFF = all processors
    uint16_t flags;            // 3: MPS INTI flags
    uint8_t lint;              // 5: LINTn input
};
static_assert(std::is_standard_layout_v<MadtLocalApicNmi> && sizeof(MadtLocalApicNmi) == 6);

#pragma pack(pop)

// GAS address space ids (§5.2.3.2) and access sizes.
constexpr uint8_t kSystemIo = 1;
constexpr uint8_t kAccessByte = 1;
constexpr uint8_t kAccessWord = 2;

// FADT Fixed Feature Flags (§5.2.9, Table 5.10).
constexpr uint32_t kFadtWbinvd = 1U << 0;
constexpr uint32_t kFadtProcC1 = 1U << 2;
constexpr uint32_t kFadtSlpButton = 1U << 5;  // set: no fixed-feature sleep button
constexpr uint32_t kFadtResetRegSup = 1U << 10;
// IA-PC boot architecture flags (§5.2.9.3).
constexpr uint16_t kBootArchVgaNotPresent = 1U << 2;
constexpr uint8_t kCmosCenturyRegister = 0x32;
// P_LVL2_LAT > 100 and P_LVL3_LAT > 1000: C2 and C3 are not supported.
constexpr uint16_t kNoC2Latency = 0x0fff;
constexpr uint16_t kNoC3Latency = 0x0fff;

// MPS INTI flags (§5.2.12.5, Table 5.50).
constexpr uint16_t kIntiConforming = 0x0000;
constexpr uint16_t kIntiActiveHighLevel = 0x000d;  // polarity 01 active high, trigger 11 level

template <typename T>
void append(Bytes& out, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto raw = std::bit_cast<std::array<uint8_t, sizeof(T)>>(value);
    out.insert(out.end(), raw.begin(), raw.end());
}

uint8_t checksum_of(std::span<const uint8_t> bytes) {
    uint8_t sum = 0;
    for (const uint8_t b : bytes) sum = static_cast<uint8_t>(sum + b);
    return static_cast<uint8_t>(0x100 - sum);
}

SdtHeader make_header(const std::array<char, 4>& signature, uint8_t revision) {
    SdtHeader h{};
    h.signature = signature;
    h.revision = revision;
    h.oem_id = kOemId;
    h.oem_table_id = kOemTableId;
    h.oem_revision = kOemRevision;
    h.creator_id = kCreatorId;
    h.creator_revision = kCreatorRevision;
    return h;  // length and checksum are filled by finish_table()
}

// Patches the header's length (offset 4) and checksum (offset 9) of a complete table.
void finish_table(Bytes& table) {
    const auto length = static_cast<uint32_t>(table.size());
    std::memcpy(table.data() + offsetof(SdtHeader, length), &length, sizeof length);
    table[offsetof(SdtHeader, checksum)] = 0;
    table[offsetof(SdtHeader, checksum)] = checksum_of(table);
}

Gas system_io(uint16_t port, uint8_t bit_width, uint8_t access_size) {
    return Gas{.address_space_id = kSystemIo, .bit_width = bit_width, .bit_offset = 0, .access_size = access_size,
               .address = port};
}

Bytes build_rsdp(uint64_t xsdt_gpa) {
    Rsdp r{};
    r.signature = text("RSD PTR ");
    r.oem_id = kOemId;
    r.revision = 2;
    r.rsdt_address = 0;
    r.length = sizeof(Rsdp);
    r.xsdt_address = xsdt_gpa;
    Bytes out;
    append(out, r);
    out[offsetof(Rsdp, checksum)] = checksum_of(std::span(out).first(20));
    out[offsetof(Rsdp, extended_checksum)] = checksum_of(out);
    return out;
}

// ACPI 6.4 §5.2.8 Extended System Description Table: the header, then 64-bit table addresses.
Bytes build_xsdt(std::span<const uint64_t> tables) {
    Bytes out;
    append(out, make_header(text("XSDT"), 1));
    for (const uint64_t gpa : tables) append(out, gpa);
    finish_table(out);
    return out;
}

Bytes build_fadt(uint64_t facs_gpa, uint64_t dsdt_gpa) {
    Fadt f{};
    f.header = make_header(text("FACP"), 6);
    // Below 4 GiB the FACS is published through FIRMWARE_CTRL only: X_FIRMWARE_CTRL must then
    // be 0. The DSDT goes in both DSDT and X_DSDT (same value; OSPM prefers X_DSDT).
    f.firmware_ctrl = static_cast<uint32_t>(facs_gpa);
    f.dsdt = static_cast<uint32_t>(dsdt_gpa);
    f.x_dsdt = dsdt_gpa;
    f.preferred_pm_profile = 0;  // Unspecified
    f.sci_int = layout::kSciIrq;
    f.smi_cmd = 0;  // no SMI command port: the platform is always in ACPI mode
    f.pm1a_evt_blk = layout::kPm1aEventPort;
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = layout::kPm1aControlPort;
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = system_io(layout::kPm1aEventPort, 32, kAccessWord);
    f.x_pm1a_cnt_blk = system_io(layout::kPm1aControlPort, 16, kAccessWord);
    // No PM timer, no PM2 control block, no GPE blocks: all left 0.
    f.p_lvl2_lat = kNoC2Latency;
    f.p_lvl3_lat = kNoC3Latency;
    f.century = kCmosCenturyRegister;
    // Not LEGACY_DEVICES, no 8042, no VGA; MSI fine, CMOS RTC present.
    f.iapc_boot_arch = kBootArchVgaNotPresent;
    // Power button: fixed feature (PWR_BUTTON flag clear). Sleep button: none.
    f.flags = kFadtWbinvd | kFadtProcC1 | kFadtSlpButton | kFadtResetRegSup;
    f.reset_reg = system_io(layout::kResetPort, 8, kAccessByte);
    f.reset_value = layout::kResetValue;
    f.fadt_minor_version = 0;
    Bytes out;
    append(out, f);
    finish_table(out);
    return out;
}

Bytes build_facs() {
    Facs f{};
    f.signature = text("FACS");
    f.length = sizeof(Facs);
    f.version = 2;
    Bytes out;
    append(out, f);  // no checksum: the FACS is not a description table
    return out;
}

Bytes build_madt(const PlatformDescription& platform) {
    Madt m{};
    m.header = make_header(text("APIC"), 5);
    m.local_apic_address = static_cast<uint32_t>(layout::kLapicBase);
    m.flags = 1;  // PCAT_COMPAT: dual 8259 PICs are present (and masked by the OS)
    Bytes out;
    append(out, m);
    for (uint32_t cpu = 0; cpu < platform.num_cpus; ++cpu) {
        const auto id = static_cast<uint8_t>(cpu);
        append(out, MadtLocalApic{.type = 0, .length = 8, .processor_uid = id, .apic_id = id, .flags = 1});
    }
    append(out, MadtIoApic{.type = 1, .length = 12, .io_apic_id = 0, .reserved = 0,
                           .address = static_cast<uint32_t>(layout::kIoapicBase), .gsi_base = 0});
    // The PIT's IRQ0 arrives on I/O APIC pin 2; the SCI is level-triggered, active high.
    append(out, MadtInterruptOverride{.type = 2, .length = 10, .bus = 0, .source = 0, .gsi = 2,
                                      .flags = kIntiConforming});
    append(out, MadtInterruptOverride{.type = 2, .length = 10, .bus = 0, .source = layout::kSciIrq,
                                      .gsi = layout::kSciIrq, .flags = kIntiActiveHighLevel});
    append(out, MadtLocalApicNmi{.type = 4, .length = 6, .processor_uid = 0xff, .flags = kIntiConforming,
                                 .lint = 1});
    finish_table(out);
    return out;
}

// The VMBus device's _CRS: its MMIO pools as producer windows (the device hands them out to
// its children). Linux reads only the minimum and maximum of each (vmbus_walk_resources).
std::vector<aml::Resource> vmbus_resources(const PlatformDescription& platform) {
    std::vector<aml::Resource> out;
    if (const MmioWindow& w = platform.vmbus_mmio_low; w.size != 0)
        out.push_back(aml::DWordMemory{.consumer = false,
                                       .min = static_cast<uint32_t>(w.base),
                                       .max = static_cast<uint32_t>(w.base + w.size - 1),
                                       .length = static_cast<uint32_t>(w.size)});
    if (const MmioWindow& w = platform.vmbus_mmio_high; w.size != 0)
        out.push_back(aml::QWordMemory{.consumer = false, .min = w.base, .max = w.base + w.size - 1, .length = w.size});
    return out;
}

Result<> check_vmbus_windows(const PlatformDescription& platform) {
    if (const MmioWindow& w = platform.vmbus_mmio_low; w.size != 0) {
        if (w.base < layout::kHighMemory || w.size > layout::kFourGiB - w.base)
            return fail("VMBus MMIO window {:#x}+{:#x} is not between 1 MiB and 4 GiB", w.base, w.size);
        if (w.base < layout::kVtpmMmio && w.base + w.size > layout::kVtpmMmio)
            return fail("VMBus MMIO window {:#x}+{:#x} crosses {:#x}", w.base, w.size, layout::kVtpmMmio);
    }
    if (const MmioWindow& w = platform.vmbus_mmio_high; w.size != 0 && w.size - 1 > ~uint64_t{0} - w.base)
        return fail("VMBus MMIO window {:#x}+{:#x} wraps around", w.base, w.size);
    if (const MmioWindow& w = platform.pci_mmio; platform.pci && w.size != 0) {
        if (w.base < layout::kHighMemory || w.size > layout::kFourGiB - w.base)
            return fail("PCI window {:#x}+{:#x} is not between 1 MiB and 4 GiB", w.base, w.size);
    }
    return {};
}

// The PCI root bridge's _CRS: the bus numbers it decodes and its memory window (a producer:
// Linux gives the BARs below it addresses from there). No I/O window: nothing on the bus has
// I/O BARs, and 0xCF8-0xCFF are not listed (Linux drops that entry anyway).
std::vector<aml::Resource> pci_root_resources(const PlatformDescription& platform) {
    std::vector<aml::Resource> out;
    out.push_back(aml::WordBusNumber{.min = 0, .max = 0xff, .length = 0x100});
    if (const MmioWindow& w = platform.pci_mmio; w.size != 0)
        out.push_back(aml::DWordMemory{.consumer = false,
                                       .min = static_cast<uint32_t>(w.base),
                                       .max = static_cast<uint32_t>(w.base + w.size - 1),
                                       .length = static_cast<uint32_t>(w.size)});
    return out;
}

// The DSDT (§5.2.11.1): \_S5 for soft-off through PM1a_CNT, COM1, and optionally the VMBus
// and a PCI root bridge.
Result<Bytes> build_dsdt(const PlatformDescription& platform) {
    std::vector<aml::Node> system_bus;
    system_bus.push_back(aml::device("COM1", {
        aml::name("_HID", aml::eisa_id("PNP0501")),
        aml::name("_UID", aml::integer(1)),
        aml::name("_CRS", aml::resource_template({
            aml::Io{.min = layout::kCom1Port, .max = layout::kCom1Port, .alignment = 1, .length = 8},
            aml::IrqNoFlags{{layout::kCom1Irq}},
        })),
    }));
    if (platform.vmbus) {
        system_bus.push_back(aml::device("VMBS", {
            aml::name("_HID", aml::string("VMBUS")),
            aml::name("_UID", aml::integer(0)),
            aml::method("_STA", 0, false, {aml::return_(aml::integer(0x0f))}),  // present, enabled, shown, working
            aml::name("_CRS", aml::resource_template(vmbus_resources(platform))),
        }));
    }
    if (platform.pci) {
        system_bus.push_back(aml::device("PCI0", {
            aml::name("_HID", aml::eisa_id("PNP0A03")),
            aml::name("_UID", aml::integer(0)),
            aml::name("_SEG", aml::integer(0)),
            aml::name("_BBN", aml::integer(0)),
            aml::name("_CRS", aml::resource_template(pci_root_resources(platform))),
        }));
    }
    ENL_TRY(Bytes body, aml::encode({
        // SLP_TYPa, SLP_TYPb, reserved, reserved.
        aml::name("\\_S5", aml::package({aml::integer(layout::kSlpTypS5), aml::integer(layout::kSlpTypS5),
                                         aml::integer(0), aml::integer(0)})),
        aml::scope("\\_SB", std::move(system_bus)),
    }));
    // Revision 2: AML integers are 64 bits wide.
    Bytes out;
    append(out, make_header(text("DSDT"), 2));
    out.insert(out.end(), body.begin(), body.end());
    finish_table(out);
    return out;
}

size_t align_up(size_t value, size_t alignment) { return (value + alignment - 1) / alignment * alignment; }

}  // namespace

Result<Tables> build_tables(const PlatformDescription& platform) {
    if (platform.num_cpus == 0 || platform.num_cpus > kMaxCpus) {
        return fail("ACPI tables: {} CPUs is outside 1-{}", platform.num_cpus, kMaxCpus);
    }
    if (auto ok = check_vmbus_windows(platform); !ok) return std::unexpected(ok.error().context("ACPI tables"));
    auto dsdt = build_dsdt(platform);
    if (!dsdt) return std::unexpected(dsdt.error().context("building the DSDT"));
    const Bytes madt = build_madt(platform);
    const Bytes facs = build_facs();

    // Lay out: RSDP first (the OS scans E0000-FFFFF on 16-byte boundaries), then the tables.
    size_t end = 0;
    auto place = [&end](size_t size, size_t alignment) {
        const size_t offset = align_up(end, alignment);
        end = offset + size;
        return offset;
    };
    constexpr size_t kXsdtEntries = 2;  // FADT, MADT (the FADT points to the FACS and DSDT)
    const size_t rsdp_at = place(sizeof(Rsdp), 16);
    const size_t xsdt_at = place(sizeof(SdtHeader) + kXsdtEntries * sizeof(uint64_t), 16);
    const size_t fadt_at = place(sizeof(Fadt), 16);
    const size_t facs_at = place(facs.size(), 64);  // the FACS must be 64-byte aligned
    const size_t madt_at = place(madt.size(), 16);
    const size_t dsdt_at = place(dsdt->size(), 16);
    if (end > layout::kAcpiTablesSize) {
        return fail("ACPI tables need {} bytes, more than the {} reserved for them", end, layout::kAcpiTablesSize);
    }

    Tables tables;
    tables.base_gpa = layout::kAcpiTables;
    tables.rsdp_gpa = tables.base_gpa + rsdp_at;
    const auto gpa = [&](size_t offset) { return tables.base_gpa + offset; };
    const std::array<uint64_t, kXsdtEntries> xsdt_entries{gpa(fadt_at), gpa(madt_at)};
    const Bytes xsdt = build_xsdt(xsdt_entries);
    const Bytes fadt = build_fadt(gpa(facs_at), gpa(dsdt_at));
    const Bytes rsdp = build_rsdp(gpa(xsdt_at));

    tables.image.assign(end, 0);
    const auto put = [&](size_t offset, const Bytes& table) {
        std::copy(table.begin(), table.end(), tables.image.begin() + static_cast<std::ptrdiff_t>(offset));
    };
    put(rsdp_at, rsdp);
    put(xsdt_at, xsdt);
    put(fadt_at, fadt);
    put(facs_at, facs);
    put(madt_at, madt);
    put(dsdt_at, *dsdt);
    return tables;
}

}  // namespace enlighten::acpi
