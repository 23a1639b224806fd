// The web console (`enlighten run --web HOST:PORT`, docs/console.md "In a browser"): what the
// API server's TCP listener serves besides the API, decided here without I/O:
//
//   /?token=T       sets the access cookie and redirects to / (the address printed at start)
//   /               the page (api/web/index.html, built into the binary): the console in
//                   Debian's noVNC and a live dashboard that reads the public API
//   /app.js, /style.css   the page's code and look (api/web/, built in too)
//   /novnc/...      noVNC's files, from the directory of Debian's package novnc
//   /api/v1/...     the management API, the same as on the Unix socket
//   /websockify     a WebSocket carrying the console's RFB stream (to the VM's VNC server)
//
// Nobody else on the host may use it: it listens on the loopback interface unless told
// otherwise, and every request must carry the token (the cookie, `?token=` on /, or
// `Authorization: Bearer T`); the token is 128 random bits, compared in constant time. The
// cookie is HttpOnly and SameSite=Strict, and requests that change something (and the
// WebSocket) must come from the page's own origin, so another site in the user's browser
// cannot drive the VM.
//
// Threads: everything here is pure and may run on any thread (the server's I/O thread
// routes, an API worker reads the static files); no locks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "api/http_frontend.hpp"
#include "api/router.hpp"
#include "api/server.hpp"
#include "common/result.hpp"

namespace enlighten::api {

// WebOptions, parse_web_endpoint, make_web_token and web_url are in api/server.hpp.

// What to do with one request on the web listener.
struct WebRoute {
    enum class Kind {
        Reply,      // answer `reply` as is
        Api,        // the management API: run `api_target` as on the Unix socket
        File,       // a static file: read `file` (an absolute path) on a worker
        WebSocket,  // open the console's WebSocket (the handshake's checks passed)
    };
    Kind kind = Kind::Reply;
    HttpReply reply;
    std::string api_target;
    std::string file;
    std::string ws_accept;    // Sec-WebSocket-Accept
    std::string ws_protocol;  // the subprotocol chosen ("binary"), or empty
};
WebRoute route_web(const WebOptions& web, const ApiCall& call);

// Reads a static file for a File route (on a worker): 200 with its type, 404, or 500.
HttpReply read_web_file(const std::string& path);

// The 101 answer that opens the WebSocket.
std::string websocket_accept_answer(const WebRoute& route);

// The page, its code (/app.js) and its look (/style.css), for tests.
std::string_view web_page();
std::string_view web_script();
std::string_view web_style();

}  // namespace enlighten::api
