"""Control API: authentication, endpoint CRUD, spec validation, nodes."""

import json
import os
import socket
import sqlite3
import stat
import threading
import unittest

from harness import (BUILD_DIR, DELETE, ECHO_WORKER, RFC3339_MS, SgpudTestCase, echo_spec, error_of,
                     http_request, unique_name, wait_for)


class AuthTest(SgpudTestCase):
    SHARED = {"gpus": "a100:4"}

    def test_healthz_needs_no_key(self):
        resp = self.sg.api("GET", "/healthz", key=None)
        self.assertEqual(resp.status, 200, resp.body)
        # a key, even a wrong one, does not hurt
        self.assertEqual(self.sg.api("GET", "/healthz", key="wrong").status, 200)

    def test_admin_key_and_url_files(self):
        key_path = os.path.join(self.sg.data_dir, "admin.key")
        mode = stat.S_IMODE(os.stat(key_path).st_mode)
        self.assertEqual(mode, 0o600, "admin.key mode is %o" % mode)
        self.assertGreaterEqual(len(self.sg.key), 16, "admin key looks too short")
        with open(os.path.join(self.sg.data_dir, "url")) as f:
            url = f.read().strip()
        self.assertIn("127.0.0.1:%d" % self.sg.port, url)

    def test_every_route_needs_the_key(self):
        name = unique_name("auth")
        self.create(echo_spec(name))
        spec = echo_spec(name)
        routes = [
            ("GET", "/v1/endpoints", None),
            ("POST", "/v1/endpoints", echo_spec(unique_name("auth-new"))),
            ("GET", "/v1/endpoints/%s" % name, None),
            ("PUT", "/v1/endpoints/%s" % name, spec),
            ("DELETE", "/v1/endpoints/%s" % name, None),
            ("GET", "/v1/endpoints/%s/workers" % name, None),
            ("DELETE", "/v1/endpoints/%s/workers/w-doesnotexist" % name, None),
            ("GET", "/v1/endpoints/%s/logs" % name, None),
            ("GET", "/v1/endpoints/%s/logs?follow=1" % name, None),
            ("GET", "/v1/nodes", None),
            ("GET", "/v1/endpoints/nosuchendpoint", None),
            ("GET", "/e/%s/infer" % name, None),
            ("POST", "/e/%s/infer" % name, {"x": 1}),
            ("GET", "/e/%s/" % name, None),
            ("GET", "/e/nosuchendpoint/infer", None),
        ]
        bad_auth = [
            ("no key", None, {}),
            ("wrong key", "wrong-" + self.sg.key, {}),
            ("key prefix", self.sg.key[:-1], {}),
            ("empty key", "", {}),
            ("basic scheme", None, {"Authorization": "Basic " + self.sg.key}),
            ("no scheme", None, {"Authorization": self.sg.key}),
        ]
        for method, path, body in routes:
            for label, key, headers in bad_auth:
                with self.subTest(route="%s %s" % (method, path), auth=label):
                    resp = self.sg.api(method, path, body=body, key=key, headers=headers,
                                       timeout=10)
                    self.assertError(resp, 401, "unauthorized")
                    self.assertTrue(resp.headers.get("WWW-Authenticate", "").startswith("Bearer"),
                                    "WWW-Authenticate: %r" % resp.headers.get("WWW-Authenticate"))
        # nothing was changed or started by the rejected requests
        ep = self.sg.get(name)
        self.assertEqual(ep["version"], 1)
        self.assertEqual(self.sg.active_workers(name), [])
        self.assertNotIn("auth-new", " ".join(self.sg.list_names()))


class EndpointCrudTest(SgpudTestCase):
    SHARED = {"gpus": "a100:4"}

    def test_create_get_list_delete(self):
        name = unique_name("crud")
        resp = self.sg.api("POST", "/v1/endpoints", echo_spec(name))
        ep = self.assertOk(resp, 201)
        self.assertEqual(ep["name"], name)
        self.assertEqual(ep["version"], 1)
        for field in ("created_at", "updated_at"):
            self.assertRegex(ep[field], RFC3339_MS, field)
        self.assertIsInstance(ep["status"], dict)

        got = self.sg.get(name)
        self.assertEqual(got["name"], name)
        self.assertEqual(got["command"], [ECHO_WORKER])
        self.assertEqual(got["env"]["MODEL"], "tiny")
        self.assertEqual(got["created_at"], ep["created_at"])

        listing = self.assertOk(self.sg.api("GET", "/v1/endpoints"))
        self.assertIn(name, [e["name"] for e in listing["endpoints"]])

        resp = self.sg.api("DELETE", "/v1/endpoints/%s" % name)
        self.assertEqual(self.assertOk(resp), {"name": name, "deleted": True})
        self.assertError(self.sg.api("GET", "/v1/endpoints/%s" % name), 404, "not_found")
        self.assertNotIn(name, self.sg.list_names())
        self.assertError(self.sg.api("DELETE", "/v1/endpoints/%s" % name), 404, "not_found")

    def test_defaults_are_filled_in(self):
        name = unique_name("defaults")
        ep = self.create({"name": name, "command": [ECHO_WORKER]})
        self.assertEqual(ep["type"], "sync")
        self.assertEqual(ep["runtime"], "process")
        self.assertIsNone(ep.get("image"))
        self.assertEqual(ep["port"], 8000)
        self.assertEqual(ep["health"], {"path": "/health", "period_s": 2, "timeout_s": 2,
                                        "failure_threshold": 3, "startup_timeout_s": 600})
        self.assertEqual(ep["gpu"]["count"], 0)
        self.assertEqual(ep["workers"], {"min": 0, "max": 4, "idle_timeout_s": 30,
                                         "max_concurrency": 1, "request_timeout_s": 600,
                                         "max_queue": 1000, "stream_timeout_s": 3600})
        self.assertEqual(ep["scale"], {"policy": "concurrency", "value": 1, "hold_s": 0})
        st = ep["status"]
        for key in ("desired", "workers", "in_flight", "queued", "served", "crash_loop",
                    "last_error", "last_logs"):
            self.assertIn(key, st)
        self.assertEqual(st["workers"], {"starting": 0, "ready": 0, "draining": 0, "outdated": 0})
        self.assertIs(st["crash_loop"], False)
        self.assertEqual(self.sg.get(name)["workers"], ep["workers"])

    def test_duplicate_create_is_409(self):
        name = unique_name("dup")
        self.create(echo_spec(name))
        before = self.sg.list_names()
        resp = self.sg.api("POST", "/v1/endpoints", echo_spec(name, env={"MODEL": "other"}))
        self.assertError(resp, 409, "conflict")
        self.assertEqual(self.sg.list_names(), before)
        ep = self.sg.get(name)
        self.assertEqual(ep["version"], 1)
        self.assertEqual(ep["env"]["MODEL"], "tiny")

    def test_put_bumps_version(self):
        name = unique_name("put")
        ep1 = self.create(echo_spec(name))
        resp = self.sg.api("PUT", "/v1/endpoints/%s" % name,
                           echo_spec(name, env={"MODEL": "big"}, workers={"max": 3}))
        ep2 = self.assertOk(resp)
        self.assertEqual(ep2["version"], ep1["version"] + 1)
        self.assertEqual(ep2["env"]["MODEL"], "big")
        self.assertEqual(ep2["workers"]["max"], 3)
        self.assertEqual(ep2["created_at"], ep1["created_at"])
        self.assertRegex(ep2["updated_at"], RFC3339_MS)
        self.assertGreaterEqual(ep2["updated_at"], ep1["updated_at"])
        got = self.sg.get(name)
        self.assertEqual(got["version"], ep1["version"] + 1)
        self.assertEqual(got["env"]["MODEL"], "big")
        ep3 = self.assertOk(self.sg.api("PUT", "/v1/endpoints/%s" % name, echo_spec(name)))
        self.assertEqual(ep3["version"], ep1["version"] + 2)

    def test_put_naming_another_endpoint_is_409(self):
        a, b = unique_name("puta"), unique_name("putb")
        self.create(echo_spec(a))
        self.create(echo_spec(b))
        resp = self.sg.api("PUT", "/v1/endpoints/%s" % a, echo_spec(b, env={"MODEL": "x"}))
        self.assertError(resp, 409, "conflict")
        self.assertEqual(self.sg.get(a)["version"], 1)
        self.assertEqual(self.sg.get(b)["version"], 1)
        self.assertEqual(self.sg.get(b)["env"]["MODEL"], "tiny")

    def test_put_unknown_endpoint_is_404(self):
        name = unique_name("putnone")
        resp = self.sg.api("PUT", "/v1/endpoints/%s" % name, echo_spec(name))
        self.assertError(resp, 404, "not_found")
        self.assertNotIn(name, self.sg.list_names())

    def test_put_invalid_leaves_endpoint_unchanged(self):
        name = unique_name("putbad")
        self.create(echo_spec(name))
        cases = [
            (b"{not json", 400, "invalid_json", None),
            (echo_spec(name, workers={"max": "many"}), 422, "invalid_field", "workers.max"),
            (echo_spec(name, bogus=True), 422, "invalid_field", "bogus"),
        ]
        for body, status, code, field in cases:
            with self.subTest(body=body if isinstance(body, bytes) else field):
                resp = self.sg.api("PUT", "/v1/endpoints/%s" % name, body,
                                   headers={"Content-Type": "application/json"})
                self.assertError(resp, status, code, field)
                ep = self.sg.get(name)
                self.assertEqual(ep["version"], 1)
                self.assertEqual(ep["workers"]["max"], 2)

    def test_unknown_routes_and_methods(self):
        name = unique_name("routes")
        self.create(echo_spec(name))
        self.assertError(self.sg.api("GET", "/v1/nosuchthing"), 404, "not_found")
        self.assertError(self.sg.api("GET", "/v1/endpoints/nosuchendpoint"), 404, "not_found")
        self.assertError(self.sg.api("GET", "/v1/endpoints/nosuchendpoint/workers"), 404,
                         "not_found")
        self.assertError(self.sg.api("DELETE", "/v1/endpoints/%s/workers/w-nosuchworker" % name),
                         404, "not_found")
        self.assertError(self.sg.api("DELETE", "/v1/endpoints"), 405, "method_not_allowed")
        self.assertError(self.sg.api("PATCH", "/v1/endpoints", {}), 405, "method_not_allowed")
        self.assertError(self.sg.api("POST", "/v1/nodes", {}), 405, "method_not_allowed")
        self.assertError(self.sg.invoke("nosuchendpoint", "/infer", body={}), 404, "not_found")

    def test_nodes_show_declared_gpus(self):
        nodes = self.sg.nodes()
        self.assertEqual(len(nodes), 1, nodes)
        node = nodes[0]
        self.assertIsInstance(node["name"], str)
        self.assertEqual(node["gpus_total"], 4)
        self.assertEqual(node["gpus_free"], 4)
        self.assertEqual(sorted(g["index"] for g in node["gpus"]), [0, 1, 2, 3])
        for g in node["gpus"]:
            self.assertEqual(g["type"], "a100")
            self.assertEqual(g["source"], "declared")
            self.assertIsNone(g["worker"])
            self.assertIsNone(g["endpoint"])


def _big_env(n):
    return {"V%d" % i: "x" for i in range(n)}


class RuntimeTest(SgpudTestCase):
    SHARED = {}

    def test_process_worker_with_registry_auth_starts(self):
        # registry_auth names credentials for pulling images; the process
        # runtime runs no image, so a spec naming one still starts its worker
        # (sgpud did not start it, leaving an error unset, and crashed).
        name = unique_name("rt-auth")
        self.create(echo_spec(name, registry_auth="nosuchauth", workers={"min": 1, "max": 1}))
        ready = self.sg.wait_ready(name, 1)
        self.assertEqual(ready[0]["runtime"], "process")
        self.assertTrue(self.sg.alive())


class SpecValidationTest(SgpudTestCase):
    """Every bad spec gets the right 4xx with an error naming the field, and the store
    is left as it was."""

    SHARED = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.sg.create(echo_spec("existing"))

    def post_and_check(self, body, status, code, field=None, name=None):
        before = self.sg.list_names()
        headers = {"Content-Type": "application/json"}
        resp = self.sg.api("POST", "/v1/endpoints", body, headers=headers)
        self.assertError(resp, status, code, field)
        self.assertEqual(self.sg.list_names(), before, "store changed by a rejected create")
        if name:
            self.assertEqual(self.sg.api("GET", "/v1/endpoints/%s" % name).status, 404)

    def test_malformed_json_is_400(self):
        for body in [b"{", b"{\"name\": \"x\",}", b"not json at all", b"", b"[]",
                     b"[{\"name\": \"x\"}]", b"\"a string\"", b"42", b"null",
                     b"{\"name\": \"x\"} trailing", b"\xff\xfe{}"]:
            with self.subTest(body=body):
                self.post_and_check(body, 400, "invalid_json")

    def test_unknown_fields_are_422(self):
        cases = [
            ({"bogus": 1}, "bogus"),
            ({"Name": "x"}, "Name"),
            ({"workers": {"maximum": 3}}, "workers.maximum"),
            ({"health": {"interval": 1}}, "health.interval"),
            ({"gpu": {"model": "a100"}}, "gpu.model"),
            ({"scale": {"target": 1}}, "scale.target"),
        ]
        for extra, field in cases:
            with self.subTest(field=field):
                name = unique_name("unknown")
                self.post_and_check(echo_spec(name, **extra), 422, "invalid_field", field, name)

    def test_wrong_types_are_422(self):
        cases = [
            ({"name": 5}, "name"),
            ({"type": 1}, "type"),
            ({"runtime": ["process"]}, "runtime"),
            ({"image": 5}, "image"),
            ({"command": "/bin/echo-worker"}, "command"),
            ({"command": [ECHO_WORKER, 5]}, "command"),
            ({"env": ["MODEL=tiny"]}, "env"),
            ({"env": {"MODEL": 5}}, "env"),
            ({"port": "8000"}, "port"),
            ({"health": "/health"}, "health"),
            ({"health": {"path": 5}}, "health.path"),
            ({"health": {"period_s": "fast"}}, "health.period_s"),
            ({"gpu": {"type": "a100", "count": "1"}}, "gpu.count"),
            ({"gpu": {"type": 100, "count": 1}}, "gpu.type"),
            ({"workers": "many"}, "workers"),
            ({"workers": {"max": "2"}}, "workers.max"),
            ({"workers": {"max": 2.5}}, "workers.max"),
            ({"workers": {"min": True}}, "workers.min"),
            ({"workers": {"idle_timeout_s": None}}, "workers.idle_timeout_s"),
            ({"workers": {"max_queue": "10"}}, "workers.max_queue"),
            ({"scale": {"policy": 1}}, "scale.policy"),
        ]
        for override, field in cases:
            with self.subTest(field=field, override=override):
                name = unique_name("types")
                spec = echo_spec(name, **override)
                self.post_and_check(spec, 422, "invalid_field", field,
                                    name if isinstance(spec.get("name"), str) else None)

    def test_out_of_range_and_missing_are_422(self):
        cases = [
            ({"name": DELETE}, "name"),
            ({"command": DELETE}, "command"),
            ({"command": []}, "command"),
            ({"command": ["echo-worker"]}, "command"),
            ({"command": [ECHO_WORKER] + ["a"] * 64}, "command"),
            ({"env": _big_env(129)}, "env"),
            ({"env": {"BAD=NAME": "x"}}, "env"),
            ({"async": {"path": "/run"}}, "async"),
            ({"type": "bogus"}, "type"),
            ({"runtime": "oci"}, "image"),
            ({"image": "Not A Ref"}, "image"),
            ({"runtime": "bogus"}, "runtime"),
            ({"port": 0}, "port"),
            ({"port": 70000}, "port"),
            ({"gpu": {"type": "a100", "count": 17}}, "gpu.count"),
            ({"gpu": {"type": "a100", "count": -1}}, "gpu.count"),
            ({"gpu": {"count": 1}}, "gpu.type"),
            ({"workers": {"max": 0}}, "workers.max"),
            ({"workers": {"max": 1001}}, "workers.max"),
            ({"workers": {"min": -1}}, "workers.min"),
            ({"workers": {"min": 3, "max": 2}}, ("workers.min", "workers.max")),
            ({"scale": {"policy": "bogus"}}, "scale.policy"),
        ]
        for override, field in cases:
            with self.subTest(field=field, override=json.dumps(override, default=repr)[:80]):
                name = unique_name("range")
                spec = echo_spec(name, **override)
                self.post_and_check(spec, 422, "invalid_field", field,
                                    name if "name" in spec else None)

    def test_bad_names_are_422(self):
        for bad in ["Echo", "ECHO", "echo_1", "echo.1", "-echo", "echo-", "", "a" * 64,
                    "ec ho", "échо", "echo/1"]:
            with self.subTest(name=bad):
                self.post_and_check(echo_spec(bad), 422, "invalid_field", "name")

    def test_good_names_are_accepted(self):
        for good in ["a", "9", "a" * 63, "e-1-x", "0abc9"]:
            with self.subTest(name=good):
                resp = self.sg.api("POST", "/v1/endpoints", echo_spec(good))
                self.assertOk(resp, 201)
                self.assertEqual(resp.body["name"], good)
                self.assertOk(self.sg.api("DELETE", "/v1/endpoints/%s" % good))

    def test_oversize_body_is_413(self):
        name = unique_name("big")
        spec = echo_spec(name, env={"PAD": "x" * (1024 * 1024 + 10)})
        before = self.sg.list_names()
        resp = self.sg.api("POST", "/v1/endpoints", spec)
        self.assertError(resp, 413, "too_large")
        self.assertEqual(self.sg.list_names(), before)
        # the daemon is still fine afterwards
        self.assertEqual(self.sg.api("GET", "/healthz", key=None).status, 200)
        resp = self.sg.api("PUT", "/v1/endpoints/existing",
                           echo_spec("existing", env={"PAD": "y" * (2 * 1024 * 1024)}))
        self.assertError(resp, 413, "too_large")
        self.assertEqual(self.sg.get("existing")["version"], 1)

    def test_store_intact_after_rejections(self):
        self.assertIn("existing", self.sg.list_names())
        ep = self.sg.get("existing")
        self.assertEqual(ep["version"], 1)
        self.assertEqual(ep["env"]["MODEL"], "tiny")


class EndpointWriteOrderTest(SgpudTestCase):
    """Endpoint writes run on the store thread and are applied when stored: requests
    that race on one endpoint still give one answer each, in one order."""

    SHARED = {"gpus": "a100:4"}

    def _parallel(self, calls):
        """Runs each (method, path, body) at once on its own connection; the answers."""
        answers = [None] * len(calls)
        start = threading.Barrier(len(calls))

        def run(i, method, path, body):
            start.wait()
            answers[i] = self.sg.api(method, path, body, timeout=30)

        threads = [threading.Thread(target=run, args=(i,) + c) for i, c in enumerate(calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

    def test_concurrent_puts_give_unique_versions_in_order(self):
        name = unique_name("race-put")
        self.create(echo_spec(name))
        n = 12
        answers = self._parallel([("PUT", "/v1/endpoints/%s" % name,
                                   echo_spec(name, env={"MARK": str(i)})) for i in range(n)])
        for a in answers:
            self.assertEqual(a.status, 200, a.body)
        versions = sorted(a.body["version"] for a in answers)
        self.assertEqual(versions, list(range(2, n + 2)))
        for i, a in enumerate(answers):
            self.assertEqual(a.body["env"]["MARK"], str(i), "an answer shows its own spec")
        last = max(answers, key=lambda a: a.body["version"])
        ep = self.sg.get(name)
        self.assertEqual(ep["version"], n + 1)
        self.assertEqual(ep["env"]["MARK"], last.body["env"]["MARK"])
        # GET right after a 200 PUT shows that PUT or a later one
        for i in range(3):
            put = self.sg.update(name, echo_spec(name, env={"MARK": "after-%d" % i}))
            got = self.sg.get(name)
            self.assertEqual(got["version"], put["version"])
            self.assertEqual(got["env"]["MARK"], "after-%d" % i)

    def test_concurrent_creates_one_201_the_others_409(self):
        for _ in range(3):
            name = unique_name("race-create")
            self.addCleanup(self.sg.try_delete, name)
            answers = self._parallel([("POST", "/v1/endpoints", echo_spec(name, env={"MARK": str(i)}))
                                      for i in range(8)])
            statuses = sorted(a.status for a in answers)
            self.assertEqual(statuses, [201] + [409] * 7, [a.body for a in answers])
            won = next(a for a in answers if a.status == 201)
            for a in answers:
                if a.status == 409:
                    self.assertEqual(error_of(a)["code"], "conflict")
            ep = self.sg.get(name)
            self.assertEqual(ep["version"], 1)
            self.assertEqual(ep["env"]["MARK"], won.body["env"]["MARK"])

    def test_concurrent_registry_auth_creates_one_201(self):
        name = unique_name("race-auth")
        self.addCleanup(lambda: self.sg.api("DELETE", "/v1/registry-auths/%s" % name))
        answers = self._parallel([("POST", "/v1/registry-auths",
                                   {"name": name, "registry": "r%d.example" % i, "username": "u", "password": "p"})
                                  for i in range(6)])
        self.assertEqual(sorted(a.status for a in answers), [201] + [409] * 5, [a.body for a in answers])
        won = next(a for a in answers if a.status == 201)
        got = self.sg.api("GET", "/v1/registry-auths/%s" % name)
        self.assertEqual(got.status, 200, got.body)
        self.assertEqual(got.body["registry"], won.body["registry"])
        put = self.sg.api("PUT", "/v1/registry-auths/%s" % name,
                          {"registry": "after.example", "username": "u2", "password": "p2"})
        self.assertEqual(put.status, 200, put.body)
        got = self.sg.api("GET", "/v1/registry-auths/%s" % name)
        self.assertEqual((got.body["registry"], got.body["username"]), ("after.example", "u2"))
        self.assertEqual(got.body["created_at"], won.body["created_at"])
        deleted = self._parallel([("DELETE", "/v1/registry-auths/%s" % name, None)] * 3)
        self.assertEqual(sorted(a.status for a in deleted), [200, 404, 404], [a.body for a in deleted])
        self.assertEqual(self.sg.api("GET", "/v1/registry-auths/%s" % name).status, 404)

    def test_delete_racing_updates(self):
        name = unique_name("race-del")
        self.create(echo_spec(name))
        calls = [("PUT", "/v1/endpoints/%s" % name, echo_spec(name, env={"MARK": str(i)})) for i in range(4)]
        calls.insert(2, ("DELETE", "/v1/endpoints/%s" % name, None))
        answers = self._parallel(calls)
        deleted = [a for a in answers if a.body and a.body.get("deleted")]
        self.assertEqual(len(deleted), 1, [a.body for a in answers])
        for a in answers:
            self.assertIn(a.status, (200, 404), a.body)
        updated = sorted(a.body["version"] for a in answers if a.status == 200 and "version" in a.body)
        self.assertEqual(updated, list(range(2, 2 + len(updated))), "versions unique and in order")
        self.assertEqual(self.sg.api("GET", "/v1/endpoints/%s" % name).status, 404)
        # the name is free again, in the store as in memory
        self.create(echo_spec(name))
        self.assertEqual(self.sg.get(name)["version"], 1)


class EndpointWriteStoreTest(SgpudTestCase):
    """What the loop shows and what the store holds stay the same."""

    def test_client_leaving_mid_create_leaves_a_consistent_endpoint(self):
        sg = self.start_sgpud(gpus="a100:4")
        names = [unique_name("left") for _ in range(8)]
        for name in names:
            body = json.dumps(echo_spec(name)).encode()
            s = socket.create_connection(("127.0.0.1", sg.port), timeout=10)
            s.sendall(b"POST /v1/endpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % (sg.key.encode(), len(body)) + body)
            s.close()
        # a second create of each name tells whether the first one took (or is taking) it
        for name in names:
            resp = sg.api("POST", "/v1/endpoints", echo_spec(name))
            self.assertIn(resp.status, (201, 409), resp.body)
        wait_for(lambda: set(names) <= set(sg.list_names()), 10, message="every name created once")
        for name in names:
            self.assertEqual(sg.get(name)["version"], 1)
        sg.restart()
        self.assertTrue(set(names) <= set(sg.list_names()), "the store holds what the loop showed")
        for name in names:
            self.assertEqual(sg.get(name)["version"], 1)

    def test_versions_survive_a_restart_after_racing_puts(self):
        sg = self.start_sgpud(gpus="a100:4")
        name = unique_name("race-restart")
        sg.create(echo_spec(name))
        answers = [None] * 6

        def put(i):
            answers[i] = sg.api("PUT", "/v1/endpoints/%s" % name, echo_spec(name, env={"MARK": str(i)}))

        threads = [threading.Thread(target=put, args=(i,)) for i in range(len(answers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        before = sg.get(name)
        self.assertEqual(before["version"], len(answers) + 1)
        sg.restart()
        after = sg.get(name)
        self.assertEqual(after["version"], before["version"])
        self.assertEqual(after["env"]["MARK"], before["env"]["MARK"])

    def test_api_answers_while_the_store_is_locked(self):
        """Another writer holds the database's write lock: the store thread waits for it
        (busy timeout 5 s), the loop does not."""
        sg = self.start_sgpud(gpus="a100:4")
        name = unique_name("locked")
        db = sqlite3.connect(os.path.join(sg.data_dir, "sgpu.db"), isolation_level=None, timeout=10)
        self.addCleanup(db.close)
        db.execute("BEGIN IMMEDIATE")
        created = []
        t = threading.Thread(target=lambda: created.append(sg.api("POST", "/v1/endpoints", echo_spec(name))))
        t.start()
        try:
            self.assertEqual(sg.api("GET", "/healthz").status, 200)
            self.assertEqual(sg.api("GET", "/v1/endpoints/%s" % name).status, 404)
            self.assertNotIn(name, sg.list_names())
            self.assertEqual(created, [], "the create waited for the lock")
        finally:
            db.execute("ROLLBACK")
        t.join()
        self.assertEqual(created[0].status, 201, created[0].body)
        self.assertEqual(sg.get(name)["version"], 1)


if __name__ == "__main__":
    unittest.main()


class NvmlDiscoveryTest(SgpudTestCase):
    """GPU discovery through NVML, against the stand-in library
    build/tests/libnvidia-ml.so.1 (tests/fixtures/fake-nvml.c: two "NVIDIA
    H200" of 141 GiB): CI has no NVIDIA GPU; scripts/gpu-check.sh runs the
    same checks against a real one."""

    def test_nodes_show_discovered_gpus_and_a_worker_sees_the_one_it_holds(self):
        lib_dir = os.path.join(BUILD_DIR, "tests")
        self.assertTrue(os.path.exists(os.path.join(lib_dir, "libnvidia-ml.so.1")))
        sg = self.start_sgpud(env={"LD_LIBRARY_PATH": lib_dir})
        node = sg.nodes()[0]
        self.assertEqual(node["gpus_total"], 2, node)
        for i, g in enumerate(sorted(node["gpus"], key=lambda g: g["index"])):
            self.assertEqual(g["index"], i)
            self.assertEqual(g["type"], "h200")
            self.assertEqual(g["name"], "NVIDIA H200")
            self.assertEqual(g["source"], "nvml")
            self.assertEqual(g["uuid"], "GPU-5a1e0000-0000-4000-8000-00000000000%d" % i)
            self.assertEqual(g["memory_bytes"], 141 << 30)
        name = unique_name("nvml")
        self.create(echo_spec(name, gpu={"type": "h200", "count": 1}, workers={"min": 1, "max": 1}), sg=sg)
        worker = sg.wait_ready(name)[0]
        env = sg.invoke(name, "/env").body
        held = [g for g in sg.nodes()[0]["gpus"] if g["worker"] == worker["id"]]
        self.assertEqual(len(held), 1, held)
        self.assertEqual(env["CUDA_VISIBLE_DEVICES"], str(held[0]["index"]))
        self.assertEqual(env["NVIDIA_VISIBLE_DEVICES"], str(held[0]["index"]))
