#include "kvm/kvm.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

namespace enlighten {

namespace {

// ioctl() retrying on EINTR where the call has no side effect that makes that wrong.
template <typename Arg>
int xioctl(int fd, unsigned long req, Arg arg) {
    int r;
    do {
        r = ::ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

// Linux's uapi headers declare the variable-length KVM structures with
// __DECLARE_FLEX_ARRAY, which in C++ inserts an empty struct of size 1 before the array:
// sizeof(kvm_cpuid2) becomes 12 instead of 8, which changes both the ioctl numbers and
// where the entries start. So the headers and ioctl numbers are declared here with the
// C layout (arch/x86/include/uapi/asm/kvm.h).
struct Cpuid2Header {
    uint32_t nent;
    uint32_t padding;
};
struct MsrsHeader {
    uint32_t nmsrs;
    uint32_t pad;
};
struct IrqRoutingHeader {
    uint32_t nr;
    uint32_t flags;
};
static_assert(sizeof(Cpuid2Header) == 8 && sizeof(MsrsHeader) == 8 && sizeof(IrqRoutingHeader) == 8);
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);

// A heap buffer holding a header followed by `n` entries.
template <typename Header, typename Entry>
struct FlexBuffer {
    // new[] (zeroed), never null: GCC 12 at -O3 takes an empty vector's data() for a possible
    // null pointer and warns (-Wnull-dereference) at header()->.
    explicit FlexBuffer(size_t n) : storage(std::make_unique<std::byte[]>(sizeof(Header) + n * sizeof(Entry))) {}
    Header* header() { return reinterpret_cast<Header*>(storage.get()); }
    Entry* entries() { return reinterpret_cast<Entry*>(storage.get() + sizeof(Header)); }
    std::unique_ptr<std::byte[]> storage;
};

}  // namespace

Result<Kvm> Kvm::open(const char* path) {
    Kvm kvm;
    kvm.fd_.reset(::open(path, O_RDWR | O_CLOEXEC));
    if (!kvm.fd_.valid()) return fail_errno(fmt::format("cannot open {}", path));
    const int version = ::ioctl(kvm.fd_.get(), KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) return fail("{}: unsupported KVM API version {}", path, version);
    kvm.vcpu_mmap_size_ = ::ioctl(kvm.fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
    if (kvm.vcpu_mmap_size_ <= 0) return fail_errno("KVM_GET_VCPU_MMAP_SIZE");
    return kvm;
}

int Kvm::check_extension(long cap) const {
    const int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

Result<std::vector<kvm_cpuid_entry2>> Kvm::supported_cpuid() const {
    for (size_t n = 128; n <= 4096; n *= 2) {
        FlexBuffer<Cpuid2Header, kvm_cpuid_entry2> buf(n);
        buf.header()->nent = static_cast<uint32_t>(n);
        if (::ioctl(fd_.get(), kGetSupportedCpuid, buf.header()) == 0) {
            const auto* e = buf.entries();
            return std::vector<kvm_cpuid_entry2>(e, e + std::min<size_t>(buf.header()->nent, n));
        }
        if (errno != E2BIG) return fail_errno("KVM_GET_SUPPORTED_CPUID");
    }
    return fail("KVM_GET_SUPPORTED_CPUID: too many entries");
}

Result<std::unique_ptr<Vm>> Kvm::create_vm() const {
    const int fd = xioctl(fd_.get(), KVM_CREATE_VM, 0UL);
    if (fd < 0) return fail_errno("KVM_CREATE_VM");
    return std::make_unique<Vm>(UniqueFd(fd), vcpu_mmap_size_);
}

Result<> Vm::set_tss_addr(uint64_t addr) const {
    if (xioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0)
        return fail_errno("KVM_SET_TSS_ADDR");
    return {};
}

Result<> Vm::set_identity_map_addr(uint64_t addr) const {
    if (xioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &addr) < 0) return fail_errno("KVM_SET_IDENTITY_MAP_ADDR");
    return {};
}

Result<> Vm::create_irqchip() const {
    if (xioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0UL) < 0) return fail_errno("KVM_CREATE_IRQCHIP");
    return {};
}

Result<> Vm::create_pit2() const {
    kvm_pit_config cfg{};
    cfg.flags = KVM_PIT_SPEAKER_DUMMY;
    if (xioctl(fd_.get(), KVM_CREATE_PIT2, &cfg) < 0) return fail_errno("KVM_CREATE_PIT2");
    return {};
}

Result<> Vm::set_gsi_routing(std::span<const kvm_irq_routing_entry> entries) const {
    FlexBuffer<IrqRoutingHeader, kvm_irq_routing_entry> buf(entries.size());
    buf.header()->nr = static_cast<uint32_t>(entries.size());
    std::copy(entries.begin(), entries.end(), buf.entries());
    if (xioctl(fd_.get(), kSetGsiRouting, buf.header()) < 0) return fail_errno("KVM_SET_GSI_ROUTING");
    return {};
}

Result<> Vm::set_slot(uint32_t slot, uint64_t gpa, uint64_t size, uint8_t* host) {
    kvm_userspace_memory_region r{};
    r.slot = slot;
    r.guest_phys_addr = size == 0 ? 0 : gpa;
    r.memory_size = size;
    r.userspace_addr = size == 0 ? 0 : reinterpret_cast<uint64_t>(host);
    if (xioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0)
        return fail_errno(fmt::format("KVM_SET_USER_MEMORY_REGION slot {} {:#x}+{:#x}", slot, gpa, size));
    return {};
}

Result<> Vm::irq_line(uint32_t gsi, bool level) const {
    kvm_irq_level irq{};
    irq.irq = gsi;
    irq.level = level ? 1 : 0;
    if (xioctl(fd_.get(), KVM_IRQ_LINE, &irq) < 0) return fail_errno("KVM_IRQ_LINE");
    return {};
}

Result<> Vm::signal_msi(uint64_t address, uint32_t data) const {
    kvm_msi msi{};
    msi.address_lo = static_cast<uint32_t>(address);
    msi.address_hi = static_cast<uint32_t>(address >> 32);
    msi.data = data;
    if (xioctl(fd_.get(), KVM_SIGNAL_MSI, &msi) < 0) return fail_errno("KVM_SIGNAL_MSI");
    return {};
}

Result<> Vm::enable_cap(uint32_t cap, std::span<const uint64_t> args) const {
    kvm_enable_cap c{};
    c.cap = cap;
    for (size_t i = 0; i < args.size() && i < 4; ++i) c.args[i] = args[i];
    if (xioctl(fd_.get(), KVM_ENABLE_CAP, &c) < 0) return fail_errno(fmt::format("KVM_ENABLE_CAP({})", cap));
    return {};
}

Result<> Vm::deny_msr_range(uint32_t first, uint32_t count) const {
    std::vector<uint8_t> bitmap((count + 7) / 8, 0);  // 0 = deny
    kvm_msr_filter filter{};
    filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
    filter.ranges[0].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
    filter.ranges[0].nmsrs = count;
    filter.ranges[0].base = first;
    filter.ranges[0].bitmap = bitmap.data();
    if (xioctl(fd_.get(), KVM_X86_SET_MSR_FILTER, &filter) < 0) return fail_errno("KVM_X86_SET_MSR_FILTER");
    return {};
}

Result<std::unique_ptr<Vcpu>> Vm::create_vcpu(uint32_t id) const {
    const int fd = xioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
    if (fd < 0) return fail_errno(fmt::format("KVM_CREATE_VCPU({})", id));
    UniqueFd vcpu_fd(fd);
    const auto size = static_cast<size_t>(vcpu_mmap_size_);
    void* run = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (run == MAP_FAILED) return fail_errno("mmap kvm_run");
    return std::make_unique<Vcpu>(id, std::move(vcpu_fd), static_cast<kvm_run*>(run), size);
}

Result<> Vm::set_pio_eventfd(uint16_t port, uint32_t datamatch, int fd, bool assign) const {
    kvm_ioeventfd io{};
    io.datamatch = datamatch;
    io.addr = port;
    io.len = 4;
    io.fd = fd;
    io.flags = KVM_IOEVENTFD_FLAG_PIO | KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0U : KVM_IOEVENTFD_FLAG_DEASSIGN);
    if (xioctl(fd_.get(), KVM_IOEVENTFD, &io) < 0)
        return fail_errno(fmt::format("KVM_IOEVENTFD port {:#x} value {:#x}", port, datamatch));
    return {};
}

Vcpu::~Vcpu() { ::munmap(run_, run_size_); }

Result<bool> Vcpu::run() const {
    if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
        if (errno == EINTR || errno == EAGAIN) return false;
        return fail_errno(fmt::format("KVM_RUN on vCPU {}", id_));
    }
    return true;
}

#define ENL_VCPU_GET(type, req, name)                                 \
    Result<type> Vcpu::name() const {                                 \
        type v{};                                                     \
        if (xioctl(fd_.get(), req, &v) < 0) return fail_errno(#req); \
        return v;                                                     \
    }
#define ENL_VCPU_SET(type, req, name)                                 \
    Result<> Vcpu::name(const type& v) const {                        \
        if (xioctl(fd_.get(), req, &v) < 0) return fail_errno(#req); \
        return {};                                                    \
    }
ENL_VCPU_GET(kvm_regs, KVM_GET_REGS, get_regs)
ENL_VCPU_SET(kvm_regs, KVM_SET_REGS, set_regs)
ENL_VCPU_GET(kvm_sregs, KVM_GET_SREGS, get_sregs)
ENL_VCPU_SET(kvm_sregs, KVM_SET_SREGS, set_sregs)
ENL_VCPU_SET(kvm_fpu, KVM_SET_FPU, set_fpu)
ENL_VCPU_GET(kvm_lapic_state, KVM_GET_LAPIC, get_lapic)
ENL_VCPU_SET(kvm_lapic_state, KVM_SET_LAPIC, set_lapic)
ENL_VCPU_GET(kvm_mp_state, KVM_GET_MP_STATE, get_mp_state)
#undef ENL_VCPU_GET
#undef ENL_VCPU_SET

Result<uint32_t> Vcpu::tsc_khz() const {
    const int r = xioctl(fd_.get(), KVM_GET_TSC_KHZ, 0UL);
    if (r <= 0) return fail_errno("KVM_GET_TSC_KHZ");
    return static_cast<uint32_t>(r);
}

Result<> Vcpu::set_cpuid(std::span<const kvm_cpuid_entry2> entries) const {
    FlexBuffer<Cpuid2Header, kvm_cpuid_entry2> buf(entries.size());
    buf.header()->nent = static_cast<uint32_t>(entries.size());
    std::copy(entries.begin(), entries.end(), buf.entries());
    if (xioctl(fd_.get(), kSetCpuid2, buf.header()) < 0) return fail_errno("KVM_SET_CPUID2");
    return {};
}

Result<> Vcpu::set_msrs(std::span<const kvm_msr_entry> entries) const {
    FlexBuffer<MsrsHeader, kvm_msr_entry> buf(entries.size());
    buf.header()->nmsrs = static_cast<uint32_t>(entries.size());
    std::copy(entries.begin(), entries.end(), buf.entries());
    const int r = xioctl(fd_.get(), kSetMsrs, buf.header());
    if (r < 0) return fail_errno("KVM_SET_MSRS");
    if (static_cast<size_t>(r) != entries.size())
        return fail("KVM_SET_MSRS: MSR {:#x} was refused", entries[static_cast<size_t>(r)].index);
    return {};
}

}  // namespace enlighten
