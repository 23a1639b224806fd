#include "platform/devices/acpi_pm.hpp"

#include "platform/layout.hpp"

namespace enlighten {

uint8_t AcpiPm::read_byte(uint64_t offset) const {
    auto byte_of = [&](uint16_t reg, uint64_t base) { return static_cast<uint8_t>(reg >> (8 * (offset - base))); };
    if (offset < kEnable) return byte_of(status_, kStatus);
    if (offset < kControl) return byte_of(enable_, kEnable);
    if (offset < kControl + 2) return byte_of(static_cast<uint16_t>(control_ | kSciEn), kControl);
    return 0;  // the reset register reads as zero
}

void AcpiPm::io_read(uint64_t offset, std::span<uint8_t> data) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); ++i) data[i] = read_byte(offset + i);
}

void AcpiPm::io_write(uint64_t offset, std::span<const uint8_t> data) {
    bool power_off = false;
    bool reset = false;
    {
        std::lock_guard lock(mu_);
        bool control_written = false;
        for (size_t i = 0; i < data.size(); ++i) {
            const uint64_t off = offset + i;
            const unsigned value = data[i];
            if (off < kEnable) {
                status_ = static_cast<uint16_t>(status_ & ~(value << (8 * off)));  // write 1 to clear
            } else if (off < kControl) {
                const unsigned shift = static_cast<unsigned>(8 * (off - kEnable));
                enable_ = static_cast<uint16_t>((enable_ & ~(0xffU << shift)) | (value << shift));
            } else if (off < kControl + 2) {
                const unsigned shift = static_cast<unsigned>(8 * (off - kControl));
                control_ = static_cast<uint16_t>((control_ & ~(0xffU << shift)) | (value << shift));
                control_written = true;
            } else if (off == kReset && data[i] == layout::kResetValue) {
                reset = true;
            }
        }
        if (control_written && (control_ & kSlpEn)) {
            const unsigned slp_typ = (control_ >> 10) & 0x7;
            control_ = static_cast<uint16_t>(control_ & ~kSlpEn);  // SLP_EN is write-only
            // Only S5 is published in the DSDT; other sleep states are not supported.
            if (slp_typ == layout::kSlpTypS5) power_off = true;
        }
        update_sci();
    }
    // Callbacks run outside the lock: they stop the VM.
    if (power_off && cb_.power_off) cb_.power_off();
    if (reset && cb_.reset) cb_.reset();
}

void AcpiPm::press_power_button() {
    std::lock_guard lock(mu_);
    status_ |= kPwrBtn;
    update_sci();
}

void AcpiPm::update_sci() {
    const bool level = (status_ & enable_ & kPwrBtn) != 0;
    if (level != sci_level_) {
        sci_level_ = level;
        if (sci_) sci_(level);
    }
}

}  // namespace enlighten
