// Enlighten's log: one line per message on stderr, prefixed "enlighten: <level>: ".
// A thin front for spdlog, which only src/common/log.cpp includes: spdlog is used header-only
// (so the VMM does not load libspdlog and the shared libstdc++ it brings) and compiling it
// once keeps the build fast. Messages are formatted with fmt only when the level is enabled.
//
//   log::debug("VP {}: SINT{} masked", vp, sint);
//   if (log::enabled(log::Level::Debug)) { ...expensive summary... }
//
// Threads: every function may be called from any thread (spdlog's logger is thread-safe).
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string_view>

namespace enlighten::log {

enum class Level { Trace, Debug, Info, Warn, Error, Off };

// Logs to stderr from now on (the default before this call is spdlog's own stdout logger).
void init_stderr();
void set_level(Level level);
[[nodiscard]] bool enabled(Level level) noexcept;
// "trace", "debug", "info", "warn", "error" or "off".
[[nodiscard]] std::optional<Level> parse_level(std::string_view name);

void write(Level level, std::string_view message);

// The level of each logging function, by its name (for macros that take the name).
namespace level_of {
inline constexpr Level trace = Level::Trace, debug = Level::Debug, info = Level::Info, warn = Level::Warn,
                       error = Level::Error;
}

template <typename... Args>
void emit(Level level, fmt::format_string<Args...> f, Args&&... args) {
    if (enabled(level)) write(level, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void trace(fmt::format_string<Args...> f, Args&&... args) { emit(Level::Trace, f, std::forward<Args>(args)...); }
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) { emit(Level::Debug, f, std::forward<Args>(args)...); }
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) { emit(Level::Info, f, std::forward<Args>(args)...); }
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) { emit(Level::Warn, f, std::forward<Args>(args)...); }
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) { emit(Level::Error, f, std::forward<Args>(args)...); }

}  // namespace enlighten::log
