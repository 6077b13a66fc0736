#!/bin/sh
# bench_gpu on the emulated device (the strict one: copies outside an allocation fail), one
# row per model size: under one 64 MiB pinned chunk (whose slot arithmetic used to underflow)
# and over four chunks (whose pinned source offset used to drift off alignment). Each run
# must measure every path, report the staging slots' path (page-locked, no pageable copies
# from the staged host path) and count no misaligned pinned source.
set -u
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export WEIGHTD_GPU_EMULATE=1:1G
for size in 16M 300M; do
	"$WD_BUILD/bench/bench_gpu" -s $size -r 1 -d "$T/m-$size" >"$T/out" 2>"$T/err" ||
		{ cat "$T/out" "$T/err"; echo "FAIL: bench_gpu -s $size: exit $?"; exit 1; }
	tail -n 1 "$T/out" >"$T/json"
	python3 - "$T/json" $size <<'PY' || { cat "$T/out" "$T/err"; echo "FAIL: -s $size"; exit 1; }
import json, sys
r = json.load(open(sys.argv[1]))
e = r["emulated"]
for k in ("pinned_h2d_gbps", "disk_to_vram_gbps", "host_to_vram_gbps",
          "host_registered_to_vram_gbps", "host_register_gbps"):
    assert e[k] > 0, (k, e)
assert r["pinned_src_misaligned"] == 0, r
s = r["staging"]
assert s["slots_locked"] and s["slots_err"] == 0 and s["staged_bytes"] >= r["bytes"], s
PY
	grep -q "staging path: slots page-locked" "$T/out" || { cat "$T/out"; echo "FAIL: no staging path line"; exit 1; }
done
echo "bench_gpu: 16M and 300M models, every path measured, aligned pinned sources, staged host copies"
