// The VHDX backend: a disk::Disk over a vhdx::Image (image.hpp: the format, the log, the
// chain), with one io_uring per Queue as in raw.hpp.
//
// What each operation becomes:
//   Read     the range is mapped through the chain (Image::map_read, a short lock per image):
//            runs in a file become IORING_OP_READV on that file (this one or a parent), with
//            slices of the request's iovecs (no copy); runs that read as zeros are zeroed
//            in place. A request that needs no I/O completes through an IORING_OP_NOP.
//   Write    Image::map_write (allocates blocks at the end of the file if needed, under the
//            image's lock), then IORING_OP_WRITEV at the block's file offset; a differencing
//            disk's sector bitmap bits are set when the write completes. FUA: RWF_DSYNC on the
//            data, and if the write changed metadata, a flush (below) before it completes.
//   Flush    when no metadata changed since the last commit: IORING_OP_FSYNC (DATASYNC), as
//            raw. Otherwise Image::flush() (fdatasync, log entry, fdatasync, pages in place)
//            on the queue's helper thread, which reports through the completion eventfd.
//   Discard  whole blocks become ZERO (through the log at the next flush) and their file
//            space is punched (IORING_OP_FALLOCATE); partial blocks of a base disk are
//            punched (read back as zeros); a differencing disk ignores partial blocks and
//            reports discard_zeroes = false. Fixed disks report no discard.
//
// O_DIRECT as raw (OpenOptions::direct): every file of the chain is opened a second time with
// O_DIRECT for data; requests whose file offset, length or memory do not fit its alignment go
// through the buffered descriptor that the Image uses for metadata (blocks are 1 MiB aligned,
// so the guest's alignment carries over to the file).
//
// Threads: as disk.hpp. The Image is shared (its lock order is in image.hpp); each Queue's
// helper thread runs only Image::flush() and hands results back under a leaf mutex. The disk's
// destructor (the last queue gone) runs Image::close(): a final commit and an empty log.
#pragma once

#include <memory>

#include "backends/disk/disk.hpp"
#include "backends/disk/vhdx/image.hpp"
#include "common/result.hpp"

namespace enlighten::disk {

class VhdxDisk : public Disk {
public:
    [[nodiscard]] virtual vhdx::Image& image() = 0;
};

// Opens `o.path` as a VHDX image (and its parents, read-only).
Result<std::shared_ptr<VhdxDisk>> open_vhdx(const OpenOptions& o);

}  // namespace enlighten::disk
