// The integration services served to the guest's hv_utils: heartbeat, shutdown, time sync
// and key-value pair exchange (KVP). Class GUIDs from Linux include/linux/hyperv.h.
//
// Threads: as IcDevice (ic_device.hpp): hooks, timers and asynchronous transactions on the
// control loop; the waiting calls (request, sync, set, remove, get, list) from any thread
// but the loop's; status() and host_entries() anywhere. Each service's own mutex is a leaf.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "devices/ic/ic_device.hpp"

namespace enlighten::ic {

inline constexpr const char* kHeartbeatClass = "57164f39-9115-4e78-ab55-382f3bd5422d";
inline constexpr const char* kShutdownClass = "0e0b6031-5213-4934-818b-38d90ced39db";
inline constexpr const char* kTimeSyncClass = "9527e630-d0ae-497b-adce-e80ab0175caf";
inline constexpr const char* kKvpClass = "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6";

// Service versions we offer, newest first (what Linux 6.1's hv_utils accepts).
inline constexpr uint32_t kHeartbeatVersions[] = {0x30000, 0x10000};
inline constexpr uint32_t kShutdownVersions[] = {0x30002, 0x30001, 0x30000, 0x10000};
inline constexpr uint32_t kTimeSyncVersions[] = {0x40000, 0x30000, 0x10000};
inline constexpr uint32_t kKvpVersions[] = {0x40000, 0x30000};

// Services are created with std::make_shared: their timers and callbacks hold weak
// references. They live as long as the VM (across guest reboots); each boot's bus attaches
// them again.

// Offer parameters shared by the ICs: class id, our instance id, and the guest driver's
// buffer (4 KiB for most, 16 KiB for KVP).
vmbus::OfferParams ic_offer(std::string name, const char* class_id, const char* instance_id, uint32_t max_packet);

class HeartbeatService final : public IcDevice {
public:
    using Clock = std::chrono::steady_clock;
    enum class Health { Unknown, Healthy, Lost };
    struct Status {
        Health health = Health::Unknown;
        uint64_t sequence = 0;
        std::optional<std::chrono::milliseconds> since_reply;
    };
    HeartbeatService(const char* instance_id, std::chrono::milliseconds interval);
    // Healthy while replies keep coming; lost after three missed beats; unknown until the
    // guest's service first connects in this boot. By the loop's clock.
    [[nodiscard]] Status status() const;
    // A new boot (a new bus): no contact until the guest's service connects again. (A guest
    // UNLOAD, as on a panic, keeps the last contact: the heartbeat is then lost.)
    void attach(const vmbus::DeviceResources& resources) override;
    // Connected but no longer answering the beats: Lost Communication, as on Hyper-V.
    [[nodiscard]] IcContact contact() const override;

private:
    void on_ready() override;
    void on_disconnected() override;
    void tick(uint64_t generation);
    [[nodiscard]] Clock::time_point now() const;

    const std::chrono::milliseconds interval_;
    mutable Mutex mu_;
    uint64_t generation_ ENL_GUARDED_BY(mu_) = 0;  // a tick chain per open channel
    uint64_t sequence_ ENL_GUARDED_BY(mu_) = 0;
    std::optional<Clock::time_point> last_reply_ ENL_GUARDED_BY(mu_);
    bool ever_ready_ ENL_GUARDED_BY(mu_) = false;
    bool beat_in_flight_ = false;  // loop thread only
};

class ShutdownService final : public IcDevice {
public:
    explicit ShutdownService(const char* instance_id);
    // Asks the guest to shut down (or reboot); Ok once the guest accepted. The waiting form
    // is for threads other than the loop's; `done` runs on the loop.
    Result<> request(bool reboot, std::chrono::milliseconds timeout);
    void request(bool reboot, std::chrono::milliseconds timeout, std::move_only_function<void(Result<>)> done);

private:
    static std::vector<uint8_t> body(bool reboot);
    static Result<> accepted(bool reboot, Result<IcResponse> reply);
};

class TimeSyncService final : public IcDevice {
public:
    explicit TimeSyncService(const char* instance_id);
    // Keeps the partition's reference time (TIME_REF_COUNT) of this boot.
    void attach(const vmbus::DeviceResources& resources) override;
    // Sends the host's UTC time with the SYNC flag: the guest sets its clock.
    Result<> sync(std::chrono::milliseconds timeout);
    // Host UTC in 100 ns units since 1601 (the Windows epoch the protocol uses).
    static uint64_t host_time_100ns();
    [[nodiscard]] std::vector<uint8_t> sample_body(uint8_t flags) const;

private:
    void on_ready() override;
    mutable Mutex mu_;
    std::function<uint64_t()> reference_time_ ENL_GUARDED_BY(mu_);
};

class KvpService final : public IcDevice {
public:
    struct Entry {
        std::string key;
        std::string value;
    };
    explicit KvpService(const char* instance_id);

    // Host-owned pools (External, AutoExternal) are kept here too and pushed to the guest
    // whenever its KVP service (re)connects, as Hyper-V does.
    Result<> set(uint8_t pool, const std::string& key, const std::string& value, std::chrono::milliseconds timeout);
    Result<> remove(uint8_t pool, const std::string& key, std::chrono::milliseconds timeout);
    // nullopt: the guest has no such key.
    Result<std::optional<std::string>> get(uint8_t pool, const std::string& key, std::chrono::milliseconds timeout);
    Result<std::vector<Entry>> list(uint8_t pool, std::chrono::milliseconds timeout);

    // Wire encoding helpers (exposed for tests and fuzzing).
    static Result<std::vector<uint8_t>> encode_utf16(const std::string& utf8, size_t max_bytes);
    static Result<std::string> decode_utf16(std::span<const uint8_t> bytes);
    static constexpr size_t kMaxEnumerate = 1024;
    // The host keeps at most this many keys per pool (it pushes them all again at every
    // reconnect): a new key beyond it is refused (Busy), a held key can still change or go.
    static constexpr size_t kMaxHostKeysPerPool = 1024;

    // The host-owned entries, as the host holds them (kept across guest reboots).
    [[nodiscard]] std::vector<std::tuple<uint8_t, std::string, std::string>> host_entries() const;

private:
    void on_ready() override;
    void restore(std::vector<std::tuple<uint8_t, std::string, std::string>> entries, size_t next);
    mutable Mutex pools_mu_;
    std::map<std::pair<uint8_t, std::string>, std::string> host_pools_ ENL_GUARDED_BY(pools_mu_);
};

}  // namespace enlighten::ic
