#!/bin/sh
# The layer rule (docs/architecture.md), checked by scripts/check-layers.py: on this tree and
# its build (includes, nm symbols, file circles, sizes), and on a small tree made to break each
# rule once, so that a check that stopped finding anything would fail here too.
set -u
CHECK="$WD_ROOT/scripts/check-layers.py"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

python3 "$CHECK" --root "$WD_ROOT" --build "$WD_BUILD" >"$T/tree.log" 2>&1 || { cat "$T/tree.log"; fail "the tree breaks the layer rule"; }

# A tree with one break of each kind. Layer folders hold a.c (ground floor) and d.c (the
# daemon's floor); each case expects its check to fail and name the file.
mk() { mkdir -p "$T/$1/core/base" "$T/$1/core/daemon" "$T/$1/build/core/base" "$T/$1/build/core/daemon"; }
obj() { cc -c -o "$T/$1/build/$2.o" -x c - ; }
expect() { # CASE CHECK WHAT
	out=$(python3 "$CHECK" --root "$T/$1" --only "$2" 2>&1) && fail "$1: the $2 check passed: $out"
	echo "$out" | grep -q "$3" || fail "$1: the $2 check did not name $3: $out"
	echo "ok: $1 ($2 names $3)"
}

mk up-include
printf '#include "core/daemon/d.h"\nint a(void) { return 0; }\n' >"$T/up-include/core/base/a.c"
expect up-include includes 'core/base/a.c:1: includes "core/daemon/d.h"'

mk up-call
echo 'int d(void); int a(void) { return d(); }' | obj up-call core/base/a
echo 'int d(void) { return 1; }' | obj up-call core/daemon/d
expect up-call symbols 'core/base/a.o: calls d() of core/daemon/d.o'

mk circle
echo 'int d2(void); int d1(int x) { return x ? d2() : 0; }' | obj circle core/daemon/d1
echo 'int d1(int); int d2(void) { return d1(0); }' | obj circle core/daemon/d2
expect circle circles 'core/daemon/d1.o -> core/daemon/d2.o (d2)'

mk long
{ echo 'int f(void)'; echo '{'; i=0; while [ $i -lt 130 ]; do echo '	;'; i=$((i + 1)); done
  echo '	return 0;'; echo '}'; } >"$T/long/core/base/a.c"
expect long sizes 'core/base/a.c:2: f() is 133 lines'
echo PASS
