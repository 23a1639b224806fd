"""Dynamically linked programs for the default guest, with their shared libraries taken
from Debian packages (not from the machine that builds the image).

    programs = userland.collect()      # -> Userland(files, symlinks, libraries, stubs, inputs)

Every program comes from an extracted .deb (debian.package_tree). Its libraries are found
by following DT_NEEDED (`readelf -d`) through the extracted trees of LIBRARY_PACKAGES, so
the guest's glibc is Debian 12's libc6, whatever the build machine or CI runs. Every
library is put at /lib/x86_64-linux-gnu/<soname> (a directory the Debian loader searches
without /etc/ld.so.cache), the loader at that directory and at the PT_INTERP path
(/lib64/ld-linux-x86-64.so.2, a symlink).

fio: Debian links its optional I/O engines into the binary, so `fio` needs librados2,
librbd1, libgfapi0 (GlusterFS), libnbd0, libibverbs1, librdmacm1, libpmem1 and libpmemblk1,
whose closure (Ceph, GlusterFS, OpenSSL, ICU, Boost...) is tens of MiB. The guest does not
need those engines, so those sonames are replaced by small generated *stub* libraries
(STUB_LIBRARIES): each defines the symbols (with the symbol versions) that fio imports
from it, and every one of them prints "...not in the Enlighten guest image" and exits
127 if called. fio's own engines (psync, libaio, io_uring, sync, mmap...) do not touch
them. The stubs are compiled with the build machine's C compiler (`cc`, from
build-essential; -nostdlib, no libc needed) into the cache; their source and the
compiler's version are part of the image's content hash.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import debian
from .common import ToolError, cache_dir, sha256_text

LIB_DIR = "/lib/x86_64-linux-gnu"
LIB_SEARCH = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64")


@dataclass(frozen=True)
class Program:
    package: str                  # Debian package it comes from
    path: str                     # path inside the package = path in the guest
    links: tuple[str, ...] = ()   # more names for it in the guest (symlinks)


# Storage test tools. Where busybox has an applet of the same name, the Debian program
# replaces it (same path, or earlier in PATH); see tools/README.md for why each one.
GUEST_PROGRAMS = [
    # the shell and applets of jobs (guest_image.add_guest_busyboxes says why)
    Program("busybox", "bin/busybox"),
    Program("e2fsprogs", "sbin/mke2fs", ("/sbin/mkfs.ext4", "/sbin/mkfs.ext3", "/sbin/mkfs.ext2")),
    Program("e2fsprogs", "sbin/e2fsck", ("/sbin/fsck.ext4",)),
    Program("e2fsprogs", "sbin/dumpe2fs"),
    Program("util-linux", "bin/lsblk"),
    Program("util-linux", "sbin/fstrim"),
    Program("util-linux", "sbin/blkdiscard"),
    Program("util-linux", "sbin/blockdev"),
    Program("fdisk", "sbin/sfdisk"),
    Program("coreutils", "bin/dd"),
    Program("fio", "usr/bin/fio"),
    # SCSI commands from user space (SG_IO): a WRITE that reaches a write-protected disk,
    # VPD pages, READ CAPACITY, MODE SENSE as the guest sees them
    Program("sg3-utils", "usr/bin/sg_raw"),
    Program("sg3-utils", "usr/bin/sg_inq"),
    Program("sg3-utils", "usr/bin/sg_vpd"),
    Program("sg3-utils", "usr/bin/sg_readcap"),
    Program("sg3-utils", "usr/bin/sg_modes"),
]
# Network test tools (the network-tools layer, see guest_image.py): iperf3 (Debian's is
# dynamically linked: libiperf0, OpenSSL's libcrypto.so.3 from libssl3 (4.7 MB), libsctp1)
# and ethtool (libmnl0), which busybox lacks.
NET_PROGRAMS = [
    Program("iperf3", "usr/bin/iperf3"),
    Program("ethtool", "sbin/ethtool"),
]
# The ones in every guest's base initrd (the rest are the disk-tools layer, see
# guest_image.py: every byte of the initrd costs boot time).
BASE_PROGRAMS = [p for p in GUEST_PROGRAMS if p.package == "busybox"]
# Data files the programs read: (package, path in the package = path in the guest).
GUEST_DATA = [("e2fsprogs", "etc/mke2fs.conf")]

# Packages searched for libraries, in this order. A program needing a soname that none of
# them has fails the build with a message naming the soname.
LIBRARY_PACKAGES = [
    "libc6", "libgcc-s1",
    "libext2fs2", "libcom-err2", "libblkid1", "libuuid1",
    "libmount1", "libsmartcols1", "libudev1", "libselinux1", "libpcre2-8-0",
    "libfdisk1", "libreadline8", "libtinfo6",
    "libaio1", "libnuma1", "zlib1g", "libsgutils2-1.46-2",
    "libiperf0", "libssl3", "libsctp1", "libmnl0",
]
# Loaded with dlopen by glibc (pthread_cancel/pthread_exit unwinding), not in DT_NEEDED.
EXTRA_LIBRARIES = ["libgcc_s.so.1"]

# Sonames replaced by generated stubs (see the module docstring), and who may need them.
STUB_LIBRARIES = {
    "libgfapi.so.0", "libnbd.so.0", "libibverbs.so.1", "librdmacm.so.1",
    "librados.so.2", "librbd.so.1", "libpmem.so.1", "libpmemblk.so.1",
}
STUB_MESSAGE = "fio: this I/O engine's library is not in the Enlighten guest image\n"


def packages() -> list[str]:
    """Every Debian package the programs and their libraries come from."""
    return sorted({p.package for p in GUEST_PROGRAMS + NET_PROGRAMS} | {p for p, _ in GUEST_DATA}
                  | set(LIBRARY_PACKAGES))


def program_file(package: str, path: str) -> Path:
    """A file of an extracted package (downloaded if needed)."""
    p = debian.package_tree(package) / path
    if not p.is_file():
        raise ToolError(f"{path} is not in {package} ({p})")
    return p


def _readelf(*args: str) -> str:
    exe = shutil.which("readelf")
    if exe is None:
        raise ToolError("readelf not found (install binutils; build-essential has it)")
    proc = subprocess.run([exe, "-W", *args], text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise ToolError(f"readelf {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def is_elf(path: Path | str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed(path: Path | str) -> list[str]:
    """DT_NEEDED sonames of an ELF file."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("-d", str(path)))


def interpreter(path: Path | str) -> str | None:
    m = re.search(r"Requesting program interpreter: ([^\]\s]+)\]", _readelf("-l", str(path)))
    return m.group(1) if m else None


def imports(path: Path | str) -> list[tuple[str, str | None, str]]:
    """Undefined dynamic symbols (name, version or None, type) of an ELF file."""
    out = []
    for line in _readelf("--dyn-syms", str(path)).splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) < 8 or f[6] != "UND" or not f[7]:
            continue
        name, _, ver = f[7].partition("@")
        out.append((name, ver.split(" ")[0] or None, f[3]))
    return out


def version_needs(path: Path | str) -> dict[str, str]:
    """Symbol version name -> soname that must define it (.gnu.version_r)."""
    out: dict[str, str] = {}
    current = None
    for line in _readelf("-V", str(path)).splitlines():
        m = re.search(r"File: (\S+)\s+Cnt:", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags:", line)
        if m and current:
            out[m.group(1)] = current
    return out


def exports(path: Path | str) -> set[str]:
    """Names of the defined dynamic symbols of a library."""
    names = set()
    for line in _readelf("--dyn-syms", str(path)).splitlines():
        f = line.split()
        if len(f) >= 8 and f[6] != "UND" and f[0].endswith(":"):
            names.add(f[7].split("@")[0])
    return names


def resolve_in_root(root: Path, path: Path, depth: int = 0) -> Path | None:
    """Follow symlinks in an extracted package tree as if `root` were /: an absolute
    target is taken inside `root`, never on this machine. None if it leads nowhere."""
    if depth > 16:
        return None
    if not path.is_symlink():
        return path if path.exists() else None
    target = os.readlink(path)
    nxt = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    nxt = Path(os.path.normpath(nxt))
    if root not in nxt.parents:
        return None
    return resolve_in_root(root, nxt, depth + 1)


class LibraryIndex:
    """soname -> file, over the extracted trees of LIBRARY_PACKAGES (first one wins)."""

    def __init__(self, packages: list[str]) -> None:
        self.where: dict[str, tuple[str, Path]] = {}
        self.roots: dict[str, Path] = {}
        for pkg in packages:
            root = debian.package_tree(pkg)
            self.roots[pkg] = root
            for d in LIB_SEARCH:
                base = root / d
                if not base.is_dir():
                    continue
                for p in sorted(base.iterdir()):
                    if ".so" in p.name and p.name not in self.where:
                        real = resolve_in_root(root, p)
                        if real is not None and real.is_file():
                            self.where[p.name] = (pkg, real)

    def find(self, soname: str) -> Path | None:
        hit = self.where.get(soname)
        return hit[1] if hit else None

    def package_of(self, soname: str) -> str | None:
        hit = self.where.get(soname)
        return hit[0] if hit else None


@dataclass
class Userland:
    files: list[tuple[str, Path, int]] = field(default_factory=list)   # (dst, src, perm)
    symlinks: list[tuple[str, str]] = field(default_factory=list)      # (path, target)
    libraries: dict[str, str] = field(default_factory=dict)            # soname -> package
    stubs: list[str] = field(default_factory=list)                     # stubbed sonames
    inputs: list[str] = field(default_factory=list)                    # for the content hash


def _stub_source(soname: str, symbols: dict[str, str | None]) -> tuple[str, str]:
    """(C source, version script) of a stub for `soname` defining `symbols` (name -> version)."""
    msg = STUB_MESSAGE.encode()
    body = ", ".join(str(b) for b in msg)
    lines = [
        f"/* Generated by tools/enlighten_tools/userland.py: stub for {soname}. */",
        "static const char enl_msg[] = {" + body + "};",
        "__attribute__((noreturn, used)) static void enl_stub(void) {",
        "    long r;",
        f"    __asm__ volatile (\"syscall\" : \"=a\"(r) : \"a\"(1L), \"D\"(2L), \"S\"(enl_msg), \"d\"({len(msg)}L) : \"rcx\", \"r11\", \"memory\");",
        "    for (;;) __asm__ volatile (\"syscall\" : : \"a\"(231L), \"D\"(127L) : \"rcx\", \"r11\", \"memory\");",
        "}",
    ]
    for name in sorted(symbols):
        lines.append(f"void {name}(void) __attribute__((alias(\"enl_stub\")));")
    by_version: dict[str | None, list[str]] = {}
    for name, ver in symbols.items():
        by_version.setdefault(ver, []).append(name)
    script = []
    versions = sorted(v for v in by_version if v is not None)
    if versions:
        for v in versions:
            names = sorted(by_version[v] + (by_version.get(None, []) if v == versions[0] else []))
            script.append(f"{v} {{ global: {'; '.join(names)}; local: *; }};")
    else:
        script.append(f"{{ global: {'; '.join(sorted(symbols))}; local: *; }};")
    return "\n".join(lines) + "\n", "\n".join(script) + "\n"


def _compiler_id() -> str:
    cc = shutil.which("cc")
    if cc is None:
        raise ToolError("no C compiler (cc) for fio's stub libraries: install build-essential")
    out = subprocess.run([cc, "--version"], text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT).stdout
    return out.splitlines()[0] if out else cc


def build_stub(soname: str, symbols: dict[str, str | None]) -> tuple[Path, str]:
    """Compile (or reuse) the stub library; returns (path, hash of its inputs)."""
    src, script = _stub_source(soname, symbols)
    key = sha256_text("stub-v1", soname, src, script, _compiler_id())
    out_dir = cache_dir() / "guest" / "stubs" / key[:24]
    out = out_dir / soname
    if out.is_file():
        return out, key
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".build-") as tmp:
        t = Path(tmp)
        (t / "stub.c").write_text(src)
        (t / "stub.map").write_text(script)
        cmd = ["cc", "-shared", "-fPIC", "-O2", "-nostdlib", "-fno-asynchronous-unwind-tables",
               f"-Wl,-soname,{soname}", "-Wl,--version-script=stub.map", "-Wl,--build-id=none",
               "-Wl,--hash-style=gnu", "-o", soname, "stub.c"]
        proc = subprocess.run(cmd, cwd=t, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise ToolError(f"building the stub {soname} failed:\n{proc.stdout}")
        os.replace(t / soname, out)
    return out, key


def collect(extra_programs: list[tuple[str, Path]] | None = None,
            programs_of: list[Program] | None = None,
            data: list[tuple[str, str]] | None = None) -> Userland:
    """Programs (`programs_of`, default GUEST_PROGRAMS, plus `extra_programs` as (guest path,
    file)) and data files (`data`, default GUEST_DATA) with their library closure resolved
    in LIBRARY_PACKAGES, and stubs for STUB_LIBRARIES."""
    index = LibraryIndex(LIBRARY_PACKAGES)
    u = Userland()
    programs: list[tuple[str, Path]] = []
    for prog in GUEST_PROGRAMS if programs_of is None else programs_of:
        src = debian.package_tree(prog.package) / prog.path
        if not src.is_file():
            raise ToolError(f"{prog.path} is not in {prog.package} ({src})")
        dst = "/" + prog.path
        programs.append((dst, src))
        u.symlinks += [(link, dst) for link in prog.links]
    programs += list(extra_programs or [])
    for pkg, rel in GUEST_DATA if data is None else data:
        src = debian.package_tree(pkg) / rel
        if not src.is_file():
            raise ToolError(f"{rel} is not in {pkg}")
        u.files.append(("/" + rel, src, 0o644))

    libs: dict[str, Path] = {}
    stub_imports: dict[str, dict[str, str | None]] = {}
    interps: set[str] = set()
    todo: list[tuple[str, Path]] = []
    for dst, src in programs:
        u.files.append((dst, src, 0o755))
        if is_elf(src):
            todo.append((dst, src))
            ip = interpreter(src)
            if ip:
                interps.add(ip)
    todo += [(name, p) for name in EXTRA_LIBRARIES if (p := index.find(name)) is not None]
    for name in EXTRA_LIBRARIES:
        if index.find(name) is None:
            raise ToolError(f"{name} not found in {', '.join(LIBRARY_PACKAGES)}")
        libs[name] = index.find(name)
    stubbed_by: dict[str, list[tuple[str, Path]]] = {}
    while todo:
        who, path = todo.pop()
        for so in needed(path):
            if so in STUB_LIBRARIES:
                stubbed_by.setdefault(so, []).append((who, path))
                continue
            if so in libs:
                continue
            found = index.find(so)
            if found is None:
                raise ToolError(f"{who} needs {so}, which none of LIBRARY_PACKAGES has; add its "
                                f"Debian package to userland.LIBRARY_PACKAGES (or to STUB_LIBRARIES)")
            libs[so] = found
            todo.append((so, found))

    # Stubs: every symbol an importer takes from a stubbed soname. Versioned imports name
    # their soname (.gnu.version_r); unversioned ones that no real library defines go to
    # every stub without symbol versions (an unversioned reference binds to any of them).
    real_exports: set[str] = set()
    for p in libs.values():
        real_exports |= exports(p)
    for so, users in sorted(stubbed_by.items()):
        stub_imports.setdefault(so, {})
    for users in stubbed_by.values():
        for who, path in users:
            vneeds = version_needs(path)
            for name, ver, typ in imports(path):
                stubbed = (vneeds.get(ver) in stubbed_by if ver is not None
                           else name not in real_exports and typ != "NOTYPE")
                if not stubbed:
                    continue
                if typ not in ("FUNC", "NOTYPE"):
                    raise ToolError(f"{who} imports {typ} {name} from a stubbed library")
                if ver is not None:
                    stub_imports[vneeds[ver]][name] = ver
                    continue
                unversioned = [s for s in stubbed_by if s not in set(vneeds.values())]
                if not unversioned:
                    raise ToolError(f"{who}: no library defines {name}")
                for s in unversioned:
                    stub_imports[s][name] = None
    for so in sorted(stub_imports):
        if not stub_imports[so]:
            raise ToolError(f"{so} is needed but no imported symbol could be attributed to it")
        p, key = build_stub(so, stub_imports[so])
        u.files.append((f"{LIB_DIR}/{so}", p, 0o644))
        u.stubs.append(so)
        u.inputs.append(f"stub {so}={key}")

    for so in sorted(libs):
        u.files.append((f"{LIB_DIR}/{so}", libs[so], 0o755 if so.startswith("ld-linux") else 0o644))
        u.libraries[so] = index.package_of(so) or "?"
    for ip in sorted(interps):
        name = os.path.basename(ip)
        if name not in libs:
            raise ToolError(f"program interpreter {ip} is not among the libraries")
        if ip != f"{LIB_DIR}/{name}":
            u.symlinks.append((ip, f"{LIB_DIR}/{name}"))
    u.symlinks.append(("/etc/mtab", "/proc/self/mounts"))
    u.inputs += [f"deb {pkg}={debian.fetch_deb(pkg).name}" for pkg in packages()]
    return u
