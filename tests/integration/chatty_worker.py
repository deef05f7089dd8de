#!/usr/bin/env python3
"""A worker for the log tests: an HTTP server on $PORT that writes lines on request.

  GET /health                       200
  GET /say?text=T&n=N&stream=S&size=B
                                    writes N lines "T i" (i from 0; padded to B bytes)
                                    to stdout or stderr, then answers 200
  GET /flood?n=N                    writes N numbered lines as fast as it can, then answers
  ANY other                         200 {"ok": true}

With CHATTY_LINES_PER_S set, it also writes that many lines a second from the start.
"""

import http.server
import json
import os
import sys
import threading
import time
import urllib.parse


def emit(stream, lines):
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write("".join(line + "\n" for line in lines))
    out.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/health":
            return self.answer({"ok": True})
        if url.path == "/say":
            n, size = int(q.get("n", "1")), int(q.get("size", "0"))
            text = q.get("text", "hello")
            lines = []
            for i in range(n):
                line = "%s %d" % (text, i)
                lines.append(line + "." * max(0, size - len(line)))
            emit(q.get("stream", "stdout"), lines)
            return self.answer({"said": n, "pid": os.getpid()})
        if url.path == "/flood":
            n = int(q.get("n", "1000"))
            emit("stdout", ["flood %d %s" % (i, "x" * 60) for i in range(n)])
            return self.answer({"said": n, "pid": os.getpid()})
        return self.answer({"ok": True, "pid": os.getpid()})

    do_POST = do_GET


def chatter(rate):
    i = 0
    start = time.monotonic()
    while True:
        due = int((time.monotonic() - start) * rate)
        if due > i:
            emit("stdout", ["chatter %d %s" % (j, "y" * 80) for j in range(i, due)])
            i = due
        time.sleep(0.01)


def main():
    rate = float(os.environ.get("CHATTY_LINES_PER_S", "0") or 0)
    if rate > 0:
        threading.Thread(target=chatter, args=(rate,), daemon=True).start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
