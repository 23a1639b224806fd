#include "devices/balloon/factory.hpp"

#include <charconv>

#include "devices/balloon/balloon.hpp"

namespace enlighten::balloon {

namespace {

Result<uint64_t> bytes_param(const DeviceConfig& cfg, std::string_view key, uint64_t dflt) {
    auto it = cfg.params.find(key);
    if (it == cfg.params.end()) return dflt;
    uint64_t v = 0;
    const auto& t = it->second;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || p != t.data() + t.size()) return fail(Errc::Invalid, "{} '{}': expected bytes", key, t);
    return v;
}

}  // namespace

Result<std::shared_ptr<vmbus::Device>> make_balloon(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only_params(cfg, {"instance", "startup", "min", "max", "dynamic", "buffer", "weight"}));
    std::string instance = param(cfg, "instance");
    if (instance.empty()) instance = kDefaultInstance;
    if (vmbus::Guid::parse(instance.c_str()) == vmbus::Guid{})
        return fail(Errc::Invalid, "instance '{}' is not a GUID", instance);
    ENL_TRY(const uint64_t startup, bytes_param(cfg, "startup", 0));
    if (startup == 0) return fail(Errc::Invalid, "no startup memory given");
    PolicySettings s;
    ENL_TRY(s.min_bytes, bytes_param(cfg, "min", std::min<uint64_t>(startup, 128ULL << 20)));
    ENL_TRY(s.max_bytes, bytes_param(cfg, "max", startup));
    const std::string dynamic = param(cfg, "dynamic");
    if (dynamic != "" && dynamic != "on" && dynamic != "off")
        return fail(Errc::Invalid, "dynamic '{}': expected on or off", dynamic);
    s.dynamic = dynamic == "on";
    ENL_TRY(s.buffer_percent, param_number(cfg, "buffer", 20, 0, 2000));
    ENL_TRY(s.weight, param_number(cfg, "weight", 5000, 0, 10000));
    if (s.min_bytes > startup) return fail(Errc::Invalid, "min {} is above the startup memory {}", s.min_bytes, startup);
    if (s.max_bytes < startup) return fail(Errc::Invalid, "max {} is below the startup memory {}", s.max_bytes, startup);
    return std::make_shared<BalloonDevice>(instance.c_str(), startup, s.max_bytes, s);
}

}  // namespace enlighten::balloon
