#!/usr/bin/env python3
"""A worker whose health path misbehaves, for the health probe tests: an HTTP server
on $PORT. How GET /health is answered is read, at each request, from the file named
by $HEALTH_MODE_FILE (absent or empty: "ok"):

  ok              200 with a small body
  status N        N with a small body
  silent          reads the request and never answers (the connection stays open)
  trickle         sends "HTTP/1.1 200 OK" then header bytes, one every 50 ms, forever
  huge-head N     status N, then header lines as fast as the peer takes them, forever
  endless N       status N with a chunked body that never ends

GET /drop closes the connection without an answer; every other request gets
200 {"ok": true}. Each /health request appends a line to
$HEALTH_LOG: "probe MODE", and "cut MODE BYTES" when sgpud closed the connection
while the answer was still being sent (BYTES: what was sent until then)."""

import os
import socket
import socketserver
import threading
import time

MODE_FILE = os.environ.get("HEALTH_MODE_FILE", "")
LOG = os.environ.get("HEALTH_LOG", "")
_log_lock = threading.Lock()


def log(line):
    if not LOG:
        return
    with _log_lock, open(LOG, "a") as f:
        f.write(line + "\n")


def mode():
    try:
        with open(MODE_FILE) as f:
            words = f.read().split()
    except OSError:
        words = []
    return words or ["ok"]


def answer(status, body=b'{"ok": true}'):
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body))


class Handler(socketserver.BaseRequestHandler):
    def read_head(self, buf):
        while b"\r\n\r\n" not in buf:
            data = self.request.recv(65536)
            if not data:
                return None, b""
            buf += data
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    def handle(self):
        buf = b""
        while True:
            head, buf = self.read_head(buf)
            if head is None:
                return
            target = head.split(b"\r\n", 1)[0].split(b" ")
            path = target[1] if len(target) > 1 else b"/"
            if path == b"/drop":
                return
            if path != b"/health":
                self.request.sendall(answer(200))
                continue
            m = mode()
            log("probe %s" % " ".join(m))
            if m[0] == "ok":
                self.request.sendall(answer(200))
            elif m[0] == "status":
                self.request.sendall(answer(int(m[1])))
            elif m[0] == "silent":
                while self.request.recv(65536):
                    pass
                return
            else:
                self.misbehave(m)
                return

    def misbehave(self, m):
        sent = 0
        try:
            if m[0] == "trickle":
                self.request.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while True:
                    self.request.sendall(b"a")
                    sent += 1
                    time.sleep(0.05)
            status = int(m[1])
            if m[0] == "huge-head":
                self.request.sendall(b"HTTP/1.1 %d X\r\n" % status)
                line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
                while True:
                    self.request.sendall(line)
                    sent += len(line)
            if m[0] == "endless":
                self.request.sendall(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
                chunk = b"%x\r\n%s\r\n" % (16384, b"b" * 16384)
                while True:
                    self.request.sendall(chunk)
                    sent += len(chunk)
        except OSError:
            log("cut %s %d" % (" ".join(m), sent))


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    port = int(os.environ["PORT"])
    with Server(("127.0.0.1", port), Handler) as srv:
        srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.serve_forever()


if __name__ == "__main__":
    main()
