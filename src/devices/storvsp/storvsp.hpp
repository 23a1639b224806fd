// storvsp: the storage VSP that Linux's hv_storvsc drives. One Controller is one VMBus
// storage device: a SCSI controller with up to 64 disks (LUNs 0..63 of target 0, path 0;
// contract-storage §8 says why everything sits on path 0), or an IDE channel with one disk
// (its target from the instance GUID, §9).
//
//   guest ring ──► ChannelWorker (one thread per open channel: the primary and each
//                  sub-channel the guest asks for)
//                    peek a vstor packet ─► init handshake │ EXECUTE_SRB
//                                                          ├─ scsi::decode (devices/scsi)
//                                                          ├─ data in/out: GuestMemory::iovecs
//                                                          └─ disk::Queue (io_uring) ──► completion
//                  ◄── COMPLETE_IO into room reserved before the request was taken
//
// The guest's doorbell only wakes the channel's worker; requests go to the backend
// asynchronously, straight between guest RAM and the file, and complete on the same worker.
// A worker takes a request only when it has room for its answer and a free slot (at most
// `queue_depth` in flight per channel): otherwise the guest's ring fills, and the guest
// waits. A closing channel stops taking requests and finishes the ones in flight first.
//
// Threads: the vmbus::Device calls on the control loop; each channel's worker thread runs
// its ring and its disk queues; add_disk, remove_disk and the status calls from API threads.
// Locks: the controller's mutex (LUN table, protocol state) is taken by workers briefly per
// request and by the API; nothing else is locked under it except the queue's when sending
// the bus-change notice (controller -> queue -> SynIC).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backends/disk/disk.hpp"
#include "common/thread_annotations.hpp"
#include "devices/scsi/scsi.hpp"
#include "vmbus/device.hpp"

namespace enlighten::storvsp {

inline constexpr uint32_t kMaxLuns = 64;

enum class Bus { Scsi, Ide };

struct DiskConfig {
    std::string id;
    std::string path;
    std::string format = "auto";
    bool read_only = false;
    std::string serial;  // VPD page 0x80; default: the id
    bool writethrough = false;  // every write stable before it completes; the guest sees WCE = 0
    bool accept_changed_parent = false;  // disk::OpenOptions: only after a checkpoint merge failed halfway
};

// A disk's switch to another image (Controller::replace_image).
struct ImageSwitch {
    std::string from;  // the image the disk must be on now (else Errc::Busy: it changed meanwhile)
    std::string to;
    std::string format = "vhdx";
    bool accept_changed_parent = false;
};

// Counters of one disk (or one channel), read by the API.
struct IoCounters {
    uint64_t requests = 0;
    uint64_t reads = 0, writes = 0, flushes = 0, unmaps = 0;
    uint64_t bytes_read = 0, bytes_written = 0;
    uint64_t errors = 0;
    uint64_t latency_ns = 0;  // summed over completed backend requests
};

struct DiskStatus {
    std::string id;
    std::string path;
    std::string format;
    uint8_t lun = 0;
    bool read_only = false;
    bool direct = false;
    bool write_cache = true;  // WCE as the guest sees it
    uint64_t size_bytes = 0;
    uint32_t block_size = 512;
    IoCounters counters;
};

struct ChannelStatus {
    uint16_t index = 0;
    uint32_t target_vp = 0;
    uint64_t requests = 0;
    uint32_t in_flight = 0;
};

struct ControllerOptions {
    Bus bus = Bus::Scsi;
    std::string name = "scsi";
    vmbus::Guid instance;
    uint16_t max_subchannels = 0;            // SCSI only; IDE has none
    uint32_t max_transfer_bytes = 1u << 20;  // QUERY_PROPERTIES: the guest's max_hw_sectors_kb
    uint32_t queue_depth = 256;              // requests in flight per channel
};

class Controller final : public vmbus::Device, public std::enable_shared_from_this<Controller> {
public:
    // Opens every disk now (bad paths are errors here, before the VM starts).
    static Result<std::shared_ptr<Controller>> create(ControllerOptions options, const std::vector<DiskConfig>& disks);
    ~Controller() override;

    // Hot-add at the first free LUN (SCSI only); the guest rescans (ENUMERATE_BUS) once it
    // is up. Errc::Invalid for a bad id or image, Errc::Busy when every LUN is taken.
    Result<uint8_t> add_disk(const DiskConfig& disk);
    // Hot-remove: new requests to it get INVALID_LUN, the guest removes it; requests in
    // flight finish. Errc::NotFound for an unknown id.
    Result<> remove_disk(std::string_view id);
    [[nodiscard]] std::vector<DiskStatus> disks() const;
    [[nodiscard]] std::vector<ChannelStatus> channels() const;
    [[nodiscard]] Bus bus() const { return options_.bus; }
    [[nodiscard]] bool has_disk(std::string_view id) const;
    // The image behind disk `id` (null if there is none).
    [[nodiscard]] std::shared_ptr<disk::Disk> disk(std::string_view id) const;

    // Checkpoints switch a disk's image under the running guest:
    //   pause()          stops every channel from taking requests (they wait in the guest's
    //                    rings) and waits until none is in flight: Errc::Timeout (and not
    //                    paused) if they do not finish in time, Errc::Busy if paused already;
    //   replace_image()  while paused: disk `id`, on image `s.from`, now reads and writes the
    //                    image `s.to` (the caller made it, e.g. a differencing VHDX over the
    //                    old one; `to` may equal `from`: a fresh open). It keeps its LUN,
    //                    identity and counters; it must have the same size and sector size.
    //                    Errors: NotFound, Busy (not on `from`), Invalid (a different
    //                    geometry), or the open's error; the old image stays then;
    //   resume()         the channels take requests again.
    // Called from an API thread (pause() blocks, at most `timeout`), one caller at a time.
    Result<> pause(std::chrono::milliseconds timeout);
    Result<> replace_image(std::string_view id, const ImageSwitch& s);
    void resume();

    // vmbus::Device
    [[nodiscard]] const vmbus::OfferParams& offer() const override { return offer_; }
    [[nodiscard]] uint16_t max_subchannels() const override { return options_.max_subchannels; }
    void attach(const vmbus::DeviceResources& resources) override;
    void open(const vmbus::OpenRequest& request, std::shared_ptr<vmbus::ChannelQueue> queue,
              vmbus::OpenDone done) override;
    void close(uint16_t index, vmbus::CloseDone done) override;
    void retarget(uint16_t index, uint32_t vp) override;
    void reset() override;
    void detach() override;

    struct Lun;
    class Worker;

private:
    friend class Worker;
    explicit Controller(ControllerOptions options);
    static Result<std::shared_ptr<Lun>> open_lun(const DiskConfig& cfg, uint8_t number, const ControllerOptions& o);
    // The LUN table as of now (workers take it per request).
    std::shared_ptr<const std::array<std::shared_ptr<Lun>, kMaxLuns>> luns() const;
    // Tells the guest the bus changed, if it can be told now; else when it can.
    void worker_finished(uint16_t index);
    // The IDE disk's target id: Data2 of the instance GUID (contract §9).
    [[nodiscard]] uint8_t ide_target() const;

    const ControllerOptions options_;
    vmbus::OfferParams offer_;
    vmbus::DeviceResources resources_;  // attach() .. detach(), control loop only

    mutable Mutex mu_;
    std::shared_ptr<const std::array<std::shared_ptr<Lun>, kMaxLuns>> luns_ ENL_GUARDED_BY(mu_);
    // The guest's initialization on the primary channel (§4) and what it negotiated.
    enum class Init { None, Begun, Ready };
    Init init_ ENL_GUARDED_BY(mu_) = Init::None;
    uint16_t version_ ENL_GUARDED_BY(mu_) = 0;
    bool srb_seen_ ENL_GUARDED_BY(mu_) = false;        // ENUMERATE_BUS is safe only after the first SRB (§8)
    bool bus_change_pending_ ENL_GUARDED_BY(mu_) = false;
    std::atomic<bool> paused_{false};  // read by the workers before they take a request
    std::vector<std::shared_ptr<Worker>> workers_ ENL_GUARDED_BY(mu_);  // by channel index
};

// The name of a controller's instance GUID for IDE disk `n` (0..3): {channel, device, 0x8899, 0}.
[[nodiscard]] vmbus::Guid ide_instance(unsigned n);

}  // namespace enlighten::storvsp
