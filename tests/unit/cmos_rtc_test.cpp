#include "platform/devices/cmos_rtc.hpp"

#include <gtest/gtest.h>

using namespace enlighten;

namespace {
uint8_t read_cmos(CmosRtc& rtc, uint8_t index) {
    rtc.io_write(0, std::span(&index, 1));
    uint8_t v = 0;
    rtc.io_read(1, std::span(&v, 1));
    return v;
}
}  // namespace

TEST(CmosRtc, BcdTimeFromTheClock) {
    // 2026-11-26 02:31:25 UTC, a Thursday.
    CmosRtc rtc(0, [] { return std::time_t{1795660285}; });
    EXPECT_EQ(read_cmos(rtc, 0x00), 0x25);
    EXPECT_EQ(read_cmos(rtc, 0x02), 0x31);
    EXPECT_EQ(read_cmos(rtc, 0x04), 0x02);
    EXPECT_EQ(read_cmos(rtc, 0x06), 0x05);  // Thursday = 5 (Sunday = 1)
    EXPECT_EQ(read_cmos(rtc, 0x07), 0x26);
    EXPECT_EQ(read_cmos(rtc, 0x08), 0x11);
    EXPECT_EQ(read_cmos(rtc, 0x09), 0x26);
    EXPECT_EQ(read_cmos(rtc, CmosRtc::kCenturyRegister), 0x20);
    EXPECT_EQ(read_cmos(rtc, 0x0a) & 0x80, 0);     // no update in progress
    EXPECT_EQ(read_cmos(rtc, 0x0b) & 0x06, 0x02);  // BCD, 24-hour
    EXPECT_EQ(read_cmos(rtc, 0x0d), 0x80);
}

TEST(CmosRtc, OffsetAndNmiBit) {
    CmosRtc rtc(3600, [] { return std::time_t{1795660285}; });
    EXPECT_EQ(read_cmos(rtc, 0x80 | 0x04), 0x03);  // NMI-mask bit ignored; one hour later
}

TEST(CmosRtc, RamIsReadWriteButTheClockIsNot) {
    CmosRtc rtc(0, [] { return std::time_t{1795660285}; });
    const uint8_t idx = 0x40, val = 0x5a;
    rtc.io_write(0, std::span(&idx, 1));
    rtc.io_write(1, std::span(&val, 1));
    EXPECT_EQ(read_cmos(rtc, 0x40), 0x5a);
    const uint8_t sec = 0x00, zero = 0x00;
    rtc.io_write(0, std::span(&sec, 1));
    rtc.io_write(1, std::span(&zero, 1));
    EXPECT_EQ(read_cmos(rtc, 0x00), 0x25);
}
