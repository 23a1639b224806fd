// SimpleDevice: the Device interface for small single-channel devices (the integration
// services, later keyboard, mouse and video) that need no thread of their own. Their packets
// are handled on the control loop, one at a time, as they come; what they send is small.
// OpenVMM adapts its simple devices the same way (vmbus_channel/src/simple.rs).
//
//   class Heartbeat : public SimpleDevice {
//       void on_opened() override { ... send(...) ... }         // the channel is set up: speak
//       void on_packet(const vmbus::PacketView& p) override { ... }
//       void on_ring_space() override { ... retry a Busy send ... }
//       void on_closed() override { ... }
//   };
//
// Small devices that speak unprompted (the keyboard's key events, the mouse's reports) use
// post_inband(): in-band packets sent in order, kept (bounded) while the guest's ring is full
// and sent when the guest makes room, before on_ring_space() runs.
//
// Threads: the on_* hooks run on the control loop (never two at once). send() and
// post_inband() may be called from any thread. The device's own mutex is taken only briefly
// and never while calling a hook, the queue or the loop; the outbox's mutex is held while
// its packets go to the queue (lock order: device locks -> outbox -> queue -> SynIC).
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "common/thread_annotations.hpp"
#include "vmbus/device.hpp"
#include "vmbus/queue.hpp"

namespace enlighten::vmbus {

class SimpleDevice : public Device {
public:
    explicit SimpleDevice(OfferParams offer);
    ~SimpleDevice() override;

    [[nodiscard]] const OfferParams& offer() const override { return offer_; }
    void attach(const DeviceResources& resources) override;
    void open(const OpenRequest& request, std::shared_ptr<ChannelQueue> queue, OpenDone done) override;
    void opened(uint16_t index) override;
    void close(uint16_t index, CloseDone done) override;
    void detach() override;

    // Sends one packet. Errc::Busy: the guest's ring is full (on_ring_space() follows when it
    // has room); Errc::Closed: the channel is not open.
    Result<> send(const OutPacket& packet);
    // Sends `payload` as an in-band packet (trans_id 0, no completion requested) after those
    // still waiting, or keeps it when the ring is full. Errc::Busy (nothing kept) when
    // `max_waiting` already wait; Errc::Closed when the channel is not open. What waits is
    // dropped when the channel closes.
    Result<> post_inband(std::vector<uint8_t> payload, size_t max_waiting) ENL_EXCLUDES(out_mu_);
    // Packets post_inband() keeps for lack of ring space.
    [[nodiscard]] size_t waiting() const ENL_EXCLUDES(out_mu_);
    [[nodiscard]] bool is_open() const;

protected:
    virtual void on_opened() {}
    virtual void on_closed() {}
    virtual void on_packet(const PacketView& packet) = 0;
    virtual void on_ring_space() {}
    // The control loop (valid while attached; null before).
    [[nodiscard]] EventLoop* loop() const { return loop_; }

private:
    void drain();
    // Sends what waits, in order, until the ring is full. Holds out_mu_ while it sends.
    void flush_waiting() ENL_EXCLUDES(out_mu_);

    const OfferParams offer_;
    EventLoop* loop_ = nullptr;  // set in attach, on the loop
    mutable Mutex mu_;
    std::shared_ptr<ChannelQueue> queue_ ENL_GUARDED_BY(mu_);
    uint64_t watch_ = 0;                // the loop's watch of the queue's notify fd (loop thread only)
    std::atomic<bool> blocked_{false};  // a send found the ring full: on_ring_space() at the next wake
    mutable Mutex out_mu_;
    std::deque<std::vector<uint8_t>> waiting_ ENL_GUARDED_BY(out_mu_);
};

}  // namespace enlighten::vmbus
