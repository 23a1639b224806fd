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

