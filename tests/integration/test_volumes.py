"""Volumes: named volumes (/v1/volumes) and host paths mounted by specs, with the
process runtime (SGPU_VOLUME_* and, sgpud being root, a mount namespace of the
worker's own) and the oci runtime (bind mounts in a real crun container); the
tarball preload and its confinement."""

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import unittest

import test_slurm
from harness import (REPO, RUN_ID, SgpudTestCase, echo_spec, unique_name, wait_for)


def tarball(entries, gz=False):
    """A tar from [(name, bytes | ("symlink", target) | ("dir",) | ("fifo",) | ("hardlink", target))]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if isinstance(what, bytes):
                info.size = len(what)
                info.mode = 0o4755 if name.endswith(".suid") else 0o644
                t.addfile(info, io.BytesIO(what))
                continue
            kind = what[0]
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, what[1]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, what[1]
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            t.addfile(info)
    return buf.getvalue()


class VolumeApiTest(SgpudTestCase):
    """Volumes with the process runtime: one daemon with volume_host_paths set."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-vol-")
        os.chmod(cls.tmp, 0o755)
        cls.allowed = os.path.join(cls.tmp, "models")
        cls.outside = os.path.join(cls.tmp, "private")
        for d in (cls.allowed, cls.outside):
            os.makedirs(d)
            os.chmod(d, 0o755)
        with open(os.path.join(cls.allowed, "weights.bin"), "wb") as f:
            f.write(b"host-weights")
        os.chmod(os.path.join(cls.allowed, "weights.bin"), 0o644)
        # A link inside the allowed directory that leads out of it.
        os.symlink(cls.outside, os.path.join(cls.allowed, "escape"))
        cfg = os.path.join(cls.tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump({"volume_host_paths": [cls.allowed], "stop_grace_s": 2}, f)
        cls.SHARED = {"config": cfg}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def volume(self, name=None, **extra):
        name = name or unique_name("vol")
        body = {"name": name}
        body.update(extra)
        self.assertOk(self.sg.api("POST", "/v1/volumes", body), 201)
        self.addCleanup(lambda: self.sg.alive() and self.sg.api("DELETE", "/v1/volumes/%s" % name))
        return name

    def put_file(self, ep, env, name, data):
        return self.sg.invoke(ep, "/file?env=%s&name=%s" % (env, name), method="PUT", body=data)

    def get_file(self, ep, env, name):
        return self.sg.invoke(ep, "/file?env=%s&name=%s" % (env, name), raw=True)

    # ---- the API

    def test_create_list_show_delete(self):
        name = self.volume(size_bytes=1 << 20)
        self.assertError(self.sg.api("POST", "/v1/volumes", {"name": name}), 409, code="conflict")
        self.assertError(self.sg.api("POST", "/v1/volumes", {"name": "Bad_Name"}), 422, field="name")
        self.assertError(self.sg.api("POST", "/v1/volumes", {"name": "x", "size_bytes": 0}), 422,
                         field="size_bytes")
        self.assertError(self.sg.api("POST", "/v1/volumes", {"name": "x", "other": 1}), 422, field="other")
        got = self.assertOk(self.sg.api("GET", "/v1/volumes/%s" % name))
        self.assertEqual(got["name"], name)
        self.assertEqual(got["size_bytes"], 1 << 20)
        self.assertEqual(got["used_bytes"], 0)
        self.assertEqual(got["mounted_by"], [])
        self.assertIn("created", got)
        listed = self.assertOk(self.sg.api("GET", "/v1/volumes"))["volumes"]
        self.assertIn(name, [v["name"] for v in listed])
        self.assertTrue(os.path.isdir(os.path.join(self.sg.data_dir, "volumes", name)))
        self.assertOk(self.sg.api("DELETE", "/v1/volumes/%s" % name))
        self.assertError(self.sg.api("GET", "/v1/volumes/%s" % name), 404)
        wait_for(lambda: not os.path.exists(os.path.join(self.sg.data_dir, "volumes", name)), 10,
                 message="the deleted volume's directory removed")

    def test_spec_validation(self):
        vol = self.volume()
        cases = [
            ([{"name": vol}], "volumes[0].path"),
            ([{"name": vol, "host_path": self.allowed, "path": "/a"}], "volumes[0]"),
            ([{"name": vol, "path": "relative"}], "volumes[0].path"),
            ([{"name": vol, "path": "/a/../b"}], "volumes[0].path"),
            ([{"name": vol, "path": "/a"}, {"name": vol, "path": "/a"}], "volumes[1].path"),
            ([{"name": vol, "path": "/a", "read_only": "yes"}], "volumes[0].read_only"),
            ([{"name": vol, "path": "/a", "mode": "rw"}], "volumes[0].mode"),
            ([{"name": "no-such-volume", "path": "/a"}], "volumes[0].name"),
            ([{"host_path": self.outside, "path": "/m"}], "volumes[0].host_path"),
            ([{"host_path": "/", "path": "/m"}], "volumes[0].host_path"),
            ([{"host_path": os.path.join(self.allowed, "escape"), "path": "/m"}], "volumes[0].host_path"),
            ([{"host_path": self.allowed + "/../private", "path": "/m"}], "volumes[0].host_path"),
        ]
        for vols, field in cases:
            r = self.sg.api("POST", "/v1/endpoints", echo_spec(unique_name("bad"), volumes=vols))
            self.assertError(r, 422, field=field, msg=json.dumps(vols))

    def test_write_then_read_by_other_version_and_endpoint(self):
        vol = self.volume()
        writer = unique_name("vw")
        spec = echo_spec(writer, volumes=[{"name": vol, "path": "/data"}])
        ep = self.create(spec)
        self.assertEqual(ep["spec"]["volumes"] if "spec" in ep else ep["volumes"],
                         [{"name": vol, "path": "/data", "read_only": False}])
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        self.assertOk(self.put_file(writer, env, "hello.txt", b"from the first worker"))
        self.assertEqual(self.assertOk(self.sg.api("GET", "/v1/volumes/%s" % vol))["mounted_by"], [writer])
        first = self.sg.ready_workers(writer)[0]["id"]
        # A new version of the endpoint (a PATCH that changes the env) gets new workers.
        self.assertOk(self.sg.api("PATCH", "/v1/endpoints/%s" % writer, {"env": {"MODEL": "v2"}}))
        wait_for(lambda: [w for w in self.sg.ready_workers(writer) if w["id"] != first], 20,
                 message="a worker of the new version")
        r = self.get_file(writer, env, "hello.txt")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, b"from the first worker")
        # Another endpoint mounts it read-only: it reads, and cannot write.
        reader = unique_name("vr")
        self.create(echo_spec(reader, volumes=[{"name": vol, "path": "/data", "read_only": True}]))
        r = self.get_file(reader, env, "hello.txt")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, b"from the first worker")
        r = self.put_file(reader, env, "nope.txt", b"x")
        self.assertEqual(r.status, 403, r.body)
        self.assertIn("EROFS", json.dumps(r.body))
        r = self.put_file(reader, env, "hello.txt", b"overwritten")
        self.assertEqual(r.status, 403, r.body)
        self.assertEqual(self.get_file(writer, env, "hello.txt").body, b"from the first worker")
        # Deleting a mounted volume is refused.
        self.assertError(self.sg.api("DELETE", "/v1/volumes/%s" % vol), 409, code="in_use")
        used = self.assertOk(self.sg.api("GET", "/v1/volumes/%s" % vol))
        self.assertEqual(used["used_bytes"], len(b"from the first worker"))
        self.assertEqual(sorted(used["mounted_by"]), sorted([writer, reader]))

    def test_process_worker_sees_no_other_data(self):
        vol = self.volume()
        name = unique_name("vp")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/data"}]))
        # The worker's user cannot read sgpud's database through the data dir.
        r = self.sg.invoke(name, "/file?path=%s" % os.path.join(self.sg.data_dir, "sgpu.db"), raw=True)
        self.assertIn(r.status, (403, 404), r.body)
        r = self.sg.invoke(name, "/file?path=%s" % os.path.join(self.sg.data_dir, "admin.key"), raw=True)
        self.assertIn(r.status, (403, 404), r.body)

    def test_data_dir_below_a_private_directory(self):
        # As ~/.sgpu of root: /root is not searchable by the worker's user, yet
        # its process workers reach their volumes.
        private = tempfile.mkdtemp(prefix="sgpu-vol-priv-", dir=self.tmp)
        os.chmod(private, 0o700)
        sg = self.start_sgpud(data_dir=os.path.join(private, "data"))
        vol = unique_name("pv")
        self.assertOk(sg.api("POST", "/v1/volumes", {"name": vol}), 201)
        name = unique_name("pw")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/d"}]), sg=sg)
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        r = sg.invoke(name, "/file?env=%s&name=a.txt" % env, method="PUT", body=b"reached")
        self.assertEqual(r.status, 200, r.body)
        with open(os.path.join(private, "data", "volumes", vol, "a.txt"), "rb") as f:
            self.assertEqual(f.read(), b"reached")
        # The volume and its files outlive sgpud.
        sg.restart()
        got = self.assertOk(sg.api("GET", "/v1/volumes/%s" % vol))
        self.assertEqual((got["used_bytes"], got["mounted_by"]), (len(b"reached"), [name]))
        r = sg.invoke(name, "/file?env=%s&name=a.txt" % env, raw=True, timeout=30)
        self.assertEqual((r.status, r.body), (200, b"reached"))

    def test_host_path_read_only(self):
        name = unique_name("vh")
        self.create(echo_spec(name, volumes=[{"host_path": self.allowed, "path": "/models", "read_only": True}]))
        r = self.sg.invoke(name, "/file?env=SGPU_VOLUME_MODELS&name=weights.bin", raw=True)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, b"host-weights")
        env = self.assertOk(self.sg.api("GET", "/v1/endpoints/%s" % name))
        vols = env.get("spec", env).get("volumes")
        self.assertEqual(vols, [{"host_path": self.allowed, "path": "/models", "read_only": True}])
        r = self.sg.invoke(name, "/file?env=SGPU_VOLUME_MODELS&name=new.bin", method="PUT", body=b"x")
        self.assertEqual(r.status, 403, r.body)
        self.assertFalse(os.path.exists(os.path.join(self.allowed, "new.bin")))

    # ---- uploads

    def test_upload_then_worker_reads(self):
        vol = self.volume()
        data = tarball([("weights/", ("dir",)), ("weights/model.bin", b"W" * 5000), ("tool.suid", b"#!x")],
                       gz=True)
        r = self.sg.api("POST", "/v1/volumes/%s/files" % vol, data,
                        headers={"Content-Type": "application/gzip"})
        body = self.assertOk(r)
        self.assertEqual(body["used_bytes"], 5003)
        mode = os.stat(os.path.join(self.sg.data_dir, "volumes", vol, "tool.suid")).st_mode
        self.assertFalse(mode & 0o7000, "setuid bit kept: %o" % mode)
        name = unique_name("vu")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/w", "read_only": True}]))
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        r = self.get_file(name, env, "weights/model.bin")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, b"W" * 5000)

    def test_large_upload_streams(self):
        # Past the bytes kept waiting for the file's writer: the body is paused and resumed.
        vol = self.volume()
        blob = os.urandom(24 << 20)
        body = self.assertOk(self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("big.bin", blob)]),
                                         timeout=120))
        self.assertEqual(body["unpacked_bytes"], len(blob))
        with open(os.path.join(self.sg.data_dir, "volumes", vol, "big.bin"), "rb") as f:
            self.assertTrue(f.read() == blob, "the unpacked file differs from the upload")
        self.assertEqual(os.listdir(os.path.join(self.sg.data_dir, "volumes", ".uploads")), [])

    def test_hostile_tarballs_refused_or_confined(self):
        vol = self.volume()
        vdir = os.path.join(self.sg.data_dir, "volumes", vol)
        target = os.path.join(self.tmp, "private")
        hostile = [
            [("../escape.txt", b"out")],
            [("/abs.txt", b"out")],
            [("link", ("symlink", target)), ("link/planted.txt", b"out")],
            [("dev", ("chr",))],
            [("fifo", ("fifo",))],
            [("hl", ("hardlink", "/etc/passwd"))],
        ]
        for entries in hostile:
            r = self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball(entries))
            self.assertError(r, 422, code="invalid_archive", msg=repr(entries))
        self.assertFalse(os.path.exists(os.path.join(self.sg.data_dir, "volumes", "escape.txt")))
        self.assertFalse(os.path.exists(os.path.join(target, "planted.txt")))
        self.assertFalse(os.path.exists("/abs.txt"))
        self.assertFalse(os.path.exists(os.path.join(vdir, "dev")))
        self.assertFalse(os.path.exists(os.path.join(vdir, "fifo")))
        # Not a tarball at all.
        self.assertError(self.sg.api("POST", "/v1/volumes/%s/files" % vol, b"not a tar" * 100), 422)

    def test_size_limit(self):
        vol = self.volume(size_bytes=4096)
        r = self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("big", b"B" * 20000)]))
        self.assertError(r, 413, code="too_large")
        r = self.assertOk(self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("small", b"s" * 100)])))
        # A worker fills it past its size: the next start is refused.
        name = unique_name("vs")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/d"}], workers={"min": 0, "max": 1,
                                                                                     "idle_timeout_s": 1}))
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        self.assertOk(self.put_file(name, env, "fill", b"F" * 8192))
        # The worker goes idle and ends; the volume is measured again.
        wait_for(lambda: not self.sg.active_workers(name), 30, message="the idle worker gone")
        wait_for(lambda: self.assertOk(self.sg.api("GET", "/v1/volumes/%s" % vol))["used_bytes"] > 4096, 10)
        r = self.sg.invoke(name, "/health", timeout=30)
        self.assertNotEqual(r.status, 200, r.body)
        events = self.sg.logs(name)
        self.assertIn("over its size_bytes", json.dumps(events))
        r = self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("more", b"m")]))
        self.assertError(r, 413, code="too_large")

    def test_no_read_write_start_during_an_upload(self):
        vol = self.volume()
        data = tarball([("late.txt", b"L" * 1000)])
        sock = socket.create_connection(("127.0.0.1", self.sg.port))
        self.addCleanup(sock.close)
        head = ("POST /v1/volumes/%s/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                "Content-Length: %d\r\n\r\n" % (vol, self.sg.key, len(data)))
        sock.sendall(head.encode() + data[:512])
        # The upload is under way: a second one is refused, which shows it.
        wait_for(lambda: self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("b", b"b")])).status == 409,
                 10, message="the first upload under way")
        name = unique_name("vd")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/d"}],
                              workers={"min": 0, "max": 1, "request_timeout_s": 1}))
        r = self.sg.invoke(name, "/health")
        self.assertNotEqual(r.status, 200, r.body)
        wait_for(lambda: "upload into volume" in json.dumps(self.sg.logs(name)), 10,
                 message="the start refused for the upload")
        sock.sendall(data[512:])
        reply = sock.recv(4096)
        self.assertIn(b" 200 ", reply.split(b"\r\n")[0])
        r = self.sg.invoke(name, "/file?env=SGPU_VOLUME_%s&name=late.txt" % vol.upper().replace("-", "_"),
                           raw=True, timeout=30)
        self.assertEqual((r.status, r.body), (200, b"L" * 1000))

    def test_upload_unknown_volume_and_rw_busy(self):
        self.assertError(self.sg.api("POST", "/v1/volumes/nope/files", tarball([("a", b"a")])), 404)
        vol = self.volume()
        name = unique_name("vb")
        self.create(echo_spec(name, volumes=[{"name": vol, "path": "/d"}]))
        self.assertOk(self.sg.invoke(name, "/health"))
        r = self.sg.api("POST", "/v1/volumes/%s/files" % vol, tarball([("a", b"a")]))
        self.assertError(r, 409, code="in_use")


class OciVolumeTest(SgpudTestCase):
    """Named volumes bound into real crun containers (skipped where containers
    cannot run here, as test_oci.py is)."""

    @classmethod
    def setUpClass(cls):
        import test_oci
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="sgpu-voci-")
        os.chmod(cls.tmp, 0o711)
        cls.img = os.path.join(cls.tmp, "img")
        try:
            test_oci._sh("bash", test_oci.IMAGE_SCRIPT, "build", cls.img, REPO)
        except (subprocess.CalledProcessError, OSError) as e:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            if any(not shutil.which(t) for t in test_oci.TOOLS):
                raise unittest.SkipTest("cannot build the test image: %s" % getattr(e, "stderr", e))
            raise
        why = test_oci.crun_works(cls.tmp, os.path.join(cls.img, "layout"))
        if why:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise unittest.SkipTest(why)
        cls.registry = test_oci.Registry(os.path.join(cls.tmp, "registry"))
        cls.registry.start()
        test_oci._sh("bash", test_oci.IMAGE_SCRIPT, "push", cls.img, cls.registry.addr, "demo/echo:latest")
        cls.image = "%s/demo/echo:latest" % cls.registry.addr

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "registry", None):
            cls.registry.stop()
        shutil.rmtree(getattr(cls, "tmp", ""), ignore_errors=True)
        super().tearDownClass()

    def spec(self, name, volumes):
        return {"name": name, "image": self.image, "env": {"SGPU_IT_RUN": RUN_ID},
                "health": {"path": "/health"}, "workers": {"min": 0, "max": 1, "idle_timeout_s": 30},
                "volumes": volumes}

    def test_container_writes_and_another_reads_read_only(self):
        d = tempfile.mkdtemp(prefix="sgpu-voci-d-", dir=self.tmp)
        cfg = os.path.join(d, "config.json")
        with open(cfg, "w") as f:
            json.dump({"insecure_registries": [self.registry.addr], "stop_grace_s": 2,
                       "cdi_dir": os.path.join(d, "cdi")}, f)
        sg = self.start_sgpud(config=cfg)
        vol = unique_name("ovol")
        self.assertOk(sg.api("POST", "/v1/volumes", {"name": vol}), 201)
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        writer = unique_name("ow")
        self.create(self.spec(writer, [{"name": vol, "path": "/data/cache"}]), sg=sg)
        r = sg.invoke(writer, "/file?env=%s&name=w.txt" % env, method="PUT", body=b"from a container",
                      timeout=120)
        self.assertEqual(r.status, 200, r.body)
        with open(os.path.join(sg.data_dir, "volumes", vol, "w.txt"), "rb") as f:
            self.assertEqual(f.read(), b"from a container")
        # The variable is the path inside the container.
        r = sg.invoke(writer, "/file?path=/data/cache/w.txt", raw=True)
        self.assertEqual((r.status, r.body), (200, b"from a container"))
        reader = unique_name("or")
        self.create(self.spec(reader, [{"name": vol, "path": "/weights", "read_only": True}]), sg=sg)
        r = sg.invoke(reader, "/file?env=%s&name=w.txt" % env, raw=True, timeout=120)
        self.assertEqual((r.status, r.body), (200, b"from a container"))
        r = sg.invoke(reader, "/file?env=%s&name=x.txt" % env, method="PUT", body=b"x")
        self.assertEqual(r.status, 403, r.body)
        self.assertIn("EROFS", json.dumps(r.body))
        self.assertFalse(os.path.exists(os.path.join(sg.data_dir, "volumes", vol, "x.txt")))
        self.assertError(sg.api("DELETE", "/v1/volumes/%s" % vol), 409, code="in_use")


class SlurmVolumeTest(test_slurm.SlurmCase):
    """A slurm worker finds a named volume in the slurm directory the nodes share
    (skipped where the one-machine Slurm cluster of test_slurm.py cannot start)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        test_slurm.setUpModule()  # starts the cluster, or says why it cannot

    def test_slurm_worker_writes_the_shared_volume_dir(self):
        sg, _ = self.start_slurm_sgpud()
        vol = unique_name("svol")
        self.assertOk(sg.api("POST", "/v1/volumes", {"name": vol}), 201)
        shared = os.path.join(sg.data_dir, "slurm", "volumes", vol)
        self.assertTrue(os.path.isdir(shared), "the volume's slurm directory is made at create")
        name = unique_name("sv")
        self.create(test_slurm.slurm_spec(name, volumes=[{"name": vol, "path": "/data"}]), sg=sg)
        env = "SGPU_VOLUME_" + vol.upper().replace("-", "_")
        r = sg.invoke(name, "/file?env=%s&name=s.txt" % env, method="PUT", body=b"from slurm", timeout=120)
        self.assertEqual(r.status, 200, r.body)
        with open(os.path.join(shared, "s.txt"), "rb") as f:
            self.assertEqual(f.read(), b"from slurm")

if __name__ == "__main__":
    unittest.main()
