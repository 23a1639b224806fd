#!/usr/bin/env python3
"""Host-guest socket benchmark: Enlighten's hv_sock (the guest's hv_sock driver over VMBus,
the host side on a Unix socket: `enlighten run --vsock socket=PATH`) against QEMU 7.2's
vhost-vsock (the guest's virtio vsock transport, the host side on the test host kernel's
AF_VSOCK), in ONE test-host boot.

    python3 bench/vsock.py                              # both variants, 3 rounds
    python3 bench/vsock.py --rounds 1 --mib 16 --connects 50

The guest (the default guest, 1 vCPU) runs bench/vsock_peer.c as an AF_VSOCK listener on
port 5000; the test host runs the same program as the client (static, built with the
machine's gcc). Every connection is opened by the test host (Enlighten: "CONNECT 5000" on
the hybrid socket, then "OK"; QEMU: connect() to CID 3):

    h2g-1   host -> guest, 1 stream of --mib MiB           g2h-1   guest -> host, the same
    h2g-8   host -> guest, 8 streams of --mib/8 MiB each   g2h-8   guest -> host, the same
    connect --connects connections one after another, each a PING/PONG round trip:
            the mean time of one (connection setup + one round trip + close)

Throughput is the data moved over the wall time of the whole workload (connects included).
CPU: the VMM process's utime + stime over the workload (all threads, the vCPU's time in the
guest included; for QEMU plus its vhost-<pid> kernel threads), per GB moved.

Rounds rotate the order of the variants. A benchmark, not a test: it exits 0 whatever the
numbers are (1 only when it could not run at all). Output: a markdown report on stdout and
in bench/results/vsock-<date>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from benchlib import log  # noqa: E402
from enlighten_tools import guest_image, qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402

MEMORY = "512M"
CLK_TCK = 100
H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
PORT = 5000
QEMU_CID = 3
SOCKET = "/tmp/enl-vsock.sock"
VARIANTS = {"enlighten": "Enlighten hv_sock (Unix socket)", "qemu-vhost": "QEMU vhost-vsock"}
WORKLOADS = ["h2g-1", "h2g-8", "g2h-1", "g2h-8", "connect"]

GUEST_JOB = r"""
/usr/local/bin/vsock_peer serve 5000 > /dev/console 2>&1 &
for i in $(seq 100); do grep -q "vsock_peer" /proc/*/comm 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "BENCH-READY"
wait
"""


def peer_binary(out_dir: Path) -> Path:
    out = out_dir / "vsock_peer"
    src = HERE / "vsock_peer.c"
    if not out.is_file() or out.stat().st_mtime < src.stat().st_mtime:
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(out), str(src)],
                       check=True)
    return out


def vmm_argv(variant: str, kernel: str, initrd: str, enl: str, q: qemu.QemuCarry, serial: str) -> list[str]:
    if variant == "enlighten":
        cmdline = "console=ttyS0 quiet enlighten.modules=hv_sock enlighten.net=off"
        return [enl, "run", "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline, "--memory", MEMORY,
                "--cpus", "1", "--serial", f"file:{serial}", "--on-reboot", "exit", "--display", "off",
                "--vsock", f"socket={SOCKET}"]
    cmdline = "console=ttyS0 quiet enlighten.modules=virtio_pci,vmw_vsock_virtio_transport enlighten.net=off"
    return [q.binary, "-L", q.firmware_dir, "-M", "pc", "-cpu", "host", "-enable-kvm", "-m", MEMORY, "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", f"file:{serial}", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-device", f"vhost-vsock-pci,guest-cid={QEMU_CID}"]


def host_script(variants: list[str], rounds: int, argv_of: dict[str, list[str]], mib: int, connects: int) -> str:
    peer = f"{H_BIN}/vsock_peer"
    target = {"enlighten": f"unix:{SOCKET}:{PORT}", "qemu-vhost": f"vsock:{QEMU_CID}:{PORT}"}
    work = {"h2g-1": f"tx 1 {mib}", "h2g-8": f"tx 8 {max(1, mib // 8)}", "g2h-1": f"rx 1 {mib}",
            "g2h-8": f"rx 8 {max(1, mib // 8)}", "connect": f"connect {connects} 0"}
    lines = [
        "set -u",
        *benchlib.TESTHOST_PRELUDE,
        "modprobe vhost_vsock 2>/dev/null",
        'echo "BENCH-INFO vhost_vsock=$([ -c /dev/vhost-vsock ] && echo yes || echo no)"',
        "vhost_ticks() {",
        '    t=0',
        '    for p in /proc/[0-9]*; do',
        '        c=; read -r c < "$p/comm" 2>/dev/null',
        '        case "$c" in "vhost-$1") t=$((t + $(awk \'{ print $14 + $15 }\' "$p/stat" 2>/dev/null || echo 0))) ;; esac',
        '    done',
        '    echo $t',
        "}",
        "ticks() { echo $(( $(awk '{ print $14 + $15 }' /proc/$1/stat) + $(vhost_ticks $1) )); }",
        "bench_case() {",
        '    v=$1; rnd=$2; shift 2',
        '    rm -f /tmp/serial ' + SOCKET,
        '    "$@" > /tmp/vmm.log 2>&1 &',
        '    pid=$!; n=0',
        '    until grep -q BENCH-READY /tmp/serial 2>/dev/null; do',
        '        n=$((n + 1))',
        '        if [ $n -gt 1800 ] || ! kill -0 $pid 2>/dev/null; then',
        '            echo "BENCH-FAILED variant=$v round=$rnd the guest never got ready"',
        '            tail -n 30 /tmp/serial; tail -n 20 /tmp/vmm.log; kill -KILL $pid 2>/dev/null; wait $pid; return 1',
        '        fi',
        '        sleep 0.1',
        '    done',
    ]
    for w in WORKLOADS:
        lines += [
            f'    t0=$(ticks $pid); out=$({peer} run "$TARGET" {work[w]} 2>&1); rc=$?; t1=$(ticks $pid)',
            f'    echo "BENCH-RESULT variant=$v round=$rnd workload={w} rc=$rc ticks=$((t1 - t0)) $(echo $out | tr "\\n" " ")"',
        ]
    lines += ['    kill $pid; wait $pid', "}"]
    for r in range(1, rounds + 1):
        k = (r - 1) % len(variants)
        for v in variants[k:] + variants[:k]:
            cmd = shlex.join(["bench_case", v, str(r), *argv_of[v]])
            guard = ('[ -c /dev/vhost-vsock ] || { echo "BENCH-SKIP variant=qemu-vhost no /dev/vhost-vsock"; false; } && '
                     if v == "qemu-vhost" else "")
            lines.append(f"TARGET={shlex.quote(target[v])}; {guard}{cmd}")
    lines += ["echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


def parse(output: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    out: dict[tuple[str, str], list[dict[str, str]]] = {}
    for line in output.splitlines():
        if not line.startswith("BENCH-RESULT "):
            continue
        kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        out.setdefault((kv.get("variant", "?"), kv.get("workload", "?")), []).append(kv)
    return out


def report(variants: list[str], res: dict, meta: dict[str, str], argv_of: dict[str, list[str]], a, output: str) -> str:
    def med(rows: list[dict[str, str]], key: str) -> float | None:
        vals = [float(r[key]) for r in rows if r.get("rc") == "0" and key in r]
        return statistics.median(vals) if vals else None

    def cpu_per_gb(rows: list[dict[str, str]]) -> float | None:
        vals = [int(r["ticks"]) / CLK_TCK / (int(r["bytes"]) / 1e9)
                for r in rows if r.get("rc") == "0" and "bytes" in r and int(r["bytes"]) > 0]
        return statistics.median(vals) if vals else None

    t = [f"# hv_sock vs vhost-vsock, {meta['date']}", "",
         f"Commit {meta['commit']}, {meta['machine']}, {meta['qemu']}; test-host session {meta['session_s']} s; "
         f"load {meta['load']}. {a.rounds} rounds; streams of {a.mib} MiB (1 stream) and {max(1, a.mib // 8)} MiB "
         f"(8 streams); {a.connects} sequential connects. Medians of the rounds.", "",
         "Command: `python3 bench/vsock.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]) + "`", "",
         "| workload | " + " | ".join(VARIANTS[v] for v in variants) + " | Enlighten / QEMU |",
         "|---|" + "---|" * (len(variants) + 1)]
    for w in WORKLOADS:
        key = "connect_ms" if w == "connect" else "mib_per_s"
        unit = " ms" if w == "connect" else " MiB/s"
        vals = {v: med(res.get((v, w), []), key) for v in variants}
        cells = [f"{vals[v]:.2f}{unit}" if vals[v] is not None else "failed" for v in variants]
        ratio = ""
        if vals.get("enlighten") and vals.get("qemu-vhost"):
            # higher is better for throughput, lower for connect time: the ratio says how many
            # times better Enlighten is (>1) or worse (<1)
            r = vals["qemu-vhost"] / vals["enlighten"] if w == "connect" else vals["enlighten"] / vals["qemu-vhost"]
            ratio = f"{r:.2f}x"
        t.append(f"| {w} | " + " | ".join(cells) + f" | {ratio} |")
    t += ["", "CPU of the VMM process (all threads; QEMU: plus its vhost workers), seconds per GB moved:", "",
          "| workload | " + " | ".join(VARIANTS[v] for v in variants) + " |", "|---|" + "---|" * len(variants)]
    for w in WORKLOADS[:-1]:
        cells = []
        for v in variants:
            c = cpu_per_gb(res.get((v, w), []))
            cells.append(f"{c:.2f}" if c is not None else "-")
        t.append(f"| {w} | " + " | ".join(cells) + " |")
    failures = [line for line in output.splitlines() if line.startswith(("BENCH-FAILED", "BENCH-SKIP"))]
    failures += [line for line in output.splitlines() if line.startswith("BENCH-RESULT") and " rc=0 " not in line]
    if failures:
        t += ["", "Failures:", "", "```", *failures[:40], "```"]
    t += ["", "The VMM command lines (in the test host):", "", "```"]
    t += [shlex.join(argv_of[v]) for v in variants] + ["```", ""]
    return "\n".join(t) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64, help="MiB of the one-stream runs (8 streams: MIB/8 each)")
    ap.add_argument("--connects", type=int, default=100)
    ap.add_argument("--host-cpus", type=int, default=2)
    ap.add_argument("--host-memory", type=int, default=3072)
    ap.add_argument("--build-dir", default=str(benchlib.REPO / "build"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the test-host script and stop")
    ap.add_argument("--save-raw", metavar="FILE")
    a = ap.parse_args(argv)
    variants = benchlib.pick(ap, a.variants, VARIANTS)
    if a.rounds < 1 or a.mib < 1 or a.connects < 1:
        ap.error("--rounds, --mib and --connects must be >= 1")
    try:
        enl = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])["enlighten"] if "enlighten" in variants else None
        img = guest_image.build()
        q = qemu.carry()
        peer = peer_binary(Path(a.build_dir) / "bench")
        initrd = guest_image.make_run_initrd(job=GUEST_JOB, files=[(peer, "/usr/local/bin/vsock_peer")])
    except (ToolError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    h_enl, h_kernel, h_initrd = f"{H_BIN}/enlighten", f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img"
    files: dict[str, str] = dict(q.files)
    files.update({h_kernel: str(img.kernel), h_initrd: str(initrd), f"{H_BIN}/vsock_peer": str(peer)})
    if enl is not None:
        files[h_enl] = str(enl)
    argv_of = {v: vmm_argv(v, h_kernel, h_initrd, h_enl, q, "/tmp/serial") for v in variants}
    script = host_script(variants, a.rounds, argv_of, a.mib, a.connects)
    if a.dry_run:
        print(script)
        return 0
    session_timeout = 300 + len(variants) * a.rounds * (240 + a.mib * 4 + a.connects)
    load_start = benchlib.load_text()
    t0 = time.monotonic()
    log(f"{len(variants)} variants x {a.rounds} rounds in one test host (session timeout {session_timeout} s)")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            res = testhost.run_in_testhost(script, files=files, cpus=a.host_cpus, memory_mib=a.host_memory,
                                           timeout=session_timeout, stream=True)
        output = res.output
    except testhost.TestHostError as e:
        log(f"test-host session failed: {str(e).splitlines()[0]}")
        output = e.output
    except ToolError as e:
        log(f"error: {e}")
        return 1
    if a.save_raw:
        Path(a.save_raw).write_text(output)
    results = parse(output)
    if not results:
        log("no measurements: see the output above")
        return 1
    now = dt.datetime.now(dt.timezone.utc)
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": benchlib.git_commit(), "qemu": qemu.version(),
            "machine": benchlib.machine_name(), "session_s": f"{time.monotonic() - t0:.0f}",
            "load": f"{load_start} / {benchlib.load_text()}"}
    text = report(variants, results, meta, argv_of, a, output)
    sys.stdout.write(text)
    if not a.no_save:
        path = benchlib.save_results(a.results_dir, "vsock", now.strftime("%Y-%m-%d"), text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
