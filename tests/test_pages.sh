#!/bin/sh
# The host cache's page size in `weightctl status`, text and --json: what the arena got
# (its log line says hugetlb, thp or 4k), with the size this machine gives that kind
# (Hugepagesize for hugetlb, hpage_pmd_size for THP, 4096 otherwise); and --host-prefault,
# which allocates every page of the host cache at start.
set -u
T=$(mktemp -d)
P=
trap '[ -n "$P" ] && kill -9 $P 2>/dev/null; rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; echo "--- daemon log"; cat "$T/log"; exit 1; }
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --no-scan \
	--host-budget 64M 2>"$T/log" &
P=$!
i=0
while [ ! -S "$T/sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -S "$T/sock" ] || fail "the daemon did not create its socket"
export WEIGHTD_SOCKET="$T/sock"
kind=$(sed -n 's/.*"host cache arena".* pages=\([a-z0-9]*\).*/\1/p' "$T/log" | head -n1)
case $kind in
hugetlb) want=$(($(sed -n 's/^Hugepagesize: *\([0-9]*\) kB/\1/p' /proc/meminfo) * 1024)) ;;
thp) want=$(cat /sys/kernel/mm/transparent_hugepage/hpage_pmd_size) ;;
4k) want=4096 ;;
*) fail "no arena line with pages= in the log" ;;
esac
"$WD_BUILD/weightctl" status --json >"$T/s.json" || fail "status --json failed"
python3 - "$T/s.json" "$kind" "$want" <<'PY' || fail "status --json: $(cat "$T/s.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["host_pages"] == sys.argv[2], s
assert s["host_page_size"] == int(sys.argv[3]), s
PY
"$WD_BUILD/weightctl" status >"$T/s.txt" || fail "status failed"
case $kind in
hugetlb) words="hugetlb" ;;
thp) words="transparent huge pages" ;;
*) words="4 KiB" ;;
esac
grep -q "^pages .*$words" "$T/s.txt" || fail "status text has no pages line with '$words': $(cat "$T/s.txt")"
kill -TERM $P
wait $P
P=

# --host-prefault: the whole host cache is allocated at start, in the background.
"$WD_BUILD/weightd" --foreground --state-dir "$T" --socket "$T/sock" --no-scan \
	--host-budget 64M --host-prefault 2>"$T/log" &
P=$!
i=0
until grep -q '"prefaulted" bytes=67108864 ' "$T/log"; do
	i=$((i + 1))
	[ $i -lt 300 ] || fail "no 'prefaulted bytes=67108864' line within 30 s"
	sleep 0.1
done
shmem=$(sed -n 's/^RssShmem:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/$P/status)
[ "$shmem" -ge 65536 ] || fail "RssShmem ${shmem} kB after prefaulting 64 MiB"
kill -TERM $P
wait $P
rc=$?
P=
[ $rc -eq 0 ] || fail "exit status $rc after prefaulting"
echo "pages: $kind, $want bytes, in status text and --json; --host-prefault populated 64 MiB"
