"""A check of the tests' RunPod worker (runpod_worker.py) itself, against a stand-in server
in this process that speaks the platform side of the worker protocol. It shows that the
worker makes the calls RunPod's SDK makes (paths, parameters, headers, bodies, retries, stop,
pings from a separate process), so that test_runpod, which runs it against sgpud, tests
sgpud and not the worker. No sgpud is started here."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "runpod_worker.py")
TOKEN = "0123456789abcdef" * 4


def scaled(seconds):
    try:
        return seconds * float(os.environ.get("SGPU_TEST_TIMEOUT_SCALE") or 1)
    except ValueError:
        return seconds


def wait_for(predicate, timeout, message):
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (scaled(timeout), message))
        time.sleep(0.02)


class Call:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query  # name -> value (percent-decoded)
        self.raw_query = ""
        self.headers = headers
        self.body = body
        self.at = time.monotonic()

    @property
    def route(self):
        return self.path.split("/")[3]

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class StandIn:
    """The platform side of the protocol, small: one endpoint "ep", a queue of jobs, takes
    held up to `hold` seconds, stop lists per worker, scripted answers to result posts."""

    def __init__(self, hold=0.5):
        self.hold = hold
        self.lock = threading.Condition()
        self.queue = []
        self.held = {}  # job id -> worker id
        self.to_stop = {}  # worker id -> [job id]
        self.done_statuses = {}  # job id -> [status, ...] for its result posts
        self.calls = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, body=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self):
                parts = urllib.parse.urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
                call = Call(self.command, parts.path, query, self.headers, body)
                call.raw_query = parts.query
                with stand_in.lock:
                    stand_in.calls.append(call)
                    stand_in.lock.notify_all()
                if self.headers.get("Authorization") != TOKEN:
                    return self.answer(401, {"error": {"code": "unauthorized"}})
                status, out = stand_in.route(call)
                self.answer(status, out)

            do_GET = handle_any
            do_POST = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # workers killed mid-request
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def submit(self, job_id, job_input, statuses=None):
        with self.lock:
            if statuses:
                self.done_statuses[job_id] = list(statuses)
            self.queue.append({"id": job_id, "input": job_input})
            self.lock.notify_all()

    def stop(self, worker_id, job_id):
        with self.lock:
            self.to_stop.setdefault(worker_id, []).append(job_id)
            self.lock.notify_all()

    def route(self, call):
        seg = call.path.split("/")  # "", "worker", "ep", ROUTE, WID[, JID]
        kind, wid = seg[3], seg[4]
        deadline = time.monotonic() + self.hold
        with self.lock:
            if kind in ("job-take", "job-take-batch"):
                n = int(call.query.get("batch_size", "1")) if kind == "job-take-batch" else 1
                while not self.queue and time.monotonic() < deadline:
                    self.lock.wait(max(0.0, deadline - time.monotonic()))
                if not self.queue:
                    return 204, None
                jobs, self.queue = self.queue[:n], self.queue[n:]
                for j in jobs:
                    self.held[j["id"]] = wid
                return 200, (jobs if kind == "job-take-batch" else jobs[0])
            if kind == "job-stop":
                while not self.to_stop.get(wid) and time.monotonic() < deadline:
                    self.lock.wait(max(0.0, deadline - time.monotonic()))
                ids = self.to_stop.pop(wid, [])
                for j in ids:
                    self.held.pop(j, None)
                return (200, {"jobsToStop": ids}) if ids else (204, None)
            if kind == "ping":
                return 200, {"ok": True}
            if kind in ("job-done", "job-stream"):
                jid = seg[5]
                if self.held.get(jid) != wid:
                    return 409, {"error": {"code": "not_held"}}
                body = json.loads(call.body.decode("utf-8"))
                if kind == "job-done" and body.get("status") != "IN_PROGRESS":
                    script = self.done_statuses.get(jid)
                    status = script.pop(0) if script else 200
                    if 200 <= status < 300:
                        self.held.pop(jid, None)
                    return status, {"ok": status < 300}
                return 200, {"ok": True}
        return 404, None

    def calls_of(self, kind, job_id=None):
        with self.lock:
            return [c for c in self.calls if c.route == kind
                    and (job_id is None or c.path.split("/")[-1] == job_id)]

    def finals(self, job_id):
        return [c for c in self.calls_of("job-done", job_id) if c.json().get("status") != "IN_PROGRESS"]


class WorkerProcess:
    def __init__(self, port, worker_id="w-1", concurrency=1, token=TOKEN, extra_env=None):
        base = "http://127.0.0.1:%d/worker/ep" % port
        env = dict(os.environ)
        env.update({
            "RUNPOD_WEBHOOK_GET_JOB": base + "/job-take/$ID?gpu=none",
            "RUNPOD_WEBHOOK_POST_OUTPUT": base + "/job-done/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_WEBHOOK_POST_STREAM": base + "/job-stream/$RUNPOD_POD_ID/$ID?gpu=none",
            "RUNPOD_WEBHOOK_PING": base + "/ping/$RUNPOD_POD_ID?gpu=none",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": token,
            "RUNPOD_PING_INTERVAL": "1000",
            "TEST_CONCURRENCY": str(concurrency),
        })
        env.update(extra_env or {})
        self.lines = []
        self.proc = subprocess.Popen([sys.executable, WORKER], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def has_line(self, line):
        return line in self.lines

    def children(self):
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()
        self.proc.stdout.close()


class RunPodWorkerSelfCheck(unittest.TestCase):

    def setUp(self):
        self.srv = StandIn()
        self.addCleanup(self.srv.close)
        self.dir = tempfile.mkdtemp(prefix="sgpu-rp-self-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def worker(self, **kwargs):
        w = WorkerProcess(self.srv.port, **kwargs)
        self.addCleanup(w.close)
        return w

    def final(self, job_id, timeout=10):
        return wait_for(lambda: (self.srv.finals(job_id) or [None])[-1], timeout,
                        "the result of %s" % job_id)

    def test_take_and_result_are_sent_as_the_sdk_sends_them(self):
        w = self.worker()
        self.srv.submit("j-1", {"echo": {"a": [1, "é"]}})
        done = self.final("j-1")
        self.assertEqual(done.json(), {"output": {"a": [1, "é"]}})
        self.assertEqual(done.path, "/worker/ep/job-done/w-1/j-1")
        self.assertEqual(done.query, {"gpu": "none", "isStream": "false"})
        self.assertEqual(done.headers["Content-Type"], "application/x-www-form-urlencoded")
        self.assertEqual(done.headers["Authorization"], TOKEN)
        self.assertIn("RunPod-Python-SDK/1.12.0", done.headers["User-Agent"])
        take = self.srv.calls_of("job-take")[0]
        self.assertEqual(take.path, "/worker/ep/job-take/w-1")
        self.assertEqual(take.raw_query, "gpu=none&job_in_progress=0")
        self.assertEqual(take.headers["Authorization"], TOKEN)
        wait_for(lambda: w.has_line("done j-1 200"), 5, "the worker's done line")
        # the SDK's session keeps the last result's job id on later requests
        self.srv.submit("j-2", {})
        self.assertEqual(self.final("j-2").json(), {})
        later = [c for c in self.srv.calls_of("job-take") if c.at > done.at]
        self.assertTrue(later, "no take after the first result")
        self.assertEqual(later[0].headers.get("X-Request-ID"), "j-1")
        self.assertTrue(self.srv.calls_of("job-stop"), "no stop poll")
        stop = self.srv.calls_of("job-stop")[0]
        self.assertEqual((stop.path, stop.raw_query), ("/worker/ep/job-stop/w-1", "gpu=none"))

    def test_result_bodies(self):
        self.worker()
        self.srv.submit("j-raise", {"raise": "boom"})
        body = self.final("j-raise").json()
        self.assertEqual(list(body), ["error"])
        info = json.loads(body["error"])
        self.assertEqual(sorted(info), ["error_message", "error_traceback", "error_type", "hostname",
                                        "runpod_version", "worker_id"])
        self.assertEqual((info["error_message"], info["error_type"], info["worker_id"], info["runpod_version"]),
                         ("boom", "<class 'RuntimeError'>", "w-1", "1.12.0"))
        self.srv.submit("j-err", {"error": "bad input"})
        self.assertEqual(self.final("j-err").json(), {"output": {"note": "returned"}, "error": "bad input"})
        self.srv.submit("j-ref", {"refresh": True, "echo": 5})
        self.assertEqual(self.final("j-ref").json(), {"output": {"echo": 5}, "stopPod": True})
        self.srv.submit("j-list", [1, 2])
        self.assertEqual(self.final("j-list").json(), {"output": [1, 2]})

    def test_stream_then_aggregate(self):
        self.worker()
        self.srv.submit("j-s", {"stream": ["a", {"b": 1}, 3], "interval": 0.01})
        final = self.final("j-s")
        self.assertEqual(final.json(), {"output": ["a", {"b": 1}, 3]})
        self.assertEqual(final.query["isStream"], "true")
        chunks = self.srv.calls_of("job-stream", "j-s")
        self.assertEqual([c.json() for c in chunks], [{"output": "a"}, {"output": {"b": 1}}, {"output": 3}])
        self.assertTrue(all(c.query == {"gpu": "none", "isStream": "false"} for c in chunks))
        self.assertTrue(all(c.path == "/worker/ep/job-stream/w-1/j-s" for c in chunks))
        self.assertLess(chunks[-1].at, final.at)

    def test_progress_goes_to_the_result_url_before_the_result(self):
        self.worker()
        gate = os.path.join(self.dir, "gate")
        self.srv.submit("j-p", {"progress": ["half"], "gate": gate, "echo": "full"})
        prog = wait_for(lambda: self.srv.calls_of("job-done", "j-p"), 10, "the progress post")
        self.assertEqual(prog[0].json(), {"status": "IN_PROGRESS", "output": "half"})
        self.assertEqual(prog[0].query["isStream"], "false")
        self.assertEqual(self.srv.finals("j-p"), [])
        open(gate, "w").close()
        self.assertEqual(self.final("j-p").json(), {"output": "full"})

    def test_stop_cancels_the_job_and_posts_nothing(self):
        w = self.worker()
        self.srv.submit("j-long", {"sleep": 60})
        wait_for(lambda: w.has_line("take j-long"), 10, "the take")
        self.srv.stop("w-1", "j-long")
        wait_for(lambda: w.has_line("stop j-long"), 10, "the worker's stop line")
        self.srv.submit("j-next", {"echo": 1})
        self.assertEqual(self.final("j-next").json(), {"output": 1})
        self.assertEqual(self.srv.calls_of("job-done", "j-long"), [])
        self.srv.stop("w-1", "j-gone")
        wait_for(lambda: w.has_line("stop-unknown j-gone"), 10, "the stop of an unknown job")

    def test_pings_come_from_another_process_with_the_held_jobs(self):
        w = self.worker(concurrency=2)
        gate = os.path.join(self.dir, "gate")
        self.srv.submit("j-a", {"gate": gate})
        self.srv.submit("j-b", {"gate": gate})
        wait_for(lambda: w.has_line("take j-a") and w.has_line("take j-b"), 10, "both takes")

        def ping_with_both():
            for c in self.srv.calls_of("ping"):
                if sorted(c.query.get("job_id", "").split(",")) == ["j-a", "j-b"]:
                    return c
            return None
        ping = wait_for(ping_with_both, 10, "a ping naming both jobs")
        self.assertEqual(ping.path, "/worker/ep/ping/w-1")
        self.assertIn("job_id=j-a%2Cj-b", ping.raw_query.replace("j-b%2Cj-a", "j-a%2Cj-b"))
        self.assertEqual(ping.query["runpod_version"], "1.12.0")
        self.assertEqual(ping.query["gpu"], "none")
        self.assertEqual(ping.headers["Authorization"], TOKEN)
        open(gate, "w").close()
        self.final("j-a")
        self.final("j-b")
        since = time.monotonic()
        idle = wait_for(lambda: [c for c in self.srv.calls_of("ping") if c.at > since + 0.1], 10, "an idle ping")
        self.assertNotIn("job_id", idle[0].query)
        self.assertEqual(len(w.children()), 1, "the ping process")
        pinger = w.children()[0]
        w.proc.kill()
        w.proc.wait()
        wait_for(lambda: not os.path.exists("/proc/%d/status" % pinger) or
                 "State:\tZ" in open("/proc/%d/status" % pinger).read(), 10,
                 "the ping process to end with the worker")

    def test_batch_take_asks_for_the_free_slots(self):
        w = self.worker(concurrency=3)
        gate = os.path.join(self.dir, "gate")
        wait_for(lambda: self.srv.calls_of("job-take-batch"), 10, "a batch take")
        for i in range(4):
            self.srv.submit("j-%d" % i, {"gate": gate, "echo": i})
        wait_for(lambda: all(w.has_line("take j-%d" % i) for i in range(3)), 10, "three takes")
        first = self.srv.calls_of("job-take-batch")[0]
        self.assertEqual(first.path, "/worker/ep/job-take-batch/w-1")
        self.assertEqual(first.raw_query, "gpu=none&batch_size=3&job_in_progress=0")
        open(gate, "w").close()
        for i in range(4):
            self.assertEqual(self.final("j-%d" % i).json(), {"output": i})
        sizes = {c.query.get("batch_size") for c in self.srv.calls_of("job-take-batch")}
        self.assertLessEqual(sizes, {"1", "2", "3"})
        self.assertTrue(any(c.query["job_in_progress"] == "1"
                            for c in self.srv.calls_of("job-take") + self.srv.calls_of("job-take-batch")))

    def test_5xx_is_sent_again_and_4xx_is_dropped(self):
        w = self.worker()
        self.srv.submit("j-5", {"echo": 5}, statuses=[500, 503, 200])
        wait_for(lambda: w.has_line("done j-5 200"), 20, "the third post to pass")
        self.assertEqual(len(self.srv.finals("j-5")), 3)
        self.srv.submit("j-4", {"echo": 4}, statuses=[409])
        wait_for(lambda: w.has_line("done j-4 409"), 10, "the refused post")
        self.srv.submit("j-after", {"echo": 6})
        self.assertEqual(self.final("j-after").json(), {"output": 6})
        self.assertEqual(len(self.srv.finals("j-4")), 1)

    def test_wrong_key_is_not_a_job(self):
        w = self.worker(token="wrong")
        wait_for(lambda: len(self.srv.calls_of("job-take")) >= 3, 10, "takes retried after 401")
        self.assertTrue(any(line.startswith("take failed: HTTP 401") for line in w.lines), w.lines)

    def test_sigterm_lets_the_running_job_finish(self):
        w = self.worker()
        gate = os.path.join(self.dir, "gate")
        self.srv.submit("j-t", {"gate": gate, "echo": "kept"})
        wait_for(lambda: w.has_line("take j-t"), 10, "the take")
        w.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: w.has_line("shutdown on signal %d" % signal.SIGTERM), 10, "the shutdown line")
        self.assertIsNone(w.proc.poll())
        takes = len(self.srv.calls_of("job-take"))
        open(gate, "w").close()
        self.assertEqual(self.final("j-t").json(), {"output": "kept"})
        self.assertEqual(w.proc.wait(scaled(10)), 0)
        self.assertLessEqual(len(self.srv.calls_of("job-take")), takes + 1)

    def test_exit_kills_the_worker_and_its_ping_process(self):
        w = self.worker()
        wait_for(lambda: w.children(), 10, "the ping process")
        pinger = w.children()[0]
        marker = os.path.join(self.dir, "died-once")
        self.srv.submit("j-x", {"exit": marker})
        self.assertEqual(w.proc.wait(scaled(10)), -signal.SIGKILL)
        self.assertTrue(os.path.exists(marker))
        wait_for(lambda: not os.path.exists("/proc/%d/status" % pinger) or
                 "State:\tZ" in open("/proc/%d/status" % pinger).read(), 10, "the ping process to die")
        self.assertEqual(self.srv.calls_of("job-done", "j-x"), [])
        # a second worker runs the same input (the marker exists now) to the end
        with self.srv.lock:
            self.srv.held.pop("j-x", None)
        self.worker(worker_id="w-2")
        self.srv.submit("j-x", {"exit": marker, "echo": "second"})
        self.assertEqual(self.final("j-x").json(), {"output": "second"})


if __name__ == "__main__":
    unittest.main()
