// The storage VSP against the simulated guest: the vstor handshake as storvsc_channel_init
// sends it, SRBs in GPA-direct packets as storvsc_queuecommand builds them, data moving
// between guest RAM and a raw image file, sub-channels, hot-add and -remove, and what a
// hostile guest can send (contract-storage.md §4, §5, §6, §8, §12).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "devices/storvsp/protocol.hpp"
#include "devices/storvsp/storvsp.hpp"
#include "support/sim_guest.hpp"

using namespace enlighten;
using namespace enlighten::storvsp;
using namespace enlighten::test;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t kDiskBytes = 16 << 20;

// A sparse raw image in a temp directory, removed at the end.
struct TempImage {
    std::string path;
    explicit TempImage(uint64_t size = kDiskBytes) {
        char name[] = "/tmp/storvsp-test-XXXXXX";
        const int fd = ::mkstemp(name);
        EXPECT_GE(fd, 0);
        EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
        ::close(fd);
        path = name;
    }
    ~TempImage() { ::unlink(path.c_str()); }
    std::vector<uint8_t> read(uint64_t off, size_t n) const {
        std::vector<uint8_t> v(n);
        const int fd = ::open(path.c_str(), O_RDONLY);
        EXPECT_EQ(::pread(fd, v.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
        ::close(fd);
        return v;
    }
    void write(uint64_t off, const std::vector<uint8_t>& v) const {
        const int fd = ::open(path.c_str(), O_WRONLY);
        EXPECT_EQ(::pwrite(fd, v.data(), v.size(), static_cast<off_t>(off)), static_cast<ssize_t>(v.size()));
        ::close(fd);
    }
};

VstorPacket op(uint32_t operation) {
    VstorPacket p{};
    p.operation = operation;
    p.flags = kRequestCompletionFlag;
    return p;
}

// The guest side of one storvsc channel.
class StorGuest {
public:
    StorGuest(std::shared_ptr<Controller> ctl, uint32_t vps = 2) : g(vps), ctl_(std::move(ctl)) {
        relid = g.server().add_device(ctl_).value();
        g.connect();
        g.sink().take();
        // storvsc's rings: 128 KiB each way (31 data pages here is plenty).
        ch = g.open_channel(relid, 31, 31);
        EXPECT_EQ(open_result(relid).value_or(1), 0u);
        buf_page = g.alloc_pages(kBufferPages);
    }
    // The device opens on its worker thread: OPENCHANNEL_RESULT comes a little later.
    std::optional<uint32_t> open_result(uint32_t r) {
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        std::vector<SimSink::Msg> seen;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            for (auto& m : g.sink().take()) seen.push_back(std::move(m));
            if (auto res = SimGuest::open_result(seen, r)) {
                for (auto& m : seen)
                    if (m.type() != vmbus::MsgType::OpenChannelResult) kept.push_back(std::move(m));
                return res;
            }
            std::this_thread::sleep_for(1ms);
        }
        return std::nullopt;
    }
    // Messages that came while waiting for an open (offers, for one).
    std::vector<SimSink::Msg> kept;

    // Sends one packet and waits for its completion (the worker runs on its own thread).
    std::optional<VstorPacket> call(SimChannel& c, const VstorPacket& req, uint64_t trans,
                                    const std::vector<SimGuest::Range>& ranges = {}, uint16_t type = 0) {
        const auto ext = ranges.empty() ? std::vector<uint8_t>{} : SimGuest::gpa_direct_ext(ranges);
        uint16_t t = type;
        if (t == 0) t = ranges.empty() ? uint16_t{vmbus::kPacketDataInband} : uint16_t{vmbus::kPacketDataUsingGpaDirect};
        EXPECT_TRUE(g.send(c, t, trans, as_bytes(req), ext, true));
        return wait(c, trans);
    }
    std::optional<VstorPacket> call(const VstorPacket& req, uint64_t trans, const std::vector<SimGuest::Range>& r = {}) {
        return call(ch, req, trans, r);
    }
    std::optional<VstorPacket> wait(SimChannel& c, uint64_t trans, std::chrono::milliseconds timeout = 5s) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            g.pump();
            if (auto p = c.to_guest.read()) {
                EXPECT_EQ(p->desc.type, vmbus::kPacketCompletion);
                EXPECT_LE(p->desc.len8 * 8u, 80u);  // storvsc's max_pkt_size (§1)
                EXPECT_EQ(p->desc.trans_id, trans);
                EXPECT_EQ(p->payload.size(), sizeof(VstorPacket));
                return read_padded<VstorPacket>(p->payload);
            }
            std::this_thread::sleep_for(1ms);
        }
        return std::nullopt;
    }

    // storvsc_channel_init: BEGIN, VERSION 6.2, PROPERTIES, END.
    VstorPacket init() {
        EXPECT_EQ(call(op(kOpBeginInitialization), kInit)->status, 0u);
        auto v = op(kOpQueryProtocolVersion);
        v.body.version.major_minor = storvsp::kVersionWin10;
        EXPECT_EQ(call(v, kInit)->status, 0u);
        auto props = *call(op(kOpQueryProperties), kInit);
        EXPECT_EQ(props.status, 0u);
        EXPECT_EQ(call(op(kOpEndInitialization), kInit)->status, 0u);
        return props;
    }

    // An SRB with the buffer at buf_page (one GPA range of `len` bytes from `offset`).
    VstorPacket srb(std::vector<uint8_t> cdb, uint32_t len, uint8_t lun = 0, uint32_t offset = 0, uint64_t trans = 7) {
        auto p = op(kOpExecuteSrb);
        ScsiRequest& s = p.body.srb;
        s.length = sizeof(ScsiRequest);
        s.lun = lun;
        s.cdb_length = static_cast<uint8_t>(cdb.size());
        s.sense_info_length = 20;
        s.data_transfer_length = len;
        std::memcpy(s.cdb_or_sense, cdb.data(), std::min<size_t>(cdb.size(), sizeof(s.cdb_or_sense)));
        std::vector<SimGuest::Range> ranges;
        if (len) {
            SimGuest::Range r{len, offset, {}};
            for (uint64_t i = 0; i < (offset + len + 4095) / 4096; ++i) r.pfns.push_back(buf_page + i);
            ranges.push_back(r);
        }
        auto c = call(p, trans, ranges);
        EXPECT_TRUE(c);
        return c.value_or(VstorPacket{});
    }
    uint8_t* buf() { return g.ram().data() + buf_page * vmbus::kPageSize; }
    Controller& ctl() { return *ctl_; }

    static constexpr uint64_t kInit = 0xFFFFFFFFFFFFFFFDULL;  // VMBUS_RQST_INIT
    static constexpr uint64_t kBufferPages = 260;
    SimGuest g;
    uint32_t relid = 0;
    SimChannel ch;
    uint64_t buf_page = 0;

private:
    std::shared_ptr<Controller> ctl_;
};

std::shared_ptr<Controller> scsi_controller(const std::vector<std::string>& paths, uint16_t subchannels = 0,
                                            uint32_t depth = 256, bool read_only = false) {
    ControllerOptions o;
    o.bus = Bus::Scsi;
    o.name = "scsi0";
    o.instance = vmbus::Guid::parse("11111111-2222-3333-4444-555555555555");
    o.max_subchannels = subchannels;
    o.queue_depth = depth;
    std::vector<DiskConfig> disks;
    for (size_t i = 0; i < paths.size(); ++i) disks.push_back({"disk" + std::to_string(i), paths[i], "raw", read_only, ""});
    return Controller::create(o, disks).value();
}

std::vector<uint8_t> rw10(uint8_t opcode, uint32_t lba, uint16_t blocks) {
    return {opcode, 0, static_cast<uint8_t>(lba >> 24), static_cast<uint8_t>(lba >> 16), static_cast<uint8_t>(lba >> 8),
            static_cast<uint8_t>(lba), 0, static_cast<uint8_t>(blocks >> 8), static_cast<uint8_t>(blocks), 0};
}

}  // namespace

TEST(Storvsp, TheHandshakeAsStorvscRunsIt) {
    TempImage img;
    StorGuest s(scsi_controller({img.path}, 3));
    // SRBs are refused before END_INITIALIZATION.
    auto early = s.call(op(kOpExecuteSrb), 1);
    ASSERT_TRUE(early);
    EXPECT_NE(early->status, 0u);
    EXPECT_EQ(early->operation, kOpCompleteIo);
    EXPECT_EQ(s.call(op(kOpBeginInitialization), StorGuest::kInit)->status, 0u);
    // Versions newer than Win10 are refused; the guest tries the next.
    auto v = op(kOpQueryProtocolVersion);
    v.body.version.major_minor = 0x0700;
    EXPECT_EQ(s.call(v, StorGuest::kInit)->status, kStatusRevisionMismatch);
    v.body.version.major_minor = storvsp::kVersionWin10;
    EXPECT_EQ(s.call(v, StorGuest::kInit)->status, 0u);
    auto props = *s.call(op(kOpQueryProperties), StorGuest::kInit);
    EXPECT_EQ(props.status, 0u);
    EXPECT_EQ(props.body.properties.max_transfer_bytes, 1u << 20);
    EXPECT_EQ(props.body.properties.max_channel_cnt, 3);
    EXPECT_EQ(props.body.properties.flags & kPropertyMultiChannel, kPropertyMultiChannel);
    EXPECT_EQ(s.call(op(kOpEndInitialization), StorGuest::kInit)->status, 0u);
    // The handshake is over: a hostile BEGIN_INITIALIZATION cannot stop the guest's I/O.
    EXPECT_EQ(s.call(op(kOpBeginInitialization), StorGuest::kInit)->status, kStatusInvalidDeviceState);
    // Sub-channels: too many are refused; then the offers come (§6).
    auto sub = op(kOpCreateSubChannels);
    sub.body.sub_channel_count = 4;
    EXPECT_EQ(s.call(sub, StorGuest::kInit)->status, kStatusInvalidParameter);
    sub.body.sub_channel_count = 2;
    EXPECT_EQ(s.call(sub, StorGuest::kInit)->status, 0u);
    s.g.pump();
    auto offers = SimGuest::offers(s.g.sink().take());
    ASSERT_EQ(offers.size(), 2u);
    EXPECT_EQ(offers[1].sub_channel_index, 2);
    EXPECT_EQ(offers[0].if_type.to_string(), kScsiClass);
    // A sub-channel serves SRBs too (any request on any channel, §6), but no init ops.
    auto sc = s.g.open_channel(offers[0].child_relid, 31, 31);
    ASSERT_EQ(s.open_result(offers[0].child_relid).value_or(1), 0u);
    auto c = s.call(sc, op(kOpBeginInitialization), 3);
    ASSERT_TRUE(c);
    EXPECT_NE(c->status, 0u);
    s.buf()[0] = 0xee;
    auto inq = op(kOpExecuteSrb);
    inq.body.srb.cdb_length = 6;
    const uint8_t inquiry[6] = {0x12, 0, 0, 0, 36, 0};
    std::memcpy(inq.body.srb.cdb_or_sense, inquiry, 6);
    inq.body.srb.data_transfer_length = 36;
    auto r = s.call(sc, inq, 9, {{36, 0, {s.buf_page}}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(s.buf()[0], 0x00);  // a direct-access device
    EXPECT_EQ(std::string(reinterpret_cast<char*>(s.buf()) + 8, 4), "Msft");
    bool sub_served = false;
    for (const auto& chs : s.ctl().channels()) sub_served |= chs.index == 1 && chs.requests > 0;
    EXPECT_TRUE(sub_served);
}

TEST(Storvsp, DataMovesBetweenGuestRamAndTheImage) {
    TempImage img;
    std::vector<uint8_t> pattern(8192);
    for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 7 + 3);
    img.write(1 << 20, pattern);  // LBA 2048
    StorGuest s(scsi_controller({img.path}));
    s.init();
    // READ(10) of 16 blocks at LBA 2048, into a buffer starting 0x200 into its first page.
    auto r = s.srb(rw10(0x28, 2048, 16), 8192, 0, 0x200);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(r.body.srb.scsi_status, 0);
    EXPECT_EQ(r.body.srb.data_transfer_length, 8192u);
    EXPECT_EQ(std::memcmp(s.buf() + 0x200, pattern.data(), pattern.size()), 0);
    // WRITE(10) of 3 blocks at LBA 100 from the guest: the file holds them.
    for (int i = 0; i < 1536; ++i) s.buf()[i] = static_cast<uint8_t>(0xa0 + i % 13);
    r = s.srb(rw10(0x2a, 100, 3), 1536);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(r.body.srb.data_transfer_length, 1536u);
    const auto on_disk = img.read(100 * 512, 1536);
    EXPECT_EQ(std::memcmp(on_disk.data(), s.buf(), 1536), 0);
    // SYNCHRONIZE CACHE(10) completes, and is counted as a flush.
    r = s.srb({0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    // READ CAPACITY(10): the last LBA and 512-byte blocks.
    r = s.srb({0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8);
    EXPECT_EQ(r.body.srb.data_transfer_length, 8u);
    const uint32_t last = (uint32_t{s.buf()[0]} << 24) | (uint32_t{s.buf()[1]} << 16) | (uint32_t{s.buf()[2]} << 8) | s.buf()[3];
    EXPECT_EQ(last, kDiskBytes / 512 - 1);
    // A read past the end: CHECK CONDITION with autosense, LBA out of range.
    r = s.srb(rw10(0x28, static_cast<uint32_t>(kDiskBytes / 512) - 1, 2), 1024);
    EXPECT_EQ(r.body.srb.scsi_status, 0x02);
    EXPECT_EQ(r.body.srb.srb_status & kSrbAutosenseValid, kSrbAutosenseValid);
    EXPECT_EQ(r.body.srb.cdb_or_sense[2] & 0x0f, 0x05);  // ILLEGAL REQUEST
    EXPECT_EQ(r.body.srb.cdb_or_sense[12], 0x21);
    EXPECT_EQ(r.body.srb.data_transfer_length, 0u);
    // An unknown opcode: ILLEGAL REQUEST, invalid command operation code.
    r = s.srb({0xd7, 0, 0, 0, 0, 0}, 0);
    EXPECT_EQ(r.body.srb.scsi_status, 0x02);
    EXPECT_EQ(r.body.srb.cdb_or_sense[12], 0x20);
    const auto disks = s.ctl().disks();
    ASSERT_EQ(disks.size(), 1u);
    EXPECT_EQ(disks[0].counters.reads, 1u);  // the out-of-range read never reached the disk
    EXPECT_EQ(disks[0].counters.writes, 1u);
    EXPECT_EQ(disks[0].counters.flushes, 1u);
    EXPECT_EQ(disks[0].counters.bytes_read, 8192u);
    EXPECT_EQ(disks[0].counters.bytes_written, 1536u);
    EXPECT_GE(disks[0].counters.errors, 2u);
}

TEST(Storvsp, AbsentLunsAndTargetsAnswerAsLinuxExpects) {
    TempImage a, b;
    StorGuest s(scsi_controller({a.path, b.path}));
    s.init();
    // REPORT LUNS lists LUNs 0 and 1 (8-byte entries, peripheral addressing).
    auto r = s.srb({0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, 4096);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(s.buf()[3], 16);  // list length 2 x 8
    EXPECT_EQ(s.buf()[8 + 1], 0);
    EXPECT_EQ(s.buf()[16 + 1], 1);
    EXPECT_EQ(r.body.srb.data_transfer_length, 24u);
    // INQUIRY of LUN 5: "no device here" in the data, with a real length (§5).
    r = s.srb({0x12, 0, 0, 0, 36, 0}, 36, 5);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(s.buf()[0], 0x7f);
    EXPECT_GT(r.body.srb.data_transfer_length, 0u);
    // Anything else to an absent LUN: INVALID_LUN, so Linux removes it (§8).
    r = s.srb({0x00, 0, 0, 0, 0, 0}, 0, 9);
    EXPECT_EQ(r.body.srb.srb_status, kSrbInvalidLun);
    // Another target: REPORT LUNS answers with an empty list.
    auto p = op(kOpExecuteSrb);
    p.body.srb.target_id = 1;
    p.body.srb.cdb_length = 12;
    const uint8_t rl[12] = {0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0};
    std::memcpy(p.body.srb.cdb_or_sense, rl, 12);
    p.body.srb.data_transfer_length = 4096;
    auto c = s.call(p, 11, {{4096, 0, {s.buf_page}}});
    ASSERT_TRUE(c);
    EXPECT_EQ(s.buf()[3], 0);
}

TEST(Storvsp, AHostileGuestGetsErrorStatusesAndTheChannelGoesOn) {
    TempImage img;
    StorGuest s(scsi_controller({img.path}));
    s.init();
    auto srb_with = [&](uint32_t len, std::vector<SimGuest::Range> ranges, uint8_t cdb_len = 10) {
        auto p = op(kOpExecuteSrb);
        p.body.srb.cdb_length = cdb_len;
        const auto cdb = rw10(0x28, 0, 8);
        std::memcpy(p.body.srb.cdb_or_sense, cdb.data(), cdb.size());
        p.body.srb.data_transfer_length = len;
        return s.call(p, 21, ranges);
    };
    // A transfer length beyond the buffer the ranges describe.
    auto r = srb_with(8192, {{4096, 0, {s.buf_page}}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.srb.srb_status, kSrbInvalidRequest);
    // A buffer outside guest RAM.
    r = srb_with(4096, {{4096, 0, {1ULL << 40}}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.srb.srb_status, kSrbInvalidRequest);
    // A huge transfer count in the CDB for a small buffer: not more than the buffer moves.
    {
        auto p = op(kOpExecuteSrb);
        p.body.srb.cdb_length = 10;
        const auto cdb = rw10(0x28, 0, 0xffff);
        std::memcpy(p.body.srb.cdb_or_sense, cdb.data(), cdb.size());
        p.body.srb.data_transfer_length = 4096;
        r = s.call(p, 22, {{4096, 0, {s.buf_page}}});
        ASSERT_TRUE(r);
        EXPECT_NE(r->body.srb.srb_status, kSrbSuccess);
        EXPECT_EQ(r->body.srb.data_transfer_length, 0u);
    }
    // CDB lengths of 0 and 20.
    r = srb_with(0, {}, 0);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.srb.srb_status, kSrbInvalidRequest);
    r = srb_with(0, {}, 20);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->body.srb.srb_status, kSrbInvalidRequest);
    // Lying GPA ranges: an error status, not silence.
    {
        auto p = op(kOpExecuteSrb);
        ByteWriter lie;
        lie.put(uint32_t{0}).put(uint32_t{3}).put(uint32_t{4096}).put(uint32_t{0}).put(s.buf_page);
        EXPECT_TRUE(s.g.send(s.ch, vmbus::kPacketDataUsingGpaDirect, 23, as_bytes(p), lie.view(), true));
        auto c = s.wait(s.ch, 23);
        ASSERT_TRUE(c);
        EXPECT_EQ(c->body.srb.srb_status, kSrbInvalidRequest);
    }
    // Wrong packet types: a transfer-page packet gets an error status; a completion from
    // the guest gets nothing (there is nothing to answer).
    auto x = s.call(s.ch, op(kOpExecuteSrb), 24, {}, vmbus::kPacketDataUsingXferPages);
    ASSERT_TRUE(x);
    EXPECT_EQ(x->status, kStatusInvalidDeviceState);
    EXPECT_TRUE(s.g.send(s.ch, vmbus::kPacketCompletion, 25, as_bytes(op(kOpExecuteSrb)), {}, true));
    EXPECT_FALSE(s.wait(s.ch, 25, 300ms));
    // Short packets and unknown operations.
    const uint8_t tiny[4] = {3, 0, 0, 0};
    EXPECT_TRUE(s.g.send(s.ch, vmbus::kPacketDataInband, 26, tiny, {}, true));
    auto t = s.wait(s.ch, 26);
    ASSERT_TRUE(t);
    EXPECT_NE(t->status, 0u);
    auto u = s.call(op(99), 27);
    ASSERT_TRUE(u);
    EXPECT_EQ(u->status, kStatusInvalidDeviceState);
    // After all that, a normal read still works.
    auto ok = s.srb(rw10(0x28, 0, 1), 512);
    EXPECT_EQ(ok.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(ok.body.srb.data_transfer_length, 512u);
}

TEST(Storvsp, ReadOnlyDisksRefuseWritesWithDataProtect) {
    TempImage img;
    StorGuest s(scsi_controller({img.path}, 0, 256, true));
    s.init();
    auto r = s.srb(rw10(0x2a, 0, 1), 512);
    EXPECT_EQ(r.body.srb.scsi_status, 0x02);
    EXPECT_EQ(r.body.srb.cdb_or_sense[2] & 0x0f, 0x07);  // DATA PROTECT
    EXPECT_EQ(r.body.srb.cdb_or_sense[12], 0x27);
    // MODE SENSE(6) says write-protected (header byte 2 bit 7).
    r = s.srb({0x1a, 0, 0x3f, 0, 4, 0}, 4);
    EXPECT_EQ(s.buf()[2] & 0x80, 0x80);
    EXPECT_EQ(img.read(0, 512), std::vector<uint8_t>(512, 0));
}

// The caching mode page (MODE SENSE(6), DBD, page 0x08) as the guest reads it: WCE is
// byte 2 bit 2 of the page, after the 4-byte header.
bool wce_of(StorGuest& s) {
    auto r = s.srb({0x1a, 0x08, 0x08, 0, 36, 0}, 36);
    EXPECT_EQ(r.body.srb.scsi_status, 0x00);
    EXPECT_EQ(s.buf()[4] & 0x3f, 0x08);
    return (s.buf()[4 + 2] & 0x04) != 0;
}

TEST(Storvsp, TheCachingPageTellsTheTruthAboutTheWriteCache) {
    TempImage a, b;
    ControllerOptions o;
    o.bus = Bus::Scsi;
    o.name = "scsi0";
    o.instance = vmbus::Guid::parse("11111111-2222-3333-4444-555555555555");
    DiskConfig back{"back", a.path, "raw", false, ""};
    DiskConfig through{"through", b.path, "raw", false, ""};
    through.writethrough = true;
    StorGuest s(Controller::create(o, {back, through}).value());
    s.init();
    EXPECT_TRUE(wce_of(s));  // LUN 0: writes are stable after SYNCHRONIZE CACHE
    // LUN 1: write-through, every write stable before it completes, so no cache to report.
    auto r = s.srb({0x1a, 0x08, 0x08, 0, 36, 0}, 36, 1);
    EXPECT_EQ(r.body.srb.scsi_status, 0x00);
    EXPECT_EQ(s.buf()[4 + 2] & 0x04, 0);
    // A write to it completes and is in the file.
    std::memset(s.buf(), 0x5a, 512);
    r = s.srb(rw10(0x2a, 3, 1), 512, 1);
    EXPECT_EQ(r.body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(b.read(3 * 512, 512), std::vector<uint8_t>(512, 0x5a));
    const auto disks = s.ctl().disks();
    ASSERT_EQ(disks.size(), 2u);
    EXPECT_TRUE(disks[0].write_cache);
    EXPECT_FALSE(disks[1].write_cache);
}

TEST(Storvsp, HotAddAndRemoveTellTheGuestOnceItIsUp) {
    TempImage a, b;
    StorGuest s(scsi_controller({a.path}));
    s.init();
    // Before the first SRB the guest is not ready for ENUMERATE_BUS (§8): nothing is sent.
    ASSERT_TRUE(s.ctl().add_disk({"hot", b.path, "raw", false, ""}));
    std::this_thread::sleep_for(50ms);
    s.g.pump();
    EXPECT_FALSE(s.ch.to_guest.read());
    // The first SRB: its completion, then the notice.
    s.srb({0x00, 0, 0, 0, 0, 0}, 0);
    std::optional<SimRing::Packet> notice;
    for (int i = 0; i < 500 && !notice; ++i) {
        s.g.pump();
        notice = s.ch.to_guest.read();
        if (!notice) std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE(notice);
    EXPECT_EQ(notice->desc.type, vmbus::kPacketDataInband);
    EXPECT_EQ(notice->desc.trans_id, 0u);
    EXPECT_EQ(read_padded<VstorPacket>(notice->payload).operation, kOpEnumerateBus);
    // The new LUN answers.
    auto r = s.srb({0x12, 0, 0, 0, 36, 0}, 36, 1);
    EXPECT_EQ(s.buf()[0], 0x00);
    EXPECT_EQ(s.ctl().disks().size(), 2u);
    // Removed: INVALID_LUN for it, and another notice.
    ASSERT_TRUE(s.ctl().remove_disk("hot"));
    notice.reset();
    for (int i = 0; i < 500 && !notice; ++i) {
        s.g.pump();
        notice = s.ch.to_guest.read();
        if (!notice) std::this_thread::sleep_for(1ms);
    }
    ASSERT_TRUE(notice);
    r = s.srb({0x00, 0, 0, 0, 0, 0}, 0, 1);
    EXPECT_EQ(r.body.srb.srb_status, kSrbInvalidLun);
    EXPECT_FALSE(s.ctl().remove_disk("hot"));
    EXPECT_FALSE(s.ctl().add_disk({"disk0", b.path, "raw", false, ""}));  // the id is taken
}

TEST(Storvsp, AFullQueueLeavesRequestsInTheRingUntilSlotsFree) {
    TempImage img;
    StorGuest s(scsi_controller({img.path}, 0, 2));  // two requests in flight per channel
    s.init();
    // Twenty reads at once: the worker takes two at a time, all complete.
    for (uint64_t i = 0; i < 20; ++i) {
        auto p = op(kOpExecuteSrb);
        p.body.srb.cdb_length = 10;
        const auto cdb = rw10(0x28, static_cast<uint32_t>(i), 1);
        std::memcpy(p.body.srb.cdb_or_sense, cdb.data(), cdb.size());
        p.body.srb.data_transfer_length = 512;
        const auto ext = SimGuest::gpa_direct_ext({{512, static_cast<uint32_t>(i * 512 % 4096), {s.buf_page + i / 8}}});
        ASSERT_TRUE(s.g.send(s.ch, vmbus::kPacketDataUsingGpaDirect, 100 + i, as_bytes(p), ext, i == 0));
    }
    s.g.doorbell(s.ch);
    std::set<uint64_t> done;
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (done.size() < 20 && std::chrono::steady_clock::now() < deadline) {
        s.g.pump();
        while (auto c = s.ch.to_guest.read()) {
            EXPECT_EQ(read_padded<VstorPacket>(c->payload).body.srb.srb_status, kSrbSuccess);
            done.insert(c->desc.trans_id);
        }
        std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(done.size(), 20u);
    for (const auto& c : s.ctl().channels()) EXPECT_LE(c.in_flight, 2u);
}

TEST(Storvsp, TheIdeDiskIsTheTargetItsInstanceNames) {
    TempImage img;
    ControllerOptions o;
    o.bus = Bus::Ide;
    o.name = "ide1";
    o.instance = ide_instance(1);  // channel 0, device 1: target 1
    EXPECT_EQ(o.instance.to_string(), "00000000-0001-8899-0000-000000000000");
    auto ctl = Controller::create(o, {{"boot", img.path, "raw", false, ""}}).value();
    EXPECT_EQ(ctl->offer().class_id.to_string(), kIdeClass);
    StorGuest s(ctl);
    auto props = s.init();
    EXPECT_EQ(props.body.properties.max_channel_cnt, 0);
    EXPECT_EQ(props.body.properties.flags & kPropertyMultiChannel, 0u);
    auto p = op(kOpExecuteSrb);
    p.body.srb.target_id = 1;
    p.body.srb.cdb_length = 6;
    const uint8_t inquiry[6] = {0x12, 0, 0, 0, 36, 0};
    std::memcpy(p.body.srb.cdb_or_sense, inquiry, 6);
    p.body.srb.data_transfer_length = 36;
    auto c = s.call(p, 5, {{36, 0, {s.buf_page}}});
    ASSERT_TRUE(c);
    EXPECT_EQ(s.buf()[0], 0x00);
    // Target 0 on this IDE channel is not there.
    p.body.srb.target_id = 0;
    c = s.call(p, 6, {{36, 0, {s.buf_page}}});
    ASSERT_TRUE(c);
    EXPECT_EQ(s.buf()[0], 0x7f);
    EXPECT_FALSE(ctl->add_disk({"x", img.path, "raw", false, ""}));  // no hot-add on IDE
}

TEST(Storvsp, ACloseWaitsForReadsInFlightAndRequestsAfterItGetNothing) {
    TempImage img(64 << 20);
    StorGuest s(scsi_controller({img.path}));
    s.init();
    // Many reads in flight, then CLOSECHANNEL at once: every read finishes before the close does.
    for (uint64_t i = 0; i < 64; ++i) {
        auto p = op(kOpExecuteSrb);
        p.body.srb.cdb_length = 10;
        const auto cdb = rw10(0x28, static_cast<uint32_t>(i * 256), 256);
        std::memcpy(p.body.srb.cdb_or_sense, cdb.data(), cdb.size());
        p.body.srb.data_transfer_length = 128 << 10;
        SimGuest::Range r{128 << 10, 0, {}};
        for (uint64_t k = 0; k < 32; ++k) r.pfns.push_back(s.buf_page + k);
        ASSERT_TRUE(s.g.send(s.ch, vmbus::kPacketDataUsingGpaDirect, 200 + i, as_bytes(p), SimGuest::gpa_direct_ext({r}), true));
    }
    s.g.simple(vmbus::MsgType::CloseChannel, s.relid);
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (s.g.server().channels()[0].state != vmbus::ChannelState::Closed && std::chrono::steady_clock::now() < deadline) {
        s.g.pump();
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_EQ(s.g.server().channels()[0].state, vmbus::ChannelState::Closed);
    for (const auto& c : s.ctl().channels()) EXPECT_EQ(c.in_flight, 0u);
    // After the close: the guest's ring is not read any more.
    const auto used = s.ch.to_host.used();
    auto p = op(kOpBeginInitialization);
    EXPECT_TRUE(s.g.send(s.ch, vmbus::kPacketDataInband, 300, as_bytes(p), {}, true));
    std::this_thread::sleep_for(50ms);
    s.g.pump();
    EXPECT_GE(s.ch.to_host.used(), used);
}

// The hostile guest's own-storvsc attack (tests/hostile/enl_hostile.c, own_ring_lies): the
// guest opens the channel, writes a packet, sets one of the ring header's fields to a lie,
// writes another, rings, and closes. Whatever the lie, the VMM answers the close and then the
// ring GPADL's teardown (Linux's vmbus_close waits for GPADL_TORNDOWN without a timeout), and
// the channel opens and works again afterwards.
TEST(Storvsp, EveryRingIndexLieEndsInAnAnsweredCloseAndTeardown) {
    TempImage img;
    StorGuest s(scsi_controller({img.path}));
    s.init();
    for (int variant = 0; variant < 7; ++variant) {
        SCOPED_TRACE(variant);
        SimChannel& c = s.ch;
        const uint32_t dsize = c.to_host.size();
        const auto lie = [&] {
            switch (variant) {
                case 0: c.to_host.store(kRingWriteIndex, dsize + 8); break;  // beyond the ring
                case 1: c.to_host.store(kRingWriteIndex, c.to_host.load(kRingWriteIndex) + 3); break;  // unaligned
                case 2: c.to_host.store(kRingWriteIndex, 0xfffffff8); break;
                case 3: c.to_guest.store(kRingReadIndex, c.to_guest.size() + 4096); break;  // the host->guest ring
                case 4:
                    c.to_guest.store(kRingReadIndex, 5);
                    c.to_guest.store(kRingPendingSendSize, 0xffffffff);
                    break;
                case 5:
                    c.to_host.store(kRingPendingSendSize, dsize * 2);
                    c.to_host.store(kRingInterruptMask, 0xffffffff);
                    c.to_host.store(kRingFeatureBits, 0xffffffff);
                    break;
                case 6: c.to_host.store(kRingReadIndex, dsize - 8); break;  // the host's own index
            }
        };
        auto p = op(kOpQueryProperties);
        (void)s.g.send(c, vmbus::kPacketDataInband, 0xffff0001, as_bytes(p), {}, true);
        lie();
        s.g.doorbell(c);
        (void)s.g.send(c, vmbus::kPacketDataInband, 0xffff0001, as_bytes(p), {}, true);  // may not fit a lie
        const auto settle = std::chrono::steady_clock::now() + 100ms;
        while (std::chrono::steady_clock::now() < settle) {
            s.g.pump();
            std::this_thread::sleep_for(1ms);
        }
        s.g.sink().take();
        s.g.simple(vmbus::MsgType::CloseChannel, s.relid);
        s.g.teardown(s.relid, c.gpadl);
        const bool torn = s.g.await_torndown({c.gpadl}).size() == 1;
        ASSERT_TRUE(torn) << "the ring GPADL's teardown was never answered";
        // Open again with fresh rings: the handshake works.
        s.ch = s.g.open_channel(s.relid, 31, 31);
        ASSERT_EQ(s.open_result(s.relid).value_or(1), 0u);
        s.init();
    }
}

// Checkpoints switch a disk's image under the guest: pause() holds new requests in the ring
// until resume(), and replace_image() puts the disk on another image with the same geometry.
TEST(Storvsp, APausedControllerHoldsRequestsWhileTheImageIsReplaced) {
    TempImage a, b, small(kDiskBytes / 2);
    a.write(0, std::vector<uint8_t>(512, 0xaa));
    b.write(0, std::vector<uint8_t>(512, 0xbb));
    StorGuest s(scsi_controller({a.path}));
    s.init();
    EXPECT_EQ(s.srb(rw10(0x28, 0, 1), 512).body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(s.buf()[0], 0xaa);
    // Not paused: refused.
    auto r = s.ctl().replace_image("disk0", {a.path, b.path, "raw"});
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Invalid));
    ASSERT_TRUE(s.ctl().pause(5s));
    EXPECT_TRUE(s.ctl().pause(5s).error().is(Errc::Busy));
    // A read sent now waits in the ring.
    auto p = op(kOpExecuteSrb);
    p.body.srb.cdb_length = 10;
    const auto cdb = rw10(0x28, 0, 1);
    std::memcpy(p.body.srb.cdb_or_sense, cdb.data(), cdb.size());
    p.body.srb.data_transfer_length = 512;
    std::memset(s.buf(), 0, 512);
    ASSERT_TRUE(s.g.send(s.ch, vmbus::kPacketDataUsingGpaDirect, 42, as_bytes(p),
                         SimGuest::gpa_direct_ext({{512, 0, {s.buf_page}}}), true));
    EXPECT_FALSE(s.wait(s.ch, 42, 200ms));
    // A different size is refused, an unknown disk too; then the switch.
    r = s.ctl().replace_image("disk0", {a.path, small.path, "raw"});
    ASSERT_FALSE(r);
    EXPECT_TRUE(r.error().is(Errc::Invalid)) << r.error().message();
    EXPECT_TRUE(s.ctl().replace_image("nope", {a.path, b.path, "raw"}).error().is(Errc::NotFound));
    // Not on the image the caller expects (it changed meanwhile): refused.
    EXPECT_TRUE(s.ctl().replace_image("disk0", {b.path, b.path, "raw"}).error().is(Errc::Busy));
    ASSERT_TRUE(s.ctl().replace_image("disk0", {a.path, b.path, "raw"}));
    s.ctl().resume();
    auto done = s.wait(s.ch, 42);
    ASSERT_TRUE(done);
    EXPECT_EQ(done->body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(s.buf()[0], 0xbb);
    // Writes go to the new image; the old one is left as it was. Counters carry over.
    std::memset(s.buf(), 0xcc, 512);
    EXPECT_EQ(s.srb(rw10(0x2a, 1, 1), 512).body.srb.srb_status, kSrbSuccess);
    EXPECT_EQ(b.read(512, 1)[0], 0xcc);
    EXPECT_EQ(a.read(512, 1)[0], 0x00);
    const auto disks = s.ctl().disks();
    ASSERT_EQ(disks.size(), 1u);
    EXPECT_EQ(disks[0].path, b.path);
    EXPECT_EQ(disks[0].counters.reads, 2u);
    EXPECT_EQ(disks[0].counters.writes, 1u);
}
