#!/usr/bin/env python3
"""Run the end-to-end tests; print each test's wall time, a summary of the slowest tests, the
time per class and per shared test-host session, and end with a plain summary line
"e2e: N passed, N failed".

    python3 tests/e2e/run.py                       # all of tests/e2e/test_*.py
    python3 tests/e2e/run.py test_boot.BadInputTests.test_memory_zero
Same as `python3 -m unittest discover -s tests/e2e -v` apart from the timings and the
summary line. A test that triggers a shared session (harness.Session) carries its time;
the session table below the summary says what each session cost.
"""
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


class TimedResult(unittest.TextTestResult):
    """Adds "(12.3 s)" to every verbose result line and keeps the times."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[tuple[str, float, str]] = []  # (test id, seconds, outcome)
        self._t0 = 0.0
        self._outcome = "ok"

    def startTest(self, test) -> None:
        self._t0 = time.monotonic()
        self._outcome = "ok"
        super().startTest(test)

    def _note(self, outcome: str) -> None:
        self._outcome = outcome

    def addFailure(self, test, err) -> None:
        self._note("FAIL")
        super().addFailure(test, err)

    def addError(self, test, err) -> None:
        self._note("ERROR")
        super().addError(test, err)

    def addSkip(self, test, reason) -> None:
        self._note("skipped")
        super().addSkip(test, reason)

    def _write_status(self, test, status) -> None:  # the verbose "ok"/"FAIL" line
        super()._write_status(test, f"{status} ({time.monotonic() - self._t0:.1f} s)")

    def stopTest(self, test) -> None:
        self.times.append((test.id(), time.monotonic() - self._t0, self._outcome))
        super().stopTest(test)


def print_timings(result: TimedResult, wall: float) -> None:
    out = sys.stderr
    print("\n=== e2e timings (wall seconds; a shared session's time goes to the test that started it) ===",
          file=out)
    for test_id, seconds, outcome in sorted(result.times, key=lambda t: -t[1]):
        print(f"{seconds:8.1f}  {test_id}{'' if outcome == 'ok' else '  [' + outcome + ']'}", file=out)
    per_class: dict[str, float] = {}
    for test_id, seconds, _ in result.times:
        cls = test_id.rsplit(".", 1)[0]
        per_class[cls] = per_class.get(cls, 0.0) + seconds
    print("--- per class ---", file=out)
    for cls, seconds in sorted(per_class.items(), key=lambda t: -t[1]):
        print(f"{seconds:8.1f}  {cls}", file=out)
    try:
        from harness import session_report
        report = session_report()
    except ImportError:
        report = []
    if report:
        print("--- shared test-host sessions (wall seconds; inside: each run's seconds) ---", file=out)
        for line in report:
            print(line, file=out)
    print(f"{wall:8.1f}  total", file=out, flush=True)


def main() -> int:
    sys.path.insert(0, str(HERE))
    loader = unittest.TestLoader()
    names = sys.argv[1:]
    suite = (loader.loadTestsFromNames(names) if names
             else loader.discover(str(HERE), pattern="test*.py", top_level_dir=str(HERE)))
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(verbosity=2, resultclass=TimedResult)
    result = runner.run(suite)
    print_timings(result, time.monotonic() - t0)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    line = f"e2e: {passed} passed, {failed} failed"
    if result.skipped:
        line += f", {len(result.skipped)} skipped"
    sys.stdout.flush()
    print(line, flush=True)
    # A skipped test is a check that was not made: it fails the run.
    return 0 if result.wasSuccessful() and result.testsRun > 0 and not result.skipped else 1


if __name__ == "__main__":
    sys.exit(main())
