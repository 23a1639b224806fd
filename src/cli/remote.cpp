#include "cli/remote.hpp"

#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "api/router.hpp"
#include "common/fd.hpp"

namespace enlighten::cli {

namespace {

using Json = nlohmann::ordered_json;

int fail_with(const std::string& message) {
    std::fflush(stdout);
    std::fprintf(stderr, "enlighten: error: %s\n", message.c_str());
    return 1;
}

// httplib reports only "Connection"; ask the socket itself what is wrong.
std::string connect_error(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) return "the path is too long for a Unix socket";
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return std::strerror(errno);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return std::strerror(errno);
    return "connection failed";
}

struct Call {
    const char* method;  // GET, PUT, DELETE
    std::string path;
    std::string body;
    bool print = false;  // print the JSON answer
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
    return {"GET", base + "vmm.ping", {}, true};
}

// The server's {"error": ...}, or what there is.
std::string error_message(const httplib::Response& res) {
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
    return remote;
}

int run_remote(const RemoteOptions& opts) {
    ::signal(SIGPIPE, SIG_IGN);  // a server that closes early must not kill us mid-write
    const Call call = make_call(opts);

    httplib::ClientImpl client(opts.api_socket, 80);
    client.set_address_family(AF_UNIX);
    client.set_url_encode(false);  // the path is percent-encoded already
    client.set_keep_alive(false);
    client.set_connection_timeout(5, 0);
    client.set_read_timeout(60, 0);
    client.set_write_timeout(10, 0);
    const httplib::Headers headers = {{"Host", "localhost"}, {"Accept", "application/json"}};

    httplib::Result res = [&] {
        const std::string method = call.method;
        if (method == "GET") return client.Get(call.path, headers);
        if (method == "DELETE") return client.Delete(call.path, headers);
        return client.Put(call.path, headers, call.body, "application/json");
    }();
    if (!res) {
        if (res.error() == httplib::Error::Connection || res.error() == httplib::Error::ConnectionTimeout)
            return fail_with("cannot connect to the API socket " + opts.api_socket + ": " + connect_error(opts.api_socket));
        return fail_with("API socket " + opts.api_socket + ": " + httplib::to_string(res.error()));
    }
    if (res->status < 200 || res->status > 299) return fail_with(error_message(*res));
    if (call.print && !res->body.empty()) {
        const Json j = Json::parse(res->body, nullptr, false);
        const std::string out = j.is_discarded() ? res->body : j.dump(2, ' ', false, Json::error_handler_t::replace);
        std::printf("%s\n", out.c_str());
    }
    return 0;
}

}  // namespace enlighten::cli
