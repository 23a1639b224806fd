// Factories of the storage controllers (vmm/devices.cpp lists them by kind):
//   "scsi": a SCSI controller; params `instance` (GUID; default from the id), `subchannels`
//           (at most this many sub-channels, default 64: the guest asks for vCPUs - 1),
//           `queue_depth` (requests in flight per channel, default 256); its children are
//           disks (kind "disk").
//   "ide":  one IDE disk; param `slot` 0..3 (channel 0/1, master/slave); one child disk.
// A disk: params `path` (required), `format` (auto|raw), `readonly` (on|off), `serial`;
// its id is its DeviceConfig id.
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <memory>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "devices/storvsp/storvsp.hpp"
#include "vmbus/device.hpp"

namespace enlighten::storvsp {

Result<std::shared_ptr<vmbus::Device>> make_scsi(const DeviceConfig& cfg);
Result<std::shared_ptr<vmbus::Device>> make_ide(const DeviceConfig& cfg);
// A disk's configuration from a DeviceConfig of kind "disk" (also for hot-add).
Result<DiskConfig> disk_config(const DeviceConfig& cfg);

}  // namespace enlighten::storvsp
