#include "vmm/io_bus.hpp"

#include <gtest/gtest.h>

using namespace enlighten;

namespace {
struct Recorder final : IoDevice {
    uint64_t last_offset = ~0ULL;
    uint8_t value;
    explicit Recorder(uint8_t v) : value(v) {}
    void io_read(uint64_t offset, std::span<uint8_t> data) override {
        last_offset = offset;
        std::fill(data.begin(), data.end(), value);
    }
    void io_write(uint64_t offset, std::span<const uint8_t>) override { last_offset = offset; }
};
}  // namespace

TEST(IoBus, DispatchesByRangeWithRelativeOffsets) {
    IoBus bus;
    auto a = std::make_shared<Recorder>(0xa);
    auto b = std::make_shared<Recorder>(0xb);
    ASSERT_TRUE(bus.add(0x3f8, 8, a));
    ASSERT_TRUE(bus.add(0x70, 2, b));
    uint8_t v = 0;
    EXPECT_TRUE(bus.read(0x3fd, std::span(&v, 1)));
    EXPECT_EQ(v, 0xa);
    EXPECT_EQ(a->last_offset, 5u);
    EXPECT_TRUE(bus.write(0x71, std::span(&v, 1)));
    EXPECT_EQ(b->last_offset, 1u);
    EXPECT_FALSE(bus.read(0x400, std::span(&v, 1)));
    EXPECT_EQ(v, 0xff);
    EXPECT_FALSE(bus.read(0x72, std::span(&v, 1)));
    EXPECT_FALSE(bus.write(0x0, std::span(&v, 1)));
}

TEST(IoBus, RefusesOverlapsAndEmptyRanges) {
    IoBus bus;
    auto d = std::make_shared<Recorder>(0);
    ASSERT_TRUE(bus.add(0x100, 0x10, d));
    EXPECT_FALSE(bus.add(0x10f, 1, d));
    EXPECT_FALSE(bus.add(0xf0, 0x11, d));
    EXPECT_FALSE(bus.add(0x200, 0, d));
    EXPECT_FALSE(bus.add(~0ULL, 2, d));
    EXPECT_TRUE(bus.add(0x110, 1, d));
    EXPECT_TRUE(bus.add(0xf0, 0x10, d));
}
