#include "devices/storvsp/storvsp.hpp"

#include <sys/epoll.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <thread>

#include "common/sandbox.hpp"
#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/storvsp/protocol.hpp"
#include "kvm/guest_memory.hpp"
#include "vmbus/queue.hpp"

namespace enlighten::storvsp {

namespace {

uint64_t now_ns() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

// What one completion occupies in the guest's ring: set aside before a request is taken.
const size_t kCompletionRingBytes = [] {
    static const uint8_t zero[sizeof(VstorPacket)] = {};
    const iovec iov = iov_of(zero);
    return vmbus::OutPacket::completion(0, std::span(&iov, 1)).ring_bytes();
}();

constexpr int kDrainBudget = 256;  // packets a channel's worker takes per round (drain)
constexpr uint8_t kOpInquiry = scsi::op::kInquiry;
constexpr uint8_t kOpReportLuns = scsi::op::kReportLuns;

// Copies bytes into / out of guest memory described by iovecs; returns how many.
size_t copy_to(std::span<const iovec> iov, std::span<const uint8_t> bytes) {
    size_t done = 0;
    for (const iovec& v : iov) {
        if (done == bytes.size()) break;
        const size_t n = std::min(v.iov_len, bytes.size() - done);
        std::memcpy(v.iov_base, bytes.data() + done, n);
        done += n;
    }
    return done;
}

size_t copy_from(std::span<const iovec> iov, std::span<uint8_t> out) {
    size_t done = 0;
    for (const iovec& v : iov) {
        if (done == out.size()) break;
        const size_t n = std::min(v.iov_len, out.size() - done);
        std::memcpy(out.data() + done, v.iov_base, n);
        done += n;
    }
    return done;
}

// The first `bytes` of an iovec list (a request's transfer within a larger buffer).
void trim(IovecList& iov, size_t bytes) {
    size_t at = 0;
    for (size_t i = 0; i < iov.size(); ++i) {
        if (at + iov[i].iov_len >= bytes) {
            iov[i].iov_len = bytes - at;
            iov.resize(bytes == at ? i : i + 1);
            return;
        }
        at += iov[i].iov_len;
    }
}

// A stable 64-bit id for a disk's VPD page 0x83 (FNV-1a of its id and path).
uint64_t disk_wwn(const DiskConfig& c) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const std::string* s : {&c.id, &c.path})
        for (char ch : *s) h = (h ^ static_cast<uint8_t>(ch)) * 0x100000001b3ULL;
    return h;
}

}  // namespace

struct Controller::Lun {
    DiskConfig cfg;
    uint8_t number = 0;
    uint64_t serial = 0;  // unique in the process: a worker's disk queue belongs to one Lun
    std::shared_ptr<disk::Disk> disk;
    scsi::DiskParams params;
    std::atomic<uint64_t> requests{0}, reads{0}, writes{0}, flushes{0}, unmaps{0};
    std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, errors{0}, latency_ns{0};
};

vmbus::Guid ide_instance(unsigned n) {
    // {Data1 = IDE channel, Data2 = device on it, Data3 = 0x8899, Data4 = 0} (contract §9).
    return vmbus::Guid::parse(fmt::format("{:08x}-{:04x}-8899-0000-000000000000", n / 2, n % 2).c_str());
}

// ---------------------------------------------------------------------------- Worker

// One open channel: its ring, its requests in flight, its disk queues, on a thread of its own.
// Everything below runs on that thread but close(), status() and notify_bus_change(), which
// post to it (or read atomics).
class Controller::Worker {
public:
    Worker(Controller& ctl, uint16_t index, std::shared_ptr<vmbus::ChannelQueue> q, const GuestMemory& mem,
           std::unique_ptr<EventLoopThread> thread)
        : ctl_(ctl), index_(index), q_(std::move(q)), mem_(mem), thread_(std::move(thread)),
          depth_(ctl.options_.queue_depth), slots_(depth_) {
        for (uint32_t i = 0; i < depth_; ++i) free_.push_back(depth_ - 1 - i);
        out_.resize(8192);
    }
    ~Worker() { thread_.reset(); }  // joins the thread (never on it)

    // Starts watching the ring; `done` runs on the worker once it does.
    void start(vmbus::OpenDone done) {
        loop().post([this, done = std::move(done)]() mutable {
            auto w = loop().watch(q_->notify_fd(), EPOLLIN, [this](uint32_t) { drain(); });
            if (!w) return done(std::unexpected(w.error()));
            notify_watch_ = *w;
            done({});
            drain();  // anything the guest wrote already
        });
    }
    // Stops taking requests; finishes those in flight; then tells the controller and `done`.
    void close(vmbus::CloseDone done) {
        loop().post([this, done = std::move(done)]() mutable {
            closing_ = true;
            close_done_ = std::move(done);
            if (notify_watch_) loop().unwatch(notify_watch_);
            notify_watch_ = 0;
            maybe_finish();
        });
    }
    void send_bus_change() {
        loop().post([this] { try_bus_change(); });
    }
    // Runs `fn` on the worker's thread, after what it is doing now.
    void run(std::function<void()> fn) { loop().post(std::move(fn)); }
    // Takes the requests that waited in the ring while the controller was paused (and lets
    // go of the queues of images replaced meanwhile).
    void resume() {
        loop().post([this] {
            prune();
            drain();
        });
    }
    void retarget(uint32_t vp) { target_vp_ = vp; }
    [[nodiscard]] ChannelStatus status() const {
        return {index_, target_vp_.load(), requests_.load(), in_flight_.load()};
    }

private:
    struct Slot {
        uint64_t trans_id = 0;
        VstorPacket request{};
        vmbus::Reservation room;
        IovecList iov;
        std::shared_ptr<Lun> lun;
        scsi::Command cmd;
        uint32_t pending = 0;      // backend requests outstanding
        int64_t error = 0;         // the first -errno, if any
        uint32_t transferred = 0;  // bytes to report on success
        uint64_t started_ns = 0;
    };
    struct DiskQueue {
        std::unique_ptr<disk::Queue> queue;
        EventLoop::WatchId watch = 0;
        std::weak_ptr<Lun> lun;  // expired: the LUN is gone and the queue can go
    };

    EventLoop& loop() { return thread_->loop(); }

    void drain() {
        if (closing_) return;
        q_->drain_notify();
        // Paused (Controller::pause): the requests wait in the guest's ring; resume() drains.
        if (ctl_.paused_.load(std::memory_order_acquire)) return;
        // At most kDrainBudget packets per round, then the rest after what else is posted to
        // this loop (a close, completions): a guest that writes as fast as we read (packets
        // that want no completion take no slot) cannot keep the thread here.
        for (int budget = kDrainBudget;; --budget) {
            if (budget == 0) {
                loop().post([this] { drain(); });
                return;
            }
            if (free_.empty()) return;  // back-pressure: the rest waits in the guest's ring
            auto room = q_->reserve(kCompletionRingBytes);
            if (!room) return;  // Busy: the guest's room wakes us; Closed: nothing to do
            auto p = q_->peek();
            if (!p) return;  // closed, or a broken ring (the server closes the channel)
            if (!*p) {
                if (q_->arm()) break;
                continue;
            }
            handle(**p, std::move(*room));
            q_->consume();
        }
        try_bus_change();
    }

    // Answers with a vstor packet (into the room reserved for it).
    void reply(vmbus::Reservation room, uint64_t trans_id, const VstorPacket& pkt) {
        const iovec iov = iov_of(as_bytes(pkt));
        if (auto r = q_->commit(std::move(room), vmbus::OutPacket::completion(trans_id, std::span(&iov, 1))); !r)
            ENL_LOG_LIMITED(debug, "{}: a completion was not sent: {}", ctl_.options_.name, r.error().message());
    }
    void reply_status(vmbus::Reservation room, uint64_t trans_id, VstorPacket pkt, uint32_t status) {
        pkt.operation = kOpCompleteIo;
        pkt.flags = 0;
        pkt.status = status;
        reply(std::move(room), trans_id, pkt);
    }

    void handle(const vmbus::PacketView& p, vmbus::Reservation room) {
        requests_.fetch_add(1, std::memory_order_relaxed);
        if (!p.completion_requested()) {
            // Nothing to answer it with (a completion, or a request that wants none).
            ENL_LOG_LIMITED(warn, "{}: ignoring a packet of type {} that asks for no completion", ctl_.options_.name, p.type);
            return;
        }
        VstorPacket pkt = read_padded<VstorPacket>(p.payload);
        if ((p.type != vmbus::kPacketDataInband && p.type != vmbus::kPacketDataUsingGpaDirect) ||
            p.payload.size() < offsetof(VstorPacket, body)) {
            ENL_LOG_LIMITED(warn, "{}: refusing a packet of type {} with {} bytes", ctl_.options_.name, p.type,
                            p.payload.size());
            return reply_status(std::move(room), p.trans_id, pkt, kStatusInvalidDeviceState);
        }
        switch (pkt.operation) {
            case kOpExecuteSrb: return execute_srb(p, pkt, std::move(room));
            case kOpResetBus:
            case kOpResetLun:
            case kOpResetAdapter:
                // Nothing is lost by a reset: requests in flight complete on their own (§7).
                return reply_status(std::move(room), p.trans_id, pkt, kStatusSuccess);
            default: {
                // init_op fills in pkt (QUERY_PROPERTIES), so it runs before pkt is passed on.
                const uint32_t status = init_op(pkt);
                return reply_status(std::move(room), p.trans_id, pkt, status);
            }
        }
    }

    // The initialization handshake (§4), on the primary channel, in order.
    uint32_t init_op(VstorPacket& pkt) {
        if (index_ != 0) return kStatusInvalidDeviceState;
        uint16_t enable = 0;
        uint32_t status = kStatusInvalidDeviceState;
        {
            LockGuard lock(ctl_.mu_);
            switch (pkt.operation) {
                case kOpBeginInitialization:
                    // Once per open of the primary channel (storvsc runs it after vmbus_open):
                    // a second one would stop the guest driver's I/O until it ended it again,
                    // which storvsc never does. Refused; a new open starts over.
                    if (ctl_.init_ == Init::Ready) break;
                    ctl_.init_ = Init::Begun;
                    ctl_.version_ = 0;
                    status = kStatusSuccess;
                    break;
                case kOpQueryProtocolVersion:
                    if (ctl_.init_ != Init::Begun) break;
                    if (pkt.body.version.major_minor != kVersionWin10 && pkt.body.version.major_minor != kVersionWin8_1 &&
                        pkt.body.version.major_minor != kVersionWin8) {
                        status = kStatusRevisionMismatch;
                        break;
                    }
                    ctl_.version_ = pkt.body.version.major_minor;
                    status = kStatusSuccess;
                    break;
                case kOpQueryProperties: {
                    if (ctl_.init_ != Init::Begun) break;
                    const bool multi = ctl_.options_.bus == Bus::Scsi && ctl_.options_.max_subchannels > 0;
                    std::memset(pkt.body.raw, 0, sizeof(pkt.body.raw));
                    pkt.body.properties.max_channel_cnt = multi ? ctl_.options_.max_subchannels : 0;
                    pkt.body.properties.flags = multi ? kPropertyMultiChannel : 0;
                    pkt.body.properties.max_transfer_bytes = ctl_.options_.max_transfer_bytes;
                    status = kStatusSuccess;
                    break;
                }
                case kOpEndInitialization:
                    if (ctl_.init_ != Init::Begun || ctl_.version_ == 0) break;
                    ctl_.init_ = Init::Ready;
                    status = kStatusSuccess;
                    break;
                case kOpCreateSubChannels:
                    if (ctl_.init_ != Init::Ready) break;
                    if (pkt.body.sub_channel_count == 0 || pkt.body.sub_channel_count > ctl_.options_.max_subchannels) {
                        status = kStatusInvalidParameter;
                        break;
                    }
                    enable = pkt.body.sub_channel_count;
                    status = kStatusSuccess;
                    break;
                default: break;
            }
        }
        if (status == kStatusInvalidDeviceState)
            ENL_LOG_LIMITED(warn, "{}: operation {} refused in this state", ctl_.options_.name, pkt.operation);
        // The offers may come before or after the answer (§6); the server makes them.
        if (enable && ctl_.resources_.control)
            if (auto r = ctl_.resources_.control->enable_subchannels(enable); !r) {
                ENL_LOG_LIMITED(warn, "{}: sub-channels: {}", ctl_.options_.name, r.error().message());
                status = kStatusInvalidParameter;
            }
        return status;
    }

    // Fills in the SRB part of a completion.
    static void finish_srb(VstorPacket& pkt, uint8_t srb_status, const scsi::Command& c, uint32_t transferred) {
        pkt.operation = kOpCompleteIo;
        pkt.flags = 0;
        ScsiRequest& srb = pkt.body.srb;
        srb.scsi_status = c.status;
        srb.data_transfer_length = transferred;
        if (c.status == scsi::kCheckCondition) {
            // Never CHECK CONDITION without autosense (§5).
            const auto sense = scsi::fixed_sense(c.sense);
            std::memset(srb.cdb_or_sense, 0, sizeof(srb.cdb_or_sense));
            std::memcpy(srb.cdb_or_sense, sense.data(), sense.size());
            srb.sense_info_length = static_cast<uint8_t>(sense.size());
            srb.srb_status = static_cast<uint8_t>(
                (c.sense.key == scsi::kIllegalRequest ? kSrbInvalidRequest : kSrbError) | kSrbAutosenseValid);
            srb.data_transfer_length = 0;
            pkt.status = kStatusIoDeviceError;
        } else {
            srb.srb_status = srb_status;
            pkt.status = srb_status == kSrbSuccess ? kStatusSuccess : kStatusIoDeviceError;
        }
    }

    void complete_now(vmbus::Reservation room, uint64_t trans_id, VstorPacket pkt, uint8_t srb_status,
                      const scsi::Command& c, uint32_t transferred) {
        finish_srb(pkt, srb_status, c, transferred);
        reply(std::move(room), trans_id, pkt);
    }

    void execute_srb(const vmbus::PacketView& p, VstorPacket& pkt, vmbus::Reservation room) {
        const ScsiRequest srb = pkt.body.srb;
        scsi::Command none;
        {
            LockGuard lock(ctl_.mu_);
            if (ctl_.init_ != Init::Ready) {
                ENL_LOG_LIMITED(warn, "{}: an SRB before the end of initialization", ctl_.options_.name);
                return reply_status(std::move(room), p.trans_id, pkt, kStatusInvalidDeviceState);
            }
            ctl_.srb_seen_ = true;
        }
        // The data buffer: the GPA ranges, at most data_transfer_length of them.
        const uint64_t buffer_bytes = p.gpa_bytes();
        if (p.malformed || srb.cdb_length == 0 || srb.cdb_length > kMaxCdb || srb.data_transfer_length > buffer_bytes) {
            ENL_LOG_LIMITED(warn, "{}: a malformed SRB (cdb length {}, transfer {} of a {}-byte buffer{})",
                            ctl_.options_.name, srb.cdb_length, srb.data_transfer_length, buffer_bytes,
                            p.malformed ? ", lying ranges" : "");
            return complete_now(std::move(room), p.trans_id, pkt, kSrbInvalidRequest, none, 0);
        }
        IovecList iov;
        if (srb.data_transfer_length) {
            ranges_.clear();
            uint64_t left = srb.data_transfer_length;
            for (const auto& r : p.gpa_ranges) {
                for (uint64_t at = 0; at < r.byte_count && left;) {
                    const uint64_t gpa = r.gpa_of(at);
                    const uint64_t n = std::min({left, uint64_t{r.byte_count} - at, vmbus::kPageSize - gpa % vmbus::kPageSize});
                    ranges_.push_back({gpa, n});
                    at += n;
                    left -= n;
                }
            }
            if (auto ok = mem_.iovecs(ranges_, iov); !ok) {
                ENL_LOG_LIMITED(warn, "{}: an SRB's buffer is not guest RAM: {}", ctl_.options_.name, ok.error().message());
                return complete_now(std::move(room), p.trans_id, pkt, kSrbInvalidRequest, none, 0);
            }
        }
        const auto cdb = std::span<const uint8_t>(srb.cdb_or_sense, srb.cdb_length);
        const auto table = ctl_.luns();
        std::shared_ptr<Lun> lun;
        const bool our_target = ctl_.options_.bus == Bus::Ide
                                    ? srb.path_id == 0 && srb.target_id == ctl_.ide_target() && srb.lun == 0
                                    : srb.path_id == 0 && srb.target_id == 0;
        if (our_target && srb.lun < kMaxLuns) lun = (*table)[srb.lun];
        // An answer computed now: its data-in goes into the guest's buffer, `bytes` is reported.
        auto done_now = [&](const scsi::Command& c, uint8_t srb_status) {
            copy_to(iov, std::span(out_).first(c.data_in));
            complete_now(std::move(room), p.trans_id, pkt, srb_status, c, c.bytes);
        };
        if (cdb[0] == kOpReportLuns && ctl_.options_.bus == Bus::Scsi) {
            // REPORT LUNS is answered for every target: LUNs only on ours (§10.1 step 2).
            std::vector<uint16_t> numbers;
            if (our_target)
                for (const auto& l : *table)
                    if (l) numbers.push_back(l->number);
            return done_now(scsi::report_luns(cdb, numbers, srb.data_transfer_length, out_), kSrbSuccess);
        }
        if (!lun) {
            // INQUIRY says "no device here" in its data (forced to success by storvsc, §5);
            // anything else gets INVALID_LUN, which makes Linux remove a LUN that went away (§8).
            const auto c = scsi::absent_lun(cdb, srb.data_transfer_length, out_);
            if (c.status == scsi::kCheckCondition && cdb[0] != kOpInquiry)
                return complete_now(std::move(room), p.trans_id, pkt, kSrbInvalidLun, none, 0);
            return done_now(c, kSrbSuccess);
        }
        lun->requests.fetch_add(1, std::memory_order_relaxed);
        auto c = scsi::decode(lun->params, cdb, srb.data_transfer_length, out_);
        unmap_.clear();
        if (c.kind == scsi::Command::Kind::DataOut) {
            // UNMAP's parameter list (or MODE SELECT's pages) comes from the guest's buffer.
            std::vector<uint8_t> data(std::min<uint64_t>(c.data_out, srb.data_transfer_length));
            data.resize(copy_from(iov, data));
            c = scsi::finish_data_out(lun->params, cdb, data, unmap_);
        } else if (c.kind == scsi::Command::Kind::Unmap) {
            unmap_.push_back({c.lba, c.blocks});  // WRITE SAME(16) with UNMAP: one range
        }
        if (c.kind == scsi::Command::Kind::Done) {
            if (c.status != scsi::kGood) lun->errors.fetch_add(1, std::memory_order_relaxed);
            return done_now(c, kSrbSuccess);
        }
        // The backend's part: a slot keeps the request until its completions come.
        const uint32_t s = free_.back();
        free_.pop_back();
        in_flight_.fetch_add(1, std::memory_order_relaxed);
        Slot& slot = slots_[s];
        slot.trans_id = p.trans_id;
        slot.request = pkt;
        slot.room = std::move(room);
        slot.lun = lun;
        slot.cmd = c;
        slot.pending = 0;
        slot.error = 0;
        slot.started_ns = now_ns();
        slot.iov = std::move(iov);
        const uint32_t bs = lun->params.block_size;
        DiskQueue* dq = disk_queue(lun);
        auto submit = [&](disk::Request r) -> Result<> {
            r.tag = s;
            if (!dq) return fail(Errc::Io, "no disk queue");
            auto ok = dq->queue->submit(r);
            if (ok) ++slot.pending;
            return ok;
        };
        Result<> submitted;
        switch (c.kind) {
            case scsi::Command::Kind::Read:
            case scsi::Command::Kind::Write: {
                const uint64_t bytes = uint64_t{c.blocks} * bs;  // == c.bytes, within the buffer
                trim(slot.iov, bytes);
                slot.transferred = c.bytes;
                const bool write = c.kind == scsi::Command::Kind::Write;
                (write ? lun->writes : lun->reads).fetch_add(1, std::memory_order_relaxed);
                if (bytes == 0) break;  // nothing to move: GOOD
                submitted = submit({write ? disk::Op::Write : disk::Op::Read, c.lba * bs, 0, slot.iov, c.fua, 0});
                break;
            }
            case scsi::Command::Kind::Flush:
                slot.transferred = 0;
                lun->flushes.fetch_add(1, std::memory_order_relaxed);
                submitted = submit({disk::Op::Flush, 0, 0, {}, false, 0});
                break;
            case scsi::Command::Kind::Unmap:
                slot.transferred = c.bytes;
                lun->unmaps.fetch_add(1, std::memory_order_relaxed);
                for (const auto& r : unmap_) {
                    submitted = submit({disk::Op::Discard, r.lba * bs, uint64_t{r.blocks} * bs, {}, false, 0});
                    if (!submitted) break;
                }
                break;
            default: break;
        }
        if (!submitted) slot.error = -(submitted.error().sys_errno() ? submitted.error().sys_errno() : EIO);
        if (dq) dq->queue->kick();
        if (slot.pending == 0) finish(s);
    }

    // The disk queue of `lun` on this worker, opened at its first request.
    DiskQueue* disk_queue(const std::shared_ptr<Lun>& lun) {
        auto it = disk_queues_.find(lun->serial);
        if (it != disk_queues_.end()) return &it->second;
        prune();
        auto q = lun->disk->open_queue(depth_);
        if (!q) {
            ENL_LOG_LIMITED(error, "{}: disk {}: {}", ctl_.options_.name, lun->cfg.id, q.error().message());
            return nullptr;
        }
        DiskQueue dq;
        dq.queue = std::move(*q);
        dq.lun = lun;
        const uint64_t key = lun->serial;
        auto w = loop().watch(dq.queue->completion_fd(), EPOLLIN, [this, key](uint32_t) { reap(key); });
        if (!w) return nullptr;
        dq.watch = *w;
        return &disk_queues_.emplace(key, std::move(dq)).first->second;
    }

    // Closes the queues of LUNs that are gone (removed, or their image replaced by a
    // checkpoint): no request holds their Lun any more, so none is in flight on them. Not
    // inside a reap() (that queue must outlive it).
    void prune() {
        if (reaping_) return;
        std::erase_if(disk_queues_, [this](auto& kv) {
            if (!kv.second.lun.expired()) return false;
            loop().unwatch(kv.second.watch);
            return true;
        });
    }

    void reap(uint64_t key) {
        auto it = disk_queues_.find(key);
        if (it == disk_queues_.end()) return;
        // finish() may complete the last request of a closing channel: the queue being reaped
        // must outlive this loop, so teardown waits for its end.
        reaping_ = true;
        it->second.queue->reap([this](const disk::Completion& c) {
            if (c.tag >= slots_.size()) return;
            const auto s = static_cast<uint32_t>(c.tag);
            Slot& slot = slots_[s];
            if (c.result < 0 && slot.error == 0) slot.error = c.result;
            if ((slot.cmd.kind == scsi::Command::Kind::Read || slot.cmd.kind == scsi::Command::Kind::Write) &&
                c.result >= 0 && static_cast<uint64_t>(c.result) != slot.cmd.bytes && slot.error == 0)
                slot.error = -EIO;  // a short transfer
            if (--slot.pending == 0) finish(s);
        });
        reaping_ = false;
        if (closing_) return maybe_finish();
        // Room for more: packets left in the guest's ring while every slot was busy.
        drain();
    }

    // A request's backend work is done: its completion goes into the room set aside for it.
    void finish(uint32_t s) {
        Slot& slot = slots_[s];
        Lun& lun = *slot.lun;
        lun.latency_ns.fetch_add(now_ns() - slot.started_ns, std::memory_order_relaxed);
        scsi::Command c;  // GOOD
        if (slot.error) {
            lun.errors.fetch_add(1, std::memory_order_relaxed);
            c.status = scsi::kCheckCondition;
            const bool write = slot.cmd.kind != scsi::Command::Kind::Read;
            if (slot.error == -ENOSPC || slot.error == -EDQUOT)
                c.sense = {scsi::kDataProtect, 0x27, 0x07};  // space allocation failed
            else
                c.sense = {scsi::kMediumError, write ? scsi::kAscWriteError : scsi::kAscUnrecoveredReadError, 0x00};
            ENL_LOG_LIMITED(warn, "{}: disk {}: I/O error {}", ctl_.options_.name, lun.cfg.id, std::strerror(static_cast<int>(-slot.error)));
        } else if (slot.cmd.kind == scsi::Command::Kind::Read) {
            lun.bytes_read.fetch_add(slot.transferred, std::memory_order_relaxed);
        } else if (slot.cmd.kind == scsi::Command::Kind::Write) {
            lun.bytes_written.fetch_add(slot.transferred, std::memory_order_relaxed);
        }
        VstorPacket pkt = slot.request;
        finish_srb(pkt, kSrbSuccess, c, slot.transferred);
        reply(std::move(slot.room), slot.trans_id, pkt);
        slot.lun.reset();
        slot.iov.clear();
        free_.push_back(s);
        in_flight_.fetch_sub(1, std::memory_order_relaxed);
        maybe_finish();
    }

    void try_bus_change() {
        if (index_ != 0 || closing_) return;
        {
            LockGuard lock(ctl_.mu_);
            if (!ctl_.bus_change_pending_ || ctl_.init_ != Init::Ready || !ctl_.srb_seen_) return;
        }
        VstorPacket pkt{};
        pkt.operation = kOpEnumerateBus;
        const iovec iov = iov_of(as_bytes(pkt));
        // Unsolicited: trans_id 0, no completion asked for (§2).
        if (q_->send(vmbus::OutPacket::inband(0, std::span(&iov, 1)))) {
            LockGuard lock(ctl_.mu_);
            ctl_.bus_change_pending_ = false;
        }
    }

    void maybe_finish() {
        if (!closing_ || reaping_ || in_flight_.load() != 0 || !close_done_) return;
        for (auto& [key, dq] : disk_queues_) loop().unwatch(dq.watch);
        disk_queues_.clear();
        q_.reset();
        auto done = std::move(close_done_);
        close_done_ = nullptr;
        ctl_.worker_finished(index_);
        done();
    }

    Controller& ctl_;
    const uint16_t index_;
    std::shared_ptr<vmbus::ChannelQueue> q_;
    const GuestMemory& mem_;
    std::unique_ptr<EventLoopThread> thread_;
    const uint32_t depth_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    std::map<uint64_t, DiskQueue> disk_queues_;  // by Lun::serial
    std::vector<uint8_t> out_;              // immediate data-in
    std::vector<GuestRange> ranges_;        // scratch
    std::vector<scsi::UnmapRange> unmap_;   // scratch
    EventLoop::WatchId notify_watch_ = 0;
    bool closing_ = false;
    bool reaping_ = false;  // inside a disk queue's reap(): that queue must not be destroyed
    vmbus::CloseDone close_done_;
    std::atomic<uint32_t> target_vp_{0};
    std::atomic<uint64_t> requests_{0};
    std::atomic<uint32_t> in_flight_{0};
};

// ---------------------------------------------------------------------------- Controller

Controller::Controller(ControllerOptions options) : options_(std::move(options)) {
    offer_.name = options_.name;
    offer_.class_id = vmbus::Guid::parse(options_.bus == Bus::Scsi ? kScsiClass : kIdeClass);
    offer_.instance_id = options_.instance;
    offer_.max_packet_to_guest = kMaxPacketToGuest;
    // A GPA-direct SRB: descriptor, range header, one range of up to max_transfer / 4 KiB + 1
    // pages, the vstor packet; room for a few more ranges than Linux ever sends.
    offer_.max_packet_from_guest = 256 + 8 * (options_.max_transfer_bytes / vmbus::kPageSize + 8);
    LockGuard lock(mu_);
    luns_ = std::make_shared<const std::array<std::shared_ptr<Lun>, kMaxLuns>>();
}

Controller::~Controller() = default;

uint8_t Controller::ide_target() const { return options_.instance.bytes[4]; }

Result<std::shared_ptr<Controller::Lun>> Controller::open_lun(const DiskConfig& cfg, uint8_t number,
                                                              const ControllerOptions& o) {
    disk::OpenOptions oo;
    oo.path = cfg.path;
    oo.format = cfg.format;
    oo.read_only = cfg.read_only;
    oo.writethrough = cfg.writethrough;
    oo.accept_changed_parent = cfg.accept_changed_parent;
    ENL_TRY(auto d, disk::open_disk(oo));
    auto lun = std::make_shared<Lun>();
    lun->cfg = cfg;
    lun->number = number;
    lun->disk = std::move(d);
    static std::atomic<uint64_t> next_serial{1};
    lun->serial = next_serial.fetch_add(1, std::memory_order_relaxed);
    const auto& info = lun->disk->info();
    scsi::DiskParams& p = lun->params;
    p.block_size = info.logical_block;
    p.physical_block_size = std::max(info.physical_block, info.logical_block);
    p.blocks = info.size_bytes / info.logical_block;
    p.read_only = cfg.read_only || info.read_only;
    p.write_cache = info.volatile_cache;
    p.fua = info.fua;
    p.discard = info.discard && !p.read_only;
    p.max_transfer_blocks = o.max_transfer_bytes / info.logical_block;
    p.max_unmap_blocks = p.discard ? (1u << 30) / info.logical_block : 0;
    p.unmap_granularity_blocks = p.discard ? std::max<uint32_t>(1, info.discard_granularity / info.logical_block) : 0;
    p.serial = cfg.serial.empty() ? cfg.id : cfg.serial;
    p.naa_id = disk_wwn(cfg);
    if (p.blocks == 0) return fail(Errc::Invalid, "disk {} ({}) is smaller than one block", cfg.id, cfg.path);
    return lun;
}

Result<std::shared_ptr<Controller>> Controller::create(ControllerOptions options, const std::vector<DiskConfig>& disks) {
    if (options.bus == Bus::Ide && disks.size() != 1) return fail(Errc::Invalid, "an IDE channel holds exactly one disk");
    if (disks.size() > kMaxLuns) return fail(Errc::Invalid, "{} disks on one controller; at most {}", disks.size(), kMaxLuns);
    if (options.bus == Bus::Ide) options.max_subchannels = 0;
    std::shared_ptr<Controller> c(new Controller(std::move(options)));
    auto table = std::make_shared<std::array<std::shared_ptr<Lun>, kMaxLuns>>();
    for (size_t i = 0; i < disks.size(); ++i) {
        ENL_TRY(auto lun, open_lun(disks[i], static_cast<uint8_t>(i), c->options_));
        (*table)[i] = std::move(lun);
    }
    LockGuard lock(c->mu_);
    c->luns_ = std::move(table);
    return c;
}

std::shared_ptr<const std::array<std::shared_ptr<Controller::Lun>, kMaxLuns>> Controller::luns() const {
    LockGuard lock(mu_);
    return luns_;
}

bool Controller::has_disk(std::string_view id) const {
    for (const auto& l : *luns())
        if (l && l->cfg.id == id) return true;
    return false;
}

Result<uint8_t> Controller::add_disk(const DiskConfig& disk) {
    if (options_.bus != Bus::Scsi) return fail(Errc::Invalid, "{}: disks are added to a SCSI controller", options_.name);
    if (disk.id.empty()) return fail(Errc::Invalid, "a disk needs an id");
    if (has_disk(disk.id)) return fail(Errc::Invalid, "{}: there is a disk '{}' already", options_.name, disk.id);
    // Find the slot first, open the image outside the lock, then publish.
    uint8_t number = 0;
    {
        auto table = luns();
        while (number < kMaxLuns && (*table)[number]) ++number;
        if (number == kMaxLuns) return fail(Errc::Busy, "{}: all {} LUNs are in use", options_.name, kMaxLuns);
    }
    ENL_TRY(auto lun, open_lun(disk, number, options_));
    std::shared_ptr<Worker> primary;
    {
        LockGuard lock(mu_);
        if ((*luns_)[number]) return fail(Errc::Busy, "{}: LUN {} was taken meanwhile", options_.name, number);
        auto next = std::make_shared<std::array<std::shared_ptr<Lun>, kMaxLuns>>(*luns_);
        (*next)[number] = std::move(lun);
        luns_ = std::move(next);
        bus_change_pending_ = true;
        if (!workers_.empty()) primary = workers_[0];
    }
    if (primary) primary->send_bus_change();
    log::info("{}: disk '{}' ({}) added as LUN {}", options_.name, disk.id, disk.path, number);
    return number;
}

Result<> Controller::remove_disk(std::string_view id) {
    if (options_.bus != Bus::Scsi) return fail(Errc::Invalid, "{}: disks are removed from a SCSI controller", options_.name);
    std::shared_ptr<Worker> primary;
    {
        LockGuard lock(mu_);
        auto next = std::make_shared<std::array<std::shared_ptr<Lun>, kMaxLuns>>(*luns_);
        bool found = false;
        for (auto& l : *next)
            if (l && l->cfg.id == id) {
                l.reset();  // requests in flight keep their own reference
                found = true;
            }
        if (!found) return fail(Errc::NotFound, "{}: no disk '{}'", options_.name, id);
        luns_ = std::move(next);
        bus_change_pending_ = true;
        if (!workers_.empty()) primary = workers_[0];
    }
    if (primary) primary->send_bus_change();
    log::info("{}: disk '{}' removed", options_.name, id);
    return {};
}

std::shared_ptr<disk::Disk> Controller::disk(std::string_view id) const {
    for (const auto& l : *luns())
        if (l && l->cfg.id == id) return l->disk;
    return nullptr;
}

Result<> Controller::pause(std::chrono::milliseconds timeout) {
    if (paused_.exchange(true)) return fail(Errc::Busy, "{}: paused already", options_.name);
    std::vector<std::shared_ptr<Worker>> workers;
    {
        LockGuard lock(mu_);
        for (const auto& w : workers_)
            if (w) workers.push_back(w);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    // A worker may be taking a request right now: once a task posted after the flag has run,
    // each worker sees the flag before it takes another.
    for (const auto& w : workers) {
        auto seen = std::make_shared<std::promise<void>>();
        auto f = seen->get_future();
        w->run([seen] { seen->set_value(); });
        if (f.wait_until(deadline) != std::future_status::ready) {
            resume();
            return fail(Errc::Timeout, "{}: a channel's worker did not answer", options_.name);
        }
    }
    for (;;) {
        uint32_t busy = 0;
        for (const auto& w : workers) busy += w->status().in_flight;
        if (busy == 0) return {};
        if (std::chrono::steady_clock::now() >= deadline) {
            resume();
            return fail(Errc::Timeout, "{}: {} requests still in flight after {} ms", options_.name, busy, timeout.count());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void Controller::resume() {
    paused_.store(false, std::memory_order_release);
    std::vector<std::shared_ptr<Worker>> workers;
    {
        LockGuard lock(mu_);
        for (const auto& w : workers_)
            if (w) workers.push_back(w);
    }
    for (const auto& w : workers) w->resume();
}

Result<> Controller::replace_image(std::string_view id, const ImageSwitch& s) {
    if (!paused_.load()) return fail(Errc::Invalid, "{}: replace_image needs the controller paused", options_.name);
    std::shared_ptr<Lun> old;
    for (const auto& l : *luns())
        if (l && l->cfg.id == id) old = l;
    if (!old) return fail(Errc::NotFound, "{}: no disk '{}'", options_.name, id);
    if (old->cfg.path != s.from)
        return fail(Errc::Busy, "{}: disk '{}' is on {}, not {}", options_.name, id, old->cfg.path, s.from);
    const std::string& path = s.to;
    DiskConfig cfg = old->cfg;
    cfg.path = path;
    cfg.format = s.format;
    cfg.accept_changed_parent = s.accept_changed_parent;
    ENL_TRY(auto lun, open_lun(cfg, old->number, options_));
    if (lun->params.blocks != old->params.blocks || lun->params.block_size != old->params.block_size)
        return fail(Errc::Invalid, "disk '{}': {} has {} blocks of {} bytes, the disk {} of {}", id, path,
                    lun->params.blocks, lun->params.block_size, old->params.blocks, old->params.block_size);
    // The same disk to the guest: its identity, and what it was told of the cache.
    lun->params.naa_id = old->params.naa_id;
    lun->params.serial = old->params.serial;
    lun->params.read_only = old->params.read_only;
    for (auto [to, from] : {std::pair{&lun->requests, &old->requests}, {&lun->reads, &old->reads},
                            {&lun->writes, &old->writes}, {&lun->flushes, &old->flushes}, {&lun->unmaps, &old->unmaps},
                            {&lun->bytes_read, &old->bytes_read}, {&lun->bytes_written, &old->bytes_written},
                            {&lun->errors, &old->errors}, {&lun->latency_ns, &old->latency_ns}})
        to->store(from->load());
    {
        LockGuard lock(mu_);
        auto next = std::make_shared<std::array<std::shared_ptr<Lun>, kMaxLuns>>(*luns_);
        if ((*next)[old->number] != old) return fail(Errc::NotFound, "{}: disk '{}' went away", options_.name, id);
        (*next)[old->number] = std::move(lun);
        luns_ = std::move(next);
    }
    log::info("{}: disk '{}' now on {}", options_.name, id, path);
    return {};
}

std::vector<DiskStatus> Controller::disks() const {
    std::vector<DiskStatus> out;
    for (const auto& l : *luns()) {
        if (!l) continue;
        DiskStatus s;
        s.id = l->cfg.id;
        s.path = l->cfg.path;
        s.format = l->disk->info().format;
        s.lun = l->number;
        s.read_only = l->params.read_only;
        s.direct = l->disk->info().direct;
        s.write_cache = l->params.write_cache;
        s.size_bytes = l->params.blocks * l->params.block_size;
        s.block_size = l->params.block_size;
        s.counters = {l->requests.load(), l->reads.load(), l->writes.load(), l->flushes.load(), l->unmaps.load(),
                      l->bytes_read.load(), l->bytes_written.load(), l->errors.load(), l->latency_ns.load()};
        out.push_back(std::move(s));
    }
    return out;
}

std::vector<ChannelStatus> Controller::channels() const {
    std::vector<ChannelStatus> out;
    LockGuard lock(mu_);
    for (const auto& w : workers_)
        if (w) out.push_back(w->status());
    return out;
}

void Controller::attach(const vmbus::DeviceResources& resources) { resources_ = resources; }

void Controller::detach() { resources_ = {}; }

void Controller::reset() {
    LockGuard lock(mu_);
    init_ = Init::None;
    version_ = 0;
    srb_seen_ = false;
    bus_change_pending_ = false;
}

void Controller::open(const vmbus::OpenRequest& request, std::shared_ptr<vmbus::ChannelQueue> queue, vmbus::OpenDone done) {
    if (!resources_.memory) return done(fail(Errc::Closed, "{}: not attached", options_.name));
    auto thread = EventLoopThread::start(fmt::format("{}-{}", options_.name, request.index), sandbox::ThreadKind::DiskIo);
    if (!thread) return done(std::unexpected(thread.error()));
    auto w = std::make_shared<Worker>(*this, request.index, std::move(queue), *resources_.memory, std::move(*thread));
    w->retarget(request.target_vp);
    {
        LockGuard lock(mu_);
        if (workers_.size() <= request.index) workers_.resize(request.index + 1u);
        workers_[request.index] = w;
        if (request.index == 0) {
            // A new open of the primary starts the protocol over (§4, re-initialization).
            init_ = Init::None;
            version_ = 0;
            srb_seen_ = false;
        }
    }
    w->start(std::move(done));
}

void Controller::close(uint16_t index, vmbus::CloseDone done) {
    std::shared_ptr<Worker> w;
    {
        LockGuard lock(mu_);
        if (index < workers_.size()) w = workers_[index];
    }
    if (!w) return done();
    w->close(std::move(done));
}

void Controller::retarget(uint16_t index, uint32_t vp) {
    LockGuard lock(mu_);
    if (index < workers_.size() && workers_[index]) workers_[index]->retarget(vp);
}

// On the worker's thread: its thread is joined on the control loop.
void Controller::worker_finished(uint16_t index) {
    if (!resources_.loop) return;
    resources_.loop->post([self = shared_from_this(), index] {
        std::shared_ptr<Worker> w;
        {
            LockGuard lock(self->mu_);
            if (index < self->workers_.size()) w = std::move(self->workers_[index]);
        }
        w.reset();  // joins the worker's thread
    });
}

}  // namespace enlighten::storvsp
