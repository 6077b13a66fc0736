#!/bin/sh
# Integration with a real Prometheus server (Debian's prometheus package): it scrapes
# weightd's /metrics every second on loopback; once its target is up, weightd_up and
# weightd_models are queried back through Prometheus's HTTP API and must match what weightd
# serves. SKIPs (77) when the prometheus binary is missing. Every wait is bounded (30 s).
set -u
PROM=$(command -v prometheus || true)
if [ -z "$PROM" ]; then
	echo "SKIP: prometheus not installed (Debian package prometheus; scripts/install-deps.sh)"
	exit 77
fi
T=$(mktemp -d)
P= Q=
trap '[ -n "$P" ] && kill -9 $P 2>/dev/null; [ -n "$Q" ] && kill -9 $Q 2>/dev/null;
	wait 2>/dev/null; rm -rf "$T"' EXIT
fail() {
	echo "FAIL: $*"
	echo "--- weightd log"; tail -n 20 "$T/log"
	echo "--- prometheus log"; tail -n 20 "$T/prom.log"
	exit 1
}
free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
# fetch URL: the body, or nothing (and a non-zero status) when the server does not answer.
fetch() {
	python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
}
# json EXPR: evaluates a Python expression on the JSON document on stdin (bound to d).
json() {
	python3 -c 'import sys, json
d = json.load(sys.stdin)
print(eval(sys.argv[1]))' "$1" 2>/dev/null
}

wport=$(free_port)
pport=$(free_port)
"$WD_BUILD/weightctl" gen --preset demo "$T/models" >/dev/null 2>&1 || fail "gen failed"
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --models "$T/models" \
	--host-budget 64M --metrics-listen "127.0.0.1:$wport" 2>"$T/log" &
P=$!
cat >"$T/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: weightd
    static_configs:
      - targets: ['127.0.0.1:$wport']
YML
"$PROM" --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/tsdb" \
	--web.listen-address="127.0.0.1:$pport" --log.level=warn >"$T/prom.log" 2>&1 &
Q=$!

# Wait for the target to be scraped successfully: health "up" in /api/v1/targets.
deadline=$(($(date +%s) + 30))
health=
while [ "$(date +%s)" -lt $deadline ]; do
	kill -0 $Q 2>/dev/null || fail "prometheus exited"
	kill -0 $P 2>/dev/null || fail "weightd exited"
	health=$(fetch "http://127.0.0.1:$pport/api/v1/targets" |
		json 'd["data"]["activeTargets"][0]["health"]')
	[ "$health" = up ] && break
	sleep 0.5
done
[ "$health" = up ] || fail "target not up within 30 s (health: '${health:-no answer}')"

# name  expected: the instant query's value for the weightd job must equal expected.
# weightd_models waits for the start scan; each query is retried until it matches or 30 s.
rows='weightd_up 1
weightd_models 3
weightd_host_budget_bytes 67108864'
echo "$rows" | while read -r name want; do
	got=
	deadline=$(($(date +%s) + 30))
	while [ "$(date +%s)" -lt $deadline ]; do
		# The query is NAME{job="weightd"}, URL-encoded.
		q="$name%7Bjob%3D%22weightd%22%7D"
		got=$(fetch "http://127.0.0.1:$pport/api/v1/query?query=$q" |
			json 'd["data"]["result"][0]["value"][1]')
		[ "$got" = "$want" ] && break
		sleep 0.5
	done
	if [ "$got" != "$want" ]; then
		echo "$name: Prometheus says '${got:-nothing}', expected $want"
		exit 1
	fi
	echo "$name = $got"
done >"$T/rows" 2>&1 || { cat "$T/rows"; fail "query rows"; }
cat "$T/rows"
kill -TERM $P
wait $P
rc=$?
P=
[ $rc -eq 0 ] || fail "weightd exit status $rc after SIGTERM"
echo "prometheus: target up, weightd metrics queried back through the HTTP API"
