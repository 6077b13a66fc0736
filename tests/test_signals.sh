#!/bin/sh
# weightd and signals: SIGHUP reloads the configuration (logged; the daemon keeps serving,
# tests/test_reload.sh checks what it changes); SIGTERM shuts down cleanly with exit 0 and
# removes the socket.
set -u
T=$(mktemp -d)
trap 'kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; cat "$T/log"; exit 1; }
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --no-scan 2>"$T/log" &
P=$!
i=0
while [ ! -S "$T/sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$T/sock" ] || fail "the daemon did not create its socket"
kill -HUP $P
# The daemon reads the signal on its control thread, which may start well after the socket
# exists on a loaded machine: wait for the reload's log line, up to 10 s.
i=0
while ! grep -q "configuration reloaded" "$T/log" && kill -0 $P 2>/dev/null && [ $i -lt 200 ]; do
	sleep 0.05
	i=$((i + 1))
done
kill -0 $P 2>/dev/null || fail "SIGHUP ended the daemon"
grep -q "SIGHUP: reloading the configuration" "$T/log" || fail "SIGHUP not logged"
grep -q "configuration reloaded" "$T/log" || fail "SIGHUP did not reload"
WEIGHTD_SOCKET="$T/sock" "$WD_BUILD/weightctl" status >/dev/null || fail "no answer after SIGHUP"
kill -TERM $P
wait $P
rc=$?
[ $rc -eq 0 ] || fail "SIGTERM exit status $rc"
[ ! -e "$T/sock" ] || fail "socket left behind"
echo "signals: SIGHUP reloads and is logged, SIGTERM clean"
