#include "devices/ic/fcopy.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/wire.hpp"
#include "devices/ic/services.hpp"

namespace enlighten::ic {

std::string fcopy_status_text(uint32_t status) {
    const char* name = nullptr;
    switch (status) {
        case kHvSOk: name = "HV_S_OK"; break;
        case kHvEFail: name = "HV_E_FAIL"; break;
        case kHvErrorAlreadyExists: name = "HV_ERROR_ALREADY_EXISTS"; break;
        case kHvErrorDiskFull: name = "HV_ERROR_DISK_FULL"; break;
        default: break;
    }
    if (!name) return fmt::format("status {:#010x}", status);
    return fmt::format("{} ({:#010x})", name, status);
}

const char* fcopy_op_name(uint32_t op) {
    switch (op) {
        case kFcopyStart: return "START_FILE_COPY";
        case kFcopyWrite: return "WRITE_TO_FILE";
        case kFcopyComplete: return "COMPLETE_FCOPY";
        case kFcopyCancel: return "CANCEL_FCOPY";
        default: return "an unknown operation";
    }
}

Result<uint32_t> fcopy_answer_status(uint32_t op, const IcResponse& answer) {
    if (answer.msg_type != kIcFcopy) return fail("it is a message of type {}, not file copy", answer.msg_type);
    const auto hdr = read_prefix<FcopyHeader>(answer.body);
    if (!hdr) return fail("its body has {} bytes, less than a file copy header", answer.body.size());
    if (hdr->operation != op) return fail("it answers operation {}, not {}", hdr->operation, op);
    return answer.status;
}

Result<GuestTarget> split_guest_path(std::string_view path) {
    if (path.empty()) return fail(Errc::Invalid, "the destination is empty");
    if (path.front() != '/')
        return fail(Errc::Invalid, "the destination '{}' is not an absolute path in the guest", path);
    if (path.back() == '/')
        return fail(Errc::Invalid, "the destination '{}' ends with '/': give the path of the file, directory included",
                    path);
    const size_t slash = path.rfind('/');
    GuestTarget t{std::string(path.substr(0, slash + 1)), std::string(path.substr(slash + 1))};
    if (t.file == "." || t.file == "..") return fail(Errc::Invalid, "the destination '{}' names a directory", path);
    for (const auto* part : {&t.directory, &t.file}) {
        if (auto u = KvpService::encode_utf16(*part, 2 * kFcopyMaxPath); !u)
            return fail(Errc::Invalid, "the destination '{}' {}", path, u.error().message());
        if (part->size() > kFcopyMaxNameUtf8)
            return fail(Errc::Invalid, "the destination's {} '{}' is {} bytes long; the guest takes at most {}",
                        part == &t.file ? "file name" : "directory", *part, part->size(), kFcopyMaxNameUtf8);
    }
    return t;
}

// ---------------------------------------------------------------------------- engine

Result<FcopyEngine> FcopyEngine::create(std::string_view guest_path, uint64_t size, bool overwrite, bool create_path) {
    ENL_TRY(GuestTarget target, split_guest_path(guest_path));
    FcopyEngine e;
    e.destination_ = std::string(guest_path);
    e.size_ = size;
    e.create_path_ = create_path;
    FcopyStart start{};
    start.hdr.operation = kFcopyStart;
    // Checked by split_guest_path: valid UTF-8, each at most 259 bytes (so at most 259
    // UTF-16 units and the NUL).
    const auto file = KvpService::encode_utf16(target.file, sizeof(start.file_name)).value();
    const auto dir = KvpService::encode_utf16(target.directory, sizeof(start.path_name)).value();
    std::memcpy(start.file_name, file.data(), file.size());
    std::memcpy(start.path_name, dir.data(), dir.size());
    start.copy_flags = (overwrite ? kFcopyOverwrite : 0) | (create_path ? kFcopyCreatePath : 0);
    start.file_size = size;
    const auto bytes = as_bytes(start);
    e.start_body_.assign(bytes.begin(), bytes.end());
    e.target_ = std::move(target);
    return e;
}

FcopyEngine::Request FcopyEngine::issue(uint32_t op, uint64_t offset, uint32_t length) {
    Request r{next_tag_++, op, offset, length};
    in_flight_.emplace(r.tag, r);
    return r;
}

std::optional<FcopyEngine::Request> FcopyEngine::next() {
    if (in_flight_.size() >= kFcopyDepth) return std::nullopt;
    switch (phase_) {
        case Phase::Start:
            if (start_sent_) return std::nullopt;
            start_sent_ = true;
            return issue(kFcopyStart);
        case Phase::Write: {
            if (next_offset_ >= size_) return std::nullopt;
            const auto n = static_cast<uint32_t>(std::min<uint64_t>(kFcopyChunk, size_ - next_offset_));
            auto r = issue(kFcopyWrite, next_offset_, n);
            next_offset_ += n;
            return r;
        }
        case Phase::Complete:
            if (complete_sent_) return std::nullopt;
            complete_sent_ = true;
            return issue(kFcopyComplete);
        case Phase::Cancel:
            // After what the guest still has: the daemon takes requests in ring order, and
            // CANCEL closes and removes the file the others write to.
            if (cancel_sent_ || !in_flight_.empty()) return std::nullopt;
            cancel_sent_ = true;
            return issue(kFcopyCancel);
        case Phase::Done:
        case Phase::Failed: break;
    }
    return std::nullopt;
}

std::vector<uint8_t> FcopyEngine::body(const Request& r, std::span<const uint8_t> data) const {
    if (r.op == kFcopyStart) return start_body_;
    FcopyHeader hdr{};
    hdr.operation = r.op;
    if (r.op != kFcopyWrite) {  // COMPLETE, CANCEL: the header alone (a longer one breaks the daemon's read)
        const auto b = as_bytes(hdr);
        return {b.begin(), b.end()};
    }
    // WRITE: the fields and only the data there is (the guest reads `size` bytes of it).
    const size_t n = std::min<size_t>({r.length, data.size(), kFcopyChunk});
    ByteWriter out(offsetof(FcopyWrite, data) + n);
    out.put(hdr).put(uint32_t{0}).put(r.offset).put(static_cast<uint32_t>(n));
    out.bytes(data.first(n));
    return out.take();
}

Error FcopyEngine::guest_error(const Request& r, uint32_t status) const {
    const std::string st = fcopy_status_text(status);
    switch (r.op) {
        case kFcopyStart:
            if (status == kHvErrorAlreadyExists)
                return Error(fmt::format("{} exists in the guest and overwrite is off (the guest answered {})",
                                         destination_, st));
            // The guest's status does not say which: its daemon answers HV_E_FAIL for a
            // missing directory and for a failed open, its kernel for a missing daemon.
            if (status == kHvEFail && create_path_)
                return Error(fmt::format("the guest could not create {} ({}): either its directory {} could not be "
                                         "created, or the file cannot be opened, or hv_fcopy_daemon is not running "
                                         "in the guest",
                                         destination_, st, target_.directory));
            if (status == kHvEFail)
                return Error(fmt::format("the guest could not create {} ({}): either its directory {} does not exist "
                                         "(create_path is off), or the file cannot be opened, or hv_fcopy_daemon is "
                                         "not running in the guest",
                                         destination_, st, target_.directory));
            return Error(fmt::format("the guest refused to copy to {} ({})", destination_, st));
        case kFcopyWrite:
            if (status == kHvErrorDiskFull)
                return Error(fmt::format("the guest's disk is full: writing {} at offset {} failed ({})", destination_,
                                         r.offset, st));
            return Error(fmt::format("the guest failed to write {} at offset {} ({}): a write error, or its "
                                     "hv_fcopy_daemon did not answer within 30 s or exited",
                                     destination_, r.offset, st));
        default:
            return Error(fmt::format("the guest failed {} for {} ({})", fcopy_op_name(r.op), destination_, st));
    }
}

void FcopyEngine::fail(Error e, bool cancel) {
    if (e.is(Errc::Closed)) cancel = false;  // nothing can be sent any more
    if (!error_) error_ = std::move(e);
    if (phase_ == Phase::Failed) return;                   // decided already (e.g. the channel closed)
    if (phase_ == Phase::Cancel && cancel_sent_) return;  // the CANCEL's answer ends it
    phase_ = cancel && !cancel_sent_ ? Phase::Cancel : Phase::Failed;
}

bool FcopyEngine::on_answer(uint64_t tag, const Result<IcResponse>& answer) {
    auto it = in_flight_.find(tag);
    if (it == in_flight_.end()) return false;
    const Request r = it->second;
    in_flight_.erase(it);
    const std::string what = r.op == kFcopyWrite ? fmt::format("WRITE_TO_FILE at offset {}", r.offset)
                                                  : std::string(fcopy_op_name(r.op));
    // After a failed WRITE, or a START whose fate is unknown, the daemon may hold a partial
    // file: CANCEL removes it. Not after COMPLETE: the daemon clears its file name when it
    // closes, so a CANCEL queued behind a COMPLETE removes nothing and only closes a stale fd.
    const bool unknown_fate_cancels = r.op != kFcopyComplete;
    if (r.op == kFcopyCancel) {
        cancel_ok_ = answer && fcopy_answer_status(r.op, *answer) == kHvSOk;
        phase_ = Phase::Failed;
        return true;
    }
    if (!answer) {
        // A timeout: the guest may still act on the request, so cancel what it may have made
        // (after START too). Closed: nothing can be sent.
        const Error& e = answer.error();
        std::string text;
        if (e.is(Errc::Timeout))
            text = fmt::format("the guest did not answer {} for {} in time ({})", what, destination_, e.message());
        else if (e.is(Errc::Closed))
            text = fmt::format("the file copy channel closed during {} for {} ({})", what, destination_, e.message());
        else
            text = fmt::format("{} for {} failed: {}", what, destination_, e.message());
        fail(Error(std::move(text), e.code()), unknown_fate_cancels);
        return true;
    }
    auto status = fcopy_answer_status(r.op, *answer);
    if (!status) {
        fail(Error(fmt::format("the guest's answer to {} for {} is malformed: {}", what, destination_,
                               status.error().message())),
             unknown_fate_cancels);
        return true;
    }
    if (*status != kHvSOk) {
        // A refused START left no file open in the daemon; a refused WRITE did.
        fail(guest_error(r, *status), r.op == kFcopyWrite);
        return true;
    }
    switch (r.op) {
        case kFcopyStart:
            started_ = true;
            if (phase_ == Phase::Start) phase_ = size_ ? Phase::Write : Phase::Complete;
            break;
        case kFcopyWrite:
            written_ += r.length;
            if (phase_ == Phase::Write && written_ == size_) phase_ = Phase::Complete;
            break;
        case kFcopyComplete:
            if (phase_ == Phase::Complete) phase_ = Phase::Done;
            break;
        default: break;
    }
    return true;
}

void FcopyEngine::not_sent(uint64_t tag, Error why) {
    auto it = in_flight_.find(tag);
    if (it == in_flight_.end()) return;
    const uint32_t op = it->second.op;
    in_flight_.erase(it);
    if (op == kFcopyCancel) {  // the end either way
        if (!error_) error_ = std::move(why);
        cancel_sent_ = false;
        phase_ = Phase::Failed;
        return;
    }
    // An unsent START left the guest nothing to remove; an unsent COMPLETE is handled as a
    // failed one (no CANCEL after COMPLETE); after an unsent WRITE the guest holds a partial file.
    fail(std::move(why), op == kFcopyWrite);
}

bool FcopyEngine::finished() const {
    return in_flight_.empty() && (phase_ == Phase::Done || phase_ == Phase::Failed);
}

Result<> FcopyEngine::outcome() const {
    if (phase_ == Phase::Done) return {};
    Error e = error_.value_or(Error("the copy did not finish"));
    std::string fate;
    if (complete_sent_ && !cancel_sent_)
        fate = "; every byte was written, but the guest did not confirm closing the file";
    else if (cancel_ok_)
        fate = "; CANCEL_FCOPY was sent and the guest removed the partial file";
    else if (cancel_sent_)
        fate = "; CANCEL_FCOPY was sent but not answered: the partial file may remain in the guest";
    else if (started_)
        fate = "; the partial file may remain in the guest";
    return std::unexpected(Error(e.message() + fate, e.code(), e.sys_errno()));
}

std::vector<uint64_t> FcopyEngine::in_flight() const {
    std::vector<uint64_t> tags;
    for (const auto& [tag, r] : in_flight_) tags.push_back(tag);
    return tags;
}

// ---------------------------------------------------------------------------- service

const char* to_string(FcopyService::State s) {
    switch (s) {
        case FcopyService::State::Idle: return "idle";
        case FcopyService::State::Running: return "running";
        case FcopyService::State::Done: return "done";
        case FcopyService::State::Failed: return "failed";
    }
    return "unknown";
}

FcopyService::FcopyService(const char* instance_id) : FcopyService(instance_id, Options{}) {}

FcopyService::FcopyService(const char* instance_id, Options options)
    : IcDevice(ic_offer("fcopy", kFcopyClass, instance_id, kFcopyMaxPacket), kIcFcopy,
               {std::begin(kFcopyVersions), std::end(kFcopyVersions)}, kFcopyDepth),
      options_(options) {}

FcopyService::Progress FcopyService::progress() const {
    LockGuard lock(mu_);
    Progress p = progress_;
    if (running_)
        p.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_);
    return p;
}

void FcopyService::update(const FcopyEngine& engine) {
    LockGuard lock(mu_);
    progress_.bytes_sent = engine.bytes_sent();
    progress_.bytes_written = engine.bytes_written();
}

namespace {

// The answers of one copy's requests, as the loop delivers them to the copying thread.
struct Inbox {
    Mutex mu;
    std::condition_variable_any cv;
    std::deque<std::pair<uint64_t, Result<IcResponse>>> answers ENL_GUARDED_BY(mu);
    void put(uint64_t tag, Result<IcResponse> r) {
        {
            LockGuard lock(mu);
            answers.emplace_back(tag, std::move(r));
        }
        cv.notify_all();
    }
};

// A transaction's callback: the answer goes to the inbox; if the callback is destroyed
// without being called (the loop stopped and dropped it), Errc::Closed does.
struct Deliver {
    std::shared_ptr<Inbox> inbox;
    uint64_t tag;
    Deliver(std::shared_ptr<Inbox> i, uint64_t t) : inbox(std::move(i)), tag(t) {}
    Deliver(Deliver&&) = default;
    Deliver& operator=(Deliver&&) = default;
    ~Deliver() {
        if (inbox) inbox->put(tag, fail(Errc::Closed, "the VM stopped before the guest answered"));
    }
    void operator()(Result<IcResponse> r) { std::exchange(inbox, nullptr)->put(tag, std::move(r)); }
};

// Opens the host file for reading: a regular file, or a clear reason why not.
Result<std::pair<UniqueFd, uint64_t>> open_source(const std::string& path) {
    if (path.empty()) return fail(Errc::Invalid, "the source is empty");
    // O_NONBLOCK: a FIFO must not block the open; it is refused below.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd.valid()) {
        const int err = errno;
        if (err == ENOENT || err == ENOTDIR) return fail(Errc::NotFound, "no host file {}", path);
        return fail(Errc::Invalid, "cannot open the host file {}: {}", path, std::strerror(err));
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) return fail(Errc::Invalid, "cannot stat the host file {}: {}", path, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(Errc::Invalid, "the host path {} is not a regular file", path);
    return std::pair{std::move(fd), static_cast<uint64_t>(st.st_size)};
}

// Reads exactly data.size() bytes at `offset`.
Result<> read_at(int fd, const std::string& path, uint64_t offset, std::span<uint8_t> data) {
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::pread(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::unexpected(Error::from_errno(fmt::format("reading the host file {}", path)));
        if (n == 0) return fail(Errc::Io, "the host file {} became shorter during the copy (at {} bytes)", path, offset + done);
        done += static_cast<size_t>(n);
    }
    return {};
}

}  // namespace

Result<FcopyService::Summary> FcopyService::copy(const Request& request) {
    EventLoop* l = loop();
    if (l && l->in_loop_thread()) return fail(Errc::Invalid, "fcopy: a copy on the loop thread would never finish");
    {
        LockGuard lock(mu_);
        if (running_)
            return fail(Errc::Busy, "a file copy is running already: {} to {}, {} of {} bytes written", progress_.source,
                        progress_.destination, progress_.bytes_written, progress_.bytes_total);
        running_ = true;
        started_ = std::chrono::steady_clock::now();
        progress_ = Progress{State::Running, request.source, request.destination, 0, 0, 0, {}, {}};
    }
    auto finish = [&](Result<Summary> r) {
        LockGuard lock(mu_);
        running_ = false;
        progress_.state = r ? State::Done : State::Failed;
        progress_.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_);
        progress_.error = r ? std::string() : r.error().message();
        return r;
    };
    // Everything that can be refused without the guest, before anything is sent.
    if (auto target = split_guest_path(request.destination); !target) return finish(std::unexpected(target.error()));
    auto source = open_source(request.source);
    if (!source) return finish(std::unexpected(source.error()));
    auto& [fd, size] = *source;
    auto engine = FcopyEngine::create(request.destination, size, request.overwrite, request.create_path);
    if (!engine) return finish(std::unexpected(engine.error()));
    {
        LockGuard lock(mu_);
        progress_.bytes_total = size;
    }
    if (state() == IcState::Negotiating) wait_ready(std::chrono::seconds(5));
    if (state() != IcState::Ready)
        return finish(fail(Errc::Closed, "the guest's file copy service is not connected (is hv_utils loaded?)"));
    log::info("fcopy: copying {} ({} bytes) to the guest's {}", request.source, size, request.destination);
    auto r = run(request, fd.get(), *engine);
    if (r)
        log::info("fcopy: copied {} bytes to {} in {} ms", r->bytes, request.destination, r->elapsed.count());
    else
        log::warn("fcopy: copying {} to {} failed: {}", request.source, request.destination, r.error().message());
    return finish(std::move(r));
}

Result<FcopyService::Summary> FcopyService::run(const Request& request, int fd, FcopyEngine& engine) {
    const auto t0 = std::chrono::steady_clock::now();
    auto inbox = std::make_shared<Inbox>();
    std::vector<uint8_t> chunk(kFcopyChunk);
    // A bound on each wait in case the loop never answers (it always should: an answer, the
    // loop's timeout, a close, or the Deliver dropped with the loop's work).
    const auto depth = static_cast<std::chrono::milliseconds::rep>(kFcopyDepth);
    const auto wait_bound = depth * options_.answer_timeout + std::chrono::seconds(30);
    while (!engine.finished()) {
        while (auto req = engine.next()) {
            std::span<const uint8_t> data;
            if (req->op == kFcopyWrite) {
                auto span = std::span(chunk).first(req->length);
                if (auto ok = read_at(fd, request.source, req->offset, span); !ok) {
                    engine.not_sent(req->tag, ok.error());
                    continue;
                }
                data = span;
            }
            // A WRITE may wait behind the request before it, whose guest-side timer runs first.
            const auto timeout = req->op == kFcopyCancel ? options_.cancel_timeout
                                 : req->op == kFcopyWrite ? depth * options_.answer_timeout
                                                          : options_.answer_timeout;
            transact(engine.body(*req, data), timeout, Deliver(inbox, req->tag));
            update(engine);
        }
        if (engine.finished()) break;
        std::deque<std::pair<uint64_t, Result<IcResponse>>> got;
        {
            UniqueLock lock(inbox->mu);
            inbox->cv.wait_for(lock, wait_bound, [&]() ENL_NO_THREAD_SAFETY_ANALYSIS { return !inbox->answers.empty(); });
            got.swap(inbox->answers);
        }
        if (got.empty())
            for (uint64_t tag : engine.in_flight())
                got.emplace_back(tag, fail(Errc::Timeout, "no answer from the VM's loop"));
        for (auto& [tag, answer] : got) engine.on_answer(tag, answer);
        update(engine);
    }
    ENL_TRY_VOID(engine.outcome());
    return Summary{engine.size(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)};
}

}  // namespace enlighten::ic
