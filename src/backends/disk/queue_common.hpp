// What the disk backends' queues share (internal to src/backends/disk): the checks every
// Request gets before a backend looks at it, the io_uring + eventfd set-up, and the helper
// thread that runs the blocking operations io_uring cannot (BLKDISCARD, a VHDX metadata
// flush).
//
// Threads: check_request, open_ring and close_ring are plain functions (any thread). A BlockingHelper is
// owned by one Queue: post() and take() come from that queue's worker thread; the jobs run
// on the helper's own thread, which writes the queue's completion eventfd after each. Its
// mutex is a leaf (jobs run without it). The destructor runs the jobs already posted, then
// joins.
#pragma once

#include <liburing.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backends/disk/disk.hpp"
#include "common/fd.hpp"
#include "common/result.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten::disk::detail {

// The request's length in bytes (the iovecs' total for Read/Write, `length` for Discard, 0
// for Flush) once it passes the checks of Queue::submit's contract: a known operation, no
// write or discard on a read-only disk, no discard without info.discard, at most kMaxIovecs
// iovecs whose lengths do not overflow, whole logical blocks inside the disk.
Result<uint64_t> check_request(const DiskInfo& info, const Request& r);

// io_uring_queue_init_params with IORING_SETUP_SUBMIT_ALL when the kernel has it (5.18+: a
// failing SQE does not stop the batch), and an eventfd registered for its completions.
// Errc::Unsupported when io_uring is not available (ENOSYS, EPERM: disabled or filtered).
Result<> open_ring(const std::string& path, unsigned entries, io_uring& ring, UniqueFd& completion_fd);
// io_uring_queue_exit, for a ring open_ring made (and, under ThreadSanitizer, what tells it
// that a later ring at the same addresses is a new one).
void close_ring(io_uring& ring);

// For a Queue's destructor: kicks and reaps (dropping the completions) until nothing is in
// flight, waiting on its completion eventfd. Guest memory stays in use until the kernel is
// done with it, so this waits for everything.
void wait_idle(Queue& q);

class BlockingHelper {
public:
    using Job = std::function<int64_t()>;
    struct Done {
        uint32_t slot;
        int64_t result;
    };

    // `name`: the thread's name (at most 15 characters); `notify_fd`: written after each job.
    BlockingHelper(const char* name, int notify_fd);
    ~BlockingHelper();
    BlockingHelper(const BlockingHelper&) = delete;
    BlockingHelper& operator=(const BlockingHelper&) = delete;

    void post(uint32_t slot, Job job);
    // Moves the finished jobs' results into `out` (which it clears first).
    void take(std::vector<Done>& out);

private:
    void run();

    const char* const name_;
    const int notify_fd_;
    Mutex mu_;  // a leaf
    std::condition_variable_any cv_;
    std::deque<std::pair<uint32_t, Job>> jobs_ ENL_GUARDED_BY(mu_);
    std::vector<Done> done_ ENL_GUARDED_BY(mu_);
    bool stop_ ENL_GUARDED_BY(mu_) = false;
    std::thread thread_;  // last: starts once the rest is built
};

}  // namespace enlighten::disk::detail
