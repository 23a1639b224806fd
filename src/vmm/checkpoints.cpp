#include "vmm/checkpoints.hpp"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "backends/disk/image_tool.hpp"
#include "backends/disk/vhdx/vhdx.hpp"
#include "common/log.hpp"
#include "devices/ic/vss.hpp"
#include "devices/storvsp/storvsp.hpp"
#include "vmm/devices.hpp"

namespace enlighten {

namespace {

using api::ApiError;
using api::ErrorKind;
using Clock = std::chrono::steady_clock;

std::unexpected<ApiError> api_error(ErrorKind kind, std::string message) {
    return std::unexpected(ApiError{kind, std::move(message)});
}

uint64_t ms_since(Clock::time_point t) {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

// How long the disks' requests in flight may take to finish when they are paused.
constexpr auto kPauseTimeout = std::chrono::seconds(30);
// The guest answers HOT_BACKUP and THAW through its daemon, which its kernel gives 30 s.
constexpr auto kVssAnswerTimeout = std::chrono::seconds(35);

// A disk a checkpoint switches (or a merge switches back).
struct Target {
    std::string id;
    std::shared_ptr<storvsp::Controller> controller;
    std::string parent;  // the checkpoint's image
    std::string image;   // the differencing image over it
};

// Every storage controller of the VM, paused until this goes (or resume()).
class PausedControllers {
public:
    explicit PausedControllers(const DeviceSet& devices) {
        for (const auto& e : devices.entries())
            if (auto c = std::dynamic_pointer_cast<storvsp::Controller>(e.device)) all_.push_back(std::move(c));
    }
    ~PausedControllers() { resume(); }
    PausedControllers(const PausedControllers&) = delete;
    PausedControllers& operator=(const PausedControllers&) = delete;

    // One deadline for all: the guest may be frozen meanwhile.
    Result<> pause() {
        started_ = Clock::now();
        const auto deadline = started_ + kPauseTimeout;
        for (const auto& c : all_) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            ENL_TRY_VOID(c->pause(std::max(left, std::chrono::milliseconds(1))));
            paused_.push_back(c);
        }
        return {};
    }
    void resume() {
        for (const auto& c : paused_) c->resume();
        paused_.clear();
    }
    [[nodiscard]] const std::vector<std::shared_ptr<storvsp::Controller>>& all() const { return all_; }
    [[nodiscard]] uint64_t elapsed_ms() const { return ms_since(started_); }

private:
    std::vector<std::shared_ptr<storvsp::Controller>> all_;
    std::vector<std::shared_ptr<storvsp::Controller>> paused_;
    Clock::time_point started_ = Clock::now();
};

// Makes the VHDX image `path` of a paused disk consistent on its own (its metadata flushed,
// its log empty), so that it can be a parent, or be merged. The image takes no more writes
// after this (Image::close): the caller switches the disk to a fresh open, whatever happens.
Result<> close_image(const Target& t, const std::string& path) {
    auto d = std::dynamic_pointer_cast<disk::VhdxDisk>(t.controller->disk(t.id));
    if (!d) return fail(Errc::Invalid, "disk '{}' is not a VHDX image any more", t.id);
    if (d->info().path != path) return fail(Errc::Busy, "disk '{}' is on {}, not {}", t.id, d->info().path, path);
    return d->image().close();
}

// Puts a paused disk on a fresh open of `path` (from `from`); a failure is logged: the disk
// then stays on its closed image, which reads but whose later metadata is not committed.
void reopen(const Target& t, const std::string& from, const std::string& path, bool accept_changed_parent = false) {
    if (auto r = t.controller->replace_image(t.id, {from, path, "vhdx", accept_changed_parent}); !r)
        log::error("checkpoint: disk '{}' could not be reopened on {}: {}", t.id, path, r.error().message());
}

// Switches a paused disk to a new differencing image over its current one.
Result<> snapshot_disk(const Target& t) {
    if (auto r = close_image(t, t.parent); !r) {
        if (!r.error().is(Errc::Busy)) reopen(t, t.parent, t.parent);
        return fail(r.error().code(), "disk '{}': {}", t.id, r.error().message());
    }
    if (auto r = disk::vhdx::create(t.image, {.parent = t.parent}); !r) {
        reopen(t, t.parent, t.parent);  // a fresh open of the unchanged image
        return fail(r.error().code(), "disk '{}': {}", t.id, r.error().message());
    }
    if (auto r = t.controller->replace_image(t.id, {t.parent, t.image}); !r) {
        ::unlink(t.image.c_str());
        reopen(t, t.parent, t.parent);
        return fail(r.error().code(), "disk '{}': {}", t.id, r.error().message());
    }
    return {};
}

// Back to the parent (nothing was written to the new image: the disks were paused).
void undo_snapshot(const Target& t) {
    if (auto r = t.controller->replace_image(t.id, {t.image, t.parent}); !r)
        log::error("checkpoint: disk '{}' stays on {}: {}", t.id, t.image, r.error().message());
    else
        ::unlink(t.image.c_str());
}

}  // namespace

std::string checkpoint_image_path(const std::string& image, const std::string& name) {
    const std::filesystem::path p(image);
    return (p.parent_path() / fmt::format("{}_{}.avhdx", p.stem().string(), name)).string();
}

api::ApiResult<api::CheckpointInfo> Checkpoints::take(const api::CheckpointRequest& request) {
    std::unique_lock op(op_mu_, std::try_to_lock);
    if (!op.owns_lock()) return api_error(ErrorKind::Conflict, "another checkpoint operation is running");
    running_ = true;
    const std::shared_ptr<void> not_running(nullptr, [this](void*) { running_ = false; });
    {
        LockGuard lock(mu_);
        for (const auto& c : list_)
            if (c.name == request.name)
                return api_error(ErrorKind::Conflict, fmt::format("there is a checkpoint '{}' already", request.name));
    }
    api::CheckpointInfo info;
    info.name = request.name;
    info.consistency = request.consistency;

    // Every writable disk goes on a differencing image, so each must be a VHDX.
    PausedControllers controllers(devices_);
    std::vector<Target> targets;
    for (const auto& c : controllers.all())
        for (const auto& d : c->disks()) {
            if (d.read_only) continue;
            if (d.format != "vhdx")
                return api_error(ErrorKind::Conflict,
                                 fmt::format("disk '{}' ({}) is a {} image: checkpoints need VHDX disks (convert it with "
                                             "`enlighten image convert`), or the disk attached read-only",
                                             d.id, d.path, d.format));
            Target t{d.id, c, d.path, checkpoint_image_path(d.path, request.name)};
            if (std::filesystem::exists(t.image))
                return api_error(ErrorKind::Conflict, fmt::format("disk '{}': {} exists already", d.id, t.image));
            targets.push_back(std::move(t));
        }
    if (targets.empty()) return api_error(ErrorKind::Conflict, "the VM has no writable VHDX disk to checkpoint");

    // The guest's freeze.
    const bool application = request.consistency == "application";
    std::shared_ptr<ic::VssService> vss;
    Clock::time_point frozen_at{};
    if (application) {
        const std::string crash_hint = "; \"consistency\": \"crash\" (remote checkpoint --crash) takes a crash-consistent "
                                       "checkpoint without the guest";
        vss = devices_.first<ic::VssService>();
        if (!vss) return api_error(ErrorKind::Conflict, "the VM has no VSS service (--hyperv off?)" + crash_hint);
        if (vss->state() == ic::IcState::Negotiating) vss->wait_ready(std::chrono::seconds(5));
        if (vss->state() != ic::IcState::Ready)
            return api_error(ErrorKind::Conflict,
                             "VSS is not available: the guest's backup service is not connected (hv_utils not loaded, "
                             "or the vss integration service disabled)" + crash_hint);
        if (auto r = vss->request(ic::kVssHotBackup, kVssAnswerTimeout); !r)
            return api_error(r.error().is(Errc::Failed) ? ErrorKind::Conflict : ErrorKind::Unavailable,
                             fmt::format("the guest cannot freeze its file systems: {} (is hv_vss_daemon running?){}",
                                         r.error().message(), crash_hint));
        frozen_at = Clock::now();
        if (auto r = vss->request(ic::kVssFreeze, std::chrono::seconds(request.freeze_timeout_s)); !r) {
            // The daemon thawed what it had frozen if it failed; after a timeout the THAW
            // waits in the ring behind the FREEZE and undoes it (contract-services §2.5).
            (void)vss->request(ic::kVssThaw, kVssAnswerTimeout);
            return api_error(r.error().is(Errc::Failed) ? ErrorKind::Conflict : ErrorKind::Unavailable,
                             fmt::format("the guest did not freeze its file systems: {}", r.error().message()));
        }
        log::info("checkpoint '{}': the guest froze its file systems in {} ms", request.name, ms_since(frozen_at));
    }
    auto thaw = [&]() -> std::string {
        if (!application) return {};
        auto r = vss->request(ic::kVssThaw, kVssAnswerTimeout);
        // The guest never thaws by itself: one more try after a lost answer.
        if (!r && r.error().is(Errc::Timeout)) r = vss->request(ic::kVssThaw, kVssAnswerTimeout);
        info.frozen_ms = ms_since(frozen_at);
        if (!r) {
            log::error("checkpoint '{}': {}", request.name, r.error().message());
            return r.error().message();
        }
        return {};
    };

    // The snapshot, with the disks' I/O held.
    std::vector<Target> done;
    auto failed = [&](const std::string& why) {
        for (auto it = done.rbegin(); it != done.rend(); ++it) undo_snapshot(*it);
        controllers.resume();
        const std::string thaw_error = thaw();
        return api_error(ErrorKind::Internal,
                         fmt::format("checkpoint '{}' not taken: {}{}", request.name, why,
                                     thaw_error.empty() ? "" : fmt::format(" (and {})", thaw_error)));
    };
    if (auto r = controllers.pause(); !r) return failed(r.error().message());
    for (const auto& t : targets) {
        if (auto r = snapshot_disk(t); !r) return failed(r.error().message());
        done.push_back(t);
    }
    info.paused_ms = controllers.elapsed_ms();
    controllers.resume();
    info.warning = thaw();
    if (!info.warning.empty()) info.warning = "the guest's THAW failed: " + info.warning;

    info.created_unix_ms = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    for (const auto& t : targets) info.disks.push_back({t.id, t.parent, t.image});
    log::info("checkpoint '{}' ({}): {} disks, I/O held {} ms, frozen {} ms", info.name, info.consistency,
              info.disks.size(), info.paused_ms, info.frozen_ms);
    LockGuard lock(mu_);
    list_.push_back(info);
    return info;
}

std::vector<api::CheckpointInfo> Checkpoints::list() const {
    LockGuard lock(mu_);
    return list_;
}

api::ApiResult<api::CheckpointInfo> Checkpoints::merge() {
    std::unique_lock op(op_mu_, std::try_to_lock);
    if (!op.owns_lock()) return api_error(ErrorKind::Conflict, "another checkpoint operation is running");
    running_ = true;
    const std::shared_ptr<void> not_running(nullptr, [this](void*) { running_ = false; });
    api::CheckpointInfo newest;
    {
        LockGuard lock(mu_);
        if (list_.empty()) return api_error(ErrorKind::Conflict, "there is no checkpoint to merge");
        newest = list_.back();
    }
    PausedControllers controllers(devices_);
    // The disks still on the checkpoint's images (a disk removed since has nothing to merge).
    std::vector<Target> targets;
    for (const auto& d : newest.disks)
        for (const auto& c : controllers.all())
            for (const auto& s : c->disks()) {
                if (s.id != d.id) continue;
                if (s.path != d.image)
                    return api_error(ErrorKind::Conflict, fmt::format("disk '{}' is on {}, not on the checkpoint's {}",
                                                                      d.id, s.path, d.image));
                targets.push_back({d.id, c, d.parent, d.image});
            }
    if (auto r = controllers.pause(); !r) return api_error(ErrorKind::Internal, r.error().message());
    // A failure after some disks were merged: the checkpoint keeps only the others.
    auto forget = [&](size_t merged) {
        LockGuard lock(mu_);
        for (size_t i = 0; i < merged && !list_.empty(); ++i)
            std::erase_if(list_.back().disks, [&](const api::CheckpointDisk& d) { return d.id == targets[i].id; });
    };
    for (size_t i = 0; i < targets.size(); ++i) {
        const Target& t = targets[i];
        // The differencing image's data goes into its parent, which then holds the disk. On a
        // failure the disk goes on on the differencing image: it still reads the same through
        // it, whatever reached the parent (only its own sectors did), though the parent's
        // DataWriteGuid changed with the first write: it is reopened accepting that, and
        // `enlighten image merge` (which accepts it too) completes the merge offline.
        if (auto closed = close_image(t, t.image); !closed) {
            if (!closed.error().is(Errc::Busy)) reopen(t, t.image, t.image);
            forget(i);
            return api_error(ErrorKind::Internal, fmt::format("merging checkpoint '{}' of disk '{}' failed: {}",
                                                              newest.name, t.id, closed.error().message()));
        }
        if (auto merged = disk::image_merge(t.image); !merged) {
            reopen(t, t.image, t.image, true);
            forget(i);
            return api_error(ErrorKind::Internal,
                             fmt::format("merging checkpoint '{}' of disk '{}' failed: {}; the disk goes on on {} (its "
                                         "parent holds part of the merge: `enlighten image merge {}` completes it "
                                         "offline)",
                                         newest.name, t.id, merged.error().message(), t.image, t.image));
        }
        if (auto r = t.controller->replace_image(t.id, {t.image, t.parent}); !r) {
            reopen(t, t.image, t.image, true);
            forget(i);
            return api_error(ErrorKind::Internal, fmt::format("disk '{}': merged, but {} does not open: {}", t.id,
                                                              t.parent, r.error().message()));
        }
        ::unlink(t.image.c_str());
    }
    newest.paused_ms = controllers.elapsed_ms();
    controllers.resume();
    log::info("checkpoint '{}' merged: {} disks, I/O held {} ms", newest.name, targets.size(), newest.paused_ms);
    LockGuard lock(mu_);
    list_.pop_back();
    return newest;
}

}  // namespace enlighten
