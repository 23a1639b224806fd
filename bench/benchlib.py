"""Pieces shared by the test-host benchmarks (boot.py, storage.py): building the binaries,
what a report says about the run (commit, machine), where it is saved, and the test host's
soft-lockup guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tools"))

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
    """<out_dir>/<prefix>-<date>.md, or -2, -3, ... when that exists."""
    p = out_dir / f"{prefix}-{date}.md"
    n = 2
    while p.exists():
        p = out_dir / f"{prefix}-{date}-{n}.md"
        n += 1
    return p


def save_results(out_dir: str | Path, prefix: str, date: str, text: str) -> Path:
    """Writes a report to a new results_path() under out_dir (created if need be)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = results_path(out, prefix, date)
    path.write_text(text)
    return path


def load_text() -> str:
    return f"{os.getloadavg()[0]:.1f}"
