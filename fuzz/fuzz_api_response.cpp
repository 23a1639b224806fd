// Fuzzes the API client's ResponseParser (libhttp-parser underneath): what `enlighten remote`
// makes of whatever a server, or something else listening on the socket, sends. The first
// byte: bit 0 = the answer to a HEAD request, bits 1-7 = the size of the pieces the bytes
// come in (the parser must not depend on where reads end). Limits are small so the fuzzer
// reaches them.
#include <algorithm>
#include <cstdint>
#include <string_view>

#include "api/http_client.hpp"

using namespace enlighten::api;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    constexpr size_t kMax = 1024;
    const bool head = (data[0] & 1) != 0;
    const size_t chunk = 1 + (data[0] >> 1) * 7U;
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

    ResponseParser p(head, kMax);
    size_t consumed = 0;
    while (!in.empty() && p.state() == ResponseParser::State::NeedMore) {
        const size_t n = std::min(chunk, in.size());
        const size_t used = p.feed(in.data(), n);
        if (used > n) __builtin_trap();
        consumed += used;
        in.remove_prefix(used);
        if (used < n && p.state() == ResponseParser::State::NeedMore) __builtin_trap();  // stopped for no reason
    }
    if (in.empty()) p.finish();
    (void)consumed;

    switch (p.state()) {
        case ResponseParser::State::NeedMore: __builtin_trap();  // finish() decides
        case ResponseParser::State::Error:
            if (p.error().empty()) __builtin_trap();
            break;
        case ResponseParser::State::Done: {
            const HttpResponse& r = p.response();
            if (r.status < 101 || r.status > 999 || (r.status > 101 && r.status < 200)) __builtin_trap();
            if (r.body.size() > kMax) __builtin_trap();
            if (head && r.status >= 200 && !r.body.empty()) __builtin_trap();
            size_t header_bytes = 0;
            for (const auto& h : r.headers) header_bytes += h.name.size() + h.value.size();
            if (header_bytes > kMax) __builtin_trap();
            (void)r.header("Content-Length");
            break;
        }
    }
    return 0;
}
