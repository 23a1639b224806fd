#include "devices/ic/ic_device.hpp"

#include <cstring>

#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/wire.hpp"

namespace enlighten::ic {

namespace {
constexpr uint32_t kPipeFlags = 1;  // "message" pipe packet; the guest ignores the pipe header
}  // namespace

const char* to_string(IcState s) {
    switch (s) {
        case IcState::Closed: return "closed";
        case IcState::Negotiating: return "negotiating";
        case IcState::Ready: return "ready";
        case IcState::Failed: return "failed";
    }
    return "unknown";
}

namespace {
vmbus::OfferParams with_signal_every_packet(vmbus::OfferParams offer) {
    offer.signal_every_packet = true;  // hv_utils reads one packet per interrupt
    return offer;
}
}  // namespace

IcDevice::IcDevice(vmbus::OfferParams offer, uint16_t msg_type, std::vector<uint32_t> versions, size_t max_in_flight)
    : SimpleDevice(with_signal_every_packet(std::move(offer))),
      msg_type_(msg_type),
      versions_(std::move(versions)),
      max_in_flight_(std::max<size_t>(max_in_flight, 1)) {}

std::vector<uint8_t> IcDevice::negotiate_request(std::span<const uint32_t> framework, std::span<const uint32_t> versions) {
    const size_t body = sizeof(IcNegotiate) + (framework.size() + versions.size()) * sizeof(IcVersion);
    IcMsgHeader hdr{};
    hdr.icverframe = ic_version(framework.empty() ? 0x10000 : framework.back());
    hdr.icmsgtype = kIcNegotiate;
    hdr.icvermsg = ic_version(versions.empty() ? 0x10000 : versions.back());
    hdr.icmsgsize = static_cast<uint16_t>(body);
    hdr.icflags = kIcFlagTransaction | kIcFlagRequest;
    ByteWriter out(kIcHeaderSize + body);
    out.put(PipeHeader{kPipeFlags, static_cast<uint32_t>(sizeof(IcMsgHeader) + body)});
    out.put(hdr);
    out.put(IcNegotiate{static_cast<uint16_t>(framework.size()), static_cast<uint16_t>(versions.size()), 0});
    for (auto list : {framework, versions})
        for (uint32_t v : list) out.put(ic_version(v));
    return out.take();
}

Result<std::pair<uint32_t, uint32_t>> IcDevice::parse_negotiate_response(std::span<const uint8_t> packet) {
    if (packet.size() < kIcHeaderSize + sizeof(IcNegotiate) + 2 * sizeof(IcVersion))
        return fail(Errc::Invalid, "negotiate response of {} bytes is too short", packet.size());
    const auto neg = *read_prefix<IcNegotiate>(packet.subspan(kIcHeaderSize));
    // The guest answers with exactly one framework and one message version, or with zero
    // counts when nothing matched.
    if (neg.icframe_vercnt != 1 || neg.icmsg_vercnt != 1)
        return fail(Errc::Unsupported, "the guest supports none of our versions");
    const auto fw = *read_prefix<IcVersion>(packet.subspan(kIcHeaderSize + sizeof(neg)));
    const auto msg = *read_prefix<IcVersion>(packet.subspan(kIcHeaderSize + sizeof(neg) + sizeof(fw)));
    return std::pair{ic_version_value(fw), ic_version_value(msg)};
}

std::vector<uint8_t> IcDevice::build_request(uint16_t type, std::span<const uint8_t> body, uint8_t txn) const {
    IcMsgHeader hdr{};
    {
        LockGuard lock(mu_);
        hdr.icverframe = ic_version(framework_version_);
        hdr.icvermsg = ic_version(version_);
    }
    hdr.icmsgtype = type;
    hdr.icmsgsize = static_cast<uint16_t>(body.size());
    hdr.ictransaction_id = txn;
    hdr.icflags = kIcFlagTransaction | kIcFlagRequest;
    ByteWriter out(kIcHeaderSize + body.size());
    out.put(PipeHeader{kPipeFlags, static_cast<uint32_t>(sizeof(IcMsgHeader) + body.size())});
    out.put(hdr);
    out.bytes(body);
    return out.take();
}

void IcDevice::set_state(IcState s, uint32_t framework, uint32_t version) {
    {
        LockGuard lock(mu_);
        if (s == IcState::Ready) had_contact_ = true;
        state_ = s;
        framework_version_ = framework;
        version_ = version;
    }
    cv_.notify_all();
}

const char* to_string(IcContact c) {
    switch (c) {
        case IcContact::NoContact: return "No Contact";
        case IcContact::Ok: return "OK";
        case IcContact::Lost: return "Lost Communication";
    }
    return "?";
}

IcContact IcDevice::contact() const {
    LockGuard lock(mu_);
    if (state_ == IcState::Ready) return IcContact::Ok;
    return had_contact_ ? IcContact::Lost : IcContact::NoContact;
}

void IcDevice::attach(const vmbus::DeviceResources& resources) {
    {
        LockGuard lock(mu_);
        had_contact_ = false;
    }
    SimpleDevice::attach(resources);
}

IcState IcDevice::state() const {
    LockGuard lock(mu_);
    return state_;
}

uint32_t IcDevice::version() const {
    LockGuard lock(mu_);
    return version_;
}

bool IcDevice::wait_ready(std::chrono::milliseconds timeout) const {
    UniqueLock lock(mu_);
    cv_.wait_for(lock, timeout, [&]() ENL_NO_THREAD_SAFETY_ANALYSIS { return state_ != IcState::Negotiating; });
    return state_ == IcState::Ready;
}

void IcDevice::on_opened() {
    negotiate_trans_id_ = next_trans_id_++;
    set_state(IcState::Negotiating);
    const auto request = negotiate_request(kFrameworkVersions, versions_);
    const iovec iov = iov_of(request);
    auto sent = send(vmbus::OutPacket::inband(negotiate_trans_id_, std::span(&iov, 1)));
    negotiate_pending_ = !sent && sent.error().is(Errc::Busy);
    if (!sent && !negotiate_pending_) {
        set_state(IcState::Failed);
        ENL_LOG_LIMITED(warn, "{}: could not send the version negotiation: {}", offer().name, sent.error().message());
    }
}

void IcDevice::on_closed() {
    set_state(IcState::Closed);
    negotiate_pending_ = false;
    fail_all(Error(fmt::format("{}: the channel closed", offer().name), Errc::Closed));
    on_disconnected();
}

void IcDevice::on_ring_space() {
    if (negotiate_pending_) {
        negotiate_pending_ = false;
        on_opened();
        return;
    }
    if (!in_flight_.empty() && !in_flight_.back()->sent && !send_pending(in_flight_.back())) return;
    start_next();
}

void IcDevice::on_unsolicited(const IcMsgHeader& hdr, std::span<const uint8_t>) {
    ENL_LOG_LIMITED(warn, "{}: unexpected message type {} flags {:#x}", offer().name, hdr.icmsgtype, hdr.icflags);
}

void IcDevice::on_packet(const vmbus::PacketView& packet) {
    if (packet.type != vmbus::kPacketDataInband || packet.payload.size() < kIcHeaderSize) {
        ENL_LOG_LIMITED(warn, "{}: ignoring packet of type {} and {} bytes", offer().name, packet.type, packet.payload.size());
        return;
    }
    const auto hdr = *read_prefix<IcMsgHeader>(packet.payload.subspan(sizeof(PipeHeader)));
    const auto body = packet.payload.subspan(kIcHeaderSize);
    if (!(hdr.icflags & kIcFlagResponse)) return on_unsolicited(hdr, body);
    if (state() == IcState::Negotiating && packet.trans_id == negotiate_trans_id_) {
        auto versions = parse_negotiate_response(packet.payload);
        if (!versions || hdr.icmsgtype != kIcNegotiate) {
            set_state(IcState::Failed);
            ENL_LOG_LIMITED(warn, "{}: version negotiation failed: {}", offer().name,
                            versions ? "wrong message type" : versions.error().message());
            return;
        }
        set_state(IcState::Ready, versions->first, versions->second);
        log::debug("{}: framework {}.{}, service {}.{}", offer().name, versions->first >> 16, versions->first & 0xffff,
                   versions->second >> 16, versions->second & 0xffff);
        on_ready();
        start_next();
        return;
    }
    for (const auto& p : in_flight_) {
        if (p->sent && packet.trans_id == p->id) {
            finish(p->id, IcResponse{hdr.status, hdr.icmsgtype, std::vector<uint8_t>(body.begin(), body.end())});
            return;
        }
    }
    ENL_LOG_LIMITED(warn, "{}: response with unknown transaction id {}", offer().name, packet.trans_id);
}

void IcDevice::transact(std::vector<uint8_t> body, std::chrono::milliseconds timeout, Callback done) {
    EventLoop* l = loop();
    if (!l) return done(fail(Errc::Closed, "{}: the VM is not running", offer().name));
    auto p = std::make_shared<Pending>();
    p->body = std::move(body);
    p->done = std::move(done);
    l->post([weak = weak_self<IcDevice>(), p, timeout]() mutable {
        if (auto self = weak.lock()) self->enqueue(std::move(p), timeout);
    });
}

void IcDevice::enqueue(std::shared_ptr<Pending> p, std::chrono::milliseconds timeout) {
    if (state() != IcState::Ready && state() != IcState::Negotiating)
        return p->done(fail(Errc::Closed, "{}: the guest's {} service is not connected", offer().name, offer().name));
    if (queue_.size() >= kMaxQueuedTransactions)
        return p->done(fail(Errc::Busy, "{}: {} requests are waiting already", offer().name, queue_.size()));
    p->id = next_trans_id_++;
    p->timer = loop()->post_after(timeout, [weak = weak_self<IcDevice>(), id = p->id, name = offer().name] {
        if (auto self = weak.lock()) self->finish(id, fail(Errc::Timeout, "{}: no response from the guest", name));
    });
    queue_.push_back(std::move(p));
    start_next();
}

// Sends queued requests in order while fewer than max_in_flight_ are unanswered and the
// last one sent found room in the ring.
void IcDevice::start_next() {
    while (in_flight_.size() < max_in_flight_ && !queue_.empty() && state() == IcState::Ready &&
           (in_flight_.empty() || in_flight_.back()->sent)) {
        auto p = std::move(queue_.front());
        queue_.pop_front();
        in_flight_.push_back(p);
        if (!send_pending(p)) return;
    }
}

// False if the request is still waiting: the ring is full (on_ring_space() sends it again),
// or it failed and was finished (finish() went on with the next one).
bool IcDevice::send_pending(std::shared_ptr<Pending> p) {
    const auto request = build_request(msg_type_, p->body, static_cast<uint8_t>(p->id));
    const iovec iov = iov_of(request);
    auto sent = send(vmbus::OutPacket::inband(p->id, std::span(&iov, 1)));
    if (sent) {
        p->sent = true;
        return true;
    }
    if (!sent.error().is(Errc::Busy)) finish(p->id, std::unexpected(sent.error()));
    return false;
}

// Completes transaction `id` (in flight or queued) and starts the next one.
void IcDevice::finish(uint64_t id, Result<IcResponse> result) {
    std::shared_ptr<Pending> p;
    auto match = [&](const auto& q) { return q->id == id; };
    if (auto it = std::find_if(in_flight_.begin(), in_flight_.end(), match); it != in_flight_.end()) {
        p = std::move(*it);
        in_flight_.erase(it);
    } else {
        auto q = std::find_if(queue_.begin(), queue_.end(), match);
        if (q == queue_.end()) return;  // already finished
        p = std::move(*q);
        queue_.erase(q);
    }
    if (loop()) loop()->cancel(p->timer);
    p->done(std::move(result));
    start_next();
}

void IcDevice::fail_all(const Error& e) {
    std::deque<std::shared_ptr<Pending>> all = std::exchange(in_flight_, {});
    for (auto& p : std::exchange(queue_, {})) all.push_back(std::move(p));
    for (const auto& p : all) {
        if (loop()) loop()->cancel(p->timer);
        p->done(std::unexpected(e));
    }
}

namespace {

// The answer a waiting caller gets: set by the callback, or, if the callback is destroyed
// without being called (the loop stopped and dropped its work), Errc::Closed.
struct Waiter {
    Mutex mu;
    std::condition_variable_any cv;
    std::optional<Result<IcResponse>> result ENL_GUARDED_BY(mu);
    void set(Result<IcResponse> r) {
        {
            LockGuard lock(mu);
            if (!result) result = std::move(r);
        }
        cv.notify_all();
    }
};

struct Answer {
    std::shared_ptr<Waiter> waiter;
    explicit Answer(std::shared_ptr<Waiter> w) : waiter(std::move(w)) {}
    Answer(Answer&&) = default;
    Answer& operator=(Answer&&) = default;
    ~Answer() {
        if (waiter) waiter->set(fail(Errc::Closed, "the VM stopped before the guest answered"));
    }
    void operator()(Result<IcResponse> r) { std::exchange(waiter, nullptr)->set(std::move(r)); }
};

}  // namespace

Result<IcResponse> IcDevice::transact_wait(std::vector<uint8_t> body, std::chrono::milliseconds timeout) {
    EventLoop* l = loop();
    if (l && l->in_loop_thread())
        return fail(Errc::Invalid, "{}: a waiting transaction on the loop thread would never finish", offer().name);
    auto waiter = std::make_shared<Waiter>();
    transact(std::move(body), timeout, Answer(waiter));
    // The answer always comes: the guest's, the timeout, a close, or the loop dropping it.
    UniqueLock lock(waiter->mu);
    waiter->cv.wait(lock, [&]() ENL_NO_THREAD_SAFETY_ANALYSIS { return waiter->result.has_value(); });
    return std::move(*waiter->result);
}

}  // namespace enlighten::ic
