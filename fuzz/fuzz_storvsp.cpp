// Fuzzes the storage VSP through the whole path a guest drives: vstor packets of any
// operation, length and packet type written into the channel's ring, with GPA-direct range
// lists that may lie (counts, offsets, PFNs outside RAM, more pages than the count needs),
// CDBs from the fuzzer (often a real opcode), before, during and after the handshake, on a
// SCSI or an IDE controller whose disk is read-write or read-only, with a shallow queue so
// that back-pressure is reached. Then the channel is closed with requests in flight.
//
// Traps if the VSP writes anything to the guest but a completion of exactly one vstor
// packet (storvsc's max_pkt_size, contract-storage.md §1), if a completion answers a
// transaction id the guest never used, if a read-only disk's file changes, or if any page of
// guest RAM changes that is neither the channel's rings, nor a data buffer page, nor a page a
// request named (a VMM that writes where the guest did not point corrupts the guest).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#define ENL_SIM_CHECK(cond)            \
    do {                               \
        if (!(cond)) __builtin_trap(); \
    } while (0)
#include "../tests/unit/support/sim_guest.hpp"

#include "common/log.hpp"
#include "devices/storvsp/protocol.hpp"
#include "devices/storvsp/storvsp.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::storvsp;

namespace {

#define CHECK(cond) ENL_SIM_CHECK(cond)

constexpr uint64_t kDiskBytes = 1 << 20;
constexpr uint64_t kRamPages = 512;
constexpr uint64_t kBufferPage = 200;  // the guest's data buffers: pages 200..263
constexpr uint64_t kBufferPages = 64;

std::string g_rw_image;
std::string g_ro_image;

std::string make_image(const char* tag) {
    std::string name = std::string("/tmp/fuzz-storvsp-") + tag + "-XXXXXX";
    const int fd = ::mkstemp(name.data());
    if (fd < 0 || ::ftruncate(fd, kDiskBytes) != 0) std::abort();
    // Something other than zeros, so reads move data.
    std::vector<uint8_t> block(4096);
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<uint8_t>(i * 7 + 1);
    for (uint64_t off = 0; off < kDiskBytes; off += 64 * 1024)
        if (::pwrite(fd, block.data(), block.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(block.size()))
            std::abort();
    ::close(fd);
    return name;
}

// The file's bytes, into a buffer kept across inputs (a fresh 1 MiB vector per input cost
// a quarter of the harness's time in page faults).
const std::vector<uint8_t>& file_bytes(const std::string& path, std::vector<uint8_t>& v) {
    v.resize(kDiskBytes);
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0 || ::pread(fd, v.data(), v.size(), 0) != static_cast<ssize_t>(v.size())) std::abort();
    ::close(fd);
    return v;
}
std::vector<uint8_t> g_ro_before;  // the read-only image as made; no input may change it
std::vector<uint8_t> g_ro_after;

void remove_images() {
    ::unlink(g_rw_image.c_str());
    ::unlink(g_ro_image.c_str());
}

// Opcodes the SCSI layer sends, and some it does not.
constexpr uint8_t kOpcodes[] = {0x00, 0x03, 0x12, 0x1a, 0x5a, 0x25, 0x9e, 0x28, 0x2a, 0x88, 0x8a, 0x35,
                                0x91, 0x42, 0x41, 0x93, 0xa0, 0x15, 0x55, 0x1b, 0x1e, 0x2f, 0xff};

class Guest {
public:
    Guest() : g(2, kRamPages) {}

    bool start(const std::shared_ptr<Controller>& ctl) {
        relid_ = g.server().add_device(ctl).value();
        g.connect();
        g.sink().take();
        ch_ = g.open_channel(relid_, 4, 4);
        return wait_open();
    }

    // Sends one packet; reads what has come back meanwhile.
    void send(uint16_t type, uint64_t trans, std::span<const uint8_t> payload, const std::vector<uint8_t>& ext,
              bool want) {
        bool signal = false;
        if (ch_.to_host.write(type, want ? vmbus::kPacketFlagCompletionRequested : uint16_t{0}, trans, ext, payload,
                              &signal)) {
            if (want) {
                sent_.insert(trans);
                ++outstanding_;
            }
            g.doorbell(ch_);
        }
        drain();
    }

    // Reads completions until none is outstanding or `wait` has passed, sleeping in between
    // until the VMM signals (SimGuest::wait).
    void drain(std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
        g.wait_until(
            [&] {
                while (auto p = ch_.to_guest.read()) {
                    CHECK(p->desc.type == vmbus::kPacketCompletion);
                    CHECK(p->desc.len8 * 8u <= kMaxPacketToGuest);
                    CHECK(p->payload.size() == sizeof(VstorPacket));
                    CHECK(sent_.count(p->desc.trans_id) == 1);
                    if (outstanding_) --outstanding_;
                }
                return outstanding_ == 0;
            },
            wait);
    }

    void close() {
        g.simple(vmbus::MsgType::CloseChannel, relid_);
        g.pump();
    }

    test::SimGuest& sim() { return g; }
    [[nodiscard]] const test::SimChannel& channel() const { return ch_; }

private:
    bool wait_open() {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        std::vector<test::SimSink::Msg> seen;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            for (auto& m : g.sink().take()) seen.push_back(std::move(m));
            if (auto r = test::SimGuest::open_result(seen, relid_)) return *r == 0;
            g.wait();
        }
        return false;
    }

    test::SimGuest g;
    uint32_t relid_ = 0;
    test::SimChannel ch_;
    std::set<uint64_t> sent_;
    size_t outstanding_ = 0;
};

VstorPacket op(uint32_t operation) {
    VstorPacket p{};
    p.operation = operation;
    p.flags = kRequestCompletionFlag;
    return p;
}

std::span<const uint8_t> bytes_of(const VstorPacket& p) { return {reinterpret_cast<const uint8_t*>(&p), sizeof(p)}; }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::set_level(log::Level::Off);
    g_rw_image = make_image("rw");
    g_ro_image = make_image("ro");
    file_bytes(g_ro_image, g_ro_before);
    std::atexit(remove_images);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    const uint8_t setup = in.take<uint8_t>();
    const bool ide = setup & 1;
    const bool read_only = setup & 2;
    const bool handshake = !(setup & 4);

    ControllerOptions o;
    o.bus = ide ? Bus::Ide : Bus::Scsi;
    o.name = "fuzz";
    o.instance = ide ? ide_instance(0) : vmbus::Guid::parse("11111111-2222-3333-4444-555555555555");
    o.max_subchannels = ide ? 0 : 2;
    o.queue_depth = 4;
    std::vector<DiskConfig> disks = {{"d0", read_only ? g_ro_image : g_rw_image, "raw", read_only, ""}};
    auto ctl = Controller::create(o, disks);
    CHECK(ctl.has_value());
    {
        Guest guest;
        CHECK(guest.start(*ctl));
        // Every page but the rings and the data buffers holds a pattern, and keeps it unless a
        // request named it (a "wild" PFN may be inside RAM).
        const test::SimChannel& ch = guest.channel();
        const auto unwritable = [&](uint64_t page) {
            const bool ring = page >= ch.first_page && page < ch.first_page + ch.page_count;
            const bool buffer = page >= kBufferPage && page < kBufferPage + kBufferPages;
            return !ring && !buffer;
        };
        guest.sim().fill_guarded(unwritable);
        std::set<uint64_t> named;
        uint64_t trans = 100;
        if (handshake) {
            auto v = op(kOpQueryProtocolVersion);
            v.body.version.major_minor = kVersionWin10;
            for (const auto& p : {op(kOpBeginInitialization), v, op(kOpQueryProperties), op(kOpEndInitialization)})
                guest.send(vmbus::kPacketDataInband, trans++, bytes_of(p), {}, true);
            guest.drain(std::chrono::milliseconds(1000));
        }
        while (!in.empty()) {
            const uint8_t what = in.take<uint8_t>();
            VstorPacket p = op(kOpExecuteSrb);
            if (what & 1) {
                // A raw packet body of the fuzzer's.
                const auto raw = in.take_bytes(sizeof(VstorPacket));
                std::memcpy(&p, raw.data(), raw.size());
            } else {
                ScsiRequest& s = p.body.srb;
                s.length = sizeof(ScsiRequest);
                s.path_id = in.take<uint8_t>() & 1;
                s.target_id = in.take<uint8_t>() & 3;
                s.lun = in.take<uint8_t>() % 66;
                s.cdb_length = in.take<uint8_t>() % 18;
                s.data_transfer_length = in.take<uint32_t>() % (2 * kBufferPages * 4096);
                const auto cdb = in.take_bytes(16);
                std::memcpy(s.cdb_or_sense, cdb.data(), cdb.size());
                s.cdb_or_sense[0] = kOpcodes[s.cdb_or_sense[0] % sizeof(kOpcodes)];
            }
            // GPA ranges: mostly honest, sometimes lying.
            std::vector<test::SimGuest::Range> ranges;
            const uint8_t nranges = (what >> 1) & 3;
            for (uint8_t r = 0; r < nranges; ++r) {
                test::SimGuest::Range range{};
                range.count = in.take<uint32_t>() % (kBufferPages * 4096 + 8192);
                range.offset = in.take<uint16_t>() % 4200;
                const uint8_t npfn = in.take<uint8_t>() % (kBufferPages + 2);
                const bool wild = in.take<uint8_t>() == 0xff;
                for (uint8_t i = 0; i < npfn; ++i)
                    range.pfns.push_back(wild ? in.take<uint64_t>() : kBufferPage + (i + range.offset) % kBufferPages);
                ranges.push_back(std::move(range));
            }
            // The packet type: mostly what storvsc sends.
            uint16_t type = nranges ? vmbus::kPacketDataUsingGpaDirect : vmbus::kPacketDataInband;
            if ((what & 0xe0) == 0xe0) type = in.take<uint8_t>() % 13;
            // The payload: sometimes short or long.
            std::vector<uint8_t> payload(bytes_of(p).begin(), bytes_of(p).end());
            if ((what & 0x18) == 0x18) payload.resize(in.take<uint8_t>() % 96);
            const auto ext = ranges.empty() ? std::vector<uint8_t>{} : test::SimGuest::gpa_direct_ext(ranges);
            // A range whose count says more pages than the PFNs put after it names what follows
            // (the next range's header, other ranges' PFNs): the VMM reads the packet so.
            for (const uint64_t pfn : test::SimGuest::gpa_direct_pfns(ext)) named.insert(pfn);
            guest.send(type, trans++, payload, ext, !(what & 0x10) || (what & 0x08));
        }
        guest.drain(std::chrono::milliseconds(200));
        // Close with whatever is still in flight; the server's shutdown waits for the device.
        guest.close();
        guest.sim().stop();
        CHECK(guest.sim().guarded_intact([&](uint64_t page) { return unwritable(page) && !named.count(page); }));
    }
    if (read_only) CHECK(file_bytes(g_ro_image, g_ro_after) == g_ro_before);
    return 0;
}
