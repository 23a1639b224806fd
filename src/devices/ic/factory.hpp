// Factories of the integration services (vmm/devices.cpp lists them by kind). Each service
// takes an optional `instance` (its VMBus instance GUID; the guest names the device after
// it) and the heartbeat an `interval_ms`.
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>
#include <vector>

#include "common/result.hpp"
#include "vmbus/device.hpp"
#include "common/device_config.hpp"

namespace enlighten::ic {

Result<std::shared_ptr<vmbus::Device>> make_heartbeat(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_shutdown(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_timesync(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_kvp(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_fcopy(const DeviceConfig& cfg);

// The integration services every Hyper-V VM has, with the instance ids Enlighten has
// always used (fixed, so a guest sees the same devices at every boot).
std::vector<DeviceConfig> default_integration_services();

}  // namespace enlighten::ic
