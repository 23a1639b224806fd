// The Hyper-V synthetic video VSP that Linux's hyperv_fb drives (contract-input-video §4):
// version negotiation (3.5 and 3.2), the resolution list (the configured mode first: the
// guest takes it as its initial and largest mode), the VRAM location, situation updates
// (the mode the guest scans out), dirty rectangles and the pointer. The framebuffer is guest
// memory the guest chose: RAM (the usual case under direct boot, up to 4 MiB) or a range of
// the VMBus MMIO pool that the VMM backs with memory on demand (RamControl::map_vram). The
// host only reads it, and stops reading when the channel closes or the machine goes.
//
// capture() copies the visible mode out of guest memory for a screenshot; the display
// consumers to come (VNC) take dirty rectangles from take_dirty().
//
// Threads: the SimpleDevice hooks run on the control loop. capture(), status(),
// take_dirty() and set_dirty_needed() may be called from any thread (API workers, a display
// server); they take the device's mutex, which is a leaf except that guest memory is read
// under it (GuestMemory's readers take no lock) and the loop's post is called under it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "common/thread_annotations.hpp"
#include "devices/video/message.hpp"
#include "vmbus/simple_device.hpp"

namespace enlighten::video {

// The mode a display shows: the guest's last valid situation update, within its VRAM.
struct Mode {
    uint32_t width = 0;
    uint32_t height = 0;
    uint32_t pitch = 0;        // bytes per line, >= width * 4
    uint32_t vram_offset = 0;  // where line 0 starts in the VRAM
    bool operator==(const Mode&) const = default;
};

// One frame in host memory: RGB, 3 bytes a pixel, rows of width * 3 bytes.
struct Frame {
    uint32_t width = 0;
    uint32_t height = 0;
    std::vector<uint8_t> rgb;
};

// A dirty rectangle clamped to the mode: [x, x + width) x [y, y + height).
struct DirtyRect {
    uint32_t x = 0, y = 0, width = 0, height = 0;
    bool operator==(const DirtyRect&) const = default;
};

// Counters of what the guest sent that was refused or bounded, by name (for the API).
struct VideoCounters {
    uint64_t messages = 0;
    uint64_t malformed = 0;           // the parser refused it
    uint64_t unsupported = 0;         // a type the guest does not send
    uint64_t bad_version = 0;         // a version other than 3.5 or 3.2
    uint64_t vram_refused = 0;        // a VRAM location outside RAM and the MMIO pool
    uint64_t situation_refused = 0;   // a mode that does not fit the VRAM, or is not 32 bpp
    uint64_t dirt = 0;                // DIRT messages
    uint64_t dirt_rects_clamped = 0;  // rectangles that reached outside the screen
    uint64_t replies_dropped = 0;     // answers for which the guest's ring had no room
};

struct VideoStatus {
    std::string state;  // "closed", "negotiating", "connected" (version agreed), "ready" (VRAM and mode)
    uint32_t version = 0;         // the agreed synthvid version, 0 before
    std::optional<uint64_t> vram_gpa;
    uint64_t vram_bytes = 0;      // what the offer gives (mmio_megabytes)
    bool vram_in_mmio = false;    // the VRAM is in the VMBus MMIO pool (mapped by the VMM)
    std::optional<Mode> mode;
    uint32_t offered_width = 0, offered_height = 0;
    bool dirt_needed = false;
    int32_t pointer_x = 0, pointer_y = 0;
    bool pointer_visible = false;
    VideoCounters counters;
};

struct VideoConfig {
    std::string instance_id;
    uint32_t width = 1024;  // the resolution offered as the default
    uint32_t height = 768;
};

class VideoDevice final : public vmbus::SimpleDevice, public std::enable_shared_from_this<VideoDevice> {
public:
    // Packets kept for a guest that does not read its ring; more are dropped (counted).
    static constexpr size_t kMaxWaiting = 32;
    // Rectangles kept for take_dirty(); more are merged into their bounding box.
    static constexpr size_t kMaxDirtyRects = 64;
    // VRAM placements in the MMIO pool per boot (each publishes a guest memory map).
    static constexpr uint32_t kMaxVramMaps = 16;

    // The VRAM size the offer announces for a mode (mmio_megabytes): w * h * 4 rounded up to
    // MiB, at least 4 MiB. Up to 4 MiB the guest's framebuffer is RAM; above, it is the MMIO
    // pool (contract-input-video §4.5).
    static uint32_t vram_megabytes(uint32_t width, uint32_t height);

    explicit VideoDevice(VideoConfig config);

    void attach(const vmbus::DeviceResources& resources) override;
    void detach() override;

    [[nodiscard]] VideoStatus status() const ENL_EXCLUDES(mu_);
    // The visible mode's pixels. Errc::Closed when the guest has no framebuffer (no VRAM or
    // no valid mode yet); Errc::Invalid if guest memory no longer holds it.
    Result<Frame> capture() const ENL_EXCLUDES(mu_);
    // The dirty rectangles since the last call (whole screen after a mode change); empty
    // when nothing changed as far as the guest said.
    std::vector<DirtyRect> take_dirty() ENL_EXCLUDES(mu_);
    // Copies `r` of the visible mode, as the guest's B, G, R, X pixels, into `dst` (rows of
    // `dst_pitch` bytes, at least r.width * 4). Errc::Closed with no framebuffer, Errc::Invalid
    // for a rectangle outside the mode, a destination too small, or guest memory gone.
    Result<> read_rect(DirtyRect r, std::span<uint8_t> dst, size_t dst_pitch) const ENL_EXCLUDES(mu_);
    // Called on the control loop after dirty rectangles were added or the mode changed (or
    // went): a display then takes them (take_dirty) and reads the pixels. One listener; an
    // empty function removes it. It must not call back into set_listener.
    void set_listener(std::function<void()> changed) ENL_EXCLUDES(mu_);
    // Asks the guest for DIRT messages (FEATURE_CHANGE) while a display watches, or not.
    void set_dirt_needed(bool needed) ENL_EXCLUDES(mu_);

private:
    void on_opened() override;
    void on_closed() override;
    void on_packet(const vmbus::PacketView& packet) override;
    void reply(std::vector<uint8_t> message);

    void handle(const VersionRequest& m);
    void handle(const VramLocation& m);
    void handle(const SituationUpdate& m);
    void handle(const PointerPosition& m);
    void handle(const PointerShape& m);
    void handle(const Dirt& m);
    void handle(const ResolutionRequest& m);
    void mark_dirty(DirtyRect r) ENL_REQUIRES(mu_);
    // Clamps and records a DIRT message's rectangles; whether any was added.
    bool add_dirt(const Dirt& m) ENL_REQUIRES(mu_);
    // Tells the listener, if any (outside mu_).
    void notify() ENL_EXCLUDES(mu_);

    const VideoConfig config_;
    const uint64_t vram_bytes_;

    mutable Mutex mu_;
    const GuestMemory* memory_ ENL_GUARDED_BY(mu_) = nullptr;
    RamControl* ram_ ENL_GUARDED_BY(mu_) = nullptr;
    std::optional<uint64_t> mapped_vram_ ENL_GUARDED_BY(mu_);  // where map_vram put the VRAM this boot
    uint32_t vram_maps_ ENL_GUARDED_BY(mu_) = 0;               // map_vram calls this boot
    bool open_ ENL_GUARDED_BY(mu_) = false;
    uint32_t version_ ENL_GUARDED_BY(mu_) = 0;
    std::optional<uint64_t> vram_gpa_ ENL_GUARDED_BY(mu_);
    bool vram_in_mmio_ ENL_GUARDED_BY(mu_) = false;
    std::optional<OutputMode> guest_mode_ ENL_GUARDED_BY(mu_);  // as the guest said, not yet checked
    std::optional<Mode> mode_ ENL_GUARDED_BY(mu_);              // checked against the VRAM
    bool dirt_needed_ ENL_GUARDED_BY(mu_) = false;
    std::vector<DirtyRect> dirty_ ENL_GUARDED_BY(mu_);
    PointerPosition pointer_ ENL_GUARDED_BY(mu_);
    VideoCounters counters_ ENL_GUARDED_BY(mu_);
    std::shared_ptr<std::function<void()>> listener_ ENL_GUARDED_BY(mu_);

    // Checks guest_mode_ against the VRAM and sets mode_ (or clears it).
    void update_mode() ENL_REQUIRES(mu_);
};

}  // namespace enlighten::video
