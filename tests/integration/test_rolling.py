"""Updates without dropped requests: rolling replacement, live changes,
draining, PATCH (JSON merge patch), versions and rollback."""

import os
import shutil
import tempfile
import threading
import unittest

from harness import ECHO_WORKER, RFC3339_MS, SgpudTestCase, echo_spec, error_of, unique_name, wait_for


class Load:
    """Threads that send POST /e/NAME/infer one after another until stopped,
    counting the answers by status and the models that answered."""

    def __init__(self, sg, name, threads=4):
        self.sg = sg
        self.name = name
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.statuses = {}
        self.models = {}
        self.failures = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop_event.is_set():
            try:
                resp = self.sg.invoke(self.name, "/infer", body=b"x", timeout=30)
            except Exception as e:  # noqa: BLE001 - counted as a failure
                with self.lock:
                    self.failures.append(repr(e))
                continue
            with self.lock:
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if resp.status == 200 and isinstance(resp.body, dict):
                    model = resp.body.get("model")
                    self.models[model] = self.models.get(model, 0) + 1
                elif len(self.failures) < 20:
                    self.failures.append("%d %r" % (resp.status, resp.body))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join()

    def count(self, model=None):
        with self.lock:
            if model is None:
                return sum(self.statuses.values())
            return self.models.get(model, 0)

    def non_2xx(self):
        with self.lock:
            return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + \
                len([f for f in self.failures if not f[:1].isdigit()])


def slow_spec(name, **overrides):
    base = dict(env={"DELAY_MS": "60"},
                workers={"min": 2, "max": 4, "idle_timeout_s": 60, "max_concurrency": 2,
                         "request_timeout_s": 20})
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = dict(base[k], **v)
        else:
            base[k] = v
    return echo_spec(name, **base)


class RollingTest(SgpudTestCase):
    SHARED = {}

    def live(self, name):
        return [w for w in self.sg.workers(name) if w["state"] in ("starting", "ready")]

    def rolled_to(self, name, version):
        """All live workers ready at `version`, none outdated, none draining."""
        ws = [w for w in self.sg.workers(name) if w["state"] in ("starting", "ready", "draining")]
        if ws and all(w["state"] == "ready" and w["version"] == version for w in ws):
            return ws
        return None

    def test_update_and_rollback_under_load_drop_nothing(self):
        name = unique_name("roll")
        # every worker answers its probes only after 1 s: the old ones serve meanwhile
        warm = {"DELAY_MS": "60", "WARMUP_MS": "1000"}
        first = self.create(slow_spec(name, env=warm))
        old = {w["id"] for w in self.sg.wait_ready(name, 2)}
        with Load(self.sg, name) as load:
            wait_for(lambda: load.count("tiny") >= 20, 30, message="load on the first version")
            at_update = load.count()
            ep = self.sg.update(name, slow_spec(name, env=dict(warm, MODEL="big")))
            self.assertTrue(ep["workers_restart"])
            version = ep["version"]
            ws = wait_for(lambda: self.rolled_to(name, version), 60, message="workers of version %d" % version)
            rolled = load.count()
            self.assertFalse(old & {w["id"] for w in ws}, "an old worker is still live")
            wait_for(lambda: load.count("big") >= 20, 30, message="answers from the new version")
            updated = load.non_2xx()
            back = self.assertOk(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name,
                                             {"version": first["version"]}))
            self.assertEqual(back["version"], version + 1)
            self.assertEqual(back["env"]["MODEL"], "tiny")
            self.assertTrue(back["workers_restart"])
            at_rollback = load.count()
            ws = wait_for(lambda: self.rolled_to(name, version + 1), 60, message="the rolled-back workers")
            rolled_back = load.count()
            before = load.count("tiny")
            wait_for(lambda: load.count("tiny") >= before + 20, 30, message="answers after the rollback")
        print("\nload: %d answers (%d while the update rolled, %d while the rollback rolled), "
              "%d not 2xx after the update, %d in all: %r"
              % (load.count(), rolled - at_update, rolled_back - at_rollback, updated, load.non_2xx(),
                 load.statuses))
        self.assertEqual(load.non_2xx(), 0, "%r %r" % (load.statuses, load.failures))
        for w in ws:
            env = self.assertOk(self.sg.api("GET", "/e/%s/env" % name))
            self.assertEqual(env["MODEL"], "tiny")
            self.assertEqual(w["version"], version + 1)
        self.assertEqual(self.sg.status(name)["workers"]["outdated"], 0)

    def test_live_change_restarts_nobody(self):
        name = unique_name("live")
        self.create(slow_spec(name))
        before = {w["id"]: w["pid"] for w in self.sg.wait_ready(name, 2)}
        ep = self.sg.update(name, slow_spec(name, workers={"max": 5, "idle_timeout_s": 90},
                                            health={"path": "/health", "period_s": 2}))
        self.assertFalse(ep["workers_restart"])
        self.assertEqual(ep["workers"]["max"], 5)
        after = self.sg.workers(name)
        live = {w["id"]: w["pid"] for w in after if w["state"] == "ready"}
        self.assertEqual(live, before)
        self.assertTrue(all(w["version"] == ep["version"] for w in after if w["id"] in before))
        self.assertEqual(ep["status"]["workers"]["draining"], 0)
        self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))

    def test_draining_worker_finishes_its_request(self):
        name = unique_name("drain")
        self.create(slow_spec(name, workers={"min": 1, "max": 2}))
        (first,) = self.sg.wait_ready(name, 1)
        result = {}

        def slow():
            result["resp"] = self.sg.invoke(name, "/infer?delay_ms=4000", body=b"slow", timeout=30)

        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: any(w["id"] == first["id"] and w["in_flight"] == 1 for w in self.sg.workers(name)),
                 10, message="the slow request on the worker")
        ep = self.sg.update(name, slow_spec(name, workers={"min": 1, "max": 2}, env={"MODEL": "v2"}))
        wait_for(lambda: any(w["id"] == first["id"] and w["state"] == "draining" for w in self.sg.workers(name)),
                 30, message="the old worker draining")
        t.join(60)
        self.assertFalse(t.is_alive())
        resp = result["resp"]
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["worker_pid"], first["pid"])
        wait_for(lambda: self.rolled_to(name, ep["version"]), 30, message="the new version alone")

    def test_draining_worker_finishes_its_job(self):
        name = unique_name("drainjob")
        spec = echo_spec(name, type="async", env={"WARMUP_MS": "0"},
                         workers={"min": 1, "max": 2, "idle_timeout_s": 60, "request_timeout_s": 30})
        self.create(spec)
        (first,) = self.sg.wait_ready(name, 1)
        job = self.assertOk(self.sg.api("POST", "/v2/%s/run" % name, {"input": {"sleep_ms": 3000}}))
        wait_for(lambda: any(w["id"] == first["id"] and w["in_flight"] == 1 for w in self.sg.workers(name)),
                 10, message="the job on the worker")
        spec["env"]["MODEL"] = "v2"
        ep = self.sg.update(name, spec)
        wait_for(lambda: any(w["id"] == first["id"] and w["state"] == "draining" for w in self.sg.workers(name)),
                 30, message="the old worker draining")
        done = wait_for(lambda: (lambda s: s if s["status"] not in ("IN_QUEUE", "IN_PROGRESS") else None)(
            self.sg.api("GET", "/v2/%s/status/%s" % (name, job["id"])).body), 30, message="the job to end")
        self.assertEqual(done["status"], "COMPLETED", done)
        self.assertEqual(done["output"]["worker_pid"], first["pid"])
        wait_for(lambda: self.rolled_to(name, ep["version"]), 30, message="the new version alone")

    def test_failing_new_version_keeps_old_workers(self):
        name = unique_name("badroll")
        self.create(slow_spec(name, workers={"min": 1, "max": 2}))
        (first,) = self.sg.wait_ready(name, 1)
        self.sg.update(name, slow_spec(name, workers={"min": 1, "max": 2}, command=["/bin/false"]))
        st = wait_for(lambda: (lambda s: s if s["consecutive_failures"] >= 2 else None)(self.sg.status(name)),
                      30, message="the new version failing")
        self.assertIsNotNone(st["last_error"])
        self.assertEqual(st["workers"]["outdated"], 1)
        resp = self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))
        self.assertEqual(resp["worker_pid"], first["pid"])


class RollingGpuTest(SgpudTestCase):
    """With every GPU taken no new worker can start beside the old ones: one
    old worker drains first, then each new one replaces the next."""

    def test_gpus_short_replace_one_at_a_time(self):
        sg = self.start_sgpud(gpus="a100:2")
        name = unique_name("rollgpu")
        spec = slow_spec(name, gpu={"type": "a100", "count": 1})
        self.create(spec, sg=sg)
        old = {w["id"] for w in sg.wait_ready(name, 2)}
        with Load(sg, name, threads=2) as load:
            wait_for(lambda: load.count("tiny") >= 10, 30, message="load on the first version")
            ep = sg.update(name, slow_spec(name, gpu={"type": "a100", "count": 1}, env={"MODEL": "big"}))
            self.assertTrue(ep["workers_restart"])
            ws = wait_for(lambda: (lambda r: r if len(r) == 2 and all(w["state"] == "ready" and w["version"] ==
                                                                       ep["version"] for w in r) else None)(
                [w for w in sg.workers(name) if w["state"] in ("starting", "ready", "draining")]),
                60, message="two workers of the new version")
            self.assertFalse(old & {w["id"] for w in ws})
            wait_for(lambda: load.count("big") >= 10, 30, message="answers from the new version")
        self.assertEqual(load.non_2xx(), 0, "%r %r" % (load.statuses, load.failures))
        self.assertEqual(sorted(g for w in ws for g in w["gpus"]), [0, 1])
        events = wait_for(lambda: (lambda e: e if any("making room" in l for l in e) else None)(
            [l["line"] for l in sg.logs(name, stream="event", limit=1000)]), 10, message="the drain event")
        self.assertFalse(any("rollout: starting" in l and "for 2 outdated" in l for l in events), events)


class VersionsTest(SgpudTestCase):
    SHARED = {}

    def test_patch_merges(self):
        name = unique_name("patch")
        self.create(echo_spec(name, env={"A": "1", "B": "2"}))
        resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name,
                           {"env": {"A": None, "C": "3"}, "workers": {"max": 3},
                            "command": [ECHO_WORKER, "--delay-ms", "1"]})
        ep = self.assertOk(resp)
        self.assertEqual(ep["version"], 2)
        self.assertNotIn("A", ep["env"])
        self.assertEqual(ep["env"]["B"], "2")
        self.assertEqual(ep["env"]["C"], "3")
        self.assertEqual(ep["workers"]["max"], 3)
        self.assertEqual(ep["workers"]["idle_timeout_s"], 30)  # kept
        self.assertEqual(ep["command"], [ECHO_WORKER, "--delay-ms", "1"])  # arrays replace
        self.assertTrue(ep["workers_restart"])
        ep = self.assertOk(self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"workers": {"min": 1}}))
        self.assertFalse(ep["workers_restart"])
        self.assertEqual(self.sg.get(name)["version"], 3)

    def test_patch_is_validated_like_put(self):
        name = unique_name("patchbad")
        self.create(echo_spec(name))
        for body, status in (({"workers": {"max": -1}}, 422), ({"nope": 1}, 422),
                             ({"name": "other"}, 409), ({"command": None}, 422)):
            with self.subTest(body=body):
                resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name, body)
                self.assertEqual(resp.status, status, resp.body)
        self.assertEqual(self.sg.get(name)["version"], 1)
        self.assertEqual(self.sg.api("PATCH", "/v1/endpoints/%s" % name, "[1]").status, 400)
        self.assertEqual(self.sg.api("PATCH", "/v1/endpoints/nobody-here", {}).status, 404)

    def test_versions_and_rollback(self):
        name = unique_name("vers")
        self.create(echo_spec(name))
        self.sg.update(name, echo_spec(name, env={"MODEL": "big"}))
        self.assertOk(self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"workers": {"max": 4}}))
        body = self.assertOk(self.sg.api("GET", "/v1/endpoints/%s/versions" % name))
        self.assertEqual(body["version"], 3)
        self.assertEqual([v["version"] for v in body["versions"]], [1, 2, 3])
        self.assertEqual(body["versions"][0]["spec"]["env"]["MODEL"], "tiny")
        self.assertEqual(body["versions"][1]["spec"]["env"]["MODEL"], "big")
        self.assertEqual(body["versions"][2]["spec"]["workers"]["max"], 4)
        self.assertRegex(body["versions"][0]["created"], RFC3339_MS)
        ep = self.assertOk(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 1}))
        self.assertEqual(ep["version"], 4)
        self.assertEqual(ep["env"]["MODEL"], "tiny")
        self.assertEqual(ep["workers"]["max"], 2)
        got = self.sg.get(name)
        self.assertEqual(got["version"], 4)
        body = self.assertOk(self.sg.api("GET", "/v1/endpoints/%s/versions" % name))
        self.assertEqual([v["version"] for v in body["versions"]], [1, 2, 3, 4])
        self.assertEqual(body["versions"][3]["spec"], body["versions"][0]["spec"])
        self.assertError(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 9}),
                         404, "not_found")
        self.assertError(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": "1"}),
                         422, "invalid_field")
        self.assertEqual(self.sg.api("GET", "/v1/endpoints/%s/rollback" % name).status, 405)
        self.assertEqual(self.sg.get(name)["version"], 4)
        # a new endpoint of a deleted one's name has only its own versions
        self.sg.delete(name)
        self.create(echo_spec(name))
        body = self.assertOk(self.sg.api("GET", "/v1/endpoints/%s/versions" % name))
        self.assertEqual([v["version"] for v in body["versions"]], [1])

    def test_rollback_is_checked_as_a_put_is(self):
        # version 1 runs a command that is gone by the time of the rollback
        d = tempfile.mkdtemp(prefix="sgpu-it-rb-")
        self.addCleanup(shutil.rmtree, d, True)
        os.chmod(d, 0o755)
        command = os.path.join(d, "worker")
        shutil.copy(ECHO_WORKER, command)
        name = unique_name("rb-gone")
        self.create(echo_spec(name, command=[command]))
        self.sg.update(name, echo_spec(name))
        os.unlink(command)
        resp = self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 1})
        self.assertError(resp, 422, "invalid_field", "command")
        self.assertIn(command, error_of(resp)["message"])
        self.assertEqual(self.sg.get(name)["version"], 2)
        # with the command back, the same rollback goes through
        shutil.copy(ECHO_WORKER, command)
        ep = self.assertOk(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 1}))
        self.assertEqual(ep["version"], 3)
        self.assertEqual(ep["command"], [command])


if __name__ == "__main__":
    unittest.main()
