// ACPI fixed hardware: the PM1a event and control registers and the FADT reset register
// (ACPI 6.4 §4.8). The guest powers off by writing SLP_TYP=S5 with SLP_EN to PM1a_CNT and
// resets through RESET_REG; the host "presses" the fixed-feature power button.
//
// Threads: port accesses from vCPU threads, press_power_button from the VM's loop; one
// mutex. The power-off and reset callbacks run on the vCPU that wrote the register.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>

#include "platform/devices/io_device.hpp"

namespace enlighten {

class AcpiPm final : public IoDevice {
public:
    struct Callbacks {
        std::function<void()> power_off;
        std::function<void()> reset;
    };
    AcpiPm(IrqLine sci, Callbacks callbacks) : sci_(std::move(sci)), cb_(std::move(callbacks)) {}

    // Register block, relative to layout::kPm1aEventPort.
    static constexpr uint64_t kStatus = 0;   // PM1a_STS (2 bytes)
    static constexpr uint64_t kEnable = 2;   // PM1a_EN (2 bytes)
    static constexpr uint64_t kControl = 4;  // PM1a_CNT (2 bytes)
    static constexpr uint64_t kReset = 8;    // RESET_REG (1 byte)
    static constexpr uint64_t kSize = 9;

    static constexpr uint16_t kPwrBtn = 1U << 8;   // PWRBTN_STS / PWRBTN_EN
    static constexpr uint16_t kSciEn = 1U << 0;
    static constexpr uint16_t kSlpEn = 1U << 13;

    void io_read(uint64_t offset, std::span<uint8_t> data) override;
    void io_write(uint64_t offset, std::span<const uint8_t> data) override;

    // The host presses the power button: PWRBTN_STS is set and an SCI raised if enabled.
    void press_power_button();

private:
    uint8_t read_byte(uint64_t offset) const;
    void update_sci();

    std::mutex mu_;
    IrqLine sci_;
    Callbacks cb_;
    uint16_t status_ = 0;
    uint16_t enable_ = 0;
    uint16_t control_ = kSciEn;
    bool sci_level_ = false;
};

}  // namespace enlighten
