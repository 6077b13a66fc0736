#!/bin/sh
# Installs the Debian packages weightd needs to build, test and benchmark, but only
# those that are missing, so that `make run` and `make test` are cheap when all is there.
set -eu
PKGS="gcc make pkg-config clang libclang-rt-14-dev liburing-dev libjansson-dev
libsqlite3-dev libxxhash-dev libcmocka-dev libhwloc-dev libhwloc-plugins libnuma-dev
libmicrohttpd-dev
python3 python3-numpy python3-pytest gnuplot-nox
tmux groff-base man-db python3-yaml prometheus"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
	SUDO=sudo
else
	SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
