#include "devices/ic/factory.hpp"

#include <charconv>

#include <fmt/format.h>

#include "devices/ic/fcopy.hpp"
#include "devices/ic/services.hpp"
#include "devices/ic/vss.hpp"

namespace enlighten::ic {

namespace {

Result<std::string> instance_of(const DeviceConfig& cfg) {
    auto it = cfg.params.find("instance");
    if (it == cfg.params.end()) return fail(Errc::Invalid, "no instance GUID given");
    if (vmbus::Guid::parse(it->second.c_str()) == vmbus::Guid{})
        return fail(Errc::Invalid, "instance '{}' is not a GUID", it->second);
    return it->second;
}

Result<> only(const DeviceConfig& cfg, std::initializer_list<std::string_view> known) {
    for (const auto& [k, v] : cfg.params)
        if (std::find(known.begin(), known.end(), k) == known.end())
            return fail(Errc::Invalid, "unknown parameter '{}'", k);
    return {};
}

}  // namespace

Result<std::shared_ptr<vmbus::Device>> make_heartbeat(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance", "interval_ms"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    uint32_t ms = 1000;
    if (auto it = cfg.params.find("interval_ms"); it != cfg.params.end()) {
        const auto& t = it->second;
        auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), ms);
        if (ec != std::errc() || p != t.data() + t.size() || ms < 10 || ms > 60000)
            return fail(Errc::Invalid, "interval_ms '{}': expected 10 to 60000", t);
    }
    return std::make_shared<HeartbeatService>(instance.c_str(), std::chrono::milliseconds(ms));
}

Result<std::shared_ptr<vmbus::Device>> make_shutdown(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    return std::make_shared<ShutdownService>(instance.c_str());
}

Result<std::shared_ptr<vmbus::Device>> make_timesync(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    return std::make_shared<TimeSyncService>(instance.c_str());
}

Result<std::shared_ptr<vmbus::Device>> make_kvp(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    return std::make_shared<KvpService>(instance.c_str());
}

Result<std::shared_ptr<vmbus::Device>> make_fcopy(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    return std::make_shared<FcopyService>(instance.c_str());
}

Result<std::shared_ptr<vmbus::Device>> make_vss(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance"}));
    ENL_TRY(std::string instance, instance_of(cfg));
    return std::make_shared<VssService>(instance.c_str());
}

std::string service_instance(const vmbus::Guid& vm_id, std::string_view service) {
    return vmbus::Guid::from_name(fmt::format("{}:{}", vm_id.to_string(), service)).to_string();
}

std::vector<DeviceConfig> default_integration_services(const vmbus::Guid& vm_id) {
    std::vector<DeviceConfig> list;
    for (const char* name : kIntegrationServices)
        list.push_back({name, name, {{"instance", service_instance(vm_id, name)}}, {}});
    return list;
}

}  // namespace enlighten::ic
