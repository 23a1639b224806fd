// The only code that issues KVM ioctls: the system (/dev/kvm), a VM, and its vCPUs.
//
// Threads: Kvm and the Vm's setup calls run on the main thread while a machine is built.
// Vm::irq_line, signal_msi, set_slot and set_pio_eventfd may be called from any thread at
// any time (KVM serializes them; they may block briefly in the kernel). A Vcpu's run and
// register calls belong to its vCPU thread once the vCPU runs (before, to the main thread).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/fd.hpp"
#include "common/result.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/memory_slots.hpp"

namespace enlighten {

class Vm;

// /dev/kvm.
class Kvm {
public:
    static Result<Kvm> open(const char* path = "/dev/kvm");

    [[nodiscard]] int check_extension(long cap) const;
    [[nodiscard]] int vcpu_mmap_size() const { return vcpu_mmap_size_; }
    // Every CPUID leaf KVM can expose on this host.
    Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;
    Result<std::unique_ptr<Vm>> create_vm() const;

private:
    UniqueFd fd_;
    int vcpu_mmap_size_ = 0;
};

class Vcpu;

class Vm final : public MemorySlots {
public:
    Vm(UniqueFd fd, int vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}

    [[nodiscard]] int fd() const { return fd_.get(); }

    Result<> set_tss_addr(uint64_t addr) const;
    Result<> set_identity_map_addr(uint64_t addr) const;
    Result<> create_irqchip() const;
    Result<> create_pit2() const;
    Result<> set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) const;
    // KVM_SET_USER_MEMORY_REGION (size 0 deletes the slot). Safe while vCPUs run.
    Result<> set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) override;
    // Sets the level of an in-kernel IOAPIC/PIC input (edge-triggered pins: pulse 1 then 0).
    Result<> irq_line(uint32_t gsi, bool level) const;
    Result<> signal_msi(uint64_t address, uint32_t data) const;
    Result<> enable_cap(uint32_t cap, std::span<const uint64_t> args = {}) const;
    // Sends every guest read and write of MSRs [first, first+count) to user space
    // (KVM_X86_SET_MSR_FILTER with a deny range; all other MSRs stay allowed).
    Result<> deny_msr_range(uint32_t first, uint32_t count) const;
    Result<std::unique_ptr<Vcpu>> create_vcpu(uint32_t id) const;
    // A 4-byte guest write of `datamatch` to I/O port `port` signals `fd` inside KVM, with
    // no exit to user space (KVM_IOEVENTFD); other values still exit. assign=false removes it.
    Result<> set_pio_eventfd(uint16_t port, uint32_t datamatch, int fd, bool assign) const;

private:
    UniqueFd fd_;
    int vcpu_mmap_size_;
};

class Vcpu {
public:
    Vcpu(uint32_t id, UniqueFd fd, kvm_run* run, size_t run_size)
        : id_(id), fd_(std::move(fd)), run_(run), run_size_(run_size) {}
    Vcpu(const Vcpu&) = delete;
    Vcpu& operator=(const Vcpu&) = delete;
    ~Vcpu();

    [[nodiscard]] uint32_t id() const { return id_; }
    [[nodiscard]] int fd() const { return fd_.get(); }
    [[nodiscard]] kvm_run* run_struct() const { return run_; }

    // KVM_RUN. Returns false (and no error) when interrupted by a signal (EINTR).
    Result<bool> run() const;

    Result<kvm_regs> get_regs() const;
    // Asks KVM to store the general registers in kvm_run at every exit (KVM_CAP_SYNC_REGS),
    // so that reading them costs no ioctl. Call before the first run, on the vCPU's thread
    // or before it starts.
    void enable_sync_regs() { run_->kvm_valid_regs = KVM_SYNC_X86_REGS; }
    // The registers of the last exit: from kvm_run when synced, else KVM_GET_REGS.
    Result<kvm_regs> exit_regs() const {
        if (run_->kvm_valid_regs & KVM_SYNC_X86_REGS) return run_->s.regs.regs;
        return get_regs();
    }
    Result<> set_regs(const kvm_regs& regs) const;
    Result<kvm_sregs> get_sregs() const;
    Result<> set_sregs(const kvm_sregs& sregs) const;
    Result<> set_fpu(const kvm_fpu& fpu) const;
    Result<> set_cpuid(std::span<const kvm_cpuid_entry2> entries) const;
    Result<> set_msrs(std::span<const kvm_msr_entry> entries) const;
    Result<kvm_lapic_state> get_lapic() const;
    Result<> set_lapic(const kvm_lapic_state& state) const;
    Result<kvm_mp_state> get_mp_state() const;
    // The guest TSC frequency in kHz.
    Result<uint32_t> tsc_khz() const;

private:
    uint32_t id_;
    UniqueFd fd_;
    kvm_run* run_;
    size_t run_size_;
};

}  // namespace enlighten
