#include "devices/storvsp/factory.hpp"

namespace enlighten::storvsp {

namespace {

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

}  // namespace

Result<DiskConfig> disk_config(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only_params(cfg, {"path", "format", "readonly", "serial", "cache"}));
    DiskConfig d;
    d.id = cfg.id;
    auto get = [&](std::string_view k) { return param(cfg, k); };
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
    ENL_TRY_VOID(only_params(cfg, {"instance", "subchannels", "queue_depth"}));
    ControllerOptions o;
    o.bus = Bus::Scsi;
    o.name = cfg.id.empty() ? "scsi" : cfg.id;
    if (auto it = cfg.params.find("instance"); it != cfg.params.end()) {
        o.instance = vmbus::Guid::parse(it->second.c_str());
        if (o.instance == vmbus::Guid{}) return fail(Errc::Invalid, "instance '{}' is not a GUID", it->second);
    } else {
        o.instance = vmbus::Guid::from_name(o.name);
    }
    ENL_TRY(uint32_t subchannels, param_number(cfg, "subchannels", vmbus::kMaxSubchannels, 0, vmbus::kMaxSubchannels));
    o.max_subchannels = static_cast<uint16_t>(subchannels);
    ENL_TRY(o.queue_depth, param_number(cfg, "queue_depth", 256, 1, 1024));
    ENL_TRY(auto disks, disks_of(cfg));
    ENL_TRY(auto c, Controller::create(std::move(o), disks));
    return std::static_pointer_cast<vmbus::Device>(c);
}

Result<std::shared_ptr<vmbus::Device>> make_ide(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only_params(cfg, {"slot"}));
    ENL_TRY(uint32_t slot, param_number(cfg, "slot", 0, 0, 3));
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
