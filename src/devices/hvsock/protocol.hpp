// hv_sock wire facts (Linux 6.1 net/vmw_vsock/hyperv_transport.c, include/linux/hyperv.h;
// ../shared/contract-services.md §4) and the two small parsers the relay needs: the pipe
// packets the guest writes on an hv_sock channel, and the `CONNECT <port>` line a host client
// writes to the Unix socket (Firecracker's hybrid vsock, contract-services §8.1).
//
// Threads: constants and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "common/result.hpp"
#include "common/wire.hpp"
#include "vmbus/protocol.hpp"

namespace enlighten::hvsock {

// A port P is the service GUID P-facb-11e6-bd58-64006a7986d3: P little-endian in bytes 0-3 of
// this template (srv_id_template; is_valid_srv_id compares bytes 4-15).
inline constexpr uint8_t kServiceTemplate[16] = {0x00, 0x00, 0x00, 0x00, 0xcb, 0xfa, 0xe6, 0x11,
                                                 0xbd, 0x58, 0x64, 0x00, 0x6a, 0x79, 0x86, 0xd3};

[[nodiscard]] vmbus::Guid service_id(uint32_t port);
// Bytes 4-15 match the template (what the guest's is_valid_srv_id checks).
[[nodiscard]] bool is_service_id(const vmbus::Guid& id);
// Bytes 0-3 as the guest reads them (the port of a service id; of any GUID, the port the
// guest sees for a host-initiated connection's instance).
[[nodiscard]] uint32_t port_of(const vmbus::Guid& id);

// OFFERCHANNEL for an hv_sock channel: chn_flags (VMBUS_CHANNEL_TLNPI_PROVIDER_OFFER |
// NAMED_PIPE_MODE | ENUMERATE_DEVICE_INTERFACE, as Hyper-V and OpenVMM send), and the byte of
// OfferParams::user_def (offer offset 60) that is u.pipe.user_def[0] (offer offset 64): 1 for
// a connection from the host, 0 for the answer to a guest connect.
inline constexpr uint16_t kOfferFlags = 0x2000 | 0x10 | 0x1;
inline constexpr size_t kUserDefConnFromHost = 4;

// struct vmpipe_proto_header, the first 8 bytes of the in-band payload (after the 16-byte
// descriptor; offset8 = 2).
struct PipeHeader {
    uint32_t pkt_type;   // 0: 1 (data); the guest ignores it
    uint32_t data_size;  // 4: bytes that follow; 0 is the FIN (SEND_SHUTDOWN)
};
ENL_WIRE(PipeHeader, 8);
inline constexpr uint32_t kPipeData = 1;

// HVS_MTU_SIZE: the most data in one packet either way (the guest's receive side checks it).
inline constexpr uint32_t kMaxData = 16384;
// HVS_MAX_PKT_SIZE = 16 + 8 + 16384: the guest's max_pkt_size for what we write (len8 * 8).
inline constexpr uint32_t kMaxPacketToGuest = 16 + 8 + kMaxData;
// The guest writes at most HVS_SEND_BUF_SIZE = 4088 bytes a packet; we accept up to the MTU.
inline constexpr uint32_t kMaxPacketFromGuest = 16 + 8 + kMaxData;

// One guest packet's payload (after the descriptor): the data it carries, empty for FIN.
// Errc::Invalid: shorter than the header, a type other than data, a data_size beyond the
// payload or the MTU.
Result<std::span<const uint8_t>> parse_pipe_payload(std::span<const uint8_t> payload);

// The host client's request line: "CONNECT <port>\n" (decimal, 0 to 2^32-1, the keyword
// case-insensitive, one space). `line` is everything up to and including the first '\n'.
inline constexpr size_t kMaxConnectLine = 45;  // OpenVMM's bound, '\n' included
Result<uint32_t> parse_connect_line(std::string_view line);

}  // namespace enlighten::hvsock
