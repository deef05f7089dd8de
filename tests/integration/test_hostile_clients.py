"""Clients that try to crash sgpud or grow its memory: malformed bodies on requests the
gateway already dispatched, chunked trailers, oversized heads, connection floods with
few file descriptors, and thousands of slow partial heads.

Run against the ASan build too (SGPU_BUILD_DIR=build-asan): every test stops its sgpud
and checks that it exited cleanly with no sanitizer report in its log."""

import json
import os
import resource
import select
import socket
import sys
import tempfile
import time
import unittest

from harness import (HERE, RUN_ID, SANITIZER_MARKS, WORKER_PYTHON, Sgpud, SgpudTestCase, echo_spec, http_request,
                     scaled, unique_name, wait_for, worker_path)

CHATTY = worker_path(os.path.join(HERE, "chatty_worker.py"))


def chatty_spec(name, **overrides):
    """A worker that answers every request as soon as its head arrived, without
    reading the body: the answer reaches the gateway while the client still sends."""
    spec = {
        "name": name,
        "runtime": "process",
        "command": [WORKER_PYTHON, CHATTY],
        "env": {"SGPU_IT_RUN": RUN_ID},
        "health": {"path": "/health", "period_s": 30},
        "workers": {"min": 1, "max": 1, "idle_timeout_s": 600, "max_concurrency": 8},
    }
    spec.update(overrides)
    return spec


def write_config(values):
    d = tempfile.mkdtemp(prefix="sgpu-it-hostile-")
    path = os.path.join(d, "sgpud.json")
    with open(path, "w") as f:
        json.dump(values, f)
    return path


def raise_own_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        raise unittest.SkipTest("this test needs %d file descriptors; the hard limit is %d"
                                % (want, hard))


def raw_exchange(port, data, timeout=10, pieces=None):
    """Sends data (or each of pieces in turn) on a fresh connection and reads until the
    server closes it or `timeout` passes. Returns the bytes read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout))
    try:
        for p in (pieces or [data]):
            try:
                s.sendall(p)
            except (BrokenPipeError, ConnectionResetError):
                break
        out = b""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_line(answer):
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def sgpud_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def server_sockets(port):
    """(count, bytes unread) of sgpud's connected sockets on port, from /proc/net/tcp."""
    count = unread = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, queues = fields[1], fields[3], fields[4]
                    if int(local.rsplit(":", 1)[1], 16) != port or state in ("0A", "06"):
                        continue  # the listener, or a connection sgpud already closed
                    count += 1
                    unread += int(queues.split(":")[1], 16)
        except OSError:
            continue
    return count, unread


def sanitized(pid):
    try:
        with open("/proc/%d/maps" % pid) as f:
            return any("libasan" in line or "libubsan" in line for line in f)
    except OSError:
        return False


class HostileTestCase(SgpudTestCase):

    def assert_clean_exit(self, sg):
        """Stops sg and asserts it exited with status 0 and logged no sanitizer report."""
        self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        code = sg.stop()
        log = sg.log_text()
        marks = [m for m in SANITIZER_MARKS if m in log]
        self.assertEqual(marks, [], "sanitizer report in sgpud's log:\n%s" % sg.log_tail(80))
        self.assertEqual(code, 0, "sgpud exited with status %s:\n%s" % (code, sg.log_tail(60)))

    def assert_serving(self, sg):
        self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        self.assertEqual(http_request(sg.port, "GET", "/healthz", timeout=10).status, 200)
        self.assertEqual(sg.api("GET", "/v1/endpoints", timeout=10).status, 200)

    def head(self, sg, method, path, extra=b"", version=b"1.1"):
        return (b"%s %s HTTP/%s\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n"
                % (method.encode(), path.encode(), version, sg.key.encode(), extra))

    def in_flight(self, sg, name):
        return sg.api("GET", "/v1/endpoints/%s" % name).body["status"]["in_flight"]


class DispatchedBodyErrorTest(HostileTestCase):
    """A request the gateway already sent to a worker, whose body then fails to parse,
    ends once: the worker's answer and the request timeout find nothing freed."""

    BAD_BODIES = [
        (b"Transfer-Encoding: identity\r\n", b""),
        (b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n"),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n-1\r\n"),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0x5\r\n"),
        (b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffff\r\n"),
    ]

    def test_gateway_request_with_malformed_body(self):
        sg = self.start_sgpud()
        fast = unique_name("hbody")
        self.create(chatty_spec(fast, workers={"min": 1, "max": 1, "idle_timeout_s": 600,
                                               "max_concurrency": 8, "request_timeout_s": 2}), sg=sg)
        # The echo worker reads the whole body before it answers: the request ends on
        # its timeout instead.
        slow = unique_name("hbody")
        self.create(echo_spec(slow, env={"WARMUP_MS": "0"},
                              workers={"min": 1, "max": 1, "idle_timeout_s": 600, "max_concurrency": 8,
                                       "request_timeout_s": 2}), sg=sg)
        sg.wait_ready(fast, 1, timeout=20)
        sg.wait_ready(slow, 1, timeout=20)
        for name in (fast, slow):
            for extra, body in self.BAD_BODIES:
                answer = raw_exchange(sg.port, self.head(sg, "POST", "/e/%s/x" % name, extra) + body)
                self.assertTrue(status_line(answer).startswith("HTTP/1.1 400"), answer[:200])
                # The worker's answer, or the request timeout, must find the request
                # ended rather than freed.
                wait_for(lambda: not sg.alive() or self.in_flight(sg, name) == 0, 10,
                         message="the proxied request to end")
                self.assert_serving(sg)
            self.assertEqual(sg.invoke(name, "/ok", body=b"fine").status, 200)
        self.assert_clean_exit(sg)

    def test_jobs_request_with_malformed_body(self):
        sg = self.start_sgpud()
        name = unique_name("hjobs")
        self.create(echo_spec(name, type="async", workers={"min": 0, "max": 1, "idle_timeout_s": 60},
                              env={"WARMUP_MS": "0"}), sg=sg)
        for route in ("run", "runsync", "purge-queue"):
            for extra, body in self.BAD_BODIES:
                answer = raw_exchange(sg.port, self.head(sg, "POST", "/v2/%s/%s" % (name, route), extra)
                                      + body)
                self.assertTrue(status_line(answer).startswith("HTTP/1.1 400"),
                                "%s: %r" % (route, answer[:200]))
                self.assert_serving(sg)
        # A job request left behind would be reported as a leak, or touched, at shutdown.
        self.assert_clean_exit(sg)


class HeaderTest(HostileTestCase):

    def test_trailers_never_reach_the_worker(self):
        config = write_config({"header_timeout_s": 30})
        sg = self.start_sgpud(config=config)
        name = unique_name("htrail")
        # No worker yet: the request waits in the queue for a cold start, trailers and all.
        self.create(echo_spec(name, env={"WARMUP_MS": "300"},
                              workers={"min": 0, "max": 1, "idle_timeout_s": 60}), sg=sg)
        extra = (b"Content-Type: text/plain\r\nX-Sent-As-Header: yes\r\n"
                 b"Transfer-Encoding: chunked\r\nTrailer: X-Injected, X-Forwarded-For\r\n")
        body = (b"5\r\nhello\r\n0\r\nX-Injected: evil\r\nX-Forwarded-For: 6.6.6.6\r\n"
                b"X-Long: " + b"t" * 3000 + b"\r\n\r\n")
        answer = raw_exchange(sg.port, self.head(sg, "POST", "/e/%s/echo" % name, extra) + body,
                              timeout=30)
        self.assertTrue(status_line(answer).startswith("HTTP/1.1 200"), answer[:300])
        payload = answer.split(b"\r\n\r\n", 1)[1]
        if b"Transfer-Encoding: chunked" in answer.split(b"\r\n\r\n", 1)[0]:
            text, rest = b"", payload
            while rest:
                size, rest = rest.split(b"\r\n", 1)
                n = int(size, 16)
                if n == 0:
                    break
                text, rest = text + rest[:n], rest[n + 2:]
            payload = text
        echo = json.loads(payload)
        # x-request-id: the gateway's own, made for every request (docs/API.md, Invocations).
        sent = {"host", "content-type", "x-sent-as-header", "x-forwarded-for", "content-length",
                "transfer-encoding", "x-request-id"}
        got = [n.lower() for n, _ in echo["header_list"]]
        self.assertTrue(set(got) <= sent, "the worker received headers the client did not send "
                                          "as headers: %r" % echo["header_list"])
        self.assertEqual(echo["headers"]["x-forwarded-for"], "127.0.0.1")
        self.assertRegex(echo["headers"]["x-request-id"], r"^req_[0-9a-f]{32}$")
        self.assertEqual(echo["body_length"], 5)
        for n, v in echo["header_list"]:
            self.assertNotIn("evil", v)
            self.assertTrue(all(32 <= ord(ch) < 127 for ch in v), "value %r of %s" % (v, n))
        self.assert_serving(sg)
        self.assert_clean_exit(sg)

    def test_oversized_heads_and_too_many_headers(self):
        config = write_config({"max_header_bytes": 16384, "max_headers": 50})
        sg = self.start_sgpud(config=config)
        too_long = b"X-Big: " + b"b" * 20000 + b"\r\n"
        answer = raw_exchange(sg.port, self.head(sg, "GET", "/v1/endpoints", too_long))
        self.assertTrue(status_line(answer).startswith("HTTP/1.1 431"), answer[:200])
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(60))
        answer = raw_exchange(sg.port, self.head(sg, "GET", "/v1/endpoints", many))
        self.assertTrue(status_line(answer).startswith("HTTP/1.1 431"), answer[:200])
        answer = raw_exchange(sg.port, self.head(sg, "GET", "/v1/endpoints", b"X-H: v\r\n" * 40))
        self.assertTrue(status_line(answer).startswith("HTTP/1.1 200"), answer[:200])
        long_target = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n"
        self.assertTrue(status_line(raw_exchange(sg.port, long_target)).startswith("HTTP/1.1 431"))
        # A head that never ends, fed in pieces, is cut at the bound.
        pieces = [b"GET /healthz HTTP/1.1\r\n"] + [b"X-Slow: " + b"s" * 1000 + b"\r\n"] * 40
        answer = raw_exchange(sg.port, None, pieces=pieces)
        self.assertTrue(status_line(answer).startswith("HTTP/1.1 431"), answer[:200])
        self.assert_serving(sg)
        self.assert_clean_exit(sg)

    def test_limit_keys_are_checked(self):
        for key, value in (("max_header_bytes", 100), ("max_headers", 1), ("max_connections", -1),
                           ("max_headers", "many")):
            sg = Sgpud(config=write_config({key: value}))
            self.addCleanup(sg.close)
            with self.assertRaises(AssertionError) as cm:
                sg.start(timeout=10)
            self.assertIn("config: %s must be an integer" % key, str(cm.exception))

    def test_parse_errors_answer_in_the_clients_version(self):
        sg = self.start_sgpud()
        cases = [
            (b"GET /healthz HTTP/1.0\r\nHost: x\r\nBad Header\r\n\r\n", "HTTP/1.0 400"),
            (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "HTTP/1.1 400"),
            (b"POST /healthz HTTP/1.0\r\nContent-Length: 1x\r\n\r\n", "HTTP/1.0 400"),
            (b"GET /healthz HTTP/1.0\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", "HTTP/1.0 431"),
            (b"\x01\x02garbage\r\n\r\n", "HTTP/1.1 400"),
        ]
        for request, want in cases:
            answer = raw_exchange(sg.port, request)
            self.assertTrue(status_line(answer).startswith(want), "%r -> %r" % (request, answer[:200]))
        self.assert_serving(sg)
        self.assert_clean_exit(sg)


# Runs sgpud with RLIMIT_NOFILE "SOFT:HARD" of argv[1], then execs argv[2:].
NOFILE_WRAPPER = ("import os, resource, sys; soft, hard = map(int, sys.argv[1].split(':')); "
                  "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)); "
                  "os.execv(sys.argv[2], sys.argv[2:])")


class LimitedSgpud(Sgpud):
    """sgpud started under RLIMIT_NOFILE soft and hard limits (hard: soft by default)."""

    def __init__(self, nofile, hard=None, **kwargs):
        super().__init__(**kwargs)
        self.nofile = nofile
        self.hard = hard or nofile

    def command_line(self):
        return ([sys.executable, "-c", NOFILE_WRAPPER, "%d:%d" % (self.nofile, self.hard)]
                + super().command_line())


class ConnectionFloodTest(HostileTestCase):
    ATTEMPTS = 2000

    def start_limited(self, nofile, config=None, hard=None):
        sg = LimitedSgpud(nofile, hard=hard, config=config)
        self._daemons.append((sg, 0))
        self.addCleanup(sg.close)
        sg.start()
        return sg

    def flood(self, sg):
        """Opens ATTEMPTS connections without waiting for each; returns the sockets."""
        raise_own_nofile(self.ATTEMPTS + 200)
        socks = []
        for _ in range(self.ATTEMPTS):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", sg.port))
            socks.append(s)
        return socks

    def refused(self, socks, seen):
        """How many more of socks sgpud answered 503 or closed (seen: fds counted)."""
        poller = select.poll()
        by_fd = {}
        for s in socks:
            if s.fileno() >= 0 and s.fileno() not in seen:
                poller.register(s, select.POLLIN)
                by_fd[s.fileno()] = s
        n = 0
        for fd, _ in poller.poll(0):
            s = by_fd[fd]
            try:
                data = s.recv(256)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 503"):
                seen.add(fd)
                n += 1
        return n

    def close_all(self, socks):
        for s in socks:
            s.close()

    def test_soft_descriptor_limit_is_raised_to_the_hard_one(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < 1024:
            raise unittest.SkipTest("the hard RLIMIT_NOFILE here is %d" % hard)
        sg = self.start_limited(256, hard=1024)
        with open("/proc/%d/limits" % sg.proc.pid) as f:
            line = [ln for ln in f if ln.startswith("Max open files")][0]
        self.assertEqual(line.split()[3:5], ["1024", "1024"], line)
        self.assert_clean_exit(sg)

    def test_connections_past_max_connections_are_refused(self):
        sg = self.start_limited(256)
        socks = self.flood(sg)
        try:
            seen = set()

            def some_refused():
                self.refused(socks, seen)
                return not sg.alive() or len(seen) > 0
            wait_for(some_refused, 20, message="a refusal past max_connections")
            self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        finally:
            self.close_all(socks)
        wait_for(lambda: not sg.alive() or sg.api("GET", "/v1/endpoints", timeout=5).status == 200,
                 30, ignore_errors=True, message="a keyed request after the flood")
        self.assert_serving(sg)
        self.assert_clean_exit(sg)

    def test_running_out_of_descriptors_backs_off(self):
        # max_connections above the descriptor limit: accept() itself fails with EMFILE.
        sg = self.start_limited(256, config=write_config({"max_connections": 100000}))
        socks = self.flood(sg)
        try:
            wait_for(lambda: not sg.alive() or "Too many open files" in sg.log_text(), 20,
                     message="accept to run out of descriptors")
            self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        finally:
            self.close_all(socks)
        # Accepting was paused, not given up: it resumes once descriptors are free.
        wait_for(lambda: not sg.alive() or sg.api("GET", "/v1/endpoints", timeout=5).status == 200,
                 30, ignore_errors=True, message="a keyed request after the flood")
        self.assert_serving(sg)
        self.assertIn("accepting again", sg.log_text())
        self.assert_clean_exit(sg)


class SlowHeadMemoryTest(HostileTestCase):
    CONNECTIONS = 3000
    HEAD_BYTES = 60 * 1024

    def test_memory_returns_after_slow_partial_heads_close(self):
        raise_own_nofile(self.CONNECTIONS + 200)
        config = write_config({"max_connections": self.CONNECTIONS + 500, "header_timeout_s": 600,
                               "idle_timeout_s": 600})
        sg = self.start_sgpud(config=config)
        pid = sg.proc.pid
        self.assertEqual(sg.api("GET", "/v1/endpoints").status, 200)
        before = sgpud_rss_kb(pid)
        line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line * (self.HEAD_BYTES // len(line))
        socks = []
        try:
            for _ in range(self.CONNECTIONS):
                s = socket.create_connection(("127.0.0.1", sg.port), timeout=scaled(10))
                socks.append(s)
                s.sendall(head)
            # sgpud holds every connection and has read every byte sent.
            wait_for(lambda: not sg.alive() or server_sockets(sg.port) == (self.CONNECTIONS, 0), 60,
                     message="sgpud to read %d partial heads (connections, bytes unread)"
                     % self.CONNECTIONS)
            self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
            during = sgpud_rss_kb(pid)
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: not sg.alive() or server_sockets(sg.port)[0] == 0, 60,
                 message="sgpud to close the connections")
        self.assertTrue(sg.alive(), "sgpud died:\n%s" % sg.log_tail(60))
        if sanitized(pid):
            after = sgpud_rss_kb(pid)
            sys.stderr.write("\nVmRSS of sgpud: before %d kB, during %d kB, after %d kB "
                             "(sanitizer build: not asserted)\n" % (before, during, after))
        else:
            try:
                wait_for(lambda: sgpud_rss_kb(pid) <= before + 20 * 1024, 20,
                         message="VmRSS back within 20 MB of %d kB" % before)
            finally:
                after = sgpud_rss_kb(pid)
                sys.stderr.write("\nVmRSS of sgpud: before %d kB, during %d kB, after %d kB\n"
                                 % (before, during, after))
        self.assert_serving(sg)
        self.assert_clean_exit(sg)


if __name__ == "__main__":
    unittest.main()
