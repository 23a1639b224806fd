// A VNC (RFB) server for the VM console, on Debian's libvncserver, which speaks the protocol
// (handshake, encodings, pixel format conversion; its own listener thread and one thread per
// client). The library is loaded with dlopen() when a server starts: a VM without --vnc maps
// none of it (nor the dozen libraries it needs), and Enlighten runs where it is not installed.
//
// The server keeps a framebuffer of its own (32-bit R, G, B, X): the caller copies what
// changed into it (pixels(), then changed()) and resizes it with the guest's mode; clients get
// only the rectangles marked changed. Input goes to a Source. Clients get no password: the
// server listens on the loopback interface or a Unix socket (mode 0600) that the user chose.
//
// Threads: start, resize, pixels/changed and the destructor are called from one thread (the
// VM's control loop); connect() from any. A thread of the server's ("enl-vnc-accept") hands
// new clients to libvncserver: those of a unix:PATH listener and of connect(). The Source's calls come from libvncserver's threads (a client's input
// thread, the listener thread), several at once. The framebuffer lock (fb_mu_) is a leaf.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/fd.hpp"
#include "common/result.hpp"

namespace enlighten::vnc {

// Where the server listens: --vnc HOST:PORT (":PORT" is 127.0.0.1), or unix:PATH.
struct Endpoint {
    bool internal = false;  // no listener: clients come only through Server::connect() (--web)
    bool unix_socket = false;
    std::string host = "127.0.0.1";  // an IPv4 address
    uint16_t port = 5900;
    std::string path;
};
Result<Endpoint> parse_endpoint(std::string_view spec);

// What the clients do.
class Source {
public:
    virtual ~Source() = default;
    // A key went down or up (an X keysym, as the client sent it).
    virtual void key(uint32_t keysym, bool down) = 0;
    // The pointer is at pixel (x, y) of the framebuffer (clamped to it) with these RFB
    // buttons down: bit 0 left, 1 middle, 2 right, 3 wheel up, 4 wheel down.
    virtual void pointer(uint32_t x, uint32_t y, uint8_t buttons) = 0;
    // The number of connected clients changed.
    virtual void viewers(uint32_t count) = 0;
};

class Server {
public:
    // Listens and serves a black framebuffer of width x height. Errc::Unsupported when
    // libvncserver cannot be loaded (the package libvncserver1 is not installed).
    static Result<std::unique_ptr<Server>> start(const Endpoint& where, Source& source, uint32_t width,
                                                 uint32_t height);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // A new framebuffer of this size (black); clients that can are told the new size.
    void resize(uint32_t width, uint32_t height);
    [[nodiscard]] uint32_t width() const { return width_; }
    [[nodiscard]] uint32_t height() const { return height_; }
    // The framebuffer's rows (width * 4 bytes each, R, G, B, X), to write into before
    // changed(). Valid until the next resize.
    [[nodiscard]] std::span<uint8_t> pixels();
    // Clients get [x, x+w) x [y, y+h) again (clamped to the framebuffer).
    void changed(uint32_t x, uint32_t y, uint32_t w, uint32_t h);
    // Where it listens, for the log ("127.0.0.1:5900", "unix:/run/vm.vnc", "internal").
    [[nodiscard]] std::string address() const;
    // A new client on a socketpair: the returned end speaks RFB as a client would (the web
    // console carries it to a browser). Any thread; does not block (the other end is handed
    // to libvncserver on the server's own thread).
    Result<UniqueFd> connect();

    struct Impl;

private:
    explicit Server(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
    uint32_t width_ = 0, height_ = 0;
};

}  // namespace enlighten::vnc
