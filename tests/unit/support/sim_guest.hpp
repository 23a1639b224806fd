// A simulated hv_vmbus guest, shared by the VMBus and VSP unit tests: guest RAM, the
// channel messages Linux 6.1 posts (connect, GPADLs split 26/28 PFNs as create_gpadl_header()
// does, open, close, teardown), and the guest's side of the rings written and read as
// drivers/hv/ring_buffer.c does. The server runs on a real EventLoop that the test pumps, so
// device callbacks run where they would in the VMM, at points the test chooses.
//
// Fuzzers use it too: they define ENL_SIM_CHECK (e.g. to trap) before including it.
#pragma once

#ifndef ENL_SIM_CHECK
#include <gtest/gtest.h>
#define ENL_SIM_CHECK(cond) EXPECT_TRUE(cond)
#endif

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/thread_annotations.hpp"
#include "vmbus/server.hpp"

namespace enlighten::test {

using namespace vmbus;

// Messages and signals the server sent to the guest. Each also wakes `wake` (an eventfd the
// SimGuest's loop watches), so that a test can sleep until the VMM does something.
struct SimSink final : MessageSink {
    struct Msg {
        uint32_t vp, sint;
        std::vector<uint8_t> bytes;
        [[nodiscard]] MsgType type() const {
            uint32_t t;
            std::memcpy(&t, bytes.data(), 4);
            return static_cast<MsgType>(t);
        }
        template <typename T>
        [[nodiscard]] T as() const {
            return read_padded<T>(bytes);
        }
    };
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> m) override {
        {
            LockGuard lock(mu);
            msgs.push_back({vp, sint, {m.begin(), m.end()}});
        }
        poke();
        return true;
    }
    bool signal(uint32_t vp, uint32_t, uint32_t flag) override {
        {
            LockGuard lock(mu);
            signals.push_back(flag);
            signal_vps.push_back(vp);
        }
        poke();
        return true;
    }
    void poke() const {
        const uint64_t one = 1;
        [[maybe_unused]] const auto n = ::write(wake.get(), &one, sizeof(one));
    }
    std::vector<Msg> take() {
        LockGuard lock(mu);
        return std::exchange(msgs, {});
    }
    std::vector<uint32_t> take_signals() {
        LockGuard lock(mu);
        signal_vps.clear();
        return std::exchange(signals, {});
    }
    const UniqueFd wake{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
    Mutex mu;
    std::vector<Msg> msgs ENL_GUARDED_BY(mu);
    std::vector<uint32_t> signals ENL_GUARDED_BY(mu);
    std::vector<uint32_t> signal_vps ENL_GUARDED_BY(mu);
};

// The guest's view of one ring: header page `hdr`, data pages after it (contiguous in RAM).
class SimRing {
public:
    SimRing() = default;
    SimRing(uint8_t* ram, uint64_t hdr_page, uint32_t data_pages) : ram_(ram), hdr_(hdr_page), pages_(data_pages) {}

    [[nodiscard]] uint32_t size() const { return pages_ * kPageSize; }
    [[nodiscard]] uint32_t load(uint32_t off) const {
        return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(ram_ + hdr_ * kPageSize + off)).load();
    }
    void store(uint32_t off, uint32_t v) {
        std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(ram_ + hdr_ * kPageSize + off)).store(v);
    }
    [[nodiscard]] uint32_t used() const {
        const uint32_t w = load(kRingWriteIndex), r = load(kRingReadIndex);
        return w >= r ? w - r : size() - r + w;
    }
    // hv_ringbuffer_write: false if it does not fit (the ring must never become full).
    // *signal: what hv_signal_on_write decides (empty before, and not masked).
    bool write(uint16_t type, uint16_t flags, uint64_t trans_id, std::span<const uint8_t> ext,
               std::span<const uint8_t> payload, bool* signal = nullptr) {
        const uint32_t header = static_cast<uint32_t>(16 + ext.size());
        const uint32_t len = static_cast<uint32_t>((header + payload.size() + 7) / 8 * 8);
        if (len + 8 >= size() - used()) return false;
        const uint32_t w = load(kRingWriteIndex);
        PacketDescriptor d{type, static_cast<uint16_t>(header / 8), static_cast<uint16_t>(len / 8), flags, trans_id};
        const uint8_t zeros[8] = {};
        const uint64_t trailer = uint64_t{w} << 32;
        uint32_t at = w;
        put(at, &d, 16);
        put(at, ext.data(), ext.size());
        put(at, payload.data(), payload.size());
        put(at, zeros, len - header - payload.size());
        put(at, &trailer, 8);
        const bool was_empty = used() == 0;
        store(kRingWriteIndex, at);
        if (signal) *signal = was_empty && load(kRingInterruptMask) == 0;
        return true;
    }
    struct Packet {
        PacketDescriptor desc;
        std::vector<uint8_t> ext;  // between the descriptor and the payload
        std::vector<uint8_t> payload;
    };
    // hv_pkt_iter_first + hv_pkt_iter_close: the next packet, and the read index moves.
    std::optional<Packet> read() {
        const uint32_t w = load(kRingWriteIndex), r = load(kRingReadIndex);
        if (w == r) return std::nullopt;
        Packet p;
        get(r, &p.desc, 16);
        p.ext.resize(p.desc.offset8 * 8u - 16u);
        get(r + 16, p.ext.data(), p.ext.size());
        p.payload.resize(p.desc.len8 * 8u - p.desc.offset8 * 8u);
        get(r + p.desc.offset8 * 8u, p.payload.data(), p.payload.size());
        store(kRingReadIndex, (r + p.desc.len8 * 8u + 8) % size());
        return p;
    }

    // The byte at `pos` of the data area (for a test that writes the ring by hand).
    uint8_t* byte_at(uint32_t pos) { return data(pos); }

private:
    uint8_t* data(uint32_t pos) { return ram_ + (hdr_ + 1) * kPageSize + pos % size(); }
    void put(uint32_t& at, const void* src, size_t n) {
        for (size_t i = 0; i < n; ++i) *data(static_cast<uint32_t>(at + i)) = static_cast<const uint8_t*>(src)[i];
        at = static_cast<uint32_t>((at + n) % size());
    }
    void get(uint32_t at, void* dst, size_t n) {
        for (size_t i = 0; i < n; ++i) static_cast<uint8_t*>(dst)[i] = *data(static_cast<uint32_t>(at + i));
    }
    uint8_t* ram_ = nullptr;
    uint64_t hdr_ = 0;
    uint32_t pages_ = 0;
};

// One open channel as the guest holds it.
struct SimChannel {
    uint32_t relid = 0;
    uint32_t connection_id = 0;
    uint32_t gpadl = 0;
    uint64_t first_page = 0;  // the rings' pages: first_page .. first_page + page_count
    uint64_t page_count = 0;
    SimRing to_host;   // the guest writes
    SimRing to_guest;  // the guest reads
};

// Guest RAM, kept for the next simulated guest when one ends: fuzzers make a guest per input,
// and faulting a fresh buffer's pages in cost more than the input itself (60% of fuzz_ic's
// time). A buffer is zeroed when it is taken, so each guest starts from the same RAM.
// Any thread; the pool's mutex is a leaf.
class SimRam {
public:
    explicit SimRam(size_t bytes) : bytes_(take(bytes)) {}
    ~SimRam() {
        const std::lock_guard lock(pool_mu());
        pool().push_back(std::move(bytes_));
    }
    SimRam(const SimRam&) = delete;
    SimRam& operator=(const SimRam&) = delete;

    [[nodiscard]] std::span<uint8_t> span() { return bytes_; }

private:
    static std::mutex& pool_mu() {
        static std::mutex mu;
        return mu;
    }
    static std::vector<std::vector<uint8_t>>& pool() {
        static std::vector<std::vector<uint8_t>> p;
        return p;
    }
    static std::vector<uint8_t> take(size_t bytes) {
        {
            const std::lock_guard lock(pool_mu());
            auto& p = pool();
            for (auto it = p.begin(); it != p.end(); ++it)
                if (it->size() == bytes) {
                    std::vector<uint8_t> v = std::move(*it);
                    p.erase(it);
                    std::memset(v.data(), 0, v.size());
                    return v;
                }
        }
        return std::vector<uint8_t>(bytes);
    }
    std::vector<uint8_t> bytes_;
};

class SimGuest {
public:
    explicit SimGuest(uint32_t vps = 2, uint64_t ram_pages = 4096)
        : ram_store_(ram_pages * kPageSize),
          ram_(ram_store_.span()),
          mem_(GuestMemory::borrow({{0, ram_.size(), ram_.data()}})),
          loop_(EventLoop::create().value()),
          server_(std::make_unique<Server>(sink_, mem_, vps, *loop_, loop_.get())) {
        ENL_SIM_CHECK(sink_.wake.valid());
        wake_watch_ = loop_->watch(sink_.wake.get(), EPOLLIN, [this](uint32_t) {
                              uint64_t v;
                              [[maybe_unused]] const auto n = ::read(sink_.wake.get(), &v, sizeof(v));
                          }).value();
    }
    ~SimGuest() {
        stop();
        loop_->unwatch(wake_watch_);
    }

    // Orderly: every device closes and detaches, as at machine teardown; after it nothing
    // touches the guest's RAM any more (fuzzers then check what changed). Idempotent.
    void stop() {
        if (!server_) return;
        bool done = false;
        server_->shutdown([&] { done = true; });
        loop_->run_until([&] { return done; }, std::chrono::seconds(5));
        server_.reset();
    }

    SimSink& sink() { return sink_; }
    Server& server() { return *server_; }
    EventLoop& loop() { return *loop_; }
    GuestMemory& memory() { return mem_; }
    std::span<uint8_t> ram() { return ram_; }

    // A short wait while a device's worker thread catches up, for loops that poll its
    // progress: 10 µs, with this thread's timer slack cut to 1 µs (Linux's default 50 µs slack
    // made each poll of the fuzzers' device harnesses cost ~175 µs here instead of ~30).
    static void nap() {
        thread_local const bool slack_set = ::prctl(PR_SET_TIMERSLACK, 1000UL) == 0;
        (void)slack_set;
        std::this_thread::sleep_for(std::chrono::microseconds(10));
    }

    // Sleeps until the VMM sends the guest a message or a signal, or posts work to the control
    // loop (which it then runs), or `most` passed: for loops that wait on a device's worker
    // thread, where nap()'s polls cost a context switch each.
    void wait(std::chrono::milliseconds most = std::chrono::milliseconds(1)) { loop_->run_once(most); }

    // Pumps the loop and tests `done` until it holds (true) or `timeout` passed (false),
    // sleeping in wait() between tries: the shape of every wait on a device's worker.
    template <typename Pred>
    bool wait_until(Pred done, std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            pump();
            if (done()) return true;
            if (std::chrono::steady_clock::now() >= deadline) return false;
            wait();
        }
    }

    // Pumps until every GPADL of `gpadls` was answered with GPADL_TORNDOWN, or `timeout`
    // passed; returns those answered. Other messages taken meanwhile are dropped.
    std::set<uint32_t> await_torndown(const std::set<uint32_t>& gpadls,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        std::set<uint32_t> torn;
        wait_until(
            [&] {
                for (const auto& m : sink_.take())
                    if (m.type() == MsgType::GpadlTorndown && gpadls.count(m.as<GpadlTorndown>().gpadl))
                        torn.insert(m.as<GpadlTorndown>().gpadl);
                return torn.size() == gpadls.size();
            },
            timeout);
        return torn;
    }

    // Runs the loop until it has nothing left to do.
    void pump() {
        for (int i = 0; i < 10000 && loop_->run_once(std::chrono::milliseconds(0)); ++i) {}
    }

    void post_bytes(std::span<const uint8_t> m) { ENL_SIM_CHECK(server_->handle_message(0, 4, m) == hv::Status::Success); }
    template <typename T>
    void post(const T& m) {
        post_bytes(as_bytes(m));
    }

    void connect(uint32_t version = kVersionWin10V5_3) {
        InitiateContact c{};
        c.header.msgtype = static_cast<uint32_t>(MsgType::InitiateContact);
        c.vmbus_version_requested = version;
        c.interrupt_page_or_sint = 2;
        post(c);
        MessageHeader req{static_cast<uint32_t>(MsgType::RequestOffers), 0};
        post(req);
        pump();
    }

    // Offers the guest saw (OFFERCHANNEL messages among those not yet taken).
    static std::vector<OfferChannel> offers(const std::vector<SimSink::Msg>& msgs) {
        std::vector<OfferChannel> out;
        for (const auto& m : msgs)
            if (m.type() == MsgType::OfferChannel) out.push_back(m.as<OfferChannel>());
        return out;
    }

    // Stray-write check for fuzzers: fill_guarded() puts a pattern in every page for which
    // guarded(page) is true; guarded_intact() says whether they all still hold it (call after
    // stop(), when the VMM can no longer write).
    template <typename Pred>
    void fill_guarded(Pred guarded) {
        for (uint64_t page = 0; page * kPageSize < ram_.size(); ++page)
            if (guarded(page)) std::memset(ram_.data() + page * kPageSize, kGuardByte, kPageSize);
    }
    template <typename Pred>
    [[nodiscard]] bool guarded_intact(Pred guarded) const {
        for (uint64_t page = 0; page * kPageSize < ram_.size(); ++page) {
            const uint8_t* b = ram_.data() + page * kPageSize;
            if (guarded(page) && (b[0] != kGuardByte || std::memcmp(b, b + 1, kPageSize - 1) != 0)) return false;
        }
        return true;
    }

    // Pages of guest RAM for rings and buffers (zeroed), as the guest allocates them.
    // When RAM runs out it starts again from the bottom (fuzzers reopen channels for ever).
    uint64_t alloc_pages(uint64_t n) {
        if ((next_page_ + n) * kPageSize > ram_.size()) next_page_ = 16;
        const uint64_t first = next_page_;
        next_page_ += n;
        std::memset(ram_.data() + first * kPageSize, 0, n * kPageSize);
        return first;
    }
    static std::vector<uint64_t> pages(uint64_t first, uint64_t count) {
        std::vector<uint64_t> v;
        for (uint64_t i = 0; i < count; ++i) v.push_back(first + i);
        return v;
    }

    // hv_vmbus's create_gpadl_header(): 26 PFNs in the header, 28 per body.
    void create_gpadl(uint32_t relid, uint32_t handle, const std::vector<uint64_t>& pfns, uint32_t byte_count = 0) {
        const size_t in_header = std::min<size_t>(pfns.size(), 26);
        std::vector<uint8_t> m(sizeof(GpadlHeader) + 8 * in_header);
        GpadlHeader h{};
        h.header.msgtype = static_cast<uint32_t>(MsgType::GpadlHeader);
        h.child_relid = relid;
        h.gpadl = handle;
        h.range_buflen = static_cast<uint16_t>(8 + 8 * pfns.size());
        h.rangecount = 1;
        h.byte_count = byte_count ? byte_count : static_cast<uint32_t>(pfns.size() * kPageSize);
        std::memcpy(m.data(), &h, sizeof(h));
        std::memcpy(m.data() + sizeof(h), pfns.data(), 8 * in_header);
        post_bytes(m);
        for (size_t at = in_header; at < pfns.size(); at += 28) {
            const size_t n = std::min<size_t>(pfns.size() - at, 28);
            std::vector<uint8_t> b(sizeof(GpadlBody) + 8 * n);
            GpadlBody body{{static_cast<uint32_t>(MsgType::GpadlBody), 0}, 0, handle};
            std::memcpy(b.data(), &body, sizeof(body));
            std::memcpy(b.data() + sizeof(body), pfns.data() + at, 8 * n);
            post_bytes(b);
        }
    }

    void send_open(uint32_t relid, uint32_t gpadl, uint32_t send_pages, uint32_t vp = 0) {
        OpenChannel o{};
        o.header.msgtype = static_cast<uint32_t>(MsgType::OpenChannel);
        o.child_relid = relid;
        o.openid = relid;
        o.ringbuffer_gpadl = gpadl;
        o.target_vp = vp;
        o.downstream_ringbuffer_pageoffset = send_pages;
        post(o);
    }

    // The status of the OPENCHANNEL_RESULT for relid among `msgs`, if there is one.
    static std::optional<uint32_t> open_result(const std::vector<SimSink::Msg>& msgs, uint32_t relid) {
        for (const auto& m : msgs)
            if (m.type() == MsgType::OpenChannelResult && m.as<OpenResult>().child_relid == relid)
                return m.as<OpenResult>().status;
        return std::nullopt;
    }

    // What __vmbus_open does: one allocation for both rings (header + data pages each), a
    // GPADL over it, OPENCHANNEL; then the test pumps the loop for the device's open.
    SimChannel open_channel(uint32_t relid, uint32_t to_host_data = 3, uint32_t to_guest_data = 3, uint32_t vp = 0) {
        return open_channel_at(relid, alloc_pages(2 + to_host_data + to_guest_data), to_host_data, to_guest_data, vp);
    }

    // Closes a channel and opens it again on the same ring pages, as a driver rebind does:
    // close, tear the ring GPADL down and wait for GPADL_TORNDOWN (Linux frees ring pages only
    // then: pages reused earlier could take the VMM's last writes to the old rings), then a
    // new GPADL over the zeroed pages and an open. False (the channel closed) if the teardown
    // was never answered, which a VMM must always do. Messages taken meanwhile are dropped.
    bool reopen_channel(SimChannel& ch, uint32_t vp = 0) {
        simple(MsgType::CloseChannel, ch.relid);
        pump();
        teardown(ch.relid, ch.gpadl);
        if (await_torndown({ch.gpadl}).empty()) return false;
        const auto to_host_data = static_cast<uint32_t>(ch.to_host.size() / kPageSize);
        const auto to_guest_data = static_cast<uint32_t>(ch.to_guest.size() / kPageSize);
        std::memset(ram_.data() + ch.first_page * kPageSize, 0, ch.page_count * kPageSize);
        ch = open_channel_at(ch.relid, ch.first_page, to_host_data, to_guest_data, vp);
        return true;
    }

    SimChannel open_channel_at(uint32_t relid, uint64_t first, uint32_t to_host_data, uint32_t to_guest_data,
                               uint32_t vp = 0) {
        SimChannel ch;
        ch.relid = relid;
        ch.connection_id = kChannelConnectionBase + relid;
        ch.gpadl = next_gpadl_++;
        ch.first_page = first;
        ch.page_count = 2 + to_host_data + to_guest_data;
        ch.to_host = SimRing(ram_.data(), first, to_host_data);
        ch.to_guest = SimRing(ram_.data(), first + 1 + to_host_data, to_guest_data);
        ch.to_host.store(kRingFeatureBits, 1);  // the guest sets feat_pending_send_sz
        ch.to_guest.store(kRingFeatureBits, 1);
        create_gpadl(relid, ch.gpadl, pages(first, 2 + to_host_data + to_guest_data));
        send_open(relid, ch.gpadl, 1 + to_host_data, vp);
        pump();
        return ch;
    }

    // The guest writes a packet and rings the doorbell when Linux would (or always).
    bool send(SimChannel& ch, uint16_t type, uint64_t trans_id, std::span<const uint8_t> payload,
              std::span<const uint8_t> ext = {}, bool always_signal = false) {
        bool signal = false;
        if (!ch.to_host.write(type, type == kPacketCompletion ? 0 : kPacketFlagCompletionRequested, trans_id, ext,
                              payload, &signal))
            return false;
        if (signal || always_signal) doorbell(ch);
        return true;
    }
    void doorbell(const SimChannel& ch) { ENL_SIM_CHECK(server_->handle_event(0, ch.connection_id, 0) == hv::Status::Success); }

    // A GPA-direct packet's header extension (vmbus_packet_mpb_array): each range is
    // {byte_count, byte_offset, pfns...}.
    struct Range {
        uint32_t count;
        uint32_t offset;
        std::vector<uint64_t> pfns;
    };
    static std::vector<uint8_t> gpa_direct_ext(const std::vector<Range>& ranges) {
        ByteWriter w;
        w.put(uint32_t{0}).put(static_cast<uint32_t>(ranges.size()));
        for (const auto& r : ranges) {
            w.put(r.count).put(r.offset);
            for (uint64_t pfn : r.pfns) w.put(pfn);
        }
        return w.take();
    }

    // Every page number a GPA-direct extension names as the wire format reads it: a range's
    // page count follows from its offset and byte count (DIV_ROUND_UP, as the guest's
    // vmbus_sendpacket_mpb_desc callers compute it), not from how many PFNs its writer put
    // after it, so ranges that lie about their size name what follows them. For stray-write
    // checks: a VMM may write where the packet, so read, points.
    static std::vector<uint64_t> gpa_direct_pfns(std::span<const uint8_t> ext) {
        std::vector<uint64_t> out;
        if (ext.size() < 8) return out;
        uint32_t ranges;
        std::memcpy(&ranges, ext.data() + 4, 4);
        size_t pos = 8;
        for (uint32_t i = 0; i < ranges && ext.size() - pos >= 8; ++i) {
            uint32_t count, offset;
            std::memcpy(&count, ext.data() + pos, 4);
            std::memcpy(&offset, ext.data() + pos + 4, 4);
            pos += 8;
            const uint64_t pages = (uint64_t{offset} + count + kPageSize - 1) / kPageSize;
            for (uint64_t k = 0; k < pages && ext.size() - pos >= 8; ++k, pos += 8) {
                uint64_t pfn;
                std::memcpy(&pfn, ext.data() + pos, 8);
                out.push_back(pfn);
            }
        }
        return out;
    }

    void simple(MsgType t, uint32_t relid) {
        CloseChannel c{{static_cast<uint32_t>(t), 0}, relid};
        post(c);
    }
    void teardown(uint32_t relid, uint32_t gpadl) {
        GpadlTeardown t{{static_cast<uint32_t>(MsgType::GpadlTeardown), 0}, relid, gpadl};
        post(t);
    }

private:
    static constexpr uint8_t kGuardByte = 0xa5;
    SimRam ram_store_;
    std::span<uint8_t> ram_;
    SimSink sink_;
    GuestMemory mem_;
    std::unique_ptr<EventLoop> loop_;
    EventLoop::WatchId wake_watch_ = 0;
    std::unique_ptr<Server> server_;
    uint64_t next_page_ = 16;
    uint32_t next_gpadl_ = 0xe1e10;
};

}  // namespace enlighten::test
