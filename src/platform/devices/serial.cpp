#include "platform/devices/serial.hpp"

namespace enlighten {

namespace {
// Register offsets.
constexpr uint64_t kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kIerRdi = 0x01, kIerThri = 0x02, kIerRlsi = 0x04, kIerMsi = 0x08;
constexpr uint8_t kIirNone = 0x01, kIirMsi = 0x00, kIirThri = 0x02, kIirRdi = 0x04, kIirRlsi = 0x06;
constexpr uint8_t kIirFifoEnabled = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLsrDr = 0x01, kLsrOe = 0x02, kLsrBi = 0x10, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kLsrErrors = kLsrOe | 0x04 | 0x08 | kLsrBi;
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
}  // namespace

void Serial::io_read(uint64_t offset, std::span<uint8_t> data) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); ++i) data[i] = read_reg(offset + i);
}

void Serial::io_write(uint64_t offset, std::span<const uint8_t> data) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < data.size(); ++i) write_reg(offset + i, data[i]);
}

size_t Serial::push_input(std::span<const uint8_t> bytes) {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (; n < bytes.size() && rx_.size() < kRxCapacity; ++n) rx_.push_back(bytes[n]);
    if (n < bytes.size()) lsr_ |= kLsrOe;
    if (!rx_.empty()) lsr_ |= kLsrDr;
    update_irq();
    return n;
}

uint8_t Serial::modem_status() const {
    if (mcr_ & kMcrLoop) {
        // Loopback: the modem control outputs are wired to the status inputs.
        uint8_t msr = 0;
        if (mcr_ & kMcrRts) msr |= kMsrCts;
        if (mcr_ & kMcrDtr) msr |= kMsrDsr;
        if (mcr_ & kMcrOut1) msr |= kMsrRi;
        if (mcr_ & kMcrOut2) msr |= kMsrDcd;
        return msr;
    }
    return kMsrDcd | kMsrDsr | kMsrCts;
}

uint8_t Serial::read_reg(uint64_t reg) {
    switch (reg) {
        case kRbrThr: {
            if (lcr_ & kLcrDlab) return dll_;
            uint8_t byte = 0;
            if (!rx_.empty()) {
                byte = rx_.front();
                rx_.pop_front();
            }
            if (rx_.empty()) lsr_ &= static_cast<uint8_t>(~kLsrDr);
            update_irq();
            return byte;
        }
        case kIer:
            return (lcr_ & kLcrDlab) ? dlm_ : ier_;
        case kIirFcr: {
            const uint8_t value = static_cast<uint8_t>(iir_ | ((fcr_ & kFcrEnable) ? kIirFifoEnabled : 0));
            // Reading IIR while it reports THRE clears that interrupt.
            if ((iir_ & 0x0f) == kIirThri) {
                thr_ipending_ = false;
                update_irq();
            }
            return value;
        }
        case kLcr:
            return lcr_;
        case kMcr:
            return mcr_;
        case kLsr: {
            const uint8_t value = lsr_;
            lsr_ &= static_cast<uint8_t>(~(kLsrOe | kLsrBi));  // error bits clear on read
            update_irq();
            return value;
        }
        case kMsr: {
            const uint8_t value = static_cast<uint8_t>(modem_status() | msr_delta_);
            msr_delta_ = 0;
            update_irq();
            return value;
        }
        case kScr:
            return scr_;
        default:
            return 0xff;
    }
}

void Serial::receive(uint8_t byte) {
    if (rx_.size() >= kRxCapacity) {
        lsr_ |= kLsrOe;
        return;
    }
    rx_.push_back(byte);
    lsr_ |= kLsrDr;
}

void Serial::write_reg(uint64_t reg, uint8_t value) {
    switch (reg) {
        case kRbrThr:
            if (lcr_ & kLcrDlab) {
                dll_ = value;
                return;
            }
            // Transmission is instantaneous: THR is empty again at once.
            if (mcr_ & kMcrLoop)
                receive(value);
            else if (out_)
                out_(value);
            thr_ipending_ = true;
            lsr_ |= kLsrThre | kLsrTemt;
            update_irq();
            return;
        case kIer: {
            if (lcr_ & kLcrDlab) {
                dlm_ = value;
                return;
            }
            const uint8_t old = ier_;
            ier_ = value & 0x0f;
            // Enabling the THRE interrupt while THR is empty raises it (the 8250 driver tests this).
            if ((ier_ & kIerThri) && !(old & kIerThri) && (lsr_ & kLsrThre)) thr_ipending_ = true;
            update_irq();
            return;
        }
        case kIirFcr:
            fcr_ = value & 0xc9;  // keep enable, DMA mode and trigger level
            if (value & kFcrClearRx) {
                rx_.clear();
                lsr_ &= static_cast<uint8_t>(~kLsrDr);
            }
            update_irq();
            return;
        case kLcr:
            lcr_ = value;
            return;
        case kMcr: {
            const uint8_t before = modem_status();
            mcr_ = value & 0x1f;
            const uint8_t after = modem_status();
            // Delta bits for CTS, DSR, DCD and trailing-edge RI.
            const uint8_t changed = static_cast<uint8_t>(before ^ after);
            if (changed & kMsrCts) msr_delta_ |= 0x01;
            if (changed & kMsrDsr) msr_delta_ |= 0x02;
            if ((before & kMsrRi) && !(after & kMsrRi)) msr_delta_ |= 0x04;
            if (changed & kMsrDcd) msr_delta_ |= 0x08;
            update_irq();
            return;
        }
        case kScr:
            scr_ = value;
            return;
        default:
            return;  // LSR and MSR are read-only
    }
}

void Serial::update_irq() {
    uint8_t iir = kIirNone;
    if ((ier_ & kIerRlsi) && (lsr_ & kLsrErrors))
        iir = kIirRlsi;
    else if ((ier_ & kIerRdi) && (lsr_ & kLsrDr))
        iir = kIirRdi;
    else if ((ier_ & kIerThri) && thr_ipending_)
        iir = kIirThri;
    else if ((ier_ & kIerMsi) && msr_delta_)
        iir = kIirMsi;
    iir_ = iir;
    const bool level = iir != kIirNone;
    if (level != irq_level_) {
        irq_level_ = level;
        if (irq_) irq_(level);
    }
}

}  // namespace enlighten
