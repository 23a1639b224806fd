// One device of the VM as the configuration names it; the factory of its kind builds it
// (vmm/devices.hpp). Plain data, below every layer that makes devices.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace enlighten {

struct DeviceConfig {
    std::string kind;  // "heartbeat", "shutdown", "timesync", "kvp", ...
    std::string id;    // unique in the VM; empty: the kind
    std::map<std::string, std::string, std::less<>> params;
    std::vector<DeviceConfig> children;  // e.g. a storage controller's disks
};

}  // namespace enlighten
