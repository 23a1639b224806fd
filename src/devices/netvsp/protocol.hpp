// NVSP and RNDIS as Linux's hv_netvsc speaks them (contract-network.md §2, §3, §5; Linux
// drivers/net/hyperv/hyperv_net.h and include/linux/rndis.h of Debian's 6.1 tree). Wire
// structs with their sizes asserted; all fields little-endian.
//
// Threads: constants and plain structs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.hpp"

namespace enlighten::netvsp {

// ---------------------------------------------------------------------------- VMBus offer

// HV_NIC_GUID (include/linux/hyperv.h)
inline constexpr const char* kNicClass = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
// NETVSC_MAX_PKT_SIZE = 24 + 562*8 + 40 + 64 (hyperv_net.h): the longest packet to the guest.
inline constexpr uint32_t kMaxPacketToGuest = 4624;

// ---------------------------------------------------------------------------- NVSP (§2)

namespace nvsp {
inline constexpr uint32_t kInit = 1;
inline constexpr uint32_t kInitComplete = 2;
inline constexpr uint32_t kSendNdisVersion = 100;
inline constexpr uint32_t kSendRecvBuf = 101;
inline constexpr uint32_t kSendRecvBufComplete = 102;
inline constexpr uint32_t kRevokeRecvBuf = 103;
inline constexpr uint32_t kSendSendBuf = 104;
inline constexpr uint32_t kSendSendBufComplete = 105;
inline constexpr uint32_t kRevokeSendBuf = 106;
inline constexpr uint32_t kSendRndisPkt = 107;
inline constexpr uint32_t kSendRndisPktComplete = 108;
inline constexpr uint32_t kSendNdisConfig = 125;
inline constexpr uint32_t kSendVfAssociation = 128;
inline constexpr uint32_t kSwitchDataPath = 129;
inline constexpr uint32_t kSubchannel = 133;
inline constexpr uint32_t kSendIndirectionTable = 134;

// NVSP_STAT_* (hyperv_net.h)
inline constexpr uint32_t kStatSuccess = 1;
inline constexpr uint32_t kStatFail = 2;
inline constexpr uint32_t kStatProtocolTooNew = 3;
inline constexpr uint32_t kStatProtocolTooOld = 4;
inline constexpr uint32_t kStatInvalidRndis = 5;

// NVSP_PROTOCOL_VERSION_* the 6.1 guest tries, highest first (netvsc.c negotiate_nvsp_ver).
inline constexpr uint32_t kVersion61 = 0x60001;
inline constexpr uint32_t kVersion6 = 0x60000;
inline constexpr uint32_t kVersion5 = 0x50000;
inline constexpr uint32_t kVersion4 = 0x40000;
inline constexpr uint32_t kVersion2 = 0x30002;
inline constexpr uint32_t kVersion1 = 0x2;

inline constexpr uint16_t kRecvBufId = 0xCAFE;     // NETVSC_RECEIVE_BUFFER_ID
inline constexpr uint32_t kNoSection = 0xFFFFFFFF;  // NETVSC_INVALID_INDEX
inline constexpr uint32_t kChannelData = 0;
inline constexpr uint32_t kChannelControl = 1;
inline constexpr uint32_t kSubchannelAllocate = 1;  // NVSP_SUBCHANNEL_ALLOCATE
// VMBUS_RQST_ID_NO_RESPONSE (include/linux/hyperv.h): never completed.
inline constexpr uint64_t kNoResponseId = 0xFFFFFFFFFFFFFFFDULL;
}  // namespace nvsp

// struct nvsp_message: a 4-byte type and a 36-byte union; the guest always sends 40 bytes.
struct NvspMessage {
    uint32_t msg_type;  // 0
    uint8_t body[36];   // 4
};
ENL_WIRE(NvspMessage, 40);

// nvsp_message_init: INIT (1) and INIT_COMPLETE (2) share the first words.
struct NvspInit {
    uint32_t msg_type;          // 0
    uint32_t min_protocol_ver;  // 4 (INIT_COMPLETE: negotiated_protocol_ver)
    uint32_t max_protocol_ver;  // 8 (INIT_COMPLETE: max_mdl_chain_len)
    uint32_t status;            // 12 (INIT_COMPLETE only)
};
ENL_WIRE(NvspInit, 16);

// nvsp_1_message_send_ndis_version (100)
struct NvspNdisVersion {
    uint32_t msg_type;
    uint32_t major;  // 4
    uint32_t minor;  // 8
};
ENL_WIRE(NvspNdisVersion, 12);

// nvsp_1_message_send_receive_buffer (101) / send_send_buffer (104)
struct NvspSendBuffer {
    uint32_t msg_type;
    uint32_t gpadl_handle;  // 4
    uint16_t id;            // 8
    uint16_t pad;
};
ENL_WIRE(NvspSendBuffer, 12);

// nvsp_1_receive_buffer_section
struct NvspRecvSection {
    uint32_t offset;          // 0
    uint32_t sub_alloc_size;  // 4
    uint32_t num_sub_allocs;  // 8
    uint32_t end_offset;      // 12
};
ENL_WIRE(NvspRecvSection, 16);

// nvsp_1_message_send_receive_buffer_complete (102)
struct NvspRecvBufComplete {
    uint32_t msg_type;
    uint32_t status;        // 4
    uint32_t num_sections;  // 8
    NvspRecvSection section;  // 12
};
ENL_WIRE(NvspRecvBufComplete, 28);

// nvsp_1_message_send_send_buffer_complete (105)
struct NvspSendBufComplete {
    uint32_t msg_type;
    uint32_t status;        // 4
    uint32_t section_size;  // 8
};
ENL_WIRE(NvspSendBufComplete, 12);

// nvsp_1_message_revoke_*_buffer (103, 106)
struct NvspRevoke {
    uint32_t msg_type;
    uint16_t id;  // 4
    uint16_t pad;
};
ENL_WIRE(NvspRevoke, 8);

// nvsp_1_message_send_rndis_packet (107)
struct NvspRndisPacket {
    uint32_t msg_type;
    uint32_t channel_type;   // 4: 0 data, 1 control
    uint32_t section_index;  // 8: kNoSection = none
    uint32_t section_size;   // 12
};
ENL_WIRE(NvspRndisPacket, 16);

// nvsp_1_message_send_rndis_packet_complete (108)
struct NvspRndisComplete {
    uint32_t msg_type;
    uint32_t status;  // 4
};
ENL_WIRE(NvspRndisComplete, 8);

// nvsp_2_message_send_ndis_config (125), packed
#pragma pack(push, 1)
struct NvspNdisConfig {
    uint32_t msg_type;
    uint32_t mtu;         // 4: interface MTU + 14
    uint32_t reserved;    // 8
    uint64_t capability;  // 12
};
#pragma pack(pop)
ENL_WIRE(NvspNdisConfig, 20);

// nvsp_5_subchannel_request / _complete (133)
struct NvspSubchannel {
    uint32_t msg_type;
    uint32_t op_or_status;     // 4: request op (1 = allocate); completion status
    uint32_t num_subchannels;  // 8
};
ENL_WIRE(NvspSubchannel, 12);

// nvsp_4_send_vf_association / switch_data_path (128, 129)
struct NvspSwitchDataPath {
    uint32_t msg_type;
    uint32_t active_datapath;  // 4
};
ENL_WIRE(NvspSwitchDataPath, 8);

// ---------------------------------------------------------------------------- RNDIS (§3)

namespace rndis {
inline constexpr uint32_t kMsgPacket = 1;
inline constexpr uint32_t kMsgInit = 2;
inline constexpr uint32_t kMsgHalt = 3;
inline constexpr uint32_t kMsgQuery = 4;
inline constexpr uint32_t kMsgSet = 5;
inline constexpr uint32_t kMsgReset = 6;
inline constexpr uint32_t kMsgIndicate = 7;
inline constexpr uint32_t kMsgKeepalive = 8;
inline constexpr uint32_t kCompletion = 0x80000000;
inline constexpr uint32_t kMsgInitC = kMsgInit | kCompletion;
inline constexpr uint32_t kMsgQueryC = kMsgQuery | kCompletion;
inline constexpr uint32_t kMsgSetC = kMsgSet | kCompletion;
inline constexpr uint32_t kMsgResetC = kMsgReset | kCompletion;
inline constexpr uint32_t kMsgKeepaliveC = kMsgKeepalive | kCompletion;

// RNDIS_STATUS_* (include/linux/rndis.h)
inline constexpr uint32_t kStatusSuccess = 0;
inline constexpr uint32_t kStatusNotSupported = 0xC00000BB;
inline constexpr uint32_t kStatusInvalidLength = 0xC0010014;
inline constexpr uint32_t kStatusInvalidData = 0xC0010015;
inline constexpr uint32_t kStatusMediaConnect = 0x4001000B;
inline constexpr uint32_t kStatusMediaDisconnect = 0x4001000C;

// OIDs (§3.3)
inline constexpr uint32_t kOidMaxFrameSize = 0x00010106;
inline constexpr uint32_t kOidLinkSpeed = 0x00010107;
inline constexpr uint32_t kOidPacketFilter = 0x0001010E;
inline constexpr uint32_t kOidMediaConnectStatus = 0x00010114;
inline constexpr uint32_t kOidRssCapabilities = 0x00010203;
inline constexpr uint32_t kOidRssParameters = 0x00010204;
inline constexpr uint32_t kOidConfigParameter = 0x0001021B;
inline constexpr uint32_t kOidFriendlyName = 0x00020216;
inline constexpr uint32_t kOidPermanentAddress = 0x01010101;
inline constexpr uint32_t kOidCurrentAddress = 0x01010102;
inline constexpr uint32_t kOidOffloadParameters = 0xFC01020C;
inline constexpr uint32_t kOidOffloadHwCaps = 0xFC01020D;

// The guest's max response msg_len (rndis_filter_receive_response): 52 + 4096.
inline constexpr uint32_t kMaxResponse = 4148;
}  // namespace rndis

// rndis_message's header
struct RndisHeader {
    uint32_t msg_type;  // 0
    uint32_t msg_len;   // 4
};
ENL_WIRE(RndisHeader, 8);

// rndis_initialize_request (whole message)
struct RndisInit {
    RndisHeader hdr;
    uint32_t req_id;         // 8
    uint32_t major;          // 12
    uint32_t minor;          // 16
    uint32_t max_xfer_size;  // 20
};
ENL_WIRE(RndisInit, 24);

// rndis_initialize_complete
struct RndisInitComplete {
    RndisHeader hdr;
    uint32_t req_id;            // 8
    uint32_t status;            // 12
    uint32_t major;             // 16
    uint32_t minor;             // 20
    uint32_t dev_flags;         // 24
    uint32_t medium;            // 28
    uint32_t max_pkt_per_msg;   // 32
    uint32_t max_xfer_size;     // 36
    uint32_t pkt_align_factor;  // 40
    uint32_t af_list_offset;    // 44
    uint32_t af_list_size;      // 48
};
ENL_WIRE(RndisInitComplete, 52);

// rndis_query_request / rndis_set_request: info buffer offset counts from byte 8.
struct RndisQuery {
    RndisHeader hdr;
    uint32_t req_id;           // 8
    uint32_t oid;              // 12
    uint32_t info_buflen;      // 16
    uint32_t info_buf_offset;  // 20
    uint32_t dev_vc_handle;    // 24
};
ENL_WIRE(RndisQuery, 28);

// rndis_query_complete (+ data at 24)
struct RndisQueryComplete {
    RndisHeader hdr;
    uint32_t req_id;           // 8
    uint32_t status;           // 12
    uint32_t info_buflen;      // 16
    uint32_t info_buf_offset;  // 20: 16 (from byte 8), or 0 in the failure form
};
ENL_WIRE(RndisQueryComplete, 24);

// rndis_set_complete, rndis_keepalive_complete
struct RndisSetComplete {
    RndisHeader hdr;
    uint32_t req_id;  // 8
    uint32_t status;  // 12
};
ENL_WIRE(RndisSetComplete, 16);

// rndis_reset_complete
struct RndisResetComplete {
    RndisHeader hdr;
    uint32_t status;           // 8
    uint32_t addressing_reset;  // 12
};
ENL_WIRE(RndisResetComplete, 16);

// rndis_indicate_status
struct RndisIndicate {
    RndisHeader hdr;
    uint32_t status;             // 8
    uint32_t status_buflen;      // 12
    uint32_t status_buf_offset;  // 16
};
ENL_WIRE(RndisIndicate, 20);

// rndis_packet (whole header; offsets count from byte 8)
struct RndisPacket {
    RndisHeader hdr;
    uint32_t data_offset;          // 8
    uint32_t data_len;             // 12
    uint32_t oob_data_offset;      // 16
    uint32_t oob_data_len;         // 20
    uint32_t num_oob_data_elements;  // 24
    uint32_t ppi_offset;           // 28
    uint32_t ppi_len;              // 32
    uint32_t vc_handle;            // 36
    uint32_t reserved;             // 40
};
ENL_WIRE(RndisPacket, 44);
inline constexpr uint32_t kRndisPacketBody = 36;  // sizeof(RndisPacket) - 8: where PPIs start (from byte 8)

// rndis_per_packet_info
struct Ppi {
    uint32_t size;        // 0: header + payload
    uint32_t type;        // 4: bits 0-30 type, bit 31 internal
    uint32_t ppi_offset;  // 8: of the payload, from the PPI start
};
ENL_WIRE(Ppi, 12);

namespace ppi {
inline constexpr uint32_t kChecksum = 0;     // TCPIP_CHKSUM_PKTINFO
inline constexpr uint32_t kLso = 2;          // TCP_LARGESEND_PKTINFO
inline constexpr uint32_t kVlan = 6;         // IEEE_8021Q_INFO
inline constexpr uint32_t kHash = 8;         // NBL_HASH_VALUE
inline constexpr uint32_t kInternal = 1u << 31;
// TX checksum bits
inline constexpr uint32_t kTxIpv4 = 0x1, kTxIpv6 = 0x2, kTxTcp = 0x4, kTxUdp = 0x8, kTxIpHeader = 0x10;
// RX checksum bits
inline constexpr uint32_t kRxTcpOk = 0x8, kRxUdpOk = 0x10, kRxIpOk = 0x20;
}  // namespace ppi

// A PPI with a u32 payload, as the guest and the host write them (16 bytes, offset 12).
struct Ppi32 {
    Ppi hdr;
    uint32_t value;
};
ENL_WIRE(Ppi32, 16);

// ---------------------------------------------------------------------------- NDIS objects

// ndis_object_header
struct NdisObjectHeader {
    uint8_t type;
    uint8_t revision;
    uint16_t size;
};
ENL_WIRE(NdisObjectHeader, 4);

inline constexpr uint8_t kNdisOffloadType = 0xA7;
inline constexpr uint8_t kNdisOffloadParamsType = 0x80;
inline constexpr uint8_t kNdisRssCapsType = 0x88;
inline constexpr uint8_t kNdisRssParamsType = 0x89;

// struct ndis_offload (revision 3; hyperv_net.h), natural alignment.
struct NdisOffload {
    NdisObjectHeader header;  // 0
    // ndis_tcp_ip_checksum_offload
    uint32_t ip4_txenc, ip4_txcsum, ip4_rxenc, ip4_rxcsum;  // 4..
    uint32_t ip6_txenc, ip6_txcsum, ip6_rxenc, ip6_rxcsum;  // 20..
    // ndis_tcp_large_send_offload_v1
    uint32_t lsov1_encap, lsov1_maxsize, lsov1_minsegs, lsov1_opts;  // 36
    uint8_t ipsecv1[28];  // 52
    // ndis_tcp_large_send_offload_v2
    uint32_t lsov2_ip4_encap, lsov2_ip4_maxsz, lsov2_ip4_minsg;                // 80
    uint32_t lsov2_ip6_encap, lsov2_ip6_maxsz, lsov2_ip6_minsg, lsov2_ip6_opts;  // 92
    uint32_t flags;        // 108
    uint8_t ipsecv2[32];   // 112
    uint8_t rsc_ip4, rsc_ip6, rsc_pad[2];  // 144
    uint32_t gre_flags, gre_maxhdr;        // 148
};
ENL_WIRE(NdisOffload, 156);
ENL_WIRE_OFFSET(NdisOffload, lsov2_ip4_encap, 80);
ENL_WIRE_OFFSET(NdisOffload, lsov2_ip6_opts, 104);
ENL_WIRE_OFFSET(NdisOffload, rsc_ip4, 144);
inline constexpr uint16_t kNdisOffloadSizeRev1 = 112, kNdisOffloadSizeRev2 = 144, kNdisOffloadSizeRev3 = 156;
inline constexpr uint32_t kCsumAll = 0x55;       // TCP + UDP, with options (§3.4)
inline constexpr uint32_t kLsoEncap8023 = 2;
inline constexpr uint32_t kLsoMaxSize = 0xF53C;  // "same as vmswitch"

// struct ndis_offload_params (revision 3, 28 bytes; natural alignment)
struct NdisOffloadParams {
    NdisObjectHeader header;  // 0
    uint8_t ip_v4_csum, tcp_ip_v4_csum, udp_ip_v4_csum, tcp_ip_v6_csum, udp_ip_v6_csum;  // 4..8
    uint8_t lso_v1, ip_sec_v1, lso_v2_ipv4, lso_v2_ipv6;                                  // 9..12
    uint8_t tcp_connection_ip_v4, tcp_connection_ip_v6;                                   // 13, 14
    uint8_t pad;
    uint32_t flags;  // 16
    uint8_t ip_sec_v2, ip_sec_v2_ip_v4, rsc_ip_v4, rsc_ip_v6;  // 20..23
    uint8_t encapsulated_packet_task_offload, encapsulation_types;  // 24, 25
    uint8_t pad2[2];
};
ENL_WIRE(NdisOffloadParams, 28);
ENL_WIRE_OFFSET(NdisOffloadParams, lso_v2_ipv4, 11);
ENL_WIRE_OFFSET(NdisOffloadParams, rsc_ip_v4, 22);

// struct ndis_recv_scale_cap (packed, 18 bytes; the guest rejects any other length)
#pragma pack(push, 1)
struct NdisRssCaps {
    NdisObjectHeader header;       // 0
    uint32_t cap_flag;             // 4
    uint32_t num_int_msg;          // 8
    uint32_t num_recv_que;         // 12
    uint16_t num_indirect_tabent;  // 16
};
#pragma pack(pop)
ENL_WIRE(NdisRssCaps, 18);

// struct ndis_recv_scale_param (40 bytes, natural alignment)
struct NdisRssParams {
    NdisObjectHeader header;       // 0
    uint16_t flag;                 // 4
    uint16_t base_cpu_number;      // 6
    uint32_t hashinfo;             // 8
    uint16_t indirect_tabsize;     // 12: bytes
    uint16_t pad;
    uint32_t indirect_taboffset;   // 16: from the struct's start
    uint16_t hashkey_size;         // 20
    uint16_t pad2;
    uint32_t hashkey_offset;       // 24
    uint32_t processor_masks_offset, num_processor_masks, processor_masks_entry_size;  // 28..36
};
ENL_WIRE(NdisRssParams, 40);
ENL_WIRE_OFFSET(NdisRssParams, hashkey_offset, 24);
inline constexpr uint16_t kRssFlagDisable = 0x10;  // NDIS_RSS_PARAM_FLAG_DISABLE_RSS
inline constexpr uint32_t kRssHashToeplitz = 0x1, kRssHashIpv4 = 0x100, kRssHashTcpIpv4 = 0x200,
                          kRssHashIpv6 = 0x400, kRssHashTcpIpv6 = 0x1000;
inline constexpr uint32_t kRssKeySize = 40;
inline constexpr uint32_t kRssMaxEntries = 256;
inline constexpr uint16_t kRssTableEntries = 128;  // what the host advertises

}  // namespace enlighten::netvsp
