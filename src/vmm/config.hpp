// What a VM is made of, as given on the command line (or, later, through the API).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <optional>

#include "api/server.hpp"
#include "backends/vnc/vnc.hpp"
#include "common/device_config.hpp"
#include "common/result.hpp"
#include "common/sandbox.hpp"
#include "vmm/console.hpp"

namespace enlighten {

enum class OnReboot { Restart, Exit };

// The VM console's devices (--display): the synthetic video, keyboard and mouse on VMBus, and
// the video's PCI identity (1414:5353) on the PCI bus.
struct DisplayConfig {
    bool enabled = true;
    uint32_t width = 1024;  // the mode the video offers as the guest's default and largest
    uint32_t height = 768;
};


struct VmConfig {
    std::string kernel;
    std::string initrd;
    // The kernel and initrd opened once at start (the caller keeps them open while the VM
    // runs; -1: every boot opens the paths): every boot and reboot reads these files.
    int kernel_fd = -1;
    int initrd_fd = -1;
    std::string cmdline;
    uint64_t memory = 0;      // startup memory
    uint64_t memory_max = 0;  // --memory max=: the hot-add window is planned for it (0: startup)
    uint32_t cpus = 1;
    ConsoleConfig serial;
    OnReboot on_reboot = OnReboot::Restart;
    bool hyperv = true;         // the Hyper-V interface and VMBus; off: KVM's own paravirtual interface
    bool exit_on_crash = true;  // --on-crash exit|stay: a guest crash report ends the VMM
    bool host_decompress = true;  // --kernel-decompress host|guest (platform/boot/vmlinux.hpp)
    // The VM's id (--vm-id, else a random one at start; canonical GUID text): the
    // integration services' instance GUIDs derive from it (devices/ic/factory.hpp).
    std::string vm_id;
    // Integration services (device ids) not offered at start (--integration-services); the
    // API can offer them later.
    std::vector<std::string> services_off;
    std::string api_socket;  // the management API's Unix socket (--api-socket); empty: no API
    // hv_sock over Unix sockets (--vsock socket=PATH, docs/vsock.md); empty: no hv_sock.
    std::string vsock_socket;
    DisplayConfig display;   // with the Hyper-V interface only
    std::optional<vnc::Endpoint> vnc;  // --vnc: serve the display over VNC (vmm/vnc_display.hpp)
    // --web: the console and dashboard in a browser (api/web.hpp), on the API server; the
    // display is then served over VNC too (internally when --vnc is not given).
    std::optional<api::WebOptions> web;
    // The VMBus devices (with the Hyper-V interface only). The command line gives the
    // integration services (devices/ic/factory.hpp) and, later, disks and NICs.
    std::vector<DeviceConfig> devices;
    // Confinement (common/sandbox.hpp, docs/security.md): the seccomp mode (--seccomp), the
    // user to run as after setup (--user), the test hook (--seccomp-test-forbidden).
    sandbox::Mode seccomp = sandbox::default_mode();
    std::optional<sandbox::User> user;
    std::optional<sandbox::ThreadKind> seccomp_test_forbidden;
};

// Limits checked before anything is allocated.
inline constexpr uint64_t kMinMemory = 32ULL << 20;
inline constexpr uint32_t kMaxCpus = 254;  // xAPIC IDs, one of them left for the I/O APIC

// Checks a configuration against these limits and the host: one clear error per problem.
Result<> validate(const VmConfig& cfg, uint64_t host_memory);

}  // namespace enlighten
