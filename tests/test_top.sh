#!/bin/sh
# weightctl top against a real daemon started here (demo models, started with --config so the
# file and its command-line override are exercised too): --once as text and as JSON (parsed
# by python3), a JSON stream with rates, usage errors, no daemon; then the live view in tmux:
# the screen shows the models, tiers and counters, the metrics block's lines and the events
# area (a pin held past the configured 1 s TTL shows up as a pin_ttl event), follows a pin
# taken while it runs, quits
# on q and on Ctrl-C with the terminal settings restored and the alternate screen left, and
# exits 1 when the daemon goes away. SKIP (77) when tmux is missing, after the other checks.
set -u
B=${WD_BUILD:?WD_BUILD is the build directory}
W="$B/weightctl"
D="$B/weightd"
[ -x "$D" ] || { echo "SKIP: $D is not built"; exit 77; }
T=$(mktemp -d)
S="$T/sock"
TM="tmux -S $T/tmux.sock -f /dev/null"
DPID=
HOLD=
cleanup() {
	[ -n "$HOLD" ] && kill "$HOLD" 2>/dev/null
	[ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
	$TM kill-server 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*"
	[ -f "$T/screen" ] && { echo "--- screen:"; cat "$T/screen"; }
	echo "--- daemon log (last lines):"
	tail -n 15 "$T/daemon.log"
	exit 1
}
check() { # check DESCRIPTION EXPECTED_RC COMMAND...
	desc=$1 want=$2
	shift 2
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	[ "$rc" -eq "$want" ] || { cat "$T/out" "$T/err"; fail "$desc: exit $rc, want $want"; }
}
has() { grep -q -- "$1" "$2" || { cat "$2"; fail "$2 lacks '$1'"; }; }
# wait_for SECONDS COMMAND...: retries the command every 0.1 s.
wait_for() {
	n=$(($1 * 10))
	shift
	while [ "$n" -gt 0 ]; do
		"$@" && return 0
		sleep 0.1
		n=$((n - 1))
	done
	return 1
}

"$W" gen --preset demo "$T/models" >/dev/null || fail "gen demo"
# The file sets the roots, the budget and a socket the command line overrides.
cat >"$T/weightd.conf" <<EOF
# test configuration
[weightd]
models = $T/models
host_budget = 48M
socket = $T/not-this.sock
log_level = info
alert_interval = 200ms
alert_pin_ttl = 1s
EOF
"$D" --foreground --config "$T/weightd.conf" --socket "$S" --state-dir "$T/state" \
	2>"$T/daemon.log" &
DPID=$!
up() { "$W" status --socket "$S" >/dev/null 2>&1 && "$W" ps --all --socket "$S" 2>/dev/null |
	grep -q vae-tiny; }
wait_for 15 up || fail "the daemon did not come up with its demo models"
[ -e "$T/not-this.sock" ] && fail "--socket did not override the file's socket"
check "load vae-tiny" 0 "$W" load --socket "$S" vae-tiny

# One frame as text: no escape codes, the models, the tier with the file's budget.
check "top --once" 0 "$W" top --once --socket "$S"
cp "$T/out" "$T/screen"
# (The load's client may still be counted: the daemon notices its hang-up asynchronously.)
for want in "weightd pid $DPID" "sd-tiny" "llama-tiny" "vae-tiny" "48.00 MiB" "clients [12] " \
	"pins 0" "models 3" "TIER" "resident"; do
	has "$want" "$T/out"
done
grep -q "$(printf '\033')" "$T/out" && fail "--once output has escape codes"
grep -E '^host +48.00 MiB' "$T/out" >/dev/null || fail "no host tier row with its budget"
# The metrics block's lines and the (still empty) events area, read from the registry.
for want in "latency  ring p50" "host load p50 [0-9]*[mu]*s " "errors   validation 0" \
	"free extents 1" "alerts (active/total) budget 0/0" "EVENT TIME" "(no events)"; do
	grep -q -- "$want" "$T/out" || { cat "$T/out"; fail "top --once lacks '$want'"; }
done
rm -f "$T/screen"

# One frame as JSON, checked against the daemon's own status.
check "status --json" 0 "$W" status --socket "$S" --json
cp "$T/out" "$T/status.json"
check "top --once --json" 0 "$W" top --once --json --socket "$S"
python3 - "$T/out" "$T/status.json" "$DPID" <<'PY' || fail "top --once --json content"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
f = json.loads(lines[0])
st = json.load(open(sys.argv[2]))
d = f["daemon"]
assert d["pid"] == int(sys.argv[3]) == st["pid"], (d, st)
assert d["models"] == 3 and d["clients"] >= 1 and d["pins"] == 0, d
assert d["requests_per_s"] is None, d  # one frame: no rate yet
assert {m["name"] for m in f["models"]} == {"sd-tiny", "llama-tiny", "vae-tiny"}, f["models"]
host = [t for t in f["tiers"] if t["tier"] == "host"]
assert host and host[0]["budget"] == 48 << 20, f["tiers"]
assert host[0]["resident"] >= 1 and 0 < host[0]["used"] <= host[0]["budget"], host
rows = [c for c in f["components"] if c["model"] == "vae-tiny"]
assert rows and rows[0]["tier"] == "host" and rows[0]["state"] == "resident", f["components"]
assert rows[0]["bytes"] > 0, rows
assert f["counters"]["loads"] >= 1, f["counters"]
m = f["metrics"]
assert m["host_loads"] >= 1 and m["host_load_p50_s"] > 0, m
assert m["ring_roundtrips"] >= 1 and m["free_extents"] == 1, m
assert set(m["alerts"]) == {"budget", "slow_load", "error_burst", "pin_ttl", "catalog"}, m["alerts"]
assert set(m["errors"]) == {"validation", "io", "admission", "protocol", "device", "other"}
assert f["events"] == [], f["events"]
PY

# A stream of frames (stdout is not a terminal): one JSON object per line, rates from the second.
timeout --preserve-status -s INT 2 "$W" top --json --interval 0.2 --socket "$S" \
	>"$T/stream" 2>"$T/err"
rc=$?
[ "$rc" -eq 0 ] || { cat "$T/err"; fail "top --json stream: exit $rc, want 0 after SIGINT"; }
python3 - "$T/stream" <<'PY' || fail "top --json stream content"
import json, sys
frames = [json.loads(l) for l in open(sys.argv[1])]
assert len(frames) >= 3, len(frames)
assert frames[0]["daemon"]["requests_per_s"] is None
# Each frame makes one STATS request, so the rate is about one request per interval.
r = frames[-1]["daemon"]["requests_per_s"]
assert r is not None and 1 < r < 50, r
assert frames[-1]["daemon"]["requests"] > frames[0]["daemon"]["requests"]
PY
# Text frames one after another, without escapes, when stdout is a file.
timeout --preserve-status -s INT 1 "$W" top --interval 0.2 --socket "$S" >"$T/plain" 2>/dev/null
[ "$(grep -c '^weightd pid' "$T/plain")" -ge 2 ] || fail "plain stream: fewer than 2 frames"
grep -q "$(printf '\033')" "$T/plain" && fail "plain stream has escape codes"

check "top --help" 0 "$W" top --help
has "usage: weightctl top" "$T/out"
check "interval 0" 2 "$W" top --interval 0 --socket "$S"
check "interval not a number" 2 "$W" top --interval soon --socket "$S"
check "operand" 2 "$W" top extra --socket "$S"
check "no daemon" 1 "$W" top --once --socket "$T/none.sock"
has "no weightd daemon" "$T/err"

if ! command -v tmux >/dev/null 2>&1; then
	echo "SKIP: tmux is not installed (scripts/install-deps.sh installs it): the live view" \
		"was not tested; --once, --json and the stream passed"
	exit 77
fi

# live NAME: runs top under sh in a detached 160x50 tmux window; stty settings are saved
# before and after, then the exit status of top goes to $T/NAME.rc (renamed into place, so
# that the file appearing means everything before it is written).
live() {
	$TM new-session -d -s "$1" -x 160 -y 50 "trap '' INT; stty -a >$T/$1.before; \
		$W top --interval 0.2 --socket $S 2>$T/$1.err; rc=\$?; stty -a >$T/$1.after; \
		echo \$rc >$T/$1.rc.tmp; mv $T/$1.rc.tmp $T/$1.rc; sleep 30"
}
screen() { $TM capture-pane -p -t "$1" >"$T/screen"; }
shows() { screen "$1" && grep -q -- "$2" "$T/screen"; }
ended() { [ -s "$T/$1.rc" ]; }
restored() {
	ended "$1" || fail "$1: top did not exit"
	[ "$(cat "$T/$1.rc")" -eq "$2" ] || { cat "$T/$1.err"; fail "$1: exit $(cat "$T/$1.rc")"; }
	cmp -s "$T/$1.before" "$T/$1.after" ||
		{ diff "$T/$1.before" "$T/$1.after"; fail "$1: terminal settings not restored"; }
	screen "$1"
	grep -q "MODEL" "$T/screen" && fail "$1: the frame is still on screen (alternate screen)"
	rm -f "$T/screen"
}

live quit
wait_for 10 shows quit "requests [0-9]* ([0-9]*/s)" || fail "live view: no second frame"
for want in "weightd pid $DPID" "sd-tiny" "llama-tiny" "vae-tiny" "host 1/1" "48.00 MiB" \
	"clients 1" "pins 0" "(q quits)"; do
	grep -q -- "$want" "$T/screen" || fail "live view lacks '$want'"
done
# A pin taken by another client shows up within a few refreshes, with its client.
"$W" pin --hold --socket "$S" llama-tiny >/dev/null 2>&1 &
HOLD=$!
wait_for 10 shows quit "clients 2  rings 2  pins 1" || fail "live view did not follow the pin"
# Held past the configured 1 s TTL, the pin raises an alert the events area shows.
wait_for 10 shows quit "pin_ttl      RAISED   client [0-9]* (pid $HOLD) has pinned llama-tiny" ||
	fail "live view did not show the pin_ttl event"
grep -q "pin_ttl 1/1" "$T/screen" || fail "live view: pin_ttl not counted as active"
kill "$HOLD"
wait "$HOLD" 2>/dev/null
HOLD=
wait_for 10 shows quit "pins 0" || fail "live view did not follow the release"
$TM send-keys -t quit q
wait_for 5 ended quit || fail "q did not quit"
restored quit 0

live intr
wait_for 10 shows intr "vae-tiny" || fail "second live view did not draw"
$TM send-keys -t intr C-c
wait_for 5 ended intr || fail "Ctrl-C did not quit"
restored intr 0

# The daemon goes away under a live view: exit 1 with a message, terminal restored.
live gone
wait_for 10 shows gone "vae-tiny" || fail "third live view did not draw"
kill "$DPID"
wait "$DPID" 2>/dev/null
DPID=
wait_for 5 ended gone || fail "top did not notice the daemon going away"
restored gone 1
has "went away" "$T/gone.err"
echo "PASS: top --once, --json, stream, usage, and the live view in tmux"
