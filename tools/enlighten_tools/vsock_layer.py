"""The hv_sock test tools for the guest: Debian's socat (VSOCK-LISTEN / VSOCK-CONNECT; busybox
nc has no AF_VSOCK) with its libraries, as one more initrd layer, vsock.cpio.gz, that the
kernel unpacks over the base initrd (like the disk- and network-tools layers of
guest_image.py):

    vsock_layer() -> <cache>/guest/vsock.cpio.gz      (rebuilt when its inputs change)
    make_vsock_initrd(job) -> base initrd + vsock layer + /job (content-addressed, in runs/)

socat 1.7.4 needs libssl3 and libwrap0, whose libnsl2 -> libtirpc3 -> libgssapi-krb5-2 chain
brings Kerberos' libraries (about 2.5 MiB in all). The layer lives in a module of its own so
that the base guest image's inputs (guest_image._sources_hash) do not change with it: other
runs sharing the cache keep their image.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import guest_image, userland
from .common import ToolError, atomic_write_bytes, log, sha256_file, sha256_text
from .cpio import CpioArchive, concatenate

SOCAT = userland.Program("socat", "usr/bin/socat")
# Where socat's libraries come from, beyond userland.LIBRARY_PACKAGES.
VSOCK_LIBRARY_PACKAGES = ["libwrap0", "libnsl2", "libtirpc3", "libgssapi-krb5-2", "libkrb5-3",
                          "libk5crypto3", "libkrb5support0", "libkeyutils1"]


def _files() -> list[tuple[str, Path, int]]:
    """socat and the closure of its libraries: (guest path, file, mode)."""
    index = userland.LibraryIndex(userland.LIBRARY_PACKAGES + VSOCK_LIBRARY_PACKAGES)
    socat = userland.program_file(SOCAT.package, SOCAT.path)
    files = [("/" + SOCAT.path, socat, 0o755)]
    libs: dict[str, Path] = {}
    todo = [socat]
    while todo:
        for so in userland.needed(todo.pop()):
            if so in libs:
                continue
            found = index.find(so)
            if found is None:
                raise ToolError(f"socat needs {so}, which none of its library packages has "
                                "(vsock_layer.VSOCK_LIBRARY_PACKAGES)")
            libs[so] = found
            todo.append(found)
    files += [(f"{userland.LIB_DIR}/{so}", p, 0o644) for so, p in sorted(libs.items())]
    return files


def vsock_layer() -> Path:
    """<cache>/guest/vsock.cpio.gz: what the base initrd lacks of socat and its libraries."""
    base = guest_image.build()
    gdir = base.initrd.parent
    listing = gdir / "initrd.list"
    in_base = set(listing.read_text().split()) if listing.is_file() else set()
    files = [f for f in _files() if f[0] not in in_base]
    key = sha256_text("vsock-layer-v1", sha256_file(base.initrd),
                      *[f"{dst}={sha256_file(src)}:{perm:o}" for dst, src, perm in files])
    out, stamp = gdir / "vsock.cpio.gz", gdir / "vsock.sha256"
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return out
    arc = CpioArchive()
    for dst, src, perm in files:
        arc.add_file(dst, src, perm=perm)
    tmp = gdir / f".vsock.tmp{os.getpid()}.cpio.gz"
    arc.write(tmp, compress=True)
    os.replace(tmp, out)
    atomic_write_bytes(stamp, (key + "\n").encode())
    log(f"vsock layer: {out} ({out.stat().st_size // 1024} KiB: {', '.join(d for d, _s, _p in files)})")
    return out


def make_vsock_initrd(job: str | None = None) -> Path:
    """The base initrd, the vsock layer, and a cpio with /job: <cache>/guest/runs/<hash>.img."""
    base = guest_image.build()
    layer = vsock_layer()
    runs = base.initrd.parent / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    extra = runs / f".vsock-extra-{os.getpid()}.cpio.gz"
    try:
        guest_image.write_extra_cpio(extra, job)
        out = runs / f"{sha256_text(sha256_file(base.initrd), sha256_file(layer), sha256_file(extra))[:24]}.img"
        if not out.is_file():
            tmp = runs / f".vsock-{os.getpid()}.img"
            concatenate(tmp, base.initrd, layer, extra)
            os.replace(tmp, out)
        return out
    finally:
        if extra.exists():
            extra.unlink()


