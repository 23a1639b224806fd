// What the management API can do to a running VM. The API server (src/api/server.*)
// speaks HTTP/JSON and calls this; the VMM implements it (src/vmm/). Every call is made on
// an API thread and must be thread-safe; none may block for long (a graceful shutdown is
// started here and finishes in the background).
//
// Threads: every call comes from an API worker thread, several at once; implementations
// are thread-safe and may wait for the guest (never on the VM's loop thread). The server
// runs the calls that may wait (api::Lane::Guest in router.hpp: KVP, time sync,
// integration service switches, disks, memory changes, copy-file, checkpoints, the console)
// on workers of their own, at most ApiLimits::max_guest_calls at once; the others (info,
// heartbeat, shutdown (it only starts the first stage), power_off, reset, set_net_link, the
// progress and list getters) must not wait
// for the guest, since they share two workers. A call that starts waiting for the guest
// must move to the guest lane (lane_of) in the same change. No server lock is held during
// any call.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace enlighten::api {

// Where an API error comes from, so the server can pick an HTTP status.
enum class ErrorKind {
    BadRequest,   // 400: malformed or invalid arguments
    NotFound,     // 404: no such key / pool / object
    Conflict,     // 409: not possible in the current state (e.g. the IC is not connected)
    Unavailable,  // 503: the guest did not answer in time
    Internal,     // 500
};

struct ApiError {
    ErrorKind kind = ErrorKind::Internal;
    std::string message;
};

template <typename T = void>
using ApiResult = std::expected<T, ApiError>;

struct ChannelInfo {
    uint32_t relid = 0;
    uint16_t index = 0;      // 0: the device's primary channel; 1..: its sub-channels
    std::string name;        // e.g. "heartbeat"
    std::string class_id;    // GUID text
    std::string instance_id;
    std::string state;       // "offered", "opening", "open", "closing", "closed", "failed", "rescinded", "released"
    uint32_t target_vp = 0;
    // While the host uses the channel's rings: each ring's header as it is now (the guest's
    // fields as the guest wrote them), and whether the host waits for room in the ring to the
    // guest. For diagnosing a channel that stopped: who has not read what.
    struct Ring {
        uint32_t write_index = 0, read_index = 0, interrupt_mask = 0, pending_send_size = 0, size = 0;
    };
    std::optional<Ring> to_host{}, to_guest{};
    bool waiting_for_room = false;
};

// A device of the VM (it outlives guest reboots; the API addresses it by id).
struct DeviceInfo {
    std::string id;    // e.g. "kvp"
    std::string kind;  // the device class, e.g. "kvp"
    std::string class_id;
    std::string instance_id;
};

// A disk of the VM, with its I/O counters since it was attached.
struct DiskInfo {
    std::string id;
    std::string controller;  // the storage device's id, e.g. "scsi0"
    std::string bus;         // "scsi" or "ide"
    uint32_t lun = 0;
    std::string path;
    std::string format;
    bool read_only = false;
    bool direct = false;  // O_DIRECT on the image
    bool write_cache = true;  // the guest is told of a volatile write cache (WCE); false: write-through
    uint64_t size_bytes = 0;
    uint32_t block_size = 512;
    uint64_t requests = 0, reads = 0, writes = 0, flushes = 0, unmaps = 0;
    uint64_t bytes_read = 0, bytes_written = 0, errors = 0;
    uint64_t latency_us_avg = 0;  // mean backend latency of reads, writes, flushes and unmaps
};

// One VMBus channel of a storage controller (its primary, or a sub-channel).
struct StorageChannelInfo {
    std::string controller;
    uint32_t index = 0;
    uint32_t target_vp = 0;
    uint64_t requests = 0;
    uint32_t in_flight = 0;
};

// One queue (VMBus channel) of a NIC: the primary is queue 0.
struct NicQueueInfo {
    uint32_t index = 0;
    uint32_t target_vp = 0;
    uint64_t rx_packets = 0, rx_bytes = 0, rx_dropped = 0;  // to the guest
    uint64_t tx_packets = 0, tx_bytes = 0, tx_dropped = 0;  // from the guest
};

// A network adapter of the VM.
struct NicInfo {
    std::string id;
    std::string mac;      // aa:bb:cc:dd:ee:ff
    std::string backend;  // "slirp", "tap"
    std::string backend_info;  // e.g. the tap's name, slirp's network
    bool link_up = true;       // as the host drives it (vm.net-link)
    bool guest_ready = false;  // the guest's driver initialised the NIC and opened it
    uint32_t mtu = 0;          // the guest's, 0 before it said
    uint32_t queues = 0;       // open now
    uint32_t max_queues = 0;   // offered
    std::vector<NicQueueInfo> per_queue;
};

struct AddDiskRequest {
    std::string path;
    std::string controller;  // a SCSI controller's id ("scsi1"); empty: the first one
    std::string id;  // empty: chosen ("diskN")
    std::string format = "auto";
    bool read_only = false;
    bool writethrough = false;
    std::string serial;
};

// Dynamic memory (the hv_balloon VSP, docs/memory.md): the knobs, where the guest is, and
// its last status report. Sizes in bytes.
struct MemoryReport {
    uint64_t available = 0;  // the guest's MemAvailable
    uint64_t committed = 0;  // Committed_AS + ballooned + not onlined + its balloon floor
    uint64_t age_ms = 0;     // since the report came
    bool plausible = true;   // false: absurd numbers, not given to the policy
};

struct MemoryInfo {
    std::string state;  // the protocol: "closed", "negotiating-version", ..., "ready", "ballooning", "wedged"
    std::string protocol_version;  // "2.0"; "" before negotiation
    bool dynamic = false;
    uint64_t startup = 0, min = 0, max = 0;
    uint32_t buffer = 0, weight = 0;
    uint64_t current = 0;  // startup + hot-added - ballooned
    std::optional<uint64_t> target;
    bool explicit_target = false;
    uint64_t ballooned = 0, hot_added = 0;
    bool can_balloon = false, can_hot_add = false;
    std::string hot_add_disabled;  // why hot-add is off for this boot ("" when it is not)
    std::string problem;           // what defeats dynamic memory now ("" when nothing)
    std::string last_action;       // the policy's last decision and why
    uint64_t status_reports = 0;
    std::optional<MemoryReport> last_report;
    std::vector<std::pair<std::string, uint64_t>> guest_errors;  // hostile-guest counters, by name
};

// PUT vm.memory: only the fields given change. target: a size, or null to drop the
// explicit target (back to the policy).
struct MemoryUpdate {
    bool set_target = false;
    std::optional<uint64_t> target;
    std::optional<uint64_t> min, max;
    std::optional<uint32_t> buffer;
    std::optional<bool> dynamic;
};

// The VM console (docs/console.md): the synthetic video's framebuffer and the input devices.
struct DisplayMode {
    uint32_t width = 0, height = 0, pitch = 0;
};

struct ConsoleInfo {
    std::string video;     // "closed", "negotiating", "connected", "ready" (a framebuffer to show)
    std::string video_version;  // "3.5"; "" before negotiation
    std::optional<DisplayMode> mode;  // what the guest shows now
    uint32_t offered_width = 0, offered_height = 0;  // the default mode offered to the guest
    std::optional<uint64_t> vram_gpa;
    uint64_t vram_bytes = 0;
    bool vram_in_mmio = false;  // the framebuffer is in the VMBus MMIO pool, not guest RAM
    std::string keyboard;  // "closed", "negotiating", "ready"
    std::string mouse;     // "closed", "negotiating", "ready"
    uint64_t key_events = 0, pointer_reports = 0;
    std::vector<std::pair<std::string, uint64_t>> guest_errors;  // hostile-guest counters, by name
};

// PUT vm.send-keys: `text` is typed first (US layout), then each of `keys`, a combination
// such as "ctrl+alt+delete" pressed and released.
struct SendKeysRequest {
    std::string text;
    std::vector<std::string> keys;
};

// PUT vm.pointer: the absolute position in pixels of the guest's screen (0..width-1,
// 0..height-1), the buttons held, wheel detents; `click` presses and releases a button there.
struct PointerRequest {
    uint32_t x = 0, y = 0;
    uint8_t buttons = 0;  // bit 0 left, 1 right, 2 middle, 3 side, 4 extra
    int32_t wheel = 0;
    uint8_t click = 0;    // one button bit, or 0
};

struct Screenshot {
    uint32_t width = 0, height = 0;
    std::string png;
};

struct VmInfo {
    std::string state;  // "running", "shutting-down", "stopped"
    std::string vm_id;  // --vm-id, or the random one chosen at start
    uint32_t cpus = 0;
    uint64_t memory_bytes = 0;
    std::string kernel;
    std::string cmdline;
    bool hyperv = false;
    uint64_t uptime_ms = 0;
    std::string vmbus_version;  // "" until the guest connects, e.g. "5.3"
    std::vector<DeviceInfo> devices;
    std::vector<ChannelInfo> channels;
    std::vector<DiskInfo> disks;
    std::vector<StorageChannelInfo> storage_channels;
    std::vector<NicInfo> nics;
    uint64_t gpadls = 0;           // GPADLs the guest has established and not torn down
    uint64_t vmm_rss_bytes = 0;    // the VMM process, guest RAM excluded
    uint64_t guest_rss_bytes = 0;  // guest RAM the host has backed so far
    std::optional<MemoryInfo> memory;  // dynamic memory (absent without the Hyper-V interface)
    std::optional<ConsoleInfo> console;  // absent with --display off or --hyperv off
};

enum class HeartbeatState { Unknown, Healthy, Lost };

struct HeartbeatInfo {
    HeartbeatState state = HeartbeatState::Unknown;
    uint64_t sequence = 0;                  // last sequence number the guest returned
    std::optional<uint64_t> last_reply_ms;  // ms since the last reply, if any
};

// KVP pools (linux include/uapi/linux/hyperv.h, enum hv_kvp_exchg_pool).
enum class KvpPool : uint8_t { External = 0, Guest = 1, Auto = 2, AutoExternal = 3, AutoInternal = 4 };

struct KvpEntry {
    std::string key;
    std::string value;
};

// An integration service, as Hyper-V's Get-VMIntegrationService shows it.
struct IntegrationServiceInfo {
    std::string name;     // the device id: "heartbeat", "shutdown", "timesync", "kvp", ...
    bool enabled = true;  // offered to the guest
    std::string version;  // the negotiated message version, e.g. "3.0"; "" while not connected
    std::string status;   // "OK", "No Contact", "Lost Communication"; "" when disabled
};

struct ShutdownRequest {
    bool reboot = false;
    uint32_t timeout_s = 30;  // per stage: shutdown IC, then ACPI power button, then hard stop
    std::string reason;
};

// PUT vm.copy-file: a host file copied into the guest by its file copy service
// (hv_fcopy_daemon), as Hyper-V's Copy-VMFile does.
struct CopyFileRequest {
    std::string source;       // host path of a regular file
    std::string destination;  // absolute guest path of the file
    bool overwrite = false;   // replace a file that exists
    bool create_path = false; // create missing directories
};

struct CopyFileResult {
    uint64_t bytes = 0;
    uint64_t elapsed_ms = 0;
};

// GET vm.copy-file: the copy running now, or the last one.
struct CopyFileProgress {
    std::string state = "idle";  // "idle", "running", "done", "failed"
    std::string source;
    std::string destination;
    uint64_t bytes_total = 0;
    uint64_t bytes_sent = 0;     // handed to the guest
    uint64_t bytes_written = 0;  // the guest has written (answered)
    uint64_t elapsed_ms = 0;
    std::string error;  // why it failed
};

// PUT vm.checkpoint: a production checkpoint, as Hyper-V takes one (docs/checkpoints.md).
struct CheckpointRequest {
    std::string name;                       // [A-Za-z0-9._-], 1..64; unique among the checkpoints
    std::string consistency = "application"; // "application": the guest's file systems frozen
                                            // (VSS) or no checkpoint; "crash": without the guest
    uint32_t freeze_timeout_s = 60;         // how long the guest may take to freeze (1..900)
};

struct CheckpointDisk {
    std::string id;
    std::string parent;  // the image as of the checkpoint, read-only from then on
    std::string image;   // the differencing image the disk writes since
};

// GET vm.checkpoints lists these, oldest first.
struct CheckpointInfo {
    std::string name;
    std::string consistency;   // "application" (frozen by the guest) or "crash"
    uint64_t created_unix_ms = 0;
    uint64_t frozen_ms = 0;    // FREEZE answered .. THAW answered (0 for "crash")
    uint64_t paused_ms = 0;    // the disks' I/O held while their images were switched
    std::vector<CheckpointDisk> disks;
    std::string warning;       // e.g. a THAW the guest failed
};

class VmControl {
public:
    virtual ~VmControl() = default;

    virtual VmInfo info() = 0;
    // Starts a graceful shutdown or reboot (shutdown IC → ACPI power button → hard stop,
    // each stage waiting timeout_s). Returns once the first stage has been started, without
    // waiting for the guest (the quick lane runs it: router.cpp lane_of).
    virtual ApiResult<> shutdown(const ShutdownRequest& request) = 0;
    // Immediate power-off or reset, no guest involvement.
    virtual ApiResult<> power_off() = 0;
    virtual ApiResult<> reset() = 0;
    virtual HeartbeatInfo heartbeat() = 0;
    // Sends the guest the host's UTC time (time sync IC, SYNC flag).
    virtual ApiResult<> time_sync() = 0;

    // KVP. External and the other host-owned pools are written by the host; the guest's
    // pools (Auto = intrinsic data: hostname, OS, IP addresses) are read from the guest.
    virtual ApiResult<std::vector<KvpEntry>> kvp_list(KvpPool pool) = 0;
    virtual ApiResult<std::string> kvp_get(KvpPool pool, const std::string& key) = 0;
    virtual ApiResult<> kvp_set(KvpPool pool, const std::string& key, const std::string& value) = 0;
    virtual ApiResult<> kvp_delete(KvpPool pool, const std::string& key) = 0;

    // Integration services: each with its switch and Hyper-V's status; switching one off
    // rescinds its channel (the guest's driver lets the device go), on offers it again.
    virtual std::vector<IntegrationServiceInfo> integration_services() = 0;
    virtual ApiResult<IntegrationServiceInfo> set_integration_service(const std::string& name, bool enabled) = 0;

    // Storage: hot-add a disk to the SCSI controller (the guest sees it appear) and remove one.
    virtual ApiResult<DiskInfo> add_disk(const AddDiskRequest& request) = 0;
    virtual ApiResult<> remove_disk(const std::string& id) = 0;

    // Network: plug or unplug a NIC's virtual cable (the guest sees carrier come and go).
    virtual ApiResult<> set_net_link(const std::string& id, bool up) = 0;

    // Dynamic memory: the figures, and an explicit target or new policy knobs
    // (NotFound/Conflict without the VSP; BadRequest for values outside the limits).
    virtual ApiResult<MemoryInfo> memory() = 0;
    virtual ApiResult<> set_memory(const MemoryUpdate& update) = 0;

    // File copy into the guest: returns when the copy is done or failed (minutes for a large
    // file; quick calls are answered meanwhile). One at a time (Conflict otherwise).
    virtual ApiResult<CopyFileResult> copy_file(const CopyFileRequest& request) = 0;
    virtual CopyFileProgress copy_file_progress() = 0;
    // Checkpoints of every writable VHDX disk (docs/checkpoints.md): taking one waits for the
    // guest's freeze (seconds; at most freeze_timeout_s); merging the newest writes its
    // differencing images back into their parents while the disks' I/O waits. One
    // checkpoint operation at a time (Conflict otherwise). Conflict: no VSS in the guest
    // (for "application"), a raw disk, a name in use; BadRequest: a bad name.
    virtual ApiResult<CheckpointInfo> checkpoint(const CheckpointRequest& request) = 0;
    virtual std::vector<CheckpointInfo> checkpoints() = 0;
    virtual ApiResult<CheckpointInfo> merge_checkpoint() = 0;
    // The console: the guest's screen as a PNG (Conflict before its framebuffer driver is
    // connected), keys typed into it and pointer input (Conflict before the keyboard or
    // mouse driver is connected; BadRequest for an unknown key; Unavailable when the guest
    // does not read its input ring).
    virtual ApiResult<Screenshot> screenshot() = 0;
    virtual ApiResult<> send_keys(const SendKeysRequest& request) = 0;
    virtual ApiResult<> pointer(const PointerRequest& request) = 0;
};

}  // namespace enlighten::api
