// The storage VSP's wire protocol: vstor packets over VMBus (Linux drivers/scsi/storvsc_drv.c,
// all __packed there; sizes and offsets from contract-storage.md §3, checked against the tree).
//
// Threads: plain wire structs and constants.
#pragma once

#include <cstdint>

#include "common/wire.hpp"
#include "vmbus/protocol.hpp"

namespace enlighten::storvsp {

// Class GUIDs (include/linux/hyperv.h HV_SCSI_GUID, HV_IDE_GUID).
inline constexpr const char* kScsiClass = "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f";
inline constexpr const char* kIdeClass = "32412632-86cb-44a2-9b5c-50d1417354f5";

// enum vstor_packet_operation
enum Operation : uint32_t {
    kOpCompleteIo = 1,
    kOpRemoveDevice = 2,
    kOpExecuteSrb = 3,
    kOpResetLun = 4,
    kOpResetAdapter = 5,
    kOpResetBus = 6,
    kOpBeginInitialization = 7,
    kOpEndInitialization = 8,
    kOpQueryProtocolVersion = 9,
    kOpQueryProperties = 10,
    kOpEnumerateBus = 11,
    kOpFcHbaData = 12,
    kOpCreateSubChannels = 13,
};

// Protocol versions (major << 8 | minor) that Linux 6.1 tries, newest first (§4 step 2).
inline constexpr uint16_t kVersionWin10 = 0x0602;
inline constexpr uint16_t kVersionWin8_1 = 0x0600;
inline constexpr uint16_t kVersionWin8 = 0x0501;

inline constexpr uint32_t kRequestCompletionFlag = 1;

// NTSTATUS values the host puts in vstor_packet.status (OpenVMM's choices).
inline constexpr uint32_t kStatusSuccess = 0;
inline constexpr uint32_t kStatusRevisionMismatch = 0xC0000059;      // a version we do not speak
inline constexpr uint32_t kStatusInvalidParameter = 0xC000000D;      // CREATE_SUB_CHANNELS beyond the maximum
inline constexpr uint32_t kStatusInvalidDeviceState = 0xC0000184;    // an operation out of order or unknown
inline constexpr uint32_t kStatusIoDeviceError = 0xC0000185;         // an SRB that failed

// SRB status (srb_status), low 6 bits a code, 0x80 AUTOSENSE_VALID (§5).
inline constexpr uint8_t kSrbSuccess = 0x01;
inline constexpr uint8_t kSrbAborted = 0x02;
inline constexpr uint8_t kSrbError = 0x04;
inline constexpr uint8_t kSrbInvalidRequest = 0x06;
inline constexpr uint8_t kSrbDataOverrun = 0x12;
inline constexpr uint8_t kSrbInvalidLun = 0x20;
inline constexpr uint8_t kSrbAutosenseValid = 0x80;

// struct vmscsi_request (52 bytes: the post-Win8 layout; Linux 6.1 has no size delta).
struct ScsiRequest {
    uint16_t length;                // 0
    uint8_t srb_status;             // 2
    uint8_t scsi_status;            // 3
    uint8_t port_number;            // 4
    uint8_t path_id;                // 5
    uint8_t target_id;              // 6
    uint8_t lun;                    // 7
    uint8_t cdb_length;             // 8
    uint8_t sense_info_length;      // 9
    uint8_t data_in;                // 10: 0 write, 1 read, 2 no data (the CDB decides, not this)
    uint8_t reserved;               // 11
    uint32_t data_transfer_length;  // 12
    uint8_t cdb_or_sense[20];       // 16: the CDB in a request, sense data in a completion
    uint16_t reserve;               // 36
    uint8_t queue_tag;              // 38
    uint8_t queue_action;           // 39
    uint32_t srb_flags;             // 40
    uint32_t time_out_value;        // 44
    uint32_t queue_sort_key;        // 48
};
ENL_WIRE(ScsiRequest, 52);
ENL_WIRE_OFFSET(ScsiRequest, data_transfer_length, 12);
ENL_WIRE_OFFSET(ScsiRequest, cdb_or_sense, 16);
ENL_WIRE_OFFSET(ScsiRequest, srb_flags, 40);
inline constexpr uint32_t kMaxCdb = 16;
inline constexpr uint32_t kSenseBytes = 20;

// The QUERY_PROPERTIES answer (struct vmstorage_channel_properties), at packet offset 12.
struct ChannelProperties {
    uint32_t reserved;            // 12
    uint16_t max_channel_cnt;     // 16: sub-channels the host will create, at most
    uint16_t reserved1;           // 18
    uint32_t flags;               // 20: bit 0 STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
    uint32_t max_transfer_bytes;  // 24
    uint32_t reserved2[2];        // 28: u64 in Linux, unaligned there
};
ENL_WIRE(ChannelProperties, 24);
inline constexpr uint32_t kPropertyMultiChannel = 1;

// QUERY_PROTOCOL_VERSION's body (struct vmstorage_protocol_version), at packet offset 12.
struct ProtocolVersion {
    uint16_t major_minor;  // 12
    uint16_t revision;     // 14
};
ENL_WIRE(ProtocolVersion, 4);

// struct vstor_packet: 64 bytes, every request and every answer in Linux 6.1.
struct VstorPacket {
    uint32_t operation;  // 0
    uint32_t flags;      // 4
    uint32_t status;     // 8
    union Body {         // 12
        ScsiRequest srb;
        ChannelProperties properties;
        ProtocolVersion version;
        uint16_t sub_channel_count;
        uint8_t raw[52];
    } body;
};
ENL_WIRE(VstorPacket, 64);
ENL_WIRE_OFFSET(VstorPacket, body, 12);

// The guest driver's max_pkt_size (STORVSC_MAX_PKT_SIZE): a descriptor and one vstor packet.
// No packet the host writes may be longer (§1).
inline constexpr uint32_t kMaxPacketToGuest = 16 + sizeof(VstorPacket);

}  // namespace enlighten::storvsp
