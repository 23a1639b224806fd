// Production checkpoints (PUT vm.checkpoint, GET vm.checkpoints, PUT vm.checkpoint-merge;
// docs/checkpoints.md), as Hyper-V takes them of a Linux guest:
//
//   1. the guest's VSS service is asked whether it can freeze (HOT_BACKUP: its daemon runs);
//   2. FREEZE: hv_vss_daemon syncs and freezes every rw file system on a /dev block device;
//   3. every storage controller stops taking requests until none is in flight (storvsp
//      Controller::pause), and each writable VHDX disk is switched to a new differencing
//      image over its current one, which becomes the checkpoint's read-only parent;
//   4. the controllers resume, and THAW is sent: always, also after a failure.
// "crash" consistency skips the guest (steps 1, 2 and 4's THAW): the snapshot is what a
// power cut would leave. Merging the newest checkpoint writes its differencing images back
// into their parents (the disks' I/O waits meanwhile) and deletes them.
//
// The list lives in this process: a VM restarted on the differencing images runs on them,
// and `enlighten image merge` merges them offline.
//
// Threads: every call from an API worker thread; take() blocks for the guest's freeze (at
// most its timeout) and merge() for the copy. One operation at a time (op_mu_, never held by
// anything else; mu_ is a leaf that guards the list).
#pragma once

#include <atomic>
#include <mutex>
#include <vector>

#include "api/vm_control.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten {

class DeviceSet;

class Checkpoints {
public:
    explicit Checkpoints(const DeviceSet& devices) : devices_(devices) {}

    api::ApiResult<api::CheckpointInfo> take(const api::CheckpointRequest& request);
    std::vector<api::CheckpointInfo> list() const;
    api::ApiResult<api::CheckpointInfo> merge();
    // A checkpoint or merge is running: disks are not added or removed meanwhile, nor is the
    // VSS service switched off (the guest would stay frozen).
    [[nodiscard]] bool running() const { return running_.load(); }

private:
    const DeviceSet& devices_;
    std::mutex op_mu_;
    std::atomic<bool> running_{false};
    mutable Mutex mu_;
    std::vector<api::CheckpointInfo> list_ ENL_GUARDED_BY(mu_);
};

// The differencing image a checkpoint puts over `image`: beside it, "<stem>_<name>.avhdx".
std::string checkpoint_image_path(const std::string& image, const std::string& name);

}  // namespace enlighten
