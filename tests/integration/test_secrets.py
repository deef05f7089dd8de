"""Secrets: PUT/GET/DELETE /v1/secrets, a spec's env referencing one, the worker
getting the value in its environment, and the value (and registry passwords)
never shown by a route, a log line, a metric or the database files."""

import glob
import http.client
import json
import os
import secrets as pysecrets
import sqlite3
import stat
import unittest

from harness import SgpudTestCase, echo_spec, unique_name, wait_for


def db_files(sg):
    """The bytes of sgpu.db and its -wal and -shm files, concatenated."""
    out = b""
    for path in sorted(glob.glob(os.path.join(sg.data_dir, "sgpu.db*"))):
        with open(path, "rb") as f:
            out += f.read()
    return out


class SecretsTest(SgpudTestCase):
    SHARED = {}

    def put_secret(self, name, value, status=201):
        resp = self.sg.api("PUT", "/v1/secrets/%s" % name, {"value": value})
        self.assertOk(resp, status)
        self.addCleanup(lambda: self.sg.api("DELETE", "/v1/secrets/%s" % name))
        return resp.body

    def together(self, *requests):
        """Sends each (method, path, body) on its own connection before reading any
        answer, so that sgpud takes them in one turn of its loop; returns the
        answers' statuses, in the same order."""
        conns = []
        for method, path, body in requests:
            c = http.client.HTTPConnection("127.0.0.1", self.sg.port, timeout=30)
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Authorization": "Bearer " + self.sg.key, "Content-Type": "application/json"})
            conns.append(c)
        statuses = []
        for c in conns:
            resp = c.getresponse()
            resp.read()
            statuses.append(resp.status)
            c.close()
        return statuses

    def test_no_endpoint_is_stored_naming_a_secret_deleted_beside_it(self):
        # A delete and a create naming the secret, sent together: the create's
        # check on the loop may run before the delete is done, so the store
        # thread checks again in the order of its writes. Whichever comes
        # first, no endpoint may be left naming a secret that is gone.
        for _ in range(8):
            secret = unique_name("race")
            self.put_secret(secret, "v")
            name = unique_name("sec-race")
            spec = echo_spec(name, env={"MODEL": {"secret": secret}}, workers={"min": 0, "max": 1})
            deleted, created = self.together(("DELETE", "/v1/secrets/%s" % secret, None),
                                              ("POST", "/v1/endpoints", spec))
            self.addCleanup(self.sg.try_delete, name)
            if deleted == 200:
                self.assertEqual(created, 422, "an endpoint was stored naming the deleted secret %s" % secret)
                self.assertNotIn(name, self.sg.list_names())
            else:
                self.assertEqual((deleted, created), (409, 201))

    def test_key_file(self):
        path = os.path.join(self.sg.data_dir, "secret.key")
        st = os.stat(path)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_size, 32)

    def test_crud_never_returns_the_value(self):
        name = unique_name("sec")
        value = "v-" + pysecrets.token_hex(16)
        body = self.put_secret(name, value)
        self.assertEqual(sorted(body), ["created_at", "name", "updated_at"])
        self.assertEqual(body["name"], name)
        got = self.assertOk(self.sg.api("GET", "/v1/secrets/%s" % name))
        self.assertEqual(sorted(got), ["created_at", "name", "updated_at"])
        listed = self.assertOk(self.sg.api("GET", "/v1/secrets"))
        self.assertIn(name, [s["name"] for s in listed["secrets"]])
        for s in listed["secrets"]:
            self.assertEqual(sorted(s), ["created_at", "name", "updated_at"])
        # Replacing: 200, created_at kept.
        value2 = "w-" + pysecrets.token_hex(16)
        again = self.assertOk(self.sg.api("PUT", "/v1/secrets/%s" % name, {"value": value2}), 200)
        self.assertEqual(again["created_at"], body["created_at"])
        for path in ("/v1/secrets", "/v1/secrets/%s" % name):
            raw = self.sg.api("GET", path, raw=True).body
            self.assertNotIn(value.encode(), raw)
            self.assertNotIn(value2.encode(), raw)
        # Deleted: 404 after.
        self.assertOk(self.sg.api("DELETE", "/v1/secrets/%s" % name))
        self.assertError(self.sg.api("GET", "/v1/secrets/%s" % name), 404, "not_found")
        self.assertError(self.sg.api("DELETE", "/v1/secrets/%s" % name), 404, "not_found")

    def test_invalid_puts(self):
        self.assertError(self.sg.api("PUT", "/v1/secrets/Bad_Name", {"value": "x"}), 422, "invalid_field", "name")
        self.assertError(self.sg.api("PUT", "/v1/secrets/ok", {"value": 1}), 422, "invalid_field", "value")
        self.assertError(self.sg.api("PUT", "/v1/secrets/ok", {}), 422, "invalid_field", "value")
        self.assertError(self.sg.api("PUT", "/v1/secrets/ok", {"value": "x", "other": 1}), 422,
                         "invalid_field", "other")
        self.assertError(self.sg.api("PUT", "/v1/secrets/ok", {"value": "x" * 65537}), 422,
                         "invalid_field", "value")
        self.assertOk(self.sg.api("PUT", "/v1/secrets/big", {"value": "x" * 65536}), 201)
        self.addCleanup(lambda: self.sg.api("DELETE", "/v1/secrets/big"))
        self.assertEqual(self.sg.api("POST", "/v1/secrets", {"value": "x"}).status, 405)
        self.assertEqual(self.sg.api("GET", "/v1/secrets/ok").status, 404)

    def test_missing_reference_is_422(self):
        name = unique_name("sec-missing")
        spec = echo_spec(name, env={"HF_TOKEN": {"secret": "no-such-secret"}})
        self.assertError(self.sg.api("POST", "/v1/endpoints", spec), 422, "invalid_field", "env.HF_TOKEN")
        self.assertError(self.sg.api("POST", "/v1/endpoints", echo_spec(name, env={"HF_TOKEN": {"secret": 1}})),
                         422, "invalid_field", "env.HF_TOKEN")
        self.assertError(
            self.sg.api("POST", "/v1/endpoints", echo_spec(name, env={"HF_TOKEN": {"secret": "a", "x": 1}})),
            422, "invalid_field", "env.HF_TOKEN")
        # An update that names a missing secret is refused the same way.
        self.create(echo_spec(name))
        self.assertError(self.sg.api("PUT", "/v1/endpoints/%s" % name, spec), 422, "invalid_field",
                         "env.HF_TOKEN")

    def test_worker_reads_the_secret_and_nothing_shows_it(self):
        secret = unique_name("hf")
        value = "hf_" + pysecrets.token_hex(20)
        self.put_secret(secret, value)
        name = unique_name("sec-ep")
        spec = echo_spec(name, env={"MODEL": {"secret": secret}}, workers={"min": 1, "max": 1})
        self.create(spec)
        # The spec shows the reference, never the value.
        got = self.sg.get(name)
        self.assertEqual(got["env"]["MODEL"], {"secret": secret})
        self.sg.wait_ready(name)
        # The worker reads it from its environment (the test worker echoes MODEL).
        env = self.assertOk(self.sg.invoke(name, "/env"))
        self.assertEqual(env["MODEL"], value)
        # Deleting the secret while the endpoint uses it: 409 naming the endpoint.
        resp = self.sg.api("DELETE", "/v1/secrets/%s" % secret)
        self.assertError(resp, 409, "in_use")
        self.assertIn(name, resp.body["error"]["message"])
        self.assertIn("env.MODEL", resp.body["error"]["message"])
        # No route, log line, metric or database file shows the value.
        wid = self.sg.workers(name)[0]["id"]
        routes = ["/v1/endpoints", "/v1/endpoints/%s" % name, "/v1/endpoints/%s/versions" % name,
                  "/v1/endpoints/%s/workers" % name, "/v1/endpoints/%s/workers/%s" % (name, wid),
                  "/v1/endpoints/%s/logs" % name, "/v1/secrets", "/v1/secrets/%s" % secret,
                  "/v1/nodes", "/v1/usage", "/v1/images", "/v1/registry-auths", "/metrics",
                  "/v1/endpoints/%s/series" % name]
        for path in routes:
            resp = self.sg.api("GET", path, raw=True)
            self.assertNotIn(value.encode(), resp.body, path)
        lines = self.sg.logs(name, limit=10000)
        self.assertTrue(lines, "no log lines of the endpoint")
        self.assertNotIn(value, repr(lines))
        self.assertNotIn(value, self.sg.log_text())
        # The store has written the logs of the start by now (the logs API read them).
        self.assertNotIn(value.encode(), db_files(self.sg))
        # The endpoint no longer references it: the delete goes through.
        self.sg.update(name, echo_spec(name, workers={"min": 0, "max": 1}))
        self.assertOk(self.sg.api("DELETE", "/v1/secrets/%s" % secret))

    def test_rollback_to_a_spec_naming_a_deleted_secret_is_422(self):
        secret = unique_name("gone")
        self.put_secret(secret, "v")
        name = unique_name("sec-rb")
        self.create(echo_spec(name, env={"MODEL": {"secret": secret}}))
        self.sg.update(name, echo_spec(name))
        self.assertOk(self.sg.api("DELETE", "/v1/secrets/%s" % secret))
        resp = self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 1})
        self.assertError(resp, 422, "invalid_field", "env.MODEL")
        self.assertEqual(self.sg.get(name)["version"], 2)
        # With the secret back, the same rollback goes through.
        self.put_secret(secret, "again")
        self.assertOk(self.sg.api("POST", "/v1/endpoints/%s/rollback" % name, {"version": 1}))
        self.assertEqual(self.sg.get(name)["env"]["MODEL"], {"secret": secret})

    def test_replaced_value_reaches_new_workers(self):
        secret = unique_name("tok")
        self.put_secret(secret, "first")
        name = unique_name("sec-new")
        self.create(echo_spec(name, env={"MODEL": {"secret": secret}}, workers={"min": 0, "max": 1}))
        self.assertEqual(self.assertOk(self.sg.invoke(name, "/env"))["MODEL"], "first")
        self.assertOk(self.sg.api("PUT", "/v1/secrets/%s" % secret, {"value": "second"}), 200)
        wid = self.sg.workers(name)[0]["id"]
        self.assertOk(self.sg.api("DELETE", "/v1/endpoints/%s/workers/%s" % (name, wid)), 202)
        wait_for(lambda: not self.sg.active_workers(name), 20, message="worker stopped")
        self.assertEqual(self.assertOk(self.sg.invoke(name, "/env"))["MODEL"], "second")


class AtRestTest(SgpudTestCase):
    def test_registry_password_and_secret_never_in_the_database(self):
        sg = self.start_sgpud()
        password = "pw-" + pysecrets.token_hex(16)
        value = "sv-" + pysecrets.token_hex(16)
        self.assertOk(sg.api("POST", "/v1/registry-auths",
                             {"name": "reg", "registry": "127.0.0.1:5999", "username": "u",
                              "password": password}), 201)
        self.assertOk(sg.api("PUT", "/v1/registry-auths/reg",
                             {"registry": "127.0.0.1:5999", "username": "u", "password": password + "x"}), 200)
        self.assertOk(sg.api("PUT", "/v1/secrets/s1", {"value": value}), 201)
        files = db_files(sg)
        self.assertNotIn(password.encode(), files)
        self.assertNotIn(value.encode(), files)
        # Across a restart the same key opens them (the secret still works for a worker).
        sg.restart()
        name = unique_name("at-rest")
        self.create(echo_spec(name, env={"MODEL": {"secret": "s1"}}), sg=sg)
        self.assertEqual(self.assertOk(sg.invoke(name, "/env"))["MODEL"], value)
        self.assertEqual(self.assertOk(sg.api("GET", "/v1/registry-auths/reg"))["username"], "u")
        files = db_files(sg)
        self.assertNotIn(password.encode(), files)
        self.assertNotIn(value.encode(), files)
        self.assertNotIn(value, sg.log_text())
        self.assertNotIn(password, sg.log_text())

    def test_clear_registry_passwords_are_sealed_at_start(self):
        sg = self.start_sgpud()
        sg.stop()
        # A row as an sgpud before sealing wrote it: the password as TEXT.
        password = "old-" + pysecrets.token_hex(16)
        db = sqlite3.connect(os.path.join(sg.data_dir, "sgpu.db"))
        db.execute("INSERT INTO registry_auths(name, registry, username, secret, created_ms, updated_ms)"
                   " VALUES('legacy', 'ghcr.io', 'me', ?, 1, 1)", (password,))
        db.commit()
        db.close()
        self.assertIn(password.encode(), db_files(sg))
        sg.start()
        self.assertIn("sealed 1 registry password", sg.log_text())
        self.assertEqual(self.assertOk(sg.api("GET", "/v1/registry-auths/legacy"))["registry"], "ghcr.io")
        self.assertNotIn(password.encode(), db_files(sg))
        db = sqlite3.connect(os.path.join(sg.data_dir, "sgpu.db"))
        kinds = db.execute("SELECT typeof(secret) FROM registry_auths WHERE name = 'legacy'").fetchall()
        db.close()
        self.assertEqual(kinds, [("blob",)])
        # Once: the next start finds none to seal.
        sg.restart()
        self.assertEqual(sg.log_text().count("sealed 1 registry password"), 1)

    def test_another_key_opens_nothing_but_sgpud_serves(self):
        """With another secret.key (a lost key replaced), sealed values do not
        open: registry auths are left out with a warning, a worker that needs
        a secret fails to start saying which; storing them again mends both."""
        sg = self.start_sgpud()
        self.assertOk(sg.api("POST", "/v1/registry-auths",
                             {"name": "reg", "registry": "127.0.0.1:5999", "username": "u",
                              "password": "pw"}), 201)
        self.assertOk(sg.api("PUT", "/v1/secrets/s1", {"value": "first"}), 201)
        name = unique_name("other-key")
        self.create(echo_spec(name, env={"MODEL": {"secret": "s1"}}, workers={"min": 0, "max": 1}), sg=sg)
        sg.stop()
        with open(os.path.join(sg.data_dir, "secret.key"), "wb") as f:
            f.write(pysecrets.token_bytes(32))
        sg.start()
        self.assertIn("registry auth reg: its sealed password does not open", sg.log_text())
        self.assertEqual(self.assertOk(sg.api("GET", "/v1/registry-auths"))["registry_auths"], [])
        resp = sg.invoke(name, "/env")
        self.assertNotEqual(resp.status, 200, resp.body)
        err = wait_for(lambda: sg.status(name)["last_error"], 20, message="the start's error")
        self.assertIn("env.MODEL", err)
        self.assertIn("does not open", err)
        self.assertOk(sg.api("PUT", "/v1/registry-auths/reg",
                             {"registry": "127.0.0.1:5999", "username": "u", "password": "pw"}), 200)
        self.assertOk(sg.api("PUT", "/v1/secrets/s1", {"value": "second"}), 200)
        # The failed starts' backoff passes, then a start opens it.
        got = wait_for(lambda: (lambda r: r.body if r.status == 200 else None)(sg.invoke(name, "/env")), 60,
                       interval=0.5, message="a worker started with the secret stored again")
        self.assertEqual(got["MODEL"], "second")

    def test_damaged_key_file_is_refused(self):
        sg = self.start_sgpud()
        sg.stop()
        path = os.path.join(sg.data_dir, "secret.key")
        with open(path, "r+b") as f:
            f.truncate(16)
        with self.assertRaises(Exception):
            sg.start(timeout=10)
        self.assertIn("secret.key", sg.log_text())
        self.assertIn("holds 16 bytes", sg.log_text())


if __name__ == "__main__":
    unittest.main()
