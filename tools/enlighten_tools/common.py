"""Shared helpers: locations, logging, hashing, atomic writes, ldd."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# <repo>/tools/enlighten_tools/common.py -> <repo>
REPO_ROOT = Path(__file__).resolve().parents[2]


class ToolError(RuntimeError):
    """A failure with a message meant for a person (no traceback needed)."""


def cache_dir() -> Path:
    """The artefact cache: $ENLIGHTEN_CACHE, or <repo>/.cache."""
    env = os.environ.get("ENLIGHTEN_CACHE")
    path = Path(env) if env else REPO_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def log(msg: str) -> None:
    """Progress messages go to stderr, so stdout stays machine-readable."""
    print(f"[enlighten-tools] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path | str, _memo: dict = {}) -> str:  # noqa: B006 - memo on purpose
    """sha256 of a file's content, memoised per (path, size, mtime) in this process."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _memo[key] = h.hexdigest()
    return _memo[key]


def sha256_text(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, str):
            p = p.encode()
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """subprocess.run with check=True and text output captured by default."""
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cmd, **kw)


_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$")
_LDD_PLAIN = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def ldd_libraries(binary: Path | str) -> list[str]:
    """Absolute paths of the shared libraries (and dynamic loader) `ldd` lists.

    Returns [] for a static binary.  Raises ToolError if a library is missing.
    The paths are the ones the loader will look up (e.g. /lib/x86_64-linux-gnu/libc.so.6),
    which may be symlinks on this machine; copy their resolved content under that name.
    """
    proc = subprocess.run(["ldd", str(binary)], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    out = proc.stdout
    if proc.returncode != 0:
        if "not a dynamic executable" in out or "statically linked" in out:
            return []
        raise ToolError(f"ldd {binary} failed: {out.strip()}")
    libs: list[str] = []
    for line in out.splitlines():
        if "statically linked" in line:
            return []
        if "not found" in line:
            raise ToolError(f"ldd {binary}: missing library: {line.strip()}")
        m = _LDD_ARROW.match(line)
        if m:
            libs.append(m.group(2))
            continue
        m = _LDD_PLAIN.match(line)
        if m:
            libs.append(m.group(1))  # the dynamic loader
    return sorted(set(libs))
