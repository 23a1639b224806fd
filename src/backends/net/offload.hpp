// Transmit offloads done in software, for backends that need complete frames (libslirp
// verifies every checksum and parses IP lengths: contract-network §11.1). Pure functions over
// one frame in a contiguous buffer; the frame comes from a hostile guest, so every offset the
// offload metadata or the headers name is checked against the frame before it is used, and
// every loop is bounded by the frame's size.
//
//   std::vector<uint8_t> f = ...;                       // the guest's frame, copied
//   if (o.gso != Offload::Gso::None)
//       ENL_TRY_VOID(segment_tcp(f, o, [&](std::span<const uint8_t> seg) { out(seg); }));
//   else if (o.needs_csum)
//       ENL_TRY_VOID(complete_checksum(f, o));
//
// Frames: Ethernet II with at most one 802.1Q tag, then IPv4 (options allowed) or IPv6
// (segmentation: TCP right after the fixed header, no extension headers). A frame may carry
// Ethernet padding after the IP packet; it is not part of any checksum and is not copied
// into segments.
//
// Threads: stateless; any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "backends/net/net.hpp"
#include "common/result.hpp"

namespace enlighten::net {

// The largest frame the offload functions take: an Ethernet header with one VLAN tag, an
// IPv6 header, and the largest IP payload (IPv4 tot_len and IPv6 payload_len are 16 bits).
inline constexpr size_t kMaxOffloadFrame = 18 + 40 + 65535;
// The most segments one GSO frame may become (a 64 KiB frame at Linux's smallest MSS, 48,
// is 1366 segments); more is refused as Invalid rather than spending the CPU and memory.
inline constexpr size_t kMaxGsoSegments = 2048;

// The Internet checksum's one's-complement sum (RFC 1071), of `data` added to `sum`
// (unfolded). `data` is taken to start at an even offset of the checksummed stream.
[[nodiscard]] uint32_t csum_add(uint32_t sum, std::span<const uint8_t> data);
// Folds a sum to 16 bits and complements it: the value to store in the checksum field (in
// host order; store it big-endian).
[[nodiscard]] uint16_t csum_fold(uint32_t sum);

// needs_csum (CHECKSUM_PARTIAL): sums the bytes from csum_start to the end of the IP packet
// (or of the frame, if it is not IPv4/IPv6), with the field at csum_start + csum_offset
// holding the pseudo-header seed, and stores the result in that field (0 becomes 0xffff, as
// Linux's skb_checksum_help does). Invalid if the field does not lie inside the packet.
Result<> complete_checksum(std::span<uint8_t> frame, const Offload& offload);

// A GSO TCP frame (gso Tcp4 or Tcp6) cut into segments of at most gso_size payload bytes, each
// a complete frame: IPv4 tot_len, id + i and header checksum, or IPv6 payload_len; TCP
// sequence number advanced, FIN and PSH only on the last segment, CWR only on the first, and
// the full TCP checksum (computed afresh; the frame's seed is not used). `emit` gets each
// segment in order (the span is valid during the call only). Everything is validated before
// the first emit, so a bad frame emits nothing. Returns the number of segments. Invalid: no
// IPv4/IPv6 header matching gso, not TCP, header offsets outside the frame, gso_size 0, more
// than kMaxGsoSegments, a frame longer than kMaxOffloadFrame, needs_csum with csum_start or
// csum_offset not naming the TCP checksum. hdr_len is not trusted: the headers say it.
Result<size_t> segment_tcp(std::span<const uint8_t> frame, const Offload& offload,
                           const std::function<void(std::span<const uint8_t>)>& emit);

// Applies what `offload` asks for, so that every frame handed to `emit` is complete:
// segment_tcp for GSO frames, complete_checksum (on `frame`, in place) for needs_csum ones,
// the frame itself otherwise. Returns the number of frames emitted.
Result<size_t> finish_frame(std::span<uint8_t> frame, const Offload& offload,
                            const std::function<void(std::span<const uint8_t>)>& emit);

}  // namespace enlighten::net
