#!/bin/sh
# weightctl bench and weightctl history end to end on a private daemon and a generated model:
# --help, usage errors, a run with --json/--out (every figure present and sane), the run
# recorded in the catalog and listed by history --json, a second run listed after it, and
# --png when gnuplot is installed. The daemon (and weightctl, which measures pinned H2D
# itself) run with two emulated GPUs, so a step runs for each and is labelled emulated.
set -u
export WEIGHTD_GPU_EMULATE=2:256M
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
P=
trap '[ -n "$P" ] && kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; cat "$T/log" 2>/dev/null; exit 1; }
S="--state-dir $T"
check() { # check DESCRIPTION EXPECTED_RC COMMAND...
	desc=$1 want=$2
	shift 2
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	[ "$rc" -eq "$want" ] || { cat "$T/out" "$T/err"; fail "$desc: exit $rc, want $want"; }
}

for v in bench history; do
	check "$v --help" 0 $W $v --help
	grep -q "usage: weightctl $v" "$T/out" || fail "$v --help lacks its usage line"
done
check "bench without a model" 2 $W bench
check "bench with two models" 2 $W bench a b
check "history with two models" 2 $W $S history a b

"$W" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen failed"
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --models "$T/models" \
	--host-budget 64M 2>"$T/log" &
P=$!
i=0
while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$T/sock" ] || fail "the daemon did not create its socket"
export WEIGHTD_SOCKET="$T/sock"
i=0
until "$W" load llama-tiny >/dev/null 2>&1; do # waits for the scan at start
	i=$((i + 1))
	[ $i -lt 50 ] || fail "the daemon never published llama-tiny"
	sleep 0.1
done

check "history before any run" 0 $W $S history --json llama-tiny
python3 -c "import json,sys; assert json.load(open('$T/out'))['runs'] == []" ||
	fail "history not empty before a run"
check "bench unknown model" 1 $W $S bench no-such-model

check "bench --json --out" 0 $W $S bench --json --out "$T/b.json" llama-tiny
grep -q '^bench: cold load' "$T/err" || { cat "$T/err"; fail "no progress lines on stderr"; }
cmp -s "$T/out" "$T/b.json" || python3 -c "
import json; assert json.load(open('$T/out')) == json.load(open('$T/b.json'))" ||
	fail "--out differs from the stdout report"
python3 - "$T/out" <<'PY' || fail "bench JSON fields"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["model"] == "llama-tiny" and r["bytes"] > 0 and r["files"] == 2, r
assert r["file_bytes"] >= r["bytes"]
assert r["cold_method"] in ("drop_caches", "fadvise_dontneed"), r["cold_method"]
for tier in ("cold", "warm"):
    assert r["host"][tier + "_s"] > 0 and r["host"][tier + "_bps"] > 0, r["host"]
    assert r["storage"][tier + "_bps"] > 0, r["storage"]
assert r["host"]["bytes"] == r["bytes"], r["host"]
assert r["host"]["runs"] == 2 and r["host"]["first_s"] >= r["host"]["cold_s"] > 0, r["host"]
assert isinstance(r["storage"]["direct"], bool)
assert r["memcpy_bps"] > 0
for k in ("host_cold_vs_storage_cold", "host_warm_vs_storage_warm"):
    assert 0 < r["ratios"][k] < 100, r["ratios"]
    assert r["suspect"][k] == (r["ratios"][k] > 1.05), (r["ratios"], r["suspect"])
assert r["storage"]["warm_method"] in ("io_uring", "psync x1", "psync x2"), r["storage"]
for k in ("warm_uring_bps", "warm_psync1_bps", "warm_psync2_bps"):
    assert r["storage"][k] > 0 and r["storage"][k] <= r["storage"]["warm_bps"] * 1.0001, r["storage"]
assert [g["tier"] for g in r["gpus"]] == ["cuda:0", "cuda:1"], r.get("gpu_reason")
for g in r["gpus"]:
    assert g["emulated"] is True and "error" not in g, g
    assert g["load_bps"] > 0 and g["h2d_pinned_bps"] > 0, g
assert r["tensors"] > 0 and 0 < r["attach_resolve_s"] < 10, r
assert r["memory"]["host"] == r["bytes"], r["memory"]
assert r["memory"]["host_cache_used"] >= r["bytes"], r["memory"]
PY

check "history --json" 0 $W $S history --json llama-tiny
python3 - "$T/out" "$T/b.json" <<'PY' || fail "history --json content"
import json, sys
runs = json.load(open(sys.argv[1]))["runs"]
bench = json.load(open(sys.argv[2]))
assert len(runs) == 1, runs
assert runs[0]["model"] == "llama-tiny" and runs[0]["time"] > 0
assert runs[0]["figures"] == bench, (runs[0]["figures"], bench)
PY

# A second run (this time by path) is listed after the first; history names it by name too.
check "bench by path, --no-record" 0 $W $S bench --no-record "$T/models/llama-tiny"
check "bench second run" 0 $W $S bench llama-tiny
for l in "cold: load via weightd" "warm: load via weightd" "baseline .*raw O_DIRECT read" \
	"baseline .*best raw read of the cached files"; do
	grep -q "$l" "$T/out" || { cat "$T/out"; fail "text report lacks a line with '$l'"; }
done
# Every ratio printed is at most 105%, or it says its baseline is suspect.
python3 - "$T/out" <<'PY' || { cat "$T/out"; fail "a ratio above 105% reported as a result"; }
import re, sys
for line in open(sys.argv[1]):
    for pct in re.findall(r"(\d+)% of the baseline", line):
        assert int(pct) <= 105, line
PY
# A saved report whose warm baseline was wrong (the 594% of issue 15): no ratio, "suspect".
python3 - "$T/b.json" "$T/bad.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["storage"]["warm_bps"] = r["host"]["warm_bps"] / 5.94
r["ratios"]["host_warm_vs_storage_warm"] = 5.94
json.dump(r, open(sys.argv[2], "w"))
PY
check "bench --from a suspect report" 0 $W bench --from "$T/bad.json"
grep -q "warm: load via weightd.*baseline suspect" "$T/out" || { cat "$T/out"; fail "no 'baseline suspect'"; }
grep -q "594% of the baseline" "$T/out" && { cat "$T/out"; fail "594% reported as a result"; }
check "bench --from a missing file" 1 $W bench --from "$T/none.json"
check "bench --from with a model" 2 $W bench --from "$T/bad.json" llama-tiny
check "history by path" 0 $W $S history --json "$T/models/llama-tiny"
python3 -c "
import json; r = json.load(open('$T/out'))['runs']
assert len(r) == 2 and r[0]['id'] < r[1]['id'], r" || fail "history after two runs"
check "history text" 0 $W $S history
[ "$(grep -c llama-tiny "$T/out")" -eq 2 ] || { cat "$T/out"; fail "history text rows"; }

if command -v gnuplot >/dev/null; then
	check "bench --png" 0 $W $S bench --no-record --png "$T/b.png" llama-tiny
	head -c 8 "$T/b.png" | od -An -c | grep -q 'P   N   G' || fail "--png did not write a PNG"
	png=checked
else
	png="skipped (no gnuplot)"
fi

kill -TERM $P
wait $P
rc=$?
P=
[ $rc -eq 0 ] || fail "SIGTERM exit status $rc"
echo "bench_cli: bench JSON and text, history JSON and text, --out, --no-record; --png $png"
