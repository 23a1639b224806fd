#include "vmbus/server.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <cstring>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/wire.hpp"

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

constexpr uint32_t msg(MsgType t) { return static_cast<uint32_t>(t); }

}  // namespace

const char* to_string(ChannelState s) {
    switch (s) {
        case ChannelState::Offered: return "offered";
        case ChannelState::Opening: return "opening";
        case ChannelState::Open: return "open";
        case ChannelState::Closing: return "closing";
        case ChannelState::Closed: return "closed";
        case ChannelState::Failed: return "failed";
        case ChannelState::Rescinded: return "rescinded";
        case ChannelState::Released: return "released";
    }
    return "unknown";
}

std::string version_string(uint32_t v) { return fmt::format("{}.{}", v >> 16, v & 0xffff); }

// One device on this bus: its channels by index, and the ChannelControl it was given.
// Fields other than the constants are guarded by the server's mu_.
struct Server::DeviceSlot final : ChannelControl {
    DeviceSlot(Server& s, std::shared_ptr<Device> d)
        : server(s), device(std::move(d)), offer(device->offer()),
          max_sub(std::min(device->max_subchannels(), kMaxSubchannels)) {}
    Result<uint16_t> enable_subchannels(uint16_t count) override { return server.enable_subchannels(*this, count); }
    Result<GpadlView> gpadl(uint32_t handle) override { return server.device_gpadl(*this, handle); }
    uint32_t vmbus_version() const override { return server.version(); }

    Server& server;
    const std::shared_ptr<Device> device;
    const OfferParams offer;
    const uint16_t max_sub;
    std::vector<uint32_t> relids;  // current channel of each index (0: none)
    uint16_t enabled = 0;          // sub-channels enabled since the primary opened
    bool withdrawn = false;        // rescinded by the host: no more offers
};

struct Server::Channel {
    enum class Open { Closed, Opening, Open, Closing, Failed };
    uint32_t relid = 0;
    uint32_t connection_id = 0;
    std::shared_ptr<DeviceSlot> slot;
    uint16_t index = 0;
    bool offered = false;    // OFFERCHANNEL sent in this connection
    bool rescinded = false;  // RESCIND sent: waiting for RELID_RELEASED
    bool released = false;   // RELID_RELEASED received
    bool ever_opened = false;
    Open open = Open::Closed;
    CloseReason close_reason = CloseReason::Guest;
    bool close_when_opened = false;       // a close was asked for while Opening
    std::optional<OpenChannel> reopen;    // OPENCHANNEL received while Closing
    std::shared_ptr<UniqueFd> doorbell;
    std::shared_ptr<ChannelQueue> queue;  // Opening, Open, Closing
    uint32_t ring_gpadl = 0;
    uint32_t openid = 0;
    uint32_t target_vp = 0;
    uint64_t epoch = 0;  // bumped at every open; completions carry it
};

Server::Server(MessageSink& sink, const GuestMemory& memory, uint32_t num_vps, Executor& control, EventLoop* loop,
               std::function<uint64_t()> reference_time)
    : sink_(sink),
      memory_(memory),
      num_vps_(num_vps),
      // Every GPADL page entry costs us 8 bytes: bound them by twice the guest's RAM.
      max_gpadl_pages_total_(std::max<uint64_t>(2 * (memory.total_size() / kPageSize), 1ULL << 16)),
      control_(control),
      loop_(loop),
      reference_time_(std::move(reference_time)) {
    LockGuard lock(doorbell_mu_);
    doorbells_.resize(kMaxRelid + 1);
}

Server::~Server() {
    alive_.reset();
    LockGuard lock(mu_);
    for (auto& [relid, ch] : channels_) {
        if (ch->queue) ch->queue->shutdown();
        if (hooks_ && ch->doorbell) hooks_->removed(ch->connection_id, ch->doorbell->get());
    }
}

void Server::set_doorbell_hooks(DoorbellHooks* hooks) { hooks_ = hooks; }

void Server::set_ram_control(RamControl* ram) { ram_ = ram; }

void Server::set_tl_connect_handler(TlConnectHandler handler) { tl_handler_ = std::move(handler); }

bool Server::instance_in_use(const Guid& instance) const {
    LockGuard lock(mu_);
    for (const auto& [relid, ch] : channels_)
        if (ch->slot->offer.instance_id == instance) return true;
    return false;
}

void Server::on_tl_connect(const TlConnectRequest& m) {
    if (!tl_handler_ || tl_pending_.load(std::memory_order_relaxed) >= kMaxPendingTlConnects) {
        ++stats_.tl_connects_dropped;
        ENL_LOG_LIMITED(info, "vmbus: hv_sock connection request to {} dropped ({})", m.host_service_id.to_string(),
                        tl_handler_ ? "too many waiting" : "no hv_sock service");
        return;
    }
    ++stats_.tl_connects;
    tl_pending_.fetch_add(1, std::memory_order_relaxed);
    post([endpoint = m.guest_endpoint_id, service = m.host_service_id](Server& s) {
        s.tl_pending_.fetch_sub(1, std::memory_order_relaxed);
        s.tl_handler_(endpoint, service);
    });
}

Server::Poster Server::poster() { return Poster{&control_, alive_, this}; }

void Server::Poster::operator()(std::move_only_function<void(Server&)> fn) const {
    exec->post([alive = alive, self = self, fn = std::move(fn)]() mutable {
        if (alive.lock()) fn(*self);
    });
}

void Server::post(std::move_only_function<void(Server&)> fn) { poster()(std::move(fn)); }

Server::Channel* Server::find(uint32_t relid) {
    auto it = channels_.find(relid);
    return it == channels_.end() ? nullptr : it->second.get();
}

void Server::set_doorbell(uint32_t relid, std::shared_ptr<UniqueFd> fd) {
    LockGuard lock(doorbell_mu_);
    doorbells_[relid] = std::move(fd);
}

Result<uint32_t> Server::new_channel(const std::shared_ptr<DeviceSlot>& slot, uint16_t index) {
    uint32_t relid = 1;
    while (relid <= kMaxRelid && channels_.count(relid)) ++relid;
    if (relid > kMaxRelid) return fail(Errc::Busy, "no free VMBus channel id");
    auto fd = std::make_shared<UniqueFd>(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd->valid()) return fail_errno("eventfd for a VMBus channel");
    auto ch = std::make_unique<Channel>();
    ch->relid = relid;
    ch->connection_id = kChannelConnectionBase + relid;
    ch->slot = slot;
    ch->index = index;
    ch->doorbell = fd;
    if (slot->relids.size() <= index) slot->relids.resize(index + 1u, 0);
    slot->relids[index] = relid;
    if (hooks_) hooks_->added(ch->connection_id, fd->get());
    set_doorbell(relid, std::move(fd));
    Channel& c = *ch;
    channels_[relid] = std::move(ch);
    if (version_ != 0 && offers_requested_ && !resetting_) send_offer(c);
    return relid;
}

Result<uint32_t> Server::add_device(std::shared_ptr<Device> device) {
    auto slot = std::make_shared<DeviceSlot>(*this, std::move(device));
    // The attach is queued before the offer can reach the guest: a connected guest may answer
    // the offer with OPENCHANNEL on another vCPU at once, and that open is queued behind it
    // (posted after the offer went out). Queued after the offer, the open could run first and
    // find the device unattached (seen: a service re-enabled through the API, 1 run in 5).
    DeviceResources res{slot.get(), &memory_, loop_, reference_time_, ram_};
    post([slot, res](Server&) { slot->device->attach(res); });
    uint32_t relid = 0;
    {
        LockGuard lock(mu_);
        auto r = new_channel(slot, 0);
        if (!r) {
            post([slot](Server&) { slot->device->detach(); });
            return std::unexpected(r.error());
        }
        relid = *r;
        devices_.push_back(slot);
    }
    return relid;
}

Result<> Server::rescind(uint32_t relid) {
    LockGuard lock(mu_);
    Channel* ch = find(relid);
    if (!ch || ch->index != 0 || ch->slot->withdrawn) return fail(Errc::NotFound, "no device with channel {} to rescind", relid);
    auto slot = ch->slot;
    slot->withdrawn = true;
    std::vector<std::pair<uint16_t, uint32_t>> group;  // (index, relid)
    for (auto& [r, c] : channels_)
        if (c->slot == slot) group.emplace_back(c->index, r);
    // Sub-channels first, as Hyper-V does, then the primary.
    std::sort(group.begin(), group.end(), std::greater<>());
    for (const auto& entry : group)
        if (Channel* c = find(entry.second)) withdraw(*c);
    std::erase(devices_, slot);
    post([slot](Server&) {
        slot->device->reset();
        slot->device->detach();
    });
    return {};
}

// Takes a channel away from the guest: closes it if it is open, sends RESCIND if it was
// offered; it is erased once closed and released.
void Server::withdraw(Channel& ch) {
    if (ch.rescinded) return;
    ch.rescinded = true;
    if (ch.open == Channel::Open::Open) start_close(ch, CloseReason::Rescind);
    else if (ch.open == Channel::Open::Opening) ch.close_when_opened = true, ch.close_reason = CloseReason::Rescind;
    if (ch.slot->relids.size() > ch.index && ch.slot->relids[ch.index] == ch.relid) ch.slot->relids[ch.index] = 0;
    if (ch.offered) {
        RescindOffer m{{msg(MsgType::RescindChannelOffer), 0}, ch.relid};
        send(m);
    } else {
        ch.released = true;  // never offered in this connection: nothing for the guest to release
    }
    erase_if_done(ch.relid);
}

void Server::erase_if_done(uint32_t relid) {
    Channel* ch = find(relid);
    if (!ch || !ch->rescinded || !ch->released) return;
    if (ch->open != Channel::Open::Closed && ch->open != Channel::Open::Failed) return;
    if (ch->queue) ch->queue->shutdown();
    if (ch->offered) drop_channel_gpadls(relid);
    if (hooks_) hooks_->removed(ch->connection_id, ch->doorbell->get());
    set_doorbell(relid, nullptr);
    channels_.erase(relid);
}

// The guest released a rescinded channel without tearing its GPADLs down (Linux skips the
// teardown of a rescinded channel's GPADLs): forget them, without a reply.
void Server::drop_channel_gpadls(uint32_t relid) {
    for (auto it = assembling_.begin(); it != assembling_.end();) {
        if (it->second.relid == relid) {
            gpadl_pages_total_ -= std::min(gpadl_pages_total_, it->second.expected_pages);
            it = assembling_.erase(it);
        } else {
            ++it;
        }
    }
    for (uint32_t handle : gpadls_->handles_of(relid)) {
        const auto g = gpadls_->find(handle);
        const uint64_t pages = g ? g->pfns.size() : 0;
        const uint64_t conn = connection_;
        const auto result = gpadls_->remove(handle, [post = poster(), pages, conn] {
            post([pages, conn](Server& s) {
                LockGuard lock(s.mu_);
                if (conn == s.connection_) s.gpadl_pages_total_ -= std::min(s.gpadl_pages_total_, pages);
            });
        });
        if (result == GpadlMap::Teardown::Done) gpadl_pages_total_ -= std::min(gpadl_pages_total_, pages);
    }
}

hv::Status Server::handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload) {
    if (connection_id != kMessageConnectionId && connection_id != kMessageConnectionId4)
        return hv::Status::InvalidConnectionId;
    LockGuard lock(mu_);
    ++stats_.messages;
    const auto header = read_prefix<MessageHeader>(payload);
    if (!header) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: message of {} bytes has no header", payload.size());
        return hv::Status::Success;
    }
    const auto type = static_cast<MsgType>(header->msgtype);
    const size_t need = min_size(type);
    if (need == 0 || payload.size() < need) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: ignoring message type {} of {} bytes", header->msgtype, payload.size());
        return hv::Status::Success;
    }
    // Everything but the handshake needs a connection; nothing is taken while resetting.
    if ((version_ == 0 && type != MsgType::InitiateContact && type != MsgType::Unload) || resetting_) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: message type {} {}", header->msgtype,
                        resetting_ ? "while the connection resets" : "before INITIATE_CONTACT");
        return hv::Status::Success;
    }
    switch (type) {
        case MsgType::InitiateContact: on_initiate_contact(vp, read_padded<InitiateContact>(payload)); break;
        case MsgType::RequestOffers: on_request_offers(); break;
        case MsgType::Unload: on_unload(vp); break;
        case MsgType::GpadlHeader: on_gpadl_header(payload); break;
        case MsgType::GpadlBody: on_gpadl_body(payload); break;
        case MsgType::GpadlTeardown: on_gpadl_teardown(read_padded<GpadlTeardown>(payload)); break;
        case MsgType::OpenChannel: on_open_channel(read_padded<OpenChannel>(payload)); break;
        case MsgType::CloseChannel: on_close_channel(read_padded<CloseChannel>(payload).child_relid); break;
        case MsgType::RelidReleased: on_relid_released(read_padded<RelidReleased>(payload).child_relid); break;
        case MsgType::ModifyChannel: on_modify_channel(read_padded<ModifyChannel>(payload)); break;
        case MsgType::TlConnectRequest: on_tl_connect(read_padded<TlConnectRequest>(payload)); break;
        default: break;
    }
    return hv::Status::Success;
}

hv::Status Server::handle_event(uint32_t, uint32_t connection_id, uint16_t flag) {
    if (flag != 0) return hv::Status::InvalidParameter;
    if (connection_id <= kChannelConnectionBase || connection_id > kChannelConnectionBase + kMaxRelid)
        return hv::Status::InvalidConnectionId;
    std::shared_ptr<UniqueFd> fd;
    {
        LockGuard lock(doorbell_mu_);
        fd = doorbells_[connection_id - kChannelConnectionBase];
    }
    if (!fd) return hv::Status::InvalidConnectionId;
    doorbell_count_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(fd->get(), &one, sizeof(one));
    return hv::Status::Success;
}

void Server::on_initiate_contact(uint32_t vp, const InitiateContact& m) {
    const uint32_t requested = m.vmbus_version_requested;
    VersionResponse resp{};
    resp.header.msgtype = msg(MsgType::VersionResponse);
    const bool target_ok = m.target_vcpu < num_vps_;
    const uint32_t sint = requested >= kVersionWin10V5 ? static_cast<uint32_t>(m.interrupt_page_or_sint & 0xff) : kMessageSint;
    if (!version_supported(requested) || !target_ok || sint >= hv::kSintCount) {
        // Refused: the guest tries its next lower version. Answer on the VP that asked.
        log::debug("vmbus: refusing version {} (target VP {}, SINT {})", version_string(requested), m.target_vcpu, sint);
        resp.version_supported = 0;
        const uint32_t saved = msg_sint_;
        if (sint < hv::kSintCount) msg_sint_ = sint;
        send_to(target_ok ? m.target_vcpu : vp, as_bytes(resp));
        msg_sint_ = saved;
        return;
    }
    // A new contact while connected (kexec without unload) starts over once every channel
    // has closed.
    if (version_ != 0) {
        ResetWork work;
        work.contact = m;
        begin_reset(std::move(work));
        return;
    }
    version_ = requested;
    target_vp_ = m.target_vcpu;
    msg_sint_ = sint;
    ++stats_.connects;
    resp.version_supported = 1;
    resp.msg_conn_id = requested >= kVersionWin10V5 ? kMessageConnectionId4 : kMessageConnectionId;
    ENL_LOG_LIMITED(info, "vmbus: guest connected, protocol version {}", version_string(requested));
    send(resp);
}

void Server::send_offer(Channel& ch) {
    const OfferParams& p = ch.slot->offer;
    OfferChannel m{};
    m.header.msgtype = msg(MsgType::OfferChannel);
    m.if_type = p.class_id;
    m.if_instance = p.instance_id;
    m.chn_flags = p.flags;
    m.mmio_megabytes = p.mmio_megabytes;
    std::copy(p.user_def.begin(), p.user_def.end(), m.user_def);
    m.sub_channel_index = ch.index;
    m.child_relid = ch.relid;
    m.monitorid = 0;
    m.monitor_allocated = 0;       // no monitor pages: the guest always uses HvSignalEvent
    m.is_dedicated_interrupt = 1;  // the guest need not set bits in its interrupt page
    m.connection_id = ch.connection_id;
    ch.offered = true;
    send(m);
}

void Server::on_request_offers() {
    offers_requested_ = true;
    for (auto& [relid, ch] : channels_)
        if (!ch->offered && !ch->rescinded && !ch->slot->withdrawn) send_offer(*ch);
    MessageHeader done{msg(MsgType::AllOffersDelivered), 0};
    send(done);
}

void Server::start_close(Channel& ch, CloseReason why) {
    ch.open = Channel::Open::Closing;
    ch.close_reason = why;
    ++stats_.closes;
    post([slot = ch.slot, index = ch.index, relid = ch.relid, epoch = ch.epoch](Server& s) {
        // The completion may come from any thread: it re-enters the state machine on the control loop.
        slot->device->close(index, [post = s.poster(), relid, epoch] {
            post([relid, epoch](Server& s2) { s2.close_done(relid, epoch); });
        });
    });
}

// The primary closed: its sub-channels close and are withdrawn, as Hyper-V and OpenVMM do;
// the device enables them again after the next open (storvsc and netvsc ask every time).
void Server::close_subchannels(DeviceSlot& slot) {
    for (uint16_t i = 1; i < slot.relids.size(); ++i)
        if (Channel* sub = find(slot.relids[i])) {
            if (sub->open == Channel::Open::Open) start_close(*sub, CloseReason::PrimaryClosed);
            else if (sub->open == Channel::Open::Opening)
                sub->close_when_opened = true, sub->close_reason = CloseReason::PrimaryClosed;
            withdraw(*sub);
        }
    slot.relids.resize(1);
    slot.enabled = 0;
}

void Server::begin_reset(ResetWork work) {
    if (resetting_) {
        // Already resetting (e.g. shutdown during an unload): finish with this work too.
        for (auto& d : work.done) resetting_->done.push_back(std::move(d));
        resetting_->reply_unload |= work.reply_unload;
        return;
    }
    resetting_ = std::move(work);
    for (auto& [relid, ch] : channels_) {
        ch->reopen.reset();
        switch (ch->open) {
            case Channel::Open::Open: start_close(*ch, CloseReason::Reset); break;
            case Channel::Open::Opening:
                ch->close_when_opened = true;
                ch->close_reason = CloseReason::Reset;
                break;
            case Channel::Open::Closing: ch->close_reason = CloseReason::Reset; break;
            default: break;
        }
    }
    assembling_.clear();
    // Views are only acquired under mu_: if none is held now, none will be.
    if (gpadls_->held_views() == 0) {
        gpadls_->remove_all(nullptr);
        resetting_->gpadls_released = true;
    } else {
        const uint64_t conn = connection_;
        gpadls_->remove_all([post = poster(), conn] {
            post([conn](Server& s) { s.all_gpadls_released(conn); });
        });
    }
    check_reset_done();
}

void Server::all_gpadls_released(uint64_t connection) {
    LockGuard lock(mu_);
    if (!resetting_ || connection != connection_) return;
    resetting_->gpadls_released = true;
    check_reset_done();
}

void Server::check_reset_done() {
    if (!resetting_ || !resetting_->gpadls_released) return;
    for (auto& [relid, ch] : channels_)
        if (ch->open == Channel::Open::Opening || ch->open == Channel::Open::Closing) return;
    ResetWork work = std::move(*resetting_);
    resetting_.reset();
    ++connection_;
    // Sub-channels and withdrawn channels go; primaries wait to be offered again.
    for (auto it = channels_.begin(); it != channels_.end();) {
        Channel& ch = *it->second;
        if (ch.index != 0 || ch.rescinded || ch.slot->withdrawn || ch.slot->offer.withdraw_on_reset) {
            if (ch.queue) ch.queue->shutdown();
            if (hooks_) hooks_->removed(ch.connection_id, ch.doorbell->get());
            set_doorbell(ch.relid, nullptr);
            it = channels_.erase(it);
            continue;
        }
        ch.open = Channel::Open::Closed;
        ch.offered = false;
        ch.released = false;
        ch.ever_opened = false;
        ch.queue.reset();
        ch.ring_gpadl = 0;
        ++it;
    }
    for (auto& slot : devices_) {
        slot->relids.resize(1);
        slot->enabled = 0;
        if (slot->offer.withdraw_on_reset) {
            slot->withdrawn = true;
            post([slot](Server&) {
                slot->device->reset();
                slot->device->detach();
            });
        } else {
            post([slot](Server&) { slot->device->reset(); });
        }
    }
    std::erase_if(devices_, [](const auto& slot) { return slot->withdrawn; });
    gpadl_pages_total_ = 0;
    version_ = 0;
    offers_requested_ = false;
    if (work.reply_unload) {
        MessageHeader resp{msg(MsgType::UnloadResponse), 0};
        send_to(work.reply_vp, as_bytes(resp));
        ENL_LOG_LIMITED(info, "vmbus: guest unloaded");
    }
    if (work.contact) on_initiate_contact(work.reply_vp, *work.contact);
    for (auto& d : work.done) control_.post(std::move(d));
}

void Server::on_unload(uint32_t vp) {
    ++stats_.unloads;
    ResetWork work;
    work.reply_unload = true;
    work.reply_vp = version_ != 0 ? target_vp_ : vp;
    begin_reset(std::move(work));
}

void Server::shutdown(Task done) {
    LockGuard lock(mu_);
    ResetWork work;
    // After the reset, the devices are detached, then `done` runs.
    work.done.push_back([alive = std::weak_ptr<int>(alive_), this]() mutable {
        if (!alive.lock()) return;
        std::vector<std::shared_ptr<DeviceSlot>> slots;
        {
            LockGuard l(mu_);
            slots = devices_;
        }
        for (auto& slot : slots) slot->device->detach();
    });
    work.done.push_back(std::move(done));
    begin_reset(std::move(work));
}

void Server::on_gpadl_header(std::span<const uint8_t> payload) {
    const auto hdr = read_padded<GpadlHeader>(payload);
    GpadlCreated reply{{msg(MsgType::GpadlCreated), 0}, hdr.child_relid, hdr.gpadl, kStatusFailure};
    auto refuse = [&](std::string_view why) ENL_REQUIRES(mu_) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} for channel {} refused: {}", hdr.gpadl, hdr.child_relid, why);
        send(reply);
    };
    Channel* ch = find(hdr.child_relid);
    if (!ch || ch->rescinded || ch->released) return refuse("no such channel");
    if (assembling_.count(hdr.gpadl) || gpadls_->find(hdr.gpadl) || gpadls_->is_held(hdr.gpadl))
        return refuse("handle already in use");
    if (assembling_.size() + gpadls_->size() >= kMaxGpadls) return refuse("too many GPADLs");
    if (hdr.rangecount != 1) return refuse("only single-range GPADLs are supported");
    // The range's bytes say how many pages follow. Linux also writes range_buflen = 8 + 8 x
    // pages, in 16 bits (create_gpadl_header): past 8190 pages it wraps, so it is checked
    // modulo 2^16 only (reliability review A5: a GPADL of more pages was refused).
    if (hdr.byte_offset >= kPageSize || hdr.byte_count == 0) return refuse("bad byte count or offset");
    const uint64_t pages = (uint64_t{hdr.byte_offset} + hdr.byte_count + kPageSize - 1) / kPageSize;
    if (hdr.range_buflen != static_cast<uint16_t>(8 + 8 * pages))
        return refuse("range_buflen does not match the byte count and offset");
    if (pages > kMaxGpadlPages) return refuse("too many pages");
    if (gpadl_pages_total_ + pages > max_gpadl_pages_total_) return refuse("too many GPADL pages in total");
    PendingGpadl g;
    g.relid = hdr.child_relid;
    g.byte_count = hdr.byte_count;
    g.byte_offset = hdr.byte_offset;
    g.expected_pages = pages;
    g.pfns.reserve(static_cast<size_t>(pages));
    const size_t in_msg = std::min<size_t>((payload.size() - sizeof(GpadlHeader)) / 8, static_cast<size_t>(pages));
    g.pfns.resize(in_msg);
    std::memcpy(g.pfns.data(), payload.data() + sizeof(GpadlHeader), 8 * in_msg);
    gpadl_pages_total_ += pages;
    if (g.pfns.size() == g.expected_pages) return finish_gpadl(hdr.gpadl, std::move(g));
    assembling_[hdr.gpadl] = std::move(g);
}

void Server::on_gpadl_body(std::span<const uint8_t> payload) {
    const auto body = read_padded<GpadlBody>(payload);
    auto it = assembling_.find(body.gpadl);
    if (it == assembling_.end()) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: GPADL_BODY for unknown or complete GPADL {:#x}", body.gpadl);
        return;
    }
    // Bodies are reassembled in arrival order (Linux never sets msgnumber).
    PendingGpadl& g = it->second;
    const size_t room = static_cast<size_t>(g.expected_pages) - g.pfns.size();
    const size_t in_msg = std::min<size_t>((payload.size() - sizeof(GpadlBody)) / 8, room);
    const size_t at = g.pfns.size();
    g.pfns.resize(at + in_msg);
    std::memcpy(g.pfns.data() + at, payload.data() + sizeof(GpadlBody), 8 * in_msg);
    if (g.pfns.size() == g.expected_pages) {
        PendingGpadl done = std::move(g);
        assembling_.erase(it);
        finish_gpadl(body.gpadl, std::move(done));
    }
}

void Server::finish_gpadl(uint32_t handle, PendingGpadl g) {
    uint32_t status = 0;
    for (uint64_t pfn : g.pfns)
        if (pfn > kMaxPfn || !memory_.contains(pfn * kPageSize, kPageSize)) {
            ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} names page {:#x} outside guest RAM", handle, pfn);
            status = kStatusFailure;
            break;
        }
    GpadlCreated reply{{msg(MsgType::GpadlCreated), 0}, g.relid, handle, status};
    if (status == 0) {
        GpadlData data{handle, g.relid, g.byte_count, g.byte_offset, std::move(g.pfns)};
        if (!gpadls_->insert(std::move(data))) reply.creation_status = status = kStatusFailure;
    }
    if (status != 0) gpadl_pages_total_ -= g.expected_pages;
    else ++stats_.gpadls_created;
    send(reply);
}

void Server::on_gpadl_teardown(const GpadlTeardown& m) {
    if (auto it = assembling_.find(m.gpadl); it != assembling_.end() && it->second.relid == m.child_relid) {
        gpadl_pages_total_ -= it->second.expected_pages;
        assembling_.erase(it);
        GpadlTorndown reply{{msg(MsgType::GpadlTorndown), 0}, m.gpadl};
        send(reply);
        return;
    }
    auto g = gpadls_->find(m.gpadl);
    if (!g || g->relid != m.child_relid) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: teardown of unknown GPADL {:#x} (channel {})", m.gpadl, m.child_relid);
        return;
    }
    // The guest frees ring pages that an open channel still uses: stop using them first.
    if (Channel* ch = find(m.child_relid); ch && ch->ring_gpadl == m.gpadl) {
        if (ch->open == Channel::Open::Open) {
            ENL_LOG_LIMITED(warn, "vmbus: GPADL {:#x} torn down while channel {} is open; closing it", m.gpadl, ch->relid);
            start_close(*ch, CloseReason::Failure);
        } else if (ch->open == Channel::Open::Opening) {
            ch->close_when_opened = true;
            ch->close_reason = CloseReason::Failure;
        }
    }
    const uint64_t pages = g->pfns.size();
    const uint64_t conn = connection_;
    const uint32_t handle = m.gpadl;
    // Answered when nothing holds the pages any more: now, or when the last view goes.
    const auto result = gpadls_->remove(handle, [post = poster(), handle, pages, conn] {
        post([handle, pages, conn](Server& s) { s.gpadl_released(handle, pages, conn); });
    });
    if (result == GpadlMap::Teardown::Done) {
        gpadl_pages_total_ -= pages;
        ++stats_.gpadls_torn_down;
        GpadlTorndown reply{{msg(MsgType::GpadlTorndown), 0}, handle};
        send(reply);
    }
}

void Server::gpadl_released(uint32_t handle, uint64_t pages, uint64_t connection) {
    LockGuard lock(mu_);
    if (connection != connection_) return;  // the connection was reset meanwhile: nothing to answer
    gpadl_pages_total_ -= std::min(gpadl_pages_total_, pages);
    ++stats_.gpadls_torn_down;
    // After this reply we never touch those pages again: the guest frees them.
    GpadlTorndown reply{{msg(MsgType::GpadlTorndown), 0}, handle};
    send(reply);
}

void Server::on_open_channel(const OpenChannel& m) {
    OpenResult reply{{msg(MsgType::OpenChannelResult), 0}, m.child_relid, m.openid, kStatusFailure};
    auto refuse = [&](std::string_view why) ENL_REQUIRES(mu_) {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: OPENCHANNEL for channel {} refused: {}", m.child_relid, why);
        send(reply);
    };
    Channel* ch = find(m.child_relid);
    if (!ch || !ch->offered || ch->rescinded || ch->released) return refuse("no such channel");
    if (ch->open == Channel::Open::Closing && !ch->reopen) {
        // Answered once the close in progress completes.
        ch->reopen = m;
        return;
    }
    if (ch->open != Channel::Open::Closed) return refuse("channel is not closed");
    auto ring = gpadls_->find(m.ringbuffer_gpadl);
    if (!ring || ring->relid != m.child_relid) return refuse("ring GPADL is unknown or incomplete");
    for (auto& [relid, other] : channels_)
        if (other->ring_gpadl == m.ringbuffer_gpadl && other->open != Channel::Open::Closed)
            return refuse("ring GPADL is in use");
    if (ring->byte_offset != 0) return refuse("ring GPADL does not start on a page");
    if (m.target_vp >= num_vps_) return refuse("target VP does not exist");
    auto view = gpadls_->acquire(m.ringbuffer_gpadl);
    if (!view) return refuse(view.error().message());
    const OfferParams& p = ch->slot->offer;
    QueueParams qp{p.name, ch->relid, ch->index, msg_sint_, m.target_vp, p.max_packet_from_guest,
                   p.max_packet_to_guest, p.signal_every_packet};
    // Doorbells rung while the channel was closed mean nothing.
    uint64_t stale;
    [[maybe_unused]] auto got = ::read(ch->doorbell->get(), &stale, sizeof(stale));
    auto queue = ChannelQueue::create(std::move(qp), memory_, std::move(*view), m.downstream_ringbuffer_pageoffset,
                                      ch->doorbell, sink_);
    if (!queue) return refuse(queue.error().message());
    ch->queue = std::move(*queue);
    ch->ring_gpadl = m.ringbuffer_gpadl;
    ch->openid = m.openid;
    ch->target_vp = m.target_vp;
    ch->open = Channel::Open::Opening;
    ch->close_when_opened = false;
    ch->ever_opened = true;
    const uint64_t epoch = ++ch->epoch;
    ch->queue->set_on_failed([post = poster(), relid = ch->relid, epoch] {
        post([relid, epoch](Server& s) { s.channel_failed(relid, epoch); });
    });
    ++stats_.opens;
    OpenRequest req;
    req.index = ch->index;
    req.target_vp = m.target_vp;
    std::copy(std::begin(m.userdata), std::end(m.userdata), req.user_data.begin());
    req.vmbus_version = version_;
    post([slot = ch->slot, req, queue = ch->queue, relid = ch->relid, epoch](Server& s) mutable {
        slot->device->open(req, std::move(queue), [post = s.poster(), relid, epoch](Result<> r) mutable {
            post([relid, epoch, r = std::move(r)](Server& s2) mutable { s2.open_done(relid, epoch, std::move(r)); });
        });
    });
}

void Server::open_done(uint32_t relid, uint64_t epoch, Result<> result) {
    LockGuard lock(mu_);
    Channel* ch = find(relid);
    if (!ch || ch->epoch != epoch || ch->open != Channel::Open::Opening) {
        ENL_LOG_LIMITED(warn, "vmbus: channel {}: a stale or repeated open completion", relid);
        return;
    }
    // The guest waits for the result unless the connection is being reset.
    const bool answer = !(ch->close_when_opened && ch->close_reason == CloseReason::Reset);
    OpenResult reply{{msg(MsgType::OpenChannelResult), 0}, relid, ch->openid, result ? 0u : kStatusFailure};
    if (!result) {
        ENL_LOG_LIMITED(warn, "vmbus: channel {} ({}): the device refused the open: {}", relid, ch->slot->offer.name,
                        result.error().message());
        ch->queue->shutdown();
        ch->queue.reset();
        ch->ring_gpadl = 0;
        ch->open = Channel::Open::Closed;
        if (answer) send(reply);
        erase_if_done(relid);
        check_reset_done();
        return;
    }
    ch->open = Channel::Open::Open;
    if (answer) send(reply);
    if (ch->close_when_opened) return start_close(*ch, ch->close_reason);
    post([slot = ch->slot, index = ch->index](Server&) { slot->device->opened(index); });
}

void Server::close_done(uint32_t relid, uint64_t epoch) {
    LockGuard lock(mu_);
    Channel* ch = find(relid);
    if (!ch || ch->epoch != epoch || ch->open != Channel::Open::Closing) {
        ENL_LOG_LIMITED(warn, "vmbus: channel {}: a stale or repeated close completion", relid);
        return;
    }
    // The device no longer touches the rings: stop the queue and let the ring GPADL go.
    ch->queue->shutdown();
    ch->queue.reset();
    ch->ring_gpadl = 0;
    ch->open = ch->close_reason == CloseReason::Failure ? Channel::Open::Failed : Channel::Open::Closed;
    if (ch->reopen) {
        const OpenChannel m = *ch->reopen;
        ch->reopen.reset();
        if (ch->open == Channel::Open::Closed) on_open_channel(m);
        else send(OpenResult{{msg(MsgType::OpenChannelResult), 0}, m.child_relid, m.openid, kStatusFailure});
    }
    erase_if_done(relid);
    check_reset_done();
}

void Server::channel_failed(uint32_t relid, uint64_t epoch) {
    LockGuard lock(mu_);
    Channel* ch = find(relid);
    if (!ch || ch->epoch != epoch) return;
    if (ch->open == Channel::Open::Open) start_close(*ch, CloseReason::Failure);
    else if (ch->open == Channel::Open::Opening) ch->close_when_opened = true, ch->close_reason = CloseReason::Failure;
}

void Server::on_close_channel(uint32_t relid) {
    Channel* ch = find(relid);
    if (!ch) {
        ENL_LOG_LIMITED(warn, "vmbus: CLOSECHANNEL for unknown channel {}", relid);
        return;
    }
    // No reply; a rescinded channel stays rescinded.
    ch->reopen.reset();
    switch (ch->open) {
        case Channel::Open::Open: start_close(*ch, CloseReason::Guest); break;
        case Channel::Open::Opening:
            ch->close_when_opened = true;
            ch->close_reason = CloseReason::Guest;
            break;
        case Channel::Open::Failed: ch->open = Channel::Open::Closed; break;
        default: break;
    }
    if (ch->index == 0 && !ch->rescinded) close_subchannels(*ch->slot);
    erase_if_done(relid);
}

void Server::on_relid_released(uint32_t relid) {
    Channel* ch = find(relid);
    if (!ch) return;
    ch->released = true;
    if (ch->rescinded) return erase_if_done(relid);
    // The guest could not use the offer; it will not open it.
    if (ch->open == Channel::Open::Open) start_close(*ch, CloseReason::Guest);
}

void Server::on_modify_channel(const ModifyChannel& m) {
    uint32_t status = kStatusFailure;
    if (Channel* ch = find(m.child_relid); ch && m.target_vp < num_vps_) {
        ch->target_vp = m.target_vp;
        if (ch->queue) ch->queue->set_target_vp(m.target_vp);
        if (ch->open == Channel::Open::Open || ch->open == Channel::Open::Opening)
            post([slot = ch->slot, index = ch->index, vp = m.target_vp](Server&) { slot->device->retarget(index, vp); });
        status = 0;
    } else {
        ++stats_.bad_messages;
        ENL_LOG_LIMITED(warn, "vmbus: MODIFYCHANNEL of channel {} to VP {} refused", m.child_relid, m.target_vp);
    }
    // From 5.3 on the guest waits for the answer.
    if (version_ >= kVersionWin10V5_3) {
        ModifyChannelResponse resp{{msg(MsgType::ModifyChannelResponse), 0}, m.child_relid, status};
        send(resp);
    }
}

Result<uint16_t> Server::enable_subchannels(DeviceSlot& slot, uint16_t count) {
    LockGuard lock(mu_);
    if (count > slot.max_sub)
        return fail(Errc::Invalid, "{}: {} sub-channels asked for, at most {}", slot.offer.name, count, slot.max_sub);
    if (slot.withdrawn || resetting_) return fail(Errc::Closed, "{}: the device is not on the bus", slot.offer.name);
    Channel* primary = slot.relids.empty() ? nullptr : find(slot.relids[0]);
    if (!primary || primary->open != Channel::Open::Open)
        return fail(Errc::Closed, "{}: sub-channels need the primary channel open", slot.offer.name);
    while (slot.enabled < count) {
        const auto index = static_cast<uint16_t>(slot.enabled + 1);
        ENL_TRY_VOID(new_channel(primary->slot, index));
        slot.enabled = index;
    }
    return slot.enabled;
}

Result<GpadlView> Server::device_gpadl(const DeviceSlot& slot, uint32_t handle) {
    LockGuard lock(mu_);
    auto g = gpadls_->find(handle);
    const Channel* owner = g ? find(g->relid) : nullptr;
    if (!owner || owner->slot.get() != &slot) return fail(Errc::NotFound, "{}: no GPADL {:#x} on its channels", slot.offer.name, handle);
    return gpadls_->acquire(handle);
}

template <typename T>
void Server::send(const T& m) {
    send_to(target_vp_, as_bytes(m));
}

void Server::send_to(uint32_t vp, std::span<const uint8_t> bytes) {
    if (!sink_.send(vp, msg_sint_, bytes))
        ENL_LOG_LIMITED(warn, "vmbus: message queue of VP {} is full; message dropped", vp);
}

bool Server::connected() const {
    LockGuard lock(mu_);
    return version_ != 0;
}

uint32_t Server::version() const {
    LockGuard lock(mu_);
    return version_;
}

ServerStats Server::stats() const {
    LockGuard lock(mu_);
    ServerStats s = stats_;
    s.doorbells = doorbell_count_.load(std::memory_order_relaxed);
    return s;
}

std::vector<ChannelSnapshot> Server::channels() const {
    LockGuard lock(mu_);
    std::vector<ChannelSnapshot> out;
    for (const auto& [relid, ch] : channels_) {
        const OfferParams& p = ch->slot->offer;
        ChannelState st;
        switch (ch->open) {
            case Channel::Open::Opening: st = ChannelState::Opening; break;
            case Channel::Open::Open: st = ChannelState::Open; break;
            case Channel::Open::Closing: st = ChannelState::Closing; break;
            case Channel::Open::Failed: st = ChannelState::Failed; break;
            default: st = ch->ever_opened ? ChannelState::Closed : ChannelState::Offered; break;
        }
        if (ch->rescinded) st = ChannelState::Rescinded;
        else if (ch->released && ch->open == Channel::Open::Closed) st = ChannelState::Released;
        ChannelSnapshot snap{relid, ch->index, p.name, p.class_id, p.instance_id, st, ch->target_vp, {}, false};
        if (ch->queue && (ch->open == Channel::Open::Open || ch->open == Channel::Open::Closing)) {
            snap.rings = ch->queue->ring_states();  // the queue's locks come after ours
            snap.waiting_for_room = ch->queue->waiting_for_room();
        }
        out.push_back(std::move(snap));
    }
    return out;
}

size_t Server::gpadl_count() const {
    LockGuard lock(mu_);
    return assembling_.size() + gpadls_->size();
}

}  // namespace enlighten::vmbus
