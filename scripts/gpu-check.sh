#!/bin/sh
# The prepared device check (docs/gpu.md): on a GPU machine with nothing installed, from the
# bundle carried there (make STATIC=1 all gpu-bundle: build-static/gpu-bundle), runs
#   1. tests/test_gpu       the CUDA device layer on the real driver,
#   2. tests/test_devcache  the device tier end to end on the real driver (WD_DEVCACHE_REAL=1),
#   3. bench/bench_gpu      disk/host -> VRAM against pinned H2D, O_DIRECT storage and, when
#                           python3 can import torch with CUDA and safetensors, the
#                           safetensors.torch.load_file(..., device="cuda:0") baseline,
# each under a time limit so that the whole stays within 8 minutes, and prints ONE JSON line
# (the last line of its output) with every check and every figure. With $OUT set, the full
# log goes to $OUT/gpu-check.log and the JSON to $OUT/gpu-check.json as well.
# It builds and installs nothing. Exit status: 0 when every check passed or skipped for lack
# of a GPU, 1 when one failed.
#
# usage: scripts/gpu-check.sh [DIR]   (default build-static/gpu-bundle; a build dir works too)
# environment: GPU_CHECK_SIZE (bench model size, default 1G), GPU_CHECK_RUNS (default 2)
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-build-static/gpu-bundle}
case $B in /*) ;; *) B="$ROOT/$B" ;; esac
SIZE=${GPU_CHECK_SIZE:-1G}
RUNS=${GPU_CHECK_RUNS:-2}
T=$(mktemp -d /tmp/weightd-gpu-check.XXXXXX)
LOG="$T/gpu-check.log"
START=$(date +%s)
trap 'rm -rf "$T"' EXIT INT TERM
: >"$LOG"

say() { echo "$*" | tee -a "$LOG" >&2; }

# The carried libraries (libcmocka.so.0 has no static archive) and the test corpus.
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export WD_BUILD="$B" WD_ROOT="$ROOT"
export WD_CORPUS="${WD_CORPUS:-$B/corpus}"
[ -d "$WD_CORPUS" ] || WD_CORPUS="$ROOT/../shared/corpus"
export HOME="$T/home" XDG_RUNTIME_DIR="$T/run" XDG_STATE_HOME="$T/state"
mkdir -p "$HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
unset WEIGHTD_GPU_EMULATE WEIGHTD_STATE_DIR WEIGHTD_SOCKET

say "gpu-check: build $B, corpus $WD_CORPUS, bench size $SIZE x $RUNS runs"
{
	uname -a
	nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total,compute_mode \
		--format=csv 2>&1 || echo "nvidia-smi: not available"
	ldd "$B/weightd" 2>&1
} >>"$LOG" 2>&1

# run NAME LIMIT_S COMMAND...: output to $T/NAME.out (and the log), status to $T/NAME.rc.
run() {
	name=$1 limit=$2
	shift 2
	s=$(date +%s)
	say "gpu-check: $name ($*) ..."
	(cd "$T" && timeout -k 10 "$limit" "$@") >"$T/$name.out" 2>&1
	rc=$?
	echo $rc >"$T/$name.rc"
	echo $(($(date +%s) - s)) >"$T/$name.secs"
	cat "$T/$name.out" >>"$LOG"
	say "gpu-check: $name exit $rc in $(cat "$T/$name.secs") s"
}

missing=""
for f in tests/test_gpu tests/test_devcache bench/bench_gpu weightd; do
	[ -x "$B/$f" ] || missing="$missing $f"
done
if [ -n "$missing" ]; then
	say "gpu-check: $B lacks$missing: make it with make STATIC=1 all gpu-bundle"
	echo "{\"gpu_check\":\"error\",\"why\":\"$B lacks$missing\"}"
	exit 1
fi

run test_gpu 90 "$B/tests/test_gpu"
run test_devcache 150 env WD_DEVCACHE_REAL=1 "$B/tests/test_devcache"
run bench_gpu 220 "$B/bench/bench_gpu" -s "$SIZE" -r "$RUNS" -d "$T/bench-data"

END=$(date +%s)
export GC_T="$T" GC_SECS=$((END - START)) GC_BUILD="$B"
json=$(python3 - 2>>"$LOG" <<'PY'
import json, os, re, subprocess
t = os.environ["GC_T"]

def read(name, ext, default=""):
    try:
        with open(os.path.join(t, name + "." + ext)) as f:
            return f.read()
    except OSError:
        return default

def cases(out):
    """cmocka's per-case verdicts: [ OK ], [ FAILED ], [ SKIPPED ] lines."""
    res = {}
    for m in re.finditer(r"^\[\s*(OK|FAILED|SKIPPED|ERROR)\s*\] (\w+)$", out, re.M):
        verdict = {"OK": "pass", "FAILED": "fail", "SKIPPED": "skip", "ERROR": "fail"}
        res.setdefault(m.group(2), verdict[m.group(1)])
    return res

checks = {}
for name in ("test_gpu", "test_devcache"):
    out = read(name, "out")
    rc = int(read(name, "rc", "-1") or -1)
    skip = re.search(r"^SKIP:? (.*)$", out, re.M)
    checks[name] = {"rc": rc, "secs": int(read(name, "secs", "0") or 0),
                    "verdict": "pass" if rc == 0 else "skip" if rc == 77 else
                    "timeout" if rc in (124, 137) else "fail",
                    "cases": cases(out), "skip_reason": skip.group(1) if skip else None}
bench_out = read("bench_gpu", "out")
bench = None
for line in reversed(bench_out.splitlines()):
    if line.startswith("{"):
        try:
            bench = json.loads(line)
            break
        except ValueError:
            pass
brc = int(read("bench_gpu", "rc", "-1") or -1)
checks["bench_gpu"] = {"rc": brc, "secs": int(read("bench_gpu", "secs", "0") or 0),
                       "verdict": "skip" if bench and "skipped" in bench else
                       "pass" if brc == 0 and bench else "fail"}
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,pci.bus_id",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=20).stdout.strip().splitlines()
except (OSError, subprocess.SubprocessError):
    smi = []
failed = [k for k, v in checks.items() if v["verdict"] in ("fail", "timeout")]
print(json.dumps({"gpu_check": "fail" if failed else "pass", "failed": failed,
                  "gpus": smi, "build": os.environ["GC_BUILD"],
                  "secs": int(os.environ["GC_SECS"]), "checks": checks, "bench": bench},
                 separators=(",", ":")))
PY
)
if [ -z "$json" ]; then
	# No python3: the verdicts alone, by hand.
	json="{\"gpu_check\":\"unknown\",\"why\":\"python3 missing\",\"rc\":{\"test_gpu\":$(cat "$T/test_gpu.rc"),\"test_devcache\":$(cat "$T/test_devcache.rc"),\"bench_gpu\":$(cat "$T/bench_gpu.rc")}}"
fi
echo "$json" >>"$LOG"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
	cp "$LOG" "$OUT/gpu-check.log"
	echo "$json" >"$OUT/gpu-check.json"
fi
echo "$json"
case $json in *'"gpu_check":"fail"'*) exit 1 ;; esac
exit 0
