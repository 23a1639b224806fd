#include "vmbus/server.hpp"

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/rate_limit.hpp"

namespace enlighten::vmbus {

namespace {

// The smallest payload each guest-to-host message must have.
size_t min_size(MsgType type) {
    switch (type) {
        case MsgType::RequestOffers:
        case MsgType::Unload:
            return sizeof(MessageHeader);
        case MsgType::InitiateContact: return sizeof(InitiateContact);
        case MsgType::OpenChannel: return sizeof(OpenChannel);
        case MsgType::CloseChannel: return sizeof(CloseChannel);
        case MsgType::GpadlHeader: return sizeof(GpadlHeader);
        case MsgType::GpadlBody: return sizeof(GpadlBody);
        case MsgType::GpadlTeardown: return sizeof(GpadlTeardown);
        case MsgType::RelidReleased: return sizeof(RelidReleased);
        case MsgType::TlConnectRequest: return sizeof(TlConnectRequest);
        case MsgType::ModifyChannel: return sizeof(ModifyChannel);
        default: return 0;  // not a guest-to-host message
    }
}

template <typename T>
T copy_as(std::span<const uint8_t> payload) {
    T value{};
    std::memcpy(&value, payload.data(), std::min(sizeof(T), payload.size()));
    return value;
}

}  // namespace

std::string version_string(uint32_t v) { return fmt::format("{}.{}", v >> 16, v & 0xffff); }

hv::Status Server::handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload) {
    if (connection_id != kMessageConnectionId && connection_id != kMessageConnectionId4)
        return hv::Status::InvalidConnectionId;
    std::lock_guard lock(mu_);
    ++stats_.messages;
    if (payload.size() < sizeof(MessageHeader)) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: message of {} bytes has no header", payload.size());
        return hv::Status::Success;
    }
    const auto type = static_cast<MsgType>(copy_as<MessageHeader>(payload).msgtype);
    const size_t need = min_size(type);
    if (need == 0 || payload.size() < need) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: ignoring message type {} of {} bytes", static_cast<uint32_t>(type), payload.size());
        return hv::Status::Success;
    }
    switch (type) {
        case MsgType::InitiateContact:
            on_initiate_contact(vp, copy_as<InitiateContact>(payload));
            break;
        case MsgType::RequestOffers:
            on_request_offers();
            break;
        case MsgType::Unload:
            on_unload(vp);
            break;
        default:
            // Channel messages: no channels are offered yet, so there is nothing they can name.
            ++stats_.bad_messages;
            ENL_LOG_LIMITED(warn, "vmbus: message type {} names no channel", static_cast<uint32_t>(type));
            break;
    }
    return hv::Status::Success;
}

hv::Status Server::handle_event(uint32_t, uint32_t, uint16_t) {
    return hv::Status::InvalidConnectionId;  // no channels yet
}

void Server::on_initiate_contact(uint32_t vp, const InitiateContact& msg) {
    const uint32_t requested = msg.vmbus_version_requested;
    VersionResponse resp{};
    resp.header.msgtype = static_cast<uint32_t>(MsgType::VersionResponse);
    const bool target_ok = msg.target_vcpu < num_vps_;
    const uint32_t sint = requested >= kVersionWin10V5 ? static_cast<uint32_t>(msg.interrupt_page_or_sint & 0xff) : kMessageSint;
    if (!version_supported(requested) || !target_ok || sint >= hv::kSintCount) {
        // Refused: the guest tries its next lower version. Answer on the VP that asked.
        spdlog::debug("vmbus: refusing version {} (target VP {}, SINT {})", version_string(requested), msg.target_vcpu, sint);
        resp.version_supported = 0;
        send_to(target_ok ? msg.target_vcpu : vp,
                std::span(reinterpret_cast<const uint8_t*>(&resp), sizeof(resp)));
        return;
    }
    // A new contact while connected (kexec without unload) starts over.
    if (version_ != 0) reset_connection();
    version_ = requested;
    target_vp_ = msg.target_vcpu;
    msg_sint_ = sint;
    ++stats_.connects;
    resp.version_supported = 1;
    resp.connection_state = 0;
    resp.msg_conn_id = requested >= kVersionWin10V5 ? kMessageConnectionId4 : kMessageConnectionId;
    ENL_LOG_LIMITED(info, "vmbus: guest connected, protocol version {}", version_string(requested));
    send(resp);
    if (on_state_change) on_state_change();
}

void Server::on_request_offers() {
    if (version_ == 0) {
        ENL_LOG_LIMITED(warn, "vmbus: REQUESTOFFERS before INITIATE_CONTACT");
        return;
    }
    MessageHeader done{static_cast<uint32_t>(MsgType::AllOffersDelivered), 0};
    send(done);
}

void Server::on_unload(uint32_t vp) {
    ++stats_.unloads;
    const uint32_t target = version_ != 0 ? target_vp_ : vp;
    reset_connection();
    MessageHeader resp{static_cast<uint32_t>(MsgType::UnloadResponse), 0};
    send_to(target, std::span(reinterpret_cast<const uint8_t*>(&resp), sizeof(resp)));
    ENL_LOG_LIMITED(info, "vmbus: guest unloaded");
    if (on_state_change) on_state_change();
}

void Server::reset_connection() {
    version_ = 0;
    msg_sint_ = kMessageSint;
}

template <typename T>
void Server::send(const T& msg) {
    send_to(target_vp_, std::span(reinterpret_cast<const uint8_t*>(&msg), sizeof(T)));
}

void Server::send_to(uint32_t vp, std::span<const uint8_t> bytes) {
    if (!sink_.send(vp, msg_sint_, bytes))
        ENL_LOG_LIMITED(warn, "vmbus: message queue of VP {} is full; message dropped", vp);
}

bool Server::connected() const {
    std::lock_guard lock(mu_);
    return version_ != 0;
}

uint32_t Server::version() const {
    std::lock_guard lock(mu_);
    return version_;
}

ServerStats Server::stats() const {
    std::lock_guard lock(mu_);
    return stats_;
}

}  // namespace enlighten::vmbus
