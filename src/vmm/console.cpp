#include "vmm/console.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

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
    flush();
    if (restore_tty_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty_);
}

void Console::write_out(std::span<const uint8_t> bytes) {
    while (!bytes.empty() && output_fd_ >= 0) {
        const ssize_t n = ::write(output_fd_, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            output_fd_ = -1;  // output is gone (closed pipe): drop further output
            return;
        }
        bytes = bytes.subspan(static_cast<size_t>(n));
    }
}

void Console::write(uint8_t byte) {
    if (output_fd_ < 0) return;
    std::lock_guard lock(mu_);
    buffer_.push_back(byte);
    if (byte == '\n' || buffer_.size() >= kFlushThreshold) {
        write_out(buffer_);
        buffer_.clear();
        return;
    }
    if (!flush_pending_) {
        flush_pending_ = true;
        const uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(flush_event_.get(), &one, sizeof(one));
    }
}

void Console::ack_flush_event() {
    uint64_t v;
    [[maybe_unused]] auto r = ::read(flush_event_.get(), &v, sizeof(v));
}

void Console::flush() {
    std::lock_guard lock(mu_);
    flush_pending_ = false;
    if (!buffer_.empty()) {
        write_out(buffer_);
        buffer_.clear();
    }
}

}  // namespace enlighten
