// hv_utils of the simulated guest for the integration-service tests: version negotiation as
// Linux 6.1 answers it (channel_mgmt.c vmbus_prep_negotiate_resp), a channel that answers
// the host's requests through a handler, and a clock the test moves.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "devices/ic/ic_device.hpp"
#include "support/sim_guest.hpp"

namespace enlighten::test {

using namespace enlighten::ic;
using namespace std::chrono_literals;


// Port of drivers/hv/channel_mgmt.c vmbus_prep_negotiate_resp(): picks the first of the
// guest's versions that the host offered; rewrites the buffer in place.
bool prep_negotiate_resp(std::vector<uint8_t>& buf, const std::vector<uint32_t>& fw, const std::vector<uint32_t>& srv,
                         uint32_t* chosen) {
    IcMsgHeader hdr;
    std::memcpy(&hdr, buf.data() + sizeof(PipeHeader), sizeof(hdr));
    IcNegotiate neg;
    std::memcpy(&neg, buf.data() + kIcHeaderSize, sizeof(neg));
    hdr.icmsgsize = 0x10;
    auto ver = [&](size_t j) {
        IcVersion v;
        std::memcpy(&v, buf.data() + kIcHeaderSize + sizeof(neg) + 4 * j, 4);
        return v;
    };
    if (buf.size() < kIcHeaderSize + sizeof(neg) + 4u * (neg.icframe_vercnt + neg.icmsg_vercnt)) return false;
    bool found = false;
    IcVersion f{}, m{};
    for (uint32_t want : fw) {
        for (size_t j = 0; j < neg.icframe_vercnt && !found; ++j)
            if (ic_version_value(ver(j)) == want) { f = ver(j); found = true; }
        if (found) break;
    }
    if (found) {
        found = false;
        for (uint32_t want : srv) {
            for (size_t j = neg.icframe_vercnt; j < size_t{neg.icframe_vercnt} + neg.icmsg_vercnt && !found; ++j)
                if (ic_version_value(ver(j)) == want) { m = ver(j); found = true; }
            if (found) break;
        }
    }
    neg.icframe_vercnt = found ? 1 : 0;
    neg.icmsg_vercnt = found ? 1 : 0;
    std::memcpy(buf.data() + kIcHeaderSize, &neg, sizeof(neg));
    std::memcpy(buf.data() + kIcHeaderSize + sizeof(neg), &f, 4);
    std::memcpy(buf.data() + kIcHeaderSize + sizeof(neg) + 4, &m, 4);
    std::memcpy(buf.data() + sizeof(PipeHeader), &hdr, sizeof(hdr));
    if (chosen) *chosen = ic_version_value(m);
    return found;
}

// hv_utils on a channel of the simulated guest: answers the requests the host wrote, in
// order, with the same transaction id, as util_probe's callbacks do. `handler` plays the
// service (and its daemon): it sets the status and may rewrite the message. Requests are
// read from the ring as they come; `answers_per_serve` of them are answered per serve()
// (1: a daemon that takes one at a time, so the host's pipelining shows in max_unanswered);
// `hold` keeps them all unanswered until it is cleared.
class GuestIc {
public:
    using Handler = std::function<void(IcMsgHeader& hdr, std::vector<uint8_t>& buf)>;
    GuestIc(SimGuest& g, std::shared_ptr<vmbus::Device> dev, std::vector<uint32_t> versions, Handler handler)
        : g_(g), versions_(std::move(versions)), handler_(std::move(handler)) {
        relid_ = g.server().add_device(std::move(dev)).value();
        if (!g.server().connected()) g.connect();
        g.sink().take();
        ch_ = g.open_channel(relid_, 3, 3);
        g.sink().take();
    }
    // Reads what the host sent and answers what it may; returns how many packets it read
    // and answered.
    int serve() {
        int n = 0;
        while (auto p = ch_.to_guest.read()) {
            ++n;
            ++requests;
            if (silent) continue;
            if (p->payload.size() < kIcHeaderSize) {
                ADD_FAILURE() << "a packet of " << p->payload.size() << " bytes from the host";
                continue;
            }
            unanswered_.emplace_back(p->desc.trans_id, std::move(p->payload));
        }
        max_unanswered = std::max(max_unanswered, unanswered_.size());
        for (size_t k = 0; k < answers_per_serve && !hold && !silent && !unanswered_.empty(); ++k, ++n) {
            auto [trans_id, buf] = std::move(unanswered_.front());
            unanswered_.pop_front();
            answer(trans_id, buf);
        }
        return n;
    }
    // The host's work and the guest's answers until both are quiet.
    void step() {
        for (int i = 0; i < 100; ++i) {
            g_.pump();
            if (serve() == 0) break;
        }
        g_.pump();
    }
    // Runs `call` on another thread (it waits for the guest, as the API's threads do) while
    // this thread runs the loop and the guest.
    template <typename F>
    auto while_serving(F call) {
        std::atomic<bool> done{false};
        decltype(call()) result{};
        std::thread t([&] {
            result = call();
            done = true;
        });
        while (!done) {
            step();
            std::this_thread::sleep_for(1ms);
        }
        t.join();
        return result;
    }
    uint32_t relid() const { return relid_; }
    SimChannel& channel() { return ch_; }

    bool silent = false;  // read requests and never answer them
    bool hold = false;    // read requests and answer them once cleared
    size_t answers_per_serve = SIZE_MAX;
    uint32_t negotiated = 0;
    int requests = 0;
    size_t max_unanswered = 0;

private:
    void answer(uint64_t trans_id, std::vector<uint8_t>& buf) {
        IcMsgHeader hdr = read_prefix<IcMsgHeader>(std::span(buf).subspan(sizeof(PipeHeader))).value();
        if (hdr.icmsgtype == kIcNegotiate) {
            uint32_t chosen = 0;
            const bool ok = prep_negotiate_resp(buf, {0x30000, 0x10000}, versions_, &chosen);
            negotiated = ok ? chosen : 0;
            std::memcpy(&hdr, buf.data() + sizeof(PipeHeader), sizeof(hdr));
        } else {
            handler_(hdr, buf);
        }
        hdr.icflags = kIcFlagTransaction | kIcFlagResponse;
        if (buf.size() >= kIcHeaderSize) std::memcpy(buf.data() + sizeof(PipeHeader), &hdr, sizeof(hdr));
        // The host reads its ring while the guest works: let it, if the answer does not fit.
        bool sent = g_.send(ch_, vmbus::kPacketDataInband, trans_id, buf, {}, true);
        if (!sent) {
            g_.pump();
            sent = g_.send(ch_, vmbus::kPacketDataInband, trans_id, buf, {}, true);
        }
        EXPECT_TRUE(sent);
    }

    std::deque<std::pair<uint64_t, std::vector<uint8_t>>> unanswered_;
    SimGuest& g_;
    std::vector<uint32_t> versions_;
    Handler handler_;
    uint32_t relid_ = 0;
    SimChannel ch_;
};

// A clock the test moves.
struct FakeClock {
    EventLoop::Clock::time_point now{};
    void install(EventLoop& loop) {
        now = EventLoop::Clock::now();
        loop.set_clock_for_testing([this] { return now; });
    }
};


}  // namespace enlighten::test
