"""The hostile-guest kernel module (tests/hostile/enl_hostile.c), built for the guest's kernel.

The module is built out of tree against Debian's own headers of the guest kernel
(linux-headers-<version> with its -common part and linux-kbuild), fetched with `apt-get
download` into the cache and extracted into one tree, with the host's gcc-12: the compiler
Debian built that kernel with (the headers' .config names it). The result is cached by the
hash of the module's source, so it is built once per change.

    python3 -m enlighten_tools hostile-module     # prints the path of enl_hostile.ko
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import debian
from .common import REPO_ROOT, ToolError, cache_dir, log, sha256_text

SOURCE_DIR = REPO_ROOT / "tests" / "hostile"
MODULE_NAME = "enl_hostile"


def _kernel_abi() -> str:
    """'6.1.0-56-cloud-amd64' from KERNEL_PACKAGE (linux-image-6.1.0-56-cloud-amd64)."""
    m = re.fullmatch(r"linux-image-(.+)", debian.KERNEL_PACKAGE)
    if not m:
        raise ToolError(f"cannot read the kernel version out of {debian.KERNEL_PACKAGE!r}")
    return m.group(1)


def _headers_tree(abi: str) -> Path:
    """One tree with the arch headers, their -common part and kbuild, as /usr/src and
    /usr/lib would have them; returns its usr/src/linux-headers-<abi>."""
    flavour_pkg = f"linux-headers-{abi}"
    common_pkg = "linux-headers-" + re.sub(r"-[a-z]+-amd64$|-amd64$", "", abi) + "-common"
    series = ".".join(abi.split(".")[:2])  # 6.1
    packages = [flavour_pkg, common_pkg, f"linux-kbuild-{series}"]
    debs = [debian.fetch_deb(p) for p in packages]
    root = cache_dir() / "kbuild" / sha256_text(*(d.name for d in debs))[:16]
    headers = root / "usr" / "src" / flavour_pkg
    if (root / ".complete").exists():
        return headers
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    # Debian's flavour Makefile includes the -common one by its absolute /usr/src path.
    makefile = headers / "Makefile"
    text = makefile.read_text()
    fixed = text.replace("include /usr/src/", f"include {root}/usr/src/")
    if fixed == text:
        raise ToolError(f"{makefile} does not include /usr/src/...: {text!r}")
    makefile.write_text(fixed)
    (root / ".complete").write_text("\n".join(d.name for d in debs) + "\n")
    return headers


def build_module() -> Path:
    """Path of enl_hostile.ko for the guest kernel, built if its source changed."""
    if not shutil.which("gcc-12") or not shutil.which("make"):
        raise ToolError("building the hostile-guest module needs gcc-12 and make (scripts/setup installs them)")
    abi = _kernel_abi()
    sources = sorted(SOURCE_DIR.iterdir())
    key = sha256_text(abi, *(f"{p.name}\0{p.read_text()}" for p in sources if p.is_file()))[:16]
    out = cache_dir() / "hostile" / key / f"{MODULE_NAME}.ko"
    if out.exists():
        return out
    headers = _headers_tree(abi)
    log(f"building {MODULE_NAME}.ko against {headers.name}")
    with tempfile.TemporaryDirectory(prefix="enl-hostile-") as tmp:
        for p in sources:
            if p.is_file():
                shutil.copy(p, tmp)
        proc = subprocess.run(["make", "-s", "-C", str(headers), f"M={tmp}", "modules"],
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        built = Path(tmp) / f"{MODULE_NAME}.ko"
        # Kbuild's only chatter on success is that it has no vmlinux for BTF.
        noise = [ln for ln in proc.stdout.splitlines() if ln.strip() and "Skipping BTF generation" not in ln]
        if proc.returncode != 0 or not built.exists():
            raise ToolError(f"building {MODULE_NAME}.ko failed:\n{proc.stdout[-4000:]}")
        if noise:
            raise ToolError(f"building {MODULE_NAME}.ko printed warnings (they are errors here):\n" + "\n".join(noise))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(built, out)
    return out
