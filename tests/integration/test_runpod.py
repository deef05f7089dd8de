"""Async endpoints with "protocol": "runpod": RunPod handler workers pull their jobs from
sgpud (take, batch take, result, stream, progress, stop, ping under /worker/{name}/...),
driven through RunPod's client routes (/v2/{name}/run, runsync, status, stream, cancel).

The worker is tests/integration/runpod_worker.py, which speaks the protocol as RunPod's
Python SDK 1.12 does (test_runpod_worker_selfcheck checks it against a stand-in server);
what its handler does comes from each job's input (see its docstring)."""

import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import unittest
import urllib.parse

from harness import (HERE, RUN_ID, WORKER_PYTHON, SgpudTestCase, http_request, scaled, unique_name,
                     wait_for, worker_path)

RUNPOD_WORKER = worker_path(os.path.join(HERE, "runpod_worker.py"))
_CONFIG_DIR = tempfile.mkdtemp(prefix="sgpu-it-rp-")
SMALL_BODY_CONFIG = os.path.join(_CONFIG_DIR, "sgpud-small-body.json")
with open(SMALL_BODY_CONFIG, "w") as f:
    json.dump({"max_body_bytes": 65536}, f)
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
ACTIVE = ("starting", "ready", "draining")


def rp_spec(name, workers=None, env=None, async_=None, **extra):
    """An async endpoint of RunPod workers (no health path: ready at the first take)."""
    w = {"min": 1, "max": 1, "idle_timeout_s": 60, "max_concurrency": 1}
    w.update(workers or {})
    e = {"SGPU_IT_RUN": RUN_ID}
    e.update(env or {})
    a = {"protocol": "runpod", "ping_timeout_s": 3, "take_wait_s": 2}
    a.update(async_ or {})
    spec = {"name": name, "type": "async", "runtime": "process",
            "command": [WORKER_PYTHON, RUNPOD_WORKER], "env": e, "workers": w, "async": a}
    spec.update(extra)
    return spec


def shared_dir(test):
    """A directory the workers (an unprivileged user when sgpud runs as root) can write."""
    d = tempfile.mkdtemp(prefix="sgpu-it-rp-")
    os.chmod(d, 0o777)
    test.addCleanup(shutil.rmtree, d, True)
    return d


def proc_environ(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        items = f.read().split(b"\0")
    env = {}
    for item in items:
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode()] = v.decode("utf-8", "replace")
    return env


class RpWorker:
    """A running worker as the tests see it: its id, pid, environment and token, and the
    paths of its protocol routes built from its environment as the SDK builds them."""

    def __init__(self, info):
        self.id = info["id"]
        self.pid = info["pid"]
        self.env = proc_environ(self.pid)
        self.token = self.env["RUNPOD_AI_API_KEY"]

    @staticmethod
    def target(url):
        parts = urllib.parse.urlsplit(url)
        return parts.path + ("?" + parts.query if parts.query else "")

    def take(self, batch_size=None, in_progress=0):
        url = self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.id)
        if batch_size:
            url = url.replace("/job-take/", "/job-take-batch/") + "&batch_size=%d" % batch_size
        return self.target(url + "&job_in_progress=%d" % in_progress)

    def stop(self):
        return self.target(self.env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.id)
                           .replace("/job-take/", "/job-stop/"))

    def done(self, job_id, is_stream=False):
        url = self.env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", self.id).replace("$ID", job_id)
        return self.target(url + "&isStream=%s" % ("true" if is_stream else "false"))

    def stream(self, job_id):
        url = self.env["RUNPOD_WEBHOOK_POST_STREAM"].replace("$RUNPOD_POD_ID", self.id).replace("$ID", job_id)
        return self.target(url + "&isStream=false")

    def ping(self, job_ids=None):
        url = self.env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", self.id)
        params = ([("job_id", ",".join(job_ids))] if job_ids else []) + [("runpod_version", "1.12.0")]
        return self.target(url + "&" + urllib.parse.urlencode(params))


def wire(sg, method, path, token=None, body=None, bearer=False, timeout=30):
    """A request as a worker sends it: the raw token (or "Bearer <token>"), and a result body
    with the SDK's form-urlencoded content type."""
    headers = {}
    if token is not None:
        headers["Authorization"] = ("Bearer " + token) if bearer else token
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
    return http_request(sg.port, method, path, body=body, headers=headers, timeout=timeout)


def read_record(path):
    """The worker's record of its posts: [(worker, pid, kind, job, status, ms)]."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                w, pid, kind, job, status, ms = line.split()
                out.append((w, int(pid), kind, job, status, int(ms)))
    except FileNotFoundError:
        pass
    return out


class RunPodBase(SgpudTestCase):

    # ---- client side

    def run_job(self, name, job_input, sg=None, **extra):
        body = dict(extra, input=job_input)
        resp = (sg or self.sg).api("POST", "/v2/%s/run" % name, body)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["status"], "IN_QUEUE", resp.body)
        return resp.body["id"]

    def runsync(self, name, job_input, sg=None):
        resp = (sg or self.sg).api("POST", "/v2/%s/runsync" % name, {"input": job_input}, timeout=100)
        self.assertEqual(resp.status, 200, resp.body)
        return resp.body

    def status(self, name, job_id, sg=None):
        resp = (sg or self.sg).api("GET", "/v2/%s/status/%s" % (name, job_id))
        self.assertEqual(resp.status, 200, resp.body)
        return resp.body

    def wait_status(self, name, job_id, pred, timeout=20, sg=None, message=None):
        return wait_for(lambda: (lambda s: s if pred(s) else None)(self.status(name, job_id, sg)),
                        timeout, message=message or "job %s" % job_id)

    def wait_final(self, name, job_id, timeout=30, sg=None):
        return self.wait_status(name, job_id, lambda s: s["status"] in FINAL, timeout, sg,
                                "job %s to end" % job_id)

    # ---- endpoints and workers

    def endpoint(self, prefix, ready=None, sg=None, **kwargs):
        sg = sg or self.sg
        name = unique_name(prefix)
        self.create(rp_spec(name, **kwargs), sg=sg)
        count = (kwargs.get("workers") or {}).get("min", 1) if ready is None else ready
        if count:
            sg.wait_ready(name, count, timeout=30)
        return name

    def rp_workers(self, name, sg=None):
        return [RpWorker(w) for w in (sg or self.sg).ready_workers(name)]

    def stdout_lines(self, name, text, sg=None):
        """The worker lines holding `text`, as (worker id, line)."""
        return [(l.get("worker"), l["line"]) for l in (sg or self.sg).logs(name, stream="stdout", q=text)
                if text in l["line"]]

    def wait_line(self, name, line, sg=None, timeout=20):
        """The ids of the workers that wrote `line`, once one did; on timeout the workers'
        last lines are in the failure."""
        try:
            return wait_for(lambda: [w for w, l in self.stdout_lines(name, line, sg) if l == line], timeout,
                            message="worker line %r" % line)
        except AssertionError as e:
            lines = ["%s %s" % (l.get("worker"), l["line"]) for l in (sg or self.sg).logs(name, limit=40)]
            raise AssertionError("%s\nlast lines of %s:\n%s" % (e, name, "\n".join(lines))) from None


class RunPodTest(RunPodBase):
    SHARED = {"gpus": "a100:2"}

    # ---- the worker's environment

    def test_worker_environment(self):
        name = self.endpoint("rpenv")
        (info,) = self.sg.ready_workers(name)
        env = proc_environ(info["pid"])
        base = "http://127.0.0.1:%d/worker/%s" % (self.sg.port, name)
        self.assertEqual(env["RUNPOD_WEBHOOK_GET_JOB"], base + "/job-take/$ID?gpu=none")
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_OUTPUT"], base + "/job-done/$RUNPOD_POD_ID/$ID?gpu=none")
        self.assertEqual(env["RUNPOD_WEBHOOK_POST_STREAM"], base + "/job-stream/$RUNPOD_POD_ID/$ID?gpu=none")
        self.assertEqual(env["RUNPOD_WEBHOOK_PING"], base + "/ping/$RUNPOD_POD_ID?gpu=none")
        self.assertEqual(env["RUNPOD_POD_ID"], info["id"])
        self.assertEqual(env["RUNPOD_ENDPOINT_ID"], name)
        self.assertEqual(env["RUNPOD_PING_INTERVAL"], "1000")  # max(1000, 3 s * 1000 / 3)
        self.assertEqual(env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"], "true")
        with open(os.path.join(self.sg.data_dir, "worker.key"), "rb") as f:
            key = f.read()
        self.assertEqual(len(key), 32)
        self.assertEqual(env["RUNPOD_AI_API_KEY"],
                         hmac.new(key, ("sgpu-worker:" + info["id"]).encode(), hashlib.sha256).hexdigest())
        # the spec's env cannot override them
        other = unique_name("rpenv")
        self.create(rp_spec(other, env={"RUNPOD_POD_ID": "mine", "RUNPOD_AI_API_KEY": "mine"}))
        (w,) = self.sg.wait_ready(other, 1, timeout=30)
        env = proc_environ(w["pid"])
        self.assertEqual(env["RUNPOD_POD_ID"], w["id"])
        self.assertNotEqual(env["RUNPOD_AI_API_KEY"], "mine")
        # the GPU type goes into each URL
        gpu = unique_name("rpenv")
        self.create(rp_spec(gpu, gpu={"type": "a100", "count": 1}))
        (w,) = self.sg.wait_ready(gpu, 1, timeout=30)
        env = proc_environ(w["pid"])
        base = "http://127.0.0.1:%d/worker/%s" % (self.sg.port, gpu)
        self.assertEqual(env["RUNPOD_WEBHOOK_GET_JOB"], base + "/job-take/$ID?gpu=a100")
        self.assertEqual(env["RUNPOD_WEBHOOK_PING"], base + "/ping/$RUNPOD_POD_ID?gpu=a100")

    # ---- client routes

    def test_run_then_status_completes(self):
        name = self.endpoint("rprun")
        (w,) = self.sg.ready_workers(name)
        job = self.run_job(name, {"echo": {"prompt": "hi", "n": [1, 2]}})
        final = self.wait_final(name, job)
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(final["output"], {"prompt": "hi", "n": [1, 2]})
        self.assertEqual(final["workerId"], w["id"])
        self.assertEqual(final["attempts"], 1, final)
        for key in ("delayTime", "executionTime"):
            self.assertIsInstance(final[key], int, final)
            self.assertGreaterEqual(final[key], 0, final)
        self.wait_line(name, "take %s" % job)
        self.wait_line(name, "done %s 200" % job)
        health = self.sg.api("GET", "/v2/%s/health" % name).body
        self.assertGreaterEqual(health["jobs"]["completed"], 1, health)

    def test_execution_time_is_the_handlers(self):
        """executionTime runs from the take to the final post: a handler that sleeps 0.5 s
        cannot show less."""
        name = self.endpoint("rpexec")
        final = self.runsync(name, {"sleep": 0.5, "echo": 1})
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertGreaterEqual(final["executionTime"], 500, final)

    def test_runsync(self):
        name = self.endpoint("rpsync")
        final = self.runsync(name, {"echo": {"answer": 42}})
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", {"answer": 42}), final)
        final = self.runsync(name, [1, "two"])
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", [1, "two"]), final)
        final = self.runsync(name, {})  # a result body without "output"
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertNotIn("error", final)

    def test_stream_in_order_then_aggregate(self):
        name = self.endpoint("rpstream")
        chunks = ["tok-0", {"tok": 1}, [2], "tok-3", 4]
        job = self.run_job(name, {"stream": chunks, "interval": 0.1})
        got, status = [], None
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline:
            resp = self.sg.api("GET", "/v2/%s/stream/%s?wait=2000" % (name, job))
            self.assertEqual(resp.status, 200, resp.body)
            self.assertIsInstance(resp.body["stream"], list, resp.body)
            for item in resp.body["stream"]:
                self.assertEqual(set(item), {"output"}, resp.body)
                got.append(item["output"])
            status = resp.body["status"]
            if status in FINAL and not resp.body["stream"]:
                break  # how RunPod's client ends its stream loop
        self.assertEqual(got, chunks)
        self.assertEqual(status, "COMPLETED")
        final = self.status(name, job)
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", chunks), final)

    def test_progress_shows_in_status_while_in_progress(self):
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpprog")
        job = self.run_job(name, {"progress": [{"step": 1, "of": 2}], "gate": gate, "echo": "full"})
        seen = self.wait_status(name, job, lambda s: s.get("output") == {"step": 1, "of": 2}, 20,
                                message="the progress in /status")
        self.assertEqual(seen["status"], "IN_PROGRESS", seen)
        open(gate, "w").close()
        final = self.wait_final(name, job)
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", "full"), final)

    def test_cancel_running_job_reaches_the_worker(self):
        name = self.endpoint("rpcancel")
        (w,) = self.sg.ready_workers(name)
        job = self.run_job(name, {"sleep": 120})
        self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")
        # The worker runs the job (a stop that comes before the handler runs is
        # dropped by the SDK: "No in-progress job").
        self.assertEqual(self.wait_line(name, "take %s" % job), [w["id"]])
        resp = self.sg.api("POST", "/v2/%s/cancel/%s" % (name, job))
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["status"], "CANCELLED", resp.body)
        self.assertEqual(self.wait_line(name, "stop %s" % job), [w["id"]])
        # the slot is free again once the worker takes its next job
        after = self.runsync(name, {"echo": "next"})
        self.assertEqual((after["status"], after["output"]), ("COMPLETED", "next"), after)
        self.assertEqual(after["workerId"], w["id"])
        self.assertEqual(self.status(name, job)["status"], "CANCELLED")
        self.assertEqual(self.stdout_lines(name, "done %s" % job), [])

    def test_execution_timeout_reaches_the_worker(self):
        name = self.endpoint("rptimeout")
        (w,) = self.sg.ready_workers(name)
        job = self.run_job(name, {"sleep": 120}, policy={"executionTimeout": 3000})
        self.assertEqual(self.wait_line(name, "take %s" % job), [w["id"]])
        final = self.wait_final(name, job)
        self.assertEqual(final["status"], "TIMED_OUT", final)
        self.assertEqual(self.wait_line(name, "stop %s" % job), [w["id"]])
        after = self.runsync(name, {"echo": "next"})
        self.assertEqual((after["status"], after["output"], after["workerId"]), ("COMPLETED", "next", w["id"]), after)
        self.assertEqual(self.status(name, job)["status"], "TIMED_OUT")

    def test_queued_and_taken_jobs_scale_workers(self):
        """The scaler counts queued and taken jobs as for push workers: four jobs, one
        slot a worker, max 2: two workers run two of them, two wait; then back to zero."""
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpscale", ready=0, workers={"min": 0, "max": 2, "idle_timeout_s": 1})
        jobs = [self.run_job(name, {"gate": gate, "echo": i}) for i in range(4)]

        def two_running():
            states = [self.status(name, j) for j in jobs]
            running = [s for s in states if s["status"] == "IN_PROGRESS"]
            return states if len(running) == 2 else None
        states = wait_for(two_running, 30, message="two jobs running")
        self.assertEqual(len({s["workerId"] for s in states if s["status"] == "IN_PROGRESS"}), 2, states)
        self.assertEqual(sorted(s["status"] for s in states), ["IN_PROGRESS"] * 2 + ["IN_QUEUE"] * 2, states)
        self.assertEqual(len(self.sg.active_workers(name)), 2)
        open(gate, "w").close()
        for i, j in enumerate(jobs):
            final = self.wait_final(name, j)
            self.assertEqual((final["status"], final["output"]), ("COMPLETED", i), final)
        wait_for(lambda: self.sg.active_workers(name) == [], 60, message="back to zero workers")

    def test_handler_that_raises_fails_the_job(self):
        name = self.endpoint("rpraise")
        final = self.runsync(name, {"raise": "out of cheese"})
        self.assertEqual(final["status"], "FAILED", final)
        self.assertNotIn("output", final)
        err = final["error"]
        info = json.loads(err) if isinstance(err, str) else err
        self.assertEqual(info["error_message"], "out of cheese", final)
        self.assertEqual(info["error_type"], "<class 'RuntimeError'>", final)
        self.assertIn("Traceback", info["error_traceback"])

    def test_returned_error_fails_the_job(self):
        name = self.endpoint("rperror")
        final = self.runsync(name, {"error": "bad input"})
        self.assertEqual(final["status"], "FAILED", final)
        self.assertEqual(final["error"], "bad input", final)
        health = self.sg.api("GET", "/v2/%s/health" % name).body
        self.assertGreaterEqual(health["jobs"]["failed"], 1, health)

    def test_refresh_worker_replaces_the_worker(self):
        name = self.endpoint("rprefresh")
        (old,) = self.sg.ready_workers(name)
        final = self.runsync(name, {"refresh": True, "echo": "x"})
        self.assertEqual(final["status"], "COMPLETED", final)
        self.assertEqual(final["workerId"], old["id"])
        self.assertEqual(final["output"], {"echo": "x"})
        nxt = self.runsync(name, {"echo": "after"})
        self.assertEqual((nxt["status"], nxt["output"]), ("COMPLETED", "after"), nxt)
        self.assertNotEqual(nxt["workerId"], old["id"], "the refreshed worker took another job")
        wait_for(lambda: old["id"] not in [w["id"] for w in self.sg.active_workers(name)], 30,
                 message="the refreshed worker %s to go" % old["id"])
        self.assertEqual(self.wait_line(name, "take %s" % nxt["id"]), [nxt["workerId"]])

    def test_worker_killed_mid_job_is_retried_on_the_other(self):
        d = shared_dir(self)
        marker = os.path.join(d, "died")
        name = self.endpoint("rpkill", workers={"min": 2, "max": 2}, async_={"max_retries": 1})
        job = self.run_job(name, {"exit": marker, "echo": "survived"})
        final = self.wait_final(name, job, timeout=40)
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", "survived"), final)
        self.assertEqual((final["attempts"], final["retries"]), (2, 1), final)
        (died,) = self.wait_line(name, "exit %s" % job)
        self.assertNotEqual(final["workerId"], died, final)
        self.assertTrue(os.path.exists(marker))
        events = [l["line"] for l in self.sg.logs(name, stream="event")]
        self.assertTrue(any(job in e or "lost" in e for e in events), "no event tells of the lost job: %r" % events)

    @staticmethod
    def thaw(pid):
        try:
            os.killpg(pid, signal.SIGCONT)
        except OSError:
            pass

    def test_worker_whose_pings_stop_loses_its_jobs(self):
        """A worker frozen (SIGSTOP: no pings, no posts) for ping_timeout_s: its job runs
        again on the other worker; once thawed, its late result is refused."""
        d = shared_dir(self)
        gate, record = os.path.join(d, "gate"), os.path.join(d, "record")
        name = self.endpoint("rpfreeze", workers={"min": 2, "max": 2}, async_={"max_retries": 1},
                             env={"TEST_RECORD_FILE": record})
        job = self.run_job(name, {"gate": gate, "echo": "once"})
        first = self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")["workerId"]
        (frozen,) = [w for w in self.sg.ready_workers(name) if w["id"] == first]
        os.killpg(frozen["pid"], signal.SIGSTOP)
        self.addCleanup(self.thaw, frozen["pid"])
        moved = self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS" and s["workerId"] != first,
                                 30, message="job %s to run on the other worker" % job)
        self.assertEqual(moved["retries"], 1, moved)
        self.thaw(frozen["pid"])
        open(gate, "w").close()
        final = self.wait_final(name, job)
        self.assertEqual((final["status"], final["output"], final["workerId"]), ("COMPLETED", "once", moved["workerId"]))
        accepted = [r for r in read_record(record) if r[2] == "result" and r[3] == job and r[4].startswith("2")]
        self.assertEqual([r[0] for r in accepted], [moved["workerId"]], read_record(record))

    def test_batch_take_runs_max_concurrency_jobs_at_once(self):
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpbatch", workers={"max_concurrency": 3}, env={"TEST_CONCURRENCY": "3"})
        (w,) = self.sg.ready_workers(name)
        jobs = [self.run_job(name, {"gate": gate, "echo": i}) for i in range(3)]
        for j in jobs:
            s = self.wait_status(name, j, lambda s: s["status"] == "IN_PROGRESS")
            self.assertEqual(s["workerId"], w["id"])
        health = self.sg.api("GET", "/v2/%s/health" % name).body
        self.assertEqual(health["jobs"]["inProgress"], 3, health)
        open(gate, "w").close()
        for i, j in enumerate(jobs):
            final = self.wait_final(name, j)
            self.assertEqual((final["status"], final["output"]), ("COMPLETED", i), final)

    def test_batch_take_never_exceeds_max_concurrency(self):
        """A worker asking for 4 jobs at once (batch_size=4) gets at most
        workers.max_concurrency (3); the fourth waits for a free slot."""
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpbatch4", workers={"max_concurrency": 3}, env={"TEST_CONCURRENCY": "4"})
        jobs = [self.run_job(name, {"gate": gate, "echo": i}) for i in range(4)]

        def in_progress():
            states = [self.status(name, j)["status"] for j in jobs]
            return states if states.count("IN_PROGRESS") >= 3 else None
        states = wait_for(in_progress, 20, message="three jobs in progress")
        self.assertEqual(sorted(states), ["IN_PROGRESS"] * 3 + ["IN_QUEUE"], states)
        open(gate, "w").close()
        for i, j in enumerate(jobs):
            final = self.wait_final(name, j)
            self.assertEqual((final["status"], final["output"]), ("COMPLETED", i), final)

    def test_scale_from_zero_and_back(self):
        """No health path: a worker started for a queued job is ready at its first take."""
        name = self.endpoint("rpzero", ready=0, workers={"min": 0, "max": 1, "idle_timeout_s": 1})
        self.assertEqual(self.sg.active_workers(name), [])
        final = self.runsync(name, {"echo": "from zero"})
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", "from zero"), final)
        wait_for(lambda: self.sg.active_workers(name) == [], 60, message="back to zero workers")

    # ---- hostile or wrong worker traffic

    def test_wrong_credentials_are_401(self):
        name = self.endpoint("rpauth", workers={"min": 2, "max": 2})
        a, b = self.rp_workers(name)
        other = self.endpoint("rpauth2")
        (c,) = self.rp_workers(other)
        job = self.run_job(name, {"echo": 1})
        self.wait_final(name, job)
        routes = {
            "take": ("GET", a.take(), None),
            "take-batch": ("GET", a.take(batch_size=2), None),
            "stop": ("GET", a.stop(), None),
            "done": ("POST", a.done(job), {"output": "forged"}),
            "stream": ("POST", a.stream(job), {"output": "forged"}),
            "ping": ("GET", a.ping(), None),
        }
        for what, (method, path, body) in routes.items():
            for token in (None, "", "wrong", a.token[:-1] + ("0" if a.token[-1] != "0" else "1"), b.token, c.token):
                resp = wire(self.sg, method, path, token, body)
                self.assertError(resp, 401, "unauthorized", msg="%s with %r" % (what, token))
        # the worker's own token passes, raw or as a bearer token
        self.assertEqual(wire(self.sg, "GET", a.ping(), a.token).status, 200)
        self.assertEqual(wire(self.sg, "GET", a.ping(), a.token, bearer=True).status, 200)
        # a worker's token is no key to the control API or the client routes
        for token in (a.token, c.token):
            for bearer in (False, True):
                for method, path, body in (("GET", "/v1/endpoints", None),
                                           ("GET", "/v1/endpoints/%s" % name, None),
                                           ("POST", "/v2/%s/run" % name, {"input": {}}),
                                           ("GET", "/v2/%s/status/%s" % (name, job), None)):
                    hdr = {"Authorization": ("Bearer " if bearer else "") + token}
                    resp = http_request(self.sg.port, method, path, body=body, headers=hdr)
                    self.assertError(resp, 401, msg="%s %s with a worker token" % (method, path))
        # nor to another endpoint's routes, with its own worker id in the path
        wrong_ep = a.ping().replace("/worker/%s/" % name, "/worker/%s/" % other)
        self.assertError(wire(self.sg, "GET", wrong_ep, a.token), 401, "unauthorized")
        unknown_ep = a.ping().replace("/worker/%s/" % name, "/worker/no-such-ep/")
        self.assertError(wire(self.sg, "GET", unknown_ep, a.token), 401, "unauthorized")
        final = self.status(name, job)
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", 1), final)

    def test_token_dies_with_its_worker(self):
        name = self.endpoint("rpdead", workers={"max": 2})
        (a,) = self.rp_workers(name)
        self.assertEqual(wire(self.sg, "GET", a.ping(), a.token).status, 200)
        final = self.runsync(name, {"refresh": True})
        self.assertEqual(final["status"], "COMPLETED", final)
        wait_for(lambda: a.id not in [w["id"] for w in self.sg.active_workers(name)], 30,
                 message="worker %s to be replaced" % a.id)
        self.assertError(wire(self.sg, "GET", a.ping(), a.token), 401, "unauthorized")
        self.assertError(wire(self.sg, "GET", a.take(), a.token), 401, "unauthorized")

    def test_results_from_a_worker_that_does_not_hold_the_job_are_409(self):
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpheld", workers={"min": 2, "max": 2})
        workers = {w.id: w for w in self.rp_workers(name)}
        job = self.run_job(name, {"gate": gate, "echo": "real"})
        running = self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")
        owner = workers[running["workerId"]]
        (intruder,) = [w for w in workers.values() if w.id != owner.id]
        for body in ({"output": "forged"}, {"error": "forged"}, {"status": "IN_PROGRESS", "output": "forged"}):
            self.assertError(wire(self.sg, "POST", intruder.done(job), intruder.token, body), 409, "not_held",
                             msg=repr(body))
        self.assertError(wire(self.sg, "POST", intruder.stream(job), intruder.token, {"output": "forged"}),
                         409, "not_held")
        # a job id nobody ever had is not the worker's either (sgpud does not look in the
        # store for it: finished jobs and unknown ones answer alike)
        self.assertError(wire(self.sg, "POST", owner.done("0" * 36), owner.token, {"output": 1}), 409, "not_held")
        running = self.status(name, job)
        self.assertEqual(running["status"], "IN_PROGRESS")
        self.assertNotEqual(running.get("output"), "forged", running)
        open(gate, "w").close()
        final = self.wait_final(name, job)
        self.assertEqual((final["status"], final["output"], final["workerId"]), ("COMPLETED", "real", owner.id))
        stream = self.sg.api("GET", "/v2/%s/stream/%s?wait=0" % (name, job)).body
        self.assertNotIn({"output": "forged"}, stream.get("stream") or [], stream)

    def test_results_for_a_finished_job_are_409(self):
        """The worker that completed a job posts again (as a stale retry would): 409
        not_held, and the job keeps its first result."""
        name = self.endpoint("rpheld2")
        done = self.runsync(name, {"echo": "first"})
        self.assertEqual(done["status"], "COMPLETED", done)
        (holder,) = self.rp_workers(name)
        self.assertEqual(holder.id, done["workerId"])
        for body in ({"output": "second"}, {"error": "late"}, {"status": "IN_PROGRESS", "output": "p"}):
            self.assertError(wire(self.sg, "POST", holder.done(done["id"]), holder.token, body), 409, "not_held",
                             msg=repr(body))
        self.assertError(wire(self.sg, "POST", holder.stream(done["id"]), holder.token, {"output": "x"}),
                         409, "not_held")
        again = self.status(name, done["id"])
        self.assertEqual((again["status"], again["output"]), ("COMPLETED", "first"), again)

    def test_result_after_cancel_is_refused(self):
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpcanc409")
        (w,) = self.rp_workers(name)
        job = self.run_job(name, {"gate": gate})
        self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")
        self.assertEqual(self.sg.api("POST", "/v2/%s/cancel/%s" % (name, job)).body["status"], "CANCELLED")
        self.assertError(wire(self.sg, "POST", w.done(job), w.token, {"output": "late"}), 409, "not_held")
        self.assertEqual(self.status(name, job)["status"], "CANCELLED")

    def test_malformed_results_are_400(self):
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpbad")
        (w,) = self.rp_workers(name)
        job = self.run_job(name, {"gate": gate, "echo": "good"})
        self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")
        for body in ("{not json", "\"unterminated", b"\xff\xfe{}", "{\"output\": 1} trailing"):
            self.assertError(wire(self.sg, "POST", w.done(job), w.token, body), 400, "bad_request", msg=repr(body))
            self.assertError(wire(self.sg, "POST", w.stream(job), w.token, body), 400, "bad_request", msg=repr(body))
        self.assertEqual(self.status(name, job)["status"], "IN_PROGRESS")
        open(gate, "w").close()
        final = self.wait_final(name, job)
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", "good"), final)

    def test_take_with_nothing_to_take_is_204_after_take_wait(self):
        """A take (and a stop poll) with nothing to answer is held take_wait_s, then 204.
        The worker itself is frozen meanwhile: a newer poll of a worker replaces its
        older one, so its own polls would end the test's at once."""
        name = self.endpoint("rpempty", async_={"ping_timeout_s": 60})
        (w,) = self.rp_workers(name)
        os.killpg(w.pid, signal.SIGSTOP)
        self.addCleanup(self.thaw, w.pid)
        for path in (w.take(), w.take(batch_size=3), w.stop()):
            start = time.monotonic()
            resp = wire(self.sg, "GET", path, w.token)
            waited = time.monotonic() - start
            self.assertEqual(resp.status, 204, "%s: %r" % (path, resp.body))
            # held, not answered at once (the SDK would spin on an immediate 204);
            # a lower bound only: the spec's take_wait_s is 2
            self.assertGreaterEqual(waited, 1.5, path)
        self.thaw(w.pid)
        final = self.runsync(name, {"echo": "thawed"})
        self.assertEqual((final["status"], final["output"]), ("COMPLETED", "thawed"), final)

    def test_long_jobs_reported_by_pings_are_not_lost(self):
        """Two jobs running for several ping intervals on one worker: its pings name both
        (job_id=a%2Cb, as the SDK encodes the list), so neither is taken for lost."""
        name = self.endpoint("rplong", workers={"max_concurrency": 2}, env={"TEST_CONCURRENCY": "2"})
        jobs = [self.run_job(name, {"sleep": 4, "echo": i}) for i in range(2)]
        for i, j in enumerate(jobs):
            final = self.wait_final(name, j)
            self.assertEqual((final["status"], final["output"]), ("COMPLETED", i), final)
            self.assertEqual((final["attempts"], final["retries"]), (1, 0), final)
        events = [l["line"] for l in self.sg.logs(name, stream="event") if "lost" in l["line"]]
        self.assertEqual(events, [])


class RunPodLimitsTest(RunPodBase):
    SHARED = {"config": SMALL_BODY_CONFIG}

    def test_oversize_result_is_413_and_fails_the_job(self):
        """A result or partial output over max_body_bytes is refused (413) and fails its
        job with an error naming the limit: the SDK drops a refused result, so the job
        would otherwise wait for its execution timeout."""
        d = shared_dir(self)
        gate = os.path.join(d, "gate")
        name = self.endpoint("rpbig")
        (w,) = self.rp_workers(name)
        big = {"output": "x" * 70000}
        for route in ("done", "stream"):
            job = self.run_job(name, {"gate": gate, "echo": "small"})
            self.wait_status(name, job, lambda s: s["status"] == "IN_PROGRESS")
            path = w.done(job) if route == "done" else w.stream(job)
            self.assertError(wire(self.sg, "POST", path, w.token, big), 413, "too_large", msg=route)
            final = self.wait_final(name, job)
            self.assertEqual(final["status"], "FAILED", final)
            self.assertIn("65536", json.dumps(final["error"]), final)
            self.assertNotIn("output", final)
            self.assertEqual(self.sg.api("POST", "/v2/%s/cancel/%s" % (name, job)).body["status"], "FAILED")
            # the worker drops its job when told to stop; the next one runs
            open(gate, "w").close()
            after = self.runsync(name, {"echo": "next"})
            self.assertEqual((after["status"], after["output"]), ("COMPLETED", "next"), after)
            os.unlink(gate)


class RunPodCrashTest(RunPodBase):
    """kill -9 of sgpud while workers hold jobs: after the restart every acknowledged job
    completes once, with its own output, and the old workers' late results are refused."""

    def test_kill9_with_jobs_taken(self):
        sg = self.start_sgpud()
        d = shared_dir(self)
        record = os.path.join(d, "record")
        name = unique_name("rpkill9")
        sg.create(rp_spec(name, workers={"min": 2, "max": 2, "max_concurrency": 2},
                          env={"TEST_CONCURRENCY": "2", "TEST_RECORD_FILE": record},
                          async_={"max_retries": 3}))
        self.addCleanup(sg.try_delete, name)
        sg.wait_ready(name, 2, timeout=30)
        seed = int(os.environ.get("SGPU_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
        sys.stderr.write("test_kill9_with_jobs_taken: SGPU_TEST_SEED=%d\n" % seed)
        rng = random.Random(seed)

        acked = {}  # id -> tag
        for n in range(16):
            tag = "before-%d" % n
            acked[self.run_job(name, {"sleep": rng.choice((0.2, 0.5, 1.0, 1.5)), "echo": tag}, sg=sg)] = tag

        def taken():
            states = [self.status(name, j, sg) for j in acked]
            running = [s for s in states if s["status"] == "IN_PROGRESS"]
            return running if len(running) >= 2 and any(s["status"] == "COMPLETED" for s in states) else None
        held = wait_for(taken, 30, message="jobs taken and some completed")[0]
        old = {w["id"] for w in sg.active_workers(name)}
        # the credential of a worker of the old sgpud that holds a job
        holder = RpWorker(next(w for w in sg.active_workers(name) if w["id"] == held["workerId"]))
        sg.kill()
        kill_ms = int(time.time() * 1000)  # every answer of the old sgpud was sent before this
        port = sg.port
        sg.start(port=port)
        # the old worker's late result is refused by the new sgpud (its worker is gone)
        late = wire(sg, "POST", holder.done(held["id"]), holder.token, {"output": "late"})
        self.assertIn(late.status, (401, 409), late.body)
        for n in range(6):
            tag = "after-%d" % n
            acked[self.run_job(name, {"sleep": 0.2, "echo": tag}, sg=sg)] = tag

        first = {}

        def all_completed():
            pending = 0
            for j, tag in acked.items():
                s = self.status(name, j, sg)
                if s["status"] == "COMPLETED":
                    self.assertEqual(s["output"], tag, s)
                    first.setdefault(j, s)
                else:
                    self.assertIn(s["status"], ("IN_QUEUE", "IN_PROGRESS"), s)
                    pending += 1
            return pending == 0
        wait_for(all_completed, 90, interval=0.2, message="every acknowledged job to complete")
        # shown COMPLETED once: later reads show the same output and worker
        for j, s in first.items():
            again = self.status(name, j, sg)
            self.assertEqual((again["status"], again["output"], again["workerId"]),
                             ("COMPLETED", s["output"], s["workerId"]), j)
        records = read_record(record)
        new_active = {w["id"] for w in sg.active_workers(name)}
        for j in acked:
            accepted = [r for r in records if r[2] == "result" and r[3] == j and r[4].startswith("2")]
            self.assertLessEqual(len(accepted), 1, "job %s's result was accepted twice: %r" % (j, accepted))
            if not accepted:  # its accepted post is the one the kill cut off
                self.assertTrue(any(r[2] == "result" and r[3] == j and r[4] == "error" for r in records),
                                "job %s completed without an accepted result: %r" % (j, records))
        late = [r for r in records if r[0] in old - new_active and r[5] > kill_ms and r[4].startswith("2")]
        self.assertEqual(late, [], "results of the old daemon's workers accepted after the kill")


if __name__ == "__main__":
    unittest.main()
