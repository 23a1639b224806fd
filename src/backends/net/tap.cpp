#include "backends/net/tap.hpp"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <thread>
#include <vector>

#include "backends/net/offload.hpp"
#include "common/sandbox.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/thread_annotations.hpp"
#include "common/wire.hpp"

namespace enlighten::net {
namespace {

// include/uapi/linux/virtio_net.h (not includable from C++: a field is named `class`).
constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t VIRTIO_NET_HDR_F_DATA_VALID = 2;
constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV4 = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV6 = 4;

// struct virtio_net_hdr_mrg_rxbuf; little-endian (x86).
struct VnetHdr {
    uint8_t flags;         // 0: VIRTIO_NET_HDR_F_NEEDS_CSUM 1, DATA_VALID 2
    uint8_t gso_type;      // 1: NONE 0, TCPV4 1, UDP 3, TCPV6 4, ECN 0x80
    uint16_t hdr_len;      // 2
    uint16_t gso_size;     // 4
    uint16_t csum_start;   // 6
    uint16_t csum_offset;  // 8
    uint16_t num_buffers;  // 10
};
ENL_WIRE(VnetHdr, kTapVnetHdrSize);
ENL_WIRE_OFFSET(VnetHdr, hdr_len, 2);
ENL_WIRE_OFFSET(VnetHdr, csum_start, 6);
ENL_WIRE_OFFSET(VnetHdr, num_buffers, 10);
static_assert(std::endian::native == std::endian::little, "the tap's vnet header is little-endian here");

// The largest frame read from the tap: its MTU may be up to 65535, plus an Ethernet header
// with a VLAN tag.
constexpr size_t kMaxReadFrame = 65535 + 18;
constexpr int kFlushEvery = 64;

// ioctl on the interface through an AF_INET datagram socket (SIOCSIFMTU, SIOCSIFFLAGS).
Result<> if_ioctl(unsigned long req, ifreq& ifr, const char* what) {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s.valid()) return fail_errno("tap: socket");
    if (::ioctl(s.get(), req, &ifr) < 0) return fail_errno(fmt::format("tap {}: {}", ifr.ifr_name, what));
    return {};
}

class TapBackend final : public Backend {
public:
    static Result<std::unique_ptr<Backend>> create(const std::string& name) {
        if (name.size() >= IFNAMSIZ) return fail(Errc::Invalid, "tap: name '{}' is longer than {}", name, IFNAMSIZ - 1);
        const bool existed = !name.empty() && ::if_nametoindex(name.c_str()) != 0;
        UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
        if (!fd.valid()) return fail_errno("tap: open /dev/net/tun");
        ifreq ifr{};
        std::strncpy(ifr.ifr_name, name.empty() ? "enl%d" : name.c_str(), IFNAMSIZ - 1);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) {
            const int err = errno;
            return std::unexpected(Error::from_errno(
                fmt::format("tap: TUNSETIFF '{}'{}", ifr.ifr_name,
                            err == EPERM ? " (creating a tap needs CAP_NET_ADMIN)"
                                         : (err == EINVAL || err == EBUSY ? " (a tun device, or busy?)" : "")),
                err));
        }
        std::string real(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
        int hdr = static_cast<int>(kTapVnetHdrSize);
        if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &hdr) < 0) return fail_errno(fmt::format("tap {}: TUNSETVNETHDRSZ", real));
        // Reads carry complete, segmented frames (no NEEDS_CSUM, no GSO).
        if (::ioctl(fd.get(), TUNSETOFFLOAD, 0u) < 0) return fail_errno(fmt::format("tap {}: TUNSETOFFLOAD", real));
        if (!existed) {
            ifreq up{};
            std::memcpy(up.ifr_name, real.c_str(), real.size() + 1);
            ENL_TRY_VOID(if_ioctl(SIOCGIFFLAGS, up, "SIOCGIFFLAGS"));
            up.ifr_flags = static_cast<short>(up.ifr_flags | IFF_UP);
            ENL_TRY_VOID(if_ioctl(SIOCSIFFLAGS, up, "SIOCSIFFLAGS (up)"));
        } else {
            ifreq st{};
            std::memcpy(st.ifr_name, real.c_str(), real.size() + 1);
            if (if_ioctl(SIOCGIFFLAGS, st, "SIOCGIFFLAGS") && !(st.ifr_flags & IFF_UP))
                log::warn("tap {}: the interface is down; frames from the guest fail until it is up", real);
        }
        const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) return fail_errno("tap: eventfd");
        std::unique_ptr<TapBackend> b(new TapBackend(std::move(fd), UniqueFd(efd), real, !existed));
        b->reader_ = std::thread([self = b.get()] { self->reader_main(); });
        log::info("tap {}: {} (vnet header {} bytes, no read offloads)", real, existed ? "attached" : "created",
                  kTapVnetHdrSize);
        return std::unique_ptr<Backend>(std::move(b));
    }

    ~TapBackend() override {
        stop_.store(true);
        kick();
        if (reader_.joinable()) reader_.join();
    }
    TapBackend(const TapBackend&) = delete;
    TapBackend& operator=(const TapBackend&) = delete;

    [[nodiscard]] Capabilities capabilities() const override { return {.tx_csum = true, .tx_tso = true}; }

    Result<> send(std::span<const iovec> frame, const Offload& offload) override {
        auto r = write_frame(frame, offload);
        if (!r) tx_dropped_.fetch_add(1, std::memory_order_relaxed);
        return r;
    }

    void set_receiver(Receiver* receiver) override {
        {
            LockGuard lock(rx_mu_);  // waits for a receive()/flush() in progress
            receiver_ = receiver;
        }
        kick();  // a reader waiting on the old receiver's room_fd looks again
    }

    void set_mtu(uint32_t mtu) override {
        if (mtu < 68 || mtu > 65535) {
            log::warn("tap {}: MTU {} out of range", name_, mtu);
            return;
        }
        ifreq ifr{};
        std::memcpy(ifr.ifr_name, name_.c_str(), name_.size() + 1);
        ifr.ifr_mtu = static_cast<int>(mtu);
        if (auto r = if_ioctl(SIOCSIFMTU, ifr, "SIOCSIFMTU"); !r) log::warn("{}", r.error().message());
    }

    [[nodiscard]] BackendStatus status() const override {
        BackendStatus s;
        s.kind = "tap";
        s.description = fmt::format("tap {}{}", name_, created_ ? " (created)" : "");
        s.tx_packets = tx_packets_.load(std::memory_order_relaxed);
        s.tx_bytes = tx_bytes_.load(std::memory_order_relaxed);
        s.tx_dropped = tx_dropped_.load(std::memory_order_relaxed);
        s.rx_packets = rx_packets_.load(std::memory_order_relaxed);
        s.rx_bytes = rx_bytes_.load(std::memory_order_relaxed);
        s.rx_dropped = rx_dropped_.load(std::memory_order_relaxed);
        return s;
    }

private:
    TapBackend(UniqueFd fd, UniqueFd kick_fd, std::string name, bool created)
        : fd_(std::move(fd)), kick_fd_(std::move(kick_fd)), name_(std::move(name)), created_(created) {}

    void kick() {
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(kick_fd_.get(), &one, sizeof one);
    }

    Result<> write_frame(std::span<const iovec> frame, const Offload& o) {
        size_t total = 0;
        for (const iovec& v : frame) {
            if (v.iov_len > kMaxOffloadFrame || (total += v.iov_len) > kMaxOffloadFrame)
                return fail(Errc::Invalid, "tap {}: frame longer than {} bytes", name_, kMaxOffloadFrame);
        }
        if (total < 14) return fail(Errc::Invalid, "tap {}: frame of {} bytes", name_, total);
        VnetHdr h{};
        if (o.needs_csum) {
            if (size_t{o.csum_start} + o.csum_offset + 2 > total)
                return fail(Errc::Invalid, "tap {}: checksum at {}+{} outside the {}-byte frame", name_, o.csum_start,
                            o.csum_offset, total);
            h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            h.csum_start = o.csum_start;
            h.csum_offset = o.csum_offset;
        }
        if (o.gso != Offload::Gso::None) {
            if (o.gso_size == 0) return fail(Errc::Invalid, "tap {}: GSO frame with gso_size 0", name_);
            if (o.hdr_len > total) return fail(Errc::Invalid, "tap {}: hdr_len {} > frame {}", name_, o.hdr_len, total);
            h.gso_type = o.gso == Offload::Gso::Tcp4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
            h.gso_size = o.gso_size;
            h.hdr_len = o.hdr_len;
        }
        ssize_t n = -1;
        if (frame.size() < IOV_MAX) {
            std::array<iovec, 65> small{};
            std::vector<iovec> big;
            iovec* iov = small.data();
            if (frame.size() + 1 > small.size()) {
                big.resize(frame.size() + 1);
                iov = big.data();
            }
            iov[0] = {.iov_base = &h, .iov_len = sizeof h};
            std::copy(frame.begin(), frame.end(), iov + 1);
            n = ::writev(fd_.get(), iov, static_cast<int>(frame.size() + 1));
        } else {  // more pieces than writev takes: gather them
            std::vector<uint8_t> buf(sizeof h + total);
            std::memcpy(buf.data(), &h, sizeof h);
            size_t at = sizeof h;
            for (const iovec& v : frame) {
                if (v.iov_len) std::memcpy(buf.data() + at, v.iov_base, v.iov_len);
                at += v.iov_len;
            }
            n = ::write(fd_.get(), buf.data(), buf.size());
        }
        if (n < 0) {
            const int err = errno;
            if (err == EAGAIN || err == ENOBUFS) return fail(Errc::Busy, "tap {}: queue full", name_);
            if (err == EINVAL) return fail(Errc::Invalid, "tap {}: the kernel refused the frame's offload header", name_);
            ENL_LOG_LIMITED(warn, "tap {}: write: {}", name_, std::strerror(err));
            return fail_errno(fmt::format("tap {}: write", name_), err);
        }
        tx_packets_.fetch_add(1, std::memory_order_relaxed);
        tx_bytes_.fetch_add(total, std::memory_order_relaxed);
        return {};
    }

    // --- the reader thread ---
    enum class Delivery { Taken, Dropped, NoRoom };

    void reader_main() {
        ::pthread_setname_np(::pthread_self(), "net-tap");
        sandbox::enter(sandbox::ThreadKind::NetIo);
        std::vector<uint8_t> buf(kTapVnetHdrSize + kMaxReadFrame);
        bool pending = false;  // buf holds a frame the receiver had no room for
        size_t len = 0;
        int since_flush = 0;
        while (!stop_.load()) {
            if (!pending) {
                const ssize_t n = ::read(fd_.get(), buf.data(), buf.size());
                if (n < 0) {
                    const int err = errno;
                    if (err == EINTR) continue;
                    if (err != EAGAIN) {
                        ENL_LOG_LIMITED(warn, "tap {}: read: {}", name_, std::strerror(err));
                        if (err == EBADFD || err == EFAULT) break;
                    }
                    flush(since_flush);
                    wait(fd_.get(), err == EAGAIN ? -1 : 100);
                    continue;
                }
                len = static_cast<size_t>(n);
            }
            switch (deliver(std::span(buf).first(len))) {
                case Delivery::Taken:
                    pending = false;
                    if (++since_flush >= kFlushEvery) flush(since_flush);
                    break;
                case Delivery::Dropped:
                    pending = false;
                    break;
                case Delivery::NoRoom: {
                    pending = true;
                    flush(since_flush);  // what it did take, before waiting for room
                    int room = -1;
                    {
                        LockGuard lock(rx_mu_);
                        if (receiver_) room = receiver_->room_fd();
                    }
                    if (room >= 0 && wait(room, -1)) {
                        uint64_t v = 0;
                        [[maybe_unused]] ssize_t r = ::read(room, &v, sizeof v);  // level: reset it
                    }
                    break;
                }
            }
        }
        flush(since_flush);
    }

    // Waits until `fd` is readable (true), or the kick eventfd or the timeout (false).
    bool wait(int fd, int timeout_ms) {
        std::array<pollfd, 2> p{{{.fd = fd, .events = POLLIN, .revents = 0},
                                 {.fd = kick_fd_.get(), .events = POLLIN, .revents = 0}}};
        if (::poll(p.data(), p.size(), timeout_ms) <= 0) return false;
        if (p[1].revents & POLLIN) {
            uint64_t v = 0;
            [[maybe_unused]] ssize_t r = ::read(kick_fd_.get(), &v, sizeof v);
        }
        return (p[0].revents & POLLIN) != 0;
    }

    Delivery deliver(std::span<uint8_t> data) ENL_EXCLUDES(rx_mu_) {
        if (data.size() < kTapVnetHdrSize + 14) {
            rx_dropped_.fetch_add(1, std::memory_order_relaxed);
            return Delivery::Dropped;
        }
        VnetHdr h;
        std::memcpy(&h, data.data(), sizeof h);
        std::span<uint8_t> frame = data.subspan(kTapVnetHdrSize);
        Offload o;
        o.csum_valid = (h.flags & VIRTIO_NET_HDR_F_DATA_VALID) != 0;
        if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE) {  // TUNSETOFFLOAD 0 rules this out
            ENL_LOG_LIMITED(warn, "tap {}: dropped a GSO frame (type {})", name_, h.gso_type);
            rx_dropped_.fetch_add(1, std::memory_order_relaxed);
            return Delivery::Dropped;
        }
        if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
            Offload c;
            c.needs_csum = true;
            c.csum_start = h.csum_start;
            c.csum_offset = h.csum_offset;
            if (!complete_checksum(frame, c)) {
                rx_dropped_.fetch_add(1, std::memory_order_relaxed);
                return Delivery::Dropped;
            }
            o.csum_valid = true;
            // Done once: a frame kept for a retry must not be summed again.
            data[0] = static_cast<uint8_t>((h.flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM) | VIRTIO_NET_HDR_F_DATA_VALID);
        }
        iovec iov{.iov_base = frame.data(), .iov_len = frame.size()};
        LockGuard lock(rx_mu_);
        if (!receiver_) {
            rx_dropped_.fetch_add(1, std::memory_order_relaxed);
            return Delivery::Dropped;
        }
        if (!receiver_->receive(std::span<const iovec>(&iov, 1), o)) return Delivery::NoRoom;
        rx_packets_.fetch_add(1, std::memory_order_relaxed);
        rx_bytes_.fetch_add(frame.size(), std::memory_order_relaxed);
        return Delivery::Taken;
    }

    void flush(int& since_flush) ENL_EXCLUDES(rx_mu_) {
        if (since_flush == 0) return;
        since_flush = 0;
        LockGuard lock(rx_mu_);
        if (receiver_) receiver_->flush();
    }

    const UniqueFd fd_;
    const UniqueFd kick_fd_;  // eventfd: stop, or the receiver changed
    const std::string name_;
    const bool created_;
    std::atomic<bool> stop_{false};
    std::thread reader_;

    Mutex rx_mu_;
    Receiver* receiver_ ENL_GUARDED_BY(rx_mu_) = nullptr;

    std::atomic<uint64_t> tx_packets_{0}, tx_bytes_{0}, tx_dropped_{0};
    std::atomic<uint64_t> rx_packets_{0}, rx_bytes_{0}, rx_dropped_{0};
};

}  // namespace

Result<std::unique_ptr<Backend>> make_tap_backend(const std::string& name) { return TapBackend::create(name); }

}  // namespace enlighten::net
