#include <sys/random.h>

#include <cstdio>

#include <fmt/format.h>

#include "vmbus/protocol.hpp"

namespace enlighten::vmbus {

Guid Guid::parse(const char* text) {
    unsigned a = 0, b = 0, c = 0, d[8] = {};
    int consumed = 0;
    Guid g;
    if (std::sscanf(text, "%8x-%4x-%4x-%2x%2x-%2x%2x%2x%2x%2x%2x%n", &a, &b, &c, &d[0], &d[1], &d[2], &d[3], &d[4],
                    &d[5], &d[6], &d[7], &consumed) != 11 ||
        consumed != 36 || text[36] != '\0')
        return g;
    auto& o = g.bytes;
    for (int i = 0; i < 4; ++i) o[static_cast<size_t>(i)] = static_cast<uint8_t>(a >> (8 * i));
    o[4] = static_cast<uint8_t>(b);
    o[5] = static_cast<uint8_t>(b >> 8);
    o[6] = static_cast<uint8_t>(c);
    o[7] = static_cast<uint8_t>(c >> 8);
    for (size_t i = 0; i < 8; ++i) o[8 + i] = static_cast<uint8_t>(d[i]);
    return g;
}

Guid Guid::from_name(std::string_view name) {
    uint64_t h1 = 0xcbf29ce484222325ULL, h2 = 0x84222325cbf29ce4ULL;
    for (char c : name) {
        h1 = (h1 ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
        h2 = (h2 ^ static_cast<uint8_t>(c)) * 0x100000001b3ULL;
    }
    Guid g;
    for (int i = 0; i < 8; ++i) {
        g.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(h1 >> (8 * i));
        g.bytes[static_cast<size_t>(8 + i)] = static_cast<uint8_t>(h2 >> (8 * i));
    }
    g.bytes[7] = static_cast<uint8_t>((g.bytes[7] & 0x0f) | 0x40);  // version 4 style
    g.bytes[8] = static_cast<uint8_t>((g.bytes[8] & 0x3f) | 0x80);
    return g;
}

Guid Guid::random() {
    Guid g;
    size_t got = 0;
    while (got < g.bytes.size()) {
        ssize_t n = ::getrandom(g.bytes.data() + got, g.bytes.size() - got, 0);
        if (n > 0) got += static_cast<size_t>(n);
        // getrandom(2) with flags 0 blocks until the pool is ready and fails only on EINTR
    }
    g.bytes[7] = static_cast<uint8_t>((g.bytes[7] & 0x0f) | 0x40);  // version 4
    g.bytes[8] = static_cast<uint8_t>((g.bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
    return g;
}

std::string Guid::to_string() const {
    const auto& o = bytes;
    return fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                       o[3], o[2], o[1], o[0], o[5], o[4], o[7], o[6], o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15]);
}

}  // namespace enlighten::vmbus
