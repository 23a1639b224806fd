// PCI configuration mechanism #1 as Linux 6.1 probes and uses it (arch/x86/pci/direct.c:
// pci_check_type1, pci_check_type2, pci_conf1_read/write; contract-input-video §5.2), and the
// Hyper-V video's config space hyperv_fb reads (§5.4).
#include "platform/devices/pci.hpp"

#include <gtest/gtest.h>

#include "platform/layout.hpp"

using namespace enlighten;

namespace {

constexpr uint64_t kAddr = 0;  // offsets from port 0xCF8
constexpr uint64_t kData = 4;

class PciTest : public ::testing::Test {
protected:
    void SetUp() override {
        ASSERT_TRUE(bus.add(0, {.vendor = 0x8086, .device = 0x1237, .class_code = 0x060000}));
        ASSERT_TRUE(bus.add(8, {.vendor = 0x1414,
                                .device = 0x5353,
                                .class_code = 0x030000,
                                .bar0_size = 64U << 20,
                                .bar0_base = 0xc0000000}));
    }
    void out(uint64_t port, uint32_t v, size_t size) {
        uint8_t b[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
                        static_cast<uint8_t>(v >> 24)};
        bus.io_write(port, std::span<const uint8_t>(b, size));
    }
    uint32_t in(uint64_t port, size_t size) {
        uint8_t b[4] = {};
        bus.io_read(port, std::span(b, size));
        uint32_t v = 0;
        for (size_t i = 0; i < size; ++i) v |= uint32_t{b[i]} << (8 * i);
        return v;
    }
    // pci_conf1_read: the latch, then 1, 2 or 4 bytes at 0xCFC + (reg & 3).
    static uint32_t address(uint32_t bus_nr, uint32_t slot, uint32_t fn, uint32_t reg) {
        return 0x80000000U | bus_nr << 16 | slot << 11 | fn << 8 | (reg & 0xfc) | ((reg & 0xf00) << 16);
    }
    uint32_t read(uint32_t slot, uint32_t reg, size_t size, uint32_t bus_nr = 0, uint32_t fn = 0) {
        out(kAddr, address(bus_nr, slot, fn, reg), 4);
        return in(kData + (reg & 3), size);
    }
    void write(uint32_t slot, uint32_t reg, uint32_t v, size_t size) {
        out(kAddr, address(0, slot, 0, reg), 4);
        out(kData + (reg & 3), v, size);
    }
    PciBus bus;
};

}  // namespace

TEST_F(PciTest, Type1ProbeSucceedsAndType2ProbeFails) {
    // pci_check_type1: outb(0x01, 0xCFB); tmp = inl(0xCF8); outl(0x80000000, 0xCF8);
    // inl(0xCF8) == 0x80000000; outl(tmp, 0xCF8).
    out(3, 0x01, 1);
    const uint32_t saved = in(kAddr, 4);
    out(kAddr, 0x80000000, 4);
    EXPECT_EQ(in(kAddr, 4), 0x80000000U);
    out(kAddr, saved, 4);
    EXPECT_EQ(in(kAddr, 4), saved);
    // pci_check_type2: outb(0x00, 0xCFB); outb(0x00, 0xCF8); outb(0x00, 0xCFA); both read 0.
    out(3, 0, 1);
    out(kAddr, 0, 1);
    out(2, 0, 1);
    EXPECT_FALSE(in(kAddr, 1) == 0 && in(2, 1) == 0);
    // A byte or word access to the latch neither reads nor changes it.
    out(kAddr, 0x80000800, 4);
    out(kAddr, 0x12, 1);
    out(kAddr, 0x3456, 2);
    EXPECT_EQ(in(kAddr, 4), 0x80000800U);
    EXPECT_EQ(in(kAddr, 2), 0xffffU);
}

TEST_F(PciTest, SanityCheckFindsAHostBridgeAndTheVgaClass) {
    // pci_sanity_check: the class word at 0x0A of bus 0's functions.
    EXPECT_EQ(read(0, 0x0a, 2), 0x0600U);
    EXPECT_EQ(read(8, 0x0a, 2), 0x0300U);
}

TEST_F(PciTest, TheHyperVVideoAsHypervFbFindsIt) {
    EXPECT_EQ(read(8, 0x00, 4), 0x53531414U);
    EXPECT_EQ(read(8, 0x00, 2), 0x1414U);
    EXPECT_EQ(read(8, 0x02, 2), 0x5353U);
    EXPECT_EQ(read(8, 0x08, 4), 0x03000000U);  // class 0x030000, revision 0
    EXPECT_EQ(read(8, 0x0e, 1), 0x00U);        // header type 0, single function
    EXPECT_EQ(read(8, 0x2c, 4), 0x00000000U);  // subsystem 0/0: the stub driver's match
    EXPECT_EQ(read(8, 0x04, 4), 0x00000000U);  // command and status
    EXPECT_EQ(read(8, 0x34, 1), 0x00U);        // no capabilities
    EXPECT_EQ(read(8, 0x3d, 1), 0x00U);        // no interrupt pin
    EXPECT_EQ(read(8, 0x10, 4), 0xc0000000U);  // BAR 0 preset by "firmware"
    for (uint32_t reg = 0x14; reg <= 0x24; reg += 4) EXPECT_EQ(read(8, reg, 4), 0U) << reg;
    EXPECT_EQ(read(8, 0xfc, 4), 0U);
}

TEST_F(PciTest, Bar0SizingAndReassignment) {
    // __pci_read_base: write all-ones, read the mask, restore.
    write(8, 0x10, 0xffffffff, 4);
    EXPECT_EQ(read(8, 0x10, 4), 0xfc000000U);  // 64 MiB, 32-bit memory, not prefetchable
    write(8, 0x10, 0xc0000000, 4);
    EXPECT_EQ(read(8, 0x10, 4), 0xc0000000U);
    write(8, 0x10, 0xd4123456, 4);  // the low bits are not the guest's
    EXPECT_EQ(read(8, 0x10, 4), 0xd4000000U);
    write(8, 0x14, 0xffffffff, 4);  // BAR 1 is not implemented
    EXPECT_EQ(read(8, 0x14, 4), 0U);
}

TEST_F(PciTest, OnlyWritableBitsChange) {
    write(8, 0x00, 0xdeadbeef, 4);
    EXPECT_EQ(read(8, 0x00, 4), 0x53531414U);
    write(8, 0x04, 0xffff, 2);
    EXPECT_EQ(read(8, 0x04, 2), PciFunction::kCommandWritable);
    write(8, 0x06, 0xffff, 2);  // status: nothing to clear
    EXPECT_EQ(read(8, 0x06, 2), 0U);
    write(8, 0x3c, 0x0b, 1);
    EXPECT_EQ(read(8, 0x3c, 1), 0x0bU);
    write(8, 0x3d, 0x01, 1);
    EXPECT_EQ(read(8, 0x3d, 1), 0U);
    write(8, 0x08, 0xffffffff, 4);
    EXPECT_EQ(read(8, 0x08, 4), 0x03000000U);
}

TEST_F(PciTest, AbsentFunctionsReadAllOnes) {
    EXPECT_EQ(read(1, 0x00, 4), 0xffffffffU);    // empty slot
    EXPECT_EQ(read(31, 0x00, 4), 0xffffffffU);
    EXPECT_EQ(read(8, 0x00, 4, 1), 0xffffffffU);  // bus 1
    EXPECT_EQ(read(8, 0x00, 4, 0, 1), 0xffffffffU);  // function 1
    EXPECT_EQ(read(8, 0x100, 4), 0xffffffffU);   // AMD extended register bits (27:24) set
    out(kAddr, 0x00004000, 4);                    // enable bit clear
    EXPECT_EQ(in(kData, 4), 0xffffffffU);
    // writes there change nothing anywhere
    out(kAddr, address(0, 8, 0, 0x110), 4);
    out(kData, 0, 4);
    EXPECT_EQ(read(8, 0x10, 4), 0xc0000000U);
}

TEST_F(PciTest, DataAccessesWithinTheWindowAndPastIt) {
    out(kAddr, address(0, 8, 0, 0x00), 4);
    EXPECT_EQ(in(kData + 1, 1), 0x14U);
    EXPECT_EQ(in(kData + 2, 2), 0x5353U);
    EXPECT_EQ(in(kData + 3, 1), 0x53U);
    // A dword read at 0xCFD: three bytes of the register, then 0xCFF + 1, which is not ours.
    EXPECT_EQ(in(kData + 1, 4), 0xff535314U);
    // Register 0xFC: bytes 0xFD-0xFF, nothing past 256.
    out(kAddr, address(0, 8, 0, 0xfc), 4);
    EXPECT_EQ(in(kData + 1, 4), 0xff000000U);
    out(kData + 1, 0xffffffff, 4);
    EXPECT_EQ(in(kData, 4), 0U);
}

TEST(PciBus, AddChecksSlotsAndBars) {
    PciBus bus;
    EXPECT_TRUE(bus.add(31, {.vendor = 1, .device = 2}));
    EXPECT_FALSE(bus.add(31, {.vendor = 1, .device = 2}));  // taken
    EXPECT_FALSE(bus.add(32, {.vendor = 1, .device = 2}));
    EXPECT_FALSE(bus.add(1, {.bar0_size = 3 << 20}));                        // not a power of two
    EXPECT_FALSE(bus.add(1, {.bar0_size = 8, .bar0_base = 0}));              // below 16 bytes
    EXPECT_FALSE(bus.add(1, {.bar0_size = 1 << 20, .bar0_base = 0x80000}));  // misaligned
    EXPECT_TRUE(bus.add(1, {.bar0_size = 1 << 20, .bar0_base = 0x100000}));
}
