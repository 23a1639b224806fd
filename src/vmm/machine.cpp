#include "vmm/machine.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <future>
#include <optional>
#include <thread>

#include "common/sandbox.hpp"
#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "devices/hvsock/service.hpp"
#include "hv/partition.hpp"
#include "platform/acpi/acpi.hpp"
#include "platform/boot/linux_loader.hpp"
#include "platform/devices/acpi_pm.hpp"
#include "platform/devices/cmos_rtc.hpp"
#include "platform/devices/legacy.hpp"
#include "platform/devices/pci.hpp"
#include "platform/devices/serial.hpp"
#include "platform/layout.hpp"
#include "common/rate_limit.hpp"
#include "platform/x86_cpu.hpp"
#include "vmbus/server.hpp"
#include "vmm/devices.hpp"
#include "vmm/exit_codes.hpp"

namespace enlighten {

namespace {

constexpr int kKickSignal = SIGUSR1;
// The first address of the upper (kernel) half of the 48-bit canonical address space.
constexpr uint64_t kKernelHalf = 0xffff800000000000ULL;

void install_kick_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_handler = [](int) {};  // only interrupts KVM_RUN
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
        ::sigaction(kKickSignal, &sa, nullptr);
    });
}

// SynIC interrupts: a fixed, edge-triggered MSI to the local APIC of the VP (APIC ID = VP index).
class MsiInterruptSink final : public hv::InterruptSink {
public:
    explicit MsiInterruptSink(const Vm& vm) : vm_(vm) {}
    void raise(uint32_t vp, uint8_t vector) override {
        if (auto r = vm_.signal_msi(layout::kLapicBase | (uint64_t{vp} << 12), vector); !r)
            ENL_LOG_LIMITED(warn, "SynIC interrupt to VP {}: {}", vp, r.error().message());
    }

private:
    const Vm& vm_;
};

// VMBus messages go out through the SynIC message queues.
class SynicMessageSink final : public vmbus::MessageSink {
public:
    explicit SynicMessageSink(hv::Synic& synic) : synic_(synic) {}
    bool send(uint32_t vp, uint32_t sint, std::span<const uint8_t> message) override {
        return synic_.post_message(vp, sint, hv::kMessageTypeVmbus, message);
    }
    bool signal(uint32_t vp, uint32_t sint, uint32_t flag) override { return synic_.signal_event(vp, sint, flag); }

private:
    hv::Synic& synic_;
};

// Every channel's doorbell eventfd becomes a KVM ioeventfd on the doorbell port, matched on
// the channel's connection id: a guest doorbell then wakes the channel's worker inside KVM.
class IoeventfdDoorbells final : public vmbus::DoorbellHooks {
public:
    explicit IoeventfdDoorbells(const Vm& vm) : vm_(vm) {}
    void added(uint32_t connection_id, int fd) override {
        if (auto r = vm_.set_pio_eventfd(layout::kDoorbellPort, connection_id, fd, true); !r)
            ENL_LOG_LIMITED(warn, "doorbell of connection {:#x} stays on the slow path: {}", connection_id,
                            r.error().message());
    }
    void removed(uint32_t connection_id, int fd) override {
        (void)vm_.set_pio_eventfd(layout::kDoorbellPort, connection_id, fd, false);
    }

private:
    const Vm& vm_;
};

// What the devices may change of guest RAM (kvm/ram_control.hpp): this boot's MemoryManager.
class ManagerRamControl final : public RamControl {
public:
    explicit ManagerRamControl(MemoryManager& m) : m_(m) {}
    std::vector<GpaWindow> ram_ranges() const override {
        std::vector<GpaWindow> out = m_.plan().startup_ram;
        for (const auto& r : m_.hot_added_ranges()) out.push_back(r);
        return out;
    }
    GpaWindow hot_add_window() const override { return m_.hot_add_window(); }
    Result<> hot_add(uint64_t gpa, uint64_t size) override {
        ENL_TRY_VOID(m_.hot_add(gpa, size));
        return {};
    }
    Result<> discard(uint64_t gpa, uint64_t size) override { return m_.discard(gpa, size); }
    Result<> map_vram(uint64_t gpa, uint64_t size) override {
        ENL_TRY_VOID(m_.map_vram(gpa, size));
        return {};
    }

private:
    MemoryManager& m_;
};

}  // namespace

int exit_status(const VmExit& exit) {
    switch (exit.kind) {
        case VmExit::Kind::PowerOff: return exit_code::kPowerOff;
        case VmExit::Kind::Reset: return exit_code::kReset;
        case VmExit::Kind::Crash: return exit_code::kGuestCrash;
        case VmExit::Kind::Signal: return exit_code::kSignalBase + exit.signal;
        case VmExit::Kind::Error: return exit_code::kError;
        case VmExit::Kind::ForcedOff: return exit_code::kForcedOff;
    }
    return exit_code::kError;
}

Result<std::unique_ptr<Machine>> Machine::create(const Context& ctx, std::function<void()> on_exit) {
    std::unique_ptr<Machine> m(new Machine(ctx, std::move(on_exit)));
    ENL_TRY_VOID(m->build());
    return m;
}

Machine::Machine(const Context& ctx, std::function<void()> on_exit)
    : kvm_(ctx.kvm),
      cfg_(ctx.cfg),
      console_(ctx.console),
      loop_(ctx.loop),
      devices_(ctx.devices),
      vsock_(ctx.vsock),
      on_exit_(std::move(on_exit)),
      count_ports_(log::enabled(log::Level::Debug)) {
    if (count_ports_) io_by_port_ = std::make_unique<std::array<std::atomic<uint64_t>, 0x10000>>();
}

Result<> Machine::build() {
    const Kvm& kvm = kvm_;
    for (long cap : {KVM_CAP_IRQCHIP, KVM_CAP_PIT2, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_EXT_CPUID, KVM_CAP_USER_MEMORY})
        if (!kvm.check_extension(cap)) return fail("this host's KVM lacks capability {} that Enlighten needs", cap);
    const int max_vcpus = kvm.check_extension(KVM_CAP_MAX_VCPUS);
    if (max_vcpus > 0 && cfg_.cpus > static_cast<uint32_t>(max_vcpus))
        return fail("--cpus {}: this host's KVM supports at most {}", cfg_.cpus, max_vcpus);

    // The hot-add window is sized for --memory max= (the balloon's hot-add); none without it.
    const int nr_slots = kvm.check_extension(KVM_CAP_NR_MEMSLOTS);
    memory_manager_ = std::make_unique<MemoryManager>(
        memory_, slots_, plan_memory(cfg_.memory, std::max(cfg_.memory, cfg_.memory_max)),
        nr_slots > 0 ? static_cast<uint32_t>(nr_slots) : MemoryManager::kDefaultSlots);
    ENL_TRY_VOID(memory_manager_->map_startup_ram());
    ram_control_ = std::make_unique<ManagerRamControl>(*memory_manager_);

    acpi::PlatformDescription platform;
    platform.num_cpus = cfg_.cpus;
    platform.vmbus = cfg_.hyperv;
    platform.vmbus_mmio_low = {memory_manager_->vmbus_mmio_low().gpa, memory_manager_->vmbus_mmio_low().size};
    platform.vmbus_mmio_high = {memory_manager_->vmbus_mmio_high().gpa, memory_manager_->vmbus_mmio_high().size};
    platform.pci = true;
    platform.pci_mmio = {layout::kPciMmioStart, layout::kPciMmioSize};
    ENL_TRY(acpi::Tables tables, acpi::build_tables(platform));
    ENL_TRY_VOID(memory_.write(tables.base_gpa, tables.image));

    log::debug("startup: memory and ACPI tables at {} ms", uptime_ms());

    // The kernel loads on its own thread (its decompression is most of the start-up) while
    // the VM is made here; nothing here writes guest memory until the join, below. On an
    // early return the jthread joins it: guest memory outlives it.
    std::optional<Result<boot::BootEntry>> loaded;
    std::jthread loader([this, &loaded, rsdp = tables.rsdp_gpa] {
        loaded = boot::load_linux(memory_, {cfg_.kernel, cfg_.initrd, cfg_.cmdline, cfg_.memory, rsdp,
                                            cfg_.host_decompress, cfg_.kernel_fd, cfg_.initrd_fd});
        if (*loaded && (*loaded)->host_decompressed)
            log::debug("startup: kernel ({}) decompressed and loaded, entry {:#x}, at {} ms",
                       boot::compression_name(*(*loaded)->host_decompressed), (*loaded)->rip, uptime_ms());
        else if (*loaded)
            log::debug("startup: kernel loaded for the guest's decompressor at {} ms", uptime_ms());
    });

    // The VM itself (slow on some hosts: tens of milliseconds in a nested one) while the
    // kernel is written into its memory; its slots are then the ones recorded so far.
    ENL_TRY(vm_, kvm.create_vm());
    ENL_TRY_VOID(vm_->set_identity_map_addr(layout::kKvmIdentityMap));
    ENL_TRY_VOID(vm_->set_tss_addr(layout::kKvmTss));
    ENL_TRY_VOID(slots_.attach(*vm_));
    log::debug("startup: VM created at {} ms", uptime_ms());

    ENL_TRY_VOID(vm_->create_irqchip());
    ENL_TRY_VOID(vm_->create_pit2());
    ENL_TRY_VOID(vm_->set_gsi_routing(pc_gsi_routing()));
    log::debug("startup: irqchip created at {} ms", uptime_ms());

    ENL_TRY(auto supported, kvm.supported_cpuid());
    const bool sync_regs = (static_cast<uint64_t>(kvm.check_extension(KVM_CAP_SYNC_REGS)) & KVM_SYNC_X86_REGS) != 0;
    for (uint32_t i = 0; i < cfg_.cpus; ++i) {
        ENL_TRY(auto vcpu, vm_->create_vcpu(i));
        // Hypercalls read RCX/RDX/R8 at every exit: from kvm_run, not with an ioctl.
        if (sync_regs) vcpu->enable_sync_regs();
        vcpus_.push_back(std::move(vcpu));
    }

    // KVM emulates the TSC-deadline timer with its in-kernel LAPIC but does not list it in
    // KVM_GET_SUPPORTED_CPUID; the guest then programs one-shot timers the slow way.
    if (kvm.check_extension(KVM_CAP_TSC_DEADLINE_TIMER))
        for (auto& e : supported)
            if (e.function == 0x1) e.ecx |= 1U << 24;

    std::vector<kvm_cpuid_entry2> hv_leaves;
    if (cfg_.hyperv) {
        ENL_TRY_VOID(setup_hyperv());
        hv_leaves = partition_->cpuid_leaves();
        // Hyper-V guests are told the TSC is invariant (CPUID 0x40000003 EAX bit 15); say so
        // in the architectural leaf too.
        for (auto& e : supported)
            if (e.function == 0x80000007) e.edx |= 1U << 8;
    } else {
        // Without the Hyper-V interface the guest sees KVM's own paravirtual leaves (kvmclock).
        for (const auto& e : supported)
            if (e.function >= 0x40000000 && e.function <= 0x4000ffff) hv_leaves.push_back(e);
    }
    log::debug("startup: vCPUs created at {} ms", uptime_ms());
    const CpuTopology topo{cfg_.cpus};
    for (uint32_t i = 0; i < cfg_.cpus; ++i) {
        const Vcpu& vcpu = *vcpus_[i];
        ENL_TRY_VOID(vcpu.set_cpuid(build_cpuid(supported, i, topo, hv_leaves)));
        ENL_TRY_VOID(setup_lapic(vcpu));
    }
    ENL_TRY_VOID(add_platform_devices());
    loader.join();  // it always sets `loaded`
    if (!*loaded) return std::unexpected(loaded->error());
    log::debug("startup: the kernel's loader joined at {} ms", uptime_ms());
    return setup_boot_vcpu(*vcpus_[0], **loaded);
}

Result<> Machine::setup_hyperv() {
    const Kvm& kvm = kvm_;
    if (!kvm.check_extension(KVM_CAP_X86_USER_SPACE_MSR) || !kvm.check_extension(KVM_CAP_X86_MSR_FILTER))
        return fail("the Hyper-V interface needs KVM_CAP_X86_USER_SPACE_MSR and KVM_CAP_X86_MSR_FILTER "
                    "(Linux 5.10 or later); run with --hyperv off");
    // Every synthetic MSR access leaves KVM for us, even where KVM has its own Hyper-V code:
    // a deny filter over the whole range, and exits for MSRs KVM does not know.
    const uint64_t reasons = KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER;
    ENL_TRY_VOID(vm_->enable_cap(KVM_CAP_X86_USER_SPACE_MSR, std::span(&reasons, 1)));
    ENL_TRY_VOID(vm_->deny_msr_range(hv::kMsrRangeFirst, hv::kMsrRangeCount));

    hv::PartitionConfig pc;
    pc.num_vps = cfg_.cpus;
    pc.hypercall_port = layout::kHypercallPort;
    pc.doorbell_port = layout::kDoorbellPort;
    if (auto khz = vcpus_[0]->tsc_khz()) pc.tsc_hz = uint64_t{*khz} * 1000;
    hv_irq_ = std::make_unique<MsiInterruptSink>(*vm_);
    partition_ = std::make_unique<hv::Partition>(memory_, *hv_irq_, pc);
    partition_->on_crash = [this](const hv::CrashReport& crash) {
        std::string text = fmt::format("P0={:#x} P1={:#x} P2={:#x} P3={:#x} P4={:#x} (Hyper-V crash MSRs)",
                                       crash.params[0], crash.params[1], crash.params[2], crash.params[3],
                                       crash.params[4]);
        if (!crash.message.empty()) text += "\nguest kernel log:\n" + crash.message;
        if (cfg_.exit_on_crash) {
            request_exit({VmExit::Kind::Crash, 0, std::move(text)});
        } else {
            log::error("guest crashed (the VM keeps running, --on-crash=stay): {}", text);
        }
    };
    vmbus_sink_ = std::make_unique<SynicMessageSink>(partition_->synic());
    vmbus_ = std::make_unique<vmbus::Server>(*vmbus_sink_, memory_, cfg_.cpus, loop_, &loop_,
                                             [p = partition_.get()] { return p->reference_time(); });
    if (kvm.check_extension(KVM_CAP_IOEVENTFD)) {
        doorbell_hooks_ = std::make_unique<IoeventfdDoorbells>(*vm_);
        vmbus_->set_doorbell_hooks(doorbell_hooks_.get());
    }
    vmbus_->set_ram_control(ram_control_.get());
    partition_->set_handlers(
        [this](uint32_t vp, uint32_t conn, uint32_t type, std::span<const uint8_t> payload) {
            if (type != hv::kMessageTypeVmbus) return hv::Status::InvalidParameter;
            return vmbus_->handle_message(vp, conn, payload);
        },
        [this](uint32_t vp, uint32_t conn, uint16_t flag) { return vmbus_->handle_event(vp, conn, flag); });
    for (const auto& d : devices_.entries()) {
        if (!d.offered->load()) continue;
        ENL_TRY(relids_[d.device.get()], vmbus_->add_device(d.device));
    }
    if (vsock_) vsock_->attach(*vmbus_);
    return {};
}

Result<> Machine::add_platform_devices() {
    auto irq = [this](uint32_t gsi) -> IrqLine {
        return [this, gsi](bool level) {
            if (auto r = vm_->irq_line(gsi, level); !r) log::warn("IRQ {}: {}", gsi, r.error().message());
        };
    };
    serial_ = std::make_shared<Serial>(irq(layout::kCom1Irq), [this](uint8_t b) { console_.write(b); });
    ENL_TRY_VOID(pio_.add(layout::kCom1Port, 8, serial_));
    ENL_TRY_VOID(pio_.add(layout::kCmosPort, 2, std::make_shared<CmosRtc>()));
    pm_ = std::make_shared<AcpiPm>(irq(layout::kSciIrq),
                                   AcpiPm::Callbacks{
                                       .power_off = [this] { request_exit({VmExit::Kind::PowerOff, 0, {}}); },
                                       .reset = [this] { request_exit({VmExit::Kind::Reset, 0, {}}); },
                                   });
    ENL_TRY_VOID(pio_.add(layout::kPm1aEventPort, AcpiPm::kSize, pm_));
    ENL_TRY_VOID(pio_.add(layout::kI8042CommandPort, 1, std::make_shared<I8042Reset>([this] {
        request_exit({VmExit::Kind::Reset, 0, {}});
    })));
    ENL_TRY_VOID(pio_.add(0x80, 1, std::make_shared<SinkDevice>()));  // POST code / I/O delay
    // PCI bus 0: a host bridge (an i440FX's IDs, as QEMU's pc machine: Linux's direct probe
    // finds a host bridge class there), and the synthetic video's PCI identity, which
    // hyperv_fb looks up before it picks its framebuffer (contract-input-video §5).
    auto pci = std::make_shared<PciBus>();
    ENL_TRY_VOID(pci->add(layout::kPciHostBridgeSlot, {.vendor = 0x8086, .device = 0x1237, .class_code = 0x060000,
                                                      .revision = 0x02}));
    if (cfg_.hyperv && cfg_.display.enabled)
        ENL_TRY_VOID(pci->add(layout::kPciVideoSlot, {.vendor = 0x1414,
                                                     .device = 0x5353,
                                                     .class_code = 0x030000,
                                                     .bar0_size = static_cast<uint32_t>(layout::kPciVideoBarSize),
                                                     .bar0_base = static_cast<uint32_t>(layout::kPciMmioStart)}));
    ENL_TRY_VOID(pio_.add(layout::kPciConfigPort, PciBus::kPortCount, std::move(pci)));
    return {};
}

Machine::~Machine() {
    *alive_ = false;
    join_vcpus();
    if (vsock_ && vmbus_) vsock_->detach();
}

void Machine::start() {
    log::debug("VM built in {} ms; starting {} vCPU(s)", uptime_ms(), vcpus_.size());
    install_kick_handler();
    for (size_t i = 0; i < vcpus_.size(); ++i) {
        threads_.emplace_back([this, i] {
            // Named by itself (prctl), not through /proc/self/task/N/comm, which a process
            // that dropped to another user (--user) may no longer write.
            ::pthread_setname_np(::pthread_self(), fmt::format("vcpu{}", i).c_str());
            sandbox::enter(sandbox::ThreadKind::Vcpu);
            vcpu_loop(i);
        });
    }
}

void Machine::join_vcpus() {
    stopping_ = true;
    kick_vcpus();
    for (auto& t : threads_) t.join();
    threads_.clear();
}

bool Machine::stop(std::chrono::milliseconds timeout) {
    join_vcpus();
    log_exit_stats();
    if (!vmbus_) return true;
    // hv_sock connections end with this boot (their host sockets close); the bus then goes.
    if (vsock_) vsock_->detach();
    // Every device closes its channels (waiting for its work in flight) and is detached; the
    // loop keeps serving the API meanwhile.
    bool done = false;
    vmbus_->shutdown([&done] { done = true; });
    if (loop_.run_until([&] { return done; }, timeout)) return true;
    log::error("the VMBus devices did not close within {} ms", timeout.count());
    return false;
}

void Machine::console_input(std::span<const uint8_t> bytes) {
    if (serial_) serial_->push_input(bytes);
}

Result<> Machine::set_offered(const DeviceEntry& entry, bool offered) {
    if (!vmbus_) return fail(Errc::Invalid, "the VM has no VMBus (--hyperv off)");
    auto result = std::make_shared<std::promise<Result<>>>();
    auto answer = result->get_future();
    loop_.post([this, alive = alive_, device = entry.device, offered, result] {
        if (!*alive || stopping_) return result->set_value(fail(Errc::Closed, "the VM is stopping"));
        auto it = relids_.find(device.get());
        const bool on_bus = it != relids_.end();
        if (on_bus == offered) return result->set_value(Result<>{});
        if (!offered) {
            auto r = vmbus_->rescind(it->second);
            if (r) relids_.erase(it);
            return result->set_value(std::move(r));
        }
        if (vmbus_->instance_in_use(device->offer().instance_id))
            return result->set_value(fail(Errc::Busy, "{}: the guest has not yet released the channel it was "
                                                      "offered before; try again in a moment",
                                          device->offer().name));
        auto relid = vmbus_->add_device(device);
        if (!relid) return result->set_value(std::unexpected(relid.error()));
        relids_[device.get()] = *relid;
        result->set_value(Result<>{});
    });
    if (answer.wait_for(std::chrono::seconds(5)) != std::future_status::ready)
        return fail(Errc::Timeout, "the VM's control loop did not answer within 5 s");
    return answer.get();
}

void Machine::press_power_button() {
    if (pm_) pm_->press_power_button();
}

uint64_t Machine::uptime_ms() const {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_).count());
}

uint64_t Machine::guest_resident_bytes() const {
    constexpr uint64_t kChunkPages = 1 << 15;  // mincore in 128 MiB steps
    std::vector<unsigned char> vec(kChunkPages);
    uint64_t resident = 0;
    const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    for (const auto& r : memory_.regions()) {
        for (uint64_t off = 0; off < r.size; off += kChunkPages * page) {
            const uint64_t len = std::min(r.size - off, kChunkPages * page);
            if (::mincore(r.host + off, len, vec.data()) != 0) continue;
            for (uint64_t i = 0; i < (len + page - 1) / page; ++i) resident += vec[i] & 1U;
        }
    }
    return resident * page;
}

void Machine::request_exit(VmExit exit) {
    {
        LockGuard lock(exit_mu_);
        if (exit_) return;
        exit_ = std::move(exit);
    }
    stopping_ = true;
    if (on_exit_) on_exit_();
}

std::optional<VmExit> Machine::exit() const {
    LockGuard lock(exit_mu_);
    return exit_;
}

void Machine::kick_vcpus() {
    for (size_t i = 0; i < vcpus_.size(); ++i) {
        // immediate_exit covers a vCPU that is about to enter KVM_RUN; the signal one inside it.
        __atomic_store_n(&vcpus_[i]->run_struct()->immediate_exit, 1, __ATOMIC_SEQ_CST);
        if (i < threads_.size()) ::pthread_kill(threads_[i].native_handle(), kKickSignal);
    }
}

void Machine::handle_hypercall(uint32_t vp, kvm_run* run) {
    auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
    uint32_t result = static_cast<uint32_t>(hv::Status::InvalidHypercallInput);
    if (auto regs = vcpus_[vp]->exit_regs()) {
        // Hypercalls are for the guest kernel (TLFS: CPL 0). The page's `in` works from user
        // space too once the guest kernel grants the port (ioperm, root only): refused
        // (reliability review B8). The test is where the `in` ran: a 64-bit kernel's code,
        // and so its hypercall page, is in the upper half of the address space, which user
        // code cannot reach; no extra ioctl (KVM_GET_SREGS) on this path.
        if (regs->rip < kKernelHalf) {
            ENL_LOG_LIMITED(warn, "VP {}: hypercall from user space (rip {:#x}) refused", vp, regs->rip);
            result = static_cast<uint32_t>(hv::Status::AccessDenied);
        } else {
            result = static_cast<uint32_t>(partition_->hypercall(vp, regs->rcx, regs->rdx, regs->r8));
        }
    } else {
        ENL_LOG_LIMITED(warn, "hypercall on VP {}: {}", vp, regs.error().message());
    }
    std::memcpy(data, &result, sizeof(result));
}

void Machine::handle_msr(uint32_t vp, kvm_run* run) {
    const bool is_read = run->exit_reason == KVM_EXIT_X86_RDMSR;
    const uint32_t index = run->msr.index;
    bool ok = false;
    if (partition_ && index >= hv::kMsrRangeFirst && index < hv::kMsrRangeFirst + hv::kMsrRangeCount) {
        if (is_read) {
            if (auto v = partition_->read_msr(vp, index)) {
                run->msr.data = *v;
                ok = true;
            }
        } else {
            ok = partition_->write_msr(vp, index, run->msr.data);
        }
    }
    if (!ok)
        ENL_LOG_LIMITED(debug, "VP {}: #GP on {} of MSR {:#x}", vp, is_read ? "read" : "write", index);
    run->msr.error = ok ? 0 : 1;  // 1: KVM injects #GP
}

void Machine::handle_io(uint32_t vp, kvm_run* run) {
    if (partition_ && run->io.size == 4 && run->io.count == 1) {
        if (run->io.port == layout::kHypercallPort && run->io.direction == KVM_EXIT_IO_IN) {
            exit_stats_.hypercall.fetch_add(1, std::memory_order_relaxed);
            return handle_hypercall(vp, run);
        }
        if (run->io.port == layout::kDoorbellPort && run->io.direction == KVM_EXIT_IO_OUT) {
            // The hypercall page's doorbell path, for a connection with no ioeventfd (or no
            // channel: the guest gets no error status for that on this path).
            exit_stats_.doorbell.fetch_add(1, std::memory_order_relaxed);
            uint32_t conn;
            std::memcpy(&conn, reinterpret_cast<uint8_t*>(run) + run->io.data_offset, sizeof(conn));
            (void)vmbus_->handle_event(vp, conn & 0xffffff, 0);
            return;
        }
    }
    auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
    const size_t size = run->io.size;
    for (uint32_t i = 0; i < run->io.count; ++i) {
        std::span<uint8_t> bytes(data + i * size, size);
        const bool handled = run->io.direction == KVM_EXIT_IO_OUT ? pio_.write(run->io.port, bytes)
                                                                  : pio_.read(run->io.port, bytes);
        if (!handled) log::trace("unhandled port {} {:#x} size {}", run->io.direction == KVM_EXIT_IO_OUT ? "write" : "read", run->io.port, size);
    }
}

void Machine::handle_mmio(kvm_run* run) {
    std::span<uint8_t> bytes(run->mmio.data, std::min<size_t>(run->mmio.len, sizeof(run->mmio.data)));
    const bool handled = run->mmio.is_write ? mmio_.write(run->mmio.phys_addr, bytes) : mmio_.read(run->mmio.phys_addr, bytes);
    if (!handled) log::trace("unhandled MMIO {} {:#x}", run->mmio.is_write ? "write" : "read", run->mmio.phys_addr);
}

void Machine::vcpu_loop(size_t index) {
    const Vcpu& vcpu = *vcpus_[index];
    kvm_run* run = vcpu.run_struct();
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, kKickSignal);
    ::pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
    while (!stopping_.load(std::memory_order_acquire)) {
        auto ran = vcpu.run();
        if (!ran) {
            request_exit({VmExit::Kind::Error, 0, ran.error().message()});
            break;
        }
        if (!*ran) continue;  // interrupted: re-check for a stop
        switch (run->exit_reason) {
            case KVM_EXIT_IO:
                exit_stats_.io.fetch_add(1, std::memory_order_relaxed);
                if (count_ports_) (*io_by_port_)[run->io.port].fetch_add(1, std::memory_order_relaxed);
                handle_io(static_cast<uint32_t>(index), run);
                break;
            case KVM_EXIT_X86_RDMSR:
            case KVM_EXIT_X86_WRMSR:
                exit_stats_.msr.fetch_add(1, std::memory_order_relaxed);
                handle_msr(static_cast<uint32_t>(index), run);
                break;
            case KVM_EXIT_MMIO:
                exit_stats_.mmio.fetch_add(1, std::memory_order_relaxed);
                handle_mmio(run);
                break;
            case KVM_EXIT_SHUTDOWN: {  // triple fault: a reset on PC hardware
                // Not a reset the guest asked for: say so, with where it was, since the
                // guest itself had no chance to print anything.
                // (AMD's KVM has already reset the registers by now: then there is nothing to show.)
                std::string where;
                auto regs = vcpu.get_regs();
                auto sregs = vcpu.get_sregs();
                if (regs && sregs && !(regs->rip == 0xfff0 && sregs->cr0 == 0x10))
                    where = fmt::format(" at rip {:#x} rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x}", regs->rip,
                                        regs->rsp, sregs->cr0, sregs->cr2, sregs->cr3, sregs->cr4);
                log::warn("vCPU {}: triple fault (the guest CPU shut down){}; a reset on PC hardware", index, where);
                request_exit({VmExit::Kind::Reset, 0, {}});
                break;
            }
            case KVM_EXIT_SYSTEM_EVENT:
                if (run->system_event.type == KVM_SYSTEM_EVENT_RESET)
                    request_exit({VmExit::Kind::Reset, 0, {}});
                else
                    request_exit({VmExit::Kind::PowerOff, 0, {}});
                break;
            case KVM_EXIT_INTR:
                break;
            case KVM_EXIT_FAIL_ENTRY:
                request_exit({VmExit::Kind::Error, 0,
                              fmt::format("vCPU {}: VM entry failed (hardware reason {:#x})", index,
                                          run->fail_entry.hardware_entry_failure_reason)});
                break;
            case KVM_EXIT_INTERNAL_ERROR: {
                std::string msg = fmt::format("vCPU {}: KVM internal error, suberror {}", index, run->internal.suberror);
                if (auto regs = vcpu.get_regs()) msg += fmt::format(" at rip {:#x}", regs->rip);
                request_exit({VmExit::Kind::Error, 0, std::move(msg)});
                break;
            }
            default:
                request_exit({VmExit::Kind::Error, 0,
                              fmt::format("vCPU {}: unexpected KVM exit reason {}", index, run->exit_reason)});
                break;
        }
    }
}

void Machine::log_exit_stats() const {
    if (!log::enabled(log::Level::Debug)) return;
    const auto& st = exit_stats_;
    log::debug("exits: io {} (hypercalls {}, doorbells {}) mmio {} msr {}", st.io.load(), st.hypercall.load(),
               st.doorbell.load(), st.mmio.load(), st.msr.load());
    if (io_by_port_)
        for (size_t port = 0; port < io_by_port_->size(); ++port)
            if (const auto n = (*io_by_port_)[port].load(); n > 0) log::debug("  port {:#06x}: {}", port, n);
    if (partition_) {
        const auto hc = partition_->hypercall_stats();
        const auto sy = partition_->synic().stats();
        log::debug("hypercalls: post {} signal {} failed {}; synic: delivered {} dropped {} events {}",
                      hc.post_message, hc.signal_event, hc.failed, sy.messages_delivered, sy.messages_dropped,
                      sy.events_signalled);
    }
}

}  // namespace enlighten
