#include "vmbus/gpadl.hpp"

#include <cstring>

#include "vmbus/packet.hpp"

namespace enlighten::vmbus {

struct GpadlMap::State {
    struct Entry {
        std::shared_ptr<const GpadlData> data;
        size_t holds = 0;  // acquire()s not released
        bool tearing_down = false;
        std::function<void()> on_released;
    };
    mutable Mutex mu;
    std::map<uint32_t, Entry> entries ENL_GUARDED_BY(mu);
    size_t total_holds ENL_GUARDED_BY(mu) = 0;
    std::function<void()> on_all_released ENL_GUARDED_BY(mu);  // remove_all() waiting

    // Drops one hold; returns the callbacks to run (outside the lock).
    void release(uint32_t handle) {
        std::function<void()> done, all_done;
        {
            LockGuard lock(mu);
            auto it = entries.find(handle);
            if (it == entries.end()) return;
            --total_holds;
            if (--it->second.holds == 0 && it->second.tearing_down) {
                done = std::move(it->second.on_released);
                entries.erase(it);
            }
            if (total_holds == 0 && on_all_released) all_done = std::exchange(on_all_released, nullptr);
        }
        if (done) done();
        if (all_done) all_done();
    }
};

// One acquire(): released when the last copy of its view goes.
struct GpadlView::Hold {
    Hold(std::weak_ptr<GpadlMap::State> s, uint32_t h) : state(std::move(s)), handle(h) {}
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    std::weak_ptr<GpadlMap::State> state;
    uint32_t handle;
    ~Hold() {
        if (auto s = state.lock()) s->release(handle);
    }
};

namespace {

// Walks [offset, offset+len) of a GPADL page by page, giving host pointers.
template <typename Fn>
Result<> for_each_piece(const GuestMemory& mem, const GpadlData& g, uint64_t offset, uint64_t len, Fn fn) {
    if (offset > g.byte_count || len > g.byte_count - offset)
        return fail(Errc::Invalid, "range {:#x}+{:#x} is outside GPADL {:#x} ({} bytes)", offset, len, g.handle, g.byte_count);
    uint64_t at = g.byte_offset + offset;
    uint64_t done = 0;
    while (done < len) {
        const uint64_t page = at / kPageSize;
        const uint64_t in_page = at % kPageSize;
        const uint64_t chunk = std::min<uint64_t>(len - done, kPageSize - in_page);
        uint8_t* host = mem.host_ptr(g.pfns[page] * kPageSize + in_page, chunk);
        if (!host) return fail(Errc::Invalid, "GPADL {:#x} page {:#x} is not guest RAM", g.handle, g.pfns[page]);
        fn(host, done, chunk);
        done += chunk;
        at += chunk;
    }
    return {};
}

}  // namespace

Result<> GpadlView::read(const GuestMemory& mem, uint64_t offset, std::span<uint8_t> out) const {
    return for_each_piece(mem, *data_, offset, out.size(),
                          [&](const uint8_t* host, uint64_t at, uint64_t n) { std::memcpy(out.data() + at, host, n); });
}

Result<> GpadlView::write(const GuestMemory& mem, uint64_t offset, std::span<const uint8_t> in) const {
    return for_each_piece(mem, *data_, offset, in.size(),
                          [&](uint8_t* host, uint64_t at, uint64_t n) { std::memcpy(host, in.data() + at, n); });
}

GpadlMap::GpadlMap() : state_(std::make_shared<State>()) {}
GpadlMap::~GpadlMap() = default;

Result<> GpadlMap::insert(GpadlData data) {
    LockGuard lock(state_->mu);
    const uint32_t handle = data.handle;
    auto [it, added] = state_->entries.try_emplace(handle);
    if (!added) return fail(Errc::Invalid, "GPADL handle {:#x} is already in use", handle);
    it->second.data = std::make_shared<const GpadlData>(std::move(data));
    return {};
}

std::shared_ptr<const GpadlData> GpadlMap::find(uint32_t handle) const {
    LockGuard lock(state_->mu);
    auto it = state_->entries.find(handle);
    if (it == state_->entries.end() || it->second.tearing_down) return nullptr;
    return it->second.data;
}

Result<GpadlView> GpadlMap::acquire(uint32_t handle) {
    LockGuard lock(state_->mu);
    auto it = state_->entries.find(handle);
    if (it == state_->entries.end() || it->second.tearing_down)
        return fail(Errc::NotFound, "no GPADL {:#x}", handle);
    ++it->second.holds;
    ++state_->total_holds;
    GpadlView v;
    v.data_ = it->second.data;
    v.hold_ = std::make_shared<GpadlView::Hold>(state_, handle);
    return v;
}

GpadlMap::Teardown GpadlMap::remove(uint32_t handle, std::function<void()> on_released) {
    LockGuard lock(state_->mu);
    auto it = state_->entries.find(handle);
    if (it == state_->entries.end() || it->second.tearing_down) return Teardown::Unknown;
    if (it->second.holds == 0) {
        state_->entries.erase(it);
        return Teardown::Done;
    }
    it->second.tearing_down = true;
    it->second.on_released = std::move(on_released);
    return Teardown::Deferred;
}

void GpadlMap::remove_all(std::function<void()> on_all_released) {
    std::vector<std::function<void()>> pending;
    {
        LockGuard lock(state_->mu);
        for (auto it = state_->entries.begin(); it != state_->entries.end();) {
            if (it->second.holds == 0) {
                // A teardown that was waiting for this release is superseded: nothing to answer.
                it = state_->entries.erase(it);
            } else {
                it->second.tearing_down = true;
                it->second.on_released = nullptr;
                ++it;
            }
        }
        if (state_->total_holds != 0) {
            state_->on_all_released = std::move(on_all_released);
            return;
        }
    }
    if (on_all_released) on_all_released();
}

std::vector<uint32_t> GpadlMap::handles_of(uint32_t relid) const {
    LockGuard lock(state_->mu);
    std::vector<uint32_t> out;
    for (const auto& [h, e] : state_->entries)
        if (!e.tearing_down && e.data->relid == relid) out.push_back(h);
    return out;
}

size_t GpadlMap::size() const {
    LockGuard lock(state_->mu);
    size_t n = 0;
    for (const auto& [h, e] : state_->entries) n += e.tearing_down ? 0 : 1;
    return n;
}

size_t GpadlMap::held_views() const {
    LockGuard lock(state_->mu);
    return state_->total_holds;
}

bool GpadlMap::is_held(uint32_t handle) const {
    LockGuard lock(state_->mu);
    auto it = state_->entries.find(handle);
    return it != state_->entries.end() && it->second.holds > 0;
}

}  // namespace enlighten::vmbus
