// Where the VMBus server's messages and signals to the guest go (in the VMM: the SynIC).
//
// Threads: both calls may be made from any thread (vCPUs, the control loop, device workers)
// and do not block; they take only the SynIC's per-VP lock, the last lock in every order.
#pragma once

#include <cstdint>
#include <span>

namespace enlighten::vmbus {

class MessageSink {
public:
    virtual ~MessageSink() = default;
    // Posts one VMBus message (header included) to a VP's SINT. False if it could not be queued.
    virtual bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> message) = 0;
    // Sets event flag `flag` (a channel's relid) in the VP's SINT event flags and interrupts it.
    virtual bool signal(uint32_t vp, uint32_t sint, uint32_t flag) = 0;
};

}  // namespace enlighten::vmbus
