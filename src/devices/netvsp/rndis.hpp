// The RNDIS side of netvsp as pure functions, separate from I/O (contract-network.md §3–§5,
// §8): the walk over a guest's TX byte stream, PPI parsing, netvsc's offload PPIs turned
// into net::Offload (with the frame made consistent), RX RNDIS PACKET headers, the control
// message handler (INIT, QUERY, SET, HALT, ...), Toeplitz hashing and RSS steering.
//
// Everything here takes untrusted bytes and bounds every length, offset, index and count;
// nothing loops more than its input allows. Nic (netvsp.cpp) does the I/O around it.
//
// Threads: pure functions and plain values (one thread at a time per value).
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "backends/net/net.hpp"
#include "common/result.hpp"
#include "devices/netvsp/protocol.hpp"

namespace enlighten::netvsp {

// ---------------------------------------------------------------------------- TX stream

// A logical byte stream over host segments: the copied send-section part followed by the
// GPA ranges in order (§4.1). Reads may straddle segment boundaries.
class SgSource {
public:
    explicit SgSource(std::span<const iovec> segments);
    [[nodiscard]] size_t size() const { return size_; }
    // Copies [off, off + out.size()); false if that is not inside the stream.
    bool read(size_t off, std::span<uint8_t> out) const;
    template <typename T>
    [[nodiscard]] std::optional<T> read_obj(size_t off) const {
        T v;
        if (!read(off, std::span(reinterpret_cast<uint8_t*>(&v), sizeof(T)))) return std::nullopt;
        return v;
    }
    // Appends iovecs for [off, off + len) to `out`; false if that is not inside the stream.
    bool slice(size_t off, size_t len, std::vector<iovec>& out) const;

private:
    std::span<const iovec> segs_;
    size_t size_ = 0;
};

// Walks RNDIS messages by msg_len until the stream ends: fn(msg_type, offset, msg_len) for
// each. Errc::Invalid (and the walk stops) on a message shorter than 8 bytes or longer than
// what remains, or after `max_messages`. Returns the number of messages walked.
Result<uint32_t> walk_rndis(const SgSource& src, uint32_t max_messages,
                            const std::function<void(uint32_t type, size_t off, uint32_t len)>& fn);

// The PPIs of one TX packet that matter (each the u32 payload).
struct TxPpis {
    std::optional<uint32_t> csum, lso, vlan, hash;
};

// Parses a PPI area exactly (§3.6, §8): each size >= 12 and <= what remains, ppi_offset >= 12
// and leaving room for the u32 payload of known types, at most 32 PPIs. Unknown types are
// skipped. Errc::Invalid otherwise.
Result<TxPpis> parse_ppis(std::span<const uint8_t> area);

// One RNDIS PACKET of the guest's stream.
struct TxPacket {
    size_t frame_off = 0;  // in the stream
    uint32_t frame_len = 0;
    TxPpis ppis;
};
// Checks an RNDIS PACKET at `off` (msg_len already bounded by the walk): header >= 44, OOB
// and vc_handle zero, data and PPI areas inside the message, PPIs before the data.
Result<TxPacket> parse_tx_packet(const SgSource& src, size_t off, uint32_t msg_len);

// ---------------------------------------------------------------------------- offloads

// What the frame needs besides its own bytes.
struct TxPlan {
    bool copy = false;  // the frame must be copied and fixed up (LSO, VLAN, software checksum)
};
[[nodiscard]] TxPlan plan_tx(const TxPpis& p, const net::Capabilities& caps);

// Turns netvsc's PPIs into net::Offload for a frame of `frame_len` bytes. `frame` is the
// frame's copy when plan_tx said copy (it is fixed up in place: VLAN tag inserted, LSO
// lengths, IPv4 header checksum and the TCP pseudo-header seed over the full length, or the
// checksum completed in software when the backend cannot), else empty. Errc::Invalid for
// PPIs that do not fit the frame, Errc::Unsupported for LSO the backend cannot carry.
Result<net::Offload> tx_offload(const TxPpis& p, uint32_t frame_len, std::vector<uint8_t>* frame,
                                const net::Capabilities& caps);

// Completes an L4 checksum in software (csum_start .. end of frame, folded into
// csum_start + csum_offset, which holds the pseudo-header seed).
Result<> complete_checksum(std::span<uint8_t> frame, uint16_t csum_start, uint16_t csum_offset);

// ---------------------------------------------------------------------------- RX

// What an RX RNDIS PACKET header carries besides the frame.
struct RxMeta {
    std::optional<uint32_t> csum;  // TCPIP_CHKSUM_PKTINFO receive bits
    std::optional<uint32_t> hash;  // NBL_HASH_VALUE
};
inline constexpr size_t kMaxRxHeader = sizeof(RndisPacket) + 2 * sizeof(Ppi32);
// Writes the RNDIS PACKET header and PPIs for a frame; returns their size (the frame
// follows at once). msg_len = header + frame_len.
size_t build_rx_header(std::span<uint8_t, kMaxRxHeader> out, uint32_t frame_len, const RxMeta& meta);
// The checksum PPI bits for a frame whose checksums are known good: tcp_ok / udp_ok by its
// L4 protocol, ip_ok for IPv4; 0 if it is neither.
[[nodiscard]] uint32_t rx_csum_ok_bits(std::span<const uint8_t> frame_head);

// ---------------------------------------------------------------------------- RSS

// The Microsoft RSS verification key, netvsc's default (netvsc_hash_key).
extern const std::array<uint8_t, kRssKeySize> kDefaultRssKey;
[[nodiscard]] uint32_t toeplitz(std::span<const uint8_t> key, std::span<const uint8_t> input);
// The RSS hash of a frame under `hashinfo` (IPv4/IPv6 2-tuple, + TCP ports when enabled),
// or nullopt if the frame is not hashed (not IP, fragment, too short).
[[nodiscard]] std::optional<uint32_t> rss_hash(std::span<const uint8_t> frame_head, std::span<const uint8_t> key,
                                               uint32_t hashinfo);

// ---------------------------------------------------------------------------- control

// What the answers depend on (the NIC's configuration as of now).
struct NicConfig {
    uint32_t nvsp_version = 0;
    uint32_t mtu = 1514;  // NDIS_CONFIG mtu (interface MTU + 14)
    std::array<uint8_t, 6> mac{};
    bool link_up = true;
    net::Capabilities caps;
    uint16_t max_queues = 1;
};

// The guest's RNDIS state (reset by every open of the primary).
struct RndisState {
    bool initialized = false;
    bool halted = false;
    uint32_t filter = 0;
    // Offloads the guest enabled (masked by what was advertised).
    bool tx_csum = false, tx_lso = false;
    bool rss_enabled = false;
    uint32_t hashinfo = 0;
    std::vector<uint32_t> rss_table;  // queue per entry
    std::array<uint8_t, kRssKeySize> rss_key = {};
};

struct ControlResult {
    std::vector<uint8_t> response;  // the RNDIS message to send (empty: none)
    bool ok = true;                 // false: malformed: the VMBus packet fails
    bool filter_changed = false;
    bool halted = false;
    bool rss_changed = false;
    std::optional<std::array<uint8_t, 6>> new_mac;
};

// One control message (a copy of its msg_len bytes). Every request with a request id gets
// its answer; a failing QUERY is the failure form (status NOT_SUPPORTED, offset 0: §3.2).
ControlResult handle_control(RndisState& st, const NicConfig& cfg, std::span<const uint8_t> msg);
// The NDIS_OFFLOAD answer for this NVSP version and backend.
[[nodiscard]] std::vector<uint8_t> offload_caps(uint32_t nvsp_version, const net::Capabilities& caps);
// INDICATE_STATUS without a buffer (MEDIA_CONNECT / MEDIA_DISCONNECT).
[[nodiscard]] std::vector<uint8_t> make_indicate(uint32_t status);

}  // namespace enlighten::netvsp
