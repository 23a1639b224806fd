// The libslirp backend: user-mode NAT, the default network (contract-network §11.1).
//
// The guest sees QEMU's user network: 10.0.2.0/24, the gateway (and host) 10.0.2.2, DNS
// 10.0.2.3, DHCP leases from 10.0.2.15. Connections to 10.0.2.2 reach the host's 127.0.0.1;
// everything else is NATed through the host's sockets. IPv4 only (in6_enabled is false: no
// IPv6 router advertisements, no fec0::/64). Port forwards from the host into the guest come
// from BackendConfig::forwards (slirp_add_hostfwd); a port already in use is Errc::Io.
//
// libslirp is not thread-safe, so one thread ("net-slirp") owns the Slirp instance: it
// creates it, makes every slirp_* call and runs the poll loop
//     slirp_pollfds_fill -> poll(sockets, wake eventfd; timeout from slirp and its timers)
//     -> slirp_pollfds_poll -> due timers (slirp_handle_timer) -> queued guest frames
//     (slirp_input) -> Receiver::flush if anything was received.
// libslirp's timers live on the clock_get_ns timeline (CLOCK_MONOTONIC), in milliseconds.
//
// TX (send, any thread): slirp checks every checksum, so send() completes needs_csum frames and
// cuts GSO frames into MSS-sized ones in software (offload.hpp), on the caller's thread, and
// copies the resulting frames into a bounded queue (never blocking but for the queue's leaf
// lock) (kMaxQueuedFrames frames, kMaxQueuedBytes
// bytes; all the segments of one frame or none). A full queue drops the frame: Errc::Busy and
// tx_dropped. Hence capabilities() says tx_csum and tx_tso.
// RX (send_packet callback, on the slirp thread): each frame goes to Receiver::receive at once
// (complete checksums, so csum_valid); no receiver or no room drops it (rx_dropped; TCP
// retransmits); flush() ends each loop round that received anything.
//
// Threads and locks: send(), status(), capabilities() from any thread; set_receiver from any
// thread but the slirp thread (not from inside Receiver calls). Locks, both leaves with
// respect to each other: tx_mu_ (the queue) is held only to push or take frames; rx_mu_ is
// held while the slirp thread calls the Receiver (so set_receiver, which takes it, waits
// until no such call is running): rx_mu_ comes before the receiver's own locks. Blocking:
// make_slirp_backend (waits for the thread to start), set_receiver (for a call into the
// receiver to end) and the destructor (stops and joins the thread).
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
