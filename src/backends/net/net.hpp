// What a network device (devices/netvsp) talks to on the host: a backend that carries
// Ethernet frames to and from somewhere (libslirp's user-mode NAT, a Linux tap). The device
// knows NVSP and RNDIS; a backend knows sockets and file descriptors, not VMBus (the
// device / transport / backend split of design-notes.md).
//
//   guest TX:  netvsp channel worker ──send(frame, offload)──► Backend (copies, never blocks)
//   guest RX:  Backend thread ──receive(frame, offload)…flush()──► Receiver (netvsp: RSS
//              steering, receive sections, one ring packet per burst and channel)
//
// Frames are whole Ethernet frames without FCS, untagged unless the guest sent a tag inside.
// Offload metadata follows Linux's virtio_net_hdr meaning (include/uapi/linux/virtio_net.h):
// a frame handed to send() with `needs_csum` has consistent IP headers (IPv4 tot_len and
// header checksum right, IPv6 payload_len right) and its L4 checksum field seeded with the
// pseudo-header sum over the full L4 length (Linux CHECKSUM_PARTIAL); a GSO frame is one
// TCP segment of up to 64 KiB that the backend (or the kernel behind a tap) cuts at
// `gso_size`. netvsp turns netvsc's LSO form (tot_len 0, length-0 seed) into this form.
//
// Threads:
//   - send() is called from netvsp's channel workers, several at once (one per vRSS queue);
//     it is thread-safe, never blocks and has copied (or written) the frame when it returns.
//   - The Receiver's calls come from the backend's own thread(s), or from inside send() on
//     its caller's thread (slirp answers some frames at once), never from a vCPU; receive()
//     and flush() may be called concurrently from different threads.
//   - set_receiver(), set_link(), set_mtu(), status() come from the control loop or API
//     threads. set_receiver() blocks until no call into the previous receiver is running.
// Lock order: send() is called with no device lock held; a backend takes its own locks
// around it and may call the receiver under them (backend locks -> receiver locks -> queue
// -> SynIC).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace enlighten::net {

// virtio_net_hdr's meaning, decoded.
struct Offload {
    enum class Gso : uint8_t { None, Tcp4, Tcp6 };
    bool needs_csum = false;   // the L4 checksum at csum_start + csum_offset is still to be folded in
    bool csum_valid = false;   // RX: the checksums were verified or are known good (DATA_VALID)
    uint16_t csum_start = 0;   // offset of the L4 header from the frame's first byte
    uint16_t csum_offset = 0;  // of the checksum field within the L4 header: 16 TCP, 6 UDP
    Gso gso = Gso::None;
    uint16_t gso_size = 0;     // MSS for a GSO frame
    uint16_t hdr_len = 0;      // Ethernet + IP + TCP header bytes of a GSO frame
};

// What the backend can take from the guest without help: the device advertises to the guest
// only what the backend (or its own software fallback) honours.
struct Capabilities {
    bool tx_csum = false;  // send() accepts needs_csum frames
    bool tx_tso = false;   // send() accepts GSO frames (tcp4 and tcp6)
    uint32_t max_mtu = 65521 - 14;
};

struct BackendStatus {
    std::string kind;         // "slirp", "tap"
    std::string description;  // e.g. "10.0.2.0/24 gw 10.0.2.2 dns 10.0.2.3", "tap enl0"
    uint64_t tx_packets = 0, tx_bytes = 0, tx_dropped = 0;  // guest -> backend
    uint64_t rx_packets = 0, rx_bytes = 0, rx_dropped = 0;  // backend -> guest (dropped: no room, no receiver)
};

// The device's side, for the backend.
class Receiver {
public:
    virtual ~Receiver() = default;
    // One frame for the guest. The frame is copied before the call returns. false: no room
    // now (receive sections or ring full, link down, filter off): the backend may keep the
    // frame and wait for room_fd() (a tap does, so TCP is not throttled by drops) or drop
    // it (slirp does: "TCP will retransmit").
    virtual bool receive(std::span<const iovec> frame, const Offload& offload) = 0;
    // The end of a burst: announce what receive() took since the last flush (one ring packet
    // and at most one interrupt per channel). Backends call it before they sleep.
    virtual void flush() = 0;
    // Readable (an eventfd, level: read it to reset) after receive() returned false, once
    // there may be room again.
    [[nodiscard]] virtual int room_fd() const = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    [[nodiscard]] virtual Capabilities capabilities() const = 0;
    // Frames from the guest. Errc::Busy when the frame was dropped for lack of room (the
    // caller counts it and completes the guest's packet anyway); Errc::Invalid for a frame
    // the backend cannot carry (bad offload metadata, too long).
    virtual Result<> send(std::span<const iovec> frame, const Offload& offload) = 0;
    // Where received frames go; null: nowhere (they are dropped and counted). Blocks until
    // no call into the previous receiver is running.
    virtual void set_receiver(Receiver* receiver) = 0;
    // The guest's MTU (the device learns it from NVSP): a tap gets it as its own MTU.
    virtual void set_mtu(uint32_t /*mtu*/) {}
    [[nodiscard]] virtual BackendStatus status() const = 0;
};

// A port forward from the host into the guest (slirp's hostfwd).
struct HostForward {
    bool udp = false;
    std::string host_addr;  // empty: any (0.0.0.0)
    uint16_t host_port = 0;
    std::string guest_addr;  // empty: the guest's DHCP address
    uint16_t guest_port = 0;
};

// "tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT" (QEMU's syntax; HOSTADDR and GUESTADDR may be
// empty, "udp:" for UDP). Errc::Invalid with the reason.
Result<HostForward> parse_hostfwd(std::string_view spec);

struct BackendConfig {
    std::string kind = "slirp";  // "slirp" | "tap"
    // slirp
    std::vector<HostForward> forwards;
    // tap: an existing device's name, or a name to create (needs CAP_NET_ADMIN); empty:
    // create one named by the kernel (enl%d).
    std::string tap;
};

// Makes and starts the backend (its thread runs from here on; frames go nowhere until
// set_receiver). Errc::Invalid for a bad configuration, Errc::Io when the host refuses
// (no /dev/net/tun, a forward's port in use).
Result<std::unique_ptr<Backend>> make_backend(const BackendConfig& config);

}  // namespace enlighten::net
