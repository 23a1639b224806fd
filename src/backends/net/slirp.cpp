#include "backends/net/slirp.hpp"

#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>

#include <slirp/libslirp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <deque>
#include <future>
#include <thread>
#include <vector>

#include "backends/net/offload.hpp"
#include "common/sandbox.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten::net {
namespace {

// QEMU's user network.
constexpr const char* kNetwork = "10.0.2.0";
constexpr const char* kNetmask = "255.255.255.0";
constexpr const char* kHost = "10.0.2.2";
constexpr const char* kDhcpStart = "10.0.2.15";
constexpr const char* kNameserver = "10.0.2.3";
// What slirp sends the guest stays within libslirp's default if_mtu (1500): its TCP MSS
// offer and its IP fragmentation follow it, so a guest at MTU 1500 never gets a frame it
// cannot take. What it accepts from the guest (if_mru) goes up to netvsp's largest MTU, so a
// guest at MTU 9000 (`ip link set eth0 mtu 9000`) keeps working: its big frames are taken,
// and its TCP segments toward slirp stay within slirp's MSS offer.
constexpr uint32_t kSlirpMtu = 1500;
constexpr uint32_t kSlirpMru = 9216 - 14;

in_addr ipv4(const char* s) {
    in_addr a{};
    ::inet_pton(AF_INET, s, &a);
    return a;
}

int64_t monotonic_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

class SlirpBackend final : public Backend {
public:
    static Result<std::unique_ptr<Backend>> create(const BackendConfig& config) {
        const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) return fail_errno("slirp: eventfd");
        std::unique_ptr<SlirpBackend> b(new SlirpBackend(UniqueFd(efd)));
        std::promise<Result<>> started;
        auto ready = started.get_future();
        b->thread_ = std::thread([self = b.get(), forwards = config.forwards, &started] {
            self->thread_main(forwards, started);
        });
        auto r = ready.get();
        if (!r) {
            b->thread_.join();  // thread_main returns after reporting a failed start
            return std::unexpected(std::move(r).error());
        }
        return std::unique_ptr<Backend>(std::move(b));
    }

    ~SlirpBackend() override {
        stop_.store(true);
        wake();
        if (thread_.joinable()) thread_.join();
    }
    SlirpBackend(const SlirpBackend&) = delete;
    SlirpBackend& operator=(const SlirpBackend&) = delete;

    [[nodiscard]] Capabilities capabilities() const override {
        return {.tx_csum = true, .tx_tso = true, .max_mtu = kSlirpMru};
    }

    Result<> send(std::span<const iovec> frame, const Offload& offload) override {
        size_t total = 0;
        for (const iovec& v : frame) {
            total += v.iov_len;
            if (v.iov_len > kMaxOffloadFrame || total > kMaxOffloadFrame) {
                tx_dropped_.fetch_add(1, std::memory_order_relaxed);
                return fail(Errc::Invalid, "slirp: frame longer than {} bytes", kMaxOffloadFrame);
            }
        }
        if (total < 14) {
            tx_dropped_.fetch_add(1, std::memory_order_relaxed);
            return fail(Errc::Invalid, "slirp: frame of {} bytes", total);
        }
        std::vector<uint8_t> buf(total);
        size_t at = 0;
        for (const iovec& v : frame) {
            if (v.iov_len) std::memcpy(buf.data() + at, v.iov_base, v.iov_len);
            at += v.iov_len;
        }
        std::vector<std::vector<uint8_t>> frames;
        size_t bytes = 0;
        if (offload.gso == Offload::Gso::None && !offload.needs_csum) {
            bytes = buf.size();
            frames.push_back(std::move(buf));
        } else {
            auto r = finish_frame(buf, offload, [&](std::span<const uint8_t> f) {
                bytes += f.size();
                frames.emplace_back(f.begin(), f.end());
            });
            if (!r) {
                tx_dropped_.fetch_add(1, std::memory_order_relaxed);
                return std::unexpected(r.error().context("slirp"));
            }
        }
        if (slirp_mu_.try_lock()) {
            if (!slirp_) {  // the slirp thread has dropped the instance (the destructor runs)
                slirp_mu_.unlock();
                tx_dropped_.fetch_add(1, std::memory_order_relaxed);
                return fail(Errc::Closed, "slirp: stopped");
            }
            // Nobody is inside libslirp: hand the frames over on this thread, after any that
            // were queued before them (QEMU's user network does the same on its one thread).
            // The slirp thread must look again only if its poll set or deadline may have
            // changed: libslirp made a socket or moved a timer, or it took a frame that is not
            // UDP (TCP queues data and ACKs for later; ARP, ICMP and the rest are rare).
            drain_tx_locked();
            poll_changed_ = false;
            bool all_udp = true;
            for (const auto& f : frames) {
                all_udp = all_udp && is_ipv4_udp(f);
                slirp_input(slirp_, f.data(), static_cast<int>(f.size()));
            }
            const bool look_again = poll_changed_ || !all_udp;
            slirp_mu_.unlock();
            if (look_again) wake();
            flush_receiver();
            count_sent(total);
            return {};
        }
        bool was_empty = false;
        {
            LockGuard lock(tx_mu_);
            if (tx_queue_.size() + frames.size() > kSlirpMaxQueuedFrames ||
                tx_queue_bytes_ + bytes > kSlirpMaxQueuedBytes) {
                tx_dropped_.fetch_add(1, std::memory_order_relaxed);
                return fail(Errc::Busy, "slirp: transmit queue full");
            }
            was_empty = tx_queue_.empty();
            for (auto& f : frames) tx_queue_.push_back(std::move(f));
            tx_queue_bytes_ += bytes;
        }
        count_sent(total);
        if (was_empty) wake();
        return {};
    }

    void set_receiver(Receiver* receiver) override {
        LockGuard lock(rx_mu_);  // waits for a receive()/flush() in progress
        receiver_ = receiver;
    }

    [[nodiscard]] BackendStatus status() const override {
        BackendStatus s;
        s.kind = "slirp";
        s.description = fmt::format("{}/24 gw {} dns {} dhcp {}, {} forward(s)", kNetwork, kHost, kNameserver,
                                    kDhcpStart, forward_count_.load());
        s.tx_packets = tx_packets_.load(std::memory_order_relaxed);
        s.tx_bytes = tx_bytes_.load(std::memory_order_relaxed);
        s.tx_dropped = tx_dropped_.load(std::memory_order_relaxed);
        s.rx_packets = rx_packets_.load(std::memory_order_relaxed);
        s.rx_bytes = rx_bytes_.load(std::memory_order_relaxed);
        s.rx_dropped = rx_dropped_.load(std::memory_order_relaxed);
        return s;
    }

private:
    // A libslirp timer: the opaque form (id + cb_opaque, for slirp_handle_timer) or the
    // callback form. expire_ms < 0: not armed.
    struct Timer {
        SlirpTimerId id = SLIRP_TIMER_RA;
        SlirpTimerCb cb = nullptr;
        void* cb_opaque = nullptr;
        int64_t expire_ms = -1;
    };

    explicit SlirpBackend(UniqueFd wake_fd) : wake_fd_(std::move(wake_fd)) {}

    void count_sent(size_t bytes) {
        tx_packets_.fetch_add(1, std::memory_order_relaxed);
        tx_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    }

    // An IPv4 UDP frame, untagged: what libslirp answers from a socket it polls already.
    static bool is_ipv4_udp(const std::vector<uint8_t>& f) {
        return f.size() >= 34 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 17;
    }

    void wake() {
        const uint64_t one = 1;
        // EAGAIN: the counter is saturated, so the thread is woken anyway.
        [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
    }

    // --- the slirp thread ---
    void thread_main(const std::vector<HostForward>& forwards, std::promise<Result<>>& started) {
        ::pthread_setname_np(::pthread_self(), "net-slirp");
        sandbox::enter(sandbox::ThreadKind::NetIo);
        // libslirp writes to host sockets that the peer may have closed: EPIPE, not SIGPIPE
        // (a thread-directed signal that stays pending while blocked here).
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        ::pthread_sigmask(SIG_BLOCK, &set, nullptr);

        Result<> r;
        {
            LockGuard lock(slirp_mu_);
            r = init(forwards);
        }
        const bool ok = r.has_value();
        started.set_value(std::move(r));  // `started` is gone after this
        if (ok) run_loop();
        LockGuard lock(slirp_mu_);
        if (slirp_) slirp_cleanup(slirp_);
        slirp_ = nullptr;
        timers_.clear();
    }

    // libslirp's callbacks run inside slirp_* calls, so under slirp_mu_.
    Result<> init(const std::vector<HostForward>& forwards) ENL_REQUIRES(slirp_mu_) {
        callbacks_ = SlirpCb{};
        callbacks_.send_packet = [](const void* buf, size_t len, void* opaque) -> ssize_t {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            return self->on_packet(buf, len);
        };
        callbacks_.guest_error = [](const char* msg, void*) {
            ENL_LOG_LIMITED(warn, "slirp: guest error: {}", msg ? msg : "");
        };
        callbacks_.clock_get_ns = [](void*) -> int64_t { return monotonic_ns(); };
        callbacks_.timer_new = [](SlirpTimerCb cb, void* cb_opaque, void* opaque) -> void* {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            auto& t = self->timers_.emplace_back(std::make_unique<Timer>());
            t->cb = cb;
            t->cb_opaque = cb_opaque;
            return t.get();
        };
        callbacks_.timer_new_opaque = [](SlirpTimerId id, void* cb_opaque, void* opaque) -> void* {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            auto& t = self->timers_.emplace_back(std::make_unique<Timer>());
            t->id = id;
            t->cb_opaque = cb_opaque;
            return t.get();
        };
        callbacks_.timer_free = [](void* timer, void* opaque) {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            std::erase_if(self->timers_, [timer](const auto& t) { return t.get() == timer; });
        };
        callbacks_.timer_mod = [](void* timer, int64_t expire_ms, void* opaque) {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            static_cast<Timer*>(timer)->expire_ms = std::max<int64_t>(expire_ms, 0);
            self->poll_changed_ = true;  // the slirp thread's poll deadline may be too late now
        };
        callbacks_.register_poll_fd = [](int, void* opaque) {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            self->poll_changed_ = true;  // a new socket: the slirp thread must poll it too
        };
        callbacks_.unregister_poll_fd = [](int, void*) {};
        callbacks_.notify = [](void* opaque) { static_cast<SlirpBackend*>(opaque)->wake(); };
        callbacks_.init_completed = [](Slirp* slirp, void* opaque) {
            auto* self = static_cast<SlirpBackend*>(opaque);
            self->slirp_mu_.assert_held();
            self->slirp_ = slirp;
        };

        SlirpConfig cfg{};
        cfg.version = 4;  // init_completed and timer_new_opaque
        cfg.restricted = 0;
        cfg.in_enabled = true;
        cfg.vnetwork = ipv4(kNetwork);
        cfg.vnetmask = ipv4(kNetmask);
        cfg.vhost = ipv4(kHost);
        cfg.in6_enabled = false;
        cfg.vhostname = "enlighten";
        cfg.vdhcp_start = ipv4(kDhcpStart);
        cfg.vnameserver = ipv4(kNameserver);
        cfg.if_mtu = kSlirpMtu;
        cfg.if_mru = kSlirpMru;
        cfg.disable_host_loopback = false;  // 10.0.2.2 reaches the host's 127.0.0.1
        cfg.enable_emu = false;
        cfg.disable_dns = false;
        cfg.disable_dhcp = false;
        Slirp* s = slirp_new(&cfg, &callbacks_, this);
        if (!s) return fail(Errc::Failed, "slirp: slirp_new failed");
        slirp_ = s;  // init_completed set it already
        // libslirp's clock (`curtime`, what a UDP socket's expiry counts from) moves only in
        // slirp_pollfds_poll: move it now (a poll "error" looks at no socket), or a datagram
        // that send() hands over before the slirp thread's first round makes a socket that
        // expired long ago, and the next fill drops it.
        slirp_pollfds_poll(slirp_, 1, [](int, void*) { return 0; }, nullptr);

        for (const HostForward& f : forwards) {
            const std::string what = fmt::format("slirp: hostfwd {}:{}:{}-{}:{}", f.udp ? "udp" : "tcp", f.host_addr,
                                                 f.host_port, f.guest_addr, f.guest_port);
            in_addr host{}, guest{};  // 0.0.0.0: any host address; the guest's DHCP address
            if (!f.host_addr.empty() && ::inet_pton(AF_INET, f.host_addr.c_str(), &host) != 1)
                return fail(Errc::Invalid, "{}: bad host address", what);
            if (!f.guest_addr.empty() && ::inet_pton(AF_INET, f.guest_addr.c_str(), &guest) != 1)
                return fail(Errc::Invalid, "{}: bad guest address", what);
            errno = 0;
            if (slirp_add_hostfwd(slirp_, f.udp ? 1 : 0, host, f.host_port, guest, f.guest_port) < 0) {
                const int err = errno;
                return std::unexpected(Error(
                    fmt::format("{}: cannot listen on the host port{}{}", what, err ? ": " : "",
                                err ? std::strerror(err) : ""),
                    Errc::Io, err));
            }
            forward_count_.fetch_add(1);
        }
        log::info("slirp: {}/24, gateway {}, DNS {}, DHCP from {}, {} forward(s) (libslirp {})", kNetwork, kHost,
                  kNameserver, kDhcpStart, forwards.size(), slirp_version_string());
        return {};
    }

    void run_loop() ENL_EXCLUDES(slirp_mu_) {
        while (!stop_.load()) {
            uint32_t timeout = UINT32_MAX;
            UniqueLock lock(slirp_mu_);  // not held in poll(): send() may use libslirp meanwhile
            drain_tx_locked();
            pollfds_.clear();
            pollfds_.push_back({.fd = wake_fd_.get(), .events = POLLIN, .revents = 0});
            slirp_pollfds_fill(
                slirp_, &timeout,
                [](int fd, int events, void* opaque) -> int {
                    auto& fds = static_cast<SlirpBackend*>(opaque)->pollfds_;
                    short ev = 0;
                    if (events & SLIRP_POLL_IN) ev |= POLLIN;
                    if (events & SLIRP_POLL_OUT) ev |= POLLOUT;
                    if (events & SLIRP_POLL_PRI) ev |= POLLPRI;
                    if (events & SLIRP_POLL_ERR) ev |= POLLERR;
                    if (events & SLIRP_POLL_HUP) ev |= POLLHUP;
                    fds.push_back({.fd = fd, .events = ev, .revents = 0});
                    return static_cast<int>(fds.size() - 1);
                },
                this);
            timeout = std::min(timeout, timer_timeout_ms());
            lock.unlock();
            flush_receiver();  // what this round received, before sleeping
            const int n = ::poll(pollfds_.data(), pollfds_.size(),
                                 timeout == UINT32_MAX ? -1 : static_cast<int>(std::min<uint32_t>(timeout, 60'000)));
            if (n < 0 && errno != EINTR) ENL_LOG_LIMITED(warn, "slirp: poll: {}", std::strerror(errno));
            if (pollfds_[0].revents & POLLIN) {
                uint64_t v = 0;
                [[maybe_unused]] ssize_t r = ::read(wake_fd_.get(), &v, sizeof v);
            }
            // A socket that send() made meanwhile has no poll index (libslirp skips it); one it
            // closed is gone from libslirp's lists: the revents below still fit.
            lock.lock();
            slirp_pollfds_poll(
                slirp_, n < 0 ? 1 : 0,
                [](int idx, void* opaque) -> int {
                    auto& fds = static_cast<SlirpBackend*>(opaque)->pollfds_;
                    if (idx < 0 || static_cast<size_t>(idx) >= fds.size()) return 0;
                    const short re = fds[static_cast<size_t>(idx)].revents;
                    int ev = 0;
                    if (re & POLLIN) ev |= SLIRP_POLL_IN;
                    if (re & POLLOUT) ev |= SLIRP_POLL_OUT;
                    if (re & POLLPRI) ev |= SLIRP_POLL_PRI;
                    if (re & POLLERR) ev |= SLIRP_POLL_ERR;
                    if (re & POLLHUP) ev |= SLIRP_POLL_HUP;
                    return ev;
                },
                this);
            run_timers();
        }
    }

    // Hands the queued guest frames to slirp (outside the queue's lock).
    void drain_tx_locked() ENL_REQUIRES(slirp_mu_) ENL_EXCLUDES(tx_mu_) {
        std::deque<std::vector<uint8_t>> frames;
        {
            LockGuard lock(tx_mu_);
            frames.swap(tx_queue_);
            tx_queue_bytes_ = 0;
        }
        for (const auto& f : frames) slirp_input(slirp_, f.data(), static_cast<int>(f.size()));
    }

    [[nodiscard]] uint32_t timer_timeout_ms() const ENL_REQUIRES(slirp_mu_) {
        const int64_t now_ms = monotonic_ns() / 1'000'000;
        uint32_t timeout = UINT32_MAX;
        for (const auto& t : timers_) {
            if (t->expire_ms < 0) continue;
            const int64_t d = std::max<int64_t>(t->expire_ms - now_ms, 0);
            timeout = std::min<uint32_t>(timeout, static_cast<uint32_t>(std::min<int64_t>(d, UINT32_MAX - 1)));
        }
        return timeout;
    }

    void run_timers() ENL_REQUIRES(slirp_mu_) {
        const int64_t now_ms = monotonic_ns() / 1'000'000;
        std::vector<Timer*> due;
        for (const auto& t : timers_)
            if (t->expire_ms >= 0 && t->expire_ms <= now_ms) due.push_back(t.get());
        for (Timer* t : due) {
            // An earlier timer's callback may have freed this one.
            if (std::ranges::none_of(timers_, [t](const auto& p) { return p.get() == t; })) continue;
            t->expire_ms = -1;
            if (t->cb) t->cb(t->cb_opaque);
            else slirp_handle_timer(slirp_, t->id, t->cb_opaque);
        }
    }

    ssize_t on_packet(const void* buf, size_t len) ENL_REQUIRES(slirp_mu_) ENL_EXCLUDES(rx_mu_) {
        LockGuard lock(rx_mu_);
        iovec iov{.iov_base = const_cast<void*>(buf), .iov_len = len};
        Offload o;
        o.csum_valid = true;  // libslirp computes every checksum it sends
        if (!receiver_ || !receiver_->receive(std::span<const iovec>(&iov, 1), o)) {
            rx_dropped_.fetch_add(1, std::memory_order_relaxed);
        } else {
            rx_packets_.fetch_add(1, std::memory_order_relaxed);
            rx_bytes_.fetch_add(len, std::memory_order_relaxed);
            received_ = true;
        }
        return static_cast<ssize_t>(len);
    }

    void flush_receiver() ENL_EXCLUDES(rx_mu_) {
        LockGuard lock(rx_mu_);
        if (!received_) return;
        received_ = false;
        if (receiver_) receiver_->flush();
    }

    const UniqueFd wake_fd_;  // eventfd: frames queued, stop, libslirp's notify
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::atomic<size_t> forward_count_{0};

    // libslirp is not thread-safe: every call into it (and so every callback) holds
    // slirp_mu_, the slirp thread's except in poll(), or a send() that found it free.
    Mutex slirp_mu_ ENL_ACQUIRED_BEFORE(rx_mu_);
    Slirp* slirp_ ENL_GUARDED_BY(slirp_mu_) = nullptr;
    SlirpCb callbacks_{};  // libslirp keeps a pointer to it
    std::vector<std::unique_ptr<Timer>> timers_ ENL_GUARDED_BY(slirp_mu_);
    bool poll_changed_ ENL_GUARDED_BY(slirp_mu_) = false;  // a socket made or a timer moved
    // The slirp thread's own (no lock).
    std::vector<pollfd> pollfds_;  // [0] is wake_fd_, then what slirp_pollfds_fill adds

    Mutex tx_mu_;
    std::deque<std::vector<uint8_t>> tx_queue_ ENL_GUARDED_BY(tx_mu_);
    size_t tx_queue_bytes_ ENL_GUARDED_BY(tx_mu_) = 0;

    Mutex rx_mu_;
    Receiver* receiver_ ENL_GUARDED_BY(rx_mu_) = nullptr;
    bool received_ ENL_GUARDED_BY(rx_mu_) = false;  // receive() took frames since the last flush()

    std::atomic<uint64_t> tx_packets_{0}, tx_bytes_{0}, tx_dropped_{0};
    std::atomic<uint64_t> rx_packets_{0}, rx_bytes_{0}, rx_dropped_{0};
};

}  // namespace

Result<std::unique_ptr<Backend>> make_slirp_backend(const BackendConfig& config) {
    return SlirpBackend::create(config);
}

}  // namespace enlighten::net
