#!/bin/sh
# Recovery end to end on a running weightd (core/policy/recovery.h, core/base/fault.h, core/daemon/psi.h):
#   1. injected faults ($WEIGHTD_FAULT): reads that fail with EINTR are retried and the bytes
#      served are the file's; an extent allocation that fails is retried after evicting the
#      unpinned entry; faulting in pages that fails with nothing left to evict gives a clear
#      error; /metrics counts the retries;
#   2. quarantine: a truncated file fails three loads, the fourth is refused at once as
#      quarantined (shown by `weightctl ps`); `weightctl unload` clears it, and so does
#      rewriting the file and rescanning;
#   3. memory pressure: a fake PSI file ($WEIGHTD_PSI_PATH) crossing the threshold sheds the
#      unpinned entry and keeps the pinned one (and vae-tiny, whose bytes are identical to
#      sd-tiny's vae and so share its pinned entry).
set -u
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
P='' H=''
trap 'kill $H 2>/dev/null; kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; tail -n 30 "$T/log"; exit 1; }
export WEIGHTD_SOCKET="$T/sock"
S="--state-dir $T/state"
port=$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metric() { # metric NAME: its value in /metrics
	python3 - "$port" "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read()
for line in text.decode().splitlines():
    if line.startswith(sys.argv[2] + " "):
        print(int(float(line.split()[1])))
PY
}
psi() { # psi AVG10: (re)writes the fake pressure file
	printf 'some avg10=%s avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n' \
		"$1" >"$T/psi.tmp" && mv "$T/psi.tmp" "$T/psi"
}
hoststate() { "$W" ps --json | python3 -c 'import json, sys
print(" ".join(sorted({r["state"] for r in json.load(sys.stdin)["components"]
                       if r["model"] == sys.argv[1] and r["tier"] == "host"})))' "$1"; }
resident() { "$W" ps --json | python3 -c 'import json, sys
print(" ".join(sorted({r["model"] for r in json.load(sys.stdin)["components"]
                       if r["tier"] == "host" and r["state"] == "resident"})))'; }

"$W" gen --preset demo "$T/m" >/dev/null || fail "gen"
psi 0.00
WEIGHTD_FAULT="read:EINTR:2,alloc:ENOSPC:1@1,populate:ENOMEM:1@1" WEIGHTD_PSI_PATH="$T/psi" \
	"$WD_BUILD/weightd" --foreground $S --socket "$T/sock" --models "$T/m" \
	--host-budget 64M --metrics-listen "127.0.0.1:$port" --memory-pressure 20 \
	--memory-pressure-target 1 2>"$T/log" &
P=$!
i=0
until "$W" status --json 2>/dev/null | grep -q '"models":3'; do
	i=$((i + 1))
	[ $i -lt 200 ] || fail "the daemon did not publish the demo models"
	sleep 0.05
done
grep -q 'memory pressure watch" path='"$T/psi"' mode=poll' "$T/log" || fail "PSI watch not set up"

# 1. Injected faults. The first load meets the two EINTRs (its allocation and pages are the
# first events at those points, let through by "@1").
"$W" load vae-tiny >"$T/out" 2>&1 || { cat "$T/out"; fail "load after the injected EINTRs"; }
[ "$(metric weightd_io_retries_total)" = 2 ] || fail "io retries $(metric weightd_io_retries_total)"
[ "$(metric weightd_alloc_retries_total)" = 0 ] || fail "alloc retries counted without a fault"
# The bytes served are the file's: every tensor of vae-tiny against the file itself.
python3 - "$T/m/vae-tiny.safetensors" "$W" >"$T/out" 2>&1 <<'PY' || { cat "$T/out"; fail "bytes differ"; }
import json, struct, subprocess, sys
path, w = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
names = [k for k in hdr if k != "__metadata__"]
for name in names[:40]:
    b, e = hdr[name]["data_offsets"]
    got = subprocess.run([w, "tensor-data", "vae-tiny", name], capture_output=True, check=True).stdout
    assert got == raw[8 + n + b:8 + n + e], name
print("checked", min(len(names), 40), "tensors")
PY
# The second load's extent allocation fails (ENOSPC): vae-tiny, unpinned, is evicted and the
# allocation retried; then its pages fail (ENOMEM) with nothing left to evict.
"$W" load llama-tiny >"$T/out" 2>&1 && fail "a load whose pages cannot be had"
grep -q "cannot allocate .* bytes of host cache (pages): Cannot allocate memory, and nothing left to evict" "$T/out" ||
	{ cat "$T/out"; fail "unclear allocation failure"; }
grep -q 'evicted" key="vae-tiny@' "$T/log" || fail "nothing evicted for the allocation retry"
[ "$(metric weightd_alloc_retries_total)" = 1 ] || fail "alloc retries $(metric weightd_alloc_retries_total)"
"$W" load llama-tiny >"$T/out" 2>&1 || { cat "$T/out"; fail "load once the faults ran out"; }

# 2. Quarantine.
# (A co-access prefetch may be loading it just now: unload says retry.)
i=0
until "$W" unload vae-tiny >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 100 ] || fail "unload"
	sleep 0.05
done
truncate -s -64 "$T/m/vae-tiny.safetensors"
# That prefetch may also have loaded it again between the unload and the truncate: unload
# until it is neither resident nor loading. A prefetch from here on fails on the truncated
# file, and a failed prefetch does not count toward quarantine (core/policy/recovery.h; the
# deterministic test is test_hostcache's test_prefetch_failure_not_quarantined).
i=0
until "$W" unload vae-tiny >/dev/null 2>&1 && ! hoststate vae-tiny | grep -q 'resident\|loading'; do
	i=$((i + 1))
	[ $i -lt 100 ] || fail "vae-tiny still $(hoststate vae-tiny) after the truncate"
	sleep 0.05
done
for k in 1 2 3; do
	"$W" load vae-tiny >"$T/out" 2>&1 && fail "load $k of a truncated file succeeded"
	grep -q quarantined "$T/out" && fail "quarantined too early (load $k)"
done
t0=$(date +%s%N)
"$W" load vae-tiny >"$T/out" 2>&1 && fail "a quarantined component loaded"
grep -q "quarantined: .*vae-tiny.* (3 failures; clears when the file changes)" "$T/out" ||
	{ cat "$T/out"; fail "the refusal does not say quarantined"; }
[ $((($(date +%s%N) - t0) / 1000000)) -lt 2000 ] || fail "the refusal was not immediate"
"$W" ps --all >"$T/out" || fail "ps"
grep -q "vae-tiny .* quarantined" "$T/out" || { cat "$T/out"; fail "ps does not show it"; }
[ "$(metric weightd_quarantined_total)" = 1 ] || fail "quarantine not counted"
# An operator's unload clears it: the next load tries the file again (and fails on it).
"$W" unload vae-tiny >/dev/null || fail "unload of a quarantined component"
grep -q 'quarantine cleared by the operator" component="vae-tiny"' "$T/log" ||
	fail "unload did not clear the quarantine"
"$W" load vae-tiny >"$T/out" 2>&1 && fail "the truncated file loaded"
grep -q quarantined "$T/out" && fail "still quarantined after unload"
grep -q "changed since it was scanned" "$T/out" || { cat "$T/out"; fail "not tried again"; }
"$W" load vae-tiny >/dev/null 2>&1 && fail "the truncated file loaded (2)"
"$W" load vae-tiny >/dev/null 2>&1 && fail "the truncated file loaded (3)"
"$W" load vae-tiny >"$T/out" 2>&1 && fail "the truncated file loaded (4)"
grep -q quarantined "$T/out" || { cat "$T/out"; fail "not quarantined again"; }
# Fixed: the file rewritten (a new mtime and size) and rescanned.
sleep 0.01
"$W" gen --preset demo "$T/m" >/dev/null || fail "regenerate"
"$W" $S scan "$T/m" >/dev/null || fail "rescan"
"$W" load vae-tiny >"$T/out" 2>&1 || { cat "$T/out"; fail "not cleared by the rewritten file"; }
grep -q 'quarantine cleared: the files changed' "$T/log" || fail "clearing not logged"

# 3. Memory pressure: llama-tiny unpinned, sd-tiny pinned by a client that stays.
"$W" load llama-tiny >/dev/null 2>&1 || fail "load llama-tiny"
"$W" load --pin --hold sd-tiny >"$T/hold" 2>&1 &
H=$!
i=0
until [ "$(resident)" = "llama-tiny sd-tiny vae-tiny" ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || fail "resident: $(resident)"
	sleep 0.05
done
psi 35.50
i=0
until [ "$(resident)" = "sd-tiny vae-tiny" ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || fail "not shed under pressure; resident: $(resident)"
	sleep 0.05
done
grep -q 'memory pressure: host cache shed" some_avg10=35.50 threshold=20 entries=1' "$T/log" ||
	fail "the shed is not logged"
[ "$(metric weightd_pressure_sheds_total)" = 1 ] || fail "sheds $(metric weightd_pressure_sheds_total)"
kill -0 $H 2>/dev/null || fail "the pinning client was dropped"
psi 0.00
kill $H
wait $H 2>/dev/null
kill -TERM $P
wait $P || fail "exit status $?"
echo "recovery: injected faults, quarantine and clearing, pressure shedding"
