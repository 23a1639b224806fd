#!/usr/bin/env python3
"""A stand-in for build/enlighten, used only to check the end-to-end tests themselves.

It implements the `enlighten run` command line and exit codes the tests expect, on top
of QEMU's software emulation (no KVM needed):

    ENLIGHTEN_RUNNER=direct ENLIGHTEN_BINARY=tests/e2e/fake_enlighten.py \
        python3 -m unittest discover -s tests/e2e -v

Contract it mirrors (the real VMM must do the same):
  * exit 0 when the guest powers off; 3 when the guest resets and --on-reboot=exit;
    with --on-reboot=restart the guest is booted again;
  * on bad input: exit 1 and exactly one line on stderr, starting "enlighten: error:",
    before any guest runs;
  * guest serial on stdout with --serial stdio.
"""

import argparse
import os
import re
import signal
import subprocess
import sys

SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.I)
MAX_MEMORY = 1 << 40  # 1 TiB


def die(msg: str) -> None:
    print(f"enlighten: error: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip())
    if not m:
        die(f"invalid size {text!r}")
    mult = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * mult


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except OSError as e:
        die(f"cannot read {what} {path}: {e.strerror}")
    return b""


def main() -> None:
    p = argparse.ArgumentParser(prog="enlighten")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--kernel", required=True)
    r.add_argument("--initrd")
    r.add_argument("--cmdline", default="")
    r.add_argument("--memory", default="512M")
    r.add_argument("--cpus", type=int, default=1)
    r.add_argument("--serial", default="stdio")
    r.add_argument("--on-reboot", choices=["exit", "restart"], default="exit")
    a = p.parse_args()

    memory = parse_size(a.memory)
    if memory == 0:
        die("--memory must be greater than 0")
    if memory > MAX_MEMORY:
        die(f"--memory {a.memory} is larger than supported")
    head = read_file(a.kernel, "kernel")
    if len(head) < 0x206 or head[0x202:0x206] != b"HdrS":
        die(f"{a.kernel} is not a bzImage (no HdrS signature)")
    if a.initrd:
        read_file(a.initrd, "initrd")
        if os.path.getsize(a.initrd) > memory // 2:
            die(f"initrd {a.initrd} ({os.path.getsize(a.initrd)} bytes) does not fit in guest memory")

    qemu = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory >> 20), "-smp", str(a.cpus),
            "-nographic", "-vga", "none", "-nic", "none", "-monitor", "none", "-serial", "stdio",
            "-kernel", a.kernel, "-append", a.cmdline]
    if a.initrd:
        qemu += ["-initrd", a.initrd]
    if a.on_reboot == "exit":
        qemu.append("-no-reboot")
    proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

    def on_term(signum, _frame):  # die of the signal, like a VMM would, but take QEMU along
        proc.kill()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    rebooted = False
    tail = b""
    while chunk := os.read(proc.stdout.fileno(), 4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        tail = (tail + chunk)[-4096:]
        if b"reboot: Restarting system" in tail:
            rebooted = True
    proc.wait()
    sys.exit(3 if rebooted else 0)


if __name__ == "__main__":
    main()
