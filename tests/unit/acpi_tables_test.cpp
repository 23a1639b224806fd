// The ACPI table image: structure (RSDP -> XSDT -> tables), checksums, and the fields Linux
// reads, at their ACPI 6.4 offsets.
#include "platform/acpi/acpi.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace enlighten::acpi {
namespace {

using Bytes = std::vector<uint8_t>;

Tables build(uint32_t cpus, bool vmbus) {
    auto tables = build_tables(PlatformDescription{.num_cpus = cpus, .vmbus = vmbus});
    EXPECT_TRUE(tables.has_value()) << (tables ? "" : tables.error().message());
    return tables ? *tables : Tables{};
}

// Reads from the image by guest-physical address; fails the test when out of bounds.
class Image {
public:
    explicit Image(const Tables& t) : t_(t) {}

    [[nodiscard]] bool contains(uint64_t gpa, uint64_t size) const {
        return gpa >= t_.base_gpa && size <= t_.image.size() && gpa - t_.base_gpa <= t_.image.size() - size;
    }
    template <typename T>
    [[nodiscard]] T read(uint64_t gpa) const {
        T value{};
        EXPECT_TRUE(contains(gpa, sizeof(T))) << std::hex << gpa;
        if (contains(gpa, sizeof(T))) std::memcpy(&value, t_.image.data() + (gpa - t_.base_gpa), sizeof(T));
        return value;
    }
    [[nodiscard]] uint8_t u8(uint64_t gpa) const { return read<uint8_t>(gpa); }
    [[nodiscard]] uint16_t u16(uint64_t gpa) const { return read<uint16_t>(gpa); }
    [[nodiscard]] uint32_t u32(uint64_t gpa) const { return read<uint32_t>(gpa); }
    [[nodiscard]] uint64_t u64(uint64_t gpa) const { return read<uint64_t>(gpa); }
    [[nodiscard]] std::string str(uint64_t gpa, size_t size) const {
        std::string s(size, '\0');
        EXPECT_TRUE(contains(gpa, size));
        if (contains(gpa, size)) std::memcpy(s.data(), t_.image.data() + (gpa - t_.base_gpa), size);
        return s;
    }
    [[nodiscard]] Bytes bytes(uint64_t gpa, size_t size) const {
        EXPECT_TRUE(contains(gpa, size));
        if (!contains(gpa, size)) return {};
        const auto* begin = t_.image.data() + (gpa - t_.base_gpa);
        return Bytes(begin, begin + size);
    }
    [[nodiscard]] uint8_t sum(uint64_t gpa, size_t size) const {
        uint8_t s = 0;
        for (const uint8_t b : bytes(gpa, size)) s = static_cast<uint8_t>(s + b);
        return s;
    }

private:
    const Tables& t_;
};

// The tables reachable from the RSDP, by signature: XSDT entries plus the FADT's FACS and DSDT.
std::map<std::string, uint64_t> find_tables(const Tables& t) {
    const Image img(t);
    std::map<std::string, uint64_t> found;
    const uint64_t xsdt = img.u64(t.rsdp_gpa + 24);
    found["XSDT"] = xsdt;
    const uint32_t xsdt_len = img.u32(xsdt + 4);
    for (uint64_t entry = xsdt + 36; entry + 8 <= xsdt + xsdt_len; entry += 8) {
        const uint64_t table = img.u64(entry);
        found[img.str(table, 4)] = table;
    }
    if (found.contains("FACP")) {
        found["FACS"] = img.u32(found["FACP"] + 36);
        found["DSDT"] = img.u64(found["FACP"] + 140);
    }
    return found;
}

bool contains_bytes(const Bytes& haystack, const Bytes& needle) {
    return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

Bytes dsdt_bytes(const Tables& t) {
    const Image img(t);
    const uint64_t dsdt = find_tables(t).at("DSDT");
    return img.bytes(dsdt, img.u32(dsdt + 4));
}

TEST(AcpiTables, ImageFitsTheReservedWindow) {
    for (const uint32_t cpus : {1U, 255U}) {
        const Tables t = build(cpus, true);
        EXPECT_EQ(t.base_gpa, layout::kAcpiTables);
        EXPECT_FALSE(t.image.empty());
        EXPECT_LE(t.image.size(), layout::kAcpiTablesSize);
    }
}

TEST(AcpiTables, RsdpRevision2WithBothChecksums) {
    const Tables t = build(2, false);
    const Image img(t);
    EXPECT_EQ(t.rsdp_gpa, t.base_gpa);  // at the image start
    EXPECT_EQ(t.rsdp_gpa % 16, 0U);
    EXPECT_EQ(img.str(t.rsdp_gpa, 8), "RSD PTR ");
    EXPECT_EQ(img.str(t.rsdp_gpa + 9, 6), "ENLGTN");
    EXPECT_EQ(img.u8(t.rsdp_gpa + 15), 2);
    EXPECT_EQ(img.u32(t.rsdp_gpa + 16), 0U);  // no RSDT
    EXPECT_EQ(img.u32(t.rsdp_gpa + 20), 36U);
    EXPECT_EQ(img.sum(t.rsdp_gpa, 20), 0);
    EXPECT_EQ(img.sum(t.rsdp_gpa, 36), 0);
}

TEST(AcpiTables, XsdtPointsAtValidTables) {
    const Tables t = build(4, true);
    const Image img(t);
    const uint64_t xsdt = img.u64(t.rsdp_gpa + 24);
    ASSERT_TRUE(img.contains(xsdt, 36));
    EXPECT_EQ(img.str(xsdt, 4), "XSDT");
    const uint32_t length = img.u32(xsdt + 4);
    ASSERT_EQ((length - 36) % 8, 0U);
    std::vector<std::string> signatures;
    for (uint64_t entry = xsdt + 36; entry < xsdt + length; entry += 8) {
        const uint64_t table = img.u64(entry);
        ASSERT_TRUE(img.contains(table, 36)) << std::hex << table;
        const uint32_t table_length = img.u32(table + 4);
        ASSERT_TRUE(img.contains(table, table_length));
        EXPECT_EQ(table % 8, 0U);
        signatures.push_back(img.str(table, 4));
    }
    EXPECT_EQ(signatures, (std::vector<std::string>{"FACP", "APIC"}));
}

TEST(AcpiTables, EveryTableHasOurIdsAndAValidChecksum) {
    for (const bool vmbus : {false, true}) {
        const Tables t = build(3, vmbus);
        const Image img(t);
        const auto tables = find_tables(t);
        for (const char* sig : {"XSDT", "FACP", "APIC", "DSDT"}) {
            ASSERT_TRUE(tables.contains(sig)) << sig;
            const uint64_t at = tables.at(sig);
            EXPECT_EQ(img.str(at, 4), sig);
            const uint32_t length = img.u32(at + 4);
            ASSERT_TRUE(img.contains(at, length)) << sig;
            EXPECT_EQ(img.sum(at, length), 0) << sig;
            EXPECT_EQ(img.str(at + 10, 6), "ENLGTN") << sig;
            EXPECT_EQ(img.str(at + 16, 8), "ENLIGHTN") << sig;
            EXPECT_EQ(img.str(at + 28, 4), "ENLG") << sig;
        }
    }
}

TEST(AcpiTables, TablesDoNotOverlap) {
    const Tables t = build(8, true);
    const Image img(t);
    std::vector<std::pair<uint64_t, uint64_t>> ranges{{t.rsdp_gpa, t.rsdp_gpa + 36}};
    for (const auto& [sig, at] : find_tables(t)) ranges.emplace_back(at, at + img.u32(at + 4));
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
}

TEST(AcpiTables, FadtFields) {
    const Tables t = build(1, false);
    const Image img(t);
    const auto tables = find_tables(t);
    const uint64_t f = tables.at("FACP");
    EXPECT_EQ(img.u32(f + 4), 276U);  // length
    EXPECT_EQ(img.u8(f + 8), 6);      // revision
    EXPECT_EQ(img.u8(f + 131), 0);    // FADT minor version
    EXPECT_LE(img.u8(f + 45), 1);     // preferred PM profile
    EXPECT_EQ(img.u16(f + 46), layout::kSciIrq);
    EXPECT_EQ(img.u32(f + 48), 0U);   // SMI_CMD: always in ACPI mode
    EXPECT_EQ(img.u8(f + 52), 0);     // ACPI_ENABLE
    EXPECT_EQ(img.u8(f + 53), 0);     // ACPI_DISABLE
    EXPECT_EQ(img.u32(f + 56), layout::kPm1aEventPort);
    EXPECT_EQ(img.u32(f + 60), 0U);   // PM1b_EVT_BLK
    EXPECT_EQ(img.u32(f + 64), layout::kPm1aControlPort);
    EXPECT_EQ(img.u32(f + 68), 0U);   // PM1b_CNT_BLK
    EXPECT_EQ(img.u32(f + 72), 0U);   // PM2_CNT_BLK
    EXPECT_EQ(img.u32(f + 76), 0U);   // PM_TMR_BLK
    EXPECT_EQ(img.u32(f + 80), 0U);   // GPE0_BLK
    EXPECT_EQ(img.u32(f + 84), 0U);   // GPE1_BLK
    EXPECT_EQ(img.u8(f + 88), 4);     // PM1_EVT_LEN
    EXPECT_EQ(img.u8(f + 89), 2);     // PM1_CNT_LEN
    EXPECT_EQ(img.u8(f + 90), 0);     // PM2_CNT_LEN
    EXPECT_EQ(img.u8(f + 91), 0);     // PM_TMR_LEN
    EXPECT_EQ(img.u8(f + 92), 0);     // GPE0_BLK_LEN
    EXPECT_EQ(img.u8(f + 93), 0);     // GPE1_BLK_LEN
    EXPECT_GT(img.u16(f + 96), 100);  // P_LVL2_LAT: no C2
    EXPECT_GT(img.u16(f + 98), 1000); // P_LVL3_LAT: no C3
    EXPECT_EQ(img.u8(f + 108), 0x32); // CENTURY
    // IAPC_BOOT_ARCH: VGA not present; no LEGACY_DEVICES, no 8042, CMOS RTC present.
    EXPECT_EQ(img.u16(f + 109), 0x0004);
    // Flags: WBINVD | PROC_C1 | SLP_BUTTON | RESET_REG_SUP; PWR_BUTTON (bit 4) and
    // HW_REDUCED_ACPI (bit 20) clear.
    const uint32_t flags = img.u32(f + 112);
    EXPECT_EQ(flags, (1U << 0) | (1U << 2) | (1U << 5) | (1U << 10));
    EXPECT_EQ(flags & (1U << 4), 0U);
    EXPECT_EQ(flags & (1U << 20), 0U);
    // RESET_REG: GAS SystemIO, 8 bits at offset 0, address 0x608.
    EXPECT_EQ(img.u8(f + 116), 1);
    EXPECT_EQ(img.u8(f + 117), 8);
    EXPECT_EQ(img.u8(f + 118), 0);
    EXPECT_EQ(img.u64(f + 120), layout::kResetPort);
    EXPECT_EQ(img.u8(f + 128), layout::kResetValue);
    // X_PM1a_EVT_BLK (148) and X_PM1a_CNT_BLK (172): SystemIO, 32 and 16 bits.
    EXPECT_EQ(img.u8(f + 148), 1);
    EXPECT_EQ(img.u8(f + 149), 32);
    EXPECT_EQ(img.u64(f + 152), layout::kPm1aEventPort);
    EXPECT_EQ(img.u8(f + 172), 1);
    EXPECT_EQ(img.u8(f + 173), 16);
    EXPECT_EQ(img.u64(f + 176), layout::kPm1aControlPort);
    // No PM1b, PM2, PM timer or GPE blocks in the extended fields either.
    for (const uint64_t gas : {160U, 184U, 196U, 208U, 220U, 232U}) EXPECT_EQ(img.u64(f + gas + 4), 0U) << gas;
}

TEST(AcpiTables, FadtPointsAtDsdtAndFacs) {
    const Tables t = build(1, false);
    const Image img(t);
    const uint64_t f = find_tables(t).at("FACP");
    const uint64_t x_dsdt = img.u64(f + 140);
    EXPECT_EQ(img.u32(f + 40), x_dsdt);  // DSDT and X_DSDT agree
    EXPECT_EQ(img.str(x_dsdt, 4), "DSDT");
    EXPECT_EQ(img.u8(x_dsdt + 8), 2);  // 64-bit AML integers
    const uint32_t facs = img.u32(f + 36);
    EXPECT_EQ(img.u64(f + 132), 0U);  // X_FIRMWARE_CTRL must be 0 when FIRMWARE_CTRL is set
    EXPECT_EQ(facs % 64, 0U);
    EXPECT_EQ(img.str(facs, 4), "FACS");
    EXPECT_EQ(img.u32(facs + 4), 64U);
    EXPECT_EQ(img.u8(facs + 32), 2);  // version
}

struct MadtEntry {
    uint8_t type;
    Bytes data;  // the whole entry, type and length included
};

std::vector<MadtEntry> madt_entries(const Tables& t) {
    const Image img(t);
    const uint64_t madt = find_tables(t).at("APIC");
    const uint32_t length = img.u32(madt + 4);
    std::vector<MadtEntry> entries;
    uint64_t at = madt + 44;
    while (at < madt + length) {
        const uint8_t entry_length = img.u8(at + 1);
        EXPECT_GE(entry_length, 2);
        if (entry_length < 2) break;
        entries.push_back({img.u8(at), img.bytes(at, entry_length)});
        at += entry_length;
    }
    EXPECT_EQ(at, madt + length);  // entries end exactly at the table end
    return entries;
}

TEST(AcpiTables, MadtHeader) {
    const Tables t = build(2, false);
    const Image img(t);
    const uint64_t madt = find_tables(t).at("APIC");
    EXPECT_EQ(img.u32(madt + 36), layout::kLapicBase);
    EXPECT_EQ(img.u32(madt + 40), 1U);  // PCAT_COMPAT
}

TEST(AcpiTables, MadtHasOneLocalApicPerCpu) {
    for (const uint32_t cpus : {1U, 2U, 7U, 64U, 255U}) {
        const Tables t = build(cpus, false);
        std::vector<MadtEntry> lapics;
        for (const MadtEntry& e : madt_entries(t)) {
            if (e.type == 0) lapics.push_back(e);
        }
        ASSERT_EQ(lapics.size(), cpus);
        for (uint32_t i = 0; i < cpus; ++i) {
            const Bytes& d = lapics[i].data;
            ASSERT_EQ(d.size(), 8U);
            EXPECT_EQ(d[2], i);  // ACPI processor UID
            EXPECT_EQ(d[3], i);  // APIC ID
            EXPECT_EQ((Bytes{d[4], d[5], d[6], d[7]}), (Bytes{1, 0, 0, 0}));  // enabled
        }
    }
}

TEST(AcpiTables, MadtIoApicOverridesAndNmi) {
    const Tables t = build(2, false);
    std::vector<Bytes> ioapics;
    std::vector<Bytes> overrides;
    std::vector<Bytes> nmis;
    for (const MadtEntry& e : madt_entries(t)) {
        if (e.type == 1) ioapics.push_back(e.data);
        if (e.type == 2) overrides.push_back(e.data);
        if (e.type == 4) nmis.push_back(e.data);
    }
    // I/O APIC: id 0, address 0xFEC00000, GSI base 0.
    ASSERT_EQ(ioapics.size(), 1U);
    EXPECT_EQ(ioapics[0], (Bytes{1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0}));
    // ISA IRQ0 -> GSI 2 (conforming); ISA IRQ9 -> GSI 9, level-triggered active-high (0x000D).
    ASSERT_EQ(overrides.size(), 2U);
    EXPECT_EQ(overrides[0], (Bytes{2, 10, 0, 0, 2, 0, 0, 0, 0x00, 0x00}));
    EXPECT_EQ(overrides[1], (Bytes{2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0x00}));
    // Local APIC NMI: all processors, conforming flags, LINT1.
    ASSERT_EQ(nmis.size(), 1U);
    EXPECT_EQ(nmis[0], (Bytes{4, 6, 0xff, 0x00, 0x00, 1}));
}

TEST(AcpiTables, DsdtHasS5AndCom1) {
    const Bytes dsdt = dsdt_bytes(build(1, false));
    const Bytes s5{0x08, 0x5c, '_', 'S', '5', '_', 0x12, 0x08, 0x04,
                   0x0a, layout::kSlpTypS5, 0x0a, layout::kSlpTypS5, 0x00, 0x00};
    EXPECT_TRUE(contains_bytes(dsdt, s5));
    // Device(COM1) with _HID EISAID("PNP0501") and the IO/IRQ resource template.
    EXPECT_TRUE(contains_bytes(dsdt, {'C', 'O', 'M', '1', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01}));
    EXPECT_TRUE(contains_bytes(dsdt, {0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00}));
    // Scope(\_SB)
    EXPECT_TRUE(contains_bytes(dsdt, {0x5c, '_', 'S', 'B', '_'}));
}

TEST(AcpiTables, DsdtVmbusOnlyWhenRequested) {
    const Bytes vmbus_string{0x0d, 'V', 'M', 'B', 'U', 'S', 0x00};
    const Bytes without = dsdt_bytes(build(1, false));
    EXPECT_FALSE(contains_bytes(without, vmbus_string));
    EXPECT_FALSE(contains_bytes(without, {'V', 'M', 'B', 'S'}));

    const Bytes with = dsdt_bytes(build(1, true));
    // Device(VMBS){ Name(_HID, "VMBUS") Name(_UID, Zero) Method(_STA){ Return(0x0F) }
    //               Name(_CRS, ResourceTemplate(){}) }
    EXPECT_TRUE(contains_bytes(with, {0x5b, 0x82}));
    EXPECT_TRUE(contains_bytes(with, {'V', 'M', 'B', 'S', 0x08, '_', 'H', 'I', 'D'}));
    EXPECT_TRUE(contains_bytes(with, vmbus_string));
    EXPECT_TRUE(contains_bytes(with, {0x08, '_', 'U', 'I', 'D', 0x00}));
    EXPECT_TRUE(contains_bytes(with, {0x14, 0x09, '_', 'S', 'T', 'A', 0x00, 0xa4, 0x0a, 0x0f}));
    EXPECT_TRUE(contains_bytes(with, {0x08, '_', 'C', 'R', 'S', 0x11, 0x05, 0x0a, 0x02, 0x79, 0x00}));
}

TEST(AcpiTables, DsdtVmbusCrsDescribesTheMmioWindows) {
    // The windows vmm/memory.cpp plans for a 512 MiB guest.
    auto tables = build_tables(PlatformDescription{.num_cpus = 1,
                                                   .vmbus = true,
                                                   .vmbus_mmio_low = {0xf0000000, 0x08000000},
                                                   .vmbus_mmio_high = {0x100000000, 0x40000000}});
    ASSERT_TRUE(tables.has_value()) << tables.error().message();
    const Bytes dsdt = dsdt_bytes(*tables);
    // Name(_CRS, ResourceTemplate(){ DWordMemory(ResourceProducer, PosDecode, MinFixed,
    //   MaxFixed, NonCacheable, ReadWrite, 0, 0xF0000000, 0xF7FFFFFF, 0, 0x08000000)
    //   QWordMemory(..., 0, 0x100000000, 0x13FFFFFFF, 0, 0x40000000) })
    const Bytes crs{0x08, '_', 'C', 'R', 'S', 0x11, 0x4e, 0x04, 0x0a, 0x4a,      //
                    0x87, 0x17, 0x00, 0x00, 0x0c, 0x01,                          // DWordMemory
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf0,              // _GRA _MIN
                    0xff, 0xff, 0xff, 0xf7, 0x00, 0x00, 0x00, 0x00,              // _MAX _TRA
                    0x00, 0x00, 0x00, 0x08,                                      // _LEN
                    0x8a, 0x2b, 0x00, 0x00, 0x0c, 0x01,                          // QWordMemory
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,              // _GRA
                    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,              // _MIN
                    0xff, 0xff, 0xff, 0x3f, 0x01, 0x00, 0x00, 0x00,              // _MAX
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,              // _TRA
                    0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,              // _LEN
                    0x79, 0x00};
    EXPECT_TRUE(contains_bytes(dsdt, crs));
    // The device still has its _HID and _STA, and the windows do not leak into other devices.
    EXPECT_TRUE(contains_bytes(dsdt, {'V', 'M', 'B', 'S', 0x08, '_', 'H', 'I', 'D'}));
    EXPECT_FALSE(contains_bytes(dsdt_bytes(build(1, false)), {0x87, 0x17}));
    // Only one window: only its descriptor.
    auto low_only = build_tables(PlatformDescription{.num_cpus = 1, .vmbus = true,
                                                     .vmbus_mmio_low = {0xf0000000, 0x08000000}});
    ASSERT_TRUE(low_only.has_value());
    EXPECT_TRUE(contains_bytes(dsdt_bytes(*low_only), {0x08, '_', 'C', 'R', 'S', 0x11, 0x1f, 0x0a, 0x1c, 0x87}));
    EXPECT_FALSE(contains_bytes(dsdt_bytes(*low_only), {0x8a, 0x2b}));
}

TEST(AcpiTables, DsdtPciRootBridgeOnlyWhenRequested) {
    EXPECT_FALSE(contains_bytes(dsdt_bytes(build(1, true)), {'P', 'C', 'I', '0'}));
    auto tables = build_tables(PlatformDescription{.num_cpus = 1, .vmbus = true, .pci = true,
                                                   .pci_mmio = {0xc0000000, 0x30000000}});
    ASSERT_TRUE(tables.has_value()) << tables.error().message();
    const Bytes dsdt = dsdt_bytes(*tables);
    // Device(PCI0){ Name(_HID, EISAID("PNP0A03")) Name(_UID, Zero) Name(_SEG, Zero) Name(_BBN, Zero)
    EXPECT_TRUE(contains_bytes(dsdt, {'P', 'C', 'I', '0', 0x08, '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03,
                                      0x08, '_', 'U', 'I', 'D', 0x00, 0x08, '_', 'S', 'E', 'G', 0x00,
                                      0x08, '_', 'B', 'B', 'N', 0x00}));
    // Name(_CRS, ResourceTemplate(){ WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode,
    //   0, 0, 0xFF, 0, 0x100) DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed,
    //   NonCacheable, ReadWrite, 0, 0xC0000000, 0xEFFFFFFF, 0, 0x30000000) })
    const Bytes crs{0x08, '_', 'C', 'R', 'S', 0x11, 0x2f, 0x0a, 0x2c,                       // Buffer(44)
                    0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x00,  // WordBusNumber
                    0x00, 0x00, 0x00, 0x01,                                                  //
                    0x87, 0x17, 0x00, 0x00, 0x0c, 0x01,                                      // DWordMemory
                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0,                          // _GRA _MIN
                    0xff, 0xff, 0xff, 0xef, 0x00, 0x00, 0x00, 0x00,                          // _MAX _TRA
                    0x00, 0x00, 0x00, 0x30,                                                  // _LEN
                    0x79, 0x00};
    EXPECT_TRUE(contains_bytes(dsdt, crs));
    // A window above 4 GiB cannot be a DWordMemory.
    EXPECT_FALSE(build_tables(PlatformDescription{.num_cpus = 1, .pci = true, .pci_mmio = {0xf0000000, 0x20000000}})
                     .has_value());
}

TEST(AcpiTables, RejectsVmbusWindowsLinuxWouldMisread) {
    auto build_with = [](MmioWindow low, MmioWindow high) {
        return build_tables(PlatformDescription{.num_cpus = 1, .vmbus = true, .vmbus_mmio_low = low,
                                                .vmbus_mmio_high = high});
    };
    EXPECT_FALSE(build_with({0xfed00000, 0x100000}, {}).has_value());    // crosses 0xFED40000
    EXPECT_FALSE(build_with({0xf0000000, 0x20000000}, {}).has_value());  // past 4 GiB
    EXPECT_FALSE(build_with({0x80000, 0x10000}, {}).has_value());        // below 1 MiB
    EXPECT_FALSE(build_with({}, {~uint64_t{0} - 0xfff, 0x2000}).has_value());  // wraps
    EXPECT_TRUE(build_with({0xfed40000, 0x1000}, {0xffffffff00000000, 0x100000000}).has_value());
}

TEST(AcpiTables, DsdtBodyIsExactlyTheExpectedAml) {
    // The whole AML of the no-VMBus DSDT (cross-checked with iasl -oa).
    const Bytes dsdt = dsdt_bytes(build(1, false));
    const Bytes expected{
        0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,  // \_S5
        0x10, 0x33, 0x5c, 0x5f, 0x53, 0x42, 0x5f,                                              // Scope(\_SB)
        0x5b, 0x82, 0x2b, 0x43, 0x4f, 0x4d, 0x31,                                              // Device(COM1)
        0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01,                            // _HID
        0x08, 0x5f, 0x55, 0x49, 0x44, 0x01,                                                    // _UID
        0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0a, 0x0d,                                  // _CRS
        0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00};
    ASSERT_GE(dsdt.size(), 36U);
    EXPECT_EQ(Bytes(dsdt.begin() + 36, dsdt.end()), expected);
}

TEST(AcpiTables, Deterministic) {
    EXPECT_EQ(build(4, true).image, build(4, true).image);
}

TEST(AcpiTables, RejectsUnsupportedCpuCounts) {
    EXPECT_FALSE(build_tables(PlatformDescription{.num_cpus = 0}).has_value());
    EXPECT_FALSE(build_tables(PlatformDescription{.num_cpus = 256}).has_value());
}

}  // namespace
}  // namespace enlighten::acpi
