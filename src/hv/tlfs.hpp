// Hyper-V Top-Level Functional Specification definitions that Enlighten implements.
// Values from Linux include/asm-generic/hyperv-tlfs.h and arch/x86/include/asm/hyperv-tlfs.h
// (Debian 6.1.192); see ../shared/linux-hv-guest-contract.md §1-§4.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace enlighten::hv {

// CPUID leaves.
inline constexpr uint32_t kCpuidVendor = 0x40000000;
inline constexpr uint32_t kCpuidInterface = 0x40000001;
inline constexpr uint32_t kCpuidVersion = 0x40000002;
inline constexpr uint32_t kCpuidFeatures = 0x40000003;
inline constexpr uint32_t kCpuidEnlightenment = 0x40000004;
inline constexpr uint32_t kCpuidLimits = 0x40000005;
inline constexpr uint32_t kCpuidMax = 0x4000000a;
inline constexpr uint32_t kHvInterfaceSignature = 0x31237648;  // "Hv#1"

// CPUID 0x40000003 EAX: partition privileges (low).
inline constexpr uint32_t kFeatVpRuntime = 1U << 0;
inline constexpr uint32_t kFeatTimeRefCount = 1U << 1;
inline constexpr uint32_t kFeatSynic = 1U << 2;
inline constexpr uint32_t kFeatSyntimer = 1U << 3;
inline constexpr uint32_t kFeatApicAccess = 1U << 4;
inline constexpr uint32_t kFeatHypercall = 1U << 5;
inline constexpr uint32_t kFeatVpIndex = 1U << 6;
inline constexpr uint32_t kFeatReset = 1U << 7;
inline constexpr uint32_t kFeatReferenceTsc = 1U << 9;
inline constexpr uint32_t kFeatAccessFrequency = 1U << 11;
inline constexpr uint32_t kFeatTscInvariant = 1U << 15;
// CPUID 0x40000003 EBX: partition privileges (high).
inline constexpr uint32_t kPrivPostMessages = 1U << 4;
inline constexpr uint32_t kPrivSignalEvents = 1U << 5;
// CPUID 0x40000003 EDX: misc features.
inline constexpr uint32_t kMiscFrequencyMsrs = 1U << 8;
inline constexpr uint32_t kMiscGuestCrashMsrs = 1U << 10;
// CPUID 0x40000004 EAX: recommendations.
inline constexpr uint32_t kHintDeprecatingAeoi = 1U << 9;

// Synthetic MSRs.
inline constexpr uint32_t kMsrGuestOsId = 0x40000000;
inline constexpr uint32_t kMsrHypercall = 0x40000001;
inline constexpr uint32_t kMsrVpIndex = 0x40000002;
inline constexpr uint32_t kMsrReset = 0x40000003;
inline constexpr uint32_t kMsrVpRuntime = 0x40000010;
inline constexpr uint32_t kMsrTimeRefCount = 0x40000020;
inline constexpr uint32_t kMsrReferenceTsc = 0x40000021;
inline constexpr uint32_t kMsrTscFrequency = 0x40000022;
inline constexpr uint32_t kMsrApicFrequency = 0x40000023;
inline constexpr uint32_t kMsrVpAssistPage = 0x40000073;
inline constexpr uint32_t kMsrScontrol = 0x40000080;
inline constexpr uint32_t kMsrSversion = 0x40000081;
inline constexpr uint32_t kMsrSiefp = 0x40000082;
inline constexpr uint32_t kMsrSimp = 0x40000083;
inline constexpr uint32_t kMsrEom = 0x40000084;
inline constexpr uint32_t kMsrSint0 = 0x40000090;
inline constexpr uint32_t kMsrSint15 = 0x4000009f;
inline constexpr uint32_t kMsrCrashP0 = 0x40000100;
inline constexpr uint32_t kMsrCrashP4 = 0x40000104;
inline constexpr uint32_t kMsrCrashCtl = 0x40000105;
inline constexpr uint32_t kMsrTscInvariantControl = 0x40000118;
// The whole synthetic range is routed to user space.
inline constexpr uint32_t kMsrRangeFirst = 0x40000000;
inline constexpr uint32_t kMsrRangeCount = 0x200;

inline constexpr uint64_t kCrashCtlNotify = 1ULL << 63;
inline constexpr uint64_t kCrashCtlNotifyMsg = 1ULL << 62;

inline constexpr uint64_t kHypercallEnable = 1ULL << 0;
inline constexpr uint64_t kScontrolEnable = 1ULL << 0;
inline constexpr uint64_t kSimpEnable = 1ULL << 0;   // also SIEFP
inline constexpr uint64_t kSintMasked = 1ULL << 16;
inline constexpr uint64_t kSintAutoEoi = 1ULL << 17;
inline constexpr uint64_t kSintPolling = 1ULL << 18;
inline constexpr uint64_t kSintReset = kSintMasked;
inline constexpr uint32_t kSintCount = 16;
inline constexpr uint64_t kPageMask = ~0xfffULL;

// Hypercall codes and status values.
inline constexpr uint16_t kHvcallPostMessage = 0x005c;
inline constexpr uint16_t kHvcallSignalEvent = 0x005d;

enum class Status : uint16_t {
    Success = 0,
    InvalidHypercallCode = 2,
    InvalidHypercallInput = 3,
    InvalidAlignment = 4,
    InvalidParameter = 5,
    AccessDenied = 6,
    OperationDenied = 8,
    InsufficientMemory = 11,
    InvalidPortId = 17,
    InvalidConnectionId = 18,
    InsufficientBuffers = 19,
};

// The hypercall input control word (TLFS §3.7), decoded once.
class HypercallControl {
public:
    explicit constexpr HypercallControl(uint64_t raw) : raw_(raw) {}
    [[nodiscard]] constexpr uint16_t code() const { return static_cast<uint16_t>(raw_ & 0xffff); }
    [[nodiscard]] constexpr bool fast() const { return (raw_ >> 16) & 1; }
    [[nodiscard]] constexpr uint32_t var_header_size() const { return static_cast<uint32_t>((raw_ >> 17) & 0x3ff); }
    [[nodiscard]] constexpr uint32_t rep_count() const { return static_cast<uint32_t>((raw_ >> 32) & 0xfff); }
    [[nodiscard]] constexpr uint32_t rep_start() const { return static_cast<uint32_t>((raw_ >> 48) & 0xfff); }
    // Bits 27-31, 44-47 and 60-63 are reserved and must be zero.
    [[nodiscard]] constexpr bool reserved_bits_set() const { return (raw_ & 0xf000f000f8000000ULL) != 0; }

private:
    uint64_t raw_;
};

// struct hv_message_header / hv_message (hyperv-tlfs.h): one 256-byte SynIC message slot.
inline constexpr uint32_t kMessageTypeNone = 0;
inline constexpr uint32_t kMessageTypeVmbus = 1;
inline constexpr size_t kMessagePayloadMax = 240;
inline constexpr uint8_t kMessageFlagPending = 0x01;

struct HvMessageHeader {
    uint32_t message_type;  // 0
    uint8_t payload_size;   // 4
    uint8_t message_flags;  // 5
    uint8_t reserved[2];    // 6
    uint64_t sender;        // 8 (port / sender id; ignored by Linux)
};
static_assert(std::is_standard_layout_v<HvMessageHeader> && sizeof(HvMessageHeader) == 16);

struct HvMessage {
    HvMessageHeader header;
    uint8_t payload[kMessagePayloadMax];
};
static_assert(std::is_standard_layout_v<HvMessage> && sizeof(HvMessage) == 256);

// struct hv_input_post_message (drivers/hv/hyperv_vmbus.h).
struct HvInputPostMessage {
    uint32_t connection_id;  // 0, bits 23:0
    uint32_t reserved;       // 4
    uint32_t message_type;   // 8
    uint32_t payload_size;   // 12
    uint8_t payload[kMessagePayloadMax];  // 16
};
static_assert(std::is_standard_layout_v<HvInputPostMessage> && sizeof(HvInputPostMessage) == 256);

// Event flags: 2048 bits per SINT (struct hv_synic_event_flags).
inline constexpr uint32_t kEventFlagsPerSint = 2048;
inline constexpr uint64_t kSintAreaSize = 256;

}  // namespace enlighten::hv
