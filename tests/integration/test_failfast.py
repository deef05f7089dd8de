"""Broken endpoints fail fast and say why: specs that can never run are refused
at create and update (422 naming the field); an endpoint that cannot start
workers (crash loop, image that cannot be pulled, no node with its GPUs) says
so in status.state, and requests to it get 503 with that word as the code and
the last error, at once instead of after the request timeout; failed health
probes are logged from the first; a registry auth in use cannot be deleted;
a loopback registry needs no insecure_registries entry."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

from crafted_registry import CraftedRegistry, file, layer
from harness import (ECHO_WORKER, SGPU, SgpudTestCase, echo_spec, error_of, scaled, unique_name)


def table(text):
    """sgpu's table output as a list of dicts keyed by the header's names."""
    lines = [l for l in text.splitlines() if l.strip()]
    headers = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(headers, l.split())) for l in lines[1:]]


class FailFastTest(SgpudTestCase):
    SHARED = {"gpus": "a100:2"}

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="sgpu-it-ff-")
        os.chmod(d, 0o777)  # workers run as an unprivileged user when sgpud is root
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def cli(self, sg, *args):
        env = dict(os.environ, SGPU_URL=sg.base_url, SGPU_API_KEY=sg.key)
        proc = subprocess.run([SGPU] + list(args), capture_output=True, text=True, env=env,
                              timeout=scaled(30))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc.stdout

    def refused(self, spec, field):
        resp = self.sg.api("POST", "/v1/endpoints", spec)
        self.assertError(resp, 422, "invalid_field", field=field)
        self.assertEqual(error_of(resp)["field"], field, resp.body)
        self.assertNotIn(spec["name"], self.sg.list_names())
        return error_of(resp)["message"]

    def until_503(self, name, code, sg=None, path="/infer"):
        """Invokes name until an answer is 503 with code (bounded); returns it."""
        sg = sg or self.sg
        seen = []

        def attempt():
            resp = sg.invoke(name, path, body=b"x", timeout=120)
            seen.append((resp.status, resp.body))
            return resp if resp.status == 503 and error_of(resp).get("code") == code else None
        return self.wait_for(attempt, 60, message="503 %s from %s (last answers: %r)" % (code, name, seen[-3:]))

    # ---- refused at create and update

    def test_unknown_gpu_type_is_refused(self):
        name = unique_name("ff-h100")
        msg = self.refused(echo_spec(name, gpu={"type": "h100", "count": 1}), "gpu.type")
        self.assertIn("h100", msg)
        # an update too, and the endpoint keeps its spec
        self.create(echo_spec(name))
        resp = self.sg.api("PUT", "/v1/endpoints/%s" % name, echo_spec(name, gpu={"type": "h100", "count": 1}))
        self.assertError(resp, 422, "invalid_field", field="gpu.type")
        self.assertEqual(self.sg.get(name)["version"], 1)

    def test_gpu_count_above_every_node_is_refused(self):
        msg = self.refused(echo_spec(unique_name("ff-count"), gpu={"type": "a100", "count": 3}), "gpu.count")
        self.assertIn("at most 2", msg)

    def test_missing_registry_auth_is_refused(self):
        spec = {"name": unique_name("ff-auth"), "runtime": "oci", "image": "127.0.0.1:1/sgpu-it/none:latest",
                "registry_auth": "no-such-auth"}
        resp = self.sg.api("POST", "/v1/endpoints", spec)
        if resp.status == 422 and error_of(resp).get("code") == "unavailable":
            self.skipTest("the oci runtime cannot run here: %s" % error_of(resp)["message"])
        msg = self.refused(spec, "registry_auth")
        self.assertIn("no-such-auth", msg)

    def test_missing_and_not_executable_commands_are_refused(self):
        msg = self.refused(echo_spec(unique_name("ff-nocmd"), command=["/nonexistent/sgpu-it/no-such-worker"]),
                           "command[0]")
        self.assertIn("does not exist", msg)
        path = os.path.join(self.tmpdir(), "not-executable")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o644)
        msg = self.refused(echo_spec(unique_name("ff-noexec"), command=[path]), "command[0]")
        self.assertIn("not an executable", msg)
        msg = self.refused(echo_spec(unique_name("ff-nobare"), command=["no-such-command-sgpu-it"]), "command[0]")
        self.assertIn("PATH", msg)

    def test_a_command_the_workers_user_cannot_run_is_refused(self):
        if os.geteuid() != 0:
            self.skipTest("sgpud runs workers as another user only when it runs as root")
        d = tempfile.mkdtemp(prefix="sgpu-it-ff-private-")  # 0700: root's alone
        self.addCleanup(shutil.rmtree, d, True)
        command = os.path.join(d, "worker")
        shutil.copy(ECHO_WORKER, command)
        os.chmod(command, 0o700)  # executable by root only
        msg = self.refused(echo_spec(unique_name("ff-private"), command=[command]), "command[0]")
        self.assertIn("cannot be run by the workers' user", msg)
        self.assertIn(command, msg)
        # executable by everyone, the same spec is created and serves: the
        # directory the user cannot search does not matter (the runtime opens
        # the command before it takes the user's ids)
        os.chmod(command, 0o755)
        name = unique_name("ff-private")
        self.create(echo_spec(name, command=[command]))
        self.assertOk(self.sg.invoke(name, "/infer", body=b"x", timeout=60))

    def test_bare_command_is_looked_up_in_path(self):
        # sgpud's PATH: python3 becomes the absolute path found, shown in GET
        name = unique_name("ff-python")
        ep = self.create(echo_spec(name, command=["python3", "-c", "pass"]))
        self.assertTrue(os.path.isabs(ep["command"][0]), ep["command"])
        self.assertEqual(os.path.basename(ep["command"][0]), "python3")
        self.assertEqual(self.sg.get(name)["command"][0], ep["command"][0])
        self.assertEqual(ep["command"][1:], ["-c", "pass"])
        # the spec's PATH, which the worker gets, comes first; the worker runs
        name = unique_name("ff-bare")
        bindir = os.path.dirname(ECHO_WORKER)
        ep = self.create(echo_spec(name, command=[os.path.basename(ECHO_WORKER)],
                                   env={"PATH": bindir + ":/usr/bin:/bin"}))
        self.assertEqual(ep["command"][0], ECHO_WORKER)
        self.assertOk(self.sg.invoke(name, "/infer", body=b"x", timeout=60))
        self.assertEqual(self.sg.status(name)["state"], "serving")

    # ---- 503 at once while an endpoint cannot start workers

    def test_crash_loop_answers_503_with_the_last_error(self):
        name = unique_name("ff-crash")
        self.create(echo_spec(name, command=["/bin/sh", "-c", "exit 3"],
                              workers={"min": 0, "max": 1, "request_timeout_s": 600}))
        self.assertEqual(self.sg.status(name)["state"], "scaled_to_zero")
        t0 = time.monotonic()
        resp = self.until_503(name, "crash_loop")
        elapsed = time.monotonic() - t0
        self.assertIn("status 3", error_of(resp)["message"])
        print("\n[measure] crash-looping endpoint: 503 crash_loop after %.2f s" % elapsed)
        st = self.sg.status(name)
        self.assertEqual(st["state"], "crash_loop", st)
        self.assertIn("status 3", st["last_error"])
        row = [r for r in table(self.cli(self.sg, "endpoint", "list")) if r["NAME"] == name]
        self.assertEqual(row[0]["STATE"], "crash_loop", row)
        got = json.loads(self.cli(self.sg, "endpoint", "get", name))
        self.assertEqual(got["status"]["state"], "crash_loop")
        # runsync of an async endpoint answers the same; run still queues
        aname = unique_name("ff-crash-async")
        self.create(echo_spec(aname, type="async", command=["/bin/sh", "-c", "exit 3"],
                              workers={"min": 1, "max": 1}))
        self.wait_for(lambda: self.sg.status(aname)["state"] == "crash_loop", 60,
                      message="async endpoint in crash_loop")

        def runsync_503():
            r = self.sg.api("POST", "/v2/%s/runsync" % aname, {"input": {}}, timeout=120)
            return r if r.status == 503 else None
        r = self.wait_for(runsync_503, 60, message="runsync 503")
        self.assertEqual(error_of(r)["code"], "crash_loop", r.body)
        self.assertIn("status 3", error_of(r)["message"])
        run = self.sg.api("POST", "/v2/%s/run" % aname, {"input": {}})
        self.assertEqual(run.status, 200, run.body)
        # a fixed spec leaves the state: requests queue and are served again
        self.sg.update(name, echo_spec(name))
        self.assertOk(self.sg.invoke(name, "/infer", body=b"x", timeout=60))
        self.assertEqual(self.sg.status(name)["state"], "serving")

    def test_a_waiting_runsync_gets_the_503_when_the_crash_loop_is_found(self):
        name = unique_name("ff-crash-wait")
        self.create(echo_spec(name, type="async", command=["/bin/sh", "-c", "exit 3"],
                              workers={"min": 0, "max": 1}))
        self.assertEqual(self.sg.status(name)["state"], "scaled_to_zero")
        queued = self.sg.api("POST", "/v2/%s/run" % name, {"input": {"n": 1}})
        self.assertEqual(queued.status, 200, queued.body)
        # scaled to zero, so the runsync queues its job and waits; the crash
        # loop is found while it waits (three failed starts)
        t0 = time.monotonic()
        r = self.sg.api("POST", "/v2/%s/runsync?wait=60000" % name, {"input": {"n": 2}}, timeout=120)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 503, r.body)
        self.assertEqual(error_of(r)["code"], "crash_loop", r.body)
        self.assertIn("status 3", error_of(r)["message"])
        print("\n[measure] waiting runsync on a crash-looping endpoint: 503 after %.2f s (wait 60 s)" % elapsed)
        # its job fails with the reason (once that is written); the job
        # submitted with run stays queued
        def listed():
            jobs = self.assertOk(self.sg.api("GET", "/v1/endpoints/%s/jobs" % name))["jobs"]
            return jobs if any(j["status"] == "FAILED" for j in jobs) else None
        jobs = self.wait_for(listed, 10, message="the runsync's job to be FAILED")
        by_id = {j["id"]: j for j in jobs}
        self.assertEqual(by_id.pop(queued.body["id"])["status"], "IN_QUEUE")
        self.assertEqual(len(by_id), 1, jobs)
        job = list(by_id.values())[0]
        self.assertEqual(job["status"], "FAILED", job)
        self.assertIn("crash_loop", json.dumps(job.get("error")))

    def test_image_that_cannot_be_pulled_answers_503(self):
        name = unique_name("ff-pull")
        # nothing listens on port 1 of loopback: the pull fails at once
        resp = self.sg.api("POST", "/v1/endpoints",
                           {"name": name, "runtime": "oci", "image": "127.0.0.1:1/sgpu-it/none:latest",
                            "workers": {"min": 0, "max": 1, "request_timeout_s": 600}})
        if resp.status == 422 and error_of(resp).get("code") == "unavailable":
            self.skipTest("the oci runtime cannot run here: %s" % error_of(resp)["message"])
        self.assertEqual(resp.status, 201, resp.body)
        self.addCleanup(self.sg.try_delete, name)
        resp = self.until_503(name, "image_pull_failed")
        self.assertIn("127.0.0.1:1/sgpu-it/none", error_of(resp)["message"])
        self.assertEqual(self.sg.status(name)["state"], "image_pull_failed")

    def test_unschedulable_after_the_inventory_shrank(self):
        sg = self.start_sgpud(gpus="a100:2")
        name = unique_name("ff-unsched")
        self.create(echo_spec(name, gpu={"type": "a100", "count": 2},
                              workers={"min": 0, "max": 1, "request_timeout_s": 600}), sg=sg)
        self.assertEqual(sg.stop(), 0)
        sg.gpus = "a100:1"
        sg.start()
        st = sg.status(name)
        self.assertEqual(st["state"], "unschedulable", st)
        resp = sg.invoke(name, "/infer", body=b"x", timeout=120)
        self.assertError(resp, 503, "unschedulable")
        row = [r for r in table(self.cli(sg, "endpoint", "list")) if r["NAME"] == name]
        self.assertEqual(row[0]["STATE"], "unschedulable", row)

    # ---- probe failures are logged from the first

    def events(self, name):
        return [l["line"] for l in self.sg.logs(name, stream="event")]

    def test_probe_failures_are_logged_from_the_first(self):
        name = unique_name("ff-probe404")
        # /status/404 answers 404, as a health path the worker does not serve would
        self.create(echo_spec(name, health={"path": "/status/404", "startup_timeout_s": 60},
                              workers={"min": 1, "max": 1}))
        lines = self.wait_for(lambda: [l for l in self.events(name) if "GET /status/404 -> 404" in l], 30,
                              message="a probe failure event")
        self.assertTrue(lines)
        # a worker that does not listen on $PORT
        name = unique_name("ff-noport")
        self.create(echo_spec(name, command=["/bin/sleep", "60"],
                              health={"startup_timeout_s": 60}, workers={"min": 1, "max": 1}))
        lines = self.wait_for(lambda: [l for l in self.events(name) if "connection refused" in l], 30,
                              message="a connection refused event")
        self.assertIn("does the worker listen on $PORT?", lines[0])
        # rate-limited: far fewer events than probes (the start-up schedule probes every 100 ms)
        self.wait_for(lambda: len([l for l in self.events(name) if "connection refused" in l]) >= 2, 30,
                      message="a second, rate-limited event")
        second = [l for l in self.events(name) if "connection refused" in l][1]
        self.assertRegex(second, r"\(\d+ failed probes since the last report\)")

    # ---- registry auths

    def test_registry_auth_in_use_cannot_be_deleted(self):
        auth = unique_name("ff-auth")
        resp = self.sg.api("POST", "/v1/registry-auths",
                           {"name": auth, "registry": "registry.example", "username": "u", "password": "p"})
        self.assertEqual(resp.status, 201, resp.body)
        self.addCleanup(lambda: self.sg.api("DELETE", "/v1/registry-auths/%s" % auth))
        name = unique_name("ff-uses-auth")
        self.create(echo_spec(name, registry_auth=auth))
        resp = self.sg.api("DELETE", "/v1/registry-auths/%s" % auth)
        self.assertError(resp, 409, "in_use")
        self.assertIn(name, error_of(resp)["message"])
        self.assertEqual(self.sg.api("GET", "/v1/registry-auths/%s" % auth).status, 200)
        self.sg.delete(name)
        self.assertEqual(self.sg.api("DELETE", "/v1/registry-auths/%s" % auth).status, 200)


class LoopbackRegistryTest(SgpudTestCase):
    def test_loopback_registry_needs_no_insecure_entry(self):
        reg = CraftedRegistry()
        self.addCleanup(reg.stop)
        image = reg.add_image("loopback/plain", [layer([file("hello", b"hi")])])
        sg = self.start_sgpud()  # no config: no insecure_registries
        resp = sg.api("POST", "/v1/images", {"image": image})
        self.assertIn(resp.status, (200, 202), resp.body)

        def ended():
            j = self.assertOk(sg.api("GET", "/v1/images"))
            if any(i["image"] == image for i in j["images"]):
                return "cached"
            for p in j["pulls"]:
                if p["image"] == image and p["state"] == "failed":
                    return "failed: %s" % p["error"]
            return None
        self.assertEqual(self.wait_for(ended, 60, message="pull of %s ended" % image), "cached")
        self.assertTrue(reg.requests_for("/v2/"), "nothing reached the loopback registry")


if __name__ == "__main__":
    unittest.main()
