#include "devices/hvsock/connection.hpp"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "common/log.hpp"
#include "devices/hvsock/protocol.hpp"

namespace enlighten::hvsock {

namespace {
// Ring bytes of a data packet with n bytes (descriptor, pipe header, data, padding, trailer).
constexpr uint32_t ring_bytes_for(uint32_t n) { return (16 + 8 + n + 7) / 8 * 8 + vmbus::kPacketTrailerSize; }
// When a full-size packet finds no room, a smaller one is tried before waiting.
constexpr uint32_t kSmallChunk = 4096;
// Packets moved per callback before the loop gets a turn (the rest in a posted pump).
constexpr int kBudget = 32;
}  // namespace

Connection::Connection(Params p)
    : id_(p.id), origin_(p.origin), fd_(std::move(p.fd)), loop_(p.loop), on_end_(std::move(p.on_end)) {
    offer_.name = fmt::format("hvsock{}", id_);
    offer_.class_id = p.service;
    offer_.instance_id = p.instance;
    offer_.flags = kOfferFlags;
    offer_.user_def[kUserDefConnFromHost] = origin_ == Origin::Host ? 1 : 0;
    offer_.max_packet_to_guest = kMaxPacketToGuest;
    offer_.max_packet_from_guest = kMaxPacketFromGuest;
    offer_.withdraw_on_reset = true;
    read_buf_.resize(kMaxData);
}

Connection::~Connection() { release_io(); }

void Connection::start(std::chrono::milliseconds open_timeout) {
    if (ended_) return;
    // Before the open only a hang-up matters (events 0: epoll reports EPOLLHUP/EPOLLERR).
    auto w = loop_->watch(fd_.get(), 0, [this](uint32_t ev) { on_socket(ev); });
    if (!w) return end(fmt::format("watching the host socket: {}", w.error().message()));
    fd_watch_ = *w;
    fd_events_ = 0;
    open_timer_ = loop_->post_after(open_timeout, [weak = weak_from_this()] {
        auto self = weak.lock();
        if (!self) return;
        self->open_timer_ = 0;
        if (!self->ended_ && !self->queue_) self->end("the guest did not open the channel in time");
    });
}

void Connection::open(const vmbus::OpenRequest&, std::shared_ptr<vmbus::ChannelQueue> queue, vmbus::OpenDone done) {
    if (ended_) return done(fail(Errc::Closed, "{}: the connection has ended", offer_.name));
    if (open_timer_) loop_->cancel(open_timer_);
    open_timer_ = 0;
    if (origin_ == Origin::Host) {
        // The client learns that the guest accepted, and the port the guest sees as its peer.
        const std::string ok = fmt::format("OK {}\n", port_of(offer_.instance_id));
        const ssize_t n = ::send(fd_.get(), ok.data(), ok.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n != static_cast<ssize_t>(ok.size())) {
            const std::string why = fmt::format("writing OK to the host client: {}", n < 0 ? std::strerror(errno) : "short write");
            done(fail(Errc::Io, "{}: {}", offer_.name, why));
            return end(why);
        }
    }
    auto w = loop_->watch(queue->notify_fd(), EPOLLIN, [this](uint32_t) { on_doorbell(); });
    if (!w) {
        done(std::unexpected(w.error()));
        return end("watching the channel's doorbell failed");
    }
    queue_watch_ = *w;
    queue_ = std::move(queue);
    update_watch();
    done({});
}

void Connection::opened(uint16_t) { on_doorbell(); }

void Connection::close(uint16_t, vmbus::CloseDone done) {
    auto self = shared_from_this();
    if (queue_watch_) loop_->unwatch(queue_watch_);
    queue_watch_ = 0;
    queue_.reset();
    if (!ended_) end("the guest closed the channel");
    done();
}

void Connection::reset() {
    if (!ended_) end("the VMBus connection was reset", false);
}

void Connection::detach() {
    ended_ = true;
    on_end_ = nullptr;
    release_io();
}

void Connection::on_doorbell() {
    auto self = shared_from_this();
    if (!queue_ || ended_) return;
    queue_->drain_notify();
    pump_from_guest();
    pump_to_guest();  // a doorbell also says the guest made room in its ring
}

void Connection::on_socket(uint32_t events) {
    auto self = shared_from_this();
    if (ended_) return;
    if (events & EPOLLERR) return end("error on the host socket");
    if (!queue_) {
        // Not open yet: the host side gave up.
        if (events & EPOLLHUP) end("the host side closed before the guest opened the channel");
        return;
    }
    if ((events & EPOLLOUT) && flush_to_host()) pump_from_guest();
    if (ended_) return;
    if (events & EPOLLIN) pump_to_guest();
    if (ended_) return;
    if (events & EPOLLHUP) {
        // The peer closed both ways: what it wrote is still read (the doorbell and posted
        // pumps drive that), but the socket is no longer watched (EPOLLHUP stays ready), and
        // guest data from now on fails to write and ends the connection.
        host_hup_ = true;
        update_watch();
        pump_from_guest();
    }
}

bool Connection::flush_to_host() {
    while (to_host_off_ < to_host_.size()) {
        if (!fd_.valid()) {
            end("the host socket is closed");
            return false;
        }
        const ssize_t n = ::send(fd_.get(), to_host_.data() + to_host_off_, to_host_.size() - to_host_off_,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            to_host_off_ += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            update_watch();
            return false;
        }
        end(fmt::format("writing to the host socket: {}", n < 0 ? std::strerror(errno) : "no progress"));
        return false;
    }
    if (!to_host_.empty()) {
        to_host_.clear();
        to_host_off_ = 0;
        update_watch();
    }
    return true;
}

void Connection::pump_from_guest() {
    for (int n = 0; n < kBudget; ++n) {
        if (!flush_to_host()) return;  // the socket is full (EPOLLOUT resumes), or the end
        if (ended_ || !queue_) return;
        if (guest_fin_) {
            if (!host_shut_) {
                host_shut_ = true;
                if (!host_hup_) ::shutdown(fd_.get(), SHUT_WR);
            }
            return maybe_finish();
        }
        auto p = queue_->peek();
        if (!p) return;  // closed, or a corrupt ring: the server closes the channel
        if (!*p) {
            if (queue_->arm()) return;
            continue;
        }
        const vmbus::PacketView& pkt = **p;
        if (pkt.type != vmbus::kPacketDataInband)
            return end(fmt::format("the guest sent a packet of type {}", pkt.type));
        auto data = parse_pipe_payload(pkt.payload);
        if (!data) return end(data.error().message());
        if (data->empty()) {
            log::debug("hv_sock {}: FIN from the guest after {} bytes", offer_.name, stats_.bytes_from_guest);
            guest_fin_ = true;
        } else {
            to_host_.assign(data->begin(), data->end());
            to_host_off_ = 0;
            stats_.bytes_from_guest += data->size();
        }
        queue_->consume();
    }
    // The rest in a later round.
    loop_->post([weak = weak_from_this()] {
        if (auto self = weak.lock(); self && !self->ended_) self->pump_from_guest();
    });
}

bool Connection::send_fin() {
    auto r = queue_->reserve(ring_bytes_for(0));
    if (!r) {
        if (r.error().is(Errc::Busy)) {
            fin_pending_ = true;
            ring_full_ = true;
        }
        return false;
    }
    PipeHeader h{kPipeData, 0};
    const iovec iov[] = {{&h, sizeof(h)}};
    if (auto ok = queue_->commit(std::move(*r), vmbus::OutPacket::inband(0, iov)); !ok) {
        end(fmt::format("sending FIN: {}", ok.error().message()));
        return false;
    }
    fin_pending_ = false;
    fin_sent_ = true;
    log::debug("hv_sock {}: FIN to the guest after {} bytes", offer_.name, stats_.bytes_to_guest);
    maybe_finish();
    return true;
}

void Connection::pump_to_guest() {
    if (ended_ || !queue_) return;
    ring_full_ = false;
    if (fin_pending_ && !send_fin()) return update_watch();
    if (host_eof_ || !fd_.valid()) return update_watch();
    for (int n = 0; n < kBudget; ++n) {
        ssize_t got;
        {
            // Room first, then the read: what is read always fits.
            uint32_t cap = kMaxData;
            auto r = queue_->reserve(ring_bytes_for(kMaxData));
            if (!r && r.error().is(Errc::Busy)) {
                cap = kSmallChunk;
                r = queue_->reserve(ring_bytes_for(kSmallChunk));
            }
            if (!r) {
                if (!r.error().is(Errc::Busy)) return;  // closed: the server closes us
                ring_full_ = true;                       // the guest's doorbell resumes
                return update_watch();
            }
            got = ::recv(fd_.get(), read_buf_.data(), cap, MSG_DONTWAIT);
            if (got > 0) {
                PipeHeader h{kPipeData, static_cast<uint32_t>(got)};
                const iovec iov[] = {{&h, sizeof(h)}, {read_buf_.data(), static_cast<size_t>(got)}};
                if (auto ok = queue_->commit(std::move(*r), vmbus::OutPacket::inband(0, iov)); !ok)
                    return end(fmt::format("sending to the guest: {}", ok.error().message()));
                stats_.bytes_to_guest += static_cast<uint64_t>(got);
                continue;
            }
        }
        if (got == 0) {
            host_eof_ = true;
            update_watch();
            send_fin();
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return update_watch();
        return end(fmt::format("reading the host socket: {}", std::strerror(errno)));
    }
    loop_->post([weak = weak_from_this()] {
        if (auto self = weak.lock(); self && !self->ended_) self->pump_to_guest();
    });
}

void Connection::maybe_finish() {
    if (!ended_ && fin_sent_ && guest_fin_ && host_shut_ && to_host_.empty()) end("closed by both sides");
}

void Connection::update_watch() {
    if (ended_ || !fd_watch_) return;
    if (host_hup_) {
        loop_->unwatch(fd_watch_);
        fd_watch_ = 0;
        return;
    }
    uint32_t ev = 0;
    if (queue_ && !host_eof_ && !ring_full_) ev |= EPOLLIN;
    if (to_host_off_ < to_host_.size()) ev |= EPOLLOUT;
    if (ev == fd_events_) return;
    if (loop_->modify(fd_watch_, ev)) fd_events_ = ev;
}

void Connection::end(const std::string& why, bool rescind) {
    if (ended_) return;
    ended_ = true;
    log::debug("hv_sock {}: ended ({}); {} bytes to the guest, {} from it", offer_.name, why, stats_.bytes_to_guest,
               stats_.bytes_from_guest);
    release_io();
    if (auto cb = std::exchange(on_end_, nullptr)) cb(id_, why, rescind);
}

void Connection::release_io() {
    if (loop_) {
        if (queue_watch_) loop_->unwatch(queue_watch_);
        if (fd_watch_) loop_->unwatch(fd_watch_);
        if (open_timer_) loop_->cancel(open_timer_);
    }
    queue_watch_ = fd_watch_ = 0;
    open_timer_ = 0;
    queue_.reset();
    fd_.reset();
}

}  // namespace enlighten::hvsock
