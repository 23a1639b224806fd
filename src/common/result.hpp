// Explicit errors for every path the guest or the user can drive.
// Exceptions are used only at the edges (CLI parsing); everything below returns Result<T>.
//
// An Error is a code that callers branch on (a KVP timeout is not a missing key; a backend
// errno becomes SCSI sense), the errno behind it if there is one, and one human-readable
// line for logs and API messages.
// Threads: values, any thread; no locks.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace enlighten {

enum class Errc : uint8_t {
    Failed,       // nothing more specific to say
    Invalid,      // bad input: a malformed message, an argument out of range
    NotFound,     // no such key, channel, device, file
    Timeout,      // the other side did not answer in time
    Closed,       // the channel or device is closed (or closed while waiting)
    Busy,         // no room now (a full ring, a full queue); try again later
    Io,           // a host I/O error; errno() says which
    Unsupported,  // a valid request we do not implement
};

[[nodiscard]] constexpr const char* to_string(Errc c) {
    switch (c) {
        case Errc::Failed: return "failed";
        case Errc::Invalid: return "invalid";
        case Errc::NotFound: return "not found";
        case Errc::Timeout: return "timeout";
        case Errc::Closed: return "closed";
        case Errc::Busy: return "busy";
        case Errc::Io: return "I/O error";
        case Errc::Unsupported: return "unsupported";
    }
    return "unknown";
}

// One human-readable line, "what failed: why", with a code.
class Error {
public:
    explicit Error(std::string message, Errc code = Errc::Failed, int sys_errno = 0)
        : message_(std::move(message)), code_(code), errno_(sys_errno) {}

    // Error from errno, e.g. Error::from_errno("open /dev/kvm"): code Io.
    static Error from_errno(std::string_view what, int err = errno) {
        return Error(fmt::format("{}: {}", what, std::strerror(err)), Errc::Io, err);
    }

    // Prefix context, keeping the code: err.context("loading kernel") -> "loading kernel: <message>".
    [[nodiscard]] Error context(std::string_view what) const {
        return Error(fmt::format("{}: {}", what, message_), code_, errno_);
    }

    [[nodiscard]] const std::string& message() const { return message_; }
    [[nodiscard]] Errc code() const { return code_; }
    // The host errno behind an Io error (0 if none).
    [[nodiscard]] int sys_errno() const { return errno_; }
    [[nodiscard]] bool is(Errc c) const { return code_ == c; }

private:
    std::string message_;
    Errc code_;
    int errno_;
};

template <typename T = void>
using Result = std::expected<T, Error>;

template <typename... Args>
[[nodiscard]] std::unexpected<Error> fail(fmt::format_string<Args...> f, Args&&... args) {
    return std::unexpected(Error(fmt::format(f, std::forward<Args>(args)...)));
}

// The same with a code: fail(Errc::Timeout, "no answer from {}", name).
template <typename... Args>
[[nodiscard]] std::unexpected<Error> fail(Errc code, fmt::format_string<Args...> f, Args&&... args) {
    return std::unexpected(Error(fmt::format(f, std::forward<Args>(args)...), code));
}

inline std::unexpected<Error> fail_errno(std::string_view what, int err = errno) {
    return std::unexpected(Error::from_errno(what, err));
}

}  // namespace enlighten

// Propagate an error: ENL_TRY(auto x, expr); or ENL_TRY_VOID(expr);
#define ENL_CONCAT_INNER(a, b) a##b
#define ENL_CONCAT(a, b) ENL_CONCAT_INNER(a, b)
#define ENL_TRY_IMPL(tmp, decl, expr)                     \
    auto tmp = (expr);                                    \
    if (!tmp) return std::unexpected(std::move(tmp).error()); \
    decl = std::move(*tmp)
#define ENL_TRY(decl, expr) ENL_TRY_IMPL(ENL_CONCAT(enl_try_, __LINE__), decl, expr)
#define ENL_TRY_VOID(expr)                                               \
    do {                                                                 \
        auto enl_try_v = (expr);                                         \
        if (!enl_try_v) return std::unexpected(std::move(enl_try_v).error()); \
    } while (0)
