"""Run commands with a working /dev/kvm: directly, or inside a "test host".

The test host is the Debian cloud kernel (debian.KERNEL_PACKAGE) booted under QEMU's
software emulation (TCG, `-cpu max`, which emulates AMD SVM with nested paging). Its
initramfs loads irqbypass/kvm/kvm-amd, so /dev/kvm inside it is real KVM on which
unmodified Linux guests boot. See /work/shared/test-host.md for measurements.

Python API
----------
run_in_testhost(command, files={dst_in_host: src_here}, cpus=1, memory_mib=3072,
                timeout=300, stream=False, separate_stderr=False, idle_timeout=None,
                layers=(), forward_ports=(), on_line=None) -> RunResult
    Boot the test host, run `sh /run.sh` (holding `command`) with stdout+stderr on the
    console, return what it printed and its exit status (idle_timeout: give up after that
    many seconds without console output, e.g. a hung test host). Every carried file that is a
    dynamically linked ELF program gets the libraries `ldd` lists for it carried too
    (at the same absolute paths). `layers`: more cpio archives unpacked over the host's
    base before the run's files, e.g. net_tools_layer(). Raises TestHostTimeout / TestHostError.
    forward_ports: TCP ports of the test host reachable from this machine (off by default:
    the test host has no NIC). [8080] (or {8080: HOSTPORT}) gives it a user-mode NIC (QEMU's
    slirp, virtio-net) at HOST_NIC_ADDR (10.0.2.15/24, gateway 10.0.2.2), set up before the
    command runs, with 127.0.0.1:HOSTPORT here forwarded to its port 8080; HOSTPORT is a free
    port chosen here unless given. RunResult.forwards says which ({8080: HOSTPORT}); to know
    them before the run, pass the mapping (pick_forwards()). A server in the test host must
    listen on HOST_NIC_ADDR (or 0.0.0.0), not 127.0.0.1.
    on_line(line): called with every console line (str, without its newline) as it arrives,
    on the thread that reads QEMU's output, before the run ends: for a caller that reacts to
    a marker while the command still runs. Keep it quick (start a thread for real work).

net_tools_layer() -> Path
    The test host's network tools, a cached cpio.gz for `layers`: Debian's iperf3 (for the
    network benchmark and tests) with its libraries. The base image always has busybox's
    ip, tunctl (a persistent tap: `tunctl -t tap0`), brctl, nc, httpd, udhcpd, and the
    modules tun and vhost_net (not loaded: `modprobe tun`, `modprobe vhost_net`).

run_direct(argv, timeout, stream, separate_stderr, on_line=None) -> RunResult
    The same on this machine, with subprocess. (run_command with forward_ports here: the
    command's ports are this machine's own, RunResult.forwards maps each port to itself.)

run_enlighten(enlighten_args, enlighten_binary=None, guest_kernel=None, guest_initrd=None,
              host_cpus=None, timeout=300, stream=False, runner=None, wrapper=(),
              separate_stderr=False) -> RunResult
    Run `[*wrapper] <enlighten> run [--kernel K] [--initrd I] <rest of args>` on the
    runner chosen by choose_runner(). Any element of enlighten_args may be Carry(path):
    a file on this machine that the command needs; it is replaced by its path (direct)
    or carried into the test host and replaced by the path there.

choose_runner() -> "direct" | "testhost"
    direct when /dev/kvm is usable AND the CPU has vmx/svm AND the loaded KVM module is
    a hardware one (kvm_intel/kvm_amd, not e.g. kvm_pvm); else testhost. The environment
    variable ENLIGHTEN_RUNNER=direct|testhost overrides. The choice and the reason are
    printed once to stderr.

Console output contract of the test host (all on its serial console):
    TESTHOST-READY uptime=<s>    /init is about to run /run.sh (everything before is
                                 firmware/kernel noise and is dropped from .output)
    TESTHOST-ERROR <what>        setup failed (module load, no /dev/kvm) -> TestHostError
    TESTHOST-EXIT <rc>           exit status of `sh /run.sh`
RunResult.output has "\\r\\n" normalised to "\\n" (the same in direct mode).
"""

from __future__ import annotations

import functools
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import debian
from .common import (REPO_ROOT, ToolError, atomic_write_bytes, cache_dir, ldd_libraries, log,
                     sha256_file, sha256_text)
from .cpio import CpioArchive, concatenate
from .guest_image import add_base_dirs, add_busybox
from .kmod import ModuleTree

HOST_MODULES = ["kvm-amd"]  # plus dependencies: irqbypass, kvm
# In the image but loaded only by the scripts that need them (modprobe): taps for the tap
# network backend, vhost-net and vhost-vsock for QEMU's comparison runs (bench/net.py,
# bench/vsock.py).
HOST_NET_MODULES = ["tun", "vhost_net", "vhost_vsock",
                    # the user-mode NIC of forward_ports (virtio-net-pci), loaded only then
                    "virtio_pci", "virtio_net"]
HOST_CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"
DEFAULT_HOST_MEMORY_MIB = 3072
READY = b"TESTHOST-READY"
EXIT_RE = re.compile(rb"TESTHOST-EXIT (\d+)")
ERROR_RE = re.compile(rb"TESTHOST-ERROR ([^\r\n]*)")

# The test host's address on its user-mode NIC (forward_ports); QEMU's slirp defaults.
HOST_NIC_ADDR = "10.0.2.15"
HOST_NIC_SETUP = f"""# forward_ports: the user-mode NIC (testhost.py)
modprobe virtio_pci 2>/dev/null; modprobe virtio_net 2>/dev/null
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! {{ ip link set eth0 up && ip addr add {HOST_NIC_ADDR}/24 dev eth0 && ip route add default via 10.0.2.2; }}; then
    echo "TESTHOST-ERROR the user-mode NIC (eth0) could not be set up"; ls /sys/class/net; exit 1
fi
"""

# Paths used inside the test host by run_enlighten().
HOST_BIN_DIR = "/enlighten/bin"
HOST_GUEST_DIR = "/enlighten/guest"
HOST_FILES_DIR = "/enlighten/files"

HOST_INIT_TEMPLATE = r"""#!/bin/sh
# /init of the Enlighten test host. Generated by tools/enlighten_tools/testhost.py.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# Let the console pass bytes through unchanged (no \n -> \r\n).
stty -opost 2>/dev/null
hostname testhost
# loopback up: user-mode networking (slirp) reaches the host's services at 127.0.0.1
ip link set lo up
ok=1
for m in @MODULES@; do
    insmod "$m" || { echo "TESTHOST-ERROR insmod $m failed"; ok=0; }
done
[ -c /dev/kvm ] || { echo "TESTHOST-ERROR /dev/kvm missing"; ok=0; }
if [ $ok = 1 ]; then
    read -r up _ < /proc/uptime
    echo "TESTHOST-READY uptime=$up"
    cd /
    sh /run.sh </dev/null
    echo "TESTHOST-EXIT $?"
fi
poweroff -f
"""


class TestHostError(ToolError):
    """The test host could not run the command (or it did not report an exit status)."""

    def __init__(self, msg: str, output: str = "") -> None:
        super().__init__(msg)
        self.output = output


class TestHostTimeout(TestHostError):
    pass


class CommandTimeout(ToolError):
    """A direct run did not finish in time (the process was killed)."""

    def __init__(self, msg: str, output: str = "") -> None:
        super().__init__(msg)
        self.output = output


@dataclass
class RunResult:
    output: str                 # stdout+stderr as printed (or only stdout with separate_stderr)
    returncode: int
    duration: float             # wall seconds, including the test host's boot
    runner: str = "direct"      # "direct" | "testhost"
    stdout: str | None = None   # with separate_stderr=True
    stderr: str | None = None   # with separate_stderr=True
    raw: str = field(default="", repr=False)  # full console log (test host)
    command: str = ""           # what was run (shell syntax; test host paths in testhost mode)
    forwards: dict[int, int] = field(default_factory=dict)  # forward_ports: port there -> port here


@dataclass(frozen=True)
class Carry:
    """An argument that is a file on this machine, to be made available to the command."""
    path: str | os.PathLike

    def __str__(self) -> str:
        return str(self.path)


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace").replace("\r\n", "\n")


# ----------------------------------------------------------------------------- runner choice
_choice: tuple[str, str] | None = None


def detect_runner() -> tuple[str, str]:
    """(runner, reason) without printing."""
    env = os.environ.get("ENLIGHTEN_RUNNER", "").strip()
    if env:
        if env not in ("direct", "testhost"):
            raise ToolError(f"ENLIGHTEN_RUNNER must be 'direct' or 'testhost', not {env!r}")
        return env, "ENLIGHTEN_RUNNER is set"
    problems = []
    if not os.path.exists("/dev/kvm"):
        problems.append("/dev/kvm does not exist")
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        problems.append("/dev/kvm is not accessible to this user")
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags & {"vmx", "svm"}:
        problems.append("the CPU shows no hardware virtualisation (no vmx/svm flag)")
    modules = set(os.listdir("/sys/module")) if os.path.isdir("/sys/module") else set()
    software = sorted(m for m in modules if m.startswith("kvm_") and m not in ("kvm_intel", "kvm_amd"))
    if software:
        problems.append(f"/dev/kvm is served by a software KVM module ({', '.join(software)})")
    elif not modules & {"kvm_intel", "kvm_amd"}:
        problems.append("neither kvm_intel nor kvm_amd is loaded")
    if problems:
        return "testhost", "; ".join(problems)
    hw = "kvm_intel" if "kvm_intel" in modules else "kvm_amd"
    return "direct", f"/dev/kvm is hardware KVM ({hw}) with {'vmx' if 'vmx' in flags else 'svm'}"


def choose_runner() -> str:
    global _choice
    if _choice is None:
        _choice = detect_runner()
        print(f"[enlighten-tools] runner: {_choice[0]} ({_choice[1]})", file=sys.stderr, flush=True)
    return _choice[0]


# ----------------------------------------------------------------------------- test host image
@dataclass(frozen=True)
class HostImage:
    kernel: Path
    base_initrd: Path


def _host_dir() -> Path:
    d = cache_dir() / "testhost"
    d.mkdir(parents=True, exist_ok=True)
    return d


def host_image(force: bool = False) -> HostImage:
    """The test host's kernel and the static part of its initramfs (cached)."""
    kern = debian.kernel()
    busybox = debian.busybox()
    here = Path(__file__).parent
    src_hash = sha256_text(*((here / n).read_bytes() for n in ("testhost.py", "cpio.py", "kmod.py")))
    key = sha256_text("testhost-v2", src_hash, sha256_file(kern.deb), sha256_file(busybox))
    hdir = _host_dir()
    img = HostImage(kern.vmlinuz, hdir / "base.cpio.gz")
    stamp = hdir / "inputs.sha256"
    if (not force and stamp.is_file() and stamp.read_text().strip() == key
            and img.base_initrd.is_file()):
        return img
    log(f"building test host initramfs ({kern.package})")
    arc = CpioArchive()
    add_base_dirs(arc)
    add_busybox(arc, busybox)
    tree = ModuleTree(kern.moddir)
    order = tree.load_order(HOST_MODULES)
    paths = []
    for m in order:
        dst = f"/lib/modules/{tree.version}/{tree.rel(m)}"
        arc.add_file(dst, tree.path(m), perm=0o644)
        paths.append(dst)
    for m in tree.load_order(HOST_NET_MODULES):
        if m not in order:
            arc.add_file(f"/lib/modules/{tree.version}/{tree.rel(m)}", tree.path(m), perm=0o644)
    for name, data in tree.index_files(HOST_MODULES + HOST_NET_MODULES).items():
        arc.add_bytes(f"/lib/modules/{tree.version}/{name}", data, perm=0o644)
    arc.add_bytes("/init", HOST_INIT_TEMPLATE.replace("@MODULES@", " ".join(paths)), perm=0o755)
    arc.write(img.base_initrd, compress=True)
    atomic_write_bytes(stamp, (key + "\n").encode())
    return img


# Debian programs (with their libraries from Debian packages, userland.collect) for the
# network benchmark and tests.
HOST_NET_PROGRAMS = [("iperf3", "usr/bin/iperf3")]


def net_tools_layer(force: bool = False) -> Path:
    """<cache>/testhost/net-tools.cpio.gz: HOST_NET_PROGRAMS and their libraries, for
    run_in_testhost(layers=[...]). Built once per content."""
    from . import userland
    progs = [userland.Program(pkg, path) for pkg, path in HOST_NET_PROGRAMS]
    u = userland.collect(programs_of=progs, data=[])
    key = sha256_text("testhost-net-v1", *[f"{dst}={sha256_file(src)}:{perm:o}" for dst, src, perm in u.files],
                      *[f"{path}->{target}" for path, target in u.symlinks])
    out = _host_dir() / "net-tools.cpio.gz"
    stamp = _host_dir() / "net-tools.sha256"
    if not force and out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return out
    arc = CpioArchive()
    for dst, src, perm in u.files:
        arc.add_file(dst, src, perm=perm)
    for path, target in u.symlinks:
        if path != "/etc/mtab":
            arc.add_symlink(path, target)
    arc.write(out, compress=True)
    atomic_write_bytes(stamp, (key + "\n").encode())
    log(f"test host network tools: {out} ({out.stat().st_size // 1024} KiB)")
    return out


def _is_dynamic_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" and bool(ldd_libraries(path))


# ----------------------------------------------------------------------------- port forwards
def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_forwards(ports, runner: str = "testhost") -> dict[int, int]:
    """forward_ports as a mapping {port in the test host: port here}: a mapping is kept, each
    port of a list gets its own free port of this machine. Direct: every port is itself."""
    if runner == "direct":
        return {int(g): int(g) for g in ports}
    if isinstance(ports, dict):
        return {int(g): int(h) for g, h in ports.items()}
    out: dict[int, int] = {}
    for g in ports:
        h = free_port()
        while h in out.values():
            h = free_port()
        out[int(g)] = h
    return out


class _LineSplitter:
    """Feeds whole lines (str, no newline, \r dropped) of a byte stream to a callback."""

    def __init__(self, on_line) -> None:
        self.on_line = on_line
        self.pending = b""

    def feed(self, data: bytes) -> None:
        if self.on_line is None:
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for ln in lines:
            self._call(_text(ln).rstrip("\r"))

    def flush(self) -> None:
        if self.on_line is not None and self.pending:
            self._call(_text(self.pending).rstrip("\r"))
        self.pending = b""

    def _call(self, line: str) -> None:
        try:
            self.on_line(line)
        except Exception as e:  # noqa: BLE001 - a caller's bug must not kill the run
            log(f"on_line callback failed on {line[:100]!r}: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- process I/O
class _Streamer:
    """Decides which console bytes are the command's output and echoes them live."""

    def __init__(self, stream: bool, wait_for_ready: bool) -> None:
        self.stream = stream
        self.started = not wait_for_ready
        self.done = False
        self.pending = b""

    def feed(self, data: bytes, final: bool = False) -> None:
        if not self.stream or self.done:
            return
        self.pending += data
        while True:
            if not self.started:
                i = self.pending.find(READY)
                if i < 0:
                    # keep only what might be the start of the marker
                    self.pending = self.pending[-len(READY):]
                    return
                nl = self.pending.find(b"\n", i)
                if nl < 0:
                    return
                self.pending = self.pending[nl + 1:]
                self.started = True
            nl = self.pending.rfind(b"\n")
            chunk, self.pending = (self.pending, b"") if final else (
                self.pending[:nl + 1], self.pending[nl + 1:])
            m = EXIT_RE.search(chunk)
            if m:
                chunk = chunk[:m.start()]
                self.done = True
            if chunk:
                sys.stdout.write(_text(chunk))
                sys.stdout.flush()
            return


def _pump(proc: subprocess.Popen, deadline: float, on_out, stderr_sink: list | None,
          echo_stderr: bool = False, idle_timeout: float | None = None,
          ended=None, grace: float = 20.0, on_idle=None, idle_probe: float | None = None) -> bool:
    """Read proc's stdout (and stderr) until EOF, the deadline, or (with idle_timeout) that
    many seconds without any output. True if EOF reached, or if `ended()` (the process has
    said all it had to say) became true and EOF did not follow within `grace` seconds.
    on_idle(n): called after idle_probe seconds without output, and again every idle_probe
    seconds while the silence lasts (n: 1, 2, ...)."""
    grace_until = None
    probes = 0
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    if proc.stderr is not None:
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
    open_fds = len(sel.get_map())
    last_output = time.monotonic()
    while open_fds:
        now = time.monotonic()
        if grace_until is None and ended is not None and ended():
            grace_until = now + grace
        if grace_until is not None and now >= grace_until:
            return True
        remaining = deadline - now
        if remaining <= 0 or (idle_timeout is not None and now - last_output > idle_timeout):
            return False
        if on_idle is not None and idle_probe is not None and now - last_output > idle_probe * (probes + 1):
            probes += 1
            on_idle(probes)
        for key, _ in sel.select(timeout=min(remaining, 1.0)):
            data = os.read(key.fileobj.fileno(), 65536)
            last_output = time.monotonic()
            probes = 0
            if not data:
                sel.unregister(key.fileobj)
                open_fds -= 1
                continue
            if key.data == "out":
                on_out(data)
            else:
                stderr_sink.append(data)
                if echo_stderr:
                    sys.stderr.write(_text(data))
                    sys.stderr.flush()
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ----------------------------------------------------------------------------- direct runs
def run_direct(argv: list[str], timeout: float = 300, stream: bool = False,
               separate_stderr: bool = False, on_line=None) -> RunResult:
    """Run argv on this machine; the process group is killed on timeout. on_line: see
    run_in_testhost (stdout's lines)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if separate_stderr else subprocess.STDOUT,
                            start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    lines = _LineSplitter(on_line)

    def on_out(data: bytes) -> None:
        out.append(data)
        lines.feed(data)
        if stream:
            sys.stdout.write(_text(data))
            sys.stdout.flush()

    finished = False
    try:
        finished = _pump(proc, t0 + timeout, on_out, err if separate_stderr else None,
                         echo_stderr=stream)
    finally:
        if not finished:  # timeout, or an exception such as KeyboardInterrupt
            _kill_group(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    lines.flush()
    if not finished:
        raise CommandTimeout(f"{shlex.join(map(str, argv))} did not finish within {timeout:.0f} s "
                             "(killed)", _text(b"".join(out)))
    rc = proc.wait()
    try:  # leave nothing behind: stray children still in the process group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    # a process that died by a signal: report it like a shell does (128+N)
    rc = 128 - rc if rc < 0 else rc
    output = _text(b"".join(out))
    res = RunResult(output=output, returncode=rc, duration=time.monotonic() - t0, runner="direct",
                    command=shlex.join(map(str, argv)))
    if separate_stderr:
        res.stdout, res.stderr = output, _text(b"".join(err))
    return res


# ----------------------------------------------------------------------------- test host runs
_SEPARATE_WRAPPER = """{{
{command}
}} >/tmp/.cmd-stdout 2>/tmp/.cmd-stderr
rc=$?
echo "TESTHOST-STDOUT-BYTES $(wc -c < /tmp/.cmd-stdout)"
cat /tmp/.cmd-stdout
echo "TESTHOST-STDERR-BYTES $(wc -c < /tmp/.cmd-stderr)"
cat /tmp/.cmd-stderr
exit $rc
"""


def _split_separate(body: bytes) -> tuple[bytes, bytes]:
    m = re.search(rb"TESTHOST-STDOUT-BYTES (\d+)\n", body)
    if not m:
        raise TestHostError("separate_stderr: stdout frame missing", _text(body))
    n = int(m.group(1))
    out = body[m.end():m.end() + n]
    rest = body[m.end() + n:]
    m2 = re.match(rb"TESTHOST-STDERR-BYTES (\d+)\n", rest)
    if not m2:
        raise TestHostError("separate_stderr: stderr frame missing", _text(body))
    err = rest[m2.end():m2.end() + int(m2.group(1))]
    return out, err


@functools.cache
def testhost_qemu() -> list[str]:
    """The test host's QEMU (argv prefix): bookworm-backports' (debian.testhost_qemu(), see
    there why), or with ENLIGHTEN_TESTHOST_QEMU=system, or when backports cannot be had, the
    machine's qemu-system-x86_64."""
    if os.environ.get("ENLIGHTEN_TESTHOST_QEMU") == "system":
        return ["qemu-system-x86_64"]
    try:
        return debian.testhost_qemu()
    except (ToolError, OSError) as e:
        log(f"the test host's QEMU from bookworm-backports is not available ({e}); "
            "using this machine's qemu-system-x86_64")
        return ["qemu-system-x86_64"]


def qemu_command(kernel: Path, initrd: Path, cpus: int, memory_mib: int,
                 tb_size_mib: int | None = None, monitor: Path | None = None,
                 forwards: dict[int, int] | None = None) -> list[str]:
    """monitor: QEMU's human monitor on that Unix socket (else none).
    forwards: {port in the test host: port of 127.0.0.1 here}: a user-mode NIC (virtio-net,
    no option ROM) with those TCP forwards; else no NIC.
    tb_size_mib: QEMU's translation cache (default 1 GiB). A test host that runs many
    guests one after another keeps the stale translations of the earlier ones; with a 1 GiB
    cache that made each later guest boot about 50% slower, with 64 MiB it does not."""
    accel = "tcg" if tb_size_mib is None else f"tcg,tb-size={tb_size_mib}"
    # ENLIGHTEN_TESTHOST_TCG_THREAD=single|multi: QEMU's TCG threading (default: QEMU's
    # choice, multi-threaded for several vCPUs).
    if os.environ.get("ENLIGHTEN_TESTHOST_TCG_THREAD") in ("single", "multi"):
        accel += f",thread={os.environ['ENLIGHTEN_TESTHOST_TCG_THREAD']}"
    # For diagnosing the test host itself: ENLIGHTEN_TESTHOST_QEMU_ARGS (more QEMU options,
    # e.g. "-d cpu_reset,guest_errors -D /tmp/th.log") and ENLIGHTEN_TESTHOST_LOGLEVEL (its
    # kernel's console log level; default 1, only panics).
    cmdline = HOST_CMDLINE
    if os.environ.get("ENLIGHTEN_TESTHOST_LOGLEVEL", "").isdigit():
        cmdline = cmdline.replace("loglevel=1", f"loglevel={os.environ['ENLIGHTEN_TESTHOST_LOGLEVEL']}")
    return [*testhost_qemu(), "-accel", accel, "-cpu", "max",
            "-m", str(memory_mib), "-smp", str(cpus),
            "-nographic", "-vga", "none", "-no-reboot", *_nic_args(forwards),
            "-serial", "stdio", "-monitor", f"unix:{monitor},server=on,wait=off" if monitor else "none",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            *shlex.split(os.environ.get("ENLIGHTEN_TESTHOST_QEMU_ARGS", ""))]


def _nic_args(forwards: dict[int, int] | None) -> list[str]:
    if not forwards:
        return ["-nic", "none"]
    fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in sorted(forwards.items()))
    return ["-netdev", f"user,id=fwd0{fwd}", "-device", "virtio-net-pci,netdev=fwd0,romfile="]


def _monitor_commands(sock: Path, commands: list[str], timeout: float = 10.0) -> str:
    """Run commands on QEMU's human monitor at sock; what it answered (or why not)."""
    import socket
    out: list[str] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))

            def until_prompt() -> str:
                buf = b""
                while not buf.endswith(b"(qemu) "):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                return buf.decode(errors="replace")

            until_prompt()  # the banner
            for c in commands:
                s.sendall(c.encode() + b"\n")
                text = until_prompt().replace("\r", "")
                # without the echo of the typed command (terminal escapes)
                text = "\n".join(ln for ln in text.removesuffix("(qemu) ").splitlines() if "\x1b" not in ln)
                out.append(f"(qemu) {c}\n" + text)
    except OSError as e:
        out.append(f"monitor: {e}")
    return "\n".join(out)


def _qemu_cpu_seconds(proc: subprocess.Popen) -> float | None:
    """CPU seconds used so far by QEMU (the child of the `timeout` wrapper proc runs)."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        fields = Path(f"/proc/{children[0]}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _kick_silent_host(monitor: Path) -> str:
    """A key press on the test host's PS/2 keyboard (an i8042 interrupt through the IO-APIC;
    no program reads it), then an NMI. QEMU's TCG (7.2 and 10.0) now and then leaves a
    nested test host with every vCPU halted and the local APIC timer's vector pending in
    IRR, nothing waking them: a new interrupt makes the APIC look at IRR again. An NMI alone
    did not revive one (QEMU 7.2)."""
    return _monitor_commands(monitor, ["sendkey shift", "nmi"])


def _diagnose_silent_host(proc: subprocess.Popen, monitor: Path) -> str:
    """What a test host that stopped printing is doing: QEMU's CPU use, each vCPU's state
    (halted? interrupts on?) and local APIC; then _kick_silent_host."""
    c0 = _qemu_cpu_seconds(proc)
    time.sleep(3)
    c1 = _qemu_cpu_seconds(proc)
    lines = [f"silent test host: QEMU used {((c1 - c0) / 3 * 100):.0f}% of a core over 3 s"
             if c0 is not None and c1 is not None else "silent test host: QEMU's CPU use unknown"]
    regs = _monitor_commands(monitor, ["info registers -a"])
    lines += [ln for ln in regs.splitlines() if re.match(r"(CPU#|RIP=|EIP=|\(qemu\)|monitor:)", ln)]
    lines += _monitor_commands(monitor, ["info lapic"]).splitlines()
    lines += _kick_silent_host(monitor).splitlines()
    return "\n".join(lines)


def run_in_testhost(command: str, files: dict[str, str | os.PathLike] | None = None,
                    cpus: int = 1, memory_mib: int = DEFAULT_HOST_MEMORY_MIB,
                    timeout: float = 300, stream: bool = False,
                    separate_stderr: bool = False, idle_timeout: float | None = None,
                    tb_size_mib: int | None = None,
                    layers: list[Path] | tuple[Path, ...] = (),
                    forward_ports=(), on_line=None) -> RunResult:
    """Boot the test host and run `command` (busybox sh) in it.

    files: {absolute path in the host: path on this machine}. Dynamically linked ELF
    programs among them get their `ldd` libraries carried too.
    timeout: for the whole run, including the host's boot (QEMU is killed after it).
    idle_timeout: QEMU is also killed (TestHostTimeout) after that many seconds without
    any console output, e.g. when the test host hangs.
    tb_size_mib: see qemu_command (for a test host that runs many guests).
    layers: cpio archives (gzip'd or not) unpacked after the base, before the run's files.
    forward_ports, on_line: see the module's docstring.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise ToolError("qemu-system-x86_64 not found (install qemu-system-x86; scripts/setup does)")
    if cpus < 1:
        raise ValueError("cpus must be >= 1")
    img = host_image()
    t0 = time.monotonic()
    arc = CpioArchive()
    libs: set[str] = set()
    for dst, src in (files or {}).items():
        if not dst.startswith("/"):
            raise ValueError(f"destination in the test host must be absolute: {dst}")
        arc.add_file(dst, src)
        if os.access(src, os.X_OK) and _is_dynamic_elf(str(src)):
            libs.update(ldd_libraries(src))
    for lib in sorted(libs):
        if lib not in arc:
            arc.add_file(lib, lib, perm=0o755)
    script = _SEPARATE_WRAPPER.format(command=command) if separate_stderr else command + "\n"
    forwards = pick_forwards(forward_ports) if forward_ports else {}
    arc.add_bytes("/run.sh", "#!/bin/sh\n" + (HOST_NIC_SETUP if forwards else "") + script, perm=0o755)

    tmpdir = Path(tempfile.mkdtemp(dir=_host_dir(), prefix="run-"))
    try:
        extra = tmpdir / "run.cpio"
        arc.write(extra, compress=False)  # uncompressed: faster to unpack under TCG
        initrd = tmpdir / "initrd.img"
        concatenate(initrd, img.base_initrd, *layers, extra)
        extra.unlink()
        # `timeout` guards against this Python process dying; our own deadline is shorter.
        monitor = tmpdir / "monitor.sock"
        qemu = ["timeout", "-s", "KILL", str(int(timeout) + 30)] + \
            qemu_command(img.kernel, initrd, cpus, memory_mib, tb_size_mib, monitor=monitor, forwards=forwards)
        if stream:
            log(f"booting the test host (QEMU TCG, {cpus} vCPU(s), {memory_mib} MiB)...")
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        raw: list[bytes] = []
        streamer = _Streamer(stream, wait_for_ready=True)
        lines = _LineSplitter(on_line)

        def on_out(data: bytes) -> None:
            raw.append(data)
            streamer.feed(data)
            lines.feed(data)

        # Once the host reported its exit status, its poweroff gets a little time; a test
        # host that hangs there (seen under load: it kept printing soft-lockup reports, so
        # the idle timeout never fired) is killed instead of holding the session for its
        # whole timeout.
        tail = bytearray()

        def ended() -> bool:
            return EXIT_RE.search(tail) is not None

        def on_out_tail(data: bytes) -> None:
            on_out(data)
            tail.extend(data)
            del tail[:-4096]

        finished = False
        try:
            # A test host silent for a minute is looked at and kicked (_diagnose_silent_host),
            # then kicked again every minute the silence lasts; what was seen goes into the log
            # (TESTHOST-DIAG lines).
            def on_idle(n: int) -> None:
                text = _diagnose_silent_host(proc, monitor) if n == 1 else _kick_silent_host(monitor)
                for line in text.splitlines():
                    on_out(f"\nTESTHOST-DIAG {line}".encode())
                on_out(b"\n")

            finished = _pump(proc, t0 + timeout, on_out_tail, None, idle_timeout=idle_timeout, ended=ended,
                             on_idle=on_idle, idle_probe=min(60.0, idle_timeout / 2) if idle_timeout else None)
        finally:
            if finished:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
            else:
                _kill_group(proc)
            proc.stdout.close()
        streamer.feed(b"", final=True)
        lines.flush()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    log_bytes = b"".join(raw).replace(b"\r\n", b"\n")
    duration = time.monotonic() - t0
    raw_text = _text(log_bytes)
    if not finished:
        what = (f"timed out after {timeout:.0f} s" if idle_timeout is None or duration >= timeout
                else f"printed nothing for {idle_timeout:.0f} s")
        raise TestHostTimeout(f"test host run {what} (QEMU killed); "
                              f"last output:\n{raw_text[-3000:]}", raw_text)
    err = ERROR_RE.search(log_bytes)
    if err:
        raise TestHostError(f"test host setup failed: {err.group(1).decode(errors='replace')}\n"
                            f"{raw_text[-3000:]}", raw_text)
    r = log_bytes.find(READY)
    exits = list(EXIT_RE.finditer(log_bytes))
    if r < 0 or not exits:
        raise TestHostError(f"test host ended without reporting an exit status (QEMU exit "
                            f"{proc.returncode}); console:\n{raw_text[-3000:]}", raw_text)
    start = log_bytes.find(b"\n", r) + 1
    last = exits[-1]
    body = log_bytes[start:last.start()]
    res = RunResult(output=_text(body), returncode=int(last.group(1)), duration=duration,
                    runner="testhost", raw=raw_text, command=command, forwards=forwards)
    if separate_stderr:
        o, e = _split_separate(body)
        res.stdout, res.stderr = _text(o), _text(e)
        res.output = res.stdout
    return res


# ----------------------------------------------------------------------------- enlighten
STOP_SENT_MARKER = "ENLIGHTEN-TOOLS-STOP-SENT"


@dataclass(frozen=True)
class StopAfter:
    """Run a command in the background and send it `signal` once its output (stdout and
    stderr) has `count` lines matching the basic regex `pattern`, or after `max_seconds`.
    The output then carries a line "ENLIGHTEN-TOOLS-STOP-SENT <SIG> matches=<n>" and the
    exit status is the command's (128+N if the signal killed it). A command that does not
    die within `kill_after` seconds of the signal gets SIGKILL (status 137).
    Works with dash (direct) and busybox sh (test host)."""
    pattern: str
    count: int
    max_seconds: float = 60
    signal: str = "TERM"
    kill_after: float = 10

    def script(self, command: str) -> str:
        polls = int(self.max_seconds * 5)
        return f"""out=/tmp/.enlighten-stop-after.$$
: >"$out"
{command} >>"$out" 2>&1 &
pid=$!
i=0 n=0
while [ $i -lt {polls} ] && kill -0 $pid 2>/dev/null; do
    n=$(grep -c -e {shlex.quote(self.pattern)} "$out")
    [ "$n" -ge {self.count} ] && break
    sleep 0.2
    i=$((i + 1))
done
if kill -0 $pid 2>/dev/null; then
    n=$(grep -c -e {shlex.quote(self.pattern)} "$out")
    kill -{self.signal} $pid
    echo "{STOP_SENT_MARKER} {self.signal} matches=$n" >>"$out"
    ( sleep {self.kill_after}; kill -KILL $pid 2>/dev/null ) &
    killer=$!
fi
{{ wait $pid; }} 2>/dev/null
rc=$?
[ -n "${{killer:-}}" ] && kill $killer 2>/dev/null
cat "$out"
rm -f "$out"
exit $rc
"""


def default_enlighten_binary() -> Path:
    env = os.environ.get("ENLIGHTEN_BINARY")
    return Path(env) if env else REPO_ROOT / "build" / "enlighten"


def _guest_cpus(args: list) -> int:
    for i, a in enumerate(args):
        s = str(a)
        if s == "--cpus" and i + 1 < len(args):
            try:
                return int(str(args[i + 1]))
            except ValueError:
                return 1
        if s.startswith("--cpus="):
            try:
                return int(s.split("=", 1)[1])
            except ValueError:
                return 1
    return 1


def run_enlighten(enlighten_args: list[str | Carry], *,
                  enlighten_binary: str | os.PathLike | None = None,
                  guest_kernel: str | os.PathLike | None = None,
                  guest_initrd: str | os.PathLike | None = None,
                  host_cpus: int | None = None,
                  host_memory_mib: int = DEFAULT_HOST_MEMORY_MIB,
                  timeout: float = 300, stream: bool = False,
                  runner: str | None = None,
                  wrapper: list[str] | tuple[str, ...] = (),
                  separate_stderr: bool = False,
                  stop_after: StopAfter | None = None,
                  forward_ports=(), on_line=None) -> RunResult:
    """Run `[*wrapper] <enlighten> <subcommand> [--kernel K] [--initrd I] <more args>`
    (--kernel/--initrd are inserted after enlighten_args[0] when that is a subcommand).

    stop_after: send a signal once the output shows a pattern N times (see StopAfter);
    the output is then returned at the end, not streamed.
    forward_ports, on_line: see run_in_testhost (with stop_after, on_line sees the output
    only at the end). Enlighten's servers must listen on HOST_NIC_ADDR in the test host.

    In the test host the binary is at /enlighten/bin/<name>, the guest kernel and initrd
    at /enlighten/guest/<name>, and each Carry(path) argument at
    /enlighten/files/<n>-<name>. host_cpus defaults to min(2, --cpus in the args).
    """
    binary = Path(enlighten_binary) if enlighten_binary else default_enlighten_binary()
    if not binary.is_file():
        raise ToolError(f"Enlighten binary {binary} does not exist: build it first "
                        "(scripts/setup builds build/enlighten)")
    runner = runner or choose_runner()
    if runner not in ("direct", "testhost"):
        raise ToolError(f"unknown runner {runner!r}")
    direct = runner == "direct"
    files: dict[str, str] = {}

    def place(src: str | os.PathLike, dst: str) -> str:
        """Where the command sees file `src`: itself (direct) or `dst` in the test host."""
        if direct:
            return str(src)
        if dst in files and files[dst] != str(src):
            dst = f"{os.path.dirname(dst)}/{len(files)}-{os.path.basename(dst)}"
        files[dst] = str(src)
        return dst

    args = [place(a.path, f"{HOST_FILES_DIR}/{n}-{Path(a.path).name}") if isinstance(a, Carry)
            else str(a) for n, a in enumerate(enlighten_args)]
    guest: list[str] = []
    if guest_kernel is not None:
        guest += ["--kernel", place(guest_kernel, f"{HOST_GUEST_DIR}/{Path(guest_kernel).name}")]
    if guest_initrd is not None:
        guest += ["--initrd", place(guest_initrd, f"{HOST_GUEST_DIR}/{Path(guest_initrd).name}")]
    # put --kernel/--initrd right after the subcommand: `enlighten run --kernel K ...`
    at = 1 if args and not args[0].startswith("-") else 0
    argv = [*wrapper, place(binary, f"{HOST_BIN_DIR}/{binary.name}"), *args[:at], *guest, *args[at:]]
    if stop_after is not None:
        if separate_stderr:
            raise ValueError("stop_after and separate_stderr cannot be combined")
        script = stop_after.script(shlex.join(argv))
        if direct:
            res = run_direct(["sh", "-c", script], timeout=timeout, on_line=on_line)
            res.command = shlex.join(argv)
            res.forwards = pick_forwards(forward_ports, "direct")
            return res
        command = script
    else:
        if direct:
            res = run_direct(argv, timeout=timeout, stream=stream, separate_stderr=separate_stderr,
                             on_line=on_line)
            res.forwards = pick_forwards(forward_ports, "direct")
            return res
        command = shlex.join(argv)
    if host_cpus is None:
        host_cpus = max(1, min(2, _guest_cpus(list(enlighten_args)), os.cpu_count() or 1))
    res = run_in_testhost(command, files=files, cpus=host_cpus,
                          memory_mib=host_memory_mib, timeout=timeout,
                          stream=stream and stop_after is None, separate_stderr=separate_stderr,
                          forward_ports=forward_ports, on_line=on_line)
    res.command = shlex.join(argv)
    return res


def run_command(command: str, *, files: dict[str, str] | None = None, cpus: int = 1,
                timeout: float = 300, stream: bool = False, runner: str | None = None,
                idle_timeout: float | None = None, tb_size_mib: int | None = None,
                memory_mib: int = DEFAULT_HOST_MEMORY_MIB,
                layers: list[Path] | tuple[Path, ...] = (),
                forward_ports=(), on_line=None) -> RunResult:
    """Run a shell command with a working /dev/kvm (direct: `sh -c` here). idle_timeout,
    tb_size_mib, memory_mib, layers: see run_in_testhost (test host only); forward_ports,
    on_line: see run_in_testhost (direct: the ports are this machine's, RunResult.forwards maps
    each to itself)."""
    runner = runner or choose_runner()
    if runner == "direct":
        res = run_direct(["sh", "-c", command], timeout=timeout, stream=stream, on_line=on_line)
        res.forwards = pick_forwards(forward_ports, "direct")
        return res
    return run_in_testhost(command, files=files, cpus=cpus, timeout=timeout, stream=stream,
                           idle_timeout=idle_timeout, tb_size_mib=tb_size_mib, memory_mib=memory_mib,
                           layers=layers, forward_ports=forward_ports, on_line=on_line)
