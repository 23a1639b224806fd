#include "devices/video/png.hpp"

#include <png.h>

namespace enlighten::video {

Result<std::string> encode_png(const Frame& frame) {
    if (frame.width == 0 || frame.height == 0 || frame.rgb.size() != size_t{frame.width} * frame.height * 3)
        return fail(Errc::Invalid, "a {}x{} frame with {} bytes of pixels", frame.width, frame.height, frame.rgb.size());
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    image.width = frame.width;
    image.height = frame.height;
    image.format = PNG_FORMAT_RGB;
    const auto stride = static_cast<png_int_32>(frame.width * 3);
    // First the size, then the image.
    png_alloc_size_t size = 0;
    std::string out;
    bool ok = png_image_write_to_memory(&image, nullptr, &size, 0, frame.rgb.data(), stride, nullptr) != 0;
    if (ok) {
        out.resize(size);
        ok = png_image_write_to_memory(&image, out.data(), &size, 0, frame.rgb.data(), stride, nullptr) != 0;
    }
    if (!ok) {
        const std::string why = image.message;
        png_image_free(&image);
        return fail("PNG encoding: {}", why);
    }
    out.resize(size);
    return out;
}

}  // namespace enlighten::video
