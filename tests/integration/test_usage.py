"""Per-second billing: GET /v1/usage and `sgpu usage` against real workers.

A worker run for a known time is billed within a second of it, split into
starting, busy and idle; a crash and restart of sgpud bills up to the last
checkpoint and never twice; a price change applies from its time on."""

import datetime
import json
import math
import os
import signal
import subprocess
import time
import unittest

from harness import SGPU, SgpudTestCase, echo_spec, pid_alive, scaled, unique_name

PRICE = 0.001


def parse_time(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def write_config(sg_tmp, **cfg):
    path = os.path.join(sg_tmp, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


class UsageTest(SgpudTestCase):

    def usage(self, sg, **params):
        qs = "&".join("%s=%s" % kv for kv in params.items())
        resp = sg.api("GET", "/v1/usage" + ("?" + qs if qs else ""))
        return self.assertOk(resp)

    def worker_usage(self, sg, name):
        body = self.usage(sg, endpoint=name, group="worker")
        return {g["worker"]: g for g in body["groups"]}, body

    def stop_workers(self, sg, name, pids):
        """Deletes the endpoint (its workers stop); returns the wall-clock window in
        which they ended: from the delete call to the moment none is alive."""
        t_del = time.time()
        sg.delete(name)
        self.wait_for(lambda: not any(pid_alive(p) for p in pids), 15, interval=0.01,
                      message="workers of %s stopped" % name)
        return t_del, time.time()

    def test_worker_billed_to_the_second_split_by_state(self):
        sg = self.start_sgpud(gpus="a100:2", args=["--price", "a100=%g,h100=1" % PRICE])
        name = unique_name("bill")
        spec = echo_spec(name, gpu={"type": "a100", "count": 2}, env={"WARMUP_MS": "600"},
                         workers={"min": 1, "max": 1, "idle_timeout_s": 600})
        self.create(spec, sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=20)
        for _ in range(2):
            self.assertOk(sg.invoke(name, "/infer?delay_ms=700", body=b"x"))
        time.sleep(1.5)
        # running: billed so far, not rounded yet
        live, _ = self.worker_usage(sg, name)
        self.assertTrue(live[w["id"]]["running"])
        self.assertGreater(live[w["id"]]["seconds"]["total"], 2.5)

        (ready,) = sg.ready_workers(name)
        t_del, t_dead = self.stop_workers(sg, name, [w["pid"]])
        started = parse_time(w["started_at"])
        ran_lo, ran_hi = t_del - started, t_dead - started

        # sgpud notices the exit a moment after the process is gone
        groups, body = self.wait_for(
            lambda: (lambda gb: gb if not gb[0][w["id"]]["running"] else None)(self.worker_usage(sg, name)), 10,
            message="the worker's usage record closed")
        g = groups[w["id"]]
        billed = g["billable_seconds"]
        self.assertAlmostEqual(billed, round(billed), places=6, msg="billed in whole seconds: %r" % g)
        self.assertGreaterEqual(billed, ran_lo - 0.05, g)
        self.assertLessEqual(billed, ran_hi + 1.0, g)
        self.assertEqual(billed, math.ceil(g["seconds"]["total"] - 1e-9), g)
        secs = g["seconds"]
        self.assertGreaterEqual(secs["total"], ran_lo - 0.05)
        self.assertLessEqual(secs["total"], ran_hi + 0.05)
        self.assertAlmostEqual(secs["starting"], ready["cold_start_ms"] / 1000, delta=0.1)
        self.assertGreaterEqual(secs["starting"], 0.55)
        self.assertGreaterEqual(secs["busy"], 1.35)
        self.assertLessEqual(secs["busy"], 1.4 + scaled(0.3))
        self.assertAlmostEqual(secs["starting"] + secs["busy"] + secs["idle"], secs["total"], delta=0.003)
        self.assertGreater(secs["idle"], 1.0)
        self.assertEqual(g["requests"], 2)
        self.assertEqual(g["gpu_type"], "a100")
        self.assertEqual(g["gpu_count"], 2)
        self.assertAlmostEqual(g["gpu_seconds"], 2 * billed, places=6)
        self.assertAlmostEqual(g["cost"], 2 * billed * PRICE, places=9)
        self.assertAlmostEqual(g["cost_per_1k_requests"], g["cost"] / 2 * 1000, places=6)
        (ep,) = body["endpoints"]
        self.assertEqual(ep["endpoint"], name)
        self.assertAlmostEqual(body["total"]["cost"], ep["cost"], places=9)
        self.assertAlmostEqual(body["prices"]["a100"], PRICE)

        # by hour and by day: the same totals
        for group in ("hour", "day"):
            b = self.usage(sg, endpoint=name, group=group)
            self.assertAlmostEqual(sum(x["cost"] for x in b["groups"]), ep["cost"], places=9)
            for x in b["groups"]:
                self.assertEqual(x["endpoint"], name)
                self.assertIn("start", x)

        # the CLI shows the same
        out = subprocess.run([SGPU, "--url", sg.base_url, "--key", sg.key, "usage", name, "--by", "worker"],
                             capture_output=True, text=True, timeout=scaled(20))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(name, out.stdout)
        self.assertIn(w["id"], out.stdout)
        self.assertIn("%.6f" % ep["cost"], out.stdout)
        self.assertIn("TOTAL", out.stdout)
        out = subprocess.run([SGPU, "--url", sg.base_url, "--key", sg.key, "--json", "usage", "--from", "1h"],
                             capture_output=True, text=True, timeout=scaled(20))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertAlmostEqual(json.loads(out.stdout)["total"]["cost"], body["total"]["cost"], places=9)

    def test_async_job_time_is_busy(self):
        """A job running on a worker bills as busy, as a request does, even when no
        checkpoint falls inside it."""
        sg = self.start_sgpud(gpus="a100:1", args=["--price", "a100=%g" % PRICE])
        sg.config = write_config(sg.tmp, meter_checkpoint_s=3600)
        sg.restart()
        name = unique_name("jbill")
        spec = echo_spec(name, type="async", gpu={"type": "a100", "count": 1}, env={"WARMUP_MS": "0"},
                         workers={"min": 1, "max": 1, "idle_timeout_s": 600, "max_concurrency": 1})
        self.create(spec, sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=20)
        resp = sg.api("POST", "/v2/%s/runsync" % name, {"input": {"sleep_ms": 800}})
        self.assertOk(resp)
        self.assertEqual(resp.body["status"], "COMPLETED", resp.body)
        self.stop_workers(sg, name, [w["pid"]])
        groups, _ = self.wait_for(
            lambda: (lambda gb: gb if not gb[0][w["id"]]["running"] else None)(self.worker_usage(sg, name)), 10,
            message="the worker's usage record closed")
        g = groups[w["id"]]
        self.assertGreaterEqual(g["seconds"]["busy"], 0.75, g)
        self.assertEqual(g["requests"], 1, g)

    def test_restart_mid_run_does_not_double_bill(self):
        sg = self.start_sgpud(gpus="a100:1", args=["--price", "a100=%g" % PRICE])
        sg.config = write_config(sg.tmp, meter_checkpoint_s=0.5)
        sg.restart()
        name = unique_name("crash")
        spec = echo_spec(name, gpu={"type": "a100", "count": 1}, workers={"min": 1, "max": 1})
        self.create(spec, sg=sg)
        (w1,) = sg.wait_ready(name, 1, timeout=20)
        time.sleep(2)
        killed_at = time.time()
        sg.kill()
        time.sleep(2)  # the worker outlives sgpud; this time is not billed
        sg.start()
        groups, _ = self.worker_usage(sg, name)
        g1 = groups[w1["id"]]
        self.assertFalse(g1["running"], g1)
        ran_to_kill = killed_at - parse_time(w1["started_at"])
        self.assertLessEqual(g1["seconds"]["total"], ran_to_kill + 0.05, g1)
        self.assertGreaterEqual(g1["seconds"]["total"], ran_to_kill - scaled(0.5) - 0.3, g1)
        self.assertEqual(g1["billable_seconds"], math.ceil(g1["seconds"]["total"] - 1e-9))

        # a new worker runs; stop cleanly and start again: nothing billed twice
        (w2,) = self.wait_for(lambda: [x for x in sg.ready_workers(name) if x["id"] != w1["id"]], 20,
                              message="a new worker after the restart")
        time.sleep(1)
        sg.restart()
        groups2, body2 = self.worker_usage(sg, name)
        self.assertEqual(groups2[w1["id"]]["billable_seconds"], g1["billable_seconds"])
        self.assertEqual(groups2[w1["id"]]["seconds"], g1["seconds"])
        g2 = groups2[w2["id"]]
        self.assertFalse(g2["running"])
        self.assertGreaterEqual(g2["seconds"]["total"], 1.0)
        closed = [g for g in groups2.values() if not g["running"]]
        self.assertEqual(len(closed), 2, groups2)
        again, _ = self.worker_usage(sg, name)
        for wid in (w1["id"], w2["id"]):
            self.assertEqual(again[wid]["billable_seconds"], groups2[wid]["billable_seconds"])
            self.assertAlmostEqual(again[wid]["cost"], groups2[wid]["cost"], places=12)
        total = sum(g["cost"] for g in again.values())
        self.assertAlmostEqual(self.usage(sg, endpoint=name)["total"]["cost"], total, delta=PRICE * 3)

    def test_price_change_applies_from_its_time_on(self):
        sg = self.start_sgpud(gpus="a100:1", args=["--price", "a100=0.001"])
        name = unique_name("price")
        spec = echo_spec(name, gpu={"type": "a100", "count": 1}, workers={"min": 1, "max": 1})
        self.create(spec, sg=sg)
        (w1,) = sg.wait_ready(name, 1, timeout=20)
        time.sleep(1.2)
        sg.args = ["--price", "a100=0.01"]
        sg.restart()
        (w2,) = self.wait_for(lambda: [x for x in sg.ready_workers(name) if x["id"] != w1["id"]], 20,
                              message="a worker under the new price")
        time.sleep(1.2)
        self.stop_workers(sg, name, [w2["pid"]])
        groups, body = self.wait_for(
            lambda: (lambda gb: gb if not gb[0][w2["id"]]["running"] else None)(self.worker_usage(sg, name)), 10,
            message="the worker's usage record closed")
        g1, g2 = groups[w1["id"]], groups[w2["id"]]
        self.assertAlmostEqual(g1["cost"], g1["billable_seconds"] * 0.001, places=9)
        self.assertAlmostEqual(g2["cost"], g2["billable_seconds"] * 0.01, places=9)
        self.assertAlmostEqual(body["total"]["cost"], g1["cost"] + g2["cost"], places=9)
        self.assertAlmostEqual(body["prices"]["a100"], 0.01)

    def test_query_validation_and_auth(self):
        sg = self.start_sgpud(args=["--price", "a100=0.001"])
        for qs, field in (("group=week", "group"), ("from=yesterday", "from"), ("to=1&from=2", "to"),
                          ("nope=1", "nope")):
            self.assertError(sg.api("GET", "/v1/usage?" + qs), 400, "invalid_query", field=field)
        self.assertError(sg.api("GET", "/v1/usage", key=None), 401, "unauthorized")
        self.assertError(sg.api("GET", "/v1/usage", key="wrong-key-wrong-key"), 401, "unauthorized")
        self.assertError(sg.api("POST", "/v1/usage", body={}), 405, "method_not_allowed")
        body = self.assertOk(sg.api("GET", "/v1/usage?from=2020-01-01&to=2020-01-02T00:00:00Z"))
        self.assertEqual(body["from"], "2020-01-01T00:00:00.000Z")
        self.assertEqual(body["to"], "2020-01-02T00:00:00.000Z")
        self.assertEqual(body["endpoints"], [])
        self.assertEqual(body["total"]["cost"], 0)
        self.assertIsNone(body["total"]["cost_per_1k_requests"])
        # sgpud refuses a malformed price list
        bad = subprocess.run([sg.command_line()[0], "--price", "a100=-1", "--data-dir", sg.data_dir],
                             capture_output=True, text=True, timeout=scaled(10))
        self.assertEqual(bad.returncode, 2)
        self.assertIn("price", bad.stderr)


if __name__ == "__main__":
    unittest.main()
