#include "backends/disk/vhdx/image.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "common/log.hpp"

namespace enlighten::disk::vhdx {

namespace {

constexpr int kMaxChainDepth = 256;
constexpr size_t kMaxPagesPerEntry = loge::kDescFirstSector;  // one descriptor sector

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Errors about the file's contents.
template <typename... Args>
std::unexpected<Error> bad(const std::string& path, fmt::format_string<Args...> f, Args&&... args) {
    return std::unexpected(
        Error(fmt::format("vhdx {}: {}", path, fmt::format(f, std::forward<Args>(args)...)), Errc::Invalid));
}
std::unexpected<Error> sys(const std::string& path, std::string_view what, int err = errno) {
    return std::unexpected(Error(fmt::format("vhdx {}: {}: {}", path, what, std::strerror(err)),
                                 err == ENOENT ? Errc::NotFound : Errc::Io, err));
}

// UTF-16LE (no NUL, well-formed surrogates) to UTF-8.
bool utf16_to_utf8(std::span<const uint8_t> in, std::string& out) {
    if (in.size() % 2 != 0) return false;
    out.clear();
    for (size_t i = 0; i < in.size(); i += 2) {
        uint32_t c = get<uint16_t>(in, i);
        if (c == 0) return false;
        if (c >= 0xD800 && c <= 0xDBFF) {
            if (i + 4 > in.size()) return false;
            const uint32_t lo = get<uint16_t>(in, i + 2);
            if (lo < 0xDC00 || lo > 0xDFFF) return false;
            c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
            i += 2;
        } else if (c >= 0xDC00 && c <= 0xDFFF) {
            return false;
        }
        if (c < 0x80) {
            out.push_back(static_cast<char>(c));
        } else if (c < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (c >> 6)));
            out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
        } else if (c < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (c >> 12)));
            out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
        } else {
            out.push_back(static_cast<char>(0xF0 | (c >> 18)));
            out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
        }
    }
    return true;
}

// UTF-8 (what we write: paths and GUID strings) to UTF-16LE; bytes >= 0x80 are decoded.
std::vector<uint8_t> utf8_to_utf16(std::string_view s) {
    std::vector<uint8_t> out;
    auto put16 = [&](uint32_t u) {
        out.push_back(static_cast<uint8_t>(u & 0xFF));
        out.push_back(static_cast<uint8_t>(u >> 8));
    };
    for (size_t i = 0; i < s.size();) {
        const auto c0 = static_cast<uint8_t>(s[i]);
        uint32_t c = c0;
        size_t n = 1;
        if (c0 >= 0xF0 && i + 3 < s.size()) {
            c = ((c0 & 0x07u) << 18) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 12) |
                ((static_cast<uint8_t>(s[i + 2]) & 0x3Fu) << 6) | (static_cast<uint8_t>(s[i + 3]) & 0x3Fu);
            n = 4;
        } else if (c0 >= 0xE0 && i + 2 < s.size()) {
            c = ((c0 & 0x0Fu) << 12) | ((static_cast<uint8_t>(s[i + 1]) & 0x3Fu) << 6) |
                (static_cast<uint8_t>(s[i + 2]) & 0x3Fu);
            n = 3;
        } else if (c0 >= 0xC0 && i + 1 < s.size()) {
            c = ((c0 & 0x1Fu) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3Fu);
            n = 2;
        }
        i += n;
        if (c >= 0x10000) {
            c -= 0x10000;
            put16(0xD800 + (c >> 10));
            put16(0xDC00 + (c & 0x3FF));
        } else {
            put16(c);
        }
    }
    return out;
}

Result<> pread_all(int fd, uint64_t off, std::span<uint8_t> out, size_t& got) {
    got = 0;
    while (got < out.size()) {
        const ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(off + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("pread");
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    return {};
}

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

// A parsed log entry (validated; the data pages rebuilt).
struct LogEntry {
    uint64_t pos = 0;  // offset in the log
    uint64_t length = 0;
    uint64_t tail = 0;
    uint64_t seq = 0;
    uint64_t flushed = 0, last = 0;
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> pages;  // target, 4 KiB
    std::vector<std::pair<uint64_t, uint64_t>> zeros;                // target, length
};

}  // namespace

// ---- Opening ----

Result<std::unique_ptr<Image>> Image::open(const std::string& path, const OpenParams& p) {
    UniqueFd fd(::open(path.c_str(), (p.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
    if (!fd.valid()) return sys(path, "open");
    return open_fd(std::move(fd), path, p);
}

Result<std::unique_ptr<Image>> Image::open_fd(UniqueFd fd, const std::string& path, const OpenParams& p) {
    std::set<std::pair<dev_t, ino_t>> seen;
    return open_impl(std::move(fd), path, p, seen, 0);
}

Result<std::unique_ptr<Image>> Image::open_impl(UniqueFd fd, const std::string& path, const OpenParams& p,
                                                std::set<std::pair<dev_t, ino_t>>& seen, int depth) {
    auto img = std::unique_ptr<Image>(new Image());
    img->path_ = path;
    img->fd_ = std::move(fd);
    img->writable_ = p.writable;
    if (!p.guid_seed.empty()) img->guids_ = GuidSource(p.guid_seed);
    struct stat st {};
    if (::fstat(img->fd_.get(), &st) < 0) return sys(path, "fstat");
    if (!S_ISREG(st.st_mode)) return bad(path, "not a regular file");
    if (!seen.insert({st.st_dev, st.st_ino}).second)
        return bad(path, "the differencing chain loops back to this file");
    img->file_size_ = static_cast<uint64_t>(st.st_size);
    if (img->file_size_ < kMiB) return bad(path, "{} bytes: shorter than the 1 MiB header section", img->file_size_);

    std::array<uint8_t, 8> sig{};
    size_t got = 0;
    ENL_TRY_VOID(pread_all(img->fd_.get(), 0, sig, got));
    if (!sig_is(sig, 0, "vhdxfile")) return bad(path, "no \"vhdxfile\" file type identifier at offset 0");

    ENL_TRY_VOID(img->parse_headers());
    ENL_TRY_VOID(img->parse_log());
    if (img->replayed_ && !p.writable && !p.replay_in_memory)
        return bad(path, "the log needs replaying and the file is opened read-only (enlighten image check --repair)");
    ENL_TRY_VOID(img->parse_regions());
    ENL_TRY_VOID(img->parse_metadata());
    ENL_TRY_VOID(img->parse_bat());
    if (img->has_parent_) ENL_TRY_VOID(img->open_parent(p, seen, depth));
    if (img->writable_ && img->log_length_ == 0) return bad(path, "no log (LogLength 0): cannot be opened for writing");
    if (img->writable_) img->reserve_commit_space();
    return img;
}

// Every flush writes a log entry, then the BAT (and sector bitmap) pages in place. In an
// image made by ftruncate (ours, QEMU's) those regions are holes, which take file-system
// space when first written: on a full host file system, every flush would then fail, even
// of writes into blocks that have their space, and the guest could not make anything durable
// again (test_storage.FullHostDiskTests). So they get their space now, once.
void Image::reserve_commit_space() const {
    const std::pair<uint64_t, uint64_t> regions[] = {{log_offset_, log_length_}, {bat_offset_, bat_length_}};
    for (const auto& [off, len] : regions) {
        if (len == 0 || ::fallocate(fd_.get(), FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len)) == 0)
            continue;
        if (errno == EOPNOTSUPP) return;  // a file system without fallocate: nothing to reserve with
        log::warn("vhdx {}: reserving the file space of its {} failed ({}): its flushes may fail while the host file "
                  "system is full", path_, off == log_offset_ ? "log" : "BAT", std::strerror(errno));
    }
}

Result<> Image::read_meta(uint64_t off, std::span<uint8_t> out, std::string_view what) const {
    if (off > file_size_ || out.size() > file_size_ - off)
        return bad(path_, "{} at {:#x}+{:#x} lies past the end of the file ({:#x} bytes)", what, off, out.size(),
                   file_size_);
    size_t got = 0;
    if (auto r = pread_all(fd_.get(), off, out, got); !r) return sys(path_, fmt::format("reading {}", what));
    std::fill(out.begin() + static_cast<ptrdiff_t>(got), out.end(), uint8_t{0});  // past EOF, inside a replayed extension
    for (const auto& o : overlay_) {
        if (!overlaps(off, out.size(), o.offset, o.length)) continue;
        const uint64_t s = std::max(off, o.offset), e = std::min(off + out.size(), o.offset + o.length);
        for (uint64_t x = s; x < e; ++x) out[x - off] = o.data.empty() ? 0 : o.data[x - o.offset];
    }
    return {};
}

Result<> Image::pwrite_all(uint64_t off, std::span<const uint8_t> data) const {
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done, static_cast<off_t>(off + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return sys(path_, "pwrite");
        }
        done += static_cast<size_t>(n);
    }
    return {};
}

Result<> Image::sync() const {
    if (::fdatasync(fd_.get()) < 0) return sys(path_, "fdatasync");
    return {};
}

Result<> Image::parse_headers() {
    std::vector<uint8_t> h[2] = {std::vector<uint8_t>(kHeaderSize), std::vector<uint8_t>(kHeaderSize)};
    std::string why[2];
    bool valid[2] = {false, false};
    for (int i = 0; i < 2; ++i) {
        ENL_TRY_VOID(read_meta(i == 0 ? kHeader1 : kHeader2, h[i], "header"));
        if (!sig_is(h[i], 0, "head"))
            why[i] = "bad signature";
        else if (checksum(h[i], hdr::kChecksum) != get<uint32_t>(h[i], hdr::kChecksum))
            why[i] = "bad checksum";
        else if (get<uint16_t>(h[i], hdr::kVersion) != 1)
            why[i] = fmt::format("version {} (1 expected)", get<uint16_t>(h[i], hdr::kVersion));
        else
            valid[i] = true;
    }
    if (!valid[0] && !valid[1]) return bad(path_, "no valid header (header 1: {}; header 2: {})", why[0], why[1]);
    int cur = valid[0] ? 0 : 1;
    if (valid[0] && valid[1]) {
        const uint64_t s0 = get<uint64_t>(h[0], hdr::kSequence), s1 = get<uint64_t>(h[1], hdr::kSequence);
        if (s0 == s1 && std::memcmp(h[0].data(), h[1].data(), 80) != 0)
            return bad(path_, "both headers have sequence number {} but differ", s0);
        cur = s1 > s0 ? 1 : 0;
    }
    if (!valid[cur ^ 1]) notes_.push_back(fmt::format("header {} is not valid ({})", (cur ^ 1) + 1, why[cur ^ 1]));
    header_ = h[cur];
    current_slot_ = cur;
    header_seq_ = get<uint64_t>(header_, hdr::kSequence);
    header_data_write_guid_ = Guid::read(header_, hdr::kDataWriteGuid);
    log_guid_ = Guid::read(header_, hdr::kLogGuid);
    if (const auto v = get<uint16_t>(header_, hdr::kLogVersion); v != 0) return bad(path_, "header: log version {} (0 expected)", v);
    log_length_ = get<uint32_t>(header_, hdr::kLogLength);
    log_offset_ = get<uint64_t>(header_, hdr::kLogOffset);
    if (log_length_ % kMiB != 0 || log_offset_ % kMiB != 0)
        return bad(path_, "header: log at {:#x}+{:#x} is not in whole MiB", log_offset_, log_length_);
    if (log_length_ != 0 && log_offset_ < kMiB) return bad(path_, "header: log at {:#x} is inside the header section", log_offset_);
    if (log_length_ > kMaxLogLength) return bad(path_, "header: log length {:#x} (at most 1 GiB)", log_length_);
    if (log_offset_ > file_size_ || log_length_ > file_size_ - log_offset_)
        return bad(path_, "header: log at {:#x}+{:#x} extends past the end of the file ({:#x})", log_offset_, log_length_,
                   file_size_);
    if (log_length_ == 0 && !log_guid_.zero()) return bad(path_, "header: a log GUID but no log");
    if (log_length_ != 0) regions_.push_back({log_offset_, log_length_, "the log"});
    return {};
}

// ---- The log ----

Result<> Image::parse_log() {
    if (log_guid_.zero()) return {};
    std::vector<uint8_t> log(log_length_);
    ENL_TRY_VOID(read_meta(log_offset_, log, "the log"));
    const uint64_t L = log_length_;
    auto at = [&](uint64_t pos, uint64_t len) {  // a copy of [pos, pos+len) of the circular log
        std::vector<uint8_t> v(len);
        for (uint64_t i = 0; i < len; i += kPage) std::memcpy(v.data() + i, log.data() + (pos + i) % L, kPage);
        return v;
    };
    // One entry at `pos`, fully validated; nullopt if it is not a valid entry.
    auto parse_entry = [&](uint64_t pos) -> std::optional<LogEntry> {
        const std::span<const uint8_t> h(log.data() + pos, kPage);
        if (!sig_is(h, 0, "loge") || Guid::read(h, loge::kLogGuid) != log_guid_) return std::nullopt;
        LogEntry e;
        e.pos = pos;
        e.length = get<uint32_t>(h, loge::kEntryLength);
        e.tail = get<uint32_t>(h, loge::kTail);
        e.seq = get<uint64_t>(h, loge::kSequence);
        e.flushed = get<uint64_t>(h, loge::kFlushedFileOffset);
        e.last = get<uint64_t>(h, loge::kLastFileOffset);
        const uint64_t ndesc = get<uint32_t>(h, loge::kDescCount);
        if (e.seq == 0 || e.length < kPage || e.length % kPage != 0 || e.length > L || e.tail % kPage != 0 || e.tail >= L)
            return std::nullopt;
        const uint64_t desc_sectors = (loge::kHeaderSize + loge::kDescSize * ndesc + kPage - 1) / kPage;
        if (desc_sectors * kPage > e.length) return std::nullopt;
        const auto entry = at(pos, e.length);
        uint64_t data_sector = desc_sectors;
        for (uint64_t d = 0; d < ndesc; ++d) {
            const size_t o = loge::kHeaderSize + loge::kDescSize * d;
            const std::span<const uint8_t> desc(entry.data() + o, loge::kDescSize);
            const uint64_t target = get<uint64_t>(desc, 16);
            if (get<uint64_t>(desc, 24) != e.seq || target % kPage != 0 || target < kRegion1) return std::nullopt;
            if (sig_is(desc, 0, "zero")) {
                const uint64_t len = get<uint64_t>(desc, 8);
                if (len == 0 || len % kPage != 0 || len > kMaxVirtualSize || target > kMaxVirtualSize * 2) return std::nullopt;
                if (overlaps(target, len, log_offset_, L)) return std::nullopt;
                e.zeros.emplace_back(target, len);
            } else if (sig_is(desc, 0, "desc")) {
                if (overlaps(target, kPage, log_offset_, L) || (data_sector + 1) * kPage > e.length) return std::nullopt;
                const std::span<const uint8_t> ds(entry.data() + data_sector * kPage, kPage);
                if (!sig_is(ds, 0, "data") || get<uint32_t>(ds, 4) != static_cast<uint32_t>(e.seq >> 32) ||
                    get<uint32_t>(ds, 4092) != static_cast<uint32_t>(e.seq))
                    return std::nullopt;
                std::vector<uint8_t> page(kPage);
                put<uint64_t>(page, 0, get<uint64_t>(desc, 8));
                std::memcpy(page.data() + 8, ds.data() + 8, 4084);
                put<uint32_t>(page, 4092, get<uint32_t>(desc, 4));
                e.pages.emplace_back(target, std::move(page));
                ++data_sector;
            } else {
                return std::nullopt;
            }
        }
        if (data_sector * kPage != e.length) return std::nullopt;
        if (checksum(entry, loge::kChecksum) != get<uint32_t>(entry, loge::kChecksum)) return std::nullopt;
        return e;
    };
    // Every valid entry; after one, the scan continues past it (its other sectors are its own
    // descriptors and data, never entry headers, so the scan costs about one pass).
    std::map<uint64_t, LogEntry> entries;  // by position
    const LogEntry* newest = nullptr;
    for (uint64_t pos = 0; pos < L;) {
        auto e = parse_entry(pos);
        if (!e) {
            pos += kPage;
            continue;
        }
        const uint64_t next = pos + e->length;
        auto [it, _] = entries.emplace(pos, std::move(*e));
        if (!newest || it->second.seq > newest->seq) newest = &it->second;
        pos = next;
    }
    if (!newest) {
        notes_.push_back("the header names a log, but the log holds no valid entry (ignored)");
        return {};
    }
    // The active sequence: from the newest entry's tail, entries end to end with consecutive
    // sequence numbers, up to the newest.
    std::vector<const LogEntry*> seq;
    for (uint64_t pos = newest->tail;;) {
        auto it = entries.find(pos);
        if (it == entries.end() || (!seq.empty() && it->second.seq != seq.back()->seq + 1) || seq.size() > entries.size())
            return bad(path_, "log: the active sequence (tail {:#x}, newest entry {} at {:#x}) is broken", newest->tail,
                       newest->seq, newest->pos);
        seq.push_back(&it->second);
        if (&it->second == newest) break;
        pos = (pos + it->second.length) % L;
    }
    if (file_size_ < newest->flushed)
        return bad(path_, "log: the file ({:#x} bytes) is shorter than the log says was flushed ({:#x})", file_size_,
                   newest->flushed);
    const uint64_t new_size = std::max(file_size_, round_up(newest->last, kMiB));
    if (new_size > 2 * kMaxVirtualSize) return bad(path_, "log: last file offset {:#x} is out of range", newest->last);
    replayed_ = true;
    if (!writable_) {
        for (const auto* e : seq) {
            for (const auto& [t, len] : e->zeros) overlay_.push_back({t, len, {}});
            for (const auto& [t, page] : e->pages) overlay_.push_back({t, kPage, page});
        }
        file_size_ = new_size;
        log::info("vhdx {}: log replayed in memory (read-only open; {} entries)", path_, seq.size());
        return {};
    }
    // Writable: a new FileWriteGuid first (log playback is a modification), then the pages,
    // the size, a sync, and LogGuid = 0.
    ENL_TRY_VOID(write_headers(log_guid_, true));
    for (const auto* e : seq) {
        for (const auto& [t, len] : e->zeros) {
            if (::fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE, static_cast<off_t>(t), static_cast<off_t>(len)) < 0) {
                const std::vector<uint8_t> z(kMiB);
                for (uint64_t x = 0; x < len; x += kMiB)
                    ENL_TRY_VOID(pwrite_all(t + x, std::span(z).first(static_cast<size_t>(std::min(kMiB, len - x)))));
            }
        }
        for (const auto& [t, page] : e->pages) ENL_TRY_VOID(pwrite_all(t, page));
    }
    if (new_size > file_size_ && ::ftruncate(fd_.get(), static_cast<off_t>(new_size)) < 0) return sys(path_, "ftruncate");
    file_size_ = new_size;
    ENL_TRY_VOID(sync());
    ENL_TRY_VOID(write_headers(Guid{}, false));
    log::info("vhdx {}: log replayed ({} entries)", path_, seq.size());
    return {};
}

// Writes the header twice (both slots end up current), each followed by a sync [S 2.2.2.1].
// new_guids: a new FileWriteGuid and DataWriteGuid.
Result<> Image::write_headers(const Guid& log_guid, bool new_guids) {
    std::vector<uint8_t> h = header_;
    if (new_guids) {
        guids_.next().write(h, hdr::kFileWriteGuid);
        header_data_write_guid_ = guids_.next();
        header_data_write_guid_.write(h, hdr::kDataWriteGuid);
    }
    log_guid.write(h, hdr::kLogGuid);
    for (int i = 0; i < 2; ++i) {
        put<uint64_t>(h, hdr::kSequence, ++header_seq_);
        seal(h, hdr::kChecksum);
        const int slot = current_slot_ ^ 1;
        ENL_TRY_VOID(pwrite_all(slot == 0 ? kHeader1 : kHeader2, h));
        ENL_TRY_VOID(sync());
        current_slot_ = slot;
    }
    header_ = h;
    log_guid_ = log_guid;
    return {};
}

// ---- Region table, metadata, BAT ----

Result<> Image::parse_regions() {
    std::string first_error;
    for (int copy = 0; copy < 2; ++copy) {
        std::vector<uint8_t> t(kRegionSize);
        ENL_TRY_VOID(read_meta(copy == 0 ? kRegion1 : kRegion2, t, "region table"));
        auto check = [&]() -> Result<> {
            const std::string name = fmt::format("region table {}", copy + 1);
            if (!sig_is(t, 0, "regi")) return bad(path_, "{}: bad signature", name);
            if (checksum(t, 4) != get<uint32_t>(t, 4)) return bad(path_, "{}: bad checksum", name);
            const uint32_t n = get<uint32_t>(t, 8);
            if (n > kMaxEntries) return bad(path_, "{}: {} entries (at most {})", name, n, kMaxEntries);
            if (get<uint32_t>(t, 12) != 0) return bad(path_, "{}: reserved field is not zero", name);
            std::vector<Region> found = regions_;  // the log
            bool have_bat = false, have_meta = false;
            for (uint32_t i = 0; i < n; ++i) {
                const size_t o = 16 + size_t{32} * i;
                const Guid g = Guid::read(t, o);
                const uint64_t off = get<uint64_t>(t, o + 16), len = get<uint32_t>(t, o + 24);
                const uint32_t flags = get<uint32_t>(t, o + 28);
                const bool bat = g == kBatRegion, meta = g == kMetadataRegion;
                const std::string what = bat ? "the BAT region" : meta ? "the metadata region" : "region " + g.str();
                if (flags & ~1u) return bad(path_, "{}: {}: reserved flag bits {:#x}", name, what, flags);
                if (!bat && !meta && (flags & 1))
                    return std::unexpected(Error(
                        fmt::format("vhdx {}: {}: unknown required region {}", path_, name, g.str()), Errc::Unsupported));
                if (off % kMiB != 0 || len % kMiB != 0 || len == 0 || off < kMiB)
                    return bad(path_, "{}: {} at {:#x}+{:#x}: not whole MiB past the header section", name, what, off, len);
                if (off > file_size_ || len > file_size_ - off)
                    return bad(path_, "{}: {} at {:#x}+{:#x} extends past the end of the file ({:#x})", name, what, off,
                               len, file_size_);
                for (const auto& r : found)
                    if (overlaps(off, len, r.offset, r.length)) return bad(path_, "{}: {} overlaps {}", name, what, r.what);
                for (uint32_t j = 0; j < i; ++j)
                    if (Guid::read(t, 16 + size_t{32} * j) == g) return bad(path_, "{}: {} appears twice", name, what);
                found.push_back({off, len, what});
                if (bat) {
                    have_bat = true;
                    bat_offset_ = off;
                    bat_length_ = len;
                }
                if (meta) {
                    have_meta = true;
                    meta_offset_ = off;
                    meta_length_ = len;
                }
            }
            if (!have_bat) return bad(path_, "{}: no BAT region", name);
            if (!have_meta) return bad(path_, "{}: no metadata region", name);
            regions_ = std::move(found);
            return {};
        };
        auto r = check();
        if (r) {
            region_good_ = t;
            if (copy == 1) {
                notes_.push_back(
                    fmt::format("region table 1 is not valid ({}); using table 2 (check --repair rewrites 1)", first_error));
                region_bad_copy_ = 0;
                return {};
            }
            // Both copies must be the same [S 2.3]; a second one that is not is rewritten by
            // check --repair (QEMU and Hyper-V read the first).
            std::vector<uint8_t> second(kRegionSize);
            ENL_TRY_VOID(read_meta(kRegion2, second, "region table 2"));
            if (second != t) {
                notes_.push_back("region table 2 differs from table 1 (check --repair rewrites 2)");
                region_bad_copy_ = 1;
            }
            return {};
        }
        if (r.error().code() != Errc::Invalid) return r;
        if (copy == 0) first_error = r.error().message();
        else return bad(path_, "no valid region table ({}; {})", first_error, r.error().message());
    }
    return {};
}

Result<> Image::parse_metadata() {
    std::vector<uint8_t> t(kMetaTableSize);
    ENL_TRY_VOID(read_meta(meta_offset_, t, "metadata table"));
    if (!sig_is(t, 0, "metadata")) return bad(path_, "metadata table: bad signature");
    const uint16_t n = get<uint16_t>(t, 10);
    if (n > kMaxEntries) return bad(path_, "metadata table: {} entries (at most {})", n, kMaxEntries);
    struct Item {
        Guid id;
        uint32_t offset, length, flags;
    };
    std::vector<Item> items;
    for (uint16_t i = 0; i < n; ++i) {
        const size_t o = 32 + size_t{32} * i;
        Item it{Guid::read(t, o), get<uint32_t>(t, o + 16), get<uint32_t>(t, o + 20), get<uint32_t>(t, o + 24)};
        const bool user = it.flags & 1, required = it.flags & 4;
        const std::string what = fmt::format("metadata item {}", it.id.str());
        if (it.length > kMiB) return bad(path_, "{}: length {:#x} (at most 1 MiB)", what, it.length);
        if (it.length != 0 && (it.offset < kMetaTableSize || uint64_t{it.offset} + it.length > meta_length_))
            return bad(path_, "{}: at {:#x}+{:#x}, outside the metadata region's item area ({:#x}..{:#x})", what,
                       it.offset, it.length, kMetaTableSize, meta_length_);
        for (const auto& p : items) {
            if (p.id == it.id && (p.flags & 1) == (it.flags & 1)) return bad(path_, "{} appears twice", what);
            if (it.length && p.length && overlaps(it.offset, it.length, p.offset, p.length))
                return bad(path_, "{} overlaps metadata item {}", what, p.id.str());
        }
        const bool known = !user && (it.id == kFileParameters || it.id == kVirtualDiskSize || it.id == kPage83 ||
                                     it.id == kLogicalSectorSize || it.id == kPhysicalSectorSize ||
                                     it.id == kParentLocatorItem);
        if (required && !known)
            return std::unexpected(Error(fmt::format("vhdx {}: {} is required but unknown", path_, what), Errc::Unsupported));
        items.push_back(it);
    }
    auto item = [&](const Guid& id, uint32_t want_len, std::string_view name, std::vector<uint8_t>& out) -> Result<bool> {
        for (const auto& it : items) {
            if (it.id != id || (it.flags & 1)) continue;
            if (want_len && it.length != want_len)
                return bad(path_, "metadata item {}: length {} ({} expected)", name, it.length, want_len);
            out.resize(it.length);
            ENL_TRY_VOID(read_meta(meta_offset_ + it.offset, out, name));
            return true;
        }
        if (want_len) return bad(path_, "no {} metadata item", name);
        return false;
    };
    std::vector<uint8_t> b;
    ENL_TRY_VOID(item(kFileParameters, 8, "File Parameters", b));
    block_size_ = get<uint32_t>(b, 0);
    const uint32_t fp = get<uint32_t>(b, 4);
    if (!is_pow2(block_size_) || block_size_ < kMinBlock || block_size_ > kMaxBlock)
        return bad(path_, "block size {:#x} (a power of two from 1 MiB to 256 MiB)", block_size_);
    if (fp & ~3u) return bad(path_, "File Parameters: reserved flag bits {:#x}", fp);
    leave_allocated_ = fp & 1;
    has_parent_ = fp & 2;
    ENL_TRY_VOID(item(kVirtualDiskSize, 8, "Virtual Disk Size", b));
    size_ = get<uint64_t>(b, 0);
    ENL_TRY_VOID(item(kPage83, 16, "Page 83 Data", b));
    page83_ = Guid::read(b, 0);
    ENL_TRY_VOID(item(kLogicalSectorSize, 4, "Logical Sector Size", b));
    logical_ = get<uint32_t>(b, 0);
    ENL_TRY_VOID(item(kPhysicalSectorSize, 4, "Physical Sector Size", b));
    physical_ = get<uint32_t>(b, 0);
    if (logical_ != 512 && logical_ != 4096) return bad(path_, "logical sector size {} (512 or 4096)", logical_);
    if (physical_ != 512 && physical_ != 4096) return bad(path_, "physical sector size {} (512 or 4096)", physical_);
    if (size_ == 0 || size_ > kMaxVirtualSize || size_ % logical_ != 0)
        return bad(path_, "virtual size {:#x} (a non-zero multiple of the {}-byte sector, at most 64 TiB)", size_, logical_);
    ENL_TRY(const bool have_locator, item(kParentLocatorItem, 0, "Parent Locator", b));
    if (has_parent_ && !have_locator) return bad(path_, "a differencing disk (HasParent) without a parent locator");
    if (has_parent_) ENL_TRY_VOID(parse_parent_locator(b));
    return {};
}

Result<> Image::parse_parent_locator(std::span<const uint8_t> item) {
    if (item.size() < 20) return bad(path_, "parent locator: {} bytes (at least 20)", item.size());
    if (Guid::read(item, 0) != kVhdxParentLocatorType)
        return bad(path_, "parent locator: type {} is not the VHDX parent locator", Guid::read(item, 0).str());
    const uint16_t n = get<uint16_t>(item, 18);
    if (n == 0 || n > 256) return bad(path_, "parent locator: {} entries (1 to 256)", n);
    if (20 + size_t{12} * n > item.size()) return bad(path_, "parent locator: {} entries do not fit in {} bytes", n, item.size());
    for (uint16_t i = 0; i < n; ++i) {
        const size_t o = 20 + size_t{12} * i;
        const uint64_t ko = get<uint32_t>(item, o), vo = get<uint32_t>(item, o + 4);
        const uint64_t kl = get<uint16_t>(item, o + 8), vl = get<uint16_t>(item, o + 10);
        if (kl == 0 || vl == 0 || ko == 0 || vo == 0 || ko + kl > item.size() || vo + vl > item.size())
            return bad(path_, "parent locator: entry {} points outside the item", i);
        std::string k, v;
        if (!utf16_to_utf8(item.subspan(ko, kl), k) || !utf16_to_utf8(item.subspan(vo, vl), v))
            return bad(path_, "parent locator: entry {} is not well-formed UTF-16 without NULs", i);
        if (!locator_.emplace(k, v).second) return bad(path_, "parent locator: key \"{}\" appears twice", k);
    }
    auto it = locator_.find("parent_linkage");
    Guid g;
    if (it == locator_.end()) return bad(path_, "parent locator: no parent_linkage");
    if (!Guid::parse(it->second, g)) return bad(path_, "parent locator: parent_linkage \"{}\" is not a GUID", it->second);
    parent_linkage_ = it->second;
    if (!locator_.count("relative_path") && !locator_.count("absolute_win32_path") && !locator_.count("volume_path"))
        return bad(path_, "parent locator: no path (relative_path, volume_path, absolute_win32_path)");
    return {};
}

Result<> Image::parse_bat() {
    blocks_ = (size_ + block_size_ - 1) / block_size_;
    chunks_ = (blocks_ + chunk_ratio() - 1) / chunk_ratio();
    bat_entries_ = has_parent_ ? chunks_ * (chunk_ratio() + 1) : blocks_ + (blocks_ - 1) / chunk_ratio();
    if (bat_entries_ * 8 > bat_length_)
        return bad(path_, "BAT region ({:#x} bytes) is smaller than its {} entries", bat_length_, bat_entries_);
    std::vector<uint8_t> raw(round_up(bat_entries_ * 8, kPage));
    ENL_TRY_VOID(read_meta(bat_offset_, raw, "the BAT"));
    std::vector<uint64_t> bat(raw.size() / 8);
    std::memcpy(bat.data(), raw.data(), raw.size());

    std::vector<std::pair<uint64_t, uint64_t>> used;  // file ranges of blocks (offset, length)
    uint64_t end = 0;
    for (const auto& r : regions_) end = std::max(end, r.offset + r.length);
    for (uint64_t n = 0; n < blocks_; ++n) {
        uint64_t& e = bat[payload_index(n)];
        if (e & kBatReservedMask) return bad(path_, "BAT entry of block {}: reserved bits set ({:#x})", n, e);
        uint8_t s = bat_state(e);
        if (s == 4 || s == 5) return bad(path_, "BAT entry of block {}: reserved state {}", n, s);
        if (s == kPartiallyPresent && !has_parent_) {
            s = kFullyPresent;  // as OpenVMM: meaningless in a base disk, the block is there
            e = bat_entry(s, bat_offset(e));
        }
        if (s != kFullyPresent && s != kPartiallyPresent) continue;
        const uint64_t off = bat_offset(e);
        const uint64_t len = std::min<uint64_t>(block_size_, size_ - n * block_size_);
        if (off < kMiB) return bad(path_, "block {} at {:#x} lies in the header section", n, off);
        if (off > file_size_ || len > file_size_ - off)
            return bad(path_, "block {} at {:#x} extends past the end of the file ({:#x})", n, off, file_size_);
        for (const auto& r : regions_)
            if (overlaps(off, block_size_, r.offset, r.length)) return bad(path_, "block {} at {:#x} overlaps {}", n, off, r.what);
        if (s == kPartiallyPresent && bat_state(bat[bitmap_index(n / chunk_ratio())]) != kSbPresent)
            return bad(path_, "block {} is partially present, but its chunk has no sector bitmap", n);
        used.emplace_back(off, block_size_);
        end = std::max(end, off + block_size_);
    }
    for (uint64_t c = 0; c < chunks_; ++c) {
        const uint64_t idx = bitmap_index(c);
        if (idx >= bat_entries_) break;  // a base disk's BAT ends with the last payload entry
        const uint64_t e = bat[idx];
        if (e & kBatReservedMask) return bad(path_, "sector bitmap entry of chunk {}: reserved bits set", c);
        const uint8_t s = bat_state(e);
        if (s == kSbNotPresent) continue;
        if (s != kSbPresent) return bad(path_, "sector bitmap entry of chunk {}: invalid state {}", c, s);
        if (!has_parent_) return bad(path_, "sector bitmap of chunk {} present in a disk without a parent", c);
        const uint64_t off = bat_offset(e);
        if (off < kMiB || off > file_size_ || kMiB > file_size_ - off)
            return bad(path_, "sector bitmap of chunk {} at {:#x} lies outside the file", c, off);
        for (const auto& r : regions_)
            if (overlaps(off, kMiB, r.offset, r.length)) return bad(path_, "sector bitmap of chunk {} overlaps {}", c, r.what);
        used.emplace_back(off, kMiB);
        end = std::max(end, off + kMiB);
    }
    std::sort(used.begin(), used.end());
    for (size_t i = 1; i < used.size(); ++i)
        if (used[i].first < used[i - 1].first + used[i - 1].second)
            return bad(path_, "two blocks share file space at {:#x}", used[i].first);
    LockGuard g(mu_);
    bat_ = std::move(bat);
    eof_ = round_up(std::max(end, file_size_), kMiB);
    return {};
}

Result<> Image::open_parent(const OpenParams& p, std::set<std::pair<dev_t, ino_t>>& seen, int depth) {
    if (depth + 1 >= kMaxChainDepth) return bad(path_, "differencing chain deeper than {}", kMaxChainDepth);
    namespace fs = std::filesystem;
    const fs::path dir = fs::path(path_).parent_path();
    std::vector<std::string> tried;
    auto candidates = [&]() {
        std::vector<fs::path> c;
        auto add = [&](std::string v, bool relative) {
            if (v.starts_with("\\\\?\\")) v = v.substr(4);  // \\?\d:\... : not a path here
            std::replace(v.begin(), v.end(), '\\', '/');
            fs::path pth(v);
            if (pth.is_absolute()) c.push_back(pth);
            else if (relative) c.push_back(dir / pth);
        };
        if (auto it = locator_.find("relative_path"); it != locator_.end()) add(it->second, true);
        if (auto it = locator_.find("absolute_win32_path"); it != locator_.end()) add(it->second, false);
        if (auto it = locator_.find("volume_path"); it != locator_.end()) add(it->second, false);
        return c;
    }();
    OpenParams pp = p;
    pp.writable = false;
    pp.accept_changed_parent = false;
    for (const auto& c : candidates) {
        tried.push_back(c.string());
        UniqueFd fd(::open(c.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) continue;
        ENL_TRY(auto parent, open_impl(std::move(fd), c.string(), pp, seen, depth + 1));
        Guid want;
        (void)Guid::parse(parent_linkage_, want);
        if (parent->data_write_guid() != want) {
            if (!p.accept_changed_parent)
                return bad(path_, "parent {} has DataWriteGuid {}, but this disk was made from {} (the parent changed)",
                           c.string(), parent->data_write_guid().str(), parent_linkage_);
            notes_.push_back(fmt::format("parent {} changed since this disk was made (DataWriteGuid {}, not {}); "
                                         "accepted for a merge",
                                         c.string(), parent->data_write_guid().str(), parent_linkage_));
        }
        if (parent->size() != size_ || parent->logical_sector() != logical_)
            return bad(path_, "parent {} has {} bytes in {}-byte sectors, this disk {} in {}", c.string(), parent->size(),
                       parent->logical_sector(), size_, logical_);
        parent_ = std::move(parent);
        return {};
    }
    return std::unexpected(Error(fmt::format("vhdx {}: parent not found (tried: {})", path_, fmt::join(tried, ", ")),
                                 Errc::NotFound));
}

// ---- Queries ----

std::vector<const Image*> Image::chain() const {
    std::vector<const Image*> c;
    for (const Image* i = this; i; i = i->parent_.get()) c.push_back(i);
    return c;
}

Image::Counts Image::counts() const {
    LockGuard g(mu_);
    Counts c;
    for (uint64_t n = 0; n < blocks_; ++n) {
        switch (bat_state(bat_[payload_index(n)])) {
            case kFullyPresent: ++c.present; break;
            case kPartiallyPresent: ++c.partial; break;
            case kZero: ++c.zero; break;
            case kNotPresent: ++c.not_present; break;
            default: ++c.unmapped; break;
        }
    }
    if (has_parent_)
        for (uint64_t k = 0; k < chunks_; ++k) c.bitmaps += bat_state(bat_[bitmap_index(k)]) == kSbPresent;
    return c;
}

bool Image::block_has_data(uint64_t n) const {
    LockGuard g(mu_);
    const uint8_t s = bat_state(bat_[payload_index(n)]);
    return s == kFullyPresent || s == kPartiallyPresent;
}

Result<bool> Image::repair_region_tables() {
    if (region_bad_copy_ < 0) return false;
    if (!writable_) return bad(path_, "not opened for writing");
    // The good copy stays as it is: a crash here leaves the bad one bad, torn or right.
    ENL_TRY_VOID(pwrite_all(region_bad_copy_ == 0 ? kRegion1 : kRegion2, region_good_));
    ENL_TRY_VOID(sync());
    region_bad_copy_ = -1;
    return true;
}

Result<Image::Unreferenced> Image::unreferenced() const {
    struct stat st {};
    if (::fstat(fd_.get(), &st) < 0) return sys(path_, "fstat");
    const auto file_end = static_cast<uint64_t>(st.st_size);
    std::vector<std::pair<uint64_t, uint64_t>> used = {{0, kMiB}};
    for (const auto& r : regions_) used.emplace_back(r.offset, r.length);
    {
        LockGuard g(mu_);
        for (uint64_t n = 0; n < blocks_; ++n) {
            const uint64_t e = bat_[payload_index(n)];
            const uint8_t s = bat_state(e);
            if (s == kFullyPresent || s == kPartiallyPresent) used.emplace_back(bat_offset(e), block_size_);
        }
        if (has_parent_)
            for (uint64_t c = 0; c < chunks_; ++c) {
                const uint64_t e = bat_[bitmap_index(c)];
                if (bat_state(e) == kSbPresent) used.emplace_back(bat_offset(e), kSectorBitmapBlock);
            }
    }
    std::sort(used.begin(), used.end());
    std::vector<std::pair<uint64_t, uint64_t>> gaps;
    uint64_t at = 0;
    for (const auto& [off, len] : used) {
        if (off >= file_end) break;
        if (off > at) gaps.emplace_back(at, off - at);
        at = std::max(at, off + len);
    }
    if (at < file_end) gaps.emplace_back(at, file_end - at);
    return Unreferenced{std::move(gaps), file_end};
}

bool Image::needs_commit() const {
    LockGuard g(mu_);
    return durable_gen_ != dirty_gen_;
}

// ---- Mapping ----

Result<std::vector<uint8_t>*> Image::bitmap(uint64_t chunk) {
    if (auto it = bitmaps_.find(chunk); it != bitmaps_.end()) return &it->second;
    const uint64_t e = bat_[bitmap_index(chunk)];
    if (bat_state(e) != kSbPresent) return nullptr;
    std::vector<uint8_t> b(kSectorBitmapBlock);
    ENL_TRY_VOID(read_meta(bat_offset(e), b, "sector bitmap"));
    return &bitmaps_.emplace(chunk, std::move(b)).first->second;
}

Result<> Image::map_read(uint64_t off, uint64_t len, std::vector<Extent>& out) { return map_level(off, len, 0, out); }

Result<> Image::map_level(uint64_t off, uint64_t len, int level, std::vector<Extent>& out) {
    constexpr int kParent = -2;
    std::vector<Extent> tmp;
    auto push = [](std::vector<Extent>& v, Extent x) {
        if (!v.empty()) {
            Extent& b = v.back();
            if (b.level == x.level && (x.level < 0 || b.file_offset + b.length == x.file_offset)) {
                b.length += x.length;
                return;
            }
        }
        v.push_back(x);
    };
    {
        LockGuard g(mu_);
        for (uint64_t pos = off, end = off + len; pos < end;) {
            const uint64_t n = pos / block_size_, in = pos % block_size_;
            const uint64_t run = std::min<uint64_t>(block_size_ - in, end - pos);
            const uint64_t e = bat_[payload_index(n)];
            const uint8_t s = bat_state(e);
            if (s == kFullyPresent) {
                push(tmp, {level, bat_offset(e) + in, run});
            } else if (s == kPartiallyPresent) {
                ENL_TRY(auto* bm, bitmap(n / chunk_ratio()));
                const uint64_t first = pos / logical_;
                for (uint64_t sct = first; sct < first + run / logical_; ++sct) {
                    const uint64_t bit = sct % kBitmapSectors;
                    const bool here = bm && ((*bm)[bit / 8] >> (bit % 8)) & 1;
                    const uint64_t voff = sct * logical_;
                    push(tmp, here ? Extent{level, bat_offset(e) + voff % block_size_, logical_} : Extent{kParent, voff, logical_});
                }
            } else if (s == kNotPresent && has_parent_) {
                push(tmp, {kParent, pos, run});
            } else {
                push(tmp, {-1, 0, run});
            }
            pos += run;
        }
    }
    for (const auto& x : tmp) {
        if (x.level != kParent) {
            push(out, x);
        } else if (parent_) {
            std::vector<Extent> sub;
            ENL_TRY_VOID(parent_->map_level(x.file_offset, x.length, level + 1, sub));
            for (const auto& y : sub) push(out, y);
        } else {
            push(out, {-1, 0, x.length});
        }
    }
    return {};
}

uint64_t Image::dirty_page_offset(const std::pair<uint64_t, uint64_t>& key) const {
    if (key.first == 0) return bat_offset_ + key.second * kPage;
    return bat_offset(bat_[bitmap_index(key.first - 1)]) + key.second * kPage;
}

void Image::mark_dirty(std::pair<uint64_t, uint64_t> key) {
    dirty_.insert(key);
    ++dirty_gen_;
}

void Image::set_bat(uint64_t index, uint64_t entry) {
    bat_[index] = entry;
    mark_dirty({0, index * 8 / kPage});
}

Result<> Image::begin_modify() {
    if (modified_) return {};
    if (!writable_) return bad(path_, "not opened for writing");
    ENL_TRY_VOID(write_headers(guids_.next(), true));
    modified_ = true;
    return {};
}

Result<uint64_t> Image::allocate(uint64_t bytes) {
    const uint64_t off = eof_;
    const uint64_t end = off + round_up(bytes, kMiB);
    if (::ftruncate(fd_.get(), static_cast<off_t>(end)) < 0) return sys(path_, "growing the file");
    eof_ = end;
    return off;
}

Result<std::vector<uint8_t>*> Image::bitmap_for_write(uint64_t chunk) {
    ENL_TRY(auto* bm, bitmap(chunk));
    if (bm) return bm;
    ENL_TRY(const uint64_t off, allocate(kSectorBitmapBlock));
    // Flushes write its pages in place (reserve_commit_space): its space now, or no bitmap.
    if (::fallocate(fd_.get(), 0, static_cast<off_t>(off), static_cast<off_t>(kSectorBitmapBlock)) < 0 &&
        errno != EOPNOTSUPP)
        return sys(path_, "reserving a sector bitmap block");
    set_bat(bitmap_index(chunk), bat_entry(kSbPresent, off));
    return &bitmaps_.emplace(chunk, std::vector<uint8_t>(kSectorBitmapBlock)).first->second;
}

Result<> Image::map_write(uint64_t off, uint64_t len, std::vector<Extent>& out, std::vector<Mark>& marks) {
    LockGuard g(mu_);
    ENL_TRY_VOID(begin_modify());
    for (uint64_t pos = off, end = off + len; pos < end;) {
        const uint64_t n = pos / block_size_, in = pos % block_size_;
        const uint64_t run = std::min<uint64_t>(block_size_ - in, end - pos);
        const uint64_t idx = payload_index(n);
        uint64_t e = bat_[idx];
        uint8_t s = bat_state(e);
        if (s != kFullyPresent && s != kPartiallyPresent) {
            // NOT_PRESENT in a differencing disk: the rest of the block still reads from the
            // parent, so the block is partly here (its bitmap says which sectors). Otherwise
            // the block read as zeros, which fresh file space keeps.
            const bool partial = has_parent_ && s == kNotPresent;
            if (partial) {
                ENL_TRY(auto* bm, bitmap_for_write(n / chunk_ratio()));
                (void)bm;
            }
            ENL_TRY(const uint64_t at, allocate(block_size_));
            s = partial ? kPartiallyPresent : kFullyPresent;
            e = bat_entry(s, at);
            set_bat(idx, e);
        }
        if (s == kPartiallyPresent) {
            ENL_TRY(auto* bm, bitmap_for_write(n / chunk_ratio()));  // loaded, for complete_write
            (void)bm;
            marks.push_back({pos, run});
        }
        out.push_back({0, bat_offset(e) + in, run});
        pos += run;
    }
    return {};
}

void Image::set_bits(uint64_t off, uint64_t len) {
    for (uint64_t sct = off / logical_, last = (off + len) / logical_; sct < last; ++sct) {
        const uint64_t chunk = sct / kBitmapSectors, bit = sct % kBitmapSectors;
        auto it = bitmaps_.find(chunk);
        if (it == bitmaps_.end()) continue;  // not reached: map_write loaded or made it
        uint8_t& byte = it->second[bit / 8];
        const auto mask = static_cast<uint8_t>(1u << (bit % 8));
        if (byte & mask) continue;
        byte |= mask;
        mark_dirty({chunk + 1, bit / 8 / kPage});
    }
}

void Image::complete_write(std::span<const Mark> marks) {
    if (marks.empty()) return;
    LockGuard g(mu_);
    for (const auto& m : marks) set_bits(m.offset, m.length);
}

Result<> Image::discard(uint64_t off, uint64_t len, std::vector<Extent>& punch) {
    LockGuard g(mu_);
    if (fixed()) return {};
    ENL_TRY_VOID(begin_modify());
    for (uint64_t pos = off, end = off + len; pos < end;) {
        const uint64_t n = pos / block_size_, in = pos % block_size_;
        const uint64_t run = std::min<uint64_t>(block_size_ - in, end - pos);
        const uint64_t idx = payload_index(n);
        const uint64_t e = bat_[idx];
        const uint8_t s = bat_state(e);
        const bool whole = in == 0 && (run == block_size_ || pos + run == size_);
        const bool has = s == kFullyPresent || s == kPartiallyPresent;
        if (whole) {
            if (s != kZero) set_bat(idx, bat_entry(kZero, 0));
            if (has) punch.push_back({0, bat_offset(e), block_size_});
        } else if (s == kFullyPresent && !has_parent_) {
            punch.push_back({0, bat_offset(e) + in, run});
        }
        pos += run;
    }
    return {};
}

// ---- Commit ----

Result<> Image::write_log_entry(std::span<const std::pair<uint64_t, std::vector<uint8_t>>> pages, uint64_t flushed,
                                uint64_t last_offset) {
    const uint64_t len = kPage * (1 + pages.size());
    if (log_head_ + len > log_length_) log_head_ = 0;  // entries never wrap; the next one starts over
    std::vector<uint8_t> e(len);
    put_sig(e, loge::kSignature, "loge");
    put<uint32_t>(e, loge::kEntryLength, static_cast<uint32_t>(len));
    put<uint32_t>(e, loge::kTail, static_cast<uint32_t>(log_head_));  // every entry is its own sequence
    put<uint64_t>(e, loge::kSequence, log_seq_);
    put<uint32_t>(e, loge::kDescCount, static_cast<uint32_t>(pages.size()));
    log_guid_.write(e, loge::kLogGuid);
    put<uint64_t>(e, loge::kFlushedFileOffset, flushed);
    put<uint64_t>(e, loge::kLastFileOffset, last_offset);
    for (size_t i = 0; i < pages.size(); ++i) {
        const auto& [target, page] = pages[i];
        const std::span<uint8_t> d(e.data() + loge::kHeaderSize + loge::kDescSize * i, loge::kDescSize);
        put_sig(d, 0, "desc");
        put<uint32_t>(d, 4, get<uint32_t>(page, 4092));
        put<uint64_t>(d, 8, get<uint64_t>(page, 0));
        put<uint64_t>(d, 16, target);
        put<uint64_t>(d, 24, log_seq_);
        const std::span<uint8_t> s(e.data() + kPage * (1 + i), kPage);
        put_sig(s, 0, "data");
        put<uint32_t>(s, 4, static_cast<uint32_t>(log_seq_ >> 32));
        std::memcpy(s.data() + 8, page.data() + 8, 4084);
        put<uint32_t>(s, 4092, static_cast<uint32_t>(log_seq_));
    }
    seal(e, loge::kChecksum);
    ENL_TRY_VOID(pwrite_all(log_offset_ + log_head_, e));
    ENL_TRY_VOID(sync());
    log_head_ += len;
    ++log_seq_;
    return {};
}

Result<> Image::flush() {
    LockGuard c(commit_mu_);
    return flush_locked();
}

Result<> Image::flush_locked() {
    if (!writable_) return {};
    struct stat st {};
    if (::fstat(fd_.get(), &st) < 0) return sys(path_, "fstat");
    // The data, the file's size, and the previous commit's in-place pages.
    ENL_TRY_VOID(sync());
    std::vector<std::pair<uint64_t, std::vector<uint8_t>>> pages;
    std::vector<std::pair<uint64_t, uint64_t>> keys;
    uint64_t gen = 0, last = 0;
    {
        LockGuard g(mu_);
        if (dirty_.empty()) {
            durable_gen_ = dirty_gen_;
            return {};
        }
        for (const auto& key : dirty_) {
            std::vector<uint8_t> page(kPage);
            if (key.first == 0) {
                std::memcpy(page.data(), bat_.data() + key.second * (kPage / 8), kPage);
            } else {
                const auto& bm = bitmaps_.at(key.first - 1);
                std::memcpy(page.data(), bm.data() + key.second * kPage, kPage);
            }
            pages.emplace_back(dirty_page_offset(key), std::move(page));
            keys.push_back(key);
        }
        dirty_.clear();
        gen = dirty_gen_;
        last = eof_;
    }
    auto r = [&]() -> Result<> {
        commit_mu_.assert_held();  // the lambda runs here, under it
        for (size_t i = 0; i < pages.size(); i += kMaxPagesPerEntry) {
            const auto batch = std::span(pages).subspan(i, std::min(kMaxPagesPerEntry, pages.size() - i));
            if (i > 0) ENL_TRY_VOID(sync());  // the previous batch in place before its entry can be overwritten
            ENL_TRY_VOID(write_log_entry(batch, static_cast<uint64_t>(st.st_size), last));
            if (test_stop_after_log_) return {};
            for (const auto& [off, page] : batch) ENL_TRY_VOID(pwrite_all(off, page));
        }
        return {};
    }();
    LockGuard g(mu_);
    if (!r) {
        for (const auto& k : keys) dirty_.insert(k);
        return r;
    }
    durable_gen_ = std::max(durable_gen_, gen);
    return {};
}

Result<> Image::close() {
    LockGuard c(commit_mu_);
    if (closed_) return {};
    closed_ = true;
    if (!writable_) return {};
    ENL_TRY_VOID(flush_locked());
    if (test_stop_after_log_) return {};
    LockGuard g(mu_);
    if (!modified_) return {};
    ENL_TRY_VOID(sync());  // the last in-place pages, before the log is declared empty
    ENL_TRY_VOID(write_headers(Guid{}, false));
    modified_ = false;
    return {};
}

Image::~Image() {
    if (auto r = close(); !r) log::error("{}", r.error().message());
}

// ---- Synchronous I/O ----

Result<> Image::read(uint64_t off, std::span<uint8_t> out) {
    if (off > size_ || out.size() > size_ - off) return bad(path_, "read at {:#x}+{:#x} is outside the disk", off, out.size());
    std::vector<Extent> ext;
    ENL_TRY_VOID(map_read(off, out.size(), ext));
    const auto levels = chain();
    size_t pos = 0;
    for (const auto& x : ext) {
        auto dst = out.subspan(pos, static_cast<size_t>(x.length));
        if (x.level < 0) {
            std::fill(dst.begin(), dst.end(), uint8_t{0});
        } else {
            size_t got = 0;
            if (auto r = pread_all(levels[static_cast<size_t>(x.level)]->fd(), x.file_offset, dst, got); !r)
                return sys(levels[static_cast<size_t>(x.level)]->path(), "reading data");
            std::fill(dst.begin() + static_cast<ptrdiff_t>(got), dst.end(), uint8_t{0});
        }
        pos += static_cast<size_t>(x.length);
    }
    return {};
}

Result<> Image::write(uint64_t off, std::span<const uint8_t> data) {
    if (off > size_ || data.size() > size_ - off) return bad(path_, "write at {:#x}+{:#x} is outside the disk", off, data.size());
    if (off % logical_ != 0 || data.size() % logical_ != 0) return bad(path_, "write not in whole sectors");
    std::vector<Extent> ext;
    std::vector<Mark> marks;
    ENL_TRY_VOID(map_write(off, data.size(), ext, marks));
    size_t pos = 0;
    for (const auto& x : ext) {
        ENL_TRY_VOID(pwrite_all(x.file_offset, data.subspan(pos, static_cast<size_t>(x.length))));
        pos += static_cast<size_t>(x.length);
    }
    complete_write(marks);
    return {};
}

// ---- Creating ----

Result<> create(const std::string& path, const CreateParams& p0) {
    CreateParams p = p0;
    GuidSource guids = p.guid_seed.empty() ? GuidSource() : GuidSource(p.guid_seed + ":create");
    std::string linkage, relative, absolute;
    if (!p.parent.empty()) {
        ENL_TRY(auto parent, Image::open(p.parent, {.writable = false, .replay_in_memory = false}));
        if (p.size != 0 && p.size != parent->size())
            return fail(Errc::Invalid, "vhdx {}: size {} differs from the parent's {}", path, p.size, parent->size());
        p.size = parent->size();
        p.logical_sector = parent->logical_sector();
        p.physical_sector = parent->physical_sector();
        if (p.block_size == 0) p.block_size = 2 * kMiB;
        linkage = "{" + parent->data_write_guid().str() + "}";
        namespace fs = std::filesystem;
        std::error_code ec;
        const fs::path abs = fs::absolute(p.parent, ec);
        const fs::path base = fs::absolute(fs::path(path), ec).parent_path();
        relative = fs::relative(abs, base, ec).string();
        if (ec || relative.empty()) relative = abs.string();
        std::replace(relative.begin(), relative.end(), '/', '\\');
        absolute = abs.string();
        p.fixed = false;
    }
    if (p.block_size == 0) p.block_size = 32 * kMiB;
    if (!is_pow2(p.block_size) || p.block_size < kMinBlock || p.block_size > kMaxBlock)
        return fail(Errc::Invalid, "vhdx {}: block size {} (a power of two from 1 MiB to 256 MiB)", path, p.block_size);
    if (p.logical_sector != 512 && p.logical_sector != 4096)
        return fail(Errc::Invalid, "vhdx {}: logical sector size {} (512 or 4096)", path, p.logical_sector);
    if (p.physical_sector != 512 && p.physical_sector != 4096)
        return fail(Errc::Invalid, "vhdx {}: physical sector size {} (512 or 4096)", path, p.physical_sector);
    if (p.size == 0 || p.size > kMaxVirtualSize || p.size % p.logical_sector != 0)
        return fail(Errc::Invalid, "vhdx {}: size {} (a non-zero multiple of {} bytes, at most 64 TiB)", path, p.size,
                    p.logical_sector);

    const uint64_t ratio = kBitmapSectors * p.logical_sector / p.block_size;
    const uint64_t blocks = (p.size + p.block_size - 1) / p.block_size;
    const uint64_t chunks = (blocks + ratio - 1) / ratio;
    const bool diff = !p.parent.empty();
    const uint64_t entries = diff ? chunks * (ratio + 1) : blocks + (blocks - 1) / ratio;
    const uint64_t log_off = kMiB, log_len = kMiB;
    const uint64_t meta_off = 2 * kMiB, meta_len = kMiB;
    const uint64_t bat_off = 3 * kMiB, bat_len = round_up(entries * 8, kMiB);
    const uint64_t data_off = bat_off + bat_len;

    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd.valid()) return sys(path, "create");
    auto pw = [&](uint64_t off, std::span<const uint8_t> b) -> Result<> {
        size_t done = 0;
        while (done < b.size()) {
            const ssize_t n = ::pwrite(fd.get(), b.data() + done, b.size() - done, static_cast<off_t>(off + done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return sys(path, "pwrite");
            done += static_cast<size_t>(n);
        }
        return {};
    };
    auto cleanup = [&](Error e) -> Result<> {
        ::unlink(path.c_str());
        return std::unexpected(std::move(e));
    };
    auto body = [&]() -> Result<> {
        const uint64_t file_end = p.fixed ? data_off + blocks * p.block_size : data_off;
        if (::ftruncate(fd.get(), static_cast<off_t>(file_end)) < 0) return sys(path, "ftruncate");
        // File type identifier, creator "enlighten".
        std::vector<uint8_t> id(kPage);
        put_sig(id, 0, "vhdxfile");
        const auto creator = utf8_to_utf16("enlighten");
        std::memcpy(id.data() + 8, creator.data(), creator.size());
        ENL_TRY_VOID(pw(0, id));
        // Headers: sequence 1 and 2, the same GUIDs, no log GUID.
        std::vector<uint8_t> h(kHeaderSize);
        put_sig(h, 0, "head");
        guids.next().write(h, hdr::kFileWriteGuid);
        guids.next().write(h, hdr::kDataWriteGuid);
        put<uint16_t>(h, hdr::kVersion, 1);
        put<uint32_t>(h, hdr::kLogLength, static_cast<uint32_t>(log_len));
        put<uint64_t>(h, hdr::kLogOffset, log_off);
        for (int i = 0; i < 2; ++i) {
            put<uint64_t>(h, hdr::kSequence, static_cast<uint64_t>(i + 1));
            seal(h, hdr::kChecksum);
            ENL_TRY_VOID(pw(i == 0 ? kHeader1 : kHeader2, h));
        }
        // Region tables.
        std::vector<uint8_t> rt(kRegionSize);
        put_sig(rt, 0, "regi");
        put<uint32_t>(rt, 8, 2);
        kBatRegion.write(rt, 16);
        put<uint64_t>(rt, 32, bat_off);
        put<uint32_t>(rt, 40, static_cast<uint32_t>(bat_len));
        put<uint32_t>(rt, 44, 1);
        kMetadataRegion.write(rt, 48);
        put<uint64_t>(rt, 64, meta_off);
        put<uint32_t>(rt, 72, static_cast<uint32_t>(meta_len));
        put<uint32_t>(rt, 76, 1);
        seal(rt, 4);
        ENL_TRY_VOID(pw(kRegion1, rt));
        ENL_TRY_VOID(pw(kRegion2, rt));
        // Metadata table and items (from +64 KiB, one 4 KiB slot each; the locator gets the rest).
        std::vector<uint8_t> mt(kMetaTableSize + 6 * kPage + 64 * kKiB);
        put_sig(mt, 0, "metadata");
        uint16_t count = 0;
        uint32_t item_off = static_cast<uint32_t>(kMetaTableSize);
        auto add = [&](const Guid& g, std::span<const uint8_t> data, uint32_t flags) {
            const size_t o = 32 + size_t{32} * count++;
            g.write(mt, o);
            put<uint32_t>(mt, o + 16, item_off);
            put<uint32_t>(mt, o + 20, static_cast<uint32_t>(data.size()));
            put<uint32_t>(mt, o + 24, flags);
            std::memcpy(mt.data() + item_off, data.data(), data.size());
            item_off += static_cast<uint32_t>(round_up(data.size(), kPage));
        };
        constexpr uint32_t kRequired = 4, kVirtualDisk = 2;
        std::array<uint8_t, 8> fp{};
        put<uint32_t>(fp, 0, p.block_size);
        put<uint32_t>(fp, 4, (p.fixed ? 1u : 0u) | (diff ? 2u : 0u));
        add(kFileParameters, fp, kRequired);
        std::array<uint8_t, 8> sz{};
        put<uint64_t>(sz, 0, p.size);
        add(kVirtualDiskSize, sz, kRequired | kVirtualDisk);
        std::array<uint8_t, 16> p83{};
        guids.next().write(p83, 0);
        add(kPage83, p83, kRequired | kVirtualDisk);
        std::array<uint8_t, 4> ls{}, ps{};
        put<uint32_t>(ls, 0, p.logical_sector);
        put<uint32_t>(ps, 0, p.physical_sector);
        add(kLogicalSectorSize, ls, kRequired | kVirtualDisk);
        add(kPhysicalSectorSize, ps, kRequired | kVirtualDisk);
        if (diff) {
            std::vector<std::pair<std::string, std::string>> kv = {
                {"parent_linkage", linkage}, {"relative_path", relative}, {"absolute_win32_path", absolute}};
            std::vector<uint8_t> loc(20 + 12 * kv.size());
            kVhdxParentLocatorType.write(loc, 0);
            put<uint16_t>(loc, 18, static_cast<uint16_t>(kv.size()));
            for (size_t i = 0; i < kv.size(); ++i) {
                const auto k = utf8_to_utf16(kv[i].first), v = utf8_to_utf16(kv[i].second);
                if (v.size() > 0xFFFF) return fail(Errc::Invalid, "vhdx {}: the parent's path is too long", path);
                const size_t o = 20 + 12 * i;
                put<uint32_t>(loc, o, static_cast<uint32_t>(loc.size()));
                put<uint16_t>(loc, o + 8, static_cast<uint16_t>(k.size()));
                loc.insert(loc.end(), k.begin(), k.end());
                put<uint32_t>(loc, o + 4, static_cast<uint32_t>(loc.size()));
                put<uint16_t>(loc, o + 10, static_cast<uint16_t>(v.size()));
                loc.insert(loc.end(), v.begin(), v.end());
            }
            if (loc.size() > 64 * kKiB) return fail(Errc::Invalid, "vhdx {}: the parent locator is too long", path);
            add(kParentLocatorItem, loc, kRequired);
        }
        put<uint16_t>(mt, 10, count);
        ENL_TRY_VOID(pw(meta_off, std::span(mt).first(item_off)));
        // BAT: fixed disks have every block present in order; else all NOT_PRESENT (zeros).
        if (p.fixed) {
            std::vector<uint64_t> bat(entries);
            for (uint64_t n = 0; n < blocks; ++n) bat[n + n / ratio] = bat_entry(kFullyPresent, data_off + n * p.block_size);
            ENL_TRY_VOID(pw(bat_off, std::span(reinterpret_cast<const uint8_t*>(bat.data()), bat.size() * 8)));
            // Real space for a fixed disk (as its name promises); sparse if the file system cannot.
            (void)::fallocate(fd.get(), 0, static_cast<off_t>(data_off), static_cast<off_t>(blocks * p.block_size));
        }
        if (::fsync(fd.get()) < 0) return sys(path, "fsync");
        return {};
    };
    if (auto r = body(); !r) return cleanup(r.error());
    return {};
}

}  // namespace enlighten::disk::vhdx
