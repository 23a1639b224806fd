// A VHDX image file: its validated metadata (headers, region table, metadata items, BAT,
// sector bitmaps), the log (replayed on open, written on commit), block allocation, and its
// parent chain (differencing disks). It says where virtual bytes live in which file; the data
// I/O itself is the caller's (the io_uring queues of vhdx.cpp, or read()/write() here for the
// image tool).
//
// Opening is hostile-input parsing: every structure is checked before use (docs/vhdx.md lists
// the rules and the cases), and anything malformed is Errc::Invalid with a message that names
// the structure and the field. Allocations are bounded by the file's size (the BAT and the
// sector bitmaps must lie inside it), never by a number read from the file.
//
// Write path and crash consistency (docs/vhdx.md, "Writing"):
//   - the first modification after a writable open updates both headers (new FileWriteGuid,
//     DataWriteGuid and LogGuid) and syncs them;
//   - a new block is taken at the end of the file (ftruncate: fresh space reads as zeros), and
//     its BAT entry changes in memory at once (base disk: FULLY_PRESENT; differencing:
//     PARTIALLY_PRESENT, with the chunk's sector bitmap block allocated the same way); the
//     sector bitmap bits of a differencing write are set when the write completes
//     (complete_write), before the guest hears of it;
//   - changed 4 KiB metadata pages (BAT, sector bitmaps) are only marked dirty; flush() makes
//     them durable: fdatasync (the guest's data, and the previous commit's in-place pages), one
//     log entry per up to 126 pages written and fdatasync'ed, then the pages written in place
//     (synced by the next flush's first fdatasync, before the next entry can overwrite the
//     log; until then a crash replays the entry). A killed process leaves a file whose log
//     replays to exactly the metadata of its last completed flush, plus blocks it had allocated
//     (which read as zeros, or as the parent).
//   - close() (and the destructor) flushes, then sets LogGuid back to zero.
//
// Threads: an Image is shared by the worker threads of a disk. map_read, map_write,
// complete_write and discard take mu_ for an in-memory lookup (plus, when a block is
// allocated, one ftruncate; when a sector bitmap is first touched, one 1 MiB pread): they may
// block briefly on those syscalls, never on data I/O. flush() runs on a disk helper thread (or
// the tool's thread): it holds commit_mu_ throughout (fdatasync, log write) and takes mu_ only
// to copy the dirty pages. Lock order: commit_mu_, then mu_; a parent's mu_ is never taken
// while a child's is held (lookups walk the chain one image at a time). Parents are opened
// read-only and never written.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backends/disk/vhdx/format.hpp"
#include "common/fd.hpp"
#include "common/result.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten::disk::vhdx {

// Where a run of virtual bytes lives: level (0 = this file, 1 = its parent, ...) and the file
// offset there, or level -1: zeros.
struct Extent {
    int level = -1;
    uint64_t file_offset = 0;
    uint64_t length = 0;
};
// A virtual range whose sector bitmap bits a completed write must set (differencing disks).
struct Mark {
    uint64_t offset = 0;
    uint64_t length = 0;
};

struct CreateParams {
    uint64_t size = 0;              // bytes; differencing: 0 = the parent's
    uint32_t block_size = 0;        // 0: 32 MiB (2 MiB for a differencing disk)
    uint32_t logical_sector = 512;  // 512 or 4096; differencing: the parent's
    uint32_t physical_sector = 4096;
    bool fixed = false;             // every block allocated up front (LeaveBlockAllocated)
    std::string parent;             // differencing: the parent image
    std::string guid_seed{};        // empty: random GUIDs; else derived from it (GuidSource)
};

// Creates a new image (refuses to overwrite an existing file).
Result<> create(const std::string& path, const CreateParams& p);

struct OpenParams {
    bool writable = false;
    // A read-only open of a file whose log needs replaying: replay it in memory (true) or
    // refuse (false). A writable open always replays into the file.
    bool replay_in_memory = true;
    // A differencing disk whose parent's DataWriteGuid no longer matches its parent_linkage
    // is refused (the parent changed, so the chain may read wrong data), unless this is set:
    // then it opens, with a note. Only for a parent that changed by having this disk merged
    // into it (partly): the disk's sectors lie over their own copies, so it still reads right.
    // Applies to the immediate parent only.
    bool accept_changed_parent = false;
    // The GUIDs a writable open stamps (FileWriteGuid, DataWriteGuid, LogGuid): random when
    // empty, else derived from this seed (GuidSource; reproducible image builds).
    std::string guid_seed{};
};

class Image {
public:
    ~Image();  // close() if it was not called; its error is logged
    Image(const Image&) = delete;
    Image& operator=(const Image&) = delete;

    // Opens the file and its parents (read-only), validating all of it.
    static Result<std::unique_ptr<Image>> open(const std::string& path, const OpenParams& p);
    // The same on an open descriptor (fuzzing: a memfd). Parents are resolved relative to
    // `path`'s directory.
    static Result<std::unique_ptr<Image>> open_fd(UniqueFd fd, const std::string& path, const OpenParams& p);

    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] int fd() const { return fd_.get(); }
    [[nodiscard]] bool writable() const { return writable_; }
    [[nodiscard]] uint64_t size() const { return size_; }
    [[nodiscard]] uint32_t block_size() const { return block_size_; }
    [[nodiscard]] uint32_t logical_sector() const { return logical_; }
    [[nodiscard]] uint32_t physical_sector() const { return physical_; }
    [[nodiscard]] bool fixed() const { return leave_allocated_ && !has_parent_; }
    [[nodiscard]] bool differencing() const { return has_parent_; }
    [[nodiscard]] const Image* parent() const { return parent_.get(); }
    [[nodiscard]] Image* parent() { return parent_.get(); }
    // This image, its parent, ... (level i is chain()[i]).
    [[nodiscard]] std::vector<const Image*> chain() const;
    [[nodiscard]] Guid data_write_guid() const { return header_data_write_guid_; }
    [[nodiscard]] Guid page83() const { return page83_; }
    [[nodiscard]] std::string parent_linkage() const { return parent_linkage_; }
    [[nodiscard]] uint64_t block_count() const { return blocks_; }
    // The log was replayed at open (in memory for a read-only open).
    [[nodiscard]] bool replayed() const { return replayed_; }
    // Things found at open that were tolerated (e.g. a bad second region table).
    [[nodiscard]] const std::vector<std::string>& notes() const { return notes_; }

    // Payload blocks in each state (for `image info`/`check`).
    struct Counts {
        uint64_t present = 0, partial = 0, zero = 0, not_present = 0, unmapped = 0, bitmaps = 0;
    };
    [[nodiscard]] Counts counts() const ENL_EXCLUDES(mu_);
    // Whether block n holds data in this file (fully or partly).
    [[nodiscard]] bool block_has_data(uint64_t n) const ENL_EXCLUDES(mu_);
    // The ranges (offset, length) of this file (level 0), up to its current size, that
    // neither the format nor the disk uses: not the header section, a region (log, BAT,
    // metadata, unknown ones) or a present block or sector bitmap. Blocks allocated before a
    // crash whose BAT entries were never committed end up here (they leak until freed), and
    // so does the punched space of discarded blocks. Sorted, not overlapping; with the file's
    // size they were measured against.
    struct Unreferenced {
        std::vector<std::pair<uint64_t, uint64_t>> gaps;
        uint64_t file_end = 0;
    };
    [[nodiscard]] Result<Unreferenced> unreferenced() const ENL_EXCLUDES(mu_);
    // A region table copy that was not valid, or (the second) not the same as the first, is
    // rewritten from the good one (a writable open; before any other change). True: one was.
    Result<bool> repair_region_tables();

    // Where [off, off+len) of the virtual disk is, through the chain. Appends to `out`.
    Result<> map_read(uint64_t off, uint64_t len, std::vector<Extent>& out) ENL_EXCLUDES(mu_);
    // Where to write [off, off+len) in this file (level 0), allocating blocks as needed.
    // `marks`: ranges to pass to complete_write() once the data is written.
    Result<> map_write(uint64_t off, uint64_t len, std::vector<Extent>& out, std::vector<Mark>& marks)
        ENL_EXCLUDES(mu_);
    void complete_write(std::span<const Mark> marks) ENL_EXCLUDES(mu_);
    // Frees the whole blocks inside [off, off+len) (state ZERO); `punch` gets the file ranges
    // that no longer hold anything the disk reads (the caller punches holes there). Partial
    // blocks: in a base disk their file range is punched (reads zeros); in a differencing disk
    // they are left alone.
    Result<> discard(uint64_t off, uint64_t len, std::vector<Extent>& punch) ENL_EXCLUDES(mu_);
    // Whether flush() has metadata to write (else an fdatasync is a whole flush).
    [[nodiscard]] bool needs_commit() const ENL_EXCLUDES(mu_);
    // fdatasync, then the dirty metadata through the log (see above).
    Result<> flush() ENL_EXCLUDES(commit_mu_, mu_);
    // flush(), then LogGuid = 0 in the headers. The Image stays usable for reads.
    Result<> close() ENL_EXCLUDES(commit_mu_, mu_);

    // Synchronous I/O with pread/pwrite (the image tool and tests).
    Result<> read(uint64_t off, std::span<uint8_t> out);
    Result<> write(uint64_t off, std::span<const uint8_t> data);

    // Test hook: a commit writes its log entry, then stops (no in-place writes), as if killed.
    void test_stop_after_log_write() { test_stop_after_log_ = true; }

private:
    struct Region {
        uint64_t offset, length;
        std::string what;
    };
    // A replayed page or zeroed range not yet written to the file (read-only replay).
    struct Overlay {
        uint64_t offset, length;
        std::vector<uint8_t> data;  // empty: zeros
    };

    Image() = default;
    static Result<std::unique_ptr<Image>> open_impl(UniqueFd fd, const std::string& path, const OpenParams& p,
                                                    std::set<std::pair<dev_t, ino_t>>& seen, int depth);
    Result<> parse_headers();
    Result<> parse_log();
    Result<> parse_regions();
    Result<> parse_metadata();
    Result<> parse_parent_locator(std::span<const uint8_t> item);
    Result<> parse_bat();
    Result<> open_parent(const OpenParams& p, std::set<std::pair<dev_t, ino_t>>& seen, int depth);

    // pread, with the overlay applied; a short read is an error (Invalid: "past the end").
    Result<> read_meta(uint64_t off, std::span<uint8_t> out, std::string_view what) const;
    Result<> pwrite_all(uint64_t off, std::span<const uint8_t> data) const;
    Result<> sync() const;
    void reserve_commit_space() const;
    Result<> write_headers(const Guid& log_guid, bool new_guids);
    Result<> begin_modify() ENL_REQUIRES(mu_);
    Result<uint64_t> allocate(uint64_t bytes) ENL_REQUIRES(mu_);
    Result<> write_log_entry(std::span<const std::pair<uint64_t, std::vector<uint8_t>>> pages, uint64_t flushed,
                             uint64_t last_offset) ENL_REQUIRES(commit_mu_);
    Result<> flush_locked() ENL_REQUIRES(commit_mu_) ENL_EXCLUDES(mu_);
    [[nodiscard]] uint64_t dirty_page_offset(const std::pair<uint64_t, uint64_t>& key) const ENL_REQUIRES(mu_);
    void mark_dirty(std::pair<uint64_t, uint64_t> key) ENL_REQUIRES(mu_);

    [[nodiscard]] uint64_t chunk_ratio() const { return kBitmapSectors * logical_ / block_size_; }
    [[nodiscard]] uint64_t payload_index(uint64_t block) const { return block + block / chunk_ratio(); }
    [[nodiscard]] uint64_t bitmap_index(uint64_t chunk) const { return (chunk + 1) * chunk_ratio() + chunk; }
    void set_bat(uint64_t index, uint64_t entry) ENL_REQUIRES(mu_);
    // The chunk's sector bitmap (1 MiB), loaded on first use. Null if the chunk has none.
    Result<std::vector<uint8_t>*> bitmap(uint64_t chunk) ENL_REQUIRES(mu_);
    Result<std::vector<uint8_t>*> bitmap_for_write(uint64_t chunk) ENL_REQUIRES(mu_);
    void set_bits(uint64_t off, uint64_t len) ENL_REQUIRES(mu_);
    Result<> map_level(uint64_t off, uint64_t len, int level, std::vector<Extent>& out) ENL_EXCLUDES(mu_);

    std::string path_;
    UniqueFd fd_;
    bool writable_ = false;
    uint64_t file_size_ = 0;  // at open

    // Current header (its slot, the raw 4 KiB) and fields.
    std::vector<uint8_t> header_;
    uint64_t header_seq_ = 0;
    int current_slot_ = 0;  // 0: header 1, 1: header 2
    Guid header_data_write_guid_, log_guid_;
    GuidSource guids_;
    uint64_t log_offset_ = 0, log_length_ = 0;

    std::vector<Overlay> overlay_;
    bool replayed_ = false;
    std::vector<std::string> notes_;
    std::vector<Region> regions_;  // log, BAT, metadata region (and unknown regions): for overlap checks
    std::vector<uint8_t> region_good_;  // the region table in use, as read
    int region_bad_copy_ = -1;          // 0 or 1: that copy is bad or differs (see repair_region_tables)
    uint64_t bat_offset_ = 0, bat_length_ = 0, meta_offset_ = 0, meta_length_ = 0;

    uint64_t size_ = 0;
    uint32_t block_size_ = 0, logical_ = 0, physical_ = 0;
    bool leave_allocated_ = false, has_parent_ = false;
    Guid page83_;
    std::map<std::string, std::string> locator_;  // key -> value (UTF-8)
    std::string parent_linkage_;
    uint64_t blocks_ = 0, chunks_ = 0, bat_entries_ = 0;

    std::unique_ptr<Image> parent_;

    mutable Mutex commit_mu_ ENL_ACQUIRED_BEFORE(mu_);
    mutable Mutex mu_;
    std::vector<uint64_t> bat_ ENL_GUARDED_BY(mu_);
    std::map<uint64_t, std::vector<uint8_t>> bitmaps_ ENL_GUARDED_BY(mu_);  // chunk -> 1 MiB
    // Changed 4 KiB metadata pages: (0, BAT page index) or (chunk + 1, page in its bitmap).
    std::set<std::pair<uint64_t, uint64_t>> dirty_ ENL_GUARDED_BY(mu_);
    uint64_t dirty_gen_ ENL_GUARDED_BY(mu_) = 0;        // bumped at each change
    uint64_t durable_gen_ ENL_GUARDED_BY(mu_) = 0;      // the changes up to here are in the log
    uint64_t eof_ ENL_GUARDED_BY(mu_) = 0;              // where the next block goes (1 MiB aligned)
    bool modified_ ENL_GUARDED_BY(mu_) = false;         // headers updated for this open
    bool closed_ = false;
    uint64_t log_head_ ENL_GUARDED_BY(commit_mu_) = 0;  // offset in the log of the next entry
    uint64_t log_seq_ ENL_GUARDED_BY(commit_mu_) = 1;
    bool test_stop_after_log_ = false;
};

}  // namespace enlighten::disk::vhdx
