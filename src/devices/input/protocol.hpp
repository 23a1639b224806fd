// The Hyper-V synthetic keyboard and mouse protocols on the wire: Linux 6.1
// drivers/input/serio/hyperv-keyboard.c and drivers/hid/hid-hyperv.c;
// ../shared/contract-input-video.md §2 and §3 have the same tables with offsets. Every message
// is the payload of an in-band VMBus packet. The keyboard's messages start with a bare u32
// type; the mouse's with a pipe header and then a synthhid header.
//
// Threads: plain values.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "common/wire.hpp"

namespace enlighten::input {

// HV_KBD_GUID and HV_MOUSE_GUID (include/linux/hyperv.h).
inline constexpr const char* kKeyboardClassId = "f912ad6d-2b17-48ea-bd65-f927a61c7684";
inline constexpr const char* kMouseClassId = "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a";
// OpenVMM's instance GUIDs (contract-input-video §1).
inline constexpr const char* kKeyboardInstance = "d34b2567-b9b6-42b9-8778-0a4ec0b955bf";
inline constexpr const char* kMouseInstance = "58f75a6d-d949-4320-99e1-a2a2576d581c";

// The guest sends messages of at most 24 bytes (and OpenVMM reads into 64): anything
// longer than this, with its packet descriptor, fails the channel.
inline constexpr uint32_t kMaxGuestPacket = 64 + 16;

// ---- Keyboard ----

enum class KbdMsgType : uint32_t { ProtocolRequest = 1, ProtocolResponse = 2, Event = 3, LedIndicators = 4 };

// SYNTH_KBD_VERSION: 1.0, major in the high 16 bits.
inline constexpr uint32_t kKeyboardVersion = 0x00010000;
inline constexpr uint32_t kKbdProtocolAccepted = 1;  // PROTOCOL_ACCEPTED

// struct synth_kbd_keystroke info bits.
inline constexpr uint32_t kKbdInfoUnicode = 1U << 0;  // never sent: Linux would inject its low byte
inline constexpr uint32_t kKbdInfoBreak = 1U << 1;
inline constexpr uint32_t kKbdInfoE0 = 1U << 2;
inline constexpr uint32_t kKbdInfoE1 = 1U << 3;

struct KbdProtocolRequest {
    uint32_t type;     // 0: ProtocolRequest
    uint32_t version;  // 4
};
ENL_WIRE(KbdProtocolRequest, 8);

struct KbdProtocolResponse {
    uint32_t type;    // 0: ProtocolResponse
    uint32_t status;  // 4: bit 0 accepted
};
ENL_WIRE(KbdProtocolResponse, 8);

struct KbdEvent {
    uint32_t type;        // 0: Event
    uint16_t make_code;   // 4: a set-1 make code, 0x01-0x7F
    uint16_t reserved;    // 6
    uint32_t info;        // 8: kKbdInfo* bits
};
ENL_WIRE(KbdEvent, 12);

// Sent by Windows guests only (OpenVMM keyboard/protocol.rs).
struct KbdLedIndicators {
    uint32_t type;       // 0: LedIndicators
    uint16_t led_flags;  // 4
    uint16_t padding;    // 6
};
ENL_WIRE(KbdLedIndicators, 8);

// ---- Mouse ----

inline constexpr uint32_t kPipeMessageData = 1;  // PIPE_MESSAGE_DATA

enum class HidMsgType : uint32_t {
    ProtocolRequest = 0,
    ProtocolResponse = 1,
    InitialDeviceInfo = 2,
    InitialDeviceInfoAck = 3,
    InputReport = 4,
};

// SYNTHHID_INPUT_VERSION: 2.0, major in the high 16 bits.
inline constexpr uint32_t kMouseVersion = 0x00020000;

struct HidPipeHeader {
    uint32_t type;  // 0: kPipeMessageData
    uint32_t size;  // 4: the bytes after this header
};
ENL_WIRE(HidPipeHeader, 8);

struct HidHeader {
    uint32_t type;  // 0: HidMsgType
    uint32_t size;  // 4: the bytes after this header
};
ENL_WIRE(HidHeader, 8);

inline constexpr size_t kHidHeadersSize = sizeof(HidPipeHeader) + sizeof(HidHeader);

#pragma pack(push, 1)
// struct synthhid_protocol_response body: the pipe size must be 13 (the guest copies
// pipe.size + 11 bytes into a 24-byte struct).
struct HidProtocolResponseBody {
    uint32_t version_requested;  // 16: echoed
    uint8_t approved;            // 20
};
ENL_WIRE(HidProtocolResponseBody, 5);

// struct hv_input_dev_info.
struct HidDevInfo {
    uint32_t size;     // 0: 32 (the guest does not read it)
    uint16_t vendor;   // 4
    uint16_t product;  // 6
    uint16_t version;  // 8
    std::array<uint16_t, 11> reserved;
};
ENL_WIRE(HidDevInfo, 32);

// struct hid_descriptor (include/linux/hid.h) with one class descriptor.
struct HidDescriptor {
    uint8_t length;           // 0: bLength = 9
    uint8_t descriptor_type;  // 1: 0x21 (HID)
    uint16_t bcd_hid;         // 2: 0x0101
    uint8_t country;          // 4
    uint8_t num_descriptors;  // 5: 1
    uint8_t report_type;      // 6: 0x22 (report)
    uint16_t report_length;   // 7: the report descriptor's length
};
ENL_WIRE(HidDescriptor, 9);
#pragma pack(pop)

// The 7-byte report of kMouseReportDescriptor: buttons, X, Y (0..32767 absolute), wheel.
struct MouseReport {
    uint8_t buttons;  // bit 0 left, 1 right, 2 middle, 3 side, 4 extra
    uint8_t x_lo, x_hi, y_lo, y_hi, wheel_lo, wheel_hi;
};
ENL_WIRE(MouseReport, 7);

inline constexpr uint16_t kMouseVendor = 0x045e;   // Microsoft: hid-hyperv matches 045E:0621
inline constexpr uint16_t kMouseProduct = 0x0621;
inline constexpr uint16_t kMouseDeviceVersion = 0x0001;
inline constexpr uint16_t kMouseMaxCoordinate = 32767;

// An absolute pointer (a tablet, contract-input-video §3.4), so that a position on the screen
// maps 1:1 onto the guest's. HID 1.11 items, no report IDs:
inline constexpr std::array<uint8_t, 65> kMouseReportDescriptor{
    0x05, 0x01,              // Usage Page (Generic Desktop)
    0x09, 0x02,              // Usage (Mouse)
    0xa1, 0x01,              // Collection (Application)
    0x09, 0x01,              //   Usage (Pointer)
    0xa1, 0x00,              //   Collection (Physical)
    0x05, 0x09,              //     Usage Page (Button)
    0x19, 0x01,              //     Usage Minimum (1)
    0x29, 0x05,              //     Usage Maximum (5): byte 14 is 0x29, so Linux's SA-167 fix-up is a no-op
    0x15, 0x00,              //     Logical Minimum (0)
    0x25, 0x01,              //     Logical Maximum (1)
    0x95, 0x05,              //     Report Count (5)
    0x75, 0x01,              //     Report Size (1)
    0x81, 0x02,              //     Input (Data, Variable, Absolute): 5 buttons
    0x95, 0x01,              //     Report Count (1)
    0x75, 0x03,              //     Report Size (3)
    0x81, 0x01,              //     Input (Constant): padding
    0x05, 0x01,              //     Usage Page (Generic Desktop)
    0x09, 0x30,              //     Usage (X)
    0x09, 0x31,              //     Usage (Y)
    0x15, 0x00,              //     Logical Minimum (0)
    0x26, 0xff, 0x7f,        //     Logical Maximum (32767)
    0x75, 0x10,              //     Report Size (16)
    0x95, 0x02,              //     Report Count (2)
    0x81, 0x02,              //     Input (Data, Variable, Absolute): X, Y
    0x09, 0x38,              //     Usage (Wheel)
    0x16, 0x01, 0x80,        //     Logical Minimum (-32767)
    0x26, 0xff, 0x7f,        //     Logical Maximum (32767)
    0x75, 0x10,              //     Report Size (16)
    0x95, 0x01,              //     Report Count (1)
    0x81, 0x06,              //     Input (Data, Variable, Relative): wheel
    0xc0,                    //   End Collection
    0xc0,                    // End Collection
};
static_assert(kMouseReportDescriptor[14] == 0x29);

}  // namespace enlighten::input
