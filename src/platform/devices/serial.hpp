// A 16550A UART (COM1), interrupt-driven for both directions.
// Register semantics from the National Semiconductor PC16550D data sheet; the Linux 8250
// driver's autoconfig (IER read-back, MCR loopback test, FIFO detection through IIR[7:6])
// and its THRE interrupt test (serial8250_do_startup) are what this must satisfy.
//
// Threads: read/write come from vCPU threads (port exits), push_input from the VM's loop
// (console input); the device's mutex serializes them. It calls the IRQ line and the output
// callback with its mutex held: both take only leaf locks (KVM, the console's).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>

#include "platform/devices/io_device.hpp"

namespace enlighten {

class Serial final : public IoDevice {
public:
    using Output = std::function<void(uint8_t)>;

    Serial(IrqLine irq, Output out) : irq_(std::move(irq)), out_(std::move(out)) {}

    void io_read(uint64_t offset, std::span<uint8_t> data) override;
    void io_write(uint64_t offset, std::span<const uint8_t> data) override;

    // Bytes typed on the host side. Returns how many were accepted (the rest would overrun
    // the receive buffer).
    size_t push_input(std::span<const uint8_t> bytes);

    static constexpr size_t kRxCapacity = 4096;

private:
    uint8_t read_reg(uint64_t reg);
    void write_reg(uint64_t reg, uint8_t value);
    void update_irq();
    void receive(uint8_t byte);
    [[nodiscard]] uint8_t modem_status() const;

    std::mutex mu_;
    IrqLine irq_;
    Output out_;
    std::deque<uint8_t> rx_;
    uint8_t ier_ = 0;
    uint8_t iir_ = 0x01;
    uint8_t lcr_ = 0;
    uint8_t mcr_ = 0x08;
    uint8_t lsr_ = 0x60;  // THRE | TEMT
    uint8_t scr_ = 0;
    uint8_t fcr_ = 0;
    uint8_t dll_ = 0x0c;  // 9600 baud
    uint8_t dlm_ = 0;
    uint8_t msr_delta_ = 0;
    bool thr_ipending_ = false;
    bool irq_level_ = false;
};

}  // namespace enlighten
