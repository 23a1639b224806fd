// One boot of the VM: the KVM VM and its vCPUs, guest memory, the platform devices, the
// Hyper-V partition and the VMBus server the VM's devices are attached to. A guest reset
// ends the machine; the VM (vmm/vm.hpp) builds the next one and keeps what outlives it.
//
// Threads: create, start, stop and the destructor run on the VM's loop thread (the main
// thread). One thread per vCPU runs guest code and handles its exits (MSRs, hypercalls, port
// and MMIO accesses). request_exit() and the accessors may be called from any thread.
// Locks: the machine's exit lock is a leaf; vCPU exits take the locks of what they reach
// (SynIC VP, VMBus server, platform devices), never two machine locks at once.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/result.hpp"
#include "common/thread_annotations.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/memory_slots.hpp"
#include "kvm/kvm.hpp"
#include "vmm/config.hpp"
#include "vmm/console.hpp"
#include "vmm/io_bus.hpp"
#include "vmm/memory.hpp"

namespace enlighten {

class Serial;
class AcpiPm;
class EventLoop;
class DeviceSet;
struct DeviceEntry;
namespace vmbus {
class Device;
}
namespace hvsock {
class Service;
}
namespace hv {
class Partition;
class InterruptSink;
}
namespace vmbus {
class Server;
class MessageSink;
class DoorbellHooks;
}

struct VmExit {
    enum class Kind { PowerOff, Reset, Crash, Signal, Error, ForcedOff };
    Kind kind = Kind::Error;
    int signal = 0;       // Kind::Signal
    std::string message;  // Kind::Error / Crash
};

int exit_status(const VmExit& exit);

class Machine {
public:
    struct Context {
        const Kvm& kvm;
        const VmConfig& cfg;
        Console& console;
        EventLoop& loop;          // the VM's loop: VMBus control work and device callbacks run here
        const DeviceSet& devices;  // attached to this machine's VMBus
        hvsock::Service* vsock = nullptr;  // the VM's hv_sock service (--vsock), attached to this VMBus
    };
    // `on_exit` runs (on any thread, once) when the machine asks to stop.
    static Result<std::unique_ptr<Machine>> create(const Context& ctx, std::function<void()> on_exit);
    // Stops the vCPUs if stop() was not called; forgets the devices without closing them.
    ~Machine();

    // Starts the vCPU threads.
    void start();
    // Stops and joins the vCPUs, then closes every VMBus channel and detaches the devices,
    // running the loop until they are done (at most `timeout`). On the loop thread. False
    // when the devices did not finish in time: some may still use guest memory, so the
    // Machine (its RAM mapping) must then outlive them (the caller leaks it).
    [[nodiscard]] bool stop(std::chrono::milliseconds timeout);

    // Requests a stop; the first request wins. Safe from any thread.
    void request_exit(VmExit exit);
    [[nodiscard]] std::optional<VmExit> exit() const;

    [[nodiscard]] const VmConfig& config() const { return cfg_; }
    // Null without the Hyper-V interface.
    [[nodiscard]] vmbus::Server* vmbus() const { return vmbus_.get(); }
    // Offers a device of the VM's set to the guest, or rescinds it (the integration-service
    // switches). Not on the loop thread: waits up to 5 s for the loop. Offering again needs
    // the guest to have released the device's previous channel (Errc::Busy until then).
    Result<> set_offered(const DeviceEntry& entry, bool offered);
    // Presses the ACPI fixed-feature power button.
    void press_power_button();
    // Bytes typed at the console, for the guest's serial port.
    void console_input(std::span<const uint8_t> bytes);
    [[nodiscard]] uint64_t uptime_ms() const;
    // Bytes of guest RAM the host has backed (resident) so far.
    [[nodiscard]] uint64_t guest_resident_bytes() const;

private:
    Machine(const Context& ctx, std::function<void()> on_exit);
    Result<> build();
    Result<> add_platform_devices();
    Result<> setup_hyperv();
    void vcpu_loop(size_t index);
    void handle_io(uint32_t vp, kvm_run* run);
    void handle_hypercall(uint32_t vp, kvm_run* run);
    void handle_msr(uint32_t vp, kvm_run* run);
    void handle_mmio(kvm_run* run);
    void kick_vcpus();
    void join_vcpus();
    void log_exit_stats() const;

    const Kvm& kvm_;
    const VmConfig& cfg_;
    Console& console_;
    EventLoop& loop_;
    const DeviceSet& devices_;
    hvsock::Service* const vsock_;
    const std::function<void()> on_exit_;
    std::unique_ptr<Vm> vm_;
    // vm_'s memory slots as the memory manager sees them: recorded until vm_ exists.
    DeferredSlots slots_;
    GuestMemory memory_;
    // Startup RAM, hot-add and VRAM slots (destroyed before memory_ and vm_ it refers to).
    std::unique_ptr<MemoryManager> memory_manager_;
    // memory_manager_ as devices see it (DeviceResources::ram: the balloon's discard and hot-add).
    std::unique_ptr<RamControl> ram_control_;
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
    std::unique_ptr<vmbus::DoorbellHooks> doorbell_hooks_;
    std::unique_ptr<vmbus::Server> vmbus_;
    // The primary channel of each device on the bus (loop thread only).
    std::map<const vmbus::Device*, uint32_t> relids_;
    // False once the machine is gone: a task it posted to the loop then does nothing.
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

    // Exit counters, for --log-level debug and the benchmarks. Ports are counted only at
    // debug level (a table of all 65,536 would be written at every boot).
    struct ExitStats {
        std::atomic<uint64_t> io{0}, mmio{0}, msr{0}, hypercall{0}, doorbell{0}, other{0};
    };
    ExitStats exit_stats_;
    bool count_ports_ = false;
    std::unique_ptr<std::array<std::atomic<uint64_t>, 0x10000>> io_by_port_;

    std::atomic<bool> stopping_{false};
    mutable Mutex exit_mu_;
    std::optional<VmExit> exit_ ENL_GUARDED_BY(exit_mu_);
};

}  // namespace enlighten
