#include "devices/hvsock/protocol.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

namespace enlighten::hvsock {

vmbus::Guid service_id(uint32_t port) {
    vmbus::Guid g;
    std::copy(std::begin(kServiceTemplate), std::end(kServiceTemplate), g.bytes.begin());
    for (int i = 0; i < 4; ++i) g.bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(port >> (8 * i));
    return g;
}

bool is_service_id(const vmbus::Guid& id) {
    return std::equal(id.bytes.begin() + 4, id.bytes.end(), std::begin(kServiceTemplate) + 4);
}

uint32_t port_of(const vmbus::Guid& id) {
    return uint32_t{id.bytes[0]} | uint32_t{id.bytes[1]} << 8 | uint32_t{id.bytes[2]} << 16 |
           uint32_t{id.bytes[3]} << 24;
}

Result<std::span<const uint8_t>> parse_pipe_payload(std::span<const uint8_t> payload) {
    const auto hdr = read_prefix<PipeHeader>(payload);
    if (!hdr) return fail(Errc::Invalid, "hv_sock packet of {} bytes has no pipe header", payload.size());
    if (hdr->pkt_type != kPipeData) return fail(Errc::Invalid, "hv_sock packet of type {}", hdr->pkt_type);
    const size_t room = payload.size() - sizeof(PipeHeader);
    if (hdr->data_size > room || hdr->data_size > kMaxData)
        return fail(Errc::Invalid, "hv_sock packet says {} data bytes, carries {}", hdr->data_size, room);
    return payload.subspan(sizeof(PipeHeader), hdr->data_size);
}

Result<uint32_t> parse_connect_line(std::string_view line) {
    if (line.size() > kMaxConnectLine || line.empty() || line.back() != '\n')
        return fail(Errc::Invalid, "not a CONNECT line");
    line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    constexpr std::string_view kKeyword = "connect ";
    if (line.size() <= kKeyword.size()) return fail(Errc::Invalid, "not a CONNECT line");
    for (size_t i = 0; i < kKeyword.size(); ++i) {
        const char c = line[i];
        const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
        if (lower != kKeyword[i]) return fail(Errc::Invalid, "not a CONNECT line");
    }
    const std::string_view num = line.substr(kKeyword.size());
    uint32_t port = 0;
    const auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), port);
    if (ec != std::errc() || p != num.data() + num.size() || num.front() == '+' || num.front() == '-')
        return fail(Errc::Invalid, "CONNECT: '{}' is not a port number", num);
    return port;
}

}  // namespace enlighten::hvsock
