"""The scaler: from zero and back, min and max workers, queueing, GPU allocation."""

import threading
import time
import unittest

from harness import (ACTIVE_STATES, Background, SgpudTestCase, echo_spec, gpu_list, pid_alive,
                     run_concurrently, scaled, unique_name)


class LoadWatcher:
    """Polls an endpoint's workers (and optionally nodes) in a thread while load runs."""

    def __init__(self, sg, name, interval=0.05, nodes=False):
        self.sg, self.name, self.interval, self.want_nodes = sg, name, interval, nodes
        self.max_active = 0
        self.max_load = 0
        self.samples = 0
        self.errors = []
        self.node_snapshots = []
        self.worker_ids = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                workers = self.sg.workers(self.name)
                active = [w for w in workers if w.get("state") in ACTIVE_STATES]
                self.max_active = max(self.max_active, len(active))
                self.worker_ids.update(w["id"] for w in active)
                st = self.sg.status(self.name)
                self.max_load = max(self.max_load, st.get("in_flight", 0) + st.get("queued", 0))
                if self.want_nodes:
                    self.node_snapshots.append(self.sg.nodes())
                self.samples += 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ScalingTest(SgpudTestCase):
    SHARED = {}

    def test_scale_from_zero_and_back_to_zero(self):
        name = unique_name("zero")
        self.create(echo_spec(name, workers={"min": 0, "max": 2, "idle_timeout_s": 1}))
        self.assertEqual(self.sg.active_workers(name), [])
        self.assertEqual(self.sg.status(name)["desired"], 0)

        body = self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))
        pid = body["worker_pid"]
        self.assertTrue(pid_alive(pid))
        self.assertEqual(len(self.sg.active_workers(name)), 1)

        # idle for more than idle_timeout_s: back to zero, the process is gone
        self.wait_for(lambda: self.sg.active_workers(name) == [], 20,
                      message="scale back to zero after idle_timeout_s")
        self.wait_for(lambda: not pid_alive(pid), 10, message="worker process %d gone" % pid)
        st = self.sg.status(name)
        self.assertEqual(st["desired"], 0, st)
        self.assertEqual(st["workers"]["ready"], 0, st)
        ended = [w for w in self.sg.workers(name) if w["pid"] == pid]
        if ended:  # recently ended workers may be kept in the list
            self.assertIn(ended[0]["state"], ("stopped", "failed"), ended[0])

        # and up again on the next request
        body2 = self.assertOk(self.sg.invoke(name, "/infer", body=b"y"))
        self.assertNotEqual(body2["worker_pid"], pid)

    def test_min_workers_kept_running(self):
        name = unique_name("min")
        self.create(echo_spec(name, workers={"min": 1, "max": 2, "idle_timeout_s": 1}))
        # a ready worker appears without any traffic
        (w0,) = self.sg.wait_ready(name, 1, timeout=20)
        self.assertGreaterEqual(self.sg.status(name)["desired"], 1)
        # Nothing may happen here: min keeps the worker although it stays idle
        # well past idle_timeout_s. A window, as there is no state to wait for.
        time.sleep(scaled(3))
        ready = self.sg.ready_workers(name)
        self.assertEqual([w["id"] for w in ready], [w0["id"]], ready)
        self.assertEqual(len(self.sg.active_workers(name)), 1)
        self.assertTrue(pid_alive(w0["pid"]))
        self.assertGreaterEqual(self.sg.status(name)["desired"], 1)

    def test_max_never_exceeded_under_load(self):
        name = unique_name("max")
        self.create(echo_spec(name, workers={"min": 0, "max": 2, "max_concurrency": 1,
                                              "idle_timeout_s": 30}))

        def call(i):
            return self.sg.invoke(name, "/infer?delay_ms=400&i=%d" % i, body=b"x", timeout=120)

        with LoadWatcher(self.sg, name) as watch:
            results = run_concurrently(call, [(i,) for i in range(20)])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        statuses = [r.status for r in results]
        self.assertEqual(statuses, [200] * 20, [(r.status, r.body) for r in results if r.status != 200])
        self.assertFalse(watch.errors, watch.errors[:3])
        self.assertGreater(watch.samples, 5)
        self.assertLessEqual(watch.max_active, 2, "more than workers.max=2 workers at once")
        pids = {r.body["worker_pid"] for r in results}
        self.assertLessEqual(len(pids), 2, pids)
        self.assertEqual(len(pids), 2, "20 queued requests did not scale out to max=2")
        self.assertGreater(watch.max_load, 0, "status.in_flight/queued never showed the load")
        self.wait_for(lambda: self.sg.status(name)["served"] >= 20, 5, message="served >= 20")

    def test_full_queue_is_503_with_retry_after(self):
        name = unique_name("qfull")
        self.create(echo_spec(name, workers={"min": 1, "max": 1, "max_concurrency": 1,
                                              "max_queue": 1, "request_timeout_s": 60}))
        self.sg.wait_ready(name, timeout=20)
        delay = int(scaled(2500))
        slow = lambda: self.sg.invoke(name, "/infer?delay_ms=%d" % delay, body=b"s", timeout=60)
        a = Background(slow)  # occupies the only worker
        self.wait_for(lambda: self.sg.status(name)["in_flight"] == 1, 10,
                      message="the first slow request at the worker")
        b = Background(slow)  # waits in the queue (max_queue 1)
        self.wait_for(lambda: self.sg.status(name)["queued"] == 1, 10,
                      message="the second slow request queued")
        self.assertFalse(a.done() or b.done(), "slow requests finished too early")
        t0 = time.monotonic()
        c = self.sg.invoke(name, "/infer", body=b"c", timeout=30)
        self.assertError(c, 503, "queue_full")
        self.assertLess(time.monotonic() - t0, scaled(1.5), "queue_full was not immediate")
        retry_after = c.headers.get("Retry-After")
        self.assertIsNotNone(retry_after, "no Retry-After header")
        self.assertTrue(retry_after.strip().isdigit(), "Retry-After: %r" % retry_after)
        self.assertEqual(a.result().status, 200)
        self.assertEqual(b.result().status, 200)
        # once drained, requests are accepted again
        self.assertOk(self.sg.invoke(name, "/infer", body=b"d"))

    def test_delete_one_worker_replaces_it(self):
        name = unique_name("delw")
        self.create(echo_spec(name, workers={"min": 1, "max": 1}))
        (w0,) = self.sg.wait_ready(name, 1, timeout=20)
        resp = self.sg.api("DELETE", "/v1/endpoints/%s/workers/%s" % (name, w0["id"]))
        self.assertIn(resp.status, (200, 202, 204), resp.body)
        self.wait_for(lambda: not pid_alive(w0["pid"]), 15, message="deleted worker's process gone")
        new = self.wait_for(lambda: [w for w in self.sg.ready_workers(name) if w["id"] != w0["id"]],
                            20, message="replacement worker ready")
        self.assertNotEqual(new[0]["pid"], w0["pid"])
        old = [w for w in self.sg.workers(name) if w["id"] == w0["id"]]
        if old:
            self.assertIn(old[0]["state"], ("stopped", "failed"), old[0])

    def test_put_replaces_running_workers(self):
        name = unique_name("roll")
        spec = echo_spec(name, env={"MODEL": "v1"}, workers={"min": 1, "max": 1})
        self.create(spec)
        (w0,) = self.sg.wait_ready(name, 1, timeout=20)
        self.assertEqual(self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))["model"], "v1")
        ep = self.sg.update(name, echo_spec(name, env={"MODEL": "v2"}, workers={"min": 1, "max": 1}))
        self.assertEqual(ep["version"], 2)

        def rolled():
            active = self.sg.active_workers(name)
            return (active and all(w["version"] == 2 for w in active)
                    and any(w["state"] == "ready" for w in active))

        self.wait_for(rolled, 30, message="workers replaced by version 2")
        self.wait_for(lambda: not pid_alive(w0["pid"]), 15, message="old worker's process gone")
        body = self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))
        self.assertEqual(body["model"], "v2")

    def test_delete_endpoint_stops_its_workers(self):
        name = unique_name("delep")
        self.create(echo_spec(name, workers={"min": 2, "max": 2}))
        workers = self.sg.wait_ready(name, 2, timeout=20)
        pids = [w["pid"] for w in workers]
        self.assertOk(self.sg.api("DELETE", "/v1/endpoints/%s" % name))
        self.wait_for(lambda: not any(pid_alive(p) for p in pids), 15,
                      message="workers of a deleted endpoint gone")
        self.assertError(self.sg.api("GET", "/v1/endpoints/%s/workers" % name), 404, "not_found")
        self.assertError(self.sg.invoke(name, "/infer", body=b"x"), 404, "not_found")


class GpuQueueTest(SgpudTestCase):
    def test_requests_queue_when_gpus_run_out(self):
        sg = self.start_sgpud(gpus="a100:1")
        name = unique_name("gpuq")
        self.create(echo_spec(name, gpu={"type": "a100", "count": 1},
                              workers={"min": 0, "max": 3, "max_concurrency": 1,
                                       "idle_timeout_s": 30, "request_timeout_s": 120}), sg=sg)

        def call(i):
            return sg.invoke(name, "/infer?delay_ms=300&i=%d" % i, body=b"x", timeout=120)

        with LoadWatcher(sg, name, nodes=True) as watch:
            results = run_concurrently(call, [(i,) for i in range(6)])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.assertEqual([r.status for r in results], [200] * 6,
                         [(r.status, r.body) for r in results])
        self.assertFalse(watch.errors, watch.errors[:3])
        self.assertEqual(watch.max_active, 1, "only one GPU: at most one worker")
        pids = {r.body["worker_pid"] for r in results}
        self.assertEqual(len(pids), 1, pids)
        for r in results:
            self.assertEqual(gpu_list(r.body["gpus"]), [0], r.body)
        failed = [w for w in sg.workers(name) if w["state"] == "failed"]
        self.assertEqual(failed, [], "workers failed for lack of GPUs")

        (w,) = sg.active_workers(name)
        self.assertEqual(w["gpus"], [0])
        self.assertEqual(w["gpu_type"], "a100")
        node = sg.nodes()[0]
        self.assertEqual(node["gpus_total"], 1)
        self.assertEqual(node["gpus_free"], 0)
        self.assertEqual(node["gpus"][0]["worker"], w["id"])
        self.assertEqual(node["gpus"][0]["endpoint"], name)
        # during the load, the GPU was never shown as held by anything else
        for snap in watch.node_snapshots:
            holder = snap[0]["gpus"][0]["endpoint"]
            self.assertIn(holder, (None, name))


class GpuShareTest(SgpudTestCase):
    """Work that waits for GPUs gets those idle workers of other endpoints hold."""

    def events(self, sg, name):
        lines = sg.logs(name, stream="event", limit=10000)
        return [l["line"] for l in sorted(lines, key=lambda l: l["ts"])]

    def gpu_endpoint(self, sg, name, min_workers=0):
        # A long idle timeout: only the sharing rule can free the GPU in time.
        self.create(echo_spec(name, gpu={"type": "a100", "count": 1},
                              workers={"min": min_workers, "max": 1, "max_concurrency": 1,
                                       "idle_timeout_s": 600, "request_timeout_s": 120}), sg=sg)

    def test_waiting_request_gets_the_gpu_of_an_idle_worker(self):
        sg = self.start_sgpud(gpus="a100:1")
        a, b = unique_name("holder"), unique_name("waiter")
        self.gpu_endpoint(sg, a)
        r = sg.invoke(a, "/infer", body=b"x", timeout=60)
        self.assertEqual(r.status, 200, r.body)
        (held,) = sg.ready_workers(a)
        self.assertEqual(held["gpus"], [0])
        self.gpu_endpoint(sg, b)
        # Before: it waited for a's idle timeout (600 s), far past this.
        r = sg.invoke(b, "/infer", body=b"x", timeout=scaled(30))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(gpu_list(r.body["gpus"]), [0], r.body)
        self.assertEqual(sg.active_workers(a), [])
        (w,) = [w for w in sg.workers(a) if w["id"] == held["id"]]
        self.assertEqual(w["state"], "stopped", w)
        ev_a = self.wait_for(lambda: [e for e in self.events(sg, a) if "go to endpoint %s" % b in e], 10,
                             message="an event on %s naming %s" % (a, b))
        self.assertEqual(len(ev_a), 1, self.events(sg, a))
        ev_b = self.wait_for(lambda: [e for e in self.events(sg, b)
                                      if "stopping idle worker %s of endpoint %s" % (held["id"], a) in e], 10,
                             message="an event on %s naming %s and its worker" % (b, a))
        self.assertEqual(len(ev_b), 1, self.events(sg, b))

    def test_min_keeps_the_gpu(self):
        sg = self.start_sgpud(gpus="a100:1")
        a, b = unique_name("keeper"), unique_name("waiter")
        self.gpu_endpoint(sg, a, min_workers=1)
        (held,) = sg.wait_ready(a, 1, timeout=30)
        self.gpu_endpoint(sg, b)
        call = threading.Thread(target=lambda: sg.invoke(b, "/infer", body=b"x", timeout=scaled(60)), daemon=True)
        call.start()
        # The pass that logs "waiting for free GPUs" is the one that would have
        # stopped a's worker.
        self.wait_for(lambda: "waiting for free GPUs" in (sg.status(b).get("last_decision") or ""), 15,
                      message="%s waits for GPUs" % b)
        self.wait_for(lambda: sg.status(b)["queued"] >= 1, 10, message="the request queued")
        self.assertEqual([w["id"] for w in sg.ready_workers(a)], [held["id"]])
        self.assertFalse([e for e in self.events(sg, a) if "go to endpoint" in e], self.events(sg, a))
        self.assertFalse([e for e in self.events(sg, b) if "stopping idle worker" in e], self.events(sg, b))
        sg.delete(b)
        call.join(scaled(30))


if __name__ == "__main__":
    unittest.main()
