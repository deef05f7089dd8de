"""Harness for the sgpu integration tests.

The tests drive the real binaries (sgpud, sgpu, tests/test-worker) over HTTP; nothing is
mocked. Binaries are looked up in $SGPU_BUILD_DIR (default <repo>/build).

Every timeout in the suite goes through scaled(): it is multiplied by
$SGPU_TEST_TIMEOUT_SCALE (default 1), so the same suite runs under ASan (about 3x
slower) with SGPU_TEST_TIMEOUT_SCALE=3.

Workers started for a test carry a marker in their environment (SGPU_IT_RUN for the
whole run, SGPU_IT_OWNER for one daemon), so that a worker left behind by a
misbehaving daemon can be found through /proc and killed without touching any other
process on the machine.
"""

import atexit
import collections
import copy
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD_DIR = os.path.abspath(os.environ.get("SGPU_BUILD_DIR") or os.path.join(REPO, "build"))


def _scale_from_env():
    raw = os.environ.get("SGPU_TEST_TIMEOUT_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        sys.stderr.write("SGPU_TEST_TIMEOUT_SCALE=%r is not a number; using 1\n" % raw)
        return 1.0
    return value if value > 0 else 1.0


SCALE = _scale_from_env()
KEEP_TMP = os.environ.get("SGPU_KEEP_TMP", "") not in ("", "0")
LOG_LEVEL = os.environ.get("SGPU_TEST_LOG_LEVEL", "info")
RUN_ID = "%d-%s" % (os.getpid(), secrets.token_hex(4))

#: states of a worker that still holds (or is about to hold) a process
ACTIVE_STATES = ("starting", "ready", "draining")


def scaled(seconds):
    """Return `seconds` multiplied by SGPU_TEST_TIMEOUT_SCALE."""
    return seconds * SCALE


def _find_binary(name, extra):
    candidates = [os.path.join(BUILD_DIR, name)] + [os.path.join(BUILD_DIR, p) for p in extra]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return candidates[0]


def _usable_by_others(path, mode):
    """True when a user other than path's owner (and not in its group) can use
    path: every directory above it searchable, the file itself `mode` (0o5: r-x)."""
    real = os.path.realpath(path)
    try:
        if os.stat(real).st_mode & mode != mode:
            return False
        d = os.path.dirname(real)
        while True:
            if not os.stat(d).st_mode & 0o001:
                return False
            if d == "/":
                return True
            d = os.path.dirname(d)
    except OSError:
        return False


_shared_bin = []


def worker_path(path):
    """A path to `path` that process workers can execute. sgpud run as root runs
    them as an unprivileged user (run_as): a build or checkout beneath a private
    directory (/root/...) is copied once into a world-readable temporary one."""
    if os.geteuid() != 0 or not os.path.exists(path) or _usable_by_others(path, 0o005):
        return path
    if not _shared_bin:
        d = tempfile.mkdtemp(prefix="sgpu-it-bin-")
        os.chmod(d, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _shared_bin.append(d)
    copy = os.path.join(_shared_bin[0], os.path.basename(path))
    if not os.path.exists(copy):
        shutil.copy2(path, copy)
        os.chmod(copy, 0o755)
    return copy


SGPUD = _find_binary("sgpud", ["src/sgpud/sgpud"])
SGPU = _find_binary("sgpu", ["src/sgpu/sgpu"])
#: the worker fixture (tests/fixtures/test-worker.c), built as build/tests/test-worker
ECHO_WORKER = worker_path(_find_binary("tests/test-worker", []))
#: a Python interpreter that process workers can run (see worker_path)
WORKER_PYTHON = (sys.executable if os.geteuid() != 0 or _usable_by_others(sys.executable, 0o005)
                 else shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable)


def require_binaries(*paths):
    missing = [p for p in paths if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        raise AssertionError(
            "binary not found: %s (build first, or set SGPU_BUILD_DIR)" % ", ".join(missing))


# --------------------------------------------------------------------------- processes

def pid_alive(pid):
    """True when `pid` names a live process (zombies count as dead)."""
    if not pid:
        return False
    try:
        with open("/proc/%d/stat" % int(pid)) as f:
            data = f.read()
    except OSError:
        return False
    try:
        state = data.rsplit(")", 1)[1].split()[0]
    except IndexError:
        return True
    return state not in ("Z", "X", "x")


def pids_with_env(key, value):
    """PIDs of processes whose environment holds KEY=VALUE exactly."""
    needle = ("%s=%s" % (key, value)).encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- waiting

class WaitTimeout(AssertionError):
    pass


def wait_for(predicate, timeout, interval=0.05, message=None, ignore_errors=False):
    """Poll `predicate` until it returns a truthy value and return that value.

    `timeout` is in seconds and is scaled by SGPU_TEST_TIMEOUT_SCALE. On timeout an
    AssertionError names `message` and the last value (or exception) seen.
    With `ignore_errors`, exceptions from the predicate count as a falsy answer.
    """
    deadline = time.monotonic() + scaled(timeout)
    last = None
    while True:
        try:
            value = predicate()
        except Exception as e:  # noqa: BLE001 - reported below
            if not ignore_errors:
                raise
            value, last = None, e
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout("timed out after %.1fs waiting for %s (last: %r)"
                              % (scaled(timeout), message or getattr(predicate, "__name__", "condition"), last))
        time.sleep(interval)


# --------------------------------------------------------------------------- specs

def _merge(base, overrides):
    for key, value in overrides.items():
        if value is DELETE:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class _Delete:
    def __repr__(self):
        return "DELETE"


#: use as an override value to drop a key from a spec: echo_spec("x", health=DELETE)
DELETE = _Delete()


def echo_spec(name, args=(), /, **overrides):
    """An endpoint spec running build/tests/test-worker with the process runtime.

    Keyword overrides are merged into the spec (dicts deep-merged, DELETE drops a key),
    e.g. echo_spec("e1", workers={"max": 2}, env={"DELAY_MS": "100"}).
    `args` are appended to the worker's command line.
    """
    spec = {
        "name": name,
        "runtime": "process",
        "command": [ECHO_WORKER] + [str(a) for a in args],
        "env": {"MODEL": "tiny", "SGPU_IT_RUN": RUN_ID},
        "health": {"path": "/health"},
        "workers": {"min": 0, "max": 2, "idle_timeout_s": 30},
    }
    return _merge(spec, overrides)


_name_counter = [0]


def unique_name(prefix):
    """A DNS-label endpoint name unique within this run."""
    _name_counter[0] += 1
    return ("%s-%d" % (prefix, _name_counter[0]))[:63].lower()


# --------------------------------------------------------------------------- HTTP

Response = collections.namedtuple("Response", "status headers body")

_DEFAULT = object()


def _encode_body(body, headers):
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return json.dumps(body).encode()


def http_request(port, method, path, body=None, headers=None, raw=False, timeout=30):
    """One HTTP/1.1 request on a fresh connection; returns Response(status, headers, body).

    body: dict/list (sent as JSON), str or bytes. The answer is parsed as JSON unless
    `raw` (bytes are returned when it is not JSON). A server that answers and closes
    before reading the whole request body (e.g. 413) is tolerated.
    """
    headers = dict(headers or {})
    data = _encode_body(body, headers)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(timeout))
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        elif method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        if data:
            try:
                view = memoryview(data)
                for off in range(0, len(view), 65536):
                    conn.sock.sendall(view[off:off + 65536])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early; read its answer below
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, resp.headers, payload if raw else _maybe_json(payload))
    finally:
        conn.close()


def _maybe_json(payload):
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload


class Stream:
    """An HTTP request whose answer is read incrementally (SSE, NDJSON follow).

    .status and .headers are set once the answer's head has arrived; readline() and
    read_some() give the body as it comes (chunked framing removed).
    """

    def __init__(self, port, method, path, headers=None, body=None, timeout=30):
        headers = dict(headers or {})
        data = _encode_body(body, headers)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(timeout))
        self.conn.request(method, path, body=data, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.buf = b""
        self.eof = False

    def read_some(self, timeout=10):
        """Bytes available now (blocking up to `timeout` scaled); b'' at end of stream."""
        if self.eof:
            return b""
        self.conn.sock.settimeout(scaled(timeout))
        data = self.resp.read1(65536)
        if not data:
            self.eof = True
        return data

    def readline(self, timeout=10):
        """Next line (bytes, without the newline), or None at end of stream.

        Raises TimeoutError (socket.timeout) when no full line comes within `timeout`.
        """
        deadline = time.monotonic() + scaled(timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no line within %.1fs" % scaled(timeout))
            data = self.read_some(left / SCALE)
            if not data:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def read_all(self, timeout=30):
        out = [self.buf]
        self.buf = b""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("stream did not end within %.1fs" % scaled(timeout))
            data = self.read_some(left / SCALE)
            if not data:
                return b"".join(out)
            out.append(data)

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- sgpud

_live_daemons = set()


# Lines that a sanitizer, a crash or a store call on the loop thread (debug builds)
# leaves in sgpud's log.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer", "Segmentation fault",
                   "must not run on the event loop thread")


class SgpudError(AssertionError):
    pass


class Sgpud:
    """One real sgpud on a free loopback port with its own data dir.

    start() waits for /healthz and reads the admin key; restart() keeps the data dir;
    stop() sends SIGTERM then SIGKILL; close() also kills workers left behind by this
    daemon and removes the temporary directory (kept with SGPU_KEEP_TMP=1).
    """

    def __init__(self, gpus=None, config=None, args=(), data_dir=None, env=None, log_level=None):
        require_binaries(SGPUD)
        self.tmp = tempfile.mkdtemp(prefix="sgpu-it-")
        # Traversable (not listable): containers in a user namespace reach their
        # bundles in the data dir from inside it, as on a usual install.
        os.chmod(self.tmp, 0o711)
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.gpus = gpus
        self.config = config
        self.args = list(args)
        self.env = env
        self.log_level = log_level or LOG_LEVEL
        self.owner = "%s-%s" % (RUN_ID, secrets.token_hex(3))
        self.proc = None
        self.port = None
        self.key = None
        self.log_paths = []
        self.starts = 0
        self.closed = False
        self._final_log = None
        _live_daemons.add(self)

    # ---- lifecycle

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def command_line(self):
        cmd = [SGPUD, "--listen", "127.0.0.1:%d" % self.port, "--data-dir", self.data_dir]
        if self.gpus:
            cmd += ["--gpus", self.gpus]
        if self.config:
            cmd += ["--config", self.config]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        return cmd + self.args

    def start(self, timeout=20, port=None):
        """Start sgpud on `port` (default: a free one) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise SgpudError("sgpud already running")
        self.port = port or free_port()
        self.starts += 1
        log_path = os.path.join(self.tmp, "sgpud-%d.log" % self.starts)
        self.log_paths.append(log_path)
        env = dict(os.environ)
        env.update(self.env or {})
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + scaled(timeout)
        while True:
            code = self.proc.poll()
            if code is not None:
                raise SgpudError("sgpud exited with status %s during startup: %s\n%s"
                                 % (code, " ".join(self.command_line()), self.log_tail()))
            try:
                if http_request(self.port, "GET", "/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SgpudError("sgpud did not answer /healthz within %.0fs\n%s"
                                 % (scaled(timeout), self.log_tail()))
            time.sleep(0.05)
        key_path = os.path.join(self.data_dir, "admin.key")
        wait_for(lambda: os.path.exists(key_path) and os.path.getsize(key_path) > 0, 5,
                 message="admin.key in %s" % self.data_dir)
        with open(key_path) as f:
            self.key = f.read().strip()
        return self

    def stop(self, timeout=15, sig=signal.SIGTERM):
        """Stop sgpud with `sig` (SIGKILL after `timeout`); returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                sys.stderr.write("sgpud (pid %d) ignored %s for %.0fs; killed\n"
                                 % (self.proc.pid, signal.Signals(sig).name, scaled(timeout)))
        return self.proc.returncode

    def kill(self):
        """SIGKILL sgpud (no chance to clean up); returns its exit status."""
        return self.stop(sig=signal.SIGKILL)

    def restart(self, sig=signal.SIGTERM, timeout=20):
        """Stop sgpud and start it again on the same data dir (a new port)."""
        self.stop(sig=sig)
        return self.start(timeout=timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def leftover_workers(self):
        return sorted(set(pids_with_env("SGPU_IT_OWNER", self.owner)))

    def close(self):
        """Stops sgpud and cleans up; raises SgpudError when its log holds a
        sanitizer report or a crash, so that no test passes over one."""
        if self.closed:
            return
        try:
            self.stop()
        finally:
            kill_pids(self.leftover_workers())
            self._final_log = self.log_text()
            self.closed = True
            _live_daemons.discard(self)
            if not KEEP_TMP:
                shutil.rmtree(self.tmp, ignore_errors=True)
        marks = [m for m in SANITIZER_MARKS if m in self._final_log]
        if marks:
            at = min(self._final_log.index(m) for m in marks)
            raise SgpudError("sgpud's log holds %s:\n%s" % (", ".join(marks), self._final_log[at:at + 6000]))

    # ---- logs of sgpud itself

    def log_text(self):
        if self._final_log is not None:
            return self._final_log
        parts = []
        for i, path in enumerate(self.log_paths):
            try:
                with open(path, "rb") as f:
                    data = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            if len(self.log_paths) > 1:
                parts.append("=== sgpud start #%d ===\n" % (i + 1))
            parts.append(data)
        return "".join(parts)

    def log_size(self):
        return len(self.log_text())

    def log_tail(self, lines=150, since=0):
        text = self.log_text()[since:]
        tail = text.splitlines()[-lines:]
        return "\n".join(tail)

    # ---- HTTP

    def api(self, method, path, body=None, key=_DEFAULT, raw=False, headers=None, timeout=30):
        """Request to sgpud. key: the admin key by default, None for no Authorization
        header, or another string. Returns Response(status, headers, json-or-bytes)."""
        hdrs = {}
        if key is _DEFAULT:
            key = self.key
        if key is not None:
            hdrs["Authorization"] = "Bearer %s" % key
        hdrs.update(headers or {})
        return http_request(self.port, method, path, body=body, headers=hdrs, raw=raw,
                            timeout=timeout)

    def invoke(self, name, path="/", method=None, body=None, key=_DEFAULT, raw=False,
               headers=None, timeout=30):
        """Invocation through the gateway: METHOD /e/NAME/PATH (GET without a body,
        POST with one)."""
        if method is None:
            method = "GET" if body is None else "POST"
        return self.api(method, "/e/%s/%s" % (name, path.lstrip("/")), body=body, key=key,
                        raw=raw, headers=headers, timeout=timeout)

    def stream(self, method, path, headers=None, body=None, key=_DEFAULT, timeout=30):
        hdrs = {}
        if key is _DEFAULT:
            key = self.key
        if key is not None:
            hdrs["Authorization"] = "Bearer %s" % key
        hdrs.update(headers or {})
        return Stream(self.port, method, path, headers=hdrs, body=body, timeout=timeout)

    # ---- control-plane shortcuts (they assert the expected status)

    def _expect(self, resp, status, what):
        if resp.status != status:
            raise AssertionError("%s: expected HTTP %d, got %d: %r"
                                 % (what, status, resp.status, resp.body))
        return resp.body

    def create(self, spec):
        """POST /v1/endpoints (expects 201). Marks the spec's workers as this daemon's."""
        spec = copy.deepcopy(spec)
        if isinstance(spec.get("env"), dict) and "SGPU_IT_RUN" in spec["env"]:
            spec["env"]["SGPU_IT_OWNER"] = self.owner
        return self._expect(self.api("POST", "/v1/endpoints", spec), 201,
                            "create %s" % spec.get("name"))

    def update(self, name, spec):
        spec = copy.deepcopy(spec)
        if isinstance(spec.get("env"), dict) and "SGPU_IT_RUN" in spec["env"]:
            spec["env"]["SGPU_IT_OWNER"] = self.owner
        return self._expect(self.api("PUT", "/v1/endpoints/%s" % name, spec), 200,
                            "update %s" % name)

    def get(self, name):
        return self._expect(self.api("GET", "/v1/endpoints/%s" % name), 200, "get %s" % name)

    def status(self, name):
        return self.get(name)["status"]

    def delete(self, name):
        return self._expect(self.api("DELETE", "/v1/endpoints/%s" % name), 200,
                            "delete %s" % name)

    def try_delete(self, name):
        """Delete an endpoint if sgpud is still up; never raises."""
        if not self.alive():
            return
        try:
            self.api("DELETE", "/v1/endpoints/%s" % name, timeout=10)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass

    def list_names(self):
        body = self._expect(self.api("GET", "/v1/endpoints"), 200, "list endpoints")
        return sorted(e["name"] for e in body["endpoints"])

    def workers(self, name):
        body = self._expect(self.api("GET", "/v1/endpoints/%s/workers" % name), 200,
                            "workers of %s" % name)
        return body["workers"]

    def active_workers(self, name):
        return [w for w in self.workers(name) if w.get("state") in ACTIVE_STATES]

    def ready_workers(self, name):
        return [w for w in self.workers(name) if w.get("state") == "ready"]

    def wait_ready(self, name, count=1, timeout=15):
        """Wait until `name` has at least `count` ready workers; returns them."""
        return wait_for(lambda: (lambda r: r if len(r) >= count else None)(self.ready_workers(name)),
                        timeout, message="%d ready worker(s) of %s" % (count, name))

    def nodes(self):
        return self._expect(self.api("GET", "/v1/nodes"), 200, "nodes")["nodes"]

    def logs(self, name, **params):
        """GET /v1/endpoints/NAME/logs as a list of parsed NDJSON objects."""
        qs = urllib.parse.urlencode(params)
        resp = self.api("GET", "/v1/endpoints/%s/logs%s" % (name, "?" + qs if qs else ""),
                        raw=True)
        self._expect(resp, 200, "logs of %s" % name)
        return parse_ndjson(resp.body)

    wait_for = staticmethod(wait_for)


def gpu_list(value):
    """GPU ids as a sorted list of ints, from a list or a "0,1" string (None -> [])."""
    if value is None:
        return []
    if isinstance(value, str):
        return sorted(int(v) for v in value.replace(" ", "").split(",") if v != "")
    return sorted(int(v) for v in value)


def parse_ndjson(data):
    out = []
    for line in data.splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


def _close_all():
    for sg in list(_live_daemons):
        try:
            sg.close()
        except Exception:  # noqa: BLE001
            pass
    kill_pids(pids_with_env("SGPU_IT_RUN", RUN_ID))


atexit.register(_close_all)


# --------------------------------------------------------------------------- test base

def error_of(resp):
    """The {"error": {...}} object of an answer, or {} when there is none."""
    body = resp.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return {}


RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class SgpudTestCase(unittest.TestCase):
    """Base class. Set SHARED = {...Sgpud kwargs...} to get one daemon per class
    (cls.sg); call self.start_sgpud() for a daemon of one test. When a test fails,
    the log of every daemon it used is written to stderr."""

    SHARED = None
    sg = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sg = None
        if cls.SHARED is not None:
            sg = Sgpud(**cls.SHARED)
            try:
                sg.start()
            except BaseException:
                sys.stderr.write(sg.log_tail() + "\n")
                sg.close()
                raise
            cls.sg = sg

    @classmethod
    def tearDownClass(cls):
        if cls.sg is not None:
            cls.sg.close()
            cls.sg = None
        super().tearDownClass()

    def start_sgpud(self, **kwargs):
        sg = Sgpud(**kwargs)
        self._daemons.append((sg, 0))
        self.addCleanup(sg.close)
        sg.start()
        return sg

    def create(self, spec, sg=None):
        """Create an endpoint (expects 201) and delete it when the test ends."""
        sg = sg or self.sg
        ep = sg.create(spec)
        self.addCleanup(sg.try_delete, spec["name"])
        return ep

    def run(self, result=None):
        self._daemons = []
        shared = type(self).sg
        if shared is not None:
            self._daemons.append((shared, shared.log_size()))
        before = len(result.failures) + len(result.errors) if result is not None else 0
        self._started = time.monotonic()
        out = super().run(result)
        if result is not None and len(result.failures) + len(result.errors) > before:
            for sg, since in self._daemons:
                text = sg.log_tail(200, since)
                sys.stderr.write("\n----- sgpud log for %s (data dir %s) -----\n%s\n"
                                 "----- end of sgpud log -----\n"
                                 % (self.id(), sg.data_dir, text))
                sys.stderr.flush()
        return out

    # ---- assertions

    def assertError(self, resp, status, code=None, field=None, msg=None):
        """Assert an error answer: HTTP status, error.code and (optionally) the field it
        names. `field` may be a string or a tuple of acceptable names; "command" also
        accepts "command[3]" or "command.3"."""
        ctx = "%s: got %d %r" % (msg or "", resp.status, resp.body)
        self.assertEqual(resp.status, status, ctx)
        err = error_of(resp)
        self.assertTrue(err, "answer has no {\"error\": {...}} object; " + ctx)
        self.assertIsInstance(err.get("message"), str, ctx)
        self.assertTrue(err.get("message"), "empty error message; " + ctx)
        if code is not None:
            self.assertEqual(err.get("code"), code, ctx)
        if field is not None:
            fields = (field,) if isinstance(field, str) else tuple(field)
            got = err.get("field")
            ok = isinstance(got, str) and any(
                got == f or got.startswith(f + ".") or got.startswith(f + "[") for f in fields)
            self.assertTrue(ok, "error.field should name %s; %s" % (" or ".join(fields), ctx))

    def assertOk(self, resp, status=200, msg=None):
        self.assertEqual(resp.status, status, "%s: got %d %r" % (msg or "", resp.status, resp.body))
        return resp.body

    wait_for = staticmethod(wait_for)


def run_concurrently(fn, args_list, max_workers=None):
    """Run fn(*args) for each args in threads; returns results in order (exceptions
    are returned, not raised)."""
    results = [None] * len(args_list)

    def runner(i, args):
        try:
            results[i] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - returned to the caller
            results[i] = e

    threads = [threading.Thread(target=runner, args=(i, a), daemon=True)
               for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class Background:
    """Run a callable in a thread; .result() joins it and returns (or raises)."""

    def __init__(self, fn, *args, **kwargs):
        self._value = None
        self._error = None
        self._started_at = time.monotonic()
        self.finished_at = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in result()
            self._error = e
        finally:
            self.finished_at = time.monotonic()

    def done(self):
        return not self._thread.is_alive()

    def result(self, timeout=60):
        self._thread.join(scaled(timeout))
        if self._thread.is_alive():
            raise AssertionError("background call still running after %.0fs" % scaled(timeout))
        if self._error is not None:
            raise self._error
        return self._value

    @property
    def elapsed(self):
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self._started_at
