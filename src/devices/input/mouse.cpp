#include "devices/input/mouse.hpp"

#include <algorithm>
#include <cstring>

#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/input/factory.hpp"
#include "devices/input/protocol.hpp"

namespace enlighten::input {

namespace {

std::vector<uint8_t> hid_message(HidMsgType type, std::span<const uint8_t> body, uint32_t pipe_size) {
    ByteWriter w(kHidHeadersSize + body.size());
    w.put(HidPipeHeader{kPipeMessageData, pipe_size})
        .put(HidHeader{static_cast<uint32_t>(type), static_cast<uint32_t>(body.size())})
        .bytes(body);
    return w.take();
}

// PROTOCOL_RESPONSE: the pipe size is 13, as the guest's 24-byte copy needs.
std::vector<uint8_t> protocol_response(uint32_t version, bool approved) {
    const HidProtocolResponseBody body{version, static_cast<uint8_t>(approved ? 1 : 0)};
    return hid_message(HidMsgType::ProtocolResponse, as_bytes(body), sizeof(HidHeader) + sizeof(body));
}

// INITIAL_DEVICE_INFO: dev info, HID descriptor, report descriptor. The guest takes pipe.size
// as the total (>= 49) and ignores hid.size.
std::vector<uint8_t> device_info() {
    HidDevInfo info{};
    info.size = sizeof(HidDevInfo);
    info.vendor = kMouseVendor;
    info.product = kMouseProduct;
    info.version = kMouseDeviceVersion;
    const HidDescriptor desc{sizeof(HidDescriptor), 0x21, 0x0101, 0, 1, 0x22,
                             static_cast<uint16_t>(kMouseReportDescriptor.size())};
    ByteWriter body;
    body.put(info).put(desc).bytes(kMouseReportDescriptor);
    return hid_message(HidMsgType::InitialDeviceInfo, body.view(), static_cast<uint32_t>(sizeof(HidHeader) + body.size()));
}

std::vector<uint8_t> input_report(const PointerState& s) {
    const auto wheel = static_cast<uint16_t>(s.wheel);
    const MouseReport r{static_cast<uint8_t>(s.buttons & 0x1f),
                        static_cast<uint8_t>(s.x),
                        static_cast<uint8_t>(s.x >> 8),
                        static_cast<uint8_t>(s.y),
                        static_cast<uint8_t>(s.y >> 8),
                        static_cast<uint8_t>(wheel),
                        static_cast<uint8_t>(wheel >> 8)};
    // hid.size is exactly the report: the guest hands that many bytes to hid-core.
    return hid_message(HidMsgType::InputReport, as_bytes(r), static_cast<uint32_t>(sizeof(HidHeader) + sizeof(r)));
}

}  // namespace

MouseDevice::MouseDevice(const std::string& instance_id)
    : SimpleDevice(input_offer("mouse", kMouseClassId, instance_id)) {}

uint16_t MouseDevice::scale(uint32_t p, uint32_t size) {
    if (size <= 1) return 0;
    const uint64_t v = uint64_t{std::min(p, size - 1)} * kMouseMaxCoordinate / (size - 1);
    return static_cast<uint16_t>(v);
}

void MouseDevice::on_opened() {
    LockGuard lock(mu_);
    state_ = State::Negotiating;
    deferred_motion_.reset();
}

void MouseDevice::on_closed() {
    LockGuard lock(mu_);
    state_ = State::Closed;
    deferred_motion_.reset();
}

void MouseDevice::on_packet(const vmbus::PacketView& packet) {
    auto refuse = [this](std::string_view why) {
        LockGuard lock(mu_);
        ++malformed_;
        ENL_LOG_LIMITED(warn, "synthetic mouse: {}; ignored", why);
    };
    if (packet.type != vmbus::kPacketDataInband) return refuse(fmt::format("a packet of type {}", packet.type));
    const auto pipe = read_prefix<HidPipeHeader>(packet.payload);
    const auto hid = read_prefix<HidHeader>(packet.payload.subspan(std::min(packet.payload.size(), sizeof(HidPipeHeader))));
    if (!pipe || !hid) return refuse(fmt::format("a message of {} bytes", packet.payload.size()));
    if (pipe->type != kPipeMessageData) return refuse(fmt::format("pipe message type {}", pipe->type));
    if (pipe->size > packet.payload.size() - sizeof(HidPipeHeader) || pipe->size < sizeof(HidHeader))
        return refuse(fmt::format("pipe size {} in a message of {} bytes", pipe->size, packet.payload.size()));
    const auto body = packet.payload.subspan(kHidHeadersSize, pipe->size - sizeof(HidHeader));
    switch (static_cast<HidMsgType>(hid->type)) {
        case HidMsgType::ProtocolRequest: {
            if (body.size() < 4) return refuse("a short protocol request");
            uint32_t version;
            std::memcpy(&version, body.data(), 4);
            const bool ok = version == kMouseVersion;
            {
                LockGuard lock(mu_);
                state_ = ok ? State::Approved : State::Negotiating;
                if (!ok) ++malformed_;
            }
            if (!ok) ENL_LOG_LIMITED(info, "synthetic mouse: protocol version {:#x} refused (2.0 is spoken)", version);
            // The answer, then at once the device info: in this order (the guest's first wait
            // ends on either; the info first would find `approved` still 0).
            (void)post_inband(protocol_response(version, ok), kMaxWaiting);
            if (ok) (void)post_inband(device_info(), kMaxWaiting);
            return;
        }
        case HidMsgType::InitialDeviceInfoAck: {
            LockGuard lock(mu_);
            if (state_ != State::Approved) {
                ++malformed_;
                ENL_LOG_LIMITED(warn, "synthetic mouse: a device info ACK out of turn; ignored");
                return;
            }
            state_ = State::Ready;
            return;
        }
        case HidMsgType::ProtocolResponse:
        case HidMsgType::InitialDeviceInfo:
        case HidMsgType::InputReport:
            break;
    }
    refuse(fmt::format("synthhid message type {}", hid->type));
}

Result<> MouseDevice::send_report(const PointerState& s) {
    ENL_TRY_VOID(post_inband(input_report(s), kMaxWaiting));
    LockGuard lock(mu_);
    last_ = s;
    ++reports_sent_;
    return {};
}

Result<> MouseDevice::move(PointerState s) {
    LockGuard order(move_mu_);
    const bool motion_only = [&] {
        LockGuard lock(mu_);
        return s.wheel == 0 && s.buttons == (deferred_motion_ ? deferred_motion_->buttons : last_.buttons);
    }();
    {
        LockGuard lock(mu_);
        if (state_ != State::Ready) return fail(Errc::Closed, "the guest's mouse driver (hid_hyperv) is not connected");
        // While the ring is full, motion replaces motion: only the latest position matters.
        if (motion_only && (deferred_motion_ || waiting() > 0)) {
            deferred_motion_ = s;
            return {};
        }
    }
    // A button or wheel change: the motion kept so far goes first.
    std::optional<PointerState> before;
    {
        LockGuard lock(mu_);
        before = std::exchange(deferred_motion_, std::nullopt);
    }
    if (before) ENL_TRY_VOID(send_report(*before));
    return send_report(s);
}

void MouseDevice::on_ring_space() {
    // The outbox went out first (SimpleDevice); now the latest position, if the ring has room.
    LockGuard order(move_mu_);
    std::optional<PointerState> s;
    {
        LockGuard lock(mu_);
        if (!deferred_motion_ || waiting() > 0) return;
        s = std::exchange(deferred_motion_, std::nullopt);
    }
    (void)send_report(*s);
}

MouseStatus MouseDevice::status() const {
    LockGuard lock(mu_);
    std::string st = state_ == State::Closed ? "closed" : state_ == State::Ready ? "ready" : "negotiating";
    return {st, last_, reports_sent_, malformed_};
}

}  // namespace enlighten::input
