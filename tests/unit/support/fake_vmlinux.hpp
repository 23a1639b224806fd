// A vmlinux and its bzImage payload as the kernel build writes them, for the tests of host
// decompression (vmlinux_test, boot_test): the ELF headers, and LZ4's legacy framing with the
// 4-byte size trailer (scripts/Makefile.lib).
#pragma once

#include <elf.h>
#include <lz4.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace enlighten::test {

// An x86-64 ELF executable header and its program headers at the start of `file`.
inline void write_elf_headers(std::vector<uint8_t>& file, uint64_t entry, std::span<const Elf64_Phdr> phdrs) {
    Elf64_Ehdr eh{};
    std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_type = ET_EXEC;
    eh.e_machine = EM_X86_64;
    eh.e_entry = entry;
    eh.e_phoff = sizeof eh;
    eh.e_phentsize = sizeof(Elf64_Phdr);
    eh.e_phnum = static_cast<Elf64_Half>(phdrs.size());
    std::memcpy(file.data(), &eh, sizeof eh);
    std::memcpy(file.data() + sizeof eh, phdrs.data(), phdrs.size_bytes());
}

inline void append_le32(std::vector<uint8_t>& v, uint32_t value) {
    for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// `lz4 -l`: the legacy magic, then blocks of `block` bytes (the last shorter), each as
// [u32 compressed size][data]. Without the trailer.
inline std::vector<uint8_t> lz4_legacy(std::span<const uint8_t> in, size_t block) {
    std::vector<uint8_t> out = {0x02, 0x21, 0x4c, 0x18};
    for (size_t pos = 0; pos < in.size(); pos += block) {
        const int n = static_cast<int>(std::min(block, in.size() - pos));
        std::vector<char> buf(static_cast<size_t>(LZ4_compressBound(n)));
        const int m = LZ4_compress_default(reinterpret_cast<const char*>(in.data() + pos), buf.data(), n,
                                           static_cast<int>(buf.size()));
        append_le32(out, static_cast<uint32_t>(m));
        out.insert(out.end(), buf.begin(), buf.begin() + m);
    }
    return out;
}

}  // namespace enlighten::test
