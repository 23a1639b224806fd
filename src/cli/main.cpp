// enlighten: the command-line front end.
//
//   enlighten run --kernel PATH [--initrd PATH] [--cmdline STRING] [--memory SIZE] [--cpus N]
//                 [--serial stdio|file:PATH|off] [--on-reboot restart|exit] [--on-crash exit|stay]
//                 [--hyperv on|off] [--kernel-decompress host|guest] [--log-level LEVEL]
//                 [--api-socket PATH]
//   enlighten remote --api-socket PATH <command> [args]     (src/cli/remote.cpp, docs/api.md)
//
// Exit status: see src/vmm/exit_codes.hpp.
#include <sys/sysinfo.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <optional>
#include "common/log.hpp"

#include "cli/remote.hpp"
#include "common/fd.hpp"
#include "common/size.hpp"
#include "common/thread_stack.hpp"
#include "kvm/kvm.hpp"
#include "platform/boot/linux_loader.hpp"
#include "vmm/config.hpp"
#include "devices/ic/factory.hpp"
#include "vmm/exit_codes.hpp"
#include "vmm/vm.hpp"

using namespace enlighten;

namespace {

int error(const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "enlighten: error: %s\n", e.message().c_str());
    return exit_code::kError;
}

uint64_t host_memory() {
    struct sysinfo si {};
    if (::sysinfo(&si) != 0) return 0;
    return static_cast<uint64_t>(si.totalram) * si.mem_unit;
}

// Accepts "512M" and the Cloud Hypervisor form "size=512M".
Result<uint64_t> parse_memory(std::string text) {
    if (text.starts_with("size=")) text = text.substr(5);
    auto size = parse_size(text);
    if (!size) return std::unexpected(size.error().context("--memory"));
    return size;
}

Result<uint32_t> parse_cpus(std::string text) {
    if (text.starts_with("boot=")) text = text.substr(5);
    uint32_t n = 0;
    const auto* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, n);
    if (text.empty() || ec != std::errc() || p != end) return fail("--cpus '{}': expected a number", text);
    return n;
}

int run_vm(const VmConfig& cfg) {
    // common/thread_stack.hpp: 1 MiB, no 2 MiB THP per thread. Not fatal: glibc's default works.
    if (!limit_thread_stacks()) log::warn("could not set the default thread stack size; using glibc's");
    auto vm = VirtualMachine::create(cfg);
    if (!vm) return error(vm.error());
    return (*vm)->run();
}

}  // namespace

int main(int argc, char** argv) {
    log::init_stderr();
    log::set_level(log::Level::Warn);

    CLI::App app{"Enlighten: a virtual machine monitor that gives guests the Hyper-V platform on KVM"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "enlighten 0.1.0");

    VmConfig cfg;
    std::string memory = "512M", cpus = "1", serial = "stdio", on_reboot = "restart", log_level = "warn";
    auto* run = app.add_subcommand("run", "Boot a Linux guest");
    run->add_option("--kernel", cfg.kernel, "Linux bzImage to boot")->required();
    run->add_option("--initrd,--initramfs", cfg.initrd, "Initial ramdisk");
    run->add_option("--cmdline", cfg.cmdline, "Kernel command line")->default_str("console=ttyS0");
    run->add_option("--memory", memory, "Guest RAM, e.g. 512M or 2G (also size=512M)")->capture_default_str();
    run->add_option("--cpus", cpus, "Number of vCPUs (also boot=N)")->capture_default_str();
    run->add_option("--serial", serial, "Serial console: stdio, file:PATH or off")->capture_default_str();
    run->add_option("--on-reboot", on_reboot, "What a guest reset does: restart the VM, or exit with status 3")
        ->check(CLI::IsMember({"restart", "exit"}))
        ->capture_default_str();
    std::string hyperv = "on", on_crash = "exit", decompress = "host";
    run->add_option("--on-crash", on_crash, "What a guest crash report does: exit with status 4, or stay running")
        ->check(CLI::IsMember({"exit", "stay"}))
        ->capture_default_str();
    run->add_option("--hyperv", hyperv, "Give the guest the Hyper-V interface and VMBus (off: KVM's own paravirtual interface)")
        ->check(CLI::IsMember({"on", "off"}))
        ->capture_default_str();
    run->add_option("--kernel-decompress", decompress,
                    "Where the bzImage's kernel is decompressed: here, entering the kernel directly (faster; "
                    "no guest KASLR), or by the guest's own decompressor")
        ->check(CLI::IsMember({"host", "guest"}))
        ->capture_default_str();
    run->add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}))
        ->capture_default_str();
    run->add_option("--api-socket", cfg.api_socket, "Serve the management API on this Unix socket (docs/api.md)");
    cfg.cmdline = "console=ttyS0";
    cli::RemoteOptions remote_opts;
    auto* remote = cli::add_remote_command(app, remote_opts);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);
        std::fprintf(stderr, "enlighten: error: %s\n", e.what());
        return exit_code::kUsage;
    }
    if (remote->parsed()) return cli::run_remote(remote_opts);
    log::set_level(log::parse_level(log_level).value_or(log::Level::Warn));

    auto mem = parse_memory(memory);
    if (!mem) return error(mem.error());
    cfg.memory = *mem;
    auto n = parse_cpus(cpus);
    if (!n) return error(n.error());
    cfg.cpus = *n;
    auto console = parse_console(serial);
    if (!console) return error(console.error());
    cfg.serial = *console;
    cfg.on_reboot = on_reboot == "exit" ? OnReboot::Exit : OnReboot::Restart;
    cfg.hyperv = hyperv == "on";
    cfg.exit_on_crash = on_crash == "exit";
    cfg.host_decompress = decompress == "host";
    if (cfg.hyperv) cfg.devices = ic::default_integration_services();
    if (auto ok = validate(cfg, host_memory()); !ok) return error(ok.error());
    // Bad files are reported before KVM is touched.
    if (auto ok = boot::check_linux_files({cfg.kernel, cfg.initrd, cfg.cmdline, cfg.memory, 0, cfg.host_decompress}); !ok)
        return error(ok.error());

    return run_vm(cfg);
}
