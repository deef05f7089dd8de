"""Tracing a request: the X-Request-Id kept or made by the gateway, passed to the
worker and returned with the worker, queue delay and execution time; worker log
lines stored with the request id and filtered by it and by stream; the metrics a
user graphs (cold starts, job outcomes and durations, GPU-seconds by state)."""

import re
import unittest

from harness import SgpudTestCase, echo_spec, unique_name

GENERATED = re.compile(r"^req_[0-9a-f]{32}$")


class RequestIdTest(SgpudTestCase):
    SHARED = {}

    def setUp(self):
        self.name = unique_name("trace")
        self.create(echo_spec(self.name, workers={"min": 1, "max": 1}))
        self.sg.wait_ready(self.name, 1, timeout=20)

    def assertTraced(self, resp, rid):
        self.assertOk(resp)
        self.assertEqual(resp.headers.get_all("X-Request-Id"), [rid])
        worker = resp.headers["X-Sgpu-Worker"]
        self.assertIn(worker, [w["id"] for w in self.sg.workers(self.name)])
        self.assertRegex(resp.headers["X-Sgpu-Delay-Ms"], r"^[0-9]+$")
        self.assertRegex(resp.headers["X-Sgpu-Exec-Ms"], r"^[0-9]+$")
        # The worker got the same id, once.
        self.assertEqual(resp.body["headers"]["x-request-id"], rid)

    def test_incoming_id_is_kept(self):
        rid = "client-42.a:b_C"
        resp = self.sg.invoke(self.name, "/echo", headers={"X-Request-Id": rid})
        self.assertTraced(resp, rid)

    def test_id_is_made_without_one(self):
        resp = self.sg.invoke(self.name, "/echo")
        rid = resp.headers["X-Request-Id"]
        self.assertRegex(rid, GENERATED)
        self.assertTraced(resp, rid)
        other = self.sg.invoke(self.name, "/echo").headers["X-Request-Id"]
        self.assertNotEqual(other, rid)

    def test_hostile_ids_are_replaced(self):
        for bad in ["a" * 10240, "a" * 129, "bad id", "x;y", "é", ""]:
            with self.subTest(length=len(bad), value=bad[:10]):
                resp = self.sg.invoke(self.name, "/echo", headers={"X-Request-Id": bad})
                rid = resp.headers["X-Request-Id"]
                self.assertRegex(rid, GENERATED)
                self.assertTraced(resp, rid)
        # The longest id kept as is.
        long_ok = "b" * 128
        self.assertTraced(self.sg.invoke(self.name, "/echo", headers={"X-Request-Id": long_ok}), long_ok)

    def test_crlf_in_id_is_not_reflected(self):
        # A raw request: http.client refuses to send a header value holding CR/LF.
        import socket
        s = socket.create_connection(("127.0.0.1", self.sg.port), timeout=10)
        try:
            s.sendall(("GET /e/%s/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "X-Request-Id: abc\rSet-Cookie: x=1\r\nConnection: close\r\n\r\n"
                       % (self.name, self.sg.key)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        self.assertNotIn("Set-Cookie", head)
        status = head.split("\r\n", 1)[0]
        if " 200 " in status:
            ids = [l for l in head.split("\r\n") if l.lower().startswith("x-request-id:")]
            self.assertEqual(len(ids), 1, head)
            self.assertRegex(ids[0].split(":", 1)[1].strip(), GENERATED)

    def test_gateway_errors_carry_the_id(self):
        name = unique_name("trace-to")
        # The worker loads for longer than the request may wait: a 504 from the queue.
        self.create(echo_spec(name, workers={"min": 0, "max": 1, "request_timeout_s": 1},
                              env={"WARMUP_MS": "30000"}))
        resp = self.sg.invoke(name, "/echo", headers={"X-Request-Id": "timeout-1"})
        self.assertError(resp, 504, "timeout")
        self.assertEqual(resp.headers["X-Request-Id"], "timeout-1")
        resp = self.sg.invoke("no-such-endpoint", "/echo", headers={"X-Request-Id": "missing-1"})
        self.assertError(resp, 404, "not_found")
        self.assertEqual(resp.headers["X-Request-Id"], "missing-1")
        # The worker exits before it answers a POST (not sent again): 502.
        resp = self.sg.invoke(self.name, "/crash", method="POST", body={}, headers={"X-Request-Id": "crash-1"})
        self.assertError(resp, 502)
        self.assertEqual(resp.headers["X-Request-Id"], "crash-1")

    def test_job_id_goes_to_the_worker(self):
        name = unique_name("trace-job")
        self.create(echo_spec(name, type="async", workers={"min": 1, "max": 1}))
        resp = self.sg.api("POST", "/v2/%s/runsync" % name, {"input": {"trace": True}})
        self.assertOk(resp)
        self.assertEqual(resp.body["status"], "COMPLETED", resp.body)
        self.assertEqual(resp.body["output"], {"request_id": resp.body["id"]})


class TracedLogsTest(SgpudTestCase):
    SHARED = {}

    def lines(self, name, **params):
        return [(l["stream"], l["line"], l.get("request_id")) for l in self.sg.logs(name, **params)
                if l["stream"] != "event"]

    def test_lines_filtered_by_request_id_and_stream(self):
        name = unique_name("trace-l")
        self.create(echo_spec(name, workers={"min": 1, "max": 1, "max_concurrency": 4}))
        self.sg.wait_ready(name, 1, timeout=20)
        for rid in ("rq-1", "rq-10", "rq-2"):
            self.assertOk(self.sg.invoke(name, "/trace", headers={"X-Request-Id": rid}))
        made = self.sg.invoke(name, "/trace").headers["X-Request-Id"]
        # A line that names a request that is not in flight is stored without an id.
        self.assertOk(self.sg.invoke(name, "/echo", headers={"X-Request-Id": "rq-untraced"}))

        want = lambda rid: {("stdout", "trace %s stdout" % rid, rid), ("stderr", "trace %s stderr" % rid, rid)}
        self.sg.wait_for(lambda: set(self.lines(name, request_id="rq-1")) == want("rq-1"), 10,
                         message="the two lines of rq-1, and only those")
        # rq-1 is not a word of rq-10's lines.
        self.sg.wait_for(lambda: set(self.lines(name, request_id="rq-10")) == want("rq-10"), 10,
                         message="the two lines of rq-10")
        self.sg.wait_for(lambda: set(self.lines(name, request_id=made)) == want(made), 10,
                         message="the lines of the request with a generated id")
        self.assertEqual(self.lines(name, request_id="rq-2", stream="stderr"),
                         [("stderr", "trace rq-2 stderr", "rq-2")])
        self.assertEqual(self.lines(name, request_id="rq-2", stream="stdout"),
                         [("stdout", "trace rq-2 stdout", "rq-2")])
        self.assertEqual(self.lines(name, request_id="rq-untraced"), [])
        # Without the filter, every line is there, with its id where it has one.
        every = self.sg.logs(name)
        self.assertIn(("stdout", "trace rq-2 stdout", "rq-2"),
                      [(l["stream"], l["line"], l.get("request_id")) for l in every])
        self.assertTrue(all("request_id" not in l for l in every if l["stream"] == "event"))
        events = self.sg.logs(name, stream="event")
        self.assertTrue(events)
        self.assertTrue(all(l["stream"] == "event" for l in events))

    def test_job_lines_carry_the_job_id(self):
        name = unique_name("trace-lj")
        self.create(echo_spec(name, type="async", workers={"min": 1, "max": 1}))
        job = self.sg.api("POST", "/v2/%s/runsync" % name, {"input": {"trace": True}}).body
        self.assertEqual(job["status"], "COMPLETED", job)
        self.sg.wait_for(lambda: self.lines(name, request_id=job["id"]) ==
                         [("stdout", "trace %s stdout" % job["id"], job["id"])], 10,
                         message="the job's line stored with its id")

    def test_bad_filters_are_refused(self):
        name = unique_name("trace-lb")
        self.create(echo_spec(name))
        for params in ("request_id=a%20b", "request_id=" + "a" * 129, "request_id=x%0d%0ay", "stream=debug",
                       "level=stderr"):
            with self.subTest(params=params):
                resp = self.sg.api("GET", "/v1/endpoints/%s/logs?%s" % (name, params))
                self.assertError(resp, 400, "invalid_query")


def metrics(sg):
    """/metrics as {(name, frozenset(labels)): value}."""
    resp = sg.api("GET", "/metrics", raw=True)
    assert resp.status == 200, resp
    out = {}
    for line in resp.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, line
        labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(sg, name, **labels):
    return metrics(sg).get((name, frozenset(labels.items())))


class MetricsTest(SgpudTestCase):
    SHARED = {"gpus": "a100:2"}

    def test_cold_start_and_gpu_seconds(self):
        name = unique_name("trace-m")
        self.create(echo_spec(name, gpu={"type": "a100", "count": 1}, env={"WARMUP_MS": "300"},
                              workers={"min": 0, "max": 1}))
        self.assertEqual(metric(self.sg, "sgpu_cold_start_seconds_count", endpoint=name), 0)
        self.assertEqual(metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="starting"), 0)
        self.assertOk(self.sg.invoke(name, "/echo"))
        self.sg.wait_for(lambda: metric(self.sg, "sgpu_cold_start_seconds_count", endpoint=name) == 1, 10,
                         message="one cold start counted")
        m = metrics(self.sg)
        total = m[("sgpu_cold_start_seconds_sum", frozenset({"endpoint": name}.items()))]
        self.assertGreater(total, 0)
        # The start took at least the worker's warm-up: not in the first buckets.
        self.assertEqual(m[("sgpu_cold_start_seconds_bucket", frozenset({"endpoint": name, "le": "0.25"}.items()))], 0)
        self.assertEqual(m[("sgpu_cold_start_seconds_bucket", frozenset({"endpoint": name, "le": "+Inf"}.items()))], 1)
        self.sg.wait_for(lambda: metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="starting") > 0.25
                         and metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="idle") > 0, 10,
                         message="GPU time metered while starting and idle")
        idle = metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="idle")
        self.sg.wait_for(lambda: metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="idle") > idle, 10,
                         message="idle GPU time grows")
        busy = metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="busy")
        self.assertOk(self.sg.invoke(name, "/infer?delay_ms=300", body={}))
        self.sg.wait_for(lambda: metric(self.sg, "sgpu_gpu_seconds_total", endpoint=name, state="busy") > busy, 10,
                         message="busy GPU time grows with a request")

    def test_job_outcomes_and_durations(self):
        name = unique_name("trace-mj")
        self.create(echo_spec(name, type="async", gpu={"type": "a100", "count": 1}, workers={"min": 1, "max": 1}))
        self.sg.wait_ready(name, 1, timeout=20)
        for status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            self.assertEqual(metric(self.sg, "sgpu_jobs_total", endpoint=name, status=status), 0)
        self.assertEqual(metric(self.sg, "sgpu_job_duration_seconds_count", endpoint=name), 0)
        run = lambda body: self.sg.api("POST", "/v2/%s/runsync" % name, body).body
        self.assertEqual(run({"input": {"sleep_ms": 150}})["status"], "COMPLETED")
        self.assertEqual(run({"input": {"fail": "nope"}})["status"], "FAILED")
        self.assertEqual(run({"input": {"sleep_ms": 3000}, "policy": {"executionTimeout": 200}})["status"],
                         "TIMED_OUT")
        self.sg.wait_for(lambda: metric(self.sg, "sgpu_job_duration_seconds_count", endpoint=name) == 3, 10,
                         message="three executions measured")
        self.assertEqual(metric(self.sg, "sgpu_jobs_total", endpoint=name, status="COMPLETED"), 1)
        self.assertEqual(metric(self.sg, "sgpu_jobs_total", endpoint=name, status="FAILED"), 1)
        self.assertEqual(metric(self.sg, "sgpu_jobs_total", endpoint=name, status="TIMED_OUT"), 1)
        self.assertEqual(metric(self.sg, "sgpu_jobs_total", endpoint=name, status="CANCELLED"), 0)
        # The one that slept 150 ms is past the first bucket (0.1 s).
        self.assertLess(metric(self.sg, "sgpu_job_duration_seconds_bucket", endpoint=name, le="0.1"), 3)
        self.assertGreater(metric(self.sg, "sgpu_job_duration_seconds_sum", endpoint=name), 0.15)


if __name__ == "__main__":
    unittest.main()
