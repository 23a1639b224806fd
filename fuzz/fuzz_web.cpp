// Fuzzes the web console's listener (api/web.hpp, api/websocket.hpp). The first byte picks:
//   even: the rest is what a browser sends on the console's WebSocket. It is decoded twice,
//         whole and in chunks whose sizes the input's bytes pick; both must give the same
//         data, pings, close and error (the decoder keeps its state across any split), and
//         no more payload than the input had.
//   odd:  the rest is HTTP from a client of the web listener, through the HttpSession the
//         server uses, each request routed by route_web. Without the token anywhere in the
//         request, nothing but a refusal comes back; a static file is always inside noVNC's
//         directory with no hidden or parent segment; a WebSocket accept key is 28 bytes.
#include <cstdint>
#include <string>
#include <string_view>

#include "api/http_frontend.hpp"
#include "api/web.hpp"
#include "api/websocket.hpp"
#include "common/log.hpp"

using namespace enlighten;
using namespace enlighten::api;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

namespace {

constexpr std::string_view kToken = "0123456789abcdef0123456789abcdef";

void websocket(std::string_view in) {
    WsDecoder whole;
    WsInput a;
    whole.feed(in, a);

    WsDecoder split;
    WsInput b;
    size_t i = 0, k = 0;
    while (i < in.size()) {
        const size_t n = 1 + static_cast<uint8_t>(in[k++ % in.size()]) % 7;
        split.feed(in.substr(i, n), b);
        i += n;
    }
    if (a.data != b.data || a.pings != b.pings || a.close != b.close || a.close_code != b.close_code ||
        a.error != b.error || whole.done() != split.done())
        __builtin_trap();
    if (a.data.size() > in.size()) __builtin_trap();
    for (const auto& p : a.pings)
        if (p.size() > 125) __builtin_trap();
    if (a.close && a.error == 0 && !whole.done()) __builtin_trap();
}

void http(std::string_view in) {
    WebOptions web;
    web.token = std::string(kToken);
    ApiLimits limits;
    HttpSession session(limits);
    session.receive(in);
    session.receive_eof();
    for (int steps = 0; steps < 1000; ++steps) {
        HttpSession::Step step = session.next();
        if (step.kind == HttpSession::Kind::NeedMore || step.kind == HttpSession::Kind::Close) return;
        if (step.kind == HttpSession::Kind::Write) {
            if (step.close) return;
            continue;
        }
        const ApiCall& call = step.call;
        const WebRoute route = route_web(web, call);
        const RequestHeaders& h = call.headers;
        const bool token_given = call.target.find(kToken) != std::string::npos ||
                                 h.cookie.find(kToken) != std::string::npos ||
                                 h.authorization.find(kToken) != std::string::npos;
        if (!token_given && (route.kind != WebRoute::Kind::Reply || route.reply.status < 400)) __builtin_trap();
        if (route.kind == WebRoute::Kind::File) {
            const std::string prefix = web.novnc_dir + "/";
            if (!route.file.starts_with(prefix) || route.file.find("/.") != std::string::npos ||
                route.file.find("//") != std::string::npos)
                __builtin_trap();
        }
        if (route.kind == WebRoute::Kind::WebSocket && route.ws_accept.size() != 28) __builtin_trap();
        HttpReply reply = route.kind == WebRoute::Kind::Reply ? route.reply : HttpReply{};
        step = session.answer(reply);
        if (step.close) return;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    if ((data[0] & 1) == 0) {
        websocket(in);
    } else {
        http(in);
    }
    return 0;
}
