#include "backends/disk/vhdx/vhdx.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <thread>
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
constexpr int kRwfDsync = 0x2;  // RWF_DSYNC

// The iovecs covering [skip, skip+len) of `src`.
void iov_slice(std::span<const iovec> src, uint64_t skip, uint64_t len, std::vector<iovec>& out) {
    out.clear();
    for (const auto& v : src) {
        if (len == 0) break;
        if (skip >= v.iov_len) {
            skip -= v.iov_len;
            continue;
        }
        const uint64_t n = std::min<uint64_t>(v.iov_len - skip, len);
        out.push_back({static_cast<uint8_t*>(v.iov_base) + skip, static_cast<size_t>(n)});
        len -= n;
        skip = 0;
    }
}

void zero_iov(std::span<const iovec> iov) {
    for (const auto& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

// One file of the chain, as the data path sees it.
struct Level {
    int buffered = -1;  // the Image's descriptor
    UniqueFd direct;    // O_DIRECT, or invalid
    uint32_t mem_align = 1, off_align = 1;
};

int64_t flush_result(const Result<>& r) {
    if (r) return 0;
    log::error("{}", r.error().message());
    return r.error().sys_errno() > 0 ? -int64_t{r.error().sys_errno()} : -int64_t{EIO};
}

class VhdxDiskImpl final : public VhdxDisk, public std::enable_shared_from_this<VhdxDiskImpl> {
public:
    DiskInfo info_;
    std::unique_ptr<vhdx::Image> image_;
    std::vector<Level> levels_;

    ~VhdxDiskImpl() override {
        if (image_)
            if (auto r = image_->close(); !r) log::error("{}", r.error().message());
    }
    [[nodiscard]] const DiskInfo& info() const override { return info_; }
    vhdx::Image& image() override { return *image_; }
    Result<std::unique_ptr<Queue>> open_queue(uint32_t depth) override;
};

class VhdxQueueImpl final : public Queue {
public:
    static Result<std::unique_ptr<Queue>> create(std::shared_ptr<VhdxDiskImpl> disk, uint32_t depth) {
        auto q = std::unique_ptr<VhdxQueueImpl>(new VhdxQueueImpl(std::move(disk), depth));
        // Room for a request split over several blocks or files; more sub-requests than this
        // are submitted in turns (submit() flushes the SQ when it is full).
        const unsigned entries = std::min<unsigned>(kMaxQueueDepth, std::max<unsigned>(64, depth * 2));
        ENL_TRY_VOID(detail::open_ring(q->disk_->info_.path, entries, q->ring_, q->efd_));
        q->ring_ok_ = true;
        return std::unique_ptr<Queue>(std::move(q));
    }

    ~VhdxQueueImpl() override {
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
        free_.pop_back();
        Slot& s = slots_[idx];
        s = Slot{};
        s.busy = true;
        s.tag = r.tag;
        s.op = r.op;
        s.total = len;
        s.fua = r.op == Op::Write && (r.fua || !info.volatile_cache);

        vhdx::Image& img = *disk_->image_;
        auto set_error = [&](const Error& e) {
            ENL_LOG_LIMITED(error, "{}", e.message());
            s.result = e.sys_errno() > 0 ? -int64_t{e.sys_errno()} : -int64_t{EIO};
        };
        extents_.clear();
        if (len == 0 && r.op != Op::Flush) {
            // nothing to do
        } else if (r.op == Op::Read) {
            if (auto m = img.map_read(r.offset, len, extents_); !m) {
                set_error(m.error());
            } else {
                uint64_t pos = 0;
                for (const auto& x : extents_) {
                    iov_slice(r.iov, pos, x.length, scratch_);
                    if (x.level < 0) zero_iov(scratch_);
                    else add_rw(idx, Op::Read, x.level, x.file_offset, x.length, scratch_, 0);
                    pos += x.length;
                }
            }
        } else if (r.op == Op::Write) {
            if (auto m = img.map_write(r.offset, len, extents_, s.marks); !m) {
                set_error(m.error());
            } else {
                uint64_t pos = 0;
                for (const auto& x : extents_) {
                    iov_slice(r.iov, pos, x.length, scratch_);
                    add_rw(idx, Op::Write, 0, x.file_offset, x.length, scratch_, s.fua ? kRwfDsync : 0);
                    pos += x.length;
                }
            }
        } else if (r.op == Op::Discard) {
            if (auto m = img.discard(r.offset, len, extents_); !m) {
                set_error(m.error());
            } else {
                for (const auto& x : extents_) {
                    Sub& sub = new_sub(idx, Op::Discard);
                    sub.fd = disk_->levels_[0].buffered;
                    sub.offset = x.file_offset;
                    sub.len = x.length;
                }
            }
        } else if (!info.read_only) {  // Flush
            if (img.needs_commit()) {
                post_flush(idx);
                return {};
            }
            Sub& sub = new_sub(idx, Op::Flush);
            sub.fd = disk_->levels_[0].buffered;
        }
        if (s.pending == 0) new_sub(idx, Op::Flush).nop = true;
        for (uint32_t sub : queued_) queue_sqe(sub);
        queued_.clear();
        return {};
    }

    void kick() override {
        if (io_uring_sq_ready(&ring_) == 0) return;
        const int rc = ::io_uring_submit(&ring_);
        if (rc < 0) ENL_LOG_LIMITED(warn, "disk {}: io_uring_submit: {}", disk_->info_.path, std::strerror(-rc));
    }

    [[nodiscard]] int completion_fd() const override { return efd_.get(); }

    size_t reap(const std::function<void(const Completion&)>& fn) override {
        eventfd_t ignored = 0;
        (void)::eventfd_read(efd_.get(), &ignored);
        size_t delivered = 0;
        if (helper_) {
            helper_->take(helper_done_);
            for (const auto& d : helper_done_) {
                Slot& s = slots_[d.slot];
                if (d.result < 0 && s.result == 0) s.result = d.result;
                --s.pending;  // the helper job was its last piece
                finish(d.slot, fn);
                ++delivered;
            }
            helper_done_.clear();
        }
        const size_t limit = size_t{2} * depth_;
        size_t seen = 0;
        io_uring_cqe* cqe = nullptr;
        while (seen < limit && ::io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe) {
            const uint64_t sub = cqe->user_data;
            const int res = cqe->res;
            ::io_uring_cqe_seen(&ring_, cqe);
            ++seen;
            if (sub >= subs_.size() || !subs_[sub].busy) {
                ENL_LOG_LIMITED(error, "disk {}: completion for unknown sub-request {}", disk_->info_.path, sub);
                continue;
            }
            if (handle(static_cast<uint32_t>(sub), res, fn)) ++delivered;
        }
        if (io_uring_sq_ready(&ring_) > 0) kick();
        if (io_uring_cq_ready(&ring_) > 0) ::eventfd_write(efd_.get(), 1);
        return delivered;
    }

    [[nodiscard]] uint32_t depth() const override { return depth_; }
    [[nodiscard]] uint32_t in_flight() const override { return depth_ - static_cast<uint32_t>(free_.size()); }

private:
    struct Slot {
        uint64_t tag = 0;
        Op op = Op::Read;
        bool busy = false;
        bool fua = false;
        uint32_t pending = 0;  // sub-requests (or a helper job) not done yet
        int64_t result = 0;    // the first error
        uint64_t total = 0;
        std::vector<vhdx::Mark> marks;
    };
    // One piece of a request: an SQE on one file.
    struct Sub {
        uint32_t slot = 0;
        Op op = Op::Read;
        bool busy = false, nop = false, direct = false, retried = false;
        int fd = -1;
        int level = 0;
        int rw_flags = 0;
        uint64_t offset = 0, len = 0, done = 0;
        std::vector<iovec> iov;
    };

    VhdxQueueImpl(std::shared_ptr<VhdxDiskImpl> disk, uint32_t depth) : disk_(std::move(disk)), depth_(depth), slots_(depth) {
        for (uint32_t i = depth; i-- > 0;) free_.push_back(i);
    }

    Sub& new_sub(uint32_t slot, Op op) {
        uint32_t i = 0;
        if (free_subs_.empty()) {
            i = static_cast<uint32_t>(subs_.size());
            subs_.emplace_back();
        } else {
            i = free_subs_.back();
            free_subs_.pop_back();
        }
        Sub& s = subs_[i];
        std::vector<iovec> keep = std::move(s.iov);
        s = Sub{};
        s.iov = std::move(keep);
        s.iov.clear();
        s.slot = slot;
        s.op = op;
        s.busy = true;
        ++slots_[slot].pending;
        queued_.push_back(i);
        return s;
    }

    void add_rw(uint32_t slot, Op op, int level, uint64_t off, uint64_t len, const std::vector<iovec>& iov, int flags) {
        Sub& s = new_sub(slot, op);
        s.level = level;
        s.offset = off;
        s.len = len;
        s.iov = iov;
        s.rw_flags = flags;
        choose_fd(s);
    }

    void choose_fd(Sub& s) const {
        const Level& l = disk_->levels_[static_cast<size_t>(s.level)];
        const bool ok = l.direct.valid() && !s.retried && s.offset % l.off_align == 0 && (s.len - s.done) % l.off_align == 0 &&
                        std::all_of(s.iov.begin(), s.iov.end(), [&](const iovec& v) {
                            return reinterpret_cast<uintptr_t>(v.iov_base) % l.mem_align == 0 && v.iov_len % l.off_align == 0;
                        });
        s.direct = ok;
        s.fd = ok ? l.direct.get() : l.buffered;
    }

    void queue_sqe(uint32_t i) {
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
        if (!sqe) {
            (void)::io_uring_submit(&ring_);
            sqe = ::io_uring_get_sqe(&ring_);
        }
        if (!sqe) {  // not expected: the SQ was just emptied; fail this piece
            ENL_LOG_LIMITED(error, "disk {}: no submission queue entry", disk_->info_.path);
            sqe = nullptr;
        }
        Sub& s = subs_[i];
        if (!sqe) {
            s.nop = true;
            if (slots_[s.slot].result == 0) slots_[s.slot].result = -EIO;
            return;  // leaks the piece; the slot never completes (logged)
        }
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
                    ::io_uring_prep_fallocate(sqe, s.fd, kPunchHole, static_cast<off_t>(s.offset), static_cast<off_t>(s.len));
                    break;
            }
        }
        ::io_uring_sqe_set_data64(sqe, i);
    }

    void post_flush(uint32_t slot) {
        ++slots_[slot].pending;
        if (!helper_) helper_ = std::make_unique<detail::BlockingHelper>("vhdx-flush", efd_.get());
        helper_->post(slot, [disk = disk_] { return flush_result(disk->image_->flush()); });
    }

    // One CQE of a piece. True if its request completed.
    bool handle(uint32_t i, int res, const std::function<void(const Completion&)>& fn) {
        Sub& s = subs_[i];
        Slot& slot = slots_[s.slot];
        const bool rw = !s.nop && (s.op == Op::Read || s.op == Op::Write);
        if (rw && res == -EINVAL && s.direct && !s.retried) {
            ENL_LOG_LIMITED(warn, "disk {}: O_DIRECT refused a request at {:#x} (EINVAL); retrying it buffered",
                            disk_->info_.path, s.offset);
            s.retried = true;
            choose_fd(s);
            queue_sqe(i);
            return false;
        }
        if (res < 0) {
            if (slot.result == 0) slot.result = res;
        } else if (rw) {
            const auto n = static_cast<uint64_t>(res);
            s.done += n;
            if (s.done < s.len) {
                std::vector<iovec> rest;
                iov_slice(s.iov, n, s.len - s.done, rest);
                if (n == 0) {
                    if (s.op == Op::Read) {
                        zero_iov(rest);  // past the end of the file (a short last block): zeros
                    } else {
                        if (slot.result == 0) slot.result = -EIO;
                    }
                } else {
                    s.iov.swap(rest);
                    s.offset += n;
                    choose_fd(s);
                    queue_sqe(i);
                    return false;
                }
            }
        }
        const uint32_t si = s.slot;
        s.busy = false;
        free_subs_.push_back(i);
        if (--slot.pending > 0) return false;
        if (slot.op == Op::Write && slot.result == 0) {
            disk_->image_->complete_write(slot.marks);
            if (slot.fua && disk_->image_->needs_commit()) {
                post_flush(si);  // FUA: the new block's metadata must be stable too
                return false;
            }
        }
        finish(si, fn);
        return true;
    }

    void finish(uint32_t idx, const std::function<void(const Completion&)>& fn) {
        Slot& s = slots_[idx];
        const int64_t result = s.result < 0 ? s.result : (s.op == Op::Read || s.op == Op::Write) ? int64_t(s.total) : 0;
        const Completion c{s.tag, result};
        s.busy = false;
        s.marks.clear();
        free_.push_back(idx);
        fn(c);
    }

    std::shared_ptr<VhdxDiskImpl> disk_;
    const uint32_t depth_;
    io_uring ring_{};
    bool ring_ok_ = false;
    UniqueFd efd_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    std::deque<Sub> subs_;  // stable addresses; indices are the SQEs' user_data
    std::vector<uint32_t> free_subs_;
    std::vector<uint32_t> queued_;
    std::vector<vhdx::Extent> extents_;
    std::vector<iovec> scratch_;
    std::unique_ptr<detail::BlockingHelper> helper_;
    std::vector<detail::BlockingHelper::Done> helper_done_;
};

Result<std::unique_ptr<Queue>> VhdxDiskImpl::open_queue(uint32_t depth) {
    if (depth == 0 || depth > kMaxQueueDepth)
        return fail(Errc::Invalid, "disk {}: queue depth {} (1..{})", info_.path, depth, kMaxQueueDepth);
    return VhdxQueueImpl::create(shared_from_this(), depth);
}

}  // namespace

Result<std::shared_ptr<VhdxDisk>> open_vhdx(const OpenOptions& o) {
    auto d = std::make_shared<VhdxDiskImpl>();
    ENL_TRY(d->image_, vhdx::Image::open(o.path, {.writable = !o.read_only,
                                                   .replay_in_memory = true,
                                                   .accept_changed_parent = o.accept_changed_parent}));
    vhdx::Image& img = *d->image_;
    DiskInfo& info = d->info_;
    info.path = o.path;
    info.format = "vhdx";
    info.read_only = o.read_only;
    info.size_bytes = img.size();
    info.logical_block = img.logical_sector();
    info.physical_block = std::max(img.physical_sector(), img.logical_sector());
    info.volatile_cache = !o.read_only && !o.writethrough;
    info.fua = !o.read_only;
    info.discard = !o.read_only && !img.fixed();
    info.discard_zeroes = info.discard && !img.differencing();
    // A base disk punches partial ranges too (whole blocks also leave the BAT), so the guest
    // may send small discards: with the block size (32 MiB by default) as the granularity,
    // ext4's fstrim found almost nothing aligned enough to trim. A differencing disk drops
    // partial ranges (its parent's data must keep showing through), so it asks for blocks.
    info.discard_granularity = img.differencing() ? img.block_size() : std::max<uint32_t>(info.physical_block, 4096);

    bool direct = o.direct != OpenOptions::Direct::Off;
    std::string why;
    for (const vhdx::Image* level : img.chain()) {
        Level l;
        l.buffered = level->fd();
        if (direct) {
            const bool top = level == &img;
            l.direct.reset(::open(level->path().c_str(), (top && !o.read_only ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC));
            if (!l.direct.valid()) {
                why = fmt::format("{}: open with O_DIRECT: {}", level->path(), std::strerror(errno));
                direct = false;
            } else {
                struct statx sx {};
                if (::statx(l.direct.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
                    if (sx.stx_dio_offset_align == 0) {
                        why = fmt::format("{}: direct I/O is not supported for this file", level->path());
                        direct = false;
                    }
                    l.mem_align = std::max<uint32_t>(sx.stx_dio_mem_align, 1);
                    l.off_align = std::max<uint32_t>(sx.stx_dio_offset_align, 1);
                } else {
                    l.mem_align = l.off_align = kPageSize;
                }
            }
        }
        d->levels_.push_back(std::move(l));
    }
    if (!direct) {
        if (o.direct == OpenOptions::Direct::On) return fail(Errc::Io, "disk {}: O_DIRECT was asked for, but {}", o.path, why);
        if (o.direct == OpenOptions::Direct::Auto)
            log::warn("disk {}: {}; using buffered I/O through the host page cache", o.path, why);
        for (auto& l : d->levels_) l.direct.reset();
    }
    info.direct = direct;
    log::debug("disk {}: vhdx {} bytes, {}-byte sectors, {} MiB blocks, {} level(s), {}{}", o.path, info.size_bytes,
               info.logical_block, img.block_size() >> 20, d->levels_.size(), direct ? "O_DIRECT" : "buffered",
               info.read_only ? ", read-only" : "");
    return std::shared_ptr<VhdxDisk>(std::move(d));
}

}  // namespace enlighten::disk
