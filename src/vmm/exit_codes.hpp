// Exit status of `enlighten run`. Documented in README.md and docs/cli.md; keep them in sync.
#pragma once

namespace enlighten::exit_code {

inline constexpr int kPowerOff = 0;      // the guest powered off (ACPI S5)
inline constexpr int kError = 1;         // bad configuration or input, or a VMM failure
inline constexpr int kUsage = 2;         // command-line syntax error
inline constexpr int kReset = 3;         // the guest reset itself and --on-reboot=exit
inline constexpr int kGuestCrash = 4;    // the guest reported a crash (Hyper-V crash MSRs)
inline constexpr int kForcedOff = 5;     // the management API powered the VM off (hard), e.g. after a
                                         // graceful shutdown timed out
// Stopped by a signal: 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
inline constexpr int kSignalBase = 128;

}  // namespace enlighten::exit_code
