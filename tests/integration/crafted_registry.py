"""A registry (OCI distribution API, read side) on loopback that serves
crafted images built in this process: layers whose entries try to leave the
layer directory, configs and layers larger than they say or than the limits
allow, redirects to another origin and token realms on another host.

Standard library only. Every request is recorded (method, path,
Authorization header) so that a test can check what reached a server."""

import gzip
import hashlib
import http.server
import io
import json
import re
import tarfile
import threading

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TOKEN = "crafted-token"


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file(name, data=b"", mode=0o644):
    return {"name": name, "type": tarfile.REGTYPE, "data": data, "mode": mode}


def directory(name, mode=0o755):
    return {"name": name, "type": tarfile.DIRTYPE, "mode": mode}


def symlink(name, target):
    return {"name": name, "type": tarfile.SYMTYPE, "link": target, "mode": 0o777}


def hardlink(name, target):
    return {"name": name, "type": tarfile.LNKTYPE, "link": target, "mode": 0o644}


def whiteout(name):
    return file(name)


def tar_bytes(entries):
    """An uncompressed tar of entries, names written exactly as given (with
    "..", leading "/" and all)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e["name"])
            ti.type = e["type"]
            ti.mode = e.get("mode", 0o644)
            ti.mtime = 1700000000
            ti.linkname = e.get("link", "")
            data = e.get("data", b"")
            ti.size = len(data) if e["type"] == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return buf.getvalue()


def layer(entries):
    """A gzip-compressed layer of entries."""
    return gzip.compress(tar_bytes(entries), compresslevel=6, mtime=0)


class CraftedRegistry:
    """A registry on 127.0.0.1 (a free port). add_image() publishes an image;
    options shape how it is served. requests holds (method, path,
    authorization) of everything received."""

    def __init__(self):
        self.repos = {}
        self.blobs = {}
        self.streams = {}  # digest -> bytes to send before giving up (larger than the descriptor says)
        self.stream_sent = {}  # digest -> bytes actually sent
        self.requests = []
        self.lock = threading.Lock()
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                registry._handle(self)

            def do_HEAD(self):
                registry._handle(self)

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that stops reading an oversized answer is what the tests want

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def requests_for(self, fragment=""):
        with self.lock:
            return [r for r in self.requests if fragment in r[1]]

    # ---- publishing

    def add_blob(self, data):
        d = digest_of(data)
        self.blobs[d] = data
        return d

    def add_image(self, repo, layers, tag="latest", config=None, config_size=None, config_stream=None,
                  auth=None, blob_redirect=None, manifest_padding=0):
        """Publishes repo:tag with the given layer blobs (bytes).

        config_size: the size the manifest gives the config (default its real size).
        config_stream: bytes of junk sent instead of the config, whatever the size says.
        auth: None; ("bearer", realm_url) answers 401 with that realm unless the
              request carries "Bearer crafted-token"; ("basic", user, password).
        blob_redirect: a function of the blob digest giving the Location a blob
              request is redirected to (None: served here).
        manifest_padding: bytes of annotation added to the manifest."""
        cfg = config if config is not None else json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(b) for b in layers]},
        }).encode()
        cd = self.add_blob(cfg)
        if config_stream is not None:
            self.streams[cd] = config_stream
        descs = [{"mediaType": MT_LAYER, "digest": self.add_blob(b), "size": len(b)} for b in layers]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cd,
                       "size": len(cfg) if config_size is None else config_size},
            "layers": descs,
            "annotations": {"padding": "x" * manifest_padding},
        }).encode()
        self.repos[repo] = {"tag": tag, "manifest": manifest, "auth": auth, "blob_redirect": blob_redirect,
                            "config_digest": cd}
        return "%s/%s:%s" % (self.addr, repo, tag)

    # ---- serving

    def _answer(self, h, status, body=b"", headers=()):
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD" and body:
            h.wfile.write(body)

    def _stream(self, h, d, total):
        """Sends `total` bytes for blob d (claiming that many), counting what went out."""
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(total))
        h.end_headers()
        chunk = b"\x00" * (64 << 10)
        sent = 0
        try:
            while sent < total:
                h.wfile.write(chunk)
                sent += len(chunk)
                with self.lock:
                    self.stream_sent[d] = sent
        except OSError:
            pass
        h.close_connection = True

    def _authorized(self, h, repo):
        auth = repo["auth"]
        if not auth:
            return True
        got = h.headers.get("Authorization") or ""
        if auth[0] == "bearer":
            if got == "Bearer " + TOKEN:
                return True
            ch = 'Bearer realm="%s",service="crafted"' % auth[1]
        else:
            import base64
            want = "Basic " + base64.b64encode(("%s:%s" % (auth[1], auth[2])).encode()).decode()
            if got == want:
                return True
            ch = 'Basic realm="crafted"'
        self._answer(h, 401, b"{}", [("WWW-Authenticate", ch), ("Content-Type", "application/json")])
        return False

    def _handle(self, h):
        with self.lock:
            self.requests.append((h.command, h.path, h.headers.get("Authorization")))
        path = h.path.split("?", 1)[0]
        if path == "/v2/":
            return self._answer(h, 200, b"{}", [("Content-Type", "application/json")])
        if path == "/token":
            return self._answer(h, 200, json.dumps({"token": TOKEN}).encode(), [("Content-Type", "application/json")])
        m = re.match(r"^/redirected/(sha256:[0-9a-f]{64})$", path)
        if m and m.group(1) in self.blobs:
            return self._answer(h, 200, self.blobs[m.group(1)], [("Content-Type", "application/octet-stream")])
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", path)
        repo = self.repos.get(m.group(1)) if m else None
        if not repo:
            return self._answer(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
        if not self._authorized(h, repo):
            return None
        kind, ref = m.group(2), m.group(3)
        if kind == "manifests":
            if ref not in (repo["tag"], digest_of(repo["manifest"])):
                return self._answer(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return self._answer(h, 200, repo["manifest"], [("Content-Type", MT_MANIFEST),
                                                           ("Docker-Content-Digest", digest_of(repo["manifest"]))])
        if ref in self.streams:
            return self._stream(h, ref, len(self.streams[ref]) if isinstance(self.streams[ref], bytes)
                                else self.streams[ref])
        if ref not in self.blobs:
            return self._answer(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        if repo["blob_redirect"] and ref != repo["config_digest"]:
            return self._answer(h, 307, b"", [("Location", repo["blob_redirect"](ref))])
        return self._answer(h, 200, self.blobs[ref], [("Content-Type", "application/octet-stream")])
