// From what a user types to what the synthetic keyboard sends: scan-code set 1 make codes
// with E0/E1 prefixes (the only set Linux's hyperv-keyboard + atkbd accept,
// contract-input-video §2.3). Text is typed on a US layout; keys are named, xdotool-style
// combinations joined by '+' ("ctrl+alt+delete", "shift+f10", "Return", "kp_enter", "pause").
// Every key pressed is released again, in reverse order, so nothing stays held.
//
// Threads: pure functions.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace enlighten::input {

// One key as the keyboard sends it.
struct KeyEvent {
    uint8_t code = 0;  // set-1 make code, 0x01-0x7F
    bool e0 = false;
    bool e1 = false;
    bool release = false;
    bool operator==(const KeyEvent&) const = default;
};

// A key: its make code and prefix.
struct ScanKey {
    uint8_t code = 0;
    bool e0 = false;
    bool pause = false;  // Pause: E1 1D 45, sent as two events (contract-input-video §2.3)
};

// The key named `name` (case-insensitive; aliases such as "enter"/"return"/"ret",
// "ctrl"/"control"; a single printable character names its unshifted key on a US layout).
// Errc::Invalid for a name we do not know.
Result<ScanKey> key_by_name(std::string_view name);

// The key of an X keysym, as VNC clients send them (RFB KeyEvent): Latin-1 characters are
// the key that types them on a US layout (the client sends Shift itself), the others are
// function, cursor, keypad and modifier keys. Errc::Invalid for a keysym with no key here.
Result<ScanKey> key_by_keysym(uint32_t keysym);

// The events of one key going down (or up): one event, or two for Pause.
std::vector<KeyEvent> key_events(const ScanKey& key, bool release);

// The make and break events of pressing `combination` ("ctrl+alt+delete": each key down in
// order, then up in reverse). At most 8 keys. Errc::Invalid names the key it does not know.
Result<std::vector<KeyEvent>> combination_events(std::string_view combination);

// The events of typing `text` on a US layout: printable ASCII, '\n' (Enter), '\t' (Tab) and
// '\b' (Backspace); Shift around the characters that need it. Errc::Invalid names the first
// character that has no key.
Result<std::vector<KeyEvent>> text_events(std::string_view text);

}  // namespace enlighten::input
