// The MC146818 CMOS real-time clock at ports 0x70/0x71: time of day (BCD, 24-hour) from the
// host clock plus an offset, and 128 bytes of CMOS RAM. No RTC interrupts.
//
// Threads: port accesses from any vCPU thread, serialized by the device's mutex.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>

#include "platform/devices/io_device.hpp"

namespace enlighten {

class CmosRtc final : public IoDevice {
public:
    using Clock = std::function<std::time_t()>;
    // `offset_seconds` is added to the host's UTC time.
    explicit CmosRtc(int64_t offset_seconds = 0, Clock clock = nullptr);

    void io_read(uint64_t offset, std::span<uint8_t> data) override;
    void io_write(uint64_t offset, std::span<const uint8_t> data) override;

    static constexpr uint8_t kCenturyRegister = 0x32;  // also published in the FADT

private:
    uint8_t read_register(uint8_t index);

    std::mutex mu_;
    int64_t offset_;
    Clock clock_;
    uint8_t index_ = 0;
    std::array<uint8_t, 128> ram_{};
};

}  // namespace enlighten
