"""Shared pieces of the end-to-end tests: the guest image, Enlighten runs (directly or in
the test host), and readable failure output.

Most tests take their run from a Session: several Enlighten runs (plain boots and API
scenarios) in ONE test-host boot, executed the first time a test asks for one of them; each
test then asserts on its run's output. One run may serve several tests (a guest that prints
everything they check). GuestTestCase.boot() and run_scenario() still give a test its own
test-host boot."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from enlighten_tools import guest_image, testhost  # noqa: E402
from enlighten_tools.testhost import Carry, RunResult, StopAfter, run_enlighten  # noqa: E402

INIT_RE = re.compile(r"ENLIGHTEN-INIT uptime=[0-9.]+")
BINARY = testhost.default_enlighten_binary()
ASAN_BINARY = REPO / "build-asan" / "enlighten"
# A test host is given up when it prints nothing for this long: every run prints a heartbeat
# (E2E-ALIVE) every 30 s (before, a hung host was noticed only after its longest run's
# timeout, up to 12 minutes).
HEARTBEAT_IDLE_S = 300
# How often a run whose test host died under it is tried again in a fresh one.
RETRIES_AFTER_HOST_DEATH = 2
# Keep kernel messages short (every serial byte is a VM exit) except in the first test;
# panic=-1 turns a guest panic into a reset, so a broken boot fails fast (exit 3).
QUIET_CMDLINE = "console=ttyS0 quiet panic=-1"
# scripts/test builds build-asan/ beside the e2e tests (its sanitizer track) and names here a
# file that track writes once that build has finished: "ok" or "FAILED".
ASAN_READY_ENV = "ENLIGHTEN_ASAN_READY"
ASAN_READY_WAIT_S = 3600
BOOT_TIMEOUT = float(os.environ.get("ENLIGHTEN_E2E_TIMEOUT", "150"))

_image: guest_image.GuestImage | None = None


def require_binary(test: unittest.TestCase) -> None:
    if not BINARY.is_file():
        test.fail(f"{BINARY} does not exist: build Enlighten first (scripts/setup builds "
                  "build/enlighten), or point ENLIGHTEN_BINARY at it")
    if not os.access(BINARY, os.X_OK):
        test.fail(f"{BINARY} is not executable")


def wait_for_sanitizer_build(binary: Path) -> str | None:
    """If `binary` is build-asan's and scripts/test's sanitizer track is building it
    (ASAN_READY_ENV), wait until it has finished. Returns why the binary cannot be used, or None."""
    marker = os.environ.get(ASAN_READY_ENV)
    if not marker or binary != ASAN_BINARY:
        return None
    t0 = time.monotonic()
    if not Path(marker).exists():
        print(f"\n[waiting for the sanitizer track to finish build-asan/ ({marker})] ", end="",
              file=sys.stderr, flush=True)
    while not Path(marker).exists():
        if time.monotonic() - t0 > ASAN_READY_WAIT_S:
            return f"build-asan/ was not finished after {ASAN_READY_WAIT_S} s (the sanitizer track's marker {marker})"
        time.sleep(5)
    status = Path(marker).read_text().strip()
    if status != "ok":
        return f"the sanitizer track's build of build-asan/ ended {status!r}: see its log at the end of scripts/test"
    return None


def image() -> guest_image.GuestImage:
    global _image
    if _image is None:
        _image = guest_image.build()
    return _image


def describe(res: RunResult, limit: int = 4000) -> str:
    """What a failing test shows of its run: the command, and the end of the output. The test
    host's flight recorder of KVM's events after a guest shutdown (E2E-KVM-RECENT, 400 lines
    a CPU) would fill any tail: only its last lines stay, and KVM's record of the shutdown
    itself comes first."""
    lines = res.output.splitlines()
    recent = [i for i, line in enumerate(lines) if line.startswith("E2E-KVM-RECENT ")]
    shutdown = ""
    if recent:
        keep = set(recent[-8:])
        kept: list[str] = []
        for i, line in enumerate(lines):
            if i == recent[0] and len(recent) > len(keep):
                kept.append(f"({len(recent) - len(keep)} E2E-KVM-RECENT lines left out)")
            if i in keep or not line.startswith("E2E-KVM-RECENT "):
                kept.append(line)
        lines = kept
        shutdown = f"\n--- a guest shut down{shutdown_trace(res.output)}"
    tail = "\n".join(lines)[-limit:]
    return (f"\n--- ran: {res.command}\n--- runner={res.runner} exit={res.returncode} after "
            f"{res.duration:.1f} s{shutdown}\n--- output (last {limit} chars) ---\n{tail}\n--- end ---")


# Reading a scenario's output: the shapes its shell side prints (a `show NAME` of the guest
# console and the VMM's log, RESULT KEY=VALUE lines, INFO-BEGIN/END TAG around `api info`).
def section(res: RunResult, name: str) -> str:
    """The guest console of boot `name` (printed by the scenario's `show`)."""
    m = re.search(rf"^--- {re.escape(name)}: guest console ---\n(.*?)^--- {re.escape(name)}: enlighten log ---$",
                  res.output, re.S | re.M)
    return m.group(1) if m else ""


def vmm_log(res: RunResult, name: str) -> str:
    """The VMM's own log of boot `name` (printed by the scenario's `show`)."""
    m = re.search(rf"^--- {re.escape(name)}: enlighten log ---\n(.*?)^--- {re.escape(name)}: end ---$",
                  res.output, re.S | re.M)
    return m.group(1) if m else ""


def kv(text: str) -> dict[str, str]:
    """RESULT KEY=VALUE lines (the last one of a key wins)."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^RESULT (\S+?)=(.*)$", text, re.M)}


def json_between(res: RunResult, marker: str, tag: str) -> dict:
    """The JSON the scenario printed between "MARKER-BEGIN TAG" and "MARKER-END TAG" lines
    (an API answer); fails the test, with the output, when it is missing or not JSON."""
    m = re.search(rf"^{marker}-BEGIN {re.escape(tag)}\n(.*?)^{marker}-END {re.escape(tag)}$", res.output, re.S | re.M)
    if not m:
        raise AssertionError(f"no {marker} '{tag}' in the output" + describe(res))
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError as e:
        raise AssertionError(f"{marker} '{tag}' is not JSON ({e}): {m.group(1)[:500]}" + describe(res)) from e


def vm_info(res: RunResult, tag: str) -> dict:
    """The vm.info JSON the scenario printed between INFO-BEGIN TAG and INFO-END TAG."""
    return json_between(res, "INFO", tag)


def parts_line(key: str, res: RunResult, extra: str = "") -> str:
    """What a scenario run's PART lines say (harness BG_VM_LIB `part`), for the test report."""
    parts = re.findall(r"^PART (\S+) (\S+)$", res.output, re.M)
    return f"[{key}: {res.duration:.1f} s: {', '.join(f'{a} {b} s' for a, b in parts)}{extra}] "


class GuestTestCase(unittest.TestCase):
    """Each test is one Enlighten run (one test-host boot when not direct). A test-host boot
    costs about as much as a guest boot: prefer a Session run (below) for new tests."""

    def setUp(self) -> None:
        require_binary(self)

    def boot(self, *, cpus: int = 1, memory: str = "512M", job: str | None = None,
             cmdline: str = QUIET_CMDLINE, on_reboot: str | None = "exit",
             stop_after: StopAfter | None = None, timeout: float = BOOT_TIMEOUT,
             extra_args: list[str] | None = None, binary: Path | None = None) -> RunResult:
        initrd = guest_image.make_run_initrd(job=job) if job is not None else image().initrd
        args = ["run", "--cmdline", cmdline, "--memory", memory, "--cpus", str(cpus),
                "--serial", "stdio"]
        if on_reboot:
            args += ["--on-reboot", on_reboot]
        args += extra_args or []
        try:
            res = run_enlighten(args, enlighten_binary=binary or BINARY, guest_kernel=image().kernel,
                                guest_initrd=initrd, timeout=timeout, stop_after=stop_after)
        except (testhost.TestHostTimeout, testhost.CommandTimeout) as e:
            self.fail(f"timed out: {e}\n--- output ---\n{e.output[-4000:]}")
        uptimes = re.findall(r"ENLIGHTEN-INIT uptime=([0-9.]+)", res.output)
        print(f"[{res.runner} {res.duration:.1f} s, exit {res.returncode}, guest uptime at "
              f"/init: {', '.join(uptimes) or '-'}] ", end="", file=sys.stderr, flush=True)
        return res

    def assertMarkers(self, res: RunResult, count: int = 1) -> None:
        found = len(INIT_RE.findall(res.output))
        self.assertEqual(found, count, f"expected {count} ENLIGHTEN-INIT marker(s), "
                                       f"found {found}" + describe(res))



# Shell functions for scenarios that drive a running VM through the management API
# (busybox sh in the test host, or sh here). $ENL, $KERNEL, $INITRD, $CPUS and $WORK are set.
SCENARIO_LIB = r"""
SERIAL=$WORK/serial.log
API=$WORK/api.sock
# start_vm "<extra kernel args>" [more enlighten args]: boots the guest with its integration
# services up and staying alive; the console goes to $SERIAL.
start_vm() {
    extra=$1; shift
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info \
        --cmdline "console=ttyS0 quiet enlighten.services enlighten.stay $extra" "$@" >"$WORK/vmm.log" 2>&1 &
    VM_PID=$!
}
# wait_serial PATTERN SECONDS: fails at once if the VM ($VM_PID, when set) has exited.
wait_serial() {
    n=0
    while ! grep -q "$1" "$SERIAL" 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt $(($2 * 10)) ]; then echo "SCENARIO-TIMEOUT waiting for '$1'"; return 1; fi
        if [ -n "${VM_PID:-}" ] && ! kill -0 "$VM_PID" 2>/dev/null; then
            grep -q "$1" "$SERIAL" 2>/dev/null && return 0
            echo "SCENARIO-VM-EXITED while waiting for '$1'"; return 1
        fi
        sleep 0.1
    done
}
now() { read -r t _ </proc/uptime; echo "$t"; }
api() { "$ENL" remote --api-socket "$API" "$@"; }
# wait_api SECONDS PATTERN COMMAND...: repeat an API command until its output matches.
wait_api() {
    secs=$1; pat=$2; shift 2; n=0
    while ! api "$@" 2>/dev/null | grep -q "$pat"; do
        n=$((n + 1))
        if [ $n -gt $((secs * 5)) ]; then echo "SCENARIO-TIMEOUT waiting for '$pat' from $*"; return 1; fi
        if [ -n "${VM_PID:-}" ] && ! kill -0 "$VM_PID" 2>/dev/null; then
            echo "SCENARIO-VM-EXITED while waiting for '$pat' from $*"; return 1
        fi
        sleep 0.2
    done
}
dump_logs() {
    echo "--- guest serial console ---"; cat "$SERIAL" 2>/dev/null
    echo "--- enlighten log ---"; cat "$WORK/vmm.log" 2>/dev/null
    echo "--- end ---"
}
# live WORDS...: a line for the run's on_live hook on the machine that runs the tests
# (Session.scenario(on_live=...)), seen there at once while the run goes on (a session's
# run_item gives the run its console as fd 3); also "LIVE WORDS" in the run's own output.
live() { echo "LIVE $*"; { echo "E2E-LIVE ${E2E_RUN:-none} $*" >&3; } 2>/dev/null || true; }
"""


def static_c_program(src: Path, name: str) -> Path:
    """The C file `src` built static with this machine's gcc into build/e2e/NAME (again when
    the source is newer): a program for the test host or the guest, which have no libc of
    this machine."""
    out = REPO / "build" / "e2e" / name
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(src)], check=True)
    return out


def program(name: str) -> Path:
    """A program of this machine for a scenario's `files` ($NAME in its script): its path, or
    a path that does not exist (the run then fails, saying what is missing)."""
    return Path(shutil.which(name) or f"/nonexistent/{name}")


def run_scenario(test: unittest.TestCase, script: str, *, job: str | None = None, cpus: int = 1,
                 timeout: float = 300) -> RunResult:
    """Runs `script` (sh) with SCENARIO_LIB, next to Enlighten and the guest image: directly
    or in the test host. The guest's /job is `job`."""
    require_binary(test)
    initrd = guest_image.make_run_initrd(job=job) if job is not None else image().initrd
    runner = testhost.choose_runner()
    if runner == "direct":
        paths = {"ENL": str(BINARY), "KERNEL": str(image().kernel), "INITRD": str(initrd)}
        files = None
    else:
        paths = {"ENL": f"{testhost.HOST_BIN_DIR}/enlighten", "KERNEL": f"{testhost.HOST_GUEST_DIR}/bzImage",
                 "INITRD": f"{testhost.HOST_GUEST_DIR}/initrd.img"}
        files = {paths["ENL"]: str(BINARY), paths["KERNEL"]: str(image().kernel), paths["INITRD"]: str(initrd)}
    prologue = "".join(f"{k}='{v}'\n" for k, v in paths.items())
    prologue += f"CPUS={cpus}\nWORK=$(mktemp -d)\n" + SCENARIO_LIB
    try:
        res = testhost.run_command(prologue + script, files=files, cpus=min(cpus, 2), timeout=timeout,
                                   runner=runner)
    except (testhost.TestHostTimeout, testhost.CommandTimeout) as e:
        test.fail(f"scenario timed out: {e}\n--- output ---\n{e.output[-6000:]}")
    print(f"[{res.runner} {res.duration:.1f} s] ", end="", file=sys.stderr, flush=True)
    return res


def results(res: RunResult) -> dict[str, str]:
    """RESULT key=value lines printed by a scenario."""
    out = {}
    for m in re.finditer(r"^RESULT (\S+?)=(.*)$", res.output, re.M):
        out[m.group(1)] = m.group(2).strip()
    return out


# ----------------------------------------------------------------------------- sessions
# The session's shell script (busybox sh in the test host, or sh here) runs each run as its
# own process group (setsid) with a watchdog, collects its output in a file, and prints it
# between two marker lines once the run has ended (runs in parallel lanes do not interleave).
# Lanes take runs from one queue in registration order: register the runs whose guests need
# all the test host's vCPUs first, then the others longest first.
_SESSION_LIB = r"""
now() { read -r t _ </proc/uptime; echo "$t"; }
E2E_LOCK=$(mktemp -d)/lock
# A guest that triple-faults leaves no trace in the VMM: KVM (AMD) resets the vCPU before the
# VMM sees the exit. KVM's own exit tracepoint, kept only for shutdown exits (SVM exit code
# 127, so it costs next to nothing), records where the guest was; run_item prints it after
# the run (E2E-KVM-SHUTDOWN lines; the report puts them in the retry's NOTE).
E2E_TRACE=/sys/kernel/tracing
# A second instance is a flight recorder of KVM's last events on each of the test host's
# CPUs (every exit, nested page faults, injected interrupts and exceptions, and the MMU
# notifier's invalidations of guest RAM; not kvm_entry, which would double the cost on every
# exit); run_item prints it only after a shutdown exit (E2E-KVM-RECENT lines).
E2E_RECENT=$E2E_TRACE/instances/enl_recent
if mount -t tracefs tracefs $E2E_TRACE 2>/dev/null && [ -d $E2E_TRACE/events/kvm/kvm_exit ]; then
    echo 'exit_reason == 127' >$E2E_TRACE/events/kvm/kvm_exit/filter && echo 1 >$E2E_TRACE/events/kvm/kvm_exit/enable
    if mkdir $E2E_RECENT 2>/dev/null; then
        echo 256 >$E2E_RECENT/buffer_size_kb
        for e in kvm_exit kvm_page_fault kvm_inj_virq kvm_inj_exception kvm_unmap_hva_range kvm_set_spte_hva \
                 kvm_age_hva kvm_mmu_invalidate_zap_all_pages; do
            [ -d $E2E_RECENT/events/kvm/$e ] && echo 1 >$E2E_RECENT/events/kvm/$e/enable
        done
    fi
fi
# run_item KEY TIMEOUT SCRIPT
run_item() {
    key=$1; limit=$2; script=$3
    d=$(mktemp -d)
    t0=$(now)
    echo "E2E-START $key"
    # fd 3: the session's console, for the run's live lines (SCENARIO_LIB's `live`)
    setsid sh "$script" 3>&1 >"$d/out" 2>&1 </dev/null &
    pid=$!
    ( n=0
      while [ $n -lt "$limit" ]; do
          sleep 1; n=$((n + 1))
          # a heartbeat, so that a test host that stops answering is noticed in 5 minutes
          [ $((n % 30)) -eq 0 ] && echo "E2E-ALIVE $key $n"
      done
      : >"$d/timeout"; kill -KILL -$pid 2>/dev/null ) &
    watchdog=$!
    wait $pid
    rc=$?
    kill $watchdog 2>/dev/null; wait $watchdog 2>/dev/null
    kill -KILL -$pid 2>/dev/null  # whatever the run left behind (a VM of a failed scenario)
    t1=$(now)
    timed_out=0; [ -e "$d/timeout" ] && timed_out=1
    until mkdir "$E2E_LOCK" 2>/dev/null; do sleep 0.1; done
    # shutdown exits during this run (with parallel lanes: of any run then)
    if [ -r $E2E_TRACE/trace ]; then
        grep -v '^#' $E2E_TRACE/trace 2>/dev/null | sed 's/^/E2E-KVM-SHUTDOWN /' >"$d/shutdown"
        : >$E2E_TRACE/trace 2>/dev/null
        cat "$d/shutdown" >>"$d/out"
        if [ -s "$d/shutdown" ] && [ -r $E2E_RECENT/trace ]; then
            grep -v '^#' $E2E_RECENT/trace | tail -n 400 | sed 's/^/E2E-KVM-RECENT /' >>"$d/out"
            echo "E2E-THP $(cat /sys/kernel/mm/transparent_hugepage/enabled) collapsed=$(cat /sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed)" >>"$d/out"
        fi
        [ -w $E2E_RECENT/trace ] && : >$E2E_RECENT/trace
    fi
    echo "E2E-BEGIN $key"
    cat "$d/out"
    [ -s "$d/out" ] && [ -n "$(tail -c 1 "$d/out")" ] && echo
    echo "E2E-END $key rc=$rc seconds=$(awk "BEGIN { print $t1 - $t0 }") timeout=$timed_out"
    rmdir "$E2E_LOCK"
    rm -rf "$d"
}
# lane QUEUE: run the next "KEY TIMEOUT VCPUS SCRIPT" line of QUEUE (shared by all lanes)
# once VCPUS of the test host's vCPUs are free, until no line is left. So parallel lanes
# balance themselves and never give the guests more vCPUs than the test host has.
E2E_NEXT=$(mktemp); echo 1 >"$E2E_NEXT"
E2E_FREE=$(mktemp); echo "$E2E_VCPUS" >"$E2E_FREE"
lane() {
    while :; do
        until mkdir "$E2E_LOCK.next" 2>/dev/null; do sleep 0.1; done
        read -r n <"$E2E_NEXT"; read -r free <"$E2E_FREE"
        line=$(sed -n "${n}p" "$1")
        [ -n "$line" ] || { rmdir "$E2E_LOCK.next"; return 0; }
        set -- "$1" $line
        if [ "$4" -gt "$free" ]; then rmdir "$E2E_LOCK.next"; sleep 0.2; set -- "$1"; continue; fi
        echo $((n + 1)) >"$E2E_NEXT"; echo $((free - $4)) >"$E2E_FREE"
        rmdir "$E2E_LOCK.next"
        run_item "$2" "$3" "$5"
        until mkdir "$E2E_LOCK.next" 2>/dev/null; do sleep 0.1; done
        read -r free <"$E2E_FREE"; echo $((free + $4)) >"$E2E_FREE"
        rmdir "$E2E_LOCK.next"
        set -- "$1"
    done
}
"""
# Shell helpers for a scenario that drives a VM started in the background (after SCENARIO_LIB;
# the scenario's own start function sets $VM_PID, $BG_NAME and $SERIAL, the console file).
BG_VM_LIB = r"""
T0=$(now)
PART_T=$T0
# part NAME: the seconds since the previous part (or the start)
part() { t=$(now); echo "PART $1 $(awk "BEGIN { printf \"%.1f\", $t - $PART_T }")"; PART_T=$t; }
# show NAME: the guest console and the VMM's log of boot NAME (harness.section, vmm_log)
show() {
    echo "--- $1: guest console ---"; tr -d '\r' < "$WORK/$1.serial" 2>/dev/null
    [ -n "$(tail -c 1 "$WORK/$1.serial" 2>/dev/null)" ] && echo
    echo "--- $1: enlighten log ---"; cat "$WORK/$1.vmm.log" 2>/dev/null
    echo "--- $1: end ---"
}
vm_alive() { st=; { read -r _ _ st _ < "/proc/$VM_PID/stat"; } 2>/dev/null; [ -n "$st" ] && [ "$st" != Z ]; }
# wait_guest PATTERN SECONDS: until the guest console shows PATTERN; gives up at once when
# the VMM has exited (e.g. it refused its command line).
wait_guest() {
    n=0
    while ! grep -q "$1" "$SERIAL" 2>/dev/null; do
        if ! vm_alive; then grep -q "$1" "$SERIAL" 2>/dev/null && return 0; echo "SCENARIO-VM-EXITED waiting for '$1'"; return 1; fi
        n=$((n + 1))
        if [ $n -gt $(($2 * 10)) ]; then echo "SCENARIO-TIMEOUT waiting for '$1'"; return 1; fi
        sleep 0.1
    done
}
# info TAG: the API's VM info between markers (harness.vm_info)
info() { echo "INFO-BEGIN $1"; api info; echo "INFO-END $1"; }
# stop_vm: power the background VM off through the API, print its exit status and console
stop_vm() {
    vm_alive && api power-off >/dev/null
    wait "$VM_PID"
    echo "RESULT $BG_NAME.rc=$?"
    show "$BG_NAME"
}
"""

# ----------------------------------------------------------------------------- live hooks
_LIVE_RE = re.compile(r"^E2E-LIVE (\S+) (.*)$")
_END_RE = re.compile(r"^E2E-END (\S+) rc=")
LIVE_JOIN_S = 60  # how long a hook may go on after its run ended


class LiveEnded(AssertionError):
    """Live.wait_line: the run ended (or the wait timed out) without the line."""


class Live:
    """What a scenario's on_live hook gets, on a thread of its own, when the run prints its
    first `live WORDS` line (SCENARIO_LIB): the run is still going on in the test host.

    line: the WORDS of that first line; forwards: {port in the test host: port of 127.0.0.1
    here} (Session.scenario(forward_ports=...)); wait_line(): a later live line; note(): text
    kept with the outcome (Session.live_result) and shown when a test fails."""

    def __init__(self, key: str, line: str, forwards: dict[int, int], nic_addr: str) -> None:
        self.key = key
        self.line = line
        self.forwards = dict(forwards)
        self.nic_addr = nic_addr      # where the forwarded ports are in the test host ($E2E_NIC_ADDR)
        self.notes: list[str] = []
        self.t0 = time.monotonic()
        self._lines: list[str] = [line]
        self._next = 1
        self._ended = False
        self._cond = threading.Condition()

    def local_url(self, url: str) -> str:
        """A URL the run printed (http://E2E_NIC_ADDR:PORT/...) as this machine reaches it
        (http://127.0.0.1:FORWARDED/...)."""
        m = re.match(r"(\w+)://([^/:]+):(\d+)(.*)$", url)
        if not m or int(m.group(3)) not in self.forwards:
            raise AssertionError(f"{url!r} is not on a forwarded port ({self.forwards})")
        return f"{m.group(1)}://127.0.0.1:{self.forwards[int(m.group(3))]}{m.group(4)}"

    def wait_line(self, pattern: str, timeout: float) -> str:
        """The next live line (after those already taken) that matches the regex `pattern`;
        LiveEnded if the run ends or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._next < len(self._lines):
                    ln = self._lines[self._next]
                    self._next += 1
                    if re.search(pattern, ln):
                        return ln
                if self._ended:
                    raise LiveEnded(f"run {self.key!r} ended without a live line matching {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LiveEnded(f"no live line matching {pattern!r} from run {self.key!r} in {timeout:.0f} s")
                self._cond.wait(min(left, 1.0))

    @property
    def ended(self) -> bool:
        return self._ended

    def note(self, text: str) -> None:
        self.notes.append(f"[{time.monotonic() - self.t0:6.1f} s] {text}")

    def _push(self, line: str) -> None:
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()


@dataclass
class LiveOutcome:
    """What a run's on_live hook did: its return value, or the exception it raised (with the
    traceback); its notes; its seconds."""
    value: Any = None
    error: str | None = None    # the traceback
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ran: bool = True
    summary: str = ""           # the exception's first line

    def describe(self) -> str:
        out = f"\n--- the live hook ({self.seconds:.1f} s) ---\n"
        out += "\n".join(self.notes) if self.notes else "(no notes)"
        if self.error:
            out += f"\n--- the hook raised ---\n{self.error}"
        return out + "\n--- end ---"


class _LiveDispatcher:
    """Session._run_batch's on_line: starts each run's hook at its first live line, passes it
    the later ones, tells it when its run ended; collect() joins the hooks."""

    def __init__(self, runs: dict[str, "_Run"], forwards: dict[int, int], nic_addr: str) -> None:
        self.runs = runs
        self.forwards = forwards
        self.nic_addr = nic_addr
        self.live: dict[str, Live] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.outcomes: dict[str, LiveOutcome] = {}

    def __call__(self, line: str) -> None:
        m = _LIVE_RE.match(line)
        if m:
            key, words = m.group(1), m.group(2)
            run = self.runs.get(key)
            if run is None or run.on_live is None:
                return
            if key in self.live:
                self.live[key]._push(words)
                return
            ctx = Live(key, words, self.forwards, self.nic_addr)
            self.live[key] = ctx
            t = threading.Thread(target=self._hook, args=(run, ctx), name=f"live-{key}", daemon=True)
            self.threads[key] = t
            t.start()
            return
        m = _END_RE.match(line)
        if m and m.group(1) in self.live:
            self.live[m.group(1)]._end()

    def _hook(self, run: "_Run", ctx: Live) -> None:
        out = LiveOutcome()
        try:
            out.value = run.on_live(ctx)
        except BaseException as e:  # noqa: BLE001 - reported with the session
            out.error = traceback.format_exc()
            out.summary = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        out.seconds = time.monotonic() - ctx.t0
        out.notes = ctx.notes
        self.outcomes[run.key] = out

    def collect(self) -> dict[str, LiveOutcome]:
        for ctx in self.live.values():
            ctx._end()
        deadline = time.monotonic() + LIVE_JOIN_S
        for key, t in self.threads.items():
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                ctx = self.live[key]
                self.outcomes[key] = LiveOutcome(error=f"the hook was still running {LIVE_JOIN_S} s after "
                                                 "the session's test host ended", notes=list(ctx.notes),
                                                 seconds=time.monotonic() - ctx.t0)
        return dict(self.outcomes)


# What the VMM logs when a vCPU shut down (vmm/machine.cpp, KVM_EXIT_SHUTDOWN).
_TRIPLE_FAULT_RE = re.compile(r"vCPU \d+: triple fault")
_SHUTDOWN_RE = re.compile(r"^E2E-KVM-SHUTDOWN .*?kvm_exit: (?:vcpu (\d+) )?reason (\S+) rip (0x[0-9a-f]+)(.*)$", re.M)


def shutdown_trace(output: str) -> str:
    """The test host's record of the guest's shutdown exits in a run's output (run_item's
    E2E-KVM-SHUTDOWN lines: KVM's kvm_exit tracepoint). The VMM boots the kernel without
    KASLR (it decompresses it itself), so the RIP maps onto the symbols of Debian's
    linux-image-...-dbg package as it is (the System.map of linux-image is a stub)."""
    found = [f"vCPU {m.group(1) or '?'} reason {m.group(2)} rip {m.group(3)}{m.group(4).rstrip()}"
             for m in _SHUTDOWN_RE.finditer(output)]
    return ("; KVM saw: " + "; ".join(found)) if found else "; KVM's shutdown tracepoint recorded nothing"


def save_recent_kvm_events(output: str, name: str) -> str:
    """Keeps run_item's flight recorder of KVM's last events before a shutdown exit
    (E2E-KVM-RECENT lines) in build/e2e/kvm-recent-NAME-<time>.txt; says where."""
    lines = [line[len("E2E-KVM-RECENT "):] for line in output.splitlines() if line.startswith("E2E-KVM-RECENT ")]
    lines += [line for line in output.splitlines() if line.startswith("E2E-THP ")]
    if not lines:
        return ""
    out = REPO / "build" / "e2e" / f"kvm-recent-{name}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return f"; KVM's last events: {out.relative_to(REPO)}"


_ITEM_RE = re.compile(r"^E2E-BEGIN (\S+)\n(.*?)^E2E-END \1 rc=(\d+) seconds=([0-9.e+-]+) timeout=([01])$",
                      re.M | re.S)
# Runs of a session at the same time (ENLIGHTEN_E2E_LANES, default 1: one after another), as
# long as their guests' vCPUs fit in the test host's (a 2-vCPU guest runs alone in a 2-vCPU
# host). Two lanes keep both cores of a 2-core machine busy (about 25% less wall time in
# one measurement) but are not the default: twice, two guests rebooting with --on-reboot
# restart at the same time ("restart" and "restart-vmbus") hung the whole test host.
_LANES = max(1, int(os.environ.get("ENLIGHTEN_E2E_LANES", "1")))
_sessions: list["Session"] = []


@dataclass
class _Run:
    key: str
    timeout: float
    initrd: Path | None = None      # resolved at execution
    job: str | None = None
    binary: Path = BINARY
    argv_tail: list[str] = field(default_factory=list)  # boot: enlighten args after --initrd
    stop_after: StopAfter | None = None
    script: str | None = None       # scenario: shell script (with SCENARIO_LIB)
    cpus: int = 1
    tools: bool = False             # the guest image's disk-tools layer (mkfs, fio, ...)
    net: bool = False               # the guest image's network-tools layer (iperf3, ethtool)
    # scenario: more files, NAME -> local path (or a function giving it, called when the session
    # runs); the script finds each at $NAME (carried into the test host)
    files: dict[str, Path | Callable[[], Path]] = field(default_factory=dict)
    # scenario: files in the guest's initrd, guest path -> local path (or a function giving it,
    # called when the session runs)
    guest_files: dict[str, Path | Callable[[], Path]] = field(default_factory=dict)
    # scenario: TCP ports of the test host reachable from this machine, and the hook that the
    # run's first `live` line starts (see Session.scenario)
    forward_ports: tuple[int, ...] = ()
    # scenario: the guest is meant to triple-fault (not retried as a fault of the test host)
    expect_triple_fault: bool = False
    on_live: Callable[[Live], Any] | None = None


class Session:
    """Several Enlighten runs in one test-host boot (or, with hardware KVM, one `sh` here).

    boot()/scenario() register runs (at import time); result(test, key) executes the whole
    session the first time any test asks, then returns that run's RunResult (duration: the
    run's own seconds). If the session, or that run, failed to produce a result (test host
    error, timeout, binary missing), every test asking for it fails with the reason and the
    output there is. A run's exit status is for the test to judge."""

    def __init__(self, name: str, *, host_cpus: int | None = None, lanes: int | None = None,
                 host_memory_mib: int = testhost.DEFAULT_HOST_MEMORY_MIB,
                 host_net_tools: bool = False, host_libraries: tuple[str, ...] = (),
                 host_dirs: tuple[str, ...] = (),
                 retry_guest_triple_fault: bool = True) -> None:
        """host_net_tools: the test host gets testhost.net_tools_layer() (iperf3);
        host_libraries: shared libraries of this machine (and those they need) that the test
        host gets at the same paths, for what the VMM loads with dlopen() (libvncserver);
        host_dirs: directories of this machine that the test host gets at the same paths, every
        file under them (symlinks resolved), for what the VMM reads (--web's /usr/share/novnc);
        retry_guest_triple_fault: a run whose guest triple-faulted (the VMM says so) runs once
        more in a fresh test host, and the session report says so (see _execute); on by
        default since 2026-12-07, when a plain 2-vCPU boot's guest triple-faulted 2.4 s in."""
        self.retry_guest_triple_fault = retry_guest_triple_fault
        self.host_libraries = tuple(host_libraries)
        self.host_dirs = tuple(host_dirs)
        self.name = name
        self.host_net_tools = host_net_tools
        self.host_memory_mib = host_memory_mib
        self.host_cpus = host_cpus  # default: 2 with parallel lanes, else what the largest guest has (max 2)
        self.notes: list[str] = []
        self.lanes = lanes or _LANES
        self.runs: dict[str, _Run] = {}
        self.results: dict[str, RunResult] = {}
        self.failures: dict[str, str] = {}
        self.live: dict[str, LiveOutcome] = {}
        self.executed = False
        self.duration = 0.0
        self.runner = ""
        _sessions.append(self)

    def _add(self, run: _Run) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run.key):
            raise ValueError(f"session {self.name}: run key {run.key!r} must be [A-Za-z0-9._-]+")
        if run.key in self.runs:
            raise ValueError(f"session {self.name}: run {run.key!r} registered twice")
        self.runs[run.key] = run

    def boot(self, key: str, *, cpus: int = 1, memory: str = "512M", job: str | None = None,
             cmdline: str = QUIET_CMDLINE, on_reboot: str | None = "exit",
             stop_after: StopAfter | None = None, timeout: float = BOOT_TIMEOUT,
             extra_args: list[str] | None = None, binary: Path | None = None,
             net: bool = False) -> None:
        """`enlighten run` with the default guest (and `job` as its /job): as GuestTestCase.boot.
        `net`: the guest has the network tools (iperf3, ethtool)."""
        args = ["--cmdline", cmdline, "--memory", memory, "--cpus", str(cpus), "--serial", "stdio"]
        if on_reboot:
            args += ["--on-reboot", on_reboot]
        args += extra_args or []
        self._add(_Run(key, timeout, job=job, binary=binary or BINARY, argv_tail=args,
                       stop_after=stop_after, cpus=cpus, net=net))

    def scenario(self, key: str, script: str, *, job: str | None = None, cpus: int = 1,
                 timeout: float = 300, tools: bool = False, net: bool = False,
                 files: dict[str, Path | Callable[[], Path]] | None = None,
                 binary: Path | None = None,
                 guest_files: dict[str, Path | Callable[[], Path]] | None = None,
                 forward_ports: list[int] | tuple[int, ...] = (),
                 on_live: Callable[[Live], Any] | None = None,
                 expect_triple_fault: bool = False) -> None:
        """A shell script with SCENARIO_LIB, as run_scenario(); `tools`, `net`: the guest has
        the disk tools, the network tools (guest_image.make_run_initrd); `files`: NAME -> local path (or a function
        returning it, called when the session runs, e.g. to build an image): $NAME in the
        script is that file (carried into the test host); `binary`: $ENL (default: BINARY);
        `guest_files`: guest path -> local path (or a function returning it), put into the
        guest's initrd next to /job.

        `forward_ports`: TCP ports of the test host that this machine reaches while the session
        runs (the test host then gets a user-mode NIC: testhost.run_in_testhost); a server of
        the run must listen on $E2E_NIC_ADDR (10.0.2.15 in the test host, 127.0.0.1 direct).
        `on_live(live)`: called on a thread of its own when the run's script first says
        `live WORDS...`, with a Live (the words, the port forwards, later lines); the run goes
        on meanwhile, so the script can wait for what the hook does (with a timeout). What
        it returns or raises is Session.live_result(test, key).
        `expect_triple_fault`: the guest is meant to shut its CPU down; the run is not run
        again for it (retry_guest_triple_fault)."""
        for name in files or {}:
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(f"session {self.name}: file variable {name!r} must be [A-Z][A-Z0-9_]*")
        self._add(_Run(key, timeout, job=job, script=script, cpus=cpus, tools=tools, net=net,
                       files=dict(files or {}), binary=binary or BINARY, guest_files=dict(guest_files or {}),
                       forward_ports=tuple(forward_ports), on_live=on_live,
                       expect_triple_fault=expect_triple_fault))

    # -- execution
    def result(self, test: unittest.TestCase, key: str) -> RunResult:
        if key not in self.runs:
            raise KeyError(f"session {self.name} has no run {key!r}")
        self.execute()
        if key in self.failures:
            test.fail(self.failures[key])
        return self.results[key]

    def live_result(self, test: unittest.TestCase, key: str) -> LiveOutcome:
        """What the on_live hook of run `key` did (after the session ran; fails the test as
        result() does when the run has no result). ran=False if the run never said `live`."""
        self.result(test, key)
        return self.live.get(key) or LiveOutcome(error=f"run {key!r} never printed a live line: its hook did not run",
                                                 ran=False)

    def execute(self) -> None:
        if self.executed:
            return
        self.executed = True
        t0 = time.monotonic()
        try:
            self._execute()
        except Exception as e:  # noqa: BLE001 - every run must report it, not one test
            why = f"session {self.name!r} could not run: {type(e).__name__}: {e}"
            out = getattr(e, "output", "")
            if out:
                why += f"\n--- session output (last 6000 chars) ---\n{out[-6000:]}\n--- end ---"
            for key in self.runs:
                if key not in self.results:
                    self.failures.setdefault(key, why)
        self.duration = time.monotonic() - t0
        print(f"\n[session {self.name}: {self.runner or '?'} {self.duration:.1f} s; "
              + ", ".join(f"{k} {'FAILED' if k in self.failures else f'exit {r.returncode} {r.duration:.1f} s'}"
                          + (f" (hook {_live_word(self.live[k])})" if k in self.live else "")
                          for k, r in ((k, self.results.get(k)) for k in self.runs))
              + "] ", end="", file=sys.stderr, flush=True)

    def _execute(self) -> None:
        runnable = []
        only = {k for k in os.environ.get("ENLIGHTEN_E2E_RUNS", "").split(",") if k}
        for key, run in self.runs.items():
            missing = [str(p) for p in run.files.values() if isinstance(p, Path) and not p.is_file()]
            if only and key not in only:
                self.failures[key] = f"run {key!r} not selected (ENLIGHTEN_E2E_RUNS={','.join(sorted(only))})"
            elif missing:
                self.failures[key] = (f"run {key!r} needs {', '.join(missing)} on this machine (scripts/setup "
                                      "installs what the tests need)")
            elif (why := wait_for_sanitizer_build(run.binary)) is not None:
                self.failures[key] = f"run {key!r}: {why}"
            elif not run.binary.is_file() or not os.access(run.binary, os.X_OK):
                self.failures[key] = (f"{run.binary} does not exist or is not executable: build Enlighten first "
                                      "(scripts/setup builds build/enlighten and build-asan/enlighten), or "
                                      "point ENLIGHTEN_BINARY at it")
            else:
                runnable.append(run)
        if not runnable:
            return
        img = image()
        for run in runnable:  # one at a time: make_run_initrd's temporary file is per process
            guest_files = [(Path(f() if callable(f) else f), dst) for dst, f in run.guest_files.items()]
            run.initrd = (guest_image.make_run_initrd(job=run.job, tools=run.tools, net=run.net, files=guest_files)
                          if run.job is not None or run.tools or run.net or guest_files else img.initrd)
            run.files = {name: Path(f() if callable(f) else f) for name, f in run.files.items()}
        self.runner = testhost.choose_runner()
        # If the test host stops answering (it has been seen to hang under heavy load), the
        # runs it had not started get a fresh test host. A run the test host died under (its kernel panicked or reset, or it stopped
        # answering: the nested QEMU-TCG host does, now and then, under load; a VMM in
        # user space cannot do that to a kernel) runs again, once, in the next test host,
        # and the session report says so. A run that failed by itself is never retried.
        # (Up to RETRIES_AFTER_HOST_DEATH times: one CI run saw the same run's host die twice.)
        #
        # Every session (unless it says retry_guest_triple_fault=False) also runs once more a
        # run whose GUEST triple-faulted. In 4-vCPU test hosts, where QEMU-TCG runs 4 vCPU
        # threads on the machine's 2 cores, a 4-vCPU guest shut down that way about one run in
        # ten (storage's channels, network's net-channels), at random points, under fio or iperf
        # or at its first disk probe, with the VMM healthy and no VMM-side cause found. The
        # hostile guest did so now and then (docs/hostile-guest.md), in the same sessions whose
        # TEST HOST also dies now and then. On 2026-12-07 a plain 2-vCPU boot (test_hyperv's
        # panic run) did so 2.4 s in, before its /init ran. The note names the run and the
        # vCPU; a second triple fault fails the run.
        pending, hosts, retried = runnable, 1, {}
        faulted_once: set[str] = set()
        while True:
            started, why = self._run_batch(pending, img)
            faulted = [r for r in pending if self.retry_guest_triple_fault and not r.expect_triple_fault
                       and r.key in self.results
                       and r.key not in faulted_once and _TRIPLE_FAULT_RE.search(self.results[r.key].output)]
            for r in faulted:
                m = _TRIPLE_FAULT_RE.search(self.results[r.key].output)
                self.notes.append(f"run {r.key}: the guest triple-faulted ({m.group(0) if m else '?'}) after "
                                  f"{self.results[r.key].duration:.0f} s; it runs again in a fresh test host"
                                  + shutdown_trace(self.results[r.key].output)
                                  + save_recent_kvm_events(self.results[r.key].output, f"{self.name}-{r.key}"))
                faulted_once.add(r.key)
                del self.results[r.key]
                self.failures.pop(r.key, None)
            cut = [r for r in pending if r.key in started and r.key not in self.results
                   and (r in faulted or retried.get(r.key, 0) < RETRIES_AFTER_HOST_DEATH)]
            for r in cut:
                if r not in faulted:
                    retried[r.key] = retried.get(r.key, 0) + 1
                self.failures.pop(r.key, None)
            pending = [r for r in pending if r.key not in started or r in cut]
            if not pending:
                return
            if (not started and not cut) or hosts == 4:  # no progress: the same would happen again
                break
            hosts += 1
            self.notes.append(f"test host #{hosts} for the {len(pending)} run(s) the previous one had not "
                              f"finished: {', '.join(r.key for r in pending)}"
                              + (f" (again, after the test host died or the guest triple-faulted under them: "
                                 f"{', '.join(r.key for r in cut)})" if cut else ""))
        for run in pending:
            self.failures[run.key] = f"session {self.name!r}: run {run.key!r} never started: {why}"

    def _run_batch(self, runnable: list[_Run], img: guest_image.GuestImage) -> tuple[set[str], str]:
        """Runs `runnable` in one test host; records results and failures; returns the keys
        of the runs that were started, and what went wrong (with the output) if the test
        host failed."""
        runner = self.runner
        direct = runner == "direct"
        host_cpus = self.host_cpus or (2 if self.lanes > 1 else max(min(r.cpus, 2) for r in runnable))
        files: dict[str, str] = {}

        def place(src: Path, dst: str) -> str:
            if direct:
                return str(src)
            for d, s in files.items():
                if s == str(src):
                    return d
            files[dst] = str(src)
            return dst

        commands: dict[str, str] = {}
        ports = sorted({p for r in runnable for p in r.forward_ports})
        forwards = testhost.pick_forwards(ports, runner) if ports else {}
        nic_addr = "127.0.0.1" if direct else testhost.HOST_NIC_ADDR
        dispatcher = _LiveDispatcher({r.key: r for r in runnable}, forwards, nic_addr)
        tmp = Path(tempfile.mkdtemp(prefix=f"enlighten-e2e-{self.name}-"))
        try:
            kernel = place(img.kernel, f"{testhost.HOST_GUEST_DIR}/bzImage")
            if not direct:
                for lib in self.host_libraries:
                    for path in [lib, *testhost.ldd_libraries(lib)]:
                        files.setdefault(path, path)
                for top in self.host_dirs:
                    for root, _, names in os.walk(top):
                        for name in names:
                            path = os.path.join(root, name)
                            if os.path.isfile(path):
                                files.setdefault(path, path)
            queue: list[str] = []
            for n, run in enumerate(runnable):
                binary = place(run.binary, f"{testhost.HOST_BIN_DIR}/{n}-{run.binary.name}")
                initrd = place(run.initrd, f"{testhost.HOST_GUEST_DIR}/{n}-{run.key}.img")
                if run.script is not None:
                    extra = "".join(f"{name}={shlex.quote(place(path, f'/enlighten/e2e/{n}-{path.name}'))}\n"
                                    for name, path in run.files.items())
                    body = (f"ENL={shlex.quote(binary)}\nKERNEL={shlex.quote(kernel)}\n"
                            f"INITRD={shlex.quote(initrd)}\nCPUS={run.cpus}\nWORK=$(mktemp -d)\n"
                            f"E2E_RUN={run.key}\nE2E_NIC_ADDR={nic_addr}\n"
                            + extra + SCENARIO_LIB + run.script)
                    commands[run.key] = f"scenario {run.key!r} of session {self.name!r} (ENL={binary})"
                else:
                    argv = [binary, "run", "--kernel", kernel, "--initrd", initrd, *run.argv_tail]
                    command = shlex.join(argv)
                    commands[run.key] = command
                    body = run.stop_after.script(command) if run.stop_after else f"exec {command}\n"
                local = tmp / f"{n}-{run.key}.sh"
                local.write_text("#!/bin/sh\n" + body)
                item = place(local, f"/enlighten/e2e/{local.name}")
                if not re.fullmatch(r"[A-Za-z0-9._/+-]+", item):
                    raise ValueError(f"run script path {item!r} has characters the queue cannot carry")
                queue.append(f"{run.key} {int(run.timeout)} {max(1, min(run.cpus, host_cpus))} {item}\n")
            local = tmp / "queue"
            local.write_text("".join(queue))
            lanes = min(self.lanes, len(runnable))
            master = (f"E2E_VCPUS={host_cpus}\n" + _SESSION_LIB
                      + f"QUEUE={shlex.quote(place(local, '/enlighten/e2e/queue'))}\n"
                      + "".join(f"lane \"$QUEUE\" &\nlane{i}=$!\n" for i in range(lanes))
                      + "".join(f"wait $lane{i}\n" for i in range(lanes)))
            # Enough for every run to use its whole timeout (the lanes share the work); and
            # a test host that prints nothing (no run starting or ending) for longer than the
            # longest run may take has stopped working.
            longest = max(r.timeout for r in runnable)
            budget = sum(r.timeout for r in runnable) / lanes + longest
            try:
                res = testhost.run_command(master, files=files or None, cpus=host_cpus, timeout=budget + 120,
                                           runner=runner, idle_timeout=min(longest + 90, HEARTBEAT_IDLE_S), tb_size_mib=64,
                                           memory_mib=self.host_memory_mib,
                                           layers=[testhost.net_tools_layer()] if self.host_net_tools else (),
                                           forward_ports=forwards, on_line=dispatcher)
                output, problem = res.output, ""
            except testhost.ToolError as e:  # TestHostTimeout/TestHostError/CommandTimeout
                output, problem = getattr(e, "output", ""), f"{type(e).__name__}: {str(e).splitlines()[0]}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            self.live.update(dispatcher.collect())
        host_console = _ITEM_RE.sub("", output).strip()
        host_note = (f"\n--- the test host's console outside the runs (last 3000 chars) ---\n"
                     f"{host_console[-3000:]}\n--- end ---" if host_console else "")
        for m in _ITEM_RE.finditer(output):
            key, body, rc, seconds, timed_out = m.group(1), m.group(2), int(m.group(3)), float(m.group(4)), m.group(5)
            run = self.runs.get(key)
            if run is None:
                continue
            r = RunResult(output=body, returncode=rc, duration=seconds, runner=runner,
                          command=commands.get(key, key))
            self.results[key] = r
            if save_dir := os.environ.get("ENLIGHTEN_E2E_SAVE"):  # every run's whole output, for a diagnosis
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                (Path(save_dir) / f"{self.name}-{key}.log").write_text(body)
            if timed_out == "1":  # what the test host printed meanwhile (a soft lockup?) may explain it
                self.failures[key] = f"run {key!r} timed out after {run.timeout:.0f} s (killed)" + describe(r) + host_note
        started = set(re.findall(r"^E2E-START (\S+)$", output, re.M)) | set(self.results)
        for run in runnable:
            if run.key in started and run.key not in self.results:
                self.failures[run.key] = (f"session {self.name!r}: run {run.key!r} started but the test host ended "
                                          f"before it did ({problem or 'no end marker'})\n--- session output "
                                          f"(last 6000 chars) ---\n{output[-6000:]}\n--- end ---")
        if problem:
            self.notes.append(f"test host failed: {problem}")
            # what testhost saw when it looked at the silent host (QEMU's CPU use, vCPU state)
            self.notes += [ln for ln in output.splitlines() if ln.startswith("TESTHOST-DIAG ")]
        return started, (f"{problem or 'the session script ended early'}\n--- session output (last 6000 chars) "
                         f"---\n{output[-6000:]}\n--- end ---")


def session_report() -> list[str]:
    """Lines for run.py's timing summary: each executed session and its runs."""
    lines = []
    for s in _sessions:
        if not s.executed:
            continue
        lines.append(f"{s.duration:8.1f}  session {s.name} ({s.runner or '?'}, {len(s.runs)} runs, "
                     f"{s.lanes} lane(s))")
        lines += [f"{'':10}NOTE: {note}" for note in s.notes]
        for key in s.runs:
            r = s.results.get(key)
            hook = f", hook {_live_word(s.live[key])}" if key in s.live else ""
            lines.append(f"{'':10}{r.duration:8.1f}  {key} (exit {r.returncode}{hook})" if r
                         else f"{'':10}{'-':>8}  {key} (no result{hook})")
    return lines


def _live_word(o: LiveOutcome) -> str:
    if o.error:
        return f"FAILED after {o.seconds:.1f} s: {(o.summary or o.error.strip().splitlines()[-1])[:150]}"
    return f"ok {o.seconds:.1f} s"
