// The KVM memory slots of a VM, as an interface: kvm::Vm implements it with
// KVM_SET_USER_MEMORY_REGION; the memory manager's tests use a fake.
//
// Threads: set_slot may be called from any thread, also while vCPUs run (KVM allows slot
// changes at run time); the MemoryManager serializes its own calls.
#pragma once

#include <cstdint>

#include "common/result.hpp"

namespace enlighten {

class MemorySlots {
public:
    virtual ~MemorySlots() = default;
    // Makes guest [gpa, gpa+size) the host memory at `host` in slot `slot`; size 0 deletes
    // the slot (gpa and host are then ignored). KVM allows this while vCPUs run: a vCPU
    // that touches a range being changed waits until the change is done.
    virtual Result<> set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) = 0;
};

}  // namespace enlighten
