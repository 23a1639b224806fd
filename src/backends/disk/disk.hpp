// The disk backend interface: what a storage device (storvsp) sees of a disk image, whatever
// its format. A Disk is an open image; each worker thread opens its own Queue on it (one
// io_uring each) and moves guest I/O straight between guest RAM (the request's iovecs) and
// the host file, with no copy in between.
//
//   ENL_TRY(auto disk, disk::open_disk({.path = "/var/lib/vm/root.img"}));
//   ENL_TRY(auto q, disk->open_queue(64));                 // on the worker, once per channel
//   loop.watch(q->completion_fd(), EPOLLIN, [&](uint32_t) {
//       q->reap([&](const disk::Completion& c) { answer(c.tag, c.result); });
//   });
//   if (auto r = q->submit({.op = disk::Op::Read, .offset = lba * 512, .iov = iov, .tag = id}); !r)
//       ...                                                 // Busy: reap first; Invalid: sense
//   q->kick();                                             // once per batch
//
// Requests are in units of info().logical_block (offset and length), inside [0, size_bytes).
// A completion's result is the whole length on success (0 for Flush and Discard), or -errno;
// there are no partial successes (the backend finishes short transfers itself).
//
// Durability (contract-storage §10.3): with volatile_cache (report WCE = 1) a completed write
// may still be lost on a host crash until a Flush completes; a Flush makes stable every write
// that *completed* before the Flush was submitted (SYNCHRONIZE CACHE semantics: writes still
// in flight are not covered, and completions are unordered). A Write with fua set is stable
// when it completes. A Disk without volatile_cache makes every write stable by itself (then
// report WCE = 0).
//
// Format detection: "auto" reads the first bytes of the image. A raw image is guest-written
// from its first byte, so a guest can make its raw disk look like another format for the next
// "auto" open (the QEMU format-probing hole): the VM configuration should name the format
// once it is known, and open_disk logs which format "auto" chose.
//
// Threads: a Disk is immutable once open; info() and open_queue() may be called from any
// thread, and a Disk may be shared (shared_ptr) by the queues of several workers; it lives at
// least as long as its queues. A Queue belongs to one thread at a time (not thread-safe): its
// worker submits, kicks and reaps. Nothing a Queue does blocks on I/O except its destructor,
// which waits for the requests still in flight (their memory stays in use until then).
// open_disk and open_queue do blocking syscalls (open, ioctl, io_uring_setup): call them at
// attach/open time, not per request.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace enlighten::disk {

struct DiskInfo {
    uint64_t size_bytes = 0;           // a multiple of logical_block (a raw file's tail beyond the last whole block is not used)
    uint32_t logical_block = 512;      // what the guest sees as its sector; requests are in these units
    uint32_t physical_block = 4096;    // the host's preferred write unit (READ CAPACITY(16)'s exponent)
    bool read_only = false;            // writes and discards are refused (Errc::Invalid)
    bool discard = false;              // Op::Discard works (hole punching / BLKDISCARD)
    bool discard_zeroes = false;       // discarded ranges read back as zeros (LBPRZ = 1 is truthful)
    bool volatile_cache = true;        // writes may be lost on a host crash until flush(): report WCE=1
    bool fua = false;                  // a write can be made stable by itself (RWF_DSYNC): report DPOFUA
    uint32_t discard_granularity = 4096;  // bytes; the optimal unmap granularity
    std::string format;                // "raw", "vhdx"
    std::string path;
    bool direct = false;               // O_DIRECT in use (else the host page cache)
};

enum class Op : uint8_t { Read, Write, Flush, Discard };

struct Request {
    Op op = Op::Read;
    uint64_t offset = 0;               // bytes, a multiple of logical_block; Read/Write/Discard
    uint64_t length = 0;               // bytes, a multiple of logical_block; Discard only
    std::span<const iovec> iov{};      // Read/Write: the data (its total is the length), at most
                                       // kMaxIovecs entries; the array and the memory stay valid
                                       // until completion (guest RAM)
    bool fua = false;                  // Write: stable before it completes
    uint64_t tag = 0;                  // the caller's, given back in the Completion
};

// `result`: bytes transferred (the request's whole length) for Read/Write, 0 for Flush and
// Discard, or -errno (e.g. -EIO, -ENOSPC) if the host failed it.
struct Completion {
    uint64_t tag = 0;
    int64_t result = 0;
};

inline constexpr size_t kMaxIovecs = 1024;   // IOV_MAX; GuestMemory::kMaxIovecs is the same
inline constexpr uint32_t kMaxQueueDepth = 4096;

// One submission/completion queue for one worker thread (an io_uring): not thread-safe.
class Queue {
public:
    virtual ~Queue() = default;  // waits for the requests in flight; their completions are dropped

    // Queues one request (sent to the kernel at the next kick()). Errors, with nothing queued:
    //   Errc::Busy: depth() requests are in flight (reap first; back-pressure, not an error);
    //   Errc::Invalid: outside the disk, not in whole logical blocks, more than kMaxIovecs
    //     iovecs, a write or discard on a read-only disk;
    //   Errc::Unsupported: a discard on a disk without info().discard;
    //   Errc::Io: the host could not take it (e.g. no memory for a bounce buffer).
    // A request with nothing to do (zero length; a flush of a read-only disk) completes with 0.
    virtual Result<> submit(const Request& r) = 0;
    // Submits what was queued since the last kick (one io_uring_enter per batch).
    virtual void kick() = 0;
    // An eventfd, readable when completions wait; reap() clears it. Watch it with EPOLLIN.
    [[nodiscard]] virtual int completion_fd() const = 0;
    // Calls fn for the completions that wait (at most 2 x depth() per call; if more remain,
    // completion_fd() stays readable) and returns how many. A completed request's slot is free
    // before fn runs, so fn may submit() and kick(); it must not call reap().
    virtual size_t reap(const std::function<void(const Completion&)>& fn) = 0;
    [[nodiscard]] virtual uint32_t depth() const = 0;
    [[nodiscard]] virtual uint32_t in_flight() const = 0;
};

class Disk {
public:
    virtual ~Disk() = default;
    [[nodiscard]] virtual const DiskInfo& info() const = 0;
    // A queue of `depth` (1..kMaxQueueDepth) requests in flight. Any thread.
    virtual Result<std::unique_ptr<Queue>> open_queue(uint32_t depth) = 0;
};

struct OpenOptions {
    std::string path;
    std::string format = "auto";       // "auto", "raw", "vhdx" (backends/disk/vhdx/vhdx.hpp)
    bool read_only = false;
    // O_DIRECT: Auto uses it when the file system takes it (else buffered, with one warning);
    // On fails if it cannot; Off always goes through the host page cache.
    enum class Direct { Auto, On, Off } direct = Direct::Auto;
    // Every write stable before it completes (RWF_DSYNC on each), so the disk has no volatile
    // cache to report (WCE = 0): QEMU's cache=writethrough. Off: writes are stable after a flush.
    bool writethrough = false;
    // VHDX: open a differencing disk whose parent changed by a merge of this disk that
    // stopped halfway (vhdx::OpenParams::accept_changed_parent). Checkpoint merges only.
    bool accept_changed_parent = false;
};

// Opens the image. Errc::NotFound (no such file), Errc::Invalid (not a regular file or block
// device, empty, unknown format name), Errc::Unsupported (a format we cannot open yet, no
// io_uring), Errc::Io (the host refused: permissions, O_DIRECT with Direct::On, ...).
Result<std::shared_ptr<Disk>> open_disk(const OpenOptions& o);

// The format of an image from its first bytes (at least 8 to recognise anything):
// "vhdx" (signature "vhdxfile"), "qcow2" ("QFI\xfb"), else "raw".
[[nodiscard]] std::string_view detect_format(std::span<const uint8_t> head);
// The same, reading the file's first bytes (buffered, O_RDONLY).
Result<std::string_view> detect_format(const std::string& path);

}  // namespace enlighten::disk
