#include "hv/partition.hpp"

#include <algorithm>

#include "common/log.hpp"

#include "common/rate_limit.hpp"

namespace enlighten::hv {

namespace {

constexpr uint32_t kCrashMessageMax = 4096;  // Linux sends at most one page

kvm_cpuid_entry2 leaf(uint32_t function, uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx) {
    kvm_cpuid_entry2 e{};
    e.function = function;
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = edx;
    return e;
}

}  // namespace

Partition::Partition(const GuestMemory& mem, InterruptSink& irq, PartitionConfig cfg)
    : mem_(mem), cfg_(cfg), synic_(mem, irq, cfg.num_vps), vp_assist_(cfg.num_vps, 0) {}

std::vector<uint8_t> Partition::hypercall_stub(uint16_t port, uint16_t doorbell_port) {
    // The slow path, for every hypercall:
    //   in eax, imm8   exits to the VMM, which puts the status in EAX (zero-extended to RAX)
    //   ret
    const uint8_t slow[] = {0xe5, static_cast<uint8_t>(port), 0xc3};
    if (doorbell_port == 0) return {slow, slow + sizeof(slow)};
    // The doorbell path first. Linux's hv_do_fast_hypercall8 lets the page clobber RAX,
    // RCX, RDX and R8-R11; the slow path must still see RCX and RDX as the guest set them.
    //   cmp rcx, 0x1005d       fast HvSignalEvent, no rep count, no variable header
    //   jne slow
    //   mov rax, rdx
    //   shr rax, 24            flag number and reserved bits must be zero
    //   jnz slow
    //   mov eax, edx           the connection id
    //   mov edx, doorbell_port
    //   out dx, eax            a KVM ioeventfd matches it, or the VMM sees the write
    //   xor eax, eax           HV_STATUS_SUCCESS (the guest ignores it anyway)
    //   ret
    // slow:
    std::vector<uint8_t> code = {0x48, 0x81, 0xf9, 0x5d, 0x00, 0x01, 0x00, 0x75, 0x14, 0x48, 0x89, 0xd0,
                                 0x48, 0xc1, 0xe8, 0x18, 0x75, 0x0b, 0x89, 0xd0, 0xba,
                                 static_cast<uint8_t>(doorbell_port), static_cast<uint8_t>(doorbell_port >> 8),
                                 0x00, 0x00, 0xef, 0x31, 0xc0, 0xc3};
    code.insert(code.end(), slow, slow + sizeof(slow));
    return code;
}

std::vector<kvm_cpuid_entry2> Partition::cpuid_leaves() const {
    uint32_t features = kFeatSynic | kFeatHypercall | kFeatVpIndex | kFeatTscInvariant;
    uint32_t misc = kMiscGuestCrashMsrs;
    if (cfg_.tsc_hz) {
        features |= kFeatAccessFrequency;
        misc |= kMiscFrequencyMsrs;
    }
    std::vector<kvm_cpuid_entry2> leaves = {
        // "Microsoft Hv", and the highest leaf.
        leaf(kCpuidVendor, kCpuidMax, 0x7263694d, 0x666f736f, 0x76482074),
        leaf(kCpuidInterface, kHvInterfaceSignature, 0, 0, 0),
        // Host build: 10.0, build 20348 (what the guest prints as "Host Build").
        leaf(kCpuidVersion, 20348, 0x000a0000, 0, 0),
        leaf(kCpuidFeatures, features, kPrivPostMessages | kPrivSignalEvents, 0, misc),
        // Recommendations: EOI the SINT vector (no auto-EOI, which the in-kernel LAPIC cannot
        // emulate); never notify on spinlock retries.
        leaf(kCpuidEnlightenment, kHintDeprecatingAeoi, 0xffffffff, 0, 0),
        leaf(kCpuidLimits, cfg_.num_vps, cfg_.num_vps, 0, 0),
    };
    for (uint32_t f = 0x40000006; f <= kCpuidMax; ++f) leaves.push_back(leaf(f, 0, 0, 0, 0));
    // Above the max leaf, but read by ms_hyperv_msi_ext_dest_id(): explicit zeros, so KVM
    // does not answer with the highest basic leaf.
    leaves.push_back(leaf(0x40000081, 0, 0, 0, 0));
    leaves.push_back(leaf(0x40000082, 0, 0, 0, 0));
    return leaves;
}

void Partition::set_handlers(MessageHandler messages, EventHandler events) {
    message_handler_ = std::move(messages);
    event_handler_ = std::move(events);
}

uint64_t Partition::reference_time() const {
    const auto elapsed = std::chrono::steady_clock::now() - start_;
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) / 100;
}

std::optional<uint64_t> Partition::read_msr(uint32_t vp, uint32_t msr) {
    if (vp >= cfg_.num_vps) return std::nullopt;
    if (Synic::is_synic_msr(msr)) return synic_.read_msr(vp, msr);
    std::lock_guard lock(mu_);
    switch (msr) {
        case kMsrGuestOsId: return guest_os_id_;
        case kMsrHypercall: return hypercall_;
        case kMsrVpIndex: return vp;
        case kMsrTimeRefCount: return reference_time();
        case kMsrReferenceTsc: return reference_tsc_;
        case kMsrTscFrequency:
            if (!cfg_.tsc_hz) return std::nullopt;
            return cfg_.tsc_hz;
        case kMsrApicFrequency:
            if (!cfg_.tsc_hz) return std::nullopt;
            return cfg_.apic_hz;
        case kMsrVpAssistPage: return vp_assist_[vp];
        case kMsrCrashCtl: return kCrashCtlNotify | kCrashCtlNotifyMsg;  // what we support
        case kMsrTscInvariantControl: return tsc_invariant_control_;
        default:
            if (msr >= kMsrCrashP0 && msr <= kMsrCrashP4) return crash_params_[msr - kMsrCrashP0];
            return std::nullopt;
    }
}

bool Partition::write_msr(uint32_t vp, uint32_t msr, uint64_t value) {
    if (vp >= cfg_.num_vps) return false;
    if (Synic::is_synic_msr(msr)) return synic_.write_msr(vp, msr, value);
    bool crash = false;
    {
        std::lock_guard lock(mu_);
        switch (msr) {
            case kMsrGuestOsId:
                guest_os_id_ = value;
                // Clearing the guest OS id disables the hypercall page (TLFS 3.13).
                if (value == 0) hypercall_ &= ~kHypercallEnable;
                break;
            case kMsrHypercall:
                if (!write_hypercall_page(value)) return false;
                break;
            case kMsrVpIndex:
            case kMsrTimeRefCount:
            case kMsrTscFrequency:
            case kMsrApicFrequency:
                return false;  // read-only
            case kMsrReferenceTsc:
                // Accepted and stored, but the reference TSC page is not offered (CPUID bit 9
                // clear), so the guest only writes it to disable it (hyperv_cleanup on kexec).
                reference_tsc_ = value;
                break;
            case kMsrVpAssistPage:
                vp_assist_[vp] = value;  // stored; we never write into that page
                break;
            case kMsrTscInvariantControl:
                tsc_invariant_control_ = value & 1;
                break;
            case kMsrCrashCtl:
                if (value & kCrashCtlNotify) crash = true;
                break;
            default:
                if (msr >= kMsrCrashP0 && msr <= kMsrCrashP4) {
                    crash_params_[msr - kMsrCrashP0] = value;
                    break;
                }
                return false;
        }
    }
    if (crash) report_crash();
    return true;
}

// Called with mu_ held.
bool Partition::write_hypercall_page(uint64_t value) {
    // The enable bit sticks only once the guest has identified itself.
    if ((value & kHypercallEnable) && guest_os_id_ == 0) {
        hypercall_ = value & ~kHypercallEnable;
        return true;
    }
    if (value & kHypercallEnable) {
        const uint64_t gpa = value & kPageMask;
        uint8_t* page = mem_.host_ptr(gpa, 4096);
        if (!page) {
            ENL_LOG_LIMITED(warn, "hypercall page at {:#x} is not guest RAM", gpa);
            return false;
        }
        std::fill(page, page + 4096, uint8_t{0xcc});  // int3 everywhere but the entry
        const auto stub = hypercall_stub(cfg_.hypercall_port, cfg_.doorbell_port);
        std::copy(stub.begin(), stub.end(), page);
    }
    hypercall_ = value;
    return true;
}

void Partition::report_crash() {
    CrashReport report;
    {
        std::lock_guard lock(mu_);
        report.params = crash_params_;
    }
    // With NOTIFY_MSG, P3 is the GPA of the guest's kmsg text and P4 its length.
    const uint64_t gpa = report.params[3];
    const uint64_t len = std::min<uint64_t>(report.params[4], kCrashMessageMax);
    if (len > 0) {
        std::string text(static_cast<size_t>(len), '\0');
        if (mem_.read(gpa, std::span(reinterpret_cast<uint8_t*>(text.data()), text.size()))) {
            // The text is guest-controlled: keep printable characters and newlines only.
            for (char& c : text)
                if (c != '\n' && (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)) c = '.';
            report.message = std::move(text);
        }
    }
    if (on_crash) on_crash(report);
}

uint64_t Partition::hypercall(uint32_t vp, uint64_t control_word, uint64_t input, uint64_t output) {
    (void)output;  // neither supported call has output
    const HypercallControl control(control_word);
    Status status;
    if (control.reserved_bits_set()) {
        status = Status::InvalidHypercallInput;
    } else {
        switch (control.code()) {
            case kHvcallPostMessage:
                ++post_message_count_;
                status = post_message(vp, control_word, input);
                break;
            case kHvcallSignalEvent:
                ++signal_event_count_;
                status = signal_event(vp, control_word, input);
                break;
            default:
                ENL_LOG_LIMITED(debug, "VP {}: unsupported hypercall {:#x}", vp, control.code());
                status = Status::InvalidHypercallCode;
                break;
        }
    }
    if (status != Status::Success) ++failed_count_;
    return static_cast<uint64_t>(status);
}

Status Partition::post_message(uint32_t vp, uint64_t control_word, uint64_t input_gpa) {
    const HypercallControl control(control_word);
    if (control.fast() || control.rep_count() != 0 || control.var_header_size() != 0)
        return Status::InvalidHypercallInput;
    if (input_gpa % 8 != 0) {
        ENL_LOG_LIMITED(warn, "VP {}: HvPostMessage input {:#x} is misaligned", vp, input_gpa);
        return Status::InvalidAlignment;
    }
    // Copy the input once; everything below looks at the copy only.
    auto in = mem_.read_obj<HvInputPostMessage>(input_gpa);
    if (!in) {
        ENL_LOG_LIMITED(warn, "VP {}: HvPostMessage input {:#x} is outside guest RAM", vp, input_gpa);
        return Status::InvalidHypercallInput;
    }
    if (in->payload_size > kMessagePayloadMax) {
        ENL_LOG_LIMITED(warn, "VP {}: HvPostMessage payload of {} bytes (max {})", vp, in->payload_size, kMessagePayloadMax);
        return Status::InvalidParameter;
    }
    if (in->message_type == 0 || (in->message_type & 0x80000000U)) return Status::InvalidParameter;
    if (in->connection_id & 0xff000000U) return Status::InvalidConnectionId;
    if (!message_handler_) return Status::InvalidConnectionId;
    const Status status = message_handler_(vp, in->connection_id, in->message_type, std::span(in->payload, in->payload_size));
    if (status == Status::InvalidConnectionId)
        ENL_LOG_LIMITED(warn, "VP {}: HvPostMessage to unknown connection {:#x}", vp, in->connection_id);
    return status;
}

Status Partition::signal_event(uint32_t vp, uint64_t control_word, uint64_t input) {
    const HypercallControl control(control_word);
    if (control.rep_count() != 0 || control.var_header_size() != 0) return Status::InvalidHypercallInput;
    uint64_t param = input;
    if (!control.fast()) {
        if (input % 8 != 0) return Status::InvalidAlignment;
        auto v = mem_.read_obj<uint64_t>(input);
        if (!v) return Status::InvalidHypercallInput;
        param = *v;
    }
    // Bits 23:0 connection id, 31:24 reserved, 47:32 flag number, 63:48 reserved.
    if (param & 0xffff0000ff000000ULL) return Status::InvalidHypercallInput;
    const auto connection_id = static_cast<uint32_t>(param & 0xffffff);
    const auto flag = static_cast<uint16_t>(param >> 32);
    if (!event_handler_) return Status::InvalidConnectionId;
    const Status status = event_handler_(vp, connection_id, flag);
    if (status == Status::InvalidConnectionId)
        ENL_LOG_LIMITED(debug, "VP {}: HvSignalEvent to unknown connection {:#x}", vp, connection_id);
    return status;
}

HypercallStats Partition::hypercall_stats() const {
    return {post_message_count_.load(), signal_event_count_.load(), failed_count_.load()};
}

}  // namespace enlighten::hv
