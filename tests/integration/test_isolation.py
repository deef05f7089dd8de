"""Worker isolation: what a hostile worker can reach.

Containers (oci runtime): a static probe (isolation-probe.c), built into an image,
pulled from a docker-registry on loopback and run by sgpud through crun, tries
mknod + open of host devices, opening host device paths, mounts, ptrace,
namespaces, writes to masked and read-only paths and privileged system calls; it
serves what happened as JSON and every attempt must have failed, whatever the
cgroup layout enforces. Skips (with the reason) only when containers cannot run
here, like test_oci.

Process workers: with sgpud running as root, a worker runs as an unprivileged
user and cannot read the admin key or the database; the data dir and the
database are private to sgpud."""

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import unittest

from harness import (ECHO_WORKER, HERE, REPO, RUN_ID, SgpudTestCase, echo_spec, error_of, unique_name,
                     wait_for)
from test_oci import TOOLS, Registry, _sh, crun_works

IMAGE_SCRIPT = os.path.join(HERE, "oci-image.sh")
CAP_NET_RAW, CAP_MKNOD, CAP_SYS_ADMIN = 13, 27, 21
USERNS_GID = 1000000000  # SG_OCI_USERNS_BASE


class ContainerIsolationTest(SgpudTestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-iso-")
        cls.img = os.path.join(cls.tmp, "img")
        try:
            _sh("bash", IMAGE_SCRIPT, "probe", cls.img, REPO)
        except (subprocess.CalledProcessError, OSError) as e:
            why = getattr(e, "stderr", str(e))
            shutil.rmtree(cls.tmp, ignore_errors=True)
            if any(not shutil.which(t) for t in TOOLS):
                raise unittest.SkipTest("cannot build the probe image: %s" % why)
            raise
        why = crun_works(cls.tmp, os.path.join(cls.img, "layout"), ("/isolation-probe", "--version"))
        if why:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise unittest.SkipTest(why)
        cls.registry = Registry(os.path.join(cls.tmp, "registry"))
        cls.registry.start()
        _sh("bash", IMAGE_SCRIPT, "push", cls.img, cls.registry.addr, "probe/isolation:latest")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "registry", None):
            cls.registry.stop()
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)
        super().tearDownClass()

    def start_probe(self, **cfg):
        # A data dir whose parents the containers' ids may traverse, as a user
        # namespace needs (sgpud falls back to none when they cannot).
        os.chmod(self.tmp, 0o711)
        d = tempfile.mkdtemp(prefix="sgpu-iso-d-", dir=self.tmp)
        os.chmod(d, 0o711)
        path = os.path.join(d, "config.json")
        with open(path, "w") as f:
            json.dump(dict({"insecure_registries": [self.registry.addr], "stop_grace_s": 2,
                            "cdi_dir": os.path.join(d, "cdi")}, **cfg), f)
        sg = self.start_sgpud(config=path, data_dir=os.path.join(d, "data"))
        name = unique_name("iso")
        self.create({"name": name, "image": "%s/probe/isolation:latest" % self.registry.addr,
                     "env": {"SGPU_IT_RUN": RUN_ID}, "health": {"path": "/health"},
                     "workers": {"min": 0, "max": 1, "idle_timeout_s": 30}}, sg=sg)
        findings = self.assertOk(sg.invoke(name, "/findings", timeout=60))
        (w,) = sg.wait_ready(name, 1)
        sg.probe_name = name
        return sg, w, findings

    def assertContained(self, sg, w, f):
        allowed = {k: v for k, v in f["attempts"].items() if v["ok"]}
        self.assertEqual(allowed, {}, "attempts a container must not be able to make")
        failed_controls = {k: v for k, v in f["controls"].items() if not v["ok"]}
        self.assertEqual(failed_controls, {}, "harmless operations that must still work")
        # what the attempts cover, so that a probe that lost some cannot pass
        for name in ("mknod loop0 b7:0 in /dev", "mknod tun c10:200 in /dev", "open new node tun c10:200 in /dev",
                     "mount tmpfs", "ptrace attach (own child)", "unshare user",
                     "open /proc/sysrq-trigger for writing", "read /proc/kcore", "create in /sys/firmware",
                     "kexec_load", "bpf", "keyctl"):
            self.assertIn(name, f["attempts"])
        cap = int(f["cap_eff"], 16)
        for bit, what in ((CAP_MKNOD, "CAP_MKNOD"), (CAP_NET_RAW, "CAP_NET_RAW"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
            self.assertFalse(cap & (1 << bit), "%s in the container's effective set %s" % (what, f["cap_eff"]))
        self.assertEqual(f["seccomp"], "2", "the worker runs under a seccomp filter")
        self.assertEqual(f["uid"], 0, "the image's user (root) inside the container")
        # the container's root is mounted nodev,nosuid on the host
        rootfs = os.path.join(sg.data_dir, "oci", "workers", w["id"], "rootfs")
        with open("/proc/self/mountinfo") as mi:
            opts = [l.split()[5].split(",") for l in mi if l.split()[4] == rootfs]
        self.assertTrue(opts, "the overlay root %s is mounted" % rootfs)
        self.assertIn("nodev", opts[-1])
        self.assertIn("nosuid", opts[-1])

    def host_uid(self, pid):
        with open("/proc/%d/status" % pid) as f:
            return int([l for l in f if l.startswith("Uid:")][0].split()[1])

    def test_hostile_container_is_contained(self):
        sg, w, f = self.start_probe(oci_userns=False)
        self.assertIn("without a user namespace (oci_userns is false)", sg.log_text())
        self.assertContained(sg, w, f)
        self.assertEqual(self.host_uid(w["pid"]), 0)

    def test_hostile_container_is_contained_in_a_user_namespace(self):
        sg, w, f = self.start_probe()
        log = sg.log_text()
        if "run in a user namespace" not in log:
            why = [l for l in log.splitlines() if "without a user namespace" in l]
            self.skipTest("this host gives containers no user namespace: %s" % (why or "?"))
        self.assertContained(sg, w, f)
        self.assertEqual(self.host_uid(w["pid"]), USERNS_GID, "container root is an unprivileged id on the host")
        # the bundle's idmapped layers are gone once the worker is
        sg.delete(sg.probe_name)
        bundles = os.path.join(sg.data_dir, "oci", "workers")
        self.wait_for(lambda: not os.listdir(bundles), 15, message="bundles removed")
        with open("/proc/self/mountinfo") as mi:
            self.assertEqual([l.split()[4] for l in mi if bundles in l.split()[4]], [])
        # the image's layers are intact
        layers = os.path.join(sg.data_dir, "images", "layers")
        self.assertTrue(any(files for _, _, files in os.walk(layers)), "layer files deleted with a bundle")


class ProcessWorkerUserTest(SgpudTestCase):

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("sgpud drops privileges for process workers only when it runs as root")

    def expected_user(self):
        try:
            return pwd.getpwnam("sgpu-worker")
        except KeyError:
            return pwd.getpwnam("nobody")

    def test_process_worker_cannot_read_secrets(self):
        sg = self.start_sgpud()
        data = sg.data_dir
        # The worker reports its ids and whether it could read sgpud's secrets
        # through MODEL (which the echo worker's /env shows), then serves.
        script = ('key=denied; cat "$D/admin.key" >/dev/null 2>&1 && key=READ; '
                  'db=denied; for f in "$D"/*.db; do cat "$f" >/dev/null 2>&1 && db=READ; done; '
                  'ls "$D" >/dev/null 2>&1 && db="$db,LISTED"; '
                  'export MODEL="uid=$(id -u) gid=$(id -g) groups=$(id -G | tr " " ,) key=$key db=$db"; '
                  'exec "$W"')
        name = unique_name("runas")
        spec = echo_spec(name, env={"D": data, "W": ECHO_WORKER, "SGPU_IT_RUN": RUN_ID})
        spec["command"] = ["/bin/sh", "-c", script]
        self.create(spec, sg=sg)
        env = self.assertOk(sg.invoke(name, "/env", timeout=30))
        got = dict(kv.split("=", 1) for kv in env["MODEL"].split())
        want = self.expected_user()
        self.assertEqual(int(got["uid"]), want.pw_uid, got)
        self.assertEqual(int(got["gid"]), want.pw_gid, got)
        self.assertNotIn("0", got["groups"].split(","), "no supplementary group of root's")
        self.assertEqual(got["key"], "denied", "the worker read admin.key")
        self.assertEqual(got["db"], "denied", "the worker read or listed the data dir")
        (w,) = sg.wait_ready(name, 1)
        st = os.stat("/proc/%d" % w["pid"])
        self.assertEqual(st.st_uid, want.pw_uid)

    def test_command_beneath_a_private_directory_runs_as_the_user(self):
        # A checkout in /root: the user cannot search the directory, yet the
        # command (a binary, and a script) runs, as the user.
        sg = self.start_sgpud()
        private = tempfile.mkdtemp(prefix="sgpu-it-private-")
        self.addCleanup(shutil.rmtree, private, True)
        os.chmod(private, 0o700)
        binary = os.path.join(private, "test-worker")
        shutil.copy(ECHO_WORKER, binary)
        os.chmod(binary, 0o755)
        script = os.path.join(private, "start.sh")
        with open(script, "w") as f:
            f.write('#!/bin/sh\nexport MODEL="uid=$(id -u)"\nexec "$W"\n')
        os.chmod(script, 0o755)
        want = self.expected_user()
        for command, env in (([binary], {}), ([script], {"W": ECHO_WORKER})):
            name = unique_name("private")
            spec = echo_spec(name, env=dict(env, SGPU_IT_RUN=RUN_ID), workers={"min": 1})
            spec["command"] = command
            self.create(spec, sg=sg)
            (w,) = sg.wait_ready(name, 1)
            self.assertEqual(os.stat("/proc/%d" % w["pid"]).st_uid, want.pw_uid, command)
            if env:
                got = self.assertOk(sg.invoke(name, "/env", timeout=30))
                self.assertEqual(got["MODEL"], "uid=%d" % want.pw_uid)
        # A file the user may not execute is refused at create, naming the user...
        secret = os.path.join(private, "root-only")
        shutil.copy(ECHO_WORKER, secret)
        os.chmod(secret, 0o700)
        name = unique_name("private")
        spec = echo_spec(name, env={"SGPU_IT_RUN": RUN_ID}, workers={"min": 0})
        spec["command"] = [secret]
        resp = sg.api("POST", "/v1/endpoints", spec)
        self.assertError(resp, 422, "invalid_field", "command[0]")
        self.assertIn(want.pw_name, error_of(resp)["message"])
        # ... and one that became so after the create fails at start, with the reason.
        os.chmod(secret, 0o755)
        self.create(spec, sg=sg)
        os.chmod(secret, 0o700)
        self.assertEqual(sg.invoke(name, "/infer", body=b"x", timeout=30).status, 503)
        wait_for(lambda: "run_as" in (sg.api("GET", "/v1/endpoints/%s" % name).body["status"].get("last_error") or ""),
                 30, message="last_error naming run_as")

    def test_data_dir_and_database_are_private(self):
        sg = self.start_sgpud()
        name = unique_name("modes")
        self.create(echo_spec(name, env={"SGPU_IT_RUN": RUN_ID}), sg=sg)
        self.assertOk(sg.invoke(name, "/infer", body=b"x", timeout=30))
        d = sg.data_dir
        st = os.stat(d)
        # 0700; or 0710 for the containers' root of a user namespace (its own gid,
        # no user's group), which crun needs to traverse to the bundles
        self.assertEqual(stat.S_IMODE(st.st_mode) & 0o007, 0, "data dir %s" % oct(st.st_mode))
        if stat.S_IMODE(st.st_mode) & 0o070:
            self.assertEqual((stat.S_IMODE(st.st_mode) & 0o070, st.st_gid), (0o010, USERNS_GID))
        files = [f for f in os.listdir(d) if f == "admin.key" or ".db" in f]
        self.assertIn("admin.key", files)
        self.assertTrue([f for f in files if f.endswith(".db")], files)
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p):
                self.assertEqual(stat.S_IMODE(os.stat(p).st_mode) & 0o077, 0, "%s is %s" % (p, oct(os.stat(p).st_mode)))


class WorkerOutputBoundTest(SgpudTestCase):
    """A worker's output lines are bounded (16 KiB): a longer line arrives as
    several lines, cut between UTF-8 sequences, with nothing lost."""

    MAX_LINE = 16384

    def test_long_lines_are_split_whole(self):
        sg = self.start_sgpud()
        # 100,000 'a's, then 'x' and 30,000 two-byte characters, each one line.
        script = ("head -c 100000 /dev/zero | tr '\\0' a; echo; "
                  "printf x; head -c 30000 /dev/zero | tr '\\0' '\\1' | sed 's/\\x01/\\xc3\\xa9/g'; echo; "
                  "echo end-of-long-lines; exec \"$W\"")
        name = unique_name("longline")
        spec = echo_spec(name, env={"W": ECHO_WORKER, "SGPU_IT_RUN": RUN_ID, "LC_ALL": "C"},
                         workers={"min": 1, "max": 1})
        spec["command"] = ["/bin/sh", "-c", script]
        self.create(spec, sg=sg)
        sg.wait_ready(name, 1, timeout=30)

        def lines():
            got = [l["line"] for l in sg.logs(name, limit=1000) if l.get("stream") == "stdout"]
            return got if "end-of-long-lines" in got else None
        got = self.wait_for(lines, 20, message="the worker's long lines in its logs")
        got = got[:got.index("end-of-long-lines")]
        for l in got:
            self.assertLessEqual(len(l.encode()), self.MAX_LINE)
            self.assertNotEqual(l, "(line is not valid UTF-8)")
        a_lines = [l for l in got if set(l) == {"a"}]
        self.assertEqual(sum(len(l) for l in a_lines), 100000, [len(l) for l in got])
        self.assertGreaterEqual(len(a_lines), 7)
        e_text = "".join(l for l in got if "\u00e9" in l)
        self.assertEqual(e_text, "x" + "\u00e9" * 30000)


if __name__ == "__main__":
    unittest.main()
