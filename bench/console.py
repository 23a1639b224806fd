#!/usr/bin/env python3
"""VM console benchmark (issue 15): what a VNC client gets while the guest scrolls a full
screen of text, and what the VMM costs while the screen is idle, Enlighten's hyperv_fb console
(`enlighten run --vnc`, libvncserver) against QEMU 7.2's VNC server, in ONE test-host boot.

    python3 bench/console.py                            # enlighten, qemu-vgacon; 3 rounds (about 8 min)
    python3 bench/console.py --rounds 1 --scroll 10 --idle 10
    python3 bench/console.py --dry-run                  # print the test-host script

Variants (every one boots the default guest, 512 MiB, 1 vCPU, `console=ttyS0 quiet`: the
kernel's messages go to the serial port, tty1 shows only what the benchmark writes):

    enlighten     enlighten run --display on,resolution=WxH --vnc unix:S
                  (the guest loads hyperv_fb and hyperv_keyboard; fbcon draws on hyperv_fb;
                  its dirty rectangles are what the VMM reads and sends)
    qemu-efifb    qemu -M pc -cpu host -bios OVMF (UEFI) -vga none -device VGA,xres=W,yres=H
                  -vnc unix:S: the guest's efifb (built into Debian's cloud kernel) on the
                  firmware's GOP framebuffer at the same WxH; fbcon draws there the same way;
                  QEMU finds what changed from KVM's dirty log of the VGA memory.
                  The like-for-like console: same kernel, same fbcon, same font, same screen
                  size (128x48 characters at 1024x768), only the VMM's path to the client differs.
                  NOT RUN BY DEFAULT: under the test host's nested KVM, OVMF crashes the test
                  host's QEMU TCG (10.0.2: "tcg_handle_interrupt: assertion failed:
                  (bql_locked())"), with pflash or -bios, -cpu host or qemu64, every time
                  (2026-12-07); it works on this machine's TCG. For a test host that can run it.
    qemu-vgacon   qemu -M pc -cpu host (SeaBIOS) -vga std -vnc unix:S: the VGA text mode (vgacon)
                  that QEMU renders to pixels itself, 80x25 characters, 720x400 pixels: the
                  guest writes 2 bytes a character instead of drawing glyphs, so this is a
                  different (much cheaper) workload, compared per pixel; THE DEFAULT BASELINE,
                  the only QEMU console this kernel gives in the test host (the cloud kernel has
                  no bochs/simpledrm/vesafb/vga16fb; efifb needs UEFI, above)

Each run: the guest waits for its console (fbcon on hyperv_fb or efifb, or vgacon), hides the
cursor (`ESC [?25l`, fbcon's cursor_blink 0: an idle screen is really static), clears tty1,
prints BENCH-READY and waits for Return on tty1. The test host then connects
tests/tools/vnc_probe (Raw encoding only, 32 bits a pixel, an incremental request as soon as an
update has been read, like a viewer), which takes the whole screen once and types Return
(through the VMM's keyboard: hyperv_keyboard or the i8042), so the scroll starts with the client
there. The guest writes 8 different full-width lines in turn to /dev/tty1 as fast as it can for
--scroll seconds (each line scrolls the whole screen; consecutive lines differ in every
column), then does nothing. The test host marks, by SIGUSR1 to the probe (its counts and its own
clock) and the VMM's per-thread CPU (/proc/PID/task/*: utime+stime, guest_time, schedstat's
ns on CPU, voluntary+involuntary context switches), at:

    scroll     BENCH-SCROLL-START .. BENCH-SCROLL-END on the guest's serial console
    idle       --settle s after the scroll's end, for --idle s, the client connected and idle
    no client  the probe disconnected, --settle s later, for --idle s

Reported per variant (medians over the rounds, [min-max]): frames (FramebufferUpdate messages)
per second, bytes per frame and per second (pixel data, Raw, 4 bytes a pixel), the same per
pixel of the screen (bytes/s / (W x H x 4) = whole screens a second, so variants of different
sizes compare), the lines the guest scrolled a second; and in the idle windows what was sent,
the VMM's CPU ms and wake-ups (context switches) per second, split into the vCPU thread (the
idle guest's own timer ticks, which happen on any VMM) and the VMM's other threads (what the
console costs: the goal is 0: nothing sent, nothing polled while nothing changes). Ratios are
Enlighten / each QEMU variant.

Needs Debian's `ovmf` package on this machine for qemu-efifb (skipped, and said so, without
it; its VARS and CODE images are joined into one -bios image in BUILD_DIR/bench) and `libvncserver1` (carried into the test host with what it needs). A benchmark, not a
test: it exits 0 whatever the numbers (1 only when it could not run at all). Output: a markdown
report on stdout and in bench/results/console-<date>.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from benchlib import fmt, kv, log, median  # noqa: E402
from enlighten_tools import guest_image, qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError, ldd_libraries  # noqa: E402

MEMORY = "512M"
CLK_TCK = 100
H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
H_OVMF = "/enlighten/ovmf"
API = "/tmp/bench-api.sock"
VNC = "/tmp/bench-vnc.sock"
VNC_LIBRARY = "/usr/lib/x86_64-linux-gnu/libvncserver.so.1"
KEYMAP = Path("/usr/share/qemu/keymaps/en-us")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# OVMF as one ROM image (-bios: variables in memory) rather than two pflash drives: OVMF on
# pflash under the test host's nested KVM crashed the test host's QEMU TCG every time
# (2026-12-07: "tcg_handle_interrupt: assertion failed: (bql_locked())"); -bios does not.
OVMF_IMAGE = "OVMF_4M.fd"   # VARS then CODE, as OVMF's combined build lays them out
HV_MODULES = "enlighten.modules=hyperv-keyboard,hid-hyperv,evdev,hyperv_fb"
VCPU_THREAD = re.compile(r"^(vcpu\d+|CPU_\d+/(KVM|TCG))$")  # Enlighten's, QEMU's (-name ...,debug-threads=on)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    console: str        # what draws the guest's tty1


VARIANTS = [
    Variant("enlighten", "Enlighten hyperv_fb + libvncserver", "fbcon on hyperv_fb"),
    Variant("qemu-efifb", "QEMU VGA + OVMF efifb", "fbcon on efifb (OVMF GOP)"),
    Variant("qemu-vgacon", "QEMU VGA text mode", "vgacon (VGA text mode, QEMU renders it)"),
]

GUEST_JOB = r"""
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; }
up() { read -r U _ </proc/uptime; C=$(( ${U%.*} * 100 + 1${U#*.} - 100 )); }
scroll=$(arg bench.scroll)
# the console: /dev/fb0 (hyperv_fb is a module, efifb built in; none under vgacon), then fbcon
# taking it over
n=0; while [ ! -e /dev/fb0 ] && [ $n -lt "$(arg bench.fbwait)0" ]; do sleep 0.1; n=$((n + 1)); done
n=0; while [ -e /dev/fb0 ] && ! dmesg | grep -q 'switching to colour frame buffer' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
sleep 1
set -- $(stty -F /dev/tty1 size 2>/dev/null); rows=${1:-25}; cols=${2:-80}
fb=none; [ -e /sys/class/graphics/fb0 ] && fb="$(tr ' ' _ < /sys/class/graphics/fb0/name):$(cat /sys/class/graphics/fb0/virtual_size)"
vt=; for v in /sys/class/vtconsole/vtcon*; do [ "$(cat $v/bind)" = 1 ] && vt="$vt$(tr ' ' _ < $v/name),"; done
# a static screen: no cursor, no blinking
echo 0 > /sys/class/graphics/fbcon/cursor_blink 2>/dev/null
printf '\033[?25l\033[2J\033[H' > /dev/tty1
echo "BENCH-GUEST kernel=$(uname -r) fb=$fb cols=$cols rows=$rows vtcon=$vt"
echo "BENCH-READY"
# the client's Return starts the scroll (at most 120 s wait)
if read -t 120 x < /dev/tty1; then trig=key; else trig=timeout; fi
printf '\033[?25l' > /dev/tty1
sleep 1
eval "$(awk -v c="$cols" 'BEGIN { s = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    while (length(s) < c + 16) s = s s
    for (k = 0; k < 8; k++) printf "l%d=%s\n", k, substr(s, k + 1, c - 1) }')"
up; c0=$C; end=$((C + scroll * 100)); i=0
echo "BENCH-SCROLL-START up=$U trig=$trig"
{
    while :; do
        echo "$l0"; echo "$l1"; echo "$l2"; echo "$l3"; echo "$l4"; echo "$l5"; echo "$l6"; echo "$l7"
        i=$((i + 8))
        up; [ $C -ge $end ] && break
    done
} > /dev/tty1
echo "BENCH-SCROLL-END up=$U lines=$i cs=$((C - c0))"
"""


def vmm_argv(v: Variant, kernel: str, initrd: str, enl: str, q: qemu.QemuCarry, serial: str,
             width: int, height: int, scroll: int) -> list[str]:
    cmdline = f"console=ttyS0 quiet consoleblank=0 enlighten.stay enlighten.net=off bench.scroll={scroll}"
    if v.key == "enlighten":
        return [enl, "run", "--kernel", kernel, "--initrd", initrd,
                "--cmdline", f"{cmdline} {HV_MODULES} bench.fbwait=60",
                "--memory", MEMORY, "--cpus", "1", "--serial", f"file:{serial}", "--on-reboot", "exit",
                "--api-socket", API, "--display", f"on,resolution={width}x{height}", "--vnc", f"unix:{VNC}"]
    base = [q.binary, "-L", q.firmware_dir, "-M", "pc", "-cpu", "host", "-enable-kvm", "-m", MEMORY, "-smp", "1",
            "-nodefaults", "-no-user-config", "-name", "bench,debug-threads=on", "-serial", f"file:{serial}",
            "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-vnc", f"unix:{VNC}"]
    if v.key == "qemu-efifb":
        return base + ["-append", f"{cmdline} bench.fbwait=30", "-bios", f"{H_OVMF}/{OVMF_IMAGE}",
                       "-vga", "none", "-device", f"VGA,xres={width},yres={height}"]
    return base + ["-append", f"{cmdline} bench.fbwait=0", "-vga", "std"]


# The test host's side (busybox sh).
HOST_LIB = r"""
alive() { st=; read -r _ _ st _ 2>/dev/null < "/proc/$PID/stat"; [ -n "$st" ] && [ "$st" != Z ]; }
wait_ser() {
    n=0
    while ! grep -q "$1" "$SER"; do
        alive || { echo "BENCH-FAILED variant=$v round=$rnd the VMM exited before $1"; return 1; }
        n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && { echo "BENCH-FAILED variant=$v round=$rnd no $1 after $2 s"; return 1; }
        sleep 0.1
    done
}
# snap AT: the VMM's threads: TID:NAME=ticks(utime+stime)/guest ticks/ns on CPU/context switches,
# and the whole process's ticks (threads that ended included)
snap() {
    at=$1
    set --
    for t in /proc/$PID/task/*; do set -- "$@" "$t/comm" "$t/stat" "$t/schedstat" "$t/status"; done
    th=$(awk '
        function flush() { if (name != "") printf " %s:%s=%.0f/%.0f/%.0f/%.0f", tid, name, ut + st, gt, ns, cs }
        FNR == 1 && FILENAME ~ /\/comm$/ { flush(); name = $0; gsub(/[^A-Za-z0-9_.\/-]/, "_", name)
            tid = FILENAME; sub(/\/comm$/, "", tid); sub(/.*\//, "", tid); ut = st = gt = ns = cs = 0; next }
        FILENAME ~ /\/stat$/ { s = $0; sub(/^.*\) /, "", s); split(s, f, " "); ut = f[12]; st = f[13]; gt = f[41]; next }
        FILENAME ~ /\/schedstat$/ { ns = $1; next }
        FILENAME ~ /\/status$/ && /^(voluntary|nonvoluntary)_ctxt_switches/ { cs += $2 }
        END { flush() }' "$@" 2>/dev/null)
    p=$(awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); print f[12] + f[13] "/" f[41] }' /proc/$PID/stat 2>/dev/null)
    read -r u _ < /proc/uptime
    echo "BENCH-SNAP variant=$v round=$rnd at=$at up=$u proc=$p threads=$th"
}
mark() { [ -n "$PROBE_PID" ] && kill -USR1 "$PROBE_PID" 2>/dev/null; snap "$1"; }
# bench_case VARIANT ROUND ARGV...
bench_case() {
    v=$1; rnd=$2; shift 2
    SER=/tmp/serial.$v; : > "$SER"; rm -f "$API" "$VNC" /tmp/probe.out; PROBE_PID=
    echo "BENCH-RUN variant=$v round=$rnd load=$(cut -d' ' -f1 /proc/loadavg)"
    "$@" > /tmp/vmm.log 2>&1 &
    PID=$!
    ok=0
    if wait_ser BENCH-READY 300; then
        n=0; while [ ! -S "$VNC" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
        "$PROBE" "unix:$VNC" /tmp/first.ppm --key 0xff0d --watch $((SCROLL + 2 * SETTLE + IDLE + 300)) > /tmp/probe.out 2>&1 &
        PROBE_PID=$!
        if wait_ser BENCH-SCROLL-START 150; then
            mark start
            if wait_ser BENCH-SCROLL-END $((SCROLL + 300)); then
                mark end
                sleep $SETTLE; mark idle0
                sleep $IDLE; mark idle1
                kill -TERM $PROBE_PID; wait $PROBE_PID; echo "BENCH-PROBE-RC variant=$v round=$rnd rc=$?"; PROBE_PID=
                sleep $SETTLE; snap none0
                sleep $IDLE; snap none1
                ok=1
            fi
        fi
        [ -n "$PROBE_PID" ] && { kill -TERM $PROBE_PID; wait $PROBE_PID; }
        sed "s/^/BENCH-PROBE variant=$v round=$rnd /" /tmp/probe.out
        grep -a "^BENCH-\(GUEST\|SCROLL\)" "$SER" | sed "s/^/BENCH-SER variant=$v round=$rnd /"
        if [ "$v" = enlighten ]; then
            "$ENL" remote --api-socket "$API" info 2>/dev/null | tr -d '\n ' | sed 's/.*"console"://' | head -c 1500 | sed "s/^/BENCH-CONSOLE-INFO variant=$v round=$rnd /"; echo
        fi
    fi
    if [ $ok = 0 ]; then
        echo "BENCH-FAILED variant=$v round=$rnd (console and VMM log tails follow)"
        tail -n 30 "$SER" | sed "s/^/BENCH-TAIL variant=$v round=$rnd serial: /"
        tail -n 20 /tmp/vmm.log | sed "s/^/BENCH-TAIL variant=$v round=$rnd vmm: /"
        [ -f /tmp/probe.out ] && sed "s/^/BENCH-TAIL variant=$v round=$rnd probe: /" /tmp/probe.out
    fi
    kill $PID 2>/dev/null
    n=0; while alive && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
    alive && kill -KILL $PID
    wait $PID
    [ $ok = 1 ]
}
"""


def host_script(variants: list[Variant], rounds: int, argv_of: dict[str, list[str]], q: qemu.QemuCarry,
                a) -> str:
    lines = ["set -u", *benchlib.TESTHOST_PRELUDE,
             f'echo "BENCH-INFO qemu_version=$({shlex.quote(q.binary)} --version | head -n 1)"',
             f"ENL={H_BIN}/enlighten; PROBE={H_BIN}/vnc_probe; API={API}; VNC={VNC}",
             f"SCROLL={a.scroll}; IDLE={a.idle}; SETTLE={a.settle}",
             HOST_LIB]
    cases = [benchlib.Case(v, 1) for v in variants]
    lines += benchlib.round_robin(cases, rounds, lambda c, r: ["bench_case", c.variant.key, str(r),
                                                               *argv_of[c.variant.key]])
    lines += ["echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parsing
@dataclass
class Snap:
    up: float
    proc_ticks: int
    proc_guest: int
    threads: dict[str, tuple[str, int, int, int, int]]   # tid -> (name, ticks, guest ticks, ns, switches)


@dataclass
class Run:
    variant: str
    rnd: int
    snaps: dict[str, Snap] = field(default_factory=dict)
    marks: list[dict[str, str]] = field(default_factory=list)   # VNC-MARK n=1.. in order
    end: dict[str, str] = field(default_factory=dict)
    guest: dict[str, str] = field(default_factory=dict)
    scroll_end: dict[str, str] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    console_info: str = ""
    probe_rc: str = "?"


@dataclass
class Session:
    runs: dict[tuple[str, int], Run] = field(default_factory=dict)
    failed: list[tuple[str, int, list[str]]] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    done: bool = False


def parse(output: str) -> Session:
    s = Session()

    def run(d: dict[str, str]) -> Run:
        key = (d.get("variant", "?"), int(d.get("round", "0")))
        return s.runs.setdefault(key, Run(*key))

    tails: dict[tuple[str, int], list[str]] = {}
    for raw in output.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("BENCH-INFO "):
            for k, v in re.findall(r"(\w+)=((?:[^ ]| (?!\w+=))*)", line[len("BENCH-INFO "):]):
                s.info[k] = v
        elif line.startswith("BENCH-DONE"):
            s.done = True
        elif line.startswith("BENCH-SNAP "):
            head, _, threads = line.partition(" threads=")
            d = kv(head)
            pt, _, pg = d.get("proc", "0/0").partition("/")
            th = {}
            for item in threads.split():
                m = re.match(r"^(\d+):(.*)=(\d+)/(\d+)/(\d+)/(\d+)$", item)
                if m:
                    th[m.group(1)] = (m.group(2), *(int(m.group(i)) for i in range(3, 7)))
            run(d).snaps[d.get("at", "?")] = Snap(float(d.get("up", "0")), int(pt or 0), int(pg or 0), th)
        elif line.startswith("BENCH-PROBE "):
            d = kv(line)
            rest = line.split(" ", 3)[3] if line.count(" ") >= 3 else ""
            r = run(d)
            if rest.startswith("VNC-MARK "):
                r.marks.append(kv(rest))
            elif rest.startswith("VNC-END "):
                r.end = kv(rest)
            elif rest.startswith("VNC-SIZE "):
                m = re.match(r"VNC-SIZE (\d+)x(\d+)", rest)
                if m:
                    r.size = (int(m.group(1)), int(m.group(2)))
        elif line.startswith("BENCH-PROBE-RC "):
            d = kv(line)
            run(d).probe_rc = d.get("rc", "?")
        elif line.startswith("BENCH-SER "):
            d = kv(line)
            rest = line.split(" ", 3)[3] if line.count(" ") >= 3 else ""
            if rest.startswith("BENCH-GUEST "):
                run(d).guest = kv(rest)
            elif rest.startswith("BENCH-SCROLL-END "):
                run(d).scroll_end = kv(rest)
        elif line.startswith("BENCH-CONSOLE-INFO "):
            d = kv(line)
            run(d).console_info = line.split(" ", 3)[3] if line.count(" ") >= 3 else ""
        elif line.startswith("BENCH-FAILED "):
            d = kv(line)
            s.failed.append((d.get("variant", "?"), int(d.get("round", "0") or 0), [line]))
        elif line.startswith("BENCH-TAIL "):
            d = kv(line)
            tails.setdefault((d.get("variant", "?"), int(d.get("round", "0") or 0)), []).append(
                line.split(" ", 3)[3] if line.count(" ") >= 3 else "")
    s.failed = [(v, r, lines + tails.get((v, r), [])) for v, r, lines in s.failed]
    return s


# ----------------------------------------------------------------------------- measures
@dataclass
class Cpu:
    ms_other: float      # ms on CPU of the VMM's threads but the vCPU's (schedstat)
    ms_vcpu: float       # ms on CPU of the vCPU thread(s) (guest time included)
    wake_other: int      # context switches of the other threads
    wake_vcpu: int
    ticks: int           # the whole process's utime+stime growth (1/100 s)
    guest_ticks: int


def cpu_between(a: Snap | None, b: Snap | None) -> Cpu | None:
    if a is None or b is None:
        return None
    ms_o = ms_v = 0.0
    w_o = w_v = 0
    for tid, (name, _t, _g, ns, cs) in b.threads.items():
        if tid not in a.threads:
            continue
        _, _, _, ns0, cs0 = a.threads[tid]
        if VCPU_THREAD.match(name):
            ms_v += (ns - ns0) / 1e6
            w_v += cs - cs0
        else:
            ms_o += (ns - ns0) / 1e6
            w_o += cs - cs0
    return Cpu(ms_o, ms_v, w_o, w_v, b.proc_ticks - a.proc_ticks, b.proc_guest - a.proc_guest)


@dataclass
class Window:
    seconds: float
    frames: int | None
    bytes: int | None
    cpu: Cpu | None


def probe_window(r: Run, i: int, j: int) -> tuple[float | None, int | None, int | None]:
    """(seconds, frames, bytes) between marks i and j (1-based), by the probe's clock."""
    if len(r.marks) < j:
        return None, None, None
    m0, m1 = r.marks[i - 1], r.marks[j - 1]
    return ((int(m1["ms"]) - int(m0["ms"])) / 1000, int(m1["frames"]) - int(m0["frames"]),
            int(m1["bytes"]) - int(m0["bytes"]))


def windows(r: Run) -> dict[str, Window]:
    out = {}
    for name, (a, b, i, j) in {"scroll": ("start", "end", 1, 2), "idle": ("idle0", "idle1", 3, 4),
                               "none": ("none0", "none1", 0, 0)}.items():
        sa, sb = r.snaps.get(a), r.snaps.get(b)
        if sa is None or sb is None:
            continue
        secs, frames, nbytes = probe_window(r, i, j) if i else (None, 0, 0)
        out[name] = Window(secs if secs else sb.up - sa.up, frames, nbytes, cpu_between(sa, sb))
    return out


def stat(xs: list[float], digits: int = 1) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(median(xs), digits)} [{fmt(min(xs), digits)}-{fmt(max(xs), digits)}]"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{digits}f}"


# ----------------------------------------------------------------------------- report
def report(variants: list[Variant], s: Session, meta: dict[str, str], argv_of: dict[str, list[str]], a,
           host_cmd: str, this_cmd: str, lockup: list[str], skipped: list[str]) -> str:
    L = [f"# Console (VNC) benchmark, {meta['date']}", ""]
    L.append(f"- commit `{meta['commit']}`; {meta['qemu']} (in the test host: {s.info.get('qemu_version', '?')})")
    L.append(f"- test host: kernel {s.info.get('host_kernel', '?')}, {s.info.get('host_cpus', '?')} vCPU(s), "
             f"{int(s.info.get('host_mem_kib', '0') or 0) // 1024} MiB, QEMU TCG on {meta['machine']}; "
             f"session {meta['session_s']} s; this machine's load (1 min) at start / end: {meta['load']}")
    kernels = sorted({r.guest.get("kernel", "") for r in s.runs.values()} - {""})
    L.append(f"- guest: the default guest ({', '.join(kernels) or '?'}), {MEMORY}, 1 vCPU; {a.rounds} round(s), "
             f"interleaved; scroll {a.scroll} s, idle windows {a.idle} s each, {a.settle} s settling before each")
    L.append(f"- command: `{this_cmd}`")
    if not s.done:
        L.append("- **INCOMPLETE**: the session ended early; below is what was measured")
    L += [f"- not run: {x}" for x in skipped]
    L.append("")

    per: dict[str, list[tuple[Run, dict[str, Window]]]] = {}
    for (v, _), r in sorted(s.runs.items(), key=lambda kv_: kv_[0][1]):
        w = windows(r)
        if "scroll" in w:
            per.setdefault(v, []).append((r, w))

    def screen(v: str) -> tuple[int, int] | None:
        sizes = [r.size for r, _ in per.get(v, []) if r.size]
        return sizes[0] if sizes else None

    def chars(v: str) -> str:
        g = [r.guest for r, _ in per.get(v, []) if r.guest]
        return f"{g[0].get('cols', '?')}x{g[0].get('rows', '?')}" if g else "?"

    # the scroll window
    sc: dict[str, dict[str, float | None]] = {}
    L += ["## Scrolling: what the client gets", "",
          "Medians over the rounds [min-max]. *frames/s*: FramebufferUpdate messages a second; *KiB/frame* and "
          "*MiB/s*: pixel data (Raw, 4 bytes a pixel); *screens/s*: MiB/s divided by the screen's size (W x H x 4), "
          "the per-pixel number that compares screens of different sizes; *lines/s*: the lines the guest scrolled "
          "a second; *VMM ms/s*: CPU of the VMM's threads but the vCPU, per second of scrolling (schedstat).", "",
          "| variant | console | screen | chars | n | frames/s | KiB/frame | MiB/s | screens/s | lines/s | VMM ms/s |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        rows = per.get(v.key, [])
        fps, kpf, mibs, scr, lps, cpu = [], [], [], [], [], []
        size = screen(v.key)
        for r, w in rows:
            x = w["scroll"]
            if x.frames is None or not x.seconds:
                continue
            fps.append(x.frames / x.seconds)
            kpf.append(x.bytes / x.frames / 1024 if x.frames else 0.0)
            mibs.append(x.bytes / x.seconds / 2**20)
            if size:
                scr.append(x.bytes / x.seconds / (size[0] * size[1] * 4))
            cs, lines = int(r.scroll_end.get("cs", "0") or 0), int(r.scroll_end.get("lines", "0") or 0)
            if cs:
                lps.append(lines / (cs / 100))
            if x.cpu:
                cpu.append(x.cpu.ms_other / x.seconds)
        sc[v.key] = {"fps": median(fps), "kpf": median(kpf), "mibs": median(mibs), "scr": median(scr),
                     "lps": median(lps), "cpu": median(cpu)}
        L.append(f"| {v.label} | {v.console} | {f'{size[0]}x{size[1]}' if size else '?'} | {chars(v.key)} "
                 f"| {len(fps)} | {stat(fps)} | {stat(kpf, 0)} | {stat(mibs, 2)} | {stat(scr, 2)} | {stat(lps, 0)} "
                 f"| {stat(cpu, 0)} |")
    L.append("")

    # the idle windows
    idle: dict[tuple[str, str], dict[str, float | None]] = {}
    L += ["## Idle: what the VMM does while nothing changes", "",
          "The screen static (no cursor), the guest idle (its /init sleeping). *sent*: frames and bytes the client "
          "got in the window (no client: nothing to send). CPU ms a second and wake-ups (context switches) a second, "
          "medians [min-max]: *VMM* = every thread of the VMM process but the vCPU; *vCPU* = the vCPU thread (the "
          "idle guest's own timer and housekeeping run there, on any VMM); *ticks* = the process's "
          "utime+stime growth in 1/100 s over the whole window (all threads, the vCPU's time in the guest included).",
          "", "| variant | client | n | sent frames | sent bytes | VMM ms/s | VMM wake-ups/s | vCPU ms/s | "
          "vCPU wake-ups/s | ticks |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        for wname, label in (("idle", "connected, idle"), ("none", "none")):
            xs = [w[wname] for _, w in per.get(v.key, []) if wname in w and w[wname].cpu]
            if not xs:
                continue
            d = {"ms": median([x.cpu.ms_other / x.seconds for x in xs]),
                 "wk": median([x.cpu.wake_other / x.seconds for x in xs])}
            idle[(v.key, wname)] = d
            sent_f = "—" if wname == "none" else stat([x.frames for x in xs if x.frames is not None], 0)
            sent_b = "—" if wname == "none" else stat([x.bytes for x in xs if x.bytes is not None], 0)
            L.append(f"| {v.label} | {label} | {len(xs)} | {sent_f} | {sent_b} "
                     f"| {stat([x.cpu.ms_other / x.seconds for x in xs], 2)} "
                     f"| {stat([x.cpu.wake_other / x.seconds for x in xs], 1)} "
                     f"| {stat([x.cpu.ms_vcpu / x.seconds for x in xs], 2)} "
                     f"| {stat([x.cpu.wake_vcpu / x.seconds for x in xs], 1)} "
                     f"| {stat([x.cpu.ticks for x in xs], 0)} |")
    L.append("")

    # ratios: Enlighten / each QEMU variant measured
    e = sc.get("enlighten", {})
    base = [v for v in variants if v.key != "enlighten" and sc.get(v.key, {}).get("fps") is not None]
    if e and base:
        L += ["## Ratios Enlighten / QEMU", "",
              "| measure | Enlighten | " + " | ".join(v.label for v in base) + " | "
              + " | ".join(f"ratio / {v.key}" for v in base) + " |",
              "|---|---:|" + "---:|" * (2 * len(base))]
        for key, what, digits in (("fps", "frames/s while scrolling (higher: smoother)", 1),
                                  ("kpf", "KiB per frame", 0), ("mibs", "MiB/s sent while scrolling", 2),
                                  ("scr", "screens/s sent (per pixel: MiB/s / screen size)", 2),
                                  ("lps", "lines/s the guest scrolled", 0),
                                  ("cpu", "VMM ms/s of CPU (vCPU excluded) while scrolling", 0)):
            L.append(f"| {what} | {fmt(e.get(key), digits)} | "
                     + " | ".join(fmt(sc[v.key].get(key), digits) for v in base) + " | "
                     + " | ".join(ratio(e.get(key), sc[v.key].get(key)) for v in base) + " |")
        for wname, label in (("idle", "client connected"), ("none", "no client")):
            ei = idle.get(("enlighten", wname), {})
            for k, what, digits in (("ms", "VMM ms/s of CPU (vCPU excluded)", 2), ("wk", "VMM wake-ups/s (vCPU excluded)", 1)):
                L.append(f"| idle, {label}: {what} | {fmt(ei.get(k), digits)} | "
                         + " | ".join(fmt(idle.get((v.key, wname), {}).get(k), digits) for v in base) + " | "
                         + " | ".join(ratio(ei.get(k), idle.get((v.key, wname), {}).get(k)) for v in base) + " |")
        L.append("")
    L += ["## What the comparison means", "",
          "- `qemu-vgacon` (the default baseline) is not the same console: fbcon draws every glyph into a "
          "1024x768x4 framebuffer that the VMM reads; under vgacon the guest writes 2 bytes a character into the "
          "VGA text buffer and QEMU draws the 720x400 picture itself on its refresh timer. Debian's cloud kernel "
          "has no driver that would give QEMU's VGA an fbcon under SeaBIOS (no bochs, simpledrm, vesafb or "
          "vga16fb), and OVMF, which would give efifb, crashes the test host (see bench/README.md). So: frames/s "
          "(how often the client gets a new picture), screens/s (bytes per pixel of the screen) and the idle "
          "numbers compare; absolute bytes do not (0.37x the pixels), nor lines/s (the guest's work per line "
          "differs by orders of magnitude).",
          "- `qemu-efifb`, when run, is the like-for-like one: same kernel, fbcon, font and screen size; "
          "hyperv_fb's framebuffer is guest RAM and the guest reports what it drew (at most 20 times a second: "
          "hyperv_fb's 50 ms throttle), efifb's is the VGA device's memory, which KVM write-protects for QEMU's "
          "dirty log.",
          "- The client asks for Raw only, so bytes are the pixels each server chose to send (libvncserver: the "
          "modified region; QEMU: 16-pixel tiles of changed scanlines). A real viewer negotiates Tight/ZRLE and "
          "gets fewer bytes from both.",
          "- The client, the VMM and the guest's vCPU share the test host's 2 vCPUs, emulated by TCG; absolute "
          "rates say little about real hardware, the ratios of one session are what to compare.",
          "- Idle: with the cursor hidden nothing on the screen changes. CPU and wake-ups of the VMM's non-vCPU "
          "threads are what the console costs while nothing changes; the vCPU thread's are the idle guest's own "
          "(its timer), counted apart.", ""]

    if s.failed:
        L += ["## Failures", ""]
        for v, r, tail in s.failed:
            L += [f"- `{v}` round {r}:", "", "  ```"] + ["  " + t for t in tail[-60:]] + ["  ```"]
        L.append("")
    if lockup:
        L += ["## Test-host kernel: soft lockup", "", "```", *lockup, "```", ""]
    L += ["## Command lines (paths inside the test host)", "", f"Test host: `{host_cmd}`", ""]
    L += [f"- {v.label}: `{shlex.join(argv_of[v.key])}`" for v in variants]
    L += ["", "Client: `vnc_probe unix:SOCKET first.ppm --key 0xff0d --watch N` (tests/tools/vnc_probe.cpp), "
          "SIGUSR1 for each mark, SIGTERM to leave.", ""]
    L += ["## Raw", "", "```"]
    for (v, rnd), r in sorted(s.runs.items(), key=lambda kv_: (kv_[0][1], kv_[0][0])):
        L.append(f"{v} round={rnd} size={r.size} guest={' '.join(f'{k}={x}' for k, x in r.guest.items())} "
                 f"scroll_end={' '.join(f'{k}={x}' for k, x in r.scroll_end.items())} probe_rc={r.probe_rc}")
        for name, w in windows(r).items():
            c = w.cpu
            L.append(f"  {name}: s={w.seconds:.2f} frames={w.frames} bytes={w.bytes}"
                     + (f" vmm_ms={c.ms_other:.2f} vmm_wake={c.wake_other} vcpu_ms={c.ms_vcpu:.2f} "
                        f"vcpu_wake={c.wake_vcpu} ticks={c.ticks} guest_ticks={c.guest_ticks}" if c else ""))
        # per thread name: CPU and wake-ups a second while scrolling; who woke up in the idle windows
        a0, b0 = r.snaps.get("start"), r.snaps.get("end")
        if a0 and b0 and b0.up > a0.up:
            agg: dict[str, list[float]] = {}
            for tid, (tn, _t, _g, ns, cs) in b0.threads.items():
                if tid in a0.threads:
                    x = agg.setdefault(tn, [0.0, 0.0, 0])
                    x[0] += (ns - a0.threads[tid][3]) / 1e6 / (b0.up - a0.up)
                    x[1] += (cs - a0.threads[tid][4]) / (b0.up - a0.up)
                    x[2] += 1
            L.append("  scroll threads (ms/s, wake-ups/s): " + " ".join(
                f"{tn}(x{c}):{ms:.0f}/{w:.0f}" for tn, (ms, w, c) in sorted(agg.items(), key=lambda kv_: -kv_[1][0])
                if ms >= 1))
        for name, (sa, sb) in (("idle", ("idle0", "idle1")), ("none", ("none0", "none1"))):
            a0, b0 = r.snaps.get(sa), r.snaps.get(sb)
            if not a0 or not b0:
                continue
            busy = []
            for tid, (tn, _t, _g, ns, cs) in sorted(b0.threads.items()):
                if tid in a0.threads and cs - a0.threads[tid][4] > 0:
                    busy.append(f"{tn}:{cs - a0.threads[tid][4]}/{(ns - a0.threads[tid][3]) / 1e6:.1f}ms")
            L.append(f"  {name} threads woken (switches/CPU): {' '.join(busy) or 'none'}")
        if r.console_info:
            L.append(f"  vm.info console: {r.console_info[:700]}")
    L.append("```")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="enlighten,qemu-vgacon",
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS)
                    + " (default enlighten,qemu-vgacon: qemu-efifb crashes the test host, see above)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scroll", type=int, default=15, help="seconds the guest scrolls (default 15)")
    ap.add_argument("--idle", type=int, default=15, help="seconds of each idle window (default 15)")
    ap.add_argument("--settle", type=int, default=3, help="seconds before each idle window (default 3)")
    ap.add_argument("--resolution", default="1024x768", help="Enlighten's mode and QEMU VGA's xres/yres (OVMF's GOP)")
    benchlib.add_session_args(ap, HERE / "results", host_memory=3072)
    a = ap.parse_args(argv)
    known = {v.key: v for v in VARIANTS}
    keys = benchlib.pick(ap, a.variants, known)
    m = re.fullmatch(r"(\d+)x(\d+)", a.resolution)
    if not m:
        ap.error("--resolution WxH")
    width, height = int(m.group(1)), int(m.group(2))
    if a.rounds < 1 or a.scroll < 1 or a.idle < 1 or a.settle < 0:
        ap.error("--rounds, --scroll and --idle must be >= 1")
    skipped = []
    if "qemu-efifb" in keys and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        skipped.append(f"qemu-efifb: no {OVMF_CODE} (Debian's package ovmf)")
        keys.remove("qemu-efifb")
    variants = [known[k] for k in keys]
    if not variants:
        log("no variant to run")
        return 1
    a.host_cpus = a.host_cpus or 2

    try:
        if a.from_raw:
            q = qemu.QemuCarry({}, f"{qemu.HOST_QEMU_DIR}/bin/qemu-system-x86_64", f"{qemu.HOST_QEMU_DIR}/firmware")
            files: dict[str, str] = {}
        else:
            built = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])
            probe = Path(a.build_dir) / "tests" / "vnc_probe"
            if not a.no_build:
                benchlib.log(f"building vnc_probe in {a.build_dir}")
                import subprocess
                proc = subprocess.run(["cmake", "--build", a.build_dir, "--target", "vnc_probe"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    raise ToolError(f"build failed:\n{proc.stdout[-4000:]}")
            if not probe.is_file():
                raise ToolError(f"{probe} does not exist (build it, or drop --no-build)")
            img = guest_image.build()
            q = qemu.carry()
            initrd = guest_image.make_run_initrd(job=GUEST_JOB)
            files = dict(q.files)
            # QEMU's VNC server loads a keymap (en-us) at start; -L's directory is searched
            # for keymaps/NAME
            files[f"{q.firmware_dir}/keymaps/en-us"] = str(KEYMAP)
            files.update({f"{H_GUEST}/bzImage": str(img.kernel), f"{H_GUEST}/initrd.img": str(initrd),
                          f"{H_BIN}/enlighten": str(built["enlighten"]), f"{H_BIN}/vnc_probe": str(probe)})
            if "enlighten" in keys:
                if not Path(VNC_LIBRARY).is_file():
                    raise ToolError(f"{VNC_LIBRARY} missing (Debian's libvncserver1)")
                for lib in [VNC_LIBRARY, *ldd_libraries(VNC_LIBRARY)]:
                    files.setdefault(lib, lib)
            if "qemu-efifb" in keys:
                image = Path(a.build_dir) / "bench" / OVMF_IMAGE
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(OVMF_VARS.read_bytes() + OVMF_CODE.read_bytes())
                files[f"{H_OVMF}/{OVMF_IMAGE}"] = str(image)
    except ToolError as e:
        log(f"error: {e}")
        return 1

    argv_of = {v.key: vmm_argv(v, f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img", f"{H_BIN}/enlighten", q,
                               f"/tmp/serial.{v.key}", width, height, a.scroll) for v in variants}
    script = host_script(variants, a.rounds, argv_of, q, a)
    if a.dry_run:
        print(script)
        return 0
    host_cmd = shlex.join(testhost.qemu_command(Path("<testhost bzImage>"), Path("<initrd>"),
                                                a.host_cpus, a.host_memory))
    this_cmd = shlex.join(["python3", "bench/console.py", *(sys.argv[1:] if argv is None else argv)])
    per_run = 300 + a.scroll + 2 * (a.idle + a.settle)
    session_timeout = 300 + len(variants) * a.rounds * per_run
    load_start = benchlib.load_text()
    t0 = time.monotonic()
    if not a.from_raw:
        log(f"{len(variants)} variants x {a.rounds} rounds in one test host ({a.host_cpus} vCPUs, "
            f"{a.host_memory} MiB; session timeout {session_timeout} s)")
    output = benchlib.run_session(script, files, a.host_cpus, a.host_memory, session_timeout,
                                  save_raw=a.save_raw, from_raw=a.from_raw)
    if output is None:
        return 1
    s = parse(output)
    if not s.runs and not s.failed:
        log("no measurements: see the output above")
        return 1
    meta = benchlib.report_meta(t0, load_start, bool(a.from_raw))
    text = report(variants, s, meta, argv_of, a, host_cmd, this_cmd, benchlib.lockup_log(output), skipped)
    sys.stdout.write(text)
    if not a.no_save and not a.from_raw:
        path = benchlib.save_results(a.results_dir, "console", meta["day"], text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
