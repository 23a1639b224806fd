// PNG encoding of a frame (screenshots), with libpng's simplified write API (Debian's
// libpng-dev, linked statically like the other C libraries of the VMM).
//
// Threads: a pure function; any thread.
#pragma once

#include <cstdint>
#include <string>

#include "common/result.hpp"
#include "devices/video/video.hpp"

namespace enlighten::video {

// An 8-bit RGB PNG of `frame`. Errc::Invalid for an empty frame or one whose pixel buffer
// does not match its size.
Result<std::string> encode_png(const Frame& frame);

}  // namespace enlighten::video
