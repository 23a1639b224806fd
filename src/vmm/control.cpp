#include "vmm/control.hpp"

#include <fstream>

#include "common/log.hpp"

#include "common/event_loop.hpp"
#include "devices/balloon/balloon.hpp"
#include "devices/ic/fcopy.hpp"
#include "devices/ic/services.hpp"
#include "devices/input/keyboard.hpp"
#include "devices/input/mouse.hpp"
#include "devices/video/png.hpp"
#include "devices/video/video.hpp"
#include "devices/netvsp/factory.hpp"
#include "devices/netvsp/netvsp.hpp"
#include "devices/storvsp/storvsp.hpp"
#include "vmbus/server.hpp"
#include "vmm/devices.hpp"
#include "vmm/machine.hpp"

namespace enlighten {

namespace {

using api::ApiError;
using api::ErrorKind;

std::unexpected<ApiError> api_error(ErrorKind kind, std::string message) {
    return std::unexpected(ApiError{kind, std::move(message)});
}

constexpr std::chrono::seconds kIcTimeout{10};

// Resident memory of this process, from /proc/self/statm.
uint64_t process_resident_bytes() {
    std::ifstream statm("/proc/self/statm");
    uint64_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

// The storage controllers of the VM, with their device ids.
std::vector<std::pair<std::string, std::shared_ptr<storvsp::Controller>>> controllers(const DeviceSet& set) {
    std::vector<std::pair<std::string, std::shared_ptr<storvsp::Controller>>> out;
    for (const auto& e : set.entries())
        if (auto c = std::dynamic_pointer_cast<storvsp::Controller>(e.device)) out.emplace_back(e.id, std::move(c));
    return out;
}

api::NicInfo nic_info(const netvsp::NicStatus& s) {
    api::NicInfo n;
    n.id = s.id;
    n.mac = netvsp::format_mac(s.mac);
    n.backend = s.backend.kind;
    n.backend_info = s.backend.description;
    n.link_up = s.link_up;
    n.guest_ready = s.guest_ready;
    n.mtu = s.mtu;
    n.queues = s.queues;
    n.max_queues = s.max_queues;
    for (const auto& q : s.per_queue)
        n.per_queue.push_back({q.index, q.target_vp, q.rx_packets, q.rx_bytes, q.rx_dropped, q.tx_packets, q.tx_bytes,
                               q.tx_dropped});
    return n;
}

api::MemoryInfo memory_info(const balloon::MemoryStatus& s) {
    api::MemoryInfo m;
    m.state = s.state;
    if (s.protocol_version)
        m.protocol_version = fmt::format("{}.{}", s.protocol_version >> 16, s.protocol_version & 0xff);
    m.dynamic = s.dynamic;
    m.startup = s.startup;
    m.min = s.min;
    m.max = s.max;
    m.buffer = s.buffer_percent;
    m.weight = s.weight;
    m.current = s.current;
    m.target = s.target;
    m.explicit_target = s.explicit_target;
    m.ballooned = s.ballooned;
    m.hot_added = s.hot_added;
    m.can_balloon = s.can_balloon;
    m.can_hot_add = s.can_hot_add;
    m.hot_add_disabled = s.hot_add_disabled;
    m.problem = s.problem;
    m.last_action = s.last_action;
    m.status_reports = s.status_reports;
    if (s.avail && s.committed)
        m.last_report = api::MemoryReport{*s.avail, *s.committed, s.report_age_ms.value_or(0), s.report_plausible};
    const auto& c = s.counters;
    m.guest_errors = {{"malformed", c.malformed},
                      {"unexpected", c.unexpected},
                      {"bad_ranges", c.bad_ranges},
                      {"excess_pages", c.excess_pages},
                      {"outside_ram_pages", c.outside_ram_pages},
                      {"duplicate_pages", c.duplicate_pages},
                      {"implausible_reports", c.implausible_reports},
                      {"discard_failures", c.discard_failures},
                      {"hot_add_refused", c.hot_add_refused},
                      {"timeouts", c.timeouts}};
    return m;
}

api::DiskInfo disk_info(const std::string& controller, storvsp::Bus bus, const storvsp::DiskStatus& d) {
    api::DiskInfo i;
    i.id = d.id;
    i.controller = controller;
    i.bus = bus == storvsp::Bus::Scsi ? "scsi" : "ide";
    i.lun = d.lun;
    i.path = d.path;
    i.format = d.format;
    i.read_only = d.read_only;
    i.direct = d.direct;
    i.write_cache = d.write_cache;
    i.size_bytes = d.size_bytes;
    i.block_size = d.block_size;
    const auto& c = d.counters;
    i.requests = c.requests;
    i.reads = c.reads;
    i.writes = c.writes;
    i.flushes = c.flushes;
    i.unmaps = c.unmaps;
    i.bytes_read = c.bytes_read;
    i.bytes_written = c.bytes_written;
    i.errors = c.errors;
    const uint64_t ops = c.reads + c.writes + c.flushes + c.unmaps;
    i.latency_us_avg = ops ? c.latency_ns / ops / 1000 : 0;
    return i;
}

std::optional<api::ConsoleInfo> console_info(const DeviceSet& set) {
    auto video = set.first<video::VideoDevice>();
    auto kbd = set.first<input::KeyboardDevice>();
    auto mouse = set.first<input::MouseDevice>();
    if (!video && !kbd && !mouse) return std::nullopt;
    api::ConsoleInfo c;
    c.video = c.keyboard = c.mouse = "absent";
    if (video) {
        const auto v = video->status();
        c.video = v.state;
        if (v.version) c.video_version = fmt::format("{}.{}", v.version & 0xffff, v.version >> 16);
        if (v.mode) c.mode = api::DisplayMode{v.mode->width, v.mode->height, v.mode->pitch};
        c.offered_width = v.offered_width;
        c.offered_height = v.offered_height;
        c.vram_gpa = v.vram_gpa;
        c.vram_bytes = v.vram_bytes;
        c.vram_in_mmio = v.vram_in_mmio;
        const auto& k = v.counters;
        c.guest_errors = {{"video_malformed", k.malformed},
                          {"video_unsupported", k.unsupported},
                          {"video_bad_version", k.bad_version},
                          {"video_vram_refused", k.vram_refused},
                          {"video_situation_refused", k.situation_refused},
                          {"video_dirt_rects_clamped", k.dirt_rects_clamped},
                          {"video_replies_dropped", k.replies_dropped}};
    }
    if (kbd) {
        const auto k = kbd->status();
        c.keyboard = k.state;
        c.key_events = k.events_sent;
        c.guest_errors.emplace_back("keyboard_malformed", k.malformed);
    }
    if (mouse) {
        const auto m = mouse->status();
        c.mouse = m.state;
        c.pointer_reports = m.reports_sent;
        c.guest_errors.emplace_back("mouse_malformed", m.malformed);
    }
    return c;
}

// A console device's refusal, as the API reports it.
std::unexpected<ApiError> console_error(const Error& e) {
    switch (e.code()) {
        case Errc::Invalid: return api_error(ErrorKind::BadRequest, e.message());
        case Errc::Closed: return api_error(ErrorKind::Conflict, e.message());
        case Errc::Busy: return api_error(ErrorKind::Unavailable, e.message());
        default: return api_error(ErrorKind::Internal, e.message());
    }
}

// An integration service's error, as the API reports it.
std::unexpected<ApiError> ic_error(const Error& e) {
    switch (e.code()) {
        case Errc::NotFound: return api_error(ErrorKind::NotFound, e.message());
        case Errc::Invalid: return api_error(ErrorKind::BadRequest, e.message());
        case Errc::Closed: return api_error(ErrorKind::Conflict, e.message());
        default: return api_error(ErrorKind::Unavailable, e.message());
    }
}

// The service must have finished its version negotiation with the guest.
template <typename Service>
api::ApiResult<Service*> ready(const std::shared_ptr<Service>& s, const char* what) {
    if (!s) return api_error(ErrorKind::Conflict, "the VM has no Hyper-V interface (--hyperv off)");
    // A service that is still negotiating gets a moment to finish.
    if (s->state() == ic::IcState::Negotiating) s->wait_ready(std::chrono::seconds(5));
    if (s->state() != ic::IcState::Ready)
        return api_error(ErrorKind::Conflict, fmt::format("the guest's {} service is not connected (is hv_utils loaded?)", what));
    return s.get();
}

}  // namespace

MachineControl::~MachineControl() = default;

void MachineControl::attach(std::shared_ptr<Machine> machine) {
    LockGuard lock(mu_);
    machine_ = std::move(machine);
    ++generation_;
    shutting_down_ = false;
}

void MachineControl::detach() { attach(nullptr); }

std::shared_ptr<Machine> MachineControl::current(uint64_t* generation) {
    LockGuard lock(mu_);
    if (generation) *generation = generation_;
    return machine_;
}

api::ApiResult<std::shared_ptr<Machine>> MachineControl::running() {
    auto m = current();
    if (!m) return api_error(ErrorKind::Conflict, "the VM is not running (it is stopping or restarting)");
    return m;
}

api::VmInfo MachineControl::info() {
    api::VmInfo info;
    info.cpus = cfg_.cpus;
    info.memory_bytes = cfg_.memory;
    info.kernel = cfg_.kernel;
    info.vm_id = cfg_.vm_id;
    info.cmdline = cfg_.cmdline;
    info.hyperv = cfg_.hyperv;
    auto m = current();
    {
        LockGuard lock(mu_);
        info.state = !m ? "stopped" : shutting_down_ ? "shutting-down" : "running";
    }
    for (const auto& d : devices_.entries()) {
        const auto& o = d.device->offer();
        info.devices.push_back({d.id, d.kind, o.class_id.to_string(), o.instance_id.to_string()});
    }
    for (const auto& [id, c] : controllers(devices_)) {
        for (const auto& d : c->disks()) info.disks.push_back(disk_info(id, c->bus(), d));
        for (const auto& ch : c->channels())
            info.storage_channels.push_back({id, ch.index, ch.target_vp, ch.requests, ch.in_flight});
    }
    for (const auto& e : devices_.entries())
        if (auto nic = std::dynamic_pointer_cast<netvsp::Nic>(e.device)) info.nics.push_back(nic_info(nic->status()));
    if (auto dm = devices_.first<balloon::BalloonDevice>()) info.memory = memory_info(dm->status());
    info.console = console_info(devices_);
    const uint64_t rss = process_resident_bytes();
    if (!m) {
        info.vmm_rss_bytes = rss;
        return info;
    }
    info.uptime_ms = m->uptime_ms();
    info.guest_rss_bytes = m->guest_resident_bytes();
    info.vmm_rss_bytes = rss > info.guest_rss_bytes ? rss - info.guest_rss_bytes : 0;
    if (auto* bus = m->vmbus()) {
        if (const uint32_t v = bus->version()) info.vmbus_version = vmbus::version_string(v);
        info.gpadls = bus->gpadl_count();
        auto ring = [](const std::optional<vmbus::RingHeaderState>& r) -> std::optional<api::ChannelInfo::Ring> {
            if (!r) return std::nullopt;
            return api::ChannelInfo::Ring{r->write_index, r->read_index, r->interrupt_mask, r->pending_send_size,
                                          r->data_size};
        };
        for (const auto& c : bus->channels()) {
            api::ChannelInfo ch{c.relid, c.index, c.name, c.class_id.to_string(), c.instance_id.to_string(),
                                vmbus::to_string(c.state), c.target_vp, {}, {}, c.waiting_for_room};
            if (c.rings) {
                ch.to_host = ring(c.rings->to_host);
                ch.to_guest = ring(c.rings->to_guest);
            }
            info.channels.push_back(std::move(ch));
        }
    }
    return info;
}

api::ApiResult<> MachineControl::shutdown(const api::ShutdownRequest& request) {
    uint64_t generation;
    auto m = current(&generation);
    if (!m) return api_error(ErrorKind::Conflict, "the VM is not running");
    {
        LockGuard lock(mu_);
        if (shutting_down_) return api_error(ErrorKind::Conflict, "a shutdown is already in progress");
        shutting_down_ = true;
    }
    log::info("API: {} requested (timeout {} s per stage)", request.reboot ? "reboot" : "shutdown", request.timeout_s);
    loop_.post([this, generation, request] { shutdown_stage(generation, 1, request); });
    return {};
}

// Stage 1: ask the guest through the shutdown IC. Stage 2: press the ACPI power button (a
// shutdown only). Stage 3: stop the VM. Each stage runs only if the machine it was started
// for is still running after the previous stage's timeout.
void MachineControl::shutdown_stage(uint64_t generation, int stage, api::ShutdownRequest request) {
    uint64_t now_generation;
    auto m = current(&now_generation);
    if (!m || now_generation != generation) return;  // the VM stopped or restarted: done
    const auto wait = std::chrono::seconds(request.timeout_s);
    auto next = [this, generation, request](int s, std::chrono::milliseconds delay) {
        loop_.post_after(delay, [this, generation, s, request] { shutdown_stage(generation, s, request); });
    };
    switch (stage) {
        case 1: {
            auto ic = devices_.first<ic::ShutdownService>();
            if (ic && ic->state() == ic::IcState::Ready) {
                ic->request(request.reboot, std::chrono::seconds(5), [next, wait, reboot = request.reboot](Result<> r) {
                    if (r) {
                        log::info("API: the guest accepted the {} request", reboot ? "reboot" : "shutdown");
                        return next(2, wait);
                    }
                    log::warn("API: shutdown IC: {}", r.error().message());
                    next(2, std::chrono::milliseconds(0));
                });
                return;
            }
            log::info("API: the guest's shutdown service is not connected");
            return next(2, std::chrono::milliseconds(0));
        }
        case 2:
            if (!request.reboot) {
                log::info("API: pressing the ACPI power button");
                m->press_power_button();
                return next(3, wait);
            }
            return next(3, std::chrono::milliseconds(0));
        default:
            log::warn("API: the guest did not {}; forcing it", request.reboot ? "reboot" : "shut down");
            m->request_exit(request.reboot ? VmExit{VmExit::Kind::Reset, 0, {}}
                                           : VmExit{VmExit::Kind::ForcedOff, 0, "forced power-off after the shutdown timeout"});
            return;
    }
}

api::ApiResult<> MachineControl::power_off() {
    ENL_TRY(auto m, running());
    m->request_exit({VmExit::Kind::ForcedOff, 0, "power-off through the API"});
    return {};
}

api::ApiResult<> MachineControl::reset() {
    ENL_TRY(auto m, running());
    m->request_exit({VmExit::Kind::Reset, 0, {}});
    return {};
}

api::HeartbeatInfo MachineControl::heartbeat() {
    api::HeartbeatInfo out;
    auto hb = devices_.first<ic::HeartbeatService>();
    if (!current() || !hb) return out;
    const auto st = hb->status();
    out.sequence = st.sequence;
    if (st.since_reply) out.last_reply_ms = static_cast<uint64_t>(st.since_reply->count());
    out.state = st.health == ic::HeartbeatService::Health::Healthy ? api::HeartbeatState::Healthy
                : st.health == ic::HeartbeatService::Health::Lost  ? api::HeartbeatState::Lost
                                                                    : api::HeartbeatState::Unknown;
    // A switched-off service says nothing of the guest (Hyper-V shows no heartbeat then).
    for (const auto& e : devices_.entries())
        if (e.device == hb && !e.offered->load()) out.state = api::HeartbeatState::Unknown;
    return out;
}

api::IntegrationServiceInfo MachineControl::service_info(const DeviceEntry& e, const ic::IcDevice& s) {
    api::IntegrationServiceInfo info;
    info.name = e.id;
    info.enabled = e.offered->load();
    if (const uint32_t v = s.version(); v != 0 && s.state() == ic::IcState::Ready)
        info.version = fmt::format("{}.{}", v >> 16, v & 0xffff);
    if (info.enabled) info.status = current() ? ic::to_string(s.contact()) : ic::to_string(ic::IcContact::NoContact);
    return info;
}

std::vector<api::IntegrationServiceInfo> MachineControl::integration_services() {
    std::vector<api::IntegrationServiceInfo> out;
    for (const auto& e : devices_.entries())
        if (auto s = std::dynamic_pointer_cast<ic::IcDevice>(e.device)) out.push_back(service_info(e, *s));
    return out;
}

api::ApiResult<api::IntegrationServiceInfo> MachineControl::set_integration_service(const std::string& name,
                                                                                     bool enabled) {
    const DeviceEntry* e = devices_.find(name);
    auto s = e ? std::dynamic_pointer_cast<ic::IcDevice>(e->device) : nullptr;
    if (!s) return api_error(ErrorKind::NotFound, fmt::format("no integration service {}", name));
    if (!enabled && name == "vss" && checkpoints_.running())
        return api_error(ErrorKind::Conflict, "a checkpoint is running: the guest's THAW still has to go through vss");
    // One switch at a time; the flag first, so that a machine booting meanwhile follows it.
    std::lock_guard switching(switch_mu_);
    const bool before = e->offered->exchange(enabled);
    if (auto m = current()) {
        if (auto r = m->set_offered(*e, enabled); !r) {
            e->offered->store(before);
            if (r.error().code() == Errc::Busy) return api_error(ErrorKind::Conflict, r.error().message());
            return ic_error(r.error());
        }
    }
    if (before != enabled) log::info("integration service {} {}", name, enabled ? "enabled" : "disabled");
    return service_info(*e, *s);
}

api::ApiResult<> MachineControl::time_sync() {
    ENL_TRY_VOID(running());
    ENL_TRY(auto* ts, ready(devices_.first<ic::TimeSyncService>(), "time sync"));
    if (auto r = ts->sync(kIcTimeout); !r) return ic_error(r.error());
    return {};
}

api::ApiResult<std::vector<api::KvpEntry>> MachineControl::kvp_list(api::KvpPool pool) {
    ENL_TRY_VOID(running());
    ENL_TRY(auto* kvp, ready(devices_.first<ic::KvpService>(), "KVP"));
    auto r = kvp->list(static_cast<uint8_t>(pool), std::chrono::seconds(30));
    if (!r) return ic_error(r.error());
    std::vector<api::KvpEntry> out;
    for (auto& e : *r) out.push_back({std::move(e.key), std::move(e.value)});
    return out;
}

api::ApiResult<std::string> MachineControl::kvp_get(api::KvpPool pool, const std::string& key) {
    ENL_TRY_VOID(running());
    ENL_TRY(auto* kvp, ready(devices_.first<ic::KvpService>(), "KVP"));
    auto r = kvp->get(static_cast<uint8_t>(pool), key, kIcTimeout);
    if (!r) return ic_error(r.error());
    if (!*r) return api_error(ErrorKind::NotFound, fmt::format("no key '{}' in this pool", key));
    return std::move(**r);
}

api::ApiResult<> MachineControl::kvp_set(api::KvpPool pool, const std::string& key, const std::string& value) {
    if (pool != api::KvpPool::External && pool != api::KvpPool::AutoExternal)
        return api_error(ErrorKind::BadRequest, "the host writes only the external pools (external, auto-external)");
    ENL_TRY_VOID(running());
    ENL_TRY(auto* kvp, ready(devices_.first<ic::KvpService>(), "KVP"));
    if (auto r = kvp->set(static_cast<uint8_t>(pool), key, value, kIcTimeout); !r) return ic_error(r.error());
    return {};
}

api::ApiResult<> MachineControl::kvp_delete(api::KvpPool pool, const std::string& key) {
    if (pool != api::KvpPool::External && pool != api::KvpPool::AutoExternal)
        return api_error(ErrorKind::BadRequest, "the host writes only the external pools (external, auto-external)");
    ENL_TRY_VOID(running());
    ENL_TRY(auto* kvp, ready(devices_.first<ic::KvpService>(), "KVP"));
    if (auto r = kvp->remove(static_cast<uint8_t>(pool), key, kIcTimeout); !r) return ic_error(r.error());
    return {};
}

api::ApiResult<api::DiskInfo> MachineControl::add_disk(const api::AddDiskRequest& request) {
    if (checkpoints_.running()) return api_error(ErrorKind::Conflict, "a checkpoint operation is running; try again after it");
    const auto all = controllers(devices_);
    std::shared_ptr<storvsp::Controller> scsi;
    std::string scsi_id;
    for (const auto& [id, c] : all)
        if (c->bus() == storvsp::Bus::Scsi && (request.controller.empty() || request.controller == id)) {
            scsi = c;
            scsi_id = id;
            break;
        }
    if (!scsi && !request.controller.empty())
        return api_error(ErrorKind::NotFound, fmt::format("no SCSI controller '{}'", request.controller));
    if (!scsi) return api_error(ErrorKind::Conflict, "the VM has no SCSI controller (--hyperv off?)");
    auto taken = [&](std::string_view disk) {
        for (const auto& [id, c] : all)
            if (c->has_disk(disk)) return true;
        return false;
    };
    storvsp::DiskConfig d;
    d.id = request.id;
    for (unsigned n = 0; d.id.empty(); ++n)
        if (!taken(fmt::format("disk{}", n))) d.id = fmt::format("disk{}", n);
    if (taken(d.id)) return api_error(ErrorKind::Conflict, fmt::format("there is a disk '{}' already", d.id));
    d.path = request.path;
    d.format = request.format;
    if (d.format != "auto" && d.format != "raw" && d.format != "vhdx")
        return api_error(ErrorKind::BadRequest, fmt::format("format '{}': auto, raw or vhdx", d.format));
    d.read_only = request.read_only;
    d.writethrough = request.writethrough;
    d.serial = request.serial;
    auto lun = scsi->add_disk(d);
    if (!lun) {
        const auto& e = lun.error();
        return api_error(e.is(Errc::Busy) ? ErrorKind::Conflict : ErrorKind::BadRequest, e.message());
    }
    for (const auto& s : scsi->disks())
        if (s.id == d.id) return disk_info(scsi_id, storvsp::Bus::Scsi, s);
    return api_error(ErrorKind::Internal, "the disk was added but is not listed");
}

api::ApiResult<> MachineControl::remove_disk(const std::string& id) {
    if (checkpoints_.running()) return api_error(ErrorKind::Conflict, "a checkpoint operation is running; try again after it");
    for (const auto& [cid, c] : controllers(devices_)) {
        if (!c->has_disk(id)) continue;
        if (c->bus() != storvsp::Bus::Scsi)
            return api_error(ErrorKind::Conflict, fmt::format("disk '{}' is on the IDE bus, which cannot remove it", id));
        if (auto r = c->remove_disk(id); !r) return api_error(ErrorKind::NotFound, r.error().message());
        return {};
    }
    return api_error(ErrorKind::NotFound, fmt::format("no disk '{}'", id));
}

api::ApiResult<> MachineControl::set_net_link(const std::string& id, bool up) {
    const auto* e = devices_.find(id);
    auto nic = e ? std::dynamic_pointer_cast<netvsp::Nic>(e->device) : nullptr;
    if (!nic) return api_error(ErrorKind::NotFound, fmt::format("no NIC '{}'", id));
    nic->set_link(up);
    return {};
}

api::ApiResult<api::MemoryInfo> MachineControl::memory() {
    auto dm = devices_.first<balloon::BalloonDevice>();
    if (!dm) return api_error(ErrorKind::NotFound, "this VM has no dynamic memory device (it needs --hyperv on)");
    return memory_info(dm->status());
}

api::ApiResult<> MachineControl::set_memory(const api::MemoryUpdate& u) {
    auto dm = devices_.first<balloon::BalloonDevice>();
    if (!dm) return api_error(ErrorKind::NotFound, "this VM has no dynamic memory device (it needs --hyperv on)");
    // The knobs first, so that a target checked against them sees the new ones.
    if (u.min || u.max || u.buffer || u.dynamic)
        if (auto r = dm->set_policy(u.min, u.max, u.buffer, u.dynamic); !r)
            return api_error(ErrorKind::BadRequest, r.error().message());
    if (u.set_target)
        if (auto r = dm->set_target(u.target); !r) return api_error(ErrorKind::BadRequest, r.error().message());
    return {};
}

api::ApiResult<api::CopyFileResult> MachineControl::copy_file(const api::CopyFileRequest& request) {
    ENL_TRY_VOID(running());
    auto fcopy = devices_.first<ic::FcopyService>();
    if (!fcopy) return api_error(ErrorKind::Conflict, "the VM has no file copy service (--hyperv off?)");
    auto r = fcopy->copy({request.source, request.destination, request.overwrite, request.create_path});
    if (r) return api::CopyFileResult{r->bytes, static_cast<uint64_t>(r->elapsed.count())};
    const Error& e = r.error();
    switch (e.code()) {
        case Errc::Invalid: return api_error(ErrorKind::BadRequest, e.message());
        case Errc::NotFound: return api_error(ErrorKind::NotFound, e.message());
        case Errc::Timeout: return api_error(ErrorKind::Unavailable, e.message());
        case Errc::Io: return api_error(ErrorKind::Internal, e.message());
        // Another copy running, the service not connected, the guest's refusals and errors.
        default: return api_error(ErrorKind::Conflict, e.message());
    }
}

api::CopyFileProgress MachineControl::copy_file_progress() {
    api::CopyFileProgress out;
    auto fcopy = devices_.first<ic::FcopyService>();
    if (!fcopy) return out;
    const auto p = fcopy->progress();
    out.state = ic::to_string(p.state);
    out.source = p.source;
    out.destination = p.destination;
    out.bytes_total = p.bytes_total;
    out.bytes_sent = p.bytes_sent;
    out.bytes_written = p.bytes_written;
    out.elapsed_ms = static_cast<uint64_t>(p.elapsed.count());
    out.error = p.error;
    return out;
}

api::ApiResult<api::Screenshot> MachineControl::screenshot() {
    auto video = devices_.first<video::VideoDevice>();
    if (!video) return api_error(ErrorKind::NotFound, "this VM has no display (--display off or --hyperv off)");
    auto frame = video->capture();
    if (!frame) return console_error(frame.error());
    auto png = video::encode_png(*frame);
    if (!png) return api_error(ErrorKind::Internal, png.error().message());
    return api::Screenshot{frame->width, frame->height, std::move(*png)};
}

api::ApiResult<> MachineControl::send_keys(const api::SendKeysRequest& request) {
    auto kbd = devices_.first<input::KeyboardDevice>();
    if (!kbd) return api_error(ErrorKind::NotFound, "this VM has no keyboard (--display off or --hyperv off)");
    auto events = input::text_events(request.text);
    if (!events) return console_error(events.error());
    for (const auto& combination : request.keys) {
        auto more = input::combination_events(combination);
        if (!more) return console_error(more.error());
        events->insert(events->end(), more->begin(), more->end());
    }
    if (auto r = kbd->type(*events); !r) return console_error(r.error());
    return {};
}

api::ApiResult<> MachineControl::pointer(const api::PointerRequest& request) {
    auto mouse = devices_.first<input::MouseDevice>();
    if (!mouse) return api_error(ErrorKind::NotFound, "this VM has no mouse (--display off or --hyperv off)");
    // Pixels of the screen the guest shows now (or the mode offered, before it shows one).
    uint32_t width = cfg_.display.width, height = cfg_.display.height;
    if (auto video = devices_.first<video::VideoDevice>())
        if (const auto mode = video->status().mode) width = mode->width, height = mode->height;
    if (request.x >= width || request.y >= height)
        return api_error(ErrorKind::BadRequest, fmt::format("({}, {}) is outside the {}x{} screen", request.x,
                                                            request.y, width, height));
    input::PointerState s{input::MouseDevice::scale(request.x, width), input::MouseDevice::scale(request.y, height),
                          request.buttons, static_cast<int16_t>(request.wheel)};
    if (auto r = mouse->move(s); !r) return console_error(r.error());
    if (request.click) {
        s.wheel = 0;
        s.buttons = static_cast<uint8_t>(request.buttons | request.click);
        if (auto r = mouse->move(s); !r) return console_error(r.error());
        s.buttons = request.buttons;
        if (auto r = mouse->move(s); !r) return console_error(r.error());
    }
    return {};
}

}  // namespace enlighten
