#include "backends/disk/disk.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstring>

#include "backends/disk/raw.hpp"
#include "backends/disk/vhdx/vhdx.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

namespace enlighten::disk {

std::string_view detect_format(std::span<const uint8_t> head) {
    auto starts_with = [&](std::string_view sig) {
        return head.size() >= sig.size() && std::memcmp(head.data(), sig.data(), sig.size()) == 0;
    };
    if (starts_with("vhdxfile")) return "vhdx";
    if (starts_with(std::string_view("QFI\xfb", 4))) return "qcow2";
    return "raw";
}

Result<std::string_view> detect_format(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
        const int err = errno;
        return std::unexpected(Error(fmt::format("disk {}: open: {}", path, std::strerror(err)),
                                     err == ENOENT ? Errc::NotFound : Errc::Io, err));
    }
    std::array<uint8_t, 8> head{};
    ssize_t n = 0;
    do {
        n = ::pread(fd.get(), head.data(), head.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return fail_errno(fmt::format("disk {}: reading its first bytes", path));
    return detect_format(std::span<const uint8_t>(head.data(), static_cast<size_t>(n)));
}

Result<std::shared_ptr<Disk>> open_disk(const OpenOptions& o) {
    std::string_view format = o.format;
    if (format == "auto") {
        ENL_TRY(format, detect_format(o.path));
        log::info("disk {}: format {} (detected; name it in the configuration to skip detection)", o.path, format);
    }
    if (format == "raw") {
        ENL_TRY(auto d, open_raw(o));
        return std::shared_ptr<Disk>(std::move(d));
    }
    if (format == "vhdx") {
        ENL_TRY(auto d, open_vhdx(o));
        return std::shared_ptr<Disk>(std::move(d));
    }
    if (format == "qcow2")
        return fail(Errc::Unsupported, "disk {}: qcow2 images are not supported (qemu-img convert -O raw makes a raw one)",
                    o.path);
    return fail(Errc::Invalid, "disk {}: unknown format \"{}\" (auto, raw, vhdx)", o.path, format);
}

}  // namespace enlighten::disk
