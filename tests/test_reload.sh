#!/bin/sh
# SIGHUP reload (docs/config.md "Reload (SIGHUP)"), end to end on a running weightd with a
# client attached that holds a pin the whole time:
#   - a changed file applies live: a smaller host budget and a second model root (rescanned);
#   - a budget below the pinned bytes is refused with a log line, the rest still applies;
#   - a file with an error is rejected whole: the running configuration stays;
#   - a key that needs a restart (metrics_listen) is logged and left as it was;
#   - a larger budget, within the arena the daemon started with, applies again.
set -u
W="$WD_BUILD/weightctl"
T=$(mktemp -d)
P='' H=''
trap 'kill $H 2>/dev/null; kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; tail -n 30 "$T/log"; exit 1; }
export WEIGHTD_SOCKET="$T/sock"
# jq-free JSON field: status KEY prints one top-level field of `weightctl status --json`.
status() {
	"$W" status --json >"$T/status" 2>/dev/null || { echo none; return; }
	python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" \
		"$T/status" "$1"
}
# Waits up to 5 s for status KEY to become VALUE.
wait_status() {
	i=0
	while [ "$(status "$1")" != "$2" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
	[ "$(status "$1")" = "$2" ] || fail "status $1 is $(status "$1"), want $2"
}
# Waits until the log has @1 at least @2 times.
wait_log() {
	i=0
	while [ "$(grep -c -- "$1" "$T/log")" -lt "$2" ] && [ $i -lt 100 ]; do
		sleep 0.05
		i=$((i + 1))
	done
	[ "$(grep -c -- "$1" "$T/log")" -ge "$2" ] || fail "log lacks \"$1\" (x$2)"
}
reload() { # reload N: sends SIGHUP and waits for the N-th reload to end
	kill -HUP $P
	i=0
	while [ "$(grep -c 'configuration reloaded\|reload rejected' "$T/log")" -lt "$1" ] &&
		[ $i -lt 100 ]; do
		sleep 0.05
		i=$((i + 1))
	done
}

"$W" gen --preset demo "$T/m1" >/dev/null || fail "gen demo"
"$W" gen --preset llama --size 2M "$T/m2/llama-two" >/dev/null || fail "gen llama"
cat >"$T/conf" <<EOF
[weightd]
models = $T/m1
host_budget = 64M
EOF
"$WD_BUILD/weightd" --foreground --config "$T/conf" --state-dir "$T/state" \
	--socket "$T/sock" --memory-pressure 0 2>"$T/log" &
P=$!
wait_status models 3
[ "$(status host_budget)" = $((64 << 20)) ] || fail "start budget $(status host_budget)"

# An attached client that holds a pin on sd-tiny (about 3 MiB) throughout.
"$W" load --pin --hold sd-tiny >"$T/hold" 2>&1 &
H=$!
wait_status pins 1

# 1. Smaller budget, a second root.
cat >"$T/conf" <<EOF
[weightd]
models = $T/m1, $T/m2
host_budget = 32M
keep_alive = 10s
EOF
reload 1
wait_status models 4
[ "$(status host_budget)" = $((32 << 20)) ] || fail "budget after reload $(status host_budget)"
grep -q 'reload: host_budget" old=67108864 new=33554432' "$T/log" || fail "budget change not logged"
kill -0 $H 2>/dev/null || fail "the pinning client was dropped by the reload"
[ "$(status pins)" = 1 ] || fail "pin lost on reload"
"$W" load llama-two >/dev/null 2>&1 || fail "a model of the new root does not load"

# 2. Below the pinned bytes: refused and logged; the rest (keep_alive) still applies.
cat >"$T/conf" <<EOF
[weightd]
models = $T/m1, $T/m2
host_budget = 2M
EOF
reload 2
grep -q 'host_budget refused; keeping the running value' "$T/log" || fail "shrink below pins"
[ "$(status host_budget)" = $((32 << 20)) ] || fail "refused budget applied: $(status host_budget)"
grep 'configuration reloaded' "$T/log" | tail -n 1 | grep -q 'keep_alive_ns=0 .*partly refused' ||
	fail "the rest of a partly refused reload did not apply"

# 3. An error anywhere: nothing changes.
cat >"$T/conf" <<EOF
[weightd]
models = $T/m1
host_budget = 16M
frobnicate = 1
EOF
reload 3
grep -q 'conf:4: frobnicate: unknown key' "$T/log" || fail "the error is not logged"
grep -q 'reload rejected' "$T/log" || fail "rejection not logged"
[ "$(status host_budget)" = $((32 << 20)) ] || fail "a broken file changed the budget"
[ "$(status models)" = 4 ] || fail "a broken file changed the models"

# 4. A restart-only key is logged and ignored; a larger budget applies again.
cat >"$T/conf" <<EOF
[weightd]
models = $T/m1, $T/m2
host_budget = 48M
metrics_listen = 127.0.0.1:1
EOF
reload 4
grep -q 'reload: metrics_listen needs a restart' "$T/log" || fail "restart-only key not logged"
[ "$(status host_budget)" = $((48 << 20)) ] || fail "budget did not grow back"
# Beyond the arena the daemon started with: refused.
sed -i 's/host_budget = 48M/host_budget = 128M/' "$T/conf"
reload 5
grep -q 'growing it needs a restart' "$T/log" || fail "growing past the arena not refused"
[ "$(status host_budget)" = $((48 << 20)) ] || fail "budget grew past the arena"

kill -0 $H 2>/dev/null || fail "the pinning client did not stay attached"
[ "$(status clients)" -ge 1 ] || fail "no client attached at the end"
kill $H
wait $H 2>/dev/null
kill -TERM $P
wait $P || fail "exit status $?"
echo "reload: budget and roots live, pins kept, broken file and restart-only keys refused"
