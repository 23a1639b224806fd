// make_backend and parse_hostfwd (net.hpp).
#include "backends/net/net.hpp"

#include <arpa/inet.h>

#include <charconv>

#include "backends/net/slirp.hpp"
#include "backends/net/tap.hpp"

namespace enlighten::net {
namespace {

// A port, 1..65535, decimal digits only (no sign, no spaces).
Result<uint16_t> parse_port(std::string_view s, std::string_view spec, const char* which) {
    if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string_view::npos)
        return fail(Errc::Invalid, "hostfwd '{}': bad {} port '{}'", spec, which, s);
    unsigned v = 0;
    std::from_chars(s.data(), s.data() + s.size(), v);
    if (v == 0 || v > 65535) return fail(Errc::Invalid, "hostfwd '{}': {} port {} is not in 1..65535", spec, which, v);
    return static_cast<uint16_t>(v);
}

// Empty (any / the guest's DHCP address) or a dotted IPv4 address.
Result<std::string> parse_addr(std::string_view s, std::string_view spec, const char* which) {
    if (s.empty()) return std::string();
    in_addr a{};
    const std::string str(s);
    if (::inet_pton(AF_INET, str.c_str(), &a) != 1)
        return fail(Errc::Invalid, "hostfwd '{}': {} address '{}' is not an IPv4 address", spec, which, s);
    return str;
}

}  // namespace

Result<HostForward> parse_hostfwd(std::string_view spec) {
    HostForward f;
    const size_t colon = spec.find(':');
    if (colon == std::string_view::npos)
        return fail(Errc::Invalid, "hostfwd '{}': expected [tcp|udp]:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT", spec);
    const std::string_view proto = spec.substr(0, colon);
    if (proto == "udp") f.udp = true;
    else if (proto != "tcp" && !proto.empty())
        return fail(Errc::Invalid, "hostfwd '{}': protocol '{}' is neither tcp nor udp", spec, proto);
    const std::string_view rest = spec.substr(colon + 1);
    const size_t dash = rest.find('-');
    if (dash == std::string_view::npos || rest.find('-', dash + 1) != std::string_view::npos)
        return fail(Errc::Invalid, "hostfwd '{}': expected one '-' between the host and the guest side", spec);
    const std::string_view host = rest.substr(0, dash), guest = rest.substr(dash + 1);
    const size_t hc = host.rfind(':'), gc = guest.rfind(':');
    if (hc == std::string_view::npos || host.find(':') != hc)
        return fail(Errc::Invalid, "hostfwd '{}': the host side is not HOSTADDR:HOSTPORT", spec);
    if (gc == std::string_view::npos || guest.find(':') != gc)
        return fail(Errc::Invalid, "hostfwd '{}': the guest side is not GUESTADDR:GUESTPORT", spec);
    ENL_TRY(f.host_addr, parse_addr(host.substr(0, hc), spec, "host"));
    ENL_TRY(f.host_port, parse_port(host.substr(hc + 1), spec, "host"));
    ENL_TRY(f.guest_addr, parse_addr(guest.substr(0, gc), spec, "guest"));
    ENL_TRY(f.guest_port, parse_port(guest.substr(gc + 1), spec, "guest"));
    return f;
}

Result<std::unique_ptr<Backend>> make_backend(const BackendConfig& config) {
    if (config.kind == "slirp") {
        if (!config.tap.empty()) return fail(Errc::Invalid, "network: a tap name ('{}') with the slirp backend", config.tap);
        return make_slirp_backend(config);
    }
    if (config.kind == "tap") {
        if (!config.forwards.empty())
            return fail(Errc::Invalid, "network: port forwards are for the slirp backend, not tap");
        return make_tap_backend(config.tap);
    }
    return fail(Errc::Invalid, "network: unknown backend '{}' (slirp or tap)", config.kind);
}

}  // namespace enlighten::net
