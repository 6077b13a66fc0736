#!/bin/sh
# Alerts end to end, one row per kind, each triggered by real loads and clients on a private
# daemon whose configuration file sets the thresholds (a 100 ms timer):
#   slow_load    vae-tiny's recorded history (catalog load_history) says it loads at 10^15 B/s;
#                a real load is far below 25% of that median
#   budget       a host budget of 4.25 MiB, so that llama-tiny (4 MiB) fills it above 90%
#   error_burst  more than 3 failed requests (unknown models) within 10 s
#   pin_ttl      a client holding a pin past a 1 s TTL (then letting go clears it)
# Each alert must appear as an event in the registry (weightctl top --json), as a count in
# weightd_alerts_total via the same metrics block, and as a log line.
set -u
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
P=
H=
trap '[ -n "$H" ] && kill $H 2>/dev/null; [ -n "$P" ] && kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; cat "$T/log"; exit 1; }
command -v sqlite3 >/dev/null || { echo "SKIP: the sqlite3 command is needed to seed the load history"; exit 77; }

"$W" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen failed"
cat >"$T/conf" <<EOF
alert_interval = 100ms
alert_budget_pct = 90
alert_slow_load_pct = 25
alert_slow_load_history = 5
alert_error_count = 3
alert_error_window = 10s
alert_pin_ttl = 1s
EOF
"$WD_BUILD/weightd" --foreground --config "$T/conf" --state-dir "$T" --socket "$T/sock" \
	--models "$T/models" --host-budget 4352K 2>"$T/log" &
P=$!
i=0
while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$T/sock" ] || fail "the daemon did not create its socket"
export WEIGHTD_SOCKET="$T/sock"
i=0
until "$W" load vae-tiny >"$T/out" 2>&1; do
	i=$((i + 1))
	[ $i -lt 50 ] || { cat "$T/out"; fail "first load failed"; }
	sleep 0.1
done

# wait_event KIND STATE: waits (5 s at most) until top --json lists such an event.
wait_event() {
	i=0
	while [ $i -lt 50 ]; do
		"$W" top --once --json >"$T/top" 2>&1 || fail "top --json failed: $(cat "$T/top")"
		python3 - "$T/top" "$1" "$2" <<'PY' && return 0
import json, sys
f = json.load(open(sys.argv[1]))
sys.exit(0 if any(e["kind"] == sys.argv[2] and e["state"] == sys.argv[3]
                  for e in f["events"]) else 1)
PY
		sleep 0.1
		i=$((i + 1))
	done
	cat "$T/top"
	fail "no $1 $2 event"
}
# total KIND: weightd_alerts_total{kind=KIND} as top --json reads it from the registry.
total() {
	"$W" top --once --json | python3 -c "import json, sys
print(json.load(sys.stdin)['metrics']['alerts']['$1']['total'])"
}

# slow_load: the timer records each judged load in the catalog; seed that key's history
# with loads a million times faster than any disk, then load again.
i=0
until key=$(sqlite3 "$T/catalog.db" "SELECT key FROM load_history LIMIT 1" 2>/dev/null) &&
	[ -n "$key" ]; do
	i=$((i + 1))
	[ $i -lt 50 ] || fail "the first load was not recorded in load_history"
	sleep 0.1
done
case $key in vae-tiny | vae-tiny/*) ;; *) fail "load_history key '$key', want vae-tiny" ;; esac
for n in 1 2 3 4; do
	sqlite3 -cmd ".timeout 5000" "$T/catalog.db" \
		"INSERT INTO load_history(key, at_ns, bytes, ns) VALUES('$key', $n, 1000000000000000, 1000000000)" ||
		fail "cannot seed load_history"
done
"$W" unload vae-tiny >/dev/null 2>&1 || fail "unload vae-tiny failed"
"$W" load vae-tiny >/dev/null 2>&1 || fail "second load of vae-tiny failed"
wait_event slow_load raised
[ "$(total slow_load)" -ge 1 ] || fail "weightd_alerts_total{kind=slow_load} did not move"
grep -q 'alert raised" kind=slow_load' "$T/log" || fail "no slow_load log line"
rows=$(sqlite3 -cmd ".timeout 5000" "$T/catalog.db" \
	"SELECT count(*) FROM load_history WHERE key = '$key'")
[ "$rows" -le 5 ] || fail "load_history keeps $rows rows for $key, more than the history of 5"

# budget: llama-tiny takes 4 MiB of the 4.25 MiB budget (vae-tiny is evicted for it).
"$W" load llama-tiny >/dev/null 2>&1 || fail "load llama-tiny failed"
wait_event budget raised
[ "$(total budget)" -ge 1 ] || fail "weightd_alerts_total{kind=budget} did not move"
"$W" unload llama-tiny >/dev/null 2>&1 || fail "unload llama-tiny failed"
wait_event budget cleared

# error_burst: five failed requests in a row, more than the 3 allowed in 10 s.
for n in 1 2 3 4 5; do
	"$W" load no-such-model-$n >/dev/null 2>&1 && fail "loading an unknown model succeeded"
done
wait_event error_burst raised
grep -q 'alert raised" kind=error_burst' "$T/log" || fail "no error_burst log line"

# pin_ttl: a pin held for 2.5 s against a 1 s TTL; released, the alert clears.
"$W" pin --hold llama-tiny >"$T/pin.out" 2>&1 &
H=$!
wait_event pin_ttl raised
"$W" top --once --json | python3 -c "import json, sys
a = json.load(sys.stdin)['metrics']['alerts']['pin_ttl']
assert a['active'] == 1 and a['total'] == 1, a" || fail "pin_ttl gauge/count"
kill -INT $H
wait $H
H=
wait_event pin_ttl cleared

# The events area of the text view shows them.
"$W" top --once >"$T/text" 2>&1 || fail "top --once failed"
for k in slow_load budget error_burst pin_ttl; do
	grep -q "^[0-9-]* [0-9:]* $k  *RAISED" "$T/text" || { cat "$T/text"; fail "top lacks $k"; }
done

kill -TERM $P
wait $P
rc=$?
P=
[ $rc -eq 0 ] || fail "SIGTERM exit status $rc"
echo "alert: slow_load, budget (raise and clear), error_burst, pin_ttl (raise and clear) checked"
