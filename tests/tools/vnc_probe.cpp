// vnc_probe: a small RFB 3.8 client for the end-to-end tests (they run in a busybox test host
// with no VNC viewer). It connects, takes one whole frame (Raw encoding, 32-bit R, G, B, X)
// and writes it as a PPM, sends the key and pointer events it is given, and can count the
// updates that follow.
//
//   vnc_probe HOST:PORT|unix:PATH OUT.ppm [--key KEYSYM]... [--pointer X,Y,MASK]...
//             [--updates SECONDS] [--watch SECONDS]
//
// Prints VNC-NAME, VNC-SIZE WxH, and with --updates VNC-UPDATES rects=N bytes=N, then
// VNC-FRAMES frames=N rects=N bytes=N ms=N (frames: FramebufferUpdate messages). Exits 1 with
// a line on stderr when the server does something it does not expect, 0 otherwise.
//
// --watch SECONDS (bench/console.py): after the whole frame and the events, keeps asking for
// incremental updates (a new request as soon as an update has been read, as a viewer does)
// for at most SECONDS, counting them from there on. On SIGUSR1 it prints
//   VNC-MARK n=K ms=T frames=N rects=N bytes=N
// (K: 1, 2, ...; T: ms since the watch started; the counts so far, whole messages only);
// SIGTERM (or SIGINT, or the time) ends the watch with VNC-END and the same fields, status 0.
// Every line is flushed at once (stdout is usually a file).
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& why) {
    std::fprintf(stderr, "vnc_probe: %s\n", why.c_str());
    std::exit(1);
}

int g_fd = -1;
std::chrono::steady_clock::time_point g_deadline;

// --watch: what has come since the watch started, in whole messages; the signals' flags.
struct Counts {
    uint64_t frames = 0, rects = 0, bytes = 0;
};
Counts g_counts;
bool g_watching = false;
std::chrono::steady_clock::time_point g_watch_start;
unsigned g_marks = 0;
volatile sig_atomic_t g_mark_asked = 0;
volatile sig_atomic_t g_stop_asked = 0;

struct Stop {};  // thrown out of read_exact when the watch is to end

void print_counts(const char* what) {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - g_watch_start);
    std::printf("%s ms=%lld frames=%llu rects=%llu bytes=%llu\n", what, static_cast<long long>(ms.count()),
                static_cast<unsigned long long>(g_counts.frames), static_cast<unsigned long long>(g_counts.rects),
                static_cast<unsigned long long>(g_counts.bytes));
    std::fflush(stdout);
}

// Between reads: a mark asked for is printed, an end asked for stops the watch.
void check_signals() {
    if (!g_watching) return;
    if (g_mark_asked) {
        g_mark_asked = 0;
        const std::string what = "VNC-MARK n=" + std::to_string(++g_marks);
        print_counts(what.c_str());
    }
    if (g_stop_asked) throw Stop{};
}

// What recv() got beyond what was asked for (a large buffer: one recv for many rows of a
// rectangle, which matters in the nested test host, where a system call is expensive).
std::vector<uint8_t> g_buf(256 * 1024);
size_t g_buf_pos = 0, g_buf_end = 0;

// Reads exactly n bytes before the deadline.
void read_exact(void* out, size_t n) {
    auto* p = static_cast<uint8_t*>(out);
    while (n > 0) {
        if (g_buf_pos < g_buf_end) {
            const size_t take = std::min(n, g_buf_end - g_buf_pos);
            std::memcpy(p, g_buf.data() + g_buf_pos, take);
            g_buf_pos += take;
            p += take;
            n -= take;
            continue;
        }
        check_signals();
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(g_deadline -
                                                                                std::chrono::steady_clock::now());
        if (left.count() <= 0) throw std::runtime_error("timed out");
        pollfd pfd{g_fd, POLLIN, 0};
        if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;  // EINTR: a signal
        const ssize_t got = ::recv(g_fd, g_buf.data(), g_buf.size(), 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) die("the server closed the connection");
        g_buf_pos = 0;
        g_buf_end = static_cast<size_t>(got);
    }
}

void write_all(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
        const ssize_t sent = ::send(g_fd, p, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;  // --watch's signals
        if (sent <= 0) die("send failed");
        p += sent;
        n -= static_cast<size_t>(sent);
    }
}

uint8_t u8() {
    uint8_t v;
    read_exact(&v, 1);
    return v;
}
uint16_t u16() {
    uint16_t v;
    read_exact(&v, 2);
    return ntohs(v);
}
uint32_t u32() {
    uint32_t v;
    read_exact(&v, 4);
    return ntohl(v);
}

void put16(std::vector<uint8_t>& b, uint16_t v) {
    b.push_back(static_cast<uint8_t>(v >> 8));
    b.push_back(static_cast<uint8_t>(v));
}
void put32(std::vector<uint8_t>& b, uint32_t v) {
    put16(b, static_cast<uint16_t>(v >> 16));
    put16(b, static_cast<uint16_t>(v));
}

void request(bool incremental, uint16_t w, uint16_t h) {
    std::vector<uint8_t> m{3, static_cast<uint8_t>(incremental ? 1 : 0)};
    put16(m, 0);
    put16(m, 0);
    put16(m, w);
    put16(m, h);
    write_all(m.data(), m.size());
}

struct Frame {
    uint16_t w = 0, h = 0;
    std::vector<uint8_t> px;  // R, G, B, X
};

// Reads one server message; a FramebufferUpdate's rectangles go into `f`. Returns the
// rectangles it held (0 for other messages) and adds their pixel bytes to `bytes`.
uint8_t g_last_type = 0xFF;  // the type of the last message read_message() read

uint32_t read_message(Frame& f, uint64_t& bytes, bool& resized) {
    const uint8_t type = u8();
    g_last_type = type;
    switch (type) {
        case 0: {  // FramebufferUpdate
            u8();
            const uint16_t n = u16();
            for (uint16_t i = 0; i < n; ++i) {
                const uint16_t x = u16(), y = u16(), w = u16(), h = u16();
                const auto enc = static_cast<int32_t>(u32());
                if (enc == -223) {  // DesktopSize
                    f.w = w;
                    f.h = h;
                    f.px.assign(size_t{w} * h * 4, 0);
                    resized = true;
                    continue;
                }
                if (enc != 0) die("a rectangle in encoding " + std::to_string(enc) + ", not Raw");
                if (uint32_t{x} + w > f.w || uint32_t{y} + h > f.h) die("a rectangle outside the framebuffer");
                for (uint16_t row = 0; row < h; ++row)
                    read_exact(f.px.data() + ((size_t{y} + row) * f.w + x) * 4, size_t{w} * 4);
                bytes += uint64_t{w} * h * 4;
            }
            return n;
        }
        case 2:  // Bell
            return 0;
        case 3: {  // ServerCutText
            uint8_t pad[3];
            read_exact(pad, 3);
            std::vector<uint8_t> text(u32());
            if (text.size() > (1U << 20)) die("cut text too long");
            read_exact(text.data(), text.size());
            return 0;
        }
        default:
            die("server message type " + std::to_string(type));
    }
}

int connect_to(const std::string& where) {
    if (where.rfind("unix:", 0) == 0) {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, where.c_str() + 5, sizeof(a.sun_path) - 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) die("cannot connect to " + where);
        return fd;
    }
    const size_t colon = where.rfind(':');
    if (colon == std::string::npos) die("expected HOST:PORT or unix:PATH");
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(where.substr(colon + 1))));
    if (::inet_pton(AF_INET, where.substr(0, colon).c_str(), &a.sin_addr) != 1) die("bad address " + where);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) die("cannot connect to " + where);
    return fd;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 3) die("usage: vnc_probe HOST:PORT|unix:PATH OUT.ppm [--key KEYSYM]... [--pointer X,Y,MASK]... [--updates S] [--watch S]");
    std::vector<std::vector<uint8_t>> events;
    int updates_s = 0;
    int watch_s = 0;
    for (int i = 3; i < argc; ++i) {
        const std::string a = argv[i];
        if (i + 1 >= argc) die("missing value for " + a);
        const std::string v = argv[++i];
        if (a == "--key") {
            const auto sym = static_cast<uint32_t>(std::stoul(v, nullptr, 0));
            for (const uint8_t down : {uint8_t{1}, uint8_t{0}}) {
                std::vector<uint8_t> m{4, down, 0, 0};
                put32(m, sym);
                events.push_back(m);
            }
        } else if (a == "--pointer") {
            unsigned x = 0, y = 0, mask = 0;
            if (std::sscanf(v.c_str(), "%u,%u,%u", &x, &y, &mask) != 3) die("--pointer X,Y,MASK");
            std::vector<uint8_t> m{5, static_cast<uint8_t>(mask)};
            put16(m, static_cast<uint16_t>(x));
            put16(m, static_cast<uint16_t>(y));
            events.push_back(m);
        } else if (a == "--updates") {
            updates_s = std::stoi(v);
        } else if (a == "--watch") {
            watch_s = std::stoi(v);
        } else {
            die("unknown option " + a);
        }
    }
    g_fd = connect_to(argv[1]);
    g_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);

    char version[12];
    read_exact(version, 12);
    if (std::memcmp(version, "RFB 003.", 8) != 0) die("not an RFB server");
    write_all("RFB 003.008\n", 12);
    const uint8_t ntypes = u8();
    if (ntypes == 0) die("the server refused: " + std::to_string(u32()));
    std::vector<uint8_t> types(ntypes);
    read_exact(types.data(), ntypes);
    bool none = false;
    for (uint8_t t : types) none |= t == 1;
    if (!none) die("the server wants authentication");
    const uint8_t choice = 1;
    write_all(&choice, 1);
    if (u32() != 0) die("security handshake failed");
    const uint8_t shared = 1;
    write_all(&shared, 1);
    Frame f;
    f.w = u16();
    f.h = u16();
    uint8_t format[16];
    read_exact(format, 16);
    std::string name(u32(), '\0');
    read_exact(name.data(), name.size());
    std::printf("VNC-NAME %s\n", name.c_str());
    f.px.assign(size_t{f.w} * f.h * 4, 0);

    // 32 bits a pixel, true colour, little-endian, red at bit 0: bytes R, G, B, X.
    std::vector<uint8_t> pf{0, 0, 0, 0, 32, 24, 0, 1};
    put16(pf, 255);
    put16(pf, 255);
    put16(pf, 255);
    pf.insert(pf.end(), {0, 8, 16, 0, 0, 0});
    write_all(pf.data(), pf.size());
    std::vector<uint8_t> enc{2, 0};
    put16(enc, 2);
    put32(enc, 0);                          // Raw
    put32(enc, static_cast<uint32_t>(-223));  // DesktopSize
    write_all(enc.data(), enc.size());

    // One whole frame: updates until every pixel came once (the first is usually all of it).
    request(false, f.w, f.h);
    uint64_t bytes = 0;
    for (;;) {
        bool resized = false;
        const uint64_t before = bytes;
        read_message(f, bytes, resized);
        if (resized) {
            request(false, f.w, f.h);
            bytes = 0;
            continue;
        }
        if (bytes > before && bytes >= uint64_t{f.w} * f.h * 4) break;
    }
    std::printf("VNC-SIZE %ux%u\n", f.w, f.h);
    std::FILE* out = std::fopen(argv[2], "wb");
    if (!out) die(std::string("cannot write ") + argv[2]);
    std::fprintf(out, "P6\n%u %u\n255\n", f.w, f.h);
    for (size_t i = 0; i < f.px.size(); i += 4) std::fwrite(&f.px[i], 1, 3, out);
    std::fclose(out);

    for (const auto& e : events) write_all(e.data(), e.size());

    if (updates_s > 0) {
        // Incremental updates for a while: what the server sends when something changes.
        uint32_t rects = 0;
        uint64_t frames = 0;
        bytes = 0;
        const auto t0 = std::chrono::steady_clock::now();
        g_deadline = t0 + std::chrono::seconds(updates_s);
        request(true, f.w, f.h);
        try {
            for (;;) {
                bool resized = false;
                const uint32_t n = read_message(f, bytes, resized);
                rects += n;
                if (g_last_type == 0) ++frames;
                request(true, f.w, f.h);
            }
        } catch (const std::runtime_error&) {  // the time is up
        }
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
        std::printf("VNC-UPDATES rects=%u bytes=%llu\n", rects, static_cast<unsigned long long>(bytes));
        std::printf("VNC-FRAMES frames=%llu rects=%u bytes=%llu ms=%lld\n", static_cast<unsigned long long>(frames),
                    rects, static_cast<unsigned long long>(bytes), static_cast<long long>(ms.count()));
    }

    if (watch_s > 0) {
        // Like a viewer: a new incremental request as soon as an update has been read.
        struct sigaction sa {};
        sa.sa_handler = [](int sig) {
            if (sig == SIGUSR1)
                g_mark_asked = 1;
            else
                g_stop_asked = 1;
        };
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR and the flag is seen at once
        for (const int sig : {SIGUSR1, SIGTERM, SIGINT}) ::sigaction(sig, &sa, nullptr);
        std::fflush(stdout);
        g_watch_start = std::chrono::steady_clock::now();
        g_deadline = g_watch_start + std::chrono::seconds(watch_s);
        g_counts = {};
        g_watching = true;
        request(true, f.w, f.h);
        try {
            for (;;) {
                bool resized = false;
                uint64_t got = 0;
                const uint32_t n = read_message(f, got, resized);
                if (g_last_type == 0) ++g_counts.frames;
                g_counts.rects += n;
                g_counts.bytes += got;
                request(true, f.w, f.h);
                check_signals();
            }
        } catch (const Stop&) {
        } catch (const std::runtime_error&) {  // the time is up
        }
        g_watching = false;
        print_counts("VNC-END");
    }
    ::close(g_fd);
    return 0;
} catch (const std::exception& e) {
    die(e.what());
}
