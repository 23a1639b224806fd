#!/usr/bin/env python3
"""The fuzz campaign (issue 16): every libFuzzer target of build-asan/fuzz/ for at least
--seconds AND at least --min-execs executions (whichever comes later), starting from the
corpus kept in fuzz/corpus/<target>/; what it found that covers new code is merged back
into fuzz/corpus/ (libFuzzer's -merge=1, so the kept corpora stay small), and CI's short
runs (scripts/fuzz) start from those. Writes bench/results/fuzz-<date>.md: per target the
seconds, executions, executions per second, coverage (libFuzzer's `cov` edges and `ft`
features) at the start and the end, the corpus before and after, and crashes.

    python3 bench/fuzz_campaign.py                       # all targets, 600 s / 1M each, 1 at a time
    python3 bench/fuzz_campaign.py --targets fuzz_ring,fuzz_scsi --seconds 60 --min-execs 0
    python3 bench/fuzz_campaign.py --jobs 2 --no-merge   # two at a time; leave fuzz/corpus alone
    python3 bench/fuzz_campaign.py --max-seconds 900     # stop chasing 1M executions at 900 s

A crash (or a leak, timeout, OOM) leaves its input in build-asan/campaign/crashes/<target>/
and the target's row says so; the script then exits 1. A target stopped by --max-seconds
before --min-execs is reported as short of it, with the executions it made.
Build first: scripts/fuzz 1 (or ninja -C build-asan).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import benchlib  # noqa: E402

# Targets whose inputs reach their deepest code only above libFuzzer's default -max_len (4 KiB,
# or the largest kept input): whole RNDIS message streams and 64 KiB GSO frames.
MAX_LEN = {"fuzz_rndis": 72_000, "fuzz_net_offload": 66_000}

_COV = re.compile(r"cov: (\d+) ft: (\d+)")
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)


@dataclass
class Outcome:
    target: str
    seconds: float = 0.0
    execs: int = 0
    cov_start: int | None = None
    ft_start: int | None = None
    cov_end: int | None = None
    ft_end: int | None = None
    corpus_before: int = 0
    corpus_after: int = 0
    peak_rss_mb: int = 0
    crashes: list[str] = field(default_factory=list)
    error: str = ""
    short: bool = False  # stopped by --max-seconds before --min-execs
    slow: list[str] = field(default_factory=list)  # slow-unit artifacts, with their time when run again

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.error


def count(d: Path) -> int:
    return sum(1 for p in d.iterdir() if p.is_file()) if d.is_dir() else 0


def fuzz_once(binary: Path, work: Path, crashes: Path, log: Path, extra: list[str]) -> tuple[int, str]:
    cmd = [str(binary), "-print_final_stats=1", "-timeout=25", "-rss_limit_mb=2560",
           f"-artifact_prefix={crashes}/{binary.name}-", *extra, str(work)]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        env = dict(os.environ)
        if shutil.which("llvm-symbolizer"):  # reports with function names and lines
            env.setdefault("ASAN_SYMBOLIZER_PATH", shutil.which("llvm-symbolizer") or "")
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return proc.returncode, log.read_text(errors="replace")


def campaign_one(binary: Path, args: argparse.Namespace, root: Path) -> Outcome:
    name = binary.name
    out = Outcome(name)
    kept = REPO / "fuzz" / "corpus" / name
    work = root / "corpus" / name
    crashes = root / "crashes" / name  # a directory per target: with --jobs 2 they run at once
    log = root / f"{name}.log"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    crashes.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    if kept.is_dir():
        for p in kept.iterdir():
            if p.is_file():
                shutil.copy2(p, work / p.name)
    out.corpus_before = count(kept)
    benchlib.log(f"{name}: {args.seconds} s and {args.min_execs:,} executions at least, "
                 f"from {out.corpus_before} kept inputs")
    t0 = time.monotonic()
    before = set(crashes.iterdir())
    limit = [f"-max_len={MAX_LEN[name]}"] if name in MAX_LEN else []
    rounds = [[f"-max_total_time={args.seconds}", *limit]]
    while rounds:
        rc, text = fuzz_once(binary, work, crashes, log, rounds.pop())
        stats = {k: int(v) for k, v in _STAT.findall(text.rsplit("$ ", 1)[-1])}
        out.execs += stats.get("number_of_executed_units", 0)
        out.peak_rss_mb = max(out.peak_rss_mb, stats.get("peak_rss_mb", 0))
        covs = _COV.findall(text)
        if covs:
            if out.cov_start is None:
                out.cov_start, out.ft_start = map(int, covs[0])
            out.cov_end, out.ft_end = map(int, covs[-1])
        if rc != 0:
            tail = "\n".join(text.splitlines()[-30:])
            out.error = f"exit {rc}"
            benchlib.log(f"{name}: FAILED (exit {rc}):\n{tail}")
            break
        if out.execs < args.min_execs:
            left = args.max_seconds - (time.monotonic() - t0) if args.max_seconds else None
            if left is not None and left < 5:
                out.short = True
            else:
                cap = [f"-max_total_time={int(left)}"] if left is not None else []
                rounds.append([f"-runs={args.min_execs - out.execs}", *cap, *limit])
    out.seconds = time.monotonic() - t0
    new = sorted(set(crashes.iterdir()) - before)
    # libFuzzer's slow-unit-* files are inputs that took over -report_slow_units (10 s) once:
    # on a loaded machine that may be the machine. Each is run again alone and reported with
    # both times; a crash, leak, timeout or OOM fails the target.
    for p in new:
        if p.name.startswith(f"{name}-slow-unit-"):
            t = time.monotonic()
            subprocess.run([str(binary), "-runs=1", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out.slow.append(f"{p.name} (again alone: {time.monotonic() - t:.1f} s)")
        else:
            out.crashes.append(str(p))
    if out.ok and not args.no_merge:
        kept.mkdir(parents=True, exist_ok=True)
        # -merge=1 KEPT WORK: into KEPT, the inputs of WORK that add coverage (fuzz_once puts
        # its directory argument last, after the extra arguments).
        rc, _ = fuzz_once(binary, work, crashes, log, ["-merge=1", str(kept)])
        if rc != 0:
            out.error = f"merge exit {rc}"
    out.corpus_after = count(kept) if not args.no_merge else count(work)
    benchlib.log(f"{name}: {out.execs:,} executions in {out.seconds:.0f} s, cov {out.cov_start} -> {out.cov_end}, "
                 f"corpus {out.corpus_before} -> {out.corpus_after}, "
                 f"{'ok' if out.ok else 'FAILED: ' + (out.error or ', '.join(out.crashes))}")
    return out


def report(outcomes: list[Outcome], args: argparse.Namespace, started: str, load_start: str,
           pending: list[str], commit: str) -> str:
    lines = [
        f"# Fuzz campaign, {started}",
        "",
        f"- command: `python3 bench/fuzz_campaign.py {' '.join(args.argv)}`".rstrip(),
        f"- commit at the start: {commit} (the targets are built from build-asan as it is: "
        "`scripts/fuzz 1` first builds them from the tree); "
        f"machine: {benchlib.machine_name()}; "
        f"load average {load_start} at the start, {benchlib.load_text()} now",
        f"- build: `{args.build}` (clang 16, ASan + UBSan, -D_GLIBCXX_ASSERTIONS, libFuzzer); "
        f"each target at least {args.seconds} s and {args.min_execs:,} executions"
        f"{f' (but at most {args.max_seconds} s)' if args.max_seconds else ''}, {args.jobs} at a time",
        "- cov: libFuzzer's covered edges, ft: its features; start = after the kept corpus was read, "
        "end = at the last status line",
        "- corpus: inputs kept in fuzz/corpus/<target>/ before and after the merge (-merge=1 keeps "
        "only inputs that add coverage)",
        "",
        "| target | seconds | executions | exec/s | cov start → end | ft start → end | corpus before → after "
        "| peak RSS MiB | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        rate = o.execs / o.seconds if o.seconds else 0
        result = (f"ok, **short of {args.min_execs:,}** executions at the {args.max_seconds} s cap" if o.short
                  else "ok") if o.ok else ("crash: " + ", ".join(Path(c).name for c in o.crashes) if o.crashes else o.error)
        if o.slow:
            result += "; slow units: " + ", ".join(o.slow)
        lines.append(f"| {o.target} | {o.seconds:.0f} | {o.execs:,} | {rate:,.0f} | {o.cov_start} → {o.cov_end} "
                     f"| {o.ft_start} → {o.ft_end} | {o.corpus_before} → {o.corpus_after} | {o.peak_rss_mb} "
                     f"| {result} |")
    if pending:
        lines += ["", f"Not run (yet): {', '.join(pending)}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build-asan"), help="the fuzz build (default build-asan)")
    ap.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    ap.add_argument("--seconds", type=int, default=600, help="at least this long per target (default 600)")
    ap.add_argument("--min-execs", type=int, default=1_000_000, help="at least this many executions (default 1M)")
    ap.add_argument("--max-seconds", type=int, default=0,
                    help="stop a target here even short of --min-execs, and say so (default: no cap)")
    ap.add_argument("--jobs", type=int, default=1, help="targets at a time (default 1)")
    ap.add_argument("--no-merge", action="store_true", help="leave fuzz/corpus/ as it is")
    ap.add_argument("--results", default=str(HERE / "results"), help="where the report goes")
    ap.add_argument("--no-save", action="store_true", help="print the report only")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    build = Path(args.build)
    binaries = sorted(p for p in (build / "fuzz").glob("fuzz_*") if p.is_file() and os.access(p, os.X_OK))
    if args.targets:
        wanted = args.targets.split(",")
        missing = [t for t in wanted if not (build / "fuzz" / t).is_file()]
        if missing:
            print(f"fuzz_campaign: no such target in {build}/fuzz: {', '.join(missing)}", file=sys.stderr)
            return 2
        binaries = [build / "fuzz" / t for t in wanted]
    if not binaries:
        print(f"fuzz_campaign: no fuzz targets in {build}/fuzz (scripts/fuzz 1 builds them)", file=sys.stderr)
        return 2
    root = build / "campaign"
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_start = benchlib.load_text()
    commit = benchlib.git_commit()
    results_file = None if args.no_save else benchlib.results_path(Path(args.results),
                                                                    "fuzz", dt.date.today().isoformat())
    outcomes: list[Outcome] = []
    names = [b.name for b in binaries]

    def write() -> str:
        done = {o.target for o in outcomes}
        text = report(sorted(outcomes, key=lambda o: o.target), args, started, load_start,
                      [n for n in names if n not in done], commit)
        if results_file:  # rewritten after each target, so that a stopped campaign still reports
            results_file.parent.mkdir(parents=True, exist_ok=True)
            results_file.write_text(text)
        return text

    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for fut in cf.as_completed([pool.submit(campaign_one, b, args, root) for b in binaries]):
            outcomes.append(fut.result())
            write()
    print(write())
    if results_file:
        benchlib.log(f"report: {results_file}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
