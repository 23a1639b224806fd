#include "common/task_loop.hpp"

#include <pthread.h>

namespace enlighten {

TaskLoop::TaskLoop() : thread_([this](std::stop_token st) { run(st); }) {
    ::pthread_setname_np(thread_.native_handle(), "tasks");
}

TaskLoop::~TaskLoop() { stop(); }

void TaskLoop::stop() {
    if (!thread_.joinable()) return;
    thread_.request_stop();
    cv_.notify_all();
    thread_.join();
    std::lock_guard lock(mu_);
    tasks_.clear();
}

void TaskLoop::post(std::function<void()> task, std::chrono::milliseconds delay) {
    {
        std::lock_guard lock(mu_);
        tasks_.emplace(Clock::now() + delay, std::move(task));
    }
    cv_.notify_all();
}

void TaskLoop::run(std::stop_token stop) {
    std::unique_lock lock(mu_);
    while (!stop.stop_requested()) {
        if (tasks_.empty()) {
            cv_.wait(lock, stop, [&] { return !tasks_.empty(); });
            continue;
        }
        const auto due = tasks_.begin()->first;
        if (due > Clock::now()) {
            cv_.wait_until(lock, stop, due, [&] { return !tasks_.empty() && tasks_.begin()->first < due; });
            continue;
        }
        auto task = std::move(tasks_.begin()->second);
        tasks_.erase(tasks_.begin());
        lock.unlock();
        task();
        lock.lock();
    }
}

}  // namespace enlighten
