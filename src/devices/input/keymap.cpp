#include "devices/input/keymap.hpp"

#include <array>
#include <string>

namespace enlighten::input {

namespace {

struct Named {
    std::string_view name;
    uint8_t code;
    bool e0;
};

// Scan-code set 1 (the IBM PC/XT codes atkbd's translated set 2 expects; Linux keycodes are
// the same numbers for this block: KEY_ESC = 1, KEY_A = 30 = 0x1E).
constexpr Named kKeys[] = {
    {"esc", 0x01, false}, {"escape", 0x01, false},
    {"1", 0x02, false}, {"2", 0x03, false}, {"3", 0x04, false}, {"4", 0x05, false}, {"5", 0x06, false},
    {"6", 0x07, false}, {"7", 0x08, false}, {"8", 0x09, false}, {"9", 0x0a, false}, {"0", 0x0b, false},
    {"minus", 0x0c, false}, {"equal", 0x0d, false}, {"backspace", 0x0e, false}, {"tab", 0x0f, false},
    {"q", 0x10, false}, {"w", 0x11, false}, {"e", 0x12, false}, {"r", 0x13, false}, {"t", 0x14, false},
    {"y", 0x15, false}, {"u", 0x16, false}, {"i", 0x17, false}, {"o", 0x18, false}, {"p", 0x19, false},
    {"bracketleft", 0x1a, false}, {"bracketright", 0x1b, false},
    {"enter", 0x1c, false}, {"return", 0x1c, false}, {"ret", 0x1c, false},
    {"ctrl", 0x1d, false}, {"control", 0x1d, false}, {"ctrl_l", 0x1d, false}, {"control_l", 0x1d, false},
    {"a", 0x1e, false}, {"s", 0x1f, false}, {"d", 0x20, false}, {"f", 0x21, false}, {"g", 0x22, false},
    {"h", 0x23, false}, {"j", 0x24, false}, {"k", 0x25, false}, {"l", 0x26, false},
    {"semicolon", 0x27, false}, {"apostrophe", 0x28, false}, {"grave", 0x29, false},
    {"shift", 0x2a, false}, {"shift_l", 0x2a, false}, {"backslash", 0x2b, false},
    {"z", 0x2c, false}, {"x", 0x2d, false}, {"c", 0x2e, false}, {"v", 0x2f, false}, {"b", 0x30, false},
    {"n", 0x31, false}, {"m", 0x32, false}, {"comma", 0x33, false}, {"period", 0x34, false}, {"dot", 0x34, false},
    {"slash", 0x35, false}, {"shift_r", 0x36, false}, {"kp_multiply", 0x37, false},
    {"alt", 0x38, false}, {"alt_l", 0x38, false}, {"space", 0x39, false}, {"spc", 0x39, false},
    {"caps_lock", 0x3a, false}, {"capslock", 0x3a, false},
    {"f1", 0x3b, false}, {"f2", 0x3c, false}, {"f3", 0x3d, false}, {"f4", 0x3e, false}, {"f5", 0x3f, false},
    {"f6", 0x40, false}, {"f7", 0x41, false}, {"f8", 0x42, false}, {"f9", 0x43, false}, {"f10", 0x44, false},
    {"num_lock", 0x45, false}, {"numlock", 0x45, false}, {"scroll_lock", 0x46, false}, {"scrolllock", 0x46, false},
    {"kp_7", 0x47, false}, {"kp_8", 0x48, false}, {"kp_9", 0x49, false}, {"kp_subtract", 0x4a, false},
    {"kp_minus", 0x4a, false}, {"kp_4", 0x4b, false}, {"kp_5", 0x4c, false}, {"kp_6", 0x4d, false},
    {"kp_add", 0x4e, false}, {"kp_plus", 0x4e, false}, {"kp_1", 0x4f, false}, {"kp_2", 0x50, false},
    {"kp_3", 0x51, false}, {"kp_0", 0x52, false}, {"kp_decimal", 0x53, false}, {"kp_dot", 0x53, false},
    {"less", 0x56, false},  // the 102nd key (between left Shift and Z on ISO keyboards)
    {"f11", 0x57, false}, {"f12", 0x58, false},
    // E0-prefixed keys.
    {"kp_enter", 0x1c, true}, {"ctrl_r", 0x1d, true}, {"control_r", 0x1d, true}, {"kp_divide", 0x35, true},
    {"print", 0x37, true}, {"sysrq", 0x37, true}, {"printscreen", 0x37, true},
    {"alt_r", 0x38, true}, {"altgr", 0x38, true},
    {"home", 0x47, true}, {"up", 0x48, true}, {"page_up", 0x49, true}, {"pgup", 0x49, true}, {"prior", 0x49, true},
    {"left", 0x4b, true}, {"right", 0x4d, true}, {"end", 0x4f, true}, {"down", 0x50, true},
    {"page_down", 0x51, true}, {"pgdn", 0x51, true}, {"next", 0x51, true},
    {"insert", 0x52, true}, {"delete", 0x53, true}, {"del", 0x53, true},
    {"super", 0x5b, true}, {"super_l", 0x5b, true}, {"meta", 0x5b, true}, {"meta_l", 0x5b, true},
    {"win", 0x5b, true}, {"super_r", 0x5c, true}, {"meta_r", 0x5c, true}, {"menu", 0x5d, true},
    {"compose", 0x5d, true},
};

constexpr uint8_t kShift = 0x2a;
constexpr size_t kMaxCombination = 8;

// US layout: the key of each printable ASCII character (0x20-0x7E) and whether it needs Shift.
struct Typed {
    uint8_t code;
    bool shift;
};
constexpr std::array<Typed, 95> kAscii{{
    {0x39, false},                                                    // ' '
    {0x02, true},  {0x28, true},  {0x04, true},  {0x05, true},        // ! " # $
    {0x06, true},  {0x08, true},  {0x28, false}, {0x0a, true},        // % & ' (
    {0x0b, true},  {0x09, true},  {0x0d, true},  {0x33, false},       // ) * + ,
    {0x0c, false}, {0x34, false}, {0x35, false},                      // - . /
    {0x0b, false}, {0x02, false}, {0x03, false}, {0x04, false}, {0x05, false},  // 0-4
    {0x06, false}, {0x07, false}, {0x08, false}, {0x09, false}, {0x0a, false},  // 5-9
    {0x27, true},  {0x27, false}, {0x33, true},  {0x0d, false},       // : ; < =
    {0x34, true},  {0x35, true},  {0x03, true},                       // > ? @
    {0x1e, true},  {0x30, true},  {0x2e, true},  {0x20, true},  {0x12, true},  {0x21, true},  // A-F
    {0x22, true},  {0x23, true},  {0x17, true},  {0x24, true},  {0x25, true},  {0x26, true},  // G-L
    {0x32, true},  {0x31, true},  {0x18, true},  {0x19, true},  {0x10, true},  {0x13, true},  // M-R
    {0x1f, true},  {0x14, true},  {0x16, true},  {0x2f, true},  {0x11, true},  {0x2d, true},  // S-X
    {0x15, true},  {0x2c, true},                                      // Y Z
    {0x1a, false}, {0x2b, false}, {0x1b, false}, {0x07, true},        // [ \ ] ^
    {0x0c, true},  {0x29, false},                                     // _ `
    {0x1e, false}, {0x30, false}, {0x2e, false}, {0x20, false}, {0x12, false}, {0x21, false},  // a-f
    {0x22, false}, {0x23, false}, {0x17, false}, {0x24, false}, {0x25, false}, {0x26, false},  // g-l
    {0x32, false}, {0x31, false}, {0x18, false}, {0x19, false}, {0x10, false}, {0x13, false},  // m-r
    {0x1f, false}, {0x14, false}, {0x16, false}, {0x2f, false}, {0x11, false}, {0x2d, false},  // s-x
    {0x15, false}, {0x2c, false},                                     // y z
    {0x1a, true},  {0x2b, true},  {0x1b, true},  {0x29, true},        // { | } ~
}};

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

void press(std::vector<KeyEvent>& out, const ScanKey& k, bool release) {
    if (k.pause) {
        // E1 1D 45 / E1 9D C5: atkbd swallows the E1 1D and maps 45 to KEY_PAUSE.
        out.push_back({0x1d, false, true, release});
        out.push_back({0x45, false, false, release});
        return;
    }
    out.push_back({k.code, k.e0, false, release});
}

}  // namespace

Result<ScanKey> key_by_name(std::string_view name) {
    const std::string n = lower(name);
    if (n == "pause" || n == "break") return ScanKey{0x45, false, true};
    for (const auto& k : kKeys)
        if (k.name == n) return ScanKey{k.code, k.e0, false};
    if (name.size() == 1 && name[0] >= 0x20 && name[0] <= 0x7e)
        return ScanKey{kAscii[static_cast<size_t>(name[0] - 0x20)].code, false, false};
    return fail(Errc::Invalid, "unknown key '{}'", name);
}

Result<ScanKey> key_by_keysym(uint32_t keysym) {
    if (keysym >= 0x20 && keysym <= 0x7e) return ScanKey{kAscii[keysym - 0x20].code, false, false};
    struct Sym {
        uint32_t keysym;
        uint8_t code;
        bool e0;
    };
    // X11 keysymdef.h.
    static constexpr Sym kSyms[] = {
        {0xff08, 0x0e, false}, {0xff09, 0x0f, false}, {0xff0d, 0x1c, false}, {0xff14, 0x46, false},
        {0xff15, 0x37, true},  {0xff1b, 0x01, false}, {0xffff, 0x53, true},  {0xff50, 0x47, true},
        {0xff51, 0x4b, true},  {0xff52, 0x48, true},  {0xff53, 0x4d, true},  {0xff54, 0x50, true},
        {0xff55, 0x49, true},  {0xff56, 0x51, true},  {0xff57, 0x4f, true},  {0xff61, 0x37, true},
        {0xff63, 0x52, true},  {0xff67, 0x5d, true},  {0xff7f, 0x45, false}, {0xff8d, 0x1c, true},
        {0xff95, 0x47, false}, {0xff96, 0x4b, false}, {0xff97, 0x48, false}, {0xff98, 0x4d, false},
        {0xff99, 0x50, false}, {0xff9a, 0x49, false}, {0xff9b, 0x51, false}, {0xff9c, 0x4f, false},
        {0xff9d, 0x4c, false}, {0xff9e, 0x52, false}, {0xff9f, 0x53, false}, {0xffaa, 0x37, false},
        {0xffab, 0x4e, false}, {0xffad, 0x4a, false}, {0xffae, 0x53, false}, {0xffaf, 0x35, true},
        {0xffb0, 0x52, false}, {0xffb1, 0x4f, false}, {0xffb2, 0x50, false}, {0xffb3, 0x51, false},
        {0xffb4, 0x4b, false}, {0xffb5, 0x4c, false}, {0xffb6, 0x4d, false}, {0xffb7, 0x47, false},
        {0xffb8, 0x48, false}, {0xffb9, 0x49, false}, {0xffbe, 0x3b, false}, {0xffbf, 0x3c, false},
        {0xffc0, 0x3d, false}, {0xffc1, 0x3e, false}, {0xffc2, 0x3f, false}, {0xffc3, 0x40, false},
        {0xffc4, 0x41, false}, {0xffc5, 0x42, false}, {0xffc6, 0x43, false}, {0xffc7, 0x44, false},
        {0xffc8, 0x57, false}, {0xffc9, 0x58, false}, {0xffe1, 0x2a, false}, {0xffe2, 0x36, false},
        {0xffe3, 0x1d, false}, {0xffe4, 0x1d, true},  {0xffe5, 0x3a, false}, {0xffe7, 0x5b, true},
        {0xffe8, 0x5c, true},  {0xffe9, 0x38, false}, {0xffea, 0x38, true},  {0xffeb, 0x5b, true},
        {0xffec, 0x5c, true},  {0xfe03, 0x38, true},
    };
    if (keysym == 0xff13) return ScanKey{0x45, false, true};  // Pause
    for (const auto& s : kSyms)
        if (s.keysym == keysym) return ScanKey{s.code, s.e0, false};
    return fail(Errc::Invalid, "keysym {:#x} has no key here", keysym);
}

std::vector<KeyEvent> key_events(const ScanKey& key, bool release) {
    std::vector<KeyEvent> out;
    press(out, key, release);
    return out;
}

Result<std::vector<KeyEvent>> combination_events(std::string_view combination) {
    std::vector<ScanKey> keys;
    // '+' joins keys; a '+' right after a separator (or first) is the key '+' itself
    // ("ctrl++" presses Ctrl and the '=' key, whose unshifted character '+' is not).
    size_t start = 0;
    while (start <= combination.size()) {
        size_t end = combination.find('+', start == combination.size() ? start : start + 1);
        if (end == std::string_view::npos) end = combination.size();
        const std::string_view name = combination.substr(start, end - start);
        if (name.empty()) return fail(Errc::Invalid, "empty key name in '{}'", combination);
        ENL_TRY(ScanKey k, key_by_name(name));
        keys.push_back(k);
        if (keys.size() > kMaxCombination)
            return fail(Errc::Invalid, "'{}' presses more than {} keys at once", combination, kMaxCombination);
        if (end == combination.size()) break;
        start = end + 1;
    }
    std::vector<KeyEvent> out;
    for (const auto& k : keys) press(out, k, false);
    for (auto it = keys.rbegin(); it != keys.rend(); ++it) press(out, *it, true);
    return out;
}

Result<std::vector<KeyEvent>> text_events(std::string_view text) {
    std::vector<KeyEvent> out;
    for (size_t i = 0; i < text.size(); ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        Typed t{};
        if (c == '\n' || c == '\r') t = {0x1c, false};
        else if (c == '\t') t = {0x0f, false};
        else if (c == '\b') t = {0x0e, false};
        else if (c >= 0x20 && c <= 0x7e) t = kAscii[c - 0x20];
        else return fail(Errc::Invalid, "character {:#04x} at {} has no key on a US keyboard", c, i);
        if (t.shift) out.push_back({kShift, false, false, false});
        out.push_back({t.code, false, false, false});
        out.push_back({t.code, false, false, true});
        if (t.shift) out.push_back({kShift, false, false, true});
    }
    return out;
}

}  // namespace enlighten::input
