#include "common/endpoint.hpp"

#include <arpa/inet.h>

#include <charconv>

namespace enlighten {

Result<Ipv4Endpoint> parse_ipv4_endpoint(std::string_view option, std::string_view spec, std::string_view forms) {
    Ipv4Endpoint e;
    const size_t colon = spec.rfind(':');
    if (colon == std::string_view::npos) return fail(Errc::Invalid, "{} '{}': expected {}", option, spec, forms);
    if (colon > 0) e.host = spec.substr(0, colon);
    const auto port = spec.substr(colon + 1);
    unsigned v = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (ec != std::errc() || p != port.data() + port.size() || v == 0 || v > 65535)
        return fail(Errc::Invalid, "{} '{}': the port must be 1 to 65535", option, spec);
    e.port = static_cast<uint16_t>(v);
    in_addr addr{};
    if (::inet_pton(AF_INET, e.host.c_str(), &addr) != 1)
        return fail(Errc::Invalid, "{} '{}': '{}' is not an IPv4 address", option, spec, e.host);
    return e;
}

}  // namespace enlighten
