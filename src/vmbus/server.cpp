#include "vmbus/server.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include "common/log.hpp"

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

// Copies a wire struct out of the message once; the payload is at least sizeof(T) (checked
// by the dispatcher) or zero-extended.
template <typename T>
T copy_as(std::span<const uint8_t> payload) {
    T value{};
    std::memcpy(&value, payload.data(), std::min(sizeof(T), payload.size()));
    return value;
}

template <typename T>
std::span<const uint8_t> bytes_of(const T& v) {
    return std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T));
}

constexpr uint32_t kStatusFailure = 0xc0000001;  // STATUS_UNSUCCESSFUL

}  // namespace

std::string version_string(uint32_t v) { return fmt::format("{}.{}", v >> 16, v & 0xffff); }

Server::Server(MessageSink& sink, const GuestMemory& memory, uint32_t num_vps)
    : sink_(sink),
      memory_(memory),
      num_vps_(num_vps),
      // Every GPADL page entry costs us 8 bytes: bound them by twice the guest's RAM.
      max_gpadl_pages_total_(std::max<uint64_t>(2 * (memory.total_size() / kPageSize), 1ULL << 16)) {}

Server::~Server() {
    std::lock_guard lock(mu_);
    for (auto& [relid, e] : channels_) close_channel(e);
}

Server::Entry* Server::find(uint32_t relid) {
    auto it = channels_.find(relid);
    return it == channels_.end() ? nullptr : &it->second;
}

Result<uint32_t> Server::add_device(std::shared_ptr<Device> device) {
    std::lock_guard lock(mu_);
    uint32_t relid = 1;
    while (relid <= kMaxRelid && channels_.count(relid)) ++relid;
    if (relid > kMaxRelid) return fail("no free VMBus channel id");
    auto channel = std::make_shared<Channel>(relid, kChannelConnectionBase + relid, std::move(device), sink_, memory_);
    by_connection_[channel->connection_id()] = channel;
    Entry& e = channels_[relid];
    e.channel = std::move(channel);
    if (version_ != 0 && offers_requested_) send_offer(e);
    return relid;
}

Result<> Server::rescind(uint32_t relid) {
    std::lock_guard lock(mu_);
    Entry* e = find(relid);
    if (!e || e->state == ChannelState::Rescinded) return fail("no channel {} to rescind", relid);
    close_channel(*e);
    e->state = ChannelState::Rescinded;
    if (e->offered) {
        RescindOffer msg{{static_cast<uint32_t>(MsgType::RescindChannelOffer), 0}, relid};
        send(msg);
    } else {
        // Never offered in this connection: nothing for the guest to release.
        by_connection_.erase(e->channel->connection_id());
        channels_.erase(relid);
    }
    return {};
}

hv::Status Server::handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload) {
    if (connection_id != kMessageConnectionId && connection_id != kMessageConnectionId4)
        return hv::Status::InvalidConnectionId;
    bool state_changed = false;
    {
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
        // Everything but the handshake needs a connection.
        if (version_ == 0 && type != MsgType::InitiateContact && type != MsgType::Unload) {
            ++stats_.bad_messages;
            ENL_LOG_LIMITED(warn, "vmbus: message type {} before INITIATE_CONTACT", static_cast<uint32_t>(type));
            return hv::Status::Success;
        }
        switch (type) {
            case MsgType::InitiateContact:
                on_initiate_contact(vp, copy_as<InitiateContact>(payload));
                state_changed = true;
                break;
            case MsgType::RequestOffers: on_request_offers(); break;
            case MsgType::Unload:
                on_unload(vp);
                state_changed = true;
                break;
            case MsgType::GpadlHeader: on_gpadl_header(payload); break;
            case MsgType::GpadlBody: on_gpadl_body(payload); break;
            case MsgType::GpadlTeardown: on_gpadl_teardown(copy_as<GpadlTeardown>(payload)); break;
            case MsgType::OpenChannel: on_open_channel(copy_as<OpenChannel>(payload)); break;
            case MsgType::CloseChannel: on_close_channel(copy_as<CloseChannel>(payload).child_relid); break;
            case MsgType::RelidReleased: on_relid_released(copy_as<RelidReleased>(payload).child_relid); break;
            case MsgType::ModifyChannel: on_modify_channel(copy_as<ModifyChannel>(payload)); break;
            case MsgType::TlConnectRequest:
                // hv_sock is not served yet; the guest's connect() times out.
                ENL_LOG_LIMITED(info, "vmbus: hv_sock connection request ignored (not supported yet)");
                break;
            default: break;
        }
    }
    if (state_changed && on_state_change) on_state_change();
    return hv::Status::Success;
}

hv::Status Server::handle_event(uint32_t, uint32_t connection_id, uint16_t flag) {
    if (flag != 0) return hv::Status::InvalidParameter;
    std::shared_ptr<Channel> channel;
    {
        std::lock_guard lock(mu_);
        auto it = by_connection_.find(connection_id);
        if (it == by_connection_.end()) return hv::Status::InvalidConnectionId;
        channel = it->second;
    }
    // Outside the server lock: a busy channel must not hold up control messages.
    channel->on_guest_signal();
    if (channel->failed()) {
        std::lock_guard lock(mu_);
        if (Entry* e = find(channel->relid()); e && e->channel == channel && e->state == ChannelState::Open)
            e->state = ChannelState::Failed;
    }
    return hv::Status::Success;
}

void Server::on_initiate_contact(uint32_t vp, const InitiateContact& msg) {
    const uint32_t requested = msg.vmbus_version_requested;
    VersionResponse resp{};
    resp.header.msgtype = static_cast<uint32_t>(MsgType::VersionResponse);
    const bool target_ok = msg.target_vcpu < num_vps_;
    const uint32_t sint = requested >= kVersionWin10V5 ? static_cast<uint32_t>(msg.interrupt_page_or_sint & 0xff) : kMessageSint;
    if (!version_supported(requested) || !target_ok || sint >= hv::kSintCount) {
        // Refused: the guest tries its next lower version. Answer on the VP that asked.
        log::debug("vmbus: refusing version {} (target VP {}, SINT {})", version_string(requested), msg.target_vcpu, sint);
        resp.version_supported = 0;
        const uint32_t saved = msg_sint_;
        if (sint < hv::kSintCount) msg_sint_ = sint;
        send_to(target_ok ? msg.target_vcpu : vp, bytes_of(resp));
        msg_sint_ = saved;
        return;
    }
    // A new contact while connected (kexec without unload) starts over.
    if (version_ != 0) reset_connection();
    version_ = requested;
    target_vp_ = msg.target_vcpu;
    msg_sint_ = sint;
    ++stats_.connects;
    resp.version_supported = 1;
    resp.msg_conn_id = requested >= kVersionWin10V5 ? kMessageConnectionId4 : kMessageConnectionId;
    ENL_LOG_LIMITED(info, "vmbus: guest connected, protocol version {}", version_string(requested));
    send(resp);
}

void Server::send_offer(Entry& e) {
    const OfferParams& p = e.channel->device().offer();
    OfferChannel msg{};
    msg.header.msgtype = static_cast<uint32_t>(MsgType::OfferChannel);
    msg.if_type = p.class_id;
    msg.if_instance = p.instance_id;
    msg.chn_flags = p.flags;
    msg.mmio_megabytes = p.mmio_megabytes;
    std::copy(p.user_def.begin(), p.user_def.end(), msg.user_def);
    msg.sub_channel_index = p.sub_channel_index;
    msg.child_relid = e.channel->relid();
    msg.monitorid = 0;
    msg.monitor_allocated = 0;       // no monitor pages: the guest always uses HvSignalEvent
    msg.is_dedicated_interrupt = 1;  // the guest need not set bits in its interrupt page
    msg.connection_id = e.channel->connection_id();
    e.offered = true;
    send(msg);
}

void Server::on_request_offers() {
    offers_requested_ = true;
    for (auto& [relid, e] : channels_)
        if (!e.offered && e.state != ChannelState::Rescinded) send_offer(e);
    MessageHeader done{static_cast<uint32_t>(MsgType::AllOffersDelivered), 0};
    send(done);
}

void Server::close_channel(Entry& e) {
    if (e.state == ChannelState::Open || e.state == ChannelState::Failed) ++stats_.closes;
    e.channel->close();
    if (auto g = gpadls_.find(e.ring_gpadl); e.ring_gpadl != 0 && g != gpadls_.end()) g->second.in_use = false;
    e.ring_gpadl = 0;
    if (e.state == ChannelState::Open || e.state == ChannelState::Failed) e.state = ChannelState::Closed;
}

void Server::reset_connection() {
    for (auto it = channels_.begin(); it != channels_.end();) {
        Entry& e = it->second;
        close_channel(e);
        if (e.state == ChannelState::Rescinded) {
            by_connection_.erase(e.channel->connection_id());
            it = channels_.erase(it);
            continue;
        }
        e.state = ChannelState::Offered;
        e.offered = false;
        ++it;
    }
    gpadls_.clear();
    gpadl_pages_total_ = 0;
    version_ = 0;
    offers_requested_ = false;
}

void Server::on_unload(uint32_t vp) {
    ++stats_.unloads;
    const uint32_t target = version_ != 0 ? target_vp_ : vp;
    reset_connection();
    MessageHeader resp{static_cast<uint32_t>(MsgType::UnloadResponse), 0};
    send_to(target, bytes_of(resp));
    ENL_LOG_LIMITED(info, "vmbus: guest unloaded");
}

void Server::on_gpadl_header(std::span<const uint8_t> payload) {
    const auto hdr = copy_as<GpadlHeader>(payload);
    GpadlCreated reply{{static_cast<uint32_t>(MsgType::GpadlCreated), 0}, hdr.child_relid, hdr.gpadl, kStatusFailure};
    auto refuse = [&](std::string_view why) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} for channel {} refused: {}", hdr.gpadl, hdr.child_relid, why);
        send(reply);
    };
    Entry* e = find(hdr.child_relid);
    if (!e || e->state == ChannelState::Rescinded || e->state == ChannelState::Released) return refuse("no such channel");
    if (gpadls_.count(hdr.gpadl)) return refuse("handle already in use");
    if (gpadls_.size() >= kMaxGpadls) return refuse("too many GPADLs");
    if (hdr.rangecount != 1) return refuse("only single-range GPADLs are supported");
    if (hdr.range_buflen < 16 || (hdr.range_buflen - 8) % 8 != 0) return refuse("bad range_buflen");
    const uint64_t pages = (hdr.range_buflen - 8u) / 8u;
    if (pages > kMaxGpadlPages) return refuse("too many pages");
    if (gpadl_pages_total_ + pages > max_gpadl_pages_total_) return refuse("too many GPADL pages in total");
    if (hdr.byte_offset >= kPageSize || hdr.byte_count == 0 ||
        uint64_t{hdr.byte_count} + hdr.byte_offset > pages * kPageSize)
        return refuse("byte count and offset do not match the page count");
    Gpadl g;
    g.relid = hdr.child_relid;
    g.byte_count = hdr.byte_count;
    g.byte_offset = hdr.byte_offset;
    g.expected_pages = pages;
    g.pfns.reserve(static_cast<size_t>(pages));
    const size_t in_msg = std::min<size_t>((payload.size() - sizeof(GpadlHeader)) / 8, static_cast<size_t>(pages));
    for (size_t i = 0; i < in_msg; ++i) {
        uint64_t pfn;
        std::memcpy(&pfn, payload.data() + sizeof(GpadlHeader) + 8 * i, 8);
        g.pfns.push_back(pfn);
    }
    gpadl_pages_total_ += pages;
    auto& stored = gpadls_[hdr.gpadl] = std::move(g);
    if (stored.complete()) finish_gpadl(hdr.gpadl, stored);
}

void Server::on_gpadl_body(std::span<const uint8_t> payload) {
    const auto body = copy_as<GpadlBody>(payload);
    auto it = gpadls_.find(body.gpadl);
    if (it == gpadls_.end() || it->second.complete()) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: GPADL_BODY for unknown or complete GPADL {:#x}", body.gpadl);
        return;
    }
    // Bodies are reassembled in arrival order (Linux never sets msgnumber).
    Gpadl& g = it->second;
    const size_t room = static_cast<size_t>(g.expected_pages) - g.pfns.size();
    const size_t in_msg = std::min<size_t>((payload.size() - sizeof(GpadlBody)) / 8, room);
    for (size_t i = 0; i < in_msg; ++i) {
        uint64_t pfn;
        std::memcpy(&pfn, payload.data() + sizeof(GpadlBody) + 8 * i, 8);
        g.pfns.push_back(pfn);
    }
    if (g.complete()) finish_gpadl(body.gpadl, g);
}

void Server::finish_gpadl(uint32_t handle, Gpadl& g) {
    uint32_t status = 0;
    for (uint64_t pfn : g.pfns)
        if (pfn >= (1ULL << 52) || !memory_.contains(pfn << 12, kPageSize)) {
            ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} names page {:#x} outside guest RAM", handle, pfn);
            status = kStatusFailure;
            break;
        }
    GpadlCreated reply{{static_cast<uint32_t>(MsgType::GpadlCreated), 0}, g.relid, handle, status};
    if (status != 0) {
        gpadl_pages_total_ -= g.expected_pages;
        gpadls_.erase(handle);
    } else {
        ++stats_.gpadls_created;
    }
    send(reply);
}

void Server::on_gpadl_teardown(const GpadlTeardown& msg) {
    auto it = gpadls_.find(msg.gpadl);
    if (it == gpadls_.end() || it->second.relid != msg.child_relid) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: teardown of unknown GPADL {:#x} (channel {})", msg.gpadl, msg.child_relid);
        return;
    }
    if (it->second.in_use) {
        // The guest frees ring pages that an open channel still uses: stop using them first.
        if (Entry* e = find(msg.child_relid); e && e->ring_gpadl == msg.gpadl) {
            ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} torn down while channel {} is open; closing it", msg.gpadl,
                            msg.child_relid);
            close_channel(*e);
        }
    }
    gpadl_pages_total_ -= it->second.expected_pages;
    gpadls_.erase(it);
    ++stats_.gpadls_torn_down;
    // After this reply we never touch those pages again: the guest frees them.
    GpadlTorndown reply{{static_cast<uint32_t>(MsgType::GpadlTorndown), 0}, msg.gpadl};
    send(reply);
}

void Server::on_open_channel(const OpenChannel& msg) {
    OpenResult reply{{static_cast<uint32_t>(MsgType::OpenChannelResult), 0}, msg.child_relid, msg.openid, kStatusFailure};
    auto refuse = [&](std::string_view why) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: OPENCHANNEL for channel {} refused: {}", msg.child_relid, why);
        send(reply);
    };
    Entry* e = find(msg.child_relid);
    if (!e || !e->offered) return refuse("no such channel");
    if (e->state != ChannelState::Offered && e->state != ChannelState::Closed) return refuse("channel is not closed");
    auto g = gpadls_.find(msg.ringbuffer_gpadl);
    if (g == gpadls_.end() || !g->second.complete() || g->second.relid != msg.child_relid || g->second.in_use)
        return refuse("ring GPADL is unknown, incomplete, or in use");
    if (g->second.byte_offset != 0) return refuse("ring GPADL does not start on a page");
    if (msg.target_vp >= num_vps_) return refuse("target VP does not exist");
    if (auto r = e->channel->open(g->second.pfns, msg.downstream_ringbuffer_pageoffset, msg.target_vp, msg_sint_); !r)
        return refuse(r.error().message());
    g->second.in_use = true;
    e->ring_gpadl = msg.ringbuffer_gpadl;
    e->state = ChannelState::Open;
    ++stats_.opens;
    reply.status = 0;
    send(reply);
    e->channel->start();
}

void Server::on_close_channel(uint32_t relid) {
    Entry* e = find(relid);
    if (!e) {
        ENL_LOG_LIMITED(warn, "vmbus: CLOSECHANNEL for unknown channel {}", relid);
        return;
    }
    close_channel(*e);  // no reply; a rescinded channel stays rescinded
}

void Server::on_relid_released(uint32_t relid) {
    Entry* e = find(relid);
    if (!e) return;
    close_channel(*e);
    if (e->state == ChannelState::Rescinded) {
        by_connection_.erase(e->channel->connection_id());
        channels_.erase(relid);
        return;
    }
    // The guest could not use the offer; it will not open it.
    e->state = ChannelState::Released;
}

void Server::on_modify_channel(const ModifyChannel& msg) {
    uint32_t status = kStatusFailure;
    if (Entry* e = find(msg.child_relid); e && msg.target_vp < num_vps_) {
        e->channel->set_target_vp(msg.target_vp);
        status = 0;
    } else {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: MODIFYCHANNEL of channel {} to VP {} refused", msg.child_relid, msg.target_vp);
    }
    // From 5.3 on the guest waits for the answer.
    if (version_ >= kVersionWin10V5_3) {
        ModifyChannelResponse resp{{static_cast<uint32_t>(MsgType::ModifyChannelResponse), 0}, msg.child_relid, status};
        send(resp);
    }
}

template <typename T>
void Server::send(const T& msg) {
    send_to(target_vp_, bytes_of(msg));
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

std::vector<ChannelSnapshot> Server::channels() const {
    std::lock_guard lock(mu_);
    std::vector<ChannelSnapshot> out;
    for (const auto& [relid, e] : channels_) {
        const OfferParams& p = e.channel->device().offer();
        out.push_back({relid, p.name, p.class_id, p.instance_id, e.state, e.channel->target_vp()});
    }
    return out;
}

size_t Server::gpadl_count() const {
    std::lock_guard lock(mu_);
    return gpadls_.size();
}

std::optional<std::vector<uint64_t>> Server::gpadl_pages(uint32_t relid, uint32_t handle) const {
    std::lock_guard lock(mu_);
    auto it = gpadls_.find(handle);
    if (it == gpadls_.end() || it->second.relid != relid || !it->second.complete()) return std::nullopt;
    return it->second.pfns;
}

}  // namespace enlighten::vmbus
