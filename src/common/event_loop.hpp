// The VMM's event loop: file descriptors (epoll, level-triggered), one-shot timers and tasks
// posted from any thread, all dispatched on one thread. EventLoopThread runs one on a thread
// of its own.
//
//   ENL_TRY(auto t, EventLoopThread::start("vmbus"));
//   t->loop().post([this] { ... });                              // on "vmbus", FIFO
//   auto timer = t->loop().post_after(std::chrono::seconds(5), [this] { ... });
//   ENL_TRY(auto w, t->loop().watch(fd, EPOLLIN, [this](uint32_t events) { ... }));
//   t->loop().unwatch(w);                                        // before closing fd
//
// A round waits (epoll_wait) for a ready fd, the earliest timer or a wakeup, then runs the
// ready fds' callbacks, the due timers and the tasks that were queued when the round began.
// What those add runs in a later round, so a task that re-posts itself cannot starve an fd.
//
// Threads: post, post_after, cancel, watch, modify, unwatch, stop, in_loop_thread and now
// may be called from any thread, callbacks included; run, run_once and run_until only by
// the loop thread (one thread at a time; a callback may call run_once/run_until to wait
// inside the loop thread). Fd callbacks, timers and tasks all run on the loop thread, never
// with the loop's mutex held. Only unwatch blocks: on another thread, while that watch's
// callback runs on the loop thread, it waits for the callback to return, so do not call it
// holding a lock that the callback takes. Nothing else waits for anything but the loop's
// mutex, which is a leaf in any lock order: callers may hold their own locks when they call
// in, and nothing else is locked while it is held.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "common/executor.hpp"
#include "common/fd.hpp"
#include "common/result.hpp"
#include "common/sandbox.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten {

class EventLoop final : public Executor {
public:
    using Clock = std::chrono::steady_clock;
    using Task = std::move_only_function<void()>;
    using FdCallback = std::function<void(uint32_t events)>;  // epoll event bits (EPOLLIN, EPOLLHUP, ...)
    using WatchId = uint64_t;  // 0 is never a valid id
    using TimerId = uint64_t;  // 0 is never a valid id

    // An epoll fd and an eventfd to wake it.
    static Result<std::unique_ptr<EventLoop>> create();
    // Drops pending tasks and timers without running them; watches are forgotten (their fds
    // are not closed: callers own them). No thread may be inside run() any more.
    ~EventLoop() override;
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    // --- any thread ---
    // Runs `task` on the loop thread, FIFO among posts. An empty task is ignored.
    void post(Task task) override;
    // A one-shot timer due at now() + delay (saturating); timers with the same due time run
    // in posting order. Returns 0 (and posts nothing) for an empty task.
    TimerId post_after(std::chrono::nanoseconds delay, Task task);
    // True if the timer had not started: it never runs, and its task is destroyed before
    // cancel returns. False if it ran, is running, was cancelled or never existed.
    bool cancel(TimerId id);
    // Calls `cb` on the loop thread while `fd` is ready for `epoll_events` (level-triggered;
    // EPOLLERR and EPOLLHUP are always reported). Errors: Invalid (fd < 0, no callback),
    // Io (epoll_ctl: e.g. EEXIST if fd is already watched by this loop).
    Result<WatchId> watch(int fd, uint32_t epoll_events, FdCallback cb);
    // Replaces the events of a watch. NotFound if it is not watched (any more).
    Result<> modify(WatchId id, uint32_t epoll_events);
    // After it returns the callback is not running and never runs again. On another thread,
    // while the callback runs on the loop thread, it waits for it to return (and then
    // destroys it); on the loop thread (including from inside that very callback) it just
    // removes the watch, and the callback is destroyed once it has returned. Unknown ids are
    // ignored. Call it before closing the fd.
    void unwatch(WatchId id);
    // The run(), run_once() or run_until() in progress returns after the current callback
    // (if none is, the next one to start returns at once). Nested calls (a callback waiting
    // in run_until) return too, and leave the request for the outer ones.
    void stop();
    // True on the thread currently inside run()/run_once()/run_until().
    [[nodiscard]] bool in_loop_thread() const;

    // --- the loop thread ---
    // Runs rounds until stop(). The outermost run/run_once/run_until clears the stop request
    // when it returns, so the loop can be run again.
    void run();
    // One round: waits at most max_wait for an fd or a due timer (0 = poll; no wait if tasks
    // are queued), then dispatches ready fds, due timers and posted tasks. Returns whether
    // it ran any callback. For tests and for waiting inside the loop thread.
    bool run_once(std::chrono::milliseconds max_wait);
    // Runs rounds until pred() is true or `timeout` (on the real clock) passes; returns
    // pred(). pred runs on the calling thread, before the first round and between rounds.
    bool run_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

    // Testing: replaces the clock. Timers are then due by this clock, and a round does not
    // wait while one is due by it (run_once(0ms) runs what is due). Call it before any
    // timer is posted and before other threads use the loop.
    void set_clock_for_testing(std::function<Clock::time_point()> now);
    [[nodiscard]] Clock::time_point now() const;
    // Testing: timers neither run nor cancelled yet.
    [[nodiscard]] size_t pending_timers_for_testing() const;

private:
    friend class EventLoopThread;
    struct Watch;
    struct TimerKey {
        Clock::time_point due;
        TimerId id;  // ids grow in posting order, so equal due times run in posting order
        auto operator<=>(const TimerKey&) const = default;
    };
    class LoopScope;

    EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd);
    // One round; max_wait_ms < 0 waits for ever.
    bool run_round(int max_wait_ms) ENL_EXCLUDES(mu_);
    bool dispatch_fd(WatchId id, uint32_t events) ENL_EXCLUDES(mu_);
    bool run_due_timer(Clock::time_point round_now, uint64_t id_limit) ENL_EXCLUDES(mu_);
    bool run_posted_task() ENL_EXCLUDES(mu_);
    void wake();
    void drain_wakeups();
    // Drops queued tasks and timers without running them (EventLoopThread::stop).
    void drop_pending() ENL_EXCLUDES(mu_);
    void enter();
    void leave();

    const UniqueFd epoll_fd_;
    const UniqueFd wake_fd_;  // eventfd; its epoll data is 0, which is never a WatchId
    std::function<Clock::time_point()> fake_now_;  // set before the loop is shared

    mutable Mutex mu_;
    std::condition_variable_any watch_idle_;  // a watch's callback returned (unwatch waits for it)
    uint64_t next_id_ ENL_GUARDED_BY(mu_) = 1;  // WatchIds and TimerIds, in one sequence
    std::deque<Task> posted_ ENL_GUARDED_BY(mu_);
    std::map<TimerKey, Task> timers_ ENL_GUARDED_BY(mu_);
    std::unordered_map<TimerId, Clock::time_point> timer_due_ ENL_GUARDED_BY(mu_);  // to find a timer by id
    // A Watch's fields are guarded by mu_ too (the callback itself is called without it).
    std::unordered_map<WatchId, std::shared_ptr<Watch>> watches_ ENL_GUARDED_BY(mu_);

    std::atomic<bool> stop_{false};
    std::atomic<bool> wake_pending_{false};  // the eventfd was written and not drained yet
    std::atomic<std::thread::id> loop_thread_{};
    int depth_ = 0;  // nesting of run/run_once/run_until; only the loop thread touches it
};

// A loop on a thread of its own, named for ps/top (up to 15 characters; longer names are cut).
// With a `kind`, the thread loads that kind's seccomp filter before it runs the loop
// (common/sandbox.hpp); without one it keeps its creator's filters.
//
// Threads: loop() from any thread; stop() and the destructor from any thread but the loop's
// own (stop() there only asks the loop to stop; the join is left for later).
class EventLoopThread {
public:
    static Result<std::unique_ptr<EventLoopThread>> start(std::string name,
                                                          std::optional<sandbox::ThreadKind> kind = std::nullopt);
    ~EventLoopThread();  // stop()
    EventLoopThread(const EventLoopThread&) = delete;
    EventLoopThread& operator=(const EventLoopThread&) = delete;

    EventLoop& loop() { return *loop_; }
    // Stops the loop and joins the thread; idempotent. Pending tasks and timers are dropped
    // (destroyed, not run); posts after this never run. Watches stay until unwatched.
    void stop();

private:
    explicit EventLoopThread(std::unique_ptr<EventLoop> loop) : loop_(std::move(loop)) {}
    std::unique_ptr<EventLoop> loop_;
    Mutex join_mu_;  // one stop() joins; taken before the loop's mutex
    std::thread thread_ ENL_GUARDED_BY(join_mu_);
};

}  // namespace enlighten
