"""The slurm runtime against a real one-machine Slurm cluster (munged, slurmctld,
slurmd with 4 a100 GPUs declared as GRES files), started by scripts/slurm-up.sh
once for this module.

Skips (with the reason) only when the cluster cannot start here: not root, Slurm
or munge not installed, or the node not coming up."""

import base64
import calendar
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from harness import (ECHO_WORKER, REPO, RUN_ID, Background, SgpudTestCase, run_concurrently, scaled, unique_name,
                     wait_for)


SLURM_DIR = os.environ.get("SGPU_SLURM_DIR", "/tmp/sgpu-slurm")
UP = os.path.join(REPO, "scripts", "slurm-up.sh")
_skip = None
_rest_skip = None
REST = {}


def setUpModule():
    global _skip, _rest_skip
    if os.geteuid() != 0:
        _skip = "Slurm tests need root (munged and slurmd are started here)"
        return
    # With slurmrestd and JWT authentication when they can run, else without.
    try:
        r = subprocess.run([UP, SLURM_DIR], capture_output=True, text=True, timeout=scaled(120),
                           env=dict(os.environ, SGPU_SLURM_REST="1"))
        if r.returncode == 0:
            for line in r.stdout.splitlines():
                k, _, v = line.partition("=")
                REST[k] = v
        else:
            _rest_skip = "slurmrestd could not start (scripts/slurm-up.sh exit %d): %s" % (
                r.returncode, (r.stderr or r.stdout).strip()[-800:])
            r = subprocess.run([UP, SLURM_DIR], capture_output=True, text=True, timeout=scaled(120))
    except (OSError, subprocess.TimeoutExpired) as e:
        _skip = "Slurm could not start: %s" % e
        return
    if r.returncode != 0:
        _skip = "Slurm could not start (scripts/slurm-up.sh exit %d): %s" % (
            r.returncode, (r.stderr or r.stdout).strip()[-800:])
        return
    os.environ["SLURM_CONF"] = os.path.join(SLURM_DIR, "slurm.conf")


def slurm(*args, check=True):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(args), r.stderr))
    return r.stdout


def jobs_with_comment(prefix):
    """{job id: state} of the jobs Slurm still knows whose comment starts with prefix."""
    out = slurm("squeue", "--noheader", "--states=all", "--format=%i|%T|%k")
    jobs = {}
    for line in out.splitlines():
        jid, state, comment = (line.split("|", 2) + ["", ""])[:3]
        if comment.startswith(prefix):
            jobs[jid] = state
    return jobs


LIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")


def show_job(jid):
    out = slurm("scontrol", "--oneliner", "show", "job", jid)
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def slurm_time(text):
    """Slurm's local time as seconds since the epoch."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def api_time(text):
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + text[19:-1])


def slurm_spec(name, **over):
    spec = {
        "name": name,
        "runtime": "slurm",
        "command": [ECHO_WORKER],
        "env": {"MODEL": "tiny", "SGPU_IT_RUN": RUN_ID},
        "health": {"path": "/health"},
        "gpu": {"type": "a100", "count": 1},
        "workers": {"min": 0, "max": 2, "idle_timeout_s": 600},
        "slurm": {"time_limit": "15"},
    }
    spec.update(over)
    return spec


class SlurmCase(SgpudTestCase):

    def setUp(self):
        if _skip:
            self.skipTest(_skip)
        super().setUp()

    def start_slurm_sgpud(self, **kw):
        tmp = os.path.join("/tmp", "sgpu-it-slurm-%s-%s" % (RUN_ID, unique_name("c")))
        os.makedirs(tmp, exist_ok=True)
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            f.write('{"slurm": {"partition": "gpu"}, "stop_grace_s": 3, "prices": {"a100": 0.001}}')
        sg = self.start_sgpud(config=cfg, **kw)
        with open(os.path.join(sg.data_dir, "slurm", "tag")) as f:
            tag = f.read().strip()
        prefix = "sgpu:%s:" % tag
        self.addCleanup(self.cancel_jobs, prefix)
        return sg, prefix

    def cancel_jobs(self, prefix):
        for jid, state in jobs_with_comment(prefix).items():
            if state in LIVE:
                slurm("scancel", jid, check=False)

    def slurm_workers(self, sg, name):
        return [w for w in sg.workers(name) if w["runtime"] == "slurm"]


class SlurmTest(SlurmCase):

    def test_scale_from_zero_through_slurm_and_bill(self):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("sl")
        self.create(slurm_spec(name), sg=sg)
        t0 = time.monotonic()
        resp = sg.invoke(name, "/hello", body=b"hi", timeout=scaled(60))
        took = time.monotonic() - t0
        self.assertEqual(resp.status, 200, resp.body)
        (w,) = sg.ready_workers(name)
        self.assertEqual(w["runtime"], "slurm")
        jid = w["slurm"]["job_id"]
        self.assertIn(jid, jobs_with_comment(prefix))
        self.assertEqual(w["slurm"]["state"], "RUNNING")
        self.assertEqual(len(w["gpus"]), 1)
        self.assertEqual(w["gpu_type"], "a100")
        job = show_job(jid)
        self.assertEqual(job["JobName"], "sgpu." + w["id"])
        self.assertIn("gpu:a100:1", job.get("TresPerNode", "") + job.get("TRES", ""))
        self.assertLess(took, scaled(60))

        # Billing: the record spans the job's own start and end as Slurm reports them.
        time.sleep(1.2)
        sg.delete(name)
        wait_for(lambda: show_job(jid)["JobState"] not in LIVE, 30, interval=0.2,
                 message="job %s ended" % jid)
        job = show_job(jid)
        start, end = slurm_time(job["StartTime"]), slurm_time(job["EndTime"])

        def record():
            resp = sg.api("GET", "/v1/usage?endpoint=%s&group=worker" % name)
            body = self.assertOk(resp)
            groups = [g for g in body["groups"] if g["worker"] == w["id"]]
            return groups[0] if groups and not groups[0]["running"] else None

        rec = wait_for(record, 15, message="closed usage record of %s" % w["id"])
        self.assertAlmostEqual(api_time(rec["started_at"]), start, delta=0.01)
        self.assertAlmostEqual(api_time(rec["last_metered_at"]), end, delta=0.01)
        self.assertAlmostEqual(rec["gpu_seconds"], end - start, delta=1.0)
        self.assertGreaterEqual(rec["billable_seconds"], end - start)

    def test_workers_limited_by_gpus_rest_pending_with_reason(self):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("slp")
        self.create(slurm_spec(name, gpu={"type": "a100", "count": 2},
                               workers={"min": 4, "max": 4, "idle_timeout_s": 600}), sg=sg)
        sg.wait_ready(name, 2, timeout=60)

        def pending():
            ws = self.slurm_workers(sg, name)
            p = [w for w in ws if w["state"] == "starting" and (w.get("slurm") or {}).get("state") == "PENDING"]
            # Slurm gives Resources to a job waiting for GPUs and Priority to one
            # queued behind another pending job; the reason shows once its
            # scheduler has looked at the jobs.
            reasons = [(w["slurm"].get("reason") or "") for w in p]
            if len(p) == 2 and "Resources" in reasons and set(reasons) <= {"Resources", "Priority"}:
                return p
            return None

        p = wait_for(pending, 30, message="2 workers pending in Slurm, one for Resources")
        for w in p:
            self.assertEqual(w["last_error"], "pending in Slurm: " + w["slurm"]["reason"])
        self.assertEqual(len(sg.ready_workers(name)), 2)
        states = sorted(jobs_with_comment(prefix).values())
        self.assertEqual(states, ["PENDING", "PENDING", "RUNNING", "RUNNING"])

        def cluster_node():
            nodes = [n for n in sg.nodes() if n.get("runtime") == "slurm"]
            return nodes[0] if nodes and nodes[0]["gpus_free"] == 0 else None

        node = wait_for(cluster_node, 15, message="/v1/nodes showing the cluster's GPUs in use")
        self.assertEqual(node["gpus_total"], 4)
        self.assertEqual(node["gpu_type"], "a100")

    def test_scale_down_cancels_pending_job_first(self):
        # Demand for three workers of two GPUs each on a four-GPU cluster: two
        # run, one stays pending. When demand falls, the pending job is the
        # first to go (it used to be kept while ready workers stopped, and then
        # ran for nothing); min 1 keeps one ready worker.
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("sld")
        idle = 2
        self.create(slurm_spec(name, gpu={"type": "a100", "count": 2},
                               workers={"min": 1, "max": 3, "max_concurrency": 1, "idle_timeout_s": idle}), sg=sg)
        sg.wait_ready(name, 1, timeout=60)
        delay = int(scaled(4000))

        def call(i):
            return sg.invoke(name, "/infer?delay_ms=%d&i=%d" % (delay, i), body=b"x", timeout=scaled(120))

        def pending():
            ws = self.slurm_workers(sg, name)
            p = [w for w in ws if w["state"] == "starting" and (w.get("slurm") or {}).get("state") == "PENDING"]
            return p if len(p) == 1 and len(sg.ready_workers(name)) == 2 else None

        load = Background(run_concurrently, call, [(i,) for i in range(3)])
        (pend,) = wait_for(pending, 60, message="two workers running and one pending in Slurm")
        results = load.result(timeout=120)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.assertEqual([r.status for r in results], [200] * 3, [(r.status, r.body) for r in results])
        jid = pend["slurm"]["job_id"]
        wait_for(lambda: len(sg.active_workers(name)) == 1, idle + 15, interval=0.2,
                 message="scaled down to min 1 after idle_timeout_s")
        (kept,) = sg.active_workers(name)
        self.assertEqual(kept["state"], "ready", kept)
        self.assertNotEqual(kept["id"], pend["id"])
        wait_for(lambda: jobs_with_comment(prefix).get(jid) not in LIVE, 30, interval=0.2,
                 message="the pending job %s cancelled" % jid)
        ev = [l["line"] for l in sg.logs(name, stream="event", limit=10000) if l.get("worker") == pend["id"]]
        self.assertTrue([e for e in ev if "not needed before it is ready" in e], ev)

    def test_job_cancelled_outside_is_replaced(self):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("slc")
        self.create(slurm_spec(name, workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=60)
        jid = w["slurm"]["job_id"]
        slurm("scancel", jid)

        def replaced():
            ws = [x for x in sg.ready_workers(name) if x["id"] != w["id"]]
            return ws[0] if ws else None

        new = wait_for(replaced, 60, message="a worker replacing the cancelled job")
        self.assertNotEqual(new["slurm"]["job_id"], jid)
        old = [x for x in sg.workers(name) if x["id"] == w["id"]][0]
        self.assertIn(old["state"], ("failed", "stopped"))
        self.assertIn(old["slurm"]["state"], ("CANCELLED", "FAILED", "COMPLETED"))
        self.assertEqual(sg.invoke(name, "/again", body=b"x", timeout=scaled(30)).status, 200)

    def test_logs_followed_live(self):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("sll")
        self.create(slurm_spec(name, workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=60)
        with sg.stream("GET", "/v1/endpoints/%s/logs?follow=1&worker=%s" % (name, w["id"]),
                       timeout=scaled(30)) as s:
            token = ("live-%s" % RUN_ID).encode()
            self.assertEqual(sg.invoke(name, "/" + token.decode(), body=b"x").status, 200)
            deadline = time.monotonic() + scaled(15)
            seen = False
            while time.monotonic() < deadline and not seen:
                line = s.readline(timeout=15)
                if not line:
                    break
                seen = token in line
            self.assertTrue(seen, "the worker's request line reached the follow stream while it runs")
        self.assertIn(show_job(w["slurm"]["job_id"])["JobState"], ("RUNNING",))

    def test_hostile_env_value_reaches_job_unchanged(self):
        """An environment value that is shell (quotes, $(...), backquotes,
        newlines) reaches the job's worker byte for byte and runs nothing."""
        sg, prefix = self.start_slurm_sgpud()
        canary = os.path.join("/tmp", "sgpu-it-slurm-canary-%s" % unique_name("c"))
        self.addCleanup(lambda: os.path.exists(canary) and os.unlink(canary))
        value = ("it's $(touch %s) `touch %s` '; touch %s; '\n\"; touch %s; \"\n'\\''$PORT ${HOME}"
                 % (canary, canary, canary, canary))
        name = unique_name("slh")
        self.create(slurm_spec(name, env={"MODEL": value, "SGPU_IT_RUN": RUN_ID},
                               workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)
        sg.wait_ready(name, 1, timeout=60)
        resp = sg.invoke(name, "/env", method="GET", timeout=scaled(30))
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["MODEL"], value)
        self.assertFalse(os.path.exists(canary), "a spec value ran as shell in the job script")

    def test_secret_reaches_job_and_its_script_is_private(self):
        """A secret referenced in env reaches the Slurm job's worker; the
        batch script, which must carry it to the node, is readable by its
        owner only, and no log line or route shows it."""
        sg, prefix = self.start_slurm_sgpud()
        value = "slurm-secret-%s" % unique_name("v")
        self.assertOk(sg.api("PUT", "/v1/secrets/tok", {"value": value}), 201)
        name = unique_name("sls")
        self.create(slurm_spec(name, env={"MODEL": {"secret": "tok"}, "SGPU_IT_RUN": RUN_ID},
                               workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=60)
        resp = sg.invoke(name, "/env", method="GET", timeout=scaled(30))
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["MODEL"], value)
        script = os.path.join(sg.data_dir, "slurm", "%s.sh" % w["id"])
        self.assertEqual(os.stat(script).st_mode & 0o077, 0, "the job script is readable by others")
        for path in ("/v1/endpoints/%s" % name, "/v1/endpoints/%s/workers" % name,
                     "/v1/endpoints/%s/logs" % name, "/metrics"):
            self.assertNotIn(value.encode(), sg.api("GET", path, raw=True).body, path)
        self.assertNotIn(value, sg.log_text())

    def usage_of(self, sg, name, worker):
        """The closed usage of worker (its records summed), or None while it runs."""
        resp = sg.api("GET", "/v1/usage?endpoint=%s&group=worker" % name)
        groups = [g for g in self.assertOk(resp)["groups"] if g["worker"] == worker]
        return groups[0] if groups and not groups[0]["running"] else None

    def live_jobs(self, prefix):
        return sorted(j for j, s in jobs_with_comment(prefix).items() if s in LIVE)

    def restart_keeps_running_job(self, sig):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("sla")
        self.create(slurm_spec(name, workers={"min": 1, "max": 1, "idle_timeout_s": 600}), sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=60)
        jid = w["slurm"]["job_id"]
        before = "before-%s" % RUN_ID
        self.assertEqual(sg.invoke(name, "/" + before, body=b"x").status, 200)
        wait_for(lambda: any(before in l["line"] for l in sg.logs(name, worker=w["id"])), 15,
                 message="the worker's line before the restart")
        sg.stop(sig=sig)
        self.assertEqual(self.live_jobs(prefix), [jid])
        sg.start()
        (w2,) = sg.wait_ready(name, 1, timeout=60)
        self.assertEqual((w2["id"], w2["slurm"]["job_id"]), (w["id"], jid))
        self.assertTrue(w2["adopted"])
        after = "after-%s" % RUN_ID
        self.assertEqual(sg.invoke(name, "/" + after, body=b"x").status, 200)
        self.assertEqual(self.live_jobs(prefix), [jid])  # no new job

        # The job's output is followed on from where it was: new lines come,
        # old ones are not read again.
        lines = wait_for(lambda: (lambda ls: ls if any(after in l for l in ls) else None)(
            [l["line"] for l in sg.logs(name, worker=w["id"])]), 15, message="the worker's line after the restart")
        self.assertEqual(len([l for l in lines if before in l]), 1, lines)

        sg.delete(name)
        wait_for(lambda: not self.live_jobs(prefix), 30, message="no job left after the endpoint was deleted")
        # Billed once, from Slurm's start to its end.
        job = show_job(jid)
        start, end = slurm_time(job["StartTime"]), slurm_time(job["EndTime"])
        rec = wait_for(lambda: self.usage_of(sg, name, w["id"]), 15, message="closed usage of %s" % w["id"])
        self.assertAlmostEqual(api_time(rec["started_at"]), start, delta=0.01)
        self.assertAlmostEqual(rec["gpu_seconds"], end - start, delta=1.0)

    def test_restart_sigterm_adopts_running_job(self):
        self.restart_keeps_running_job(signal.SIGTERM)

    def test_restart_sigkill_adopts_running_job(self):
        self.restart_keeps_running_job(signal.SIGKILL)

    def test_restart_cancels_pending_jobs_and_leaves_no_orphans(self):
        sg, prefix = self.start_slurm_sgpud()
        name = unique_name("slr")
        self.create(slurm_spec(name, gpu={"type": "a100", "count": 2},
                               workers={"min": 3, "max": 3, "idle_timeout_s": 600}), sg=sg)
        running = {w["slurm"]["job_id"] for w in sg.wait_ready(name, 2, timeout=60)}
        wait_for(lambda: len(self.live_jobs(prefix)) == 3, 15, message="a third job pending")
        (pending,) = set(self.live_jobs(prefix)) - running
        sg.kill()  # no chance to cancel anything
        sg.start()
        wait_for(lambda: jobs_with_comment(prefix).get(pending) not in LIVE, 30,
                 message="the pending job of the killed sgpud cancelled")
        self.assertEqual({w["slurm"]["job_id"] for w in sg.wait_ready(name, 2, timeout=60)}, running)
        live = wait_for(lambda: (lambda j: j if len(j) == 3 else None)(self.live_jobs(prefix)), 15,
                        message="a new pending job")
        self.assertTrue(running < set(live) and pending not in live, live)
        sg.delete(name)
        wait_for(lambda: not self.live_jobs(prefix), 30, message="no job left after the endpoint was deleted")


class SlurmImageTest(SlurmCase):
    """An image endpoint through Slurm: sgpud pulls the image into its cache,
    the job assembles the overlay root on the node and runs crun."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if _skip:
            return
        from test_oci import IMAGE_SCRIPT, Registry, _sh, crun_works
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-slurm-img-")
        img = os.path.join(cls.tmp, "img")
        try:
            _sh("bash", IMAGE_SCRIPT, "build", img, REPO)
        except (subprocess.CalledProcessError, OSError) as e:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise unittest.SkipTest("cannot build the test image: %s" % getattr(e, "stderr", e))
        why = crun_works(cls.tmp, os.path.join(img, "layout"))
        if why:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise unittest.SkipTest(why)
        cls.registry = Registry(os.path.join(cls.tmp, "registry"))
        cls.registry.start()
        _sh("bash", IMAGE_SCRIPT, "push", img, cls.registry.addr, "demo/echo:latest")
        cls.image = "%s/demo/echo:latest" % cls.registry.addr

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "registry", None):
            cls.registry.stop()
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)
        super().tearDownClass()

    def start_image_sgpud(self):
        tmp = os.path.join("/tmp", "sgpu-it-slurm-%s-%s" % (RUN_ID, unique_name("i")))
        os.makedirs(tmp, exist_ok=True)
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump({"slurm": {"partition": "gpu"}, "stop_grace_s": 3,
                       "insecure_registries": [self.registry.addr]}, f)
        sg = self.start_sgpud(config=cfg)
        with open(os.path.join(sg.data_dir, "slurm", "tag")) as f:
            prefix = "sgpu:%s:" % f.read().strip()
        self.addCleanup(self.cancel_jobs, prefix)
        return sg, prefix

    def bundle_mounts(self, jid):
        """Mount points of the job's bundle, in any mount namespace."""
        found = set()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/mountinfo" % pid) as f:
                    for line in f:
                        mp = line.split()[4]
                        if "sgpu-bundle.%s" % jid in mp:
                            found.add(mp)
            except OSError:
                pass
        return sorted(found)

    def containers(self, jid):
        state = "/tmp/sgpu-bundle.%s/state" % jid
        if not os.path.isdir(state):
            return []
        r = subprocess.run(["crun", "--root", state, "list", "-q"], capture_output=True, text=True)
        return [x for x in r.stdout.split() if x] if r.returncode == 0 else []

    def test_image_endpoint_through_slurm_and_scancel_cleans_up(self):
        sg, prefix = self.start_image_sgpud()
        name = unique_name("sli")
        spec = slurm_spec(name, image=self.image, workers={"min": 0, "max": 1, "idle_timeout_s": 600})
        del spec["command"]  # the image's entrypoint
        self.create(spec, sg=sg)
        resp = sg.invoke(name, "/hello", body=b"hi", timeout=scaled(90))
        self.assertEqual(resp.status, 200, resp.body)
        (w,) = sg.ready_workers(name)
        self.assertEqual(w["runtime"], "slurm")
        jid = w["slurm"]["job_id"]
        self.assertEqual(len(w["gpus"]), 1)
        # The contract inside the container: the port chosen on the node, the
        # spec's env over the image's, the GPU Slurm allocated.
        env = sg.invoke(name, "/env", timeout=scaled(30)).body
        self.assertEqual(env["PORT"], str(w["port"]))
        self.assertEqual(env["MODEL"], "tiny")
        self.assertEqual(env["CUDA_VISIBLE_DEVICES"], ",".join(str(g) for g in w["gpus"]))
        self.assertEqual(env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"])
        self.assertTrue(self.bundle_mounts(jid), "the overlay root of job %s mounted" % jid)
        self.assertEqual(self.containers(jid), [w["id"]])

        slurm("scancel", jid)
        wait_for(lambda: show_job(jid)["JobState"] not in LIVE, 30, interval=0.2, message="job %s ended" % jid)
        wait_for(lambda: not self.bundle_mounts(jid) and not os.path.exists("/tmp/sgpu-bundle.%s" % jid), 30,
                 message="the container, overlay and bundle of job %s removed" % jid)
        self.assertEqual(self.containers(jid), [])

        # A replacement scaled down by sgpud (scancel with SIGTERM first) cleans up too.
        resp = sg.invoke(name, "/again", body=b"x", timeout=scaled(90))
        self.assertEqual(resp.status, 200, resp.body)
        (w2,) = sg.ready_workers(name)
        jid2 = w2["slurm"]["job_id"]
        self.assertTrue(self.bundle_mounts(jid2))
        sg.delete(name)
        wait_for(lambda: show_job(jid2)["JobState"] not in LIVE, 30, interval=0.2, message="job %s ended" % jid2)
        wait_for(lambda: not self.bundle_mounts(jid2) and not os.path.exists("/tmp/sgpu-bundle.%s" % jid2), 30,
                 message="the container, overlay and bundle of job %s removed" % jid2)


def jwt(key, user="root", lifetime=300):
    """A token for Slurm's auth/jwt, HS256-signed with key."""
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"exp": now + lifetime, "iat": now, "sun": user}).encode())
    sig = hmac.new(key, ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(sig))


class SlurmRestTest(SlurmCase):
    """Jobs submitted, queried and cancelled through slurmrestd's REST API,
    sgpud signing its own tokens with the cluster's JWT key."""

    def setUp(self):
        if not _skip and _rest_skip:
            self.skipTest(_rest_skip)
        super().setUp()

    def rest(self, method, path):
        import urllib.request
        with open(REST["SLURM_JWT_KEY"], "rb") as f:
            key = f.read()
        req = urllib.request.Request("%s/slurm/%s/%s" % (REST["SLURMRESTD"], REST["SLURMRESTD_API"], path),
                                     method=method, headers={"X-SLURM-USER-NAME": "root",
                                                             "X-SLURM-USER-TOKEN": jwt(key)})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def test_scale_from_zero_and_scancel_through_slurmrestd(self):
        tmp = os.path.join("/tmp", "sgpu-it-slurm-%s-%s" % (RUN_ID, unique_name("r")))
        os.makedirs(tmp, exist_ok=True)
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump({"slurm": {"partition": "gpu", "rest_url": REST["SLURMRESTD"],
                                 "rest_key_file": REST["SLURM_JWT_KEY"]}, "stop_grace_s": 3}, f)
        sg = self.start_sgpud(config=cfg)
        with open(os.path.join(sg.data_dir, "slurm", "tag")) as f:
            prefix = "sgpu:%s:" % f.read().strip()
        self.addCleanup(self.cancel_jobs, prefix)
        self.assertIn("jobs through slurmrestd at %s (API %s)" % (REST["SLURMRESTD"], REST["SLURMRESTD_API"]),
                      sg.log_text())
        name = unique_name("slr")
        self.create(slurm_spec(name, workers={"min": 0, "max": 1, "idle_timeout_s": 600}), sg=sg)
        resp = sg.invoke(name, "/hello", body=b"hi", timeout=scaled(60))
        self.assertEqual(resp.status, 200, resp.body)
        (w,) = sg.ready_workers(name)
        jid = w["slurm"]["job_id"]
        self.assertEqual(w["slurm"]["state"], "RUNNING")
        self.assertEqual(len(w["gpus"]), 1)
        job = self.rest("GET", "job/%s" % jid)["jobs"][0]
        self.assertEqual(job["name"], "sgpu." + w["id"])
        self.assertTrue(job["comment"].startswith(prefix))
        self.assertIn("gpu:a100:1", show_job(jid).get("TresPerNode", ""))
        self.assertEqual(show_job(jid)["TimeLimit"], "00:15:00")

        # Cancelled from outside, through slurmrestd: the worker ends with the
        # job, and the next invocation scales from zero again.
        self.rest("DELETE", "job/%s" % jid)

        def ended():
            ws = [x for x in sg.workers(name) if x["id"] == w["id"]]
            return ws and ws[0]["state"] in ("failed", "stopped") and ws[0]

        old = wait_for(ended, 30, message="the worker of the cancelled job ended")
        self.assertIn(old["slurm"]["state"], ("CANCELLED", "FAILED", "COMPLETED"))
        self.assertEqual(sg.invoke(name, "/again", body=b"x", timeout=scaled(60)).status, 200)
        (new,) = sg.ready_workers(name)
        self.assertNotEqual(new["slurm"]["job_id"], jid)
        sg.delete(name)
        wait_for(lambda: not [j for j, st in jobs_with_comment(prefix).items() if st in LIVE], 30,
                 message="no job left after the endpoint was deleted")


if __name__ == "__main__":
    unittest.main()
