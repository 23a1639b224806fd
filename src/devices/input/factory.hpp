// The factories of the synthetic keyboard and mouse (vmm/devices.cpp lists them as kinds
// "keyboard" and "mouse"). Param: instance, the VMBus instance GUID (default: OpenVMM's,
// protocol.hpp).
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>
#include <string>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::input {

Result<std::shared_ptr<vmbus::Device>> make_keyboard(const DeviceConfig& cfg);
// The offer of the keyboard or the mouse (both have small, bounded guest messages).
vmbus::OfferParams input_offer(const char* name, const char* class_id, const std::string& instance_id);
Result<std::shared_ptr<vmbus::Device>> make_mouse(const DeviceConfig& cfg);

}  // namespace enlighten::input
