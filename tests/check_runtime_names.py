#!/usr/bin/env python3
"""Fails when code outside src/lib/runtime compares or picks runtime names.

Runtimes are found with sg_runtime_find() and described by their ops and
capability flags (include/sgpu/runtime.h); only the registry
(src/lib/runtime/registry.c) lists them. The names are read from the
runtimes' ops (`.name = "..."`), so a new runtime is checked too.

Flagged, outside src/lib/runtime (comments ignored):
  - a string comparison (strcmp, strncmp, strcasecmp, ...) with a runtime
    name literal, except a config loader comparing its `key` (the "slurm"
    config section is a key, not a runtime);
  - a runtime name literal chosen by ?: or assigned (`? "oci"`, `= "oci"`),
    except a config table's `.key = "slurm"` (again the section's key);
  - a runtime name literal as the value of a "runtime" field.

Usage: check_runtime_names.py [SOURCE_ROOT]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
lib = root / "src" / "lib"
runtime_dir = lib / "runtime"

names = set()
for f in runtime_dir.glob("*.c"):
    text = f.read_text()
    for m in re.finditer(r"const\s+sg_runtime_ops_t\s+\w+\s*=\s*\{(.*?)\n\};", text, re.S):
        n = re.search(r'\.name\s*=\s*"([^"]+)"', m.group(1))
        if n:
            names.add(n.group(1))
if not names:
    print(f"no runtime ops found under {runtime_dir}", file=sys.stderr)
    sys.exit(1)

alt = "|".join(re.escape(n) for n in sorted(names))
lit = rf'"(?:{alt})"'
patterns = [
    (re.compile(rf"\bstr(?:n?case)?n?cmp\s*\(\s*(?!key\s*,)[^;{{}}]*?{lit}"), "string comparison with a runtime name"),
    # (a designated `.key = "slurm"` names a config key, the runtime's options section)
    (re.compile(rf"(?<!\.key )[?:=]\s*{lit}"), "runtime name chosen or assigned"),
    (re.compile(rf'"runtime"\s*,\s*{lit}'), "runtime name as a field value"),
]


def strip_comments(text):
    """Blanks /* */ and // comments, keeping line numbers and strings."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


found = []
for f in sorted(lib.rglob("*")):
    if f.suffix not in (".c", ".h") or runtime_dir in f.parents:
        continue
    text = strip_comments(f.read_text())
    for pat, what in patterns:
        for m in pat.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{f.relative_to(root)}:{line}: {what}: {m.group(0).strip()}")

if found:
    print("runtime names used outside src/lib/runtime (use sg_runtime_find() and the ops' caps):")
    print("\n".join(sorted(set(found))))
    sys.exit(1)
print(f"no runtime name ({', '.join(sorted(names))}) compared or chosen outside src/lib/runtime")
