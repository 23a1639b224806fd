#include "devices/netvsp/netvsp.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>

#include "common/sandbox.hpp"
#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/thread_annotations.hpp"
#include "devices/netvsp/protocol.hpp"
#include "devices/netvsp/rndis.hpp"
#include "kvm/guest_memory.hpp"
#include "vmbus/queue.hpp"

namespace enlighten::netvsp {

namespace {

constexpr uint32_t kSendSectionSize = 6144;      // what OpenVMM answers (§2.5)
constexpr uint32_t kControlReserve = 16;         // sections data never takes (§4.6)
constexpr uint32_t kMaxRangesPerPacket = 64;     // type-7 batch: NAPI weight (§4.3)
constexpr size_t kMaxControlBytes = 100 * 1024;  // queued control responses (§8)
constexpr size_t kMaxGpaRanges = 64;             // the guest sends at most 32 (§4.1, §8)
constexpr size_t kMaxTxBytes = 65536 + 4096;     // LSO frame + RNDIS header and slack (§8)
constexpr uint32_t kMaxMessagesPerPacket = 512;
constexpr size_t kMaxControlMessage = 8192;
constexpr uint32_t kDrainBudget = 256;           // packets per round before the worker yields
// After a burst the worker looks at the ring again this much later, the guest's doorbell still
// masked, and only unmasks it when that look finds nothing: a guest that keeps sending (small
// packets, one per sendto) then writes without a doorbell exit, and its completions go back in
// batches, one interrupt each. A lone packet (a ping, a request) still rings and is taken at
// once; what follows it within the window waits at most this long. Not while the NIC is also
// receiving: then what the guest sends is mostly TCP's ACKs, which pace the peer, and waiting
// on them cost TCP from the host 6-12% in the test host. (QEMU's virtio-net gets the same from
// its TX bottom half: about a tenth of an exit per 64-byte datagram.)
constexpr long kTxPollWindowNs = 200'000;
// The completions of the guest's sends (which hv_netvsc does not wait for: they free its send
// sections and skbs) go back without an interrupt each: one interrupt for up to this many, or
// this late after the first, or when the worker goes idle or finds the guest's ring full.
// Under its socket's send buffer (212992 bytes, a few hundred small skbs) and TCP's
// small-queue limit, so a sender never waits for them long.
constexpr uint32_t kMaxDeferredCompletions = 32;
constexpr std::chrono::microseconds kMaxCompletionDelay{1000};
constexpr uint32_t kMaxSections = 1u << 20;
constexpr uint16_t kMaxChannels = vmbus::kMaxSubchannels + 1;

// S for an NDIS_CONFIG mtu (OpenVMM buffers.rs sub_allocation_size_for_mtu).
uint32_t section_size_for_mtu(uint32_t mtu) { return 256 + mtu + 36; }

// What a completion to the guest occupies in its ring (a 40-byte NVSP message at most).
const size_t kCompletionRingBytes = [] {
    static const uint8_t zero[sizeof(NvspMessage)] = {};
    const iovec iov = iov_of(zero);
    return vmbus::OutPacket::completion(0, std::span(&iov, 1)).ring_bytes();
}();

template <typename T>
NvspMessage nvsp_of(const T& v) {
    static_assert(sizeof(T) <= sizeof(NvspMessage));
    NvspMessage m{};
    std::memcpy(&m, &v, sizeof(T));
    return m;
}

}  // namespace

// ---------------------------------------------------------------------------- Impl

// Adds `more`'s packets, bytes and drops to `sum` (not its index or vCPU).
static void add_traffic(QueueCounters& sum, const QueueCounters& more) {
    sum.rx_packets += more.rx_packets, sum.rx_bytes += more.rx_bytes, sum.rx_dropped += more.rx_dropped;
    sum.tx_packets += more.tx_packets, sum.tx_bytes += more.tx_bytes, sum.tx_dropped += more.tx_dropped;
}

struct Nic::Impl : std::enable_shared_from_this<Nic::Impl> {
    class Worker;
    struct RxPort final : net::Receiver {
        explicit RxPort(Impl& i) : impl(i) {}
        bool receive(std::span<const iovec> frame, const net::Offload& offload) override {
            return impl.receive(frame, offload);
        }
        void flush() override { impl.flush(); }
        [[nodiscard]] int room_fd() const override { return impl.room_fd_.get(); }
        Impl& impl;
    };

    // One open channel's RX state and counters (under mu_).
    struct Chan {
        std::shared_ptr<vmbus::ChannelQueue> q;
        QueueCounters counters;
        std::vector<vmbus::XferRange> pending;  // written, not announced yet
        std::vector<uint32_t> pending_sections;
        std::map<uint64_t, std::vector<uint32_t>> outstanding;  // type-7 trans_id -> sections
        uint32_t held = 0;  // sections pending or outstanding
        bool flush_blocked = false;  // a flush found the ring full: the worker retries on room
    };

    Impl(NicOptions o, std::unique_ptr<net::Backend> b);

    // The last reference: the backend must not keep a pointer into this.
    ~Impl();

    // --- control loop ---
    void open(const vmbus::OpenRequest& req, std::shared_ptr<vmbus::ChannelQueue> q, vmbus::OpenDone done);
    void close(uint16_t index, vmbus::CloseDone done);
    void reset_protocol() ENL_REQUIRES(mu_);
    void apply_receiver() ENL_EXCLUDES(mu_);
    void request_receiver_update() ENL_REQUIRES(mu_);

    // --- workers ---
    void handle(Worker& w, const vmbus::PacketView& p, vmbus::Reservation room) ENL_EXCLUDES(mu_);
    uint32_t handle_rndis(Worker& w, const vmbus::PacketView& p, const NvspRndisPacket& r) ENL_EXCLUDES(mu_);
    bool control(uint16_t index, std::span<const uint8_t> msg) ENL_EXCLUDES(mu_);
    void rx_completion(uint16_t index, const vmbus::PacketView& p) ENL_EXCLUDES(mu_);
    void on_room(uint16_t index) ENL_EXCLUDES(mu_);

    // --- RX (backend threads) ---
    bool receive(std::span<const iovec> frame, const net::Offload& offload) ENL_EXCLUDES(mu_);
    void flush() ENL_EXCLUDES(mu_);

    // --- under the lock ---
    void flush_locked(Chan& c) ENL_REQUIRES(mu_);
    void pump_control_locked() ENL_REQUIRES(mu_);
    bool queue_control_locked(std::vector<uint8_t> msg) ENL_REQUIRES(mu_);
    void free_sections_locked(Chan& c, const std::vector<uint32_t>& sections) ENL_REQUIRES(mu_);
    void drop_channel_rx_locked(Chan& c) ENL_REQUIRES(mu_);
    void drop_recv_buffer_locked() ENL_REQUIRES(mu_);
    [[nodiscard]] bool rx_ready_locked() const ENL_REQUIRES(mu_);
    [[nodiscard]] uint16_t open_count_locked() const ENL_REQUIRES(mu_);
    void signal_room_locked() ENL_REQUIRES(mu_);
    [[nodiscard]] NicConfig config_locked() const ENL_REQUIRES(mu_);
    [[nodiscard]] uint16_t max_sub() const {
        return static_cast<uint16_t>(std::min<uint32_t>(std::max<uint16_t>(opt.max_queues, 1), kMaxChannels) - 1);
    }

    const NicOptions opt;
    const std::unique_ptr<net::Backend> backend;
    net::Capabilities caps;
    vmbus::OfferParams offer;
    RxPort rx;
    UniqueFd room_fd_;
    // Control loop only.
    std::vector<std::unique_ptr<Worker>> workers_;  // by channel index

    mutable Mutex mu_;
    vmbus::DeviceResources res_ ENL_GUARDED_BY(mu_);
    std::vector<std::unique_ptr<Chan>> chans_ ENL_GUARDED_BY(mu_);  // by channel index
    // What channels that closed counted, by index: the API's per-queue counters run from the
    // NIC's creation, across the guest's re-inits (MTU and channel changes) and reboots.
    std::vector<QueueCounters> closed_counts_ ENL_GUARDED_BY(mu_);
    std::array<uint8_t, 6> mac_ ENL_GUARDED_BY(mu_){};
    bool link_up_ ENL_GUARDED_BY(mu_) = true;
    // NVSP (§2), reset at every open of the primary.
    uint32_t nvsp_version_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t ndis_mtu_ ENL_GUARDED_BY(mu_) = 0;  // 0: no NDIS_CONFIG yet (1514 assumed)
    vmbus::GpadlView recv_ ENL_GUARDED_BY(mu_);
    uint16_t recv_id_ ENL_GUARDED_BY(mu_) = 0;
    uint16_t send_id_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t section_size_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t sections_ ENL_GUARDED_BY(mu_) = 0;
    std::vector<uint32_t> free_ ENL_GUARDED_BY(mu_);
    vmbus::GpadlView send_ ENL_GUARDED_BY(mu_);
    uint32_t send_sections_ ENL_GUARDED_BY(mu_) = 0;
    RndisState rndis_ ENL_GUARDED_BY(mu_);
    std::deque<std::vector<uint8_t>> control_out_ ENL_GUARDED_BY(mu_);
    size_t control_bytes_ ENL_GUARDED_BY(mu_) = 0;
    uint64_t next_tid_ ENL_GUARDED_BY(mu_) = 1;
    bool want_room_ ENL_GUARDED_BY(mu_) = false;
    bool receiver_wanted_ ENL_GUARDED_BY(mu_) = false;
    bool receiver_update_posted_ ENL_GUARDED_BY(mu_) = false;
    bool dead_ ENL_GUARDED_BY(mu_) = false;  // the Nic is gone: never hand out the receiver again
    std::vector<uint8_t> rx_scratch_ ENL_GUARDED_BY(mu_);
    // Frames handed to the guest (any channel): a worker that sees it move keeps no poll window.
    std::atomic<uint64_t> rx_frames_{0};
};

// ---------------------------------------------------------------------------- Worker

// One open channel's ring, drained on a thread of its own.
class Nic::Impl::Worker {
public:
    Worker(Impl& owner, uint16_t idx, std::shared_ptr<vmbus::ChannelQueue> queue, const GuestMemory& memory,
           std::unique_ptr<EventLoopThread> thread)
        : impl(owner), index(idx), q(std::move(queue)), mem(memory), thread_(std::move(thread)) {}
    ~Worker() { stop(); }

    void start(vmbus::OpenDone done) {
        thread_->loop().post([this, done = std::move(done)]() mutable {
            poll_timer_ = UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
            if (!poll_timer_.valid()) return done(fail_errno("timerfd_create"));
            auto t = thread_->loop().watch(poll_timer_.get(), EPOLLIN, [this](uint32_t) {
                uint64_t expirations;
                [[maybe_unused]] ssize_t r = ::read(poll_timer_.get(), &expirations, sizeof expirations);
                drain();
            });
            if (!t) return done(std::unexpected(t.error()));
            timer_watch_ = *t;
            auto w = thread_->loop().watch(q->notify_fd(), EPOLLIN, [this](uint32_t) { drain(); });
            if (!w) return done(std::unexpected(w.error()));
            watch_ = *w;
            done({});
            drain();
        });
    }
    // Control loop: after it returns the worker never touches the queue again.
    void stop() {
        if (!thread_) return;
        thread_->stop();  // joins; pending tasks are dropped
        if (watch_) thread_->loop().unwatch(watch_);
        if (timer_watch_) thread_->loop().unwatch(timer_watch_);
        watch_ = timer_watch_ = 0;
        thread_.reset();
    }

    // Sends a completion into room reserved for it; `batched`: its interrupt may wait
    // (kMaxDeferredCompletions).
    void complete(vmbus::Reservation room, uint64_t trans_id, std::span<const uint8_t> payload,
                  bool batched = false) {
        const iovec iov = iov_of(payload);
        const auto pkt = vmbus::OutPacket::completion(trans_id, std::span(&iov, payload.empty() ? 0 : 1));
        if (auto r = q->commit(std::move(room), pkt, batched); !r) {
            ENL_LOG_LIMITED(debug, "{}-{}: a completion was not sent: {}", impl.opt.name, index, r.error().message());
            return;
        }
        if (!batched) return;
        const auto now = std::chrono::steady_clock::now();
        if (deferred_++ == 0) first_deferred_ = now;
        if (deferred_ >= kMaxDeferredCompletions || now - first_deferred_ >= kMaxCompletionDelay) flush_completions();
    }

    Impl& impl;
    const uint16_t index;
    const std::shared_ptr<vmbus::ChannelQueue> q;
    const GuestMemory& mem;
    // Worker-thread scratch.
    std::vector<uint8_t> section_copy;
    std::vector<uint8_t> frame_copy;
    std::vector<iovec> segs, frame_iov;

private:
    void flush_completions() {
        deferred_ = 0;
        q->flush_signal();
    }

    void drain() {
        q->drain_notify();
        impl.on_room(index);
        for (uint32_t n = 0; n < kDrainBudget; ++n) {
            auto p = q->peek();
            if (!p) return;  // closed, or a broken ring (the server closes the channel)
            if (!*p) {
                const uint64_t rx_now = impl.rx_frames_.load(std::memory_order_relaxed);
                const bool receiving = rx_now != rx_seen_;
                rx_seen_ = rx_now;
                if (std::exchange(taken_, 0) != 0 && !receiving) {
                    // A burst just ended: look again in a moment, the doorbell still masked.
                    const itimerspec in{.it_interval = {}, .it_value = {.tv_sec = 0, .tv_nsec = kTxPollWindowNs}};
                    if (::timerfd_settime(poll_timer_.get(), 0, &in, nullptr) == 0) return;
                }
                flush_completions();  // going idle: the guest gets what it is owed
                if (q->arm()) return;
                continue;
            }
            ++taken_;
            const vmbus::PacketView& v = **p;
            // RX completions need no answer: take them even when the guest's ring is full,
            // or RX deadlocks (§4.4).
            if (v.type == vmbus::kPacketCompletion) {
                impl.rx_completion(index, v);
                q->consume();
                continue;
            }
            auto room = q->reserve(kCompletionRingBytes);
            if (!room) {  // Busy: the guest's room wakes us; it must see what fills its ring
                flush_completions();
                return;
            }
            impl.handle(*this, v, std::move(*room));
            q->consume();
        }
        thread_->loop().post([this] { drain(); });  // more: let the loop breathe
    }

    std::unique_ptr<EventLoopThread> thread_;
    EventLoop::WatchId watch_ = 0, timer_watch_ = 0;
    UniqueFd poll_timer_;  // the poll window after a burst (timerfd)
    uint32_t taken_ = 0;   // packets taken since the ring was last seen empty
    uint32_t deferred_ = 0;  // batched completions whose interrupt has not been raised
    uint64_t rx_seen_ = 0;   // Impl::rx_frames_ when the ring was last seen empty
    std::chrono::steady_clock::time_point first_deferred_{};
};

// ---------------------------------------------------------------------------- lifecycle

Nic::Impl::Impl(NicOptions o, std::unique_ptr<net::Backend> b) : opt(std::move(o)), backend(std::move(b)), rx(*this) {
    caps = backend->capabilities();
    if (caps.tx_tso && !caps.tx_csum) caps.tx_tso = false;  // TSO needs the checksum offload
    offer.name = opt.name;
    offer.class_id = vmbus::Guid::parse(kNicClass);
    offer.instance_id = opt.instance;
    offer.max_packet_to_guest = kMaxPacketToGuest;
    offer.max_packet_from_guest = 8192;
    room_fd_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    workers_.resize(kMaxChannels);
    LockGuard lock(mu_);
    mac_ = opt.mac;
    link_up_ = opt.link_up;
    chans_.resize(kMaxChannels);
    closed_counts_.resize(kMaxChannels);
}

Nic::Impl::~Impl() {
    for (auto& w : workers_)
        if (w) w->stop();
    backend->set_receiver(nullptr);
}

void Nic::Impl::open(const vmbus::OpenRequest& req, std::shared_ptr<vmbus::ChannelQueue> q, vmbus::OpenDone done) {
    const GuestMemory* mem = nullptr;
    {
        LockGuard lock(mu_);
        mem = res_.memory;
    }
    if (!mem) return done(fail(Errc::Closed, "{}: not attached", opt.name));
    if (req.index >= kMaxChannels) return done(fail(Errc::Invalid, "{}: channel index {}", opt.name, req.index));
    if (workers_[req.index]) workers_[req.index].reset();  // a stale worker (never closed)
    auto thread = EventLoopThread::start(fmt::format("{}-{}", opt.name, req.index), sandbox::ThreadKind::NetIo);
    if (!thread) return done(std::unexpected(thread.error()));
    {
        LockGuard lock(mu_);
        if (req.index == 0) reset_protocol();
        auto c = std::make_unique<Chan>();
        c->q = q;
        c->counters.index = req.index;
        c->counters.target_vp = req.target_vp;
        chans_[req.index] = std::move(c);
    }
    workers_[req.index] = std::make_unique<Worker>(*this, req.index, std::move(q), *mem, std::move(*thread));
    workers_[req.index]->start(std::move(done));
}

void Nic::Impl::close(uint16_t index, vmbus::CloseDone done) {
    if (index >= kMaxChannels) return done();
    // The worker first: once it is joined no late packet of this channel (a SEND_RECV_BUF
    // right before the close) can take a buffer again after the reset below.
    if (auto w = std::move(workers_[index])) w->stop();
    {
        LockGuard lock(mu_);
        if (auto& c = chans_[index]) {
            drop_channel_rx_locked(*c);
            add_traffic(closed_counts_[index], c->counters);
            chans_[index].reset();
        }
        if (index == 0) {
            // The guest tears the buffers down after the close (§6 step 5): let go of them.
            reset_protocol();
        }
    }
    apply_receiver();
    done();
}

// A fresh NVSP/RNDIS state: nothing outstanding, no buffers (§6).
void Nic::Impl::reset_protocol() {
    drop_recv_buffer_locked();
    send_ = {};
    send_sections_ = 0;
    nvsp_version_ = 0;
    ndis_mtu_ = 0;
    rndis_ = RndisState{};
    request_receiver_update();
}

void Nic::Impl::drop_channel_rx_locked(Chan& c) {
    for (uint32_t s : c.pending_sections) free_.push_back(s);
    for (auto& [tid, secs] : c.outstanding)
        for (uint32_t s : secs) free_.push_back(s);
    c.pending.clear();
    c.pending_sections.clear();
    c.outstanding.clear();
    c.held = 0;
    if (!recv_) free_.clear();
}

void Nic::Impl::drop_recv_buffer_locked() {
    for (auto& c : chans_)
        if (c) {
            c->pending.clear();
            c->pending_sections.clear();
            c->outstanding.clear();
            c->held = 0;
        }
    recv_ = {};
    free_.clear();
    sections_ = 0;
    section_size_ = 0;
    control_out_.clear();
    control_bytes_ = 0;
}

// The backend gets this NIC as its receiver while the guest wants frames; set on the
// control loop (set_receiver blocks until the old one is idle: never under mu_).
void Nic::Impl::request_receiver_update() {
    const bool want = rndis_.initialized && rndis_.filter != 0 && recv_;
    if (want == receiver_wanted_) return;
    receiver_wanted_ = want;
    if (receiver_update_posted_ || !res_.loop) return;
    receiver_update_posted_ = true;
    res_.loop->post([weak = weak_from_this()] {
        if (auto self = weak.lock()) self->apply_receiver();
    });
}

void Nic::Impl::apply_receiver() {
    bool want = false;
    {
        LockGuard lock(mu_);
        receiver_update_posted_ = false;
        want = receiver_wanted_ && !dead_;
    }
    backend->set_receiver(want ? &rx : nullptr);
}

// ---------------------------------------------------------------------------- NVSP

void Nic::Impl::handle(Worker& w, const vmbus::PacketView& p, vmbus::Reservation room) {
    const bool answer = p.completion_requested();
    auto reply = [&](const NvspMessage& m) {
        if (answer) w.complete(std::move(room), p.trans_id, as_bytes(m));
    };
    if ((p.type != vmbus::kPacketDataInband && p.type != vmbus::kPacketDataUsingGpaDirect) || p.payload.size() < 4) {
        ENL_LOG_LIMITED(warn, "{}-{}: a packet of type {} with {} bytes", opt.name, w.index, p.type, p.payload.size());
        return reply(nvsp_of(NvspRndisComplete{nvsp::kSendRndisPktComplete, nvsp::kStatFail}));
    }
    const auto m = read_padded<NvspMessage>(p.payload);
    auto refuse = [&](const char* why) {
        ENL_LOG_LIMITED(warn, "{}-{}: NVSP message {} refused: {}", opt.name, w.index, m.msg_type, why);
    };
    // Each message is at least its struct (the guest always sends 40 bytes; §8).
    size_t need = 4;
    switch (m.msg_type) {
        case nvsp::kInit: need = 12; break;
        case nvsp::kSendNdisVersion: need = sizeof(NvspNdisVersion); break;
        case nvsp::kSendRecvBuf:
        case nvsp::kSendSendBuf: need = 10; break;
        case nvsp::kRevokeRecvBuf:
        case nvsp::kRevokeSendBuf: need = 6; break;
        case nvsp::kSendRndisPkt: need = sizeof(NvspRndisPacket); break;
        case nvsp::kSendNdisConfig: need = sizeof(NvspNdisConfig); break;
        case nvsp::kSubchannel: need = sizeof(NvspSubchannel); break;
        case nvsp::kSwitchDataPath: need = sizeof(NvspSwitchDataPath); break;
        default: break;
    }
    if (p.payload.size() < need) {
        refuse("too short");
        if (!answer) return;
        if (m.msg_type == nvsp::kSendRndisPkt)
            return reply(nvsp_of(NvspRndisComplete{nvsp::kSendRndisPktComplete, nvsp::kStatFail}));
        return reply(nvsp_of(NvspRndisComplete{m.msg_type, nvsp::kStatFail}));
    }
    const bool primary = w.index == 0;
    switch (m.msg_type) {
        case nvsp::kInit: {
            const auto init = read_padded<NvspInit>(p.payload);
            uint32_t status = nvsp::kStatFail, version = 0;
            {
                LockGuard lock(mu_);
                if (!primary || recv_ || send_) {
                    refuse("INIT out of sequence");
                } else {
                    for (uint32_t v : {nvsp::kVersion61, nvsp::kVersion6, nvsp::kVersion5, nvsp::kVersion4,
                                       nvsp::kVersion2, nvsp::kVersion1})
                        if (v >= init.min_protocol_ver && v <= init.max_protocol_ver) {
                            version = v;
                            break;
                        }
                    if (version) {
                        nvsp_version_ = version;
                        status = nvsp::kStatSuccess;
                    } else {
                        status = init.max_protocol_ver < nvsp::kVersion1 ? nvsp::kStatProtocolTooOld
                                                                         : nvsp::kStatProtocolTooNew;
                    }
                }
            }
            return reply(nvsp_of(NvspInit{nvsp::kInitComplete, version, 0, status}));
        }
        case nvsp::kSendNdisConfig: {
            const auto c = read_padded<NvspNdisConfig>(p.payload);
            uint32_t mtu = 0;
            EventLoop* loop = nullptr;
            {
                LockGuard lock(mu_);
                if (!primary || !nvsp_version_ || nvsp_version_ < nvsp::kVersion2 || recv_) {
                    refuse("NDIS_CONFIG out of sequence");
                } else {
                    // OpenVMM: [1514, 9216], else 1514; and what the backend carries.
                    mtu = c.mtu >= 1514 && c.mtu <= 9216 ? c.mtu : 1514;
                    mtu = std::min(mtu, caps.max_mtu + 14);
                    ndis_mtu_ = mtu;
                    loop = res_.loop;
                }
            }
            if (loop && mtu)
                loop->post([weak = weak_from_this(), mtu] {
                    if (auto self = weak.lock()) self->backend->set_mtu(mtu - 14);
                });
            if (answer) reply(m);  // the guest asks for none; a request gets exactly one answer
            return;
        }
        case nvsp::kSendNdisVersion:
            if (answer) reply(m);
            return;
        case nvsp::kSendRecvBuf: {
            const auto b = read_padded<NvspSendBuffer>(p.payload);
            NvspRecvBufComplete c{nvsp::kSendRecvBufComplete, nvsp::kStatFail, 0, {}};
            LockGuard lock(mu_);
            if (!primary || !nvsp_version_ || recv_ || !res_.control) {
                refuse("SEND_RECV_BUF out of sequence");
            } else if (auto g = res_.control->gpadl(b.gpadl_handle); !g) {
                refuse("no such GPADL");
            } else {
                const uint32_t s = section_size_for_mtu(ndis_mtu_ ? ndis_mtu_ : 1514);
                const uint32_t n = std::min(g->byte_count() / s, kMaxSections);
                if (n < 2) {
                    refuse("receive buffer too small");
                } else {
                    recv_ = std::move(*g);
                    recv_id_ = b.id;
                    section_size_ = s;
                    sections_ = n;
                    free_.clear();
                    for (uint32_t i = n; i-- > 0;) free_.push_back(i);
                    c = {nvsp::kSendRecvBufComplete, nvsp::kStatSuccess, 1, {0, s, n, s * n}};
                }
            }
            return reply(nvsp_of(c));
        }
        case nvsp::kSendSendBuf: {
            const auto b = read_padded<NvspSendBuffer>(p.payload);
            NvspSendBufComplete c{nvsp::kSendSendBufComplete, nvsp::kStatFail, 0};
            LockGuard lock(mu_);
            if (!primary || !nvsp_version_ || send_ || !res_.control) {
                refuse("SEND_SEND_BUF out of sequence");
            } else if (auto g = res_.control->gpadl(b.gpadl_handle); !g) {
                refuse("no such GPADL");
            } else if (g->byte_count() < kSendSectionSize) {
                refuse("send buffer too small");
            } else {
                send_sections_ = g->byte_count() / kSendSectionSize;
                send_ = std::move(*g);
                send_id_ = b.id;
                c = {nvsp::kSendSendBufComplete, nvsp::kStatSuccess, kSendSectionSize};
            }
            return reply(nvsp_of(c));
        }
        // A revoke names the buffer it revokes: one of another id (a hostile or confused
        // guest) leaves the buffers its driver uses alone.
        case nvsp::kRevokeRecvBuf: {
            const auto r = read_padded<NvspRevoke>(p.payload);
            {
                LockGuard lock(mu_);
                if (!primary || !recv_ || r.id != recv_id_) {
                    refuse("REVOKE_RECV_BUF of a buffer we do not have");
                } else {
                    drop_recv_buffer_locked();
                    request_receiver_update();
                }
            }
            if (answer) reply(m);
            return;
        }
        case nvsp::kRevokeSendBuf: {
            const auto r = read_padded<NvspRevoke>(p.payload);
            {
                LockGuard lock(mu_);
                if (!primary || !send_ || r.id != send_id_) {
                    refuse("REVOKE_SEND_BUF of a buffer we do not have");
                } else {
                    send_ = {};
                    send_sections_ = 0;
                }
            }
            if (answer) reply(m);
            return;
        }
        case nvsp::kSendRndisPkt: {
            const auto r = read_padded<NvspRndisPacket>(p.payload);
            const uint32_t status = handle_rndis(w, p, r);
            if (answer)
                w.complete(std::move(room), p.trans_id, as_bytes(nvsp_of(NvspRndisComplete{nvsp::kSendRndisPktComplete, status})),
                           /*batched=*/true);
            return;
        }
        case nvsp::kSubchannel: {
            const auto s = read_padded<NvspSubchannel>(p.payload);
            NvspSubchannel c{nvsp::kSubchannel, nvsp::kStatFail, 0};
            vmbus::ChannelControl* control = nullptr;
            {
                LockGuard lock(mu_);
                if (!primary || nvsp_version_ < nvsp::kVersion5 || !rndis_.initialized ||
                    s.op_or_status != nvsp::kSubchannelAllocate || s.num_subchannels == 0 ||
                    s.num_subchannels > max_sub()) {
                    refuse("SUBCHANNEL out of sequence or out of range");
                } else {
                    control = res_.control;
                }
            }
            if (control) c = {nvsp::kSubchannel, nvsp::kStatSuccess, s.num_subchannels};
            reply(nvsp_of(c));
            // The offers go out only after the completion (§5 step 3).
            if (control && c.op_or_status == nvsp::kStatSuccess) {
                if (auto e = control->enable_subchannels(static_cast<uint16_t>(s.num_subchannels)); !e)
                    ENL_LOG_LIMITED(warn, "{}: sub-channels: {}", opt.name, e.error().message());
            }
            return;
        }
        case nvsp::kSwitchDataPath:
            // An empty completion (§2.2); there is never a VF.
            if (answer) w.complete(std::move(room), p.trans_id, {});
            return;
        default:
            refuse("unknown message");
            if (answer) reply(nvsp_of(NvspRndisComplete{m.msg_type, nvsp::kStatFail}));
            return;
    }
}

// SEND_RNDIS_PKT: the stream (§4.1), its messages, the frames to the backend. Returns the
// completion's status.
uint32_t Nic::Impl::handle_rndis(Worker& w, const vmbus::PacketView& p, const NvspRndisPacket& r) {
    if (p.malformed) {
        ENL_LOG_LIMITED(warn, "{}-{}: SEND_RNDIS_PKT with bad ranges", opt.name, w.index);
        return nvsp::kStatFail;
    }
    vmbus::GpadlView send;
    uint32_t send_sections = 0, max_frame = 0;
    bool link = false;
    {
        LockGuard lock(mu_);
        if (!recv_ || !send_) {
            ENL_LOG_LIMITED(warn, "{}-{}: RNDIS before both buffers exist", opt.name, w.index);
            return nvsp::kStatFail;
        }
        send = send_;
        send_sections = send_sections_;
        max_frame = (ndis_mtu_ ? ndis_mtu_ : 1514) + 4;  // a tag inside the frame
        link = link_up_;
    }
    w.segs.clear();
    size_t total = 0;
    if (r.section_index != nvsp::kNoSection) {
        if (r.section_index >= send_sections || r.section_size > kSendSectionSize) {
            ENL_LOG_LIMITED(warn, "{}-{}: send section {} ({} bytes) of {}", opt.name, w.index, r.section_index,
                            r.section_size, send_sections);
            return nvsp::kStatFail;
        }
        // A copy: the guest may change the section while we parse it (§8).
        w.section_copy.resize(r.section_size);
        if (!send.read(w.mem, uint64_t{r.section_index} * kSendSectionSize, w.section_copy)) return nvsp::kStatFail;
        w.segs.push_back(iov_of(w.section_copy));
        total += r.section_size;
    }
    send = {};
    if (p.type == vmbus::kPacketDataUsingGpaDirect) {
        if (p.gpa_ranges.size() > kMaxGpaRanges) return nvsp::kStatFail;
        for (const auto& range : p.gpa_ranges) {
            for (uint64_t at = 0; at < range.byte_count;) {
                const uint64_t gpa = range.gpa_of(at);
                const uint64_t n = std::min<uint64_t>(range.byte_count - at, vmbus::kPageSize - gpa % vmbus::kPageSize);
                uint8_t* host = w.mem.host_ptr(gpa, n);
                if (!host) {
                    ENL_LOG_LIMITED(warn, "{}-{}: a page buffer outside guest RAM ({:#x})", opt.name, w.index, gpa);
                    return nvsp::kStatFail;
                }
                w.segs.push_back({host, n});
                at += n;
            }
            total += range.byte_count;
            if (total > kMaxTxBytes) {
                ENL_LOG_LIMITED(warn, "{}-{}: {} bytes in one packet", opt.name, w.index, total);
                return nvsp::kStatFail;
            }
        }
    }
    if (total == 0) return nvsp::kStatFail;
    const SgSource src(w.segs);
    uint64_t packets = 0, bytes = 0, dropped = 0;
    bool bad = false;
    auto walked = walk_rndis(src, kMaxMessagesPerPacket, [&](uint32_t type, size_t off, uint32_t len) {
        if (bad) return;
        if (type != rndis::kMsgPacket) {
            if (len > kMaxControlMessage) {
                bad = true;
                return;
            }
            std::vector<uint8_t> msg(len);
            if (!src.read(off, msg) || !control(w.index, msg)) bad = true;
            return;
        }
        auto pkt = parse_tx_packet(src, off, len);
        if (!pkt) {
            ENL_LOG_LIMITED(warn, "{}-{}: {}", opt.name, w.index, pkt.error().message());
            bad = true;
            return;
        }
        const bool lso = pkt->ppis.lso.has_value();
        if (pkt->frame_len < 14 || pkt->frame_len > (lso ? kMaxTxBytes : max_frame)) {
            ENL_LOG_LIMITED(warn, "{}-{}: a {}-byte frame", opt.name, w.index, pkt->frame_len);
            ++dropped;
            return;
        }
        if (!link) {
            ++dropped;  // the cable is out
            return;
        }
        const TxPlan plan = plan_tx(pkt->ppis, caps);
        w.frame_iov.clear();
        if (plan.copy) {
            w.frame_copy.resize(pkt->frame_len);
            if (!src.read(pkt->frame_off, w.frame_copy)) {
                bad = true;
                return;
            }
        } else if (!src.slice(pkt->frame_off, pkt->frame_len, w.frame_iov)) {
            bad = true;
            return;
        }
        auto o = tx_offload(pkt->ppis, pkt->frame_len, plan.copy ? &w.frame_copy : nullptr, caps);
        if (!o) {
            ENL_LOG_LIMITED(warn, "{}-{}: {}", opt.name, w.index, o.error().message());
            ++dropped;
            return;
        }
        if (plan.copy) w.frame_iov.push_back(iov_of(w.frame_copy));
        const size_t n = iov_total(w.frame_iov);
        if (auto s = backend->send(w.frame_iov, *o); !s) {
            ++dropped;
            return;
        }
        ++packets;
        bytes += n;
    });
    {
        LockGuard lock(mu_);
        if (auto& c = chans_[w.index]) {
            c->counters.tx_packets += packets;
            c->counters.tx_bytes += bytes;
            c->counters.tx_dropped += dropped;
        }
    }
    if (!walked) {
        ENL_LOG_LIMITED(warn, "{}-{}: {}", opt.name, w.index, walked.error().message());
        return nvsp::kStatFail;
    }
    return bad ? nvsp::kStatFail : nvsp::kStatSuccess;
}

NicConfig Nic::Impl::config_locked() const {
    NicConfig cfg;
    cfg.nvsp_version = nvsp_version_;
    cfg.mtu = ndis_mtu_ ? ndis_mtu_ : 1514;
    cfg.mac = mac_;
    cfg.link_up = link_up_;
    cfg.caps = caps;
    cfg.max_queues = static_cast<uint16_t>(max_sub() + 1);
    return cfg;
}

// One RNDIS control message (a copy). False: refused (the VMBus packet fails).
bool Nic::Impl::control(uint16_t index, std::span<const uint8_t> msg) {
    LockGuard lock(mu_);
    if (index != 0 || !recv_) {
        ENL_LOG_LIMITED(warn, "{}-{}: an RNDIS control message {}", opt.name, index,
                        index ? "on a sub-channel" : "before the receive buffer");
        return false;
    }
    const bool was_initialized = rndis_.initialized;
    ControlResult r = handle_control(rndis_, config_locked(), msg);
    if (r.new_mac) mac_ = *r.new_mac;
    if (!r.ok) ENL_LOG_LIMITED(warn, "{}: a bad RNDIS control message", opt.name);
    if (!r.response.empty() && !queue_control_locked(std::move(r.response))) return false;
    if (r.filter_changed || r.halted || was_initialized != rndis_.initialized) {
        request_receiver_update();
        if (rndis_.filter) signal_room_locked();
    }
    pump_control_locked();
    return r.ok;
}

bool Nic::Impl::queue_control_locked(std::vector<uint8_t> msg) {
    if (msg.size() > section_size_ || control_bytes_ + msg.size() > kMaxControlBytes) {
        ENL_LOG_LIMITED(warn, "{}: control responses pile up; the guest does not read them", opt.name);
        return false;
    }
    control_bytes_ += msg.size();
    control_out_.push_back(std::move(msg));
    return true;
}

// Sends queued control messages in sections of their own on the primary (channel_type 1).
void Nic::Impl::pump_control_locked() {
    Chan* c = chans_[0].get();
    if (!c || !recv_ || !res_.memory) return;
    while (!control_out_.empty() && !free_.empty()) {
        const auto& msg = control_out_.front();
        const uint32_t k = free_.back();
        const uint64_t at = uint64_t{k} * section_size_;
        if (!recv_.write(*res_.memory, at, msg)) return;
        const vmbus::XferRange range{static_cast<uint32_t>(msg.size()), static_cast<uint32_t>(at)};
        const NvspRndisPacket n{nvsp::kSendRndisPkt, nvsp::kChannelControl, nvsp::kNoSection, 0};
        const iovec iov = iov_of(as_bytes(n));
        const uint64_t tid = next_tid_++;
        if (!c->q->send(vmbus::OutPacket::xfer_pages(tid, recv_id_, std::span(&range, 1), std::span(&iov, 1))))
            return;  // Busy: the worker retries once the guest made room
        free_.pop_back();
        c->outstanding[tid] = {k};
        ++c->held;
        control_bytes_ -= msg.size();
        control_out_.pop_front();
    }
}

void Nic::Impl::free_sections_locked(Chan& c, const std::vector<uint32_t>& sections) {
    for (uint32_t s : sections) free_.push_back(s);
    c.held -= std::min<uint32_t>(c.held, static_cast<uint32_t>(sections.size()));
    signal_room_locked();
}

void Nic::Impl::signal_room_locked() {
    if (!want_room_) return;
    want_room_ = false;
    const uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(room_fd_.get(), &one, sizeof(one));
}

void Nic::Impl::rx_completion(uint16_t index, const vmbus::PacketView& p) {
    const auto m = read_prefix<NvspRndisComplete>(p.payload);
    LockGuard lock(mu_);
    Chan* c = chans_[index].get();
    if (!m || m->msg_type != nvsp::kSendRndisPktComplete || !c) {
        ENL_LOG_LIMITED(warn, "{}-{}: a completion that is no RNDIS completion", opt.name, index);
        return;
    }
    auto it = c->outstanding.find(p.trans_id);
    if (it == c->outstanding.end()) {
        ENL_LOG_LIMITED(warn, "{}-{}: a completion for {:#x}, which is not outstanding here", opt.name, index,
                        p.trans_id);
        return;
    }
    free_sections_locked(*c, it->second);
    c->outstanding.erase(it);
    pump_control_locked();
}

void Nic::Impl::on_room(uint16_t index) {
    LockGuard lock(mu_);
    // Only a flush that found no room is retried here: the backend's flush() ends its bursts.
    if (Chan* c = chans_[index].get(); c && c->flush_blocked) flush_locked(*c);
    if (index == 0) pump_control_locked();
}

// ---------------------------------------------------------------------------- RX

uint16_t Nic::Impl::open_count_locked() const {
    uint16_t n = 0;
    for (const auto& c : chans_)
        if (c) ++n;
    return n;
}

bool Nic::Impl::rx_ready_locked() const {
    return recv_ && rndis_.initialized && rndis_.filter != 0 && link_up_ && chans_[0] && res_.memory;
}

bool Nic::Impl::receive(std::span<const iovec> frame, const net::Offload& offload) {
    const size_t len = iov_total(frame);
    uint8_t head[128];
    const size_t head_len = std::min(len, sizeof(head));
    {
        size_t done = 0;
        for (const auto& v : frame) {
            if (done == head_len) break;
            const size_t n = std::min(v.iov_len, head_len - done);
            if (n) std::memcpy(head + done, v.iov_base, n);
            done += n;
        }
    }
    const std::span<const uint8_t> h(head, head_len);
    LockGuard lock(mu_);
    if (!rx_ready_locked()) {
        if (chans_[0]) ++chans_[0]->counters.rx_dropped;
        want_room_ = true;
        return false;
    }
    // Steering (§5): the table entry of the hash, clamped to the channels open.
    uint16_t index = 0;
    std::optional<uint32_t> hash;
    if (rndis_.rss_enabled && !rndis_.rss_table.empty()) {
        hash = rss_hash(h, rndis_.rss_key, rndis_.hashinfo);
        if (hash) {
            const uint32_t entry = rndis_.rss_table[*hash % rndis_.rss_table.size()];
            const uint16_t open = open_count_locked();
            index = static_cast<uint16_t>(entry % std::max<uint16_t>(open, 1));
            if (index >= chans_.size() || !chans_[index]) index = 0;
        }
    }
    Chan& c = *chans_[index];
    if (len < 14 || len + kMaxRxHeader > section_size_ || offload.gso != net::Offload::Gso::None) {
        ++c.counters.rx_dropped;  // never fits: dropping it is the only way on
        return true;
    }
    // Room: a section beyond the control reserve, within this channel's share.
    const uint32_t reserve = std::min(kControlReserve, sections_ / 2);
    const uint32_t share = std::max<uint32_t>(1, (sections_ - reserve) / std::max<uint16_t>(open_count_locked(), 1));
    if (free_.size() <= reserve || c.held >= share) {
        ++c.counters.rx_dropped;
        want_room_ = true;
        return false;
    }
    std::span<const iovec> data = frame;
    iovec copy{};
    bool csum_ok = offload.csum_valid;
    if (offload.needs_csum) {
        // Complete the checksum here: the guest trusts nothing half-done.
        rx_scratch_.resize(len);
        size_t done = 0;
        for (const auto& v : frame) {
            if (v.iov_len) std::memcpy(rx_scratch_.data() + done, v.iov_base, v.iov_len);
            done += v.iov_len;
        }
        if (!complete_checksum(rx_scratch_, offload.csum_start, offload.csum_offset)) {
            ++c.counters.rx_dropped;
            return true;
        }
        copy = iov_of(rx_scratch_);
        data = std::span(&copy, 1);
        csum_ok = true;
    }
    rx_frames_.fetch_add(1, std::memory_order_relaxed);
    RxMeta meta;
    if (csum_ok)
        if (const uint32_t bits = rx_csum_ok_bits(h)) meta.csum = bits;
    meta.hash = hash;
    std::array<uint8_t, kMaxRxHeader> hdr;
    const size_t hdr_len = build_rx_header(hdr, static_cast<uint32_t>(len), meta);
    const uint32_t k = free_.back();
    uint64_t at = uint64_t{k} * section_size_;
    const uint32_t msg_len = static_cast<uint32_t>(hdr_len + len);
    if (!recv_.write(*res_.memory, at, std::span<const uint8_t>(hdr.data(), hdr_len))) {
        ++c.counters.rx_dropped;
        return true;
    }
    at += hdr_len;
    for (const auto& v : data) {
        if (v.iov_len == 0) continue;
        if (!recv_.write(*res_.memory, at, std::span(static_cast<const uint8_t*>(v.iov_base), v.iov_len))) {
            ++c.counters.rx_dropped;
            return true;
        }
        at += v.iov_len;
    }
    free_.pop_back();
    c.pending.push_back({msg_len, static_cast<uint32_t>(uint64_t{k} * section_size_)});
    c.pending_sections.push_back(k);
    ++c.held;
    ++c.counters.rx_packets;
    c.counters.rx_bytes += len;
    if (c.pending.size() >= kMaxRangesPerPacket) flush_locked(c);
    return true;
}

void Nic::Impl::flush() {
    LockGuard lock(mu_);
    for (auto& c : chans_)
        if (c) flush_locked(*c);
}

// One type-7 packet per kMaxRangesPerPacket pending ranges (§4.3).
void Nic::Impl::flush_locked(Chan& c) {
    c.flush_blocked = false;
    while (!c.pending.empty() && recv_) {
        const size_t n = std::min<size_t>(c.pending.size(), kMaxRangesPerPacket);
        const NvspRndisPacket m{nvsp::kSendRndisPkt, nvsp::kChannelData, nvsp::kNoSection, 0};
        const iovec iov = iov_of(as_bytes(m));
        const uint64_t tid = next_tid_;
        auto r = c.q->send(vmbus::OutPacket::xfer_pages(tid, recv_id_, std::span(c.pending.data(), n), std::span(&iov, 1)));
        if (!r) {
            if (r.error().code() == Errc::Busy) {
                c.flush_blocked = true;  // the worker flushes once the guest made room
                return;
            }
            // Closed (or a programming error): these sections are never announced.
            for (uint32_t s : c.pending_sections) free_.push_back(s);
            c.held -= std::min<uint32_t>(c.held, static_cast<uint32_t>(c.pending.size()));
            c.pending.clear();
            c.pending_sections.clear();
            return;
        }
        ++next_tid_;
        c.outstanding[tid].assign(c.pending_sections.begin(), c.pending_sections.begin() + static_cast<ptrdiff_t>(n));
        c.pending.erase(c.pending.begin(), c.pending.begin() + static_cast<ptrdiff_t>(n));
        c.pending_sections.erase(c.pending_sections.begin(), c.pending_sections.begin() + static_cast<ptrdiff_t>(n));
    }
}

// ---------------------------------------------------------------------------- Nic

Result<std::shared_ptr<Nic>> Nic::create(NicOptions options, std::unique_ptr<net::Backend> backend) {
    if (!backend) return fail(Errc::Invalid, "{}: a NIC needs a backend", options.name);
    if (options.max_queues == 0) options.max_queues = 1;
    auto impl = std::make_shared<Impl>(std::move(options), std::move(backend));
    if (impl->room_fd_.get() < 0) return fail_errno("eventfd");
    return std::shared_ptr<Nic>(new Nic(std::move(impl)));
}

Nic::Nic(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Nic::~Nic() {
    for (auto& w : impl_->workers_)
        if (w) w->stop();
    {
        LockGuard lock(impl_->mu_);
        impl_->dead_ = true;
    }
    impl_->backend->set_receiver(nullptr);
}

void Nic::set_link(bool up) {
    Impl& i = *impl_;
    LockGuard lock(i.mu_);
    if (i.link_up_ == up) return;
    i.link_up_ = up;
    if (i.rndis_.initialized && i.recv_) {
        i.queue_control_locked(make_indicate(up ? rndis::kStatusMediaConnect : rndis::kStatusMediaDisconnect));
        i.pump_control_locked();
    }
    if (up) i.signal_room_locked();
}

NicStatus Nic::status() const {
    const Impl& i = *impl_;
    NicStatus s;
    s.id = i.opt.name;
    s.max_queues = static_cast<uint16_t>(i.max_sub() + 1);
    {
        LockGuard lock(i.mu_);
        s.mac = i.mac_;
        s.link_up = i.link_up_;
        s.guest_ready = i.rndis_.initialized && i.rndis_.filter != 0;
        s.mtu = i.ndis_mtu_;
        s.nvsp_version = i.nvsp_version_;
        for (size_t n = 0; n < i.chans_.size(); ++n) {
            const auto& c = i.chans_[n];
            if (!c) continue;
            QueueCounters q = c->counters;
            add_traffic(q, i.closed_counts_[n]);
            s.per_queue.push_back(q);
        }
        s.queues = static_cast<uint16_t>(s.per_queue.size());
    }
    s.backend = i.backend->status();
    return s;
}

const std::string& Nic::id() const { return impl_->opt.name; }
const vmbus::OfferParams& Nic::offer() const { return impl_->offer; }
uint16_t Nic::max_subchannels() const { return impl_->max_sub(); }

void Nic::attach(const vmbus::DeviceResources& resources) {
    LockGuard lock(impl_->mu_);
    impl_->res_ = resources;
}

void Nic::open(const vmbus::OpenRequest& request, std::shared_ptr<vmbus::ChannelQueue> queue, vmbus::OpenDone done) {
    impl_->open(request, std::move(queue), std::move(done));
}

void Nic::close(uint16_t index, vmbus::CloseDone done) { impl_->close(index, std::move(done)); }

void Nic::retarget(uint16_t index, uint32_t vp) {
    LockGuard lock(impl_->mu_);
    if (index < impl_->chans_.size() && impl_->chans_[index]) impl_->chans_[index]->counters.target_vp = vp;
}

void Nic::reset() {
    {
        LockGuard lock(impl_->mu_);
        impl_->reset_protocol();
    }
    impl_->apply_receiver();
}

void Nic::detach() {
    {
        LockGuard lock(impl_->mu_);
        impl_->reset_protocol();
        impl_->res_ = {};
    }
    impl_->apply_receiver();
}

}  // namespace enlighten::netvsp
