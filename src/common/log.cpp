#include "common/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <array>

namespace enlighten::log {

namespace {

constexpr std::array<spdlog::level::level_enum, 6> kLevels = {
    spdlog::level::trace, spdlog::level::debug, spdlog::level::info,
    spdlog::level::warn,  spdlog::level::err,   spdlog::level::off,
};

spdlog::level::level_enum to_spdlog(Level level) { return kLevels[static_cast<size_t>(level)]; }

}  // namespace

void init_stderr() {
    auto logger = spdlog::stderr_logger_mt("enlighten");
    logger->set_pattern("enlighten: %l: %v");
    spdlog::set_default_logger(logger);
}

void set_level(Level level) { spdlog::set_level(to_spdlog(level)); }

bool enabled(Level level) noexcept { return spdlog::should_log(to_spdlog(level)); }

std::optional<Level> parse_level(std::string_view name) {
    constexpr std::array<std::string_view, 6> kNames = {"trace", "debug", "info", "warn", "error", "off"};
    for (size_t i = 0; i < kNames.size(); ++i)
        if (name == kNames[i]) return static_cast<Level>(i);
    return std::nullopt;
}

void write(Level level, std::string_view message) { spdlog::log(to_spdlog(level), "{}", message); }

}  // namespace enlighten::log
