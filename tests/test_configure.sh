#!/bin/sh
# ./configure's own messages, one case per row of what a fresh machine can lack: the
# compiler, a required library (the cause is named, then the package), the CUDA headers
# (a plain build says the GPU tier is compiled out; --static refuses). A compiler that
# cannot see /usr/local/include stands in for a machine without the CUDA toolkit.
set -u
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
CONF="$WD_ROOT/configure"
fail() { echo "FAIL: $*"; exit 1; }
# run NAME WANT_RC ARGS...: configure into $T/NAME; its stdout+stderr in $T/NAME.log.
run() {
	name=$1 want=$2
	shift 2
	sh "$CONF" --builddir="$T/$name" "$@" >"$T/$name.log" 2>&1
	rc=$?
	[ "$rc" -eq "$want" ] || { cat "$T/$name.log"; fail "$name: exit $rc, want $want"; }
}
says() { grep -q -- "$2" "$T/$1.log" || { cat "$T/$1.log"; fail "$1: no '$2'"; }; }
lacks() { ! grep -q -- "$2" "$T/$1.log" || { cat "$T/$1.log"; fail "$1: says '$2'"; }; }

gccinc=$(gcc -print-file-name=include)
multiarch=$(gcc -print-multiarch)
# A compiler that never looks in /usr/local/include, where this machine links cuda.h.
cat >"$T/cc-nocuda" <<EOS
#!/bin/sh
exec gcc -nostdinc -isystem $gccinc -isystem /usr/include/$multiarch -isystem /usr/include "\$@"
EOS
# A compiler whose linker cannot find liburing.
cat >"$T/cc-nouring" <<'EOS'
#!/bin/sh
for a; do shift; [ "$a" = -luring ] && a=-lwd_no_such_uring; set -- "$@" "$a"; done
exec gcc "$@"
EOS
chmod 755 "$T/cc-nocuda" "$T/cc-nouring"

run nocc 1 --cc=wd-no-such-cc
says nocc "no C compiler: 'wd-no-such-cc' is not installed"
lacks nocc "liburing"

run nouring 1 --cc="$T/cc-nouring"
says nouring "liburing is required but its test program did not build: library -lwd_no_such_uring not found"
says nouring "install the Debian package liburing-dev"

run nocuda 0 --cc="$T/cc-nocuda" --cuda-home="$T/none"
says nocuda "the GPU tier is COMPILED OUT"
grep -q '^GPU_TIER := out' "$T/nocuda/config.mk" || fail "nocuda: config.mk lacks GPU_TIER := out"
grep -q 'undef CONFIG_HAVE_CUDA_H' "$T/nocuda/config-host.h" || fail "nocuda: CUDA_H defined"

run nocuda-static 1 --cc="$T/cc-nocuda" --cuda-home="$T/none" --static
says nocuda-static "needs the CUDA toolkit headers: header cuda.h not found"
[ ! -e "$T/nocuda-static/config.mk" ] || fail "nocuda-static: wrote config.mk"

if [ -e /usr/local/cuda/include/cuda.h ]; then
	run cuda 0 --cuda-home=/usr/local/cuda
	grep -q '^GPU_TIER := in' "$T/cuda/config.mk" || fail "cuda: GPU_TIER is not in"
	lacks cuda "COMPILED OUT"
fi
echo "PASS: configure names the compiler, a missing library and the missing CUDA headers"
