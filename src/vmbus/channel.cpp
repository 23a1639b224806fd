#include "vmbus/channel.hpp"

#include "common/log.hpp"

#include "common/rate_limit.hpp"
#include "vmbus/server.hpp"

namespace enlighten::vmbus {

const char* to_string(ChannelState s) {
    switch (s) {
        case ChannelState::Offered: return "offered";
        case ChannelState::Open: return "open";
        case ChannelState::Closed: return "closed";
        case ChannelState::Failed: return "failed";
        case ChannelState::Rescinded: return "rescinded";
        case ChannelState::Released: return "released";
    }
    return "unknown";
}

Channel::Channel(uint32_t relid, uint32_t connection_id, std::shared_ptr<Device> device, MessageSink& sink,
                 const GuestMemory& memory)
    : relid_(relid), connection_id_(connection_id), device_(std::move(device)), sink_(sink), memory_(memory) {}

Channel::~Channel() { close(); }

Result<> Channel::open(std::span<const uint64_t> ring_pfns, uint32_t downstream_offset, uint32_t target_vp, uint32_t sint) {
    if (downstream_offset < 2 || ring_pfns.size() < downstream_offset + 2)
        return fail("ring GPADL of {} pages cannot be split at page {}", ring_pfns.size(), downstream_offset);
    ENL_TRY(RingMemory in_mem, RingMemory::map(memory_, ring_pfns.first(downstream_offset)));
    ENL_TRY(RingMemory out_mem, RingMemory::map(memory_, ring_pfns.subspan(downstream_offset)));
    std::scoped_lock lock(in_mu_, out_mu_);
    in_.emplace(std::move(in_mem));
    out_.emplace(std::move(out_mem));
    packet_buf_.reserve(device_->offer().max_packet_from_guest);
    waiting_for_room_ = false;
    target_vp_ = target_vp;
    sint_ = sint;
    failed_ = false;
    started_ = false;
    open_.store(true, std::memory_order_release);
    return {};
}

void Channel::start() {
    if (!is_open()) return;
    started_ = true;
    device_->on_open(*this);
    // Packets the guest queued before we were ready.
    on_guest_signal();
}

void Channel::close_rings() {
    std::scoped_lock lock(in_mu_, out_mu_);
    open_.store(false, std::memory_order_release);
    in_.reset();
    out_.reset();
}

void Channel::close() {
    const bool was_open = is_open();
    close_rings();
    // Outside the locks: the device may wait for its own threads, which may be in send().
    if (was_open && started_.exchange(false)) device_->on_close();
}

void Channel::signal_guest() {
    if (!sink_.signal(target_vp_.load(), sint_, relid_))
        ENL_LOG_LIMITED(debug, "vmbus: channel {}: the guest's SynIC does not take events", relid_);
}

void Channel::drain_inbound() {
    // Called with in_mu_ held.
    const uint32_t max_len = device_->offer().max_packet_from_guest;
    // Mask the guest's doorbell while we drain; unmask, then look once more (ring_buffer.c).
    in_->set_interrupt_mask(true);
    for (;;) {
        auto next = in_->next(packet_buf_, max_len);
        if (!next) {
            ENL_LOG_LIMITED(warn, "vmbus: channel {} ({}): {}; closing it", relid_, device_->offer().name,
                            next.error().message());
            failed_ = true;
            return;
        }
        if (!next->has_value()) {
            in_->set_interrupt_mask(false);
            if (in_->has_data()) {
                in_->set_interrupt_mask(true);
                continue;
            }
            if (in_->commit()) signal_guest();
            return;
        }
        const RawPacket& raw = **next;
        // Publish the read index before handling the packet: the guest can refill sooner.
        if (in_->commit()) signal_guest();
        IncomingPacket pkt{raw.desc.type, raw.desc.flags, raw.desc.trans_id, raw.extra(), raw.payload()};
        device_->on_packet(pkt);
        if (!is_open()) return;
    }
}

void Channel::on_guest_signal() {
    if (!started_.load()) return;
    {
        std::lock_guard lock(in_mu_);
        if (in_) drain_inbound();
    }
    if (failed_.load()) {
        close();
        return;
    }
    bool room = false;
    {
        std::lock_guard lock(out_mu_);
        room = out_ && waiting_for_room_;
        waiting_for_room_ = false;
    }
    if (room) device_->on_ring_space();
}

Result<ChannelEndpoint::SendStatus> Channel::send(uint16_t type, uint16_t flags, uint64_t trans_id,
                                                  std::span<const uint8_t> payload) {
    const uint32_t limit = device_->offer().max_packet_to_guest;
    if (sizeof(PacketDescriptor) + payload.size() > limit)
        return fail("packet of {} bytes is longer than the guest driver accepts ({})",
                    sizeof(PacketDescriptor) + payload.size(), limit);
    bool signal = false;
    {
        std::lock_guard lock(out_mu_);
        if (!out_ || !is_open()) return SendStatus::Closed;
        auto written = out_->write(type, flags, trans_id, {}, payload, device_->offer().signal_every_packet);
        if (!written) {
            ENL_LOG_LIMITED(warn, "vmbus: channel {} ({}): {}", relid_, device_->offer().name, written.error().message());
            failed_ = true;
            return SendStatus::Closed;
        }
        if (!written->written) {
            waiting_for_room_ = true;
            return SendStatus::RingFull;
        }
        signal = written->signal;
    }
    if (signal) signal_guest();
    return SendStatus::Sent;
}

}  // namespace enlighten::vmbus
