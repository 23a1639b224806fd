#include "platform/boot/linux_loader.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <cstring>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/size.hpp"
#include "platform/layout.hpp"

namespace enlighten::boot {

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
constexpr uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

struct OpenFile {
    UniqueFd fd;
    uint64_t size = 0;
};

Result<OpenFile> open_regular(const std::string& path, std::string_view what, int held_fd = -1) {
    OpenFile f;
    f.fd.reset(held_fd >= 0 ? ::fcntl(held_fd, F_DUPFD_CLOEXEC, 0) : ::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!f.fd.valid()) return fail("{} '{}': {}", what, path, std::strerror(errno));
    struct stat st {};
    if (::fstat(f.fd.get(), &st) < 0) return fail("{} '{}': {}", what, path, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail("{} '{}': not a regular file", what, path);
    f.size = static_cast<uint64_t>(st.st_size);
    return f;
}

// Reads exactly `len` bytes at `offset` of the file into `dst`.
Result<> read_exact(const OpenFile& f, uint64_t offset, uint8_t* dst, uint64_t len, std::string_view what) {
    while (len > 0) {
        const size_t chunk = static_cast<size_t>(std::min<uint64_t>(len, 1ULL << 30));
        const ssize_t n = ::pread(f.fd.get(), dst, chunk, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail("reading {}: {}", what, std::strerror(errno));
        }
        if (n == 0) return fail("reading {}: file is shorter than expected", what);
        const auto got = static_cast<uint64_t>(n);
        dst += got;
        offset += got;
        len -= got;
    }
    return {};
}

}  // namespace

Result<KernelInfo> parse_bzimage(std::span<const uint8_t> head, uint64_t file_size) {
    constexpr size_t kHdrEnd = kSetupHeaderOffset + sizeof(SetupHeader);
    if (head.size() < kHdrEnd || file_size < kHdrEnd)
        return fail("not a bzImage: the file is too small ({} bytes)", file_size);
    KernelInfo info;
    std::memcpy(&info.hdr, head.data() + kSetupHeaderOffset, sizeof(SetupHeader));
    const SetupHeader& h = info.hdr;
    if (h.boot_flag != kBootFlag || h.header != kHdrSMagic)
        return fail("not a bzImage: no Linux boot header (\"HdrS\" magic missing)");
    if (h.version < 0x020c)
        return fail("kernel uses boot protocol {}.{:02}; 2.12 or later is required",
                    h.version >> 8, h.version & 0xff);
    if (!(h.loadflags & kLoadedHigh)) return fail("not a bzImage: zImage kernels are not supported");
    if (!(h.xloadflags & kXlfKernel64)) return fail("kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)");
    const uint64_t setup_sects = h.setup_sects == 0 ? 4 : h.setup_sects;
    info.setup_bytes = (setup_sects + 1) * 512;
    if (info.setup_bytes >= file_size) return fail("not a bzImage: setup code ({} bytes) fills the whole file", info.setup_bytes);
    info.payload_bytes = file_size - info.setup_bytes;
    info.init_size = std::max<uint64_t>(h.init_size, info.payload_bytes);
    info.cmdline_max = h.cmdline_size;
    info.initrd_addr_max = h.initrd_addr_max;
    return info;
}

std::vector<MemoryRegion> ram_layout(uint64_t mem_size) {
    std::vector<MemoryRegion> regions;
    const uint64_t low = std::min(mem_size, layout::kMmioHoleStart);
    regions.push_back({0, low, nullptr});
    if (mem_size > low) regions.push_back({layout::kFourGiB, mem_size - low, nullptr});
    return regions;
}

std::vector<E820Entry> build_e820(uint64_t mem_size) {
    std::vector<E820Entry> map;
    map.push_back({0, layout::kEbdaStart, kE820Ram});
    map.push_back({layout::kEbdaStart, layout::kHighMemory - layout::kEbdaStart, kE820Reserved});
    const auto regions = ram_layout(mem_size);
    map.push_back({layout::kHighMemory, regions[0].size - layout::kHighMemory, kE820Ram});
    if (regions.size() > 1) map.push_back({regions[1].gpa, regions[1].size, kE820Ram});
    return map;
}

Result<uint64_t> place_initrd(uint64_t size, uint64_t kernel_end, uint64_t mem_size, uint64_t addr_max) {
    const uint64_t low_end = std::min(mem_size, layout::kMmioHoleStart);
    // initrd_addr_max is the highest address of the last byte.
    const uint64_t limit = std::min(low_end, addr_max == 0 ? low_end : addr_max + 1);
    const uint64_t start = align_up(kernel_end, kPage);
    if (size > limit || limit - size < start)
        return fail("initrd ({} KiB) does not fit in guest memory ({} MiB) above the kernel; "
                    "give the guest more memory",
                    (size + 1023) / 1024, mem_size / MiB);
    return align_down(limit - size, kPage);
}

namespace {

// The checked plan shared by check_linux_files() and load_linux().
struct Plan {
    OpenFile kernel;
    OpenFile initrd;
    KernelInfo info;
    uint64_t initrd_gpa = 0;
    // Host decompression: the payload's compression, and where the kernel proper goes.
    std::optional<Compression> compression;
    uint64_t kernel_base = layout::kKernelLoad;
};

// Whether the kernel proper can be decompressed here: a payload we can decompress, and a
// preferred load address that is 2 MiB aligned (startup_64 requires it) with room above it.
Result<> plan_host_decompression(Plan& plan, uint64_t low_end) {
    const SetupHeader& h = plan.info.hdr;
    const uint64_t base = h.pref_address;
    if (h.payload_length < 16 || uint64_t{h.payload_offset} + h.payload_length > plan.info.payload_bytes) return {};
    if (base < layout::kKernelLoad || base % (2 * MiB) != 0 || base > low_end || low_end - base < plan.info.init_size)
        return {};
    std::array<uint8_t, 8> head{};
    ENL_TRY_VOID(read_exact(plan.kernel, plan.info.setup_bytes + h.payload_offset, head.data(), head.size(), "kernel"));
    plan.compression = detect_compression(head);
    if (plan.compression) plan.kernel_base = base;
    return {};
}

Result<Plan> plan_linux(const LinuxBootConfig& cfg) {
    Plan plan;
    ENL_TRY(plan.kernel, open_regular(cfg.kernel_path, "kernel", cfg.kernel_fd));
    std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(plan.kernel.size, 8192)));
    ENL_TRY_VOID(read_exact(plan.kernel, 0, head.data(), head.size(), "kernel"));
    auto info = parse_bzimage(head, plan.kernel.size);
    if (!info) return std::unexpected(info.error().context(fmt::format("kernel '{}'", cfg.kernel_path)));
    plan.info = *info;

    const uint64_t low_end = std::min(cfg.mem_size, layout::kMmioHoleStart);
    if (cfg.host_decompress) ENL_TRY_VOID(plan_host_decompression(plan, low_end));
    const uint64_t kernel_end = plan.kernel_base + plan.info.init_size;
    if (kernel_end > low_end)
        return fail("kernel '{}' needs {} MiB to boot; the guest has {} MiB", cfg.kernel_path,
                    (kernel_end + MiB - 1) / MiB, cfg.mem_size / MiB);
    if (!cfg.initrd_path.empty()) {
        ENL_TRY(plan.initrd, open_regular(cfg.initrd_path, "initrd", cfg.initrd_fd));
        auto where = place_initrd(plan.initrd.size, kernel_end, cfg.mem_size, plan.info.initrd_addr_max);
        if (!where) return std::unexpected(where.error().context(fmt::format("initrd '{}'", cfg.initrd_path)));
        plan.initrd_gpa = *where;
    }
    const uint64_t cmdline_max = std::min(plan.info.cmdline_max, layout::kCmdlineMax - 1);
    if (cfg.cmdline.size() > cmdline_max)
        return fail("kernel command line is {} bytes; this kernel accepts at most {}", cfg.cmdline.size(), cmdline_max);
    if (cfg.cmdline.find('\0') != std::string::npos) return fail("kernel command line contains a NUL byte");
    return plan;
}

}  // namespace

Result<> check_linux_files(const LinuxBootConfig& cfg) {
    ENL_TRY_VOID(plan_linux(cfg));
    return {};
}

namespace {

// Threads for decompressing the kernel: the CPUs this process may run on, at most 8.
unsigned decompression_threads() {
    cpu_set_t set;
    CPU_ZERO(&set);
    const int n = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return static_cast<unsigned>(std::clamp(n, 1, 8));
}

// Reads the compressed payload of the kernel (into memory, not mapped: a file cut short
// meanwhile is an error here, where a mapping would have been SIGBUS; reliability review B6).
// parse_bzimage checked the range against the size.
Result<std::vector<uint8_t>> read_payload(const Plan& plan) {
    const KernelInfo& info = plan.info;
    std::vector<uint8_t> payload(info.hdr.payload_length);
    ENL_TRY_VOID(read_exact(plan.kernel, info.setup_bytes + info.hdr.payload_offset, payload.data(), payload.size(),
                            "the kernel's payload"));
    return payload;
}

// Decompresses the kernel proper into guest memory; returns its physical entry point. LZ4
// kernels are read block by block, by the threads that decompress them; the other formats
// (and an LZ4 stream not in whole blocks) are read whole, then streamed.
Result<uint64_t> load_kernel_proper(const GuestMemory& mem, const Plan& plan, Compression c) {
    const KernelInfo& info = plan.info;
    const auto memory = [&mem](uint64_t gpa, uint64_t size) { return mem.host_ptr(gpa, size); };
    const uint64_t payload_size = info.hdr.payload_length;
    if (c == Compression::Lz4) {
        // The block-parallel path: most of a VMM's start-up time is this decompression.
        const auto t0 = std::chrono::steady_clock::now();
        const uint64_t base = info.setup_bytes + info.hdr.payload_offset;  // parse_bzimage checked the range
        const PayloadReader from_file = [&plan, base](uint64_t offset, std::span<uint8_t> out) {
            return read_exact(plan.kernel, base + offset, out.data(), out.size(), "the kernel's payload");
        };
        std::array<uint8_t, 16> tail{};  // ends with the decompressed size
        if (payload_size < tail.size()) return fail("compressed kernel of {} bytes is too small", payload_size);
        ENL_TRY_VOID(from_file(payload_size - tail.size(), tail));
        ENL_TRY(const uint64_t elf_size, payload_decompressed_size(tail));
        VmlinuxWriter writer(elf_size, plan.kernel_base, plan.kernel_base + info.init_size, memory);
        const unsigned threads = decompression_threads();
        auto done = decompress_lz4_parallel(from_file, payload_size, info.init_size, writer, threads);
        if (done) {
            log::debug("startup: kernel read and decompressed on {} thread(s) in {} ms", threads,
                       std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
                           .count());
            return writer.finish();
        }
        log::debug("kernel: LZ4 blocks not decompressed in parallel ({}); streaming them", done.error().message());
    }
    ENL_TRY(const std::vector<uint8_t> payload, read_payload(plan));
    ENL_TRY(const uint64_t elf_size, payload_decompressed_size(payload));
    VmlinuxWriter writer(elf_size, plan.kernel_base, plan.kernel_base + info.init_size, memory);
    ENL_TRY_VOID(decompress_payload(payload, c, info.init_size,
                                    [&writer](std::span<const uint8_t> piece) { return writer.write(piece); }));
    return writer.finish();
}

}  // namespace

Result<BootEntry> load_linux(const GuestMemory& mem, const LinuxBootConfig& cfg) {
    ENL_TRY(Plan plan, plan_linux(cfg));
    const KernelInfo& info = plan.info;
    BootEntry entry;
    entry.boot_params = layout::kBootParams;
    if (plan.compression) {
        auto rip = load_kernel_proper(mem, plan, *plan.compression);
        if (!rip) return std::unexpected(rip.error().context(fmt::format("kernel '{}'", cfg.kernel_path)));
        entry.rip = *rip;
        entry.host_decompressed = plan.compression;
    } else {
        uint8_t* dst = mem.host_ptr(layout::kKernelLoad, info.payload_bytes);
        if (!dst) return fail("kernel '{}' does not fit in guest memory", cfg.kernel_path);
        ENL_TRY_VOID(read_exact(plan.kernel, info.setup_bytes, dst, info.payload_bytes, "kernel"));
        entry.rip = layout::kKernelLoad + 0x200;
    }
    if (plan.initrd.fd.valid()) {
        entry.initrd_gpa = plan.initrd_gpa;
        entry.initrd_size = plan.initrd.size;
        uint8_t* p = mem.host_ptr(entry.initrd_gpa, entry.initrd_size);
        if (!p) return fail("initrd '{}' does not fit in guest memory", cfg.initrd_path);
        ENL_TRY_VOID(read_exact(plan.initrd, 0, p, entry.initrd_size, "initrd"));
    }

    ENL_TRY_VOID(mem.fill(layout::kCmdline, 0, cfg.cmdline.size() + 1));
    ENL_TRY_VOID(mem.write(layout::kCmdline, std::span(reinterpret_cast<const uint8_t*>(cfg.cmdline.data()), cfg.cmdline.size())));

    BootParams bp{};
    bp.hdr = info.hdr;
    bp.hdr.type_of_loader = 0xff;  // undefined boot loader
    bp.hdr.loadflags = static_cast<uint8_t>(bp.hdr.loadflags | kCanUseHeap);
    bp.hdr.heap_end_ptr = 0xfe00;
    bp.hdr.cmd_line_ptr = static_cast<uint32_t>(layout::kCmdline);
    bp.hdr.ramdisk_image = static_cast<uint32_t>(entry.initrd_gpa);
    bp.hdr.ramdisk_size = static_cast<uint32_t>(entry.initrd_size);
    bp.ext_ramdisk_image = static_cast<uint32_t>(entry.initrd_gpa >> 32);
    bp.ext_ramdisk_size = static_cast<uint32_t>(entry.initrd_size >> 32);
    bp.acpi_rsdp_addr = cfg.acpi_rsdp;
    const auto e820 = build_e820(cfg.mem_size);
    bp.e820_entries = static_cast<uint8_t>(e820.size());
    std::copy(e820.begin(), e820.end(), bp.e820_table);
    ENL_TRY_VOID(mem.write_obj(layout::kBootParams, bp));

    // GDT for the 64-bit entry.
    ENL_TRY_VOID(mem.write(layout::kGdt, std::span(reinterpret_cast<const uint8_t*>(kGdtEntries), sizeof(kGdtEntries))));
    // Identity map of the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT[0..3] -> 4 PDs.
    ENL_TRY_VOID(mem.write_obj<uint64_t>(layout::kPml4, layout::kPdpt | 0x3));
    for (uint64_t i = 0; i < 4; ++i) {
        ENL_TRY_VOID(mem.write_obj<uint64_t>(layout::kPdpt + i * 8, (layout::kPd + i * kPage) | 0x3));
        for (uint64_t j = 0; j < 512; ++j) {
            const uint64_t addr = (i * 512 + j) << 21;
            ENL_TRY_VOID(mem.write_obj<uint64_t>(layout::kPd + i * kPage + j * 8, addr | 0x83));
        }
    }
    return entry;
}

}  // namespace enlighten::boot
