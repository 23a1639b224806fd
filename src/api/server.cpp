#include "api/server.hpp"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "common/log.hpp"

#include "api/http_frontend.hpp"
#include "common/fd.hpp"
#include "common/rate_limit.hpp"

namespace enlighten::api {

namespace {

int to_poll_timeout(std::chrono::milliseconds t) {
    return static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(t.count(), 0, 1'000'000'000));
}

enum class Wait { Ready, Timeout, Stopped, Error };

// Waits for `events` on fd (Ready also covers an error or hang-up there, which the next
// read or write reports), or for the stop eventfd.
Wait wait_for(int fd, short events, int stop_fd, int timeout_ms) {
    pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    for (;;) {
        const int r = ::poll(fds, 2, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return Wait::Error;
        if (r == 0) return Wait::Timeout;
        if (fds[1].revents != 0) return Wait::Stopped;
        return Wait::Ready;
    }
}

bool wait_fd(int fd, short events, int stop_fd, int timeout_ms) {
    return wait_for(fd, events, stop_fd, timeout_ms) == Wait::Ready;
}

// A connection on the API socket: non-blocking, every wait bounded by the I/O timeout and
// cut short by stop.
class SocketStream final : public ConnectionStream {
public:
    SocketStream(int fd, int stop_fd, std::chrono::milliseconds io_timeout)
        : fd_(fd), stop_fd_(stop_fd), timeout_ms_(to_poll_timeout(io_timeout)) {}

    bool wait_for_request(std::chrono::milliseconds timeout) override {
        return wait_fd(fd_, POLLIN, stop_fd_, to_poll_timeout(timeout));
    }

protected:
    ssize_t raw_read(char* ptr, size_t size) override {
        for (;;) {
            const ssize_t n = ::recv(fd_, ptr, size, 0);
            if (n >= 0) return n;
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
            if (!wait(POLLIN)) return -1;
        }
    }

    ssize_t raw_write(const char* ptr, size_t size) override {
        for (;;) {
            const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
            if (n >= 0) return n;
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
            if (!wait(POLLOUT)) return -1;
        }
    }

private:
    bool wait(short events) {
        switch (wait_for(fd_, events, stop_fd_, timeout_ms_)) {
            case Wait::Ready: return true;
            case Wait::Timeout: note_timeout(); return false;
            case Wait::Stopped: note_stopped(); return false;
            case Wait::Error: return false;
        }
        return false;
    }


private:
    int fd_;
    int stop_fd_;
    int timeout_ms_;
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

struct ApiServer::Impl {
    Impl(VmControl& vm, ApiServerOptions o) : options(std::move(o)), frontend(vm, options.limits) {}

    ApiServerOptions options;
    HttpFrontend frontend;
    UniqueFd listen_fd;
    UniqueFd stop_fd;
    std::atomic<bool> stopping{false};
    std::vector<std::thread> workers;
    bool running = false;
    dev_t sock_dev = 0;  // identifies our socket file, so stop() removes only ours
    ino_t sock_ino = 0;

    void worker(unsigned index);
    void linger(int fd) const;
    void remove_socket_file() const;
};

void ApiServer::Impl::worker(unsigned index) {
    const std::string name = fmt::format("enl-api-{}", index);
    ::pthread_setname_np(::pthread_self(), name.c_str());
    for (;;) {
        if (!wait_fd(listen_fd.get(), POLLIN, stop_fd.get(), -1)) {
            if (stopping.load(std::memory_order_acquire)) return;
            continue;
        }
        UniqueFd conn(::accept4(listen_fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!conn.valid()) {
            const int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED) continue;
            ENL_LOG_LIMITED(warn, "api: accept: {}", std::strerror(err));
            // Out of descriptors or memory: back off instead of spinning on a ready socket.
            (void)wait_fd(stop_fd.get(), POLLIN, stop_fd.get(), 100);
            continue;
        }
        SocketStream stream(conn.get(), stop_fd.get(), options.limits.io_timeout);
        const bool unread = frontend.serve(stream, stopping);
        if (unread && !stopping.load(std::memory_order_acquire)) linger(conn.get());
    }
}

// The client may still be sending a body we refused. Closing with unread data would make
// its next read fail with ECONNRESET before it sees our answer, so half-close and discard
// what arrives for a moment (bounded in bytes and time).
void ApiServer::Impl::linger(int fd) const {
    ::shutdown(fd, SHUT_WR);
    char sink[4096];
    size_t total = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (total < (1U << 20)) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0 || !wait_fd(fd, POLLIN, stop_fd.get(), to_poll_timeout(left))) return;
        const ssize_t n = ::recv(fd, sink, sizeof(sink), 0);
        if (n <= 0 && !(n < 0 && (errno == EINTR || errno == EAGAIN))) return;
        if (n > 0) total += static_cast<size_t>(n);
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

Result<> ApiServer::start() {
    Impl& s = *impl_;
    if (s.running) return fail("api: the server is already running");
    if (s.options.threads == 0) return fail("api: at least one worker thread is needed");
    const std::string& path = s.options.socket_path;
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
    if ((st.st_mode & 07777) != (S_IRUSR | S_IWUSR) && ::chmod(path.c_str(), S_IRUSR | S_IWUSR) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        return fail_errno(fmt::format("api socket {}: chmod", path), err);
    }
    if (::listen(fd.get(), 16) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        return fail_errno(fmt::format("api socket {}: listen", path), err);
    }
    UniqueFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!stop_fd.valid()) {
        const int err = errno;
        ::unlink(path.c_str());
        return fail_errno("api: eventfd", err);
    }

    s.listen_fd = std::move(fd);
    s.stop_fd = std::move(stop_fd);
    s.stopping.store(false);
    s.running = true;
    try {
        for (unsigned i = 0; i < s.options.threads; ++i) s.workers.emplace_back([&s, i] { s.worker(i); });
    } catch (const std::system_error& e) {
        stop();
        return fail("api: starting a worker thread: {}", e.what());
    }
    log::info("api: listening on {}", path);
    return {};
}

void ApiServer::stop() {
    Impl& s = *impl_;
    if (!s.running) return;
    s.stopping.store(true, std::memory_order_release);
    const uint64_t one = 1;
    if (::write(s.stop_fd.get(), &one, sizeof(one)) != static_cast<ssize_t>(sizeof(one)))
        log::warn("api: waking the workers: {}", std::strerror(errno));
    for (auto& t : s.workers) t.join();
    s.workers.clear();
    s.listen_fd.reset();
    s.stop_fd.reset();
    s.remove_socket_file();
    s.running = false;
    log::info("api: stopped");
}

}  // namespace enlighten::api
