// Small legacy ports: the i8042 reset line (port 0x64, command 0xFE) and the POST/delay
// port 0x80 that Linux writes for I/O delays.
//
// Threads: port accesses from any vCPU thread; these devices keep no state (the reset line
// calls its callback on the vCPU that wrote it).
#pragma once

#include <functional>

#include "platform/devices/io_device.hpp"

namespace enlighten {

// Only the reset pulse of the keyboard controller. Reads say "no data, input buffer empty"
// so that a guest's wait loops end at once.
class I8042Reset final : public IoDevice {
public:
    explicit I8042Reset(std::function<void()> reset) : reset_(std::move(reset)) {}
    void io_read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), uint8_t{0}); }
    void io_write(uint64_t offset, std::span<const uint8_t> data) override {
        if (offset == 0 && !data.empty() && data[0] == 0xfe && reset_) reset_();
    }

private:
    std::function<void()> reset_;
};

// Decodes a port and ignores it.
class SinkDevice final : public IoDevice {
public:
    void io_read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), uint8_t{0xff}); }
    void io_write(uint64_t, std::span<const uint8_t>) override {}
};

}  // namespace enlighten
