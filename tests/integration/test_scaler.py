"""The scale policies end to end: a burst on a `concurrency` endpoint, a
`queue_delay` endpoint below and above its delay, and every decision logged as
an endpoint event with its reason."""

import math
import re
import threading
import time
import unittest

from harness import (ACTIVE_STATES, SgpudTestCase, echo_spec, run_concurrently, scaled, unique_name,
                     wait_for)

SCALE_UP = re.compile(r"^scale up (\d+) -> (\d+) \((.*)\)")
SCALE_DOWN = re.compile(r"^scale down (\d+) -> (\d+) \((.*)\)")


class ActiveWatcher:
    """Polls an endpoint's workers in a thread and keeps the most active at once."""

    def __init__(self, sg, name, interval=0.05):
        self.sg, self.name, self.interval = sg, name, interval
        self.max_active = 0
        self.samples = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                active = [w for w in self.sg.workers(self.name) if w.get("state") in ACTIVE_STATES]
                self.max_active = max(self.max_active, len(active))
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


class ScalerTest(SgpudTestCase):
    SHARED = {}

    def decisions(self, name):
        """The scaler's events of endpoint `name`, oldest first, without the prefix."""
        lines = self.sg.logs(name, stream="event", limit=10000)
        lines.sort(key=lambda l: l["ts"])
        return [l["line"][len("scaler: "):] for l in lines if l["line"].startswith("scaler: ")]

    def started_by(self, decisions):
        return sum(int(m.group(2)) - int(m.group(1)) for m in map(SCALE_UP.match, decisions) if m)

    def stopped_by(self, decisions):
        return sum(int(m.group(1)) - int(m.group(2)) for m in map(SCALE_DOWN.match, decisions) if m)

    def assert_last_decision_shown(self, name):
        """status.last_decision is the newest decision logged."""
        def shown():
            got = self.decisions(name)
            return got and self.sg.status(name).get("last_decision") == got[-1]
        self.wait_for(shown, 10, message="status.last_decision equals the newest scaler event")

    def test_concurrency_burst_scales_to_the_need_and_back_to_min(self):
        name = unique_name("burst")
        value, requests = 10, 50
        want = math.ceil(requests / value)  # 5, below max: the policy, not the bound, decides
        self.create(echo_spec(name, workers={"min": 0, "max": 8, "max_concurrency": value,
                                              "idle_timeout_s": 2},
                              scale={"policy": "concurrency", "value": value}))
        delay = int(scaled(3000))

        def call(i):
            return self.sg.invoke(name, "/infer?delay_ms=%d&i=%d" % (delay, i), body=b"x", timeout=120)

        with ActiveWatcher(self.sg, name) as watch:
            results = run_concurrently(call, [(i,) for i in range(requests)])
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            self.assertEqual([r.status for r in results], [200] * requests,
                             [(r.status, r.body) for r in results if r.status != 200][:3])
            # Idle for less than the idle timeout: nothing stopped yet.
            self.assertEqual(len(self.sg.active_workers(name)), want)
        self.assertFalse(watch.errors, watch.errors[:3])
        self.assertGreater(watch.samples, 5)
        self.assertEqual(watch.max_active, want,
                         "%d concurrent requests at %d per worker: want %d workers" % (requests, value, want))
        pids = {r.body["worker_pid"] for r in results}
        self.assertLessEqual(len(pids), want, pids)

        decisions = self.wait_for(lambda: (lambda d: d if self.started_by(d) >= want else None)(
            self.decisions(name)), 10, message="scale-up events for %d workers" % want)
        self.assertEqual(self.started_by(decisions), want, decisions)
        self.assertRegex(decisions[0], r"^scale up 0 -> \d+ \(from zero; ", decisions)
        for d in decisions:
            if SCALE_UP.match(d):
                self.assertIn("concurrency %d:" % value, d)

        # Back to min (0) once idle past the timeout (2 s): the windows keep
        # nothing past it without scale.hold_s.
        self.wait_for(lambda: self.sg.active_workers(name) == [], 30,
                      message="scale back to min after the burst", interval=0.5)
        st = self.sg.status(name)
        self.assertEqual(st["desired"], 0, st)
        decisions = self.wait_for(lambda: (lambda d: d if self.stopped_by(d) >= want else None)(
            self.decisions(name)), 10, message="scale-down events for %d workers" % want)
        self.assertEqual(self.stopped_by(decisions), want, decisions)
        for d in decisions:
            if SCALE_DOWN.match(d):
                self.assertIn("idle past the idle timeout", d)
        # Every change is an event, and nothing but changes is.
        self.assertEqual(len(decisions), len([d for d in decisions if SCALE_UP.match(d) or SCALE_DOWN.match(d)]),
                         decisions)
        self.assert_last_decision_shown(name)

    def burst(self, name, requests=12):
        """Sends `requests` at once to a worker sized for one: a panic (more
        than twice the ready workers' worth)."""
        delay = int(scaled(1000))

        def call(i):
            return self.sg.invoke(name, "/infer?delay_ms=%d&i=%d" % (delay, i), body=b"x", timeout=120)

        results = run_concurrently(call, [(i,) for i in range(requests)])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.assertEqual([r.status for r in results], [200] * requests,
                         [(r.status, r.body) for r in results if r.status != 200][:3])

    def test_burst_workers_stop_within_idle_timeout(self):
        # The panic window used to keep them for a stable window (60 s) after
        # a burst whatever idle_timeout_s said: the bound below is far under it.
        name = unique_name("bound")
        idle = 1
        self.create(echo_spec(name, workers={"min": 0, "max": 4, "max_concurrency": 1, "idle_timeout_s": idle},
                              scale={"policy": "concurrency", "value": 1}))
        self.burst(name)
        self.wait_for(lambda: self.sg.active_workers(name) == [], idle + 10,
                      message="every worker stopped within idle_timeout_s + a tick after a burst", interval=0.1)
        st = self.sg.status(name)
        self.assertEqual(st["desired"], 0, st)
        decisions = self.decisions(name)
        downs = [d for d in decisions if SCALE_DOWN.match(d)]
        self.assertTrue(downs, decisions)
        for d in downs:
            self.assertIn("idle past the idle timeout", d)
        self.assertFalse([d for d in decisions if "holding" in d], decisions)

    def test_hold_s_holds_idle_workers_and_says_so(self):
        name = unique_name("hold")
        idle = 1
        self.create(echo_spec(name, workers={"min": 0, "max": 4, "max_concurrency": 1, "idle_timeout_s": idle},
                              scale={"policy": "concurrency", "value": 1, "hold_s": 120}))
        self.assertEqual(self.sg.get(name)["scale"]["hold_s"], 120)
        self.burst(name)
        # Past the idle timeout the panic window would keep them: within the
        # hold it may, and the decision says so.
        st = self.wait_for(lambda: (lambda s: s if "for scale.hold_s (120s)" in (s.get("last_decision") or "")
                                    else None)(self.sg.status(name)), idle + 10,
                           message="status.last_decision says it holds workers for scale.hold_s")
        self.assertRegex(st["last_decision"], r"holding \d+ workers? idle past the idle timeout", st)
        self.assertTrue(self.sg.active_workers(name), st)
        self.assert_last_decision_shown(name)
        # Without the hold they stop at once.
        resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"scale": {"hold_s": 0}})
        self.assertEqual(resp.status, 200, resp.body)
        self.wait_for(lambda: self.sg.active_workers(name) == [], idle + 10,
                      message="held workers stopped once scale.hold_s is 0", interval=0.1)
        # Out of range: a field error.
        resp = self.sg.api("PATCH", "/v1/endpoints/%s" % name, {"scale": {"hold_s": -1}})
        self.assertError(resp, 422, "invalid_field", field="scale.hold_s")

    def test_queue_delay_waits_for_its_value(self):
        name = unique_name("qdelay")
        delay_s = scaled(10)
        self.create(echo_spec(name, workers={"min": 1, "max": 4, "max_concurrency": 1, "idle_timeout_s": 30},
                              scale={"policy": "queue_delay", "value": delay_s}))
        self.sg.wait_ready(name, 1, timeout=20)

        # Four requests of 0.8 s on one worker: the last waits about 2.4 s,
        # well below the 10 s delay, so no worker is added.
        service = int(scaled(800))

        def call(i):
            return self.sg.invoke(name, "/infer?delay_ms=%d&i=%d" % (service, i), body=b"x", timeout=120)

        with ActiveWatcher(self.sg, name) as watch:
            results = run_concurrently(call, [(i,) for i in range(4)])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.assertEqual([r.status for r in results], [200] * 4)
        self.assertFalse(watch.errors, watch.errors[:3])
        self.assertEqual(watch.max_active, 1, "scaled up although the queue wait stayed below the delay")
        self.assertEqual(len({r.body["worker_pid"] for r in results}), 1)
        decisions = self.decisions(name)
        ups = [d for d in decisions if SCALE_UP.match(d)]
        self.assertEqual(len(ups), 1, decisions)
        self.assertTrue(ups[0].startswith("scale up 0 -> 1 (workers.min;"), ups)
        self.assert_last_decision_shown(name)

    def test_queue_delay_adds_workers_past_its_value(self):
        name = unique_name("qpast")
        self.create(echo_spec(name, workers={"min": 1, "max": 4, "max_concurrency": 1, "idle_timeout_s": 30},
                              scale={"policy": "queue_delay", "value": 0.5}))
        self.sg.wait_ready(name, 1, timeout=20)
        service = int(scaled(3000))

        def call(i):
            return self.sg.invoke(name, "/infer?delay_ms=%d&i=%d" % (service, i), body=b"x", timeout=120)

        with ActiveWatcher(self.sg, name) as watch:
            results = run_concurrently(call, [(i,) for i in range(4)])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        self.assertEqual([r.status for r in results], [200] * 4)
        self.assertGreaterEqual(watch.max_active, 2, "requests waited 3 s past a 0.5 s delay without a new worker")
        self.assertLessEqual(watch.max_active, 4)
        ups = [d for d in self.decisions(name) if SCALE_UP.match(d)]
        self.assertGreaterEqual(len(ups), 2, ups)
        self.assertIn("queue_delay 0.5s:", ups[1])
        self.assertRegex(ups[1], r"oldest waited \d+ ms")
        self.assert_last_decision_shown(name)


if __name__ == "__main__":
    unittest.main()
