// GPADLs (guest physical address descriptor lists) that devices can hold.
//
// The guest describes a buffer (a ring, netvsc's receive and send buffers) as a list of page
// frames and later tears it down. A device that keeps using such a buffer holds a GpadlView;
// a guest teardown is answered (GPADL_TORNDOWN) only when the last view is gone, so the host
// never writes into pages the guest has already freed. OpenVMM's GpadlMap
// (vmbus_channel/src/gpadl.rs) behaves the same way.
//
//   GpadlMap (the server's)            GpadlView (a device's, from ChannelControl::gpadl)
//     insert(data)                       pfns(), byte_count(), read/write(memory, offset, ...)
//     acquire(handle) -> GpadlView       dropping the last copy releases the hold
//     remove(handle, on_released)
//
// Threads: every GpadlMap method and every GpadlView may be used from any thread. The map
// has one mutex, a leaf: nothing else is locked under it, and `on_released` callbacks run
// after it is released, on the thread that dropped the last view (or in remove()'s caller
// when nothing was held... see remove()). Callbacks must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "common/result.hpp"
#include "common/thread_annotations.hpp"
#include "kvm/guest_memory.hpp"

namespace enlighten::vmbus {

// A complete GPADL as the guest built it (single range: byte_count bytes starting
// byte_offset into the first page). Immutable once in the map.
struct GpadlData {
    uint32_t handle = 0;
    uint32_t relid = 0;  // the channel the guest created it for
    uint32_t byte_count = 0;
    uint32_t byte_offset = 0;
    std::vector<uint64_t> pfns;  // every page checked to be guest RAM when it was created
};

class GpadlView {
public:
    GpadlView() = default;
    [[nodiscard]] explicit operator bool() const { return data_ != nullptr; }
    [[nodiscard]] const GpadlData& data() const { return *data_; }
    [[nodiscard]] uint32_t handle() const { return data_->handle; }
    [[nodiscard]] std::span<const uint64_t> pfns() const { return data_->pfns; }
    [[nodiscard]] uint32_t byte_count() const { return data_->byte_count; }
    [[nodiscard]] uint32_t byte_offset() const { return data_->byte_offset; }

    // Copies bytes at `offset` into the buffer (offset 0 is the buffer's first byte, i.e.
    // byte_offset into the first page). Errc::Invalid if [offset, offset+len) is outside.
    Result<> read(const GuestMemory& mem, uint64_t offset, std::span<uint8_t> out) const;
    Result<> write(const GuestMemory& mem, uint64_t offset, std::span<const uint8_t> in) const;

    // Releases this copy's share of the hold.
    void reset() { hold_.reset(), data_.reset(); }

private:
    friend class GpadlMap;
    struct Hold;
    std::shared_ptr<Hold> hold_;
    std::shared_ptr<const GpadlData> data_;
};

class GpadlMap {
public:
    GpadlMap();
    ~GpadlMap();
    GpadlMap(const GpadlMap&) = delete;
    GpadlMap& operator=(const GpadlMap&) = delete;

    // Adds a complete GPADL. Errc::Invalid if the handle is in use (also by one being torn down).
    Result<> insert(GpadlData data);
    // The GPADL, if it exists and is not being torn down (for checks; holds nothing).
    [[nodiscard]] std::shared_ptr<const GpadlData> find(uint32_t handle) const;
    // A view that keeps the GPADL's pages from being handed back to the guest.
    // Errc::NotFound if there is no such GPADL or it is being torn down.
    Result<GpadlView> acquire(uint32_t handle);

    enum class Teardown { Done, Deferred, Unknown };
    // Starts a teardown. Done: nothing held it, it is gone now (on_released is not called).
    // Deferred: views are held; it can no longer be acquired, and on_released runs when the
    // last view is dropped. Unknown: no such GPADL (or already being torn down).
    Teardown remove(uint32_t handle, std::function<void()> on_released);
    // Tears every GPADL down (unload, reset). `on_all_released` runs once no view of any of
    // them is held: at once, in this call, if none is.
    void remove_all(std::function<void()> on_all_released);

    // The handles of the GPADLs on channel `relid` that are not being torn down.
    [[nodiscard]] std::vector<uint32_t> handles_of(uint32_t relid) const;
    [[nodiscard]] size_t size() const;        // GPADLs not being torn down
    [[nodiscard]] size_t held_views() const;  // acquire()s not yet released (all GPADLs)
    [[nodiscard]] bool is_held(uint32_t handle) const;

private:
    friend class GpadlView;
    struct State;
    std::shared_ptr<State> state_;
};

}  // namespace enlighten::vmbus
