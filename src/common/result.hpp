// Explicit errors for every path the guest or the user can drive.
// Exceptions are used only at the edges (CLI parsing); everything below returns Result<T>.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace enlighten {

// One human-readable line: "what failed: why".
class Error {
public:
    explicit Error(std::string message) : message_(std::move(message)) {}

    // Error from errno, e.g. Error::from_errno("open /dev/kvm").
    static Error from_errno(std::string_view what, int err = errno) {
        return Error(fmt::format("{}: {}", what, std::strerror(err)));
    }

    // Prefix context: err.context("loading kernel") -> "loading kernel: <message>".
    [[nodiscard]] Error context(std::string_view what) const {
        return Error(fmt::format("{}: {}", what, message_));
    }

    [[nodiscard]] const std::string& message() const { return message_; }

private:
    std::string message_;
};

template <typename T = void>
using Result = std::expected<T, Error>;

template <typename... Args>
[[nodiscard]] std::unexpected<Error> fail(fmt::format_string<Args...> f, Args&&... args) {
    return std::unexpected(Error(fmt::format(f, std::forward<Args>(args)...)));
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
