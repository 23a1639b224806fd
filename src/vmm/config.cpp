#include "vmm/config.hpp"

#include "common/size.hpp"

namespace enlighten {

Result<> validate(const VmConfig& cfg, uint64_t host_memory) {
    if (cfg.kernel.empty()) return fail("no kernel given (--kernel PATH)");
    if (cfg.memory == 0) return fail("--memory must be larger than 0");
    if (cfg.memory < kMinMemory) return fail("--memory {} KiB is too small; at least {} MiB is needed", cfg.memory / KiB, kMinMemory / MiB);
    if (cfg.memory % MiB != 0) return fail("--memory must be a whole number of MiB");
    if (host_memory != 0 && cfg.memory > host_memory)
        return fail("--memory {} MiB is more than this host has ({} MiB)", cfg.memory / MiB, host_memory / MiB);
    if (cfg.cpus == 0 || cfg.cpus > kMaxCpus) return fail("--cpus must be between 1 and {}", kMaxCpus);
    return {};
}

}  // namespace enlighten
