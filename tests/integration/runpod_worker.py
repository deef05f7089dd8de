#!/usr/bin/env python3
"""A RunPod handler worker for the tests, speaking the worker protocol the way
runpod-python 1.12.0 does (runpod/serverless/: worker.py, modules/rp_scale.py, rp_job.py,
rp_http.py, rp_ping.py, rp_progress.py, worker_state.py), with the standard library only.
RunPod's SDK itself cannot be installed here (see docs and the protocol reference).

What it takes from its environment, as the SDK does:

  RUNPOD_WEBHOOK_GET_JOB      take URL; "$ID" replaced with the worker id
  RUNPOD_WEBHOOK_POST_OUTPUT  result URL; "$RUNPOD_POD_ID" at start, "$ID" per job
  RUNPOD_WEBHOOK_POST_STREAM  stream URL; same substitutions
  RUNPOD_WEBHOOK_PING         ping URL; "$RUNPOD_POD_ID" replaced
  RUNPOD_POD_ID               the worker id (else a random one, and no pings)
  RUNPOD_AI_API_KEY           sent verbatim as "Authorization: <key>" (else no pings)
  RUNPOD_PING_INTERVAL        ms, integer-divided by 1000 (default 10000)

and, for the tests:

  TEST_CONCURRENCY  jobs run at once (the SDK's concurrency_modifier; default 1). While more
                    than one slot is free the take goes to /job-take-batch/ with
                    &batch_size=<free slots>, as the SDK does.
  TEST_RECORD_FILE  when set, one line per result, stream or progress post is appended:
                    "WORKER_ID PID KIND JOB_ID HTTP_STATUS|error UNIX_MS"
                    (KIND: result, stream, progress).

Calls, as the SDK makes them:
  take    GET {GET_JOB}[&batch_size=N]&job_in_progress=0|1, client timeout 90 s. 200 with a
          JSON job (a list for batch; Content-Type must be application/json, else ignored),
          204/400 none: take again at once; 429: pause 5 s; anything else: take again at
          once (after 50 ms here, a floor the SDK lacks, so that a broken or absent server
          does not make the tests burn a CPU). While every slot is busy the SDK sleeps 1 s
          before it looks again; this worker takes again as soon as a slot frees (at most
          1 s), so that latency measured through it is the platform's.
  result  POST {POST_OUTPUT with $ID}&isStream=false|true, JSON body sent with
          Content-Type: application/x-www-form-urlencoded; a 5xx is sent again after 2 s and
          after 3 s more; a 4xx or a connection error drops it.
  stream  POST {POST_STREAM with $ID}&isStream=false, body {"output": chunk}, one per chunk.
  stop    GET of the take URL with /job-take/ -> /job-stop/, long-polled (90 s); each id in
          "jobsToStop" that this worker runs is stopped: nothing is posted for it.
  ping    GET {PING}&job_id=a%2Cb&runpod_version=1.12.0 every interval from a separate
          process (no job_id while idle; the list percent-encoded as requests encodes it).
  The job id of the latest result post stays on later requests as X-Request-ID (the SDK's
  session header leaks that way).

The handler's behaviour comes from the job's input, an object (anything else is echoed):
  {"exit": true}            kills its own process group (SIGKILL) at once, mid-job
  {"exit": "PATH"}          the same unless PATH exists; creates PATH first (dies once)
  {"progress": [p, ...]}    progress_update(job, p) for each, as the SDK posts it (a thread
                            each, to the result URL: {"status": "IN_PROGRESS", "output": p})
  {"gate": "PATH"}          waits until PATH exists (stoppable)
  {"sleep": S}              sleeps S seconds (stoppable)
  {"stream": [a, b, ...]}   a generator handler: yields each (sleeping "interval" seconds
                            between them when given); the aggregate [a, b, ...] is the
                            final result (return_aggregate_stream); with "raise" it raises
                            after the chunks
  {"raise": "msg"}          raises RuntimeError(msg)
  {"error": "msg"}          returns {"error": msg, "note": "returned"}
  {"refresh": true}         returns {"refresh_worker": true, "echo": <echo>} (stopPod)
  {"echo": x}               returns x
  {}                        returns {} (a result body without "output")
Those are applied in that order (progress, gate and sleep before the rest).

Lines on stdout (read by the tests through the logs API):
  "worker WID concurrency N", "take JID", "done JID STATUS" (STATUS: the HTTP status of the
  final post, or "error"), "stop JID" (a job of this worker stopped), "stop-unknown JID",
  "exit JID", "shutdown on signal N", "worker WID exits".

SIGTERM or SIGINT (JobScaler.handle_shutdown): no new take after the one under way, the jobs
taken run to the end and post their results, then the worker exits 0.
"""

import gzip
import http.client
import json
import multiprocessing
import os
import platform
import select
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib

RUNPOD_VERSION = "1.12.0"

WORKER_ID = os.environ.get("RUNPOD_POD_ID", str(uuid.uuid4()))
JOB_GET_URL = str(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")).replace("$ID", WORKER_ID)
JOB_DONE_URL = str(os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT", "JOB_DONE_URL")).replace(
    "$RUNPOD_POD_ID", WORKER_ID)
JOB_STREAM_URL = str(os.environ.get("RUNPOD_WEBHOOK_POST_STREAM", "JOB_STREAM_URL")).replace(
    "$RUNPOD_POD_ID", WORKER_ID)
PING_URL = os.environ.get("RUNPOD_WEBHOOK_PING", "PING_NOT_SET").replace("$RUNPOD_POD_ID", WORKER_ID)
PING_INTERVAL = int(os.environ.get("RUNPOD_PING_INTERVAL", 10000)) // 1000
API_KEY = os.getenv("RUNPOD_AI_API_KEY", "")
CONCURRENCY = max(1, int(os.environ.get("TEST_CONCURRENCY") or 1))
RECORD_FILE = os.environ.get("TEST_RECORD_FILE", "")

USER_AGENT = "RunPod-Python-SDK/%s (%s %s; %s) Language/Python %s" % (
    RUNPOD_VERSION, platform.system(), platform.release(), platform.machine(),
    platform.python_version())

TAKE_TIMEOUT_S = 90  # JobScaler.jobs_fetcher_timeout
STOP_TIMEOUT_S = 90  # JobScaler.stop_signals_fetcher_timeout
POST_TIMEOUT_S = 600  # the session's ClientTimeout
ERROR_FLOOR_S = 0.05  # not in the SDK: keeps a failing take loop from spinning a CPU

_out_lock = threading.Lock()


def say(line):
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def record(kind, job_id, status):
    if not RECORD_FILE:
        return
    line = "%s %d %s %s %s %d\n" % (WORKER_ID, os.getpid(), kind, job_id, status, int(time.time() * 1000))
    fd = os.open(RECORD_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- HTTP


class HTTPStatusError(Exception):
    def __init__(self, status, body):
        super().__init__("HTTP %d: %r" % (status, body[:200]))
        self.status = status


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self):
        """The media type alone, lowercased (aiohttp's response.content_type)."""
        raw = self.headers.get("Content-Type") or "application/octet-stream"
        return raw.split(";", 1)[0].strip().lower()

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class Session:
    """Keep-alive connections with default headers, like the SDK's aiohttp session: a
    connection the server closed while idle is not used again."""

    def __init__(self, headers):
        self.headers = dict(headers)
        self._idle = []
        self._lock = threading.Lock()

    def _connection(self, host, port, timeout):
        with self._lock:
            while self._idle:
                key, conn = self._idle.pop()
                if key != (host, port):
                    conn.close()
                    continue
                readable, _, _ = select.select([conn.sock], [], [], 0)
                if readable:  # EOF (or stray bytes): the server is done with it
                    conn.close()
                    continue
                conn.sock.settimeout(timeout)
                return conn
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn

    def request(self, method, url, body=None, headers=None, timeout=POST_TIMEOUT_S):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http":
            raise ValueError("only http URLs are supported: %r" % url)
        host, port = parts.hostname, parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        hdrs = dict(self.headers)
        hdrs.update(headers or {})
        conn = self._connection(host, port, timeout)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()
            raise
        enc = (resp.headers.get("Content-Encoding") or "").lower()
        if enc == "gzip":
            data = gzip.decompress(data)
        elif enc == "deflate":
            data = zlib.decompress(data)
        if resp.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(((host, port), conn))
        return Answer(resp.status, resp.headers, data)


def sdk_session():
    """The session of runpod.http_client.AsyncClientSession (get_auth_header)."""
    return Session({
        "Content-Type": "application/json",
        "Authorization": API_KEY,
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "gzip, deflate",
    })


# --------------------------------------------------------------------------- job state


class Stopped(BaseException):
    """Raised inside a handler whose job was stopped (the SDK cancels its task)."""


class JobsProgress:
    """The jobs this worker holds (worker_state.JobsProgress), mirrored into shared memory
    for the ping process (worker_state.PingJobMirror)."""

    def __init__(self, mirror):
        self._lock = threading.Lock()
        self._jobs = {}  # id -> threading.Event (set: stop it)
        self._order = []
        self._mirror = mirror
        self._changed = threading.Condition(self._lock)

    def _notify(self):
        data = ",".join(self._order).encode()[:65535]
        with self._mirror.get_lock():
            self._mirror.value = data
        self._changed.notify_all()

    def add(self, job_id):
        with self._lock:
            if job_id not in self._jobs:
                self._jobs[job_id] = threading.Event()
                self._order.append(job_id)
            self._notify()
            return self._jobs[job_id]

    def remove(self, job_id):
        with self._lock:
            if self._jobs.pop(job_id, None) is not None:
                self._order.remove(job_id)
            self._notify()

    def stop(self, job_id):
        with self._lock:
            ev = self._jobs.get(job_id)
        if ev is None:
            return False
        ev.set()
        return True

    def count(self):
        with self._lock:
            return len(self._jobs)

    def wait_empty(self):
        with self._lock:
            self._changed.wait_for(lambda: not self._jobs)

    def wait_below(self, limit, timeout):
        with self._lock:
            self._changed.wait_for(lambda: len(self._jobs) < limit, timeout)


# --------------------------------------------------------------------------- posting


def _transmit(session, url, job_data, job_id, kind):
    """rp_http._transmit: retried after 2 s and 3 s on a 5xx (FibonacciRetry(attempts=3));
    raise_for_status, so a 4xx ends it. Returns the last status (or "error")."""
    body = json.dumps(job_data, ensure_ascii=False).encode("utf-8")
    headers = {"charset": "utf-8", "Content-Type": "application/x-www-form-urlencoded"}
    status = "error"
    for attempt, delay in enumerate((2, 3, None)):
        try:
            answer = session.request("POST", url, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as err:
            say("post %s %s failed: %s" % (kind, job_id, err))
            status = "error"
            break
        status = answer.status
        if answer.status < 500 or delay is None:
            break
        time.sleep(delay)
    record(kind, job_id, status)
    return status


def _handle_result(session, job_data, job, url_template, kind, is_stream=False):
    """rp_http._handle_result."""
    session.headers["X-Request-ID"] = job["id"]
    url = url_template.replace("$ID", job["id"]) + "&isStream=%s" % ("true" if is_stream else "false")
    try:
        return _transmit(session, url, job_data, job["id"], kind)
    except (TypeError, ValueError) as err:
        say("post %s %s not sent: %s" % (kind, job["id"], err))
        return "error"


def progress_update(job, progress):
    """rp_progress.progress_update: a thread with a session of its own."""
    def target():
        _handle_result(sdk_session(), {"status": "IN_PROGRESS", "output": progress}, job,
                       JOB_DONE_URL, "progress")
    threading.Thread(target=target, daemon=True).start()


# --------------------------------------------------------------------------- the handler


def _wait(stop, seconds=None, path=None):
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        if stop.is_set():
            raise Stopped()
        if path is not None and os.path.exists(path):
            return
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(left, 0.02))
        else:
            stop.wait(0.02)


def die(job_id):
    say("exit %s" % job_id)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    # Not a group leader (started by hand): take the ping process along, then go.
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(137)


def prelude(job, stop):
    inp = job.get("input")
    if not isinstance(inp, dict):
        return inp
    ex = inp.get("exit")
    if ex is True:
        die(job["id"])
    if isinstance(ex, str) and ex:
        try:
            fd = os.open(ex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            die(job["id"])
    for p in inp.get("progress") or []:
        progress_update(job, p)
    if isinstance(inp.get("gate"), str):
        _wait(stop, path=inp["gate"])
    if isinstance(inp.get("sleep"), (int, float)):
        _wait(stop, seconds=float(inp["sleep"]))
    return inp


def handler(job, stop):
    inp = prelude(job, stop)
    if not isinstance(inp, dict):
        return inp
    if "raise" in inp:
        raise RuntimeError(str(inp["raise"]))
    if "error" in inp:
        return {"error": inp["error"], "note": "returned"}
    if inp.get("refresh"):
        return {"refresh_worker": True, "echo": inp.get("echo")}
    if "echo" in inp:
        return inp["echo"]
    return {}


def generator_handler(job, stop):
    inp = prelude(job, stop)
    interval = inp.get("interval")
    for i, chunk in enumerate(inp["stream"]):
        if i and isinstance(interval, (int, float)):
            _wait(stop, seconds=float(interval))
        yield chunk
    if "raise" in inp:
        raise RuntimeError(str(inp["raise"]))


def is_stream_job(job):
    inp = job.get("input")
    return isinstance(inp, dict) and isinstance(inp.get("stream"), list)


def run_job(job, stop):
    """rp_job.run_job."""
    run_result = {}
    try:
        job_output = handler(job, stop)
        if isinstance(job_output, dict):
            error_msg = job_output.pop("error", None)
            refresh_worker = job_output.pop("refresh_worker", None)
            run_result["output"] = job_output
            if error_msg:
                run_result["error"] = error_msg
            if refresh_worker:
                run_result["stopPod"] = True
        else:
            run_result = {"output": job_output}
        if run_result.get("output") == {}:
            run_result.pop("output")
    except Exception as err:  # noqa: BLE001 - the SDK's exception payload
        error_info = {
            "error_type": str(type(err)),
            "error_message": str(err),
            "error_traceback": traceback.format_exc(),
            "hostname": os.environ.get("RUNPOD_POD_HOSTNAME", "unknown"),
            "worker_id": os.environ.get("RUNPOD_POD_ID", "unknown"),
            "runpod_version": RUNPOD_VERSION,
        }
        run_result = {"error": json.dumps(error_info)}
    return run_result


def handle_job(session, job, stop):
    """rp_job.handle_job (return_aggregate_stream on for generator handlers)."""
    if is_stream_job(job):
        is_stream = True
        job_result = {"output": []}
        try:
            for partial in generator_handler(job, stop):
                stream_output = {"output": partial}
                if isinstance(partial, dict) and partial.get("error"):
                    stream_output = {"error": str(partial["error"])}
                if stream_output.get("error"):
                    job_result = stream_output
                    break
                job_result["output"].append(partial)
                _handle_result(session, stream_output, job, JOB_STREAM_URL, "stream")
        except Exception as err:  # noqa: BLE001 - run_job_generator's error chunk
            job_result = {"error": "handler: %s \ntraceback: %s" % (err, traceback.format_exc())}
    else:
        is_stream = False
        job_result = run_job(job, stop)
    return _handle_result(session, job_result, job, JOB_DONE_URL, "result", is_stream=is_stream)


# --------------------------------------------------------------------------- loops


class Worker:
    def __init__(self, progress):
        self.session = sdk_session()
        self.progress = progress
        self.shutting_down = threading.Event()

    # ---- take (JobScaler.get_jobs, rp_job.get_job)

    def take_url(self, batch_size):
        if batch_size > 1:
            url = JOB_GET_URL.replace("/job-take/", "/job-take-batch/") + "&batch_size=%d" % batch_size
        else:
            url = JOB_GET_URL
        return url + "&job_in_progress=%s" % ("1" if self.progress.count() else "0")

    def get_job(self, num_jobs):
        answer = self.session.request("GET", self.take_url(num_jobs), timeout=TAKE_TIMEOUT_S)
        if answer.status in (204, 400):
            return None
        if answer.status == 429:
            raise TooManyRequests()
        if answer.status >= 400:
            raise HTTPStatusError(answer.status, answer.body)
        if answer.content_type != "application/json":
            say("take: unexpected content type %s" % answer.content_type)
            return None
        if not answer.body:
            return None
        try:
            jobs = answer.json()
        except ValueError as err:
            say("take: not JSON: %s" % err)
            return None
        if isinstance(jobs, dict):
            if "id" not in jobs or "input" not in jobs:
                raise ValueError("Job has missing field(s): id or input.")
            return [jobs]
        if isinstance(jobs, list):
            return jobs
        return None

    def take_loop(self):
        while not self.shutting_down.is_set():
            needed = CONCURRENCY - self.progress.count()
            if needed <= 0:
                # The SDK sleeps 1 s here; this wakes as soon as a slot frees.
                self.progress.wait_below(CONCURRENCY, 1.0)
                continue
            try:
                jobs = self.get_job(needed)
            except TooManyRequests:
                say("take: 429, pausing 5 s")
                time.sleep(5)
                continue
            except (OSError, http.client.HTTPException, HTTPStatusError, ValueError) as err:
                say("take failed: %s" % err)
                time.sleep(ERROR_FLOOR_S)
                continue
            for job in jobs or []:
                if not isinstance(job, dict) or "id" not in job:
                    say("take: not a job: %r" % (job,))
                    continue
                stop = self.progress.add(job["id"])
                say("take %s" % job["id"])
                threading.Thread(target=self.run_one, args=(job, stop), daemon=True).start()

    def run_one(self, job, stop):
        try:
            status = handle_job(self.session, job, stop)
            say("done %s %s" % (job["id"], status))
        except Stopped:
            say("stop %s" % job["id"])
        except Exception as err:  # noqa: BLE001 - logged as the SDK logs it
            say("error handling job %s: %s" % (job["id"], err))
        finally:
            self.progress.remove(job["id"])

    # ---- stop (JobScaler.monitor_stop_signals, rp_job.get_stop_signals)

    def stop_url(self):
        if "/job-take/" not in JOB_GET_URL:
            return None
        return JOB_GET_URL.replace("/job-take/", "/job-stop/")

    def get_stop_signals(self):
        answer = self.session.request("GET", self.stop_url(), timeout=STOP_TIMEOUT_S)
        if answer.status == 204:
            return []
        if answer.status == 429:
            raise TooManyRequests()
        if answer.status >= 400:
            raise HTTPStatusError(answer.status, answer.body)
        if answer.content_type != "application/json":
            say("stop poll: unexpected content type %s" % answer.content_type)
            return []
        try:
            payload = answer.json()
        except ValueError:
            return []
        if not isinstance(payload, dict):
            return []
        raw = payload.get("jobsToStop", [])
        if not isinstance(raw, list):
            return []
        return [j for j in raw if isinstance(j, str)]

    def stop_loop(self):
        if self.stop_url() is None:
            say("stop channel cannot be derived from the take URL; per-job stop is off")
            return
        while True:
            try:
                ids = self.get_stop_signals()
                for job_id in ids:
                    if not self.progress.stop(job_id):
                        say("stop-unknown %s" % job_id)
                if not ids:
                    time.sleep(1)  # the SDK's floor
            except TooManyRequests:
                time.sleep(5)
            except (OSError, http.client.HTTPException, HTTPStatusError) as err:
                say("stop poll failed: %s" % err)
                time.sleep(1)


class TooManyRequests(Exception):
    pass


# --------------------------------------------------------------------------- ping


def ping_loop(mirror, parent):
    """rp_ping.Heartbeat.ping_loop, in its own process. It ends when the worker process is
    gone (the SDK's would outlive a killed worker)."""
    session = Session({"Authorization": API_KEY, "User-Agent": "python-requests/2.32.3",
                       "Accept-Encoding": "gzip, deflate", "Accept": "*/*"})
    while os.getppid() == parent:
        with mirror.get_lock():
            job_ids = mirror.value.decode("utf-8") or None
        params = [("job_id", job_ids)] if job_ids else []
        params.append(("runpod_version", RUNPOD_VERSION))
        url = PING_URL + ("&" if "?" in PING_URL else "?") + urllib.parse.urlencode(params)
        for attempt in range(4):  # urllib3 Retry(total=3) on 429 and 5xx
            try:
                answer = session.request("GET", url, timeout=max(PING_INTERVAL * 2, 1))
            except (OSError, http.client.HTTPException) as err:
                sys.stderr.write("ping failed: %s\n" % err)
                break
            if answer.status not in (429, 500, 502, 503, 504) or attempt == 3:
                break
            time.sleep(2 ** attempt)
        time.sleep(PING_INTERVAL)


def start_ping(mirror):
    """Heartbeat.start_ping: no key or no pod id, no pings."""
    if not API_KEY or not os.environ.get("RUNPOD_POD_ID") or PING_URL in ("", "PING_NOT_SET"):
        say("pings off")
        return None
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=ping_loop, args=(mirror, os.getpid()), daemon=True)
    proc.start()
    return proc


def main():
    if os.environ.get("RUNPOD_WEBHOOK_GET_JOB") is None:
        sys.stderr.write("RUNPOD_WEBHOOK_GET_JOB is not set (the SDK's local test mode)\n")
        return 2
    mirror = multiprocessing.get_context("fork").Array("c", 65536)
    ping = start_ping(mirror)  # before any thread, as the SDK forks it first
    say("worker %s concurrency %d ping %s" % (WORKER_ID, CONCURRENCY, ping.pid if ping else "-"))
    worker = Worker(JobsProgress(mirror))

    def shutdown(signum, frame):
        # JobScaler.handle_shutdown: no take after the one under way; the jobs taken run
        # to the end and post their results, then the worker exits.
        say("shutdown on signal %d" % signum)
        worker.shutting_down.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    threading.Thread(target=worker.stop_loop, daemon=True).start()
    worker.take_loop()
    worker.progress.wait_empty()
    if ping is not None and ping.is_alive():
        ping.kill()
    say("worker %s exits" % WORKER_ID)
    return 0


if __name__ == "__main__":
    sys.exit(main())
