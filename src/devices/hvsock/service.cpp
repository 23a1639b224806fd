#include "devices/hvsock/service.hpp"

#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/hvsock/protocol.hpp"

namespace enlighten::hvsock {

namespace {

Result<sockaddr_un> unix_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof(a.sun_path))
        return fail(Errc::Invalid, "Unix socket path '{}' is empty or longer than {} bytes", path, sizeof(a.sun_path) - 1);
    std::memcpy(a.sun_path, path.data(), path.size());
    return a;
}

vmbus::Guid random_instance() {
    vmbus::Guid g;
    if (::getrandom(g.bytes.data(), g.bytes.size(), 0) != static_cast<ssize_t>(g.bytes.size())) {
        // No entropy (should not happen): still unique enough with the time and a counter.
        static uint64_t counter = 0;
        const uint64_t t = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        const uint64_t c = ++counter;
        std::memcpy(g.bytes.data(), &t, 8);
        std::memcpy(g.bytes.data() + 8, &c, 8);
    }
    g.bytes[7] = static_cast<uint8_t>((g.bytes[7] & 0x0f) | 0x40);  // version 4 (mixed-endian field 3)
    g.bytes[8] = static_cast<uint8_t>((g.bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
    return g;
}

}  // namespace

Result<std::unique_ptr<Service>> Service::create(ServiceOptions options, EventLoop& loop) {
    ENL_TRY(sockaddr_un addr, unix_address(options.socket_path));
    // A socket file left by an earlier run is replaced; any other file is an error.
    struct stat st{};
    if (::lstat(options.socket_path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) return fail(Errc::Invalid, "'{}' exists and is not a socket", options.socket_path);
        ::unlink(options.socket_path.c_str());
    }
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return fail_errno("socket(AF_UNIX)");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
        return fail_errno(fmt::format("bind {}", options.socket_path));
    if (::listen(fd.get(), 128) != 0) return fail_errno(fmt::format("listen {}", options.socket_path));
    std::unique_ptr<Service> s(new Service(std::move(options), loop, std::move(fd)));
    auto w = loop.watch(s->listener_.get(), EPOLLIN, [p = s.get()](uint32_t) { p->on_accept(); });
    if (!w) return std::unexpected(w.error().context("watching the vsock socket"));
    s->listen_watch_ = *w;
    return s;
}

Service::Service(ServiceOptions options, EventLoop& loop, UniqueFd listener)
    : options_(std::move(options)), loop_(loop), listener_(std::move(listener)) {}

Service::~Service() {
    detach();
    if (listen_watch_) loop_.unwatch(listen_watch_);
    for (auto& [id, c] : clients_) {
        if (c.watch) loop_.unwatch(c.watch);
        if (c.timer) loop_.cancel(c.timer);
    }
    clients_.clear();
    listener_.reset();
    ::unlink(options_.socket_path.c_str());
}

void Service::attach(vmbus::Server& server) {
    server_ = &server;
    server.set_tl_connect_handler(
        [this](const vmbus::Guid& endpoint, const vmbus::Guid& service) { on_guest_connect(endpoint, service); });
}

void Service::detach() {
    auto conns = std::move(conns_);
    conns_.clear();
    for (auto& [id, live] : conns) {
        stats_.bytes_to_guest += live.conn->stats().bytes_to_guest;
        stats_.bytes_from_guest += live.conn->stats().bytes_from_guest;
        live.conn->detach();
    }
    server_ = nullptr;
}

ServiceStats Service::stats() const {
    ServiceStats s = stats_;
    s.live = conns_.size();
    return s;
}

void Service::on_accept() {
    for (;;) {
        UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd.valid()) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                ENL_LOG_LIMITED(warn, "vsock: accept on {}: {}", options_.socket_path, std::strerror(errno));
            return;
        }
        if (clients_.size() >= kMaxPendingClients) {
            ++stats_.refused;
            ENL_LOG_LIMITED(warn, "vsock: {} clients have not sent CONNECT yet; closing a new one", clients_.size());
            continue;  // closed
        }
        const uint64_t id = next_id_++;
        Client c;
        auto w = loop_.watch(fd.get(), EPOLLIN, [this, id](uint32_t) { on_client(id); });
        if (!w) continue;
        c.fd = std::move(fd);
        c.watch = *w;
        c.timer = loop_.post_after(options_.line_timeout, [this, id] {
            if (auto it = clients_.find(id); it != clients_.end()) {
                it->second.timer = 0;
                ENL_LOG_LIMITED(info, "vsock: a client sent no CONNECT line in time");
                drop_client(id);
            }
        });
        clients_.emplace(id, std::move(c));
    }
}

void Service::drop_client(uint64_t id) {
    auto it = clients_.find(id);
    if (it == clients_.end()) return;
    if (it->second.watch) loop_.unwatch(it->second.watch);
    if (it->second.timer) loop_.cancel(it->second.timer);
    clients_.erase(it);  // closes the socket
}

void Service::on_client(uint64_t id) {
    auto it = clients_.find(id);
    if (it == clients_.end()) return;
    Client& c = it->second;
    // One byte at a time up to the newline: what follows it is the stream, for the guest.
    while (c.line.size() < kMaxConnectLine && (c.line.empty() || c.line.back() != '\n')) {
        char ch;
        const ssize_t n = ::recv(c.fd.get(), &ch, 1, MSG_DONTWAIT);
        if (n == 1) {
            c.line.push_back(ch);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // more later
        ++stats_.refused;
        return drop_client(id);  // EOF or error before the line ended
    }
    auto port = parse_connect_line(c.line);
    if (!port) {
        ++stats_.refused;
        ENL_LOG_LIMITED(info, "vsock: a client's request was refused: {}", port.error().message());
        return drop_client(id);
    }
    UniqueFd fd = std::move(c.fd);
    loop_.unwatch(c.watch);
    c.watch = 0;
    drop_client(id);
    host_connect(std::move(fd), *port);
}

bool Service::instance_taken(const vmbus::Guid& instance) const {
    if (server_ && server_->instance_in_use(instance)) return true;
    for (const auto& [id, live] : conns_)
        if (live.conn->offer().instance_id == instance) return true;
    return false;
}

void Service::host_connect(UniqueFd fd, uint32_t port) {
    if (!server_ || server_->version() < vmbus::kVersionWin10) {
        ++stats_.refused;
        ENL_LOG_LIMITED(info, "vsock: CONNECT {} refused: the guest's VMBus is not connected at 4.0 or later", port);
        return;  // closing the socket tells the client
    }
    vmbus::Guid instance = random_instance();
    for (int i = 0; i < 8 && instance_taken(instance); ++i) instance = random_instance();
    if (instance_taken(instance)) {
        ++stats_.refused;
        return;
    }
    if (auto ok = add_connection(Origin::Host, service_id(port), instance, std::move(fd)); !ok) {
        ++stats_.refused;
        ENL_LOG_LIMITED(warn, "vsock: CONNECT {} refused: {}", port, ok.error().message());
        return;
    }
    ++stats_.host_connects;
}

void Service::on_guest_connect(const vmbus::Guid& endpoint, const vmbus::Guid& service) {
    auto refuse = [&](std::string_view why) {
        ++stats_.refused;
        ENL_LOG_LIMITED(info, "vsock: guest connect from {} to {} refused: {}", endpoint.to_string(), service.to_string(),
                        why);
    };
    if (!server_) return refuse("not attached to a VMBus");
    // Linux only ever sends template ids (hvs_connect); anything else is not a vsock port.
    if (!is_service_id(service) || !is_service_id(endpoint)) return refuse("not hv_sock service ids");
    if (instance_taken(endpoint)) return refuse("the guest endpoint's channel is still in use");
    const uint32_t port = port_of(service);
    const std::string path = fmt::format("{}_{}", options_.socket_path, port);
    auto addr = unix_address(path);
    if (!addr) return refuse(addr.error().message());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return refuse(std::strerror(errno));
    // A Unix stream connect completes or fails at once (EAGAIN: the listener's backlog is full).
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0)
        return refuse(fmt::format("connect {}: {}", path, std::strerror(errno)));
    if (auto ok = add_connection(Origin::Guest, service, endpoint, std::move(fd)); !ok) return refuse(ok.error().message());
    ++stats_.guest_connects;
}

Result<> Service::add_connection(Origin origin, const vmbus::Guid& service, const vmbus::Guid& instance, UniqueFd fd) {
    if (conns_.size() >= kMaxConnections)
        return fail(Errc::Busy, "{} connections are open (at most {})", conns_.size(), kMaxConnections);
    const uint64_t id = next_id_++;
    Connection::Params p;
    p.id = id;
    p.origin = origin;
    p.service = service;
    p.instance = instance;
    p.fd = std::move(fd);
    p.loop = &loop_;
    p.on_end = [this](uint64_t cid, const std::string& why, bool rescind) { on_end(cid, why, rescind); };
    auto conn = std::make_shared<Connection>(std::move(p));
    ENL_TRY(uint32_t relid, server_->add_device(conn));
    conns_[id] = Live{conn, relid};
    conn->start(options_.open_timeout);
    return {};
}

void Service::on_end(uint64_t id, const std::string& why, bool rescind) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    Live live = std::move(it->second);
    conns_.erase(it);
    stats_.bytes_to_guest += live.conn->stats().bytes_to_guest;
    stats_.bytes_from_guest += live.conn->stats().bytes_from_guest;
    // The guest finishes its close only once the channel is rescinded (contract-services
    // §4.8). NotFound: the bus already withdrew it (a reset).
    if (server_ && rescind) {
        if (auto r = server_->rescind(live.relid); !r && !r.error().is(Errc::NotFound))
            log::warn("vsock: rescinding channel {}: {}", live.relid, r.error().message());
    }
    log::debug("vsock: connection {} (channel {}) ended: {}", id, live.relid, why);
}

}  // namespace enlighten::hvsock
