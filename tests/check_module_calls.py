#!/usr/bin/env python3
"""Fails when the daemon's modules call each other in a circle.

Modules (docs/DESIGN.md section 2): api (src/lib/api), auth (src/lib/auth), gateway
(src/lib/gateway but the job files), jobs (gateway/jobs*.c, job-writer.c,
webhook.c), scaler, meter, logs, the fleet (src/lib/daemon but daemon.c and
config.c) and the daemon proper (daemon/daemon.c, config.c). A module calls
another when one of its files calls a non-static sg_* function defined in a
file of the other (comments ignored). The check fails on any cycle among
them and prints it; with -v it prints the graph.

Usage: check_module_calls.py [SOURCE_ROOT] [-v]
"""
import pathlib
import re
import sys

args = [a for a in sys.argv[1:] if a != "-v"]
verbose = "-v" in sys.argv[1:]
root = pathlib.Path(args[0] if args else pathlib.Path(__file__).resolve().parent.parent)
lib = root / "src" / "lib"
MODULES = ("api", "gateway", "jobs", "scaler", "meter", "logs", "fleet", "daemon", "auth")
JOB_FILES = ("job-writer.c", "webhook.c")  # and every gateway/jobs*.c


def module_of(path):
    d, name = path.parent.name, path.name
    if d == "daemon":
        return "daemon" if name in ("daemon.c", "config.c") else "fleet"
    if d == "gateway" and (name.startswith("jobs") or name in JOB_FILES):
        return "jobs"
    return d


def strip_comments(text):
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


files = sorted(lib.glob("*/*.c"))
defined = {}
for f in files:
    for m in re.finditer(r"^(?!static\b)[A-Za-z][^\n;{]*?\b(sg_\w+)\s*\(", strip_comments(f.read_text()), re.M):
        defined.setdefault(m.group(1), module_of(f))

calls = {m: {} for m in MODULES}
for f in files:
    caller = module_of(f)
    if caller not in calls:
        continue
    for m in re.finditer(r"\b(sg_\w+)\s*\(", strip_comments(f.read_text())):
        callee = defined.get(m.group(1))
        if callee in MODULES and callee != caller:
            calls[caller].setdefault(callee, set()).add(m.group(1))

if verbose:
    for caller in MODULES:
        for callee, fns in sorted(calls[caller].items()):
            print("%s -> %s (%s)" % (caller, callee, ", ".join(sorted(fns))))

# Depth-first search for a cycle.
state, stack = {}, []


def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(calls[m]):
        if state.get(n) == "open":
            cycle = stack[stack.index(n):] + [n]
            print("cycle: " + "; ".join("%s -> %s (%s)" % (a, b, ", ".join(sorted(calls[a][b])))
                                        for a, b in zip(cycle, cycle[1:])))
            return True
        if n not in state and visit(n):
            return True
    stack.pop()
    state[m] = "done"
    return False


for m in MODULES:
    if m not in state and visit(m):
        sys.exit(1)
print("no cycle among %s" % ", ".join(MODULES))
