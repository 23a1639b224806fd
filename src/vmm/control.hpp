// The management API's view of the VM (api::VmControl), across guest reboots: it follows
// the Machine that the VM currently runs, finds the integration services in the VM's device
// set, and owns the graceful-shutdown sequence (shutdown IC -> ACPI power button -> hard
// stop), which runs on the VM's loop.
//
// Threads: the VmControl calls come from API worker threads and may wait for the guest
// (through the integration services' waiting transactions, never on the loop thread);
// attach/detach come from the loop thread. The control's mutex is a leaf.
#pragma once

#include <memory>
#include <mutex>

#include "api/vm_control.hpp"
#include "common/thread_annotations.hpp"
#include "vmm/checkpoints.hpp"
#include "vmm/config.hpp"

namespace enlighten {

class Machine;
class DeviceSet;
struct DeviceEntry;
namespace ic {
class IcDevice;
}
class EventLoop;

class MachineControl final : public api::VmControl {
public:
    MachineControl(const VmConfig& cfg, const DeviceSet& devices, EventLoop& loop)
        : cfg_(cfg), devices_(devices), loop_(loop), checkpoints_(devices) {}
    ~MachineControl() override;

    // The VM tells us which machine runs (null between machines and at the end).
    void attach(std::shared_ptr<Machine> machine);
    void detach();

    api::VmInfo info() override;
    api::ApiResult<> shutdown(const api::ShutdownRequest& request) override;
    api::ApiResult<> power_off() override;
    api::ApiResult<> reset() override;
    api::HeartbeatInfo heartbeat() override;
    api::ApiResult<> time_sync() override;
    std::vector<api::IntegrationServiceInfo> integration_services() override;
    api::ApiResult<api::IntegrationServiceInfo> set_integration_service(const std::string& name, bool enabled) override;
    api::ApiResult<std::vector<api::KvpEntry>> kvp_list(api::KvpPool pool) override;
    api::ApiResult<std::string> kvp_get(api::KvpPool pool, const std::string& key) override;
    api::ApiResult<> kvp_set(api::KvpPool pool, const std::string& key, const std::string& value) override;
    api::ApiResult<> kvp_delete(api::KvpPool pool, const std::string& key) override;
    api::ApiResult<api::DiskInfo> add_disk(const api::AddDiskRequest& request) override;
    api::ApiResult<> remove_disk(const std::string& id) override;
    api::ApiResult<> set_net_link(const std::string& id, bool up) override;
    api::ApiResult<api::MemoryInfo> memory() override;
    api::ApiResult<> set_memory(const api::MemoryUpdate& update) override;
    api::ApiResult<api::CopyFileResult> copy_file(const api::CopyFileRequest& request) override;
    api::CopyFileProgress copy_file_progress() override;
    api::ApiResult<api::Screenshot> screenshot() override;
    api::ApiResult<> send_keys(const api::SendKeysRequest& request) override;
    api::ApiResult<> pointer(const api::PointerRequest& request) override;
    api::ApiResult<api::CheckpointInfo> checkpoint(const api::CheckpointRequest& request) override {
        return checkpoints_.take(request);
    }
    std::vector<api::CheckpointInfo> checkpoints() override { return checkpoints_.list(); }
    api::ApiResult<api::CheckpointInfo> merge_checkpoint() override { return checkpoints_.merge(); }

private:
    std::shared_ptr<Machine> current(uint64_t* generation = nullptr);
    api::ApiResult<std::shared_ptr<Machine>> running();
    void shutdown_stage(uint64_t generation, int stage, api::ShutdownRequest request);
    api::IntegrationServiceInfo service_info(const DeviceEntry& e, const ic::IcDevice& s);

    const VmConfig& cfg_;
    const DeviceSet& devices_;
    EventLoop& loop_;
    Checkpoints checkpoints_;
    // Held while an integration service is switched (it waits for the VM's loop); taken
    // before mu_, never on the loop thread.
    std::mutex switch_mu_;
    Mutex mu_;
    std::shared_ptr<Machine> machine_ ENL_GUARDED_BY(mu_);
    uint64_t generation_ ENL_GUARDED_BY(mu_) = 0;
    bool shutting_down_ ENL_GUARDED_BY(mu_) = false;
};

}  // namespace enlighten
