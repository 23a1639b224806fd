// File copy (Hyper-V's Guest Service Interface, what Copy-VMFile uses): the host pushes a
// file into the guest. The guest's hv_utils (drivers/hv/hv_fcopy.c) hands every request to
// hv_fcopy_daemon (tools/hv/hv_fcopy_daemon.c), which writes "<path_name>/<file_name>".
// The facts and the host's sequence are in ../shared/contract-services.md §1 and §3:
// START_FILE_COPY, WRITE_TO_FILE at increasing offsets, COMPLETE_FCOPY; CANCEL_FCOPY (the
// daemon closes and removes the file) after a failure.
//
// FcopyEngine is the protocol of one copy without I/O (which request goes next, what an
// answer means), so it is tested and fuzzed on its own. FcopyService is the channel (an
// IcDevice) and runs one copy at a time: copy() reads the host file on the calling thread
// and hands each request to the control loop, at most two unanswered (§1.3).
//
// Threads: FcopyEngine is a plain object (one thread at a time). FcopyService: the IcDevice
// hooks on the control loop; copy() on any thread but the loop's (it blocks until the copy
// ends: minutes for a large file); progress() anywhere. Its mutex is a leaf, never held
// while calling the IcDevice or waiting.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "devices/ic/ic_device.hpp"

namespace enlighten::ic {

inline constexpr const char* kFcopyClass = "34d14be3-dee4-41c8-9ae7-6b174977c192";  // HV_FCOPY_GUID
// hv_fcopy.c accepts framework 3.0 (kFrameworkVersions) and file copy 1.1 only.
inline constexpr uint32_t kFcopyVersions[] = {0x10001};
// The guest's max_pkt_size for this channel (hv_fcopy_init: 2 pages); its answers echo our
// requests, so the same bound holds for what it sends.
inline constexpr uint32_t kFcopyMaxPacket = 8192;
// The guest's rings (HV_UTIL_RING_SEND_SIZE / RECV_SIZE): 3 pages of data each way.
inline constexpr size_t kFcopyGuestRingData = 3 * 4096;
// The longest name the guest takes in each of file_name and path_name: hv_fcopy.c converts
// each from UTF-16 into W_MAX_PATH - 1 bytes of UTF-8 and silently cuts what is longer.
inline constexpr size_t kFcopyMaxNameUtf8 = kFcopyMaxPath - 1;

// The ring bytes of a WRITE_TO_FILE with n data bytes (descriptor, IC header, the write's
// fields, data, padding to 8, the ring's 8-byte trailer). The guest answers with the same.
constexpr size_t fcopy_write_ring_bytes(size_t n) {
    return (16 + kIcHeaderSize + offsetof(FcopyWrite, data) + n + 7) / 8 * 8 + 8;
}
// Data bytes per WRITE_TO_FILE. DATA_FRAGMENT would allow 6144, but the guest answers every
// request with a copy of it and ignores the error of that send (hv_fcopy.c
// fcopy_respond_to_host): an answer that does not fit its 12 KiB outbound ring is lost. With
// two requests in flight two answers can wait there at once, so each must take less than
// half the ring (a ring is never filled completely: ring_buffer.c hv_ringbuffer_write).
inline constexpr size_t kFcopyChunk = 6016;
static_assert(kFcopyChunk <= kFcopyDataFragment);
static_assert(2 * fcopy_write_ring_bytes(kFcopyChunk) < kFcopyGuestRingData);
// Requests the guest may have unanswered: one it works on and one waiting in its ring
// (hv_fcopy.c reads the next packet only after it answered, and reschedules its callback
// then: contract-services.md §1.3).
inline constexpr size_t kFcopyDepth = 2;

// "HV_E_FAIL (0x80004005)": a status from the guest, named when it is one hyperv.h names.
std::string fcopy_status_text(uint32_t status);
const char* fcopy_op_name(uint32_t op);

// The guest's answer to a request of `op`: its status, or why the answer is not one (the
// guest echoes the request with status and flags set: same message type, same operation).
Result<uint32_t> fcopy_answer_status(uint32_t op, const IcResponse& answer);

// An absolute guest path split the way the daemon joins it back ("<directory>/<file>"):
// `directory` ends with '/', so the daemon checks (and with CREATE_PATH creates) each of its
// components; `file` is the last component.
struct GuestTarget {
    std::string directory;
    std::string file;
};
Result<GuestTarget> split_guest_path(std::string_view path);

// One copy, as a sequence of requests and answers. The caller sends what next() returns
// (with body()), and gives every answer, or the transaction's error, to on_answer().
class FcopyEngine {
public:
    struct Request {
        uint64_t tag = 0;  // the caller's handle for on_answer()
        uint32_t op = 0;   // FcopyOp
        uint64_t offset = 0;
        uint32_t length = 0;  // WRITE_TO_FILE: data bytes
    };
    enum class Phase { Start, Write, Complete, Cancel, Done, Failed };

    static Result<FcopyEngine> create(std::string_view guest_path, uint64_t size, bool overwrite, bool create_path);

    // The next request to send, if one may go now (at most kFcopyDepth unanswered; nothing
    // after START until it succeeded; COMPLETE once every byte is written; after a failed
    // WRITE, or a START or WRITE not answered, CANCEL once the others are answered; nothing
    // after COMPLETE or CANCEL).
    std::optional<Request> next();
    // The request's body (after the IC header). `data`: the file's bytes of a WRITE_TO_FILE.
    [[nodiscard]] std::vector<uint8_t> body(const Request& r, std::span<const uint8_t> data) const;
    // The answer to request `tag`, or why there is none (Errc::Timeout, Errc::Closed...).
    // False if `tag` is not a request in flight (ignored).
    bool on_answer(uint64_t tag, const Result<IcResponse>& answer);
    // The caller could not send request `tag` (e.g. reading the host file failed): the copy fails.
    void not_sent(uint64_t tag, Error why);

    // Done or failed, and nothing in flight.
    [[nodiscard]] bool finished() const;
    // After finished(): Ok, or the first failure (codes: Failed for what the guest refused
    // or answered wrongly, Timeout, Closed, Io for the host file), saying what became of the
    // partial file.
    [[nodiscard]] Result<> outcome() const;
    [[nodiscard]] Phase phase() const { return phase_; }
    [[nodiscard]] uint64_t size() const { return size_; }
    [[nodiscard]] uint64_t bytes_sent() const { return next_offset_; }
    [[nodiscard]] uint64_t bytes_written() const { return written_; }
    [[nodiscard]] std::vector<uint64_t> in_flight() const;
    [[nodiscard]] const std::string& destination() const { return destination_; }

private:
    FcopyEngine() = default;
    Request issue(uint32_t op, uint64_t offset = 0, uint32_t length = 0);
    void fail(Error e, bool cancel);
    [[nodiscard]] Error guest_error(const Request& r, uint32_t status) const;

    std::string destination_;
    GuestTarget target_;
    std::vector<uint8_t> start_body_;
    uint64_t size_ = 0;
    bool create_path_ = false;

    Phase phase_ = Phase::Start;
    std::map<uint64_t, Request> in_flight_;
    uint64_t next_tag_ = 1;
    uint64_t next_offset_ = 0;
    uint64_t written_ = 0;
    bool start_sent_ = false, complete_sent_ = false, cancel_sent_ = false;
    bool cancel_ok_ = false;
    bool started_ = false;  // the guest opened the file
    std::optional<Error> error_;
};

class FcopyService final : public IcDevice {
public:
    struct Options {
        // How long the guest may take to answer one request. Its kernel answers HV_E_FAIL by
        // itself after 30 s (HV_UTIL_TIMEOUT); a WRITE may also wait behind the one before.
        std::chrono::milliseconds answer_timeout{35000};
        // How long to wait for the answer to CANCEL_FCOPY before reporting the failure (the
        // request stays queued for the guest either way).
        std::chrono::milliseconds cancel_timeout{10000};
    };
    struct Request {
        std::string source;       // host path
        std::string destination;  // absolute guest path of the file
        bool overwrite = false;
        bool create_path = false;
    };
    struct Summary {
        uint64_t bytes = 0;
        std::chrono::milliseconds elapsed{0};
    };
    enum class State { Idle, Running, Done, Failed };
    struct Progress {
        State state = State::Idle;  // of the current copy, or the last one
        std::string source, destination;
        uint64_t bytes_total = 0;
        uint64_t bytes_sent = 0;     // handed to the guest
        uint64_t bytes_written = 0;  // written by the guest's daemon (answered)
        std::chrono::milliseconds elapsed{0};
        std::string error;  // why it failed
    };

    explicit FcopyService(const char* instance_id);
    FcopyService(const char* instance_id, Options options);

    // Copies a host file into the guest; returns when it is done or failed. Refused at once
    // (nothing sent): another copy running (Errc::Busy), a bad destination (Invalid), a host
    // path that is missing (NotFound), not a regular file or not readable (Invalid), the
    // guest's service not connected (Closed). Not on the loop thread.
    Result<Summary> copy(const Request& request);
    [[nodiscard]] Progress progress() const;

private:
    Result<Summary> run(const Request& request, int fd, FcopyEngine& engine);
    void update(const FcopyEngine& engine);

    const Options options_;
    mutable Mutex mu_;
    bool running_ ENL_GUARDED_BY(mu_) = false;
    Progress progress_ ENL_GUARDED_BY(mu_);
    std::chrono::steady_clock::time_point started_ ENL_GUARDED_BY(mu_);
};

const char* to_string(FcopyService::State s);

}  // namespace enlighten::ic
