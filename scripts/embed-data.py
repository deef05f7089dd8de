#!/usr/bin/env python3
"""Writes a C source holding one data file as a NUL-terminated byte array.

usage: embed-data.py OUTPUT.c SYMBOL FILE
defines `const char SYMBOL[]` (the file's bytes and a NUL) and
`const size_t SYMBOL_len` (the file's length, without the NUL).
"""
import sys


def main():
    out, symbol, path = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        sys.exit("%s holds a NUL byte" % path)
    body = ",".join(str(b) for b in data + b"\0")
    with open(out, "w") as f:
        f.write("#include <stddef.h>\n")
        f.write("extern const char %s[];\nextern const size_t %s_len;\n" % (symbol, symbol))
        f.write("const char %s[] = {%s};\n" % (symbol, body))
        f.write("const size_t %s_len = %d;\n" % (symbol, len(data)))


if __name__ == "__main__":
    main()
