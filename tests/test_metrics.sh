#!/bin/sh
# The /metrics endpoint end to end: weightd with --metrics-listen on a free loopback port,
# one model loaded, then every row of the table below must match the exposition (metric
# present with HELP/TYPE lines, value in range), every histogram is well formed, and the
# registry metrics block's series move (one more load adds one to the host load histogram's
# count, the ring round-trip count grows); other paths answer 404, POST 405; a taken
# port and a bad address make the daemon refuse to start; a bare port (from the config file)
# listens on 127.0.0.1, and [::1]:PORT on IPv6 loopback when the machine has one.
set -u
T=$(mktemp -d)
P=
trap '[ -n "$P" ] && kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; cat "$T/log"; exit 1; }

# A free port: bound by the kernel, released, then given to the daemon (a tiny race only).
# free_port [ADDR]: the port; fails when ADDR (default 127.0.0.1) cannot be bound here.
free_port() {
	python3 -c 'import socket, sys
a = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET)
s.bind((a, 0))
print(s.getsockname()[1])' "${1:-127.0.0.1}" 2>/dev/null
}
port=$(free_port)
"$WD_BUILD/weightctl" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen failed"
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --models "$T/models" \
	--host-budget 256M --metrics-listen "127.0.0.1:$port" 2>"$T/log" &
P=$!
i=0
while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$T/sock" ] || fail "the daemon did not create its socket"
export WEIGHTD_SOCKET="$T/sock"
# The scan at start runs on the daemon's worker: wait (5 s at most) until it published the model.
i=0
until "$WD_BUILD/weightctl" load llama-tiny >"$T/load.out" 2>&1; do
	i=$((i + 1))
	[ $i -lt 50 ] || { cat "$T/load.out"; fail "load failed"; }
	sleep 0.1
done
"$WD_BUILD/weightctl" load llama-tiny >>"$T/load.out" 2>&1 || fail "second load failed"

# get PATH [METHOD]: prints "STATUS CONTENT-TYPE" on the first line, then the body.
get() {
	python3 - "http://127.0.0.1:$port$1" "${2:-GET}" <<'PY'
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method=sys.argv[2])
try:
    r = urllib.request.urlopen(req, timeout=5)
    print(r.status, r.headers.get("Content-Type")); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.headers.get("Content-Type")); sys.stdout.write(e.read().decode())
PY
}
get /metrics >"$T/m" || fail "GET /metrics failed"
head -n1 "$T/m" | grep -q '^200 text/plain; version=0.0.4' || fail "status/type: $(head -n1 "$T/m")"

# name  type  min  max: the value must lie in [min, max] (max "-" for unbounded). Errors are
# unbounded: each lookup retried while the start scan runs counts as one.
rows='weightd_up gauge 1 1
weightd_build_info gauge 1 1
weightd_uptime_seconds gauge 0 3600
weightd_clients gauge 0 1
weightd_ring_segments gauge 0 2
weightd_requests_total counter 2 -
weightd_request_errors_total counter 0 -
weightd_pins gauge 0 0
weightd_models gauge 3 3
weightd_host_budget_bytes gauge 268435456 268435456
weightd_host_bytes_used gauge 1 268435456
weightd_host_entries gauge 1 -
weightd_host_hits_total counter 1 -
weightd_host_misses_total counter 1 -
weightd_host_evictions_total counter 0 0
weightd_host_evicted_bytes_total counter 0 0
weightd_host_prefetches_total counter 0 -
weightd_host_prefetch_hits_total counter 0 -
weightd_host_loads_total counter 1 -
weightd_host_disk_read_bytes_total counter 1 -
weightd_host_disk_read_direct_bytes_total counter 0 0
weightd_host_coalesced_total counter 0 -
weightd_host_dedup_bytes gauge 0 -
weightd_host_refused_total counter 0 0
weightd_host_failed_loads_total counter 0 0
weightd_cuda_bytes gauge 0 0
weightd_io_retries_total counter 0 0
weightd_quarantined_total counter 0 0
weightd_load_duration_seconds_count histogram 1 -
weightd_ring_roundtrip_seconds_count histogram 1 -
weightd_errors_total counter 0 -
weightd_alerts_total counter 0 0
weightd_alerts_active gauge 0 0
weightd_host_numa_bytes gauge 0 268435456
weightd_host_free_extents gauge 1 -
weightd_host_largest_free_extent_bytes gauge 1 268435456
weightd_host_budget_use_ratio gauge 0 1
weightd_component_last_load_bytes gauge 1 -
weightd_component_last_load_seconds gauge 0 60'
# A histogram row names its _count sample; labelled families are checked on every sample.
echo "$rows" | while read -r name type min max; do
	fam=${name%_count}
	grep -q "^# HELP $fam " "$T/m" || { echo "$fam: no HELP line"; exit 1; }
	grep -q "^# TYPE $fam $type\$" "$T/m" || { echo "$fam: no TYPE $type line"; exit 1; }
	for v in $(grep -E "^$name(\{[^}]*\})? " "$T/m" | awk '{print $NF}'); do
		ok=$(awk -v v="$v" -v lo="$min" -v hi="$max" \
			'BEGIN { print (v + 0 >= lo + 0 && (hi == "-" || v + 0 <= hi + 0)) ? 1 : 0 }')
		[ "$ok" = 1 ] || { echo "$name = $v, expected [$min, $max]"; exit 1; }
	done
	v=$(grep -E "^$name(\{[^}]*\})? " "$T/m" | head -n1 | awk '{print $NF}')
	[ -n "$v" ] || { echo "$name: no sample"; exit 1; }
	ok=$(awk -v v="$v" -v lo="$min" -v hi="$max" \
		'BEGIN { print (v + 0 >= lo + 0 && (hi == "-" || v + 0 <= hi + 0)) ? 1 : 0 }')
	[ "$ok" = 1 ] || { echo "$name = $v, expected [$min, $max]"; exit 1; }
done >"$T/rows" 2>&1 || { cat "$T/rows"; echo "--- exposition"; cat "$T/m"; fail "metric rows"; }
# One set of counters: `weightctl stats --json` has exactly the counters /metrics exports,
# under the same names (weightd_ prefix and a counter's _total dropped) and, taken after the
# scrape, values no smaller; no second, never-counted hits/misses pair next to the host's.
"$WD_BUILD/weightctl" stats --json >"$T/stats.json" || fail "stats --json"
"$WD_BUILD/weightctl" stats >"$T/stats.txt" || fail "stats"
python3 - "$T/m" "$T/stats.json" "$T/stats.txt" <<'PY' || fail "stats and /metrics disagree"
import json, re, sys
text = open(sys.argv[1]).read()
stats = json.load(open(sys.argv[2]))
exported = {}
for line in text.split("\n")[1:]:
    m = re.match(r"weightd_(\w+?)(_total)? (\d+)$", line)
    if m and not line.startswith("weightd_up ") and not line.startswith("weightd_errors"):
        exported[m.group(1)] = int(m.group(3))
counters = {k: v for k, v in stats.items() if k != "uptime_seconds"}
# The STATS counters in /metrics: every stats key is there, with the same name.
missing = sorted(set(counters) - set(exported))
assert not missing, "stats keys not in /metrics: %s" % missing
for k, v in counters.items():
    if k.endswith(("hits", "misses", "loads", "requests", "bytes")) and k != "host_bytes_used":
        assert v >= exported[k], (k, v, exported[k])
assert "hits" not in stats and "misses" not in stats and "loads" not in stats, stats
# Two loads of llama-tiny: one miss, then one hit.
assert stats["host_misses"] >= 1 and stats["host_hits"] >= 1, stats
rows = dict(l.split() for l in open(sys.argv[3]) if l.strip())
assert set(rows) == set(stats), sorted(set(rows) ^ set(stats))
PY
used=$(grep '^weightd_host_bytes_used ' "$T/m" | awk '{print $2}')
grep -q '^weightd_build_info{version="[^"]*",microhttpd="[^"]*"} 1$' "$T/m" ||
	fail "build_info labels: $(grep '^weightd_build_info' "$T/m")"
# Every sample line belongs to a metric with a TYPE line (a histogram's _bucket, _sum and
# _count samples to the histogram), every TYPE line has samples, and every histogram is
# well formed: le ascending and ending in +Inf, buckets cumulative, _count equal to +Inf.
n_types=$(grep -c '^# TYPE ' "$T/m")
python3 - "$T/m" <<'PY' || fail "exposition structure"
import re, sys
types, seen, hist = {}, set(), {}
for line in open(sys.argv[1]).read().split("\n")[1:]:
    if not line:
        continue
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split(" ")
        types[name] = kind
        continue
    if line.startswith("#"):
        continue
    m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$', line)
    assert m, "unparsable sample: " + line
    name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
    fam = name
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and types.get(name[: -len(suf)]) == "histogram":
            fam = name[: -len(suf)]
    assert fam in types, "sample without TYPE: " + line
    seen.add(fam)
    if fam != name:
        key = (fam, re.sub(r',?le="[^"]*"', "", labels))
        h = hist.setdefault(key, {"b": [], "count": None})
        if name.endswith("_bucket"):
            le = re.search(r'le="([^"]*)"', labels).group(1)
            h["b"].append((float("inf") if le == "+Inf" else float(le), value))
        elif name.endswith("_count"):
            h["count"] = value
assert set(types) == seen, "TYPE lines without samples: %s" % (set(types) - seen)
assert hist, "no histogram"
for key, h in hist.items():
    les = [b[0] for b in h["b"]]
    assert les == sorted(les) and les[-1] == float("inf"), key
    vals = [b[1] for b in h["b"]]
    assert vals == sorted(vals), ("buckets not cumulative", key, vals)
    assert h["count"] == vals[-1], ("count != +Inf bucket", key)
PY

# The series move: one more load (unload, then load) adds one to the host load histogram's
# count and sets llama-tiny's last-load gauge; the ring histogram counts the inline requests.
count() { grep -E "^$1 " "$T/$2" | awk '{print $NF}'; }
lc1=$(count 'weightd_load_duration_seconds_count\{tier="host"\}' m)
rt1=$(count weightd_ring_roundtrip_seconds_count m)
"$WD_BUILD/weightctl" unload llama-tiny >/dev/null 2>&1 || fail "unload failed"
"$WD_BUILD/weightctl" load llama-tiny >/dev/null 2>&1 || fail "reload failed"
get /metrics >"$T/m2" || fail "second GET /metrics failed"
lc2=$(count 'weightd_load_duration_seconds_count\{tier="host"\}' m2)
rt2=$(count weightd_ring_roundtrip_seconds_count m2)
[ "$lc2" -eq $((lc1 + 1)) ] || fail "host load histogram count $lc1 -> $lc2 after one load"
[ "$rt2" -gt "$rt1" ] || fail "ring round-trip count did not move ($rt1 -> $rt2)"
grep -q '^weightd_component_last_load_bytes{model="llama-tiny",component="",tier="host"} [1-9]' \
	"$T/m2" || fail "no last-load gauge for llama-tiny: $(grep last_load "$T/m2")"

# Other paths and methods.
for path in / /metric /metrics/ /metrics.json; do
	get "$path" >"$T/r" || fail "GET $path failed"
	head -n1 "$T/r" | grep -q '^404 ' || fail "GET $path: $(head -n1 "$T/r")"
done
get /metrics POST >"$T/r" || fail "POST /metrics failed"
head -n1 "$T/r" | grep -q '^405 ' || fail "POST /metrics: $(head -n1 "$T/r")"

# The other address forms, each on a daemon of its own: a bare port from the configuration
# file (loopback), and [::1]:PORT when this machine has IPv6 loopback.
# other NAME LISTEN URL_HOST: starts a daemon listening on LISTEN (from a config file) and
# checks weightd_up on http://URL_HOST:PORT/metrics, then stops it.
other() {
	printf 'metrics_listen = %s\n' "$2" >"$T/$1.conf"
	"$WD_BUILD/weightd" --foreground --config "$T/$1.conf" --state-dir "$T/$1" \
		--socket "$T/$1.sock" --no-scan 2>"$T/$1.log" &
	op=$!
	i=0
	while [ ! -S "$T/$1.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	# The socket exists from early in the start; the daemon answers (and serves /metrics)
	# once it is ready, which takes longer on a slow machine than the socket does.
	"$WD_BUILD/weightctl" status --socket "$T/$1.sock" >/dev/null 2>&1 ||
		{ cat "$T/$1.log"; fail "$1 ($2): the daemon did not answer"; }
	body=$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "http://$3/metrics" 2>&1)
	kill -TERM $op
	wait $op
	orc=$?
	echo "$body" | grep -q '^weightd_up 1$' || { cat "$T/$1.log"; fail "$1 ($2): $body"; }
	[ $orc -eq 0 ] || { cat "$T/$1.log"; fail "$1 ($2): exit status $orc"; }
}
p2=$(free_port)
other portonly "$p2" "127.0.0.1:$p2"
if p6=$(free_port ::1); then
	other ipv6 "[::1]:$p6" "[::1]:$p6"
	v6=checked
else
	v6="skipped (no IPv6 loopback)"
fi

# Bad addresses and a taken port: the daemon refuses to start, saying why.
for bad in 0 70000 localhost:9 '::1:9' 127.0.0.1: '[::1]'; do
	if "$WD_BUILD/weightd" --foreground --state-dir "$T/b" --socket "$T/b.sock" --no-scan \
		--metrics-listen "$bad" 2>"$T/bad.log"; then
		fail "--metrics-listen $bad accepted"
	fi
	grep -q "metrics-listen" "$T/bad.log" || { cat "$T/bad.log"; fail "no message for $bad"; }
done
if "$WD_BUILD/weightd" --foreground --state-dir "$T/c" --socket "$T/c.sock" --no-scan \
	--metrics-listen "127.0.0.1:$port" 2>"$T/taken.log"; then
	fail "a second daemon started on a taken metrics port"
fi
grep -q 'cannot start the metrics server.*err=-98' "$T/taken.log" ||
	{ cat "$T/taken.log"; fail "taken port not reported as EADDRINUSE"; }
[ ! -e "$T/c.sock" ] || fail "the refused daemon left its socket"

kill -TERM $P
wait $P
rc=$?
P=
[ $rc -eq 0 ] || fail "SIGTERM exit status $rc"
echo "metrics: $n_types metrics, host_bytes_used=$used, load count $lc1 -> $lc2, 404/405 and bad addresses checked," \
	"bare port from the config file checked, [::1] $v6"
