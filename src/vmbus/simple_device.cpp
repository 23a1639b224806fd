#include "vmbus/simple_device.hpp"

#include <sys/epoll.h>

#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"

namespace enlighten::vmbus {

namespace {
// Packets handled per wake-up before the loop gets a turn (the rest follow in a posted drain).
constexpr int kDrainBudget = 64;
}  // namespace

SimpleDevice::SimpleDevice(OfferParams offer) : offer_(std::move(offer)) {}

SimpleDevice::~SimpleDevice() = default;

void SimpleDevice::attach(const DeviceResources& resources) { loop_ = resources.loop; }

void SimpleDevice::detach() { loop_ = nullptr; }

void SimpleDevice::open(const OpenRequest&, std::shared_ptr<ChannelQueue> queue, OpenDone done) {
    if (!loop_) return done(fail(Errc::Closed, "{}: not attached to a bus with a loop", offer_.name));
    const int fd = queue->notify_fd();
    auto watch = loop_->watch(fd, EPOLLIN, [this](uint32_t) { drain(); });
    if (!watch) return done(std::unexpected(watch.error()));
    watch_ = *watch;
    blocked_ = false;
    {
        LockGuard lock(mu_);
        queue_ = std::move(queue);
    }
    // The device may speak at once: its first packet (the integration services' version
    // negotiation) is then in the ring before the guest sees OPENCHANNEL_RESULT, as with
    // OpenVMM's simple devices, whose task starts in open(). Linux installs the channel's
    // callback before it sends OPENCHANNEL, so it reads the packet either way; a driver that
    // is unbound right after binding still sees it (a rebind loop counts on that).
    on_opened();
    done({});
}

void SimpleDevice::opened(uint16_t) {
    drain();  // anything the guest sent already
}

void SimpleDevice::close(uint16_t, CloseDone done) {
    if (watch_ && loop_) loop_->unwatch(watch_);
    watch_ = 0;
    {
        LockGuard lock(mu_);
        queue_.reset();
    }
    {
        LockGuard lock(out_mu_);
        waiting_.clear();
    }
    on_closed();
    done();
}

bool SimpleDevice::is_open() const {
    LockGuard lock(mu_);
    return queue_ != nullptr;
}

Result<> SimpleDevice::send(const OutPacket& packet) {
    std::shared_ptr<ChannelQueue> q;
    {
        LockGuard lock(mu_);
        q = queue_;
    }
    if (!q) return fail(Errc::Closed, "{}: the channel is not open", offer_.name);
    auto sent = q->send(packet);
    if (!sent && sent.error().is(Errc::Busy)) blocked_ = true;
    return sent;
}

Result<> SimpleDevice::post_inband(std::vector<uint8_t> payload, size_t max_waiting) {
    std::shared_ptr<ChannelQueue> q;
    {
        LockGuard lock(mu_);
        q = queue_;
    }
    if (!q) return fail(Errc::Closed, "{}: the channel is not open", offer_.name);
    LockGuard lock(out_mu_);
    if (waiting_.size() >= max_waiting)
        return fail(Errc::Busy, "{}: {} packets wait for the guest to read its ring", offer_.name, waiting_.size());
    if (waiting_.empty()) {
        const iovec iov{payload.data(), payload.size()};
        auto sent = q->send(OutPacket::inband(0, std::span(&iov, 1)));
        if (sent) return {};
        if (!sent.error().is(Errc::Busy)) return sent;
        blocked_ = true;  // the guest's next read past pending_send_sz rings the doorbell
    }
    waiting_.push_back(std::move(payload));
    return {};
}

size_t SimpleDevice::waiting() const {
    LockGuard lock(out_mu_);
    return waiting_.size();
}

void SimpleDevice::flush_waiting() {
    std::shared_ptr<ChannelQueue> q;
    {
        LockGuard lock(mu_);
        q = queue_;
    }
    LockGuard lock(out_mu_);
    while (!waiting_.empty()) {
        if (!q) {
            waiting_.clear();
            return;
        }
        const iovec iov{waiting_.front().data(), waiting_.front().size()};
        auto sent = q->send(OutPacket::inband(0, std::span(&iov, 1)));
        if (!sent) {
            if (sent.error().is(Errc::Busy)) {
                blocked_ = true;
                return;
            }
            waiting_.clear();  // closed
            return;
        }
        waiting_.pop_front();
    }
}

void SimpleDevice::drain() {
    std::shared_ptr<ChannelQueue> q;
    {
        LockGuard lock(mu_);
        q = queue_;
    }
    if (!q) return;
    q->drain_notify();
    for (int n = 0;; ++n) {
        if (n == kDrainBudget) {
            // Fair to the loop: the rest in a later round (the mask stays set meanwhile).
            loop_->post([this, weak = std::weak_ptr<ChannelQueue>(q)] {
                if (!weak.expired()) drain();
            });
            break;
        }
        auto p = q->peek();
        if (!p) return;  // closed, or a broken ring (the server closes the channel)
        if (!*p) {
            if (q->arm()) break;
            continue;
        }
        on_packet(**p);
        q->consume();
    }
    // Room in the guest's ring comes with a doorbell too.
    if (blocked_.exchange(false)) {
        flush_waiting();
        on_ring_space();
    }
}

}  // namespace enlighten::vmbus
