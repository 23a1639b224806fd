#include "devices/video/factory.hpp"

#include "devices/video/video.hpp"

namespace enlighten::video {

Result<std::shared_ptr<vmbus::Device>> make_video(const DeviceConfig& cfg) {
    ENL_TRY_VOID(only_params(cfg, {"instance", "width", "height"}));
    VideoConfig c;
    c.instance_id = param(cfg, "instance");
    if (c.instance_id.empty()) c.instance_id = kDefaultInstance;
    if (vmbus::Guid::parse(c.instance_id.c_str()) == vmbus::Guid{})
        return fail(Errc::Invalid, "instance '{}' is not a GUID", c.instance_id);
    ENL_TRY(c.width, param_number(cfg, "width", 1024, kMinWidth, kMaxWidth));
    ENL_TRY(c.height, param_number(cfg, "height", 768, kMinHeight, kMaxHeight));
    return std::make_shared<VideoDevice>(std::move(c));
}

}  // namespace enlighten::video
