"""A bootable Debian 12 root disk: systemd, hyperv-daemons, the guest kernel's modules, as
ext4 in a partitioned dynamic VHDX (root=/dev/sda1), with Debian's own initramfs for it.

    build() -> DebianDisk(kernel, initrd, vhdx, ...)   (cached under <cache>/debian-disk/)

How it is made (every step is a Debian tool; nothing is taken from the build machine's own
root filesystem except the apt sources):

1. mmdebstrap --mode=unshare --variant=essential bookworm rootfs.tar, with PACKAGES and
   the guest kernel's .deb itself (debian.kernel(), the one the default guest boots), from
   the apt sources configured on this machine (/etc/apt/sources.list{,.d}: the entries for
   bookworm*; no mirror is hard-coded). Installing the kernel package runs depmod and
   initramfs-tools inside the rootfs, so /lib/modules/<version> is the whole module tree
   of that .deb with Debian's modules.dep/alias, and /boot/initrd.img-<version> is made by
   mkinitramfs with MODULES=list and the hook below (force_load hv_vmbus, hv_storvsc,
   sd_mod: modprobe resolves their dependencies; ext4 is built into this kernel).
   --mode=unshare works for a normal user too (it needs unprivileged user namespaces,
   newuidmap from `uidmap`, and a range in /etc/subuid and /etc/subgid); as root it just
   unshares the mount and pid namespaces. SOURCE_DATE_EPOCH makes the tarball
   reproducible (mtimes clamped, no logs, empty machine-id).
2. `mmdebstrap --unshare-helper` (the same user namespace, so owners read as root): tar -x,
   then mke2fs -t ext4 -d (no mount), with a fixed UUID and hash seed and
   E2FSPROGS_FAKE_TIME; mke2fs 1.47.0 copies each file's ctime (the time of the tar -x),
   so a debugfs pass sets every inode's ctime to SOURCE_DATE_EPOCH. e2fsck -fn checks it.
3. A raw disk: an MBR partition table by sfdisk (fixed label-id), partition 1 at 1 MiB =
   the ext4 image (copied sparsely). Then `enlighten image convert disk.raw debian.vhdx
   --format vhdx --block-size 1M`: a dynamic VHDX holds only the MiBs that are not zero.
   The convert takes `--guid-seed` = the cache key below, so the VHDX's GUIDs (file, data
   and log write GUIDs, the disk's Page83 id) are the same for the same inputs.
   Reproducible: two builds of the same inputs give the same rootfs tarball, ext4 image,
   raw disk, VHDX and initrd, byte for byte (`debian.sha256` lists the outputs'). What it
   took: SOURCE_DATE_EPOCH for mmdebstrap; a fixed filesystem UUID, hash seed, label-id and
   E2FSPROGS_FAKE_TIME for mke2fs; the debugfs pass setting every inode's ctime *and atime*
   (mke2fs -d copies the atime the files got when they were read) under
   E2FSPROGS_FAKE_TIME too (else its close stamps the superblock's last write time with the
   clock); the seeded VHDX GUIDs.

The cache key is a hash of PACKAGES, this file (scripts, hooks, sizes), the kernel .deb,
the apt sources used and SOURCE_DATE_EPOCH; the image is rebuilt only when it changes (or
with force=True). Mirrors move on: a rebuild with the same key may get newer package
versions; packages.txt lists what the image holds. Downloaded .debs are kept in
<cache>/debian-disk/apt-archives/ (mmdebstrap sync-in/sync-out), so a rebuild downloads
only what changed.

In the guest: hostname HOSTNAME, root logged in automatically on the serial console
(ttyS0; root has no password), /etc/fstab mounts /dev/sda1 on /, systemd's multi-user
target with hv-kvp-daemon (started by udev when its device appears, see
_HYPERV_UNITS_NOTE) and enlighten-boot-report.service, which prints READY_MARKER on the
console once the boot has finished (`systemctl is-system-running --wait`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import debian
from .common import ToolError, atomic_write_bytes, cache_dir, log, sha256_file, sha256_text

SUITE = "bookworm"
HOSTNAME = "enlighten-debian"
READY_MARKER = "ENLIGHTEN-DEBIAN-READY"
# Packages on top of the Essential:yes set (and the kernel .deb, which pulls in kmod,
# linux-base and initramfs-tools). No apt, no network configuration: the guest has no NIC.
PACKAGES = [
    "systemd", "systemd-sysv", "udev",   # init, device manager (loads modules, starts hv-*)
    "hyperv-daemons",                    # hv_kvp_daemon, hv_vss_daemon, hv_fcopy_daemon
    "e2fsprogs",                         # fsck.ext4 for the root fs (initramfs and systemd)
    "iproute2",                          # `ip`, what a user of the KVP daemon's addresses wants
    "procps",                            # ps, free, sysctl
]
# The modules the initramfs loads (force_load) before it mounts root=/dev/sda1; modprobe
# (through initramfs-tools' manual_add_modules) adds what they depend on.
INITRAMFS_MODULES = ["hv_vmbus", "hv_storvsc", "sd_mod"]
DISK_SIZE_MIB = 4096            # virtual size of the disk
PART_START_MIB = 1
VHDX_BLOCK_SIZE = "1M"          # dynamic VHDX: allocated per block; ext4 metadata is sparse
FS_UUID = "e71ae7e0-0000-4000-8000-000000000001"
FS_HASH_SEED = "e71ae7e0-0000-4000-8000-000000000002"
MBR_LABEL_ID = "0x454e4c47"     # "ENLG"
# dpkg leaves these out of the image (documentation, manuals, translations).
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
]

_HYPERV_UNITS_NOTE = """Debian's hyperv-daemons ships hv-kvp-daemon, hv-vss-daemon and
hv-fcopy-daemon.service (each BindsTo= its /dev/vmbus/hv_* device unit, [Install]
WantedBy=multi-user.target) but does not enable them (dh_installsystemd --no-enable: its
postinst only re-enables what was enabled before). What starts them is its udev rule
60-hyperv-daemons.rules: it tags /dev/vmbus/hv_kvp (hv_vss, hv_fcopy) for systemd with
SYSTEMD_WANTS=hv-kvp-daemon.service, so each daemon starts when hv_utils creates its
device, and only then. Enlighten offers KVP (so hv-kvp-daemon runs) but no VSS or file
copy device (so those two stay inactive, and nothing fails). The image keeps Debian's
defaults; `systemctl enable` would add a start at multi-user.target that races the device
(BindsTo= without After=)."""

INITRAMFS_CONF = """# Enlighten Debian disk (tools/enlighten_tools/debian_disk.py)
MODULES=list
COMPRESS=gzip
RESUME=none
"""

INITRAMFS_HOOK = """#!/bin/sh
# Enlighten Debian disk: load the Hyper-V disk drivers before mounting root=/dev/sda1.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
for m in @MODULES@; do force_load "$m"; done
"""

BOOT_REPORT_UNIT = f"""[Unit]
Description=Report the end of the boot on the console (Enlighten Debian disk)
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/enlighten-boot-report
# /dev/console (ttyS0 with console=ttyS0), not /dev/ttyS0: serial-getty@ttyS0 starts with
# TTYVHangup=yes, and a hangup of ttyS0 cuts every descriptor opened on /dev/ttyS0, so a
# report that raced the getty lost its output (and failed with EIO); a hangup leaves
# descriptors opened through /dev/console alone (drivers/tty/tty_io.c, __tty_hangup).
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
"""

BOOT_REPORT_SCRIPT = f"""#!/bin/sh
# Waits until systemd has finished booting, then prints one line on the console:
#   {READY_MARKER} uptime=<s> state=<is-system-running> kvp=<is-active hv-kvp-daemon>
# then failed units, `systemd-analyze time` and the slowest units (`blame`).
# If systemd has not finished after 200 s, it prints the jobs it is still waiting for
# (ENLIGHTEN-PENDING-JOB lines) and the marker with state=<state>-timeout.
state=$(timeout 200 systemctl is-system-running --wait) || {{
  state="$(systemctl is-system-running)-timeout"
  systemctl list-jobs --no-legend --plain 2>&1 | sed 's/^/ENLIGHTEN-PENDING-JOB /'
  systemctl list-units --state=activating,deactivating --no-legend --plain 2>&1 \
    | sed 's/^/ENLIGHTEN-ACTIVATING-UNIT /'
}}
read -r up _ < /proc/uptime
echo "{READY_MARKER} uptime=$up state=$state kvp=$(systemctl is-active hv-kvp-daemon.service)"
systemctl --failed --no-legend --plain | sed 's/^/ENLIGHTEN-FAILED-UNIT /'
# where the time went: "Startup finished in ... (kernel) + ... (initrd) + ... (userspace)"
systemd-analyze time 2>&1 | sed 's/^/ENLIGHTEN-BOOT-TIME /'
systemd-analyze blame --no-pager 2>&1 | head -n 12 | sed 's/^/ENLIGHTEN-BOOT-BLAME /'
"""

AUTOLOGIN_DROPIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM
"""

FSTAB = f"""# <file system> <mount point> <type> <options> <dump> <pass>
UUID={FS_UUID} / ext4 errors=remount-ro 0 1
"""

SETUP_HOOK = r"""#!/bin/sh
# mmdebstrap setup hook: the initramfs configuration (before the kernel is installed)
set -e
root=$1
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
cp "$ENL_FILES/initramfs.conf" "$root/etc/initramfs-tools/conf.d/enlighten"
cp "$ENL_FILES/initramfs-hook" "$root/etc/initramfs-tools/hooks/enlighten"
chmod 755 "$root/etc/initramfs-tools/hooks/enlighten"
# the kernel .deb, at the same path inside the chroot, where apt (chrooted) finds it
mkdir -p "$root${ENL_KDEB%/*}"
cp "$ENL_KDEB" "$root$ENL_KDEB"
# initramfs-tools' fsck hook reads the root file system's type from fstab
cp "$ENL_FILES/fstab" "$root/etc/fstab"
"""

CUSTOMIZE_HOOK = r"""#!/bin/sh
# mmdebstrap customize hook: the guest's configuration
set -e
root=$1
echo "@HOSTNAME@" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t@HOSTNAME@\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cp "$ENL_FILES/fstab" "$root/etc/fstab"
rm -f "$root/etc/resolv.conf"
# root logs in on the serial console by itself, and has no password
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cp "$ENL_FILES/autologin.conf" "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
chroot "$root" passwd -d root >/dev/null
# the boot report on the console
mkdir -p "$root/usr/local/sbin"
cp "$ENL_FILES/boot-report" "$root/usr/local/sbin/enlighten-boot-report"
chmod 755 "$root/usr/local/sbin/enlighten-boot-report"
cp "$ENL_FILES/boot-report.service" "$root/etc/systemd/system/enlighten-boot-report.service"
chroot "$root" systemctl enable enlighten-boot-report.service
# hv-kvp-daemon starts from udev when /dev/vmbus/hv_kvp appears (see _HYPERV_UNITS_NOTE)
grep -q 'hv-kvp-daemon.service' "$root/lib/udev/rules.d/60-hyperv-daemons.rules"
rm "$root$ENL_KDEB"
rmdir -p --ignore-fail-on-non-empty "$root${ENL_KDEB%/*}"
chroot "$root" dpkg-query -W -f '${Package}\t${Version}\n' > "$ENL_OUT/packages.txt"
cp "$root/boot/initrd.img-@KVER@" "$ENL_OUT/initrd.img"
"""

MKFS_SCRIPT = r"""set -e
mkdir "$ENL_WORK/root"
tar -C "$ENL_WORK/root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$ENL_WORK/rootfs.tar"
mke2fs -q -F -t ext4 -b 4096 -L debian-root -U "$FS_UUID" \
    -E "hash_seed=$FS_HASH_SEED,root_owner=0:0" -d "$ENL_WORK/root" "$ENL_WORK/part.img" "${FS_SIZE_KIB}k"
rm -rf "$ENL_WORK/root"
"""


@dataclass(frozen=True)
class DebianDisk:
    kernel: Path        # the guest kernel (Debian's vmlinuz, as in the default guest)
    initrd: Path        # Debian's initramfs-tools image made inside the rootfs
    vhdx: Path          # the root disk: dynamic VHDX, MBR, ext4 on partition 1
    kernel_version: str
    directory: Path

    @property
    def cmdline(self) -> str:
        return "root=/dev/sda1 console=ttyS0"


def _dir() -> Path:
    d = cache_dir() / "debian-disk"
    d.mkdir(parents=True, exist_ok=True)
    return d


def apt_sources(suite: str = SUITE) -> str:
    """The apt sources of this machine for `suite` (and suite-updates, -security...), as
    one-line entries: /etc/apt/sources.list and sources.list.d/*.list, *.sources."""
    lines: list[str] = []
    base = Path("/etc/apt")
    files = ([base / "sources.list"] if (base / "sources.list").is_file() else []) + \
        sorted((base / "sources.list.d").glob("*.list")) + sorted((base / "sources.list.d").glob("*.sources"))

    def want(s: str) -> bool:
        return re.split(r"[-/]", s)[0] == suite

    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                key = None
                for line in stanza.splitlines():
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                        continue
                    key, _, val = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = val.strip()
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                opts = f"[signed-by={fields['signed-by']}] " if fields.get("signed-by", "").startswith("/") else ""
                for uri in fields.get("uris", "").split():
                    for s in fields.get("suites", "").split():
                        if want(s):
                            lines.append(f"deb {opts}{uri} {s} {fields.get('components', 'main')}")
        else:
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line)
                if m and want(m.group(3)):
                    lines.append(line)
    if not lines:
        raise ToolError(f"no apt source for {suite} in /etc/apt/sources.list or /etc/apt/sources.list.d/ "
                        f"(the Debian disk is built from this machine's apt sources)")
    return "\n".join(lines) + "\n"


def _source_date_epoch(kern: debian.Kernel) -> int:
    """$SOURCE_DATE_EPOCH, or the kernel package's date (dpkg-deb -x keeps its mtimes)."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(env) if env.isdigit() else int(kern.vmlinuz.stat().st_mtime)


def _key(kern: debian.Kernel, sources: str, sde: int) -> str:
    return sha256_text("debian-disk-v1", SUITE, " ".join(PACKAGES), " ".join(INITRAMFS_MODULES),
                       Path(__file__).read_bytes(), kern.version, sha256_file(kern.deb), sources, str(sde))


def _check_tools(enlighten: Path) -> None:
    missing = [t for t in ("mmdebstrap", "mke2fs", "e2fsck", "debugfs", "sfdisk", "tar") if not shutil.which(t)]
    if missing:
        raise ToolError(f"missing {', '.join(missing)}: install mmdebstrap e2fsprogs fdisk (scripts/setup does)")
    if not enlighten.is_file():
        raise ToolError(f"{enlighten} does not exist: build Enlighten first (scripts/setup --enlighten-only); "
                        "`enlighten image convert` makes the VHDX")


def _run(cmd: list[str], what: str, logf, **kw) -> None:
    t0 = time.monotonic()
    logf.write(f"$ {' '.join(cmd)}\n")
    logf.flush()
    proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, **kw)
    logf.write(f"# {what}: exit {proc.returncode} after {time.monotonic() - t0:.1f} s\n")
    logf.flush()
    if proc.returncode != 0:
        raise ToolError(f"{what} failed (exit {proc.returncode}); see {logf.name}")
    log(f"{what}: {time.monotonic() - t0:.1f} s")


def _fix_ctimes(part: Path, tar: Path, sde: int, logf) -> None:
    """mke2fs -d copied each file's ctime (when tar -x made it) and atime (when it was last
    read): set them all to sde. debugfs runs with E2FSPROGS_FAKE_TIME too, or its close
    stamps the superblock's last write time with the clock."""
    names = subprocess.run(["tar", "--quoting-style=literal", "-tf", str(tar)], check=True, text=True, errors="surrogateescape",
                           stdout=subprocess.PIPE).stdout.splitlines()
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(sde))
    cmds = []
    for n in ["./"] + names:
        n = n.removeprefix("./").strip("/")
        p = "/" + n
        if '"' in p:
            raise ToolError(f"unexpected file name in the rootfs: {p!r}")
        cmds.append(f'sif "{p}" ctime {stamp}\nsif "{p}" atime {stamp}\n')
    cmdfile = part.with_suffix(".debugfs")
    cmdfile.write_text("".join(dict.fromkeys(cmds)), errors="surrogateescape")
    _run(["debugfs", "-w", "-f", str(cmdfile), str(part)], "debugfs: ctimes and atimes to SOURCE_DATE_EPOCH",
         open(os.devnull, "w"), env=dict(os.environ, E2FSPROGS_FAKE_TIME=str(sde)))
    cmdfile.unlink()


def _sparse_copy(src: Path, dst: Path, offset: int) -> None:
    chunk = 1 << 20
    zero = bytes(chunk)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        pos = 0
        while True:
            b = fi.read(chunk)
            if not b:
                break
            if b != zero[:len(b)]:
                fo.seek(offset + pos)
                fo.write(b)
            pos += len(b)


def build(force: bool = False, enlighten_binary: Path | None = None) -> DebianDisk:
    """Build (or reuse) <cache>/debian-disk/{debian.vhdx,initrd.img} and return the paths."""
    from .testhost import default_enlighten_binary  # testhost imports guest_image; no cycle at load
    enlighten = Path(enlighten_binary) if enlighten_binary else default_enlighten_binary()
    kern = debian.kernel()
    sources = apt_sources()
    sde = _source_date_epoch(kern)
    key = _key(kern, sources, sde)
    d = _dir()
    disk = DebianDisk(kern.vmlinuz, d / "initrd.img", d / "debian.vhdx", kern.version, d)
    stamp = d / "inputs.sha256"
    if (not force and stamp.is_file() and stamp.read_text().strip() == key
            and disk.initrd.is_file() and disk.vhdx.is_file()):
        return disk
    _check_tools(enlighten)
    t_start = time.monotonic()
    archives = d / "apt-archives"
    archives.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=d, prefix=".build-"))
    os.chmod(work, 0o755)
    log(f"building the Debian disk ({SUITE}, kernel {kern.version}) in {work}; log: {d / 'build.log'}")
    logf = open(d / "build.log", "w")
    try:
        files = work / "files"
        out = work / "out"
        hooks = work / "hooks"
        for p in (files, out, hooks):
            p.mkdir()
        (files / "initramfs.conf").write_text(INITRAMFS_CONF)
        (files / "initramfs-hook").write_text(INITRAMFS_HOOK.replace("@MODULES@", " ".join(INITRAMFS_MODULES)))
        (files / "fstab").write_text(FSTAB)
        (files / "autologin.conf").write_text(AUTOLOGIN_DROPIN)
        (files / "boot-report").write_text(BOOT_REPORT_SCRIPT)
        (files / "boot-report.service").write_text(BOOT_REPORT_UNIT)
        (files / "sources.list").write_text(sources)
        (hooks / "setup50-enlighten").write_text(SETUP_HOOK)
        (hooks / "customize50-enlighten").write_text(
            CUSTOMIZE_HOOK.replace("@HOSTNAME@", HOSTNAME).replace("@KVER@", kern.version))
        for h in hooks.iterdir():
            h.chmod(0o755)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(sde), ENL_FILES=str(files), ENL_OUT=str(out),
                   ENL_WORK=str(work), TMPDIR=str(work))
        kdeb = work / kern.deb.name  # the setup hook puts it at the same path in the chroot
        shutil.copyfile(kern.deb, kdeb)
        env["ENL_KDEB"] = str(kdeb)
        tar = work / "rootfs.tar"
        cmd = ["mmdebstrap", "--mode=unshare", "--variant=essential", "--format=tar",
               f"--include={','.join(PACKAGES)},{kdeb}",
               *[f"--dpkgopt={o}" for o in DPKG_EXCLUDES],
               f"--hook-dir={hooks}",
               f"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
               f"--setup-hook=sync-in {archives} /var/cache/apt/archives/",
               f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
               SUITE, str(tar), str(files / "sources.list")]
        _run(cmd, "mmdebstrap", logf, env=env)
        rootfs_bytes = tar.stat().st_size
        fs_mib = DISK_SIZE_MIB - PART_START_MIB  # partition 1: the rest of the disk
        part = work / "part.img"
        env.update(FS_UUID=FS_UUID, FS_HASH_SEED=FS_HASH_SEED, FS_SIZE_KIB=str(fs_mib * 1024),
                   E2FSPROGS_FAKE_TIME=str(sde))
        _run(["mmdebstrap", "--unshare-helper", "sh", "-c", MKFS_SCRIPT], "tar -x, mke2fs -d", logf, env=env)
        _fix_ctimes(part, tar, sde, logf)
        _run(["e2fsck", "-fn", str(part)], "e2fsck -fn", logf)
        tar.unlink()
        raw = work / "disk.raw"
        with open(raw, "wb") as f:
            f.truncate(DISK_SIZE_MIB << 20)
        _sparse_copy(part, raw, PART_START_MIB << 20)
        part.unlink()
        table = (f"label: dos\nlabel-id: {MBR_LABEL_ID}\nunit: sectors\n\n"
                 f"start={PART_START_MIB * 2048}, size={fs_mib * 2048}, type=83\n")
        _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], "sfdisk", logf,
             input=table.encode())
        raw_sha = sha256_file(raw)
        vhdx = work / "debian.vhdx"
        _run([str(enlighten), "image", "convert", str(raw), str(vhdx), "--format", "vhdx",
              "--block-size", VHDX_BLOCK_SIZE, "--guid-seed", f"enlighten debian-disk {key}"],
             "enlighten image convert", logf)
        raw.unlink()
        (out / "disk.raw.sha256").write_text(f"{raw_sha}  disk.raw\n")
        # What two builds of the same inputs must agree on, byte for byte.
        (out / "debian.sha256").write_text(f"{sha256_file(vhdx)}  debian.vhdx\n"
                                           f"{sha256_file(out / 'initrd.img')}  initrd.img\n"
                                           f"{raw_sha}  disk.raw\n")
        for name in ("packages.txt", "disk.raw.sha256", "debian.sha256"):
            os.replace(out / name, d / name)
        os.replace(out / "initrd.img", disk.initrd)
        os.replace(vhdx, disk.vhdx)
        atomic_write_bytes(stamp, (key + "\n").encode())
        log(f"Debian disk: {disk.vhdx} ({disk.vhdx.stat().st_size / 2**20:.0f} MiB file, "
            f"{DISK_SIZE_MIB} MiB disk; rootfs {rootfs_bytes / 2**20:.0f} MiB), initrd {disk.initrd} "
            f"({disk.initrd.stat().st_size / 2**20:.1f} MiB); built in {time.monotonic() - t_start:.0f} s")
    finally:
        logf.close()
        shutil.rmtree(work, ignore_errors=True)
    return disk
