// The host side of the Dynamic Memory protocol as a state machine without I/O: guest
// messages go in (on_message), host messages come out (take_outbox), and guest RAM changes
// go through RamControl (discard what the guest ballooned, map what is hot-added). The
// device (balloon.hpp) does the I/O and the timers; the unit tests and the fuzzer drive the
// engine directly.
//
//   Closed --open()--> Version --VERSION_REQUEST accepted--> Capabilities
//          --CAPABILITIES_REPORT (accepted; INFO max pages)--> Ready
//   Ready --balloon(n)--> Ballooning   --BALLOON_RESPONSE more_pages=0--> Ready
//   Ready --unballoon(n)--> Unballooning --UNBALLOON_RESPONSE--> Ready
//   Ready --hot_add(n)--> HotAdding    --HOT_ADD_RESPONSE--> Ready
//   any transaction --no answer within its deadline (tick)--> Wedged (until the next open)
//
// The guest is hostile (contract-memory §9): every range it returns is checked against what
// the host asked for and against guest RAM; what fails is ignored, counted and logged at a
// limited rate. Only pages the guest returned in answer to a request, inside RAM and not
// already ballooned, are discarded; unballoon returns only pages in the ballooned set.
//
// Threads: one thread at a time (the device's control loop); not thread-safe itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "devices/balloon/message.hpp"
#include "kvm/ram_control.hpp"

namespace enlighten::balloon {

enum class DmState { Closed, Version, Capabilities, Ready, Ballooning, Unballooning, HotAdding, Wedged };
const char* to_string(DmState s);

// Guest misbehaviour and host failures, counted since the device was made.
struct DmCounters {
    uint64_t malformed = 0;         // messages the parser refused
    uint64_t unexpected = 0;        // messages in the wrong state (unsolicited responses, repeats)
    uint64_t bad_ranges = 0;        // ranges with no pages
    uint64_t excess_pages = 0;      // pages beyond what the host asked for
    uint64_t outside_ram_pages = 0; // pages not in guest RAM
    uint64_t duplicate_pages = 0;   // pages returned twice
    uint64_t implausible_reports = 0;
    uint64_t discard_failures = 0;
    uint64_t hot_add_refused = 0;   // hot-add responses that were failures
    uint64_t timeouts = 0;
};

struct DmStatusSample {
    uint64_t avail_pages = 0;
    uint64_t committed_pages = 0;
    bool plausible = true;
    std::chrono::steady_clock::time_point at{};
};

// A set of guest page ranges, merged; bounded by what the guest can make us insert (the
// pages of one request per transaction).
class PageSet {
public:
    // Adds `r`; returns the parts that were not in the set already (in order).
    std::vector<PageRange> insert(PageRange r);
    // Takes up to `pages` pages, highest first, as ranges of at most kMaxRangePages.
    std::vector<PageRange> take(uint64_t pages, size_t max_ranges);
    [[nodiscard]] uint64_t pages() const { return pages_; }
    [[nodiscard]] bool contains(uint64_t page) const;
    [[nodiscard]] size_t ranges() const { return set_.size(); }
    void clear() {
        set_.clear();
        pages_ = 0;
    }

private:
    std::map<uint64_t, uint64_t> set_;  // start -> end (exclusive), disjoint, not adjacent
    uint64_t pages_ = 0;
};

class DmEngine {
public:
    using Clock = std::chrono::steady_clock;
    // Deadlines: a balloon transaction must progress (a response) within this; hot-add may
    // take minutes in a guest that does not online its memory (contract-memory §7.3).
    static constexpr auto kBalloonTimeout = std::chrono::seconds(60);
    static constexpr auto kUnballoonTimeout = std::chrono::seconds(30);
    static constexpr auto kHotAddTimeout = std::chrono::minutes(10);
    // Consecutive transient hot-add failures before hot-add is given up for this boot.
    static constexpr uint32_t kMaxHotAddFailures = 3;
    // Unballoon ranges per transaction (32 messages).
    static constexpr size_t kMaxUnballoonRanges = 32 * kMaxRangesPerMessage;

    DmEngine() = default;

    // A new boot: `ram` is this boot's guest RAM (may be null: nothing can be ballooned or
    // hot-added), max_pages the maximum memory (for the INFO message; 0: none sent).
    void attach(RamControl* ram, uint64_t max_pages);
    // The guest opened the channel: negotiation starts; balloon bookkeeping starts afresh
    // (a reloaded driver does not know the old balloon), hot-added RAM stays.
    void open();
    void close();

    void on_message(std::span<const uint8_t> payload, Clock::time_point now);
    // Host operations, from Ready only (Errc::Busy in a transaction, Errc::Closed before
    // Ready, Errc::Unsupported when the guest or the VM cannot, Errc::Invalid for 0 pages).
    Result<> balloon(uint64_t pages, Clock::time_point now);
    Result<> unballoon(uint64_t pages, Clock::time_point now);
    Result<> hot_add(uint64_t pages, Clock::time_point now);
    // Deadlines.
    void tick(Clock::time_point now);

    // Messages for the guest, oldest first.
    std::vector<std::vector<uint8_t>> take_outbox() { return std::exchange(outbox_, {}); }

    [[nodiscard]] DmState state() const { return state_; }
    [[nodiscard]] uint32_t version() const { return version_; }
    [[nodiscard]] const std::optional<CapabilitiesReport>& capabilities() const { return caps_; }
    [[nodiscard]] uint64_t ballooned_pages() const { return ballooned_.pages(); }
    [[nodiscard]] const PageSet& ballooned() const { return ballooned_; }
    [[nodiscard]] uint64_t hot_added_pages() const { return hot_added_pages_; }
    // Bytes the hot-add window still has (not mapped yet).
    [[nodiscard]] uint64_t hot_add_room_bytes() const;
    [[nodiscard]] bool can_balloon() const;
    [[nodiscard]] bool can_hot_add() const;
    // Why hot-add is off for this boot ("" when it is not).
    [[nodiscard]] const std::string& hot_add_disabled() const { return hot_add_disabled_; }
    // Why the device is wedged, or the last problem worth telling the user ("" when none).
    [[nodiscard]] const std::string& problem() const { return problem_; }
    [[nodiscard]] const std::optional<DmStatusSample>& last_status() const { return status_; }
    [[nodiscard]] uint64_t status_reports() const { return status_reports_; }
    [[nodiscard]] const DmCounters& counters() const { return counters_; }

private:
    void send(std::vector<uint8_t> m) { outbox_.push_back(std::move(m)); }
    void on_version(const VersionRequest& m);
    void on_capabilities(const CapabilitiesReport& m);
    void on_status(const StatusReport& m, Clock::time_point now);
    void on_balloon_response(const BalloonResponse& m, Clock::time_point now);
    void on_unballoon_response(const UnballoonResponse& m);
    void on_hot_add_response(const HotAddResponse& m);
    void unexpected(const char* what);
    // The RAM range that holds all of [gpa, gpa+len), if one does.
    [[nodiscard]] bool in_ram(uint64_t gpa, uint64_t len) const;
    [[nodiscard]] uint64_t ram_pages() const;

    RamControl* ram_ = nullptr;
    uint64_t max_pages_ = 0;
    DmState state_ = DmState::Closed;
    uint32_t version_ = 0;
    uint32_t next_trans_id_ = 1;
    std::optional<CapabilitiesReport> caps_;
    std::vector<GpaWindow> ram_ranges_;  // snapshot, refreshed at each transaction start and hot-add

    // The transaction in flight.
    Clock::time_point deadline_{};
    uint64_t requested_pages_ = 0;
    uint64_t answered_pages_ = 0;  // pages the guest claimed in this balloon transaction
    PageRange hot_add_range_{};

    PageSet ballooned_;
    uint64_t hot_added_pages_ = 0;     // pages the guest accepted, this boot
    std::optional<PageRange> unused_hot_add_;  // mapped, but the guest failed to add it: retried
    uint32_t hot_add_failures_ = 0;
    std::string hot_add_disabled_;
    std::string problem_;

    std::optional<DmStatusSample> status_;
    uint64_t status_reports_ = 0;
    DmCounters counters_;
    std::vector<std::vector<uint8_t>> outbox_;
};

}  // namespace enlighten::balloon
