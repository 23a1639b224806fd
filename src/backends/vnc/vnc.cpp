#include "backends/vnc/vnc.hpp"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <rfb/rfb.h>

#include "common/endpoint.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

namespace enlighten::vnc {

namespace {

#define ENL_VNC_STR2(x) #x
#define ENL_VNC_STR(x) ENL_VNC_STR2(x)

// libvncserver's entry points, found with dlsym. rfbInitServer is a macro naming the variant
// the headers were configured for (with pthreads and ZRLE on Debian).
struct Library {
    decltype(&rfbGetScreen) get_screen = nullptr;
    decltype(&rfbInitServer) init_server = nullptr;
    decltype(&rfbRunEventLoop) run_event_loop = nullptr;
    decltype(&rfbShutdownServer) shutdown_server = nullptr;
    decltype(&rfbScreenCleanup) screen_cleanup = nullptr;
    decltype(&rfbMarkRectAsModified) mark_rect = nullptr;
    decltype(&rfbNewFramebuffer) new_framebuffer = nullptr;
    decltype(&rfbNewClient) new_client = nullptr;
    decltype(&rfbStartOnHoldClient) start_on_hold_client = nullptr;
    rfbLogProc* log = nullptr;
    rfbLogProc* err = nullptr;
};

// The library's log goes to ours while a server runs. Its client threads may still log as
// they end, after their server was stopped (the threads of clients that left by themselves
// are detached: on_gone): stop() turns this off and waits for the calls in progress, so none
// touches the logger once the VMM tears it down.
std::atomic<bool> g_library_log{false};
std::atomic<int> g_library_logging{0};

// printf-style, as rfbLogProc is.
__attribute__((format(printf, 1, 2))) void log_from_library(const char* format, ...) {
    g_library_logging.fetch_add(1);
    if (g_library_log.load()) {
        char buf[512];
        va_list ap;
        va_start(ap, format);
        std::vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);
        std::string_view line(buf);
        while (!line.empty() && line.back() == '\n') line.remove_suffix(1);
        log::debug("vnc: {}", line);
    }
    if (g_library_logging.fetch_sub(1) == 1) g_library_logging.notify_all();
}

template <typename F>
bool find(void* handle, const char* name, F& out) {
    void* p = ::dlsym(handle, name);
    out = reinterpret_cast<F>(p);
    return p != nullptr;
}

Result<const Library*> load_library() {
    static std::once_flag once;
    static Library lib;
    static std::string problem;
    std::call_once(once, [] {
        void* h = ::dlopen("libvncserver.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = ::dlerror();
            problem = fmt::format("cannot load libvncserver ({}); install Debian's libvncserver1", e ? e : "?");
            return;
        }
        const bool ok = find(h, "rfbGetScreen", lib.get_screen) && find(h, ENL_VNC_STR(rfbInitServer), lib.init_server) &&
                        find(h, "rfbRunEventLoop", lib.run_event_loop) &&
                        find(h, "rfbShutdownServer", lib.shutdown_server) &&
                        find(h, "rfbScreenCleanup", lib.screen_cleanup) &&
                        find(h, "rfbMarkRectAsModified", lib.mark_rect) &&
                        find(h, "rfbNewFramebuffer", lib.new_framebuffer) && find(h, "rfbNewClient", lib.new_client) &&
                        find(h, "rfbStartOnHoldClient", lib.start_on_hold_client) && find(h, "rfbLog", lib.log) &&
                        find(h, "rfbErr", lib.err);
        if (!ok) {
            problem = "libvncserver lacks a function Enlighten needs (another version than 0.9.14?)";
            return;
        }
        // Its log goes to ours (debug level): it would print to stderr otherwise.
        *lib.log = log_from_library;
        *lib.err = log_from_library;
    });
    if (!problem.empty()) return fail(Errc::Unsupported, "{}", problem);
    return &lib;
}

}  // namespace

Result<Endpoint> parse_endpoint(std::string_view spec) {
    Endpoint e;
    if (spec.starts_with("unix:")) {
        e.unix_socket = true;
        e.path = spec.substr(5);
        if (e.path.empty() || e.path.size() >= sizeof(sockaddr_un{}.sun_path))
            return fail(Errc::Invalid, "--vnc '{}': a socket path of 1 to {} bytes", spec, sizeof(sockaddr_un{}.sun_path) - 1);
        return e;
    }
    ENL_TRY(Ipv4Endpoint ip, parse_ipv4_endpoint("--vnc", spec, "HOST:PORT, :PORT or unix:PATH"));
    e.host = std::move(ip.host);
    e.port = ip.port;
    return e;
}

struct Server::Impl {
    const Library* lib = nullptr;
    Source* source = nullptr;
    Endpoint where;
    rfbScreenInfoPtr screen = nullptr;
    std::vector<uint8_t> fb;
    std::atomic<uint32_t> viewers{0};
    // unix:PATH: our own listener (libvncserver 0.9.14 listens on TCP only); its thread also
    // hands connect()'s sockets to libvncserver. Without unix:PATH, the thread waits on
    // `handoff` alone.
    UniqueFd unix_fd;
    std::thread unix_thread;
    std::atomic<bool> stopping{false};
    std::mutex handoff_mu;                 // a leaf
    std::vector<int> handoff;              // sockets from connect(), for the thread
    UniqueFd handoff_event;                // an eventfd: handoff is not empty, or stopping

    static Impl& of(rfbClientPtr cl) { return *static_cast<Impl*>(cl->screen->screenData); }

    static void on_key(rfbBool down, rfbKeySym keysym, rfbClientPtr cl) {
        if (!cl->viewOnly) of(cl).source->key(static_cast<uint32_t>(keysym), down != 0);
    }
    static void on_pointer(int mask, int x, int y, rfbClientPtr cl) {
        if (cl->viewOnly) return;
        const rfbScreenInfoPtr s = cl->screen;
        const auto cx = static_cast<uint32_t>(std::clamp(x, 0, std::max(0, s->width - 1)));
        const auto cy = static_cast<uint32_t>(std::clamp(y, 0, std::max(0, s->height - 1)));
        of(cl).source->pointer(cx, cy, static_cast<uint8_t>(mask & 0x1f));
    }
    // On the client's own thread, at its end (libvncserver's rfbClientConnectionGone: the
    // client is out of the list and nobody holds it). libvncserver joins the threads of the
    // clients still connected at rfbShutdownServer, and never those of clients that left by
    // themselves, which would then keep their stacks until the VMM exits: those detach here.
    // (The decrement is what stop() synchronises with: what the thread did before is done.)
    static void on_gone(rfbClientPtr cl) {
        Impl& self = of(cl);
        Source* source = self.source;
        const bool detach = !self.stopping;
        source->viewers(--self.viewers);  // the last touch of the server's state
        if (detach) ::pthread_detach(::pthread_self());
    }
    static rfbNewClientAction on_new_client(rfbClientPtr cl) {
        Impl& self = of(cl);
        cl->clientGoneHook = on_gone;
        self.source->viewers(++self.viewers);
        log::info("vnc: a client connected ({})", cl->host ? cl->host : "?");
        return RFB_CLIENT_ACCEPT;
    }

    Result<> listen_unix() {
        unix_fd.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!unix_fd.valid()) return fail_errno("vnc: socket");
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, where.path.data(), where.path.size());
        // A socket left by an earlier run goes; anything else at the path is an error.
        struct stat st {};
        if (::lstat(where.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(where.path.c_str());
        const mode_t old = ::umask(0177);  // the socket is the user's alone (0600)
        const int bound = ::bind(unix_fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
        ::umask(old);
        if (bound != 0) return fail_errno(fmt::format("vnc: bind {}", where.path));
        if (::listen(unix_fd.get(), 8) != 0) return fail_errno(fmt::format("vnc: listen {}", where.path));
        return {};
    }

    // What libvncserver's listener thread does with a TCP connection.
    void add_client(int fd) {
        rfbClientPtr cl = lib->new_client(screen, fd);
        if (cl && !cl->onHold) lib->start_on_hold_client(cl);
    }

    // The thread that hands clients to libvncserver: from the unix:PATH listener, and from
    // connect().
    Result<> start_handoff() {
        handoff_event.reset(::eventfd(0, EFD_CLOEXEC));
        if (!handoff_event.valid()) return fail_errno("vnc: eventfd");
        unix_thread = std::thread([this] {
            ::pthread_setname_np(::pthread_self(), "enl-vnc-accept");
            for (;;) {
                pollfd fds[2] = {{handoff_event.get(), POLLIN, 0}, {unix_fd.get(), POLLIN, 0}};
                const int n = ::poll(fds, unix_fd.valid() ? 2 : 1, -1);
                if (n < 0 && errno != EINTR) {
                    log::warn("vnc: poll: {}", std::strerror(errno));
                    return;
                }
                if (stopping) return;
                if ((fds[0].revents & POLLIN) != 0) {
                    uint64_t count = 0;
                    (void)!::read(handoff_event.get(), &count, sizeof(count));
                    std::vector<int> fresh;
                    {
                        std::lock_guard lock(handoff_mu);
                        fresh.swap(handoff);
                    }
                    for (const int fd : fresh) add_client(fd);
                }
                if (unix_fd.valid() && (fds[1].revents & POLLIN) != 0) {
                    const int fd = ::accept4(unix_fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
                    if (fd >= 0) {
                        add_client(fd);
                    } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                        log::warn("vnc: accept on {}: {}", where.path, std::strerror(errno));
                    }
                }
            }
        });
        return {};
    }

    Result<UniqueFd> connect() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return fail_errno("vnc: socketpair");
        UniqueFd ours(sv[0]);
        {
            std::lock_guard lock(handoff_mu);
            if (stopping) {
                ::close(sv[1]);
                return fail("vnc: the server is stopping");
            }
            handoff.push_back(sv[1]);
        }
        const uint64_t one = 1;
        (void)!::write(handoff_event.get(), &one, sizeof(one));
        return ours;
    }

    void stop() {
        stopping = true;  // from here on libvncserver joins the client threads (on_gone)
        (void)viewers.load();  // after what the threads of clients already gone did
        if (unix_thread.joinable()) {
            {
                std::lock_guard lock(handoff_mu);
                stopping = true;
                for (const int fd : handoff) ::close(fd);
                handoff.clear();
            }
            const uint64_t one = 1;
            (void)!::write(handoff_event.get(), &one, sizeof(one));
            unix_thread.join();
            if (unix_fd.valid()) ::unlink(where.path.c_str());
        }
        if (screen) {
            lib->shutdown_server(screen, TRUE);
            lib->screen_cleanup(screen);
            screen = nullptr;
        }
        g_library_log = false;
        // The calls in progress end (a vsnprintf into a stack buffer and our logger, neither
        // of which blocks), and the last one wakes us.
        for (int n = g_library_logging.load(); n != 0; n = g_library_logging.load()) g_library_logging.wait(n);
    }
};

Result<std::unique_ptr<Server>> Server::start(const Endpoint& where, Source& source, uint32_t width,
                                               uint32_t height) {
    ENL_TRY(const Library* lib, load_library());
    auto impl = std::make_unique<Impl>();
    impl->lib = lib;
    impl->source = &source;
    impl->where = where;
    impl->fb.assign(size_t{width} * height * 4, 0);
    int argc = 0;
    impl->screen = lib->get_screen(&argc, nullptr, static_cast<int>(width), static_cast<int>(height), 8, 3, 4);
    if (!impl->screen) return fail("vnc: libvncserver could not set up a screen");
    rfbScreenInfoPtr s = impl->screen;
    s->screenData = impl.get();
    s->frameBuffer = reinterpret_cast<char*>(impl->fb.data());
    s->desktopName = "Enlighten";
    s->alwaysShared = TRUE;
    s->cursor = nullptr;  // no server-drawn cursor: the guest draws its own, clients theirs
    s->kbdAddEvent = Impl::on_key;
    s->ptrAddEvent = Impl::on_pointer;
    s->newClientHook = Impl::on_new_client;
    s->ipv6port = 0;  // never the IPv6 wildcard
    s->httpPort = 0;
    s->http6Port = 0;
    if (where.unix_socket || where.internal) {
        s->port = 0;
    } else {
        s->port = where.port;
        in_addr addr{};
        ::inet_pton(AF_INET, where.host.c_str(), &addr);
        s->listenInterface = addr.s_addr;
    }
    g_library_log = true;
    lib->init_server(s);
    std::unique_ptr<Server> server(new Server(std::move(impl)));
    server->width_ = width;
    server->height_ = height;
    if (!where.unix_socket && !where.internal && s->listenSock == RFB_INVALID_SOCKET)
        return fail(Errc::Io, "vnc: cannot listen on {}:{} (in use?)", where.host, where.port);
    if (where.unix_socket) ENL_TRY_VOID(server->impl_->listen_unix());
    ENL_TRY_VOID(server->impl_->start_handoff());
    lib->run_event_loop(s, 40000, TRUE);  // its own threads from here on
    log::info("vnc: serving the console on {}", server->address());
    return server;
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
    if (impl_) impl_->stop();
}

void Server::resize(uint32_t width, uint32_t height) {
    std::vector<uint8_t> fb(size_t{width} * height * 4, 0);
    impl_->lib->new_framebuffer(impl_->screen, reinterpret_cast<char*>(fb.data()), static_cast<int>(width),
                                static_cast<int>(height), 8, 3, 4);
    // The clients use the new one now (rfbNewFramebuffer held them off while it switched).
    impl_->fb.swap(fb);
    width_ = width;
    height_ = height;
}

std::span<uint8_t> Server::pixels() { return impl_->fb; }

void Server::changed(uint32_t x, uint32_t y, uint32_t w, uint32_t h) {
    if (x >= width_ || y >= height_ || w == 0 || h == 0) return;
    const uint32_t x2 = x + std::min(w, width_ - x), y2 = y + std::min(h, height_ - y);
    impl_->lib->mark_rect(impl_->screen, static_cast<int>(x), static_cast<int>(y), static_cast<int>(x2),
                          static_cast<int>(y2));
}

Result<UniqueFd> Server::connect() { return impl_->connect(); }

std::string Server::address() const {
    const Endpoint& e = impl_->where;
    if (e.internal) return "internal (the web console)";
    return e.unix_socket ? "unix:" + e.path : fmt::format("{}:{}", e.host, e.port);
}

}  // namespace enlighten::vnc
