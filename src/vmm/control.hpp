// The management API's view of the VM (api::VmControl), across guest reboots: it follows
// the Machine that run_vm() currently runs, and owns the graceful-shutdown sequence
// (shutdown IC -> ACPI power button -> hard stop).
#pragma once

#include <memory>
#include <mutex>

#include "api/vm_control.hpp"
#include "common/task_loop.hpp"
#include "vmm/config.hpp"

namespace enlighten {

class Machine;

class MachineControl final : public api::VmControl {
public:
    explicit MachineControl(const VmConfig& cfg) : cfg_(cfg) {}
    ~MachineControl() override;

    // run_vm() tells us which machine runs (null between machines and at the end).
    void attach(std::shared_ptr<Machine> machine);
    void detach();

    api::VmInfo info() override;
    api::ApiResult<> shutdown(const api::ShutdownRequest& request) override;
    api::ApiResult<> power_off() override;
    api::ApiResult<> reset() override;
    api::HeartbeatInfo heartbeat() override;
    api::ApiResult<> time_sync() override;
    api::ApiResult<std::vector<api::KvpEntry>> kvp_list(api::KvpPool pool) override;
    api::ApiResult<std::string> kvp_get(api::KvpPool pool, const std::string& key) override;
    api::ApiResult<> kvp_set(api::KvpPool pool, const std::string& key, const std::string& value) override;
    api::ApiResult<> kvp_delete(api::KvpPool pool, const std::string& key) override;

private:
    std::shared_ptr<Machine> current(uint64_t* generation = nullptr);
    api::ApiResult<std::shared_ptr<Machine>> running();
    void shutdown_stage(uint64_t generation, int stage, api::ShutdownRequest request);

    const VmConfig& cfg_;
    std::mutex mu_;
    std::shared_ptr<Machine> machine_;
    uint64_t generation_ = 0;
    bool shutting_down_ = false;
    TaskLoop sequencer_;  // last member: stopped first
};

}  // namespace enlighten
