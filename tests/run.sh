#!/bin/sh
# Runs every test of one build: the compiled test programs (tests/test_*.c) and the
# integration scripts (tests/test_*.sh), then the Python tests when present.
# A test exits 0 to pass, 77 to skip (it prints why), anything else to fail.
# Tests never touch the user's default state: HOME and XDG dirs point into a temp dir.
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TMPROOT=$(mktemp -d /tmp/weightd-tests.XXXXXX)
trap 'rm -rf "$TMPROOT"' EXIT INT TERM
export HOME="$TMPROOT/home" XDG_STATE_HOME="$TMPROOT/xdg-state" \
	XDG_RUNTIME_DIR="$TMPROOT/xdg-run" XDG_DATA_HOME="$TMPROOT/xdg-data"
mkdir -p "$HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
export WD_BUILD="$ROOT/$BUILD" WD_ROOT="$ROOT" WD_CORPUS="$ROOT/../shared/corpus"
unset WEIGHTD_STATE_DIR WEIGHTD_SOCKET

pass=0 fail=0 skip=0 failed=""
run_one() {
	name=$1
	shift
	log="$TMPROOT/$name.log"
	start=$(date +%s)
	(cd "$TMPROOT" && TMPDIR="$TMPROOT" "$@") >"$log" 2>&1
	rc=$?
	secs=$(($(date +%s) - start))
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
	77) skip=$((skip + 1)); echo "SKIP $name: $(grep -m1 '^SKIP' "$log" || grep -m1 -i 'skip' "$log" || echo 'no reason given')" ;;
	*) fail=$((fail + 1)); failed="$failed $name"
	   echo "FAIL $name (exit $rc, ${secs}s); last lines of its output:"
	   tail -n 40 "$log" | sed 's/^/    /' ;;
	esac
}

for t in "$ROOT/$BUILD"/tests/test_*; do
	[ -x "$t" ] || continue
	case $t in *.o | *.d) continue ;; esac
	run_one "$(basename "$t")" "$t"
done
for t in "$ROOT"/tests/test_*.sh; do
	[ -f "$t" ] || continue
	run_one "$(basename "$t")" sh "$t"
done
# The Python tests load $BUILD/libweightd.so into python. An ASan-built one (build-san/)
# needs the ASan runtime it links against loaded first: preload it, with leak checks off (the
# interpreter's own allocations are not ours to judge). The step passes only when tests ran:
# none collected fails, all skipped is a SKIP with pytest's reasons.
# They run in the environment of scripts/pyenv.sh (torch, safetensors, transformers,
# diffusers from PyPI, pinned), which the Makefile passes as WD_PYTHON; by hand without it,
# Debian's python runs them and the tests that need those packages skip.
# pytest_step [WHAT [PATH]]: WHAT instead of the whole folder, PATH first on sys.path.
PY=${WD_PYTHON:-/usr/bin/python3}
if [ -n "${WD_PYTHON:-}" ]; then
	export WD_PYENV=1
fi
pytest_step() {
	xml="$TMPROOT/pytest.$$.xml"
	what=${1:-$ROOT/tests/python}
	PYTHONPATH=${2:-${PYTHONPATH:-}}
	export PYTHONPATH
	asan=$(ldd "$ROOT/$BUILD/libweightd.so" 2>/dev/null | awk '/libasan/ { print $3 }')
	if [ -n "$asan" ]; then
		[ -f "$asan" ] || { echo "SKIP: the ASan runtime $asan of libweightd.so is missing"; return 77; }
		# libstdc++ goes with it: ASan's __cxa_throw interceptor binds the real one at start,
		# and torch (loaded later with dlopen) throws C++ exceptions for indexing errors.
		cxx=$(/sbin/ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/ { print $NF; exit }')
		echo "preloading $asan $cxx into python (ASAN_OPTIONS detect_leaks=0)"
		LD_PRELOAD="$asan${cxx:+ $cxx}" ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
			"$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$xml" "$what"
	else
		"$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$xml" "$what"
	fi
	rc=$?
	[ "$rc" -eq 0 ] || return "$rc"
	/usr/bin/python3 - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
if n == 0:
    print("FAIL: pytest collected no tests")
    sys.exit(1)
if skipped == n:
    print("SKIP: all %d Python tests skipped (reasons above)" % n)
    sys.exit(77)
print("%d Python tests ran, %d skipped" % (n - skipped, skipped))
PY
}
if [ -d "$ROOT/tests/python" ] && ls "$ROOT"/tests/python/test_*.py >/dev/null 2>&1; then
	run_one pytest pytest_step
	# The compatibility tests once more against the older pinned safetensors.
	old="$(dirname "$(dirname "$PY")")/safetensors-old"
	if [ -n "${WD_PYTHON:-}" ] && [ -d "$old" ]; then
		run_one pytest-safetensors-old pytest_step "$ROOT/tests/python/test_st_compat.py" \
			"$old"
	fi
fi

[ -n "$failed" ] && echo "failed:$failed"
echo "$BUILD: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
