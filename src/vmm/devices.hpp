// The VM's devices: built once from the configuration's device list, by one factory per
// device class, into a set that the machine attaches to its VMBus at every boot and that the
// management API addresses by id. Devices live as long as the VM, so their host-side state
// (the host's KVP pool, later open disk images, a tap, the balloon policy) survives guest
// reboots, as on Hyper-V.
//
// Threads: built on the main thread before the first boot; afterwards read-only (but for each
// entry's atomic `offered`), so lookups may be made from any thread. The devices themselves
// say what their calls may do.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "vmbus/device.hpp"
#include "vmm/config.hpp"

namespace enlighten {

struct DeviceEntry {
    std::string id;    // unique in the VM, e.g. "kvp"
    std::string kind;  // the device class, e.g. "kvp"
    std::shared_ptr<vmbus::Device> device;
    // Whether the device is on the VMBus: offered at every boot, and now. Integration services
    // may be switched off and on (--integration-services, PUT vm.integration-services/{name});
    // written by the API's control under its lock, read by each boot's machine.
    std::shared_ptr<std::atomic<bool>> offered = std::make_shared<std::atomic<bool>>(true);
};

// A factory makes the device of one configuration entry (or says why it cannot).
using DeviceFactory = Result<std::shared_ptr<vmbus::Device>> (*)(const DeviceConfig& cfg);

class DeviceSet {
public:
    // Builds every device of the list; the first error names the entry.
    static Result<DeviceSet> build(const std::vector<DeviceConfig>& list);

    [[nodiscard]] const std::vector<DeviceEntry>& entries() const { return entries_; }
    [[nodiscard]] const DeviceEntry* find(std::string_view id) const;
    // The first device of type T (e.g. the VM's KVP service), or null.
    template <typename T>
    [[nodiscard]] std::shared_ptr<T> first() const {
        for (const auto& e : entries_)
            if (auto d = std::dynamic_pointer_cast<T>(e.device)) return d;
        return nullptr;
    }

private:
    std::vector<DeviceEntry> entries_;
};

// The device kinds a configuration may name, and their factories.
[[nodiscard]] DeviceFactory device_factory(std::string_view kind);

}  // namespace enlighten
