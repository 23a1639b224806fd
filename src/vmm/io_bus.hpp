// Address-range dispatch of guest I/O exits to devices.
//
// Threads: devices are added while the machine is built (main thread); afterwards lookups
// come from any vCPU thread and the table is read-only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/result.hpp"
#include "platform/devices/io_device.hpp"

namespace enlighten {

class IoBus {
public:
    // Registers [base, base+len). Overlapping ranges are refused.
    Result<> add(uint64_t base, uint64_t len, std::shared_ptr<IoDevice> device);

    // False when no device decodes the address (reads then see all ones).
    bool read(uint64_t addr, std::span<uint8_t> data) const;
    bool write(uint64_t addr, std::span<const uint8_t> data) const;

private:
    struct Range {
        uint64_t base;
        uint64_t len;
        std::shared_ptr<IoDevice> device;
    };
    const Range* find(uint64_t addr) const;
    std::vector<Range> ranges_;  // sorted by base
};

}  // namespace enlighten
