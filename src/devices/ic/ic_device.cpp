#include "devices/ic/ic_device.hpp"

#include <cstring>

#include "common/log.hpp"

#include "common/rate_limit.hpp"

namespace enlighten::ic {

namespace {
constexpr uint32_t kPipeFlags = 1;  // "message" pipe packet; the guest ignores the pipe header

template <typename T>
void append(std::vector<uint8_t>& out, const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
}
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

IcDevice::IcDevice(vmbus::OfferParams offer, uint16_t msg_type, std::vector<uint32_t> versions)
    : offer_(std::move(offer)), msg_type_(msg_type), versions_(std::move(versions)) {
    offer_.signal_every_packet = true;  // hv_utils reads one packet per interrupt
}

std::vector<uint8_t> IcDevice::negotiate_request(std::span<const uint32_t> framework, std::span<const uint32_t> versions) {
    const size_t body = sizeof(IcNegotiate) + (framework.size() + versions.size()) * sizeof(IcVersion);
    std::vector<uint8_t> out;
    out.reserve(kIcHeaderSize + body);
    PipeHeader pipe{kPipeFlags, static_cast<uint32_t>(sizeof(IcMsgHeader) + body)};
    IcMsgHeader hdr{};
    hdr.icverframe = ic_version(framework.empty() ? 0x10000 : framework.back());
    hdr.icmsgtype = kIcNegotiate;
    hdr.icvermsg = ic_version(versions.empty() ? 0x10000 : versions.back());
    hdr.icmsgsize = static_cast<uint16_t>(body);
    hdr.icflags = kIcFlagTransaction | kIcFlagRequest;
    IcNegotiate neg{static_cast<uint16_t>(framework.size()), static_cast<uint16_t>(versions.size()), 0};
    append(out, pipe);
    append(out, hdr);
    append(out, neg);
    for (auto list : {framework, versions})
        for (uint32_t v : list) append(out, ic_version(v));
    return out;
}

Result<std::pair<uint32_t, uint32_t>> IcDevice::parse_negotiate_response(std::span<const uint8_t> packet) {
    if (packet.size() < kIcHeaderSize + sizeof(IcNegotiate) + 2 * sizeof(IcVersion))
        return fail("negotiate response of {} bytes is too short", packet.size());
    IcNegotiate neg;
    std::memcpy(&neg, packet.data() + kIcHeaderSize, sizeof(neg));
    // The guest answers with exactly one framework and one message version, or with zero
    // counts when nothing matched.
    if (neg.icframe_vercnt != 1 || neg.icmsg_vercnt != 1) return fail("the guest supports none of our versions");
    IcVersion fw, msg;
    std::memcpy(&fw, packet.data() + kIcHeaderSize + sizeof(neg), sizeof(fw));
    std::memcpy(&msg, packet.data() + kIcHeaderSize + sizeof(neg) + sizeof(fw), sizeof(msg));
    return std::pair{ic_version_value(fw), ic_version_value(msg)};
}

std::vector<uint8_t> IcDevice::build_request(uint16_t type, std::span<const uint8_t> body, uint8_t txn) const {
    std::vector<uint8_t> out;
    out.reserve(kIcHeaderSize + body.size());
    PipeHeader pipe{kPipeFlags, static_cast<uint32_t>(sizeof(IcMsgHeader) + body.size())};
    IcMsgHeader hdr{};
    hdr.icverframe = ic_version(framework_version_);
    hdr.icmsgtype = type;
    hdr.icvermsg = ic_version(version_);
    hdr.icmsgsize = static_cast<uint16_t>(body.size());
    hdr.ictransaction_id = txn;
    hdr.icflags = kIcFlagTransaction | kIcFlagRequest;
    append(out, pipe);
    append(out, hdr);
    out.insert(out.end(), body.begin(), body.end());
    return out;
}

void IcDevice::on_open(vmbus::ChannelEndpoint& endpoint) {
    std::unique_lock lock(mu_);
    endpoint_ = &endpoint;
    ++generation_;
    state_ = IcState::Negotiating;
    framework_version_ = 0;
    version_ = 0;
    negotiate_trans_id_ = next_trans_id_++;
    const auto request = negotiate_request(kFrameworkVersions, versions_);
    auto sent = endpoint.send(vmbus::kPacketDataInband, 0, negotiate_trans_id_, request);
    if (!sent || *sent != vmbus::ChannelEndpoint::SendStatus::Sent) {
        state_ = IcState::Failed;
        ENL_LOG_LIMITED(warn, "{}: could not send the version negotiation", offer_.name);
    }
    cv_.notify_all();
}

void IcDevice::on_close() {
    {
        std::lock_guard lock(mu_);
        endpoint_ = nullptr;
        state_ = IcState::Closed;
        ++generation_;
        cv_.notify_all();
    }
    on_closed();
}

void IcDevice::on_unsolicited(const IcMsgHeader& hdr, std::span<const uint8_t>) {
    ENL_LOG_LIMITED(warn, "{}: unexpected message type {} flags {:#x}", offer_.name, hdr.icmsgtype, hdr.icflags);
}

void IcDevice::on_packet(const vmbus::IncomingPacket& packet) {
    if (packet.type != vmbus::kPacketDataInband || packet.payload.size() < kIcHeaderSize) {
        ENL_LOG_LIMITED(warn, "{}: ignoring packet of type {} and {} bytes", offer_.name, packet.type, packet.payload.size());
        return;
    }
    IcMsgHeader hdr;
    std::memcpy(&hdr, packet.payload.data() + sizeof(PipeHeader), sizeof(hdr));
    const auto body = packet.payload.subspan(kIcHeaderSize);
    bool ready = false;
    {
        std::lock_guard lock(mu_);
        if (!(hdr.icflags & kIcFlagResponse)) {
            // Fall through to on_unsolicited below, outside the lock.
        } else if (state_ == IcState::Negotiating && packet.trans_id == negotiate_trans_id_) {
            auto versions = parse_negotiate_response(packet.payload);
            if (!versions || hdr.icmsgtype != kIcNegotiate) {
                state_ = IcState::Failed;
                ENL_LOG_LIMITED(warn, "{}: version negotiation failed: {}", offer_.name,
                                versions ? "wrong message type" : versions.error().message());
            } else {
                framework_version_ = versions->first;
                version_ = versions->second;
                state_ = IcState::Ready;
                ready = true;
                log::debug("{}: framework {}.{}, service {}.{}", offer_.name, framework_version_ >> 16,
                              framework_version_ & 0xffff, version_ >> 16, version_ & 0xffff);
            }
            cv_.notify_all();
        } else if (waiting_for_ && packet.trans_id == *waiting_for_) {
            response_ = IcResponse{hdr.status, std::vector<uint8_t>(body.begin(), body.end())};
            waiting_for_.reset();
            cv_.notify_all();
            return;
        } else {
            ENL_LOG_LIMITED(warn, "{}: response with unknown transaction id {}", offer_.name, packet.trans_id);
            return;
        }
    }
    if (ready) {
        on_ready();
        return;
    }
    if (!(hdr.icflags & kIcFlagResponse)) on_unsolicited(hdr, body);
}

IcState IcDevice::state() const {
    std::lock_guard lock(mu_);
    return state_;
}

uint32_t IcDevice::version() const {
    std::lock_guard lock(mu_);
    return version_;
}

bool IcDevice::wait_ready(std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return state_ != IcState::Negotiating; });
    return state_ == IcState::Ready;
}

Result<IcResponse> IcDevice::transact(std::span<const uint8_t> body, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return !busy_ || state_ != IcState::Ready; }))
        return fail("{}: another request is still in flight", offer_.name);
    if (state_ != IcState::Ready || !endpoint_)
        return fail("{}: the guest's {} service is not connected", offer_.name, offer_.name);
    busy_ = true;
    const uint64_t generation = generation_;
    const uint64_t trans_id = next_trans_id_++;
    const auto request = build_request(msg_type_, body, static_cast<uint8_t>(trans_id));
    waiting_for_ = trans_id;
    response_.reset();
    vmbus::ChannelEndpoint* ep = endpoint_;
    // Send with mu_ held: on_close() (which clears endpoint_) waits for us, so `ep` is valid.
    auto sent = ep->send(vmbus::kPacketDataInband, 0, trans_id, request);
    Result<IcResponse> result = fail("{}: no response from the guest", offer_.name);
    if (!sent) {
        result = std::unexpected(sent.error());
    } else if (*sent != vmbus::ChannelEndpoint::SendStatus::Sent) {
        result = fail("{}: the channel is {}", offer_.name,
                      *sent == vmbus::ChannelEndpoint::SendStatus::RingFull ? "full" : "closed");
    } else if (cv_.wait_until(lock, deadline, [&] { return response_.has_value() || generation_ != generation; }) &&
               response_) {
        result = std::move(*response_);
    } else if (generation_ != generation) {
        result = fail("{}: the channel closed", offer_.name);
    }
    waiting_for_.reset();
    response_.reset();
    busy_ = false;
    cv_.notify_all();
    return result;
}

}  // namespace enlighten::ic
