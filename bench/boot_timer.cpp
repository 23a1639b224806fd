// boot_timer: run a VMM (or any command), watch its output, and time it.
//
//   boot_timer [options] -- COMMAND [ARGS...]
//
// The command's stdout and stderr go into one pipe that is read line by line. With
// CLOCK_MONOTONIC, measured from just before fork():
//   marker_ms   the first line containing --marker (default "ENLIGHTEN-INIT") appeared
//   end_ms      the first line containing --end-marker appeared (optional)
//   exit_ms     the process exited (seen through a pidfd, so not delayed by polling)
// and, with --guest-mem SIZE, the memory of the process (which must be the VMM itself:
// run it as the direct child, not through a shell or `timeout`) from /proc/<pid>/smaps,
// sampled when the marker appears (or --mem-delay-ms after it):
//   rss_kib        total Rss of all mappings
//   pss_kib        total Pss (shared library pages divided among their users)
//   uss_kib        total Private_Clean + Private_Dirty (pages no other process maps)
//   guest_rss_kib  Rss of the guest-RAM mapping(s), chosen by the rule below
//   overhead_kib   rss_kib - guest_rss_kib: what the VMM costs beyond the guest's own RAM
//   overhead_thp_kib  the part of overhead_kib in transparent huge pages (AnonHugePages):
//                  with THP "always", a heap or stack that crosses into a 2 MiB huge page
//                  adds 2 MiB at once, so the overhead moves in 2 MiB steps between runs
//
// Guest-RAM rule: the candidates are the private or shared *anonymous* mappings (no path,
// "[anon:...]", "/memfd:...", "/dev/zero", "/SYSV...") that are readable and writable and
// at least 1 MiB large. Take them largest first until their sizes add up to at least the
// guest memory size. A VMM that maps guest RAM as one block (QEMU's pc.ram, Enlighten
// below 3 GiB) gives exactly that block, even if the kernel merged it with a neighbour or
// QEMU rounded it up; a VMM that splits RAM around the PCI hole (below/above 4 GiB) gives
// both parts; heaps, stacks and thread arenas are far smaller than guest RAM and are
// never needed to reach the size. guest_maps and guest_vsz_kib tell what was picked.
//
// Output: the command's output is dropped (or copied to stdout with --passthrough, each
// line prefixed with "[ms] " with --timestamps, or to a file with --log), then one line
// on stdout:
//   BOOT-TIMER marker_ms=... end_ms=... exit_ms=... rc=... timed_out=0|1 rss_kib=...
//              pss_kib=... uss_kib=... guest_rss_kib=... overhead_kib=... overhead_thp_kib=...
//              guest_maps=... guest_vsz_kib=... mem_ms=... start_mono_ms=...
// start_mono_ms is the CLOCK_MONOTONIC time (ms) of the fork, the zero of every *_ms, so
// that other clocks on CLOCK_MONOTONIC (ftrace with trace_clock "mono") can be placed on
// the same axis.
// A value that was not measured is "NA". rc is the exit status, or 128+N for signal N.
// Each marker hit is also reported as "BOOT-TIMER-MARKER <ms> <the line>" before it.
//
// Exit status: 0 when the marker was seen and the command exited by itself (whatever its
// status), 1 otherwise (no marker, timeout, command not found), 2 for a usage error.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr uint64_t kMinGuestMapping = 1ULL << 20;

double now_ms() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

std::string fmt_ms(std::optional<double> v) {
    if (!v) return "NA";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f", *v);
    return buf;
}

std::string fmt_kib(std::optional<uint64_t> v) { return v ? std::to_string(*v) : "NA"; }

[[noreturn]] void usage(const char* msg) {
    if (msg != nullptr) std::fprintf(stderr, "boot_timer: %s\n", msg);
    std::fprintf(stderr,
                 "usage: boot_timer [--marker TEXT] [--end-marker TEXT] [--guest-mem SIZE]\n"
                 "                  [--mem-delay-ms N] [--timeout SECONDS] [--passthrough]\n"
                 "                  [--timestamps] [--log FILE] -- COMMAND [ARGS...]\n"
                 "SIZE: bytes, or a number with K, M or G (binary units), e.g. 512M.\n");
    std::exit(2);
}

std::optional<uint64_t> parse_size(std::string_view s) {
    if (s.empty()) return std::nullopt;
    uint64_t value = 0;
    size_t i = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        if (value > (UINT64_MAX - 9) / 10) return std::nullopt;
        value = value * 10 + static_cast<uint64_t>(s[i] - '0');
    }
    if (i == 0) return std::nullopt;
    std::string_view suffix = s.substr(i);
    unsigned shift = 0;
    if (suffix.empty() || suffix == "B") shift = 0;
    else if (suffix == "K" || suffix == "k" || suffix == "KiB") shift = 10;
    else if (suffix == "M" || suffix == "m" || suffix == "MiB") shift = 20;
    else if (suffix == "G" || suffix == "g" || suffix == "GiB") shift = 30;
    else return std::nullopt;
    if (shift != 0 && value > (UINT64_MAX >> shift)) return std::nullopt;
    return value << shift;
}

struct Options {
    std::string marker = "ENLIGHTEN-INIT";
    std::string end_marker;
    std::optional<uint64_t> guest_mem;
    double mem_delay_ms = 0;
    double timeout_s = 300;
    bool passthrough = false;
    bool timestamps = false;
    std::string log_path;
    std::vector<char*> argv;  // the command, null-terminated
};

Options parse_args(int argc, char** argv) {
    Options o;
    int i = 1;
    auto value = [&](const char* name) -> std::string {
        if (i + 1 >= argc) usage((std::string(name) + " needs a value").c_str());
        return argv[++i];
    };
    for (; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--") {
            ++i;
            break;
        }
        if (a == "--marker") o.marker = value("--marker");
        else if (a == "--end-marker") o.end_marker = value("--end-marker");
        else if (a == "--guest-mem") {
            auto v = parse_size(value("--guest-mem"));
            if (!v || *v == 0) usage("bad --guest-mem size");
            o.guest_mem = v;
        } else if (a == "--mem-delay-ms") {
            char* end = nullptr;
            std::string v = value("--mem-delay-ms");
            o.mem_delay_ms = std::strtod(v.c_str(), &end);
            if (end == v.c_str() || *end != '\0' || o.mem_delay_ms < 0) usage("bad --mem-delay-ms");
        } else if (a == "--timeout") {
            char* end = nullptr;
            std::string v = value("--timeout");
            o.timeout_s = std::strtod(v.c_str(), &end);
            if (end == v.c_str() || *end != '\0' || o.timeout_s <= 0) usage("bad --timeout");
        } else if (a == "--passthrough") o.passthrough = true;
        else if (a == "--timestamps") o.passthrough = o.timestamps = true;
        else if (a == "--log") o.log_path = value("--log");
        else if (a == "-h" || a == "--help") usage(nullptr);
        else if (!a.empty() && a[0] == '-') usage(("unknown option " + std::string(a)).c_str());
        else break;  // the command starts here (the "--" is optional)
    }
    if (o.marker.empty()) usage("--marker must not be empty");
    for (; i < argc; ++i) o.argv.push_back(argv[i]);
    if (o.argv.empty()) usage("no command given");
    o.argv.push_back(nullptr);
    return o;
}

struct MemSample {
    uint64_t rss_kib = 0;
    uint64_t pss_kib = 0;
    uint64_t uss_kib = 0;  // Private_Clean + Private_Dirty
    uint64_t guest_rss_kib = 0;
    uint64_t guest_vsz_kib = 0;
    uint64_t thp_kib = 0;        // AnonHugePages of all mappings
    uint64_t guest_thp_kib = 0;  // ... of the guest-RAM mappings
    unsigned guest_maps = 0;
    double at_ms = 0;
};

struct Mapping {
    uint64_t size = 0;
    uint64_t rss_kib = 0;
    uint64_t thp_kib = 0;
    bool candidate = false;
};

bool is_anonymous_name(std::string_view name) {
    return name.empty() || name.starts_with("[anon:") || name.starts_with("/memfd:") ||
           name.starts_with("/dev/zero") || name.starts_with("/SYSV");
}

// A smaps header: "start-end perms offset dev inode [name]".
std::optional<Mapping> parse_header(const std::string& line) {
    unsigned long long start = 0, end = 0;
    char perms[8] = {};
    int name_at = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx %7s %*s %*s %*s %n", &start, &end, perms, &name_at) < 3)
        return std::nullopt;
    if (end < start) return std::nullopt;
    std::string_view name;
    if (name_at > 0 && static_cast<size_t>(name_at) <= line.size())
        name = std::string_view(line).substr(static_cast<size_t>(name_at));
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.remove_suffix(1);
    Mapping m;
    m.size = end - start;
    m.candidate = is_anonymous_name(name) && perms[0] == 'r' && perms[1] == 'w' &&
                  m.size >= kMinGuestMapping;
    return m;
}

std::optional<uint64_t> field_kib(const std::string& line, std::string_view key) {
    if (!line.starts_with(key)) return std::nullopt;
    return std::strtoull(line.c_str() + key.size(), nullptr, 10);
}

std::optional<MemSample> sample_memory(pid_t pid, uint64_t guest_mem, double t0) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
    if (!in) return std::nullopt;
    MemSample s;
    std::vector<Mapping> maps;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        const char c = line[0];
        const bool header = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
        if (header) {
            if (auto m = parse_header(line)) maps.push_back(*m);
            continue;
        }
        if (auto v = field_kib(line, "Rss:")) {
            s.rss_kib += *v;
            if (!maps.empty()) maps.back().rss_kib = *v;
        } else if (auto p = field_kib(line, "Pss:")) {
            s.pss_kib += *p;
        } else if (auto pc = field_kib(line, "Private_Clean:")) {
            s.uss_kib += *pc;
        } else if (auto pd = field_kib(line, "Private_Dirty:")) {
            s.uss_kib += *pd;
        } else if (auto h = field_kib(line, "AnonHugePages:")) {
            s.thp_kib += *h;
            if (!maps.empty()) maps.back().thp_kib = *h;
        }
    }
    s.at_ms = now_ms() - t0;
    if (maps.empty()) return std::nullopt;  // the process is gone (a zombie has no mappings)
    std::vector<Mapping> cands;
    for (const auto& m : maps)
        if (m.candidate) cands.push_back(m);
    std::ranges::sort(cands, [](const Mapping& a, const Mapping& b) { return a.size > b.size; });
    uint64_t covered = 0;
    for (const auto& m : cands) {
        if (covered >= guest_mem) break;
        covered += m.size;
        s.guest_rss_kib += m.rss_kib;
        s.guest_thp_kib += m.thp_kib;
        ++s.guest_maps;
    }
    s.guest_vsz_kib = covered >> 10;
    return s;
}

int pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

void write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Options opt = parse_args(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);

    FILE* log = nullptr;
    if (!opt.log_path.empty()) {
        log = std::fopen(opt.log_path.c_str(), "we");  // e: O_CLOEXEC, the VMM must not inherit it
        if (log == nullptr) {
            std::fprintf(stderr, "boot_timer: cannot write %s: %s\n", opt.log_path.c_str(),
                         std::strerror(errno));
            return 2;
        }
    }

    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) {
        std::perror("boot_timer: pipe");
        return 1;
    }
    // A pipe to report an exec failure: closed on a successful exec (CLOEXEC).
    int execpipe[2];
    if (::pipe2(execpipe, O_CLOEXEC) != 0) {
        std::perror("boot_timer: pipe");
        return 1;
    }

    std::fflush(stdout);
    const double t0 = now_ms();
    const pid_t pid = ::fork();
    if (pid < 0) {
        std::perror("boot_timer: fork");
        return 1;
    }
    if (pid == 0) {
        const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
        ::dup2(pipefd[1], STDOUT_FILENO);
        ::dup2(pipefd[1], STDERR_FILENO);
        ::execvp(opt.argv[0], opt.argv.data());
        const int err = errno;
        write_all(execpipe[1], reinterpret_cast<const char*>(&err), sizeof err);
        ::_exit(127);
    }
    ::close(pipefd[1]);
    ::close(execpipe[1]);
    int exec_errno = 0;
    if (::read(execpipe[0], &exec_errno, sizeof exec_errno) == static_cast<ssize_t>(sizeof exec_errno))
        std::fprintf(stderr, "boot_timer: cannot run %s: %s\n", opt.argv[0], std::strerror(exec_errno));
    ::close(execpipe[0]);

    const int out = pipefd[0];
    ::fcntl(out, F_SETFL, ::fcntl(out, F_GETFL) | O_NONBLOCK);
    const int pidfd = pidfd_open(pid);

    std::optional<double> marker_ms, end_ms, exit_ms;
    std::optional<MemSample> mem;
    bool mem_wanted = opt.guest_mem.has_value();
    bool timed_out = false;
    bool exited = false;
    bool pipe_open = true;
    int status = 0;
    std::string line;  // the current (incomplete) line
    std::vector<std::string> hits;  // "<ms> <line>" for the marker and end-marker lines
    bool marker_reported = false, end_reported = false;
    char last_byte = '\n';
    const double deadline = opt.timeout_s * 1e3;

    auto check_line = [&](bool complete) {
        // The marker may be seen before its line is complete; report the line later.
        const double t = now_ms() - t0;
        if (!marker_ms && line.find(opt.marker) != std::string::npos) marker_ms = t;
        if (!opt.end_marker.empty() && !end_ms && line.find(opt.end_marker) != std::string::npos)
            end_ms = t;
        if (complete) {
            const bool m1 = !marker_reported && line.find(opt.marker) != std::string::npos;
            const bool m2 = !end_reported && !opt.end_marker.empty() &&
                            line.find(opt.end_marker) != std::string::npos;
            if (m1 || m2) {
                std::string text = line;
                while (!text.empty() && (text.back() == '\r' || text.back() == '\n')) text.pop_back();
                hits.push_back(fmt_ms(m1 ? marker_ms : end_ms) + " " + text);
                marker_reported = marker_reported || m1;
                end_reported = end_reported || m2;
            }
        }
    };

    auto take_sample = [&]() {
        mem = sample_memory(pid, *opt.guest_mem, t0);
        mem_wanted = false;
    };

    auto drain = [&]() {
        char buf[65536];
        for (;;) {
            ssize_t n = ::read(out, buf, sizeof buf);
            if (n < 0) {
                if (errno == EINTR) continue;
                return;  // EAGAIN: nothing more for now
            }
            if (n == 0) {
                pipe_open = false;
                if (!line.empty()) {
                    check_line(true);
                    line.clear();
                }
                return;
            }
            const size_t len = static_cast<size_t>(n);
            if (opt.passthrough && !opt.timestamps) write_all(STDOUT_FILENO, buf, len);
            if (opt.passthrough && opt.timestamps) {
                // "[   1234.5] " (ms since start, when the line's first bytes arrived)
                size_t from = 0;
                for (size_t i = 0; i < len; ++i) {
                    if (last_byte == '\n') {
                        write_all(STDOUT_FILENO, buf + from, i - from);
                        from = i;
                        char stamp[32];
                        const int k = std::snprintf(stamp, sizeof stamp, "[%9.1f] ", now_ms() - t0);
                        write_all(STDOUT_FILENO, stamp, static_cast<size_t>(k));
                    }
                    last_byte = buf[i];
                }
                write_all(STDOUT_FILENO, buf + from, len - from);
            }
            last_byte = buf[len - 1];
            if (log != nullptr) std::fwrite(buf, 1, len, log);
            for (size_t i = 0; i < len; ++i) {
                line.push_back(buf[i]);
                if (buf[i] == '\n') {
                    check_line(true);
                    line.clear();
                }
            }
            if (!line.empty()) check_line(false);
            if (line.size() > (1U << 20)) line.erase(0, line.size() - opt.marker.size() - opt.end_marker.size());
            if (mem_wanted && marker_ms && opt.mem_delay_ms <= 0) take_sample();
        }
    };

    while (!exited) {
        const double t = now_ms() - t0;
        if (t >= deadline) {
            timed_out = true;
            ::kill(pid, SIGKILL);
            break;
        }
        double wait_ms = std::min(deadline - t, pidfd >= 0 ? 1000.0 : 5.0);
        if (mem_wanted && marker_ms && opt.mem_delay_ms > 0) {
            const double due = *marker_ms + opt.mem_delay_ms - t;
            if (due <= 0) {
                take_sample();
                continue;
            }
            wait_ms = std::min(wait_ms, due);
        }
        pollfd fds[2];
        nfds_t nfds = 0;
        if (pipe_open) fds[nfds++] = {out, POLLIN, 0};
        if (pidfd >= 0) fds[nfds++] = {pidfd, POLLIN, 0};
        const int r = ::poll(fds, nfds, static_cast<int>(std::max(1.0, wait_ms)));
        if (r < 0 && errno != EINTR) {
            std::perror("boot_timer: poll");
            ::kill(pid, SIGKILL);
            break;
        }
        if (pipe_open) drain();
        // Has it exited? (pidfd readable, or polling without a pidfd.) Sample memory first
        // if that is still due and the marker was seen: a reaped process has no smaps.
        const pid_t w = ::waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            exit_ms = now_ms() - t0;
            exited = true;
        }
    }
    if (!exited) {
        // killed on timeout (or poll failure): reap it
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        exit_ms.reset();
    }
    // Collect what it printed last (a grandchild may hold the pipe: do not wait for EOF).
    if (pipe_open) drain();
    ::close(out);
    if (pidfd >= 0) ::close(pidfd);
    if (log != nullptr) std::fclose(log);

    int rc = -1;
    if (WIFEXITED(status)) rc = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) rc = 128 + WTERMSIG(status);

    if (opt.passthrough && last_byte != '\n') std::fputs("\n", stdout);
    for (const auto& h : hits) std::printf("BOOT-TIMER-MARKER %s\n", h.c_str());
    std::optional<uint64_t> rss, pss, uss, grss, overhead, othp, gvsz, gmaps;
    std::optional<double> mem_ms;
    if (mem) {
        rss = mem->rss_kib;
        pss = mem->pss_kib;
        uss = mem->uss_kib;
        othp = mem->thp_kib - std::min(mem->thp_kib, mem->guest_thp_kib);
        grss = mem->guest_rss_kib;
        overhead = mem->rss_kib - std::min(mem->rss_kib, mem->guest_rss_kib);
        gvsz = mem->guest_vsz_kib;
        gmaps = mem->guest_maps;
        mem_ms = mem->at_ms;
    }
    std::printf("BOOT-TIMER marker_ms=%s end_ms=%s exit_ms=%s rc=%d timed_out=%d rss_kib=%s "
                "pss_kib=%s uss_kib=%s guest_rss_kib=%s overhead_kib=%s overhead_thp_kib=%s "
                "guest_maps=%s guest_vsz_kib=%s mem_ms=%s start_mono_ms=%.3f\n",
                fmt_ms(marker_ms).c_str(), fmt_ms(end_ms).c_str(), fmt_ms(exit_ms).c_str(), rc,
                timed_out ? 1 : 0, fmt_kib(rss).c_str(), fmt_kib(pss).c_str(), fmt_kib(uss).c_str(),
                fmt_kib(grss).c_str(), fmt_kib(overhead).c_str(), fmt_kib(othp).c_str(),
                fmt_kib(gmaps).c_str(), fmt_kib(gvsz).c_str(), fmt_ms(mem_ms).c_str(), t0);
    std::fflush(stdout);
    return (marker_ms && exited && exec_errno == 0) ? 0 : 1;
}
