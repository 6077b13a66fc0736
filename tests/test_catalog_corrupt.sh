#!/bin/sh
# A catalog corrupt in the middle (docs/security.md, "Catalog"): once started, before it
# publishes anything, the daemon runs PRAGMA quick_check; the damaged file is moved aside (kept), the catalog is rebuilt from a
# scan (every model published again, with its tensors), the event is logged, and the
# "catalog" alert is raised, which `weightctl status` shows.
set -u
T=$(mktemp -d)
P=
trap '[ -n "$P" ] && kill -9 $P 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; tail -n 20 "$T/log"; exit 1; }
ctl() { WEIGHTD_SOCKET="$T/sock" "$WD_BUILD/weightctl" "$@"; }
models() { ctl status --json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["models"])' 2>/dev/null; }
start() {
	"$WD_BUILD/weightd" --foreground --state-dir "$T/state" --socket "$T/sock" \
		--models "$T/models" --host-budget 64M 2>>"$T/log" &
	P=$!
	i=0
	while [ "$(models)" != "$1" ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i + 1)); done
	[ "$(models)" = "$1" ] || fail "the daemon did not publish $1 models (got '$(models)')"
}
stop() { kill -TERM $P; wait $P; P=; }

"$WD_BUILD/weightctl" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen demo"
"$WD_BUILD/weightctl" gen --preset files --count 300 "$T/models/files" >/dev/null 2>&1 ||
	fail "gen files"
want=303
start $want
stop
db="$T/state/catalog.db"
[ ! -e "$db-wal" ] || [ ! -s "$db-wal" ] || fail "the WAL was not checkpointed at close"
# Overwrite one page in the middle of the file with garbage (the header stays intact).
pages=$(($(stat -c %s "$db") / 4096))
[ $pages -ge 8 ] || fail "catalog too small to corrupt in the middle ($pages pages)"
dd if=/dev/urandom of="$db" bs=4096 seek=$((pages / 2)) count=1 conv=notrunc 2>/dev/null

start $want
aside=$(ls "$T/state" | grep '^catalog\.db\.corrupt-' | grep -v -e '-wal$' -e '-shm$')
[ -n "$aside" ] || fail "the corrupt catalog was not moved aside: $(ls "$T/state")"
cmp -s "$T/state/$aside" "$T/state/catalog.db" && fail "the catalog was not rebuilt"
grep -q '"the catalog was corrupt: moved aside, rebuilding it from a scan' "$T/log" ||
	fail "not logged"
i=0
while ! grep -q 'mod=alert msg="alert raised" kind=catalog' "$T/log" && [ $i -lt 100 ]; do
	sleep 0.05; i=$((i + 1))
done
grep -q 'mod=alert msg="alert raised" kind=catalog' "$T/log" || fail "no alert raised"
ctl status >"$T/status" || fail "status failed"
grep -q "alerts     active: catalog" "$T/status" || fail "status does not show it: $(cat "$T/status")"
ctl status --json | python3 -c 'import json, sys
assert json.load(sys.stdin)["alerts_active"] == ["catalog"]' || fail "status --json"
# The models are whole again: a tensor of each kind of model is served.
ctl load llama-tiny >/dev/null 2>&1 || fail "load llama-tiny after the rebuild"
ctl tensor-data llama-tiny model.norm.weight >"$T/t" 2>"$T/err" || fail "tensor-data: $(cat "$T/err")"
[ -s "$T/t" ] || fail "no bytes"
stop
# The rebuilt catalog passes the check: the next start raises nothing.
: >"$T/log"
start $want
grep -q "catalog was corrupt" "$T/log" && fail "the rebuilt catalog failed its check"
[ "$(ls "$T/state" | grep -c '^catalog\.db\.corrupt-.*Z$')" = 1 ] || fail "more files moved aside"
stop
echo "catalog corrupt: moved aside as $aside, rebuilt with $want models, alert raised"
