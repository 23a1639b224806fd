#!/usr/bin/env python3
"""Dynamic Memory benchmark: Enlighten's hv_balloon VSP against QEMU 7.2's virtio-balloon and
virtio-mem on the same guest kernel, in ONE test-host boot (issue 13, "Performance").

    python3 bench/memory.py                               # all variants, 1 vCPU, 3 rounds
    python3 bench/memory.py --rounds 1 --variants enlighten,qemu
    python3 bench/memory.py --dry-run                     # print the test-host script

Variants (every one boots the default guest kernel and initrd, with /job below):

    enlighten           enlighten run --memory size=1G,max=2G --api-socket S   (the guest's hv_balloon)
    qemu                qemu -m 1G,maxmem=2G -device virtio-balloon-pci
                             -object memory-backend-ram,id=vmem0,size=1G -device virtio-mem-pci,id=vm0,...
    enlighten-pressure  enlighten run --memory size=512M,min=512M,max=2G,dynamic=on,buffer=20

`enlighten` and `qemu`: the guest fills a tmpfs with 700 MiB and deletes it (so the host has
really backed its memory), prints BENCH-READY and then MemTotal whenever it changes. The test
host then runs three phases, each timed from the request on the test host's clock:

    inflate   1G -> 512M   `remote memory-set --target 512M`  /  HMP `balloon 512`
    deflate   512M -> 1G   `remote memory-set --target 1G`    /  HMP `balloon 1024`
    hot-add   +512 MiB     `remote memory-set --target 1536M` /  HMP `qom-set vm0 requested-size 512M`

and samples, as fast as it can (a few per second in the nested test host): the VMM's own view
of the guest's answer (vm.memory `state` and `current`, which moves only with the guest's
responses; `info balloon` actual=, which the guest's driver writes after each batch; the
virtio-mem device's plugged `size` from `info memory-devices`), the VMM's VmRSS, and the
guest's last MemTotal line on the console. A phase is done when:

    inflate   the VMM reports the target (state ready) AND the RSS has reached its final
              level (within 2 MiB or 2% of the fall); it counts only if the RSS fell by at
              least half the ballooned amount
    deflate   the VMM reports the target (Enlighten: the guest's UNBALLOON_RESPONSE, state
              ready; virtio: actual=). Neither VMM backs the returned memory until the guest
              touches it, so the RSS does not move on deflate (shown, not waited for)
    hot-add   the VMM reports the target AND the guest's MemTotal has grown by 7/8 of the
              amount (its blocks are online; the rest is the struct-page overhead)

Rate = amount / time (GiB per minute). The inflate target is 512M rather than 256M because
Linux's hv_balloon never balloons below MemAvailable - its balloon floor (about 232 MiB at
1 GiB, contract-memory §5): a 768 MiB request would stop short and never reach the target;
virtio-balloon has no floor. Both get the same request.

`enlighten-pressure`: hot-add driven by the guest's own memory pressure and Enlighten's policy
(Hyper-V's, docs/memory.md). min=512M keeps the idle policy from ballooning the guest below
its startup size first, so what is timed is hot-add, not unballoon. The guest waits 5 s
(status reports flowing, pressure_report_delay=0), then starts one process that takes
--hog-mib MiB at once (320 by default: enough that need x 1.2 leaves the policy's band) and
holds it: busybox `dd bs=320M count=1` from /dev/zero into a FIFO that is never read, so the
whole buffer is committed the moment dd maps it (a step in Committed_AS, which the guest's
status reports carry) and touched as dd reads into it. The guest watches MemTotal every 50 ms,
on its own clock: the time from the process's start to the first growth of MemTotal (a
hot-added block online), to the process's RSS reaching 95% of the buffer, and to the last
growth (10 s without change after both end the run). QEMU 7.2 has no
hv-balloon (QEMU added it in 8.2) and nothing in QEMU grows a guest by itself under pressure
(virtio-mem grows only when management sets requested-size), so this one is Enlighten alone;
the host-requested hot-add above is what compares with virtio-mem.

The guest's initrd is the default one plus virtio_balloon and virtio_mem (and a modules.dep
that lists them), added in the per-run cpio by this script: the shared default image is not
changed. Rounds run round-robin with the first case rotated each round; a case that fails in
round 1 is left out of the later ones. A benchmark, not a test: exit 0 whatever the numbers
(1 only when it could not run at all).

Output: a markdown report on stdout and in bench/results/memory-<date>.md.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from benchlib import Case, fmt, log, median  # noqa: E402
from enlighten_tools import debian, guest_image, kmod, qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402

H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
API = "/tmp/bench-api.sock"
QMON = "/tmp/bench-qmon"            # -monitor pipe:QMON (QMON.in, QMON.out: FIFOs)
EXTRA_MODULES = ["virtio_balloon", "virtio_mem"]
HV_ARGS = "enlighten.modules=hv_vmbus,hv_balloon hv_balloon.pressure_report_delay=0"
VIRTIO_ARGS = "enlighten.modules=virtio_pci,virtio_balloon,virtio_mem"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str               # "enlighten" | "qemu"
    mode: str               # "balloon" (inflate, deflate, hot-add) | "pressure"


VARIANTS = [
    Variant("enlighten", "Enlighten hv_balloon VSP", "enlighten", "balloon"),
    Variant("qemu", "QEMU virtio-balloon / virtio-mem", "qemu", "balloon"),
    Variant("enlighten-pressure", "Enlighten policy (dynamic=on)", "enlighten", "pressure"),
]
PHASES = ("inflate", "deflate", "hotadd")


@dataclass(frozen=True)
class Sizes:
    startup: int            # MiB, the balloon variants' startup memory
    target: int             # MiB, the inflate target
    hotadd: int             # MiB hot-added after the deflate
    max: int                # MiB, Enlighten's max= (QEMU: maxmem)
    fill: int               # MiB the guest touches before ballooning
    p_startup: int          # MiB, the pressure variant's startup (and min)
    hog: int                # MiB the pressure variant's process allocates
    p_wait: int             # s, the pressure variant's bound


def guest_job() -> str:
    """The guest's /job, for every variant (bench.mode= on the command line chooses)."""
    return r"""
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; }
up() { read -r U _ </proc/uptime; }
cs() { C=$(( ${1%.*} * 100 + 1${1#*.} - 100 )); }
memtotal() { MT=0; while read -r k v _; do if [ "$k" = MemTotal: ]; then MT=$v; return; fi; done </proc/meminfo; }
meminfo() { echo "BENCH-MEMINFO $1 $(grep -E '^(MemTotal|MemFree|MemAvailable|Committed_AS):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"; }
mode=$(arg bench.mode)
hv=$(ls /sys/bus/vmbus/drivers/hv_balloon 2>/dev/null | grep -c -- -)
vb=$(ls -d /sys/bus/virtio/drivers/virtio_balloon/virtio* 2>/dev/null | wc -l)
vm=$(ls -d /sys/bus/virtio/drivers/virtio_mem/virtio* 2>/dev/null | wc -l)
echo "BENCH-GUEST kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) hv_balloon=$hv virtio_balloon=$vb virtio_mem=$vm block_size=$(cat /sys/devices/system/memory/block_size_bytes) auto_online=$(cat /sys/devices/system/memory/auto_online_blocks)"
if [ "$mode" = balloon ]; then
    fill=$(arg bench.fill_mib)
    mkdir -p /fill && mount -t tmpfs -o size=$((fill + 64))m tmpfs /fill
    dd if=/dev/zero of=/fill/a bs=1M count="$fill" 2>/dev/null; rm -f /fill/a; umount /fill
    meminfo touched
    memtotal; echo "BENCH-READY mt=$MT"; echo "BENCH-MT $MT"
    last=$MT
    # MemTotal whenever it changes (the test host reads the last one); until powered off
    while :; do
        memtotal; [ "$MT" != "$last" ] && { echo "BENCH-MT $MT"; last=$MT; }
        sleep 0.1
    done
fi
# mode=pressure: one process takes bench.hog_mib MiB at once and holds it: busybox dd with a
# buffer that size (committed when malloc maps it, touched as it reads /dev/zero into it),
# then blocked writing to a FIFO that is opened but never read. MemTotal every 50 ms.
hog=$(arg bench.hog_mib); limit=$(arg bench.wait_s)
sleep 5
meminfo start
mkfifo /tmp/hold
sleep 3600 < /tmp/hold &
sp=$!
memtotal; up; cs "$U"; c0=$C; last=$MT
echo "BENCH-P start up=$U mt=$MT"
dd if=/dev/zero of=/tmp/hold bs="${hog}M" count=1 2>/tmp/hog.err &
hp=$!
held=0; gone=0; lastc=$c0
while :; do
    memtotal; up; cs "$U"
    [ "$MT" != "$last" ] && { echo "BENCH-P mt up=$U mt=$MT"; last=$MT; lastc=$C; }
    if [ $held = 0 ]; then
        r=0; while read -r k v _; do [ "$k" = VmRSS: ] && { r=$v; break; }; done 2>/dev/null < "/proc/$hp/status"
        [ "${r:-0}" -ge $((hog * 1024 * 95 / 100)) ] && { echo "BENCH-P held up=$U rss=$r"; held=1; lastc=$C; }
    fi
    [ $gone = 0 ] && ! kill -0 $hp 2>/dev/null && { echo "BENCH-P hog-exited up=$U $(head -c 80 /tmp/hog.err | tr '\n ' '__')"; gone=1; lastc=$C; }
    # done: the process holds its memory (or is gone), and 10 s passed without MemTotal
    # moving since then
    if [ $held = 1 ] || [ $gone = 1 ]; then [ $((C - lastc)) -ge 1000 ] && break; fi
    [ $((C - c0)) -ge $((limit * 100)) ] && { echo "BENCH-P timeout up=$U"; break; }
    sleep 0.05
done
memtotal
tot=0; on=0
for d in /sys/devices/system/memory/memory*; do
    n=${d##*memory}; [ "$n" -ge 32 ] 2>/dev/null || continue
    tot=$((tot + 1)); [ "$(cat "$d/state")" = online ] && on=$((on + 1))
done
echo "BENCH-P end up=$U mt=$MT hot_blocks=$tot online=$on oom=$(dmesg | grep -ciE 'out of memory|oom-kill')"
meminfo end
kill $hp $sp 2>/dev/null
echo "BENCH-GUEST-DONE"
"""


def initrd_with_virtio_modules(job: str) -> Path:
    """The per-run initrd: the default image plus virtio_balloon and virtio_mem (with the
    modules they need that the image lacks), and a modules.dep / modules.alias that list
    them, so /init's `modprobe` (enlighten.modules=) finds them. Added in the per-run cpio,
    which the kernel unpacks over the base: the shared default image stays as it is."""
    img = guest_image.build()
    tree = kmod.ModuleTree(debian.kernel().moddir)
    names = guest_image.GUEST_MODULES + EXTRA_MODULES
    base = f"/lib/modules/{tree.version}"
    have = set(tree.load_order(guest_image.GUEST_MODULES))
    with tempfile.TemporaryDirectory() as td:
        files: list[tuple[str | Path, str]] = [(tree.path(m), f"{base}/{tree.rel(m)}")
                                               for m in tree.load_order(EXTRA_MODULES) if m not in have]
        for name, data in tree.index_files(names).items():
            Path(td, name).write_bytes(data)
            files.append((Path(td, name), f"{base}/{name}"))
        return guest_image.make_run_initrd(job=job, files=files, base=img)


def vmm_argv(v: Variant, cpus: int, kernel: str, initrd: str, enlighten: str, q: qemu.QemuCarry,
             serial: str, z: Sizes) -> list[str]:
    if v.mode == "pressure":
        cmdline = (f"console=ttyS0 quiet {HV_ARGS} bench.mode=pressure bench.hog_mib={z.hog} "
                   f"bench.wait_s={z.p_wait}")
        mem = f"size={z.p_startup}M,min={z.p_startup}M,max={z.max}M,dynamic=on,buffer=20"
    else:
        cmdline = (f"console=ttyS0 quiet {HV_ARGS if v.kind == 'enlighten' else VIRTIO_ARGS} "
                   f"bench.mode=balloon bench.fill_mib={z.fill}")
        mem = f"size={z.startup}M,max={z.max}M"
    if v.kind == "enlighten":
        return [enlighten, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
                "--memory", mem, "--cpus", str(cpus), "--serial", f"file:{serial}",
                "--api-socket", API, "--on-reboot", "exit"]
    return [q.binary, "-L", q.firmware_dir, "-M", "pc", "-cpu", "host", "-enable-kvm",
            "-m", f"{z.startup}M,maxmem={z.max}M", "-smp", str(cpus), "-nodefaults", "-no-user-config",
            "-nographic", "-serial", f"file:{serial}", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", cmdline, "-monitor", f"pipe:{QMON}",
            "-device", "virtio-balloon-pci,id=balloon0",
            "-object", f"memory-backend-ram,id=vmem0,size={z.max - z.startup}M",
            "-device", "virtio-mem-pci,id=vm0,memdev=vmem0,requested-size=0"]


# The test host's shell library (busybox sh). Builtins where it can (a fork costs
# milliseconds in the nested test host): the samples' clock is /proc/uptime (10 ms).
HOST_LIB = r"""
now() { read -r T _ </proc/uptime; }
cs() { C=$(( ${1%.*} * 100 + 1${1#*.} - 100 )); }
alive() { st=; read -r _ _ st _ 2>/dev/null < "/proc/$PID/stat"; [ -n "$st" ] && [ "$st" != Z ]; }
rss() { R=0; while read -r k v _; do if [ "$k" = VmRSS: ]; then R=$v; return; fi; done 2>/dev/null < "/proc/$PID/status"; }
guest_mt() { MT=$(awk '/^BENCH-MT /{ v = $2 } END { print v + 0 }' "$SER"); }
api() { "$ENL" remote --api-socket "$API" "$@"; }
# hmp COMMAND PATTERN: send COMMAND to QEMU's monitor; its answer, up to a line matching
# PATTERN, is then in $HL (emptied first; `cat` appends what QEMU writes to QMON.out)
hmp() {
    : > "$HL"; echo "$1" > "$QMON.in"; n=0
    while ! grep -q "$2" "$HL"; do n=$((n + 1)); [ $n -gt 1000 ] && return 1; sleep 0.01; done
}
# reporters: VAL (MiB: Enlighten's current, virtio-balloon's actual, startup + virtio-mem's
# plugged size), ST (Enlighten: its state; QEMU: ok), HOT (Enlighten: hot-added MiB)
rep_enl() {
    set -- $(api memory 2>/dev/null | awk '/"state":/ { gsub(/[",]/, "", $2); s = $2 }
        /"current":/ { c = int($2 / 1048576) } /"hot_added":/ { h = int($2 / 1048576) }
        END { print (s == "" ? "none" : s), c + 0, h + 0 }')
    ST=$1; VAL=$2; HOT=$3
}
rep_qbal() {
    HOT=0; if hmp "info balloon" "actual=[0-9]"; then ST=ok; VAL=$(awk -F'actual=' '/actual=/ { v = $2 + 0 } END { print v + 0 }' "$HL"); else ST=noreply; VAL=0; fi
}
rep_qmem() {
    if hmp "info memory-devices" "block-size:"; then ST=ok; HOT=$(awk '$1 == "size:" { v = int($2 / 1048576) } END { print v + 0 }' "$HL"); VAL=$((STARTUP + HOT)); else ST=noreply; VAL=0; HOT=0; fi
}
# phase NAME WANT_MIB WAIT_RSS MTMIN_KIB TIMEOUT_S REPORTER REQUEST...: send the request,
# then sample until the reporter says WANT (state ready/ok), the guest's MemTotal is at least
# MTMIN (0: not asked), and with WAIT_RSS the RSS has not moved by 2 MiB for 1.5 s
phase() {
    ph=$1; want=$2; wrss=$3; mtmin=$4; tmo=$5; rep=$6; shift 6
    rss; guest_mt; now
    echo "BENCH-PHASE id=$id round=$rnd phase=$ph want=$want mtmin=$mtmin t=$T rss=$R mt=$MT"
    now; cs "$T"; c0=$C
    "$@" > /tmp/req.out 2>&1 || echo "BENCH-ERROR id=$id round=$rnd phase=$ph request failed: $(head -c 300 /tmp/req.out | tr '\n' ' ')"
    ref=-1; refc=$c0
    while :; do
        $rep; now; t=$T; rss; guest_mt; cs "$t"
        echo "BENCH-S id=$id round=$rnd phase=$ph t=$t rep=$VAL state=$ST hot=$HOT rss=$R mt=$MT"
        d=$((R - ref)); [ $d -lt 0 ] && d=$((-d))
        if [ $ref -lt 0 ] || [ $d -gt 2048 ]; then ref=$R; refc=$C; fi
        ok=0
        [ "$VAL" = "$want" ] && { [ "$ST" = ready ] || [ "$ST" = ok ]; } && ok=1
        [ "$mtmin" -gt 0 ] && [ "$MT" -lt "$mtmin" ] && ok=0
        if [ $ok = 1 ] && { [ "$wrss" = 0 ] || [ $((C - refc)) -ge 150 ]; }; then break; fi
        if [ $((C - c0)) -gt $((tmo * 100)) ]; then echo "BENCH-PHASE-TIMEOUT id=$id round=$rnd phase=$ph"; return 1; fi
        alive || { echo "BENCH-ERROR id=$id round=$rnd phase=$ph: the VM exited"; return 1; }
        sleep 0.05
    done
    echo "BENCH-PHASE-END id=$id round=$rnd phase=$ph"
}
wait_ser() {
    n=0
    while ! grep -q "$1" "$SER"; do
        alive || { grep -q "$1" "$SER" && return 0; echo "BENCH-ERROR id=$id round=$rnd: the VM exited before $1"; return 1; }
        n=$((n + 1)); [ $n -gt $(($2 * 10)) ] && { echo "BENCH-ERROR id=$id round=$rnd: no $1 after $2 s"; return 1; }
        sleep 0.1
    done
}
stop_vm() {
    if alive; then
        if [ "$KIND" = qemu ]; then echo quit > "$QMON.in"; else api power-off > /dev/null 2>&1; fi
    fi
    n=0; while alive && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    alive && { echo "BENCH-ERROR id=$id round=$rnd: the VM did not stop; killed"; kill -KILL $PID; }
    wait $PID; echo "BENCH-RC id=$id round=$rnd rc=$?"
    [ -n "${CATPID:-}" ] && { kill $CATPID 2>/dev/null; exec 4>&-; }; CATPID=
}
# bench_case ID ROUND KIND MODE ARGV...
bench_case() {
    id=$1; rnd=$2; KIND=$3; mode=$4; shift 4
    SER=/tmp/serial.$id; : > "$SER"; rm -f "$API"; ok_case=1
    echo "BENCH-RUN id=$id round=$rnd load=$(cut -d' ' -f1 /proc/loadavg) free_kib=$(awk '/^MemAvailable/ { print $2 }' /proc/meminfo)"
    if [ "$KIND" = qemu ]; then
        rm -f "$QMON.in" "$QMON.out"; mkfifo "$QMON.in" "$QMON.out"; : > "$HL"
        # held open read-write here too, so that writing a command never blocks (a QEMU
        # that died leaves it unread instead of hanging the session)
        exec 4<>"$QMON.in"
        cat "$QMON.out" >> "$HL" & CATPID=$!
    fi
    "$@" > /tmp/vmm.log 2>&1 &
    PID=$!
    if [ "$mode" = pressure ]; then
        # the guest does it all; the host samples vm.memory for the raw record
        n=0
        while alive && ! grep -q BENCH-GUEST-DONE "$SER"; do
            rep_enl; now; rss
            echo "BENCH-S id=$id round=$rnd phase=pressure t=$T rep=$VAL state=$ST hot=$HOT rss=$R mt=0"
            n=$((n + 1)); [ $n -gt $((PRESSURE_TIMEOUT * 3)) ] && { echo "BENCH-ERROR id=$id round=$rnd: no BENCH-GUEST-DONE"; ok_case=0; break; }
            sleep 0.3
        done
        api memory 2>/dev/null | tr -d '\n ' | sed "s/^/BENCH-MEMORY-JSON id=$id round=$rnd /"; echo
        n=0; while alive && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
    elif wait_ser BENCH-READY 400; then
        if [ "$KIND" = qemu ]; then
            phase inflate "$TARGET" 1 0 400 rep_qbal hmp "balloon $TARGET" "(qemu)" &&
            sleep 1 && phase deflate "$STARTUP" 0 0 200 rep_qbal hmp "balloon $STARTUP" "(qemu)" &&
            sleep 1 && guest_mt && phase hotadd $((STARTUP + HOTADD)) 0 $((MT + HOTADD * 896)) 200 rep_qmem \
                hmp "qom-set vm0 requested-size ${HOTADD}M" "(qemu)" || ok_case=0
        else
            n=0; until rep_enl; [ "$ST" = ready ] || [ $n -ge 100 ]; do sleep 0.3; n=$((n + 1)); done
            phase inflate "$TARGET" 1 0 400 rep_enl api memory-set --target "${TARGET}M" &&
            sleep 1 && phase deflate "$STARTUP" 0 0 200 rep_enl api memory-set --target "${STARTUP}M" &&
            sleep 1 && guest_mt && phase hotadd $((STARTUP + HOTADD)) 0 $((MT + HOTADD * 896)) 200 rep_enl \
                api memory-set --target $((STARTUP + HOTADD))M || ok_case=0
            api memory 2>/dev/null | tr -d '\n ' | sed "s/^/BENCH-MEMORY-JSON id=$id round=$rnd /"; echo
        fi
    else
        ok_case=0
    fi
    stop_vm
    tr -d '\r' < "$SER" | grep -E '^(BENCH-|ENLIGHTEN-MODPROBE-FAILED)' | sed 's/^/GUEST /'
    if [ $ok_case = 0 ]; then
        echo "BENCH-LOG-BEGIN id=$id round=$rnd"; tr -d '\r' < "$SER" | tail -n 40; tail -n 20 /tmp/vmm.log; echo "BENCH-LOG-END"
        return 1
    fi
}
"""


def host_script(cases: list[Case], rounds: int, argv_of: dict[str, list[str]], q: qemu.QemuCarry,
                enlighten: str, z: Sizes) -> str:
    lines = [
        "set -u",
        *benchlib.TESTHOST_PRELUDE,
        f'echo "BENCH-INFO qemu_version=$({shlex.quote(q.binary)} --version | head -n 1)"',
        'echo "BENCH-INFO thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"',
        f"ENL={shlex.quote(enlighten)}; API={API}; QMON={QMON}; HL=/tmp/bench-hmp.log; CATPID=",
        f"STARTUP={z.startup}; TARGET={z.target}; HOTADD={z.hotadd}; PRESSURE_TIMEOUT={z.p_wait + 200}",
        HOST_LIB,
    ]
    lines += benchlib.round_robin(cases, rounds, lambda c, r: ["bench_case", c.id, str(r), c.variant.kind,
                                                                c.variant.mode, *argv_of[c.id]])
    lines += ["echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parsing
@dataclass
class Sample:
    t: float
    rep: int
    state: str
    hot: int
    rss: int                # KiB
    mt: int                 # KiB, the guest's last MemTotal line


@dataclass
class Phase:
    name: str
    want: int               # MiB
    mtmin: int              # KiB (0: none)
    t0: float
    rss0: int
    mt0: int
    samples: list[Sample] = field(default_factory=list)
    ended: bool = False
    timeout: bool = False


@dataclass
class Run:
    case_id: str
    rnd: int
    phases: dict[str, Phase] = field(default_factory=dict)
    guest: dict[str, str] = field(default_factory=dict)
    pressure: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    meminfo: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    memory_json: str = ""
    rc: str = "?"


@dataclass
class Session:
    info: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    failed: list[tuple[str, int, list[str]]] = field(default_factory=list)
    done: bool = False


def parse(output: str) -> Session:
    s = Session()
    cur: Run | None = None
    log_lines: list[str] | None = None
    for line in output.splitlines():
        line = line.rstrip("\r")
        if log_lines is not None:
            if line.startswith("BENCH-LOG-END"):
                log_lines = None
            else:
                log_lines.append(line)
            continue
        if line.startswith("BENCH-INFO "):
            for k, v in re.findall(r"(\w+)=((?:[^ ]| (?!\w+=))*)", line[len("BENCH-INFO "):]):
                s.info[k] = v
        elif line.startswith("BENCH-RUN "):
            kv = benchlib.kv(line)
            cur = Run(kv["id"], int(kv["round"]))
            s.runs.append(cur)
        elif cur is None:
            continue
        elif line.startswith("BENCH-PHASE "):
            kv = benchlib.kv(line)
            cur.phases[kv["phase"]] = Phase(kv["phase"], int(kv["want"]), int(kv["mtmin"]), float(kv["t"]),
                                            int(kv["rss"] or 0), int(kv["mt"] or 0))
        elif line.startswith("BENCH-S "):
            kv = benchlib.kv(line)
            ph = cur.phases.get(kv["phase"])
            if ph is None:
                ph = cur.phases.setdefault(kv["phase"], Phase(kv["phase"], 0, 0, float(kv["t"]), 0, 0))
            ph.samples.append(Sample(float(kv["t"]), int(kv["rep"] or 0), kv["state"], int(kv.get("hot") or 0),
                                     int(kv["rss"] or 0), int(kv["mt"] or 0)))
        elif line.startswith("BENCH-PHASE-END "):
            ph = cur.phases.get(benchlib.kv(line)["phase"])
            if ph:
                ph.ended = True
        elif line.startswith("BENCH-PHASE-TIMEOUT "):
            ph = cur.phases.get(benchlib.kv(line)["phase"])
            if ph:
                ph.timeout = True
            cur.errors.append(line)
        elif line.startswith("BENCH-ERROR "):
            cur.errors.append(line)
        elif line.startswith("BENCH-RC "):
            cur.rc = benchlib.kv(line).get("rc", "?")
        elif line.startswith("BENCH-MEMORY-JSON "):
            cur.memory_json = line.split(" ", 3)[3] if len(line.split(" ", 3)) > 3 else ""
        elif line.startswith("GUEST BENCH-GUEST "):
            cur.guest = benchlib.kv(line)
        elif line.startswith("GUEST BENCH-MEMINFO "):
            cur.meminfo.append(line[len("GUEST BENCH-MEMINFO "):])
        elif line.startswith("GUEST BENCH-P "):
            f = line.split()
            cur.pressure.append((f[2], benchlib.kv(line)))
        elif line.startswith("GUEST ENLIGHTEN-MODPROBE-FAILED"):
            cur.errors.append(line[len("GUEST "):])
        elif line.startswith("BENCH-LOG-BEGIN"):
            log_lines = []
            s.failed.append((cur.case_id, cur.rnd, log_lines))
        elif line.startswith("BENCH-DONE"):
            s.done = True
    return s


# ----------------------------------------------------------------------------- analysis
@dataclass
class Timing:
    amount_mib: int
    t_report: float | None          # s from the request to the VMM reporting the target
    t_rss: float | None = None      # inflate: to the RSS at its final level
    t_guest: float | None = None    # hot-add: to the guest's MemTotal grown by 7/8
    rss_change_mib: float = 0.0     # RSS before the request - at the end (positive: fell)
    interval: float | None = None   # median time between samples
    counted: bool = True
    why: str = ""

    @property
    def done(self) -> float | None:
        parts = [self.t_report, self.t_rss, self.t_guest]
        if self.t_report is None or not self.counted:
            return None
        return max(x for x in parts if x is not None)

    @property
    def rate(self) -> float | None:
        d = self.done
        return None if not d else (self.amount_mib / 1024) / (d / 60)


def time_phase(ph: Phase, amount_mib: int) -> Timing:
    ss = ph.samples
    tm = Timing(amount_mib, None)
    if len(ss) > 1:
        tm.interval = median([b.t - a.t for a, b in zip(ss, ss[1:])])
    rep = next((x for x in ss if x.rep == ph.want and x.state in ("ready", "ok")), None)
    tm.t_report = None if rep is None else max(0.0, rep.t - ph.t0)
    if not ss or rep is None or ph.timeout:
        tm.counted, tm.why = False, "the VMM never reported the target" if not ph.timeout else "timed out"
        return tm
    final = ss[-1].rss
    tm.rss_change_mib = (ph.rss0 - final) / 1024
    if ph.name == "inflate":
        drop = ph.rss0 - final
        tol = max(2048, drop * 0.02)
        hit = next((x for x in ss if x.rss <= final + tol), ss[-1])
        tm.t_rss = max(0.0, hit.t - ph.t0)
        if drop < amount_mib * 1024 / 2:
            tm.counted, tm.why = False, f"the RSS fell by only {drop / 1024:.0f} MiB"
    if ph.mtmin:
        hit2 = next((x for x in ss if x.mt >= ph.mtmin), None)
        tm.t_guest = None if hit2 is None else max(0.0, hit2.t - ph.t0)
        if hit2 is None:
            tm.counted, tm.why = False, "the guest's MemTotal did not grow"
    return tm


def phase_amount(name: str, z: Sizes) -> int:
    return {"inflate": z.startup - z.target, "deflate": z.startup - z.target, "hotadd": z.hotadd}[name]


@dataclass
class Pressure:
    t_grow: float | None            # s from the process's start to MemTotal's first growth
    t_held: float | None            # ... to the process holding all its memory
    t_last: float | None            # ... to the last growth
    grown_mib: float
    end: dict[str, str]
    timed_out: bool
    hog_exited: bool


def time_pressure(run: Run) -> Pressure | None:
    ev = run.pressure
    start = next((kv for k, kv in ev if k == "start"), None)
    if start is None:
        return None
    t0, mt0 = float(start["up"]), int(start["mt"])
    grows = [(float(kv["up"]) - t0, int(kv["mt"])) for k, kv in ev if k == "mt" and int(kv["mt"]) > mt0]
    held = next((float(kv["up"]) - t0 for k, kv in ev if k == "held"), None)
    end = next((kv for k, kv in ev if k == "end"), {})
    mts = [kv for k, kv in ev if k == "mt"]
    final = int(end.get("mt", mts[-1]["mt"] if mts else mt0))
    return Pressure(grows[0][0] if grows else None, held, grows[-1][0] if grows else None,
                    (final - mt0) / 1024, end, any(k == "timeout" for k, _ in ev),
                    any(k == "hog-exited" for k, _ in ev))


# ----------------------------------------------------------------------------- report
def report(cases: list[Case], s: Session, meta: dict[str, str], argv_of: dict[str, list[str]],
           rounds: int, z: Sizes, host_cmd: str, this_cmd: str, lockup: list[str]) -> str:
    L = [f"# Dynamic Memory benchmark, {meta['date']}", ""]
    L.append(f"- commit `{meta['commit']}`; {meta['qemu']} (in the test host: {s.info.get('qemu_version', '?')})")
    kernels = sorted({r.guest.get("kernel", "") for r in s.runs} - {""})
    L.append(f"- test host: kernel {s.info.get('host_kernel', '?')}, {s.info.get('host_cpus', '?')} vCPU(s), "
             f"{int(s.info.get('host_mem_kib', '0') or 0) // 1024} MiB, THP `{s.info.get('thp', '?')}`, QEMU TCG on "
             f"{meta['machine']}; session {meta['session_s']} s; this machine's load (1 min) at start / end: "
             f"{meta['load']}")
    L.append(f"- guest: default bzImage ({', '.join(kernels) or '?'}) + initrd with virtio_balloon and "
             f"virtio_mem added; {rounds} round(s), interleaved")
    L.append(f"- command: `{this_cmd}`")
    if not s.done:
        L.append("- **INCOMPLETE**: the session ended early; below is what was measured")
    L += ["", f"Balloon variants: startup {z.startup} MiB, max {z.max} MiB; the guest touched {z.fill} MiB first. "
          f"Inflate {z.startup} -> {z.target} MiB ({z.startup - z.target} MiB), deflate back, then hot-add "
          f"{z.hotadd} MiB. Times in seconds from the request (test host's clock, 10 ms; *poll* is the median "
          "time between samples, the resolution); GiB/min = amount / time. Medians over the rounds.", ""]

    timings: dict[tuple[str, str], list[Timing]] = {}
    skipped: list[str] = []
    for run in s.runs:
        for name, ph in run.phases.items():
            if name not in PHASES:
                continue
            tm = time_phase(ph, phase_amount(name, z))
            if tm.counted:
                timings.setdefault((run.case_id, name), []).append(tm)
            else:
                skipped.append(f"`{run.case_id}` round {run.rnd} {name}: not counted, {tm.why}")
    bal_cases = [c for c in cases if c.variant.mode == "balloon"]
    rate_of: dict[tuple[str, str], float | None] = {}
    for ncpu in sorted({c.cpus for c in bal_cases}):
        L += [f"## Balloon and host-requested hot-add, {ncpu} guest vCPU{'s' if ncpu > 1 else ''}", ""]
        L.append("| phase | variant | n | time s | report s | RSS s | guest s | GiB/min | RSS fell MiB | poll s |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in PHASES:
            for c in bal_cases:
                if c.cpus != ncpu:
                    continue
                xs = timings.get((c.id, name), [])
                rate = median([x.rate for x in xs if x.rate is not None])
                rate_of[(c.id, name)] = rate
                label = ("Enlighten hv_balloon" if c.variant.kind == "enlighten" else
                         "QEMU virtio-balloon" if name != "hotadd" else "QEMU virtio-mem")
                L.append(f"| {name} | {label} | {len(xs)} | {fmt(median([x.done for x in xs if x.done]), 2)} "
                         f"| {fmt(median([x.t_report for x in xs if x.t_report is not None]), 2)} "
                         f"| {fmt(median([x.t_rss for x in xs if x.t_rss is not None]), 2)} "
                         f"| {fmt(median([x.t_guest for x in xs if x.t_guest is not None]), 2)} "
                         f"| {fmt(rate, 2)} | {fmt(median([round(x.rss_change_mib) + 0 for x in xs]), 0)} "
                         f"| {fmt(median([x.interval for x in xs if x.interval is not None]), 2)} |")
        L.append("")
        enl, qm = f"enlighten@{ncpu}", f"qemu@{ncpu}"
        L.append("| ratio Enlighten / QEMU (GiB/min; above 1: Enlighten faster) | value |")
        L.append("|---|---:|")
        for name, what in (("inflate", "inflate, hv_balloon / virtio-balloon"),
                           ("deflate", "deflate, hv_balloon / virtio-balloon"),
                           ("hotadd", f"hot-add {z.hotadd} MiB, hv_balloon / virtio-mem")):
            a, b = rate_of.get((enl, name)), rate_of.get((qm, name))
            L.append(f"| {what} | {'—' if not a or not b else f'{a / b:.2f}'} |")
        a, b = rate_of.get((enl, "inflate")), rate_of.get((qm, "inflate"))
        if a and b:
            L += ["", f"**Goal (issue 13): inflate at least 3x virtio-balloon's: {a / b:.2f}x, "
                  f"{'met' if a / b >= 3 else 'not met'}.**"]
        L.append("")

    p_cases = [c for c in cases if c.variant.mode == "pressure"]
    if p_cases:
        L += ["## Hot-add under the guest's memory pressure (Enlighten alone)", "",
              f"`--memory size={z.p_startup}M,min={z.p_startup}M,max={z.max}M,dynamic=on,buffer=20`; one process "
              f"in the guest takes {z.hog} MiB at once and holds it (`dd bs={z.hog}M` from /dev/zero into a FIFO "
              "nobody reads: committed when mapped, touched as it reads). Seconds from its start, on the guest's "
              "clock (50 ms sampling): *first growth*: MemTotal first grew (a hot-added block is online); *held*: "
              "the process's RSS reached 95% of its buffer; *last growth*: MemTotal's last change (10 s without "
              "change after both ended the run).", ""]
        L.append("| variant | n | first growth s | held s | last growth s | grew MiB | hot blocks online | OOM kills |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for c in p_cases:
            ps = [p for r in s.runs if r.case_id == c.id and (p := time_pressure(r)) is not None]
            L.append(f"| {c.variant.label}, {c.cpus} vCPU | {len(ps)} "
                     f"| {fmt(median([p.t_grow for p in ps if p.t_grow is not None]), 2)} "
                     f"| {fmt(median([p.t_held for p in ps if p.t_held is not None]), 2)} "
                     f"| {fmt(median([p.t_last for p in ps if p.t_last is not None]), 2)} "
                     f"| {fmt(median([p.grown_mib for p in ps]), 0)} "
                     f"| {', '.join(p.end.get('online', '?') + '/' + p.end.get('hot_blocks', '?') for p in ps)} "
                     f"| {', '.join(p.end.get('oom', '?') for p in ps)} |")
            for r in s.runs:
                p = time_pressure(r) if r.case_id == c.id else None
                if p and p.t_grow is None:
                    skipped.append(f"`{r.case_id}` round {r.rnd}: MemTotal never grew"
                                   f"{' (the process exited: OOM?)' if p.hog_exited else ''}")
        L.append("")

    L += ["## What could not be compared", "",
          "- QEMU 7.2 (the comparison QEMU, this machine's) has no hv-balloon device (QEMU added it in 8.2), so "
          "Enlighten's hv_balloon is compared with virtio-balloon (inflate, deflate) and virtio-mem (hot-add), "
          "each on the same Debian guest kernel, not with QEMU's implementation of the same protocol.",
          "- Hot-add driven by the guest's memory pressure: QEMU has no policy that grows a guest by itself "
          "(virtio-mem grows only when management sets requested-size; virtio-balloon can only deflate), so "
          "that latency is Enlighten's alone; the host-requested hot-add is the like-for-like comparison.",
          "- Deflate: neither VMM backs returned memory until the guest touches it, so the host's RSS does not "
          "rise on deflate; deflate is timed on the guest's answer alone.",
          f"- The inflate goes to {z.target} MiB, not lower: Linux's hv_balloon stops at MemAvailable minus its "
          "balloon floor (about 232 MiB at 1 GiB), so a deeper target would never be reached by the Hyper-V guest.",
          ""]
    if skipped or s.failed or any(r.errors for r in s.runs):
        L += ["## Failures and runs not counted", ""]
        L += [f"- {x}" for x in skipped]
        for r in s.runs:
            L += [f"- `{r.case_id}` round {r.rnd}: {e}" for e in r.errors]
        for cid, rnd, tail in s.failed:
            L += [f"- `{cid}` round {rnd}: console and VMM log tail:", "", "  ```"]
            L += ["  " + t for t in tail[-60:]] + ["  ```"]
        L.append("")
    if lockup:
        L += ["## Test-host kernel: soft lockup", "", "```", *lockup, "```", ""]
    L += ["## Command lines (paths inside the test host)", "", f"Test host: `{host_cmd}`", ""]
    L += [f"- {c.variant.label}, {c.cpus} vCPU: `{shlex.join(argv_of[c.id])}`" for c in cases]
    L += ["", "Requests: Enlighten `enlighten remote --api-socket S memory-set --target SIZE` (sampled with "
          "`... memory`); QEMU through `-monitor pipe:` (FIFOs): `balloon MIB`, `qom-set vm0 requested-size SIZE` "
          "(sampled with `info balloon`, `info memory-devices`).", ""]
    L += ["## Raw", "", "```"]
    for r in s.runs:
        g = " ".join(f"{k}={v}" for k, v in r.guest.items() if k != "kernel")
        L.append(f"{r.case_id} round={r.rnd} rc={r.rc} guest: {g}")
        for name, ph in r.phases.items():
            if name in PHASES:
                tm = time_phase(ph, phase_amount(name, z))
                L.append(f"  {name}: want={ph.want} samples={len(ph.samples)} report={fmt(tm.t_report, 2)} "
                         f"rss={fmt(tm.t_rss, 2)} guest={fmt(tm.t_guest, 2)} done={fmt(tm.done, 2)} "
                         f"rss0={ph.rss0} rss_end={ph.samples[-1].rss if ph.samples else '?'} mt0={ph.mt0} "
                         f"mt_end={ph.samples[-1].mt if ph.samples else '?'}{' ' + tm.why if tm.why else ''}")
        for k, kv in r.pressure:
            L.append(f"  pressure {k}: {' '.join(f'{a}={b}' for a, b in kv.items())}")
        L += [f"  meminfo {m}" for m in r.meminfo]
        if r.memory_json:
            L.append(f"  vm.memory {r.memory_json[:600]}")
    L.append("```")
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(v.key for v in VARIANTS),
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    ap.add_argument("--cpus", default="1", help="guest vCPU counts (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--startup-mib", type=int, default=1024, help="balloon variants' startup memory")
    ap.add_argument("--target-mib", type=int, default=512, help="the inflate target")
    ap.add_argument("--hotadd-mib", type=int, default=512, help="hot-added after the deflate")
    ap.add_argument("--max-mib", type=int, default=2048, help="Enlighten max= / QEMU maxmem")
    ap.add_argument("--fill-mib", type=int, default=700, help="what the guest touches before ballooning")
    ap.add_argument("--pressure-startup-mib", type=int, default=512)
    ap.add_argument("--hog-mib", type=int, default=320, help="what the pressure variant's process allocates")
    ap.add_argument("--pressure-wait", type=int, default=120, help="the pressure variant's bound (s)")
    benchlib.add_session_args(ap, HERE / "results", host_memory=4096)
    a = ap.parse_args(argv)

    known = {v.key: v for v in VARIANTS}
    keys = benchlib.pick(ap, a.variants, known)
    cpus = benchlib.cpu_counts(ap, a.cpus)
    if a.rounds < 1 or not cpus or min(cpus) < 1:
        ap.error("--rounds and --cpus must be >= 1")
    z = Sizes(a.startup_mib, a.target_mib, a.hotadd_mib, a.max_mib, a.fill_mib, a.pressure_startup_mib,
              a.hog_mib, a.pressure_wait)
    if not (0 < z.target < z.startup and z.startup + z.hotadd <= z.max and z.p_startup < z.max):
        ap.error("need 0 < --target-mib < --startup-mib, --startup-mib + --hotadd-mib <= --max-mib")
    cases = [Case(known[k], n) for n in cpus for k in keys]
    a.host_cpus = a.host_cpus or max(2, max(cpus))

    try:
        if a.from_raw:
            q = qemu.QemuCarry({}, f"{qemu.HOST_QEMU_DIR}/bin/qemu-system-x86_64", f"{qemu.HOST_QEMU_DIR}/firmware")
            kernel, initrd, enl = Path("bzImage"), Path("initrd.img"), Path("enlighten")
        else:
            need_enl = any(c.variant.kind == "enlighten" for c in cases)
            enl = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])["enlighten"] if need_enl else None
            kernel = guest_image.build().kernel
            q = qemu.carry()
            initrd = initrd_with_virtio_modules(guest_job())
    except ToolError as e:
        log(f"error: {e}")
        return 1

    h_enl, h_kernel, h_initrd = f"{H_BIN}/enlighten", f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img"
    files: dict[str, str] = dict(q.files)
    files.update({h_kernel: str(kernel), h_initrd: str(initrd)})
    if enl is not None:
        files[h_enl] = str(enl)
    argv_of = {c.id: vmm_argv(c.variant, c.cpus, h_kernel, h_initrd, h_enl, q, f"/tmp/serial.{c.id}", z)
               for c in cases}
    script = host_script(cases, a.rounds, argv_of, q, h_enl, z)
    if a.dry_run:
        print(script)
        return 0
    host_cmd = shlex.join(testhost.qemu_command(Path("<testhost bzImage>"), Path("<initrd>"),
                                                a.host_cpus, a.host_memory))
    this_cmd = shlex.join(["python3", "bench/memory.py", *(sys.argv[1:] if argv is None else argv)])
    session_timeout = 300 + len(cases) * a.rounds * 600
    load_start = benchlib.load_text()
    t0 = time.monotonic()
    if not a.from_raw:
        log(f"{len(cases)} cases x {a.rounds} rounds in one test host ({a.host_cpus} vCPUs, {a.host_memory} MiB; "
            f"session timeout {session_timeout} s)")
    output = benchlib.run_session(script, files, a.host_cpus, a.host_memory, session_timeout,
                                  save_raw=a.save_raw, from_raw=a.from_raw)
    if output is None:
        return 1
    s = parse(output)
    if not s.runs:
        log("no measurements: see the output above")
        return 1
    meta = benchlib.report_meta(t0, load_start, bool(a.from_raw))
    text = report(cases, s, meta, argv_of, a.rounds, z, host_cmd, this_cmd, benchlib.lockup_log(output))
    sys.stdout.write(text)
    if not a.no_save and not a.from_raw:
        path = benchlib.save_results(a.results_dir, "memory", meta["day"], text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
