"""API keys: create, list, revoke; scopes checked on every route (the route x scope
table); keys limited to endpoints; per-key rate limit; expiry; hashes only in the
store; the `sgpu keys` command."""

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import time
import unittest

from harness import (SGPU, SGPUD, SgpudTestCase, echo_spec, error_of, require_binaries, scaled,
                     unique_name, wait_for)

SCOPES = ("admin", "deploy", "invoke", "read")
SECRET = re.compile(r"^sgpu_[0-9a-f]{64}$")

# The route x scope table: every route sgpud registers (as `sgpud --list-routes`
# prints it: methods, pattern, scopes granted besides admin) with a path to call it
# on. A route added to sgpud without a row here fails test_every_registered_route_
# has_a_row; a row is
#     ("METHODS", "PATTERN", "SCOPES"): "EXAMPLE PATH",
# where SCOPES is "public", or the scopes besides admin joined by "|" in the order
# deploy|invoke|read ("admin" alone for admin-only routes). Example paths name things
# that do not exist (endpoint "ghost"), so that no call changes anything: a granted
# call gets 404/400/422, never 401/403.
ROUTES = {
    ("ANY", "/healthz", "public"): "/healthz",
    ("ANY", "/", "public"): "/",
    ("ANY", "/index.html", "public"): "/index.html",
    ("ANY", "/console/*", "public"): "/console/app.js",
    ("ANY", "/worker/*", "public"): "/worker/ghost/job-take/w-ghost",
    ("GET", "/v1/endpoints", "deploy|read"): "/v1/endpoints",
    ("POST", "/v1/endpoints", "deploy"): "/v1/endpoints",
    ("GET", "/v1/endpoints/{endpoint}", "deploy|read"): "/v1/endpoints/ghost",
    ("PUT|DELETE|PATCH", "/v1/endpoints/{endpoint}", "deploy"): "/v1/endpoints/ghost",
    ("GET", "/v1/endpoints/{endpoint}/logs", "deploy|read"): "/v1/endpoints/ghost/logs",
    ("GET", "/v1/endpoints/{endpoint}/series", "deploy|read"): "/v1/endpoints/ghost/series",
    ("GET", "/v1/endpoints/{endpoint}/versions", "deploy|read"): "/v1/endpoints/ghost/versions",
    ("POST", "/v1/endpoints/{endpoint}/rollback", "deploy"): "/v1/endpoints/ghost/rollback",
    ("GET", "/v1/endpoints/{endpoint}/workers", "deploy|read"): "/v1/endpoints/ghost/workers",
    ("DELETE", "/v1/endpoints/{endpoint}/workers/{id}", "deploy"): "/v1/endpoints/ghost/workers/w-1",
    ("GET", "/v1/endpoints/{endpoint}/jobs", "deploy|read"): "/v1/endpoints/ghost/jobs",
    ("GET", "/v1/images", "deploy|read"): "/v1/images",
    ("POST", "/v1/images", "deploy"): "/v1/images",
    ("DELETE", "/v1/images/{ref*}", "deploy"): "/v1/images/127.0.0.1:9/ghost:1",
    ("GET|POST", "/v1/registry-auths", "deploy"): "/v1/registry-auths",
    ("GET|PUT|DELETE", "/v1/registry-auths/{name}", "deploy"): "/v1/registry-auths/ghost",
    ("GET", "/v1/secrets", "deploy"): "/v1/secrets",
    ("GET|PUT|DELETE", "/v1/secrets/{name}", "deploy"): "/v1/secrets/ghost",
    ("GET", "/v1/volumes", "deploy|read"): "/v1/volumes",
    ("POST", "/v1/volumes", "deploy"): "/v1/volumes",
    ("GET", "/v1/volumes/{name}", "deploy|read"): "/v1/volumes/ghost",
    ("DELETE", "/v1/volumes/{name}", "deploy"): "/v1/volumes/ghost",
    ("POST", "/v1/volumes/{name}/files", "deploy"): "/v1/volumes/ghost/files",
    ("GET", "/v1/nodes", "read"): "/v1/nodes",
    ("GET", "/v1/usage", "deploy|read"): "/v1/usage",
    ("GET", "/v1/api-keys", "admin"): "/v1/api-keys",
    ("POST", "/v1/api-keys", "admin"): "/v1/api-keys",
    ("DELETE", "/v1/api-keys/{name}", "admin"): "/v1/api-keys/ghost",
    ("GET", "/v1/openapi.yaml", "deploy|invoke|read"): "/v1/openapi.yaml",
    ("ANY", "/e/{endpoint}/*", "invoke"): "/e/ghost/x",
    ("ANY", "/v2/{endpoint}/*", "invoke"): "/v2/ghost/run",
    ("GET", "/metrics", "read"): "/metrics",
}
# Routes open to a key limited to endpoints without naming one: lists filtered to them.
LISTS_ENDPOINTS = {("GET", "/v1/endpoints", "deploy|read")}


def registered_routes():
    """(methods, pattern, scopes) -> flags of every route sgpud serves."""
    out = subprocess.run([SGPUD, "--list-routes"], capture_output=True, text=True, check=True,
                         timeout=scaled(30)).stdout
    routes = {}
    for line in out.splitlines():
        cells = line.split("\t")
        routes[tuple(cells[:3])] = cells[3:]
    return routes


def methods_of(row):
    """The methods to call a row with (ANY: GET)."""
    return ["GET"] if row[0] == "ANY" else row[0].split("|")


def granted(row, scope):
    return row[2] == "public" or scope == "admin" or scope in row[2].split("|")


class KeysTestCase(SgpudTestCase):
    SHARED = {"gpus": "a100:4"}

    def make_key(self, scopes, sg=None, **fields):
        sg = sg or self.sg
        name = fields.pop("name", None) or unique_name("key")
        body = dict(name=name, scopes=list(scopes), **fields)
        resp = sg.api("POST", "/v1/api-keys", body)
        self.assertOk(resp, 201)
        self.addCleanup(sg.api, "DELETE", "/v1/api-keys/" + name)
        return name, resp.body["key"]

    def call(self, method, path, key, sg=None):
        body = {} if method in ("POST", "PUT", "PATCH") else None
        return (sg or self.sg).api(method, path, body=body, key=key)

    def list_keys(self, sg=None):
        return self.assertOk((sg or self.sg).api("GET", "/v1/api-keys"))["api_keys"]


class RouteScopeTableTest(KeysTestCase):
    def test_every_registered_route_has_a_row(self):
        routes = registered_routes()
        missing = sorted(set(routes) - set(ROUTES))
        self.assertFalse(missing, "routes registered without a row in ROUTES (decide their scope "
                         "and add a row): %r" % missing)
        stale = sorted(set(ROUTES) - set(routes))
        self.assertFalse(stale, "rows of ROUTES that sgpud does not register: %r" % stale)
        lists = {r for r, flags in routes.items() if "lists-endpoints" in flags}
        self.assertEqual(lists, LISTS_ENDPOINTS)

    def test_each_route_with_a_key_of_each_scope(self):
        keys = {"admin": self.sg.key}
        for scope in SCOPES[1:]:
            keys[scope] = self.make_key([scope])[1]
        for row, path in sorted(ROUTES.items()):
            for method in methods_of(row):
                what = "%s %s" % (method, path)
                resp = self.call(method, path, None)
                if row[2] == "public":
                    # served alike with and without a key (/worker/ checks its own token)
                    with_key = self.call(method, path, self.sg.key)
                    self.assertEqual(resp.status, with_key.status, what)
                    self.assertNotEqual(error_of(resp).get("message"),
                                        "missing or wrong API key (Authorization: Bearer <key>)", what)
                    continue
                self.assertError(resp, 401, "unauthorized", msg=what + " without a key")
                self.assertError(self.call(method, path, "sgpu_" + "0" * 64), 401, "unauthorized",
                                 msg=what + " with an unknown key")
                for scope, key in keys.items():
                    resp = self.call(method, path, key)
                    ctx = "%s with a %s key" % (what, scope)
                    if granted(row, scope):
                        self.assertNotIn(resp.status, (401, 403), "%s: %d %r" % (ctx, resp.status, resp.body))
                    else:
                        self.assertError(resp, 403, "forbidden", msg=ctx)
                        needed = [s for s in row[2].split("|")]
                        for s in needed:
                            self.assertIn('"%s"' % s, error_of(resp)["message"], ctx)

    def test_key_limited_to_endpoints_sees_only_those(self):
        """A key with every scope but admin, limited to one endpoint: routes about
        another endpoint and routes about no endpoint are 403, lists are filtered."""
        mine, other = unique_name("mine"), unique_name("other")
        self.create(echo_spec(mine))
        self.create(echo_spec(other))
        _, key = self.make_key(["deploy", "invoke", "read"], endpoints=[mine])
        for row, path in sorted(ROUTES.items()):
            if row[2] in ("public",):
                continue
            for method in methods_of(row):
                ctx = "%s %s" % (method, path)
                resp = self.call(method, path, key)
                if row in LISTS_ENDPOINTS:
                    self.assertNotIn(resp.status, (401, 403), ctx)
                else:  # about "ghost", or about no endpoint, or admin-only
                    self.assertError(resp, 403, "forbidden", msg=ctx)
        listed = [e["name"] for e in self.assertOk(self.sg.api("GET", "/v1/endpoints", key=key))["endpoints"]]
        self.assertEqual(listed, [mine])
        self.assertOk(self.sg.api("GET", "/v1/endpoints/%s/workers" % mine, key=key))
        self.assertError(self.sg.api("GET", "/v1/endpoints/%s" % other, key=key), 403, "forbidden")
        # the admin key still sees both
        names = self.sg.list_names()
        self.assertIn(mine, names)
        self.assertIn(other, names)


class KeysTest(KeysTestCase):
    def test_invoke_only_key_limited_to_one_endpoint(self):
        """The acceptance: an invoke-only key limited to one endpoint invokes it and gets
        403 on every other route and endpoint."""
        mine, other = unique_name("inv"), unique_name("inv-other")
        self.create(echo_spec(mine))
        self.create(echo_spec(other))
        _, key = self.make_key(["invoke"], endpoints=[mine])
        resp = self.sg.invoke(mine, "/infer", body="hello", key=key, timeout=60)
        self.assertEqual(resp.status, 200, resp.body)
        self.assertError(self.sg.invoke(other, "/infer", body="hello", key=key), 403, "forbidden")
        self.assertError(self.sg.api("POST", "/v2/%s/run" % other, body={"input": {}}, key=key), 403,
                         "forbidden")
        for row, path in sorted(ROUTES.items()):
            if row[2] == "public":
                continue
            for method in methods_of(row):
                path_mine = path.replace("ghost", mine) if row[2] != "invoke" else path
                for p in {path, path_mine}:
                    resp = self.call(method, p, key)
                    self.assertError(resp, 403, "forbidden", msg="%s %s" % (method, p))
        # its own endpoint again, through the job API: not 403 (not an async endpoint: 409)
        resp = self.sg.api("POST", "/v2/%s/run" % mine, body={"input": {}}, key=key)
        self.assertEqual(resp.status, 409, resp.body)

    def test_wrong_scope_names_the_scope_needed(self):
        _, key = self.make_key(["read"])
        resp = self.sg.api("POST", "/v1/endpoints", body=echo_spec(unique_name("x")), key=key)
        self.assertError(resp, 403, "forbidden")
        self.assertIn('"deploy"', error_of(resp)["message"])
        resp = self.sg.api("GET", "/v1/api-keys", key=key)
        self.assertError(resp, 403, "forbidden")
        self.assertIn('"admin"', error_of(resp)["message"])
        self.assertOk(self.sg.api("GET", "/v1/nodes", key=key))

    def test_create_list_and_revoke(self):
        name, secret = self.make_key(["read", "invoke"], endpoints=["a", "b"],
                                     rate_limit={"requests_per_s": 100, "burst": 200},
                                     expires_at="2099-01-01T00:00:00Z")
        self.assertRegex(secret, SECRET)
        listed = {k["name"]: k for k in self.list_keys()}
        k = listed[name]
        self.assertEqual(sorted(k["scopes"]), ["invoke", "read"])
        self.assertEqual(k["endpoints"], ["a", "b"])
        self.assertTrue(secret.startswith(k["prefix"]), k)
        self.assertGreaterEqual(len(k["prefix"]), len("sgpu_") + 8)
        self.assertIsNone(k["last_used_at"])
        self.assertTrue(k["expires_at"].startswith("2099-01-01T00:00:00"), k)
        self.assertEqual(k["rate_limit"], {"requests_per_s": 100, "burst": 200})
        self.assertIsNotNone(k["created_at"])
        self.assertNotIn("key", k)
        # the listing never shows a secret or a hash
        raw = self.sg.api("GET", "/v1/api-keys", raw=True).body.decode()
        self.assertNotIn(secret, raw)
        self.assertNotIn(secret[len(k["prefix"]):], raw)
        self.assertNotIn(hashlib.sha256(secret.encode()).hexdigest(), raw)
        # use, then last_used is set
        self.assertOk(self.sg.api("GET", "/v1/endpoints", key=secret))
        k = {k["name"]: k for k in self.list_keys()}[name]
        self.assertIsNotNone(k["last_used_at"])
        # revocation takes effect on the next request
        self.assertOk(self.sg.api("DELETE", "/v1/api-keys/" + name))
        self.assertError(self.sg.api("GET", "/v1/endpoints", key=secret), 401, "unauthorized")
        self.assertError(self.sg.api("DELETE", "/v1/api-keys/" + name), 404, "not_found")
        self.assertNotIn(name, [k["name"] for k in self.list_keys()])

    def test_bad_requests(self):
        name, _ = self.make_key(["read"])
        cases = [
            ({"name": "Bad_Name", "scopes": ["read"]}, "name"),
            ({"name": "k-x", "scopes": []}, "scopes"),
            ({"name": "k-x", "scopes": ["root"]}, "scopes"),
            ({"name": "k-x", "scopes": ["admin"], "endpoints": ["a"]}, "endpoints"),
            ({"name": "k-x", "scopes": ["invoke"], "endpoints": ["Not A Name"]}, "endpoints"),
            ({"name": "k-x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
            ({"name": "k-x", "scopes": ["read"], "expires_at": "tomorrow"}, "expires_at"),
            ({"name": "k-x", "scopes": ["read"], "rate_limit": {"requests_per_s": 0}}, "rate_limit"),
            ({"name": "k-x", "scopes": ["read"], "rate_limit": {"requests_per_s": 1, "burst": 0}},
             "rate_limit"),
            ({"name": "k-x", "scopes": ["read"], "secret": "mine"}, "secret"),
        ]
        for body, field in cases:
            self.assertError(self.sg.api("POST", "/v1/api-keys", body), 422, "invalid_field", field=field,
                             msg=json.dumps(body))
        self.assertError(self.sg.api("POST", "/v1/api-keys", {"name": name, "scopes": ["read"]}), 409,
                         "conflict")

    def test_rate_limited_key_gets_429_with_retry_after(self):
        name, key = self.make_key(["read"], rate_limit={"requests_per_s": 0.01, "burst": 2})
        statuses = [self.sg.api("GET", "/v1/nodes", key=key).status for _ in range(2)]
        self.assertEqual(statuses, [200, 200])
        resp = self.sg.api("GET", "/v1/nodes", key=key)
        self.assertError(resp, 429, "rate_limited")
        retry = resp.headers.get("Retry-After")
        self.assertIsNotNone(retry, resp.headers)
        self.assertRegex(retry, r"^[0-9]+$")
        self.assertGreaterEqual(int(retry), 1)
        # another key and the admin key are not limited by it
        self.assertOk(self.sg.api("GET", "/v1/nodes"))
        metrics = self.assertOk(self.sg.api("GET", "/metrics", raw=True)).decode()
        m = re.search(r'^sgpu_api_key_rate_limited_total\{key="%s"\} (\d+)$' % name, metrics, re.M)
        self.assertIsNotNone(m, metrics[-2000:])
        self.assertGreaterEqual(int(m.group(1)), 1)
        m = re.search(r'^sgpu_api_key_requests_total\{key="%s"\} (\d+)$' % name, metrics, re.M)
        self.assertGreaterEqual(int(m.group(1)), 3)

    def test_expired_key_gets_401(self):
        expires = int(time.time() * 1000) + 1000
        _, key = self.make_key(["read"], expires_at=expires)
        # no sleeping: poll until the key has expired (it expires within a second)
        wait_for(lambda: self.sg.api("GET", "/v1/nodes", key=key).status == 401, timeout=10,
                 message="the key to expire")
        resp = self.sg.api("GET", "/v1/nodes", key=key)
        self.assertError(resp, 401, "unauthorized")
        self.assertIn("expired", error_of(resp)["message"])


    def read_to_end(self, stream, timeout=10):
        """Reads stream until its connection ends (a cut chunked answer counts);
        fails if it is still open after `timeout` (scaled) seconds."""
        deadline = time.monotonic() + scaled(timeout)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or stream.read_some(timeout=left / scaled(1)) == b"":
                    break
        except (http.client.IncompleteRead, ConnectionError):
            return
        except socket.timeout:
            self.fail("the stream is still open after %.0f s" % scaled(timeout))
        self.assertLess(time.monotonic(), deadline, "the stream is still open")

    def test_revoking_a_key_ends_the_streams_it_opened(self):
        ep = unique_name("keys-rv")
        self.sg.create(echo_spec(ep))
        self.addCleanup(self.sg.try_delete, ep)
        name, secret = self.make_key(["read"])
        path = "/v1/endpoints/%s/logs?follow=1&stream=event" % ep
        with self.sg.stream("GET", path, key=secret) as mine, self.sg.stream("GET", path) as other:
            self.assertEqual(mine.status, 200)
            self.assertEqual(other.status, 200)
            self.assertOk(self.sg.api("DELETE", "/v1/api-keys/" + name))
            self.read_to_end(mine)
            # a stream opened with another key goes on: a cold start's events reach it
            self.assertOk(self.sg.api("POST", "/e/%s/x" % ep, body={}))
            while True:
                line = other.readline(timeout=10)
                self.assertIsNotNone(line, "the admin key's stream ended too")
                if line.strip() and "scale up" in json.loads(line)["line"]:
                    break
        self.assertIn("open requests made with it ended: 1", self.sg.log_text())

    def test_an_expiring_key_ends_the_streams_it_opened(self):
        ep = unique_name("keys-exp")
        self.sg.create(echo_spec(ep))
        self.addCleanup(self.sg.try_delete, ep)
        _, secret = self.make_key(["read"], expires_at=int(time.time() * 1000) + int(scaled(2) * 1000))
        with self.sg.stream("GET", "/v1/endpoints/%s/logs?follow=1" % ep, key=secret) as mine:
            self.assertEqual(mine.status, 200)
            self.read_to_end(mine, timeout=30)


class KeyStoreTest(KeysTestCase):
    SHARED = None

    def test_store_holds_only_hashes_and_keys_survive_restart(self):
        sg = self.start_sgpud(gpus="a100:1")
        name, secret = self.make_key(["read"], sg=sg)
        self.assertOk(sg.api("GET", "/v1/nodes", key=secret))
        digest = hashlib.sha256(secret.encode()).digest()

        def store_bytes():
            data = b""
            for suffix in ("", "-wal"):
                path = os.path.join(sg.data_dir, "sgpu.db" + suffix)
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        data += f.read()
            return data

        wait_for(lambda: digest in store_bytes(), timeout=10, message="the key's hash in the store")
        data = store_bytes()
        self.assertNotIn(secret.encode(), data)
        self.assertNotIn(secret[len("sgpu_"):].encode(), data)
        sg.restart()
        # the key works after a restart, and its last use was written
        self.assertOk(sg.api("GET", "/v1/nodes", key=secret))
        k = {k["name"]: k for k in self.list_keys(sg)}[name]
        self.assertIsNotNone(k["last_used_at"])
        data = store_bytes()
        self.assertNotIn(secret.encode(), data)
        self.assertNotIn(secret[len("sgpu_"):].encode(), data)
        # revoked keys stay revoked across a restart
        self.assertOk(sg.api("DELETE", "/v1/api-keys/" + name))
        sg.restart()
        self.assertError(sg.api("GET", "/v1/nodes", key=secret), 401, "unauthorized")
        self.assertNotIn(name, [k["name"] for k in self.list_keys(sg)])


class KeysCliTest(KeysTestCase):
    @classmethod
    def setUpClass(cls):
        require_binaries(SGPU)
        super().setUpClass()

    def cli(self, *args, key=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGPU_")}
        env["SGPU_URL"] = self.sg.base_url
        env["SGPU_API_KEY"] = key or self.sg.key
        return subprocess.run([SGPU] + list(args), capture_output=True, text=True, env=env,
                              timeout=scaled(30))

    def test_create_list_revoke(self):
        ep = unique_name("cli-ep")
        name = unique_name("cli-key")
        proc = self.cli("keys", "create", name, "--scope", "invoke", "--scope", "read",
                        "--endpoint", ep, "--expires", "30d", "--rate", "50")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        secret = proc.stdout.strip()
        self.assertRegex(secret, SECRET)
        k = {k["name"]: k for k in self.list_keys()}[name]
        self.assertEqual(sorted(k["scopes"]), ["invoke", "read"])
        self.assertEqual(k["endpoints"], [ep])
        self.assertEqual(k["rate_limit"], {"requests_per_s": 50, "burst": 50})
        self.assertIsNotNone(k["expires_at"])
        proc = self.cli("keys", "list")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(name, proc.stdout)
        self.assertIn(k["prefix"], proc.stdout)
        self.assertNotIn(secret, proc.stdout)
        self.assertIn("PREFIX", proc.stdout.splitlines()[0])
        # the new key lists endpoints it may see (none exists yet)
        proc = self.cli("endpoint", "list", key=secret)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc = self.cli("keys", "list", key=secret)
        self.assertEqual(proc.returncode, 4)  # refused: 403
        self.assertIn("admin", proc.stderr)
        proc = self.cli("keys", "revoke", name)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn(name, [k["name"] for k in self.list_keys()])
        proc = self.cli("keys", "list", key=secret)
        self.assertEqual(proc.returncode, 4)  # refused: 401
        # usage errors
        self.assertEqual(self.cli("keys", "create", "x").returncode, 2)
        self.assertEqual(self.cli("keys", "frobnicate").returncode, 2)
        self.assertEqual(self.cli("keys", "list", "--scope", "read").returncode, 2)


if __name__ == "__main__":
    unittest.main()
