#include "devices/balloon/balloon.hpp"

#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/balloon/protocol.hpp"

namespace enlighten::balloon {

namespace {

vmbus::OfferParams balloon_offer(const char* instance_id) {
    vmbus::OfferParams p;
    p.name = "balloon";
    p.class_id = vmbus::Guid::parse(kClassId);
    p.instance_id = vmbus::Guid::parse(instance_id);
    // hv_balloon's max_pkt_size is 8192; what we send stays within its 4096-byte receive
    // buffer (contract-memory §1.2), what it sends is at most 4096 bytes of payload.
    p.max_packet_to_guest = 8192;
    p.max_packet_from_guest = 8192;
    return p;
}

constexpr uint64_t kMiB = 1ULL << 20;

}  // namespace

BalloonDevice::BalloonDevice(const char* instance_id, uint64_t startup_bytes, uint64_t max_limit,
                             PolicySettings settings)
    : SimpleDevice(balloon_offer(instance_id)), startup_(startup_bytes), max_limit_(max_limit) {
    LockGuard lock(mu_);
    settings_ = settings;
    published_.state = to_string(DmState::Closed);
}

void BalloonDevice::attach(const vmbus::DeviceResources& resources) {
    SimpleDevice::attach(resources);
    uint64_t max;
    {
        LockGuard lock(mu_);
        loop_ = resources.loop;
        max = settings_.max_bytes;
    }
    // A new boot: the guest is at its startup size again (contract-memory §7.3 step 6).
    engine_.attach(resources.ram, max / kPageSize);
    pending_.clear();
    last_action_.clear();
    publish();
}

void BalloonDevice::detach() {
    EventLoop* loop;
    {
        LockGuard lock(mu_);
        loop = loop_;
        loop_ = nullptr;
    }
    if (timer_ && loop) loop->cancel(timer_);
    timer_ = 0;
    engine_.attach(nullptr, 0);
    publish();
    SimpleDevice::detach();
}

void BalloonDevice::on_opened() {
    engine_.open();
    pending_.clear();
    arm_timer();
    publish();
}

void BalloonDevice::on_closed() {
    engine_.close();
    pending_.clear();
    if (timer_ && loop()) loop()->cancel(timer_);
    timer_ = 0;
    publish();
}

void BalloonDevice::arm_timer() {
    if (!loop() || timer_) return;
    timer_ = loop()->post_after(kTick, [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
            self->timer_ = 0;
            if (!self->is_open()) return;
            self->step();
            self->arm_timer();
        }
    });
}

void BalloonDevice::on_packet(const vmbus::PacketView& packet) {
    if (packet.type != vmbus::kPacketDataInband) {
        ENL_LOG_LIMITED(warn, "dynamic memory: a packet of type {} from the guest; ignored", packet.type);
        return;
    }
    engine_.on_message(packet.payload, loop()->now());
    step();
}

void BalloonDevice::on_ring_space() { flush(); }

void BalloonDevice::flush() {
    for (auto m : engine_.take_outbox()) pending_.push_back(std::move(m));
    while (!pending_.empty()) {
        const iovec iov{pending_.front().data(), pending_.front().size()};
        auto sent = send(vmbus::OutPacket::inband(0, std::span(&iov, 1)));
        if (!sent) {
            if (sent.error().is(Errc::Busy)) return;  // on_ring_space() follows
            pending_.clear();                          // closed
            return;
        }
        pending_.pop_front();
    }
}

void BalloonDevice::step() {
    if (!loop()) return;
    const auto now = loop()->now();
    engine_.tick(now);
    flush();
    PolicySettings s;
    {
        LockGuard lock(mu_);
        s = settings_;
    }
    // One operation at a time, and only once the last one's messages are out.
    if (engine_.state() == DmState::Ready && pending_.empty()) {
        PolicyInput in;
        in.startup_bytes = startup_;
        in.ballooned_bytes = engine_.ballooned_pages() * kPageSize;
        in.hot_added_bytes = engine_.hot_added_pages() * kPageSize;
        in.hot_add_room_bytes = engine_.hot_add_room_bytes();
        in.can_balloon = engine_.can_balloon();
        in.can_hot_add = engine_.can_hot_add();
        if (const auto& st = engine_.last_status(); st && st->plausible) in.committed_pages = st->committed_pages;
        const PolicyDecision d = decide(s, in);
        Result<> done;
        switch (d.action) {
            case PolicyAction::None: break;
            case PolicyAction::Balloon: done = engine_.balloon(d.pages, now); break;
            case PolicyAction::Unballoon: done = engine_.unballoon(d.pages, now); break;
            case PolicyAction::HotAdd: done = engine_.hot_add(d.pages, now); break;
        }
        std::string action = d.action == PolicyAction::None
                                 ? d.why
                                 : fmt::format("{} {} MiB: {}", to_string(d.action), d.pages * kPageSize / kMiB, d.why);
        if (!done) action += fmt::format(" (failed: {})", done.error().message());
        if (d.action != PolicyAction::None) {
            if (done)
                log::info("dynamic memory: {}", action);
            else
                ENL_LOG_LIMITED(warn, "dynamic memory: {}", action);
        }
        last_action_ = std::move(action);
        flush();
    }
    publish();
}

void BalloonDevice::publish() {
    LockGuard lock(mu_);
    MemoryStatus& p = published_;
    p.state = to_string(engine_.state());
    p.protocol_version = engine_.version();
    p.dynamic = settings_.dynamic;
    p.startup = startup_;
    p.min = settings_.min_bytes;
    p.max = settings_.max_bytes;
    p.buffer_percent = settings_.buffer_percent;
    p.weight = settings_.weight;
    p.ballooned = engine_.ballooned_pages() * kPageSize;
    p.hot_added = engine_.hot_added_pages() * kPageSize;
    p.current = startup_ + p.hot_added - std::min(p.ballooned, startup_ + p.hot_added);
    PolicyInput in;
    in.startup_bytes = startup_;
    in.ballooned_bytes = p.ballooned;
    in.hot_added_bytes = p.hot_added;
    if (const auto& st = engine_.last_status(); st && st->plausible) in.committed_pages = st->committed_pages;
    p.target = policy_target(settings_, in);
    p.explicit_target = settings_.target_bytes.has_value();
    p.can_balloon = engine_.can_balloon();
    p.can_hot_add = engine_.can_hot_add();
    p.hot_add_disabled = engine_.hot_add_disabled();
    p.problem = engine_.problem();
    p.last_action = last_action_;
    p.status_reports = engine_.status_reports();
    p.counters = engine_.counters();
    if (const auto& st = engine_.last_status()) {
        p.avail = st->avail_pages * kPageSize;
        p.committed = st->committed_pages * kPageSize;
        p.report_plausible = st->plausible;
        report_at_ = st->at;
    } else {
        p.avail.reset();
        p.committed.reset();
        p.report_plausible = true;
        report_at_ = {};
    }
}

MemoryStatus BalloonDevice::status() const {
    LockGuard lock(mu_);
    MemoryStatus s = published_;
    // The knobs as they are now (a PUT is seen at once, before the loop acts on it).
    s.dynamic = settings_.dynamic;
    s.min = settings_.min_bytes;
    s.max = settings_.max_bytes;
    s.buffer_percent = settings_.buffer_percent;
    s.explicit_target = settings_.target_bytes.has_value();
    if (settings_.target_bytes) s.target = settings_.target_bytes;
    if (s.avail)
        s.report_age_ms = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - report_at_).count());
    return s;
}

Result<> BalloonDevice::set_target(std::optional<uint64_t> bytes) {
    LockGuard lock(mu_);
    if (bytes) {
        if (*bytes % kMiB != 0) return fail(Errc::Invalid, "target {} is not a whole number of MiB", *bytes);
        if (*bytes < settings_.min_bytes || *bytes > settings_.max_bytes)
            return fail(Errc::Invalid, "target {} MiB is outside [min {} MiB, max {} MiB]", *bytes / kMiB,
                        settings_.min_bytes / kMiB, settings_.max_bytes / kMiB);
    }
    settings_.target_bytes = bytes;
    if (loop_)
        loop_->post([weak = weak_from_this()] {
            if (auto self = weak.lock()) self->step();
        });
    return {};
}

Result<> BalloonDevice::set_policy(std::optional<uint64_t> min, std::optional<uint64_t> max,
                                   std::optional<uint32_t> buffer, std::optional<bool> dynamic) {
    LockGuard lock(mu_);
    PolicySettings s = settings_;
    if (min) s.min_bytes = *min;
    if (max) s.max_bytes = *max;
    if (buffer) s.buffer_percent = *buffer;
    if (dynamic) s.dynamic = *dynamic;
    if (s.min_bytes % kMiB != 0 || s.max_bytes % kMiB != 0) return fail(Errc::Invalid, "min and max must be whole MiB");
    if (s.min_bytes > s.max_bytes)
        return fail(Errc::Invalid, "min {} MiB is above max {} MiB", s.min_bytes / kMiB, s.max_bytes / kMiB);
    if (s.max_bytes > max_limit_)
        return fail(Errc::Invalid, "max {} MiB is above the {} MiB the VM was started with (the hot-add window is "
                                   "planned at start: restart with a larger --memory max=)",
                    s.max_bytes / kMiB, max_limit_ / kMiB);
    if (s.min_bytes < 32 * kMiB) return fail(Errc::Invalid, "min {} MiB is below 32 MiB", s.min_bytes / kMiB);
    if (s.buffer_percent > 2000) return fail(Errc::Invalid, "buffer {}% is above 2000%", s.buffer_percent);
    if (s.target_bytes && (*s.target_bytes < s.min_bytes || *s.target_bytes > s.max_bytes))
        s.target_bytes = std::min(std::max(*s.target_bytes, s.min_bytes), s.max_bytes);
    settings_ = s;
    if (loop_)
        loop_->post([weak = weak_from_this()] {
            if (auto self = weak.lock()) self->step();
        });
    return {};
}

}  // namespace enlighten::balloon
