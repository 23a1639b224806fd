#!/usr/bin/env python3
"""Storage benchmark: fio in the guest, Enlighten's storvsc disk against QEMU 7.2's virtio-blk
and virtio-scsi, in ONE test-host boot.

    python3 bench/storage.py                                   # all variants, 1 and 4 vCPUs, 3 rounds
    python3 bench/storage.py --variants qemu-blk,qemu-scsi --rounds 1 --runtime 5

Every variant boots the same kernel and initrd (the default guest, with a /job that runs
fio), with 512M and the same vCPUs, on the same backing file: a raw image in a tmpfs of the
test host (its RAM), filled with non-zero bytes once at the start. The guest finds the disk
by its size and runs, with O_DIRECT and libaio, one fio job per vCPU (pinned, each on its
own slice of the disk), `--runtime` seconds each, no ramp:

    randread-4k-qd1   randread-4k-qd32   randwrite-4k-qd1   randwrite-4k-qd32
    read-1m-qd8       write-1m-qd8                  (QD is per job)

Before and after each fio run the guest prints a mark and sleeps 1 s; the test host, which
watches the console file, reads the VMM's /proc/PID/stat at each mark: utime + stime (all
threads, including the vCPU threads' time in the guest) and guest_time (the part spent
running the guest). CPU per I/O = their growth over the run / the I/Os fio completed;
"VMM only" leaves out guest_time. The marks' sleeps are in the window (an idle guest).

Rounds run round-robin with the first case rotated each round (as bench/boot.py does); a
case that fails in round 1 is left out of the later ones. The report gives medians over
the rounds, and ratios against QEMU virtio-blk with the same vCPUs. This is a benchmark,
not a test: it exits 0 whatever the numbers are (1 only when it could not run at all).

Output: a markdown report on stdout and in bench/results/storage-<date>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from benchlib import log  # noqa: E402
from enlighten_tools import guest_image, qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402

MEMORY = "512M"
CLK_TCK = 100                       # USER_HZ of the Debian kernel (x86: always 100)
H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
H_DISK_DIR = "/bench-disk"
H_DISK = f"{H_DISK_DIR}/disk.img"
# The VHDX variants: the filled raw image converted by `enlighten image convert` (every block
# allocated, so the workloads read and rewrite allocated blocks), one copy per VMM (QEMU
# updates the headers of a VHDX it writes).
H_VHDX = {"enlighten": f"{H_DISK_DIR}/disk-enl.vhdx", "qemu": f"{H_DISK_DIR}/disk-qemu.vhdx"}


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str               # "enlighten" | "qemu"
    modules: str            # the guest's enlighten.modules=
    format: str = "raw"     # the backing file: raw, or vhdx (made from the raw one)


VARIANTS = [
    Variant("enlighten", "Enlighten storvsc (SCSI)", "enlighten", "hv_vmbus,hv_storvsc,sd_mod"),
    Variant("qemu-blk", "QEMU virtio-blk", "qemu", "virtio_pci,virtio_blk"),
    Variant("qemu-scsi", "QEMU virtio-scsi", "qemu", "virtio_pci,virtio_scsi,sd_mod"),
    Variant("enlighten-vhdx", "Enlighten storvsc on VHDX", "enlighten", "hv_vmbus,hv_storvsc,sd_mod", "vhdx"),
    Variant("qemu-blk-vhdx", "QEMU virtio-blk on VHDX", "qemu", "virtio_pci,virtio_blk", "vhdx"),
]
DEFAULT_VARIANTS = ("enlighten", "qemu-blk", "qemu-scsi")
BASELINE = "qemu-blk"


@dataclass(frozen=True)
class Workload:
    name: str
    fio: str                # fio options
    big: bool = False       # report MiB/s rather than IOPS


WORKLOADS = [
    Workload("randread-4k-qd1", "--rw=randread --bs=4k --iodepth=1"),
    Workload("randread-4k-qd32", "--rw=randread --bs=4k --iodepth=32"),
    Workload("randwrite-4k-qd1", "--rw=randwrite --bs=4k --iodepth=1"),
    Workload("randwrite-4k-qd32", "--rw=randwrite --bs=4k --iodepth=32"),
    Workload("read-1m-qd8", "--rw=read --bs=1M --iodepth=8", big=True),
    Workload("write-1m-qd8", "--rw=write --bs=1M --iodepth=8", big=True),
]


@dataclass(frozen=True)
class Case:
    variant: Variant
    cpus: int

    @property
    def id(self) -> str:
        return f"{self.variant.key}@{self.cpus}"


def guest_job(workloads: list[Workload]) -> str:
    """The guest's /job: find the disk by its size, run each fio workload between marks."""
    cases = "\n".join(f"    {w.name}) opts={shlex.quote(w.fio)} ;;" for w in workloads)
    names = " ".join(w.name for w in workloads)
    return r"""
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; }
size=$(arg bench.size); runtime=$(arg bench.runtime)
ncpu=$(grep -c ^processor /proc/cpuinfo)
dev=; i=0
while [ -z "$dev" ] && [ $i -lt 1200 ]; do
    for b in /sys/block/vd* /sys/block/sd*; do
        [ -e "$b" ] || continue
        [ "$(( $(cat "$b/size") * 512 ))" = "$size" ] && [ -b "/dev/${b##*/}" ] && dev=/dev/${b##*/}
    done
    [ -n "$dev" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -z "$dev" ]; then echo "BENCH-ERROR no disk of $size bytes"; ls /sys/block; dmesg | tail -n 30; exit 1; fi
n=${dev#/dev/}
echo "BENCH-DISK dev=$dev cpus=$ncpu scheduler=$(cat /sys/block/$n/queue/scheduler | tr ' ' ,) nr_requests=$(cat /sys/block/$n/queue/nr_requests) max_sectors_kb=$(cat /sys/block/$n/queue/max_sectors_kb) hw_queues=$(ls /sys/block/$n/mq | wc -l)"
slice=$(( size / ncpu / 1048576 * 1048576 ))
for w in """ + names + r"""; do
    case $w in
""" + cases + r"""
    esac
    echo "BENCH-MARK begin $w"; sleep 1
    fio --name="$w" --filename="$dev" --direct=1 --ioengine=libaio $opts \
        --numjobs="$ncpu" --cpus_allowed="0-$((ncpu - 1))" --cpus_allowed_policy=split \
        --size="$slice" --offset_increment="$slice" --runtime="$runtime" --time_based \
        --group_reporting --output-format=json > /tmp/fio.json 2>/tmp/fio.err
    rc=$?
    echo "BENCH-MARK end $w rc=$rc"; sleep 1
    sed "s/^/BENCH-FIO $w /" /tmp/fio.json
    sed "s/^/BENCH-FIO-ERR $w /" /tmp/fio.err
done
echo "BENCH-GUEST-DONE"
"""


def vmm_argv(case: Case, kernel: str, initrd: str, enlighten: str, q: qemu.QemuCarry,
             serial: str, size: int, runtime: int) -> list[str]:
    v = case.variant
    cmdline = (f"console=ttyS0 quiet enlighten.modules={v.modules} bench.size={size} "
               f"bench.runtime={runtime}")
    path = H_DISK if v.format == "raw" else H_VHDX[v.kind]
    if v.kind == "enlighten":
        return [enlighten, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
                "--memory", MEMORY, "--cpus", str(case.cpus), "--serial", f"file:{serial}",
                "--on-reboot", "exit", "--disk", f"path={path},format={v.format}"]
    # The image is in a tmpfs, which has no O_DIRECT in the test host's kernel 6.1: QEMU's
    # default cache=writeback (page cache) and aio=threads, said explicitly.
    drive = f"file={path},if=none,id=d0,format={v.format},cache=writeback,aio=threads"
    dev = (["-device", "virtio-blk-pci,drive=d0"] if v.key.startswith("qemu-blk") else
           ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0"])
    return [q.binary, "-L", q.firmware_dir, "-M", "pc", "-cpu", "host", "-enable-kvm",
            "-m", MEMORY, "-smp", str(case.cpus), "-nodefaults", "-no-user-config", "-nographic",
            "-serial", f"file:{serial}", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", cmdline, "-drive", drive, *dev]


def host_script(cases: list[Case], rounds: int, argv_of: dict[str, list[str]], disk_mib: int,
                q: qemu.QemuCarry, run_timeout: int, enlighten: str) -> str:
    vhdx = sorted({c.variant.kind for c in cases if c.variant.format == "vhdx"})
    lines = [
        "set -u",
        *benchlib.TESTHOST_PRELUDE,
        f'echo "BENCH-INFO qemu_version=$({shlex.quote(q.binary)} --version | head -n 1)"',
        f"mkdir -p {H_DISK_DIR}",
        f"mount -t tmpfs -o size={(1 + len(vhdx)) * (disk_mib + 64)}m tmpfs {H_DISK_DIR}",
        # non-zero content: reading a hole of a tmpfs file is cheaper than reading data
        f"yes ENLIGHTEN-BENCH | dd of={H_DISK} bs=1M count={disk_mib} iflag=fullblock 2>/dev/null",
        *(f"{shlex.quote(enlighten)} image convert {H_DISK} {H_VHDX[k]} --format vhdx >/dev/null "
          f'|| echo "BENCH-ERROR enlighten image convert failed"' for k in vhdx),
        f'echo "BENCH-INFO disk={H_DISK} disk_bytes=$(stat -c %s {H_DISK}) '
        f'disk_fs=$(stat -f -c %T {H_DISK_DIR})"',
        # bench_case ID ROUND SERIAL ARGV...: run the VMM in the background; at every mark
        # the guest prints, read its CPU times (utime+stime, guest_time: fields 14, 15, 43)
        "bench_case() {",
        '    id=$1; rnd=$2; ser=$3; shift 3',
        '    : > "$ser"',
        '    echo "BENCH-RUN id=$id round=$rnd load=$(cut -d" " -f1 /proc/loadavg)"',
        '    "$@" > /tmp/vmm.log 2>&1 &',
        '    pid=$!; seen=0; polls=0',
        '    while :; do',
        '        st=; read -r _ _ st _ < "/proc/$pid/stat" 2>/dev/null',
        '        [ -n "$st" ] && [ "$st" != Z ] || break',
        '        n=$(grep -c "^BENCH-MARK" "$ser")',
        '        if [ "$n" -gt "$seen" ]; then',
        '            t=$(awk \'{ print $14 + $15, $43 }\' "/proc/$pid/stat")',
        '            while [ "$seen" -lt "$n" ]; do seen=$((seen + 1)); echo "BENCH-CPU id=$id round=$rnd mark=$seen ticks=${t% *} guest_ticks=${t#* }"; done',
        '        fi',
        '        polls=$((polls + 1))',
        f'        if [ $polls -gt {run_timeout * 20} ]; then echo "BENCH-TIMEOUT id=$id round=$rnd"; kill -KILL $pid; break; fi',
        '        sleep 0.05',
        '    done',
        '    wait $pid; rc=$?',
        '    echo "BENCH-RC id=$id round=$rnd rc=$rc"',
        '    tr -d "\\r" < "$ser" | grep -E "^(BENCH-|ENLIGHTEN-INIT|ENLIGHTEN-JOB-EXIT)"',
        '    if ! grep -q BENCH-GUEST-DONE "$ser"; then',
        '        echo "BENCH-LOG-BEGIN id=$id round=$rnd"; tr -d "\\r" < "$ser" | tail -n 40; tail -n 20 /tmp/vmm.log; echo "BENCH-LOG-END"',
        '        return 1',
        '    fi',
        '}',
    ]
    ok = {c.id: "ok_" + re.sub(r"[^A-Za-z0-9]", "_", c.id) for c in cases}
    for r in range(1, rounds + 1):
        lines.append(f"# round {r}")
        k = (r - 1) % len(cases)
        for c in cases[k:] + cases[:k]:
            cmd = shlex.join(["bench_case", c.id, str(r), f"/tmp/serial.{c.id}", *argv_of[c.id]])
            lines.append(f"{ok[c.id]}=0; {cmd} && {ok[c.id]}=1" if r == 1 else f'[ "${ok[c.id]}" = 1 ] && {cmd}')
    lines += ["echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parsing
@dataclass
class Sample:
    case_id: str
    rnd: int
    workload: str
    iops: float = 0.0
    bw_kib: float = 0.0
    lat_us: float = 0.0
    ios: int = 0
    ticks: int | None = None          # utime + stime over the run
    guest_ticks: int | None = None
    fio_rc: int = 0

    def cpu_us_per_io(self, vmm_only: bool = False) -> float | None:
        if self.ticks is None or not self.ios:
            return None
        t = self.ticks - ((self.guest_ticks or 0) if vmm_only else 0)
        return t / CLK_TCK * 1e6 / self.ios


@dataclass
class Session:
    info: dict[str, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    failed: list[tuple[str, int, list[str]]] = field(default_factory=list)
    disks: dict[str, str] = field(default_factory=dict)
    done: bool = False


def parse(output: str) -> Session:
    s = Session()
    cur: tuple[str, int] | None = None
    marks: list[str] = []            # this run's marks, in order ("begin w", "end w rc=0")
    cpu: dict[int, tuple[int, int]] = {}
    fio: dict[str, list[str]] = {}
    log_lines: list[str] | None = None

    def finish() -> None:
        if cur is None:
            return
        begin: dict[str, int] = {}
        for i, m in enumerate(marks, start=1):
            f = m.split()
            if f[0] == "begin":
                begin[f[1]] = i
            elif f[0] == "end" and f[1] in fio:
                smp = Sample(cur[0], cur[1], f[1])
                rc = re.search(r"rc=(\d+)", m)
                smp.fio_rc = int(rc.group(1)) if rc else -1
                try:
                    job = json.loads("\n".join(fio[f[1]]))["jobs"][0]
                except (ValueError, KeyError, IndexError):
                    continue
                for d in ("read", "write"):
                    smp.iops += job[d]["iops"]
                    smp.bw_kib += job[d]["bw"]
                    smp.ios += job[d]["total_ios"]
                lats = [job[d]["lat_ns"]["mean"] for d in ("read", "write") if job[d]["total_ios"]]
                smp.lat_us = (sum(lats) / len(lats) / 1000) if lats else 0.0
                b = begin.get(f[1])
                if b in cpu and i in cpu:
                    smp.ticks = cpu[i][0] - cpu[b][0]
                    smp.guest_ticks = cpu[i][1] - cpu[b][1]
                s.samples.append(smp)

    for line in output.splitlines():
        if log_lines is not None:
            if line.startswith("BENCH-LOG-END"):
                log_lines = None
            else:
                log_lines.append(line)
            continue
        if line.startswith("BENCH-INFO "):
            for kv in re.findall(r"(\w+)=((?:[^ ]| (?!\w+=))*)", line[len("BENCH-INFO "):]):
                s.info[kv[0]] = kv[1]
        elif line.startswith("BENCH-RUN "):
            finish()
            kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
            cur = (kv["id"], int(kv["round"]))
            marks, cpu, fio = [], {}, {}
        elif line.startswith("BENCH-MARK "):
            marks.append(line[len("BENCH-MARK "):])
        elif line.startswith("BENCH-CPU "):
            kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
            cpu[int(kv["mark"])] = (int(kv["ticks"]), int(kv["guest_ticks"]))
        elif line.startswith("BENCH-FIO "):
            _, w, *rest = line.split(" ", 2)
            fio.setdefault(w, []).append(rest[0] if rest else "")
        elif line.startswith("BENCH-DISK ") and cur:
            s.disks[cur[0]] = line[len("BENCH-DISK "):]
        elif line.startswith("BENCH-LOG-BEGIN") and cur:
            log_lines = []
            s.failed.append((cur[0], cur[1], log_lines))
        elif line.startswith("BENCH-DONE"):
            s.done = True
    finish()
    return s


# ----------------------------------------------------------------------------- report
def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def report(cases: list[Case], workloads: list[Workload], s: Session, meta: dict[str, str],
           argv_of: dict[str, list[str]], rounds: int, runtime: int, host_cmd: str,
           lockup: list[str]) -> str:
    L = [f"# Storage benchmark, {meta['date']}", ""]
    L.append(f"- commit `{meta['commit']}`; {meta['qemu']} (in the test host: {s.info.get('qemu_version', '?')})")
    L.append(f"- test host: kernel {s.info.get('host_kernel', '?')}, {s.info.get('host_cpus', '?')} vCPU(s), "
             f"{int(s.info.get('host_mem_kib', '0') or 0) // 1024} MiB, QEMU TCG on {meta['machine']}; "
             f"session {meta['session_s']} s; this machine's load (1 min) at start / end: {meta['load']}")
    L.append(f"- backing file: {s.info.get('disk', '?')}, {int(s.info.get('disk_bytes', '0') or 0) // (1 << 20)} MiB "
             f"on {s.info.get('disk_fs', '?')} (the test host's RAM), filled with non-zero bytes; "
             f"guest: default bzImage + initrd, {MEMORY}; fio 3.33 (Debian) in the guest, O_DIRECT, "
             f"libaio, one job per vCPU (pinned, own slice of the disk), {runtime} s per run; "
             f"{rounds} round(s), interleaved")
    if not s.done:
        L.append("- **INCOMPLETE**: the session ended early; below is what was measured")
    L.append("")
    L.append("IOPS (4 KiB) or MiB/s (1 MiB): median over the rounds; *x blk*: that / QEMU virtio-blk's "
             "(same vCPUs; above 1 is faster); *lat*: mean completion latency (µs, fio lat_ns); "
             "*CPU/IO*: the VMM process's utime+stime over the run / I/Os (µs per I/O), "
             "*VMM only*: without the time its vCPU threads spent in the guest (guest_time).")
    by: dict[tuple[str, str], list[Sample]] = {}
    for smp in s.samples:
        by.setdefault((smp.case_id, smp.workload), []).append(smp)
    for ncpu in sorted({c.cpus for c in cases}):
        sub = [c for c in cases if c.cpus == ncpu]
        L += ["", f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}", ""]
        L.append("| workload | variant | n | IOPS or MiB/s | x blk | lat µs | CPU/IO µs | VMM only µs |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for w in workloads:
            base = by.get((f"{BASELINE}@{ncpu}", w.name), [])
            bval = _med([x.bw_kib / 1024 if w.big else x.iops for x in base])
            for c in sub:
                xs = by.get((c.id, w.name), [])
                val = _med([x.bw_kib / 1024 if w.big else x.iops for x in xs])
                ratio = "—" if val is None or not bval else f"{val / bval:.2f}"
                cpu = _med([v for x in xs if (v := x.cpu_us_per_io()) is not None])
                vmm = _med([v for x in xs if (v := x.cpu_us_per_io(vmm_only=True)) is not None])
                unit = " MiB/s" if w.big else ""
                L.append(f"| {w.name} | {c.variant.label} | {len(xs)} | {fmt(val)}{unit if val is not None else ''} "
                         f"| {ratio} | {fmt(_med([x.lat_us for x in xs]))} | {fmt(cpu, 1)} | {fmt(vmm, 1)} |")
    if s.disks:
        L += ["", "## The disk as each guest saw it", ""]
        L += [f"- `{cid}`: {d}" for cid, d in sorted(s.disks.items())]
    bad = [smp for smp in s.samples if smp.fio_rc != 0]
    if bad or s.failed:
        L += ["", "## Failures", ""]
        L += [f"- `{x.case_id}` round {x.rnd} {x.workload}: fio exit {x.fio_rc}" for x in bad]
        for cid, rnd, tail in s.failed:
            L += [f"- `{cid}` round {rnd}: the guest did not finish; console and VMM log tail:", "", "  ```"]
            L += ["  " + t for t in tail[-60:]] + ["  ```"]
    if lockup:
        L += ["", "## Test-host kernel: soft lockup", "", "```", *lockup, "```"]
    L += ["", "## Command lines (paths inside the test host)", "", f"Test host: `{host_cmd}`", ""]
    L += [f"- {c.variant.label}, {c.cpus} vCPU: `{shlex.join(argv_of[c.id])}`" for c in cases]
    L += ["", "Guest fio, per workload: `fio --filename=DEV --direct=1 --ioengine=libaio OPTS --numjobs=VCPUS "
          "--cpus_allowed=0-(VCPUS-1) --cpus_allowed_policy=split --size=SLICE --offset_increment=SLICE "
          f"--runtime={runtime} --time_based --group_reporting --output-format=json` with OPTS:", ""]
    L += [f"- {w.name}: `{w.fio}`" for w in workloads]
    L += ["", "## Raw samples", "", "```"]
    for x in s.samples:
        L.append(f"{x.case_id} round={x.rnd} {x.workload} iops={x.iops:.0f} bw_kib={x.bw_kib:.0f} "
                 f"lat_us={x.lat_us:.1f} ios={x.ios} ticks={x.ticks} guest_ticks={x.guest_ticks} rc={x.fio_rc}")
    L.append("```")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    ap.add_argument("--cpus", default="1,4", help="guest vCPU counts (default 1,4)")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                    help="comma-separated subset of: " + ", ".join(w.name for w in WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio run (default 10)")
    ap.add_argument("--disk-mib", type=int, default=512, help="backing file size (default 512)")
    # A 4-vCPU guest in a 2-vCPU test host crashed the test host now and then (see
    # tests/e2e/storage_runs.py, "channels"): by default the test host has as many vCPUs as
    # the largest guest (at least 2), on this machine's cores.
    benchlib.add_session_args(ap, HERE / "results", host_memory=0, host_memory_help="3072, 4096 with VHDX variants")
    a = ap.parse_args(argv)

    known = {v.key: v for v in VARIANTS}
    keys = benchlib.pick(ap, a.variants, known)
    wl = {w.name: w for w in WORKLOADS}
    wnames = benchlib.pick(ap, a.workloads, wl, "workload")
    cpus = benchlib.cpu_counts(ap, a.cpus)
    if a.rounds < 1 or not cpus or min(cpus) < 1 or a.runtime < 1:
        ap.error("--rounds, --cpus and --runtime must be >= 1")
    cases = [Case(known[k], n) for n in cpus for k in keys]
    a.host_cpus = a.host_cpus or max(2, max(cpus))
    a.host_memory = a.host_memory or (4096 if any(c.variant.format == "vhdx" for c in cases) else 3072)
    workloads = [wl[k] for k in wnames]

    try:
        need_enl = any(c.variant.kind == "enlighten" or c.variant.format == "vhdx" for c in cases)
        if a.from_raw:
            enl = Path("enlighten")
            img = guest_image.GuestImage(Path("bzImage"), Path("initrd.img"))
            q = qemu.QemuCarry({}, f"{qemu.HOST_QEMU_DIR}/bin/qemu-system-x86_64", f"{qemu.HOST_QEMU_DIR}/firmware")
            initrd = Path("initrd.img")
        else:
            enl = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])["enlighten"] if need_enl else None
            img = guest_image.build()
            q = qemu.carry()
            initrd = guest_image.make_run_initrd(job=guest_job(workloads), tools=True)
    except ToolError as e:
        log(f"error: {e}")
        return 1

    size = a.disk_mib << 20
    h_enl, h_kernel, h_initrd = f"{H_BIN}/enlighten", f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img"
    files: dict[str, str] = dict(q.files)
    files.update({h_kernel: str(img.kernel), h_initrd: str(initrd)})
    if enl is not None:
        files[h_enl] = str(enl)
    argv_of = {c.id: vmm_argv(c, h_kernel, h_initrd, h_enl, q, f"/tmp/serial.{c.id}", size, a.runtime)
               for c in cases}
    run_timeout = 180 + len(workloads) * (a.runtime + 20) * 4
    script = host_script(cases, a.rounds, argv_of, a.disk_mib, q, run_timeout, h_enl)
    if a.dry_run:
        print(script)
        return 0
    host_cmd = shlex.join(testhost.qemu_command(Path("<testhost bzImage>"), Path("<initrd>"),
                                                a.host_cpus, a.host_memory))
    session_timeout = 120 + len(cases) * a.rounds * (90 + len(workloads) * (a.runtime + 8) * 2)
    load_start = benchlib.load_text()
    t0 = time.monotonic()
    if a.from_raw:
        output = Path(a.from_raw).read_text()
    else:
        log(f"{len(cases)} cases x {a.rounds} rounds x {len(workloads)} workloads in one test host "
            f"({a.host_cpus} vCPUs, {a.host_memory} MiB; session timeout {session_timeout} s)")
        try:
            with contextlib.redirect_stdout(sys.stderr):
                res = testhost.run_in_testhost(script, files=files, cpus=a.host_cpus,
                                               memory_mib=a.host_memory, timeout=session_timeout,
                                               stream=True)
            output = res.output
        except testhost.TestHostError as e:
            log(f"test-host session failed: {str(e).splitlines()[0]}")
            output = e.output
        except ToolError as e:
            log(f"error: {e}")
            return 1
        if a.save_raw:
            Path(a.save_raw).write_text(output)
    s = parse(output)
    if not s.samples:
        log("no measurements: see the output above")
        return 1
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": benchlib.git_commit(),
            "qemu": qemu.version(), "machine": benchlib.machine_name(),
            "session_s": "?" if a.from_raw else f"{time.monotonic() - t0:.0f}",
            "load": f"{load_start} / {benchlib.load_text()}"}
    text = report(cases, workloads, s, meta, argv_of, a.rounds, a.runtime, host_cmd,
                  benchlib.lockup_log(output))
    sys.stdout.write(text)
    if not a.no_save and not a.from_raw:
        path = benchlib.save_results(a.results_dir, "storage", now.strftime("%Y-%m-%d"), text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
