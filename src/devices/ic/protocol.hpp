// Integration-services wire formats (Linux include/linux/hyperv.h "ICMSG" definitions and
// include/uapi/linux/hyperv.h for KVP and file copy; drivers/hv/hv_util.c, hv_kvp.c, hv_fcopy.c).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/wire.hpp"

namespace enlighten::ic {

// struct vmbuspipe_hdr
struct PipeHeader {
    uint32_t flags;
    uint32_t msgsize;
};
ENL_WIRE(PipeHeader, 8);

struct IcVersion {
    uint16_t major;
    uint16_t minor;
    friend bool operator==(const IcVersion&, const IcVersion&) = default;
};
ENL_WIRE(IcVersion, 4);
constexpr IcVersion ic_version(uint32_t v) { return {static_cast<uint16_t>(v >> 16), static_cast<uint16_t>(v & 0xffff)}; }
constexpr uint32_t ic_version_value(IcVersion v) { return (uint32_t{v.major} << 16) | v.minor; }

// struct icmsg_hdr (packed in Linux, and here)
struct __attribute__((packed)) IcMsgHeader {
    IcVersion icverframe;   // 0
    uint16_t icmsgtype;     // 4
    IcVersion icvermsg;     // 6
    uint16_t icmsgsize;     // 10
    uint32_t status;        // 12
    uint8_t ictransaction_id;  // 16
    uint8_t icflags;        // 17
    uint8_t reserved[2];    // 18
};
ENL_WIRE(IcMsgHeader, 20);
ENL_WIRE_OFFSET(IcMsgHeader, status, 12);
ENL_WIRE_OFFSET(IcMsgHeader, ictransaction_id, 16);
inline constexpr size_t kIcHeaderSize = sizeof(PipeHeader) + sizeof(IcMsgHeader);  // ICMSG_HDR = 28

enum IcMsgType : uint16_t {
    kIcNegotiate = 0,
    kIcHeartbeat = 1,
    kIcKvpExchange = 2,
    kIcShutdown = 3,
    kIcTimeSync = 4,
    kIcVss = 5,
    kIcFcopy = 7,
};
inline constexpr uint8_t kIcFlagTransaction = 1;
inline constexpr uint8_t kIcFlagRequest = 2;
inline constexpr uint8_t kIcFlagResponse = 4;

inline constexpr uint32_t kHvSOk = 0x00000000;
inline constexpr uint32_t kHvEFail = 0x80004005;
inline constexpr uint32_t kHvSCont = 0x80070103;
inline constexpr uint32_t kHvErrorAlreadyExists = 0x80070050;
inline constexpr uint32_t kHvErrorDiskFull = 0x80070070;

// struct icmsg_negotiate (versions follow: framework ones, then message ones)
struct IcNegotiate {
    uint16_t icframe_vercnt;
    uint16_t icmsg_vercnt;
    uint32_t reserved;
};
ENL_WIRE(IcNegotiate, 8);
inline constexpr uint16_t kIcMaxVersionCount = 100;  // IC_VERSION_NEGOTIATION_MAX_VER_COUNT

// struct heartbeat_msg_data
struct HeartbeatMsg {
    uint64_t seq_num;
    uint32_t reserved[8];
};
ENL_WIRE(HeartbeatMsg, 40);

// struct shutdown_msg_data
struct ShutdownMsg {
    uint32_t reason_code;
    uint32_t timeout_seconds;
    uint32_t flags;  // 0/1 shut down, 2/3 reboot, 4/5 hibernate (bit 0: forced)
    uint8_t display_message[2048];
};
ENL_WIRE(ShutdownMsg, 2060);

inline constexpr uint8_t kTimeSyncProbe = 0;
inline constexpr uint8_t kTimeSyncSync = 1;
inline constexpr uint8_t kTimeSyncSample = 2;
// 100 ns units between 1601-01-01 (Windows epoch) and 1970-01-01.
inline constexpr uint64_t kWindowsEpochDelta = 116444736000000000ULL;

// struct ictimesync_data (versions < 4)
struct __attribute__((packed)) TimeSyncData {
    uint64_t parenttime;
    uint64_t childtime;
    uint64_t roundtriptime;
    uint8_t flags;
};
ENL_WIRE(TimeSyncData, 25);

// struct ictimesync_ref_data (version 4)
struct __attribute__((packed)) TimeSyncRefData {
    uint64_t parenttime;
    uint64_t vmreferencetime;
    uint8_t flags;
    uint8_t leapflags;
    uint8_t stratum;
    uint8_t reserved[3];
};
ENL_WIRE(TimeSyncRefData, 22);

// KVP (include/uapi/linux/hyperv.h). Keys and values travel as UTF-16LE with a NUL,
// sizes in bytes including it.
inline constexpr size_t kKvpMaxKeySize = 512;
inline constexpr size_t kKvpMaxValueSize = 2048;
enum KvpOp : uint8_t { kKvpGet = 0, kKvpSet = 1, kKvpDelete = 2, kKvpEnumerate = 3 };
inline constexpr uint32_t kKvpRegSz = 1;
// The guest's AUTO pool (enum hv_kvp_exchg_pool): items made by ENUMERATE alone.
inline constexpr uint8_t kKvpPoolAuto = 2;

struct KvpHeader {
    uint8_t operation;
    uint8_t pool;
    uint16_t pad;
};
ENL_WIRE(KvpHeader, 4);

// struct hv_kvp_exchg_msg_value
struct __attribute__((packed)) KvpValue {
    uint32_t value_type;
    uint32_t key_size;
    uint32_t value_size;
    uint8_t key[kKvpMaxKeySize];
    uint8_t value[kKvpMaxValueSize];
};
ENL_WIRE(KvpValue, 2572);
ENL_WIRE_OFFSET(KvpValue, key, 12);
ENL_WIRE_OFFSET(KvpValue, value, 524);

// struct hv_kvp_msg with the enumerate body, the largest we use: header, index, value.
// Get and set use the same layout without the index (hv_kvp_msg_get/set start with the
// value); delete is {key_size, key}.
struct __attribute__((packed)) KvpMessage {
    KvpHeader header;  // 0
    union __attribute__((packed)) {
        struct __attribute__((packed)) {
            uint32_t index;
            KvpValue data;
        } enumerate;
        KvpValue data;  // get, set
        struct __attribute__((packed)) {
            uint32_t key_size;
            uint8_t key[kKvpMaxKeySize];
        } del;
    } body;
};
ENL_WIRE(KvpMessage, 4 + 4 + 2572);
ENL_WIRE_OFFSET(KvpMessage, body, 4);

// File copy (include/uapi/linux/hyperv.h: hv_fcopy_hdr, hv_start_fcopy, hv_do_fcopy).
enum FcopyOp : uint32_t { kFcopyStart = 0, kFcopyWrite = 1, kFcopyComplete = 2, kFcopyCancel = 3 };
inline constexpr uint32_t kFcopyOverwrite = 0x1;   // OVER_WRITE
inline constexpr uint32_t kFcopyCreatePath = 0x2;  // CREATE_PATH
inline constexpr size_t kFcopyMaxPath = 260;       // W_MAX_PATH, UTF-16 code units with the NUL
inline constexpr size_t kFcopyDataFragment = 6144; // DATA_FRAGMENT: the most one WRITE_TO_FILE carries

struct __attribute__((packed)) FcopyHeader {
    uint32_t operation;
    uint8_t service_id0[16];  // unused
    uint8_t service_id1[16];  // unused
};
ENL_WIRE(FcopyHeader, 36);

struct __attribute__((packed)) FcopyStart {
    FcopyHeader hdr;
    uint16_t file_name[kFcopyMaxPath];  // UTF-16LE, NUL-terminated
    uint16_t path_name[kFcopyMaxPath];  // the directory, UTF-16LE, NUL-terminated
    uint32_t copy_flags;
    uint64_t file_size;
};
ENL_WIRE(FcopyStart, 1088);
ENL_WIRE_OFFSET(FcopyStart, path_name, 556);
ENL_WIRE_OFFSET(FcopyStart, copy_flags, 1076);

struct __attribute__((packed)) FcopyWrite {
    FcopyHeader hdr;
    uint32_t pad;
    uint64_t offset;
    uint32_t size;
    uint8_t data[kFcopyDataFragment];
};
ENL_WIRE(FcopyWrite, 6196);
ENL_WIRE_OFFSET(FcopyWrite, offset, 40);
ENL_WIRE_OFFSET(FcopyWrite, data, 52);

}  // namespace enlighten::ic
