#include "devices/ic/services.hpp"

#include <cstring>
#include <ctime>

#include "common/log.hpp"

#include "common/event_loop.hpp"
#include "common/rate_limit.hpp"
#include "common/wire.hpp"

namespace enlighten::ic {

namespace {

std::vector<uint8_t> to_vector(std::span<const uint8_t> b) { return {b.begin(), b.end()}; }

}  // namespace

vmbus::OfferParams ic_offer(std::string name, const char* class_id, const char* instance_id, uint32_t max_packet) {
    vmbus::OfferParams p;
    p.name = std::move(name);
    p.class_id = vmbus::Guid::parse(class_id);
    p.instance_id = vmbus::Guid::parse(instance_id);
    p.max_packet_to_guest = max_packet;
    p.max_packet_from_guest = max_packet;
    return p;
}

// ---------------------------------------------------------------------------- heartbeat

HeartbeatService::HeartbeatService(const char* instance_id, std::chrono::milliseconds interval)
    : IcDevice(ic_offer("heartbeat", kHeartbeatClass, instance_id, 4096), kIcHeartbeat,
               {std::begin(kHeartbeatVersions), std::end(kHeartbeatVersions)}),
      interval_(interval) {}

HeartbeatService::Clock::time_point HeartbeatService::now() const {
    EventLoop* l = loop();
    return l ? l->now() : Clock::now();
}

void HeartbeatService::on_ready() {
    uint64_t generation;
    {
        LockGuard lock(mu_);
        generation = ++generation_;
        ever_ready_ = true;
    }
    beat_in_flight_ = false;
    // The first beat right away: "healthy within seconds of hv_utils loading".
    tick(generation);
}

void HeartbeatService::on_disconnected() {
    LockGuard lock(mu_);
    ++generation_;  // ends the tick chain
}

void HeartbeatService::attach(const vmbus::DeviceResources& resources) {
    IcDevice::attach(resources);
    LockGuard lock(mu_);
    ++generation_;
    ever_ready_ = false;
    last_reply_.reset();
}

IcContact HeartbeatService::contact() const {
    const IcContact c = IcDevice::contact();
    return c == IcContact::Ok && status().health == Health::Lost ? IcContact::Lost : c;
}

void HeartbeatService::tick(uint64_t generation) {
    uint64_t seq;
    {
        LockGuard lock(mu_);
        if (generation != generation_) return;  // a newer open took over, or the channel closed
        seq = sequence_;
    }
    if (state() != IcState::Ready || !loop()) return;
    if (!beat_in_flight_) {
        beat_in_flight_ = true;
        HeartbeatMsg msg{};
        msg.seq_num = seq;
        transact(to_vector(as_bytes(msg)), interval_, [weak = weak_self<HeartbeatService>(), seq](Result<IcResponse> reply) {
            auto self = weak.lock();
            if (!self) return;
            self->beat_in_flight_ = false;
            if (!reply || reply->status != kHvSOk) return;
            if (auto beat = read_prefix<HeartbeatMsg>(reply->body); beat && beat->seq_num == seq + 1) {
                LockGuard lock(self->mu_);
                self->sequence_ = beat->seq_num;
                self->last_reply_ = self->now();
            } else {
                ENL_LOG_LIMITED(warn, "heartbeat: the guest answered sequence {} with something else", seq);
            }
        });
    }
    loop()->post_after(interval_, [weak = weak_self<HeartbeatService>(), generation] {
        if (auto self = weak.lock()) self->tick(generation);
    });
}

HeartbeatService::Status HeartbeatService::status() const {
    Status st;
    const auto t = now();
    LockGuard lock(mu_);
    st.sequence = sequence_;
    if (last_reply_) st.since_reply = std::chrono::duration_cast<std::chrono::milliseconds>(t - *last_reply_);
    if (!ever_ready_) return st;  // hv_utils never connected in this boot: unknown
    st.health = st.since_reply && *st.since_reply <= 3 * interval_ + std::chrono::milliseconds(500) ? Health::Healthy
                                                                                                  : Health::Lost;
    if (!st.since_reply && state() == IcState::Ready) st.health = Health::Unknown;  // first beat pending
    return st;
}

// ---------------------------------------------------------------------------- shutdown

ShutdownService::ShutdownService(const char* instance_id)
    : IcDevice(ic_offer("shutdown", kShutdownClass, instance_id, 4096), kIcShutdown,
               {std::begin(kShutdownVersions), std::end(kShutdownVersions)}) {}

std::vector<uint8_t> ShutdownService::body(bool reboot) {
    ShutdownMsg msg{};
    msg.flags = reboot ? 2 : 0;
    constexpr char kMessage[] = "Enlighten: shutdown requested through the management API";
    std::memcpy(msg.display_message, kMessage, sizeof(kMessage));
    return to_vector(as_bytes(msg));
}

Result<> ShutdownService::accepted(bool reboot, Result<IcResponse> reply) {
    if (!reply) return std::unexpected(reply.error());
    if (reply->status != kHvSOk)
        return fail("the guest refused the {} request (status {:#x})", reboot ? "reboot" : "shutdown", reply->status);
    return {};
}

Result<> ShutdownService::request(bool reboot, std::chrono::milliseconds timeout) {
    return accepted(reboot, transact_wait(body(reboot), timeout));
}

void ShutdownService::request(bool reboot, std::chrono::milliseconds timeout, std::move_only_function<void(Result<>)> done) {
    transact(body(reboot), timeout, [reboot, done = std::move(done)](Result<IcResponse> reply) mutable {
        done(accepted(reboot, std::move(reply)));
    });
}

// ---------------------------------------------------------------------------- time sync

TimeSyncService::TimeSyncService(const char* instance_id)
    : IcDevice(ic_offer("timesync", kTimeSyncClass, instance_id, 4096), kIcTimeSync,
               {std::begin(kTimeSyncVersions), std::end(kTimeSyncVersions)}) {}

void TimeSyncService::attach(const vmbus::DeviceResources& resources) {
    IcDevice::attach(resources);
    LockGuard lock(mu_);
    reference_time_ = resources.reference_time;
}

uint64_t TimeSyncService::host_time_100ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 10000000ULL + static_cast<uint64_t>(ts.tv_nsec) / 100 + kWindowsEpochDelta;
}

std::vector<uint8_t> TimeSyncService::sample_body(uint8_t flags) const {
    if (version() >= 0x40000) {
        // v4: the guest adds the time elapsed since vmreferencetime on its reference clock.
        TimeSyncRefData d{};
        d.parenttime = host_time_100ns();
        {
            LockGuard lock(mu_);
            d.vmreferencetime = reference_time_ ? reference_time_() : 0;
        }
        d.flags = flags;
        d.stratum = 2;
        return to_vector(as_bytes(d));
    }
    TimeSyncData d{};
    d.parenttime = host_time_100ns();
    d.flags = flags;
    return to_vector(as_bytes(d));
}

Result<> TimeSyncService::sync(std::chrono::milliseconds timeout) {
    ENL_TRY(IcResponse reply, transact_wait(sample_body(kTimeSyncSync), timeout));
    if (reply.status != kHvSOk) return fail("the guest answered the time sync with status {:#x}", reply.status);
    return {};
}

namespace {
// Out of line: GCC 12 otherwise warns that the inlined std::expected may be uninitialized.
[[gnu::noinline]] void log_sync_failure(const Result<IcResponse>& r) {
    if (!r) ENL_LOG_LIMITED(warn, "timesync: {}", r.error().message());
    else if (r->status != kHvSOk) ENL_LOG_LIMITED(warn, "timesync: the guest answered with status {:#x}", r->status);
}
}  // namespace

void TimeSyncService::on_ready() {
    // As Hyper-V does when the service connects: set the guest's clock once.
    transact(sample_body(kTimeSyncSync), std::chrono::seconds(5), [](Result<IcResponse> r) { log_sync_failure(r); });
}

// ---------------------------------------------------------------------------- KVP

KvpService::KvpService(const char* instance_id)
    : IcDevice(ic_offer("kvp", kKvpClass, instance_id, 16384), kIcKvpExchange,
               {std::begin(kKvpVersions), std::end(kKvpVersions)}) {}

Result<std::vector<uint8_t>> KvpService::encode_utf16(const std::string& utf8, size_t max_bytes) {
    std::vector<uint8_t> out;
    auto put = [&](uint16_t u) {
        out.push_back(static_cast<uint8_t>(u));
        out.push_back(static_cast<uint8_t>(u >> 8));
    };
    const auto* s = reinterpret_cast<const unsigned char*>(utf8.data());
    const size_t n = utf8.size();
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len;
        const unsigned char c = s[i];
        if (c < 0x80) { cp = c; len = 1; }
        else if ((c & 0xe0) == 0xc0) { cp = c & 0x1fU; len = 2; }
        else if ((c & 0xf0) == 0xe0) { cp = c & 0x0fU; len = 3; }
        else if ((c & 0xf8) == 0xf0) { cp = c & 0x07U; len = 4; }
        else return fail("not valid UTF-8");
        if (i + len > n) return fail("not valid UTF-8");
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) return fail("not valid UTF-8");
            cp = (cp << 6) | (s[i + k] & 0x3fU);
        }
        static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return fail("not valid UTF-8");
        if (cp == 0) return fail("contains a NUL character");
        if (cp >= 0x10000) {
            cp -= 0x10000;
            put(static_cast<uint16_t>(0xd800 + (cp >> 10)));
            put(static_cast<uint16_t>(0xdc00 + (cp & 0x3ff)));
        } else {
            put(static_cast<uint16_t>(cp));
        }
        i += len;
    }
    put(0);
    if (out.size() > max_bytes) return fail("is {} bytes in UTF-16, more than the {} that fit", out.size(), max_bytes);
    return out;
}

Result<std::string> KvpService::decode_utf16(std::span<const uint8_t> bytes) {
    std::string out;
    for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
        uint32_t u = bytes[i] | (uint32_t{bytes[i + 1]} << 8);
        if (u == 0) break;
        if (u >= 0xd800 && u <= 0xdbff) {
            if (i + 3 >= bytes.size()) return fail("truncated UTF-16 surrogate pair");
            const uint32_t lo = bytes[i + 2] | (uint32_t{bytes[i + 3]} << 8);
            if (lo < 0xdc00 || lo > 0xdfff) return fail("invalid UTF-16 surrogate pair");
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            i += 2;
        } else if (u >= 0xdc00 && u <= 0xdfff) {
            return fail("invalid UTF-16 surrogate");
        }
        if (u < 0x80) {
            out.push_back(static_cast<char>(u));
        } else if (u < 0x800) {
            out.push_back(static_cast<char>(0xc0 | (u >> 6)));
            out.push_back(static_cast<char>(0x80 | (u & 0x3f)));
        } else if (u < 0x10000) {
            out.push_back(static_cast<char>(0xe0 | (u >> 12)));
            out.push_back(static_cast<char>(0x80 | ((u >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (u & 0x3f)));
        } else {
            out.push_back(static_cast<char>(0xf0 | (u >> 18)));
            out.push_back(static_cast<char>(0x80 | ((u >> 12) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | ((u >> 6) & 0x3f)));
            out.push_back(static_cast<char>(0x80 | (u & 0x3f)));
        }
    }
    return out;
}

namespace {

Result<KvpMessage> kvp_request(uint8_t op, uint8_t pool, const std::string& key, const std::string* value) {
    KvpMessage m{};
    m.header.operation = op;
    m.header.pool = pool;
    auto k = KvpService::encode_utf16(key, kKvpMaxKeySize);
    if (!k) return std::unexpected(k.error().context("key"));
    if (op == kKvpDelete) {
        m.body.del.key_size = static_cast<uint32_t>(k->size());
        std::memcpy(m.body.del.key, k->data(), k->size());
        return m;
    }
    m.body.data.value_type = kKvpRegSz;
    m.body.data.key_size = static_cast<uint32_t>(k->size());
    std::memcpy(m.body.data.key, k->data(), k->size());
    if (value) {
        auto v = KvpService::encode_utf16(*value, kKvpMaxValueSize);
        if (!v) return std::unexpected(v.error().context("value"));
        m.body.data.value_size = static_cast<uint32_t>(v->size());
        std::memcpy(m.body.data.value, v->data(), v->size());
    }
    return m;
}

// The sizes in a guest's answer are guest-controlled: clamp them to the fields.
Result<std::string> decode_field(const uint8_t* field, uint32_t size, size_t max) {
    return KvpService::decode_utf16(std::span(field, std::min<size_t>(size, max)));
}

bool host_owned(uint8_t pool) { return pool == 0 || pool == 3; }

}  // namespace

Result<> KvpService::set(uint8_t pool, const std::string& key, const std::string& value, std::chrono::milliseconds timeout) {
    if (!host_owned(pool)) return fail("pool {} belongs to the guest; the host writes only the external pools", pool);
    ENL_TRY(KvpMessage m, kvp_request(kKvpSet, pool, key, &value));
    {
        LockGuard lock(pools_mu_);
        if (!host_pools_.contains({pool, key})) {
            const auto first = host_pools_.lower_bound({pool, std::string()});
            const auto end = host_pools_.lower_bound({static_cast<uint8_t>(pool + 1), std::string()});
            if (static_cast<size_t>(std::distance(first, end)) >= kMaxHostKeysPerPool)
                return fail(Errc::Busy, "pool {} holds {} keys, the most the host keeps: delete one first", pool,
                            kMaxHostKeysPerPool);
        }
        host_pools_[{pool, key}] = value;
    }
    ENL_TRY(IcResponse reply, transact_wait(to_vector(as_bytes(m)), timeout));
    if (reply.status != kHvSOk) return fail("the guest could not store the key (status {:#x})", reply.status);
    return {};
}

Result<> KvpService::remove(uint8_t pool, const std::string& key, std::chrono::milliseconds timeout) {
    if (!host_owned(pool)) return fail("pool {} belongs to the guest; the host writes only the external pools", pool);
    ENL_TRY(KvpMessage m, kvp_request(kKvpDelete, pool, key, nullptr));
    bool held;
    {
        LockGuard lock(pools_mu_);
        held = host_pools_.erase({pool, key}) > 0;
    }
    ENL_TRY(IcResponse reply, transact_wait(to_vector(as_bytes(m)), timeout));
    // A key the host held is gone from the host's pool whatever the guest says.
    if (reply.status != kHvSOk && !held)
        return fail(Errc::NotFound, "the guest has no key '{}' in pool {} (status {:#x})", key, pool, reply.status);
    return {};
}

Result<std::optional<std::string>> KvpService::get(uint8_t pool, const std::string& key, std::chrono::milliseconds timeout) {
    // KVP_OP_GET only as an existence test: Linux's hv_kvp_daemon copies value_size bytes of
    // the value back, and the kernel forwards the host's value_size, which is 0 in a GET
    // request; so a GET answers 0 with an empty value for a key that exists, HV_S_CONT for
    // one that does not (contract-services.md section 5). An absent key costs one GET; the
    // value of a present one comes from enumerating the pool. The guest's AUTO pool is
    // generated by ENUMERATE alone (a GET never finds its items): enumerated directly.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    if (pool != kKvpPoolAuto) {
        ENL_TRY(KvpMessage m, kvp_request(kKvpGet, pool, key, nullptr));
        ENL_TRY(IcResponse reply, transact_wait(to_vector(as_bytes(m)), timeout));
        if (reply.status == kHvSCont) return std::optional<std::string>{};
        if (reply.status != kHvSOk) return fail("the guest could not look the key up (status {:#x})", reply.status);
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return fail(Errc::Timeout, "the guest did not answer in time");
    ENL_TRY(auto entries, list(pool, left));
    for (auto& e : entries)
        if (e.key == key) return std::optional<std::string>(std::move(e.value));
    return std::optional<std::string>{};
}

Result<std::vector<KvpService::Entry>> KvpService::list(uint8_t pool, std::chrono::milliseconds timeout) {
    std::vector<Entry> out;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (uint32_t index = 0; index < kMaxEnumerate; ++index) {
        KvpMessage m{};
        m.header.operation = kKvpEnumerate;
        m.header.pool = pool;
        m.body.enumerate.index = index;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return fail(Errc::Timeout, "the guest did not list pool {} in time", pool);
        ENL_TRY(IcResponse reply, transact_wait(to_vector(as_bytes(m)), left));
        if (reply.status != kHvSOk) break;  // HV_S_CONT / E_FAIL: no more entries
        // hv_kvp.c answers in the buffer it was sent (the whole message); a shorter answer,
        // down to no body at all, is the guest's error, not an empty entry.
        if (reply.body.size() < sizeof(KvpMessage))
            return fail(Errc::Invalid, "the guest answered entry {} of pool {} with {} bytes, not {}", index, pool,
                        reply.body.size(), sizeof(KvpMessage));
        KvpMessage r{};
        std::memcpy(&r, reply.body.data(), sizeof(r));
        const KvpValue& d = r.body.enumerate.data;
        ENL_TRY(std::string key, decode_field(d.key, d.key_size, kKvpMaxKeySize));
        ENL_TRY(std::string value, decode_field(d.value, d.value_size, kKvpMaxValueSize));
        out.push_back({std::move(key), std::move(value)});
    }
    return out;
}

std::vector<std::tuple<uint8_t, std::string, std::string>> KvpService::host_entries() const {
    std::vector<std::tuple<uint8_t, std::string, std::string>> entries;
    LockGuard lock(pools_mu_);
    for (const auto& [k, v] : host_pools_) entries.emplace_back(k.first, k.second, v);
    return entries;
}

void KvpService::on_ready() {
    // Push what the host holds for the guest, as after a reconnect or a reboot.
    restore(host_entries(), 0);
}

// One entry at a time, each from the previous one's answer.
void KvpService::restore(std::vector<std::tuple<uint8_t, std::string, std::string>> entries, size_t next) {
    if (next >= entries.size()) return;
    const auto& [pool, key, value] = entries[next];
    auto m = kvp_request(kKvpSet, pool, key, &value);
    if (!m) {
        ENL_LOG_LIMITED(warn, "kvp: could not restore {}: {}", key, m.error().message());
        return restore(std::move(entries), next + 1);
    }
    transact(to_vector(as_bytes(*m)), std::chrono::seconds(10),
             [weak = weak_self<KvpService>(), entries = std::move(entries), next](Result<IcResponse> r) mutable {
                 if (!r) ENL_LOG_LIMITED(warn, "kvp: could not restore {}: {}", std::get<1>(entries[next]), r.error().message());
                 if (auto self = weak.lock(); self && r) self->restore(std::move(entries), next + 1);
             });
}

}  // namespace enlighten::ic
