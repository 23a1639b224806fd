#include "devices/balloon/engine.hpp"

#include <algorithm>

#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/balloon/policy.hpp"

namespace enlighten::balloon {

namespace {
constexpr uint64_t kMiB = 1ULL << 20;
constexpr uint64_t kMinHotAddAlignment = 128 * kMiB;
}  // namespace

const char* to_string(DmState s) {
    switch (s) {
        case DmState::Closed: return "closed";
        case DmState::Version: return "negotiating-version";
        case DmState::Capabilities: return "negotiating-capabilities";
        case DmState::Ready: return "ready";
        case DmState::Ballooning: return "ballooning";
        case DmState::Unballooning: return "unballooning";
        case DmState::HotAdding: return "hot-adding";
        case DmState::Wedged: return "wedged";
    }
    return "?";
}

// ---------------------------------------------------------------------------- PageSet

std::vector<PageRange> PageSet::insert(PageRange r) {
    std::vector<PageRange> fresh;
    if (r.count == 0) return fresh;
    const uint64_t end = r.end();
    uint64_t cur = r.start;
    auto it = set_.upper_bound(cur);
    if (it != set_.begin()) --it;
    for (; it != set_.end() && it->first < end && cur < end; ++it) {
        if (it->second <= cur) continue;
        if (it->first > cur) fresh.push_back({cur, it->first - cur});
        cur = std::max(cur, it->second);
    }
    if (cur < end) fresh.push_back({cur, end - cur});
    for (const auto& f : fresh) {
        uint64_t s = f.start, e = f.end();
        auto next = set_.lower_bound(s);
        if (next != set_.begin()) {
            auto prev = std::prev(next);
            if (prev->second == s) {
                s = prev->first;
                set_.erase(prev);
            }
        }
        if (next != set_.end() && next->first == e) {
            e = next->second;
            set_.erase(next);
        }
        set_[s] = e;
        pages_ += f.count;
    }
    return fresh;
}

std::vector<PageRange> PageSet::take(uint64_t pages, size_t max_ranges) {
    std::vector<PageRange> out;
    while (pages > 0 && out.size() < max_ranges && !set_.empty()) {
        auto it = std::prev(set_.end());
        const uint64_t len = std::min({it->second - it->first, pages, kMaxRangePages});
        const uint64_t start = it->second - len;
        out.push_back({start, len});
        if (start == it->first)
            set_.erase(it);
        else
            it->second = start;
        pages -= len;
        pages_ -= len;
    }
    return out;
}

bool PageSet::contains(uint64_t page) const {
    auto it = set_.upper_bound(page);
    if (it == set_.begin()) return false;
    --it;
    return page >= it->first && page < it->second;
}

// ---------------------------------------------------------------------------- DmEngine

void DmEngine::attach(RamControl* ram, uint64_t max_pages) {
    ram_ = ram;
    max_pages_ = max_pages;
    state_ = DmState::Closed;
    ballooned_.clear();
    hot_added_pages_ = 0;
    unused_hot_add_.reset();
    hot_add_failures_ = 0;
    hot_add_disabled_.clear();
    problem_.clear();
    status_.reset();
    outbox_.clear();
    ram_ranges_ = ram_ ? ram_->ram_ranges() : std::vector<GpaWindow>{};
}

void DmEngine::open() {
    state_ = DmState::Version;
    version_ = 0;
    caps_.reset();
    // A (re)loaded driver starts with an empty balloon: what an older one held stays
    // offline in the guest until it reboots (QEMU's hv_balloon_vmdev_reset does the same).
    ballooned_.clear();
    problem_.clear();
    outbox_.clear();
    if (ram_) ram_ranges_ = ram_->ram_ranges();
}

void DmEngine::close() {
    state_ = DmState::Closed;
    outbox_.clear();
}

void DmEngine::unexpected(const char* what) {
    ++counters_.unexpected;
    ENL_LOG_LIMITED(warn, "dynamic memory: the guest sent {} in state {}; ignored", what, to_string(state_));
}

void DmEngine::on_message(std::span<const uint8_t> payload, Clock::time_point now) {
    if (state_ == DmState::Closed) return;
    auto msg = parse_guest_message(payload);
    if (!msg) {
        ++counters_.malformed;
        ENL_LOG_LIMITED(warn, "dynamic memory: a malformed guest message: {}", msg.error().message());
        return;
    }
    std::visit(
        [&](const auto& m) {
            using T = std::decay_t<decltype(m)>;
            if constexpr (std::is_same_v<T, VersionRequest>) on_version(m);
            else if constexpr (std::is_same_v<T, CapabilitiesReport>) on_capabilities(m);
            else if constexpr (std::is_same_v<T, StatusReport>) on_status(m, now);
            else if constexpr (std::is_same_v<T, BalloonResponse>) on_balloon_response(m, now);
            else if constexpr (std::is_same_v<T, UnballoonResponse>) on_unballoon_response(m);
            else on_hot_add_response(m);
        },
        *msg);
}

void DmEngine::on_version(const VersionRequest& m) {
    if (state_ != DmState::Version) return unexpected("VERSION_REQUEST");
    // The version changes nothing in Linux 6.1 (contract-memory §3): accept the ones it knows.
    const bool ok = m.version == kVersionWin10 || m.version == kVersionWin8 || m.version == kVersionWin7;
    send(make_version_response(m.trans_id, ok));
    if (ok) {
        version_ = m.version;
        state_ = DmState::Capabilities;
    } else if (m.last_attempt) {
        problem_ = fmt::format("the guest offered no protocol version the host speaks (last: {:#x})", m.version);
        ENL_LOG_LIMITED(warn, "dynamic memory: {}", problem_);
    }
}

void DmEngine::on_capabilities(const CapabilitiesReport& m) {
    if (state_ != DmState::Capabilities) return unexpected("CAPABILITIES_REPORT");
    caps_ = m;
    // Linux fails its probe on a refusal; accept and say what the guest cannot do instead.
    send(make_capabilities_response(m.trans_id, true));
    if (max_pages_ != 0) send(make_info_max_pages(next_trans_id_++, max_pages_));
    state_ = DmState::Ready;
    if (!m.balloon) problem_ = "the guest does not offer ballooning";
    if (m.hot_add && m.hot_add_alignment_log2_mib > 7)
        hot_add_disabled_ = fmt::format("the guest hot-adds in {} MiB units; the hot-add window is 128 MiB aligned",
                                        1ULL << m.hot_add_alignment_log2_mib);
    log::info("dynamic memory: hv_balloon connected (protocol {}.{}, balloon {}, hot-add {})", version_ >> 16,
              version_ & 0xff, m.balloon ? "yes" : "no", m.hot_add ? "yes" : "no");
}

void DmEngine::on_status(const StatusReport& m, Clock::time_point now) {
    if (state_ == DmState::Version || state_ == DmState::Capabilities) return unexpected("STATUS_REPORT");
    // Hints only (contract-memory §9): numbers no guest of this size can have are kept for
    // the API but not given to the policy. Committed_AS may exceed RAM (overcommit), by a
    // bounded factor here.
    const uint64_t size = std::max(ram_pages(), max_pages_);
    const bool plausible = m.avail_pages <= size && m.committed_pages <= 8 * size + 262144;
    if (!plausible) {
        ++counters_.implausible_reports;
        ENL_LOG_LIMITED(warn, "dynamic memory: an implausible status report (available {} pages, committed {} pages, "
                              "guest RAM {} pages); not used", m.avail_pages, m.committed_pages, size);
    }
    status_ = DmStatusSample{m.avail_pages, m.committed_pages, plausible, now};
    ++status_reports_;
}

void DmEngine::on_balloon_response(const BalloonResponse& m, Clock::time_point now) {
    if (state_ != DmState::Ballooning) return unexpected("BALLOON_RESPONSE");
    deadline_ = now + kBalloonTimeout;
    uint64_t bad = 0, excess = 0, outside = 0, dup = 0;
    for (PageRange r : m.ranges) {
        if (r.count == 0) {
            ++bad;
            continue;
        }
        const uint64_t remaining = requested_pages_ - answered_pages_;
        if (r.count > remaining) {
            excess += r.count - remaining;
            r.count = remaining;
            if (r.count == 0) continue;
        }
        answered_pages_ += r.count;
        // start < 2^40 and count < 2^24: the byte range cannot overflow.
        if (!in_ram(r.start << kPageShift, r.count << kPageShift)) {
            outside += r.count;
            continue;
        }
        uint64_t fresh_pages = 0;
        for (const PageRange& f : ballooned_.insert(r)) {
            fresh_pages += f.count;
            if (!ram_) continue;
            if (auto ok = ram_->discard(f.start << kPageShift, f.count << kPageShift); !ok) {
                ++counters_.discard_failures;
                ENL_LOG_LIMITED(warn, "dynamic memory: discarding ballooned pages {:#x}+{}: {}", f.start, f.count,
                                ok.error().message());
            }
        }
        dup += r.count - fresh_pages;
    }
    counters_.bad_ranges += bad;
    counters_.excess_pages += excess;
    counters_.outside_ram_pages += outside;
    counters_.duplicate_pages += dup;
    if (bad || excess || outside || dup)
        ENL_LOG_LIMITED(warn,
                        "dynamic memory: the guest's balloon response had {} empty ranges, {} pages beyond the {} asked "
                        "for, {} pages outside RAM, {} pages returned twice; those were ignored",
                        bad, excess, requested_pages_, outside, dup);
    if (!m.more_pages) {
        log::debug("dynamic memory: the guest ballooned {} of {} pages; {} ballooned in all", answered_pages_,
                   requested_pages_, ballooned_.pages());
        state_ = DmState::Ready;
    }
}

void DmEngine::on_unballoon_response(const UnballoonResponse&) {
    if (state_ != DmState::Unballooning) return unexpected("UNBALLOON_RESPONSE");
    state_ = DmState::Ready;
}

void DmEngine::on_hot_add_response(const HotAddResponse& m) {
    if (state_ != DmState::HotAdding) return unexpected("HOT_ADD_RESPONSE");
    state_ = DmState::Ready;
    const uint64_t requested = hot_add_range_.count;
    uint64_t added = m.page_count;
    if (added > requested) {
        counters_.excess_pages += added - requested;
        ENL_LOG_LIMITED(warn, "dynamic memory: the guest claims {} hot-added pages of {} offered; counted {}", added,
                        requested, requested);
        added = requested;
    }
    if (m.result == 0) {
        // Transient (contract-memory §7.4): the range stays mapped and is offered again.
        ++counters_.hot_add_refused;
        unused_hot_add_ = hot_add_range_;
        if (++hot_add_failures_ >= kMaxHotAddFailures)
            hot_add_disabled_ = fmt::format(
                "the guest failed {} hot-adds in a row (is its memory block size 128 MiB? is the range within its "
                "physical address limit? see docs/memory.md)",
                hot_add_failures_);
        ENL_LOG_LIMITED(warn, "dynamic memory: the guest could not hot-add {} MiB at {:#x}{}{}",
                        (requested << kPageShift) / kMiB, hot_add_range_.start << kPageShift,
                        hot_add_disabled_.empty() ? "" : "; ", hot_add_disabled_);
        return;
    }
    hot_add_failures_ = 0;
    unused_hot_add_.reset();
    hot_added_pages_ += added;
    if (added == 0) {
        ++counters_.hot_add_refused;
        hot_add_disabled_ = "the guest refused hot-add for good (hv_balloon hot_add=0, an ACPI \\_S4 object, or a "
                            "range it could not claim)";
        log::warn("dynamic memory: {}", hot_add_disabled_);
    } else if (added < requested) {
        hot_add_disabled_ = fmt::format("the guest added only {} of {} pages (an upper physical memory limit)", added,
                                        requested);
        log::warn("dynamic memory: {}", hot_add_disabled_);
    }
}

Result<> DmEngine::balloon(uint64_t pages, Clock::time_point now) {
    if (state_ != DmState::Ready)
        return fail(state_ == DmState::Closed || state_ == DmState::Version || state_ == DmState::Capabilities
                        ? Errc::Closed
                        : Errc::Busy,
                    "dynamic memory is {}", to_string(state_));
    if (!can_balloon()) return fail(Errc::Unsupported, "the guest cannot balloon");
    if (pages == 0) return fail(Errc::Invalid, "balloon of 0 pages");
    pages = std::min(pages, kMaxBalloonPagesPerRequest);
    ram_ranges_ = ram_->ram_ranges();
    requested_pages_ = pages;
    answered_pages_ = 0;
    send(make_balloon_request(next_trans_id_++, static_cast<uint32_t>(pages)));
    state_ = DmState::Ballooning;
    deadline_ = now + kBalloonTimeout;
    return {};
}

Result<> DmEngine::unballoon(uint64_t pages, Clock::time_point now) {
    if (state_ != DmState::Ready) return fail(Errc::Busy, "dynamic memory is {}", to_string(state_));
    if (pages == 0 || ballooned_.pages() == 0) return fail(Errc::Invalid, "nothing to unballoon");
    const auto ranges = ballooned_.take(std::min(pages, kMaxUnballoonPagesPerRequest), kMaxUnballoonRanges);
    // The guest frees the pages as it reads each message; the host's backing refaults as
    // zeros (they were discarded when ballooned).
    for (size_t at = 0; at < ranges.size(); at += kMaxRangesPerMessage) {
        const size_t n = std::min<size_t>(kMaxRangesPerMessage, ranges.size() - at);
        const bool more = at + n < ranges.size();
        send(make_unballoon_request(next_trans_id_++, std::span(ranges).subspan(at, n), more));
    }
    state_ = DmState::Unballooning;
    deadline_ = now + kUnballoonTimeout;
    return {};
}

uint64_t DmEngine::hot_add_room_bytes() const {
    if (!ram_) return 0;
    const GpaWindow w = ram_->hot_add_window();
    if (w.empty()) return 0;
    uint64_t next = w.gpa;
    for (const auto& r : ram_->ram_ranges())
        if (r.end() > w.gpa && r.gpa < w.end()) next = std::max(next, r.end());
    next = (next + kMinHotAddAlignment - 1) / kMinHotAddAlignment * kMinHotAddAlignment;
    return next >= w.end() ? 0 : w.end() - next;
}

bool DmEngine::can_balloon() const { return ram_ && caps_ && caps_->balloon; }

bool DmEngine::can_hot_add() const {
    return ram_ && caps_ && caps_->hot_add && hot_add_disabled_.empty() &&
           (unused_hot_add_ || hot_add_room_bytes() > 0);
}

Result<> DmEngine::hot_add(uint64_t pages, Clock::time_point now) {
    if (state_ != DmState::Ready) return fail(Errc::Busy, "dynamic memory is {}", to_string(state_));
    if (!can_hot_add())
        return fail(Errc::Unsupported, "hot-add is not possible: {}",
                    !hot_add_disabled_.empty()      ? hot_add_disabled_
                    : caps_ && !caps_->hot_add      ? std::string("the guest does not offer it")
                    : ram_                          ? std::string("the hot-add window is used up (max reached)")
                                                    : std::string("no RAM control"));
    if (pages == 0) return fail(Errc::Invalid, "hot-add of 0 pages");
    PageRange range;
    if (unused_hot_add_) {
        range = *unused_hot_add_;
    } else {
        const uint64_t bytes = std::min(
            {(pages * kPageSize + kMinHotAddAlignment - 1) / kMinHotAddAlignment * kMinHotAddAlignment,
             hot_add_room_bytes() / kMinHotAddAlignment * kMinHotAddAlignment, kMaxHotAddBytesPerRequest});
        const GpaWindow w = ram_->hot_add_window();
        const uint64_t gpa = w.end() - hot_add_room_bytes();
        if (auto ok = ram_->hot_add(gpa, bytes); !ok) {
            problem_ = fmt::format("mapping {} MiB of hot-add RAM at {:#x}: {}", bytes / kMiB, gpa, ok.error().message());
            log::warn("dynamic memory: {}", problem_);
            return std::unexpected(ok.error());
        }
        range = {gpa >> kPageShift, bytes >> kPageShift};
        ram_ranges_ = ram_->ram_ranges();
    }
    hot_add_range_ = range;
    send(make_hot_add_request(next_trans_id_++, range));
    state_ = DmState::HotAdding;
    deadline_ = now + kHotAddTimeout;
    return {};
}

void DmEngine::tick(Clock::time_point now) {
    const char* what = state_ == DmState::Ballooning     ? "balloon"
                       : state_ == DmState::Unballooning ? "unballoon"
                       : state_ == DmState::HotAdding    ? "hot-add"
                                                         : nullptr;
    if (!what || now < deadline_) return;
    ++counters_.timeouts;
    problem_ = fmt::format("the guest did not answer the {} request in time; dynamic memory is stopped until the "
                           "guest reopens the channel (an ACPI \\_S4 object makes Linux ignore balloon requests)",
                           what);
    if (state_ == DmState::HotAdding) hot_add_disabled_ = "the guest did not answer a hot-add request";
    state_ = DmState::Wedged;
    log::warn("dynamic memory: {}", problem_);
}

bool DmEngine::in_ram(uint64_t gpa, uint64_t len) const {
    return std::any_of(ram_ranges_.begin(), ram_ranges_.end(), [&](const GpaWindow& w) { return w.contains(gpa, len); });
}

uint64_t DmEngine::ram_pages() const {
    uint64_t total = 0;
    for (const auto& r : ram_ranges_) total += r.size / kPageSize;
    return total;
}

}  // namespace enlighten::balloon
