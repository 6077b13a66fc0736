#!/bin/sh
# A hostile host (issue 12, docs/security.md): what another user on the machine, or an
# unlucky layout of files, can make the daemon and weightctl do. One function per case;
# each starts from a fresh model tree and daemon, and fails naming what it saw.
#   fifo       a FIFO where a model file was: load, validate, info and a rescan answer
#              with "not a regular file" and the daemon keeps serving and stops on SIGTERM
#   names      a file name with a newline + "level=error" cannot forge a log line, and one
#              with ESC[2J reaches neither `weightctl ls` nor `load` nor `ps` raw
#   torn       a file rewritten in place with its mtime put back (`touch -d`) is not
#              served: the load fails with "changed", and a rescan publishes the new bytes
set -u
T=$(mktemp -d)
chmod 700 "$T"
P=
trap 'stop_daemon; rm -rf "$T"' EXIT
W="$WD_BUILD/weightctl"
fail() {
	echo "FAIL: $*"
	[ -f "$T/log" ] && tail -n 20 "$T/log"
	exit 1
}
start_daemon() {
	rm -rf "$T/st"
	"$WD_BUILD/weightd" --foreground --state-dir "$T/st" --socket "$T/sock" --models "$T/m" \
		--host-budget 64M --log-level info "$@" 2>"$T/log" &
	P=$!
	i=0
	while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	[ -S "$T/sock" ] || fail "the daemon did not create its socket"
	# The scan at start runs on the worker: wait until it has published.
	i=0
	while ! grep -q '"scan done" roots' "$T/log" && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
}
stop_daemon() {
	[ -n "$P" ] || return 0
	kill -TERM "$P" 2>/dev/null
	i=0
	while kill -0 "$P" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
	if kill -0 "$P" 2>/dev/null; then
		kill -9 "$P" 2>/dev/null
		wait "$P" 2>/dev/null
		P=
		return 1
	fi
	wait "$P" 2>/dev/null
	P=
	return 0
}
fresh_models() {
	rm -rf "$T/m"
	mkdir -p "$T/m"
	"$W" gen --preset files --count 1 --size 64K "$T/m/gen" >/dev/null || fail "gen"
	mv "$T/m/gen/000/model-00000.safetensors" "$T/m/$1.safetensors"
	rm -rf "$T/m/gen"
}
export WEIGHTD_SOCKET="$T/sock"

case_fifo() {
	fresh_models one
	start_daemon
	rm "$T/m/one.safetensors"
	mkfifo "$T/m/one.safetensors"
	out=$(timeout 10 "$W" load one 2>&1)
	rc=$?
	[ $rc -ne 124 ] || fail "fifo: load of a FIFO hung (killed after 10 s)"
	[ $rc -ne 0 ] || fail "fifo: load of a FIFO succeeded: $out"
	echo "$out" | grep -q "not a regular file" || fail "fifo: load said: $out"
	timeout 5 "$W" status >/dev/null || fail "fifo: the daemon stopped answering after the load"
	out=$(timeout 10 "$W" scan --daemon "$T/m" 2>&1)
	[ $? -ne 124 ] || fail "fifo: a rescan hung on the FIFO"
	out=$(timeout 5 "$W" validate "$T/m/one.safetensors" 2>&1)
	rc=$?
	[ $rc -eq 1 ] || fail "fifo: validate exit $rc (124: hung): $out"
	echo "$out" | grep -q "not a regular file" || fail "fifo: validate said: $out"
	out=$(timeout 5 "$W" info "$T/m/one.safetensors" 2>&1)
	[ $? -ne 124 ] || fail "fifo: info hung on the FIFO"
	stop_daemon || fail "fifo: SIGTERM did not stop the daemon within 5 s"
	echo "fifo: load, rescan, validate and info refuse a FIFO; the daemon serves and stops"
}

case_names() {
	fresh_models plain
	esc=$(printf 'e\033[2Jx')
	cp "$T/m/plain.safetensors" "$T/m/$esc.safetensors"
	ln -s /nonexistent "$T/m/$(printf 'evil\nlevel=error msg=forged').safetensors"
	start_daemon
	grep -q '^level=error msg=forged' "$T/log" && fail "names: a file name forged a log line"
	grep -q 'level=error msg=forged' "$T/log" || fail "names: the dangling symlink was not logged"
	export WEIGHTD_STATE_DIR="$T/st"
	ls_out=$("$W" ls 2>&1)
	printf '%s' "$ls_out" | grep -q "$(printf '\033')" && fail "names: ls printed ESC raw"
	printf '%s' "$ls_out" | grep -q 'e\\x1b\[2Jx' || fail "names: ls did not show the escaped name: $ls_out"
	out=$("$W" load "$esc" 2>&1) || fail "names: load: $out"
	printf '%s' "$out" | grep -q "$(printf '\033')" && fail "names: load printed ESC raw"
	out=$("$W" ps 2>&1)
	printf '%s' "$out" | grep -q "$(printf '\033')" && fail "names: ps printed ESC raw"
	printf '%s' "$out" | grep -q 'e\\x1b\[2Jx' || fail "names: ps did not show the escaped name: $out"
	unset WEIGHTD_STATE_DIR
	stop_daemon
	echo "names: no forged log line; ls, load and ps escape control characters"
}

case_torn() {
	fresh_models torn
	start_daemon
	f="$T/m/torn.safetensors"
	stamp=$(stat -c %y "$f")
	# In place, same size, then the mtime back to what the scan saw.
	printf 'TORN' | dd of="$f" bs=1 seek=60000 conv=notrunc 2>/dev/null
	touch -d "$stamp" "$f"
	[ "$(stat -c %y "$f")" = "$stamp" ] || fail "torn: touch -d did not restore the mtime"
	out=$("$W" load torn 2>&1) && fail "torn: a file rewritten in place was loaded: $out"
	echo "$out" | grep -q "changed since it was scanned" || fail "torn: load said: $out"
	out=$("$W" scan --daemon "$T/m" 2>&1) || fail "torn: rescan: $out"
	# The rescan publishes the file as it is now (same layout here), so the load works.
	out=$("$W" load torn 2>&1) || fail "torn: load after the rescan: $out"
	stop_daemon
	echo "torn: an in-place rewrite with the mtime restored is refused until a rescan"
}

for c in ${WD_SECURITY_CASES:-fifo names torn}; do
	"case_$c"
done
