// The management API: the router's pieces, then a real ApiServer on a temporary Unix socket
// with a fake VmControl, exercised through our HTTP client (api::HttpClient) and through raw
// bytes; then the client's response parser on its own.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/log.hpp"

#include <CLI/CLI.hpp>

#include "api/http_client.hpp"
#include "api/router.hpp"
#include "api/server.hpp"
#include "api/web.hpp"
#include "api/websocket.hpp"
#include <fmt/format.h>

#include "cli/remote.hpp"
#include "common/fd.hpp"
#include "common/thread_stack.hpp"
#include "support/temp_dir.hpp"

using namespace enlighten;
using namespace enlighten::api;
using Json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// ---- a VmControl that records what it was asked ---------------------------------------

class FakeVm final : public VmControl {
public:
    std::vector<std::string> calls() {
        std::lock_guard lock(mu_);
        return calls_;
    }
    ShutdownRequest last_shutdown() {
        std::lock_guard lock(mu_);
        return last_shutdown_;
    }
    // The next mutating call fails with this error.
    void fail_next(ErrorKind kind, std::string message) {
        std::lock_guard lock(mu_);
        fail_ = ApiError{kind, std::move(message)};
    }
    HeartbeatInfo hb;

    VmInfo info() override {
        record("info");
        VmInfo i;
        i.state = "running";
        i.vm_id = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
        i.cpus = 2;
        i.memory_bytes = 512ULL << 20;
        i.kernel = "/boot/vmlinuz";
        i.cmdline = "console=ttyS0";
        i.hyperv = true;
        i.uptime_ms = 1234;
        i.vmbus_version = "5.3";
        i.devices.push_back({"heartbeat", "heartbeat", "57164f39-9115-4e78-ab55-382f3bd5422d",
                             "fd149e91-82e0-4a7d-afa6-2a4166cbd7c0"});
        i.channels.push_back({1, 0, "heartbeat", "57164f39-9115-4e78-ab55-382f3bd5422d",
                              "fd149e91-82e0-4a7d-afa6-2a4166cbd7c0", "open", 1, ChannelInfo::Ring{64, 32, 1, 0, 8192},
                              ChannelInfo::Ring{16, 16, 0, 4096, 8192}, true});
        i.channels.push_back({2, 0, "kvp", "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
                              "242ff919-07db-4180-9c2e-b86cb68c8c55", "offered", 0});
        NicInfo nic;
        nic.id = "net0";
        nic.mac = "00:15:5d:12:34:56";
        nic.backend = "slirp";
        nic.queues = 2;
        nic.max_queues = 4;
        nic.mtu = 1500;
        nic.guest_ready = true;
        nic.per_queue.push_back({0, 0, 10, 1000, 0, 20, 2000, 1});
        nic.per_queue.push_back({1, 1, 5, 500, 2, 0, 0, 0});
        i.nics.push_back(nic);
        i.gpadls = 3;
        i.vmm_rss_bytes = 10 << 20;
        i.guest_rss_bytes = 100 << 20;
        {
            std::lock_guard lock(mu_);
            if (mem_in_info) i.memory = mem;
        }
        ConsoleInfo c;
        c.video = "ready";
        c.video_version = "3.5";
        c.mode = DisplayMode{1024, 768, 4096};
        c.offered_width = 1024;
        c.offered_height = 768;
        c.vram_gpa = 32 << 20;
        c.vram_bytes = 4 << 20;
        c.keyboard = "ready";
        c.mouse = "negotiating";
        c.key_events = 12;
        c.guest_errors = {{"video_malformed", 1}};
        i.console = c;
        return i;
    }
    ApiResult<> shutdown(const ShutdownRequest& r) override {
        std::lock_guard lock(mu_);
        calls_.push_back(r.reboot ? "reboot" : "shutdown");
        last_shutdown_ = r;
        return take_failure();
    }
    ApiResult<> power_off() override { return mutate("power_off"); }
    ApiResult<> reset() override { return mutate("reset"); }
    HeartbeatInfo heartbeat() override {
        record("heartbeat");
        return hb;
    }
    ApiResult<> time_sync() override { return mutate("time_sync"); }
    ApiResult<std::vector<KvpEntry>> kvp_list(KvpPool pool) override {
        record("kvp_list " + std::to_string(static_cast<int>(pool)));
        std::lock_guard lock(mu_);
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        std::vector<KvpEntry> out;
        for (const auto& [k, v] : kvp_[static_cast<size_t>(pool)]) out.push_back({k, v});
        return out;
    }
    ApiResult<std::string> kvp_get(KvpPool pool, const std::string& key) override {
        record("kvp_get " + std::to_string(static_cast<int>(pool)) + " " + key);
        std::lock_guard lock(mu_);
        for (const auto& [k, v] : kvp_[static_cast<size_t>(pool)]) {
            if (k == key) return v;
        }
        return std::unexpected(ApiError{ErrorKind::NotFound, "no such key: " + key});
    }
    ApiResult<> kvp_set(KvpPool pool, const std::string& key, const std::string& value) override {
        record("kvp_set " + std::to_string(static_cast<int>(pool)) + " " + key + "=" + value);
        std::lock_guard lock(mu_);
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        auto& p = kvp_[static_cast<size_t>(pool)];
        for (auto& [k, v] : p) {
            if (k == key) {
                v = value;
                return {};
            }
        }
        p.emplace_back(key, value);
        return {};
    }
    ApiResult<> kvp_delete(KvpPool pool, const std::string& key) override {
        record("kvp_delete " + std::to_string(static_cast<int>(pool)) + " " + key);
        std::lock_guard lock(mu_);
        auto& p = kvp_[static_cast<size_t>(pool)];
        for (auto it = p.begin(); it != p.end(); ++it) {
            if (it->first == key) {
                p.erase(it);
                return {};
            }
        }
        return std::unexpected(ApiError{ErrorKind::NotFound, "no such key: " + key});
    }
    std::vector<IntegrationServiceInfo> integration_services() override {
        record("integration-services");
        return {{"heartbeat", true, "3.0", "OK"}, {"kvp", false, "", ""}};
    }
    ApiResult<IntegrationServiceInfo> set_integration_service(const std::string& name, bool enabled) override {
        record(fmt::format("integration-service {} {}", name, enabled ? "on" : "off"));
        if (name != "heartbeat" && name != "kvp")
            return std::unexpected(ApiError{ErrorKind::NotFound, "no integration service " + name});
        return IntegrationServiceInfo{name, enabled, "", enabled ? "No Contact" : ""};
    }
    ApiResult<DiskInfo> add_disk(const AddDiskRequest& r) override {
        record("add-disk " + r.path + " " + r.id + (r.read_only ? " ro" : "") +
               (r.controller.empty() ? "" : " on " + r.controller));
        if (r.path == "/missing") return std::unexpected(ApiError{ErrorKind::BadRequest, "no such file"});
        DiskInfo d;
        d.id = r.id.empty() ? "disk0" : r.id;
        d.controller = "scsi0";
        d.bus = "scsi";
        d.lun = 3;
        d.path = r.path;
        d.read_only = r.read_only;
        return d;
    }
    ApiResult<> remove_disk(const std::string& id) override {
        record("remove-disk " + id);
        if (id != "disk0") return std::unexpected(ApiError{ErrorKind::NotFound, "no disk " + id});
        return {};
    }
    ApiResult<> set_net_link(const std::string& id, bool up) override {
        record(fmt::format("net-link {} {}", id, up ? "up" : "down"));
        if (id != "net0") return std::unexpected(ApiError{ErrorKind::NotFound, "no NIC " + id});
        return {};
    }
    ApiResult<CopyFileResult> copy_file(const CopyFileRequest& r) override {
        record(fmt::format("copy-file {} {}{}{}", r.source, r.destination, r.overwrite ? " overwrite" : "",
                           r.create_path ? " create_path" : ""));
        std::lock_guard lock(mu_);
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        return CopyFileResult{3ULL << 20, 1500};
    }
    CopyFileProgress copy_file_progress() override {
        record("copy-file-status");
        return copy_progress;
    }
    CopyFileProgress copy_progress;
    ApiResult<MemoryInfo> memory() override {
        record("memory");
        return mem;
    }
    ApiResult<> set_memory(const MemoryUpdate& u) override {
        auto opt = [](const std::optional<uint64_t>& v) { return v ? std::to_string(*v) : std::string("-"); };
        record(fmt::format("memory-set target={}{} min={} max={} buffer={} dynamic={}", u.set_target ? "" : "(unset)",
                           opt(u.target), opt(u.min), opt(u.max), u.buffer ? std::to_string(*u.buffer) : "-",
                           u.dynamic ? (*u.dynamic ? "on" : "off") : "-"));
        if (u.target && *u.target > (4ULL << 30))
            return std::unexpected(ApiError{ErrorKind::BadRequest, "target above max"});
        return {};
    }
    ApiResult<Screenshot> screenshot() override {
        record("screenshot");
        std::lock_guard lock(mu_);
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        return Screenshot{2, 1, std::string("\x89PNG\r\n\x1a\n\0binary", 15)};
    }
    ApiResult<CheckpointInfo> checkpoint(const CheckpointRequest& r) override {
        record(fmt::format("checkpoint {} {} {}", r.name, r.consistency, r.freeze_timeout_s));
        std::lock_guard lock(mu_);
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        CheckpointInfo c;
        c.name = r.name;
        c.consistency = r.consistency;
        c.frozen_ms = 120;
        c.paused_ms = 4;
        c.disks.push_back({"disk0", "/vm/a.vhdx", "/vm/a_" + r.name + ".avhdx"});
        return c;
    }
    std::vector<CheckpointInfo> checkpoints() override {
        record("checkpoints");
        CheckpointInfo c;
        c.name = "one";
        c.consistency = "crash";
        return {c};
    }
    ApiResult<CheckpointInfo> merge_checkpoint() override {
        record("checkpoint-merge");
        return std::unexpected(ApiError{ErrorKind::Conflict, "there is no checkpoint to merge"});
    }
    ApiResult<> send_keys(const SendKeysRequest& r) override {
        std::string keys;
        for (const auto& k : r.keys) keys += " [" + k + "]";
        return mutate("send-keys text=" + r.text + keys);
    }
    ApiResult<> pointer(const PointerRequest& r) override {
        return mutate(fmt::format("pointer {},{} buttons={} wheel={} click={}", r.x, r.y, r.buttons, r.wheel, r.click));
    }
    bool mem_in_info = true;
    MemoryInfo mem = [] {
        MemoryInfo m;
        m.state = "ready";
        m.protocol_version = "2.0";
        m.startup = 1ULL << 30;
        m.min = 128ULL << 20;
        m.max = 2ULL << 30;
        m.buffer = 20;
        m.weight = 5000;
        m.current = 512ULL << 20;
        m.target = 512ULL << 20;
        m.explicit_target = true;
        m.ballooned = 512ULL << 20;
        m.can_balloon = true;
        m.status_reports = 7;
        m.last_report = MemoryReport{300ULL << 20, 700ULL << 20, 800, true};
        m.guest_errors = {{"duplicate_pages", 3}};
        return m;
    }();

private:
    void record(std::string call) {
        std::lock_guard lock(mu_);
        calls_.push_back(std::move(call));
    }
    ApiResult<> take_failure() {
        if (fail_) return std::unexpected(*std::exchange(fail_, std::nullopt));
        return {};
    }
    ApiResult<> mutate(std::string call) {
        std::lock_guard lock(mu_);
        calls_.push_back(std::move(call));
        return take_failure();
    }

    std::mutex mu_;
    std::vector<std::string> calls_;
    ShutdownRequest last_shutdown_;
    std::optional<ApiError> fail_;
    std::vector<std::pair<std::string, std::string>> kvp_[5];
};

// ---- clients ---------------------------------------------------------------------------

struct TempDir : test::TempDir {
    TempDir() : test::TempDir("enl-api") {}
};

UniqueFd connect_to(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
    return fd;
}

bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

// Reads until EOF or `timeout` (then returns what came).
std::string read_all(int fd, std::chrono::milliseconds timeout = 3s) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
    }
    return out;
}

struct RawResponse {
    int status = 0;
    std::string head;
    std::string body;
};

RawResponse parse_raw(const std::string& text) {
    RawResponse r;
    if (text.size() < 12 || !text.starts_with("HTTP/1.1 ")) return r;
    r.status = std::atoi(text.c_str() + 9);
    const auto end = text.find("\r\n\r\n");
    r.head = text.substr(0, end);
    if (end != std::string::npos) r.body = text.substr(end + 4);
    return r;
}

// One request on a fresh connection; "Connection: close" so the answer ends with EOF.
RawResponse raw_request(const std::string& sock, const std::string& bytes) {
    UniqueFd fd = connect_to(sock);
    if (!fd.valid() || !send_all(fd.get(), bytes)) return {};
    return parse_raw(read_all(fd.get()));
}

std::string error_of(const std::string& body) {
    const Json j = Json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_string()) return "<no error field: " + body + ">";
    return j["error"].get<std::string>();
}

class ApiServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        ::signal(SIGPIPE, SIG_IGN);
        enlighten::log::set_level(enlighten::log::Level::Warn);
        sock = dir.path + "/api.sock";
        ApiServerOptions o;
        o.socket_path = sock;
        o.limits.io_timeout = 2s;
        o.limits.keep_alive_timeout = 2s;
        server = std::make_unique<ApiServer>(vm, o);
        auto ok = server->start();
        ASSERT_TRUE(ok) << ok.error().message();
    }
    void TearDown() override { server->stop(); }

    std::unique_ptr<HttpClient> client() {
        HttpClientOptions o;
        o.io_timeout = 5s;
        return std::make_unique<HttpClient>(sock, o);
    }
    using Result = std::expected<HttpResponse, HttpClientError>;
    Result get(const std::string& path) { return client()->get(path); }
    Result put(const std::string& path, const std::string& body = "") { return client()->put(path, body); }
    Result del(const std::string& path) { return client()->del(path); }

    TempDir dir;
    std::string sock;
    FakeVm vm;
    std::unique_ptr<ApiServer> server;
};

}  // namespace

// ---- router pieces ---------------------------------------------------------------------

TEST(ApiRouter, PoolNamesAndNumbers) {
    EXPECT_EQ(parse_pool("external"), KvpPool::External);
    EXPECT_EQ(parse_pool("guest"), KvpPool::Guest);
    EXPECT_EQ(parse_pool("auto"), KvpPool::Auto);
    EXPECT_EQ(parse_pool("auto-external"), KvpPool::AutoExternal);
    EXPECT_EQ(parse_pool("auto-internal"), KvpPool::AutoInternal);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(parse_pool(std::to_string(i)), static_cast<KvpPool>(i));
    EXPECT_FALSE(parse_pool("5"));
    EXPECT_FALSE(parse_pool("Guest"));
    EXPECT_FALSE(parse_pool(""));
    EXPECT_FALSE(parse_pool("00"));
    EXPECT_EQ(pool_name(KvpPool::AutoExternal), "auto-external");
}

TEST(ApiRouter, PercentCoding) {
    EXPECT_EQ(percent_decode("a%20b%2Fc%c3%A9"), "a b/c\xc3\xa9");
    EXPECT_EQ(percent_decode("plain+text"), "plain+text");
    EXPECT_FALSE(percent_decode("%"));
    EXPECT_FALSE(percent_decode("%2"));
    EXPECT_FALSE(percent_decode("%G0"));
    EXPECT_FALSE(percent_decode("ab%"));
    EXPECT_EQ(percent_encode("a b/c\xc3\xa9~-._"), "a%20b%2Fc%C3%A9~-._");
    const std::string all = [] {
        std::string s;
        for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
        return s;
    }();
    EXPECT_EQ(percent_decode(percent_encode(all)), all);
}

TEST(ApiRouter, Utf16Length) {
    EXPECT_EQ(utf16_length(""), 0U);
    EXPECT_EQ(utf16_length("abc"), 3U);
    EXPECT_EQ(utf16_length("\xc3\xa9"), 1U);          // é
    EXPECT_EQ(utf16_length("\xe2\x82\xac"), 1U);      // €
    EXPECT_EQ(utf16_length("\xf0\x9f\x98\x80"), 2U);  // 😀: a surrogate pair
    EXPECT_FALSE(utf16_length("\xff"));
    EXPECT_FALSE(utf16_length("\x80"));
    EXPECT_FALSE(utf16_length("\xc3"));               // truncated
    EXPECT_FALSE(utf16_length("\xc0\xaf"));           // overlong '/'
    EXPECT_FALSE(utf16_length("\xe0\x80\xaf"));       // overlong
    EXPECT_FALSE(utf16_length("\xed\xa0\x80"));       // U+D800, a surrogate
    EXPECT_FALSE(utf16_length("\xf4\x90\x80\x80"));   // above U+10FFFF
    EXPECT_FALSE(utf16_length("\xe2\x28\xa1"));       // bad continuation
}

TEST(ApiRouter, KvpLimitsFollowTheWireFormat) {
    EXPECT_FALSE(check_kvp_key(std::string(255, 'k')));
    EXPECT_TRUE(check_kvp_key(std::string(256, 'k')));
    EXPECT_TRUE(check_kvp_key(""));
    EXPECT_TRUE(check_kvp_key(std::string("a\0b", 3)));
    // 170 x "€" = 170 UTF-16 units but 510 UTF-8 bytes: fits; 171 (513 bytes) would be
    // truncated by the guest kernel's UTF-8 conversion.
    std::string euro;
    for (int i = 0; i < 170; ++i) euro += "\xe2\x82\xac";
    EXPECT_FALSE(check_kvp_key(euro));
    EXPECT_TRUE(check_kvp_key(euro + "\xe2\x82\xac"));
    // 127 emoji = 254 units (fits), 128 = 256 units (does not).
    std::string emoji;
    for (int i = 0; i < 127; ++i) emoji += "\xf0\x9f\x98\x80";
    EXPECT_FALSE(check_kvp_key(emoji));
    EXPECT_TRUE(check_kvp_key(emoji + "\xf0\x9f\x98\x80"));

    EXPECT_FALSE(check_kvp_value(""));
    EXPECT_FALSE(check_kvp_value(std::string(1023, 'v')));
    EXPECT_TRUE(check_kvp_value(std::string(1024, 'v')));
    EXPECT_TRUE(check_kvp_value("\xff"));
    const auto why = check_kvp_value(std::string(1024, 'v'));
    ASSERT_TRUE(why);
    EXPECT_NE(why->find("1024 UTF-16"), std::string::npos) << *why;
}

TEST(ApiRouter, ErrorKindsMapToStatuses) {
    EXPECT_EQ(http_status(ErrorKind::BadRequest), 400);
    EXPECT_EQ(http_status(ErrorKind::NotFound), 404);
    EXPECT_EQ(http_status(ErrorKind::Conflict), 409);
    EXPECT_EQ(http_status(ErrorKind::Unavailable), 503);
    EXPECT_EQ(http_status(ErrorKind::Internal), 500);
}

TEST(ApiRouter, InvalidUtf8FromTheGuestIsReplacedNotThrown) {
    FakeVm vm;
    ASSERT_TRUE(vm.kvp_set(KvpPool::Auto, "HostName", "bad\xff"));
    const HttpReply r = handle_request(vm, "GET", "/api/v1/vm.kvp/auto", "");
    EXPECT_EQ(r.status, 200);
    const Json j = Json::parse(r.body);
    EXPECT_EQ(j["entries"][0]["value"], "bad\xef\xbf\xbd");
}

// ---- the server, endpoint by endpoint --------------------------------------------------

TEST_F(ApiServerTest, Ping) {
    auto r = get("/api/v1/vmm.ping");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->header("Content-Type"), "application/json");
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"version":"0.1.0","api_version":1})"));
}

TEST_F(ApiServerTest, Info) {
    auto r = get("/api/v1/vm.info");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    const Json j = Json::parse(r->body);
    EXPECT_EQ(j["state"], "running");
    EXPECT_EQ(j["cpus"], 2);
    EXPECT_EQ(j["memory_bytes"], 512ULL << 20);
    EXPECT_EQ(j["kernel"], "/boot/vmlinuz");
    EXPECT_EQ(j["cmdline"], "console=ttyS0");
    EXPECT_EQ(j["hyperv"], true);
    EXPECT_EQ(j["uptime_ms"], 1234);
    EXPECT_EQ(j["vmbus_version"], "5.3");
    EXPECT_EQ(j["gpadls"], 3);
    EXPECT_EQ(j["vmm_rss_bytes"], 10 << 20);
    EXPECT_EQ(j["guest_rss_bytes"], 100 << 20);
    ASSERT_TRUE(j["channels"].is_array());
    ASSERT_EQ(j["channels"].size(), 2U);
    EXPECT_EQ(j["channels"][0], Json::parse(R"({"relid":1,"index":0,"name":"heartbeat",
        "class_id":"57164f39-9115-4e78-ab55-382f3bd5422d","instance_id":"fd149e91-82e0-4a7d-afa6-2a4166cbd7c0",
        "state":"open","target_vp":1,"rings":{
        "to_host":{"write_index":64,"read_index":32,"interrupt_mask":1,"pending_send_size":0,"size":8192},
        "to_guest":{"write_index":16,"read_index":16,"interrupt_mask":0,"pending_send_size":4096,"size":8192},
        "waiting_for_room":true}})"));
    EXPECT_FALSE(j["channels"][1].contains("rings"));  // not open: the host holds no rings
    ASSERT_EQ(j["devices"].size(), 1U);
    EXPECT_EQ(j["devices"][0], Json::parse(R"({"id":"heartbeat","kind":"heartbeat",
        "class_id":"57164f39-9115-4e78-ab55-382f3bd5422d","instance_id":"fd149e91-82e0-4a7d-afa6-2a4166cbd7c0"})"));
    EXPECT_TRUE(j["disks"].is_array());
    EXPECT_TRUE(j["storage_channels"].is_array());
    EXPECT_TRUE(j["memory"].is_object());
    EXPECT_EQ(j["vm_id"], "6ba7b810-9dad-41d1-80b4-00c04fd430c8");
    EXPECT_EQ(j["console"], Json::parse(R"({"video":"ready","video_version":"3.5",
        "mode":{"width":1024,"height":768,"pitch":4096},"offered":{"width":1024,"height":768},
        "vram_gpa":33554432,"vram_bytes":4194304,"vram_in_mmio":false,"keyboard":"ready","mouse":"negotiating",
        "key_events":12,"pointer_reports":0,"guest_errors":{"video_malformed":1}})"));
    EXPECT_EQ(j.size(), 19U) << j.dump();
}

TEST_F(ApiServerTest, ShutdownWithoutBodyUsesDefaults) {
    auto r = put("/api/v1/vm.shutdown");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 204);
    EXPECT_TRUE(r->body.empty());
    EXPECT_FALSE(r->has_header("Content-Length"));
    EXPECT_EQ(vm.calls(), std::vector<std::string>{"shutdown"});
    const auto s = vm.last_shutdown();
    EXPECT_FALSE(s.reboot);
    EXPECT_EQ(s.timeout_s, 30U);
    EXPECT_EQ(s.reason, "");
}

TEST_F(ApiServerTest, ShutdownWithTimeoutAndReason) {
    auto r = put("/api/v1/vm.shutdown", R"({"timeout_s": 5, "reason": "host maintenance"})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 204);
    const auto s = vm.last_shutdown();
    EXPECT_FALSE(s.reboot);
    EXPECT_EQ(s.timeout_s, 5U);
    EXPECT_EQ(s.reason, "host maintenance");
}

TEST_F(ApiServerTest, Reboot) {
    auto r = put("/api/v1/vm.reboot", R"({"timeout_s": 7})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 204);
    EXPECT_EQ(vm.calls(), std::vector<std::string>{"reboot"});
    EXPECT_TRUE(vm.last_shutdown().reboot);
    EXPECT_EQ(vm.last_shutdown().timeout_s, 7U);
}

TEST_F(ApiServerTest, PowerOffResetTimeSync) {
    EXPECT_EQ(put("/api/v1/vm.power-off")->status, 204);
    EXPECT_EQ(put("/api/v1/vm.reset", "{}")->status, 204);
    EXPECT_EQ(put("/api/v1/vm.time-sync")->status, 204);
    EXPECT_EQ(vm.calls(), (std::vector<std::string>{"power_off", "reset", "time_sync"}));
    auto r = put("/api/v1/vm.reset", R"({"force": true})");
    EXPECT_EQ(r->status, 400);
    EXPECT_EQ(error_of(r->body), "this endpoint takes no fields");
}

TEST_F(ApiServerTest, Heartbeat) {
    auto r = get("/api/v1/vm.heartbeat");
    ASSERT_TRUE(r);
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"state":"unknown","sequence":0,"last_reply_ms":null})"));
    vm.hb = {HeartbeatState::Healthy, 42, 1500};
    EXPECT_EQ(Json::parse(get("/api/v1/vm.heartbeat")->body),
              Json::parse(R"({"state":"healthy","sequence":42,"last_reply_ms":1500})"));
    vm.hb = {HeartbeatState::Lost, 43, 90000};
    EXPECT_EQ(Json::parse(get("/api/v1/vm.heartbeat")->body)["state"], "lost");
}

TEST_F(ApiServerTest, KvpSetGetListDelete) {
    auto r = put("/api/v1/vm.kvp/external/Owner", R"({"value": "ops team"})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 204);
    // A key with a space, a slash and a non-ASCII letter, percent-encoded.
    EXPECT_EQ(put("/api/v1/vm.kvp/0/a%20b%2Fc%C3%A9", R"({"value": "x"})")->status, 204);

    r = get("/api/v1/vm.kvp/external/Owner");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"key":"Owner","value":"ops team"})"));
    r = get("/api/v1/vm.kvp/external/a%20b%2Fc%C3%A9");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(Json::parse(r->body)["key"], "a b/c\xc3\xa9");

    r = get("/api/v1/vm.kvp/0");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"pool":"external","entries":[
        {"key":"Owner","value":"ops team"},{"key":"a b/c\u00e9","value":"x"}]})"));

    EXPECT_EQ(del("/api/v1/vm.kvp/external/Owner")->status, 204);
    r = get("/api/v1/vm.kvp/external/Owner");
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(error_of(r->body), "no such key: Owner");
    EXPECT_EQ(del("/api/v1/vm.kvp/external/Owner")->status, 404);

    const auto calls = vm.calls();
    EXPECT_EQ(calls.front(), "kvp_set 0 Owner=ops team");
    EXPECT_EQ(calls[1], "kvp_set 0 a b/c\xc3\xa9=x");
}

TEST_F(ApiServerTest, AddAndRemoveDisks) {
    auto r = put("/api/v1/vm.add-disk", R"({"path": "/srv/a.img", "id": "data", "readonly": true})");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    const auto j = Json::parse(r->body);
    EXPECT_EQ(j["id"], "data");
    EXPECT_EQ(j["controller"], "scsi0");
    EXPECT_EQ(j["lun"], 3);
    EXPECT_EQ(j["read_only"], true);
    // Bad requests are refused before the VM sees them; the VM's own refusal keeps its status.
    EXPECT_EQ(put("/api/v1/vm.add-disk", R"({"id": "x"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.add-disk", R"({"path": 7})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.add-disk", R"({"path": "/a", "readonly": "yes"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.add-disk", R"({"path": "/a", "bus": "ide"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.add-disk", "")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.add-disk", R"({"path": "/a", "controller": 1})")->status, 400);
    r = put("/api/v1/vm.add-disk", R"({"path": "/srv/b.img", "controller": "scsi1"})");
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(vm.calls().back(), "add-disk /srv/b.img  on scsi1");
    r = put("/api/v1/vm.add-disk", R"({"path": "/missing"})");
    EXPECT_EQ(r->status, 400);
    EXPECT_EQ(error_of(r->body), "no such file");
    EXPECT_EQ(get("/api/v1/vm.add-disk")->status, 405);
    EXPECT_EQ(put("/api/v1/vm.remove-disk", R"({"id": "disk0"})")->status, 204);
    r = put("/api/v1/vm.remove-disk", R"({"id": "nope"})");
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(error_of(r->body), "no disk nope");
    EXPECT_EQ(put("/api/v1/vm.remove-disk", R"({})")->status, 400);
    const auto calls = vm.calls();
    EXPECT_EQ(calls.front(), "add-disk /srv/a.img data ro");
    EXPECT_EQ(calls.back(), "remove-disk nope");
}

TEST_F(ApiServerTest, NicsInInfoAndLinkControl) {
    auto r = get("/api/v1/vm.info");
    ASSERT_EQ(r->status, 200);
    const auto nic = Json::parse(r->body)["nics"][0];
    EXPECT_EQ(nic["id"], "net0");
    EXPECT_EQ(nic["mac"], "00:15:5d:12:34:56");
    EXPECT_EQ(nic["backend"], "slirp");
    EXPECT_EQ(nic["link_up"], true);
    EXPECT_EQ(nic["queues"], 2);
    EXPECT_EQ(nic["per_queue"].size(), 2U);
    EXPECT_EQ(nic["per_queue"][0]["tx_bytes"], 2000);
    EXPECT_EQ(nic["per_queue"][1]["rx_dropped"], 2);
    EXPECT_EQ(put("/api/v1/vm.net-link", R"({"id": "net0", "up": false})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "net-link net0 down");
    EXPECT_EQ(put("/api/v1/vm.net-link", R"({"id": "net0", "up": true})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "net-link net0 up");
    r = put("/api/v1/vm.net-link", R"({"id": "net9", "up": true})");
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(error_of(r->body), "no NIC net9");
    EXPECT_EQ(put("/api/v1/vm.net-link", R"({"id": "net0", "up": "no"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.net-link", R"({"id": "net0"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.net-link", R"({"up": true, "speed": 1})")->status, 400);
    EXPECT_EQ(get("/api/v1/vm.net-link")->status, 405);
}

TEST_F(ApiServerTest, IntegrationServicesListAndSwitch) {
    auto r = get("/api/v1/vm.integration-services");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"services": [
        {"name": "heartbeat", "enabled": true, "version": "3.0", "status": "OK"},
        {"name": "kvp", "enabled": false, "version": null, "status": null}]})"));
    r = put("/api/v1/vm.integration-services/heartbeat", R"({"enabled": false})");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(vm.calls().back(), "integration-service heartbeat off");
    EXPECT_EQ(Json::parse(r->body)["enabled"], false);
    r = put("/api/v1/vm.integration-services/kvp", R"({"enabled": true})");
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(Json::parse(r->body)["status"], "No Contact");
    r = put("/api/v1/vm.integration-services/vss", R"({"enabled": true})");
    EXPECT_EQ(r->status, 404);
    EXPECT_EQ(error_of(r->body), "no integration service vss");
    // names that are not plain words never reach the VM
    const size_t calls = vm.calls().size();
    EXPECT_EQ(put("/api/v1/vm.integration-services/kv%00p", R"({"enabled": true})")->status, 404);
    EXPECT_EQ(put("/api/v1/vm.integration-services/", R"({"enabled": true})")->status, 404);
    EXPECT_EQ(vm.calls().size(), calls);
    EXPECT_EQ(put("/api/v1/vm.integration-services/kvp", R"({"enabled": "yes"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.integration-services/kvp", R"({})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.integration-services/kvp", R"({"enabled": true, "x": 1})")->status, 400);
    EXPECT_EQ(get("/api/v1/vm.integration-services/kvp")->status, 405);
    EXPECT_EQ(put("/api/v1/vm.integration-services", "")->status, 405);
}

TEST_F(ApiServerTest, MemoryGetPutAndInVmInfo) {
    auto r = get("/api/v1/vm.memory");
    ASSERT_EQ(r->status, 200);
    auto j = Json::parse(r->body);
    EXPECT_EQ(j["state"], "ready");
    EXPECT_EQ(j["protocol_version"], "2.0");
    EXPECT_EQ(j["startup"], 1ULL << 30);
    EXPECT_EQ(j["current"], 512ULL << 20);
    EXPECT_EQ(j["target"], 512ULL << 20);
    EXPECT_EQ(j["ballooned"], 512ULL << 20);
    EXPECT_EQ(j["hot_add_disabled"], nullptr);
    EXPECT_EQ(j["status_reports"], 7);
    EXPECT_EQ(j["last_report"]["committed"], 700ULL << 20);
    EXPECT_EQ(j["last_report"]["age_ms"], 800);
    EXPECT_EQ(j["guest_errors"]["duplicate_pages"], 3);
    // A size as bytes or with a unit; null drops the explicit target.
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"target": "512M"})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "memory-set target=536870912 min=- max=- buffer=- dynamic=-");
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"target": 1073741824})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "memory-set target=1073741824 min=- max=- buffer=- dynamic=-");
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"target": null})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "memory-set target=- min=- max=- buffer=- dynamic=-");
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"min": "256M", "max": "2G", "buffer": 30, "dynamic": true})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "memory-set target=(unset)- min=268435456 max=2147483648 buffer=30 dynamic=on");
    // The VM refuses; bad bodies never reach it.
    r = put("/api/v1/vm.memory", R"({"target": "8G"})");
    EXPECT_EQ(r->status, 400);
    EXPECT_EQ(error_of(r->body), "target above max");
    const size_t calls = vm.calls().size();
    EXPECT_EQ(put("/api/v1/vm.memory", R"({})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", "")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"target": "lots"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"target": -5})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"buffer": 5000})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"dynamic": "yes"})")->status, 400);
    EXPECT_EQ(put("/api/v1/vm.memory", R"({"size": "1G"})")->status, 400);
    EXPECT_EQ(vm.calls().size(), calls);
    EXPECT_EQ(del("/api/v1/vm.memory")->status, 405);
    // vm.info carries the same figures.
    auto info = Json::parse(get("/api/v1/vm.info")->body);
    EXPECT_EQ(info["memory"], j);
}

TEST_F(ApiServerTest, ScreenshotIsAPngBody) {
    auto r = get("/api/v1/vm.screenshot");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->header("Content-Type"), "image/png");
    EXPECT_EQ(r->body, std::string("\x89PNG\r\n\x1a\n\0binary", 15));
    EXPECT_EQ(put("/api/v1/vm.screenshot")->status, 405);
    vm.fail_next(ErrorKind::Conflict, "the guest has no framebuffer");
    r = get("/api/v1/vm.screenshot");
    EXPECT_EQ(r->status, 409);
    EXPECT_EQ(r->header("Content-Type"), "application/json");
    EXPECT_EQ(error_of(r->body), "the guest has no framebuffer");
}

TEST_F(ApiServerTest, SendKeysAndPointer) {
    EXPECT_EQ(put("/api/v1/vm.send-keys", R"({"text": "root\n"})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "send-keys text=root\n");
    EXPECT_EQ(put("/api/v1/vm.send-keys", R"({"keys": ["ctrl+alt+delete", "Return"]})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "send-keys text= [ctrl+alt+delete] [Return]");
    EXPECT_EQ(put("/api/v1/vm.pointer", R"({"x": 10, "y": 20})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "pointer 10,20 buttons=0 wheel=0 click=0");
    EXPECT_EQ(put("/api/v1/vm.pointer", R"({"x": 0, "y": 5, "buttons": ["left", "middle"], "wheel": -3,
                                            "click": "right"})")->status, 204);
    EXPECT_EQ(vm.calls().back(), "pointer 0,5 buttons=5 wheel=-3 click=2");
    // Bad bodies never reach the VM.
    const size_t calls = vm.calls().size();
    for (const char* body : {"", "{}", R"({"text": 5})", R"({"keys": "a"})", R"({"keys": [""]})", R"({"keys": [1]})",
                             R"({"text": "", "keys": []})", R"({"text": "a", "extra": 1})"})
        EXPECT_EQ(put("/api/v1/vm.send-keys", body)->status, 400) << body;
    EXPECT_EQ(put("/api/v1/vm.send-keys", Json{{"text", std::string(kMaxSendKeysText + 1, 'a')}}.dump())->status, 400);
    EXPECT_EQ(put("/api/v1/vm.send-keys", Json{{"keys", std::vector<std::string>(kMaxSendKeysKeys + 1, "a")}}.dump())
                  ->status,
              400);
    for (const char* body : {"", R"({"x": 1})", R"({"x": -1, "y": 1})", R"({"x": 1.5, "y": 1})",
                             R"({"x": 1, "y": 1, "buttons": ["thumb"]})", R"({"x": 1, "y": 1, "buttons": "left"})",
                             R"({"x": 1, "y": 1, "wheel": 128})", R"({"x": 1, "y": 1, "wheel": -9999999999999})",
                             R"({"x": 1, "y": 1, "click": 1})", R"({"x": 1, "y": 1, "z": 1})"})
        EXPECT_EQ(put("/api/v1/vm.pointer", body)->status, 400) << body;
    EXPECT_EQ(vm.calls().size(), calls);
    EXPECT_EQ(get("/api/v1/vm.send-keys")->status, 405);
    EXPECT_EQ(get("/api/v1/vm.pointer")->status, 405);
    vm.fail_next(ErrorKind::BadRequest, "unknown key 'foo'");
    auto r = put("/api/v1/vm.send-keys", R"({"keys": ["foo"]})");
    EXPECT_EQ(r->status, 400);
    EXPECT_EQ(error_of(r->body), "unknown key 'foo'");
}

TEST_F(ApiServerTest, KvpPoolsByName) {
    const char* names[] = {"external", "guest", "auto", "auto-external", "auto-internal"};
    for (int i = 0; i < 5; ++i) {
        auto r = get(std::string("/api/v1/vm.kvp/") + names[i]);
        ASSERT_EQ(r->status, 200);
        EXPECT_EQ(Json::parse(r->body)["pool"], names[i]);
        EXPECT_EQ(vm.calls().back(), "kvp_list " + std::to_string(i));
    }
}

TEST_F(ApiServerTest, VmControlErrorsMapToStatuses) {
    const std::pair<ErrorKind, int> cases[] = {{ErrorKind::BadRequest, 400},
                                               {ErrorKind::NotFound, 404},
                                               {ErrorKind::Conflict, 409},
                                               {ErrorKind::Unavailable, 503},
                                               {ErrorKind::Internal, 500}};
    for (const auto& [kind, status] : cases) {
        vm.fail_next(kind, "nope " + std::to_string(status));
        auto r = put("/api/v1/vm.time-sync");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, status);
        EXPECT_EQ(r->header("Content-Type"), "application/json");
        EXPECT_EQ(error_of(r->body), "nope " + std::to_string(status));
    }
    vm.fail_next(ErrorKind::Conflict, "the KVP service is not connected");
    auto r = get("/api/v1/vm.kvp/guest");
    EXPECT_EQ(r->status, 409);
    EXPECT_EQ(error_of(r->body), "the KVP service is not connected");
}

TEST_F(ApiServerTest, CopyFileRunsGetsProgressAndMapsErrors) {
    auto r = put("/api/v1/vm.copy-file", R"({"source":"/host/a b","destination":"/root/x","create_path":true})");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(Json::parse(r->body), Json::parse(R"({"source":"/host/a b","destination":"/root/x","bytes":3145728,
        "elapsed_ms":1500,"mib_per_s":2.0})"));
    vm.copy_progress = {"running", "/host/a b", "/root/x", 1000, 600, 500, 250, ""};
    r = get("/api/v1/vm.copy-file");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    const Json j = Json::parse(r->body);
    EXPECT_EQ(j["state"], "running");
    EXPECT_EQ(j["bytes_total"], 1000);
    EXPECT_EQ(j["bytes_sent"], 600);
    EXPECT_EQ(j["bytes_written"], 500);
    EXPECT_EQ(j["elapsed_ms"], 250);
    EXPECT_DOUBLE_EQ(j["mib_per_s"].get<double>(), 500.0 / (1 << 20) / 0.25);
    EXPECT_TRUE(j["error"].is_null());
    vm.copy_progress = {"failed", "/h", "/g", 10, 10, 0, 0, "the guest's disk is full"};
    r = get("/api/v1/vm.copy-file");
    EXPECT_EQ(Json::parse(r->body)["error"], "the guest's disk is full");
    EXPECT_TRUE(Json::parse(r->body)["mib_per_s"].is_null());
    // The guest's refusal, and what the VMM says of the state, reach the client as they are.
    vm.fail_next(ErrorKind::Conflict, "/root/x exists in the guest and overwrite is off");
    r = put("/api/v1/vm.copy-file", R"({"source":"/h","destination":"/root/x"})");
    EXPECT_EQ(r->status, 409);
    EXPECT_EQ(error_of(r->body), "/root/x exists in the guest and overwrite is off");
    r = del("/api/v1/vm.copy-file");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 405);
    EXPECT_EQ(r->header("Allow"), "GET, HEAD, PUT");
    EXPECT_EQ(vm.calls(), (std::vector<std::string>{"copy-file /host/a b /root/x create_path", "copy-file-status",
                                                    "copy-file-status", "copy-file /h /root/x"}));
}

TEST_F(ApiServerTest, CopyFileBodiesAreChecked) {
    const std::pair<std::string, const char*> cases[] = {
        {"", "a JSON object body is required"},
        {R"({"destination":"/x"})", "source (a string) is required"},
        {R"({"source":"/x"})", "destination (a string) is required"},
        {R"({"source":5,"destination":"/x"})", "source (a string) is required"},
        {R"({"source":"","destination":"/x"})", "source is empty"},
        {R"({"source":"/a","destination":"/x","overwrite":"yes"})", "overwrite must be true or false"},
        {R"({"source":"/a","destination":"/x","create_path":1})", "create_path must be true or false"},
        {R"({"source":"/a","destination":"/x","mode":1})", "unknown field 'mode'"},
        {R"({"source":"/a\u0000b","destination":"/x"})", "source contains a NUL character"},
        {R"({"source":"/a","destination":")" + std::string(4097, 'd') + "\"}", "destination is longer than 4096 bytes"},
    };
    for (const auto& [body, part] : cases) {
        auto r = put("/api/v1/vm.copy-file", body);
        ASSERT_TRUE(r) << body;
        EXPECT_EQ(r->status, 400) << body;
        EXPECT_NE(error_of(r->body).find(part), std::string::npos) << body << " -> " << r->body;
    }
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, CheckpointTakesListsAndMerges) {
    auto r = put("/api/v1/vm.checkpoint", R"({"name":"before-upgrade","consistency":"crash","freeze_timeout_s":5})");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    Json j = Json::parse(r->body);
    EXPECT_EQ(j["name"], "before-upgrade");
    EXPECT_EQ(j["consistency"], "crash");
    EXPECT_EQ(j["frozen_ms"], 120);
    EXPECT_EQ(j["paused_ms"], 4);
    EXPECT_EQ(j["disks"][0]["id"], "disk0");
    EXPECT_EQ(j["disks"][0]["parent"], "/vm/a.vhdx");
    EXPECT_EQ(j["disks"][0]["image"], "/vm/a_before-upgrade.avhdx");
    EXPECT_TRUE(j["warning"].is_null());
    r = put("/api/v1/vm.checkpoint", R"({"name":"n1"})");  // application consistency and 60 s by default
    EXPECT_EQ(r->status, 200);
    vm.fail_next(ErrorKind::Conflict, "VSS is not available");
    r = put("/api/v1/vm.checkpoint", R"({"name":"n2"})");
    EXPECT_EQ(r->status, 409);
    EXPECT_EQ(error_of(r->body), "VSS is not available");
    r = get("/api/v1/vm.checkpoints");
    EXPECT_EQ(Json::parse(r->body)["checkpoints"][0]["name"], "one");
    r = put("/api/v1/vm.checkpoint-merge");
    EXPECT_EQ(r->status, 409);
    EXPECT_EQ(put("/api/v1/vm.checkpoints")->status, 405);
    EXPECT_EQ(get("/api/v1/vm.checkpoint")->status, 405);
    EXPECT_EQ(put("/api/v1/vm.checkpoint-merge", R"({"x":1})")->status, 400);
    EXPECT_EQ(vm.calls(), (std::vector<std::string>{"checkpoint before-upgrade crash 5", "checkpoint n1 application 60",
                                                    "checkpoint n2 application 60", "checkpoints", "checkpoint-merge"}));
}

TEST_F(ApiServerTest, CheckpointBodiesAreChecked) {
    const std::pair<std::string, const char*> cases[] = {
        {"", "a JSON object body is required"},
        {R"({})", "name (a string) is required"},
        {R"({"name":""})", "name must have 1 to 64 characters"},
        {R"({"name":")" + std::string(65, 'n') + R"("})", "name must have 1 to 64 characters"},
        {R"({"name":"a/b"})", "name may hold only letters, digits"},
        {R"({"name":"a b"})", "name may hold only letters, digits"},
        {R"({"name":".hidden"})", "name must not start with '.'"},
        {R"({"name":"a","consistency":"full"})", "consistency must be"},
        {R"({"name":"a","freeze_timeout_s":0})", "freeze_timeout_s must be an integer between 1 and 900"},
        {R"({"name":"a","freeze_timeout_s":901})", "freeze_timeout_s must be an integer between 1 and 900"},
        {R"({"name":"a","freeze_timeout_s":-3})", "freeze_timeout_s must be an integer between 1 and 900"},
        {R"({"name":"a","memory":true})", "unknown field 'memory'"},
    };
    for (const auto& [body, part] : cases) {
        auto r = put("/api/v1/vm.checkpoint", body);
        ASSERT_TRUE(r) << body;
        EXPECT_EQ(r->status, 400) << body;
        EXPECT_NE(error_of(r->body).find(part), std::string::npos) << body << " -> " << r->body;
    }
    EXPECT_TRUE(vm.calls().empty());
}

// ---- bad input -------------------------------------------------------------------------

TEST_F(ApiServerTest, MalformedJsonAndWrongTypes) {
    struct Case {
        const char* path;
        const char* body;
        const char* error_part;
    };
    const Case cases[] = {
        {"/api/v1/vm.shutdown", "{\"timeout_s\": ", "invalid JSON body"},
        {"/api/v1/vm.shutdown", "[1,2]", "must be a JSON object"},
        {"/api/v1/vm.shutdown", R"({"timeout_s": "5"})", "timeout_s must be an integer between 1 and 3600"},
        {"/api/v1/vm.shutdown", R"({"timeout_s": 2.5})", "timeout_s must be an integer between 1 and 3600"},
        {"/api/v1/vm.shutdown", R"({"timeout_s": 0})", "timeout_s must be an integer between 1 and 3600"},
        {"/api/v1/vm.shutdown", R"({"timeout_s": -1})", "timeout_s must be an integer between 1 and 3600"},
        {"/api/v1/vm.shutdown", R"({"timeout_s": 99999999999999999999})", "timeout_s must be an integer between 1 and 3600"},
        {"/api/v1/vm.shutdown", R"({"reason": 5})", "reason must be a string"},
        {"/api/v1/vm.reboot", R"({"timeout": 5})", "unknown field 'timeout'"},
        {"/api/v1/vm.kvp/external/k", R"({"value": 5})", "value must be a string"},
        {"/api/v1/vm.kvp/external/k", R"({"val": "x"})", "unknown field 'val'"},
        {"/api/v1/vm.kvp/external/k", R"({})", "missing field 'value'"},
        {"/api/v1/vm.kvp/external/k", "", "a JSON object body is required"},
        {"/api/v1/vm.kvp/external/k", "\"x\"", "must be a JSON object"},
        {"/api/v1/vm.kvp/external/k", "{\"value\": \"\xff\"}", "invalid JSON body"},
    };
    for (const auto& c : cases) {
        auto r = put(c.path, c.body);
        ASSERT_TRUE(r) << c.body;
        EXPECT_EQ(r->status, 400) << c.body;
        EXPECT_NE(error_of(r->body).find(c.error_part), std::string::npos) << c.body << " -> " << r->body;
    }
    EXPECT_TRUE(vm.calls().empty());
}

// The VMM's threads have 1 MiB stacks (common/thread_stack.hpp). Deeply nested JSON, as
// deep as the body limit allows, must be answered on such threads without exhausting them.
class ApiServerSmallStacks : public ApiServerTest {
protected:
    void SetUp() override {
        ASSERT_TRUE(limit_thread_stacks());  // before the server's threads start
        ApiServerTest::SetUp();
    }
};

TEST_F(ApiServerSmallStacks, DeeplyNestedBodiesAreRefusedOnOneMegabyteStacks) {
    size_t stack = 0;
    std::thread([&] {
        pthread_attr_t attr;
        ASSERT_EQ(::pthread_getattr_np(::pthread_self(), &attr), 0);
        ::pthread_attr_getstacksize(&attr, &stack);
        ::pthread_attr_destroy(&attr);
    }).join();
    EXPECT_GE(stack, kThreadStackBytes);
    EXPECT_LT(stack, kThreadStackBytes + (size_t{64} << 10));  // not glibc's 8 MiB

    const size_t depth = 30000;  // 60,000 brackets: just inside the 64 KiB body limit
    const std::string arrays = std::string(depth, '[') + std::string(depth, ']');
    std::string objects;
    for (size_t i = 0; i < depth / 3; ++i) objects += "{\"a\":";
    objects += "1" + std::string(depth / 3, '}');
    struct Case {
        const char* path;
        std::string body;
        const char* error_part;
    };
    const Case cases[] = {
        {"/api/v1/vm.kvp/external/k", "{\"value\": " + arrays + "}", "value must be a string"},
        {"/api/v1/vm.shutdown", "{\"reason\": " + arrays + "}", "reason must be a string"},
        {"/api/v1/vm.shutdown", arrays, "must be a JSON object"},
        {"/api/v1/vm.shutdown", objects, "unknown field 'a'"},
        {"/api/v1/vm.shutdown", std::string(depth, '['), "invalid JSON body"},
    };
    for (const auto& c : cases) {
        ASSERT_LE(c.body.size(), 64U * 1024);
        auto r = put(c.path, c.body);
        ASSERT_TRUE(r) << c.path;
        EXPECT_EQ(r->status, 400) << c.path;
        EXPECT_NE(error_of(r->body).find(c.error_part), std::string::npos) << r->body.substr(0, 200);
    }
    EXPECT_EQ(get("/api/v1/vmm.ping")->status, 200);
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, OversizeBodyIs413) {
    const std::string body = R"({"value": ")" + std::string(70000, 'v') + "\"}";
    auto r = raw_request(sock, "PUT /api/v1/vm.kvp/external/k HTTP/1.1\r\nHost: localhost\r\nContent-Length: " +
                                   std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_EQ(r.status, 413);
    EXPECT_NE(error_of(r.body).find("at most 65536"), std::string::npos) << r.body;
    // With "Expect: 100-continue" the refusal comes before the body is sent.
    r = raw_request(sock, "PUT /api/v1/vm.kvp/external/k HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                          "Content-Length: 1000000\r\n\r\n");
    EXPECT_EQ(r.status, 413);
    // Through our client too (the server drains briefly so the client sees the answer).
    auto c = put("/api/v1/vm.kvp/external/k", body);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->status, 413);
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, OversizeHeadersAre431) {
    auto r = raw_request(sock, "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n" +
                                   std::string("X-Big: ") + std::string(8000, 'h') + "\r\nX-Big2: " +
                                   std::string(8000, 'h') + "\r\nX-Big3: " + std::string(8000, 'h') +
                                   "\r\n\r\n");
    EXPECT_EQ(r.status, 431);
    EXPECT_NE(error_of(r.body).find("exceed 16384 bytes"), std::string::npos) << r.body;
    // Many small headers count as well.
    std::string many = "GET /api/v1/vmm.ping HTTP/1.1\r\n";
    for (int i = 0; i < 2000; ++i) many += "X-H" + std::to_string(i) + ": v\r\n";
    r = raw_request(sock, many + "\r\n");
    EXPECT_EQ(r.status, 431);
}

TEST_F(ApiServerTest, BadPoolKeyAndEncoding) {
    struct Case {
        std::string path;
        const char* error_part;
    };
    const Case cases[] = {
        {"/api/v1/vm.kvp/nosuchpool", "unknown KVP pool 'nosuchpool'"},
        {"/api/v1/vm.kvp/5/key", "unknown KVP pool '5'"},
        {"/api/v1/vm.kvp/external/" + std::string(256, 'k'), "the KVP key is too long: 256 UTF-16"},
        {"/api/v1/vm.kvp/external/%FF%FE", "the KVP key is not valid UTF-8"},
        {"/api/v1/vm.kvp/external/%ED%A0%80", "the KVP key is not valid UTF-8"},
        {"/api/v1/vm.kvp/external/a%00b", "NUL"},
        {"/api/v1/vm.kvp/external/a%G0", "malformed percent-encoding"},
        {"/api/v1/vm.kvp/external/%", "malformed percent-encoding"},
        {"/api/v1/vm.kvp/external/", "the KVP key is empty"},
    };
    for (const auto& c : cases) {
        auto r = get(c.path);
        ASSERT_TRUE(r) << c.path;
        EXPECT_EQ(r->status, 400) << c.path;
        EXPECT_NE(error_of(r->body).find(c.error_part), std::string::npos) << c.path << " -> " << r->body;
    }
    // A value too long for the KVP service.
    auto r = put("/api/v1/vm.kvp/external/k", Json{{"value", std::string(1024, 'v')}}.dump());
    EXPECT_EQ(r->status, 400);
    EXPECT_NE(error_of(r->body).find("the KVP value is too long"), std::string::npos) << r->body;
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, UnknownPathsAre404) {
    for (const char* path : {"/", "/api", "/api/v1/", "/api/v1/vm.nothing", "/api/v2/vm.info", "/api/v1/vm.info/x",
                             "/api/v1/vm.kvp", "/api/v1/vm.kvp/guest/k/extra", "/other"}) {
        auto r = get(path);
        ASSERT_TRUE(r) << path;
        EXPECT_EQ(r->status, 404) << path;
        EXPECT_EQ(r->header("Content-Type"), "application/json") << path;
        EXPECT_FALSE(error_of(r->body).starts_with("<")) << path << " -> " << r->body;
    }
}

TEST_F(ApiServerTest, WrongMethodsAre405WithAllow) {
    auto r = client()->request("POST", "/api/v1/vm.info");
    EXPECT_EQ(r->status, 405);
    EXPECT_EQ(r->header("Allow"), "GET, HEAD");
    EXPECT_EQ(error_of(r->body), "method POST is not allowed here; use GET, HEAD");
    r = get("/api/v1/vm.shutdown");
    EXPECT_EQ(r->status, 405);
    EXPECT_EQ(r->header("Allow"), "PUT");
    r = put("/api/v1/vm.kvp/guest");
    EXPECT_EQ(r->status, 405);
    r = client()->request("PATCH", "/api/v1/vm.kvp/guest/k", R"({"value":"x"})");
    EXPECT_EQ(r->status, 405);
    EXPECT_EQ(r->header("Allow"), "GET, HEAD, PUT, DELETE");
    r = client()->request("OPTIONS", "/api/v1/vmm.ping");
    EXPECT_EQ(r->status, 405);
    // A method HTTP does not define at all.
    auto raw = raw_request(sock, "BREW /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(raw.status, 501);
    EXPECT_EQ(error_of(raw.body), "method BREW is not supported");
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, HeadIsGetWithoutBody) {
    auto r = client()->request("HEAD", "/api/v1/vm.info");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(r->body.empty());
}

// ---- HTTP details ----------------------------------------------------------------------

TEST_F(ApiServerTest, BodylessPutAndDeleteWithoutContentLengthDoNotHang) {
    // curl -X PUT sends no Content-Length; the server must not wait for the end of the stream.
    const auto t0 = std::chrono::steady_clock::now();
    auto r = raw_request(sock, "PUT /api/v1/vm.power-off HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 204);
    EXPECT_EQ(r.head.find("Content-Length"), std::string::npos) << r.head;
    r = raw_request(sock, "DELETE /api/v1/vm.kvp/external/k HTTP/1.1\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 404);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST_F(ApiServerTest, KeepAliveAndPipelining) {
    UniqueFd fd = connect_to(sock);
    ASSERT_TRUE(fd.valid());
    const std::string req = "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n";
    ASSERT_TRUE(send_all(fd.get(), req + req + "GET /api/v1/vm.heartbeat HTTP/1.1\r\nConnection: close\r\n\r\n"));
    const std::string all = read_all(fd.get());
    size_t n = 0;
    for (size_t p = 0; (p = all.find("HTTP/1.1 200", p)) != std::string::npos; ++p) ++n;
    EXPECT_EQ(n, 3U) << all;
    EXPECT_NE(all.find("\"sequence\""), std::string::npos);
}

TEST_F(ApiServerTest, UpgradeRequestsEndTheConnection) {
    // No protocol switch: the answer, then EOF; what followed on the connection is not served.
    UniqueFd fd = connect_to(sock);
    ASSERT_TRUE(fd.valid());
    ASSERT_TRUE(send_all(fd.get(), "GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                   "\r\nGET /api/v1/vm.heartbeat HTTP/1.1\r\n\r\n"));
    const std::string all = read_all(fd.get());
    EXPECT_TRUE(all.starts_with("HTTP/1.1 200 ")) << all;
    EXPECT_EQ(all.find("HTTP/1.1", 1), std::string::npos) << all;
    EXPECT_NE(all.find("Connection: close"), std::string::npos) << all;
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, ChunkedAndEncodedBodiesAreRefused) {
    auto r = raw_request(sock, "PUT /api/v1/vm.kvp/external/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "5\r\nhello\r\n0\r\n\r\n");
    EXPECT_EQ(r.status, 411);
    r = raw_request(sock, "PUT /api/v1/vm.kvp/external/k HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n"
                          "abcd");
    EXPECT_EQ(r.status, 415);
    // With a Content-Length as well, in either order, chunked or not.
    for (const char* headers : {"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                                "Content-Length: 5\r\nTransfer-Encoding: identity\r\n"}) {
        r = raw_request(sock, std::string("PUT /api/v1/vm.kvp/external/k HTTP/1.1\r\n") + headers + "\r\nhello");
        EXPECT_EQ(r.status, 411) << headers;
        EXPECT_NE(error_of(r.body).find("Transfer-Encoding is not supported"), std::string::npos) << r.body;
    }
    EXPECT_TRUE(vm.calls().empty());
}

TEST_F(ApiServerTest, GarbageGetsA400AndTheConnectionCloses) {
    auto r = raw_request(sock, "this is not HTTP\r\n\r\n");
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(error_of(r.body), "malformed HTTP request");
    r = raw_request(sock, std::string("\x00\x01\x02\r\n\r\n", 7));
    EXPECT_EQ(r.status, 400);
    // The server still works.
    EXPECT_EQ(get("/api/v1/vmm.ping")->status, 200);
}

TEST_F(ApiServerTest, TwoClientsAtOnce) {
    // One client holds an idle keep-alive connection; another is still served.
    UniqueFd idle = connect_to(sock);
    ASSERT_TRUE(idle.valid());
    ASSERT_TRUE(send_all(idle.get(), "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::this_thread::sleep_for(50ms);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = get("/api/v1/vmm.ping");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

// ---- the socket's life -----------------------------------------------------------------

TEST_F(ApiServerTest, SocketIsPrivate) {
    struct stat st {};
    ASSERT_EQ(::lstat(sock.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600U);
}

TEST_F(ApiServerTest, RefusesALiveSocket) {
    FakeVm other;
    ApiServer second(other, ApiServerOptions{sock, 1, {}});
    auto ok = second.start();
    ASSERT_FALSE(ok);
    EXPECT_NE(ok.error().message().find("another process is serving on it"), std::string::npos)
        << ok.error().message();
    second.stop();
    // The first server and its socket are untouched.
    EXPECT_EQ(get("/api/v1/vmm.ping")->status, 200);
    EXPECT_TRUE(other.calls().empty());
}

TEST_F(ApiServerTest, StopWithClientsConnected) {
    // One idle connection, one in the middle of its headers.
    UniqueFd idle = connect_to(sock);
    UniqueFd partial = connect_to(sock);
    ASSERT_TRUE(idle.valid() && partial.valid());
    ASSERT_TRUE(send_all(partial.get(), "GET /api/v1/vm.info HTTP/1.1\r\nHost: loc"));
    std::this_thread::sleep_for(100ms);

    const auto t0 = std::chrono::steady_clock::now();
    server->stop();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);

    // Both see the connection closed; the socket file is gone; nothing reached the VM.
    EXPECT_EQ(read_all(idle.get(), 1s), "");
    EXPECT_EQ(read_all(partial.get(), 1s), "");
    struct stat st {};
    EXPECT_NE(::lstat(sock.c_str(), &st), 0);
    EXPECT_FALSE(connect_to(sock).valid());
    EXPECT_TRUE(vm.calls().empty());
    server->stop();  // idempotent
}

TEST(ApiServerSocket, StalledRequestGets408) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    FakeVm vm;
    ApiServerOptions o{path, 1, {}};
    o.limits.io_timeout = 200ms;
    ApiServer server(vm, o);
    ASSERT_TRUE(server.start());
    UniqueFd fd = connect_to(path);
    ASSERT_TRUE(send_all(fd.get(), "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: lo"));
    const auto t0 = std::chrono::steady_clock::now();
    const RawResponse r = parse_raw(read_all(fd.get(), 3s));
    EXPECT_EQ(r.status, 408);
    EXPECT_EQ(error_of(r.body), "the request was not completed within 200 ms");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
    // A stalled client does not block the next one (one worker here).
    HttpClient c(path);
    auto ok = c.get("/api/v1/vmm.ping");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 200);
}

TEST(ApiServerSocket, ReplacesAStaleSocket) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    {
        // A socket file nobody listens on, as a crashed VMM leaves behind.
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, path.data(), path.size());
        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
        ASSERT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    }
    struct stat st {};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0);
    FakeVm vm;
    ApiServer server(vm, ApiServerOptions{path, 1, {}});
    auto ok = server.start();
    ASSERT_TRUE(ok) << ok.error().message();
    UniqueFd c = connect_to(path);
    EXPECT_TRUE(c.valid());
    server.stop();
    EXPECT_NE(::lstat(path.c_str(), &st), 0);
}

TEST(ApiServerSocket, RefusesSomethingElseAtThePath) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    std::ofstream(path) << "precious";
    FakeVm vm;
    ApiServer server(vm, ApiServerOptions{path, 1, {}});
    auto ok = server.start();
    ASSERT_FALSE(ok);
    EXPECT_NE(ok.error().message().find("exists and is not a socket"), std::string::npos) << ok.error().message();
    std::ifstream in(path);
    std::string text;
    in >> text;
    EXPECT_EQ(text, "precious");
}

TEST(ApiServerSocket, RefusesBadPaths) {
    FakeVm vm;
    ApiServer too_long(vm, ApiServerOptions{"/tmp/" + std::string(120, 'x'), 1, {}});
    auto ok = too_long.start();
    ASSERT_FALSE(ok);
    EXPECT_NE(ok.error().message().find("at most 107"), std::string::npos) << ok.error().message();
    ApiServer no_dir(vm, ApiServerOptions{"/nonexistent-dir/api.sock", 1, {}});
    ok = no_dir.start();
    ASSERT_FALSE(ok);
    EXPECT_NE(ok.error().message().find("No such file or directory"), std::string::npos) << ok.error().message();
}

TEST(ApiServerSocket, StopLeavesAReplacedSocketAlone) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    FakeVm vm;
    ApiServer server(vm, ApiServerOptions{path, 1, {}});
    ASSERT_TRUE(server.start());
    // Someone removed our socket and put their own file there: stop() must not delete it.
    ASSERT_EQ(::unlink(path.c_str()), 0);
    std::ofstream(path) << "theirs";
    server.stop();
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0);
}

TEST(ApiServerSocket, RestartAfterStop) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    FakeVm vm;
    ApiServer server(vm, ApiServerOptions{path, 2, {}});
    for (int i = 0; i < 3; ++i) {
        ASSERT_TRUE(server.start());
        HttpClient c(path);
        auto r = c.get("/api/v1/vmm.ping");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->status, 200);
        server.stop();
    }
}

// ---- the CLI client: enlighten remote --------------------------------------------------

namespace {

struct CliRun {
    int status = -1;
    std::string out;
    std::string err;
};

CliRun run_cli(std::vector<std::string> args) {
    CLI::App app;
    cli::RemoteOptions opts;
    cli::add_remote_command(app, opts);
    std::vector<const char*> argv{"enlighten", "remote"};
    for (const auto& a : args) argv.push_back(a.c_str());
    app.parse(static_cast<int>(argv.size()), argv.data());
    CliRun r;
    testing::internal::CaptureStdout();
    testing::internal::CaptureStderr();
    r.status = cli::run_remote(opts);
    r.out = testing::internal::GetCapturedStdout();
    r.err = testing::internal::GetCapturedStderr();
    return r;
}

}  // namespace

TEST_F(ApiServerTest, CliPingPrintsPrettyJson) {
    const CliRun r = run_cli({"--api-socket", sock, "ping"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "{\n  \"version\": \"0.1.0\",\n  \"api_version\": 1\n}\n");
    EXPECT_EQ(r.err, "");
}

TEST_F(ApiServerTest, CliEveryCommand) {
    auto ok = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {"--api-socket", sock});
        const CliRun r = run_cli(args);
        EXPECT_EQ(r.status, 0) << args[2] << ": " << r.err;
        return r.out;
    };
    EXPECT_EQ(Json::parse(ok({"info"}))["cpus"], 2);
    EXPECT_EQ(Json::parse(ok({"heartbeat"}))["state"], "unknown");
    EXPECT_EQ(ok({"shutdown", "--timeout", "5", "--reason", "maintenance window"}), "");
    EXPECT_EQ(vm.last_shutdown().timeout_s, 5U);
    EXPECT_EQ(vm.last_shutdown().reason, "maintenance window");
    EXPECT_FALSE(vm.last_shutdown().reboot);
    EXPECT_EQ(ok({"reboot", "--timeout", "9"}), "");
    EXPECT_TRUE(vm.last_shutdown().reboot);
    EXPECT_EQ(vm.last_shutdown().timeout_s, 9U);
    EXPECT_EQ(ok({"shutdown"}), "");
    EXPECT_EQ(vm.last_shutdown().timeout_s, 30U);
    EXPECT_EQ(ok({"power-off"}), "");
    EXPECT_EQ(ok({"reset"}), "");
    EXPECT_EQ(ok({"time-sync"}), "");
    // A key that needs encoding: space, slash, percent, non-ASCII.
    const std::string key = "my key/100%\xc3\xa9";
    EXPECT_EQ(ok({"kvp-set", "external", key, "v \"quoted\""}), "");
    EXPECT_EQ(Json::parse(ok({"kvp-get", "0", key})), (Json{{"key", key}, {"value", "v \"quoted\""}}));
    EXPECT_EQ(Json::parse(ok({"kvp-list", "external"}))["entries"].size(), 1U);
    EXPECT_EQ(ok({"kvp-delete", "external", key}), "");
    EXPECT_EQ(ok({"net-link", "net0", "down"}), "");
    EXPECT_EQ(ok({"net-link", "net0", "up"}), "");
    EXPECT_EQ(Json::parse(ok({"memory"}))["target"], 512ULL << 20);
    EXPECT_EQ(ok({"memory-set", "--target", "768M"}), "");
    EXPECT_EQ(ok({"memory-set", "--target", "auto", "--min", "256M", "--buffer", "10", "--dynamic", "on"}), "");
    EXPECT_EQ(ok({"send-keys", "--text", "root", "Return", "ctrl+alt+f2"}), "");
    EXPECT_EQ(ok({"pointer", "100", "200", "--buttons", "left,right", "--wheel", "-2", "--click", "middle"}), "");
    const std::string png = dir.path + "/shot.png";
    EXPECT_EQ(ok({"screenshot", png}), "");
    {
        std::string bytes(64, '\0');
        std::FILE* f = std::fopen(png.c_str(), "rb");
        ASSERT_NE(f, nullptr);
        bytes.resize(std::fread(bytes.data(), 1, bytes.size(), f));
        std::fclose(f);
        EXPECT_EQ(bytes, std::string("\x89PNG\r\n\x1a\n\0binary", 15));
    }
    EXPECT_EQ(vm.calls(), (std::vector<std::string>{"info", "heartbeat", "shutdown", "reboot", "shutdown", "power_off",
                                                    "reset", "time_sync", "kvp_set 0 " + key + "=v \"quoted\"",
                                                    "kvp_get 0 " + key, "kvp_list 0", "kvp_delete 0 " + key,
                                                    "net-link net0 down", "net-link net0 up", "memory",
                                                    "memory-set target=805306368 min=- max=- buffer=- dynamic=-",
                                                    "memory-set target=- min=268435456 max=- buffer=10 dynamic=on",
                                                    "send-keys text=root [Return] [ctrl+alt+f2]",
                                                    "pointer 100,200 buttons=3 wheel=-2 click=4", "screenshot"}));
}

TEST_F(ApiServerTest, CliErrorsAreOneLine) {
    CliRun r = run_cli({"--api-socket", sock, "kvp-get", "guest", "missing"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "enlighten: error: no such key: missing\n");
    r = run_cli({"--api-socket", sock, "kvp-list", "nopool"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "enlighten: error: unknown KVP pool 'nopool': use external, guest, auto, auto-external, "
                     "auto-internal or 0-4\n");
    r = run_cli({"--api-socket", sock, "shutdown", "--timeout", "4000"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "enlighten: error: timeout_s must be an integer between 1 and 3600\n");
    vm.fail_next(ErrorKind::Unavailable, "the guest did not answer");
    r = run_cli({"--api-socket", sock, "time-sync"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "enlighten: error: the guest did not answer\n");
}

TEST_F(ApiServerTest, CliCopyFile) {
    CliRun r = run_cli({"--api-socket", sock, "copy-file", "/host/data.bin", "/srv/in/data.bin", "--overwrite",
                        "--create-path"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(Json::parse(r.out)["bytes"], 3ULL << 20);
    r = run_cli({"--api-socket", sock, "copy-file", "/h", "/g"});
    EXPECT_EQ(r.status, 0) << r.err;
    vm.copy_progress.state = "done";
    r = run_cli({"--api-socket", sock, "copy-file-status"});
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(Json::parse(r.out)["state"], "done");
    vm.fail_next(ErrorKind::Conflict, "a file copy is running already");
    r = run_cli({"--api-socket", sock, "copy-file", "/h", "/g"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "enlighten: error: a file copy is running already\n");
    EXPECT_THROW(run_cli({"--api-socket", sock, "copy-file", "/h"}), CLI::ParseError);  // no destination
    EXPECT_EQ(vm.calls(), (std::vector<std::string>{"copy-file /host/data.bin /srv/in/data.bin overwrite create_path",
                                                    "copy-file /h /g", "copy-file-status", "copy-file /h /g"}));
}

TEST(ApiCli, NoServer) {
    const CliRun r = run_cli({"--api-socket", "/nonexistent-dir/api.sock", "ping"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err, "enlighten: error: cannot connect to the API socket /nonexistent-dir/api.sock: "
                     "No such file or directory\n");
}

TEST(ApiCli, UsageErrors) {
    EXPECT_THROW(run_cli({"ping"}), CLI::ParseError);                          // no --api-socket
    EXPECT_THROW(run_cli({"--api-socket", "/x"}), CLI::ParseError);            // no command
    EXPECT_THROW(run_cli({"--api-socket", "/x", "kvp-get", "guest"}), CLI::ParseError);  // no key
    EXPECT_THROW(run_cli({"--api-socket", "/x", "frobnicate"}), CLI::ParseError);
}

TEST(ApiCli, RefusedSocket) {
    // A socket file nobody listens on (a VMM that crashed).
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    const CliRun r = run_cli({"--api-socket", path, "ping"});
    EXPECT_EQ(r.status, 1);
    EXPECT_EQ(r.err, "enlighten: error: cannot connect to the API socket " + path + ": Connection refused\n");
    const CliRun too_long = run_cli({"--api-socket", "/tmp/" + std::string(120, 'x'), "ping"});
    EXPECT_EQ(too_long.status, 1);
    EXPECT_NE(too_long.err.find("the path is too long for a Unix socket"), std::string::npos) << too_long.err;
}

// ---- the client on its own -------------------------------------------------------------

TEST_F(ApiServerTest, ClientKeepAliveReusesTheConnection) {
    HttpClientOptions o;
    o.keep_alive = true;
    HttpClient c(sock, o);
    for (int i = 0; i < 5; ++i) {
        auto r = c.get("/api/v1/vmm.ping");
        ASSERT_TRUE(r) << r.error().message;
        EXPECT_EQ(r->status, 200);
        EXPECT_EQ(r->header("content-type"), "application/json");  // names are case-insensitive
    }
    ASSERT_TRUE(c.put("/api/v1/vm.kvp/external/k", R"({"value": "v"})"));
    auto r = c.request("HEAD", "/api/v1/vm.kvp/external/k");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(r->body.empty());
    EXPECT_NE(r->header("Content-Length"), "0");  // the length of the body HEAD leaves out
    r = c.get("/api/v1/vm.kvp/external/k");
    ASSERT_TRUE(r);
    EXPECT_EQ(Json::parse(r->body)["value"], "v");
    EXPECT_EQ(c.connections(), 1U);
    // Without keep-alive every request has its own connection.
    HttpClient once(sock);
    ASSERT_TRUE(once.get("/api/v1/vmm.ping"));
    ASSERT_TRUE(once.get("/api/v1/vmm.ping"));
    EXPECT_EQ(once.connections(), 2U);
}

TEST(ApiClient, ReconnectsAfterTheServersIdleTimeout) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    FakeVm vm;
    ApiServerOptions so{path, 1, {}};
    so.limits.keep_alive_timeout = 100ms;
    ApiServer server(vm, so);
    ASSERT_TRUE(server.start());
    HttpClientOptions o;
    o.keep_alive = true;
    HttpClient c(path, o);
    ASSERT_TRUE(c.get("/api/v1/vmm.ping"));
    std::this_thread::sleep_for(300ms);  // the server closes the idle connection
    auto r = c.get("/api/v1/vmm.ping");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(c.connections(), 2U);
}

TEST(ApiClient, ConnectErrorsCarryErrno) {
    HttpClient c("/nonexistent-dir/api.sock");
    auto r = c.get("/api/v1/vmm.ping");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, HttpClientError::Kind::Connect);
    EXPECT_EQ(r.error().err, ENOENT);
    EXPECT_EQ(r.error().message, "No such file or directory");
}

TEST(ApiClient, ASilentServerTimesOut) {
    TempDir dir;
    const std::string path = dir.path + "/api.sock";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM, 0));
    ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listener.get(), 4), 0);
    HttpClientOptions o;
    o.io_timeout = 200ms;
    HttpClient c(path, o);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = c.get("/api/v1/vmm.ping");  // accepted by the backlog, never answered
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, HttpClientError::Kind::Timeout);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST(ApiClient, RefusesRequestSplitting) {
    HttpClient c("/nonexistent-dir/api.sock");
    auto r = c.get("/a HTTP/1.1\r\nX: y");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, HttpClientError::Kind::Malformed);
    const HttpHeader bad[] = {{"X-A", "b\r\nX-C: d"}};
    r = c.request("GET", "/a", "", bad);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, HttpClientError::Kind::Malformed);
}

namespace {

// Feeds `bytes` in pieces of `step` bytes; then EOF if `eof`.
ResponseParser::State parse_in_steps(ResponseParser& p, std::string_view bytes, size_t step, bool eof,
                                     size_t* used = nullptr) {
    size_t total = 0;
    while (total < bytes.size() && p.state() == ResponseParser::State::NeedMore) {
        const size_t n = std::min(step, bytes.size() - total);
        const size_t u = p.feed(bytes.data() + total, n);
        total += u;
        if (u < n) break;
    }
    if (used != nullptr) *used = total;
    if (eof) p.finish();
    return p.state();
}

}  // namespace

TEST(ApiResponseParser, ContentLengthInAnyPieces) {
    const std::string text =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Multi:  a  \r\nContent-Length: 11\r\n\r\n"
        "{\"a\": true}";
    for (size_t step : {1U, 2U, 7U, 4096U}) {
        ResponseParser p;
        size_t used = 0;
        ASSERT_EQ(parse_in_steps(p, text + "HTTP/1.1 204 No Content\r\n\r\n", step, false, &used),
                  ResponseParser::State::Done)
            << step;
        EXPECT_EQ(used, text.size()) << step;  // the next response is left alone
        EXPECT_EQ(p.response().status, 200);
        EXPECT_EQ(p.response().body, "{\"a\": true}");
        EXPECT_EQ(p.response().header("x-multi"), "a");
        EXPECT_EQ(p.response().headers.size(), 3U);
        EXPECT_TRUE(p.keep_alive());
    }
}

TEST(ApiResponseParser, InterimChunkedEofAndHead) {
    {
        // 100 Continue is skipped; a chunked body is put together.
        ResponseParser p;
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\n"
                                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                                 3, false),
                  ResponseParser::State::Done);
        EXPECT_EQ(p.response().status, 201);
        EXPECT_EQ(p.response().body, "abcde");
        EXPECT_EQ(p.response().header("X-A"), "1");
        EXPECT_FALSE(p.response().has_header("X-B"));
        EXPECT_FALSE(p.keep_alive());
    }
    {
        // No length: the body ends with the connection.
        ResponseParser p;
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\n\r\nto the end", 5, false), ResponseParser::State::NeedMore);
        p.finish();
        EXPECT_EQ(p.state(), ResponseParser::State::Done);
        EXPECT_EQ(p.response().body, "to the end");
    }
    {
        // HEAD: a Content-Length, no body.
        ResponseParser p(true);
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", 4096, false),
                  ResponseParser::State::Done);
        EXPECT_TRUE(p.response().body.empty());
    }
    {
        // 204 without a length.
        ResponseParser p;
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 204 No Content\r\n\r\n", 4096, false), ResponseParser::State::Done);
        EXPECT_EQ(p.response().status, 204);
    }
}

TEST(ApiResponseParser, BadAndOversizedResponses) {
    {
        ResponseParser p;
        EXPECT_EQ(parse_in_steps(p, "SSH-2.0-OpenSSH\r\n\r\n", 4096, true), ResponseParser::State::Error);
        EXPECT_NE(p.error().find("malformed HTTP response"), std::string::npos) << p.error();
    }
    {
        ResponseParser p;  // cut short
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 4096, true),
                  ResponseParser::State::Error);
        EXPECT_TRUE(p.started());
    }
    {
        ResponseParser p;  // nothing at all
        p.finish();
        EXPECT_EQ(p.state(), ResponseParser::State::Error);
        EXPECT_FALSE(p.started());
        EXPECT_EQ(p.error(), "the connection closed before a response");
    }
    {
        ResponseParser p(false, 16);  // a body over the limit, announced
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n", 4096, false),
                  ResponseParser::State::Error);
        EXPECT_NE(p.error().find("at most 16"), std::string::npos) << p.error();
    }
    {
        ResponseParser p(false, 16);  // ... and not announced
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\n\r\n" + std::string(17, 'x'), 3, false),
                  ResponseParser::State::Error);
        EXPECT_NE(p.error().find("exceeds 16 bytes"), std::string::npos) << p.error();
    }
    {
        ResponseParser p(false, 64);  // headers over the limit
        EXPECT_EQ(parse_in_steps(p, "HTTP/1.1 200 OK\r\nX-Big: " + std::string(100, 'h') + "\r\n\r\n", 10, false),
                  ResponseParser::State::Error);
        EXPECT_NE(p.error().find("headers exceed 64 bytes"), std::string::npos) << p.error();
    }
}

// ---- the web console (api/web.hpp, api/websocket.hpp) ------------------------------------

namespace {

// A frame as a browser sends it: masked, with the given first byte (FIN, RSV, opcode).
std::string client_frame(uint8_t first, std::string_view payload, uint32_t mask = 0x1a2b3c4d, bool masked = true) {
    std::string f;
    f.push_back(static_cast<char>(first));
    const uint64_t n = payload.size();
    const char m = masked ? static_cast<char>(0x80) : 0;
    if (n < 126) {
        f.push_back(static_cast<char>(m | static_cast<char>(n)));
    } else if (n <= 0xffff) {
        f.push_back(static_cast<char>(m | 126));
        f.push_back(static_cast<char>(n >> 8));
        f.push_back(static_cast<char>(n & 0xff));
    } else {
        f.push_back(static_cast<char>(m | 127));
        for (int shift = 56; shift >= 0; shift -= 8) f.push_back(static_cast<char>((n >> shift) & 0xff));
    }
    const uint8_t key[4] = {static_cast<uint8_t>(mask >> 24), static_cast<uint8_t>(mask >> 16),
                            static_cast<uint8_t>(mask >> 8), static_cast<uint8_t>(mask)};
    if (masked) f.append(reinterpret_cast<const char*>(key), 4);
    for (size_t i = 0; i < payload.size(); ++i)
        f.push_back(masked ? static_cast<char>(payload[i] ^ static_cast<char>(key[i & 3])) : payload[i]);
    return f;
}

WsInput decode(std::string_view bytes, bool byte_by_byte = false) {
    WsDecoder d;
    WsInput in;
    if (byte_by_byte) {
        for (const char c : bytes) d.feed(std::string_view(&c, 1), in);
    } else {
        d.feed(bytes, in);
    }
    return in;
}

ApiCall web_call(std::string method, std::string target, RequestHeaders h = {}) {
    h.host = h.host.empty() ? "127.0.0.1:8080" : h.host;
    return ApiCall{std::move(method), std::move(target), {}, std::move(h)};
}

const std::string kToken = "0123456789abcdef0123456789abcdef";

WebOptions web_options() {
    WebOptions w;
    w.token = kToken;
    return w;
}

std::string header_of(const HttpReply& r, std::string_view name) {
    for (const auto& [n, v] : r.headers)
        if (n == name) return v;
    return {};
}

}  // namespace

TEST(WebSocketCodec, TheAcceptKeyIsTheRfcs) {
    EXPECT_EQ(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==").value_or(""), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    EXPECT_FALSE(ws_accept_key(""));
    EXPECT_FALSE(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ"));    // 22 characters
    EXPECT_FALSE(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ=!"));  // not base64
    EXPECT_FALSE(ws_accept_key("dGhlIHNhbXBsZSBub25jZQAA"));  // 18 bytes
}

TEST(WebSocketCodec, FragmentedMessagesWithAPingBetweenDecodeByteByByte) {
    std::string big(70000, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
    const std::string stream = client_frame(0x02, "RFB ", 0x01020304) + client_frame(0x89, "are you there?") +
                               client_frame(0x00, big.substr(0, 200), 0xdeadbeef) +
                               client_frame(0x80, big.substr(200), 0x0badf00d) + client_frame(0x8a, "pong") +
                               client_frame(0x82, "") + client_frame(0x82, "end");
    for (const bool byte_by_byte : {false, true}) {
        const WsInput in = decode(stream, byte_by_byte);
        EXPECT_EQ(in.error, 0) << in.error_text;
        EXPECT_FALSE(in.close);
        EXPECT_TRUE(in.data == "RFB " + big + "end") << in.data.size() << " bytes";
        ASSERT_EQ(in.pings.size(), 1U);
        EXPECT_EQ(in.pings[0], "are you there?");
    }
}

TEST(WebSocketCodec, ACloseEndsTheInputWithItsCode) {
    const std::string body{"\x03\xe9", 2};  // 1001
    const WsInput in = decode(client_frame(0x82, "ab") + client_frame(0x88, body) + client_frame(0x82, "after"));
    EXPECT_TRUE(in.close);
    EXPECT_EQ(in.close_code, 1001);
    EXPECT_EQ(in.data, "ab");
    EXPECT_EQ(decode(client_frame(0x88, "x")).error, kWsProtocolError);  // a 1-byte close body
}

TEST(WebSocketCodec, WhatTheRfcForbidsEndsTheInput) {
    struct Case {
        const char* what;
        std::string bytes;
        uint16_t code;
    };
    std::string huge_length = {static_cast<char>(0x82), static_cast<char>(0xff)};
    huge_length += std::string("\x80\0\0\0\0\0\0\0", 8) + "mask";
    const Case cases[] = {
        {"unmasked", client_frame(0x82, "abc", 0, false), kWsProtocolError},
        {"reserved bit", client_frame(0xc2, "abc"), kWsProtocolError},
        {"unknown opcode", client_frame(0x83, "abc"), kWsProtocolError},
        {"text", client_frame(0x81, "abc"), kWsUnsupportedData},
        {"fragmented ping", client_frame(0x09, "abc"), kWsProtocolError},
        {"long ping", client_frame(0x89, std::string(126, 'p')), kWsProtocolError},
        {"continuation first", client_frame(0x80, "abc"), kWsProtocolError},
        {"message inside a message", client_frame(0x02, "a") + client_frame(0x82, "b"), kWsProtocolError},
        {"64-bit length with the top bit", huge_length, kWsProtocolError},
    };
    for (const auto& c : cases) {
        const WsInput in = decode(c.bytes + client_frame(0x82, "after"));
        EXPECT_EQ(in.error, c.code) << c.what;
        EXPECT_FALSE(in.error_text.empty()) << c.what;
        EXPECT_EQ(in.data.find("after"), std::string::npos) << c.what;
    }
}

TEST(WebSocketCodec, ServerFramesUseTheShortestLengthForm) {
    for (const size_t n : {size_t{0}, size_t{125}, size_t{126}, size_t{65535}, size_t{65536}}) {
        const std::string f = ws_frame(WsOpcode::Binary, std::string(n, 'x'));
        const size_t header = n < 126 ? 2 : n <= 0xffff ? 4 : 10;
        ASSERT_EQ(f.size(), header + n) << n;
        EXPECT_EQ(static_cast<uint8_t>(f[0]), 0x82);
        EXPECT_EQ(static_cast<uint8_t>(f[1]) & 0x80, 0) << "a server never masks";
    }
    EXPECT_EQ(ws_frame(WsOpcode::Ping, std::string(300, 'p')).size(), 2U + 125U);
    EXPECT_EQ(ws_close_frame(1002), std::string("\x88\x02\x03\xea", 4));
}

TEST(WebRoutes, TheTokenBecomesACookieAndNothingOpensWithoutIt) {
    const WebOptions w = web_options();
    WebRoute r = route_web(w, web_call("GET", "/?token=" + kToken));
    ASSERT_EQ(r.kind, WebRoute::Kind::Reply);
    EXPECT_EQ(r.reply.status, 303);
    EXPECT_EQ(header_of(r.reply, "Location"), "/");
    EXPECT_EQ(header_of(r.reply, "Set-Cookie"), "enlighten_token=" + kToken + "; Path=/; HttpOnly; SameSite=Strict");

    for (const char* target : {"/", "/index.html", "/app.js", "/style.css", "/api/v1/vm.info", "/novnc/core/rfb.js",
                               "/websockify", "/?token=x", "/?token=0123456789abcdef0123456789abcdee"}) {
        r = route_web(w, web_call("GET", target));
        ASSERT_EQ(r.kind, WebRoute::Kind::Reply) << target;
        EXPECT_EQ(r.reply.status, 401) << target;
    }
    RequestHeaders wrong;
    wrong.cookie = "other=1; enlighten_token=0123456789abcdef0123456789abcdeF";
    EXPECT_EQ(route_web(w, web_call("GET", "/", wrong)).reply.status, 401);

    RequestHeaders cookie;
    cookie.cookie = "jupyter=abc; enlighten_token=" + kToken + "; x=y";
    r = route_web(w, web_call("GET", "/", cookie));
    EXPECT_EQ(r.reply.status, 200);
    EXPECT_EQ(r.reply.content_type, "text/html; charset=utf-8");
    EXPECT_EQ(r.reply.body, std::string(web_page()));
    // No inline script or style is allowed, and the page has none: its own are files.
    const std::string csp = header_of(r.reply, "Content-Security-Policy");
    EXPECT_NE(csp.find("script-src 'self';"), std::string::npos) << csp;
    EXPECT_NE(csp.find("style-src 'self';"), std::string::npos) << csp;
    EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos) << csp;
    const std::string page(web_page());
    EXPECT_EQ(page.find("<script>"), std::string::npos);
    EXPECT_EQ(page.find("<style"), std::string::npos);
    EXPECT_EQ(page.find("style="), std::string::npos);
    EXPECT_NE(page.find("<script type=\"module\" src=\"/app.js\"></script>"), std::string::npos);
    EXPECT_NE(page.find("href=\"/style.css\""), std::string::npos);
    r = route_web(w, web_call("GET", "/app.js", cookie));
    EXPECT_EQ(r.reply.status, 200);
    EXPECT_EQ(r.reply.content_type, "text/javascript; charset=utf-8");
    EXPECT_EQ(r.reply.body, std::string(web_script()));
    EXPECT_NE(r.reply.body.find("const API = '/api/v1/';"), std::string::npos);
    r = route_web(w, web_call("GET", "/style.css", cookie));
    EXPECT_EQ(r.reply.status, 200);
    EXPECT_EQ(r.reply.content_type, "text/css; charset=utf-8");
    EXPECT_EQ(r.reply.body, std::string(web_style()));
    EXPECT_EQ(route_web(w, web_call("PUT", "/app.js", cookie)).reply.status, 405);

    RequestHeaders bearer;
    bearer.authorization = "Bearer " + kToken;
    r = route_web(w, web_call("PUT", "/api/v1/vm.shutdown", bearer));
    ASSERT_EQ(r.kind, WebRoute::Kind::Api);
    EXPECT_EQ(r.api_target, "/api/v1/vm.shutdown");
}

TEST(WebRoutes, ChangesAndTheConsoleOnlyFromThePagesOrigin) {
    const WebOptions w = web_options();
    RequestHeaders h;
    h.cookie = "enlighten_token=" + kToken;
    h.origin = "http://evil.example";
    EXPECT_EQ(route_web(w, web_call("PUT", "/api/v1/vm.power-off", h)).reply.status, 403);
    EXPECT_EQ(route_web(w, web_call("GET", "/api/v1/vm.info", h)).kind, WebRoute::Kind::Api);
    h.origin = "http://127.0.0.1:8080";
    EXPECT_EQ(route_web(w, web_call("PUT", "/api/v1/vm.power-off", h)).kind, WebRoute::Kind::Api);

    h.upgrade = "websocket";
    h.connection = "keep-alive, Upgrade";
    h.ws_version = "13";
    h.ws_key = "dGhlIHNhbXBsZSBub25jZQ==";
    h.ws_protocol = "base64, binary";
    WebRoute r = route_web(w, web_call("GET", "/websockify", h));
    ASSERT_EQ(r.kind, WebRoute::Kind::WebSocket);
    EXPECT_EQ(r.ws_accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    EXPECT_EQ(r.ws_protocol, "binary");
    EXPECT_NE(websocket_accept_answer(r).find("Sec-WebSocket-Protocol: binary\r\n"), std::string::npos);

    RequestHeaders bad = h;
    bad.origin = "http://evil.example";
    EXPECT_EQ(route_web(w, web_call("GET", "/websockify", bad)).reply.status, 403);
    bad = h;
    bad.ws_key = "short";
    EXPECT_EQ(route_web(w, web_call("GET", "/websockify", bad)).reply.status, 400);
    bad = h;
    bad.upgrade.clear();
    EXPECT_EQ(route_web(w, web_call("GET", "/websockify", bad)).reply.status, 426);
    bad = h;
    bad.ws_version = "8";
    EXPECT_EQ(route_web(w, web_call("GET", "/websockify", bad)).reply.status, 426);
}

TEST(WebRoutes, NoVncFilesStayInTheirDirectory) {
    const WebOptions w = web_options();
    RequestHeaders h;
    h.cookie = "enlighten_token=" + kToken;
    WebRoute r = route_web(w, web_call("GET", "/novnc/core/rfb.js", h));
    ASSERT_EQ(r.kind, WebRoute::Kind::File);
    EXPECT_EQ(r.file, "/usr/share/novnc/core/rfb.js");
    for (const char* target : {"/novnc/../../etc/passwd", "/novnc/core/../../x", "/novnc/.hidden", "/novnc/a//b",
                               "/novnc/", "/novnc/%2e%2e/x", "/novnc/a b", "/elsewhere"}) {
        r = route_web(w, web_call("GET", target, h));
        ASSERT_EQ(r.kind, WebRoute::Kind::Reply) << target;
        EXPECT_EQ(r.reply.status, 404) << target;
    }
    EXPECT_EQ(route_web(w, web_call("PUT", "/novnc/core/rfb.js", h)).reply.status, 405);

    TempDir dir;
    { std::ofstream(dir.path + "/page.js") << "export default 1;\n"; }
    const HttpReply file = read_web_file(dir.path + "/page.js");
    EXPECT_EQ(file.status, 200);
    EXPECT_EQ(file.content_type, "text/javascript; charset=utf-8");
    EXPECT_EQ(file.body, "export default 1;\n");
    EXPECT_EQ(read_web_file(dir.path + "/missing.js").status, 404);
    EXPECT_EQ(read_web_file(dir.path).status, 404);  // a directory
    ASSERT_EQ(::symlink("/etc/passwd", (dir.path + "/link.js").c_str()), 0);
    EXPECT_EQ(read_web_file(dir.path + "/link.js").status, 404);  // no symbolic link is followed
}

TEST(WebRoutes, TheEndpointAndTheToken) {
    auto w = parse_web_endpoint(":8080");
    ASSERT_TRUE(w);
    EXPECT_EQ(w->host, "127.0.0.1");
    EXPECT_EQ(w->port, 8080);
    EXPECT_FALSE(parse_web_endpoint("localhost:80"));
    EXPECT_FALSE(parse_web_endpoint("127.0.0.1:0"));
    EXPECT_FALSE(parse_web_endpoint("8080"));
    auto t1 = make_web_token(), t2 = make_web_token();
    ASSERT_TRUE(t1 && t2);
    EXPECT_EQ(t1->size(), 32U);
    EXPECT_EQ(t1->find_first_not_of("0123456789abcdef"), std::string::npos);
    EXPECT_NE(*t1, *t2);
}

namespace {

UniqueFd connect_tcp(uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
    return fd;
}

// Reads until `want` bytes came (or EOF, or the timeout).
std::string read_n(int fd, size_t want, std::chrono::milliseconds timeout = 3s) {
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (out.size() < want) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{fd, POLLIN, 0};
        if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
        const ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), want - out.size()), 0);
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
    }
    return out;
}

// The web listener on an ephemeral port, with a console that is a socketpair the test holds.
class WebServerTest : public ::testing::Test {
protected:
    void SetUp() override {
        ::signal(SIGPIPE, SIG_IGN);
        enlighten::log::set_level(enlighten::log::Level::Warn);
        ApiServerOptions o;
        o.web = web_options();
        o.web->port = 0;
        o.web->console = [this]() -> enlighten::Result<UniqueFd> {
            int sv[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return enlighten::fail_errno("socketpair");
            std::lock_guard lock(mu);
            consoles.emplace_back(sv[1]);
            return UniqueFd(sv[0]);
        };
        server = std::make_unique<ApiServer>(vm, o);
        auto ok = server->start();
        ASSERT_TRUE(ok) << ok.error().message();
        port = server->web_port();
        ASSERT_NE(port, 0);
    }
    void TearDown() override { server->stop(); }

    RawResponse request(const std::string& bytes) {
        UniqueFd fd = connect_tcp(port);
        if (!fd.valid() || !send_all(fd.get(), bytes)) return {};
        return parse_raw(read_all(fd.get()));
    }

    // Opens the console's WebSocket; returns the connection after the 101's head.
    UniqueFd open_console(std::string* head = nullptr) {
        UniqueFd fd = connect_tcp(port);
        const std::string req = "GET /websockify HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: enlighten_token=" + kToken +
                                "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary\r\n\r\n";
        if (!fd.valid() || !send_all(fd.get(), req)) return UniqueFd();
        std::string got;
        while (got.find("\r\n\r\n") == std::string::npos) {
            const std::string c = read_n(fd.get(), 1);
            if (c.empty()) break;
            got += c;
        }
        if (head) *head = got;
        return fd;
    }

    int console(size_t i) {
        std::lock_guard lock(mu);
        return i < consoles.size() ? consoles[i].get() : -1;
    }

    FakeVm vm;
    std::unique_ptr<ApiServer> server;
    uint16_t port = 0;
    std::mutex mu;
    std::vector<UniqueFd> consoles;
};

}  // namespace

TEST_F(WebServerTest, ThePageTheApiAndRefusals) {
    RawResponse r = request("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 401);
    r = request("GET /?token=" + kToken + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 303);
    EXPECT_NE(r.head.find("Set-Cookie: enlighten_token=" + kToken), std::string::npos) << r.head;
    r = request("GET / HTTP/1.1\r\nHost: x\r\nCookie: enlighten_token=" + kToken + "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, std::string(web_page()));
    r = request("GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kToken +
                "\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 200);
    EXPECT_NE(r.body.find("api_version"), std::string::npos) << r.body;
    r = request("PUT /api/v1/vm.power-off HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: http://evil.example\r\nCookie: "
                "enlighten_token=" + kToken + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(r.status, 403);
    EXPECT_EQ(vm.calls().size(), 0U) << "a foreign page must not power the VM off";
}

TEST_F(WebServerTest, TheConsoleCarriesFramesBothWaysAndCloses) {
    std::string head;
    UniqueFd ws = open_console(&head);
    ASSERT_TRUE(ws.valid());
    ASSERT_TRUE(head.starts_with("HTTP/1.1 101 ")) << head;
    EXPECT_NE(head.find("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), std::string::npos) << head;
    ASSERT_GE(console(0), 0);

    // Browser to console: the payload, unmasked; a ping gets its pong.
    ASSERT_TRUE(send_all(ws.get(), client_frame(0x82, "RFB 003.008\n") + client_frame(0x89, "hi")));
    EXPECT_EQ(read_n(console(0), 12), "RFB 003.008\n");
    EXPECT_EQ(read_n(ws.get(), 4), std::string("\x8a\x02hi", 4));

    // Console to browser: binary frames, whatever the size.
    const std::string big(100000, 'z');
    std::thread writer([&] { send_all(console(0), big); });
    std::string payload;
    while (payload.size() < big.size()) {
        const std::string h2 = read_n(ws.get(), 2);
        ASSERT_EQ(h2.size(), 2U);
        ASSERT_EQ(static_cast<uint8_t>(h2[0]), 0x82);
        size_t n = static_cast<uint8_t>(h2[1]);
        if (n == 126) {
            const std::string e = read_n(ws.get(), 2);
            n = (size_t{static_cast<uint8_t>(e[0])} << 8) | static_cast<uint8_t>(e[1]);
        }
        ASSERT_LT(n, size_t{65536});
        payload += read_n(ws.get(), n);
    }
    writer.join();
    EXPECT_TRUE(payload == big) << payload.size() << " bytes";

    // The browser closes: its close is answered, and the console's end sees EOF.
    ASSERT_TRUE(send_all(ws.get(), client_frame(0x88, std::string("\x03\xe8", 2))));
    EXPECT_EQ(read_all(ws.get()), std::string("\x88\x02\x03\xe8", 4));
    EXPECT_EQ(read_all(console(0), 1s), "");
}

TEST_F(WebServerTest, ABrokenFrameClosesTheConsoleWithAProtocolError) {
    UniqueFd ws = open_console();
    ASSERT_TRUE(ws.valid());
    ASSERT_TRUE(send_all(ws.get(), client_frame(0x82, "ok") + client_frame(0x82, "unmasked", 0, false)));
    EXPECT_EQ(read_all(ws.get()), std::string("\x88\x02\x03\xea", 4));
    EXPECT_EQ(read_all(console(0), 1s), "ok");
}

TEST_F(WebServerTest, TheConsoleGoingAwayClosesTheBrowsersSocket) {
    UniqueFd ws = open_console();
    ASSERT_TRUE(ws.valid());
    ASSERT_GE(console(0), 0);
    {
        std::lock_guard lock(mu);
        consoles[0].reset();
    }
    EXPECT_EQ(read_all(ws.get()), std::string("\x88\x02\x03\xe9", 4));  // 1001, going away
}
