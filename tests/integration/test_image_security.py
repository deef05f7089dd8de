"""Image pulls from a hostile registry: crafted layers that try to reach
outside the layer directory, blobs larger than they say, decompression bombs,
redirects to another origin and a token realm on another host over plain
HTTP. The registry is crafted_registry.CraftedRegistry on loopback; sgpud pulls
through POST /v1/images. Escapes aim at a canary directory outside the data
dir, which must stay exactly as it was."""

import gzip
import json
import os
import shutil
import tempfile
import unittest

from crafted_registry import (CraftedRegistry, directory, file, hardlink, layer, symlink, tar_bytes,
                              whiteout)
from harness import SgpudError, SgpudTestCase, unique_name


def snapshot(top):
    """Every name under top with its type, mode, link count, size, device and
    xattrs (symlinks not followed), and its parent's listing."""
    out = {"..": sorted(os.listdir(os.path.dirname(top)))}
    for root, dirs, files in os.walk(top):
        for name in [""] + dirs + files:
            p = os.path.join(root, name) if name else root
            st = os.lstat(p)
            try:
                xattrs = sorted(os.listxattr(p, follow_symlinks=False))
            except OSError:
                xattrs = []
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_nlink, st.st_size, st.st_rdev, xattrs)
    return out


class ImageSecurityTest(SgpudTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.reg = CraftedRegistry()
        cls.other = CraftedRegistry()  # another origin: redirect targets and token realms

    @classmethod
    def tearDownClass(cls):
        cls.reg.stop()
        cls.other.stop()
        super().tearDownClass()

    def setUp(self):
        self.outside = tempfile.mkdtemp(prefix="sgpu-canary-")
        self.canary = os.path.join(self.outside, "canary")
        os.makedirs(os.path.join(self.canary, "target", "sub"))
        with open(os.path.join(self.canary, "target", "keep"), "w") as f:
            f.write("keep")
        with open(os.path.join(self.canary, "secret"), "w") as f:
            f.write("secret")
        self.addCleanup(shutil.rmtree, self.outside, True)

    def start(self, **cfg):
        path = os.path.join(self.outside, "config-%s.json" % unique_name("c"))
        cfg.setdefault("insecure_registries", [self.reg.addr, self.other.addr])
        with open(path, "w") as f:
            json.dump(cfg, f)
        return self.start_sgpud(config=path)

    def pull(self, sg, image, body=None):
        """Asks for image and waits for the pull to end: ("cached", image) or ("failed", error)."""
        r = sg.api("POST", "/v1/images", dict(body or {}, image=image))
        self.assertIn(r.status, (200, 202), r.body)

        def ended():
            j = self.assertOk(sg.api("GET", "/v1/images"))
            for i in j["images"]:
                if i["image"] == image:
                    return ("cached", i)
            for p in j["pulls"]:
                if p["image"] == image and p["state"] == "failed":
                    return ("failed", p["error"])
            return None
        return self.wait_for(ended, 60, message="pull of %s ended" % image)

    def assertFailed(self, result, *fragments):
        state, detail = result
        self.assertEqual(state, "failed", detail)
        for frag in fragments:
            self.assertIn(frag, detail)

    def assertNoLeftovers(self, sg):
        images = os.path.join(sg.data_dir, "images")
        for sub in ("tmp", "blobs"):
            self.assertEqual(os.listdir(os.path.join(images, sub)), [], "%s/%s" % (images, sub))

    def test_layer_escapes_leave_the_host_untouched(self):
        sg = self.start()
        c = self.canary
        deep = "../" * 40 + c.lstrip("/")
        cases = [
            ("symlink-whiteout", [symlink("evil", c), whiteout("evil/.wh.target")]),
            ("symlink-whiteout-file", [symlink("evil", c), whiteout("evil/.wh.secret")]),
            ("relative-symlink-whiteout", [symlink("up", "../../../../../../../../../../../../../../.." + c),
                                           whiteout("up/.wh.target")]),
            ("symlink-opaque", [symlink("evil2", c), whiteout("evil2/a/b/.wh..wh..opq")]),
            ("symlink-opaque-on-link", [symlink("evil3", c), whiteout("evil3/.wh..wh..opq")]),
            ("whiteout-dotdot", [directory("a"), whiteout("a/.wh...")]),
            ("whiteout-dotdot-top", [whiteout(".wh...")]),
            ("hardlink-absolute", [hardlink("hl", c + "/secret")]),
            ("hardlink-dotdot", [hardlink("hl", deep + "/secret")]),
            ("hardlink-through-symlink", [symlink("lnk", c), hardlink("h", "lnk/secret")]),
            ("file-below-symlink", [symlink("evil", c), file("evil/created", b"x")]),
            ("dir-below-symlink", [symlink("evil", c), directory("evil/newdir")]),
            ("symlink-chain", [symlink("b", c), symlink("a", "b"), file("a/chain", b"x")]),
            ("dotdot", [file(deep + "/dotdot", b"x")]),
            ("absolute", [file(c + "/abs", b"x")]),
            ("symlink-replacing-dir", [directory("d", 0o777), symlink("d", c)]),
            ("whiteout-then-symlink", [directory("d", 0o777), whiteout(".wh.d"), symlink("d", c)]),
        ]
        before = snapshot(c)
        results = {}
        for name, entries in cases:
            image = self.reg.add_image("escape/" + name, [layer(entries)])
            results[name] = self.pull(sg, image)
        for name, result in results.items():
            with self.subTest(case=name):
                # Refused with a clear error, or (absolute names, replaced
                # entries) unpacked harmlessly inside the layer.
                if name in ("absolute", "symlink-replacing-dir", "whiteout-then-symlink"):
                    self.assertIn(result[0], ("cached", "failed"), result)
                else:
                    self.assertFailed(result, "refused")
        self.assertEqual(snapshot(c), before, "the canary outside the data dir changed")
        self.assertNoLeftovers(sg)
        self.assertTrue(sg.alive())

    def test_config_larger_than_its_descriptor_stops_early(self):
        sg = self.start()
        total = 256 << 20
        image = self.reg.add_image("big/config", [layer([file("f", b"x")])], config=b'{"os":"linux"}',
                                   config_stream=total)
        self.assertFailed(self.pull(sg, image), "larger than")
        (cd,) = [d for d, n in self.reg.streams.items() if n == total]
        sent = self.reg.stream_sent.get(cd, 0)
        # stopped as soon as the 14 bytes were exceeded, not after 256 MiB
        self.assertLess(sent, 32 << 20, "the registry sent %d bytes of a 14-byte config" % sent)
        self.assertNoLeftovers(sg)

    def test_config_over_the_bound_is_not_fetched(self):
        sg = self.start()
        image = self.reg.add_image("big/declared", [layer([file("f", b"x")])], config_size=5 << 20)
        self.assertFailed(self.pull(sg, image), "config blob", "refused")
        self.assertFalse([r for r in self.reg.requests_for("/v2/big/declared/blobs/")],
                         "a config over the bound was requested")

    def test_manifest_over_the_bound(self):
        sg = self.start()
        image = self.reg.add_image("big/manifest", [layer([file("f", b"x")])], manifest_padding=5 << 20)
        self.assertFailed(self.pull(sg, image), "manifest", "over")
        self.assertFalse(self.reg.requests_for("/v2/big/manifest/blobs/"))

    def test_limit_keys_are_checked(self):
        for key in ("image_max_layer_bytes", "image_max_unpacked_bytes"):
            with self.subTest(key=key):
                with self.assertRaises(SgpudError) as cm:
                    self.start(**{key: -1})
                self.assertIn(key, str(cm.exception))

    def test_decompression_bomb_fails_the_pull(self):
        sg = self.start(image_max_layer_bytes=8 << 20)
        bomb = gzip.compress(tar_bytes([file("zeros", bytes(64 << 20))]), compresslevel=9, mtime=0)
        self.assertLess(len(bomb), 1 << 20)
        image = self.reg.add_image("bomb/layer", [bomb])
        self.assertFailed(self.pull(sg, image), "image_max_layer_bytes", "refused")
        layers = os.path.join(sg.data_dir, "images", "layers")
        self.assertEqual(os.listdir(layers), [], "a partial layer was left behind")
        self.assertNoLeftovers(sg)

    def test_image_total_bound(self):
        sg = self.start(image_max_layer_bytes=8 << 20, image_max_unpacked_bytes=10 << 20)
        l1 = layer([file("a", b"a" * (6 << 20))])
        l2 = layer([file("b", b"b" * (6 << 20))])
        image = self.reg.add_image("bomb/image", [l1, l2])
        self.assertFailed(self.pull(sg, image), "image_max_unpacked_bytes", "refused")
        self.assertNoLeftovers(sg)
        # one layer alone fits
        image = self.reg.add_image("bomb/one", [l1])
        self.assertEqual(self.pull(sg, image)[0], "cached")

    def test_redirect_to_plain_http_on_another_origin_is_refused(self):
        sg = self.start()
        other = self.other.addr
        image = self.reg.add_image("redirect/away", [layer([file("f", b"away")])],
                                   blob_redirect=lambda d: "http://%s/redirected/%s" % (other, d))
        for d, b in self.reg.blobs.items():
            self.other.blobs[d] = b
        self.assertFailed(self.pull(sg, image), "redirected", "refused")
        self.assertFalse(self.other.requests_for("/redirected/"), "the redirect was followed to another origin")

    def test_redirect_within_the_origin_is_followed(self):
        sg = self.start()
        addr = self.reg.addr
        image = self.reg.add_image("redirect/home", [layer([file("f", b"home")])],
                                   blob_redirect=lambda d: "http://%s/redirected/%s" % (addr, d))
        self.assertEqual(self.pull(sg, image)[0], "cached")
        self.assertTrue(self.reg.requests_for("/redirected/"))

    def test_credentials_never_go_to_a_plain_http_realm_on_another_host(self):
        sg = self.start()
        image = self.reg.add_image("auth/realm", [layer([file("f", b"x")])],
                                   auth=("bearer", "http://%s/token" % self.other.addr))
        name = unique_name("cred")
        r = sg.api("POST", "/v1/registry-auths", {"name": name, "registry": self.reg.addr, "username": "alice",
                                                   "password": "s3cret-password"})
        self.assertIn(r.status, (200, 201), r.body)
        self.assertFailed(self.pull(sg, image, {"registry_auth": name}), "token realm", "refused")
        self.assertFalse([r for r in self.other.requests if r[2]], "credentials reached the other host")
        self.assertFalse(self.other.requests_for("auth%2Frealm"), "the plain-HTTP realm was asked with credentials")

    def test_anonymous_token_from_a_realm_on_another_host(self):
        sg = self.start()
        image = self.reg.add_image("auth/anon", [layer([file("f", b"anon")])],
                                   auth=("bearer", "http://%s/token" % self.other.addr))
        self.assertEqual(self.pull(sg, image)[0], "cached")
        self.assertTrue(self.other.requests_for("/token"))
        self.assertFalse([r for r in self.other.requests if r[2]], "an Authorization header reached the realm")


if __name__ == "__main__":
    unittest.main()
