#include "api/web.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include <fmt/format.h>

#include "api/websocket.hpp"
#include "common/endpoint.hpp"
#include "common/fd.hpp"

namespace enlighten::api {

// The page, its code and its look, generated from api/web/ by the build (web_page.cpp,
// web_app.cpp, web_style.cpp).
extern const unsigned char kWebPageText[];
extern const size_t kWebPageTextSize;
extern const unsigned char kWebAppText[];
extern const size_t kWebAppTextSize;
extern const unsigned char kWebStyleText[];
extern const size_t kWebStyleTextSize;

namespace {

constexpr std::string_view kCookie = "enlighten_token";
constexpr size_t kMaxFileBytes = size_t{8} << 20;  // noVNC's largest file is about 200 KiB
constexpr size_t kMaxFilePath = 256;

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Whether a comma-separated header value lists `token` (case-insensitive).
bool lists(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const size_t comma = value.find(',');
        if (iequals(trim(value.substr(0, comma)), token)) return true;
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
    return false;
}

// Constant time in the candidate's content (not its length, which says nothing: it is fixed).
bool token_matches(std::string_view candidate, std::string_view token) {
    if (token.empty() || candidate.size() != token.size()) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < token.size(); ++i) diff |= static_cast<unsigned char>(candidate[i] ^ token[i]);
    return diff == 0;
}

// The value of `name` in a query string (undecoded: a token needs no decoding).
std::string_view query_value(std::string_view query, std::string_view name) {
    while (!query.empty()) {
        const size_t amp = query.find('&');
        const std::string_view pair = query.substr(0, amp);
        const size_t eq = pair.find('=');
        if (eq != std::string_view::npos && pair.substr(0, eq) == name) return pair.substr(eq + 1);
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return {};
}

std::string_view cookie_value(std::string_view cookies, std::string_view name) {
    while (!cookies.empty()) {
        const size_t semi = cookies.find(';');
        const std::string_view pair = trim(cookies.substr(0, semi));
        const size_t eq = pair.find('=');
        if (eq != std::string_view::npos && pair.substr(0, eq) == name) return pair.substr(eq + 1);
        if (semi == std::string_view::npos) break;
        cookies.remove_prefix(semi + 1);
    }
    return {};
}

bool authorized(const WebOptions& web, const RequestHeaders& h, std::string_view query) {
    if (token_matches(cookie_value(h.cookie, kCookie), web.token)) return true;
    if (token_matches(query_value(query, "token"), web.token)) return true;
    const std::string_view auth = trim(h.authorization);
    return auth.size() > 7 && iequals(auth.substr(0, 7), "Bearer ") && token_matches(trim(auth.substr(7)), web.token);
}

// A request from another origin than the page's (a browser says where it comes from): not
// allowed to change anything or open the console. Without Origin (curl, scripts) the token
// alone decides.
bool foreign_origin(const RequestHeaders& h) {
    if (h.origin.empty()) return false;
    return h.origin != "http://" + h.host;
}

void security_headers(HttpReply& r) {
    r.headers.emplace_back("Cache-Control", "no-store");
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    r.headers.emplace_back("Referrer-Policy", "no-referrer");
    r.headers.emplace_back("X-Frame-Options", "DENY");
}

HttpReply text_reply(int status, std::string content_type, std::string body) {
    HttpReply r;
    r.status = status;
    r.content_type = std::move(content_type);
    r.body = std::move(body);
    security_headers(r);
    return r;
}

HttpReply unauthorized(bool api) {
    constexpr std::string_view kWhy =
        "this address needs the access token: open the address enlighten printed at start "
        "(http://HOST:PORT/?token=...)";
    if (api) {
        HttpReply r = error_reply(401, kWhy);
        security_headers(r);
        return r;
    }
    return text_reply(401, "text/html; charset=utf-8",
                      fmt::format("<!doctype html><title>Enlighten</title><p>{}</p>\n", kWhy));
}

std::string_view content_type_of(std::string_view path) {
    static constexpr std::pair<std::string_view, std::string_view> kTypes[] = {
        {".js", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
        {".html", "text/html; charset=utf-8"},     {".json", "application/json"},
        {".svg", "image/svg+xml"},                 {".png", "image/png"},
        {".ico", "image/x-icon"},                  {".woff", "font/woff"},
        {".ttf", "font/ttf"},                      {".mp3", "audio/mpeg"},
        {".oga", "audio/ogg"},
    };
    for (const auto& [ext, type] : kTypes)
        if (path.ends_with(ext)) return type;
    return "application/octet-stream";
}

// A path below noVNC's directory: segments of letters, digits, '.', '_' and '-', none
// starting with '.', so that nothing outside it (nor a hidden file) can be named.
bool safe_relative_path(std::string_view rel) {
    if (rel.empty() || rel.size() > kMaxFilePath) return false;
    size_t seg = 0;
    for (size_t i = 0; i <= rel.size(); ++i) {
        if (i == rel.size() || rel[i] == '/') {
            if (i == seg || rel[seg] == '.') return false;
            seg = i + 1;
            continue;
        }
        const char c = rel[i];
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

WebRoute reply_route(HttpReply r) {
    WebRoute route;
    route.kind = WebRoute::Kind::Reply;
    route.reply = std::move(r);
    return route;
}

WebRoute websocket_route(const WebOptions& web, const ApiCall& call) {
    (void)web;
    const RequestHeaders& h = call.headers;
    if (call.method != "GET") return reply_route(error_reply(405, "the console's WebSocket is opened with GET"));
    if (!lists(h.upgrade, "websocket") || !lists(h.connection, "upgrade"))
        return reply_route(error_reply(426, "this address is a WebSocket (Upgrade: websocket)"));
    if (trim(h.ws_version) != "13") {
        HttpReply r = error_reply(426, "WebSocket version 13 only");
        r.headers.emplace_back("Sec-WebSocket-Version", "13");
        return reply_route(std::move(r));
    }
    if (foreign_origin(h)) return reply_route(error_reply(403, "the console opens only from its own page"));
    auto accept = ws_accept_key(trim(h.ws_key));
    if (!accept) return reply_route(error_reply(400, "Sec-WebSocket-Key is not the base64 of 16 bytes"));
    WebRoute route;
    route.kind = WebRoute::Kind::WebSocket;
    route.ws_accept = std::move(*accept);
    if (lists(h.ws_protocol, "binary")) route.ws_protocol = "binary";
    return route;
}

}  // namespace

Result<WebOptions> parse_web_endpoint(std::string_view spec) {
    ENL_TRY(Ipv4Endpoint e, parse_ipv4_endpoint("--web", spec, "HOST:PORT or :PORT"));
    WebOptions w;
    w.host = std::move(e.host);
    w.port = e.port;
    return w;
}

Result<std::string> make_web_token() {
    std::array<uint8_t, 16> raw{};
    size_t have = 0;
    while (have < raw.size()) {
        const ssize_t n = ::getrandom(raw.data() + have, raw.size() - have, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("web: getrandom");
        }
        have += static_cast<size_t>(n);
    }
    std::string out;
    for (const uint8_t b : raw) out += fmt::format("{:02x}", b);
    return out;
}

std::string web_url(const WebOptions& web) { return fmt::format("http://{}:{}/?token={}", web.host, web.port, web.token); }

std::string_view web_page() { return std::string_view(reinterpret_cast<const char*>(kWebPageText), kWebPageTextSize); }
std::string_view web_script() { return std::string_view(reinterpret_cast<const char*>(kWebAppText), kWebAppTextSize); }
std::string_view web_style() { return std::string_view(reinterpret_cast<const char*>(kWebStyleText), kWebStyleTextSize); }

WebRoute route_web(const WebOptions& web, const ApiCall& call) {
    std::string_view target = call.target;
    if (target.empty() || target.front() != '/') return reply_route(error_reply(400, "the request target must be a path"));
    const size_t q = target.find('?');
    const std::string_view path = target.substr(0, q);
    const std::string_view query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    const bool api = path.starts_with("/api/");

    // The address printed at start: the token becomes a cookie, and the address bar loses it.
    if (path == "/" && !query_value(query, "token").empty() && (call.method == "GET" || call.method == "HEAD")) {
        if (!token_matches(query_value(query, "token"), web.token)) return reply_route(unauthorized(false));
        HttpReply r = text_reply(303, "text/plain; charset=utf-8", "see /\n");
        r.headers.emplace_back("Location", "/");
        r.headers.emplace_back("Set-Cookie",
                               fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict", kCookie, web.token));
        return reply_route(std::move(r));
    }
    if (!authorized(web, call.headers, query)) return reply_route(unauthorized(api));

    if (api) {
        if (call.method != "GET" && call.method != "HEAD" && foreign_origin(call.headers))
            return reply_route(error_reply(403, "changes are accepted only from the page's own origin"));
        WebRoute route;
        route.kind = WebRoute::Kind::Api;
        route.api_target = std::string(path);
        return route;
    }
    if (path == "/websockify") return websocket_route(web, call);

    const bool reading = call.method == "GET" || call.method == "HEAD";
    if (path == "/" || path == "/index.html") {
        if (!reading) return reply_route(error_reply(405, "the page is read with GET"));
        HttpReply r = text_reply(200, "text/html; charset=utf-8", std::string(web_page()));
        // No inline script or style: the page's own are /app.js and /style.css.
        r.headers.emplace_back("Content-Security-Policy",
                               "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self' ws: wss:; frame-ancestors 'none'");
        return reply_route(std::move(r));
    }
    if (path == "/app.js" || path == "/style.css") {
        if (!reading) return reply_route(error_reply(405, "the page's files are read with GET"));
        const bool script = path == "/app.js";
        return reply_route(text_reply(200, script ? "text/javascript; charset=utf-8" : "text/css; charset=utf-8",
                                      std::string(script ? web_script() : web_style())));
    }
    if (path.starts_with("/novnc/")) {
        if (!reading) return reply_route(error_reply(405, "files are read with GET"));
        const std::string_view rel = path.substr(7);
        if (!safe_relative_path(rel)) return reply_route(error_reply(404, "no such file"));
        WebRoute route;
        route.kind = WebRoute::Kind::File;
        route.file = fmt::format("{}/{}", web.novnc_dir, rel);
        return route;
    }
    return reply_route(error_reply(404, "no such page"));
}

HttpReply read_web_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd.valid()) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return error_reply(404, "no such file");
        return error_reply(500, fmt::format("cannot read the file: {}", std::strerror(errno)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return error_reply(404, "no such file");
    if (static_cast<uint64_t>(st.st_size) > kMaxFileBytes) return error_reply(500, "the file is too large to serve");
    std::string body(static_cast<size_t>(st.st_size), '\0');
    size_t have = 0;
    while (have < body.size()) {
        const ssize_t n = ::pread(fd.get(), body.data() + have, body.size() - have, static_cast<off_t>(have));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return error_reply(500, "the file could not be read whole");
        have += static_cast<size_t>(n);
    }
    HttpReply r = text_reply(200, std::string(content_type_of(path)), std::move(body));
    // noVNC's files change only with the package: let the browser keep them a while.
    r.headers[0] = {"Cache-Control", "private, max-age=300"};
    return r;
}

std::string websocket_accept_answer(const WebRoute& route) {
    std::string out = fmt::format(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        route.ws_accept);
    if (!route.ws_protocol.empty()) out += fmt::format("Sec-WebSocket-Protocol: {}\r\n", route.ws_protocol);
    out += "\r\n";
    return out;
}

}  // namespace enlighten::api
