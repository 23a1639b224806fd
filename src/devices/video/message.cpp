#include "devices/video/message.hpp"

#include <algorithm>
#include <cstring>

namespace enlighten::video {

const char* to_string(MsgType t) {
    switch (t) {
        case MsgType::Error: return "ERROR";
        case MsgType::VersionRequest: return "VERSION_REQUEST";
        case MsgType::VersionResponse: return "VERSION_RESPONSE";
        case MsgType::VramLocation: return "VRAM_LOCATION";
        case MsgType::VramLocationAck: return "VRAM_LOCATION_ACK";
        case MsgType::SituationUpdate: return "SITUATION_UPDATE";
        case MsgType::SituationUpdateAck: return "SITUATION_UPDATE_ACK";
        case MsgType::PointerPosition: return "POINTER_POSITION";
        case MsgType::PointerShape: return "POINTER_SHAPE";
        case MsgType::FeatureChange: return "FEATURE_CHANGE";
        case MsgType::Dirt: return "DIRT";
        case MsgType::BiosInfoRequest: return "BIOS_INFO_REQUEST";
        case MsgType::BiosInfoResponse: return "BIOS_INFO_RESPONSE";
        case MsgType::ResolutionRequest: return "RESOLUTION_REQUEST";
        case MsgType::ResolutionResponse: return "RESOLUTION_RESPONSE";
    }
    return "unknown";
}

namespace {

template <typename T>
Result<T> fixed(std::span<const uint8_t> body, MsgType type) {
    if (body.size() < sizeof(T))
        return fail(Errc::Invalid, "{} with a body of {} bytes, shorter than its {}", to_string(type), body.size(),
                    sizeof(T));
    return *read_prefix<T>(body);
}

// The bytes a complete pointer shape needs: ARGB, or the monochrome AND and XOR masks.
uint64_t shape_bytes(const PointerShapeBody& s) {
    if (s.is_argb) return uint64_t{s.width} * s.height * 4;
    return uint64_t{(s.width + 7) / 8} * s.height * 2;
}

std::vector<uint8_t> message(MsgType type, std::span<const uint8_t> body) {
    const auto size = static_cast<uint32_t>(sizeof(MsgHeader) + body.size());
    ByteWriter w(kHeadersSize + body.size());
    w.put(PipeHeader{kPipeMessageData, size}).put(MsgHeader{static_cast<uint32_t>(type), size}).bytes(body);
    return w.take();
}

template <typename T>
std::vector<uint8_t> message(MsgType type, const T& body) {
    return message(type, as_bytes(body));
}

}  // namespace

Result<GuestMessage> parse_guest_message(std::span<const uint8_t> payload) {
    if (payload.size() < kHeadersSize)
        return fail(Errc::Invalid, "a message of {} bytes, shorter than its two headers", payload.size());
    const auto pipe = *read_prefix<PipeHeader>(payload);
    const auto hdr = *read_prefix<MsgHeader>(payload.subspan(sizeof(PipeHeader)));
    if (pipe.type != kPipeMessageData) return fail(Errc::Invalid, "pipe message type {}, not data", pipe.type);
    if (pipe.size > payload.size() - sizeof(PipeHeader))
        return fail(Errc::Invalid, "pipe size {} past the {} bytes that came", pipe.size, payload.size());
    if (hdr.size < sizeof(MsgHeader) || hdr.size > pipe.size)
        return fail(Errc::Invalid, "synthvid size {} outside [8, pipe size {}]", hdr.size, pipe.size);
    // Only hdr.size bytes count (the packet is padded to 8 bytes).
    const auto body = payload.subspan(kHeadersSize, hdr.size - sizeof(MsgHeader));
    const auto type = static_cast<MsgType>(hdr.type);
    switch (type) {
        case MsgType::VersionRequest: {
            ENL_TRY(auto m, fixed<VersionRequestBody>(body, type));
            return VersionRequest{m.version};
        }
        case MsgType::VramLocation: {
            ENL_TRY(auto m, fixed<VramLocationBody>(body, type));
            return VramLocation{m.user_ctx, m.is_vram_gpa_specified != 0, m.vram_gpa};
        }
        case MsgType::SituationUpdate: {
            ENL_TRY(auto m, fixed<SituationUpdateBody>(body, type));
            const size_t need = sizeof(SituationUpdateBody) + size_t{m.video_output_count} * sizeof(OutputSituation);
            if (body.size() < need)
                return fail(Errc::Invalid, "SITUATION_UPDATE with {} outputs in {} bytes (needs {})",
                            m.video_output_count, body.size(), need);
            SituationUpdate u{m.user_ctx, m.video_output_count, std::nullopt};
            if (m.video_output_count > 0) {
                const auto o = *read_prefix<OutputSituation>(body.subspan(sizeof(SituationUpdateBody)));
                u.output0 = OutputMode{o.active != 0, o.vram_offset, o.depth_bits, o.width, o.height, o.pitch};
            }
            return u;
        }
        case MsgType::PointerPosition: {
            ENL_TRY(auto m, fixed<PointerPositionBody>(body, type));
            return PointerPosition{m.is_visible != 0, m.video_output, m.x, m.y};
        }
        case MsgType::PointerShape: {
            ENL_TRY(auto m, fixed<PointerShapeBody>(body, type));
            // Copies: the packed fields are not aligned for fmt's references.
            const uint32_t w = m.width, h = m.height;
            if (w > kMaxCursor || h > kMaxCursor)
                return fail(Errc::Invalid, "POINTER_SHAPE of {}x{}, larger than {}x{}", w, h, kMaxCursor, kMaxCursor);
            // A shape in one message (part 0xFF) must carry all of its data; parts of a larger
            // one carry a piece each.
            const uint64_t data = body.size() - sizeof(PointerShapeBody);
            if (m.part_idx == 0xff && data < shape_bytes(m))
                return fail(Errc::Invalid, "POINTER_SHAPE {}x{} with {} bytes of data (needs {})", w, h, data,
                            shape_bytes(m));
            return PointerShape{m.part_idx, m.is_argb != 0, m.width, m.height, m.hot_x, m.hot_y};
        }
        case MsgType::Dirt: {
            ENL_TRY(auto m, fixed<DirtBody>(body, type));
            const size_t need = sizeof(DirtBody) + size_t{m.dirt_count} * sizeof(WireRect);
            if (body.size() < need)
                return fail(Errc::Invalid, "DIRT with {} rectangles in {} bytes (needs {})", m.dirt_count, body.size(),
                            need);
            Dirt d{m.video_output, {}};
            d.rects.reserve(m.dirt_count);
            for (size_t i = 0; i < m.dirt_count; ++i) {
                const auto r = *read_prefix<WireRect>(body.subspan(sizeof(DirtBody) + i * sizeof(WireRect)));
                d.rects.push_back({r.x1, r.y1, r.x2, r.y2});
            }
            return d;
        }
        case MsgType::ResolutionRequest: {
            ENL_TRY(auto m, fixed<ResolutionRequestBody>(body, type));
            return ResolutionRequest{m.maximum_resolution_count};
        }
        case MsgType::Error:
        case MsgType::VersionResponse:
        case MsgType::VramLocationAck:
        case MsgType::SituationUpdateAck:
        case MsgType::FeatureChange:
        case MsgType::BiosInfoRequest:
        case MsgType::BiosInfoResponse:
        case MsgType::ResolutionResponse:
            break;
    }
    return fail(Errc::Unsupported, "synthvid message type {} ({})", hdr.type, to_string(type));
}

std::vector<uint8_t> make_version_response(uint32_t version, bool accepted) {
    return message(MsgType::VersionResponse, VersionResponseBody{version, static_cast<uint8_t>(accepted ? 1 : 0), 1});
}

std::vector<uint8_t> make_vram_location_ack(uint64_t user_ctx) {
    return message(MsgType::VramLocationAck, VramLocationAckBody{user_ctx});
}

std::vector<uint8_t> make_situation_update_ack(uint64_t user_ctx) {
    return message(MsgType::SituationUpdateAck, SituationUpdateAckBody{user_ctx});
}

std::vector<uint8_t> make_feature_change(bool dirt, bool pointer_position, bool pointer_shape, bool situation) {
    return message(MsgType::FeatureChange,
                   FeatureChangeBody{static_cast<uint8_t>(dirt), static_cast<uint8_t>(pointer_position),
                                     static_cast<uint8_t>(pointer_shape), static_cast<uint8_t>(situation)});
}

std::vector<uint8_t> make_resolution_response(std::span<const ScreenSize> sizes, uint8_t max_count) {
    const size_t n = std::min({sizes.size(), size_t{max_count}, size_t{kMaxResolutions}});
    ResolutionResponseBody r{};
    r.resolution_count = static_cast<uint8_t>(n);
    r.default_resolution_index = 0;
    r.is_standard = 0;
    ByteWriter body(sizeof(r) + n * sizeof(ScreenSize));
    body.put(r);
    for (size_t i = 0; i < n; ++i) body.put(sizes[i]);
    return message(MsgType::ResolutionResponse, body.view());
}

}  // namespace enlighten::video
