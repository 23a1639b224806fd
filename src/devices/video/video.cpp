#include "devices/video/video.hpp"

#include <algorithm>
#include <array>

#include "common/event_loop.hpp"
#include "common/log.hpp"
#include "common/rate_limit.hpp"
#include "kvm/guest_memory.hpp"
#include "kvm/ram_control.hpp"

namespace enlighten::video {

namespace {

constexpr uint64_t kMiB = 1ULL << 20;
// Larger modes than this are refused whatever the VRAM (16K lines of 16K pixels).
constexpr uint32_t kMaxDimension = 16384;

vmbus::OfferParams video_offer(const VideoConfig& c) {
    vmbus::OfferParams p;
    p.name = "video";
    p.class_id = vmbus::Guid::parse(kClassId);
    p.instance_id = vmbus::Guid::parse(c.instance_id.c_str());
    // hyperv_fb sizes its framebuffer from this (screen_fb_size); non-zero or it has none.
    p.mmio_megabytes = static_cast<uint16_t>(VideoDevice::vram_megabytes(c.width, c.height));
    // The guest's max_pkt_size is the default 4096; it sends at most what its 16 KiB buffer
    // holds (a longer packet fails the channel).
    p.max_packet_to_guest = 4096;
    p.max_packet_from_guest = static_cast<uint32_t>(kMaxGuestMessage + 16);
    return p;
}

// Standard modes offered after the configured one (Linux takes only the default entry;
// other guests may list them).
constexpr std::array<ScreenSize, 6> kStandardSizes{{
    {640, 480}, {800, 600}, {1024, 768}, {1152, 864}, {1280, 720}, {1280, 800},
}};

}  // namespace

uint32_t VideoDevice::vram_megabytes(uint32_t width, uint32_t height) {
    const uint64_t bytes = uint64_t{width} * height * 4;
    return static_cast<uint32_t>(std::max<uint64_t>(4, (bytes + kMiB - 1) / kMiB));
}

VideoDevice::VideoDevice(VideoConfig config)
    : SimpleDevice(video_offer(config)),
      config_(std::move(config)),
      vram_bytes_(uint64_t{vram_megabytes(config_.width, config_.height)} * kMiB) {}

void VideoDevice::attach(const vmbus::DeviceResources& resources) {
    SimpleDevice::attach(resources);
    LockGuard lock(mu_);
    memory_ = resources.memory;
    ram_ = resources.ram;
    vram_maps_ = 0;
    mapped_vram_.reset();
}

void VideoDevice::detach() {
    {
        LockGuard lock(mu_);
        memory_ = nullptr;
        ram_ = nullptr;
        mapped_vram_.reset();
        vram_gpa_.reset();
        mode_.reset();
        guest_mode_.reset();
        dirty_.clear();
    }
    SimpleDevice::detach();
}

void VideoDevice::on_opened() {
    LockGuard lock(mu_);
    open_ = true;
    version_ = 0;
}

void VideoDevice::on_closed() {
    // The guest frees or reuses its framebuffer now: stop reading it (contract-input-video §4.8).
    {
        LockGuard lock(mu_);
        open_ = false;
        version_ = 0;
        vram_gpa_.reset();
        vram_in_mmio_ = false;
        guest_mode_.reset();
        mode_.reset();
        dirty_.clear();
    }
    notify();
}

void VideoDevice::set_listener(std::function<void()> changed) {
    LockGuard lock(mu_);
    listener_ = changed ? std::make_shared<std::function<void()>>(std::move(changed)) : nullptr;
}

void VideoDevice::notify() {
    std::shared_ptr<std::function<void()>> l;
    {
        LockGuard lock(mu_);
        l = listener_;
    }
    if (l) (*l)();
}

void VideoDevice::reply(std::vector<uint8_t> message) {
    auto sent = post_inband(std::move(message), kMaxWaiting);
    if (!sent && sent.error().is(Errc::Busy)) {
        LockGuard lock(mu_);
        ++counters_.replies_dropped;
        ENL_LOG_LIMITED(warn, "synthetic video: the guest does not read its ring; a reply was dropped");
    }
}

void VideoDevice::on_packet(const vmbus::PacketView& packet) {
    {
        LockGuard lock(mu_);
        ++counters_.messages;
    }
    if (packet.type != vmbus::kPacketDataInband) {
        LockGuard lock(mu_);
        ++counters_.malformed;
        ENL_LOG_LIMITED(warn, "synthetic video: a packet of type {} from the guest; ignored", packet.type);
        return;
    }
    auto msg = parse_guest_message(packet.payload);
    if (!msg) {
        LockGuard lock(mu_);
        if (msg.error().is(Errc::Unsupported))
            ++counters_.unsupported;
        else
            ++counters_.malformed;
        ENL_LOG_LIMITED(warn, "synthetic video: {}; ignored", msg.error().message());
        return;
    }
    std::visit([this](const auto& m) { handle(m); }, *msg);
}

void VideoDevice::handle(const VersionRequest& m) {
    const bool ok = m.version == kVersionWin10 || m.version == kVersionWin8;
    {
        LockGuard lock(mu_);
        version_ = ok ? m.version : 0;
        if (!ok) ++counters_.bad_version;
    }
    if (!ok)
        ENL_LOG_LIMITED(info, "synthetic video: version {}.{} refused (3.5 and 3.2 are spoken)", m.version & 0xffff,
                        m.version >> 16);
    reply(make_version_response(m.version, ok));
}

void VideoDevice::handle(const ResolutionRequest& m) {
    std::vector<ScreenSize> sizes{{static_cast<uint16_t>(config_.width), static_cast<uint16_t>(config_.height)}};
    for (const auto& s : kStandardSizes)
        if ((s.width != config_.width || s.height != config_.height) && uint64_t{s.width} * s.height * 4 <= vram_bytes_)
            sizes.push_back(s);
    reply(make_resolution_response(sizes, m.max_count));
}

void VideoDevice::handle(const VramLocation& m) {
    bool ok = true;
    bool dirt = false;
    if (m.specified) {
        const GuestMemory* memory;
        RamControl* ram;
        bool mapped_here, may_map;
        {
            LockGuard lock(mu_);
            memory = memory_;
            ram = ram_;
            mapped_here = mapped_vram_ == m.gpa;
            may_map = vram_maps_ < kMaxVramMaps;
        }
        // The whole VRAM (what the offer gave: the guest's screen_fb_size) must be memory:
        // guest RAM, or a range of the VMBus MMIO pool that we back now (RamControl::map_vram
        // checks the window and the alignment). No wrap: contains() checks the range.
        const bool in_ram =
            !mapped_here && m.gpa <= ~uint64_t{0} - vram_bytes_ && memory && memory->contains(m.gpa, vram_bytes_);
        bool in_mmio = mapped_here;
        if (!in_ram && !in_mmio && ram && may_map) {
            // Each placement publishes a new memory map, of which a VM has a bounded number:
            // a guest that moves its VRAM for ever is refused after kMaxVramMaps.
            auto mapped = ram->map_vram(m.gpa, vram_bytes_);
            in_mmio = mapped.has_value();
            LockGuard lock(mu_);
            ++vram_maps_;
            if (mapped) mapped_vram_ = m.gpa;
            else
                ENL_LOG_LIMITED(warn, "synthetic video: VRAM at {:#x}+{:#x} is neither RAM nor in the VMBus MMIO pool: {}",
                                m.gpa, vram_bytes_, mapped.error().message());
        }
        ok = in_ram || in_mmio;
        LockGuard lock(mu_);
        if (ok) {
            vram_gpa_ = m.gpa;
            vram_in_mmio_ = in_mmio;
        } else {
            ++counters_.vram_refused;
            vram_gpa_.reset();
        }
        update_mode();
        dirt = ok && dirt_needed_;
    } else {
        LockGuard lock(mu_);
        vram_gpa_.reset();  // "no VRAM": stop scanning
        update_mode();
    }
    // Linux requires its user_ctx back; anything else fails its probe ("Unable to set VRAM
    // location"), which is how a VRAM outside memory is refused.
    reply(make_vram_location_ack(ok ? m.user_ctx : ~m.user_ctx));
    if (dirt) reply(make_feature_change(true, false, false, false));
    notify();
}

void VideoDevice::handle(const SituationUpdate& m) {
    {
        LockGuard lock(mu_);
        guest_mode_ = m.output0;
        update_mode();
    }
    reply(make_situation_update_ack(m.user_ctx));
    notify();
}

void VideoDevice::update_mode() {
    const auto before = mode_;
    mode_.reset();
    if (!vram_gpa_ || !guest_mode_) return;
    const OutputMode& g = *guest_mode_;
    // offset + pitch * (height - 1) + width * 4 <= VRAM size, in 64 bits (each term < 2^32).
    const bool fits = g.active && g.depth == kDepth && g.width > 0 && g.height > 0 && g.width <= kMaxDimension &&
                      g.height <= kMaxDimension && uint64_t{g.pitch} >= uint64_t{g.width} * 4 &&
                      uint64_t{g.vram_offset} + uint64_t{g.pitch} * (g.height - 1) + uint64_t{g.width} * 4 <= vram_bytes_;
    if (!fits) {
        ++counters_.situation_refused;
        ENL_LOG_LIMITED(warn, "synthetic video: mode {}x{} depth {} pitch {} offset {} (active {}) does not fit the "
                              "{}-byte VRAM; nothing is shown",
                        g.width, g.height, g.depth, g.pitch, g.vram_offset, g.active, vram_bytes_);
        return;
    }
    mode_ = Mode{g.width, g.height, g.pitch, g.vram_offset};
    if (mode_ != before) {
        dirty_.clear();
        mark_dirty({0, 0, g.width, g.height});
    }
}

void VideoDevice::handle(const PointerPosition& m) {
    LockGuard lock(mu_);
    pointer_ = m;
}

void VideoDevice::handle(const PointerShape&) {
    // The guest's cursor image (Linux: a 1x1 dummy). Displays draw their own pointer.
}

void VideoDevice::handle(const Dirt& m) {
    bool added = false;
    {
        LockGuard lock(mu_);
        added = add_dirt(m);
    }
    if (added) notify();
}

bool VideoDevice::add_dirt(const Dirt& m) {
    ++counters_.dirt;
    if (!mode_ || m.output != 0) return false;
    bool added = false;
    const auto w = static_cast<int64_t>(mode_->width), h = static_cast<int64_t>(mode_->height);
    for (const Rect& r : m.rects) {
        // Clamp to the screen: coordinates may be negative, inverted or far outside.
        const int64_t x1 = std::clamp<int64_t>(r.x1, 0, w), x2 = std::clamp<int64_t>(r.x2, 0, w);
        const int64_t y1 = std::clamp<int64_t>(r.y1, 0, h), y2 = std::clamp<int64_t>(r.y2, 0, h);
        if (x1 != r.x1 || x2 != r.x2 || y1 != r.y1 || y2 != r.y2) ++counters_.dirt_rects_clamped;
        if (x2 <= x1 || y2 <= y1) continue;
        mark_dirty({static_cast<uint32_t>(x1), static_cast<uint32_t>(y1), static_cast<uint32_t>(x2 - x1),
                    static_cast<uint32_t>(y2 - y1)});
        added = true;
    }
    return added;
}

void VideoDevice::mark_dirty(DirtyRect r) {
    if (dirty_.size() < kMaxDirtyRects) {
        dirty_.push_back(r);
        return;
    }
    // Too many: one bounding box of everything.
    uint32_t x1 = r.x, y1 = r.y, x2 = r.x + r.width, y2 = r.y + r.height;
    for (const auto& d : dirty_) {
        x1 = std::min(x1, d.x);
        y1 = std::min(y1, d.y);
        x2 = std::max(x2, d.x + d.width);
        y2 = std::max(y2, d.y + d.height);
    }
    dirty_.assign(1, DirtyRect{x1, y1, x2 - x1, y2 - y1});
}

std::vector<DirtyRect> VideoDevice::take_dirty() {
    LockGuard lock(mu_);
    return std::exchange(dirty_, {});
}

void VideoDevice::set_dirt_needed(bool needed) {
    bool send = false;
    {
        LockGuard lock(mu_);
        send = dirt_needed_ != needed && open_ && vram_gpa_.has_value();
        dirt_needed_ = needed;
    }
    if (send) reply(make_feature_change(needed, false, false, false));
}

VideoStatus VideoDevice::status() const {
    LockGuard lock(mu_);
    VideoStatus s;
    s.state = !open_ ? "closed" : version_ == 0 ? "negotiating" : mode_ ? "ready" : "connected";
    s.version = version_;
    s.vram_gpa = vram_gpa_;
    s.vram_bytes = vram_bytes_;
    s.vram_in_mmio = vram_in_mmio_;
    s.mode = mode_;
    s.offered_width = config_.width;
    s.offered_height = config_.height;
    s.dirt_needed = dirt_needed_;
    s.pointer_x = pointer_.x;
    s.pointer_y = pointer_.y;
    s.pointer_visible = pointer_.visible;
    s.counters = counters_;
    return s;
}

Result<> VideoDevice::read_rect(DirtyRect r, std::span<uint8_t> dst, size_t dst_pitch) const {
    LockGuard lock(mu_);
    if (!memory_ || !vram_gpa_ || !mode_) return fail(Errc::Closed, "the guest has no framebuffer");
    const Mode m = *mode_;
    if (r.width == 0 || r.height == 0 || r.x > m.width || r.width > m.width - r.x || r.y > m.height ||
        r.height > m.height - r.y)
        return fail(Errc::Invalid, "rectangle {}x{} at {},{} is outside the {}x{} mode", r.width, r.height, r.x, r.y,
                    m.width, m.height);
    const size_t row = size_t{r.width} * 4;
    if (dst_pitch < row || dst.size() < dst_pitch * (r.height - 1) + row)
        return fail(Errc::Invalid, "a destination of {} bytes (pitch {}) for a {}x{} rectangle", dst.size(), dst_pitch,
                    r.width, r.height);
    for (uint32_t y = 0; y < r.height; ++y)
        ENL_TRY_VOID(memory_->read(*vram_gpa_ + m.vram_offset + uint64_t{r.y + y} * m.pitch + uint64_t{r.x} * 4,
                                   dst.subspan(size_t{y} * dst_pitch, row)));
    return {};
}

Result<Frame> VideoDevice::capture() const {
    LockGuard lock(mu_);
    if (!memory_ || !vram_gpa_ || !mode_) return fail(Errc::Closed, "the guest has no framebuffer (hyperv_fb is not connected)");
    const Mode m = *mode_;
    if (m.width == 0 || m.height == 0) return fail(Errc::Closed, "the guest's mode is empty");
    Frame f{m.width, m.height, {}};
    f.rgb.resize(size_t{m.width} * m.height * 3);
    std::vector<uint8_t> row(size_t{m.width} * 4);
    for (uint32_t y = 0; y < m.height; ++y) {
        // Checked per row: guest memory is read through the map as it is now.
        ENL_TRY_VOID(memory_->read(*vram_gpa_ + m.vram_offset + uint64_t{y} * m.pitch, row));
        uint8_t* out = f.rgb.data() + size_t{y} * m.width * 3;
        // The guest's pixels are B, G, R, X in memory (red at bit 16 of a little-endian word).
        for (uint32_t x = 0; x < m.width; ++x) {
            out[3 * x] = row[4 * x + 2];
            out[3 * x + 1] = row[4 * x + 1];
            out[3 * x + 2] = row[4 * x];
        }
    }
    return f;
}

}  // namespace enlighten::video
