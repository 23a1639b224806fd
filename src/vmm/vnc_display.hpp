// The VM console over VNC (--vnc): a vnc::Server that shows the synthetic video's framebuffer
// and types and points into the synthetic keyboard and mouse. It lives as long as the VM
// (clients stay connected across guest reboots; the screen goes black while the guest has no
// framebuffer).
//
// Only what changed is sent, and nothing is read while nothing changes: while clients are
// connected the video device asks the guest for dirty rectangles (FEATURE_CHANGE), and each
// one the guest reports is copied from guest memory into the server's framebuffer and sent.
// A client's arrival, and a mode change, copy the whole screen once. (Plain write()s to
// /dev/fb0 report no rectangle: they show when something else changes there, or at the next
// client's arrival.)
//
// Threads: created and destroyed on the VM's loop thread, which also runs the video device's
// listener and the posted refreshes (all framebuffer copies happen there). The vnc::Source
// calls come from libvncserver's threads: key and pointer input go straight to the keyboard
// and mouse (thread-safe), a change in the number of clients is posted to the loop. The
// held-keys mutex is a leaf.
#pragma once

#include <atomic>
#include <memory>
#include <set>
#include <vector>

#include "backends/vnc/vnc.hpp"
#include "common/thread_annotations.hpp"

namespace enlighten {

class EventLoop;
namespace video {
class VideoDevice;
}
namespace input {
class KeyboardDevice;
class MouseDevice;
}

class VncDisplay final : public vnc::Source {
public:
    // `video` must be non-null; the keyboard and mouse may be (then input is ignored).
    static Result<std::unique_ptr<VncDisplay>> start(const vnc::Endpoint& where, EventLoop& loop,
                                                     std::shared_ptr<video::VideoDevice> video,
                                                     std::shared_ptr<input::KeyboardDevice> keyboard,
                                                     std::shared_ptr<input::MouseDevice> mouse);
    ~VncDisplay() override;

    // A client connection for the web console (vnc::Server::connect). Any thread.
    Result<UniqueFd> connect() { return server_->connect(); }

    void key(uint32_t keysym, bool down) override;
    void pointer(uint32_t x, uint32_t y, uint8_t buttons) override;
    void viewers(uint32_t count) override;

private:
    VncDisplay(EventLoop& loop, std::shared_ptr<video::VideoDevice> video,
               std::shared_ptr<input::KeyboardDevice> keyboard, std::shared_ptr<input::MouseDevice> mouse);
    // Loop thread: the guest's dirty rectangles (or its new mode) into the server.
    void refresh(bool whole);
    void release_keys() ENL_EXCLUDES(keys_mu_);

    EventLoop& loop_;
    const std::shared_ptr<video::VideoDevice> video_;
    const std::shared_ptr<input::KeyboardDevice> keyboard_;
    const std::shared_ptr<input::MouseDevice> mouse_;
    std::unique_ptr<vnc::Server> server_;
    std::vector<uint8_t> scratch_;  // loop thread: one rectangle, converted before it is shown
    // The shared state the posted tasks check, so that none runs after the display is gone.
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    Mutex keys_mu_;
    std::set<uint32_t> held_ ENL_GUARDED_BY(keys_mu_);  // keysyms down now
    std::atomic<uint8_t> buttons_{0};                    // the last RFB button mask
    std::atomic<uint32_t> width_{0}, height_{0};         // the framebuffer the clients see
};

}  // namespace enlighten
