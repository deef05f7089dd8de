#!/usr/bin/env bash
# Runs every libFuzzer target of a fuzzing build dir for a bounded time.
#   scripts/fuzz.sh BUILD_DIR [TARGET...]     (make fuzz: BUILD_DIR is build-fuzz)
# BUILD_DIR is configured with clang, -Dfuzzing=true and ASan+UBSan. Each
# target runs FUZZ_SECONDS (default 60) on a copy of its seed corpus under
# BUILD_DIR/fuzz-run/NAME/ (the repository's corpus is never written to);
# crashing inputs land in BUILD_DIR/fuzz-run/NAME/artifacts/. A dictionary
# tests/fuzz/NAME.dict is passed when present. Prints a table
# of executions and coverage; exits 1 when any target found a crash, a leak
# or a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD

build=${1:?usage: $0 BUILD_DIR [TARGET...]}
shift
build=$(cd "$build" && pwd)
seconds=${FUZZ_SECONDS:-60}
# Extra libFuzzer flags, e.g. FUZZ_FLAGS=-jobs=2
flags=${FUZZ_FLAGS:-}

# Regenerate first, so that the list below is the one tests/meson.build has now.
ninja -C "$build" build.ninja >/dev/null

if [ $# -gt 0 ]; then
  targets=("$@")
else
  # The targets as the build declares them (tests/meson.build fuzz_targets).
  mapfile -t targets < <(meson introspect --targets "$build" | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    n = t["name"]
    if n.startswith("fuzz-") and n.endswith("-libfuzzer"):
        print(n[len("fuzz-"):-len("-libfuzzer")])')
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no libFuzzer targets in $build (configure it with CC=clang -Dfuzzing=true)" >&2; exit 2; }

exes=()
for t in "${targets[@]}"; do exes+=("tests/fuzz-$t-libfuzzer"); done
ninja -C "$build" "${exes[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

results=()
failed=0
for t in "${targets[@]}"; do
  work=$build/fuzz-run/$t
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  if [ -d "$src/tests/fuzz/corpus/$t" ]; then
    cp -R "$src/tests/fuzz/corpus/$t/." "$work/corpus/"
  fi
  dict=()
  if [ -f "$src/tests/fuzz/$t.dict" ]; then
    dict=(-dict="$src/tests/fuzz/$t.dict")
  fi
  echo "== fuzz-$t: ${seconds}s"
  set +e
  # From the work dir: the layer target keeps only it (and its tmpfs) writable.
  (cd "$work" && exec "$build/tests/fuzz-$t-libfuzzer" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=25 -rss_limit_mb=2560 -error_exitcode=1 -timeout_exitcode=70 -artifact_prefix=artifacts/ "${dict[@]}" $flags corpus) >"$work/log" 2>&1
  rc=$?
  set -e
  status=ok
  case $rc in
    0) ;;
    77) status=skipped ;; # the target cannot run here (it says why)
    *) status="FAILED (exit $rc)"; failed=1 ;;
  esac
  # libFuzzer's last status line: "#N <event> cov: C ft: F corp: ..."; then its final stats.
  last=$(grep -aE '^#[0-9]+' "$work/log" | tail -n 1 || true)
  execs=$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n}' "$work/log")
  rate=$(awk '/^stat::average_exec_per_sec:/ {n = $2} END {print n}' "$work/log")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
  results+=("$(printf '%-12s %-18s %12s %10s %7s %7s %7s' "$t" "$status" "${execs:--}" "${rate:--}" "${cov:--}" \
    "${ft:--}" "${corp:--}")")
  if [ "$status" = skipped ]; then
    grep -a 'skipped' "$work/log" | tail -n 1 || true
  elif [ $rc -ne 0 ]; then
    echo "-- fuzz-$t failed; the end of its log ($work/log):"
    grep -avE '^#[0-9]+|^(INFO|MERGE)' "$work/log" | tail -n 60 || true
    for a in "$work"/artifacts/*; do
      [ -f "$a" ] || continue
      echo "-- input saved as $a ($(wc -c <"$a") bytes); replay: $build/tests/fuzz-$t-libfuzzer $a"
      od -A d -c "$a" | head -n 40 || true
    done
  fi
done

echo
printf '%-12s %-18s %12s %10s %7s %7s %7s\n' target result executions exec/s cov ft corpus
for r in "${results[@]}"; do echo "$r"; done
exit $failed
