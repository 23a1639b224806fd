#include "api/router.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <expected>
#include <initializer_list>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/size.hpp"

namespace enlighten::api {

namespace {

using Json = nlohmann::ordered_json;

// Strings from the guest (KVP values, channel names) may not be valid UTF-8: replace, never throw.
std::string dump(const Json& j) {
    return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

HttpReply json_reply(const Json& j) {
    HttpReply r;
    r.body = dump(j);
    return r;
}
HttpReply no_content() {
    HttpReply r;
    r.status = 204;
    return r;
}

HttpReply from_api_error(const ApiError& e) {
    return error_reply(http_status(e.kind), e.message.empty() ? "error" : e.message);
}

HttpReply from_result(const ApiResult<>& r) { return r ? no_content() : from_api_error(r.error()); }

constexpr std::array<std::string_view, 5> kPoolNames = {"external", "guest", "auto", "auto-external",
                                                       "auto-internal"};

std::string_view heartbeat_state(HeartbeatState s) {
    switch (s) {
        case HeartbeatState::Healthy: return "healthy";
        case HeartbeatState::Lost: return "lost";
        case HeartbeatState::Unknown: break;
    }
    return "unknown";
}

Json to_json(const DiskInfo& d) {
    return {{"id", d.id},          {"controller", d.controller},   {"bus", d.bus},
            {"lun", d.lun},        {"path", d.path},               {"format", d.format},
            {"read_only", d.read_only}, {"direct", d.direct},      {"write_cache", d.write_cache},      {"size_bytes", d.size_bytes},
            {"block_size", d.block_size}, {"requests", d.requests}, {"reads", d.reads},
            {"writes", d.writes},  {"flushes", d.flushes},         {"unmaps", d.unmaps},
            {"bytes_read", d.bytes_read}, {"bytes_written", d.bytes_written}, {"errors", d.errors},
            {"latency_us_avg", d.latency_us_avg}};
}

Json to_json(const NicInfo& n) {
    Json queues = Json::array();
    for (const auto& q : n.per_queue)
        queues.push_back({{"index", q.index}, {"target_vp", q.target_vp}, {"rx_packets", q.rx_packets},
                          {"rx_bytes", q.rx_bytes}, {"rx_dropped", q.rx_dropped}, {"tx_packets", q.tx_packets},
                          {"tx_bytes", q.tx_bytes}, {"tx_dropped", q.tx_dropped}});
    return {{"id", n.id},       {"mac", n.mac},           {"backend", n.backend},     {"backend_info", n.backend_info},
            {"link_up", n.link_up}, {"guest_ready", n.guest_ready}, {"mtu", n.mtu}, {"queues", n.queues},
            {"max_queues", n.max_queues}, {"per_queue", std::move(queues)}};
}

Json to_json(const MemoryInfo& m) {
    auto opt = [](const std::optional<uint64_t>& v) { return v ? Json(*v) : Json(nullptr); };
    Json report = nullptr;
    if (m.last_report)
        report = {{"available", m.last_report->available},
                  {"committed", m.last_report->committed},
                  {"age_ms", m.last_report->age_ms},
                  {"plausible", m.last_report->plausible}};
    Json errors = Json::object();
    for (const auto& [k, v] : m.guest_errors) errors[k] = v;
    return {{"state", m.state},
            {"protocol_version", m.protocol_version.empty() ? Json(nullptr) : Json(m.protocol_version)},
            {"dynamic", m.dynamic},
            {"startup", m.startup},
            {"min", m.min},
            {"max", m.max},
            {"buffer", m.buffer},
            {"weight", m.weight},
            {"current", m.current},
            {"target", opt(m.target)},
            {"explicit_target", m.explicit_target},
            {"ballooned", m.ballooned},
            {"hot_added", m.hot_added},
            {"can_balloon", m.can_balloon},
            {"can_hot_add", m.can_hot_add},
            {"hot_add_disabled", m.hot_add_disabled.empty() ? Json(nullptr) : Json(m.hot_add_disabled)},
            {"problem", m.problem.empty() ? Json(nullptr) : Json(m.problem)},
            {"last_action", m.last_action},
            {"status_reports", m.status_reports},
            {"last_report", std::move(report)},
            {"guest_errors", std::move(errors)}};
}

Json to_json(const ConsoleInfo& c) {
    Json mode = nullptr;
    if (c.mode) mode = {{"width", c.mode->width}, {"height", c.mode->height}, {"pitch", c.mode->pitch}};
    Json errors = Json::object();
    for (const auto& [k, v] : c.guest_errors) errors[k] = v;
    return {{"video", c.video},
            {"video_version", c.video_version.empty() ? Json(nullptr) : Json(c.video_version)},
            {"mode", std::move(mode)},
            {"offered", {{"width", c.offered_width}, {"height", c.offered_height}}},
            {"vram_gpa", c.vram_gpa ? Json(*c.vram_gpa) : Json(nullptr)},
            {"vram_bytes", c.vram_bytes},
            {"vram_in_mmio", c.vram_in_mmio},
            {"keyboard", c.keyboard},
            {"mouse", c.mouse},
            {"key_events", c.key_events},
            {"pointer_reports", c.pointer_reports},
            {"guest_errors", std::move(errors)}};
}

Json to_json(const VmInfo& info) {
    Json channels = Json::array();
    auto ring = [](const std::optional<ChannelInfo::Ring>& r) -> Json {
        if (!r) return nullptr;
        return {{"write_index", r->write_index},
                {"read_index", r->read_index},
                {"interrupt_mask", r->interrupt_mask},
                {"pending_send_size", r->pending_send_size},
                {"size", r->size}};
    };
    for (const auto& c : info.channels) {
        Json j = {{"relid", c.relid},         {"index", c.index}, {"name", c.name},          {"class_id", c.class_id},
                  {"instance_id", c.instance_id}, {"state", c.state}, {"target_vp", c.target_vp}};
        if (c.to_host || c.to_guest) {
            j["rings"] = {{"to_host", ring(c.to_host)},
                          {"to_guest", ring(c.to_guest)},
                          {"waiting_for_room", c.waiting_for_room}};
        }
        channels.push_back(std::move(j));
    }
    Json disks = Json::array();
    for (const auto& d : info.disks) disks.push_back(to_json(d));
    Json storage_channels = Json::array();
    for (const auto& c : info.storage_channels)
        storage_channels.push_back({{"controller", c.controller}, {"index", c.index}, {"target_vp", c.target_vp},
                                    {"requests", c.requests}, {"in_flight", c.in_flight}});
    Json nics = Json::array();
    for (const auto& n : info.nics) nics.push_back(to_json(n));
    Json devices = Json::array();
    for (const auto& d : info.devices)
        devices.push_back({{"id", d.id}, {"kind", d.kind}, {"class_id", d.class_id}, {"instance_id", d.instance_id}});
    return {{"state", info.state},
            {"vm_id", info.vm_id},
            {"cpus", info.cpus},
            {"memory_bytes", info.memory_bytes},
            {"kernel", info.kernel},
            {"cmdline", info.cmdline},
            {"hyperv", info.hyperv},
            {"uptime_ms", info.uptime_ms},
            {"vmbus_version", info.vmbus_version.empty() ? Json(nullptr) : Json(info.vmbus_version)},
            {"devices", std::move(devices)},
            {"channels", std::move(channels)},
            {"disks", std::move(disks)},
            {"storage_channels", std::move(storage_channels)},
            {"nics", std::move(nics)},
            {"gpadls", info.gpadls},
            {"vmm_rss_bytes", info.vmm_rss_bytes},
            {"guest_rss_bytes", info.guest_rss_bytes},
            {"memory", info.memory ? to_json(*info.memory) : Json(nullptr)},
            {"console", info.console ? to_json(*info.console) : Json(nullptr)}};
}

Json to_json(const IntegrationServiceInfo& s) {
    return {{"name", s.name},
            {"enabled", s.enabled},
            {"version", s.version.empty() ? Json(nullptr) : Json(s.version)},
            {"status", s.status.empty() ? Json(nullptr) : Json(s.status)}};
}

Json to_json(const HeartbeatInfo& hb) {
    return {{"state", heartbeat_state(hb.state)},
            {"sequence", hb.sequence},
            {"last_reply_ms", hb.last_reply_ms ? Json(*hb.last_reply_ms) : Json(nullptr)}};
}

bool is_blank(std::string_view s) {
    return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; drop that.
std::string clean_json_message(std::string_view what) {
    if (what.starts_with("[json.exception.")) {
        if (auto p = what.find("] "); p != std::string_view::npos) what.remove_prefix(p + 2);
    }
    return std::string(what);
}

// A request body: blank means "no fields"; otherwise a JSON object whose members are all
// in `allowed` (unknown fields are rejected, so a typo is not silently ignored).
std::expected<Json, std::string> parse_object(std::string_view body, std::initializer_list<std::string_view> allowed,
                                              bool required) {
    if (is_blank(body)) {
        if (required) return std::unexpected("a JSON object body is required");
        return Json::object();
    }
    Json j;
    try {
        j = Json::parse(body);
    } catch (const Json::exception& e) {
        return std::unexpected("invalid JSON body: " + clean_json_message(e.what()));
    }
    if (!j.is_object()) return std::unexpected(std::string("the body must be a JSON object"));
    for (const auto& [name, value] : j.items()) {
        bool known = false;
        for (auto a : allowed) known = known || name == a;
        if (!known) {
            if (allowed.size() == 0) return std::unexpected(std::string("this endpoint takes no fields"));
            return std::unexpected(fmt::format("unknown field '{}'", name));
        }
    }
    return j;
}

// A size in a request: a number of bytes, or a string with a unit ("512M", "2G").
std::expected<uint64_t, std::string> size_field(const Json& j, std::string_view name) {
    if (j.is_number_unsigned()) return j.get<uint64_t>();
    if (j.is_string()) {
        auto v = parse_size(j.get<std::string>());
        if (!v) return std::unexpected(fmt::format("{}: {}", name, v.error().message()));
        return *v;
    }
    return std::unexpected(fmt::format("{} must be a size: bytes, or a string such as \"512M\"", name));
}

std::expected<MemoryUpdate, std::string> parse_memory_update(std::string_view body) {
    auto j = parse_object(body, {"target", "min", "max", "buffer", "dynamic"}, true);
    if (!j) return std::unexpected(j.error());
    if (j->empty()) return std::unexpected("give at least one of target, min, max, buffer, dynamic");
    MemoryUpdate u;
    if (auto it = j->find("target"); it != j->end()) {
        u.set_target = true;
        if (!it->is_null()) {
            auto v = size_field(*it, "target");
            if (!v) return std::unexpected(v.error());
            u.target = *v;
        }
    }
    for (auto [key, out] : {std::pair{"min", &u.min}, std::pair{"max", &u.max}}) {
        if (auto it = j->find(key); it != j->end()) {
            auto v = size_field(*it, key);
            if (!v) return std::unexpected(v.error());
            *out = *v;
        }
    }
    if (auto it = j->find("buffer"); it != j->end()) {
        if (!it->is_number_unsigned() || it->get<uint64_t>() > 2000)
            return std::unexpected("buffer must be a percentage from 0 to 2000");
        u.buffer = static_cast<uint32_t>(it->get<uint64_t>());
    }
    if (auto it = j->find("dynamic"); it != j->end()) {
        if (!it->is_boolean()) return std::unexpected("dynamic must be true or false");
        u.dynamic = it->get<bool>();
    }
    return u;
}


std::expected<ShutdownRequest, std::string> parse_shutdown(std::string_view body, bool reboot) {
    auto j = parse_object(body, {"timeout_s", "reason"}, false);
    if (!j) return std::unexpected(j.error());
    ShutdownRequest req;
    req.reboot = reboot;
    if (auto it = j->find("timeout_s"); it != j->end()) {
        // is_number_integer() holds for both signed and unsigned storage; a literal too large
        // for 64 bits is parsed as a float.
        const bool in_range =
            it->is_number_integer() && (it->is_number_unsigned()
                                            ? it->get<uint64_t>() >= 1 && it->get<uint64_t>() <= kMaxTimeoutS
                                            : it->get<int64_t>() >= 1 && it->get<int64_t>() <= kMaxTimeoutS);
        if (!in_range) return std::unexpected(fmt::format("timeout_s must be an integer between 1 and {}", kMaxTimeoutS));
        req.timeout_s = static_cast<uint32_t>(it->get<uint64_t>());
    }
    if (auto it = j->find("reason"); it != j->end()) {
        if (!it->is_string()) return std::unexpected(std::string("reason must be a string"));
        req.reason = it->get<std::string>();
        const auto units = utf16_length(req.reason);
        if (!units) return std::unexpected(std::string("reason is not valid UTF-8"));
        if (req.reason.find('\0') != std::string::npos) return std::unexpected(std::string("reason contains a NUL character"));
        if (*units > kMaxReasonUtf16)
            return std::unexpected(fmt::format("reason is {} UTF-16 code units long; at most {} fit the shutdown message",
                                               *units, kMaxReasonUtf16));
    }
    return req;
}

std::expected<AddDiskRequest, std::string> parse_add_disk(std::string_view body) {
    auto j = parse_object(body, {"path", "id", "format", "readonly", "cache", "serial", "controller"}, true);
    if (!j) return std::unexpected(j.error());
    AddDiskRequest r;
    auto text = [&](const char* name, std::string& out, size_t max) -> std::optional<std::string> {
        auto it = j->find(name);
        if (it == j->end()) return std::nullopt;
        if (!it->is_string()) return fmt::format("{} must be a string", name);
        out = it->get<std::string>();
        if (out.size() > max) return fmt::format("{} is longer than {} bytes", name, max);
        if (out.find('\0') != std::string::npos) return fmt::format("{} contains a NUL character", name);
        return std::nullopt;
    };
    for (auto [name, out, max] : {std::tuple{"path", &r.path, size_t{4096}}, std::tuple{"id", &r.id, size_t{64}},
                                  std::tuple{"format", &r.format, size_t{16}}, std::tuple{"serial", &r.serial, size_t{64}},
                                  std::tuple{"controller", &r.controller, size_t{64}}})
        if (auto why = text(name, *out, max)) return std::unexpected(*why);
    if (r.path.empty()) return std::unexpected(std::string("path is required"));
    if (auto it = j->find("readonly"); it != j->end()) {
        if (!it->is_boolean()) return std::unexpected(std::string("readonly must be true or false"));
        r.read_only = it->get<bool>();
    }
    if (auto it = j->find("cache"); it != j->end()) {
        if (!it->is_string() || (*it != "writeback" && *it != "writethrough"))
            return std::unexpected(std::string("cache must be \"writeback\" or \"writethrough\""));
        r.writethrough = *it == "writethrough";
    }
    return r;
}

std::expected<CopyFileRequest, std::string> parse_copy_file(std::string_view body) {
    auto j = parse_object(body, {"source", "destination", "overwrite", "create_path"}, true);
    if (!j) return std::unexpected(j.error());
    CopyFileRequest r;
    for (auto [name, out] : {std::pair{"source", &r.source}, std::pair{"destination", &r.destination}}) {
        auto it = j->find(name);
        if (it == j->end() || !it->is_string()) return std::unexpected(fmt::format("{} (a string) is required", name));
        *out = it->get<std::string>();
        if (out->empty()) return std::unexpected(fmt::format("{} is empty", name));
        if (out->size() > kMaxCopyPathBytes)
            return std::unexpected(fmt::format("{} is longer than {} bytes", name, kMaxCopyPathBytes));
        if (out->find('\0') != std::string::npos) return std::unexpected(fmt::format("{} contains a NUL character", name));
    }
    for (auto [name, out] : {std::pair{"overwrite", &r.overwrite}, std::pair{"create_path", &r.create_path}}) {
        if (auto it = j->find(name); it != j->end()) {
            if (!it->is_boolean()) return std::unexpected(fmt::format("{} must be true or false", name));
            *out = it->get<bool>();
        }
    }
    return r;
}

// MiB/s of `bytes` in `ms`, or null before there is a millisecond to divide by.
Json rate(uint64_t bytes, uint64_t ms) {
    if (ms == 0) return nullptr;
    return static_cast<double>(bytes) / (1 << 20) / (static_cast<double>(ms) / 1000.0);
}

Json to_json(const CopyFileProgress& p) {
    return {{"state", p.state},
            {"source", p.source},
            {"destination", p.destination},
            {"bytes_total", p.bytes_total},
            {"bytes_sent", p.bytes_sent},
            {"bytes_written", p.bytes_written},
            {"elapsed_ms", p.elapsed_ms},
            {"mib_per_s", rate(p.bytes_written, p.elapsed_ms)},
            {"error", p.error.empty() ? Json(nullptr) : Json(p.error)}};
}

std::expected<CheckpointRequest, std::string> parse_checkpoint(std::string_view body) {
    auto j = parse_object(body, {"name", "consistency", "freeze_timeout_s"}, true);
    if (!j) return std::unexpected(j.error());
    CheckpointRequest r;
    auto it = j->find("name");
    if (it == j->end() || !it->is_string()) return std::unexpected(std::string("name (a string) is required"));
    r.name = it->get<std::string>();
    if (r.name.empty() || r.name.size() > kMaxCheckpointName)
        return std::unexpected(fmt::format("name must have 1 to {} characters", kMaxCheckpointName));
    for (char c : r.name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
            return std::unexpected(std::string("name may hold only letters, digits, '.', '_' and '-'"));
    if (r.name.front() == '.') return std::unexpected(std::string("name must not start with '.'"));
    if (auto c = j->find("consistency"); c != j->end()) {
        if (!c->is_string() || (*c != "application" && *c != "crash"))
            return std::unexpected(std::string("consistency must be \"application\" or \"crash\""));
        r.consistency = c->get<std::string>();
    }
    if (auto t = j->find("freeze_timeout_s"); t != j->end()) {
        const bool ok = t->is_number_unsigned() && t->get<uint64_t>() >= 1 && t->get<uint64_t>() <= kMaxFreezeTimeoutS;
        if (!ok) return std::unexpected(fmt::format("freeze_timeout_s must be an integer between 1 and {}", kMaxFreezeTimeoutS));
        r.freeze_timeout_s = static_cast<uint32_t>(t->get<uint64_t>());
    }
    return r;
}

Json to_json(const CheckpointInfo& c) {
    Json disks = Json::array();
    for (const auto& d : c.disks) disks.push_back({{"id", d.id}, {"parent", d.parent}, {"image", d.image}});
    return {{"name", c.name},
            {"consistency", c.consistency},
            {"created_unix_ms", c.created_unix_ms},
            {"frozen_ms", c.frozen_ms},
            {"paused_ms", c.paused_ms},
            {"disks", std::move(disks)},
            {"warning", c.warning.empty() ? Json(nullptr) : Json(c.warning)}};
}

std::expected<SendKeysRequest, std::string> parse_send_keys(std::string_view body) {
    auto j = parse_object(body, {"text", "keys"}, true);
    if (!j) return std::unexpected(j.error());
    SendKeysRequest r;
    if (auto it = j->find("text"); it != j->end()) {
        if (!it->is_string()) return std::unexpected(std::string("text must be a string"));
        r.text = it->get<std::string>();
        if (r.text.size() > kMaxSendKeysText)
            return std::unexpected(fmt::format("text is {} bytes; at most {} are typed at once", r.text.size(),
                                               kMaxSendKeysText));
    }
    if (auto it = j->find("keys"); it != j->end()) {
        if (!it->is_array()) return std::unexpected(std::string("keys must be an array of strings"));
        if (it->size() > kMaxSendKeysKeys)
            return std::unexpected(fmt::format("keys has {} entries; at most {}", it->size(), kMaxSendKeysKeys));
        for (const auto& k : *it) {
            if (!k.is_string()) return std::unexpected(std::string("keys must be an array of strings"));
            auto name = k.get<std::string>();
            if (name.empty() || name.size() > kMaxKeyName)
                return std::unexpected(fmt::format("a key combination must be 1 to {} bytes", kMaxKeyName));
            r.keys.push_back(std::move(name));
        }
    }
    if (r.text.empty() && r.keys.empty()) return std::unexpected(std::string("give text or keys"));
    return r;
}

constexpr std::array<std::string_view, 5> kButtonNames = {"left", "right", "middle", "side", "extra"};

std::expected<uint8_t, std::string> button_bit(const Json& j) {
    if (j.is_string())
        for (size_t i = 0; i < kButtonNames.size(); ++i)
            if (j.get<std::string>() == kButtonNames[i]) return static_cast<uint8_t>(1U << i);
    return std::unexpected(std::string("a button is one of left, right, middle, side, extra"));
}

std::expected<PointerRequest, std::string> parse_pointer(std::string_view body) {
    auto j = parse_object(body, {"x", "y", "buttons", "wheel", "click"}, true);
    if (!j) return std::unexpected(j.error());
    PointerRequest r;
    for (auto [key, out] : {std::pair{"x", &r.x}, std::pair{"y", &r.y}}) {
        auto it = j->find(key);
        if (it == j->end() || !it->is_number_unsigned() || it->get<uint64_t>() > UINT32_MAX)
            return std::unexpected(fmt::format("{} (a pixel position, 0 or more) is required", key));
        *out = static_cast<uint32_t>(it->get<uint64_t>());
    }
    if (auto it = j->find("buttons"); it != j->end()) {
        if (!it->is_array()) return std::unexpected(std::string("buttons must be an array of button names"));
        for (const auto& b : *it) {
            auto bit = button_bit(b);
            if (!bit) return std::unexpected(bit.error());
            r.buttons = static_cast<uint8_t>(r.buttons | *bit);
        }
    }
    if (auto it = j->find("wheel"); it != j->end()) {
        if (!it->is_number_integer() ||
            (it->is_number_unsigned() ? it->get<uint64_t>() > kMaxWheel
                                      : it->get<int64_t>() < -kMaxWheel || it->get<int64_t>() > kMaxWheel))
            return std::unexpected(fmt::format("wheel must be an integer from -{} to {}", kMaxWheel, kMaxWheel));
        r.wheel = static_cast<int32_t>(it->get<int64_t>());
    }
    if (auto it = j->find("click"); it != j->end()) {
        auto bit = button_bit(*it);
        if (!bit) return std::unexpected(bit.error());
        r.click = *bit;
    }
    return r;
}

enum class Method { Get, Put, Delete, Other };

Method method_of(std::string_view m) {
    if (m == "GET" || m == "HEAD") return Method::Get;
    if (m == "PUT") return Method::Put;
    if (m == "DELETE") return Method::Delete;
    return Method::Other;
}

HttpReply method_not_allowed(std::string_view method, std::string_view allow) {
    HttpReply r = error_reply(405, fmt::format("method {} is not allowed here; use {}", method, allow));
    r.allow = std::string(allow);
    return r;
}

// /api/v1/vm.kvp/{pool}[/{key}]
HttpReply handle_kvp(VmControl& vm, std::string_view method, const std::vector<std::string>& seg, std::string_view body) {
    const Method m = method_of(method);
    if (seg.size() == 2 && m != Method::Get) return method_not_allowed(method, "GET, HEAD");
    if (seg.size() == 3 && m == Method::Other) return method_not_allowed(method, "GET, HEAD, PUT, DELETE");

    const auto pool = parse_pool(seg[1]);
    if (!pool) {
        return error_reply(400, fmt::format("unknown KVP pool '{}': use external, guest, auto, auto-external, "
                                            "auto-internal or 0-4",
                                            seg[1]));
    }
    if (seg.size() == 2) {
        auto entries = vm.kvp_list(*pool);
        if (!entries) return from_api_error(entries.error());
        Json list = Json::array();
        for (const auto& e : *entries) list.push_back({{"key", e.key}, {"value", e.value}});
        return json_reply({{"pool", pool_name(*pool)}, {"entries", std::move(list)}});
    }

    const std::string& key = seg[2];
    if (auto why = check_kvp_key(key)) return error_reply(400, *why);
    switch (m) {
        case Method::Get: {
            auto value = vm.kvp_get(*pool, key);
            if (!value) return from_api_error(value.error());
            return json_reply({{"key", key}, {"value", *value}});
        }
        case Method::Put: {
            auto j = parse_object(body, {"value"}, true);
            if (!j) return error_reply(400, j.error());
            auto it = j->find("value");
            if (it == j->end()) return error_reply(400, "missing field 'value'");
            if (!it->is_string()) return error_reply(400, "value must be a string");
            const auto value = it->get<std::string>();
            if (auto why = check_kvp_value(value)) return error_reply(400, *why);
            return from_result(vm.kvp_set(*pool, key, value));
        }
        case Method::Delete: {
            auto j = parse_object(body, {}, false);
            if (!j) return error_reply(400, j.error());
            return from_result(vm.kvp_delete(*pool, key));
        }
        case Method::Other: break;
    }
    return error_reply(500, "unreachable");
}

HttpReply route(VmControl& vm, std::string_view method, std::string_view target, std::string_view body) {
    std::string_view path = target.substr(0, target.find('?'));
    if (!path.starts_with(kApiPrefix)) {
        if (path.starts_with("/api/") && !path.starts_with("/api/v1/"))
            return error_reply(404, fmt::format("unknown API version in {}; this server speaks /api/v1", path));
        return error_reply(404, "no such endpoint; the API is under /api/v1/");
    }
    path.remove_prefix(kApiPrefix.size());

    std::vector<std::string> seg;
    for (size_t start = 0;;) {
        const size_t slash = path.find('/', start);
        auto decoded = percent_decode(path.substr(start, slash == std::string_view::npos ? slash : slash - start));
        if (!decoded) return error_reply(400, "malformed percent-encoding in the path");
        seg.push_back(std::move(*decoded));
        if (seg.size() > 3) return error_reply(404, "no such endpoint");
        if (slash == std::string_view::npos) break;
        start = slash + 1;
    }

    const std::string& name = seg[0];
    if (name == "vm.kvp" && (seg.size() == 2 || seg.size() == 3)) return handle_kvp(vm, method, seg, body);
    if (name == "vm.integration-services" && seg.size() == 2) {
        if (method_of(method) != Method::Put) return method_not_allowed(method, "PUT");
        const std::string& service = seg[1];
        const bool plain = !service.empty() && service.size() <= 32 &&
                           std::all_of(service.begin(), service.end(), [](char c) {
                               return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
                           });
        if (!plain) return error_reply(404, "no such integration service");
        auto j = parse_object(body, {"enabled"}, true);
        if (!j) return error_reply(400, j.error());
        auto it = j->find("enabled");
        if (it == j->end() || !it->is_boolean()) return error_reply(400, "enabled (true or false) is required");
        auto s = vm.set_integration_service(seg[1], it->get<bool>());
        if (!s) return from_api_error(s.error());
        return json_reply(to_json(*s));
    }
    if (seg.size() != 1) return error_reply(404, fmt::format("no such endpoint: {}", target.substr(0, target.find('?'))));

    const Method m = method_of(method);
    auto get_only = [&](auto&& produce) -> HttpReply {
        if (m != Method::Get) return method_not_allowed(method, "GET, HEAD");
        return produce();
    };
    auto put_only = [&](auto&& act) -> HttpReply {
        if (m != Method::Put) return method_not_allowed(method, "PUT");
        return act();
    };
    auto no_body = [&](auto&& act) -> HttpReply {
        auto j = parse_object(body, {}, false);
        if (!j) return error_reply(400, j.error());
        return from_result(act());
    };

    if (name == "vmm.ping") {
        return get_only([&] { return json_reply({{"version", kVmmVersion}, {"api_version", kApiVersion}}); });
    }
    if (name == "vm.info") return get_only([&] { return json_reply(to_json(vm.info())); });
    if (name == "vm.heartbeat") return get_only([&] { return json_reply(to_json(vm.heartbeat())); });
    if (name == "vm.integration-services") {
        return get_only([&] {
            Json list = Json::array();
            for (const auto& s : vm.integration_services()) list.push_back(to_json(s));
            return json_reply({{"services", std::move(list)}});
        });
    }
    if (name == "vm.shutdown" || name == "vm.reboot") {
        return put_only([&] {
            auto req = parse_shutdown(body, name == "vm.reboot");
            if (!req) return error_reply(400, req.error());
            return from_result(vm.shutdown(*req));
        });
    }
    if (name == "vm.power-off") return put_only([&] { return no_body([&] { return vm.power_off(); }); });
    if (name == "vm.reset") return put_only([&] { return no_body([&] { return vm.reset(); }); });
    if (name == "vm.time-sync") return put_only([&] { return no_body([&] { return vm.time_sync(); }); });
    if (name == "vm.add-disk") {
        return put_only([&] {
            auto req = parse_add_disk(body);
            if (!req) return error_reply(400, req.error());
            auto disk = vm.add_disk(*req);
            if (!disk) return from_api_error(disk.error());
            return json_reply(to_json(*disk));
        });
    }
    if (name == "vm.remove-disk") {
        return put_only([&] {
            auto j = parse_object(body, {"id"}, true);
            if (!j) return error_reply(400, j.error());
            auto it = j->find("id");
            if (it == j->end() || !it->is_string()) return error_reply(400, "id (a string) is required");
            return from_result(vm.remove_disk(it->get<std::string>()));
        });
    }
    if (name == "vm.memory") {
        if (m == Method::Get) {
            auto info = vm.memory();
            if (!info) return from_api_error(info.error());
            return json_reply(to_json(*info));
        }
        if (m == Method::Put) {
            auto u = parse_memory_update(body);
            if (!u) return error_reply(400, u.error());
            return from_result(vm.set_memory(*u));
        }
        return method_not_allowed(method, "GET, HEAD, PUT");
    }
    if (name == "vm.copy-file") {
        if (m == Method::Get) return json_reply(to_json(vm.copy_file_progress()));
        if (m == Method::Put) {
            auto req = parse_copy_file(body);
            if (!req) return error_reply(400, req.error());
            auto done = vm.copy_file(*req);
            if (!done) return from_api_error(done.error());
            return json_reply({{"source", req->source},
                               {"destination", req->destination},
                               {"bytes", done->bytes},
                               {"elapsed_ms", done->elapsed_ms},
                               {"mib_per_s", rate(done->bytes, done->elapsed_ms)}});
        }
        return method_not_allowed(method, "GET, HEAD, PUT");
    }
    if (name == "vm.checkpoint") {
        return put_only([&] {
            auto req = parse_checkpoint(body);
            if (!req) return error_reply(400, req.error());
            auto done = vm.checkpoint(*req);
            if (!done) return from_api_error(done.error());
            return json_reply(to_json(*done));
        });
    }
    if (name == "vm.checkpoints") {
        return get_only([&] {
            Json list = Json::array();
            for (const auto& c : vm.checkpoints()) list.push_back(to_json(c));
            return json_reply({{"checkpoints", std::move(list)}});
        });
    }
    if (name == "vm.checkpoint-merge") {
        return put_only([&] {
            auto j = parse_object(body, {}, false);
            if (!j) return error_reply(400, j.error());
            auto done = vm.merge_checkpoint();
            if (!done) return from_api_error(done.error());
            return json_reply(to_json(*done));
        });
    }
    if (name == "vm.screenshot") {
        return get_only([&] {
            auto shot = vm.screenshot();
            if (!shot) return from_api_error(shot.error());
            HttpReply r;
            r.body = std::move(shot->png);
            r.content_type = "image/png";
            return r;
        });
    }
    if (name == "vm.send-keys") {
        return put_only([&] {
            auto req = parse_send_keys(body);
            if (!req) return error_reply(400, req.error());
            return from_result(vm.send_keys(*req));
        });
    }
    if (name == "vm.pointer") {
        return put_only([&] {
            auto req = parse_pointer(body);
            if (!req) return error_reply(400, req.error());
            return from_result(vm.pointer(*req));
        });
    }
    if (name == "vm.net-link") {
        return put_only([&] {
            auto j = parse_object(body, {"id", "up"}, true);
            if (!j) return error_reply(400, j.error());
            auto id = j->find("id");
            auto up = j->find("up");
            if (id == j->end() || !id->is_string()) return error_reply(400, "id (a string) is required");
            if (up == j->end() || !up->is_boolean()) return error_reply(400, "up (true or false) is required");
            return from_result(vm.set_net_link(id->get<std::string>(), up->get<bool>()));
        });
    }
    return error_reply(404, fmt::format("no such endpoint: {}", target.substr(0, target.find('?'))));
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::optional<std::string> check_text(std::string_view what, std::string_view text, size_t max_utf16, size_t max_utf8) {
    const auto units = utf16_length(text);
    if (!units) return fmt::format("{} is not valid UTF-8", what);
    if (text.find('\0') != std::string_view::npos) return fmt::format("{} contains a NUL character", what);
    if (*units > max_utf16 || text.size() > max_utf8) {
        return fmt::format("{} is too long: {} UTF-16 code units and {} UTF-8 bytes; the KVP service carries at most "
                           "{} and {}",
                           what, *units, text.size(), max_utf16, max_utf8);
    }
    return std::nullopt;
}

}  // namespace

Lane lane_of(std::string_view method, std::string_view target) {
    std::string_view path = target.substr(0, target.find('?'));
    if (!path.starts_with(kApiPrefix)) return Lane::Quick;  // a 404
    path.remove_prefix(kApiPrefix.size());
    const size_t slash = path.find('/');
    const auto name = percent_decode(path.substr(0, slash));
    if (!name) return Lane::Quick;  // a 400
    const bool more = slash != std::string_view::npos;
    const bool get = method_of(method) == Method::Get;
    if (*name == "vm.kvp") return Lane::Guest;
    if (*name == "vm.integration-services") return more ? Lane::Guest : Lane::Quick;
    if (more) return Lane::Quick;  // a 404
    // Reads of the VMM's own state: quick (their other methods are 405s, or listed below).
    static constexpr std::string_view kReads[] = {"vmm.ping",     "vm.info",   "vm.heartbeat", "vm.memory",
                                                  "vm.copy-file", "vm.checkpoints"};
    if (get && std::find(std::begin(kReads), std::end(kReads), *name) != std::end(kReads)) return Lane::Quick;
    static constexpr std::string_view kGuest[] = {
        "vm.time-sync",   "vm.add-disk",   "vm.remove-disk", "vm.copy-file", "vm.checkpoint",
        "vm.checkpoint-merge", "vm.screenshot", "vm.send-keys", "vm.pointer", "vm.memory"};
    if (std::find(std::begin(kGuest), std::end(kGuest), *name) != std::end(kGuest)) return Lane::Guest;
    // vm.power-off, vm.reset, vm.net-link; vm.shutdown and vm.reboot (MachineControl::shutdown
    // only posts the first stage to the VM's loop and returns); 404s, 405s
    return Lane::Quick;
}

HttpReply handle_request(VmControl& vm, std::string_view method, std::string_view target, std::string_view body) {
    try {
        return route(vm, method, target, body);
    } catch (const std::exception& e) {
        return error_reply(500, fmt::format("internal error: {}", e.what()));
    } catch (...) {
        return error_reply(500, "internal error");
    }
}

std::string error_body(std::string_view message) {
    return dump(Json{{"error", message}});
}

HttpReply error_reply(int status, std::string_view message) {
    HttpReply r;
    r.status = status;
    r.body = error_body(message);
    return r;
}

int http_status(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::BadRequest: return 400;
        case ErrorKind::NotFound: return 404;
        case ErrorKind::Conflict: return 409;
        case ErrorKind::Unavailable: return 503;
        case ErrorKind::Internal: break;
    }
    return 500;
}

std::optional<KvpPool> parse_pool(std::string_view text) {
    for (size_t i = 0; i < kPoolNames.size(); ++i) {
        if (text == kPoolNames[i] || (text.size() == 1 && text[0] == static_cast<char>('0' + i)))
            return static_cast<KvpPool>(i);
    }
    return std::nullopt;
}

std::string_view pool_name(KvpPool pool) {
    const auto i = static_cast<size_t>(pool);
    return i < kPoolNames.size() ? kPoolNames[i] : "unknown";
}

std::optional<std::string> percent_decode(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            out.push_back(text[i]);
            continue;
        }
        if (i + 2 >= text.size()) return std::nullopt;
        const int hi = hex_digit(text[i + 1]);
        const int lo = hex_digit(text[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

std::string percent_encode(std::string_view text) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        const bool unreserved = (u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') ||
                                u == '-' || u == '.' || u == '_' || u == '~';
        if (unreserved) {
            out.push_back(c);
        } else {
            out.push_back('%');
            out.push_back(kHex[u >> 4]);
            out.push_back(kHex[u & 0xF]);
        }
    }
    return out;
}

std::optional<size_t> utf16_length(std::string_view s) {
    size_t units = 0;
    for (size_t i = 0; i < s.size();) {
        const auto b0 = static_cast<unsigned char>(s[i]);
        if (b0 < 0x80) {
            ++units;
            ++i;
            continue;
        }
        size_t len = 0;
        uint32_t cp = 0;
        uint32_t min = 0;
        if ((b0 & 0xE0) == 0xC0) {
            len = 2, cp = b0 & 0x1Fu, min = 0x80;
        } else if ((b0 & 0xF0) == 0xE0) {
            len = 3, cp = b0 & 0x0Fu, min = 0x800;
        } else if ((b0 & 0xF8) == 0xF0) {
            len = 4, cp = b0 & 0x07u, min = 0x10000;
        } else {
            return std::nullopt;  // a continuation byte or 0xF8..0xFF
        }
        if (s.size() - i < len) return std::nullopt;
        for (size_t k = 1; k < len; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xC0) != 0x80) return std::nullopt;
            cp = (cp << 6) | (b & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
        units += cp >= 0x10000 ? 2 : 1;
        i += len;
    }
    return units;
}

std::optional<std::string> check_kvp_key(std::string_view key) {
    if (key.empty()) return std::string("the KVP key is empty");
    return check_text("the KVP key", key, kKvpMaxKeyUtf16, kKvpMaxKeyUtf8);
}

std::optional<std::string> check_kvp_value(std::string_view value) {
    return check_text("the KVP value", value, kKvpMaxValueUtf16, kKvpMaxValueUtf8);
}

}  // namespace enlighten::api
