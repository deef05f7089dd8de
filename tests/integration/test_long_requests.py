"""Requests that live longer than the daemon's inactivity timeout (io_timeout_s).

The daemon runs with io_timeout_s = 1 s: a request that waits for a worker that is
still loading, or for a worker that computes, is the gateway's own wait and is
bounded by workers.request_timeout_s, never cut by the inactivity timeout; a
client that stops reading its answer still is.
"""

import http.client
import json
import os
import re
import tempfile
import unittest

from harness import SgpudTestCase, echo_spec, error_of, scaled, unique_name, wait_for

IO_TIMEOUT_S = 1
# Longer than io_timeout_s, well within the request timeouts below.
SLOW_MS = 2500


def _config():
    d = tempfile.mkdtemp(prefix="sgpu-it-longreq-")
    path = os.path.join(d, "sgpud.json")
    with open(path, "w") as f:
        json.dump({"io_timeout_s": IO_TIMEOUT_S}, f)
    return path


def metric(sg, name, **labels):
    """The value of one sample of /metrics (0 when absent)."""
    text = sg.api("GET", "/metrics", raw=True).body
    text = text.decode() if isinstance(text, bytes) else str(text)
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if m and m.group(1) == name and m.group(2) == want:
            return float(m.group(3))
    return 0


class LongRequestTest(SgpudTestCase):
    SHARED = {"config": _config()}

    def sync_endpoint(self, prefix, env=None, **workers):
        name = unique_name(prefix)
        w = {"min": 0, "max": 1, "idle_timeout_s": 60, "request_timeout_s": scaled(20)}
        w.update(workers)
        self.create(echo_spec(name, workers=w, env=env or {"WARMUP_MS": "0"}))
        return name

    def test_request_waits_for_a_worker_that_loads_longer_than_io_timeout(self):
        name = self.sync_endpoint("lload", env={"WARMUP_MS": str(SLOW_MS)})
        resp = self.sg.invoke(name, "/infer", body=b"hello", timeout=40)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(metric(self.sg, "sgpu_requests_aborted_total", endpoint=name), 0)

    def test_held_body_waits_for_a_worker_that_loads(self):
        # Over the 1 MiB the gateway holds for a queued request: the client's body is
        # paused by the gateway, which is then the one waiting, not the client.
        name = self.sync_endpoint("lhold", env={"WARMUP_MS": str(SLOW_MS)})
        body = b"b" * ((1 << 20) + (200 << 10))
        resp = self.sg.invoke(name, "/infer", body=body, timeout=40)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["bytes"], len(body))

    def test_request_waits_for_a_worker_that_computes_longer_than_io_timeout(self):
        name = self.sync_endpoint("lcomp", min=1)
        self.sg.wait_ready(name, 1, timeout=20)
        resp = self.sg.invoke(name, "/infer?delay_ms=%d" % SLOW_MS, body=b"hello", timeout=40)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["delay_ms"], SLOW_MS)
        # A GET (no body) parks the same way.
        resp = self.sg.invoke(name, "/stream?n=1&delay_ms=%d" % SLOW_MS, raw=True, timeout=40)
        self.assertEqual(resp.status, 200)
        self.assertIn(b"[DONE]", resp.body)

    def test_request_past_request_timeout_gets_504(self):
        name = self.sync_endpoint("ltime", min=1, request_timeout_s=2)
        self.sg.wait_ready(name, 1, timeout=20)
        resp = self.sg.invoke(name, "/infer?delay_ms=60000", body=b"x", timeout=40)
        self.assertEqual(resp.status, 504, resp.body)
        self.assertEqual(error_of(resp)["code"], "timeout")
        self.assertEqual(metric(self.sg, "sgpu_responses_total", endpoint=name, code="504"), 1)
        self.assertEqual(metric(self.sg, "sgpu_requests_aborted_total", endpoint=name), 0)

    def test_sse_stream_past_stream_timeout_ends_with_an_error_event(self):
        # request_timeout_s bounds the wait for the head only: a stream that starts
        # in time runs on for stream_timeout_s.
        name = self.sync_endpoint("lsse", min=1, request_timeout_s=scaled(1.5), stream_timeout_s=scaled(3))
        self.sg.wait_ready(name, 1, timeout=20)
        with self.sg.stream("GET", "/e/%s/stream?n=100000&interval_ms=200" % name, timeout=40) as st:
            self.assertEqual(st.status, 200)
            body = st.read_all(timeout=40)
        events = [e for e in body.decode().split("\n\n") if e.strip()]
        self.assertGreater(len(events), 1, body[:300])
        last = events[-1]
        self.assertIn("event: error", last)
        data = json.loads(last.split("data:", 1)[1])
        self.assertEqual(data["error"], "stream_timeout")
        self.assertNotIn("[DONE]", body.decode())
        wait_for(lambda: metric(self.sg, "sgpu_in_flight", endpoint=name) == 0, 10)
        self.assertEqual(metric(self.sg, "sgpu_responses_total", endpoint=name, code="504"), 1)
        self.assertEqual(metric(self.sg, "sgpu_requests_aborted_total", endpoint=name), 0)

    def test_other_stream_past_stream_timeout_ends_incomplete(self):
        name = self.sync_endpoint("lndj", min=1, request_timeout_s=scaled(1.5), stream_timeout_s=scaled(3))
        self.sg.wait_ready(name, 1, timeout=20)
        # The worker's job route answers NDJSON lines, chunked, 200 ms apart.
        body = {"id": "j1", "input": {"stream": 100000, "interval_ms": 200}}
        with self.sg.stream("POST", "/e/%s/run" % name, body=body, timeout=40) as st:
            self.assertEqual(st.status, 200)
            self.assertIn("ndjson", st.headers.get("Content-Type", ""))
            self.assertTrue(st.readline(timeout=20))
            with self.assertRaises(http.client.IncompleteRead):
                st.read_all(timeout=40)
        wait_for(lambda: metric(self.sg, "sgpu_in_flight", endpoint=name) == 0, 10)
        self.assertEqual(metric(self.sg, "sgpu_responses_total", endpoint=name, code="504"), 1)
        self.assertEqual(metric(self.sg, "sgpu_requests_aborted_total", endpoint=name), 0)

    def test_client_that_stops_reading_is_still_cut(self):
        name = self.sync_endpoint("lslow", min=1)
        self.sg.wait_ready(name, 1, timeout=20)
        conn = http.client.HTTPConnection("127.0.0.1", self.sg.port, timeout=scaled(30))
        self.addCleanup(conn.close)
        # Tens of MB of answer that this client never reads.
        conn.request("GET", "/e/%s/stream?n=1000000&interval_ms=0" % name,
                     headers={"Authorization": "Bearer %s" % self.sg.key})
        wait_for(lambda: metric(self.sg, "sgpu_requests_aborted_total", endpoint=name) == 1, 20,
                 message="the stalled client was not cut by io_timeout_s")
        # Cut: whatever of the answer reached the client, it is not a complete one.
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            conn.getresponse().read()

    # ---- runsync

    def async_endpoint(self, prefix):
        name = unique_name(prefix)
        self.create(echo_spec(name, type="async", env={"WARMUP_MS": "0"},
                              workers={"min": 1, "max": 1, "idle_timeout_s": 60,
                                       "request_timeout_s": scaled(20)}))
        self.sg.wait_ready(name, 1, timeout=20)
        return name

    def test_runsync_outlives_io_timeout(self):
        name = self.async_endpoint("lsync")
        resp = self.sg.api("POST", "/v2/%s/runsync" % name, {"input": {"sleep_ms": SLOW_MS}},
                           timeout=40)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["status"], "COMPLETED", resp.body)

    def test_runsync_wait_ends_with_the_job_and_its_id(self):
        name = self.async_endpoint("lsyncw")
        # The wait (2 s) is longer than io_timeout_s and shorter than the job.
        resp = self.sg.api("POST", "/v2/%s/runsync?wait=2000" % name, {"input": {"sleep_ms": 60000}},
                           timeout=40)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertIn(resp.body["status"], ("IN_QUEUE", "IN_PROGRESS"))
        self.assertTrue(resp.body["id"])
        self.sg.api("POST", "/v2/%s/cancel/%s" % (name, resp.body["id"]))


if __name__ == "__main__":
    unittest.main()
