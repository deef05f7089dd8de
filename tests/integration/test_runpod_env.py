"""What a worker of an "async": {"protocol": "runpod"} endpoint is given: the
RUNPOD_* variables RunPod's SDK reads (the /worker/ URLs on sgpud, its pod id,
endpoint id, token and ping interval), set after the spec's env so that the
spec cannot override them; the token is HMAC-SHA256 of the worker id under
DATA_DIR/worker.key. Without a health path such a worker is never probed and
stays starting until it takes a job; health.startup_timeout_s still fails one
that never does. "runpod" on a sync endpoint, and on a Slurm endpoint whose
workers could not reach sgpud, is refused with 422 naming async.protocol.

Run against the ASan build too (SGPU_BUILD_DIR=build-asan): each daemon is stopped
at the end and must exit cleanly with no sanitizer report in its log."""

import hashlib
import hmac
import json
import os
import shutil
import stat
import tempfile
import unittest

import test_slurm

from harness import (RUN_ID, SANITIZER_MARKS, WORKER_PYTHON, SgpudTestCase, echo_spec, unique_name,
                     wait_for)

# Prints the worker's environment as one log line, then listens on $PORT and
# says so in its log for every connection: a health probe would show there.
ENV_WORKER = r"""
import json, os, socket
keep = ("PORT", "SGPU_WORKER_ID", "SGPU_ENDPOINT")
env = {k: v for k, v in os.environ.items() if k.startswith("RUNPOD_") or k in keep}
print("RPENV " + json.dumps(env, sort_keys=True), flush=True)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    c, _ = s.accept()
    print("PROBED", flush=True)
    c.close()
"""


def runpod_spec(name, **over):
    spec = {
        "name": name,
        "type": "async",
        "runtime": "process",
        "command": [WORKER_PYTHON, "-c", ENV_WORKER],
        "env": {"SGPU_IT_RUN": RUN_ID},
        "async": {"protocol": "runpod"},
        "workers": {"min": 1, "max": 1, "idle_timeout_s": 600},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = dict(spec[key], **value)
        else:
            spec[key] = value
    return spec


class RunpodEnvTest(SgpudTestCase):
    SHARED = {"gpus": "a100:2"}

    @classmethod
    def tearDownClass(cls):
        sg = cls.sg
        code = sg.stop() if sg is not None and sg.alive() else 0
        log = sg.log_text() if sg is not None else ""
        super().tearDownClass()
        marks = [m for m in SANITIZER_MARKS if m in log]
        if marks or code != 0:
            raise AssertionError("sgpud exited with %s, sanitizer marks %r" % (code, marks))

    def lines(self, name, **params):
        return [l["line"] for l in self.sg.logs(name, **params)]

    def worker_env(self, name, timeout=20):
        """The RUNPOD_* environment the worker of name printed, and that worker."""
        def printed():
            for line in self.lines(name):
                if line.startswith("RPENV "):
                    return json.loads(line[len("RPENV "):])
            return None
        env = wait_for(printed, timeout, message="the worker of %s printed its environment" % name)
        (w,) = [w for w in self.sg.workers(name) if w["id"] == env["SGPU_WORKER_ID"]]
        return env, w

    def expected_token(self, worker_id):
        with open(os.path.join(self.sg.data_dir, "worker.key"), "rb") as f:
            key = f.read()
        self.assertEqual(len(key), 32)
        return hmac.new(key, b"sgpu-worker:" + worker_id.encode(), hashlib.sha256).hexdigest()

    def assert_runpod_env(self, env, w, name, gpu, interval_ms):
        base = "%s/worker/%s" % (self.sg.base_url, name)
        self.assertEqual(env["RUNPOD_WEBHOOK_GET_JOB"], "%s/job-take/$ID?gpu=%s" % (base, gpu))
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_OUTPUT"], "%s/job-done/$RUNPOD_POD_ID/$ID?gpu=%s" % (base, gpu))
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_STREAM"], "%s/job-stream/$RUNPOD_POD_ID/$ID?gpu=%s" % (base, gpu))
        self.assertEqual(env["RUNPOD_WEBHOOK_PING"], "%s/ping/$RUNPOD_POD_ID?gpu=%s" % (base, gpu))
        self.assertEqual(env["RUNPOD_POD_ID"], w["id"])
        self.assertEqual(env["RUNPOD_ENDPOINT_ID"], name)
        self.assertRegex(env["RUNPOD_AI_API_KEY"], r"^[0-9a-f]{64}$")
        self.assertEqual(env["RUNPOD_AI_API_KEY"], self.expected_token(w["id"]))
        self.assertEqual(env["RUNPOD_PING_INTERVAL"], str(interval_ms))
        self.assertEqual(env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"], "true")
        self.assertEqual(env["PORT"], str(w["port"]))

    def test_env_of_a_runpod_worker(self):
        name = unique_name("rpenv")
        # The spec tries to set what sgpud assigns: sgpud's values win.
        ep = self.create(runpod_spec(name, env={"SGPU_IT_RUN": RUN_ID, "RUNPOD_POD_ID": "spoofed",
                                                "RUNPOD_AI_API_KEY": "spoofed", "RUNPOD_WEBHOOK_GET_JOB": "x",
                                                "PORT": "1"},
                                     gpu={"type": "a100", "count": 1}))
        self.assertEqual(ep["async"]["protocol"], "runpod")
        self.assertIsNone(ep["health"]["path"])
        env, w = self.worker_env(name)
        self.assert_runpod_env(env, w, name, "a100", 10000)
        # Without a health path nothing makes it ready but a job take.
        self.assertEqual(w["state"], "starting")
        key = os.stat(os.path.join(self.sg.data_dir, "worker.key"))
        self.assertEqual(stat.S_IMODE(key.st_mode), 0o600)
        self.assertEqual(key.st_size, 32)

    def test_env_without_gpu_and_ping_interval(self):
        name = unique_name("rpenv")
        self.create(runpod_spec(name, **{"async": {"protocol": "runpod", "ping_timeout_s": 4.5}}))
        env, w = self.worker_env(name)
        self.assert_runpod_env(env, w, name, "none", 1500)

    def test_http_workers_get_no_runpod_env(self):
        name = unique_name("rphttp")
        self.create(runpod_spec(name, **{"async": {"protocol": "http"}, "health": {"startup_timeout_s": 600}}))
        env, _ = self.worker_env(name)
        self.assertEqual(sorted(k for k in env if k.startswith("RUNPOD_")), [])

    def test_fields_round_trip_through_get_and_patch(self):
        name = unique_name("rprt")
        self.create(runpod_spec(name, **{"async": {"protocol": "runpod", "ping_timeout_s": 9, "take_wait_s": 3},
                                         "workers": {"min": 0, "max": 1}}))
        got = self.sg.get(name)
        self.assertEqual((got["async"]["protocol"], got["async"]["ping_timeout_s"], got["async"]["take_wait_s"]),
                         ("runpod", 9, 3))
        self.assertIsNone(got["health"]["path"])
        resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"async": {"take_wait_s": 5}})
        self.assertOk(resp)
        got = self.sg.get(name)
        self.assertEqual((got["async"]["protocol"], got["async"]["take_wait_s"]), ("runpod", 5))
        self.assertIsNone(got["health"]["path"])
        # Back to http: the default health path returns.
        self.assertOk(self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"async": {"protocol": "http"}}))
        got = self.sg.get(name)
        self.assertEqual((got["async"]["protocol"], got["health"]["path"]), ("http", "/health"))

    def test_runpod_on_a_sync_endpoint_is_422(self):
        spec = echo_spec(unique_name("rpsync"), **{"async": {"protocol": "runpod"}})
        self.assertError(self.sg.api("POST", "/v1/endpoints", spec), 422, field="async.protocol")
        spec = runpod_spec(unique_name("rpbad"), **{"async": {"protocol": "grpc"}})
        self.assertError(self.sg.api("POST", "/v1/endpoints", spec), 422, field="async.protocol")
        spec = runpod_spec(unique_name("rpbad"), **{"async": {"protocol": "runpod", "take_wait_s": 61}})
        self.assertError(self.sg.api("POST", "/v1/endpoints", spec), 422, field="async.take_wait_s")
        # An update to sync with the protocol left in is refused the same way.
        name = unique_name("rpupd")
        self.create(runpod_spec(name, workers={"min": 0, "max": 1}))
        resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"type": "sync"})
        self.assertError(resp, 422, field="async.protocol")

    def test_explicit_health_path_is_probed_as_before(self):
        name = unique_name("rpprobe")
        spec = echo_spec(name, type="async", workers={"min": 1, "max": 1, "idle_timeout_s": 600},
                         **{"async": {"protocol": "runpod"}})
        self.create(spec)
        (w,) = self.sg.wait_ready(name, 1, timeout=20)
        self.assertEqual(self.sg.get(name)["health"]["path"], "/health")

    def test_worker_that_never_takes_fails_its_start(self):
        name = unique_name("rpslow")
        self.create(runpod_spec(name, health={"startup_timeout_s": 1.5, "period_s": 0.2}))
        env, w = self.worker_env(name)
        self.assertEqual(w["state"], "starting")

        def failed():
            return [x for x in self.sg.workers(name) if x["id"] == w["id"] and x["state"] == "failed"]
        (f,) = wait_for(failed, 20, message="the worker that took no job failed its start")
        self.assertRegex(f["last_error"], r"took no job within health\.startup_timeout_s=1\.5s")
        self.assertIsNone(f["ready_at"])
        # It listened on $PORT the whole time and was never probed.
        self.assertNotIn("PROBED", self.lines(name, worker=w["id"]))
        events = self.lines(name, stream="event")
        self.assertEqual([l for l in events if "health probe" in l], [])
        self.assertTrue(any("took no job within health.startup_timeout_s" in l for l in events), events)
        st = self.sg.status(name)
        self.assertRegex(st["last_error"] or "", r"took no job")


class RunpodRemoteTest(SgpudTestCase):
    """A Slurm endpoint's workers run on other nodes: without advertise_url a
    loopback listen address is refused; with it, the workers are given it."""

    def slurm_sgpud(self, extra):
        tmp = tempfile.mkdtemp(prefix="sgpu-it-rp-")
        self.addCleanup(shutil.rmtree, tmp, True)
        cfg = os.path.join(tmp, "config.json")
        conf = {"slurm": {"partition": "gpu"}, "stop_grace_s": 3}
        conf.update(extra)
        with open(cfg, "w") as f:
            json.dump(conf, f)
        sg = self.start_sgpud(config=cfg)
        self.addCleanup(self.assert_clean_exit, sg)
        with open(os.path.join(sg.data_dir, "slurm", "tag")) as f:
            prefix = "sgpu:%s:" % f.read().strip()
        return sg, prefix

    def assert_clean_exit(self, sg):
        code = sg.stop() if sg.alive() else 0
        log = sg.log_text()
        self.assertEqual([m for m in SANITIZER_MARKS if m in log], [], sg.log_tail(80))
        self.assertEqual(code, 0, sg.log_tail(60))

    def spec(self, name, **over):
        spec = runpod_spec(name, runtime="slurm", gpu={"type": "a100", "count": 1}, workers={"min": 0, "max": 1},
                           slurm={"time_limit": "15"})
        spec.update(over)
        return spec

    def test_slurm_runpod_needs_advertise_url(self):
        sg, _ = self.slurm_sgpud({})
        resp = sg.api("POST", "/v1/endpoints", self.spec(unique_name("rpslurm")))
        self.assertError(resp, 422, field="async.protocol")
        self.assertIn("advertise_url", json.dumps(resp.body))
        # An http endpoint of the same runtime is fine.
        name = unique_name("rpslurm")
        self.assertOk(sg.api("POST", "/v1/endpoints", self.spec(name, **{"async": {"protocol": "http"}})), 201)
        sg.delete(name)

    def test_slurm_worker_gets_the_advertised_url(self):
        """Through a real one-machine Slurm cluster (scripts/slurm-up.sh, as
        test_slurm starts it): the job's worker sees advertise_url in its URLs."""
        test_slurm.setUpModule()
        if test_slurm._skip:
            self.skipTest(test_slurm._skip)
        sg, prefix = self.slurm_sgpud({"advertise_url": "http://10.11.12.13:8080/"})
        self.addCleanup(cancel_jobs, prefix)
        name = unique_name("rpslurm")
        self.create(self.spec(name, workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)

        def printed():
            for line in [l["line"] for l in sg.logs(name)]:
                if line.startswith("RPENV "):
                    return json.loads(line[len("RPENV "):])
            return None
        env = wait_for(printed, 90, message="the Slurm worker of %s printed its environment" % name)
        (w,) = [w for w in sg.workers(name) if w["id"] == env["SGPU_WORKER_ID"]]
        self.assertEqual(w["runtime"], "slurm")
        base = "http://10.11.12.13:8080/worker/%s" % name
        self.assertEqual(env["RUNPOD_WEBHOOK_GET_JOB"], "%s/job-take/$ID?gpu=a100" % base)
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_OUTPUT"], "%s/job-done/$RUNPOD_POD_ID/$ID?gpu=a100" % base)
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_STREAM"], "%s/job-stream/$RUNPOD_POD_ID/$ID?gpu=a100" % base)
        self.assertEqual(env["RUNPOD_WEBHOOK_PING"], "%s/ping/$RUNPOD_POD_ID?gpu=a100" % base)
        self.assertEqual(env["RUNPOD_POD_ID"], w["id"])
        self.assertEqual(env["RUNPOD_ENDPOINT_ID"], name)
        with open(os.path.join(sg.data_dir, "worker.key"), "rb") as f:
            key = f.read()
        want = hmac.new(key, b"sgpu-worker:" + w["id"].encode(), hashlib.sha256).hexdigest()
        self.assertEqual(env["RUNPOD_AI_API_KEY"], want)
        self.assertEqual(env["RUNPOD_PING_INTERVAL"], "10000")
        self.assertEqual(env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"], "true")
        self.assertEqual(w["state"], "starting")


def cancel_jobs(prefix):
    for jid, state in test_slurm.jobs_with_comment(prefix).items():
        if state in test_slurm.LIVE:
            test_slurm.slurm("scancel", jid, check=False)


if __name__ == "__main__":
    unittest.main()
