// Fuzzes the management API. The first byte picks the layer:
//   even: raw bytes as one client connection (pipelined requests, any framing) through the
//         same HttpSession the server uses (libhttp-parser's request parsing, our framing,
//         limits and checks, and the router) fed from memory; what the server
//         writes back must parse, response by response, with our client's ResponseParser;
//   odd:  "METHOD\nTARGET\nBODY" straight into api::handle_request.
// A fake VmControl traps if anything unchecked reaches it; every answer must be HTTP with a
// JSON body. fuzz_api_response fuzzes the ResponseParser on its own.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include "common/log.hpp"

#include "api/http_client.hpp"
#include "api/http_frontend.hpp"
#include "api/router.hpp"

using namespace enlighten;
using namespace enlighten::api;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

namespace {

void check_key(const std::string& key) {
    if (check_kvp_key(key)) __builtin_trap();
}

class FuzzVm final : public VmControl {
public:
    VmInfo info() override {
        VmInfo i;
        i.state = "running";
        i.kernel = "k\xff";  // invalid UTF-8 must not break the JSON
        i.channels.push_back({1, 0, "heartbeat", "57164f39-9115-4e78-ab55-382f3bd5422d", "x", "open", 0});
        DiskInfo d;
        d.id = "d\xfe";
        d.controller = "scsi0";
        d.bus = "scsi";
        d.path = "/x\xff";
        i.disks.push_back(d);
        i.storage_channels.push_back({"scsi0", 1, 1, 5, 0});
        return i;
    }
    ApiResult<> shutdown(const ShutdownRequest& r) override {
        if (r.timeout_s < 1 || r.timeout_s > kMaxTimeoutS || !utf16_length(r.reason)) __builtin_trap();
        return {};
    }
    ApiResult<> power_off() override { return {}; }
    ApiResult<> reset() override { return std::unexpected(ApiError{ErrorKind::Conflict, "busy"}); }
    HeartbeatInfo heartbeat() override { return {HeartbeatState::Healthy, 7, 12}; }
    ApiResult<> time_sync() override { return std::unexpected(ApiError{ErrorKind::Unavailable, ""}); }
    ApiResult<std::vector<KvpEntry>> kvp_list(KvpPool pool) override {
        if (static_cast<unsigned>(pool) > 4) __builtin_trap();
        return std::vector<KvpEntry>{{"a", "b"}, {"\xc3", "\xff\xfe"}};
    }
    ApiResult<std::string> kvp_get(KvpPool, const std::string& key) override {
        check_key(key);
        if (key.size() % 2 != 0) return std::unexpected(ApiError{ErrorKind::NotFound, "no such key"});
        return key;
    }
    ApiResult<> kvp_set(KvpPool, const std::string& key, const std::string& value) override {
        check_key(key);
        if (check_kvp_value(value)) __builtin_trap();
        return {};
    }
    ApiResult<> kvp_delete(KvpPool, const std::string& key) override {
        check_key(key);
        return {};
    }
    std::vector<IntegrationServiceInfo> integration_services() override { return {{"kvp", true, "4.0", "OK"}}; }
    ApiResult<IntegrationServiceInfo> set_integration_service(const std::string& name, bool enabled) override {
        if (name.empty() || name.find('\0') != std::string::npos) __builtin_trap();  // a decoded path segment
        if (name != "kvp") return std::unexpected(ApiError{ErrorKind::NotFound, "no such service"});
        return IntegrationServiceInfo{name, enabled, "", ""};
    }
    ApiResult<DiskInfo> add_disk(const AddDiskRequest& r) override {
        // The router checked these (parse_add_disk).
        if (r.path.empty() || r.path.size() > 4096 || r.path.find('\0') != std::string::npos) __builtin_trap();
        if (r.id.size() > 64 || r.serial.size() > 64 || r.format.size() > 16) __builtin_trap();
        if (r.path.size() % 3 == 0) return std::unexpected(ApiError{ErrorKind::BadRequest, "cannot open " + r.path});
        DiskInfo d;
        d.id = r.id.empty() ? "disk1" : r.id;
        d.path = r.path;
        d.format = r.format;
        d.read_only = r.read_only;
        return d;
    }
    ApiResult<> remove_disk(const std::string& id) override {
        return std::unexpected(ApiError{ErrorKind::NotFound, "no disk " + id});
    }
    ApiResult<> set_net_link(const std::string& id, bool) override {
        if (id.empty()) return std::unexpected(ApiError{ErrorKind::NotFound, "no NIC"});
        return {};
    }
    ApiResult<MemoryInfo> memory() override { return MemoryInfo{}; }
    ApiResult<> set_memory(const MemoryUpdate& u) override {
        if (u.min && u.max && *u.min > *u.max) return std::unexpected(ApiError{ErrorKind::BadRequest, "min > max"});
        return {};
    }
    ApiResult<CopyFileResult> copy_file(const CopyFileRequest& r) override {
        if (r.overwrite) return std::unexpected(ApiError{ErrorKind::Conflict, "exists"});
        return CopyFileResult{r.source.size(), r.destination.size()};
    }
    CopyFileProgress copy_file_progress() override {
        CopyFileProgress p;
        p.state = "running";
        p.bytes_total = 100;
        p.bytes_written = 50;
        p.elapsed_ms = 3;
        return p;
    }
    ApiResult<Screenshot> screenshot() override { return Screenshot{1, 1, std::string("\x89PNG\xff", 5)}; }
    ApiResult<CheckpointInfo> checkpoint(const CheckpointRequest& r) override {
        // The router checked these (parse_checkpoint).
        if (r.name.empty() || r.name.size() > kMaxCheckpointName || r.name.front() == '.' ||
            (r.consistency != "application" && r.consistency != "crash") || r.freeze_timeout_s < 1 ||
            r.freeze_timeout_s > kMaxFreezeTimeoutS)
            __builtin_trap();
        for (char c : r.name)
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') __builtin_trap();
        CheckpointInfo c;
        c.name = r.name;
        c.disks.push_back({"disk0", "/a.vhdx", "/a_" + r.name + ".avhdx"});
        return c;
    }
    std::vector<CheckpointInfo> checkpoints() override { return {CheckpointInfo{}}; }
    ApiResult<CheckpointInfo> merge_checkpoint() override {
        return std::unexpected(ApiError{ErrorKind::Conflict, "there is no checkpoint to merge"});
    }
    ApiResult<> send_keys(const SendKeysRequest& r) override {
        // The router checked these (parse_send_keys).
        if (r.text.size() > kMaxSendKeysText || r.keys.size() > kMaxSendKeysKeys || (r.text.empty() && r.keys.empty()))
            __builtin_trap();
        for (const auto& k : r.keys)
            if (k.empty() || k.size() > kMaxKeyName) __builtin_trap();
        return {};
    }
    ApiResult<> pointer(const PointerRequest& r) override {
        if (r.wheel < -kMaxWheel || r.wheel > kMaxWheel || r.buttons > 0x1f || (r.click & (r.click - 1)) != 0)
            __builtin_trap();
        return {};
    }
};

// One connection's bytes from memory, handed to an HttpSession in chunks of a fuzzer-chosen
// size, as the server would (calls made at once); returns what the server would write.
std::string serve(VmControl& vm, const ApiLimits& limits, std::string_view in, size_t chunk) {
    HttpSession session(limits);
    std::string out;
    for (;;) {
        HttpSession::Step step = session.next();
        switch (step.kind) {
            case HttpSession::Kind::NeedMore: {
                if (in.empty()) {
                    session.receive_eof();
                    break;
                }
                const size_t n = std::min(chunk, in.size());
                session.receive(in.substr(0, n));
                in.remove_prefix(n);
                break;
            }
            case HttpSession::Kind::Call:
                step = session.answer(handle_request(vm, step.call.method, step.call.target, step.call.body));
                if (step.kind != HttpSession::Kind::Write) __builtin_trap();
                out += step.bytes;
                if (step.close) return out;
                break;
            case HttpSession::Kind::Write:
                out += step.bytes;
                if (out.size() > (4U << 20)) __builtin_trap();  // answers stay small
                if (step.close) return out;
                break;
            case HttpSession::Kind::Close: return out;
        }
    }
}

// The server's output: complete HTTP responses, one after another, nothing else.
void check_output(std::string_view out) {
    while (!out.empty()) {
        ResponseParser p(false, 1U << 20);
        const size_t used = p.feed(out.data(), out.size());
        if (p.state() != ResponseParser::State::Done || used == 0) __builtin_trap();
        const HttpResponse& r = p.response();
        if (r.status < 200 || r.status > 599) __builtin_trap();
        // A body is JSON when it says so (vm.screenshot answers image/png), and says what it is.
        if (!r.body.empty()) {
            const std::string type = r.header("Content-Type");
            if (type.empty()) __builtin_trap();
            if (type.starts_with("application/json") && !nlohmann::json::accept(r.body)) __builtin_trap();
        }
        out.remove_prefix(used);
    }
}

void check_reply(const HttpReply& r) {
    if (r.status < 200 || r.status > 599) __builtin_trap();
    if (r.status == 204 && !r.body.empty()) __builtin_trap();
    if (!r.body.empty() && r.content_type.empty()) __builtin_trap();
    if (!r.body.empty() && r.content_type == "application/json" && !nlohmann::json::accept(r.body)) __builtin_trap();
    if (r.status >= 400 && r.content_type != "application/json") __builtin_trap();  // errors are JSON
    if (r.status >= 400 && r.body.empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static FuzzVm vm;
    static const ApiLimits limits = [] {
        ApiLimits l;
        l.max_header_bytes = 2048;
        l.max_body_bytes = 4096;
        l.keep_alive_max_requests = 16;
        return l;
    }();

    if (size < 1) return 0;
    const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    if ((data[0] & 1) == 0) {
        const std::string out = serve(vm, limits, rest, 1 + (data[0] >> 1) * 31U);
        if (!out.empty() && !out.starts_with("HTTP/1.1 ")) __builtin_trap();
        // Answers to HEAD carry a Content-Length without the body; the parser would need to
        // know which requests were HEAD.
        if (rest.find("HEAD") == std::string_view::npos) check_output(out);
    } else {
        const size_t a = rest.find('\n');
        const size_t b = a == std::string_view::npos ? a : rest.find('\n', a + 1);
        const std::string_view method = rest.substr(0, a);
        const std::string_view target = a == std::string_view::npos ? "" : rest.substr(a + 1, b - a - 1);
        const std::string_view body = b == std::string_view::npos ? "" : rest.substr(b + 1);
        check_reply(handle_request(vm, method, target, body));
    }
    return 0;
}
