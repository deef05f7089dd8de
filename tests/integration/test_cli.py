"""The sgpu CLI, run as a subprocess against a real sgpud: endpoints, invoke (streaming
included), workers, logs, nodes, error exit codes, URL and key discovery."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (SGPU, SgpudTestCase, echo_spec, free_port, require_binaries, scaled,
                     unique_name)

# The exit statuses (sgpu --help): usage 2, 404 3, another 4xx 4, 5xx or no answer 5.
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_SERVER = 0, 1, 2, 3, 4, 5
API_FAILURES = (EXIT_FAIL, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_SERVER)

LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\S+Z) (\S+) (stdout|stderr|event) (.*)$")


def parse_table(text):
    """A table printed by sgpu as a list of dicts keyed by the header's names.

    Headers may hold single spaces ("COLD START ms"); columns are at least two spaces
    apart, and cells hold no spaces."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        raise AssertionError("no table in %r" % text)
    headers = re.split(r"\s{2,}", lines[0].strip())
    rows = []
    for line in lines[1:]:
        cells = line.split()
        if len(cells) != len(headers):
            raise AssertionError("row %r does not match headers %r" % (line, headers))
        rows.append(dict(zip(headers, cells)))
    return rows


def parse_columns(text):
    """A table whose last cells may hold spaces: cells cut at the headers' columns."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        raise AssertionError("no table in %r" % text)
    starts = [m.start() for m in re.finditer(r"(?:(?<=  )|^)\S", lines[0])]
    headers = [lines[0][a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
    return [{h: line[a:b].strip() for h, a, b in zip(headers, starts, starts[1:] + [None])}
            for line in lines[1:]]


class LineReader:
    """Reads a child's stdout in a thread; keeps (seconds since start, line) pairs."""

    def __init__(self, stream):
        self.t0 = time.monotonic()
        self.lines = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            with self.lock:
                self.lines.append((time.monotonic() - self.t0,
                                   raw.decode("utf-8", "replace").rstrip("\n")))

    def snapshot(self):
        with self.lock:
            return list(self.lines)

    def text(self):
        return "\n".join(l for _, l in self.snapshot())

    def join(self, timeout):
        self.thread.join(scaled(timeout))


class CliTestCase(SgpudTestCase):
    SHARED = {"gpus": "a100:4"}

    @classmethod
    def setUpClass(cls):
        require_binaries(SGPU)
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-cli-")
        cls.home = os.path.join(cls.tmp, "home")
        os.makedirs(cls.home)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    # ---- running the CLI

    def env(self, discover=False, extra=None):
        """The CLI's environment: no SGPU_* variables and an empty HOME; unless
        `discover`, SGPU_URL and SGPU_API_KEY name the shared daemon."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGPU_")}
        env["HOME"] = self.home
        if not discover:
            env["SGPU_URL"] = self.sg.base_url
            env["SGPU_API_KEY"] = self.sg.key
        env.update(extra or {})
        return env

    def cli(self, *args, input=None, discover=False, env=None, timeout=30):
        """Runs sgpu ARGS; returns CompletedProcess with text stdout and stderr."""
        if isinstance(input, str):
            input = input.encode()
        proc = subprocess.run([SGPU] + list(args), input=input, capture_output=True,
                              env=self.env(discover, env), timeout=scaled(timeout))
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    def popen(self, *args, discover=False, env=None):
        proc = subprocess.Popen([SGPU] + list(args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env(discover, env))
        self.addCleanup(self._reap, proc)
        return proc

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()

    def ok(self, *args, **kwargs):
        """Runs sgpu and asserts exit status 0 and nothing on stderr; returns stdout."""
        proc = self.cli(*args, **kwargs)
        self.assertEqual(proc.returncode, EXIT_OK,
                         "sgpu %s: exit %d\nstdout: %s\nstderr: %s"
                         % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
        self.assertEqual(proc.stderr, "", "sgpu %s wrote to stderr" % " ".join(args))
        return proc.stdout

    def assertFails(self, proc, code=EXIT_FAIL, what=""):
        """Exit status `code`, nothing on stdout; for API errors (codes 1, 3, 4, 5)
        exactly one line "sgpu: <message>" on stderr. Returns that message."""
        ctx = "%s: exit %d\nstdout: %r\nstderr: %r" % (what, proc.returncode, proc.stdout,
                                                        proc.stderr)
        self.assertEqual(proc.returncode, code, ctx)
        self.assertEqual(proc.stdout, "", ctx)
        lines = proc.stderr.splitlines()
        self.assertTrue(lines, "no error message; " + ctx)
        self.assertTrue(lines[0].startswith("sgpu: "), ctx)
        self.assertGreater(len(lines[0]), len("sgpu: "), ctx)
        if code in API_FAILURES:
            self.assertEqual(len(lines), 1, "the error is not one line; " + ctx)
        return lines[0][len("sgpu: "):]

    # ---- fixtures

    def spec_file(self, spec):
        """Writes spec (workers marked as the shared daemon's) to a file; returns its path."""
        spec = json.loads(json.dumps(spec))
        spec["env"]["SGPU_IT_OWNER"] = self.sg.owner
        path = os.path.join(self.tmp, "%s-%d.json" % (spec["name"], time.monotonic_ns()))
        with open(path, "w") as f:
            json.dump(spec, f)
        return path

    def cli_create(self, spec):
        """Creates an endpoint through the CLI and deletes it when the test ends."""
        self.addCleanup(self.sg.try_delete, spec["name"])
        out = self.ok("endpoint", "create", "-f", self.spec_file(spec))
        self.assertIn(spec["name"], out)
        return out

    def row_where(self, rows, key, value):
        for row in rows:
            if row.get(key) == value:
                return row
        raise AssertionError("no row with %s=%s in %r" % (key, value, rows))


class CliBasicsTest(CliTestCase):
    def test_version(self):
        out = self.ok("--version")
        self.assertRegex(out.strip(), r"^sgpu \d+\.\d+\.\d+")

    def test_help(self):
        out = self.ok("help")
        for cmd in ("endpoint", "invoke", "workers", "logs", "nodes"):
            self.assertIn(cmd, out)
        self.assertIn("Usage", self.ok("--help"))
        for cmd in ("endpoint", "invoke", "workers", "logs", "nodes"):
            with self.subTest(cmd=cmd):
                by_help = self.ok("help", cmd)
                self.assertIn("sgpu %s" % cmd, by_help)
                self.assertEqual(self.ok(cmd, "--help"), by_help)
                self.assertEqual(self.ok(cmd, "-h"), by_help)

    def test_bad_usage_exits_2(self):
        missing = os.path.join(self.tmp, "does-not-exist.json")
        bad_json = os.path.join(self.tmp, "bad.json")
        with open(bad_json, "w") as f:
            f.write("{not json")
        not_object = os.path.join(self.tmp, "array.json")
        with open(not_object, "w") as f:
            f.write("[1, 2]")
        cases = [
            ["frobnicate"],
            ["--bogus", "nodes"],
            ["help", "frobnicate"],
            ["endpoint"],
            ["endpoint", "explode"],
            ["endpoint", "create"],
            ["endpoint", "create", "-f"],
            ["endpoint", "create", "-f", missing],
            ["endpoint", "create", "-f", bad_json],
            ["endpoint", "create", "-f", not_object],
            ["endpoint", "get"],
            ["endpoint", "get", "a", "b"],
            ["endpoint", "update", "-f", bad_json],
            ["endpoint", "delete"],
            ["endpoint", "list", "--bogus"],
            ["invoke"],
            ["invoke", "x", "/a", "/b"],
            ["invoke", "x", "-d", "a", "-f", missing],
            ["invoke", "x", "-f", missing],
            ["invoke", "x", "-H", "no-colon"],
            ["workers"],
            ["workers", "a", "b"],
            ["workers", "stop", "x"],
            ["logs"],
            ["logs", "x", "--limit", "many"],
            ["logs", "x", "--stream", "stdin"],
            ["logs", "x", "--bogus"],
            ["nodes", "extra"],
        ]
        for args in cases:
            with self.subTest(args=args):
                proc = self.cli(*args)
                self.assertFails(proc, EXIT_USAGE, "sgpu %s" % " ".join(args))
        # no command at all: the usage, on stderr
        proc = self.cli()
        self.assertEqual(proc.returncode, EXIT_USAGE)
        self.assertEqual(proc.stdout, "")
        self.assertIn("Usage", proc.stderr)

    def test_bad_usage_does_not_reach_the_server(self):
        # a closed port: a request would fail with exit 5, not 2
        env = {"SGPU_URL": "http://127.0.0.1:%d" % free_port()}
        self.assertFails(self.cli("endpoint", "get", env=env), EXIT_USAGE)
        self.assertFails(self.cli("endpoint", "list", env=env), EXIT_SERVER)


class CliEndpointTest(CliTestCase):
    def test_lifecycle(self):
        name = unique_name("cli-crud")
        out = self.cli_create(echo_spec(name, gpu={"type": "a100", "count": 1},
                                        workers={"min": 0, "max": 3}))
        self.assertIn("created", out)

        row = self.row_where(parse_columns(self.ok("endpoint", "list")), "NAME", name)
        self.assertEqual(row, {"NAME": name, "TYPE": "sync", "STATE": "scaled_to_zero",
                               "READY/DESIRED": "0/0", "IN FLIGHT": "0", "QUEUED": "0",
                               "LAST ERROR": "-"})

        listing = json.loads(self.ok("endpoint", "list", "--json"))
        self.assertIn(name, [e["name"] for e in listing["endpoints"]])
        # global options go before the command too
        self.assertEqual(json.loads(self.ok("--json", "endpoint", "list")), listing)

        ep = json.loads(self.ok("endpoint", "get", name))
        self.assertEqual(ep["name"], name)
        self.assertEqual(ep["version"], 1)
        self.assertEqual(ep["workers"]["max"], 3)
        self.assertIn("status", ep)
        self.assertEqual(json.loads(self.ok("endpoint", "get", name, "--json"))["name"], name)

        updated = echo_spec(name, env={"MODEL": "big"}, workers={"max": 4})
        out = self.ok("endpoint", "update", name, "-f", self.spec_file(updated))
        self.assertIn("version 2", out)
        ep = self.sg.get(name)
        self.assertEqual(ep["version"], 2)
        self.assertEqual(ep["env"]["MODEL"], "big")
        self.assertEqual(ep["workers"]["max"], 4)

        # update with --json prints the endpoint the API answered
        ep3 = json.loads(self.ok("endpoint", "update", name, "--json", "-f",
                                 self.spec_file(updated)))
        self.assertEqual(ep3["version"], 3)

        # patch, versions, rollback
        patch = os.path.join(self.tmp, "patch-%s.json" % name)
        with open(patch, "w") as f:
            json.dump({"workers": {"max": 5}}, f)
        out = self.ok("endpoint", "patch", name, "-f", patch)
        self.assertIn("version 4", out)
        self.assertIn("without a restart", out)
        self.assertEqual(self.sg.get(name)["workers"]["max"], 5)
        rows = parse_table(self.ok("endpoint", "versions", name))
        self.assertEqual([r["VERSION"] for r in rows], ["1", "2", "3", "4"])
        self.assertEqual([r["VERSION"] for r in rows if r["CURRENT"] == "*"], ["4"])
        out = self.ok("endpoint", "rollback", name, "1")
        self.assertIn("version 5", out)
        ep = self.sg.get(name)
        self.assertEqual(ep["env"]["MODEL"], "tiny")
        self.assertEqual(ep["workers"]["max"], 3)
        self.assertFails(self.cli("endpoint", "rollback", name, "x"), EXIT_USAGE)
        self.assertFails(self.cli("endpoint", "rollback", name, "99"), EXIT_NOT_FOUND)

        out = self.ok("endpoint", "delete", name)
        self.assertIn(name, out)
        self.assertNotIn(name, self.sg.list_names())
        rows = parse_table(self.ok("endpoint", "list"))
        self.assertNotIn(name, [r["NAME"] for r in rows])

        msg = self.assertFails(self.cli("endpoint", "get", name), EXIT_NOT_FOUND)
        self.assertIn(name, msg)
        self.assertFails(self.cli("endpoint", "delete", name), EXIT_NOT_FOUND)

    def test_create_from_stdin(self):
        name = unique_name("cli-stdin")
        spec = echo_spec(name)
        spec["env"]["SGPU_IT_OWNER"] = self.sg.owner
        self.addCleanup(self.sg.try_delete, name)
        out = self.ok("endpoint", "create", "-f", "-", input=json.dumps(spec))
        self.assertIn(name, out)
        self.assertEqual(self.sg.get(name)["version"], 1)

    def test_update_takes_the_name_from_the_command_line(self):
        name = unique_name("cli-noname")
        self.cli_create(echo_spec(name))
        spec = echo_spec(name, env={"MODEL": "other"})
        del spec["name"]
        spec["env"]["SGPU_IT_OWNER"] = self.sg.owner
        self.ok("endpoint", "update", name, "-f", "-", input=json.dumps(spec))
        self.assertEqual(self.sg.get(name)["env"]["MODEL"], "other")

    def test_api_errors_are_one_line(self):
        name = unique_name("cli-bad")
        bad = self.spec_file(echo_spec(name, workers={"max": 0}))
        msg = self.assertFails(self.cli("endpoint", "create", "-f", bad), EXIT_REFUSED)
        self.assertIn("workers.max", msg)
        self.assertNotIn(name, self.sg.list_names())

        self.cli_create(echo_spec(name))
        self.assertFails(self.cli("endpoint", "create", "-f", self.spec_file(echo_spec(name))),
                         EXIT_REFUSED, "duplicate create")
        other = self.spec_file(echo_spec(unique_name("cli-other")))
        self.assertFails(self.cli("endpoint", "update", name, "-f", other), EXIT_REFUSED,
                         "update naming another endpoint")
        self.assertEqual(self.sg.get(name)["version"], 1)


class CliInvokeTest(CliTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.warm = "cli-warm"
        cls.sg.create(echo_spec(cls.warm, workers={"min": 1, "max": 1, "max_concurrency": 8}))
        cls.sg.wait_ready(cls.warm, timeout=20)

    def test_invoke_with_data(self):
        out = self.ok("invoke", self.warm, "/infer", "-d", "hello")
        body = json.loads(out)
        self.assertEqual(body["bytes"], 5)

        body = json.loads(self.ok("invoke", self.warm, "infer", "-d", '{"prompt": "hi"}'))
        self.assertEqual(body["echo"], {"prompt": "hi"})

    def test_invoke_from_zero(self):
        name = unique_name("cli-zero")
        self.cli_create(echo_spec(name))
        self.assertEqual(self.sg.active_workers(name), [])
        body = json.loads(self.ok("invoke", name, "/infer", "-d", "abc", timeout=60))
        self.assertEqual(body["bytes"], 3)
        self.assertEqual(len(self.sg.active_workers(name)), 1)

    def test_invoke_method_path_query_headers(self):
        out = self.ok("invoke", self.warm, "/some/deep/path?a=1&b=two", "-X", "PUT",
                      "-H", "X-Custom-Header: hello there", "-H", "Content-Type: text/plain",
                      "-d", "0123456789")
        echo = json.loads(out)
        self.assertEqual(echo["method"], "PUT")
        self.assertEqual(echo["path"], "/some/deep/path")
        self.assertEqual(echo["query"], "a=1&b=two")
        self.assertEqual(echo["body_length"], 10)
        text = json.dumps(echo["headers"]).lower()
        self.assertIn("x-custom-header", text)
        self.assertIn("hello there", text)
        self.assertIn("text/plain", text)

        echo = json.loads(self.ok("invoke", self.warm))
        self.assertEqual(echo["method"], "GET")
        self.assertEqual(echo["path"], "/")

    def test_invoke_body_from_file_and_stdin(self):
        data = bytes(range(256)) * 400
        path = os.path.join(self.tmp, "body.bin")
        with open(path, "wb") as f:
            f.write(data)
        body = json.loads(self.ok("invoke", self.warm, "/infer", "-f", path))
        self.assertEqual(body["bytes"], len(data))
        body = json.loads(self.ok("invoke", self.warm, "/infer", "-f", "-", input=data))
        self.assertEqual(body["bytes"], len(data))

    def test_invoke_streams_incrementally(self):
        n, interval = 5, 300
        proc = self.popen("invoke", self.warm, "/stream?n=%d&interval_ms=%d" % (n, interval))
        reader = LineReader(proc.stdout)
        self.assertEqual(proc.wait(scaled(30)), EXIT_OK, proc.stderr.read())
        reader.join(10)
        events = [(t, l[5:].strip()) for t, l in reader.snapshot() if l.startswith("data:")]
        tokens = [e for e in events if e[1] != "[DONE]"]
        self.assertEqual(len(tokens), n, events)
        self.assertEqual(events[-1][1], "[DONE]", events)
        first_at, done_at = tokens[0][0], events[-1][0]
        # (n-1)*interval ms pass between the first and the last token: the first one
        # must be on stdout well before the end, not held back until the answer is over.
        self.assertLess(first_at, done_at - 0.5 * (n - 1) * interval / 1000.0,
                        "first token at %.2fs, [DONE] at %.2fs: the output was buffered"
                        % (first_at, done_at))

    def test_invoke_sse_infer(self):
        out = self.ok("invoke", self.warm, "/infer?stream=1", "-d", "abc")
        data = [l[5:].strip() for l in out.splitlines() if l.startswith("data:")]
        self.assertGreaterEqual(len(data), 2, out)
        self.assertEqual(data[-1], "[DONE]")

    def test_invoke_error_status_exit_codes(self):
        for code, exit_code in ((400, EXIT_REFUSED), (404, EXIT_NOT_FOUND), (418, EXIT_REFUSED),
                                (500, EXIT_SERVER), (503, EXIT_SERVER)):
            with self.subTest(code=code):
                proc = self.cli("invoke", self.warm, "/status/%d" % code)
                msg = self.assertFails(proc, exit_code)
                self.assertIn(str(code), msg)
        # statuses below 400 are a success
        self.ok("invoke", self.warm, "/status/201")

    def test_invoke_unknown_endpoint(self):
        proc = self.cli("invoke", "no-such-endpoint", "/infer", "-d", "x")
        msg = self.assertFails(proc, EXIT_NOT_FOUND)
        self.assertIn("no-such-endpoint", msg)

    def test_wrong_key_and_unreachable_server(self):
        proc = self.cli("invoke", self.warm, "/infer", "-d", "x", env={"SGPU_API_KEY": "wrong"})
        self.assertFails(proc, EXIT_REFUSED, "wrong key")
        proc = self.cli("endpoint", "list", env={"SGPU_API_KEY": "wrong"})
        self.assertFails(proc, EXIT_REFUSED, "wrong key")
        proc = self.cli("nodes", env={"SGPU_URL": "http://127.0.0.1:%d" % free_port()})
        self.assertFails(proc, EXIT_SERVER, "closed port")


class CliWorkersTest(CliTestCase):
    def test_workers_table_and_stop(self):
        name = unique_name("cli-workers")
        self.cli_create(echo_spec(name, gpu={"type": "a100", "count": 1}))
        self.ok("invoke", name, "/infer", "-d", "x", timeout=60)
        (w,) = self.sg.active_workers(name)

        row = self.row_where(parse_table(self.ok("workers", name)), "ID", w["id"])
        self.assertEqual(row["STATE"], "ready")
        self.assertEqual(row["PID"], str(w["pid"]))
        self.assertEqual(row["PORT"], str(w["port"]))
        self.assertEqual(row["GPUS"], ",".join(str(g) for g in w["gpus"]))
        self.assertRegex(row["COLD START ms"], r"^\d+$")
        self.assertEqual(row["IN FLIGHT"], "0")
        self.assertEqual(row["SERVED"], "1")
        self.assertEqual(row["STARTED"], w["started_at"])

        listed = json.loads(self.ok("workers", name, "--json"))["workers"]
        self.assertIn(w["id"], [x["id"] for x in listed])

        self.ok("workers", "stop", name, w["id"])
        self.wait_for(lambda: not self.sg.active_workers(name), 15,
                      message="worker %s stopped" % w["id"])
        row = self.row_where(parse_table(self.ok("workers", name)), "ID", w["id"])
        self.assertIn(row["STATE"], ("stopped", "failed"))
        # a new worker is listed before the stopped one: newest first
        self.ok("invoke", name, "/infer", "-d", "x", timeout=60)
        (w2,) = self.sg.active_workers(name)
        rows = parse_table(self.ok("workers", name))
        ids = [r["ID"] for r in rows]
        self.assertLess(ids.index(w2["id"]), ids.index(w["id"]), rows)
        started = [r["STARTED"] for r in rows]
        self.assertEqual(started, sorted(started, reverse=True))

        self.assertFails(self.cli("workers", "stop", name, "w-doesnotexist"), EXIT_NOT_FOUND)
        self.assertFails(self.cli("workers", "no-such-endpoint"), EXIT_NOT_FOUND)


class CliLogsTest(CliTestCase):
    def test_logs_query(self):
        name = unique_name("cli-logs")
        self.cli_create(echo_spec(name))
        marker = "marker-%d" % time.monotonic_ns()
        self.ok("invoke", name, "/%s" % marker, timeout=60)
        (w,) = self.sg.active_workers(name)
        self.wait_for(lambda: any(marker in l["line"] for l in self.sg.logs(name)), 10,
                      message="the request's log line")

        lines = self.ok("logs", name).splitlines()
        parsed = [LOG_LINE.match(l) for l in lines]
        self.assertTrue(all(parsed), lines)
        hits = [m for m in parsed if marker in m.group(4)]
        self.assertEqual(len(hits), 1, lines)
        self.assertEqual(hits[0].group(2), w["id"])
        self.assertEqual(hits[0].group(3), "stdout")
        self.assertTrue(any(m.group(3) == "event" for m in parsed), lines)

        objs = [json.loads(l) for l in self.ok("logs", name, "--json").splitlines()]
        self.assertTrue(objs)
        self.assertTrue(all(o["endpoint"] == name for o in objs), objs)
        self.assertEqual(len([o for o in objs if marker in o["line"]]), 1, objs)

        grep = self.ok("logs", name, "-q", marker).splitlines()
        self.assertEqual(len(grep), 1, grep)
        self.assertIn(marker, grep[0])

        events = self.ok("logs", name, "--stream", "event").splitlines()
        self.assertTrue(events)
        self.assertTrue(all(LOG_LINE.match(l).group(3) == "event" for l in events), events)

        mine = self.ok("logs", name, "--worker", w["id"]).splitlines()
        self.assertTrue(mine)
        self.assertTrue(all(LOG_LINE.match(l).group(2) == w["id"] for l in mine), mine)

        self.assertEqual(len(self.ok("logs", name, "--limit", "2").splitlines()), 2)

        self.assertTrue(self.ok("logs", name, "--since", "10m").splitlines())
        self.assertEqual(self.ok("logs", name, "--until", "1"), "")

        self.assertFails(self.cli("logs", "no-such-endpoint"), EXIT_NOT_FOUND)

    def test_logs_by_request_id(self):
        name = unique_name("cli-logs-rid")
        self.cli_create(echo_spec(name))
        for rid in ("cli-rid-1", "cli-rid-2"):
            self.assertOk(self.sg.invoke(name, "/trace", headers={"X-Request-Id": rid}))
        self.wait_for(lambda: len(self.sg.logs(name, request_id="cli-rid-2")) == 2, 10,
                      message="the two lines of cli-rid-2")
        lines = self.ok("logs", name, "--request-id", "cli-rid-2").splitlines()
        self.assertEqual(sorted(LOG_LINE.match(l).group(4) for l in lines),
                         ["trace cli-rid-2 stderr", "trace cli-rid-2 stdout"], lines)
        lines = self.ok("logs", name, "-r", "cli-rid-1", "--stream", "stderr").splitlines()
        self.assertEqual([LOG_LINE.match(l).group(4) for l in lines], ["trace cli-rid-1 stderr"], lines)
        objs = [json.loads(l) for l in self.ok("logs", name, "--request-id", "cli-rid-1", "--json").splitlines()]
        self.assertEqual({o["request_id"] for o in objs}, {"cli-rid-1"})
        self.assertFails(self.cli("logs", name, "--request-id", "bad id"), EXIT_REFUSED)

    def test_logs_follow(self):
        name = unique_name("cli-follow")
        self.cli_create(echo_spec(name))
        proc = self.popen("logs", name, "-f")
        reader = LineReader(proc.stdout)
        marker = "follow-%d" % time.monotonic_ns()
        self.ok("invoke", name, "/%s" % marker, timeout=60)
        self.wait_for(lambda: marker in reader.text(), 10,
                      message="the followed log line (got %r)" % reader.text())
        line = [l for _, l in reader.snapshot() if marker in l][0]
        self.assertRegex(line, LOG_LINE)
        # it keeps following: a second request shows up too
        marker2 = marker + "-again"
        self.ok("invoke", name, "/%s" % marker2)
        self.wait_for(lambda: marker2 in reader.text(), 10, message="a second followed line")
        self.assertIsNone(proc.poll(), "sgpu logs -f ended on its own")
        proc.send_signal(signal.SIGINT)
        proc.wait(scaled(10))
        reader.join(5)
        self.assertEqual(proc.stderr.read(), b"")

    def test_logs_follow_ends_when_the_endpoint_is_deleted(self):
        name = unique_name("cli-follow-del")
        self.cli_create(echo_spec(name))
        proc = self.popen("logs", name, "-f", "--stream", "event")
        reader = LineReader(proc.stdout)
        # the follow is under way once it shows the endpoint's first event: deleted any
        # earlier, the endpoint would be gone before the follow asked (404, exit 3)
        self.wait_for(lambda: "endpoint created" in reader.text(), 10,
                      message="the follow's first line (got %r)" % reader.text())
        self.ok("endpoint", "delete", name)
        self.assertEqual(proc.wait(scaled(20)), EXIT_OK)
        reader.join(5)
        self.assertIn("endpoint deleted", reader.text())
        self.assertEqual(proc.stderr.read().decode(),
                         "sgpu: endpoint %s was deleted; the logs end here\n" % name)

    def test_logs_follow_json(self):
        name = unique_name("cli-follow-json")
        self.cli_create(echo_spec(name))
        proc = self.popen("--json", "logs", name, "--follow", "--stream", "stdout")
        reader = LineReader(proc.stdout)
        marker = "fj-%d" % time.monotonic_ns()
        self.ok("invoke", name, "/%s" % marker, timeout=60)
        self.wait_for(lambda: marker in reader.text(), 10, message="the followed log line")
        for _, l in reader.snapshot():
            obj = json.loads(l)
            self.assertEqual(obj["stream"], "stdout")
            self.assertEqual(obj["endpoint"], name)
        proc.terminate()
        proc.wait(scaled(10))


def async_cli_spec(name, **kwargs):
    return echo_spec(name, type="async", workers={"min": 1, "max": 1, "max_concurrency": 1},
                     env={"WARMUP_MS": "0"}, health={"path": "/health", "period_s": 30}, **kwargs)


class CliJobsTest(CliTestCase):
    def test_jobs(self):
        name = unique_name("cli-jobs")
        self.cli_create(async_cli_spec(name))
        self.sg.wait_ready(name, 1, timeout=20)

        # run: the id; --sync: the output
        job_id = self.ok("jobs", "run", name, "--input", '{"n": 1}').strip()
        self.assertRegex(job_id, r"^[0-9a-f-]{36}$")
        out = json.loads(self.ok("jobs", "run", name, "--sync", "--input", '{"output": {"answer": 42}}'))
        self.assertEqual(out, {"answer": 42})
        path = os.path.join(self.tmp, "input-%s.json" % name)
        with open(path, "w") as f:
            json.dump({"output": "from-file"}, f)
        self.assertEqual(json.loads(self.ok("jobs", "run", name, "--sync", "--input", "@" + path)),
                         "from-file")
        self.assertEqual(json.loads(self.ok("jobs", "run", name, "--sync", "--input", "@-",
                                            input='{"output": "from-stdin"}')), "from-stdin")
        final = json.loads(self.ok("jobs", "run", name, "--sync", "-o", "json", "--input", "{}"))
        self.assertEqual(final["status"], "COMPLETED")

        # a job that fails: exit 1, its error on stderr
        proc = self.cli("jobs", "run", name, "--sync", "--input", '{"fail": "nope"}')
        msg = self.assertFails(proc, EXIT_FAIL)
        self.assertIn("FAILED", msg)
        self.assertIn("nope", msg)
        failed_id = json.loads(self.ok("jobs", "list", name, "--status", "FAILED", "-o", "json"))["jobs"][0]["id"]

        # status
        st = json.loads(self.ok("jobs", "status", name, job_id))
        self.assertEqual(st["id"], job_id)
        self.assertEqual(st["status"], "COMPLETED")
        self.assertEqual(json.loads(self.ok("jobs", "status", name, job_id, "-o", "json"))["id"], job_id)

        # list: newest first, filters, limit
        rows = parse_columns(self.ok("jobs", "list", name))
        self.assertEqual(len(rows), 6, rows)
        self.assertEqual(rows[0]["ID"], failed_id)
        self.assertEqual(rows[0]["STATUS"], "FAILED")
        self.assertEqual(rows[-1]["ID"], job_id)
        self.assertEqual([r["ID"] for r in parse_columns(self.ok("jobs", "list", name, "--limit", "2"))],
                         [r["ID"] for r in rows[:2]])
        listed = json.loads(self.ok("jobs", "list", name, "--status", "COMPLETED", "-o", "json"))["jobs"]
        self.assertEqual([j["id"] for j in listed], [r["ID"] for r in rows[1:]])
        self.assertEqual(parse_columns(self.ok("jobs", "list", name, "--status", "CANCELLED")), [])

        # retry a failed job; cancel; purge
        self.assertEqual(self.ok("jobs", "retry", name, failed_id).strip(), "job %s IN_QUEUE" % failed_id)
        self.wait_for(lambda: self.sg.api("GET", "/v2/%s/status/%s" % (name, failed_id)).body["status"]
                      == "FAILED", 20, message="the retried job to fail again")
        blocker = self.ok("jobs", "run", name, "--input", '{"sleep_ms": 30000}').strip()
        self.wait_for(lambda: self.sg.api("GET", "/v2/%s/status/%s" % (name, blocker)).body["status"]
                      == "IN_PROGRESS", 10, message="the blocker to run")
        queued = [self.ok("jobs", "run", name, "--input", "{}").strip() for _ in range(2)]
        self.assertEqual(self.ok("jobs", "purge", name).strip(), "2 queued jobs of %s cancelled" % name)
        for q in queued:
            self.assertEqual(json.loads(self.ok("jobs", "status", name, q))["status"], "CANCELLED")
        self.assertEqual(self.ok("jobs", "cancel", name, blocker).strip(), "job %s CANCELLED" % blocker)

        # exit codes
        self.assertFails(self.cli("jobs", "status", name, "0" * 36), EXIT_NOT_FOUND)
        self.assertFails(self.cli("jobs", "list", "no-such-endpoint"), EXIT_NOT_FOUND)
        self.assertFails(self.cli("jobs", "retry", name, job_id), EXIT_REFUSED)  # COMPLETED: 409
        sync = unique_name("cli-jobs-sync")
        self.cli_create(echo_spec(sync))
        self.assertFails(self.cli("jobs", "list", sync), EXIT_REFUSED)  # not async: 409
        for args in (("jobs",), ("jobs", "run", name), ("jobs", "run", name, "--input", "{bad"),
                     ("jobs", "list", name, "--limit", "0"), ("jobs", "status", name),
                     ("jobs", "list", name, "--input", "{}"), ("jobs", "frob", name),
                     ("jobs", "run", name, "--input", "@/no/such/file")):
            self.assertFails(self.cli(*args), EXIT_USAGE, " ".join(args))


class CliImagesTest(CliTestCase):
    def test_images(self):
        out = self.ok("images", "list")
        self.assertTrue(out.startswith("IMAGE"), out)
        listing = json.loads(self.ok("images", "list", "-o", "json"))
        self.assertIn("images", listing)
        ref = "127.0.0.1:%d/cli-ghost:1" % free_port()  # nothing listens: the pull fails
        self.assertEqual(self.ok("images", "pull", ref).strip(), "%s pulling" % ref)
        self.wait_for(lambda: any(r["IMAGE"] == ref and r["STATE"] == "failed"
                                  for r in parse_columns(self.ok("images", "list"))), 30,
                      message="the failed pull listed")
        self.assertFails(self.cli("images", "rm", ref), EXIT_NOT_FOUND)
        self.assertFails(self.cli("images", "pull", ref, "--registry-auth", "no-such-auth"), EXIT_NOT_FOUND)
        self.assertFails(self.cli("images", "rm"), EXIT_USAGE)
        self.assertFails(self.cli("images", "list", "--registry-auth", "x"), EXIT_USAGE)


class CliRegistryAuthTest(CliTestCase):
    def test_registry_auth(self):
        name = unique_name("cli-auth")
        password = "pw-%d" % time.monotonic_ns()
        out = self.ok("registry-auth", "set", name, "--registry", "registry.example:5000",
                      "--username", "bob", input=password + "\n")
        self.assertEqual(out.strip(), "registry auth %s stored" % name)
        self.addCleanup(self.sg.api, "DELETE", "/v1/registry-auths/%s" % name)
        out = self.ok("registry-auth", "set", name, "--registry", "registry.example:5000",
                      "--username", "alice", "--password", password)
        self.assertEqual(out.strip(), "registry auth %s stored" % name)
        table = self.ok("registry-auth", "list")
        row = self.row_where(parse_columns(table), "NAME", name)
        self.assertEqual((row["REGISTRY"], row["USERNAME"]), ("registry.example:5000", "alice"))
        raw = self.ok("registry-auth", "list", "-o", "json")
        self.assertIn(name, [a["name"] for a in json.loads(raw)["registry_auths"]])
        self.assertNotIn(password, table + raw + out)
        self.assertEqual(self.ok("registry-auth", "rm", name).strip(), "registry auth %s removed" % name)
        self.assertFails(self.cli("registry-auth", "rm", name), EXIT_NOT_FOUND)
        self.assertFails(self.cli("registry-auth", "set", name, "--username", "x", "--password", "y"),
                         EXIT_USAGE)
        self.assertFails(self.cli("registry-auth", "list", "--registry", "x"), EXIT_USAGE)


class CliSecretsTest(CliTestCase):
    def test_secrets(self):
        secret = unique_name("cli-secret")
        value = "tok-%d" % time.monotonic_ns()
        self.addCleanup(self.sg.api, "DELETE", "/v1/secrets/%s" % secret)
        outs = [self.ok("secrets", "set", secret, "--value", "first")]
        self.assertEqual(outs[0].strip(), "secret %s created" % secret)
        path = os.path.join(self.tmp, "secret-%s" % secret)
        with open(path, "w") as f:
            f.write("from-file\n")
        outs.append(self.ok("secrets", "set", secret, "--value", "@" + path))
        # from standard input, one final newline removed
        outs.append(self.ok("secrets", "set", secret, input=value + "\n"))
        self.assertEqual(outs[-1].strip(), "secret %s updated" % secret)
        outs.append(self.ok("secrets", "list"))
        self.row_where(parse_columns(outs[-1]), "NAME", secret)
        outs.append(self.ok("secrets", "list", "-o", "json"))
        self.assertIn(secret, [x["name"] for x in json.loads(outs[-1])["secrets"]])
        for out in outs:
            self.assertNotIn(value, out)
            self.assertNotIn("from-file", out)

        # the worker gets the value as it was given on standard input
        name = unique_name("cli-secret-ep")
        self.cli_create(echo_spec(name, env={"MODEL": {"secret": secret}}, workers={"min": 1, "max": 1}))
        self.sg.wait_ready(name, 1, timeout=20)
        self.assertEqual(json.loads(self.ok("invoke", name, "/env"))["MODEL"], value)
        msg = self.assertFails(self.cli("secrets", "rm", secret), EXIT_REFUSED)  # in use: 409
        self.assertIn(name, msg)
        self.sg.try_delete(name)
        self.assertEqual(self.ok("secrets", "rm", secret).strip(), "secret %s removed" % secret)
        self.assertFails(self.cli("secrets", "rm", secret), EXIT_NOT_FOUND)
        self.assertFails(self.cli("secrets", "set", "Bad_Name", "--value", "x"), EXIT_REFUSED)
        self.assertFails(self.cli("secrets", "list", "--value", "x"), EXIT_USAGE)
        self.assertFails(self.cli("secrets", "set"), EXIT_USAGE)


class CliVolumesTest(CliTestCase):
    def test_volumes(self):
        import io
        import tarfile
        vol = unique_name("cli-vol")
        self.addCleanup(self.sg.api, "DELETE", "/v1/volumes/%s" % vol)
        self.assertEqual(self.ok("volumes", "create", vol, "--size", "1M").strip(),
                         "volume %s created" % vol)
        got = self.sg.api("GET", "/v1/volumes/%s" % vol).body
        self.assertEqual(got["size_bytes"], 1 << 20)
        row = self.row_where(parse_columns(self.ok("volumes", "list")), "NAME", vol)
        self.assertEqual(row["SIZE"], "1.0MiB")
        self.assertIn(vol, [v["name"] for v in json.loads(self.ok("volumes", "list", "-o", "json"))["volumes"]])

        tarball = os.path.join(self.tmp, "%s.tar.gz" % vol)
        with tarfile.open(tarball, "w:gz") as tar:
            data = b"w" * 5000
            info = tarfile.TarInfo("weights/model.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        out = self.ok("volumes", "upload", vol, tarball)
        self.assertIn("unpacked into volume %s" % vol, out)
        self.assertEqual(self.sg.api("GET", "/v1/volumes/%s" % vol).body["used_bytes"], 5000)
        answer = json.loads(self.ok("volumes", "upload", vol, tarball, "-o", "json"))
        self.assertEqual(answer["unpacked_bytes"], 5000)

        self.assertFails(self.cli("volumes", "create", vol), EXIT_REFUSED)  # taken: 409
        self.assertFails(self.cli("volumes", "upload", "no-such-volume", tarball), EXIT_NOT_FOUND)
        self.assertFails(self.cli("volumes", "upload", vol, "/no/such.tar"), EXIT_USAGE)
        self.assertFails(self.cli("volumes", "create", vol, "--size", "lots"), EXIT_USAGE)
        self.assertFails(self.cli("volumes", "list", "--size", "1"), EXIT_USAGE)
        self.assertEqual(self.ok("volumes", "rm", vol).strip(), "volume %s removed" % vol)
        self.assertFails(self.cli("volumes", "rm", vol), EXIT_NOT_FOUND)


class CliOutputTest(CliTestCase):
    def test_output_json_on_every_listing(self):
        for args, key in ((("endpoint", "list"), "endpoints"), (("nodes",), "nodes"),
                          (("images", "list"), "images"), (("secrets", "list"), "secrets"),
                          (("registry-auth", "list"), "registry_auths"), (("keys", "list"), "api_keys"),
                          (("volumes", "list"), "volumes"),
                          (("usage",), None)):
            with self.subTest(args=args):
                out = json.loads(self.ok(*args, "-o", "json"))
                if key:
                    self.assertIn(key, out)
                self.assertEqual(json.loads(self.ok("--output", "json", *args)).keys(), out.keys())
        self.assertTrue(self.ok("endpoint", "list", "-o", "table").startswith("NAME"))
        self.assertFails(self.cli("endpoint", "list", "-o", "yaml"), EXIT_USAGE)

    def long_error_endpoint(self):
        name = unique_name("cli-cut")
        self.cli_create(echo_spec(name, command=["/bin/sh", "-c", "echo " + "x" * 200 + "; exit 3"],
                                  workers={"min": 1, "max": 1}))
        self.wait_for(lambda: (self.sg.get(name)["status"].get("last_error") or ""), 30,
                      message="a last error")
        return name

    def test_endpoint_list_cut_to_the_terminal(self):
        name = self.long_error_endpoint()
        # not a terminal: never cut, whatever COLUMNS says
        out = self.ok("endpoint", "list", env={"COLUMNS": "60"})
        row = self.row_where(parse_columns(out), "NAME", name)
        self.assertNotEqual(row["LAST ERROR"], "-")
        self.assertTrue(any(len(l) > 60 for l in out.splitlines()), out)
        # a terminal of 60 columns: every line cut to 60
        import pty
        pid, fd = pty.fork()
        if pid == 0:
            env = self.env(extra={"COLUMNS": "60"})
            os.execve(SGPU, [SGPU, "endpoint", "list"], env)
        chunks = []
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        lines = b"".join(chunks).decode().replace("\r", "").splitlines()
        self.assertTrue(any(l.startswith(name) for l in lines), lines)
        self.assertTrue(all(len(l) <= 60 for l in lines), lines)
        self.assertTrue(any(len(l) == 60 for l in lines), lines)


class CliCompletionTest(CliTestCase):
    COMMANDS = ("endpoint", "invoke", "jobs", "workers", "logs", "images", "registry-auth", "secrets",
                "volumes", "nodes", "usage", "keys", "completion", "help")

    def test_bash_completion(self):
        script = self.ok("completion", "bash")
        for cmd in self.COMMANDS:
            self.assertRegex(script, r"\b%s\b" % re.escape(cmd))
        path = os.path.join(self.tmp, "sgpu-completion.bash")
        with open(path, "w") as f:
            f.write(script)

        def complete(*words):
            line = "COMP_WORDS=(sgpu %s); COMP_CWORD=%d; _sgpu; echo \"${COMPREPLY[*]}\"" % (
                " ".join("'%s'" % w for w in words), len(words))
            proc = subprocess.run(["bash", "-c", "source %s && complete -p sgpu && %s" % (path, line)],
                                  capture_output=True, text=True, timeout=scaled(10))
            self.assertEqual(proc.returncode, 0, proc.stderr)
            first, _, rest = proc.stdout.partition("\n")
            self.assertEqual(first, "complete -F _sgpu sgpu")
            return rest.split()

        self.assertEqual(sorted(complete("")), sorted(self.COMMANDS))
        self.assertEqual(complete("jo"), ["jobs"])
        self.assertEqual(sorted(complete("jobs", "")), ["cancel", "list", "purge", "retry", "run", "status"])
        self.assertEqual(complete("--json", "secrets", "s"), ["set"])
        self.assertEqual(complete("--url", "http://x", "images", "r"), ["rm"])
        self.assertIn("--output", complete("endpoint", "--o"))
        self.assertFails(self.cli("completion", "zsh"), EXIT_USAGE)

    def test_help_lists_commands_and_exit_codes(self):
        out = self.ok("--help")
        for cmd in self.COMMANDS:
            self.assertRegex(out, r"\n  %s\s" % re.escape(cmd))
        for code in range(6):
            self.assertRegex(out, r"\n  %d  " % code)
        for cmd in ("jobs", "images", "registry-auth", "secrets"):
            self.assertIn("Usage: sgpu %s" % cmd, self.ok("help", cmd))


class CliNodesTest(CliTestCase):
    def test_nodes(self):
        rows = parse_table(self.ok("nodes"))
        self.assertEqual(sorted(r["INDEX"] for r in rows), ["0", "1", "2", "3"])
        for r in rows:
            self.assertEqual(r["TYPE"], "a100")
            self.assertEqual(r["SOURCE"], "declared")
        nodes = json.loads(self.ok("nodes", "--json"))["nodes"]
        self.assertEqual(nodes, self.sg.nodes())

        name = unique_name("cli-nodes")
        self.cli_create(echo_spec(name, gpu={"type": "a100", "count": 2}))
        self.ok("invoke", name, "/infer", "-d", "x", timeout=60)
        (w,) = self.sg.active_workers(name)
        held = [r for r in parse_table(self.ok("nodes")) if r["ENDPOINT"] == name]
        self.assertEqual(sorted(int(r["INDEX"]) for r in held), sorted(w["gpus"]))
        self.assertTrue(all(r["WORKER"] == w["id"] for r in held), held)


class CliDiscoveryTest(CliTestCase):
    def write_dir(self, path, url=None, key=None):
        os.makedirs(path, exist_ok=True)
        if url is not None:
            with open(os.path.join(path, "url"), "w") as f:
                f.write(url + "\n")
        if key is not None:
            with open(os.path.join(path, "admin.key"), "w") as f:
                f.write(key + "\n")
        return path

    def test_data_dir_option(self):
        out = self.ok("--data-dir", self.sg.data_dir, "endpoint", "list", discover=True)
        self.assertTrue(out.startswith("NAME"), out)
        self.ok("nodes", "--data-dir", self.sg.data_dir, discover=True)

    def test_data_dir_environment(self):
        self.ok("nodes", discover=True, env={"SGPU_DATA_DIR": self.sg.data_dir})

    def test_home_directory(self):
        home = os.path.join(self.tmp, "home-with-sgpu")
        self.write_dir(os.path.join(home, ".sgpu"), self.sg.base_url, self.sg.key)
        self.ok("nodes", discover=True, env={"HOME": home})

    def test_url_without_scheme(self):
        d = self.write_dir(os.path.join(self.tmp, "noscheme"), "127.0.0.1:%d/" % self.sg.port,
                           self.sg.key)
        self.ok("nodes", "--data-dir", d, discover=True)

    def test_precedence(self):
        wrong = self.write_dir(os.path.join(self.tmp, "wrong"),
                               "http://127.0.0.1:%d" % free_port(), "wrong-key")
        # the files are used, and fail
        self.assertFails(self.cli("nodes", "--data-dir", wrong, discover=True), EXIT_SERVER)
        # the environment wins over the files
        self.ok("nodes", "--data-dir", wrong, discover=True,
                env={"SGPU_URL": self.sg.base_url, "SGPU_API_KEY": self.sg.key})
        # flags win over the environment
        self.ok("nodes", "--url", self.sg.base_url, "--key", self.sg.key,
                env={"SGPU_URL": "http://127.0.0.1:%d" % free_port(), "SGPU_API_KEY": "wrong"})
        # --data-dir wins over SGPU_DATA_DIR
        self.ok("nodes", "--data-dir", self.sg.data_dir, discover=True,
                env={"SGPU_DATA_DIR": wrong})

    def test_wrong_key_in_data_dir(self):
        d = self.write_dir(os.path.join(self.tmp, "badkey"), self.sg.base_url, "not-the-key")
        msg = self.assertFails(self.cli("endpoint", "list", "--data-dir", d, discover=True),
                               EXIT_REFUSED)
        self.assertTrue(msg)
        # no key at all
        d = self.write_dir(os.path.join(self.tmp, "nokey"), self.sg.base_url)
        self.assertFails(self.cli("endpoint", "list", "--data-dir", d, discover=True), EXIT_REFUSED)

    def test_no_url_anywhere(self):
        empty = self.write_dir(os.path.join(self.tmp, "empty"))
        self.assertFails(self.cli("endpoint", "list", "--data-dir", empty, discover=True),
                         EXIT_SERVER)


if __name__ == "__main__":
    unittest.main()
