#include "devices/netvsp/factory.hpp"

#include <fmt/format.h>

#include "devices/netvsp/netvsp.hpp"

namespace enlighten::netvsp {

std::optional<std::array<uint8_t, 6>> parse_mac(std::string_view text) {
    if (text.size() != 17) return std::nullopt;
    std::array<uint8_t, 6> mac{};
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (size_t i = 0; i < 6; ++i) {
        const int hi = hex(text[3 * i]), lo = hex(text[3 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        if (i < 5 && text[3 * i + 2] != ':' && text[3 * i + 2] != '-') return std::nullopt;
        mac[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    if (mac[0] & 1) return std::nullopt;  // multicast
    if (mac == std::array<uint8_t, 6>{}) return std::nullopt;
    return mac;
}

std::string format_mac(const std::array<uint8_t, 6>& m) {
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
}

std::array<uint8_t, 6> stable_mac(std::string_view vm_key, std::string_view nic_id) {
    uint32_t h = 2166136261u;  // FNV-1a
    auto mix = [&](std::string_view s) {
        for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 16777619u;
    };
    mix(vm_key);
    mix(std::string_view("\0", 1));
    mix(nic_id);
    return {0x00, 0x15, 0x5d, static_cast<uint8_t>(h >> 16), static_cast<uint8_t>(h >> 8), static_cast<uint8_t>(h)};
}

Result<std::shared_ptr<vmbus::Device>> make_nic(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only_params(cfg, {"backend", "tap", "mac", "vm_key", "queues"}));
    NicOptions o;
    o.name = cfg.id.empty() ? "net0" : cfg.id;
    o.instance = vmbus::Guid::from_name("nic:" + o.name);
    net::BackendConfig b;
    b.kind = param(cfg, "backend").empty() ? "slirp" : param(cfg, "backend");
    if (b.kind != "slirp" && b.kind != "tap")
        return fail(Errc::Invalid, "NIC '{}': backend '{}' (slirp or tap)", o.name, b.kind);
    b.tap = param(cfg, "tap");
    if (!b.tap.empty() && b.kind != "tap") return fail(Errc::Invalid, "NIC '{}': tap= is for backend=tap", o.name);
    if (b.tap.size() >= 16) return fail(Errc::Invalid, "NIC '{}': tap name '{}' is longer than 15", o.name, b.tap);
    if (const auto mac = param(cfg, "mac"); !mac.empty()) {
        auto m = parse_mac(mac);
        if (!m) return fail(Errc::Invalid, "NIC '{}': mac '{}' is not a unicast MAC (aa:bb:cc:dd:ee:ff)", o.name, mac);
        o.mac = *m;
    } else {
        o.mac = stable_mac(param(cfg, "vm_key"), o.name);
    }
    ENL_TRY(uint32_t queues, param_number(cfg, "queues", vmbus::kMaxSubchannels, 1, vmbus::kMaxSubchannels));
    o.max_queues = static_cast<uint16_t>(queues);
    for (const auto& child : cfg.children) {
        if (child.kind != "hostfwd") return fail(Errc::Invalid, "NIC '{}': a NIC holds hostfwd rules, not '{}'", o.name, child.kind);
        if (b.kind != "slirp") return fail(Errc::Invalid, "NIC '{}': hostfwd is for backend=slirp", o.name);
        auto fwd = net::parse_hostfwd(param(child, "rule"));
        if (!fwd) return std::unexpected(fwd.error().context(fmt::format("NIC '{}': hostfwd", o.name)));
        b.forwards.push_back(*fwd);
    }
    auto backend = net::make_backend(b);
    if (!backend) return std::unexpected(backend.error().context(fmt::format("NIC '{}': {} backend", o.name, b.kind)));
    ENL_TRY(auto nic, Nic::create(std::move(o), std::move(*backend)));
    return std::static_pointer_cast<vmbus::Device>(nic);
}

}  // namespace enlighten::netvsp
