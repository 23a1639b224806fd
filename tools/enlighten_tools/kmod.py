"""Kernel module metadata without kmod: read `.modinfo` from .ko ELF files.

Debian's linux-image .deb does not ship modules.dep (depmod makes it at install time),
so we compute dependencies from each module's `depends=` field and write a
modules.dep for the subset we copy, in the format busybox/kmod modprobe read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .common import ToolError


def read_modinfo(ko: Path | str) -> dict[str, list[str]]:
    """key -> values of the .modinfo section of an (uncompressed) ELF64 module."""
    with open(ko, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ToolError(f"{ko}: not a little-endian ELF64 module (compressed .ko?)")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = e_shoff + i * e_shentsize
        sh_name, = struct.unpack_from("<I", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, _ = section(e_shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(e_shnum):
        name_off, off, size = section(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off:end] != b".modinfo":
            continue
        for item in data[off:off + size].split(b"\0"):
            if b"=" in item:
                k, v = item.decode(errors="replace").split("=", 1)
                info.setdefault(k, []).append(v)
        return info
    raise ToolError(f"{ko}: no .modinfo section")


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike; canonical form uses '_'."""
    name = os.path.basename(name)
    if name.endswith(".ko"):
        name = name[:-3]
    return name.replace("-", "_")


@dataclass
class ModuleTree:
    """The modules of one kernel version, e.g. <root>/lib/modules/6.1.0-56-cloud-amd64."""

    moddir: Path
    paths: dict[str, str] = field(default_factory=dict)  # canonical name -> rel path
    _deps: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.moddir = Path(self.moddir)
        for dirpath, _dirs, files in os.walk(self.moddir / "kernel"):
            for fn in files:
                if fn.endswith(".ko"):
                    rel = os.path.relpath(os.path.join(dirpath, fn), self.moddir)
                    self.paths[canonical(fn)] = rel
        if not self.paths:
            raise ToolError(f"no uncompressed .ko modules under {self.moddir}")

    @property
    def version(self) -> str:
        return self.moddir.name

    def path(self, name: str) -> Path:
        return self.moddir / self.rel(name)

    def rel(self, name: str) -> str:
        c = canonical(name)
        if c not in self.paths:
            raise ToolError(f"module {name} not found under {self.moddir}")
        return self.paths[c]

    def direct_deps(self, name: str) -> list[str]:
        c = canonical(name)
        if c not in self._deps:
            info = read_modinfo(self.path(c))
            deps = [canonical(d) for v in info.get("depends", []) for d in v.split(",") if d]
            self._deps[c] = deps
        return self._deps[c]

    def load_order(self, names: list[str]) -> list[str]:
        """Dependency closure of `names`, ordered so that dependencies come first."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(n: str) -> None:
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise ToolError(f"module dependency cycle at {n}")
            state[n] = 1
            for d in self.direct_deps(n):
                visit(d)
            state[n] = 2
            order.append(n)

        for n in names:
            visit(canonical(n))
        return order

    def modules_dep(self, names: list[str]) -> str:
        """modules.dep text for the closure of `names` (kmod format: each line lists the
        module's full dependency closure, the ones to load last first)."""
        lines = []
        for m in sorted(self.load_order(names), key=self.rel):
            closure = self.load_order([m])[:-1]  # deps first, without m itself
            deps = " ".join(self.rel(d) for d in reversed(closure))
            lines.append(f"{self.rel(m)}:{' ' + deps if deps else ''}")
        return "\n".join(lines) + "\n"

    def modules_alias(self, names: list[str]) -> str:
        """modules.alias text ("alias PATTERN module") for the closure of `names`."""
        lines = []
        for m in sorted(self.load_order(names)):
            for a in read_modinfo(self.path(m)).get("alias", []):
                lines.append(f"alias {a} {m}")
        return "\n".join(lines) + ("\n" if lines else "")
