// The synthetic interrupt controller (TLFS chapter 11), per virtual processor: the SIMP
// message page and SIEFP event-flags page (both guest RAM the guest chose), 16 SINTs, and
// the host-side message queues with the msg_pending / EOM protocol that
// linux-hv-guest-contract §4.5 describes.
//
// Threads: MSR accesses come from the VP's own vCPU thread; post_message and signal_event
// from any thread (vCPUs, the VMBus server, the control loop, device workers). Each VP has
// its own mutex: the last lock in every order (nothing else is locked under it; the
// interrupt sink only issues a KVM ioctl).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "hv/tlfs.hpp"
#include "kvm/guest_memory.hpp"

namespace enlighten::hv {

// Raises a fixed, edge-triggered interrupt on a virtual processor's local APIC.
class InterruptSink {
public:
    virtual ~InterruptSink() = default;
    virtual void raise(uint32_t vp, uint8_t vector) = 0;
};

struct SynicStats {
    uint64_t messages_delivered = 0;
    uint64_t messages_dropped = 0;  // queue full
    uint64_t events_signalled = 0;
    uint64_t interrupts = 0;
};

class Synic {
public:
    static constexpr size_t kQueueLimit = 256;  // per VP and SINT
    // And for all of them together (reliability review B4: the per-queue bound alone let
    // memory grow with the vCPUs, 64 x 16 x 256 messages): 4096 x 256 bytes, 1 MiB.
    static constexpr size_t kTotalQueueLimit = 4096;

    Synic(const GuestMemory& mem, InterruptSink& irq, uint32_t num_vps);

    // SCONTROL, SVERSION, SIEFP, SIMP, EOM, SINT0-15. nullopt / false: not a SynIC MSR or
    // an invalid value (the caller raises #GP).
    [[nodiscard]] std::optional<uint64_t> read_msr(uint32_t vp, uint32_t msr) const;
    [[nodiscard]] bool write_msr(uint32_t vp, uint32_t msr, uint64_t value);
    [[nodiscard]] static bool is_synic_msr(uint32_t msr);

    // Queues a message for the SINT of a VP and delivers it as soon as the slot is free.
    // False if the VP does not exist, or its queue or all queues together are full.
    bool post_message(uint32_t vp, uint32_t sint, uint32_t message_type, std::span<const uint8_t> payload);

    // Sets event flag `flag` in the SINT's event-flags area; interrupts the VP when the flag
    // goes from clear to set. False if the SIEFP or SINT is not enabled.
    bool signal_event(uint32_t vp, uint32_t sint, uint32_t flag);

    // Messages waiting for a free slot.
    [[nodiscard]] size_t queued(uint32_t vp, uint32_t sint) const;
    [[nodiscard]] size_t queued_total() const { return queued_total_.load(std::memory_order_relaxed); }
    [[nodiscard]] SynicStats stats() const;
    [[nodiscard]] uint32_t num_vps() const { return static_cast<uint32_t>(vps_.size()); }

private:
    struct Vp {
        mutable std::mutex mu;
        uint64_t scontrol = 0;
        uint64_t siefp = 0;
        uint64_t simp = 0;
        std::array<uint64_t, kSintCount> sint{};
        std::array<std::deque<HvMessage>, kSintCount> queue;
    };
    void try_deliver(uint32_t vp_index, Vp& vp, uint32_t sint);
    void deliver_all(uint32_t vp_index, Vp& vp);
    [[nodiscard]] bool sint_usable(const Vp& vp, uint32_t sint) const;

    const GuestMemory& mem_;
    InterruptSink& irq_;
    std::vector<std::unique_ptr<Vp>> vps_;
    // Counted on the delivery path: relaxed atomics, no lock.
    std::atomic<uint64_t> messages_delivered_{0}, messages_dropped_{0}, events_signalled_{0}, interrupts_{0};
    std::atomic<size_t> queued_total_{0};  // messages in every queue
};

}  // namespace enlighten::hv
