// The factories of the synthetic keyboard and mouse (vmm/devices.cpp lists them as kinds
// "keyboard" and "mouse"). Param: instance, the VMBus instance GUID (default: OpenVMM's,
// protocol.hpp).
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::input {

Result<std::shared_ptr<vmbus::Device>> make_keyboard(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_mouse(const DeviceConfig& cfg);

}  // namespace enlighten::input
