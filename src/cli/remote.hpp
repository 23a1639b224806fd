// `enlighten remote --api-socket PATH <command> [args]`: a client for the management API
// (docs/api.md). Prints the JSON of GET-like commands; exits 0 on success, 1 with one line
// `enlighten: error: ...` otherwise.
// Threads: the CLI's main thread only; each call blocks on the API socket (with the timeout
// given), no locks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace enlighten::cli {

struct RemoteOptions {
    std::string api_socket;
    std::string command;  // the chosen subcommand: "ping", "info", "kvp-get", ...
    uint32_t timeout_s = 0;  // 0: not given
    std::string reason;
    std::string pool;
    std::string key;
    std::string value;
    // add-disk / remove-disk
    std::string disk_path;
    std::string disk_id;
    std::string disk_format;
    std::string disk_serial;
    std::string disk_controller;
    bool disk_readonly = false;
    bool disk_writethrough = false;
    // net-link
    std::string nic_id;
    std::string link;  // "up" | "down"
    // memory-set: sizes as given ("512M", or bytes); empty: not given. target "auto" drops
    // the explicit target.
    std::string mem_target;
    std::string mem_min;
    std::string mem_max;
    int64_t mem_buffer = -1;  // -1: not given
    std::string mem_dynamic;  // "on" | "off" | ""
    // integration-services [enable|disable NAME]
    std::string service_action;  // "" (list), "enable", "disable"
    std::string service_name;
    // copy-file
    std::string copy_source;
    std::string copy_destination;
    bool copy_overwrite = false;
    bool copy_create_path = false;
    // checkpoint
    std::string checkpoint_name;
    bool checkpoint_crash = false;
    uint32_t freeze_timeout_s = 0;  // 0: the server's default
    // screenshot: where the PNG goes ("-": stdout)
    std::string file;
    // send-keys
    std::string text;
    std::vector<std::string> keys;
    // pointer
    uint32_t x = 0, y = 0;
    std::vector<std::string> buttons;
    std::string click;
    int32_t wheel = 0;
};

// Adds the `remote` subcommand and its commands to `app`, filling `opts` when parsed.
CLI::App* add_remote_command(CLI::App& app, RemoteOptions& opts);

// Runs the parsed command; returns the exit status.
int run_remote(const RemoteOptions& opts);

}  // namespace enlighten::cli
