#include "devices/balloon/message.hpp"

#include <cstring>

namespace enlighten::balloon {

const char* to_string(MsgType t) {
    switch (t) {
        case MsgType::Error: return "ERROR";
        case MsgType::VersionRequest: return "VERSION_REQUEST";
        case MsgType::VersionResponse: return "VERSION_RESPONSE";
        case MsgType::CapabilitiesReport: return "CAPABILITIES_REPORT";
        case MsgType::CapabilitiesResponse: return "CAPABILITIES_RESPONSE";
        case MsgType::StatusReport: return "STATUS_REPORT";
        case MsgType::BalloonRequest: return "BALLOON_REQUEST";
        case MsgType::BalloonResponse: return "BALLOON_RESPONSE";
        case MsgType::UnballoonRequest: return "UNBALLOON_REQUEST";
        case MsgType::UnballoonResponse: return "UNBALLOON_RESPONSE";
        case MsgType::HotAddRequest: return "HOT_ADD_REQUEST";
        case MsgType::HotAddResponse: return "HOT_ADD_RESPONSE";
        case MsgType::InfoMessage: return "INFO_MESSAGE";
    }
    return "unknown";
}

namespace {

template <typename T>
Result<T> fixed(std::span<const uint8_t> msg, MsgType type) {
    if (msg.size() < sizeof(T))
        return fail(Errc::Invalid, "{} of {} bytes, shorter than its {}", to_string(type), msg.size(), sizeof(T));
    return *read_prefix<T>(msg);
}

DmHeader header(MsgType type, size_t size, uint32_t trans_id) {
    return {static_cast<uint16_t>(type), static_cast<uint16_t>(size), trans_id};
}

}  // namespace

Result<GuestMessage> parse_guest_message(std::span<const uint8_t> payload) {
    const auto hdr = read_prefix<DmHeader>(payload);
    if (!hdr) return fail(Errc::Invalid, "a message of {} bytes, shorter than its header", payload.size());
    if (hdr->size < sizeof(DmHeader) || hdr->size > payload.size())
        return fail(Errc::Invalid, "header size {} outside [8, {}] (the packet's payload)", hdr->size, payload.size());
    // From here on only hdr.size bytes count (the packet may be padded to 8 bytes).
    const auto msg = payload.first(hdr->size);
    const auto type = static_cast<MsgType>(hdr->type);
    switch (type) {
        case MsgType::VersionRequest: {
            ENL_TRY(auto m, fixed<DmVersionRequest>(msg, type));
            return VersionRequest{hdr->trans_id, m.version, (m.last_attempt & 1) != 0};
        }
        case MsgType::CapabilitiesReport: {
            ENL_TRY(auto m, fixed<DmCapabilities>(msg, type));
            return CapabilitiesReport{hdr->trans_id, (m.caps & kCapBalloon) != 0, (m.caps & kCapHotAdd) != 0,
                                      static_cast<uint32_t>((m.caps >> 2) & 0xf)};
        }
        case MsgType::StatusReport: {
            ENL_TRY(auto m, fixed<DmStatus>(msg, type));
            return StatusReport{hdr->trans_id, m.num_avail, m.num_committed};
        }
        case MsgType::BalloonResponse: {
            ENL_TRY(auto m, fixed<DmBalloonResponse>(msg, type));
            const uint32_t count = m.more >> 1;
            // Checked in 64 bits: a count near 2^31 must not wrap.
            if (count > kMaxRangesPerMessage || sizeof(DmBalloonResponse) + uint64_t{count} * 8 > msg.size())
                return fail(Errc::Invalid, "BALLOON_RESPONSE of {} bytes claims {} ranges", msg.size(), count);
            BalloonResponse r{hdr->trans_id, (m.more & 1) != 0, {}};
            r.ranges.reserve(count);
            for (uint32_t i = 0; i < count; ++i) {
                uint64_t v;
                std::memcpy(&v, msg.data() + sizeof(DmBalloonResponse) + 8 * i, 8);
                r.ranges.push_back(decode_range(v));
            }
            return r;
        }
        case MsgType::UnballoonResponse: return UnballoonResponse{hdr->trans_id};
        case MsgType::HotAddResponse: {
            ENL_TRY(auto m, fixed<DmHotAddResponse>(msg, type));
            return HotAddResponse{hdr->trans_id, m.page_count, m.result};
        }
        default: return fail(Errc::Unsupported, "message type {} ({}) is not one a guest sends", hdr->type, to_string(type));
    }
}

std::vector<uint8_t> make_version_response(uint32_t trans_id, bool accepted) {
    DmAccept m{header(MsgType::VersionResponse, sizeof(DmAccept), trans_id), accepted ? 1U : 0U};
    return {as_bytes(m).begin(), as_bytes(m).end()};
}

std::vector<uint8_t> make_capabilities_response(uint32_t trans_id, bool accepted) {
    DmAccept m{header(MsgType::CapabilitiesResponse, sizeof(DmAccept), trans_id), accepted ? 1U : 0U};
    return {as_bytes(m).begin(), as_bytes(m).end()};
}

std::vector<uint8_t> make_balloon_request(uint32_t trans_id, uint32_t pages) {
    DmBalloon m{header(MsgType::BalloonRequest, sizeof(DmBalloon), trans_id), pages, 0};
    return {as_bytes(m).begin(), as_bytes(m).end()};
}

std::vector<uint8_t> make_unballoon_request(uint32_t trans_id, std::span<const PageRange> ranges, bool more_pages) {
    const size_t n = std::min<size_t>(ranges.size(), kMaxRangesPerMessage);
    const size_t size = sizeof(DmUnballoonRequest) + 8 * n;
    ByteWriter w(size);
    w.put(DmUnballoonRequest{header(MsgType::UnballoonRequest, size, trans_id), more_pages ? 1U : 0U,
                             static_cast<uint32_t>(n)});
    for (size_t i = 0; i < n; ++i) w.put(encode_range(ranges[i]));
    return w.take();
}

std::vector<uint8_t> make_hot_add_request(uint32_t trans_id, PageRange range) {
    const uint64_t v = encode_range(range);
    DmHotAdd m{header(MsgType::HotAddRequest, sizeof(DmHotAdd), trans_id), v, v};
    return {as_bytes(m).begin(), as_bytes(m).end()};
}

std::vector<uint8_t> make_info_max_pages(uint32_t trans_id, uint64_t max_pages) {
    DmInfoMaxPages m{header(MsgType::InfoMessage, sizeof(DmInfoMaxPages), trans_id), 0, 16, 0, 8, max_pages};
    return {as_bytes(m).begin(), as_bytes(m).end()};
}

}  // namespace enlighten::balloon
