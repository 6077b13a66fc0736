#!/bin/sh
# The read path under the default locked-memory limit (issue 11). An unprivileged daemon
# under RLIMIT_MEMLOCK = 8 MiB cannot register its staging buffers with io_uring (ENOMEM)
# and reads through unregistered ones: `weightctl status` says so, with the limit and the
# remedy, in text and in --json, the daemon's log warns, and loads still serve the file's
# bytes. Without the limit the same daemon reports fixed buffers. The systemd unit lifts
# the limit (LimitMEMLOCK). As root the daemon runs as a throwaway user (setpriv).
set -u
W="$WD_BUILD/weightctl"
# Not under $TMPDIR: the test runner's directory is private to root, the daemon user must reach it.
T=$(mktemp -d /tmp/wdmemlock.XXXXXX)
P='' U=''
cleanup() {
	[ -n "$P" ] && kill "$P" 2>/dev/null && wait "$P" 2>/dev/null
	[ -n "$U" ] && userdel "$U" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -n 20 "$T/log" 2>/dev/null; exit 1; }

grep -q '^LimitMEMLOCK=\(infinity\|[1-9]\)' "$WD_ROOT/deploy/weightd.service" ||
	fail "deploy/weightd.service does not set LimitMEMLOCK"
"$W" gen --preset demo "$T/m" >/dev/null || fail "gen"
run_as='' allow=''
if [ "$(id -u)" = 0 ]; then
	U="wdmemlock$$"
	useradd --system --no-create-home --shell /usr/sbin/nologin "$U" || fail "useradd $U"
	chown -R "$U" "$T"
	chmod 0755 "$T"
	run_as="setpriv --reuid=$U --regid=$U --clear-groups --"
	allow="--allow-user 0"
	# Clients trust only their own uid and root unless told (docs/security.md).
	WEIGHTD_DAEMON_UID=$(id -u "$U")
	export WEIGHTD_DAEMON_UID
fi

# start LIMIT: the daemon under RLIMIT_MEMLOCK = LIMIT ("unlimited" for none).
start() {
	rm -f "$T/sock"
	# shellcheck disable=SC2086
	prlimit --memlock="$1" $run_as "$WD_BUILD/weightd" --foreground --socket "$T/sock" \
		--state-dir "$T/state" --models "$T/m" $allow 2>>"$T/log" &
	P=$!
	i=0
	until "$W" status --socket "$T/sock" --json 2>/dev/null | grep -q '"models":3'; do
		i=$((i + 1))
		[ $i -lt 200 ] || fail "the daemon under memlock $1 did not publish the demo models"
		sleep 0.05
	done
}
stop() { kill "$P"; wait "$P" 2>/dev/null; P=''; }

start 8388608
"$W" status --socket "$T/sock" >"$T/out" 2>&1 || { cat "$T/out"; fail "status"; }
grep -q "^reads      io_uring without fixed buffers: registering .* of staging buffers failed (Cannot allocate memory); the locked-memory limit (RLIMIT_MEMLOCK) is 8.00 MiB: raise it" "$T/out" ||
	{ cat "$T/out"; fail "status does not say why there are no fixed buffers"; }
"$W" status --socket "$T/sock" --json >"$T/json" || fail "status --json"
python3 - "$T/json" <<'PY' || fail "status --json: $(cat "$T/json")"
import json, sys
io = json.load(open(sys.argv[1]))["io"]
assert io["fixed_buffers"] is False and io["fixed_buffers_errno"] == 12, io
assert io["memlock_limit"] == 8388608 and io["staging_bytes"] > 8388608, io
assert "RLIMIT_MEMLOCK" in io["path"], io
PY
grep -q 'io_uring refused the fixed staging buffers.*memlock_limit=8388608' "$T/log" ||
	fail "the daemon's log does not warn"
# Reads still work, through unregistered buffers.
"$W" load --socket "$T/sock" vae-tiny >"$T/out" 2>&1 || { cat "$T/out"; fail "load"; }
stop

# With the means to lock the buffers -- root's CAP_IPC_LOCK under the same 8 MiB limit, or,
# for an ordinary user, a limit raised to unlimited when the hard limit allows it -- the
# same daemon reports fixed buffers.
if [ -n "$U" ]; then
	run_as='' allow='' limit=8388608
	# A daemon binds only in a directory of its own uid (docs/security.md).
	chown 0 "$T"
elif prlimit --memlock=unlimited true 2>/dev/null; then
	limit=unlimited
else
	echo "memlock: status reports the read path under 8 MiB (the hard limit allows no more)"
	exit 0
fi
start "$limit"
"$W" status --socket "$T/sock" --json >"$T/json" || fail "status --json (locked memory available)"
python3 - "$T/json" <<'PY' || fail "status --json (locked memory available): $(cat "$T/json")"
import json, sys
io = json.load(open(sys.argv[1]))["io"]
assert io["fixed_buffers"] is True and io["fixed_buffers_errno"] == 0, io
assert io["path"].startswith("io_uring, fixed buffers"), io
PY
"$W" status --socket "$T/sock" | grep -q "^reads      io_uring, fixed buffers" ||
	fail "status (locked memory available)"
stop
echo "memlock: status reports the read path without and with fixed buffers"
