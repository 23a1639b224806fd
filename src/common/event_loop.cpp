#include "common/event_loop.hpp"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <cstdlib>
#include <system_error>
#include <utility>

#include "common/log.hpp"

namespace enlighten {

namespace {

constexpr uint64_t kWakeTag = 0;  // epoll data of the eventfd; never a WatchId
constexpr int kMaxEvents = 64;

using TimePoint = EventLoop::Clock::time_point;

TimePoint saturating_add(TimePoint t, std::chrono::nanoseconds d) {
    const auto dur = std::chrono::duration_cast<EventLoop::Clock::duration>(d);
    if (dur.count() > 0 && t > TimePoint::max() - dur) return TimePoint::max();
    if (dur.count() < 0 && t < TimePoint::min() - dur) return TimePoint::min();
    return t + dur;
}

// epoll_wait's timeout for a timer due at `due`, rounded up to the next millisecond.
//
// Why milliseconds and not a timerfd: the VMM's timers (heartbeats, shutdown stages,
// console flushes) are on the scale of milliseconds to seconds, and a timerfd would cost a
// timerfd_settime call whenever the earliest timer changes. Rounding up means a round never
// wakes before the timer is due, so it never spins on zero timeouts while waiting for the
// last fraction of a millisecond; a timer may run up to a millisecond late.
int ms_until(TimePoint due, TimePoint now) {
    if (due <= now) return 0;
    // Exact in unsigned arithmetic even where due - now would overflow a signed duration.
    const uint64_t ns = static_cast<uint64_t>(due.time_since_epoch().count()) -
                        static_cast<uint64_t>(now.time_since_epoch().count());
    const uint64_t ms = ns / 1'000'000 + (ns % 1'000'000 != 0 ? 1 : 0);
    return ms > static_cast<uint64_t>(INT_MAX) ? INT_MAX : static_cast<int>(ms);
}

int clamp_ms(std::chrono::milliseconds ms) {
    if (ms.count() <= 0) return 0;
    return ms.count() > INT_MAX ? INT_MAX : static_cast<int>(ms.count());
}

}  // namespace

struct EventLoop::Watch {
    int fd = -1;
    FdCallback callback;
    int running = 0;       // calls in progress (more than one only through nested rounds)
    bool removed = false;  // unwatched; the callback is destroyed once running == 0
    bool awaited = false;  // an unwatch on another thread waits for running == 0 and destroys it
};

// Marks the calling thread as the loop thread for the duration of run/run_once/run_until.
class EventLoop::LoopScope {
public:
    explicit LoopScope(EventLoop& loop) : loop_(loop) { loop_.enter(); }
    ~LoopScope() { loop_.leave(); }
    LoopScope(const LoopScope&) = delete;
    LoopScope& operator=(const LoopScope&) = delete;

private:
    EventLoop& loop_;
};

Result<std::unique_ptr<EventLoop>> EventLoop::create() {
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep.valid()) return fail_errno("event loop: epoll_create1");
    UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake.valid()) return fail_errno("event loop: eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeTag;
    if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0) return fail_errno("event loop: epoll_ctl(eventfd)");
    return std::unique_ptr<EventLoop>(new EventLoop(std::move(ep), std::move(wake)));
}

EventLoop::EventLoop(UniqueFd epoll_fd, UniqueFd wake_fd)
    : epoll_fd_(std::move(epoll_fd)), wake_fd_(std::move(wake_fd)) {}

EventLoop::~EventLoop() {
    // Destroyed outside the lock, after it is released: their destructors may call post().
    std::deque<Task> tasks;
    std::map<TimerKey, Task> timers;
    std::unordered_map<WatchId, std::shared_ptr<Watch>> watches;
    LockGuard lock(mu_);
    tasks.swap(posted_);
    timers.swap(timers_);
    timer_due_.clear();
    watches.swap(watches_);
}

void EventLoop::drop_pending() {
    std::deque<Task> tasks;
    std::map<TimerKey, Task> timers;
    LockGuard lock(mu_);
    tasks.swap(posted_);
    timers.swap(timers_);
    timer_due_.clear();
}

// --- any thread ---

void EventLoop::post(Task task) {
    if (!task) return;
    {
        LockGuard lock(mu_);
        posted_.push_back(std::move(task));
    }
    wake();
}

EventLoop::TimerId EventLoop::post_after(std::chrono::nanoseconds delay, Task task) {
    if (!task) return 0;
    const TimePoint due = saturating_add(now(), delay);
    TimerId id = 0;
    {
        LockGuard lock(mu_);
        id = next_id_++;
        timers_.emplace(TimerKey{due, id}, std::move(task));
        timer_due_.emplace(id, due);
    }
    wake();
    return id;
}

bool EventLoop::cancel(TimerId id) {
    Task dropped;  // destroyed after the lock is released
    LockGuard lock(mu_);
    const auto it = timer_due_.find(id);
    if (it == timer_due_.end()) return false;
    const auto timer = timers_.find(TimerKey{it->second, id});
    dropped = std::move(timer->second);
    timers_.erase(timer);
    timer_due_.erase(it);
    return true;
}

Result<EventLoop::WatchId> EventLoop::watch(int fd, uint32_t epoll_events, FdCallback cb) {
    if (fd < 0) return fail(Errc::Invalid, "event loop: cannot watch fd {}", fd);
    if (!cb) return fail(Errc::Invalid, "event loop: watch of fd {} without a callback", fd);
    auto w = std::make_shared<Watch>();  // destroyed after the lock if epoll_ctl fails
    w->fd = fd;
    w->callback = std::move(cb);
    WatchId id = 0;
    {
        LockGuard lock(mu_);
        id = next_id_++;
        epoll_event ev{};
        ev.events = epoll_events;
        ev.data.u64 = id;
        if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
            const int err = errno;
            return fail_errno(fmt::format("event loop: watching fd {}", fd), err);
        }
        watches_.emplace(id, std::move(w));
    }
    wake();
    return id;
}

Result<> EventLoop::modify(WatchId id, uint32_t epoll_events) {
    {
        LockGuard lock(mu_);
        const auto it = watches_.find(id);
        if (it == watches_.end()) return fail(Errc::NotFound, "event loop: no watch {}", id);
        epoll_event ev{};
        ev.events = epoll_events;
        ev.data.u64 = id;
        if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, it->second->fd, &ev) != 0) {
            const int err = errno;
            return fail_errno(fmt::format("event loop: modifying the watch of fd {}", it->second->fd), err);
        }
    }
    wake();
    return {};
}

void EventLoop::unwatch(WatchId id) {
    FdCallback dropped;  // destroyed after the lock is released
    std::shared_ptr<Watch> w;
    UniqueLock lock(mu_);
    const auto it = watches_.find(id);
    if (it == watches_.end()) return;
    w = std::move(it->second);
    watches_.erase(it);
    // Fails only if the fd was closed already (then epoll forgot it by itself).
    if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, w->fd, nullptr) != 0) {
        log::debug("event loop: unwatching fd {}: {}", w->fd, std::strerror(errno));
    }
    w->removed = true;
    if (w->running > 0) {
        // On the loop thread the callback is further up this very stack: dispatch_fd
        // destroys it when it returns.
        if (in_loop_thread()) return;
        w->awaited = true;
        while (w->running > 0) watch_idle_.wait(lock);
    }
    dropped = std::move(w->callback);
}

void EventLoop::stop() {
    stop_.store(true);
    wake();
}

bool EventLoop::in_loop_thread() const { return loop_thread_.load() == std::this_thread::get_id(); }

void EventLoop::set_clock_for_testing(std::function<Clock::time_point()> now) { fake_now_ = std::move(now); }

EventLoop::Clock::time_point EventLoop::now() const { return fake_now_ ? fake_now_() : Clock::now(); }

size_t EventLoop::pending_timers_for_testing() const {
    LockGuard lock(mu_);
    // Both containers, so that a test notices one of them leaking.
    return timers_.size() == timer_due_.size() ? timers_.size() : SIZE_MAX;
}

// Wakes the loop out of epoll_wait. Not needed on the loop thread: it is not waiting, and
// the next round computes its timeout from what is queued by then.
//
// wake_pending_ saves the write while one is already undrained. The loop reads the eventfd
// and then clears the flag, so a true flag always means a write that no read has consumed
// yet: a post that finds it true needs no write of its own, because its task was queued
// before the flag is cleared and the loop looks at the queue after clearing it.
void EventLoop::wake() {
    if (in_loop_thread()) return;
    if (wake_pending_.exchange(true)) return;
    const uint64_t one = 1;
    if (::write(wake_fd_.get(), &one, sizeof one) < 0 && errno != EAGAIN) {
        log::error("event loop: writing the eventfd: {}", std::strerror(errno));
    }
}

void EventLoop::drain_wakeups() {
    uint64_t count = 0;
    if (::read(wake_fd_.get(), &count, sizeof count) < 0 && errno != EAGAIN) {
        log::error("event loop: reading the eventfd: {}", std::strerror(errno));
    }
    wake_pending_.store(false);  // after the read: see wake()
}

// --- the loop thread ---

void EventLoop::enter() {
    const auto self = std::this_thread::get_id();
    if (loop_thread_.load() != self) {
        std::thread::id none;
        if (!loop_thread_.compare_exchange_strong(none, self)) {
            log::error("event loop: run on two threads at once");
            std::abort();
        }
    }
    ++depth_;
}

void EventLoop::leave() {
    if (--depth_ > 0) return;
    stop_.store(false);
    loop_thread_.store(std::thread::id{});
}

void EventLoop::run() {
    LoopScope scope(*this);
    while (!stop_.load()) run_round(-1);
}

bool EventLoop::run_once(std::chrono::milliseconds max_wait) {
    LoopScope scope(*this);
    if (stop_.load()) return false;
    return run_round(clamp_ms(max_wait));
}

bool EventLoop::run_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
    LoopScope scope(*this);
    constexpr auto kLongest = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::nanoseconds::max());
    const TimePoint deadline = saturating_add(Clock::now(), std::min(timeout, kLongest));
    while (!pred()) {
        if (stop_.load()) return false;
        const TimePoint now = Clock::now();
        run_round(ms_until(deadline, now));
        if (Clock::now() >= deadline) return pred();
    }
    return true;
}

bool EventLoop::run_round(int max_wait_ms) {
    // Wait for nothing if tasks are queued, else until the earliest timer at most.
    int timeout = max_wait_ms;
    {
        bool have_tasks = false;
        TimePoint earliest{};
        bool have_timer = false;
        {
            LockGuard lock(mu_);
            have_tasks = !posted_.empty();
            if (!timers_.empty()) {
                have_timer = true;
                earliest = timers_.begin()->first.due;
            }
        }
        if (have_tasks) {
            timeout = 0;
        } else if (have_timer) {
            const int until = ms_until(earliest, now());  // the clock is called without the lock
            if (timeout < 0 || until < timeout) timeout = until;
        }
    }

    epoll_event events[kMaxEvents];
    const int n = ::epoll_wait(epoll_fd_.get(), events, kMaxEvents, timeout);
    if (n < 0) {
        if (errno == EINTR) return false;
        // Only a broken epoll fd gets here; a loop that cannot wait would spin for ever.
        log::error("event loop: epoll_wait: {}", std::strerror(errno));
        std::abort();
    }

    // What this round may run: timers due now that existed when it began (a timer that
    // posts a due timer must not run for ever within one round), and the tasks queued now.
    const TimePoint round_now = now();
    uint64_t id_limit = 0;
    size_t tasks = 0;
    {
        LockGuard lock(mu_);
        id_limit = next_id_;
        tasks = posted_.size();
    }

    bool did_work = false;
    for (int i = 0; i < n; ++i) {
        if (stop_.load()) return did_work;  // unread events stay ready (level-triggered)
        if (events[i].data.u64 == kWakeTag) {
            drain_wakeups();
            continue;
        }
        did_work |= dispatch_fd(events[i].data.u64, events[i].events);
    }
    while (!stop_.load() && run_due_timer(round_now, id_limit)) did_work = true;
    for (; tasks > 0 && !stop_.load() && run_posted_task(); --tasks) did_work = true;
    return did_work;
}

bool EventLoop::dispatch_fd(WatchId id, uint32_t events) {
    std::shared_ptr<Watch> w;
    {
        LockGuard lock(mu_);
        const auto it = watches_.find(id);
        if (it == watches_.end()) return false;  // unwatched earlier in this round
        w = it->second;
        ++w->running;
    }
    // Not moved or destroyed while running > 0 (see unwatch), so no lock is needed.
    w->callback(events);
    FdCallback dropped;  // destroyed after the lock is released
    LockGuard lock(mu_);
    if (--w->running == 0 && w->removed) {
        if (w->awaited) {
            watch_idle_.notify_all();  // that unwatch destroys it
        } else {
            dropped = std::move(w->callback);  // unwatched on this thread while it ran
        }
    }
    return true;
}

// Runs the earliest timer if it is due by round_now and older than the round; one at a
// time, so that a timer can cancel another that is due in the same round.
bool EventLoop::run_due_timer(TimePoint round_now, uint64_t id_limit) {
    Task task;
    {
        LockGuard lock(mu_);
        if (timers_.empty()) return false;
        const auto it = timers_.begin();
        // A newer timer first means the rest waits for the next round (which does not wait).
        if (it->first.due > round_now || it->first.id >= id_limit) return false;
        task = std::move(it->second);
        timer_due_.erase(it->first.id);
        timers_.erase(it);
    }
    task();
    return true;
}

bool EventLoop::run_posted_task() {
    Task task;
    {
        LockGuard lock(mu_);
        if (posted_.empty()) return false;
        task = std::move(posted_.front());
        posted_.pop_front();
    }
    task();
    return true;
}

// --- EventLoopThread ---

Result<std::unique_ptr<EventLoopThread>> EventLoopThread::start(std::string name, std::optional<sandbox::ThreadKind> kind) {
    ENL_TRY(auto loop, EventLoop::create());
    std::unique_ptr<EventLoopThread> t(new EventLoopThread(std::move(loop)));
    if (name.size() > 15) name.resize(15);  // pthread_setname_np's limit, without the NUL
    LockGuard lock(t->join_mu_);
    try {
        t->thread_ = std::thread([loop_ptr = t->loop_.get(), name = std::move(name), kind] {
            ::pthread_setname_np(::pthread_self(), name.c_str());
            if (kind) sandbox::enter(*kind);
            loop_ptr->run();
        });
    } catch (const std::system_error& e) {
        return fail("event loop: starting its thread: {}", e.what());
    }
    return t;
}

EventLoopThread::~EventLoopThread() {
    if (loop_->in_loop_thread()) {
        log::error("event loop: EventLoopThread destroyed on its own thread");
        std::abort();
    }
    stop();
}

void EventLoopThread::stop() {
    loop_->stop();
    if (loop_->in_loop_thread()) return;  // cannot join itself; the destructor joins
    LockGuard lock(join_mu_);
    if (!thread_.joinable()) return;
    thread_.join();
    loop_->drop_pending();
}

}  // namespace enlighten
