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
#   walk       `weightctl scan /proc` and a tree with a symlink to / end at once
#   priv       a client of another uid: SCAN outside the roots is EPERM; files it cannot
#              read, and a symlink to a secret outside the roots, are not published
#   spoof      the socket in a directory another user controls, or a daemon of another uid
#   budget     --host-budget above the RAM or the memory cgroup's limit is clamped
#   stale      a resident model whose file changed: ps shows it, load replaces it
set -u
T=$(mktemp -d)
chmod 700 "$T"
P=
D=
cg=
trap 'stop_daemon; rm -rf "$T"; [ -z "$D" ] || rm -rf "$D"; [ -z "$cg" ] || rmdir "$cg"' EXIT
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

case_walk() {
	out=$(timeout 10 "$W" --state-dir "$T/walkstate" scan /proc 2>&1)
	rc=$?
	[ $rc -ne 124 ] || fail "walk: a scan of /proc was still running after 10 s"
	echo "$out" | grep -q "pseudo filesystem" || fail "walk: scan of /proc said: $out"
	mkdir -p "$T/loop"
	ln -s / "$T/loop/up"
	out=$(timeout 10 "$W" --state-dir "$T/walkstate" scan "$T/loop" 2>&1)
	[ $? -ne 124 ] || fail "walk: a tree with a symlink to / was still being walked after 10 s"
	echo "$out" | grep -q "outside the model roots" || fail "walk: symlink to / said: $out"
	echo "walk: /proc and a symlink to / end at once with a message"
}

# A client that is neither root nor the daemon's user (a numeric uid no account uses, with
# group 0 so that it may connect to the 0660 socket): SCAN outside the model roots is
# refused with EPERM; inside them, what it cannot read itself is not published for it,
# and a symlink to a secret outside the roots leaks none of its bytes.
case_priv() {
	command -v setpriv >/dev/null || { echo "SKIP priv: no setpriv"; return 0; }
	[ "$(id -u)" -eq 0 ] || { echo "priv: skipped (needs root to act as another uid)"; return 0; }
	u=$((40000 + $$ % 20000))
	while getent passwd $u >/dev/null; do u=$((u + 1)); done
	D=$(mktemp -d /tmp/wd-sec-priv.XXXXXX)
	chmod 755 "$D"
	mkdir -p "$D/m/locked" "$D/out"
	"$W" gen --preset files --count 1 --size 64K "$D/gen" >/dev/null || fail "gen"
	g="$D/gen/000/model-00000.safetensors"
	cp "$g" "$D/m/ok.safetensors"
	cp "$g" "$D/m/secret.safetensors"
	cp "$g" "$D/m/locked/hidden.safetensors"
	cp "$g" "$D/out/elsewhere.safetensors"
	chmod 600 "$D/m/secret.safetensors"
	chmod 700 "$D/m/locked"
	printf 'root:$y$j9T$secretsecretsecret:19000:0:99999:7:::\n' >"$D/out/shadow"
	chmod 600 "$D/out/shadow"
	ln -s "$D/out/shadow" "$D/m/shadow.safetensors"
	"$WD_BUILD/weightd" --foreground --state-dir "$D/st" --socket "$D/sock" --models "$D/m" \
		--no-scan --allow-user 0 --allow-user $u --log-level info 2>"$T/log" &
	P=$!
	i=0
	while [ ! -S "$D/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	as_user() { setpriv --reuid=$u --regid=0 --clear-groups env WEIGHTD_SOCKET="$D/sock" "$@"; }
	out=$(as_user "$W" scan --daemon "$D/out" 2>&1) && fail "priv: uid $u scanned outside the roots: $out"
	echo "$out" | grep -q "not under the daemon's model roots" || fail "priv: refusal said: $out"
	out=$(as_user "$W" scan --daemon "$D/m/../out" 2>&1) && fail "priv: ROOT/../out was scanned: $out"
	out=$(as_user "$W" scan --daemon "$D/m" 2>&1)
	echo "$out" | grep -q "permission denied for uid $u\|outside the model roots" ||
		fail "priv: scan of the roots said: $out"
	WEIGHTD_SOCKET="$D/sock" "$W" load ok >/dev/null 2>&1 || fail "priv: the readable model was not published"
	for m in secret hidden elsewhere shadow; do
		WEIGHTD_SOCKET="$D/sock" "$W" load $m >/dev/null 2>&1 &&
			fail "priv: $m was published on behalf of uid $u"
	done
	grep -q 'root:\|secretsecret\|7379707 ' "$T/log" && fail "priv: the daemon log quotes the secret"
	echo "$out" | grep -q 'root:\|secret' && fail "priv: the scan's answer quotes the secret: $out"
	stop_daemon
	rm -rf "$D"
	D=
	echo "priv: outside the roots refused (EPERM); unreadable files and symlinks out not published"
}

# The socket spoofed through a directory another user controls. The daemon refuses to bind
# in a directory that is not its own or that others may write; the client refuses a socket
# in a directory owned by someone else, and a daemon of an unexpected uid (SO_PEERCRED)
# unless WEIGHTD_DAEMON_UID names it.
case_spoof() {
	[ "$(id -u)" -eq 0 ] || { echo "spoof: skipped (needs root to act as another uid)"; return 0; }
	u=$((40000 + $$ % 20000))
	while getent passwd $u >/dev/null; do u=$((u + 1)); done
	D=$(mktemp -d /tmp/wd-sec-spoof.XXXXXX)
	chmod 755 "$D"
	mkdir -p "$D/open" "$D/theirs" "$D/att"
	chmod 777 "$D/open"
	chown $u "$D/theirs"
	out=$(timeout 10 "$WD_BUILD/weightd" --foreground --no-scan --state-dir "$D/st1" \
		--socket "$D/open/sock" 2>&1) && fail "spoof: the daemon bound in a 0777 directory"
	echo "$out" | grep -q "writable by others" || fail "spoof: 0777 refusal said: $out"
	out=$(timeout 10 "$WD_BUILD/weightd" --foreground --no-scan --state-dir "$D/st2" \
		--socket "$D/theirs/sock" 2>&1) && fail "spoof: the daemon bound in uid $u's directory"
	echo "$out" | grep -q "belongs to uid $u" || fail "spoof: foreign directory refusal said: $out"
	# The attacker's daemon, in the attacker's directory.
	chown $u "$D/att"
	mkdir -p "$D/att/st"
	chown $u "$D/att/st"
	setpriv --reuid=$u --regid=$u --clear-groups env HOME="$D/att" "$WD_BUILD/weightd" \
		--foreground --no-scan --state-dir "$D/att/st" --socket "$D/att/sock" \
		--allow-user 0 2>"$T/log" &
	P=$!
	i=0
	while [ ! -S "$D/att/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	[ -S "$D/att/sock" ] || fail "spoof: the other user's daemon did not start"
	out=$(WEIGHTD_SOCKET="$D/att/sock" "$W" status 2>&1) &&
		fail "spoof: attached through a directory of uid $u: $out"
	echo "$out" | grep -q "belongs to uid $u" || fail "spoof: client dir refusal said: $out"
	# Same daemon, its directory now root's: SO_PEERCRED still tells who serves it.
	chown 0 "$D/att"
	out=$(WEIGHTD_SOCKET="$D/att/sock" "$W" status 2>&1) &&
		fail "spoof: attached to a daemon of uid $u: $out"
	echo "$out" | grep -q "runs as uid $u" || fail "spoof: peer refusal said: $out"
	WEIGHTD_SOCKET="$D/att/sock" WEIGHTD_DAEMON_UID="1,$u" "$W" status >/dev/null 2>&1 ||
		fail "spoof: WEIGHTD_DAEMON_UID=$u did not let the client attach"
	stop_daemon
	rm -rf "$D"
	D=
	echo "spoof: daemon and client refuse foreign or open socket directories and foreign daemons"
}

# --host-budget beyond what the daemon may use: more than the RAM, or more than its memory
# cgroup allows. Both are clamped to the limit less a headroom (768M of 1G) with a warning,
# at start and at reload (SIGHUP). The cgroup is a real one when this machine lets us make it (v2 or
# v1); otherwise a copy of our cgroup paths under $WEIGHTD_CGROUP_FS, which the daemon
# reads the same way.
case_budget() {
	start_daemon --no-scan --host-budget 100T
	grep -q '"host budget clamped' "$T/log" || fail "budget: 100T was not clamped"
	b=$(sed -n 's/.*"ready".* host_budget=\([0-9]*\).*/\1/p' "$T/log")
	total=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) * 1024))
	[ -n "$b" ] && [ "$b" -le "$total" ] || fail "budget: running with $b bytes on a $total-byte machine"
	stop_daemon
	cg=
	if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] &&
		mkdir "/sys/fs/cgroup/wd-sec-$$" 2>/dev/null; then
		cg="/sys/fs/cgroup/wd-sec-$$"
		echo 1G >"$cg/memory.max" 2>/dev/null || { rmdir "$cg"; cg=; }
	elif [ -d /sys/fs/cgroup/memory ] && mkdir "/sys/fs/cgroup/memory/wd-sec-$$" 2>/dev/null; then
		cg="/sys/fs/cgroup/memory/wd-sec-$$"
		echo 1G >"$cg/memory.limit_in_bytes" 2>/dev/null || { rmdir "$cg"; cg=; }
	fi
	if [ -n "$cg" ]; then
		how="a real cgroup ($cg)"
		rm -rf "$T/st"
		sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" \
			"$WD_BUILD/weightd" --foreground --no-scan --state-dir "$T/st" --socket "$T/sock" \
			--host-budget 2G --log-level info 2>"$T/log" &
		P=$!
	else
		how="a cgroup tree under WEIGHTD_CGROUP_FS (this machine lets us make no cgroup)"
		while IFS=: read -r id ctl path; do
			if [ -z "$ctl" ]; then
				mkdir -p "$T/cgfs$path" && echo 1073741824 >"$T/cgfs$path/memory.max"
			else
				mkdir -p "$T/cgfs/memory$path" &&
					echo 1073741824 >"$T/cgfs/memory$path/memory.limit_in_bytes"
			fi
		done </proc/self/cgroup
		rm -rf "$T/st"
		WEIGHTD_CGROUP_FS="$T/cgfs" "$WD_BUILD/weightd" --foreground --no-scan \
			--state-dir "$T/st" --socket "$T/sock" --host-budget 2G --log-level info \
			2>"$T/log" &
		P=$!
	fi
	i=0
	while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	grep -q '"host budget clamped.*budget=805306368 .*cgroup_limit=1073741824' "$T/log" ||
		fail "budget: 2G in a 1G cgroup was not clamped to 768M ($how)"
	kill -HUP $P
	i=0
	while [ "$(grep -c '"host budget clamped' "$T/log")" -lt 2 ] && [ $i -lt 100 ]; do
		sleep 0.05; i=$((i + 1)); done
	[ "$(grep -c '"host budget clamped' "$T/log")" -ge 2 ] || fail "budget: the reload did not clamp"
	stop_daemon
	[ -z "$cg" ] || rmdir "$cg"
	cg=
	echo "budget: beyond the RAM and beyond the cgroup limit, clamped with a warning at start and reload, in $how"
}

# A resident model whose file changes (same layout, new bytes): after the daemon's rescan
# marks it stale, `ps` says so, and `load` reads the new bytes instead of answering from
# the old copy.
case_stale() {
	fresh_models st1
	start_daemon
	f="$T/m/st1.safetensors"
	"$W" load st1 >/dev/null || fail "stale: first load"
	"$W" cat st1 weight >"$T/old.bin" || fail "stale: cat"
	# 64 KiB of tensor data from byte 112: overwrite the first 4 KiB of it.
	head -c 4096 /dev/urandom | dd of="$f" bs=1 seek=112 conv=notrunc 2>/dev/null
	out=$("$W" scan --daemon "$T/m" 2>&1) || fail "stale: rescan: $out"
	out=$("$W" ps 2>&1)
	echo "$out" | grep "st1" | grep -q "(stale" || fail "stale: ps does not show it: $out"
	"$W" ps --json | grep -q '"stale": *true' || fail "stale: ps --json does not say stale"
	out=$("$W" load st1 2>&1) || fail "stale: load: $out"
	echo "$out" | grep -q "^stale: " || fail "stale: load does not say stale: $out"
	echo "$out" | grep -q "miss" || fail "stale: load answered from the old copy: $out"
	"$W" cat st1 weight >"$T/new.bin" || fail "stale: cat after the reload"
	dd if="$f" bs=1 skip=112 count=65536 of="$T/file.bin" 2>/dev/null
	cmp -s "$T/new.bin" "$T/file.bin" || fail "stale: the reloaded bytes are not the file's"
	cmp -s "$T/new.bin" "$T/old.bin" && fail "stale: still the old bytes"
	stop_daemon
	echo "stale: ps shows a stale copy; load replaces it with the file's new bytes"
}

for c in ${WD_SECURITY_CASES:-fifo names torn walk priv spoof budget stale}; do
	"case_$c"
done
