"""Pieces shared by the test-host benchmarks (boot.py, storage.py, net.py, memory.py): building
the binaries, what a report says about the run (commit, machine), where it is saved, the test
host's soft-lockup guard, and (run_session, report_meta) running one test-host session with
--save-raw / --from-raw."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tools"))

from enlighten_tools import qemu, testhost  # noqa: E402
from enlighten_tools.common import ToolError  # noqa: E402

# First lines of a benchmark's test-host script. A soft lockup in the test host's kernel
# (seen twice in benchmark sessions, cause unknown) leaves the VMM stuck where no signal
# reaches it, and the session would wait for its timeout. Panic instead: the panic replays
# the whole kernel log, backtrace included, to the console (panic_print bit 5), and
# panic=-1 ends the session at once. The report then shows that log (lockup_log).
TESTHOST_PRELUDE = [
    "echo 1 > /proc/sys/kernel/softlockup_panic",
    "echo 1 > /proc/sys/kernel/softlockup_all_cpu_backtrace",
    "echo 32 > /proc/sys/kernel/panic_print",
    'echo "BENCH-INFO host_kernel=$(uname -r) host_cpus=$(grep -c ^processor /proc/cpuinfo) '
    'host_mem_kib=$(sed -n \'s/^MemTotal: *\\([0-9]*\\).*/\\1/p\' /proc/meminfo)"',
]


def kv(text: str) -> dict[str, str]:
    """The KEY=VALUE words of a line the test host printed."""
    return dict(f.split("=", 1) for f in text.split() if "=" in f)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def build(build_dir: Path, skip: bool, targets: list[str]) -> dict[str, Path]:
    """Build (or just locate) the CMake `targets` in build_dir; returns target -> path.
    "enlighten" is build/enlighten (or $ENLIGHTEN_BINARY, then not built); every other
    target is build/bench/<target>."""
    paths = {t: (Path(os.environ.get("ENLIGHTEN_BINARY", build_dir / "enlighten")) if t == "enlighten"
                 else build_dir / "bench" / t) for t in targets}
    if not skip:
        if not (build_dir / "build.ninja").is_file() and not (build_dir / "Makefile").is_file():
            raise ToolError(f"{build_dir} is not a configured build directory: run scripts/setup")
        todo = [t for t in targets if not (t == "enlighten" and "ENLIGHTEN_BINARY" in os.environ)]
        log(f"building {' '.join(todo)} in {build_dir}")
        proc = subprocess.run(["cmake", "--build", str(build_dir), "--target", *todo],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise ToolError(f"build failed:\n{proc.stdout[-4000:]}")
    for p in paths.values():
        if not p.is_file():
            raise ToolError(f"{p} does not exist (build it, or drop --no-build)")
    return paths


def lockup_log(output: str, limit: int = 200) -> list[str]:
    """The test host's kernel log from its soft-lockup report on (at most `limit` lines),
    or [] when there was none. The report appears twice: printed as it happened (the
    console shows only that line), then in the panic's replay of the whole log, followed
    by the backtraces: take the last one."""
    lines = output.splitlines()
    hits = [i for i, line in enumerate(lines) if "BUG: soft lockup" in line]
    return [x.rstrip() for x in lines[hits[-1]:hits[-1] + limit]] if hits else []


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              check=True).stdout.strip()
        # --no-optional-locks: do not refresh (write) the index
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status",
                                "--porcelain", "--untracked-files=no"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
        return head + ("+uncommitted changes" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return "unknown CPU"


def results_path(out_dir: Path, prefix: str, date: str) -> Path:
    """<out_dir>/<prefix>-<date>.md, or -2, -3, ... when that exists. The file is created
    (empty) here, so that two benchmarks started together never pick the same name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        p = out_dir / (f"{prefix}-{date}.md" if n == 1 else f"{prefix}-{date}-{n}.md")
        try:
            with open(p, "x"):
                return p
        except FileExistsError:
            n += 1


def save_results(out_dir: str | Path, prefix: str, date: str, text: str) -> Path:
    """Writes a report to a new results_path() under out_dir (created if need be)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = results_path(out, prefix, date)
    path.write_text(text)
    return path


def load_text() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def run_session(script: str, files: dict[str, str], cpus: int, memory_mib: int, timeout: float,
                layers: list[Path] | tuple[Path, ...] = (), save_raw: str | None = None,
                from_raw: str | None = None) -> str | None:
    """What the test host printed running `script` (progress streamed to stderr), or the
    content of a --from-raw file; a session that failed or timed out still gives what it
    printed. None when it could not run at all (the reason is logged). --save-raw keeps it."""
    if from_raw:
        return Path(from_raw).read_text()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            res = testhost.run_in_testhost(script, files=files, cpus=cpus, memory_mib=memory_mib,
                                           timeout=timeout, stream=True, layers=list(layers))
        output = res.output
    except testhost.TestHostError as e:
        log(f"test-host session failed: {str(e).splitlines()[0]}")
        output = e.output
    except ToolError as e:
        log(f"error: {e}")
        return None
    if save_raw:
        Path(save_raw).write_text(output)
    return output


def report_meta(t0: float, load_start: str, from_raw: bool) -> dict[str, str]:
    """The run's header facts: date (and `day` for the file name), commit, this machine's
    QEMU and CPU, the session's length since t0 (time.monotonic()), the load at start / now."""
    now = dt.datetime.now(dt.timezone.utc)
    return {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "day": now.strftime("%Y-%m-%d"),
            "commit": git_commit(), "qemu": qemu.version(), "machine": machine_name(),
            "session_s": "?" if from_raw else f"{time.monotonic() - t0:.0f}",
            "load": f"{load_start} / {load_text()}"}


@dataclass(frozen=True)
class Case:
    """One variant (a benchmark's own Variant, with a .key) with a guest vCPU count."""
    variant: Any
    cpus: int

    @property
    def id(self) -> str:
        return f"{self.variant.key}@{self.cpus}"


def round_robin(cases: list[Case], rounds: int, argv_of: Callable[[Case, int], list[str]]) -> list[str]:
    """Test-host script lines that run every case once a round, the first case rotated each
    round; a case whose round-1 command fails is left out of the later rounds."""
    ok = {c.id: "ok_" + re.sub(r"[^A-Za-z0-9]", "_", c.id) for c in cases}
    lines = []
    for r in range(1, rounds + 1):
        lines.append(f"# round {r}")
        k = (r - 1) % len(cases)
        for c in cases[k:] + cases[:k]:
            cmd = shlex.join(argv_of(c, r))
            lines.append(f"{ok[c.id]}=0; {cmd} && {ok[c.id]}=1" if r == 1 else f'[ "${ok[c.id]}" = 1 ] && {cmd}')
    return lines


def add_session_args(ap: argparse.ArgumentParser, results_dir: Path, host_memory: int, host_cpus: int = 0,
                     host_memory_help: str = "") -> None:
    """The options every test-host benchmark has: test-host size, build, results, raw output.
    host_cpus 0: the benchmark picks max(2, largest --cpus); host_memory 0: it picks, as
    host_memory_help says."""
    ap.add_argument("--host-cpus", type=int, default=host_cpus,
                    help=f"test-host vCPUs (default {host_cpus or 'max(2, largest --cpus)'})")
    ap.add_argument("--host-memory", type=int, default=host_memory,
                    help=f"test-host MiB (default {host_memory_help or host_memory})")
    ap.add_argument("--build-dir", default=str(REPO / "build"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--results-dir", default=str(results_dir))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the test-host script and stop")
    ap.add_argument("--save-raw", metavar="FILE")
    ap.add_argument("--from-raw", metavar="FILE", help="render a report from a --save-raw file")


def pick(ap: argparse.ArgumentParser, text: str, known: Iterable[str], what: str = "variant") -> list[str]:
    """The comma-separated names of an option, in its order; one not in `known` is a usage error."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    known = set(known)
    for k in names:
        if k not in known:
            ap.error(f"unknown {what} {k!r}")
    return names


def cpu_counts(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """--cpus: comma-separated guest vCPU counts, sorted, without repeats."""
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        ap.error("--cpus: comma-separated integers")
