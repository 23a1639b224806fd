// The VMBus server: the host end of the channel-management protocol that the guest's
// hv_vmbus speaks over SynIC messages (linux-hv-guest-contract §6): version negotiation,
// offers, GPADLs, open/close, sub-channels, rescind, unload, and the doorbells of channels.
//
// All protocol state lives here and is driven by guest messages (handle_message, on the vCPU
// that posted them), device completions and host calls; replies go out through a
// MessageSink (in the VMM: the SynIC). The server never calls a device under its lock: each
// device call (attach, open, close, retarget, reset, detach) is posted to the control
// executor (the VM's event loop) and runs there; the device answers through a completion
// that re-enters the state machine. So a channel is Opening until its device's open
// completes (OPENCHANNEL_RESULT goes out then), and Closing until its close completes (a
// GPADL teardown of its ring, a reopen, an UNLOAD reply wait for that). It is unit-tested
// without a VM (tests/unit/support/sim_guest.hpp is a simulated hv_vmbus).
//
// hv_sock (devices/hvsock): a guest connect() to the host arrives as TL_CONNECT_REQUEST; the
// server checks its size and hands it to the TlConnectHandler on the control executor (at
// most kMaxPendingTlConnects waiting there; more are dropped, and the guest's connect()
// times out). Accepting is offering a device, as for any other; hv_sock devices set
// OfferParams::withdraw_on_reset. A rescinded channel's GPADLs, which the guest never tears
// down (vmbus_teardown_gpadl skips them), are dropped at its RELID_RELEASED.
//
// Threads: handle_message and handle_event run on vCPU threads; add_device, rescind and
// shutdown on the control loop; completions and ChannelControl calls on any thread. The
// server's mutex comes after device locks and before the queues', the GPADL map's and the
// SynIC's locks (device -> server -> queue -> GPADL map -> SynIC VP). The doorbell path
// (handle_event) takes only a leaf lock of its own and writes an eventfd.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/executor.hpp"
#include "common/fd.hpp"
#include "common/thread_annotations.hpp"
#include "hv/tlfs.hpp"
#include "kvm/guest_memory.hpp"
#include "vmbus/device.hpp"
#include "vmbus/gpadl.hpp"
#include "vmbus/message_sink.hpp"
#include "vmbus/protocol.hpp"
#include "vmbus/queue.hpp"

namespace enlighten::vmbus {

// Versions we accept, newest first (all that Linux 6.1 offers).
inline constexpr uint32_t kSupportedVersions[] = {kVersionWin10V5_3, kVersionWin10V5_2, kVersionWin10V5_1,
                                                  kVersionWin10V5,   kVersionWin10V4_1, kVersionWin10,
                                                  kVersionWin8_1,    kVersionWin8};

[[nodiscard]] constexpr bool version_supported(uint32_t v) {
    for (uint32_t s : kSupportedVersions)
        if (s == v) return true;
    return false;
}

[[nodiscard]] std::string version_string(uint32_t v);

// Limits on what a guest can make us hold.
inline constexpr uint32_t kMaxRelid = 2047;             // MAX_CHANNEL_RELIDS - 1
inline constexpr uint64_t kMaxGpadlPages = 1ULL << 16;  // 256 MiB in one GPADL
inline constexpr size_t kMaxGpadls = 8192;
inline constexpr uint32_t kChannelConnectionBase = 0x10000;  // connection id = base + relid
inline constexpr uint32_t kStatusFailure = 0xc0000001;       // STATUS_UNSUCCESSFUL in replies
// TL_CONNECT_REQUESTs handed to the handler and not yet run (OpenVMM bounds them at 16).
inline constexpr uint32_t kMaxPendingTlConnects = 16;

enum class ChannelState { Offered, Opening, Open, Closing, Closed, Failed, Rescinded, Released };
const char* to_string(ChannelState s);

struct ServerStats {
    uint64_t messages = 0;
    uint64_t bad_messages = 0;
    uint64_t connects = 0;
    uint64_t unloads = 0;
    uint64_t gpadls_created = 0;
    uint64_t gpadls_torn_down = 0;
    uint64_t opens = 0;
    uint64_t closes = 0;
    uint64_t doorbells = 0;
    uint64_t tl_connects = 0;          // TL_CONNECT_REQUESTs handed to the handler
    uint64_t tl_connects_dropped = 0;  // ... dropped: no handler, or too many waiting
};

struct ChannelSnapshot {
    uint32_t relid = 0;
    uint16_t index = 0;  // sub-channel index (0: primary)
    std::string name;
    Guid class_id;
    Guid instance_id;
    ChannelState state = ChannelState::Offered;
    uint32_t target_vp = 0;
    // While the host uses the channel's rings: their headers now, and whether the host waits
    // for the guest to make room in the ring to it.
    std::optional<ChannelQueue::RingStates> rings;
    bool waiting_for_room = false;
};

// Told about every channel's doorbell eventfd while the channel exists (the VMM registers
// it with KVM as an ioeventfd, so that a guest doorbell needs no exit to user space).
class DoorbellHooks {
public:
    virtual ~DoorbellHooks() = default;
    virtual void added(uint32_t connection_id, int fd) = 0;
    virtual void removed(uint32_t connection_id, int fd) = 0;
};

class Server {
public:
    // `loop` and `reference_time` are handed to the devices (DeviceResources).
    Server(MessageSink& sink, const GuestMemory& memory, uint32_t num_vps, Executor& control, EventLoop* loop = nullptr,
           std::function<uint64_t()> reference_time = {});
    // Shuts every queue down and forgets the devices without calling them: call shutdown()
    // and wait for it first for an orderly stop.
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Before any device is added.
    void set_doorbell_hooks(DoorbellHooks* hooks);
    // Before any device is added: what devices may change of guest RAM (handed to them as
    // DeviceResources::ram; the balloon needs it). Must outlive the server's devices' attach.
    void set_ram_control(RamControl* ram);

    // hv_sock: runs on the control executor for each guest TL_CONNECT_REQUEST (endpoint =
    // the guest socket's service id, service = the host service it connects to; neither is
    // checked here). Set before the vCPUs start; never changed afterwards.
    using TlConnectHandler = std::function<void(const Guid& endpoint, const Guid& service)>;
    void set_tl_connect_handler(TlConnectHandler handler);
    // True while a channel with this instance GUID exists: offered, open, or rescinded and
    // not yet released by the guest (hv_sock must not reuse an instance before that).
    [[nodiscard]] bool instance_in_use(const Guid& instance) const;

    // Adds a device: attaches it (on the control executor) and offers its primary channel,
    // at once if the guest already asked for offers, else when it does. Returns the relid.
    Result<uint32_t> add_device(std::shared_ptr<Device> device);
    // Withdraws a device with its sub-channels (RESCIND_CHANNELOFFER, after closing what is
    // open); relids are reused after the guest's RELID_RELEASED.
    Result<> rescind(uint32_t relid);
    // Closes every channel and drops every GPADL, as a guest UNLOAD would but without a
    // reply, then resets and detaches every device; `done` runs on the control executor.
    void shutdown(Task done);

    // A message the guest posted with HvPostMessage. Returns the hypercall status: Success
    // for anything delivered to the right connection (protocol errors are handled here, not
    // reported through the hypercall), InvalidConnectionId otherwise.
    hv::Status handle_message(uint32_t vp, uint32_t connection_id, std::span<const uint8_t> payload);
    // HvSignalEvent from the guest: a channel's doorbell (wakes its queue's notify fd).
    hv::Status handle_event(uint32_t vp, uint32_t connection_id, uint16_t flag);

    [[nodiscard]] bool connected() const;
    [[nodiscard]] uint32_t version() const;  // 0 until connected
    [[nodiscard]] ServerStats stats() const;
    [[nodiscard]] std::vector<ChannelSnapshot> channels() const;
    [[nodiscard]] size_t gpadl_count() const;
    [[nodiscard]] const GpadlMap& gpadls() const { return *gpadls_; }

private:
    struct DeviceSlot;
    struct Channel;
    enum class CloseReason { Guest, Failure, Rescind, PrimaryClosed, Reset };
    struct PendingGpadl {
        uint32_t relid = 0;
        uint32_t byte_count = 0;
        uint32_t byte_offset = 0;
        uint64_t expected_pages = 0;
        std::vector<uint64_t> pfns;
    };
    // What a reset (UNLOAD, a new INITIATE_CONTACT while connected, shutdown) finishes with.
    struct ResetWork {
        bool reply_unload = false;
        uint32_t reply_vp = 0;
        std::optional<InitiateContact> contact;
        std::vector<Task> done;
        bool gpadls_released = false;
    };

    // --- guest messages (mu_ held) ---
    void on_initiate_contact(uint32_t vp, const InitiateContact& msg) ENL_REQUIRES(mu_);
    void on_request_offers() ENL_REQUIRES(mu_);
    void on_unload(uint32_t vp) ENL_REQUIRES(mu_);
    void on_gpadl_header(std::span<const uint8_t> payload) ENL_REQUIRES(mu_);
    void on_gpadl_body(std::span<const uint8_t> payload) ENL_REQUIRES(mu_);
    void on_gpadl_teardown(const GpadlTeardown& msg) ENL_REQUIRES(mu_);
    void on_open_channel(const OpenChannel& msg) ENL_REQUIRES(mu_);
    void on_close_channel(uint32_t relid) ENL_REQUIRES(mu_);
    void on_relid_released(uint32_t relid) ENL_REQUIRES(mu_);
    void on_modify_channel(const ModifyChannel& msg) ENL_REQUIRES(mu_);

    // --- the state machine ---
    void finish_gpadl(uint32_t handle, PendingGpadl g) ENL_REQUIRES(mu_);
    void send_offer(Channel& ch) ENL_REQUIRES(mu_);
    void start_close(Channel& ch, CloseReason why) ENL_REQUIRES(mu_);
    void close_subchannels(DeviceSlot& slot) ENL_REQUIRES(mu_);
    void withdraw(Channel& ch) ENL_REQUIRES(mu_);
    void erase_if_done(uint32_t relid) ENL_REQUIRES(mu_);
    void drop_channel_gpadls(uint32_t relid) ENL_REQUIRES(mu_);
    void on_tl_connect(const TlConnectRequest& msg) ENL_REQUIRES(mu_);
    void begin_reset(ResetWork work) ENL_REQUIRES(mu_);
    void check_reset_done() ENL_REQUIRES(mu_);
    Result<uint32_t> new_channel(const std::shared_ptr<DeviceSlot>& slot, uint16_t index) ENL_REQUIRES(mu_);

    // --- completions (on the control executor) and ChannelControl (any thread) ---
    void open_done(uint32_t relid, uint64_t epoch, Result<> result) ENL_EXCLUDES(mu_);
    void close_done(uint32_t relid, uint64_t epoch) ENL_EXCLUDES(mu_);
    void channel_failed(uint32_t relid, uint64_t epoch) ENL_EXCLUDES(mu_);
    void gpadl_released(uint32_t handle, uint64_t pages, uint64_t connection) ENL_EXCLUDES(mu_);
    void all_gpadls_released(uint64_t connection) ENL_EXCLUDES(mu_);
    Result<uint16_t> enable_subchannels(DeviceSlot& slot, uint16_t count) ENL_EXCLUDES(mu_);
    Result<GpadlView> device_gpadl(const DeviceSlot& slot, uint32_t handle) ENL_EXCLUDES(mu_);

    // Runs `fn` on the control executor if the server still exists then. A Poster is the
    // same as a value, for callbacks that may run on other threads, later.
    struct Poster {
        Executor* exec;
        std::weak_ptr<int> alive;
        Server* self;
        void operator()(std::move_only_function<void(Server&)> fn) const;
    };
    Poster poster();
    void post(std::move_only_function<void(Server&)> fn);
    Channel* find(uint32_t relid) ENL_REQUIRES(mu_);
    template <typename T>
    void send(const T& msg) ENL_REQUIRES(mu_);
    void send_to(uint32_t vp, std::span<const uint8_t> bytes) ENL_REQUIRES(mu_);
    void set_doorbell(uint32_t relid, std::shared_ptr<UniqueFd> fd);

    MessageSink& sink_;
    const GuestMemory& memory_;
    const uint32_t num_vps_;
    const uint64_t max_gpadl_pages_total_;
    Executor& control_;
    EventLoop* const loop_;
    const std::function<uint64_t()> reference_time_;
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // posted work checks it
    const std::shared_ptr<GpadlMap> gpadls_ = std::make_shared<GpadlMap>();

    mutable Mutex mu_;
    uint32_t version_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t target_vp_ ENL_GUARDED_BY(mu_) = 0;
    uint32_t msg_sint_ ENL_GUARDED_BY(mu_) = kMessageSint;
    bool offers_requested_ ENL_GUARDED_BY(mu_) = false;
    uint64_t connection_ ENL_GUARDED_BY(mu_) = 1;  // bumped at every reset: stale completions are dropped
    std::optional<ResetWork> resetting_ ENL_GUARDED_BY(mu_);
    std::vector<std::shared_ptr<DeviceSlot>> devices_ ENL_GUARDED_BY(mu_);
    std::map<uint32_t, std::unique_ptr<Channel>> channels_ ENL_GUARDED_BY(mu_);  // by relid
    std::map<uint32_t, PendingGpadl> assembling_ ENL_GUARDED_BY(mu_);          // GPADLs awaiting bodies
    uint64_t gpadl_pages_total_ ENL_GUARDED_BY(mu_) = 0;
    ServerStats stats_ ENL_GUARDED_BY(mu_);
    DoorbellHooks* hooks_ = nullptr;
    RamControl* ram_ = nullptr;
    TlConnectHandler tl_handler_;                  // set before the guest runs
    std::atomic<uint32_t> tl_pending_{0};          // posted to tl_handler_, not yet run

    // Doorbells by relid, for handle_event without the server lock.
    mutable Mutex doorbell_mu_;
    std::vector<std::shared_ptr<UniqueFd>> doorbells_ ENL_GUARDED_BY(doorbell_mu_);
    std::atomic<uint64_t> doorbell_count_{0};
};

}  // namespace enlighten::vmbus
