// Fuzzes the VHDX parser (backends/disk/vhdx/image.cpp) with hostile image files: headers,
// region tables, metadata, BAT, sector bitmaps, the log and its replay, parent locators.
//
// A VHDX file is megabytes of mostly zeros, so the input describes a sparse file:
//   u64 file size (bounded to 512 MiB), then runs of { u32 offset, u16 length, bytes }.
// The file is built in a memfd (sparse), opened read-only (log replayed in memory), read in a
// few places, then opened writable (log replayed into the file), written, flushed and closed.
// Parents are looked for next to "/nonexistent/fuzz.vhdx" (absolute locator paths may name
// any file; those fail to parse as VHDX or do not exist). Seeds: fuzz/corpus/fuzz_vhdx/
// (real images in this encoding, made by scripts in the corpus's README).
// Traps if an open succeeds with a geometry that breaks the rules it checked.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "backends/disk/vhdx/image.hpp"
#include "common/log.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::disk;

namespace {

#define CHECK(cond)                    \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)

constexpr uint64_t kMaxFile = 512ull << 20;

UniqueFd build(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    UniqueFd fd(::memfd_create("fuzz.vhdx", MFD_CLOEXEC));
    if (!fd.valid()) return fd;
    const uint64_t file_size = in.take<uint64_t>() % kMaxFile;
    if (::ftruncate(fd.get(), static_cast<off_t>(file_size)) < 0) return UniqueFd();
    while (!in.empty()) {
        const uint32_t off = in.take<uint32_t>();
        const uint16_t len = in.take<uint16_t>();
        auto bytes = in.take_bytes(len);
        if (off >= file_size) continue;
        const size_t n = std::min<uint64_t>(bytes.size(), file_size - off);
        if (::pwrite(fd.get(), bytes.data(), n, off) < 0) return UniqueFd();
    }
    return fd;
}

void exercise(vhdx::Image& img, bool write) {
    CHECK(img.size() > 0 && img.size() % img.logical_sector() == 0);
    CHECK(img.block_size() >= (1u << 20) && img.block_size() <= (256u << 20));
    (void)img.counts();
    // What `image check` calls leaked: sorted, disjoint, inside the file, never the header section.
    if (auto unused = img.unreferenced()) {
        uint64_t at = 0;
        for (const auto& [off, len] : unused->gaps) {
            CHECK(off >= at && len > 0 && off >= (1u << 20));
            at = off + len;
        }
    }
    std::vector<uint8_t> buf(64 * 1024);
    const uint64_t n = std::min<uint64_t>(buf.size(), img.size());
    (void)img.read(0, std::span(buf).first(n));
    (void)img.read(img.size() - img.logical_sector(), std::span(buf).first(img.logical_sector()));
    std::vector<vhdx::Extent> ext;
    if (img.map_read(0, img.size(), ext)) {
        uint64_t total = 0;
        for (const auto& e : ext) total += e.length;
        CHECK(total == img.size());
    }
    if (write) {
        (void)img.repair_region_tables();
        std::vector<uint8_t> data(img.logical_sector(), 0x5A);
        (void)img.write(0, data);
        (void)img.flush();
        (void)img.close();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const bool quiet = [] {
        log::set_level(log::Level::Off);
        return true;
    }();
    (void)quiet;
    const std::string path = "/nonexistent/fuzz.vhdx";
    {
        UniqueFd fd = build(data, size);
        if (!fd.valid()) return 0;
        auto img = vhdx::Image::open_fd(std::move(fd), path, {.writable = false, .replay_in_memory = true});
        if (img) exercise(**img, false);
    }
    {
        UniqueFd fd = build(data, size);
        if (!fd.valid()) return 0;
        auto img = vhdx::Image::open_fd(std::move(fd), path, {.writable = true, .replay_in_memory = true});
        if (img) exercise(**img, true);
    }
    return 0;
}
