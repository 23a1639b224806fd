"""The default guest image: the unmodified Debian cloud kernel + a busybox initramfs.

    build() -> GuestImage(kernel=<cache>/guest/bzImage, initrd=<cache>/guest/initrd.img,
                          tools=<cache>/guest/tools.cpio.gz)

The initramfs (initrd.img) holds busybox-static (with applet symlinks) and Debian's
dynamically linked busybox for jobs, the kernel's Hyper-V, disk (sd_mod, sr_mod, virtio)
modules and their dependencies (with a generated modules.dep/modules.alias, so busybox
`modprobe hv_vmbus` works), hyperv-daemons' binaries with their shared libraries from
Debian packages (userland.py), and /init (INIT_SCRIPT below).

The disk tools (e2fsprogs, util-linux, sfdisk, coreutils dd, fio, sg3-utils, with their
libraries; userland.GUEST_PROGRAMS) are a second cpio, tools.cpio.gz, that the kernel
unpacks over the base when it is appended: make_run_initrd(tools=True), `enlighten-tools
guest-image --tools`. They are not in initrd.img because the guest pays for every byte of
its initramfs at boot (about 0.5 s per uncompressed MiB in the nested test host; the tools
are 10 MiB). Both are rebuilt only when a hash of their inputs changes. Extra per-run
content (a /job script and files) goes into a third small cpio: make_run_initrd().

/init output contract (see INIT_SCRIPT):
    ENLIGHTEN-INIT uptime=<seconds>      as soon as /proc is mounted
    ENLIGHTEN-NET eth0 <addr/len>|no address mac <mac> driver <driver> (<how>, <s> s)
                                         when the guest has an eth0 (before the job)
    ENLIGHTEN-JOB-EXIT <status>          after `sh /job`, if /job exists
    ENLIGHTEN-POWEROFF-FAILED            if `poweroff -f` returned (then it idles)
Kernel command line option `enlighten.modules=a,b,...` makes /init modprobe those
modules (after the marker, before the job); `enlighten.modules=hv_balloon
hv_balloon.pressure_report_delay=0` gives dynamic memory with status reports from the
start. /init sets /sys/devices/system/memory/auto_online_blocks to `online` (unless the
command line has memhp_default_state=), so memory that hv_balloon hot-adds is usable at once.

Network: when there is an eth0 (hv_netvsc, or virtio_net under QEMU; /init waits up to 2 s
for it only when one of those drivers is loaded), /init brings it up and configures it
before the job: by default with DHCP (`udhcpc -i eth0 -n -q -t 5 -T 1`, at most about 5 s;
UDHCPC_SCRIPT sets address, default route and /etc/resolv.conf), with
`enlighten.net=ADDR/LEN[,GATEWAY]` statically, with `enlighten.net=off` not at all (left
down). It prints ENLIGHTEN-NET and a "net:" line in the summary.

The network tools (iperf3, ethtool; userland.NET_PROGRAMS, about 6 MiB with libcrypto) are
a third layer, net.cpio.gz: make_run_initrd(net=True), `enlighten-tools guest-image --net`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import debian
from . import userland
from .common import ToolError, atomic_write_bytes, cache_dir, log, sha256_file, sha256_text
from .cpio import CpioArchive, concatenate
from .kmod import ModuleTree

# Modules copied into the guest, with their dependency closure.
GUEST_MODULES = [
    "hv_vmbus", "hv_storvsc", "hv_netvsc", "hv_utils", "hv_balloon", "hv_sock",
    "hyperv-keyboard", "hid-hyperv", "hyperv_fb",
    # ACPI power button -> input event -> busybox acpid (the shutdown fallback)
    "button", "evdev",
    # a network interface for tests before there is a synthetic NIC
    "dummy",
    # disks: SCSI disks and DVDs behind hv_storvsc (ext4, jbd2, mbcache, crc16 and
    # crc32c are built into this kernel; isofs is a module, for DVD images)
    "sd_mod", "sr_mod", "cdrom", "isofs",
    # the same disks from QEMU, for the side-by-side storage benchmark (bench/storage.py)
    "virtio_pci", "virtio_blk", "virtio_scsi",
    # QEMU's virtio-net, for the side-by-side network benchmark (bench/net.py)
    "virtio_net",
    # QEMU's virtio vsock, for the side-by-side hv_sock benchmark (bench/vsock.py)
    "vmw_vsock_virtio_transport",
]
HV_DAEMONS = ["hv_kvp_daemon", "hv_vss_daemon", "hv_fcopy_daemon"]

INIT_MARKER = "ENLIGHTEN-INIT"
JOB_EXIT_MARKER = "ENLIGHTEN-JOB-EXIT"
POWEROFF_FAILED_MARKER = "ENLIGHTEN-POWEROFF-FAILED"
SHUTDOWN_MARKER = "ENLIGHTEN-SHUTDOWN-REQUESTED"
SERVICES_MARKER = "ENLIGHTEN-SERVICES-READY"
NET_MARKER = "ENLIGHTEN-NET"

# busybox udhcpc's event script (its compiled-in default path, in both busyboxes):
# address, default route and resolv.conf from the lease. `mask` is the prefix length.
UDHCPC_SCRIPT_PATH = "/etc/udhcpc/default.script"
UDHCPC_SCRIPT = r"""#!/bin/busybox-static sh
# udhcpc event script of the Enlighten default guest (tools/enlighten_tools/guest_image.py).
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" broadcast "${broadcast:-+}" dev "$interface"
    while ip route del default dev "$interface" 2>/dev/null; do :; done
    for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    : > /etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"""

OS_RELEASE = """PRETTY_NAME="Enlighten default guest (Debian 12 kernel, busybox)"
NAME="Enlighten default guest"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
"""

# busybox acpid: the ACPI power button (KEY_POWER on /dev/input) is event PWRF, whose
# default action is the script /etc/acpi/PWRF/00000080; it runs poweroff, which signals
# /init (SIGUSR2) like any other orderly shutdown.
ACPID_POWER_SCRIPT = "#!/bin/sh\nexec /sbin/poweroff\n"

INIT_SCRIPT = r"""#!/bin/busybox-static sh
# /init of the Enlighten default guest (busybox-static's sh, whose applets run before
# anything in PATH). Generated by tools/enlighten_tools/guest_image.py; edit it there.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "ENLIGHTEN-INIT uptime=$up"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /var/lib/hyperv /run
hostname enlighten-guest
ifconfig lo 127.0.0.1 up 2>/dev/null

# An orderly shutdown (the Hyper-V shutdown service runs /sbin/poweroff or /sbin/reboot,
# which signal init; so does busybox acpid for the ACPI power button): we are init.
stop_requested() {
    read -r up _ < /proc/uptime
    echo "ENLIGHTEN-SHUTDOWN-REQUESTED $1 uptime=$up"
    sync
    if [ "$1" = reboot ]; then reboot -f; else poweroff -f; fi
}
trap 'stop_requested poweroff' USR2
trap 'stop_requested poweroff' USR1
trap 'stop_requested reboot' TERM

has_arg() { grep -qw "$1" /proc/cmdline; }

# Memory hot-added later (hv_balloon, docs/memory.md) comes online at once: Debian's kernel
# leaves it offline (CONFIG_MEMORY_HOTPLUG_DEFAULT_ONLINE is not set) and this guest has no
# udev to online it. memhp_default_state= on the command line overrides this.
if [ -w /sys/devices/system/memory/auto_online_blocks ] && ! grep -q memhp_default_state= /proc/cmdline; then
    echo online > /sys/devices/system/memory/auto_online_blocks
fi

# enlighten.modules=a,b on the kernel command line: load those modules.
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    enlighten.modules=*)
        for m in $(echo "${arg#enlighten.modules=}" | tr ',' ' '); do
            modprobe "$m" || echo "ENLIGHTEN-MODPROBE-FAILED $m"
        done ;;
    esac
done
# hv_balloon.pressure_report_delay=N: busybox modprobe applies it from /proc/cmdline; set
# it again through sysfs in case the module was loaded otherwise (the status reports start
# after that many seconds; Linux's default is 45).
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    hv_balloon.pressure_report_delay=*)
        [ -w /sys/module/hv_balloon/parameters/pressure_report_delay ] &&
            echo "${arg#*=}" > /sys/module/hv_balloon/parameters/pressure_report_delay ;;
    esac
done

# enlighten.services: the guest side of the integration services, as a distribution
# would run it: hv_utils, the KVP daemon, and acpid for the power button.
if has_arg enlighten.services; then
    modprobe hv_vmbus; modprobe hv_utils; modprobe button; modprobe evdev
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        [ -e /dev/vmbus/hv_kvp ] && break
        sleep 0.1
    done
    [ -e /dev/vmbus/hv_kvp ] && hv_kvp_daemon
    # VSS (backup checkpoints) and file copy: their devices come with the same hv_utils
    # probe, unless the host does not offer the service.
    for i in 1 2 3 4 5; do
        [ -e /dev/vmbus/hv_vss ] && [ -e /dev/vmbus/hv_fcopy ] && break
        sleep 0.1
    done
    [ -e /dev/vmbus/hv_vss ] && hv_vss_daemon
    [ -e /dev/vmbus/hv_fcopy ] && hv_fcopy_daemon
    # acpid opens the input devices once, at start: wait for the power button's.
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        grep -qs "Power Button" /sys/class/input/*/name && ls /dev/input/event* >/dev/null 2>&1 && break
        sleep 0.1
    done
    acpid -f -c /etc/acpi -l /dev/null >/dev/null 2>&1 &  # -l: its default log file is in /var/log, which this guest lacks
    read -r up _ < /proc/uptime
    echo "ENLIGHTEN-SERVICES-READY uptime=$up"
fi

# The network: eth0, if there is one (see the module docstring).
net_line=
if [ -d /sys/module/hv_netvsc ] || [ -d /sys/module/virtio_net ]; then
    # the vmbus offer (or the PCI probe) may still be on its way when modprobe returns
    for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        [ -e /sys/class/net/eth0 ] && break
        sleep 0.1
    done
    [ -e /sys/class/net/eth0 ] || net_line="none (a NIC driver is loaded, but there is no eth0)"
fi
if [ -e /sys/class/net/eth0 ]; then
    read -r t0 _ < /proc/uptime
    how=dhcp
    for arg in $(cat /proc/cmdline); do
        case "$arg" in enlighten.net=*) how=${arg#enlighten.net=} ;; esac
    done
    case "$how" in
    off) ;;
    dhcp)
        ip link set eth0 up
        udhcpc -i eth0 -s /etc/udhcpc/default.script -n -q -t 5 -T 1 >/dev/null 2>&1 ;;
    *)
        ip link set eth0 up
        ip addr add "${how%%,*}" dev eth0
        case "$how" in *,*) ip route add default via "${how#*,}" dev eth0 ;; esac ;;
    esac
    read -r t1 _ < /proc/uptime
    addr=$(ip -4 addr show dev eth0 | sed -n 's/.*inet \([0-9./]*\).*/\1/p' | head -n 1)
    read -r mac < /sys/class/net/eth0/address
    drv=$(readlink /sys/class/net/eth0/device/driver); drv=${drv##*/}
    net_line="eth0 ${addr:-no address} mac $mac driver ${drv:-none} ($how, $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s)"
fi
[ -n "$net_line" ] && echo "ENLIGHTEN-NET $net_line"

if [ -f /job ]; then
    /bin/sh /job   # Debian's busybox sh: commands found through PATH (see STATIC_APPLETS)
    echo "ENLIGHTEN-JOB-EXIT $?"
else
    echo "Hello from the Enlighten default guest."
    echo "  kernel:     $(uname -a)"
    hv=$(dmesg | sed -n 's/.*Hypervisor detected: *//p' | head -n 1)
    echo "  hypervisor: ${hv:-none detected}"
    echo "  cpus:       $(grep -c '^processor' /proc/cpuinfo)"
    echo "  memory:     $(sed -n 's/^MemTotal: *//p' /proc/meminfo) (MemTotal)"
    echo "  cmdline:    $(cat /proc/cmdline)"
    [ -n "$net_line" ] && echo "  net:        $net_line"
    if [ -d /sys/bus/vmbus/devices ]; then
        echo "  vmbus devices:"
        # Builtins where possible (a command substitution only for a bound driver): a fork
        # costs milliseconds in a nested test VM, and the boot benchmark times this summary.
        for d in /sys/bus/vmbus/devices/*; do
            [ -e "$d" ] || continue
            cls=; read -r cls 2>/dev/null < "$d/class_id"
            drv=; [ -L "$d/driver" ] && drv=$(readlink "$d/driver") && drv=${drv##*/}
            echo "    ${d##*/} class=$cls driver=$drv"
        done
    else
        echo "  vmbus:      /sys/bus/vmbus not present (try enlighten.services)"
    fi
    if [ -d /sys/module/hv_storvsc ]; then
        # The SCSI scan runs asynchronously after the driver binds: give it a moment.
        for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            [ -e /sys/block/sda/size ] && break
            sleep 0.1
        done
        echo "  disks:"
        for b in /sys/block/sd*; do
            [ -e "$b/size" ] || continue
            read -r sectors < "$b/size"; read -r ro < "$b/ro"
            vendor=; read -r vendor 2>/dev/null < "$b/device/vendor"
            model=; read -r model 2>/dev/null < "$b/device/model"
            echo "    ${b##*/} $((sectors / 2048)) MiB $vendor $model$([ "$ro" = 1 ] && echo ' (read-only)')"
        done
    fi
fi

# enlighten.stay: keep running until the host shuts us down (the traps above). `wait`
# returns at once when a signal arrives, so the trap runs without delay.
if has_arg enlighten.stay; then
    echo "ENLIGHTEN-STAYING"
    while :; do sleep 3600 & wait $!; done
fi
read -r up _ < /proc/uptime
echo "Powering off (uptime ${up}s)."
poweroff -f
sleep 2
echo "ENLIGHTEN-POWEROFF-FAILED"
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path                 # the base: busybox, modules, hyperv-daemons, /init
    tools: Path | None = None    # the disk-tools layer, appended by make_run_initrd(tools=True)
    net: Path | None = None      # the network-tools layer, appended by make_run_initrd(net=True)


def _guest_dir() -> Path:
    d = cache_dir() / "guest"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _applets(busybox: Path) -> list[str]:
    """Paths (without the leading /) of busybox's applets: busybox --list-full."""
    out = subprocess.run([str(busybox), "--list-full"], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    return sorted(out.split())


def add_busybox(arc: CpioArchive, busybox: Path) -> None:
    """busybox at /bin/busybox plus a symlink for every applet (busybox --list-full)."""
    arc.add_file("/bin/busybox", busybox, perm=0o755)
    for rel in _applets(busybox):
        path = "/" + rel
        if path == "/bin/busybox" or path in arc:
            continue
        arc.add_symlink(path, "/bin/busybox")


# Debian's busybox-static is built with FEATURE_SH_STANDALONE and FEATURE_PREFER_APPLETS: its
# sh runs an applet for any command of that name (`dd`, `fstrim`, `blockdev`...) without
# looking at PATH, and so do its applets that start commands (taskset, timeout, xargs...).
# So the guest has two: /init runs on busybox-static (fast: applets run in the shell), while
# /bin/sh and the applet links are Debian's dynamically linked `busybox`, built without
# those options, so a job's commands are found through PATH and the real programs of
# userland.GUEST_PROGRAMS win. These applets stay on busybox-static: the ones the kernel
# starts by itself (request_module, orderly power-off and reboot) and /init's own.
STATIC_BUSYBOX = "/bin/busybox-static"
STATIC_APPLETS = {"modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo",
                  "poweroff", "reboot", "halt", "init", "linuxrc", "acpid"}


def add_guest_busyboxes(arc: CpioArchive, static: Path, dynamic: Path, exclude: set[str]) -> None:
    """busybox-static at STATIC_BUSYBOX, Debian's busybox at /bin/busybox, and a link for
    every applet of either (to /bin/busybox unless it lacks it or it is in STATIC_APPLETS),
    except the names in `exclude` (real programs take their place)."""
    arc.add_file(STATIC_BUSYBOX, static, perm=0o755)
    arc.add_file("/bin/busybox", dynamic, perm=0o755)
    dyn = set(_applets(dynamic))
    for rel in sorted(set(_applets(static)) | dyn):
        path, name = "/" + rel, os.path.basename(rel)
        if path in ("/bin/busybox", STATIC_BUSYBOX) or name in exclude:
            continue
        arc.add_symlink(path, "/bin/busybox" if rel in dyn and name not in STATIC_APPLETS
                        else STATIC_BUSYBOX)


def add_base_dirs(arc: CpioArchive) -> None:
    for d in ("/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/mnt",
              "/usr/bin", "/usr/sbin", "/sbin", "/bin"):
        arc.add_dir(d)
    arc.add_dir("/tmp", 0o1777)
    arc.add_chardev("/dev/console", 5, 1, 0o600)
    arc.add_chardev("/dev/null", 1, 3, 0o666)


def add_modules(arc: CpioArchive, tree: ModuleTree, names: list[str]) -> list[str]:
    """Copy the closure of `names` to /lib/modules/<ver>/ with depmod's modules.dep etc."""
    base = f"/lib/modules/{tree.version}"
    order = tree.load_order(names)
    for m in order:
        arc.add_file(f"{base}/{tree.rel(m)}", tree.path(m), perm=0o644)
    for name, data in tree.index_files(names).items():
        arc.add_bytes(f"{base}/{name}", data, perm=0o644)
    for extra in ("modules.builtin", "modules.order"):
        if (tree.moddir / extra).is_file():
            arc.add_file(f"{base}/{extra}", tree.moddir / extra, perm=0o644)
    return order


def _sources_hash() -> str:
    here = Path(__file__).parent
    return sha256_text(*(p.read_bytes() for p in sorted(here.glob("*.py"))
                         if p.name in ("guest_image.py", "cpio.py", "kmod.py", "userland.py")))


def _daemon_paths(hvd_root: Path) -> list[tuple[str, Path]]:
    found = []
    for name in HV_DAEMONS:
        for d in ("usr/sbin", "sbin", "usr/bin"):
            p = hvd_root / d / name
            if p.is_file():
                found.append((f"/usr/sbin/{name}", p))
                break
        else:
            raise ToolError(f"{name} not found in {hvd_root}")
    libexec = hvd_root / "usr" / "libexec" / "hypervkvpd"
    if libexec.is_dir():
        for p in sorted(libexec.iterdir()):
            if p.is_file():
                found.append((f"/usr/libexec/hypervkvpd/{p.name}", p))
    return found


def build(force: bool = False) -> GuestImage:
    """Build (or reuse) <cache>/guest/{bzImage,initrd.img,tools.cpio.gz,net.cpio.gz}."""
    kern = debian.kernel()
    busybox = debian.busybox()
    hvd = debian.hyperv_daemons()
    daemons = _daemon_paths(hvd)
    # The base: Debian's busybox and hyperv-daemons with their libraries. All: the same plus
    # the disk tools (userland.GUEST_PROGRAMS); the tools layer is what the base lacks.
    base_user = userland.collect(extra_programs=daemons, programs_of=userland.BASE_PROGRAMS, data=[])
    user = userland.collect(extra_programs=daemons)
    # The network tools: the base plus userland.NET_PROGRAMS; the layer is what the base lacks.
    net_user = userland.collect(extra_programs=daemons, data=[],
                                programs_of=userland.BASE_PROGRAMS + userland.NET_PROGRAMS)
    key = sha256_text(
        "guest-image-v5", _sources_hash(), sha256_file(kern.deb), sha256_file(busybox),
        *[f"{dst}={sha256_file(src)}:{perm:o}" for u in (user, net_user) for dst, src, perm in u.files],
        *[f"{path}->{target}" for u in (user, net_user) for path, target in u.symlinks],
        *user.inputs,
        ",".join(GUEST_MODULES),
    )
    gdir = _guest_dir()
    image = GuestImage(gdir / "bzImage", gdir / "initrd.img", gdir / "tools.cpio.gz", gdir / "net.cpio.gz")
    stamp = gdir / "inputs.sha256"
    if (not force and stamp.is_file() and stamp.read_text().strip() == key
            and image.kernel.is_file() and image.initrd.is_file() and image.tools.is_file()
            and image.net.is_file()):
        return image

    log(f"building guest image from {kern.package} ({kern.version})")
    arc = CpioArchive()
    add_base_dirs(arc)
    dynamic_busybox = userland.program_file("busybox", "bin/busybox")
    add_guest_busyboxes(arc, busybox, dynamic_busybox, set())
    tree = ModuleTree(kern.moddir)
    mods = add_modules(arc, tree, GUEST_MODULES)
    for dst, src, perm in base_user.files:
        arc.add_file(dst, src, perm=perm)
    for path, target in base_user.symlinks:
        arc.add_symlink(path, target)
    arc.add_bytes("/init", INIT_SCRIPT, perm=0o755)
    arc.add_bytes("/etc/os-release", OS_RELEASE, perm=0o644)
    arc.add_bytes("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 enlighten-guest.localdomain enlighten-guest\n", perm=0o644)
    arc.add_bytes("/etc/acpi/PWRF/00000080", ACPID_POWER_SCRIPT, perm=0o755)
    arc.add_bytes(UDHCPC_SCRIPT_PATH, UDHCPC_SCRIPT, perm=0o755)
    arc.add_dir("/var/lib/hyperv")

    # The disk-tools layer: a second cpio that the kernel unpacks over the base (an entry
    # replaces what the base has at its path). A real program replaces busybox's applet of
    # the same name wherever busybox put it (e.g. busybox's blkdiscard is /usr/bin/blkdiscard,
    # before util-linux's /sbin in PATH): those applet paths become links to the program.
    tools = CpioArchive()
    in_base = {dst for dst, _src, _perm in base_user.files} | {p for p, _t in base_user.symlinks}
    real: dict[str, str] = {}
    for dst, src, perm in user.files:
        if dst not in in_base:
            tools.add_file(dst, src, perm=perm)
            real[os.path.basename(dst)] = dst
    for path, target in user.symlinks:
        if path not in in_base:
            tools.add_symlink(path, target)
            real.setdefault(os.path.basename(path), path)
    for rel in sorted(set(_applets(busybox)) | set(_applets(dynamic_busybox))):
        path, name = "/" + rel, os.path.basename(rel)
        if name in real and path not in tools and name not in STATIC_APPLETS:
            tools.add_symlink(path, real[name])
    # The network-tools layer (no busybox applet has these names).
    net = CpioArchive()
    for dst, src, perm in net_user.files:
        if dst not in in_base:
            net.add_file(dst, src, perm=perm)
    for path, target in net_user.symlinks:
        if path not in in_base:
            net.add_symlink(path, target)
    arc.write(image.initrd, compress=True)
    tools.write(image.tools, compress=True)
    net.write(image.net, compress=True)
    tmp = gdir / f".bzImage.tmp{os.getpid()}"
    shutil.copyfile(kern.vmlinuz, tmp)
    os.replace(tmp, image.kernel)
    atomic_write_bytes(gdir / "initrd.list", ("\n".join("/" + p for p in arc.paths()) + "\n").encode())
    atomic_write_bytes(gdir / "tools.list", ("\n".join("/" + p for p in tools.paths()) + "\n").encode())
    atomic_write_bytes(gdir / "net.list", ("\n".join("/" + p for p in net.paths()) + "\n").encode())
    atomic_write_bytes(stamp, (key + "\n").encode())
    libs = sorted(set(user.libraries.values()))
    log(f"guest image: {image.kernel} + {image.initrd} ({image.initrd.stat().st_size // 1024} KiB; "
        f"modules: {', '.join(mods)}) + disk tools {image.tools} ({image.tools.stat().st_size // 1024} KiB; "
        f"libraries from {', '.join(libs)}; stubs: {', '.join(user.stubs)}) + network tools {image.net} "
        f"({image.net.stat().st_size // 1024} KiB: {', '.join(p.path for p in userland.NET_PROGRAMS)})")
    return image


def write_extra_cpio(out: Path | str, job: str | os.PathLike | None = None,
                     files: list[tuple[str | os.PathLike, str]] | None = None) -> Path:
    """Write a small gzip'd cpio with /job and extra files.

    job:   script text (str) or a path (pathlib.Path / os.PathLike) to a script file;
           it is run by /init as `sh /job`.
    files: (src on this machine, dst path in the guest) pairs.
    """
    arc = CpioArchive()
    if job is not None:
        if isinstance(job, str):
            arc.add_bytes("/job", job, perm=0o755)
        else:
            arc.add_file("/job", Path(job), perm=0o755)
    for src, dst in files or []:
        arc.add_file(dst, src)
    out = Path(out)
    arc.write(out, compress=True)
    return out


def make_run_initrd(job: str | os.PathLike | None = None,
                    files: list[tuple[str | os.PathLike, str]] | None = None,
                    out: Path | str | None = None,
                    base: GuestImage | None = None,
                    tools: bool = False, net: bool = False) -> Path:
    """A per-run initrd: the base initrd.img, with `tools` the disk-tools layer, with `net`
    the network-tools layer, then an extra cpio with /job and `files` (see write_extra_cpio).
    The base image is not rebuilt.

    out: where to write it; by default <cache>/guest/runs/<hash of content>.img
    (content-addressed, so repeating a run reuses the file)."""
    base = base or build()
    if tools and base.tools is None:
        raise ToolError("this guest image has no disk-tools layer")
    if net and base.net is None:
        raise ToolError("this guest image has no network-tools layer")
    layers = [base.initrd] + ([base.tools] if tools else []) + ([base.net] if net else [])
    runs = _guest_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    extra = runs / f".extra-{os.getpid()}.cpio.gz"
    try:
        write_extra_cpio(extra, job, files)
        if out is None:
            key = sha256_text(*(sha256_file(layer) for layer in layers), sha256_file(extra))[:24]
            out = runs / f"{key}.img"
            if out.is_file():
                return out
        concatenate(out, *layers, extra)
    finally:
        if extra.exists():
            extra.unlink()
    return Path(out)
