// Guest physical memory: the host mappings of guest RAM and checked access to them.
//
// Every access from device code goes through read()/write(), which check that the whole
// [gpa, gpa+len) range lies inside one RAM region. Guest memory may change under us at any
// time (another vCPU), so callers copy a structure out once, validate the copy, and use the
// copy (no double fetches).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "common/result.hpp"

namespace enlighten {

struct MemoryRegion {
    uint64_t gpa = 0;
    uint64_t size = 0;
    uint8_t* host = nullptr;

    [[nodiscard]] uint64_t end() const { return gpa + size; }
};

class GuestMemory {
public:
    // Maps anonymous memory for each region (MAP_NORESERVE: pages are allocated when the
    // guest touches them). `layout` gives gpa and size; host is filled in.
    static Result<GuestMemory> allocate(std::vector<MemoryRegion> layout);
    // Wraps memory owned by someone else (unit tests, fuzzers).
    static GuestMemory borrow(std::vector<MemoryRegion> regions);

    GuestMemory() = default;
    GuestMemory(const GuestMemory&) = delete;
    GuestMemory& operator=(const GuestMemory&) = delete;
    GuestMemory(GuestMemory&& o) noexcept;
    GuestMemory& operator=(GuestMemory&& o) noexcept;
    ~GuestMemory();

    [[nodiscard]] const std::vector<MemoryRegion>& regions() const { return regions_; }
    [[nodiscard]] uint64_t total_size() const;

    // Host pointer to [gpa, gpa+len) if the range lies inside one region, else nullptr.
    [[nodiscard]] uint8_t* host_ptr(uint64_t gpa, uint64_t len) const;
    [[nodiscard]] bool contains(uint64_t gpa, uint64_t len) const { return host_ptr(gpa, len) != nullptr; }

    Result<> read(uint64_t gpa, std::span<uint8_t> out) const;
    Result<> write(uint64_t gpa, std::span<const uint8_t> in) const;
    Result<> fill(uint64_t gpa, uint8_t byte, uint64_t len) const;

    template <typename T>
    Result<T> read_obj(uint64_t gpa) const {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        ENL_TRY_VOID(read(gpa, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T))));
        return value;
    }
    template <typename T>
    Result<> write_obj(uint64_t gpa, const T& value) const {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(gpa, std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
    }

private:
    std::vector<MemoryRegion> regions_;
    bool owned_ = false;
    void release();
};

}  // namespace enlighten
