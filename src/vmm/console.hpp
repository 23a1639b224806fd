// Where the guest's serial console goes: the VMM's stdio (input too), a file, or nowhere.
// Output is line-buffered: a full line is written at once; a partial line (a prompt) is
// written by the event loop shortly after the guest stops writing.
//
// Output never blocks (reliability review A8): a terminal or pipe that does not take bytes
// leaves them buffered, up to kMaxBuffered; beyond that the guest's bytes are dropped and
// counted (dropped()), and the loop retries every flush delay. So a stalled reader can hold
// neither a vCPU (the UART) nor the VM's loop (flush), and SIGTERM is still read. Only the
// destructor waits for the reader, at most kExitDrainMs.
//
// Threads: write() from vCPU threads (the UART), flush() and ack_flush_event() from the VM's
// loop, dropped() from any thread; one mutex, a leaf. Nothing here blocks.
#pragma once

#include <termios.h>

#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "common/result.hpp"

namespace enlighten {

struct ConsoleConfig {
    enum class Mode { Stdio, File, Off };
    Mode mode = Mode::Stdio;
    std::string path;
};

Result<ConsoleConfig> parse_console(std::string_view spec);

class Console {
public:
    static Result<std::unique_ptr<Console>> create(const ConsoleConfig& cfg);
    ~Console();

    static constexpr size_t kMaxBuffered = 64 * 1024;
    static constexpr int kExitDrainMs = 2000;

    // Called by the UART for every transmitted byte (any vCPU thread).
    void write(uint8_t byte);
    // Writes whatever is buffered and the output takes now; what it does not take waits for
    // the next flush (the flush event is raised again).
    void flush();
    // Guest bytes dropped because the output did not take them (the buffer was full).
    [[nodiscard]] uint64_t dropped() const;

    // An eventfd that becomes readable when a partial line waits to be flushed.
    [[nodiscard]] int flush_fd() const { return flush_event_.get(); }
    void ack_flush_event();
    // The fd guest input is read from (-1: no input).
    [[nodiscard]] int input_fd() const { return input_fd_; }

private:
    Console() = default;
    // Writes from buffer_ what the output takes without blocking (waiting up to wait_ms for
    // it to take more); true when buffer_ is empty afterwards.
    bool write_out(int wait_ms);
    void raise_flush_event();

    mutable std::mutex mu_;
    std::vector<uint8_t> buffer_;
    size_t sent_ = 0;  // bytes at the front of buffer_ already written
    bool flush_pending_ = false;
    uint64_t dropped_ = 0;
    int output_fd_ = -1;  // under mu_; -1 once the output is gone (reliability review B2)
    int input_fd_ = -1;
    UniqueFd file_;
    UniqueFd flush_event_;
    bool restore_tty_ = false;
    termios saved_tty_{};
};

}  // namespace enlighten
