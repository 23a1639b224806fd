// VSS (Hyper-V's "Backup (volume shadow copy)" integration service): the host asks the guest
// to freeze its file systems before it snapshots the disks, and to thaw them after. The
// guest's hv_utils (drivers/hv/hv_snapshot.c) hands FREEZE, THAW and HOT_BACKUP to
// hv_vss_daemon (tools/hv/hv_vss_daemon.c), which runs FIFREEZE / FITHAW on every rw mount
// of a /dev block device, "/" last. The facts are in ../shared/contract-services.md §1 and §2:
// one request at a time, the guest answers each by echoing it with a status; HOT_BACKUP's
// status says whether the daemon is there; the guest never thaws by itself.
//
// Threads: the IcDevice hooks run on the control loop; request() (and check, freeze, thaw)
// on any thread but the loop's: it blocks until the guest answers or the deadline passes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "devices/ic/ic_device.hpp"

namespace enlighten::ic {

inline constexpr const char* kVssClass = "35fa2e29-ea23-4236-96ae-3a6ebacba440";  // HV_VSS_GUID
// hv_snapshot.c accepts framework 3.0 and VSS 5.0 only.
inline constexpr uint32_t kVssVersions[] = {0x50000};
// The guest's max_pkt_size for this channel (VSS_MAX_PKT_SIZE).
inline constexpr uint32_t kVssMaxPacket = 8192;

enum VssOp : uint8_t {
    kVssCreate = 0,
    kVssDelete = 1,
    kVssHotBackup = 2,   // "may I?": 0 when the guest's daemon is registered
    kVssGetDmInfo = 3,
    kVssBuComplete = 4,
    kVssFreeze = 5,
    kVssThaw = 6,
};
const char* vss_op_name(uint8_t op);

// struct hv_vss_msg as it travels on the channel: the operation, reserved bytes, flags.
struct __attribute__((packed)) VssMessage {
    uint8_t operation = 0;
    uint8_t reserved[7]{};
    uint32_t flags = 0;
};
static_assert(sizeof(VssMessage) == 12);

// The guest's answer to a request of `op`: its status, or why the answer is not one (the
// guest echoes the request with the status set: message type VSS, at least the 12 bytes of
// the message; the daemon overwrites the operation byte with its error code, so only the
// status counts: contract-services.md §2.2).
Result<uint32_t> vss_answer_status(const IcResponse& answer);

class VssService final : public IcDevice {
public:
    explicit VssService(const char* instance_id);

    // Sends one request and waits for the answer, at most `timeout`. Errors: Failed (the guest
    // answered with an error status: the message says which), Timeout, Closed (the service is
    // not connected), Invalid (an answer that is not one). Not on the loop thread.
    Result<> request(VssOp op, std::chrono::milliseconds timeout);
};

}  // namespace enlighten::ic
