// HOST:PORT command-line values for the VMM's TCP listeners (--vnc, --web): an IPv4 address
// and a port, with ":PORT" meaning the loopback interface. Pure; any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace enlighten {

struct Ipv4Endpoint {
    std::string host = "127.0.0.1";
    uint16_t port = 0;
};

// `option` names the flag in the error ("--web"); `forms` says what it takes ("HOST:PORT or :PORT").
Result<Ipv4Endpoint> parse_ipv4_endpoint(std::string_view option, std::string_view spec, std::string_view forms);

}  // namespace enlighten
