#include "platform/devices/pci.hpp"

#include <algorithm>
#include <bit>


namespace enlighten {

namespace {

constexpr uint32_t kLatchEnable = 1U << 31;
constexpr uint32_t kLatchExtendedRegister = 0xfU << 24;  // AMD's extended config access (ECS)

void put16(std::array<uint8_t, PciFunction::kSize>& b, size_t at, uint32_t v) {
    b[at] = static_cast<uint8_t>(v);
    b[at + 1] = static_cast<uint8_t>(v >> 8);
}
void put32(std::array<uint8_t, PciFunction::kSize>& b, size_t at, uint32_t v) {
    put16(b, at, v);
    put16(b, at + 2, v >> 16);
}

}  // namespace

PciFunction::PciFunction(const PciFunctionSpec& spec) {
    put16(bytes_, kVendorId, spec.vendor);
    put16(bytes_, kVendorId + 2, spec.device);
    bytes_[kRevision] = spec.revision;
    bytes_[kRevision + 1] = static_cast<uint8_t>(spec.class_code);
    bytes_[kRevision + 2] = static_cast<uint8_t>(spec.class_code >> 8);
    bytes_[kRevision + 3] = static_cast<uint8_t>(spec.class_code >> 16);
    bytes_[kHeaderType] = 0;  // a single-function device with a type 0 header
    put16(bytes_, kSubsystemVendor, spec.subsystem_vendor);
    put16(bytes_, kSubsystemVendor + 2, spec.subsystem);
    // Command starts at 0 (no decoding): firmware would enable it, Linux does not need it.
    put16(writable_, kCommand, kCommandWritable);
    if (spec.bar0_size != 0) {
        // A memory BAR: bits below log2(size) read as zero (bit 0: memory, bits 2:1: 32-bit,
        // bit 3: not prefetchable), the rest hold the base.
        const uint32_t mask = ~(spec.bar0_size - 1);
        put32(bytes_, kBar0, spec.bar0_base & mask);
        put32(writable_, kBar0, mask);
    }
    writable_[kInterruptLine] = 0xff;  // interrupt pin (0x3d) stays 0: no INTx
}

void PciFunction::write(size_t offset, uint8_t value) {
    if (offset >= kSize) return;
    bytes_[offset] = static_cast<uint8_t>((bytes_[offset] & ~writable_[offset]) | (value & writable_[offset]));
}

Result<> PciBus::add(uint8_t slot, const PciFunctionSpec& spec) {
    std::lock_guard lock(mu_);
    if (slot >= kSlots) return fail(Errc::Invalid, "PCI slot {} is not in 0-{}", slot, kSlots - 1);
    if (slots_[slot]) return fail(Errc::Invalid, "PCI slot {} is taken", slot);
    if (spec.bar0_size != 0 &&
        (!std::has_single_bit(spec.bar0_size) || spec.bar0_size < 16 || spec.bar0_base % spec.bar0_size != 0))
        return fail(Errc::Invalid, "PCI slot {}: BAR 0 of {:#x} bytes at {:#x} is not a naturally aligned power of two",
                    slot, spec.bar0_size, spec.bar0_base);
    slots_[slot] = std::make_unique<PciFunction>(spec);
    return {};
}

PciFunction* PciBus::selected(size_t* reg) {
    if (!(latch_ & kLatchEnable) || (latch_ & kLatchExtendedRegister)) return nullptr;
    const uint32_t bus = (latch_ >> 16) & 0xff;
    const uint32_t slot = (latch_ >> 11) & 0x1f;
    const uint32_t function = (latch_ >> 8) & 0x7;
    if (bus != 0 || function != 0) return nullptr;
    *reg = latch_ & 0xfc;
    return slots_[slot].get();
}

void PciBus::io_read(uint64_t offset, std::span<uint8_t> data) {
    std::fill(data.begin(), data.end(), uint8_t{0xff});
    std::lock_guard lock(mu_);
    if (offset == 0 && data.size() == 4) {
        for (size_t i = 0; i < 4; ++i) data[i] = static_cast<uint8_t>(latch_ >> (8 * i));
        return;
    }
    if (offset < 4 || offset >= kPortCount) return;
    size_t reg = 0;
    const PciFunction* f = selected(&reg);
    if (!f) return;
    // An access may run past 0xCFF (a dword read at 0xCFD): those bytes are not decoded.
    for (size_t i = 0; i < data.size() && offset + i < kPortCount; ++i) data[i] = f->read(reg + (offset - 4) + i);
}

void PciBus::io_write(uint64_t offset, std::span<const uint8_t> data) {
    std::lock_guard lock(mu_);
    if (offset == 0 && data.size() == 4) {
        latch_ = static_cast<uint32_t>(data[0]) | static_cast<uint32_t>(data[1]) << 8 |
                 static_cast<uint32_t>(data[2]) << 16 | static_cast<uint32_t>(data[3]) << 24;
        return;
    }
    if (offset < 4 || offset >= kPortCount) return;
    size_t reg = 0;
    PciFunction* f = selected(&reg);
    if (!f) return;
    for (size_t i = 0; i < data.size() && offset + i < kPortCount; ++i) f->write(reg + (offset - 4) + i, data[i]);
}

}  // namespace enlighten
