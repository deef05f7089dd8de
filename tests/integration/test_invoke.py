"""The gateway: invocation, proxy fidelity, GPU environment, streaming, timeouts."""

import json
import socket
import time
import unittest

from harness import (ECHO_WORKER, SgpudTestCase, echo_spec, error_of, scaled, unique_name)


def header_map(headers):
    """The echo worker's `headers` (object, list of pairs or "k: v" strings) as a dict
    with lower-case names."""
    out = {}
    if isinstance(headers, dict):
        items = headers.items()
    else:
        items = []
        for h in headers or []:
            if isinstance(h, str):
                k, _, v = h.partition(":")
                items.append((k, v.strip()))
            elif isinstance(h, dict):
                items.append((h.get("name"), h.get("value")))
            else:
                items.append((h[0], h[1]))
    for k, v in items:
        out[str(k).lower()] = v
    return out


def sse_data(raw):
    """The `data:` payloads of an SSE body, in order."""
    out = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            out.append(line[5:].strip())
    return out


class InvokeTest(SgpudTestCase):
    SHARED = {"gpus": "a100:4"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # one warm endpoint shared by the proxy tests (distinct names elsewhere)
        cls.warm = "warm-echo"
        cls.sg.create(echo_spec(cls.warm, workers={"min": 1, "max": 1, "max_concurrency": 8}))
        cls.sg.wait_ready(cls.warm, timeout=20)

    def test_invoke_from_zero(self):
        name = unique_name("basic")
        self.create(echo_spec(name, env={"MODEL": "model-x"}))
        self.assertEqual(self.sg.active_workers(name), [])
        resp = self.sg.invoke(name, "/infer", body=b"hello world",
                              headers={"Content-Type": "application/octet-stream"})
        body = self.assertOk(resp)
        self.assertIsInstance(body, dict, body)
        self.assertEqual(body["bytes"], 11)
        self.assertEqual(body["model"], "model-x")
        self.assertIsInstance(body["worker_pid"], int)
        workers = self.sg.active_workers(name)
        self.assertEqual(len(workers), 1, workers)
        w = workers[0]
        self.assertEqual(w["pid"], body["worker_pid"])
        self.assertEqual(w["port"], body["port"])
        self.assertEqual(w["endpoint"], name)
        self.assertEqual(w["version"], 1)
        for key in ("id", "state", "gpus", "started_at", "ready_at", "cold_start_ms",
                    "in_flight", "served"):
            self.assertIn(key, w)
        # served is counted
        self.wait_for(lambda: self.sg.get(name)["status"]["served"] >= 1, 5,
                      message="status.served >= 1")

    def test_json_body_roundtrip(self):
        payload = {"prompt": "héllo", "n": [1, 2, 3]}
        resp = self.sg.invoke(self.warm, "/infer", body=payload)
        body = self.assertOk(resp)
        self.assertEqual(body["bytes"], len(json.dumps(payload).encode()))
        self.assertIn("application/json", resp.headers.get("Content-Type", ""))

    def test_port_substitution_in_command(self):
        name = unique_name("portsub")
        self.create(echo_spec(name, command=[ECHO_WORKER, "--port", "$PORT"]))
        body = self.assertOk(self.sg.invoke(name, "/infer", body=b"x"))
        w = self.sg.active_workers(name)[0]
        self.assertEqual(body["port"], w["port"])
        env = self.assertOk(self.sg.invoke(name, "/env"))
        self.assertEqual(str(env["PORT"]), str(w["port"]))

    def test_proxy_fidelity(self):
        body = b"0123456789" * 100
        resp = self.sg.invoke(self.warm, "/some/deep/path.txt?a=1&b=two%20words&a=3",
                              method="PUT", body=body,
                              headers={"X-Custom-Header": "hello there",
                                       "Content-Type": "text/plain",
                                       "X-Another": "42"})
        echo = self.assertOk(resp)
        self.assertEqual(echo["method"], "PUT")
        self.assertEqual(echo["path"], "/some/deep/path.txt")
        self.assertEqual(echo["query"], "a=1&b=two%20words&a=3")
        self.assertEqual(echo["body_length"], 1000)
        h = header_map(echo["headers"])
        self.assertEqual(h.get("x-custom-header"), "hello there", h)
        self.assertEqual(h.get("x-another"), "42", h)
        self.assertEqual(h.get("content-type"), "text/plain", h)
        self.assertNotIn("authorization", h, "Authorization was forwarded to the worker")

    def test_methods_pass_through(self):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            with self.subTest(method=method):
                body = b"abc" if method in ("POST", "PUT", "PATCH") else None
                resp = self.sg.invoke(self.warm, "/m/%s" % method.lower(), method=method,
                                      body=body)
                echo = self.assertOk(resp)
                self.assertEqual(echo["method"], method)
                self.assertEqual(echo["path"], "/m/%s" % method.lower())
                self.assertEqual(echo["body_length"], 3 if body else 0)
        resp = self.sg.invoke(self.warm, "/m/head", method="HEAD")
        self.assertEqual(resp.status, 200)

    def test_root_and_empty_query(self):
        echo = self.assertOk(self.sg.invoke(self.warm, "/"))
        self.assertEqual(echo["path"], "/")
        self.assertIn(echo["query"], ("", None))

    def test_status_codes_pass_through(self):
        for code in (200, 201, 202, 204, 301, 400, 404, 409, 418, 429, 500, 503):
            with self.subTest(code=code):
                resp = self.sg.invoke(self.warm, "/status/%d" % code, raw=True)
                self.assertEqual(resp.status, code, resp.body)
        # the gateway is still fine, and so is the worker
        self.assertOk(self.sg.invoke(self.warm, "/infer", body=b"x"))

    def test_large_body(self):
        data = bytes(range(256)) * 2048  # 512 KiB
        body = self.assertOk(self.sg.invoke(self.warm, "/infer", body=data,
                                            headers={"Content-Type": "application/octet-stream"},
                                            timeout=60))
        self.assertEqual(body["bytes"], len(data))

    def test_unknown_endpoint_is_404(self):
        self.assertError(self.sg.invoke("no-such-endpoint", "/infer", body=b"x"), 404,
                         "not_found")

    def test_gpu_environment(self):
        name = unique_name("gpuenv")
        self.create(echo_spec(name, gpu={"type": "a100", "count": 2}))
        env = self.assertOk(self.sg.invoke(name, "/env"))
        workers = self.sg.active_workers(name)
        self.assertEqual(len(workers), 1, workers)
        gpus = workers[0]["gpus"]
        self.assertEqual(len(gpus), 2, workers[0])
        self.assertEqual(workers[0]["gpu_type"], "a100")
        expected = ",".join(str(g) for g in gpus)
        self.assertEqual(env["CUDA_VISIBLE_DEVICES"], expected, env)
        self.assertEqual(env["NVIDIA_VISIBLE_DEVICES"], expected, env)
        self.assertEqual(env["MODEL"], "tiny")
        # the node shows who holds those GPUs
        node = self.sg.nodes()[0]
        held = sorted(g["index"] for g in node["gpus"] if g["endpoint"] == name)
        self.assertEqual(held, sorted(gpus))
        for g in node["gpus"]:
            if g["endpoint"] == name:
                self.assertEqual(g["worker"], workers[0]["id"])
        self.assertEqual(node["gpus_free"], sum(1 for g in node["gpus"] if g["worker"] is None))
        self.assertLessEqual(node["gpus_free"], 2)

    def test_sse_stream_is_incremental(self):
        n, interval = 5, 300
        t0 = time.monotonic()
        first_at = done_at = None
        tokens = []
        with self.sg.stream("GET", "/e/%s/stream?n=%d&interval_ms=%d" % (self.warm, n, interval),
                            timeout=30) as st:
            self.assertEqual(st.status, 200)
            self.assertIn("text/event-stream", st.headers.get("Content-Type", ""))
            while True:
                line = st.readline(timeout=15)
                if line is None:
                    break
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                now = time.monotonic() - t0
                if payload == b"[DONE]":
                    done_at = now
                    break
                tokens.append(payload)
                if first_at is None:
                    first_at = now
        self.assertEqual(len(tokens), n, tokens)
        self.assertIsNotNone(done_at, "no [DONE] event")
        # the worker needs (n-1)*interval ms between the first and the last token; the
        # first token must have been delivered well before the end, not buffered.
        self.assertLess(first_at, done_at - 0.5 * (n - 1) * interval / 1000.0,
                        "first token at %.2fs, [DONE] at %.2fs: the stream was buffered"
                        % (first_at, done_at))

    def test_sse_infer_stream(self):
        t0 = time.monotonic()
        with self.sg.stream("POST", "/e/%s/infer?stream=1" % self.warm, body=b"abc",
                            timeout=30) as st:
            self.assertEqual(st.status, 200)
            self.assertIn("text/event-stream", st.headers.get("Content-Type", ""))
            raw = st.read_all(timeout=30)
        data = sse_data(raw)
        self.assertGreaterEqual(len(data), 2, raw)
        self.assertEqual(data[-1], "[DONE]", raw)
        self.assertLess(time.monotonic() - t0, scaled(20))

    def test_request_timeout_is_504(self):
        name = unique_name("timeout")
        self.create(echo_spec(name, workers={"min": 1, "max": 1, "max_concurrency": 4,
                                              "request_timeout_s": 1}))
        self.sg.wait_ready(name, timeout=20)
        t0 = time.monotonic()
        resp = self.sg.invoke(name, "/infer?delay_ms=%d" % int(scaled(6000)), body=b"x",
                              timeout=60)
        elapsed = time.monotonic() - t0
        self.assertError(resp, 504, "timeout")
        self.assertLess(elapsed, scaled(5), "504 came only after %.1fs" % elapsed)
        # the endpoint keeps serving
        self.assertOk(self.sg.invoke(name, "/infer", body=b"y", timeout=60))


class RawGatewayTest(SgpudTestCase):
    """Requests that http.client cannot produce: the gateway must not break on them."""

    SHARED = {}

    def test_garbage_request_does_not_kill_sgpud(self):
        for junk in (b"GARBAGE\r\n\r\n", b"GET /e/x HTTP/9.9\r\n\r\n",
                     b"POST /e/x/ HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                     b"\x00\x01\x02\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", self.sg.port), timeout=scaled(5)) as s:
                s.sendall(junk)
                try:
                    s.recv(4096)
                except OSError:
                    pass
        self.assertTrue(self.sg.alive())
        self.assertEqual(self.sg.api("GET", "/healthz", key=None).status, 200)


if __name__ == "__main__":
    unittest.main()
