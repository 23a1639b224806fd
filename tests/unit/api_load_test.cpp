// The management API under abuse (issue 16): slow and idle clients, a connection cap, calls
// that wait for the guest, and many clients at once, against a real ApiServer on a
// temporary Unix socket with a fake VmControl whose guest calls can be held.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "api/http_client.hpp"
#include "api/router.hpp"
#include "api/server.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "support/temp_dir.hpp"

using namespace enlighten;
using namespace enlighten::api;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A VmControl whose guest calls (KVP list, time sync) wait until the test opens the gate.
class GatedVm final : public VmControl {
public:
    ~GatedVm() override { open_gate(); }

    void open_gate() {
        {
            std::lock_guard lock(mu_);
            open_ = true;
        }
        cv_.notify_all();
    }
    // Waits until `n` calls are held at the gate.
    bool wait_held(int n, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, timeout, [&] { return held_ >= n; });
    }
    std::atomic<int> infos{0};
    std::atomic<int> power_offs{0};

    VmInfo info() override {
        ++infos;
        VmInfo i;
        i.state = "running";
        i.cpus = 2;
        return i;
    }
    ApiResult<> shutdown(const ShutdownRequest&) override { return {}; }
    ApiResult<> power_off() override {
        ++power_offs;
        return {};
    }
    ApiResult<> reset() override { return {}; }
    HeartbeatInfo heartbeat() override { return {}; }
    ApiResult<> time_sync() override { return gate(); }
    ApiResult<std::vector<KvpEntry>> kvp_list(KvpPool) override {
        if (auto r = gate(); !r) return std::unexpected(r.error());
        return std::vector<KvpEntry>{{"k", "v"}};
    }
    ApiResult<std::string> kvp_get(KvpPool, const std::string&) override { return std::string("v"); }
    ApiResult<> kvp_set(KvpPool, const std::string&, const std::string&) override { return {}; }
    ApiResult<> kvp_delete(KvpPool, const std::string&) override { return {}; }
    std::vector<IntegrationServiceInfo> integration_services() override { return {}; }
    ApiResult<IntegrationServiceInfo> set_integration_service(const std::string&, bool) override { return {}; }
    ApiResult<DiskInfo> add_disk(const AddDiskRequest&) override { return DiskInfo{}; }
    ApiResult<> remove_disk(const std::string&) override { return {}; }
    ApiResult<> set_net_link(const std::string&, bool) override { return {}; }
    ApiResult<MemoryInfo> memory() override { return MemoryInfo{}; }
    ApiResult<> set_memory(const MemoryUpdate&) override { return {}; }
    ApiResult<CopyFileResult> copy_file(const CopyFileRequest&) override { return CopyFileResult{}; }
    CopyFileProgress copy_file_progress() override { return {}; }
    ApiResult<CheckpointInfo> checkpoint(const CheckpointRequest&) override { return CheckpointInfo{}; }
    std::vector<CheckpointInfo> checkpoints() override { return {}; }
    ApiResult<CheckpointInfo> merge_checkpoint() override { return CheckpointInfo{}; }
    ApiResult<Screenshot> screenshot() override { return Screenshot{}; }
    ApiResult<> send_keys(const SendKeysRequest&) override { return {}; }
    ApiResult<> pointer(const PointerRequest&) override { return {}; }

private:
    ApiResult<> gate() {
        std::unique_lock lock(mu_);
        ++held_;
        cv_.notify_all();
        // Bounded, so that a broken server cannot hang the test binary.
        cv_.wait_for(lock, 20s, [&] { return open_; });
        --held_;
        return {};
    }

    std::mutex mu_;
    std::condition_variable cv_;
    bool open_ = false;
    int held_ = 0;
};

UniqueFd connect_to(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
    return fd;
}

bool send_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

// What came back on a connection until EOF, a reset or `timeout`.
struct Received {
    std::string bytes;
    bool ended = false;  // EOF or reset (not the timeout)
};

Received read_until_end(int fd, std::chrono::milliseconds timeout) {
    Received r;
    const auto deadline = Clock::now() + timeout;
    char buf[4096];
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return r;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return r;
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            r.ended = true;
            return r;
        }
        r.bytes.append(buf, static_cast<size_t>(n));
    }
}

// A complete response in `bytes` (exactly one), or status 0.
struct Parsed {
    int status = 0;
    std::string body;
    std::string retry_after;
};

Parsed parse_response(const std::string& bytes) {
    Parsed out;
    ResponseParser p(false, 1U << 20);
    const size_t used = p.feed(bytes.data(), bytes.size());
    if (p.state() != ResponseParser::State::Done || used != bytes.size()) return out;
    out.status = p.response().status;
    out.body = p.response().body;
    out.retry_after = p.response().header("Retry-After");
    return out;
}

std::string error_of(const std::string& body) {
    const auto j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_string()) return "<no error: " + body + ">";
    return j["error"].get<std::string>();
}

// One request on a fresh connection, answered within `timeout` or status 0; and how long.
struct Timed {
    Parsed response;
    std::chrono::milliseconds took{};
};

Timed timed_request(const std::string& sock, const std::string& request, std::chrono::milliseconds timeout = 3s) {
    const auto t0 = Clock::now();
    Timed t;
    UniqueFd fd = connect_to(sock);
    if (fd.valid() && send_all(fd.get(), request)) {
        const Received r = read_until_end(fd.get(), timeout);
        if (r.ended) t.response = parse_response(r.bytes);
    }
    t.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);
    return t;
}

const std::string kInfo = "GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const std::string kPowerOff = "PUT /api/v1/vm.power-off HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
const std::string kKvpList = "GET /api/v1/vm.kvp/auto HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

class ApiLoadTest : public ::testing::Test {
protected:
    void SetUp() override {
        ::signal(SIGPIPE, SIG_IGN);
        enlighten::log::set_level(enlighten::log::Level::Error);
        sock = dir.path + "/api.sock";
    }
    void start(const ApiLimits& limits) {
        server = std::make_unique<ApiServer>(vm, ApiServerOptions{sock, 2, limits});
        auto ok = server->start();
        ASSERT_TRUE(ok) << ok.error().message();
    }
    void TearDown() override {
        vm.open_gate();
        if (server) server->stop();
    }

    test::TempDir dir{"enl-api-load"};
    std::string sock;
    GatedVm vm;
    std::unique_ptr<ApiServer> server;
};

}  // namespace

// 25 slowloris clients (a byte of a request line every second) and 25 idle ones (connected,
// silent) hold connections; vm.info, from fresh connections, answers within a second all
// along. Then the deadlines end them: the slow ones with a 408, the idle ones quietly.
TEST_F(ApiLoadTest, SlowAndIdleClientsDoNotDelayInfo) {
    ApiLimits limits;
    limits.io_timeout = 2500ms;
    limits.keep_alive_timeout = 2500ms;
    start(limits);

    std::vector<UniqueFd> slow, idle;
    for (int i = 0; i < 25; ++i) {
        slow.push_back(connect_to(sock));
        idle.push_back(connect_to(sock));
        ASSERT_TRUE(slow.back().valid() && idle.back().valid());
    }
    const std::string line = "GET /api/v1/vm.info HTTP/1.1\r\n";
    std::atomic<bool> done{false};
    std::thread dribble([&] {
        for (size_t i = 0; i < line.size() && !done; ++i) {
            for (auto& fd : slow) (void)::send(fd.get(), &line[i], 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            for (int t = 0; t < 10 && !done; ++t) std::this_thread::sleep_for(100ms);
        }
    });

    std::chrono::milliseconds worst{};
    int answered = 0;
    const auto until = Clock::now() + 2s;
    while (Clock::now() < until) {
        const Timed t = timed_request(sock, kInfo, 3s);
        EXPECT_EQ(t.response.status, 200);
        if (t.response.status == 200) ++answered;
        worst = std::max(worst, t.took);
        std::this_thread::sleep_for(100ms);
    }
    EXPECT_GE(answered, 10);
    EXPECT_LT(worst, 1s) << "the slowest vm.info";

    // The deadlines: 2.5 s from the first byte for a request, 2.5 s idle.
    for (auto& fd : slow) {
        const Received r = read_until_end(fd.get(), 3s);
        EXPECT_TRUE(r.ended);
        const Parsed p = parse_response(r.bytes);
        EXPECT_EQ(p.status, 408) << r.bytes;
    }
    for (auto& fd : idle) {
        const Received r = read_until_end(fd.get(), 3s);
        EXPECT_TRUE(r.ended);
        EXPECT_EQ(r.bytes, "");
    }
    done = true;
    dribble.join();
}

// Over max_connections a client gets a 503 with a JSON error and Retry-After, then EOF;
// once a connection closes, a new one is served.
TEST_F(ApiLoadTest, ConnectionCapRefusesCleanly) {
    ApiLimits limits;
    limits.max_connections = 8;
    start(limits);

    std::vector<UniqueFd> held;
    for (int i = 0; i < 8; ++i) {
        held.push_back(connect_to(sock));
        ASSERT_TRUE(held.back().valid());
    }
    // Each is accepted and served (keep-alive), so all 8 count.
    for (auto& fd : held) {
        ASSERT_TRUE(send_all(fd.get(), "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n"));
        char buf[1024];
        pollfd p{fd.get(), POLLIN, 0};
        ASSERT_EQ(::poll(&p, 1, 2000), 1);
        ASSERT_GT(::recv(fd.get(), buf, sizeof(buf), 0), 0);
    }

    // Sent a request or not, the ninth is refused with an answer.
    for (const bool with_request : {false, true}) {
        UniqueFd extra = connect_to(sock);
        ASSERT_TRUE(extra.valid());
        if (with_request) (void)send_all(extra.get(), kInfo);
        const Received r = read_until_end(extra.get(), 2s);
        EXPECT_TRUE(r.ended);
        const Parsed p = parse_response(r.bytes);
        EXPECT_EQ(p.status, 503) << r.bytes;
        EXPECT_EQ(p.retry_after, "1");
        EXPECT_NE(error_of(p.body).find("too many connections to the API (at most 8)"), std::string::npos) << p.body;
    }
    EXPECT_EQ(vm.infos.load(), 0);

    held.pop_back();
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(timed_request(sock, kInfo).response.status, 200);
}

// Guest calls that do not return (a KVP list, a time sync, held at the gate) fill
// the guest lane; power-off and vm.info are still answered at once, a further guest call is
// refused with a 503, and the held calls are answered once the guest "replies".
TEST_F(ApiLoadTest, GuestCallsDoNotBlockPowerOff) {
    ApiLimits limits;
    limits.max_guest_calls = 2;
    start(limits);

    std::vector<Timed> held(2);
    std::thread a([&] { held[0] = timed_request(sock, kKvpList, 10s); });
    std::thread b([&] {
        held[1] = timed_request(sock,
                                "PUT /api/v1/vm.time-sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                "Content-Length: 0\r\n\r\n",
                                10s);
    });
    ASSERT_TRUE(vm.wait_held(2, 3s));

    const Timed off = timed_request(sock, kPowerOff);
    EXPECT_EQ(off.response.status, 204);
    EXPECT_LT(off.took, 1s);
    EXPECT_EQ(vm.power_offs.load(), 1);
    const Timed info = timed_request(sock, kInfo);
    EXPECT_EQ(info.response.status, 200);
    EXPECT_LT(info.took, 1s);

    const Timed busy = timed_request(sock, kKvpList);
    EXPECT_EQ(busy.response.status, 503);
    EXPECT_EQ(busy.response.retry_after, "1");
    EXPECT_NE(error_of(busy.response.body).find("calls that wait for the guest"), std::string::npos)
        << busy.response.body;
    EXPECT_LT(busy.took, 1s);

    vm.open_gate();
    a.join();
    b.join();
    EXPECT_EQ(held[0].response.status, 200);
    EXPECT_EQ(held[1].response.status, 204);
}

namespace {

// `n` clients at once, each on its own connection with one vm.info request; returns the
// status each got (0: no complete answer before EOF, or nothing within the deadline).
std::vector<int> many_clients(const std::string& sock, size_t n, std::chrono::milliseconds deadline) {
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < n; ++i) {
        fds.push_back(connect_to(sock));
        // A refused client may see its write fail (EPIPE); its answer is still there to read.
        if (fds.back().valid()) (void)send_all(fds.back().get(), kInfo);
    }
    std::vector<std::string> got(n);
    std::vector<bool> ended(n, false);
    const auto until = Clock::now() + deadline;
    for (;;) {
        std::vector<pollfd> polls;
        std::vector<size_t> which;
        for (size_t i = 0; i < n; ++i) {
            if (ended[i] || !fds[i].valid()) continue;
            polls.push_back({fds[i].get(), POLLIN, 0});
            which.push_back(i);
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
        if (polls.empty() || left.count() <= 0) break;
        if (::poll(polls.data(), polls.size(), static_cast<int>(left.count())) <= 0) break;
        for (size_t k = 0; k < polls.size(); ++k) {
            if (polls[k].revents == 0) continue;
            const size_t i = which[k];
            char buf[4096];
            const ssize_t r = ::recv(fds[i].get(), buf, sizeof(buf), 0);
            if (r <= 0) {
                ended[i] = true;
            } else {
                got[i].append(buf, static_cast<size_t>(r));
            }
        }
    }
    std::vector<int> statuses(n, 0);
    for (size_t i = 0; i < n; ++i)
        if (ended[i]) statuses[i] = parse_response(got[i]).status;
    return statuses;
}

}  // namespace

// 200 clients at once while 50 slow ones (half a partial request line, half silent) hold
// connections: every one gets a complete answer (the default cap is above 250).
TEST_F(ApiLoadTest, TwoHundredClientsAreAllAnsweredBesideFiftySlowOnes) {
    start(ApiLimits{});
    std::vector<UniqueFd> slow;
    for (int i = 0; i < 50; ++i) {
        slow.push_back(connect_to(sock));
        ASSERT_TRUE(slow.back().valid());
        if (i % 2 == 0) {
            ASSERT_TRUE(send_all(slow.back().get(), "GET /api/v1/vm.info HTTP/1.1\r\nHo"));
        }
    }
    const auto statuses = many_clients(sock, 200, 5s);
    EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 200), 200);
    EXPECT_EQ(vm.infos.load(), 200);
    EXPECT_EQ(timed_request(sock, kInfo).response.status, 200);
}

// 200 clients at once against a cap of 50: each gets a complete 200 or a complete 503,
// none is left without an answer, and the server serves on afterwards.
TEST_F(ApiLoadTest, TwoHundredClientsOverTheCapAreAnsweredOrRefused) {
    ApiLimits limits;
    limits.max_connections = 50;
    start(limits);
    const auto statuses = many_clients(sock, 200, 5s);
    const auto ok = std::count(statuses.begin(), statuses.end(), 200);
    const auto refused = std::count(statuses.begin(), statuses.end(), 503);
    EXPECT_EQ(ok + refused, 200) << "answered " << ok << ", refused " << refused;
    EXPECT_GE(ok, 50);
    EXPECT_GT(refused, 0);
    EXPECT_EQ(vm.infos.load(), ok);
    EXPECT_EQ(timed_request(sock, kInfo).response.status, 200);
}

// The lanes, as the router sees requests.
TEST(ApiLanes, GuestCallsAreTheOnesThatMayWait) {
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.info"), Lane::Quick);
    EXPECT_EQ(lane_of("HEAD", "/api/v1/vm.info?x=1"), Lane::Quick);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.power-off"), Lane::Quick);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.reset"), Lane::Quick);
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.memory"), Lane::Quick);
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.copy-file"), Lane::Quick);
    EXPECT_EQ(lane_of("GET", "/api/v1/nonsense"), Lane::Quick);
    EXPECT_EQ(lane_of("GET", "/elsewhere"), Lane::Quick);
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.kvp/auto"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.kvp/external/k"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.shutdown"), Lane::Quick);  // it only starts the first stage
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.reboot"), Lane::Quick);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.time-sync"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.copy-file"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.checkpoint"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.memory"), Lane::Guest);
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.screenshot"), Lane::Guest);
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm%2Echeckpoint"), Lane::Guest);  // as the router decodes it
    EXPECT_EQ(lane_of("PUT", "/api/v1/vm.integration-services/kvp"), Lane::Guest);
    EXPECT_EQ(lane_of("GET", "/api/v1/vm.integration-services"), Lane::Quick);
}

// Not a test: serves the fake VM for tests/tools/api_load.c, to try the tool without a VM.
//   ENL_API_LOAD_SOCKET=/tmp/api.sock ENL_API_LOAD_SECONDS=30 [ENL_API_LOAD_MAX_CONNECTIONS=100] api_load_test
//       --gtest_also_run_disabled_tests --gtest_filter='*ServeForTheLoadTool'
TEST(ApiLoadTool, DISABLED_ServeForTheLoadTool) {
    const char* path = std::getenv("ENL_API_LOAD_SOCKET");
    const char* seconds = std::getenv("ENL_API_LOAD_SECONDS");
    ASSERT_TRUE(path != nullptr) << "set ENL_API_LOAD_SOCKET";
    ::signal(SIGPIPE, SIG_IGN);
    GatedVm vm;
    vm.open_gate();
    ApiLimits limits;
    if (const char* cap = std::getenv("ENL_API_LOAD_MAX_CONNECTIONS")) limits.max_connections = std::strtoul(cap, nullptr, 10);
    ApiServer server(vm, ApiServerOptions{path, 2, limits});
    ASSERT_TRUE(server.start());
    std::this_thread::sleep_for(std::chrono::seconds(seconds ? std::atoi(seconds) : 30));
    server.stop();
    std::printf("served %d vm.info calls\n", vm.infos.load());
}
