// The KVM memory slots of a VM, as an interface: kvm::Vm implements it with
// KVM_SET_USER_MEMORY_REGION; the memory manager's tests use a fake.
//
// Threads: set_slot may be called from any thread, also while vCPUs run (KVM allows slot
// changes at run time); the MemoryManager serializes its own calls.
#pragma once

#include <cstdint>
#include <vector>

#include "common/result.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten {

class MemorySlots {
public:
    virtual ~MemorySlots() = default;
    // Makes guest [gpa, gpa+size) the host memory at `host` in slot `slot`; size 0 deletes
    // the slot (gpa and host are then ignored). KVM allows this while vCPUs run: a vCPU
    // that touches a range being changed waits until the change is done.
    virtual Result<> set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) = 0;
};

// Slots set before the VM exists: set_slot() calls are recorded until attach(), which replays
// them on the VM in order; later calls go straight through. Lets guest memory be mapped (and
// the kernel written into it) while KVM is still creating the VM. Any thread; its lock is
// taken inside the MemoryManager's, and held across the target's set_slot.
class DeferredSlots final : public MemorySlots {
public:
    Result<> set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) override ENL_EXCLUDES(mu_) {
        LockGuard lock(mu_);
        if (target_) return target_->set_slot(slot, gpa, size, host);
        pending_.push_back({slot, gpa, size, host});
        return {};
    }
    // Replays what was recorded, then forwards; once. The first error stops the replay.
    Result<> attach(MemorySlots& target) ENL_EXCLUDES(mu_) {
        LockGuard lock(mu_);
        if (target_) return fail(Errc::Invalid, "memory slots are already attached to a VM");
        for (const Call& c : pending_) ENL_TRY_VOID(target.set_slot(c.slot, c.gpa, c.size, c.host));
        pending_.clear();
        target_ = &target;
        return {};
    }

private:
    struct Call {
        uint32_t slot;
        uint64_t gpa;
        uint64_t size;
        uint8_t* host;
    };
    Mutex mu_;
    MemorySlots* target_ ENL_GUARDED_BY(mu_) = nullptr;
    std::vector<Call> pending_ ENL_GUARDED_BY(mu_);
};

}  // namespace enlighten
