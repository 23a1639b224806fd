#include "cli/remote.hpp"

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "api/http_client.hpp"
#include "api/router.hpp"

namespace enlighten::cli {

namespace {

using Json = nlohmann::ordered_json;

int fail_with(const std::string& message) {
    std::fflush(stdout);
    std::fprintf(stderr, "enlighten: error: %s\n", message.c_str());
    return 1;
}

struct Call {
    const char* method;  // GET, PUT, DELETE
    std::string path;
    std::string body;
    bool print = false;  // print the JSON answer
    bool binary = false;  // the answer is a file (screenshot), not JSON
};

Call make_call(const RemoteOptions& o) {
    const std::string base(api::kApiPrefix);
    const auto kvp = [&](bool with_key) {
        std::string p = base + "vm.kvp/" + api::percent_encode(o.pool);
        if (with_key) p += "/" + api::percent_encode(o.key);
        return p;
    };
    const auto shutdown_body = [&] {
        Json j = Json::object();
        if (o.timeout_s != 0) j["timeout_s"] = o.timeout_s;
        if (!o.reason.empty()) j["reason"] = o.reason;
        return j.empty() ? std::string() : j.dump();
    };
    const std::string& c = o.command;
    if (c == "ping") return {"GET", base + "vmm.ping", {}, true};
    if (c == "info") return {"GET", base + "vm.info", {}, true};
    if (c == "heartbeat") return {"GET", base + "vm.heartbeat", {}, true};
    if (c == "shutdown") return {"PUT", base + "vm.shutdown", shutdown_body()};
    if (c == "reboot") return {"PUT", base + "vm.reboot", shutdown_body()};
    if (c == "power-off") return {"PUT", base + "vm.power-off", {}};
    if (c == "reset") return {"PUT", base + "vm.reset", {}};
    if (c == "time-sync") return {"PUT", base + "vm.time-sync", {}};
    if (c == "kvp-list") return {"GET", kvp(false), {}, true};
    if (c == "kvp-get") return {"GET", kvp(true), {}, true};
    if (c == "kvp-set") return {"PUT", kvp(true), Json{{"value", o.value}}.dump(-1, ' ', false, Json::error_handler_t::replace)};
    if (c == "kvp-delete") return {"DELETE", kvp(true), {}};
    auto json = [](const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); };
    if (c == "add-disk") {
        Json j{{"path", o.disk_path}};
        if (!o.disk_id.empty()) j["id"] = o.disk_id;
        if (!o.disk_format.empty()) j["format"] = o.disk_format;
        if (!o.disk_serial.empty()) j["serial"] = o.disk_serial;
        if (!o.disk_controller.empty()) j["controller"] = o.disk_controller;
        if (o.disk_readonly) j["readonly"] = true;
        if (o.disk_writethrough) j["cache"] = "writethrough";
        return {"PUT", base + "vm.add-disk", json(j), true};
    }
    if (c == "remove-disk") return {"PUT", base + "vm.remove-disk", json(Json{{"id", o.disk_id}})};
    if (c == "net-link") return {"PUT", base + "vm.net-link", json(Json{{"id", o.nic_id}, {"up", o.link == "up"}})};
    if (c == "memory") return {"GET", base + "vm.memory", {}, true};
    if (c == "integration-services") {
        if (o.service_action.empty()) return {"GET", base + "vm.integration-services", {}, true};
        return {"PUT", base + "vm.integration-services/" + api::percent_encode(o.service_name),
                json(Json{{"enabled", o.service_action == "enable"}}), true};
    }
    if (c == "memory-set") {
        Json j = Json::object();
        if (o.mem_target == "auto")
            j["target"] = nullptr;
        else if (!o.mem_target.empty())
            j["target"] = o.mem_target;
        if (!o.mem_min.empty()) j["min"] = o.mem_min;
        if (!o.mem_max.empty()) j["max"] = o.mem_max;
        if (o.mem_buffer >= 0) j["buffer"] = o.mem_buffer;
        if (!o.mem_dynamic.empty()) j["dynamic"] = o.mem_dynamic == "on";
        return {"PUT", base + "vm.memory", json(j)};
    }
    if (c == "copy-file") {
        Json j{{"source", o.copy_source}, {"destination", o.copy_destination}};
        if (o.copy_overwrite) j["overwrite"] = true;
        if (o.copy_create_path) j["create_path"] = true;
        return {"PUT", base + "vm.copy-file", json(j), true};
    }
    if (c == "copy-file-status") return {"GET", base + "vm.copy-file", {}, true};
    if (c == "checkpoint") {
        Json j{{"name", o.checkpoint_name}};
        if (o.checkpoint_crash) j["consistency"] = "crash";
        if (o.freeze_timeout_s) j["freeze_timeout_s"] = o.freeze_timeout_s;
        return {"PUT", base + "vm.checkpoint", json(j), true};
    }
    if (c == "checkpoints") return {"GET", base + "vm.checkpoints", {}, true};
    if (c == "checkpoint-merge") return {"PUT", base + "vm.checkpoint-merge", {}, true};
    if (c == "screenshot") return {"GET", base + "vm.screenshot", {}, false, true};
    if (c == "send-keys") {
        Json j = Json::object();
        if (!o.text.empty()) j["text"] = o.text;
        if (!o.keys.empty()) j["keys"] = o.keys;
        return {"PUT", base + "vm.send-keys", json(j)};
    }
    if (c == "pointer") {
        Json j{{"x", o.x}, {"y", o.y}};
        if (!o.buttons.empty()) j["buttons"] = o.buttons;
        if (!o.click.empty()) j["click"] = o.click;
        if (o.wheel != 0) j["wheel"] = o.wheel;
        return {"PUT", base + "vm.pointer", json(j)};
    }
    return {"GET", base + "vmm.ping", {}, true};
}

// The screenshot's bytes to `path` ("-": stdout), through a temporary file renamed into place.
int write_file(const std::string& path, const std::string& bytes) {
    if (path == "-") {
        if (std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size() || std::fflush(stdout) != 0)
            return fail_with("cannot write the screenshot to stdout");
        return 0;
    }
    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return fail_with(fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        return fail_with(fmt::format("cannot write {}: {}", path, std::strerror(err)));
    }
    return 0;
}

// The server's {"error": ...}, or what there is.
std::string error_message(const api::HttpResponse& res) {
    const Json j = Json::parse(res.body, nullptr, false);
    if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
    std::string text = res.body.substr(0, 200);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (text.empty() || text.find('\n') != std::string::npos) return "the API answered HTTP " + std::to_string(res.status);
    return "the API answered HTTP " + std::to_string(res.status) + ": " + text;
}

}  // namespace

CLI::App* add_remote_command(CLI::App& app, RemoteOptions& opts) {
    auto* remote = app.add_subcommand("remote", "Talk to a running enlighten through its API socket");
    remote->add_option("--api-socket", opts.api_socket, "The socket given to `enlighten run --api-socket`")->required();
    remote->require_subcommand(1);

    auto cmd = [&](const char* name, const char* help) {
        auto* sub = remote->add_subcommand(name, help);
        sub->callback([&opts, name] { opts.command = name; });
        return sub;
    };
    auto add_pool = [&](CLI::App* sub) {
        sub->add_option("pool", opts.pool, "external, guest, auto, auto-external, auto-internal (or 0-4)")->required();
    };
    auto add_key = [&](CLI::App* sub) { sub->add_option("key", opts.key, "KVP key")->required(); };

    cmd("ping", "Check that the VMM answers; prints its version");
    cmd("info", "Print the VM's state, configuration and VMBus channels");
    for (const char* name : {"shutdown", "reboot"}) {
        auto* sub = cmd(name, std::string_view(name) == "shutdown"
                                  ? "Shut the guest down gracefully (shutdown IC, then ACPI, then power-off)"
                                  : "Reboot the guest gracefully");
        sub->add_option("--timeout", opts.timeout_s, "Seconds to wait at each stage (server default: 30)");
        sub->add_option("--reason", opts.reason, "Reason passed to the guest");
    }
    cmd("power-off", "Stop the VM at once (no guest involvement)");
    cmd("reset", "Reset the VM at once (no guest involvement)");
    cmd("heartbeat", "Print the guest's heartbeat state");
    cmd("time-sync", "Send the guest the host's time");
    add_pool(cmd("kvp-list", "List a KVP pool"));
    auto* get = cmd("kvp-get", "Print one KVP entry");
    add_pool(get);
    add_key(get);
    auto* set = cmd("kvp-set", "Set a KVP entry");
    add_pool(set);
    add_key(set);
    set->add_option("value", opts.value, "KVP value")->required();
    auto* del = cmd("kvp-delete", "Delete a KVP entry");
    add_pool(del);
    add_key(del);
    auto* add = cmd("add-disk", "Hot-add a disk to the SCSI controller; prints it");
    add->add_option("path", opts.disk_path, "The image file or block device")->required();
    add->add_option("--id", opts.disk_id, "The disk's id (default: diskN)");
    add->add_option("--format", opts.disk_format, "auto (default), raw or vhdx");
    add->add_option("--serial", opts.disk_serial, "The serial number the guest sees (default: the id)");
    add->add_flag("--readonly", opts.disk_readonly, "The guest cannot write it");
    add->add_flag("--writethrough", opts.disk_writethrough, "Every write stable before it completes (no write cache)");
    add->add_option("--controller", opts.disk_controller, "The SCSI controller (default: scsi0)");
    auto* rm = cmd("remove-disk", "Hot-remove a disk (the guest sees it go)");
    rm->add_option("id", opts.disk_id, "The disk's id")->required();
    auto* link = cmd("net-link", "Plug (up) or unplug (down) a NIC's cable; the guest sees its carrier change");
    link->add_option("id", opts.nic_id, "The NIC's id (net0, ...)")->required();
    link->add_option("state", opts.link, "up or down")->required()->check(CLI::IsMember({"up", "down"}));
    auto* ics = cmd("integration-services",
                    "List the integration services (enabled, version, Hyper-V's status), or enable/disable one");
    ics->add_option("action", opts.service_action, "enable or disable")->check(CLI::IsMember({"enable", "disable"}));
    ics->add_option("name", opts.service_name, "The service: heartbeat, shutdown, timesync, kvp, fcopy, vss");
    ics->callback([&opts] {
        opts.command = "integration-services";
        if (!opts.service_action.empty() && opts.service_name.empty())
            throw CLI::ValidationError("integration-services", "enable/disable needs the service's name");
    });
    cmd("memory", "Print the VM's dynamic memory: sizes, target, balloon, hot-add, the guest's last report");
    auto* ms = cmd("memory-set", "Set the memory target, or the dynamic-memory policy (docs/memory.md)");
    ms->add_option("--target", opts.mem_target, "The guest's size, e.g. 512M (auto: back to the policy)");
    ms->add_option("--min", opts.mem_min, "The policy's minimum, e.g. 256M");
    ms->add_option("--max", opts.mem_max, "The policy's maximum (at most the max the VM started with)");
    ms->add_option("--buffer", opts.mem_buffer, "Free memory to keep, in percent of the guest's need")
        ->check(CLI::Range(0, 2000));
    ms->add_option("--dynamic", opts.mem_dynamic, "The automatic policy on or off")->check(CLI::IsMember({"on", "off"}));
    auto* cp = cmd("copy-file", "Copy a host file into the guest (file copy service, hv_fcopy_daemon in the guest); "
                                "waits until it is done and prints its size and rate");
    cp->add_option("source", opts.copy_source, "The host file")->required();
    cp->add_option("destination", opts.copy_destination, "The file's absolute path in the guest, e.g. /root/data.bin")
        ->required();
    cp->add_flag("--overwrite", opts.copy_overwrite, "Replace the guest's file if it exists");
    cp->add_flag("--create-path", opts.copy_create_path, "Create the guest directories that are missing");
    cmd("copy-file-status", "Print the running file copy's progress (or the last copy's result)");
    auto* ck = cmd("checkpoint", "Take a production checkpoint: the guest freezes its file systems (VSS), every "
                                 "writable VHDX disk goes on a new differencing image (docs/checkpoints.md)");
    ck->add_option("name", opts.checkpoint_name, "The checkpoint's name (letters, digits, . _ -)")->required();
    ck->add_flag("--crash", opts.checkpoint_crash, "Without the guest's freeze (crash-consistent), e.g. when it has no VSS daemon");
    ck->add_option("--freeze-timeout", opts.freeze_timeout_s, "Seconds the guest may take to freeze (default 60)")
        ->check(CLI::Range(1, 900));
    cmd("checkpoints", "List the checkpoints, oldest first");
    cmd("checkpoint-merge", "Merge the newest checkpoint's differencing images back into their parents");
    auto* shot = cmd("screenshot", "Save the guest's screen as a PNG");
    shot->add_option("file", opts.file, "The PNG file to write (- for stdout)")->required();
    auto* keys = cmd("send-keys", "Type text and press keys on the guest's keyboard (docs/console.md)");
    keys->add_option("--text", opts.text, "Text typed first (US layout; \\n is Enter when the shell passes it)");
    keys->add_option("keys", opts.keys, "Key combinations pressed after the text, e.g. ctrl+alt+delete Return");
    auto* ptr = cmd("pointer", "Move the guest's mouse pointer to a pixel of its screen, with buttons and wheel");
    ptr->add_option("x", opts.x, "Column, 0 to width-1")->required();
    ptr->add_option("y", opts.y, "Row, 0 to height-1")->required();
    ptr->add_option("--buttons", opts.buttons, "Buttons held: left, right, middle, side, extra")->delimiter(',');
    ptr->add_option("--click", opts.click, "Press and release this button there")
        ->check(CLI::IsMember({"left", "right", "middle", "side", "extra"}));
    ptr->add_option("--wheel", opts.wheel, "Wheel detents (+ away from the user)")->check(CLI::Range(-127, 127));
    return remote;
}

int run_remote(const RemoteOptions& opts) {
    // The client sends with MSG_NOSIGNAL; this is for stdout (`enlighten remote info | head`).
    ::signal(SIGPIPE, SIG_IGN);
    const Call call = make_call(opts);

    api::HttpClientOptions client_opts;
    client_opts.connect_timeout = std::chrono::seconds(5);
    // A file copy answers when it is done: a large file takes long (the server bounds each
    // of the guest's answers, so a stuck guest still ends the call).
    // A checkpoint waits for the guest's freeze (up to 900 s) and a merge copies data.
    client_opts.io_timeout = opts.command == "copy-file" || opts.command == "checkpoint-merge" ? std::chrono::hours(24)
                             : opts.command == "checkpoint" ? std::chrono::seconds(960)
                                                            : std::chrono::seconds(60);
    client_opts.keep_alive = false;
    client_opts.max_response_bytes = 256U << 20;  // a screenshot of a large, busy screen
    api::HttpClient client(opts.api_socket, client_opts);
    const api::HttpHeader headers[] = {{"Host", "localhost"}, {"Accept", "application/json"}};
    // The path is percent-encoded already; the body (if any) is JSON.
    const auto res = client.request(call.method, call.path, call.body, headers);
    if (!res) {
        if (res.error().kind == api::HttpClientError::Kind::Connect)
            return fail_with("cannot connect to the API socket " + opts.api_socket + ": " + res.error().message);
        return fail_with("API socket " + opts.api_socket + ": " + res.error().message);
    }
    if (res->status < 200 || res->status > 299) return fail_with(error_message(*res));
    if (call.binary) return write_file(opts.file, res->body);
    if (call.print && !res->body.empty()) {
        const Json j = Json::parse(res->body, nullptr, false);
        const std::string out = j.is_discarded() ? res->body : j.dump(2, ' ', false, Json::error_handler_t::replace);
        std::printf("%s\n", out.c_str());
    }
    return 0;
}

}  // namespace enlighten::cli
