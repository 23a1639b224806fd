#include "backends/disk/image_tool.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "backends/disk/disk.hpp"
#include "backends/disk/vhdx/image.hpp"
#include "common/fd.hpp"

namespace enlighten::disk {

namespace {

constexpr uint64_t kCopyChunk = 1024 * 1024;

Result<std::string> format_of(const std::string& path) {
    ENL_TRY(auto f, detect_format(path));
    if (f == "qcow2") return fail(Errc::Unsupported, "{}: qcow2 images are not supported", path);
    return std::string(f);
}

Result<> pread_full(int fd, uint64_t off, std::span<uint8_t> out, const std::string& path) {
    size_t got = 0;
    while (got < out.size()) {
        const ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(off + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno(fmt::format("{}: pread", path));
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    std::fill(out.begin() + static_cast<ptrdiff_t>(got), out.end(), uint8_t{0});
    return {};
}

Result<> pwrite_full(int fd, uint64_t off, std::span<const uint8_t> data, const std::string& path) {
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return fail_errno(fmt::format("{}: pwrite", path));
        done += static_cast<size_t>(n);
    }
    return {};
}

bool all_zero(std::span<const uint8_t> b) {
    return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
}

// A readable virtual disk of either format.
struct Source {
    std::unique_ptr<vhdx::Image> image;
    UniqueFd raw;
    uint64_t size = 0;
    uint32_t sector = 512;
    std::string path;
    Result<> read(uint64_t off, std::span<uint8_t> out) {
        if (image) return image->read(off, out);
        return pread_full(raw.get(), off, out, path);
    }
};

Result<Source> open_source(const std::string& path) {
    Source s;
    s.path = path;
    ENL_TRY(const std::string f, format_of(path));
    if (f == "vhdx") {
        ENL_TRY(s.image, vhdx::Image::open(path, {.writable = false, .replay_in_memory = true}));
        s.size = s.image->size();
        s.sector = s.image->logical_sector();
        return s;
    }
    s.raw.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!s.raw.valid()) return fail_errno(fmt::format("{}: open", path));
    struct stat st {};
    if (::fstat(s.raw.get(), &st) < 0) return fail_errno(fmt::format("{}: fstat", path));
    s.size = static_cast<uint64_t>(st.st_size) / 512 * 512;
    return s;
}

uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

}  // namespace

Result<> image_create(const std::string& path, const ImageCreate& c) {
    if (c.format == "raw") {
        if (!c.parent.empty()) return fail(Errc::Invalid, "{}: a raw image cannot have a parent", path);
        if (c.size == 0) return fail(Errc::Invalid, "{}: --size is needed", path);
        UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
        if (!fd.valid()) return fail_errno(fmt::format("{}: create", path));
        if (::ftruncate(fd.get(), static_cast<off_t>(c.size)) < 0) return fail_errno(fmt::format("{}: ftruncate", path));
        if (c.fixed) (void)::fallocate(fd.get(), 0, 0, static_cast<off_t>(c.size));
        return {};
    }
    if (c.format != "vhdx") return fail(Errc::Invalid, "{}: format '{}' (raw or vhdx)", path, c.format);
    if (c.fixed && !c.parent.empty()) return fail(Errc::Invalid, "{}: a differencing disk cannot be fixed", path);
    return vhdx::create(path, {.size = c.size,
                               .block_size = c.block_size,
                               .logical_sector = c.sector_size,
                               .physical_sector = std::max<uint32_t>(c.sector_size, 4096),
                               .fixed = c.fixed,
                               .parent = c.parent,
                               .guid_seed = c.guid_seed});
}

Result<ImageInfo> image_info(const std::string& path) {
    ImageInfo info;
    ENL_TRY(const std::string f, format_of(path));
    if (f == "raw") {
        ImageLevel l;
        l.path = path;
        l.format = l.type = "raw";
        struct stat st {};
        if (::stat(path.c_str(), &st) < 0) return fail_errno(fmt::format("{}: stat", path));
        l.virtual_size = l.file_size = static_cast<uint64_t>(st.st_size);
        l.allocated = allocated_bytes(path);
        info.chain.push_back(l);
        return info;
    }
    ENL_TRY(auto img, vhdx::Image::open(path, {.writable = false, .replay_in_memory = true}));
    info.log_replayed = img->replayed();
    for (const vhdx::Image* i : img->chain()) {
        ImageLevel l;
        l.path = i->path();
        l.format = "vhdx";
        l.type = i->differencing() ? "differencing" : i->fixed() ? "fixed" : "dynamic";
        l.virtual_size = i->size();
        struct stat st {};
        if (::fstat(i->fd(), &st) == 0) {
            l.file_size = static_cast<uint64_t>(st.st_size);
            l.allocated = static_cast<uint64_t>(st.st_blocks) * 512;
        }
        l.block_size = i->block_size();
        l.logical_sector = i->logical_sector();
        l.physical_sector = i->physical_sector();
        l.blocks = i->block_count();
        const auto c = i->counts();
        l.blocks_present = c.present + c.partial;
        l.parent_linkage = i->parent_linkage();
        for (const auto& n : i->notes()) info.notes.push_back(fmt::format("{}: {}", i->path(), n));
        info.chain.push_back(l);
    }
    return info;
}

std::string image_info_text(const ImageInfo& info) {
    std::string s;
    for (size_t k = 0; k < info.chain.size(); ++k) {
        const auto& l = info.chain[k];
        if (k > 0) s += fmt::format("parent {}:\n", k);
        s += fmt::format("image: {}\nformat: {} ({})\nvirtual size: {} bytes\nfile size: {} bytes\nallocated: {} bytes\n",
                         l.path, l.format, l.type, l.virtual_size, l.file_size, l.allocated);
        if (l.format == "vhdx")
            s += fmt::format("block size: {} bytes\nsector size: {} logical, {} physical\nblocks: {} of {} hold data\n",
                             l.block_size, l.logical_sector, l.physical_sector, l.blocks_present, l.blocks);
        if (!l.parent_linkage.empty()) s += fmt::format("parent linkage: {}\n", l.parent_linkage);
    }
    if (info.log_replayed) s += "log: pending entries (replayed in memory; `enlighten image check --repair` writes them)\n";
    for (const auto& n : info.notes) s += fmt::format("note: {}\n", n);
    return s;
}

std::string image_info_json(const ImageInfo& info) {
    nlohmann::json chain = nlohmann::json::array();
    for (const auto& l : info.chain) {
        nlohmann::json j = {{"path", l.path},           {"format", l.format},       {"type", l.type},
                            {"virtual_size", l.virtual_size}, {"file_size", l.file_size}, {"allocated", l.allocated}};
        if (l.format == "vhdx") {
            j["block_size"] = l.block_size;
            j["logical_sector_size"] = l.logical_sector;
            j["physical_sector_size"] = l.physical_sector;
            j["blocks"] = l.blocks;
            j["blocks_present"] = l.blocks_present;
        }
        if (!l.parent_linkage.empty()) j["parent_linkage"] = l.parent_linkage;
        chain.push_back(j);
    }
    nlohmann::json j = chain.empty() ? nlohmann::json::object() : chain[0];
    j["chain"] = chain;
    j["log_pending"] = info.log_replayed;
    j["notes"] = info.notes;
    return j.dump(2) + "\n";
}

namespace {

// Bytes of [off, off+len) that hold data on the host (SEEK_DATA/SEEK_HOLE); all of it if the
// file system cannot say.
uint64_t data_bytes(int fd, uint64_t off, uint64_t len) {
    uint64_t n = 0;
    const uint64_t end = off + len;
    while (off < end) {
        const off_t d = ::lseek(fd, static_cast<off_t>(off), SEEK_DATA);
        if (d < 0) return errno == ENXIO ? n : n + (end - off);
        if (static_cast<uint64_t>(d) >= end) break;
        const off_t h = ::lseek(fd, d, SEEK_HOLE);
        const uint64_t stop = h < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(h), end);
        n += stop - static_cast<uint64_t>(d);
        off = stop;
    }
    return n;
}

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

}  // namespace

Result<CheckReport> image_check(const std::string& path, bool repair) {
    CheckReport r;
    ENL_TRY(const std::string f, format_of(path));
    if (f == "raw") {
        r.notes.push_back("raw image: nothing to check");
        return r;
    }
    auto img = vhdx::Image::open(path, {.writable = repair, .replay_in_memory = true});
    if (!img) {
        if (img.error().code() != Errc::Invalid) return std::unexpected(img.error());
        r.problems.push_back(img.error().message());
        return r;
    }
    if ((*img)->replayed())
        r.notes.push_back(repair ? "log replayed into the file" : "log has pending entries (replayed in memory; --repair writes them)");
    for (const vhdx::Image* i : (*img)->chain())
        for (const auto& n : i->notes()) r.notes.push_back(fmt::format("{}: {}", i->path(), n));
    // Space nothing uses: blocks allocated before a crash whose BAT entries never reached the
    // log, or a discard's punched blocks at the end. Computed after the log's replay (into
    // the file with --repair, in memory without), so a block a pending entry names counts as
    // used. Not corruption: a note, and --repair gives it back.
    ENL_TRY(const auto unused, (*img)->unreferenced());
    const auto& gaps = unused.gaps;
    uint64_t held = 0;
    for (const auto& [off, len] : gaps) held += data_bytes((*img)->fd(), off, len);
    const bool tail = !gaps.empty() && gaps.back().first + gaps.back().second == unused.file_end;
    if (repair) {
        ENL_TRY(const bool fixed, (*img)->repair_region_tables());
        if (fixed) r.notes.push_back("rewrote the bad region table from the good one");
    }
    if (!repair) {
        if (held != 0)
            r.notes.push_back(fmt::format("{} of the file is allocated but holds nothing the disk uses (blocks "
                                          "allocated before a crash, most likely); --repair frees it",
                                          mib(held)));
        return r;
    }
    if (auto c = (*img)->close(); !c) return std::unexpected(c.error());
    if (held == 0) return r;  // nothing holds host space: a file that is fine stays as it is
    // The image is closed (its log empty): what is unreferenced now stays so, and freeing it
    // is safe at any point, even if this is killed halfway.
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) return fail_errno(fmt::format("{}: open", path));
    for (const auto& [off, len] : gaps)
        if (::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                        static_cast<off_t>(len)) < 0 && errno != EOPNOTSUPP)
            return fail_errno(fmt::format("{}: freeing {} bytes at {:#x}", path, len, off));
    uint64_t cut = 0;
    if (tail) {
        cut = gaps.back().second;
        if (::ftruncate(fd.get(), static_cast<off_t>(gaps.back().first)) < 0)
            return fail_errno(fmt::format("{}: truncating the unused end", path));
    }
    if (::fsync(fd.get()) < 0) return fail_errno(fmt::format("{}: fsync", path));
    r.notes.push_back(fmt::format("freed {} that held nothing the disk uses{}", mib(held),
                                  cut ? fmt::format(" (the file is {} shorter)", mib(cut)) : std::string()));
    return r;
}

Result<std::string> image_merge(const std::string& path) {
    // A parent that changed is taken: a merge that stopped halfway changed it, and merging
    // again (the child's sectors over whatever the parent holds) completes it.
    ENL_TRY(auto child,
            vhdx::Image::open(path, {.writable = false, .replay_in_memory = false, .accept_changed_parent = true}));
    if (!child->differencing()) return fail(Errc::Invalid, "{}: not a differencing disk (nothing to merge into)", path);
    const std::string parent_path = child->parent()->path();
    ENL_TRY(auto parent, vhdx::Image::open(parent_path, {.writable = true, .replay_in_memory = false}));
    std::vector<uint8_t> buf(child->block_size());
    for (uint64_t n = 0; n < child->block_count(); ++n) {
        if (!child->block_has_data(n)) continue;
        const uint64_t off = n * child->block_size();
        const auto len = static_cast<size_t>(std::min<uint64_t>(child->block_size(), child->size() - off));
        ENL_TRY_VOID(child->read(off, std::span(buf).first(len)));  // the child's sectors over the parent's
        ENL_TRY_VOID(parent->write(off, std::span(buf).first(len)));
    }
    ENL_TRY_VOID(parent->close());
    return parent_path;
}

Result<> image_convert(const std::string& in, const std::string& out, const ImageCreate& c0) {
    ENL_TRY(auto src, open_source(in));
    ImageCreate c = c0;
    c.size = src.size;
    c.parent.clear();
    if (c.format == "vhdx" && c.sector_size == 512) c.sector_size = src.sector;
    ENL_TRY_VOID(image_create(out, c));
    std::unique_ptr<vhdx::Image> dst;
    UniqueFd raw;
    if (c.format == "vhdx") {
        ENL_TRY(dst, vhdx::Image::open(out, {.writable = true,
                                             .replay_in_memory = false,
                                             .guid_seed = c.guid_seed.empty() ? "" : c.guid_seed + ":convert"}));
    } else {
        raw.reset(::open(out.c_str(), O_RDWR | O_CLOEXEC));
        if (!raw.valid()) return fail_errno(fmt::format("{}: open", out));
    }
    std::vector<uint8_t> buf(kCopyChunk);
    for (uint64_t off = 0; off < src.size; off += kCopyChunk) {
        const auto len = static_cast<size_t>(std::min<uint64_t>(kCopyChunk, src.size - off));
        const auto b = std::span(buf).first(len);
        ENL_TRY_VOID(src.read(off, b));
        if (all_zero(b) && !(c.fixed && c.format == "raw")) continue;
        if (dst) ENL_TRY_VOID(dst->write(off, b));
        else ENL_TRY_VOID(pwrite_full(raw.get(), off, b, out));
    }
    if (dst) return dst->close();
    if (::fsync(raw.get()) < 0) return fail_errno(fmt::format("{}: fsync", out));
    return {};
}

}  // namespace enlighten::disk
