#!/usr/bin/env python3
"""Check run.py's exit codes on small fixture modules: 77 when every test was
skipped (class-level or per test), 0 when one passed beside a skip, 1 on a
failure or when the module holds no test."""

import os
import subprocess
import sys
import tempfile

RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")

FIXTURES = {
    "fx_class_skip": ("import unittest\n"
                      "class A(unittest.TestCase):\n"
                      "    @classmethod\n"
                      "    def setUpClass(cls):\n"
                      "        raise unittest.SkipTest('no frobnicator here')\n"
                      "    def test_a(self): pass\n", 77, "no frobnicator here"),
    "fx_each_skip": ("import unittest\n"
                     "class A(unittest.TestCase):\n"
                     "    def test_a(self): self.skipTest('reason a')\n"
                     "    def test_b(self): self.skipTest('reason b')\n", 77, "reason b"),
    "fx_partial": ("import unittest\n"
                   "class A(unittest.TestCase):\n"
                   "    def test_a(self): self.skipTest('reason a')\n"
                   "    def test_b(self): pass\n", 0, "reason a"),
    "fx_fail": ("import unittest\n"
                "class A(unittest.TestCase):\n"
                "    def test_a(self): self.skipTest('reason a')\n"
                "    def test_b(self): self.fail('boom')\n", 1, "boom"),
    "fx_empty": ("import unittest\n", 1, "no tests found"),
}


def main():
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for name, (src, want_rc, want_text) in FIXTURES.items():
            with open(os.path.join(d, name + ".py"), "w") as f:
                f.write(src)
        for name, (src, want_rc, want_text) in FIXTURES.items():
            env = dict(os.environ, PYTHONPATH=d, PYTHONDONTWRITEBYTECODE="1")
            p = subprocess.run([sys.executable, RUN, name], env=env, cwd=d, timeout=60,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            ok = p.returncode == want_rc and want_text in p.stdout
            print("%s %s: rc %d (want %d)" % ("ok" if ok else "FAIL", name, p.returncode, want_rc))
            if not ok:
                print(p.stdout)
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
