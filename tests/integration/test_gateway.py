"""The gateway's own behaviour: keep-alive pool, retries, body limits and streaming,
slow clients, /metrics."""

import json
import os
import re
import shutil
import socket
import tempfile
import time
import unittest

from harness import (SgpudTestCase, echo_spec, http_request, run_concurrently, scaled, unique_name)


def worker_get(port, path):
    resp = http_request(port, "GET", path, timeout=10)
    assert resp.status == 200, resp
    return resp.body


SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text):
    """Parses Prometheus text format strictly; returns ({(name, labels): value}, {name: type})."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        assert not line.startswith("#"), "unknown comment: %r" % line
        m = SAMPLE_RE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = tuple(sorted(LABEL_RE.findall(m.group(3) or "")))
        key = (m.group(1), labels)
        assert key not in samples, "duplicate series %r" % (key,)
        samples[key] = float(m.group(4))
    return samples, types


def series(samples, name, **labels):
    want = set(labels.items())
    return {k: v for k, v in samples.items() if k[0] == name and want <= set(k[1])}


class GatewayTest(SgpudTestCase):
    SHARED = {}

    def warm(self, name, count=1, **workers):
        w = {"min": count, "max": count, "max_concurrency": 8}
        w.update(workers)
        self.create(echo_spec(name, workers=w, health={"path": "/health", "period_s": 30}))
        return self.sg.wait_ready(name, count, timeout=20)

    def test_keepalive_pool_reuses_connections(self):
        name = unique_name("pool")
        (w,) = self.warm(name)
        for _ in range(3):
            self.assertOk(self.sg.invoke(name, "/infer", body=b"warm"))
        before = worker_get(w["port"], "/stats")["connections_accepted"]
        for i in range(50):
            self.assertOk(self.sg.invoke(name, "/infer", body=b"x%d" % i))
        after = worker_get(w["port"], "/stats")["connections_accepted"]
        # one of these is the /stats call itself; 50 proxied requests reused the pool
        self.assertLessEqual(after - before, 2, "new upstream connections: %d" % (after - before))

    def test_refused_connection_is_retried_on_another_worker(self):
        name = unique_name("retry")
        workers = self.warm(name, count=2)
        for _ in range(6):
            self.assertOk(self.sg.invoke(name, "/infer", body=b"warm"))
        gone, alive = workers
        worker_get(gone["port"], "/close-listener")
        # Overlapping requests spread over both workers (fewest in flight first),
        # so some are sent to the vanished one and must be retried.
        pids = []
        for i in range(6):
            results = run_concurrently(
                lambda k: self.sg.invoke(name, "/infer?delay_ms=50", body=b"after %d" % k), [(j,) for j in range(4)])
            for r in results:
                if isinstance(r, BaseException):
                    raise r
                self.assertOk(r)
                pids.append(r.body["worker_pid"])
        # after its pooled connections closed, the vanished worker gets nothing
        self.assertEqual(set(pids[-12:]), {alive["pid"]}, pids)
        samples, _ = parse_prometheus(self.sg.api("GET", "/metrics", raw=True).body.decode())
        (retries,) = series(samples, "sgpu_retries_total", endpoint=name).values()
        self.assertGreaterEqual(retries, 1)

    def test_retry_with_no_worker_free_waits_in_the_queue(self):
        # The endpoint's first request fails on its only worker and has no
        # other to go to: it is the first to wait in the queue, and is served
        # by the worker that replaces the failed one.
        name = unique_name("requeue")
        self.create(echo_spec(name, workers={"min": 1, "max": 1},
                              health={"path": "/health", "period_s": 1, "failure_threshold": 1}))
        (gone,) = self.sg.wait_ready(name, 1, timeout=20)
        worker_get(gone["port"], "/close-listener")
        r = self.sg.invoke(name, "/infer", body=b"requeued", timeout=scaled(60))
        self.assertOk(r)
        self.assertNotEqual(r.body["worker_pid"], gone["pid"])
        samples, _ = parse_prometheus(self.sg.api("GET", "/metrics", raw=True).body.decode())
        (retries,) = series(samples, "sgpu_retries_total", endpoint=name).values()
        self.assertGreaterEqual(retries, 1)
        self.assertEqual(self.sg.api("GET", "/v1/endpoints/" + name).body["status"]["queued"], 0)

    def test_retried_request_counts_once_in_usage(self):
        """Usage `requests` counts a request once, not once per attempt: a request
        whose first worker refused it and that the replacement served is one."""
        name = unique_name("usage1")
        self.create(echo_spec(name, workers={"min": 1, "max": 1},
                              health={"path": "/health", "period_s": 1, "failure_threshold": 1}))
        (gone,) = self.sg.wait_ready(name, 1, timeout=20)
        worker_get(gone["port"], "/close-listener")
        r = self.sg.invoke(name, "/infer", body=b"requeued", timeout=scaled(60))
        self.assertOk(r)
        self.assertNotEqual(r.body["worker_pid"], gone["pid"])
        samples, _ = parse_prometheus(self.sg.api("GET", "/metrics", raw=True).body.decode())
        (retries,) = series(samples, "sgpu_retries_total", endpoint=name).values()
        self.assertGreaterEqual(retries, 1)
        usage = self.sg.api("GET", "/v1/usage?endpoint=%s" % name)
        self.assertEqual(usage.status, 200, usage.body)
        self.assertEqual(usage.body["total"]["requests"], 1, usage.body)

    def test_streamed_chunked_upload(self):
        name = unique_name("upload")
        self.warm(name)
        size = 5 * 1024 * 1024
        piece = bytes(range(256)) * 256  # 64 KiB
        with socket.create_connection(("127.0.0.1", self.sg.port), timeout=scaled(30)) as s:
            s.sendall(("POST /e/%s/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
                       % (name, self.sg.key)).encode())
            sent = 0
            while sent < size:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            s.sendall(b"0\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b" 200 ", head.split(b"\r\n")[0], head)
        if b"chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        echo = json.loads(body.strip().splitlines()[0] if body.strip().startswith(b"{") else body)
        self.assertEqual(echo["body_length"], size)
        self.assertEqual(echo["method"], "POST")

    def test_metrics_count_the_requests(self):
        name = unique_name("metrics")
        self.warm(name)
        for i in range(7):
            self.assertOk(self.sg.invoke(name, "/infer", body=b"m%d" % i))
        for _ in range(2):
            self.assertEqual(self.sg.invoke(name, "/status/404", raw=True).status, 404)
        self.assertEqual(self.sg.api("GET", "/metrics", key=None).status, 401)
        resp = self.sg.api("GET", "/metrics", raw=True)
        self.assertEqual(resp.status, 200)
        self.assertIn("text/plain", resp.headers.get("Content-Type", ""))
        samples, types = parse_prometheus(resp.body.decode())
        self.assertEqual(types.get("sgpu_requests_total"), "counter")
        self.assertEqual(types.get("sgpu_request_duration_seconds"), "histogram")
        self.assertEqual(types.get("sgpu_queue_length"), "gauge")

        def one(metric, **labels):
            found = series(samples, metric, endpoint=name, **labels)
            self.assertEqual(len(found), 1, (metric, labels, found))
            return list(found.values())[0]

        self.assertEqual(one("sgpu_requests_total"), 9)
        self.assertEqual(one("sgpu_responses_total", code="200"), 7)
        self.assertEqual(one("sgpu_responses_total", code="404"), 2)
        self.assertEqual(one("sgpu_request_duration_seconds_count"), 9)
        self.assertEqual(one("sgpu_request_duration_seconds_bucket", le="+Inf"), 9)
        self.assertEqual(one("sgpu_queue_wait_seconds_count"), 9)
        self.assertEqual(one("sgpu_queue_length"), 0)
        self.assertEqual(one("sgpu_workers", state="ready"), 1)
        self.assertGreaterEqual(one("sgpu_cold_starts_total"), 1)
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in
                         series(samples, "sgpu_request_duration_seconds_bucket", endpoint=name).items()
                         if dict(k[1])["le"] != "+Inf")
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), "histogram buckets are not cumulative")


class GatewayLimitsTest(SgpudTestCase):
    """Limits from the config file: body size, header and idle timeouts."""

    def start_limited(self):
        d = tempfile.mkdtemp(prefix="sgpu-gw-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "sgpud.json")
        with open(path, "w") as f:
            json.dump({"max_body_bytes": 1024 * 1024, "header_timeout_s": 1, "idle_timeout_s": 2}, f)
        return self.start_sgpud(config=path)

    def test_oversize_body_is_413(self):
        sg = self.start_limited()
        name = unique_name("big")
        self.create(echo_spec(name, workers={"min": 1, "max": 1}), sg=sg)
        sg.wait_ready(name, 1, timeout=20)
        resp = sg.invoke(name, "/infer", body=b"x" * (1024 * 1024 + 1))
        self.assertError(resp, 413, "too_large")
        # a chunked body that grows past the limit is cut off too
        with socket.create_connection(("127.0.0.1", sg.port), timeout=scaled(20)) as s:
            s.sendall(("POST /e/%s/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n" % (name, sg.key)).encode())
            piece = b"y" * 65536
            status = None
            try:
                for _ in range(40):
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                pass
            data = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            if data:
                status = data.split(b"\r\n", 1)[0]
        self.assertIsNotNone(status, "no answer to an oversize chunked body")
        self.assertIn(b" 413 ", status)
        # sgpud and the worker are still fine
        self.assertOk(sg.invoke(name, "/infer", body=b"small"))

    def test_slow_header_client_is_cut_off(self):
        sg = self.start_limited()
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", sg.port), timeout=scaled(10)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            answer = b""
            try:
                for _ in range(int(scaled(40))):
                    s.sendall(b"X-Slow: 1\r\n")  # a header line every 0.25 s, never the end
                    time.sleep(0.25)
                    s.setblocking(False)
                    try:
                        answer += s.recv(4096)
                    except BlockingIOError:
                        pass
                    s.setblocking(True)
                    if answer:
                        break
            except OSError:
                pass
            s.settimeout(scaled(5))
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, scaled(6), "slow client held the connection for %.1fs" % elapsed)
        if answer:
            self.assertIn(b" 408 ", answer.split(b"\r\n", 1)[0])
        self.assertEqual(sg.api("GET", "/healthz", key=None).status, 200)

    def test_idle_keepalive_connection_is_closed(self):
        sg = self.start_limited()
        with socket.create_connection(("127.0.0.1", sg.port), timeout=scaled(10)) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(4096)
            self.assertIn(b" 200 ", data.split(b"\r\n", 1)[0])
            t0 = time.monotonic()
            s.settimeout(scaled(10))
            rest = s.recv(4096)  # blocks until the server closes the idle connection
            self.assertEqual(rest, b"")
            self.assertLess(time.monotonic() - t0, scaled(6))


if __name__ == "__main__":
    unittest.main()
