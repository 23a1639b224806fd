#include "devices/input/keyboard.hpp"

#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/input/factory.hpp"
#include "devices/input/protocol.hpp"

namespace enlighten::input {

namespace {

template <typename T>
std::vector<uint8_t> bytes_of(const T& v) {
    auto b = as_bytes(v);
    return {b.begin(), b.end()};
}

// Slack for the loop's own replies posted while a batch of events goes out.
constexpr size_t kReplySlack = 16;

}  // namespace

KeyboardDevice::KeyboardDevice(const std::string& instance_id)
    : SimpleDevice(input_offer("keyboard", kKeyboardClassId, instance_id)) {}

void KeyboardDevice::on_opened() {
    // A new connection: the guest's atkbd knows no key as pressed (contract-input-video §2.3).
    LockGuard lock(mu_);
    open_ = true;
    ready_ = false;
}

void KeyboardDevice::on_closed() {
    LockGuard lock(mu_);
    open_ = false;
    ready_ = false;
}

void KeyboardDevice::on_packet(const vmbus::PacketView& packet) {
    auto refuse = [this](std::string_view why) {
        LockGuard lock(mu_);
        ++malformed_;
        ENL_LOG_LIMITED(warn, "synthetic keyboard: {}; ignored", why);
    };
    if (packet.type != vmbus::kPacketDataInband) return refuse(fmt::format("a packet of type {}", packet.type));
    const auto req = read_prefix<KbdProtocolRequest>(packet.payload);
    if (!req) return refuse(fmt::format("a message of {} bytes", packet.payload.size()));
    switch (static_cast<KbdMsgType>(req->type)) {
        case KbdMsgType::ProtocolRequest: {
            // Only 1.0, as OpenVMM; the guest asks again after a resume, and each is answered.
            const bool ok = req->version == kKeyboardVersion;
            {
                LockGuard lock(mu_);
                ready_ = ok;
                if (!ok) ++malformed_;
            }
            if (!ok) ENL_LOG_LIMITED(info, "synthetic keyboard: protocol version {:#x} refused (1.0 is spoken)", req->version);
            const KbdProtocolResponse resp{static_cast<uint32_t>(KbdMsgType::ProtocolResponse),
                                           ok ? kKbdProtocolAccepted : 0U};
            if (auto sent = post_inband(bytes_of(resp), kMaxWaiting + kReplySlack); !sent)
                ENL_LOG_LIMITED(warn, "synthetic keyboard: protocol response not sent: {}", sent.error().message());
            return;
        }
        case KbdMsgType::LedIndicators: {
            const auto led = *read_prefix<KbdLedIndicators>(packet.payload);
            LockGuard lock(mu_);
            leds_ = led.led_flags;
            return;
        }
        case KbdMsgType::ProtocolResponse:
        case KbdMsgType::Event:
            break;
    }
    refuse(fmt::format("message type {}", req->type));
}

Result<> KeyboardDevice::type(std::span<const KeyEvent> events) {
    LockGuard batch(type_mu_);
    {
        LockGuard lock(mu_);
        if (!ready_) return fail(Errc::Closed, "the guest's keyboard driver (hyperv_keyboard) is not connected");
    }
    if (waiting() + events.size() > kMaxWaiting)
        return fail(Errc::Busy, "the guest is not reading its keyboard: {} key events wait", waiting());
    for (const KeyEvent& e : events) {
        // Never IS_UNICODE (Linux would inject the low byte as a scan code); make codes only.
        const uint32_t info = (e.release ? kKbdInfoBreak : 0U) | (e.e0 ? kKbdInfoE0 : 0U) | (e.e1 ? kKbdInfoE1 : 0U);
        const KbdEvent ev{static_cast<uint32_t>(KbdMsgType::Event), static_cast<uint16_t>(e.code & 0x7f), 0, info};
        ENL_TRY_VOID(post_inband(bytes_of(ev), kMaxWaiting + kReplySlack));
        LockGuard lock(mu_);
        ++events_sent_;
    }
    return {};
}

KeyboardStatus KeyboardDevice::status() const {
    LockGuard lock(mu_);
    return {!open_ ? "closed" : ready_ ? "ready" : "negotiating", leds_, events_sent_, malformed_};
}

}  // namespace enlighten::input
