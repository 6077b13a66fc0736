#!/bin/sh
# Prints the path of a Python interpreter whose virtual environment holds the pinned PyPI
# packages of scripts/python/KIND.txt (KIND: test or bench), creating it on first use.
#
# The environment is cached outside the clone, keyed by a hash of the requirement files, so
# a machine installs each set once (torch with its CUDA runtime wheels is a few GB): in
# $WEIGHTD_PYENV_DIR, else $XDG_CACHE_HOME/weightd, else ~/.cache/weightd. A changed pin
# gives a new key and so a fresh environment. It is built in a temporary folder and renamed
# into place when complete, under a lock, so an interrupted or concurrent run never leaves
# a half-installed one behind. The test environment also holds an older safetensors in
# ENV/safetensors-old (pip --target), which tests put first on sys.path to test against it.
set -eu
KIND=${1:-test}
HERE=$(cd "$(dirname "$0")" && pwd)
REQ="$HERE/python/$KIND.txt"
[ -f "$REQ" ] || { echo "pyenv.sh: no $REQ (kinds: test, bench)" >&2; exit 2; }
PY=${WEIGHTD_PYENV_PYTHON:-/usr/bin/python3}
CACHE=${WEIGHTD_PYENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weightd}
KEY=$(cat "$HERE/python/"*.txt "$0" | sha256sum | cut -c1-12)
ENV="$CACHE/pyenv-$KIND-$KEY"
if [ -x "$ENV/bin/python" ] && [ -f "$ENV/.complete" ]; then
	echo "$ENV/bin/python"
	exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.pyenv-$KIND.lock"
flock 9
if [ ! -f "$ENV/.complete" ]; then
	start=$(date +%s)
	echo "pyenv.sh: creating $ENV (first use on this machine; pip from PyPI)" >&2
	tmp="$ENV.tmp.$$"
	rm -rf "$tmp"
	"$PY" -m venv "$tmp" >&2
	"$tmp/bin/python" -m pip install -q --no-input --upgrade pip >&2
	"$tmp/bin/python" -m pip install -q --no-input -r "$REQ" >&2
	if [ "$KIND" = test ]; then
		"$tmp/bin/python" -m pip install -q --no-input --no-deps \
			--target "$tmp/safetensors-old" -r "$HERE/python/safetensors-old.txt" >&2
	fi
	# The venv's scripts name its folder; it moves, so they are rewritten for the final path.
	grep -rlF "$tmp" "$tmp/bin" 2>/dev/null | while read -r f; do
		sed -i "s|$tmp|$ENV|g" "$f"
	done
	sed -i "s|$tmp|$ENV|g" "$tmp/pyvenv.cfg"
	rm -rf "$ENV"
	mv "$tmp" "$ENV"
	touch "$ENV/.complete"
	echo "pyenv.sh: $ENV ready in $(($(date +%s) - start)) s, $(du -sh "$ENV" | cut -f1)" >&2
fi
echo "$ENV/bin/python"
