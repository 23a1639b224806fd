#include "backends/disk/queue_common.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "common/sandbox.hpp"
#include "common/log.hpp"

namespace enlighten::disk::detail {

Result<uint64_t> check_request(const DiskInfo& info, const Request& r) {
    uint64_t len = 0;
    switch (r.op) {
        case Op::Read:
        case Op::Write:
            if (r.op == Op::Write && info.read_only) return fail(Errc::Invalid, "disk {}: write to a read-only disk", info.path);
            if (r.iov.size() > kMaxIovecs)
                return fail(Errc::Invalid, "disk {}: {} iovecs (at most {})", info.path, r.iov.size(), kMaxIovecs);
            for (const auto& v : r.iov) {
                if (v.iov_len > std::numeric_limits<uint64_t>::max() - len)
                    return fail(Errc::Invalid, "disk {}: iovec lengths overflow", info.path);
                len += v.iov_len;
            }
            break;
        case Op::Discard:
            if (info.read_only) return fail(Errc::Invalid, "disk {}: discard on a read-only disk", info.path);
            if (!info.discard) return fail(Errc::Unsupported, "disk {}: discard is not supported", info.path);
            len = r.length;
            break;
        case Op::Flush:
            return uint64_t{0};
        default:
            return fail(Errc::Invalid, "disk {}: unknown operation {}", info.path, static_cast<int>(r.op));
    }
    const uint64_t lb = info.logical_block;
    if (r.offset % lb != 0 || len % lb != 0)
        return fail(Errc::Invalid, "disk {}: {:#x}+{:#x} is not in whole {}-byte blocks", info.path, r.offset, len, lb);
    if (r.offset > info.size_bytes || len > info.size_bytes - r.offset)
        return fail(Errc::Invalid, "disk {}: {:#x}+{:#x} is outside the disk ({:#x} bytes)", info.path, r.offset, len,
                    info.size_bytes);
    return len;
}

// ThreadSanitizer does not see liburing's own mmap and munmap system calls, so when a new
// ring's arrays land where a closed ring's were, it took the new owner thread's writes for a
// race with the old owner's (build-tsan's disk_test, now and then). A release when a ring is
// closed and an acquire when one is made tell it the truth: the old ring was gone first.
#if defined(__SANITIZE_THREAD__)
#define ENL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ENL_TSAN 1
#endif
#endif
#ifdef ENL_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
namespace {
char g_rings_sync;  // the sync object of every ring's opening and closing
}  // namespace
void ring_opened() { __tsan_acquire(&g_rings_sync); }
void close_ring(io_uring& ring) {
    __tsan_release(&g_rings_sync);
    ::io_uring_queue_exit(&ring);
}
#else
void ring_opened() {}
void close_ring(io_uring& ring) { ::io_uring_queue_exit(&ring); }
#endif

Result<> open_ring(const std::string& path, unsigned entries, io_uring& ring, UniqueFd& completion_fd) {
    io_uring_params p{};
    p.flags = IORING_SETUP_SUBMIT_ALL;
    int rc = ::io_uring_queue_init_params(entries, &ring, &p);
    if (rc == -EINVAL) {
        p = io_uring_params{};
        rc = ::io_uring_queue_init_params(entries, &ring, &p);
    }
    if (rc < 0) {
        const int err = -rc;
        return std::unexpected(Error(fmt::format("disk {}: io_uring_setup: {}", path, std::strerror(err)),
                                     err == ENOSYS || err == EPERM ? Errc::Unsupported : Errc::Io, err));
    }
    ring_opened();
    completion_fd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!completion_fd.valid()) {
        const int err = errno;
        close_ring(ring);
        return std::unexpected(Error(fmt::format("disk {}: eventfd: {}", path, std::strerror(err)), Errc::Io, err));
    }
    if (rc = ::io_uring_register_eventfd(&ring, completion_fd.get()); rc < 0) {
        close_ring(ring);
        return std::unexpected(
            Error(fmt::format("disk {}: io_uring_register_eventfd: {}", path, std::strerror(-rc)), Errc::Io, -rc));
    }
    return {};
}

void wait_idle(Queue& q) {
    while (q.in_flight() > 0) {
        q.kick();
        if (q.reap([](const Completion&) {}) > 0) continue;
        pollfd pfd{q.completion_fd(), POLLIN, 0};
        (void)::poll(&pfd, 1, 100);
    }
}

BlockingHelper::BlockingHelper(const char* name, int notify_fd)
    : name_(name), notify_fd_(notify_fd), thread_([this] { run(); }) {}

BlockingHelper::~BlockingHelper() {
    {
        LockGuard g(mu_);
        stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
}

void BlockingHelper::post(uint32_t slot, Job job) {
    {
        LockGuard g(mu_);
        jobs_.push_back({slot, std::move(job)});
    }
    cv_.notify_one();
}

void BlockingHelper::take(std::vector<Done>& out) {
    out.clear();
    LockGuard g(mu_);
    out.swap(done_);
}

void BlockingHelper::run() {
    ::pthread_setname_np(::pthread_self(), name_);
    sandbox::enter(sandbox::ThreadKind::DiskIo);
    UniqueLock lock(mu_);
    for (;;) {
        while (!stop_ && jobs_.empty()) cv_.wait(lock);
        if (jobs_.empty()) return;  // stop_, nothing left
        auto [slot, job] = std::move(jobs_.front());
        jobs_.pop_front();
        lock.unlock();
        const int64_t r = job();
        lock.lock();
        done_.push_back({slot, r});
        ::eventfd_write(notify_fd_, 1);
    }
}

}  // namespace enlighten::disk::detail
