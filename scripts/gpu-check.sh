#!/usr/bin/env bash
# The GPU truth check, for a machine with an NVIDIA GPU, its driver and nvcc:
# builds sgpud (or uses SGPU_BUILD_DIR), starts it with NVML discovery (no
# --gpus), checks that GET /v1/nodes lists every GPU nvidia-smi sees with its
# UUID and memory, runs tests/gpu/cuda-probe.cu as a process worker holding
# one GPU, and checks that the worker's CUDA sees exactly that GPU (one
# device, the UUID /v1/nodes says the worker holds). Prints each step and
# PASS or FAIL; exits non-zero on a failure. Nothing in CI needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SGPU_BUILD_DIR:-build}
work=$(mktemp -d /tmp/sgpu-gpu-check.XXXXXX)
fail() { echo "FAIL: $*"; exit 1; }
step() { echo "== $*"; }

step "driver"
nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader | tee "$work/smi.csv"
[ -s "$work/smi.csv" ] || fail "nvidia-smi lists no GPU"

step "build ($build)"
[ -x "$build/sgpud" ] || { meson setup "$build" >/dev/null && ninja -C "$build" sgpud >/dev/null; }
command -v nvcc >/dev/null || fail "nvcc not found"
nvcc -O2 -o "$work/cuda-probe" tests/gpu/cuda-probe.cu
chmod 755 "$work" "$work/cuda-probe"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "sgpud on port $port, data in $work/data (NVML discovery)"
"$build/sgpud" --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/sgpud.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
key=""
for _ in $(seq 100); do
  [ -s "$work/data/admin.key" ] && curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
key=$(cat "$work/data/admin.key")
api() { curl -fsS -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "$@"; }

step "GET /v1/nodes"
api "http://127.0.0.1:$port/v1/nodes" | tee "$work/nodes.json"
echo
python3 - "$work/nodes.json" "$work/smi.csv" <<'PY' || fail "/v1/nodes does not match nvidia-smi"
import json, sys
node = json.load(open(sys.argv[1]))["nodes"][0]
smi = [l.split(", ") for l in open(sys.argv[2]).read().strip().splitlines()]
assert node["gpus_total"] == len(smi), (node["gpus_total"], len(smi))
for g, (idx, name, uuid, mem) in zip(sorted(node["gpus"], key=lambda g: g["index"]), smi):
    assert g["source"] == "nvml", g
    assert g["uuid"] == uuid, (g["uuid"], uuid)
    assert g["name"] == name, (g["name"], name)
    mib = int(mem.split()[0])
    assert g["memory_bytes"] and abs(g["memory_bytes"] / 2**20 - mib) <= 1, (g["memory_bytes"], mem)
print("nodes: %d GPU(s), names, UUIDs and memory match nvidia-smi" % len(smi))
PY
type=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nodes"][0]["gpus"][0]["type"])' "$work/nodes.json")

step "a process worker holding one $type"
api -X POST "http://127.0.0.1:$port/v1/endpoints" -d "{\"name\":\"cuda-probe\",\"runtime\":\"process\",
  \"command\":[\"$work/cuda-probe\"],\"gpu\":{\"type\":\"$type\",\"count\":1},\"health\":{\"path\":\"/health\"},
  \"workers\":{\"min\":1,\"max\":1}}" >/dev/null
answer=""
for _ in $(seq 600); do
  answer=$(api "http://127.0.0.1:$port/e/cuda-probe/health" 2>/dev/null) && break
  sleep 0.2
done
[ -n "$answer" ] || fail "the worker never answered (sgpud log: $work/sgpud.log)"
echo "worker: $answer"
api "http://127.0.0.1:$port/v1/nodes" >"$work/nodes2.json"
python3 - "$work/nodes2.json" "$answer" <<'PY' || fail "the worker does not see exactly the GPU it holds"
import json, sys
gpus = json.load(open(sys.argv[1]))["nodes"][0]["gpus"]
held = [g for g in gpus if g["endpoint"] == "cuda-probe"]
seen = json.loads(sys.argv[2])
assert len(held) == 1, held
assert seen["device_count"] == 1, seen
assert seen["uuids"] == [held[0]["uuid"]], (seen["uuids"], held[0]["uuid"])
print("worker sees 1 device, %s, the GPU sgpud gave it (index %d)" % (held[0]["uuid"], held[0]["index"]))
PY
echo PASS
