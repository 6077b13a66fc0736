#!/bin/sh
# /metrics against a hostile host (docs/security.md, "Metrics"):
#  1. slowloris: 40 connections from one source address (127.0.0.2) that send a request a
#     byte at a time, and 20 that send nothing, do not keep Prometheus (127.0.0.1) from
#     scraping: every scrape made while they are open answers within 2 s;
#  2. a metrics port that another program holds is reported as such, not as "another
#     weightd is running on this socket".
set -u
T=$(mktemp -d)
P= S= H=
trap 'for p in $P $S $H; do kill -9 $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; tail -n 20 "$T/log"; exit 1; }
free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

port=$(free_port)
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --no-scan \
	--host-budget 64M --metrics-listen "127.0.0.1:$port" 2>"$T/log" &
P=$!
i=0
while ! WEIGHTD_SOCKET="$T/sock" "$WD_BUILD/weightctl" status >/dev/null 2>&1 && [ $i -lt 200 ]; do
	sleep 0.05; i=$((i + 1))
done

# The slow clients: each sends "GET /metrics HTTP/1.1\r\n" one byte every 0.5 s, and never
# the end of its headers; the idle ones only connect. They run for 8 s.
python3 - "$port" >"$T/slow.out" 2>&1 <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64
slow, idle = [], []
for i in range(60):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        continue
    (slow if i < 40 else idle).append(s)
end = time.time() + 8
k = 0
while time.time() < end:
    for s in slow:
        try:
            s.send(req[k % len(req):k % len(req) + 1])
        except OSError:
            pass
    k += 1
    time.sleep(0.5)
print("slow clients done")
PY
S=$!
sleep 1.5
# Scrapes from 127.0.0.1 while the slow clients hold their connections.
python3 - "$port" >"$T/scrape.out" 2>&1 <<'PY' || fail "scrapes failed: $(cat "$T/scrape.out")"
import sys, time, urllib.request
port = int(sys.argv[1])
for i in range(5):
    t = time.time()
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read()
    assert b"weightd_up 1" in body, body[:200]
    print("scrape %d: %.3f s" % (i, time.time() - t))
    time.sleep(0.5)
PY
kill -0 $S 2>/dev/null || fail "the slow clients ended early: $(cat "$T/slow.out")"
kill $S
wait $S 2>/dev/null
S=

# 2: the port is taken by someone else (a plain listening socket held by python).
python3 -c 'import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(30)' >"$T/holder" &
H=$!
i=0
while [ ! -s "$T/holder" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
hport=$(cat "$T/holder")
[ -n "$hport" ] || fail "the python listener did not start"
"$WD_BUILD/weightd" --foreground --state-dir "$T/second" --socket "$T/sock2" --no-scan \
	--host-budget 64M --metrics-listen "127.0.0.1:$hport" >"$T/out2" 2>&1
rc=$?
[ $rc -ne 0 ] || fail "weightd started on a taken metrics port"
grep -q "another weightd" "$T/out2" && fail "a taken metrics port reported as another weightd: $(grep cannot "$T/out2")"
grep -q "weightd: cannot start: the metrics address 127.0.0.1:$hport is already in use" "$T/out2" ||
	fail "the message does not name the metrics address: $(tail -n 3 "$T/out2")"
# And a second daemon on the same socket still says so.
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --no-scan \
	--host-budget 64M >"$T/out3" 2>&1 && fail "a second daemon started on the same socket"
grep -q "weightd: cannot start: another weightd (pid $P) is running on the socket" "$T/out3" ||
	fail "the socket conflict is not named: $(tail -n 3 "$T/out3")"
echo "metrics limits: scrapes answered during a slowloris ($(tr '\n' ' ' <"$T/scrape.out"));" \
	"a taken port named as such"
