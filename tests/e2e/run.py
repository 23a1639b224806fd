#!/usr/bin/env python3
"""Run the end-to-end tests and end with a plain summary line "e2e: N passed, N failed".

    python3 tests/e2e/run.py                       # all of tests/e2e/test_*.py
    python3 tests/e2e/run.py test_boot.BadInputTests.test_memory_zero
Same as `python3 -m unittest discover -s tests/e2e -v` apart from the summary line.
"""
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    sys.path.insert(0, str(HERE))
    loader = unittest.TestLoader()
    names = sys.argv[1:]
    suite = (loader.loadTestsFromNames(names) if names
             else loader.discover(str(HERE), pattern="test*.py", top_level_dir=str(HERE)))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped) - len(result.expectedFailures)
    line = f"e2e: {passed} passed, {failed} failed"
    if result.skipped:
        line += f", {len(result.skipped)} skipped"
    sys.stdout.flush()
    print(line, flush=True)
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
