"""The oci runtime with real images: the static echo worker built into an OCI image
with umoci, pushed with skopeo to docker-registry servers on 127.0.0.1, pulled and
run by sgpud through crun.

Skips (with the reason) only when containers cannot run here: not root, a tool
missing, or crun failing to run the image's own bundle."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from harness import (HERE, REPO, RUN_ID, SgpudTestCase, free_port, pid_alive, scaled,
                     unique_name, wait_for)

TOOLS = ("crun", "umoci", "skopeo", "docker-registry", "htpasswd", "cc")
USER, PASSWORD = "alice", "pw-%s-secret" % RUN_ID
IMAGE_SCRIPT = os.path.join(HERE, "oci-image.sh")


def _sh(*args, **kw):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kw)


class Registry:
    """docker-registry on a free loopback port (htpasswd auth when htpasswd is given)."""

    def __init__(self, root, htpasswd=None):
        self.root = root
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        os.makedirs(os.path.join(root, "data"), exist_ok=True)
        conf = ["version: 0.1", "log:", "  level: error", "storage:", "  filesystem:",
                "    rootdirectory: %s" % os.path.join(root, "data"), "  delete:", "    enabled: true",
                "http:", "  addr: %s" % self.addr]
        if htpasswd:
            conf += ["auth:", "  htpasswd:", "    realm: sgpu-test", "    path: %s" % htpasswd]
        self.conf = os.path.join(root, "config.yml")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = None

    def start(self):
        with open(os.path.join(self.root, "log"), "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", self.conf], stdout=subprocess.DEVNULL,
                                         stderr=log)
        import socket

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(up, 10, message="docker-registry on %s" % self.addr)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class TokenProxy:
    """A registry that wants bearer tokens: answers 401 with a Bearer challenge
    unless the request carries the token its /token endpoint hands out, and
    forwards everything else to a real registry. Counts token requests."""

    def __init__(self, upstream):
        import http.client
        import http.server
        import threading
        proxy = self
        self.token_requests = 0
        self.token = "tok-%s" % RUN_ID

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self, status, headers, body):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                if self.path.startswith("/token"):
                    proxy.token_requests += 1
                    body = json.dumps({"token": proxy.token}).encode()
                    return self._answer(200, [("Content-Type", "application/json")], body)
                if self.headers.get("Authorization") != "Bearer " + proxy.token:
                    ch = 'Bearer realm="http://%s/token",service="sgpu-test"' % proxy.addr
                    return self._answer(401, [("WWW-Authenticate", ch)], b"{}")
                c = http.client.HTTPConnection(upstream, timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() in ("accept",)}
                c.request(self.command, self.path, headers=hdrs)
                r = c.getresponse()
                body = r.read()
                keep = [(k, v) for k, v in r.getheaders()
                        if k.lower() not in ("content-length", "connection", "transfer-encoding")]
                c.close()
                if self.command == "HEAD":
                    keep.append(("Content-Length", r.getheader("Content-Length") or "0"))
                    self.send_response(r.status)
                    for k, v in keep:
                        self.send_header(k, v)
                    self.end_headers()
                    return
                self._answer(r.status, keep, body)

            do_GET = _handle
            do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def crun_works(workdir, layout, args=("/test-worker", "--help")):
    """None when crun can run the image's bundle (args) here, else the reason."""
    if os.geteuid() != 0:
        return "not root"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return "missing tools: %s (scripts/install-deps.sh installs them)" % ", ".join(missing)
    bundle = os.path.join(workdir, "probe-bundle")
    try:
        _sh("umoci", "unpack", "--image", layout + ":latest", bundle)
        with open(os.path.join(bundle, "config.json")) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = list(args)
        cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        hybrid = os.path.ismount("/sys/fs/cgroup/unified")
        state = os.path.join(workdir, "probe-state")
        crun = "crun --root %s %s run --bundle %s probe-%s" % (
            state, "--cgroup-manager=disabled" if hybrid else "", bundle, RUN_ID)
        cmd = ["unshare", "-m", "sh", "-c", "umount /sys/fs/cgroup/unified 2>/dev/null; exec " + crun]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return "crun cannot run a container here: %s" % (r.stderr.strip() or r.stdout.strip())
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as e:
        return "cannot prepare a probe container: %s" % getattr(e, "stderr", e)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
    return None


class OciTest(SgpudTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-oci-")
        os.chmod(cls.tmp, 0o711)  # reachable from a user namespace, like the data dirs
        cls.img = os.path.join(cls.tmp, "img")
        try:
            _sh("bash", IMAGE_SCRIPT, "build", cls.img, REPO)
        except (subprocess.CalledProcessError, OSError) as e:
            why = getattr(e, "stderr", str(e))
            shutil.rmtree(cls.tmp, ignore_errors=True)
            if any(not shutil.which(t) for t in TOOLS):
                raise unittest.SkipTest("cannot build the test image: %s" % why)
            raise
        why = crun_works(cls.tmp, os.path.join(cls.img, "layout"))
        if why:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise unittest.SkipTest(why)
        cls.public = Registry(os.path.join(cls.tmp, "public"))
        cls.public.start()
        htpasswd = os.path.join(cls.tmp, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(_sh("htpasswd", "-Bbn", USER, PASSWORD).stdout)
        cls.private = Registry(os.path.join(cls.tmp, "private"), htpasswd=htpasswd)
        cls.private.start()
        _sh("bash", IMAGE_SCRIPT, "push", cls.img, cls.public.addr, "demo/echo:latest")
        _sh("bash", IMAGE_SCRIPT, "push", cls.img, cls.public.addr, "demo/echo:second")
        _sh("bash", IMAGE_SCRIPT, "push", cls.img, cls.private.addr, "private/echo:latest",
            "%s:%s" % (USER, PASSWORD))

    @classmethod
    def tearDownClass(cls):
        for r in ("public", "private"):
            if getattr(cls, r, None):
                getattr(cls, r).stop()
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)
        super().tearDownClass()

    # ---- helpers

    def start_oci_sgpud(self, **extra):
        sg_tmp = tempfile.mkdtemp(prefix="sgpu-oci-d-", dir=self.tmp)
        cfg = {"insecure_registries": [self.public.addr, self.private.addr], "stop_grace_s": 2,
               "cdi_dir": os.path.join(sg_tmp, "cdi")}
        cfg.update(extra)
        path = os.path.join(sg_tmp, "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        sg = self.start_sgpud(config=path, gpus="a100:2")
        sg.cfg = cfg
        return sg

    def spec(self, name, image, **over):
        s = {"name": name, "image": image, "env": {"MODEL": "from-spec", "SGPU_IT_RUN": RUN_ID},
             "health": {"path": "/health"}, "workers": {"min": 0, "max": 2, "idle_timeout_s": 30}}
        s.update(over)
        return s

    def containers(self, sg):
        state = os.path.join(sg.data_dir, "oci", "state")
        r = subprocess.run(["crun", "--root", state, "list", "-q"], capture_output=True, text=True)
        return sorted(x for x in r.stdout.split() if x)

    def our_mounts(self, sg):
        with open("/proc/self/mountinfo") as f:
            return [l.split()[4] for l in f if os.path.join(sg.data_dir, "oci") in l.split()[4]]

    # ---- tests

    def test_pull_run_invoke_and_cache_hit(self):
        sg = self.start_oci_sgpud()
        name = unique_name("oci")
        image = "%s/demo/echo:latest" % self.public.addr
        ep = self.create(self.spec(name, image), sg=sg)
        self.assertEqual(ep["runtime"], "oci", "an image makes oci the default runtime")
        body = self.assertOk(sg.invoke(name, "/env", timeout=60))
        self.assertEqual(body["MODEL"], "from-spec", "spec env overrides image env")
        self.assertEqual(body["pid"], 1, "the worker runs as pid 1 of its own container")
        self.assertTrue(body["PORT"])
        (w,) = sg.wait_ready(name, 1)
        self.assertEqual(w["runtime"], "oci")
        cs = w["cold_start"]
        for k in ("pull_ms", "rootfs_ms", "container_ms", "probe_ms", "total_ms"):
            self.assertIsInstance(cs[k], int, "%s in %r" % (k, cs))
        # the image's whiteout hides /etc/gone; /etc/kept is there
        root = "/proc/%d/root" % w["pid"]
        self.assertTrue(os.path.exists(root + "/etc/kept"))
        self.assertFalse(os.path.exists(root + "/etc/gone"), "layer 2's whiteout not honoured")
        self.assertTrue(os.path.exists(root + "/test-worker"))
        # output is captured like the process runtime's; the worker prints its line for
        # /env after answering, so the line may reach the store after the answer does
        sg.wait_for(lambda: any("GET /env 200" in l["line"] for l in sg.logs(name) if l.get("worker") == w["id"]),
                    10, message="the worker's line for GET /env in its logs")
        images = self.assertOk(sg.api("GET", "/v1/images"))
        (img,) = [i for i in images["images"] if i["image"] == image]
        self.assertGreater(img["size_bytes"], 100000)
        self.assertEqual(img["layers"], 2)
        self.assertEqual(img["in_use"], 1)
        # a second worker starts from the cache with the registry down
        self.public.stop()
        try:
            sg.update(name, self.spec(name, image, workers={"min": 2, "max": 2}))
            ws = sg.wait_ready(name, 2, timeout=30)
            # the change of workers.min keeps the first worker; the second is new
            self.assertIn(w["id"], [x["id"] for x in ws])
            for x in ws:
                if x["id"] != w["id"]:
                    self.assertEqual(x["cold_start"]["pull_ms"], 0, x)
        finally:
            self.public.start()
        # stopping a worker removes its container, overlay and bundle
        sg.update(name, self.spec(name, image, workers={"min": 0, "max": 2, "idle_timeout_s": 0.5}))
        self.wait_for(lambda: not sg.active_workers(name), 30, message="scale to zero")
        self.wait_for(lambda: not self.containers(sg) and not self.our_mounts(sg), 10,
                      message="containers and mounts removed")
        self.assertEqual(os.listdir(os.path.join(sg.data_dir, "oci", "workers")), [])

    def test_private_registry(self):
        sg = self.start_oci_sgpud()
        name = unique_name("priv")
        image = "%s/private/echo:latest" % self.private.addr
        # no credentials at all
        self.create(self.spec(name, image, workers={"min": 1, "max": 1}), sg=sg)
        err = self.wait_for(lambda: sg.status(name)["last_error"], 30, message="pull error")
        self.assertIn("credentials", err)
        sg.delete(name)
        # wrong password
        r = sg.api("POST", "/v1/registry-auths", {"name": "priv", "registry": self.private.addr,
                                                   "username": USER, "password": "wrong-" + PASSWORD})
        self.assertEqual(r.status, 201, r.body)
        self.assertNotIn("password", r.body)
        self.create(self.spec(name, image, registry_auth="priv", workers={"min": 1, "max": 1}), sg=sg)
        err = self.wait_for(lambda: sg.status(name)["last_error"], 30, message="pull error")
        self.assertIn("refused", err)
        self.assertIn("401", err)
        # the right one
        r = sg.api("PUT", "/v1/registry-auths/priv", {"registry": self.private.addr, "username": USER,
                                                      "password": PASSWORD})
        self.assertEqual(r.status, 200, r.body)
        sg.update(name, self.spec(name, image, registry_auth="priv", workers={"min": 1, "max": 1}))
        sg.wait_ready(name, 1, timeout=60)
        self.assertOk(sg.invoke(name, "/infer", body=b"x"))
        # the password is nowhere in answers or logs
        listed = sg.api("GET", "/v1/registry-auths", raw=True).body
        one = sg.api("GET", "/v1/registry-auths/priv", raw=True).body
        ep = sg.api("GET", "/v1/endpoints/%s" % name, raw=True).body
        logs = sg.api("GET", "/v1/endpoints/%s/logs" % name, raw=True).body
        for blob in (listed, one, ep, logs, sg.log_text().encode()):
            self.assertNotIn(PASSWORD.encode(), blob)
        self.assertIn(b'"username":"alice"', one)

    def test_private_image_not_shared_from_cache(self):
        """An endpoint without credentials for the private registry cannot start
        the private image another endpoint pulled into the cache with them; one
        that holds them starts from the cache. The first also reads a secret
        from its container's environment."""
        sg = self.start_oci_sgpud()
        image = "%s/private/echo:latest" % self.private.addr
        r = sg.api("POST", "/v1/registry-auths", {"name": "priv", "registry": self.private.addr,
                                                   "username": USER, "password": PASSWORD})
        self.assertEqual(r.status, 201, r.body)
        value = "tok-%s-in-container" % RUN_ID
        self.assertEqual(sg.api("PUT", "/v1/secrets/model", {"value": value}).status, 201)
        a = unique_name("priv-a")
        self.create(self.spec(a, image, registry_auth="priv", workers={"min": 1, "max": 1},
                              env={"MODEL": {"secret": "model"}, "SGPU_IT_RUN": RUN_ID}), sg=sg)
        sg.wait_ready(a, 1, timeout=60)
        self.assertEqual(self.assertOk(sg.invoke(a, "/env"))["MODEL"], value)
        # B names no credentials: the cached image is not B's to start.
        b = unique_name("priv-b")
        self.create(self.spec(b, image, workers={"min": 1, "max": 1}), sg=sg)
        err = self.wait_for(lambda: sg.status(b)["last_error"], 30, message="B's pull error")
        self.assertIn("credentials", err)
        self.assertEqual(sg.ready_workers(b), [])
        self.assertEqual(sg.invoke(b, "/env").status, 503)
        # C holds credentials for that registry: it starts from the cache.
        c = unique_name("priv-c")
        self.create(self.spec(c, image, registry_auth="priv", workers={"min": 1, "max": 1}), sg=sg)
        (w,) = sg.wait_ready(c, 1, timeout=60)
        self.assertEqual(w["cold_start"]["pull_ms"], 0, w)
        for blob in (sg.log_text(), sg.api("GET", "/v1/endpoints/%s/logs" % a, raw=True).body.decode()):
            self.assertNotIn(value, blob)
            self.assertNotIn(PASSWORD, blob)

    def test_digest_mismatch_refused(self):
        sg = self.start_oci_sgpud()
        name = unique_name("tamper")
        repo = "tampered/echo"
        _sh("bash", IMAGE_SCRIPT, "push", self.img, self.public.addr, repo + ":latest")
        # corrupt the largest layer blob in the registry's storage (same size)
        blobs = os.path.join(self.public.root, "data", "docker", "registry", "v2", "blobs")
        biggest = max((os.path.join(d, f) for d, _, fs in os.walk(blobs) for f in fs if f == "data"),
                      key=os.path.getsize)
        with open(biggest, "rb") as f:
            original = f.read()
        try:
            with open(biggest, "r+b") as f:
                f.seek(len(original) // 2)
                f.write(bytes([original[len(original) // 2] ^ 0xff]))
            self.create(self.spec(name, "%s/%s:latest" % (self.public.addr, repo)), sg=sg)
            err = self.wait_for(lambda: sg.status(name)["last_error"], 30, message="pull error")
            self.assertIn("digest mismatch", err)
            images = self.assertOk(sg.api("GET", "/v1/images"))
            self.assertFalse([i for i in images["images"] if repo in i["image"]])
            leftovers = [f for d, _, fs in os.walk(os.path.join(sg.data_dir, "images")) for f in fs
                         if "partial" in f]
            self.assertEqual(leftovers, [])
        finally:
            with open(biggest, "wb") as f:
                f.write(original)

    def test_preheat_then_create_has_zero_pull_time(self):
        sg = self.start_oci_sgpud()
        image = "%s/demo/echo:second" % self.public.addr
        r = sg.api("POST", "/v1/images", {"image": image})
        self.assertEqual(r.status, 202, r.body)
        r = sg.api("POST", "/v1/images", {"image": "Bad Ref"})
        self.assertEqual(r.status, 422, r.body)

        def cached():
            imgs = self.assertOk(sg.api("GET", "/v1/images"))["images"]
            return [i for i in imgs if i["image"] == image]
        (img,) = self.wait_for(cached, 60, message="preheated image")
        self.assertGreaterEqual(img["pull_ms"], 0)
        self.assertEqual(sg.api("POST", "/v1/images", {"image": image}).status, 200)
        name = unique_name("warm")
        self.create(self.spec(name, image), sg=sg)
        self.assertOk(sg.invoke(name, "/infer", body=b"x"))
        (w,) = sg.wait_ready(name, 1)
        self.assertEqual(w["cold_start"]["pull_ms"], 0, w["cold_start"])

    def test_bearer_token_reused_across_one_pull(self):
        proxy = TokenProxy(self.public.addr)
        try:
            sg = self.start_oci_sgpud(insecure_registries=[self.public.addr, proxy.addr])
            image = "%s/demo/echo:latest" % proxy.addr
            self.assertEqual(sg.api("POST", "/v1/images", {"image": image}).status, 202)

            def cached():
                j = self.assertOk(sg.api("GET", "/v1/images"))
                failed = [p for p in j["pulls"] if p.get("error")]
                self.assertFalse(failed)
                return [i for i in j["images"] if i["image"] == image]
            self.wait_for(cached, 60, message="image pulled through the token registry")
            # manifest, config and two layers: one challenge, one token
            self.assertEqual(proxy.token_requests, 1)
        finally:
            proxy.stop()

    def test_delete_image(self):
        sg = self.start_oci_sgpud()
        image = "%s/demo/echo:latest" % self.public.addr
        path = "/v1/images/" + image

        def listed():
            return [i for i in self.assertOk(sg.api("GET", "/v1/images"))["images"] if i["image"] == image]
        self.assertEqual(sg.api("DELETE", path).status, 404)
        name = unique_name("del")
        self.create(self.spec(name, image, workers={"min": 1, "max": 1}), sg=sg)
        sg.wait_ready(name, 1, timeout=60)
        r = sg.api("DELETE", path)
        self.assertEqual(r.status, 409, r.body)
        self.assertTrue(listed())
        sg.delete(name)
        self.wait_for(lambda: listed() and listed()[0]["in_use"] == 0, 30, message="image no longer in use")
        r = sg.api("DELETE", path.replace("/demo/", "%2Fdemo%2F"))
        self.assertEqual(r.status, 200, r.body)
        self.assertFalse(listed())
        layers = os.path.join(sg.data_dir, "images", "layers")
        self.wait_for(lambda: not [x for x in os.listdir(layers) if not x.endswith(".bytes")], 10,
                      message="layer directories removed")
        self.assertEqual(sg.api("DELETE", path).status, 404)
        self.assertEqual(sg.api("DELETE", "/v1/images/Bad%20Ref").status, 422)

    def test_preheat_rechecks_a_cached_tag(self):
        sg = self.start_oci_sgpud()
        image = "%s/demo/moving:latest" % self.public.addr
        _sh("bash", IMAGE_SCRIPT, "push", self.img, self.public.addr, "demo/moving:latest")

        def listed():
            return [i for i in self.assertOk(sg.api("GET", "/v1/images"))["images"] if i["image"] == image]
        self.assertEqual(sg.api("POST", "/v1/images", {"image": image}).status, 202)
        (first,) = self.wait_for(listed, 60, message="first pull")
        # unchanged: a check, no new pull
        r = self.assertOk(sg.api("POST", "/v1/images", {"image": image}))
        self.assertEqual((r["state"], r["checking"], r["digest"]), ("cached", True, first["digest"]))
        self.wait_for(lambda: not self.assertOk(sg.api("GET", "/v1/images"))["pulls"], 30, message="check done")
        (same,) = listed()
        self.assertEqual((same["digest"], same["pulled_at"]), (first["digest"], first["pulled_at"]))
        # the tag now names another manifest (Docker schema 2): pulled again
        _sh("skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--format", "v2s2",
            "oci:%s/layout:latest" % self.img, "docker://%s/demo/moving:latest" % self.public.addr)
        self.assertEqual(self.assertOk(sg.api("POST", "/v1/images", {"image": image}))["checking"], True)
        (new,) = self.wait_for(lambda: [i for i in listed() if i["digest"] != first["digest"]], 60,
                               message="newer manifest pulled")
        self.assertEqual(new["layers"], 2)
        name = unique_name("mv")
        self.create(self.spec(name, image), sg=sg)
        self.assertOk(sg.invoke(name, "/infer", body=b"x", timeout=60))

    def test_cdi_gpu_injection(self):
        sg_tmp = tempfile.mkdtemp(prefix="cdi-", dir=self.tmp)
        lib = os.path.join(sg_tmp, "libnvidia-fake.so")
        with open(lib, "w") as f:
            f.write("fake")
        cdi_dir = os.path.join(sg_tmp, "cdi")
        os.makedirs(cdi_dir)
        spec = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
                "devices": [{"name": str(i), "containerEdits": {
                    "deviceNodes": [{"path": "/dev/nvidia%d" % i, "hostPath": "/dev/null"}]}}
                    for i in range(2)],
                "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void", "CDI_TEST=1"],
                                   "deviceNodes": [{"path": "/dev/nvidiactl", "hostPath": "/dev/zero"}],
                                   "mounts": [{"hostPath": lib, "containerPath": "/usr/lib/libnvidia-fake.so",
                                               "options": ["ro", "nosuid", "nodev", "bind"]}]}}
        with open(os.path.join(cdi_dir, "nvidia.json"), "w") as f:
            json.dump(spec, f)
        sg = self.start_oci_sgpud(cdi_dir=cdi_dir)
        name = unique_name("gpu")
        self.create(self.spec(name, "%s/demo/echo:latest" % self.public.addr,
                              gpu={"type": "a100", "count": 1}), sg=sg)
        env = self.assertOk(sg.invoke(name, "/env", timeout=60))
        (w,) = sg.wait_ready(name, 1)
        gpu = w["gpus"][0]
        self.assertEqual(env["NVIDIA_VISIBLE_DEVICES"], "void")
        self.assertEqual(env["CUDA_VISIBLE_DEVICES"], "0")
        root = "/proc/%d/root" % w["pid"]
        self.assertTrue(os.path.exists("%s/dev/nvidia%d" % (root, gpu)))
        self.assertFalse(os.path.exists("%s/dev/nvidia%d" % (root, 1 - gpu)), "another worker's GPU")
        self.assertTrue(os.path.exists(root + "/dev/nvidiactl"))
        with open(root + "/usr/lib/libnvidia-fake.so") as f:
            self.assertEqual(f.read(), "fake")

    def test_restart_leaks_nothing(self):
        sg = self.start_oci_sgpud()
        name = unique_name("rst")
        self.create(self.spec(name, "%s/demo/echo:latest" % self.public.addr,
                              gpu={"type": "a100", "count": 1}, workers={"min": 1, "max": 1}), sg=sg)
        (w,) = sg.wait_ready(name, 1, timeout=60)
        self.assertEqual(len(self.containers(sg)), 1)
        self.assertTrue(self.our_mounts(sg))
        sg.stop(sig=signal.SIGKILL)
        sg.start()
        self.wait_for(lambda: not pid_alive(w["pid"]), 15, message="old container gone")
        (w2,) = sg.wait_ready(name, 1, timeout=60)
        self.assertNotEqual(w2["id"], w["id"])
        self.assertEqual(self.containers(sg), [w2["id"]])
        mounts = self.our_mounts(sg)
        self.assertTrue(mounts)
        for m in mounts:  # its root, and its idmapped layers in a user namespace
            self.assertIn(w2["id"], m)
        self.assertEqual(sorted(os.listdir(os.path.join(sg.data_dir, "oci", "workers"))), [w2["id"]])
        node = sg.nodes()[0]
        self.assertEqual(node["gpus_free"], 1, node)
        self.assertOk(sg.invoke(name, "/infer", body=b"x"))
        # and a clean stop removes everything
        sg.stop()
        self.assertEqual(self.containers(sg), [])
        self.assertEqual(self.our_mounts(sg), [])


if __name__ == "__main__":
    unittest.main()
