#!/usr/bin/env python3
"""Writes a C source holding the web console's files (see src/lib/api/console-assets.h).

usage: embed-web.py OUTPUT.c FILE...
index.html is served at / ; every other file at /console/NAME.
"""
import os
import sys

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".png": "image/png",
}


def main():
    out, files = sys.argv[1], sys.argv[2:]
    parts = ['#include "api/console-assets.h"\n']
    entries = []
    for i, path in enumerate(sorted(files, key=os.path.basename)):
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        ctype = TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
        body = ",".join(str(b) for b in data) or "0"
        parts.append("static const unsigned char d%d[] = {%s};\n" % (i, body))
        served = "/" if name == "index.html" else "/console/" + name
        entries.append('  {"%s", "%s", "%s", d%d, %d},\n' % (served, name, ctype, i, len(data)))
    parts.append("const sg_web_asset_t sg_web_assets[] = {\n%s};\n" % "".join(entries))
    parts.append("const size_t sg_web_n_assets = %d;\n" % len(entries))
    with open(out, "w") as f:
        f.write("".join(parts))


if __name__ == "__main__":
    main()
