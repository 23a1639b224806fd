#!/usr/bin/env python3
"""Network benchmark: iperf3 in the guest against iperf3 in the test host, Enlighten's
synthetic NIC (netvsp, the guest's hv_netvsc) against QEMU 7.2's virtio-net, in ONE
test-host boot.

    python3 bench/net.py                                          # all variants, 1 and 4 vCPUs, 3 rounds
    python3 bench/net.py --variants qemu-user,qemu-tap --cpus 1 --rounds 1 --runtime 3

Variants, two host backends each:

    enlighten-slirp   enlighten run --net backend=slirp             (libslirp NAT)
    qemu-user         -netdev user + virtio-net-pci                 (QEMU's libslirp)
    enlighten-tap     enlighten run --net backend=tap,tap=benchtap
    qemu-tap          -netdev tap,ifname=benchtap,vhost=off + virtio-net-pci
    qemu-tap-vhost    the same with vhost=on (only if the test host has /dev/vhost-net)

The tap is a persistent tap of the test host (busybox `tunctl -t benchtap`) with 10.0.3.1/24;
the guest takes 10.0.3.2/24 (enlighten.net=, see guest_image.py). With slirp the guest gets
10.0.2.15 by DHCP and reaches the host's iperf3 at 10.0.2.2 (slirp connects to the test
host's 127.0.0.1). In every variant the guest is the iperf3 client (`iperf3 -s` runs in the
test host), so no port forward is needed; host->guest is `iperf3 -R`:

    tcp-tx-1   guest->host TCP, 1 stream        tcp-tx-4   the same, -P 4
    tcp-rx-1   host->guest TCP, 1 stream (-R)    tcp-rx-4   the same, -P 4
    udp-tx-64  guest->host UDP, 64-byte datagrams, unlimited rate (-u -l 64 -b 0)
    udp-rx-64  host->guest, the same (-R)

TCP: the receiver's bits/s (end.sum_received). UDP: datagrams per second that arrived
((packets - lost) / seconds). Before and after each iperf3 run the guest prints a mark and
sleeps 1 s; the test host reads the VMM's /proc/PID/stat at each mark: utime + stime (all
threads, the vCPUs' time in the guest included; for vhost-net plus the vhost-<pid> kernel
thread's) and guest_time. CPU per GB = their growth over the run / the bytes that arrived
(TCP payload; UDP: datagrams x 64); "VMM only" leaves out guest_time. The marks' sleeps are
in the window (an idle guest).

Rounds run round-robin with the first case rotated each round (as bench/storage.py does); a
case that fails in round 1 is left out of the later ones. The report gives medians, ratios
against QEMU virtio-net without vhost on the same host backend and vCPUs (x virtio), and for
the tap variants against vhost-net (x vhost). QEMU's virtio-net has one queue pair here (a
multi-queue tap would need `queues=` and a multi-queue tap device); Enlighten's NIC opens
as many channels as the guest asks for. A benchmark, not a test: it exits 0 whatever the
numbers are (1 only when it could not run at all).

Output: a markdown report on stdout and in bench/results/net-<date>.md.
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
TAP = "benchtap"
TAP_HOST, TAP_GUEST, TAP_LEN = "10.0.3.1", "10.0.3.2", 24
SLIRP_HOST = "10.0.2.2"
UDP_LEN = 64


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str               # "enlighten" | "qemu"
    backend: str            # "slirp" | "tap"
    vhost: bool = False


VARIANTS = [
    Variant("enlighten-slirp", "Enlighten netvsp, slirp", "enlighten", "slirp"),
    Variant("qemu-user", "QEMU virtio-net, user (slirp)", "qemu", "slirp"),
    Variant("enlighten-tap", "Enlighten netvsp, tap", "enlighten", "tap"),
    Variant("qemu-tap", "QEMU virtio-net, tap", "qemu", "tap"),
    Variant("qemu-tap-vhost", "QEMU virtio-net, tap + vhost-net", "qemu", "tap", vhost=True),
]
# the ratio columns: same backend, QEMU virtio-net without vhost; and vhost-net
BASELINE = {"slirp": "qemu-user", "tap": "qemu-tap"}
VHOST_BASELINE = "qemu-tap-vhost"


@dataclass(frozen=True)
class Workload:
    name: str
    iperf: str              # iperf3 client options (besides -c SERVER -t RUNTIME -J)
    udp: bool = False


WORKLOADS = [
    Workload("tcp-tx-1", ""),
    Workload("tcp-tx-4", "-P 4"),
    Workload("tcp-rx-1", "-R"),
    Workload("tcp-rx-4", "-R -P 4"),
    Workload("udp-tx-64", f"-u -l {UDP_LEN} -b 0", udp=True),
    Workload("udp-rx-64", f"-R -u -l {UDP_LEN} -b 0", udp=True),
]


@dataclass(frozen=True)
class Case:
    variant: Variant
    cpus: int

    @property
    def id(self) -> str:
        return f"{self.variant.key}@{self.cpus}"


def guest_job(workloads: list[Workload]) -> str:
    """The guest's /job: check the network /init configured, then each iperf3 run between marks."""
    cases = "\n".join(f"    {w.name}) opts={shlex.quote(w.iperf)} ;;" for w in workloads)
    names = " ".join(w.name for w in workloads)
    return r"""
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; }
server=$(arg bench.server); runtime=$(arg bench.runtime)
if ! ip -4 addr show dev eth0 2>/dev/null | grep -q "inet "; then
    echo "BENCH-ERROR eth0 has no IPv4 address"; ip addr; dmesg | tail -n 30; exit 1
fi
drv=$(readlink /sys/class/net/eth0/device/driver); drv=${drv##*/}
echo "BENCH-NIC driver=$drv cpus=$(grep -c ^processor /proc/cpuinfo) mtu=$(cat /sys/class/net/eth0/mtu) rx_queues=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l) tx_queues=$(ls -d /sys/class/net/eth0/queues/tx-* | wc -l) tso=$(ethtool -k eth0 | sed -n 's/^tcp-segmentation-offload: *//p' | tr ' ' _) combined=$(ethtool -l eth0 2>/dev/null | sed -n 's/^Combined:[[:space:]]*//p' | tr '\n' / )"
# the server may still be starting when a fast guest gets here
i=0
until iperf3 -c "$server" -t 1 >/dev/null 2>&1 || [ $i -ge 10 ]; do sleep 1; i=$((i + 1)); done
for w in """ + names + r"""; do
    case $w in
""" + cases + r"""
    esac
    echo "BENCH-MARK begin $w"; sleep 1
    iperf3 -c "$server" -t "$runtime" -J $opts > /tmp/iperf.json 2>/tmp/iperf.err
    rc=$?
    echo "BENCH-MARK end $w rc=$rc"; sleep 1
    sed "s/^/BENCH-IPERF $w /" /tmp/iperf.json
    sed "s/^/BENCH-IPERF-ERR $w /" /tmp/iperf.err
done
echo "BENCH-GUEST-DONE"
"""


def vmm_argv(case: Case, kernel: str, initrd: str, enlighten: str, q: qemu.QemuCarry,
             serial: str, runtime: int) -> list[str]:
    v = case.variant
    modules = "hv_vmbus,hv_netvsc" if v.kind == "enlighten" else "virtio_pci,virtio_net"
    server, net = (SLIRP_HOST, "dhcp") if v.backend == "slirp" else (TAP_HOST, f"{TAP_GUEST}/{TAP_LEN}")
    cmdline = (f"console=ttyS0 quiet enlighten.modules={modules} enlighten.net={net} "
               f"bench.server={server} bench.runtime={runtime}")
    if v.kind == "enlighten":
        nic = "backend=slirp" if v.backend == "slirp" else f"backend=tap,tap={TAP}"
        return [enlighten, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
                "--memory", MEMORY, "--cpus", str(case.cpus), "--serial", f"file:{serial}",
                "--on-reboot", "exit", "--net", nic]
    netdev = ("user,id=n0" if v.backend == "slirp" else
              f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={'on' if v.vhost else 'off'}")
    return [q.binary, "-L", q.firmware_dir, "-M", "pc", "-cpu", "host", "-enable-kvm",
            "-m", MEMORY, "-smp", str(case.cpus), "-nodefaults", "-no-user-config", "-nographic",
            "-serial", f"file:{serial}", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", cmdline, "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]


def host_script(cases: list[Case], rounds: int, argv_of: dict[str, list[str]],
                q: qemu.QemuCarry, run_timeout: int) -> str:
    lines = [
        "set -u",
        *benchlib.TESTHOST_PRELUDE,
        f'echo "BENCH-INFO qemu_version=$({shlex.quote(q.binary)} --version | head -n 1)"',
        'echo "BENCH-INFO iperf3=$(iperf3 --version | head -n 1)"',
        "modprobe tun || echo 'BENCH-ERROR modprobe tun failed'",
        "modprobe vhost_net 2>/dev/null",
        'echo "BENCH-INFO vhost_net=$([ -c /dev/vhost-net ] && echo yes || echo no)"',
        # the tap: persistent, with the host's address; the VMM attaches to it
        f"tunctl -t {TAP} >/dev/null && ip addr add {TAP_HOST}/{TAP_LEN} dev {TAP} && ip link set {TAP} up "
        "|| echo 'BENCH-ERROR could not make the tap'",
        "iperf3 -s -D -I /tmp/iperf3.pid || echo 'BENCH-ERROR iperf3 -s failed'",
        # vhost_ticks PID: utime+stime of the vhost-net worker threads of PID (kernel threads)
        # kvm_stats PID: KVM's own counters of the VM that PID made (debugfs, summed over its
        # vCPUs): every exit to the host, and every interrupt injected into the guest. The same
        # measure for QEMU and for Enlighten.
        "mount -t debugfs none /sys/kernel/debug 2>/dev/null",
        "kvm_stats() {",
        '    e=0; i=0; io=0; hlt=0; ext=0',
        '    for d in /sys/kernel/debug/kvm/$1-*; do',
        '        [ -r "$d/exits" ] || continue',
        '        e=$((e + $(cat "$d/exits"))); i=$((i + $(cat "$d/irq_injections")))',
        '        io=$((io + $(cat "$d/io_exits"))); hlt=$((hlt + $(cat "$d/halt_exits"))); ext=$((ext + $(cat "$d/irq_exits")))',
        '    done',
        '    echo "exits=$e irqs=$i io_exits=$io halt_exits=$hlt irq_exits=$ext"',
        "}",
        "vhost_ticks() {",
        '    t=0',
        '    for p in /proc/[0-9]*; do',
        '        c=; read -r c < "$p/comm" 2>/dev/null',
        '        case "$c" in "vhost-$1") t=$((t + $(awk \'{ print $14 + $15 }\' "$p/stat" 2>/dev/null || echo 0))) ;; esac',
        '    done',
        '    echo $t',
        "}",
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
        '            vh=$(vhost_ticks $pid); ks=$(kvm_stats $pid)',
        '            while [ "$seen" -lt "$n" ]; do seen=$((seen + 1)); echo "BENCH-CPU id=$id round=$rnd mark=$seen ticks=${t% *} guest_ticks=${t#* } vhost_ticks=$vh $ks"; done',
        '        fi',
        '        polls=$((polls + 1))',
        f'        if [ $polls -gt {run_timeout * 20} ]; then echo "BENCH-TIMEOUT id=$id round=$rnd"; kill -KILL $pid; break; fi',
        '        sleep 0.05',
        '    done',
        '    wait $pid; rc=$?',
        '    echo "BENCH-RC id=$id round=$rnd rc=$rc"',
        '    tr -d "\\r" < "$ser" | grep -E "^(BENCH-|ENLIGHTEN-INIT|ENLIGHTEN-NET|ENLIGHTEN-JOB-EXIT)"',
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
            if c.variant.vhost:
                cmd = (f'if [ -c /dev/vhost-net ]; then {cmd}; else echo "BENCH-SKIP id={c.id} '
                       f'no /dev/vhost-net in the test host"; false; fi')
            lines.append(f"{ok[c.id]}=0; {cmd} && {ok[c.id]}=1" if r == 1 else f'[ "${ok[c.id]}" = 1 ] && {cmd}')
    lines += ["kill $(cat /tmp/iperf3.pid) 2>/dev/null", "echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parsing
@dataclass
class Sample:
    case_id: str
    rnd: int
    workload: str
    bps: float = 0.0                  # TCP: receiver's bits/s
    pps: float = 0.0                  # UDP: datagrams/s that arrived
    lost_percent: float = 0.0         # UDP
    bytes: int = 0                    # that arrived (UDP: datagrams x UDP_LEN)
    retransmits: int | None = None    # TCP, sender side
    ticks: int | None = None          # utime + stime over the run (+ vhost workers)
    guest_ticks: int | None = None
    exits: int | None = None          # KVM exits over the run (all vCPUs)
    irqs: int | None = None           # interrupts KVM injected into the guest over the run
    exit_kinds: dict[str, int] = field(default_factory=dict)  # io, halt, ext(ernal interrupt) exits
    rc: int = 0
    error: str = ""

    def cpu_s_per_gb(self, vmm_only: bool = False) -> float | None:
        if self.ticks is None or not self.bytes:
            return None
        t = self.ticks - ((self.guest_ticks or 0) if vmm_only else 0)
        return t / CLK_TCK / (self.bytes / 1e9)

    def per_unit(self, count: int | None, udp: bool) -> float | None:
        """`count` per datagram that arrived (UDP) or per MB that arrived (TCP)."""
        if count is None or not self.bytes:
            return None
        return count / (self.bytes / UDP_LEN) if udp else count / (self.bytes / 1e6)


@dataclass
class Session:
    info: dict[str, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    failed: list[tuple[str, int, list[str]]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    nics: dict[str, str] = field(default_factory=dict)
    done: bool = False


def sample_from_iperf(smp: Sample, doc: dict, udp: bool) -> None:
    """Fill a sample from iperf3's JSON (3.12). iperf3 exits 0 even when it failed to
    connect; the JSON then has "error"."""
    if doc.get("error"):
        smp.error = str(doc["error"])
        return
    end = doc.get("end", {})
    if udp:
        s = end.get("sum", {})
        packets, lost, secs = s.get("packets", 0), s.get("lost_packets", 0), s.get("seconds", 0)
        got = max(0, packets - lost)
        smp.pps = got / secs if secs else 0.0
        smp.lost_percent = float(s.get("lost_percent", 0.0))
        smp.bytes = got * UDP_LEN
    else:
        r = end.get("sum_received", {})
        smp.bps = float(r.get("bits_per_second", 0.0))
        smp.bytes = int(r.get("bytes", 0))
        smp.retransmits = end.get("sum_sent", {}).get("retransmits")


def parse(output: str, workloads: list[Workload]) -> Session:
    s = Session()
    udp = {w.name: w.udp for w in workloads}
    cur: tuple[str, int] | None = None
    marks: list[str] = []
    cpu: dict[int, tuple[int, int]] = {}
    kvm: dict[int, tuple[int, ...]] = {}
    out: dict[str, list[str]] = {}
    log_lines: list[str] | None = None

    def finish() -> None:
        if cur is None:
            return
        begin: dict[str, int] = {}
        for i, m in enumerate(marks, start=1):
            f = m.split()
            if f[0] == "begin":
                begin[f[1]] = i
            elif f[0] == "end" and f[1] in out:
                smp = Sample(cur[0], cur[1], f[1])
                rc = re.search(r"rc=(\d+)", m)
                smp.rc = int(rc.group(1)) if rc else -1
                try:
                    sample_from_iperf(smp, json.loads("\n".join(out[f[1]])), udp.get(f[1], False))
                except ValueError:
                    smp.error = "no JSON from iperf3"
                b = begin.get(f[1])
                if b in cpu and i in cpu:
                    smp.ticks = cpu[i][0] - cpu[b][0]
                    smp.guest_ticks = cpu[i][1] - cpu[b][1]
                if b in kvm and i in kvm:
                    smp.exits = kvm[i][0] - kvm[b][0]
                    smp.irqs = kvm[i][1] - kvm[b][1]
                    if len(kvm[i]) > 2 and len(kvm[b]) > 2:
                        smp.exit_kinds = {k: kvm[i][j] - kvm[b][j] for j, k in ((2, "io"), (3, "halt"), (4, "ext"))}
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
            marks, cpu, kvm, out = [], {}, {}, {}
        elif line.startswith("BENCH-MARK "):
            marks.append(line[len("BENCH-MARK "):])
        elif line.startswith("BENCH-CPU "):
            kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
            # vhost-net's work is in its kernel threads, not in QEMU's own times
            cpu[int(kv["mark"])] = (int(kv["ticks"]) + int(kv.get("vhost_ticks", "0") or 0),
                                    int(kv["guest_ticks"]))
            if "exits" in kv and "irqs" in kv:
                kvm[int(kv["mark"])] = (int(kv["exits"]), int(kv["irqs"]),
                                        *((int(kv["io_exits"]), int(kv["halt_exits"]), int(kv["irq_exits"]))
                                          if "io_exits" in kv else ()))
        elif line.startswith("BENCH-IPERF "):
            _, w, *rest = line.split(" ", 2)
            out.setdefault(w, []).append(rest[0] if rest else "")
        elif line.startswith("BENCH-NIC ") and cur:
            s.nics[cur[0]] = line[len("BENCH-NIC "):]
        elif line.startswith("BENCH-SKIP "):
            m = re.match(r"BENCH-SKIP id=(\S+) (.*)", line)
            if m:
                s.skipped[m.group(1)] = m.group(2)
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


def _value(w: Workload, x: Sample) -> float:
    return x.pps if w.udp else x.bps / 1e6


def report(cases: list[Case], workloads: list[Workload], s: Session, meta: dict[str, str],
           argv_of: dict[str, list[str]], rounds: int, runtime: int, host_cmd: str,
           lockup: list[str]) -> str:
    L = [f"# Network benchmark, {meta['date']}", ""]
    L.append(f"- commit `{meta['commit']}`; {meta['qemu']} (in the test host: {s.info.get('qemu_version', '?')}); "
             f"{s.info.get('iperf3', 'iperf3 ?')} in the guest and the test host")
    L.append(f"- test host: kernel {s.info.get('host_kernel', '?')}, {s.info.get('host_cpus', '?')} vCPU(s), "
             f"{int(s.info.get('host_mem_kib', '0') or 0) // 1024} MiB, QEMU TCG on {meta['machine']}; "
             f"/dev/vhost-net: {s.info.get('vhost_net', '?')}; session {meta['session_s']} s; "
             f"this machine's load (1 min) at start / end: {meta['load']}")
    L.append(f"- guest: default bzImage + initrd with the network tools, {MEMORY}; iperf3 client in the "
             f"guest, `iperf3 -s` in the test host (slirp: 10.0.2.2; tap: {TAP_HOST} on `{TAP}`), "
             f"{runtime} s per run; {rounds} round(s), interleaved")
    if not s.done:
        L.append("- **INCOMPLETE**: the session ended early; below is what was measured")
    L.append("")
    L.append("TCP: Mbit/s at the receiver; UDP: 64-byte datagrams per second that arrived (loss in the "
             "raw samples). Medians over the rounds. *x virtio*: that / QEMU virtio-net's on the same host "
             "backend without vhost (same vCPUs; above 1 is faster); *x vhost*: that / QEMU with vhost-net "
             "(tap only); *CPU s/GB*: the VMM process's utime+stime (for vhost-net plus its vhost "
             "kernel threads) over the run / GB that arrived; *VMM only*: without the time its vCPU "
             "threads spent in the guest (guest_time); *exits* and *IRQs*: KVM's own counts of the VM's "
             "exits to the host and of the interrupts it injected (debugfs, all vCPUs), per datagram that "
             "arrived (UDP) or per MB (TCP).")
    by: dict[tuple[str, str], list[Sample]] = {}
    for smp in s.samples:
        if not smp.error and smp.rc == 0:
            by.setdefault((smp.case_id, smp.workload), []).append(smp)
    for ncpu in sorted({c.cpus for c in cases}):
        sub = [c for c in cases if c.cpus == ncpu]
        L += ["", f"## {ncpu} vCPU{'s' if ncpu > 1 else ''}", ""]
        L.append("| workload | variant | n | Mbit/s or pkt/s | x virtio | x vhost | CPU s/GB | VMM only s/GB "
                 "| exits | IRQs |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in workloads:
            for c in sub:
                xs = by.get((c.id, w.name), [])
                val = _med([_value(w, x) for x in xs])
                base = _med([_value(w, x) for x in by.get((f"{BASELINE[c.variant.backend]}@{ncpu}", w.name), [])])
                vh = (_med([_value(w, x) for x in by.get((f"{VHOST_BASELINE}@{ncpu}", w.name), [])])
                      if c.variant.backend == "tap" else None)
                ratio = "—" if val is None or not base else f"{val / base:.2f}"
                vratio = "—" if val is None or not vh else f"{val / vh:.2f}"
                cpu = _med([v for x in xs if (v := x.cpu_s_per_gb()) is not None])
                vmm = _med([v for x in xs if (v := x.cpu_s_per_gb(vmm_only=True)) is not None])
                unit = " pkt/s" if w.udp else " Mbit/s"
                L.append(f"| {w.name} | {c.variant.label} | {len(xs)} | {fmt(val)}{unit if val is not None else ''} "
                         f"| {ratio} | {vratio} | {fmt(cpu, 1)} | {fmt(vmm, 1)} "
                         f"| {fmt(_med([v for x in xs if (v := x.per_unit(x.exits, w.udp)) is not None]), 2)} "
                         f"| {fmt(_med([v for x in xs if (v := x.per_unit(x.irqs, w.udp)) is not None]), 2)} |")
    if s.nics:
        L += ["", "## The NIC as each guest saw it", ""]
        L += [f"- `{cid}`: {d}" for cid, d in sorted(s.nics.items())]
    bad = [smp for smp in s.samples if smp.error or smp.rc != 0]
    if bad or s.failed or s.skipped:
        L += ["", "## Failures and skips", ""]
        L += [f"- `{cid}`: skipped, {why}" for cid, why in sorted(s.skipped.items())]
        L += [f"- `{x.case_id}` round {x.rnd} {x.workload}: iperf3 exit {x.rc} {x.error}" for x in bad]
        for cid, rnd, tail in s.failed:
            L += [f"- `{cid}` round {rnd}: the guest did not finish; console and VMM log tail:", "", "  ```"]
            L += ["  " + t for t in tail[-60:]] + ["  ```"]
    if lockup:
        L += ["", "## Test-host kernel: soft lockup", "", "```", *lockup, "```"]
    L += ["", "## Command lines (paths inside the test host)", "", f"Test host: `{host_cmd}`", ""]
    L += [f"- {c.variant.label}, {c.cpus} vCPU: `{shlex.join(argv_of[c.id])}`" for c in cases]
    L += ["", "Guest iperf3, per workload: `iperf3 -c SERVER -t RUNTIME -J OPTS` with OPTS:", ""]
    L += [f"- {w.name}: `{w.iperf or '(none)'}`" for w in workloads]
    L += ["", "## Raw samples", "", "```"]
    for x in s.samples:
        L.append(f"{x.case_id} round={x.rnd} {x.workload} mbps={x.bps / 1e6:.1f} pps={x.pps:.0f} "
                 f"lost%={x.lost_percent:.1f} bytes={x.bytes} retr={x.retransmits} ticks={x.ticks} "
                 f"guest_ticks={x.guest_ticks} exits={x.exits} irqs={x.irqs} "
                 + "".join(f"{k}_exits={v} " for k, v in x.exit_kinds.items()) + f"rc={x.rc}"
                 f"{' error=' + x.error if x.error else ''}")
    L.append("```")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(v.key for v in VARIANTS),
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    ap.add_argument("--cpus", default="1,4", help="guest vCPU counts (default 1,4)")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                    help="comma-separated subset of: " + ", ".join(w.name for w in WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=10, help="seconds per iperf3 run (default 10)")
    # A 4-vCPU guest in a 2-vCPU test host crashed the test host now and then (see
    # bench/storage.py): by default the test host has as many vCPUs as the largest guest.
    benchlib.add_session_args(ap, HERE / "results", host_memory=3072)
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
    workloads = [wl[k] for k in wnames]

    try:
        need_enl = any(c.variant.kind == "enlighten" for c in cases)
        if a.from_raw:
            img = guest_image.GuestImage(Path("bzImage"), Path("initrd.img"))
            q = qemu.QemuCarry({}, f"{qemu.HOST_QEMU_DIR}/bin/qemu-system-x86_64", f"{qemu.HOST_QEMU_DIR}/firmware")
            initrd, enl, layer = Path("initrd.img"), None, None
        else:
            enl = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])["enlighten"] if need_enl else None
            img = guest_image.build()
            q = qemu.carry()
            initrd = guest_image.make_run_initrd(job=guest_job(workloads), net=True)
            layer = testhost.net_tools_layer()
    except ToolError as e:
        log(f"error: {e}")
        return 1

    h_enl, h_kernel, h_initrd = f"{H_BIN}/enlighten", f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img"
    files: dict[str, str] = dict(q.files)
    files.update({h_kernel: str(img.kernel), h_initrd: str(initrd)})
    if enl is not None:
        files[h_enl] = str(enl)
    argv_of = {c.id: vmm_argv(c, h_kernel, h_initrd, h_enl, q, f"/tmp/serial.{c.id}", a.runtime)
               for c in cases}
    run_timeout = 180 + len(workloads) * (a.runtime + 20) * 4
    script = host_script(cases, a.rounds, argv_of, q, run_timeout)
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
                                               stream=True, layers=[layer])
            output = res.output
        except testhost.TestHostError as e:
            log(f"test-host session failed: {str(e).splitlines()[0]}")
            output = e.output
        except ToolError as e:
            log(f"error: {e}")
            return 1
        if a.save_raw:
            Path(a.save_raw).write_text(output)
    s = parse(output, workloads)
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
        path = benchlib.save_results(a.results_dir, "net", now.strftime("%Y-%m-%d"), text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
