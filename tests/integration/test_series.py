"""GET /v1/endpoints/{name}/series and its range: the last hour in 5 s steps,
longer ranges (up to 7 days) in 10 min steps, a bad range refused."""

import time
import unittest

from harness import SgpudTestCase, echo_spec, unique_name, wait_for


class SeriesTest(SgpudTestCase):
    SHARED = {}

    def series(self, name, query=""):
        resp = self.sg.api("GET", "/v1/endpoints/%s/series%s" % (name, query))
        self.assertOk(resp, 200)
        body = resp.body
        for col in ("requests_per_s", "queue", "workers", "ready", "in_flight", "errors_4xx", "errors_5xx",
                    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "starting", "cold_starts",
                    "cold_start_ms", "queue_delay_ms"):
            self.assertEqual(len(body[col]), body["points"], col)
        self.assertEqual(len(body["t"]), body["points"])
        return body

    def test_ranges(self):
        name = unique_name("series")
        self.create(echo_spec(name, workers={"min": 1, "max": 1}))
        self.sg.wait_ready(name, 1, timeout=20)

        hour = wait_for(lambda: (lambda b: b if b["points"] >= 1 else None)(self.series(name)),
                        timeout=10, message="a point of the hour's series")
        self.assertEqual(hour["step_s"], 5)
        # requests after the series began (its first point is on a tick after create)
        for _ in range(3):
            self.assertOk(self.sg.invoke(name, "/infer", body=b"x"), 200)
        for status in (500, 503, 404):
            self.assertEqual(self.sg.invoke(name, "/status/%d" % status, body=b"x").status, status)
        errors = wait_for(lambda: (lambda b: b if sum(b["errors_5xx"]) == 2 and sum(b["errors_4xx"]) == 1 else None)(
            self.series(name)), timeout=10, message="the answers with errors counted")
        self.assertTrue(all(n >= 0 for n in errors["errors_5xx"] + errors["errors_4xx"]))
        # latency percentiles: null for a step without answers, else p50 <= p95 <= p99 (ms)
        answered = [i for i, v in enumerate(errors["latency_p50_ms"]) if v is not None]
        self.assertTrue(answered, errors)
        for i in range(errors["points"]):
            p50, p95, p99 = (errors[c][i] for c in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"))
            if p50 is None:
                self.assertEqual((p95, p99), (None, None))
            else:
                self.assertTrue(0 < p50 <= p95 <= p99 <= 30000, (p50, p95, p99))
        quarter = self.series(name, "?range=15m")
        self.assertEqual(quarter["step_s"], 5)
        cutoff = time.time() * 1000 - 15 * 60 * 1000 - 5000
        self.assertTrue(all(t >= cutoff for t in quarter["t"]), quarter["t"])

        # 24 h and 7 d come from the 10 min ring; its step in progress already
        # counts this endpoint's requests, errors and its ready worker
        for rng in ("24h", "7d"):
            day = wait_for(lambda: (lambda b: b if b["requests_per_s"][-1] > 0 and b["ready"][-1] == 1
                                    and b["errors_5xx"][-1] == 2 and b["errors_4xx"][-1] == 1
                                    and b["latency_p99_ms"][-1] is not None else None)(
                self.series(name, "?range=" + rng)), timeout=10, message="the %s series" % rng)
            self.assertEqual(day["step_s"], 600)
            self.assertGreaterEqual(day["t"][-1], time.time() * 1000 - 600 * 1000 - 5000)

    def test_cold_starts_and_queue_delay(self):
        # scaled to zero, the series already sampling: the first request waits
        # in the queue for a worker that starts (one cold start) in a step
        name = unique_name("series")
        self.create(echo_spec(name, workers={"min": 0, "max": 1, "idle_timeout_s": 600}))
        before = wait_for(lambda: (lambda b: b if b["points"] >= 2 else None)(self.series(name)),
                          timeout=20, message="the series sampling")
        self.assertEqual(sum(before["cold_starts"]), 0)
        self.assertEqual(before["cold_start_ms"], [None] * before["points"])
        self.assertEqual(before["queue_delay_ms"], [None] * before["points"])
        self.assertEqual(before["starting"], [0] * before["points"])
        self.assertOk(self.sg.invoke(name, "/infer", body=b"x"), 200)
        after = wait_for(lambda: (lambda b: b if sum(b["cold_starts"]) == 1 else None)(self.series(name)),
                         timeout=10, message="the cold start counted")
        i = next(i for i, n in enumerate(after["cold_starts"]) if n)
        self.assertGreater(after["cold_start_ms"][i], 0)
        waited = [v for v in after["queue_delay_ms"] if v is not None]
        self.assertEqual(len(waited), 1, after["queue_delay_ms"])
        self.assertGreaterEqual(waited[0], 0)
        self.assertTrue(all(n in (0, 1) for n in after["starting"]), after["starting"])
        # the 10 min ring's step in progress counts them too
        day = self.series(name, "?range=24h")
        self.assertEqual(day["cold_starts"][-1], 1)
        self.assertIsNotNone(day["cold_start_ms"][-1])
        self.assertIsNotNone(day["queue_delay_ms"][-1])

    def test_bad_range(self):
        name = unique_name("series")
        self.create(echo_spec(name))
        for q in ("?range=8d", "?range=soon", "?range=0s", "?range="):
            resp = self.sg.api("GET", "/v1/endpoints/%s/series%s" % (name, q))
            self.assertEqual(resp.status, 400, q)
            self.assertEqual(resp.body["error"]["code"], "invalid_query", q)
            self.assertEqual(resp.body["error"]["field"], "range", q)


if __name__ == "__main__":
    unittest.main()
