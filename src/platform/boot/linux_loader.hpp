// Direct boot of a Linux bzImage through the x86 64-bit boot protocol
// (Documentation/x86/boot.rst): the kernel, initrd and command line are placed in guest
// memory, boot_params is filled in, and the boot vCPU starts in long mode at the kernel's
// 64-bit entry point.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "kvm/guest_memory.hpp"
#include "platform/boot/bootparam.hpp"
#include "platform/boot/vmlinux.hpp"

namespace enlighten::boot {

// What we learn from a bzImage's setup header. Pure data, so it can be unit-tested and fuzzed.
struct KernelInfo {
    SetupHeader hdr{};
    uint64_t setup_bytes = 0;     // real-mode part, including the boot sector
    uint64_t payload_bytes = 0;   // protected-mode kernel, loaded at layout::kKernelLoad
    uint64_t init_size = 0;       // memory the kernel needs from its load address while booting
    uint64_t cmdline_max = 0;     // longest command line the kernel accepts, without the NUL
    uint64_t initrd_addr_max = 0; // highest address the initrd may occupy
};

// `head` holds the first bytes of the file (at least 1 KiB if the file is that large);
// `file_size` is the size of the whole file.
Result<KernelInfo> parse_bzimage(std::span<const uint8_t> head, uint64_t file_size);

// RAM below the MMIO hole and above 4 GiB for a guest of `mem_size` bytes.
std::vector<MemoryRegion> ram_layout(uint64_t mem_size);

// The e820 map the guest sees for that layout.
std::vector<E820Entry> build_e820(uint64_t mem_size);

// Highest page-aligned address for an initrd of `size` bytes that lies above `kernel_end`,
// inside RAM below the MMIO hole, and below `addr_max`.
Result<uint64_t> place_initrd(uint64_t size, uint64_t kernel_end, uint64_t mem_size, uint64_t addr_max);

struct LinuxBootConfig {
    std::string kernel_path;
    std::string initrd_path;  // empty: none
    std::string cmdline;
    uint64_t mem_size = 0;
    uint64_t acpi_rsdp = 0;
    // Decompress the kernel here and enter the kernel proper (see vmlinux.hpp) when its
    // compression is one we know; otherwise the bzImage's own decompressor runs in the guest.
    bool host_decompress = true;
    // The kernel and initrd as opened when the VM was set up (-1: open the paths). Every boot
    // reads these, so a reboot loads the files that were checked, even if the paths now name
    // others (reliability review B6); the paths are for messages then.
    int kernel_fd = -1;
    int initrd_fd = -1;
};

struct BootEntry {
    uint64_t rip = 0;
    uint64_t boot_params = 0;
    uint64_t initrd_gpa = 0;
    uint64_t initrd_size = 0;
    std::optional<Compression> host_decompressed;  // set when the guest enters the kernel proper
};

// Everything load_linux() checks about the files, without guest memory: the kernel is a
// readable bzImage that fits, the initrd is readable and fits, the command line fits.
// Lets the VMM refuse bad input before it touches KVM.
Result<> check_linux_files(const LinuxBootConfig& cfg);

// Reads the kernel (decompressed here if cfg.host_decompress allows) and the initrd into
// guest memory and writes boot_params, the command line, the GDT and the identity page tables.
// Any thread (the VMM runs it on its own while it sets up KVM); an LZ4 kernel is read and
// decompressed on up to 8 threads of its own, which end before it returns.
Result<BootEntry> load_linux(const GuestMemory& mem, const LinuxBootConfig& cfg);

// GDT entries used for the 64-bit entry (__BOOT_CS = 0x10, __BOOT_DS = 0x18).
inline constexpr uint16_t kBootCs = 0x10;
inline constexpr uint16_t kBootDs = 0x18;
inline constexpr uint16_t kBootTss = 0x20;
inline constexpr uint64_t kGdtEntries[] = {
    0,                      // null
    0,                      // unused
    0x00af9b000000ffffULL,  // 0x10: 64-bit code, execute/read, flat
    0x00cf93000000ffffULL,  // 0x18: data, read/write, flat 4 GiB
    0x00808b0000000000ULL,  // 0x20: 64-bit TSS (busy)
};

}  // namespace enlighten::boot
