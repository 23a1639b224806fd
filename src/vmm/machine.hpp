// One VM: KVM objects, guest memory, the platform devices and the vCPU threads, and the
// event loop that runs until the guest powers off, resets, or the VMM is told to stop.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.hpp"
#include "common/result.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/kvm.hpp"
#include "vmm/config.hpp"
#include "vmm/console.hpp"
#include "vmm/io_bus.hpp"
#include "vmm/memory.hpp"

namespace enlighten {

class Serial;
class AcpiPm;
namespace hv {
class Partition;
class InterruptSink;
}
namespace vmbus {
class Server;
class MessageSink;
}
namespace ic {
class HeartbeatService;
class ShutdownService;
class TimeSyncService;
class KvpService;
}
class TaskLoop;

struct VmExit {
    enum class Kind { PowerOff, Reset, Crash, Signal, Error, ForcedOff };
    Kind kind = Kind::Error;
    int signal = 0;       // Kind::Signal
    std::string message;  // Kind::Error / Crash
};

int exit_status(const VmExit& exit);

class Machine {
public:
    // `signal_fd` delivers SIGINT/SIGTERM (blocked in every thread by the caller).
    static Result<std::unique_ptr<Machine>> create(const Kvm& kvm, const VmConfig& cfg, Console& console,
                                                   int signal_fd);
    ~Machine();

    // Runs the guest until it stops.
    VmExit run();

    // Requests a stop; the first request wins. Safe from any thread.
    void request_exit(VmExit exit);

    // For the management API (null without the Hyper-V interface).
    [[nodiscard]] const VmConfig& config() const { return cfg_; }
    [[nodiscard]] vmbus::Server* vmbus() const { return vmbus_.get(); }
    [[nodiscard]] ic::HeartbeatService* heartbeat() const { return heartbeat_.get(); }
    [[nodiscard]] ic::ShutdownService* shutdown_ic() const { return shutdown_ic_.get(); }
    [[nodiscard]] ic::TimeSyncService* timesync() const { return timesync_.get(); }
    [[nodiscard]] ic::KvpService* kvp() const { return kvp_.get(); }
    // Presses the ACPI fixed-feature power button.
    void press_power_button();
    [[nodiscard]] uint64_t uptime_ms() const;
    // Bytes of guest RAM the host has backed (resident) so far.
    [[nodiscard]] uint64_t guest_resident_bytes() const;

private:
    Machine(const VmConfig& cfg, Console& console, int signal_fd);
    Result<> build(const Kvm& kvm);
    Result<> add_devices();
    void vcpu_loop(size_t index);
    Result<> setup_hyperv(const Kvm& kvm);
    Result<> add_integration_services();
    void handle_io(uint32_t vp, kvm_run* run);
    void handle_hypercall(uint32_t vp, kvm_run* run);
    void handle_msr(uint32_t vp, kvm_run* run);
    void handle_mmio(kvm_run* run);
    void kick_vcpus();
    void event_loop();

    VmConfig cfg_;
    Console& console_;
    int signal_fd_;
    std::unique_ptr<Vm> vm_;
    GuestMemory memory_;
    // Startup RAM, hot-add and VRAM slots (destroyed before memory_ and vm_ it refers to).
    std::unique_ptr<MemoryManager> memory_manager_;
    std::vector<std::unique_ptr<Vcpu>> vcpus_;
    std::vector<std::thread> threads_;
    IoBus pio_;
    IoBus mmio_;
    std::shared_ptr<Serial> serial_;
    std::shared_ptr<AcpiPm> pm_;
    // Hyper-V interface (null when cfg_.hyperv is off).
    std::unique_ptr<hv::InterruptSink> hv_irq_;
    std::unique_ptr<hv::Partition> partition_;
    std::unique_ptr<vmbus::MessageSink> vmbus_sink_;
    std::unique_ptr<vmbus::Server> vmbus_;
    // Background jobs of the integration services (declared after them: stopped first).
    std::shared_ptr<ic::HeartbeatService> heartbeat_;
    std::shared_ptr<ic::ShutdownService> shutdown_ic_;
    std::shared_ptr<ic::TimeSyncService> timesync_;
    std::shared_ptr<ic::KvpService> kvp_;
    std::unique_ptr<TaskLoop> tasks_;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

    // Exit counters, for --log-level debug and the benchmarks.
    struct ExitStats {
        std::atomic<uint64_t> io{0}, mmio{0}, msr{0}, hypercall{0}, other{0};
        std::array<std::atomic<uint64_t>, 0x10000> io_by_port{};
    };
    std::unique_ptr<ExitStats> exit_stats_ = std::make_unique<ExitStats>();
    void log_exit_stats() const;

    std::atomic<bool> stopping_{false};
    std::mutex exit_mu_;
    std::optional<VmExit> exit_;
    UniqueFd stop_event_;
};

}  // namespace enlighten
