// Byte-level helpers shared by every wire protocol (VMBus, the integration services, and the
// VSPs to come): size-asserted wire structs, checked copies out of untrusted bytes, and a
// byte writer. One header so that no protocol copies them again.
//
// Threads: stateless helpers; ByteWriter is a plain value (one thread at a time).
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

// A wire struct: plain, trivially copyable, exactly `size` bytes. Put offsets in comments
// beside the fields and assert the ones that matter with ENL_WIRE_OFFSET.
#define ENL_WIRE(T, size)                                                                             \
    static_assert(std::is_standard_layout_v<T> && std::is_trivially_copyable_v<T> && sizeof(T) == (size), \
                  #T " is not a " #size "-byte wire struct")
#define ENL_WIRE_OFFSET(T, field, off) static_assert(offsetof(T, field) == (off), #T "." #field " is not at " #off)

namespace enlighten {

// The bytes of a wire struct.
template <typename T>
[[nodiscard]] std::span<const uint8_t> as_bytes(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    return std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T));
}

// A copy of the first sizeof(T) bytes, or nullopt if there are fewer: for untrusted input,
// copied once and then used as the copy.
template <typename T>
[[nodiscard]] std::optional<T> read_prefix(std::span<const uint8_t> bytes) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (bytes.size() < sizeof(T)) return std::nullopt;
    T v;
    std::memcpy(&v, bytes.data(), sizeof(T));
    return v;
}

// A copy of T from bytes that may be shorter than T (the rest is zero). For messages whose
// minimum size the caller has already checked against a shorter, older layout.
template <typename T>
[[nodiscard]] T read_padded(std::span<const uint8_t> bytes) {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    // An empty span may have no data at all: memcpy from null is undefined even for 0 bytes.
    if (const size_t n = std::min(sizeof(T), bytes.size()); n != 0) std::memcpy(&v, bytes.data(), n);
    return v;
}

// Appends wire structs and byte strings to a buffer.
class ByteWriter {
public:
    ByteWriter() = default;
    explicit ByteWriter(size_t reserve) { buf_.reserve(reserve); }

    template <typename T>
    ByteWriter& put(const T& v) {
        return bytes(as_bytes(v));
    }
    ByteWriter& bytes(std::span<const uint8_t> b) {
        buf_.insert(buf_.end(), b.begin(), b.end());
        return *this;
    }
    ByteWriter& zeros(size_t n) {
        buf_.resize(buf_.size() + n, 0);
        return *this;
    }
    [[nodiscard]] size_t size() const { return buf_.size(); }
    [[nodiscard]] std::span<const uint8_t> view() const { return buf_; }
    [[nodiscard]] std::vector<uint8_t> take() { return std::move(buf_); }

private:
    std::vector<uint8_t> buf_;
};

// One iovec over a byte span (for payloads handed to rings, io_uring or tap).
[[nodiscard]] inline iovec iov_of(std::span<const uint8_t> b) {
    return iovec{const_cast<uint8_t*>(b.data()), b.size()};
}

[[nodiscard]] inline size_t iov_total(std::span<const iovec> iov) {
    size_t n = 0;
    for (const auto& v : iov) n += v.iov_len;
    return n;
}

}  // namespace enlighten
