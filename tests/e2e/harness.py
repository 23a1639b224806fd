"""Shared pieces of the end-to-end tests: the guest image, one Enlighten run per test
(directly or in the test host), and readable failure output."""

from __future__ import annotations

import os
import re
import sys
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

from enlighten_tools import guest_image, testhost  # noqa: E402
from enlighten_tools.testhost import Carry, RunResult, StopAfter, run_enlighten  # noqa: E402

INIT_RE = re.compile(r"ENLIGHTEN-INIT uptime=[0-9.]+")
BINARY = testhost.default_enlighten_binary()
# Keep kernel messages short (every serial byte is a VM exit) except in the first test;
# panic=-1 turns a guest panic into a reset, so a broken boot fails fast (exit 3).
QUIET_CMDLINE = "console=ttyS0 quiet panic=-1"
BOOT_TIMEOUT = float(os.environ.get("ENLIGHTEN_E2E_TIMEOUT", "150"))

_image: guest_image.GuestImage | None = None


def require_binary(test: unittest.TestCase) -> None:
    if not BINARY.is_file():
        test.fail(f"{BINARY} does not exist: build Enlighten first (scripts/setup builds "
                  "build/enlighten), or point ENLIGHTEN_BINARY at it")
    if not os.access(BINARY, os.X_OK):
        test.fail(f"{BINARY} is not executable")


def image() -> guest_image.GuestImage:
    global _image
    if _image is None:
        _image = guest_image.build()
    return _image


def describe(res: RunResult) -> str:
    tail = res.output[-4000:]
    return (f"\n--- ran: {res.command}\n--- runner={res.runner} exit={res.returncode} after "
            f"{res.duration:.1f} s; output (last 4000 chars) ---\n{tail}\n--- end ---")


class GuestTestCase(unittest.TestCase):
    """Each test is one Enlighten run (one test-host boot when not direct)."""

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
# wait_serial PATTERN SECONDS
wait_serial() {
    n=0
    while ! grep -q "$1" "$SERIAL" 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt $(($2 * 10)) ]; then echo "SCENARIO-TIMEOUT waiting for '$1'"; return 1; fi
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
        sleep 0.2
    done
}
dump_logs() {
    echo "--- guest serial console ---"; cat "$SERIAL" 2>/dev/null
    echo "--- enlighten log ---"; cat "$WORK/vmm.log" 2>/dev/null
    echo "--- end ---"
}
"""


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
