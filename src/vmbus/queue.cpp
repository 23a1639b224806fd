#include "vmbus/queue.hpp"

#include <algorithm>

#include <sys/eventfd.h>
#include <unistd.h>

#include "common/log.hpp"
#include "common/rate_limit.hpp"

namespace enlighten::vmbus {

Reservation& Reservation::operator=(Reservation&& o) noexcept {
    if (this != &o) {
        if (queue_ && bytes_) queue_->release(bytes_);
        queue_ = std::exchange(o.queue_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
}

Reservation::~Reservation() {
    if (queue_ && bytes_) queue_->release(bytes_);
}

Result<std::shared_ptr<ChannelQueue>> ChannelQueue::create(QueueParams params, const GuestMemory& mem,
                                                           GpadlView ring_view, uint32_t downstream_offset,
                                                           std::shared_ptr<UniqueFd> notify, MessageSink& sink) {
    const auto pfns = ring_view.pfns();
    if (downstream_offset < 2 || pfns.size() < size_t{downstream_offset} + 2)
        return fail(Errc::Invalid, "ring GPADL of {} pages cannot be split at page {}", pfns.size(), downstream_offset);
    // A page twice would make the rings overlap: the host would read its own packets back
    // (or packets that change under it) as the guest's (reliability review A2).
    std::vector<uint64_t> sorted(pfns.begin(), pfns.end());
    std::sort(sorted.begin(), sorted.end());
    if (const auto dup = std::adjacent_find(sorted.begin(), sorted.end()); dup != sorted.end())
        return fail(Errc::Invalid, "ring GPADL names page {:#x} twice: the rings would overlap", *dup);
    ENL_TRY(RingMemory in_mem, RingMemory::map(mem, pfns.first(downstream_offset)));
    ENL_TRY(RingMemory out_mem, RingMemory::map(mem, pfns.subspan(downstream_offset)));
    return std::shared_ptr<ChannelQueue>(new ChannelQueue(std::move(params), InRing(std::move(in_mem)),
                                                          OutRing(std::move(out_mem)), std::move(ring_view),
                                                          std::move(notify), sink));
}

ChannelQueue::ChannelQueue(QueueParams params, InRing in, OutRing out, GpadlView ring_view,
                           std::shared_ptr<UniqueFd> notify, MessageSink& sink)
    : params_(std::move(params)), sink_(sink), notify_(std::move(notify)), target_vp_(params_.target_vp) {
    LockGuard in_lock(in_mu_);
    LockGuard out_lock(out_mu_);
    in_.emplace(std::move(in));
    out_.emplace(std::move(out));
    ring_view_ = std::move(ring_view);
    buf_.reserve(params_.max_packet_from_guest / 8);
}

ChannelQueue::~ChannelQueue() { shutdown(); }

void ChannelQueue::shutdown() {
    LockGuard in_lock(in_mu_);
    LockGuard out_lock(out_mu_);
    closed_.store(true, std::memory_order_release);
    in_.reset();
    out_.reset();
    peeked_.reset();
    // The last hold on the ring GPADL may answer a guest teardown (via the server's executor).
    ring_view_.reset();
}

void ChannelQueue::set_on_failed(std::function<void()> fn) {
    LockGuard lock(fail_mu_);
    on_failed_ = std::move(fn);
}

void ChannelQueue::fail_channel(const Error& e) {
    if (failed_.exchange(true)) return;
    ENL_LOG_LIMITED(warn, "vmbus: channel {} ({}): {}; closing it", params_.relid, params_.name, e.message());
    std::function<void()> fn;
    {
        LockGuard lock(fail_mu_);
        fn = on_failed_;
    }
    if (fn) fn();
}

void ChannelQueue::drain_notify() const {
    uint64_t v;
    [[maybe_unused]] auto r = ::read(notify_->get(), &v, sizeof(v));
}

void ChannelQueue::signal_guest() const {
    if (!sink_.signal(target_vp_.load(std::memory_order_relaxed), params_.sint, params_.relid))
        ENL_LOG_LIMITED(debug, "vmbus: channel {}: the guest's SynIC does not take events", params_.relid);
}

Result<std::optional<PacketView>> ChannelQueue::peek() {
    std::optional<Error> broken;
    {
        LockGuard lock(in_mu_);
        if (!in_) return fail(Errc::Closed, "channel {} is closed", params_.relid);
        if (peeked_) return std::optional<PacketView>(view_);
        if (!masked_) {
            // The guest need not signal while we drain (ring_buffer.c hv_begin_read).
            in_->set_interrupt_mask(true);
            masked_ = true;
        }
        auto got = in_->peek(buf_, params_.max_packet_from_guest);
        if (got && !*got) return std::optional<PacketView>{};
        if (got) {
            const InRing::Peeked& pk = **got;
            // A packet whose framing is sound but not its content: handed over marked, with
            // its descriptor's fields and `payload`; the device fails its request or drops it.
            auto malformed = [&](std::span<const uint8_t> payload, std::string reason) ENL_REQUIRES(in_mu_) {
                PacketDescriptor d;
                std::memcpy(&d, buf_.data(), sizeof(d));
                view_ = PacketView{};
                view_.type = d.type;
                view_.flags = d.flags;
                view_.trans_id = d.trans_id;
                view_.payload = payload;
                view_.malformed = true;
                malformed_reason_ = std::move(reason);
            };
            if (!pk.bad.empty()) {
                // Only its descriptor was copied: no payload.
                malformed({}, fmt::format("a packet of {} bytes: {}", pk.len, pk.bad));
            } else if (auto view = parse_packet(std::span<const uint64_t>(buf_.data(), pk.len / 8), scratch_)) {
                view_ = *view;
            } else {
                // Its ranges lie: handed over without them (offset <= length: checked by the ring).
                const auto bytes = std::span(reinterpret_cast<const uint8_t*>(buf_.data()), pk.len);
                PacketDescriptor d;
                std::memcpy(&d, buf_.data(), sizeof(d));
                malformed(bytes.subspan(d.offset8 * 8u), view.error().message());
            }
            peeked_ = pk.len;
            return std::optional<PacketView>(view_);
        }
        broken = got.error();
        in_.reset();
    }
    fail_channel(*broken);
    return fail(Errc::Invalid, "{}", broken->message());
}

ChannelQueue::RingStates ChannelQueue::ring_states() const {
    RingStates s;
    {
        LockGuard lock(in_mu_);
        if (in_) s.to_host = in_->header_state();
    }
    LockGuard lock(out_mu_);
    if (out_) s.to_guest = out_->header_state();
    return s;
}

void ChannelQueue::consume() {
    bool signal = false;
    {
        LockGuard lock(in_mu_);
        if (!in_ || !peeked_) return;
        in_->skip(*peeked_);
        peeked_.reset();
        signal = in_->commit();
    }
    if (signal) signal_guest();
}

bool ChannelQueue::arm() {
    LockGuard lock(in_mu_);
    if (!in_) return true;
    if (peeked_) return false;  // a packet is still waiting for consume()
    in_->set_interrupt_mask(false);
    masked_ = false;
    if (!in_->has_data()) return true;
    in_->set_interrupt_mask(true);
    masked_ = true;
    return false;
}

Result<> ChannelQueue::room_for(uint32_t need) {
    if (!out_) return fail(Errc::Closed, "channel {} is closed", params_.relid);
    auto free = out_->free_bytes();
    if (!free) return std::unexpected(free.error());
    // The ring must never become completely full: strictly less than what is free.
    if (uint64_t{need} + reserved_ < *free) return {};
    auto room = out_->wait_for_room(need + reserved_);
    if (!room) return std::unexpected(room.error());
    if (*room) return {};
    waiting_for_room_.store(true, std::memory_order_release);
    return fail(Errc::Busy, "channel {}: the guest's ring is full", params_.relid);
}

Result<bool> ChannelQueue::write_locked(const OutPacket& packet) {
    auto written = out_->write(packet, params_.signal_every_packet);
    if (!written) return std::unexpected(written.error());
    if (!written->written)  // room was checked: the guest moved its read index back
        return fail(Errc::Invalid, "the guest took back room in its ring");
    waiting_for_room_.store(false, std::memory_order_release);
    return written->signal;
}

Result<> ChannelQueue::send(const OutPacket& packet) {
    const size_t len = packet.packet_bytes();
    if (len > params_.max_packet_to_guest)
        return fail(Errc::Invalid, "packet of {} bytes is longer than the guest driver accepts ({})", len,
                    params_.max_packet_to_guest);
    Result<bool> signal = false;
    {
        LockGuard lock(out_mu_);
        auto room = room_for(static_cast<uint32_t>(packet.ring_bytes()));
        if (!room && !room.error().is(Errc::Invalid)) return room;
        if (room) signal = write_locked(packet);
        else signal = std::unexpected(room.error());
        if (!signal) out_.reset();
    }
    if (!signal) {
        fail_channel(signal.error());
        return fail(Errc::Closed, "channel {} failed: {}", params_.relid, signal.error().message());
    }
    after_write(*signal, false);
    return {};
}

void ChannelQueue::after_write(bool owed, bool defer) {
    if (!owed) return;
    if (defer) {
        signal_owed_.store(true, std::memory_order_relaxed);
        return;
    }
    signal_owed_.store(false, std::memory_order_relaxed);  // this interrupt shows the guest everything
    signal_guest();
}

Result<Reservation> ChannelQueue::reserve(size_t bytes) {
    if (bytes > params_.max_packet_to_guest + size_t{kPacketTrailerSize})
        return fail(Errc::Invalid, "a reservation of {} bytes is longer than the guest driver accepts", bytes);
    std::optional<Error> broken;
    {
        LockGuard lock(out_mu_);
        auto room = room_for(static_cast<uint32_t>(bytes));
        if (room) {
            reserved_ += static_cast<uint32_t>(bytes);
            return Reservation(this, static_cast<uint32_t>(bytes));
        }
        if (!room.error().is(Errc::Invalid)) return std::unexpected(room.error());
        broken = room.error();
        out_.reset();
    }
    fail_channel(*broken);
    return fail(Errc::Closed, "channel {} failed: {}", params_.relid, broken->message());
}

void ChannelQueue::release(uint32_t bytes) {
    LockGuard lock(out_mu_);
    reserved_ -= std::min(reserved_, bytes);
}

Result<> ChannelQueue::commit(Reservation reservation, const OutPacket& packet, bool defer_signal) {
    if (reservation.queue_ != this) return fail(Errc::Invalid, "a reservation of another channel");
    const size_t len = packet.packet_bytes();
    if (len > params_.max_packet_to_guest || packet.ring_bytes() > reservation.bytes())
        return fail(Errc::Invalid, "packet of {} bytes does not fit its reservation of {} (or the guest's limit {})",
                    packet.ring_bytes(), reservation.bytes(), params_.max_packet_to_guest);
    Result<bool> signal = false;
    {
        LockGuard lock(out_mu_);
        reserved_ -= std::min(reserved_, reservation.bytes_);
        reservation.bytes_ = 0;
        if (!out_) return fail(Errc::Closed, "channel {} is closed", params_.relid);
        signal = write_locked(packet);
        if (!signal) out_.reset();
    }
    if (!signal) {
        fail_channel(signal.error());
        return fail(Errc::Closed, "channel {} failed: {}", params_.relid, signal.error().message());
    }
    after_write(*signal, defer_signal);
    return {};
}

void ChannelQueue::flush_signal() {
    if (signal_owed_.exchange(false, std::memory_order_relaxed)) signal_guest();
}

}  // namespace enlighten::vmbus
