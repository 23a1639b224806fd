// The server side of WebSocket (RFC 6455), as far as the web console needs it: the opening
// handshake's accept key, a decoder for what a client sends, and the frames a server sends.
// The web server (api/server.cpp) carries the console's RFB stream in binary messages
// (noVNC's "binary" subprotocol); the fuzzer feeds the decoder from memory.
//
//   WsDecoder in;
//   WsInput got;
//   in.feed(bytes, got);        // got.data: the payload bytes; got.pings; got.close / got.error
//   out += ws_frame(WsOpcode::Binary, payload);
//
// The client is hostile input. The decoder keeps no frame whole: payload bytes are unmasked
// as they arrive and appended to WsInput::data, so a frame of any length costs no memory of
// its own; control frames (at most 125 bytes, as the RFC says) are the only thing it buffers.
// A violation (an unmasked frame, reserved bits, an unknown opcode, a text message, a control
// frame that is fragmented or too long, a continuation out of place, a 64-bit length with its
// top bit set) ends the input with the close code to send.
//
// Threads: a decoder belongs to one thread at a time (the API server's I/O thread); nothing
// here takes a lock or blocks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace enlighten::api {

enum class WsOpcode : uint8_t { Continuation = 0, Text = 1, Binary = 2, Close = 8, Ping = 9, Pong = 10 };

// Close codes (RFC 6455 section 7.4.1) the server sends.
inline constexpr uint16_t kWsNormal = 1000;
inline constexpr uint16_t kWsGoingAway = 1001;
inline constexpr uint16_t kWsProtocolError = 1002;
inline constexpr uint16_t kWsUnsupportedData = 1003;

// Sec-WebSocket-Accept for a client's Sec-WebSocket-Key, or nullopt when the key is not the
// base64 of 16 bytes (the handshake is then refused with a 400).
std::optional<std::string> ws_accept_key(std::string_view client_key);

// A frame from the server (never masked, always final): at most 125 payload bytes for the
// control opcodes (longer ones are cut there).
std::string ws_frame(WsOpcode opcode, std::string_view payload);
// A close frame with its code (and no reason).
std::string ws_close_frame(uint16_t code);

// What one feed() found.
struct WsInput {
    std::string data;                // the payload bytes of binary messages, in order
    std::vector<std::string> pings;  // the payloads of pings, each to be answered with a pong
    bool close = false;              // the client sent a close frame: answer it and close
    uint16_t close_code = 0;         // its code (0 when it gave none)
    uint16_t error = 0;              // the client broke the protocol: close with this code
    std::string error_text;          // why, for the log
};

class WsDecoder {
public:
    // Decodes `bytes`, appending to `out`. After a close or an error everything more is
    // ignored (done() is true).
    void feed(std::string_view bytes, WsInput& out);
    [[nodiscard]] bool done() const { return done_; }

private:
    enum class State { Header, ExtendedLength, Mask, Payload };
    void fail(WsInput& out, uint16_t code, std::string_view why);
    void begin_payload(WsInput& out);
    void end_frame(WsInput& out);

    State state_ = State::Header;
    bool done_ = false;
    uint8_t header_[2] = {};
    size_t header_have_ = 0;
    uint8_t ext_[8] = {};
    size_t ext_need_ = 0, ext_have_ = 0;
    uint8_t mask_[4] = {};
    size_t mask_have_ = 0;
    uint64_t remaining_ = 0;  // payload bytes of the current frame still to come
    uint64_t mask_pos_ = 0;   // payload bytes of the current frame seen so far (for the mask)
    bool fin_ = false;
    WsOpcode opcode_ = WsOpcode::Continuation;
    bool in_message_ = false;  // a data message has started and its final frame not yet come
    std::string control_;      // a control frame's payload
};

}  // namespace enlighten::api
