// The VM (VirtualMachine): everything that lives from `enlighten run` to its exit, across guest reboots. It
// owns the configuration, the event loop (run on the main thread), the console, the devices
// with their host-side state (the host's KVP pool; later open disk images, taps, the balloon
// policy), and the management API; it builds a Machine for every boot, and a guest reset
// only replaces the machine.
//
//   auto vm = VirtualMachine::create(cfg);   // bad configuration, devices or API socket: an error here
//   return (*vm)->run();         // the exit status (vmm/exit_codes.hpp)
//
// Threads: create and run on the main thread, which runs the loop: signals, console input
// and flushes, VMBus control work, the devices' callbacks and timers, the API's shutdown
// sequence. The API server has its own worker threads (api/server.hpp); vCPUs have theirs.
#pragma once

#include <memory>

#include "common/result.hpp"
#include "vmm/config.hpp"

namespace enlighten {

class VirtualMachine {
public:
    static Result<std::unique_ptr<VirtualMachine>> create(VmConfig cfg);
    ~VirtualMachine();
    VirtualMachine(const VirtualMachine&) = delete;
    VirtualMachine& operator=(const VirtualMachine&) = delete;

    // Boots the guest, and again after each reset (--on-reboot restart), until it stops.
    int run();

private:
    struct Impl;
    explicit VirtualMachine(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace enlighten
