#include "vmm/devices.hpp"

#include <set>

#include "devices/balloon/factory.hpp"
#include "devices/ic/factory.hpp"
#include "devices/input/factory.hpp"
#include "devices/netvsp/factory.hpp"
#include "devices/storvsp/factory.hpp"
#include "devices/video/factory.hpp"

namespace enlighten {

namespace {

struct Kind {
    std::string_view name;
    DeviceFactory factory;
};

// One line per device class; each class's factory lives in its own folder.
constexpr Kind kKinds[] = {
    {"heartbeat", ic::make_heartbeat},
    {"shutdown", ic::make_shutdown},
    {"timesync", ic::make_timesync},
    {"kvp", ic::make_kvp},
    {"fcopy", ic::make_fcopy},
    {"vss", ic::make_vss},
    {"scsi", storvsp::make_scsi},
    {"ide", storvsp::make_ide},
    {"nic", netvsp::make_nic},
    {"balloon", balloon::make_balloon},
    {"keyboard", input::make_keyboard},
    {"mouse", input::make_mouse},
    {"video", video::make_video},
};

}  // namespace

DeviceFactory device_factory(std::string_view kind) {
    for (const auto& k : kKinds)
        if (k.name == kind) return k.factory;
    return nullptr;
}

Result<DeviceSet> DeviceSet::build(const std::vector<DeviceConfig>& list) {
    DeviceSet set;
    std::set<std::string, std::less<>> ids;
    for (const auto& cfg : list) {
        const std::string id = cfg.id.empty() ? cfg.kind : cfg.id;
        if (!ids.insert(id).second) return fail(Errc::Invalid, "device id '{}' is used twice", id);
        DeviceFactory make = device_factory(cfg.kind);
        if (!make) return fail(Errc::Invalid, "device '{}': unknown kind '{}'", id, cfg.kind);
        auto device = make(cfg);
        if (!device) return std::unexpected(device.error().context(fmt::format("device '{}'", id)));
        set.entries_.push_back({id, cfg.kind, std::move(*device)});
    }
    return set;
}

const DeviceEntry* DeviceSet::find(std::string_view id) const {
    for (const auto& e : entries_)
        if (e.id == id) return &e;
    return nullptr;
}

}  // namespace enlighten
