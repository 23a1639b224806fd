// Instructions per packet on the ring paths, for callgrind (counts instructions, not time):
//   valgrind --tool=callgrind --callgrind-out-file=cg.out build/bench/ring_cost 100000 64
//   callgrind_annotate --inclusive=yes cg.out
// bench/ring_instructions.sh does this and subtracts the memcpy of the payload.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vmbus/ring.hpp"

using namespace enlighten;
using namespace enlighten::vmbus;

// noinline: callgrind attributes their cost separately.
__attribute__((noinline)) void host_write(OutRing& out, std::span<const uint8_t> payload, uint64_t id) {
    const iovec iov = iov_of(payload);
    auto r = out.write(OutPacket::completion(id, std::span(&iov, 1)), false);
    if (!r || !r->written) std::abort();
}

// Copy out once, parse once, consume: what a device's peek() + consume() cost.
__attribute__((noinline)) void host_read(InRing& in, std::vector<uint64_t>& buf, PacketScratch& scratch) {
    auto p = in.peek(buf, 65536);
    if (!p || !*p) std::abort();
    auto v = parse_packet(std::span<const uint64_t>(buf.data(), (*p)->len / 8), scratch);
    if (!v) std::abort();
    in.skip((*p)->len);
    in.commit();
}

int main(int argc, char** argv) {
    const long n = argc > 1 ? std::atol(argv[1]) : 100000;
    const size_t size = argc > 2 ? static_cast<size_t>(std::atol(argv[2])) : 64;
    constexpr uint32_t kPages = 32;
    std::vector<uint8_t> ram((kPages + 1) * kPageSize);
    GuestMemory mem = GuestMemory::borrow({{0, ram.size(), ram.data()}});
    std::vector<uint64_t> pfns;
    for (uint64_t i = 0; i <= kPages; ++i) pfns.push_back(i);
    // One ring, used by both paths: the host writes a packet, then reads it back through
    // the reader (the same wire format in both directions).
    OutRing out(RingMemory::map(mem, pfns).value());
    InRing in(RingMemory::map(mem, pfns).value());
    std::vector<uint8_t> payload(size, 0x5a);
    std::vector<uint64_t> buf;
    PacketScratch scratch;
    for (long i = 0; i < n; ++i) {
        host_write(out, payload, static_cast<uint64_t>(i));
        host_read(in, buf, scratch);
    }
    std::printf("%ld packets of %zu bytes\n", n, size);
    return 0;
}
