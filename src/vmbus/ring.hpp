// VMBus ring buffers in guest memory (Linux include/linux/hyperv.h struct hv_ring_buffer,
// drivers/hv/ring_buffer.c; linux-hv-guest-contract §7).
//
// A ring is a 4 KiB header page followed by data pages, reached through the pages of a
// GPADL (which need not be contiguous). The guest controls the contents of every byte, so:
// our own index (read index of a ring we read, write index of a ring we write) is kept
// privately and only ever published, never read back; the other side's index is read once
// per operation and range-checked; packet lengths are checked against what is available
// and against a per-channel maximum; every loop here is bounded by the ring size. (A reader
// that drains until the ring is empty is not: the guest can keep refilling it as fast as it
// is read. Devices drain in budgeted rounds on their own loops, docs/architecture.md.)
//
// Threads: a ring has one host-side user at a time (ChannelQueue holds the reading side
// under its receive lock and the writing side under its send lock); the guest is the other
// party, on its vCPUs, at any time: every shared header field is an atomic access.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/result.hpp"
#include "common/wire.hpp"
#include "kvm/guest_memory.hpp"
#include "vmbus/packet.hpp"

namespace enlighten::vmbus {

// struct hv_ring_buffer field offsets.
inline constexpr uint32_t kRingWriteIndex = 0;
inline constexpr uint32_t kRingReadIndex = 4;
inline constexpr uint32_t kRingInterruptMask = 8;
inline constexpr uint32_t kRingPendingSendSize = 12;
inline constexpr uint32_t kRingFeatureBits = 64;
inline constexpr uint32_t kRingFeaturePendingSendSize = 1;

// The host mapping of one ring's pages.
class RingMemory {
public:
    // pfns[0] is the header page, the rest the data pages (at least one).
    static Result<RingMemory> map(const GuestMemory& mem, std::span<const uint64_t> pfns);

    [[nodiscard]] uint32_t data_size() const { return size_; }
    [[nodiscard]] uint32_t load(uint32_t field) const;
    void store(uint32_t field, uint32_t value);
    // Copies with wrap-around at the end of the data area; pos < data_size().
    void read(uint32_t pos, std::span<uint8_t> out) const;
    void write(uint32_t pos, std::span<const uint8_t> in);
    // The host address of [pos, pos+len) if it is one piece of host memory (no wrap, and the
    // data pages are contiguous): the fast path for copies.
    [[nodiscard]] uint8_t* linear(uint32_t pos, uint32_t len) const {
        return contiguous_ && pos <= size_ && len <= size_ - pos ? contiguous_ + pos : nullptr;
    }

private:
    uint8_t* header_ = nullptr;
    uint8_t* contiguous_ = nullptr;  // all data pages adjacent in host memory: one base
    std::vector<uint8_t*> pages_;
    uint32_t size_ = 0;
};

// A ring's header as it is now, for diagnostics (vm.info): the indices, the interrupt mask
// and pending_send_sz as the two sides left them (the guest's fields are its own: read,
// never trusted), and the data area's size.
struct RingHeaderState {
    uint32_t write_index = 0, read_index = 0, interrupt_mask = 0, pending_send_size = 0, data_size = 0;
};

// The ring the guest writes and we read.
class InRing {
public:
    explicit InRing(RingMemory mem) : mem_(std::move(mem)) {}

    // A packet peek() found. When the ring's framing holds but the packet does not (its
    // payload offset points inside the descriptor or past its end, or it is longer than the
    // channel allows), `bad` says why and only the descriptor was copied: the reader drops it
    // and goes on, since skip(len) still lands on the next packet.
    struct Peeked {
        uint32_t len = 0;  // bytes of the packet in the ring (descriptor included)
        std::string_view bad;
    };
    // Copies the next packet (descriptor included, len8 * 8 bytes, at most max_len) into
    // `buf` without consuming it; nullopt when the ring is empty. The descriptor is re-read
    // from the copy and must match what was checked (one copy: what is validated is what is
    // used). An error means the framing itself is broken (indices outside the ring, a length
    // below a descriptor or beyond what the ring holds): the channel must stop using it.
    Result<std::optional<Peeked>> peek(std::vector<uint64_t>& buf, uint32_t max_len);
    // Moves our private read index past a packet of `len` bytes that peek() returned.
    void skip(uint32_t len);
    // Publishes the read index. True if the guest asked to be told about free space
    // (pending_send_sz) and this crossed its threshold: signal it.
    bool commit();
    // interrupt_mask: while set, the guest does not signal new packets.
    void set_interrupt_mask(bool masked);
    // After clearing the mask: is there data we have not read? (full barrier first)
    [[nodiscard]] bool has_data() const;
    [[nodiscard]] RingHeaderState header_state() const;

private:
    RingMemory mem_;
    uint32_t read_ = 0;       // private; the guest's copy is only written
    uint32_t published_ = 0;  // what the guest has seen
};

// The ring we write and the guest reads.
class OutRing {
public:
    explicit OutRing(RingMemory mem);

    // Free bytes now (the guest's read index checked). A packet needs ring_bytes() < free:
    // the ring must never become completely full (write == read would mean empty).
    Result<uint32_t> free_bytes() const;
    // Asks the guest to signal once `bytes` are free (pending_send_sz), then looks again:
    // true if they are free already (the guest made room before it could see the request).
    Result<bool> wait_for_room(uint32_t bytes);

    struct WriteResult {
        bool written = false;  // false: no room now; pending_send_sz is set and the guest
                               // will signal when it has made room
        bool signal = false;   // the guest must be interrupted
    };
    // Writes one packet: descriptor, header extension, payload (gathered), padding, trailer.
    // `signal_always`: interrupt whenever the guest has not masked interrupts (for guests
    // that read one packet per interrupt), not only on empty -> non-empty.
    Result<WriteResult> write(const OutPacket& packet, bool signal_always);
    [[nodiscard]] uint32_t data_size() const { return mem_.data_size(); }
    [[nodiscard]] RingHeaderState header_state() const;

    // Largest packet (without the trailer) that can ever fit.
    [[nodiscard]] uint32_t max_packet() const { return mem_.data_size() - kPacketTrailerSize - 8; }

private:
    void put(uint32_t& pos, std::span<const uint8_t> bytes);
    // Publishes the packet written at `start` and decides whether to signal.
    WriteResult publish(uint32_t start, uint32_t need, bool signal_always);
    RingMemory mem_;
    uint32_t write_ = 0;  // private
    std::vector<uint8_t> header_;  // encoded descriptor + extension, reused
};

}  // namespace enlighten::vmbus
