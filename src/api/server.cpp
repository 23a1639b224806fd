#include "api/server.hpp"

#include <pthread.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "api/http_frontend.hpp"
#include "api/router.hpp"
#include "api/web.hpp"
#include "api/websocket.hpp"
#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "common/sandbox.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten::api {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr size_t kReadChunk = 4096;            // one read per ready connection per round
constexpr size_t kAcceptsPerRound = 32;        // then the loop serves the others
constexpr auto kLingerTime = 500ms;            // draining a refused client before closing
constexpr size_t kLingerBytes = size_t{1} << 20;
constexpr auto kAcceptBackoff = 100ms;         // out of descriptors: accept again after this
constexpr int kBacklog = SOMAXCONN;  // the kernel caps it (net.core.somaxconn)
// The web console's WebSockets (api/web.hpp): each carries one browser's RFB stream.
constexpr size_t kMaxTunnels = 8;
constexpr size_t kTunnelChunk = 16384;                   // one read per ready side per round
constexpr size_t kTunnelToClientMax = size_t{1} << 20;   // then the VNC side is not read
constexpr size_t kTunnelToConsoleMax = size_t{256} << 10;  // then the browser is not read
constexpr auto kTunnelStall = 60s;  // a browser that takes nothing of a pending frame for this long goes

// A complete request waiting for (or running on) a worker.
struct Job {
    uint64_t conn = 0;
    ApiCall call;
    std::string file;  // the web listener's static file to read instead (api/web.hpp)
};

// A FIFO of jobs and the threads that run them. Threads: submit from any thread; stop from
// the owner's. The mutex is a leaf: `run` is called without it.
class WorkerPool {
public:
    using Run = std::function<void(Job&)>;

    Result<> start(unsigned threads, const std::string& name, Run run) {
        run_ = std::move(run);
        {
            LockGuard lock(mu_);
            stopping_ = false;
        }
        try {
            for (unsigned i = 0; i < threads; ++i) {
                threads_.emplace_back([this, thread_name = fmt::format("{}{}", name, i)] {
                    ::pthread_setname_np(::pthread_self(), thread_name.c_str());
                    sandbox::enter(sandbox::ThreadKind::ApiWorker);
                    work();
                });
            }
        } catch (const std::system_error& e) {
            return fail("api: starting a worker thread: {}", e.what());
        }
        return {};
    }

    // Queues the job if fewer than `max_outstanding` jobs are queued or running.
    bool submit(Job job, size_t max_outstanding) ENL_EXCLUDES(mu_) {
        {
            LockGuard lock(mu_);
            if (stopping_ || jobs_.size() + busy_ >= max_outstanding) return false;
            jobs_.push_back(std::move(job));
        }
        cv_.notify_one();
        return true;
    }

    // Queued jobs are dropped; running ones finish; then the threads are joined.
    void stop() ENL_EXCLUDES(mu_) {
        {
            LockGuard lock(mu_);
            stopping_ = true;
            jobs_.clear();
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
        threads_.clear();
    }

private:
    void work() ENL_EXCLUDES(mu_) {
        for (;;) {
            Job job;
            {
                UniqueLock lock(mu_);
                while (!stopping_ && jobs_.empty()) cv_.wait(lock);
                if (stopping_) return;
                job = std::move(jobs_.front());
                jobs_.pop_front();
                ++busy_;
            }
            run_(job);
            LockGuard lock(mu_);
            --busy_;
        }
    }

    Run run_;
    Mutex mu_;
    std::condition_variable_any cv_;
    std::deque<Job> jobs_ ENL_GUARDED_BY(mu_);
    size_t busy_ ENL_GUARDED_BY(mu_) = 0;
    bool stopping_ ENL_GUARDED_BY(mu_) = false;
    std::vector<std::thread> threads_;
};

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty()) return fail("api socket: empty path");
    if (path.size() >= sizeof(addr.sun_path))
        return fail("api socket {}: the path is {} bytes long; a Unix socket path has at most {}", path, path.size(),
                    sizeof(addr.sun_path) - 1);
    if (path.find('\0') != std::string::npos) return fail("api socket: the path contains a NUL byte");
    std::memcpy(addr.sun_path, path.data(), path.size());
    return addr;
}

// Makes `path` free for bind(): absent is fine, a stale socket (nobody accepting) is
// removed, anything else is refused.
Result<> clear_path(const std::string& path, const sockaddr_un& addr) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return {};
        return fail_errno(fmt::format("api socket {}", path));
    }
    if (!S_ISSOCK(st.st_mode)) return fail("api socket {}: the path exists and is not a socket; not replacing it", path);

    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return fail_errno("api socket: socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 || errno == EAGAIN ||
        errno == EINPROGRESS) {
        return fail("api socket {}: another process is serving on it (is another enlighten running?)", path);
    }
    if (errno != ECONNREFUSED) return fail_errno(fmt::format("api socket {}: checking the existing socket", path));
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return fail_errno(fmt::format("api socket {}: removing the stale socket", path));
    log::info("api: replaced the stale socket {}", path);
    return {};
}

}  // namespace

// One client connection; lives on the I/O thread (and in stop(), after it is joined).
struct Connection {
    enum class Phase {
        Reading,    // waiting for (more of) a request
        Calling,    // its request is queued or running on a worker; nothing is read
        Writing,    // an answer is going out; nothing is read
        Lingering,  // answered and half-closed; discarding what the client still sends
        Tunnel,     // a WebSocket to the console (web listener): frames both ways
    };

    Connection(uint64_t i, UniqueFd f, const ApiLimits& limits, bool w)
        : id(i), web(w), fd(std::move(f)), session(limits) {}

    const uint64_t id;
    const bool web;  // from the web listener (api/web.hpp)
    UniqueFd fd;
    EventLoop::WatchId watch = 0;
    uint32_t events = 0;  // what the watch asks for now
    HttpSession session;
    Phase phase = Phase::Reading;
    bool in_request = false;  // a request has started arriving: its deadline applies
    Clock::time_point idle_deadline;     // Reading, no request started: keep-alive
    Clock::time_point request_deadline;  // Reading, a request started: its first byte + io_timeout
    Clock::time_point deadline;          // the one that applies now (none while Calling)
    std::string out;  // [out_pos, end) still to send
    size_t out_pos = 0;
    bool close_after_write = false;
    bool linger_after_write = false;
    size_t lingered = 0;
    // Tunnel: the VNC server's end, what goes to it, and the browser's frames.
    struct Tunnel {
        UniqueFd peer;
        EventLoop::WatchId watch = 0;
        uint32_t events = 0;
        std::string to_peer;  // [to_peer_pos, end) still to send
        size_t to_peer_pos = 0;
        WsDecoder decoder;
        bool closing = false;  // a close frame is queued: send what is left, then close
    };
    std::unique_ptr<Tunnel> tunnel;
};

struct ApiServer::Impl {
    Impl(VmControl& v, ApiServerOptions o) : vm(v), options(std::move(o)) {}

    VmControl& vm;
    ApiServerOptions options;
    const ApiLimits& limits() const { return options.limits; }
    std::atomic<bool> stopping{false};
    bool running = false;
    dev_t sock_dev = 0;  // identifies our socket file, so stop() removes only ours
    ino_t sock_ino = 0;

    UniqueFd listen_fd;
    UniqueFd web_fd;  // the web listener (TCP), with options.web
    std::unique_ptr<EventLoopThread> io;
    WorkerPool quick;
    WorkerPool guest;

    // --- the I/O thread only (and stop(), once it has been joined) ---
    // Written by start() once the loop runs (atomic: the loop may read them at once).
    std::atomic<EventLoop::WatchId> listen_watch{0};
    std::atomic<EventLoop::WatchId> web_watch{0};
    size_t tunnels = 0;
    std::unordered_map<uint64_t, std::unique_ptr<Connection>> conns;
    uint64_t next_id = 1;
    bool sweep_armed = false;

    EventLoop& loop() { return io->loop(); }
    void on_listen(bool web);
    Result<> listen_web();
    void refuse_over_cap(UniqueFd fd);
    void on_event(uint64_t id, uint32_t events);
    void read_some(Connection& c);
    void pump(Connection& c);
    // Queues the call on its lane's workers; with `file`, reading that web file instead.
    void dispatch(Connection& c, ApiCall call, std::string file = {});
    void dispatch_web(Connection& c, ApiCall call);
    void open_tunnel(Connection& c, const WebRoute& route);
    void tunnel_event(Connection& c, uint32_t events);
    void tunnel_peer_event(uint64_t id, uint32_t events);
    void tunnel_pump(Connection& c);
    void tunnel_close(Connection& c, uint16_t code);
    void on_reply(uint64_t id, const HttpReply& reply);
    void send(Connection& c, HttpSession::Step step);
    void flush(Connection& c);
    void linger(Connection& c);
    void drain(Connection& c);
    void want(Connection& c, uint32_t events);
    void close(Connection& c);
    void arm_sweep();
    void sweep();
    [[nodiscard]] std::chrono::milliseconds sweep_tick() const;

    // --- workers ---
    void run_call(Job& job);

    void remove_socket_file() const;
};

void ApiServer::Impl::on_listen(bool web) {
    const int lfd = web ? web_fd.get() : listen_fd.get();
    for (size_t i = 0; i < kAcceptsPerRound; ++i) {
        UniqueFd fd(::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd.valid()) {
            const int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) return;
            if (err == EINTR || err == ECONNABORTED) continue;
            ENL_LOG_LIMITED(warn, "api: accept: {}", std::strerror(err));
            // Out of descriptors or memory: back off instead of spinning on a ready socket.
            const EventLoop::WatchId lwatch = web ? web_watch.load() : listen_watch.load();
            if (loop().modify(lwatch, 0)) {
                loop().post_after(kAcceptBackoff, [this, lwatch] { (void)loop().modify(lwatch, EPOLLIN); });
            }
            return;
        }
        if (conns.size() >= limits().max_connections) {
            refuse_over_cap(std::move(fd));
            continue;
        }
        const uint64_t id = next_id++;
        auto conn = std::make_unique<Connection>(id, std::move(fd), limits(), web);
        auto watch = loop().watch(conn->fd.get(), EPOLLIN, [this, id](uint32_t ev) { on_event(id, ev); });
        if (!watch) {
            ENL_LOG_LIMITED(warn, "api: watching a connection: {}", watch.error().message());
            continue;
        }
        conn->watch = *watch;
        conn->events = EPOLLIN;
        conn->idle_deadline = Clock::now() + limits().keep_alive_timeout;
        conn->deadline = conn->idle_deadline;
        conns.emplace(id, std::move(conn));
        arm_sweep();
    }
}

// Over the connection cap: a 503 that says so, and the connection closed at once (holding
// it open to drain would be holding what the cap is there to bound). What the client has
// sent already is read first, so that it does not see a reset before the answer.
void ApiServer::Impl::refuse_over_cap(UniqueFd fd) {
    ENL_LOG_LIMITED(warn, "api: {} connections open; refusing another", conns.size());
    HttpReply reply = error_reply(
        503, fmt::format("too many connections to the API (at most {}); try again later", limits().max_connections));
    reply.retry_after_s = 1;
    const std::string answer = HttpSession::closing_answer(reply);
    char sink[4096];
    for (size_t total = 0; total < (size_t{64} << 10);) {
        const ssize_t n = ::recv(fd.get(), sink, sizeof(sink), MSG_DONTWAIT);
        if (n <= 0) break;
        total += static_cast<size_t>(n);
    }
    (void)::send(fd.get(), answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void ApiServer::Impl::on_event(uint64_t id, uint32_t events) {
    const auto it = conns.find(id);
    if (it == conns.end()) return;
    Connection& c = *it->second;
    switch (c.phase) {
        case Connection::Phase::Calling:
            // Only errors and hang-ups are reported now: nobody is left to answer.
            if ((events & (EPOLLERR | EPOLLHUP)) != 0) close(c);
            return;
        case Connection::Phase::Writing: flush(c); return;
        case Connection::Phase::Lingering: drain(c); return;
        case Connection::Phase::Reading: read_some(c); return;
        case Connection::Phase::Tunnel: tunnel_event(c, events); return;
    }
}

void ApiServer::Impl::read_some(Connection& c) {
    char buf[kReadChunk];
    const ssize_t n = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        close(c);  // reset: nobody to answer
        return;
    }
    if (n == 0) {
        c.session.receive_eof();
    } else {
        c.session.receive(std::string_view(buf, static_cast<size_t>(n)));
    }
    pump(c);
}

// Runs the session until it needs more bytes, a call, or the connection is done.
void ApiServer::Impl::pump(Connection& c) {
    HttpSession::Step step = c.session.next();
    switch (step.kind) {
        case HttpSession::Kind::NeedMore:
            if (!c.session.request_started()) {
                c.in_request = false;
            } else if (!c.in_request) {
                c.in_request = true;
                c.request_deadline = Clock::now() + limits().io_timeout;
            }
            c.deadline = c.in_request ? c.request_deadline : c.idle_deadline;
            c.phase = Connection::Phase::Reading;
            want(c, EPOLLIN);
            return;
        case HttpSession::Kind::Write: send(c, std::move(step)); return;
        case HttpSession::Kind::Call:
            if (c.web) {
                dispatch_web(c, std::move(step.call));
            } else {
                dispatch(c, std::move(step.call));
            }
            return;
        case HttpSession::Kind::Close: close(c); return;
    }
}

void ApiServer::Impl::dispatch(Connection& c, ApiCall call, std::string file) {
    if (stopping.load(std::memory_order_acquire)) {
        close(c);
        return;
    }
    c.in_request = false;
    c.phase = Connection::Phase::Calling;
    want(c, 0);
    const Lane lane = file.empty() ? lane_of(call.method, call.target) : Lane::Quick;
    Job job{c.id, std::move(call), std::move(file)};
    if (lane == Lane::Quick) {
        // At most one request per connection is anywhere in the server: the queue is
        // bounded by the connection cap.
        if (quick.submit(std::move(job), SIZE_MAX)) return;
    } else if (guest.submit(std::move(job), limits().max_guest_calls)) {
        return;
    }
    if (stopping.load(std::memory_order_acquire)) {
        close(c);
        return;
    }
    HttpReply busy = error_reply(503, fmt::format("{} calls that wait for the guest are running (the most at once); "
                                                  "try again when one has finished",
                                                  limits().max_guest_calls));
    busy.retry_after_s = 1;
    send(c, c.session.answer(busy));
}

// On a worker: the call, then its answer to the I/O thread.
void ApiServer::Impl::run_call(Job& job) {
    // Stopping: the VMM is going away; no more calls into it.
    if (stopping.load(std::memory_order_acquire)) return;
    HttpReply reply = job.file.empty() ? handle_request(vm, job.call.method, job.call.target, job.call.body)
                                       : read_web_file(job.file);
    loop().post([this, id = job.conn, reply = std::move(reply)] { on_reply(id, reply); });
}

// A request on the web listener: the page, noVNC's files, the API, or the console.
void ApiServer::Impl::dispatch_web(Connection& c, ApiCall call) {
    const WebRoute route = route_web(*options.web, call);
    switch (route.kind) {
        case WebRoute::Kind::Reply: send(c, c.session.answer(route.reply)); return;
        case WebRoute::Kind::Api:
            call.target = route.api_target;
            dispatch(c, std::move(call));
            return;
        case WebRoute::Kind::File: dispatch(c, std::move(call), route.file); return;
        case WebRoute::Kind::WebSocket: open_tunnel(c, route); return;
    }
}

// The handshake passed: connect to the VM's VNC server, answer 101, and carry frames.
void ApiServer::Impl::open_tunnel(Connection& c, const WebRoute& route) {
    auto refuse = [&](int status, std::string message) {
        HttpReply r = error_reply(status, std::move(message));
        if (status == 503) r.retry_after_s = 1;
        send(c, c.session.answer(r));
    };
    if (!options.web->console) return refuse(503, "this VM has no console (start it with --display on)");
    if (tunnels >= kMaxTunnels)
        return refuse(503, fmt::format("{} consoles are open (the most at once); close one", kMaxTunnels));
    auto peer = options.web->console();
    if (!peer) return refuse(503, fmt::format("cannot reach the console: {}", peer.error().message()));
    (void)::fcntl(peer->get(), F_SETFL, ::fcntl(peer->get(), F_GETFL) | O_NONBLOCK);
    auto t = std::make_unique<Connection::Tunnel>();
    t->peer = std::move(*peer);
    const uint64_t id = c.id;
    auto watch = loop().watch(t->peer.get(), EPOLLIN, [this, id](uint32_t ev) { tunnel_peer_event(id, ev); });
    if (!watch) return refuse(503, fmt::format("cannot reach the console: {}", watch.error().message()));
    t->watch = *watch;
    t->events = EPOLLIN;
    // What the browser sent after its request is already WebSocket frames.
    const std::string early = c.session.take_unparsed();
    c.tunnel = std::move(t);
    ++tunnels;
    c.phase = Connection::Phase::Tunnel;
    c.in_request = false;
    c.out.append(websocket_accept_answer(route));
    log::info("web: a browser opened the console ({} open)", tunnels);
    if (!early.empty()) {
        WsInput in;
        c.tunnel->decoder.feed(early, in);
        c.tunnel->to_peer.append(in.data);
        for (const auto& p : in.pings) c.out.append(ws_frame(WsOpcode::Pong, p));
        if (in.error != 0 || in.close) return tunnel_close(c, in.error != 0 ? in.error : kWsNormal);
    }
    tunnel_pump(c);
}

// The browser's side is ready.
void ApiServer::Impl::tunnel_event(Connection& c, uint32_t events) {
    Connection::Tunnel& t = *c.tunnel;
    if ((events & EPOLLIN) != 0 && !t.closing) {
        char buf[kTunnelChunk];
        const ssize_t n = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            close(c);  // the browser is gone
            return;
        }
        if (n > 0) {
            WsInput in;
            t.decoder.feed(std::string_view(buf, static_cast<size_t>(n)), in);
            t.to_peer.append(in.data);
            for (const auto& p : in.pings) c.out.append(ws_frame(WsOpcode::Pong, p));
            if (in.error != 0) {
                log::info("web: closing a console WebSocket: {}", in.error_text);
                return tunnel_close(c, in.error);
            }
            if (in.close) return tunnel_close(c, kWsNormal);
        }
    } else if ((events & (EPOLLERR | EPOLLHUP)) != 0 && (events & EPOLLOUT) == 0) {
        close(c);
        return;
    }
    tunnel_pump(c);
}

// The VNC server's side is ready.
void ApiServer::Impl::tunnel_peer_event(uint64_t id, uint32_t events) {
    const auto it = conns.find(id);
    if (it == conns.end() || !it->second->tunnel) return;
    Connection& c = *it->second;
    Connection::Tunnel& t = *c.tunnel;
    if ((events & EPOLLIN) != 0 && !t.closing && c.out.size() - c.out_pos < kTunnelToClientMax) {
        char buf[kTunnelChunk];
        const ssize_t n = ::recv(t.peer.get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            return tunnel_close(c, kWsGoingAway);  // the VNC server let go (the VMM is stopping)
        }
        if (n > 0) c.out.append(ws_frame(WsOpcode::Binary, std::string_view(buf, static_cast<size_t>(n))));
    } else if ((events & (EPOLLERR | EPOLLHUP)) != 0 && (events & EPOLLIN) == 0) {
        return tunnel_close(c, kWsGoingAway);
    }
    tunnel_pump(c);
}

// Queues a close frame: what is pending goes out, then the connection ends.
void ApiServer::Impl::tunnel_close(Connection& c, uint16_t code) {
    Connection::Tunnel& t = *c.tunnel;
    if (!t.closing) {
        t.closing = true;
        c.out.append(ws_close_frame(code));
        // What the browser sent before it broke the protocol or closed goes out if the VNC
        // server takes it now; nothing more is waited for.
        if (t.to_peer_pos < t.to_peer.size())
            (void)::send(t.peer.get(), t.to_peer.data() + t.to_peer_pos, t.to_peer.size() - t.to_peer_pos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        t.to_peer.clear();
        t.to_peer_pos = 0;
    }
    tunnel_pump(c);
}

// Sends what each side can take, then watches for what is needed next: a side is read only
// while the other's pending bytes are under their bound.
void ApiServer::Impl::tunnel_pump(Connection& c) {
    Connection::Tunnel& t = *c.tunnel;
    auto send_some = [](int fd, std::string& buf, size_t& pos) -> bool {  // false: the other end is gone
        while (pos < buf.size()) {
            const ssize_t n = ::send(fd, buf.data() + pos, buf.size() - pos, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                pos += static_cast<size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            return false;
        }
        if (pos == buf.size()) {
            buf.clear();
            pos = 0;
        } else if (pos > (size_t{64} << 10)) {
            buf.erase(0, pos);
            pos = 0;
        }
        return true;
    };
    const size_t client_before = c.out.size() - c.out_pos;
    if (!send_some(c.fd.get(), c.out, c.out_pos)) {
        close(c);
        return;
    }
    if (!send_some(t.peer.get(), t.to_peer, t.to_peer_pos)) {
        tunnel_close(c, kWsGoingAway);
        return;
    }
    const size_t to_client = c.out.size() - c.out_pos;
    if (t.closing && to_client == 0) {
        close(c);
        return;
    }
    // The stall deadline runs only while the browser has something to take and takes none of it.
    if (to_client == 0) {
        c.deadline = Clock::time_point::max();
    } else if (to_client < client_before || c.deadline == Clock::time_point::max()) {
        c.deadline = Clock::now() + kTunnelStall;
    }
    const size_t to_peer = t.to_peer.size() - t.to_peer_pos;
    uint32_t client_events = 0;
    if (!t.closing && to_peer < kTunnelToConsoleMax) client_events |= EPOLLIN;
    if (to_client > 0) client_events |= EPOLLOUT;
    want(c, client_events);
    uint32_t peer_events = 0;
    if (!t.closing && to_client < kTunnelToClientMax) peer_events |= EPOLLIN;
    if (!t.closing && to_peer > 0) peer_events |= EPOLLOUT;
    if (peer_events != t.events && loop().modify(t.watch, peer_events)) t.events = peer_events;
    arm_sweep();
}

void ApiServer::Impl::on_reply(uint64_t id, const HttpReply& reply) {
    const auto it = conns.find(id);
    if (it == conns.end()) return;  // the client hung up meanwhile
    Connection& c = *it->second;
    send(c, c.session.answer(reply));
}

void ApiServer::Impl::send(Connection& c, HttpSession::Step step) {
    c.out.append(step.bytes);
    if (step.close) {
        c.close_after_write = true;
        c.linger_after_write = step.unread;
    }
    c.phase = Connection::Phase::Writing;
    c.deadline = Clock::now() + limits().io_timeout;
    flush(c);
}

// Sends what it can; when all is sent, goes on with the connection.
void ApiServer::Impl::flush(Connection& c) {
    while (c.out_pos < c.out.size()) {
        const ssize_t n =
            ::send(c.fd.get(), c.out.data() + c.out_pos, c.out.size() - c.out_pos, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c.out_pos += static_cast<size_t>(n);
            c.deadline = Clock::now() + limits().io_timeout;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want(c, EPOLLOUT);
            return;
        }
        close(c);  // the client is gone
        return;
    }
    c.out.clear();
    c.out_pos = 0;
    if (c.close_after_write) {
        if (c.linger_after_write) {
            linger(c);
        } else {
            close(c);
        }
        return;
    }
    c.idle_deadline = Clock::now() + limits().keep_alive_timeout;
    pump(c);
}

// The client may still be sending a body we refused. Closing with unread data would make
// its next read fail with ECONNRESET before it sees our answer, so half-close and discard
// what arrives for a moment (bounded in bytes and time).
void ApiServer::Impl::linger(Connection& c) {
    ::shutdown(c.fd.get(), SHUT_WR);
    c.phase = Connection::Phase::Lingering;
    c.deadline = Clock::now() + std::min<std::chrono::milliseconds>(kLingerTime, limits().io_timeout);
    want(c, EPOLLIN);
}

void ApiServer::Impl::drain(Connection& c) {
    char sink[kReadChunk];
    const ssize_t n = ::recv(c.fd.get(), sink, sizeof(sink), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) {
        close(c);
        return;
    }
    c.lingered += static_cast<size_t>(n);
    if (c.lingered >= kLingerBytes) close(c);
}

void ApiServer::Impl::want(Connection& c, uint32_t events) {
    if (c.events == events) return;
    // It fails only for a watch that is gone, which a live connection's never is.
    if (auto ok = loop().modify(c.watch, events); !ok) {
        ENL_LOG_LIMITED(warn, "api: watching a connection: {}", ok.error().message());
        return;
    }
    c.events = events;
}

// Ends the connection; `c` is gone when this returns.
void ApiServer::Impl::close(Connection& c) {
    loop().unwatch(c.watch);
    if (c.tunnel) {
        loop().unwatch(c.tunnel->watch);
        --tunnels;
    }
    conns.erase(c.id);
}

std::chrono::milliseconds ApiServer::Impl::sweep_tick() const {
    const auto shortest = std::min({limits().io_timeout, limits().keep_alive_timeout,
                                    std::chrono::milliseconds(kLingerTime)});
    return std::clamp<std::chrono::milliseconds>(shortest / 4, 5ms, 250ms);
}

// The deadlines are checked a few times per shortest timeout, while there are connections.
void ApiServer::Impl::arm_sweep() {
    if (sweep_armed || conns.empty()) return;
    sweep_armed = true;
    loop().post_after(sweep_tick(), [this] {
        sweep_armed = false;
        sweep();
        arm_sweep();
    });
}

void ApiServer::Impl::sweep() {
    const auto now = Clock::now();
    std::vector<uint64_t> expired;
    for (const auto& [id, c] : conns)
        if (c->phase != Connection::Phase::Calling && c->deadline <= now) expired.push_back(id);
    for (const uint64_t id : expired) {
        Connection& c = *conns.at(id);
        if (c.phase == Connection::Phase::Tunnel) {
            log::info("web: a browser took nothing of the console for {} s; closing its connection",
                      std::chrono::duration_cast<std::chrono::seconds>(kTunnelStall).count());
            close(c);
        } else if (c.phase == Connection::Phase::Reading && c.in_request) {
            log::debug("api: a request did not arrive within {} ms", limits().io_timeout.count());
            send(c, c.session.timed_out());
        } else {
            // Idle past the keep-alive timeout, an answer not taken, or done lingering.
            close(c);
        }
    }
}

void ApiServer::Impl::remove_socket_file() const {
    struct stat st {};
    const std::string& path = options.socket_path;
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == sock_dev && st.st_ino == sock_ino) {
        if (::unlink(path.c_str()) != 0) log::warn("api: removing {}: {}", path, std::strerror(errno));
    }
}


ApiServer::ApiServer(VmControl& vm, ApiServerOptions options)
    : impl_(std::make_unique<Impl>(vm, std::move(options))) {}

ApiServer::~ApiServer() { stop(); }

const std::string& ApiServer::socket_path() const { return impl_->options.socket_path; }

uint16_t ApiServer::web_port() const {
    sockaddr_in addr{};
    socklen_t len = sizeof(addr);
    if (!impl_->web_fd.valid() || ::getsockname(impl_->web_fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
        return 0;
    return ntohs(addr.sin_port);
}

Result<> ApiServer::start() {
    Impl& s = *impl_;
    if (s.running) return fail("api: the server is already running");
    if (s.options.threads == 0) return fail("api: at least one worker thread is needed");
    if (s.options.limits.max_connections == 0) return fail("api: max_connections must be at least 1");
    if (s.options.socket_path.empty() && !s.options.web) return fail("api: neither a socket nor --web to serve on");
    if (s.options.web && s.options.web->token.size() < 32) return fail("web: the access token is missing");
    const std::string& path = s.options.socket_path;
    auto undo = [&](Error e) {
        if (!path.empty()) ::unlink(path.c_str());
        return std::unexpected(std::move(e));
    };
    if (!path.empty()) {
        ENL_TRY(const sockaddr_un addr, unix_address(path));
        ENL_TRY_VOID(clear_path(path, addr));

        UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd.valid()) return fail_errno("api socket: socket");
        // On Linux the socket file takes its mode from the socket's inode (less the umask), so
        // it is created 0600: no window in which another user could connect.
        if (::fchmod(fd.get(), S_IRUSR | S_IWUSR) != 0) return fail_errno("api socket: fchmod");
        if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
            if (errno == EADDRINUSE) return fail("api socket {}: the path was taken while starting", path);
            return fail_errno(fmt::format("api socket {}", path));
        }
        struct stat st {};
        if (::lstat(path.c_str(), &st) != 0) return fail_errno(fmt::format("api socket {}", path));
        s.sock_dev = st.st_dev;
        s.sock_ino = st.st_ino;
        if ((st.st_mode & 07777) != (S_IRUSR | S_IWUSR) && ::chmod(path.c_str(), S_IRUSR | S_IWUSR) != 0)
            return undo(fail_errno(fmt::format("api socket {}: chmod", path)).error());
        if (::listen(fd.get(), kBacklog) != 0) return undo(fail_errno(fmt::format("api socket {}: listen", path)).error());
        s.listen_fd = std::move(fd);
    }
    if (s.options.web) {
        if (auto ok = s.listen_web(); !ok) {
            s.listen_fd.reset();
            return undo(ok.error());
        }
    }
    auto io = EventLoopThread::start("enl-api-io", sandbox::ThreadKind::ApiIo);
    if (!io) {
        s.listen_fd.reset();
        s.web_fd.reset();
        return undo(io.error().context("api"));
    }

    s.io = std::move(*io);
    s.stopping.store(false);
    s.running = true;
    // The API socket and the web listener: the same accept path, told apart by `web`.
    for (const bool web : {false, true}) {
        const UniqueFd& fd = web ? s.web_fd : s.listen_fd;
        if (!fd.valid()) continue;
        auto watch = s.loop().watch(fd.get(), EPOLLIN, [&s, web](uint32_t) { s.on_listen(web); });
        if (!watch) {
            stop();
            return std::unexpected(watch.error().context(web ? "web" : "api"));
        }
        (web ? s.web_watch : s.listen_watch) = *watch;
    }
    auto run = [&s](Job& job) { s.run_call(job); };
    if (auto ok = s.quick.start(s.options.threads, "enl-api-", run); !ok) {
        stop();
        return ok;
    }
    if (auto ok = s.guest.start(s.options.limits.max_guest_calls, "enl-api-g", run); !ok) {
        stop();
        return ok;
    }
    if (!path.empty()) log::info("api: listening on {}", path);
    if (s.options.web) {
        log::info("web: the console and dashboard are at {}", web_url(*s.options.web));
        if (::access(fmt::format("{}/core/rfb.js", s.options.web->novnc_dir).c_str(), R_OK) != 0)
            log::warn("web: noVNC is not in {} (install Debian's package novnc): the page shows the dashboard "
                      "without the console",
                      s.options.web->novnc_dir);
    }
    return {};
}

// The web listener: TCP on the address given (the loopback interface by default).
Result<> ApiServer::Impl::listen_web() {
    const WebOptions& w = *options.web;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(w.port);
    if (::inet_pton(AF_INET, w.host.c_str(), &addr.sin_addr) != 1) return fail("web: '{}' is not an IPv4 address", w.host);
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return fail_errno("web: socket");
    const int one = 1;
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
        return fail_errno(fmt::format("web: cannot listen on {}:{}", w.host, w.port));
    if (::listen(fd.get(), kBacklog) != 0) return fail_errno(fmt::format("web: listen on {}:{}", w.host, w.port));
    if (addr.sin_addr.s_addr != htonl(INADDR_LOOPBACK))
        log::warn("web: listening on {}:{}, beyond this host's loopback interface: the token is all that keeps "
                  "others out, and the connection is not encrypted",
                  w.host, w.port);
    web_fd = std::move(fd);
    return {};
}

void ApiServer::stop() {
    Impl& s = *impl_;
    if (!s.running) return;
    s.stopping.store(true, std::memory_order_release);
    // The I/O thread first: nothing is read, dispatched or answered after this, and what
    // workers post from now on is dropped.
    s.io->stop();
    s.quick.stop();
    s.guest.stop();
    for (auto& [id, c] : s.conns) {
        s.loop().unwatch(c->watch);
        if (c->tunnel) s.loop().unwatch(c->tunnel->watch);
    }
    s.conns.clear();
    s.tunnels = 0;
    if (s.listen_watch != 0) s.loop().unwatch(s.listen_watch);
    if (s.web_watch != 0) s.loop().unwatch(s.web_watch);
    s.listen_watch.store(0);
    s.web_watch.store(0);
    s.listen_fd.reset();
    s.web_fd.reset();
    s.io.reset();
    s.sweep_armed = false;
    s.remove_socket_file();
    s.running = false;
    log::info("api: stopped");
}

}  // namespace enlighten::api
