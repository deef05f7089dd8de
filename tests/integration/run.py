#!/usr/bin/env python3
"""Run one integration test module the way meson should count it.

Usage: run.py MODULE [unittest names...]

`python3 -m unittest` exits 0 when every test was skipped, so meson would
count a module that tested nothing as passed. This runner runs MODULE's tests
verbosely and exits:

  1   when a test failed or errored, or when the module holds no test at all;
  77  when no test passed because every one was skipped (meson reports SKIP),
      after printing why each was skipped;
  0   otherwise. Tests skipped next to passing ones are listed with their
      reasons so that a partial skip is visible in the test log.
"""

import sys
import unittest

SKIP = 77


class CountingResult(unittest.TextTestResult):
    """A verbose result that also counts the tests that passed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def main(argv):
    if len(argv) < 2:
        print("usage: run.py MODULE [unittest names...]", file=sys.stderr)
        return 2
    names = argv[2:] if len(argv) > 2 else [argv[1]]
    suite = unittest.defaultTestLoader.loadTestsFromNames(names)
    if suite.countTestCases() == 0:
        print("%s: no tests found" % argv[1], file=sys.stderr)
        return 1
    runner = unittest.TextTestRunner(verbosity=2, resultclass=CountingResult)
    result = runner.run(suite)
    if not result.wasSuccessful():
        return 1
    # A class or module skipped in setUpClass/setUpModule shows up here as one
    # entry for the whole class, not one per test.
    for test, reason in result.skipped:
        print("SKIPPED %s: %s" % (test, reason))
    if result.passed == 0 and result.skipped:
        print("%s: every test was skipped" % argv[1])
        return SKIP
    if result.passed == 0:
        # Only expected failures: nothing was shown to work.
        print("%s: no test passed" % argv[1], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
