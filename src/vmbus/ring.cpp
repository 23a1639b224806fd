#include "vmbus/ring.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace enlighten::vmbus {

namespace {

constexpr uint64_t kMaxPfn = (1ULL << 52) - 1;

constexpr uint32_t used_bytes(uint32_t write, uint32_t read, uint32_t size) {
    return write >= read ? write - read : size - read + write;
}

constexpr uint32_t align8(uint32_t v) { return (v + 7u) & ~7u; }

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

Result<std::optional<RawPacket>> InRing::next(std::vector<uint8_t>& buf, uint32_t max_len) {
    const uint32_t size = mem_.data_size();
    const uint32_t w = mem_.load(kRingWriteIndex);
    if (w >= size || w % 8 != 0) return fail("guest write index {:#x} is outside the ring ({:#x} bytes)", w, size);
    if (w == read_) return std::optional<RawPacket>{};
    const uint32_t avail = used_bytes(w, read_, size);
    if (avail < sizeof(PacketDescriptor) + kPacketTrailerSize)
        return fail("ring holds {} bytes, less than one packet", avail);
    PacketDescriptor desc;
    if (const uint8_t* p = mem_.linear(read_, sizeof(desc)))
        std::memcpy(&desc, p, sizeof(desc));
    else
        mem_.read(read_, std::span(reinterpret_cast<uint8_t*>(&desc), sizeof(desc)));
    const uint32_t len = desc.len8 * 8u;
    const uint32_t off = desc.offset8 * 8u;
    if (len < sizeof(PacketDescriptor) || off < sizeof(PacketDescriptor) || off > len)
        return fail("packet with offset {} and length {} is malformed", off, len);
    if (len + kPacketTrailerSize > avail) return fail("packet of {} bytes is longer than the {} bytes in the ring", len, avail);
    if (len > max_len) return fail("packet of {} bytes is longer than this channel allows ({})", len, max_len);
    if (buf.size() < len) buf.resize(std::max<size_t>(len, 256));
    if (const uint8_t* p = mem_.linear(read_, len))
        std::memcpy(buf.data(), p, len);
    else
        mem_.read(read_, std::span(buf.data(), len));
    // Use the descriptor as copied with the packet (one copy: what we validate is what we use).
    std::memcpy(&desc, buf.data(), sizeof(desc));
    if (desc.len8 * 8u != len || desc.offset8 * 8u != off) return fail("packet changed while it was read");
    read_ += len + kPacketTrailerSize;
    if (read_ >= size) read_ -= size;
    return std::optional<RawPacket>(RawPacket{desc, std::span<const uint8_t>(buf.data(), len)});
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

Result<OutRing::WriteResult> OutRing::write(uint16_t type, uint16_t flags, uint64_t trans_id,
                                            std::span<const uint8_t> extra, std::span<const uint8_t> payload,
                                            bool signal_always) {
    const uint32_t size = mem_.data_size();
    if (extra.size() % 8 != 0 || extra.size() > 0xffff) return fail("packet header extension of {} bytes", extra.size());
    const uint64_t header_len = sizeof(PacketDescriptor) + extra.size();
    const uint64_t len = align8(static_cast<uint32_t>(std::min<uint64_t>(header_len + payload.size(), UINT32_MAX - 8)));
    if (header_len + payload.size() > max_packet() || len > max_packet())
        return fail("packet of {} bytes does not fit a {}-byte ring", header_len + payload.size(), size);
    const uint32_t need = static_cast<uint32_t>(len) + kPacketTrailerSize;

    auto free_space = [&](uint32_t& r) -> Result<uint32_t> {
        r = mem_.load(kRingReadIndex);
        if (r >= size || r % 8 != 0) return fail("guest read index {:#x} is outside the ring ({:#x} bytes)", r, size);
        return size - used_bytes(write_, r, size);
    };
    uint32_t r = 0;
    ENL_TRY(uint32_t free, free_space(r));
    // The ring must never become completely full (write == read would mean empty).
    if (need >= free) {
        mem_.store(kRingPendingSendSize, need);
        // The guest may have made room after we looked and before it could see the request.
        std::atomic_thread_fence(std::memory_order_seq_cst);
        ENL_TRY(free, free_space(r));
        if (need >= free) return WriteResult{false, false};
    }
    if (mem_.load(kRingPendingSendSize) != 0) mem_.store(kRingPendingSendSize, 0);

    const uint32_t start = write_;
    PacketDescriptor desc{type, static_cast<uint16_t>(header_len / 8), static_cast<uint16_t>(len / 8), flags, trans_id};
    const uint64_t trailer = uint64_t{start} << 32;  // what Linux writes; readers skip it
    const uint32_t pad = static_cast<uint32_t>(len - header_len - payload.size());
    if (uint8_t* p = mem_.linear(start, need)) {
        // Fast path: the whole packet is one piece of host memory.
        std::memcpy(p, &desc, sizeof(desc));
        if (!extra.empty()) std::memcpy(p + sizeof(desc), extra.data(), extra.size());
        if (!payload.empty()) std::memcpy(p + header_len, payload.data(), payload.size());
        for (uint32_t i = 0; i < pad; ++i) p[header_len + payload.size() + i] = 0;  // < 8 bytes
        std::memcpy(p + len, &trailer, sizeof(trailer));
        return publish(start, need, signal_always);
    }
    mem_.write(start, std::span(reinterpret_cast<const uint8_t*>(&desc), sizeof(desc)));
    uint32_t pos = static_cast<uint32_t>((start + sizeof(desc)) % size);
    if (!extra.empty()) {
        mem_.write(pos, extra);
        pos = static_cast<uint32_t>((pos + extra.size()) % size);
    }
    mem_.write(pos, payload);
    pos = static_cast<uint32_t>((pos + payload.size()) % size);
    if (pad) {
        const uint8_t zeros[8] = {};
        mem_.write(pos, std::span(zeros, pad));
        pos = (pos + pad) % size;
    }
    mem_.write(pos, std::span(reinterpret_cast<const uint8_t*>(&trailer), sizeof(trailer)));
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
