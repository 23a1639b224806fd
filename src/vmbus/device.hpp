// The interface every VSP implements, and what the bus gives it.
//
// A device is long-lived (it belongs to the VM and survives guest reboots). On every boot
// the machine's VMBus server attaches it (DeviceResources: its ChannelControl, guest memory,
// the control loop); the guest then opens and closes its channels: the primary (index 0)
// and the sub-channels the device enabled from its own protocol handler (storvsc
// CREATE_SUB_CHANNELS, netvsc's sub-channel request). Open and close are asynchronous: the
// device finishes them when it is ready (a close may wait for I/O in flight) by calling the
// completion it was given, and the server answers the guest then. This is the shape of
// OpenVMM's VmbusDevice (vmbus_channel/src/channel.rs).
//
//   attach(resources)                         each boot, before the first offer
//   open({index, target_vp, ...}, queue, done) -> done(Result) once; OPENCHANNEL_RESULT goes out then
//   opened(index)                             the result went out: the guest is listening now
//   retarget(index, vp)                       the guest moved the channel's interrupt (MODIFYCHANNEL)
//   close(index, done)                        stop using that queue (finish or cancel its work), then done()
//   reset()                                   the bus reset (UNLOAD, reboot): every channel closed, sub-channels gone
//   detach()                                  the machine goes away; drop the resources
//
// Threads: attach, open, close, retarget, reset and detach are called on the control loop
// (the VM's event loop thread), never with a server lock held, never re-entrantly from a
// completion. Completions may be called from any thread, at most once each, and must not be
// called with device locks held that the device also takes in those callbacks (they take
// the server's lock). ChannelControl may be called from any thread, with device locks held
// (lock order: device locks -> server -> queue -> SynIC).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/executor.hpp"
#include "common/result.hpp"
#include "vmbus/gpadl.hpp"
#include "vmbus/protocol.hpp"

namespace enlighten {
class GuestMemory;
class EventLoop;
class RamControl;
}

namespace enlighten::vmbus {

class ChannelQueue;

// Sub-channels per device, whatever the device declares.
inline constexpr uint16_t kMaxSubchannels = 64;

// What goes into the OFFERCHANNEL message, plus the limits of the guest driver.
struct OfferParams {
    std::string name;  // for logs and the API, e.g. "heartbeat"
    Guid class_id;     // if_type
    Guid instance_id;  // if_instance: unique
    uint16_t flags = 0;
    uint16_t mmio_megabytes = 0;
    std::array<uint8_t, 120> user_def{};
    // The guest driver's max_pkt_size: no packet we write may be longer (a longer one
    // desynchronises the guest's ring; linux-hv-guest-contract §7.3).
    uint32_t max_packet_to_guest = 4096;
    // The longest packet we accept from the guest.
    uint32_t max_packet_from_guest = 4096;
    // The guest reads one packet per interrupt (hv_utils direct mode): signal every write.
    bool signal_every_packet = false;
    // A channel that belongs to one connection (hv_sock): a bus reset (UNLOAD, kexec,
    // shutdown) withdraws the device (reset() then detach()) instead of offering it again.
    bool withdraw_on_reset = false;
};

struct OpenRequest {
    uint16_t index = 0;  // 0: the primary channel; 1..: sub-channels
    uint32_t target_vp = 0;
    std::array<uint8_t, 120> user_data{};
    uint32_t vmbus_version = 0;  // the connection's negotiated version
};

using OpenDone = std::move_only_function<void(Result<>)>;
using CloseDone = std::move_only_function<void()>;

// The bus's side of one device, for the device. Valid from attach() to detach().
class ChannelControl {
public:
    virtual ~ChannelControl() = default;
    // Offers sub-channels 1..count (those not offered yet), bounded by max_subchannels().
    // Returns how many sub-channels are enabled now. Errc::Invalid beyond the maximum.
    virtual Result<uint16_t> enable_subchannels(uint16_t count) = 0;
    // A GPADL the guest created on one of this device's channels, held until the view is
    // dropped (a guest teardown waits for that). Errc::NotFound otherwise.
    virtual Result<GpadlView> gpadl(uint32_t handle) = 0;
    // The connection's negotiated VMBus version (0 when not connected).
    [[nodiscard]] virtual uint32_t vmbus_version() const = 0;
};

struct DeviceResources {
    ChannelControl* control = nullptr;
    const GuestMemory* memory = nullptr;
    EventLoop* loop = nullptr;  // the control loop: for devices with no thread of their own
    // The partition's reference time (TIME_REF_COUNT, 100 ns units) for this boot.
    std::function<uint64_t()> reference_time;
    // Changes to guest RAM (kvm/ram_control.hpp): discard ballooned pages, hot-add RAM (the
    // dynamic-memory VSP), back a framebuffer in the MMIO pool (the synthetic video); null
    // when the VM gives none (tests of other devices).
    // Valid for this boot, like `memory`.
    RamControl* ram = nullptr;
};

class Device {
public:
    virtual ~Device() = default;
    [[nodiscard]] virtual const OfferParams& offer() const = 0;
    [[nodiscard]] virtual uint16_t max_subchannels() const { return 0; }

    virtual void attach(const DeviceResources& resources) = 0;
    // The guest opened channel `request.index`. The queue is the device's until close's
    // completion; call done(Result) once (an error refuses the open: OPENCHANNEL_RESULT
    // carries a failure status).
    virtual void open(const OpenRequest& request, std::shared_ptr<ChannelQueue> queue, OpenDone done) = 0;
    // OPENCHANNEL_RESULT went out for a successful open (devices that speak first, like the
    // integration services' version negotiation, start here).
    virtual void opened(uint16_t /*index*/) {}
    // Stop using channel `index`'s queue; call done() once nothing will touch it again.
    virtual void close(uint16_t index, CloseDone done) = 0;
    virtual void retarget(uint16_t /*index*/, uint32_t /*vp*/) {}
    virtual void reset() {}
    virtual void detach() {}
};

}  // namespace enlighten::vmbus
