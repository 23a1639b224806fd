// The factory of the synthetic video VSP (vmm/devices.cpp lists it as kind "video").
// Params:
//   instance  VMBus instance GUID (default: OpenVMM's, kDefaultInstance)
//   width, height  the mode offered as the guest's default and largest (default 1024x768;
//                  640x480 to 7680x4320; above 4 MiB of pixels the guest's framebuffer is in
//                  the VMBus MMIO pool)
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::video {

inline constexpr const char* kDefaultInstance = "5620e0c7-8062-4dce-aeb7-520c7ef76171";
inline constexpr uint32_t kMaxWidth = 7680, kMaxHeight = 4320;

Result<std::shared_ptr<vmbus::Device>> make_video(const DeviceConfig& cfg);

}  // namespace enlighten::video
