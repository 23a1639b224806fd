#include "platform/devices/acpi_pm.hpp"

#include <gtest/gtest.h>

#include "platform/layout.hpp"

using namespace enlighten;

namespace {

class AcpiPmTest : public ::testing::Test {
protected:
    int power_offs = 0, resets = 0;
    bool sci = false;
    AcpiPm pm{[this](bool level) { sci = level; },
              AcpiPm::Callbacks{.power_off = [this] { ++power_offs; }, .reset = [this] { ++resets; }}};

    void write16(uint64_t off, uint16_t v) {
        const uint8_t b[2] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
        pm.io_write(off, b);
    }
    uint16_t read16(uint64_t off) {
        uint8_t b[2] = {};
        pm.io_read(off, b);
        return static_cast<uint16_t>(b[0] | (b[1] << 8));
    }
};

}  // namespace

TEST_F(AcpiPmTest, S5PowersOff) {
    write16(AcpiPm::kControl, static_cast<uint16_t>((layout::kSlpTypS5 << 10) | AcpiPm::kSlpEn));
    EXPECT_EQ(power_offs, 1);
    EXPECT_EQ(read16(AcpiPm::kControl) & AcpiPm::kSlpEn, 0);  // write-only bit
}

TEST_F(AcpiPmTest, OtherSleepStatesAndSlpTypWithoutSlpEnDoNothing) {
    write16(AcpiPm::kControl, static_cast<uint16_t>(layout::kSlpTypS5 << 10));
    write16(AcpiPm::kControl, static_cast<uint16_t>((1 << 10) | AcpiPm::kSlpEn));
    EXPECT_EQ(power_offs, 0);
}

TEST_F(AcpiPmTest, SciEnAlwaysReadsSet) {
    EXPECT_EQ(read16(AcpiPm::kControl) & AcpiPm::kSciEn, AcpiPm::kSciEn);
}

TEST_F(AcpiPmTest, ResetRegister) {
    const uint8_t wrong = 0x42;
    pm.io_write(AcpiPm::kReset, std::span(&wrong, 1));
    EXPECT_EQ(resets, 0);
    const uint8_t value = layout::kResetValue;
    pm.io_write(AcpiPm::kReset, std::span(&value, 1));
    EXPECT_EQ(resets, 1);
}

TEST_F(AcpiPmTest, PowerButtonRaisesSciOnlyWhenEnabledAndStatusIsWriteOneToClear) {
    pm.press_power_button();
    EXPECT_FALSE(sci);
    EXPECT_EQ(read16(AcpiPm::kStatus) & AcpiPm::kPwrBtn, AcpiPm::kPwrBtn);
    write16(AcpiPm::kEnable, AcpiPm::kPwrBtn);
    EXPECT_TRUE(sci);
    write16(AcpiPm::kStatus, 0);  // writing 0 clears nothing
    EXPECT_TRUE(sci);
    write16(AcpiPm::kStatus, AcpiPm::kPwrBtn);
    EXPECT_FALSE(sci);
    EXPECT_EQ(read16(AcpiPm::kStatus), 0);
}
