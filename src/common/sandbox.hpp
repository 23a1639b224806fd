// The VMM's confinement (docs/security.md): seccomp-bpf filters per thread kind, built with
// Debian's libseccomp, plus no-new-privs, closing inherited descriptors and dropping to a
// user after setup (`enlighten run --seccomp on|log|off --user NAME|UID[:GID]`).
//
//   sandbox::configure({.mode = sandbox::Mode::On});    // main(), before any thread exists
//   sandbox::install_process();                         // main(), still single-threaded
//   ... setup: /dev/kvm, images, taps, sockets; threads start and call enter(their kind) ...
//   sandbox::drop_user(user);                           // main(), after setup
//   sandbox::enter(sandbox::ThreadKind::EventLoop);      // main(), before the guest runs
//
// Filters stack: every thread runs under the process filter (installed on the main thread
// before the first thread starts, so every thread, library threads included, inherits it),
// and under its own kind's filter, which it loads itself at its start with enter(). A thread
// inherits the filters of the thread that created it, so a kind that creates threads allows
// what those threads need (they then narrow themselves). Which kind allows what, and why:
// src/common/sandbox.cpp.
//
// A forbidden system call: in Mode::On the thread gets SIGSYS (SECCOMP_RET_TRAP); a handler
// writes "enlighten: seccomp: forbidden system call NR (NAME) on a thread of kind KIND" to stderr and
// makes the same call again, which the kernel answers by killing the process with SIGSYS.
// In Mode::Log the call runs and the kernel logs it (audit, or dmesg: "type=1326 ...
// syscall=NR"). In Mode::Off nothing is installed.
//
// Threads: configure, install_process, close_inherited_fds and drop_user on the main thread
// only, configure and install_process before any other thread exists (drop_user may run with
// threads: glibc makes every thread change its ids); enter from any thread, for itself, at
// any time after configure (before it, and in Mode::Off, it does nothing). Nothing here
// blocks or takes a lock (each enter() builds its filter anew: about a millisecond, once per
// thread), so callers may hold any lock.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"

namespace enlighten::sandbox {

enum class Mode { Off, Log, On };

// What a thread does, hence which filter it runs under (sandbox.cpp lists each one's calls).
enum class ThreadKind {
    Process,    // the baseline: the main thread from before setup on, and every thread under it
    EventLoop,  // the main thread after setup: the VM's event loop, boots, reboots
    Vcpu,       // a vCPU thread: KVM_RUN and the device emulation it runs
    ApiIo,      // the API's event loop thread (enl-api-io): accept, read, write
    ApiWorker,  // an API worker: hot-add, checkpoints, file copy, screenshots, memory
    DiskIo,     // a disk queue thread (storvsp channel) and its blocking helper
    NetIo,      // a NIC queue thread, the slirp thread, the tap reader
};

std::string_view kind_name(ThreadKind kind);
std::optional<Mode> parse_mode(std::string_view text);  // "on", "log" or "off"
std::string_view mode_name(Mode mode);

// What a sanitizer build (ASan/UBSan, TSan) defaults to: Log (their runtimes make calls the
// filters forbid: LeakSanitizer's ptrace at exit, the symbolizer's fork and exec). Else On.
Mode default_mode();
// True in a build with a sanitizer runtime (then the filters also allow what that runtime
// needs at exit: see sandbox.cpp).
bool sanitizer_build();

struct Options {
    Mode mode = Mode::Off;
    // The test hook (--seccomp-test-forbidden KIND): a thread of this kind makes a forbidden
    // call (personality(0xffffffff), a harmless query) right after it loads its filter.
    std::optional<ThreadKind> test_forbidden;
};

// Sets the mode for every later call; in Mode::On installs the SIGSYS handler. Main thread,
// before any other thread exists.
void configure(const Options& options);
Mode mode();

// prctl(PR_SET_NO_NEW_PRIVS): whatever the mode (no exec'd program gains privileges).
Result<> set_no_new_privs();
// Closes every descriptor above 2 (close_range): what a parent left open by mistake. Call it
// before opening anything.
void close_inherited_fds();

// Loads the process filter on the calling (main) thread. Before any other thread exists, so
// that every thread inherits it.
Result<> install_process();
// Loads `kind`'s filter on the calling thread (on top of what it inherited); then runs the
// test hook if it names this kind. Errors are logged, and in Mode::On end the process (a
// thread that cannot confine itself must not run on).
void enter(ThreadKind kind);

// Builds the filter of `kind` for `mode` and loads it on the calling thread. For tests (in a
// forked child); enter() is this with the configured mode.
Result<> load(ThreadKind kind, Mode mode);

// The forbidden call of the test hook: personality(0xffffffff) (asks the persona, changes
// nothing). Returns its result (in Mode::Log, or with no filter).
long forbidden_call_for_testing();

// --user NAME|UID[:GID]: resolved before the filters are installed (NSS may load modules).
struct User {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string name;  // for messages
};
Result<User> resolve_user(const std::string& spec);
// setgroups(none), setresgid, setresuid; checks the result (and that root cannot come back).
Result<> drop_user(const User& user);

// True in the ASan/UBSan and TSan builds: every filter also allows what the sanitizer
// runtimes do (opening files, clone without CLONE_THREAD for LeakSanitizer, ptrace...), so
// some calls the filters forbid elsewhere pass there (the unit tests say which).
[[nodiscard]] bool widened_for_sanitizers();

}  // namespace enlighten::sandbox
