"""Debian artefacts: `apt-get download` into the cache, then `dpkg-deb -x`.

Layout under the cache (see common.cache_dir()):
    debs/<package>_<version>_<arch>.deb      downloaded packages
    debs/<alias>.resolved                    which real package an alias resolved to
    extract/<deb file name without .deb>/    extracted trees

A package already in debs/ is never downloaded again, and apt is not consulted for it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import ToolError, cache_dir, log

# The kernel used for the default guest AND for the test host. Change it here only.
KERNEL_PACKAGE = "linux-image-6.1.0-56-cloud-amd64"
# If KERNEL_PACKAGE is not available from apt, use what this metapackage depends on.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
HYPERV_DAEMONS_PACKAGE = "hyperv-daemons"
BUSYBOX_PACKAGE = "busybox-static"


def _debs_dir() -> Path:
    d = cache_dir() / "debs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cached_deb(package: str) -> Path | None:
    hits = sorted(glob.glob(str(_debs_dir() / f"{glob.escape(package)}_*.deb")))
    return Path(hits[-1]) if hits else None


_apt_updated = False


def _apt_update() -> None:
    """Refresh apt's lists once per process (needs root, or sudo without a password)."""
    global _apt_updated
    if _apt_updated:
        return
    _apt_updated = True
    cmd = ["apt-get", "update", "-qq"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            log("not root and no sudo: cannot run apt-get update")
            return
        cmd = ["sudo", "-n"] + cmd
    log("running " + " ".join(cmd))
    subprocess.run(cmd, check=False)


def _apt_download(package: str) -> Path | None:
    """Download `package` (candidate version) into debs/; None if apt cannot find it."""
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(dir=_debs_dir(), prefix=".dl-") as tmp:
            # Download as the invoking user; as root apt would warn about its sandbox user.
            proc = subprocess.run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                cwd=tmp, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            files = glob.glob(os.path.join(tmp, "*.deb"))
            if proc.returncode == 0 and len(files) == 1:
                dest = _debs_dir() / os.path.basename(files[0])
                os.replace(files[0], dest)
                return dest
        out = proc.stdout.strip()
        if attempt == 1:
            log(f"apt-get download {package} failed ({out.splitlines()[-1] if out else proc.returncode}); "
                "refreshing package lists and retrying")
            _apt_update()
    log(f"apt-get download {package} failed: {out}")
    return None


def fetch_deb(package: str) -> Path:
    """Path of the .deb for `package`, downloading it if it is not cached yet."""
    hit = _cached_deb(package)
    if hit:
        return hit
    log(f"downloading {package} with apt-get download")
    deb = _apt_download(package)
    if deb is None:
        raise ToolError(f"could not download Debian package {package!r} with apt-get download")
    return deb


def _metapackage_target(meta: str) -> str:
    """The linux-image-* package that metapackage `meta` depends on."""
    for attempt in (1, 2):
        proc = subprocess.run(["apt-cache", "depends", meta], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("Depends:"):
                dep = line.split(":", 1)[1].strip().strip("<>")
                if dep.startswith("linux-image-"):
                    return dep
        if attempt == 1:
            _apt_update()
    raise ToolError(f"cannot resolve {meta}: apt-cache depends gave:\n{proc.stdout}")


def fetch_kernel_deb() -> tuple[str, Path]:
    """(package name, .deb path) of the kernel: KERNEL_PACKAGE, or what
    KERNEL_METAPACKAGE depends on if KERNEL_PACKAGE cannot be had. Prints the choice."""
    hit = _cached_deb(KERNEL_PACKAGE)
    if hit:
        return KERNEL_PACKAGE, hit
    marker = _debs_dir() / f"{KERNEL_METAPACKAGE}.resolved"
    if marker.exists():
        pkg = marker.read_text().strip()
        hit = _cached_deb(pkg)
        if hit:
            log(f"kernel: {KERNEL_PACKAGE} is not available; using {pkg} "
                f"(the dependency of {KERNEL_METAPACKAGE}, resolved earlier)")
            return pkg, hit
    log(f"kernel: downloading {KERNEL_PACKAGE}")
    deb = _apt_download(KERNEL_PACKAGE)
    if deb is not None:
        log(f"kernel: using {KERNEL_PACKAGE} ({deb.name})")
        return KERNEL_PACKAGE, deb
    pkg = _metapackage_target(KERNEL_METAPACKAGE)
    log(f"kernel: {KERNEL_PACKAGE} is not available from apt; "
        f"falling back to {pkg} (what {KERNEL_METAPACKAGE} depends on)")
    deb = fetch_deb(pkg)
    marker.write_text(pkg + "\n")
    return pkg, deb


def extract_deb(deb: Path) -> Path:
    """`dpkg-deb -x` the package into extract/<name>/ once; returns that directory."""
    dest = cache_dir() / "extract" / deb.name[:-len(".deb")]
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.is_dir():  # another process extracted it at the same time
            return dest
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@dataclass(frozen=True)
class Kernel:
    package: str
    deb: Path
    root: Path          # extracted tree
    version: str        # e.g. 6.1.0-56-cloud-amd64
    vmlinuz: Path
    moddir: Path        # root/lib/modules/<version>


def kernel() -> Kernel:
    package, deb = fetch_kernel_deb()
    root = extract_deb(deb)
    vmlinuzes = sorted(glob.glob(str(root / "boot" / "vmlinuz-*")))
    if len(vmlinuzes) != 1:
        raise ToolError(f"expected one boot/vmlinuz-* in {root}, found {vmlinuzes}")
    vmlinuz = Path(vmlinuzes[0])
    version = vmlinuz.name[len("vmlinuz-"):]
    # Debian >= 12 ships modules under /lib (or /usr/lib on merged-usr packages).
    for cand in (root / "lib" / "modules" / version, root / "usr" / "lib" / "modules" / version):
        if cand.is_dir():
            return Kernel(package, deb, root, version, vmlinuz, cand)
    raise ToolError(f"no modules directory for {version} in {root}")


def package_tree(package: str) -> Path:
    """Extracted tree of `package` (downloaded if needed)."""
    return extract_deb(fetch_deb(package))


def busybox() -> Path:
    """The static busybox binary from the busybox-static .deb (not the host's)."""
    root = package_tree(BUSYBOX_PACKAGE)
    for cand in (root / "bin" / "busybox", root / "usr" / "bin" / "busybox"):
        if cand.is_file():
            return cand
    raise ToolError(f"no busybox binary in {root}")


def hyperv_daemons() -> Path:
    """Extracted tree of hyperv-daemons."""
    return package_tree(HYPERV_DAEMONS_PACKAGE)


def fetch_all() -> dict[str, Path]:
    """Download and extract everything; returns name -> extracted tree."""
    k = kernel()
    return {k.package: k.root,
            BUSYBOX_PACKAGE: package_tree(BUSYBOX_PACKAGE),
            HYPERV_DAEMONS_PACKAGE: hyperv_daemons()}


# ----------------------------------------------------------------------------- backports
# The test host's own QEMU (the outer, TCG one) comes from bookworm-backports: Debian 12's
# QEMU 7.2 froze nested test hosts (all vCPUs halted with the local APIC timer's interrupt
# pending in IRR, an NMI from the monitor not taken) several times per full e2e run, under
# network and disk load. 10.0 has the same freeze, less often so far (once in two full runs
# and six sessions on 2026-12-06); testhost kicks a silent host (_kick_silent_host).
# Downloaded with apt-get through lists of its own in the cache (the machine's apt sources
# are not touched), extracted, run from there.
BACKPORTS_SOURCE = "deb http://deb.debian.org/debian bookworm-backports main"
TESTHOST_QEMU_PACKAGES = ("qemu-system-x86", "qemu-system-data", "seabios")


def _backports_apt_options() -> list[str]:
    d = cache_dir() / "apt-backports"
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    sources = d / "sources.list"
    if not sources.is_file() or sources.read_text().strip() != BACKPORTS_SOURCE:
        sources.write_text(BACKPORTS_SOURCE + "\n")
    return ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={d / 'lists'}", "-o", "APT::Sandbox::User=root"]


def backports_deb(package: str) -> Path:
    """The bookworm-backports .deb of `package` (debs/bpo/), downloaded once."""
    d = _debs_dir() / "bpo"
    d.mkdir(parents=True, exist_ok=True)
    hits = sorted(glob.glob(str(d / f"{glob.escape(package)}_*.deb")))
    if hits:
        return Path(hits[-1])
    opts = _backports_apt_options()
    if not any((cache_dir() / "apt-backports" / "lists").glob("*_Packages*")):
        log("fetching the bookworm-backports package list (for the test host's QEMU)")
        proc = subprocess.run(["apt-get", "update", "-qq", *opts], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise ToolError(f"apt-get update (bookworm-backports) failed: {proc.stdout.strip()[-500:]}")
    log(f"downloading {package} from bookworm-backports")
    with tempfile.TemporaryDirectory(dir=d, prefix=".dl-") as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", *opts, f"{package}/bookworm-backports"], cwd=tmp,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        files = glob.glob(os.path.join(tmp, "*.deb"))
        if proc.returncode != 0 or len(files) != 1:
            raise ToolError(f"apt-get download {package}/bookworm-backports failed: {proc.stdout.strip()[-500:]}")
        dest = d / os.path.basename(files[0])
        os.replace(files[0], dest)
        return dest


def testhost_qemu() -> list[str]:
    """argv prefix of the test host's QEMU: bookworm-backports' qemu-system-x86_64 with its
    firmware directories (-L)."""
    trees = {p: extract_deb(backports_deb(p)) for p in TESTHOST_QEMU_PACKAGES}
    binary = trees["qemu-system-x86"] / "usr" / "bin" / "qemu-system-x86_64"
    if not binary.is_file():
        raise ToolError(f"no qemu-system-x86_64 in {trees['qemu-system-x86']}")
    return [str(binary), "-L", str(trees["seabios"] / "usr" / "share" / "seabios"),
            "-L", str(trees["qemu-system-data"] / "usr" / "share" / "qemu")]
