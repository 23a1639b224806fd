// Parsing of human-written sizes ("512M", "2G", "1048576").
// Threads: pure functions, any thread; no locks.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/result.hpp"

namespace enlighten {

inline constexpr uint64_t KiB = 1024;
inline constexpr uint64_t MiB = 1024 * KiB;
inline constexpr uint64_t GiB = 1024 * MiB;

// Accepts a decimal number with an optional suffix K, M, G, T (binary units; an optional
// trailing "iB" or "B" is allowed). A bare number is bytes, except that numbers below
// 1 MiB are rejected by callers where that makes no sense.
Result<uint64_t> parse_size(std::string_view text);

}  // namespace enlighten
