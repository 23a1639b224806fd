// Clang's thread-safety analysis (-Wthread-safety), with a mutex it understands.
//
// libstdc++'s std::mutex carries no capability attributes, so the analysis cannot see it.
// enlighten::Mutex is a std::mutex that does; LockGuard and UniqueLock are its RAII locks
// (UniqueLock also works with std::condition_variable_any). Annotate what a lock protects
// with ENL_GUARDED_BY, and functions that must (not) hold it with ENL_REQUIRES /
// ENL_EXCLUDES. Under GCC the macros expand to nothing; the clang builds (fuzz, TSan) check.
//
// Threads: a Mutex is a mutex; LockGuard/UniqueLock belong to the thread that made them.
#pragma once

#include <mutex>

#if defined(__clang__)
#define ENL_TSA(x) __attribute__((x))
#else
#define ENL_TSA(x)
#endif

#define ENL_CAPABILITY(x) ENL_TSA(capability(x))
#define ENL_SCOPED_CAPABILITY ENL_TSA(scoped_lockable)
#define ENL_GUARDED_BY(x) ENL_TSA(guarded_by(x))
#define ENL_PT_GUARDED_BY(x) ENL_TSA(pt_guarded_by(x))
#define ENL_ACQUIRED_BEFORE(...) ENL_TSA(acquired_before(__VA_ARGS__))
#define ENL_ACQUIRED_AFTER(...) ENL_TSA(acquired_after(__VA_ARGS__))
#define ENL_REQUIRES(...) ENL_TSA(requires_capability(__VA_ARGS__))
#define ENL_ACQUIRE(...) ENL_TSA(acquire_capability(__VA_ARGS__))
#define ENL_RELEASE(...) ENL_TSA(release_capability(__VA_ARGS__))
#define ENL_TRY_ACQUIRE(...) ENL_TSA(try_acquire_capability(__VA_ARGS__))
#define ENL_EXCLUDES(...) ENL_TSA(locks_excluded(__VA_ARGS__))
#define ENL_RETURN_CAPABILITY(x) ENL_TSA(lock_returned(x))
#define ENL_NO_THREAD_SAFETY_ANALYSIS ENL_TSA(no_thread_safety_analysis)

namespace enlighten {

class ENL_CAPABILITY("mutex") Mutex {
public:
    void lock() ENL_ACQUIRE() { mu_.lock(); }
    void unlock() ENL_RELEASE() { mu_.unlock(); }
    bool try_lock() ENL_TRY_ACQUIRE(true) { return mu_.try_lock(); }
    // For code that asserts a lock it cannot name (e.g. a callback documented to run under it).
    void assert_held() const ENL_TSA(assert_capability(this)) {}

private:
    std::mutex mu_;
};

class ENL_SCOPED_CAPABILITY LockGuard {
public:
    explicit LockGuard(Mutex& mu) ENL_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
    ~LockGuard() ENL_RELEASE() { mu_.unlock(); }
    LockGuard(const LockGuard&) = delete;
    LockGuard& operator=(const LockGuard&) = delete;

private:
    Mutex& mu_;
};

// A lock that can be released and taken again (for condition variables: use
// std::condition_variable_any with it).
class ENL_SCOPED_CAPABILITY UniqueLock {
public:
    explicit UniqueLock(Mutex& mu) ENL_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
    ~UniqueLock() ENL_RELEASE() {
        if (locked_) mu_.unlock();
    }
    UniqueLock(const UniqueLock&) = delete;
    UniqueLock& operator=(const UniqueLock&) = delete;
    void lock() ENL_ACQUIRE() {
        mu_.lock();
        locked_ = true;
    }
    void unlock() ENL_RELEASE() {
        locked_ = false;
        mu_.unlock();
    }

private:
    Mutex& mu_;
    bool locked_ = true;
};

}  // namespace enlighten
