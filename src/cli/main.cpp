// enlighten: the command-line front end.
//
//   enlighten run --kernel PATH [--initrd PATH] [--cmdline STRING] [--memory SIZE|size=SIZE[,min=,max=,dynamic=,buffer=,weight=]] [--cpus N]
//                 [--serial stdio|file:PATH|off] [--on-reboot restart|exit] [--on-crash exit|stay]
//                 [--hyperv on|off] [--kernel-decompress host|guest] [--log-level LEVEL]
//                 [--api-socket PATH] [--disk path=FILE[,format=auto|raw|vhdx][,readonly=on][,bus=scsi|ide][,id=NAME][,serial=TEXT]]...
//                 [--net backend=slirp|tap[,tap=NAME][,mac=MAC][,hostfwd=RULE]...[,queues=N][,id=NAME]]...
//                 [--vsock socket=PATH]
//                 [--display on|off[,resolution=WxH]] [--vnc HOST:PORT|:PORT|unix:PATH] [--web HOST:PORT|:PORT]
//                 [--seccomp on|log|off] [--user NAME|UID[:GROUP|GID]]
//   enlighten remote --api-socket PATH <command> [args]     (src/cli/remote.cpp, docs/api.md)
//   enlighten image create|info|check|merge|convert ...     (disk images: backends/disk/image_tool.hpp)
//
// Exit status: see src/vmm/exit_codes.hpp.
#include <fcntl.h>
#include <sys/sysinfo.h>

// GCC 12 warns (-Wnull-dereference) inside CLI11's string splitting, inlined here once a
// vector option (--disk) exists: a false positive in library code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <map>
#include <set>
#include "common/log.hpp"

#include "backends/disk/image_tool.hpp"
#include "cli/remote.hpp"
#include "common/fd.hpp"
#include "common/sandbox.hpp"
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

// SCSI controllers a VM may have (scsi0..scsi3), as on Hyper-V.
constexpr int kMaxScsiControllers = 4;

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

// The key=value elements of a device option (Cloud Hypervisor style, comma-separated); a
// first element without '=' takes `first_key`. Keys may repeat (the caller decides).
Result<std::vector<std::pair<std::string, std::string>>> spec_items(std::string_view flag, const std::string& spec,
                                                                    std::string_view first_key) {
    std::vector<std::pair<std::string, std::string>> out;
    size_t i = 0;
    for (size_t start = 0;; ++i) {
        const size_t end = spec.find(',', start);
        const std::string item = spec.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (item.empty()) return fail("{} '{}': an empty element", flag, spec);
        const size_t eq = item.find('=');
        if (eq != std::string::npos)
            out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
        else if (i == 0 && !first_key.empty())
            out.emplace_back(std::string(first_key), item);
        else
            return fail("{} '{}': '{}' has no value", flag, spec, item);
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return out;
}

// --memory SIZE, or size=SIZE[,min=SIZE][,max=SIZE][,dynamic=on|off][,buffer=PERCENT][,weight=N]
// (docs/memory.md). Returns the startup size, the maximum (0: none) and the balloon's
// DeviceConfig (kind "balloon"; its sizes in bytes).
struct MemorySpec {
    uint64_t startup = 0;
    uint64_t max = 0;
    bool dynamic_knobs = false;  // anything but size was given
    DeviceConfig balloon{"balloon", "balloon", {}, {}};
};

Result<MemorySpec> parse_memory(const std::string& text) {
    MemorySpec m;
    ENL_TRY(auto items, spec_items("--memory", text, "size"));
    std::set<std::string> seen;
    for (const auto& [key, value] : items) {
        if (!seen.insert(key).second) return fail("--memory '{}': '{}' given twice", text, key);
        if (key == "size" || key == "min" || key == "max") {
            auto size = parse_size(value);
            if (!size) return std::unexpected(size.error().context(fmt::format("--memory {}", key)));
            if (key == "size") {
                m.startup = *size;
            } else {
                if (*size % (1ULL << 20) != 0) return fail("--memory {}={}: not a whole number of MiB", key, value);
                m.balloon.params[key] = std::to_string(*size);
                if (key == "max") m.max = *size;
            }
        } else if (key == "dynamic") {
            if (value != "on" && value != "off") return fail("--memory dynamic={}: expected on or off", value);
            m.balloon.params[key] = value;
        } else if (key == "buffer" || key == "weight") {
            m.balloon.params[key] = value;  // the balloon's factory checks the numbers
        } else {
            return fail("--memory '{}': unknown key '{}' (size, min, max, dynamic, buffer, weight)", text, key);
        }
        if (key != "size") m.dynamic_knobs = true;
    }
    if (m.startup == 0) return fail("--memory '{}': no size given", text);
    if (m.max != 0 && m.max < m.startup) return fail("--memory: max {} MiB is below size {} MiB", m.max >> 20, m.startup >> 20);
    m.balloon.params["startup"] = std::to_string(m.startup);
    return m;
}

// --disk path=FILE[,format=raw|vhdx|auto][,readonly=on|off][,cache=writeback|writethrough][,bus=scsi|ide][,controller=N][,id=NAME][,serial=TEXT]
// (a first element without '=' is the path). Returns the disk's DeviceConfig (kind "disk")
// and where it goes: "ide", or the SCSI controller "scsiN".
Result<std::pair<DeviceConfig, std::string>> parse_disk(const std::string& spec, size_t n) {
    DeviceConfig d;
    d.kind = "disk";
    std::string bus = "scsi";
    std::string controller;
    ENL_TRY(auto items, spec_items("--disk", spec, "path"));
    for (const auto& [key, value] : items) {
        if (key == "id") {
            d.id = value;
        } else if (key == "bus") {
            bus = value;
        } else if (key == "controller") {
            controller = value;
        } else if (key == "path" || key == "format" || key == "readonly" || key == "serial" || key == "cache") {
            if (d.params.count(key)) return fail("--disk '{}': '{}' given twice", spec, key);
            d.params[key] = value;
        } else {
            return fail("--disk '{}': unknown key '{}' (path, format, readonly, cache, bus, controller, id, serial)", spec, key);
        }
    }
    auto path = d.params.find("path");
    if (path == d.params.end() || path->second.empty()) return fail("--disk '{}': no path= given", spec);
    if (bus != "scsi" && bus != "ide") return fail("--disk '{}': bus '{}' (scsi or ide)", spec, bus);
    std::string where = bus;
    if (bus == "scsi") {
        if (controller.empty()) controller = "0";
        if (controller.size() != 1 || controller[0] < '0' || controller[0] >= '0' + kMaxScsiControllers)
            return fail("--disk '{}': controller '{}' (0 to {})", spec, controller, kMaxScsiControllers - 1);
        where = "scsi" + controller;
    } else if (!controller.empty()) {
        return fail("--disk '{}': controller= is for the SCSI bus (each IDE disk has its own channel)", spec);
    }
    if (d.id.empty()) d.id = fmt::format("disk{}", n);
    return std::pair{std::move(d), where};
}

// --net backend=slirp|tap[,tap=NAME][,mac=MAC][,hostfwd=RULE]...[,queues=N][,id=NAME]: one
// NIC's DeviceConfig (kind "nic"; devices/netvsp/factory.hpp checks the values). Each
// hostfwd is a child of kind "hostfwd". Without mac=, `vm_key` (what names this VM on the
// host) and the NIC's id give a stable one (netvsp::stable_mac).
Result<DeviceConfig> parse_net(const std::string& spec, size_t n) {
    DeviceConfig d;
    d.kind = "nic";
    ENL_TRY(auto items, spec_items("--net", spec, "backend"));
    for (const auto& [key, value] : items) {
        if (key == "id") {
            d.id = value;
        } else if (key == "hostfwd") {
            d.children.push_back(DeviceConfig{"hostfwd", "", {{"rule", value}}, {}});
        } else if (key == "backend" || key == "tap" || key == "mac" || key == "queues") {
            if (d.params.count(key)) return fail("--net '{}': '{}' given twice", spec, key);
            d.params[key] = value;
        } else {
            return fail("--net '{}': unknown key '{}' (backend, tap, mac, hostfwd, queues, id)", spec, key);
        }
    }
    if (d.id.empty()) d.id = fmt::format("net{}", n);
    return d;
}

// The VMBus devices: the integration services, the SCSI controller "scsi0" (with the --disk
// disks on it; it is there without any, for disks added later through the API), "scsi1" to
// "scsi3" when a --disk names them (controller=N), and one IDE slot per --disk on the IDE bus.
Result<std::vector<DeviceConfig>> vmbus_devices(const std::vector<std::string>& disks,
                                                const std::vector<std::string>& nets, const std::string& vm_key,
                                                const vmbus::Guid& vm_id) {
    auto devices = ic::default_integration_services(vm_id);
    std::map<std::string, DeviceConfig> scsi;
    scsi.emplace("scsi0", DeviceConfig{"scsi", "scsi0", {}, {}});
    std::vector<DeviceConfig> ide;
    std::set<std::string> ids;
    for (size_t i = 0; i < disks.size(); ++i) {
        ENL_TRY(auto d, parse_disk(disks[i], i));
        if (!ids.insert(d.first.id).second) return fail("--disk: id '{}' is used twice", d.first.id);
        if (d.second != "ide") {
            auto [it, _] = scsi.try_emplace(d.second, DeviceConfig{"scsi", d.second, {}, {}});
            it->second.children.push_back(std::move(d.first));
        } else {
            if (ide.size() == 4) return fail("--disk: at most 4 disks on the IDE bus");
            DeviceConfig slot{"ide", fmt::format("ide{}", ide.size()), {{"slot", std::to_string(ide.size())}}, {}};
            slot.children.push_back(std::move(d.first));
            ide.push_back(std::move(slot));
        }
    }
    for (auto& [id, c] : scsi) devices.push_back(std::move(c));
    for (auto& s : ide) devices.push_back(std::move(s));
    for (size_t i = 0; i < nets.size(); ++i) {
        ENL_TRY(auto nic, parse_net(nets[i], i));
        if (!ids.insert(nic.id).second) return fail("--net: id '{}' is used twice", nic.id);
        if (!nic.params.count("mac")) nic.params["vm_key"] = vm_key;
        devices.push_back(std::move(nic));
    }
    return devices;
}

// --integration-services all|none|NAME,...: the integration services not offered at start.
Result<std::vector<std::string>> services_off(const std::string& spec) {
    std::set<std::string, std::less<>> on;
    if (spec == "all") return std::vector<std::string>{};
    if (spec != "none") {
        for (size_t start = 0; start <= spec.size();) {
            size_t comma = spec.find(',', start);
            if (comma == std::string::npos) comma = spec.size();
            std::string name = spec.substr(start, comma - start);
            const auto& known = ic::kIntegrationServices;
            if (std::find(std::begin(known), std::end(known), std::string_view(name)) == std::end(known))
                return fail("--integration-services '{}': unknown service '{}' (heartbeat, shutdown, timesync, kvp, fcopy, vss; "
                            "or all, none)",
                            spec, name);
            on.insert(std::move(name));
            start = comma + 1;
        }
    }
    std::vector<std::string> off;
    for (const char* name : ic::kIntegrationServices)
        if (!on.contains(name)) off.emplace_back(name);
    return off;
}

// --vsock socket=PATH (or just PATH): hv_sock over Unix sockets (docs/vsock.md).
Result<std::string> parse_vsock(const std::string& spec) {
    ENL_TRY(auto items, spec_items("--vsock", spec, "socket"));
    std::string path;
    for (const auto& [key, value] : items) {
        if (key != "socket") return fail("--vsock '{}': unknown key '{}' (socket)", spec, key);
        if (!path.empty()) return fail("--vsock '{}': 'socket' given twice", spec);
        path = value;
    }
    if (path.empty()) return fail("--vsock '{}': socket= is empty", spec);
    return path;
}

// --display on|off[,resolution=WxH] (a first element resolution=... alone means on).
Result<DisplayConfig> parse_display(const std::string& spec) {
    ENL_TRY(auto items, spec_items("--display", spec, "state"));
    DisplayConfig d;
    for (const auto& [key, value] : items) {
        if (key == "state") {
            if (value != "on" && value != "off") return fail("--display '{}': expected on or off first", spec);
            d.enabled = value == "on";
        } else if (key == "resolution") {
            const size_t x = value.find('x');
            uint32_t w = 0, h = 0;
            const char* end = value.data() + value.size();
            const bool ok = x != std::string::npos &&
                            std::from_chars(value.data(), value.data() + x, w).ptr == value.data() + x &&
                            std::from_chars(value.data() + x + 1, end, h).ptr == end && x > 0 && x + 1 < value.size();
            if (!ok || w < 640 || h < 480 || w > 7680 || h > 4320)
                return fail("--display resolution '{}': expected WIDTHxHEIGHT from 640x480 to 7680x4320", value);
            d.width = w;
            d.height = h;
        } else {
            return fail("--display '{}': unknown key '{}' (state, resolution)", spec, key);
        }
    }
    return d;
}

Result<uint32_t> parse_cpus(std::string text) {
    if (text.starts_with("boot=")) text = text.substr(5);
    uint32_t n = 0;
    const auto* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, n);
    if (text.empty() || ec != std::errc() || p != end) return fail("--cpus '{}': expected a number", text);
    return n;
}

// `enlighten image ...`: the options, and what to run once they are parsed.
struct ImageCommand {
    CLI::App* create = nullptr;
    CLI::App* info = nullptr;
    CLI::App* check = nullptr;
    CLI::App* merge = nullptr;
    CLI::App* convert = nullptr;
    std::string file, out, size, format = "vhdx", type = "dynamic", parent, block_size, guid_seed;
    uint32_t sector_size = 512;
    bool json = false, repair = false;
};

void add_image_command(CLI::App& app, ImageCommand& c) {
    auto* image = app.add_subcommand("image", "Create, inspect, check, merge and convert disk images (raw, VHDX)");
    image->require_subcommand(1);
    auto type_opt = [&](CLI::App* a) {
        a->add_option("--type", c.type, "vhdx: dynamic (blocks allocated when written) or fixed (all up front)")
            ->check(CLI::IsMember({"dynamic", "fixed"}))
            ->capture_default_str();
        a->add_option("--block-size", c.block_size, "vhdx block size, 1M to 256M, a power of two (default 32M; 2M differencing)");
        a->add_option("--sector-size", c.sector_size, "vhdx logical sector size")->check(CLI::IsMember({512, 4096}))->capture_default_str();
        a->add_option("--guid-seed", c.guid_seed,
                      "vhdx: derive the new image's GUIDs from this text, not random numbers, so that the same inputs "
                      "make the same file (reproducible builds; never one seed for two different disks)");
    };
    c.create = image->add_subcommand("create", "Create an image");
    c.create->add_option("FILE", c.file, "The new image")->required();
    c.create->add_option("--size", c.size, "Virtual size, e.g. 10G (differencing: the parent's)");
    c.create->add_option("--format", c.format, "raw or vhdx")->check(CLI::IsMember({"raw", "vhdx"}))->capture_default_str();
    c.create->add_option("--parent", c.parent, "vhdx: make a differencing disk on this parent");
    type_opt(c.create);
    c.info = image->add_subcommand("info", "Format, sizes and parent chain of an image");
    c.info->add_option("FILE", c.file, "The image")->required();
    c.info->add_flag("--json", c.json, "As JSON");
    c.check = image->add_subcommand("check", "Validate an image (exit 0: clean, 2: corrupt, 1: could not check)");
    c.check->add_option("FILE", c.file, "The image")->required();
    c.check->add_flag("--repair", c.repair, "Replay a pending log into the file (opens it for writing)");
    c.merge = image->add_subcommand("merge", "Merge a differencing disk into its parent");
    c.merge->add_option("FILE", c.file, "The differencing disk")->required();
    c.convert = image->add_subcommand("convert", "Copy an image into a new one of another format");
    c.convert->add_option("IN", c.file, "The source image (raw or vhdx)")->required();
    c.convert->add_option("OUT", c.out, "The new image")->required();
    c.convert->add_option("--format", c.format, "raw or vhdx")->check(CLI::IsMember({"raw", "vhdx"}))->required();
    type_opt(c.convert);
}

int run_image(const ImageCommand& c) {
    disk::ImageCreate p;
    p.format = c.format;
    p.fixed = c.type == "fixed";
    p.parent = c.parent;
    p.sector_size = c.sector_size;
    p.guid_seed = c.guid_seed;
    if (!c.size.empty()) {
        auto s = parse_size(c.size);
        if (!s) return error(s.error().context("--size"));
        p.size = *s;
    }
    if (!c.block_size.empty()) {
        auto s = parse_size(c.block_size);
        if (!s || *s > UINT32_MAX) return error(Error(fmt::format("--block-size '{}': 1M to 256M", c.block_size)));
        p.block_size = static_cast<uint32_t>(*s);
    }
    if (c.create->parsed()) {
        if (p.size == 0 && p.parent.empty()) return error(Error("image create: --size is needed"));
        if (auto r = disk::image_create(c.file, p); !r) return error(r.error());
        return 0;
    }
    if (c.info->parsed()) {
        auto i = disk::image_info(c.file);
        if (!i) return error(i.error());
        std::fputs((c.json ? disk::image_info_json(*i) : disk::image_info_text(*i)).c_str(), stdout);
        return 0;
    }
    if (c.check->parsed()) {
        auto r = disk::image_check(c.file, c.repair);
        if (!r) return error(r.error());
        for (const auto& n : r->notes) std::printf("note: %s\n", n.c_str());
        for (const auto& n : r->problems) std::printf("corrupt: %s\n", n.c_str());
        if (!r->problems.empty()) return 2;
        std::printf("%s: no problems found\n", c.file.c_str());
        return 0;
    }
    if (c.merge->parsed()) {
        auto r = disk::image_merge(c.file);
        if (!r) return error(r.error());
        std::printf("merged %s into %s (%s no longer matches its parent: delete it)\n", c.file.c_str(), r->c_str(),
                    c.file.c_str());
        return 0;
    }
    if (auto r = disk::image_convert(c.file, c.out, p); !r) return error(r.error());
    return 0;
}

int run_vm(const VmConfig& cfg) {
    log::debug("startup: configuration checked");
    // common/thread_stack.hpp: 1 MiB, no 2 MiB THP per thread. Not fatal: glibc's default works.
    if (!limit_thread_stacks()) log::warn("could not set the default thread stack size; using glibc's");
    // Confinement (docs/security.md): no-new-privs always; the process filter before the
    // first thread starts (every thread inherits it); setup; the drop to --user; the main
    // thread's own narrower filter before the guest runs.
    if (auto ok = sandbox::set_no_new_privs(); !ok) return error(ok.error());
    sandbox::configure({.mode = cfg.seccomp, .test_forbidden = cfg.seccomp_test_forbidden});
    if (cfg.seccomp != sandbox::Mode::On)
        log::info("seccomp: {}{}", sandbox::mode_name(cfg.seccomp),
                  sandbox::sanitizer_build() && cfg.seccomp == sandbox::default_mode()
                      ? " (the default of a sanitizer build: forbidden calls are logged by the kernel, not fatal)"
                      : "");
    if (auto ok = sandbox::install_process(); !ok) return error(ok.error());
    log::debug("startup: process filter installed");
    auto vm = VirtualMachine::create(cfg);
    if (!vm) return error(vm.error());
    if (cfg.user)
        if (auto ok = sandbox::drop_user(*cfg.user); !ok) return error(ok.error());
    sandbox::enter(sandbox::ThreadKind::EventLoop);
    return (*vm)->run();
}

std::optional<sandbox::ThreadKind> parse_thread_kind(std::string_view name) {
    using enum sandbox::ThreadKind;
    for (auto k : {Process, EventLoop, Vcpu, ApiIo, ApiWorker, DiskIo, NetIo})
        if (sandbox::kind_name(k) == name) return k;
    return std::nullopt;
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
    run->add_option("--memory", memory,
                    "Guest RAM, e.g. 512M or 2G, or size=1G[,min=SIZE][,max=SIZE][,dynamic=on|off][,buffer=PERCENT]"
                    "[,weight=N] (docs/memory.md)")->capture_default_str();
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
    std::vector<std::string> disks;
    run->add_option("--disk", disks,
                    "A disk: path=FILE[,format=auto|raw|vhdx][,readonly=on][,cache=writeback|writethrough][,bus=scsi|ide]"
                    "[,controller=0..3][,id=NAME][,serial=TEXT]; "
                    "repeatable")
        ->take_all();
    std::vector<std::string> nets;
    run->add_option("--net", nets,
                    "A NIC: backend=slirp|tap[,tap=NAME][,mac=MAC][,hostfwd=tcp:HOSTADDR:HOSTPORT-GUESTADDR:GUESTPORT]..."
                    "[,queues=N][,id=NAME]; repeatable (docs/network.md)")
        ->take_all();
    std::string services = "all";
    run->add_option("--integration-services", services,
                    "The integration services offered at start: all, none, or a list such as heartbeat,shutdown,kvp "
                    "(the API can switch them later)")
        ->capture_default_str();
    run->add_option("--vm-id", cfg.vm_id,
                    "The VM's id, a GUID; the integration services' VMBus instance GUIDs derive from it "
                    "(default: a random one at each start)");
    std::string vsock;
    run->add_option("--vsock", vsock,
                    "hv_sock over Unix sockets: socket=PATH. Host clients connect to PATH and write "
                    "'CONNECT <port>\\n'; guest connects to port P reach PATH_P (docs/vsock.md)");
    std::string display = "on";
    run->add_option("--display", display,
                    "The VM console: synthetic video, keyboard and mouse (screenshots and input through the API): "
                    "on|off[,resolution=WxH] (default 1024x768)")
        ->capture_default_str();
    std::string vnc;
    run->add_option("--vnc", vnc,
                    "Serve the console over VNC: HOST:PORT (an IPv4 address), :PORT (127.0.0.1) or unix:PATH; "
                    "no password, so keep it on loopback (docs/console.md)");
    std::string web;
    run->add_option("--web", web,
                    "Serve the console and a live dashboard to a browser: HOST:PORT (an IPv4 address) or :PORT "
                    "(127.0.0.1); the address to open, with its access token, is printed at start (docs/console.md)");
    std::string seccomp{sandbox::mode_name(sandbox::default_mode())}, user, seccomp_test;
    run->add_option("--seccomp", seccomp,
                    "seccomp-bpf filters per thread kind: on (a forbidden system call ends the VMM with SIGSYS), "
                    "log (the kernel logs it) or off (docs/security.md; sanitizer builds default to log)")
        ->check(CLI::IsMember({"on", "log", "off"}))
        ->capture_default_str();
    run->add_option("--user", user,
                    "After setup (/dev/kvm, images, taps, sockets opened), run as this user: NAME or UID, "
                    "optionally :GROUP or :GID (default: the user's group); supplementary groups are dropped");
    // Test hook: a thread of this kind makes a forbidden system call once its filter is loaded.
    run->add_option("--seccomp-test-forbidden", seccomp_test)
        ->check(CLI::IsMember({"process", "event-loop", "vcpu", "api-io", "api-worker", "disk-io", "net-io"}))
        ->group("");
    cfg.cmdline = "console=ttyS0";
    cli::RemoteOptions remote_opts;
    auto* remote = cli::add_remote_command(app, remote_opts);
    ImageCommand image_cmd;
    add_image_command(app, image_cmd);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);
        std::fprintf(stderr, "enlighten: error: %s\n", e.what());
        return exit_code::kUsage;
    }
    if (remote->parsed()) return cli::run_remote(remote_opts);
    if (app.got_subcommand("image")) return run_image(image_cmd);
    // Descriptors a parent left open are not ours to keep (nothing is opened before this).
    sandbox::close_inherited_fds();
    log::set_level(log::parse_level(log_level).value_or(log::Level::Warn));
    cfg.seccomp = sandbox::parse_mode(seccomp).value_or(sandbox::Mode::On);
    if (!seccomp_test.empty()) cfg.seccomp_test_forbidden = parse_thread_kind(seccomp_test);
    if (!user.empty()) {
        auto u = sandbox::resolve_user(user);
        if (!u) return error(u.error());
        cfg.user = *u;
    }

    auto mem = parse_memory(memory);
    if (!mem) return error(mem.error());
    cfg.memory = mem->startup;
    cfg.memory_max = mem->max;
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
    vmbus::Guid vm_id = vmbus::Guid::random();
    if (!cfg.vm_id.empty()) {
        vm_id = vmbus::Guid::parse(cfg.vm_id.c_str());
        if (vm_id == vmbus::Guid{}) return error(Error(fmt::format("--vm-id '{}': expected a GUID such as "
                                                                    "6ba7b810-9dad-41d1-80b4-00c04fd430c8", cfg.vm_id)));
    }
    cfg.vm_id = vm_id.to_string();
    auto disp = parse_display(display);
    if (!disp) return error(disp.error());
    cfg.display = *disp;
    if (!vnc.empty()) {
        auto where = vnc::parse_endpoint(vnc);
        if (!where) return error(where.error());
        if (!cfg.hyperv || !cfg.display.enabled)
            return error(Error("--vnc needs the display: the synthetic video is served over VMBus (--hyperv on, --display on)"));
        cfg.vnc = *where;
    }
    if (!web.empty()) {
        auto w = api::parse_web_endpoint(web);
        if (!w) return error(w.error());
        auto token = api::make_web_token();
        if (!token) return error(token.error());
        w->token = std::move(*token);
        cfg.web = std::move(*w);
    }
    if (cfg.hyperv) {
        // What names this VM on the host, for NICs' default MACs: its first disk, else its kernel.
        std::string vm_key = cfg.kernel;
        if (!disks.empty()) {
            auto first = spec_items("--disk", disks[0], "path");
            if (first)
                for (const auto& [k, v] : *first)
                    if (k == "path") vm_key = v;
        }
        std::error_code ec;
        if (auto abs = std::filesystem::absolute(vm_key, ec); !ec) vm_key = abs.lexically_normal().string();
        auto devices = vmbus_devices(disks, nets, vm_key, vm_id);
        if (!devices) return error(devices.error());
        cfg.devices = std::move(*devices);
        auto off = services_off(services);
        if (!off) return error(off.error());
        cfg.services_off = std::move(*off);
        // The Dynamic Memory VSP is always offered (docs/memory.md): with dynamic=off it acts
        // only on an explicit target from the API.
        mem->balloon.params["instance"] = ic::service_instance(vm_id, "balloon");
        cfg.devices.push_back(mem->balloon);
        if (!vsock.empty()) {
            auto path = parse_vsock(vsock);
            if (!path) return error(path.error());
            cfg.vsock_socket = std::move(*path);
        }
        // The console: Hyper-V gives every VM a synthetic keyboard, mouse and video.
        if (cfg.display.enabled) {
            cfg.devices.push_back(DeviceConfig{"keyboard", "keyboard", {}, {}});
            cfg.devices.push_back(DeviceConfig{"mouse", "mouse", {}, {}});
            cfg.devices.push_back(DeviceConfig{"video", "video",
                                               {{"width", std::to_string(cfg.display.width)},
                                                {"height", std::to_string(cfg.display.height)}},
                                               {}});
        }
    } else if (mem->dynamic_knobs) {
        return error(Error("--memory min/max/dynamic/buffer/weight need the Hyper-V interface (--hyperv on): "
                           "dynamic memory is served over VMBus"));
    } else if (!vsock.empty()) {
        return error(Error("--vsock needs the Hyper-V interface (--hyperv on): hv_sock is served over VMBus"));
    } else if (!disks.empty() || !nets.empty()) {
        return error(Error("--disk and --net need the Hyper-V interface (--hyperv on): disks and NICs are served over VMBus"));
    }
    if (auto ok = validate(cfg, host_memory()); !ok) return error(ok.error());
    // The kernel and initrd are opened once, here: every boot (reboots too) reads the files
    // checked now, whatever their paths name later.
    UniqueFd kernel_fd(::open(cfg.kernel.c_str(), O_RDONLY | O_CLOEXEC));
    UniqueFd initrd_fd(cfg.initrd.empty() ? -1 : ::open(cfg.initrd.c_str(), O_RDONLY | O_CLOEXEC));
    cfg.kernel_fd = kernel_fd.get();
    cfg.initrd_fd = initrd_fd.get();
    // Bad files are reported before KVM is touched.
    boot::LinuxBootConfig files{cfg.kernel, cfg.initrd, cfg.cmdline, cfg.memory, 0, cfg.host_decompress};
    files.kernel_fd = cfg.kernel_fd;
    files.initrd_fd = cfg.initrd_fd;
    if (auto ok = boot::check_linux_files(files); !ok) return error(ok.error());

    return run_vm(cfg);
}
