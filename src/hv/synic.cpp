#include "hv/synic.hpp"

#include <atomic>
#include <cstring>

#include "common/log.hpp"

#include "common/rate_limit.hpp"

namespace enlighten::hv {

namespace {
constexpr uint64_t kSversion = 1;
// Bits the guest may set: enable (bit 0) and the page number; bits 11:1 are preserved
// as written (Linux reads, modifies and writes back).
constexpr uint64_t kSintWritable = 0xff | kSintMasked | kSintAutoEoi | kSintPolling;
}  // namespace

Synic::Synic(const GuestMemory& mem, InterruptSink& irq, uint32_t num_vps) : mem_(mem), irq_(irq) {
    vps_.reserve(num_vps);
    for (uint32_t i = 0; i < num_vps; ++i) {
        auto vp = std::make_unique<Vp>();
        vp->sint.fill(kSintReset);
        vps_.push_back(std::move(vp));
    }
}

bool Synic::is_synic_msr(uint32_t msr) {
    return (msr >= kMsrScontrol && msr <= kMsrEom) || (msr >= kMsrSint0 && msr <= kMsrSint15);
}

std::optional<uint64_t> Synic::read_msr(uint32_t vp_index, uint32_t msr) const {
    if (vp_index >= vps_.size() || !is_synic_msr(msr)) return std::nullopt;
    const Vp& vp = *vps_[vp_index];
    std::lock_guard lock(vp.mu);
    switch (msr) {
        case kMsrScontrol: return vp.scontrol;
        case kMsrSversion: return kSversion;
        case kMsrSiefp: return vp.siefp;
        case kMsrSimp: return vp.simp;
        case kMsrEom: return 0;
        default: return vp.sint[msr - kMsrSint0];
    }
}

bool Synic::write_msr(uint32_t vp_index, uint32_t msr, uint64_t value) {
    if (vp_index >= vps_.size() || !is_synic_msr(msr)) return false;
    Vp& vp = *vps_[vp_index];
    std::lock_guard lock(vp.mu);
    switch (msr) {
        case kMsrScontrol:
            vp.scontrol = value & kScontrolEnable;
            break;
        case kMsrSversion:
            return false;  // read-only
        case kMsrSiefp:
        case kMsrSimp:
            // Any GPA is accepted; accesses check it lies in RAM when they happen.
            (msr == kMsrSimp ? vp.simp : vp.siefp) = value;
            break;
        case kMsrEom:
            break;  // delivery below
        default: {
            const uint32_t sint = msr - kMsrSint0;
            const uint64_t vector = value & 0xff;
            // Vectors 0-15 are reserved; an unmasked SINT needs a real vector.
            if (!(value & kSintMasked) && vector < 16) return false;
            vp.sint[sint] = value & kSintWritable;
            break;
        }
    }
    // Enabling, unmasking or EOM may let queued messages through.
    deliver_all(vp_index, vp);
    return true;
}

bool Synic::sint_usable(const Vp& vp, uint32_t sint) const {
    return (vp.scontrol & kScontrolEnable) && !(vp.sint[sint] & kSintMasked);
}

void Synic::deliver_all(uint32_t vp_index, Vp& vp) {
    for (uint32_t s = 0; s < kSintCount; ++s)
        if (!vp.queue[s].empty()) try_deliver(vp_index, vp, s);
}

// Called with vp.mu held. The guest frees a slot by cmpxchg'ing message_type to 0 and
// writes EOM only if msg_pending was set in the slot it freed.
void Synic::try_deliver(uint32_t vp_index, Vp& vp, uint32_t sint) {
    auto& queue = vp.queue[sint];
    while (!queue.empty()) {
        if (!sint_usable(vp, sint) || !(vp.simp & kSimpEnable)) return;
        const uint64_t gpa = (vp.simp & kPageMask) + sint * sizeof(HvMessage);
        uint8_t* slot = mem_.host_ptr(gpa, sizeof(HvMessage));
        if (!slot) {
            ENL_LOG_LIMITED(warn, "VP {}: SIMP page {:#x} is not guest RAM; messages stay queued", vp_index, gpa);
            return;
        }
        // Slot fields are shared with the guest: access them atomically. The page is 4 KiB
        // aligned in our mapping, so message_type is 4-byte aligned.
        std::atomic_ref<uint32_t> type(*reinterpret_cast<uint32_t*>(slot + offsetof(HvMessageHeader, message_type)));
        std::atomic_ref<uint8_t> flags(*(slot + offsetof(HvMessageHeader, message_flags)));
        if (type.load(std::memory_order_acquire) != kMessageTypeNone) {
            // Busy: ask for an EOM, then look again in case the guest freed the slot before
            // it could see our flag (it would then never write EOM).
            flags.fetch_or(kMessageFlagPending, std::memory_order_acq_rel);
            if (type.load(std::memory_order_acquire) != kMessageTypeNone) return;
        }
        const HvMessage& msg = queue.front();
        // Payload and header first; message_type last, with release semantics.
        std::memcpy(slot + sizeof(HvMessageHeader), msg.payload, msg.header.payload_size);
        slot[offsetof(HvMessageHeader, payload_size)] = msg.header.payload_size;
        const bool more = queue.size() > 1;
        flags.store(more ? kMessageFlagPending : 0, std::memory_order_relaxed);
        std::memset(slot + offsetof(HvMessageHeader, sender), 0, sizeof(uint64_t));
        type.store(msg.header.message_type, std::memory_order_release);
        queue.pop_front();
        queued_total_.fetch_sub(1, std::memory_order_relaxed);
        irq_.raise(vp_index, static_cast<uint8_t>(vp.sint[sint] & 0xff));
        messages_delivered_.fetch_add(1, std::memory_order_relaxed);
        interrupts_.fetch_add(1, std::memory_order_relaxed);
        // One message per interrupt and per slot: the rest waits for the EOM.
        return;
    }
}

bool Synic::post_message(uint32_t vp_index, uint32_t sint, uint32_t message_type, std::span<const uint8_t> payload) {
    if (vp_index >= vps_.size() || sint >= kSintCount || payload.size() > kMessagePayloadMax ||
        message_type == kMessageTypeNone)
        return false;
    Vp& vp = *vps_[vp_index];
    std::lock_guard lock(vp.mu);
    auto& queue = vp.queue[sint];
    // The total is reserved before the push (VPs have their own locks): never above the cap.
    if (queue.size() >= kQueueLimit || queued_total_.fetch_add(1, std::memory_order_relaxed) >= kTotalQueueLimit) {
        if (queue.size() < kQueueLimit) queued_total_.fetch_sub(1, std::memory_order_relaxed);
        messages_dropped_.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    HvMessage msg{};
    msg.header.message_type = message_type;
    msg.header.payload_size = static_cast<uint8_t>(payload.size());
    std::memcpy(msg.payload, payload.data(), payload.size());
    queue.push_back(msg);
    try_deliver(vp_index, vp, sint);
    return true;
}

bool Synic::signal_event(uint32_t vp_index, uint32_t sint, uint32_t flag) {
    if (vp_index >= vps_.size() || sint >= kSintCount || flag >= kEventFlagsPerSint) return false;
    Vp& vp = *vps_[vp_index];
    std::lock_guard lock(vp.mu);
    if (!sint_usable(vp, sint) || !(vp.siefp & kSimpEnable)) return false;
    const uint64_t gpa = (vp.siefp & kPageMask) + sint * kSintAreaSize + (flag / 64) * 8;
    uint8_t* word = mem_.host_ptr(gpa, 8);
    if (!word) {
        ENL_LOG_LIMITED(warn, "VP {}: SIEFP page {:#x} is not guest RAM", vp_index, gpa);
        return false;
    }
    std::atomic_ref<uint64_t> bits(*reinterpret_cast<uint64_t*>(word));
    const uint64_t mask = 1ULL << (flag % 64);
    const bool was_set = bits.fetch_or(mask, std::memory_order_acq_rel) & mask;
    events_signalled_.fetch_add(1, std::memory_order_relaxed);
    if (!was_set) interrupts_.fetch_add(1, std::memory_order_relaxed);
    // Already set: the guest has not consumed it yet and will see it when it does.
    if (!was_set) irq_.raise(vp_index, static_cast<uint8_t>(vp.sint[sint] & 0xff));
    return true;
}

size_t Synic::queued(uint32_t vp_index, uint32_t sint) const {
    if (vp_index >= vps_.size() || sint >= kSintCount) return 0;
    std::lock_guard lock(vps_[vp_index]->mu);
    return vps_[vp_index]->queue[sint].size();
}

SynicStats Synic::stats() const {
    return {messages_delivered_.load(std::memory_order_relaxed), messages_dropped_.load(std::memory_order_relaxed),
            events_signalled_.load(std::memory_order_relaxed), interrupts_.load(std::memory_order_relaxed)};
}

}  // namespace enlighten::hv
