// Log-rate limiting for guest-triggered messages: a hostile guest must not be able to
// flood the host's log. Allows `burst` messages, then one per `interval`.
//
// Threads: any thread; the limiter's mutex is a leaf, taken only once the level is enabled.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

#include "common/log.hpp"

namespace enlighten {

class RateLimit {
public:
    explicit RateLimit(uint32_t burst = 10, std::chrono::milliseconds interval = std::chrono::seconds(1))
        : burst_(burst), interval_(interval) {}

    // True if a message may be logged now. `suppressed` tells how many were dropped since
    // the last message that was allowed.
    bool allow(uint64_t* suppressed = nullptr) {
        std::lock_guard lock(mu_);
        const auto now = std::chrono::steady_clock::now();
        if (now - window_start_ >= interval_) {
            window_start_ = now;
            used_ = 0;
        }
        if (used_ >= burst_) {
            ++dropped_;
            return false;
        }
        ++used_;
        if (suppressed) *suppressed = dropped_;
        dropped_ = 0;
        return true;
    }

private:
    std::mutex mu_;
    uint32_t burst_;
    std::chrono::milliseconds interval_;
    std::chrono::steady_clock::time_point window_start_{};
    uint32_t used_ = 0;
    uint64_t dropped_ = 0;
};

}  // namespace enlighten

// Logs (common/log.hpp) at most as often as a per-call-site RateLimit allows. A disabled
// level costs no lock.
#define ENL_LOG_LIMITED(level, ...)                                              \
    do {                                                                         \
        static ::enlighten::RateLimit enl_rl_;                                   \
        uint64_t enl_rl_dropped_ = 0;                                            \
        if (::enlighten::log::enabled(::enlighten::log::level_of::level) && enl_rl_.allow(&enl_rl_dropped_)) {                                   \
            if (enl_rl_dropped_) ::enlighten::log::level("({} similar messages suppressed)", enl_rl_dropped_); \
            ::enlighten::log::level(__VA_ARGS__);                                \
        }                                                                        \
    } while (0)
