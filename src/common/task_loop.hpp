// One background thread that runs posted tasks, now or after a delay. For the VMM's small
// periodic jobs (heartbeat ticks, time samples, shutdown stages), so that none of them runs
// on a vCPU thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

namespace enlighten {

class TaskLoop {
public:
    using Clock = std::chrono::steady_clock;
    TaskLoop();
    ~TaskLoop();
    TaskLoop(const TaskLoop&) = delete;
    TaskLoop& operator=(const TaskLoop&) = delete;

    void post(std::function<void()> task, std::chrono::milliseconds delay = std::chrono::milliseconds(0));
    // Stops the thread; pending tasks are dropped. Safe to call more than once.
    void stop();

private:
    void run(std::stop_token stop);
    std::mutex mu_;
    std::condition_variable_any cv_;
    std::multimap<Clock::time_point, std::function<void()>> tasks_;
    std::jthread thread_;
};

}  // namespace enlighten
