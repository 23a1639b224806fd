// The management API's request handling, independent of the HTTP library: a request
// (method, raw target, body) goes in, a status and a JSON body come out. The HTTP front end
// (http_frontend.*) and the fuzzer call this; docs/api.md and docs/openapi.yaml describe it.
//
// Threads: handle_request may run on several API workers at once; it keeps no state of its
// own and calls the VmControl (which may block: see lane_of). Everything else here is pure
// and may be called from any thread (the server's I/O thread calls lane_of). No locks.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>
#include <string_view>

#include "api/vm_control.hpp"

namespace enlighten::api {

inline constexpr int kApiVersion = 1;
inline constexpr std::string_view kVmmVersion = "0.1.0";
inline constexpr std::string_view kApiPrefix = "/api/v1/";

// KVP limits. The KVP integration service carries keys and values as NUL-terminated UTF-16
// in fixed fields (linux include/uapi/linux/hyperv.h: HV_KVP_EXCHANGE_MAX_KEY_SIZE 512 and
// HV_KVP_EXCHANGE_MAX_VALUE_SIZE 2048 bytes), and the guest kernel converts them to UTF-8
// into fields of the same byte sizes (drivers/hv/hv_kvp.c: utf16s_to_utf8s(..., SIZE - 1)).
// A string must fit both, NUL included, or the guest would see it truncated.
inline constexpr size_t kKvpMaxKeyUtf16 = 255;
inline constexpr size_t kKvpMaxKeyUtf8 = 511;
inline constexpr size_t kKvpMaxValueUtf16 = 1023;
inline constexpr size_t kKvpMaxValueUtf8 = 2047;
// The shutdown reason: the shutdown IC's display_message field is 2048 bytes of UTF-16.
inline constexpr size_t kMaxReasonUtf16 = 1023;
inline constexpr uint32_t kMaxTimeoutS = 3600;
// vm.copy-file: the longest source or destination path taken (PATH_MAX).
inline constexpr size_t kMaxCopyPathBytes = 4096;
// vm.checkpoint: the longest name, and the longest freeze the guest may take (its own limit,
// VSS_FREEZE_TIMEOUT in hv_snapshot.c).
inline constexpr size_t kMaxCheckpointName = 64;
inline constexpr uint64_t kMaxFreezeTimeoutS = 900;

struct HttpReply {
    int status = 200;
    std::string body;   // JSON (or what content_type says); empty for 204
    std::string allow;  // for 405: the methods the path accepts, e.g. "GET, HEAD"
    std::string content_type = "application/json";
    unsigned retry_after_s = 0;  // a Retry-After header (with 503) when not 0
    // More headers (the web listener's cookies, redirects, caching and security headers);
    // names and values are the server's own, never the client's.
    std::vector<std::pair<std::string, std::string>> headers;
};

// Which of the server's worker lanes runs a request (docs/api.md, "Limits"):
//   Quick  reads the VMM's own state or acts without waiting for the guest (vm.info,
//          vm.power-off, vm.reset, vm.net-link, vm.shutdown and vm.reboot, which only
//          start the first stage and return, the GETs...), and every request the router
//          refuses without a call (404, unknown endpoints); never waits for the guest.
//   Guest  may wait for the guest or for slow host work: KVP, time sync, integration
//          service switches, disks, copy-file, checkpoints, the console (screenshot,
//          keys, pointer), PUT vm.memory. Bounded in number.
// From the method and raw target alone (no VmControl call), so the server can choose
// before anything runs.
enum class Lane { Quick, Guest };
Lane lane_of(std::string_view method, std::string_view target);

// Console input limits (PUT vm.send-keys, vm.pointer).
inline constexpr size_t kMaxSendKeysText = 4096;  // bytes of text
inline constexpr size_t kMaxSendKeysKeys = 64;    // combinations
inline constexpr size_t kMaxKeyName = 64;         // bytes of one combination
inline constexpr int32_t kMaxWheel = 127;         // detents either way

// Handles one request. `target` is the raw request target as it came on the request line
// (percent-encoded path, optional query, which is ignored). HEAD is answered like GET (the
// HTTP layer drops the body). Never throws.
HttpReply handle_request(VmControl& vm, std::string_view method, std::string_view target,
                         std::string_view body);

// An error reply: {"error": message}.
HttpReply error_reply(int status, std::string_view message);
std::string error_body(std::string_view message);
int http_status(ErrorKind kind);

// Pools by name ("external", "guest", "auto", "auto-external", "auto-internal") or number.
std::optional<KvpPool> parse_pool(std::string_view text);
std::string_view pool_name(KvpPool pool);

// Strict percent-decoding of one path segment: nullopt on a malformed escape.
std::optional<std::string> percent_decode(std::string_view text);
// Percent-encodes everything but RFC 3986 unreserved characters (for clients).
std::string percent_encode(std::string_view text);

// The number of UTF-16 code units of a UTF-8 string, or nullopt if it is not valid UTF-8
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
std::optional<size_t> utf16_length(std::string_view utf8);

// nullopt if acceptable, else the reason (one line).
std::optional<std::string> check_kvp_key(std::string_view key);
std::optional<std::string> check_kvp_value(std::string_view value);

}  // namespace enlighten::api
