// The cost of a VMBus doorbell (a fast HvSignalEvent) with a REAL guest on KVM, from the
// guest's `call` into the hypercall page until the device's worker has seen it, in the
// three designs Enlighten has had, plus a baseline:
//
//   guest-only    baseline: the "hypercall page" sets the flag itself and returns; no exit,
//                 no host work. What is left is the guest loop's own cost.
//   before        the hypercall page exits to user space (`in eax, 0x5c`); the vCPU thread
//                 reads the registers with KVM_GET_REGS, decodes the call in
//                 hv::Partition::hypercall() and does the device's work inline (sets the flag).
//   exit+eventfd  the same exit, registers from kvm_run (KVM_CAP_SYNC_REGS, no ioctl); the
//                 event handler only writes the channel's eventfd; a worker thread blocked in
//                 epoll_wait wakes, reads the eventfd and sets the flag.
//   ioeventfd     the hypercall page's doorbell path (`out 0x5d, conn id`), matched by a KVM
//                 ioeventfd on the connection id: KVM signals the eventfd itself, the vCPU goes
//                 straight back to the guest (no exit to user space), the worker sets the flag.
//
// The guest (hand-encoded 64-bit code below; identity-mapped long mode set up here) runs N
// times { clear the flag; call the hypercall page with RCX = 0x1005d (fast HvSignalEvent),
// RDX = connection id; spin with `pause` until the flag is non-zero } and then HLT. A second
// copy of the loop adds rdtsc before and after the `call` and after the flag was seen; it runs
// separately, so the headline wall time carries no rdtsc. No in-kernel irqchip: nothing here
// needs interrupts, and without one HLT exits to user space, which is how the host learns that
// the guest is done (with an irqchip HLT would wait in KVM for an interrupt that never comes).
//
// Reported per variant (after a warm-up, R rounds, each running every variant plain and timed,
// first variant rotated): wall time per doorbell (KVM_RUN until HLT, / N), exits to user space
// per doorbell, KVM's own exit counters per doorbell (KVM_GET_STATS_FD: every VM exit, also
// those KVM handles in the kernel), the worker's wake-ups per doorbell; from the timed loop,
// the vCPU stalled inside the `call` and the guest's whole round trip (TSC at
// KVM_GET_TSC_KHZ). First, a calibration: ns per iteration of `dec rbx; jnz`, i.e. how fast
// this KVM runs guest code at all.
//
//   build/bench/doorbell_bench                     5 runs x 20000 doorbells, all variants
//   build/bench/doorbell_bench --runs 3 --iterations 5000 --variants before,ioeventfd
//   build/bench/doorbell_bench --pin 0             vCPU thread on CPU 0, workers on CPU 1
//
// Benchmarks never fail a test run; this one is not part of CI. See bench/README.md and
// bench/results/doorbell-*.md.
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/result.hpp"
#include "hv/partition.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/kvm.hpp"
#include "platform/layout.hpp"

using namespace enlighten;

namespace {

// ---- Guest physical layout (one 4 MiB slot at 0) ----
constexpr uint64_t kMemSize = 4ULL << 20;
constexpr uint64_t kGdt = 0x1000;
constexpr uint64_t kPml4 = 0x2000;
constexpr uint64_t kPdpt = 0x3000;
constexpr uint64_t kPd = 0x4000;
constexpr uint64_t kHypercallPage = 0x5000;
constexpr uint64_t kCode = 0x6000;        // the plain loop
constexpr uint64_t kTimedCode = 0x6100;   // the loop with rdtsc
constexpr uint64_t kTightLoop = 0x6200;   // the calibration loop
constexpr uint64_t kTightIterations = 1000000;
constexpr uint64_t kFlag = 0x7000;  // the "device done" word, alone in its page
constexpr uint64_t kStackTop = 0x10000;
constexpr uint16_t kCodeSelector = 0x08;
constexpr uint16_t kDataSelector = 0x10;
constexpr uint32_t kConnectionId = 0x2a;  // the channel's connection id (bits 63:24 zero)

// The guest, plain: N doorbells and nothing else. Entry: RBX = N, RDI = &flag, RSP = stack.
// The hypercall page may clobber RAX, RCX, RDX, R8-R11 (Linux's hv_do_fast_hypercall8
// contract); RBX and RDI survive it. Checked with `as --64` + `objdump -d -M intel`.
constexpr std::array<uint8_t, 0x28> kGuestCode = {
                                               // loop:
    0xc7, 0x07, 0x00, 0x00, 0x00, 0x00,        // 00: mov dword ptr [rdi], 0     clear the flag
    0x48, 0xc7, 0xc1, 0x5d, 0x00, 0x01, 0x00,  // 06: mov rcx, 0x1005d           fast HvSignalEvent
    0x48, 0xc7, 0xc2, 0x2a, 0x00, 0x00, 0x00,  // 0d: mov rdx, 0x2a              connection id
    0xb8, 0x00, 0x50, 0x00, 0x00,              // 14: mov eax, 0x5000            hypercall page
    0xff, 0xd0,                                // 19: call rax
                                               // spin:
    0xf3, 0x90,                                // 1b: pause
    0x83, 0x3f, 0x00,                          // 1d: cmp dword ptr [rdi], 0
    0x74, 0xf9,                                // 20: je spin
    0x48, 0xff, 0xcb,                          // 22: dec rbx
    0x75, 0xd9,                                // 25: jnz loop
    0xf4,                                      // 27: hlt
};
static_assert(kGuestCode[0x10] == kConnectionId && kGuestCode[0x11] == 0 && kGuestCode[0x12] == 0);
static_assert(kGuestCode[0x15] == (kHypercallPage & 0xff) && kGuestCode[0x16] == ((kHypercallPage >> 8) & 0xff) &&
              kGuestCode[0x17] == 0 && kGuestCode[0x18] == 0);

// The same loop with rdtsc around the `call` and after the flag was seen (separate runs:
// on some KVMs rdtsc itself is expensive, see the report). Exit (HLT): R13 = TSC ticks spent
// inside the `call`s (the vCPU stalled), R14 = ticks from before each `call` until the flag
// was seen (the round trip). The hypercall page may clobber RAX, RCX, RDX, R8-R11 (Linux's
// hv_do_fast_hypercall8 contract); R12-R14, RBX and RDI survive it.
// Checked with `as --64` + `objdump -d -M intel` (offsets on the left).
constexpr std::array<uint8_t, 0x58> kTimedGuestCode = {
    0x45, 0x31, 0xed,                          // 00: xor r13d, r13d
    0x45, 0x31, 0xf6,                          // 03: xor r14d, r14d
                                               // loop:
    0xc7, 0x07, 0x00, 0x00, 0x00, 0x00,        // 06: mov dword ptr [rdi], 0     clear the flag
    0x0f, 0x31,                                // 0c: rdtsc
    0x48, 0xc1, 0xe2, 0x20,                    // 0e: shl rdx, 32
    0x48, 0x09, 0xd0,                          // 12: or rax, rdx
    0x49, 0x89, 0xc4,                          // 15: mov r12, rax               t0
    0x48, 0xc7, 0xc1, 0x5d, 0x00, 0x01, 0x00,  // 18: mov rcx, 0x1005d           fast HvSignalEvent
    0x48, 0xc7, 0xc2, 0x2a, 0x00, 0x00, 0x00,  // 1f: mov rdx, 0x2a              connection id
    0xb8, 0x00, 0x50, 0x00, 0x00,              // 26: mov eax, 0x5000            hypercall page
    0xff, 0xd0,                                // 2b: call rax
    0x0f, 0x31,                                // 2d: rdtsc
    0x48, 0xc1, 0xe2, 0x20,                    // 2f: shl rdx, 32
    0x48, 0x09, 0xd0,                          // 33: or rax, rdx
    0x4c, 0x29, 0xe0,                          // 36: sub rax, r12
    0x49, 0x01, 0xc5,                          // 39: add r13, rax               stall += t1 - t0
                                               // spin:
    0xf3, 0x90,                                // 3c: pause
    0x83, 0x3f, 0x00,                          // 3e: cmp dword ptr [rdi], 0
    0x74, 0xf9,                                // 41: je spin
    0x0f, 0x31,                                // 43: rdtsc
    0x48, 0xc1, 0xe2, 0x20,                    // 45: shl rdx, 32
    0x48, 0x09, 0xd0,                          // 49: or rax, rdx
    0x4c, 0x29, 0xe0,                          // 4c: sub rax, r12
    0x49, 0x01, 0xc6,                          // 4f: add r14, rax               rtt += t2 - t0
    0x48, 0xff, 0xcb,                          // 52: dec rbx
    0x75, 0xaf,                                // 55: jnz loop
    0xf4,                                      // 57: hlt
};
static_assert(kTimedGuestCode[0x22] == kConnectionId && kTimedGuestCode[0x23] == 0 && kTimedGuestCode[0x24] == 0);
static_assert(kTimedGuestCode[0x27] == (kHypercallPage & 0xff) &&
              kTimedGuestCode[0x28] == ((kHypercallPage >> 8) & 0xff) && kTimedGuestCode[0x29] == 0 &&
              kTimedGuestCode[0x2a] == 0);

// Calibration: how fast this KVM runs guest code at all (RBX = N iterations, then HLT).
constexpr std::array<uint8_t, 6> kTightCode = {
    0x48, 0xff, 0xcb,  // 00: dec rbx
    0x75, 0xfb,        // 03: jnz 00
    0xf4,              // 05: hlt
};
static_assert(kCode + kGuestCode.size() <= kTimedCode && kTimedCode + kTimedGuestCode.size() <= kTightLoop &&
              kTightLoop + kTightCode.size() <= kFlag);

// The guest-only baseline's "hypercall page": the device is done at once, inside the guest.
// What is left is the guest loop's own cost (three rdtsc, call/ret, one pause + cmp).
constexpr std::array<uint8_t, 9> kGuestOnlyPage = {
    0xc7, 0x07, 0x01, 0x00, 0x00, 0x00,  // mov dword ptr [rdi], 1
    0x31, 0xc0,                          // xor eax, eax
    0xc3,                                // ret
};

enum class Mode { GuestOnly, Before, ExitEventfd, Ioeventfd };
constexpr std::array<Mode, 4> kAllModes = {Mode::GuestOnly, Mode::Before, Mode::ExitEventfd, Mode::Ioeventfd};

const char* mode_name(Mode m) {
    switch (m) {
        case Mode::GuestOnly: return "guest-only";
        case Mode::Before: return "before";
        case Mode::ExitEventfd: return "exit+eventfd";
        case Mode::Ioeventfd: return "ioeventfd";
    }
    return "?";
}

// The Partition's SynIC needs a sink; the benchmark never raises an interrupt.
class NullSink final : public hv::InterruptSink {
public:
    void raise(uint32_t, uint8_t) override {}
};

// ---- Watchdog: SIGALRM ends a KVM_RUN that never comes back (a doorbell that got lost) ----
volatile sig_atomic_t g_timed_out = 0;
std::atomic<kvm_run*> g_running{nullptr};

void on_alarm(int) {
    g_timed_out = 1;
    if (kvm_run* run = g_running.load()) __atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
}

// --pin: the vCPU thread on CPU 0, the device workers on CPU 1 (-1: no pinning).
int g_vcpu_cpu = -1, g_worker_cpu = -1;

void pin_this_thread(int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<size_t>(cpu), &set);
    if (::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set) != 0)
        std::fprintf(stderr, "doorbell_bench: cannot pin a thread to CPU %d\n", cpu);
}

void block_alarm_in_this_thread() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

// ---- KVM's per-vCPU statistics (KVM_GET_STATS_FD, Linux 5.14+) ----
class VcpuStats {
public:
    // valid() is false when the kernel has no binary stats or lacks the two counters.
    explicit VcpuStats(int vcpu_fd) {
        fd_.reset(::ioctl(vcpu_fd, KVM_GET_STATS_FD, 0));
        if (!fd_.valid()) return;
        kvm_stats_header h{};
        if (::pread(fd_.get(), &h, sizeof(h), 0) != static_cast<ssize_t>(sizeof(h))) {
            fd_.reset();
            return;
        }
        // Each descriptor: flags u32, exponent s16, size u16, offset u32, bucket_size u32, name[name_size].
        constexpr size_t kFixed = 16;
        const size_t desc_size = kFixed + h.name_size;
        std::vector<char> descs(desc_size * h.num_desc);
        if (::pread(fd_.get(), descs.data(), descs.size(), h.desc_offset) != static_cast<ssize_t>(descs.size())) {
            fd_.reset();
            return;
        }
        for (size_t i = 0; i < h.num_desc; ++i) {
            const char* d = descs.data() + i * desc_size;
            uint32_t offset;
            std::memcpy(&offset, d + 8, sizeof(offset));
            const std::string_view name(d + kFixed, strnlen(d + kFixed, h.name_size));
            if (name == "exits") exits_ = h.data_offset + offset;
            if (name == "io_exits") io_exits_ = h.data_offset + offset;
        }
    }
    [[nodiscard]] bool valid() const { return fd_.valid() && exits_ && io_exits_; }
    [[nodiscard]] uint64_t exits() const { return read(exits_); }
    [[nodiscard]] uint64_t io_exits() const { return read(io_exits_); }

private:
    [[nodiscard]] uint64_t read(std::optional<uint64_t> off) const {
        uint64_t v = 0;
        if (!off || ::pread(fd_.get(), &v, sizeof(v), static_cast<off_t>(*off)) != static_cast<ssize_t>(sizeof(v)))
            return 0;
        return v;
    }
    UniqueFd fd_;
    std::optional<uint64_t> exits_, io_exits_;
};

// ---- The device's worker: blocks in epoll_wait on the channel's eventfd, sets the flag ----
class Worker {
public:
    Worker(int doorbell_fd, uint32_t* flag) : doorbell_fd_(doorbell_fd), flag_(flag) {}
    ~Worker() { stop(); }

    Result<> start() {
        stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
        epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
        if (!stop_fd_.valid() || !epoll_.valid()) return fail_errno("eventfd/epoll_create1");
        for (int fd : {doorbell_fd_, stop_fd_.get()}) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.fd = fd;
            if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) return fail_errno("epoll_ctl");
        }
        thread_ = std::thread([this] { loop(); });
        return {};
    }
    void stop() {
        if (!thread_.joinable()) return;
        const uint64_t one = 1;
        (void)!::write(stop_fd_.get(), &one, sizeof(one));
        thread_.join();
    }
    [[nodiscard]] uint64_t wakes() const { return wakes_.load(); }

private:
    void loop() {
        block_alarm_in_this_thread();
        pin_this_thread(g_worker_cpu);
        std::atomic_ref<uint32_t> flag(*flag_);
        for (;;) {
            epoll_event ev[2];
            const int n = ::epoll_wait(epoll_.get(), ev, 2, -1);
            if (n < 0) continue;  // EINTR
            for (int i = 0; i < n; ++i) {
                if (ev[i].data.fd == stop_fd_.get()) return;
                uint64_t count;
                if (::read(doorbell_fd_, &count, sizeof(count)) != static_cast<ssize_t>(sizeof(count))) continue;
                wakes_.fetch_add(1, std::memory_order_relaxed);
                flag.store(1, std::memory_order_release);  // the "device's work"
            }
        }
    }

    int doorbell_fd_;
    uint32_t* flag_;
    UniqueFd stop_fd_, epoll_;
    std::thread thread_;
    std::atomic<uint64_t> wakes_{0};
};

enum class Loop { Plain, Timed, Tight };

struct RunResult {
    uint64_t n = 0;
    double wall_ns = 0;           // KVM_RUN .. HLT
    uint64_t stall_ticks = 0;     // guest R13
    uint64_t rtt_ticks = 0;       // guest R14
    uint64_t user_exits = 0;      // every return of KVM_RUN (but the final HLT)
    uint64_t hypercall_exits = 0; // `in eax, 0x5c`
    uint64_t doorbell_exits = 0;  // `out 0x5d` that no ioeventfd matched
    uint64_t kvm_exits = 0, kvm_io_exits = 0;  // KVM's counters (0 without binary stats)
    uint64_t wakes = 0;
};

// One VM per variant: memory, page tables, the hypercall page, one vCPU, and its device.
class Bench {
public:
    explicit Bench(Mode mode) : mode_(mode) {}
    ~Bench() {
        if (worker_) worker_->stop();
    }

    Result<> setup(const Kvm& kvm, const std::vector<kvm_cpuid_entry2>& cpuid, bool sync_regs) {
        ENL_TRY(vm_, kvm.create_vm());
        // Only Intel without unrestricted guest needs it (real mode); harmless elsewhere.
        (void)vm_->set_tss_addr(layout::kKvmTss);
        ENL_TRY(mem_, GuestMemory::allocate({{0, kMemSize, nullptr}}));
        uint8_t* host = mem_.host_ptr(0, kMemSize);
        ENL_TRY_VOID(vm_->set_slot(0, 0, kMemSize, host));
        flag_ = reinterpret_cast<uint32_t*>(host + kFlag);

        // GDT: null, 64-bit code (P, DPL 0, S, type execute/read, L, G), data (P, S,
        // read/write, D/B, G). KVM takes the hidden parts from KVM_SET_SREGS below; the
        // guest never reloads a segment register, so the GDT only has to be consistent.
        const std::array<uint64_t, 3> gdt = {0, 0x00af9b000000ffffULL, 0x00cf93000000ffffULL};
        ENL_TRY_VOID(mem_.write(kGdt, std::span(reinterpret_cast<const uint8_t*>(gdt.data()), sizeof(gdt))));
        // Identity map of the first 4 MiB with 2 MiB pages: PML4[0] -> PDPT[0] -> PD[0..1].
        constexpr uint64_t kPresentWrite = 0x3, kPageSize2M = 0x80;
        ENL_TRY_VOID(mem_.write_obj<uint64_t>(kPml4, kPdpt | kPresentWrite));
        ENL_TRY_VOID(mem_.write_obj<uint64_t>(kPdpt, kPd | kPresentWrite));
        for (uint64_t i = 0; i < kMemSize / (2ULL << 20); ++i)
            ENL_TRY_VOID(mem_.write_obj<uint64_t>(kPd + i * 8, (i << 21) | kPresentWrite | kPageSize2M));

        // The hypercall page: for the three real variants exactly what Partition writes when
        // the guest enables it (with the doorbell port only for `ioeventfd`).
        if (mode_ == Mode::GuestOnly) {
            ENL_TRY_VOID(mem_.write(kHypercallPage, kGuestOnlyPage));
        } else {
            const auto stub = hv::Partition::hypercall_stub(layout::kHypercallPort,
                                                            mode_ == Mode::Ioeventfd ? layout::kDoorbellPort : 0);
            ENL_TRY_VOID(mem_.write(kHypercallPage, stub));
        }
        ENL_TRY_VOID(mem_.write(kCode, kGuestCode));
        ENL_TRY_VOID(mem_.write(kTimedCode, kTimedGuestCode));
        ENL_TRY_VOID(mem_.write(kTightLoop, kTightCode));

        hv::PartitionConfig pc;
        pc.hypercall_port = layout::kHypercallPort;
        pc.doorbell_port = mode_ == Mode::Ioeventfd ? layout::kDoorbellPort : 0;
        partition_ = std::make_unique<hv::Partition>(mem_, sink_, pc);
        if (mode_ == Mode::Before || mode_ == Mode::GuestOnly) {
            // The old design: the device's work runs inline on the vCPU thread.
            partition_->set_handlers(nullptr, [this](uint32_t, uint32_t conn, uint16_t) {
                if (conn != kConnectionId) return hv::Status::InvalidConnectionId;
                std::atomic_ref<uint32_t>(*flag_).store(1, std::memory_order_release);
                return hv::Status::Success;
            });
        } else {
            doorbell_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
            if (!doorbell_.valid()) return fail_errno("eventfd");
            partition_->set_handlers(nullptr, [this](uint32_t, uint32_t conn, uint16_t) {
                if (conn != kConnectionId) return hv::Status::InvalidConnectionId;
                ring_eventfd();
                return hv::Status::Success;
            });
            if (mode_ == Mode::Ioeventfd)
                ENL_TRY_VOID(vm_->set_pio_eventfd(layout::kDoorbellPort, kConnectionId, doorbell_.get(), true));
            worker_ = std::make_unique<Worker>(doorbell_.get(), flag_);
            ENL_TRY_VOID(worker_->start());
        }

        ENL_TRY(vcpu_, vm_->create_vcpu(0));
        ENL_TRY_VOID(vcpu_->set_cpuid(cpuid));  // KVM refuses EFER.LME without CPUID LM
        synced_ = (mode_ == Mode::ExitEventfd || mode_ == Mode::Ioeventfd) && sync_regs;
        if (synced_) vcpu_->enable_sync_regs();
        stats_ = std::make_unique<VcpuStats>(vcpu_->fd());

        // Long mode directly: CR0 = PE|MP|ET|NE|PG, CR4 = PAE, EFER = LME|LMA, CR3 = PML4.
        ENL_TRY(kvm_sregs sregs, vcpu_->get_sregs());
        kvm_segment code{};
        code.limit = 0xffffffff;
        code.selector = kCodeSelector;
        code.type = 0xb;  // execute/read, accessed
        code.present = 1;
        code.s = 1;
        code.l = 1;
        code.g = 1;
        kvm_segment data = code;
        data.selector = kDataSelector;
        data.type = 0x3;  // read/write, accessed
        data.l = 0;
        data.db = 1;
        kvm_segment tss{};  // VMX wants a usable busy TSS; never loaded from the GDT here
        tss.limit = 0x67;
        tss.selector = 0x18;
        tss.type = 0xb;
        tss.present = 1;
        sregs.cs = code;
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
        sregs.tr = tss;
        sregs.gdt.base = kGdt;
        sregs.gdt.limit = static_cast<uint16_t>(sizeof(gdt) - 1);
        sregs.idt.base = 0;
        sregs.idt.limit = 0;  // no IDT: the guest takes no exception or interrupt
        sregs.cr0 = 0x80000033;
        sregs.cr3 = kPml4;
        sregs.cr4 = 0x20;
        sregs.efer = 0x500;
        return vcpu_->set_sregs(sregs);
    }

    [[nodiscard]] bool synced() const { return synced_; }
    [[nodiscard]] bool has_kvm_stats() const { return stats_ && stats_->valid(); }

    Result<RunResult> run(uint64_t n, Loop loop, unsigned timeout_s) {
        const bool timed = loop == Loop::Timed;
        kvm_regs regs{};
        regs.rip = loop == Loop::Plain ? kCode : timed ? kTimedCode : kTightLoop;
        regs.rsp = kStackTop;
        regs.rflags = 0x2;
        regs.rbx = n;
        regs.rdi = kFlag;
        ENL_TRY_VOID(vcpu_->set_regs(regs));
        std::atomic_ref<uint32_t>(*flag_).store(0);

        RunResult r;
        r.n = n;
        const uint64_t kvm_exits0 = has_kvm_stats() ? stats_->exits() : 0;
        const uint64_t kvm_io0 = has_kvm_stats() ? stats_->io_exits() : 0;
        const uint64_t wakes0 = worker_ ? worker_->wakes() : 0;
        kvm_run* run = vcpu_->run_struct();
        g_timed_out = 0;
        g_running.store(run);
        ::alarm(timeout_s);
        const auto t0 = std::chrono::steady_clock::now();
        bool done = false;
        while (!done) {
            auto ran = vcpu_->run();
            if (!ran) return std::unexpected(ran.error());
            if (!*ran || g_timed_out) {
                if (g_timed_out) {
                    g_running.store(nullptr);
                    run->immediate_exit = 0;
                    return fail("{}: no HLT after {} s (flag {}), giving up", mode_name(mode_), timeout_s,
                                std::atomic_ref<uint32_t>(*flag_).load());
                }
                continue;
            }
            switch (run->exit_reason) {
                case KVM_EXIT_HLT:
                    done = true;
                    break;
                case KVM_EXIT_IO:
                    ++r.user_exits;
                    ENL_TRY_VOID(handle_io(run, r));
                    break;
                case KVM_EXIT_INTR:
                    ++r.user_exits;
                    break;
                default:
                    ::alarm(0);
                    g_running.store(nullptr);
                    return fail("{}: unexpected exit reason {}", mode_name(mode_), run->exit_reason);
            }
        }
        const auto t1 = std::chrono::steady_clock::now();
        ::alarm(0);
        g_running.store(nullptr);
        r.wall_ns = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
        ENL_TRY(kvm_regs end, vcpu_->get_regs());
        if (timed) {
            r.stall_ticks = end.r13;
            r.rtt_ticks = end.r14;
        }
        if (has_kvm_stats()) {
            r.kvm_exits = stats_->exits() - kvm_exits0;
            r.kvm_io_exits = stats_->io_exits() - kvm_io0;
        }
        // Let the worker finish counting the last wake-up (it set the flag just before).
        if (worker_) {
            for (int i = 0; i < 1000 && worker_->wakes() - wakes0 < n; ++i) std::this_thread::yield();
            r.wakes = worker_->wakes() - wakes0;
        }
        return r;
    }

    Result<uint32_t> tsc_khz() const { return vcpu_->tsc_khz(); }

private:
    void ring_eventfd() {
        const uint64_t one = 1;
        (void)!::write(doorbell_.get(), &one, sizeof(one));
    }

    Result<> handle_io(kvm_run* run, RunResult& r) {
        auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
        if (run->io.port == layout::kHypercallPort && run->io.direction == KVM_EXIT_IO_IN && run->io.size == 4) {
            ++r.hypercall_exits;
            // before: KVM_GET_REGS (an ioctl); the others: the copy KVM left in kvm_run.
            ENL_TRY(kvm_regs regs, mode_ == Mode::Before ? vcpu_->get_regs() : vcpu_->exit_regs());
            const auto status = static_cast<uint32_t>(partition_->hypercall(0, regs.rcx, regs.rdx, regs.r8));
            std::memcpy(data, &status, sizeof(status));
            return {};
        }
        if (run->io.port == layout::kDoorbellPort && run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4) {
            // The doorbell write reached user space: no ioeventfd matched (what the VMM's
            // slow path does, so the run still completes; counted and reported).
            ++r.doorbell_exits;
            ring_eventfd();
            return {};
        }
        return fail("{}: unexpected port {} {:#x} size {}", mode_name(mode_),
                    run->io.direction == KVM_EXIT_IO_OUT ? "write" : "read", run->io.port, run->io.size);
    }

    Mode mode_;
    NullSink sink_;
    std::unique_ptr<Vm> vm_;
    GuestMemory mem_;
    uint32_t* flag_ = nullptr;
    std::unique_ptr<hv::Partition> partition_;
    UniqueFd doorbell_;
    std::unique_ptr<Worker> worker_;
    std::unique_ptr<Vcpu> vcpu_;
    std::unique_ptr<VcpuStats> stats_;
    bool synced_ = false;
};

// ---- Host description ----
std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    return "?";
}

const char* cpu_flag(std::string_view flag) {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("flags", 0) == 0) {
            const std::string padded = line + " ";
            return padded.find(" " + std::string(flag) + " ") != std::string::npos ? "yes" : "no";
        }
    return "?";
}

std::string load_average() {
    std::ifstream f("/proc/loadavg");
    std::string a, b, c;
    f >> a >> b >> c;
    return a + " " + b + " " + c;
}

std::string kvm_modules() {
    std::string out;
    for (const char* m : {"kvm_amd", "kvm_intel", "kvm_pvm"})
        if (::access((std::string("/sys/module/") + m).c_str(), F_OK) == 0) out += (out.empty() ? "" : ",") + std::string(m);
    return out.empty() ? "none of kvm_amd/kvm_intel/kvm_pvm" : out;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

double minimum(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

int usage() {
    std::fprintf(stderr,
                 "usage: doorbell_bench [--runs R] [--iterations N] [--warmup N] [--timeout S] [--pin CPU]\n"
                 "                      [--variants guest-only,before,exit+eventfd,ioeventfd]\n"
                 "  --pin CPU: the vCPU thread on CPU (0 or 1), the device workers on the other one\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    log::init_stderr();
    log::set_level(log::Level::Warn);
    unsigned runs = 5;
    uint64_t iterations = 20000, warmup = 2000;
    unsigned timeout_s = 300;
    std::vector<Mode> modes(kAllModes.begin(), kAllModes.end());
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc) return usage();
        const char* v = argv[++i];
        if (a == "--runs") runs = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else if (a == "--iterations") iterations = std::strtoull(v, nullptr, 10);
        else if (a == "--warmup") warmup = std::strtoull(v, nullptr, 10);
        else if (a == "--timeout") timeout_s = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else if (a == "--pin") {
            g_vcpu_cpu = std::atoi(v);
            g_worker_cpu = g_vcpu_cpu == 0 ? 1 : 0;
        } else if (a == "--variants") {
            modes.clear();
            std::string_view list = v;
            while (!list.empty()) {
                const auto comma = list.find(',');
                const std::string_view name = list.substr(0, comma);
                const auto it = std::find_if(kAllModes.begin(), kAllModes.end(),
                                             [&](Mode m) { return name == mode_name(m); });
                if (it == kAllModes.end()) return usage();
                modes.push_back(*it);
                list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
            }
        } else {
            return usage();
        }
    }
    if (runs == 0 || iterations == 0 || modes.empty()) return usage();

    struct sigaction sa{};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN returns EINTR
    ::sigaction(SIGALRM, &sa, nullptr);

    auto kvm = Kvm::open();
    if (!kvm) {
        std::fprintf(stderr, "doorbell_bench: %s\n", kvm.error().message().c_str());
        return 1;
    }
    auto cpuid = kvm->supported_cpuid();
    if (!cpuid) {
        std::fprintf(stderr, "doorbell_bench: %s\n", cpuid.error().message().c_str());
        return 1;
    }
    const bool sync_regs =
        (static_cast<uint64_t>(kvm->check_extension(KVM_CAP_SYNC_REGS)) & KVM_SYNC_X86_REGS) != 0;

    utsname u{};
    ::uname(&u);
    std::printf("host: %s %s, %s, %u CPUs, module %s\n", u.sysname, u.release, cpu_model().c_str(),
                std::thread::hardware_concurrency(), kvm_modules().c_str());
    std::printf("KVM: sync regs %s, ioeventfd %d, binary stats %d; CPU flags: hypervisor %s, svm %s, vmx %s\n",
                sync_regs ? "yes" : "no", kvm->check_extension(KVM_CAP_IOEVENTFD),
                kvm->check_extension(KVM_CAP_BINARY_STATS_FD), cpu_flag("hypervisor"), cpu_flag("svm"),
                cpu_flag("vmx"));

    pin_this_thread(g_vcpu_cpu);  // the vCPUs run on this thread
    if (g_vcpu_cpu >= 0) std::printf("pinned: vCPU thread on CPU %d, workers on CPU %d\n", g_vcpu_cpu, g_worker_cpu);
    std::vector<std::unique_ptr<Bench>> benches;
    for (Mode m : modes) {
        auto b = std::make_unique<Bench>(m);
        if (auto r = b->setup(*kvm, *cpuid, sync_regs); !r) {
            std::fprintf(stderr, "doorbell_bench: %s: setup: %s\n", mode_name(m), r.error().message().c_str());
            return 1;
        }
        benches.push_back(std::move(b));
    }
    auto khz = benches.front()->tsc_khz();
    const double tsc_ghz = khz ? *khz / 1e6 : 0;
    std::printf("guest TSC: %s\n", khz ? fmt::format("{} kHz", *khz).c_str() : "unknown (no guest-side times)");
    std::printf("runs: %u x %llu doorbells per variant, plain and with rdtsc (interleaved), warm-up %llu\n", runs,
                static_cast<unsigned long long>(iterations), static_cast<unsigned long long>(warmup));
    std::printf("load average at the start: %s\n\n", load_average().c_str());

    // How fast does this KVM run guest code? (On a software KVM this dominates everything.)
    {
        std::vector<double> ns;
        for (int k = 0; k < 3; ++k) {
            auto r = benches.front()->run(kTightIterations, Loop::Tight, timeout_s);
            if (!r) {
                std::fprintf(stderr, "doorbell_bench: calibration: %s\n", r.error().message().c_str());
                return 1;
            }
            ns.push_back(r->wall_ns / static_cast<double>(r->n));
        }
        std::printf("guest speed: %.2f ns per iteration of a `dec rbx; jnz` loop (median of 3 x %llu)\n", median(ns),
                    static_cast<unsigned long long>(kTightIterations));
    }

    // Warm-up (untimed), then the rounds: every round runs every variant once plain (the
    // headline wall time) and once with rdtsc (the guest's view), the first variant rotated.
    for (auto& b : benches)
        for (bool timed : {false, true})
            if (warmup)
                if (auto r = b->run(warmup, timed ? Loop::Timed : Loop::Plain, timeout_s); !r) {
                    std::fprintf(stderr, "doorbell_bench: warm-up: %s\n", r.error().message().c_str());
                    return 1;
                }
    std::vector<std::vector<RunResult>> plain(benches.size()), timed(benches.size());
    for (unsigned round = 0; round < runs; ++round) {
        for (size_t k = 0; k < benches.size(); ++k) {
            const size_t i = (k + round) % benches.size();
            for (bool with_tsc : {false, true}) {
                if (with_tsc && tsc_ghz <= 0) continue;
                auto r = benches[i]->run(iterations, with_tsc ? Loop::Timed : Loop::Plain, timeout_s);
                if (!r) {
                    std::fprintf(stderr, "doorbell_bench: %s\n", r.error().message().c_str());
                    return 1;
                }
                const double n = static_cast<double>(r->n);
                std::printf("RUN %-12s %-5s round=%u wall_ns=%.0f stall_ns=%.0f rtt_ns=%.0f user_exits=%llu "
                            "hypercall=%llu doorbell=%llu kvm_exits=%llu kvm_io_exits=%llu wakes=%llu\n",
                            mode_name(modes[i]), with_tsc ? "tsc" : "plain", round + 1, r->wall_ns / n,
                            with_tsc ? static_cast<double>(r->stall_ticks) / tsc_ghz / n : 0.0,
                            with_tsc ? static_cast<double>(r->rtt_ticks) / tsc_ghz / n : 0.0,
                            static_cast<unsigned long long>(r->user_exits),
                            static_cast<unsigned long long>(r->hypercall_exits),
                            static_cast<unsigned long long>(r->doorbell_exits),
                            static_cast<unsigned long long>(r->kvm_exits),
                            static_cast<unsigned long long>(r->kvm_io_exits), static_cast<unsigned long long>(r->wakes));
                std::fflush(stdout);
                (with_tsc ? timed : plain)[i].push_back(*r);
            }
        }
    }
    std::printf("load average at the end: %s\n\n", load_average().c_str());

    // Table 1: the plain loop. Wall time and every counter per doorbell.
    std::printf("| variant | ns/doorbell median | min | exits to user space/doorbell | of which in 0x5c / out 0x5d "
                "| KVM exits/doorbell | KVM I/O exits/doorbell | worker wake-ups/doorbell |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < benches.size(); ++i) {
        std::vector<double> wall;
        double n = 0, user = 0, hc = 0, db = 0, ke = 0, kio = 0, wakes = 0;
        for (const auto& r : plain[i]) {
            const double rn = static_cast<double>(r.n);
            wall.push_back(r.wall_ns / rn);
            n += rn;
            user += static_cast<double>(r.user_exits);
            hc += static_cast<double>(r.hypercall_exits);
            db += static_cast<double>(r.doorbell_exits);
            ke += static_cast<double>(r.kvm_exits);
            kio += static_cast<double>(r.kvm_io_exits);
            wakes += static_cast<double>(r.wakes);
        }
        const bool stats = benches[i]->has_kvm_stats();
        std::printf("| %s%s | %.0f | %.0f | %.4f | %.4f / %.4f | %s | %s | %s |\n", mode_name(modes[i]),
                    modes[i] == Mode::Before ? " (GET_REGS)" : (benches[i]->synced() ? " (sync regs)" : ""),
                    median(wall), minimum(wall), user / n, hc / n, db / n,
                    stats ? fmt::format("{:.3f}", ke / n).c_str() : "n/a",
                    stats ? fmt::format("{:.3f}", kio / n).c_str() : "n/a",
                    modes[i] == Mode::Before      ? "- (inline)"
                    : modes[i] == Mode::GuestOnly ? "-"
                                                  : fmt::format("{:.4f}", wakes / n).c_str());
    }
    if (tsc_ghz <= 0) return 0;

    // Table 2: the loop with rdtsc. The guest's own view, in ns at the guest TSC frequency.
    std::printf("\n| variant | vCPU stalled in the call, ns median | min | guest round trip ns median | min "
                "| wall ns/doorbell of these runs, median |\n");
    std::printf("|---|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < benches.size(); ++i) {
        std::vector<double> stall, rtt, wall;
        for (const auto& r : timed[i]) {
            const double rn = static_cast<double>(r.n);
            stall.push_back(static_cast<double>(r.stall_ticks) / tsc_ghz / rn);
            rtt.push_back(static_cast<double>(r.rtt_ticks) / tsc_ghz / rn);
            wall.push_back(r.wall_ns / rn);
        }
        std::printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f |\n", mode_name(modes[i]), median(stall), minimum(stall),
                    median(rtt), minimum(rtt), median(wall));
    }
    return 0;
}
