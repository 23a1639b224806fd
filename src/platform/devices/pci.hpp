// PCI configuration space for one root bus (bus 0), reached through configuration mechanism
// #1: the address latch at port 0xCF8 and the data window at 0xCFC-0xCFF (PCI Local Bus 3.0
// §3.2.2.3.2). The DSDT's PNP0A03 root bridge (platform/acpi) makes Linux scan it.
//
// What lives on it: a host bridge at 00:00.0, and the devices that need a PCI identity
// although they are served elsewhere: the Hyper-V synthetic video's 1414:5353, which
// hyperv_fb looks up before it picks its framebuffer memory (contract-input-video §5). The
// functions are plain configuration spaces: 256 bytes, a write mask, and BARs whose sizing
// works (all-ones reads back the size mask). Nothing is mapped behind a BAR.
//
// Guest-facing rules (contract-input-video §5.2): the latch is 32 bits and reads back; only
// dword accesses to 0xCF8 reach it (0xCF9-0xCFB are other registers on a PC: byte writes
// there, like Linux's `outb(0x01, 0xCFB)` probe, are ignored, reads are all-ones); data
// accesses of 1, 2 or 4 bytes at (latch & 0xFC) + (port & 3); all-ones for an empty slot,
// another bus, another function, the latch's enable bit clear, or AMD's extended register
// bits (27:24) set. Type 2 probes (0xCF8/0xCFA byte writes) see all-ones and fail.
//
// Threads: port accesses come from any vCPU thread; the bus's mutex (a leaf) guards the latch
// and every function's registers. Functions are added before the vCPUs start.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>

#include "common/result.hpp"
#include "platform/devices/io_device.hpp"

namespace enlighten {

// What a conventional PCI function (header type 0) says about itself.
struct PciFunctionSpec {
    uint16_t vendor = 0xffff;
    uint16_t device = 0xffff;
    uint32_t class_code = 0;  // base class, sub-class, programming interface: 0x030000 = VGA
    uint8_t revision = 0;
    uint16_t subsystem_vendor = 0;
    uint16_t subsystem = 0;
    // BAR 0 as a 32-bit, non-prefetchable memory BAR of this size (a power of two, at least
    // 16 bytes; 0: no BAR), preset to `bar0_base` (a multiple of the size) as firmware would.
    uint32_t bar0_size = 0;
    uint32_t bar0_base = 0;
};

// The configuration space of one function.
class PciFunction {
public:
    static constexpr size_t kSize = 256;
    // Register offsets (PCI Local Bus 3.0 §6.1).
    static constexpr size_t kVendorId = 0x00, kCommand = 0x04, kStatus = 0x06, kRevision = 0x08,
                            kHeaderType = 0x0e, kBar0 = 0x10, kSubsystemVendor = 0x2c, kInterruptLine = 0x3c;
    // Command bits the guest may set: I/O space, memory space, bus master, SERR#, INTx disable.
    static constexpr uint16_t kCommandWritable = 0x0007 | 0x0100 | 0x0400;

    explicit PciFunction(const PciFunctionSpec& spec);

    [[nodiscard]] uint8_t read(size_t offset) const { return offset < kSize ? bytes_[offset] : 0xff; }
    void write(size_t offset, uint8_t value);

private:
    std::array<uint8_t, kSize> bytes_{};
    std::array<uint8_t, kSize> writable_{};  // the bits a guest write changes
};

class PciBus final : public IoDevice {
public:
    static constexpr uint8_t kSlots = 32;
    // Registered at port 0xCF8 with this length: 0xCF8-0xCFB the latch, 0xCFC-0xCFF the data.
    static constexpr uint64_t kPortCount = 8;

    // Puts a function at 00:slot.0. Errc::Invalid for a slot >= 32 or one already taken.
    Result<> add(uint8_t slot, const PciFunctionSpec& spec);

    void io_read(uint64_t offset, std::span<uint8_t> data) override;
    void io_write(uint64_t offset, std::span<const uint8_t> data) override;

private:
    // The function the latch selects, with the register it selects (dword aligned), or null.
    PciFunction* selected(size_t* reg);

    std::mutex mu_;
    uint32_t latch_ = 0;
    std::array<std::unique_ptr<PciFunction>, kSlots> slots_;
};

}  // namespace enlighten
