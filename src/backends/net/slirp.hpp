// The libslirp backend: user-mode NAT, the default network (contract-network §11.1).
//
// The guest sees QEMU's user network: 10.0.2.0/24, the gateway (and host) 10.0.2.2, DNS
// 10.0.2.3, DHCP leases from 10.0.2.15. Connections to 10.0.2.2 reach the host's 127.0.0.1;
// everything else is NATed through the host's sockets. IPv4 only (in6_enabled is false: no
// IPv6 router advertisements, no fec0::/64). Port forwards from the host into the guest come
// from BackendConfig::forwards (slirp_add_hostfwd); a port already in use is Errc::Io.
//
// libslirp is not thread-safe: every call into it holds slirp_mu_. One thread ("net-slirp")
// owns the Slirp instance (it creates it, drops it, and runs the poll loop
//     [slirp_mu_: queued guest frames (slirp_input) -> slirp_pollfds_fill; timeout from slirp
//     and its timers] -> Receiver::flush if anything was received -> poll(sockets, wake
//     eventfd) -> [slirp_mu_: slirp_pollfds_poll -> due timers (slirp_handle_timer)]),
// and holds the lock except in poll() and the flush.
// libslirp's timers live on the clock_get_ns timeline (CLOCK_MONOTONIC), in milliseconds.
//
// TX (send, any thread): slirp checks every checksum, so send() completes needs_csum frames and
// cuts GSO frames into MSS-sized ones in software (offload.hpp), on the caller's thread. When
// slirp_mu_ is free, the caller hands the frames to libslirp itself (after any queued ones),
// as QEMU's one thread does: a datagram reaches its host socket with no thread switch, and the
// slirp thread is woken only when its poll set or deadline may have changed (libslirp made a
// socket or moved a timer, or the frame was not IPv4 UDP). Otherwise the frames are copied into
// a bounded queue that the slirp thread drains (never blocking but for the queue's leaf lock)
// (kMaxQueuedFrames frames, kMaxQueuedBytes bytes; all the segments of one frame or none). A
// full queue drops the frame: Errc::Busy and tx_dropped. Hence capabilities() says tx_csum
// and tx_tso.
// RX (send_packet callback, inside a libslirp call): each frame goes to Receiver::receive at
// once (complete checksums, so csum_valid); no receiver or no room drops it (rx_dropped; TCP
// retransmits); flush() ends each loop round, and each send() that handed frames over, that
// received anything. So the receiver is called from the slirp thread and, for libslirp's
// immediate answers (ARP, DHCP, ICMP to the gateway, TCP ACKs), from send()'s caller.
//
// Threads and locks: send(), status(), capabilities() from any thread; set_receiver from any
// thread but the slirp thread (not from inside Receiver calls). Lock order: slirp_mu_ ->
// rx_mu_ -> the receiver's own locks; tx_mu_ (the queue) is a leaf held only to push or take
// frames. rx_mu_ is held while the Receiver is called (so set_receiver, which takes it, waits
// until no such call is running). Blocking: make_slirp_backend (waits for the thread to
// start), set_receiver (for a call into the receiver to end), send() only for the leaf locks
// and the host socket calls libslirp makes (non-blocking sockets), and the destructor (stops
// and joins the thread).
#pragma once

#include <memory>

#include "backends/net/net.hpp"
#include "common/result.hpp"

namespace enlighten::net {

inline constexpr size_t kSlirpMaxQueuedFrames = 1024;
inline constexpr size_t kSlirpMaxQueuedBytes = 4u << 20;

// Starts the slirp thread and waits until the instance exists and every forward is set up.
Result<std::unique_ptr<Backend>> make_slirp_backend(const BackendConfig& config);

}  // namespace enlighten::net
