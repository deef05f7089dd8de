#!/usr/bin/env python3
"""Console test in a real browser: Playwright (playwright-core) drives Debian's
headless Chromium against a real sgpud with real echo workers.

Installs the npm packages if they are missing (install.sh), starts sgpud, then
runs console.test.mjs, which logs in, finds the endpoint, watches a worker's log
line arrive in the log panel, filters it, pauses, and sees usage grow; it also
checks that the console's API calls are refused without a valid key; then
manage.test.mjs, the management flows (create, invoke, edit, roll back, stop,
jobs, delete, keys, secrets, empty and error states, 420 px), volumes.test.mjs
(volumes: create, mount through the endpoint form, 409 on delete while mounted),
charts.test.mjs (cold starts and queue delay of a first request); then
noprices.test.mjs against a second sgpud without prices. Name .mjs files as
arguments to run only them. Screenshots
go to $SGPU_BUILD_DIR/browser-screenshots.

Exits 77 (skipped) with a message only when Chromium is missing or cannot start.
"""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from harness import BUILD_DIR, ECHO_WORKER, RUN_ID, Sgpud, echo_spec, scaled  # noqa: E402

SKIP = 77


def find_chromium():
    for name in (os.environ.get("SGPU_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def main():
    node = shutil.which("node")
    if not node:
        print("FAIL: node is missing (run scripts/install-deps.sh)")
        return 1
    subprocess.run(["bash", os.path.join(HERE, "install.sh")], check=True)
    chromium = find_chromium()
    if not chromium:
        print("SKIP: chromium is not installed (apt-get install chromium, or scripts/install-deps.sh)")
        return SKIP
    env = dict(os.environ, CHROMIUM=chromium, SGPU_TEST_TIMEOUT_SCALE=str(scaled(1)))
    probe = subprocess.run([node, os.path.join(HERE, "console.test.mjs"), "--probe"], env=env,
                           capture_output=True, text=True, timeout=scaled(120))
    if probe.returncode != 0:
        print("SKIP: chromium (%s) cannot start here:\n%s%s" % (chromium, probe.stdout, probe.stderr))
        return SKIP

    shots = os.path.join(BUILD_DIR, "browser-screenshots")
    os.makedirs(shots, exist_ok=True)
    sg = Sgpud(gpus="a100:2", args=["--price", "a100=0.0004"])
    try:
        sg.start()
        name = "console-echo"
        sg.create(echo_spec(name, gpu={"type": "a100", "count": 1},
                            workers={"min": 1, "max": 1, "idle_timeout_s": 600}))
        sg.wait_ready(name, 1, timeout=20)
        env.update(SGPU_URL=sg.base_url, SGPU_KEY=sg.key, SGPU_ENDPOINT=name, SHOTS_DIR=shots)
        env.update(SGPU_WORKER=ECHO_WORKER, SGPU_IT_RUN=RUN_ID, SGPU_IT_OWNER=sg.owner)
        tests = [a for a in sys.argv[1:] if a.endswith(".mjs") and a != "noprices.test.mjs"]
        if not sys.argv[1:]:
            tests = ["console.test.mjs", "manage.test.mjs", "volumes.test.mjs", "charts.test.mjs"]
        rc = 0
        for test in tests:
            rc = run_test(node, test, env, scaled(300), sg, "sgpud log")
            if rc != 0:
                break
        if rc == 0 and (not sys.argv[1:] or "noprices.test.mjs" in sys.argv[1:]):
            rc = run_without_prices(node, env)
        print("screenshots: %s" % shots)
        return rc
    finally:
        sg.close()


def run_test(node, test, env, timeout, sg, log_title):
    """Runs one .mjs file and prints what it printed. On a failure the sgpud
    log comes first and the test's output is printed again after it, so that
    the failing check ends the output (where a log's tail shows it)."""
    proc = subprocess.run([node, os.path.join(HERE, test)], env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stdout.write("----- %s -----\n%s\n" % (log_title, sg.log_tail(80)))
        sys.stdout.write("----- %s failed (exit %d); its output again -----\n%s"
                         % (test, proc.returncode, proc.stdout[-6000:]))
    sys.stdout.flush()
    return proc.returncode


def run_without_prices(node, env):
    """noprices.test.mjs against a second sgpud that has no prices."""
    sg = Sgpud(gpus="a100:1")
    try:
        sg.start()
        name = "console-noprice"
        sg.create(echo_spec(name, gpu={"type": "a100", "count": 1},
                            workers={"min": 1, "max": 1, "idle_timeout_s": 600}))
        sg.wait_ready(name, 1, timeout=20)
        env = dict(env, SGPU_URL=sg.base_url, SGPU_KEY=sg.key, SGPU_ENDPOINT=name)
        return run_test(node, "noprices.test.mjs", env, scaled(120), sg, "sgpud log (no prices)")
    finally:
        sg.close()


if __name__ == "__main__":
    sys.exit(main())
