#include "common/event_loop.hpp"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/fd.hpp"

using namespace enlighten;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<EventLoop> make_loop() { return EventLoop::create().value(); }

// A clock the test moves by hand.
struct FakeClock {
    std::atomic<int64_t> ns{1'000'000'000};
    [[nodiscard]] EventLoop::Clock::time_point now() const {
        return EventLoop::Clock::time_point(std::chrono::nanoseconds(ns.load()));
    }
    void advance(std::chrono::nanoseconds d) { ns += d.count(); }
    void install(EventLoop& loop) {
        loop.set_clock_for_testing([this] { return now(); });
    }
};

UniqueFd make_eventfd() {
    UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    EXPECT_TRUE(fd.valid());
    return fd;
}

void signal_fd(const UniqueFd& fd) {
    const uint64_t one = 1;
    ASSERT_EQ(::write(fd.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
}

}  // namespace

TEST(EventLoop, PostRunsTasksInFifoOrderOnTheLoopThread) {
    auto loop = make_loop();
    std::vector<int> order;
    for (int i = 0; i < 100; ++i) loop->post([&order, i] { order.push_back(i); });
    bool in_loop = false;
    auto move_only = std::make_unique<int>(100);
    loop->post([&, p = std::move(move_only)] {
        order.push_back(*p);
        in_loop = loop->in_loop_thread();
    });
    EXPECT_FALSE(loop->in_loop_thread());
    EXPECT_TRUE(loop->run_once(0ms));
    ASSERT_EQ(order.size(), 101u);
    for (int i = 0; i <= 100; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
    EXPECT_TRUE(in_loop);
    EXPECT_FALSE(loop->in_loop_thread());
    EXPECT_FALSE(loop->run_once(0ms));  // nothing left
}

TEST(EventLoop, PostsFromFourThreadsAllRunExactlyOnce) {
    auto loop = make_loop();
    constexpr int kThreads = 4;
    constexpr int kPerThread = 5000;
    // Touched only by the loop thread, which is this one (inside run_until).
    std::vector<std::vector<int>> runs(kThreads, std::vector<int>(kPerThread, 0));
    std::vector<int> last(kThreads, -1);
    bool fifo_per_thread = true;
    int total = 0;
    std::vector<std::thread> posters;
    for (int t = 0; t < kThreads; ++t) {
        posters.emplace_back([&, t] {
            for (int i = 0; i < kPerThread; ++i) {
                loop->post([&, t, i] {
                    const auto ut = static_cast<size_t>(t);
                    ++runs[ut][static_cast<size_t>(i)];
                    if (i <= last[ut]) fifo_per_thread = false;
                    last[ut] = i;
                    ++total;
                });
            }
        });
    }
    EXPECT_TRUE(loop->run_until([&] { return total == kThreads * kPerThread; }, 60s));
    for (auto& p : posters) p.join();
    EXPECT_FALSE(loop->run_once(0ms));  // no task ran twice or is left
    EXPECT_EQ(total, kThreads * kPerThread);
    EXPECT_TRUE(fifo_per_thread);
    for (const auto& per_thread : runs) {
        for (int n : per_thread) ASSERT_EQ(n, 1);
    }
}

TEST(EventLoop, TimersRunInDueOrderByTheFakeClock) {
    auto loop = make_loop();
    FakeClock clock;
    clock.install(*loop);
    std::vector<std::string> order;
    auto add = [&](std::chrono::milliseconds delay, std::string name) {
        EXPECT_NE(loop->post_after(delay, [&order, name] { order.push_back(name); }), 0u);
    };
    add(30ms, "a30");
    add(10ms, "b10");
    add(20ms, "c20");
    add(10ms, "d10");  // same due time as b10: runs after it
    add(0ms, "e0");
    EXPECT_EQ(loop->pending_timers_for_testing(), 5u);

    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(order, (std::vector<std::string>{"e0"}));
    clock.advance(9ms);
    EXPECT_FALSE(loop->run_once(0ms));
    EXPECT_EQ(order.size(), 1u);
    clock.advance(1ms);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(order, (std::vector<std::string>{"e0", "b10", "d10"}));
    clock.advance(1h);
    // Due by the fake clock: the round does not wait, whatever max_wait says.
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(loop->run_once(10s));
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_EQ(order, (std::vector<std::string>{"e0", "b10", "d10", "c20", "a30"}));
    EXPECT_EQ(loop->pending_timers_for_testing(), 0u);
}

TEST(EventLoop, ATimerThatPostsADueTimerDoesNotRunItInTheSameRound) {
    auto loop = make_loop();
    FakeClock clock;
    clock.install(*loop);
    int runs = 0;
    std::function<void()> again = [&] {
        ++runs;
        loop->post_after(0ms, [&] { again(); });
    };
    loop->post_after(0ms, [&] { again(); });
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(runs, 1);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(runs, 2);
}

TEST(EventLoop, RealClockTimerWakesTheLoopNotEarly) {
    auto loop = make_loop();
    bool fired = false;
    const auto start = std::chrono::steady_clock::now();
    loop->post_after(20ms, [&] { fired = true; });
    EXPECT_TRUE(loop->run_until([&] { return fired; }, 10s));
    EXPECT_GE(std::chrono::steady_clock::now() - start, 20ms);
}

TEST(EventLoop, CancelBeforeDueAndAfterRunning) {
    auto loop = make_loop();
    FakeClock clock;
    clock.install(*loop);
    auto state = std::make_shared<int>(1);
    std::weak_ptr<int> weak = state;
    bool a_ran = false;
    bool b_ran = false;
    const auto a = loop->post_after(10ms, [&a_ran, s = std::move(state)] { a_ran = true; });
    const auto b = loop->post_after(10ms, [&b_ran] { b_ran = true; });
    EXPECT_NE(a, 0u);
    EXPECT_NE(a, b);
    EXPECT_TRUE(loop->cancel(a));
    EXPECT_TRUE(weak.expired());  // the cancelled task is destroyed, not kept
    EXPECT_FALSE(loop->cancel(a));
    EXPECT_EQ(loop->pending_timers_for_testing(), 1u);
    clock.advance(10ms);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_FALSE(a_ran);
    EXPECT_TRUE(b_ran);
    EXPECT_FALSE(loop->cancel(b));  // it ran
    EXPECT_FALSE(loop->cancel(0));
    EXPECT_FALSE(loop->cancel(12345));
    EXPECT_EQ(loop->pending_timers_for_testing(), 0u);
}

TEST(EventLoop, ATimerCanCancelAnotherDueInTheSameRound) {
    auto loop = make_loop();
    FakeClock clock;
    clock.install(*loop);
    EventLoop::TimerId second = 0;
    bool cancelled = false;
    bool second_ran = false;
    loop->post_after(5ms, [&] { cancelled = loop->cancel(second); });
    second = loop->post_after(5ms, [&] { second_ran = true; });
    clock.advance(5ms);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_TRUE(cancelled);
    EXPECT_FALSE(second_ran);
    EXPECT_EQ(loop->pending_timers_for_testing(), 0u);
}

TEST(EventLoop, WatchAnEventfdModifyAndUnwatch) {
    auto loop = make_loop();
    auto efd = make_eventfd();
    std::vector<uint32_t> seen;
    auto state = std::make_shared<int>(1);
    std::weak_ptr<int> weak = state;
    auto id = loop->watch(efd.get(), EPOLLIN, [&seen, s = std::move(state)](uint32_t ev) { seen.push_back(ev); });
    ASSERT_TRUE(id) << id.error().message();
    EXPECT_NE(*id, 0u);

    EXPECT_FALSE(loop->run_once(0ms));  // not readable yet
    EXPECT_TRUE(seen.empty());
    signal_fd(efd);
    EXPECT_TRUE(loop->run_once(0ms));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], static_cast<uint32_t>(EPOLLIN));
    EXPECT_TRUE(loop->run_once(0ms));  // level-triggered: still readable
    EXPECT_EQ(seen.size(), 2u);

    seen.clear();
    ASSERT_TRUE(loop->modify(*id, EPOLLOUT));  // an eventfd is writable
    EXPECT_TRUE(loop->run_once(0ms));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], static_cast<uint32_t>(EPOLLOUT));

    seen.clear();
    ASSERT_TRUE(loop->modify(*id, 0));
    EXPECT_FALSE(loop->run_once(0ms));
    EXPECT_TRUE(seen.empty());

    ASSERT_TRUE(loop->modify(*id, EPOLLIN));
    loop->unwatch(*id);
    EXPECT_TRUE(weak.expired());  // the callback is destroyed by unwatch
    EXPECT_FALSE(loop->run_once(0ms));
    EXPECT_TRUE(seen.empty());
    auto again = loop->modify(*id, EPOLLIN);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code(), Errc::NotFound);
    loop->unwatch(*id);  // unknown ids are ignored

    // The fd can be watched again, under a new id.
    auto id2 = loop->watch(efd.get(), EPOLLIN, [&seen](uint32_t ev) { seen.push_back(ev); });
    ASSERT_TRUE(id2);
    EXPECT_NE(*id2, *id);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(seen.size(), 1u);
    loop->unwatch(*id2);
}

TEST(EventLoop, WatchRejectsBadArguments) {
    auto loop = make_loop();
    auto efd = make_eventfd();
    auto bad_fd = loop->watch(-1, EPOLLIN, [](uint32_t) {});
    ASSERT_FALSE(bad_fd);
    EXPECT_EQ(bad_fd.error().code(), Errc::Invalid);
    auto no_cb = loop->watch(efd.get(), EPOLLIN, nullptr);
    ASSERT_FALSE(no_cb);
    EXPECT_EQ(no_cb.error().code(), Errc::Invalid);
    auto first = loop->watch(efd.get(), EPOLLIN, [](uint32_t) {});
    ASSERT_TRUE(first);
    auto twice = loop->watch(efd.get(), EPOLLIN, [](uint32_t) {});
    ASSERT_FALSE(twice);
    EXPECT_EQ(twice.error().code(), Errc::Io);
    EXPECT_EQ(twice.error().sys_errno(), EEXIST);
    loop->unwatch(*first);
}

TEST(EventLoop, UnwatchFromInsideItsOwnCallback) {
    auto loop = make_loop();
    auto efd = make_eventfd();
    signal_fd(efd);  // stays readable: a callback after unwatch would show
    auto state = std::make_shared<int>(42);
    std::weak_ptr<int> weak = state;
    EventLoop::WatchId id = 0;
    int calls = 0;
    int seen_after_unwatch = 0;
    auto w = loop->watch(efd.get(), EPOLLIN, [&, s = std::move(state)](uint32_t) {
        ++calls;
        loop->unwatch(id);
        seen_after_unwatch = *s;  // the running callback is not destroyed under its feet
    });
    ASSERT_TRUE(w);
    id = *w;
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_FALSE(loop->run_once(0ms));
    EXPECT_FALSE(loop->run_once(0ms));
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(seen_after_unwatch, 42);
    EXPECT_TRUE(weak.expired());  // destroyed once it returned
}

TEST(EventLoop, UnwatchFromAnotherThreadWaitsForTheRunningCallback) {
    auto loop = make_loop();
    auto efd = make_eventfd();
    signal_fd(efd);  // stays readable: a callback after unwatch would show
    std::atomic<int> calls{0};
    std::atomic<bool> in_callback{false};
    std::atomic<bool> unwatch_called{false};
    std::atomic<bool> unwatch_returned{false};
    std::atomic<bool> callback_returned{false};
    std::atomic<bool> unwatch_returned_while_blocked{false};
    auto id = loop->watch(efd.get(), EPOLLIN, [&](uint32_t) {
        if (calls++ > 0) return;
        in_callback = true;
        in_callback.notify_all();
        unwatch_called.wait(false);
        // Time for a broken unwatch to return early; the checks do not rely on it.
        std::this_thread::sleep_for(50ms);
        if (unwatch_returned.load()) unwatch_returned_while_blocked = true;
        callback_returned = true;
    });
    ASSERT_TRUE(id);
    std::thread loop_thread([&] { loop->run(); });
    in_callback.wait(false);
    bool callback_had_returned = false;
    std::thread unwatcher([&] {
        unwatch_called = true;
        unwatch_called.notify_all();
        loop->unwatch(*id);
        callback_had_returned = callback_returned.load();
        unwatch_returned = true;
    });
    unwatcher.join();
    EXPECT_TRUE(callback_had_returned);
    EXPECT_FALSE(unwatch_returned_while_blocked.load());
    // More rounds with the fd still readable: the callback must not run again.
    std::atomic<int> rounds{0};
    for (int i = 0; i < 3; ++i) loop->post([&] { ++rounds; });
    loop->post([&] { loop->stop(); });
    loop_thread.join();
    EXPECT_EQ(rounds.load(), 3);
    EXPECT_EQ(calls.load(), 1);
}

TEST(EventLoop, StopFromAnotherThreadWakesAnIdleLoop) {
    auto loop = make_loop();
    std::atomic<bool> ran{false};
    loop->post([&] {
        ran = true;
        ran.notify_all();
    });
    std::thread loop_thread([&] { loop->run(); });
    ran.wait(false);  // then the loop waits in epoll_wait, with nothing due
    loop->stop();
    loop_thread.join();  // returns only if stop() woke the loop
    EXPECT_TRUE(ran.load());

    // run() cleared the request: the loop runs again until the next stop().
    bool second = false;
    loop->post([&] {
        second = true;
        loop->stop();
    });
    loop->run();
    EXPECT_TRUE(second);
}

TEST(EventLoop, StopFromACallbackLeavesTheRestPending) {
    auto loop = make_loop();
    std::vector<int> order;
    loop->post([&] {
        order.push_back(1);
        loop->stop();
    });
    loop->post([&] { order.push_back(2); });
    loop->run();
    EXPECT_EQ(order, (std::vector<int>{1}));
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(order, (std::vector<int>{1, 2}));

    // A stop before run() makes it return at once, running nothing.
    bool ran = false;
    loop->stop();
    loop->post([&] { ran = true; });
    loop->run();
    EXPECT_FALSE(ran);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_TRUE(ran);
}

TEST(EventLoop, ATaskThatRepostsItselfDoesNotStarveAReadyFd) {
    auto loop = make_loop();
    int reposts = 0;
    bool stop_reposting = false;
    std::function<void()> again = [&] {
        ++reposts;
        if (!stop_reposting) loop->post([&] { again(); });
    };
    loop->post([&] { again(); });
    // A round runs only the tasks that were queued when it began.
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(reposts, 1);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_EQ(reposts, 2);

    auto efd = make_eventfd();
    bool fd_seen = false;
    auto id = loop->watch(efd.get(), EPOLLIN, [&](uint32_t) { fd_seen = true; });
    ASSERT_TRUE(id);
    signal_fd(efd);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_TRUE(fd_seen);  // in the very next round
    EXPECT_EQ(reposts, 3);
    stop_reposting = true;
    loop->unwatch(*id);
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_FALSE(loop->run_once(0ms));
}

TEST(EventLoop, RunUntilTimesOutWithoutSpinning) {
    auto loop = make_loop();
    int checks = 0;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(loop->run_until(
        [&] {
            ++checks;
            return false;
        },
        50ms));
    EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
    EXPECT_LE(checks, 5);  // it slept in epoll_wait, not in a polling loop

    bool done = false;
    loop->post([&] { done = true; });
    EXPECT_TRUE(loop->run_until([&] { return done; }, 10s));
    EXPECT_TRUE(loop->run_until([] { return true; }, 0ms));
}

TEST(EventLoop, WaitingInsideTheLoopThread) {
    auto loop = make_loop();
    bool inner_done = false;
    bool waited = false;
    bool still_in_loop = false;
    loop->post([&] {
        loop->post([&] { inner_done = true; });
        waited = loop->run_until([&] { return inner_done; }, 10s);
        still_in_loop = loop->in_loop_thread();
    });
    EXPECT_TRUE(loop->run_once(0ms));
    EXPECT_TRUE(waited);
    EXPECT_TRUE(still_in_loop);
    EXPECT_FALSE(loop->in_loop_thread());
}

TEST(EventLoop, DestructionWithPendingWorkRunsNothing) {
    bool ran = false;
    auto state = std::make_shared<int>(1);
    std::weak_ptr<int> weak = state;
    auto efd = make_eventfd();
    {
        auto loop = make_loop();
        FakeClock clock;
        clock.install(*loop);
        loop->post_after(0ms, [&ran, state] { ran = true; });
        loop->post_after(1h, [&ran, state] { ran = true; });
        loop->post([&ran, state] { ran = true; });
        signal_fd(efd);
        ASSERT_TRUE(loop->watch(efd.get(), EPOLLIN, [&ran, state](uint32_t) { ran = true; }));
        state.reset();
        EXPECT_FALSE(weak.expired());
    }
    EXPECT_FALSE(ran);
    EXPECT_TRUE(weak.expired());
    EXPECT_TRUE(efd.valid());  // the loop does not close watched fds
    uint64_t count = 0;
    EXPECT_EQ(::read(efd.get(), &count, sizeof count), static_cast<ssize_t>(sizeof count));
    EXPECT_EQ(count, 1u);
}

TEST(EventLoopThread, RunsTasksAndTimersOnItsNamedThread) {
    auto started = EventLoopThread::start("enl-loop-test-long-name");
    ASSERT_TRUE(started) << started.error().message();
    auto& t = **started;
    std::promise<std::pair<std::string, bool>> where;
    t.loop().post([&] {
        char name[16] = {};
        ::pthread_getname_np(::pthread_self(), name, sizeof name);
        where.set_value({name, t.loop().in_loop_thread()});
    });
    const auto [name, in_loop] = where.get_future().get();
    EXPECT_EQ(name, "enl-loop-test-l");  // cut to 15 characters
    EXPECT_TRUE(in_loop);
    EXPECT_FALSE(t.loop().in_loop_thread());

    // A timer posted from this thread wakes the idle loop.
    std::promise<void> fired;
    EXPECT_NE(t.loop().post_after(5ms, [&] { fired.set_value(); }), 0u);
    EXPECT_EQ(fired.get_future().wait_for(10s), std::future_status::ready);

    t.stop();  // the loop is idle in epoll_wait: stop() wakes it
    t.stop();  // idempotent
    bool ran_after_stop = false;
    t.loop().post([&] { ran_after_stop = true; });
    started->reset();
    EXPECT_FALSE(ran_after_stop);
}

TEST(EventLoopThread, StopDropsPendingWork) {
    auto started = EventLoopThread::start("loop-drop");
    ASSERT_TRUE(started);
    auto& t = **started;
    auto& loop = t.loop();
    std::atomic<bool> first_started{false};
    std::atomic<bool> posted{false};
    std::atomic<int> ran{0};
    auto state = std::make_shared<int>(1);
    std::weak_ptr<int> weak = state;
    // The first task stops the loop once the rest is queued behind it.
    loop.post([&] {
        first_started = true;
        first_started.notify_all();
        posted.wait(false);
        loop.stop();
    });
    first_started.wait(false);
    for (int i = 0; i < 10; ++i) loop.post([&ran, state] { ++ran; });
    loop.post_after(0ms, [&ran, state] { ++ran; });
    loop.post_after(1h, [&ran, state] { ++ran; });
    state.reset();
    posted = true;
    posted.notify_all();
    t.stop();
    EXPECT_EQ(ran.load(), 0);
    EXPECT_TRUE(weak.expired());  // dropped by stop(), not only by the destructor
    EXPECT_EQ(loop.pending_timers_for_testing(), 0u);
}
