// The library side of `enlighten image` (src/cli/main.cpp): create, inspect, check, merge and
// convert disk images (raw and VHDX). Synchronous (pread/pwrite), for the command line and
// tests; nothing here runs inside a VM.
// Threads: any one thread per image (no shared state, no locks); every call blocks on file I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace enlighten::disk {

struct ImageCreate {
    uint64_t size = 0;           // bytes (differencing: 0 = the parent's)
    std::string format = "vhdx"; // "raw" or "vhdx"
    bool fixed = false;          // vhdx: every block allocated up front
    std::string parent;          // vhdx: a differencing disk on this parent
    uint32_t block_size = 0;     // vhdx: 0 = the default (32 MiB; 2 MiB differencing)
    uint32_t sector_size = 512;  // vhdx: logical sector size, 512 or 4096
    // vhdx: derive the image's GUIDs from this text instead of random numbers, so that the
    // same inputs make the same file (reproducible builds). Only for making an image (create,
    // convert); a disk whose GUIDs equal another's confuses differencing chains, so never give
    // two different disks one seed.
    std::string guid_seed{};
};
Result<> image_create(const std::string& path, const ImageCreate& c);

struct ImageLevel {
    std::string path;
    std::string format;          // "raw", "vhdx"
    std::string type;            // "raw", "fixed", "dynamic", "differencing"
    uint64_t virtual_size = 0;
    uint64_t file_size = 0;
    uint64_t allocated = 0;      // bytes the file occupies on the host (st_blocks)
    uint32_t block_size = 0;     // vhdx
    uint32_t logical_sector = 512, physical_sector = 512;
    uint64_t blocks = 0, blocks_present = 0;  // vhdx payload blocks, and those holding data here
    std::string parent_linkage;  // vhdx differencing
};
struct ImageInfo {
    std::vector<ImageLevel> chain;  // the image, its parent, ...
    std::vector<std::string> notes;
    bool log_replayed = false;      // a pending log was replayed (in memory: info never writes)
};
Result<ImageInfo> image_info(const std::string& path);
std::string image_info_text(const ImageInfo& i);
std::string image_info_json(const ImageInfo& i);

struct CheckReport {
    std::vector<std::string> problems;  // corruption found (empty: clean)
    std::vector<std::string> notes;     // tolerated or repaired
};
// Opens and validates the whole chain (read-only: a pending log is replayed in memory and
// reported). repair: opens the image writable, which replays its log into the file and
// leaves it with an empty log.
Result<CheckReport> image_check(const std::string& path, bool repair);

// Writes every block that holds data in the differencing disk `path` into its parent (the
// parent's contents then equal the child's; the child no longer matches its parent and
// should be deleted). Returns the parent's path.
Result<std::string> image_merge(const std::string& path);

// Copies the virtual disk `in` (raw or vhdx, any chain) into a new image `out`; zero runs
// are left sparse (raw) or unallocated (vhdx).
Result<> image_convert(const std::string& in, const std::string& out, const ImageCreate& c);

}  // namespace enlighten::disk
