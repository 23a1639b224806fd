// A cursor over libFuzzer's input: take integers and byte strings until it runs dry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace enlighten::fuzz {

class Input {
public:
    Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

    [[nodiscard]] bool empty() const { return pos_ >= size_; }

    template <typename T>
    T take() {
        T v{};
        const size_t n = std::min(sizeof(T), size_ - pos_);
        std::memcpy(&v, data_ + pos_, n);
        pos_ += n;
        return v;
    }

    std::span<const uint8_t> take_bytes(size_t max) {
        const size_t n = std::min(max, size_ - pos_);
        std::span<const uint8_t> s(data_ + pos_, n);
        pos_ += n;
        return s;
    }

private:
    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
};

}  // namespace enlighten::fuzz
