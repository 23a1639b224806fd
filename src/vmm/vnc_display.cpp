#include "vmm/vnc_display.hpp"

#include <cstring>

#include <utility>

#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "devices/input/keyboard.hpp"
#include "devices/input/keymap.hpp"
#include "devices/input/mouse.hpp"
#include "devices/video/video.hpp"

namespace enlighten {

namespace {

constexpr uint8_t kRfbLeft = 1, kRfbMiddle = 2, kRfbRight = 4, kRfbWheelUp = 8, kRfbWheelDown = 16;
constexpr uint8_t kHidLeft = 1, kHidRight = 2, kHidMiddle = 4;

}  // namespace

Result<std::unique_ptr<VncDisplay>> VncDisplay::start(const vnc::Endpoint& where, EventLoop& loop,
                                                      std::shared_ptr<video::VideoDevice> video,
                                                      std::shared_ptr<input::KeyboardDevice> keyboard,
                                                      std::shared_ptr<input::MouseDevice> mouse) {
    if (!video) return fail(Errc::Invalid, "--vnc needs the display (--display on)");
    std::unique_ptr<VncDisplay> d(new VncDisplay(loop, std::move(video), std::move(keyboard), std::move(mouse)));
    const auto st = d->video_->status();
    ENL_TRY(d->server_, vnc::Server::start(where, *d, st.offered_width, st.offered_height));
    d->width_ = st.offered_width;
    d->height_ = st.offered_height;
    d->video_->set_listener([d = d.get(), alive = std::weak_ptr<bool>(d->alive_)] {
        if (!alive.expired()) d->refresh(false);
    });
    return d;
}

VncDisplay::VncDisplay(EventLoop& loop, std::shared_ptr<video::VideoDevice> video,
                       std::shared_ptr<input::KeyboardDevice> keyboard, std::shared_ptr<input::MouseDevice> mouse)
    : loop_(loop), video_(std::move(video)), keyboard_(std::move(keyboard)), mouse_(std::move(mouse)) {}

VncDisplay::~VncDisplay() {
    video_->set_listener({});
    alive_.reset();   // what the clients' departures post now finds the display gone
    server_.reset();  // joins libvncserver's threads: no Source call after this
    video_->set_dirt_needed(false);
}

void VncDisplay::refresh(bool whole) {
    auto dirty = video_->take_dirty();
    const auto st = video_->status();
    if (!st.mode) {
        // No framebuffer (the guest's driver is gone, or not there yet): black.
        auto px = server_->pixels();
        std::fill(px.begin(), px.end(), uint8_t{0});
        server_->changed(0, 0, server_->width(), server_->height());
        return;
    }
    const video::Mode m = *st.mode;
    if (m.width != server_->width() || m.height != server_->height()) {
        server_->resize(m.width, m.height);
        width_ = m.width;
        height_ = m.height;
        whole = true;
    }
    if (whole) dirty.assign(1, video::DirtyRect{0, 0, m.width, m.height});
    const size_t pitch = size_t{m.width} * 4;
    auto px = server_->pixels();
    for (const auto& r : dirty) {
        // Read and convert in a buffer of our own, then copy: libvncserver's threads read the
        // server's pixels at any time, and must never find the guest's B, G, R, X there (a
        // client's first frame came with red and blue swapped, test_console.VncTests).
        const size_t row = size_t{r.width} * 4;
        scratch_.resize(row * r.height);
        if (auto ok = video_->read_rect(r, scratch_, row); !ok) {
            ENL_LOG_LIMITED(debug, "vnc: {}", ok.error().message());
            continue;
        }
        // The guest's B, G, R, X to the server's R, G, B, X.
        for (size_t i = 0; i < scratch_.size(); i += 4) std::swap(scratch_[i], scratch_[i + 2]);
        const size_t at = size_t{r.y} * pitch + size_t{r.x} * 4;
        for (uint32_t y = 0; y < r.height; ++y)
            std::memcpy(px.data() + at + size_t{y} * pitch, scratch_.data() + size_t{y} * row, row);
        server_->changed(r.x, r.y, r.width, r.height);
    }
}

void VncDisplay::viewers(uint32_t count) {
    loop_.post([this, count, alive = std::weak_ptr<bool>(alive_)] {
        if (alive.expired()) return;
        // Dirty rectangles from the guest only while someone watches; the whole screen for
        // a newcomer.
        video_->set_dirt_needed(count > 0);
        if (count > 0) refresh(true);
    });
    if (count == 0) {
        release_keys();
        if (buttons_.exchange(0) != 0 && mouse_) {
            const auto st = mouse_->status();
            (void)mouse_->move({st.last.x, st.last.y, 0, 0});
        }
    }
}

void VncDisplay::key(uint32_t keysym, bool down) {
    if (!keyboard_) return;
    auto k = input::key_by_keysym(keysym);
    if (!k) {
        ENL_LOG_LIMITED(debug, "vnc: {}", k.error().message());
        return;
    }
    {
        // A break is sent only for a key this display made (a lone Left Shift break is a
        // keyboard reset to atkbd, contract-input-video §2.3); a repeated make is autorepeat.
        LockGuard lock(keys_mu_);
        if (!down && held_.erase(keysym) == 0) return;
        if (down) held_.insert(keysym);
    }
    if (auto r = keyboard_->type(input::key_events(*k, !down)); !r)
        ENL_LOG_LIMITED(debug, "vnc: key {:#x}: {}", keysym, r.error().message());
}

void VncDisplay::release_keys() {
    std::set<uint32_t> held;
    {
        LockGuard lock(keys_mu_);
        held.swap(held_);
    }
    for (const uint32_t keysym : held)
        if (auto k = input::key_by_keysym(keysym); k && keyboard_) (void)keyboard_->type(input::key_events(*k, true));
}

void VncDisplay::pointer(uint32_t x, uint32_t y, uint8_t buttons) {
    if (!mouse_) return;
    const uint8_t before = buttons_.exchange(buttons);
    const uint8_t pressed = static_cast<uint8_t>(buttons & ~before);
    int16_t wheel = 0;
    if (pressed & kRfbWheelUp) ++wheel;
    if (pressed & kRfbWheelDown) --wheel;
    const auto hid = static_cast<uint8_t>(((buttons & kRfbLeft) ? kHidLeft : 0) |
                                          ((buttons & kRfbMiddle) ? kHidMiddle : 0) |
                                          ((buttons & kRfbRight) ? kHidRight : 0));
    const input::PointerState s{input::MouseDevice::scale(x, width_), input::MouseDevice::scale(y, height_), hid,
                                wheel};
    if (auto r = mouse_->move(s); !r) ENL_LOG_LIMITED(debug, "vnc: pointer: {}", r.error().message());
}

}  // namespace enlighten
