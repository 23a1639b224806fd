#include "vmm/vm.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <optional>

#include "api/server.hpp"
#include "common/event_loop.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "devices/hvsock/service.hpp"
#include "kvm/kvm.hpp"
#include "vmm/console.hpp"
#include "vmm/control.hpp"
#include "vmm/devices.hpp"
#include "vmm/exit_codes.hpp"
#include "vmm/machine.hpp"
#include "vmm/vnc_display.hpp"
#include "devices/input/keyboard.hpp"
#include "devices/input/mouse.hpp"
#include "devices/video/video.hpp"

namespace enlighten {

namespace {
// How long a stopping machine waits for its devices to close their channels.
constexpr std::chrono::seconds kDeviceCloseTimeout{10};
// A partial console line is written this long after the guest stopped writing.
constexpr std::chrono::milliseconds kConsoleFlushDelay{5};
}  // namespace

// Members in destruction order (last first): the API stops before the control it calls,
// the devices go after the loop (which drops the work that refers to them).
struct VirtualMachine::Impl {
    VmConfig cfg;
    std::optional<Kvm> kvm;
    std::unique_ptr<Console> console;
    DeviceSet devices;
    std::unique_ptr<EventLoop> loop;
    std::unique_ptr<hvsock::Service> vsock;  // --vsock: lives across boots (before the loop goes)
    UniqueFd signal_fd;
    std::unique_ptr<MachineControl> control;
    std::optional<api::ApiServer> api;
    std::shared_ptr<Machine> machine;  // the running boot, if any
    std::unique_ptr<VncDisplay> vnc;   // --vnc; stops (its threads joined) before the rest goes
    bool flush_scheduled = false;
    // A stop signal (SIGINT/SIGTERM/SIGHUP) received: it ends Enlighten whatever else the
    // machine was doing, a guest reset in progress included (otherwise the reset, recorded
    // first, would restart the VM and the user's signal would be lost).
    int stop_signal = 0;

    Result<> watch_host_events();
    int boot_loop();
};

VirtualMachine::VirtualMachine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

VirtualMachine::~VirtualMachine() {
    if (impl_->api) impl_->api->stop();
    impl_->vnc.reset();
}

Result<std::unique_ptr<VirtualMachine>> VirtualMachine::create(VmConfig cfg) {
    auto impl = std::make_unique<Impl>();
    impl->cfg = std::move(cfg);
    // SIGINT/SIGTERM/SIGHUP are read from a signalfd by the loop; blocked here before any
    // thread exists, so every thread inherits the mask.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGHUP);
    ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    impl->signal_fd.reset(::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!impl->signal_fd.valid()) return fail_errno("signalfd");
    // A reader that goes away (`enlighten run | head`, a closed console pipe, a peer of a host
    // socket) is EPIPE for the thread that writes, never the default SIGPIPE that kills the VMM.
    ::signal(SIGPIPE, SIG_IGN);

    ENL_TRY(impl->devices, DeviceSet::build(impl->cfg.devices));
    for (const auto& id : impl->cfg.services_off) {
        const DeviceEntry* e = impl->devices.find(id);
        if (!e) return fail(Errc::Invalid, "--integration-services: the VM has no service '{}'", id);
        e->offered->store(false);
    }
    log::debug("startup: devices built");
    ENL_TRY(Kvm kvm, Kvm::open());
    impl->kvm.emplace(std::move(kvm));
    ENL_TRY(impl->console, Console::create(impl->cfg.serial));
    ENL_TRY(impl->loop, EventLoop::create());
    ENL_TRY_VOID(impl->watch_host_events());
    if (!impl->cfg.vsock_socket.empty()) {
        auto vsock = hvsock::Service::create({.socket_path = impl->cfg.vsock_socket}, *impl->loop);
        if (!vsock) return std::unexpected(vsock.error().context("--vsock"));
        impl->vsock = std::move(*vsock);
    }

    const bool web_console = impl->cfg.web && impl->devices.first<video::VideoDevice>() != nullptr;
    if (impl->cfg.vnc || web_console) {
        vnc::Endpoint where;
        if (impl->cfg.vnc) {
            where = *impl->cfg.vnc;
        } else {
            where.internal = true;
        }
        auto vnc = VncDisplay::start(where, *impl->loop, impl->devices.first<video::VideoDevice>(),
                                     impl->devices.first<input::KeyboardDevice>(),
                                     impl->devices.first<input::MouseDevice>());
        if (!vnc) return std::unexpected(vnc.error().context(impl->cfg.vnc ? "--vnc" : "--web"));
        impl->vnc = std::move(*vnc);
    }
    // The management API lives across guest reboots; it follows the current machine.
    impl->control = std::make_unique<MachineControl>(impl->cfg, impl->devices, *impl->loop);
    if (!impl->cfg.api_socket.empty() || impl->cfg.web) {
        api::ApiServerOptions options{.socket_path = impl->cfg.api_socket};
        options.web = impl->cfg.web;
        if (options.web && impl->vnc) {
            VncDisplay* display = impl->vnc.get();  // outlives the API server (stopped first)
            options.web->console = [display] { return display->connect(); };
        }
        impl->api.emplace(*impl->control, std::move(options));
        if (auto ok = impl->api->start(); !ok)
            return std::unexpected(ok.error().context(impl->cfg.api_socket.empty() ? "--web" : "--api-socket"));
    }
    return std::unique_ptr<VirtualMachine>(new VirtualMachine(std::move(impl)));
}

Result<> VirtualMachine::Impl::watch_host_events() {
    ENL_TRY_VOID(loop->watch(signal_fd.get(), EPOLLIN, [this](uint32_t) {
        signalfd_siginfo si{};
        if (::read(signal_fd.get(), &si, sizeof(si)) != sizeof(si)) return;
        log::info("received signal {}, stopping the VM", si.ssi_signo);
        if (!stop_signal) stop_signal = static_cast<int>(si.ssi_signo);
        if (machine) machine->request_exit({VmExit::Kind::Signal, stop_signal, {}});
    }));
    ENL_TRY_VOID(loop->watch(console->flush_fd(), EPOLLIN, [this](uint32_t) {
        console->ack_flush_event();
        if (flush_scheduled) return;
        flush_scheduled = true;
        loop->post_after(kConsoleFlushDelay, [this] {
            flush_scheduled = false;
            console->flush();
        });
    }));
    if (console->input_fd() >= 0) {
        auto input = std::make_shared<EventLoop::WatchId>(0);
        auto watched = loop->watch(console->input_fd(), EPOLLIN, [this, input](uint32_t) {
            uint8_t buf[256];
            const ssize_t got = ::read(console->input_fd(), buf, sizeof(buf));
            if (got <= 0) {
                // End of input: stop watching; the guest keeps running.
                loop->unwatch(*input);
                return;
            }
            if (machine) machine->console_input(std::span(buf, static_cast<size_t>(got)));
        });
        // A regular file or /dev/null on stdin cannot be polled (EPERM): there is no input.
        if (watched) *input = *watched;
        else log::debug("console input is not pollable ({}); the guest gets no input", watched.error().message());
    }
    return {};
}

int VirtualMachine::run() { return impl_->boot_loop(); }

int VirtualMachine::Impl::boot_loop() {
    for (unsigned boot = 1;; ++boot) {
        log::debug("startup: host side ready (event loop, API, console)");
        auto created = Machine::create({*kvm, cfg, *console, *loop, devices, vsock.get()}, [l = loop.get()] { l->stop(); });
        if (!created) {
            std::fflush(stdout);
            std::fprintf(stderr, "enlighten: error: %s\n", created.error().message().c_str());
            return exit_code::kError;
        }
        machine = std::move(*created);
        control->attach(machine);
        machine->start();
        loop->run();  // until the machine asks to stop
        log::debug("shutdown: the machine asked to stop");
        const bool closed = machine->stop(kDeviceCloseTimeout);
        log::debug("shutdown: vCPUs joined, devices {}", closed ? "closed" : "not closed in time");
        VmExit exit = machine->exit().value_or(VmExit{VmExit::Kind::Error, 0, "VM stopped for no reason"});
        if (stop_signal && exit.kind != VmExit::Kind::Error) exit = VmExit{VmExit::Kind::Signal, stop_signal, {}};
        control->detach();
        if (!closed) {
            // A device still working may still write into this boot's RAM: keep it mapped (the
            // Machine is leaked until the process exits) rather than let a later boot's RAM take
            // its place, and boot no more.
            (void)new std::shared_ptr<Machine>(std::move(machine));
            if (exit.kind == VmExit::Kind::Reset && cfg.on_reboot == OnReboot::Restart)
                exit = VmExit{VmExit::Kind::Error, 0,
                              "the guest reset, but a VMBus device did not stop in time; not restarting the VM"};
        }
        machine.reset();
        log::debug("shutdown: the machine released (guest memory, KVM objects)");
        console->flush();
        switch (exit.kind) {
            case VmExit::Kind::PowerOff:
                log::info("guest powered off");
                break;
            case VmExit::Kind::Reset:
                if (cfg.on_reboot == OnReboot::Restart) {
                    log::info("guest reset; restarting (boot {})", boot + 1);
                    continue;
                }
                log::info("guest reset; exiting (--on-reboot=exit)");
                break;
            case VmExit::Kind::Error:
                std::fflush(stdout);
                std::fprintf(stderr, "enlighten: error: %s\n", exit.message.c_str());
                return exit_code::kError;
            case VmExit::Kind::Crash:
                log::error("guest crashed: {}", exit.message);
                break;
            case VmExit::Kind::Signal:
                break;
            case VmExit::Kind::ForcedOff:
                log::warn("VM stopped: {}", exit.message);
                break;
        }
        return exit_status(exit);
    }
}

}  // namespace enlighten
