"""docs/openapi.yaml, both ways: the document is valid OpenAPI 3.1 (checked with
@readme/openapi-parser on Node.js, tests/openapi); every route `sgpud --list-routes`
prints is a path and method of the document with the same scopes, and every path of
the document is a route; every example call of the document (`x-sgpu-examples`, with
every request body example) is sent to a running sgpud and gets the documented status,
error code and body (checked against the document's schema with Ajv); sgpud serves the
document at /v1/openapi.yaml."""

import hashlib
import hmac
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import unittest

from harness import (DELETE, REPO, SGPUD, SgpudTestCase, echo_spec, error_of, require_binaries, scaled,
                     wait_for)

DOC_PATH = os.path.join(REPO, "docs", "openapi.yaml")
CHECKER_DIR = os.path.join(REPO, "tests", "openapi")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Scopes in the order `sgpud --list-routes` joins them.
SCOPE_ORDER = ("deploy", "invoke", "read")

NODE = None
DOC = None


def setUpModule():
    global NODE, DOC
    require_binaries()
    NODE = shutil.which("node")
    if not NODE:
        raise unittest.SkipTest("node is missing (scripts/install-deps.sh test installs it)")
    subprocess.run(["bash", os.path.join(CHECKER_DIR, "install.sh")], check=True,
                   timeout=scaled(600))
    DOC = json.loads(checker())


def checker(*args):
    """Runs tests/openapi/validate.mjs on the document; its stdout. Fails the test
    with the validator's errors when the document is not valid."""
    r = subprocess.run([NODE, os.path.join(CHECKER_DIR, "validate.mjs"), DOC_PATH] + list(args),
                       capture_output=True, text=True, timeout=scaled(120))
    if r.returncode != 0:
        raise AssertionError("docs/openapi.yaml is not valid:\n%s" % r.stderr)
    return r.stdout


def operations(doc):
    """(path, method, operation) of every operation, in document order."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def router_routes():
    """pattern -> {METHOD or "ANY": scopes} of every route sgpud registers (a pattern
    may have several rows, e.g. GET and POST with their own scopes)."""
    out = subprocess.run([SGPUD, "--list-routes"], capture_output=True, text=True, check=True,
                         timeout=scaled(30)).stdout
    routes = {}
    for line in out.splitlines():
        methods, pattern, scopes = line.split("\t")[:3]
        for m in methods.split("|"):
            routes.setdefault(pattern, {})[m] = scopes
    return routes


def doc_scopes(op):
    scopes = op.get("x-sgpu-scopes")
    if scopes in (["public"], ["admin"]):
        return scopes[0]
    return "|".join(s for s in SCOPE_ORDER if s in (scopes or []))


def pattern_of(path, routes):
    """The router pattern serving a document path: an exact one ({ref*} is written
    {ref}), else the prefix route (".../*") it lies under; None when none."""
    for pattern in routes:
        if pattern.replace("*}", "}") == path:
            return pattern
    for pattern in routes:
        if pattern.endswith("/*") and path.startswith(pattern[:-1]):
            return pattern
    return None


def tarball(files):
    """A tarball holding files (name -> text), as bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def resolve(doc, obj):
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


class TestDocument(unittest.TestCase):
    """The document against the router, without a daemon."""

    def test_the_document_is_valid(self):
        self.assertTrue(DOC["openapi"].startswith("3.1."))

    def test_the_validator_refuses_a_broken_document(self):
        # The check above can fail: a document with a dangling $ref is refused.
        with open(DOC_PATH) as f:
            text = f.read()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text.replace('"#/components/schemas/Endpoint"', '"#/components/schemas/Ghost"', 1))
        self.addCleanup(os.unlink, f.name)
        r = subprocess.run([NODE, os.path.join(CHECKER_DIR, "validate.mjs"), f.name],
                           capture_output=True, text=True, timeout=scaled(120))
        self.assertEqual(r.returncode, 1, r.stderr)

    def test_every_route_is_documented(self):
        routes = router_routes()
        ops = list(operations(DOC))
        for pattern, methods in routes.items():
            prefix = pattern[:-1] if pattern.endswith("/*") else None
            path = pattern.replace("*}", "}")
            mine = [(p, m, op) for p, m, op in ops
                    if (prefix and p.startswith(prefix)) or (not prefix and p == path)]
            self.assertTrue(mine, "route %s is not in docs/openapi.yaml" % pattern)
            if "ANY" not in methods:
                self.assertEqual(sorted(m.upper() for _, m, _ in mine), sorted(methods),
                                 "methods of %s" % pattern)
            for p, m, op in mine:
                scopes = methods.get("ANY") or methods[m.upper()]
                self.assertEqual(doc_scopes(op), scopes,
                                 "x-sgpu-scopes of %s %s (the router grants %s)" % (m, p, scopes))

    def test_every_documented_path_is_routed(self):
        routes = router_routes()
        for path, method, op in operations(DOC):
            pattern = pattern_of(path, routes)
            self.assertIsNotNone(pattern, "%s %s is documented but sgpud has no such route" % (method, path))
            if "ANY" not in routes[pattern]:
                self.assertIn(method.upper(), routes[pattern], "%s %s" % (method, path))

    def test_every_operation_has_examples_and_every_body_example_is_sent(self):
        for path, method, op in operations(DOC):
            calls = op.get("x-sgpu-examples") or []
            self.assertTrue(calls, "%s %s has no x-sgpu-examples" % (method, path))
            body = resolve(DOC, op.get("requestBody") or {})
            named = set()
            for content in (body.get("content") or {}).values():
                named |= set(content.get("examples") or {})
            used = {c["example"] for c in calls if "example" in c}
            self.assertEqual(named - used, set(),
                             "request body examples of %s %s that no call sends" % (method, path))
            self.assertEqual(used - named, set(), "%s %s names unknown examples" % (method, path))


class TestExamples(SgpudTestCase):
    """Every example call of the document against a running sgpud."""

    SHARED = {}

    def key(self, name):
        if name == "admin":
            return self.sg.key
        if name == "none":
            return None
        if name == "bad":
            return "sgpu_" + "0" * 64
        if name == "worker":
            with open(os.path.join(self.sg.data_dir, "worker.key"), "rb") as f:
                return hmac.new(f.read(), ("sgpu-worker:" + self.worker).encode(), hashlib.sha256).hexdigest()
        if name not in self.keys:
            r = self.sg.api("POST", "/v1/api-keys", {"name": "openapi-" + name, "scopes": [name]})
            self.assertEqual(r.status, 201, r)
            self.keys[name] = r.body["key"]
        return self.keys[name]

    def test_examples_answer_as_documented(self):
        self.keys = {}
        self.create(echo_spec("echo", env={"WARMUP_MS": "0"}))
        # echo serves one request first: its worker and log lines are in the answers checked.
        r = self.sg.invoke("echo", "/warm", timeout=60)
        self.assertEqual(r.status, 200, r)
        echo_worker = r.headers["X-Sgpu-Worker"]
        self.create(echo_spec("jobs", type="async", env={"WARMUP_MS": "0"},
                              workers={"min": 0, "max": 1}))
        # jobs has run one job: the job list's answer holds one.
        r = self.sg.api("POST", "/v2/jobs/runsync", {"input": {"warm": True}}, timeout=90)
        self.assertEqual((r.status, r.body.get("status")), (200, "COMPLETED"), r)
        # A runpod endpoint whose worker never pulls by itself: the examples are its calls.
        self.create(echo_spec("pull", type="async", command=["/bin/sleep", "3600"], health=DELETE,
                              workers={"min": 1, "max": 1, "max_concurrency": 1},
                              **{"async": {"protocol": "runpod", "take_wait_s": 1, "ping_timeout_s": 3600}}))
        self.worker = wait_for(lambda: [w["id"] for w in self.sg.api("GET", "/v1/endpoints/pull/workers").body[
            "workers"] if w["state"] == "starting"], timeout=30, message="pull's worker")[0]
        job = None
        answers, where = [], []
        reached = {}
        for path, method, op in operations(DOC):
            body_doc = resolve(DOC, op.get("requestBody") or {})
            for call in op["x-sgpu-examples"]:
                call_method = call.get("method", method).upper()
                url = call["path"].replace("{worker}", self.worker).replace("{echo_worker}", echo_worker)
                if "{job}" in url:
                    self.assertIsNotNone(job, "%s needs a job from an earlier call" % url)
                    url = url.replace("{job}", job)
                body, headers = None, {}
                if "example" in call:
                    body_media, content = next((m, c) for m, c in body_doc["content"].items()
                                               if call["example"] in (c.get("examples") or {}))
                    example = content["examples"][call["example"]]
                    body = tarball(example["x-sgpu-tar"]) if "x-sgpu-tar" in example else example["value"]
                    headers["Content-Type"] = "application/json" if body_media == "*/*" else body_media
                what = "%s %s (documented under %s %s)" % (call_method, url, method, path)
                r = self.sg.api(call_method, url, body=body, key=self.key(call.get("key", "admin")),
                                headers=headers, raw=True, timeout=90)
                media = (r.headers.get("Content-Type") or "").split(";")[0].strip()
                parsed = None
                if media == "application/json" and r.body:
                    parsed = json.loads(r.body)
                self.assertEqual(r.status, call["status"], "%s: %s" % (what, r.body[:300]))
                documented = op["responses"].get(str(r.status)) or op["responses"].get("default")
                self.assertIsNotNone(documented, "%s: status %d is not documented" % (what, r.status))
                documented = resolve(DOC, documented)
                err = error_of(r._replace(body=parsed))
                if "code" in call:
                    self.assertEqual(err.get("code"), call["code"], "%s: %s" % (what, r.body[:300]))
                    self.assertIn(call["code"], documented.get("x-sgpu-codes", []),
                                  "%s: error code %s is not documented for %d" % (what, call["code"], r.status))
                if not (r.status == 404 and err.get("message") == "no such route"):
                    reached[(path, method)] = True
                if isinstance(parsed, dict) and isinstance(parsed.get("id"), str):
                    job = parsed["id"]
                if "example" in call and 200 <= r.status < 300 and "x-sgpu-tar" not in example:
                    # sgpud accepted it: the document's request schema must accept it too
                    answers.append({"method": method, "path": path, "media": body_media,
                                    "body": body, "request": True})
                    where.append(what + " request")
                answer = {"method": method, "path": path, "status": r.status, "media": media}
                if parsed is not None:
                    answer["body"] = parsed
                elif media == "application/x-ndjson":
                    for line in r.body.decode().splitlines()[:20]:
                        answers.append(dict(answer, body=json.loads(line)))
                        where.append(what)
                    continue
                elif not r.body and call_method != "HEAD":
                    answer["body"] = None
                answers.append(answer)
                where.append(what)
        unreached = [(p, m) for p, m, _ in operations(DOC) if (p, m) not in reached]
        self.assertEqual(unreached, [], "operations whose every example got 404 \"no such route\"")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(answers, f)
        self.addCleanup(os.unlink, f.name)
        errors = json.loads(checker("--answers", f.name))
        bad = ["%s: %s" % (w, "; ".join(e)) for w, e in zip(where, errors) if e]
        self.assertEqual(bad, [], "answers that do not match the document's schemas")

    def test_sgpud_serves_the_document(self):
        for scope in ("read", "invoke", "deploy"):
            r = self.sg.api("POST", "/v1/api-keys", {"name": "served-" + scope, "scopes": [scope]})
            self.assertEqual(r.status, 201, r)
            served = self.sg.api("GET", "/v1/openapi.yaml", key=r.body["key"], raw=True)
            self.assertEqual(served.status, 200, served)
            self.assertEqual(served.headers.get("Content-Type"), "application/yaml")
            with open(DOC_PATH, "rb") as f:
                self.assertEqual(served.body, f.read(), "the served copy is not docs/openapi.yaml")


if __name__ == "__main__":
    unittest.main()
