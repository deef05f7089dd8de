"""The sample worker (examples/workers/echo-worker.c, build/echo-worker): what it
promises in its header, driven directly, and the endpoint `make run` creates
with it (sgpud --sample-endpoint) answering README's and the banner's calls."""

import http.client
import json
import os
import signal
import socket
import subprocess
import unittest

from harness import BUILD_DIR, SANITIZER_MARKS, SgpudTestCase, free_port, require_binaries, scaled, wait_for

SAMPLE = os.path.join(BUILD_DIR, "echo-worker")
MAX_BODY = 16 * 1024 * 1024


class SampleWorker(unittest.TestCase):
    """The sample on its own, as a user runs it: PORT, MODEL and the GPUs from the environment."""

    def setUp(self):
        require_binaries(SAMPLE)
        self.port = free_port()
        env = dict(os.environ, PORT=str(self.port), WARMUP_MS="300", MODEL="m", CUDA_VISIBLE_DEVICES="1")
        self.proc = subprocess.Popen([SAMPLE], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.addCleanup(self._reap)
        self.conn = self._connect()

    def _reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def _connect(self):
        def attempt():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(10))
            c.connect()
            return c
        c = wait_for(attempt, 10, ignore_errors=True, message="the sample listening on %d" % self.port)
        self.addCleanup(c.close)
        return c

    def request(self, method, path, body=None, chunked=False):
        """One request on the kept-alive connection; returns (status, headers, body bytes)."""
        self.conn.request(method, path, body=body, encode_chunked=chunked)
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    def wait_healthy(self):
        seen = []

        def healthy():
            status, _, _ = self.request("GET", "/health")
            seen.append(status)
            return status == 200
        wait_for(healthy, 10, message="GET /health 200")
        return seen

    def stop(self):
        """SIGTERM; returns the exit status and everything the worker printed."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(scaled(15))
        return rc, self.proc.stdout.read().decode("utf-8", "replace")

    def test_health_is_503_until_loaded_then_echoes_on_one_connection(self):
        seen = self.wait_healthy()
        self.assertLessEqual(set(seen), {503, 200}, seen)
        status, headers, body = self.request("POST", "/infer", b"hello")
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(json.loads(body), {"model": "m", "gpus": "1", "path": "/infer", "echo": "hello"})
        # a JSON body comes back as JSON; the query is not part of the path
        _, _, body = self.request("POST", "/v1/x?y=1", b'{"a": [1, "b"]}')
        self.assertEqual(json.loads(body)["echo"], {"a": [1, "b"]})
        self.assertEqual(json.loads(body)["path"], "/v1/x")
        # chunked request bodies are decoded
        _, _, body = self.request("POST", "/infer", iter([b"chu", b"", b"nked"]), chunked=True)
        self.assertEqual(json.loads(body)["echo"], "chunked")
        # bytes that are not UTF-8 are described, not sent back as broken JSON
        _, _, body = self.request("POST", "/infer", b"\xff\xfe")
        self.assertEqual(json.loads(body)["echo"], "(2 bytes, not UTF-8)")

    def test_stream_sends_one_event_per_word(self):
        self.wait_healthy()
        status, headers, body = self.request("POST", "/infer?stream=1", b" a bb\n ccc\t")
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "text/event-stream")
        self.assertEqual(headers["Transfer-Encoding"], "chunked")
        self.assertEqual(body, b"data: a\n\ndata: bb\n\ndata: ccc\n\ndata: [DONE]\n\n")
        # the connection is still usable after a chunked answer
        self.assertEqual(self.request("GET", "/health")[0], 200)

    def test_body_over_the_bound_is_413_and_the_connection_goes_on(self):
        self.wait_healthy()
        status, _, _ = self.request("POST", "/infer", b"x" * (MAX_BODY + 1))
        self.assertEqual(status, 413)
        self.assertEqual(self.request("POST", "/infer", b"y" * MAX_BODY)[0], 200)

    def test_pipelined_requests_are_answered_in_order_then_400_closes(self):
        self.wait_healthy()
        with socket.create_connection(("127.0.0.1", self.port), timeout=scaled(10)) as s:
            s.sendall(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
                      b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                      b"BAD\x01 / HTTP/1.1\r\n\r\n")
            out = b""
            while True:  # the worker closes after the 400
                data = s.recv(65536)
                if not data:
                    break
                out += data
        first, second = out.index(b'"echo":"hi"'), out.index(b'"echo":"abc"')
        self.assertLess(first, second, out)
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 2, out)
        self.assertTrue(out[second:].startswith(b'"echo":"abc"}HTTP/1.1 400 Bad Request\r\n'), out)

    def test_sigterm_finishes_and_exits_0_with_an_idle_connection_open(self):
        self.wait_healthy()
        self.request("POST", "/infer", b"hello")  # self.conn stays open and idle
        rc, out = self.stop()
        self.assertEqual(rc, 0, out)
        self.assertIn("POST /infer 200", out)
        self.assertIn("signal 15", out)
        for mark in SANITIZER_MARKS:
            self.assertNotIn(mark, out)


class SampleEndpoint(SgpudTestCase):
    """`make run`: sgpud --sample-endpoint creates "echo" running build/echo-worker."""

    def test_readme_and_banner_calls_answer(self):
        require_binaries(SAMPLE)
        sg = self.start_sgpud(args=["--sample-endpoint"])
        self.assertIn("echo", sg.list_names())
        # README: curl -H "Authorization: Bearer $SGPU_API_KEY" $SGPU_URL/e/echo/infer -d 'hello'
        resp = sg.invoke("echo", "/infer", body="hello",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=60)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body["echo"], "hello")
        self.assertEqual(resp.body["model"], "tiny-echo")
        self.assertTrue(resp.body["gpus"], resp.body)
        # the banner: curl -N ... "$SGPU_URL/e/echo/infer?stream=1" -d 'hi'
        resp = sg.invoke("echo", "/infer?stream=1", body="hi", raw=True, timeout=60)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.body, b"data: hi\n\ndata: [DONE]\n\n")
        # the banner names the calls this test makes
        banner = sg.log_text()
        self.assertIn("/e/echo/infer -d 'hello'", banner)
        self.assertIn("/e/echo/infer?stream=1\" -d 'hi'", banner)


if __name__ == "__main__":
    unittest.main()
