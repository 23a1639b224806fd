#!/usr/bin/env python3
"""Boot benchmark: Enlighten side by side with QEMU, in ONE test-host boot.

    python3 bench/boot.py                 # 5 interleaved rounds, 1 vCPU, all variants
    python3 bench/boot.py --cpus 1,2      # also every variant with 2 vCPUs
    python3 bench/boot.py --rounds 3 --variants enlighten,qemu-pc

Every variant boots the same kernel (the default guest's bzImage), the same initrd (the
default guest's, whose /init prints ENLIGHTEN-INIT, a summary, "Powering off ..." and
powers off), with the same memory (512M), vCPUs and command line, under bench/boot_timer,
which reports per run: ms until the ENLIGHTEN-INIT line (marker), until the "Powering
off" line (end), until the VMM exited (exit), and the VMM's memory at the marker (Rss,
guest-RAM Rss, overhead = Rss - guest RAM Rss; medians over the runs are reported, as
transparent huge pages make single samples jump by 2 MiB).

The first round is also the verification: a variant that does not reach the marker and
exit 0 there is left out of the later rounds (its console tail is printed). Rounds run
round-robin with the start rotated every round, so drift in the test host affects every
variant alike. With --warmup, an extra untimed round 0 does the verification and the
warm-up instead. This is a benchmark, not a test: it exits 0 whatever the numbers
are (1 only when it could not run at all).

Output: a markdown report on stdout and in bench/results/boot-<date>.md (with the date,
the commit, the exact command lines and every raw measurement). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tools"))

from enlighten_tools import guest_image, qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402
import benchlib  # noqa: E402
from benchlib import git_commit, lockup_log, log, machine_name  # noqa: E402

MEMORY = "512M"
CMDLINE = "console=ttyS0 quiet"
MARKER = guest_image.INIT_MARKER           # "ENLIGHTEN-INIT", printed right after /proc is mounted
END_MARKER = "Powering off (uptime"        # the default /init's last line before poweroff -f
RUN_TIMEOUT_S = 150                        # per VMM run (boot_timer kills it after that)

# Goals printed next to the numbers (never enforced).
GOAL_MARKER_RATIO = 0.5                    # Enlighten time-to-marker <= 0.5 x QEMU -M pc
GOAL_OVERHEAD_KIB = 5 * 1024               # Enlighten VMM overhead <= 5 MiB
GOAL_VMBUS_COST = 0.05                     # hv_vmbus loaded costs <= 5% boot time
GOAL_EXIT_RATIO_PC = 0.5                   # launch to exit <= 0.5 x QEMU -M pc -cpu host (issue 17)
GOAL_EXIT_RATIO_MICROVM = 0.35             # ... and <= 0.35 x QEMU -M microvm -cpu host
GOAL_UPTIME_SPREAD = 1.3                   # guest uptime at the marker, max / min over the rounds
GOAL_VMM_SHARE = 0.15                      # the VMM's time before the guest's first instruction

# --init minimal: an initrd whose /init prints the marker and powers off at once (busybox-static
# only), so that the boot itself is measured without the default guest's summary.
MINIMAL_INIT = r"""#!/bin/busybox-static sh
export PATH=/bin
mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "ENLIGHTEN-INIT uptime=$up"
echo "Powering off (uptime ${up}s)."
poweroff -f
"""

# Host-side phases, from the test host's own tracepoints (ftrace, trace_clock "mono", the
# clock of boot_timer's start_mono_ms), for every VMM alike: two trace instances that keep
# only their first events (no overwrite), emptied before each run. "first": KVM's first
# kvm_entry, the guest's first instruction (firmware for QEMU; the kernel for Enlighten).
# "kernel": the first exit at a kernel virtual address (>= 0xffffffff80000000), the kernel
# proper running in its own mapping, past any firmware and decompressor.
TRACE = "/sys/kernel/tracing"
TRACE_SETUP = [
    f"mount -t tracefs tracefs {TRACE} 2>/dev/null",
    f"if [ -d {TRACE}/events/kvm/kvm_entry ]; then",
    "    for i in first kernel; do",
    f"        mkdir -p {TRACE}/instances/$i && echo mono > {TRACE}/instances/$i/trace_clock &&",
    f"        echo 0 > {TRACE}/instances/$i/options/overwrite && echo 64 > {TRACE}/instances/$i/buffer_size_kb",
    "    done",
    f"    echo 1 > {TRACE}/instances/first/events/kvm/kvm_entry/enable",
    f"    echo 'guest_rip >= 0xffffffff80000000' > {TRACE}/instances/kernel/events/kvm/kvm_exit/filter",
    f"    echo 1 > {TRACE}/instances/kernel/events/kvm/kvm_exit/enable",
    "    bench_trace=1",
    "else",
    "    bench_trace=0; echo 'BENCH-INFO trace=none'",
    "fi",
]


def minimal_initrd() -> Path:
    """<cache>/guest/minimal-init.img: busybox-static and MINIMAL_INIT (rebuilt when they change)."""
    from enlighten_tools import debian
    from enlighten_tools.common import cache_dir, sha256_file, sha256_text
    from enlighten_tools.cpio import CpioArchive
    busybox = debian.busybox()
    out = cache_dir() / "guest" / f"minimal-init-{sha256_text(MINIMAL_INIT, sha256_file(busybox))[:16]}.img"
    if not out.is_file():
        arc = CpioArchive()
        guest_image.add_base_dirs(arc)  # /dev/console among them: /init's output
        arc.add_file("/bin/busybox-static", busybox, perm=0o755)
        for applet in ("mount", "poweroff"):  # before /proc is mounted, busybox cannot run itself
            arc.add_symlink(f"/bin/{applet}", "/bin/busybox-static")
        arc.add_bytes("/init", MINIMAL_INIT, perm=0o755)
        arc.write(out, compress=True)
    return out


# Paths inside the test host.
H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
H_LOGS = "/tmp/bench-logs"


@dataclass(frozen=True)
class Variant:
    key: str            # e.g. "qemu-pc-host"
    label: str          # for the table
    kind: str           # "enlighten" | "qemu"
    extra: tuple[str, ...] = ()     # extra VMM options
    cmdline_extra: str = ""         # appended to the guest command line


VARIANTS = [
    Variant("enlighten", "Enlighten (Hyper-V on)", "enlighten"),
    Variant("enlighten-hv-off", "Enlighten --hyperv off", "enlighten", ("--hyperv", "off")),
    Variant("enlighten-guest-decomp", "Enlighten --kernel-decompress guest", "enlighten",
            ("--kernel-decompress", "guest")),
    Variant("enlighten-vmbus", "Enlighten + hv_vmbus loaded", "enlighten",
            cmdline_extra="enlighten.modules=hv_vmbus"),
    Variant("qemu-pc", "QEMU -M pc", "qemu", ("-M", "pc")),
    Variant("qemu-pc-host", "QEMU -M pc -cpu host", "qemu", ("-M", "pc", "-cpu", "host")),
    Variant("qemu-microvm", "QEMU -M microvm", "qemu", ("-M", "microvm,isa-serial=on")),
    Variant("qemu-microvm-host", "QEMU -M microvm -cpu host", "qemu",
            ("-M", "microvm,isa-serial=on", "-cpu", "host")),
]
BASELINE = "qemu-pc"
BASELINE_HOST = "qemu-pc-host"


# ----------------------------------------------------------------------------- build
def build(build_dir: Path, skip: bool) -> tuple[Path, Path]:
    """Build (or just locate) build/enlighten and build/bench/boot_timer."""
    paths = benchlib.build(build_dir, skip, ["boot_timer", "enlighten"])
    return paths["enlighten"], paths["boot_timer"]


# ----------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Case:
    variant: Variant
    cpus: int

    @property
    def id(self) -> str:
        return f"{self.variant.key}@{self.cpus}"


def vmm_argv(case: Case, kernel: str, initrd: str, enlighten: str, q: qemu.QemuCarry) -> list[str]:
    v = case.variant
    cmdline = CMDLINE + (f" {v.cmdline_extra}" if v.cmdline_extra else "")
    if v.kind == "enlighten":
        return [enlighten, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
                "--memory", MEMORY, "--cpus", str(case.cpus), "--serial", "stdio",
                "--on-reboot", "exit", *v.extra]
    return [q.binary, "-L", q.firmware_dir, *v.extra, "-enable-kvm", "-m", MEMORY,
            "-smp", str(case.cpus), "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", cmdline]


def timer_argv(timer: str, case: Case, rnd: int, memory: bool) -> list[str]:
    argv = [timer, "--timeout", str(RUN_TIMEOUT_S), "--marker", MARKER, "--end-marker", END_MARKER,
            "--log", f"{H_LOGS}/{case.id}.{rnd}.log"]
    if memory:
        argv += ["--guest-mem", MEMORY]
    return argv


def host_script(cases: list[Case], rounds: int, argv_of: dict[str, list[str]], timer: str,
                q: qemu.QemuCarry, warmup: bool) -> str:
    """The shell script run in the test host. The first round (0 with warmup, else 1)
    verifies every variant and samples memory; later rounds skip variants that failed it."""
    lines = [
        "set -u",
        f"mkdir -p {H_LOGS}",
        *benchlib.TESTHOST_PRELUDE,  # soft lockup -> panic with the whole log (see benchlib)
        f'echo "BENCH-INFO qemu_version=$({shlex.quote(q.binary)} --version | head -n 1)"',
        *TRACE_SETUP,
        "bench_run() {  # id round argv...",
        '    id=$1; rnd=$2; shift 2',
        f'    [ $bench_trace = 1 ] && echo > {TRACE}/instances/first/trace && echo > {TRACE}/instances/kernel/trace',
        '    echo "BENCH-RUN id=$id round=$rnd load=$(cut -d" " -f1 /proc/loadavg)"',
        '    "$@"',
        '    rc=$?',
        '    if [ $bench_trace = 1 ]; then',
        f"        f=$(grep -m1 -o ' [0-9]*\\.[0-9]*: kvm_entry' {TRACE}/instances/first/trace | cut -d: -f1 | tr -d ' ')",
        f"        k=$(grep -m1 -o ' [0-9]*\\.[0-9]*: kvm_exit' {TRACE}/instances/kernel/trace | cut -d: -f1 | tr -d ' ')",
        '        echo "BENCH-TRACE first=${f:-NA} kernel=${k:-NA}"',
        '    fi',
        '    echo "BENCH-RC id=$id round=$rnd rc=$rc"',
        '    if [ $rc != 0 ]; then',
        '        echo "BENCH-LOG-BEGIN id=$id round=$rnd"',
        f'        tail -n 40 "{H_LOGS}/$id.$rnd.log" 2>/dev/null',
        '        echo "BENCH-LOG-END"',
        '    fi',
        f'    rm -f "{H_LOGS}/$id.$rnd.log"',
        '    return $rc',
        "}",
    ]
    ok_var = {c.id: "ok_" + re.sub(r"[^A-Za-z0-9]", "_", c.id) for c in cases}
    first = 0 if warmup else 1
    for r in range(first, rounds + 1):
        if r == first:
            lines.append(f"# round {r}: does every variant reach the marker?")
        else:
            lines.append(f"# round {r}")
        k = max(r - 1, 0) % len(cases)
        for c in cases[k:] + cases[:k]:  # rotate the start: no variant always goes first
            cmd = shlex.join(["bench_run", c.id, str(r), *timer_argv(timer, c, r, True),
                              "--", *argv_of[c.id]])
            if r == first:
                lines.append(f"{ok_var[c.id]}=0; {cmd} && {ok_var[c.id]}=1")
            else:
                lines.append(f'[ "${ok_var[c.id]}" = 1 ] && {cmd}')
    lines.append("echo BENCH-DONE")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parsing
@dataclass
class Run:
    case_id: str
    rnd: int
    fields: dict[str, str] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)
    rc: int | None = None
    load: str = ""
    log_tail: list[str] = field(default_factory=list)
    trace: dict[str, str] = field(default_factory=dict)

    def num(self, key: str) -> float | None:
        v = self.fields.get(key)
        if v is None or v == "NA":
            return None
        try:
            return float(v)
        except ValueError:
            return None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.fields.get("rc") == "0" and self.num("marker_ms") is not None

    def traced_ms(self, key: str) -> float | None:
        """A BENCH-TRACE time ("first", "kernel"), in ms from the VMM's start like the others."""
        start = self.num("start_mono_ms")
        try:
            t = float(self.trace.get(key, "NA"))
        except ValueError:
            return None
        return None if start is None else t * 1000.0 - start

    def guest_uptime(self) -> float | None:
        for m in self.markers:
            g = re.search(rf"{MARKER} uptime=([0-9.]+)", m)
            if g:
                return float(g.group(1))
        return None


def parse(output: str) -> tuple[list[Run], dict[str, str], bool]:
    runs: list[Run] = []
    info: dict[str, str] = {}
    done = False
    cur: Run | None = None
    in_log = False
    for line in output.splitlines():
        if in_log:
            if line.startswith("BENCH-LOG-END"):
                in_log = False
            elif cur is not None:
                cur.log_tail.append(line)
            continue
        if line.startswith("BENCH-INFO "):
            k, _, v = line[len("BENCH-INFO "):].partition("=")
            if " host_cpus=" in line:  # several k=v on one line
                for kv in line.split()[1:]:
                    a, _, b = kv.partition("=")
                    info[a] = b
            else:
                info[k] = v
        elif line.startswith("BENCH-RUN "):
            kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
            cur = Run(kv.get("id", "?"), int(kv.get("round", "-1")), load=kv.get("load", ""))
            runs.append(cur)
        elif line.startswith("BOOT-TIMER-MARKER ") and cur is not None:
            cur.markers.append(line[len("BOOT-TIMER-MARKER "):])
        elif line.startswith("BOOT-TIMER ") and cur is not None:
            cur.fields = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
        elif line.startswith("BENCH-TRACE ") and cur is not None:
            cur.trace = benchlib.kv(line)
        elif line.startswith("BENCH-RC ") and cur is not None:
            m = re.search(r"rc=(\d+)", line)
            cur.rc = int(m.group(1)) if m else None
        elif line.startswith("BENCH-LOG-BEGIN"):
            in_log = True
        elif line.startswith("BENCH-DONE"):
            done = True
    return runs, info, done


# ----------------------------------------------------------------------------- report
@dataclass
class Stats:
    n: int
    marker: list[float]
    end: list[float]
    exit: list[float]
    uptime: list[float]
    tail: list[float]       # marker -> end
    mem: list[Run]
    first: list[float] = field(default_factory=list)   # the guest's first instruction (trace)
    kernel: list[float] = field(default_factory=list)  # the kernel proper's first exit (trace)

    def mem_med(self, key: str) -> float | None:
        return _med([v for r in self.mem if (v := r.num(key)) is not None])

    def mem_range(self, key: str) -> tuple[float, float] | None:
        vals = [v for r in self.mem if (v := r.num(key)) is not None]
        return (min(vals), max(vals)) if vals else None


def _min(xs: list[float]) -> float | None:
    return min(xs) if xs else None


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def ratios(xs: list[float], base: list[float]) -> str:
    """"median ratio (ratio of minimums)"."""
    if not xs or not base:
        return "—"
    return f"{ratio(_med(xs), _med(base))} ({ratio(_min(xs), _min(base))})"


def kib_mib(v: float | None) -> str:
    return "—" if v is None else f"{v / 1024:.1f}"


def collect(cases: list[Case], runs: list[Run]) -> dict[str, Stats]:
    out: dict[str, Stats] = {}
    for c in cases:
        timed = [r for r in runs if r.case_id == c.id and r.rnd >= 1 and r.ok]
        mem = [r for r in runs if r.case_id == c.id and r.ok and r.num("rss_kib") is not None]
        out[c.id] = Stats(
            n=len(timed),
            marker=[r.num("marker_ms") for r in timed if r.num("marker_ms") is not None],
            end=[r.num("end_ms") for r in timed if r.num("end_ms") is not None],
            exit=[r.num("exit_ms") for r in timed if r.num("exit_ms") is not None],
            uptime=[u for r in timed if (u := r.guest_uptime()) is not None],
            tail=[e - m for r in timed
                  if (m := r.num("marker_ms")) is not None and (e := r.num("end_ms")) is not None],
            mem=mem,
            first=[v for r in timed if (v := r.traced_ms("first")) is not None],
            kernel=[v for r in timed if (v := r.traced_ms("kernel")) is not None])
    return out


def paired_uptime_ratios(runs: list[Run], a: str, b: str) -> list[float]:
    """uptime(a) / uptime(b) for each timed round where both ran."""
    up = {(r.case_id, r.rnd): r.guest_uptime() for r in runs if r.rnd >= 1 and r.ok}
    out = []
    for (cid, rnd), ua in up.items():
        ub = up.get((b, rnd))
        if cid == a and ua and ub:
            out.append(ua / ub)
    return out


def table_head(L: list[str], title: str, columns: list[str]) -> None:
    """A section title and a markdown table header: the first column left, the others right."""
    L += ["", title, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


def goal_line(ok: bool | None, text: str, value: str) -> str:
    mark = "n/a" if ok is None else ("met" if ok else "NOT met")
    return f"| {text} | {value} | {mark} |"


def report(cases: list[Case], runs: list[Run], info: dict[str, str], meta: dict[str, str],
           argv_of: dict[str, list[str]], timer_example: list[str], rounds: int,
           complete: bool, host_qemu_cmd: str, lockup: list[str] | None = None) -> str:
    st = collect(cases, runs)
    cpus_list = sorted({c.cpus for c in cases})
    L: list[str] = []
    L.append(f"# Boot benchmark, {meta['date']}")
    L.append("")
    L.append(f"- commit `{meta['commit']}`; {meta['qemu']} (in the test host: "
             f"{info.get('qemu_version', '?')})")
    L.append(f"- test host: kernel {info.get('host_kernel', '?')}, {info.get('host_cpus', '?')} vCPU(s), "
             f"{int(info.get('host_mem_kib', '0') or 0) // 1024} MiB, QEMU TCG on "
             f"{meta['machine']}; session {meta['session_s']} s")
    L.append(f"- guest: default bzImage + "
             + ("a minimal initrd (its /init prints the marker and powers off at once)"
                if meta.get("init") == "minimal" else "initrd")
             + f", `{CMDLINE}`, {MEMORY}; {rounds} timed rounds, "
             "interleaved round-robin (start rotated each round); "
             + ("an untimed verification/warm-up round 0 sampled memory" if meta.get("warmup")
                else "round 1 also verified each variant and sampled memory"))
    if meta.get("load"):
        L.append(f"- this machine's load average (1 min) at start / end: {meta['load']}")
    if not complete:
        L.append("- **INCOMPLETE**: the test-host session ended early (timeout or error); "
                 "the numbers below are what was measured before that")
    L.append("")
    L.append("Times are ms from starting the VMM (min / median of the timed rounds). *marker*: the "
             f"guest's /init printed `{MARKER}`; *end*: /init printed `Powering off` (after "
             "its modules and summary); *exit*: the VMM process exited after the guest powered "
             "off. Ratios: median / QEMU `-M pc` median (in brackets: min / min), same vCPUs, "
             "against QEMU's default CPU model and against `-cpu host`; below 1 is faster "
             "than QEMU. "
             "*guest uptime*: /proc/uptime at the marker, by the guest's own clock.")
    for ncpu in cpus_list:
        sub = [c for c in cases if c.cpus == ncpu]
        base = st.get(f"{BASELINE}@{ncpu}")
        base_h = st.get(f"{BASELINE_HOST}@{ncpu}")
        table_head(L, f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}: time",
                   ["variant", "n", "marker min", "marker median", "marker x pc", "marker x pc-host",
                    "end median", "marker -> end median", "exit min", "exit median", "exit x pc",
                    "exit x pc-host", "guest uptime at marker (s)"])
        for c in sub:
            s = st[c.id]
            bm, bhm = (base.marker if base else []), (base_h.marker if base_h else [])
            be, bhe = (base.exit if base else []), (base_h.exit if base_h else [])
            up = _med(s.uptime)
            L.append(f"| {c.variant.label} | {s.n} | {ms(_min(s.marker))} | {ms(_med(s.marker))} "
                     f"| {ratios(s.marker, bm)} | {ratios(s.marker, bhm)} "
                     f"| {ms(_med(s.end))} | {ms(_med(s.tail))} | {ms(_min(s.exit))} | {ms(_med(s.exit))} "
                     f"| {ratios(s.exit, be)} | {ratios(s.exit, bhe)} "
                     f"| {'—' if up is None else f'{up:.2f}'} |")
        L.append("")
        L.append(f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}: memory at the marker (MiB, medians)")
        L.append("")
        L.append("| variant | n | Rss total | guest RAM Rss | VMM overhead (Rss - guest RAM) "
                 "| overhead min-max | of which THP | private overhead (USS - guest RAM) "
                 "| guest RAM mappings |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for c in sub:
            s_ = st[c.id]
            if not s_.mem:
                L.append(f"| {c.variant.label} | 0 | — | — | — | — | — | — | — |")
                continue
            rng = s_.mem_range("overhead_kib")
            uss_over = _med([u - g for r in s_.mem
                             if (u := r.num("uss_kib")) is not None
                             and (g := r.num("guest_rss_kib")) is not None])
            first = s_.mem[0]
            L.append(f"| {c.variant.label} | {len(s_.mem)} | {kib_mib(s_.mem_med('rss_kib'))} "
                     f"| {kib_mib(s_.mem_med('guest_rss_kib'))} "
                     f"| {kib_mib(s_.mem_med('overhead_kib'))} "
                     f"| {'—' if rng is None else f'{kib_mib(rng[0])}-{kib_mib(rng[1])}'} "
                     f"| {kib_mib(s_.mem_med('overhead_thp_kib'))} | {kib_mib(uss_over)} "
                     f"| {first.fields.get('guest_maps', '?')} x, "
                     f"{kib_mib(first.num('guest_vsz_kib'))} MiB |")
        L.append("")
        L.append("Sampled from /proc/PID/smaps of the VMM when the marker appeared, in every run. "
                 "Guest RAM = the largest anonymous read-write mappings that together cover "
                 f"{MEMORY}. Rss counts the pages of shared libraries in full (nothing else in "
                 "the test host maps them); USS counts only pages private to the VMM. THP: the "
                 "test host's kernel has transparent huge pages `always`, so a heap or stack that "
                 "reaches a 2 MiB-aligned range is backed by a 2 MiB page at once; that part "
                 "makes single samples jump by 2 MiB.")
        # phases
        table_head(L, f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}: phases (ms from launch, medians; min-max)",
                   ["variant", "n", "guest's first instruction", "kernel proper", "/init marker", "end", "exit",
                    "VMM before the guest", "firmware + decompressor", "kernel to /init", "/init to end",
                    "end to exit"])
        for c in sub:
            s_ = st[c.id]
            def mm(xs: list[float]) -> str:
                return "—" if not xs else f"{ms(_med(xs))} ({ms(min(xs))}-{ms(max(xs))})"
            def d(a: list[float], b: list[float]) -> str:
                return "—" if not a or not b else ms(_med(b) - _med(a))
            L.append(f"| {c.variant.label} | {s_.n} | {mm(s_.first)} | {mm(s_.kernel)} | {mm(s_.marker)} "
                     f"| {mm(s_.end)} | {mm(s_.exit)} | {ms(_med(s_.first)) if s_.first else '—'} "
                     f"| {d(s_.first, s_.kernel)} | {d(s_.kernel, s_.marker)} | {d(s_.marker, s_.end)} "
                     f"| {d(s_.end, s_.exit)} |")
        L.append("")
        L.append("*guest's first instruction*: the VMM's first KVM entry; *kernel proper*: its first exit "
                 "at a kernel virtual address (past QEMU's firmware and the bzImage decompressor; "
                 "Enlighten enters the decompressed kernel directly). Both from the test host's "
                 "`kvm:kvm_entry` and `kvm:kvm_exit` tracepoints (ftrace, clock `mono`), the same for "
                 "every VMM. The differences are of medians.")
        # goals
        enl = st.get(f"enlighten@{ncpu}")
        vmb = st.get(f"enlighten-vmbus@{ncpu}")
        L.append("")
        L.append(f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}: goals")
        L.append("")
        L.append("| goal | measured | status |")
        L.append("|---|---|---|")
        em = _med(enl.marker) if enl else None
        bm = _med(base.marker) if base else None
        r = None if em is None or not bm else em / bm
        L.append(goal_line(None if r is None else r <= GOAL_MARKER_RATIO,
                           f"Enlighten time-to-marker <= {GOAL_MARKER_RATIO} x QEMU -M pc",
                           "—" if r is None else f"{r:.2f} x ({ms(em)} vs {ms(bm)} ms)"))
        bhm = _med(base_h.marker) if base_h else None
        rh = None if em is None or not bhm else em / bhm
        L.append(goal_line(None if rh is None else rh <= GOAL_MARKER_RATIO,
                           f"(same, vs QEMU -M pc -cpu host)",
                           "—" if rh is None else f"{rh:.2f} x ({ms(em)} vs {ms(bhm)} ms)"))
        ex = _med(enl.exit) if enl else None
        for key, label, goal in ((BASELINE_HOST, "QEMU -M pc -cpu host", GOAL_EXIT_RATIO_PC),
                                 ("qemu-microvm-host", "QEMU -M microvm -cpu host", GOAL_EXIT_RATIO_MICROVM)):
            other = st.get(f"{key}@{ncpu}")
            oe = _med(other.exit) if other else None
            rx = None if ex is None or not oe else ex / oe
            L.append(goal_line(None if rx is None else rx <= goal,
                               f"Enlighten launch-to-exit <= {goal} x {label} (medians)",
                               "—" if rx is None else f"{rx:.2f} x ({ms(ex)} vs {ms(oe)} ms)"))
        # What the VMM cannot shorten: the guest kernel's own boot, the same work for every VMM.
        ph = st.get(f"{BASELINE_HOST}@{ncpu}")
        if enl and enl.kernel and enl.marker and ph and ph.exit:
            k2i = _med(enl.marker) - _med(enl.kernel)
            L.append(goal_line(None, "(bound: Enlighten's kernel-to-/init stretch alone / QEMU -M pc -cpu host's "
                               "launch-to-exit; a VMM that took no time at all would still be this)",
                               f"{k2i / _med(ph.exit):.2f} x ({ms(k2i)} vs {ms(_med(ph.exit))} ms)"))
        if enl and enl.uptime:
            spread = max(enl.uptime) / min(enl.uptime) if min(enl.uptime) > 0 else None
            L.append(goal_line(None if spread is None else spread <= GOAL_UPTIME_SPREAD,
                               f"guest uptime at the marker, max / min <= {GOAL_UPTIME_SPREAD} (not bimodal)",
                               "—" if spread is None else
                               f"{spread:.2f} ({min(enl.uptime):.2f}-{max(enl.uptime):.2f} s over {len(enl.uptime)})"))
            # The same spread for QEMU in the same rounds, and paired: a round that is slow for
            # every VMM (the test host's TCG) is not Enlighten's bimodality.
            base_up = base_h.uptime if base_h else []
            if base_up and min(base_up) > 0:
                L.append(goal_line(None, "(for reference: QEMU -M pc -cpu host's uptime at the marker, max / min)",
                                   f"{max(base_up) / min(base_up):.2f} ({min(base_up):.2f}-{max(base_up):.2f} s "
                                   f"over {len(base_up)})"))
            paired = paired_uptime_ratios(runs, f"enlighten@{ncpu}", f"{BASELINE_HOST}@{ncpu}")
            if len(paired) >= 2:
                L.append(goal_line(None, "(paired: Enlighten's uptime / QEMU -M pc -cpu host's in the same "
                                   "round, max / min)",
                                   f"{max(paired) / min(paired):.2f} ({min(paired):.2f}-{max(paired):.2f} "
                                   f"over {len(paired)} rounds)"))
        fi = _med(enl.first) if enl and enl.first else None
        share = None if fi is None or not ex else fi / ex
        L.append(goal_line(None if share is None else share < GOAL_VMM_SHARE,
                           f"VMM's own time before the guest's first instruction < {GOAL_VMM_SHARE:.0%} "
                           "of launch-to-exit (medians)",
                           "—" if share is None else f"{share:.1%} ({ms(fi)} of {ms(ex)} ms)"))
        ov = enl.mem_med("overhead_kib") if enl else None
        thp = enl.mem_med("overhead_thp_kib") if enl else None
        L.append(goal_line(None if ov is None else ov <= GOAL_OVERHEAD_KIB,
                           f"Enlighten VMM overhead <= {GOAL_OVERHEAD_KIB // 1024} MiB (median)",
                           "—" if ov is None else f"{ov / 1024:.1f} MiB"
                           + ("" if not thp else f" (THP {thp / 1024:.1f} MiB of it)")))
        # hv_vmbus: the two variants are the same VM up to the marker (hv_vmbus is loaded
        # after it), so their difference is in marker -> end. Comparing that stretch leaves
        # out the noisy, shared part before the marker (the test host's TCG makes single
        # boots vary by tens of percent); the cost is then taken relative to a whole boot.
        ee = _med(enl.exit) if enl else None
        dv = _med(vmb.tail) if vmb else None
        de = _med(enl.tail) if enl else None
        cost = None if dv is None or de is None or not ee else (dv - de) / ee
        L.append(goal_line(None if cost is None else cost <= GOAL_VMBUS_COST,
                           f"hv_vmbus loaded costs <= {GOAL_VMBUS_COST:.0%} boot time "
                           "(marker -> end, medians, relative to the time to exit)",
                           "—" if cost is None else
                           f"{cost:+.1%} ({ms(dv)} vs {ms(de)} ms marker -> end; exit {ms(ee)} ms)"))
        ve = _med(vmb.exit) if vmb else None
        if ee is not None and ve is not None:
            L.append(goal_line(None, "(for reference: time to exit, medians, unpaired)",
                               f"{ve / ee - 1:+.1%} ({ms(ve)} vs {ms(ee)} ms)"))
        off = st.get(f"enlighten-hv-off@{ncpu}")
        om = _med(off.marker) if off else None
        if em is not None and om:
            L.append(goal_line(em / om <= 1 + GOAL_VMBUS_COST,
                               f"Hyper-V interface on costs <= {GOAL_VMBUS_COST:.0%} time-to-marker "
                               "against --hyperv off (KVM's own interface)",
                               f"{em / om:.2f} x ({ms(em)} vs {ms(om)} ms)"))
    failed = [r for r in runs if not r.ok]
    if failed:
        L.append("")
        L.append("## Failed runs")
        L.append("")
        for r in failed:
            L.append(f"- `{r.case_id}` round {r.rnd}: boot_timer status {r.rc}, "
                     f"VMM rc={r.fields.get('rc', '?')}, marker_ms={r.fields.get('marker_ms', '?')}, "
                     f"timed_out={r.fields.get('timed_out', '?')}")
            if r.log_tail:
                L.append("")
                L.append("  ```")
                L.extend("  " + x for x in r.log_tail[-40:])
                L.append("  ```")
    if lockup:
        L.append("")
        L.append("## Test-host kernel: soft lockup")
        L.append("")
        L.append("The test host's kernel reported a soft lockup and panicked (see `host_script`); "
                 "its log from the first report on:")
        L.append("")
        L.append("```")
        L.extend(lockup)
        L.append("```")
    not_run = [c.id for c in cases if not any(r.case_id == c.id for r in runs)]
    if not_run:
        L.append("")
        L.append(f"Not run (session ended first): {', '.join(not_run)}")
    L.append("")
    L.append("## Command lines (paths inside the test host)")
    L.append("")
    L.append("Test host (on this machine): `" + host_qemu_cmd + "`")
    L.append("")
    L.append(f"Each VMM ran under `{shlex.join(timer_example)} -- VMM...`:")
    L.append("")
    for c in cases:
        L.append(f"- {c.variant.label}, {c.cpus} vCPU: `{shlex.join(argv_of[c.id])}`")
    L.append("")
    L.append("## Raw measurements")
    L.append("")
    L.append("```")
    for r in runs:
        f = r.fields
        L.append(f"{r.case_id} round={r.rnd} load={r.load} status={r.rc} " +
                 " ".join(f"{k}={v}" for k, v in f.items()) +
                 (f" uptime={r.guest_uptime()}" if r.guest_uptime() is not None else ""))
    L.append("```")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--cpus", default="1", help="guest vCPU counts, comma-separated (default 1; e.g. 1,2)")
    ap.add_argument("--variants", default=",".join(v.key for v in VARIANTS),
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    ap.add_argument("--warmup", action="store_true",
                    help="an extra untimed round 0 that verifies and samples memory (longer)")
    ap.add_argument("--init", choices=("default", "minimal"), default="default",
                    help="the default guest's /init (its summary, then power-off), or a minimal one "
                         "that prints the marker and powers off at once")
    ap.add_argument("--timeout", type=int, default=1500, help="whole test-host session, s")
    # --from-raw renders with the same --variants/--cpus/--rounds as the run.
    benchlib.add_session_args(ap, HERE / "results", host_memory=3072, host_cpus=2)
    a = ap.parse_args(argv)

    cpus = benchlib.cpu_counts(ap, a.cpus)
    known = {v.key: v for v in VARIANTS}
    keys = benchlib.pick(ap, a.variants, known)
    if a.rounds < 1 or not cpus or min(cpus) < 1:
        ap.error("--rounds and --cpus must be >= 1")
    cases = [Case(known[k], n) for n in cpus for k in keys]

    try:
        if a.from_raw:  # only the paths matter for the report
            enl, timer = Path(a.build_dir) / "enlighten", Path(a.build_dir) / "bench" / "boot_timer"
            img = guest_image.GuestImage(Path("bzImage"), Path("initrd.img"))
            q = qemu.QemuCarry({}, f"{qemu.HOST_QEMU_DIR}/bin/qemu-system-x86_64",
                               f"{qemu.HOST_QEMU_DIR}/firmware")
        else:
            enl, timer = build(Path(a.build_dir), a.no_build)
            img = guest_image.build()
            q = qemu.carry()
    except ToolError as e:
        log(f"error: {e}")
        return 1
    files: dict[str, str] = dict(q.files)
    h_timer = f"{H_BIN}/boot_timer"
    h_enl = f"{H_BIN}/enlighten"
    h_kernel = f"{H_GUEST}/bzImage"
    h_initrd = f"{H_GUEST}/initrd.img"
    files.update({h_timer: str(timer), h_enl: str(enl), h_kernel: str(img.kernel),
                  h_initrd: str(minimal_initrd() if a.init == "minimal" else img.initrd)})
    argv_of = {c.id: vmm_argv(c, h_kernel, h_initrd, h_enl, q) for c in cases}
    script = host_script(cases, a.rounds, argv_of, h_timer, q, a.warmup)
    if a.dry_run:
        print(script)
        return 0

    host_cmd = shlex.join(testhost.qemu_command(Path("<testhost bzImage>"), Path("<initrd>"),
                                                a.host_cpus, a.host_memory, 64))
    n_runs = len(cases) * (a.rounds + (1 if a.warmup else 0))
    if not a.from_raw:
        log(f"{len(cases)} variants x {a.rounds + (1 if a.warmup else 0)} rounds = {n_runs} VMM "
            f"runs in one test host ({a.host_cpus} vCPUs, {a.host_memory} MiB); progress below")
    load_start = os.getloadavg()[0]
    t0 = time.monotonic()
    complete = True
    if a.from_raw:
        output = Path(a.from_raw).read_text()
    else:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # live progress to stderr
                # A 64 MiB translation cache (as the end-to-end tests use): with QEMU's 1 GiB
                # default, the stale translations of earlier guests made later runs slower
                # round after round (testhost.qemu_command), for every VMM.
                res = testhost.run_in_testhost(script, files=files, cpus=a.host_cpus,
                                               memory_mib=a.host_memory, timeout=a.timeout,
                                               stream=True, tb_size_mib=64)
            output = res.output
        except testhost.TestHostError as e:  # includes TestHostTimeout
            log(f"test-host session failed: {str(e).splitlines()[0]}")
            output = e.output
            complete = False
        except ToolError as e:
            log(f"error: {e}")
            return 1
        if a.save_raw:
            Path(a.save_raw).write_text(output)
    session_s = time.monotonic() - t0
    runs, info, done = parse(output)
    complete = complete and done
    if not runs:
        log("no measurements: see the output above")
        return 1
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "qemu": qemu.version(), "machine": machine_name(),
            "session_s": "?" if a.from_raw else f"{session_s:.0f}",
            "load": "" if a.from_raw else f"{load_start:.1f} / {os.getloadavg()[0]:.1f} "
                    f"({os.cpu_count()} CPUs; above ~1 means other work shared the machine)",
            "warmup": "1" if a.warmup else "", "init": a.init}
    timer_example = timer_argv(h_timer, Case(VARIANTS[0], 1), 1, True)
    timer_example[timer_example.index("--log") + 1] = f"{H_LOGS}/ID.ROUND.log"
    text = report(cases, runs, info, meta, argv_of, timer_example, a.rounds, complete, host_cmd,
                  lockup_log(output))
    sys.stdout.write(text)
    sys.stdout.flush()
    if not a.no_save and not a.from_raw:
        path = benchlib.save_results(a.results_dir, "boot", now.strftime("%Y-%m-%d"), text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
