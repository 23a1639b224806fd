#include "common/size.hpp"

#include <cctype>
#include <limits>

namespace enlighten {

Result<uint64_t> parse_size(std::string_view text) {
    std::string_view s = text;
    if (s.empty()) return fail("empty size");
    uint64_t value = 0;
    size_t i = 0;
    for (; i < s.size() && std::isdigit(static_cast<unsigned char>(s[i])); ++i) {
        const uint64_t digit = static_cast<uint64_t>(s[i] - '0');
        if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10)
            return fail("size '{}' is too large", text);
        value = value * 10 + digit;
    }
    if (i == 0) return fail("size '{}' does not start with a number", text);
    std::string_view suffix = s.substr(i);
    uint64_t unit = 1;
    if (!suffix.empty()) {
        switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
            case 'K': unit = KiB; break;
            case 'M': unit = MiB; break;
            case 'G': unit = GiB; break;
            case 'T': unit = 1024 * GiB; break;
            case 'B': unit = 1; break;
            default: return fail("size '{}' has an unknown unit (use K, M, G or T)", text);
        }
        std::string_view rest = suffix.substr(1);
        if (unit != 1 && (rest == "iB" || rest == "IB" || rest == "ib" || rest == "B" || rest == "b"))
            rest = {};
        if (!rest.empty()) return fail("size '{}' has an unknown unit (use K, M, G or T)", text);
    }
    if (value > std::numeric_limits<uint64_t>::max() / unit) return fail("size '{}' is too large", text);
    return value * unit;
}

}  // namespace enlighten
