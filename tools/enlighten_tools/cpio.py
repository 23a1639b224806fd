"""A small, reproducible writer for "newc" cpio archives (the initramfs format).

Entries are collected in memory-light form (files are streamed from disk when the
archive is written), sorted by path, and written with fixed mtime/uid/gid and
inode numbers assigned in order, so the same inputs give byte-identical output.
Needs no root: device nodes (e.g. /dev/console) are written as plain headers.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MTIME = 0  # fixed modification time of every entry


@dataclass
class _Entry:
    mode: int               # full st_mode (type bits | permissions)
    data: bytes | None = None
    src: str | None = None  # file to stream the content from
    rdev: tuple[int, int] = (0, 0)


class CpioArchive:
    """Collects entries; `write()` emits a newc archive (optionally gzip'd)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    # -- adding entries ---------------------------------------------------------------
    @staticmethod
    def _norm(path: str) -> str:
        p = os.path.normpath("/" + path.lstrip("/")).lstrip("/")
        if not p or p == "." or p.startswith(".."):
            raise ValueError(f"bad archive path: {path!r}")
        return p

    def _add_parents(self, p: str) -> None:
        parent = os.path.dirname(p)
        while parent and parent not in self._entries:
            self._entries[parent] = _Entry(stat.S_IFDIR | 0o755)
            parent = os.path.dirname(parent)

    def add_dir(self, path: str, perm: int = 0o755) -> None:
        p = self._norm(path)
        self._add_parents(p)
        self._entries[p] = _Entry(stat.S_IFDIR | perm)

    def add_bytes(self, path: str, data: bytes | str, perm: int = 0o644) -> None:
        p = self._norm(path)
        if isinstance(data, str):
            data = data.encode()
        self._add_parents(p)
        self._entries[p] = _Entry(stat.S_IFREG | perm, data=data)

    def add_file(self, path: str, src: str | Path, perm: int | None = None) -> None:
        """Add the (symlink-resolved) content of file `src` as a regular file."""
        src = os.path.realpath(src)
        st = os.stat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"not a regular file: {src}")
        p = self._norm(path)
        self._add_parents(p)
        if perm is None:
            perm = 0o755 if st.st_mode & 0o111 else 0o644
        self._entries[p] = _Entry(stat.S_IFREG | perm, src=src)

    def add_symlink(self, path: str, target: str) -> None:
        p = self._norm(path)
        self._add_parents(p)
        self._entries[p] = _Entry(stat.S_IFLNK | 0o777, data=target.encode())

    def add_chardev(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        p = self._norm(path)
        self._add_parents(p)
        self._entries[p] = _Entry(stat.S_IFCHR | perm, rdev=(major, minor))

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self._entries

    def paths(self) -> list[str]:
        return sorted(self._entries)

    # -- writing ----------------------------------------------------------------------
    @staticmethod
    def _header(out: BinaryIO, name: str, ino: int, mode: int, size: int,
                rdev: tuple[int, int]) -> int:
        namez = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1 if not stat.S_ISDIR(mode) else 2, MTIME, size,
                  0, 0, rdev[0], rdev[1], len(namez), 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(hdr)
        out.write(namez)
        pad = (-(len(hdr) + len(namez))) % 4
        out.write(b"\0" * pad)
        return len(hdr) + len(namez) + pad

    def write_to(self, out: BinaryIO) -> int:
        """Write the uncompressed archive; returns the number of bytes written."""
        pos = 0
        ino = 1
        for name in sorted(self._entries):
            e = self._entries[name]
            if e.src is not None:
                size = os.stat(e.src).st_size
            elif e.data is not None:
                size = len(e.data)
            else:
                size = 0
            pos += self._header(out, name, ino, e.mode, size, e.rdev)
            ino += 1
            if e.src is not None:
                written = 0
                with open(e.src, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        out.write(chunk)
                        written += len(chunk)
                if written != size:
                    raise RuntimeError(f"{e.src} changed size while archiving")
            elif e.data is not None:
                out.write(e.data)
            out.write(b"\0" * ((-size) % 4))
            pos += size + (-size) % 4
        pos += self._header(out, "TRAILER!!!", 0, 0, 0, (0, 0))
        # pad to a multiple of 512 bytes like GNU cpio (all parts above are 4-aligned)
        tail = (-pos) % 512
        out.write(b"\0" * tail)
        return pos + tail

    def write(self, path: Path | str, compress: bool = True, level: int = 6) -> None:
        """Write the archive to `path` atomically; gzip with mtime 0 if `compress`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as raw:
                if compress:
                    with gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                       compresslevel=level, mtime=0) as gz:
                        buf = io.BufferedWriter(gz, buffer_size=1 << 20)
                        self.write_to(buf)
                        buf.flush()
                    # the kernel wants the next concatenated segment 4-byte aligned
                    raw.write(b"\0" * ((-raw.tell()) % 4))
                else:
                    self.write_to(raw)
            os.replace(tmp, path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise


def concatenate(out: Path | str, *parts: Path | str) -> None:
    """Concatenate initramfs segments (each already padded to 4 bytes) into `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as w:
            for part in parts:
                with open(part, "rb") as r:
                    while chunk := r.read(1 << 20):
                        w.write(chunk)
                w.write(b"\0" * ((-w.tell()) % 4))
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
