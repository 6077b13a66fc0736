#!/bin/sh
# scripts/gpu-check.sh (make gpu-check) on a machine with no GPU, from the build under test:
# it runs test_gpu, test_devcache (real driver) and bench_gpu, each of which must report a
# skip with its reason, and prints one JSON line as its last line, with every check and its
# verdict and the benchmark's own JSON; with $OUT set the log and the JSON are written there.
# On a GPU machine the same script is the device check (docs/gpu.md); here it runs only when
# there is no driver (a real run is not a test of the script).
set -u
[ -e /dev/nvidiactl ] && { echo "SKIP: a GPU machine: run make gpu-check there instead"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; tail -n 30 "$T/out"; exit 1; }
OUT="$T/out-dir"
mkdir -p "$OUT"
OUT="$OUT" GPU_CHECK_SIZE=16M GPU_CHECK_RUNS=1 sh "$WD_ROOT/scripts/gpu-check.sh" "$WD_BUILD" \
	>"$T/out" 2>"$T/err"
rc=$?
[ $rc -eq 0 ] || fail "exit $rc with no GPU (skips are not failures)"
tail -n 1 "$T/out" >"$T/last.json"
python3 - "$T/last.json" "$OUT/gpu-check.json" <<'PY' || fail "JSON content"
import json, sys
r = json.load(open(sys.argv[1]))
assert r == json.load(open(sys.argv[2])), "the JSON under $OUT differs"
assert r["gpu_check"] == "pass" and r["failed"] == [], r
c = r["checks"]
assert set(c) == {"test_gpu", "test_devcache", "bench_gpu"}, c
for k in ("test_gpu", "test_devcache"):
    assert c[k]["verdict"] == "skip" and c[k]["rc"] == 77 and c[k]["skip_reason"], c[k]
# The driver-independent cases of test_gpu ran and passed.
assert c["test_gpu"]["cases"]["test_cu_err_table"] == "pass", c["test_gpu"]["cases"]
# The stub-driver case needs the CUDA headers: a build without them (GPU tier compiled out)
# skips it, saying so.
assert c["test_gpu"]["cases"]["test_driver_stays_loaded"] == "pass" or \
    "compiled out" in c["test_gpu"]["skip_reason"], c["test_gpu"]
assert c["bench_gpu"]["verdict"] == "skip" and "skipped" in r["bench"], r["bench"]
PY
grep -q "gpu-check: test_gpu exit 77" "$OUT/gpu-check.log" || fail "the log lacks the checks"
[ "$(wc -l <"$T/out")" -eq 1 ] || fail "stdout holds more than the JSON line"
echo "gpu_check: one JSON line, every check skipped with its reason, log and JSON under \$OUT"
