#include "vmm/io_bus.hpp"

#include <algorithm>

namespace enlighten {

Result<> IoBus::add(uint64_t base, uint64_t len, std::shared_ptr<IoDevice> device) {
    if (len == 0 || base + len < base) return fail("invalid I/O range {:#x}+{:#x}", base, len);
    auto it = std::lower_bound(ranges_.begin(), ranges_.end(), base,
                               [](const Range& r, uint64_t b) { return r.base < b; });
    if (it != ranges_.end() && it->base < base + len)
        return fail("I/O range {:#x}+{:#x} overlaps {:#x}", base, len, it->base);
    if (it != ranges_.begin() && std::prev(it)->base + std::prev(it)->len > base)
        return fail("I/O range {:#x}+{:#x} overlaps {:#x}", base, len, std::prev(it)->base);
    ranges_.insert(it, Range{base, len, std::move(device)});
    return {};
}

const IoBus::Range* IoBus::find(uint64_t addr) const {
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                               [](uint64_t a, const Range& r) { return a < r.base; });
    if (it == ranges_.begin()) return nullptr;
    --it;
    return addr - it->base < it->len ? &*it : nullptr;
}

bool IoBus::read(uint64_t addr, std::span<uint8_t> data) const {
    const Range* r = find(addr);
    if (!r) {
        std::fill(data.begin(), data.end(), uint8_t{0xff});
        return false;
    }
    r->device->io_read(addr - r->base, data);
    return true;
}

bool IoBus::write(uint64_t addr, std::span<const uint8_t> data) const {
    const Range* r = find(addr);
    if (!r) return false;
    r->device->io_write(addr - r->base, data);
    return true;
}

}  // namespace enlighten
