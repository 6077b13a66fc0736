#!/bin/sh
# Connection and slot exhaustion (docs/security.md, "Connections"):
#  1. a per-uid cap on open connections, refused at accept with a message that names it;
#  2. connections that never send a hello are closed after --hello-timeout-ms;
#  3. a per-uid quota of attached clients;
#  4. out of descriptors (EMFILE), the daemon neither spins nor floods its log, and a
#     legitimate client gets in once the idle connections time out.
# Idle connections come from a python3 script holding raw sockets.
set -u
T=$(mktemp -d)
P= H=
trap 'for p in $P $H; do kill -9 $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; tail -n 30 "$T/log"; exit 1; }
ctl() { WEIGHTD_SOCKET="$T/sock" "$WD_BUILD/weightctl" "$@"; }
start() {
	rm -f "$T/sock"
	"$@" "$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" \
		--models "$T/models" --host-budget 64M $OPTS 2>"$T/log" &
	P=$!
	i=0
	while ! ctl status >/dev/null 2>&1 && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
	ctl status >/dev/null 2>&1 || fail "the daemon did not answer"
}
stop() { kill -TERM $P; wait $P; P=; }
# idle N SECONDS OUT: holds N connections that never send a hello for SECONDS; writes
# "connected" to OUT once they are all open, then how many of them the daemon had closed
# (EOF or reset) by the end.
idle() {
	python3 - "$T/sock" "$1" "$2" >"$3" <<'PY'
import socket, sys, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    socks.append(s)
print("connected", flush=True)
time.sleep(secs)
closed = 0
for s in socks:
    s.setblocking(False)
    try:
        closed += s.recv(4096) == b""
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(closed)
PY
}
wait_connected() {
	i=0
	while ! grep -q connected "$T/idle.out" 2>/dev/null && [ $i -lt 200 ]; do
		sleep 0.05; i=$((i + 1))
	done
	grep -q connected "$T/idle.out" || fail "the idle connections did not open"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$WD_BUILD/weightctl" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen failed"

# 1 and 2: four connections per uid; idle ones go after 1 s.
OPTS="--max-connections-per-uid 4 --max-clients-per-uid 2 --hello-timeout-ms 1000"
start
idle 4 3 "$T/idle.out" &
H=$!
wait_connected
ctl status >"$T/out" 2>&1 && fail "a fifth connection of the same uid was accepted"
grep -q "max_connections_per_uid" "$T/out" || fail "refusal does not name the limit: $(cat "$T/out")"
wait $H
H=
[ "$(tail -n 1 "$T/idle.out")" = 4 ] || fail "idle connections closed after the hello timeout: $(cat "$T/idle.out") of 4"
grep -q '"no hello, closing".*timeout_ms=1000' "$T/log" || fail "hello timeout not logged"
ctl status >/dev/null 2>&1 || fail "the cap did not free up after the connections closed"

# 3: two attached clients of one uid; a third is refused, naming the quota.
(WEIGHTD_SOCKET="$T/sock" exec "$WD_BUILD/weightctl" pin --hold vae-tiny >/dev/null 2>&1) &
H1=$!
(WEIGHTD_SOCKET="$T/sock" exec "$WD_BUILD/weightctl" pin --hold vae-tiny >/dev/null 2>&1) &
H2=$!
H="$H1 $H2"
i=0
while [ "$(grep -c -e "\"attach\" .* pid=$H1 " -e "\"attach\" .* pid=$H2 " "$T/log")" != 2 ] &&
	[ $i -lt 200 ]; do
	sleep 0.05; i=$((i + 1))
done
ctl status >"$T/out" 2>&1 && fail "a third client of the same uid was accepted"
grep -q "max_clients_per_uid" "$T/out" || fail "refusal does not name the quota: $(cat "$T/out")"
kill $H1 $H2
wait $H1 $H2 2>/dev/null
H=
i=0
while ! ctl status >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
ctl status >/dev/null 2>&1 || fail "quota not released when the clients detached"
stop

# 4: 64 descriptors in all, 150 idle connections: EMFILE. The daemon must not spin (at most
# 0.5 s of CPU in 3 s), must log a handful of lines, not one per attempt, and must let a
# client in once the idle connections are gone (hello timeout 1.5 s).
OPTS="--max-connections-per-uid 0 --hello-timeout-ms 1500"
start prlimit --nofile=64:64
hz=$(getconf CLK_TCK)
before=$(cpu_ticks $P)
rm -f "$T/idle.out"
idle 150 3 "$T/idle.out" &
H=$!
wait_connected
sleep 2
used=$(($(cpu_ticks $P) - before))
wait $H
H=
[ $used -le $((hz / 2)) ] || fail "the daemon used $used/$hz s of CPU out of descriptors (busy loop)"
n=$(grep -c "accept failed" "$T/log")
[ "$n" -ge 1 ] || fail "running out of descriptors was not logged"
[ "$n" -le 10 ] || fail "$n \"accept failed\" lines (not rate-limited)"
t0=$(date +%s)
i=0
while ! ctl status >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
ctl status >/dev/null 2>&1 || fail "no attach after the idle connections went"
stop
echo "conn limits: per-uid connection cap and client quota refused by name, hello timeout," \
	"EMFILE: ${used}/${hz} CPU ticks, $n log lines"
