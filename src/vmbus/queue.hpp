// ChannelQueue: what a device holds while the guest has one of its channels open. The two
// rings, seen as a queue of packets from the guest and a queue of packets to it.
//
// A guest doorbell only makes notify_fd() readable (an eventfd, written by the hypercall
// path or by KVM itself through an ioeventfd). The device, on a worker of its choosing,
// takes packets when it has room for the work, and sends what it can:
//
//   on notify_fd readable:
//     q.drain_notify();
//     while (auto p = q.peek(); p && *p) {        // copied out of the ring and parsed once
//         if (!have_room_for_the_answer()) break;  // back-pressure: the guest's ring fills
//         handle(**p);
//         q.consume();                             // frees the ring space, may signal the guest
//     }
//     if (!q.arm()) goto again;                    // unmask the guest's doorbell, look again
//
//   q.send(OutPacket::completion(id, iov))         // Busy: no room; notify_fd fires when there is
//   auto r = q.reserve(bytes); ... q.commit(std::move(*r), packet)   // room first, then the packet
//
// Nothing queues without bound: when the device stops taking packets the guest's ring fills
// and the guest waits; when the guest stops reading, send() says Busy and asks the guest
// (pending_send_sz) to signal once it has made room.
//
// Threads: peek/consume/arm are the receive side: one thread at a time (the device's
// worker). send/reserve/commit may be called from any thread. Every call may be made after
// the channel closed (they fail with Errc::Closed). Nothing blocks: the queue's two locks
// (receive, then send) come after the server's lock and device locks, and only the SynIC's
// per-VP lock is taken under them.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "common/result.hpp"
#include "common/thread_annotations.hpp"
#include "vmbus/gpadl.hpp"
#include "vmbus/message_sink.hpp"
#include "vmbus/packet.hpp"
#include "vmbus/ring.hpp"

namespace enlighten::vmbus {

class ChannelQueue;

// Room in the ring to the guest, set aside by reserve() until commit() or destruction.
// Must not outlive its queue.
class Reservation {
public:
    Reservation() = default;
    Reservation(Reservation&& o) noexcept : queue_(std::exchange(o.queue_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
    Reservation& operator=(Reservation&& o) noexcept;
    ~Reservation();
    [[nodiscard]] uint32_t bytes() const { return bytes_; }

private:
    friend class ChannelQueue;
    Reservation(ChannelQueue* q, uint32_t bytes) : queue_(q), bytes_(bytes) {}
    ChannelQueue* queue_ = nullptr;
    uint32_t bytes_ = 0;
};

struct QueueParams {
    std::string name;  // for logs: the device's name
    uint32_t relid = 0;
    uint16_t index = 0;
    uint32_t sint = 2;
    uint32_t target_vp = 0;
    uint32_t max_packet_from_guest = 4096;
    uint32_t max_packet_to_guest = 4096;
    bool signal_every_packet = false;
};

class ChannelQueue {
public:
    // `ring_pfns`: the ring GPADL's pages; the first `downstream_offset` pages are the
    // guest-to-host ring. `ring_view` keeps the GPADL held while the queue lives.
    // `notify` is the channel's doorbell eventfd (shared with the server).
    static Result<std::shared_ptr<ChannelQueue>> create(QueueParams params, const GuestMemory& mem, GpadlView ring_view,
                                                        uint32_t downstream_offset, std::shared_ptr<UniqueFd> notify,
                                                        MessageSink& sink);
    ~ChannelQueue();
    ChannelQueue(const ChannelQueue&) = delete;
    ChannelQueue& operator=(const ChannelQueue&) = delete;

    // --- receive side (one thread at a time) ---
    // The next packet from the guest, or nullopt if there is none. The same packet until
    // consume(). A packet whose framing is sound but whose GPA or transfer-page ranges are
    // not comes back with `malformed` set and no ranges (the device answers it with an error
    // status). Errc::Closed once closed; Errc::Invalid when the ring is corrupt (the channel
    // is then failed and the server closes it).
    Result<std::optional<PacketView>> peek();
    // The problem with the packet peek() marked malformed.
    [[nodiscard]] const std::string& malformed_reason() const { return malformed_reason_; }
    // Consumes the packet peek() returned, publishes the read index, and signals the guest
    // if it was waiting for room.
    void consume();
    // Re-enables the guest's doorbell and looks once more: true if the ring is empty (the
    // next guest write will signal), false if packets arrived meanwhile (keep draining).
    bool arm();

    // --- send side (any thread) ---
    // Errc::Busy: the ring is full; the guest was asked to signal (notify_fd) when it has
    // room. Errc::Closed: the channel is closed. Errc::Invalid: the packet is longer than the
    // guest driver accepts (a programming error: the packet was not sent).
    Result<> send(const OutPacket& packet);
    // Sets aside `bytes` (an OutPacket's ring_bytes()) so that a later commit cannot find
    // the ring full. Errors as send().
    Result<Reservation> reserve(size_t bytes);
    // Writes the packet into reserved room (ring_bytes() <= reservation.bytes()).
    // `defer_signal`: an interrupt the write owes the guest is not raised now but remembered
    // until flush_signal() (or any later write that signals): a device batches completions
    // the guest does not wait for (netvsp's TX), one interrupt per batch.
    Result<> commit(Reservation reservation, const OutPacket& packet, bool defer_signal = false);
    // Raises the interrupt that deferred commits owe, if any.
    void flush_signal();

    // --- doorbell ---
    [[nodiscard]] int notify_fd() const { return notify_->get(); }
    // Resets notify_fd (call before draining, so that no doorbell is lost).
    void drain_notify() const;

    [[nodiscard]] uint32_t relid() const { return params_.relid; }
    [[nodiscard]] uint16_t index() const { return params_.index; }
    [[nodiscard]] const std::string& name() const { return params_.name; }
    [[nodiscard]] uint32_t target_vp() const { return target_vp_.load(std::memory_order_relaxed); }
    [[nodiscard]] uint32_t max_packet_to_guest() const { return params_.max_packet_to_guest; }
    [[nodiscard]] bool closed() const { return closed_.load(std::memory_order_acquire); }
    [[nodiscard]] bool failed() const { return failed_.load(std::memory_order_acquire); }
    // True after a send or reserve found no room, until one succeeds.
    [[nodiscard]] bool waiting_for_room() const { return waiting_for_room_.load(std::memory_order_acquire); }
    // Both rings' headers now (nullopt once the queue stopped using that ring), for vm.info.
    struct RingStates {
        std::optional<RingHeaderState> to_host, to_guest;
    };
    [[nodiscard]] RingStates ring_states() const ENL_EXCLUDES(in_mu_, out_mu_);

    // --- for the server ---
    void set_target_vp(uint32_t vp) { target_vp_.store(vp, std::memory_order_relaxed); }
    // Called (once, outside the queue's locks) when the queue finds the ring corrupt.
    void set_on_failed(std::function<void()> fn);
    // Stops using the rings and releases the ring GPADL. Idempotent.
    void shutdown();

private:
    ChannelQueue(QueueParams params, InRing in, OutRing out, GpadlView ring_view, std::shared_ptr<UniqueFd> notify,
                 MessageSink& sink);
    friend class Reservation;
    void release(uint32_t bytes);
    void signal_guest() const;
    // A write owed the guest an interrupt (`owed`): raise it, or with `defer` leave it to
    // flush_signal().
    void after_write(bool owed, bool defer);
    // Marks the queue failed and tells the server (call without the queue's locks).
    void fail_channel(const Error& e);
    // Room for `need` more bytes beyond what is reserved; Busy/Closed/Invalid otherwise.
    Result<> room_for(uint32_t need) ENL_REQUIRES(out_mu_);
    Result<bool> write_locked(const OutPacket& packet) ENL_REQUIRES(out_mu_);

    const QueueParams params_;
    MessageSink& sink_;
    std::shared_ptr<UniqueFd> notify_;
    std::atomic<uint32_t> target_vp_;
    std::atomic<bool> closed_{false};
    std::atomic<bool> failed_{false};
    std::atomic<bool> waiting_for_room_{false};
    std::atomic<bool> signal_owed_{false};  // a deferred commit owes the guest an interrupt

    // Lock order: in_mu_ before out_mu_.
    mutable Mutex in_mu_ ENL_ACQUIRED_BEFORE(out_mu_);
    std::optional<InRing> in_ ENL_GUARDED_BY(in_mu_);
    std::vector<uint64_t> buf_ ENL_GUARDED_BY(in_mu_);
    PacketScratch scratch_ ENL_GUARDED_BY(in_mu_);
    std::optional<uint32_t> peeked_ ENL_GUARDED_BY(in_mu_);  // length of the packet peek() holds
    PacketView view_ ENL_GUARDED_BY(in_mu_);
    bool masked_ ENL_GUARDED_BY(in_mu_) = false;
    std::string malformed_reason_;  // receive side only

    mutable Mutex out_mu_;
    std::optional<OutRing> out_ ENL_GUARDED_BY(out_mu_);
    uint32_t reserved_ ENL_GUARDED_BY(out_mu_) = 0;
    GpadlView ring_view_ ENL_GUARDED_BY(out_mu_);

    Mutex fail_mu_;
    std::function<void()> on_failed_ ENL_GUARDED_BY(fail_mu_);
};

}  // namespace enlighten::vmbus
