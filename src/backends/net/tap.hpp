// The Linux tap backend (contract-network §11.2): frames to and from a tap interface of the
// host, which the user bridges or routes as they like.
//
// Open: /dev/net/tun, TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR on the given name (an
// existing tap is attached to; a new one is created, which needs CAP_NET_ADMIN; an empty name
// lets the kernel pick "enl%d"), a 12-byte vnet header (struct virtio_net_hdr_mrg_rxbuf,
// little-endian on x86), non-blocking. A tap this backend created is brought up (IFF_UP) but
// gets no address: the user configures the host side (ip addr add, a bridge). It is not
// persistent: it goes away when the backend is destroyed. An existing tap is used as it is
// (if it is down, writes fail with EIO until the user brings it up). Single queue.
//
// Read offloads: TUNSETOFFLOAD 0, so the kernel hands over complete, segmented frames (at most
// DATA_VALID set, passed on as csum_valid). Should a NEEDS_CSUM frame arrive anyway, its
// checksum is completed here; a GSO frame (which offloads 0 rule out) is dropped.
//
// TX (send, any thread): the vnet header is built from the Offload (NEEDS_CSUM, GSO TCPV4 /
// TCPV6, gso_size, hdr_len, csum_start, csum_offset) and written with the frame in one
// writev; the kernel does checksums and segmentation (so tx_csum and tx_tso). A full tap
// queue (EAGAIN/ENOBUFS): Errc::Busy; offsets outside the frame or a refused header
// (EINVAL): Errc::Invalid; other write errors (EIO: the interface is down): Errc::Io. All of
// these count as tx_dropped.
//
// RX (the "net-tap" reader thread): reads a frame, hands it to Receiver::receive; when that
// returns false the reader keeps the frame, calls flush(), and waits for room_fd() (reading it
// to reset it) before trying the same frame again; with no receiver frames are dropped and
// counted. flush() is called before the reader sleeps and after every 64 frames.
//
// set_mtu: SIOCSIFMTU on the tap (68..65535; a failure is logged).
//
// Threads and locks: send(), status(), capabilities(), set_mtu() from any thread;
// set_receiver from any thread but the reader (never from inside Receiver calls). rx_mu_ is
// held while the reader calls the Receiver (so set_receiver waits for such a call to end);
// it comes before the receiver's own locks. send() takes no lock and never blocks (writev on
// the non-blocking tap, atomic per frame). Blocking: make_tap_backend (ioctls), set_mtu (an
// ioctl), set_receiver (for a call into the receiver to end), the destructor (stops and joins
// the reader, then closes the tap).
#pragma once

#include <memory>
#include <string>

#include "backends/net/net.hpp"
#include "common/result.hpp"

namespace enlighten::net {

// The vnet header written before and read with every frame (struct virtio_net_hdr_mrg_rxbuf).
inline constexpr size_t kTapVnetHdrSize = 12;

Result<std::unique_ptr<Backend>> make_tap_backend(const std::string& name);

}  // namespace enlighten::net
