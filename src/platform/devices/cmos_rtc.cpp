#include "platform/devices/cmos_rtc.hpp"

namespace enlighten {

namespace {
constexpr uint8_t to_bcd(int v) { return static_cast<uint8_t>(((v / 10) << 4) | (v % 10)); }
constexpr uint8_t kRegA = 0x0a, kRegB = 0x0b, kRegC = 0x0c, kRegD = 0x0d;
}  // namespace

CmosRtc::CmosRtc(int64_t offset_seconds, Clock clock) : offset_(offset_seconds), clock_(std::move(clock)) {
    if (!clock_) clock_ = [] { return std::time(nullptr); };
    ram_[kRegA] = 0x26;  // 32.768 kHz time base, 1024 Hz rate; UIP clear
    ram_[kRegB] = 0x02;  // 24-hour mode, BCD
    ram_[kRegD] = 0x80;  // valid RAM and time
}

uint8_t CmosRtc::read_register(uint8_t index) {
    if (index <= 0x09 || index == kCenturyRegister) {
        const std::time_t now = clock_() + static_cast<std::time_t>(offset_);
        std::tm tm{};
        gmtime_r(&now, &tm);
        switch (index) {
            case 0x00: return to_bcd(tm.tm_sec);
            case 0x02: return to_bcd(tm.tm_min);
            case 0x04: return to_bcd(tm.tm_hour);
            case 0x06: return to_bcd(tm.tm_wday + 1);
            case 0x07: return to_bcd(tm.tm_mday);
            case 0x08: return to_bcd(tm.tm_mon + 1);
            case 0x09: return to_bcd(tm.tm_year % 100);
            case kCenturyRegister: return to_bcd((tm.tm_year + 1900) / 100);
            default: return 0;  // alarm registers
        }
    }
    if (index == kRegC) return 0;  // no pending RTC interrupts
    return ram_[index];
}

void CmosRtc::io_read(uint64_t offset, std::span<uint8_t> data) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); ++i)
        data[i] = (offset + i == 1) ? read_register(index_) : 0xff;
}

void CmosRtc::io_write(uint64_t offset, std::span<const uint8_t> data) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); ++i) {
        if (offset + i == 0) {
            index_ = data[i] & 0x7f;  // bit 7 is the NMI mask
        } else if (offset + i == 1) {
            // Writes to the clock registers are ignored: the time follows the host clock.
            if (index_ <= 0x09 || index_ == kCenturyRegister || index_ == kRegC || index_ == kRegD) continue;
            if (index_ == kRegA) {
                ram_[kRegA] = data[i] & 0x7f;  // UIP is read-only
            } else if (index_ == kRegB) {
                ram_[kRegB] = static_cast<uint8_t>((data[i] & 0x80) | 0x02);  // stay BCD, 24-hour
            } else {
                ram_[index_] = data[i];
            }
        }
    }
}

}  // namespace enlighten
