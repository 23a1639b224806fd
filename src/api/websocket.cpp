#include "api/websocket.hpp"

#include <nettle/base64.h>
#include <nettle/sha1.h>

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace enlighten::api {

namespace {

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
constexpr size_t kMaxControl = 125;

bool is_control(WsOpcode op) { return (static_cast<uint8_t>(op) & 0x8) != 0; }

}  // namespace

std::optional<std::string> ws_accept_key(std::string_view client_key) {
    // The key is the base64 of 16 random bytes: 24 characters, ending in "==".
    if (client_key.size() != 24) return std::nullopt;
    base64_decode_ctx dec;
    nettle_base64_decode_init(&dec);
    std::array<uint8_t, BASE64_DECODE_LENGTH(24)> raw{};
    size_t raw_len = raw.size();
    if (nettle_base64_decode_update(&dec, &raw_len, raw.data(), client_key.size(),
                                    reinterpret_cast<const char*>(client_key.data())) != 1 ||
        nettle_base64_decode_final(&dec) != 1 || raw_len != 16) {
        return std::nullopt;
    }
    sha1_ctx sha;
    nettle_sha1_init(&sha);
    nettle_sha1_update(&sha, client_key.size(), reinterpret_cast<const uint8_t*>(client_key.data()));
    nettle_sha1_update(&sha, kGuid.size(), reinterpret_cast<const uint8_t*>(kGuid.data()));
    std::array<uint8_t, SHA1_DIGEST_SIZE> digest{};
    nettle_sha1_digest(&sha, digest.size(), digest.data());
    std::string out(BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE), '\0');
    nettle_base64_encode_raw(out.data(), digest.size(), digest.data());
    return out;
}

std::string ws_frame(WsOpcode opcode, std::string_view payload) {
    if (is_control(opcode)) payload = payload.substr(0, kMaxControl);
    std::string f;
    f.reserve(payload.size() + 10);
    f.push_back(static_cast<char>(0x80 | static_cast<uint8_t>(opcode)));
    const uint64_t n = payload.size();
    if (n < 126) {
        f.push_back(static_cast<char>(n));
    } else if (n <= 0xffff) {
        f.push_back(static_cast<char>(126));
        f.push_back(static_cast<char>(n >> 8));
        f.push_back(static_cast<char>(n & 0xff));
    } else {
        f.push_back(static_cast<char>(127));
        for (int shift = 56; shift >= 0; shift -= 8) f.push_back(static_cast<char>((n >> shift) & 0xff));
    }
    f.append(payload);
    return f;
}

std::string ws_close_frame(uint16_t code) {
    const char body[2] = {static_cast<char>(code >> 8), static_cast<char>(code & 0xff)};
    return ws_frame(WsOpcode::Close, std::string_view(body, 2));
}

void WsDecoder::fail(WsInput& out, uint16_t code, std::string_view why) {
    done_ = true;
    out.error = code;
    out.error_text = std::string(why);
}

// The header (and extended length, and mask) are complete: check the frame as a whole.
void WsDecoder::begin_payload(WsInput& out) {
    if (is_control(opcode_)) {
        if (!fin_) return fail(out, kWsProtocolError, "a fragmented control frame");
        if (remaining_ > kMaxControl) return fail(out, kWsProtocolError, "a control frame longer than 125 bytes");
        control_.clear();
    } else if (opcode_ == WsOpcode::Continuation) {
        if (!in_message_) return fail(out, kWsProtocolError, "a continuation frame outside a message");
    } else {
        if (in_message_) return fail(out, kWsProtocolError, "a new message before the last one's final frame");
        if (opcode_ == WsOpcode::Text) return fail(out, kWsUnsupportedData, "a text message (the console is binary)");
        in_message_ = true;
    }
    mask_pos_ = 0;
    state_ = State::Payload;
    if (remaining_ == 0) end_frame(out);
}

void WsDecoder::end_frame(WsInput& out) {
    state_ = State::Header;
    header_have_ = 0;
    switch (opcode_) {
        case WsOpcode::Ping: out.pings.push_back(control_); break;
        case WsOpcode::Pong: break;
        case WsOpcode::Close:
            done_ = true;
            out.close = true;
            if (control_.size() == 1) return fail(out, kWsProtocolError, "a close frame with a 1-byte body");
            if (control_.size() >= 2)
                out.close_code = static_cast<uint16_t>((static_cast<uint8_t>(control_[0]) << 8) |
                                                       static_cast<uint8_t>(control_[1]));
            break;
        default:
            if (fin_) in_message_ = false;
            break;
    }
}

void WsDecoder::feed(std::string_view bytes, WsInput& out) {
    size_t i = 0;
    while (i < bytes.size() && !done_) {
        const auto b = static_cast<uint8_t>(bytes[i]);
        switch (state_) {
            case State::Header: {
                header_[header_have_++] = b;
                ++i;
                if (header_have_ < 2) break;
                fin_ = (header_[0] & 0x80) != 0;
                if ((header_[0] & 0x70) != 0) return fail(out, kWsProtocolError, "reserved bits set (no extension was agreed)");
                const uint8_t op = header_[0] & 0x0f;
                if (op != 0 && op != 1 && op != 2 && op != 8 && op != 9 && op != 10)
                    return fail(out, kWsProtocolError, fmt::format("unknown opcode {}", op));
                opcode_ = static_cast<WsOpcode>(op);
                if ((header_[1] & 0x80) == 0) return fail(out, kWsProtocolError, "an unmasked frame from the client");
                const uint8_t len7 = header_[1] & 0x7f;
                mask_have_ = 0;
                if (len7 < 126) {
                    remaining_ = len7;
                    state_ = State::Mask;
                } else {
                    ext_need_ = len7 == 126 ? 2 : 8;
                    ext_have_ = 0;
                    state_ = State::ExtendedLength;
                }
                break;
            }
            case State::ExtendedLength: {
                ext_[ext_have_++] = b;
                ++i;
                if (ext_have_ < ext_need_) break;
                uint64_t n = 0;
                for (size_t k = 0; k < ext_need_; ++k) n = (n << 8) | ext_[k];
                if (ext_need_ == 8 && (n >> 63) != 0) return fail(out, kWsProtocolError, "a 64-bit length with its top bit set");
                remaining_ = n;
                state_ = State::Mask;
                break;
            }
            case State::Mask: {
                mask_[mask_have_++] = b;
                ++i;
                if (mask_have_ == 4) begin_payload(out);
                break;
            }
            case State::Payload: {
                const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, bytes.size() - i));
                std::string& sink = is_control(opcode_) ? control_ : out.data;
                const size_t at = sink.size();
                sink.append(bytes.substr(i, take));
                for (size_t k = 0; k < take; ++k) sink[at + k] = static_cast<char>(sink[at + k] ^ mask_[(mask_pos_ + k) & 3]);
                mask_pos_ += take;
                remaining_ -= take;
                i += take;
                if (remaining_ == 0) end_frame(out);
                break;
            }
        }
    }
}

}  // namespace enlighten::api
