// Somewhere to run work later, on another thread: the VMM's event loop implements it, and
// unit tests use ManualExecutor to run posted work at points of their choosing.
//
// Threads: post() may be called from any thread and never blocks for long (it takes a leaf
// lock). Posted tasks run one at a time, in posting order, on the executor's thread.
#pragma once

#include <deque>
#include <functional>

#include "common/thread_annotations.hpp"

namespace enlighten {

using Task = std::move_only_function<void()>;

class Executor {
public:
    virtual ~Executor() = default;
    virtual void post(Task task) = 0;
};

// Runs posted tasks when the test says so.
class ManualExecutor final : public Executor {
public:
    void post(Task task) override {
        LockGuard lock(mu_);
        tasks_.push_back(std::move(task));
    }
    // Runs tasks (including ones they post) until none is left or `limit` ran; returns how many ran.
    size_t run_all(size_t limit = 100000) {
        size_t n = 0;
        while (n < limit) {
            Task t;
            {
                LockGuard lock(mu_);
                if (tasks_.empty()) break;
                t = std::move(tasks_.front());
                tasks_.pop_front();
            }
            t();
            ++n;
        }
        return n;
    }
    [[nodiscard]] size_t pending() const {
        LockGuard lock(mu_);
        return tasks_.size();
    }

private:
    mutable Mutex mu_;
    std::deque<Task> tasks_ ENL_GUARDED_BY(mu_);
};

}  // namespace enlighten
