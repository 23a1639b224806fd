"""Kernel modules through Debian's kmod (the `kmod` package; scripts/setup installs it).

Debian's linux-image .deb ships its modules without modules.dep: depmod makes that at install
time. So `depmod -b` runs once on the extracted package (compressed modules too: Debian's
kmod reads xz and zstd), `modprobe --show-depends` gives a module's closure in load order,
and the modules.dep / modules.alias an initramfs carries for the subset it copies are
depmod's own, made on a staging tree of just that subset (busybox's modprobe reads them).
No ELF is parsed here.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import ToolError


def _tool(name: str) -> str:
    """depmod or modprobe: on PATH, or in /usr/sbin and /sbin (not on a user's PATH)."""
    for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/sbin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise ToolError(f"{name} not found: install Debian's kmod package (scripts/setup does)")


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike; the canonical form uses '_', without .ko[.xz|.zst]."""
    name = os.path.basename(name)
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


# The index files depmod writes; an initramfs gets the text ones busybox's modprobe reads and
# the binary ones kmod's reads.
INDEX_FILES = ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
               "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
               "modules.devname")


class ModuleTree:
    """The modules of one kernel version in an extracted package: <root>/lib/modules/<version>."""

    def __init__(self, moddir: Path | str) -> None:
        self.moddir = Path(moddir)
        if self.moddir.parent.name != "modules" or self.moddir.parent.parent.name != "lib":
            raise ToolError(f"{self.moddir}: not a <root>/lib/modules/<version> directory")
        self.root = self.moddir.parent.parent.parent
        self._order: dict[str, list[str]] = {}  # canonical name -> closure, dependencies first
        self._rel: dict[str, str] = {}          # canonical name -> path under moddir
        self._depmod()

    @property
    def version(self) -> str:
        return self.moddir.name

    def _depmod(self) -> None:
        """depmod on the extracted package, once (the package's tree is a shared cache: a lock
        keeps two builds from writing its index at the same time)."""
        with open(self.moddir / ".enlighten-depmod.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.moddir / "modules.dep.bin").is_file():
                _run([_tool("depmod"), "-b", str(self.root), self.version])

    def path(self, name: str) -> Path:
        return self.moddir / self.rel(name)

    def rel(self, name: str) -> str:
        c = canonical(name)
        if c not in self._rel:
            self.load_order([c])
        return self._rel[c]

    def _closure(self, name: str) -> list[str]:
        c = canonical(name)
        if c in self._order:
            return self._order[c]
        # -C /dev/null: the modprobe.d of the machine that builds the image has no say here.
        out = _run([_tool("modprobe"), "-d", str(self.root), "-S", self.version, "-C", "/dev/null",
                    "--ignore-install", "--show-depends", c])
        order: list[str] = []
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                m = canonical(path.name)
                self._rel[m] = os.path.relpath(path, self.moddir)
                order.append(m)
            elif len(words) >= 2 and words[0] == "builtin":
                continue  # in the kernel image: nothing to load
            elif line.strip():
                raise ToolError(f"modprobe --show-depends {c}: unexpected line {line!r}")
        if c not in order and c not in self._rel:
            raise ToolError(f"module {name} is not a loadable module of {self.version}")
        self._order[c] = order
        return order

    def load_order(self, names: list[str]) -> list[str]:
        """The closure of `names` (canonical names), ordered so that dependencies come first."""
        order: list[str] = []
        for n in names:
            for m in self._closure(n):
                if m not in order:
                    order.append(m)
        return order

    def index_files(self, names: list[str]) -> dict[str, bytes]:
        """depmod's index files (INDEX_FILES that it wrote) for a tree holding only the closure
        of `names`, by file name: what an initramfs that carries that subset needs."""
        with tempfile.TemporaryDirectory(prefix="enl-depmod-") as td:
            stage = Path(td) / "lib" / "modules" / self.version
            for m in self.load_order(names):
                dst = stage / self.rel(m)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.path(m), dst)
            for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
                if (self.moddir / extra).is_file():
                    shutil.copyfile(self.moddir / extra, stage / extra)
            _run([_tool("depmod"), "-b", td, self.version])
            return {f: (stage / f).read_bytes() for f in INDEX_FILES if (stage / f).is_file()}
