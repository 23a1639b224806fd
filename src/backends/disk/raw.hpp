// The raw backend: a regular file (sparse or not) or a block device, byte for byte the guest's
// disk, driven through io_uring (liburing), one ring per Queue.
//
// What each operation becomes:
//   Read/Write  IORING_OP_READV/WRITEV with the request's iovecs (guest RAM, no copy);
//               FUA = RWF_DSYNC in the SQE's rw_flags.
//   Flush       IORING_OP_FSYNC with IORING_FSYNC_DATASYNC (fdatasync: the inode, so it also
//               covers what went through the buffered descriptor below).
//   Discard     files: IORING_OP_FALLOCATE(PUNCH_HOLE | KEEP_SIZE): the blocks go back to the
//               file system and read back as zeros. Block devices: ioctl(BLKDISCARD), which
//               io_uring cannot issue on Linux 6.1 (BLOCK_URING_CMD_DISCARD is 6.12+); it is run
//               on a helper thread of the queue (started at the first discard), so the worker
//               never blocks; its completions come through the same completion_fd.
//
// O_DIRECT (DiskInfo::direct) is the default: the image is opened O_DIRECT, and once more
// without it. A request goes
//   - direct, as it is, when its offset, its length and every iovec (base to the memory
//     alignment, length to the offset alignment) fit the file's O_DIRECT alignment
//     (statx STATX_DIOALIGN; when the kernel does not say: 4096 for memory, and for offsets
//     4096 on a file or the logical block size on a block device);
//   - direct through an aligned bounce buffer (copied in for a write, out for a read) when only
//     the memory is misaligned: the I/O stays direct, so no page-cache copy of it can go stale;
//   - through the buffered descriptor when the offset or length is not a multiple of the offset
//     alignment (512-byte sectors over a 4096-aligned host): the page cache does the
//     read-modify-write under its page locks, which stays correct for concurrent writes to
//     neighbouring sectors (a bounce would need our own range locks across queues). Direct
//     requests then cover whole pages (Auto uses O_DIRECT only when the offset alignment is at
//     most the sector or a multiple of the page size), so a buffered and a direct request
//     share a page only if they overlap, which the guest never orders anyway.
// A direct request refused with EINVAL (an alignment the kernel did not report) is retried
// once through the buffered descriptor.
//
// Short transfers (a partial read or write from the kernel) are resubmitted for the rest until
// done; one that makes no progress completes with -EIO.
//
// Threads: as disk.hpp. A RawQueue's stats() belong to its thread. The discard helper thread
// only runs ioctl(BLKDISCARD) and hands results back under a leaf mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "backends/disk/disk.hpp"
#include "common/result.hpp"

namespace enlighten::disk {

// How requests were carried out, per queue (for tests and benchmarks).
struct RawQueueStats {
    uint64_t direct = 0;       // direct, straight from the request's iovecs
    uint64_t bounced = 0;      // direct through a bounce buffer (misaligned memory)
    uint64_t buffered = 0;     // through the page cache (buffered disk, or misaligned offset)
    uint64_t resubmitted = 0;  // short transfers continued
    uint64_t einval_retried = 0;  // direct requests retried buffered after EINVAL
    uint64_t helper = 0;       // operations run on the helper thread (BLKDISCARD)
};

class RawQueue : public Queue {
public:
    [[nodiscard]] virtual const RawQueueStats& stats() const = 0;
};

class RawDisk : public Disk {
public:
    [[nodiscard]] virtual bool block_device() const = 0;
    // O_DIRECT alignment in use (bytes): buffers' addresses, and offsets/lengths.
    [[nodiscard]] virtual uint32_t dio_mem_align() const = 0;
    [[nodiscard]] virtual uint32_t dio_offset_align() const = 0;
};

// For tests: replaces ::open(2) for the image (e.g. to refuse O_DIRECT as tmpfs on Linux 6.1
// does). Returns an fd or -1 with errno set.
using OpenFn = std::function<int(const char* path, int flags)>;

// Opens `o.path` as a raw image (o.format is not looked at).
Result<std::shared_ptr<RawDisk>> open_raw(const OpenOptions& o, const OpenFn& open_fn = {});

}  // namespace enlighten::disk
