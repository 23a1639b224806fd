// Where the guest's serial console goes: the VMM's stdio (input too), a file, or nowhere.
// Output is line-buffered: a full line is written at once; a partial line (a prompt) is
// written by the event loop shortly after the guest stops writing.
//
// Threads: write() from vCPU threads (the UART), flush() and ack_flush_event() from the VM's
// loop; one mutex, a leaf.
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

    // Called by the UART for every transmitted byte (any vCPU thread).
    void write(uint8_t byte);
    // Writes whatever is buffered.
    void flush();

    // An eventfd that becomes readable when a partial line waits to be flushed.
    [[nodiscard]] int flush_fd() const { return flush_event_.get(); }
    void ack_flush_event();
    // The fd guest input is read from (-1: no input).
    [[nodiscard]] int input_fd() const { return input_fd_; }

private:
    Console() = default;
    void write_out(std::span<const uint8_t> bytes);

    std::mutex mu_;
    std::vector<uint8_t> buffer_;
    bool flush_pending_ = false;
    int output_fd_ = -1;
    int input_fd_ = -1;
    UniqueFd file_;
    UniqueFd flush_event_;
    bool restore_tty_ = false;
    termios saved_tty_{};
};

}  // namespace enlighten
