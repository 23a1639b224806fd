// The factory of network adapters (vmm/devices.cpp lists it as kind "nic"):
//   params: `backend` slirp (default) | tap; `tap` (tap only: the device's name, made if it
//           does not exist and we may); `mac` (aa:bb:cc:dd:ee:ff, unicast; default
//           stable_mac(vm_key, id)); `vm_key` (what names the VM on the host; the command line
//           passes its first disk's path, else its kernel's); `queues` (vRSS queues offered,
//           1 to 64, default 64: the guest takes min(this, its vCPUs)).
//   children: kind "hostfwd", param `rule` (tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT), slirp only.
// The backend starts here (a slirp forward's port is bound now: errors before the VM starts).
//
// Threads: called on the main thread while the VM's device set is built.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "common/device_config.hpp"
#include "common/result.hpp"
#include "vmbus/device.hpp"

namespace enlighten::netvsp {

Result<std::shared_ptr<vmbus::Device>> make_nic(const DeviceConfig& cfg);

// "aa:bb:cc:dd:ee:ff" (or with '-'), unicast and not all zeros; nullopt otherwise.
std::optional<std::array<uint8_t, 6>> parse_mac(std::string_view text);
std::string format_mac(const std::array<uint8_t, 6>& mac);
// A MAC in Hyper-V's range (00:15:5d, Microsoft's OUI, as Hyper-V assigns them) from what
// names the VM and the NIC's id: the same VM gets the same MAC at every start.
std::array<uint8_t, 6> stable_mac(std::string_view vm_key, std::string_view nic_id);

}  // namespace enlighten::netvsp
