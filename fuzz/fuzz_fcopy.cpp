// Fuzzes file copy: the guest's answers (fcopy_answer_status) and guest paths
// (split_guest_path) directly, and the protocol engine of one copy against answers in any
// order, with any status, type, body, unknown ids, timeouts and closes, checking its
// invariants. (fuzz_ic drives the service's channel, two requests in flight, with packets
// written into its ring.)
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "devices/ic/fcopy.hpp"
#include "fuzz_input.hpp"

using namespace enlighten;
using namespace enlighten::ic;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            std::fprintf(stderr, "CHECK failed at line %d: %s\n", __LINE__, #cond); \
            __builtin_trap();                                              \
        }                                                                  \
    } while (0)

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    enlighten::log::set_level(enlighten::log::Level::Off);
    return 0;
}

namespace {

IcResponse any_answer(fuzz::Input& in) {
    IcResponse r;
    r.status = in.take<uint32_t>();
    r.msg_type = in.take<uint16_t>();
    const auto body = in.take_bytes(in.take<uint16_t>() % 8200U);
    r.body.assign(body.begin(), body.end());
    return r;
}

// One copy: requests go out as the engine allows, answers come as the input says.
void engine(fuzz::Input& in) {
    const uint64_t size = in.take<uint32_t>() % (40 * kFcopyChunk);
    const uint8_t flags = in.take<uint8_t>();
    auto e = FcopyEngine::create("/root/fuzz.bin", size, flags & 1, flags & 2);
    CHECK(e.has_value());
    std::vector<FcopyEngine::Request> open;
    uint64_t next_offset = 0;
    bool started = false, completed = false, cancelled = false, start_seen = false;
    auto issue = [&] {
        while (auto r = e->next()) {
            CHECK(!completed && !cancelled);  // nothing after COMPLETE or CANCEL
            switch (r->op) {
                case kFcopyStart:
                    CHECK(!start_seen);
                    start_seen = true;
                    break;
                case kFcopyWrite:
                    CHECK(started && r->offset == next_offset && r->length > 0 && r->length <= kFcopyChunk);
                    next_offset += r->length;
                    CHECK(next_offset <= size);
                    CHECK(e->body(*r, std::vector<uint8_t>(r->length)).size() == offsetof(FcopyWrite, data) + r->length);
                    break;
                case kFcopyComplete:
                    CHECK(e->bytes_written() == size && open.empty());
                    completed = true;
                    break;
                case kFcopyCancel:
                    CHECK(open.empty());
                    cancelled = true;
                    break;
                default: CHECK(false);
            }
            open.push_back(*r);
            CHECK(open.size() <= kFcopyDepth);
        }
    };
    for (int steps = 0; steps < 4000 && !in.empty() && !e->finished(); ++steps) {
        issue();
        if (open.empty()) break;
        const uint8_t action = in.take<uint8_t>();
        const size_t which = in.take<uint8_t>() % open.size();
        const auto r = open[which];
        switch (action % 8) {
            case 0:  // anything at all
                CHECK(e->on_answer(r.tag, any_answer(in)));
                break;
            case 1:
                CHECK(e->on_answer(r.tag, fail(in.take<uint8_t>() & 1 ? Errc::Timeout : Errc::Closed, "fuzz")));
                break;
            case 2:  // an id that is not in flight
                CHECK(!e->on_answer(r.tag + 1000000, IcResponse{}));
                continue;
            case 3:
                e->not_sent(r.tag, Error("fuzz read error", Errc::Io));
                break;
            default: {  // the echo, with a status that is mostly OK
                const uint8_t s = in.take<uint8_t>();
                const uint32_t status = s < 200 ? kHvSOk : s < 220 ? kHvEFail : s < 240 ? kHvErrorDiskFull : kHvErrorAlreadyExists;
                CHECK(e->on_answer(r.tag, IcResponse{status, kIcFcopy, e->body(r, std::vector<uint8_t>(r.length))}));
                break;
            }
        }
        if (r.op == kFcopyStart)
            started = e->phase() == FcopyEngine::Phase::Write || e->phase() == FcopyEngine::Phase::Complete;
        open.erase(open.begin() + static_cast<std::ptrdiff_t>(which));
        CHECK(e->in_flight().size() == open.size());
    }
    // Whatever happened, a guest that answers everything now brings it to an end.
    for (int steps = 0; steps < 100000 && !e->finished(); ++steps) {
        issue();
        CHECK(!open.empty());
        const auto r = open.front();
        open.erase(open.begin());
        if (r.op == kFcopyStart) started = true;
        CHECK(e->on_answer(r.tag, IcResponse{kHvSOk, kIcFcopy, e->body(r, std::vector<uint8_t>(r.length))}));
    }
    CHECK(e->finished());
    CHECK(e->bytes_written() <= size);
    if (e->outcome()) CHECK(completed && !cancelled && e->bytes_written() == size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::Input in(data, size);
    const auto status = any_answer(in);
    (void)fcopy_answer_status(in.take<uint8_t>() % 5U, status);
    const auto path = in.take_bytes(in.take<uint16_t>() % 600U);
    (void)split_guest_path(std::string_view(reinterpret_cast<const char*>(path.data()), path.size()));
    engine(in);
    return 0;
}
