#include "backends/disk/raw.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backends/disk/queue_common.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten::disk {

namespace {

constexpr uint32_t kPageSize = 4096;
constexpr int kPunchHole = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
constexpr int kRwfDsync = 0x2;  // RWF_DSYNC (glibc and linux/fs.h define it differently)

Error io_error(const std::string& path, std::string_view what, int err) {
    const Errc code = err == ENOENT ? Errc::NotFound : err == EISDIR ? Errc::Invalid : Errc::Io;
    return Error(fmt::format("disk {}: {}: {}", path, what, std::strerror(err)), code, err);
}

// A number from sysfs (/sys/dev/block/M:m/queue/<name>, or the parent's for a partition).
std::optional<uint64_t> block_queue_attr(dev_t rdev, const char* name) {
    const std::string dir = fmt::format("/sys/dev/block/{}:{}", major(rdev), minor(rdev));
    for (const char* rel : {"/queue/", "/../queue/"}) {
        std::ifstream in(dir + rel + name);
        uint64_t v = 0;
        if (in >> v) return v;
    }
    return std::nullopt;
}

bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

struct FreeDeleter {
    void operator()(uint8_t* p) const { std::free(p); }
};
using Bounce = std::unique_ptr<uint8_t, FreeDeleter>;

// The iovecs of `src` after its first `skip` bytes.
void iov_skip(std::span<const iovec> src, uint64_t skip, std::vector<iovec>& out) {
    out.clear();
    for (const auto& v : src) {
        if (skip >= v.iov_len) {
            skip -= v.iov_len;
            continue;
        }
        out.push_back({static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip});
        skip = 0;
    }
}

void copy_to_iov(std::span<const iovec> dst, const uint8_t* src, uint64_t len) {
    for (const auto& v : dst) {
        if (len == 0) break;
        const size_t n = static_cast<size_t>(std::min<uint64_t>(v.iov_len, len));
        std::memcpy(v.iov_base, src, n);
        src += n;
        len -= n;
    }
}

void copy_from_iov(uint8_t* dst, std::span<const iovec> src) {
    for (const auto& v : src) {
        std::memcpy(dst, v.iov_base, v.iov_len);
        dst += v.iov_len;
    }
}

// ---- RawDiskImpl ----

class RawDiskImpl final : public RawDisk, public std::enable_shared_from_this<RawDiskImpl> {
public:
    DiskInfo info_;
    UniqueFd fd_;           // O_DIRECT if info_.direct; flushes and discards go here
    UniqueFd buffered_fd_;  // with O_DIRECT: the same image through the page cache
    bool block_ = false;
    uint32_t mem_align_ = 1;
    uint32_t off_align_ = 1;

    [[nodiscard]] const DiskInfo& info() const override { return info_; }
    [[nodiscard]] bool block_device() const override { return block_; }
    [[nodiscard]] uint32_t dio_mem_align() const override { return mem_align_; }
    [[nodiscard]] uint32_t dio_offset_align() const override { return off_align_; }
    [[nodiscard]] int buffered_fd() const { return buffered_fd_.valid() ? buffered_fd_.get() : fd_.get(); }

    // Whether direct I/O can take [offset, offset+len) as it is (offset alignment), and the
    // memory as it is (every iovec's base and length).
    [[nodiscard]] bool offset_ok(uint64_t offset, uint64_t len) const {
        return offset % off_align_ == 0 && len % off_align_ == 0;
    }
    [[nodiscard]] bool memory_ok(std::span<const iovec> iov) const {
        return std::all_of(iov.begin(), iov.end(), [this](const iovec& v) {
            return reinterpret_cast<uintptr_t>(v.iov_base) % mem_align_ == 0 && v.iov_len % off_align_ == 0;
        });
    }

    Result<std::unique_ptr<Queue>> open_queue(uint32_t depth) override;
};

// ---- RawQueueImpl ----

class RawQueueImpl final : public RawQueue {
public:
    static Result<std::unique_ptr<Queue>> create(std::shared_ptr<const RawDiskImpl> disk, uint32_t depth) {
        auto q = std::unique_ptr<RawQueueImpl>(new RawQueueImpl(std::move(disk), depth));
        ENL_TRY_VOID(detail::open_ring(q->disk_->info_.path, depth, q->ring_, q->efd_));
        q->ring_ok_ = true;
        return std::unique_ptr<Queue>(std::move(q));
    }

    ~RawQueueImpl() override {
        if (!ring_ok_) return;
        detail::wait_idle(*this);
        helper_.reset();
        detail::close_ring(ring_);
    }

    Result<> submit(const Request& r) override {
        const DiskInfo& info = disk_->info_;
        ENL_TRY(const uint64_t len, detail::check_request(info, r));
        if (free_.empty()) return fail(Errc::Busy, "disk {}: queue full ({} in flight)", info.path, depth_);

        const uint32_t idx = free_.back();
        Slot& s = slots_[idx];
        s.reset();
        s.tag = r.tag;
        s.op = r.op;
        s.offset = r.offset;
        s.total = len;
        s.user = r.iov;
        s.iov = r.iov;
        s.fd = disk_->fd_.get();

        const bool nothing = (r.op == Op::Flush) ? info.read_only : len == 0;
        if (nothing) {
            s.nop = true;
        } else if (r.op == Op::Read || r.op == Op::Write) {
            // Write-through: every write is a FUA write (there is no cache to flush later).
            if (r.op == Op::Write && (r.fua || !info.volatile_cache)) s.rw_flags = kRwfDsync;
            if (!info.direct) {
                ++stats_.buffered;
            } else if (!disk_->offset_ok(r.offset, len)) {
                s.fd = disk_->buffered_fd();
                ++stats_.buffered;
            } else if (disk_->memory_ok(r.iov)) {
                s.direct = true;
                ++stats_.direct;
            } else {
                const size_t align = std::max<size_t>(disk_->mem_align_, kPageSize);
                const size_t size = (len + align - 1) / align * align;
                s.bounce.reset(static_cast<uint8_t*>(std::aligned_alloc(align, size)));
                if (!s.bounce) return std::unexpected(io_error(info.path, "bounce buffer", ENOMEM));
                if (r.op == Op::Write) copy_from_iov(s.bounce.get(), r.iov);
                s.one = {s.bounce.get(), static_cast<size_t>(len)};
                s.iov = std::span<const iovec>(&s.one, 1);
                s.direct = true;
                ++stats_.bounced;
            }
        } else if (r.op == Op::Discard && disk_->block_) {
            s.busy = true;
            free_.pop_back();
            ++stats_.helper;
            if (!helper_) helper_ = std::make_unique<detail::BlockingHelper>("disk-helper", efd_.get());
            helper_->post(idx, [fd = s.fd, off = r.offset, len] {
                uint64_t range[2] = {off, len};
                return ::ioctl(fd, BLKDISCARD, range) < 0 ? -int64_t{errno} : int64_t{0};
            });
            return {};
        }

        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
        if (!sqe) return fail(Errc::Busy, "disk {}: submission ring full", info.path);  // not reached: SQ >= depth
        s.busy = true;
        free_.pop_back();
        prep(sqe, idx);
        return {};
    }

    void kick() override {
        if (io_uring_sq_ready(&ring_) == 0) return;
        const int rc = ::io_uring_submit(&ring_);
        if (rc < 0)  // EAGAIN, EBUSY, EINTR: the SQEs stay queued; the next kick or reap retries
            ENL_LOG_LIMITED(warn, "disk {}: io_uring_submit: {}", disk_->info_.path, std::strerror(-rc));
    }

    [[nodiscard]] int completion_fd() const override { return efd_.get(); }

    size_t reap(const std::function<void(const Completion&)>& fn) override {
        eventfd_t ignored = 0;
        (void)::eventfd_read(efd_.get(), &ignored);  // clear first: a later completion sets it again

        size_t delivered = 0;
        if (helper_) {
            helper_->take(helper_done_);
            for (const auto& d : helper_done_) {
                finish(d.slot, d.result, fn);
                ++delivered;
            }
            helper_done_.clear();
        }
        const size_t limit = size_t{2} * depth_;
        size_t seen = 0;
        io_uring_cqe* cqe = nullptr;
        while (seen < limit && ::io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
            const uint64_t idx = cqe->user_data;
            const int res = cqe->res;
            ::io_uring_cqe_seen(&ring_, cqe);
            ++seen;
            if (idx >= slots_.size() || !slots_[idx].busy) {
                ENL_LOG_LIMITED(error, "disk {}: completion for unknown slot {}", disk_->info_.path, idx);
                continue;
            }
            if (handle(static_cast<uint32_t>(idx), res, fn)) ++delivered;
        }
        if (io_uring_sq_ready(&ring_) > 0) kick();  // continuations of short transfers, retries
        if (io_uring_cq_ready(&ring_) > 0) ::eventfd_write(efd_.get(), 1);  // more than `limit`: come back
        return delivered;
    }

    [[nodiscard]] uint32_t depth() const override { return depth_; }
    [[nodiscard]] uint32_t in_flight() const override { return depth_ - static_cast<uint32_t>(free_.size()); }
    [[nodiscard]] const RawQueueStats& stats() const override { return stats_; }

private:
    struct Slot {
        uint64_t tag = 0;
        Op op = Op::Read;
        bool busy = false;
        bool nop = false;       // nothing to do: an IORING_OP_NOP completes it
        bool direct = false;    // on the O_DIRECT descriptor
        bool retried = false;   // EINVAL retry done
        int fd = -1;
        int rw_flags = 0;
        uint64_t offset = 0;    // of what is left
        uint64_t total = 0;     // Read/Write: the whole length; Discard: the length
        uint64_t done = 0;      // bytes transferred so far
        std::span<const iovec> user;  // the request's iovecs
        std::span<const iovec> iov;   // what is (left) to transfer: user, one, or rest
        std::vector<iovec> rest;      // after a short transfer (keeps its capacity)
        iovec one{};                  // the bounce buffer
        Bounce bounce;

        void reset() {
            tag = 0;
            op = Op::Read;
            busy = nop = direct = retried = false;
            fd = -1;
            rw_flags = 0;
            offset = total = done = 0;
            user = iov = {};
            rest.clear();
            one = {};
            bounce.reset();
        }
    };

    RawQueueImpl(std::shared_ptr<const RawDiskImpl> disk, uint32_t depth)
        : disk_(std::move(disk)), depth_(depth), slots_(depth) {
        free_.reserve(depth);
        for (uint32_t i = depth; i-- > 0;) free_.push_back(i);
    }

    void prep(io_uring_sqe* sqe, uint32_t idx) {
        Slot& s = slots_[idx];
        if (s.nop) {
            ::io_uring_prep_nop(sqe);
        } else {
            switch (s.op) {
                case Op::Read:
                    ::io_uring_prep_readv2(sqe, s.fd, s.iov.data(), static_cast<unsigned>(s.iov.size()), s.offset, 0);
                    break;
                case Op::Write:
                    ::io_uring_prep_writev2(sqe, s.fd, s.iov.data(), static_cast<unsigned>(s.iov.size()), s.offset,
                                            s.rw_flags);
                    break;
                case Op::Flush:
                    ::io_uring_prep_fsync(sqe, s.fd, IORING_FSYNC_DATASYNC);
                    break;
                case Op::Discard:
                    ::io_uring_prep_fallocate(sqe, s.fd, kPunchHole, static_cast<off_t>(s.offset),
                                              static_cast<off_t>(s.total));
                    break;
            }
        }
        ::io_uring_sqe_set_data64(sqe, idx);
    }

    // Queues the slot's SQE again (a continuation or a retry). False if the SQ is full, which
    // cannot happen (each slot has at most one SQE, and the SQ has at least depth entries).
    bool requeue(uint32_t idx) {
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
        if (!sqe) {
            kick();
            sqe = ::io_uring_get_sqe(&ring_);
        }
        if (!sqe) return false;
        prep(sqe, idx);
        return true;
    }

    // One CQE. True if the request completed (fn was called), false if it continues.
    bool handle(uint32_t idx, int res, const std::function<void(const Completion&)>& fn) {
        Slot& s = slots_[idx];
        const bool rw = !s.nop && (s.op == Op::Read || s.op == Op::Write);
        if (!rw) {
            finish(idx, res, fn);
            return true;
        }
        if (res == -EINVAL && s.direct && !s.retried) {
            // An alignment the kernel did not report (statx gave none, or it lied): once more
            // through the page cache.
            ENL_LOG_LIMITED(warn, "disk {}: O_DIRECT refused a request at {:#x} (EINVAL); retrying it buffered",
                            disk_->info_.path, s.offset);
            s.retried = true;
            s.direct = false;
            s.fd = disk_->buffered_fd();
            ++stats_.einval_retried;
            if (requeue(idx)) return false;
            finish(idx, -EIO, fn);
            return true;
        }
        if (res < 0) {
            finish(idx, res, fn);
            return true;
        }
        const auto n = static_cast<uint64_t>(res);
        s.done += n;
        if (s.done < s.total) {
            if (n == 0) {  // no progress (the image shrank under us?)
                ENL_LOG_LIMITED(warn, "disk {}: {} at {:#x} made no progress", disk_->info_.path,
                                s.op == Op::Read ? "read" : "write", s.offset);
                finish(idx, -EIO, fn);
                return true;
            }
            s.offset += n;
            std::vector<iovec> rest;
            iov_skip(s.iov, n, rest);
            s.rest.swap(rest);
            s.iov = s.rest;
            if (s.direct && !(disk_->offset_ok(s.offset, s.total - s.done) && disk_->memory_ok(s.iov))) {
                s.direct = false;
                s.fd = disk_->buffered_fd();
            }
            ++stats_.resubmitted;
            if (requeue(idx)) return false;
            finish(idx, -EIO, fn);
            return true;
        }
        if (s.op == Op::Read && s.bounce) copy_to_iov(s.user, s.bounce.get(), s.total);
        finish(idx, static_cast<int64_t>(s.total), fn);
        return true;
    }

    // Frees the slot, then tells the caller (who may submit into it).
    void finish(uint32_t idx, int64_t result, const std::function<void(const Completion&)>& fn) {
        Slot& s = slots_[idx];
        const Completion c{s.tag, result};
        s.reset();
        free_.push_back(idx);
        fn(c);
    }

    std::shared_ptr<const RawDiskImpl> disk_;
    const uint32_t depth_;
    io_uring ring_{};
    bool ring_ok_ = false;
    UniqueFd efd_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    std::unique_ptr<detail::BlockingHelper> helper_;  // started at the first block-device discard
    std::vector<detail::BlockingHelper::Done> helper_done_;
    RawQueueStats stats_;
};

Result<std::unique_ptr<Queue>> RawDiskImpl::open_queue(uint32_t depth) {
    if (depth == 0 || depth > kMaxQueueDepth)
        return fail(Errc::Invalid, "disk {}: queue depth {} (1..{})", info_.path, depth, kMaxQueueDepth);
    return RawQueueImpl::create(shared_from_this(), depth);
}

// The io_uring operations this backend needs, and whether FALLOCATE is one of them.
Result<bool> probe_io_uring(const std::string& path) {
    io_uring_probe* probe = ::io_uring_get_probe();
    if (!probe) return fail(Errc::Unsupported, "disk {}: io_uring is not available (disabled or filtered)", path);
    const bool base = io_uring_opcode_supported(probe, IORING_OP_NOP) && io_uring_opcode_supported(probe, IORING_OP_READV) &&
                      io_uring_opcode_supported(probe, IORING_OP_WRITEV) && io_uring_opcode_supported(probe, IORING_OP_FSYNC);
    const bool falloc = io_uring_opcode_supported(probe, IORING_OP_FALLOCATE);
    ::io_uring_free_probe(probe);
    if (!base) return fail(Errc::Unsupported, "disk {}: io_uring lacks READV/WRITEV/FSYNC", path);
    return falloc;
}

}  // namespace

Result<std::shared_ptr<RawDisk>> open_raw(const OpenOptions& o, const OpenFn& open_fn) {
    const std::string& path = o.path;
    auto do_open = [&](int flags) { return open_fn ? open_fn(path.c_str(), flags) : ::open(path.c_str(), flags); };
    ENL_TRY(const bool io_uring_fallocate, probe_io_uring(path));

    auto d = std::make_shared<RawDiskImpl>();
    DiskInfo& info = d->info_;
    info.path = path;
    info.format = "raw";
    info.read_only = o.read_only;
    const int flags = (o.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;

    // Buffered first: it tells what the image is, and it serves misaligned requests later.
    UniqueFd bfd(do_open(flags));
    if (!bfd.valid()) return std::unexpected(io_error(path, "open", errno));
    struct stat st {};
    if (::fstat(bfd.get(), &st) < 0) return std::unexpected(io_error(path, "fstat", errno));
    d->block_ = S_ISBLK(st.st_mode);
    if (!d->block_ && !S_ISREG(st.st_mode))
        return fail(Errc::Invalid, "disk {}: not a regular file or a block device", path);

    uint64_t size = 0;
    if (d->block_) {
        int lbs = 0;
        unsigned int pbs = 0;
        if (::ioctl(bfd.get(), BLKGETSIZE64, &size) < 0) return std::unexpected(io_error(path, "BLKGETSIZE64", errno));
        if (::ioctl(bfd.get(), BLKSSZGET, &lbs) < 0) return std::unexpected(io_error(path, "BLKSSZGET", errno));
        if (::ioctl(bfd.get(), BLKPBSZGET, &pbs) < 0) pbs = static_cast<unsigned>(lbs);
        if (lbs < 512 || lbs > 65536 || !is_pow2(static_cast<uint64_t>(lbs)))
            return fail(Errc::Invalid, "disk {}: logical block size {} (512..65536, a power of two)", path, lbs);
        info.logical_block = static_cast<uint32_t>(lbs);
        info.physical_block = is_pow2(pbs) && pbs >= info.logical_block ? pbs : info.logical_block;
    } else {
        size = static_cast<uint64_t>(st.st_size);
        info.logical_block = 512;
        info.physical_block = kPageSize;
    }
    info.size_bytes = size / info.logical_block * info.logical_block;
    if (info.size_bytes == 0)
        return fail(Errc::Invalid, "disk {}: smaller than one {}-byte block ({} bytes)", path, info.logical_block, size);
    if (info.size_bytes != size)
        log::warn("disk {}: size {} is not a multiple of {}; the last {} bytes are not used", path, size,
                  info.logical_block, size - info.size_bytes);

    // O_DIRECT and its alignment.
    if (o.direct != OpenOptions::Direct::Off) {
        std::string why;  // empty: direct works
        UniqueFd dfd(do_open(flags | O_DIRECT));
        if (!dfd.valid()) {
            const int err = errno;
            if (err != EINVAL) return std::unexpected(io_error(path, "open with O_DIRECT", err));
            why = "the file system refuses O_DIRECT (EINVAL)";
        } else {
            struct statx sx {};
            if (::statx(dfd.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
                if (sx.stx_dio_offset_align == 0) why = "direct I/O is not supported for this file (statx)";
                d->mem_align_ = std::max<uint32_t>(sx.stx_dio_mem_align, 1);
                d->off_align_ = std::max<uint32_t>(sx.stx_dio_offset_align, 1);
            } else {  // not reported (older kernels, tmpfs, block devices before 6.11): be safe
                d->mem_align_ = kPageSize;
                d->off_align_ = d->block_ ? std::max(info.logical_block, 512u) : kPageSize;
            }
            if (why.empty() && d->off_align_ > info.logical_block &&
                (d->off_align_ % kPageSize != 0 || !is_pow2(d->off_align_)))
                why = fmt::format("its O_DIRECT offset alignment {} is neither at most the {}-byte sector nor whole pages",
                                  d->off_align_, info.logical_block);
        }
        if (why.empty()) {
            d->fd_ = std::move(dfd);
            d->buffered_fd_ = std::move(bfd);
            info.direct = true;
        } else if (o.direct == OpenOptions::Direct::On) {
            return fail(Errc::Io, "disk {}: O_DIRECT was asked for, but {}", path, why);
        } else {
            log::warn("disk {}: {}; using buffered I/O through the host page cache (flushes still reach stable storage)",
                      path, why);
        }
    }
    if (!info.direct) {
        d->fd_ = std::move(bfd);
        d->mem_align_ = 1;
        d->off_align_ = 1;
    }
    if (info.direct && d->off_align_ > info.physical_block && d->off_align_ <= 65536)
        info.physical_block = d->off_align_;

    // Durability: fdatasync and RWF_DSYNC work on every file and block device.
    info.volatile_cache = !info.read_only && !o.writethrough;
    info.fua = !info.read_only;

    // Discard.
    if (!info.read_only) {
        if (d->block_) {
            info.discard = block_queue_attr(st.st_rdev, "discard_max_bytes").value_or(0) > 0;
            info.discard_zeroes = false;  // BLKDISCARD leaves whatever the device returns
            const uint64_t g = block_queue_attr(st.st_rdev, "discard_granularity").value_or(0);
            info.discard_granularity = is_pow2(g) && g <= (1u << 30) ? static_cast<uint32_t>(g) : info.physical_block;
        } else if (io_uring_fallocate) {
            // Punching past the end changes nothing, and tells whether the file system can.
            const off_t end = (st.st_size + kPageSize - 1) / kPageSize * kPageSize;
            if (::fallocate(d->fd_.get(), kPunchHole, end, kPageSize) == 0) {
                info.discard = true;
                info.discard_zeroes = true;
            } else {
                log::info("disk {}: discard disabled: the file system cannot punch holes ({})", path, std::strerror(errno));
            }
            const auto blk = static_cast<uint64_t>(st.st_blksize);
            info.discard_granularity = is_pow2(blk) && blk <= (1u << 20) ? static_cast<uint32_t>(blk) : kPageSize;
        }
    }
    log::debug("disk {}: raw {} bytes, {}-byte sectors, {} (align mem {} offset {}){}{}", path, info.size_bytes,
               info.logical_block, info.direct ? "O_DIRECT" : "buffered", d->mem_align_, d->off_align_,
               info.read_only ? ", read-only" : "", info.discard ? ", discard" : "");
    return std::shared_ptr<RawDisk>(std::move(d));
}

}  // namespace enlighten::disk
