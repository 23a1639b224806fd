// The factory of the Dynamic Memory VSP (vmm/devices.cpp lists it as kind "balloon").
// Params (all sizes in bytes, as decimal numbers; the CLI's --memory fills them):
//   instance  VMBus instance GUID (default: a fixed one, so the guest sees the same device)
//   startup   the startup memory (required)
//   min, max  the policy's bounds (default: min(startup, 128 MiB) and startup)
//   dynamic   on|off (default off)
//   buffer    percent (default 20), weight 0..10000 (default 5000)
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::balloon {

inline constexpr const char* kDefaultInstance = "b5a0a5c7-1a2f-4d8e-9f61-0e5a1d2c3b10";

Result<std::shared_ptr<vmbus::Device>> make_balloon(const DeviceConfig& cfg);

}  // namespace enlighten::balloon
