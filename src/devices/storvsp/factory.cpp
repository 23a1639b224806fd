#include "devices/storvsp/factory.hpp"

#include <charconv>

namespace enlighten::storvsp {

namespace {

Result<uint32_t> number(const DeviceConfig& cfg, std::string_view key, uint32_t dflt, uint32_t lo, uint32_t hi) {
    auto it = cfg.params.find(key);
    if (it == cfg.params.end()) return dflt;
    uint32_t v = 0;
    const auto& t = it->second;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || p != t.data() + t.size() || v < lo || v > hi)
        return fail(Errc::Invalid, "{} '{}': expected {} to {}", key, t, lo, hi);
    return v;
}

Result<> only(const DeviceConfig& cfg, std::initializer_list<std::string_view> known) {
    for (const auto& [k, v] : cfg.params)
        if (std::find(known.begin(), known.end(), k) == known.end())
            return fail(Errc::Invalid, "unknown parameter '{}'", k);
    return {};
}

Result<std::vector<DiskConfig>> disks_of(const DeviceConfig& cfg) {
    std::vector<DiskConfig> disks;
    for (const auto& child : cfg.children) {
        if (child.kind != "disk") return fail(Errc::Invalid, "a controller holds disks, not '{}'", child.kind);
        ENL_TRY(auto d, disk_config(child));
        for (const auto& other : disks)
            if (other.id == d.id) return fail(Errc::Invalid, "disk id '{}' is used twice", d.id);
        disks.push_back(std::move(d));
    }
    return disks;
}

// A stable instance GUID from a device id (FNV-1a), so the guest names it the same at every boot.
vmbus::Guid guid_from(std::string_view id) {
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
    for (char c : id) {
        h1 = (h1 ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
        h2 = (h2 ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
    }
    vmbus::Guid g;
    for (int i = 0; i < 8; ++i) {
        g.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(h1 >> (8 * i));
        g.bytes[static_cast<size_t>(8 + i)] = static_cast<uint8_t>(h2 >> (8 * i));
    }
    g.bytes[7] = static_cast<uint8_t>((g.bytes[7] & 0x0f) | 0x40);  // version 4 style
    g.bytes[8] = static_cast<uint8_t>((g.bytes[8] & 0x3f) | 0x80);
    return g;
}

}  // namespace

Result<DiskConfig> disk_config(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"path", "format", "readonly", "serial", "cache"}));
    DiskConfig d;
    d.id = cfg.id;
    auto get = [&](std::string_view k) -> std::string {
        auto it = cfg.params.find(k);
        return it == cfg.params.end() ? std::string() : it->second;
    };
    d.path = get("path");
    if (d.path.empty()) return fail(Errc::Invalid, "disk '{}': no path", cfg.id);
    if (d.id.empty()) return fail(Errc::Invalid, "disk {}: no id", d.path);
    d.format = get("format").empty() ? "auto" : get("format");
    if (d.format != "auto" && d.format != "raw" && d.format != "vhdx")
        return fail(Errc::Invalid, "disk '{}': format '{}' (auto, raw or vhdx)", d.id, d.format);
    const std::string ro = get("readonly");
    if (!ro.empty() && ro != "on" && ro != "off" && ro != "true" && ro != "false")
        return fail(Errc::Invalid, "disk '{}': readonly '{}' (on or off)", d.id, ro);
    d.read_only = ro == "on" || ro == "true";
    const std::string cache = get("cache");
    if (!cache.empty() && cache != "writeback" && cache != "writethrough")
        return fail(Errc::Invalid, "disk '{}': cache '{}' (writeback or writethrough)", d.id, cache);
    d.writethrough = cache == "writethrough";
    d.serial = get("serial");
    if (d.serial.size() > 64) return fail(Errc::Invalid, "disk '{}': a serial of at most 64 characters", d.id);
    return d;
}

Result<std::shared_ptr<vmbus::Device>> make_scsi(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"instance", "subchannels", "queue_depth"}));
    ControllerOptions o;
    o.bus = Bus::Scsi;
    o.name = cfg.id.empty() ? "scsi" : cfg.id;
    if (auto it = cfg.params.find("instance"); it != cfg.params.end()) {
        o.instance = vmbus::Guid::parse(it->second.c_str());
        if (o.instance == vmbus::Guid{}) return fail(Errc::Invalid, "instance '{}' is not a GUID", it->second);
    } else {
        o.instance = guid_from(o.name);
    }
    ENL_TRY(uint32_t subchannels, number(cfg, "subchannels", vmbus::kMaxSubchannels, 0, vmbus::kMaxSubchannels));
    o.max_subchannels = static_cast<uint16_t>(subchannels);
    ENL_TRY(o.queue_depth, number(cfg, "queue_depth", 256, 1, 1024));
    ENL_TRY(auto disks, disks_of(cfg));
    ENL_TRY(auto c, Controller::create(std::move(o), disks));
    return std::static_pointer_cast<vmbus::Device>(c);
}

Result<std::shared_ptr<vmbus::Device>> make_ide(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only(cfg, {"slot"}));
    ENL_TRY(uint32_t slot, number(cfg, "slot", 0, 0, 3));
    ControllerOptions o;
    o.bus = Bus::Ide;
    o.name = cfg.id.empty() ? fmt::format("ide{}", slot) : cfg.id;
    o.instance = ide_instance(slot);
    o.queue_depth = 256;
    ENL_TRY(auto disks, disks_of(cfg));
    if (disks.size() != 1) return fail(Errc::Invalid, "an IDE slot holds one disk, not {}", disks.size());
    ENL_TRY(auto c, Controller::create(std::move(o), disks));
    return std::static_pointer_cast<vmbus::Device>(c);
}

}  // namespace enlighten::storvsp
