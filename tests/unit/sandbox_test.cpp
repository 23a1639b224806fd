// The seccomp filters (common/sandbox.hpp), each loaded in a forked child: what a kind allows
// works, what it forbids ends the child with SIGSYS (Mode::On) or runs (Mode::Log).
#include "common/sandbox.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

namespace enlighten::sandbox {
namespace {

constexpr ThreadKind kAllKinds[] = {ThreadKind::Process, ThreadKind::EventLoop, ThreadKind::Vcpu, ThreadKind::ApiIo,
                                    ThreadKind::ApiWorker, ThreadKind::DiskIo, ThreadKind::NetIo};

struct Child {
    int status = 0;
    std::string err;  // what it wrote to stderr
    bool exited(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
    bool killed_by_sigsys() const { return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS; }
};

// Runs `body` in a forked child (its return value is the exit status), stderr captured.
Child in_child(const std::function<int()>& body) {
    int pipefd[2];
    EXPECT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(pipefd[1], STDERR_FILENO);
        ::_exit(body());
    }
    ::close(pipefd[1]);
    Child c;
    char buf[512];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0) c.err.append(buf, static_cast<size_t>(n));
    ::close(pipefd[0]);
    EXPECT_EQ(::waitpid(pid, &c.status, 0), pid);
    return c;
}

std::string forbidden_message(ThreadKind kind) {
    return "enlighten: seccomp: forbidden system call " + std::to_string(SYS_personality) +
           " (personality) on a thread of kind " + std::string(kind_name(kind));
}

std::string seccomp_status_line() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.starts_with("Seccomp:")) return line;
    return {};
}

TEST(Sandbox, EveryKindLoadsAndForbiddenCallEndsWithSigsys) {
    for (ThreadKind kind : kAllKinds) {
        SCOPED_TRACE(std::string(kind_name(kind)));
        const Child c = in_child([kind] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(kind, Mode::On)) return 10;
            if (::getpid() <= 0) return 11;  // allowed
            forbidden_call_for_testing();
            return 12;  // not reached
        });
        EXPECT_TRUE(c.killed_by_sigsys()) << "status " << c.status << " stderr: " << c.err;
        EXPECT_NE(c.err.find(forbidden_message(kind)), std::string::npos) << c.err;
    }
}

TEST(Sandbox, LogModeLetsTheForbiddenCallRun) {
    for (ThreadKind kind : kAllKinds) {
        SCOPED_TRACE(std::string(kind_name(kind)));
        const Child c = in_child([kind] {
            configure({.mode = Mode::Log, .test_forbidden = std::nullopt});
            if (!load(kind, Mode::Log)) return 10;
            if (forbidden_call_for_testing() < 0) return 11;
            return 0;
        });
        EXPECT_TRUE(c.exited(0)) << "status " << c.status << " stderr: " << c.err;
    }
}

TEST(Sandbox, StatusShowsFilterMode) {
    const Child c = in_child([] {
        if (seccomp_status_line() != "Seccomp:\t0") return 10;
        configure({.mode = Mode::On, .test_forbidden = std::nullopt});
        if (!load(ThreadKind::Process, Mode::On)) return 11;
        if (seccomp_status_line() != "Seccomp:\t2") return 12;
        return 0;
    });
    EXPECT_TRUE(c.exited(0)) << "status " << c.status << " stderr: " << c.err;
}

TEST(Sandbox, OffLoadsNothing) {
    const Child c = in_child([] {
        configure({.mode = Mode::Off, .test_forbidden = ThreadKind::Vcpu});
        if (!install_process()) return 10;
        enter(ThreadKind::Vcpu);  // nothing, and no test hook either
        if (seccomp_status_line() != "Seccomp:\t0") return 11;
        return 0;
    });
    EXPECT_TRUE(c.exited(0)) << "status " << c.status << " stderr: " << c.err;
}

// The filters stack: the process filter, then a vCPU's on top checks ioctl numbers.
TEST(Sandbox, VcpuAllowsKvmIoctlsOnly) {
    auto ioctl_in_vcpu = [](unsigned long request) {
        return in_child([request] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(ThreadKind::Process, Mode::On) || !load(ThreadKind::Vcpu, Mode::On)) return 10;
            // Not a KVM descriptor: the ioctl itself fails (ENOTTY); the filter only looks
            // at the number.
            const int r = ::ioctl(STDERR_FILENO, request, 0);
            return r < 0 && errno == ENOTTY ? 0 : 11;
        });
    };
    EXPECT_TRUE(ioctl_in_vcpu(KVM_RUN).exited(0));
    EXPECT_TRUE(ioctl_in_vcpu(KVM_SIGNAL_MSI).exited(0));
    EXPECT_TRUE(ioctl_in_vcpu(KVM_CREATE_VM).killed_by_sigsys());
    EXPECT_TRUE(ioctl_in_vcpu(TCGETS).killed_by_sigsys());
    // The high half of the number is not looked at (the kernel truncates it).
    EXPECT_TRUE(ioctl_in_vcpu(0xffffffff00000000UL | KVM_RUN).exited(0));
}

TEST(Sandbox, VcpuCannotOpenFilesStartThreadsOrMapCode) {
    auto in_vcpu = [](std::function<int()> body) {
        return in_child([body] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(ThreadKind::Vcpu, Mode::On)) return 10;
            return body();
        });
    };
    // The sanitizer builds' filters let their runtimes open files, start threads and map code:
    // there these calls pass (and the calls no runtime needs, below, still die).
    const bool wide = widened_for_sanitizers();
    auto forbidden = [wide](const Child& c) { return wide ? c.exited(0) : c.killed_by_sigsys(); };
    EXPECT_TRUE(forbidden(in_vcpu([] { return ::open("/dev/null", O_RDONLY) >= 0 ? 0 : 1; })));
    EXPECT_TRUE(forbidden(in_vcpu([] {
        std::thread([] {}).join();
        return 0;
    })));
    EXPECT_TRUE(forbidden(in_vcpu([] {
        void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? 1 : 0;
    })));
    EXPECT_TRUE(in_vcpu([] {
                    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                    return p == MAP_FAILED ? 1 : 0;
                }).exited(0));
    EXPECT_TRUE(in_vcpu([] { return ::socket(AF_UNIX, SOCK_STREAM, 0) >= 0 ? 0 : 1; }).killed_by_sigsys());
}

TEST(Sandbox, ThreadsButNoForkWhereThreadsStart) {
    for (ThreadKind kind : {ThreadKind::EventLoop, ThreadKind::DiskIo, ThreadKind::ApiWorker}) {
        SCOPED_TRACE(std::string(kind_name(kind)));
        const Child ok = in_child([kind] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(ThreadKind::Process, Mode::On) || !load(kind, Mode::On)) return 10;
            int x = 0;
            std::thread([&x] { x = 1; }).join();  // clone3: ENOSYS, then clone with CLONE_THREAD
            return x == 1 ? 0 : 11;
        });
        EXPECT_TRUE(ok.exited(0)) << "status " << ok.status << " stderr: " << ok.err;
        const Child forked = in_child([kind] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(kind, Mode::On)) return 10;
            const pid_t p = ::fork();
            if (p == 0) ::_exit(0);
            return 11;
        });
        // (LeakSanitizer forks at exit: the sanitizer builds allow it)
        EXPECT_TRUE(widened_for_sanitizers() ? forked.exited(11) : forked.killed_by_sigsys()) << "status " << forked.status;
    }
}

TEST(Sandbox, NetThreadsOpenFilesReadOnly) {
    auto open_in_net = [](int flags) {
        return in_child([flags] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(ThreadKind::NetIo, Mode::On)) return 10;
            return ::open("/dev/null", flags | O_CLOEXEC) >= 0 ? 0 : 11;
        });
    };
    EXPECT_TRUE(open_in_net(O_RDONLY).exited(0));
    // (the sanitizer builds' runtimes open files for writing: allowed there)
    const bool wide = widened_for_sanitizers();
    EXPECT_TRUE(wide ? open_in_net(O_RDWR).exited(0) : open_in_net(O_RDWR).killed_by_sigsys());
    EXPECT_TRUE(wide ? open_in_net(O_WRONLY | O_CREAT).exited(0) : open_in_net(O_WRONLY | O_CREAT).killed_by_sigsys());
}

TEST(Sandbox, SocketFamilies) {
    auto socket_in = [](ThreadKind kind, int family, int type) {
        return in_child([=] {
            configure({.mode = Mode::On, .test_forbidden = std::nullopt});
            if (!load(kind, Mode::On)) return 10;
            const int fd = ::socket(family, type | SOCK_CLOEXEC, 0);
            return fd >= 0 ? 0 : 11;
        });
    };
    EXPECT_TRUE(socket_in(ThreadKind::NetIo, AF_INET, SOCK_DGRAM).exited(0));
    EXPECT_TRUE(socket_in(ThreadKind::NetIo, AF_INET6, SOCK_STREAM).exited(0));
    EXPECT_TRUE(socket_in(ThreadKind::EventLoop, AF_UNIX, SOCK_STREAM).exited(0));
    EXPECT_TRUE(socket_in(ThreadKind::NetIo, AF_NETLINK, SOCK_RAW).killed_by_sigsys());
    EXPECT_TRUE(socket_in(ThreadKind::Process, AF_PACKET, SOCK_RAW).killed_by_sigsys());
    EXPECT_TRUE(socket_in(ThreadKind::ApiIo, AF_UNIX, SOCK_STREAM).killed_by_sigsys());
    EXPECT_TRUE(socket_in(ThreadKind::DiskIo, AF_INET, SOCK_STREAM).killed_by_sigsys());
}

// What the VMM does with --seccomp-test-forbidden: the hook fires on a thread of that kind
// when it enters its filter, after the process filter.
TEST(Sandbox, TestHookKillsTheProcessFromAThread) {
    for (ThreadKind kind : {ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::ApiIo}) {
        SCOPED_TRACE(std::string(kind_name(kind)));
        const Child c = in_child([kind] {
            configure({.mode = Mode::On, .test_forbidden = kind});
            if (!install_process()) return 10;
            enter(ThreadKind::DiskIo);  // another kind: no hook
            std::thread([kind] { enter(kind); }).join();
            return 11;  // not reached: the whole process goes
        });
        EXPECT_TRUE(c.killed_by_sigsys()) << "status " << c.status << " stderr: " << c.err;
        EXPECT_NE(c.err.find(forbidden_message(kind)), std::string::npos) << c.err;
    }
    // In log mode the VMM runs on.
    const Child c = in_child([] {
        configure({.mode = Mode::Log, .test_forbidden = ThreadKind::Vcpu});
        if (!install_process()) return 10;
        std::thread([] { enter(ThreadKind::Vcpu); }).join();
        return 0;
    });
    EXPECT_TRUE(c.exited(0)) << "status " << c.status << " stderr: " << c.err;
}

TEST(Sandbox, DropUser) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    auto u = resolve_user("65534:65534");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->uid, 65534u);
    EXPECT_EQ(u->gid, 65534u);
    EXPECT_FALSE(resolve_user("no-such-user-here"));
    EXPECT_FALSE(resolve_user(":1"));
    const Child c = in_child([&u] {
        configure({.mode = Mode::On, .test_forbidden = std::nullopt});
        if (!install_process()) return 10;
        std::thread other([] {
            for (;;) ::sleep(1000);
        });  // glibc changes every thread's ids
        other.detach();
        if (!drop_user(*u)) return 11;
        if (::getuid() != 65534 || ::getgid() != 65534 || ::getgroups(0, nullptr) != 0) return 12;
        if (::setuid(0) == 0) return 13;
        return 0;
    });
    EXPECT_TRUE(c.exited(0)) << "status " << c.status << " stderr: " << c.err;
}

TEST(Sandbox, Names) {
    EXPECT_EQ(parse_mode("on"), Mode::On);
    EXPECT_EQ(parse_mode("log"), Mode::Log);
    EXPECT_EQ(parse_mode("off"), Mode::Off);
    EXPECT_FALSE(parse_mode("kill"));
    EXPECT_EQ(default_mode(), sanitizer_build() ? Mode::Log : Mode::On);
}

}  // namespace
}  // namespace enlighten::sandbox
