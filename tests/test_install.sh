#!/bin/sh
# `make install DESTDIR=$T/stage PREFIX=/usr` from the build under test, then the staged tree
# on its own: the installed binaries (--help, gen, scan, a daemon started with the installed
# configuration file and queried with the installed weightctl), pkg-config on the installed
# .pc, a C program compiled against the installed header and library, the installed Python
# package loading the installed library, the man pages rendered by groff without warnings,
# the systemd unit checked by systemd-analyze, and the Kubernetes example parsed as YAML.
# Checks whose tool is missing (groff, systemd-analyze, python3-yaml) print SKIP lines; the
# test exits 77 only when pkg-config or a C compiler, which it needs, is missing.
set -u
B=${WD_BUILD:?WD_BUILD is the build directory}
ROOT=${WD_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
T=$(mktemp -d)
ST="$T/stage"
U="$ST/usr"
DPID=
cleanup() {
	[ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
# Debian's interpreter, which has python3-numpy and python3-yaml (DESIGN.md).
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
skip_part() { echo "SKIP (part): $*"; }
for tool in pkg-config cc make; do
	command -v $tool >/dev/null 2>&1 || { echo "SKIP: $tool is not installed"; exit 77; }
done
[ -x "$B/weightd" ] && [ -f "$B/libweightd.so" ] ||
	{ echo "SKIP: $B has no weightd or libweightd.so"; exit 77; }

# The build under test is installed as it is: -o keeps make from rebuilding anything.
make -C "$ROOT" --no-print-directory install BUILD="$B" DESTDIR="$ST" PREFIX=/usr \
	-o "$B/weightd" -o "$B/weightctl" -o "$B/libweightd.so" -o "$B/weightd.pc" \
	>"$T/install.log" 2>&1 || { cat "$T/install.log"; fail "make install"; }

for f in bin/weightd bin/weightctl lib/libweightd.so.1 include/weightd.h \
	lib/pkgconfig/weightd.pc share/man/man8/weightd.8 share/man/man1/weightctl.1 \
	lib/systemd/system/weightd.service lib/sysusers.d/weightd.conf \
	share/doc/weightd/config.md share/doc/weightd/weightd-thp.tmpfiles; do
	[ -f "$U/$f" ] || fail "not installed: $f"
done
[ -f "$ST/etc/weightd/weightd.conf" ] || fail "not installed: /etc/weightd/weightd.conf"
[ -x "$U/bin/weightd" ] && [ -x "$U/bin/weightctl" ] || fail "binaries not executable"
[ "$(readlink "$U/lib/libweightd.so")" = "libweightd.so.1" ] || fail "libweightd.so link"
soname=$(objdump -p "$U/lib/libweightd.so.1" 2>/dev/null | awk '/SONAME/ {print $2}')
[ -z "$soname" ] || [ "$soname" = "libweightd.so.1" ] || fail "soname is $soname"
if [ -d "$ROOT/bindings/python/weightd" ]; then
	[ -f "$U/lib/python3/dist-packages/weightd/__init__.py" ] || fail "python package"
fi
grep -q "^ExecStart=/usr/bin/weightd --foreground --config /etc/weightd/weightd.conf" \
	"$U/lib/systemd/system/weightd.service" || fail "unit ExecStart not rewritten for PREFIX"
# A second install keeps a configuration the administrator edited.
echo "# edited" >>"$ST/etc/weightd/weightd.conf"
make -C "$ROOT" --no-print-directory install BUILD="$B" DESTDIR="$ST" PREFIX=/usr \
	-o "$B/weightd" -o "$B/weightctl" -o "$B/libweightd.so" -o "$B/weightd.pc" \
	>"$T/install2.log" 2>&1 || { cat "$T/install2.log"; fail "second make install"; }
tail -n 1 "$ST/etc/weightd/weightd.conf" | grep -q "# edited" || fail "install overwrote the config"

# The staged binaries run from the staged tree (the client library from the staged lib dir).
export LD_LIBRARY_PATH="$U/lib"
SW="$U/bin/weightctl"
SD="$U/bin/weightd"
"$SW" --help >"$T/out" 2>&1 && grep -q "top" "$T/out" || fail "weightctl --help"
"$SD" --help >"$T/out" 2>&1 && grep -q -- "--config FILE" "$T/out" || fail "weightd --help"
"$SW" gen --preset demo "$T/models" >/dev/null || fail "staged weightctl gen"
"$SW" --state-dir "$T/cat" scan "$T/models" >"$T/out" 2>&1 || { cat "$T/out"; fail "scan"; }
grep -q "3 models" "$T/out" || { cat "$T/out"; fail "scan did not find the demo models"; }

# The installed configuration, as shipped, parses; its group may not exist on this machine,
# which must then be the error, named with the file, the line and the key.
conf="$ST/etc/weightd/weightd.conf"
if ! getent group weightd >/dev/null 2>&1; then
	"$SD" --foreground --config "$conf" --socket "$T/x.sock" --state-dir "$T/x" 2>"$T/err"
	rc=$?
	[ "$rc" -eq 2 ] || fail "shipped config without group weightd: exit $rc, want 2"
	grep -q "weightd.conf:[0-9]*: allow_group: unknown group \"weightd\"" "$T/err" ||
		{ cat "$T/err"; fail "the error does not name the file, line and key"; }
fi
# The file names another model root; --models on the command line replaces it, so the
# daemon must publish the 3 demo models only (the program below counts them).
"$SW" gen --preset sd "$T/other" >/dev/null || fail "staged weightctl gen sd"
sed "s/^allow_group = weightd$/allow_group = $(id -g)/" "$conf" >"$T/weightd.conf"
cat >>"$T/weightd.conf" <<EOF
models = $T/other
host_budget = 32M
EOF
"$SD" --foreground --config "$T/weightd.conf" --models "$T/models" --socket "$T/d.sock" \
	--state-dir "$T/state" 2>"$T/daemon.log" &
DPID=$!
n=100
# Up, and done with the start-up scan (the models appear when it publishes them).
until "$SW" status --socket "$T/d.sock" --json >"$T/status" 2>/dev/null &&
	grep -q '"models": *[1-9]' "$T/status"; do
	n=$((n - 1))
	[ "$n" -gt 0 ] || { tail "$T/daemon.log"; fail "the staged daemon did not come up"; }
	sleep 0.1
done
grep -q '"host_budget": *33554432' "$T/status" || { cat "$T/status"; fail "config not applied"; }

# pkg-config on the staged .pc, relocated into the stage.
export PKG_CONFIG_PATH="$U/lib/pkgconfig"
flags=$(pkg-config --define-variable=prefix="$U" --cflags --libs weightd) ||
	fail "pkg-config weightd"
[ "$(pkg-config --modversion weightd)" = "0.2.0" ] || fail "pkg-config version"
echo "$flags" | grep -q -- "-I$U/include" && echo "$flags" | grep -q -- "-L$U/lib" &&
	echo "$flags" | grep -q -- "-lweightd" || fail "pkg-config flags: $flags"

# A program against the staged header and library: no daemon at one socket, the staged
# daemon at the other.
cat >"$T/prog.c" <<'EOF'
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <weightd.h>

int main(int argc, char **argv)
{
	struct weightd_model_info m;
	struct weightd *w = NULL;
	int ret = weightd_attach(argv[1], NULL, &w);
	uint32_t n = 0;

	if (ret != -ENOENT && ret != -ECONNREFUSED) {
		fprintf(stderr, "missing socket: %d (%s)\n", ret, weightd_last_error());
		return 1;
	}
	if (argc < 3 || (ret = weightd_attach(argv[2], NULL, &w))) {
		fprintf(stderr, "attach: %d (%s)\n", ret, weightd_last_error());
		return 1;
	}
	while (weightd_model(w, n, &m) == 0)
		n++;
	printf("models %u pid %d\n", n, weightd_daemon_pid(w));
	weightd_detach(w);
	return 0;
}
EOF
# A sanitizer build's library needs its runtime linked into the program too.
san=
nm -D "$U/lib/libweightd.so.1" 2>/dev/null | grep -q __asan_init &&
	san="-fsanitize=address,undefined"
# shellcheck disable=SC2086
cc -Wall -Werror $san -o "$T/prog" "$T/prog.c" $flags || fail "compile against the staged library"
"$T/prog" "$T/none.sock" "$T/d.sock" >"$T/out" || fail "staged program"
grep -q "models 3 pid $DPID" "$T/out" || { cat "$T/out"; fail "staged program output"; }
# It really uses the staged library (no rpath: LD_LIBRARY_PATH found it).
LD_TRACE_LOADED_OBJECTS=1 "$T/prog" | grep -q "$U/lib/libweightd.so.1" ||
	fail "the program did not resolve the staged libweightd.so.1"

# The staged Python package loads the staged library through ld.so.
if [ ! -f "$U/lib/python3/dist-packages/weightd/__init__.py" ]; then
	skip_part "the tree has no Python package"
elif [ -n "$san" ]; then
	skip_part "a sanitizer build's library does not load into a plain python"
elif ! $PY -c "import numpy" 2>/dev/null; then
	skip_part "python3-numpy is not installed: the staged Python package not imported"
else
	env -u WD_BUILD -u WEIGHTD_LIB PYTHONPATH="$U/lib/python3/dist-packages" \
		$PY - "$T/d.sock" "$U" <<'PY' || fail "staged python package"
import sys, weightd
from weightd import _native
assert weightd.__file__.startswith(sys.argv[2]), weightd.__file__
c = weightd.connect(sys.argv[1])
names = sorted(m.name for m in c.models())
assert names == ["llama-tiny", "sd-tiny", "vae-tiny"], names
maps = [l.split()[-1] for l in open("/proc/self/maps") if "libweightd" in l]
assert maps and all(p.startswith(sys.argv[2] + "/lib/") for p in maps), maps
c.close()
PY
fi
kill "$DPID"
wait "$DPID"
rc=$?
DPID=
[ "$rc" -eq 0 ] || fail "the staged daemon exited $rc on SIGTERM"

# Man pages: groff with all warnings, and man -l, must print nothing.
if command -v groff >/dev/null 2>&1; then
	for m in "$U/share/man/man8/weightd.8" "$U/share/man/man1/weightctl.1"; do
		groff -man -ww -z "$m" >"$T/groff" 2>&1
		[ -s "$T/groff" ] && { cat "$T/groff"; fail "groff warnings in $m"; }
		if command -v man >/dev/null 2>&1; then
			MANWIDTH=80 man -l "$m" >"$T/man" 2>"$T/groff" || fail "man -l $m"
			[ -s "$T/groff" ] && { cat "$T/groff"; fail "man -l warnings in $m"; }
		fi
	done
	# Every option of weightd --help and every verb of weightctl is in its man page.
	for o in $("$SD" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
		man -l "$U/share/man/man8/weightd.8" 2>/dev/null | grep -q -- "$o" ||
			fail "weightd.8 lacks $o"
	done
	for v in $("$SW" --help | awk '/^Verbs/ {on=1; next} on && !NF {exit} on {print $1}'); do
		MANWIDTH=200 man -l "$U/share/man/man1/weightctl.1" 2>/dev/null |
			grep -q "^ *$v\b" || fail "weightctl.1 lacks the verb $v"
	done
else
	skip_part "groff is not installed: man pages not rendered"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
	unit="$T/weightd.service"
	# ExecStart must name an executable: the staged one stands in for /usr/bin/weightd.
	sed "s|^ExecStart=/usr/bin/weightd|ExecStart=$U/bin/weightd|" \
		"$U/lib/systemd/system/weightd.service" >"$unit"
	SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$unit" >"$T/sa" 2>&1
	grep "weightd.service" "$T/sa" >"$T/sa.own"
	[ -s "$T/sa.own" ] && { cat "$T/sa.own"; fail "systemd-analyze: problems in the unit"; }
	for k in ProtectSystem=strict ProtectHome=read-only PrivateTmp=yes NoNewPrivileges=yes \
		RuntimeDirectory=weightd StateDirectory=weightd LimitMEMLOCK=infinity \
		ReadWritePaths=/var/lib/weightd; do
		grep -q "^$k\$" "$unit" || fail "the unit lacks $k"
	done
else
	skip_part "systemd-analyze is not installed: unit not verified"
fi

if $PY -c "import yaml" 2>/dev/null; then
	$PY - "$ROOT/deploy/k8s/weightd-daemonset.yaml" <<'PY' || fail "k8s DaemonSet example"
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
ds = docs["DaemonSet"]["spec"]["template"]
ann = ds["metadata"]["annotations"]
assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9464", ann
spec = ds["spec"]
assert spec["nodeSelector"], spec
vols = {v["name"]: v for v in spec["volumes"]}
assert vols["socket-dir"]["hostPath"]["path"] == "/run/weightd", vols
c = spec["containers"][0]
assert any(m["mountPath"] == "/run/weightd" for m in c["volumeMounts"]), c
assert "weightd.conf" in docs["ConfigMap"]["data"]
PY
else
	skip_part "python3-yaml is not installed: the DaemonSet example not parsed"
fi
echo "PASS: make install, staged binaries, daemon, pkg-config, C program, python, docs"
