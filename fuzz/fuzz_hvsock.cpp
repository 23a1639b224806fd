// Fuzzes hv_sock: the pipe-packet and CONNECT-line parsers directly, then one connection
// (devices/hvsock/connection.hpp) through the whole path a guest drives: packets of any type,
// length and pipe header written into its ring, FINs, reads (or not) of what the host sends,
// doorbells, closes, and TL_CONNECT_REQUESTs of any size, with the host side a socketpair
// that writes, reads, half-closes and closes.
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#define ENL_SIM_CHECK(cond) \
    do {                    \
        if (!(cond)) __builtin_trap(); \
    } while (0)
#include "../tests/unit/support/sim_guest.hpp"

#include "common/log.hpp"
#include "devices/hvsock/connection.hpp"
#include "devices/hvsock/protocol.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    (void)hvsock::parse_pipe_payload(in.take_bytes(in.take<uint16_t>() % 20000U));
    const auto line = in.take_bytes(in.take<uint8_t>() % 64U);
    (void)hvsock::parse_connect_line(std::string_view(reinterpret_cast<const char*>(line.data()), line.size()));

    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    UniqueFd host(sv[1]);
    bool ended = false;  // before the guest: its teardown still ends the connection
    test::SimGuest g(1, 512);
    hvsock::Connection::Params p;
    p.id = 1;
    p.origin = (in.take<uint8_t>() & 1) ? hvsock::Origin::Host : hvsock::Origin::Guest;
    p.service = hvsock::service_id(5000);
    p.instance = hvsock::service_id(1234);
    p.fd = UniqueFd(sv[0]);
    p.loop = &g.loop();
    p.on_end = [&](uint64_t, const std::string&, bool) { ended = true; };
    auto conn = std::make_shared<hvsock::Connection>(std::move(p));
    const uint32_t relid = g.server().add_device(conn).value();
    g.connect();
    conn->start(std::chrono::milliseconds(100000));
    test::SimChannel ch = g.open_channel(relid, 1 + in.take<uint8_t>() % 6U, 1 + in.take<uint8_t>() % 6U);
    std::vector<uint8_t> sink(70000);
    while (!in.empty()) {
        const uint8_t op = in.take<uint8_t>();
        switch (op % 8U) {
            case 0:
            case 1: {  // a guest packet: pipe header and data of the fuzzer's choosing
                const uint16_t type = (op & 0x80) ? static_cast<uint16_t>(in.take<uint8_t>() % 13U) : vmbus::kPacketDataInband;
                hvsock::PipeHeader h{(op & 0x40) ? in.take<uint32_t>() : 1u, 0};
                const auto body = in.take_bytes(in.take<uint16_t>() % 20000U);
                h.data_size = (op & 0x20) ? in.take<uint32_t>() : static_cast<uint32_t>(body.size());
                std::vector<uint8_t> payload(sizeof(h) + body.size());
                std::memcpy(payload.data(), &h, sizeof(h));
                if (!body.empty()) std::memcpy(payload.data() + sizeof(h), body.data(), body.size());
                (void)g.send(ch, type, 0, payload, {}, true);
                break;
            }
            case 2: {  // FIN
                const hvsock::PipeHeader fin{1, 0};
                (void)g.send(ch, vmbus::kPacketDataInband, 0, std::span(reinterpret_cast<const uint8_t*>(&fin), 8), {}, true);
                break;
            }
            case 3: {  // the host writes
                const auto bytes = in.take_bytes(in.take<uint16_t>() % 40000U);
                if (!bytes.empty()) (void)::send(host.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
                break;
            }
            case 4:  // the host reads; the guest reads its ring
                (void)::recv(host.get(), sink.data(), sink.size(), 0);
                while (ch.to_guest.read()) {}
                g.doorbell(ch);
                break;
            case 5:  // the host half-closes or closes
                if (op & 0x10) host.reset();
                else if (host.valid()) ::shutdown(host.get(), SHUT_WR);
                break;
            case 6: {  // a TL_CONNECT_REQUEST of any length (no service: dropped)
                const auto bytes = in.take_bytes(in.take<uint8_t>() % 64U);
                std::vector<uint8_t> m(8 + bytes.size());
                const uint32_t t = static_cast<uint32_t>(vmbus::MsgType::TlConnectRequest);
                std::memcpy(m.data(), &t, 4);
                if (!bytes.empty()) std::memcpy(m.data() + 8, bytes.data(), bytes.size());
                g.post_bytes(m);
                break;
            }
            case 7:  // the guest closes the channel (or releases it, once rescinded)
                g.simple((op & 0x10) ? vmbus::MsgType::RelidReleased : vmbus::MsgType::CloseChannel, ch.relid);
                break;
        }
        g.pump();
    }
    (void)ended;
    return 0;
}
