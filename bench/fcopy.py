#!/usr/bin/env python3
"""File-copy benchmark: `enlighten remote copy-file` (Hyper-V's Copy-VMFile service; the
guest's hv_utils and hv_fcopy_daemon write the file) into the default guest, in one
test-host boot.

    python3 bench/fcopy.py                      # 16 and 64 MiB, 3 rounds
    python3 bench/fcopy.py --sizes 8 --rounds 1

The guest is the default guest with its integration services (enlighten.services: its /init
starts hv_fcopy_daemon), 1 vCPU, 512 MiB; the files go to its /tmp (RAM), so the guest's disk
is not what is measured. For each size and round a file of random bytes is made in the test
host's /tmp and copied with --overwrite onto the same guest path. Throughput is what the
API reports: the file's bytes over the time from START_FILE_COPY to the guest's answer to
COMPLETE_FCOPY. CPU is the VMM process's utime + stime over the copy (all threads, the
vCPU's time in the guest included), per MiB.

No other VMM has this service (QEMU's nearest, qemu-ga's guest-file-write, moves base64 in
JSON over virtio-serial), so there is no side-by-side column. A benchmark, not a test: it
exits 0 whatever the numbers are (1 only when it could not run at all). Output: a markdown
report on stdout and in bench/results/fcopy-<date>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402
from benchlib import log  # noqa: E402
from enlighten_tools import guest_image, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402

CLK_TCK = 100
H_BIN = "/enlighten/bench"
H_GUEST = "/enlighten/guest"
API = "/tmp/fcopy-api.sock"


def host_script(argv: list[str], enl: str, sizes: list[int], rounds: int) -> str:
    lines = [
        "set -u",
        *benchlib.TESTHOST_PRELUDE,
        f"{shlex.join(argv)} > /tmp/vmm.log 2>&1 &",
        "pid=$!; n=0",
        "until grep -q ENLIGHTEN-SERVICES-READY /tmp/serial 2>/dev/null; do",
        "    n=$((n + 1))",
        "    if [ $n -gt 1800 ] || ! kill -0 $pid 2>/dev/null; then",
        '        echo "BENCH-FAILED the guest never got ready"; tail -n 30 /tmp/serial; tail -n 20 /tmp/vmm.log; exit 0',
        "    fi",
        "    sleep 0.1",
        "done",
        # hv_fcopy_daemon starts right after the services' marker
        "sleep 2",
        "ticks() { awk '{ print $14 + $15 }' /proc/$1/stat; }",
    ]
    for r in range(1, rounds + 1):
        for size in sizes:
            lines += [
                f"dd if=/dev/urandom of=/tmp/src.bin bs=1048576 count={size} 2>/dev/null",
                "t0=$(ticks $pid)",
                f"out=$({shlex.quote(enl)} remote --api-socket {API} copy-file /tmp/src.bin /tmp/dst.bin --overwrite 2>&1)",
                "rc=$?; t1=$(ticks $pid)",
                f'echo "BENCH-RESULT round={r} mib={size} rc=$rc ticks=$((t1 - t0)) '
                f'$(echo $out | tr -d \'{{}}",\' | sed \'s/: /=/g\')"',
            ]
    lines += [f"{shlex.quote(enl)} remote --api-socket {API} power-off", "wait $pid", "echo BENCH-DONE", "exit 0"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64", help="MiB per file, comma-separated (default 16,64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build-dir", default=str(benchlib.REPO / "build"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--sizes: comma-separated integers")
    if a.rounds < 1 or not sizes or min(sizes) < 1 or max(sizes) > 256:
        ap.error("--rounds >= 1; sizes 1..256 MiB")
    try:
        enl = benchlib.build(Path(a.build_dir), a.no_build, ["enlighten"])["enlighten"]
        img = guest_image.build()
    except ToolError as e:
        log(f"error: {e}")
        return 1
    h_enl, h_kernel, h_initrd = f"{H_BIN}/enlighten", f"{H_GUEST}/bzImage", f"{H_GUEST}/initrd.img"
    vmm = [h_enl, "run", "--kernel", h_kernel, "--initrd", h_initrd, "--memory", "512M", "--cpus", "1",
           "--serial", "file:/tmp/serial", "--api-socket", API, "--display", "off",
           "--cmdline", "console=ttyS0 quiet enlighten.services enlighten.stay"]
    script = host_script(vmm, h_enl, sizes, a.rounds)
    if a.dry_run:
        print(script)
        return 0
    files = {h_enl: str(enl), h_kernel: str(img.kernel), h_initrd: str(img.initrd)}
    load_start = benchlib.load_text()
    t0 = time.monotonic()
    timeout = 300 + a.rounds * sum(sizes) * 4
    try:
        with contextlib.redirect_stdout(sys.stderr):
            res = testhost.run_in_testhost(script, files=files, cpus=2, timeout=timeout, stream=True)
        output = res.output
    except testhost.TestHostError as e:
        log(f"test-host session failed: {str(e).splitlines()[0]}")
        output = e.output
    except ToolError as e:
        log(f"error: {e}")
        return 1
    rows: dict[int, list[dict[str, str]]] = {}
    failures = []
    for line in output.splitlines():
        if line.startswith("BENCH-RESULT "):
            kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            if kv.get("rc") == "0":
                rows.setdefault(int(kv["mib"]), []).append(kv)
            else:
                failures.append(line)
        elif line.startswith("BENCH-FAILED"):
            failures.append(line)
    if not rows:
        log("no measurements: see the output above")
        return 1
    now = dt.datetime.now(dt.timezone.utc)
    t = [f"# File copy into the guest, {now.strftime('%Y-%m-%d %H:%M UTC')}", "",
         f"Commit {benchlib.git_commit()}, {benchlib.machine_name()}; test-host session "
         f"{time.monotonic() - t0:.0f} s; load {load_start} / {benchlib.load_text()}. {a.rounds} rounds, medians.", "",
         "Command: `python3 bench/fcopy.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]) + "`", "",
         "| file | MiB/s (API) | elapsed ms | VMM CPU s per MiB |", "|---|---|---|---|"]
    for size in sizes:
        rs = rows.get(size, [])
        if not rs:
            t.append(f"| {size} MiB | failed | | |")
            continue
        mibs = statistics.median(float(r.get("mib_per_s", 0)) for r in rs)
        ms = statistics.median(float(r.get("elapsed_ms", 0)) for r in rs)
        cpu = statistics.median(int(r["ticks"]) / CLK_TCK / size for r in rs)
        t.append(f"| {size} MiB | {mibs:.2f} | {ms:.0f} | {cpu:.3f} |")
    if failures:
        t += ["", "Failures:", "", "```", *failures[:20], "```"]
    t += ["", "The VMM command line (in the test host):", "", "```", shlex.join(vmm), "```", ""]
    text = "\n".join(t) + "\n"
    sys.stdout.write(text)
    if not a.no_save:
        path = benchlib.save_results(a.results_dir, "fcopy", now.strftime("%Y-%m-%d"), text)
        log(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
