#include "common/sandbox.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <linux/sockios.h>
#include <linux/if_tun.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <ucontext.h>
#include <unistd.h>

#include <linux/fs.h>

#include <array>
#include <ctime>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "common/log.hpp"

namespace enlighten::sandbox {

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(undefined_behavior_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

Mode g_mode = Mode::Off;
std::optional<ThreadKind> g_test_forbidden;
// The kind whose filter this thread loaded last (for the SIGSYS message); Process until then.
thread_local ThreadKind t_kind = ThreadKind::Process;

// --- the rules ---------------------------------------------------------------------------
//
// A rule allows one system call, either whatever its arguments, or when argument `arg`
// masked with `mask` equals one of `values` (libseccomp ORs rules for the same call).
struct Rule {
    int arg = -1;  // -1: any arguments
    uint64_t mask = 0;
    std::vector<uint64_t> values;
};
using Rules = std::map<std::string, Rule>;

void allow(Rules& r, std::initializer_list<const char*> names) {
    for (const char* n : names) r[n] = Rule{};
}
void allow_if(Rules& r, const char* name, int arg, uint64_t mask, std::initializer_list<uint64_t> values) {
    auto [it, fresh] = r.try_emplace(name, Rule{arg, mask, {}});
    if (!fresh && it->second.arg < 0) return;  // already allowed whatever the arguments
    it->second.values.insert(it->second.values.end(), values.begin(), values.end());
}

// The KVM ioctls with a variable-length structure, numbered with its C size (kvm/kvm.cpp).
constexpr uint64_t kKvmGetSupportedCpuid = _IOWR(KVMIO, 0x05, uint64_t);
constexpr uint64_t kKvmSetCpuid2 = _IOW(KVMIO, 0x90, uint64_t);
constexpr uint64_t kKvmSetMsrs = _IOW(KVMIO, 0x89, uint64_t);
constexpr uint64_t kKvmSetGsiRouting = _IOW(KVMIO, 0x6a, uint64_t);

// ioctl request numbers are 32 bits (the kernel truncates); compare only those.
constexpr uint64_t kIoctlMask = 0xffffffffULL;

// What every thread does: memory, locks, time, signals, thread exit, logging to stderr,
// reading and writing descriptors it was given (eventfds, sockets, files), polling them.
void core(Rules& r) {
    allow(r, {
        // memory (malloc, thread stacks; mprotect for guard pages)
        "brk", "mmap", "munmap", "mprotect", "madvise", "mremap",
        // locks, condition variables, std::thread's bookkeeping (a thread's start runs
        // set_robust_list and rseq under the filters of the thread that created it)
        "futex", "sched_yield", "set_robust_list", "rseq", "restart_syscall",
        // time (the vDSO's fallbacks), sleeps, timed waits
        "clock_gettime", "clock_getres", "gettimeofday", "clock_nanosleep", "nanosleep",
        "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid",
        // signals: the vCPU kick, pthread_kill, abort(), sigmask changes, the SIGSYS handler
        "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "tgkill", "sigaltstack",
        "exit", "exit_group",
        // descriptors already open: eventfds, sockets, files, stderr (the log)
        "read", "write", "readv", "writev", "close", "fstat", "newfstatat", "fcntl",
        "poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_ctl",
        "getrandom", "sched_getaffinity",
    });
    // pthread_setname_np on itself; no-new-privs (libseccomp sets it at each load); nothing
    // else of prctl
    allow_if(r, "prctl", 0, ~0ULL, {PR_SET_NAME, PR_GET_NAME, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_GET_SECCOMP});
    // Loading a thread kind's filter on top of the inherited ones (it can only narrow them).
    allow_if(r, "seccomp", 0, ~0ULL, {SECCOMP_SET_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL, SECCOMP_GET_NOTIF_SIZES});
    // Never fork or exec: no rule for fork, vfork, execve, execveat; ptrace, mount, bpf,
    // kexec, module loading, keyrings, personality... are not allowed either.
}

// Threads with event loops create eventfds, timers and epoll instances.
void loops(Rules& r) { allow(r, {"eventfd2", "epoll_create1", "timerfd_create", "timerfd_settime", "timerfd_gettime"}); }

// Starting threads: std::thread. clone3's flags are in memory a filter cannot read, so it
// answers ENOSYS (glibc then uses clone: see build()); clone only with CLONE_THREAD (so no
// fork()). The new thread's stack and TLS are mmap/mprotect (core).
void threads(Rules& r) { allow_if(r, "clone", 0, CLONE_THREAD, {CLONE_THREAD}); }

// Files at run time: disk hot-add (raw and VHDX images, O_DIRECT probes, block device sizes),
// checkpoints (create, write, fsync, fallocate, rename, delete VHDX files), file copy to
// the guest (reading the host file), reboots (re-reading the kernel and initrd), /proc/self
// (statm for the API's memory figures).
void files(Rules& r) {
    allow(r, {"openat", "open", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "lseek",
              "fsync", "fdatasync", "fallocate", "ftruncate", "statx", "lstat", "stat", "access", "faccessat",
              "faccessat2", "readlink", "readlinkat", "getcwd", "getdents64", "rename", "renameat", "renameat2",
              "unlink", "unlinkat", "fchmod", "chmod", "fchmodat", "umask", "fadvise64", "mincore", "dup", "dup3",
              "pipe", "pipe2", "sysinfo", "uname"});
}

// Disk I/O through io_uring (backends/disk): rings are set up when a channel opens.
void uring(Rules& r) { allow(r, {"io_uring_setup", "io_uring_enter", "io_uring_register"}); }

// Sockets: AF_UNIX (the API, hv_sock, VNC on unix:PATH, the web console's socketpairs to the
// VNC server), AF_INET and AF_INET6 (slirp's NAT, VNC and --web on TCP, the tap's interface
// ioctls), nothing else (no netlink, no packet sockets).
void sockets(Rules& r) {
    allow_if(r, "socket", 0, ~0ULL, {AF_UNIX, AF_INET, AF_INET6});
    allow_if(r, "socketpair", 0, ~0ULL, {AF_UNIX});
    allow(r, {"connect", "accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
              "shutdown", "setsockopt", "getsockopt", "getsockname", "getpeername"});
}
void listening(Rules& r) { allow(r, {"bind", "listen"}); }

// glibc's setresuid and friends make every thread change its ids (the ids are per thread):
// a thread alive when --user drops them needs these. Harmless: after the drop they can only
// set the ids the process already has, and as root (no --user) the process has them all.
void set_ids(Rules& r) {
    allow(r, {"setresuid", "setresgid", "setgroups", "setuid", "setgid", "getresuid", "getresgid", "getgroups"});
}

void ioctls(Rules& r, std::initializer_list<uint64_t> requests) {
    for (uint64_t req : requests) allow_if(r, "ioctl", 1, kIoctlMask, {req});
}
// What a running vCPU asks KVM (kvm/kvm.cpp's Vcpu).
constexpr std::initializer_list<uint64_t> kKvmVcpu = {
    KVM_RUN,     KVM_GET_REGS,  KVM_SET_REGS,     KVM_GET_SREGS,   KVM_SET_SREGS, KVM_SET_FPU,
    KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_GET_MP_STATE, KVM_GET_TSC_KHZ, kKvmSetMsrs,
};
// What any thread asks the VM at run time (kvm/kvm.hpp: "may be called from any thread"):
// interrupts, memory slots (hot-add, the video's VRAM, the balloon), doorbells.
constexpr std::initializer_list<uint64_t> kKvmVmRuntime = {
    KVM_IRQ_LINE, KVM_SIGNAL_MSI, KVM_SET_USER_MEMORY_REGION, KVM_IOEVENTFD, kKvmSetGsiRouting, KVM_CHECK_EXTENSION,
};
// Creating a VM and its vCPUs: setup, and every reboot (the main thread).
constexpr std::initializer_list<uint64_t> kKvmCreate = {
    KVM_GET_API_VERSION,   KVM_CREATE_VM,     KVM_GET_VCPU_MMAP_SIZE, kKvmGetSupportedCpuid,    KVM_CREATE_IRQCHIP,
    KVM_CREATE_PIT2,       KVM_SET_TSS_ADDR,  KVM_SET_IDENTITY_MAP_ADDR, KVM_CREATE_VCPU,      KVM_ENABLE_CAP,
    KVM_X86_SET_MSR_FILTER, kKvmSetCpuid2,
};
// Block devices as disks (backends/disk/raw.cpp).
constexpr std::initializer_list<uint64_t> kBlock = {BLKGETSIZE64, BLKSSZGET, BLKPBSZGET, BLKDISCARD};
// Creating a tap (setup) and changing its MTU or flags (the guest sets the MTU at run time).
// SIOCGIFINDEX is glibc's if_nametoindex (does the tap exist already?).
constexpr std::initializer_list<uint64_t> kTapSetup = {TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD, SIOCSIFFLAGS,
                                                       SIOCGIFINDEX};
constexpr std::initializer_list<uint64_t> kTapRuntime = {SIOCGIFFLAGS, SIOCSIFMTU, FIONREAD, FIONBIO};
// The serial console on a terminal: isatty, raw mode and its restoring at exit.
constexpr std::initializer_list<uint64_t> kTty = {TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ};

// What the sanitizer runtimes do that the VMM does not: LeakSanitizer at exit stops the
// world (a clone without CLONE_THREAD, ptrace of every thread, /proc/self/task), TSan's
// background thread, reports reading /proc/self/maps.
void sanitizer_runtime(Rules& r) {
    allow(r, {"ptrace", "wait4", "waitid", "clone", "getppid", "openat", "getdents64", "sched_getparam",
              "sched_setaffinity", "prlimit64", "getrlimit", "setrlimit", "readlink", "lseek", "pipe2", "dup2",
              "dup3", "kill", "tkill", "getpgrp", "uname"});
    allow_if(r, "prctl", 0, ~0ULL, {PR_SET_PTRACER, PR_GET_DUMPABLE, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_VMA});
}

Rules rules_for(ThreadKind kind) {
    Rules r;
    core(r);
    switch (kind) {
        case ThreadKind::Process:
            // Setup (opening /dev/kvm, images, taps, binding sockets, loading libvncserver)
            // and everything any thread does later.
            loops(r), threads(r), files(r), uring(r), sockets(r), listening(r), set_ids(r);
            allow(r, {"signalfd4", "prlimit64", "getrlimit", "sched_getparam", "sched_setscheduler"});
            ioctls(r, kKvmVcpu), ioctls(r, kKvmVmRuntime), ioctls(r, kKvmCreate), ioctls(r, kBlock);
            ioctls(r, kTapSetup), ioctls(r, kTapRuntime), ioctls(r, kTty);
            break;
        case ThreadKind::EventLoop:
            // The VM's loop: builds each boot's machine (KVM_CREATE_VM ... on the open
            // /dev/kvm), starts its vCPU and queue threads, serves VMBus, hv_sock connections
            // (connect, accept), the console, the balloon and memory hot-add. Not: bind, listen
            // (all listening sockets exist), tap creation, changing ids.
            loops(r), threads(r), files(r), uring(r), sockets(r);
            ioctls(r, kKvmVcpu), ioctls(r, kKvmVmRuntime), ioctls(r, kKvmCreate), ioctls(r, kBlock);
            ioctls(r, kTapRuntime), ioctls(r, kTty);
            break;
        case ThreadKind::ApiWorker:
            // MachineControl on an API worker: hot-adding disks (open, io_uring, queue threads),
            // checkpoints, file copy, screenshots, KVP, memory (slots). Not the VM's creation.
            loops(r), threads(r), files(r), uring(r), sockets(r), set_ids(r);
            ioctls(r, kKvmVmRuntime), ioctls(r, kBlock), ioctls(r, kTapRuntime);
            break;
        case ThreadKind::ApiIo:
            // The API's loop: accepting and serving connections on the listening sockets (the
            // Unix socket, --web's TCP one); for a browser's console, a socketpair to the VNC
            // server (vnc::Server::connect, whose own thread hands the other end to libvncserver).
            loops(r), set_ids(r);
            allow(r, {"accept", "accept4", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "setsockopt",
                      "getsockopt", "getsockname", "getpeername"});
            allow_if(r, "socketpair", 0, ~0ULL, {AF_UNIX});
            break;
        case ThreadKind::Vcpu:
            // KVM_RUN, and the emulation of port and MMIO accesses, MSRs and hypercalls: state
            // changes, interrupts, memory slots (the video's VRAM BAR), wakeups of other threads.
            ioctls(r, kKvmVcpu), ioctls(r, kKvmVmRuntime);
            break;
        case ThreadKind::DiskIo:
            // A storvsp channel's queue: io_uring, the blocking helper (discard, flush, VHDX
            // growth: pwrite, fsync, fallocate), which it starts.
            loops(r), threads(r), files(r), uring(r);
            ioctls(r, kKvmVmRuntime), ioctls(r, kBlock);
            break;
        case ThreadKind::NetIo:
            // A netvsp channel's queue, the slirp thread (NAT sockets, host forwards: bind,
            // listen; /etc/resolv.conf for DNS), the tap reader (the MTU).
            loops(r), threads(r), sockets(r), listening(r), set_ids(r);
            allow_if(r, "openat", 2, O_ACCMODE, {O_RDONLY});  // read-only: /etc/resolv.conf, /sys, ...
            allow_if(r, "open", 1, O_ACCMODE, {O_RDONLY});
            allow(r, {"lseek", "pipe2", "uname", "sysinfo"});
            ioctls(r, kKvmVmRuntime), ioctls(r, kTapRuntime);
            break;
    }
    if (kSanitized) sanitizer_runtime(r);
    return r;
}

// Where no code runs from new mappings: vCPUs, the API's loop, disk queues.
bool no_exec_mappings(ThreadKind kind) {
    return !kSanitized && (kind == ThreadKind::Vcpu || kind == ThreadKind::ApiIo || kind == ThreadKind::DiskIo);
}

Result<> build_and_load(ThreadKind kind, Mode mode) {
    const uint32_t otherwise = mode == Mode::On ? SCMP_ACT_TRAP : SCMP_ACT_LOG;
    scmp_filter_ctx ctx = ::seccomp_init(otherwise);
    if (!ctx) return fail("seccomp: seccomp_init failed");
    struct Release {
        scmp_filter_ctx c;
        ~Release() { ::seccomp_release(c); }
    } release{ctx};
    Rules rules = rules_for(kind);
    if (no_exec_mappings(kind)) {
        rules.erase("mmap");
        rules.erase("mprotect");
        for (const char* name : {"mmap", "mprotect"}) {
            const int nr = ::seccomp_syscall_resolve_name(name);
            const scmp_arg_cmp no_exec{2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0};
            const int rc = ::seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, &no_exec);
            if (rc < 0) return fail("seccomp: {} rule for {}: {}", kind_name(kind), name, std::strerror(-rc));
        }
    }
    // glibc falls back to clone, whose flags the filter can check (threads()).
    if (rules.contains("clone")) {
        const int rc = ::seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), ::seccomp_syscall_resolve_name("clone3"), 0);
        if (rc < 0) return fail("seccomp: clone3 rule: {}", std::strerror(-rc));
    }
    for (const auto& [name, rule] : rules) {
        const int nr = ::seccomp_syscall_resolve_name(name.c_str());
        if (nr == __NR_SCMP_ERROR) continue;  // not a call on this architecture (open, stat...)
        int rc = 0;
        if (rule.arg < 0) {
            rc = ::seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        } else {
            for (uint64_t v : rule.values) {
                const scmp_arg_cmp cmp{static_cast<unsigned>(rule.arg), SCMP_CMP_MASKED_EQ, rule.mask, v};
                rc = ::seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, &cmp);
                if (rc < 0) break;
            }
        }
        if (rc < 0) return fail("seccomp: {} rule for {}: {}", kind_name(kind), name, std::strerror(-rc));
    }
    if (const int rc = ::seccomp_load(ctx); rc < 0)
        return fail("seccomp: loading the {} filter: {}", kind_name(kind), std::strerror(-rc));
    return {};
}

// --- SIGSYS ----------------------------------------------------------------------------

// System call names by number, for the handler (which may not allocate): filled by configure().
std::array<std::array<char, 24>, 512> g_names{};

void fill_names() {
    for (size_t nr = 0; nr < g_names.size(); ++nr) {
        char* name = ::seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(nr));
        if (!name) continue;
        std::strncpy(g_names[nr].data(), name, g_names[nr].size() - 1);
        std::free(name);
    }
}

// Async-signal-safe: formats into a buffer, one write(2).
void on_sigsys(int, siginfo_t* si, void* context) {
    char buf[160];
    size_t n = 0;
    auto put = [&](std::string_view s) {
        const size_t k = std::min(s.size(), sizeof(buf) - n);
        std::memcpy(buf + n, s.data(), k);
        n += k;
    };
    put("enlighten: seccomp: forbidden system call ");
    char num[24];
    auto [end, ec] = std::to_chars(num, num + sizeof(num), si->si_syscall);
    put(std::string_view(num, ec == std::errc{} ? static_cast<size_t>(end - num) : 0));
    if (const auto nr = static_cast<size_t>(si->si_syscall); si->si_syscall >= 0 && nr < g_names.size() && g_names[nr][0]) {
        put(" (");
        put(g_names[nr].data());
        put(")");
    }
    put(" on a thread of kind ");
    put(kind_name(t_kind));
    put("; stopping with SIGSYS\n");
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, buf, n);
#if defined(__x86_64__)
    // The same call again, SIGSYS blocked in this handler: the kernel then resets SIGSYS to
    // its default action and delivers it, which ends the process (with a core dump if allowed).
    const greg_t* g = static_cast<ucontext_t*>(context)->uc_mcontext.gregs;
    ::syscall(si->si_syscall, g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9]);
#else
    (void)context;
#endif
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGSYS, &dfl, nullptr);
    ::raise(SIGSYS);
    ::_exit(128 + SIGSYS);
}

}  // namespace

std::string_view kind_name(ThreadKind kind) {
    switch (kind) {
        case ThreadKind::Process: return "process";
        case ThreadKind::EventLoop: return "event-loop";
        case ThreadKind::Vcpu: return "vcpu";
        case ThreadKind::ApiIo: return "api-io";
        case ThreadKind::ApiWorker: return "api-worker";
        case ThreadKind::DiskIo: return "disk-io";
        case ThreadKind::NetIo: return "net-io";
    }
    return "?";
}

std::optional<Mode> parse_mode(std::string_view text) {
    if (text == "on") return Mode::On;
    if (text == "log") return Mode::Log;
    if (text == "off") return Mode::Off;
    return std::nullopt;
}

std::string_view mode_name(Mode mode) {
    switch (mode) {
        case Mode::On: return "on";
        case Mode::Log: return "log";
        case Mode::Off: return "off";
    }
    return "?";
}

bool sanitizer_build() { return kSanitized; }
Mode default_mode() { return kSanitized ? Mode::Log : Mode::On; }

void configure(const Options& options) {
    g_mode = options.mode;
    g_test_forbidden = options.test_forbidden;
    // glibc reads /etc/localtime at the first local time conversion; do it now, while any
    // file may still be opened (a vCPU thread's first log line must not need openat).
    ::tzset();
    if (g_mode == Mode::On) {
        fill_names();
        struct sigaction sa {};
        sa.sa_sigaction = on_sigsys;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGSYS, &sa, nullptr);
    }
}

Mode mode() { return g_mode; }

Result<> set_no_new_privs() {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail_errno("prctl(PR_SET_NO_NEW_PRIVS)");
    return {};
}

void close_inherited_fds() {
    if (::syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
    // Kernels before 5.9: one by one, up to the descriptor limit.
    const long max = ::sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 ? max : 1024); ++fd) ::close(static_cast<int>(fd));
}

Result<> load(ThreadKind kind, Mode mode) {
    if (mode == Mode::Off) return {};
    ENL_TRY_VOID(build_and_load(kind, mode));
    t_kind = kind;
    return {};
}

Result<> install_process() {
    if (g_mode == Mode::Off) return {};
    ENL_TRY_VOID(load(ThreadKind::Process, g_mode));
    log::info("seccomp: {} (the process filter is loaded; threads narrow it by kind){}", mode_name(g_mode),
              kSanitized ? "; a sanitizer build: its runtime's calls are allowed too" : "");
    if (g_test_forbidden == ThreadKind::Process) forbidden_call_for_testing();
    return {};
}

void enter(ThreadKind kind) {
    if (g_mode == Mode::Off) return;
    if (auto ok = load(kind, g_mode); !ok) {
        log::error("{}", ok.error().message());
        if (g_mode == Mode::On) std::abort();
        return;
    }
    if (g_test_forbidden == kind) {
        log::warn("seccomp: test hook: a {} thread makes a forbidden call", kind_name(kind));
        forbidden_call_for_testing();
    }
}

long forbidden_call_for_testing() { return ::syscall(SYS_personality, 0xffffffffUL); }

Result<User> resolve_user(const std::string& spec) {
    User u;
    const size_t colon = spec.find(':');
    const std::string who = spec.substr(0, colon);
    if (who.empty()) return fail("--user '{}': no user", spec);
    auto number = [](const std::string& s, uint32_t& out) {
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
        return ec == std::errc{} && p == s.data() + s.size();
    };
    uint32_t id = 0;
    if (number(who, id)) {
        u.uid = id;
        u.name = who;
        const passwd* pw = ::getpwuid(id);
        u.gid = pw ? pw->pw_gid : id;
    } else {
        const passwd* pw = ::getpwnam(who.c_str());
        if (!pw) return fail("--user '{}': no such user", who);
        u.uid = pw->pw_uid;
        u.gid = pw->pw_gid;
        u.name = who;
    }
    if (colon != std::string::npos) {
        const std::string g = spec.substr(colon + 1);
        if (number(g, id)) {
            u.gid = id;
        } else {
            const group* gr = ::getgrnam(g.c_str());
            if (!gr) return fail("--user '{}': no such group '{}'", spec, g);
            u.gid = gr->gr_gid;
        }
    }
    return u;
}

Result<> drop_user(const User& u) {
    if (::setgroups(0, nullptr) != 0) return fail_errno(fmt::format("--user {}: setgroups", u.name));
    if (::setresgid(u.gid, u.gid, u.gid) != 0) return fail_errno(fmt::format("--user {}: setresgid({})", u.name, u.gid));
    if (::setresuid(u.uid, u.uid, u.uid) != 0) return fail_errno(fmt::format("--user {}: setresuid({})", u.name, u.uid));
    uid_t r = 0, e = 0, s = 0;
    gid_t rg = 0, eg = 0, sg = 0;
    if (::getresuid(&r, &e, &s) != 0 || r != u.uid || e != u.uid || s != u.uid || ::getresgid(&rg, &eg, &sg) != 0 ||
        rg != u.gid || eg != u.gid || sg != u.gid)
        return fail("--user {}: the ids did not change", u.name);
    if (u.uid != 0 && ::setresuid(0, 0, 0) == 0) return fail("--user {}: root could be regained", u.name);
    log::info("running as uid {} gid {} from now on", u.uid, u.gid);
    return {};
}

bool widened_for_sanitizers() { return kSanitized; }

}  // namespace enlighten::sandbox
