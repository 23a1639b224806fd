"""Carry this machine's QEMU into the test host (for side-by-side runs with Enlighten).

    q = qemu.carry()                       # QemuCarry(files, binary, firmware_dir)
    testhost.run_in_testhost(f"{q.binary} -L {q.firmware_dir} -M pc -enable-kvm ...",
                             files={**q.files, ...})

`files` holds the QEMU binary (run_in_testhost adds every library `ldd` lists for it,
and the dynamic loader) and its firmware: every regular file of QEMU's data directories
(`qemu-system-x86_64 -L help`: /usr/share/qemu, /usr/share/seabios, /usr/lib/ipxe/qemu)
whose name ends in .bin, .rom or .aml, flattened into one directory for `-L`. A name in
more than one directory is taken from the first, which is also the one QEMU would use
(e.g. bios-microvm.bin is qboot from /usr/share/qemu, not SeaBIOS's). Enough for
`-M pc` / `-M q35` / `-M microvm` with `-kernel` and `-nodefaults`; no display, audio or
network modules (pass -nic none or -nodefaults).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import ToolError

HOST_QEMU_DIR = "/enlighten/qemu"
FIRMWARE_SUFFIXES = (".bin", ".rom", ".aml")


@dataclass(frozen=True)
class QemuCarry:
    files: dict[str, str]   # {path in the test host: path here}, for run_in_testhost(files=)
    binary: str             # the QEMU binary's path in the test host
    firmware_dir: str       # pass as `-L` (QEMU's own data directories do not exist there)


def data_dirs(binary: str) -> list[Path]:
    """QEMU's firmware search path, as `-L help` prints it."""
    out = subprocess.run([binary, "-L", "help"], text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, check=False).stdout
    dirs = [Path(os.path.normpath(line.strip())) for line in out.splitlines()
            if line.strip().startswith("/")]
    return dirs or [Path("/usr/share/qemu"), Path("/usr/share/seabios")]


def carry(binary: str = "qemu-system-x86_64", host_dir: str = HOST_QEMU_DIR) -> QemuCarry:
    path = shutil.which(binary)
    if path is None:
        raise ToolError(f"{binary} not found (install qemu-system-x86 and seabios; scripts/setup does)")
    files: dict[str, str] = {}
    dst_bin = f"{host_dir}/bin/{Path(path).name}"
    files[dst_bin] = path
    fw = f"{host_dir}/firmware"
    for d in data_dirs(path):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if not p.name.endswith(FIRMWARE_SUFFIXES) or not p.is_file():  # is_file follows links
                continue
            files.setdefault(f"{fw}/{p.name}", str(p))
    return QemuCarry(files=files, binary=dst_bin, firmware_dir=fw)


def version(binary: str = "qemu-system-x86_64") -> str:
    """First line of `qemu --version`, e.g. "QEMU emulator version 7.2.22 (Debian ...)"."""
    path = shutil.which(binary)
    if path is None:
        return "not installed"
    out = subprocess.run([path, "--version"], text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"
