"""Health probes against workers whose health path misbehaves: wrong statuses, no
answer, an answer that trickles, a head or a body that never ends. Each must be
judged within health.timeout_s and health.startup_timeout_s, cost sgpud neither
memory nor its loop, and leave it serving. A worker made suspect by a request
that failed at the connection level is probed at once and back on a 200.

Run against the ASan build too (SGPU_BUILD_DIR=build-asan): every test stops its
sgpud and checks that it exited cleanly with no sanitizer report in its log."""

import os
import re
import shutil
import tempfile
import unittest

from harness import (HERE, RUN_ID, SANITIZER_MARKS, WORKER_PYTHON, SgpudTestCase, echo_spec, http_request,
                     unique_name, wait_for, worker_path)

HEALTH_WORKER = worker_path(os.path.join(HERE, "health_worker.py"))


class HealthProbeTest(SgpudTestCase):
    def setUp(self):
        self.sgd = self.start_sgpud()
        self.dir = tempfile.mkdtemp(prefix="sgpu-it-health-")
        os.chmod(self.dir, 0o777)  # workers run as an unprivileged user when sgpud is root
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.mode_file = os.path.join(self.dir, "mode")
        self.log_file = os.path.join(self.dir, "log")

    def set_mode(self, mode):
        tmp = self.mode_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(mode)
        os.chmod(tmp, 0o666)
        os.rename(tmp, self.mode_file)

    def start(self, mode, **health):
        """An endpoint of one health_worker whose /health answers as `mode` says."""
        self.set_mode(mode)
        name = unique_name("probe")
        h = {"path": "/health", "period_s": 0.2, "timeout_s": 0.5, "failure_threshold": 2, "startup_timeout_s": 1.5}
        h.update(health)
        self.create({"name": name, "runtime": "process", "command": [WORKER_PYTHON, HEALTH_WORKER],
                     "env": {"SGPU_IT_RUN": RUN_ID, "HEALTH_MODE_FILE": self.mode_file, "HEALTH_LOG": self.log_file},
                     "health": h, "workers": {"min": 1, "max": 1, "idle_timeout_s": 600}}, sg=self.sgd)
        return name

    def worker_log(self):
        try:
            with open(self.log_file) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def wait_failed(self, name, pattern, timeout=20):
        """Waits for a worker of name that ended as failed with last_error matching pattern."""
        def failed():
            return [w for w in self.sgd.workers(name)
                    if w["state"] == "failed" and re.search(pattern, w.get("last_error") or "")]
        return wait_for(failed, timeout, message="a worker failed with %r" % pattern)[0]

    def wait_cut(self, mode, timeout=10):
        """Waits until the worker saw sgpud close a connection it was still answering on."""
        wait_for(lambda: any(line.startswith("cut " + mode) for line in self.worker_log()), timeout,
                      message="sgpud closed the connection of a %r answer (worker log: %r)"
                      % (mode, self.worker_log()[-5:]))

    def assert_serving(self):
        sg = self.sgd
        self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        self.assertEqual(http_request(sg.port, "GET", "/healthz", timeout=10).status, 200)
        name = unique_name("fine")
        self.create(echo_spec(name, workers={"min": 1, "max": 1}), sg=sg)
        self.assertOk(sg.invoke(name, "/infer", body=b"x", timeout=30))

    def tearDown(self):
        sg = self.sgd
        if not sg.alive():
            return
        for name in sg.list_names():
            sg.try_delete(name)
        code = sg.stop()
        log = sg.log_text()
        marks = [m for m in SANITIZER_MARKS if m in log]
        self.assertEqual(marks, [], "sanitizer report in sgpud's log:\n%s" % sg.log_tail(80))
        self.assertEqual(code, 0, "sgpud exited with status %s:\n%s" % (code, sg.log_tail(60)))

    # ---- starting workers

    def test_404_never_makes_a_worker_ready(self):
        name = self.start("status 404")
        w = self.wait_failed(name, r"did not become healthy .*\(last probe: HTTP 404\)")
        self.assertIsNone(w["ready_at"], w)
        self.assertGreaterEqual(sum(1 for line in self.worker_log() if line == "probe status 404"), 2)
        for other in self.sgd.workers(name):
            self.assertIsNone(other["ready_at"], other)
        self.assertEqual(self.sgd.status(name)["workers"]["ready"], 0)
        self.assert_serving()

    def test_silent_health_path_fails_the_start(self):
        name = self.start("silent")
        w = self.wait_failed(name, r"did not become healthy .*\(last probe: no answer\)")
        self.assertIsNone(w["ready_at"], w)
        self.assert_serving()

    def test_trickling_head_is_cut_at_the_probe_timeout(self):
        # Bytes keep coming, so only a deadline on the whole answer ends the probe.
        name = self.start("trickle")
        w = self.wait_failed(name, r"did not become healthy .*\(last probe: no answer\)")
        self.assertIsNone(w["ready_at"], w)
        self.wait_cut("trickle")
        self.assert_serving()

    def test_endless_head_is_cut(self):
        name = self.start("huge-head 200")
        w = self.wait_failed(name, r"did not become healthy .*\(last probe: no answer\)")
        self.assertIsNone(w["ready_at"], w)
        self.wait_cut("huge-head 200")
        self.assert_serving()

    def test_endless_body_of_a_failed_probe_is_cut(self):
        name = self.start("endless 503")
        w = self.wait_failed(name, r"did not become healthy .*\(last probe: HTTP 503\)")
        self.assertIsNone(w["ready_at"], w)
        self.wait_cut("endless 503")
        self.assert_serving()

    def test_endless_body_of_a_200_makes_the_worker_ready_and_is_cut(self):
        # The status decides; the body is dropped up to a bound, then its connection.
        name = self.start("endless 200")
        self.sgd.wait_ready(name, 1, timeout=20)
        self.wait_cut("endless 200")
        self.assert_serving()

    # ---- ready workers

    def test_ready_worker_whose_probe_stalls_is_taken_out(self):
        name = self.start("ok")
        (w0,) = self.sgd.wait_ready(name, 1, timeout=20)
        self.set_mode("trickle")
        w = self.wait_failed(name, r"failed 2 health checks in a row \(no answer\)")
        self.assertEqual(w["id"], w0["id"])
        self.assert_serving()

    def test_ready_worker_answering_404_is_taken_out(self):
        name = self.start("ok")
        (w0,) = self.sgd.wait_ready(name, 1, timeout=20)
        self.set_mode("status 404")
        w = self.wait_failed(name, r"failed 2 health checks in a row \(HTTP 404\)")
        self.assertEqual(w["id"], w0["id"])
        self.assert_serving()

    def test_suspect_worker_is_probed_at_once_and_back_on_200(self):
        # period_s is far beyond the test: only the probe sent at once on suspicion can
        # bring the worker back into rotation.
        name = self.start("ok", period_s=600)
        (w0,) = self.sgd.wait_ready(name, 1, timeout=20)
        probes = len(self.worker_log())
        self.assertError(self.sgd.invoke(name, "/drop", method="POST", body=b"x", timeout=30), 502)
        wait_for(lambda: len(self.worker_log()) > probes, 10, message="a probe after the failed request")
        self.assertOk(self.sgd.invoke(name, "/again", method="POST", body=b"y", timeout=30))
        (w1,) = self.sgd.active_workers(name)
        self.assertEqual(w1["id"], w0["id"])
        self.assertEqual(w1["state"], "ready")
        self.assert_serving()


if __name__ == "__main__":
    unittest.main()
