// VMBus channel-management messages, as Linux 6.1 lays them out (include/linux/hyperv.h,
// all __packed). Sizes and offsets from linux-hv-guest-contract §6.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/wire.hpp"

namespace enlighten::vmbus {

// A GUID in the guid_t wire layout: the first three fields little-endian, then 8 bytes.
struct Guid {
    std::array<uint8_t, 16> bytes{};
    // From canonical text "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"; all zeros if malformed.
    static Guid parse(const char* text);
    // A stable GUID from a name (FNV-1a, version-4 layout), so that a device is named the
    // same at every boot (instance GUIDs made from device ids).
    static Guid from_name(std::string_view name);
    // A fresh random GUID (version 4), from the kernel's random source.
    static Guid random();
    [[nodiscard]] std::string to_string() const;
    friend bool operator==(const Guid&, const Guid&) = default;
};
ENL_WIRE(Guid, 16);

enum class MsgType : uint32_t {
    Invalid = 0,
    OfferChannel = 1,
    RescindChannelOffer = 2,
    RequestOffers = 3,
    AllOffersDelivered = 4,
    OpenChannel = 5,
    OpenChannelResult = 6,
    CloseChannel = 7,
    GpadlHeader = 8,
    GpadlBody = 9,
    GpadlCreated = 10,
    GpadlTeardown = 11,
    GpadlTorndown = 12,
    RelidReleased = 13,
    InitiateContact = 14,
    VersionResponse = 15,
    Unload = 16,
    UnloadResponse = 17,
    TlConnectRequest = 21,
    ModifyChannel = 22,
    TlConnectResult = 23,
    ModifyChannelResponse = 24,
};

struct MessageHeader {
    uint32_t msgtype;  // 0
    uint32_t padding;  // 4
};
ENL_WIRE(MessageHeader, 8);

// Protocol versions (major << 16 | minor) that Linux 6.1 offers, newest first.
inline constexpr uint32_t kVersionWin10V5_3 = 0x50003;
inline constexpr uint32_t kVersionWin10V5_2 = 0x50002;
inline constexpr uint32_t kVersionWin10V5_1 = 0x50001;
inline constexpr uint32_t kVersionWin10V5 = 0x50000;
inline constexpr uint32_t kVersionWin10V4_1 = 0x40001;
inline constexpr uint32_t kVersionWin10 = 0x40000;
inline constexpr uint32_t kVersionWin8_1 = 0x30000;
inline constexpr uint32_t kVersionWin8 = 0x20004;

inline constexpr uint32_t kMessageConnectionId = 1;    // VMBUS_MESSAGE_CONNECTION_ID
inline constexpr uint32_t kMessageConnectionId4 = 4;   // VMBUS_MESSAGE_CONNECTION_ID_4 (>= 5.0)
inline constexpr uint32_t kMessageSint = 2;            // VMBUS_MESSAGE_SINT

// struct vmbus_channel_initiate_contact
struct InitiateContact {
    MessageHeader header;               // 0
    uint32_t vmbus_version_requested;   // 8
    uint32_t target_vcpu;               // 12
    uint64_t interrupt_page_or_sint;    // 16: < 5.0 interrupt page GPA; >= 5.0 u8 msg_sint + padding
    uint64_t monitor_page1;             // 24
    uint64_t monitor_page2;             // 32
};
ENL_WIRE(InitiateContact, 40);

// struct vmbus_channel_version_response
struct VersionResponse {
    MessageHeader header;       // 0
    uint8_t version_supported;  // 8
    uint8_t connection_state;   // 9
    uint16_t padding;           // 10
    uint32_t msg_conn_id;       // 12
};
ENL_WIRE(VersionResponse, 16);

// struct vmbus_channel_offer_channel (with struct vmbus_channel_offer inlined)
struct OfferChannel {
    MessageHeader header;       // 0
    Guid if_type;               // 8
    Guid if_instance;           // 24
    uint8_t reserved[16];       // 40: reserved1, reserved2 (u64 each)
    uint16_t chn_flags;         // 56
    uint16_t mmio_megabytes;    // 58
    uint8_t user_def[120];      // 60: std.user_def, or pipe.{pipe_mode, user_def[116]}
    uint16_t sub_channel_index; // 180
    uint16_t reserved3;         // 182
    uint32_t child_relid;       // 184
    uint8_t monitorid;          // 188
    uint8_t monitor_allocated;  // 189, bit 0; the other bits reserved
    uint16_t is_dedicated_interrupt;  // 190, bit 0
    uint32_t connection_id;     // 192
};
ENL_WIRE(OfferChannel, 196);
ENL_WIRE_OFFSET(OfferChannel, sub_channel_index, 180);
ENL_WIRE_OFFSET(OfferChannel, child_relid, 184);
ENL_WIRE_OFFSET(OfferChannel, connection_id, 192);

inline constexpr uint16_t kChannelFlagTlnpiProvider = 0x2000;  // hv_sock

struct RescindOffer {
    MessageHeader header;
    uint32_t child_relid;
};
ENL_WIRE(RescindOffer, 12);

// struct vmbus_channel_open_channel
struct OpenChannel {
    MessageHeader header;                       // 0
    uint32_t child_relid;                       // 8
    uint32_t openid;                            // 12
    uint32_t ringbuffer_gpadl;                  // 16
    uint32_t target_vp;                         // 20
    uint32_t downstream_ringbuffer_pageoffset;  // 24
    uint8_t userdata[120];                      // 28
};
ENL_WIRE(OpenChannel, 148);

struct OpenResult {
    MessageHeader header;  // 0
    uint32_t child_relid;  // 8
    uint32_t openid;       // 12
    uint32_t status;       // 16
};
ENL_WIRE(OpenResult, 20);

struct CloseChannel {
    MessageHeader header;
    uint32_t child_relid;
};
ENL_WIRE(CloseChannel, 12);

// struct vmbus_channel_gpadl_header, with its single gpa_range header inlined.
struct GpadlHeader {
    MessageHeader header;   // 0
    uint32_t child_relid;   // 8
    uint32_t gpadl;         // 12
    uint16_t range_buflen;  // 16
    uint16_t rangecount;    // 18
    uint32_t byte_count;    // 20: first range
    uint32_t byte_offset;   // 24
    // uint64_t pfn[] follows at 28
};
ENL_WIRE(GpadlHeader, 28);

struct GpadlBody {
    MessageHeader header;  // 0
    uint32_t msgnumber;    // 8
    uint32_t gpadl;        // 12
    // uint64_t pfn[] follows at 16
};
ENL_WIRE(GpadlBody, 16);

struct GpadlCreated {
    MessageHeader header;      // 0
    uint32_t child_relid;      // 8
    uint32_t gpadl;            // 12
    uint32_t creation_status;  // 16
};
ENL_WIRE(GpadlCreated, 20);

struct GpadlTeardown {
    MessageHeader header;  // 0
    uint32_t child_relid;  // 8
    uint32_t gpadl;        // 12
};
ENL_WIRE(GpadlTeardown, 16);

struct GpadlTorndown {
    MessageHeader header;
    uint32_t gpadl;
};
ENL_WIRE(GpadlTorndown, 12);

struct RelidReleased {
    MessageHeader header;
    uint32_t child_relid;
};
ENL_WIRE(RelidReleased, 12);

struct ModifyChannel {
    MessageHeader header;  // 0
    uint32_t child_relid;  // 8
    uint32_t target_vp;    // 12
};
ENL_WIRE(ModifyChannel, 16);

struct ModifyChannelResponse {
    MessageHeader header;  // 0
    uint32_t child_relid;  // 8
    uint32_t status;       // 12
};
ENL_WIRE(ModifyChannelResponse, 16);

// struct vmbus_channel_tl_connect_request
struct TlConnectRequest {
    MessageHeader header;    // 0
    Guid guest_endpoint_id;  // 8
    Guid host_service_id;    // 24
};
ENL_WIRE(TlConnectRequest, 40);

}  // namespace enlighten::vmbus
