// A device on the port-I/O or MMIO bus, and the interrupt line a device raises.
//
// Threads: an IoDevice's read and write are called from any vCPU thread, concurrently; each
// device locks itself. An IrqLine may be raised from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

namespace enlighten {

class IoDevice {
public:
    virtual ~IoDevice() = default;
    // `offset` is relative to the base the device was registered at. A device fills every
    // byte of `data` on read (0xff for what it does not decode).
    virtual void io_read(uint64_t offset, std::span<uint8_t> data) = 0;
    virtual void io_write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

// The level of one interrupt input (an ISA IRQ / GSI). Edge-triggered pins see the rising edge.
using IrqLine = std::function<void(bool level)>;

}  // namespace enlighten
