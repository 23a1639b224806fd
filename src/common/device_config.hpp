// One device of the VM as the configuration names it; the factory of its kind builds it
// (vmm/devices.hpp). Plain data, below every layer that makes devices, and the checks every
// factory makes of its parameters.
// Threads: plain values and pure checks, any thread; no locks.
#pragma once

#include <algorithm>
#include <charconv>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace enlighten {

struct DeviceConfig {
    std::string kind;  // "heartbeat", "shutdown", "timesync", "kvp", ...
    std::string id;    // unique in the VM; empty: the kind
    std::map<std::string, std::string, std::less<>> params;
    std::vector<DeviceConfig> children;  // e.g. a storage controller's disks
};

// The parameter `key` as a number in [lo, hi], or `dflt` when it is not given.
inline Result<uint32_t> param_number(const DeviceConfig& cfg, std::string_view key, uint32_t dflt, uint32_t lo,
                                     uint32_t hi) {
    auto it = cfg.params.find(key);
    if (it == cfg.params.end()) return dflt;
    uint32_t v = 0;
    const auto& t = it->second;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || p != t.data() + t.size() || v < lo || v > hi)
        return fail(Errc::Invalid, "{} '{}': expected {} to {}", key, t, lo, hi);
    return v;
}

// The parameter `key`, or "" when it is not given.
inline std::string param(const DeviceConfig& cfg, std::string_view key) {
    auto it = cfg.params.find(key);
    return it == cfg.params.end() ? std::string() : it->second;
}

// Errc::Invalid naming the first parameter not in `known`.
inline Result<> only_params(const DeviceConfig& cfg, std::initializer_list<std::string_view> known) {
    for (const auto& [k, v] : cfg.params)
        if (std::find(known.begin(), known.end(), k) == known.end())
            return fail(Errc::Invalid, "unknown parameter '{}'", k);
    return {};
}

}  // namespace enlighten
