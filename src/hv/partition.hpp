// The Hyper-V hypervisor interface of one partition, emulated in user space: the CPUID
// leaves, the synthetic MSRs, the hypercall page and hypercall dispatch, and the SynIC.
// KVM's own Hyper-V emulation is never used, so this works on hosts without it.
//
// Threads: cpuid_leaves and set_handlers before any vCPU runs (main thread); read_msr,
// write_msr and hypercall from vCPU threads, concurrently. The partition-wide MSRs have one
// mutex (a leaf); the message and event handlers are called without it, and on_crash too.
#pragma once

#include <linux/kvm.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hv/synic.hpp"
#include "hv/tlfs.hpp"
#include "kvm/guest_memory.hpp"

namespace enlighten::hv {

struct PartitionConfig {
    uint32_t num_vps = 1;
    uint64_t tsc_hz = 0;         // 0: do not offer the frequency MSRs
    uint64_t apic_hz = 1000000000;  // KVM's in-kernel LAPIC timer runs at 1 GHz
    uint16_t hypercall_port = 0;    // the I/O port the hypercall page's stub reads
    // 0, or the port a fast HvSignalEvent (flag 0) writes its connection id to instead of
    // exiting through hypercall_port: the VMM puts a KVM ioeventfd per channel there, so a
    // doorbell wakes the channel's worker with no exit to user space.
    uint16_t doorbell_port = 0;
};

// What the guest told us when it panicked (TLFS "guest crash" MSRs).
struct CrashReport {
    std::array<uint64_t, 5> params{};
    std::string message;  // from the guest's kmsg page, if it sent one
};

// Where HvPostMessage and HvSignalEvent go (the VMBus server). They return
// InvalidConnectionId for connection ids they do not serve.
using MessageHandler =
    std::function<Status(uint32_t vp, uint32_t connection_id, uint32_t message_type, std::span<const uint8_t> payload)>;
using EventHandler = std::function<Status(uint32_t vp, uint32_t connection_id, uint16_t flag)>;

struct HypercallStats {
    uint64_t post_message = 0;
    uint64_t signal_event = 0;
    uint64_t failed = 0;
};

class Partition {
public:
    Partition(const GuestMemory& mem, InterruptSink& irq, PartitionConfig cfg);

    // CPUID 0x40000000-0x4000000A and 0x40000081/82: exactly what is emulated here.
    [[nodiscard]] std::vector<kvm_cpuid_entry2> cpuid_leaves() const;

    // Synthetic MSR access from a vCPU. nullopt / false: raise #GP, as Hyper-V does for
    // unknown or read-only synthetic MSRs and invalid values.
    [[nodiscard]] std::optional<uint64_t> read_msr(uint32_t vp, uint32_t msr);
    [[nodiscard]] bool write_msr(uint32_t vp, uint32_t msr, uint64_t value);

    // A hypercall from the stub: RCX = control, RDX = input GPA or fast parameter,
    // R8 = output GPA. Returns the result value for RAX.
    uint64_t hypercall(uint32_t vp, uint64_t control, uint64_t input, uint64_t output);

    // Set once, before any vCPU runs.
    void set_handlers(MessageHandler messages, EventHandler events);

    std::function<void(const CrashReport&)> on_crash;

    Synic& synic() { return synic_; }
    [[nodiscard]] HypercallStats hypercall_stats() const;
    // 100 ns units since the partition was created (TIME_REF_COUNT).
    [[nodiscard]] uint64_t reference_time() const;

    // The hypercall page contents: `in eax, imm8` on our port, then `ret`; with a doorbell
    // port, a fast HvSignalEvent first writes its connection id there and returns success.
    [[nodiscard]] static std::vector<uint8_t> hypercall_stub(uint16_t port, uint16_t doorbell_port = 0);

private:
    Status post_message(uint32_t vp, uint64_t control, uint64_t input_gpa);
    Status signal_event(uint32_t vp, uint64_t control, uint64_t input);
    bool write_hypercall_page(uint64_t value);
    void report_crash();

    const GuestMemory& mem_;
    PartitionConfig cfg_;
    Synic synic_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();

    MessageHandler message_handler_;
    EventHandler event_handler_;

    std::mutex mu_;  // partition-wide MSRs
    uint64_t guest_os_id_ = 0;
    uint64_t hypercall_ = 0;
    uint64_t reference_tsc_ = 0;
    uint64_t tsc_invariant_control_ = 0;
    std::array<uint64_t, 5> crash_params_{};
    std::vector<uint64_t> vp_assist_;

    std::atomic<uint64_t> post_message_count_{0}, signal_event_count_{0}, failed_count_{0};
};

}  // namespace enlighten::hv
