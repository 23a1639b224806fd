// Factories of the integration services (vmm/devices.cpp lists them by kind). Each service
// takes an optional `instance` (its VMBus instance GUID; the guest names the device after
// it) and the heartbeat an `interval_ms`.
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>
#include <string>
#include <string_view>
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
Result<std::shared_ptr<vmbus::Device>> make_vss(const DeviceConfig& cfg);

// The integration services every Hyper-V VM has, by device id (= kind), in offer order.
inline constexpr const char* kIntegrationServices[] = {"heartbeat", "shutdown", "timesync", "kvp", "fcopy", "vss"};

// A service's VMBus instance GUID, derived from the VM's id (--vm-id): the same VM names its
// devices the same at every boot, and two VMs never share them.
std::string service_instance(const vmbus::Guid& vm_id, std::string_view service);

// The integration services every Hyper-V VM has, with instance GUIDs derived from `vm_id`.
std::vector<DeviceConfig> default_integration_services(const vmbus::Guid& vm_id);

}  // namespace enlighten::ic
