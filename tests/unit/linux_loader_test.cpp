#include "platform/boot/linux_loader.hpp"

#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/fd.hpp"
#include "common/size.hpp"
#include "platform/layout.hpp"
#include "support/fake_vmlinux.hpp"

using namespace enlighten;
using namespace enlighten::boot;

namespace {

// A minimal image with a valid setup header: 4 setup sectors, then `payload` bytes.
std::vector<uint8_t> fake_bzimage(uint64_t payload = 64 * 1024, uint16_t version = 0x020f,
                                  uint16_t xloadflags = kXlfKernel64 | kXlfCanBeLoadedAbove4G) {
    std::vector<uint8_t> img(5 * 512 + payload, 0xcc);
    SetupHeader h{};
    h.setup_sects = 4;
    h.boot_flag = kBootFlag;
    h.header = kHdrSMagic;
    h.version = version;
    h.loadflags = kLoadedHigh;
    h.xloadflags = xloadflags;
    h.cmdline_size = 2047;
    h.initrd_addr_max = 0x7fffffff;
    h.init_size = 8 * 1024 * 1024;
    h.code32_start = 0x100000;
    std::memcpy(img.data() + kSetupHeaderOffset, &h, sizeof(h));
    return img;
}

class TempFile {
public:
    explicit TempFile(const std::vector<uint8_t>& bytes) {
        char tmpl[] = "/tmp/enlighten-test-XXXXXX";
        const int fd = ::mkstemp(tmpl);
        path_ = tmpl;
        if (!bytes.empty()) {
            EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
        }
        ::close(fd);
    }
    ~TempFile() { std::filesystem::remove(path_); }
    [[nodiscard]] const std::string& path() const { return path_; }

private:
    std::string path_;
};

}  // namespace

TEST(BootParamsLayout, OffsetsFromBootparamH) {
    EXPECT_EQ(offsetof(BootParams, ext_ramdisk_image), 0x0c0u);
    EXPECT_EQ(offsetof(BootParams, ext_cmd_line_ptr), 0x0c8u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, header), 0x202u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, type_of_loader), 0x210u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, ramdisk_image), 0x218u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, cmd_line_ptr), 0x228u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, xloadflags), 0x236u);
    EXPECT_EQ(offsetof(BootParams, hdr) + offsetof(SetupHeader, init_size), 0x260u);
}

TEST(ParseBzImage, AcceptsValidHeader) {
    const auto img = fake_bzimage();
    auto info = parse_bzimage(img, img.size());
    ASSERT_TRUE(info) << info.error().message();
    EXPECT_EQ(info->setup_bytes, 5u * 512);
    EXPECT_EQ(info->payload_bytes, 64u * 1024);
    EXPECT_EQ(info->init_size, 8u * 1024 * 1024);
    EXPECT_EQ(info->cmdline_max, 2047u);
}

TEST(ParseBzImage, SetupSectsZeroMeansFour) {
    auto img = fake_bzimage();
    img[kSetupHeaderOffset] = 0;
    auto info = parse_bzimage(img, img.size());
    ASSERT_TRUE(info);
    EXPECT_EQ(info->setup_bytes, 5u * 512);
}

TEST(ParseBzImage, RejectsWhatIsNotABzImage) {
    const std::vector<uint8_t> text(100, 'x');
    EXPECT_NE(parse_bzimage(text, text.size()).error().message().find("too small"), std::string::npos);

    auto img = fake_bzimage();
    img[0x202] = 'X';
    EXPECT_NE(parse_bzimage(img, img.size()).error().message().find("not a bzImage"), std::string::npos);

    img = fake_bzimage(4096, 0x0206);
    EXPECT_NE(parse_bzimage(img, img.size()).error().message().find("2.12"), std::string::npos);

    img = fake_bzimage(4096, 0x020f, 0);
    EXPECT_NE(parse_bzimage(img, img.size()).error().message().find("64-bit"), std::string::npos);

    img = fake_bzimage(0);
    img.resize(2048);  // setup claims 5 sectors, file has 4
    EXPECT_FALSE(parse_bzimage(img, img.size()));
}

TEST(E820, SmallGuest) {
    const auto map = build_e820(512 * MiB);
    ASSERT_EQ(map.size(), 3u);
    EXPECT_EQ(+map[0].addr, 0u);
    EXPECT_EQ(+map[0].size, layout::kEbdaStart);
    EXPECT_EQ(map[0].type, kE820Ram);
    EXPECT_EQ(+map[1].addr, layout::kEbdaStart);
    EXPECT_EQ(+map[1].addr + map[1].size, 0x100000u);
    EXPECT_EQ(map[1].type, kE820Reserved);
    EXPECT_EQ(+map[2].addr, 0x100000u);
    EXPECT_EQ(+map[2].addr + map[2].size, 512 * MiB);
    EXPECT_EQ(map[2].type, kE820Ram);
}

TEST(E820, LargeGuestSplitsAroundTheMmioHole) {
    const auto map = build_e820(6 * GiB);
    ASSERT_EQ(map.size(), 4u);
    EXPECT_EQ(+map[2].addr + map[2].size, layout::kMmioHoleStart);
    EXPECT_EQ(+map[3].addr, layout::kFourGiB);
    EXPECT_EQ(+map[3].size, 6 * GiB - layout::kMmioHoleStart);
    uint64_t ram = 0;
    for (const auto& e : map)
        if (e.type == kE820Ram) ram += e.size;
    EXPECT_EQ(ram, 6 * GiB - (0x100000 - layout::kEbdaStart));

    const auto regions = ram_layout(6 * GiB);
    ASSERT_EQ(regions.size(), 2u);
    EXPECT_EQ(regions[0].size + regions[1].size, 6 * GiB);
}

TEST(PlaceInitrd, TopOfLowMemoryPageAligned) {
    auto at = place_initrd(10000, 0x100000 + 8 * MiB, 256 * MiB, 0x7fffffff);
    ASSERT_TRUE(at);
    EXPECT_EQ(*at % 4096, 0u);
    EXPECT_LE(*at + 10000, 256 * MiB);
    EXPECT_GT(*at + 10000 + 4096, 256 * MiB);
}

TEST(PlaceInitrd, HonoursInitrdAddrMaxAndTheHole) {
    auto at = place_initrd(MiB, 9 * MiB, 8 * GiB, 0x37ffffff);
    ASSERT_TRUE(at);
    EXPECT_LE(*at + MiB, 0x38000000u);
    at = place_initrd(MiB, 9 * MiB, 8 * GiB, 0xffffffff);
    ASSERT_TRUE(at);
    EXPECT_LE(*at + MiB, layout::kMmioHoleStart);
}

TEST(PlaceInitrd, RefusesWhatDoesNotFit) {
    EXPECT_FALSE(place_initrd(100 * MiB, 9 * MiB, 64 * MiB, 0x7fffffff));
    EXPECT_FALSE(place_initrd(60 * MiB, 9 * MiB, 64 * MiB, 0x7fffffff));
    EXPECT_TRUE(place_initrd(50 * MiB, 9 * MiB, 64 * MiB, 0x7fffffff));
    EXPECT_FALSE(place_initrd(UINT64_MAX, 9 * MiB, 64 * MiB, 0));
}

class LoadLinux : public ::testing::Test {
protected:
    static constexpr uint64_t kMem = 64 * MiB;
    std::vector<uint8_t> ram = std::vector<uint8_t>(kMem);
    GuestMemory mem = GuestMemory::borrow({{0, kMem, ram.data()}});
};

TEST_F(LoadLinux, FillsBootParamsAndLoadsEverything) {
    const auto img = fake_bzimage(64 * 1024);
    TempFile kernel(img);
    TempFile initrd(std::vector<uint8_t>(12345, 0x5a));
    LinuxBootConfig cfg{kernel.path(), initrd.path(), "console=ttyS0 quiet", kMem, 0xe0000, true};
    auto entry = load_linux(mem, cfg);
    ASSERT_TRUE(entry) << entry.error().message();
    EXPECT_EQ(entry->rip, layout::kKernelLoad + 0x200);
    EXPECT_EQ(entry->boot_params, layout::kBootParams);

    // Payload at 1 MiB, byte for byte.
    EXPECT_EQ(std::memcmp(ram.data() + layout::kKernelLoad, img.data() + 5 * 512, 64 * 1024), 0);

    BootParams bp;
    std::memcpy(&bp, ram.data() + layout::kBootParams, sizeof(bp));
    EXPECT_EQ(+bp.hdr.header, kHdrSMagic);
    EXPECT_EQ(+bp.hdr.type_of_loader, 0xff);
    EXPECT_EQ(+bp.hdr.cmd_line_ptr, layout::kCmdline);
    EXPECT_EQ(+bp.acpi_rsdp_addr, 0xe0000u);
    EXPECT_EQ(+bp.hdr.ramdisk_size, 12345u);
    EXPECT_EQ(+bp.hdr.ramdisk_image, entry->initrd_gpa);
    EXPECT_EQ(+bp.hdr.ramdisk_image % 4096, 0u);
    EXPECT_GE(+bp.hdr.ramdisk_image, layout::kKernelLoad + 8 * MiB);
    EXPECT_EQ(ram[bp.hdr.ramdisk_image], 0x5a);
    EXPECT_EQ(+bp.e820_entries, 3);
    EXPECT_EQ(+bp.e820_table[2].addr + bp.e820_table[2].size, kMem);

    EXPECT_STREQ(reinterpret_cast<const char*>(ram.data() + layout::kCmdline), "console=ttyS0 quiet");

    // Identity map: the PD entry for 2 MiB maps 2 MiB, 2 MiB pages, present and writable.
    uint64_t pml4, pdpt0, pde1;
    std::memcpy(&pml4, ram.data() + layout::kPml4, 8);
    std::memcpy(&pdpt0, ram.data() + layout::kPdpt, 8);
    std::memcpy(&pde1, ram.data() + layout::kPd + 8, 8);
    EXPECT_EQ(pml4, layout::kPdpt | 3);
    EXPECT_EQ(pdpt0, layout::kPd | 3);
    EXPECT_EQ(pde1, (2 * MiB) | 0x83);
}

TEST_F(LoadLinux, ClearErrors) {
    LinuxBootConfig cfg{"/nonexistent/bzImage", "", "", kMem, 0, true};
    auto r = load_linux(mem, cfg);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("No such file"), std::string::npos);

    cfg.kernel_path = "/tmp";
    r = load_linux(mem, cfg);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("not a regular file"), std::string::npos);

    TempFile not_kernel(std::vector<uint8_t>(4096, 'a'));
    cfg.kernel_path = not_kernel.path();
    r = load_linux(mem, cfg);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("not a bzImage"), std::string::npos);

    TempFile kernel(fake_bzimage());
    TempFile big(std::vector<uint8_t>(60 * MiB));
    cfg = {kernel.path(), big.path(), "", kMem, 0};
    r = load_linux(mem, cfg);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("does not fit"), std::string::npos);

    cfg = {kernel.path(), "", std::string(3000, 'x'), kMem, 0};
    r = load_linux(mem, cfg);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("command line"), std::string::npos);
}

// Reliability review B6: every boot opened the kernel and initrd by path again, so a reboot
// could load files other than the ones checked at start. With the files held open since
// start, a boot reads those even after the paths name new files. (The kernel is also read
// now, not mapped: a file cut short during a load was SIGBUS; that race has no test.)
TEST_F(LoadLinux, EveryBootReadsTheFilesHeldSinceStart) {
    const auto img = fake_bzimage(64 * 1024);
    TempFile kernel(img);
    TempFile initrd(std::vector<uint8_t>(12345, 0x5a));
    UniqueFd kfd(::open(kernel.path().c_str(), O_RDONLY | O_CLOEXEC));
    UniqueFd ifd(::open(initrd.path().c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(kfd.valid() && ifd.valid());
    // The paths now name other files.
    auto other = img;
    std::fill(other.begin() + 5 * 512, other.end(), uint8_t{0xdd});
    TempFile new_kernel(other), new_initrd(std::vector<uint8_t>(777, 0x11));
    std::filesystem::rename(new_kernel.path(), kernel.path());
    std::filesystem::rename(new_initrd.path(), initrd.path());
    LinuxBootConfig cfg{kernel.path(), initrd.path(), "", kMem, 0, true, kfd.get(), ifd.get()};
    for (int boot = 0; boot < 2; ++boot) {
        std::fill(ram.begin(), ram.end(), uint8_t{0});
        auto entry = load_linux(mem, cfg);
        ASSERT_TRUE(entry) << entry.error().message();
        EXPECT_EQ(std::memcmp(ram.data() + layout::kKernelLoad, img.data() + 5 * 512, 64 * 1024), 0) << boot;
        EXPECT_EQ(entry->initrd_size, 12345u);
        EXPECT_EQ(ram[entry->initrd_gpa], 0x5a);
    }
}

// Host decompression of an LZ4 kernel as the kernel build writes it (legacy blocks of 8 MiB):
// read block by block from the file by several threads, to the bytes of the ELF's segment.
TEST_F(LoadLinux, AnLz4KernelIsReadAndDecompressedBlockByBlock) {
    constexpr uint64_t kBase = 16 * MiB, kFile = 20 * MiB + 12345, kText = 0x1000;
    std::vector<uint8_t> elf(kFile);
    for (size_t i = kText; i < elf.size(); ++i) elf[i] = static_cast<uint8_t>((i * 2654435761U) >> 13 & 0x0f);
    const Elf64_Phdr ph[1] = {
        {PT_LOAD, PF_R | PF_X, kText, 0xffffffff81000000, kBase, kFile - kText, kFile - kText, 0x200000}};
    test::write_elf_headers(elf, kBase, ph);
    std::vector<uint8_t> payload = test::lz4_legacy(elf, kLz4LegacyBlock);
    test::append_le32(payload, static_cast<uint32_t>(elf.size()));

    auto img = fake_bzimage();
    img.resize(5 * 512 + 0x100 + payload.size(), 0xcc);
    SetupHeader h{};
    std::memcpy(&h, img.data() + kSetupHeaderOffset, sizeof h);
    h.payload_offset = 0x100;
    h.payload_length = static_cast<uint32_t>(payload.size());
    h.pref_address = kBase;
    h.init_size = 24 * MiB;
    std::memcpy(img.data() + kSetupHeaderOffset, &h, sizeof h);
    std::memcpy(img.data() + 5 * 512 + 0x100, payload.data(), payload.size());
    TempFile kernel(img);
    LinuxBootConfig cfg{kernel.path(), "", "", kMem, 0xe0000, true};
    auto entry = load_linux(mem, cfg);
    ASSERT_TRUE(entry) << entry.error().message();
    EXPECT_EQ(entry->rip, kBase);
    EXPECT_EQ(entry->host_decompressed, Compression::Lz4);
    EXPECT_EQ(std::memcmp(ram.data() + kBase, elf.data() + kText, kFile - kText), 0);
    EXPECT_EQ(ram[kBase - 1], 0) << "nothing before the segment";
    BootParams bp;
    std::memcpy(&bp, ram.data() + layout::kBootParams, sizeof(bp));
    EXPECT_EQ(+bp.acpi_rsdp_addr, 0xe0000u);
}
