// Fuzzes the bzImage setup-header parser (a kernel file is user input).
#include <cstdint>
#include <span>

#include "platform/boot/linux_loader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto info = enlighten::boot::parse_bzimage(std::span(data, size), size);
    if (info) {
        // Whatever was accepted must be self-consistent.
        if (info->setup_bytes >= size || info->setup_bytes + info->payload_bytes != size) __builtin_trap();
        (void)enlighten::boot::place_initrd(info->payload_bytes, 0x100000 + info->init_size, 256 << 20,
                                            info->initrd_addr_max);
    }
    return 0;
}
