// The serial console's output (vmm/console.hpp) against a reader that stalls or goes away
// (reliability review A8 and B2): the UART's writes and the loop's flushes never block, what
// does not fit is dropped and counted, what was buffered arrives once the reader reads, and
// writers on several threads race a reader that closes (run under TSan in build-tsan).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "vmm/console.hpp"

using namespace enlighten;
using namespace std::chrono_literals;

namespace {

struct Fifo {
    std::string dir, path;
    int reader = -1;
    Fifo() {
        ::signal(SIGPIPE, SIG_IGN);  // as the VMM does: a gone reader is EPIPE, not a signal
        std::string tmpl = (std::filesystem::temp_directory_path() / "serial_console.XXXXXX").string();
        EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
        dir = tmpl;
        path = dir + "/fifo";
        EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0);
        reader = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // opened, never read (yet)
        EXPECT_GE(reader, 0);
    }
    ~Fifo() {
        if (reader >= 0) ::close(reader);
        std::filesystem::remove_all(dir);
    }
    std::string drain() {
        std::string got;
        char buf[65536];
        for (ssize_t n; (n = ::read(reader, buf, sizeof(buf))) > 0;) got.append(buf, static_cast<size_t>(n));
        return got;
    }
};

std::unique_ptr<Console> console_on(const Fifo& f) {
    auto c = Console::create({ConsoleConfig::Mode::File, f.path});
    EXPECT_TRUE(c) << c.error().message();
    return std::move(*c);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(SerialConsole, AStalledReaderBlocksNeitherTheGuestNorTheLoop) {
    Fifo f;
    auto c = console_on(f);
    // 1 MiB of guest output into a pipe nobody reads (it holds 64 KiB): before, the vCPU
    // blocked in write(2) under the console's lock once the pipe was full.
    const auto t0 = std::chrono::steady_clock::now();
    std::thread vcpu([&] {
        for (int i = 0; i < (1 << 20); ++i) c->write(i % 64 == 63 ? '\n' : static_cast<uint8_t>('a' + i % 26));
    });
    vcpu.join();
    EXPECT_LT(seconds_since(t0), 10.0);
    const auto t1 = std::chrono::steady_clock::now();
    c->flush();  // the loop's flush
    EXPECT_LT(seconds_since(t1), 0.1);
    const uint64_t dropped = c->dropped();
    EXPECT_GT(dropped, 0u);
    // What was not dropped arrives once the reader reads: the pipe's 64 KiB, then the rest of
    // the buffer with the next flushes; the first line is whole.
    std::string got = f.drain();
    for (int i = 0; i < 10; ++i) {
        c->flush();
        got += f.drain();
    }
    ASSERT_GE(got.size(), 64u);
    EXPECT_EQ(got.substr(0, 64), std::string("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk\n"));
    EXPECT_EQ(got.size() + dropped, size_t{1} << 20);
    // Room again: new lines go through at once.
    for (char ch : std::string("after\n")) c->write(static_cast<uint8_t>(ch));
    EXPECT_EQ(f.drain(), "after\n");
}

TEST(SerialConsole, WritersRaceAReaderThatGoesAway) {
    Fifo f;
    auto c = console_on(f);
    std::atomic<bool> stop{false};
    std::vector<std::thread> vcpus;
    for (int t = 0; t < 3; ++t)
        vcpus.emplace_back([&, t] {
            while (!stop) c->write(static_cast<uint8_t>(t == 0 ? '\n' : 'x'));
        });
    std::thread loop([&] {
        while (!stop) {
            c->flush();
            std::this_thread::sleep_for(1ms);
        }
    });
    std::this_thread::sleep_for(50ms);
    (void)f.drain();
    ::close(std::exchange(f.reader, -1));  // the reader is gone: EPIPE, output off
    std::this_thread::sleep_for(50ms);
    stop = true;
    for (auto& v : vcpus) v.join();
    loop.join();
    const auto t0 = std::chrono::steady_clock::now();
    c.reset();  // no reader: the destructor does not wait for one
    EXPECT_LT(seconds_since(t0), 0.5);
}
