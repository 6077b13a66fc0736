#!/bin/sh
# Installs the Debian packages weightd needs, but only those that are missing, so that
# `make run` and `make test` are cheap when everything is there.
#
#   scripts/install-deps.sh [run|test]
#
#   run   (make run, make deps) what building and running the daemon and the README's
#         walkthrough need: the compiler, the libraries, xxd.
#   test  (make test, make deps-test) that, plus what the test suite, the fuzzers and the
#         benchmarks use: clang and its sanitizer runtimes, cmocka, Python with numpy and
#         pytest, the sqlite3 and prometheus commands, tmux, gnuplot, man.
#
# Runs as root, or through sudo (DEBIAN_FRONTEND is passed through sudo explicitly, since
# sudo's env_reset drops it and debconf would then stop to ask questions). Package services
# are kept from starting: a policy-rc.d that denies every start is in place during the
# install, and the units of the packages installed here are left disabled (installing
# Debian's prometheus would otherwise start a server on port 9090 that nobody asked for).
set -eu

RUN_PKGS="gcc make pkg-config liburing-dev libjansson-dev libsqlite3-dev libxxhash-dev
libhwloc-dev libhwloc-plugins libnuma-dev libmicrohttpd-dev xxd"
TEST_PKGS="clang libclang-rt-14-dev libcmocka-dev python3 python3-numpy python3-pytest
python3-venv sqlite3 gnuplot-nox tmux groff-base man-db python3-yaml prometheus util-linux passwd
procps"

case "${1:-run}" in
run) PKGS=$RUN_PKGS ;;
test) PKGS="$RUN_PKGS $TEST_PKGS" ;;
-h | --help)
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "install-deps: unknown set '$1' (run or test)" >&2
	exit 2
	;;
esac

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing" >&2

if [ "$(id -u)" -eq 0 ]; then
	SUDO=""
elif command -v sudo >/dev/null 2>&1; then
	SUDO="sudo"
else
	echo "install-deps: missing Debian packages:$missing; run this as root, or install" \
		"sudo (apt-get install$missing as root does the same)" >&2
	exit 1
fi
as_root() {
	$SUDO env DEBIAN_FRONTEND=noninteractive "$@"
}

# No service of a package installed here starts during the install (invoke-rc.d and
# deb-systemd-invoke both ask policy-rc.d; 101 means "action forbidden").
policy=/usr/sbin/policy-rc.d
ours=0
if [ ! -e "$policy" ]; then
	as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
	ours=1
fi
cleanup() {
	[ "$ours" = 1 ] && as_root rm -f "$policy"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root apt-get update -qq
# shellcheck disable=SC2086
as_root apt-get install -y -qq --no-install-recommends $missing

# ... nor at the next boot: what these packages enabled is disabled again, systemd units
# (deb-systemd-helper works without a running systemd, as in a container or chroot) and
# SysV init scripts alike.
for p in $missing; do
	for f in $(dpkg-query -L "$p" 2>/dev/null); do
		case $f in
		/lib/systemd/system/*.service | /usr/lib/systemd/system/*.service)
			unit=${f##*/}
			if command -v deb-systemd-helper >/dev/null 2>&1; then
				as_root deb-systemd-helper disable "$unit" >/dev/null 2>&1 || true
			fi
			if command -v systemctl >/dev/null 2>&1; then
				as_root systemctl disable --quiet "$unit" >/dev/null 2>&1 || true
			fi
			;;
		/etc/init.d/*)
			as_root update-rc.d "${f##*/}" disable >/dev/null 2>&1 || true
			;;
		esac
	done
done
