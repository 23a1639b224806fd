#include "vmbus/ring.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace enlighten::vmbus {

namespace {

constexpr uint32_t used_bytes(uint32_t write, uint32_t read, uint32_t size) {
    return write >= read ? write - read : size - read + write;
}


}  // namespace

Result<RingMemory> RingMemory::map(const GuestMemory& mem, std::span<const uint64_t> pfns) {
    if (pfns.size() < 2) return fail("ring of {} pages: a header and at least one data page are needed", pfns.size());
    // Data size must fit u32 indices.
    if (pfns.size() - 1 > (1U << 19)) return fail("ring of {} pages is too large", pfns.size());
    RingMemory r;
    auto page = [&](uint64_t pfn) -> uint8_t* {
        return pfn > kMaxPfn ? nullptr : mem.host_ptr(pfn << 12, kPageSize);
    };
    r.header_ = page(pfns[0]);
    if (!r.header_) return fail("ring header page {:#x} is not guest RAM", pfns[0]);
    r.pages_.reserve(pfns.size() - 1);
    bool contiguous = true;
    for (size_t i = 1; i < pfns.size(); ++i) {
        uint8_t* p = page(pfns[i]);
        if (!p) return fail("ring page {:#x} is not guest RAM", pfns[i]);
        if (i > 1 && p != r.pages_.back() + kPageSize) contiguous = false;
        r.pages_.push_back(p);
    }
    if (contiguous) r.contiguous_ = r.pages_[0];
    r.size_ = static_cast<uint32_t>((pfns.size() - 1) * kPageSize);
    return r;
}

uint32_t RingMemory::load(uint32_t field) const {
    // Shared with the guest: every access is atomic; acquire pairs with the guest's
    // release of its index after writing data.
    return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(header_ + field)).load(std::memory_order_acquire);
}

void RingMemory::store(uint32_t field, uint32_t value) {
    std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(header_ + field)).store(value, std::memory_order_release);
}

void RingMemory::read(uint32_t pos, std::span<uint8_t> out) const {
    size_t done = 0;
    while (done < out.size()) {
        const uint32_t at = pos % size_;
        const size_t chunk = contiguous_ ? std::min<size_t>(out.size() - done, size_ - at)
                                         : std::min<size_t>(out.size() - done, kPageSize - at % kPageSize);
        const uint8_t* src = contiguous_ ? contiguous_ + at : pages_[at / kPageSize] + at % kPageSize;
        std::memcpy(out.data() + done, src, chunk);
        done += chunk;
        pos = static_cast<uint32_t>((at + chunk) % size_);
    }
}

void RingMemory::write(uint32_t pos, std::span<const uint8_t> in) {
    size_t done = 0;
    while (done < in.size()) {
        const uint32_t at = pos % size_;
        const size_t chunk = contiguous_ ? std::min<size_t>(in.size() - done, size_ - at)
                                         : std::min<size_t>(in.size() - done, kPageSize - at % kPageSize);
        uint8_t* dst = contiguous_ ? contiguous_ + at : pages_[at / kPageSize] + at % kPageSize;
        std::memcpy(dst, in.data() + done, chunk);
        done += chunk;
        pos = static_cast<uint32_t>((at + chunk) % size_);
    }
}

Result<std::optional<InRing::Peeked>> InRing::peek(std::vector<uint64_t>& buf, uint32_t max_len) {
    const uint32_t size = mem_.data_size();
    const uint32_t w = mem_.load(kRingWriteIndex);
    if (w >= size || w % 8 != 0) return fail(Errc::Invalid, "guest write index {:#x} is outside the ring ({:#x} bytes) or not 8-byte aligned", w, size);
    if (w == read_) return std::optional<Peeked>{};
    const uint32_t avail = used_bytes(w, read_, size);
    if (avail < sizeof(PacketDescriptor) + kPacketTrailerSize)
        return fail(Errc::Invalid, "ring holds {} bytes, less than one packet", avail);
    if (buf.size() < 32) buf.resize(32);
    auto* dst = reinterpret_cast<uint8_t*>(buf.data());
    PacketDescriptor desc;
    if (const uint8_t* p = mem_.linear(read_, sizeof(desc)))
        std::memcpy(dst, p, sizeof(desc));
    else
        mem_.read(read_, std::span(dst, sizeof(desc)));
    std::memcpy(&desc, dst, sizeof(desc));
    const uint32_t len = desc.len8 * 8u;
    const uint32_t off = desc.offset8 * 8u;
    if (len < sizeof(PacketDescriptor)) return fail(Errc::Invalid, "packet length {} is below a descriptor", len);
    if (len + kPacketTrailerSize > avail)
        return fail(Errc::Invalid, "packet of {} bytes is longer than the {} bytes in the ring", len, avail);
    // The framing holds from here on: a packet that is wrong in itself is dropped, not fatal.
    if (off < sizeof(PacketDescriptor) || off > len) return std::optional<Peeked>(Peeked{len, "its payload offset is outside the packet"});
    if (len > max_len) return std::optional<Peeked>(Peeked{len, "it is longer than this channel allows"});
    if (buf.size() < len / 8) buf.resize(len / 8);
    dst = reinterpret_cast<uint8_t*>(buf.data());
    if (const uint8_t* p = mem_.linear(read_, len))
        std::memcpy(dst, p, len);
    else
        mem_.read(read_, std::span(dst, len));
    // Use the descriptor as copied with the packet (one copy: what we validate is what we use).
    std::memcpy(&desc, dst, sizeof(desc));
    if (desc.len8 * 8u != len || desc.offset8 * 8u != off) return fail(Errc::Invalid, "packet changed while it was read");
    return std::optional<Peeked>(Peeked{len, {}});
}

void InRing::skip(uint32_t len) {
    read_ += len + kPacketTrailerSize;
    if (read_ >= mem_.data_size()) read_ -= mem_.data_size();
}

bool InRing::commit() {
    if (read_ == published_) return false;
    const uint32_t size = mem_.data_size();
    const uint32_t before = published_;
    mem_.store(kRingReadIndex, read_);
    published_ = read_;
    // Full barrier: our read index must be visible before we look at pending_send_sz, the
    // mirror of the guest's hv_signal_on_write ordering.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint32_t pending = mem_.load(kRingPendingSendSize);
    if (pending == 0) return false;
    const uint32_t w = mem_.load(kRingWriteIndex);
    if (w >= size) return false;
    const uint32_t free_before = size - used_bytes(w, before, size);
    const uint32_t free_after = size - used_bytes(w, read_, size);
    return free_before <= pending && free_after > pending;
}

namespace {
RingHeaderState header_of(const RingMemory& m) {
    return {m.load(kRingWriteIndex), m.load(kRingReadIndex), m.load(kRingInterruptMask), m.load(kRingPendingSendSize),
            m.data_size()};
}
}  // namespace

RingHeaderState InRing::header_state() const { return header_of(mem_); }
RingHeaderState OutRing::header_state() const { return header_of(mem_); }

void InRing::set_interrupt_mask(bool masked) { mem_.store(kRingInterruptMask, masked ? 1 : 0); }

bool InRing::has_data() const {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return mem_.load(kRingWriteIndex) != read_;
}

OutRing::OutRing(RingMemory mem) : mem_(std::move(mem)) {
    // We will set pending_send_sz when we are blocked on a full ring (the guest checks
    // this bit, which it also initialised itself).
    mem_.store(kRingFeatureBits, mem_.load(kRingFeatureBits) | kRingFeaturePendingSendSize);
}

Result<uint32_t> OutRing::free_bytes() const {
    const uint32_t size = mem_.data_size();
    const uint32_t r = mem_.load(kRingReadIndex);
    if (r >= size || r % 8 != 0) return fail(Errc::Invalid, "guest read index {:#x} is outside the ring ({:#x} bytes) or not 8-byte aligned", r, size);
    return size - used_bytes(write_, r, size);
}

Result<bool> OutRing::wait_for_room(uint32_t bytes) {
    mem_.store(kRingPendingSendSize, bytes);
    // The guest may have made room after we looked and before it could see the request.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    ENL_TRY(uint32_t free, free_bytes());
    return bytes < free;
}

void OutRing::put(uint32_t& pos, std::span<const uint8_t> bytes) {
    if (bytes.empty()) return;
    mem_.write(pos, bytes);
    pos = static_cast<uint32_t>((pos + bytes.size()) % mem_.data_size());
}

Result<OutRing::WriteResult> OutRing::write(const OutPacket& packet, bool signal_always) {
    const size_t header = packet.header_bytes();
    const size_t len = packet.packet_bytes();
    if (len > max_packet() || header > 0xffff * 8u)
        return fail(Errc::Invalid, "packet of {} bytes does not fit a {}-byte ring", len, mem_.data_size());
    const uint32_t need = static_cast<uint32_t>(len) + kPacketTrailerSize;
    ENL_TRY(uint32_t free, free_bytes());
    if (need >= free) {
        ENL_TRY(bool room, wait_for_room(need));
        if (!room) return WriteResult{false, false};
    }
    if (mem_.load(kRingPendingSendSize) != 0) mem_.store(kRingPendingSendSize, 0);

    header_.resize(header);
    packet.encode_header(header_);
    const uint32_t start = write_;
    const uint64_t trailer = uint64_t{start} << 32;  // what Linux writes; readers skip it
    const size_t pad = len - header - iov_total(packet.payload);
    const uint8_t zeros[8] = {};
    if (uint8_t* p = mem_.linear(start, need)) {
        // Fast path: the whole packet is one piece of host memory.
        std::memcpy(p, header_.data(), header);
        size_t at = header;
        for (const iovec& v : packet.payload) {
            if (v.iov_len) std::memcpy(p + at, v.iov_base, v.iov_len);
            at += v.iov_len;
        }
        std::memcpy(p + at, zeros, pad);  // < 8 bytes
        std::memcpy(p + len, &trailer, sizeof(trailer));
        return publish(start, need, signal_always);
    }
    uint32_t pos = start;
    put(pos, header_);
    for (const iovec& v : packet.payload) put(pos, std::span(static_cast<const uint8_t*>(v.iov_base), v.iov_len));
    put(pos, std::span(zeros, pad));
    put(pos, std::span(reinterpret_cast<const uint8_t*>(&trailer), sizeof(trailer)));
    return publish(start, need, signal_always);
}

OutRing::WriteResult OutRing::publish(uint32_t start, uint32_t need, bool signal_always) {
    write_ = start + need;
    if (write_ >= mem_.data_size()) write_ -= mem_.data_size();
    // Packet bytes before the index (release); then a full barrier before we read the
    // guest's interrupt mask and read index to decide whether to signal.
    mem_.store(kRingWriteIndex, write_);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    WriteResult result{true, false};
    if (mem_.load(kRingInterruptMask) == 0) result.signal = signal_always || mem_.load(kRingReadIndex) == start;
    return result;
}

}  // namespace enlighten::vmbus
