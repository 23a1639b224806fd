#include "vmm/console.hpp"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/log.hpp"

namespace enlighten {

namespace {
constexpr size_t kFlushThreshold = 4096;
}

Result<ConsoleConfig> parse_console(std::string_view spec) {
    ConsoleConfig cfg;
    if (spec == "stdio" || spec == "tty") {
        cfg.mode = ConsoleConfig::Mode::Stdio;
    } else if (spec == "off" || spec == "null") {
        cfg.mode = ConsoleConfig::Mode::Off;
    } else if (spec.starts_with("file:") || spec.starts_with("file=")) {
        cfg.mode = ConsoleConfig::Mode::File;
        cfg.path = std::string(spec.substr(5));
        if (cfg.path.empty()) return fail("--serial {}: missing file path", spec);
    } else {
        return fail("--serial '{}': expected stdio, off or file:PATH", spec);
    }
    return cfg;
}

Result<std::unique_ptr<Console>> Console::create(const ConsoleConfig& cfg) {
    std::unique_ptr<Console> c(new Console());
    c->flush_event_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!c->flush_event_.valid()) return fail_errno("eventfd");
    switch (cfg.mode) {
        case ConsoleConfig::Mode::Stdio:
            c->output_fd_ = STDOUT_FILENO;
            c->input_fd_ = STDIN_FILENO;
            if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &c->saved_tty_) == 0) {
                // Raw input so that keys (Ctrl-C too) reach the guest; output is the guest's own.
                termios raw = c->saved_tty_;
                raw.c_iflag &= ~static_cast<tcflag_t>(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
                raw.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
                raw.c_cc[VMIN] = 1;
                raw.c_cc[VTIME] = 0;
                if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) c->restore_tty_ = true;
            }
            break;
        case ConsoleConfig::Mode::File:
            c->file_.reset(::open(cfg.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
            if (!c->file_.valid()) return fail("serial output file '{}': {}", cfg.path, std::strerror(errno));
            c->output_fd_ = c->file_.get();
            break;
        case ConsoleConfig::Mode::Off:
            break;
    }
    return c;
}

Console::~Console() {
    {
        std::lock_guard lock(mu_);
        write_out(kExitDrainMs);  // the last lines, if the reader takes them soon
        if (dropped_) log::warn("serial console: {} bytes of guest output dropped (the output did not take them)", dropped_);
    }
    if (restore_tty_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty_);
}

bool Console::write_out(int wait_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (sent_ < buffer_.size() && output_fd_ >= 0) {
        // Ready for at least PIPE_BUF bytes (a pipe), or always (a file): a write of at most
        // that much does not block.
        pollfd pfd{output_fd_, POLLOUT, 0};
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        const int ready = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) break;  // not now
        if (pfd.revents & (POLLERR | POLLNVAL)) {
            output_fd_ = -1;
            break;
        }
        const size_t chunk = std::min<size_t>(buffer_.size() - sent_, PIPE_BUF);
        const ssize_t n = ::write(output_fd_, buffer_.data() + sent_, chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            output_fd_ = -1;  // output is gone (closed pipe): drop further output
            break;
        }
        sent_ += static_cast<size_t>(n);
    }
    if (output_fd_ < 0) sent_ = buffer_.size();
    if (sent_ == buffer_.size()) {
        buffer_.clear();
        sent_ = 0;
        return true;
    }
    if (sent_ >= kFlushThreshold) {  // keep the unwritten tail only
        buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(sent_));
        sent_ = 0;
    }
    return false;
}

void Console::raise_flush_event() {
    if (flush_pending_) return;
    flush_pending_ = true;
    const uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(flush_event_.get(), &one, sizeof(one));
}

void Console::write(uint8_t byte) {
    std::lock_guard lock(mu_);
    if (output_fd_ < 0) return;
    if (buffer_.size() - sent_ >= kMaxBuffered) {
        ++dropped_;
        raise_flush_event();
        return;
    }
    buffer_.push_back(byte);
    if (byte == '\n' || buffer_.size() - sent_ >= kFlushThreshold) {
        if (!write_out(0)) raise_flush_event();  // the output is slow: the loop retries
        return;
    }
    raise_flush_event();
}

void Console::ack_flush_event() {
    uint64_t v;
    [[maybe_unused]] auto r = ::read(flush_event_.get(), &v, sizeof(v));
}

void Console::flush() {
    std::lock_guard lock(mu_);
    flush_pending_ = false;
    if (!write_out(0)) raise_flush_event();
}

uint64_t Console::dropped() const {
    std::lock_guard lock(mu_);
    return dropped_;
}

}  // namespace enlighten
